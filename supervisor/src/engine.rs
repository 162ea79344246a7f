//! The Docker engine through bollard: reads the managed containers, networks
//! and volumes into a [`CurrentState`], and runs one planner [`Step`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, DeviceMapping, EndpointSettings, HostConfig,
    NetworkCreateRequest, NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use resin_api_types::compose::{
    ComposeError, DeviceMapping as ComposeDevice, PortMapping, Restart,
};
use resin_api_types::labels;
use tokio::sync::watch;

use crate::planner::{AppObject, Container, CurrentState, RunState, Step};
use crate::spec::ServiceSpec;

/// Seconds a container gets to stop before the engine kills it.
pub const STOP_TIMEOUT_SECS: i32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot connect to the Docker engine at {host}: {source}")]
    Connect {
        host: String,
        #[source]
        source: BollardError,
    },
    #[error("Docker engine: {what}: {source}")]
    Call {
        what: String,
        #[source]
        source: BollardError,
    },
    #[error("service {service}: {source}")]
    Compose {
        service: String,
        #[source]
        source: ComposeError,
    },
}

fn call(what: impl Into<String>) -> impl FnOnce(BollardError) -> EngineError {
    let what = what.into();
    move |source| EngineError::Call { what, source }
}

fn is_not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn is_not_modified(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 304,
            ..
        }
    )
}

fn managed_filter() -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_owned(), vec![format!("{}=1", labels::MANAGED)])])
}

/// A connection to one Docker engine.
#[derive(Clone, Debug)]
pub struct Engine {
    docker: Docker,
    /// When set, only these apps' objects are seen (several supervisors
    /// sharing one engine: tests and benchmarks). `None` on a device.
    only_apps: Option<BTreeSet<String>>,
    /// Images being pulled, with their download progress in percent.
    pulls: Arc<watch::Sender<BTreeMap<String, u8>>>,
}

/// Download progress of one pull, from the engine's per-layer messages.
#[derive(Debug, Default)]
pub struct PullProgress {
    /// Layer id → (bytes downloaded, layer size); size 0 while unknown.
    layers: BTreeMap<String, (u64, u64)>,
}

impl PullProgress {
    /// Takes one message of the pull stream.
    pub fn update(&mut self, id: Option<&str>, status: Option<&str>, current: i64, total: i64) {
        let (Some(id), Some(status)) = (id, status) else {
            return;
        };
        // Messages about the image as a whole ("Pulling from …",
        // "Digest: …") carry the tag or no layer id.
        if status.starts_with("Pulling from") || status.starts_with("Digest") {
            return;
        }
        let layer = self.layers.entry(id.to_owned()).or_insert((0, 0));
        match status {
            "Downloading" => {
                if total > 0 {
                    layer.1 = total as u64;
                }
                layer.0 = current.max(0) as u64;
            }
            "Verifying Checksum" | "Download complete" | "Extracting" | "Pull complete"
            | "Already exists" => {
                if layer.1 == 0 {
                    // Done before any size was seen: count it as done.
                    layer.1 = 1;
                }
                layer.0 = layer.1;
            }
            _ => {}
        }
    }

    /// Percent of the known layer bytes downloaded (99 at most: 100 is the
    /// end of the pull).
    pub fn percent(&self) -> u8 {
        let (done, total) = self
            .layers
            .values()
            .fold((0u64, 0u64), |(d, t), (c, s)| (d + c, t + s));
        (done.min(total) * 100)
            .checked_div(total)
            .map_or(0, |pct| pct.min(99) as u8)
    }
}

/// Removes an image from the pulls in progress when its pull ends, however
/// it ends.
struct PullEntry<'a> {
    pulls: &'a watch::Sender<BTreeMap<String, u8>>,
    image: &'a str,
}

impl<'a> PullEntry<'a> {
    fn start(pulls: &'a watch::Sender<BTreeMap<String, u8>>, image: &'a str) -> Self {
        pulls.send_modify(|p| {
            p.insert(image.to_owned(), 0);
        });
        Self { pulls, image }
    }
    fn progress(&self, pct: u8) {
        self.pulls
            .send_if_modified(|p| match p.get_mut(self.image) {
                Some(v) if *v != pct => {
                    *v = pct;
                    true
                }
                _ => false,
            });
    }
}

