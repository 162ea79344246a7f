//! The end-to-end scenarios, run in order on one shared device: provision,
//! deploy, update-app, remote-access, git-push, bad-bundle, os-update,
//! boot-update, power-cut, rollback (a two-wave OS rollout), then wrong-ca on
//! a device of its own.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::apps::{composition, TestImage};
use crate::assets::Keys;
use crate::device::DeviceInputs;
use crate::disk::DiskLayout;
use crate::host::{poll, Api, Cloud};
use crate::qemu::{QemuConfig, Vm};

#[path = "scenario_git_push.rs"]
mod git_push;
#[path = "scenario_remote_access.rs"]
mod remote_access;

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
    /// The tunnel: `resin ssh` (host and a service's volume, exit codes),
    /// `resin tunnel` to a container's port, a reboot within 5 s.
    RemoteAccess,
    /// `git push` of a two-service project: the cloud builds it for arm64, the
    /// device runs it; a failing Dockerfile rejects the push and changes nothing.
    GitPush,
    /// Bundles signed by a foreign key or for another `compatible` are refused.
    BadBundle,
    /// The fleet's target OS goes to v2: RAUC installs slot B, the device reboots into it.
    OsUpdate,
    /// An OS update whose grub.cfg adds a kernel argument: the bundle's hook
    /// installs it into resin-boot and the next boot's /proc/cmdline has it.
    BootUpdate,
    /// qemu is killed at random points of an OS update; the device always boots, the update completes.
    PowerCut,
    /// A two-wave OS rollout whose first wave is the device, of a bundle
    /// whose supervisor cannot start: the boot counter runs out, GRUB falls
    /// back, and the rollout halts itself in wave 1 with the reason.
    Rollback,
    /// The fleet's configured image with another CA as config.json's rootCA
    /// (imagegen's config injection): the supervisor refuses the cloud's
    /// certificate and the device never registers. Last: it replaces the
    /// shared device.
    WrongCa,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Boot => "boot",
            Scenario::Provision => "provision",
            Scenario::Deploy => "deploy",
            Scenario::UpdateApp => "update-app",
            Scenario::RemoteAccess => "remote-access",
            Scenario::GitPush => "git-push",
            Scenario::BadBundle => "bad-bundle",
            Scenario::OsUpdate => "os-update",
            Scenario::BootUpdate => "boot-update",
            Scenario::PowerCut => "power-cut",
            Scenario::Rollback => "rollback",
            Scenario::WrongCa => "wrong-ca",
        }
    }
}

/// Timeouts of the waits. The configured ones hold only until the first boot
/// has been timed; after it every wait is a multiple of that boot's time
/// ([`Timeouts::scaled_to_boot`]), so a loaded machine waits longer and a
/// quiet one does not sit out fixed minutes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Timeouts {
    pub boot: Duration,
    pub online: Duration,
    pub apps: Duration,
    /// An OS update from the target change to the new slot's boot marker.
    pub os_update: Duration,
}

impl Timeouts {
    /// The waits as multiples of a measured boot (qemu start to the boot
    /// marker): everything the device does is the same emulated CPU's work,
    /// so it slows down and speeds up with the boot. The factors leave
    /// several times what was seen (docs/qemu-tests.md): a boot 5×, online
    /// after the marker 3×, app effects (pulls, restarts) 8×, a whole OS
    /// update (download, install, reboot) 20×.
    pub fn scaled_to_boot(boot: Duration) -> Self {
        Self {
            boot: boot * 5,
            online: boot * 3,
            apps: boot * 8,
            os_update: boot * 20,
        }
    }
}

/// What the OS-update scenarios need to build bundles.
pub struct OsInputs {
    pub inputs: DeviceInputs,
    pub keys: Keys,
    /// The aarch64 supervisor (None with a kas `--rootfs`/`--image`).
    pub supervisor: Option<PathBuf>,
    /// Power cuts of the power-cut scenario.
    pub power_cuts: u32,
    /// Seed of the power-cut timings (printed, so a run can be repeated).
    pub seed: u64,
}

