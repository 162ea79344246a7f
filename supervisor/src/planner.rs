//! The pure planner: from (current engine state, target apps, context) to a
//! [`Plan`]: the steps left to reach the target, each with the steps it
//! must wait for. No I/O; the executor runs the steps as far as their
//! dependencies allow, reads the engine again and asks for the next plan
//! until it is empty.
//!
//! A service's whole chain is in one plan (fetch image → create → stop old →
//! start new → remove old, in the order its update strategy gives), so one
//! service never waits for another's steps, and a failed step holds back
//! only the steps that depend on it.

//!
//! Rooms: [`model`] (the engine model and the context), [`steps`] (steps
//! and the plan), [`strategies`] (one small pure function per update
//! strategy), [`objects`] (networks and volumes), [`order`] (`depends_on`).

use std::collections::{BTreeMap, BTreeSet};

use resin_api_types::labels::{self, UpdateStrategy};

use crate::spec::ServiceSpec;

pub mod model;
mod objects;
mod order;
pub mod steps;
mod strategies;

pub use model::{
    adopt_releases, AppObject, Container, CurrentState, ObjectConfig, PlanContext, RunState,
    TargetApps,
};
pub use steps::{is_wait, only_waiting, Plan, Step};

use objects::{network_config, recreate_changed_objects, remove_unused_volumes, volume_config};
use order::order_by_depends_on;
use steps::{stop_then_remove, wait_for_lock};
/// The wanted services, one spec per (app, service), from the target apps.
pub fn target_specs(device_uuid: &str, target: &TargetApps) -> Vec<ServiceSpec> {
    let mut out = Vec::new();
    for (app_uuid, app) in target {
        // One release per app; more than one is a cloud bug: take the first.
        if let Some((release_uuid, release)) = app.releases.iter().next() {
            let mut specs: Vec<ServiceSpec> = release
                .services
                .iter()
                .map(|(name, svc)| {
                    ServiceSpec::build(device_uuid, app_uuid, app, release_uuid, name, svc)
                })
                .collect();
            // `network_mode: service:X` shares X's network namespace: the
            // service follows X's config (a new X means a new container for
            // it too) and starts after X.
            let hashes: BTreeMap<String, String> = specs
                .iter()
                .map(|s| (s.service.clone(), s.config_hash.clone()))
                .collect();
            for s in &mut specs {
                if let Some(x) = s.network_service().map(str::to_owned) {
                    if let Some(h) = hashes.get(&x).filter(|_| x != s.service) {
                        s.follow_network_service(&x, h);
                    }
                }
            }
            out.extend(specs);
        }
    }
    out
}

/// The engine's `network_mode` for a spec: `service:X` becomes
/// `container:<X's container>`, the one kept (config hash unchanged) or the
/// one this plan creates.
fn engine_network_mode(
    spec: &ServiceSpec,
    specs: &[ServiceSpec],
    managed: &[&Container],
) -> ServiceSpec {
    let mut spec = spec.clone();
    let Some(x) = spec.network_service().map(str::to_owned) else {
        return spec;
    };
    let Some(xs) = specs
        .iter()
        .find(|s| s.app_uuid == spec.app_uuid && s.service == x)
    else {
        return spec;
    };
    let name = managed
        .iter()
        .find(|c| {
            c.app_uuid == xs.app_uuid
                && c.service == xs.service
                && c.config_hash == xs.config_hash
                && c.state != RunState::Dead
        })
        .map_or(xs.name.clone(), |c| c.name.clone());
    spec.network_mode = Some(format!("container:{name}"));
    spec
}

/// Plans what is left. An empty plan means current equals target.
pub fn plan(current: &CurrentState, target: &TargetApps, ctx: &PlanContext) -> Plan {
    plan_specs(
        current,
        target,
        &target_specs(&ctx.device_uuid, target),
        ctx,
    )
}

