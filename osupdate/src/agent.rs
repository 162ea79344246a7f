//! The driver of the state machine: reads the target, the health and RAUC,
//! performs the side effects (download, install, mark, reboot request) and
//! moves the [`Machine`] along. On start it resumes from whatever state
//! `osupdate.json` holds, never asking RAUC to install while a slot other
//! than the one recorded is booted.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use resin_api_types::{BundleRef, OsTarget, OsUpdateReport};
use tokio::sync::{mpsc, watch};

use crate::download::{self, DownloadError, DownloadRequest};
use crate::failpoint::{self, FailAction, Fired};
use crate::health;
use crate::rauc::{Rauc, RaucError, SlotStatus};
use crate::state::{Machine, State, StoreError};
use crate::{AgentConfig, Health, RebootRequest};

/// Tunables beyond [`AgentConfig`], with production defaults.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The kernel's boot id (default `/proc/sys/kernel/random/boot_id`):
    /// tells a real reboot from an agent restart.
    pub boot_id_path: PathBuf,
    /// How long the health check may take after booting the new slot
    /// (default 300 s).
    pub health_timeout: Duration,
    /// Longest a RAUC installation may take (default 30 min).
    pub install_timeout: Duration,
    /// First backoff before retrying a failed version (default 10 min);
    /// it doubles per failure up to `retry_max`.
    pub retry_base: Duration,
    /// Longest backoff (default 24 h).
    pub retry_max: Duration,
    /// How often the agent looks again without a target change, e.g. to
    /// retry after an error or a backoff (default 60 s).
    pub recheck_interval: Duration,
    /// Space that must stay free besides the bundle (default 16 MiB).
    pub free_space_margin: u64,
    /// Connection attempts per download (default 5), each resuming.
    pub download_attempts: u32,
    /// Pause between download attempts (default 2 s).
    pub download_retry_delay: Duration,
    /// Longest wait for the next bytes of a bundle download before the
    /// stream counts as stalled and is resumed (default 60 s).
    pub download_read_timeout: Duration,
    /// Agent starts in `verifying` before the update is given up
    /// (default 3).
    pub max_verify_attempts: u32,
    /// Failpoints armed for this agent (only with the `failpoints` feature).
    pub failpoints: Vec<(String, FailAction)>,
    /// Written once the booted slot is confirmed good in this boot (default
    /// `/run/resin/boot-confirmed`, on a tmpfs so every boot starts without
    /// it). `resin-boot-guard` reboots a boot that never gets it. `None`:
    /// no file.
    pub confirm_marker: Option<PathBuf>,
    /// TLS trust of bundle downloads (the supervisor passes config.json's
    /// `rootCA`); `None`: ureq's public roots.
    pub tls: Option<ureq::tls::TlsConfig>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            boot_id_path: PathBuf::from("/proc/sys/kernel/random/boot_id"),
            health_timeout: Duration::from_secs(300),
            install_timeout: Duration::from_secs(30 * 60),
            retry_base: Duration::from_secs(600),
            retry_max: Duration::from_secs(24 * 3600),
            recheck_interval: Duration::from_secs(60),
            free_space_margin: 16 * 1024 * 1024,
            download_attempts: 5,
            download_retry_delay: Duration::from_secs(2),
            download_read_timeout: Duration::from_secs(60),
            max_verify_attempts: 3,
            failpoints: Vec::new(),
            confirm_marker: Some(PathBuf::from(BOOT_CONFIRMED)),
            tls: None,
        }
    }
}

/// Where the agent records that this boot was confirmed (see
/// [`AgentOptions::confirm_marker`]).
pub const BOOT_CONFIRMED: &str = "/run/resin/boot-confirmed";

/// Tries of `Mark("bad","booted")` before the agent reboots without it.
const MARK_BAD_ATTEMPTS: u32 = 3;
/// Pause between those tries.
const MARK_BAD_RETRY: Duration = Duration::from_secs(1);

/// The leading numeric part of a version (`2.10.1` of `2.10.1-rc1+b3`),
/// or `None` when it does not start with a number.
fn numeric_core(v: &str) -> Option<Vec<u64>> {
    let core: String = v
        .trim_start_matches(['v', 'V'])
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let parts: Vec<u64> = core
        .split('.')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    (!parts.is_empty()).then_some(parts)
}

