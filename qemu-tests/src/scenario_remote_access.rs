//! The `remote-access` scenario: the supervisor's tunnel on the emulated
//! device, driven through the real `resin` CLI on the host (`resin ssh`,
//! `resin tunnel`, `resin device reboot`) against the harness's cloud.
//!
//! It reuses the booted device of provision/deploy/update-app and, like
//! them, leaves it running its apps (the reboot at its end is awaited).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};

use super::{Ctx, SERVICES};
use crate::host::{free_port, poll};

/// The test-only service the scenario adds: busybox httpd inside a
/// container, its port published on the device's loopback only (so the
/// tunnel's default allow-list, loopback only, reaches it).
pub const WEB_SERVICE: &str = "web";
/// The port published on the device's 127.0.0.1.
pub const WEB_PORT: u16 = 18080;

/// The poll interval (ms) the device gets while the reboot is timed: far
/// longer than the 5 s the reboot may take, so only the tunnel can bring it.
const SLOW_POLL_MS: u64 = 600_000;
/// The harness's poll interval (host.rs: `--poll-interval-ms 5000`).
const HARNESS_POLL_MS: u64 = 5_000;
/// A reboot through the tunnel must start within this of the request.
const REBOOT_WITHIN: Duration = Duration::from_secs(5);

/// The composition `current` plus [`WEB_SERVICE`] serving `token` on
/// 127.0.0.1:[`WEB_PORT`] of the device. The other services are unchanged,
/// so the supervisor keeps their containers.
pub fn with_web_service(current: &Value, image: &str, token: &str) -> anyhow::Result<Value> {
    let mut c = current.clone();
    let services = c["services"]
        .as_object_mut()
        .ok_or_else(|| anyhow!("the current release's composition has no services: {current}"))?;
    services.insert(
        WEB_SERVICE.into(),
        json!({
            "image": image,
            "command": ["/bin/sh", "-c", "trap 'exit 0' TERM; mkdir -p /www; echo \"$TOKEN\" > /www/index.html; busybox httpd -p 8080 -h /www; echo \"web serving on 8080\"; while true; do sleep 1; done"],
            "environment": {"TOKEN": token},
            "ports": [format!("127.0.0.1:{WEB_PORT}:8080")],
            "restart": "always"
        }),
    );
    Ok(c)
}

/// The `resin` CLI next to the runner (`RESIN_QEMU_BIN_DIR`, else the
/// runner's own directory: both are cargo's target/debug).
fn resin_bin() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("RESIN_QEMU_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::current_exe()
            .context("finding the runner's own path")?
            .parent()
            .map(|p| p.to_path_buf())
            .ok_or_else(|| anyhow!("the runner has no parent directory"))?,
    };
    let bin = dir.join("resin");
    if !bin.is_file() {
        bail!(
            "no resin CLI at {} (cargo build -p resin-cli)",
            bin.display()
        );
    }
    Ok(bin)
}

