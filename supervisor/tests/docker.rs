//! Reconciliation against the real Docker engine (RESIN_TEST_DOCKER_HOST):
//! deploy, each update strategy, update locks, volumes, env changes, image
//! cleanup and unmanaged containers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Mutex;

use common::*;
use resin_api_types::labels;
use resin_supervisor::planner::Step;
use resin_supervisor::reconcile::{Outcome, Reconciler};

struct Fixture {
    app: String,
    _state: tempfile::TempDir,
    rec: Reconciler,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        cleanup(&self.app);
    }
}

async fn fixture() -> Fixture {
    let app = app_uuid();
    let state = tempfile::tempdir().unwrap();
    // Tests share one engine: each sees only its own app.
    let engine = engine().await.scoped_to([app.clone()]);
    let rec = Reconciler::new(engine, "testdevice", state.path()).unwrap();
    Fixture {
        app,
        _state: state,
        rec,
    }
}

/// Applies `t` and returns the outcome and the steps run, in order.
async fn apply(
    f: &Fixture,
    t: &resin_supervisor::planner::TargetApps,
    force: bool,
) -> (Outcome, Vec<String>) {
    let log = Mutex::new(Vec::new());
    let record = |s: &Step| {
        let v = serde_json::to_value(s).unwrap();
        log.lock().unwrap().push(format!(
            "{}:{}",
            v["step"].as_str().unwrap(),
            v["service"].as_str().or(v["image"].as_str()).unwrap_or("")
        ));
    };
    let out = f.rec.apply(t, force, &record).await.expect("apply");
    (out, log.into_inner().unwrap())
}

fn pos(steps: &[String], prefix: &str) -> usize {
    steps
        .iter()
        .position(|s| s.starts_with(prefix))
        .unwrap_or_else(|| panic!("{prefix} not in {steps:?}"))
}

#[tokio::test]
async fn deploy_pulls_creates_and_starts_with_merged_env() {
    let f = fixture().await;
    let img = registry_image(&format!("deploy-{}", &f.app[..8]));
    let mut web = svc(&img);
    web.environment.insert("LEVEL".into(), "service".into());
    let mut t = target(&f.app, "rel1", &[("web", web), ("worker", svc(&img))]);
    let app = t.get_mut(&f.app).unwrap();
    app.env.fleet.insert("LEVEL".into(), "fleet".into());
    app.env.fleet.insert("FLEET_ONLY".into(), "f".into());
    app.env.device.insert("FLEET_ONLY".into(), "device".into());

    let (out, steps) = apply(&f, &t, false).await;
    assert_eq!(out, Outcome::Converged);
    assert!(
        pos(&steps, "fetch-image") < pos(&steps, "create:"),
        "{steps:?}"
    );
    assert_eq!(
        containers_of(&f.app),
        ["web running rel1", "worker running rel1"]
    );
    let env = docker(&[
        "inspect",
        "--format",
        "{{range .Config.Env}}{{println .}}{{end}}",
        &docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=io.resin.app-uuid={}", f.app),
            "--filter",
            "label=io.resin.service-name=web",
        ]),
    ]);
    assert!(env.contains("LEVEL=service"), "{env}");
    assert!(env.contains("FLEET_ONLY=device"), "{env}");
    assert!(env.contains(&format!("RESIN_APP_UUID={}", f.app)), "{env}");
    // A second apply has nothing to do.
    let (out, steps) = apply(&f, &t, false).await;
    assert_eq!((out, steps.len()), (Outcome::Converged, 0));
    let _ = docker_ok(&["rmi", &img]);
}

/// While an image downloads, the engine publishes it with its progress (what
/// the state report shows as `downloading`), and drops it when the pull ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_in_progress_is_published_with_its_progress() {
    let app = app_uuid();
    let state = tempfile::tempdir().unwrap();
    let engine = engine().await.scoped_to([app.clone()]);
    let mut pulls = engine.pulls();
    let rec = Reconciler::new(engine, "testdevice", state.path()).unwrap();
    let f = Fixture {
        app,
        _state: state,
        rec,
    };
    let img = registry_image(&format!("progress-{}", &f.app[..8]));
    let seen = tokio::spawn(async move {
        let mut seen = Vec::new();
        while pulls.changed().await.is_ok() {
            let now = pulls.borrow_and_update().clone();
            let done = now.is_empty() && !seen.is_empty();
            seen.push(now);
            if done {
                break;
            }
        }
        seen
    });
    let t = target(&f.app, "rel1", &[("web", svc(&img))]);
    let (out, _) = apply(&f, &t, false).await;
    assert_eq!(out, Outcome::Converged);
    let seen = tokio::time::timeout(std::time::Duration::from_secs(10), seen)
        .await
        .expect("the pull ends")
        .unwrap();
    assert!(
        seen.iter().any(|m| m.get(&img).is_some_and(|p| *p <= 99)),
        "{seen:?}"
    );
    assert!(seen.last().unwrap().is_empty(), "{seen:?}");
    let _ = docker_ok(&["rmi", &img]);
}

