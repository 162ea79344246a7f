//! The pure planner: from (current engine state, target apps, context) to the
//! next round of steps. No I/O; the executor runs a round, reads the engine
//! again and asks for the next round until the plan is empty.
//!
//! Steps in one round never depend on each other except through their
//! [`Step::phase`]: the executor runs phase 0 before phase 1, and so on.

use std::collections::{BTreeMap, BTreeSet};

use resin_api_types::labels::{self, UpdateStrategy};
use resin_api_types::AppTarget;
use serde::Serialize;

use crate::spec::ServiceSpec;

/// Target apps by app uuid (the `apps` of a device's target state).
pub type TargetApps = BTreeMap<String, AppTarget>;

/// The state of a container as the engine reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Created,
    Running,
    /// Exited, dead, paused…: not running, not fresh.
    Stopped,
}

/// A container on the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Container {
    pub id: String,
    pub name: String,
    /// `io.resin.managed=1`; the planner never touches a container without it.
    pub managed: bool,
    pub app_uuid: String,
    pub service: String,
    pub release_uuid: String,
    pub config_hash: String,
    /// The image reference the container was created from.
    pub image: String,
    pub state: RunState,
    /// Creation time, seconds since the epoch.
    pub created: i64,
}

/// A network or volume the supervisor created.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct AppObject {
    pub name: String,
    pub app_uuid: String,
}

/// What the engine runs now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CurrentState {
    pub containers: Vec<Container>,
    /// Managed networks.
    pub networks: Vec<AppObject>,
    /// Managed volumes.
    pub volumes: Vec<AppObject>,
}

/// Facts beyond the engine's state that decide the plan.
#[derive(Debug, Clone, Default)]
pub struct PlanContext {
    pub device_uuid: String,
    /// (app uuid, service) pairs whose update lock file exists.
    pub locks_held: BTreeSet<(String, String)>,
    /// Override the update locks.
    pub force: bool,
    /// Image references present on the engine.
    pub images_present: BTreeSet<String>,
    /// Images the supervisor fetched; only these are ever removed.
    pub managed_images: BTreeSet<String>,
    /// (app uuid, service) pairs whose new container signalled hand-over.
    pub handover_signalled: BTreeSet<(String, String)>,
    /// Seconds since the epoch, for hand-over timeouts.
    pub now: i64,
}

/// One thing the executor does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    FetchImage {
        image: String,
    },
    CreateNetwork {
        name: String,
        app_uuid: String,
        driver: Option<String>,
    },
    CreateVolume {
        name: String,
        app_uuid: String,
        driver: Option<String>,
    },
    Create {
        spec: Box<ServiceSpec>,
    },
    Start {
        id: String,
        app_uuid: String,
        service: String,
    },
    Stop {
        id: String,
        app_uuid: String,
        service: String,
    },
    Kill {
        id: String,
        app_uuid: String,
        service: String,
    },
    Remove {
        id: String,
        app_uuid: String,
        service: String,
    },
    RemoveImage {
        image: String,
    },
    RemoveNetwork {
        name: String,
    },
    /// The service's update lock blocks the next step; nothing is done.
    WaitForLock {
        app_uuid: String,
        service: String,
    },
    /// Hand-over: the new container runs; the old one waits for the signal
    /// or the timeout.
    WaitForHandover {
        app_uuid: String,
        service: String,
    },
}

impl Step {
    /// Order inside a round: lower phases run first.
    pub fn phase(&self) -> u8 {
        match self {
            Step::WaitForLock { .. }
            | Step::WaitForHandover { .. }
            | Step::Stop { .. }
            | Step::Kill { .. } => 0,
            Step::Remove { .. } => 1,
            Step::RemoveImage { .. } | Step::RemoveNetwork { .. } => 2,
            Step::FetchImage { .. } | Step::CreateNetwork { .. } | Step::CreateVolume { .. } => 3,
            Step::Create { .. } => 4,
            Step::Start { .. } => 5,
        }
    }