/// Waits for `child` at most `timeout`; kills it then.
fn wait_output(mut child: Child, timeout: Duration, what: &str) -> anyhow::Result<Output> {
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            bail!(
                "{what} did not end within {timeout:?}; stdout {:?}, stderr {:?}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One HTTP/1.0 GET of `/` through `port` on the host's loopback; the body.
fn http_get(port: u16) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    Ok(resp)
}

impl Ctx {
    /// A `resin` command against this run's cloud (its own CLI config file,
    /// so the user's login is neither read nor written).
    fn resin(&self) -> anyhow::Result<Command> {
        let mut c = Command::new(resin_bin()?);
        c.env("RESIN_API_URL", &self.cloud.url)
            .env("RESIN_API_KEY", &self.cloud.api_key)
            .env("RESIN_CA", &self.cloud.ca)
            .env("RESIN_CLI_CONFIG", self.work.join("cli-config.json"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Ok(c)
    }

    /// Runs `resin args…` to its end (at most `timeout`).
    fn run_resin(&self, args: &[&str], timeout: Duration) -> anyhow::Result<Output> {
        let what = format!("resin {}", args.join(" "));
        let child = self
            .resin()?
            .args(args)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        wait_output(child, timeout, &what)
    }

    /// The console from byte `from` on.
    fn console_since(&self, from: usize) -> String {
        let c = self.vm.as_ref().map(|v| v.console()).unwrap_or_default();
        c.get(from..).unwrap_or_default().to_owned()
    }

    fn console_len(&self) -> usize {
        self.vm.as_ref().map(|v| v.console().len()).unwrap_or(0)
    }

    pub(crate) fn remote_access(&mut self) -> anyhow::Result<()> {
        self.vm()?;
        let (id, uuid) = self.device()?;
        let t = Instant::now();
        let session_timeout = Duration::from_secs(120);

        // The supervisor's tunnel is up (it connects at start).
        let connected = poll(self.timeouts.online, Duration::from_secs(1), || {
            let c = self.vm.as_ref()?.console();
            c.lines()
                .find(|l| l.contains("tunnel connected"))
                .map(str::to_owned)
        })
        .ok_or_else(|| {
            let tries: Vec<String> = self
                .vm
                .as_ref()
                .map(|v| v.console())
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("tunnel"))
                .map(str::to_owned)
                .collect();
            anyhow!(
                "the supervisor's tunnel did not connect within {:?}; its tunnel lines:\n{}",
                self.timeouts.online,
                tries.join("\n")
            )
        })?;
        println!("  supervisor: {}", connected.trim());

        // 1. A command on the host OS: its output and exit code.
        let out = self.run_resin(
            &["ssh", &uuid, "--", "cat", "/etc/os-release"],
            session_timeout,
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        let want = format!("VERSION_ID={}", self.os_version);
        if out.status.code() != Some(0) || !text.lines().any(|l| l.replace('"', "") == want) {
            bail!(
                "resin ssh {uuid} -- cat /etc/os-release: exit {:?}, stdout {text:?} (wanted a line {want}), stderr {:?}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        println!(
            "  resin ssh -- cat /etc/os-release: exit 0, {} lines with {want}",
            text.lines().count()
        );
        let out = self.run_resin(&["ssh", &uuid, "--", "false"], session_timeout)?;
        if out.status.code() != Some(1) {
            bail!(
                "resin ssh {uuid} -- false: exit {:?} instead of 1, stderr {:?}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        println!("  resin ssh -- false: exit 1");

        // 2. A command in a service's container reads its volume: one line
        // per start of store, as many as store itself last said.
        let starts = self.store_starts(id)?;
        let out = self.run_resin(
            &[
                "ssh",
                &uuid,
                "--service",
                "store",
                "--",
                "cat",
                "/data/starts",
            ],
            session_timeout,
        )?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        if out.status.code() != Some(0)
            || lines.len() != starts
            || !lines.iter().all(|l| l.starts_with("start "))
        {
            bail!(
                "resin ssh {uuid} --service store -- cat /data/starts: exit {:?}, stdout {text:?} (store's log says starts={starts}), stderr {:?}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        println!("  resin ssh --service store -- cat /data/starts: {lines:?}");

        // 3. A port forward to a port served inside a container.
        let token = format!("resin-remote-access-{}", rand::random::<u64>());
        self.deploy_web(&token)?;
        let local = free_port()?;
        let mapping = format!("{local}:127.0.0.1:{WEB_PORT}");
        let mut tunnel = self
            .resin()?
            .args(["tunnel", &uuid, &mapping])
            .spawn()
            .context("starting resin tunnel")?;
        let got = poll(Duration::from_secs(60), Duration::from_millis(500), || {
            http_get(local).ok().filter(|r| r.contains(&token))
        });
        let _ = tunnel.kill();
        let tunnel_out = tunnel.wait_with_output()?;
        let got = got.ok_or_else(|| {
            anyhow!(
                "resin tunnel {uuid} {mapping}: no HTTP answer with {token} within 60 s; its stderr {:?}; last try {:?}",
                String::from_utf8_lossy(&tunnel_out.stderr),
                http_get(local).map_err(|e| e.to_string())
            )
        })?;
        println!(
            "  resin tunnel {mapping}: {}",
            got.lines().next().unwrap_or_default()
        );

        // 4. A reboot through the tunnel, with polls 10 min apart.
        self.reboot_through_tunnel(id, &uuid)?;
        println!("  remote-access took {:.0} s", t.elapsed().as_secs_f64());
        Ok(())
    }

    /// The count store last printed (`store … starts=N …`).
    fn store_starts(&self, id: i64) -> anyhow::Result<usize> {
        let lines = self.api.list(&format!("/v1/device({id})/logs"))?;
        lines
            .iter()
            .filter(|l| l["service"] == "store")
            .filter_map(|l| {
                let m = l["message"].as_str()?;
                let n = m
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("starts="))?;
                Some((l["timestamp"].as_i64()?, n.parse::<usize>().ok()?))
            })
            .max()
            .map(|(_, n)| n)
            .ok_or_else(|| anyhow!("store printed no starts= line (run deploy first)"))
    }

    /// A release of the current composition plus the web service; waits
    /// until every service runs it.
    fn deploy_web(&mut self, token: &str) -> anyhow::Result<()> {
        let fleet = self
            .fleet
            .ok_or_else(|| anyhow!("no fleet (run provision first)"))?;
        let current = self
            .release
            .ok_or_else(|| anyhow!("no release (run deploy first)"))?;
        let rel = self.api.get(&format!("/v1/release({current})"))?;
        let composition = match &rel["composition"] {
            Value::String(s) => serde_json::from_str(s).context("the release's composition")?,
            v => v.clone(),
        };
        let image = self
            .image
            .clone()
            .ok_or_else(|| anyhow!("no test image was pushed"))?;
        let doc = with_web_service(&composition, &image.guest_ref, token)?;
        let rel = self
            .api
            .post("/v1/release", &json!({"fleet": fleet, "composition": doc}))?;
        let rid = rel["id"].as_i64().context("release id")?;
        self.api.patch(
            &format!("/v1/fleet({fleet})"),
            &json!({"target_release": rid}),
        )?;
        self.release = Some(rid);
        let mut all = SERVICES.to_vec();
        all.push(WEB_SERVICE);
        self.wait_running(rid, &all)
    }

    /// `resin device reboot` while the device polls every 10 min: the
    /// cloud's poll-now goes down the tunnel, the device fetches the action
    /// at once and reboots within [`REBOOT_WITHIN`]; the scenario times the
    /// request to the supervisor's reboot line and the kernel's restart,
    /// and checks from the supervisor's log that the tunnel brought it.
    fn reboot_through_tunnel(&mut self, id: i64, uuid: &str) -> anyhow::Result<()> {
        // Slow polls first; the supervisor has them once it logged the new
        // target (poll-now brings that too).
        let targets = self.vm()?.count("new target state");
        let var = self.api.post(
            "/v1/device_config_var",
            &json!({"device": id, "name": "RESIN_SUPERVISOR_POLL_INTERVAL", "value": SLOW_POLL_MS.to_string()}),
        )?;
        let var_id = var["id"].as_i64().context("device_config_var id")?;
        poll(Duration::from_secs(60), Duration::from_millis(500), || {
            (self.vm.as_ref()?.count("new target state") > targets).then_some(())
        })
        .ok_or_else(|| anyhow!("the device did not fetch the target with its {SLOW_POLL_MS} ms poll interval within 60 s"))?;
        let from = self.console_len();
        let boots = self.vm()?.count("resin-qemu: up");
        let t0 = Instant::now();
        let out = self.run_resin(
            &["--yes", "device", "reboot", uuid],
            Duration::from_secs(60),
        )?;
        if !out.status.success() {
            bail!(
                "resin device reboot {uuid}: {:?}, stderr {:?}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let asked = t0.elapsed();
        // Host times of the supervisor's lines after the request.
        let marks = [
            "tunnel: poll now",
            "rebooting through logind",
            "reboot: Restarting system",
        ];
        let mut seen: [Option<Duration>; 3] = [None; 3];
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = self.console_since(from);
            for (i, m) in marks.iter().enumerate() {
                if seen[i].is_none() && text.contains(m) {
                    seen[i] = Some(t0.elapsed());
                }
            }
            // Up again (the kernel's line may not reach the console).
            if seen[2].is_some() || text.contains("resin-qemu: up") || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Back to the harness's polls for the scenarios after this one (the
        // device fetches them when it is up again).
        self.api.patch(
            &format!("/v1/device_config_var({var_id})"),
            &json!({"value": HARNESS_POLL_MS.to_string()}),
        )?;
        let secs = |d: Option<Duration>| {
            d.map_or("never".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
        };
        println!(
            "  resin device reboot (answered in {:.1} s): supervisor `tunnel: poll now` at {}, `rebooting through logind` at {}, kernel restart at {}",
            asked.as_secs_f64(),
            secs(seen[0]),
            secs(seen[1]),
            secs(seen[2])
        );
        let Some(rebooting) = seen[1] else {
            bail!(
                "the device did not reboot within 120 s of `resin device reboot`; console since:\n{}",
                crate::qemu::tail_lines(&self.console_since(from), 60)
            );
        };
        if seen[0].is_none() {
            bail!("the device rebooted but never logged `tunnel: poll now`: the reboot did not come through the tunnel");
        }
        if rebooting >= REBOOT_WITHIN {
            bail!(
                "the reboot started {:.1} s after the request (the tunnel must bring it within {REBOOT_WITHIN:?}; polls are {} s apart)",
                rebooting.as_secs_f64(),
                SLOW_POLL_MS / 1000
            );
        }
        let marker = self.wait_marker(self.timeouts.boot)?;
        if self.vm()?.count("resin-qemu: up") <= boots {
            bail!("no new boot marker after the reboot");
        }
        println!(
            "  booted again {:.0} s after the request (slot {})",
            t0.elapsed().as_secs_f64(),
            marker.slot
        );
        // The action is settled by the new boot id.
        let api = self.api.clone();
        let action = poll(self.timeouts.online, Duration::from_secs(2), || {
            let v = api.get(&format!("/v1/device({id})/actions")).ok()?;
            v["value"]
                .as_array()?
                .iter()
                .find(|a| a["action"] == "reboot")
                .filter(|a| a["state"] == "done")
                .cloned()
        })
        .ok_or_else(|| {
            anyhow!(
                "the reboot action is not done within {:?}",
                self.timeouts.online
            )
        })?;
        println!("  the reboot action is {}", action["state"]);
        self.wait_apps_back()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::apps::{composition, TestImage};

    #[test]
    fn the_web_service_joins_an_unchanged_release_and_validates() {
        let img = TestImage {
            guest_ref: "10.0.2.2:55000/resin-qemu/busybox@sha256:00".into(),
        };
        let current = composition(&img, &img, "v2");
        let doc = with_web_service(&current, &img.guest_ref, "tok").unwrap();
        for s in ["heartbeat", "ticker", "store"] {
            assert_eq!(doc["services"][s], current["services"][s], "{s} unchanged");
        }
        assert_eq!(
            doc["services"][WEB_SERVICE]["ports"][0],
            "127.0.0.1:18080:8080"
        );
        let target = resin_api_types::compose::parse_release(&doc).expect("a valid release");
        assert_eq!(target.services.len(), 4);
        assert!(with_web_service(&json!({}), "i", "t").is_err());
    }
}
