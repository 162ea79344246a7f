//! The bench itself: set up a fleet, register devices, warm up ETags, then
//! closed- and open-loop runs against resin-cloud and the anchor.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use hyper::header::{HeaderValue, ETAG, IF_NONE_MATCH};
use hyper::{Method, StatusCode};
use rand::Rng;
use resin_api_types::{paths, DeviceReport, RegisterRequest, RegisterResponse, StateReport};
use serde_json::{json, Value};
use tokio::time::Instant as TInstant;

use crate::http::{Conn, Target};
use crate::Config;

/// One simulated device.
struct Device {
    uuid: String,
    auth: HeaderValue,
    state_path: String,
}

/// Where a run sends its requests, and the ETags it has learnt per device.
struct Side {
    name: String,
    target: Target,
    etags: Vec<Mutex<Option<HeaderValue>>>,
}

impl Side {
    fn new(name: &str, url: &str, n: usize) -> Result<Self> {
        Ok(Self {
            name: name.to_string(),
            target: Target::parse(url)?,
            etags: (0..n).map(|_| Mutex::new(None)).collect(),
        })
    }

    fn etag(&self, i: usize) -> Option<HeaderValue> {
        self.etags
            .get(i)
            .and_then(|m| m.lock().ok().and_then(|g| g.clone()))
    }

    fn set_etag(&self, i: usize, v: Option<HeaderValue>) {
        if let Some(m) = self.etags.get(i) {
            if let Ok(mut g) = m.lock() {
                *g = v;
            }
        }
    }
}

#[derive(Default)]
struct Stats {
    not_modified: u64,
    full: u64,
    patches: u64,
    errors: u64,
    /// Open loop: polls that were due before the end but never sent.
    missed: u64,
    first_error: Option<String>,
    /// Microseconds from send to answer.
    poll_us: Vec<u32>,
    patch_us: Vec<u32>,
    /// Open loop: the schedule slip of every scheduled request (poll or
    /// PATCH, answered or failed), in microseconds from its due time to its
    /// answer; for a request still due at the end (counted in `missed`), the
    /// time it had waited by then, a lower bound.
    sched_us: Vec<u32>,
}

impl Stats {
    fn merge(&mut self, o: Stats) {
        self.not_modified += o.not_modified;
        self.full += o.full;
        self.patches += o.patches;
        self.errors += o.errors;
        self.missed += o.missed;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        self.poll_us.extend(o.poll_us);
        self.patch_us.extend(o.patch_us);
        self.sched_us.extend(o.sched_us);
    }

    fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// What the open loop's schedule did: how late requests were answered,
/// counted from the time they were due.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SlipSummary {
    p99_ms: f64,
    max_ms: f64,
    /// Requests answered (or still waiting at the end) more than `limit` late.
    over_limit: u64,
}

/// Summarises the slips `us` (microseconds) against `limit`; None if the
/// run scheduled nothing.
fn slip_summary(us: &mut [u32], limit: Duration) -> Option<SlipSummary> {
    let max = *us.iter().max()?;
    let limit = micros(limit);
    Some(SlipSummary {
        p99_ms: pct(us, 0.99),
        max_ms: f64::from(max) / 1000.0,
        over_limit: us.iter().filter(|&&u| u > limit).count() as u64,
    })
}

/// The requests of a schedule that were due before `end` but not sent by
/// `now`: how long each had waited by then (a lower bound of its slip).
fn overdue(now: TInstant, end: TInstant, due: impl Iterator<Item = TInstant>) -> Vec<u32> {
    due.filter(|&d| d < end)
        .map(|d| micros(now.saturating_duration_since(d)))
        .collect()
}

fn pct(v: &mut [u32], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    f64::from(v[i.min(v.len() - 1)]) / 1000.0
}

/// One result row.
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    backend: String,
    side: String,
    mode: String,
    devices: usize,
    connections: usize,
    seconds: f64,
    polls_per_s: f64,
    share_304: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Open loop: schedule slip p99 and maximum (due time to answer), and
    /// how many requests slipped more than `--max-slip-ms`.
    sched_p99_ms: Option<f64>,
    sched_max_ms: Option<f64>,
    slipped: Option<u64>,
    patches_per_s: f64,
    patch_p99_ms: f64,
    errors: u64,
    missed: u64,
}

