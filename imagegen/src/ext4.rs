//! Builds ext4 filesystem images with e2fsprogs' `mkfs.ext4 -d` (no root, no loop device),
//! with a fixed UUID, hash seed and creation time so builds are reproducible. With
//! SOURCE_DATE_EPOCH set, every inode's ctime and atime are then set to it and copied
//! mtimes clamped to it (e2fsprogs 1.47.0 copies the source's ctime, which no input controls),
//! through one batched `debugfs -w` run. Every e2fsprogs tool that writes runs with
//! `E2FSPROGS_FAKE_TIME`, so no superblock time comes from the wall clock.

use std::path::Path;
use std::process::Command;

/// Why mkfs failed.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error("cannot run mkfs.ext4 (install e2fsprogs): {0}")]
    Spawn(std::io::Error),
    #[error("mkfs.ext4 for {label} failed: {stderr}")]
    Failed { label: String, stderr: String },
    #[error("creating {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Parameters of one ext4 image.
pub struct Ext4Spec<'a> {
    pub size: u64,
    pub label: &'a str,
    pub uuid: uuid::Uuid,
    pub hash_seed: uuid::Uuid,
    pub epoch: i64,
    pub root_dir: Option<&'a Path>,
    /// Clamp the copied files' timestamps to this time (SOURCE_DATE_EPOCH).
    pub clamp: Option<i64>,
    /// The layout's `mkfs-options`, after resin's own (a later option wins in mke2fs).
    pub extra_args: &'a [String],
}

