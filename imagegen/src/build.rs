//! `build`: validates the layout and inputs, makes each filesystem, places them into a sparse
//! disk image, writes the GPT last, then the `.bmap` and optional compressed copy, each through
//! a temp file renamed into place.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use gpt::disk::LogicalBlockSize;
use sha2::{Digest, Sha256};

use crate::configure::{padded_config, Compression, ConfigureError};
use crate::ext4::{build_ext4, Ext4Error, Ext4Spec};
use crate::layout::{Contents, Fs, LayoutError, Plan, PlannedPart};
use crate::render::{render_all, RenderError};
use crate::sparse::copy_sparse;
use crate::util::{derived_uuid, progress, source_date_epoch};
use crate::vfat::{build_vfat, VfatError, VfatSpec};

/// Why a build failed. Nothing is left at the output path on error.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Ext4(#[from] Ext4Error),
    #[error(transparent)]
    Vfat(#[from] VfatError),
    #[error("--config: {0}")]
    Config(ConfigureError),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error(transparent)]
    Write(#[from] resin_fsutil::Error),
    #[error("extracting {path}: {msg}")]
    Tar { path: PathBuf, msg: String },
    #[error("writing the GPT: {0}")]
    Gpt(String),
    #[error("--output: the directory {0} does not exist (it is not created)")]
    OutputDir(PathBuf),
    #[error("--format qcow2: {0} (a .bmap and --compress describe a raw image for flashing; build the raw image for those)")]
    Qcow2Options(&'static str),
    #[error("partition[{part}]: {source}")]
    Readonly {
        part: String,
        source: crate::readonly::ReadonlyError,
    },
    #[error("partition[{part}]: {source}")]
    Env {
        part: String,
        source: crate::ubootenv::EnvError,
    },
    #[error("qemu-img convert to qcow2 failed: {stderr}")]
    Qcow2 { stderr: String },
}

/// The format of the image file `build` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ImageFormat {
    /// A raw disk image (sparse), with its `.bmap`: what is flashed.
    #[default]
    Raw,
    /// QEMU's qcow2 (converted with `qemu-img convert`; only the mapped data is allocated).
    Qcow2,
}

fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> BuildError {
    let context = context.into();
    move |source| BuildError::Io { context, source }
}

fn field(part: &PlannedPart, f: &str, msg: String) -> BuildError {
    BuildError::Layout(LayoutError::Field {
        field: format!("partition[{}].{f}", part.name),
        msg,
    })
}

/// Inputs and options of a build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Named inputs (`rootfs`, `boot`, …) bound to paths.
    pub inputs: BTreeMap<String, PathBuf>,
    /// config.json to write into the reservation (otherwise `{}`).
    pub config: Option<Vec<u8>>,
    pub output: PathBuf,
    /// Also write a `.bmap` beside the output.
    pub bmap: bool,
    pub compression: Compression,
    /// Seed for UUIDs (default: the layout and SOURCE_DATE_EPOCH).
    pub seed: Option<String>,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub image: PathBuf,
    pub bmap: Option<PathBuf>,
    pub compressed: Option<PathBuf>,
    pub disk_size: u64,
    pub bytes_written: u64,
}

/// A partition's resolved source.
#[derive(Debug, Clone)]
enum Source {
    Empty,
    Dir(PathBuf),
    Tar(PathBuf),
    Image(PathBuf),
}

pub(crate) fn is_tarball(p: &Path) -> bool {
    let n = p.file_name().and_then(|s| s.to_str()).unwrap_or("");
    [
        ".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.zst", ".tar.bz2",
    ]
    .iter()
    .any(|s| n.ends_with(s))
}

