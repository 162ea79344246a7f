//! Device actions from the target state (api-types `actions`): a reboot,
//! or a restart of all services or of one, each carried out exactly once.
//!
//! The supervisor keeps `actions.json` in its state dir: the id of the last
//! action it began and the outcomes it still reports. Before it acts, it
//! writes the action's id there (temp file, fsync, rename), so an action
//! interrupted by a crash, a power cut or the reboot itself is never begun
//! again. A reboot records the boot id it was asked in; after the next
//! start, a different boot id means the reboot happened (`done`), the same
//! one that the supervisor restarted without the device rebooting
//! (`failed`: ask again).
//!
//! A reboot waits for the update locks, as an OS update's reboot does, and
//! goes through the same rebooter (the reporter is flushed first, so the
//! cloud sees `started: rebooting`). The reporter sends the outcomes of the
//! actions that are still in the target state ([`Actions::report_for`]);
//! once the cloud has them as done or failed they leave the target, and
//! the report.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use resin_api_types::actions::{ActionKind, ActionOutcome, ActionState, DeviceAction};
use resin_api_types::DeviceTarget;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::engine::Engine;
use crate::notify::Notifier;
use crate::planner::{CurrentState, RunState};
use crate::store::{self, StoreError};

/// Outcomes kept (and reported while their action is in the target).
pub const KEEP: usize = 32;

/// `actions.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The last action begun; those at or below it are never run again.
    pub last_id: i64,
    #[serde(default)]
    pub outcomes: Vec<ActionOutcome>,
    /// A reboot asked for and not yet seen to happen: (action id, boot id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot: Option<(i64, String)>,
}

/// The actions of the target state to run now: those above `last_id`, in
/// id order.
pub fn to_run(target: &[DeviceAction], last_id: i64) -> Vec<DeviceAction> {
    let mut v: Vec<DeviceAction> = target.iter().filter(|a| a.id > last_id).cloned().collect();
    v.sort_by_key(|a| a.id);
    v
}