/// What the scenarios share.
pub struct Ctx {
    pub cloud: Cloud,
    pub api: Api,
    pub image: Option<TestImage>,
    /// The same image with 48 MiB more, for update-app.
    pub big_image: Option<TestImage>,
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
    /// What the last boot marker said.
    pub booted: Option<Booted>,
    /// The first boot's time (qemu start to the boot marker), once seen.
    pub boot_time: Option<Duration>,
    pub os: OsInputs,
    /// The disk's slots and partition labels (imagegen's layout).
    pub disk: DiskLayout,
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
        if self.boot_time.is_none() {
            let t = Duration::from_secs_f64(up);
            self.boot_time = Some(t);
            self.timeouts = Timeouts::scaled_to_boot(t);
            println!(
                "  waits from now on scale with this boot: boot {:.0} s, online {:.0} s, apps {:.0} s, OS update {:.0} s",
                self.timeouts.boot.as_secs_f64(),
                self.timeouts.online.as_secs_f64(),
                self.timeouts.apps.as_secs_f64(),
                self.timeouts.os_update.as_secs_f64()
            );
        }
        self.booted = Booted::parse(&line);
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
            Scenario::RemoteAccess => self.remote_access(),
            Scenario::GitPush => self.git_push(),
            Scenario::BadBundle => self.bad_bundle(),
            Scenario::OsUpdate => self.os_update(),
            Scenario::BootUpdate => self.boot_update(),
            Scenario::PowerCut => self.power_cut(),
            Scenario::Rollback => self.rollback(),
            Scenario::WrongCa => self.wrong_ca(),
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
        let disk = self.download_configured(fleet_id, "device.img")?;
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
        // The device reached the cloud over HTTPS trusting only config.json's
        // rootCA; the OS also put that CA into the system trust store.
        let console = self.vm.as_ref().map(|v| v.console()).unwrap_or_default();
        let ca = console
            .lines()
            .find(|l| l.contains("resin-ca: added the CA"))
            .ok_or_else(|| {
                anyhow!(
                    "resin-ca did not add config.json's rootCA to the system trust store; console:\n{}",
                    self.console_tail()
                )
            })?;
        println!("  {}", ca.trim());
        self.device = Some((id, uuid));
        Ok(())
    }

    /// `GET /v1/os/download`: the fleet's configured image (a fresh
    /// provisioning key and the cloud's CA in config.json) as `<work>/name`.
    fn download_configured(&self, fleet_id: i64, name: &str) -> anyhow::Result<PathBuf> {
        // zstd: the image is mostly zeros (empty slot B, data), so the transfer
        // shrinks about 17-fold; `zstd -d` writes the result sparse.
        let zst = self.work.join(format!("{name}.zst"));
        let n = self.api.download(
            &format!(
                "/v1/os/download?fleet={fleet_id}&version={}&compression=zstd",
                self.os_version
            ),
            &zst,
        )?;
        let disk = self.work.join(name);
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
        Ok(disk)
    }

    /// The fleet's configured image, but with config.json's rootCA replaced
    /// by another CA of the same name (written with imagegen's config
    /// injection): the device must refuse the cloud and never register, and
    /// its supervisor must say why. `provision` showed the same image with
    /// the cloud's CA registering.
    fn wrong_ca(&mut self) -> anyhow::Result<()> {
        use resin_imagegen::configure;
        let fleet = self
            .fleet
            .ok_or_else(|| anyhow!("no fleet (run provision first)"))?;
        let dir = self.work.join("wrong-ca");
        std::fs::create_dir_all(&dir).context("creating the wrong-ca dir")?;
        // Another CA with the cloud CA's name: trust must come from the key,
        // not the name.
        crate::assets::openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=resin-cloud private CA",
                "-addext",
                "basicConstraints=critical,CA:true",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        )?;
        let other = std::fs::read(dir.join("ca.pem")).context("reading the other CA")?;
        let disk = self.download_configured(fleet, "wrong-ca/device.img")?;
        let read = || -> anyhow::Result<Value> {
            let f = std::fs::File::open(&disk)?;
            Ok(serde_json::from_slice(&configure::read_config(&f)?)?)
        };
        let right = read().context("reading config.json from the configured image")?;
        let cloud_ca = std::fs::read(&self.cloud.ca).context("reading the cloud's CA")?;
        if right["rootCA"] != resin_api_types::encode_root_ca(&cloud_ca).as_str() {
            bail!("the configured image's rootCA is not the cloud's CA: {right}");
        }
        let cfg = configure::with_root_ca(&serde_json::to_vec(&right)?, &other)?;
        configure::configure_in_place(&disk, &cfg)
            .with_context(|| format!("configuring {}", disk.display()))?;
        let wrong = read().context("reading config.json back")?;
        if wrong["rootCA"] == right["rootCA"] || wrong["uuid"] != right["uuid"] {
            bail!("config.json after the injection: {wrong}");
        }
        let devices = |api: &Api| -> anyhow::Result<Vec<String>> {
            Ok(api
                .list(&format!("/v1/device?$filter=fleet%20eq%20{fleet}"))?
                .iter()
                .map(|d| d["uuid"].as_str().unwrap_or_default().to_string())
                .collect())
        };
        let before = devices(&self.api)?;
        println!(
            "  config.json's rootCA is now another CA named \"resin-cloud private CA\"; booting it"
        );
        // The shared device goes: this scenario is the last of a run.
        self.boot(disk)?;
        let t = Instant::now();
        let timeout = self.timeouts.online;
        let line = self.vm()?.wait_for("invalid peer certificate", timeout)?;
        println!(
            "  {:.0} s after the boot marker the supervisor said: {}",
            t.elapsed().as_secs_f64(),
            line.trim()
        );
        if !line.contains("refusing the cloud at https://10.0.2.2") || !line.contains("not trusted")
        {
            bail!("the supervisor's refusal does not name the cloud and the trust: {line}");
        }
        // Past the first refusal, a retry comes and fails the same way.
        let refusals = self.vm()?.count("invalid peer certificate");
        let seen = poll(timeout, Duration::from_secs(1), || {
            let n = self.vm.as_ref()?.count("invalid peer certificate");
            (n > refusals).then_some(n)
        })
        .ok_or_else(|| anyhow!("no second registration attempt within {timeout:?}"))?;
        let after = devices(&self.api)?;
        if after != before {
            bail!("the device with the wrong CA registered: fleet devices {before:?} -> {after:?}");
        }
        if let Some(u) = wrong["uuid"].as_str() {
            if after.iter().any(|a| a == u) {
                bail!("a device with the configured uuid {u} is in the fleet");
            }
        }
        println!(
            "  {seen} refusals in {:.0} s, and the fleet still has only {before:?}",
            t.elapsed().as_secs_f64()
        );
        if let Some(mut vm) = self.vm.take() {
            vm.kill()?;
        }
        self.booted = None;
        Ok(())
    }

    fn release(&mut self, greeting: &str, big: bool) -> anyhow::Result<i64> {
        let fleet = self
            .fleet
            .ok_or_else(|| anyhow!("no fleet (run provision first)"))?;
        let image = if big { &self.big_image } else { &self.image }
            .clone()
            .ok_or_else(|| anyhow!("no test image was pushed"))?;
        let base = self
            .image
            .clone()
            .ok_or_else(|| anyhow!("no test image was pushed"))?;
        let rel = self.api.post(
            "/v1/release",
            &json!({"fleet": fleet, "composition": composition(&image, &base, greeting)}),
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

    /// The uuid of release `rid`, as the state report names releases.
    fn release_uuid(&self, rid: i64) -> anyhow::Result<String> {
        let release = self.api.get(&format!("/v1/release({rid})"))?;
        Ok(release["uuid"].as_str().unwrap_or_default().to_string())
    }

    /// Waits until the cloud's device resource shows every named service
    /// `running` in the release `rid` (from the supervisor's state report).
    fn wait_running(&self, rid: i64, names: &[&str]) -> anyhow::Result<()> {
        let (id, _) = self.device()?;
        let api = self.api.clone();
        let ruuid = self.release_uuid(rid)?;
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
        self.release("v1", false)?;
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
        self.wait_running(rid, SERVICES)?;
        Ok(())
    }

    fn update_app(&mut self) -> anyhow::Result<()> {
        self.vm()?;
        let ticker_before = self.service_report("ticker")?;
        let t_set = now_ms();
        let rid = self.release("v2", true)?;
        let download = self.watch_download(rid, "heartbeat")?;
        println!(
            "  the cloud showed heartbeat downloading the new image {:.1}-{:.1} s after the target change (progress {:?} %)",
            (download.first_seen - t_set) as f64 / 1000.0,
            (download.last_seen - t_set) as f64 / 1000.0,
            download.progress
        );
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
        self.wait_running(rid, SERVICES)?;
        // Download-then-kill: the old heartbeat ran on while the device
        // pulled the new (48 MiB larger) image.
        let (id, _) = self.device()?;
        let lines = self.api.list(&format!("/v1/device({id})/logs"))?;
        let hb = |suffix: &str| -> Vec<i64> {
            let mut v: Vec<i64> = lines
                .iter()
                .filter(|l| {
                    l["service"] == "heartbeat"
                        && l["message"].as_str().is_some_and(|m| m.ends_with(suffix))
                })
                .filter_map(|l| l["timestamp"].as_i64())
                .collect();
            v.sort_unstable();
            v
        };
        let (old, new) = (hb(" v1"), hb(" v2"));
        let Some(&first_new) = new.first() else {
            bail!("no heartbeat line of the new release in the log");
        };
        verify_download_then_kill(&old, t_set, download.first_seen, first_new)?;
        // ticker is the same in both releases: it keeps its container, the
        // cloud shows it in the new release, and its counter never restarts.
        let ticker_after = self.service_report("ticker")?;
        let (before_id, after_id) = (
            &ticker_before["container_id"],
            &ticker_after["container_id"],
        );
        if before_id.is_null() || before_id != after_id {
            bail!("ticker, unchanged between the releases, was recreated: container {before_id} became {after_id}");
        }
        let counts: Vec<(i64, u64)> = {
            let mut v: Vec<(i64, u64)> = lines
                .iter()
                .filter(|l| l["service"] == "ticker")
                .filter_map(|l| {
                    let n = l["message"]
                        .as_str()?
                        .strip_prefix("ticker ")?
                        .trim()
                        .parse()
                        .ok()?;
                    Some((l["timestamp"].as_i64()?, n))
                })
                .collect();
            v.sort_unstable();
            v
        };
        verify_never_restarted(&counts, t_set)?;
        println!(
            "  ticker (unchanged) kept container {} and counted on from {} to {} across the update",
            after_id
                .as_str()
                .unwrap_or("?")
                .chars()
                .take(12)
                .collect::<String>(),
            counts.first().map_or(0, |c| c.1),
            counts.last().map_or(0, |c| c.1)
        );
        Ok(())
    }

    /// The state report's entry of the current release's `service`.
    fn service_report(&self, service: &str) -> anyhow::Result<Value> {
        let d = self.device_json()?;
        d["apps"]
            .as_object()
            .and_then(|apps| {
                apps.values()
                    .find_map(|a| a["services"].get(service).cloned())
            })
            .ok_or_else(|| anyhow!("the cloud shows no {service} in the device's apps"))
    }

    /// Polls the cloud's device resource (every 0.5 s) from the target change
    /// until `service` shows `downloading` in release `rid` and then stops
    /// showing it; returns when (host clock) and the progress values seen.
    fn watch_download(&self, rid: i64, service: &str) -> anyhow::Result<Download> {
        let (id, _) = self.device()?;
        let api = self.api.clone();
        let ruuid = self.release_uuid(rid)?;
        let mut seen: Option<Download> = None;
        let done = poll(self.timeouts.apps, Duration::from_millis(500), || {
            let dev = api.get(&format!("/v1/device({id})")).ok()?;
            let svc = dev["apps"]
                .as_object()?
                .values()
                .map(|a| &a["services"][service])
                .find(|s| !s.is_null())?;
            let downloading =
                svc["status"] == "downloading" && svc["release_uuid"] == ruuid.as_str();
            if downloading {
                let now = now_ms();
                let d = seen.get_or_insert(Download {
                    first_seen: now,
                    last_seen: now,
                    progress: Vec::new(),
                });
                d.last_seen = now;
                if let Some(p) = svc["download_progress"].as_u64() {
                    if d.progress.last() != Some(&p) {
                        d.progress.push(p);
                    }
                }
                return None;
            }
            match seen {
                Some(_) => Some(()),
                // Not yet downloading: fail early if the new release already
                // runs (the download was never shown).
                None => (svc["status"] == "running" && svc["release_uuid"] == ruuid.as_str())
                    .then_some(()),
            }
        });
        match (done, seen) {
            (Some(()), Some(d)) => Ok(d),
            (Some(()), None) => bail!(
                "{service} runs the new release, but the cloud never showed it downloading the new image"
            ),
            (None, _) => bail!(
                "the cloud did not show {service} downloading and then done within {:?}",
                self.timeouts.apps
            ),
        }
    }
}

/// What the cloud showed of one service's image download.
#[derive(Debug)]
struct Download {
    /// Host times (ms) of the first and last poll that showed it.
    first_seen: i64,
    last_seen: i64,
    /// The progress values shown, in order, without repeats.
    progress: Vec<u64>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Judges an app update from the old service's line times (ms, the
/// device's clock, which starts from the host's RTC), the time the target
/// changed and the time the cloud first showed the new image downloading
/// (both the host's clock), and the new service's first line.
///
/// Delete-then-download stops the old service before the pull starts, so
/// no old line can follow the moment the cloud shows the download. With
/// download-then-kill the old service prints on, without a hole (lines at
/// most 3 s apart), at least until then.
pub fn verify_download_then_kill(
    old: &[i64],
    t_set: i64,
    download_seen: i64,
    first_new: i64,
) -> anyhow::Result<()> {
    let Some(&last_old) = old.last() else {
        bail!("no heartbeat line of the old release in the log");
    };
    println!(
        "  the old heartbeat ran {:.1} s after the target change and {:.1} s after the cloud showed the download; no heartbeat for {:.1} s; the new one started {:.1} s after the change",
        (last_old - t_set) as f64 / 1000.0,
        (last_old - download_seen) as f64 / 1000.0,
        (first_new - last_old) as f64 / 1000.0,
        (first_new - t_set) as f64 / 1000.0
    );
    let during: Vec<i64> = old.iter().copied().filter(|t| *t >= t_set - 1000).collect();
    if let Some(w) = during.windows(2).find(|w| w[1] - w[0] > 3000) {
        bail!(
            "the old heartbeat stopped for {:.1} s during the update (download-then-kill keeps it running)",
            (w[1] - w[0]) as f64 / 1000.0
        );
    }
    if last_old < download_seen {
        bail!(
            "the old heartbeat stopped {:.1} s before the cloud showed the new image downloading: it was not kept running while the image was pulled",
            (download_seen - last_old) as f64 / 1000.0
        );
    }
    Ok(())
}

/// A service that was never restarted: its counter lines (time, count) run
/// on without going back, and some of them were written after `t_change`
/// (the target change), so the check spans the update.
pub fn verify_never_restarted(counts: &[(i64, u64)], t_change: i64) -> anyhow::Result<()> {
    if !counts.iter().any(|c| c.0 < t_change) || !counts.iter().any(|c| c.0 > t_change) {
        bail!(
            "ticker's lines do not span the target change ({} lines)",
            counts.len()
        );
    }
    for w in counts.windows(2) {
        if w[1].1 <= w[0].1 {
            bail!(
                "ticker's counter went from {} back to {} at {}: it was restarted",
                w[0].1,
                w[1].1,
                w[1].0
            );
        }
    }
    Ok(())
}

/// What a boot marker says: the slot (bootname) and OS version that booted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booted {
    pub slot: String,
    pub version: String,
}

impl Booted {
    /// Parses `resin-qemu: up slot=A version=1.0.0 docker=… supervisor=…`.
    pub fn parse(line: &str) -> Option<Self> {
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_string)
        };
        Some(Self {
            slot: field("slot=")?,
            version: field("version=")?,
        })
    }
}

