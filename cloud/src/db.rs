//! The database: one `sqlx::AnyPool` over SQLite or PostgreSQL, the shared
//! migrations, and small helpers (timestamps, dialect).

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::any::AnyPoolOptions;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{AnyPool, Executor, Row};

use crate::resources::{bind_all, dyn_query, Param};

/// Which database the pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug)]
pub struct Db {
    pub pool: AnyPool,
    pub dialect: Dialect,
    /// SQLite only: read-only connections for `/v1` reads, native so that a
    /// progress handler can stop a statement (timeout, client gone).
    sqlite_read: Option<SqlitePool>,
    /// The name prefix of those connections' worker threads (`sqlr<N>-`).
    sqlite_read_threads: Option<String>,
}

/// Numbers the SQLite read pools, so their worker threads have names of
/// their own (`sqlr<N>-<conn>`, within Linux's 15 characters).
static READ_POOLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Why a bounded read ([`Db::read_texts`]) failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The statement ran longer than the timeout and was stopped.
    #[error("the query ran longer than {} ms and was stopped", .0.as_millis())]
    Timeout(Duration),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("creating {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("migration {version}: {source}")]
    Migrate { version: i64, source: sqlx::Error },
}

/// The migrations, in order: (version, SQLite text, PostgreSQL text). Most
/// are shared, where `{{ID}}` is the only per-database difference; a change
/// SQLite cannot make in place (dropping a constraint) has a file per database.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        include_str!("../migrations/0001_init.sql"),
        include_str!("../migrations/0001_init.sql"),
    ),
    (
        2,
        include_str!("../migrations/0002_device_apps.sql"),
        include_str!("../migrations/0002_device_apps.sql"),
    ),
    (
        3,
        include_str!("../migrations/0003_os_release_per_owner.sqlite.sql"),
        include_str!("../migrations/0003_os_release_per_owner.postgres.sql"),
    ),
    (
        4,
        include_str!("../migrations/0004_rollouts.sql"),
        include_str!("../migrations/0004_rollouts.sql"),
    ),
    (
        5,
        include_str!("../migrations/0005_roles_and_key_scopes.sql"),
        include_str!("../migrations/0005_roles_and_key_scopes.sql"),
    ),
    (
        6,
        include_str!("../migrations/0006_builder.sql"),
        include_str!("../migrations/0006_builder.sql"),
    ),
    (
        7,
        include_str!("../migrations/0007_dashboard.sql"),
        include_str!("../migrations/0007_dashboard.sql"),
    ),
    (
        8,
        include_str!("../migrations/0008_tunnel.sql"),
        include_str!("../migrations/0008_tunnel.sql"),
    ),
    (
        9,
        include_str!("../migrations/0009_device_actions.sql"),
        include_str!("../migrations/0009_device_actions.sql"),
    ),
    (
        10,
        include_str!("../migrations/0010_build_lease.sql"),
        include_str!("../migrations/0010_build_lease.sql"),
    ),
    (
        11,
        include_str!("../migrations/0011_os_update_history.sql"),
        include_str!("../migrations/0011_os_update_history.sql"),
    ),
    (
        12,
        include_str!("../migrations/0012_rollout_device_fillfactor.sqlite.sql"),
        include_str!("../migrations/0012_rollout_device_fillfactor.postgres.sql"),
    ),
    (
        13,
        include_str!("../migrations/0013_tunnel_replicas.sql"),
        include_str!("../migrations/0013_tunnel_replicas.sql"),
    ),
    (
        14,
        include_str!("../migrations/0014_device_fleet_name.sql"),
        include_str!("../migrations/0014_device_fleet_name.sql"),
    ),
    (
        15,
        include_str!("../migrations/0015_tunnel_ticket.sql"),
        include_str!("../migrations/0015_tunnel_ticket.sql"),
    ),
    (
        16,
        include_str!("../migrations/0016_saved_view.sql"),
        include_str!("../migrations/0016_saved_view.sql"),
    ),
    (
        17,
        include_str!("../migrations/0017_device_fillfactor.sqlite.sql"),
        include_str!("../migrations/0017_device_fillfactor.postgres.sql"),
    ),
];

