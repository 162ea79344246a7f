//! The agent end to end against the real `rauc service`: download from a
//! local HTTP server, install, reboot request, "reboot" (restart RAUC with
//! another booted slot, new os-release and boot id), verify, commit or roll
//! back; plus a crash (agent dropped, state reloaded from osupdate.json) in
//! every state, which must resume or fail cleanly and never install into
//! the booted slot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use resin_api_types::{BundleRef, OsTarget, OsUpdateReport, OsUpdateState};
use resin_osupdate::failpoint::FailAction;
use resin_osupdate::state::{Machine, State};
use resin_osupdate::{spawn_with, AgentConfig, AgentOptions, Health, RebootRequest};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

const KEY: &str = "device-key-123";

struct Harness {
    env: RaucEnv,
    work: tempfile::TempDir,
    server: FileServer,
    bundle: BundleRef,
    payload: Vec<u8>,
    target: watch::Sender<Option<OsTarget>>,
    health: watch::Sender<Health>,
}

struct Running {
    report: watch::Receiver<OsUpdateReport>,
    handle: JoinHandle<()>,
    reboot: mpsc::Receiver<RebootRequest>,
}

impl Running {
    async fn wait_for(
        &mut self,
        what: &str,
        f: impl Fn(&OsUpdateReport) -> bool,
    ) -> OsUpdateReport {
        let mut rx = self.report.clone();
        let r = tokio::time::timeout(Duration::from_secs(60), async move {
            rx.wait_for(|r| f(r)).await.map(|r| r.clone())
        })
        .await;
        match r {
            Ok(r) => r.unwrap(),
            Err(_) => panic!(
                "timed out waiting for {what}; last report {:?}",
                *self.report.borrow()
            ),
        }
    }

    async fn wait_reboot(&mut self) -> RebootRequest {
        tokio::time::timeout(Duration::from_secs(60), self.reboot.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("no reboot request; last report {:?}", *self.report.borrow())
            })
            .unwrap()
    }

    /// "Kill" the agent: its task ends wherever it is.
    async fn kill(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }
}