    /// The (app uuid, service) this step acts on; `None` for steps on what
    /// services share (images, networks, volumes).
    pub fn service_key(&self) -> Option<(&str, &str)> {
        match self {
            Step::Create { spec } => Some((&spec.app_uuid, &spec.service)),
            Step::Start {
                app_uuid, service, ..
            }
            | Step::Stop {
                app_uuid, service, ..
            }
            | Step::Kill {
                app_uuid, service, ..
            }
            | Step::Remove {
                app_uuid, service, ..
            }
            | Step::WaitForLock { app_uuid, service }
            | Step::WaitForHandover { app_uuid, service } => Some((app_uuid, service)),
            Step::FetchImage { .. }
            | Step::CreateNetwork { .. }
            | Step::CreateVolume { .. }
            | Step::RemoveImage { .. }
            | Step::RemoveNetwork { .. } => None,
        }
    }

    /// A short human description, for logs and systemd's STATUS=.
    pub fn describe(&self) -> String {
        match self {
            Step::FetchImage { image } => format!("fetch image {image}"),
            Step::CreateNetwork { name, .. } => format!("create network {name}"),
            Step::CreateVolume { name, .. } => format!("create volume {name}"),
            Step::Create { spec } => format!("create {}/{}", spec.app_uuid, spec.service),
            Step::Start { service, .. } => format!("start {service}"),
            Step::Stop { service, .. } => format!("stop {service}"),
            Step::Kill { service, .. } => format!("kill {service}"),
            Step::Remove { service, .. } => format!("remove {service}"),
            Step::RemoveImage { image } => format!("remove image {image}"),
            Step::RemoveNetwork { name } => format!("remove network {name}"),
            Step::WaitForLock { app_uuid, service } => {
                format!("wait for update lock of {app_uuid}/{service}")
            }
            Step::WaitForHandover { app_uuid, service } => {
                format!("wait for hand-over of {app_uuid}/{service}")
            }
        }
    }
}

/// The wanted services, one spec per (app, service), from the target apps.
pub fn target_specs(device_uuid: &str, target: &TargetApps) -> Vec<ServiceSpec> {
    let mut out = Vec::new();
    for (app_uuid, app) in target {
        // One release per app; more than one is a cloud bug: take the first.
        if let Some((release_uuid, release)) = app.releases.iter().next() {
            for (name, svc) in &release.services {
                out.push(ServiceSpec::build(
                    device_uuid,
                    app_uuid,
                    app,
                    release_uuid,
                    name,
                    svc,
                ));
            }
        }
    }
    out
}

fn push_unique(steps: &mut Vec<Step>, step: Step) {
    if !steps.contains(&step) {
        steps.push(step);
    }
}

fn stop_or_remove(c: &Container) -> Vec<Step> {
    let (id, app_uuid, service) = (c.id.clone(), c.app_uuid.clone(), c.service.clone());
    match c.state {
        RunState::Running => vec![
            Step::Stop {
                id: id.clone(),
                app_uuid: app_uuid.clone(),
                service: service.clone(),
            },
            Step::Remove {
                id,
                app_uuid,
                service,
            },
        ],
        _ => vec![Step::Remove {
            id,
            app_uuid,
            service,
        }],
    }
}

