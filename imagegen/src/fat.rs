//! A minimal read-only FAT12/16/32 reader: locates a file in the root directory of a FAT
//! volume inside an image and maps its clusters to absolute byte ranges of the image. This is
//! what lets `configure` rewrite `config.json` without touching any other byte.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Why the FAT volume could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FatError {
    #[error("reading the boot partition: {0}")]
    Io(#[from] std::io::Error),
    #[error("the boot partition is not a FAT filesystem ({0})")]
    NotFat(String),
    #[error("the FAT filesystem is damaged: {0}")]
    Damaged(String),
}

/// FAT variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatKind {
    Fat12,
    Fat16,
    Fat32,
}

/// Geometry of a FAT volume at `base` bytes into the image.
#[derive(Debug, Clone)]
pub struct FatVolume {
    pub base: u64,
    pub kind: FatKind,
    pub bytes_per_sector: u64,
    pub cluster_size: u64,
    pub fat_offset: u64,
    pub root_dir_offset: u64,
    pub root_dir_len: u64,
    pub root_cluster: u32,
    pub data_offset: u64,
    pub clusters: u32,
    pub label: String,
}

/// A file found in the root directory.
#[derive(Debug, Clone)]
pub struct FatFile {
    /// Absolute image offset of the 32-byte short directory entry.
    pub dirent_offset: u64,
    pub size: u32,
    pub first_cluster: u32,
    /// Absolute byte ranges `[start, end)` of the clusters in chain order.
    pub extents: Vec<(u64, u64)>,
}

impl FatFile {
    /// Bytes allocated to the file (its cluster chain).
    pub fn capacity(&self) -> u64 {
        self.extents.iter().map(|(s, e)| e - s).sum()
    }

    /// Reads the file's content (`size` bytes).
    pub fn read(&self, f: &File) -> Result<Vec<u8>, FatError> {
        let mut out = Vec::with_capacity(self.size as usize);
        let mut left = self.size as u64;
        for &(s, e) in &self.extents {
            if left == 0 {
                break;
            }
            let n = (e - s).min(left);
            let mut buf = vec![0u8; n as usize];
            f.read_exact_at(&mut buf, s)?;
            out.extend_from_slice(&buf);
            left -= n;
        }
        Ok(out)
    }
}

fn le16(b: &[u8], o: usize) -> u64 {
    u16::from_le_bytes([b[o], b[o + 1]]) as u64
}
fn le32(b: &[u8], o: usize) -> u64 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as u64
}

impl FatVolume {
    /// Reads the boot sector of the volume starting at `base`, `part_len` bytes long.
    pub fn open(f: &File, base: u64, part_len: u64) -> Result<Self, FatError> {
        let mut bs = [0u8; 512];
        f.read_exact_at(&mut bs, base)?;
        if bs[510] != 0x55 || bs[511] != 0xAA {
            return Err(FatError::NotFat("no boot sector signature".into()));
        }
        let bps = le16(&bs, 11);
        let spc = bs[13] as u64;
        let reserved = le16(&bs, 14);
        let nfats = bs[16] as u64;
        let root_entries = le16(&bs, 17);
        let total16 = le16(&bs, 19);
        let fat16 = le16(&bs, 22);
        let total32 = le32(&bs, 32);
        let fat32 = le32(&bs, 36);
        if !matches!(bps, 512 | 1024 | 2048 | 4096) || spc == 0 || !spc.is_power_of_two() {
            return Err(FatError::NotFat(format!(
                "bytes per sector {bps}, sectors per cluster {spc}"
            )));
        }
        if nfats == 0 || reserved == 0 {
            return Err(FatError::NotFat("no FATs or reserved sectors".into()));
        }
        let total = if total16 != 0 { total16 } else { total32 };
        let fat_sz = if fat16 != 0 { fat16 } else { fat32 };
        let root_dir_sectors = (root_entries * 32).div_ceil(bps);
        let meta = reserved + nfats * fat_sz + root_dir_sectors;
        if total <= meta || total * bps > part_len {
            return Err(FatError::Damaged(format!(
                "{total} sectors do not fit the {part_len}-byte partition"
            )));
        }
        let clusters = ((total - meta) / spc) as u32;
        let kind = if clusters < 4085 {
            FatKind::Fat12
        } else if clusters < 65525 {
            FatKind::Fat16
        } else {
            FatKind::Fat32
        };
        let fat_offset = base + reserved * bps;
        let root_dir_offset = fat_offset + nfats * fat_sz * bps;
        let data_offset = root_dir_offset + root_dir_sectors * bps;
        let (label_off, root_cluster) = match kind {
            FatKind::Fat32 => (71, le32(&bs, 44) as u32),
            _ => (43, 0),
        };
        let label = String::from_utf8_lossy(&bs[label_off..label_off + 11])
            .trim_end()
            .to_string();
        Ok(Self {
            base,
            kind,
            bytes_per_sector: bps,
            cluster_size: bps * spc,
            fat_offset,
            root_dir_offset,
            root_dir_len: root_dir_sectors * bps,
            root_cluster,
            data_offset,
            clusters,
            label,
        })
    }

