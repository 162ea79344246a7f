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

/// Builds the bmap XML text for the image `f`, mapping the inclusive block ranges `blocks`
/// (sorted, not overlapping).
pub fn bmap_for(f: &File, blocks: &[(u64, u64)]) -> io::Result<String> {
    let len = f.metadata()?.len();
    let blocks_count = len.div_ceil(BLOCK);
    let mapped: u64 = blocks.iter().map(|(a, b)| b - a + 1).sum();
    let mut ranges = String::new();
    let mut buf = vec![0u8; 1 << 20];
    for &(first, last) in blocks {
        let mut h = Sha256::new();
        let start = first * BLOCK;
        let end = ((last + 1) * BLOCK).min(len);
        let mut pos = start;
        while pos < end {
            let n = ((end - pos) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], pos)?;
            h.update(&buf[..n]);
            pos += n as u64;
        }
        let sum = hex::encode(h.finalize());
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
