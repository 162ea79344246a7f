//! Sparse-file plumbing: finding data extents (SEEK_DATA/SEEK_HOLE), copying without writing
//! zero blocks, and reading an image as a stream that emits holes without reading them and
//! overlays byte patches.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::unistd::{lseek, Whence};

/// Block size used for zero detection and bmap.
pub const BLOCK: u64 = 4096;
const CHUNK: usize = 1 << 20;

/// The data extents `[start, end)` of a file of length `len`, per SEEK_DATA/SEEK_HOLE.
pub fn data_ranges(f: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    let len_i = i64::try_from(len).map_err(|_| io::Error::other("file too large"))?;
    while pos < len_i {
        let start = match lseek(f, pos, Whence::SeekData) {
            Ok(s) => s,
            Err(Errno::ENXIO) => break,
            // Filesystems without SEEK_DATA: the whole file is data.
            Err(Errno::EINVAL) => return Ok(vec![(0, len)]),
            Err(e) => return Err(io::Error::from(e)),
        };
        let end = match lseek(f, start, Whence::SeekHole) {
            Ok(e) => e,
            Err(Errno::ENXIO) => len_i,
            Err(e) => return Err(io::Error::from(e)),
        };
        let end = end.min(len_i);
        if end > start {
            out.push((start as u64, end as u64));
        }
        pos = end;
    }
    Ok(out)
}

/// Copies the data of `src` into `dst` at `dst_offset`, skipping holes and all-zero blocks, so
/// `dst` stays sparse. Calls `progress` with bytes consumed. Returns the bytes written.
pub fn copy_sparse(
    src: &File,
    dst: &File,
    dst_offset: u64,
    progress: &dyn Fn(u64),
) -> io::Result<u64> {
    let len = src.metadata()?.len();
    let mut buf = vec![0u8; CHUNK];
    let mut written = 0;
    for (start, end) in data_ranges(src, len)? {
        let mut pos = start;
        while pos < end {
            let n = ((end - pos) as usize).min(CHUNK);
            src.read_exact_at(&mut buf[..n], pos)?;
            let mut i = 0;
            while i < n {
                // Find the next run of non-zero blocks.
                let blk = |i: usize| &buf[i..(i + BLOCK as usize).min(n)];
                if is_zero(blk(i)) {
                    i += BLOCK as usize;
                    continue;
                }
                let run_start = i;
                while i < n && !is_zero(blk(i)) {
                    i += BLOCK as usize;
                }
                let run_end = i.min(n);
                dst.write_all_at(
                    &buf[run_start..run_end],
                    dst_offset + pos + run_start as u64,
                )?;
                written += (run_end - run_start) as u64;
            }
            pos += n as u64;
            progress(n as u64);
        }
    }
    Ok(written)
}

/// The 4 KiB blocks (inclusive ranges, sorted and merged) covering the byte ranges `[s, e)` that
/// matter in a file of `len` bytes. A block is mapped when any byte of it matters.
pub fn needed_blocks(ranges: &[(u64, u64)], len: u64) -> Vec<(u64, u64)> {
    let last_block = len.div_ceil(BLOCK);
    let mut v: Vec<(u64, u64)> = ranges
        .iter()
        .filter(|(s, e)| e > s && *s < len)
        .map(|&(s, e)| (s / BLOCK, e.min(len).div_ceil(BLOCK).min(last_block)))
        .collect();
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (a, b) in v {
        match out.last_mut() {
            Some(l) if l.1 + 1 >= a => l.1 = l.1.max(b - 1),
            _ => out.push((a, b - 1)),
        }
    }
    out
}

/// `a` minus `b`, both sorted lists of disjoint half-open ranges.
pub fn subtract(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(s, e) in a {
        let mut cur = s;
        while j < b.len() && b[j].1 <= cur {
            j += 1;
        }
        let mut k = j;
        while cur < e && k < b.len() && b[k].0 < e {
            if b[k].0 > cur {
                out.push((cur, b[k].0));
            }
            cur = cur.max(b[k].1);
            k += 1;
        }
        if cur < e {
            out.push((cur, e));
        }
    }
    out
}

/// Makes the file `f` (`len` bytes) sparse in exactly the blocks left out of `blocks`
/// (inclusive block ranges from [`needed_blocks`]): zeros are written into holes inside mapped
/// blocks, and data outside them is punched out, so SEEK_DATA/FIEMAP readers such as
/// `bmaptool create` see the same map as our `.bmap`. Where the filesystem cannot punch holes
/// the data stays (the image is then merely less sparse).
pub fn conform(f: &File, len: u64, blocks: &[(u64, u64)]) -> io::Result<()> {
    use nix::fcntl::{fallocate, FallocateFlags};
    let mapped: Vec<(u64, u64)> = blocks
        .iter()
        .map(|&(a, b)| (a * BLOCK, ((b + 1) * BLOCK).min(len)))
        .collect();
    let data = data_ranges(f, len)?;
    let zeros = vec![0u8; CHUNK];
    for (s, e) in subtract(&mapped, &data) {
        let mut pos = s;
        while pos < e {
            let n = ((e - pos) as usize).min(CHUNK);
            f.write_all_at(&zeros[..n], pos)?;
            pos += n as u64;
        }
    }
    let all = [(0, len)];
    let unmapped = subtract(&all, &mapped);
    for (s, e) in subtract(&data, &subtract(&data, &unmapped)) {
        let (Ok(off), Ok(n)) = (i64::try_from(s), i64::try_from(e - s)) else {
            continue;
        };
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        match fallocate(f, flags, off, n) {
            Ok(()) => {}
            Err(Errno::EOPNOTSUPP) => return Ok(()),
            Err(e) => return Err(io::Error::from(e)),
        }
    }
    Ok(())
}

