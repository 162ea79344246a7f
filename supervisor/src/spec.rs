//! The effective spec of one service: the target's compose service with the
//! env layers merged, the resin labels added, and a config hash over it.

use std::collections::BTreeMap;

use resin_api_types::compose::Mount;
use resin_api_types::{labels, AppTarget, ServiceTarget};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Where a service's update-lock directory is mounted inside its container:
/// an app creates `/tmp/resin/updates.lock` to hold its update lock.
pub const LOCK_MOUNT: &str = "/tmp/resin";

/// Everything the executor needs to create one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceSpec {
    pub app_uuid: String,
    pub service: String,
    pub release_uuid: String,
    /// Container name: `<service>_<app uuid>_<release[..8]>_<hash[..8]>`.
    pub name: String,
    /// Hash of the fields below (not of the release), hex.
    pub config_hash: String,
    pub image: String,
    /// Merged env: fleet < device < service, then the `RESIN_*` vars.
    pub env: BTreeMap<String, String>,
    /// Compose labels plus the resin labels.
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<String>,
    /// Binds and named-volume mounts, named volumes already prefixed with
    /// the app uuid.
    pub binds: Vec<String>,
    /// Docker network names (prefixed with the app uuid); empty with
    /// `network_mode`.
    pub networks: Vec<String>,
    /// Named volumes (prefixed) the container needs.
    pub volumes: Vec<String>,
    pub restart: String,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub privileged: bool,
    pub devices: Vec<String>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub network_mode: Option<String>,
    /// Services of the same app started before this one and stopped after
    /// it (compose `depends_on`); not part of the config hash.
    pub depends_on: Vec<String>,
}

/// The part of the spec that the hash covers.
#[derive(Serialize)]
struct Hashed<'a> {
    image: &'a str,
    env: &'a BTreeMap<String, String>,
    labels: &'a BTreeMap<String, String>,
    ports: &'a [String],
    binds: &'a [String],
    networks: &'a [String],
    restart: &'a str,
    command: &'a Option<Vec<String>>,
    entrypoint: &'a Option<Vec<String>>,
    privileged: bool,
    devices: &'a [String],
    cap_add: &'a [String],
    cap_drop: &'a [String],
    network_mode: &'a Option<String>,
}

impl ServiceSpec {
    /// X of `network_mode: service:X`.
    pub fn network_service(&self) -> Option<&str> {
        self.network_mode.as_deref()?.strip_prefix("service:")
    }

    /// Makes this spec follow service `x` (whose config hash is
    /// `x_hash`) for `network_mode: service:x`: the hash covers x's, so a
    /// new x recreates this service too, and it starts after x.
    pub fn follow_network_service(&mut self, x: &str, x_hash: &str) {
        let hash = hex::encode(Sha256::digest(format!("{}:{x_hash}", self.config_hash)));
        if let Some((head, _)) = self.name.rsplit_once('_') {
            self.name = format!("{head}_{}", &hash[..8]);
        }
        self.labels.insert(labels::CONFIG_HASH.into(), hash.clone());
        self.config_hash = hash;
        if !self.depends_on.iter().any(|d| d == x) {
            self.depends_on.push(x.to_owned());
        }
    }
}

/// Docker name of an app-scoped object (network or volume).
pub fn scoped(app_uuid: &str, name: &str) -> String {
    format!("{app_uuid}_{name}")
}

impl ServiceSpec {
    /// Builds the effective spec of `service` in `release_uuid` of `app`.
    pub fn build(
        device_uuid: &str,
        app_uuid: &str,
        app: &AppTarget,
        release_uuid: &str,
        service: &str,
        target: &ServiceTarget,
    ) -> Self {
        let mut env = app.env.fleet.clone();
        env.extend(app.env.device.clone());
        env.extend(target.environment.clone());
        env.insert("RESIN".into(), "1".into());
        env.insert("RESIN_DEVICE_UUID".into(), device_uuid.into());
        env.insert("RESIN_APP_UUID".into(), app_uuid.into());
        env.insert("RESIN_APP_NAME".into(), app.name.clone());
        env.insert("RESIN_SERVICE_NAME".into(), service.into());

        let mut binds = Vec::new();
        let mut volumes = Vec::new();
        for v in &target.volumes {
            match v.parse::<Mount>() {
                Ok(Mount::Volume {
                    name,
                    target,
                    options,
                }) => {
                    let name = scoped(app_uuid, &name);
                    binds.push(match options {
                        Some(o) => format!("{name}:{target}:{o}"),
                        None => format!("{name}:{target}"),
                    });
                    volumes.push(name);
                }
                // Binds and anonymous volumes (`/data`) go to the engine
                // as written; so does an entry the validator refuses (a
                // release stored before it): the engine names it.
                Ok(Mount::Bind { .. } | Mount::Anonymous { .. }) | Err(_) => binds.push(v.clone()),
            }
        }
        let lock = labels::update_lock_path(app_uuid, service);
        let lock_dir = lock.trim_end_matches("/updates.lock");
        binds.push(format!("{lock_dir}:{LOCK_MOUNT}"));
        // Docker ignores the order of these lists: sorted, so a release that
        // only reorders them has the same config hash.
        binds.sort();
        volumes.sort();
        volumes.dedup();
        let mut ports = target.ports.clone();
        ports.sort();
        let mut devices = target.devices.clone();
        devices.sort();
        let mut cap_add = target.cap_add.clone();
        cap_add.sort();
        let mut cap_drop = target.cap_drop.clone();
        cap_drop.sort();

        let networks = if target.network_mode.is_some() {
            Vec::new()
        } else if target.networks.is_empty() {
            vec![scoped(app_uuid, "default")]
        } else {
            let mut n: Vec<String> = target
                .networks
                .iter()
                .map(|n| scoped(app_uuid, n))
                .collect();
            n.sort();
            n.dedup();
            n
        };

        let mut labels = target.labels.clone();
        labels.insert(labels::MANAGED.into(), "1".into());
        labels.insert(labels::APP_UUID.into(), app_uuid.into());
        labels.insert(labels::SERVICE_NAME.into(), service.into());

        let config_hash = {
            let h = Hashed {
                image: &target.image,
                env: &env,
                labels: &labels,
                ports: &ports,
                binds: &binds,
                networks: &networks,
                restart: &target.restart,
                command: &target.command,
                entrypoint: &target.entrypoint,
                privileged: target.privileged,
                devices: &devices,
                cap_add: &cap_add,
                cap_drop: &cap_drop,
                network_mode: &target.network_mode,
            };
            // Serialising maps, strings and bools cannot fail.
            let bytes = serde_json::to_vec(&h).unwrap_or_default();
            hex::encode(Sha256::digest(&bytes))
        };
        labels.insert(labels::RELEASE_UUID.into(), release_uuid.into());
        labels.insert(labels::CONFIG_HASH.into(), config_hash.clone());
        let rel8: String = release_uuid.chars().take(8).collect();
        let name = format!("{service}_{app_uuid}_{rel8}_{}", &config_hash[..8]);

        Self {
            app_uuid: app_uuid.into(),
            service: service.into(),
            release_uuid: release_uuid.into(),
            name,
            config_hash,
            image: target.image.clone(),
            env,
            labels,
            ports,
            binds,
            networks,
            volumes,
            restart: target.restart.clone(),
            command: target.command.clone(),
            entrypoint: target.entrypoint.clone(),
            privileged: target.privileged,
            devices,
            cap_add,
            cap_drop,
            network_mode: target.network_mode.clone(),
            depends_on: target.depends_on.clone(),
        }
    }
}