/// The device's boot id (`/proc/sys/kernel/random/boot_id`, or the test's).
pub fn boot_id(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The record and its file; outcomes are published for the reporter.
pub struct Actions {
    path: PathBuf,
    record: std::sync::Mutex<Record>,
    outcomes: watch::Sender<Vec<ActionOutcome>>,
}

impl Actions {
    /// Loads `actions.json` from `state_dir` and settles a reboot asked for
    /// before this start: done if the boot id changed, failed if not.
    pub fn load(state_dir: &Path, boot_id: &str) -> Result<Arc<Self>, StoreError> {
        let path = state_dir.join("actions.json");
        let mut record: Record = store::read_json(&path)?.unwrap_or_default();
        let mut changed = false;
        if let Some((id, asked_in)) = record.reboot.take() {
            let o = if asked_in != boot_id {
                outcome(id, ActionState::Done, "rebooted")
            } else {
                outcome(
                    id,
                    ActionState::Failed,
                    "the supervisor restarted but the device did not reboot; ask again",
                )
            };
            tracing::info!(
                action = id,
                state = o.state.as_str(),
                "reboot action settled"
            );
            set_outcome(&mut record, o);
            changed = true;
        }
        if changed {
            store::write_json(&path, &record)?;
        }
        let (outcomes, _) = watch::channel(record.outcomes.clone());
        Ok(Arc::new(Self {
            path,
            record: std::sync::Mutex::new(record),
            outcomes,
        }))
    }

    pub fn record(&self) -> Record {
        self.record.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The outcomes the reporter sends.
    pub fn subscribe(&self) -> watch::Receiver<Vec<ActionOutcome>> {
        self.outcomes.subscribe()
    }

    /// Changes the record and writes it (atomically) before returning.
    fn update(&self, f: impl FnOnce(&mut Record)) -> Result<(), StoreError> {
        let snapshot = {
            let Ok(mut r) = self.record.lock() else {
                return Ok(());
            };
            f(&mut r);
            r.clone()
        };
        store::write_json(&self.path, &snapshot)?;
        self.outcomes.send_replace(snapshot.outcomes);
        Ok(())
    }

    /// Marks `action` begun (persisted before anything is done).
    pub fn begin(&self, action: &DeviceAction, message: &str) -> Result<(), StoreError> {
        let o = outcome(action.id, ActionState::Started, message);
        self.update(|r| {
            r.last_id = r.last_id.max(action.id);
            set_outcome(r, o);
        })
    }

    /// Records a reboot about to be asked for in boot `boot_id`.
    pub fn rebooting(&self, id: i64, boot_id: &str, message: &str) -> Result<(), StoreError> {
        let o = outcome(id, ActionState::Started, message);
        self.update(|r| {
            r.reboot = Some((id, boot_id.to_owned()));
            set_outcome(r, o);
        })
    }

    /// Records how an action ended.
    pub fn finish(&self, id: i64, ok: bool, message: &str) -> Result<(), StoreError> {
        let state = if ok {
            ActionState::Done
        } else {
            ActionState::Failed
        };
        let o = outcome(id, state, message);
        self.update(|r| set_outcome(r, o))
    }

    /// The outcomes of the actions still in `target` (the cloud does not
    /// have them as done or failed yet); `None` when there are none.
    pub fn report_for(
        outcomes: &[ActionOutcome],
        target: Option<&DeviceTarget>,
    ) -> Option<Vec<ActionOutcome>> {
        let open = &target?.actions;
        let v: Vec<ActionOutcome> = outcomes
            .iter()
            .filter(|o| open.iter().any(|a| a.id == o.id))
            .cloned()
            .collect();
        (!v.is_empty()).then_some(v)
    }
}

fn outcome(id: i64, state: ActionState, message: &str) -> ActionOutcome {
    ActionOutcome {
        id,
        state,
        message: Some(message.to_owned()),
    }
}

fn set_outcome(r: &mut Record, o: ActionOutcome) {
    r.outcomes.retain(|x| x.id != o.id);
    r.outcomes.push(o);
    let extra = r.outcomes.len().saturating_sub(KEEP);
    r.outcomes.drain(..extra);
}

/// Restarts the managed containers of the target's apps (or only those of
/// `service`) that exist; returns what it did, or why it did nothing.
pub async fn restart(
    engine: &Engine,
    current: &CurrentState,
    target: &DeviceTarget,
    service: Option<&str>,
) -> Result<String, String> {
    let mut chosen: Vec<_> = current
        .containers
        .iter()
        .filter(|c| c.managed && target.apps.contains_key(&c.app_uuid))
        .filter(|c| service.is_none_or(|s| c.service == s))
        .filter(|c| c.state != RunState::Dead)
        .collect();
    chosen.sort_by(|a, b| a.service.cmp(&b.service));
    if chosen.is_empty() {
        return Err(match service {
            Some(s) => format!("no container of a service named {s:?} on this device"),
            None => "no service to restart on this device".into(),
        });
    }
    let mut done = Vec::new();
    for c in &chosen {
        engine
            .restart(&c.id)
            .await
            .map_err(|e| format!("restarting {}: {e}", c.service))?;
        done.push(c.service.clone());
    }
    Ok(format!("restarted {}", done.join(", ")))
}

/// What the action runner needs.
pub struct Runner {
    pub actions: Arc<Actions>,
    pub engine: Engine,
    pub target: watch::Receiver<Option<DeviceTarget>>,
    pub current: watch::Receiver<CurrentState>,
    /// The rebooter's queue (crate::reboot::spawn_rebooter).
    pub reboot: mpsc::Sender<String>,
    pub boot_id_path: PathBuf,
    pub notifier: Arc<Notifier>,
    /// Asks the main loop to look at the engine again after a restart.
    pub refresh: Arc<tokio::sync::Notify>,
    /// How often a reboot looks at the update locks again.
    pub lock_poll: Duration,
}

impl Runner {
    /// Runs the new actions of each target state, once each, in id order.
    pub async fn run(mut self) {
        loop {
            let target = self.target.borrow_and_update().clone();
            if let Some(t) = &target {
                for a in to_run(&t.actions, self.actions.record().last_id) {
                    if let Err(e) = self.one(t, &a).await {
                        // The record could not be written: do not act
                        // (it could run again after a restart).
                        tracing::error!(action = a.id, error = %e, "device action not run");
                        break;
                    }
                }
            }
            if self.target.changed().await.is_err() {
                return;
            }
        }
    }

    async fn one(&mut self, t: &DeviceTarget, a: &DeviceAction) -> Result<(), StoreError> {
        tracing::info!(action = a.id, kind = a.action.as_str(), service = ?a.service, "device action");
        match a.action {
            ActionKind::Restart => {
                self.actions.begin(a, "restarting")?;
                let cur = self.current.borrow().clone();
                let r = restart(&self.engine, &cur, t, a.service.as_deref()).await;
                self.refresh.notify_one();
                match r {
                    Ok(m) => self.actions.finish(a.id, true, &m),
                    Err(m) => self.actions.finish(a.id, false, &m),
                }
            }
            ActionKind::Reboot => {
                self.actions.begin(a, "waiting for update locks")?;
                self.notifier
                    .status("reboot action: waiting for update locks");
                let waited =
                    crate::reboot::wait_for_update_locks(&mut self.current, self.lock_poll).await;
                if !waited.is_empty() {
                    tracing::info!(locks = ?waited, "update locks released: rebooting");
                }
                let boot = boot_id(&self.boot_id_path);
                self.actions.rebooting(a.id, &boot, "rebooting")?;
                let _ = self
                    .reboot
                    .send(format!("reboot asked for by the cloud (action {})", a.id))
                    .await;
                Ok(())
            }
            ActionKind::Unknown => {
                self.actions.begin(a, "unknown action")?;
                self.actions.finish(
                    a.id,
                    false,
                    "this supervisor does not know this action; update it",
                )
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn act(id: i64, action: ActionKind) -> DeviceAction {
        DeviceAction {
            id,
            action,
            service: None,
        }
    }

    #[test]
    fn only_actions_above_the_last_one_run_in_id_order() {
        let t = [
            act(7, ActionKind::Reboot),
            act(3, ActionKind::Restart),
            act(5, ActionKind::Restart),
        ];
        let ids: Vec<i64> = to_run(&t, 3).iter().map(|a| a.id).collect();
        assert_eq!(ids, [5, 7]);
        assert!(to_run(&t, 7).is_empty());
    }

    #[test]
    fn a_reboot_is_settled_by_the_boot_id_and_never_asked_for_again() {
        let d = tempfile::tempdir().unwrap();
        let a = Actions::load(d.path(), "boot-1").unwrap();
        a.begin(&act(4, ActionKind::Reboot), "waiting").unwrap();
        a.rebooting(4, "boot-1", "rebooting").unwrap();
        // The device rebooted: a new boot id.
        let after = Actions::load(d.path(), "boot-2").unwrap();
        let r = after.record();
        assert_eq!(r.last_id, 4);
        assert_eq!(r.reboot, None);
        assert_eq!(r.outcomes, [outcome(4, ActionState::Done, "rebooted")]);
        assert!(to_run(&[act(4, ActionKind::Reboot)], r.last_id).is_empty());
        // And it stays settled on later starts.
        assert_eq!(Actions::load(d.path(), "boot-3").unwrap().record(), r);

        // The supervisor restarted in the same boot: failed, not run again.
        after.begin(&act(6, ActionKind::Reboot), "waiting").unwrap();
        after.rebooting(6, "boot-2", "rebooting").unwrap();
        let same = Actions::load(d.path(), "boot-2").unwrap().record();
        assert_eq!(same.last_id, 6);
        assert_eq!(same.outcomes.last().unwrap().state, ActionState::Failed);
    }

    #[test]
    fn outcomes_are_reported_while_their_action_is_in_the_target() {
        let o = vec![
            outcome(1, ActionState::Done, "x"),
            outcome(2, ActionState::Started, "y"),
        ];
        let mut t = DeviceTarget::default();
        assert_eq!(Actions::report_for(&o, Some(&t)), None);
        assert_eq!(Actions::report_for(&o, None), None);
        t.actions = vec![act(2, ActionKind::Reboot), act(3, ActionKind::Restart)];
        assert_eq!(Actions::report_for(&o, Some(&t)), Some(vec![o[1].clone()]));
    }

    #[tokio::test]
    async fn a_reboot_action_waits_for_update_locks_and_is_asked_once() {
        use crate::planner::Container;
        let d = tempfile::tempdir().unwrap();
        let app = format!("reboot-action-test-{}", std::process::id());
        let dir = format!("/tmp/resin/locks/{app}/web");
        std::fs::create_dir_all(&dir).unwrap();
        let lock = format!("{dir}/updates.lock");
        std::fs::write(&lock, "").unwrap();
        let boot = d.path().join("boot_id");
        std::fs::write(&boot, "boot-1\n").unwrap();
        let cur = CurrentState {
            containers: vec![Container {
                id: "c1".into(),
                name: "web".into(),
                managed: true,
                app_uuid: app.clone(),
                service: "web".into(),
                release_uuid: "r1".into(),
                config_hash: "h".into(),
                image: "img".into(),
                state: RunState::Running,
                created: 0,
                volumes: vec![],
                networks: vec![],
            }],
            ..Default::default()
        };
        let (_cur_tx, current) = watch::channel(cur);
        let t = DeviceTarget {
            actions: vec![act(9, ActionKind::Reboot)],
            ..Default::default()
        };
        let (target_tx, target) = watch::channel(Some(t.clone()));
        let (reboot_tx, mut reboots) = mpsc::channel(4);
        let actions = Actions::load(d.path(), "boot-1").unwrap();
        // Never called: a reboot needs no engine.
        let sock = d.path().join("docker.sock");
        std::fs::write(&sock, "").unwrap();
        let engine = Engine::unconnected(&format!("unix://{}", sock.display())).unwrap();
        let runner = Runner {
            actions: actions.clone(),
            engine,
            target,
            current,
            reboot: reboot_tx,
            boot_id_path: boot.clone(),
            notifier: Arc::new(Notifier::from_env()),
            refresh: Arc::default(),
            lock_poll: Duration::from_millis(50),
        };
        tokio::spawn(runner.run());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(reboots.try_recv().is_err(), "rebooted under an update lock");
        let r = actions.record();
        assert_eq!(r.last_id, 9, "begun (persisted) before waiting");
        assert_eq!(r.outcomes[0].state, ActionState::Started);
        std::fs::remove_file(&lock).unwrap();
        let reason = tokio::time::timeout(Duration::from_secs(5), reboots.recv())
            .await
            .expect("the reboot is asked for once the lock is gone")
            .unwrap();
        assert!(reason.contains("action 9"), "{reason}");
        assert_eq!(actions.record().reboot, Some((9, "boot-1".into())));
        // The same target again (a re-poll): no second reboot.
        target_tx.send_replace(Some(t));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(reboots.try_recv().is_err(), "a second reboot");
        // After the reboot: done, reported while the cloud still lists it.
        std::fs::write(&boot, "boot-2\n").unwrap();
        let after = Actions::load(d.path(), &boot_id(&boot)).unwrap();
        let t = DeviceTarget {
            actions: vec![act(9, ActionKind::Reboot)],
            ..Default::default()
        };
        let rep = Actions::report_for(&after.subscribe().borrow(), Some(&t)).unwrap();
        assert_eq!(rep, [outcome(9, ActionState::Done, "rebooted")]);
        let _ = std::fs::remove_dir_all(format!("/tmp/resin/locks/{app}"));
    }
}
