//! The OS-update state machine: one enum whose states carry their data,
//! transition methods that refuse disallowed source states, and a
//! [`Machine`] that persists every transition to `osupdate.json` (temp file,
//! fsync, rename, fsync dir) and logs it once. Side effects (downloads, RAUC
//! calls, reboots) live in the agent, never here.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use resin_api_types::{BundleRef, OsUpdateReport, OsUpdateState};
use serde::{Deserialize, Serialize};

/// File name of the persisted state inside the state directory.
pub const STATE_FILE: &str = "osupdate.json";
/// Version of the persisted format; bumped on incompatible changes.
pub const FORMAT_VERSION: u32 = 1;

/// Every state of an OS update. The data each state carries is what a
/// restarted agent needs to resume (or fail) from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum State {
    /// Nothing in flight.
    Idle,
    /// Fetching the bundle; `bytes` is how much was there when persisted
    /// (the `.part` file is the truth when resuming).
    Downloading {
        version: String,
        bundle: BundleRef,
        bytes: u64,
        /// The cloud was reachable when the update started, so the health
        /// check after boot requires it again.
        cloud_required: bool,
    },
    /// RAUC is writing the bundle into the other slot.
    Installing {
        version: String,
        bundle_path: PathBuf,
        /// Bootname of the slot running when the install started; RAUC must
        /// never be asked to install while another slot is booted than this.
        booted_slot: String,
        /// RAUC's `installed.count` of the other slot before the install,
        /// so a restart can tell whether this install finished.
        other_installed_count: Option<u32>,
        progress: u8,
        cloud_required: bool,
    },
    /// RAUC reported success; `target_slot` is the bootname it installed to.
    Installed {
        version: String,
        booted_slot: String,
        target_slot: String,
        cloud_required: bool,
    },
    /// A reboot into `target_slot` was requested. `boot_id` is the kernel's
    /// boot id before it, so a restart without a reboot is told apart from
    /// a reboot that fell back to `from_slot`.
    Rebooting {
        version: String,
        from_slot: String,
        target_slot: String,
        boot_id: String,
        cloud_required: bool,
    },
    /// Booted into the new slot; the health check runs. `attempt` counts
    /// agent starts in this state (a crash-looping supervisor gives up).
    Verifying {
        version: String,
        from_slot: String,
        target_slot: String,
        attempt: u32,
        cloud_required: bool,
    },
    /// The new slot was marked good.
    Committed { version: String, slot: String },
    /// The update failed before any reboot; the running slot is untouched.
    Failed { version: String, reason: String },
    /// The device runs (or is on its way back to) the old slot.
    /// `bad_slot` is the slot marked bad, so a restart that still finds it
    /// booted marks it bad again and asks for the reboot again.
    RolledBack {
        version: String,
        reason: String,
        bad_slot: Option<String>,
    },
}

/// A transition that the current state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("OS-update transition {transition} is not allowed from state {from}")]
pub struct TransitionError {
    pub transition: &'static str,
    pub from: &'static str,
}