#[tokio::test]
async fn download_then_kill_fetches_first_and_removes_the_unused_image() {
    let f = fixture().await;
    let v1 = registry_image(&format!("dtk1-{}", &f.app[..8]));
    let v2 = registry_image(&format!("dtk2-{}", &f.app[..8]));
    apply(&f, &target(&f.app, "rel1", &[("web", svc(&v1))]), false).await;
    let (out, steps) = apply(&f, &target(&f.app, "rel2", &[("web", svc(&v2))]), false).await;
    assert_eq!(out, Outcome::Converged);
    // The old container ran until the new image was there and the new
    // container was created.
    assert!(
        pos(&steps, "fetch-image") < pos(&steps, "stop:web"),
        "{steps:?}"
    );
    assert!(
        pos(&steps, "create:") < pos(&steps, "stop:web"),
        "{steps:?}"
    );
    assert!(
        pos(&steps, "stop:web") < pos(&steps, "start:web"),
        "{steps:?}"
    );
    assert!(
        pos(&steps, "start:web") < pos(&steps, "remove:web"),
        "{steps:?}"
    );
    assert_eq!(containers_of(&f.app), ["web running rel2"]);
    // v1 was fetched by the supervisor and is unused now: removed.
    assert!(steps.contains(&format!("remove-image:{v1}")), "{steps:?}");
    assert!(docker_ok(&["image", "inspect", &v1]).is_none());
    assert!(docker_ok(&["image", "inspect", &v2]).is_some());
    let _ = docker_ok(&["rmi", &v2]);
}

#[tokio::test]
async fn kill_then_download_stops_before_fetching() {
    let f = fixture().await;
    let v1 = registry_image(&format!("ktd1-{}", &f.app[..8]));
    let v2 = registry_image(&format!("ktd2-{}", &f.app[..8]));
    apply(&f, &target(&f.app, "rel1", &[("web", svc(&v1))]), false).await;
    let mut s2 = svc(&v2);
    s2.labels
        .insert(labels::UPDATE_STRATEGY.into(), "kill-then-download".into());
    let (out, steps) = apply(&f, &target(&f.app, "rel2", &[("web", s2)]), false).await;
    assert_eq!(out, Outcome::Converged);
    assert!(
        pos(&steps, "stop:web") < pos(&steps, "fetch-image"),
        "{steps:?}"
    );
    assert!(
        pos(&steps, "remove:web") < pos(&steps, "fetch-image"),
        "{steps:?}"
    );
    assert_eq!(containers_of(&f.app), ["web running rel2"]);
    let _ = docker_ok(&["rmi", &v2]);
}

#[tokio::test]
async fn delete_then_download_removes_old_image_before_fetching() {
    let f = fixture().await;
    let v1 = registry_image(&format!("dtd1-{}", &f.app[..8]));
    let v2 = registry_image(&format!("dtd2-{}", &f.app[..8]));
    apply(&f, &target(&f.app, "rel1", &[("web", svc(&v1))]), false).await;
    let mut s2 = svc(&v2);
    s2.labels.insert(
        labels::UPDATE_STRATEGY.into(),
        "delete-then-download".into(),
    );
    let (out, steps) = apply(&f, &target(&f.app, "rel2", &[("web", s2)]), false).await;
    assert_eq!(out, Outcome::Converged);
    assert!(
        pos(&steps, "remove-image") < pos(&steps, "fetch-image"),
        "{steps:?}"
    );
    assert!(docker_ok(&["image", "inspect", &v1]).is_none());
    assert_eq!(containers_of(&f.app), ["web running rel2"]);
    let _ = docker_ok(&["rmi", &v2]);
}

#[tokio::test]
async fn hand_over_runs_both_until_the_new_one_signals() {
    let f = fixture().await;
    let img = local_image(&format!("sv-test/handover-{}", &f.app[..8]));
    apply(&f, &target(&f.app, "rel1", &[("web", svc(&img))]), false).await;
    let mut s2 = svc(&img);
    s2.labels
        .insert(labels::UPDATE_STRATEGY.into(), "hand-over".into());
    s2.labels
        .insert(labels::HANDOVER_TIMEOUT.into(), "600".into());
    let t2 = target(&f.app, "rel2", &[("web", s2)]);
    let (out, steps) = apply(&f, &t2, false).await;
    // Nothing left to run but the wait for the hand-over signal.
    assert!(matches!(out, Outcome::Blocked(_)), "{out:?}");
    assert!(steps.iter().any(|s| s == "start:web"), "{steps:?}");
    assert_eq!(
        containers_of(&f.app),
        ["web running rel1", "web running rel2"]
    );
    // The new container signals through its lock directory (mounted at
    // /tmp/resin inside it).
    let new_id = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=io.resin.app-uuid={}", f.app),
        "--filter",
        "label=io.resin.release-uuid=rel2",
    ]);
    docker(&["exec", &new_id, "touch", "/tmp/resin/handover-complete"]);
    let signal = format!("/tmp/resin/locks/{}/web/handover-complete", f.app);
    assert!(std::path::Path::new(&signal).exists());
    let (out, steps) = apply(&f, &t2, false).await;
    assert_eq!(out, Outcome::Converged);
    assert!(
        pos(&steps, "kill:web") < pos(&steps, "remove:web"),
        "{steps:?}"
    );
    assert_eq!(containers_of(&f.app), ["web running rel2"]);
    // The signal was used: it is gone, so it cannot end the service's next
    // hand-over as soon as that one's new container runs.
    let (out, _) = apply(&f, &t2, false).await;
    assert_eq!(out, Outcome::Converged);
    assert!(!std::path::Path::new(&signal).exists());
    let _ = docker_ok(&["rmi", &img]);
}