impl Drop for PullEntry<'_> {
    fn drop(&mut self) {
        self.pulls.send_modify(|p| {
            p.remove(self.image);
        });
    }
}

impl Engine {
    /// Connects to `host` (`unix:///path`), or to `DOCKER_HOST` / the
    /// default socket when `None`, and agrees on an API version.
    pub async fn connect(host: Option<&str>) -> Result<Self, EngineError> {
        let name = host.map(str::to_owned).unwrap_or_else(|| {
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
        });
        let connect_err = |source| EngineError::Connect {
            host: name.clone(),
            source,
        };
        let docker = Docker::connect_with_host(&name).map_err(connect_err)?;
        let docker = docker.negotiate_version().await.map_err(connect_err)?;
        Ok(Self {
            docker,
            only_apps: None,
            pulls: Arc::new(watch::channel(BTreeMap::new()).0),
        })
    }

    /// An engine client for `host` that has not talked to the engine yet
    /// (no version negotiation; nothing is sent until the first call).
    pub fn unconnected(host: &str) -> Result<Self, EngineError> {
        let docker = Docker::connect_with_host(host).map_err(|source| EngineError::Connect {
            host: host.to_owned(),
            source,
        })?;
        Ok(Self {
            docker,
            only_apps: None,
            pulls: Arc::new(watch::channel(BTreeMap::new()).0),
        })
    }

    /// The images being pulled right now, with their progress in percent.
    pub fn pulls(&self) -> watch::Receiver<BTreeMap<String, u8>> {
        self.pulls.subscribe()
    }

    /// Limits what [`Engine::current`] sees to `apps`.
    pub fn scoped_to(mut self, apps: impl IntoIterator<Item = String>) -> Self {
        self.only_apps = Some(apps.into_iter().collect());
        self
    }

    /// True when `app_uuid` is one this engine handle sees.
    pub fn in_scope(&self, app_uuid: &str) -> bool {
        self.only_apps.as_ref().is_none_or(|a| a.contains(app_uuid))
    }

    /// The bollard client, for the log forwarder and tests.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// True when the engine answers a ping.
    pub async fn ping(&self) -> bool {
        self.docker.ping().await.is_ok()
    }

