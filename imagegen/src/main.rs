//! `resin-imagegen`: builds resin's A/B disk images from a layout file, renders the boot and
//! RAUC configuration, writes config.json into images, inspects them, and makes RAUC bundles.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use resin_imagegen::build::{build_format, BuildOptions, ImageFormat};
use resin_imagegen::configure::{self, Compression};
use resin_imagegen::inspect::{inspect_image, inspect_image_with, InspectError};
use resin_imagegen::layout::{load_or_default, Layout};
use resin_imagegen::rauc::{
    make_bundle, make_dev_keys, BundleFormat, BundleSpec, SquashfsCompression,
};
use resin_imagegen::render;
use resin_imagegen::size::Size;

/// The command line (the tool's whole configuration; defaults are in each flag's help).
#[derive(Debug, Parser)]
#[command(name = "resin-imagegen", version, about)]
struct Cli {
    /// Log filter (RUST_LOG syntax).
    #[arg(
        long,
        env = "RESIN_IMAGEGEN_LOG",
        default_value = "warn",
        global = true
    )]
    log: String,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Layout selection shared by `build` and `render`.
#[derive(Debug, clap::Args)]
struct LayoutArgs {
    /// The layout file (default: the shipped resin-ab.toml, built into the binary).
    #[arg(long)]
    layout: Option<PathBuf>,
    /// Override a layout field: `PART.FIELD=VALUE` (rootA.size=2GiB), `disk.size=8GiB`,
    /// `bootloader.attempts=5`, `device-type=raspberrypi4-64`. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

impl LayoutArgs {
    fn load(&self) -> Result<Layout> {
        Ok(load_or_default(self.layout.as_deref(), &self.sets)?)
    }
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build a disk image (sparse, atomic) with its .bmap.
    Build {
        #[command(flatten)]
        layout: LayoutArgs,
        /// Root filesystem for slot A: a directory, a tarball, or an ext4 image (input `rootfs`).
        #[arg(long)]
        rootfs: Option<PathBuf>,
        /// Boot partition contents, e.g. a directory with EFI/BOOT/BOOTAA64.EFI (input `boot`).
        #[arg(long)]
        boot: Option<PathBuf>,
        /// Bind any other layout input: `NAME=PATH`. Repeatable.
        #[arg(long = "input", value_name = "NAME=PATH")]
        inputs: Vec<String>,
        /// config.json to write into the boot partition's reservation (default: `{}`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Output image path; `.bmap` (and `.zst`/`.xz`) are written beside it.
        #[arg(long, short)]
        output: PathBuf,
        /// Also write a compressed copy: none, zstd or xz.
        #[arg(long, value_enum, default_value_t = Compression::None)]
        compress: Compression,
        /// Image format: raw (default; with its .bmap) or qcow2 (for QEMU; no .bmap, no --compress).
        #[arg(long, value_enum, default_value_t = ImageFormat::Raw)]
        format: ImageFormat,
        /// Do not write the .bmap.
        #[arg(long, conflicts_with = "bmap")]
        no_bmap: bool,
        /// Write the .bmap (the default; accepted for explicitness).
        #[arg(long)]
        bmap: bool,
        /// Seed for the disk, partition and filesystem UUIDs (default: layout + SOURCE_DATE_EPOCH).
        #[arg(long)]
        seed: Option<String>,
    },
    /// Render grub.cfg, grubenv, boot.cmd, fstab and system.conf from the layout into DIR.
    Render {
        #[command(flatten)]
        layout: LayoutArgs,
        /// Output directory.
        #[arg(long, visible_aliases = ["output", "out-dir"])]
        out: PathBuf,
    },
    /// Write systemd-repart definitions (repart.d/NN-NAME.conf) from the layout into DIR;
    /// notes on what systemd-repart cannot express go to stderr.
    RenderRepart {
        #[command(flatten)]
        layout: LayoutArgs,
        /// Output directory (created if missing; files of the same names are replaced).
        #[arg(long, visible_aliases = ["output", "out-dir"])]
        out: PathBuf,
    },
    /// Convert a genimage config into a layout file. What the layout cannot express is listed
    /// on stderr and the exit status is 3 (0 when nothing was left out; 1 on errors).
    ImportGenimage {
        /// The genimage config (libconfuse syntax).
        config: PathBuf,
        /// genimage's --inputpath: where the images the config does not define are found
        /// (their sizes size the partitions).
        #[arg(long)]
        inputpath: Option<PathBuf>,
        /// The layout's device-type (default: the config's file name).
        #[arg(long)]
        device_type: Option<String>,
        /// Write the layout here (default: stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Print an image's partition table, filesystems and config.json; check the layout's
    /// invariants. Exits 2 when the image is damaged.
    Inspect {
        image: PathBuf,
        /// Check against this layout instead of the built-in resin-ab.toml.
        #[arg(long)]
        layout: Option<PathBuf>,
        /// Overrides for --layout.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Generate DEVELOPMENT-ONLY RAUC keys: a CA, a signing key and certificate, a keyring.
    Keys {
        /// Output directory.
        #[arg(long, visible_aliases = ["output", "out-dir"])]
        out: PathBuf,
        /// Name recorded in the certificates' subjects.
        #[arg(long, default_value = "dev")]
        name: String,
    },
    /// Make a signed RAUC bundle of a rootfs (directory, tarball, or ext4 image).
    Bundle {
        /// The rootfs: a directory, a tarball, or an ext4 image.
        #[arg(long)]
        rootfs: PathBuf,
        /// Signing certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// Signing key (PEM).
        #[arg(long)]
        key: PathBuf,
        /// Check the signature against this keyring while bundling.
        #[arg(long)]
        keyring: Option<PathBuf>,
        /// OS version written into the manifest.
        #[arg(long)]
        version: String,
        /// RAUC compatible (default: resin-<device-type> from --layout).
        #[arg(long)]
        compatible: Option<String>,
        /// Layout (gives the compatible and the slot size).
        #[arg(long)]
        layout: Option<PathBuf>,
        /// Overrides for --layout.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Bundle format: verity (default) or plain (for hosts without device-mapper).
        #[arg(long, value_enum, default_value_t = BundleFormat::Verity)]
        format: BundleFormat,
        /// Compression of the bundle's squashfs: gzip (default), lz4, zstd or xz.
        #[arg(long, value_enum, default_value_t = SquashfsCompression::Gzip)]
        compression: SquashfsCompression,
        /// Size of the ext4 image made from a directory or tarball (e.g. 512MiB).
        #[arg(long)]
        image_size: Option<String>,
        /// Output bundle (.raucb).
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Check that every external tool resin-imagegen runs is installed and
    /// starts; a missing one is named with its Debian package.
    Preflight,
    /// Write config.json into an image in place, or stream a configured copy with --output.
    Configure {
        /// The image (built by resin-imagegen: it has the config.json reservation).
        image: PathBuf,
        /// The config.json to write.
        #[arg(long)]
        config: PathBuf,
        /// Write a configured copy here instead of changing IMAGE.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Compression of the --output copy.
        #[arg(long, value_enum, default_value_t = Compression::None)]
        compress: Compression,
        /// PEM CA certificate to put into config.json as `rootCA` (the only
        /// CA the device then trusts for the cloud, e.g. the ca.pem of
        /// `resin-cloud init`).
        #[arg(long)]
        root_ca: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let line = resin_imagegen::util::error_line(e.chain().map(|c| c.to_string()));
            eprintln!("resin-imagegen: error: {line}");
            std::process::ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<std::process::ExitCode> {
    match cli.cmd {
        Cmd::Build {
            layout,
            rootfs,
            boot,
            inputs,
            config,
            output,
            compress,
            format,
            no_bmap,
            bmap,
            seed,
        } => {
            let mut map = BTreeMap::new();
            if let Some(r) = rootfs {
                map.insert("rootfs".to_string(), r);
            }
            if let Some(b) = boot {
                map.insert("boot".to_string(), b);
            }
            for i in inputs {
                let (k, v) = i
                    .split_once('=')
                    .with_context(|| format!("--input {i}: expected NAME=PATH"))?;
                map.insert(k.to_string(), PathBuf::from(v));
            }
            let plan = layout.load()?.plan_with_inputs(&map)?;
            let config = match config {
                Some(p) => {
                    Some(std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?)
                }
                None => None,
            };
            let t0 = std::time::Instant::now();
            let report = build_format(
                &plan,
                &BuildOptions {
                    inputs: map,
                    config,
                    output,
                    // A qcow2 gets a .bmap only when asked, which build() refuses.
                    bmap: match format {
                        ImageFormat::Raw => !no_bmap,
                        ImageFormat::Qcow2 => bmap,
                    },
                    compression: compress,
                    seed,
                },
                format,
            )?;
            println!(
                "built {} ({} bytes, {} bytes of data) in {:.2?}",
                report.image.display(),
                report.disk_size,
                report.bytes_written,
                t0.elapsed()
            );
            if let Some(b) = report.bmap {
                println!("bmap {}", b.display());
            }
            if let Some(c) = report.compressed {
                println!("compressed {}", c.display());
            }
        }
        Cmd::Render { layout, out } => {
            let plan = layout.load()?.plan()?;
            let files = render::render_all(&plan)?;
            render::write_all(&files, &out)?;
            for f in files {
                println!("{}", out.join(&f.path).display());
            }
        }
        Cmd::ImportGenimage {
            config,
            inputpath,
            device_type,
            output,
        } => {
            let imported = resin_imagegen::genimage::import(
                &config,
                inputpath.as_deref(),
                device_type.as_deref(),
            )?;
            match &output {
                Some(o) => {
                    if let Some(d) = o.parent().filter(|d| !d.as_os_str().is_empty()) {
                        if !d.is_dir() {
                            bail!(
                                "--output: the directory {} does not exist (it is not created)",
                                d.display()
                            );
                        }
                    }
                    resin_fsutil::write_atomic(o, imported.layout.as_bytes(), 0o644)?;
                    println!("{}", o.display());
                }
                None => print!("{}", imported.layout),
            }
            if !imported.notes.is_empty() {
                eprintln!(
                    "resin-imagegen: the layout cannot express {} thing(s) of {}:",
                    imported.notes.len(),
                    config.display()
                );
                for n in &imported.notes {
                    eprintln!("  - {n}");
                }
                return Ok(std::process::ExitCode::from(3));
            }
        }
        Cmd::RenderRepart { layout, out } => {
            let plan = layout.load()?.plan()?;
            let (files, notes) = resin_imagegen::repart::repart_files(&plan);
            resin_imagegen::repart::write_files(&files, &out)?;
            for f in &files {
                println!("{}", out.join(&f.name).display());
            }
            for n in notes {
                eprintln!("resin-imagegen: note: {n}");
            }
        }
        Cmd::Configure {
            image,
            config,
            output,
            compress,
            root_ca,
        } => {
            let mut cfg =
                std::fs::read(&config).with_context(|| format!("reading {}", config.display()))?;
            if let Some(ca) = &root_ca {
                let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
                cfg = configure::with_root_ca(&cfg, &pem).with_context(|| {
                    format!("adding {} to {} as rootCA", ca.display(), config.display())
                })?;
            }
            match output {
                None => {
                    if compress != Compression::None {
                        bail!("--compress needs --output");
                    }
                    configure::configure_in_place(&image, &cfg)
                        .with_context(|| format!("configuring {}", image.display()))?;
                    println!("configured {}", image.display());
                }
                Some(out) => {
                    if let Some(d) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                        if !d.is_dir() {
                            bail!(
                                "--output: the directory {} does not exist (it is not created)",
                                d.display()
                            );
                        }
                    }
                    let base = File::open(&image)
                        .with_context(|| format!("opening {}", image.display()))?;
                    let mut r = configure::configured_reader_compressed(base, &cfg, compress)
                        .with_context(|| format!("configuring {}", image.display()))?;
                    let dir = out
                        .parent()
                        .filter(|d| !d.as_os_str().is_empty())
                        .map(PathBuf::from)
                        .unwrap_or_else(|| PathBuf::from("."));
                    let mut tmp = tempfile::Builder::new()
                        .prefix(".resin-imagegen-")
                        .tempfile_in(&dir)
                        .context("creating a temp file")?;
                    std::io::copy(&mut r, tmp.as_file_mut()).context("writing the image")?;
                    tmp.as_file().sync_all().context("syncing the image")?;
                    tmp.persist(&out)
                        .with_context(|| format!("renaming to {}", out.display()))?;
                    println!("wrote {}", out.display());
                }
            }
        }
        Cmd::Inspect {
            image,
            layout,
            sets,
            json,
        } => {
            let r = if layout.is_none() && sets.is_empty() {
                inspect_image(&image)
            } else {
                inspect_image_with(&image, &load_or_default(layout.as_deref(), &sets)?.plan()?)
            };
            match r {
                Ok(report) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&report)?);
                    } else {
                        print!("{}", report.to_text());
                    }
                }
                Err(e @ InspectError::Damaged { .. }) => {
                    eprintln!("resin-imagegen: {e}");
                    return Ok(std::process::ExitCode::from(2));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Cmd::Preflight => {
            let ok = resin_imagegen::preflight::check()?;
            println!("preflight: imagegen's tools ok ({})", ok.join(", "));
        }
        Cmd::Keys { out, name } => {
            let k = make_dev_keys(&out, &name)?;
            eprintln!(
                "WARNING: these keys are for DEVELOPMENT ONLY; never ship a device trusting {}",
                k.keyring.display()
            );
            for p in [&k.ca_cert, &k.ca_key, &k.cert, &k.key, &k.keyring] {
                println!("{}", p.display());
            }
        }
        Cmd::Bundle {
            rootfs,
            cert,
            key,
            keyring,
            version,
            compatible,
            layout,
            sets,
            format,
            compression,
            image_size,
            output,
        } => {
            let plan = match &layout {
                Some(l) => Some(Layout::load(l, &sets)?.plan()?),
                None => None,
            };
            let compatible = match (compatible, &plan) {
                (Some(c), _) => c,
                (None, Some(p)) => format!("resin-{}", p.layout.device_type),
                (None, None) => bail!("give --compatible or --layout"),
            };
            let slot_size = plan
                .as_ref()
                .and_then(|p| p.parts.iter().find(|x| x.slot.is_some()).map(|x| x.size));
            let image_size = match image_size {
                Some(s) => Some(Size::parse(&s).context("--image-size")?.0),
                None => None,
            };
            make_bundle(&BundleSpec {
                rootfs,
                cert,
                key,
                keyring,
                compatible,
                version,
                format,
                compression,
                image_size,
                slot_size,
                output: output.clone(),
            })?;
            println!("{}", output.display());
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