fn resolve(plan: &Plan, part: &PlannedPart, opts: &BuildOptions) -> Result<Source, BuildError> {
    let src = match &part.contents {
        None => return Ok(Source::Empty),
        Some(Contents::Input(name)) => {
            let p = opts.inputs.get(name).ok_or_else(|| {
                field(
                    part,
                    "contents",
                    format!(
                        "input `{name}` was not given (use --{name} PATH or --input {name}=PATH)"
                    ),
                )
            })?;
            if p.is_dir() {
                Source::Dir(p.clone())
            } else if is_tarball(p) {
                Source::Tar(p.clone())
            } else {
                Source::Image(p.clone())
            }
        }
        Some(Contents::Dir(p)) => Source::Dir(plan.layout.resolve(p)),
        Some(Contents::Tar(p)) => Source::Tar(plan.layout.resolve(p)),
        Some(Contents::Image(p)) => Source::Image(plan.layout.resolve(p)),
    };
    let path = match &src {
        Source::Dir(p) | Source::Tar(p) | Source::Image(p) => p,
        Source::Empty => return Ok(src),
    };
    if !path.exists() {
        return Err(field(
            part,
            "contents",
            format!("{} does not exist", path.display()),
        ));
    }
    if let Source::Dir(p) = &src {
        if !p.is_dir() {
            return Err(field(
                part,
                "contents",
                format!("{} is not a directory", p.display()),
            ));
        }
    }
    if matches!(src, Source::Dir(_) | Source::Tar(_)) && part.fs == Fs::None {
        return Err(field(
            part,
            "fs",
            "a directory or tarball needs a filesystem (vfat or ext4)".into(),
        ));
    }
    Ok(src)
}

/// The raw images' files and lengths, checked to fit between the GPT and the first partition
/// without overlapping each other.
fn resolve_raws<'a>(
    plan: &'a Plan,
    opts: &BuildOptions,
) -> Result<Vec<(&'a crate::layout::PlannedRaw, PathBuf, u64)>, BuildError> {
    let raw_err = |name: &str, f: &str, msg: String| {
        BuildError::Layout(LayoutError::Field {
            field: format!("raw[{name}].{f}"),
            msg,
        })
    };
    let first_part = plan
        .parts
        .iter()
        .map(|p| p.offset)
        .min()
        .unwrap_or(plan.disk_size);
    let mut out: Vec<(&crate::layout::PlannedRaw, PathBuf, u64)> = Vec::new();
    for r in &plan.raws {
        let path = match &r.contents {
            Contents::Input(name) => opts.inputs.get(name).cloned().ok_or_else(|| {
                raw_err(
                    &r.name,
                    "contents",
                    format!("input `{name}` was not given (use --input {name}=PATH)"),
                )
            })?,
            Contents::Image(p) | Contents::Dir(p) | Contents::Tar(p) => plan.layout.resolve(p),
        };
        let len = std::fs::metadata(&path)
            .map_err(|e| raw_err(&r.name, "contents", format!("{}: {e}", path.display())))?
            .len();
        if r.offset + len > first_part {
            return Err(raw_err(
                &r.name,
                "contents",
                format!(
                    "{} is {len} bytes: at offset {} it runs into the first partition, which \
                     starts at {first_part}",
                    path.display(),
                    r.offset
                ),
            ));
        }
        for (o, _, olen) in &out {
            if r.offset < o.offset + olen && o.offset < r.offset + len {
                return Err(raw_err(
                    &r.name,
                    "offset",
                    format!(
                        "overlaps raw[{}] ({}..{})",
                        o.name,
                        o.offset,
                        o.offset + olen
                    ),
                ));
            }
        }
        out.push((r, path, len));
    }
    Ok(out)
}

/// Approximate bytes a directory tree needs (4 KiB blocks plus an inode block each).
pub(crate) fn dir_usage(p: &Path) -> io::Result<u64> {
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let md = e.path().symlink_metadata()?;
            total += 4096 + md.len().div_ceil(4096) * 4096;
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(total)
}

/// Usable share of a partition after filesystem overhead (journal, inode tables, FATs).
fn usable(part: &PlannedPart) -> u64 {
    match part.fs {
        Fs::Ext4 => part.size / 100 * 85,
        Fs::Vfat => part.size / 100 * 95,
        Fs::UbootEnv | Fs::Squashfs | Fs::Verity | Fs::None => part.size,
    }
}

fn check_fits(part: &PlannedPart, what: &str, need: u64) -> Result<(), BuildError> {
    let have = usable(part);
    if need > have {
        return Err(field(
            part,
            "contents",
            format!(
                "{what} needs about {} but partition[{}].size {} leaves about {} for files",
                crate::size::Size(need.div_ceil(1 << 20) << 20),
                part.name,
                crate::size::Size(part.size),
                crate::size::Size((have >> 20) << 20),
            ),
        ));
    }
    Ok(())
}