    /// Managed containers, networks and volumes.
    pub async fn current(&self) -> Result<CurrentState, EngineError> {
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&managed_filter())
            .build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(call("list containers"))?;
        let mut containers = Vec::new();
        for c in list {
            let labels = c.labels.unwrap_or_default();
            let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
            let state = match c.state {
                Some(ContainerSummaryStateEnum::CREATED) => RunState::Created,
                Some(
                    ContainerSummaryStateEnum::RUNNING | ContainerSummaryStateEnum::RESTARTING,
                ) => RunState::Running,
                Some(ContainerSummaryStateEnum::DEAD) => RunState::Dead,
                _ => RunState::Stopped,
            };
            containers.push(Container {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.first().map(|s| s.trim_start_matches('/').to_owned()))
                    .unwrap_or_default(),
                managed: get(labels::MANAGED) == "1",
                app_uuid: get(labels::APP_UUID),
                service: get(labels::SERVICE_NAME),
                release_uuid: get(labels::RELEASE_UUID),
                config_hash: get(labels::CONFIG_HASH),
                image: c.image.unwrap_or_default(),
                state,
                created: c.created.unwrap_or_default(),
                volumes: {
                    let mut v: Vec<String> = c
                        .mounts
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|m| m.typ.as_deref() == Some("volume"))
                        .filter_map(|m| m.name)
                        .collect();
                    v.sort();
                    v
                },
                networks: {
                    let mut n: Vec<String> = c
                        .network_settings
                        .and_then(|n| n.networks)
                        .map(|n| n.into_keys().collect())
                        .unwrap_or_default();
                    n.sort();
                    n
                },
            });
        }
        containers.retain(|c| self.in_scope(&c.app_uuid));
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        let nets = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default()
                    .filters(&managed_filter())
                    .build(),
            ))
            .await
            .map_err(call("list networks"))?;
        let mut networks: Vec<AppObject> = nets
            .into_iter()
            .filter_map(|n| {
                let all = n.labels.unwrap_or_default();
                let app_uuid = all.get(labels::APP_UUID)?.clone();
                Some(AppObject {
                    name: n.name?,
                    app_uuid,
                    driver: n.driver,
                    options: n.options.unwrap_or_default().into_iter().collect(),
                    labels: compose_labels(all),
                })
            })
            .collect();
        networks.retain(|n| self.in_scope(&n.app_uuid));
        networks.sort();
        let vols = self
            .docker
            .list_volumes(Some(
                ListVolumesOptionsBuilder::default()
                    .filters(&managed_filter())
                    .build(),
            ))
            .await
            .map_err(call("list volumes"))?;
        let mut volumes: Vec<AppObject> = vols
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| {
                let app_uuid = v.labels.get(labels::APP_UUID)?.clone();
                Some(AppObject {
                    name: v.name,
                    app_uuid,
                    driver: Some(v.driver),
                    options: v.options.into_iter().collect(),
                    labels: compose_labels(v.labels),
                })
            })
            .collect();
        volumes.retain(|n| self.in_scope(&n.app_uuid));
        volumes.sort();
        Ok(CurrentState {
            containers,
            networks,
            volumes,
        })
    }

    /// Which of `refs` the engine has.
    pub async fn images_present<'a>(
        &self,
        refs: impl IntoIterator<Item = &'a String>,
    ) -> Result<BTreeSet<String>, EngineError> {
        let mut out = BTreeSet::new();
        for r in refs {
            match self.docker.inspect_image(r).await {
                Ok(_) => {
                    out.insert(r.clone());
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(call(format!("inspect image {r}"))(e)),
            }
        }
        Ok(out)
    }

    /// Runs one step. Steps are idempotent where the engine allows it: a
    /// container already stopped or gone counts as done.
    pub async fn run(&self, step: &Step) -> Result<(), EngineError> {
        let d = &self.docker;
        match step {
            Step::FetchImage { image } => {
                let opts = CreateImageOptionsBuilder::default()
                    .from_image(image)
                    .build();
                let mut s = d.create_image(Some(opts), None, None);
                let entry = PullEntry::start(&self.pulls, image);
                let mut progress = PullProgress::default();
                while let Some(item) = s.next().await {
                    let info = item.map_err(call(format!("pull {image}")))?;
                    let detail = info.progress_detail.unwrap_or_default();
                    progress.update(
                        info.id.as_deref(),
                        info.status.as_deref(),
                        detail.current.unwrap_or(0),
                        detail.total.unwrap_or(0),
                    );
                    entry.progress(progress.percent());
                }
            }
            Step::CreateNetwork {
                name,
                app_uuid,
                config,
            } => {
                let req = NetworkCreateRequest {
                    name: name.clone(),
                    driver: config.driver.clone(),
                    options: (!config.options.is_empty())
                        .then(|| config.options.clone().into_iter().collect()),
                    labels: Some(object_labels(app_uuid, &config.labels)),
                    ..Default::default()
                };
                d.create_network(req)
                    .await
                    .map_err(call(format!("create network {name}")))?;
            }
            Step::CreateVolume {
                name,
                app_uuid,
                config,
            } => {
                let req = VolumeCreateRequest {
                    name: Some(name.clone()),
                    driver: config.driver.clone(),
                    driver_opts: (!config.options.is_empty())
                        .then(|| config.options.clone().into_iter().collect()),
                    labels: Some(object_labels(app_uuid, &config.labels)),
                    ..Default::default()
                };
                d.create_volume(req)
                    .await
                    .map_err(call(format!("create volume {name}")))?;
            }
            Step::Create { spec } => {
                let body = create_body(spec)?;
                let opts = CreateContainerOptionsBuilder::default()
                    .name(&spec.name)
                    .build();
                match d.create_container(Some(opts), body).await {
                    Ok(_) => {}
                    // Created before a crash: the planner sees it next round.
                    Err(BollardError::DockerResponseServerError {
                        status_code: 409, ..
                    }) => {}
                    Err(e) => return Err(call(format!("create container {}", spec.name))(e)),
                }
                // The engine takes one network at create; join the others.
                for n in spec.networks.iter().skip(1) {
                    let req = bollard::models::NetworkConnectRequest {
                        container: spec.name.clone(),
                        endpoint_config: Some(EndpointSettings {
                            aliases: Some(vec![spec.service.clone()]),
                            ..Default::default()
                        }),
                    };
                    match d.connect_network(n, req).await {
                        Ok(()) => {}
                        // Already connected (a retried step).
                        Err(BollardError::DockerResponseServerError {
                            status_code: 403 | 409,
                            ..
                        }) => {}
                        Err(e) => return Err(call(format!("connect {} to {n}", spec.name))(e)),
                    }
                }
            }
            Step::Start { id, .. } => match d.start_container(id, None).await {
                Ok(()) => {}
                Err(e) if is_not_modified(&e) => {}
                Err(e) => return Err(call(format!("start container {id}"))(e)),
            },
            Step::Stop { id, .. } => {
                let opts = StopContainerOptionsBuilder::default()
                    .t(STOP_TIMEOUT_SECS)
                    .build();
                match d.stop_container(id, Some(opts)).await {
                    Ok(()) => {}
                    Err(e) if is_not_modified(&e) || is_not_found(&e) => {}
                    Err(e) => return Err(call(format!("stop container {id}"))(e)),
                }
            }
            Step::Kill { id, .. } => {
                let opts = KillContainerOptionsBuilder::default()
                    .signal("SIGKILL")
                    .build();
                match d.kill_container(id, Some(opts)).await {
                    Ok(()) => {}
                    Err(e) if is_not_found(&e) => {}
                    // 409: not running any more.
                    Err(BollardError::DockerResponseServerError {
                        status_code: 409, ..
                    }) => {}
                    Err(e) => return Err(call(format!("kill container {id}"))(e)),
                }
            }
            Step::Remove { id, .. } => {
                // Never `v: true`: named volumes outlive their containers.
                let opts = RemoveContainerOptionsBuilder::default().force(true).build();
                match d.remove_container(id, Some(opts)).await {
                    Ok(()) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(call(format!("remove container {id}"))(e)),
                }
            }
            Step::RemoveImage { image } => {
                let opts = RemoveImageOptionsBuilder::default().build();
                match d.remove_image(image, Some(opts), None).await {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => {}
                    // In use by a container the supervisor does not manage:
                    // leave it to its owner.
                    Err(BollardError::DockerResponseServerError {
                        status_code: 409, ..
                    }) => {}
                    Err(e) => return Err(call(format!("remove image {image}"))(e)),
                }
            }
            Step::RemoveNetwork { name } => match d.remove_network(name).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(call(format!("remove network {name}"))(e)),
            },
            Step::RemoveVolume { name } => {
                match d
                    .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
                    .await
                {
                    Ok(()) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(call(format!("remove volume {name}"))(e)),
                }
            }
            Step::WaitForLock { .. } | Step::WaitForHandover { .. } => {}
        }
        Ok(())
    }

    /// Restarts a container (local API).
    pub async fn restart(&self, id: &str) -> Result<(), EngineError> {
        self.docker
            .restart_container(id, None)
            .await
            .map_err(call(format!("restart {id}")))
    }

    /// Stops a container (local API); stopped containers stay stopped.
    pub async fn stop(&self, id: &str) -> Result<(), EngineError> {
        self.run(&Step::Stop {
            id: id.into(),
            app_uuid: String::new(),
            service: String::new(),
        })
        .await
    }

    /// Starts a container (local API).
    pub async fn start(&self, id: &str) -> Result<(), EngineError> {
        self.run(&Step::Start {
            id: id.into(),
            app_uuid: String::new(),
            service: String::new(),
        })
        .await
    }
}