/// Plans the next round. An empty plan means current equals target.
pub fn plan(current: &CurrentState, target: &TargetApps, ctx: &PlanContext) -> Vec<Step> {
    let mut steps = Vec::new();
    let specs = target_specs(&ctx.device_uuid, target);
    let managed: Vec<&Container> = current.containers.iter().filter(|c| c.managed).collect();
    let wanted: BTreeSet<(&str, &str)> = specs
        .iter()
        .map(|s| (s.app_uuid.as_str(), s.service.as_str()))
        .collect();
    let locked = |app: &str, svc: &str| {
        !ctx.force && ctx.locks_held.contains(&(app.to_owned(), svc.to_owned()))
    };
    let networks: BTreeSet<&str> = current.networks.iter().map(|n| n.name.as_str()).collect();
    let volumes: BTreeSet<&str> = current.volumes.iter().map(|n| n.name.as_str()).collect();
    let target_images: BTreeSet<&str> = specs.iter().map(|s| s.image.as_str()).collect();

    for spec in &specs {
        let (app, svc) = (spec.app_uuid.as_str(), spec.service.as_str());
        let app_target = target.get(app);
        let mine: Vec<&Container> = managed
            .iter()
            .copied()
            .filter(|c| c.app_uuid == app && c.service == svc)
            .collect();
        let is_current = |c: &Container| {
            c.release_uuid == spec.release_uuid && c.config_hash == spec.config_hash
        };
        let current_c = mine.iter().copied().find(|c| is_current(c));
        let old: Vec<&Container> = mine
            .iter()
            .copied()
            .filter(|c| current_c.is_none_or(|cur| cur.id != c.id))
            .collect();
        let strategy = UpdateStrategy::from_labels(&spec.labels);
        let image_ok = ctx.images_present.contains(&spec.image);

        // Networks and volumes the new container needs.
        let mut prerequisites_ok = true;
        for n in &spec.networks {
            if !networks.contains(n.as_str()) {
                prerequisites_ok = false;
                let driver = app_target.and_then(|a| {
                    let short = n.strip_prefix(&format!("{app}_")).unwrap_or(n);
                    a.releases
                        .values()
                        .next()?
                        .networks
                        .get(short)?
                        .driver
                        .clone()
                });
                push_unique(
                    &mut steps,
                    Step::CreateNetwork {
                        name: n.clone(),
                        app_uuid: app.into(),
                        driver,
                    },
                );
            }
        }
        for v in &spec.volumes {
            if !volumes.contains(v.as_str()) {
                prerequisites_ok = false;
                let driver = app_target.and_then(|a| {
                    let short = v.strip_prefix(&format!("{app}_")).unwrap_or(v);
                    a.releases
                        .values()
                        .next()?
                        .volumes
                        .get(short)?
                        .driver
                        .clone()
                });
                push_unique(
                    &mut steps,
                    Step::CreateVolume {
                        name: v.clone(),
                        app_uuid: app.into(),
                        driver,
                    },
                );
            }
        }
        let create = || Step::Create {
            spec: Box::new(spec.clone()),
        };

        match current_c {
            Some(cur) => {
                let old_running = old.iter().any(|o| o.state == RunState::Running);
                if !old.is_empty() {
                    if strategy == UpdateStrategy::HandOver && cur.state != RunState::Running {
                        // Hand-over: the new one starts beside the old one.
                    } else if strategy == UpdateStrategy::HandOver && old_running {
                        let timeout = spec
                            .labels
                            .get(labels::HANDOVER_TIMEOUT)
                            .and_then(|t| t.parse::<i64>().ok())
                            .unwrap_or(60);
                        let ready = ctx.handover_signalled.contains(&(app.into(), svc.into()))
                            || ctx.now - cur.created >= timeout;
                        if !ready {
                            steps.push(Step::WaitForHandover {
                                app_uuid: app.into(),
                                service: svc.into(),
                            });
                        } else {
                            if locked(app, svc) {
                                push_unique(
                                    &mut steps,
                                    Step::WaitForLock {
                                        app_uuid: app.into(),
                                        service: svc.into(),
                                    },
                                );
                            } else {
                                for o in &old {
                                    if o.state == RunState::Running {
                                        steps.push(Step::Kill {
                                            id: o.id.clone(),
                                            app_uuid: app.into(),
                                            service: svc.into(),
                                        });
                                    }
                                    steps.push(Step::Remove {
                                        id: o.id.clone(),
                                        app_uuid: app.into(),
                                        service: svc.into(),
                                    });
                                }
                            }
                        }
                    } else if locked(app, svc) {
                        push_unique(
                            &mut steps,
                            Step::WaitForLock {
                                app_uuid: app.into(),
                                service: svc.into(),
                            },
                        );
                    } else if old_running {
                        // Stop the old ones first; remove them once the new
                        // one runs, so a failed start leaves them in place.
                        for o in old.iter().filter(|o| o.state == RunState::Running) {
                            steps.push(Step::Stop {
                                id: o.id.clone(),
                                app_uuid: app.into(),
                                service: svc.into(),
                            });
                        }
                    } else if cur.state == RunState::Running {
                        for o in &old {
                            steps.extend(stop_or_remove(o));
                        }
                    }
                }
                // Start once the old ones are stopped (this round, if the
                // lock allows it); hand-over starts beside them.
                let may_start =
                    strategy == UpdateStrategy::HandOver || !old_running || !locked(app, svc);
                if cur.state == RunState::Created && may_start {
                    steps.push(Step::Start {
                        id: cur.id.clone(),
                        app_uuid: app.into(),
                        service: svc.into(),
                    });
                }
            }
            None if old.is_empty() => {
                if !image_ok {
                    push_unique(
                        &mut steps,
                        Step::FetchImage {
                            image: spec.image.clone(),
                        },
                    );
                } else if prerequisites_ok {
                    steps.push(create());
                }
            }
            None => match strategy {
                UpdateStrategy::DownloadThenKill | UpdateStrategy::HandOver => {
                    if !image_ok {
                        push_unique(
                            &mut steps,
                            Step::FetchImage {
                                image: spec.image.clone(),
                            },
                        );
                    } else if prerequisites_ok {
                        // The old ones keep running until the new one exists.
                        steps.push(create());
                    }
                }
                UpdateStrategy::KillThenDownload | UpdateStrategy::DeleteThenDownload => {
                    if locked(app, svc) {
                        push_unique(
                            &mut steps,
                            Step::WaitForLock {
                                app_uuid: app.into(),
                                service: svc.into(),
                            },
                        );
                        continue;
                    }
                    for o in &old {
                        steps.extend(stop_or_remove(o));
                    }
                    if strategy == UpdateStrategy::DeleteThenDownload {
                        for o in &old {
                            let used_elsewhere = managed
                                .iter()
                                .any(|c| c.image == o.image && !old.iter().any(|x| x.id == c.id));
                            if o.image != spec.image
                                && !used_elsewhere
                                && !target_images.contains(o.image.as_str())
                                && ctx.images_present.contains(&o.image)
                            {
                                push_unique(
                                    &mut steps,
                                    Step::RemoveImage {
                                        image: o.image.clone(),
                                    },
                                );
                            }
                        }
                    }
                }
            },
        }
    }

    // Containers of services (or apps) that are no longer wanted.
    for c in &managed {
        if wanted.contains(&(c.app_uuid.as_str(), c.service.as_str())) {
            continue;
        }
        if locked(&c.app_uuid, &c.service) {
            push_unique(
                &mut steps,
                Step::WaitForLock {
                    app_uuid: c.app_uuid.clone(),
                    service: c.service.clone(),
                },
            );
        } else {
            steps.extend(stop_or_remove(c));
        }
    }

    // Networks of removed apps, once their containers are gone.
    for n in &current.networks {
        let app_wanted = specs.iter().any(|s| s.app_uuid == n.app_uuid);
        let app_has_containers = managed.iter().any(|c| c.app_uuid == n.app_uuid);
        if !app_wanted && !app_has_containers {
            steps.push(Step::RemoveNetwork {
                name: n.name.clone(),
            });
        }
    }

    // Unused images, only once everything else is done.
    if steps.is_empty() {
        for image in &ctx.managed_images {
            let in_use =
                target_images.contains(image.as_str()) || managed.iter().any(|c| &c.image == image);
            if !in_use && ctx.images_present.contains(image) {
                steps.push(Step::RemoveImage {
                    image: image.clone(),
                });
            }
        }
    }
    steps.sort_by_key(Step::phase);
    steps
}

/// True when a step only waits (for a lock or a hand-over).
pub fn is_wait(step: &Step) -> bool {
    matches!(
        step,
        Step::WaitForLock { .. } | Step::WaitForHandover { .. }
    )
}

/// True when only waits are left: the executor can do nothing now.
pub fn only_waiting(steps: &[Step]) -> bool {
    !steps.is_empty() && steps.iter().all(is_wait)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
