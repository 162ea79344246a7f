//! `resin push FLEET [DIR]`: sends a gzipped tar of the project (minus what
//! its `.dockerignore` leaves out) to `POST /v1/build` and shows the build's
//! NDJSON log as it comes, one progress line per service on a terminal.
//! Ctrl-C ends the process, the connection closes, and the cloud cancels the
//! build. The exit status is 0 only when the build succeeded.
//! `resin release logs RELEASE` prints a release's stored build log.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Read};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use resin_api_types::build::{BuildLogLine, BuildState, DockerIgnore};
use resin_cli::api::with_query;
use resin_cli::args::{Cli, PushArgs};

use super::{connect, fleet_by_name, release_by_ref};

/// The gzipped tar of `dir`: every file and directory except what the
/// root `.dockerignore` excludes (Dockerfiles and compose files are always
/// sent). Symlinks are sent as links.
pub fn pack(dir: &Path) -> Result<Vec<u8>> {
    let ignore = match std::fs::read_to_string(dir.join(".dockerignore")) {
        Ok(t) => DockerIgnore::parse(&t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => DockerIgnore::default(),
        Err(e) => {
            return Err(e).with_context(|| format!("reading {}/.dockerignore", dir.display()))
        }
    };
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut t = tar::Builder::new(gz);
    t.follow_symlinks(false);
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let abs = if rel.is_empty() {
            dir.to_owned()
        } else {
            dir.join(&rel)
        };
        let mut entries: Vec<_> = std::fs::read_dir(&abs)
            .with_context(|| format!("reading {}", abs.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading {}", abs.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if r == ".git" {
                continue;
            }
            let ft = e.file_type()?;
            let always = name == "Dockerfile"
                || name == ".dockerignore"
                || name.starts_with("docker-compose.")
                || name.starts_with("compose.");
            if ft.is_dir() {
                if !ignore.excluded(&r) {
                    t.append_dir(&r, e.path())?;
                }
                stack.push(r);
                continue;
            }
            if ignore.excluded(&r) && !always {
                continue;
            }
            t.append_path_with_name(e.path(), &r)
                .with_context(|| format!("packing {}", e.path().display()))?;
        }
    }
    Ok(t.into_inner()?.finish()?)
}

pub fn push(cli: &Cli, a: &PushArgs) -> Result<()> {
    let api = connect(cli)?;
    let fleet = fleet_by_name(&api, &a.fleet)?;
    let id = fleet["id"]
        .as_i64()
        .ok_or_else(|| anyhow!("the cloud answered a fleet without an id"))?;
    let body = pack(&a.dir)?;
    eprintln!(
        "sending {} ({} KiB) to fleet {}",
        a.dir.display(),
        body.len() / 1024,
        fleet["name"].as_str().unwrap_or(&a.fleet)
    );
    let id_s = id.to_string();
    let mut params = vec![("fleet", id_s.as_str())];
    if a.nocache {
        params.push(("nocache", "true"));
    }
    if a.no_pin {
        params.push(("pin", "false"));
    }
    let (_, reader) =
        api.post_stream(&with_query("/v1/build", &params), "application/gzip", &body)?;
    follow(reader)
}

/// Shows the log lines; returns Ok only for a build that ended in success.
fn follow(reader: impl Read) -> Result<()> {
    let tty = std::io::stderr().is_terminal();
    let multi = MultiProgress::new();
    let mut bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let style = ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let mut last: Option<BuildLogLine> = None;
    for line in std::io::BufReader::new(reader).lines() {
        let line = line.context("reading the build log")?;
        if line.trim().is_empty() {
            continue;
        }
        let l: BuildLogLine = serde_json::from_str(&line)
            .with_context(|| format!("the cloud sent a log line that is not JSON: {line}"))?;
        match (&l.service, tty) {
            (Some(s), true) => {
                let bar = bars.entry(s.clone()).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new_spinner());
                    b.set_style(style.clone());
                    b.set_prefix(s.clone());
                    b.enable_steady_tick(std::time::Duration::from_millis(120));
                    b
                });
                bar.set_message(l.message.clone());
                if l.message.starts_with("image ") {
                    bar.finish_with_message(l.message.clone());
                }
            }
            (Some(s), false) => eprintln!("[{s}] {}", l.message),
            (None, _) => {
                let _ = multi.println(&l.message);
                if !tty {
                    eprintln!("{}", l.message);
                }
            }
        }
        if l.state.is_some_and(BuildState::is_final) {
            last = Some(l);
        }
    }
    for b in bars.values() {
        if !b.is_finished() {
            b.abandon();
        }
    }
    match last {
        Some(l) if l.state == Some(BuildState::Success) => {
            if let Some(r) = l.release {
                println!("{r}");
            }
            Ok(())
        }
        Some(l) => bail!("{}", l.message),
        None => bail!("the build log ended before the build did"),
    }
}

pub fn release_logs(cli: &Cli, release: &str) -> Result<()> {
    let api = connect(cli)?;
    let r = release_by_ref(&api, release)?;
    let id = r["id"]
        .as_i64()
        .ok_or_else(|| anyhow!("the cloud answered a release without an id"))?;
    let (_, reader) = api.get_stream(&format!("/v1/release({id})/logs"), "application/x-ndjson")?;
    for line in std::io::BufReader::new(reader).lines() {
        let line = line.context("reading the build log")?;
        let Ok(l) = serde_json::from_str::<BuildLogLine>(&line) else {
            continue;
        };
        match l.service {
            Some(s) => println!("[{s}] {}", l.message),
            None => println!("{}", l.message),
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn pack_honours_dockerignore_but_keeps_build_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join(".dockerignore"),
            "*.log\nDockerfile\nnode_modules\n",
        )
        .unwrap();
        std::fs::write(d.path().join("Dockerfile"), "FROM x\n").unwrap();
        std::fs::write(d.path().join("a.log"), "no").unwrap();
        std::fs::create_dir_all(d.path().join("node_modules/x")).unwrap();
        std::fs::write(d.path().join("node_modules/x/i.js"), "no").unwrap();
        std::fs::create_dir_all(d.path().join(".git")).unwrap();
        std::fs::write(d.path().join(".git/HEAD"), "no").unwrap();
        std::fs::write(d.path().join("app.py"), "yes").unwrap();
        let gz = pack(d.path()).unwrap();
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"Dockerfile".to_string()), "{names:?}");
        assert!(names.contains(&"app.py".to_string()), "{names:?}");
        assert!(!names.iter().any(|n| n.ends_with(".log")), "{names:?}");
        assert!(
            !names.iter().any(|n| n.contains("node_modules/x/i.js")),
            "{names:?}"
        );
        assert!(!names.iter().any(|n| n.starts_with(".git")), "{names:?}");
    }

    #[test]
    fn follow_succeeds_only_on_a_success_line() {
        let ok = "{\"message\":\"building\",\"state\":\"building\"}\n{\"service\":\"web\",\"message\":\"Step 1/2\"}\n{\"message\":\"build succeeded\",\"state\":\"success\",\"release\":7}\n";
        follow(ok.as_bytes()).unwrap();
        let bad = "{\"message\":\"building\",\"state\":\"building\"}\n{\"message\":\"build failed: service web: boom\",\"state\":\"failed\",\"isError\":true}\n";
        assert_eq!(
            follow(bad.as_bytes()).unwrap_err().to_string(),
            "build failed: service web: boom"
        );
        let cut = "{\"message\":\"building\",\"state\":\"building\"}\n";
        assert!(follow(cut.as_bytes()).is_err());
    }
}
