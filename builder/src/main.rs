//! `resin-builder`: builds a project directory for a platform and prints
//! the pinned release composition (`build`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use resin_builder::{BuildRequest, Limits};

#[derive(Parser)]
#[command(name = "resin-builder", version, about = "resin's image builder")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a project directory once and print the pinned composition (JSON).
    Build {
        /// The project: a docker-compose.yml with `build:` contexts, or a Dockerfile.
        dir: PathBuf,
        /// Registry to push to (host[:port]).
        #[arg(long, env = "RESIN_BUILDER_REGISTRY")]
        registry: String,
        /// The registry's name as devices reach it, when it differs from
        /// --registry (the composition names images with it).
        #[arg(long, env = "RESIN_BUILDER_DEVICE_REGISTRY")]
        device_registry: Option<String>,
        /// The registry namespace (one per fleet).
        #[arg(long)]
        namespace: String,
        /// The fleet's device type (picks the platform), e.g. qemuarm64.
        #[arg(long, default_value = "qemuarm64")]
        device_type: String,
        /// The tag to push.
        #[arg(long, default_value = "latest-build")]
        tag: String,
        /// Build without the layer cache.
        #[arg(long)]
        nocache: bool,
        /// Build timeout in seconds.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
        /// Maximum context size per service, in MiB.
        #[arg(long, default_value_t = 500)]
        max_context_mib: u64,
        /// The Docker engine (e.g. unix:///var/run/docker.sock).
        #[arg(
            long,
            env = "DOCKER_HOST",
            default_value = "unix:///var/run/docker.sock"
        )]
        docker_host: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Build {
            dir,
            registry,
            device_registry,
            namespace,
            device_type,
            tag,
            nocache,
            timeout,
            max_context_mib,
            docker_host,
        } => {
            let platform = resin_api_types::build::platform_of_device_type(&device_type)
                .ok_or_else(|| resin_builder::BuildError::UnknownDeviceType(device_type.clone()))?;
            let docker = bollard::Docker::connect_with_host(&docker_host)
                .with_context(|| format!("connecting to the Docker engine at {docker_host}"))?;
            let req = BuildRequest {
                project_dir: dir,
                registry,
                device_registry,
                namespace,
                platform: platform.into(),
                tag,
                nocache,
                limits: Limits {
                    timeout: Duration::from_secs(timeout),
                    max_context_bytes: max_context_mib << 20,
                },
            };
            let (tx, mut rx) =
                tokio::sync::mpsc::unbounded_channel::<resin_api_types::build::BuildLogLine>();
            let printer = tokio::spawn(async move {
                while let Some(l) = rx.recv().await {
                    match &l.service {
                        Some(s) => eprintln!("[{s}] {}", l.message),
                        None => eprintln!("{}", l.message),
                    }
                }
            });
            let out = resin_builder::run_machine(&docker, &req, &tx).await;
            drop(tx);
            let _ = printer.await;
            let out = out?;
            println!("{}", serde_json::to_string_pretty(&out.composition)?);
            Ok(())
        }
    }
}
