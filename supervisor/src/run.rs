//! The supervisor's main task: provisioning, then the target poller, the
//! reconcile loop (the "main loop" systemd's watchdog watches), the state
//! reporter, the log forwarder, the local API and the OS-update agent.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use resin_api_types::{ConfigJson, DeviceTarget, OsTarget, OsUpdateReport, TargetState};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Notify};

use crate::cloud::{Cloud, Fetched};
use crate::config::Config;
use crate::engine::Engine;
use crate::logs::{self, LogBuffer};
use crate::notify::Notifier;
use crate::planner::CurrentState;
use crate::provision::{self, backoff};
use crate::reconcile::{Outcome, Reconciler};
use crate::report::Reporter;
use crate::{api, store, system};

/// The supervisor's version, reported to the cloud and on `/v2/version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

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

fn poll_interval(cfg: &Config, cj: &ConfigJson, target: Option<&DeviceTarget>) -> Duration {
    let from_target = target
        .and_then(|t| t.config.get("RESIN_SUPERVISOR_POLL_INTERVAL"))
        .and_then(|v| v.parse::<u64>().ok());
    let ms = cfg
        .poll_interval_ms
        .or(from_target)
        .unwrap_or(cj.poll_interval_ms);
    Duration::from_millis(ms.max(1000))
}

/// Device config var that lets the OS-update agent install an OS version
/// older than the running one.
pub const OS_ALLOW_DOWNGRADE: &str = "RESIN_SUPERVISOR_OS_ALLOW_DOWNGRADE";

/// True when the device's config allows OS downgrades (`1` or `true`).
pub fn os_downgrade_allowed(target: Option<&DeviceTarget>) -> bool {
    target
        .and_then(|t| t.config.get(OS_ALLOW_DOWNGRADE))
        .is_some_and(|v| matches!(v.trim(), "1" | "true" | "yes"))
}

/// Waits until no update lock holds a managed container (an OS update's
/// reboot stops every app); returns the locks it waited for. Looks again
/// every `every` and whenever the engine's state changes.
pub async fn wait_for_update_locks(
    current: &mut watch::Receiver<CurrentState>,
    every: Duration,
) -> Vec<String> {
    let mut waited = Vec::new();
    loop {
        let held = api::locks_held(&current.borrow_and_update());
        if held.is_empty() {
            return waited;
        }
        if held != waited {
            tracing::info!(locks = ?held, "the OS update's reboot waits for update locks");
            waited = held;
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            r = current.changed() => {
                if r.is_err() {
                    return waited;
                }
            }
        }
    }
}