/// The test release's services (qemu-tests/src/apps.rs).
const SERVICES: &[&str] = &["heartbeat", "store", "ticker"];

/// What the initrd prints on every boot, before systemd starts.
const BOOT_LINE: &str = "resin-initrd: switching";
/// The initrd's first line: a boot (after a reboot or a power cut) has begun.
const INITRD_START: &str = "resin-initrd: loading modules";
/// The boot marker: a boot is over (multi-user reached).
const BOOT_MARKER: &str = "resin-qemu: up";
/// What the boot marker prints just before its own line: /proc/cmdline.
const CMDLINE_LINE: &str = "resin-qemu: cmdline ";

/// Where a power cut was aimed, and whether the state it aimed at still held.
enum Aim {
    /// The state held right before the cut: what it was.
    Hit(String),
    /// The step finished before the cut: why it was not made.
    Missed(String),
}

/// One OS update of the power-cut scenario.
struct CutRound {
    from: Booted,
    to: String,
    version: String,
}

impl CutRound {
    /// After a cut the device boots either the old OS or the new one.
    fn good(&self, b: &Booted) -> bool {
        (b.slot == self.from.slot && b.version == self.from.version)
            || (b.slot == self.to && b.version == self.version)
    }
}

/// The fields of a device resource that tell an OS update's story.
fn os_summary(d: &Value) -> String {
    format!(
        "os_version={} boot_slot={} os_update_state={} progress={} reason={} online={}",
        d["os_version"],
        d["boot_slot"],
        d["os_update_state"],
        d["os_update_progress"],
        d["os_update_reason"],
        d["is_online"]
    )
}

