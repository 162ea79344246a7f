//! Giving memory back after big responses.
//!
//! glibc's malloc keeps freed memory for reuse: after an answer of tens of MB
//! (a page of the maximum size with `$expand`), the process's resident set
//! stayed tens of MB above where it was (tests/memory.rs measures it), and
//! with many threads, many arenas keep their share. A big response body is
//! marked here; when the server has dropped it (sent, or its client gone),
//! a background task asks glibc to hand free memory back (`malloc_trim`),
//! off the async threads, at most once a second.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;

/// A response body this big or bigger asks for a trim once dropped.
pub const BIG: usize = 4 << 20;

static PENDING: AtomicBool = AtomicBool::new(false);

/// The body of a response; a big one asks for a trim when dropped.
pub fn body(bytes: Vec<u8>) -> Body {
    if bytes.len() < BIG {
        return Body::from(bytes);
    }
    Body::from(Bytes::from_owner(Big(bytes)))
}

struct Big(Vec<u8>);

impl AsRef<[u8]> for Big {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Big {
    fn drop(&mut self) {
        // The buffer itself is freed right after this; the trimmer runs
        // later.
        PENDING.store(true, Ordering::Relaxed);
    }
}

/// Runs for the life of the server: trims after big responses.
pub async fn trimmer() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if PENDING.swap(false, Ordering::Relaxed) {
            let t = std::time::Instant::now();
            let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
            tracing::debug!(released, took = ?t.elapsed(), "malloc_trim after a big response");
        }
    }
}

/// Hands free heap memory of every arena back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() -> bool {
    // SAFETY: malloc_trim takes no pointer and only walks glibc's own
    // arenas, under their locks; any thread may call it at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other C libraries (musl) have no malloc_trim; their allocators differ.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}
