//! The health gate after booting a new slot: waits until the engine is
//! reachable, the supervisor loop runs and (if it was before the update)
//! the cloud is reachable, or gives up after a timeout naming what failed.

use std::time::Duration;

use tokio::sync::watch;

use crate::Health;

/// The checks still failing when the wait ran out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("health check failed after {secs} s: {}", missing.join(", "))]
pub struct Unhealthy {
    pub missing: Vec<&'static str>,
    pub secs: u64,
}

/// What is still missing from `h` (empty when healthy).
pub fn missing(h: &Health, cloud_required: bool) -> Vec<&'static str> {
    let mut m = Vec::new();
    if !h.engine_reachable {
        m.push("engine not reachable");
    }
    if !h.loop_running {
        m.push("supervisor loop not running");
    }
    if cloud_required && !h.cloud_reachable {
        m.push("cloud not reachable (it was before the update)");
    }
    m
}

/// Waits up to `timeout` for every check to pass.
pub async fn wait_healthy(
    health: &mut watch::Receiver<Health>,
    cloud_required: bool,
    timeout: Duration,
) -> Result<(), Unhealthy> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let now = missing(&health.borrow_and_update(), cloud_required);
        if now.is_empty() {
            return Ok(());
        }
        let fail = || Unhealthy {
            missing: now.clone(),
            secs: timeout.as_secs(),
        };
        match tokio::time::timeout_at(deadline, health.changed()).await {
            Ok(Ok(())) => {}
            // Sender gone: nothing will improve.
            Ok(Err(_)) | Err(_) => return Err(fail()),
        }
    }
}