/// True if every byte is zero.
pub fn is_zero(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(16);
    for c in &mut chunks {
        let w: [u8; 16] = c.try_into().unwrap_or([1; 16]);
        if u128::from_ne_bytes(w) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&x| x == 0)
}

/// A byte range of the image to replace while streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// Reads a (sparse) file start to end as a stream: holes come out as zeros without touching
/// the disk, and `patches` replace their byte ranges on the fly.
pub struct OverlayReader {
    file: File,
    len: u64,
    pos: u64,
    ranges: Vec<(u64, u64)>,
    range_idx: usize,
    patches: Vec<Patch>,
}

impl OverlayReader {
    /// `patches` must lie within the file.
    pub fn new(file: File, mut patches: Vec<Patch>) -> io::Result<Self> {
        let len = file.metadata()?.len();
        let ranges = data_ranges(&file, len)?;
        patches.sort_by_key(|p| p.offset);
        Ok(Self {
            file,
            len,
            pos: 0,
            ranges,
            range_idx: 0,
            patches,
        })
    }

    /// Total length of the stream.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Read for OverlayReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        while self.range_idx < self.ranges.len() && self.ranges[self.range_idx].1 <= self.pos {
            self.range_idx += 1;
        }
        let want = (buf.len() as u64).min(self.len - self.pos);
        let n = match self.ranges.get(self.range_idx) {
            Some(&(s, e)) if s <= self.pos => {
                let n = want.min(e - self.pos) as usize;
                self.file.read_exact_at(&mut buf[..n], self.pos)?;
                n
            }
            Some(&(s, _)) => {
                let n = want.min(s - self.pos) as usize;
                buf[..n].fill(0);
                n
            }
            None => {
                let n = want as usize;
                buf[..n].fill(0);
                n
            }
        };
        let (lo, hi) = (self.pos, self.pos + n as u64);
        for p in &self.patches {
            let (ps, pe) = (p.offset, p.offset + p.bytes.len() as u64);
            if pe <= lo || ps >= hi {
                continue;
            }
            let s = ps.max(lo);
            let e = pe.min(hi);
            buf[(s - lo) as usize..(e - lo) as usize]
                .copy_from_slice(&p.bytes[(s - ps) as usize..(e - ps) as usize]);
        }
        self.pos = hi;
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn needed_blocks_round_out_and_merge() {
        let r = needed_blocks(
            &[(8192, 8193), (0, 10), (4095, 4097), (20000, 30000)],
            32768,
        );
        assert_eq!(r, vec![(0, 2), (4, 7)]);
        assert_eq!(needed_blocks(&[(0, 1 << 40)], 10000), vec![(0, 2)]);
        assert!(needed_blocks(&[(5, 5)], 100).is_empty());
    }

    #[test]
    fn subtract_leaves_the_gaps() {
        let a = [(0, 100), (200, 300)];
        assert_eq!(
            subtract(&a, &[(10, 20), (50, 250)]),
            vec![(0, 10), (20, 50), (250, 300)]
        );
        assert_eq!(subtract(&a, &[]), a.to_vec());
        assert!(subtract(&a, &[(0, 300)]).is_empty());
        assert_eq!(subtract(&[(0, 10)], &[(10, 20)]), vec![(0, 10)]);
    }

    #[test]
    fn conform_matches_the_file_to_the_map() {
        let d = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(d.path().join("x"))
            .unwrap();
        let len = 16 * BLOCK;
        f.set_len(len).unwrap();
        f.write_all_at(&[1u8; 4096], 0).unwrap(); // data, mapped
        f.write_all_at(&[2u8; 4096], 8 * BLOCK).unwrap(); // data, not mapped
        let blocks = [(0, 0), (4, 5)]; // block 4-5: a hole that must read as mapped zeros
        conform(&f, len, &blocks).unwrap();
        let ranges = data_ranges(&f, len).unwrap();
        let as_blocks: Vec<_> = ranges
            .iter()
            .map(|&(s, e)| (s / BLOCK, e / BLOCK - 1))
            .collect();
        assert_eq!(as_blocks, vec![(0, 0), (4, 5)]);
        let mut b = [9u8; 4096];
        f.read_exact_at(&mut b, 8 * BLOCK).unwrap();
        assert!(is_zero(&b));
    }

    #[test]
    fn overlay_reader_emits_holes_data_and_patches() {
        let mut f = tempfile::tempfile().unwrap();
        f.set_len(3 * 1024 * 1024).unwrap();
        f.write_all_at(b"hello", 1024 * 1024).unwrap();
        f.flush().unwrap();
        let patches = vec![Patch {
            offset: 1024 * 1024 + 1,
            bytes: b"ELL".to_vec(),
        }];
        let mut r = OverlayReader::new(f, patches).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), 3 * 1024 * 1024);
        assert_eq!(&out[1024 * 1024..1024 * 1024 + 5], b"hELLo");
        assert!(out[..1024 * 1024].iter().all(|&b| b == 0));
    }
}
