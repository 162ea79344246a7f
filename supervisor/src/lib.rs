//! resin-supervisor: the device agent. It registers the device, polls its
//! target state, reconciles the Docker engine towards it with a pure planner
//! and an executor, reports state, forwards logs and serves a local API.

pub mod api;
pub mod cloud;
pub mod config;
pub mod engine;
pub mod events;
pub mod logs;
pub mod notify;
pub mod planner;
pub mod poller;
pub mod provision;
pub mod reboot;
pub mod reconcile;
pub mod report;
pub mod run;
pub mod spec;
pub mod store;
pub mod system;
pub mod tunnel;

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}
