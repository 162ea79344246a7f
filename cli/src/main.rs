//! `resin`: the command-line client of the resin cloud API (fleets, devices,
//! env vars, releases from compose files, OS uploads and downloads, logs).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use resin_api_types::LogLine;
use resin_cli::api::{odata_str, with_query, Api, ApiError};
use resin_cli::args::{
    self, Cli, Cmd, Compression, DeviceCmd, DeviceFilter, EnvCmd, EnvSet, FleetCmd, KeyCmd,
    LogsArgs, OsCmd, ProvisioningKeyCmd, ReleaseCmd, Shell, TagCmd, TagOwner, VarOwner,
};
use resin_cli::compose;
use resin_cli::config::{self, StoredLogin};
use resin_cli::table::{cell, render};
use resin_fsutil::AtomicFile;

mod device_cmd;
mod push_cmd;
mod rollout_cmd;
mod sessions_cmd;
mod ssh_cmd;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RESIN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    // clap exits with 2 on bad usage by itself.
    let cli = Cli::parse();
    let base = cli.api_url.clone();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(h) = hint(&e, base.as_deref()) {
                eprintln!("hint: {h}");
            }
            if e.downcast_ref::<Usage>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Bad usage that clap cannot see (exit code 2): what was wrong and what to
/// type instead.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

fn usage(msg: impl Into<String>) -> anyhow::Error {
    Usage(msg.into()).into()
}

/// What to do next after an error from the cloud, when its message alone
/// does not say.
fn hint(e: &anyhow::Error, url: Option<&str>) -> Option<String> {
    let api = e.chain().find_map(|c| c.downcast_ref::<ApiError>())?;
    Some(match api {
        e if e.is_tls() => "the cloud's TLS certificate is not trusted: give the CA that signed it with --ca FILE \
             (RESIN_CA; `resin-cloud init` writes <data-dir>/tls/ca.pem), or store it with `resin login --ca FILE`"
            .into(),
        ApiError::Transport { url, .. } => format!(
            "is resin-cloud running at {url}? Check --api-url / RESIN_API_URL or run `resin login` again"
        ),
        ApiError::Status { status: 401, .. } => {
            "the API key was refused (wrong, revoked or expired): store a working one with `resin login --api-url URL --api-key KEY`, or set RESIN_API_KEY".into()
        }
        ApiError::Status { status: 403, .. } => {
            "this key may not do that; use a user API key (see `resin key create`)".into()
        }
        ApiError::Status { status: 404, .. } => format!(
            "it does not exist or belongs to another user; list what you can see with `resin fleet list`, `resin devices` or `resin release list`{}",
            url.map(|u| format!(" (cloud {u})")).unwrap_or_default()
        ),
        _ => return None,
    })
}

fn config_path(cli: &Cli) -> Result<PathBuf> {
    match &cli.config {
        Some(p) => Ok(p.clone()),
        None => Ok(config::default_path()?),
    }
}

/// The API URL, key and CA file from flags/env, falling back to the stored login.
fn credentials(cli: &Cli) -> Result<(String, String, Option<PathBuf>)> {
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
            usage("no API URL: run `resin login --api-url URL --api-key KEY` or set RESIN_API_URL")
        })?;
    let key = cli
        .api_key
        .clone()
        .or_else(|| stored.as_ref().map(|s| s.api_key.clone()))
        .ok_or_else(|| {
            usage("no API key: run `resin login --api-url URL --api-key KEY` or set RESIN_API_KEY")
        })?;
    let ca = cli
        .ca
        .clone()
        .or_else(|| stored.as_ref().and_then(|s| s.ca.clone()));
    Ok((url, key, ca))
}