fn row(cfg: &Config, side: &str, mode: &str, n: usize, secs: f64, mut s: Stats) -> Row {
    let polls = s.not_modified + s.full;
    let slip = slip_summary(&mut s.sched_us, Duration::from_millis(cfg.max_slip_ms));
    let r = Row {
        backend: cfg.label.clone(),
        side: side.to_string(),
        mode: mode.to_string(),
        devices: n,
        connections: cfg.connections,
        seconds: secs,
        polls_per_s: polls as f64 / secs,
        share_304: if polls == 0 {
            0.0
        } else {
            s.not_modified as f64 / polls as f64
        },
        p50_ms: pct(&mut s.poll_us, 0.50),
        p99_ms: pct(&mut s.poll_us, 0.99),
        sched_p99_ms: slip.map(|x| x.p99_ms),
        sched_max_ms: slip.map(|x| x.max_ms),
        slipped: slip.map(|x| x.over_limit),
        patches_per_s: s.patches as f64 / secs,
        patch_p99_ms: pct(&mut s.patch_us, 0.99),
        errors: s.errors,
        missed: s.missed,
    };
    eprintln!(
        "[{}] {:<6} {:<11} N={:<6} polls/s={:>9.0} 304={:>5.1}% p50={:.2}ms p99={:.2}ms{} patches/s={:.0} errors={} missed={}{}",
        r.backend,
        r.side,
        r.mode,
        r.devices,
        r.polls_per_s,
        r.share_304 * 100.0,
        r.p50_ms,
        r.p99_ms,
        slip.map(|x| format!(
            " sched-p99={:.2}ms sched-max={:.2}ms slipped>{}ms={}",
            x.p99_ms, x.max_ms, cfg.max_slip_ms, x.over_limit
        ))
        .unwrap_or_default(),
        r.patches_per_s,
        r.errors,
        r.missed,
        s.first_error.map(|e| format!(" (first: {e})")).unwrap_or_default(),
    );
    println!("{}", serde_json::to_string(&r).unwrap_or_default());
    r
}

/// Calls the cloud's API with the user key; checks for 2xx.
async fn api(
    conn: &mut Conn,
    auth: &HeaderValue,
    method: Method,
    path: &str,
    body: Value,
) -> Result<Value> {
    let body = if method == Method::GET {
        None
    } else {
        Some(Bytes::from(body.to_string()))
    };
    let a = conn
        .request(method.clone(), path, Some(auth), None, body)
        .await?;
    if !a.status.is_success() {
        bail!(
            "{method} {path}: HTTP {}: {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        );
    }
    if a.body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&a.body).with_context(|| format!("{method} {path}: JSON"))
}

/// Creates the bench fleet (with a release and a fleet env var, so the
/// target state is realistic) and returns a provisioning key.
async fn setup(cfg: &Config, target: &Target) -> Result<String> {
    let mut c = Conn::new(target.clone(), Duration::from_secs(cfg.request_timeout));
    let auth = HeaderValue::from_str(&format!("Bearer {}", cfg.api_key))?;
    let name = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let fleet = api(
        &mut c,
        &auth,
        Method::POST,
        "/v1/fleet",
        json!({"name": name, "device_type": cfg.device_type}),
    )
    .await?;
    let fid = fleet["id"]
        .as_i64()
        .ok_or_else(|| anyhow!("fleet without id: {fleet}"))?;
    let composition = json!({"services": {
        "main": {"image": "127.0.0.1:55000/bench/main:1", "restart": "always",
                 "environment": {"MODE": "bench"}, "labels": {"io.resin.update.strategy": "download-then-kill"}},
        "sidecar": {"image": "127.0.0.1:55000/bench/sidecar:1", "command": ["sleep", "infinity"]}
    }});
    let rel = api(
        &mut c,
        &auth,
        Method::POST,
        "/v1/release",
        json!({"fleet": fid, "composition": composition}),
    )
    .await?;
    let rid = rel["id"]
        .as_i64()
        .ok_or_else(|| anyhow!("release without id: {rel}"))?;
    api(
        &mut c,
        &auth,
        Method::PATCH,
        &format!("/v1/fleet({fid})"),
        json!({"target_release": rid}),
    )
    .await?;
    api(
        &mut c,
        &auth,
        Method::POST,
        "/v1/fleet_env_var",
        json!({"fleet": fid, "name": "BENCH", "value": "1"}),
    )
    .await?;
    let pk = api(
        &mut c,
        &auth,
        Method::POST,
        "/v1/provisioning_key",
        json!({"fleet": fid, "name": "bench"}),
    )
    .await?;
    let key = pk["key"]
        .as_str()
        .ok_or_else(|| anyhow!("provisioning key answer without key: {pk}"))?;
    tracing::info!(fleet = %name, id = fid, release = rid, "bench fleet ready");
    Ok(key.to_string())
}

