//! Staged rollouts: `POST /v1/rollout`, `GET /v1/rollout({id})/progress`
//! and the actions `POST /v1/rollout({id})/{start,pause,resume,halt,rollback,cancel}`.
//!
//! A rollout takes a fleet to a release (or an OS version) in waves. Each
//! wave is either a cumulative percentage of the fleet (membership by a hash
//! of the rollout id and device uuid, so it is stable across restarts) or a
//! tag selector for hand-picked canaries.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The body of `POST /v1/rollout`. Exactly one of `release` and
/// `os_version` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRollout {
    pub fleet: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The release to roll out (a release of `fleet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<i64>,
    /// The OS version to roll out (an OS release of the fleet's owner and
    /// device type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    pub waves: Vec<Wave>,
}

/// One wave. Exactly one of `percent` (cumulative, the last percentage
/// wave is 100) and `tags` (devices having every tag) is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    /// How long a device must stay healthy on the new release before it
    /// counts as healthy (seconds).
    #[serde(default = "defaults::soak_secs")]
    pub soak_secs: u64,
    /// The share of the wave (percent, 1..=100) that must be healthy for the
    /// rollout to go on.
    #[serde(default = "defaults::success_percent")]
    pub success_percent: u32,
    /// Pause (instead of going on) once this wave met its success threshold.
    #[serde(default)]
    pub pause_after: bool,
    /// Halt when more than this percentage (0..=100) of the wave's decided
    /// devices failed, once at least `min_sample` are decided.
    #[serde(default = "defaults::max_failure_percent")]
    pub max_failure_percent: u32,
    /// Halt when more than this many devices of the wave failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<u64>,
    /// Decided devices (healthy or failed) needed before the percentage
    /// threshold applies.
    #[serde(default = "defaults::min_sample")]
    pub min_sample: u64,
    /// A device not healthy this long after it was assigned counts as
    /// failed (seconds); more than `soak_secs`.
    #[serde(default = "defaults::timeout_secs")]
    pub timeout_secs: u64,
}

/// Wave defaults.
pub mod defaults {
    pub fn soak_secs() -> u64 {
        300
    }
    pub fn success_percent() -> u32 {
        100
    }
    pub fn max_failure_percent() -> u32 {
        10
    }
    pub fn min_sample() -> u64 {
        1
    }
    pub fn timeout_secs() -> u64 {
        3600
    }
}

impl Wave {
    /// A percentage wave with the defaults.
    pub fn percent(p: u32) -> Self {
        Wave {
            percent: Some(p),
            tags: None,
            soak_secs: defaults::soak_secs(),
            success_percent: defaults::success_percent(),
            pause_after: false,
            max_failure_percent: defaults::max_failure_percent(),
            max_failures: None,
            min_sample: defaults::min_sample(),
            timeout_secs: defaults::timeout_secs(),
        }
    }
}

/// A rollout's state. `running` → `paused`/`halted`/`completed`/`cancelled`
/// and back as the guarded transitions in the cloud allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutState {
    Draft,
    Running,
    Paused,
    Halted,
    Completed,
    Cancelled,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Halted => "halted",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "draft" => Self::Draft,
            "running" => Self::Running,
            "paused" => Self::Paused,
            "halted" => Self::Halted,
            "completed" => Self::Completed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

impl std::fmt::Display for RolloutState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The optional body of an action (`start`, `pause`, …).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutAction {
    /// Recorded in the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Device counts of one wave.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveCounts {
    /// Devices in the wave.
    pub size: u64,
    /// Not yet given the new release (the wave has not started).
    pub pending: u64,
    /// Given the new release, not yet decided.
    pub in_progress: u64,
    pub healthy: u64,
    pub failed: u64,
    /// Moved back by a rollback.
    pub reverted: u64,
    /// Pinned (or given an OS version of their own) after the rollout
    /// started; they keep their pin and are not counted.
    pub excluded: u64,
}

/// `GET /v1/rollout({id})/progress`, and the answer of every action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutProgress {
    pub id: i64,
    pub fleet: i64,
    pub name: String,
    pub state: RolloutState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    /// Index of the wave being rolled out (or next, when paused between waves).
    pub current_wave: u64,
    pub waves: Vec<WaveProgress>,
    /// Newest last.
    pub events: Vec<RolloutEvent>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaveProgress {
    pub wave: Wave,
    pub counts: WaveCounts,
}

/// A transition, with its reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutEvent {
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<RolloutState>,
    pub to: RolloutState,
    /// `create`, `start`, `pause`, `resume`, `halt`, `rollback`, `cancel`,
    /// `advance`, `complete` (the last two and automatic halts/pauses are
    /// the evaluator's).
    pub action: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<u64>,
    /// The wave's counts when it happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<WaveCounts>,
}
