//! resin-loadgen: simulates N devices against a running resin-cloud — each
//! registers with a provisioning key, then polls its target state with
//! `If-None-Match` (mostly 304s) and now and then PATCHes its state — and
//! runs the same request pattern against an anchor server (nginx serving a
//! static file) in the same run, printing polls/s, p50/p99 and the ratio.
//!
//! Two load shapes:
//! - closed loop: C connections, each sends its next request as soon as the
//!   previous one is answered, for a fixed time: the maximum rate;
//! - open loop: every device polls once per interval (with jitter) from a
//!   fixed schedule; latency is counted from the scheduled time, so a server
//!   that falls behind shows it.
//!
//! Every phase stops by itself; all traffic goes to the given loopback URLs.

mod http;
mod run;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;

/// Load generator configuration.
#[derive(Debug, Clone, Parser)]
#[command(name = "resin-loadgen", version, about)]
pub struct Config {
    /// resin-cloud base URL (http, loopback)
    #[arg(long)]
    pub url: String,
    /// A user API key of that cloud (to create the fleet, release and provisioning key)
    #[arg(long, env = "RESIN_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// Anchor base URL (nginx) answering the same paths; omitted: no anchor
    #[arg(long)]
    pub anchor_url: Option<String>,
    /// Device counts to measure, comma-separated; devices are registered once
    /// and the smaller runs use the first N
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    pub devices: Vec<usize>,
    /// Connections (= in-flight requests) per run
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Seconds of each closed-loop run
    #[arg(long, default_value_t = 15)]
    pub duration: u64,
    /// One request in this many is a state PATCH (the rest are polls); 0: never
    #[arg(long, default_value_t = 20)]
    pub patch_every: u64,
    /// Open-loop poll interval in seconds; 0 skips the open-loop runs
    #[arg(long, default_value_t = 60)]
    pub interval: u64,
    /// Jitter of the open-loop interval, as a fraction of it (0.1 = ±10 %)
    #[arg(long, default_value_t = 0.1)]
    pub jitter: f64,
    /// Seconds of each open-loop run (at least one interval is sensible)
    #[arg(long, default_value_t = 90)]
    pub open_duration: u64,
    /// Device counts that also get an open-loop run (default: the largest)
    #[arg(long, value_delimiter = ',')]
    pub open_devices: Vec<usize>,
    /// Open loop: a request answered more than this many milliseconds after
    /// its scheduled time counts as slipped (reported with the maximum slip)
    #[arg(long, default_value_t = 1000)]
    pub max_slip_ms: u64,
    /// Open loop: keep this many cores busy with `stress-ng --cpu N` during
    /// each open-loop run (0: none)
    #[arg(long, default_value_t = 0)]
    pub open_busy_cpus: usize,
    /// Parallel registrations
    #[arg(long, default_value_t = 32)]
    pub register_concurrency: usize,
    /// Give up registering after this many seconds
    #[arg(long, default_value_t = 900)]
    pub register_timeout: u64,
    /// Device type of the bench fleet
    #[arg(long, default_value = "benchdevice")]
    pub device_type: String,
    /// Label for the results (e.g. sqlite, postgres)
    #[arg(long, default_value = "resin-cloud")]
    pub label: String,
    /// Client runtime threads (the server needs the other cores)
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Per-request timeout in seconds
    #[arg(long, default_value_t = 10)]
    pub request_timeout: u64,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut cfg = Config::parse();
    if cfg.devices.is_empty() || cfg.devices.contains(&0) {
        bail!("--devices needs positive counts");
    }
    if cfg.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if !(0.0..1.0).contains(&cfg.jitter) {
        bail!("--jitter must be in [0, 1)");
    }
    cfg.devices.sort_unstable();
    cfg.devices.dedup();
    if cfg.open_devices.is_empty() {
        if let Some(&max) = cfg.devices.last() {
            cfg.open_devices.push(max);
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads.max(1))
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run::main(cfg))?;
    // Workers may linger on a timed-out request: do not wait for them.
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
