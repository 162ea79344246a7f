//! The `git-push` scenario (issue #12): the host's git pushes a two-service
//! project over HTTPS (HTTP Basic, the user name and an API key) to the
//! cloud the device is provisioned to; the cloud's builder builds it for
//! arm64 (one `RUN` step runs under binfmt's qemu-user) `FROM` the busybox
//! base image of scripts/lib/base-image.sh, pushes it to the loopback
//! registry and pins the release; the device runs it and the cloud shows
//! both services running. A second push with a failing Dockerfile is
//! rejected with the builder's error line, and the device keeps the built
//! release. Then the fleet goes back to the release of the earlier
//! scenarios, so the OS-update scenarios after this one find their apps.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::json;

use super::Ctx;

/// The built project's services.
const BUILT: &[&str] = &["hello", "counter"];

/// What the failing push's Dockerfile runs, and the builder's error line
/// for it (as `git push` prints it).
const FAILING_RUN: &str = "echo about to fail && exit 3";
const FAILING_LINE: &str = "remote: build failed: service hello: the build failed: The command '/bin/sh -c echo about to fail && exit 3' returned a non-zero code: 3";

/// The two-service project; `hello_run` is hello's `RUN` step.
fn project(base: &str, hello_run: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "docker-compose.yml",
            "services:\n  hello:\n    build: ./hello\n  counter:\n    build: ./counter\n".into(),
        ),
        (
            "hello/Dockerfile",
            format!(
                "FROM {base}\nRUN {hello_run}\n\
                 CMD [\"sh\", \"-c\", \"while true; do echo \\\"hello, built on $(cat /arch)\\\"; sleep 2; done\"]\n"
            ),
        ),
        (
            "counter/Dockerfile",
            format!("FROM {base}\nCOPY count.sh /count.sh\nCMD [\"sh\", \"/count.sh\"]\n"),
        ),
        (
            "counter/count.sh",
            "i=0\nwhile true; do i=$((i+1)); echo \"counter $i\"; sleep 2; done\n".into(),
        ),
    ]
}

/// Runs the host's git in `dir`, without the user's or the system's
/// config and never prompting; returns (success, stderr).
fn git(dir: &Path, ca: &Path, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=resin-qemu",
            "-c",
            "user.email=resin-qemu@example.invalid",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        // The cloud's own CA (git's `-c http.sslCAInfo` did not reach
        // git-remote-https's verification here; the variable does).
        .env("GIT_SSL_CAINFO", ca)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .with_context(|| format!("running git {args:?}"))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Writes `files` into the work tree and commits them.
fn commit(dir: &Path, ca: &Path, files: &[(&str, String)], msg: &str) -> anyhow::Result<()> {
    for (p, text) in files {
        let f = dir.join(p);
        if let Some(parent) = f.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&f, text).with_context(|| format!("writing {}", f.display()))?;
    }
    for args in [
        &["add", "-A"][..],
        &["commit", "-q", "--allow-empty", "-m", msg][..],
    ] {
        let (ok, err) = git(dir, ca, args)?;
        if !ok {
            bail!("git {args:?} failed: {err}");
        }
    }
    Ok(())
}

