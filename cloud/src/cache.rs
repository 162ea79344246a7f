//! The poll path off the database: a per-device cache of the answer to
//! `GET /device/v3/{uuid}/state` (the target state's bytes and ETag, plus
//! who the device key belongs to), and batched heartbeats.
//!
//! A poll whose device is cached is answered from memory: a 304, or a 200
//! with the cached bytes, without any database read. A miss reads the
//! database, builds the target state, and caches it.
//!
//! **Invalidation.** Every write that can change a device's target state
//! calls [`changed`] after its transaction commits, naming what changed
//! ([`Change`]): one device, every device of a fleet, or everything. On
//! PostgreSQL the change is also sent to the other replicas with
//! `NOTIFY resin_events` and applied there by [`listen`]. A replica whose
//! listener connection is lost drops its whole cache (changes may have been
//! missed) and does not cache again until it listens again.
//!
//! Stale entries cannot be inserted by a poll that read the database before
//! a change: every change bumps a generation counter, and a poll caches what
//! it built only if the generation is the one it saw before its first read.
//!
//! **For writers (rollouts and anything new):** after committing a write
//! that changes what a device should run, call
//! `cache::changed(&app, Change::Fleet(fleet_id)).await` (or
//! `Change::Device(id)`, or `Change::All` when unsure). That is the only
//! call needed; it never fails (a failed NOTIFY is logged and drops the
//! local cache).
//!
//! **Heartbeats.** A poll records the device in [`Heartbeats`]; one task
//! writes `last_seen` and `is_online` every few seconds
//! ([`flush_interval`]), for the devices seen since the last flush whose
//! stored heartbeat is older than [`heartbeat_gap`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderValue;

use crate::db::{self, Dialect};
use crate::resources::{bind_all, dyn_query, Param};
use crate::AppState;

/// The PostgreSQL channel replicas tell each other on.
pub const CHANNEL: &str = "resin_events";

/// What a write changed, for invalidation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// One device (its row, env/config vars, pin, fleet, key, deletion).
    Device(i64),
    /// Every device of a fleet (fleet vars, target release, releases).
    Fleet(i64),
    /// Everything (OS releases, users, anything not scoped above).
    All,
}

impl Change {
    fn encode(self) -> String {
        match self {
            Change::Device(id) => format!("d{id}"),
            Change::Fleet(id) => format!("f{id}"),
            Change::All => "a".into(),
        }
    }
    fn decode(s: &str) -> Option<Self> {
        let (kind, rest) = s.split_at(s.len().min(1));
        match kind {
            "d" => rest.parse().ok().map(Change::Device),
            "f" => rest.parse().ok().map(Change::Fleet),
            "a" => Some(Change::All),
            _ => None,
        }
    }
}

/// One device's cached answer.
#[derive(Debug)]
pub struct Entry {
    pub id: i64,
    pub uuid: String,
    pub fleet: i64,
    /// The SHA-256 of the device key ([`crate::auth::key_digest`]).
    pub key_digest: [u8; 32],
    pub etag: HeaderValue,
    pub body: Bytes,
}

#[derive(Default)]
struct Inner {
    by_key: HashMap<[u8; 32], Arc<Entry>>,
    by_id: HashMap<i64, [u8; 32]>,
    by_fleet: HashMap<i64, HashSet<i64>>,
}

impl Inner {
    fn remove_device(&mut self, id: i64) {
        if let Some(key) = self.by_id.remove(&id) {
            if let Some(e) = self.by_key.remove(&key) {
                if let Some(set) = self.by_fleet.get_mut(&e.fleet) {
                    set.remove(&id);
                    if set.is_empty() {
                        self.by_fleet.remove(&e.fleet);
                    }
                }
            }
        }
    }
}

/// The per-device cache of target states (see the module docs).
pub struct Cache {
    inner: Mutex<Inner>,
    generation: AtomicU64,
    /// False while a PostgreSQL replica is not listening for changes.
    enabled: AtomicBool,
    /// This process, so it can skip its own notifications.
    pub replica: String,
}

impl Cache {
    /// A cache; on PostgreSQL it starts disabled until [`listen`] is listening.
    pub fn new(dialect: Dialect) -> Self {
        Self {
            inner: Mutex::default(),
            generation: AtomicU64::new(0),
            enabled: AtomicBool::new(dialect == Dialect::Sqlite),
            replica: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// The current generation: read it before the first database read of
    /// a poll and hand it to [`Cache::insert`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Whether entries are being served and stored.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
    }

    /// The entry of a device key (by its digest), if cached.
    pub fn get(&self, key_digest: &[u8; 32]) -> Option<Arc<Entry>> {
        if !self.is_enabled() {
            return None;
        }
        self.inner.lock().ok()?.by_key.get(key_digest).cloned()
    }

    /// Caches `entry` unless something changed since `generation` was read.
    pub fn insert(&self, generation: u64, entry: Arc<Entry>) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        // Checked under the lock: [`Cache::apply`] bumps the generation
        // while holding it, so no change can slip in between.
        if !self.is_enabled() || self.generation() != generation {
            return;
        }
        inner.remove_device(entry.id);
        inner.by_id.insert(entry.id, entry.key_digest);
        inner
            .by_fleet
            .entry(entry.fleet)
            .or_default()
            .insert(entry.id);
        inner.by_key.insert(entry.key_digest, entry);
    }