#[tokio::test]
async fn update_lock_holds_the_old_container_until_forced() {
    let f = fixture().await;
    let img = local_image(&format!("sv-test/lock-{}", &f.app[..8]));
    apply(&f, &target(&f.app, "rel1", &[("web", svc(&img))]), false).await;
    // The app takes its lock from inside the container.
    let id = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=io.resin.app-uuid={}", f.app),
    ]);
    docker(&["exec", &id, "touch", "/tmp/resin/updates.lock"]);
    assert!(std::path::Path::new(&labels::update_lock_path(&f.app, "web")).exists());

    let mut web2 = svc(&img);
    web2.environment.insert("V".into(), "2".into());
    let t2 = target(&f.app, "rel2", &[("web", web2)]);
    let (out, _) = apply(&f, &t2, false).await;
    assert!(matches!(out, Outcome::Blocked(_)), "{out:?}");
    let now = containers_of(&f.app);
    assert!(now.contains(&"web running rel1".to_owned()), "{now:?}");
    assert!(!now.contains(&"web running rel2".to_owned()), "{now:?}");

    let (out, _) = apply(&f, &t2, true).await;
    assert_eq!(out, Outcome::Converged);
    assert_eq!(containers_of(&f.app), ["web running rel2"]);
    let _ = docker_ok(&["rmi", &img]);
}

#[tokio::test]
async fn named_volume_survives_a_release_change() {
    let f = fixture().await;
    let img = local_image(&format!("sv-test/vol-{}", &f.app[..8]));
    let with_vol = |tag: &str| {
        let mut s = svc(&img);
        s.volumes = vec!["data:/data".into()];
        s.command = Some(vec![
            "sh".into(),
            "-c".into(),
            format!("echo {tag} >> /data/log; trap 'exit 0' TERM; while true; do sleep 1; done"),
        ]);
        s
    };
    apply(
        &f,
        &target(&f.app, "rel1", &[("web", with_vol("one"))]),
        false,
    )
    .await;
    apply(
        &f,
        &target(&f.app, "rel2", &[("web", with_vol("two"))]),
        false,
    )
    .await;
    assert_eq!(containers_of(&f.app), ["web running rel2"]);
    let vol = format!("{}_data", f.app);
    let log = docker(&[
        "run",
        "--rm",
        "-v",
        &format!("{vol}:/data"),
        &img,
        "cat",
        "/data/log",
    ]);
    assert_eq!(log, "one\ntwo");
    let _ = docker_ok(&["rmi", &img]);
}

#[tokio::test]
async fn env_change_restarts_only_the_changed_service() {
    let f = fixture().await;
    let img = local_image(&format!("sv-test/env-{}", &f.app[..8]));
    let t1 = target(&f.app, "rel1", &[("web", svc(&img)), ("db", svc(&img))]);
    apply(&f, &t1, false).await;
    let id_of = |service: &str| {
        docker(&[
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=io.resin.app-uuid={}", f.app),
            "--filter",
            &format!("label=io.resin.service-name={service}"),
        ])
    };
    let (db0, web0) = (id_of("db"), id_of("web"));
    let mut web = svc(&img);
    web.environment.insert("MODE".into(), "fast".into());
    let (_, steps) = apply(
        &f,
        &target(&f.app, "rel1", &[("web", web), ("db", svc(&img))]),
        false,
    )
    .await;
    assert!(!steps.iter().any(|s| s.ends_with(":db")), "{steps:?}");
    assert_eq!(id_of("db"), db0);
    assert_ne!(id_of("web"), web0);
    assert_eq!(
        containers_of(&f.app),
        ["db running rel1", "web running rel1"]
    );
    let _ = docker_ok(&["rmi", &img]);
}

/// Two services updated together: `slow` ignores SIGTERM (the engine kills
/// it after its 10 s stop timeout), `fast` exits on it. `fast` is started
/// again as soon as its own old container has stopped, not when `slow`'s
/// has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_slow_to_stop_does_not_delay_another_services_start() {
    let f = fixture().await;
    let img = local_image(&format!("sv-test/chains-{}", &f.app[..8]));
    let mut slow = svc(&img);
    slow.command = Some(vec![
        "sh".into(),
        "-c".into(),
        "trap '' TERM; while true; do sleep 1; done".into(),
    ]);
    let t1 = target(
        &f.app,
        "rel1",
        &[("fast", svc(&img)), ("slow", slow.clone())],
    );
    apply(&f, &t1, false).await;
    let mut fast2 = svc(&img);
    fast2.environment.insert("V".into(), "2".into());
    slow.environment.insert("V".into(), "2".into());
    let t2 = target(&f.app, "rel2", &[("fast", fast2), ("slow", slow)]);
    let times = Mutex::new(Vec::new());
    let t0 = std::time::Instant::now();
    let record = |s: &Step| {
        let v = serde_json::to_value(s).unwrap();
        times.lock().unwrap().push((
            format!(
                "{}:{}",
                v["step"].as_str().unwrap(),
                v["service"].as_str().unwrap_or("")
            ),
            t0.elapsed().as_secs_f64(),
        ));
    };
    let out = f.rec.apply(&t2, false, &record).await.expect("apply");
    assert_eq!(out, Outcome::Converged);
    let times = times.into_inner().unwrap();
    let at = |name: &str| {
        times
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} not in {times:?}"))
            .1
    };
    let fast_down = at("start:fast") - at("stop:fast");
    let slow_down = at("start:slow") - at("stop:slow");
    assert!(
        slow_down >= 9.0,
        "slow stops in its 10 s timeout: {times:?}"
    );
    assert!(
        fast_down < 3.0,
        "fast was down {fast_down:.1} s while slow stopped: {times:?}"
    );
    assert_eq!(
        containers_of(&f.app),
        ["fast running rel2", "slow running rel2"]
    );
    let _ = docker_ok(&["rmi", &img]);
}