impl Db {
    /// Connects, sets SQLite's pragmas (WAL, busy timeout, foreign keys) and
    /// applies the migrations that are missing.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("postgres") {
            Dialect::Postgres
        } else {
            Dialect::Sqlite
        };
        let mut url = url.to_owned();
        if dialect == Dialect::Sqlite {
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:")
                .split('?')
                .next()
                .unwrap_or_default()
                .to_owned();
            if let Some(parent) = Path::new(&path).parent() {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(parent).map_err(|source| DbError::Dir {
                        path: parent.display().to_string(),
                        source,
                    })?;
                }
            }
            if !url.contains("mode=") {
                url.push_str(if url.contains('?') {
                    "&mode=rwc"
                } else {
                    "?mode=rwc"
                });
            }
        }
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            // sqlx pings every connection it hands out by default: one more
            // round trip per statement (to PostgreSQL, or to the SQLite
            // connection's worker thread), measured as most of a state
            // PATCH's cost. A connection that broke meanwhile fails its
            // statement instead, and the pool drops it.
            .test_before_acquire(false)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|source| DbError::Connect {
                url: redact(&url),
                source,
            })?;
        let mut db = Db {
            pool,
            dialect,
            sqlite_read: None,
            sqlite_read_threads: None,
        };
        db.migrate().await?;
        if dialect == Dialect::Sqlite {
            // After the migrations, so the file and its WAL exist.
            let opts = SqliteConnectOptions::from_str(&url)
                .map_err(|source| DbError::Connect {
                    url: redact(&url),
                    source,
                })?
                .read_only(true)
                .busy_timeout(Duration::from_secs(10));
            let prefix = format!("sqlr{}-", READ_POOLS.fetch_add(1, Ordering::Relaxed));
            let names = prefix.clone();
            let opts = opts.thread_name(move |id| format!("{names}{id}"));
            let read = SqlitePoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(30))
                .test_before_acquire(false)
                .connect_with(opts)
                .await
                .map_err(|source| DbError::Connect {
                    url: redact(&url),
                    source,
                })?;
            db.sqlite_read = Some(read);
            db.sqlite_read_threads = Some(prefix);
        }
        Ok(db)
    }

    /// SQLite: the name prefix of the worker threads that run `/v1` reads.
    pub fn sqlite_read_threads(&self) -> Option<&str> {
        self.sqlite_read_threads.as_deref()
    }

    /// Runs a read-only statement whose rows are one TEXT column each (the
    /// OData JSON rows, or a count cast to text), stopped after `timeout`,
    /// and stopped as well when the returned future is dropped (the client
    /// went away): on SQLite a progress handler interrupts the statement; on
    /// PostgreSQL `statement_timeout` bounds it and `pg_cancel_backend`
    /// stops it.
    pub async fn read_texts(
        &self,
        sql: String,
        params: &[Param],
        timeout: Duration,
    ) -> Result<Vec<String>, ReadError> {
        match &self.sqlite_read {
            Some(pool) => sqlite_read(pool, sql, params, timeout).await,
            None => self.pg_read(sql, params, timeout).await,
        }
    }

    async fn pg_read(
        &self,
        sql: String,
        params: &[Param],
        timeout: Duration,
    ) -> Result<Vec<String>, ReadError> {
        let mut conn = self.pool.acquire().await?;
        let ms = timeout.as_millis().max(1).to_string();
        let pid: i32 =
            sqlx::query("SELECT pg_backend_pid(), set_config('statement_timeout', $1, false)")
                .bind(&ms)
                .fetch_one(&mut *conn)
                .await?
                .try_get(0)?;
        let mut running = PgRunning {
            conn: Some(conn),
            pid,
            pool: self.pool.clone(),
        };
        let rows = match running.conn.as_mut() {
            Some(c) => bind_all(dyn_query(sql), params).fetch_all(&mut **c).await,
            None => return Err(ReadError::Db(sqlx::Error::PoolClosed)),
        };
        let Some(mut conn) = running.conn.take() else {
            return Err(ReadError::Db(sqlx::Error::PoolClosed));
        };
        sqlx::query("SELECT set_config('statement_timeout', '0', false)")
            .execute(&mut *conn)
            .await?;
        match rows {
            Ok(rows) => Ok(rows
                .iter()
                .map(|r| r.try_get::<String, _>(0))
                .collect::<Result<_, _>>()?),
            // 57014 query_canceled: here only statement_timeout cancels.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("57014") => {
                Err(ReadError::Timeout(timeout))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn migrate(&self) -> Result<(), DbError> {
        let err = |version| move |source| DbError::Migrate { version, source };
        self.pool
            .execute("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)")
            .await
            .map_err(err(0))?;
        for (version, sqlite, postgres) in MIGRATIONS {
            let mut tx = self.pool.begin().await.map_err(err(*version))?;
            let done = sqlx::query("SELECT version FROM schema_migrations WHERE version = $1")
                .bind(*version)
                .fetch_optional(&mut *tx)
                .await
                .map_err(err(*version))?;
            if done.is_some() {
                continue;
            }
            let (id, text) = match self.dialect {
                Dialect::Sqlite => ("INTEGER PRIMARY KEY AUTOINCREMENT", sqlite),
                Dialect::Postgres => (
                    "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
                    postgres,
                ),
            };
            let text = text.replace("{{ID}}", id);
            let body: String = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n");
            for stmt in body.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                sqlx::query(sqlx::AssertSqlSafe(stmt.to_owned()))
                    .execute(&mut *tx)
                    .await
                    .map_err(err(*version))?;
            }
            sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1)")
                .bind(*version)
                .execute(&mut *tx)
                .await
                .map_err(err(*version))?;
            tx.commit().await.map_err(err(*version))?;
        }
        Ok(())
    }

    /// Begins a transaction that will write. On SQLite it takes the write
    /// lock up front (`BEGIN IMMEDIATE`), so concurrent writers wait on the
    /// busy timeout instead of failing with `database is locked` when a
    /// deferred transaction tries to upgrade its read lock.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Dialect::Postgres => self.pool.begin().await,
        }
    }

    /// Counts rows of a query returning one BIGINT.
    pub async fn scalar_i64(&self, sql: &'static str, id: i64) -> Result<Option<i64>, sqlx::Error> {
        let row = sqlx::query(sql).bind(id).fetch_optional(&self.pool).await?;
        row.map(|r| r.try_get::<i64, _>(0)).transpose()
    }
}