    fn next_cluster(&self, f: &File, c: u32) -> Result<u32, FatError> {
        match self.kind {
            FatKind::Fat32 => {
                let mut b = [0u8; 4];
                f.read_exact_at(&mut b, self.fat_offset + c as u64 * 4)?;
                Ok(u32::from_le_bytes(b) & 0x0FFF_FFFF)
            }
            FatKind::Fat16 => {
                let mut b = [0u8; 2];
                f.read_exact_at(&mut b, self.fat_offset + c as u64 * 2)?;
                let v = u16::from_le_bytes(b) as u32;
                Ok(if v >= 0xFFF8 { 0x0FFF_FFFF } else { v })
            }
            FatKind::Fat12 => {
                let mut b = [0u8; 2];
                let off = c as u64 + c as u64 / 2;
                f.read_exact_at(&mut b, self.fat_offset + off)?;
                let w = u16::from_le_bytes(b) as u32;
                let v = if c.is_multiple_of(2) {
                    w & 0xFFF
                } else {
                    w >> 4
                };
                Ok(if v >= 0xFF8 { 0x0FFF_FFFF } else { v })
            }
        }
    }

    /// The byte ranges (absolute, sorted) whose content the filesystem reads: the reserved
    /// sectors, every FAT, the root directory and each allocated cluster. Free clusters and
    /// the tail after the last cluster are left out: nothing reads them before writing them.
    pub fn used_ranges(&self, f: &File) -> Result<Vec<(u64, u64)>, FatError> {
        let n = self.clusters as u64 + 2;
        let fat_len = match self.kind {
            FatKind::Fat32 => n * 4,
            FatKind::Fat16 => n * 2,
            FatKind::Fat12 => (n * 3).div_ceil(2),
        };
        let mut fat = vec![0u8; fat_len as usize];
        f.read_exact_at(&mut fat, self.fat_offset)?;
        let mut out = vec![(self.base, self.data_offset)];
        for c in 2..n as u32 {
            let i = c as usize;
            let used = match self.kind {
                FatKind::Fat32 => {
                    u32::from_le_bytes([fat[4 * i], fat[4 * i + 1], fat[4 * i + 2], fat[4 * i + 3]])
                        & 0x0FFF_FFFF
                        != 0
                }
                FatKind::Fat16 => fat[2 * i] != 0 || fat[2 * i + 1] != 0,
                FatKind::Fat12 => {
                    let o = i + i / 2;
                    let w = u16::from_le_bytes([fat[o], fat[o + 1]]);
                    let v = if c.is_multiple_of(2) {
                        w & 0xFFF
                    } else {
                        w >> 4
                    };
                    v != 0
                }
            };
            if used {
                let s = self.cluster_offset(c);
                match out.last_mut() {
                    Some(last) if last.1 == s => last.1 = s + self.cluster_size,
                    _ => out.push((s, s + self.cluster_size)),
                }
            }
        }
        Ok(out)
    }

