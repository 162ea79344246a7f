//! `--since` of `resin logs`: an RFC 3339 time, or an age such as `30s`,
//! `10m`, `2h`, `1d` counted back from now. Both become Unix milliseconds,
//! the unit of log line timestamps.

/// Unix milliseconds of `s`, given the current time `now_ms`.
pub fn parse_since(s: &str, now_ms: i64) -> Result<i64, String> {
    let s = s.trim();
    let bad = || {
        format!(
            "--since {s:?}: give an RFC 3339 time (2026-01-31T12:00:00Z) or an age like 30s, 10m, 2h, 1d"
        )
    };
    if let Some(unit) = s.chars().last().filter(|c| c.is_ascii_alphabetic()) {
        let num = &s[..s.len() - 1];
        if !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit()) {
            let n: i64 = num.parse().map_err(|_| bad())?;
            let per = match unit {
                's' => 1_000,
                'm' => 60_000,
                'h' => 3_600_000,
                'd' => 86_400_000,
                _ => return Err(bad()),
            };
            return n
                .checked_mul(per)
                .map(|d| now_ms.saturating_sub(d))
                .ok_or_else(bad);
        }
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| bad())?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| bad())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn ages_count_back_from_now() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_since("30s", now).unwrap(), now - 30_000);
        assert_eq!(parse_since("10m", now).unwrap(), now - 600_000);
        assert_eq!(parse_since("2h", now).unwrap(), now - 7_200_000);
        assert_eq!(parse_since("1d", now).unwrap(), now - 86_400_000);
    }

    #[test]
    fn rfc3339_times_are_absolute() {
        assert_eq!(
            parse_since("2023-11-14T22:13:20Z", 0).unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_since("2023-11-14T23:13:20+01:00", 0).unwrap(),
            1_700_000_000_000
        );
    }

    #[test]
    fn nonsense_is_refused_with_the_accepted_forms() {
        for s in [
            "",
            "yesterday",
            "10x",
            "m",
            "99999999999999999999d",
            "2023-11-14",
        ] {
            let e = parse_since(s, 0).unwrap_err();
            assert!(e.contains("30s, 10m"), "{s:?}: {e}");
        }
    }
}
