//! The state reporter: builds the device's current-state report and PATCHes
//! it when it changes (debounced) and at least every report interval.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use resin_api_types::{
    ActionOutcome, AppReport, DeviceReport, DeviceTarget, OsUpdateReport, ServiceReport,
    ServiceStatus, StateReport,
};
use tokio::sync::{mpsc, oneshot, watch};

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
            RunState::Dead => ServiceStatus::Dead,
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

/// Marks the target's services whose image is being pulled as
/// `downloading`, with the pull's progress, in the new release. (Under
/// download-then-kill the old container keeps running meanwhile; the
/// report shows the service's next step, as balena's dashboard does.)
pub fn mark_downloads(
    apps: &mut BTreeMap<String, AppReport>,
    target: Option<&DeviceTarget>,
    pulls: &BTreeMap<String, u8>,
) {
    let Some(target) = target else { return };
    if pulls.is_empty() {
        return;
    }
    for (app_uuid, app) in &target.apps {
        for (release_uuid, release) in &app.releases {
            for (name, svc) in &release.services {
                let Some(&pct) = pulls.get(&svc.image) else {
                    continue;
                };
                let report = apps.entry(app_uuid.clone()).or_default();
                report.services.insert(
                    name.clone(),
                    ServiceReport {
                        status: ServiceStatus::Downloading,
                        release_uuid: release_uuid.clone(),
                        image: svc.image.clone(),
                        // In steps of 10 %, so a pull adds at most ten
                        // reports.
                        download_progress: Some(pct / 10 * 10),
                        container_id: None,
                    },
                );
                report.release_uuid = None;
            }
        }
    }
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
    /// Images being pulled ([`crate::engine::Engine::pulls`]).
    pub pulls: watch::Receiver<BTreeMap<String, u8>>,
    /// The device's target, to tell which services a pull is for.
    pub target: watch::Receiver<Option<DeviceTarget>>,
    /// Requests to send the current state now, without the debounce (before
    /// a reboot); answered once it was sent or the attempt failed.
    pub flush: mpsc::Receiver<oneshot::Sender<()>>,
    /// Outcomes of device actions ([`crate::actions`]); those still in the
    /// target state are reported.
    pub actions: watch::Receiver<Vec<ActionOutcome>>,
}

impl Reporter {
    /// The report without metrics: what "changed" compares.
    fn stable(&self, cur: &CurrentState, status: &str, os: &OsUpdateReport) -> DeviceReport {
        let mut apps = apps_report(cur);
        mark_downloads(
            &mut apps,
            self.target.borrow().as_ref(),
            &self.pulls.borrow(),
        );
        DeviceReport {
            apps: Some(apps),
            status: Some(status.to_owned()),
            os_version: system::os_version(&self.os_release),
            os_update: Some(os.clone()),
            supervisor_version: Some(self.version.clone()),
            ip_address: Some(system::ip_addresses()),
            actions: crate::actions::Actions::report_for(
                &self.actions.borrow(),
                self.target.borrow().as_ref(),
            ),
            ..Default::default()
        }
    }

    /// Runs until the channels close.
    pub async fn run(
        mut self,
        mut current: watch::Receiver<CurrentState>,
        mut status: watch::Receiver<String>,
        mut os: watch::Receiver<OsUpdateReport>,
    ) {
        let mut last_sent: Option<DeviceReport> = None;
        let mut last_at = Instant::now();
        let mut cpu_prev = system::cpu_times();
        let mut failures = 0u32;
        let mut flushed: Option<oneshot::Sender<()>> = None;
        loop {
            let base = self.stable(&current.borrow(), &status.borrow(), &os.borrow());
            let due = last_at.elapsed() >= self.interval;
            if last_sent.as_ref() != Some(&base) || due || flushed.is_some() {
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
            if let Some(ack) = flushed.take() {
                let _ = ack.send(());
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
                r = self.pulls.changed() => if r.is_err() { return },
                r = self.target.changed() => if r.is_err() { return },
                r = self.actions.changed() => if r.is_err() { return },
                Some(ack) = self.flush.recv() => {
                    flushed = Some(ack);
                    continue;
                }
                _ = tokio::time::sleep(wait) => {}
            }
            // Debounce: let a burst of changes settle into one report (a
            // flush ends it at once).
            tokio::select! {
                _ = tokio::time::sleep(self.debounce) => {}
                Some(ack) = self.flush.recv() => flushed = Some(ack),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use resin_api_types::{AppTarget, ReleaseTarget, ServiceTarget};

    fn target(image: &str) -> DeviceTarget {
        let svc = |image: &str| ServiceTarget {
            image: image.into(),
            ..Default::default()
        };
        let release = ReleaseTarget {
            services: [
                ("web".to_string(), svc(image)),
                ("db".to_string(), svc("db:1")),
            ]
            .into(),
            ..Default::default()
        };
        DeviceTarget {
            apps: [(
                "app1".to_string(),
                AppTarget {
                    releases: [("rel2".to_string(), release)].into(),
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        }
    }

    fn running(release: &str) -> BTreeMap<String, AppReport> {
        let svc = |image: &str| ServiceReport {
            status: ServiceStatus::Running,
            release_uuid: release.into(),
            image: image.into(),
            download_progress: None,
            container_id: Some("c".into()),
        };
        [(
            "app1".to_string(),
            AppReport {
                release_uuid: Some(release.into()),
                services: [
                    ("web".to_string(), svc("web:1")),
                    ("db".to_string(), svc("db:1")),
                ]
                .into(),
            },
        )]
        .into()
    }

    #[test]
    fn a_service_whose_new_image_is_pulled_shows_downloading_in_the_new_release() {
        let mut apps = running("rel1");
        let pulls = BTreeMap::from([("web:2".to_string(), 47u8)]);
        mark_downloads(&mut apps, Some(&target("web:2")), &pulls);
        let app = &apps["app1"];
        let web = &app.services["web"];
        assert_eq!(web.status, ServiceStatus::Downloading);
        assert_eq!(web.release_uuid, "rel2");
        assert_eq!(web.download_progress, Some(40), "in steps of 10 %");
        assert_eq!(app.services["db"].status, ServiceStatus::Running);
        assert_eq!(app.release_uuid, None, "the app is between releases");
    }

    #[test]
    fn no_pull_or_no_target_changes_nothing() {
        let before = running("rel1");
        let mut apps = before.clone();
        mark_downloads(&mut apps, Some(&target("web:2")), &BTreeMap::new());
        mark_downloads(&mut apps, None, &BTreeMap::from([("web:2".into(), 5)]));
        // A pull of an image no target service uses.
        mark_downloads(
            &mut apps,
            Some(&target("web:2")),
            &BTreeMap::from([("other:1".into(), 5)]),
        );
        assert_eq!(apps, before);
    }
}
