//! `dist/resin-boot-guard`: which boots it reboots. It runs with a stand-in
//! `systemctl` on PATH that answers `show -P LoadState` and records `reboot`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Guard {
    dir: tempfile::TempDir,
}

impl Guard {
    /// `load`: what `systemctl show -P LoadState` answers.
    fn new(load: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let fake = bin.join("systemctl");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\ncase \"$1\" in\n  show) echo {load} ;;\n  reboot) echo reboot >>{}/calls ;;\nesac\n",
                dir.path().display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn state(&self, state: &str) {
        std::fs::write(
            self.p("osupdate.json"),
            format!("{{\n  \"format\": 1,\n  \"state\": {{\n    \"state\": \"{state}\",\n    \"version\": \"2.0\"\n  }}\n}}\n"),
        )
        .unwrap();
    }

    /// Runs the guard; returns (stdout, whether it asked for a reboot).
    fn run(&self, timeout: u64) -> (String, bool) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/resin-boot-guard");
        let path = format!("{}:/usr/bin:/bin", self.p("bin").display());
        let out = Command::new("sh")
            .arg(script)
            .env("PATH", path)
            .env("RESIN_BOOT_CONFIRMED", self.p("boot-confirmed"))
            .env("RESIN_OSUPDATE_STATE", self.p("osupdate.json"))
            .env("RESIN_BOOT_GUARD_TIMEOUT", timeout.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        (stdout, self.p("calls").exists())
    }
}

#[test]
fn ordinary_boots_are_never_rebooted() {
    let g = Guard::new("masked");
    let (out, rebooted) = g.run(0);
    assert!(out.contains("not a trial boot"), "{out}");
    assert!(!rebooted);
    for s in [
        "idle",
        "committed",
        "rolled-back",
        "downloading",
        "installing",
    ] {
        g.state(s);
        let (out, rebooted) = g.run(0);
        assert!(out.contains("not a trial boot"), "{s}: {out}");
        assert!(!rebooted, "{s}");
    }
}

#[test]
fn a_confirmed_trial_boot_is_left_alone() {
    let g = Guard::new("loaded");
    g.state("verifying");
    std::fs::write(g.p("boot-confirmed"), "slot=B\n").unwrap();
    let (out, rebooted) = g.run(0);
    assert!(out.contains("boot confirmed (slot=B)"), "{out}");
    assert!(!rebooted);
}

#[test]
fn a_trial_boot_whose_supervisor_is_masked_reboots_at_once() {
    let g = Guard::new("masked");
    g.state("rebooting");
    let (out, rebooted) = g.run(100_000);
    assert!(out.contains("resin-supervisor.service is masked"), "{out}");
    assert!(rebooted);
}

#[test]
fn an_unconfirmed_trial_boot_reboots_after_the_timeout() {
    let g = Guard::new("loaded");
    g.state("verifying");
    let (out, rebooted) = g.run(0);
    assert!(out.contains("not confirmed within 0 s"), "{out}");
    assert!(rebooted);
}