impl State {
    /// Short name, as logged and reported.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Downloading { .. } => "downloading",
            Self::Installing { .. } => "installing",
            Self::Installed { .. } => "installed",
            Self::Rebooting { .. } => "rebooting",
            Self::Verifying { .. } => "verifying",
            Self::Committed { .. } => "committed",
            Self::Failed { .. } => "failed",
            Self::RolledBack { .. } => "rolled-back",
        }
    }

    /// The version being (or last) attempted.
    pub fn version(&self) -> Option<&str> {
        match self {
            Self::Idle => None,
            Self::Downloading { version, .. }
            | Self::Installing { version, .. }
            | Self::Installed { version, .. }
            | Self::Rebooting { version, .. }
            | Self::Verifying { version, .. }
            | Self::Committed { version, .. }
            | Self::Failed { version, .. }
            | Self::RolledBack { version, .. } => Some(version),
        }
    }

    /// True when no update is in flight.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Idle | Self::Committed { .. } | Self::Failed { .. } | Self::RolledBack { .. }
        )
    }

    fn refuse(&self, transition: &'static str) -> TransitionError {
        TransitionError {
            transition,
            from: self.name(),
        }
    }

    /// Idle/committed/failed/rolled-back (or a download of another
    /// version) → downloading.
    pub fn start_download(
        &self,
        version: &str,
        bundle: &BundleRef,
        cloud_required: bool,
    ) -> Result<State, TransitionError> {
        match self {
            Self::Idle
            | Self::Committed { .. }
            | Self::Failed { .. }
            | Self::RolledBack { .. }
            | Self::Downloading { .. } => Ok(Self::Downloading {
                version: version.to_string(),
                bundle: bundle.clone(),
                bytes: 0,
                cloud_required,
            }),
            _ => Err(self.refuse("start_download")),
        }
    }

    /// Downloading → idle: the target went back to the running version.
    pub fn cancel(&self) -> Result<State, TransitionError> {
        match self {
            Self::Downloading { .. } => Ok(Self::Idle),
            _ => Err(self.refuse("cancel")),
        }
    }

    /// Installing → installing with new progress (not a state change).
    pub fn install_progress(&self, pct: u8) -> Result<State, TransitionError> {
        match self {
            Self::Installing { .. } => {
                let mut next = self.clone();
                if let Self::Installing { progress, .. } = &mut next {
                    *progress = pct.min(100);
                }
                Ok(next)
            }
            _ => Err(self.refuse("install_progress")),
        }
    }

    /// Downloading → installing, once the bundle is complete and verified.
    pub fn downloaded(
        &self,
        bundle_path: &Path,
        booted_slot: &str,
        other_installed_count: Option<u32>,
    ) -> Result<State, TransitionError> {
        match self {
            Self::Downloading {
                version,
                cloud_required,
                ..
            } => Ok(Self::Installing {
                version: version.clone(),
                bundle_path: bundle_path.to_path_buf(),
                booted_slot: booted_slot.to_string(),
                other_installed_count,
                progress: 0,
                cloud_required: *cloud_required,
            }),
            _ => Err(self.refuse("downloaded")),
        }
    }

    /// Installing → installed, when RAUC reported success.
    pub fn installed(&self, target_slot: &str) -> Result<State, TransitionError> {
        match self {
            Self::Installing {
                version,
                booted_slot,
                cloud_required,
                ..
            } => Ok(Self::Installed {
                version: version.clone(),
                booted_slot: booted_slot.clone(),
                target_slot: target_slot.to_string(),
                cloud_required: *cloud_required,
            }),
            _ => Err(self.refuse("installed")),
        }
    }

    /// Installed → rebooting (persisted before the reboot is requested);
    /// also rebooting → rebooting when the request is repeated.
    pub fn reboot(&self, boot_id: &str) -> Result<State, TransitionError> {
        match self {
            Self::Installed {
                version,
                booted_slot,
                target_slot,
                cloud_required,
            } => Ok(Self::Rebooting {
                version: version.clone(),
                from_slot: booted_slot.clone(),
                target_slot: target_slot.clone(),
                boot_id: boot_id.to_string(),
                cloud_required: *cloud_required,
            }),
            Self::Rebooting { .. } => Ok(self.clone()),
            _ => Err(self.refuse("reboot")),
        }
    }

    /// Rebooting → verifying (booted into the target slot), or verifying →
    /// verifying with the attempt counted up (the agent restarted).
    pub fn verify(&self) -> Result<State, TransitionError> {
        match self {
            Self::Rebooting {
                version,
                from_slot,
                target_slot,
                cloud_required,
                ..
            } => Ok(Self::Verifying {
                version: version.clone(),
                from_slot: from_slot.clone(),
                target_slot: target_slot.clone(),
                attempt: 1,
                cloud_required: *cloud_required,
            }),
            Self::Verifying {
                version,
                from_slot,
                target_slot,
                attempt,
                cloud_required,
            } => Ok(Self::Verifying {
                version: version.clone(),
                from_slot: from_slot.clone(),
                target_slot: target_slot.clone(),
                attempt: attempt.saturating_add(1),
                cloud_required: *cloud_required,
            }),
            _ => Err(self.refuse("verify")),
        }
    }

    /// Verifying → committed, after `Mark("good","booted")`.
    pub fn commit(&self) -> Result<State, TransitionError> {
        match self {
            Self::Verifying {
                version,
                target_slot,
                ..
            } => Ok(Self::Committed {
                version: version.clone(),
                slot: target_slot.clone(),
            }),
            _ => Err(self.refuse("commit")),
        }
    }

    /// Downloading/installing/installed → failed: nothing was booted, the
    /// running slot is untouched.
    pub fn fail(&self, reason: &str) -> Result<State, TransitionError> {
        match self {
            Self::Downloading { version, .. }
            | Self::Installing { version, .. }
            | Self::Installed { version, .. } => Ok(Self::Failed {
                version: version.clone(),
                reason: reason.to_string(),
            }),
            _ => Err(self.refuse("fail")),
        }
    }

    /// Rebooting/verifying → rolled-back. `bad_slot` is the new slot when
    /// it is still booted and must be marked bad and left by a reboot;
    /// `None` when the bootloader already fell back.
    pub fn roll_back(
        &self,
        reason: &str,
        bad_slot: Option<&str>,
    ) -> Result<State, TransitionError> {
        match self {
            Self::Rebooting { version, .. } | Self::Verifying { version, .. } => {
                Ok(Self::RolledBack {
                    version: version.clone(),
                    reason: reason.to_string(),
                    bad_slot: bad_slot.map(str::to_string),
                })
            }
            Self::RolledBack {
                version,
                reason: old,
                ..
            } => Ok(Self::RolledBack {
                version: version.clone(),
                reason: old.clone(),
                bad_slot: bad_slot.map(str::to_string),
            }),
            _ => Err(self.refuse("roll_back")),
        }
    }

    /// Committed → rolled-back: the device booted the other slot again
    /// after the update was committed (the new slot stopped booting and the
    /// bootloader fell back).
    pub fn fell_back_after_commit(&self, reason: &str) -> Result<State, TransitionError> {
        match self {
            Self::Committed { version, .. } => Ok(Self::RolledBack {
                version: version.clone(),
                reason: reason.to_string(),
                bad_slot: None,
            }),
            _ => Err(self.refuse("fell_back_after_commit")),
        }
    }

    /// Committed/failed/rolled-back → idle (the target went back to the
    /// running version); idle → idle.
    pub fn clear(&self) -> Result<State, TransitionError> {
        match self {
            Self::Idle | Self::Committed { .. } | Self::Failed { .. } | Self::RolledBack { .. } => {
                Ok(Self::Idle)
            }
            _ => Err(self.refuse("clear")),
        }
    }

    /// The report the supervisor sends to the cloud (without `boot_slot`,
    /// which the agent fills in).
    pub fn report(&self) -> OsUpdateReport {
        let (state, progress, reason) = match self {
            Self::Idle => (OsUpdateState::Idle, None, None),
            Self::Downloading { bundle, bytes, .. } => (
                OsUpdateState::Downloading,
                Some(percent(*bytes, bundle.size)),
                None,
            ),
            Self::Installing { progress, .. } => (OsUpdateState::Installing, Some(*progress), None),
            Self::Installed { .. } => (OsUpdateState::Installing, Some(100), None),
            Self::Rebooting { .. } => (OsUpdateState::Rebooting, None, None),
            Self::Verifying { .. } => (OsUpdateState::Verifying, None, None),
            Self::Committed { .. } => (OsUpdateState::Committed, None, None),
            Self::Failed { reason, .. } => (OsUpdateState::Failed, None, Some(reason.clone())),
            Self::RolledBack { reason, .. } => {
                (OsUpdateState::RolledBack, None, Some(reason.clone()))
            }
        };
        OsUpdateReport {
            state,
            target_version: self.version().map(str::to_string),
            progress,
            reason,
            boot_slot: None,
        }
    }
}

