//! Builds ext4 filesystem images with e2fsprogs' `mkfs.ext4 -d` (no root, no loop device),
//! with a fixed UUID, hash seed and creation time so builds are reproducible.

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
            &format!("hash_seed={},lazy_itable_init=1,nodiscard", spec.hash_seed),
        ]);
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
    Ok(())
}
