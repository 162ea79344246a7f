//! The supervisor's main task: provisioning, then the target poller, the
//! reconcile loop (the "main loop" systemd's watchdog watches), the state
//! reporter, the log forwarder, the local API and the OS-update agent.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use resin_api_types::{ConfigJson, OsTarget, OsUpdateReport};
use tokio::sync::{mpsc, watch, Notify};

use crate::cloud::Cloud;
use crate::config::Config;
use crate::engine::Engine;
use crate::logs::{self, LogBuffer};
use crate::notify::Notifier;
use crate::provision::{self, backoff};
use crate::reconcile::{Outcome, Reconciler};
use crate::report::Reporter;
use crate::{api, store, system};

use crate::poller::poll_interval;
pub use crate::poller::{
    next_poll_delay, volumes_removed, PersistedTarget, Poller, REMOVE_VOLUMES,
};
use crate::reboot;
pub use crate::reboot::wait_for_update_locks;

/// The supervisor's version, reported to the cloud and on `/v2/version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

fn local_api_key(state_dir: &Path) -> anyhow::Result<String> {
    let path = state_dir.join("local-api.key");
    match std::fs::read_to_string(&path) {
        Ok(k) if !k.trim().is_empty() => return Ok(k.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let key = hex::encode(rand::random::<[u8; 24]>());
    resin_fsutil::write_atomic(&path, key.as_bytes(), 0o600)?;
    Ok(key)
}

/// Connects to the Docker engine, waiting (1 s doubling to 30 s) while it
/// is not reachable; systemd's watchdog is fed meanwhile.
async fn connect_engine(cfg: &Config, notifier: &Notifier) -> Engine {
    let mut failures = 0;
    loop {
        match Engine::connect(cfg.docker_host.as_deref()).await {
            Ok(e) => match &cfg.only_apps {
                Some(apps) => return e.scoped_to(apps.iter().cloned()),
                None => return e,
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
    }
}

/// The wait before retrying after the `failures`-th failed reconcile in a
/// row (1 or more): 2 s doubling to 5 min.
pub fn retry_delay(failures: u32) -> Duration {
    backoff(
        Duration::from_secs(2),
        failures.saturating_sub(1),
        Duration::from_secs(300),
        1.0,
    )
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
    let engine = connect_engine(&cfg, &notifier).await;
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
    let (reboot_tx, reboot_rx) = mpsc::channel::<String>(4);
    let poll_now = Arc::new(Notify::new());

    // OS updates.
    let (os_target_tx, os_target_rx) = watch::channel::<Option<OsTarget>>(None);
    let (health_tx, health_rx) = watch::channel(resin_osupdate::Health::default());
    let os_report_rx = if cfg.os_updates {
        let (os_reboot_tx, os_reboot_rx) = mpsc::channel::<resin_osupdate::RebootRequest>(2);
        let agent = resin_osupdate::AgentConfig {
            state_dir: cfg.state_dir.clone(),
            download_dir: cfg.download_dir.clone(),
            device_api_key: device_key.clone(),
            os_release_path: cfg.os_release.clone(),
            dbus_address: cfg.dbus_address.clone(),
        };
        let opts = resin_osupdate::AgentOptions {
            tls: tls.clone(),
            ..Default::default()
        };
        let (rx, _h) =
            resin_osupdate::spawn_with(agent, opts, os_target_rx, health_rx, os_reboot_tx);
        reboot::spawn_os_reboots(
            os_reboot_rx,
            current_rx.clone(),
            reboot_tx.clone(),
            notifier.clone(),
        );
        rx
    } else {
        let (tx, rx) = watch::channel(OsUpdateReport::default());
        std::mem::forget(tx);
        rx
    };

    // Reboots, through logind, once the reporter has sent the state that
    // led to it (an OS update's `rebooting`), or after 10 s without a cloud.
    let (flush_tx, flush_rx) = mpsc::channel::<tokio::sync::oneshot::Sender<()>>(1);
    reboot::spawn_rebooter(
        reboot_rx,
        flush_tx,
        cfg.dbus_address.clone(),
        notifier.clone(),
    );

    // Remote access: one outbound WebSocket to the cloud (tunnel.rs).
    tokio::spawn(crate::tunnel::run(crate::tunnel::TunnelOptions {
        api_endpoint: cj.api_endpoint.clone(),
        device_key: device_key.clone(),
        root_ca: cj.root_ca_pem()?,
        settings: cj.tunnel.clone().unwrap_or_default(),
        docker: Some(engine.docker().clone()),
        poll_now: poll_now.clone(),
        reboot: Some(reboot_tx.clone()),
    }));

    // Target poller.
    tokio::spawn(
        Poller {
            cloud: cloud.clone(),
            uuid: uuid.clone(),
            key: device_key.clone(),
            cfg: cfg.clone(),
            cj: cj.clone(),
            etag,
            target_path: target_path.clone(),
            target: target_tx.clone(),
            os_target: os_target_tx.clone(),
            cloud_ok: cloud_ok.clone(),
        }
        .run(poll_now.clone()),
    );

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

    // Engine events: a managed container that dies or is removed outside
    // a reconcile starts one at once (not at the next poll); a `die` is
    // logged with its exit code.
    {
        let (refresh, log_buf) = (refresh.clone(), log_buf.clone());
        tokio::spawn(crate::events::watch(engine.clone(), move |ev| {
            if let crate::events::EngineEvent::Container {
                service,
                action,
                exit_code,
                ..
            } = &ev
            {
                if action == "die" {
                    let code = exit_code.map_or("unknown".to_owned(), |c| c.to_string());
                    logs::system_line(&log_buf, format!("{service} exited with code {code}"));
                }
            }
            refresh.notify_one();
        }));
    }

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
            reconciler.set_remove_volumes(volumes_removed(Some(t)));
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
                    let wait = retry_delay(failures);
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
    use crate::planner::CurrentState;
    use resin_api_types::DeviceTarget;

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
                volumes: vec![],
                networks: vec![],
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
    fn volumes_are_removed_only_when_the_config_asks() {
        let mut t = DeviceTarget::default();
        assert!(!volumes_removed(Some(&t)) && !volumes_removed(None));
        t.config.insert(REMOVE_VOLUMES.into(), "1".into());
        assert!(volumes_removed(Some(&t)));
        t.config.insert(REMOVE_VOLUMES.into(), "0".into());
        assert!(!volumes_removed(Some(&t)));
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