/// The API client from flags/env, falling back to the stored login.
fn connect(cli: &Cli) -> Result<Api> {
    let (url, key, ca) = credentials(cli)?;
    let tls = ca.as_deref().map(resin_cli::api::trust_only).transpose()?;
    Ok(Api::with_tls(
        &url,
        &key,
        Duration::from_secs(cli.timeout),
        tls,
    ))
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
        Cmd::Device(DeviceCmd::List(f)) | Cmd::Devices(f) => device_list(&cli, f),
        Cmd::Device(DeviceCmd::Show { device }) => device_show(&cli, device),
        Cmd::Device(DeviceCmd::Rename { device, name }) => device_rename(&cli, device, name),
        Cmd::Device(DeviceCmd::Pin { device, release }) => device_pin(&cli, device, Some(release)),
        Cmd::Device(DeviceCmd::Unpin { device }) => device_pin(&cli, device, None),
        Cmd::Device(DeviceCmd::Rm { devices }) => device_rm(&cli, devices),
        Cmd::Device(DeviceCmd::Move { device, fleet }) => device_cmd::move_to(&cli, device, fleet),
        Cmd::Device(DeviceCmd::Restart { device, service }) => {
            device_cmd::restart(&cli, device, service.as_deref())
        }
        Cmd::Device(DeviceCmd::Reboot { device }) => device_cmd::reboot(&cli, device),
        Cmd::Device(DeviceCmd::Actions { device }) => device_cmd::list(&cli, device),
        Cmd::Device(DeviceCmd::Sessions { device }) => sessions_cmd::list(&cli, device),
        Cmd::Whoami => whoami(&cli),
        Cmd::Tag(t) => tag(&cli, t),
        Cmd::Env(EnvCmd::List(o)) => env_list(&cli, o),
        Cmd::Env(EnvCmd::Rm { name, owner }) => env_rm(&cli, name, owner),
        Cmd::Release(ReleaseCmd::List { fleet }) => release_list(&cli, fleet.as_deref()),
        Cmd::Release(ReleaseCmd::Show { release }) => release_show(&cli, release),
        Cmd::Release(ReleaseCmd::Rm { release, force }) => release_rm(&cli, release, *force),
        Cmd::Key(k) => key(&cli, k),
        Cmd::ProvisioningKey(k) => provisioning_key(&cli, k),
        Cmd::Os(OsCmd::List { device_type }) => os_list(&cli, device_type.as_deref()),
        Cmd::Completions { shell } => {
            let sh = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(sh, &mut args::command(), "resin", &mut std::io::stdout());
            Ok(())
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
        Cmd::Rollout(r) => rollout_cmd::run(&cli, r),
        Cmd::Push(p) => push_cmd::push(&cli, p),
        Cmd::Release(ReleaseCmd::Logs { release }) => push_cmd::release_logs(&cli, release),
        Cmd::Ssh(a) => {
            let code = ssh_cmd::ssh(&cli, a)?;
            std::process::exit(code)
        }
        Cmd::Tunnel(a) => ssh_cmd::tunnel(&cli, a),
    }
}