/// [`plan`] with the target's specs already built ([`target_specs`]): the
/// executor builds them once per apply, not once per round.
pub fn plan_specs(
    current: &CurrentState,
    target: &TargetApps,
    specs: &[ServiceSpec],
    ctx: &PlanContext,
) -> Plan {
    let mut p = Plan::default();
    let managed: Vec<&Container> = current.containers.iter().filter(|c| c.managed).collect();
    let wanted: BTreeSet<(&str, &str)> = specs
        .iter()
        .map(|s| (s.app_uuid.as_str(), s.service.as_str()))
        .collect();
    let locked = |app: &str, svc: &str| {
        !ctx.force
            && (ctx.app_locks_held.contains(app)
                || ctx.locks_held.contains(&(app.to_owned(), svc.to_owned())))
    };
    let networks: BTreeSet<&str> = current.networks.iter().map(|n| n.name.as_str()).collect();
    let volumes: BTreeSet<&str> = current.volumes.iter().map(|n| n.name.as_str()).collect();
    let target_images: BTreeSet<&str> = specs.iter().map(|s| s.image.as_str()).collect();
    let objects = recreate_changed_objects(&mut p, current, target, specs, &locked);

    for spec in specs {
        let (app, svc) = (spec.app_uuid.as_str(), spec.service.as_str());
        let app_target = target.get(app);
        let mine: Vec<&Container> = managed
            .iter()
            .copied()
            .filter(|c| c.app_uuid == app && c.service == svc)
            .collect();
        // Identity is the config hash (image and effective config), not the
        // release: a service unchanged between releases keeps its container.
        let current_c = mine
            .iter()
            .copied()
            .filter(|c| c.config_hash == spec.config_hash && c.state != RunState::Dead)
            .max_by_key(|c| (c.state == RunState::Running, c.created));
        let old: Vec<&Container> = mine
            .iter()
            .copied()
            .filter(|c| current_c.is_none_or(|cur| cur.id != c.id))
            .collect();
        let strategy = UpdateStrategy::from_labels(&spec.labels);
        let image_ok = ctx.images_present.contains(&spec.image);

        // A service that uses a network or volume being recreated waits
        // for the next round (its containers are being removed with it).
        if objects.busy.contains(&(app, svc)) {
            continue;
        }
        // Networks and volumes the new container needs.
        let mut prerequisites = Vec::new();
        for n in &spec.networks {
            if !networks.contains(n.as_str()) {
                prerequisites.push(p.add(
                    Step::CreateNetwork {
                        name: n.clone(),
                        app_uuid: app.into(),
                        config: network_config(app_target, app, n),
                    },
                    &[],
                ));
            }
        }
        for v in &spec.volumes {
            if !volumes.contains(v.as_str()) {
                prerequisites.push(p.add(
                    Step::CreateVolume {
                        name: v.clone(),
                        app_uuid: app.into(),
                        config: volume_config(app_target, app, v),
                    },
                    &[],
                ));
            }
        }
        let start_step = |id: &str| Step::Start {
            id: id.into(),
            app_uuid: app.into(),
            service: svc.into(),
        };

        match current_c {
            Some(cur) => {
                let old_running = old.iter().any(|o| o.state == RunState::Running);
                let handover = strategy == UpdateStrategy::HandOver;
                let mut start_after = Vec::new();
                let mut may_start = true;
                // Old containers to remove once the new one started (or
                // right away when it needs no start).
                let mut remove_old: Vec<(&Container, Vec<usize>)> = Vec::new();
                if old.is_empty() || (handover && cur.state != RunState::Running) {
                    // Nothing to replace, or hand-over: the new one starts
                    // beside the old one.
                } else if handover && old_running {
                    let timeout = spec
                        .labels
                        .get(labels::HANDOVER_TIMEOUT)
                        .and_then(|t| t.parse::<i64>().ok())
                        .unwrap_or(60);
                    let ready = ctx.handover_signalled.contains(&(app.into(), svc.into()))
                        || ctx.now - cur.created >= timeout;
                    if !ready {
                        p.add(
                            Step::WaitForHandover {
                                app_uuid: app.into(),
                                service: svc.into(),
                            },
                            &[],
                        );
                    } else if locked(app, svc) {
                        wait_for_lock(&mut p, app, svc, &[]);
                    } else {
                        for o in &old {
                            let mut after = Vec::new();
                            if o.state == RunState::Running {
                                after.push(p.add(
                                    Step::Kill {
                                        id: o.id.clone(),
                                        app_uuid: app.into(),
                                        service: svc.into(),
                                    },
                                    &[],
                                ));
                            }
                            p.add(
                                Step::Remove {
                                    id: o.id.clone(),
                                    app_uuid: app.into(),
                                    service: svc.into(),
                                },
                                &after,
                            );
                        }
                    }
                } else if locked(app, svc) {
                    wait_for_lock(&mut p, app, svc, &[]);
                    may_start = !old_running;
                } else {
                    // Stop the old ones first; remove them once the new one
                    // runs, so a failed start leaves them in place.
                    for o in &old {
                        let mut after = Vec::new();
                        if o.state == RunState::Running {
                            let i = p.add(
                                Step::Stop {
                                    id: o.id.clone(),
                                    app_uuid: app.into(),
                                    service: svc.into(),
                                },
                                &[],
                            );
                            start_after.push(i);
                            after.push(i);
                        }
                        remove_old.push((o, after));
                    }
                }
                let start = (cur.state == RunState::Created && may_start)
                    .then(|| p.add(start_step(&cur.id), &start_after));
                for (o, mut after) in remove_old {
                    after.extend(start);
                    p.add(
                        Step::Remove {
                            id: o.id.clone(),
                            app_uuid: app.into(),
                            service: svc.into(),
                        },
                        &after,
                    );
                }
            }
            None => {
                // Dead containers go first: they never run again, and a
                // replacement of the same config would take their name.
                let dead: Vec<usize> = old
                    .iter()
                    .filter(|o| o.state == RunState::Dead)
                    .map(|o| stop_then_remove(&mut p, o, &[]))
                    .collect();
                let live_old: Vec<&Container> = old
                    .iter()
                    .copied()
                    .filter(|o| o.state != RunState::Dead)
                    .collect();
                // delete-then-download removes the old images no one else
                // uses and the target does not need.
                let old_images: Vec<String> = old
                    .iter()
                    .filter(|o| {
                        let used_elsewhere = managed
                            .iter()
                            .any(|c| c.image == o.image && !old.iter().any(|x| x.id == c.id));
                        o.image != spec.image
                            && !used_elsewhere
                            && !target_images.contains(o.image.as_str())
                            && ctx.images_present.contains(&o.image)
                    })
                    .map(|o| o.image.clone())
                    .collect();
                strategies::replace(
                    &mut p,
                    strategy,
                    strategies::Replacement {
                        app,
                        service: svc,
                        create: Step::Create {
                            spec: Box::new(engine_network_mode(spec, specs, &managed)),
                        },
                        start: start_step(&spec.name),
                        fetch: (!image_ok).then(|| Step::FetchImage {
                            image: spec.image.clone(),
                        }),
                        prerequisites,
                        dead,
                        old: live_old,
                        locked: locked(app, svc),
                        old_images,
                    },
                );
            }
        }
    }

    order_by_depends_on(&mut p, specs);

    // Containers of services (or apps) that are no longer wanted.
    for c in &managed {
        if wanted.contains(&(c.app_uuid.as_str(), c.service.as_str())) {
            continue;
        }
        if locked(&c.app_uuid, &c.service) {
            wait_for_lock(&mut p, &c.app_uuid, &c.service, &[]);
        } else {
            stop_then_remove(&mut p, c, &[]);
        }
    }

    // Networks a wanted app no longer uses: removed once the containers on
    // them are (a kept container has the spec's networks, which are in its
    // config hash). Not while a wait holds an old container of the app.
    for n in &current.networks {
        let in_app = |s: &&ServiceSpec| s.app_uuid == n.app_uuid;
        if !specs.iter().any(|s| in_app(&s))
            || specs
                .iter()
                .filter(in_app)
                .any(|s| s.networks.contains(&n.name))
        {
            continue;
        }
        let waiting = p
            .steps
            .iter()
            .any(|s| is_wait(s) && matches!(s.service_key(), Some((app, _)) if app == n.app_uuid));
        if waiting {
            continue;
        }
        let removes: Vec<usize> = p
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, Step::Remove { app_uuid, .. } if *app_uuid == n.app_uuid))
            .map(|(i, _)| i)
            .collect();
        p.add(
            Step::RemoveNetwork {
                name: n.name.clone(),
            },
            &removes,
        );
    }

    // Networks of removed apps, once their containers are gone.
    for n in &current.networks {
        let app_wanted = specs.iter().any(|s| s.app_uuid == n.app_uuid);
        let app_has_containers = managed.iter().any(|c| c.app_uuid == n.app_uuid);
        if !app_wanted && !app_has_containers {
            p.add(
                Step::RemoveNetwork {
                    name: n.name.clone(),
                },
                &[],
            );
        }
    }

    remove_unused_volumes(&mut p, current, target, specs, ctx);

    // Unused images, only once everything else is done.
    if p.steps.is_empty() {
        for image in &ctx.managed_images {
            let in_use =
                target_images.contains(image.as_str()) || managed.iter().any(|c| &c.image == image);
            if !in_use && ctx.images_present.contains(image) {
                p.add(
                    Step::RemoveImage {
                        image: image.clone(),
                    },
                    &[],
                );
            }
        }
    }
    p
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