fn local_api_key(state_dir: &Path) -> anyhow::Result<String> {
    let path = state_dir.join("local-api.key");
    match std::fs::read_to_string(&path) {
        Ok(k) if !k.trim().is_empty() => return Ok(k.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let key = hex::encode(rand::random::<[u8; 24]>());
    store::write_atomic(&path, key.as_bytes(), 0o600)?;
    Ok(key)
}

/// Runs the supervisor until it is killed.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let notifier = Arc::new(Notifier::from_env());
    if cfg.drop_capabilities {
        if let Err(e) = system::drop_capabilities() {
            tracing::warn!(error = %e, "could not drop capabilities");
        }
    }
    let text = std::fs::read_to_string(&cfg.config_json)
        .with_context(|| format!("reading {}", cfg.config_json.display()))?;
    let cj = ConfigJson::parse(&text)
        .with_context(|| format!("parsing {}", cfg.config_json.display()))?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    let api_key = local_api_key(&cfg.state_dir)?;
    // config.json's rootCA: then the cloud and bundle downloads are trusted
    // only with that CA (docs/cloud-tls.md).
    let tls = match cj.root_ca_pem()? {
        Some(pem) => Some(
            crate::cloud::trust_only(&pem)
                .with_context(|| format!("in {}", cfg.config_json.display()))?,
        ),
        None => None,
    };
    let cloud = Cloud::with_tls(&cj.api_endpoint, tls.clone());
    let os_version = system::os_version(&cfg.os_release);

    // Provisioning.
    let n = notifier.clone();
    let (uuid, device_key) = provision::provision(
        &cj,
        &cfg.state_dir,
        &cloud,
        (Some(VERSION.to_owned()), os_version.clone()),
        &move |s| n.status(&format!("provisioning: {}", s.name())),
    )
    .await
    .context("provisioning")?;
    tracing::info!(%uuid, "registered");

    // The engine.
    let mut failures = 0;
    let engine = loop {
        match Engine::connect(cfg.docker_host.as_deref()).await {
            Ok(e) => match &cfg.only_apps {
                Some(apps) => break e.scoped_to(apps.iter().cloned()),
                None => break e,
            },
            Err(e) => {
                notifier.status(&format!("waiting for the Docker engine: {e}"));
                tracing::warn!(error = %e, "Docker engine not reachable");
                notifier.send("WATCHDOG=1");
                tokio::time::sleep(backoff(
                    Duration::from_secs(1),
                    failures,
                    Duration::from_secs(30),
                    1.0,
                ))
                .await;
                failures += 1;
            }
        }
    };
    let reconciler = Reconciler::new(engine.clone(), &uuid, &cfg.state_dir)?;

    // The last good target, so apps run offline and across reboots.
    let target_path = cfg.state_dir.join("target.json");
    let persisted: Option<PersistedTarget> = match store::read_json(&target_path) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring unreadable target.json");
            None
        }
    };
    let initial = persisted
        .as_ref()
        .and_then(|p| p.target.get(&uuid).cloned());
    let etag = persisted.and_then(|p| p.etag);
    let initial_apps = initial.as_ref().map(|t| t.apps.clone());
    let (target_tx, mut target_rx) = watch::channel(initial);
    let (current_tx, current_rx) = watch::channel(
        reconciler
            .current(initial_apps.as_ref())
            .await
            .unwrap_or_default(),
    );
    let (status_tx, status_rx) = watch::channel("starting".to_owned());
    let update = Arc::new(Notify::new());
    let refresh = Arc::new(Notify::new());
    let force = Arc::new(AtomicBool::new(false));
    let last_loop = Arc::new(AtomicI64::new(crate::now_secs()));
    let cloud_ok = Arc::new(AtomicBool::new(false));
    let (reboot_tx, mut reboot_rx) = mpsc::channel::<String>(4);
    let poll_now = Arc::new(Notify::new());

    // OS updates.
    let (os_target_tx, os_target_rx) = watch::channel::<Option<OsTarget>>(None);
    let allow_downgrade = Arc::new(AtomicBool::new(os_downgrade_allowed(
        target_rx.borrow().as_ref(),
    )));
    let (health_tx, health_rx) = watch::channel(resin_osupdate::Health::default());
    let os_report_rx = if cfg.os_updates {
        let (os_reboot_tx, mut os_reboot_rx) = mpsc::channel::<resin_osupdate::RebootRequest>(2);
        let agent = resin_osupdate::AgentConfig {
            state_dir: cfg.state_dir.clone(),
            download_dir: cfg.download_dir.clone(),
            device_api_key: device_key.clone(),
            os_release_path: cfg.os_release.clone(),
            dbus_address: cfg.dbus_address.clone(),
        };
        let opts = resin_osupdate::AgentOptions {
            allow_downgrade: allow_downgrade.clone(),
            tls: tls.clone(),
            ..Default::default()
        };
        let (rx, _h) =
            resin_osupdate::spawn_with(agent, opts, os_target_rx, health_rx, os_reboot_tx);
        let rtx = reboot_tx.clone();
        let mut cur = current_rx.clone();
        let n = notifier.clone();
        tokio::spawn(async move {
            while let Some(r) = os_reboot_rx.recv().await {
                // Update locks hold the reboot (it stops every app); a
                // forced reboot through the local API does not wait.
                n.status("OS update: reboot waits for update locks");
                let waited = wait_for_update_locks(&mut cur, Duration::from_secs(5)).await;
                if !waited.is_empty() {
                    tracing::info!(locks = ?waited, "update locks released: rebooting");
                }
                let _ = rtx.send(format!("OS update: {}", r.reason)).await;
            }
        });
        rx
    } else {
        let (tx, rx) = watch::channel(OsUpdateReport::default());
        std::mem::forget(tx);
        rx
    };

    // Reboots, through logind, once the reporter has sent the state that
    // led to it (an OS update's `rebooting`), or after 10 s without a cloud.
    let (flush_tx, flush_rx) = mpsc::channel::<tokio::sync::oneshot::Sender<()>>(1);
    let dbus = cfg.dbus_address.clone();
    let n = notifier.clone();
    tokio::spawn(async move {
        while let Some(reason) = reboot_rx.recv().await {
            let (ack, sent) = tokio::sync::oneshot::channel();
            if flush_tx.send(ack).await.is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(10), sent).await;
            }
            tracing::info!(%reason, "rebooting through logind");
            n.status(&format!("rebooting: {reason}"));
            if let Err(e) = system::logind("Reboot", dbus.as_deref()).await {
                tracing::error!(error = %e, "reboot through logind failed");
            }
        }
    });

    // Target poller.
    {
        let (cloud, uuid, key, cfg2, cj2) = (
            cloud.clone(),
            uuid.clone(),
            device_key.clone(),
            cfg.clone(),
            cj.clone(),
        );
        let (target_tx, poll_now, cloud_ok, target_path) = (
            target_tx.clone(),
            poll_now.clone(),
            cloud_ok.clone(),
            target_path.clone(),
        );
        let os_target_tx = os_target_tx.clone();
        let allow_downgrade = allow_downgrade.clone();
        tokio::spawn(async move {
            let mut etag = etag;
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
                        // The policy first: the agent reads it when it
                        // looks at the new OS target.
                        allow_downgrade.store(os_downgrade_allowed(dev.as_ref()), Ordering::SeqCst);
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
                let interval = poll_interval(&cfg2, &cj2, target_tx.borrow().as_ref());
                let delay = next_poll_delay(interval, failures, rand::random_range(0.9..1.1));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = poll_now.notified() => {}
                }
            }
        });
    }

    // Reporter.
    let reporter = Reporter {
        cloud: cloud.clone(),
        uuid: uuid.clone(),
        key: device_key.clone(),
        version: VERSION.to_owned(),
        os_release: cfg.os_release.clone(),
        data_path: cfg.data_path.clone(),
        interval: Duration::from_secs(cfg.report_interval_secs.max(1)),
        debounce: Duration::from_millis(cfg.report_debounce_ms),
        pulls: engine.pulls(),
        target: target_tx.subscribe(),
        flush: flush_rx,
    };
    tokio::spawn(reporter.run(current_rx.clone(), status_rx, os_report_rx));

    // Logs.
    let log_buf = Arc::new(Mutex::new(LogBuffer::new(cfg.log_buffer_lines)));
    tokio::spawn(logs::run(
        engine.clone(),
        cloud.clone(),
        uuid.clone(),
        device_key.clone(),
        log_buf.clone(),
        current_rx.clone(),
        Duration::from_millis(cfg.log_flush_ms.max(100)),
    ));

    // Local API.
    let watchdog = Notifier::watchdog_interval().unwrap_or(Duration::from_secs(30));
    let api_state = Arc::new(api::ApiState {
        key: api_key,
        version: VERSION.to_owned(),
        engine: engine.clone(),
        current: current_rx.clone(),
        update: update.clone(),
        refresh: refresh.clone(),
        force: force.clone(),
        reboot: reboot_tx.clone(),
        last_loop: last_loop.clone(),
        healthy_within_secs: (poll_interval(&cfg, &cj, None).as_secs() as i64 * 3).max(300),
    });
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding the local API to {}", cfg.listen))?;
    tracing::info!(addr = %cfg.listen, "local API listening");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, api::router(api_state)).await {
            tracing::error!(error = %e, "local API stopped");
        }
    });

    // The main loop.
    let mut ready = false;
    let mut failures = 0u32;
    let mut retry: Option<Duration> = None;
    loop {
        notifier.send("WATCHDOG=1");
        last_loop.store(crate::now_secs(), Ordering::Relaxed);
        let target = target_rx.borrow_and_update().clone();
        let force_now = force.swap(false, Ordering::SeqCst);
        let mut engine_ok = true;
        if let Some(t) = &target {
            let _ = status_tx.send("applying".into());
            let n = notifier.clone();
            // Each step goes to systemd's STATUS= and, as a system line, to
            // the device's logs in the cloud (as balena shows service events).
            let steps_log = log_buf.clone();
            let on_step = move |s: &crate::planner::Step| {
                let what = s.describe();
                n.status(&what);
                logs::system_line(&steps_log, what);
            };
            match reconciler.apply(&t.apps, force_now, &on_step).await {
                Ok(Outcome::Converged) => {
                    failures = 0;
                    retry = None;
                    notifier.status("idle");
                    let _ = status_tx.send("idle".into());
                }
                Ok(Outcome::Blocked(steps)) => {
                    let what: Vec<String> = steps.iter().map(|s| s.describe()).collect();
                    notifier.status(&what.join("; "));
                    let _ = status_tx.send("waiting".into());
                    retry = Some(Duration::from_secs(5));
                }
                Err(e) => {
                    failures += 1;
                    engine_ok = !matches!(e, crate::reconcile::ReconcileError::Engine(_));
                    let wait = backoff(
                        Duration::from_secs(2),
                        failures - 1,
                        Duration::from_secs(300),
                        1.0,
                    );
                    tracing::warn!(error = %e, retry_in = ?wait, "reconcile failed");
                    logs::system_line(
                        &log_buf,
                        format!("update failed (retrying in {} s): {e}", wait.as_secs()),
                    );
                    notifier.status(&format!("retrying in {} s: {e}", wait.as_secs()));
                    let _ = status_tx.send("error".into());
                    retry = Some(wait);
                }
            }
        } else {
            notifier.status("no target state yet");
        }
        match reconciler.current(target.as_ref().map(|t| &t.apps)).await {
            Ok(cur) => {
                current_tx.send_if_modified(|c| {
                    let changed = *c != cur;
                    *c = cur;
                    changed
                });
            }
            Err(_) => engine_ok = false,
        }
        let _ = health_tx.send(resin_osupdate::Health {
            engine_reachable: engine_ok,
            loop_running: true,
            cloud_reachable: cloud_ok.load(Ordering::Relaxed),
        });
        if !ready {
            notifier.send("READY=1");
            ready = true;
        }
        // Wait for a reason to run again; keep the watchdog fed meanwhile.
        let period = retry.unwrap_or_else(|| poll_interval(&cfg, &cj, target.as_ref()));
        let deadline = tokio::time::Instant::now() + period;
        loop {
            tokio::select! {
                r = target_rx.changed() => { if r.is_err() { anyhow::bail!("poller stopped") } break }
                _ = update.notified() => { poll_now.notify_one(); break }
                _ = refresh.notified() => break,
                _ = tokio::time::sleep_until(deadline) => break,
                _ = tokio::time::sleep(watchdog) => {
                    notifier.send("WATCHDOG=1");
                    last_loop.store(crate::now_secs(), Ordering::Relaxed);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_os_reboot_waits_until_no_update_lock_is_held() {
        let app = format!("reboot-lock-test-{}", std::process::id());
        let dir = format!("/tmp/resin/locks/{app}/web");
        std::fs::create_dir_all(&dir).unwrap();
        let lock = format!("{dir}/updates.lock");
        std::fs::write(&lock, "").unwrap();
        let cur = CurrentState {
            containers: vec![crate::planner::Container {
                id: "c1".into(),
                name: "web".into(),
                managed: true,
                app_uuid: app.clone(),
                service: "web".into(),
                release_uuid: "r1".into(),
                config_hash: "h".into(),
                image: "img".into(),
                state: crate::planner::RunState::Running,
                created: 0,
            }],
            ..Default::default()
        };
        let (_tx, mut rx) = watch::channel(cur);
        let waiting =
            tokio::spawn(
                async move { wait_for_update_locks(&mut rx, Duration::from_millis(50)).await },
            );
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!waiting.is_finished(), "the reboot went ahead under a lock");
        std::fs::remove_file(&lock).unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the reboot goes ahead once the lock is gone")
            .unwrap();
        assert_eq!(waited, [lock]);
        let _ = std::fs::remove_dir_all(format!("/tmp/resin/locks/{app}"));
    }

    #[test]
    fn os_downgrades_are_allowed_only_by_the_device_config() {
        let mut t = DeviceTarget::default();
        assert!(!os_downgrade_allowed(Some(&t)));
        assert!(!os_downgrade_allowed(None));
        t.config.insert(OS_ALLOW_DOWNGRADE.into(), "1".into());
        assert!(os_downgrade_allowed(Some(&t)));
        t.config.insert(OS_ALLOW_DOWNGRADE.into(), "0".into());
        assert!(!os_downgrade_allowed(Some(&t)));
    }

    #[test]
    fn poll_delay_jitters_and_backs_off() {
        let m = Duration::from_secs(60);
        assert_eq!(next_poll_delay(m, 0, 1.0), m);
        assert_eq!(next_poll_delay(m, 0, 1.1), Duration::from_secs(66));
        assert_eq!(next_poll_delay(m, 1, 1.0), Duration::from_secs(5));
        assert_eq!(next_poll_delay(m, 3, 1.0), Duration::from_secs(20));
        assert_eq!(next_poll_delay(m, 20, 1.0), Duration::from_secs(900));
    }
}
