//! `resin-supervisor`: parses the config and runs the supervisor on a
//! single-threaded tokio runtime (small footprint on the device).

use anyhow::Context;
use clap::Parser;
use resin_supervisor::config::Config;

fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    if cfg.print_config {
        println!("{}", serde_json::to_string_pretty(&cfg)?);
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RESIN_SUPERVISOR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .init();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(resin_supervisor::run::run(cfg))
}
