//! The end-to-end scenarios, run in order on one shared device: provision,
//! deploy, update-app (os-update, rollback, bad-bundle and power-cut are named
//! but not implemented yet, see docs/qemu-tests.md).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};

use crate::apps::{composition, TestImage};
use crate::host::{poll, Api, Cloud};
use crate::qemu::{QemuConfig, Vm};

/// The scenarios, in the order they share a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
pub enum Scenario {
    /// Build the disk and boot it (UEFI → GRUB → slot A) to the boot marker.
    Boot,
    /// Fleet, configured image from the cloud, boot; the device registers and is online.
    Provision,
    /// A two-service release runs; its log lines arrive through the log API.
    Deploy,
    /// A new release with a changed env var; the volume's data survives.
    UpdateApp,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Boot => "boot",
            Scenario::Provision => "provision",
            Scenario::Deploy => "deploy",
            Scenario::UpdateApp => "update-app",
        }
    }
}

/// Timeouts of the waits (all generous for TCG on 2 shared cores).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Timeouts {
    pub boot: Duration,
    pub online: Duration,
    pub apps: Duration,
}

/// What the scenarios share.
pub struct Ctx {
    pub cloud: Cloud,
    pub api: Api,
    pub image: Option<TestImage>,
    /// The unconfigured base disk image (imagegen's output).
    pub base_image: PathBuf,
    pub os_version: String,
    pub work: PathBuf,
    pub qemu: QemuConfig,
    pub timeouts: Timeouts,
    pub vm: Option<Vm>,
    pub fleet: Option<i64>,
    pub device: Option<(i64, String)>,
    pub release: Option<i64>,
}

impl Ctx {
    fn vm(&mut self) -> anyhow::Result<&mut Vm> {
        self.vm
            .as_mut()
            .ok_or_else(|| anyhow!("no device is running (run provision first)"))
    }

    fn device(&self) -> anyhow::Result<(i64, String)> {
        self.device
            .clone()
            .ok_or_else(|| anyhow!("no device registered (run provision first)"))
    }

    /// Boots `disk` and waits for the boot marker; returns the marker line.
    pub fn boot(&mut self, disk: PathBuf) -> anyhow::Result<String> {
        if let Some(mut vm) = self.vm.take() {
            vm.kill()?;
        }
        let mut cfg = self.qemu.clone();
        cfg.disk = disk;
        let mut vm = Vm::start(cfg)?;
        let line = vm.wait_for("resin-qemu: up", self.timeouts.boot);
        let up = vm.uptime();
        self.vm = Some(vm);
        let line = line?;
        println!("  booted in {up:.0} s: {line}");
        Ok(line)
    }

    /// The last 200 console lines, for failure reports.
    pub fn console_tail(&self) -> String {
        self.vm
            .as_ref()
            .map(|v| v.console_tail(200))
            .unwrap_or_default()
    }

    pub fn run(&mut self, s: Scenario) -> anyhow::Result<()> {
        match s {
            Scenario::Boot => {
                let disk = self.work.join("boot-only.img");
                copy_sparse(&self.base_image, &disk)?;
                self.boot(disk).map(|_| ())
            }
            Scenario::Provision => self.provision(),
            Scenario::Deploy => self.deploy(),
            Scenario::UpdateApp => self.update_app(),
        }
    }

    fn provision(&mut self) -> anyhow::Result<()> {
        let fleet = self.api.post(
            "/v1/fleet",
            &json!({"name": "qemu-fleet", "device_type": "qemuarm64"}),
        )?;
        let fleet_id = fleet["id"].as_i64().context("fleet id")?;
        self.fleet = Some(fleet_id);
        let osr = self.api.post(
            "/v1/os_release",
            &json!({"device_type": "qemuarm64", "version": self.os_version}),
        )?;
        let osr_id = osr["id"].as_i64().context("os_release id")?;
        self.api
            .put_file(&format!("/v1/os_release({osr_id})/image"), &self.base_image)?;
        // zstd: the image is mostly zeros (empty slot B, data), so the transfer
        // shrinks about 17-fold; `zstd -d` writes the result sparse.
        let zst = self.work.join("device.img.zst");
        let n = self.api.download(
            &format!(
                "/v1/os/download?fleet={fleet_id}&version={}&compression=zstd",
                self.os_version
            ),
            &zst,
        )?;
        let disk = self.work.join("device.img");
        let st = std::process::Command::new("zstd")
            .args(["-q", "-d", "-f", "--sparse"])
            .arg(&zst)
            .arg("-o")
            .arg(&disk)
            .status()
            .context("running zstd -d (apt-get install zstd)")?;
        if !st.success() {
            bail!("zstd -d {} failed", zst.display());
        }
        let _ = std::fs::remove_file(&zst);
        println!(
            "  downloaded the configured image ({} MiB compressed)",
            n >> 20
        );
        self.boot(disk)?;
        let api = self.api.clone();
        let t0 = Instant::now();
        let dev = poll(self.timeouts.online, Duration::from_secs(3), || {
            let v = api
                .list(&format!("/v1/device?$filter=fleet%20eq%20{fleet_id}"))
                .ok()?;
            v.into_iter().find(|d| d["is_online"] == Value::Bool(true))
        })
        .ok_or_else(|| {
            anyhow!(
                "no device of fleet {fleet_id} came online within {:?}",
                self.timeouts.online
            )
        })?;
        let id = dev["id"].as_i64().context("device id")?;
        let uuid = dev["uuid"].as_str().unwrap_or_default().to_string();
        println!(
            "  device {uuid} online {:.0} s after the boot marker (os {}, supervisor {})",
            t0.elapsed().as_secs_f64(),
            dev["os_version"],
            dev["supervisor_version"]
        );
        if dev["os_version"].as_str() != Some(self.os_version.as_str()) {
            bail!(
                "device reports os_version {} instead of {}",
                dev["os_version"],
                self.os_version
            );
        }
        self.device = Some((id, uuid));
        Ok(())
    }

