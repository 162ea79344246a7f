//! The engine model the planner reads: containers, networks and volumes as
//! the engine reports them, and the facts beyond the engine (locks, images,
//! hand-over signals, settings) in [`PlanContext`].

use std::collections::{BTreeMap, BTreeSet};

use resin_api_types::AppTarget;
use serde::Serialize;

use crate::spec::ServiceSpec;

/// Target apps by app uuid (the `apps` of a device's target state).
pub type TargetApps = BTreeMap<String, AppTarget>;

/// The state of a container as the engine reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Created,
    Running,
    /// Exited, paused…: not running, not fresh.
    Stopped,
    /// The engine could not stop or remove it cleanly: never reused, always
    /// replaced.
    Dead,
}

/// A container on the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Container {
    pub id: String,
    pub name: String,
    /// `io.resin.managed=1`; the planner never touches a container without it.
    pub managed: bool,
    pub app_uuid: String,
    pub service: String,
    pub release_uuid: String,
    pub config_hash: String,
    /// The image reference the container was created from.
    pub image: String,
    pub state: RunState,
    /// Creation time, seconds since the epoch.
    pub created: i64,
    /// Named volumes it mounts (engine names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// Networks it joined (engine names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
}

/// A network or volume the supervisor created.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct AppObject {
    pub name: String,
    pub app_uuid: String,
    /// The engine's driver; `None` when unknown (taken as the default).
    pub driver: Option<String>,
    /// Driver options as created.
    pub options: BTreeMap<String, String>,
    /// The compose labels (without the `io.resin.*` ones).
    pub labels: BTreeMap<String, String>,
}

/// What a network or volume is created with: compose `driver`,
/// `driver_opts` and `labels`. A difference recreates it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ObjectConfig {
    pub driver: Option<String>,
    pub options: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

impl ObjectConfig {
    /// True when `have` was created with this config; a missing driver is
    /// the engine's default (`default_driver`).
    pub(super) fn matches(&self, have: &AppObject, default_driver: &str) -> bool {
        let d = |x: &Option<String>| x.clone().unwrap_or_else(|| default_driver.to_owned());
        d(&self.driver) == d(&have.driver)
            && self.options == have.options
            && self.labels == have.labels
    }
}

/// What the engine runs now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CurrentState {
    pub containers: Vec<Container>,
    /// Managed networks.
    pub networks: Vec<AppObject>,
    /// Managed volumes.
    pub volumes: Vec<AppObject>,
}

/// Facts beyond the engine's state that decide the plan.
#[derive(Debug, Clone, Default)]
pub struct PlanContext {
    pub device_uuid: String,
    /// (app uuid, service) pairs whose update lock file exists.
    pub locks_held: BTreeSet<(String, String)>,
    /// Apps whose app-wide lock (`/tmp/resin/locks/<app>/updates.lock`)
    /// exists: it holds every service of the app.
    pub app_locks_held: BTreeSet<String>,
    /// Override the update locks.
    pub force: bool,
    /// Image references present on the engine.
    pub images_present: BTreeSet<String>,
    /// Images the supervisor fetched; only these are ever removed.
    pub managed_images: BTreeSet<String>,
    /// (app uuid, service) pairs whose new container signalled hand-over.
    pub handover_signalled: BTreeSet<(String, String)>,
    /// Seconds since the epoch, for hand-over timeouts.
    pub now: i64,
    /// Remove the volumes a release dropped and those of removed apps
    /// (config var `RESIN_SUPERVISOR_REMOVE_VOLUMES`, off by default).
    pub remove_volumes: bool,
}

/// A service's containers as the target's release sees them: a container
/// whose config hash equals the target spec's is that release's container,
/// whatever release it was created in (the engine cannot relabel a
/// container, so its `io.resin.release-uuid` label keeps the release it was
/// created for; the supervisor's view and its state report use the target's).
pub fn adopt_releases(current: &mut CurrentState, specs: &[ServiceSpec]) {
    for c in current.containers.iter_mut().filter(|c| c.managed) {
        if let Some(s) = specs.iter().find(|s| {
            s.app_uuid == c.app_uuid && s.service == c.service && s.config_hash == c.config_hash
        }) {
            c.release_uuid = s.release_uuid.clone();
        }
    }
}