#[tokio::test]
async fn unmanaged_containers_are_left_alone() {
    let f = fixture().await;
    let img = local_image(&format!("sv-test/unmanaged-{}", &f.app[..8]));
    // The user's own container, even one carrying our app label but not
    // io.resin.managed=1.
    let theirs = docker(&[
        "run",
        "-d",
        "--label",
        &format!("io.resin.app-uuid={}", f.app),
        "--label",
        "io.resin.service-name=web",
        &img,
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 1; done",
    ]);
    apply(&f, &target(&f.app, "rel1", &[("web", svc(&img))]), false).await;
    // Removing the app removes our container only.
    let (out, _) = apply(&f, &Default::default(), false).await;
    assert_eq!(out, Outcome::Converged);
    assert_eq!(containers_of(&f.app), ["web running"]);
    let state = docker(&["inspect", "--format", "{{.State.Running}}", &theirs]);
    assert_eq!(state, "true");
    docker(&["rm", "-f", &theirs]);
    let _ = docker_ok(&["rmi", &img]);
}

/// Like [`apply`], but returns the error instead of panicking on it.
async fn try_apply(
    f: &Fixture,
    t: &resin_supervisor::planner::TargetApps,
) -> (Result<Outcome, String>, Vec<(String, f64)>) {
    let log = Mutex::new(Vec::new());
    let t0 = std::time::Instant::now();
    let record = |s: &Step| {
        let v = serde_json::to_value(s).unwrap();
        log.lock().unwrap().push((
            format!(
                "{}:{}",
                v["step"].as_str().unwrap(),
                v["service"].as_str().or(v["image"].as_str()).unwrap_or("")
            ),
            t0.elapsed().as_secs_f64(),
        ));
    };
    let out = f
        .rec
        .apply(t, false, &record)
        .await
        .map_err(|e| e.to_string());
    (out, log.into_inner().unwrap())
}

/// An image reference the test registry answers 404 for.
fn missing_image(app: &str) -> String {
    format!("{}/sv-test/missing-{}:latest", registry(), &app[..8])
}

/// `a` (download-then-kill, its new image present) and its sibling `b`,
/// whose new image the registry does not have (404): `a` runs the new
/// release when the apply ends, and stays so when the apply is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_siblings_failed_pull_does_not_keep_a_service_down() {
    let f = fixture().await;
    let img = local_image(&format!("sv-test/sibling-{}", &f.app[..8]));
    let t1 = target(&f.app, "rel1", &[("a", svc(&img)), ("b", svc(&img))]);
    apply(&f, &t1, false).await;
    let mut a2 = svc(&img);
    a2.environment.insert("V".into(), "2".into());
    let t2 = target(
        &f.app,
        "rel2",
        &[("a", a2), ("b", svc(&missing_image(&f.app)))],
    );
    let started = std::time::Instant::now();
    let (out, steps) = try_apply(&f, &t2).await;
    let err = out.expect_err("b's pull fails");
    assert!(err.contains("missing-"), "{err}");
    assert!(started.elapsed().as_secs() < 20, "{steps:?}");
    assert_eq!(
        containers_of(&f.app),
        ["a running rel2", "b running rel1"],
        "{steps:?}"
    );
    // The retry fails on b again and leaves a alone.
    let (out, steps) = try_apply(&f, &t2).await;
    assert!(out.is_err());
    assert!(!steps.iter().any(|(s, _)| s.ends_with(":a")), "{steps:?}");
    assert_eq!(containers_of(&f.app), ["a running rel2", "b running rel1"]);
    let _ = docker_ok(&["rmi", &img]);
}

