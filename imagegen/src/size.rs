//! Human-readable byte sizes (`100MiB`, `4 MiB`, `1G`, `65536`) for layout fields.

use std::fmt;

/// A size in bytes, parsed from a string with an optional binary unit suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Size(pub u64);

/// Why a size string could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a size (use e.g. 512, 64KiB, 100MiB, 2GiB)")]
pub struct SizeError(pub String);

impl Size {
    /// Parses `N`, `NKiB`/`NK`, `NMiB`/`NM`, `NGiB`/`NG`, `NTiB`/`NT` (binary units; whitespace allowed).
    pub fn parse(s: &str) -> Result<Self, SizeError> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| SizeError(s.to_string()))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            _ => return Err(SizeError(s.to_string())),
        };
        n.checked_mul(mult)
            .map(Size)
            .ok_or_else(|| SizeError(s.to_string()))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            if v >= (1 << shift) && v.is_multiple_of(1 << shift) {
                return write!(f, "{}{}", v >> shift, unit);
            }
        }
        write!(f, "{v}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_rejects_garbage() {
        assert_eq!(Size::parse("100MiB").unwrap().0, 100 << 20);
        assert_eq!(Size::parse("4 MiB").unwrap().0, 4 << 20);
        assert_eq!(Size::parse("2G").unwrap().0, 2 << 30);
        assert_eq!(Size::parse("512").unwrap().0, 512);
        assert!(Size::parse("lots").is_err());
        assert!(Size::parse("1XB").is_err());
        assert_eq!(Size(64 << 10).to_string(), "64KiB");
    }
}
