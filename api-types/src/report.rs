//! The current state report: `PATCH /device/v3/state`.
//!
//! Body: `{ "<device uuid>": DeviceReport }`. Every field is optional, so a
//! device can send only what changed; the cloud updates what is present.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `{ "<device uuid>": DeviceReport }`
pub type StateReport = BTreeMap<String, DeviceReport>;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceReport {
    /// Apps by app uuid. When present, it is the full set of apps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apps: Option<BTreeMap<String, AppReport>>,
    /// Overall device status: `idle`, `updating`, `downloading`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The running OS version (`VERSION` from `/etc/os-release`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    /// The running OS-update state machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_update: Option<OsUpdateReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor_version: Option<String>,
    /// The device's IP addresses (loopback excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<Vec<String>>,
    /// CPU use over the last interval, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_usage: Option<f64>,
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_usage: Option<u64>,
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_total: Option<u64>,
    /// Bytes used on the data partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_usage: Option<u64>,
    /// Bytes in the data partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_total: Option<u64>,
    /// Degrees Celsius, where the device exposes a thermal zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_temp: Option<f64>,
    /// What became of the target state's open actions ([`crate::actions`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<crate::actions::ActionOutcome>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppReport {
    /// The release the app's services belong to, when they all agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_uuid: Option<String>,
    /// Services by name.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceReport {
    pub status: ServiceStatus,
    pub release_uuid: String,
    pub image: String,
    /// Download progress in percent while `status` is `downloading`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_progress: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
}

/// A service's status as the supervisor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceStatus {
    Downloading,
    Downloaded,
    Installing,
    Installed,
    Starting,
    Running,
    Stopping,
    Stopped,
    Exited,
    Dead,
    HandingOver,
}

/// The OS-update state machine's states, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OsUpdateState {
    #[default]
    Idle,
    Downloading,
    Installing,
    Rebooting,
    Verifying,
    Committed,
    Failed,
    RolledBack,
}

impl OsUpdateState {
    /// The wire name, e.g. `rolled-back`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Downloading => "downloading",
            Self::Installing => "installing",
            Self::Rebooting => "rebooting",
            Self::Verifying => "verifying",
            Self::Committed => "committed",
            Self::Failed => "failed",
            Self::RolledBack => "rolled-back",
        }
    }
}

impl std::fmt::Display for OsUpdateState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsUpdateReport {
    pub state: OsUpdateState,
    /// The version being installed (or last attempted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
    /// Percent, 0..=100, for downloading and installing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
    /// Why the update failed or was rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// RAUC slot the device booted from, e.g. `rootfs.1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_slot: Option<String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn os_update_state_uses_kebab_case_on_the_wire() {
        let s = serde_json::to_string(&OsUpdateState::RolledBack).unwrap();
        assert_eq!(s, "\"rolled-back\"");
        assert_eq!(OsUpdateState::RolledBack.to_string(), "rolled-back");
    }

    #[test]
    fn empty_report_serialises_to_empty_object() {
        let r = DeviceReport::default();
        assert_eq!(serde_json::to_string(&r).unwrap(), "{}");
    }
}
