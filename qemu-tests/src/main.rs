//! `resin-qemu`: builds the emulated ARM64 device (cached), starts resin-cloud
//! and the registry on loopback, and runs the end-to-end scenarios on it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use resin_qemu_tests::apps;
use resin_qemu_tests::assets::{make_keys, Workspace};
use resin_qemu_tests::device::DeviceInputs;
use resin_qemu_tests::host::{ensure_registry, Cloud, CloudBuilder};
use resin_qemu_tests::qemu::QemuConfig;
use resin_qemu_tests::scenarios::{Ctx, OsInputs, Scenario, Timeouts};
use resin_qemu_tests::workdir;

/// The runner's one configuration (flags, or the RESIN_QEMU_* environment).
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
struct Config {
    /// Repository root. Default: the current directory.
    #[arg(long, env = "RESIN_ROOT", default_value = ".")]
    root: PathBuf,
    /// Cache of slow artefacts (rootfs, kernel, initrd, GRUB), outside the clone.
    #[arg(
        long,
        env = "RESIN_QEMU_CACHE",
        default_value = "/var/cache/resin-qemu"
    )]
    cache_dir: PathBuf,
    /// Artefacts of this run (disk images, console logs, cloud data). Default:
    /// /var/tmp/resin-qemu/run-<unix time>. Kept on failure (and with --keep).
    #[arg(long, env = "RESIN_QEMU_WORK")]
    work_dir: Option<PathBuf>,
    /// Keep the work dir after a successful run too.
    #[arg(long)]
    keep: bool,
    /// Free space (GiB) the work dir's filesystem must have before a run
    /// starts. Ended runs' dirs beside it are removed to make room, but for
    /// the newest two while there is enough; below this the run refuses to
    /// start. A whole run peaks at about 5 GiB (see docs/qemu-tests.md).
    #[arg(long, env = "RESIN_QEMU_MIN_FREE_GIB", default_value_t = 8)]
    min_free_gib: u64,
    /// Directory with the host binaries resin-cloud and resin-imagegen.
    #[arg(long, env = "RESIN_QEMU_BIN_DIR", default_value = "target/debug")]
    bin_dir: PathBuf,
    /// imagegen's layout file.
    #[arg(long, default_value = "imagegen/layouts/resin-ab.toml")]
    layout: PathBuf,
    /// A rootfs (tarball or directory) from a kas build of meta-resin, used
    /// instead of the Debian stand-in.
    #[arg(long)]
    rootfs: Option<PathBuf>,
    /// A disk image from a kas build, used as-is instead of building one.
    #[arg(long)]
    image: Option<PathBuf>,
    /// Total disk size of the built image.
    #[arg(long, default_value = "3GiB")]
    disk_size: String,
    /// OS version of the built rootfs (VERSION_ID).
    #[arg(long, default_value = "1.0.0")]
    os_version: String,
    /// Registry port on 127.0.0.1 (the guest reaches it as 10.0.2.2:<port>).
    #[arg(long, default_value_t = 55000)]
    registry_port: u16,
    /// resin-cloud port on 127.0.0.1 (0: a free one).
    #[arg(long, default_value_t = 0)]
    cloud_port: u16,
    /// QEMU -cpu (cortex-a57 boots far faster than max under TCG).
    #[arg(long, default_value = "cortex-a57")]
    cpu: String,
    /// Seconds to wait for the boot marker.
    #[arg(long, default_value_t = 420)]
    boot_timeout: u64,
    /// Seconds to wait for the device to show online after booting.
    #[arg(long, default_value_t = 240)]
    online_timeout: u64,
    /// Seconds to wait for app effects (containers running, log lines).
    #[arg(long, default_value_t = 420)]
    apps_timeout: u64,
    /// Seconds an OS update may take from the target change to the new slot's
    /// boot marker (download, install, reboot).
    #[arg(long, default_value_t = 1200)]
    os_update_timeout: u64,
    /// Power cuts (SIGKILL of qemu) during the power-cut scenario's update.
    #[arg(long, default_value_t = 5)]
    power_cuts: u32,
    /// Seed of the power cuts' timing. Default: the current time (printed).
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Parser)]
#[command(
    name = "resin-qemu",
    version,
    about = "resin's end-to-end tests on an emulated ARM64 device"
)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build (or find cached) every device artefact and print their paths.
    Assets,
    /// Check, without building anything, that everything the device needs is
    /// here: qemu-system-aarch64 starts with the device's exact machine and
    /// device arguments and its UEFI firmware prints its banner (so the
    /// firmware and option ROMs load), and the asset steps' tools, GRUB's
    /// arm64 modules and the aarch64 cross toolchain are installed.
    Preflight {
        /// Seconds to wait for the firmware banner.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Run scenarios in order on one shared device and print their timings.
    Run {
        /// Scenarios to run (default: all but boot, in device order).
        #[arg(value_enum)]
        scenarios: Vec<Scenario>,
        /// After the scenarios, keep the device, cloud and registry running and
        /// follow the device's logs until Ctrl-C (the demo).
        #[arg(long)]
        hold: bool,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(e) = real_main(cli) {
        eprintln!("resin-qemu: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    let c = cli.config;
    let root = std::fs::canonicalize(&c.root)
        .with_context(|| format!("repository root {}", c.root.display()))?;
    let ws = Workspace {
        root: root.clone(),
        cache: c.cache_dir.clone(),
    };
    let abs = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            root.join(p)
        }
    };
    match cli.command {
        Cmd::Preflight { timeout } => {
            let dir = tempfile::Builder::new()
                .prefix("resin-qemu-preflight")
                .tempdir()
                .context("creating a temp dir for the preflight")?;
            let took = resin_qemu_tests::qemu::preflight(
                dir.path(),
                &c.cpu,
                Duration::from_secs(timeout),
            )?;
            println!(
                "preflight: qemu-system-aarch64 -M virt -cpu {} with AAVMF, virtio-net and virtio-rng: firmware banner after {:.1} s",
                c.cpu,
                took.as_secs_f64()
            );
            ws.step("preflight", &[], &[])?;
            println!("preflight: device assets' tools ok");
            Ok(())
        }
        Cmd::Assets => {
            for step in ["rootfs", "kernel", "initrd", "grub", "supervisor"] {
                let p = ws.step(step, &[], &[])?;
                println!("{step}: {}", p.display());
            }
            Ok(())
        }
        Cmd::Run {
            mut scenarios,
            hold,
        } => {
            if scenarios.is_empty() {
                scenarios = vec![
                    Scenario::Provision,
                    Scenario::Deploy,
                    Scenario::UpdateApp,
                    Scenario::RemoteAccess,
                    Scenario::GitPush,
                    Scenario::BadBundle,
                    Scenario::OsUpdate,
                    Scenario::BootUpdate,
                    Scenario::PowerCut,
                    Scenario::Rollback,
                    Scenario::WrongCa,
                ];
            }
            scenarios.sort();
            scenarios.dedup();
            let work = match &c.work_dir {
                Some(w) => abs(w),
                None => PathBuf::from(format!(
                    "/var/tmp/resin-qemu/run-{}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0)
                )),
            };
            // Emptied first, so an earlier run's files there count as free.
            workdir::fresh(&work)?;
            // A missing firmware file or ROM fails here, named with its
            // package, not after minutes of setup as an empty console.
            resin_qemu_tests::qemu::preflight(
                &work.join("preflight"),
                &c.cpu,
                Duration::from_secs(c.boot_timeout),
            )
            .context("preflight (resin-qemu preflight)")?;
            let _ = std::fs::remove_dir_all(work.join("preflight"));
            let parent = work.parent().unwrap_or(Path::new("/"));
            match workdir::make_room(parent, &work, c.min_free_gib << 30) {
                Ok(removed) => {
                    for dir in removed {
                        println!("resin-qemu: removed {} (an earlier run's)", dir.display());
                    }
                }
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&work);
                    return Err(e.into());
                }
            }
            println!("resin-qemu: artefacts in {}", work.display());
            let ok = run_scenarios(&c, &ws, &work, &scenarios, hold, &abs)?;
            if ok && !c.keep && !hold {
                let _ = std::fs::remove_dir_all(&work);
            }
            if !ok {
                bail!(
                    "some scenarios failed; artefacts kept in {}",
                    work.display()
                );
            }
            Ok(())
        }
    }
}