fn login(cli: &Cli) -> Result<()> {
    let (Some(url), Some(key)) = (&cli.api_url, &cli.api_key) else {
        return Err(usage(
            "`resin login` needs --api-url and --api-key (or RESIN_API_URL and RESIN_API_KEY)",
        ));
    };
    let url = url.trim_end_matches('/').to_string();
    // Stored absolute, so later commands find it from any directory.
    let ca = match &cli.ca {
        Some(p) => {
            Some(std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))?)
        }
        None => None,
    };
    let tls = ca.as_deref().map(resin_cli::api::trust_only).transpose()?;
    let api = Api::with_tls(&url, key, Duration::from_secs(cli.timeout), tls);
    api.list(&with_query("/v1/fleet", &[("$top", "1")]))
        .with_context(|| format!("checking the API key against {url}"))?;
    let path = config_path(cli)?;
    config::save(
        &path,
        &StoredLogin {
            api_url: url.clone(),
            api_key: key.clone(),
            ca,
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
        .ok_or_else(|| anyhow!("no device with uuid or id {r:?} (see `resin devices`)"))
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

/// Where a variable lives, resolved: its resource, the field pointing at
/// the owner, the owner's id and how to name it to the user.
struct VarPlace {
    resource: &'static str,
    parent: &'static str,
    owner_id: i64,
    what: String,
}

fn var_place(api: &Api, o: &VarOwner) -> Result<VarPlace> {
    let (kind, parent, owner_id, what) = if let Some(f) = &o.fleet {
        let fl = fleet_by_name(api, f)?;
        ("fleet", "fleet", id_of(&fl)?, format!("fleet {f}"))
    } else if let Some(d) = &o.device {
        let dev = device_by_ref(api, d)?;
        ("device", "device", id_of(&dev)?, format!("device {d}"))
    } else if let (Some(s), Some(r)) = (&o.service, &o.release) {
        let rel = release_by_ref(api, r)?;
        let rid = id_of(&rel)?;
        let svcs = api.list(&with_query(
            "/v1/service",
            &[(
                "$filter",
                &format!("release eq {rid} and name eq {}", odata_str(s)),
            )],
        ))?;
        let svc = svcs.into_iter().next().ok_or_else(|| {
            anyhow!("release {r} has no service named {s:?} (see `resin release show {r}`)")
        })?;
        (
            "service",
            "service",
            id_of(&svc)?,
            format!("service {s} of release {r}"),
        )
    } else {
        return Err(usage(
            "say where: --fleet, --device or --service with --release",
        ));
    };
    let resource = match (kind, o.config_var) {
        ("fleet", false) => "fleet_env_var",
        ("fleet", true) => "fleet_config_var",
        ("device", false) => "device_env_var",
        ("device", true) => "device_config_var",
        ("service", false) => "service_env_var",
        _ => {
            return Err(usage(
                "--config-var works with --fleet or --device, not --service",
            ))
        }
    };
    Ok(VarPlace {
        resource,
        parent,
        owner_id,
        what,
    })
}

impl VarPlace {
    fn find(&self, api: &Api, name: &str) -> Result<Vec<Value>, ApiError> {
        api.list(&with_query(
            &format!("/v1/{}", self.resource),
            &[(
                "$filter",
                &format!(
                    "{} eq {} and name eq {}",
                    self.parent,
                    self.owner_id,
                    odata_str(name)
                ),
            )],
        ))
    }
}

fn check_env_name(name: &str) -> Result<()> {
    if valid_env_name(name) {
        Ok(())
    } else {
        Err(usage(format!(
            "invalid variable name {name:?}: use letters, digits and _, not starting with a digit"
        )))
    }
}

fn env_set(cli: &Cli, a: &EnvSet) -> Result<()> {
    check_env_name(&a.name)?;
    let api = connect(cli)?;
    let place = var_place(&api, &a.owner)?;
    let VarPlace {
        resource,
        parent,
        owner_id,
        ref what,
    } = place;
    let action = match place.find(&api, &a.name)?.first() {
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
                    let again = place.find(&api, &a.name)?;
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

fn env_list(cli: &Cli, o: &VarOwner) -> Result<()> {
    let api = connect(cli)?;
    let place = var_place(&api, o)?;
    let vars = api.list(&with_query(
        &format!("/v1/{}", place.resource),
        &[
            (
                "$filter",
                &format!("{} eq {}", place.parent, place.owner_id),
            ),
            ("$orderby", "name"),
        ],
    ))?;
    print_list(
        cli.json,
        &vars,
        &[("ID", "id"), ("NAME", "name"), ("VALUE", "value")],
    )
}

fn env_rm(cli: &Cli, name: &str, o: &VarOwner) -> Result<()> {
    check_env_name(name)?;
    let api = connect(cli)?;
    let place = var_place(&api, o)?;
    let found = place.find(&api, name)?;
    let Some(var) = found.first() else {
        bail!(
            "{} has no variable {name:?} (see `resin env list` with the same --fleet/--device/--service)",
            place.what
        );
    };
    let id = id_of(var)?;
    confirm(cli, &format!("remove {name} from {}", place.what))?;
    api.delete(&format!("/v1/{}({id})", place.resource))?;
    if cli.json {
        print_json(&json!({"removed": name, "resource": place.resource, "id": id}))
    } else {
        println!("removed {name} from {}", place.what);
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
    let mut out = AtomicFile::create(output, 0o644)?;
    let pb = bar(len, format!("{}", output.display()));
    let mut reader = pb.wrap_read(body);
    let copied = std::io::copy(&mut reader, out.file());
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
    out.commit()?;
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

/// The lines `resin logs` keeps: of the chosen services, at or after --since.
struct LogFilter {
    services: Vec<String>,
    since_ms: Option<i64>,
}

impl LogFilter {
    fn keeps(&self, l: &LogLine) -> bool {
        let svc_ok = self.services.is_empty()
            || self.services.iter().any(|s| match &l.service {
                Some(x) => x == s,
                None => l.is_system && s == "system",
            });
        svc_ok && self.since_ms.is_none_or(|t| l.timestamp >= t)
    }
}

fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(i64::MAX)
}

fn logs(cli: &Cli, a: &LogsArgs) -> Result<()> {
    let since_ms = match &a.since {
        Some(s) => Some(resin_cli::since::parse_since(s, now_ms()).map_err(usage)?),
        None => None,
    };
    let filter = LogFilter {
        services: a.service.clone(),
        since_ms,
    };
    let api = connect(cli)?;
    let dev = device_by_ref(&api, &a.device)?;
    let id = id_of(&dev)?;
    let count = a.tail.map(|n| n.to_string());
    let mut params: Vec<(&str, &str)> = Vec::new();
    if let Some(c) = &count {
        params.push(("count", c));
    }
    if !a.follow {
        let lines = api.list(&with_query(&format!("/v1/device({id})/logs"), &params))?;
        for v in lines {
            let l: LogLine =
                serde_json::from_value(v).context("the cloud sent a malformed log line")?;
            if filter.keeps(&l) {
                print_log(cli.json, &l)?;
            }
        }
        return Ok(());
    }
    params.push(("follow", "true"));
    let (_, body) = api.get_stream(
        &with_query(&format!("/v1/device({id})/logs"), &params),
        "text/event-stream",
    )?;
    let mut data = String::new();
    for line in BufReader::new(body).lines() {
        let line = line.context("reading the log stream")?;
        if line.is_empty() {
            if !data.is_empty() {
                match serde_json::from_str::<LogLine>(&data) {
                    Ok(l) if filter.keeps(&l) => print_log(cli.json, &l)?,
                    Ok(_) => {}
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

/// Asks before a destructive change. `--yes` skips the question; without it
/// a non-terminal stdin is refused (exit 2) rather than read.
fn confirm(cli: &Cli, question: &str) -> Result<()> {
    if cli.yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(usage(format!(
            "not going to {question} without asking, and stdin is not a terminal: add --yes"
        )));
    }
    eprint!("{question}? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .context("reading the answer")?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        bail!("cancelled; nothing was changed")
    }
}

/// Parses `KEY=VALUE` (or `KEY`) of `--tag`.
fn split_tag(t: &str) -> (&str, Option<&str>) {
    match t.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (t, None),
    }
}

fn device_list(cli: &Cli, f: &DeviceFilter) -> Result<()> {
    let api = connect(cli)?;
    let mut filters = Vec::new();
    if let Some(name) = &f.fleet {
        let fl = fleet_by_name(&api, name)?;
        filters.push(format!("fleet eq {}", id_of(&fl)?));
    }
    if let Some(s) = &f.status {
        filters.push(format!("status eq {}", odata_str(s)));
    }
    if f.online {
        filters.push("is_online eq true".into());
    }
    if f.offline {
        filters.push("is_online eq false".into());
    }
    // Tags: the ids of the devices carrying each, intersected.
    let mut tagged: Option<std::collections::BTreeSet<i64>> = None;
    for t in &f.tags {
        let (k, v) = split_tag(t);
        if k.is_empty() {
            return Err(usage(format!("--tag {t:?}: give KEY=VALUE or KEY")));
        }
        let mut q = format!("tag_key eq {}", odata_str(k));
        if let Some(v) = v {
            q.push_str(&format!(" and value eq {}", odata_str(v)));
        }
        let rows = api.list(&with_query(
            "/v1/device_tag",
            &[("$filter", &q), ("$select", "device")],
        ))?;
        let ids: std::collections::BTreeSet<i64> = rows
            .iter()
            .filter_map(|r| r.get("device").and_then(Value::as_i64))
            .collect();
        tagged = Some(match tagged {
            None => ids,
            Some(prev) => prev.intersection(&ids).copied().collect(),
        });
    }
    let mut params: Vec<(&str, String)> = vec![("$orderby", "id".into())];
    if !filters.is_empty() {
        params.push(("$filter", filters.join(" and ")));
    }
    let p: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut devices = api.list(&with_query("/v1/device", &p))?;
    if let Some(ids) = tagged {
        devices.retain(|d| {
            d.get("id")
                .and_then(Value::as_i64)
                .is_some_and(|i| ids.contains(&i))
        });
    }
    // Fleet names for people; the fleets are the caller's own, so few.
    let fleets = api.list(&with_query("/v1/fleet", &[("$select", "id,name")]))?;
    for d in &mut devices {
        let name = fleets
            .iter()
            .find(|f| f.get("id").is_some_and(|i| Some(i) == d.get("fleet")))
            .and_then(|f| f.get("name").cloned())
            .unwrap_or(Value::Null);
        if let Some(o) = d.as_object_mut() {
            o.insert("fleet_name".into(), name);
        }
    }
    print_list(
        cli.json,
        &devices,
        &[
            ("ID", "id"),
            ("UUID", "uuid"),
            ("NAME", "name"),
            ("FLEET", "fleet_name"),
            ("DEVICE TYPE", "device_type"),
            ("ONLINE", "is_online"),
            ("STATUS", "status"),
            ("OS", "os_version"),
            ("LAST SEEN", "last_seen"),
        ],
    )
}

fn tags_of(api: &Api, resource: &str, parent: &str, id: i64) -> Result<Vec<Value>> {
    Ok(api.list(&with_query(
        &format!("/v1/{resource}"),
        &[
            ("$filter", &format!("{parent} eq {id}")),
            ("$orderby", "tag_key"),
        ],
    ))?)
}

fn device_show(cli: &Cli, r: &str) -> Result<()> {
    let api = connect(cli)?;
    let mut dev = device_by_ref(&api, r)?;
    let id = id_of(&dev)?;
    let fleet = match dev.get("fleet").and_then(Value::as_i64) {
        Some(fid) => Some(api.get(&format!("/v1/fleet({fid})"))?),
        None => None,
    };
    let pinned = match dev.get("pinned_release").and_then(Value::as_i64) {
        Some(rid) => Some(api.get(&format!("/v1/release({rid})"))?),
        None => None,
    };
    let tags = tags_of(&api, "device_tag", "device", id)?;
    let tag_map: serde_json::Map<String, Value> = tags
        .iter()
        .map(|t| {
            (
                cell(t, "tag_key"),
                t.get("value").cloned().unwrap_or(Value::Null),
            )
        })
        .collect();
    if let Some(o) = dev.as_object_mut() {
        o.insert(
            "fleet_name".into(),
            fleet
                .as_ref()
                .and_then(|f| f.get("name").cloned())
                .unwrap_or(Value::Null),
        );
        o.insert("tags".into(), Value::Object(tag_map.clone()));
    }
    if cli.json {
        return print_json(&dev);
    }
    let target_release = match (&pinned, &fleet) {
        (Some(p), _) => format!("{} (pinned, uuid {})", cell(p, "id"), cell(p, "uuid")),
        (None, Some(f)) if f.get("target_release").is_some_and(Value::is_i64) => {
            format!("{} (the fleet's target)", cell(f, "target_release"))
        }
        _ => "-".into(),
    };
    let target_os = match (dev.get("target_os_version"), &fleet) {
        (Some(Value::String(v)), _) => format!("{v} (device)"),
        (_, Some(f)) if f.get("target_os_version").is_some_and(Value::is_string) => {
            format!("{} (the fleet's target)", cell(f, "target_os_version"))
        }
        _ => "-".into(),
    };
    let rows: Vec<(&str, String)> = vec![
        ("UUID", cell(&dev, "uuid")),
        ("ID", cell(&dev, "id")),
        ("NAME", cell(&dev, "name")),
        (
            "FLEET",
            format!("{} (id {})", cell(&dev, "fleet_name"), cell(&dev, "fleet")),
        ),
        ("DEVICE TYPE", cell(&dev, "device_type")),
        ("ONLINE", cell(&dev, "is_online")),
        ("STATUS", cell(&dev, "status")),
        ("LAST SEEN", cell(&dev, "last_seen")),
        ("IP ADDRESS", cell(&dev, "ip_address")),
        ("OS", cell(&dev, "os_version")),
        ("SUPERVISOR", cell(&dev, "supervisor_version")),
        ("TARGET RELEASE", target_release),
        ("TARGET OS", target_os),
        (
            "OS UPDATE",
            format!(
                "{} {}",
                cell(&dev, "os_update_state"),
                match dev.get("os_update_reason") {
                    Some(Value::String(r)) => format!("({r})"),
                    _ => String::new(),
                }
            )
            .trim()
            .to_string(),
        ),
        ("BOOT SLOT", cell(&dev, "boot_slot")),
        (
            "TAGS",
            if tag_map.is_empty() {
                "-".into()
            } else {
                tags.iter()
                    .map(|t| format!("{}={}", cell(t, "tag_key"), cell(t, "value")))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        ("CREATED", cell(&dev, "created_at")),
    ];
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    for (k, v) in rows {
        writeln!(out, "{k:<w$}  {v}")?;
    }
    Ok(())
}

fn device_rename(cli: &Cli, r: &str, name: &str) -> Result<()> {
    let api = connect(cli)?;
    let dev = device_by_ref(&api, r)?;
    let id = id_of(&dev)?;
    api.patch(&format!("/v1/device({id})"), &json!({"name": name}))
        .with_context(|| format!("renaming device {r}"))?;
    if cli.json {
        print_json(&json!({"id": id, "uuid": dev.get("uuid"), "name": name}))
    } else {
        println!("renamed device {} to {name}", cell(&dev, "uuid"));
        Ok(())
    }
}

fn device_pin(cli: &Cli, r: &str, release: Option<&String>) -> Result<()> {
    let api = connect(cli)?;
    let dev = device_by_ref(&api, r)?;
    let id = id_of(&dev)?;
    let rid = match release {
        Some(rel) => Some(id_of(&release_by_ref(&api, rel)?)?),
        None => None,
    };
    api.patch(&format!("/v1/device({id})"), &json!({"pinned_release": rid}))
        .with_context(|| match rid {
            Some(rid) => format!(
                "pinning device {r} to release {rid} (a device can only be pinned to a release of its own fleet: see `resin release list --fleet {}`)",
                cell(&dev, "fleet")
            ),
            None => format!("unpinning device {r}"),
        })?;
    if cli.json {
        return print_json(&json!({"id": id, "uuid": dev.get("uuid"), "pinned_release": rid}));
    }
    match rid {
        Some(rid) => println!("device {} is pinned to release {rid}", cell(&dev, "uuid")),
        None => println!(
            "device {} follows its fleet's target release again",
            cell(&dev, "uuid")
        ),
    }
    Ok(())
}

fn device_rm(cli: &Cli, refs: &[String]) -> Result<()> {
    let api = connect(cli)?;
    // Resolve every device before removing any.
    let mut devs = Vec::new();
    for r in refs {
        devs.push(device_by_ref(&api, r)?);
    }
    let names: Vec<String> = devs
        .iter()
        .map(|d| format!("{} ({})", cell(d, "uuid"), cell(d, "name")))
        .collect();
    confirm(
        cli,
        &format!(
            "remove {} device{} from the cloud: {}",
            devs.len(),
            if devs.len() == 1 { "" } else { "s" },
            names.join(", ")
        ),
    )?;
    let mut removed = Vec::new();
    for d in &devs {
        let id = id_of(d)?;
        api.delete(&format!("/v1/device({id})"))
            .with_context(|| format!("removing device {}", cell(d, "uuid")))?;
        removed.push(d.get("uuid").cloned().unwrap_or(Value::Null));
        if !cli.json {
            println!("removed device {}", cell(d, "uuid"));
        }
    }
    if cli.json {
        print_json(&json!({ "removed": removed }))
    } else {
        Ok(())
    }
}

fn whoami(cli: &Cli) -> Result<()> {
    let api = connect(cli)?;
    let users = api
        .list("/v1/user")
        .with_context(|| format!("asking {} who this key belongs to", api.base()))?;
    let Some(u) = users.first() else {
        bail!("the cloud at {} shows no user for this key", api.base());
    };
    if cli.json {
        print_json(
            &json!({"id": u.get("id"), "username": u.get("username"), "api_url": api.base()}),
        )
    } else {
        println!(
            "{} (user id {}) at {}",
            cell(u, "username"),
            cell(u, "id"),
            api.base()
        );
        Ok(())
    }
}

/// A tag's owner, resolved: (resource, parent field, id, name for people).
fn tag_place(api: &Api, o: &TagOwner) -> Result<(&'static str, &'static str, i64, String)> {
    if let Some(f) = &o.fleet {
        let fl = fleet_by_name(api, f)?;
        Ok(("fleet_tag", "fleet", id_of(&fl)?, format!("fleet {f}")))
    } else if let Some(d) = &o.device {
        let dev = device_by_ref(api, d)?;
        Ok(("device_tag", "device", id_of(&dev)?, format!("device {d}")))
    } else {
        Err(usage("say whose tags: --fleet NAME or --device UUID"))
    }
}

fn tag(cli: &Cli, t: &TagCmd) -> Result<()> {
    let api = connect(cli)?;
    match t {
        TagCmd::List(o) => {
            let (res, parent, id, _) = tag_place(&api, o)?;
            let tags = tags_of(&api, res, parent, id)?;
            print_list(
                cli.json,
                &tags,
                &[("ID", "id"), ("KEY", "tag_key"), ("VALUE", "value")],
            )
        }
        TagCmd::Set { key, value, owner } => {
            if key.trim().is_empty() || value.trim().is_empty() {
                return Err(usage(
                    "a tag needs a non-empty key and value: `resin tag set KEY VALUE --device UUID`",
                ));
            }
            let (res, parent, id, what) = tag_place(&api, owner)?;
            let find = || {
                api.list(&with_query(
                    &format!("/v1/{res}"),
                    &[(
                        "$filter",
                        &format!("{parent} eq {id} and tag_key eq {}", odata_str(key)),
                    )],
                ))
            };
            let action = match find()?.first() {
                Some(existing) => {
                    api.patch(
                        &format!("/v1/{res}({})", id_of(existing)?),
                        &json!({"value": value}),
                    )?;
                    "updated"
                }
                None => {
                    api.post(
                        &format!("/v1/{res}"),
                        &json!({parent: id, "tag_key": key, "value": value}),
                    )?;
                    "set"
                }
            };
            if cli.json {
                print_json(&json!({"key": key, "value": value, parent: id, "action": action}))
            } else {
                println!("{action} tag {key}={value} on {what}");
                Ok(())
            }
        }
        TagCmd::Rm { key, owner } => {
            let (res, parent, id, what) = tag_place(&api, owner)?;
            let found = api.list(&with_query(
                &format!("/v1/{res}"),
                &[(
                    "$filter",
                    &format!("{parent} eq {id} and tag_key eq {}", odata_str(key)),
                )],
            ))?;
            let Some(tag) = found.first() else {
                bail!("{what} has no tag {key:?} (see `resin tag list`)");
            };
            let tid = id_of(tag)?;
            confirm(cli, &format!("remove tag {key} from {what}"))?;
            api.delete(&format!("/v1/{res}({tid})"))?;
            if cli.json {
                print_json(&json!({"removed": key, parent: id}))
            } else {
                println!("removed tag {key} from {what}");
                Ok(())
            }
        }
    }
}

fn release_list(cli: &Cli, fleet: Option<&str>) -> Result<()> {
    let api = connect(cli)?;
    let fleets = api.list(&with_query("/v1/fleet", &[("$orderby", "id")]))?;
    let mut params = vec![("$orderby", "id desc".to_string())];
    if let Some(name) = fleet {
        let f = fleet_by_name(&api, name)?;
        params.push(("$filter", format!("fleet eq {}", id_of(&f)?)));
    }
    let p: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut releases = api.list(&with_query("/v1/release", &p))?;
    for r in &mut releases {
        let fid = r.get("fleet").and_then(Value::as_i64);
        let f = fleets
            .iter()
            .find(|f| f.get("id").and_then(Value::as_i64) == fid);
        let is_target = f.is_some_and(|f| f.get("target_release") == r.get("id"));
        if let Some(o) = r.as_object_mut() {
            o.remove("composition");
            o.insert(
                "fleet_name".into(),
                f.and_then(|f| f.get("name").cloned())
                    .unwrap_or(Value::Null),
            );
            o.insert("is_fleet_target".into(), Value::Bool(is_target));
        }
    }
    print_list(
        cli.json,
        &releases,
        &[
            ("ID", "id"),
            ("UUID", "uuid"),
            ("FLEET", "fleet_name"),
            ("STATUS", "status"),
            ("TARGET", "is_fleet_target"),
            ("CREATED", "created_at"),
        ],
    )
}

fn release_show(cli: &Cli, r: &str) -> Result<()> {
    let api = connect(cli)?;
    let mut rel = release_by_ref(&api, r)?;
    let rid = id_of(&rel)?;
    let services = api.list(&with_query(
        "/v1/service",
        &[
            ("$filter", &format!("release eq {rid}")),
            ("$orderby", "name"),
        ],
    ))?;
    let images = api.list(&with_query(
        "/v1/image",
        &[("$filter", &format!("release eq {rid}"))],
    ))?;
    let mut svcs = Vec::new();
    for s in &services {
        let mut s = s.clone();
        let img = images
            .iter()
            .find(|i| i.get("service") == s.get("id"))
            .cloned();
        if let Some(o) = s.as_object_mut() {
            o.insert(
                "digest".into(),
                img.as_ref()
                    .and_then(|i| i.get("digest").cloned())
                    .unwrap_or(Value::Null),
            );
        }
        svcs.push(s);
    }
    if let Some(o) = rel.as_object_mut() {
        o.insert("services".into(), Value::Array(svcs.clone()));
    }
    if cli.json {
        return print_json(&rel);
    }
    println!("RELEASE  {} (uuid {})", rid, cell(&rel, "uuid"));
    let fleet_name = match rel.get("fleet").and_then(Value::as_i64) {
        Some(fid) => cell(&api.get(&format!("/v1/fleet({fid})"))?, "name"),
        None => "-".into(),
    };
    println!("FLEET    {fleet_name} (id {})", cell(&rel, "fleet"));
    println!("STATUS   {}", cell(&rel, "status"));
    println!("CREATED  {}", cell(&rel, "created_at"));
    println!();
    print_list(
        false,
        &svcs,
        &[
            ("SERVICE", "name"),
            ("IMAGE", "image"),
            ("DIGEST", "digest"),
        ],
    )
}

fn release_rm(cli: &Cli, r: &str, force: bool) -> Result<()> {
    let api = connect(cli)?;
    let rel = release_by_ref(&api, r)?;
    let rid = id_of(&rel)?;
    confirm(
        cli,
        &format!("remove release {rid} (uuid {})", cell(&rel, "uuid")),
    )?;
    let path = if force {
        format!("/v1/release({rid})?force=true")
    } else {
        format!("/v1/release({rid})")
    };
    match api.delete(&path) {
        Ok(()) => {}
        Err(e) if e.status() == Some(409) => {
            return Err(anyhow::Error::new(e).context(format!(
                "release {rid} is still in use: unpin those devices / set another fleet target, or run `resin release rm {rid} --force`"
            )))
        }
        Err(e) => return Err(e.into()),
    }
    if cli.json {
        print_json(&json!({"removed": rid}))
    } else {
        println!("removed release {rid}");
        Ok(())
    }
}

fn key(cli: &Cli, k: &KeyCmd) -> Result<()> {
    let api = connect(cli)?;
    match k {
        KeyCmd::Create {
            name,
            expires,
            read_only,
            fleet,
        } => {
            let mut body = json!({"name": name});
            if let Some(e) = expires {
                body["expires_at"] = json!(e);
            }
            if *read_only {
                body["scope"] = json!("read-only");
            }
            if let Some(f) = fleet {
                body["fleet"] = json!(id_of(&fleet_by_name(&api, f)?)?);
            }
            let created = api
                .post("/v1/api_key", &body)
                .with_context(|| format!("creating API key {name}"))?;
            if cli.json {
                return print_json(&created);
            }
            println!("created API key {name} (id {}):", cell(&created, "id"));
            println!("{}", cell(&created, "key"));
            eprintln!("store it now: the cloud keeps only its hash and cannot show it again");
            Ok(())
        }
        KeyCmd::List => {
            let keys = api.list(&with_query("/v1/api_key", &[("$orderby", "id")]))?;
            print_list(
                cli.json,
                &keys,
                &[
                    ("ID", "id"),
                    ("NAME", "name"),
                    ("SCOPE", "scope"),
                    ("FLEET", "fleet"),
                    ("CREATED", "created_at"),
                    ("EXPIRES", "expires_at"),
                ],
            )
        }
        KeyCmd::Revoke { id } => {
            let k = api
                .get(&format!("/v1/api_key({id})"))
                .with_context(|| format!("looking up API key {id} (see `resin key list`)"))?;
            confirm(
                cli,
                &format!(
                    "revoke API key {id} ({}); anything using it stops working",
                    cell(&k, "name")
                ),
            )?;
            api.delete(&format!("/v1/api_key({id})"))?;
            if cli.json {
                print_json(&json!({"revoked": id}))
            } else {
                println!("revoked API key {id} ({})", cell(&k, "name"));
                Ok(())
            }
        }
    }
}

fn provisioning_key(cli: &Cli, k: &ProvisioningKeyCmd) -> Result<()> {
    let api = connect(cli)?;
    match k {
        ProvisioningKeyCmd::Create {
            name,
            fleet,
            expires,
        } => {
            let f = fleet_by_name(&api, fleet)?;
            let mut body = json!({"name": name, "fleet": id_of(&f)?});
            if let Some(e) = expires {
                body["expires_at"] = json!(e);
            }
            let created = api
                .post("/v1/provisioning_key", &body)
                .with_context(|| format!("creating provisioning key {name} for fleet {fleet}"))?;
            if cli.json {
                return print_json(&created);
            }
            println!(
                "created provisioning key {name} (id {}) for fleet {fleet}:",
                cell(&created, "id")
            );
            println!("{}", cell(&created, "key"));
            eprintln!("store it now: the cloud keeps only its hash and cannot show it again");
            Ok(())
        }
        ProvisioningKeyCmd::List { fleet } => {
            let mut params = vec![("$orderby", "id".to_string())];
            if let Some(name) = fleet {
                let f = fleet_by_name(&api, name)?;
                params.push(("$filter", format!("fleet eq {}", id_of(&f)?)));
            }
            let p: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let keys = api.list(&with_query("/v1/provisioning_key", &p))?;
            print_list(
                cli.json,
                &keys,
                &[
                    ("ID", "id"),
                    ("NAME", "name"),
                    ("FLEET", "fleet"),
                    ("CREATED", "created_at"),
                    ("EXPIRES", "expires_at"),
                ],
            )
        }
        ProvisioningKeyCmd::Revoke { id } => {
            let k = api
                .get(&format!("/v1/provisioning_key({id})"))
                .with_context(|| {
                    format!("looking up provisioning key {id} (see `resin provisioning-key list`)")
                })?;
            confirm(
                cli,
                &format!(
                    "revoke provisioning key {id} ({}); devices can no longer register with it",
                    cell(&k, "name")
                ),
            )?;
            api.delete(&format!("/v1/provisioning_key({id})"))?;
            if cli.json {
                print_json(&json!({"revoked": id}))
            } else {
                println!("revoked provisioning key {id} ({})", cell(&k, "name"));
                Ok(())
            }
        }
    }
}

fn os_list(cli: &Cli, device_type: Option<&str>) -> Result<()> {
    let api = connect(cli)?;
    let mut params = vec![("$orderby", "device_type,id".to_string())];
    if let Some(dt) = device_type {
        params.push(("$filter", format!("device_type eq {}", odata_str(dt))));
    }
    let p: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let rels = api.list(&with_query("/v1/os_release", &p))?;
    print_list(
        cli.json,
        &rels,
        &[
            ("ID", "id"),
            ("DEVICE TYPE", "device_type"),
            ("VERSION", "version"),
            ("BUNDLE BYTES", "bundle_size"),
            ("IMAGE BYTES", "image_size"),
            ("CREATED", "created_at"),
        ],
    )
}
