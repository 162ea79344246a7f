//! The log forwarder: follows the logs of every managed container and sends
//! them in batches of NDJSON (gzip) to the log-stream endpoint. The buffer
//! is bounded: while the cloud is away the oldest lines drop, and the count
//! of dropped lines goes out as a system line once the cloud is back.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use futures_util::StreamExt;
use resin_api_types::LogLine;
use tokio::sync::watch;

use crate::cloud::Cloud;
use crate::engine::Engine;
use crate::planner::{CurrentState, RunState};

/// Lines per POST at most.
pub const BATCH_LINES: usize = 500;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Splits a line of `docker logs --timestamps` into its time (ms since the
/// epoch) and the message. A line without a readable stamp keeps all its
/// text and gets `fallback_ms`.
pub fn split_timestamp(line: &str, fallback_ms: i64) -> (i64, &str) {
    if let Some((stamp, rest)) = line.split_once(' ') {
        if let Ok(t) =
            time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
        {
            return ((t.unix_timestamp_nanos() / 1_000_000) as i64, rest);
        }
    }
    (fallback_ms, line)
}

/// What a follower has read, so that a re-attach skips the lines it has.
#[derive(Debug, Default)]
struct Seen {
    /// The engine time (ns) of the last line taken.
    last_ns: Option<i128>,
    /// Set by a re-attach until the first line newer than `last_ns`.
    resumed: bool,
}

impl Seen {
    /// Whether to take a line with this engine time. Within one stream every
    /// line is taken (a burst shares its timestamps); after a re-attach the
    /// lines at or before the last one taken are repeats.
    fn take(&mut self, ns: Option<i128>) -> bool {
        if self.resumed {
            if let (Some(n), Some(last)) = (ns, self.last_ns) {
                if n <= last {
                    return false;
                }
            }
            self.resumed = false;
        }
        if ns.is_some() {
            self.last_ns = ns;
        }
        true
    }

    /// Marks a re-attach; returns the `since` (s) to attach from, the second
    /// of the last line taken, if any was.
    fn resume(&mut self) -> Option<i32> {
        let last = self.last_ns?;
        self.resumed = true;
        i32::try_from(last.div_euclid(1_000_000_000)).ok()
    }
}

/// The engine time of a `--timestamps` line, in ns since the epoch.
fn engine_nanos(line: &str) -> Option<i128> {
    let (stamp, _) = line.split_once(' ')?;
    time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp_nanos())
}

/// A bounded FIFO of log lines that drops the oldest when full.
#[derive(Debug)]
pub struct LogBuffer {
    /// (sequence number, line)
    lines: VecDeque<(u64, LogLine)>,
    next_seq: u64,
    cap: usize,
    dropped: u64,
}

/// A batch taken from the buffer; [`LogBuffer::ack`] it once sent.
#[derive(Debug, Clone)]
pub struct Batch {
    pub lines: Vec<LogLine>,
    /// The drop count the leading system line reported (0: none).
    reported_drops: u64,
    /// Sequence number of the last buffered line in the batch.
    last_seq: Option<u64>,
}

impl LogBuffer {
    pub fn new(cap: usize) -> Self {
        Self {
            lines: VecDeque::new(),
            next_seq: 0,
            cap: cap.max(1),
            dropped: 0,
        }
    }

