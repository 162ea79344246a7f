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
    /// Exited, paused…: not running, not fresh.
    Stopped,
    /// The engine could not stop or remove it cleanly: never reused, always
    /// replaced.
    Dead,
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
    /// Named volumes it mounts (engine names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// Networks it joined (engine names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
}

/// A network or volume the supervisor created.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct AppObject {
    pub name: String,
    pub app_uuid: String,
    /// The engine's driver; `None` when unknown (taken as the default).
    pub driver: Option<String>,
    /// Driver options as created.
    pub options: BTreeMap<String, String>,
    /// The compose labels (without the `io.resin.*` ones).
    pub labels: BTreeMap<String, String>,
}

/// What a network or volume is created with: compose `driver`,
/// `driver_opts` and `labels`. A difference recreates it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ObjectConfig {
    pub driver: Option<String>,
    pub options: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

impl ObjectConfig {
    /// True when `have` was created with this config; a missing driver is
    /// the engine's default (`default_driver`).
    fn matches(&self, have: &AppObject, default_driver: &str) -> bool {
        let d = |x: &Option<String>| x.clone().unwrap_or_else(|| default_driver.to_owned());
        d(&self.driver) == d(&have.driver)
            && self.options == have.options
            && self.labels == have.labels
    }
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
    /// Apps whose app-wide lock (`/tmp/resin/locks/<app>/updates.lock`)
    /// exists: it holds every service of the app.
    pub app_locks_held: BTreeSet<String>,
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
    /// Remove the volumes a release dropped and those of removed apps
    /// (config var `RESIN_SUPERVISOR_REMOVE_VOLUMES`, off by default).
    pub remove_volumes: bool,
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
        #[serde(flatten)]
        config: ObjectConfig,
    },
    CreateVolume {
        name: String,
        app_uuid: String,
        #[serde(flatten)]
        config: ObjectConfig,
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
    RemoveVolume {
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
            | Step::RemoveNetwork { .. }
            | Step::RemoveVolume { .. } => None,
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
            Step::RemoveVolume { name } => format!("remove volume {name}"),
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

/// The steps left to reach the target, and what each waits for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// `after[i]`: the indices of the steps that must succeed before
    /// `steps[i]` runs.
    pub after: Vec<Vec<usize>>,
}

impl std::ops::Deref for Plan {
    type Target = [Step];
    fn deref(&self) -> &[Step] {
        &self.steps
    }
}

impl Plan {
    /// Adds `step` after `after`; a step already planned (a shared image
    /// fetch or network) is planned once, after everything it was asked to
    /// wait for.
    pub fn add(&mut self, step: Step, after: &[usize]) -> usize {
        if let Some(i) = self.steps.iter().position(|s| *s == step) {
            for &a in after {
                if a != i && !self.after[i].contains(&a) {
                    self.after[i].push(a);
                }
            }
            return i;
        }
        self.steps.push(step);
        let mut deps: Vec<usize> = after.to_vec();
        deps.sort_unstable();
        deps.dedup();
        self.after.push(deps);
        self.steps.len() - 1
    }

    /// For each step, true when it cannot run because a step in `failed`
    /// (or one it depends on, transitively) is in its way.
    pub fn blocked_by(&self, failed: &[bool]) -> Vec<bool> {
        let mut out: Vec<bool> = (0..self.steps.len())
            .map(|i| failed.get(i).copied().unwrap_or(false))
            .collect();
        let mut changed = true;
        while changed {
            changed = false;
            for i in 0..self.steps.len() {
                if !out[i] && self.after[i].iter().any(|&d| out.get(d) == Some(&true)) {
                    out[i] = true;
                    changed = true;
                }
            }
        }
        out
    }
}

fn stop_then_remove(p: &mut Plan, c: &Container, after: &[usize]) -> usize {
    let (id, app_uuid, service) = (c.id.clone(), c.app_uuid.clone(), c.service.clone());
    let mut after = after.to_vec();
    if c.state == RunState::Running {
        after.push(p.add(
            Step::Stop {
                id: id.clone(),
                app_uuid: app_uuid.clone(),
                service: service.clone(),
            },
            &after,
        ));
    }
    p.add(
        Step::Remove {
            id,
            app_uuid,
            service,
        },
        &after,
    )
}

fn wait_for_lock(p: &mut Plan, app: &str, svc: &str, after: &[usize]) {
    p.add(
        Step::WaitForLock {
            app_uuid: app.into(),
            service: svc.into(),
        },
        after,
    );
}

/// Plans what is left. An empty plan means current equals target.
pub fn plan(current: &CurrentState, target: &TargetApps, ctx: &PlanContext) -> Plan {
    let mut p = Plan::default();
    let specs = target_specs(&ctx.device_uuid, target);
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
    let objects = recreate_changed_objects(&mut p, current, target, &specs, &locked);

    for spec in &specs {
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
                let fetch = |p: &mut Plan, after: &[usize]| -> Vec<usize> {
                    if image_ok {
                        Vec::new()
                    } else {
                        vec![p.add(
                            Step::FetchImage {
                                image: spec.image.clone(),
                            },
                            after,
                        )]
                    }
                };
                let create_step = Step::Create {
                    spec: Box::new(engine_network_mode(spec, &specs, &managed)),
                };
                let kill_first = matches!(
                    strategy,
                    UpdateStrategy::KillThenDownload | UpdateStrategy::DeleteThenDownload
                );
                if live_old.is_empty() || !kill_first {
                    // download-then-kill and hand-over: the old ones keep
                    // running until the new image is there and the new
                    // container exists.
                    let mut after = fetch(&mut p, &[]);
                    after.extend(&prerequisites);
                    after.extend(&dead);
                    let create = p.add(create_step, &after);
                    if live_old.is_empty() || strategy == UpdateStrategy::HandOver {
                        p.add(start_step(&spec.name), &[create]);
                    } else if locked(app, svc) {
                        wait_for_lock(&mut p, app, svc, &[create]);
                    } else {
                        let mut start_after = vec![create];
                        for o in live_old.iter().filter(|o| o.state == RunState::Running) {
                            start_after.push(p.add(
                                Step::Stop {
                                    id: o.id.clone(),
                                    app_uuid: app.into(),
                                    service: svc.into(),
                                },
                                &[create],
                            ));
                        }
                        let start = p.add(start_step(&spec.name), &start_after);
                        for o in &live_old {
                            p.add(
                                Step::Remove {
                                    id: o.id.clone(),
                                    app_uuid: app.into(),
                                    service: svc.into(),
                                },
                                &[start],
                            );
                        }
                    }
                } else if locked(app, svc) {
                    wait_for_lock(&mut p, app, svc, &[]);
                } else {
                    // kill-then-download, delete-then-download.
                    let mut removed: Vec<usize> = dead.clone();
                    for o in &live_old {
                        removed.push(stop_then_remove(&mut p, o, &[]));
                    }
                    let mut before_fetch = removed.clone();
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
                                before_fetch.push(p.add(
                                    Step::RemoveImage {
                                        image: o.image.clone(),
                                    },
                                    &removed,
                                ));
                            }
                        }
                    }
                    let mut after = fetch(&mut p, &before_fetch);
                    after.extend(&prerequisites);
                    after.extend(&before_fetch);
                    let create = p.add(create_step, &after);
                    p.add(start_step(&spec.name), &[create]);
                }
            }
        }
    }

    order_by_depends_on(&mut p, &specs);

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

    remove_unused_volumes(&mut p, current, target, &specs, ctx);

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

