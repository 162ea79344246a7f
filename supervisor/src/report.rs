//! The state reporter: builds the device's current-state report and PATCHes
//! it when it changes (debounced) and at least every report interval.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use resin_api_types::{
    AppReport, DeviceReport, OsUpdateReport, ServiceReport, ServiceStatus, StateReport,
};
use tokio::sync::watch;

use crate::cloud::Cloud;
use crate::planner::{CurrentState, RunState};
use crate::system;

/// Apps and their services as the engine runs them. During a hand-over the
/// newest container of a service is the one reported.
pub fn apps_report(cur: &CurrentState) -> BTreeMap<String, AppReport> {
    let mut apps: BTreeMap<String, AppReport> = BTreeMap::new();
    let mut containers: Vec<_> = cur.containers.iter().filter(|c| c.managed).collect();
    containers.sort_by_key(|c| c.created);
    for c in containers {
        let status = match c.state {
            RunState::Created => ServiceStatus::Installed,
            RunState::Running => ServiceStatus::Running,
            RunState::Stopped => ServiceStatus::Exited,
        };
        let app = apps.entry(c.app_uuid.clone()).or_default();
        app.services.insert(
            c.service.clone(),
            ServiceReport {
                status,
                release_uuid: c.release_uuid.clone(),
                image: c.image.clone(),
                download_progress: None,
                container_id: Some(c.id.clone()),
            },
        );
    }
    for app in apps.values_mut() {
        let mut releases = app.services.values().map(|s| s.release_uuid.clone());
        let first = releases.next();
        if releases.all(|r| Some(&r) == first.as_ref()) {
            app.release_uuid = first;
        }
    }
    apps
}

/// Inputs of the reporter.
pub struct Reporter {
    pub cloud: Cloud,
    pub uuid: String,
    pub key: String,
    pub version: String,
    pub os_release: PathBuf,
    pub data_path: PathBuf,
    pub interval: Duration,
    pub debounce: Duration,
}

impl Reporter {
    /// The report without metrics: what "changed" compares.
    fn stable(&self, cur: &CurrentState, status: &str, os: &OsUpdateReport) -> DeviceReport {
        DeviceReport {
            apps: Some(apps_report(cur)),
            status: Some(status.to_owned()),
            os_version: system::os_version(&self.os_release),
            os_update: Some(os.clone()),
            supervisor_version: Some(self.version.clone()),
            ip_address: Some(system::ip_addresses()),
            ..Default::default()
        }
    }

    /// Runs until the channels close.
    pub async fn run(
        self,
        mut current: watch::Receiver<CurrentState>,
        mut status: watch::Receiver<String>,
        mut os: watch::Receiver<OsUpdateReport>,
    ) {
        let mut last_sent: Option<DeviceReport> = None;
        let mut last_at = Instant::now();
        let mut cpu_prev = system::cpu_times();
        let mut failures = 0u32;
        loop {
            let base = self.stable(&current.borrow(), &status.borrow(), &os.borrow());
            let due = last_at.elapsed() >= self.interval;
            if last_sent.as_ref() != Some(&base) || due {
                let mut report = base.clone();
                let cpu_now = system::cpu_times();
                if let (Some((b0, t0)), Some((b1, t1))) = (cpu_prev, cpu_now) {
                    if t1 > t0 {
                        report.cpu_usage = Some(
                            ((b1 - b0) as f64 * 100.0 / (t1 - t0) as f64 * 10.0).round() / 10.0,
                        );
                    }
                }
                cpu_prev = cpu_now;
                if let Some((used, total)) = system::memory() {
                    report.memory_usage = Some(used);
                    report.memory_total = Some(total);
                }
                if let Some((used, total)) = system::storage(&self.data_path) {
                    report.storage_usage = Some(used);
                    report.storage_total = Some(total);
                }
                report.cpu_temp = system::cpu_temp();
                let body: StateReport = BTreeMap::from([(self.uuid.clone(), report)]);
                let (c, k) = (self.cloud.clone(), self.key.clone());
                match tokio::task::spawn_blocking(move || c.report(&k, &body)).await {
                    Ok(Ok(())) => {
                        tracing::debug!("state reported");
                        last_sent = Some(base);
                        last_at = Instant::now();
                        failures = 0;
                    }
                    Ok(Err(e)) => {
                        failures += 1;
                        tracing::warn!(error = %e, "state report failed");
                    }
                    Err(e) => tracing::warn!(error = %e, "state report task failed"),
                }
            }
            let wait = if failures > 0 {
                crate::provision::backoff(
                    Duration::from_secs(2),
                    failures - 1,
                    Duration::from_secs(300),
                    1.0,
                )
            } else {
                self.interval.saturating_sub(last_at.elapsed())
            };
            tokio::select! {
                r = current.changed() => if r.is_err() { return },
                r = status.changed() => if r.is_err() { return },
                r = os.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(wait) => {}
            }
            // Debounce: let a burst of changes settle into one report.
            tokio::time::sleep(self.debounce).await;
        }
    }
}