/// `done` of `total` in percent, 0..=100.
pub fn percent(done: u64, total: u64) -> u8 {
    if total == 0 {
        return 0;
    }
    (done.min(total).saturating_mul(100) / total) as u8
}

/// A version (and bundle) that failed or rolled back, so it is retried only
/// after a backoff or when the target changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedAttempt {
    /// sha256 of the bundle that failed; a new bundle is a new target.
    pub sha256: String,
    pub attempts: u32,
    /// Seconds since the Unix epoch of the last failure.
    pub last_failure: u64,
    /// The update was committed and the device fell back from it later:
    /// this bundle is not installed again (no backoff retry), only another
    /// target is.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub after_commit: bool,
}

impl FailedAttempt {
    /// Backoff after `attempts` failures: `base * 2^(attempts-1)`, capped.
    pub fn retry_at(&self, base_secs: u64, max_secs: u64) -> u64 {
        let exp = self.attempts.saturating_sub(1).min(20);
        let wait = base_secs.saturating_mul(1u64 << exp).min(max_secs);
        self.last_failure.saturating_add(wait)
    }
}

/// What `osupdate.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    pub format: u32,
    pub state: State,
    /// Failed or rolled-back versions by version string.
    #[serde(default)]
    pub failed: BTreeMap<String, FailedAttempt>,
    /// sha256 of the bundle of the update in flight (set on download).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight_sha256: Option<String>,
}