/// Registers devices until there are `want` of them.
async fn register(
    cfg: &Config,
    target: &Target,
    pkey: &str,
    have: &mut Vec<Device>,
    want: usize,
) -> Result<()> {
    let start = have.len();
    if want <= start {
        return Ok(());
    }
    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(start));
    let auth = HeaderValue::from_str(&format!("Bearer {pkey}"))?;
    let deadline = TInstant::now() + Duration::from_secs(cfg.register_timeout);
    let retries = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let first_err: Arc<Mutex<Option<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..cfg.register_concurrency.max(1) {
        let (retries, first_err) = (retries.clone(), first_err.clone());
        let (next, auth, target, dt) = (
            next.clone(),
            auth.clone(),
            target.clone(),
            cfg.device_type.clone(),
        );
        let timeout = Duration::from_secs(cfg.request_timeout);
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::new(target, timeout);
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= want {
                    return Ok(out);
                }
                if TInstant::now() > deadline {
                    bail!("registration did not finish in time ({i} of {want})");
                }
                let req = RegisterRequest {
                    uuid: uuid::Uuid::new_v4().simple().to_string(),
                    device_type: dt.clone(),
                    name: None,
                    supervisor_version: Some("loadgen".into()),
                    os_version: None,
                };
                let body = Bytes::from(serde_json::to_vec(&req)?);
                // The cloud may refuse under write contention (e.g. SQLite
                // "database is locked"): retry with a growing pause, counted.
                let mut tries: u64 = 0;
                let resp = loop {
                    let why = match c
                        .request(
                            Method::POST,
                            paths::REGISTER,
                            Some(&auth),
                            None,
                            Some(body.clone()),
                        )
                        .await
                    {
                        Ok(a) if a.status.is_success() => break a,
                        Ok(a) => format!("HTTP {}: {}", a.status, String::from_utf8_lossy(&a.body)),
                        Err(e) => format!("{e:#}"),
                    };
                    tries += 1;
                    retries.fetch_add(1, Ordering::Relaxed);
                    if tries > 50 {
                        bail!("register: gave up after {tries} tries: {why}");
                    }
                    if let Ok(mut f) = first_err.lock() {
                        f.get_or_insert(why);
                    }
                    tokio::time::sleep(Duration::from_millis((10 * tries).min(500))).await;
                };
                let r: RegisterResponse =
                    serde_json::from_slice(&resp.body).context("register answer")?;
                out.push((
                    i,
                    Device {
                        state_path: paths::target_state(&r.uuid),
                        auth: HeaderValue::from_str(&format!("Bearer {}", r.api_key))?,
                        uuid: r.uuid,
                    },
                ));
            }
        }));
    }
    let mut all: HashMap<usize, Device> = HashMap::new();
    for t in tasks {
        for (i, d) in t.await.context("register task")?? {
            all.insert(i, d);
        }
    }
    for i in start..want {
        have.push(
            all.remove(&i)
                .ok_or_else(|| anyhow!("device {i} missing"))?,
        );
    }
    let secs = t0.elapsed().as_secs_f64();
    let retried = retries.load(Ordering::Relaxed);
    let first = first_err
        .lock()
        .ok()
        .and_then(|f| f.clone())
        .unwrap_or_default();
    eprintln!(
        "[{}] registered {} devices in {secs:.1} s ({:.0}/s, {} in parallel; {retried} refused and retried{})",
        cfg.label,
        want - start,
        (want - start) as f64 / secs,
        cfg.register_concurrency,
        if retried > 0 { format!(", first: {first}") } else { String::new() }
    );
    Ok(())
}

fn report_body(d: &Device, k: u64) -> Result<Bytes> {
    let mut r = StateReport::new();
    r.insert(
        d.uuid.clone(),
        DeviceReport {
            status: Some("Idle".into()),
            cpu_usage: Some((k % 100) as f64),
            memory_usage: Some(100_000_000 + k),
            memory_total: Some(1_000_000_000),
            ..DeviceReport::default()
        },
    );
    Ok(Bytes::from(serde_json::to_vec(&r)?))
}

