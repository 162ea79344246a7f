//! U-Boot environment images in `mkenvimage`'s format: a CRC-32 of the data area, for a
//! redundant environment a flag byte, then `name=value\0` entries ending in an empty one,
//! padded to the environment size. U-Boot (CONFIG_ENV_REDUNDANT) and libubootenv's
//! `fw_printenv`/`fw_setenv` read the copy whose CRC holds, the one with the newer flag when
//! both do.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Why an environment could not be made.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("line {line} of the rendered environment is not NAME=VALUE: `{text}`")]
    Line { line: usize, text: String },
    #[error("the environment needs {need} bytes but env-size leaves {have} for entries")]
    TooLarge { need: usize, have: usize },
}

/// Bytes before the data area: the CRC, plus the flag byte when redundant.
pub fn header_len(redundant: bool) -> usize {
    if redundant {
        5
    } else {
        4
    }
}

/// One environment copy of `size` bytes from `NAME=VALUE` lines (empty lines and lines starting
/// with `#` are skipped, as mkenvimage does). The padding is zeros (mkenvimage `-p 0`).
pub fn env_image(text: &str, size: usize, redundant: bool, flag: u8) -> Result<Vec<u8>, EnvError> {
    let head = header_len(redundant);
    let mut data = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !line.contains('=') || line.starts_with('=') {
            return Err(EnvError::Line {
                line: i + 1,
                text: line.to_string(),
            });
        }
        data.extend_from_slice(line.as_bytes());
        data.push(0);
    }
    data.push(0);
    let have = size.saturating_sub(head);
    if data.len() > have {
        return Err(EnvError::TooLarge {
            need: data.len(),
            have,
        });
    }
    data.resize(have, 0);
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&crc32(&data).to_le_bytes());
    if redundant {
        out.push(flag);
    }
    out.extend_from_slice(&data);
    Ok(out)
}

/// How many of the environment's copies at `offset` (one, or two for a redundant one, each
/// `size` bytes) have a valid CRC.
pub fn valid_copies(f: &File, offset: u64, size: u64, redundant: bool) -> std::io::Result<usize> {
    let head = header_len(redundant);
    let mut n = 0;
    for i in 0..if redundant { 2 } else { 1 } {
        let mut buf = vec![0u8; size as usize];
        f.read_exact_at(&mut buf, offset + i * size)?;
        let want = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if crc32(&buf[head..]) == want {
            n += 1;
        }
    }
    Ok(n)
}

/// CRC-32 (IEEE 802.3, reflected, as zlib's crc32 that U-Boot uses).
pub fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc ^ 0xFFFF_FFFF
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn entries_are_nul_separated_after_crc_and_flag() {
        let e = env_image("A=1\n\n# c\nB=x y\n", 64, true, 1).unwrap();
        assert_eq!(e.len(), 64);
        assert_eq!(e[4], 1);
        assert_eq!(&e[5..5 + 10], b"A=1\0B=x y\0");
        assert_eq!(e[15], 0);
        assert_eq!(u32::from_le_bytes([e[0], e[1], e[2], e[3]]), crc32(&e[5..]));
    }

    #[test]
    fn bad_lines_and_overflow_are_refused() {
        assert!(matches!(
            env_image("nonsense\n", 64, true, 1),
            Err(EnvError::Line { line: 1, .. })
        ));
        assert!(matches!(
            env_image(&"A=xxxxxxxxxx\n".repeat(10), 64, false, 0),
            Err(EnvError::TooLarge { .. })
        ));
    }
}
