//! Reading an image's GPT (through the `gpt` crate) into a plain partition list.

use std::fs::File;

use gpt::disk::LogicalBlockSize;
use serde::Serialize;
use uuid::Uuid;

/// One used GPT entry.
#[derive(Debug, Clone, Serialize)]
pub struct GptPart {
    pub index: u32,
    pub label: String,
    pub type_guid: Uuid,
    pub part_guid: Uuid,
    pub offset: u64,
    pub size: u64,
}

/// The disk's GPT.
#[derive(Debug, Clone, Serialize)]
pub struct GptInfo {
    pub disk_guid: Uuid,
    pub parts: Vec<GptPart>,
    /// Both headers present and valid.
    pub backup_ok: bool,
}

/// Reads the GPT of `f` (512-byte sectors). Errors are human-readable.
pub fn read_gpt(f: &File) -> Result<GptInfo, String> {
    let disk = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(LogicalBlockSize::Lb512)
        .open_from_device(f)
        .map_err(|e| format!("no valid GPT: {e}"))?;
    if let Err(e) = disk.primary_header() {
        return Err(format!("the primary GPT header is damaged: {e}"));
    }
    let backup_ok = disk.backup_header().is_ok();
    let mut parts = Vec::new();
    for (i, p) in disk.partitions() {
        if !p.is_used() {
            continue;
        }
        let offset = p
            .bytes_start(LogicalBlockSize::Lb512)
            .map_err(|e| format!("partition {i}: {e}"))?;
        let size = p
            .bytes_len(LogicalBlockSize::Lb512)
            .map_err(|e| format!("partition {i}: {e}"))?;
        parts.push(GptPart {
            index: *i,
            label: p.name.clone(),
            type_guid: p.part_type_guid.guid,
            part_guid: p.part_guid,
            offset,
            size,
        });
    }
    Ok(GptInfo {
        disk_guid: *disk.guid(),
        parts,
        backup_ok,
    })
}
