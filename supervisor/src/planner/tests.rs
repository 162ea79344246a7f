//! Unit tests of the planner, one per case.

use std::collections::BTreeMap;

use resin_api_types::{labels, AppTarget, EnvLayers, ReleaseTarget, ServiceTarget, VolumeTarget};

use super::*;

const APP: &str = "app1";

fn svc(image: &str) -> ServiceTarget {
    ServiceTarget {
        image: image.into(),
        restart: "always".into(),
        ..Default::default()
    }
}

fn target(release: &str, services: &[(&str, ServiceTarget)]) -> TargetApps {
    let mut rel = ReleaseTarget::default();
    for (n, s) in services {
        rel.services.insert((*n).into(), s.clone());
    }
    let mut app = AppTarget {
        name: "app".into(),
        ..Default::default()
    };
    app.releases.insert(release.into(), rel);
    BTreeMap::from([(APP.to_owned(), app)])
}

fn ctx_with_images(images: &[&str]) -> PlanContext {
    PlanContext {
        device_uuid: "dev".into(),
        images_present: images.iter().map(|s| (*s).to_owned()).collect(),
        now: 1000,
        ..Default::default()
    }
}

/// The engine state after `t` converged: every container running, every
/// network and volume there.
fn converged(t: &TargetApps) -> CurrentState {
    let mut cur = CurrentState::default();
    for (i, s) in target_specs("dev", t).into_iter().enumerate() {
        for n in &s.networks {
            let c = network_config(t.get(&s.app_uuid), &s.app_uuid, n);
            let o = AppObject {
                name: n.clone(),
                app_uuid: s.app_uuid.clone(),
                driver: c.driver,
                options: c.options,
                labels: c.labels,
            };
            if !cur.networks.contains(&o) {
                cur.networks.push(o);
            }
        }
        for v in &s.volumes {
            let c = volume_config(t.get(&s.app_uuid), &s.app_uuid, v);
            let o = AppObject {
                name: v.clone(),
                app_uuid: s.app_uuid.clone(),
                driver: c.driver,
                options: c.options,
                labels: c.labels,
            };
            if !cur.volumes.contains(&o) {
                cur.volumes.push(o);
            }
        }
        cur.containers.push(Container {
            id: format!("c{i}-{}", &s.config_hash[..6]),
            name: s.name.clone(),
            managed: true,
            app_uuid: s.app_uuid.clone(),
            service: s.service.clone(),
            release_uuid: s.release_uuid.clone(),
            config_hash: s.config_hash.clone(),
            image: s.image.clone(),
            state: RunState::Running,
            created: 900,
            volumes: s.volumes.clone(),
            networks: s.networks.clone(),
        });
    }
    cur
}