    /// Number of cached devices.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.by_key.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies a change locally.
    pub fn apply(&self, change: Change) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        self.generation.fetch_add(1, Ordering::SeqCst);
        match change {
            Change::Device(id) => inner.remove_device(id),
            Change::Fleet(f) => {
                for id in inner.by_fleet.get(&f).cloned().unwrap_or_default() {
                    inner.remove_device(id);
                }
            }
            Change::All => *inner = Inner::default(),
        }
    }

    fn set_enabled(&self, on: bool) {
        // Clear first, so an entry stored while disabled cannot survive.
        self.apply(Change::All);
        self.enabled.store(on, Ordering::SeqCst);
        self.apply(Change::All);
    }
}

/// Tells this replica and (on PostgreSQL) the others that `change`
/// happened. Call it after the write's transaction has committed.
pub async fn changed(app: &AppState, change: Change) {
    app.cache.apply(change);
    crate::tunnel::poll_now(app, change);
    if app.db.dialect == Dialect::Postgres {
        notify(app, &format!("c {}", change.encode())).await;
    }
}

/// Sends `payload` (prefixed with this replica's id) to the other replicas.
pub async fn notify(app: &AppState, payload: &str) {
    let msg = format!("{} {payload}", app.cache.replica);
    if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(&msg)
        .execute(&app.db.pool)
        .await
    {
        // The others may keep a stale entry: the safest we can do here is
        // to say so loudly; our own cache is already invalidated.
        tracing::error!("NOTIFY {CHANNEL} {msg}: {e}");
    }
}

/// The change that a write to row `id` of `resource` makes to target
/// states, read from the database (call it before a delete, and before or
/// after a create or patch). `None`: no device's target state depends on it.
pub async fn change_of(
    app: &AppState,
    resource: &str,
    id: i64,
) -> Result<Option<Change>, sqlx::Error> {
    let fleet_sql = match resource {
        "device" | "device_env_var" | "device_config_var" => {
            let sql = match resource {
                "device" => "SELECT id FROM device WHERE id = $1",
                "device_env_var" => "SELECT device FROM device_env_var WHERE id = $1",
                _ => "SELECT device FROM device_config_var WHERE id = $1",
            };
            return Ok(app.db.scalar_i64(sql, id).await?.map(Change::Device));
        }
        "fleet" => return Ok(Some(Change::Fleet(id))),
        "fleet_env_var" => "SELECT fleet FROM fleet_env_var WHERE id = $1",
        "fleet_config_var" => "SELECT fleet FROM fleet_config_var WHERE id = $1",
        "release" => "SELECT fleet FROM \"release\" WHERE id = $1",
        "service" | "image" => {
            if resource == "service" {
                "SELECT r.fleet FROM service s JOIN \"release\" r ON r.id = s.\"release\" WHERE s.id = $1"
            } else {
                "SELECT r.fleet FROM image i JOIN \"release\" r ON r.id = i.\"release\" WHERE i.id = $1"
            }
        }
        "service_env_var" => {
            "SELECT r.fleet FROM service_env_var v JOIN service s ON s.id = v.service \
             JOIN \"release\" r ON r.id = s.\"release\" WHERE v.id = $1"
        }
        "os_release" | "user" => return Ok(Some(Change::All)),
        // Keys, tags, logs: not in any target state.
        _ => return Ok(None),
    };
    Ok(app.db.scalar_i64(fleet_sql, id).await?.map(Change::Fleet))
}

/// Runs forever on PostgreSQL: listens on [`CHANNEL`], applies the other
/// replicas' changes and hands their log notices to [`crate::logs`]. While
/// not listening, the cache is off; whenever the connection is lost, the
/// whole cache is dropped.
pub async fn listen(app: AppState) {
    use sqlx::postgres::PgListener;
    let url = listener_url(&app.config.database_url);
    loop {
        let connected = async {
            let mut l = PgListener::connect(&url).await?;
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        }
        .await;
        let mut listener = match connected {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("listening for other replicas' changes: {e}; cache off, retrying");
                app.cache.set_enabled(false);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        app.cache.set_enabled(true);
        tracing::info!("listening on {CHANNEL}: target-state cache on");
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => handle(&app, n.payload()).await,
                Ok(None) => {
                    // Lost and already re-established (eager reconnect):
                    // whatever was sent in between is gone.
                    tracing::warn!("listener connection was lost: dropping the whole cache");
                    app.cache.apply(Change::All);
                }
                Err(e) => {
                    tracing::warn!("listener: {e}: cache off until listening again");
                    app.cache.set_enabled(false);
                    break;
                }
            }
        }
    }
}