fn state_is(d: &Value, states: &[&str]) -> bool {
    d["os_update_state"]
        .as_str()
        .is_some_and(|s| states.contains(&s))
}

impl Ctx {
    fn fleet_id(&self) -> anyhow::Result<i64> {
        self.fleet
            .ok_or_else(|| anyhow!("no fleet (run provision first)"))
    }

    fn booted(&self) -> anyhow::Result<Booted> {
        self.booted
            .clone()
            .ok_or_else(|| anyhow!("no boot marker seen yet (run provision first)"))
    }

    /// Boots of the running qemu so far (in its console log).
    fn boots(&self) -> anyhow::Result<usize> {
        Ok(self
            .vm
            .as_ref()
            .ok_or_else(|| anyhow!("no device is running (run provision first)"))?
            .count(BOOT_LINE))
    }

    /// Waits for the next boot marker; remembers what booted.
    fn wait_marker(&mut self, timeout: Duration) -> anyhow::Result<Booted> {
        let line = self.vm()?.wait_for("resin-qemu: up", timeout)?;
        self.note_marker(&line)
    }

    /// Parses a boot marker line, prints it and remembers what booted.
    fn note_marker(&mut self, line: &str) -> anyhow::Result<Booted> {
        let b = Booted::parse(line).ok_or_else(|| anyhow!("unreadable boot marker {line:?}"))?;
        println!("  booted: {line}");
        self.booted = Some(b.clone());
        Ok(b)
    }

    /// Waits until the cloud shows OS `version` committed on slot `bootname`
    /// of an online device.
    fn wait_committed(
        &self,
        version: &str,
        bootname: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let slot = self.disk.rauc(bootname)?;
        self.wait_device(&format!("{version} committed on {slot}"), timeout, |d| {
            d["os_version"] == version
                && d["boot_slot"] == slot
                && state_is(d, &["committed"])
                && d["is_online"] == true
        })
    }

    /// After an OS update or a rollback: the release's services run again.
    fn wait_apps_back(&self) -> anyhow::Result<()> {
        match self.release {
            Some(rid) => self.wait_running(rid, SERVICES),
            None => Ok(()),
        }
    }

    fn device_json(&self) -> anyhow::Result<Value> {
        let (id, _) = self.device()?;
        Ok(self.api.get(&format!("/v1/device({id})"))?)
    }

    /// Polls the cloud's device resource until `pred` holds.
    fn wait_device(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let (id, _) = self.device()?;
        let mut last = Value::Null;
        let found = poll(timeout, Duration::from_secs(2), || {
            let d = self.api.get(&format!("/v1/device({id})")).ok()?;
            if pred(&d) {
                Some(d)
            } else {
                last = d;
                None
            }
        });
        found.ok_or_else(|| {
            anyhow!(
                "the cloud did not show {what} within {timeout:?}; last seen: {}",
                os_summary(&last)
            )
        })
    }

    fn no_kas_rootfs(&self) -> anyhow::Result<()> {
        if self.os.inputs.rootfs_override.is_some() || self.os.supervisor.is_none() {
            bail!("the OS-update scenarios build new OS versions from the Debian stand-in rootfs; they do not run with --rootfs or --image");
        }
        Ok(())
    }

    /// The rootfs of OS `version` (units in `mask` masked) as a RAUC bundle
    /// signed with the device's trusted key.
    /// `boot_arg` is added to the kernel command line of the grub.cfg the
    /// rootfs carries for resin-boot.
    fn build_bundle(
        &self,
        version: &str,
        mask: &[&str],
        boot_arg: Option<&str>,
    ) -> anyhow::Result<PathBuf> {
        self.no_kas_rootfs()?;
        let t = Instant::now();
        let rootfs = self.os.inputs.rootfs(
            &self.work,
            version,
            &self.os.keys,
            self.os.supervisor.as_deref(),
            None,
            mask,
            boot_arg,
        )?;
        let out = self.work.join(format!("os-{version}.raucb"));
        let k = &self.os.keys;
        self.os
            .inputs
            .bundle(&rootfs, version, &k.cert, &k.key, None, &out)?;
        let _ = std::fs::remove_dir_all(&rootfs);
        let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        println!(
            "  built the {version} bundle ({} MiB) in {:.0} s",
            size >> 20,
            t.elapsed().as_secs_f64()
        );
        Ok(out)
    }