/// One poll or PATCH of device `i`; records into `s`.
async fn one(
    c: &mut Conn,
    side: &Side,
    d: &Device,
    i: usize,
    patch: bool,
    k: u64,
    s: &mut Stats,
) -> Option<Duration> {
    let t = Instant::now();
    if patch {
        let body = match report_body(d, k) {
            Ok(b) => b,
            Err(e) => {
                s.error(e);
                return None;
            }
        };
        match c
            .request(
                Method::PATCH,
                paths::STATE_REPORT,
                Some(&d.auth),
                None,
                Some(body),
            )
            .await
        {
            Ok(a) if a.status.is_success() => {
                s.patches += 1;
                s.patch_us.push(micros(t.elapsed()));
            }
            Ok(a) => s.error(format!("PATCH: HTTP {}", a.status)),
            Err(e) => s.error(format!("PATCH: {e:#}")),
        }
        return None;
    }
    let etag = side.etag(i);
    let extra = etag.as_ref().map(|e| (IF_NONE_MATCH.as_str(), e));
    match c
        .request(Method::GET, &d.state_path, Some(&d.auth), extra, None)
        .await
    {
        Ok(a) if a.status == StatusCode::NOT_MODIFIED => {
            s.not_modified += 1;
            let el = t.elapsed();
            s.poll_us.push(micros(el));
            Some(el)
        }
        Ok(a) if a.status == StatusCode::OK => {
            s.full += 1;
            side.set_etag(i, a.headers.get(ETAG).cloned());
            let el = t.elapsed();
            s.poll_us.push(micros(el));
            Some(el)
        }
        Ok(a) => {
            s.error(format!("GET state: HTTP {}", a.status));
            None
        }
        Err(e) => {
            s.error(format!("GET state: {e:#}"));
            None
        }
    }
}

/// Closed loop over devices `0..n` for `secs` (or, with `warm`, one pass
/// over the devices that have no ETag yet).
async fn closed(
    cfg: &Config,
    side: &Arc<Side>,
    devs: &Arc<Vec<Device>>,
    n: usize,
    secs: u64,
    warm: bool,
) -> (f64, Stats) {
    let c_n = cfg.connections.min(n).max(1);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..c_n {
        let (side, devs) = (side.clone(), devs.clone());
        let (timeout, patch_every) = (Duration::from_secs(cfg.request_timeout), cfg.patch_every);
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::new(side.target.clone(), timeout);
            let mut s = Stats::default();
            let mine: Vec<usize> = (w..n)
                .step_by(c_n)
                .filter(|&i| !warm || side.etag(i).is_none())
                .collect();
            if mine.is_empty() {
                return s;
            }
            let mut k: u64 = rand::rng().random_range(0..patch_every.max(1));
            let mut j = 0usize;
            loop {
                if Instant::now() >= deadline || (warm && j >= mine.len()) {
                    return s;
                }
                let i = mine[j % mine.len()];
                j += 1;
                k += 1;
                let patch = !warm && patch_every > 0 && k.is_multiple_of(patch_every);
                if let Some(d) = devs.get(i) {
                    one(&mut c, &side, d, i, patch, k, &mut s).await;
                }
            }
        }));
    }
    let mut all = Stats::default();
    for t in tasks {
        if let Ok(s) = t.await {
            all.merge(s);
        }
    }
    (t0.elapsed().as_secs_f64(), all)
}

