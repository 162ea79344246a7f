//! Reading an image's GPT (through the `gpt` crate) into a plain partition list, after checking
//! that the file is as long as the disk the GPT describes (not truncated, not padded), and that
//! every partition's filesystem fits in it.

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
}

/// Reads the GPT of `f` (512-byte sectors) and checks that it describes a disk of exactly the
/// file's size. Errors are human-readable sentences saying what is wrong and where
/// ("it is truncated: …", "the primary GPT header (sector 1) is damaged: …").
pub fn read_gpt(f: &File) -> Result<GptInfo, String> {
    use std::os::unix::fs::FileExt;
    const SECTOR: u64 = 512;
    let len = f
        .metadata()
        .map_err(|e| format!("cannot read its size: {e}"))?
        .len();
    if len < 3 * SECTOR {
        return Err(format!(
            "it is only {len} bytes, too short to hold a GPT (a protective MBR, a header and \
             an entry array)"
        ));
    }
    let mut h = [0u8; 92];
    f.read_exact_at(&mut h, SECTOR)
        .map_err(|e| format!("cannot read sector 1: {e}"))?;
    if &h[..8] != b"EFI PART" {
        return Err("it has no GPT: sector 1 (byte 512) holds no `EFI PART` header".into());
    }
    let le64 = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&h[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let backup_lba = le64(32);
    let entries_lba = le64(72);
    let entries_len = u32::from_le_bytes([h[80], h[81], h[82], h[83]]) as u64
        * u32::from_le_bytes([h[84], h[85], h[86], h[87]]) as u64;
    let described = backup_lba.saturating_add(1).saturating_mul(SECTOR);
    if len < (entries_lba * SECTOR).saturating_add(entries_len) {
        return Err(format!(
            "it is truncated: it is {len} bytes, which ends inside the GPT entry array \
             (sectors {entries_lba}.., {entries_len} bytes)"
        ));
    }
    if len < described {
        return Err(format!(
            "it is truncated: it is {len} bytes but its GPT describes a {described}-byte disk \
             (the backup GPT header belongs in its last sector, sector {backup_lba} at byte {})",
            backup_lba * SECTOR
        ));
    }
    if len > described {
        return Err(format!(
            "it is {len} bytes, {} more than the {described}-byte disk its GPT describes (the \
             backup GPT header is in sector {backup_lba}, not in the last sector): bytes were \
             appended, or it was read back from a larger medium",
            len - described
        ));
    }
    let disk = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(LogicalBlockSize::Lb512)
        .open_from_device(f)
        .map_err(|e| format!("its GPT cannot be read: {e}"))?;
    if let Err(e) = disk.primary_header() {
        return Err(format!("the primary GPT header (sector 1) is damaged: {e}"));
    }
    if let Err(e) = disk.backup_header() {
        return Err(format!(
            "the backup GPT header (sector {backup_lba}, the last) is damaged: {e}"
        ));
    }
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
        if offset + size > len {
            return Err(format!(
                "partition {i} ({}) ends at byte {}, past the end of the {len}-byte disk",
                p.name,
                offset + size
            ));
        }
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
    })
}

/// Checks that the partitions do not overlap and that each ext4 or FAT filesystem found at a
/// partition's start fits in the partition (a partition table edited or restored without its
/// filesystems, or a filesystem written at the wrong place, disagree here). Layout-independent;
/// `configure` and `inspect` both run it.
pub fn check_partitions(f: &File, gpt: &GptInfo) -> Result<(), String> {
    let mut sorted = gpt.parts.clone();
    sorted.sort_by_key(|p| p.offset);
    for w in sorted.windows(2) {
        if w[0].offset + w[0].size > w[1].offset {
            return Err(format!(
                "partitions {} ({}) and {} ({}) overlap",
                w[0].index, w[0].label, w[1].index, w[1].label
            ));
        }
    }
    for p in &gpt.parts {
        let read =
            |e: std::io::Error| format!("cannot read partition {} ({}): {e}", p.index, p.label);
        if let Some(bytes) = ext4_size(f, p.offset).map_err(read)? {
            if bytes > p.size {
                return Err(format!(
                    "the ext4 filesystem in partition {} ({}) is {bytes} bytes, larger than the \
                     partition ({} bytes): the partition table and the filesystem disagree",
                    p.index, p.label, p.size
                ));
            }
        } else if let Some(bytes) = fat_size(f, p.offset).map_err(read)? {
            if bytes > p.size {
                return Err(format!(
                    "the FAT filesystem in partition {} ({}) is {bytes} bytes, larger than the \
                     partition ({} bytes): the partition table and the filesystem disagree",
                    p.index, p.label, p.size
                ));
            }
        }
    }
    Ok(())
}

/// The size an ext4 superblock at `offset` claims, if there is one.
pub fn ext4_size(f: &File, offset: u64) -> std::io::Result<Option<u64>> {
    use std::os::unix::fs::FileExt;
    let mut sb = [0u8; 1024];
    f.read_exact_at(&mut sb, offset + 1024)?;
    if sb[0x38] != 0x53 || sb[0x39] != 0xEF {
        return Ok(None);
    }
    let lo = u32::from_le_bytes([sb[4], sb[5], sb[6], sb[7]]) as u64;
    let hi = u32::from_le_bytes([sb[0x150], sb[0x151], sb[0x152], sb[0x153]]) as u64;
    let log = u32::from_le_bytes([sb[0x18], sb[0x19], sb[0x1a], sb[0x1b]]);
    // The high word counts only with the 64bit feature (incompat 0x80).
    let hi = if sb[0x60] & 0x80 != 0 { hi } else { 0 };
    Ok(Some(((hi << 32) | lo) << (10 + log.min(6))))
}

/// The size a FAT boot sector at `offset` claims, if there is one.
fn fat_size(f: &File, offset: u64) -> std::io::Result<Option<u64>> {
    use std::os::unix::fs::FileExt;
    let mut bs = [0u8; 512];
    f.read_exact_at(&mut bs, offset)?;
    let bps = u16::from_le_bytes([bs[11], bs[12]]) as u64;
    let fat_jump = bs[0] == 0xEB || bs[0] == 0xE9;
    if bs[510] != 0x55 || bs[511] != 0xAA || !fat_jump || !matches!(bps, 512 | 1024 | 2048 | 4096) {
        return Ok(None);
    }
    let t16 = u16::from_le_bytes([bs[19], bs[20]]) as u64;
    let t32 = u32::from_le_bytes([bs[32], bs[33], bs[34], bs[35]]) as u64;
    Ok(Some(if t16 != 0 { t16 } else { t32 } * bps))
}