    /// A small bundle (a rootfs of one file) signed with `cert`/`key` for
    /// `compatible` (None: the device's): for bundles that must be refused.
    fn tiny_bundle(
        &self,
        version: &str,
        cert: &Path,
        key: &Path,
        compatible: Option<&str>,
    ) -> anyhow::Result<PathBuf> {
        let dir = self.work.join(format!("tiny-{version}"));
        std::fs::create_dir_all(dir.join("etc")).context("creating a tiny rootfs")?;
        std::fs::write(
            dir.join("etc/os-release"),
            format!("NAME=resinOS\nVERSION_ID={version}\n"),
        )
        .context("writing the tiny rootfs")?;
        // Incompressible filler: RAUC refuses a bundle whose squashfs is a
        // single 4 KiB block.
        let filler: Vec<u8> = (0..256 * 1024).map(|_| rand::random::<u8>()).collect();
        std::fs::write(dir.join("filler.bin"), filler).context("writing the tiny rootfs")?;
        let out = self.work.join(format!("os-{version}.raucb"));
        self.os
            .inputs
            .bundle(&dir, version, cert, key, compatible, &out)?;
        Ok(out)
    }

    /// Uploads `bundle` as OS release `version` and makes it the fleet's
    /// target OS.
    /// Uploads `bundle` as the OS release `version`.
    fn upload_os(&self, version: &str, bundle: &Path) -> anyhow::Result<()> {
        let osr = self.api.post(
            "/v1/os_release",
            &json!({"device_type": "qemuarm64", "version": version}),
        )?;
        let id = osr["id"].as_i64().context("os_release id")?;
        self.api
            .put_file(&format!("/v1/os_release({id})/bundle"), bundle)?;
        Ok(())
    }

    /// Uploads `bundle` as OS `version` and makes it the fleet's target.
    fn publish_os(&self, version: &str, bundle: &Path) -> anyhow::Result<()> {
        let fleet = self.fleet_id()?;
        self.upload_os(version, bundle)?;
        self.api.patch(
            &format!("/v1/fleet({fleet})"),
            &json!({"target_os_version": version}),
        )?;
        println!("  fleet {fleet}: target OS {version}");
        Ok(())
    }

