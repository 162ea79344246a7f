//! Builds the vfat boot partition with dosfstools' `mkfs.vfat` and mtools' `mcopy` (no root,
//! no loop device). `/config.json` is copied first, right after formatting, so its reserved
//! clusters are the first of the data area; every timestamp comes from SOURCE_DATE_EPOCH
//! (mtools honours it; `mkfs.vfat --invariant` fixes the rest), so builds are reproducible.

use std::path::Path;
use std::process::Command;

use crate::configure::CONFIG_NAME;

/// Why the vfat partition could not be built.
#[derive(Debug, thiserror::Error)]
pub enum VfatError {
    #[error("cannot run {tool} (install dosfstools and mtools): {source}")]
    Spawn {
        tool: &'static str,
        source: std::io::Error,
    },
    #[error("{tool} failed: {stderr}")]
    Failed { tool: String, stderr: String },
    #[error("preparing the vfat partition: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}: file names on the boot partition must be UTF-8")]
    Name(String),
}

/// What goes into the boot partition.
pub struct VfatSpec<'a> {
    pub size: u64,
    pub label: &'a str,
    pub volume_id: u32,
    pub epoch: i64,
    /// The reserved config.json content (already padded to its reserved size).
    pub config: &'a [u8],
    /// A directory copied in recursively (a `config.json` at its top is skipped: the
    /// reservation holds it).
    pub dir: Option<&'a Path>,
    /// Extra files `(path, bytes)`, written after `dir` (replacing files of the same path).
    pub files: &'a [(String, Vec<u8>)],
    /// Scratch directory.
    pub work: &'a Path,
    /// The layout's `mkfs-options` for mkfs.vfat, after resin's own.
    pub extra_args: &'a [String],
}

fn run(mut cmd: Command, tool: &'static str, epoch: i64) -> Result<(), VfatError> {
    cmd.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("MTOOLSRC", "/dev/null")
        .env("TZ", "UTC");
    let out = cmd
        .output()
        .map_err(|source| VfatError::Spawn { tool, source })?;
    if !out.status.success() {
        return Err(VfatError::Failed {
            tool: tool.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Creates `path` (`spec.size` bytes, sparse), formats it as FAT and fills it.
pub fn build_vfat(path: &Path, spec: &VfatSpec<'_>) -> Result<(), VfatError> {
    let f = std::fs::File::create(path)?;
    f.set_len(spec.size)?;
    drop(f);
    let mut mkfs = Command::new("mkfs.vfat");
    mkfs.arg("--invariant")
        .args(["-i", &format!("{:08x}", spec.volume_id)])
        .args(["-n", &spec.label.chars().take(11).collect::<String>()]);
    // FAT32 (the UEFI spec's choice for an ESP) whenever 512-byte clusters give it enough
    // clusters; smaller partitions get FAT16/FAT12.
    if spec.size >= 36 << 20 {
        mkfs.args(["-F", "32"]);
    }
    mkfs.args(spec.extra_args);
    mkfs.arg(path);
    run(mkfs, "mkfs.vfat", spec.epoch)?;

    let img = path.as_os_str().to_owned();
    let cfg = spec.work.join("config.json");
    std::fs::write(&cfg, spec.config)?;
    let mut c = Command::new("mcopy");
    c.arg("-i")
        .arg(&img)
        .arg(&cfg)
        .arg(format!("::/{CONFIG_NAME}"));
    run(c, "mcopy", spec.epoch)?;
    std::fs::remove_file(&cfg)?;

    if let Some(dir) = spec.dir {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        let srcs: Vec<_> = entries
            .iter()
            .filter(|e| !e.file_name().eq_ignore_ascii_case(CONFIG_NAME))
            .map(|e| e.path())
            .collect();
        for s in &srcs {
            if s.to_str().is_none() {
                return Err(VfatError::Name(s.display().to_string()));
            }
        }
        if !srcs.is_empty() {
            let mut c = Command::new("mcopy");
            c.args(["-s", "-o", "-D", "o", "-i"]).arg(&img);
            c.args(&srcs).arg("::/");
            run(c, "mcopy", spec.epoch)?;
        }
    }
    if !spec.files.is_empty() {
        let stage = spec.work.join("vfat-files");
        for (p, bytes) in spec.files {
            let dst = stage.join(p.trim_start_matches('/'));
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&dst, bytes)?;
        }
        let mut entries: Vec<_> = std::fs::read_dir(&stage)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        let mut c = Command::new("mcopy");
        c.args(["-s", "-o", "-D", "o", "-i"]).arg(&img);
        c.args(entries.iter().map(|e| e.path())).arg("::/");
        run(c, "mcopy", spec.epoch)?;
        std::fs::remove_dir_all(&stage)?;
    }
    Ok(())
}
