//! The `resin-cloud` binary: `serve` (the default), `init` and `bootstrap`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use resin_cloud::config::ConfigArgs;

/// The settings flags are global: they go before or after the subcommand
/// (`resin-cloud --listen … serve` or `resin-cloud serve --listen …`), and
/// each subcommand's `--help` lists them.
#[derive(Parser)]
#[command(name = "resin-cloud", version, about = "resin cloud API server")]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a git hook of the builder (git runs it: `git-hook pre-receive`).
    #[command(hide = true)]
    GitHook { hook: String },
    /// Serve the API (the default): HTTPS with the certificate `init` made,
    /// unless --plain-http.
    Serve,
    /// Build jobs only, without the HTTP API: take queued builds from the
    /// database (`FOR UPDATE SKIP LOCKED`) and run them, `builder_workers` at
    /// once (at least 1), until interrupted. Needs PostgreSQL and the same
    /// builder settings as `serve`, and must see the data dir `serve`
    /// stores contexts in; run `serve` with `builder_workers = 0` to leave
    /// every build to these processes.
    Builder,
    /// Make a private CA and a server certificate for the given host names
    /// and IPs, in <data-dir>/tls (ca.pem, ca.key, server.pem, server.key;
    /// keys 0600), and print what was written as JSON. Devices get ca.pem in
    /// their config.json (`rootCA`); clients use it with --ca.
    Init {
        /// A DNS name or IP address devices and clients use to reach the
        /// cloud (repeat, or separate with commas), e.g. `--host
        /// cloud.example.com --host 10.0.2.2`.
        #[arg(long = "host", required = true, value_delimiter = ',')]
        hosts: Vec<String>,
        /// Directory for the files. Default: <data-dir>/tls.
        #[arg(long)]
        out_dir: Option<std::path::PathBuf>,
        /// Replace files that exist.
        #[arg(long)]
        force: bool,
        /// Keep the CA in the directory and issue only a new server
        /// certificate (devices that trust the CA keep working).
        #[arg(long)]
        keep_ca: bool,
    },
    /// Create a user if missing and print a fresh API key as JSON:
    /// {"user_id":…,"api_key":"…"} (plus "fleet_id" with --fleet).
    Bootstrap {
        #[arg(long)]
        username: String,
        /// Also create this fleet for the user (kept if it exists).
        #[arg(long)]
        fleet: Option<String>,
        /// Device type of the fleet created by --fleet.
        #[arg(long, default_value = "qemuarm64")]
        device_type: String,
        /// Make the user an admin (public OS releases, user management).
        #[arg(long)]
        admin: bool,
    },
    /// Dashboard users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Set a user's dashboard password (argon2id): prompted for on a
    /// terminal, else read as the first line of standard input. The user's
    /// open dashboard sessions end.
    Passwd {
        /// The user (made by `bootstrap`).
        username: String,
    },
}

/// The new password: a prompt (twice, not echoed) on a terminal, else the
/// first line of standard input.
fn read_password() -> anyhow::Result<String> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        let a = rpassword::prompt_password("New password: ").context("reading the password")?;
        let b = rpassword::prompt_password("Again: ").context("reading the password")?;
        anyhow::ensure!(a == b, "the passwords differ");
        Ok(a)
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: a journal or a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Some(Command::GitHook { hook }) = &cli.command {
        if hook != "pre-receive" {
            anyhow::bail!("unknown git hook {hook:?}");
        }
        std::process::exit(resin_cloud::git::run_hook());
    }
    let config = cli.config.resolve().context("reading the configuration")?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::GitHook { .. } => {}
        Command::Serve => {
            let app = resin_cloud::App::start(config.clone()).await?;
            tracing::info!(
                "resin-cloud listening on {}://{} (public URL {}, database {})",
                if config.tls.is_some() {
                    "https"
                } else {
                    "http"
                },
                app.addr,
                app.state.config.public_url,
                if config.database_url.starts_with("postgres") {
                    "PostgreSQL"
                } else {
                    "SQLite"
                }
            );
            tokio::select! {
                r = app.task => { r.context("server task")?.context("serving")?; }
                _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted, stopping"); }
            }
        }
        Command::Builder => {
            let b = config.builder.clone().context(
                "resin-cloud builder needs the builder's settings: set builder_registry (--builder-registry)",
            )?;
            if !config.database_url.starts_with("postgres") {
                anyhow::bail!(
                    "resin-cloud builder needs PostgreSQL (database_url {:?}): on SQLite, builds run inside `serve` (builder_workers)",
                    config.database_url
                );
            }
            let state = resin_cloud::AppState::new(config)
                .await
                .context("opening the database")?;
            let n = b.workers.max(1);
            tracing::info!(
                workers = n,
                registry = %b.registry,
                "resin-cloud builder: taking build jobs from the database"
            );
            tokio::spawn(resin_cloud::build::reaper(state.clone(), b.lease_secs));
            tokio::select! {
                _ = resin_cloud::build::workers(state, n) => {}
                _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted, stopping"); }
            }
        }
        Command::Init {
            hosts,
            out_dir,
            force,
            keep_ca,
        } => {
            let req = resin_cloud::tls::InitRequest {
                dir: out_dir.unwrap_or_else(|| config.data_dir.join("tls")),
                hosts,
                force,
                keep_ca,
            };
            let done = resin_cloud::tls::init(&req)
                .with_context(|| format!("making certificates in {}", req.dir.display()))?;
            println!("{}", serde_json::to_string(&done)?);
        }
        Command::Bootstrap {
            username,
            fleet,
            device_type,
            admin,
        } => {
            let db = resin_cloud::db::Db::connect(&config.database_url, 2)
                .await
                .context("opening the database")?;
            let out = resin_cloud::bootstrap(
                &db,
                &username,
                fleet.as_deref().map(|f| (f, device_type.as_str())),
            )
            .await
            .context("bootstrapping")?;
            if admin {
                resin_cloud::set_admin(&db, out.user_id, true)
                    .await
                    .context("making the user an admin")?;
            }
            println!("{}", serde_json::to_string(&out)?);
        }
        Command::User {
            command: UserCommand::Passwd { username },
        } => {
            let password = read_password()?;
            let db = resin_cloud::db::Db::connect(&config.database_url, 2)
                .await
                .context("opening the database")?;
            resin_cloud::web::session::set_password(&db, &username, &password)
                .await
                .with_context(|| format!("setting the password of {username:?}"))?;
            eprintln!("password set for {username}");
        }
    }
    Ok(())
}