/// The database URL with `application_name=resin-listener`, so the
/// listener's backend can be told apart (and killed in tests).
pub fn listener_url(url: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name=resin-listener")
}

async fn handle(app: &AppState, payload: &str) {
    let mut parts = payload.splitn(3, ' ');
    let (Some(from), Some(kind), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
        tracing::warn!("unknown notice on {CHANNEL}: {payload:?}");
        return;
    };
    if from == app.cache.replica {
        return;
    }
    match kind {
        "c" => match Change::decode(rest) {
            Some(c) => {
                app.cache.apply(c);
                crate::tunnel::poll_now(app, c);
            }
            None => {
                tracing::warn!("unknown change {rest:?}: dropping the whole cache");
                app.cache.apply(Change::All);
            }
        },
        "l" => crate::logs::remote_lines(app, rest).await,
        _ => tracing::warn!("unknown notice on {CHANNEL}: {payload:?}"),
    }
}

/// Devices seen polling, and the heartbeats this process has written.
///
/// A device that polls often is not written at every flush: its
/// `last_seen` is written when it is first seen, and then again once its
/// last written poll is [`heartbeat_gap`] old, with the time of its latest
/// poll. So the stored `last_seen` lags the device's last poll by at most
/// the gap plus one flush interval, which stays under the offline timeout,
/// and a fleet that polls every few seconds costs one row write per device
/// per gap, not one per flush.
#[derive(Default)]
pub struct Heartbeats {
    beats: Mutex<Beats>,
}

