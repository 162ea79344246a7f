//! Staged rollouts against a real server, on SQLite and PostgreSQL, with
//! simulated fleets of 1,000 devices (tests/common/fleet.rs) driven by the
//! evaluator on a test clock: a good release through every wave, a
//! crash-looping release halting in the first wave, a silent wave timing
//! out, pause and resume, roll back, a restart mid-rollout, bad input, and
//! (PostgreSQL) two replicas evaluating each pass exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::fleet::{waves, Script, SimFleet};
use common::{Backend, Server};
use resin_cloud::rollout::{self, Passes};
use serde_json::{json, Value};
use sqlx::Row;

both!(
    good_release_rolls_through_every_wave,
    crash_loop_halts_in_the_first_wave,
    silent_wave_times_out,
    pause_and_resume,
    roll_back_moves_devices_back,
    restart_mid_rollout_continues,
    bad_input_changes_nothing,
    device_sees_its_wave_through_the_target_state,
    os_rollback_allows_the_downgrade_only_where_needed
);

const N: usize = 1000;

/// The test clock: ms, ahead of the real one so that only the test's
/// passes are due.
struct Clock(i64);

impl Clock {
    fn new() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        Clock(i64::try_from(now).unwrap() + 1000)
    }
}

/// One step: devices report, then an evaluator pass, then 2 s go by.
fn step(s: &Server, sim: &mut SimFleet, clock: &mut Clock) {
    sim.tick(s);
    s.rt.block_on(rollout::run_due(&s.app, clock.0, 1000, &Passes::default()))
        .unwrap();
    clock.0 += 2000;
}