impl Harness {
    async fn new(compatible: &str, cuts: Vec<u64>) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let env = RaucEnv::start().await;
        let payload = random_bytes(512 * 1024);
        let file = env.bundle("v2", "2.0", compatible, "ca", &payload);
        let bytes = std::fs::read(&file).unwrap();
        let server = FileServer::start(bytes.clone(), KEY, cuts);
        let bundle = BundleRef {
            url: server.url.clone(),
            sha256: sha256_hex(&bytes),
            size: bytes.len() as u64,
        };
        let work = tempfile::tempdir().unwrap();
        let h = Self {
            env,
            work,
            server,
            bundle,
            payload,
            target: watch::channel(None).0,
            health: watch::channel(Health {
                engine_reachable: true,
                loop_running: true,
                cloud_reachable: true,
            })
            .0,
        };
        h.set_os("1.0");
        h.set_boot_id("boot-1");
        h
    }

    fn p(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    fn set_os(&self, v: &str) {
        std::fs::write(
            self.p("os-release"),
            format!("NAME=\"resinOS\"\nVERSION_ID=\"{v}\"\n"),
        )
        .unwrap();
    }

    fn set_boot_id(&self, id: &str) {
        std::fs::write(self.p("boot_id"), format!("{id}\n")).unwrap();
    }

    fn target_v2(&self) {
        self.target.send_replace(Some(OsTarget {
            version: "2.0".into(),
            bundle: Some(self.bundle.clone()),
            allow_downgrade: false,
        }));
    }

    fn machine(&self) -> Machine {
        Machine::load(&self.p("state")).unwrap()
    }

    fn start(&self, failpoints: &[&str]) -> Running {
        let cfg = AgentConfig {
            state_dir: self.p("state"),
            download_dir: self.p("downloads"),
            device_api_key: KEY.into(),
            os_release_path: self.p("os-release"),
            dbus_address: Some(self.env.address.clone()),
        };
        let opts = AgentOptions {
            boot_id_path: self.p("boot_id"),
            health_timeout: Duration::from_secs(2),
            recheck_interval: Duration::from_millis(200),
            download_retry_delay: Duration::from_millis(20),
            confirm_marker: Some(self.p("run/boot-confirmed")),
            failpoints: failpoints
                .iter()
                .map(|f| (f.to_string(), FailAction::Stop))
                .collect(),
            ..AgentOptions::default()
        };
        let (tx, reboot) = mpsc::channel(4);
        let (report, handle) = spawn_with(
            cfg,
            opts,
            self.target.subscribe(),
            self.health.subscribe(),
            tx,
        );
        Running {
            report,
            handle,
            reboot,
        }
    }

    /// Runs an agent until it asks for the reboot into B, then kills it.
    async fn until_reboot(&self) {
        self.target_v2();
        let mut a = self.start(&[]);
        let req = a.wait_reboot().await;
        assert!(req.reason.contains("2.0"), "{req:?}");
        a.kill().await;
        assert!(matches!(self.machine().state(), State::Rebooting { .. }));
    }

    /// The "reboot": RAUC comes back with `slot` booted, a new boot id and
    /// the os-release of that slot.
    async fn reboot_into(&mut self, slot: &str, os: &str, boot_id: &str) {
        self.env.start_service(slot).await;
        self.set_os(os);
        self.set_boot_id(boot_id);
    }

    fn slot_b_holds_payload(&self) -> bool {
        let b = std::fs::read(self.env.slot("B")).unwrap();
        b[..self.payload.len()] == self.payload[..]
    }

    async fn installed_count_b(&self) -> u32 {
        // RAUC maps mounts to slots by reading each loop device's backing
        // file; a loop device that a parallel test's install detaches in
        // between fails the call once ("Error getting loop backing_file for
        // /dev/loop1 … No such device", seen in CI). Asked again, it answers.
        let mut tries = 0;
        let slots = loop {
            match self.env.rauc().await.slot_status().await {
                Ok(s) => break s,
                Err(e) if tries < 5 && format!("{e:?}").contains("backing_file") => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => panic!("GetSlotStatus: {e:?}"),
            }
        };
        slots
            .iter()
            .find(|s| s.bootname == "B")
            .unwrap()
            .installed_count
            .unwrap_or(0)
    }
}

#[tokio::test]
async fn update_downloads_installs_reboots_verifies_and_commits() {
    let mut h = Harness::new(COMPATIBLE, vec![]).await;
    let slot_a = file_sha256(&h.env.slot("A"));
    let mut a = h.start(&[]);
    a.wait_for("idle report with boot slot", |r| {
        r.boot_slot.as_deref() == Some("rootfs.0")
    })
    .await;
    h.target_v2();
    // Watch the states go by.
    let mut seen = Vec::new();
    let mut rep = a.report.clone();
    let watcher = tokio::spawn(async move {
        while rep.changed().await.is_ok() {
            let r = rep.borrow().clone();
            seen.push((r.state, r.progress));
            if r.state == OsUpdateState::Rebooting {
                break;
            }
        }
        seen
    });
    let req = a.wait_reboot().await;
    assert!(req.reason.contains("2.0"));
    let seen = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .unwrap()
        .unwrap();
    let states: Vec<_> = seen.iter().map(|s| s.0).collect();
    for s in [
        OsUpdateState::Downloading,
        OsUpdateState::Installing,
        OsUpdateState::Rebooting,
    ] {
        assert!(states.contains(&s), "{s} not seen in {seen:?}");
    }
    assert!(
        seen.iter()
            .any(|(s, p)| *s == OsUpdateState::Installing && p.is_some_and(|p| p > 0 && p < 100)),
        "no install progress in {seen:?}"
    );
    assert!(h.slot_b_holds_payload());
    assert_eq!(
        file_sha256(&h.env.slot("A")),
        slot_a,
        "booted slot untouched"
    );
    assert_eq!(h.env.bl_primary(), "B");
    // The verified bundle is gone once installed.
    assert_eq!(std::fs::read_dir(h.p("downloads")).unwrap().count(), 0);
    a.kill().await;

    h.reboot_into("B", "2.0", "boot-2").await;
    let mut a = h.start(&[]);
    let r = a
        .wait_for("committed", |r| r.state == OsUpdateState::Committed)
        .await;
    assert_eq!(r.target_version.as_deref(), Some("2.0"));
    assert_eq!(r.boot_slot.as_deref(), Some("rootfs.1"));
    assert_eq!(h.env.bl_state("B"), "good");
    assert!(h.env.path().join("bl.log").exists());
    let log = std::fs::read_to_string(h.env.path().join("bl.log")).unwrap();
    assert!(log.lines().any(|l| l == "set-state B good"), "{log}");
    // Steady: nothing else happens.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(a.report.borrow().state, OsUpdateState::Committed);
    assert!(a.reboot.try_recv().is_err());
    assert_eq!(h.installed_count_b().await, 1);
    a.kill().await;
}

