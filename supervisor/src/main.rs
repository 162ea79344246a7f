//! `resin-supervisor`: parses the config and runs the supervisor on a
//! single-threaded tokio runtime (small footprint on the device).

use anyhow::Context;
use clap::Parser;
use resin_supervisor::config::Config;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

fn main() -> anyhow::Result<()> {
    one_malloc_arena();
    let cfg = Config::parse();
    if cfg.print_config {
        println!("{}", serde_json::to_string_pretty(&cfg)?);
        return Ok(());
    }
    // RESIN_SUPERVISOR_LOG: a level (`debug`) or `target=level` pairs
    // (`warn,resin_supervisor::tunnel=debug`); info when unset or unreadable.
    let filter = std::env::var("RESIN_SUPERVISOR_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_ansi(false),
        )
        .with(filter)
        .init();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(resin_supervisor::run::run(cfg))
}

/// One malloc arena for the whole process. glibc gives a thread that
/// allocates while another holds the main arena an arena of its own, with
/// its own heap pages; for the supervisor's few threads (the runtime's and
/// up to 4 blocking ones) that was about 0.7 MiB of idle RSS (RssAnon 1.9
/// -> 1.2 MiB with 5 containers, BENCHMARKS.md). Contention does not matter
/// here: one runtime thread does nearly all the allocating.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn one_malloc_arena() {
    // SAFETY: mallopt only sets an allocator parameter, and it runs first
    // in main, before any other thread exists. A refusal (0) leaves
    // glibc's default, which is only less frugal.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_malloc_arena() {}