/// Open loop: each of devices `0..n` polls once per interval ± jitter from a
/// fixed schedule, for `secs`.
async fn open(cfg: &Config, side: &Arc<Side>, devs: &Arc<Vec<Device>>, n: usize) -> (f64, Stats) {
    let c_n = cfg.connections.min(n).max(1);
    let interval = Duration::from_secs(cfg.interval);
    let start = TInstant::now() + Duration::from_millis(200);
    let end = start + Duration::from_secs(cfg.open_duration);
    let mut tasks = Vec::new();
    for w in 0..c_n {
        let (side, devs) = (side.clone(), devs.clone());
        let (timeout, patch_every, jitter) = (
            Duration::from_secs(cfg.request_timeout),
            cfg.patch_every,
            cfg.jitter,
        );
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::new(side.target.clone(), timeout);
            let mut s = Stats::default();
            let mut heap = BinaryHeap::new();
            {
                let mut rng = rand::rng();
                for i in (w..n).step_by(c_n) {
                    let off = interval.mul_f64(rng.random_range(0.0..1.0));
                    heap.push(Reverse((start + off, i)));
                }
            }
            let mut k: u64 = rand::rng().random_range(0..patch_every.max(1));
            while let Some(Reverse((due, i))) = heap.pop() {
                if due >= end {
                    break;
                }
                // A server that falls behind must not stretch the run: at
                // the end, what is still due counts as missed, not sent.
                let now = TInstant::now();
                if now >= end {
                    let late = overdue(
                        now,
                        end,
                        std::iter::once(due).chain(heap.iter().map(|Reverse((d, _))| *d)),
                    );
                    s.missed += late.len() as u64;
                    s.sched_us.extend(late);
                    break;
                }
                tokio::time::sleep_until(due).await;
                k += 1;
                let patch = patch_every > 0 && k.is_multiple_of(patch_every);
                if let Some(d) = devs.get(i) {
                    one(&mut c, &side, d, i, patch, k, &mut s).await;
                    s.sched_us.push(micros(due.elapsed()));
                }
                let f = 1.0 + jitter * rand::rng().random_range(-1.0..=1.0);
                heap.push(Reverse((due + interval.mul_f64(f), i)));
            }
            s
        }));
    }
    let mut all = Stats::default();
    for t in tasks {
        if let Ok(s) = t.await {
            all.merge(s);
        }
    }
    (cfg.open_duration as f64, all)
}

/// `stress-ng --cpu N` beside an open-loop run (#15's goal holds "with one
/// core kept busy"); killed when dropped, and it stops by itself anyway.
struct Busy(Option<std::process::Child>);