/// The labels of a network or volume the supervisor creates: the compose
/// labels and the resin ones.
fn object_labels(app_uuid: &str, compose: &BTreeMap<String, String>) -> HashMap<String, String> {
    let mut l: HashMap<String, String> = compose.clone().into_iter().collect();
    l.insert(labels::MANAGED.to_owned(), "1".to_owned());
    l.insert(labels::APP_UUID.to_owned(), app_uuid.to_owned());
    l
}

/// The compose labels of an engine object: all but the two the supervisor
/// adds ([`object_labels`]).
fn compose_labels(all: HashMap<String, String>) -> BTreeMap<String, String> {
    all.into_iter()
        .filter(|(k, _)| k != labels::MANAGED && k != labels::APP_UUID)
        .collect()
}

fn restart_policy(r: Restart) -> RestartPolicy {
    let name = match r {
        Restart::No => RestartPolicyNameEnum::NO,
        Restart::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
        Restart::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
        Restart::Always => RestartPolicyNameEnum::ALWAYS,
    };
    RestartPolicy {
        name: Some(name),
        maximum_retry_count: None,
    }
}

/// The engine's create body for a spec.
pub fn create_body(spec: &ServiceSpec) -> Result<ContainerCreateBody, EngineError> {
    // The cloud validated these at upload (api-types' compose parser); a
    // release stored before that is refused here, naming the field.
    let bad = |field: String, message: String| EngineError::Compose {
        service: spec.service.clone(),
        source: ComposeError {
            path: format!("services.{}.{field}", spec.service),
            message,
        },
    };
    let mut port_bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let m: PortMapping = p.parse().map_err(|e| bad(format!("ports[{i}]"), e))?;
        port_bindings
            .entry(m.container_key())
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: m.host_ip,
                host_port: m.host_port.map(|p| p.to_string()),
            });
    }
    let restart: Restart = spec.restart.parse().map_err(|e| bad("restart".into(), e))?;
    let devices = spec
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let d: ComposeDevice = d.parse().map_err(|e| bad(format!("devices[{i}]"), e))?;
            Ok(DeviceMapping {
                path_on_host: Some(d.host),
                path_in_container: Some(d.container),
                cgroup_permissions: Some(d.permissions),
            })
        })
        .collect::<Result<Vec<_>, EngineError>>()?;
    let network_mode = spec
        .network_mode
        .clone()
        .or_else(|| spec.networks.first().cloned());
    let endpoints: HashMap<String, EndpointSettings> = spec
        .networks
        .iter()
        .take(1)
        .map(|n| {
            (
                n.clone(),
                EndpointSettings {
                    aliases: Some(vec![spec.service.clone()]),
                    ..Default::default()
                },
            )
        })
        .collect();
    // The engine publishes only exposed ports: a binding alone is ignored
    // (`docker run -p` exposes the port too).
    let mut exposed: Vec<String> = port_bindings.keys().cloned().collect();
    exposed.sort();
    Ok(ContainerCreateBody {
        image: Some(spec.image.clone()),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        cmd: spec.command.clone(),
        entrypoint: spec.entrypoint.clone(),
        labels: Some(spec.labels.clone().into_iter().collect()),
        host_config: Some(HostConfig {
            binds: Some(spec.binds.clone()),
            port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
            restart_policy: Some(restart_policy(restart)),
            privileged: Some(spec.privileged),
            devices: Some(devices),
            cap_add: (!spec.cap_add.is_empty()).then(|| spec.cap_add.clone()),
            cap_drop: (!spec.cap_drop.is_empty()).then(|| spec.cap_drop.clone()),
            network_mode,
            ..Default::default()
        }),
        networking_config: (!endpoints.is_empty()).then_some(NetworkingConfig {
            endpoints_config: Some(endpoints),
        }),
        ..Default::default()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_port_is_named_with_its_service_and_field() {
        let mut spec = crate::spec::ServiceSpec::build(
            "dev",
            "app",
            &Default::default(),
            "rel",
            "web",
            &resin_api_types::ServiceTarget {
                image: "x".into(),
                restart: "always".into(),
                ports: vec!["127.0.0.1:8080:80/udp".into()],
                ..Default::default()
            },
        );
        let body = create_body(&spec).unwrap();
        let b = &body.host_config.unwrap().port_bindings.unwrap()["80/udp"];
        let b = &b.as_ref().unwrap()[0];
        assert_eq!(b.host_port.as_deref(), Some("8080"));
        assert_eq!(b.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(body.exposed_ports, Some(vec!["80/udp".to_owned()]));
        spec.ports.push("x:80".into());
        let e = create_body(&spec).unwrap_err().to_string();
        assert!(
            e.contains("services.web.ports[1]") && e.contains("x:80"),
            "{e}"
        );
    }
}
