//! The target state: what the cloud wants a device to run.
//!
//! `GET /device/v3/{uuid}/state` answers a [`TargetState`], a map with a
//! single key, the device's uuid. The response carries a strong `ETag`; a
//! request with a matching `If-None-Match` gets `304 Not Modified`.
//!
//! Maps are `BTreeMap` so that serialising the same state twice gives the
//! same bytes (the cloud hashes them into the ETag).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `{ "<device uuid>": DeviceTarget }`
pub type TargetState = BTreeMap<String, DeviceTarget>;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceTarget {
    /// Device name.
    pub name: String,
    /// Config vars (fleet config vars overridden by device config vars),
    /// for instance `RESIN_SUPERVISOR_POLL_INTERVAL`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Apps by app (fleet) uuid.
    #[serde(default)]
    pub apps: BTreeMap<String, AppTarget>,
    /// The OS the device should run; `None` leaves the OS alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<OsTarget>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppTarget {
    /// Numeric fleet id in the cloud.
    #[serde(default)]
    pub id: i64,
    pub name: String,
    /// The environment layers below the service's own: fleet vars, then
    /// device vars. The supervisor merges fleet < device < service.
    #[serde(default)]
    pub env: EnvLayers,
    /// Releases by release uuid. Exactly one entry when the fleet has a
    /// target release; empty when it has none (the app is then removed).
    #[serde(default)]
    pub releases: BTreeMap<String, ReleaseTarget>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvLayers {
    #[serde(default)]
    pub fleet: BTreeMap<String, String>,
    #[serde(default)]
    pub device: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseTarget {
    /// Numeric release id in the cloud.
    #[serde(default)]
    pub id: i64,
    /// Services by service name (compose key).
    #[serde(default)]
    pub services: BTreeMap<String, ServiceTarget>,
    /// Named volumes by name (compose `volumes:` at top level).
    #[serde(default)]
    pub volumes: BTreeMap<String, VolumeTarget>,
    /// Networks by name (compose `networks:` at top level).
    #[serde(default)]
    pub networks: BTreeMap<String, NetworkTarget>,
}

/// One compose service, with its image pinned (by digest where the cloud
/// knows it). Field names follow the compose file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceTarget {
    /// Numeric service id in the cloud.
    #[serde(default)]
    pub id: i64,
    /// Image reference, e.g. `registry:5000/app/web@sha256:…`.
    pub image: String,
    /// The service's own environment (compose `environment` with service
    /// env vars from the cloud applied on top).
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Compose labels. `io.resin.update.strategy` picks the update strategy.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Compose port mappings, `"8080:80"`, `"127.0.0.1:53:53/udp"`.
    #[serde(default)]
    pub ports: Vec<String>,
    /// Compose volume mounts, `"data:/data"`, `"/host/path:/in:ro"`.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Networks the service joins; empty means the app's default network.
    #[serde(default)]
    pub networks: Vec<String>,
    /// Compose restart policy: `no`, `always`, `on-failure`, `unless-stopped`.
    #[serde(default = "default_restart")]
    pub restart: String,
    /// Overrides the image's command when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Overrides the image's entrypoint when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub privileged: bool,
    /// Device mappings, `"/dev/ttyUSB0:/dev/ttyUSB0"`.
    #[serde(default)]
    pub devices: Vec<String>,
    #[serde(default)]
    pub cap_add: Vec<String>,
    #[serde(default)]
    pub cap_drop: Vec<String>,
    /// `"host"` for host networking; `None` for the app network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    /// Compose `depends_on`: services of the same release started before
    /// this one (and stopped after it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

fn default_restart() -> String {
    "always".to_owned()
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeTarget {
    #[serde(default)]
    pub driver: Option<String>,
    /// Compose `driver_opts`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkTarget {
    #[serde(default)]
    pub driver: Option<String>,
    /// Compose `driver_opts`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The OS release the device should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsTarget {
    /// OS version string, compared with the device's `VERSION` in
    /// `/etc/os-release`.
    pub version: String,
    /// Where to fetch the RAUC bundle; `None` when the cloud has no bundle
    /// for the device's type (the device then reports and waits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<BundleRef>,
    /// The cloud allows installing this version although it is older than
    /// the running one (a downgrade). The device refuses an older version
    /// without it. Set when the fleet's or device's config var
    /// [`OS_ALLOW_DOWNGRADE_VAR`] is true, or when the device runs the OS of
    /// a rollout that was rolled back. Absent means false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_downgrade: bool,
}

/// Fleet or device config var: `1`/`true`/`yes` lets the cloud send an OS
/// target older than the device's running OS ([`OsTarget::allow_downgrade`]).
pub const OS_ALLOW_DOWNGRADE_VAR: &str = "RESIN_SUPERVISOR_OS_ALLOW_DOWNGRADE";

/// Is a boolean config var's value on (`1`, `true` or `yes`)?
pub fn config_flag(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes"
    )
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRef {
    /// Absolute URL, served by the cloud with Range support.
    pub url: String,
    /// Lowercase hex sha256 of the whole bundle file.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn allow_downgrade_is_false_when_absent_and_only_sent_when_true() {
        let t: OsTarget = serde_json::from_str(r#"{"version":"2.0"}"#).unwrap();
        assert!(!t.allow_downgrade);
        assert_eq!(serde_json::to_string(&t).unwrap(), r#"{"version":"2.0"}"#);
        let t = OsTarget {
            allow_downgrade: true,
            ..t
        };
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"version":"2.0","allow_downgrade":true}"#
        );
        assert!(config_flag(" TRUE") && config_flag("1") && config_flag("yes"));
        assert!(!config_flag("0") && !config_flag("") && !config_flag("off"));
    }

    #[test]
    fn target_state_round_trips_and_defaults_missing_fields() {
        let json = r#"{"0123":{"name":"dev","apps":{"a1":{"name":"web","releases":{"r1":{
            "services":{"main":{"image":"reg/web@sha256:00"}}}}}}}}"#;
        let t: TargetState = serde_json::from_str(json).unwrap();
        let svc = &t["0123"].apps["a1"].releases["r1"].services["main"];
        assert_eq!(svc.restart, "always");
        assert!(svc.environment.is_empty());
        assert!(t["0123"].os.is_none());
        let again: TargetState = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(t, again);
    }
}
