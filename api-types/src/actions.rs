//! Device actions: a reboot, or a restart of all services or of one, asked
//! for by a user and carried out once by the device's supervisor.
//!
//! - A user asks with `POST /v1/device({id})/actions` ([`ActionRequest`])
//!   and reads them back with `GET /v1/device({id})/actions` ([`ActionInfo`],
//!   newest first) or `GET /v1/device_action`.
//! - The open ones (pending or started) travel in the device's target state,
//!   [`crate::DeviceTarget::actions`] ([`DeviceAction`]); a target without
//!   actions serialises exactly as before, and a supervisor that does not
//!   know the field ignores it.
//! - The supervisor runs each action once, in id order, and tells the cloud
//!   in its state report, [`crate::DeviceReport::actions`]
//!   ([`ActionOutcome`]); a done or failed action leaves the target state.
//! - `POST /v1/device({id})/move` ([`MoveRequest`]) moves a device to
//!   another fleet of the same owner and device type.

use serde::{Deserialize, Serialize};

/// What a device is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    /// Reboot the device (after the update locks are released).
    Reboot,
    /// Restart every service, or only `service`.
    Restart,
    /// An action this supervisor does not know (a newer cloud's); it is
    /// reported as failed, never run.
    #[serde(other)]
    Unknown,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Reboot => "reboot",
            ActionKind::Restart => "restart",
            ActionKind::Unknown => "unknown",
        }
    }
}

/// One open action in the target state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceAction {
    /// The cloud's id; increasing, so a supervisor runs those above the last
    /// one it ran.
    pub id: i64,
    pub action: ActionKind,
    /// For `restart`: only this service (compose name); `None` restarts all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// Where an action is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionState {
    /// Asked for; the device has not reported it yet.
    Pending,
    /// The device began it (a reboot waiting for update locks, or under way).
    Started,
    Done,
    Failed,
}

impl ActionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionState::Pending => "pending",
            ActionState::Started => "started",
            ActionState::Done => "done",
            ActionState::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => ActionState::Pending,
            "started" => ActionState::Started,
            "done" => ActionState::Done,
            "failed" => ActionState::Failed,
            _ => return None,
        })
    }
    /// Done or failed: the action has left the target state.
    pub fn is_final(self) -> bool {
        matches!(self, ActionState::Done | ActionState::Failed)
    }
}

/// What the supervisor reports about one action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionOutcome {
    pub id: i64,
    /// `started`, `done` or `failed` (never `pending`).
    pub state: ActionState,
    /// What happened, e.g. "restarted web" or "no service named db".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The body of `POST /v1/device({id})/actions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    pub action: ActionKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// An action as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionInfo {
    pub id: i64,
    pub device: i64,
    pub action: ActionKind,
    #[serde(default)]
    pub service: Option<String>,
    pub state: ActionState,
    /// The device's message, once it reported one.
    #[serde(default)]
    pub result: Option<String>,
    /// The user who asked.
    #[serde(default)]
    pub requested_by: Option<i64>,
    /// RFC 3339.
    pub requested_at: String,
    pub updated_at: String,
}

/// The body of `POST /v1/device({id})/move`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    /// The fleet to move to: the same owner and device type.
    pub fleet: i64,
}

/// The answer of `POST /v1/device({id})/move`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveResult {
    pub device: i64,
    pub from_fleet: i64,
    pub fleet: i64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::DeviceTarget;

    #[test]
    fn a_target_without_actions_serialises_as_before_and_old_readers_ignore_them() {
        let t = DeviceTarget {
            name: "d".into(),
            ..Default::default()
        };
        // No "actions" key: ETags of devices without actions do not change.
        let s = serde_json::to_string(&t).unwrap();
        assert!(!s.contains("actions"), "{s}");
        // An old supervisor's DeviceTarget had no actions field: serde
        // ignores unknown keys, which this struct also relies on.
        #[derive(Deserialize)]
        struct Old {
            name: String,
        }
        let with: String = r#"{"name":"d","actions":[{"id":3,"action":"reboot"}]}"#.into();
        assert_eq!(serde_json::from_str::<Old>(&with).unwrap().name, "d");
        let new: DeviceTarget = serde_json::from_str(&with).unwrap();
        assert_eq!(
            new.actions,
            [DeviceAction {
                id: 3,
                action: ActionKind::Reboot,
                service: None
            }]
        );
    }

    #[test]
    fn an_unknown_action_kind_parses_as_unknown() {
        let a: DeviceAction =
            serde_json::from_str(r#"{"id":1,"action":"shutdown","service":null}"#).unwrap();
        assert_eq!(a.action, ActionKind::Unknown);
        assert!(serde_json::from_str::<ActionRequest>(r#"{"action":"restart","x":1}"#).is_err());
    }
}
