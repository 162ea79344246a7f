//! `resin`: the command-line client of the resin cloud API (fleets, devices,
//! env vars, releases from compose files, OS uploads and downloads, logs).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use resin_api_types::LogLine;
use resin_cli::api::{odata_str, with_query, Api};
use resin_cli::compose;
use resin_cli::config::{self, StoredLogin};
use resin_cli::fsutil::AtomicFile;
use resin_cli::table::{cell, render};

/// The resin CLI. The API URL and key come from `--api-url`/`--api-key`
/// (or RESIN_API_URL/RESIN_API_KEY), else from what `resin login` stored.
#[derive(Debug, Parser)]
#[command(name = "resin", version, about)]
struct Cli {
    /// Cloud API URL, e.g. http://127.0.0.1:8080 [default: the stored login]
    #[arg(long, global = true, env = "RESIN_API_URL")]
    api_url: Option<String>,
    /// API key of a user [default: the stored login]
    #[arg(long, global = true, env = "RESIN_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Where `resin login` stores URL and key [default: ~/.config/resin/cli.json]
    #[arg(long, global = true, env = "RESIN_CLI_CONFIG")]
    config: Option<PathBuf>,
    /// Print JSON instead of tables
    #[arg(long, global = true)]
    json: bool,
    /// Timeout of ordinary API requests, in seconds (uploads, downloads and
    /// `logs --follow` only time out while connecting)
    #[arg(long, global = true, default_value_t = 30)]
    timeout: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Check an API key against the cloud and store URL and key (mode 0600)
    Login,
    /// Fleets
    #[command(subcommand)]
    Fleet(FleetCmd),
    /// Devices
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Environment variables of a fleet, a device or a release's service
    #[command(subcommand)]
    Env(EnvCmd),
    /// Releases
    #[command(subcommand)]
    Release(ReleaseCmd),
    /// OS releases: upload bundles and images, download configured images
    #[command(subcommand)]
    Os(OsCmd),
    /// Show a device's logs (DEVICE is its uuid or numeric id)
    Logs(LogsArgs),
}

#[derive(Debug, Subcommand)]
enum FleetCmd {
    /// Create a fleet
    Create {
        name: String,
        /// Device type slug, e.g. qemuarm64
        #[arg(long)]
        device_type: String,
    },
    /// List fleets
    List,
}