    fn release(&mut self, greeting: &str) -> anyhow::Result<i64> {
        let fleet = self
            .fleet
            .ok_or_else(|| anyhow!("no fleet (run provision first)"))?;
        let image = self
            .image
            .clone()
            .ok_or_else(|| anyhow!("no test image was pushed"))?;
        let rel = self.api.post(
            "/v1/release",
            &json!({"fleet": fleet, "composition": composition(&image, greeting)}),
        )?;
        let rid = rel["id"].as_i64().context("release id")?;
        self.api.patch(
            &format!("/v1/fleet({fleet})"),
            &json!({"target_release": rid}),
        )?;
        self.release = Some(rid);
        Ok(rid)
    }

    /// Waits until the device's logs hold a line matching `pred`.
    fn wait_log(&self, what: &str, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        let (id, _) = self.device()?;
        let api = self.api.clone();
        poll(self.timeouts.apps, Duration::from_secs(3), || {
            let lines = api.list(&format!("/v1/device({id})/logs")).ok()?;
            lines.into_iter().find(|l| pred(l))
        })
        .ok_or_else(|| anyhow!("no log line {what} arrived within {:?}", self.timeouts.apps))
    }

    /// Waits until the cloud's device resource shows every named service
    /// `running` in the release `rid` (from the supervisor's state report).
    fn wait_running(&self, rid: i64, names: &[&str]) -> anyhow::Result<()> {
        let (id, _) = self.device()?;
        let api = self.api.clone();
        let release = api.get(&format!("/v1/release({rid})"))?;
        let ruuid = release["uuid"].as_str().unwrap_or_default().to_string();
        poll(self.timeouts.apps, Duration::from_secs(3), || {
            let dev = api.get(&format!("/v1/device({id})")).ok()?;
            let apps = dev["apps"].as_object()?;
            names
                .iter()
                .all(|n| {
                    apps.values().any(|a| {
                        let svc = &a["services"][*n];
                        svc["status"] == "running" && svc["release_uuid"] == ruuid.as_str()
                    })
                })
                .then_some(())
        })
        .ok_or_else(|| {
            anyhow!(
                "the cloud did not show {names:?} running release {ruuid} within {:?}",
                self.timeouts.apps
            )
        })?;
        println!("  the cloud shows {names:?} running release {ruuid}");
        Ok(())
    }

    fn deploy(&mut self) -> anyhow::Result<()> {
        self.vm()?;
        self.release("v1")?;
        let hb = self.wait_log("from heartbeat", |l| {
            l["service"] == "heartbeat"
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("heartbeat ") && m.ends_with(" v1"))
        })?;
        println!("  heartbeat: {}", hb["message"]);
        let st = self.wait_log("from store", |l| {
            l["service"] == "store"
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("store starts=1 greeting=v1"))
        })?;
        println!("  store: {}", st["message"]);
        let rid = self.release.ok_or_else(|| anyhow!("no release"))?;
        self.wait_running(rid, &["heartbeat", "store"])?;
        Ok(())
    }

    fn update_app(&mut self) -> anyhow::Result<()> {
        self.vm()?;
        self.release("v2")?;
        let hb = self.wait_log("from the recreated heartbeat", |l| {
            l["service"] == "heartbeat" && l["message"].as_str().is_some_and(|m| m.ends_with(" v2"))
        })?;
        println!("  heartbeat: {}", hb["message"]);
        let st = self.wait_log(
            "from the recreated store, with the volume's earlier line",
            |l| {
                l["service"] == "store"
                    && l["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("store starts=2 greeting=v2"))
            },
        )?;
        println!("  store (volume kept): {}", st["message"]);
        let rid = self.release.ok_or_else(|| anyhow!("no release"))?;
        self.wait_running(rid, &["heartbeat", "store"])?;
        Ok(())
    }
}

/// Copies a (sparse) disk image with `cp --sparse=always`.
pub fn copy_sparse(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    let st = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .status()
        .context("running cp")?;
    if !st.success() {
        bail!("cp {} {} failed", from.display(), to.display());
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_sort_in_device_order() {
        let mut v = vec![Scenario::UpdateApp, Scenario::Provision, Scenario::Deploy];
        v.sort();
        assert_eq!(
            v,
            vec![Scenario::Provision, Scenario::Deploy, Scenario::UpdateApp]
        );
        assert_eq!(Scenario::UpdateApp.name(), "update-app");
    }
}