    pub fn push(&mut self, line: LogLine) {
        if self.lines.len() >= self.cap {
            self.lines.pop_front();
            self.dropped += 1;
        }
        self.lines.push_back((self.next_seq, line));
        self.next_seq += 1;
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Lines dropped and not yet reported.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The next batch to send (not removed until [`LogBuffer::ack`]),
    /// led by a system line counting the dropped lines, if any.
    pub fn batch(&self, max: usize) -> Batch {
        let mut lines = Vec::new();
        if self.dropped > 0 {
            lines.push(LogLine {
                timestamp: now_ms(),
                service: None,
                message: format!(
                    "resin-supervisor dropped {} log lines while the cloud was unreachable",
                    self.dropped
                ),
                is_stderr: false,
                is_system: true,
            });
        }
        let taken: Vec<&(u64, LogLine)> = self.lines.iter().take(max).collect();
        lines.extend(taken.iter().map(|(_, l)| l.clone()));
        Batch {
            lines,
            reported_drops: self.dropped,
            last_seq: taken.last().map(|(s, _)| *s),
        }
    }

    /// The batch arrived: forget its lines (those still buffered; lines
    /// dropped meanwhile are gone anyway) and the drops it reported.
    pub fn ack(&mut self, batch: &Batch) {
        self.dropped = self.dropped.saturating_sub(batch.reported_drops);
        if let Some(last) = batch.last_seq {
            while self.lines.front().is_some_and(|(s, _)| *s <= last) {
                self.lines.pop_front();
            }
        }
    }
}

/// Follows one container for as long as it runs. A log stream can end while
/// the container still runs (an engine error, a dropped connection on a
/// loaded device); the follower then attaches again from the second of the
/// last line it read and skips the lines it already has, so a service's
/// logs never stop reaching the cloud while the service is up.
async fn follow(
    engine: Engine,
    id: String,
    service: String,
    since: i32,
    buf: Arc<Mutex<LogBuffer>>,
) {
    let mut since = since;
    let mut seen = Seen::default();
    loop {
        let opts = LogsOptionsBuilder::default()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .since(since)
            // The engine's own times: lines written before the follower
            // attached (a new container's first lines) keep when they were
            // written, not when they were read.
            .timestamps(true)
            .build();
        let mut stream = engine.docker().logs(&id, Some(opts));
        let mut error = None;
        while let Some(item) = stream.next().await {
            let out = match item {
                Ok(out) => out,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            };
            let (bytes, is_stderr) = match out {
                LogOutput::StdErr { message } => (message, true),
                LogOutput::StdOut { message } | LogOutput::Console { message } => (message, false),
                LogOutput::StdIn { .. } => continue,
            };
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(mut b) = buf.lock() {
                for l in text.lines() {
                    if !seen.take(engine_nanos(l)) {
                        continue;
                    }
                    let (timestamp, message) = split_timestamp(l, now_ms());
                    b.push(LogLine {
                        timestamp,
                        service: Some(service.clone()),
                        message: message.to_owned(),
                        is_stderr,
                        is_system: false,
                    });
                }
            }
        }
        let running = match engine.docker().inspect_container(&id, None).await {
            Ok(c) => c.state.and_then(|s| s.running).unwrap_or(false),
            Err(_) => false,
        };
        if !running {
            tracing::debug!(service = %service, container = %id, "log stream ended with the container");
            return;
        }
        match &error {
            Some(e) => {
                tracing::warn!(service = %service, container = %id, error = %e, "log stream failed while the container runs; attaching again")
            }
            None => {
                tracing::warn!(service = %service, container = %id, "log stream ended while the container runs; attaching again")
            }
        }
        if let Some(s) = seen.resume() {
            since = s;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Pushes a system line (the supervisor's own events).
pub fn system_line(buf: &Arc<Mutex<LogBuffer>>, message: String) {
    if let Ok(mut b) = buf.lock() {
        b.push(LogLine {
            timestamp: now_ms(),
            service: None,
            message,
            is_stderr: false,
            is_system: true,
        });
    }
}

/// Runs the forwarder: one follower per running managed container (from
/// `current`), and a sender that flushes every `flush` or when a batch fills.
pub async fn run(
    engine: Engine,
    cloud: Cloud,
    uuid: String,
    key: String,
    buf: Arc<Mutex<LogBuffer>>,
    mut current: watch::Receiver<CurrentState>,
    flush: Duration,
) {
    let mut followers: BTreeMap<String, tokio::task::JoinHandle<()>> = BTreeMap::new();
    let start = (now_ms() / 1000) as i32;
    let mut tick = tokio::time::interval(flush);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = current.changed() => {
                if changed.is_err() { return; }
                let cur = current.borrow_and_update().clone();
                followers.retain(|_, h| !h.is_finished());
                for c in cur.containers.iter().filter(|c| c.managed && c.state == RunState::Running) {
                    if !followers.contains_key(&c.id) {
                        let since = if c.created > i64::from(start) { 0 } else { start };
                        let h = tokio::spawn(follow(engine.clone(), c.id.clone(), c.service.clone(), since, buf.clone()));
                        followers.insert(c.id.clone(), h);
                    }
                }
            }
            _ = tick.tick() => {
                let batch = match buf.lock() {
                    Ok(b) if !b.is_empty() || b.dropped() > 0 => b.batch(BATCH_LINES),
                    _ => continue,
                };
                let (c, u, k, lines) = (cloud.clone(), uuid.clone(), key.clone(), batch.lines.clone());
                match tokio::task::spawn_blocking(move || c.logs(&u, &k, &lines)).await {
                    Ok(Ok(())) => {
                        if let Ok(mut b) = buf.lock() { b.ack(&batch); }
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "log batch not sent; kept"),
                    Err(e) => tracing::warn!(error = %e, "log sender task failed"),
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_reattach_skips_what_was_read_and_keeps_bursts() {
        let mut seen = Seen::default();
        assert_eq!(seen.resume(), None, "nothing read: attach as before");
        // A burst within one stream shares its timestamp: every line is kept.
        assert!(seen.take(Some(5_000_000_100)));
        assert!(seen.take(Some(5_000_000_100)));
        assert!(seen.take(Some(6_500_000_000)));
        // Re-attach from the second of the last line: 6 s.
        assert_eq!(seen.resume(), Some(6));
        assert!(!seen.take(Some(6_000_000_000)), "read before");
        assert!(!seen.take(Some(6_500_000_000)), "the last line read");
        assert!(seen.take(Some(6_500_000_001)), "new");
        assert!(
            seen.take(Some(6_500_000_001)),
            "a burst after the re-attach"
        );
        assert!(seen.take(None), "a line without a time is kept");
    }

    #[test]
    fn engine_nanos_reads_docker_timestamps() {
        assert_eq!(
            engine_nanos("2026-12-01T17:18:24.000000123Z hello"),
            Some(1_796_145_504_000_000_123)
        );
        assert_eq!(engine_nanos("no stamp here"), None);
    }

    #[test]
    fn engine_timestamps_become_the_line_time() {
        assert_eq!(
            split_timestamp("2026-11-26T08:48:02.123456789Z heartbeat 1 v2", 7),
            (1_795_682_882_123, "heartbeat 1 v2")
        );
        assert_eq!(
            split_timestamp("2026-11-26T08:48:02Z  two spaces", 7),
            (1_795_682_882_000, " two spaces")
        );
        // No stamp: the text stays whole, with the fallback time.
        assert_eq!(split_timestamp("plain line", 7), (7, "plain line"));
        assert_eq!(split_timestamp("", 7), (7, ""));
    }

    fn line(m: &str) -> LogLine {
        LogLine {
            timestamp: 1,
            service: Some("s".into()),
            message: m.into(),
            is_stderr: false,
            is_system: false,
        }
    }

    #[test]
    fn full_buffer_drops_oldest_and_reports_the_count_once() {
        let mut b = LogBuffer::new(3);
        for i in 0..5 {
            b.push(line(&i.to_string()));
        }
        assert_eq!(b.dropped(), 2);
        let batch = b.batch(10);
        let l = &batch.lines;
        assert!(l[0].is_system && l[0].message.contains("dropped 2 log lines"));
        let msgs: Vec<&str> = l[1..].iter().map(|l| l.message.as_str()).collect();
        assert_eq!(msgs, ["2", "3", "4"]);
        b.ack(&batch);
        assert!(b.is_empty());
        assert_eq!(b.dropped(), 0);
        assert!(b.batch(10).lines.is_empty());
    }

    #[test]
    fn unsent_batch_stays_and_partial_ack_keeps_the_rest() {
        let mut b = LogBuffer::new(10);
        for i in 0..4 {
            b.push(line(&i.to_string()));
        }
        let batch = b.batch(2);
        assert_eq!(batch.lines.len(), 2);
        b.ack(&batch);
        assert_eq!(b.len(), 2);
        assert_eq!(b.batch(10).lines[0].message, "2");
    }

    #[test]
    fn lines_dropped_while_a_batch_is_in_flight_are_not_lost_twice() {
        let mut b = LogBuffer::new(3);
        for i in 0..3 {
            b.push(line(&i.to_string()));
        }
        let batch = b.batch(2); // lines 0 and 1 in flight
        for i in 3..5 {
            b.push(line(&i.to_string())); // drops 0 and 1
        }
        b.ack(&batch);
        // Lines evicted while in flight count as dropped even though the
        // send then succeeded: an overcount, never a loss without a count.
        let msgs: Vec<String> = b
            .batch(10)
            .lines
            .iter()
            .map(|l| l.message.clone())
            .collect();
        assert_eq!(msgs.len(), 4, "{msgs:?}"); // the drop line, then 2, 3, 4
        assert!(msgs[0].contains("dropped 2"));
        assert_eq!(&msgs[1..], ["2", "3", "4"]);
    }
}
