//! The executor: reads the engine, asks the planner for a [`Plan`], runs
//! its steps as far as their dependencies allow (up to [`PARALLEL_STEPS`]
//! at a time, each as soon as the steps it waits for have succeeded), and
//! loops until the plan is empty (converged) or only waits are left.
//!
//! A failed step fails only the steps that depend on it; every other
//! service's chain runs to its end. A step that failed is not tried again
//! in the same `apply`: the apply goes on with the rest, then ends with the
//! failure, and the main loop retries later.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use futures_util::stream::{FuturesUnordered, StreamExt};
use resin_api_types::labels;

use crate::engine::{Engine, EngineError};
use crate::planner::{
    adopt_releases, is_wait, only_waiting, plan_specs, target_specs, CurrentState, Plan,
    PlanContext, Step, TargetApps,
};
use crate::spec::ServiceSpec;
use crate::store;

/// Rounds one `apply` may take before it gives up as "not converging".
pub const MAX_ROUNDS: usize = 64;
/// Steps run this many at a time.
pub const PARALLEL_STEPS: usize = 8;
/// File in a service's lock directory that ends a hand-over early.
pub const HANDOVER_SIGNAL: &str = "handover-complete";

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("step {step:?} failed: {source}{}", more_failures(*.more))]
    Step {
        step: String,
        #[source]
        source: EngineError,
        /// Other steps that failed in the same apply.
        more: usize,
    },
    #[error("still not converged after {0} rounds")]
    NotConverging(usize),
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// How an `apply` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Current equals target.
    Converged,
    /// Update locks (or a hand-over in progress) block the remaining steps.
    Blocked(Vec<Step>),
}

/// Runs plans against one engine for one device.
pub struct Reconciler {
    engine: Engine,
    device_uuid: String,
    images_file: PathBuf,
    managed_images: Mutex<BTreeSet<String>>,
    /// [`PlanContext::remove_volumes`], from the target's config.
    remove_volumes: AtomicBool,
}

fn more_failures(n: usize) -> String {
    match n {
        0 => String::new(),
        n => format!(" (and {n} more failed steps)"),
    }
}

/// The app-wide update lock: while it exists, no service of the app is
/// stopped, killed or removed (besides each service's own lock).
pub fn app_lock_path(app: &str) -> PathBuf {
    Path::new(&labels::update_lock_path(app, "x"))
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("updates.lock"))
        .unwrap_or_default()
}