fn run_scenarios(
    c: &Config,
    ws: &Workspace,
    work: &Path,
    scenarios: &[Scenario],
    hold: bool,
    abs: &dyn Fn(&Path) -> PathBuf,
) -> anyhow::Result<bool> {
    let t_setup = Instant::now();
    let guest_registry = format!("10.0.2.2:{}", c.registry_port);
    let inputs = DeviceInputs {
        ws: ws.clone(),
        imagegen: abs(&c.bin_dir).join("resin-imagegen"),
        layout: abs(&c.layout),
        rootfs_override: c.rootfs.as_ref().map(|p| abs(p)),
        disk_size: c.disk_size.clone(),
        guest_registry: guest_registry.clone(),
    };
    let disk = inputs.disk_layout()?;
    let keys = make_keys(&work.join("keys"))?;
    let sup = if c.rootfs.is_none() && c.image.is_none() {
        Some(ws.step("supervisor", &[], &[])?)
    } else {
        None
    };
    let base_image = match &c.image {
        Some(i) => abs(i),
        None => {
            let rootfs =
                inputs.rootfs(work, &c.os_version, &keys, sup.as_deref(), None, &[], None)?;
            let disk = inputs.disk(work, &rootfs, &work.join("base.img"))?;
            let _ = std::fs::remove_dir_all(&rootfs);
            disk
        }
    };
    let _registry = ensure_registry(c.registry_port, &work.join("registry"))?;
    // The cloud builds (`git push`) with the private dockerd, when there is one.
    let builder = std::env::var(apps::DOCKER_HOST_VAR)
        .ok()
        .map(|docker_host| CloudBuilder {
            registry: format!("127.0.0.1:{}", c.registry_port),
            device_registry: guest_registry.clone(),
            docker_host,
        });
    let cloud = Cloud::start(
        &abs(&c.bin_dir).join("resin-cloud"),
        &work.join("cloud"),
        c.cloud_port,
        builder.as_ref(),
    )?;
    println!(
        "resin-qemu: cloud at {} (the device sees {})",
        cloud.url, cloud.public_url
    );
    let host_registry = format!("127.0.0.1:{}", c.registry_port);
    // The first release's image, and a 48 MiB larger one for update-app, so
    // the old service must keep running while the device pulls.
    let images = match std::env::var(apps::DOCKER_HOST_VAR) {
        Ok(h) => Some((
            apps::push_busybox(ws, work, &h, &host_registry, &guest_registry, "arm64", 0)?,
            apps::push_busybox(
                ws,
                work,
                &h,
                &host_registry,
                &guest_registry,
                "arm64-big",
                48,
            )?,
        )),
        Err(_)
            if scenarios
                .iter()
                .any(|s| Scenario::Deploy <= *s && *s < Scenario::WrongCa) =>
        {
            bail!("{} is unset: start the private dockerd with scripts/services.sh and source /tmp/resin-run/env.sh", apps::DOCKER_HOST_VAR)
        }
        Err(_) => None,
    };
    let (image, big_image) = images.unzip();
    println!(
        "resin-qemu: setup took {:.0} s",
        t_setup.elapsed().as_secs_f64()
    );
    let mut qemu = QemuConfig::new(work.join("device.img"), work.join("qemu"));
    qemu.cpu = c.cpu.clone();
    let api = cloud.client();
    let mut ctx = Ctx {
        cloud,
        api,
        image,
        big_image,
        base_image,
        os_version: c.os_version.clone(),
        work: work.to_path_buf(),
        qemu,
        timeouts: Timeouts {
            boot: Duration::from_secs(c.boot_timeout),
            online: Duration::from_secs(c.online_timeout),
            apps: Duration::from_secs(c.apps_timeout),
            os_update: Duration::from_secs(c.os_update_timeout),
        },
        vm: None,
        fleet: None,
        device: None,
        release: None,
        booted: None,
        boot_time: None,
        disk,
        os: OsInputs {
            inputs,
            keys,
            supervisor: sup,
            power_cuts: c.power_cuts,
            seed: c.seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            }),
        },
    };
    let mut results = Vec::new();
    let mut failed = false;
    for s in scenarios {
        if failed {
            results.push((s.name(), "skipped", 0.0));
            continue;
        }
        println!("=== {} ===", s.name());
        let t = Instant::now();
        match ctx.run(*s) {
            Ok(()) => results.push((s.name(), "passed", t.elapsed().as_secs_f64())),
            Err(e) => {
                failed = true;
                results.push((s.name(), "FAILED", t.elapsed().as_secs_f64()));
                println!("--- {} failed: {e:#}", s.name());
                println!("--- last 200 console lines:\n{}", ctx.console_tail());
                println!(
                    "--- last 30 lines of the cloud log:\n{}",
                    ctx.cloud.service.log_tail(30)
                );
            }
        }
    }
    println!("=== timings ===");
    for (n, r, secs) in &results {
        println!("{n:<12} {r:<8} {secs:>6.0} s");
    }
    let count = |what: &str| results.iter().filter(|r| r.1 == what).count();
    println!(
        "{} passed, {} failed, {} skipped",
        count("passed"),
        count("FAILED"),
        count("skipped")
    );
    if hold && !failed {
        hold_and_tail(&ctx)?;
    }
    Ok(!failed)
}

/// The demo's end: print where things are and follow the device's logs.
fn hold_and_tail(ctx: &Ctx) -> anyhow::Result<()> {
    println!("cloud:   {} (API key {})", ctx.cloud.url, ctx.cloud.api_key);
    println!(
        "dashboard: {}/ (log in as qemu-tests, one-time password {}; the browser must trust {})",
        ctx.cloud.url,
        ctx.cloud.dashboard_password,
        ctx.cloud.ca.display()
    );
    if let Some((id, uuid)) = &ctx.device {
        println!("device:  {uuid} (id {id})");
        println!("console: {}", ctx.qemu.console_log().display());
        println!("--- device logs (Ctrl-C to stop) ---");
        ctx.api.follow_logs(*id, |l| {
            println!(
                "{} {}",
                l["service"].as_str().unwrap_or("system"),
                l["message"].as_str().unwrap_or("")
            );
        })?;
    }
    Ok(())
}
