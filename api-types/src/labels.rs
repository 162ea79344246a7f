//! Container labels and update strategies (see design.md, "Apps on the device").

use serde::{Deserialize, Serialize};

/// Set to `1` on every container the supervisor manages. Containers without
/// it are never touched.
pub const MANAGED: &str = "io.resin.managed";
pub const APP_UUID: &str = "io.resin.app-uuid";
pub const SERVICE_NAME: &str = "io.resin.service-name";
pub const RELEASE_UUID: &str = "io.resin.release-uuid";
/// Hash of the service's effective configuration, so config changes are
/// detected without comparing every field the engine reports.
pub const CONFIG_HASH: &str = "io.resin.config-hash";
/// Picks the [`UpdateStrategy`].
pub const UPDATE_STRATEGY: &str = "io.resin.update.strategy";
/// For `hand-over`: seconds the old container may keep running (default 60).
pub const HANDOVER_TIMEOUT: &str = "io.resin.update.handover-timeout";

/// How a service moves from one release to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateStrategy {
    /// Pull the new image, then stop the old container and start the new
    /// one. The old one keeps running until the image is there.
    #[default]
    DownloadThenKill,
    /// Stop the old container first, then pull (saves memory, costs downtime).
    KillThenDownload,
    /// Remove the old container and its image before pulling (saves disk).
    DeleteThenDownload,
    /// Start the new container beside the old one, and stop the old one when
    /// the new one signals it has taken over (or a timeout passes).
    HandOver,
}

impl UpdateStrategy {
    /// Reads the strategy from a service's labels; unknown values fall back
    /// to the default, as balena does.
    pub fn from_labels(labels: &std::collections::BTreeMap<String, String>) -> Self {
        match labels.get(UPDATE_STRATEGY).map(String::as_str) {
            Some("kill-then-download") => Self::KillThenDownload,
            Some("delete-then-download") => Self::DeleteThenDownload,
            Some("hand-over") => Self::HandOver,
            _ => Self::DownloadThenKill,
        }
    }
}

/// The path of a service's update lock (design.md): while it exists, the
/// supervisor does not stop or replace the service unless forced.
pub fn update_lock_path(app: &str, service: &str) -> String {
    format!("/tmp/resin/locks/{app}/{service}/updates.lock")
}
