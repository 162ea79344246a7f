//! Inspecting a disk image: its GPT, the filesystem in each partition, and the injected
//! config.json, checked against the layout's invariants (labels, alignment, filesystems,
//! config reservation). A damaged image is an error with a message saying what is wrong.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use uuid::Uuid;

use crate::configure::{locate, ConfigureError};
use crate::gptread::{check_partitions, read_gpt};
use crate::layout::{default_layout, Fs, Plan};

/// Why an image could not be inspected, or what is damaged in it.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged: {msg}")]
    Damaged { path: PathBuf, msg: String },
    #[error("the built-in layout is invalid: {0}")]
    Layout(#[from] crate::layout::LayoutError),
}

/// One partition of the image.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    pub index: u32,
    pub label: String,
    pub type_guid: Uuid,
    pub part_guid: Uuid,
    pub offset: u64,
    pub size: u64,
    /// `ext4`, `vfat` (FAT12/16/32), or `none`.
    pub fs: String,
    pub fs_label: Option<String>,
    pub fs_uuid: Option<String>,
}

/// What `inspect` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub size: u64,
    pub disk_guid: Uuid,
    pub partitions: Vec<PartitionReport>,
    /// Bytes reserved for config.json in the boot partition.
    pub config_reserved: u64,
    /// config.json without its padding (`{}` in an unconfigured image).
    #[serde(skip)]
    pub config_json: Vec<u8>,
    /// config.json parsed (for `--json` output).
    pub config: serde_json::Value,
    /// The config has the fields a device needs (resin_api_types::ConfigJson).
    pub configured: bool,
}

/// Inspects `path` against the shipped A/B layout.
pub fn inspect_image(path: &Path) -> Result<Report, InspectError> {
    let plan = default_layout()?.plan()?;
    inspect_image_with(path, &plan)
}

fn ext4_info(f: &File, offset: u64) -> std::io::Result<Option<(String, String, u64)>> {
    let mut sb = [0u8; 1024];
    f.read_exact_at(&mut sb, offset + 1024)?;
    if sb[0x38] != 0x53 || sb[0x39] != 0xEF {
        return Ok(None);
    }
    let label = String::from_utf8_lossy(&sb[0x78..0x88])
        .trim_end_matches('\0')
        .to_string();
    let uuid = Uuid::from_slice(&sb[0x68..0x78])
        .map(|u| u.to_string())
        .unwrap_or_default();
    let blocks_lo = u32::from_le_bytes([sb[4], sb[5], sb[6], sb[7]]) as u64;
    let blocks_hi = u32::from_le_bytes([sb[0x150], sb[0x151], sb[0x152], sb[0x153]]) as u64;
    let log = u32::from_le_bytes([sb[0x18], sb[0x19], sb[0x1a], sb[0x1b]]);
    let bytes = ((blocks_hi << 32) | blocks_lo) << (10 + log.min(6));
    Ok(Some((label, uuid, bytes)))
}

/// Inspects `path` against `plan`'s invariants.
pub fn inspect_image_with(path: &Path, plan: &Plan) -> Result<Report, InspectError> {
    let io = |source| InspectError::Io {
        path: path.to_path_buf(),
        source,
    };
    let damaged = |msg: String| InspectError::Damaged {
        path: path.to_path_buf(),
        msg,
    };
    let f = File::open(path).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    let gpt = read_gpt(&f).map_err(damaged)?;
    check_partitions(&f, &gpt).map_err(damaged)?;
    let mut parts = Vec::new();
    for p in &gpt.parts {
        if p.offset % plan.alignment != 0 {
            return Err(damaged(format!(
                "partition {} starts at {}, not aligned to {} bytes",
                p.label, p.offset, plan.alignment
            )));
        }
        let (fs, fs_label, fs_uuid) =
            if let Some((l, u, bytes)) = ext4_info(&f, p.offset).map_err(io)? {
                if bytes > p.size {
                    return Err(damaged(format!(
                    "the ext4 filesystem of {} is {bytes} bytes, larger than its {}-byte partition",
                    p.label, p.size
                )));
                }
                ("ext4".to_string(), Some(l), Some(u))
            } else if let Ok(v) = crate::fat::FatVolume::open(&f, p.offset, p.size) {
                (
                    format!("vfat ({:?})", v.kind).to_lowercase(),
                    Some(v.label),
                    None,
                )
            } else {
                let mut magic = [0u8; 8];
                f.read_exact_at(&mut magic, p.offset).map_err(io)?;
                let fs = if &magic[..4] == b"hsqs" {
                    "squashfs"
                } else if &magic == b"verity\0\0" {
                    "verity"
                } else {
                    "none"
                };
                (fs.to_string(), None, None)
            };
        parts.push(PartitionReport {
            index: p.index,
            label: p.label.clone(),
            type_guid: p.type_guid,
            part_guid: p.part_guid,
            offset: p.offset,
            size: p.size,
            fs,
            fs_label,
            fs_uuid,
        });
    }
    for want in &plan.parts {
        let Some(got) = parts.iter().find(|p| p.label == want.label) else {
            return Err(damaged(format!(
                "it has no partition labelled {} (the layout's partition[{}])",
                want.label, want.name
            )));
        };
        let ok = match want.fs {
            Fs::Ext4 => got.fs == "ext4",
            Fs::Vfat => got.fs.starts_with("vfat"),
            Fs::UbootEnv => match want.env {
                Some(e) => {
                    crate::ubootenv::valid_copies(&f, got.offset, e.size, e.redundant)
                        .map_err(io)?
                        > 0
                }
                None => true,
            },
            Fs::Squashfs => got.fs == "squashfs" || got.fs == "none",
            Fs::Verity => got.fs == "verity" || got.fs == "none",
            Fs::None => true,
        };
        if !ok {
            return Err(damaged(format!(
                "partition {} should hold {:?} but holds {}",
                want.label, want.fs, got.fs
            )));
        }
    }
    let slot = locate(&f).map_err(|e| match e {
        ConfigureError::Io(source) => io(source),
        other => damaged(other.to_string()),
    })?;
    let raw = slot.file.read(&f).map_err(|e| damaged(e.to_string()))?;
    let text = String::from_utf8_lossy(&raw).trim_end().to_string();
    let config: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| damaged(format!("config.json is not valid JSON: {e}")))?;
    let configured = resin_api_types::ConfigJson::parse(&text).is_ok();
    Ok(Report {
        size,
        disk_guid: gpt.disk_guid,
        partitions: parts,
        config_reserved: slot.file.capacity(),
        config_json: text.into_bytes(),
        config,
        configured,
    })
}

impl Report {
    /// Human-readable report.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "disk: {} bytes ({}), GPT {}",
            self.size,
            crate::size::Size(self.size),
            self.disk_guid
        );
        let _ = writeln!(
            s,
            "{:>2}  {:<14} {:>12} {:>12}  {:<14} {:<16}",
            "#", "label", "start", "size", "filesystem", "fs label"
        );
        for p in &self.partitions {
            let _ = writeln!(
                s,
                "{:>2}  {:<14} {:>12} {:>12}  {:<14} {:<16}",
                p.index,
                p.label,
                p.offset,
                crate::size::Size(p.size).to_string(),
                p.fs,
                p.fs_label.as_deref().unwrap_or("-")
            );
        }
        let _ = writeln!(
            s,
            "config.json ({} bytes reserved, {}):",
            self.config_reserved,
            if self.configured {
                "configured"
            } else {
                "not configured"
            }
        );
        let _ = writeln!(
            s,
            "{}",
            serde_json::to_string_pretty(&self.config).unwrap_or_default()
        );
        s
    }
}