#[derive(Debug, Subcommand)]
enum DeviceCmd {
    /// List devices
    List {
        /// Only the devices of this fleet (name)
        #[arg(long)]
        fleet: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum EnvCmd {
    /// Create or update a variable
    Set(EnvSet),
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("owner").required(true).args(["fleet", "device", "service"]))]
struct EnvSet {
    name: String,
    value: String,
    /// On a fleet (name)
    #[arg(long)]
    fleet: Option<String>,
    /// On a device (uuid or id)
    #[arg(long)]
    device: Option<String>,
    /// On a service of a release (with --release)
    #[arg(long, requires = "release")]
    service: Option<String>,
    /// The release (id or uuid) of --service
    #[arg(long, requires = "service")]
    release: Option<String>,
}

#[derive(Debug, Subcommand)]
enum ReleaseCmd {
    /// Create a release from a compose file
    Create {
        /// Fleet name
        #[arg(long)]
        fleet: String,
        /// The compose file
        #[arg(long)]
        compose: PathBuf,
        /// Use this image for a service: SERVICE=REF (repeatable)
        #[arg(long = "image", value_name = "SERVICE=REF", value_parser = compose::parse_image_override)]
        images: Vec<(String, String)>,
        /// Also make it the fleet's target release
        #[arg(long, alias = "set-target")]
        pin: bool,
    },
}

#[derive(Debug, Subcommand)]
enum OsCmd {
    /// Create an OS release and upload its RAUC bundle (and disk image)
    Upload {
        #[arg(long)]
        device_type: String,
        #[arg(long)]
        version: String,
        /// RAUC bundle (.raucb)
        #[arg(long)]
        bundle: PathBuf,
        /// Base disk image, for configured downloads
        #[arg(long)]
        image: Option<PathBuf>,
    },
    /// Download a fleet's configured disk image
    Download {
        /// Fleet name
        #[arg(long)]
        fleet: String,
        /// OS version
        #[arg(long)]
        version: String,
        #[arg(long, value_enum, default_value_t = Compression::None)]
        compression: Compression,
        /// Where to write the image (temp file + rename)
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Compression {
    Zstd,
    Xz,
    None,
}

impl Compression {
    fn as_str(self) -> &'static str {
        match self {
            Self::Zstd => "zstd",
            Self::Xz => "xz",
            Self::None => "none",
        }
    }
}

#[derive(Debug, Args)]
struct LogsArgs {
    /// Device uuid or numeric id
    device: String,
    /// Keep streaming new lines (Server-Sent Events) until interrupted
    #[arg(long, short = 'f')]
    follow: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RESIN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_path(cli: &Cli) -> Result<PathBuf> {
    match &cli.config {
        Some(p) => Ok(p.clone()),
        None => Ok(config::default_path()?),
    }
}

/// The API client from flags/env, falling back to the stored login.
fn connect(cli: &Cli) -> Result<Api> {
    let stored = if cli.api_url.is_some() && cli.api_key.is_some() {
        None
    } else {
        let path = config_path(cli)?;
        config::load(&path)?
    };
    let url = cli
        .api_url
        .clone()
        .or_else(|| stored.as_ref().map(|s| s.api_url.clone()))
        .ok_or_else(|| {
            anyhow!(
                "no API URL: run `resin login --api-url URL --api-key KEY` or set RESIN_API_URL"
            )
        })?;
    let key = cli
        .api_key
        .clone()
        .or_else(|| stored.as_ref().map(|s| s.api_key.clone()))
        .ok_or_else(|| {
            anyhow!(
                "no API key: run `resin login --api-url URL --api-key KEY` or set RESIN_API_KEY"
            )
        })?;
    Ok(Api::new(&url, &key, Duration::from_secs(cli.timeout)))
}

fn run(cli: Cli) -> Result<()> {
    match &cli.cmd {
        Cmd::Login => login(&cli),
        Cmd::Fleet(FleetCmd::Create { name, device_type }) => {
            let api = connect(&cli)?;
            let f = api
                .post(
                    "/v1/fleet",
                    &json!({"name": name, "device_type": device_type}),
                )
                .with_context(|| format!("creating fleet {name}"))?;
            if cli.json {
                print_json(&f)
            } else {
                println!(
                    "created fleet {} (id {}, uuid {})",
                    name,
                    cell(&f, "id"),
                    cell(&f, "uuid")
                );
                Ok(())
            }
        }
        Cmd::Fleet(FleetCmd::List) => {
            let api = connect(&cli)?;
            let fleets = api.list(&with_query("/v1/fleet", &[("$orderby", "id")]))?;
            print_list(
                cli.json,
                &fleets,
                &[
                    ("ID", "id"),
                    ("NAME", "name"),
                    ("DEVICE TYPE", "device_type"),
                    ("TARGET RELEASE", "target_release"),
                    ("TARGET OS", "target_os_version"),
                    ("UUID", "uuid"),
                ],
            )
        }
        Cmd::Device(DeviceCmd::List { fleet }) => {
            let api = connect(&cli)?;
            let path = match fleet {
                Some(name) => {
                    let f = fleet_by_name(&api, name)?;
                    with_query(
                        "/v1/device",
                        &[
                            ("$filter", &format!("fleet eq {}", id_of(&f)?)),
                            ("$orderby", "id"),
                        ],
                    )
                }
                None => with_query("/v1/device", &[("$orderby", "id")]),
            };
            let devices = api.list(&path)?;
            print_list(
                cli.json,
                &devices,
                &[
                    ("ID", "id"),
                    ("UUID", "uuid"),
                    ("NAME", "name"),
                    ("FLEET", "fleet"),
                    ("DEVICE TYPE", "device_type"),
                    ("ONLINE", "is_online"),
                    ("STATUS", "status"),
                    ("OS", "os_version"),
                    ("LAST SEEN", "last_seen"),
                ],
            )
        }
        Cmd::Env(EnvCmd::Set(a)) => env_set(&cli, a),
        Cmd::Release(ReleaseCmd::Create {
            fleet,
            compose,
            images,
            pin,
        }) => release_create(&cli, fleet, compose, images, *pin),
        Cmd::Os(OsCmd::Upload {
            device_type,
            version,
            bundle,
            image,
        }) => os_upload(&cli, device_type, version, bundle, image.as_deref()),
        Cmd::Os(OsCmd::Download {
            fleet,
            version,
            compression,
            output,
        }) => os_download(&cli, fleet, version, *compression, output),
        Cmd::Logs(a) => logs(&cli, a),
    }
}

fn login(cli: &Cli) -> Result<()> {
    let (Some(url), Some(key)) = (&cli.api_url, &cli.api_key) else {
        bail!("`resin login` needs --api-url and --api-key (or RESIN_API_URL and RESIN_API_KEY)");
    };
    let url = url.trim_end_matches('/').to_string();
    let api = Api::new(&url, key, Duration::from_secs(cli.timeout));
    api.list(&with_query("/v1/fleet", &[("$top", "1")]))
        .with_context(|| format!("checking the API key against {url}"))?;
    let path = config_path(cli)?;
    config::save(
        &path,
        &StoredLogin {
            api_url: url.clone(),
            api_key: key.clone(),
        },
    )?;
    if cli.json {
        print_json(&json!({"api_url": url, "config": path}))
    } else {
        println!("logged in to {url}; saved to {}", path.display());
        Ok(())
    }
}

fn id_of(v: &Value) -> Result<i64> {
    v.get("id")
        .and_then(Value::as_i64)
        .ok_or_else(|| anyhow!("the cloud answered an entity without an integer id: {v}"))
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.len() < 19 && s.bytes().all(|b| b.is_ascii_digit())
}

/// A fleet by name (or, failing that, by numeric id).
fn fleet_by_name(api: &Api, name: &str) -> Result<Value> {
    let found = api.list(&with_query(
        "/v1/fleet",
        &[("$filter", &format!("name eq {}", odata_str(name)))],
    ))?;
    if let Some(f) = found.into_iter().next() {
        return Ok(f);
    }
    if is_digits(name) {
        if let Ok(f) = api.get(&format!("/v1/fleet({name})")) {
            return Ok(f);
        }
    }
    bail!("no fleet named {name:?} (see `resin fleet list`)")
}

/// A device by uuid or numeric id.
fn device_by_ref(api: &Api, r: &str) -> Result<Value> {
    if is_digits(r) {
        match api.get(&format!("/v1/device({r})")) {
            Ok(d) => return Ok(d),
            Err(e) if e.status() == Some(404) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let found = api.list(&with_query(
        "/v1/device",
        &[("$filter", &format!("uuid eq {}", odata_str(r)))],
    ))?;
    found
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no device with uuid or id {r:?} (see `resin device list`)"))
}

/// A release by numeric id or uuid.
fn release_by_ref(api: &Api, r: &str) -> Result<Value> {
    if is_digits(r) {
        match api.get(&format!("/v1/release({r})")) {
            Ok(d) => return Ok(d),
            Err(e) if e.status() == Some(404) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let found = api.list(&with_query(
        "/v1/release",
        &[("$filter", &format!("uuid eq {}", odata_str(r)))],
    ))?;
    found
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no release with id or uuid {r:?}"))
}

fn valid_env_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(x) if x.is_ascii_alphabetic() || x == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

fn env_set(cli: &Cli, a: &EnvSet) -> Result<()> {
    if !valid_env_name(&a.name) {
        bail!(
            "invalid variable name {:?}: use letters, digits and _, not starting with a digit",
            a.name
        );
    }
    let api = connect(cli)?;
    let (resource, parent, owner_id, what) = if let Some(f) = &a.fleet {
        let fl = fleet_by_name(&api, f)?;
        ("fleet_env_var", "fleet", id_of(&fl)?, format!("fleet {f}"))
    } else if let Some(d) = &a.device {
        let dev = device_by_ref(&api, d)?;
        (
            "device_env_var",
            "device",
            id_of(&dev)?,
            format!("device {d}"),
        )
    } else if let (Some(s), Some(r)) = (&a.service, &a.release) {
        let rel = release_by_ref(&api, r)?;
        let rid = id_of(&rel)?;
        let svcs = api.list(&with_query(
            "/v1/service",
            &[(
                "$filter",
                &format!("release eq {rid} and name eq {}", odata_str(s)),
            )],
        ))?;
        let svc = svcs
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("release {r} has no service named {s:?}"))?;
        (
            "service_env_var",
            "service",
            id_of(&svc)?,
            format!("service {s} of release {r}"),
        )
    } else {
        bail!("say where to set it: --fleet, --device or --service with --release");
    };
    let find = || {
        api.list(&with_query(
            &format!("/v1/{resource}"),
            &[(
                "$filter",
                &format!("{parent} eq {owner_id} and name eq {}", odata_str(&a.name)),
            )],
        ))
    };
    let action = match find()?.first() {
        Some(existing) => {
            api.patch(
                &format!("/v1/{resource}({})", id_of(existing)?),
                &json!({"value": a.value}),
            )?;
            "updated"
        }
        None => {
            let body = json!({parent: owner_id, "name": a.name, "value": a.value});
            match api.post(&format!("/v1/{resource}"), &body) {
                Ok(_) => "created",
                // Someone created it between our look-up and our POST.
                Err(e) if e.status() == Some(409) => {
                    let again = find()?;
                    let existing = again.first().ok_or(e)?;
                    api.patch(
                        &format!("/v1/{resource}({})", id_of(existing)?),
                        &json!({"value": a.value}),
                    )?;
                    "updated"
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    if cli.json {
        print_json(
            &json!({"name": a.name, "value": a.value, "resource": resource, parent: owner_id, "action": action}),
        )
    } else {
        println!("{action} {} on {what}", a.name);
        Ok(())
    }
}

fn release_create(
    cli: &Cli,
    fleet: &str,
    compose_file: &Path,
    images: &[(String, String)],
    pin: bool,
) -> Result<()> {
    let mut overrides = BTreeMap::new();
    for (svc, r) in images {
        if overrides.insert(svc.clone(), r.clone()).is_some() {
            bail!("--image given twice for service {svc}");
        }
    }
    let text = std::fs::read_to_string(compose_file)
        .with_context(|| format!("reading {}", compose_file.display()))?;
    let composition = compose::composition(&text, &overrides)
        .with_context(|| format!("{} is not a usable compose file", compose_file.display()))?;
    let api = connect(cli)?;
    let f = fleet_by_name(&api, fleet)?;
    let fid = id_of(&f)?;
    let rel = api
        .post(
            "/v1/release",
            &json!({"fleet": fid, "composition": composition}),
        )
        .with_context(|| format!("creating a release of fleet {fleet}"))?;
    let rid = id_of(&rel)?;
    if pin {
        api.patch(
            &format!("/v1/fleet({fid})"),
            &json!({"target_release": rid}),
        )
        .with_context(|| format!("setting release {rid} as the target of fleet {fleet}"))?;
    }
    if cli.json {
        print_json(&json!({"id": rid, "uuid": rel.get("uuid"), "fleet": fid, "pinned": pin}))
    } else {
        println!(
            "created release {rid} (uuid {}) of fleet {fleet}",
            cell(&rel, "uuid")
        );
        if pin {
            println!("fleet {fleet} now targets release {rid}");
        }
        Ok(())
    }
}

fn bar(len: Option<u64>, msg: String) -> ProgressBar {
    let pb = match len {
        Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let tmpl = if len.is_some() {
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "{msg} {spinner} {bytes} {bytes_per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(tmpl) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(msg);
    pb
}

/// Hashes what passes through.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// PUTs a file with a progress bar; returns its sha256 (hex) and size.
fn upload_file(api: &Api, path: &str, file: &Path, label: &str) -> Result<(String, u64)> {
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let len = f
        .metadata()
        .with_context(|| format!("reading {}", file.display()))?
        .len();
    let pb = bar(Some(len), label.to_string());
    let mut r = HashingReader {
        inner: pb.wrap_read(f),
        hash: Sha256::new(),
    };
    let res = api.put_raw(path, &mut r, len);
    pb.finish_and_clear();
    res.with_context(|| format!("uploading {}", file.display()))?;
    Ok((hex::encode(r.hash.finalize()), len))
}

fn os_upload(
    cli: &Cli,
    device_type: &str,
    version: &str,
    bundle: &Path,
    image: Option<&Path>,
) -> Result<()> {
    // Fail on unreadable files before creating anything in the cloud.
    for p in std::iter::once(bundle).chain(image) {
        let m = std::fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?;
        if !m.is_file() {
            bail!("{} is not a regular file", p.display());
        }
    }
    let api = connect(cli)?;
    let rel = api
        .post(
            "/v1/os_release",
            &json!({"device_type": device_type, "version": version}),
        )
        .with_context(|| format!("creating OS release {version} for {device_type}"))?;
    let id = id_of(&rel)?;
    let (sha, size) = upload_file(
        &api,
        &format!("/v1/os_release({id})/bundle"),
        bundle,
        "bundle",
    )?;
    let image_size = match image {
        Some(img) => {
            Some(upload_file(&api, &format!("/v1/os_release({id})/image"), img, "image")?.1)
        }
        None => None,
    };
    // The cloud hashes what it stored; compare when it tells us.
    let stored = api.get(&format!("/v1/os_release({id})"))?;
    if let Some(remote) = stored.get("bundle_sha256").and_then(Value::as_str) {
        if !remote.eq_ignore_ascii_case(&sha) {
            bail!("the cloud stored a bundle with sha256 {remote}, but the local file has {sha}");
        }
    }
    if cli.json {
        print_json(
            &json!({"id": id, "device_type": device_type, "version": version,
            "bundle_sha256": sha, "bundle_size": size, "image_size": image_size}),
        )
    } else {
        println!("uploaded OS release {version} for {device_type} (id {id}); bundle {size} bytes, sha256 {sha}");
        if let Some(n) = image_size {
            println!("image {n} bytes");
        }
        Ok(())
    }
}

fn os_download(cli: &Cli, fleet: &str, version: &str, c: Compression, output: &Path) -> Result<()> {
    let api = connect(cli)?;
    let f = fleet_by_name(&api, fleet)?;
    let fid = id_of(&f)?.to_string();
    let path = with_query(
        "/v1/os/download",
        &[
            ("fleet", &fid),
            ("version", version),
            ("compression", c.as_str()),
        ],
    );
    let (len, body) = api.get_stream(&path, "application/octet-stream")?;
    let mut out = AtomicFile::create(output, 0o644)
        .with_context(|| format!("creating a temp file next to {}", output.display()))?;
    let pb = bar(len, format!("{}", output.display()));
    let mut reader = pb.wrap_read(body);
    let copied = std::io::copy(&mut reader, out.file()?);
    pb.finish_and_clear();
    let n = copied.with_context(|| format!("downloading into {}", output.display()))?;
    if let Some(want) = len {
        if n != want {
            bail!(
                "download ended after {n} of {want} bytes; {} left untouched",
                output.display()
            );
        }
    }
    out.commit()
        .with_context(|| format!("writing {}", output.display()))?;
    if cli.json {
        print_json(&json!({"output": output, "bytes": n, "compression": c.as_str()}))
    } else {
        println!(
            "wrote {} ({n} bytes, compression {})",
            output.display(),
            c.as_str()
        );
        Ok(())
    }
}

fn format_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000);
    match t.map(|t| t.format(&time::format_description::well_known::Rfc3339)) {
        Ok(Ok(s)) => s,
        _ => ms.to_string(),
    }
}

fn print_log(json: bool, l: &LogLine) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(l)?)?;
    } else {
        let who = match (&l.service, l.is_system) {
            (Some(s), _) => s.as_str(),
            (None, true) => "system",
            (None, false) => "-",
        };
        let err = if l.is_stderr { " (stderr)" } else { "" };
        writeln!(out, "{} [{who}]{err} {}", format_ms(l.timestamp), l.message)?;
    }
    out.flush()?;
    Ok(())
}

fn logs(cli: &Cli, a: &LogsArgs) -> Result<()> {
    let api = connect(cli)?;
    let dev = device_by_ref(&api, &a.device)?;
    let id = id_of(&dev)?;
    if !a.follow {
        let lines = api.list(&format!("/v1/device({id})/logs"))?;
        for v in lines {
            let l: LogLine =
                serde_json::from_value(v).context("the cloud sent a malformed log line")?;
            print_log(cli.json, &l)?;
        }
        return Ok(());
    }
    let (_, body) = api.get_stream(
        &with_query(&format!("/v1/device({id})/logs"), &[("follow", "true")]),
        "text/event-stream",
    )?;
    let mut data = String::new();
    for line in BufReader::new(body).lines() {
        let line = line.context("reading the log stream")?;
        if line.is_empty() {
            if !data.is_empty() {
                match serde_json::from_str::<LogLine>(&data) {
                    Ok(l) => print_log(cli.json, &l)?,
                    Err(e) => tracing::warn!("skipping a malformed event: {e}"),
                }
                data.clear();
            }
        } else if let Some(d) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(d.strip_prefix(' ').unwrap_or(d));
        }
        // Comments (":keep-alive"), event: and id: lines carry nothing for us.
    }
    Ok(())
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn print_list(json: bool, items: &[Value], cols: &[(&str, &str)]) -> Result<()> {
    if json {
        return print_json(&items);
    }
    let headers: Vec<&str> = cols.iter().map(|c| c.0).collect();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|it| cols.iter().map(|c| cell(it, c.1)).collect())
        .collect();
    print!("{}", render(&headers, &rows));
    Ok(())
}
