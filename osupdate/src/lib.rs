//! resin-osupdate: A/B OS updates through RAUC over D-Bus, run by the
//! supervisor as a task (download bundle, install, reboot, verify health,
//! commit or roll back).
//!
//! - [`state`]: the state machine and its persisted file
//! - [`rauc`]: our zbus proxy for RAUC's Installer interface
//! - [`download`]: resumable, sha256-verified bundle download
//! - [`health`]: the health gate before committing
//! - [`agent`]: the driver that performs the side effects
//! - [`failpoint`]: crash-test hooks (feature `failpoints`)

use std::path::PathBuf;

use resin_api_types::{OsTarget, OsUpdateReport};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// What the agent needs from the supervisor.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where `osupdate.json` lives, e.g. `/mnt/state/resin-supervisor`.
    pub state_dir: PathBuf,
    /// Where bundles are downloaded (`<sha256>.raucb.part`, then `.raucb`).
    pub download_dir: PathBuf,
    /// Sent as `Authorization: Bearer <key>` when downloading bundles.
    pub device_api_key: String,
    /// The running OS's os-release, normally `/etc/os-release`.
    pub os_release_path: PathBuf,
    /// D-Bus address of the bus RAUC is on; `None` means the system bus.
    pub dbus_address: Option<String>,
}

/// The supervisor's view of its own health, used to gate the commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    pub engine_reachable: bool,
    pub loop_running: bool,
    pub cloud_reachable: bool,
}

/// Asks the supervisor to reboot the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebootRequest {
    pub reason: String,
}

/// Starts the OS-update agent. It follows `target`, reports on the returned
/// watch channel, and sends a [`RebootRequest`] when it needs a reboot.
pub fn spawn(
    cfg: AgentConfig,
    target: watch::Receiver<Option<OsTarget>>,
    health: watch::Receiver<Health>,
    reboot: mpsc::Sender<RebootRequest>,
) -> (watch::Receiver<OsUpdateReport>, JoinHandle<()>) {
    spawn_with(cfg, AgentOptions::default(), target, health, reboot)
}

/// [`spawn`] with tunables other than the defaults.
pub fn spawn_with(
    cfg: AgentConfig,
    opts: AgentOptions,
    target: watch::Receiver<Option<OsTarget>>,
    health: watch::Receiver<Health>,
    reboot: mpsc::Sender<RebootRequest>,
) -> (watch::Receiver<OsUpdateReport>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(OsUpdateReport::default());
    let agent = agent::Agent::new(cfg, opts, tx, target, health, reboot);
    let handle = tokio::spawn(agent.run());
    (rx, handle)
}

pub mod agent;
pub mod download;
pub mod failpoint;
pub mod health;
pub mod rauc;
pub mod state;

pub use agent::{os_version, AgentOptions, BOOT_CONFIRMED};
