//! Block map (`.bmap`, format 2.0 with sha256 range checksums) for a sparse image, as
//! `bmaptool copy` reads it. The mapped blocks are the ones whose content matters (see
//! [`crate::sparse::needed_blocks`]), not merely the non-zero ones: a zero block that a
//! filesystem reads (an inode table, the rest of a FAT, a file's run of zeros) is mapped, so
//! flashing onto a medium that is not blank still gives the image.

use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

use crate::sparse::BLOCK;

/// The hex sha256 of each block range's bytes, in order, hashed by up to one thread per core.
fn range_sums(f: &File, blocks: &[(u64, u64)], len: u64) -> io::Result<Vec<String>> {
    let bytes = |&(first, last): &(u64, u64)| ((last + 1) * BLOCK).min(len) - first * BLOCK;
    let total: u64 = blocks.iter().map(bytes).sum();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(blocks.len().max(1)) as u64;
    // Split the ranges into `threads` contiguous shares of about total/threads bytes.
    let mut shares: Vec<&[(u64, u64)]> = Vec::new();
    let (mut start, mut acc) = (0, 0u64);
    for (i, r) in blocks.iter().enumerate() {
        acc += bytes(r);
        if acc * threads >= total * (shares.len() as u64 + 1) && shares.len() + 1 < threads as usize
        {
            shares.push(&blocks[start..=i]);
            start = i + 1;
        }
    }
    shares.push(&blocks[start..]);
    let hash_share = |share: &[(u64, u64)]| -> io::Result<Vec<String>> {
        let mut buf = vec![0u8; 1 << 20];
        let mut out = Vec::with_capacity(share.len());
        for &(first, last) in share {
            let mut h = Sha256::new();
            let end = ((last + 1) * BLOCK).min(len);
            let mut pos = first * BLOCK;
            while pos < end {
                let n = ((end - pos) as usize).min(buf.len());
                f.read_exact_at(&mut buf[..n], pos)?;
                h.update(&buf[..n]);
                pos += n as u64;
            }
            out.push(hex::encode(h.finalize()));
        }
        Ok(out)
    };
    let results: Vec<io::Result<Vec<String>>> = std::thread::scope(|s| {
        let handles: Vec<_> = shares
            .iter()
            .map(|share| s.spawn(move || hash_share(share)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("a bmap hashing thread panicked")))
            })
            .collect()
    });
    let mut sums = Vec::with_capacity(blocks.len());
    for r in results {
        sums.extend(r?);
    }
    Ok(sums)
}

/// Builds the bmap XML text for the image `f`, mapping the inclusive block ranges `blocks`
/// (sorted, not overlapping).
pub fn bmap_for(f: &File, blocks: &[(u64, u64)]) -> io::Result<String> {
    let len = f.metadata()?.len();
    let blocks_count = len.div_ceil(BLOCK);
    let mapped: u64 = blocks.iter().map(|(a, b)| b - a + 1).sum();
    // Each range's sha256 is independent: hash them on every core, in contiguous shares of
    // about equal bytes, and write the lines in range order.
    let sums = range_sums(f, blocks, len)?;
    let mut ranges = String::new();
    for (&(first, last), sum) in blocks.iter().zip(sums) {
        if first == last {
            let _ = writeln!(ranges, "        <Range chksum=\"{sum}\"> {first} </Range>");
        } else {
            let _ = writeln!(
                ranges,
                "        <Range chksum=\"{sum}\"> {first}-{last} </Range>"
            );
        }
    }
    let pct = if blocks_count == 0 {
        0.0
    } else {
        mapped as f64 * 100.0 / blocks_count as f64
    };
    let zeros = "0".repeat(64);
    let text = format!(
        "<?xml version=\"1.0\" ?>\n\
<!-- Block map of a resin disk image, written by resin-imagegen: only the listed blocks\n\
     hold data; `bmaptool copy IMAGE DEVICE` writes just those and checks their sha256. -->\n\
<bmap version=\"2.0\">\n\
    <!-- Image size in bytes -->\n\
    <ImageSize> {len} </ImageSize>\n\n\
    <!-- Size of a block in bytes -->\n\
    <BlockSize> {BLOCK} </BlockSize>\n\n\
    <!-- Count of blocks in the image file -->\n\
    <BlocksCount> {blocks_count} </BlocksCount>\n\n\
    <!-- Count of mapped blocks: {pct:.1}% -->\n\
    <MappedBlocksCount> {mapped} </MappedBlocksCount>\n\n\
    <!-- Type of checksum used in this file -->\n\
    <ChecksumType> sha256 </ChecksumType>\n\n\
    <!-- The checksum of this bmap file, computed with this field set to all \"0\" -->\n\
    <BmapFileChecksum> {zeros} </BmapFileChecksum>\n\n\
    <!-- The mapped block ranges, each with the sha256 of its bytes -->\n\
    <BlockMap>\n{ranges}    </BlockMap>\n\
</bmap>\n"
    );
    let sum = hex::encode(Sha256::digest(text.as_bytes()));
    Ok(text.replacen(&zeros, &sum, 1))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parallel_range_sums_are_each_ranges_sha256_in_order() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..40 * BLOCK as usize)
            .map(|i| (i / 4096 * 31 + i) as u8)
            .collect();
        std::io::Write::write_all(&mut f, &data).unwrap();
        let blocks = [(0, 0), (2, 9), (11, 11), (13, 30), (35, 39)];
        let got = range_sums(&f, &blocks, data.len() as u64).unwrap();
        let want: Vec<String> = blocks
            .iter()
            .map(|&(a, b)| {
                hex::encode(Sha256::digest(
                    &data[(a * BLOCK) as usize..((b + 1) * BLOCK) as usize],
                ))
            })
            .collect();
        assert_eq!(got, want);
    }
}
