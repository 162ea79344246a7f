//! The executor: reads the engine, asks the planner for a round of steps,
//! runs them, and loops until the plan is empty (converged) or only lock
//! waits are left.
//!
//! A round whose steps all act on single services (stop, start, create,
//! remove a container) runs one chain per service, in phase order, the
//! chains side by side: one service that is slow to stop does not hold back
//! another's start. A round that also touches what services share (images,
//! networks, volumes) runs phase by phase, the steps of a phase side by side.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use futures_util::stream::{self, StreamExt};
use resin_api_types::labels;

use crate::engine::{Engine, EngineError};
use crate::planner::{
    is_wait, only_waiting, plan, target_specs, CurrentState, PlanContext, Step, TargetApps,
};
use crate::store;

/// Rounds one `apply` may take before it gives up as "not converging".
pub const MAX_ROUNDS: usize = 64;
/// Steps of one phase run this many at a time.
pub const PARALLEL_STEPS: usize = 8;
/// File in a service's lock directory that ends a hand-over early.
pub const HANDOVER_SIGNAL: &str = "handover-complete";

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("step {step:?} failed: {source}")]
    Step {
        step: String,
        #[source]
        source: EngineError,
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
        })
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
        target: &TargetApps,
        force: bool,
    ) -> Result<PlanContext, ReconcileError> {
        let specs = target_specs(&self.device_uuid, target);
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
        let mut handover_signalled = BTreeSet::new();
        for (app, svc) in pairs {
            if Path::new(&labels::update_lock_path(&app, &svc)).exists() {
                locks_held.insert((app.clone(), svc.clone()));
            }
            if lock_dir(&app, &svc).join(HANDOVER_SIGNAL).exists() {
                handover_signalled.insert((app, svc));
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
            force,
            images_present,
            managed_images,
            handover_signalled,
            now,
        })
    }

    /// The plan of the next round, without running it.
    pub async fn next_steps(
        &self,
        target: &TargetApps,
        force: bool,
    ) -> Result<Vec<Step>, ReconcileError> {
        let current = self.engine.current().await?;
        let ctx = self.context(&current, target, force).await?;
        Ok(plan(&current, target, &ctx))
    }

    /// Loops rounds until converged or blocked by locks. `on_step` sees each
    /// step before it runs (for logs and systemd's STATUS=). The first
    /// failed step ends the call with its error; the caller retries later.
    pub async fn apply(
        &self,
        target: &TargetApps,
        force: bool,
        on_step: &(dyn Fn(&Step) + Sync),
    ) -> Result<Outcome, ReconcileError> {
        for _ in 0..MAX_ROUNDS {
            let steps = self.next_steps(target, force).await?;
            if steps.is_empty() {
                return Ok(Outcome::Converged);
            }
            if only_waiting(&steps) {
                return Ok(Outcome::Blocked(steps));
            }
            self.run_round(&steps, on_step).await?;
        }
        Err(ReconcileError::NotConverging(MAX_ROUNDS))
    }

    async fn run_round(
        &self,
        steps: &[Step],
        on_step: &(dyn Fn(&Step) + Sync),
    ) -> Result<(), ReconcileError> {
        let todo: Vec<&Step> = steps.iter().filter(|s| !is_wait(s)).collect();
        if todo.iter().all(|s| s.service_key().is_some()) {
            let mut chains: BTreeMap<(&str, &str), Vec<&Step>> = BTreeMap::new();
            for step in todo {
                if let Some(key) = step.service_key() {
                    chains.entry(key).or_default().push(step);
                }
            }
            let results: Vec<Vec<(&Step, Result<(), EngineError>)>> = stream::iter(chains)
                .map(|(_, mut chain)| async move {
                    chain.sort_by_key(|s| s.phase());
                    let mut done = Vec::new();
                    for step in chain {
                        let r = self.run_step(step, on_step).await;
                        let failed = r.is_err();
                        done.push((step, r));
                        if failed {
                            break; // the rest of this service's chain waits
                        }
                    }
                    done
                })
                .buffer_unordered(PARALLEL_STEPS)
                .collect()
                .await;
            return self.settle(results.into_iter().flatten());
        }
        let mut phases: Vec<u8> = todo.iter().map(|s| s.phase()).collect();
        phases.sort_unstable();
        phases.dedup();
        for phase in phases {
            let batch: Vec<&Step> = todo
                .iter()
                .copied()
                .filter(|s| s.phase() == phase)
                .collect();
            let results: Vec<(&Step, Result<(), EngineError>)> = stream::iter(batch)
                .map(|step| async move { (step, self.run_step(step, on_step).await) })
                .buffer_unordered(PARALLEL_STEPS)
                .collect()
                .await;
            self.settle(results)?;
        }
        Ok(())
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

    /// Records what finished steps changed, and returns the first failure.
    fn settle<'a>(
        &self,
        results: impl IntoIterator<Item = (&'a Step, Result<(), EngineError>)>,
    ) -> Result<(), ReconcileError> {
        let mut first_err = None;
        for (step, r) in results {
            match r {
                Ok(()) => match step {
                    Step::FetchImage { image } => self.remember_image(image, true)?,
                    Step::RemoveImage { image } => self.remember_image(image, false)?,
                    _ => {}
                },
                Err(source) => {
                    tracing::warn!(step = %step.describe(), error = %source, "step failed");
                    if first_err.is_none() {
                        first_err = Some(ReconcileError::Step {
                            step: step.describe(),
                            source,
                        });
                    }
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
