//! Small helpers: deterministic UUIDs, SOURCE_DATE_EPOCH, progress bars.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

/// A UUID derived from `seed` and `what` (same inputs, same UUID).
pub fn derived_uuid(seed: &[u8], what: &str) -> uuid::Uuid {
    let mut h = Sha256::new();
    h.update(seed);
    h.update([0]);
    h.update(what.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid()
}

/// `SOURCE_DATE_EPOCH` if set and valid.
pub fn source_date_epoch() -> Option<i64> {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
}

/// A byte progress bar on stderr, hidden when stderr is not a terminal.
pub fn progress(len: u64, msg: &str) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let pb = ProgressBar::with_draw_target(Some(len), target);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(msg.to_string());
    pb
}

/// Gives a finished output file the usual 0644 mode (temp files start as 0600).
pub fn make_readable(f: &std::fs::File) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o644))
}

/// An error and its sources (outermost first) as one line, "a: b: c", leaving out a source
/// whose text the line already holds: many errors print their source in their own message,
/// and it should be said once.
pub fn error_line(messages: impl IntoIterator<Item = String>) -> String {
    let mut line = String::new();
    for m in messages {
        let m = m.trim();
        if m.is_empty() || line.contains(m) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(m);
    }
    line
}

#[cfg(test)]
mod error_line_tests {
    use super::error_line;

    #[test]
    fn each_cause_is_said_once() {
        let chain = [
            "configuring disk.img".to_string(),
            "I/O error on the image: failed to fill whole buffer".to_string(),
            "failed to fill whole buffer".to_string(),
        ];
        assert_eq!(
            error_line(chain),
            "configuring disk.img: I/O error on the image: failed to fill whole buffer"
        );
        assert_eq!(error_line(["a".to_string(), "b".to_string()]), "a: b");
    }
}
