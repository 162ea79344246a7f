//! The steps the executor runs, and the [`Plan`]: steps with the steps each
//! waits for.

use serde::Serialize;

use super::model::{Container, ObjectConfig, RunState};
use crate::spec::ServiceSpec;

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

    /// The order in which the executor takes ready steps when more are ready
    /// than it runs at once: first a `Start` that ends an outage (a `Stop`
    /// or `Kill` is among the steps it waits for, transitively), so a
    /// service is down only for its own steps; then the shallower steps
    /// (fewer steps before them), so every service's create goes before any
    /// first start and a short chain is not queued behind the others'
    /// starts; then plan order.
    pub fn run_order(&self) -> Vec<usize> {
        let n = self.steps.len();
        // depth[i]: the longest chain of steps before i; stops_before[i]: a
        // Stop or Kill is among them. Iterated to a fixed point (a cycle,
        // which the next round plans again, stops at n passes).
        let mut depth = vec![0usize; n];
        let mut stops_before = vec![false; n];
        for _ in 0..n {
            let mut changed = false;
            for i in 0..n {
                for &d in &self.after[i] {
                    let Some(dd) = depth.get(d).copied() else {
                        continue;
                    };
                    if dd + 1 > depth[i] {
                        depth[i] = dd + 1;
                        changed = true;
                    }
                    let stop = matches!(self.steps[d], Step::Stop { .. } | Step::Kill { .. })
                        || stops_before[d];
                    if stop && !stops_before[i] {
                        stops_before[i] = true;
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| {
            let ends_outage = matches!(self.steps[i], Step::Start { .. }) && stops_before[i];
            (!ends_outage, depth[i], i)
        });
        order
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

pub(super) fn stop_then_remove(p: &mut Plan, c: &Container, after: &[usize]) -> usize {
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

pub(super) fn wait_for_lock(p: &mut Plan, app: &str, svc: &str, after: &[usize]) {
    p.add(
        Step::WaitForLock {
            app_uuid: app.into(),
            service: svc.into(),
        },
        after,
    );
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
