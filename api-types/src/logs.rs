//! Log lines: `POST /device/v2/{uuid}/log-stream` takes NDJSON, one
//! [`LogLine`] per line, optionally `Content-Encoding: gzip`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// Service name; `None` for system lines from the supervisor itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub message: String,
    #[serde(default)]
    pub is_stderr: bool,
    /// True for lines the supervisor writes about the device (e.g. how many
    /// lines it dropped while the cloud was away).
    #[serde(default)]
    pub is_system: bool,
}

/// Error from [`parse_ndjson`], naming the line.
#[derive(Debug, thiserror::Error)]
#[error("log line {line}: {source}")]
pub struct NdjsonError {
    pub line: usize,
    #[source]
    pub source: serde_json::Error,
}

/// Parses an NDJSON body; blank lines are skipped. Fails on the first bad
/// line, naming it (1-based), so nothing is stored from a bad batch.
pub fn parse_ndjson(body: &str) -> Result<Vec<LogLine>, NdjsonError> {
    body.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|source| NdjsonError {
                line: i + 1,
                source,
            })
        })
        .collect()
}

/// Serialises lines as NDJSON (each followed by `\n`).
pub fn to_ndjson(lines: &[LogLine]) -> String {
    let mut out = String::new();
    for l in lines {
        // A LogLine has only strings, ints and bools: serialising cannot fail.
        if let Ok(s) = serde_json::to_string(l) {
            out.push_str(&s);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_round_trip_and_bad_line_is_named() {
        let lines = vec![LogLine {
            timestamp: 1,
            service: Some("web".into()),
            message: "héllo\n\"x\"".into(),
            is_stderr: true,
            is_system: false,
        }];
        let body = to_ndjson(&lines);
        assert!(body.contains("\"isStderr\":true"));
        assert_eq!(parse_ndjson(&body).unwrap(), lines);
        let err = parse_ndjson(&format!("{body}\n{{nope")).unwrap_err();
        assert_eq!(err.line, 3);
    }
}