/// The same across apps: one app's unpullable image does not hold back
/// another app's update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_apps_failed_pull_does_not_hold_back_another_app() {
    let app1 = app_uuid();
    let app2 = app_uuid();
    let state = tempfile::tempdir().unwrap();
    let engine = engine().await.scoped_to([app1.clone(), app2.clone()]);
    let rec = Reconciler::new(engine, "testdevice", state.path()).unwrap();
    let f = Fixture {
        app: app1.clone(),
        _state: state,
        rec,
    };
    struct Other(String);
    impl Drop for Other {
        fn drop(&mut self) {
            cleanup(&self.0);
        }
    }
    let _other = Other(app2.clone());
    let img = local_image(&format!("sv-test/apps-{}", &app1[..8]));
    let mut t1 = target(&app1, "rel1", &[("a", svc(&img))]);
    t1.extend(target(&app2, "rel1", &[("b", svc(&img))]));
    apply(&f, &t1, false).await;
    let mut a2 = svc(&img);
    a2.environment.insert("V".into(), "2".into());
    let mut t2 = target(&app1, "rel2", &[("a", a2)]);
    t2.extend(target(&app2, "rel2", &[("b", svc(&missing_image(&app2)))]));
    let (out, steps) = try_apply(&f, &t2).await;
    assert!(out.is_err(), "{steps:?}");
    assert_eq!(containers_of(&app1), ["a running rel2"], "{steps:?}");
    assert_eq!(containers_of(&app2), ["b running rel1"], "{steps:?}");
    let _ = docker_ok(&["rmi", &img]);
}

/// Under kill-then-download a service is down for its own stop, download,
/// create and start, not for a sibling's slow stop (`slow` ignores SIGTERM
/// and is killed after its 10 s timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_then_download_outage_is_only_the_services_own_steps() {
    let f = fixture().await;
    let img = local_image(&format!("sv-test/ktdown-{}", &f.app[..8]));
    let v2 = registry_image(&format!("ktdown2-{}", &f.app[..8]));
    let mut slow = svc(&img);
    slow.command = Some(vec![
        "sh".into(),
        "-c".into(),
        "trap '' TERM; while true; do sleep 1; done".into(),
    ]);
    let t1 = target(&f.app, "rel1", &[("a", svc(&img)), ("slow", slow.clone())]);
    apply(&f, &t1, false).await;
    let mut a2 = svc(&v2);
    a2.labels
        .insert(labels::UPDATE_STRATEGY.into(), "kill-then-download".into());
    slow.environment.insert("V".into(), "2".into());
    let t2 = target(&f.app, "rel2", &[("a", a2), ("slow", slow)]);
    let (out, times) = try_apply(&f, &t2).await;
    assert_eq!(out, Ok(Outcome::Converged), "{times:?}");
    let at = |name: &str| {
        times
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} not in {times:?}"))
            .1
    };
    let a_down = at("start:a") - at("stop:a");
    assert!(
        a_down < 5.0,
        "a was down {a_down:.1} s (its own steps take ~1 s): {times:?}"
    );
    assert_eq!(
        containers_of(&f.app),
        ["a running rel2", "slow running rel2"]
    );
    let _ = docker_ok(&["rmi", &img]);
    let _ = docker_ok(&["rmi", &v2]);
}

/// A release that changes neither a service's image nor its config keeps
/// that service's container (same id); the supervisor's state report shows
/// it in the new release.
#[tokio::test]
async fn a_service_unchanged_between_releases_keeps_its_container() {
    let f = fixture().await;
    let img = local_image(&format!("sv-test/keep-{}", &f.app[..8]));
    let mut web = svc(&img);
    web.ports = vec![
        format!("127.0.0.1:{}:80", free_port()),
        format!("127.0.0.1:{}:81", free_port()),
    ];
    let t1 = target(&f.app, "rel1", &[("web", web.clone()), ("db", svc(&img))]);
    apply(&f, &t1, false).await;
    let id_of = |service: &str| {
        docker(&[
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=io.resin.app-uuid={}", f.app),
            "--filter",
            &format!("label=io.resin.service-name={service}"),
        ])
    };
    let (web0, db0) = (id_of("web"), id_of("db"));
    // rel2: web only lists its ports in another order; db changes.
    web.ports.reverse();
    let mut db = svc(&img);
    db.environment.insert("V".into(), "2".into());
    let t2 = target(&f.app, "rel2", &[("web", web), ("db", db)]);
    let (out, steps) = apply(&f, &t2, false).await;
    assert_eq!(out, Outcome::Converged);
    assert!(!steps.iter().any(|s| s.ends_with(":web")), "{steps:?}");
    assert_eq!(id_of("web"), web0);
    assert_ne!(id_of("db"), db0);
    let cur = f.rec.current(Some(&t2)).await.unwrap();
    let report = resin_supervisor::report::apps_report(&cur);
    let app = &report[&f.app];
    assert_eq!(app.services["web"].release_uuid, "rel2");
    assert_eq!(
        app.services["web"].container_id.as_deref(),
        Some(web0.as_str())
    );
    assert_eq!(app.services["db"].release_uuid, "rel2");
    assert_eq!(app.release_uuid.as_deref(), Some("rel2"));
    let _ = docker_ok(&["rmi", &img]);
}

/// A `dead` container (the engine failed to remove it) is replaced, not
/// taken for a stopped one.
#[tokio::test]
async fn a_dead_container_is_replaced() {
    let f = fixture().await;
    let img = local_image(&format!("sv-test/dead-{}", &f.app[..8]));
    let t = target(&f.app, "rel1", &[("web", svc(&img))]);
    let (out, _) = apply(&f, &t, false).await;
    assert_eq!(out, Outcome::Converged);
    // The engine marks a container dead when it cannot remove it; the
    // planner sees the engine's state, so feed it one.
    let mut cur = f.rec.engine().current().await.unwrap();
    cur.containers[0].state = resin_supervisor::planner::RunState::Dead;
    let specs = resin_supervisor::planner::target_specs("testdevice", &t);
    let ctx = f.rec.context(&cur, &specs, false).await.unwrap();
    let plan = resin_supervisor::planner::plan(&cur, &t, &ctx);
    let kinds: Vec<String> = plan.steps.iter().map(Step::describe).collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert!(kinds[0].starts_with("remove web"), "{kinds:?}");
    assert!(kinds[2].starts_with("start web"), "{kinds:?}");
    let _ = docker_ok(&["rmi", &img]);
}