/// Errors loading or saving the persisted state.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid OS-update state: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} has format {found}, this agent reads format {FORMAT_VERSION}")]
    Format { path: PathBuf, found: u32 },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Atomic(#[from] resin_fsutil::Error),
    #[error(transparent)]
    Transition(#[from] TransitionError),
}

/// The state machine with its file: every transition is persisted before
/// it takes effect in memory, and logged once.
#[derive(Debug)]
pub struct Machine {
    path: PathBuf,
    data: Persisted,
}

impl Machine {
    /// Loads `state_dir/osupdate.json`, or starts idle when it is missing.
    pub fn load(state_dir: &Path) -> Result<Self, StoreError> {
        let path = state_dir.join(STATE_FILE);
        let data = match fs::read(&path) {
            Ok(bytes) => {
                #[derive(Deserialize)]
                struct Head {
                    format: u32,
                }
                let head: Head =
                    serde_json::from_slice(&bytes).map_err(|source| StoreError::Parse {
                        path: path.clone(),
                        source,
                    })?;
                if head.format != FORMAT_VERSION {
                    return Err(StoreError::Format {
                        path,
                        found: head.format,
                    });
                }
                serde_json::from_slice(&bytes).map_err(|source| StoreError::Parse {
                    path: path.clone(),
                    source,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted {
                format: FORMAT_VERSION,
                state: State::Idle,
                failed: BTreeMap::new(),
                in_flight_sha256: None,
            },
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        Ok(Self { path, data })
    }

    /// An idle machine at `state_dir` that has not read any file.
    pub fn idle_at(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(STATE_FILE),
            data: Persisted {
                format: FORMAT_VERSION,
                state: State::Idle,
                failed: BTreeMap::new(),
                in_flight_sha256: None,
            },
        }
    }

    pub fn state(&self) -> &State {
        &self.data.state
    }

    pub fn failed(&self) -> &BTreeMap<String, FailedAttempt> {
        &self.data.failed
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies a transition computed from the current state, persists it,
    /// then logs it at info with from/to/version.
    pub fn apply(
        &mut self,
        f: impl FnOnce(&State) -> Result<State, TransitionError>,
    ) -> Result<(), StoreError> {
        let next = f(&self.data.state)?;
        self.set(next)
    }

    /// Like [`Machine::apply`] for a state computed elsewhere (used by
    /// tests to put the machine into a given state).
    pub fn set(&mut self, next: State) -> Result<(), StoreError> {
        let from = self.data.state.name();
        let mut data = self.data.clone();
        let after_commit = matches!(self.data.state, State::Committed { .. });
        match &next {
            State::Failed { version, .. } | State::RolledBack { version, .. }
                if !self.data.state.is_terminal() || after_commit =>
            {
                let sha256 = self.data.in_flight_sha256.clone().unwrap_or_default();
                let entry = data.failed.entry(version.clone()).or_insert(FailedAttempt {
                    sha256: sha256.clone(),
                    attempts: 0,
                    last_failure: 0,
                    after_commit: false,
                });
                if entry.sha256 != sha256 {
                    entry.attempts = 0;
                    entry.sha256 = sha256;
                }
                entry.attempts = entry.attempts.saturating_add(1);
                entry.last_failure = unix_now();
                entry.after_commit |= after_commit;
            }
            State::Committed { version, .. } => {
                data.failed.remove(version);
            }
            State::Downloading { bundle, .. } => {
                data.in_flight_sha256 = Some(bundle.sha256.clone());
            }
            _ => {}
        }
        data.state = next;
        write_atomic(&self.path, &data)?;
        let version = data.state.version().unwrap_or("").to_string();
        self.data = data;
        if from != self.data.state.name() {
            tracing::info!(
                from,
                to = self.data.state.name(),
                version,
                "OS-update transition"
            );
        } else {
            tracing::debug!(state = from, version, "OS-update state updated");
        }
        Ok(())
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes `data` as JSON to `path` atomically (resin-fsutil: temp file,
/// fsync, rename, fsync the directory). A crash leaves the old or the new file.
fn write_atomic(path: &Path, data: &Persisted) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(data).map_err(|e| StoreError::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    Ok(resin_fsutil::write_atomic(path, &bytes, 0o644)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn bundle() -> BundleRef {
        BundleRef {
            url: "http://127.0.0.1/os/bundle/1".into(),
            sha256: "ab".repeat(32),
            size: 1000,
        }
    }

    /// One sample of every state, in the order of the happy path.
    fn samples() -> Vec<State> {
        let idle = State::Idle;
        let dl = idle.start_download("2.0", &bundle(), true).unwrap();
        let inst = dl
            .downloaded(Path::new("/d/x.raucb"), "A", Some(0))
            .unwrap();
        let done = inst.installed("B").unwrap();
        let reb = done.reboot("boot-1").unwrap();
        let ver = reb.verify().unwrap();
        let com = ver.commit().unwrap();
        let failed = dl.fail("no space").unwrap();
        let rb = reb.roll_back("fell back", None).unwrap();
        vec![idle, dl, inst, done, reb, ver, com, failed, rb]
    }

    type Tr = (&'static str, fn(&State) -> Result<State, TransitionError>);

    fn transitions() -> Vec<Tr> {
        vec![
            ("start_download", |s| {
                s.start_download("3.0", &bundle(), false)
            }),
            ("cancel", State::cancel),
            ("downloaded", |s| s.downloaded(Path::new("/b"), "A", None)),
            ("install_progress", |s| s.install_progress(50)),
            ("installed", |s| s.installed("B")),
            ("reboot", |s| s.reboot("boot-1")),
            ("verify", State::verify),
            ("commit", State::commit),
            ("fail", |s| s.fail("x")),
            ("roll_back", |s| s.roll_back("x", Some("B"))),
            ("clear", State::clear),
        ]
    }

    /// The allowed (transition, source state) pairs; everything else must
    /// be refused.
    fn allowed(tr: &str, from: &str) -> bool {
        let terminal = ["idle", "committed", "failed", "rolled-back"];
        match tr {
            "start_download" => terminal.contains(&from) || from == "downloading",
            "cancel" | "downloaded" => from == "downloading",
            "install_progress" | "installed" => from == "installing",
            "reboot" => from == "installed" || from == "rebooting",
            "verify" => from == "rebooting" || from == "verifying",
            "commit" => from == "verifying",
            "fail" => ["downloading", "installing", "installed"].contains(&from),
            "roll_back" => ["rebooting", "verifying", "rolled-back"].contains(&from),
            "clear" => terminal.contains(&from),
            _ => unreachable!(),
        }
    }

    #[test]
    fn every_transition_from_every_state_is_allowed_or_refused_as_designed() {
        let mut checked = 0;
        for s in samples() {
            for (name, f) in transitions() {
                let r = f(&s);
                assert_eq!(
                    r.is_ok(),
                    allowed(name, s.name()),
                    "{name} from {}: {r:?}",
                    s.name()
                );
                if let Err(e) = r {
                    assert_eq!(e.from, s.name());
                    assert!(e.to_string().contains(name));
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 9 * 11);
    }

    #[test]
    fn happy_path_carries_its_data() {
        let s = samples();
        assert!(
            matches!(&s[2], State::Installing { booted_slot, progress: 0, .. } if booted_slot == "A")
        );
        assert!(
            matches!(&s[4], State::Rebooting { from_slot, target_slot, boot_id, cloud_required: true, .. }
            if from_slot == "A" && target_slot == "B" && boot_id == "boot-1")
        );
        assert!(matches!(&s[5], State::Verifying { attempt: 1, .. }));
        assert!(matches!(
            s[5].verify().unwrap(),
            State::Verifying { attempt: 2, .. }
        ));
        assert_eq!(
            s[6],
            State::Committed {
                version: "2.0".into(),
                slot: "B".into()
            }
        );
        for st in &s[1..] {
            assert_eq!(st.version(), Some("2.0"));
        }
    }

    #[test]
    fn reports_use_the_wire_states_with_progress_and_reason() {
        let s = samples();
        let names: Vec<_> = s.iter().map(|x| x.report().state.as_str()).collect();
        assert_eq!(
            names,
            [
                "idle",
                "downloading",
                "installing",
                "installing",
                "rebooting",
                "verifying",
                "committed",
                "failed",
                "rolled-back"
            ]
        );
        assert_eq!(s[7].report().reason.as_deref(), Some("no space"));
        assert_eq!(s[8].report().reason.as_deref(), Some("fell back"));
        assert_eq!(s[3].report().progress, Some(100));
        assert_eq!(
            s[2].install_progress(42).unwrap().report().progress,
            Some(42)
        );
        assert_eq!(s[1].report().target_version.as_deref(), Some("2.0"));
        assert_eq!(percent(5, 0), 0);
        assert_eq!(percent(2000, 1000), 100);
    }

    #[test]
    fn every_state_survives_a_restart_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        for st in samples() {
            let mut m = Machine::load(dir.path()).unwrap();
            m.set(st.clone()).unwrap();
            drop(m); // "crash"
            let again = Machine::load(dir.path()).unwrap();
            assert_eq!(again.state(), &st);
            let names: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, [STATE_FILE], "no temp file is left behind");
        }
        let text = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        assert!(text.contains("\"format\": 1"), "{text}");
        assert!(text.contains("\"state\": \"rolled-back\""), "{text}");
    }

    #[test]
    fn a_refused_transition_changes_nothing_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Machine::load(dir.path()).unwrap();
        m.apply(|s| s.start_download("2.0", &bundle(), false))
            .unwrap();
        let before = std::fs::read(m.path()).unwrap();
        let err = m.apply(State::commit).unwrap_err();
        assert!(matches!(err, StoreError::Transition(_)));
        assert_eq!(std::fs::read(m.path()).unwrap(), before);
        assert_eq!(m.state().name(), "downloading");
    }

    #[test]
    fn failures_are_remembered_with_backoff_and_forgotten_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Machine::load(dir.path()).unwrap();
        m.apply(|s| s.start_download("2.0", &bundle(), false))
            .unwrap();
        m.apply(|s| s.fail("bad signature")).unwrap();
        let f = m.failed().get("2.0").unwrap().clone();
        assert_eq!(f.attempts, 1);
        assert_eq!(f.sha256, bundle().sha256);
        assert_eq!(f.retry_at(600, 86400), f.last_failure + 600);
        m.apply(|s| s.start_download("2.0", &bundle(), false))
            .unwrap();
        m.apply(|s| s.fail("bad signature")).unwrap();
        let f = Machine::load(dir.path())
            .unwrap()
            .failed()
            .get("2.0")
            .unwrap()
            .clone();
        assert_eq!(f.attempts, 2);
        assert_eq!(f.retry_at(600, 86400), f.last_failure + 1200);
        let big = FailedAttempt {
            attempts: 40,
            ..f.clone()
        };
        assert_eq!(big.retry_at(600, 86400), f.last_failure + 86400);
        // A success of that version clears it.
        let mut m = Machine::load(dir.path()).unwrap();
        m.set(State::Verifying {
            version: "2.0".into(),
            from_slot: "A".into(),
            target_slot: "B".into(),
            attempt: 1,
            cloud_required: false,
        })
        .unwrap();
        m.apply(State::commit).unwrap();
        assert!(m.failed().is_empty());
    }

    #[test]
    fn unknown_format_and_garbage_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(STATE_FILE);
        std::fs::write(&p, r#"{"format":2,"state":{"state":"idle"}}"#).unwrap();
        let e = Machine::load(dir.path()).unwrap_err();
        assert!(e.to_string().contains("format 2"), "{e}");
        std::fs::write(&p, "{nope").unwrap();
        let e = Machine::load(dir.path()).unwrap_err();
        assert!(e.to_string().contains("osupdate.json"), "{e}");
        std::fs::write(&p, r#"{"format":1,"state":{"state":"flying"}}"#).unwrap();
        assert!(matches!(
            Machine::load(dir.path()),
            Err(StoreError::Parse { .. })
        ));
    }
}