/// True when `target` is an older version than `running`, judged by their
/// numeric cores (`1.9` < `1.10` < `2`; `2.0` = `2.0.0`). Versions without a
/// numeric core, or with the same core, are never a downgrade.
pub fn is_downgrade(running: &str, target: &str) -> bool {
    let (Some(mut r), Some(mut t)) = (numeric_core(running), numeric_core(target)) else {
        return false;
    };
    let n = r.len().max(t.len());
    r.resize(n, 0);
    t.resize(n, 0);
    t < r
}

/// Does the device refuse to install `target` over `running`? Only an older
/// version, and only when the cloud's target does not allow a downgrade.
fn refuses_downgrade(running: &str, target: &str, allowed: bool) -> bool {
    !allowed && is_downgrade(running, target)
}

/// Why one step of the agent stopped early.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Rauc(#[from] RaucError),
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error(transparent)]
    Fired(#[from] Fired),
    #[error("cannot read the OS version from {path}: {reason}")]
    OsRelease { path: PathBuf, reason: String },
    #[error("cannot read the boot id from {path}: {source}")]
    BootId {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the download task failed: {0}")]
    Join(String),
    #[error("the supervisor stopped taking reboot requests")]
    RebootChannelClosed,
}

/// The running OS version: `VERSION_ID` from os-release, else `VERSION`.
pub fn os_version(path: &Path) -> Result<String, AgentError> {
    let text = std::fs::read_to_string(path).map_err(|e| AgentError::OsRelease {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let get = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
        })
    };
    get("VERSION_ID")
        .filter(|v| !v.is_empty())
        .or_else(|| get("VERSION").filter(|v| !v.is_empty()))
        .ok_or_else(|| AgentError::OsRelease {
            path: path.to_path_buf(),
            reason: "neither VERSION_ID nor VERSION is set".into(),
        })
}

/// What a step asks the loop to do next.
enum Next {
    /// Nothing to do until the target changes or the recheck interval.
    Wait,
}

pub(crate) struct Agent {
    cfg: AgentConfig,
    opts: AgentOptions,
    machine: Machine,
    report: Arc<watch::Sender<OsUpdateReport>>,
    target: watch::Receiver<Option<OsTarget>>,
    health: watch::Receiver<Health>,
    reboot: mpsc::Sender<RebootRequest>,
    rauc: Option<Rauc>,
    boot_slot_name: Option<String>,
    /// A note shown as the report's reason while idle (e.g. no bundle).
    note: Option<String>,
    reboot_requested: bool,
    recovered: bool,
    /// The booted slot was marked good in this boot (RAUC `Mark`).
    boot_confirmed: bool,
}

impl Agent {
    pub(crate) fn new(
        cfg: AgentConfig,
        opts: AgentOptions,
        report: watch::Sender<OsUpdateReport>,
        target: watch::Receiver<Option<OsTarget>>,
        health: watch::Receiver<Health>,
        reboot: mpsc::Sender<RebootRequest>,
    ) -> Self {
        let machine = load_or_set_aside(&cfg.state_dir);
        let agent = Self {
            cfg,
            opts,
            machine,
            report: Arc::new(report),
            target,
            health,
            reboot,
            rauc: None,
            boot_slot_name: None,
            note: None,
            reboot_requested: false,
            recovered: false,
            boot_confirmed: false,
        };
        agent.publish();
        agent
    }