/// The app-wide lock (`/tmp/resin/locks/<app>/updates.lock`) holds every
/// service of the app, so the app never runs two releases side by side.
#[tokio::test]
async fn an_app_lock_holds_every_service_until_forced() {
    let f = fixture().await;
    let img = local_image(&format!("sv-test/applock-{}", &f.app[..8]));
    let t1 = target(&f.app, "rel1", &[("web", svc(&img)), ("db", svc(&img))]);
    apply(&f, &t1, false).await;
    let lock = resin_supervisor::reconcile::app_lock_path(&f.app);
    std::fs::write(&lock, "").unwrap();
    let mut web = svc(&img);
    web.environment.insert("V".into(), "2".into());
    let mut db = svc(&img);
    db.environment.insert("V".into(), "2".into());
    let t2 = target(&f.app, "rel2", &[("web", web), ("db", db)]);
    let (out, steps) = apply(&f, &t2, false).await;
    assert!(matches!(out, Outcome::Blocked(_)), "{out:?}");
    assert!(!steps.iter().any(|s| s.starts_with("stop:")), "{steps:?}");
    let now = containers_of(&f.app);
    assert!(now.contains(&"web running rel1".to_owned()), "{now:?}");
    assert!(now.contains(&"db running rel1".to_owned()), "{now:?}");
    assert!(!now.iter().any(|c| c.contains("running rel2")), "{now:?}");
    let (out, _) = apply(&f, &t2, true).await;
    assert_eq!(out, Outcome::Converged);
    assert_eq!(
        containers_of(&f.app),
        ["db running rel2", "web running rel2"]
    );
    let _ = docker_ok(&["rmi", &img]);
}

/// Compose `depends_on`: `web` depends on `db`, so db starts first and,
/// on an update of both, web's old container stops before db's.
#[tokio::test]
async fn depends_on_orders_starts_and_reverses_stops() {
    let f = fixture().await;
    let img = local_image(&format!("sv-test/deps-{}", &f.app[..8]));
    let mut web = svc(&img);
    web.depends_on = vec!["db".into()];
    let t1 = target(&f.app, "rel1", &[("web", web.clone()), ("db", svc(&img))]);
    let (out, steps) = apply(&f, &t1, false).await;
    assert_eq!(out, Outcome::Converged);
    assert!(
        pos(&steps, "start:db") < pos(&steps, "start:web"),
        "{steps:?}"
    );
    web.environment.insert("V".into(), "2".into());
    let mut db = svc(&img);
    db.environment.insert("V".into(), "2".into());
    let t2 = target(&f.app, "rel2", &[("web", web), ("db", db)]);
    let (out, steps) = apply(&f, &t2, false).await;
    assert_eq!(out, Outcome::Converged);
    assert!(
        pos(&steps, "stop:web") < pos(&steps, "stop:db"),
        "{steps:?}"
    );
    assert!(
        pos(&steps, "start:db") < pos(&steps, "start:web"),
        "{steps:?}"
    );
    assert_eq!(
        containers_of(&f.app),
        ["db running rel2", "web running rel2"]
    );
    let _ = docker_ok(&["rmi", &img]);
}

/// `network_mode: service:db` runs web in db's network namespace (the
/// engine gets `container:<db's container>`), and a new db brings a new web.
#[tokio::test]
async fn network_mode_service_shares_the_services_network() {
    let f = fixture().await;
    let img = local_image(&format!("sv-test/netsvc-{}", &f.app[..8]));
    let mut web = svc(&img);
    web.network_mode = Some("service:db".into());
    let t1 = target(&f.app, "rel1", &[("web", web.clone()), ("db", svc(&img))]);
    let (out, steps) = apply(&f, &t1, false).await;
    assert_eq!(out, Outcome::Converged, "{steps:?}");
    assert_eq!(
        containers_of(&f.app),
        ["db running rel1", "web running rel1"]
    );
    let id_of = |service: &str| {
        docker(&[
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=io.resin.app-uuid={}", f.app),
            "--filter",
            &format!("label=io.resin.service-name={service}"),
        ])
    };
    let mode_of_web = || {
        docker(&[
            "inspect",
            "--format",
            "{{.HostConfig.NetworkMode}}",
            &id_of("web"),
        ])
    };
    let name_of = |id: &str| docker(&["inspect", "--format", "{{.Name}}", id]);
    let db_name = name_of(&id_of("db"));
    let mode = mode_of_web();
    assert!(
        mode == format!("container:{}", db_name.trim_start_matches('/'))
            || mode == format!("container:{}", id_of("db")),
        "{mode} vs {db_name}"
    );
    let web0 = id_of("web");
    let mut db2 = svc(&img);
    db2.environment.insert("V".into(), "2".into());
    let t2 = target(&f.app, "rel2", &[("web", web), ("db", db2)]);
    let (out, steps) = apply(&f, &t2, false).await;
    assert_eq!(out, Outcome::Converged, "{steps:?}");
    assert_eq!(
        containers_of(&f.app),
        ["db running rel2", "web running rel2"]
    );
    assert_ne!(id_of("web"), web0);
    let db_name = name_of(&id_of("db"));
    let mode = mode_of_web();
    assert!(
        mode == format!("container:{}", db_name.trim_start_matches('/'))
            || mode == format!("container:{}", id_of("db")),
        "{mode} vs {db_name}"
    );
    let _ = docker_ok(&["rmi", &img]);
}