fn progress(s: &Server, key: &str, id: i64) -> Value {
    let r = s.get(&format!("/v1/rollout({id})/progress"), key);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn act(s: &Server, key: &str, id: i64, action: &str) -> (u16, Value) {
    let r = s.post(&format!("/v1/rollout({id})/{action}"), key, json!({}));
    (r.status, r.json())
}

fn create(s: &Server, key: &str, sim: &SimFleet, waves: Value) -> i64 {
    let r = s.post(
        "/v1/rollout",
        key,
        json!({"fleet": sim.fleet, "release": sim.new_release, "waves": waves}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["state"], "draft");
    r.json()["id"].as_i64().unwrap()
}

/// Steps until the rollout is in `state` (at most `max` steps).
fn run_until(
    s: &Server,
    sim: &mut SimFleet,
    clock: &mut Clock,
    key: &str,
    id: i64,
    state: &str,
    max: usize,
) -> Value {
    for _ in 0..max {
        step(s, sim, clock);
        let p = progress(s, key, id);
        if p["state"] == state {
            return p;
        }
    }
    panic!(
        "rollout not {state} after {max} steps: {}",
        progress(s, key, id)
    );
}

fn actions(p: &Value) -> Vec<String> {
    p["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

fn good_release_rolls_through_every_wave(backend: Backend) {
    let s = Server::start(backend);
    let (_, alice) = s.user("alice");
    let mut sim = SimFleet::new(&s, &alice, "good", N, |_| Script::Good);
    let mut clock = Clock::new();
    let id = create(&s, &alice, &sim, waves(&[1, 10, 50, 100], 4, 60));
    assert_eq!(act(&s, &alice, id, "start").0, 200);
    let p = run_until(&s, &mut sim, &mut clock, &alice, id, "completed", 40);
    assert_eq!(
        actions(&p),
        ["create", "start", "advance", "advance", "advance", "complete"]
    );
    let sizes: Vec<u64> = p["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            assert_eq!(w["counts"]["healthy"], w["counts"]["size"], "{w}");
            w["counts"]["size"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(sizes.iter().sum::<u64>(), N as u64);
    assert!(
        (50..=150).contains(&sizes[1]),
        "wave 2 is about 9 %: {sizes:?}"
    );
    // The fleet's target is the new release; no device keeps an assignment.
    let f = s.get(&format!("/v1/fleet({})", sim.fleet), &alice).json();
    assert_eq!(f["target_release"], sim.new_release);
    let targets = sim.targets(&s);
    assert!(targets.values().all(|t| *t == Some(sim.new_release)));
    let left: i64 = s.rt.block_on(async {
        sqlx::query("SELECT COUNT(*) FROM device WHERE rollout_release IS NOT NULL")
            .fetch_one(&s.app.db.pool)
            .await
            .unwrap()
            .try_get(0)
            .unwrap()
    });
    assert_eq!(left, 0);
    // Completed is final: pausing it is a 409 and changes nothing.
    let (status, body) = act(&s, &alice, id, "pause");
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot pause a completed rollout"),
        "{body}"
    );
    assert_eq!(progress(&s, &alice, id)["state"], "completed");
}

fn crash_loop_halts_in_the_first_wave(backend: Backend) {
    let s = Server::start(backend);
    let (_, alice) = s.user("alice");
    // 30 % of the devices crash-loop on the new release.
    let mut sim = SimFleet::new(&s, &alice, "crashy", N, |i| {
        if i % 10 < 3 {
            Script::CrashLoop
        } else {
            Script::Good
        }
    });
    let mut clock = Clock::new();
    let mut w = waves(&[10, 50, 100], 10, 120);
    w[0]["min_sample"] = json!(20);
    w[0]["max_failure_percent"] = json!(10);
    let id = create(&s, &alice, &sim, w);
    act(&s, &alice, id, "start");
    let p = run_until(&s, &mut sim, &mut clock, &alice, id, "halted", 20);
    let halt = p["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(halt["action"], "halt");
    assert_eq!(halt["wave"], 0, "{halt}");
    let reason = halt["reason"].as_str().unwrap();
    assert!(reason.contains("crash loop"), "{reason}");
    assert!(reason.contains("max_failure_percent 10"), "{reason}");
    assert!(halt["counts"]["failed"].as_u64().unwrap() > 0, "{halt}");
    // Halted: further passes give nobody else the release.
    for _ in 0..5 {
        step(&s, &mut sim, &mut clock);
    }
    let members = sim.waves(&s, id);
    let outside: Vec<_> = sim
        .ever_new
        .iter()
        .filter(|d| members.get(d) != Some(&0))
        .collect();
    assert!(
        outside.is_empty(),
        "devices outside wave 1 got it: {outside:?}"
    );
    assert!(!sim.ever_new.is_empty());
    // And their target state (the real computation) names the old release.
    for (d, _) in &sim.devices {
        let t =
            s.rt.block_on(resin_cloud::device_api::build_target(&s.app, *d))
                .unwrap();
        let releases: Vec<&String> = t
            .values()
            .flat_map(|dt| dt.apps.values())
            .flat_map(|a| a.releases.keys())
            .collect();
        let want = if members.get(d) == Some(&0) {
            &sim.new_uuid
        } else {
            &sim.old_uuid
        };
        assert_eq!(releases, [want], "device {d}");
    }
    assert_eq!(progress(&s, &alice, id)["state"], "halted");
}

fn silent_wave_times_out(backend: Backend) {
    let s = Server::start(backend);
    let (_, alice) = s.user("alice");
    let mut sim = SimFleet::new(&s, &alice, "silent", N, |_| Script::Silent);
    let mut clock = Clock::new();
    let id = create(&s, &alice, &sim, waves(&[5, 100], 2, 10));
    act(&s, &alice, id, "start");
    // Nothing is decided before the timeout.
    for _ in 0..4 {
        step(&s, &mut sim, &mut clock);
    }
    assert_eq!(progress(&s, &alice, id)["state"], "running");
    let p = run_until(&s, &mut sim, &mut clock, &alice, id, "halted", 10);
    let halt = p["events"].as_array().unwrap().last().unwrap().clone();
    assert!(
        halt["reason"].as_str().unwrap().contains("timeout"),
        "{halt}"
    );
    assert_eq!(
        p["waves"][0]["counts"]["failed"], p["waves"][0]["counts"]["size"],
        "{p}"
    );
    assert_eq!(
        p["waves"][1]["counts"]["pending"],
        p["waves"][1]["counts"]["size"]
    );
}

fn pause_and_resume(backend: Backend) {
    let s = Server::start(backend);
    let (_, alice) = s.user("alice");
    let mut sim = SimFleet::new(&s, &alice, "pausing", N, |_| Script::Good);
    let mut clock = Clock::new();
    let mut w = waves(&[10, 100], 2, 60);
    // The first wave pauses by itself once it is healthy.
    w[0]["pause_after"] = json!(true);
    let id = create(&s, &alice, &sim, w);
    act(&s, &alice, id, "start");
    let p = run_until(&s, &mut sim, &mut clock, &alice, id, "paused", 10);
    assert_eq!(p["current_wave"], 1);
    assert!(p["events"].as_array().unwrap().last().unwrap()["reason"]
        .as_str()
        .unwrap()
        .contains("pause"));
    // Paused: passes assign nothing.
    let before = sim.ever_new.len();
    for _ in 0..3 {
        step(&s, &mut sim, &mut clock);
    }
    assert_eq!(sim.ever_new.len(), before);
    assert_eq!(
        progress(&s, &alice, id)["waves"][1]["counts"]["in_progress"],
        0
    );
    let (status, p) = act(&s, &alice, id, "resume");
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["state"], "running");
    // A pause by hand, then resume again.
    step(&s, &mut sim, &mut clock);
    let (status, p) = act(&s, &alice, id, "pause");
    assert_eq!((status, p["state"].as_str()), (200, Some("paused")));
    assert_eq!(act(&s, &alice, id, "pause").0, 409, "paused already");
    act(&s, &alice, id, "resume");
    let p = run_until(&s, &mut sim, &mut clock, &alice, id, "completed", 20);
    assert_eq!(
        actions(&p),
        ["create", "start", "pause", "resume", "pause", "resume", "complete"]
    );
}

fn roll_back_moves_devices_back(backend: Backend) {
    let s = Server::start(backend);
    let (_, alice) = s.user("alice");
    let mut sim = SimFleet::new(&s, &alice, "back", N, |_| Script::Good);
    let mut clock = Clock::new();
    let id = create(&s, &alice, &sim, waves(&[10, 50, 100], 2, 60));
    act(&s, &alice, id, "start");
    // Run until the second wave has the release.
    for _ in 0..20 {
        step(&s, &mut sim, &mut clock);
        if progress(&s, &alice, id)["current_wave"] == 1 {
            break;
        }
    }
    step(&s, &mut sim, &mut clock);
    let updated = sim
        .targets(&s)
        .values()
        .filter(|t| **t == Some(sim.new_release))
        .count();
    assert!(updated > 300, "{updated} devices updated");
    let (status, p) = act(&s, &alice, id, "rollback");
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["state"], "cancelled");
    let last = p["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["action"], "rollback");
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("{updated} devices moved back")),
        "{last}"
    );
    assert!(sim
        .targets(&s)
        .values()
        .all(|t| *t == Some(sim.old_release)));
    // Nothing more happens; a new rollout of the fleet may start.
    step(&s, &mut sim, &mut clock);
    assert!(sim
        .targets(&s)
        .values()
        .all(|t| *t == Some(sim.old_release)));
    create(&s, &alice, &sim, waves(&[100], 2, 60));
}

fn restart_mid_rollout_continues(backend: Backend) {
    let mut s = Server::start(backend);
    let (_, alice) = s.user("alice");
    let mut sim = SimFleet::new(&s, &alice, "restart", N, |_| Script::Good);
    let mut clock = Clock::new();
    let id = create(&s, &alice, &sim, waves(&[10, 50, 100], 4, 60));
    act(&s, &alice, id, "start");
    for _ in 0..20 {
        step(&s, &mut sim, &mut clock);
        if progress(&s, &alice, id)["current_wave"] == 1 {
            break;
        }
    }
    let before = progress(&s, &alice, id);
    assert_eq!(before["current_wave"], 1);
    let members = sim.waves(&s, id);
    s.restart();
    let after = progress(&s, &alice, id);
    assert_eq!(after["current_wave"], 1);
    assert_eq!(
        after["waves"], before["waves"],
        "counts survive the restart"
    );
    assert_eq!(sim.waves(&s, id), members, "membership is not reshuffled");
    let p = run_until(&s, &mut sim, &mut clock, &alice, id, "completed", 30);
    assert_eq!(
        actions(&p),
        ["create", "start", "advance", "advance", "complete"]
    );
}

fn bad_input_changes_nothing(backend: Backend) {
    let s = Server::start(backend);
    let (_, alice) = s.user("alice");
    let (_, bob) = s.user("bob");
    let sim = SimFleet::new(&s, &alice, "bad", 10, |_| Script::Good);
    let other = SimFleet::new(&s, &alice, "other", 1, |_| Script::Good);
    let count = |s: &Server| -> i64 {
        s.rt.block_on(async {
            sqlx::query("SELECT COUNT(*) FROM rollout")
                .fetch_one(&s.app.db.pool)
                .await
                .unwrap()
                .try_get(0)
                .unwrap()
        })
    };
    let post = |key: &str, body: Value| s.post("/v1/rollout", key, body);
    let ok = waves(&[10, 100], 60, 600);
    let cases = [
        // A release of another fleet.
        (
            json!({"fleet": sim.fleet, "release": other.new_release, "waves": ok}),
            400,
            "not a release of fleet",
        ),
        // Waves that do not reach 100 %.
        (
            json!({"fleet": sim.fleet, "release": sim.new_release, "waves": waves(&[10, 50], 60, 600)}),
            400,
            "reach 100",
        ),
        // Thresholds out of range.
        (
            json!({"fleet": sim.fleet, "release": sim.new_release, "waves": [{"percent": 100, "max_failure_percent": 150}]}),
            400,
            "max_failure_percent",
        ),
        (
            json!({"fleet": sim.fleet, "release": sim.new_release, "waves": [{"percent": 100, "success_percent": 0}]}),
            400,
            "success_percent",
        ),
        (
            json!({"fleet": sim.fleet, "release": sim.new_release, "waves": [{"percent": 100, "soak_secs": 60, "timeout_secs": 30}]}),
            400,
            "timeout_secs",
        ),
        (
            json!({"fleet": sim.fleet, "release": sim.new_release, "waves": [{"percent": 0}, {"percent": 100}]}),
            400,
            "percent",
        ),
        (
            json!({"fleet": sim.fleet, "release": sim.new_release, "waves": [{"percent": 100, "min_sample": 0}]}),
            400,
            "min_sample",
        ),
        // Neither or both targets, an unknown field.
        (json!({"fleet": sim.fleet, "waves": ok}), 400, "exactly one"),
        (
            json!({"fleet": sim.fleet, "release": sim.new_release, "os_version": "9", "waves": ok}),
            400,
            "exactly one",
        ),
        (
            json!({"fleet": sim.fleet, "release": sim.new_release, "waves": ok, "colour": 1}),
            400,
            "colour",
        ),
        (
            json!({"fleet": sim.fleet, "os_version": "9.9", "waves": ok}),
            400,
            "no OS release",
        ),
    ];
    for (body, status, needle) in cases {
        let r = post(&alice, body.clone());
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert!(r.body.contains(needle), "{body}: {}", r.body);
    }
    assert_eq!(count(&s), 0);
    // Bob reaches neither Alice's fleet nor her rollouts.
    let r = post(
        &bob,
        json!({"fleet": sim.fleet, "release": sim.new_release, "waves": ok}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(count(&s), 0);
    let id = create(&s, &alice, &sim, ok.clone());
    assert_eq!(
        s.get(&format!("/v1/rollout({id})/progress"), &bob).status,
        404
    );
    assert_eq!(act(&s, &bob, id, "start").0, 404);
    assert_eq!(s.get("/v1/rollout", &bob).json()["value"], json!([]));
    assert_eq!(s.get("/v1/rollout_event", &bob).json()["value"], json!([]));
    assert_eq!(
        s.get("/v1/rollout", &alice).json()["value"][0]["state"],
        "draft"
    );
    // Overlapping rollouts on one fleet.
    let r = post(
        &alice,
        json!({"fleet": sim.fleet, "release": sim.new_release, "waves": ok}),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("already has an open rollout"), "{}", r.body);
    assert_eq!(count(&s), 1);
    // Unknown actions and transitions out of order.
    assert_eq!(act(&s, &alice, id, "explode").0, 409);
    assert_eq!(act(&s, &alice, id, "pause").0, 409);
    assert_eq!(act(&s, &alice, id, "resume").0, 409);
    assert_eq!(progress(&s, &alice, id)["state"], "draft");
    let (status, p) = act(&s, &alice, id, "cancel");
    assert_eq!((status, p["state"].as_str()), (200, Some("cancelled")));
    assert_eq!(act(&s, &alice, id, "start").0, 409);
    // The generic handlers cannot write rollouts.
    assert_ne!(
        s.patch(
            &format!("/v1/rollout({id})"),
            &alice,
            json!({"state": "running"})
        )
        .status,
        204
    );
    assert_eq!(progress(&s, &alice, id)["state"], "cancelled");
}

fn device_sees_its_wave_through_the_target_state(backend: Backend) {
    let s = Server::start(backend);
    let (_, alice) = s.user("alice");
    let mut sim = SimFleet::new(&s, &alice, "canary", 50, |_| Script::Good);
    let prov = s.create(
        &alice,
        "provisioning_key",
        json!({"fleet": sim.fleet, "name": "p"}),
    )["key"]
        .as_str()
        .unwrap()
        .to_owned();
    // A real device, tagged as the canary; a pinned one.
    let (dev, uuid, key) = s.device(&prov);
    let (pinned, puuid, pkey) = s.device(&prov);
    // A real device of the last wave: the evaluator, not an API call,
    // changes its target, and its cached poll must see that.
    let (_, luuid, lkey) = s.device(&prov);
    let late_state = format!("/device/v3/{luuid}/state");
    s.create(
        &alice,
        "device_tag",
        json!({"device": dev, "tag_key": "canary", "value": "yes"}),
    );
    assert_eq!(
        s.patch(
            &format!("/v1/device({pinned})"),
            &alice,
            json!({"pinned_release": sim.old_release})
        )
        .status,
        204
    );
    let state = format!("/device/v3/{uuid}/state");
    let first = s.get(&state, &key);
    let etag = first.header("etag").unwrap();
    assert!(first.body.contains(&sim.old_uuid));
    let mut clock = Clock::new();
    let w = json!([
        {"tags": {"canary": "yes"}, "soak_secs": 2, "timeout_secs": 60, "pause_after": true},
        {"percent": 100, "soak_secs": 2, "timeout_secs": 60}
    ]);
    let id = create(&s, &alice, &sim, w);
    // A draft changes no target: the poll stays 304.
    let r = s.raw(
        "GET",
        &state,
        Some(&key),
        &[("If-None-Match", &etag)],
        vec![],
    );
    assert_eq!(r.status, 304);
    act(&s, &alice, id, "start");
    let p = progress(&s, &alice, id);
    assert_eq!(
        p["waves"][0]["counts"]["size"], 1,
        "the canary wave is the tagged device: {p}"
    );
    let r = s.raw(
        "GET",
        &state,
        Some(&key),
        &[("If-None-Match", &etag)],
        vec![],
    );
    assert_eq!(r.status, 200, "the canary's target changed");
    assert!(
        r.body.contains(&sim.new_uuid) && !r.body.contains(&sim.old_uuid),
        "{}",
        r.body
    );
    let etag2 = r.header("etag").unwrap();
    // The canary reports the new release running, through the device API.
    let report = json!({&uuid: {"apps": {"app": {"release_uuid": sim.new_uuid, "services": {"main": {
        "status": "running", "release_uuid": sim.new_uuid, "image": "img"}}}}}});
    assert_eq!(s.patch("/device/v3/state", &key, report).status, 200);
    // The other devices have not moved; the poll of the canary stays 304
    // while the evaluator works.
    for _ in 0..3 {
        s.rt.block_on(rollout::run_due(&s.app, clock.0, 1000, &Passes::default()))
            .unwrap();
        clock.0 += 2000;
        let r = s.raw(
            "GET",
            &state,
            Some(&key),
            &[("If-None-Match", &etag2)],
            vec![],
        );
        assert_eq!(r.status, 304);
    }
    let p = progress(&s, &alice, id);
    assert_eq!(p["state"], "paused", "{p}");
    assert_eq!(p["waves"][0]["counts"]["healthy"], 1);
    assert!(
        sim.targets(&s)
            .values()
            .filter(|t| **t == Some(sim.new_release))
            .count()
            == 1
    );
    let late = s.get(&late_state, &lkey);
    assert!(late.body.contains(&sim.old_uuid), "{}", late.body);
    let late_etag = late.header("etag").unwrap();
    act(&s, &alice, id, "resume");
    step(&s, &mut sim, &mut clock);
    let r = s.raw(
        "GET",
        &late_state,
        Some(&lkey),
        &[("If-None-Match", &late_etag)],
        vec![],
    );
    assert_eq!(r.status, 200, "the evaluator's assignment reaches the poll");
    assert!(r.body.contains(&sim.new_uuid), "{}", r.body);
    let report = json!({&luuid: {"apps": {"app": {"release_uuid": sim.new_uuid, "services": {"main": {
        "status": "running", "release_uuid": sim.new_uuid, "image": "img"}}}}}});
    assert_eq!(s.patch("/device/v3/state", &lkey, report).status, 200);
    // The pinned device stays pinned throughout.
    for _ in 0..10 {
        step(&s, &mut sim, &mut clock);
    }
    let p = progress(&s, &alice, id);
    assert_eq!(p["state"], "completed", "{p}");
    let pinned_state = s.get(&format!("/device/v3/{puuid}/state"), &pkey);
    assert!(
        pinned_state.body.contains(&sim.old_uuid),
        "{}",
        pinned_state.body
    );
    assert!(!pinned_state.body.contains(&sim.new_uuid));
    let members = sim.waves(&s, id);
    assert!(
        !members.contains_key(&pinned),
        "a pinned device is no member"
    );
}

/// Two replicas on one PostgreSQL, each with its own evaluator: every pass
/// of the rollout runs exactly once, and every transition happens once.
#[test]
fn two_replicas_evaluate_each_pass_once() {
    let s = Server::start_with(Backend::Postgres, |c| c.rollout_eval_ms = 100);
    let replica = s.replica();
    let (_, alice) = s.user("alice");
    let mut sim = SimFleet::new(&s, &alice, "replicas", N, |_| Script::Good);
    let id = create(&s, &alice, &sim, waves(&[10, 50, 100], 1, 60));
    act(&s, &alice, id, "start");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        sim.tick(&s);
        if progress(&s, &alice, id)["state"] == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "{}", progress(&s, &alice, id));
        std::thread::sleep(Duration::from_millis(100));
    }
    let p = progress(&s, &alice, id);
    assert_eq!(
        actions(&p),
        ["create", "start", "advance", "advance", "complete"]
    );
    let mut all: Vec<(i64, i64)> = s.rollout_passes.0.lock().unwrap().clone();
    let mine = all.len();
    all.extend(replica.rollout_passes.0.lock().unwrap().iter().copied());
    let theirs = all.len() - mine;
    let passes: BTreeSet<(i64, i64)> = all.iter().copied().collect();
    assert_eq!(passes.len(), all.len(), "a pass ran twice: {all:?}");
    let total: i64 = s.rt.block_on(async {
        sqlx::query("SELECT passes FROM rollout WHERE id = $1")
            .bind(id)
            .fetch_one(&s.app.db.pool)
            .await
            .unwrap()
            .try_get(0)
            .unwrap()
    });
    assert_eq!(all.len() as i64, total);
    assert_eq!(
        passes,
        (0..total).map(|p| (id, p)).collect(),
        "passes 0..{total} each once ({mine} here, {theirs} on the replica)"
    );
    eprintln!("passes: {mine} on one replica, {theirs} on the other");
    replica.task.abort();
    s.rt.block_on(replica.state.db.pool.close());
}

/// The device's OS target, as its supervisor polls it.
fn os_target(s: &Server, uuid: &str, key: &str) -> Value {
    let r = s.get(&format!("/device/v3/{uuid}/state"), key);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()[uuid]["os"].clone()
}

fn report_os(s: &Server, uuid: &str, key: &str, version: &str) {
    let r = s.req(
        "PATCH",
        "/device/v3/state",
        Some(key),
        Some(&json!({uuid: {"os_version": version}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Rolling back an OS rollout sends the updated devices the older version,
/// which a device refuses unless the target allows the downgrade: the
/// target allows it exactly for the devices that run the rolled-back
/// version (also one that reports it only after the rollback), and for
/// everyone when the fleet's config var says so.
fn os_rollback_allows_the_downgrade_only_where_needed(backend: Backend) {
    let s = Server::start(backend);
    let (_, alice) = s.user("alice");
    let (fleet, prov) = s.fleet(&alice, "os-back");
    for v in ["1.0", "2.0"] {
        s.create(
            &alice,
            "os_release",
            json!({"device_type": "qemuarm64", "version": v}),
        );
    }
    let r = s.patch(
        &format!("/v1/fleet({fleet})"),
        &alice,
        json!({"target_os_version": "1.0"}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let (_, a, akey) = s.device(&prov);
    let (_, b, bkey) = s.device(&prov);
    report_os(&s, &a, &akey, "1.0");
    report_os(&s, &b, &bkey, "1.0");
    assert_eq!(os_target(&s, &a, &akey), json!({"version": "1.0"}));

    let r = s.post(
        "/v1/rollout",
        &alice,
        json!({"fleet": fleet, "os_version": "2.0", "waves": waves(&[100], 2, 60)}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_i64().unwrap();
    assert_eq!(act(&s, &alice, id, "start").0, 200);
    assert_eq!(os_target(&s, &a, &akey), json!({"version": "2.0"}));
    // Device a installs and commits 2.0; b is still downloading.
    report_os(&s, &a, &akey, "2.0");
    let (status, p) = act(&s, &alice, id, "rollback");
    assert_eq!(status, 200, "{p}");

    assert_eq!(
        os_target(&s, &a, &akey),
        json!({"version": "1.0", "allow_downgrade": true}),
        "a runs the rolled-back 2.0: it may go back down"
    );
    assert_eq!(
        os_target(&s, &b, &bkey),
        json!({"version": "1.0"}),
        "b never left 1.0: no downgrade allowed"
    );
    // b finishes its install after the rollback: its report of 2.0 drops
    // its cached target, and the next poll allows the way back.
    report_os(&s, &b, &bkey, "2.0");
    assert_eq!(
        os_target(&s, &b, &bkey),
        json!({"version": "1.0", "allow_downgrade": true})
    );

    // Without a rollback, a lower fleet target is not a downgrade the
    // device may take, until the fleet's config var allows it.
    let (_, c, ckey) = s.device(&prov);
    report_os(&s, &c, &ckey, "2.0");
    assert_eq!(os_target(&s, &c, &ckey), json!({"version": "1.0"}));
    s.create(
        &alice,
        "fleet_config_var",
        json!({"fleet": fleet, "name": "RESIN_SUPERVISOR_OS_ALLOW_DOWNGRADE", "value": "1"}),
    );
    assert_eq!(
        os_target(&s, &c, &ckey),
        json!({"version": "1.0", "allow_downgrade": true})
    );
}