/// Creates `path` (`spec.size` bytes, sparse) and formats it.
pub fn build_ext4(path: &Path, spec: &Ext4Spec<'_>) -> Result<(), Ext4Error> {
    let f = std::fs::File::create(path).map_err(|source| Ext4Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    f.set_len(spec.size).map_err(|source| Ext4Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    drop(f);
    let mut cmd = Command::new("mkfs.ext4");
    cmd.env("E2FSPROGS_FAKE_TIME", spec.epoch.to_string())
        .env("SOURCE_DATE_EPOCH", spec.epoch.to_string())
        .env("MKE2FS_DEVICE_SECTSIZE", "512")
        .arg("-q")
        .arg("-F")
        .args(["-b", "4096"])
        .args(["-L", spec.label])
        .args(["-U", &spec.uuid.to_string()])
        .args([
            "-E",
            &format!("hash_seed={},lazy_itable_init=0,nodiscard", spec.hash_seed),
        ]);
    cmd.args(spec.extra_args);
    if let Some(d) = spec.root_dir {
        cmd.arg("-d").arg(d);
    }
    cmd.arg(path);
    let out = cmd.output().map_err(Ext4Error::Spawn)?;
    if !out.status.success() {
        return Err(Ext4Error::Failed {
            label: spec.label.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    if let (Some(root), Some(epoch)) = (spec.root_dir, spec.clamp) {
        clamp_times(path, root, epoch, spec.label)?;
    }
    Ok(())
}

fn clamp_times(img: &Path, root: &Path, epoch: i64, label: &str) -> Result<(), Ext4Error> {
    use std::fmt::Write as _;
    use std::os::unix::fs::{FileExt, MetadataExt};
    let io = |source| Ext4Error::Io {
        path: root.display().to_string(),
        source,
    };
    // libext2fs allocates the copied inodes in order from the first free one, so the inodes in
    // use are the reserved ones plus 11..=used: address them by number (fast; no path lookups).
    let mut sb = [0u8; 1024];
    std::fs::File::open(img)
        .and_then(|f| f.read_exact_at(&mut sb, 1024))
        .map_err(|source| Ext4Error::Io {
            path: img.display().to_string(),
            source,
        })?;
    let count = u32::from_le_bytes([sb[0], sb[1], sb[2], sb[3]]);
    let free = u32::from_le_bytes([sb[16], sb[17], sb[18], sb[19]]);
    let used = count.saturating_sub(free);
    let mut script = String::new();
    for ino in std::iter::once(2).chain(11..=used) {
        let _ = writeln!(script, "sif <{ino}> ctime @{epoch}");
        let _ = writeln!(script, "sif <{ino}> atime @{epoch}");
    }
    // mtimes newer than the epoch are clamped (by path: only those few need a lookup).
    let mut stack = vec![(root.to_path_buf(), String::from("/"))];
    while let Some((dir, rel)) = stack.pop() {
        let md = std::fs::symlink_metadata(&dir).map_err(io)?;
        push_mtime(&mut script, &rel, md.mtime(), epoch);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(io)?
            .collect::<Result<_, _>>()
            .map_err(io)?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.contains(['"', '\n', '\\']) {
                continue;
            }
            let p = if rel == "/" {
                format!("/{name}")
            } else {
                format!("{rel}/{name}")
            };
            let md = e.path().symlink_metadata().map_err(io)?;
            if md.is_dir() {
                stack.push((e.path(), p));
            } else {
                push_mtime(&mut script, &p, md.mtime(), epoch);
            }
        }
    }
    let script_path = img.with_extension("debugfs");
    std::fs::write(&script_path, script).map_err(|source| Ext4Error::Io {
        path: script_path.display().to_string(),
        source,
    })?;
    // debugfs -w stamps the superblock's last-write time (and so its checksum) with the wall
    // clock unless e2fsprogs' fake time is set.
    let out = Command::new("debugfs")
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(img)
        .output()
        .map_err(Ext4Error::Spawn)?;
    let _ = std::fs::remove_file(&script_path);
    let err = String::from_utf8_lossy(&out.stderr);
    // debugfs reports per-command failures on stderr but exits 0.
    let bad: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .take(3)
        .collect();
    if !out.status.success() || !bad.is_empty() {
        return Err(Ext4Error::Failed {
            label: label.to_string(),
            stderr: format!("debugfs (clamping timestamps): {}", bad.join("; ")),
        });
    }
    Ok(())
}

fn push_mtime(script: &mut String, path: &str, mtime: i64, epoch: i64) {
    use std::fmt::Write as _;
    if mtime > epoch {
        let _ = writeln!(script, "sif \"{path}\" mtime @{epoch}");
    }
}

/// The byte ranges (relative to the filesystem's start, sorted) that ext4 reads: every block
/// the block bitmaps count as in use (superblocks and their backups, group descriptors, bitmaps,
/// inode tables, the journal, directories and file data, zero or not). Free blocks are left
/// out: e2fsck and the kernel never read them before writing them. The map comes from
/// `dumpe2fs`, which also resolves the groups whose bitmaps are not initialised on disk.
pub fn used_ranges(img: &Path) -> Result<Vec<(u64, u64)>, Ext4Error> {
    let out = Command::new("dumpe2fs")
        .arg(img)
        .output()
        .map_err(Ext4Error::Spawn)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let failed = |why: String| Ext4Error::Failed {
        label: img.display().to_string(),
        stderr: format!("dumpe2fs: {why}"),
    };
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    parse_used_ranges(&text).map_err(failed)
}

/// [`used_ranges`] from dumpe2fs's text: the complement of the groups' "Free blocks" lists.
pub fn parse_used_ranges(text: &str) -> Result<Vec<(u64, u64)>, String> {
    let header = |key: &str| -> Result<u64, String> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("no `{key}` in its output"))
    };
    let block = header("Block size:")?;
    let count = header("Block count:")?;
    let mut free = Vec::new();
    // Only the groups' lines are indented; the header's "Free blocks:" is a count.
    for l in text.lines().filter(|l| l.starts_with("  ")) {
        let Some(list) = l.trim_start().strip_prefix("Free blocks:") else {
            continue;
        };
        for r in list.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let bad = || format!("cannot read the free block range `{r}`");
            let (a, b) = match r.split_once('-') {
                Some((a, b)) => (a.parse::<u64>(), b.parse::<u64>()),
                None => (r.parse::<u64>(), r.parse::<u64>()),
            };
            let (a, b) = (a.map_err(|_| bad())?, b.map_err(|_| bad())?);
            free.push((a * block, (b + 1) * block));
        }
    }
    free.sort_unstable();
    Ok(crate::sparse::subtract(&[(0, count * block)], &free))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn used_ranges_are_the_blocks_not_listed_free() {
        let text = "Block count:              100\nFree blocks:              90\n\
                    Block size:               4096\n\
                    Group 0: (Blocks 0-99) csum 0x1 [ITABLE_ZEROED]\n  Free blocks: 4-49, 60, 62-99\n";
        assert_eq!(
            parse_used_ranges(text).unwrap(),
            vec![
                (0, 4 * 4096),
                (50 * 4096, 60 * 4096),
                (61 * 4096, 62 * 4096)
            ]
        );
        assert!(parse_used_ranges("Block size: 4096\n").is_err());
    }
}