impl Busy {
    fn start(cpus: usize, secs: u64) -> Result<Self> {
        if cpus == 0 {
            return Ok(Self(None));
        }
        let child = std::process::Command::new("stress-ng")
            .args(["--cpu", &cpus.to_string(), "--quiet", "--timeout"])
            .arg(format!("{}s", secs + 30))
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("starting stress-ng (Debian package stress-ng) for --open-busy-cpus")?;
        eprintln!(
            "stress-ng --cpu {cpus} running beside the open loop (pid {})",
            child.id()
        );
        Ok(Self(Some(child)))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Writes the target state of device 0 to `path` for the anchor to serve.
async fn write_anchor_file(
    cfg: &Config,
    target: &Target,
    d: &Device,
    path: &PathBuf,
) -> Result<()> {
    let mut c = Conn::new(target.clone(), Duration::from_secs(cfg.request_timeout));
    let a = c
        .request(Method::GET, &d.state_path, Some(&d.auth), None, None)
        .await?;
    if a.status != StatusCode::OK {
        bail!("GET {}: HTTP {}", d.state_path, a.status);
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &a.body)?;
    std::fs::rename(&tmp, path)?;
    eprintln!(
        "anchor file {}: {} bytes (a real target state)",
        path.display(),
        a.body.len()
    );
    Ok(())
}

pub async fn main(cfg: Config) -> Result<()> {
    let max = cfg.devices.iter().copied().max().unwrap_or(0);
    let cloud = Arc::new(Side::new("resin", &cfg.url, max)?);
    let anchor = match &cfg.anchor_url {
        Some(u) => Some(Arc::new(Side::new("anchor", u, max)?)),
        None => None,
    };
    let pkey = setup(&cfg, &cloud.target).await?;
    let mut devices: Vec<Device> = Vec::new();
    let mut rows = Vec::new();
    let mut anchor_file_done = false;
    for &n in &cfg.devices {
        register(&cfg, &cloud.target, &pkey, &mut devices, n).await?;
        let devs = Arc::new(std::mem::take(&mut devices));
        if !anchor_file_done {
            if let (Some(p), Some(d)) = (std::env::var_os("RESIN_BENCH_ANCHOR_FILE"), devs.first())
            {
                write_anchor_file(&cfg, &cloud.target, d, &PathBuf::from(p)).await?;
            }
            anchor_file_done = true;
        }
        let mut sides = vec![cloud.clone()];
        sides.extend(anchor.clone());
        for side in &sides {
            let (secs, s) = closed(&cfg, side, &devs, n, cfg.register_timeout, true).await;
            if s.not_modified + s.full > 0 {
                rows.push(row(&cfg, &side.name, "warm-up(200)", n, secs, s));
            }
            let (secs, s) = closed(&cfg, side, &devs, n, cfg.duration, false).await;
            rows.push(row(&cfg, &side.name, "closed", n, secs, s));
        }
        if cfg.interval > 0 && cfg.open_devices.contains(&n) {
            for side in &sides {
                let busy = Busy::start(cfg.open_busy_cpus, cfg.open_duration)?;
                let (secs, s) = open(&cfg, side, &devs, n).await;
                drop(busy);
                rows.push(row(
                    &cfg,
                    &side.name,
                    &format!("open@{}s", cfg.interval),
                    n,
                    secs,
                    s,
                ));
            }
        }
        devices = Arc::try_unwrap(devs).map_err(|_| anyhow!("devices still shared"))?;
    }
    // Summary: resin against the anchor, per mode and N.
    eprintln!("\n| backend | mode | N | resin polls/s | p50 ms | p99 ms | anchor polls/s | anchor p99 ms | anchor/resin rate |");
    eprintln!("|---|---|---|---|---|---|---|---|---|");
    for r in rows
        .iter()
        .filter(|r| r.side == "resin" && !r.mode.starts_with("warm"))
    {
        let a = rows
            .iter()
            .find(|x| x.side == "anchor" && x.mode == r.mode && x.devices == r.devices);
        let p99 = match (r.sched_p99_ms, r.sched_max_ms) {
            (Some(p), Some(m)) => format!("{:.2} (slip p99 {p:.2}, max {m:.2})", r.p99_ms),
            _ => format!("{:.2}", r.p99_ms),
        };
        eprintln!(
            "| {} | {} | {} | {:.0} | {:.2} | {} | {} | {} | {} |",
            r.backend,
            r.mode,
            r.devices,
            r.polls_per_s,
            r.p50_ms,
            p99,
            a.map(|a| format!("{:.0}", a.polls_per_s))
                .unwrap_or("-".into()),
            a.map(|a| format!("{:.2}", a.p99_ms)).unwrap_or("-".into()),
            a.map(|a| format!("{:.2}×", a.polls_per_s / r.polls_per_s))
                .unwrap_or("-".into()),
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn slip_summary_reports_the_maximum_and_the_count_over_the_limit() {
        // 1000 slips: 990 small ones, 9 of 1.2 s and one of 4.5 s.
        let mut us: Vec<u32> = (0..990).map(|i| 1_000 + i).collect();
        us.extend([1_200_000; 9]);
        us.push(4_500_000);
        let s = slip_summary(&mut us, Duration::from_secs(1)).expect("slips");
        assert_eq!(s.max_ms, 4500.0);
        assert_eq!(s.over_limit, 10);
        // The p99 (the 990th of 1000 sorted values) is the largest small
        // one: it alone does not show the ten slow ones.
        assert_eq!(s.p99_ms, 1.989);
    }

    #[test]
    fn a_slip_of_exactly_the_limit_is_not_over_it() {
        let mut us = vec![10, 1_000_000, 999_999];
        let s = slip_summary(&mut us, Duration::from_secs(1)).expect("slips");
        assert_eq!((s.max_ms, s.over_limit), (1000.0, 0));
        let mut us = vec![1_000_001];
        let s = slip_summary(&mut us, Duration::from_secs(1)).expect("slips");
        assert_eq!(s.over_limit, 1);
    }

    #[test]
    fn no_scheduled_request_has_no_slip_summary() {
        assert_eq!(slip_summary(&mut [], Duration::from_secs(1)), None);
    }

    #[test]
    fn requests_still_due_at_the_end_count_with_the_time_they_waited() {
        let t0 = TInstant::now();
        let end = t0 + Duration::from_secs(10);
        let now = end + Duration::from_millis(5);
        let due = [
            t0 + Duration::from_secs(8),    // waited 2.005 s
            end - Duration::from_millis(1), // waited 6 ms
            end,                            // not due before the end
            end + Duration::from_secs(3),   // later
        ];
        let mut late = overdue(now, end, due.into_iter());
        late.sort_unstable();
        assert_eq!(late, vec![6_000, 2_005_000]);
        let s = slip_summary(&mut late, Duration::from_secs(1)).expect("slips");
        assert_eq!((s.max_ms, s.over_limit), (2005.0, 1));
    }
}