fn lock_dir(app: &str, service: &str) -> PathBuf {
    let p = labels::update_lock_path(app, service);
    Path::new(&p)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

impl Reconciler {
    /// `state_dir` keeps `images.json`, the images the supervisor fetched.
    pub fn new(
        engine: Engine,
        device_uuid: &str,
        state_dir: &Path,
    ) -> Result<Self, ReconcileError> {
        let images_file = state_dir.join("images.json");
        let managed: BTreeSet<String> = store::read_json(&images_file)?.unwrap_or_default();
        Ok(Self {
            engine,
            device_uuid: device_uuid.into(),
            images_file,
            managed_images: Mutex::new(managed),
            remove_volumes: AtomicBool::new(false),
        })
    }

    /// Removes (or keeps) volumes a release dropped and those of removed
    /// apps, from the next plan on (`RESIN_SUPERVISOR_REMOVE_VOLUMES`).
    pub fn set_remove_volumes(&self, on: bool) {
        self.remove_volumes.store(on, Ordering::Relaxed);
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn managed_images(&self) -> BTreeSet<String> {
        self.managed_images
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    fn remember_image(&self, image: &str, keep: bool) -> Result<(), ReconcileError> {
        let snapshot = {
            let Ok(mut m) = self.managed_images.lock() else {
                return Ok(());
            };
            let changed = if keep {
                m.insert(image.into())
            } else {
                m.remove(image)
            };
            if !changed {
                return Ok(());
            }
            m.clone()
        };
        store::write_json(&self.images_file, &snapshot)?;
        Ok(())
    }

    /// The plan context: locks from the file system, images on the engine.
    pub async fn context(
        &self,
        current: &CurrentState,
        specs: &[ServiceSpec],
        force: bool,
    ) -> Result<PlanContext, ReconcileError> {
        let mut pairs: BTreeSet<(String, String)> = specs
            .iter()
            .map(|s| (s.app_uuid.clone(), s.service.clone()))
            .collect();
        pairs.extend(
            current
                .containers
                .iter()
                .map(|c| (c.app_uuid.clone(), c.service.clone())),
        );
        let mut locks_held = BTreeSet::new();
        let mut app_locks_held = BTreeSet::new();
        let mut handover_signalled = BTreeSet::new();
        for (app, svc) in pairs {
            if Path::new(&labels::update_lock_path(&app, &svc)).exists() {
                locks_held.insert((app.clone(), svc.clone()));
            }
            if !app_locks_held.contains(&app) && app_lock_path(&app).exists() {
                app_locks_held.insert(app.clone());
            }
            let signal = lock_dir(&app, &svc).join(HANDOVER_SIGNAL);
            if signal.exists() {
                let containers = current
                    .containers
                    .iter()
                    .filter(|c| c.managed && c.app_uuid == app && c.service == svc)
                    .count();
                if containers > 1 {
                    handover_signalled.insert((app, svc));
                } else {
                    // Used (the hand-over it ended is over) or stale: it
                    // must not end the service's next hand-over early.
                    if let Err(e) = std::fs::remove_file(&signal) {
                        tracing::warn!(path = %signal.display(), error = %e, "cannot remove hand-over signal");
                    }
                }
            }
        }
        let managed_images = self.managed_images();
        let mut refs: BTreeSet<String> = specs.iter().map(|s| s.image.clone()).collect();
        refs.extend(current.containers.iter().map(|c| c.image.clone()));
        refs.extend(managed_images.iter().cloned());
        let images_present = self.engine.images_present(&refs).await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        Ok(PlanContext {
            device_uuid: self.device_uuid.clone(),
            locks_held,
            app_locks_held,
            force,
            images_present,
            managed_images,
            handover_signalled,
            now,
            remove_volumes: self.remove_volumes.load(Ordering::Relaxed),
        })
    }

    /// The engine's state as the supervisor sees it: a container whose
    /// config is unchanged in the target's release counts as that
    /// release's ([`adopt_releases`]).
    pub async fn current(&self, target: Option<&TargetApps>) -> Result<CurrentState, EngineError> {
        let mut cur = self.engine.current().await?;
        if let Some(t) = target {
            adopt_releases(&mut cur, &target_specs(&self.device_uuid, t));
        }
        Ok(cur)
    }

    /// The plan of the next round, without running it.
    pub async fn next_steps(
        &self,
        target: &TargetApps,
        force: bool,
    ) -> Result<Plan, ReconcileError> {
        let specs = target_specs(&self.device_uuid, target);
        self.next_plan(target, &specs, force).await
    }

    /// The next round's plan with the target's specs already built.
    async fn next_plan(
        &self,
        target: &TargetApps,
        specs: &[ServiceSpec],
        force: bool,
    ) -> Result<Plan, ReconcileError> {
        let current = self.engine.current().await?;
        let ctx = self.context(&current, specs, force).await?;
        Ok(plan_specs(&current, target, specs, &ctx))
    }

    /// Plans and runs until converged or blocked by locks. `on_step` sees
    /// each step before it runs (for logs and systemd's STATUS=). A failed
    /// step holds back only what depends on it; once nothing else can run,
    /// the call ends with the first failure and the caller retries later.
    pub async fn apply(
        &self,
        target: &TargetApps,
        force: bool,
        on_step: &(dyn Fn(&Step) + Sync),
    ) -> Result<Outcome, ReconcileError> {
        let mut failed: Vec<(Step, EngineError)> = Vec::new();
        // The specs depend on the target only: built once per apply.
        let specs = target_specs(&self.device_uuid, target);
        for _ in 0..MAX_ROUNDS {
            let plan = self.next_plan(target, &specs, force).await?;
            let failed_before: Vec<bool> = plan
                .steps
                .iter()
                .map(|s| failed.iter().any(|(f, _)| f == s))
                .collect();
            let blocked = plan.blocked_by(&failed_before);
            let runnable = plan
                .steps
                .iter()
                .zip(&blocked)
                .any(|(s, b)| !b && !is_wait(s));
            if !runnable {
                if !failed.is_empty() {
                    let more = failed.len() - 1;
                    let (step, source) = failed.swap_remove(0);
                    return Err(ReconcileError::Step {
                        step: step.describe(),
                        source,
                        more,
                    });
                }
                if plan.steps.is_empty() {
                    return Ok(Outcome::Converged);
                }
                if only_waiting(&plan.steps) {
                    return Ok(Outcome::Blocked(plan.steps));
                }
            }
            failed.extend(self.run_plan(&plan, &blocked, on_step).await?);
        }
        Err(ReconcileError::NotConverging(MAX_ROUNDS))
    }

    /// Runs the steps of `plan` not `skip`ped, each once every step it
    /// waits for has succeeded, and returns the steps that failed.
    async fn run_plan(
        &self,
        plan: &Plan,
        skip: &[bool],
        on_step: &(dyn Fn(&Step) + Sync),
    ) -> Result<Vec<(Step, EngineError)>, ReconcileError> {
        #[derive(Clone, Copy, PartialEq, Eq)]
        enum State {
            Pending,
            Running,
            Done,
            Failed,
        }
        let n = plan.steps.len();
        let mut state: Vec<State> = (0..n)
            .map(|i| {
                if skip.get(i).copied().unwrap_or(false) {
                    State::Failed
                } else if is_wait(&plan.steps[i]) {
                    // Waits do nothing; nothing in a plan waits on them.
                    State::Done
                } else {
                    State::Pending
                }
            })
            .collect();
        // Which ready step goes first when more are ready than run at once.
        let order = plan.run_order();
        let mut running = FuturesUnordered::new();
        let mut failures = Vec::new();
        let mut store_err = None;
        loop {
            // What a failure holds back fails with it.
            let mut changed = true;
            while changed {
                changed = false;
                for i in 0..n {
                    if state[i] == State::Pending
                        && plan.after[i]
                            .iter()
                            .any(|&d| state.get(d) == Some(&State::Failed))
                    {
                        state[i] = State::Failed;
                        changed = true;
                    }
                }
            }
            for &i in &order {
                if running.len() >= PARALLEL_STEPS {
                    break;
                }
                let ready = state[i] == State::Pending
                    && plan.after[i]
                        .iter()
                        .all(|&d| state.get(d) == Some(&State::Done));
                if ready {
                    state[i] = State::Running;
                    let step = &plan.steps[i];
                    running.push(async move { (i, self.run_step(step, on_step).await) });
                }
            }
            // Nothing running: done (steps still pending wait on a cycle and
            // are planned again next round).
            let Some((i, r)) = running.next().await else {
                break;
            };
            let step = &plan.steps[i];
            match r {
                Ok(()) => {
                    state[i] = State::Done;
                    let remembered = match step {
                        Step::FetchImage { image } => self.remember_image(image, true),
                        Step::RemoveImage { image } => self.remember_image(image, false),
                        _ => Ok(()),
                    };
                    if let Err(e) = remembered {
                        store_err.get_or_insert(e);
                    }
                }
                Err(e) => {
                    tracing::warn!(step = %step.describe(), error = %e, "step failed");
                    state[i] = State::Failed;
                    failures.push((step.clone(), e));
                }
            }
        }
        match store_err {
            Some(e) => Err(e),
            None => Ok(failures),
        }
    }

    async fn run_step(
        &self,
        step: &Step,
        on_step: &(dyn Fn(&Step) + Sync),
    ) -> Result<(), EngineError> {
        on_step(step);
        tracing::info!(step = %step.describe(), "running step");
        self.engine.run(step).await
    }
}