pub(crate) fn extract_tar(tar: &Path, into: &Path) -> Result<(), BuildError> {
    let out = Command::new("tar")
        .args(["--numeric-owner", "-xpf"])
        .arg(tar)
        .args(["--xattrs", "--xattrs-include=*", "-C"])
        .arg(into)
        .output()
        .map_err(io_ctx("running tar"))?;
    if !out.status.success() {
        return Err(BuildError::Tar {
            path: tar.to_path_buf(),
            msg: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Builds the image described by `plan`. Validation (layout, inputs, sizes) happens before any
/// file is created; the image is assembled in a temp file beside the output and renamed last.
pub fn build(plan: &Plan, opts: &BuildOptions) -> Result<BuildReport, BuildError> {
    build_format(plan, opts, ImageFormat::Raw)
}

/// [`build`] in the given format: qcow2 takes neither a `.bmap` nor compression.
pub fn build_format(
    plan: &Plan,
    opts: &BuildOptions,
    format: ImageFormat,
) -> Result<BuildReport, BuildError> {
    // 1. Validate everything that can be checked without writing.
    if format == ImageFormat::Qcow2 {
        if opts.bmap {
            return Err(BuildError::Qcow2Options("a .bmap was asked for"));
        }
        if opts.compression != Compression::None {
            return Err(BuildError::Qcow2Options("--compress was given"));
        }
    }
    let mut sources = Vec::new();
    for p in &plan.parts {
        sources.push(resolve(plan, p, opts)?);
    }
    // Rendered here to find template errors before anything is written; again below once
    // the verity root hashes are known.
    let rendered = render_all(plan)?;
    env_images(plan, &BTreeMap::new())?;
    let config = padded_config(opts.config.as_deref().unwrap_or(b"{}"), plan.config_reserve)
        .map_err(BuildError::Config)?;
    for (p, s) in plan.parts.iter().zip(&sources) {
        match s {
            // Compressed: checked once mksquashfs has made it.
            Source::Dir(_) if p.fs == Fs::Squashfs => {}
            Source::Dir(d) => {
                let mut need = dir_usage(d).map_err(io_ctx(format!("reading {}", d.display())))?;
                if p.fs == Fs::Vfat {
                    need += plan.config_reserve
                        + rendered
                            .iter()
                            .filter(|r| r.install.as_deref() == Some(&p.name))
                            .map(|r| r.bytes.len() as u64 + 4096)
                            .sum::<u64>();
                }
                check_fits(p, &d.display().to_string(), need)?;
            }
            Source::Image(i) => {
                let len = std::fs::metadata(i)
                    .map_err(io_ctx(format!("reading {}", i.display())))?
                    .len();
                if len > p.size {
                    return Err(field(
                        p,
                        "contents",
                        format!(
                            "image {} is {len} bytes, larger than partition[{}].size ({} bytes)",
                            i.display(),
                            p.name,
                            p.size
                        ),
                    ));
                }
            }
            Source::Tar(t) => {
                // Compressed tarballs are checked after extraction.
                if t.extension().and_then(|e| e.to_str()) == Some("tar") {
                    let len = std::fs::metadata(t)
                        .map_err(io_ctx(format!("reading {}", t.display())))?
                        .len();
                    check_fits(p, &t.display().to_string(), len)?;
                }
            }
            Source::Empty => {}
        }
    }

    let out_dir = match opts.output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !out_dir.is_dir() {
        return Err(BuildError::OutputDir(out_dir));
    }

    let raws = resolve_raws(plan, opts)?;

    // 2. Reproducible identity.
    let epoch = source_date_epoch().unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    });
    let seed: Vec<u8> = match &opts.seed {
        Some(s) => s.as_bytes().to_vec(),
        None => {
            let mut h = Sha256::new();
            h.update(toml::to_string(&plan.layout).unwrap_or_default().as_bytes());
            h.update(epoch.to_le_bytes());
            h.finalize().to_vec()
        }
    };

    // 3. Work in temp space beside the output.
    let work = tempfile::Builder::new()
        .prefix(".resin-imagegen-work-")
        .tempdir_in(&out_dir)
        .map_err(io_ctx("creating a work directory"))?;
    let tmp_img = tempfile::Builder::new()
        .prefix(".resin-imagegen-")
        .suffix(".img.tmp")
        .tempfile_in(&out_dir)
        .map_err(io_ctx("creating the temp image"))?;
    let disk: &File = tmp_img.as_file();
    disk.set_len(plan.disk_size)
        .map_err(io_ctx("sizing the temp image"))?;

    // Read-only roots and their hash trees first: the root hashes go into the rendered files.
    let (prebuilt, roothashes) = build_readonly(plan, &sources, work.path(), &seed, epoch)?;
    let rendered = if roothashes.is_empty() {
        rendered
    } else {
        crate::render::render_all_with(plan, &roothashes)?
    };
    let envs = env_images(plan, &roothashes)?;

    // 4. Filesystems, built in parallel, each copied sparsely to its offset.
    let total: u64 = plan.parts.iter().map(|p| p.size).sum();
    let pb = progress(total, "building partitions");
    let results: Vec<Result<Written, BuildError>> = std::thread::scope(|s| {
        let handles: Vec<_> = plan
            .parts
            .iter()
            .zip(&sources)
            .map(|(p, src)| {
                let (work, seed, rendered, config, pb, prebuilt) =
                    (work.path(), &seed, &rendered, &config, &pb, &prebuilt);
                s.spawn(move || {
                    let r = build_partition(
                        plan, p, src, work, seed, epoch, rendered, config, disk, prebuilt,
                    );
                    pb.inc(p.size);
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(BuildError::Io {
                        context: "a partition builder".into(),
                        source: io::Error::other("panicked"),
                    })
                })
            })
            .collect()
    });
    pb.finish_and_clear();
    let mut bytes_written = 0;
    let mut needed = Vec::new();
    for r in results {
        let w = r?;
        bytes_written += w.bytes;
        needed.extend(w.needed);
    }

    // Raw images, byte for byte (zeros included: a boot ROM reads all of them).
    for (r, path, len) in &raws {
        let bytes = std::fs::read(path).map_err(io_ctx(format!("reading {}", path.display())))?;
        use std::os::unix::fs::FileExt;
        disk.write_all_at(&bytes, r.offset)
            .map_err(io_ctx(format!("writing raw[{}] into the image", r.name)))?;
        needed.push((r.offset, r.offset + len));
    }

    // U-Boot environments: every byte of each copy is covered by its CRC.
    for (offset, bytes) in &envs {
        use std::os::unix::fs::FileExt;
        disk.write_all_at(bytes, *offset)
            .map_err(io_ctx("writing the U-Boot environment into the image"))?;
        needed.push((*offset, offset + bytes.len() as u64));
    }

    // 5. The GPT, last.
    write_gpt(plan, disk, &seed)?;
    needed.extend(gpt_ranges(disk).map_err(io_ctx("reading back the GPT"))?);

    // 6. The block map: what the partition table and filesystems read. The file is made sparse
    // in exactly the other blocks, so `bmaptool create` on it gives the same map.
    let blocks = crate::sparse::needed_blocks(&needed, plan.disk_size);
    crate::sparse::conform(disk, plan.disk_size, &blocks)
        .map_err(io_ctx("matching the image's holes to its block map"))?;
    disk.sync_all().map_err(io_ctx("syncing the image"))?;

    // 7. bmap and compressed copy (from the temp image), then rename everything into place.
    // The compressed copy first, so a failure leaves neither it nor a stale .bmap behind.
    let compressed = if opts.compression != Compression::None {
        let cp = sibling(&opts.output, opts.compression.suffix());
        compress_to(disk, plan.disk_size, opts.compression, &cp)?;
        Some(cp)
    } else {
        None
    };
    let bmap_path = opts.bmap.then(|| sibling(&opts.output, ".bmap"));
    if let Some(bp) = &bmap_path {
        let text = crate::bmap::bmap_for(disk, &blocks).map_err(io_ctx("computing the bmap"))?;
        resin_fsutil::write_atomic(bp, text.as_bytes(), 0o644)?;
    }
    if format == ImageFormat::Qcow2 {
        to_qcow2(tmp_img.path(), &opts.output, &out_dir)?;
        return Ok(BuildReport {
            image: opts.output.clone(),
            bmap: None,
            compressed: None,
            disk_size: plan.disk_size,
            bytes_written,
        });
    }
    crate::util::make_readable(disk).map_err(io_ctx("setting the image's mode"))?;
    tmp_img.persist(&opts.output).map_err(|e| BuildError::Io {
        context: format!("renaming the image to {}", opts.output.display()),
        source: e.error,
    })?;
    Ok(BuildReport {
        image: opts.output.clone(),
        bmap: bmap_path,
        compressed,
        disk_size: plan.disk_size,
        bytes_written,
    })
}

/// Converts the finished raw temp image into a qcow2 temp file beside the output, syncs it and
/// renames it onto the output. qemu-img writes clusters in order (no `-W`), and the qcow2
/// format has no timestamps, so the same raw image gives the same bytes.
fn to_qcow2(raw: &Path, output: &Path, out_dir: &Path) -> Result<(), BuildError> {
    let tmp = tempfile::Builder::new()
        .prefix(".resin-imagegen-")
        .suffix(".qcow2.tmp")
        .tempfile_in(out_dir)
        .map_err(io_ctx("creating the qcow2 temp file"))?;
    let out = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(tmp.path())
        .output()
        .map_err(io_ctx("running qemu-img (package qemu-utils)"))?;
    if !out.status.success() {
        return Err(BuildError::Qcow2 {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    // qemu-img wrote through its own descriptor; reopen to sync what it wrote.
    File::open(tmp.path())
        .and_then(|f| f.sync_all())
        .map_err(io_ctx("syncing the qcow2 image"))?;
    crate::util::make_readable(tmp.as_file()).map_err(io_ctx("setting the file mode"))?;
    tmp.persist(output).map_err(|e| BuildError::Io {
        context: format!("renaming the image to {}", output.display()),
        source: e.error,
    })?;
    Ok(())
}

/// `disk.img` + `.bmap` → `disk.img.bmap`.
pub fn sibling(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn compress_to(disk: &File, len: u64, c: Compression, out: &Path) -> Result<(), BuildError> {
    let dir = out.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".resin-imagegen-")
        .tempfile_in(dir)
        .map_err(io_ctx("creating the compressed temp file"))?;
    let f = disk.try_clone().map_err(io_ctx("reopening the image"))?;
    let reader =
        crate::sparse::OverlayReader::new(f, Vec::new()).map_err(io_ctx("reading the image"))?;
    let pb = progress(len, "compressing");
    let mut r = crate::configure::compress_reader(pb.wrap_read(reader), c)
        .map_err(io_ctx("starting the compressor"))?;
    io::copy(&mut r, tmp.as_file_mut()).map_err(io_ctx("compressing the image"))?;
    pb.finish_and_clear();
    tmp.as_file()
        .sync_all()
        .map_err(io_ctx("syncing the compressed image"))?;
    crate::util::make_readable(tmp.as_file()).map_err(io_ctx("setting the file mode"))?;
    tmp.persist(out).map_err(|e| BuildError::Io {
        context: format!("renaming to {}", out.display()),
        source: e.error,
    })?;
    Ok(())
}

/// Each U-Boot environment partition's copies, rendered from `uboot-env.txt.j2`: (disk offset,
/// bytes). Copy 1 has flag 1 and copy 2 flag 0, so U-Boot and libubootenv take copy 1 under
/// either flag scheme while both are valid, and copy 2 when copy 1 is damaged.
fn env_images(
    plan: &Plan,
    roothashes: &BTreeMap<String, String>,
) -> Result<Vec<(u64, Vec<u8>)>, BuildError> {
    let mut out = Vec::new();
    for p in &plan.parts {
        let Some(env) = p.env else { continue };
        let text = crate::render::render_template_with(plan, "uboot-env.txt.j2", roothashes)?;
        let copies = if env.redundant { 2 } else { 1 };
        let mut bytes = Vec::new();
        for i in 0..copies {
            let flag = if i == 0 { 1 } else { 0 };
            bytes.extend(
                crate::ubootenv::env_image(&text, env.size as usize, env.redundant, flag).map_err(
                    |source| BuildError::Env {
                        part: p.name.clone(),
                        source,
                    },
                )?,
            );
        }
        out.push((p.offset, bytes));
    }
    Ok(out)
}

/// Read-only images by partition name, and verity root hashes by data partition name.
type Readonly = (BTreeMap<String, PathBuf>, BTreeMap<String, String>);

/// Squashfs images of the squashfs partitions that have contents, then the dm-verity hash
/// tree of each one a verity partition names. Returns the images by partition name and the
/// root hashes by data partition name. Salt and verity UUID are derived from the seed.
fn build_readonly(
    plan: &Plan,
    sources: &[Source],
    work: &Path,
    seed: &[u8],
    epoch: i64,
) -> Result<Readonly, BuildError> {
    let ro_err = |p: &PlannedPart| {
        let part = p.name.clone();
        move |source| BuildError::Readonly { part, source }
    };
    let too_big = |p: &PlannedPart, what: &str, img: &Path| -> Result<(), BuildError> {
        let len = std::fs::metadata(img)
            .map_err(io_ctx(format!("reading {}", img.display())))?
            .len();
        if len > p.size {
            return Err(field(
                p,
                "size",
                format!(
                    "the {what} is {len} bytes, more than partition[{}].size ({} bytes)",
                    p.name, p.size
                ),
            ));
        }
        Ok(())
    };
    let mut images = BTreeMap::new();
    let mut hashes = BTreeMap::new();
    for (p, src) in plan.parts.iter().zip(sources) {
        if p.fs != Fs::Squashfs {
            continue;
        }
        let img = match src {
            Source::Empty => continue,
            Source::Image(i) => i.clone(),
            Source::Dir(d) => {
                let out = work.join(format!("{}.squashfs", p.name));
                crate::readonly::build_squashfs(d, &out, epoch, &p.mkfs_options)
                    .map_err(ro_err(p))?;
                out
            }
            Source::Tar(t) => {
                let d = work.join(format!("{}.root", p.name));
                std::fs::create_dir_all(&d).map_err(io_ctx("creating the extraction directory"))?;
                extract_tar(t, &d)?;
                let out = work.join(format!("{}.squashfs", p.name));
                crate::readonly::build_squashfs(&d, &out, epoch, &p.mkfs_options)
                    .map_err(ro_err(p))?;
                let _ = std::fs::remove_dir_all(&d);
                out
            }
        };
        too_big(p, "squashfs", &img)?;
        images.insert(p.name.clone(), img);
    }
    for v in &plan.parts {
        let Some(data) = v.verity_data.as_ref() else {
            continue;
        };
        let Some(img) = images.get(data).cloned() else {
            continue;
        };
        let out = work.join(format!("{}.verity", v.name));
        let salt: [u8; 32] = Sha256::new()
            .chain_update(seed)
            .chain_update(format!("verity salt {}", v.label))
            .finalize()
            .into();
        let hash = crate::readonly::verity_format(
            &img,
            &out,
            &salt,
            derived_uuid(seed, &format!("verity {}", v.label)),
        )
        .map_err(ro_err(v))?;
        too_big(v, "hash tree", &out)?;
        images.insert(v.name.clone(), out);
        hashes.insert(data.clone(), hash);
    }
    Ok((images, hashes))
}

/// What one partition's builder wrote.
struct Written {
    /// Bytes of data copied into the image.
    bytes: u64,
    /// Absolute byte ranges of the image whose content the partition's filesystem reads.
    needed: Vec<(u64, u64)>,
}

/// Where the GPT lives (protective MBR, both headers, both entry arrays, zero entries
/// included: the header's CRC covers the whole array), read back from the primary header.
fn gpt_ranges(disk: &File) -> io::Result<Vec<(u64, u64)>> {
    use std::os::unix::fs::FileExt;
    let sector = 512u64;
    let mut h = [0u8; 92];
    disk.read_exact_at(&mut h, sector)?;
    let u64_at = |b: &[u8], o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let u32_at =
        |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as u64;
    let entries = u32_at(&h, 80) * u32_at(&h, 84);
    let backup_lba = u64_at(&h, 32);
    let mut out = vec![(0, 2 * sector)];
    out.push((u64_at(&h, 72) * sector, u64_at(&h, 72) * sector + entries));
    let mut b = [0u8; 92];
    disk.read_exact_at(&mut b, backup_lba * sector)?;
    out.push((backup_lba * sector, (backup_lba + 1) * sector));
    out.push((u64_at(&b, 72) * sector, u64_at(&b, 72) * sector + entries));
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn build_partition(
    plan: &Plan,
    p: &PlannedPart,
    src: &Source,
    work: &Path,
    seed: &[u8],
    epoch: i64,
    rendered: &[crate::render::Rendered],
    config: &[u8],
    disk: &File,
    prebuilt: &BTreeMap<String, PathBuf>,
) -> Result<Written, BuildError> {
    let fs_img = work.join(format!("{}.fs", p.name));
    if let Some(img) = prebuilt.get(&p.name) {
        // A squashfs or hash tree made by build_readonly: every byte is read.
        let f = File::open(img).map_err(io_ctx(format!("opening {}", img.display())))?;
        let len = f
            .metadata()
            .map_err(io_ctx(format!("reading {}", img.display())))?
            .len();
        let n = copy_sparse(&f, disk, p.offset, &|_| {})
            .map_err(io_ctx(format!("copying {} into the image", p.label)))?;
        return Ok(Written {
            bytes: n,
            needed: vec![(p.offset, p.offset + len.min(p.size))],
        });
    }
    let mut extracted = None;
    let dir: Option<PathBuf> = match src {
        Source::Dir(d) => Some(d.clone()),
        Source::Tar(t) => {
            let d = work.join(format!("{}.root", p.name));
            std::fs::create_dir_all(&d).map_err(io_ctx("creating the extraction directory"))?;
            extract_tar(t, &d)?;
            let need = dir_usage(&d).map_err(io_ctx("measuring the extracted tarball"))?;
            check_fits(p, &t.display().to_string(), need)?;
            extracted = Some(d.clone());
            Some(d)
        }
        _ => None,
    };
    let image = match (p.fs, src) {
        (_, Source::Image(i)) => i.clone(),
        (Fs::Ext4, _) => {
            build_ext4(
                &fs_img,
                &Ext4Spec {
                    size: p.size,
                    label: &p.fs_label,
                    uuid: derived_uuid(seed, &format!("ext4 {}", p.label)),
                    hash_seed: derived_uuid(seed, &format!("hash {}", p.label)),
                    epoch,
                    root_dir: dir.as_deref(),
                    clamp: source_date_epoch(),
                    extra_args: &p.mkfs_options,
                },
            )?;
            fs_img.clone()
        }
        (Fs::Vfat, _) => {
            let files: Vec<(String, Vec<u8>)> = rendered
                .iter()
                .filter(|r| r.install.as_deref() == Some(&p.name))
                .map(|r| (r.path.clone(), r.bytes.clone()))
                .collect();
            let vid = derived_uuid(seed, &format!("vfat {}", p.label));
            let is_boot = p.role.as_deref() == Some("boot");
            let scratch = work.join(format!("{}.scratch", p.name));
            std::fs::create_dir_all(&scratch).map_err(io_ctx("creating a scratch directory"))?;
            build_vfat(
                &fs_img,
                &VfatSpec {
                    size: p.size,
                    label: &p.fs_label,
                    volume_id: u32::from_le_bytes([
                        vid.as_bytes()[0],
                        vid.as_bytes()[1],
                        vid.as_bytes()[2],
                        vid.as_bytes()[3],
                    ]),
                    epoch,
                    config: if is_boot { config } else { b"{}\n" },
                    dir: dir.as_deref(),
                    files: &files,
                    work: &scratch,
                    extra_args: &p.mkfs_options,
                },
            )
            .map_err(|e| match &e {
                VfatError::Failed { stderr, .. } if stderr.contains("Disk full") => field(
                    p,
                    "contents",
                    format!("does not fit partition[{}].size ({stderr})", p.name),
                ),
                _ => BuildError::Vfat(e),
            })?;
            fs_img.clone()
        }
        // Written whole by build() from the rendered environment; or an empty read-only slot
        // (squashfs and hash tree with no data: RAUC installs into it).
        (Fs::UbootEnv | Fs::Squashfs | Fs::Verity | Fs::None, _) => {
            return Ok(Written {
                bytes: 0,
                needed: Vec::new(),
            })
        }
    };
    let _ = plan;
    let f = File::open(&image).map_err(io_ctx(format!("opening {}", image.display())))?;
    let needed: Vec<(u64, u64)> = match (p.fs, src) {
        // A ready-made image: what its filesystem uses when it is the partition's ext4 or
        // FAT, else all of it (we cannot tell which of its zeros matter).
        (fs, Source::Image(_)) => {
            let len = f
                .metadata()
                .map_err(io_ctx(format!("reading {}", image.display())))?
                .len();
            let used = match fs {
                Fs::Ext4 if matches!(crate::gptread::ext4_size(&f, 0), Ok(Some(n)) if n <= len) => {
                    crate::ext4::used_ranges(&image).ok()
                }
                Fs::Vfat => crate::fat::FatVolume::open(&f, 0, len)
                    .and_then(|v| v.used_ranges(&f))
                    .ok(),
                _ => None,
            };
            used.unwrap_or_else(|| vec![(0, len)])
        }
        (Fs::Ext4, _) => crate::ext4::used_ranges(&image)?,
        (Fs::Vfat, _) => crate::fat::FatVolume::open(&f, 0, p.size)
            .and_then(|v| v.used_ranges(&f))
            .map_err(|e| BuildError::Io {
                context: format!("mapping the FAT of {}", p.label),
                source: io::Error::other(e),
            })?,
        (Fs::UbootEnv | Fs::Squashfs | Fs::Verity | Fs::None, _) => Vec::new(),
    };
    let n = copy_sparse(&f, disk, p.offset, &|_| {})
        .map_err(io_ctx(format!("copying {} into the image", p.label)))?;
    drop(f);
    if image == fs_img {
        let _ = std::fs::remove_file(&fs_img);
    }
    if let Some(d) = extracted {
        let _ = std::fs::remove_dir_all(d);
    }
    Ok(Written {
        bytes: n,
        needed: needed
            .into_iter()
            .map(|(s, e)| (p.offset + s, p.offset + e.min(p.size)))
            .collect(),
    })
}

fn write_gpt(plan: &Plan, disk: &File, seed: &[u8]) -> Result<(), BuildError> {
    let lb = LogicalBlockSize::Lb512;
    let sector = plan.sector;
    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(
        u32::try_from(plan.disk_size / sector - 1).unwrap_or(0xFFFF_FFFF),
    );
    let mut dev = disk;
    mbr.overwrite_lba0(&mut dev)
        .map_err(|e| BuildError::Gpt(e.to_string()))?;
    let mut g = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(lb)
        .change_partition_count(true)
        .create_from_device(disk, Some(derived_uuid(seed, "disk")))
        .map_err(|e| BuildError::Gpt(e.to_string()))?;
    let mut parts = BTreeMap::new();
    for p in &plan.parts {
        parts.insert(
            p.index,
            gpt::partition::Partition {
                part_type_guid: gpt::partition_types::Type {
                    guid: p.type_guid,
                    os: gpt::partition_types::OperatingSystem::None,
                },
                part_guid: p
                    .uuid
                    .unwrap_or_else(|| derived_uuid(seed, &format!("partition {}", p.label))),
                first_lba: p.offset / sector,
                last_lba: (p.offset + p.size) / sector - 1,
                flags: p.attributes,
                name: p.label.clone(),
            },
        );
    }
    g.update_partitions(parts)
        .map_err(|e| BuildError::Gpt(e.to_string()))?;
    g.write().map_err(|e| BuildError::Gpt(e.to_string()))?;
    if !plan.layout.disk.hybrid_mbr.is_empty() {
        write_hybrid_mbr(plan, disk).map_err(io_ctx("writing the hybrid MBR"))?;
    }
    Ok(())
}

/// One MBR entry (LBA addressing; CHS fields say "beyond 8 GiB", as gdisk writes them).
fn mbr_entry(boot: bool, kind: u8, first: u64, count: u64) -> [u8; 16] {
    let mut e = [0u8; 16];
    e[0] = if boot { 0x80 } else { 0 };
    e[1..4].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
    e[4] = kind;
    e[5..8].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&(first as u32).to_le_bytes());
    e[12..16].copy_from_slice(&(count.min(u32::MAX as u64) as u32).to_le_bytes());
    e
}

/// Replaces the protective MBR's table with a hybrid one: a 0xEE entry over the GPT's own
/// sectors (LBA 1 up to the first listed partition), then each listed partition with an MBR
/// type (0x0C FAT32 LBA for vfat, marked bootable; 0x83 Linux otherwise).
fn write_hybrid_mbr(plan: &Plan, disk: &File) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let sector = plan.sector;
    let listed: Vec<&PlannedPart> = plan
        .layout
        .disk
        .hybrid_mbr
        .iter()
        .filter_map(|n| plan.parts.iter().find(|p| &p.name == n))
        .collect();
    let first = listed.iter().map(|p| p.offset / sector).min().unwrap_or(1);
    let mut table = [0u8; 64];
    table[..16].copy_from_slice(&mbr_entry(false, 0xEE, 1, first - 1));
    for (i, p) in listed.iter().enumerate() {
        let (boot, kind) = match p.fs {
            Fs::Vfat => (true, 0x0C),
            _ => (false, 0x83),
        };
        table[16 * (i + 1)..16 * (i + 2)].copy_from_slice(&mbr_entry(
            boot,
            kind,
            p.offset / sector,
            p.size / sector,
        ));
    }
    disk.write_all_at(&table, 446)
}

/// Opens an existing image read-write (used by tests and tools).
pub fn open_rw(p: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(p)
}
