//! The target poller: `GET /device/v3/{uuid}/state` with `If-None-Match`
//! at the poll interval (±10 % jitter, backoff while the cloud is away);
//! a new target goes to `target.json`, the main loop and the OS-update
//! agent. Also the target's config vars the supervisor reads.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use resin_api_types::{ConfigJson, DeviceTarget, OsTarget, TargetState};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::cloud::{Cloud, Fetched};
use crate::config::Config;
use crate::provision::backoff;
use crate::store;

/// `target.json`: the last good target state and its ETag.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PersistedTarget {
    pub etag: Option<String>,
    pub target: TargetState,
}

/// The delay before the next poll: `interval` times `jitter` when the last
/// poll worked, exponential backoff from 5 s (capped at 15 min, never
/// below the interval's cap) after `failures` failed polls.
pub fn next_poll_delay(interval: Duration, failures: u32, jitter: f64) -> Duration {
    if failures == 0 {
        interval.mul_f64(jitter.clamp(0.0, 2.0))
    } else {
        backoff(
            Duration::from_secs(5),
            failures - 1,
            Duration::from_secs(900).max(interval),
            jitter,
        )
    }
}

pub(crate) fn poll_interval(
    cfg: &Config,
    cj: &ConfigJson,
    target: Option<&DeviceTarget>,
) -> Duration {
    let from_target = target
        .and_then(|t| t.config.get("RESIN_SUPERVISOR_POLL_INTERVAL"))
        .and_then(|v| v.parse::<u64>().ok());
    let ms = cfg
        .poll_interval_ms
        .or(from_target)
        .unwrap_or(cj.poll_interval_ms);
    Duration::from_millis(ms.max(1000))
}

/// Fleet (or device) config var: `1`/`true` removes the volumes a release
/// no longer declares or mounts, and the volumes of removed apps. Off by
/// default: data outlives its app until the operator asks.
pub const REMOVE_VOLUMES: &str = "RESIN_SUPERVISOR_REMOVE_VOLUMES";

/// True when the target's config asks for volume removal.
pub fn volumes_removed(target: Option<&DeviceTarget>) -> bool {
    target
        .and_then(|t| t.config.get(REMOVE_VOLUMES))
        .is_some_and(|v| matches!(v.trim(), "1" | "true" | "yes"))
}

/// The poller's inputs and outputs.
pub struct Poller {
    pub cloud: Cloud,
    pub uuid: String,
    pub key: String,
    pub cfg: Config,
    pub cj: ConfigJson,
    /// The ETag of the persisted target.
    pub etag: Option<String>,
    pub target_path: PathBuf,
    pub target: watch::Sender<Option<DeviceTarget>>,
    pub os_target: watch::Sender<Option<OsTarget>>,
    pub cloud_ok: Arc<AtomicBool>,
}

impl Poller {
    /// Polls for ever; `poll_now` cuts the wait short.
    pub async fn run(self, poll_now: Arc<Notify>) {
        let Poller {
            cloud,
            uuid,
            key,
            cfg,
            cj,
            mut etag,
            target_path,
            target: target_tx,
            os_target: os_target_tx,
            cloud_ok,
        } = self;
        let mut failures = 0u32;
        loop {
            let (c, u, k, e) = (cloud.clone(), uuid.clone(), key.clone(), etag.clone());
            let r = tokio::task::spawn_blocking(move || c.target(&u, &k, e.as_deref())).await;
            match r {
                Ok(Ok(Fetched::New {
                    target,
                    etag: new_etag,
                })) => {
                    failures = 0;
                    cloud_ok.store(true, Ordering::Relaxed);
                    let p = PersistedTarget {
                        etag: new_etag.clone(),
                        target: target.clone(),
                    };
                    if let Err(e) = store::write_json(&target_path, &p) {
                        tracing::error!(error = %e, "cannot persist target.json");
                    }
                    tracing::info!(etag = ?new_etag, "new target state");
                    etag = new_etag;
                    let dev = target.get(&uuid).cloned();
                    let _ = os_target_tx.send(dev.as_ref().and_then(|d| d.os.clone()));
                    target_tx.send_if_modified(|t| {
                        let changed = *t != dev;
                        *t = dev;
                        changed
                    });
                }
                Ok(Ok(Fetched::NotModified)) => {
                    tracing::debug!("target state not modified (304)");
                    failures = 0;
                    cloud_ok.store(true, Ordering::Relaxed);
                    let os = target_tx.borrow().as_ref().and_then(|d| d.os.clone());
                    let _ = os_target_tx.send(os);
                }
                Ok(Err(e)) => {
                    failures += 1;
                    cloud_ok.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, failures, "target poll failed");
                }
                Err(e) => tracing::error!(error = %e, "poll task failed"),
            }
            let interval = poll_interval(&cfg, &cj, target_tx.borrow().as_ref());
            let delay = next_poll_delay(interval, failures, rand::random_range(0.9..1.1));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = poll_now.notified() => {}
            }
        }
    }
}