/// A network the new release no longer uses is removed with the containers
/// that were on it.
#[tokio::test]
async fn a_network_dropped_from_the_release_is_removed() {
    let f = fixture().await;
    let img = local_image(&format!("sv-test/netdrop-{}", &f.app[..8]));
    let mut web = svc(&img);
    web.networks = vec!["front".into()];
    apply(&f, &target(&f.app, "rel1", &[("web", web.clone())]), false).await;
    let nets = || {
        let mut v: Vec<String> = docker(&[
            "network",
            "ls",
            "--filter",
            &format!("label=io.resin.app-uuid={}", f.app),
            "--format",
            "{{.Name}}",
        ])
        .lines()
        .map(str::to_owned)
        .collect();
        v.sort();
        v
    };
    assert_eq!(nets(), [format!("{}_front", f.app)]);
    web.networks = vec!["back".into()];
    let (out, steps) = apply(&f, &target(&f.app, "rel2", &[("web", web)]), false).await;
    assert_eq!(out, Outcome::Converged, "{steps:?}");
    assert_eq!(nets(), [format!("{}_back", f.app)], "{steps:?}");
    assert_eq!(containers_of(&f.app), ["web running rel2"]);
    let _ = docker_ok(&["rmi", &img]);
}

/// `docker volume inspect` / `network inspect` of one field, or None when
/// the object is gone.
fn inspect(kind: &str, name: &str, format: &str) -> Option<String> {
    docker_ok(&[kind, "inspect", "--format", format, name])
}

fn container_id(app: &str, service: &str) -> String {
    docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=io.resin.app-uuid={app}"),
        "--filter",
        &format!("label=io.resin.service-name={service}"),
    ])
}

/// Changed volume labels recreate the volume: the containers that mount it
/// are stopped, removed and created again (db, which web depends on, starts
/// first), a service that does not use it keeps its container, and the
/// volume is empty again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_whose_labels_changed_is_recreated_with_only_its_users() {
    let f = fixture().await;
    let img = local_image(&format!("sv-test/volcfg-{}", &f.app[..8]));
    let release = |label: &str| {
        let mut web = svc(&img);
        web.volumes = vec!["data:/data".into()];
        web.depends_on = vec!["db".into()];
        web.command = Some(vec![
            "sh".into(),
            "-c".into(),
            "touch /data/mark; trap 'exit 0' TERM; while true; do sleep 1; done".into(),
        ]);
        let mut db = svc(&img);
        db.volumes = vec!["data:/db".into()];
        let mut t = target(
            &f.app,
            "rel1",
            &[("web", web), ("db", db), ("side", svc(&img))],
        );
        let rel = t.get_mut(&f.app).unwrap().releases.get_mut("rel1").unwrap();
        let mut v = resin_api_types::VolumeTarget::default();
        v.labels.insert("team".into(), label.into());
        rel.volumes.insert("data".into(), v);
        t
    };
    let (out, _) = apply(&f, &release("a"), false).await;
    assert_eq!(out, Outcome::Converged);
    let vol = format!("{}_data", f.app);
    assert_eq!(
        inspect("volume", &vol, "{{index .Labels \"team\"}}").as_deref(),
        Some("a")
    );
    let (web1, side1) = (container_id(&f.app, "web"), container_id(&f.app, "side"));
    // A file the volume holds now, and must not after the recreation.
    docker(&["exec", &web1, "sh", "-c", "echo old > /data/old"]);

    let (out, steps) = apply(&f, &release("b"), false).await;
    assert_eq!(out, Outcome::Converged, "{steps:?}");
    assert_eq!(
        inspect("volume", &vol, "{{index .Labels \"team\"}}").as_deref(),
        Some("b"),
        "{steps:?}"
    );
    assert!(
        pos(&steps, "remove-volume") < pos(&steps, "create-volume"),
        "{steps:?}"
    );
    assert!(
        pos(&steps, "start:db") < pos(&steps, "start:web"),
        "{steps:?}"
    );
    let web2 = container_id(&f.app, "web");
    assert_ne!(web1, web2, "web mounts the volume: a new container");
    assert_eq!(container_id(&f.app, "side"), side1, "side does not use it");
    assert!(
        docker_ok(&["exec", &web2, "cat", "/data/old"]).is_none(),
        "the volume was recreated empty"
    );
    assert_eq!(
        containers_of(&f.app),
        ["db running rel1", "side running rel1", "web running rel1"]
    );
    // Nothing left to do.
    let (_, steps) = apply(&f, &release("b"), false).await;
    assert!(steps.is_empty(), "{steps:?}");
    let _ = docker_ok(&["rmi", &img]);
}