/// A PostgreSQL read in flight. Dropped before it finishes (the request
/// future was dropped), it closes the connection instead of returning it to
/// the pool, and cancels the statement from another connection.
struct PgRunning {
    conn: Option<PoolConnection<sqlx::Any>>,
    pid: i32,
    pool: AnyPool,
}

impl Drop for PgRunning {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        conn.close_on_drop();
        drop(conn);
        let (pool, pid) = (self.pool.clone(), self.pid);
        tracing::info!(pid, "client gone: cancelling its PostgreSQL statement");
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = sqlx::query("SELECT pg_cancel_backend($1)")
                    .bind(pid)
                    .execute(&pool)
                    .await
                {
                    tracing::warn!(pid, "cancelling a statement: {e}");
                }
            });
        }
    }
}

/// A SQLite read in flight: dropped before it finishes, it makes the
/// progress handler interrupt the statement, and closes the connection.
struct SqliteRunning {
    conn: PoolConnection<sqlx::Sqlite>,
    stop: Arc<AtomicBool>,
    done: bool,
}

impl Drop for SqliteRunning {
    fn drop(&mut self) {
        if !self.done {
            tracing::info!("client gone: interrupting its SQLite statement");
            self.stop.store(true, Ordering::Relaxed);
            self.conn.close_on_drop();
        }
    }
}

async fn sqlite_read(
    pool: &SqlitePool,
    sql: String,
    params: &[Param],
    timeout: Duration,
) -> Result<Vec<String>, ReadError> {
    let deadline = Instant::now() + timeout;
    let stop = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    let mut conn = pool.acquire().await?;
    {
        let (stop, timed_out) = (stop.clone(), timed_out.clone());
        // Called every 1000 virtual machine steps; false interrupts.
        conn.lock_handle()
            .await?
            .set_progress_handler(1000, move || {
                if stop.load(Ordering::Relaxed) {
                    return false;
                }
                if Instant::now() >= deadline {
                    timed_out.store(true, Ordering::Relaxed);
                    return false;
                }
                true
            });
    }
    let mut running = SqliteRunning {
        conn,
        stop,
        done: false,
    };
    let mut q = sqlx::query::<sqlx::Sqlite>(sqlx::AssertSqlSafe(sql));
    for p in params {
        q = match p.clone() {
            Param::Int(v) => q.bind(v),
            Param::Text(v) => q.bind(v),
            Param::Bool(v) => q.bind(v),
            Param::Real(v) => q.bind(v),
        };
    }
    let rows = q.fetch_all(&mut *running.conn).await;
    running.done = true;
    running.conn.lock_handle().await?.remove_progress_handler();
    match rows {
        Ok(rows) => Ok(rows
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?),
        Err(_) if timed_out.load(Ordering::Relaxed) => Err(ReadError::Timeout(timeout)),
        Err(e) => Err(e.into()),
    }
}

/// Hides a password in a database URL for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Now, as stored: RFC 3339 UTC with second precision (`2026-11-26T02:40:00Z`).
pub fn now() -> String {
    format_ts(time::OffsetDateTime::now_utc())
}

/// Formats a timestamp the way the database stores it.
pub fn format_ts(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Parses an RFC 3339 timestamp (any offset) into the stored form.
pub fn normalize_ts(s: &str) -> Option<String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(format_ts)
}