/// A push's output for failure messages: its last 60 lines.
fn remote_lines(out: &str) -> String {
    let lines: Vec<&str> = out.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

impl Ctx {
    pub(crate) fn git_push(&mut self) -> anyhow::Result<()> {
        self.vm()?;
        let (device, _) = self.device()?;
        let fleet = self
            .fleet
            .ok_or_else(|| anyhow!("no fleet (run provision first)"))?;
        let builder = self.cloud.builder.clone().ok_or_else(|| {
            anyhow!(
                "the cloud has no builder: {} is unset",
                crate::apps::DOCKER_HOST_VAR
            )
        })?;
        // The base image, made from Debian's arm64 .debs and pushed to the
        // registry the builder pulls from (the host's side of it).
        let t = Instant::now();
        let script = self.os.inputs.ws.root.join("scripts/lib/base-image.sh");
        let out = Command::new("bash")
            .arg("-c")
            .arg("source \"$1\" && push_base_image \"$2\" \"$3\" \"$4\"")
            .arg("bash")
            .arg(&script)
            .arg(&builder.registry)
            .arg(&builder.docker_host)
            .arg(self.os.inputs.ws.cache.join("base-image"))
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "push_base_image failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let base = format!("{}/library/busybox", builder.registry);
        println!(
            "  base image {} pushed in {:.0} s",
            String::from_utf8_lossy(&out.stdout).trim(),
            t.elapsed().as_secs_f64()
        );

        let host = self
            .cloud
            .url
            .strip_prefix("https://")
            .ok_or_else(|| anyhow!("the cloud's URL {} is not https", self.cloud.url))?;
        let url = format!(
            "https://{}:{}@{host}/git/{fleet}.git",
            self.cloud.username, self.cloud.api_key
        );
        let shown = url.replace(&self.cloud.api_key, "<api key>");
        let dir = self.work.join("git-push");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca = self.cloud.ca.clone();
        let (ok, err) = git(&dir, &ca, &["init", "-q"])?;
        if !ok {
            bail!("git init: {err}");
        }

        // A good push: built, pinned, run by the device.
        let target_before = self.api.get(&format!("/v1/fleet({fleet})"))?["target_release"].clone();
        commit(
            &dir,
            &ca,
            &project(
                &base,
                "uname -m > /arch && echo \"RUN step ran on $(cat /arch)\"",
            ),
            "two services",
        )?;
        let t = Instant::now();
        let (ok, out) = git(&dir, &ca, &["push", &url, "HEAD:main"])?;
        let push_secs = t.elapsed().as_secs_f64();
        if !ok {
            bail!(
                "git push to {shown} failed after {push_secs:.0} s:\n{}",
                remote_lines(&out)
            );
        }
        // The RUN step ran as arm64 code on the amd64 host (binfmt).
        if !out.contains("remote: [hello] RUN step ran on aarch64") {
            bail!(
                "the push's output lacks hello's RUN step on aarch64:\n{}",
                remote_lines(&out)
            );
        }
        let done = out
            .lines()
            .find_map(|l| l.split("remote: build succeeded: release ").nth(1))
            .ok_or_else(|| anyhow!("no `build succeeded` line:\n{}", remote_lines(&out)))?;
        let rid: i64 = done
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("the release id in {done:?}"))?;
        println!(
            "  git push to {shown} took {push_secs:.0} s: release {rid} (was {target_before})"
        );
        let target = self.api.get(&format!("/v1/fleet({fleet})"))?["target_release"].clone();
        if target != rid {
            bail!("the fleet's target is {target}, not the built release {rid}");
        }
        let release = self.api.get(&format!("/v1/release({rid})"))?;
        let comp = release["composition"].to_string();
        if !comp.contains(&format!("{}/", builder.device_registry)) {
            bail!(
                "the release does not name its images on the device's registry {}: {comp}",
                builder.device_registry
            );
        }
        let t = Instant::now();
        self.wait_running(rid, BUILT)?;
        let hello = self.wait_log("from the built hello", |l| {
            l["service"] == "hello"
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m == "hello, built on aarch64")
        })?;
        println!(
            "  the device ran it {:.0} s after the push; hello: {}",
            t.elapsed().as_secs_f64(),
            hello["message"]
        );
        let ruuid = self.release_uuid(rid)?;

        // A failing Dockerfile: the push is rejected with the builder's
        // error, and the device keeps the built release.
        commit(&dir, &ca, &project(&base, FAILING_RUN), "broken")?;
        let t = Instant::now();
        let (ok, out) = git(&dir, &ca, &["push", &url, "HEAD:main"])?;
        if ok {
            bail!(
                "the push of a failing Dockerfile succeeded:\n{}",
                remote_lines(&out)
            );
        }
        if !out.contains(FAILING_LINE) || !out.contains("pre-receive hook declined") {
            bail!(
                "the rejected push does not show the builder's error line {FAILING_LINE:?}:\n{}",
                remote_lines(&out)
            );
        }
        println!(
            "  the failing push was rejected in {:.0} s: {}",
            t.elapsed().as_secs_f64(),
            FAILING_LINE
        );
        let target = self.api.get(&format!("/v1/fleet({fleet})"))?["target_release"].clone();
        if target != rid {
            bail!("after the rejected push the fleet's target is {target}, not {rid}");
        }
        // Three of the device's polls later it still runs the built release.
        std::thread::sleep(Duration::from_secs(15));
        for s in BUILT {
            let r = self.service_report(s)?;
            if r["release_uuid"] != ruuid.as_str() || r["status"] != "running" {
                bail!("after the rejected push the device reports {s} as {r}, not running release {ruuid}");
            }
        }
        let d = self.api.get(&format!("/v1/device({device})"))?;
        println!(
            "  15 s later the device still runs release {rid} (is_online {})",
            d["is_online"]
        );

        // Back to the earlier scenarios' release, for the scenarios after this one.
        if let Some(prev) = self.release {
            let t = Instant::now();
            self.api.patch(
                &format!("/v1/fleet({fleet})"),
                &json!({"target_release": prev}),
            )?;
            self.wait_running(prev, super::SERVICES)?;
            println!(
                "  the fleet is back on release {prev} ({:.0} s)",
                t.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }
}