impl Harness {
    fn bl_log(&self) -> String {
        std::fs::read_to_string(self.env.path().join("bl.log")).unwrap_or_default()
    }

    /// Waits up to 10 s for the boot confirmation file.
    async fn wait_confirmed(&self) -> String {
        for _ in 0..100 {
            if let Ok(s) = std::fs::read_to_string(self.p("run/boot-confirmed")) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the boot was never confirmed; bootloader log:\n{}",
            self.bl_log()
        );
    }
}

#[tokio::test]
async fn every_boot_is_confirmed_good_once_the_supervisor_is_healthy() {
    let h = Harness::new(COMPATIBLE, vec![]).await;
    h.health.send_replace(Health::default());
    let a = h.start(&[]);
    // Unhealthy (no engine, no loop): the slot is not confirmed, so GRUB's
    // boot counter keeps running and resin-boot-guard would reboot.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!h.p("run/boot-confirmed").exists());
    assert!(!h.bl_log().contains("set-state A good"), "{}", h.bl_log());
    // Healthy without the cloud: confirmed, once.
    h.health.send_replace(Health {
        engine_reachable: true,
        loop_running: true,
        cloud_reachable: false,
    });
    assert_eq!(h.wait_confirmed().await, "slot=A\n");
    for _ in 0..3 {
        h.health.send_modify(|_| {});
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let log = h.bl_log();
    assert_eq!(
        log.lines().filter(|l| *l == "set-state A good").count(),
        1,
        "{log}"
    );
    a.kill().await;
}

#[tokio::test]
async fn booting_back_into_the_old_slot_is_reported_rolled_back_and_not_retried_at_once() {
    let mut h = Harness::new(COMPATIBLE, vec![]).await;
    h.until_reboot().await;
    let requests = h.server.requests.lock().unwrap().len();
    // The bootloader fell back: A boots again with the old OS.
    h.reboot_into("A", "1.0", "boot-2").await;
    let mut a = h.start(&[]);
    let r = a
        .wait_for("rolled back", |r| r.state == OsUpdateState::RolledBack)
        .await;
    let reason = r.reason.unwrap();
    assert!(reason.contains("booted back into slot A"), "{reason}");
    assert_eq!(r.target_version.as_deref(), Some("2.0"));
    // The slot that did not boot is marked bad, the one running is confirmed.
    assert_eq!(h.env.bl_state("B"), "bad");
    assert_eq!(h.wait_confirmed().await, "slot=A\n");
    // The target still says 2.0, but the failed version is held back.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(a.report.borrow().state, OsUpdateState::RolledBack);
    assert_eq!(h.server.requests.lock().unwrap().len(), requests);
    assert_eq!(h.machine().failed().get("2.0").unwrap().attempts, 1);
    assert_eq!(h.installed_count_b().await, 1);
    a.kill().await;
}

#[tokio::test]
async fn failed_health_check_marks_the_new_slot_bad_and_reboots_back() {
    let mut h = Harness::new(COMPATIBLE, vec![]).await;
    h.until_reboot().await;
    h.reboot_into("B", "2.0", "boot-2").await;
    h.health.send_replace(Health {
        engine_reachable: false,
        loop_running: true,
        cloud_reachable: true,
    });
    let mut a = h.start(&[]);
    let r = a
        .wait_for("rolled back", |r| r.state == OsUpdateState::RolledBack)
        .await;
    assert!(
        r.reason
            .as_deref()
            .unwrap()
            .contains("engine not reachable"),
        "{r:?}"
    );
    let req = a.wait_reboot().await;
    assert!(req.reason.contains("falling back"), "{req:?}");
    assert_eq!(h.env.bl_state("B"), "bad");
    a.kill().await;
    // A restart before the reboot happened marks bad and asks again.
    let mut a = h.start(&[]);
    a.wait_reboot().await;
    a.kill().await;
    // The bootloader brings A back.
    h.reboot_into("A", "1.0", "boot-3").await;
    let mut a = h.start(&[]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r = a.report.borrow().clone();
    assert_eq!(r.state, OsUpdateState::RolledBack);
    assert_eq!(r.boot_slot.as_deref(), Some("rootfs.0"));
    assert!(a.reboot.try_recv().is_err());
    assert!(matches!(
        h.machine().state(),
        State::RolledBack { bad_slot: None, .. }
    ));
    a.kill().await;
}

#[tokio::test]
async fn bundle_rauc_rejects_fails_with_raucs_reason_and_leaves_the_slots_alone() {
    let h = Harness::new("resin-some-other-board", vec![]).await;
    let a_before = file_sha256(&h.env.slot("A"));
    let b_before = file_sha256(&h.env.slot("B"));
    h.target_v2();
    let mut a = h.start(&[]);
    let r = a
        .wait_for("failed", |r| r.state == OsUpdateState::Failed)
        .await;
    assert!(
        r.reason
            .as_deref()
            .unwrap()
            .to_lowercase()
            .contains("compatible"),
        "{r:?}"
    );
    assert_eq!(file_sha256(&h.env.slot("A")), a_before);
    assert_eq!(file_sha256(&h.env.slot("B")), b_before);
    assert_eq!(h.env.bl_primary(), "A");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(a.reboot.try_recv().is_err());
    assert_eq!(
        h.server.requests.lock().unwrap().len(),
        1,
        "no tight retry loop"
    );
    // A target without a bundle waits (the failure stays reported).
    h.target.send_replace(Some(OsTarget {
        version: "3.0".into(),
        bundle: None,
        allow_downgrade: false,
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(a.report.borrow().state, OsUpdateState::Failed);
    assert_eq!(h.server.requests.lock().unwrap().len(), 1);
    // Going back to the running version clears the failure.
    h.target.send_replace(Some(OsTarget {
        version: "1.0".into(),
        bundle: None,
        allow_downgrade: false,
    }));
    a.wait_for("idle", |r| r.state == OsUpdateState::Idle).await;
    a.kill().await;
}

#[tokio::test]
async fn crash_while_downloading_resumes_from_the_part_file() {
    // The first connection drops after 100 kB; the agent "dies" then.
    let h = Harness::new(COMPATIBLE, vec![]).await;
    h.target_v2();
    let mut m = h.machine();
    m.apply(|s| s.start_download("2.0", &h.bundle, true))
        .unwrap();
    let bytes = std::fs::read(h.env.path().join("v2.raucb")).unwrap();
    std::fs::create_dir_all(h.p("downloads")).unwrap();
    std::fs::write(
        resin_osupdate::download::part_path(&h.p("downloads"), &h.bundle.sha256),
        &bytes[..100_000],
    )
    .unwrap();
    let mut a = h.start(&[]);
    a.wait_reboot().await;
    let reqs = h.server.requests.lock().unwrap().clone();
    assert!(reqs[0].contains("bytes=100000-"), "{reqs:?}");
    assert!(h.slot_b_holds_payload());
    a.kill().await;
}

#[tokio::test]
async fn crash_before_install_then_restart_installs_once_into_the_other_slot() {
    let h = Harness::new(COMPATIBLE, vec![]).await;
    let a_before = file_sha256(&h.env.slot("A"));
    let b_before = file_sha256(&h.env.slot("B"));
    h.target_v2();
    let a = h.start(&["before-install"]);
    tokio::time::timeout(Duration::from_secs(60), a.handle)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(h.machine().state(), State::Installing { .. }));
    assert_eq!(
        file_sha256(&h.env.slot("B")),
        b_before,
        "nothing installed yet"
    );
    let mut a = h.start(&[]);
    a.wait_reboot().await;
    assert!(h.slot_b_holds_payload());
    assert_eq!(file_sha256(&h.env.slot("A")), a_before);
    assert_eq!(h.installed_count_b().await, 1);
    a.kill().await;
}

#[tokio::test]
async fn crash_after_rauc_finished_does_not_install_again() {
    let h = Harness::new(COMPATIBLE, vec![]).await;
    h.target_v2();
    // RAUC finished the install, but the agent died before persisting it.
    let bundle = h.env.path().join("v2.raucb");
    h.env
        .rauc()
        .await
        .install(&bundle, Duration::from_secs(60), |_, _| {})
        .await
        .unwrap();
    assert_eq!(h.installed_count_b().await, 1);
    let mut m = h.machine();
    m.apply(|s| s.start_download("2.0", &h.bundle, true))
        .unwrap();
    m.apply(|s| s.downloaded(&bundle, "A", Some(0))).unwrap();
    let mut a = h.start(&[]);
    a.wait_reboot().await;
    assert_eq!(h.installed_count_b().await, 1, "installed twice");
    assert!(
        matches!(h.machine().state(), State::Rebooting { target_slot, .. } if target_slot == "B")
    );
    a.kill().await;
}

#[tokio::test]
async fn crash_while_installing_after_a_reboot_into_the_other_slot_fails_cleanly() {
    let mut h = Harness::new(COMPATIBLE, vec![]).await;
    h.target_v2();
    let bundle = h.env.path().join("v2.raucb");
    let mut m = h.machine();
    m.apply(|s| s.start_download("2.0", &h.bundle, true))
        .unwrap();
    m.apply(|s| s.downloaded(&bundle, "A", Some(0))).unwrap();
    // Power cut, and the device came up in B: never install now (RAUC
    // would write A, the slot we came from).
    h.reboot_into("B", "1.0", "boot-2").await;
    let a_before = file_sha256(&h.env.slot("A"));
    let b_before = file_sha256(&h.env.slot("B"));
    let mut a = h.start(&[]);
    let r = a
        .wait_for("failed", |r| r.state == OsUpdateState::Failed)
        .await;
    assert!(r.reason.unwrap().contains("booted slot changed"));
    assert_eq!(file_sha256(&h.env.slot("A")), a_before);
    assert_eq!(file_sha256(&h.env.slot("B")), b_before);
    a.kill().await;
}

#[tokio::test]
async fn crash_in_installed_or_rebooting_asks_for_the_reboot_again_without_installing() {
    let h = Harness::new(COMPATIBLE, vec![]).await;
    h.until_reboot().await;
    assert_eq!(h.installed_count_b().await, 1);
    // Same boot id: the reboot never happened.
    let mut a = h.start(&[]);
    a.wait_reboot().await;
    assert_eq!(a.report.borrow().state, OsUpdateState::Rebooting);
    a.kill().await;
    // Back one step: crash right after RAUC succeeded.
    let mut m = h.machine();
    m.set(State::Installed {
        version: "2.0".into(),
        booted_slot: "A".into(),
        target_slot: "B".into(),
        cloud_required: true,
    })
    .unwrap();
    let mut a = h.start(&[]);
    a.wait_reboot().await;
    assert!(matches!(h.machine().state(), State::Rebooting { .. }));
    assert_eq!(h.installed_count_b().await, 1);
    a.kill().await;
}

#[tokio::test]
async fn crash_before_mark_good_verifies_again_and_commits() {
    let mut h = Harness::new(COMPATIBLE, vec![]).await;
    h.until_reboot().await;
    h.reboot_into("B", "2.0", "boot-2").await;
    let a = h.start(&["before-mark-good"]);
    tokio::time::timeout(Duration::from_secs(60), a.handle)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        h.machine().state(),
        State::Verifying { attempt: 1, .. }
    ));
    assert_eq!(
        h.env.bl_state("B"),
        "bad",
        "RAUC's install leaves B unconfirmed"
    );
    let mut a = h.start(&[]);
    a.wait_for("committed", |r| r.state == OsUpdateState::Committed)
        .await;
    assert_eq!(h.env.bl_state("B"), "good");
    assert_eq!(h.installed_count_b().await, 1);
    a.kill().await;
}

#[tokio::test]
async fn a_crash_looping_verification_gives_up_and_falls_back() {
    let mut h = Harness::new(COMPATIBLE, vec![]).await;
    h.until_reboot().await;
    h.reboot_into("B", "2.0", "boot-2").await;
    h.machine()
        .set(State::Verifying {
            version: "2.0".into(),
            from_slot: "A".into(),
            target_slot: "B".into(),
            attempt: 3,
            cloud_required: true,
        })
        .unwrap();
    let mut a = h.start(&[]);
    let r = a
        .wait_for("rolled back", |r| r.state == OsUpdateState::RolledBack)
        .await;
    assert!(r.reason.unwrap().contains("restarted 3 times"));
    a.wait_reboot().await;
    assert_eq!(h.env.bl_state("B"), "bad");
    a.kill().await;
}

#[tokio::test]
async fn terminal_states_survive_a_restart_without_doing_anything() {
    let h = Harness::new(COMPATIBLE, vec![]).await;
    let b_before = file_sha256(&h.env.slot("B"));
    h.target.send_replace(Some(OsTarget {
        version: "1.0".into(),
        bundle: None,
        allow_downgrade: false,
    }));
    for st in [
        State::Committed {
            version: "1.0".into(),
            slot: "A".into(),
        },
        State::Idle,
    ] {
        h.machine().set(st.clone()).unwrap();
        let mut a = h.start(&[]);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(h.machine().state(), &st);
        assert!(a.reboot.try_recv().is_err());
        a.kill().await;
    }
    // A failure survives the restart, and so does its backoff: the same
    // target is not fetched again at once.
    let mut m = h.machine();
    m.set(State::Idle).unwrap();
    m.apply(|s| s.start_download("2.0", &h.bundle, true))
        .unwrap();
    m.apply(|s| s.fail("bad signature")).unwrap();
    h.target_v2();
    let mut a = h.start(&[]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = a.report.borrow().clone();
    assert_eq!(r.state, OsUpdateState::Failed);
    assert_eq!(r.reason.as_deref(), Some("bad signature"));
    assert!(h.server.requests.lock().unwrap().is_empty());
    assert!(a.reboot.try_recv().is_err());
    a.kill().await;
    h.target.send_replace(Some(OsTarget {
        version: "1.0".into(),
        bundle: None,
        allow_downgrade: false,
    }));
    // An unreadable state file is moved aside, not fatal.
    std::fs::write(h.p("state/osupdate.json"), "{garbage").unwrap();
    let mut a = h.start(&[]);
    a.wait_for("idle", |r| {
        r.state == OsUpdateState::Idle && r.boot_slot.is_some()
    })
    .await;
    assert!(h.p("state/osupdate.json.unreadable").exists());
    a.kill().await;
    assert_eq!(file_sha256(&h.env.slot("B")), b_before);
}

/// A failed `Mark("bad")` after a failed health check is retried, and the
/// reboot back to the old slot is asked for either way.
#[tokio::test]
async fn a_failed_mark_bad_is_retried_then_the_device_reboots() {
    let mut h = Harness::new(COMPATIBLE, vec![]).await;
    h.until_reboot().await;
    h.reboot_into("B", "2.0", "boot-2").await;
    h.health.send_replace(Health {
        engine_reachable: false,
        loop_running: true,
        cloud_reachable: true,
    });
    // The first two marks fail: the third takes. (RAUC's install marked
    // B bad once already, before writing it.)
    let marks = |log: &str| log.lines().filter(|l| *l == "set-state B bad").count();
    let before = marks(&h.bl_log());
    h.env.fail_mark_bad(2);
    let mut a = h.start(&[]);
    let req = a.wait_reboot().await;
    assert!(req.reason.contains("falling back"), "{req:?}");
    assert_eq!(h.env.bl_state("B"), "bad");
    let log = h.bl_log();
    assert_eq!(marks(&log) - before, 3, "{log}");
    a.kill().await;
}

/// Even when `Mark("bad")` keeps failing the device reboots: the new slot
/// is never confirmed in that boot, so the boot counter brings the old one
/// back.
#[tokio::test]
async fn a_mark_bad_that_keeps_failing_still_reboots() {
    let mut h = Harness::new(COMPATIBLE, vec![]).await;
    h.until_reboot().await;
    h.reboot_into("B", "2.0", "boot-2").await;
    h.health.send_replace(Health {
        engine_reachable: false,
        loop_running: true,
        cloud_reachable: true,
    });
    h.env.fail_mark_bad(1000);
    let mut a = h.start(&[]);
    let req = a.wait_reboot().await;
    assert!(req.reason.contains("falling back"), "{req:?}");
    // Three tries, all refused by the bootloader backend.
    let left = std::fs::read_to_string(h.env.path().join("bl.fail-bad")).unwrap();
    assert_eq!(left.trim(), "997");
    // This boot of B was never confirmed (the marker is A's, from before).
    let marker = std::fs::read_to_string(h.p("run/boot-confirmed")).unwrap_or_default();
    assert_ne!(marker, "slot=B\n");
    a.kill().await;
}

/// An update that was committed, then the bootloader falls back to the old
/// slot (the new one stopped booting): reported as rolled back, the slot
/// that failed is marked bad, and the same update is not installed again.
#[tokio::test]
async fn a_fallback_after_commit_is_reported_rolled_back_and_not_installed_again() {
    let mut h = Harness::new(COMPATIBLE, vec![]).await;
    h.until_reboot().await;
    h.reboot_into("B", "2.0", "boot-2").await;
    let mut a = h.start(&[]);
    a.wait_for("committed", |r| r.state == OsUpdateState::Committed)
        .await;
    a.kill().await;
    let requests = h.server.requests.lock().unwrap().len();
    h.reboot_into("A", "1.0", "boot-3").await;
    let mut a = h.start(&[]);
    let r = a
        .wait_for("rolled back", |r| r.state == OsUpdateState::RolledBack)
        .await;
    let reason = r.reason.unwrap();
    assert!(reason.contains("after it was committed"), "{reason}");
    assert_eq!(r.target_version.as_deref(), Some("2.0"));
    assert_eq!(r.boot_slot.as_deref(), Some("rootfs.0"));
    assert_eq!(h.env.bl_state("B"), "bad");
    // The target still says 2.0: nothing is fetched or installed.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(a.report.borrow().state, OsUpdateState::RolledBack);
    assert_eq!(h.server.requests.lock().unwrap().len(), requests);
    assert_eq!(h.installed_count_b().await, 1);
    a.kill().await;
    // Nor after a restart.
    let a = h.start(&[]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(a.report.borrow().state, OsUpdateState::RolledBack);
    assert_eq!(h.server.requests.lock().unwrap().len(), requests);
    a.kill().await;
}

/// An OS version older than the running one is refused unless the target
/// allows the downgrade; then it installs as any other.
#[tokio::test]
async fn an_older_version_is_refused_unless_downgrades_are_allowed() {
    let h = Harness::new(COMPATIBLE, vec![]).await;
    h.set_os("3.0");
    let mut a = h.start(&[]);
    h.target_v2();
    let r = a
        .wait_for("the refusal", |r| {
            r.reason.as_deref().is_some_and(|m| m.contains("older"))
        })
        .await;
    assert_eq!(r.state, OsUpdateState::Idle);
    assert!(r.reason.unwrap().contains("2.0"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(h.server.requests.lock().unwrap().is_empty());
    assert_eq!(h.installed_count_b().await, 0);
    // Allowed by the target: it installs as any other.
    h.target.send_replace(Some(OsTarget {
        version: "2.0".into(),
        bundle: Some(h.bundle.clone()),
        allow_downgrade: true,
    }));
    let req = a.wait_reboot().await;
    assert!(req.reason.contains("2.0"), "{req:?}");
    assert!(h.slot_b_holds_payload());
    a.kill().await;
}