    fn cluster_offset(&self, c: u32) -> u64 {
        self.data_offset + (c as u64 - 2) * self.cluster_size
    }

    /// The cluster chain starting at `first`, as absolute byte extents (adjacent ones merged).
    pub fn chain(&self, f: &File, first: u32) -> Result<Vec<(u64, u64)>, FatError> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut c = first;
        let mut n = 0u32;
        while (2..0x0FFF_FFF8).contains(&c) {
            if c >= self.clusters + 2 {
                return Err(FatError::Damaged(format!("cluster {c} is out of range")));
            }
            n += 1;
            if n > self.clusters {
                return Err(FatError::Damaged("a cluster chain loops".into()));
            }
            let s = self.cluster_offset(c);
            match out.last_mut() {
                Some(last) if last.1 == s => last.1 = s + self.cluster_size,
                _ => out.push((s, s + self.cluster_size)),
            }
            c = self.next_cluster(f, c)?;
        }
        if c != 0x0FFF_FFFF && c < 0x0FFF_FFF8 && n > 0 {
            return Err(FatError::Damaged(format!("bad cluster chain entry {c:#x}")));
        }
        Ok(out)
    }

    /// Finds `name` (case-insensitive, long or 8.3 name) in the root directory.
    pub fn find_root_file(&self, f: &File, name: &str) -> Result<Option<FatFile>, FatError> {
        let extents = match self.kind {
            FatKind::Fat32 => self.chain(f, self.root_cluster)?,
            _ => vec![(
                self.root_dir_offset,
                self.root_dir_offset + self.root_dir_len,
            )],
        };
        let want = name.to_ascii_lowercase();
        let mut lfn: Vec<(u8, [u16; 13])> = Vec::new();
        for (s, e) in extents {
            let mut buf = vec![0u8; (e - s) as usize];
            f.read_exact_at(&mut buf, s)?;
            for (i, ent) in buf.chunks_exact(32).enumerate() {
                match ent[0] {
                    0x00 => return Ok(None),
                    0xE5 => {
                        lfn.clear();
                        continue;
                    }
                    _ => {}
                }
                let attr = ent[11];
                if attr & 0x3F == 0x0F {
                    let mut chars = [0u16; 13];
                    let offs = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
                    for (k, o) in offs.iter().enumerate() {
                        chars[k] = u16::from_le_bytes([ent[*o], ent[o + 1]]);
                    }
                    lfn.push((ent[0] & 0x1F, chars));
                    continue;
                }
                if attr & 0x08 != 0 || attr & 0x10 != 0 {
                    lfn.clear();
                    continue;
                }
                let long = if lfn.is_empty() {
                    None
                } else {
                    lfn.sort_by_key(|(o, _)| *o);
                    let units: Vec<u16> = lfn
                        .iter()
                        .flat_map(|(_, c)| c.iter().copied())
                        .take_while(|&u| u != 0 && u != 0xFFFF)
                        .collect();
                    Some(String::from_utf16_lossy(&units).to_ascii_lowercase())
                };
                lfn.clear();
                let base = String::from_utf8_lossy(&ent[0..8]).trim_end().to_string();
                let ext = String::from_utf8_lossy(&ent[8..11]).trim_end().to_string();
                let short = if ext.is_empty() {
                    base
                } else {
                    format!("{base}.{ext}")
                }
                .to_ascii_lowercase();
                if long.as_deref() == Some(want.as_str()) || short == want {
                    let first = ((le16(ent, 20) << 16) | le16(ent, 26)) as u32;
                    let size = le32(ent, 28) as u32;
                    let extents = if first == 0 {
                        Vec::new()
                    } else {
                        self.chain(f, first)?
                    };
                    let file = FatFile {
                        dirent_offset: s + (i as u64) * 32,
                        size,
                        first_cluster: first,
                        extents,
                    };
                    if (size as u64) > file.capacity() {
                        return Err(FatError::Damaged(format!(
                            "{name} is {size} bytes but its cluster chain holds {}",
                            file.capacity()
                        )));
                    }
                    return Ok(Some(file));
                }
            }
        }
        Ok(None)
    }
}