/// Changed network labels recreate the network and only its users.
#[tokio::test]
async fn a_network_whose_labels_changed_is_recreated_with_only_its_users() {
    let f = fixture().await;
    let img = local_image(&format!("sv-test/netcfg-{}", &f.app[..8]));
    let release = |label: &str| {
        let mut web = svc(&img);
        web.networks = vec!["back".into()];
        let mut t = target(&f.app, "rel1", &[("web", web), ("side", svc(&img))]);
        let rel = t.get_mut(&f.app).unwrap().releases.get_mut("rel1").unwrap();
        let mut n = resin_api_types::NetworkTarget::default();
        n.labels.insert("team".into(), label.into());
        rel.networks.insert("back".into(), n);
        t
    };
    let (out, _) = apply(&f, &release("a"), false).await;
    assert_eq!(out, Outcome::Converged);
    let net = format!("{}_back", f.app);
    let id1 = inspect("network", &net, "{{.Id}}").unwrap();
    let (web1, side1) = (container_id(&f.app, "web"), container_id(&f.app, "side"));
    let (out, steps) = apply(&f, &release("b"), false).await;
    assert_eq!(out, Outcome::Converged, "{steps:?}");
    assert_eq!(
        inspect("network", &net, "{{index .Labels \"team\"}}").as_deref(),
        Some("b"),
        "{steps:?}"
    );
    assert_ne!(inspect("network", &net, "{{.Id}}").unwrap(), id1);
    assert_ne!(container_id(&f.app, "web"), web1);
    assert_eq!(container_id(&f.app, "side"), side1);
    assert_eq!(
        containers_of(&f.app),
        ["side running rel1", "web running rel1"]
    );
    let _ = docker_ok(&["rmi", &img]);
}

/// With `RESIN_SUPERVISOR_REMOVE_VOLUMES`, a volume the release drops goes
/// once its containers are gone, and so do a removed app's volumes;
/// without it, both stay.
#[tokio::test]
async fn dropped_volumes_are_removed_only_when_the_setting_asks() {
    let f = fixture().await;
    let img = local_image(&format!("sv-test/voldrop-{}", &f.app[..8]));
    let mut web = svc(&img);
    web.volumes = vec!["one:/one".into(), "two:/two".into()];
    apply(&f, &target(&f.app, "rel1", &[("web", web.clone())]), false).await;
    let vols = || {
        let mut v: Vec<String> = docker(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("label=io.resin.app-uuid={}", f.app),
        ])
        .lines()
        .map(|l| l.trim_start_matches(&format!("{}_", f.app)).to_owned())
        .collect();
        v.sort();
        v
    };
    assert_eq!(vols(), ["one", "two"]);
    // Off (the default): dropping `two` keeps it.
    web.volumes = vec!["one:/one".into()];
    let (out, _) = apply(&f, &target(&f.app, "rel2", &[("web", web.clone())]), false).await;
    assert_eq!(out, Outcome::Converged);
    assert_eq!(vols(), ["one", "two"]);
    // On: it goes.
    f.rec.set_remove_volumes(true);
    let (out, steps) = apply(&f, &target(&f.app, "rel2", &[("web", web.clone())]), false).await;
    assert_eq!(out, Outcome::Converged, "{steps:?}");
    assert_eq!(vols(), ["one"], "{steps:?}");
    // The app removed: its containers, then its volumes.
    let (out, steps) = apply(&f, &Default::default(), false).await;
    assert_eq!(out, Outcome::Converged, "{steps:?}");
    assert!(containers_of(&f.app).is_empty());
    assert!(vols().is_empty(), "{steps:?}");
    let _ = docker_ok(&["rmi", &img]);
}

/// A compose `ports` entry is published: the engine lists the binding and
/// the service answers on the host's port (the QEMU remote-access scenario
/// found `127.0.0.1:18080:8080` refused on the device: the port was bound
/// but never exposed, and the engine publishes only exposed ports).
#[tokio::test]
async fn a_published_port_answers_on_the_host() {
    use std::io::{Read, Write};
    let f = fixture().await;
    let img = local_image(&format!("sv-test/ports-{}", &f.app[..8]));
    let port = free_port();
    let mut web = svc(&img);
    web.command = Some(vec![
        "sh".into(),
        "-c".into(),
        "trap 'exit 0' TERM; mkdir -p /www; echo published > /www/index.html; busybox httpd -p 8080 -h /www; while true; do sleep 1; done".into(),
    ]);
    web.ports = vec![format!("127.0.0.1:{port}:8080")];
    let t = target(&f.app, "rel1", &[("web", web)]);
    let (out, _) = apply(&f, &t, false).await;
    assert_eq!(out, Outcome::Converged);
    let id = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=io.resin.app-uuid={}", f.app),
    ]);
    let ports = docker(&["port", &id]);
    assert!(
        ports.contains(&format!("8080/tcp -> 127.0.0.1:{port}")),
        "docker port {id}: {ports:?}"
    );
    let mut body = String::new();
    for _ in 0..50 {
        body.clear();
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
            let _ = s.read_to_string(&mut body);
            if body.contains("published") {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(body.contains("published"), "GET 127.0.0.1:{port}: {body:?}");
    let _ = docker_ok(&["rmi", &img]);
}