#[derive(Default)]
struct Beats {
    /// Device → its latest poll not yet written (unix seconds).
    pending: HashMap<i64, i64>,
    /// Device → the poll time this process last wrote for it (unix
    /// seconds); entries older than the gap are dropped (they are due).
    written: HashMap<i64, i64>,
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Heartbeats {
    /// Records that device `id` is alive now.
    pub fn seen(&self, id: i64) {
        self.seen_at(id, unix_now());
    }

    fn seen_at(&self, id: i64, t: i64) {
        if let Ok(mut b) = self.beats.lock() {
            let p = b.pending.entry(id).or_insert(t);
            *p = (*p).max(t);
        }
    }

    /// Takes the heartbeats due at `now`, grouped by poll time: a device
    /// this process never wrote, or whose written poll is `gap` seconds old
    /// or more. The others stay pending.
    fn take_due(&self, now: i64, gap: i64) -> Vec<(i64, Vec<i64>)> {
        let Ok(mut b) = self.beats.lock() else {
            return Vec::new();
        };
        let Beats { pending, written } = &mut *b;
        written.retain(|_, w| now - *w < gap);
        let mut groups: HashMap<i64, Vec<i64>> = HashMap::new();
        pending.retain(|id, t| {
            if written.contains_key(id) {
                return true;
            }
            groups.entry(*t).or_default().push(*id);
            false
        });
        for (t, ids) in &groups {
            for id in ids {
                written.insert(*id, *t);
            }
        }
        let mut groups: Vec<_> = groups.into_iter().collect();
        groups.sort_unstable();
        groups
    }

    /// Puts back heartbeats whose write failed.
    fn restore(&self, groups: &[(i64, Vec<i64>)]) {
        if let Ok(mut b) = self.beats.lock() {
            for (t, ids) in groups {
                for id in ids {
                    b.written.remove(id);
                    let p = b.pending.entry(*id).or_insert(*t);
                    *p = (*p).max(*t);
                }
            }
        }
    }
}

/// How often heartbeats are written: every 10 s, or a quarter of the
/// offline timeout when that is shorter (at least 1 s).
pub fn flush_interval(offline_after_secs: u64) -> Duration {
    Duration::from_secs((offline_after_secs / 4).clamp(1, 10))
}

/// How long a device's written heartbeat stands before the next one is
/// written: a third of the offline timeout, at most 60 s (at least 1 s).
/// With the flush interval (a quarter at most) it stays under the timeout.
pub fn heartbeat_gap(offline_after_secs: u64) -> Duration {
    Duration::from_secs((offline_after_secs / 3).clamp(1, 60))
}

/// Writes the heartbeats that are due ([`Heartbeats`]): `last_seen` (the
/// device's latest poll) and `is_online`, in statements of up to 500
/// devices, in one transaction. Returns the devices written.
pub async fn flush_heartbeats(app: &AppState) -> Result<usize, sqlx::Error> {
    let gap = i64::try_from(heartbeat_gap(app.config.offline_after_secs).as_secs()).unwrap_or(60);
    let groups = app.heartbeats.take_due(unix_now(), gap);
    if groups.is_empty() {
        return Ok(0);
    }
    let res = async {
        let mut tx = app.db.begin_write().await?;
        for (t, ids) in &groups {
            let at = time::OffsetDateTime::from_unix_timestamp(*t)
                .map(db::format_ts)
                .unwrap_or_else(|_| db::now());
            for chunk in ids.chunks(500) {
                let marks: Vec<String> = (2..chunk.len() + 2).map(|i| format!("${i}")).collect();
                let sql = format!(
                    "UPDATE device SET last_seen = $1, is_online = TRUE WHERE id IN ({})",
                    marks.join(", ")
                );
                let mut params = vec![Param::Text(Some(at.clone()))];
                params.extend(chunk.iter().map(|id| Param::Int(Some(*id))));
                bind_all(dyn_query(sql), &params).execute(&mut *tx).await?;
            }
        }
        tx.commit().await
    }
    .await;
    if let Err(e) = res {
        // Keep them for the next flush.
        app.heartbeats.restore(&groups);
        return Err(e);
    }
    Ok(groups.iter().map(|(_, ids)| ids.len()).sum())
}

/// Runs forever: flushes heartbeats every [`flush_interval`].
pub async fn heartbeat_flusher(app: AppState) {
    let every = flush_interval(app.config.offline_after_secs);
    loop {
        tokio::time::sleep(every).await;
        match flush_heartbeats(&app).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(devices = n, "heartbeats written"),
            Err(e) => tracing::warn!("writing heartbeats: {e}"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(id: i64, fleet: i64) -> Arc<Entry> {
        Arc::new(Entry {
            id,
            uuid: format!("u{id}"),
            fleet,
            key_digest: [u8::try_from(id).unwrap(); 32],
            etag: HeaderValue::from_static("\"e\""),
            body: Bytes::from_static(b"{}"),
        })
    }

    #[test]
    fn changes_drop_what_they_name_and_stale_inserts_are_refused() {
        let c = Cache::new(Dialect::Sqlite);
        for (id, fleet) in [(1, 10), (2, 10), (3, 20)] {
            c.insert(c.generation(), entry(id, fleet));
        }
        assert_eq!(c.len(), 3);
        c.apply(Change::Device(3));
        assert!(c.get(&[3; 32]).is_none());
        c.apply(Change::Fleet(10));
        assert!(c.is_empty());
        // A poll that read before a change may not cache what it read.
        let g = c.generation();
        c.apply(Change::Fleet(99));
        c.insert(g, entry(1, 10));
        assert!(c.get(&[1; 32]).is_none());
        c.insert(c.generation(), entry(1, 10));
        assert_eq!(c.get(&[1; 32]).unwrap().uuid, "u1");
        c.apply(Change::All);
        assert!(c.is_empty());
        // Off (a PostgreSQL replica not listening): nothing is stored.
        let pg = Cache::new(Dialect::Postgres);
        pg.insert(pg.generation(), entry(1, 10));
        assert!(pg.get(&[1; 32]).is_none());
    }

    #[test]
    fn a_device_that_polls_often_is_written_once_a_gap_with_its_latest_poll() {
        let h = Heartbeats::default();
        h.seen_at(1, 100);
        h.seen_at(2, 101);
        h.seen_at(1, 102);
        // Never written: both due, each with its latest poll.
        assert_eq!(h.take_due(105, 60), vec![(101, vec![2]), (102, vec![1])]);
        // Polling again within the gap: nothing is written yet.
        for t in [110, 130, 150] {
            h.seen_at(1, t);
        }
        assert!(h.take_due(155, 60).is_empty());
        // Once the written poll (102) is a gap old, the latest poll (150) goes.
        assert_eq!(h.take_due(162, 60), vec![(150, vec![1])]);
        // A device that stopped polling has nothing pending.
        assert!(h.take_due(400, 60).is_empty());
        // A failed write is put back and is due at once.
        h.seen_at(3, 500);
        let g = h.take_due(500, 60);
        h.restore(&g);
        assert_eq!(h.take_due(501, 60), vec![(500, vec![3])]);
        // A gap always leaves room for a flush within the offline timeout.
        for off in [4, 30, 180, 600, 3600] {
            assert!(heartbeat_gap(off) + flush_interval(off) < Duration::from_secs(off));
        }
    }

    #[test]
    fn changes_round_trip() {
        for c in [Change::Device(7), Change::Fleet(9), Change::All] {
            assert_eq!(Change::decode(&c.encode()), Some(c));
        }
        assert_eq!(Change::decode("x1"), None);
        assert_eq!(Change::decode(""), None);
    }
}
