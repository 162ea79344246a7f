//! Read-only roots: squashfs images (mksquashfs) and their dm-verity hash trees (veritysetup
//! format), both reproducible: mksquashfs gets SOURCE_DATE_EPOCH, veritysetup a salt and a
//! UUID derived from the build's seed.

use std::path::{Path, PathBuf};
use std::process::Command;

use uuid::Uuid;

/// Why a squashfs or a hash tree could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReadonlyError {
    #[error("running {tool}: {source}")]
    Spawn {
        tool: &'static str,
        source: std::io::Error,
    },
    #[error("{tool} failed on {path}: {stderr}")]
    Failed {
        tool: &'static str,
        path: PathBuf,
        stderr: String,
    },
    #[error("veritysetup format printed no root hash for {0}")]
    NoRootHash(PathBuf),
}

/// Makes a squashfs of `dir` at `out`. Timestamps: with SOURCE_DATE_EPOCH = `epoch`,
/// mksquashfs (4.4 and later) stamps the filesystem with it and clamps newer file times to it;
/// its output does not depend on the number of threads. `extra` are the layout's
/// `mkfs-options` (e.g. `["-comp", "zstd"]`).
pub fn build_squashfs(
    dir: &Path,
    out: &Path,
    epoch: i64,
    extra: &[String],
) -> Result<(), ReadonlyError> {
    let o = Command::new("mksquashfs")
        .arg(dir)
        .arg(out)
        .args(["-noappend", "-no-progress", "-quiet"])
        .args(extra)
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .output()
        .map_err(|source| ReadonlyError::Spawn {
            tool: "mksquashfs",
            source,
        })?;
    if !o.status.success() {
        return Err(ReadonlyError::Failed {
            tool: "mksquashfs",
            path: dir.to_path_buf(),
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Writes the dm-verity hash tree of `data` (4 KiB data and hash blocks, sha256, with a
/// superblock) to `hash` and returns the root hash (hex).
pub fn verity_format(
    data: &Path,
    hash: &Path,
    salt: &[u8; 32],
    uuid: Uuid,
) -> Result<String, ReadonlyError> {
    let o = Command::new("veritysetup")
        .args([
            "format",
            "--hash=sha256",
            "--data-block-size=4096",
            "--hash-block-size=4096",
        ])
        .arg(format!("--salt={}", hex::encode(salt)))
        .arg(format!("--uuid={uuid}"))
        .arg(data)
        .arg(hash)
        .output()
        .map_err(|source| ReadonlyError::Spawn {
            tool: "veritysetup",
            source,
        })?;
    if !o.status.success() {
        return Err(ReadonlyError::Failed {
            tool: "veritysetup",
            path: data.to_path_buf(),
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        });
    }
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|h| h.trim().to_string())
        .filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
        .ok_or_else(|| ReadonlyError::NoRootHash(data.to_path_buf()))
}
