//! Networks and volumes: their compose config, recreation when it changed,
//! and removal of the volumes no release uses (under the setting).

use std::collections::BTreeSet;

use resin_api_types::AppTarget;

use super::model::{Container, CurrentState, ObjectConfig, PlanContext, TargetApps};
use super::steps::{stop_then_remove, wait_for_lock, Plan, Step};
use crate::spec::ServiceSpec;

/// The scoped name's compose name: `<app>_data` → `data`.
pub(super) fn short_name<'a>(app: &str, scoped: &'a str) -> &'a str {
    scoped
        .strip_prefix(app)
        .and_then(|s| s.strip_prefix('_'))
        .unwrap_or(scoped)
}

/// The config a network of `app` is created with (its release's
/// top-level `networks` entry; the default network has none).
pub(super) fn network_config(
    app_target: Option<&AppTarget>,
    app: &str,
    name: &str,
) -> ObjectConfig {
    app_target
        .and_then(|a| a.releases.values().next())
        .and_then(|r| r.networks.get(short_name(app, name)))
        .map(|n| ObjectConfig {
            driver: n.driver.clone(),
            options: n.driver_opts.clone(),
            labels: n.labels.clone(),
        })
        .unwrap_or_default()
}

/// The config a volume of `app` is created with.
pub(super) fn volume_config(app_target: Option<&AppTarget>, app: &str, name: &str) -> ObjectConfig {
    app_target
        .and_then(|a| a.releases.values().next())
        .and_then(|r| r.volumes.get(short_name(app, name)))
        .map(|v| ObjectConfig {
            driver: v.driver.clone(),
            options: v.driver_opts.clone(),
            labels: v.labels.clone(),
        })
        .unwrap_or_default()
}

/// The engine's default drivers.
pub(super) const DEFAULT_NETWORK_DRIVER: &str = "bridge";
pub(super) const DEFAULT_VOLUME_DRIVER: &str = "local";

/// What [`recreate_changed_objects`] planned.
#[derive(Default)]
pub(super) struct ObjectPlan<'a> {
    /// Services planned no further this round: their containers go with a
    /// recreated object, and the next round creates them again.
    pub(super) busy: BTreeSet<(&'a str, &'a str)>,
}

/// Networks and volumes whose driver, driver options or labels differ from
/// the target: the containers using them are stopped (in reverse
/// `depends_on` order) and removed, then the object is removed and created
/// again. The next round creates the containers, in `depends_on` order.
/// An update lock on any user holds the whole recreation.
pub(super) fn recreate_changed_objects<'a>(
    p: &mut Plan,
    current: &'a CurrentState,
    target: &TargetApps,
    specs: &'a [ServiceSpec],
    locked: &dyn Fn(&str, &str) -> bool,
) -> ObjectPlan<'a> {
    let mut out = ObjectPlan::default();
    let managed: Vec<&Container> = current.containers.iter().filter(|c| c.managed).collect();
    let changed = current
        .networks
        .iter()
        .map(|o| (o, true))
        .chain(current.volumes.iter().map(|o| (o, false)));
    for (obj, is_network) in changed {
        let app = obj.app_uuid.as_str();
        let used = specs.iter().any(|s| {
            s.app_uuid == app
                && if is_network {
                    s.networks.contains(&obj.name)
                } else {
                    s.volumes.contains(&obj.name)
                }
        });
        if !used {
            continue;
        }
        let app_target = target.get(app);
        let (want, default) = if is_network {
            (
                network_config(app_target, app, &obj.name),
                DEFAULT_NETWORK_DRIVER,
            )
        } else {
            (
                volume_config(app_target, app, &obj.name),
                DEFAULT_VOLUME_DRIVER,
            )
        };
        if want.matches(obj, default) {
            continue;
        }
        // Who uses it now, and who will: their containers go.
        let mut services: BTreeSet<&str> = managed
            .iter()
            .filter(|c| {
                c.app_uuid == app
                    && if is_network {
                        c.networks.contains(&obj.name)
                    } else {
                        c.volumes.contains(&obj.name)
                    }
            })
            .map(|c| c.service.as_str())
            .collect();
        services.extend(
            specs
                .iter()
                .filter(|s| {
                    s.app_uuid == app
                        && if is_network {
                            s.networks.contains(&obj.name)
                        } else {
                            s.volumes.contains(&obj.name)
                        }
                })
                .map(|s| s.service.as_str()),
        );
        // `network_mode: service:X` follows X's network namespace.
        if is_network {
            let followers: Vec<&str> = specs
                .iter()
                .filter(|s| {
                    s.app_uuid == app && s.network_service().is_some_and(|x| services.contains(x))
                })
                .map(|s| s.service.as_str())
                .collect();
            services.extend(followers);
        }
        let held: Vec<&str> = services
            .iter()
            .copied()
            .filter(|svc| locked(app, svc))
            .collect();
        for svc in &services {
            out.busy.insert((app, svc));
        }
        if !held.is_empty() {
            for svc in held {
                wait_for_lock(p, app, svc, &[]);
            }
            continue;
        }
        let removes: Vec<usize> = managed
            .iter()
            .filter(|c| c.app_uuid == app && services.contains(c.service.as_str()))
            .map(|c| stop_then_remove(p, c, &[]))
            .collect();
        let (remove, create) = if is_network {
            (
                Step::RemoveNetwork {
                    name: obj.name.clone(),
                },
                Step::CreateNetwork {
                    name: obj.name.clone(),
                    app_uuid: app.into(),
                    config: want,
                },
            )
        } else {
            (
                Step::RemoveVolume {
                    name: obj.name.clone(),
                },
                Step::CreateVolume {
                    name: obj.name.clone(),
                    app_uuid: app.into(),
                    config: want,
                },
            )
        };
        let r = p.add(remove, &removes);
        p.add(create, &[r]);
    }
    out
}

/// With `remove_volumes`: a volume no release of its app uses any more
/// (neither a service's mount nor a top-level `volumes` entry), and every
/// volume of a removed app, once the containers that mount it are removed.
pub(super) fn remove_unused_volumes(
    p: &mut Plan,
    current: &CurrentState,
    target: &TargetApps,
    specs: &[ServiceSpec],
    ctx: &PlanContext,
) {
    if !ctx.remove_volumes {
        return;
    }
    for v in &current.volumes {
        let app = v.app_uuid.as_str();
        let app_wanted = specs.iter().any(|s| s.app_uuid == app);
        if app_wanted {
            let in_release = target
                .get(app)
                .and_then(|a| a.releases.values().next())
                .is_some_and(|r| r.volumes.contains_key(short_name(app, &v.name)));
            let mounted = specs
                .iter()
                .any(|s| s.app_uuid == app && s.volumes.contains(&v.name));
            if in_release || mounted {
                continue;
            }
        }
        // Every container that mounts it must be removed first, in this
        // plan; otherwise a later round removes the volume.
        let users: Vec<&Container> = current
            .containers
            .iter()
            .filter(|c| c.volumes.contains(&v.name))
            .collect();
        let mut after = Vec::new();
        let mut all_removed = true;
        for c in users {
            match p
                .steps
                .iter()
                .position(|s| matches!(s, Step::Remove { id, .. } if *id == c.id))
            {
                Some(i) => after.push(i),
                None => all_removed = false,
            }
        }
        if all_removed {
            p.add(
                Step::RemoveVolume {
                    name: v.name.clone(),
                },
                &after,
            );
        }
    }
}