/// The scoped name's compose name: `<app>_data` → `data`.
fn short_name<'a>(app: &str, scoped: &'a str) -> &'a str {
    scoped
        .strip_prefix(app)
        .and_then(|s| s.strip_prefix('_'))
        .unwrap_or(scoped)
}

/// The config a network of `app` is created with (its release's
/// top-level `networks` entry; the default network has none).
fn network_config(app_target: Option<&AppTarget>, app: &str, name: &str) -> ObjectConfig {
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
fn volume_config(app_target: Option<&AppTarget>, app: &str, name: &str) -> ObjectConfig {
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
const DEFAULT_NETWORK_DRIVER: &str = "bridge";
const DEFAULT_VOLUME_DRIVER: &str = "local";

/// What [`recreate_changed_objects`] planned.
#[derive(Default)]
struct ObjectPlan<'a> {
    /// Services planned no further this round: their containers go with a
    /// recreated object, and the next round creates them again.
    busy: BTreeSet<(&'a str, &'a str)>,
}

/// Networks and volumes whose driver, driver options or labels differ from
/// the target: the containers using them are stopped (in reverse
/// `depends_on` order) and removed, then the object is removed and created
/// again. The next round creates the containers, in `depends_on` order.
/// An update lock on any user holds the whole recreation.
fn recreate_changed_objects<'a>(
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
fn remove_unused_volumes(
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

/// Compose `depends_on` within one app: a service starts after the services
/// it depends on have started (when they start in this plan), and its old
/// container stops before theirs. An app whose `depends_on` has a cycle (or
/// names a service it does not have) is planned without that order.
fn order_by_depends_on(p: &mut Plan, specs: &[ServiceSpec]) {
    let mut by_app: BTreeMap<&str, BTreeMap<&str, &[String]>> = BTreeMap::new();
    for s in specs {
        by_app
            .entry(s.app_uuid.as_str())
            .or_default()
            .insert(s.service.as_str(), &s.depends_on);
    }
    let find = |p: &Plan, app: &str, svc: &str, start: bool| -> Vec<usize> {
        p.steps
            .iter()
            .enumerate()
            .filter(|(_, s)| match s {
                Step::Start {
                    app_uuid, service, ..
                } => start && app_uuid == app && service == svc,
                Step::Stop {
                    app_uuid, service, ..
                }
                | Step::Kill {
                    app_uuid, service, ..
                } => !start && app_uuid == app && service == svc,
                _ => false,
            })
            .map(|(i, _)| i)
            .collect()
    };
    for (app, deps) in by_app {
        if deps.values().all(|d| d.is_empty()) || !depends_on_is_acyclic(&deps) {
            continue;
        }
        for (svc, on) in &deps {
            for d in on.iter() {
                // Start after the dependency's start.
                let before = find(p, app, d, true);
                for i in find(p, app, svc, true) {
                    for &b in &before {
                        if !p.after[i].contains(&b) {
                            p.after[i].push(b);
                        }
                    }
                }
                // The dependency's old container stops after this one's.
                let before = find(p, app, svc, false);
                for i in find(p, app, d, false) {
                    for &b in &before {
                        if !p.after[i].contains(&b) {
                            p.after[i].push(b);
                        }
                    }
                }
            }
        }
    }
}

/// True when every `depends_on` names a service of the app and there is no
/// cycle.
fn depends_on_is_acyclic(deps: &BTreeMap<&str, &[String]>) -> bool {
    // Kahn's algorithm over "service → what it depends on".
    let mut left: BTreeMap<&str, usize> = BTreeMap::new();
    for (svc, on) in deps {
        if on
            .iter()
            .any(|d| !deps.contains_key(d.as_str()) || d == svc)
        {
            return false;
        }
        left.insert(svc, on.len());
    }
    let mut done: Vec<&str> = left
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(s, _)| *s)
        .collect();
    let mut seen = 0;
    while let Some(d) = done.pop() {
        seen += 1;
        for (svc, on) in deps {
            let n = on.iter().filter(|x| x.as_str() == d).count();
            if n > 0 {
                if let Some(c) = left.get_mut(svc) {
                    *c -= n;
                    if *c == 0 {
                        done.push(svc);
                    }
                }
            }
        }
    }
    seen == deps.len()
}

/// A service's containers as the target's release sees them: a container
/// whose config hash equals the target spec's is that release's container,
/// whatever release it was created in (the engine cannot relabel a
/// container, so its `io.resin.release-uuid` label keeps the release it was
/// created for; the supervisor's view and its state report use the target's).
pub fn adopt_releases(current: &mut CurrentState, specs: &[ServiceSpec]) {
    for c in current.containers.iter_mut().filter(|c| c.managed) {
        if let Some(s) = specs.iter().find(|s| {
            s.app_uuid == c.app_uuid && s.service == c.service && s.config_hash == c.config_hash
        }) {
            c.release_uuid = s.release_uuid.clone();
        }
    }
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