    /// sha256 of slots A and B as they are on the disk image (read on the
    /// host while the guest runs).
    fn slot_hashes(&self) -> anyhow::Result<(String, String)> {
        let disk = self
            .vm
            .as_ref()
            .map(|v| v.config().disk.clone())
            .ok_or_else(|| anyhow!("no device is running"))?;
        let parts = partitions(&disk)?;
        let hash = |label: &str| -> anyhow::Result<String> {
            let (start, size) = parts
                .iter()
                .find(|p| p.0 == label)
                .map(|p| (p.1, p.2))
                .ok_or_else(|| anyhow!("no partition {label} on {}", disk.display()))?;
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "dd if='{}' bs=4M iflag=skip_bytes,count_bytes skip={start} count={size} status=none | sha256sum",
                    disk.display()
                ))
                .output()
                .context("running dd | sha256sum")?;
            let text = String::from_utf8_lossy(&out.stdout);
            text.split_whitespace()
                .next()
                .filter(|h| h.len() == 64)
                .map(str::to_string)
                .ok_or_else(|| {
                    anyhow!(
                        "cannot hash {label}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    )
                })
        };
        let [a, b] = self.disk.slots();
        Ok((hash(&a.label)?, hash(&b.label)?))
    }

    fn bad_bundle(&mut self) -> anyhow::Result<()> {
        self.vm()?;
        let from = self.booted()?;
        let slot = self.disk.rauc(&from.slot)?.to_string();
        let before = self.wait_device("the booted slot", self.timeouts.online, |d| {
            d["boot_slot"].as_str() == Some(slot.as_str())
        })?;
        let slots = self.slot_hashes()?;
        let boots = self.boots()?;
        let k = &self.os.keys;
        let cases = [
            (
                "9.0.0-foreign",
                k.foreign_cert.clone(),
                k.foreign_key.clone(),
                None,
                "signature",
            ),
            (
                "9.0.0-othercompat",
                k.cert.clone(),
                k.key.clone(),
                Some("resin-some-other-board"),
                "compatible",
            ),
        ];
        for (version, cert, key, compat, word) in cases {
            let b = self.tiny_bundle(version, &cert, &key, compat)?;
            self.publish_os(version, &b)?;
            let d = self.wait_device(
                &format!("the {version} update failed naming the {word}"),
                self.timeouts.apps,
                |d| {
                    state_is(d, &["failed"])
                        && d["os_update_reason"]
                            .as_str()
                            .is_some_and(|r| r.to_lowercase().contains(word))
                },
            )?;
            println!("  {version}: refused: {}", d["os_update_reason"]);
        }
        let after = self.device_json()?;
        for f in ["os_version", "boot_slot"] {
            if after[f] != before[f] {
                bail!("{f} changed from {} to {}", before[f], after[f]);
            }
        }
        if self.slot_hashes()? != slots {
            bail!("a slot was written although both bundles were refused");
        }
        if self.boots()? != boots {
            bail!("the device rebooted although both bundles were refused");
        }
        println!(
            "  slots A and B unchanged, no reboot, still {} on {}",
            after["os_version"], after["boot_slot"]
        );
        Ok(())
    }

    fn os_update(&mut self) -> anyhow::Result<()> {
        self.vm()?;
        let from = self.booted()?;
        let to = self.disk.other(&from.slot)?.bootname.clone();
        let version = "2.0.0";
        let bundle = self.build_bundle(version, &[], None)?;
        let t = Instant::now();
        self.publish_os(version, &bundle)?;
        let mut seen: Vec<String> = Vec::new();
        let (id, _) = self.device()?;
        let boots = self.boots()?;
        // Watch the cloud until it shows the reboot coming.
        let rebooting = poll(self.timeouts.os_update, Duration::from_secs(1), || {
            let d = self.api.get(&format!("/v1/device({id})")).ok()?;
            let s = d["os_update_state"].as_str().unwrap_or("").to_string();
            if seen.last() != Some(&s) {
                println!("  {:>4.0} s: {}", t.elapsed().as_secs_f64(), os_summary(&d));
                seen.push(s.clone());
            }
            (s == "rebooting").then_some(())
        });
        if rebooting.is_none() {
            bail!(
                "the cloud did not show the OS update rebooting within {:?}",
                self.timeouts.os_update
            );
        }
        // The supervisor sends `rebooting` before it reboots.
        if self.boots()? != boots {
            bail!("the cloud showed rebooting only after the device had rebooted");
        }
        let b = self.wait_marker(self.timeouts.os_update)?;
        if b.slot != to || b.version != version {
            bail!("expected slot {to} with {version} after the update, booted {b:?}");
        }
        let d = self.wait_committed(version, &to, self.timeouts.online)?;
        println!(
            "  {:.0} s after the target change: {}",
            t.elapsed().as_secs_f64(),
            os_summary(&d)
        );
        for s in ["downloading", "installing"] {
            if !seen.iter().any(|x| x == s) {
                println!("  (the cloud never showed {s}: it went by between two looks)");
            }
        }
        self.wait_apps_back()
    }

    /// The kernel command line of the last boot, from the line the boot
    /// marker prints before its own.
    fn last_cmdline(&self) -> anyhow::Result<String> {
        let tail = self.console_tail();
        tail.lines()
            .rev()
            .find_map(|l| {
                l.split_once(CMDLINE_LINE)
                    .map(|(_, c)| c.trim().to_string())
            })
            .ok_or_else(|| anyhow!("no {CMDLINE_LINE:?} line on the console"))
    }

    /// An OS update that changes grub.cfg: the new rootfs's boot payload has a
    /// grub.cfg with one more kernel argument; the bundle's post-install hook
    /// (meta-resin's resin-bundle-hook) copies it into resin-boot, and GRUB
    /// boots the new slot with it.
    fn boot_update(&mut self) -> anyhow::Result<()> {
        self.vm()?;
        let from = self.booted()?;
        let to = self.disk.other(&from.slot)?.bootname.clone();
        let version = "2.1.0";
        let arg = "resin.boot-update=2.1.0";
        let before = self.last_cmdline()?;
        if before.split_whitespace().any(|w| w == arg) {
            bail!("the kernel already has {arg} before the update: {before}");
        }
        let bundle = self.build_bundle(version, &[], Some(arg))?;
        let t = Instant::now();
        self.publish_os(version, &bundle)?;
        let b = self.wait_marker(self.timeouts.os_update)?;
        if b.slot != to || b.version != version {
            bail!("expected slot {to} with {version} after the update, booted {b:?}");
        }
        let after = self.last_cmdline()?;
        if !after.split_whitespace().any(|w| w == arg) {
            bail!("the new slot booted without the new grub.cfg's {arg}: /proc/cmdline is {after}");
        }
        println!(
            "  {:.0} s: slot {to} booted with the new grub.cfg: {after}",
            t.elapsed().as_secs_f64()
        );
        self.wait_committed(version, &to, self.timeouts.online)?;
        self.wait_apps_back()
    }

    /// Starts an OS update round for the power-cut scenario: a new version
    /// (3.0.0, then 3.1.0, …) built, published and made the fleet's target.
    fn power_cut_round(&mut self, round: u32) -> anyhow::Result<CutRound> {
        let from = self.booted()?;
        let version = format!("3.{round}.0");
        let bundle = self.build_bundle(&version, &[], None)?;
        self.publish_os(&version, &bundle)?;
        let to = self.disk.other(&from.slot)?.bootname.clone();
        println!(
            "  update round {}: {} on slot {} → {version} on slot {to}",
            round + 1,
            from.version,
            from.slot,
        );
        Ok(CutRound { to, from, version })
    }

    /// Waits until the update is in one of `states` with at least
    /// `min_progress` %, as the cloud shows it, and says so; or until it has
    /// gone past them (a later state, or a reboot started on the console),
    /// which is a miss: the step finished before a cut could hit it.
    fn wait_phase(
        &mut self,
        states: &[&str],
        later: &[&str],
        min_progress: i64,
        boots_before: usize,
        version: &str,
        before_cut: &mut Option<(Value, Value)>,
    ) -> anyhow::Result<Aim> {
        let deadline = Instant::now() + self.timeouts.os_update;
        let (id, _) = self.device()?;
        loop {
            if Instant::now() >= deadline {
                bail!(
                    "the cloud did not show the update {} within {:?}",
                    states.join(" or "),
                    self.timeouts.os_update
                );
            }
            if self.vm()?.count(INITRD_START) != boots_before {
                return Ok(Aim::Missed("the device rebooted first".into()));
            }
            if let Ok(d) = self.api.get(&format!("/v1/device({id})")) {
                // Right after a cut the cloud still shows what the device
                // reported before it: only a report that differs from that
                // one is news from the rebooted device.
                let now = (
                    d["os_update_state"].clone(),
                    d["os_update_progress"].clone(),
                );
                if before_cut.as_ref().is_some_and(|b| *b == now) {
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
                *before_cut = None;
                let progress = d["os_update_progress"].as_i64().unwrap_or(0);
                if state_is(&d, states) && progress >= min_progress {
                    *before_cut = Some(now);
                    return Ok(Aim::Hit(format!(
                        "while the cloud showed {} {progress}% (aimed at ≥ {min_progress}%)",
                        d["os_update_state"].as_str().unwrap_or("?")
                    )));
                }
                // `committed` of the version before is where every round starts.
                let stale = state_is(&d, &["committed"]) && d["os_version"] != version;
                if state_is(&d, later) && !stale {
                    return Ok(Aim::Missed(format!(
                        "the update was {} before {} reached {min_progress}%",
                        d["os_update_state"].as_str().unwrap_or("?"),
                        states.join("/")
                    )));
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Power cuts aimed at observed states of an OS update, never at guessed
    /// times. In each update round the first cut hits the download (a
    /// download that was cut resumes from its `.part`; a finished one is not
    /// fetched again, so there is one download to hit per round), the next
    /// ones RAUC's install (which starts over after every cut), and the last
    /// one the first boot of the new slot before it is confirmed. Each cut
    /// is made right after its state was seen to hold. A state that went by
    /// first is counted as a miss and aimed at again: the install, if the
    /// update is still installing, else in a new update round once this one
    /// has completed. Progress thresholds come from the seed.
    fn power_cut(&mut self) -> anyhow::Result<()> {
        self.vm()?;
        let seed = self.os.seed;
        let n = self.os.power_cuts.max(1);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        println!("  {n} power cuts, seed {seed} (--seed repeats them)");
        let mut round = 0;
        let mut upd = self.power_cut_round(round)?;
        let mut download_aimed = false;
        let (mut hits, mut misses) = (0u32, 0u32);
        // What the cloud showed when the last cut was made (stale until the
        // rebooted device reports again).
        let mut before_cut: Option<(Value, Value)> = None;
        while hits < n {
            if misses > 2 * n {
                bail!("{misses} cuts missed the state they aimed at (hits {hits}/{n}): the device finishes each step before it is seen");
            }
            let boots_before = self.vm()?.count(INITRD_START);
            let aim = if hits + 1 < n && !download_aimed {
                download_aimed = true;
                let p = rng.random_range(0..60);
                self.wait_phase(
                    &["downloading"],
                    &["installing", "installed", "rebooting", "committed"],
                    p,
                    boots_before,
                    &upd.version,
                    &mut before_cut,
                )?
            } else if hits + 1 < n {
                let p = rng.random_range(0..80);
                self.wait_phase(
                    &["installing"],
                    &["installed", "rebooting", "committed"],
                    p,
                    boots_before,
                    &upd.version,
                    &mut before_cut,
                )?
            } else {
                self.aim_first_boot(&upd.to, &mut rng)?
            };
            let phase = match aim {
                Aim::Hit(phase) => phase,
                Aim::Missed(why) => {
                    misses += 1;
                    println!("  cut {}/{n} missed: {why}; counted, aimed again", hits + 1);
                    let d = self.device_json()?;
                    if hits + 1 < n && state_is(&d, &["installing"]) {
                        continue; // the install is still there to hit
                    }
                    // Let this update finish (its boot marker read), then
                    // start another round so there is something to cut.
                    self.wait_committed(&upd.version, &upd.to, self.timeouts.os_update)?;
                    let b = self.wait_marker(self.timeouts.boot)?;
                    if b.slot != upd.to || b.version != upd.version {
                        bail!(
                            "expected slot {} with {} after the update, booted {b:?}",
                            upd.to,
                            upd.version
                        );
                    }
                    round += 1;
                    upd = self.power_cut_round(round)?;
                    download_aimed = false;
                    continue;
                }
            };
            self.vm()?.power_cycle()?;
            hits += 1;
            let b = self.wait_marker(self.timeouts.boot)?;
            if !upd.good(&b) {
                bail!(
                    "after power cut {hits} the device booted {b:?}, neither the old nor the new OS"
                );
            }
            println!(
                "  power cut {hits}/{n} {phase}: booted slot {} with {}",
                b.slot, b.version
            );
        }
        println!("  {hits} cuts hit the state they aimed at; {misses} missed it (the step finished first) and were aimed again; {} update round(s)", round + 1);
        // The update, resumed by the supervisor, completes.
        let cur = self.booted()?;
        if cur.slot != upd.to {
            let b = self.wait_marker(self.timeouts.os_update)?;
            if b.slot != upd.to || b.version != upd.version {
                bail!(
                    "expected slot {} with {} once the update finished, booted {b:?}",
                    upd.to,
                    upd.version
                );
            }
        }
        let d = self.wait_committed(&upd.version, &upd.to, self.timeouts.os_update)?;
        println!("  after the cuts: {}", os_summary(&d));
        self.wait_apps_back()
    }

    /// The new slot's first boot: the initrd names its root; the cut comes a
    /// seeded part of the measured boot time later, provided the boot marker
    /// (the boot is over) has not come first.
    fn aim_first_boot(&mut self, to: &str, rng: &mut rand::rngs::StdRng) -> anyhow::Result<Aim> {
        let needle = self.disk.root_line(to)?;
        let t = self.timeouts.os_update;
        self.vm()?.wait_for(&needle, t)?;
        let seen = Instant::now();
        let boot = self.boot_time.unwrap_or(Duration::from_secs(40));
        let delay = boot.mul_f64(rng.random_range(0.0..0.8));
        let markers = self.vm()?.count(BOOT_MARKER);
        loop {
            if self.vm()?.count(BOOT_MARKER) != markers {
                return Ok(Aim::Missed(format!(
                    "slot {to}'s boot was over {:.1} s after its initrd, before the cut",
                    seen.elapsed().as_secs_f64()
                )));
            }
            if seen.elapsed() >= delay {
                return Ok(Aim::Hit(format!(
                    "{:.1} s into the first boot of slot {to} (its boot marker not yet seen)",
                    seen.elapsed().as_secs_f64()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn rollback(&mut self) -> anyhow::Result<()> {
        self.vm()?;
        let from = self.booted()?;
        let to = self.disk.other(&from.slot)?.bootname.clone();
        let version = "4.0.0";
        let bundle = self.build_bundle(version, &["resin-supervisor.service"], None)?;
        self.upload_os(version, &bundle)?;
        let fleet_os =
            self.api.get(&format!("/v1/fleet({})", self.fleet_id()?))?["target_os_version"].clone();
        let rollout = self.start_os_rollout(version)?;
        let new_root = self.disk.root_line(&to)?;
        let mut trials = 0;
        let mut guard_reboots = 0;
        let mut timeout = self.timeouts.os_update;
        loop {
            let (i, line) = self.vm()?.wait_for_any(
                &[&new_root, "resin-boot-guard: ", "resin-qemu: up"],
                timeout,
            )?;
            timeout = self.timeouts.boot;
            match i {
                0 => {
                    trials += 1;
                    println!("  boot {trials} of slot {to} ({version}, supervisor masked)");
                }
                1 => {
                    if line.contains("rebooting") {
                        guard_reboots += 1;
                    }
                    println!("  {}", line.trim());
                }
                _ => {
                    let b = self.note_marker(&line)?;
                    if b == from {
                        break;
                    }
                    if b.slot != to {
                        bail!("booted {b:?}: neither the old slot nor the new one");
                    }
                }
            }
        }
        if trials == 0 || guard_reboots == 0 {
            bail!("back on slot {} without a boot of slot {to} ({trials}) that the guard rebooted ({guard_reboots})", from.slot);
        }
        println!(
            "  GRUB fell back to slot {} after {trials} boots of slot {to}",
            from.slot
        );
        let from_rauc = self.disk.rauc(&from.slot)?.to_string();
        let d = self.wait_device(
            "the update rolled back, with the reason",
            self.timeouts.online,
            |d| {
                state_is(d, &["rolled-back"])
                    && d["os_version"] == from.version.as_str()
                    && d["boot_slot"] == from_rauc.as_str()
                    && d["os_update_reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("fell back"))
            },
        )?;
        println!("  {}", os_summary(&d));
        self.wait_rollout_halted(rollout, &fleet_os)?;
        self.wait_apps_back()
    }

    /// A two-wave rollout of OS `version`: the first wave is this device
    /// (tagged `wave=canary`), which may not fail once; the second is the
    /// rest of the fleet. The fleet's own target OS stays where it is.
    fn start_os_rollout(&self, version: &str) -> anyhow::Result<i64> {
        let fleet = self.fleet_id()?;
        let (device, _) = self.device()?;
        self.api.post(
            "/v1/device_tag",
            &json!({"device": device, "tag_key": "wave", "value": "canary"}),
        )?;
        // The soak outlasts the whole fallback (trial boots, guard reboots),
        // so the canary cannot count as healthy before it fails.
        let soak = self.timeouts.os_update.as_secs().max(60);
        let r = self.api.post(
            "/v1/rollout",
            &json!({"fleet": fleet, "name": format!("os {version}"), "os_version": version,
            "waves": [
                {"tags": {"wave": "canary"}, "soak_secs": soak, "max_failures": 0,
                 "timeout_secs": soak * 4},
                {"percent": 100, "soak_secs": 60}
            ]}),
        )?;
        let id = r["id"].as_i64().context("rollout id")?;
        self.api
            .post(&format!("/v1/rollout({id})/start"), &json!({}))?;
        let p = self.api.get(&format!("/v1/rollout({id})/progress"))?;
        if p["waves"][0]["counts"]["size"] != 1 {
            bail!("rollout {id}: the canary wave is not this one device: {p}");
        }
        println!("  rollout {id}: OS {version}, wave 1 = this device, wave 2 = the rest of fleet {fleet}");
        Ok(id)
    }

    /// The rollout halts by itself in its first wave, saying why, and the
    /// fleet's target OS is still `old` (what it was before the rollout).
    fn wait_rollout_halted(&self, id: i64, old: &Value) -> anyhow::Result<()> {
        let mut last = Value::Null;
        let p = poll(self.timeouts.online, Duration::from_secs(2), || {
            let p = self.api.get(&format!("/v1/rollout({id})/progress")).ok()?;
            if p["state"] == "halted" {
                Some(p)
            } else {
                last = p;
                None
            }
        })
        .ok_or_else(|| {
            anyhow!(
                "rollout {id} did not halt within {:?}: {last}",
                self.timeouts.online
            )
        })?;
        let halt = p["events"]
            .as_array()
            .and_then(|e| e.iter().rev().find(|e| e["to"] == "halted"))
            .ok_or_else(|| anyhow!("rollout {id} is halted without a halt event: {p}"))?;
        let reason = halt["reason"].as_str().unwrap_or_default();
        if halt["wave"] != 0 || !reason.contains("os rollback") {
            bail!("rollout {id} halted, but not in wave 1 for the OS rollback: {halt}");
        }
        if p["current_wave"] != 0 {
            bail!("rollout {id} went on to a later wave: {p}");
        }
        let fleet = self.api.get(&format!("/v1/fleet({})", self.fleet_id()?))?;
        if fleet["target_os_version"] != *old {
            bail!(
                "the fleet's target OS moved from {old} to {} during a halted rollout",
                fleet["target_os_version"]
            );
        }
        println!("  rollout {id} halted by itself: {reason}");
        Ok(())
    }
}

/// (name, start byte, size in bytes) of each partition of a disk image, by
/// `sfdisk --json`.
fn partitions(disk: &Path) -> anyhow::Result<Vec<(String, u64, u64)>> {
    let out = std::process::Command::new("sfdisk")
        .arg("--json")
        .arg(disk)
        .output()
        .context("running sfdisk --json (apt-get install fdisk)")?;
    if !out.status.success() {
        bail!(
            "sfdisk --json {}: {}",
            disk.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("sfdisk's JSON")?;
    let t = &v["partitiontable"];
    let sector = t["sectorsize"].as_u64().unwrap_or(512);
    Ok(t["partitions"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| {
                    Some((
                        p["name"].as_str()?.to_string(),
                        p["start"].as_u64()? * sector,
                        p["size"].as_u64()? * sector,
                    ))
                })
                .collect()
        })
        .unwrap_or_default())
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
    fn a_restarted_counter_is_caught() {
        let ok = [(1, 1), (3, 2), (5, 3), (7, 4)];
        assert!(verify_never_restarted(&ok, 4).is_ok());
        let restarted = [(1, 1), (3, 2), (5, 1), (7, 2)];
        assert!(verify_never_restarted(&restarted, 4).is_err());
        assert!(
            verify_never_restarted(&ok, 10).is_err(),
            "must span the change"
        );
    }

    #[test]
    fn download_then_kill_is_told_from_delete_then_download() {
        // Old lines every second until 20 s after the change, the download
        // shown from 6 s, the new one at 23 s.
        let old: Vec<i64> = (0..=30).map(|s| s * 1000 - 10_000).collect();
        assert!(verify_download_then_kill(&old, 0, 6_000, 23_000).is_ok());
        // Killed at 2 s, before the pull (delete-then-download).
        let old: Vec<i64> = (0..=12).map(|s| s * 1000 - 10_000).collect();
        assert!(verify_download_then_kill(&old, 0, 6_000, 23_000).is_err());
        // A hole in the old service's lines during the update.
        let mut old: Vec<i64> = (0..=30).map(|s| s * 1000 - 10_000).collect();
        old.retain(|t| !(5_000..12_000).contains(t));
        assert!(verify_download_then_kill(&old, 0, 6_000, 23_000).is_err());
        assert!(verify_download_then_kill(&[], 0, 6_000, 23_000).is_err());
    }

    #[test]
    fn boot_markers_are_parsed() {
        let b = Booted::parse(
            "resin-qemu: up slot=B version=2.0.0 docker=active supervisor=activating",
        )
        .unwrap();
        assert_eq!((b.slot.as_str(), b.version.as_str()), ("B", "2.0.0"));
        assert!(Booted::parse("resin-qemu: up").is_none());
    }

    #[test]
    fn scenarios_sort_in_device_order() {
        let mut v = vec![Scenario::UpdateApp, Scenario::Provision, Scenario::Deploy];
        v.sort();
        assert_eq!(
            v,
            vec![Scenario::Provision, Scenario::Deploy, Scenario::UpdateApp]
        );
        assert_eq!(Scenario::UpdateApp.name(), "update-app");
        // remote-access reuses the running apps, before the OS updates reboot it.
        let mut v = [
            Scenario::BadBundle,
            Scenario::RemoteAccess,
            Scenario::UpdateApp,
        ];
        v.sort();
        assert_eq!(v[1], Scenario::RemoteAccess);
        // git-push reuses the booted device before the OS updates reboot it.
        assert!(Scenario::UpdateApp < Scenario::GitPush && Scenario::GitPush < Scenario::BadBundle);
        // wrong-ca replaces the shared device: it comes last.
        let mut v = [Scenario::WrongCa, Scenario::Rollback, Scenario::Provision];
        v.sort();
        assert_eq!(v.last(), Some(&Scenario::WrongCa));
        assert_eq!(Scenario::WrongCa.name(), "wrong-ca");
        use clap::ValueEnum;
        assert_eq!(
            Scenario::from_str("wrong-ca", false).ok(),
            Some(Scenario::WrongCa)
        );
    }
}