    /// Runs until a failpoint stops it or the target sender is dropped.
    pub(crate) async fn run(mut self) {
        loop {
            match self.step().await {
                Ok(Next::Wait) => {}
                Err(AgentError::Fired(f)) => {
                    tracing::warn!(failpoint = %f.0, "OS-update agent stopped by a failpoint");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, state = self.machine.state().name(), "OS-update step failed; retrying later");
                    self.note = Some(e.to_string());
                    self.publish();
                }
            }
            let confirmed = self.boot_confirmed;
            tokio::select! {
                changed = self.target.changed() => {
                    if changed.is_err() {
                        tracing::info!("OS-update agent stops: target channel closed");
                        return;
                    }
                }
                // Until this boot is confirmed, a health change may allow it.
                Ok(()) = self.health.changed(), if !confirmed => {}
                _ = tokio::time::sleep(self.opts.recheck_interval) => {}
            }
        }
    }

    fn publish(&self) {
        let mut r = self.machine.state().report();
        r.boot_slot = self.boot_slot_name.clone();
        if r.reason.is_none() && self.machine.state().is_terminal() {
            r.reason = self.note.clone();
        }
        self.report.send_replace(r);
    }

    async fn rauc(&mut self) -> Result<Rauc, AgentError> {
        if let Some(r) = &self.rauc {
            return Ok(r.clone());
        }
        let r = Rauc::connect(self.cfg.dbus_address.as_deref()).await?;
        self.rauc = Some(r.clone());
        Ok(r)
    }

    fn boot_id(&self) -> Result<String, AgentError> {
        std::fs::read_to_string(&self.opts.boot_id_path)
            .map(|s| s.trim().to_string())
            .map_err(|source| AgentError::BootId {
                path: self.opts.boot_id_path.clone(),
                source,
            })
    }

    fn fail_point(&self, name: &str) -> Result<(), AgentError> {
        failpoint::hit(name, &self.opts.failpoints)?;
        Ok(())
    }

    async fn step(&mut self) -> Result<Next, AgentError> {
        let rauc = match self.rauc().await {
            Ok(r) => r,
            Err(e) => {
                self.rauc = None;
                return Err(e);
            }
        };
        let booted = match rauc.booted_slot().await {
            Ok(s) => s,
            Err(e) => {
                // A dead connection (RAUC restarted) is re-made next time.
                self.rauc = None;
                return Err(e.into());
            }
        };
        self.boot_slot_name = Some(booted.name.clone());
        if !self.recovered {
            self.recover(&rauc, &booted).await?;
            self.recovered = true;
        }
        self.confirm_boot(&rauc, &booted).await?;
        self.publish();
        loop {
            let state = self.machine.state().clone();
            match state {
                State::Downloading {
                    ref version,
                    ref bundle,
                    ..
                } => {
                    let target = self.target.borrow().clone();
                    let running = os_version(&self.cfg.os_release_path)?;
                    match target {
                        Some(OsTarget {
                            version: ref tv,
                            bundle: Some(ref tb),
                            ..
                        }) if tv == version && tb == bundle => {
                            self.do_download(&rauc, version, bundle).await?;
                        }
                        Some(OsTarget {
                            version: ref tv,
                            bundle: Some(ref tb),
                            allow_downgrade,
                        }) if *tv != running
                            && !refuses_downgrade(&running, tv, allow_downgrade) =>
                        {
                            let cloud = self.health.borrow().cloud_reachable;
                            self.machine.apply(|s| s.start_download(tv, tb, cloud))?;
                        }
                        None => {
                            // No target yet (the supervisor has not polled
                            // since the restart): keep the download state.
                            self.publish();
                            return Ok(Next::Wait);
                        }
                        _ => {
                            // The target went back to what runs, or lost
                            // its bundle.
                            self.machine.apply(State::cancel)?;
                        }
                    }
                }
                State::Installing { .. } => self.do_install(&rauc).await?,
                State::Installed { .. } => {
                    let boot_id = self.boot_id()?;
                    self.machine.apply(|s| s.reboot(&boot_id))?;
                }
                State::Rebooting {
                    ref version,
                    ref from_slot,
                    ref target_slot,
                    ref boot_id,
                    ..
                } => {
                    if *boot_id == self.boot_id()? {
                        // Reported before the reboot is asked for: the
                        // supervisor sends it to the cloud first.
                        self.publish();
                        // No reboot yet: ask (once per agent start).
                        if !self.reboot_requested {
                            self.request_reboot(format!(
                                "OS update to {version}: boot slot {target_slot}"
                            ))
                            .await?;
                        }
                        return Ok(Next::Wait);
                    }
                    if booted.bootname == *target_slot {
                        self.machine.apply(State::verify)?;
                    } else {
                        let reason = format!(
                            "booted back into slot {} ({}) instead of {target_slot} after the update to {version}: the bootloader fell back (the new slot {from_slot}→{target_slot} did not boot)",
                            booted.bootname, booted.name
                        );
                        self.machine.apply(|s| s.roll_back(&reason, None))?;
                        self.mark_other_bad(&rauc).await;
                        self.confirm_boot(&rauc, &booted).await?;
                    }
                }
                State::Verifying { .. } => self.do_verify(&rauc, &booted).await?,
                State::RolledBack {
                    bad_slot: Some(ref bad),
                    ..
                } => {
                    if booted.bootname == *bad {
                        // Still in the slot marked bad: wait for the
                        // reboot, asking for it if nobody did yet.
                        if !self.reboot_requested {
                            let version = self.machine.state().version().unwrap_or("").to_string();
                            self.leave_bad_slot(
                                &rauc,
                                format!("OS update to {version} failed: falling back"),
                            )
                            .await?;
                        }
                        self.publish();
                        return Ok(Next::Wait);
                    }
                    self.machine.apply(|s| s.roll_back("", None))?;
                }
                State::Idle
                | State::Committed { .. }
                | State::Failed { .. }
                | State::RolledBack { .. } => {
                    if !self.consider_target()? {
                        self.publish();
                        return Ok(Next::Wait);
                    }
                }
            }
            self.publish();
        }
    }

    /// Confirms the booted slot once per boot: RAUC `Mark("good","booted")`
    /// (with GRUB this resets the slot's boot counter), then the marker
    /// file. Skipped while the state machine itself decides about this boot
    /// (verifying a new slot, a slot it marked bad, a reboot that just
    /// happened). Needs the engine reachable and the supervisor loop running
    /// (not the cloud): at once when idle; before a download or install
    /// resumes it waits up to the health timeout, because RAUC takes no
    /// `Mark` while it installs.
    async fn confirm_boot(&mut self, rauc: &Rauc, booted: &SlotStatus) -> Result<(), AgentError> {
        if self.boot_confirmed {
            return Ok(());
        }
        let busy = match self.machine.state() {
            State::Verifying { .. } => return Ok(()),
            State::RolledBack {
                bad_slot: Some(bad),
                ..
            } if *bad == booted.bootname => return Ok(()),
            State::Rebooting { boot_id, .. } if *boot_id != self.boot_id()? => return Ok(()),
            State::Downloading { .. } | State::Installing { .. } => true,
            _ => false,
        };
        let healthy = if busy {
            match health::wait_healthy(&mut self.health, false, self.opts.health_timeout).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, slot = %booted.bootname, "booted slot not confirmed; the update goes on");
                    false
                }
            }
        } else {
            health::missing(&self.health.borrow(), false).is_empty()
        };
        if !healthy {
            return Ok(());
        }
        let (slot, msg) = rauc.mark("good", "booted").await?;
        tracing::info!(slot, msg, "confirmed the booted slot good for this boot");
        self.boot_confirmed = true;
        self.write_confirm_marker(&booted.bootname);
        Ok(())
    }

    fn write_confirm_marker(&self, bootname: &str) {
        let Some(path) = &self.opts.confirm_marker else {
            return;
        };
        let tmp = path.with_extension("tmp");
        let r = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&tmp, format!("slot={bootname}\n")))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = r {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the boot confirmation");
        }
    }

    /// After a bootloader fallback: marks the slot that failed bad, so it is
    /// not tried again before the next install.
    async fn mark_other_bad(&self, rauc: &Rauc) {
        match rauc.mark("bad", "other").await {
            Ok((slot, msg)) => tracing::info!(slot, msg, "marked the slot that did not boot bad"),
            Err(e) => tracing::warn!(error = %e, "cannot mark the slot that did not boot bad"),
        }
    }

    /// What to do about a state found on start (after a crash or reboot)
    /// before the normal flow continues.
    async fn recover(&mut self, rauc: &Rauc, booted: &SlotStatus) -> Result<(), AgentError> {
        match self.machine.state().clone() {
            State::Verifying { .. } => {
                // Count this start; too many means the new OS crash-loops.
                self.machine.apply(State::verify)?;
            }
            State::RolledBack {
                bad_slot: Some(bad),
                version,
                ..
            } if booted.bootname == bad => {
                // We marked it bad but the reboot did not happen: again.
                self.leave_bad_slot(
                    rauc,
                    format!("OS update to {version} failed its health check: falling back"),
                )
                .await?;
            }
            State::Committed { version, slot } if booted.bootname != slot => {
                // Committed, and now another slot boots with another OS:
                // the new slot stopped booting and the bootloader fell back.
                let running = os_version(&self.cfg.os_release_path)?;
                if running != version {
                    let reason = format!(
                        "booted back into slot {} ({}) running {running}, {version} in slot {slot} stopped booting after it was committed: the bootloader fell back",
                        booted.bootname, booted.name
                    );
                    self.machine.apply(|s| s.fell_back_after_commit(&reason))?;
                    self.mark_other_bad(rauc).await;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// In a terminal state: starts an update when the target asks for one
    /// and no backoff holds it. Returns whether a transition happened.
    fn consider_target(&mut self) -> Result<bool, AgentError> {
        let Some(target) = self.target.borrow().clone() else {
            return Ok(false);
        };
        let running = os_version(&self.cfg.os_release_path)?;
        if target.version == running {
            self.note = None;
            if matches!(
                self.machine.state(),
                State::Failed { .. } | State::RolledBack { .. }
            ) {
                self.machine.apply(State::clear)?;
                return Ok(true);
            }
            return Ok(false);
        }
        let Some(bundle) = target.bundle.clone() else {
            self.note = Some(format!(
                "the cloud has no bundle for OS version {}",
                target.version
            ));
            return Ok(false);
        };
        if refuses_downgrade(&running, &target.version, target.allow_downgrade) {
            self.note = Some(format!(
                "OS version {} is older than the running {running}: not installed (the target does not allow a downgrade: set {}=1 on the fleet or device)",
                target.version,
                resin_api_types::OS_ALLOW_DOWNGRADE_VAR
            ));
            return Ok(false);
        }
        if let Some(f) = self.machine.failed().get(&target.version) {
            if f.sha256 == bundle.sha256 && f.after_commit {
                tracing::debug!(version = %target.version, "OS version fell back after its commit; not installed again");
                return Ok(false);
            }
            if f.sha256 == bundle.sha256 {
                let at = f.retry_at(
                    self.opts.retry_base.as_secs(),
                    self.opts.retry_max.as_secs(),
                );
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                if now < at {
                    tracing::debug!(version = %target.version, retry_in = at - now, "failed OS version held back");
                    return Ok(false);
                }
            }
        }
        self.note = None;
        let cloud = self.health.borrow().cloud_reachable;
        self.machine
            .apply(|s| s.start_download(&target.version, &bundle, cloud))?;
        Ok(true)
    }

    async fn do_download(
        &mut self,
        rauc: &Rauc,
        version: &str,
        bundle: &BundleRef,
    ) -> Result<(), AgentError> {
        let req = DownloadRequest {
            url: bundle.url.clone(),
            sha256: bundle.sha256.clone(),
            size: bundle.size,
            api_key: self.cfg.device_api_key.clone(),
            dir: self.cfg.download_dir.clone(),
            free_space_margin: self.opts.free_space_margin,
            attempts: self.opts.download_attempts,
            retry_delay: self.opts.download_retry_delay,
            read_timeout: self.opts.download_read_timeout,
            tls: self.opts.tls.clone(),
        };
        let cancel = Arc::new(AtomicBool::new(false));
        let report = self.report.clone();
        let size = bundle.size;
        let mut base = self.machine.state().report();
        base.boot_slot = self.boot_slot_name.clone();
        let job = {
            let cancel = cancel.clone();
            tokio::task::spawn_blocking(move || {
                let mut last = u8::MAX;
                download::download(&req, &cancel, &mut |bytes| {
                    let pct = crate::state::percent(bytes, size);
                    if pct != last {
                        last = pct;
                        let mut r = base.clone();
                        r.progress = Some(pct);
                        report.send_replace(r);
                    }
                })
            })
        };
        tokio::pin!(job);
        let wanted = (version.to_string(), bundle.clone());
        let result = loop {
            tokio::select! {
                r = &mut job => break r,
                changed = self.target.changed() => {
                    let still = matches!(&*self.target.borrow(), Some(t) if t.version == wanted.0 && t.bundle.as_ref() == Some(&wanted.1));
                    if changed.is_err() || !still {
                        cancel.store(true, Ordering::Relaxed);
                    }
                }
            }
        };
        match result.map_err(|e| AgentError::Join(e.to_string()))? {
            Ok(path) => {
                let boot = rauc.boot_slot().await?;
                let slots = rauc.slot_status().await?;
                let count = other_slot(&slots, &boot).and_then(|s| s.installed_count);
                self.machine.apply(|s| s.downloaded(&path, &boot, count))?;
                Ok(())
            }
            Err(DownloadError::Cancelled) => {
                tracing::info!(version, "bundle download cancelled: the target changed");
                Ok(())
            }
            Err(e @ (DownloadError::Http { .. } | DownloadError::Interrupted { .. })) => {
                // Keep the .part file and the state: resume next time.
                Err(e.into())
            }
            Err(DownloadError::Status { status, url }) if status >= 500 => {
                Err(DownloadError::Status { status, url }.into())
            }
            Err(e) => {
                self.machine.apply(|s| s.fail(&e.to_string()))?;
                Ok(())
            }
        }
    }

    async fn do_install(&mut self, rauc: &Rauc) -> Result<(), AgentError> {
        let State::Installing {
            version,
            bundle_path,
            booted_slot,
            other_installed_count,
            ..
        } = self.machine.state().clone()
        else {
            return Ok(());
        };
        // An installation may still run from before a crash: let it end.
        rauc.wait_idle(self.opts.install_timeout).await?;
        let boot = rauc.boot_slot().await?;
        if boot != booted_slot {
            let reason = format!(
                "the booted slot changed from {booted_slot} to {boot} during the installation of {version}; not installing again"
            );
            self.machine.apply(|s| s.fail(&reason))?;
            return Ok(());
        }
        let slots = rauc.slot_status().await?;
        if let Some(other) = other_slot(&slots, &boot) {
            let finished = other.status.as_deref() == Some("ok")
                && other.bundle_version.as_deref() == Some(version.as_str())
                && other.installed_count.unwrap_or(0) > other_installed_count.unwrap_or(0);
            if finished {
                tracing::info!(slot = %other.name, version, "the installation finished before the restart");
                let bootname = other.bootname.clone();
                self.machine.apply(|s| s.installed(&bootname))?;
                return Ok(());
            }
        }
        if !bundle_path.exists() {
            let reason = format!("the bundle {} is gone", bundle_path.display());
            self.machine.apply(|s| s.fail(&reason))?;
            return Ok(());
        }
        self.fail_point("before-install")?;
        let report = self.report.clone();
        let mut base = self.machine.state().report();
        base.boot_slot = self.boot_slot_name.clone();
        let result = rauc
            .install(&bundle_path, self.opts.install_timeout, |pct, msg| {
                tracing::debug!(pct, msg, "RAUC progress");
                let mut r = base.clone();
                r.progress = Some(pct);
                report.send_replace(r);
            })
            .await;
        match result {
            Ok(()) => {
                // RAUC installs into the slot it then makes primary.
                let primary = rauc.primary().await?;
                let slots = rauc.slot_status().await?;
                let target = slots
                    .iter()
                    .find(|s| s.name == primary)
                    .map(|s| s.bootname.clone())
                    .unwrap_or(primary);
                if target == boot {
                    let reason = format!(
                        "RAUC made the booted slot {boot} primary after installing {version}"
                    );
                    self.machine.apply(|s| s.fail(&reason))?;
                    return Ok(());
                }
                self.machine.apply(|s| s.install_progress(100))?;
                self.machine.apply(|s| s.installed(&target))?;
                remove_quietly(&bundle_path);
                Ok(())
            }
            Err(RaucError::Rejected { last_error, .. }) => {
                self.machine.apply(|s| s.fail(&last_error))?;
                remove_quietly(&bundle_path);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn do_verify(&mut self, rauc: &Rauc, booted: &SlotStatus) -> Result<(), AgentError> {
        let State::Verifying {
            version,
            target_slot,
            attempt,
            cloud_required,
            ..
        } = self.machine.state().clone()
        else {
            return Ok(());
        };
        if booted.bootname != target_slot {
            let reason = format!(
                "booted back into slot {} ({}) instead of {target_slot} while verifying {version}",
                booted.bootname, booted.name
            );
            self.machine.apply(|s| s.roll_back(&reason, None))?;
            self.mark_other_bad(rauc).await;
            return self.confirm_boot(rauc, booted).await;
        }
        let running = os_version(&self.cfg.os_release_path)?;
        let problem = if running != version {
            Some(format!(
                "slot {target_slot} runs OS version {running}, expected {version}"
            ))
        } else if attempt > self.opts.max_verify_attempts {
            Some(format!(
                "the supervisor restarted {} times while verifying {version}",
                attempt - 1
            ))
        } else {
            health::wait_healthy(&mut self.health, cloud_required, self.opts.health_timeout)
                .await
                .err()
                .map(|e| e.to_string())
        };
        match problem {
            None => {
                self.fail_point("before-mark-good")?;
                let (slot, msg) = rauc.mark("good", "booted").await?;
                tracing::info!(slot, msg, "marked the booted slot good");
                self.boot_confirmed = true;
                self.write_confirm_marker(&booted.bootname);
                self.machine.apply(State::commit)?;
            }
            Some(reason) => {
                tracing::warn!(
                    version,
                    reason,
                    "the new OS failed verification; falling back"
                );
                self.machine
                    .apply(|s| s.roll_back(&reason, Some(&target_slot)))?;
                self.leave_bad_slot(
                    rauc,
                    format!("OS update to {version} failed verification: falling back"),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Marks the booted (new) slot bad, trying [`MARK_BAD_ATTEMPTS`] times,
    /// then asks for the reboot back to the old slot whether the mark took
    /// or not: this boot is never confirmed, so even without the mark the
    /// bootloader's boot counter runs out and falls back.
    async fn leave_bad_slot(&mut self, rauc: &Rauc, reason: String) -> Result<(), AgentError> {
        for attempt in 1..=MARK_BAD_ATTEMPTS {
            match rauc.mark("bad", "booted").await {
                Ok((slot, msg)) => {
                    tracing::info!(slot, msg, "marked the booted slot bad");
                    break;
                }
                Err(e) if attempt < MARK_BAD_ATTEMPTS => {
                    tracing::warn!(attempt, error = %e, "cannot mark the booted slot bad; trying again");
                    tokio::time::sleep(MARK_BAD_RETRY).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot mark the booted slot bad; rebooting anyway (the unconfirmed boot counts down to the old slot)");
                }
            }
        }
        self.request_reboot(reason).await
    }

    async fn request_reboot(&mut self, reason: String) -> Result<(), AgentError> {
        tracing::info!(reason, "requesting a reboot");
        self.reboot
            .send(RebootRequest { reason })
            .await
            .map_err(|_| AgentError::RebootChannelClosed)?;
        self.reboot_requested = true;
        Ok(())
    }
}

/// The rootfs slot that is not `boot` (the install target).
fn other_slot<'a>(slots: &'a [SlotStatus], boot: &str) -> Option<&'a SlotStatus> {
    let booted_class = slots
        .iter()
        .find(|s| s.bootname == boot)
        .map(|s| s.class.clone());
    slots.iter().find(|s| {
        s.bootname != boot
            && !s.bootname.is_empty()
            && booted_class.as_deref().is_none_or(|c| c == s.class)
    })
}

fn remove_quietly(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the bundle");
        }
    }
}

/// Loads the machine; a file that cannot be read as state is moved aside
/// (kept for inspection) and the agent starts idle.
fn load_or_set_aside(state_dir: &Path) -> Machine {
    match Machine::load(state_dir) {
        Ok(m) => m,
        Err(e) => {
            let path = state_dir.join(crate::state::STATE_FILE);
            let aside = path.with_extension("json.unreadable");
            tracing::error!(error = %e, aside = %aside.display(), "OS-update state unreadable; moved aside, starting idle");
            if let Err(e) = std::fs::rename(&path, &aside) {
                tracing::error!(error = %e, "cannot move the unreadable state aside");
            }
            match Machine::load(state_dir) {
                Ok(m) => m,
                Err(_) => Machine::idle_at(state_dir),
            }
        }
    }
}

#[cfg(test)]
mod version_tests {
    use super::is_downgrade;

    #[test]
    fn downgrades_are_told_by_the_numeric_core() {
        assert!(is_downgrade("2.0", "1.9"));
        assert!(is_downgrade("1.10.0", "1.9.5"));
        assert!(is_downgrade("v3.1.0+build7", "3.0.9-rc1"));
        assert!(!is_downgrade("1.9", "1.10"));
        assert!(!is_downgrade("2.0", "2.0.0"));
        assert!(!is_downgrade("2.0.0-rc1", "2.0.0"));
        assert!(!is_downgrade("1.0", "9.0.0-foreign"));
        // Without a numeric core there is no order: not refused.
        assert!(!is_downgrade("test-1", "1.0"));
        assert!(!is_downgrade("2.0", "nightly"));
    }
}