fn kinds(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .map(|s| {
            let v = serde_json::to_value(s).unwrap();
            format!(
                "{}:{}",
                v["step"].as_str().unwrap(),
                v["service"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// The kinds of the steps `steps[i]` waits for.
fn deps(p: &Plan, i: usize) -> Vec<String> {
    let mut d = kinds(
        &p.after[i]
            .iter()
            .map(|&d| p.steps[d].clone())
            .collect::<Vec<_>>(),
    );
    d.sort();
    d
}

fn index(p: &Plan, kind: &str) -> usize {
    kinds(p)
        .iter()
        .position(|k| k == kind)
        .unwrap_or_else(|| panic!("{kind} not in {:?}", kinds(p)))
}

#[test]
fn fresh_device_fetches_image_then_creates_network_then_container_then_starts() {
    let t = target("r1", &[("web", svc("img:1"))]);
    let steps = plan(&CurrentState::default(), &t, &ctx_with_images(&[]));
    assert!(steps.contains(&Step::FetchImage {
        image: "img:1".into()
    }));
    assert!(steps
        .iter()
        .any(|s| matches!(s, Step::CreateNetwork { name, .. } if name == "app1_default")));
    // The whole chain in one plan: create waits for the image and the
    // network, start for create.
    assert_eq!(
        kinds(&steps),
        ["create-network:", "fetch-image:", "create:", "start:web"]
    );
    assert_eq!(
        deps(&steps, index(&steps, "create:")),
        ["create-network:", "fetch-image:"]
    );
    assert_eq!(deps(&steps, index(&steps, "start:web")), ["create:"]);

    let mut cur = CurrentState::default();
    cur.networks.push(AppObject {
        name: "app1_default".into(),
        app_uuid: APP.into(),
        ..Default::default()
    });
    let steps = plan(&cur, &t, &ctx_with_images(&["img:1"]));
    assert_eq!(kinds(&steps), ["create:", "start:web"]);

    let mut cur = converged(&t);
    cur.containers[0].state = RunState::Created;
    let steps = plan(&cur, &t, &ctx_with_images(&["img:1"]));
    assert_eq!(kinds(&steps), ["start:web"]);
}

#[test]
fn converged_state_plans_nothing() {
    let t = target("r1", &[("web", svc("img:1")), ("db", svc("img:2"))]);
    assert!(plan(&converged(&t), &t, &ctx_with_images(&["img:1", "img:2"])).is_empty());
}

#[test]
fn named_volume_is_created_and_survives_a_release_change() {
    let mut s = svc("img:1");
    s.volumes = vec!["data:/data".into()];
    let mut t = target("r1", &[("web", s.clone())]);
    t.get_mut(APP)
        .unwrap()
        .releases
        .get_mut("r1")
        .unwrap()
        .volumes
        .insert("data".into(), VolumeTarget::default());
    let mut cur = converged(&t);
    cur.volumes.clear();
    cur.containers.clear();
    let steps = plan(&cur, &t, &ctx_with_images(&["img:1"]));
    assert!(steps
        .iter()
        .any(|s| matches!(s, Step::CreateVolume { name, .. } if name == "app1_data")));

    // New release: the volume is kept and the new container mounts it.
    let cur = converged(&t);
    s.image = "img:2".into();
    let t2 = target("r2", &[("web", s)]);
    let steps = plan(&cur, &t2, &ctx_with_images(&["img:1", "img:2"]));
    assert!(!steps.iter().any(|s| matches!(s, Step::CreateVolume { .. })));
    let Some(Step::Create { spec }) = steps.iter().find(|s| matches!(s, Step::Create { .. }))
    else {
        panic!("no create in {steps:?}")
    };
    assert!(spec.binds.contains(&"app1_data:/data".to_owned()));
}

#[test]
fn download_then_kill_keeps_old_running_until_new_exists() {
    let t1 = target("r1", &[("web", svc("img:1"))]);
    let t2 = target("r2", &[("web", svc("img:2"))]);
    let mut cur = converged(&t1);
    // Image missing: the old one is stopped only once the image is there
    // and the new container exists; removed once the new one started.
    let steps = plan(&cur, &t2, &ctx_with_images(&["img:1"]));
    assert_eq!(
        kinds(&steps),
        [
            "fetch-image:",
            "create:",
            "stop:web",
            "start:web",
            "remove:web"
        ]
    );
    assert_eq!(deps(&steps, 1), ["fetch-image:"]);
    assert_eq!(deps(&steps, 2), ["create:"]);
    assert_eq!(deps(&steps, 3), ["create:", "stop:web"]);
    assert_eq!(deps(&steps, 4), ["start:web"]);
    // Image there: no fetch.
    let steps = plan(&cur, &t2, &ctx_with_images(&["img:1", "img:2"]));
    assert_eq!(
        kinds(&steps),
        ["create:", "stop:web", "start:web", "remove:web"]
    );
    // New one created: stop the old one, then start the new one.
    let mut new = converged(&t2).containers.remove(0);
    new.id = "new".into();
    new.state = RunState::Created;
    cur.containers.push(new.clone());
    let steps = plan(&cur, &t2, &ctx_with_images(&["img:1", "img:2"]));
    assert_eq!(kinds(&steps), ["stop:web", "start:web", "remove:web"]);
    assert_eq!(deps(&steps, 1), ["stop:web"]);
    // New one running, old stopped: remove the old one.
    cur.containers[0].state = RunState::Stopped;
    cur.containers[1].state = RunState::Running;
    let steps = plan(&cur, &t2, &ctx_with_images(&["img:1", "img:2"]));
    assert_eq!(kinds(&steps), ["remove:web"]);
}

#[test]
fn kill_then_download_stops_and_removes_before_fetching() {
    let mut s2 = svc("img:2");
    s2.labels
        .insert(labels::UPDATE_STRATEGY.into(), "kill-then-download".into());
    let t1 = target("r1", &[("web", svc("img:1"))]);
    let t2 = target("r2", &[("web", s2)]);
    let cur = converged(&t1);
    let steps = plan(&cur, &t2, &ctx_with_images(&["img:1"]));
    assert_eq!(
        kinds(&steps),
        [
            "stop:web",
            "remove:web",
            "fetch-image:",
            "create:",
            "start:web"
        ]
    );
    assert_eq!(deps(&steps, 2), ["remove:web"]);
    let mut gone = cur.clone();
    gone.containers.clear();
    let steps = plan(&gone, &t2, &ctx_with_images(&["img:1"]));
    assert_eq!(kinds(&steps), ["fetch-image:", "create:", "start:web"]);
}

#[test]
fn delete_then_download_removes_the_old_image_too() {
    let mut s2 = svc("img:2");
    s2.labels.insert(
        labels::UPDATE_STRATEGY.into(),
        "delete-then-download".into(),
    );
    let t1 = target("r1", &[("web", svc("img:1"))]);
    let t2 = target("r2", &[("web", s2)]);
    let steps = plan(&converged(&t1), &t2, &ctx_with_images(&["img:1"]));
    assert_eq!(
        kinds(&steps),
        [
            "stop:web",
            "remove:web",
            "remove-image:",
            "fetch-image:",
            "create:",
            "start:web"
        ]
    );
    assert_eq!(deps(&steps, 3), ["remove-image:", "remove:web"]);
    assert!(steps.contains(&Step::RemoveImage {
        image: "img:1".into()
    }));
}

#[test]
fn hand_over_starts_new_beside_old_and_kills_old_after_signal_or_timeout() {
    let mut s2 = svc("img:2");
    s2.labels
        .insert(labels::UPDATE_STRATEGY.into(), "hand-over".into());
    s2.labels
        .insert(labels::HANDOVER_TIMEOUT.into(), "30".into());
    let t1 = target("r1", &[("web", svc("img:1"))]);
    let t2 = target("r2", &[("web", s2)]);
    let mut cur = converged(&t1);
    let ctx = ctx_with_images(&["img:1", "img:2"]);
    assert_eq!(kinds(&plan(&cur, &t2, &ctx)), ["create:", "start:web"]);
    let mut new = converged(&t2).containers.remove(0);
    new.id = "new".into();
    new.state = RunState::Created;
    new.created = 990;
    cur.containers.push(new);
    // Started while the old one still runs.
    assert_eq!(kinds(&plan(&cur, &t2, &ctx)), ["start:web"]);
    cur.containers[1].state = RunState::Running;
    // Running for 10 s of a 30 s timeout, no signal: wait.
    assert_eq!(kinds(&plan(&cur, &t2, &ctx)), ["wait-for-handover:web"]);
    // Signalled: kill and remove the old one.
    let mut signalled = ctx.clone();
    signalled
        .handover_signalled
        .insert((APP.into(), "web".into()));
    assert_eq!(
        kinds(&plan(&cur, &t2, &signalled)),
        ["kill:web", "remove:web"]
    );
    // Or the timeout passed.
    let mut later = ctx.clone();
    later.now = 1020;
    assert_eq!(kinds(&plan(&cur, &t2, &later)), ["kill:web", "remove:web"]);
}

#[test]
fn update_lock_blocks_stop_and_force_overrides_it() {
    let t1 = target("r1", &[("web", svc("img:1"))]);
    let t2 = target("r2", &[("web", svc("img:2"))]);
    let mut cur = converged(&t1);
    let mut new = converged(&t2).containers.remove(0);
    new.id = "new".into();
    new.state = RunState::Created;
    cur.containers.push(new);
    let mut ctx = ctx_with_images(&["img:1", "img:2"]);
    ctx.locks_held.insert((APP.into(), "web".into()));
    let steps = plan(&cur, &t2, &ctx);
    assert_eq!(
        steps.steps,
        vec![Step::WaitForLock {
            app_uuid: APP.into(),
            service: "web".into()
        }]
    );
    assert!(only_waiting(&steps));
    ctx.force = true;
    assert_eq!(
        kinds(&plan(&cur, &t2, &ctx)),
        ["stop:web", "start:web", "remove:web"]
    );
}

#[test]
fn lock_blocks_kill_then_download_and_removal_of_an_unwanted_service() {
    let mut s2 = svc("img:2");
    s2.labels
        .insert(labels::UPDATE_STRATEGY.into(), "kill-then-download".into());
    let t1 = target("r1", &[("web", svc("img:1")), ("old", svc("img:1"))]);
    let t2 = target("r2", &[("web", s2)]);
    let mut ctx = ctx_with_images(&["img:1"]);
    ctx.locks_held.insert((APP.into(), "web".into()));
    ctx.locks_held.insert((APP.into(), "old".into()));
    let steps = plan(&converged(&t1), &t2, &ctx);
    assert_eq!(kinds(&steps), ["wait-for-lock:web", "wait-for-lock:old"]);
}

#[test]
fn env_layers_merge_fleet_then_device_then_service() {
    let mut s = svc("img:1");
    s.environment.insert("A".into(), "service".into());
    let mut t = target("r1", &[("web", s)]);
    t.get_mut(APP).unwrap().env = EnvLayers {
        fleet: BTreeMap::from([
            ("A".into(), "fleet".into()),
            ("B".into(), "fleet".into()),
            ("C".into(), "fleet".into()),
        ]),
        device: BTreeMap::from([("A".into(), "device".into()), ("B".into(), "device".into())]),
    };
    let spec = &target_specs("dev", &t)[0];
    assert_eq!(spec.env["A"], "service");
    assert_eq!(spec.env["B"], "device");
    assert_eq!(spec.env["C"], "fleet");
    assert_eq!(spec.env["RESIN_SERVICE_NAME"], "web");
}

#[test]
fn env_change_of_one_service_restarts_only_that_service() {
    let t1 = target("r1", &[("web", svc("img:1")), ("db", svc("img:2"))]);
    let mut web = svc("img:1");
    web.environment.insert("MODE".into(), "fast".into());
    let t2 = target("r1", &[("web", web), ("db", svc("img:2"))]);
    let steps = plan(&converged(&t1), &t2, &ctx_with_images(&["img:1", "img:2"]));
    let Some(Step::Create { spec }) = steps.first() else {
        panic!("{steps:?}")
    };
    assert_eq!(spec.service, "web");
    assert_eq!(
        kinds(&steps),
        ["create:", "stop:web", "start:web", "remove:web"]
    );
}

#[test]
fn fleet_env_change_restarts_every_service() {
    let t1 = target("r1", &[("web", svc("img:1")), ("db", svc("img:2"))]);
    let mut t2 = t1.clone();
    t2.get_mut(APP)
        .unwrap()
        .env
        .fleet
        .insert("X".into(), "1".into());
    let steps = plan(&converged(&t1), &t2, &ctx_with_images(&["img:1", "img:2"]));
    assert_eq!(kinds(&steps).iter().filter(|k| *k == "create:").count(), 2);
}

#[test]
fn unmanaged_containers_are_never_touched() {
    let t = target("r1", &[("web", svc("img:1"))]);
    let mut cur = converged(&t);
    let mut foreign = cur.containers[0].clone();
    foreign.id = "theirs".into();
    foreign.managed = false;
    foreign.service = "other".into();
    cur.containers.push(foreign);
    assert!(plan(&cur, &t, &ctx_with_images(&["img:1"])).is_empty());
    // Even with an empty target, only our own container goes.
    let steps = plan(&cur, &TargetApps::new(), &ctx_with_images(&["img:1"]));
    assert!(steps
        .iter()
        .all(|s| !serde_json::to_string(s).unwrap().contains("theirs")));
    assert_eq!(kinds(&steps), ["stop:web", "remove:web"]);
}

#[test]
fn removed_app_loses_containers_then_network() {
    let t = target("r1", &[("web", svc("img:1"))]);
    let cur = converged(&t);
    let empty = TargetApps::new();
    assert_eq!(
        kinds(&plan(&cur, &empty, &ctx_with_images(&["img:1"]))),
        ["stop:web", "remove:web"]
    );
    let mut gone = cur.clone();
    gone.containers.clear();
    assert_eq!(
        plan(&gone, &empty, &ctx_with_images(&["img:1"])).steps,
        vec![Step::RemoveNetwork {
            name: "app1_default".into()
        }]
    );
}

#[test]
fn unused_managed_image_is_removed_only_when_all_else_is_done() {
    let t = target("r1", &[("web", svc("img:2"))]);
    let mut ctx = ctx_with_images(&["img:1", "img:2", "user-image:1"]);
    ctx.managed_images = ["img:1".to_owned(), "img:2".to_owned()].into();
    assert_eq!(
        plan(&converged(&t), &t, &ctx).steps,
        vec![Step::RemoveImage {
            image: "img:1".into()
        }]
    );
    // While an update is pending, the image stays.
    let t3 = target("r3", &[("web", svc("img:3"))]);
    let steps = plan(&converged(&t), &t3, &ctx);
    assert!(!steps.iter().any(|s| matches!(s, Step::RemoveImage { .. })));
}

#[test]
fn stopped_container_of_current_release_is_left_stopped() {
    // A service stopped through the local API stays stopped.
    let t = target("r1", &[("web", svc("img:1"))]);
    let mut cur = converged(&t);
    cur.containers[0].state = RunState::Stopped;
    assert!(plan(&cur, &t, &ctx_with_images(&["img:1"])).is_empty());
}

#[test]
fn crash_leftovers_converge_to_one_container() {
    // A crash between create and remove left two containers of one service.
    let t1 = target("r1", &[("web", svc("img:1"))]);
    let t2 = target("r2", &[("web", svc("img:2"))]);
    let mut cur = converged(&t1);
    cur.containers[0].state = RunState::Stopped;
    let mut new = converged(&t2).containers.remove(0);
    new.state = RunState::Running;
    cur.containers.push(new);
    let steps = plan(&cur, &t2, &ctx_with_images(&["img:1", "img:2"]));
    assert_eq!(kinds(&steps), ["remove:web"]);
}

#[test]
fn a_siblings_missing_image_holds_back_only_its_own_chain() {
    let t1 = target("r1", &[("a", svc("img:1")), ("b", svc("img:1"))]);
    let mut a2 = svc("img:1");
    a2.environment.insert("V".into(), "2".into());
    let t2 = target("r2", &[("a", a2), ("b", svc("img:404"))]);
    let steps = plan(&converged(&t1), &t2, &ctx_with_images(&["img:1"]));
    let fetch = index(&steps, "fetch-image:");
    let mut failed = vec![false; steps.len()];
    failed[fetch] = true;
    let blocked = steps.blocked_by(&failed);
    let held: Vec<String> = kinds(&steps)
        .into_iter()
        .zip(blocked)
        .filter_map(|(k, b)| b.then_some(k))
        .collect();
    // b's chain waits for the image; a's runs to its end.
    assert_eq!(
        held,
        ["fetch-image:", "create:", "stop:b", "start:b", "remove:b"]
    );
}

#[test]
fn a_release_that_does_not_change_a_service_keeps_its_container() {
    let t1 = target("r1", &[("web", svc("img:1")), ("db", svc("img:2"))]);
    let t2 = target("r2", &[("web", svc("img:1")), ("db", svc("img:3"))]);
    let mut cur = converged(&t1);
    let steps = plan(&cur, &t2, &ctx_with_images(&["img:1", "img:2", "img:3"]));
    assert!(
        steps.iter().all(|s| s.service_key() != Some((APP, "web"))),
        "{:?}",
        kinds(&steps)
    );
    // The supervisor's view puts the kept container in the new release.
    adopt_releases(&mut cur, &target_specs("dev", &t2));
    let web = cur.containers.iter().find(|c| c.service == "web").unwrap();
    let db = cur.containers.iter().find(|c| c.service == "db").unwrap();
    assert_eq!(
        (web.release_uuid.as_str(), db.release_uuid.as_str()),
        ("r2", "r1")
    );
}

#[test]
fn reordered_ports_volumes_and_devices_keep_the_config_hash() {
    let mut a = svc("img:1");
    a.ports = vec!["80:80".into(), "443:443".into()];
    a.volumes = vec!["data:/data".into(), "/host:/host".into()];
    a.cap_add = vec!["NET_ADMIN".into(), "SYS_TIME".into()];
    a.networks = vec!["front".into(), "back".into()];
    let mut b = a.clone();
    b.ports.reverse();
    b.volumes.reverse();
    b.cap_add.reverse();
    b.networks.reverse();
    let ha = &target_specs("dev", &target("r1", &[("web", a.clone())]))[0];
    let hb = &target_specs("dev", &target("r1", &[("web", b)]))[0];
    assert_eq!(ha.config_hash, hb.config_hash);
    // A real change still changes it.
    a.ports.push("8080:8080".into());
    let hc = &target_specs("dev", &target("r1", &[("web", a)]))[0];
    assert_ne!(ha.config_hash, hc.config_hash);
}

#[test]
fn a_dead_container_is_replaced() {
    let t = target("r1", &[("web", svc("img:1"))]);
    let mut cur = converged(&t);
    cur.containers[0].state = RunState::Dead;
    let steps = plan(&cur, &t, &ctx_with_images(&["img:1"]));
    // Removed first: the replacement takes its name.
    assert_eq!(kinds(&steps), ["remove:web", "create:", "start:web"]);
    assert_eq!(deps(&steps, 1), ["remove:web"]);
}

#[test]
fn an_app_lock_holds_every_service_of_the_app() {
    let t1 = target("r1", &[("web", svc("img:1")), ("db", svc("img:1"))]);
    let t2 = target("r2", &[("web", svc("img:2")), ("db", svc("img:2"))]);
    let mut ctx = ctx_with_images(&["img:1", "img:2"]);
    ctx.app_locks_held.insert(APP.into());
    let steps = plan(&converged(&t1), &t2, &ctx);
    // The new containers are made, nothing old is stopped.
    assert_eq!(
        kinds(&steps),
        [
            "create:",
            "wait-for-lock:db",
            "create:",
            "wait-for-lock:web"
        ]
    );
    ctx.force = true;
    let steps = plan(&converged(&t1), &t2, &ctx);
    assert!(kinds(&steps).contains(&"stop:web".to_owned()));
}

#[test]
fn depends_on_starts_dependencies_first_and_stops_them_last() {
    let mut web = svc("img:1");
    web.depends_on = vec!["db".into()];
    let t1 = target("r1", &[("web", web.clone()), ("db", svc("img:1"))]);
    // Fresh: web's start waits for db's.
    let steps = plan(&CurrentState::default(), &t1, &ctx_with_images(&["img:1"]));
    let start_web = index(&steps, "start:web");
    assert!(
        deps(&steps, start_web).contains(&"start:db".to_owned()),
        "{:?}",
        deps(&steps, start_web)
    );
    assert!(!deps(&steps, index(&steps, "start:db")).contains(&"start:web".to_owned()));
    // Both change: web stops before db, db starts before web.
    let mut web2 = web.clone();
    web2.environment.insert("V".into(), "2".into());
    let mut db2 = svc("img:1");
    db2.environment.insert("V".into(), "2".into());
    let t2 = target("r2", &[("web", web2), ("db", db2)]);
    let steps = plan(&converged(&t1), &t2, &ctx_with_images(&["img:1"]));
    assert!(deps(&steps, index(&steps, "stop:db")).contains(&"stop:web".to_owned()));
    assert!(deps(&steps, index(&steps, "start:web")).contains(&"start:db".to_owned()));
    // depends_on is not part of the config: dropping it restarts nothing.
    let t3 = target("r3", &[("web", svc("img:1")), ("db", svc("img:1"))]);
    assert!(plan(&converged(&t1), &t3, &ctx_with_images(&["img:1"])).is_empty());
}

#[test]
fn a_depends_on_cycle_or_unknown_service_is_planned_without_order() {
    let mut a = svc("img:1");
    a.depends_on = vec!["b".into()];
    let mut b = svc("img:1");
    b.depends_on = vec!["a".into()];
    let t = target("r1", &[("a", a.clone()), ("b", b)]);
    let steps = plan(&CurrentState::default(), &t, &ctx_with_images(&["img:1"]));
    assert_eq!(deps(&steps, index(&steps, "start:a")), ["create:"]);
    assert_eq!(deps(&steps, index(&steps, "start:b")), ["create:"]);
    a.depends_on = vec!["nope".into()];
    let t = target("r1", &[("a", a)]);
    let steps = plan(&CurrentState::default(), &t, &ctx_with_images(&["img:1"]));
    assert_eq!(deps(&steps, index(&steps, "start:a")), ["create:"]);
}

#[test]
fn network_mode_service_joins_that_services_container_and_follows_it() {
    let mut web = svc("img:1");
    web.network_mode = Some("service:db".into());
    let t1 = target("r1", &[("web", web.clone()), ("db", svc("img:1"))]);
    let specs = target_specs("dev", &t1);
    let db_name = specs
        .iter()
        .find(|s| s.service == "db")
        .unwrap()
        .name
        .clone();
    // Fresh: web joins the db container this plan creates, after it starts.
    let steps = plan(&CurrentState::default(), &t1, &ctx_with_images(&["img:1"]));
    let web_spec = steps
        .iter()
        .find_map(|s| match s {
            Step::Create { spec } if spec.service == "web" => Some(spec.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        web_spec.network_mode.as_deref(),
        Some(format!("container:{db_name}").as_str())
    );
    assert!(deps(&steps, index(&steps, "start:web")).contains(&"start:db".to_owned()));
    // A new db (env change) gives web a new config hash too.
    let mut db2 = svc("img:1");
    db2.environment.insert("V".into(), "2".into());
    let t2 = target("r2", &[("web", web), ("db", db2)]);
    let h1 = &target_specs("dev", &t1);
    let h2 = &target_specs("dev", &t2);
    let web_hash = |v: &[crate::spec::ServiceSpec]| {
        v.iter()
            .find(|s| s.service == "web")
            .unwrap()
            .config_hash
            .clone()
    };
    assert_ne!(web_hash(h1), web_hash(h2));
    // Converged: nothing to do (the hash the container carries is the one
    // the spec computes).
    assert!(plan(&converged(&t1), &t1, &ctx_with_images(&["img:1"])).is_empty());
}

#[test]
fn a_network_the_release_drops_is_removed_after_the_containers_on_it() {
    let mut s1 = svc("img:1");
    s1.networks = vec!["front".into()];
    let mut s2 = svc("img:1");
    s2.networks = vec!["back".into()];
    let t1 = target("r1", &[("web", s1)]);
    let t2 = target("r2", &[("web", s2)]);
    let steps = plan(&converged(&t1), &t2, &ctx_with_images(&["img:1"]));
    let rm = steps
        .iter()
        .position(|s| matches!(s, Step::RemoveNetwork { name } if name == "app1_front"))
        .unwrap_or_else(|| panic!("{:?}", kinds(&steps)));
    assert_eq!(deps(&steps, rm), ["remove:web"]);
    // Kept while a lock holds the old container on it.
    let mut ctx = ctx_with_images(&["img:1"]);
    ctx.locks_held.insert((APP.into(), "web".into()));
    let steps = plan(&converged(&t1), &t2, &ctx);
    assert!(!steps
        .iter()
        .any(|s| matches!(s, Step::RemoveNetwork { .. })));
}

/// `web` and `db` mount volume `data`, `side` does not; `db` depends on
/// nothing, `web` on `db`.
fn with_volume(labels: &[(&str, &str)]) -> TargetApps {
    let mut web = svc("img:1");
    web.volumes = vec!["data:/data".into()];
    web.depends_on = vec!["db".into()];
    let mut db = svc("img:2");
    db.volumes = vec!["data:/db".into()];
    let mut t = target("r1", &[("web", web), ("db", db), ("side", svc("img:3"))]);
    let rel = t.get_mut(APP).unwrap().releases.get_mut("r1").unwrap();
    rel.volumes.insert(
        "data".into(),
        VolumeTarget {
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            ..Default::default()
        },
    );
    t
}

#[test]
fn a_volume_whose_labels_changed_is_recreated_with_only_its_users() {
    let images = ctx_with_images(&["img:1", "img:2", "img:3"]);
    let t1 = with_volume(&[("v", "1")]);
    let cur = converged(&t1);
    // The engine reports the default driver by name: still converged.
    let mut named = cur.clone();
    named.volumes[0].driver = Some("local".into());
    assert!(plan(&named, &t1, &images).is_empty());

    let t2 = with_volume(&[("v", "2")]);
    let p = plan(&cur, &t2, &images);
    assert_eq!(
        kinds(&p),
        [
            "stop:db",
            "remove:db",
            "stop:web",
            "remove:web",
            "remove-volume:",
            "create-volume:"
        ],
        "side is untouched, and nothing is created before the next round"
    );
    // Reverse depends_on: web (which depends on db) stops first.
    assert!(deps(&p, index(&p, "stop:db")).contains(&"stop:web".to_owned()));
    assert_eq!(
        deps(&p, index(&p, "remove-volume:")),
        ["remove:db", "remove:web"]
    );
    assert_eq!(deps(&p, index(&p, "create-volume:")), ["remove-volume:"]);
    let Step::CreateVolume { config, .. } = &p.steps[index(&p, "create-volume:")] else {
        unreachable!()
    };
    assert_eq!(config.labels["v"], "2");

    // Driver options count too.
    let mut t3 = with_volume(&[("v", "1")]);
    let rel = t3.get_mut(APP).unwrap().releases.get_mut("r1").unwrap();
    rel.volumes
        .get_mut("data")
        .unwrap()
        .driver_opts
        .insert("type".into(), "tmpfs".into());
    assert!(kinds(&plan(&cur, &t3, &images)).contains(&"remove-volume:".to_owned()));
}

#[test]
fn an_update_lock_holds_a_volume_recreation() {
    let t1 = with_volume(&[("v", "1")]);
    let cur = converged(&t1);
    let mut ctx = ctx_with_images(&["img:1", "img:2", "img:3"]);
    ctx.locks_held.insert((APP.into(), "db".into()));
    let p = plan(&cur, &with_volume(&[("v", "2")]), &ctx);
    assert_eq!(kinds(&p), ["wait-for-lock:db"]);
}

#[test]
fn a_changed_network_driver_recreates_the_network_and_its_users() {
    let mut web = svc("img:1");
    web.networks = vec!["backend".into()];
    let mut follower = svc("img:2");
    follower.network_mode = Some("service:web".into());
    let mut t = target(
        "r1",
        &[("web", web), ("f", follower), ("other", svc("img:3"))],
    );
    let rel = t.get_mut(APP).unwrap().releases.get_mut("r1").unwrap();
    rel.networks
        .insert("backend".into(), resin_api_types::NetworkTarget::default());
    let cur = converged(&t);
    let rel = t.get_mut(APP).unwrap().releases.get_mut("r1").unwrap();
    rel.networks.get_mut("backend").unwrap().driver = Some("macvlan".into());
    let p = plan(&cur, &t, &ctx_with_images(&["img:1", "img:2", "img:3"]));
    let k = kinds(&p);
    assert!(k.contains(&"remove:web".to_owned()), "{k:?}");
    assert!(
        k.contains(&"remove:f".to_owned()),
        "the follower goes too: {k:?}"
    );
    assert!(!k.iter().any(|s| s.ends_with(":other")), "{k:?}");
    let Step::CreateNetwork { config, .. } = &p.steps[index(&p, "create-network:")] else {
        unreachable!()
    };
    assert_eq!(config.driver.as_deref(), Some("macvlan"));
}

#[test]
fn dropped_volumes_and_those_of_removed_apps_go_only_when_asked() {
    let images = ctx_with_images(&["img:1", "img:2", "img:3"]);
    let t1 = with_volume(&[]);
    let cur = converged(&t1);
    // r2 drops the volume from web, db and the release.
    let t2 = target(
        "r2",
        &[
            ("web", svc("img:1")),
            ("db", svc("img:2")),
            ("side", svc("img:3")),
        ],
    );
    let p = plan(&cur, &t2, &images);
    assert!(
        !kinds(&p).contains(&"remove-volume:".to_owned()),
        "off by default"
    );
    let mut ctx = images.clone();
    ctx.remove_volumes = true;
    let p = plan(&cur, &t2, &ctx);
    let i = index(&p, "remove-volume:");
    assert_eq!(deps(&p, i), ["remove:db", "remove:web"]);

    // The app removed: its volume goes once its containers are.
    let p = plan(&cur, &TargetApps::new(), &ctx);
    let i = index(&p, "remove-volume:");
    assert_eq!(deps(&p, i), ["remove:db", "remove:web"]);
    let p = plan(&cur, &TargetApps::new(), &images);
    assert!(!kinds(&p).contains(&"remove-volume:".to_owned()));
    // Nothing mounts it any more: removed right away.
    let mut gone = cur.clone();
    gone.containers.clear();
    let p = plan(&gone, &TargetApps::new(), &ctx);
    assert!(kinds(&p).contains(&"remove-volume:".to_owned()));
}

#[test]
fn run_order_takes_every_create_before_a_first_start_and_ends_outages_first() {
    // Ten new services, images present: the executor runs 8 steps at once.
    // Every create goes before any start, so the ninth and tenth service's
    // creates are not queued behind the first eight starts.
    let services: Vec<(String, ServiceTarget)> =
        (0..10).map(|i| (format!("s{i}"), svc("img:1"))).collect();
    let named: Vec<(&str, ServiceTarget)> = services
        .iter()
        .map(|(n, s)| (n.as_str(), s.clone()))
        .collect();
    let t = target("r1", &named);
    let mut cur = CurrentState::default();
    cur.networks.push(AppObject {
        name: "app1_default".into(),
        app_uuid: APP.into(),
        ..Default::default()
    });
    let steps = plan(&cur, &t, &ctx_with_images(&["img:1"]));
    let order: Vec<String> = {
        let k = kinds(&steps);
        steps.run_order().iter().map(|&i| k[i].clone()).collect()
    };
    let last_create = order.iter().rposition(|k| k == "create:").unwrap();
    let first_start = order.iter().position(|k| k.starts_with("start:")).unwrap();
    assert!(last_create < first_start, "{order:?}");
    assert_eq!(order.len(), 20);

    // A hand-over beside a new service: the handed-over service's start
    // (its outage began with the stop) goes before the new one's create.
    let t1 = target("r1", &[("web", svc("img:1"))]);
    let mut cur = converged(&t1);
    let t2 = target("r2", &[("web", svc("img:2")), ("api", svc("img:2"))]);
    let mut new = converged(&target("r2", &[("web", svc("img:2"))]))
        .containers
        .remove(0);
    new.id = "new".into();
    new.state = RunState::Created;
    cur.containers.push(new);
    let steps = plan(&cur, &t2, &ctx_with_images(&["img:1", "img:2"]));
    let k = kinds(&steps);
    let order: Vec<String> = steps.run_order().iter().map(|&i| k[i].clone()).collect();
    assert_eq!(order[0], "start:web", "{order:?}");
}
