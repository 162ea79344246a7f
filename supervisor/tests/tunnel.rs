//! Remote access end to end: a real resin-cloud process (HTTPS), the
//! supervisor's real tunnel module on this host as the device, and the
//! real `resin` CLI (`ssh`, `tunnel`) or a raw WebSocket client as the user.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use resin_api_types::tunnel::{CloseInfo, Frame, OpenRequest, TunnelSettings, WinSize};
use resin_supervisor::tunnel::{connect_ws, tls_config, TunnelOptions, Ws};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// target/debug/resin, built (or brought up to date) by cargo.
fn resin_bin() -> std::path::PathBuf {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let st = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "resin-cli", "--bin", "resin"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(st.success(), "cargo build -p resin-cli failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target")
            });
        target.join("debug/resin")
    })
    .clone()
}

/// A cloud, one device registered in it with its tunnel running, and the
/// runtime that runs it.
struct Fixture {
    cloud: CloudProc,
    rt: tokio::runtime::Runtime,
    uuid: String,
    id: i64,
    fleet: i64,
    device_key: String,
    prov_key: String,
    poll_now: Arc<tokio::sync::Notify>,
    reboots: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<String>>,
    home: tempfile::TempDir,
}

fn register(cloud: &CloudProc, prov: &str) -> (String, String) {
    use resin_api_types::{RegisterProof, RegisterRequest};
    let client =
        resin_supervisor::cloud::Cloud::with_tls(&cloud.url(), Some(trust_only(&cloud.ca_pem())));
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    let reg = client
        .register(
            prov,
            &RegisterRequest {
                uuid: uuid.clone(),
                device_type: "qemuarm64".into(),
                name: None,
                supervisor_version: None,
                os_version: None,
            },
            &RegisterProof::default(),
        )
        .unwrap();
    (uuid, reg.api_key)
}

impl Fixture {
    fn start(settings: TunnelSettings) -> Self {
        Self::on(CloudProc::start(), settings)
    }

    /// The device of a fixture on `cloud`, its tunnel connected to it.
    fn on(cloud: CloudProc, settings: TunnelSettings) -> Self {
        let f = cloud.create("fleet", json!({"name": "tun", "device_type": "qemuarm64"}));
        let fleet = f["id"].as_i64().unwrap();
        let p = cloud.create("provisioning_key", json!({"fleet": fleet, "name": "p"}));
        let prov_key = p["key"].as_str().unwrap().to_owned();
        let (uuid, device_key) = register(&cloud, &prov_key);
        let id = cloud.get(&format!("/v1/device?$filter=uuid%20eq%20'{uuid}'"))["value"][0]["id"]
            .as_i64()
            .unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let poll_now = Arc::new(tokio::sync::Notify::new());
        let (reboot_tx, reboots) = tokio::sync::mpsc::channel(4);
        rt.spawn(resin_supervisor::tunnel::run(TunnelOptions {
            api_endpoint: cloud.url(),
            device_key: device_key.clone(),
            root_ca: Some(cloud.ca_pem()),
            settings,
            docker: None,
            poll_now: poll_now.clone(),
            reboot: Some(reboot_tx),
        }));
        let fx = Fixture {
            cloud,
            rt,
            uuid,
            id,
            fleet,
            device_key,
            prov_key,
            poll_now,
            reboots: tokio::sync::Mutex::new(reboots),
            home: tempfile::tempdir().unwrap(),
        };
        // Connected once the device answers a session (the cloud answers
        // 409, exit 1, while it has no tunnel; a refusal by the device is 255).
        wait_until(30, "the device's tunnel", || {
            matches!(fx.ssh(&["--", "true"]).0, 0 | 255).then_some(())
        });
        fx
    }

    fn resin(&self) -> Command {
        let mut c = Command::new(resin_bin());
        c.env("RESIN_API_URL", self.cloud.url())
            .env("RESIN_API_KEY", &self.cloud.admin_key)
            .env("RESIN_CA", tls_dir().join("ca.pem"))
            .env("HOME", self.home.path())
            .env_remove("RESIN_CLI_CONFIG");
        c
    }

    /// `resin ssh <uuid> ARGS` with `stdin`: (exit code, stdout, stderr).
    fn ssh_with(&self, args: &[&str], stdin: &[u8]) -> (i32, String, String) {
        let mut child = self
            .resin()
            .arg("ssh")
            .arg(&self.uuid)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ssh(&self, args: &[&str]) -> (i32, String, String) {
        self.ssh_with(args, b"")
    }

    fn user_url(&self, device: i64) -> String {
        format!(
            "{}/v1/device({device})/tunnel",
            self.cloud.url().replace("https://", "wss://")
        )
    }

    /// A raw user session: the socket, after sending `open`.
    async fn open(&self, key: &str, open: OpenRequest) -> Ws {
        let tls = tls_config(Some(&self.cloud.ca_pem())).unwrap();
        let mut ws = connect_ws(&self.user_url(self.id), key, Some(tls))
            .await
            .unwrap();
        ws.send(Message::Binary(
            Frame::Open(1, open).encode().unwrap().into(),
        ))
        .await
        .unwrap();
        ws
    }

    /// The HTTP status a user-session handshake with `key` gets.
    fn handshake_status(&self, key: &str, device: i64, origin: Option<&str>) -> u16 {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        self.rt.block_on(async {
            let tls = tls_config(Some(&self.cloud.ca_pem())).unwrap();
            let url = self.user_url(device);
            let mut req = url.as_str().into_client_request().unwrap();
            req.headers_mut()
                .insert("Authorization", format!("Bearer {key}").parse().unwrap());
            if let Some(o) = origin {
                req.headers_mut().insert("Origin", o.parse().unwrap());
            }
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.cloud.port))
                .await
                .unwrap();
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let tls = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .unwrap();
            match tokio_tungstenite::client_async(req, tls).await {
                Ok(_) => 101,
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
                Err(e) => panic!("handshake: {e}"),
            }
        })
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        self.cloud
            .get(&format!("/v1/device({})/tunnel/sessions", self.id))["value"]
            .as_array()
            .unwrap()
            .clone()
    }
}

async fn send(ws: &mut Ws, f: Frame) {
    ws.send(Message::Binary(f.encode().unwrap().into()))
        .await
        .unwrap();
}

async fn recv(ws: &mut Ws) -> Option<Frame> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a frame within 30 s")
        {
            Some(Ok(Message::Binary(b))) => return Some(Frame::decode(&b).unwrap()),
            Some(Ok(Message::Close(_))) | None => return None,
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("{e}"),
        }
    }
}

/// Reads the session's output (crediting it) until `want` appears.
async fn read_until(ws: &mut Ws, out: &mut String, want: &str) {
    while !out.contains(want) {
        match recv(ws).await {
            Some(Frame::Data(s, d)) => {
                out.push_str(&String::from_utf8_lossy(&d));
                send(ws, Frame::Credit(s, d.len() as u32)).await;
            }
            Some(Frame::Close(_, c)) => panic!("closed ({c:?}) before {want:?} in {out:?}"),
            Some(_) => {}
            None => panic!("socket closed before {want:?} in {out:?}"),
        }
    }
}

fn shell(command: &str, tty: Option<WinSize>) -> OpenRequest {
    OpenRequest::Shell {
        command: vec![command.into()],
        service: None,
        tty,
    }
}

#[test]
fn ssh_runs_commands_with_their_output_exit_code_and_stdin_and_resizes_a_terminal() {
    let fx = Fixture::start(TunnelSettings::default());
    let (code, out, err) = fx.ssh(&["--", "echo", "hello;", "echo", "oops", ">&2"]);
    assert_eq!((code, out.as_str(), err.as_str()), (0, "hello\n", "oops\n"));
    assert_eq!(fx.ssh(&["--", "exit 3"]).0, 3);
    assert_eq!(fx.ssh(&["--", "false"]).0, 1);
    let (code, out, _) = fx.ssh_with(&["--", "tr a-z A-Z"], b"piped stdin\n");
    assert_eq!((code, out.as_str()), (0, "PIPED STDIN\n"));
    let (code, _, err) = fx.ssh(&["--service", "nope", "--", "true"]);
    assert_eq!(code, 255);
    assert!(err.contains("no container engine"), "{err}");

    // A terminal: its size, then a resize that the shell sees.
    fx.rt.block_on(async {
        let mut ws = fx
            .open(
                &fx.cloud.admin_key,
                shell(
                    "stty size; read x; stty size",
                    Some(WinSize {
                        cols: 100,
                        rows: 30,
                    }),
                ),
            )
            .await;
        let mut out = String::new();
        read_until(&mut ws, &mut out, "30 100").await;
        send(
            &mut ws,
            Frame::Resize(
                1,
                WinSize {
                    cols: 120,
                    rows: 40,
                },
            ),
        )
        .await;
        send(&mut ws, Frame::Data(1, b"\n".to_vec())).await;
        read_until(&mut ws, &mut out, "40 120").await;
        loop {
            match recv(&mut ws).await {
                Some(Frame::Close(_, c)) => {
                    assert_eq!(c.exit_code, Some(0), "{c:?}");
                    break;
                }
                Some(_) => {}
                None => panic!("no Close"),
            }
        }
    });

    // Every session is in the audit, newest first, with its outcome.
    let rows = wait_until(10, "closed audit rows", || {
        let rows = fx.audit();
        rows.iter()
            .all(|r| !r["ended_at"].is_null())
            .then_some(rows)
    });
    let last = &rows[0];
    assert_eq!(last["kind"], "shell");
    assert_eq!(last["target"], "stty size; read x; stty size");
    assert_eq!(last["username"], "admin");
    assert_eq!(last["exit_code"], 0);
    assert!(last["bytes_down"].as_i64().unwrap() > 0);
    assert_eq!(last["bytes_up"], 1);
    assert!(rows
        .iter()
        .any(|r| r["target"] == "exit 3" && r["exit_code"] == 3));
    let exec = rows.iter().find(|r| r["kind"] == "exec").unwrap();
    assert_eq!(exec["target"], "nope: true");
    assert!(exec["error"]
        .as_str()
        .unwrap()
        .contains("no container engine"));
}

/// Two resin-cloud processes on one PostgreSQL database: the device's
/// socket is on replica A, the user's session lands on replica B, which
/// forwards it to A (replica secret from the database); the command's
/// output and exit code come back, and the audit has the session once.
#[test]
fn a_session_through_another_replica_is_forwarded_to_the_device_s_replica() {
    let db = PgDb::new();
    let a = CloudProc::start_with_env(&[("RESIN_CLOUD_DATABASE_URL", &db.url)]);
    let mut fx = Fixture::on(a, TunnelSettings::default());
    let b = fx.cloud.replica();
    let before = fx.audit().len();
    let ssh_b = |fx: &Fixture, args: &[&str]| {
        let out = fx
            .resin()
            .env("RESIN_API_URL", b.url())
            .arg("ssh")
            .arg(&fx.uuid)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = ssh_b(&fx, &["--", "echo via-b; echo to-stderr >&2; exit 3"]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (3, "via-b\n", "to-stderr\n"),
        "resin ssh through replica B"
    );

    // Written once, by the replica holding the socket; both replicas read it.
    let rows = wait_until(10, "the forwarded session's closed audit row", || {
        let rows = fx.audit();
        (rows.len() > before && !rows[0]["ended_at"].is_null()).then_some(rows)
    });
    assert_eq!(rows.len(), before + 1, "one audit row: {rows:#?}");
    assert_eq!(rows[0]["username"], "admin");
    assert_eq!(rows[0]["exit_code"], 3);
    assert!(rows[0]["bytes_down"].as_i64().unwrap() > 0);
    let via_b: serde_json::Value = serde_json::from_str(
        &http(
            "GET",
            &format!("{}/v1/device({})/tunnel/sessions", b.url(), fx.id),
            Some(&b.admin_key),
            None,
        )
        .1,
    )
    .unwrap();
    assert_eq!(via_b["value"].as_array().unwrap().len(), before + 1);

    // The replicas' door is closed to users' keys.
    let (status, _) = http(
        "GET",
        &format!("{}/internal/v1/tunnel/device({})", fx.cloud.url(), fx.id),
        Some(&fx.cloud.admin_key),
        None,
    );
    assert_eq!(
        status, 404,
        "the internal forward route without the replica secret"
    );

    // Replica A dies: its row goes stale and B answers 409 again (not a hang).
    fx.cloud.stop();
    let (code, _, err) = ssh_b(&fx, &["--", "true"]);
    assert_eq!(code, 1, "{err}");
    eprintln!("with replica A gone: {err}");
    drop(fx);
    drop(b);
    drop(db);
}

#[test]
fn a_port_forward_reaches_a_local_http_server_and_the_allow_list_holds() {
    let fx = Fixture::start(TunnelSettings::default());
    // A tiny HTTP server on the "device".
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sport = server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in server.incoming() {
            let mut s = s.unwrap();
            let mut req = [0u8; 1024];
            let n = s.read(&mut req).unwrap();
            let path = String::from_utf8_lossy(&req[..n])
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_owned();
            let body = format!("served {path}");
            write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        }
    });
    let lport = free_port();
    let mut tunnel = fx
        .resin()
        .args(["tunnel", &fx.uuid, &format!("{lport}:127.0.0.1:{sport}")])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(tunnel.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("forwarding 127.0.0.1:"), "{line}");
    for i in 0..3 {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", lport)).unwrap();
        write!(c, "GET /hello{i} HTTP/1.0\r\n\r\n").unwrap();
        let mut resp = String::new();
        c.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.0 200 OK"), "{resp}");
        assert!(resp.ends_with(&format!("served /hello{i}")), "{resp}");
    }
    let _ = tunnel.kill();
    let _ = tunnel.wait();

    // Not in the allow-list (loopback only by default): refused by the device.
    fx.rt.block_on(async {
        let mut ws = fx
            .open(
                &fx.cloud.admin_key,
                OpenRequest::Tcp {
                    host: "10.9.8.7".into(),
                    port: 80,
                },
            )
            .await;
        match recv(&mut ws).await {
            Some(Frame::Close(_, c)) => {
                let e = c.error.unwrap();
                assert!(
                    e.contains("10.9.8.7:80 is not in this device's allow-list"),
                    "{e}"
                );
            }
            f => panic!("{f:?}"),
        }
    });
    let rows = fx.audit();
    assert!(rows
        .iter()
        .any(|r| r["kind"] == "tcp" && r["target"] == format!("127.0.0.1:{sport}")));
}

#[test]
fn closing_from_either_side_ends_the_session_and_its_process() {
    let fx = Fixture::start(TunnelSettings::default());
    fx.rt.block_on(async {
        // The client goes away: the device kills the command.
        let mut ws = fx
            .open(
                &fx.cloud.admin_key,
                shell("echo pid=$$; exec sleep 1000", None),
            )
            .await;
        let mut out = String::new();
        read_until(&mut ws, &mut out, "\n").await;
        let pid: u32 = out.trim().strip_prefix("pid=").unwrap().parse().unwrap();
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        ws.close(None).await.unwrap();
        drop(ws);
        let end = Instant::now() + Duration::from_secs(10);
        while std::path::Path::new(&format!("/proc/{pid}/status")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .contains("zombie")
        {
            assert!(
                Instant::now() < end,
                "sleep {pid} still runs after the client left"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The client closes the stream with a Close frame.
        let mut ws = fx
            .open(&fx.cloud.admin_key, shell("exec sleep 1000", None))
            .await;
        send(&mut ws, Frame::Close(1, CloseInfo::default())).await;
        assert!(matches!(recv(&mut ws).await, None | Some(Frame::Opened(_))));
        // The device side ends it: the command exits.
        let mut ws = fx.open(&fx.cloud.admin_key, shell("exit 7", None)).await;
        loop {
            match recv(&mut ws).await {
                Some(Frame::Close(_, c)) => {
                    assert_eq!(c.exit_code, Some(7));
                    break;
                }
                Some(_) => {}
                None => panic!("no Close"),
            }
        }
    });
    let rows = wait_until(10, "closed audit rows", || {
        let rows = fx.audit();
        rows.iter()
            .all(|r| !r["ended_at"].is_null())
            .then_some(rows)
    });
    assert!(rows
        .iter()
        .any(|r| r["error"].as_str() == Some("the client went away")));
    assert!(rows
        .iter()
        .any(|r| r["error"].as_str() == Some("closed by the client")));
}

#[test]
fn a_stalled_consumer_of_100_mb_does_not_stall_another_session() {
    let fx = Fixture::start(TunnelSettings::default());
    fx.rt.block_on(async {
        const TOTAL: usize = 100_000_000;
        let mut slow = fx
            .open(
                &fx.cloud.admin_key,
                shell(&format!("head -c {TOTAL} /dev/zero"), None),
            )
            .await;
        // The slow reader takes what the window allows and credits nothing.
        let mut got = 0usize;
        let stalled_at = loop {
            match tokio::time::timeout(Duration::from_secs(2), slow.next()).await {
                Err(_) => break got,
                Ok(Some(Ok(Message::Binary(b)))) => {
                    if let Frame::Data(_, d) = Frame::decode(&b).unwrap() {
                        got += d.len();
                    }
                }
                Ok(m) => panic!("{m:?}"),
            }
        };
        assert!(
            stalled_at <= resin_api_types::tunnel::INITIAL_WINDOW as usize,
            "{stalled_at} bytes sent without credit"
        );
        // Meanwhile another session goes at full speed.
        for i in 0..5 {
            let t0 = Instant::now();
            let mut ws = fx
                .open(&fx.cloud.admin_key, shell(&format!("echo pong{i}"), None))
                .await;
            let mut out = String::new();
            read_until(&mut ws, &mut out, &format!("pong{i}")).await;
            assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        }
        // The slow reader then takes the rest, slowly at first: every byte
        // arrives. It first credits what it has held.
        send(&mut slow, Frame::Credit(1, got as u32)).await;
        let mut credited = 0usize;
        while got < TOTAL {
            match recv(&mut slow).await {
                Some(Frame::Data(s, d)) => {
                    got += d.len();
                    if credited < 1_000_000 {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    credited += d.len();
                    send(&mut slow, Frame::Credit(s, d.len() as u32)).await;
                }
                f => panic!("{f:?} after {got} bytes"),
            }
        }
        assert_eq!(got, TOTAL);
        match recv(&mut slow).await {
            Some(Frame::Close(_, c)) => assert_eq!(c.exit_code, Some(0)),
            f => panic!("{f:?}"),
        }
    });
}

#[test]
fn only_users_with_rights_on_the_fleet_open_sessions() {
    let fx = Fixture::start(TunnelSettings::default());
    // User B, with a fleet of their own.
    let out = Command::new(cloud_bin())
        .arg("--data-dir")
        .arg(fx.cloud.dir.path())
        .args(["bootstrap", "--username", "bob"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let bob: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bob_key = bob["api_key"].as_str().unwrap();
    // Another device's key, and the fleet's provisioning key.
    let (_, other_device_key) = register(&fx.cloud, &fx.prov_key);
    assert_eq!(fx.handshake_status(&fx.cloud.admin_key, fx.id, None), 101);
    assert_eq!(fx.handshake_status(bob_key, fx.id, None), 404, "user B");
    assert_eq!(
        fx.handshake_status(&other_device_key, fx.id, None),
        403,
        "another device"
    );
    assert_eq!(
        fx.handshake_status(&fx.device_key, fx.id, None),
        403,
        "the device itself"
    );
    assert_eq!(
        fx.handshake_status(&fx.prov_key, fx.id, None),
        403,
        "provisioning key"
    );
    assert_eq!(fx.handshake_status("resin_u_nonsense", fx.id, None), 401);
    assert_eq!(
        fx.handshake_status(&fx.cloud.admin_key, fx.id, Some("https://evil.example")),
        403,
        "a foreign Origin"
    );
    assert_eq!(
        fx.handshake_status(&fx.cloud.admin_key, fx.id, Some(&fx.cloud.url())),
        101,
        "the cloud's own Origin"
    );
    assert_eq!(fx.handshake_status(&fx.cloud.admin_key, 999_999, None), 404);
    // A user key may not pose as a device.
    let (s, b) = http(
        "GET",
        &format!("{}/device/v1/tunnel", fx.cloud.url()),
        Some(&fx.cloud.admin_key),
        None,
    );
    assert_eq!(s, 403, "{b}");
    // B cannot read the audit either.
    let (s, _) = http(
        "GET",
        &format!("{}/v1/device({})/tunnel/sessions", fx.cloud.url(), fx.id),
        Some(bob_key),
        None,
    );
    assert_eq!(s, 404);
    // No session was opened by the refused ones.
    assert!(fx.audit().iter().all(|r| r["username"] == "admin"));
}

#[test]
fn a_target_state_change_sends_poll_now_and_a_reboot_goes_down_the_tunnel() {
    let fx = Fixture::start(TunnelSettings::default());
    let notified = |secs| {
        fx.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(secs), fx.poll_now.notified())
                .await
                .is_ok()
        })
    };
    // Drain the poll-now sent on connect.
    while notified(1) {}
    let t0 = Instant::now();
    fx.cloud.create(
        "device_env_var",
        json!({"device": fx.id, "name": "A", "value": "1"}),
    );
    assert!(notified(5), "no poll-now after a device env var");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    fx.cloud.create(
        "fleet_env_var",
        json!({"fleet": fx.fleet, "name": "B", "value": "2"}),
    );
    assert!(notified(5), "no poll-now after a fleet env var");

    // A reboot goes down the tunnel at once, to the supervisor's rebooter.
    let url = format!("{}/v1/device({})/tunnel/reboot", fx.cloud.url(), fx.id);
    let t0 = Instant::now();
    let (s, b) = http("POST", &url, Some(&fx.cloud.admin_key), None);
    assert_eq!(s, 202, "{b}");
    let why = fx.rt.block_on(async {
        let mut rx = fx.reboots.lock().await;
        tokio::time::timeout(Duration::from_secs(5), rx.recv()).await
    });
    assert_eq!(
        why.expect("a reboot within 5 s").as_deref(),
        Some("reboot asked through the tunnel")
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // Only with write rights on the device; a device without a tunnel is 409.
    let (s, _) = http("POST", &url, Some(&fx.device_key), None);
    assert_eq!(s, 403);
    register(&fx.cloud, &fx.prov_key);
    let other = fx.cloud.get("/v1/device?$orderby=id%20desc&$top=1")["value"][0]["id"]
        .as_i64()
        .unwrap();
    let (s, b) = http(
        "POST",
        &format!("{}/v1/device({other})/tunnel/reboot", fx.cloud.url()),
        Some(&fx.cloud.admin_key),
        None,
    );
    assert_eq!(s, 409, "{b}");
    assert!(b.contains("has no tunnel"), "{b}");
}

#[test]
fn switched_off_features_are_refused_by_the_device() {
    let fx = Fixture::start(TunnelSettings {
        shell: false,
        tcp: false,
        ..TunnelSettings::default()
    });
    let (code, _, err) = fx.ssh(&["--", "true"]);
    assert_eq!(code, 255);
    assert!(
        err.contains("host shells are switched off on this device"),
        "{err}"
    );
    fx.rt.block_on(async {
        let mut ws = fx
            .open(
                &fx.cloud.admin_key,
                OpenRequest::Tcp {
                    host: "127.0.0.1".into(),
                    port: 22,
                },
            )
            .await;
        match recv(&mut ws).await {
            Some(Frame::Close(_, c)) => {
                assert!(c.error.unwrap().contains("TCP forwards are switched off"))
            }
            f => panic!("{f:?}"),
        }
    });
}

/// Resident set size of a process, KiB (VmRSS of /proc/<pid>/status).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// BENCHMARKS.md, "Remote access": keystroke round trip and port-forward
/// throughput next to direct loopback, idle memory per tunnel in the
/// supervisor's module and per connected device in the cloud. Run with
/// `cargo test -p resin-supervisor --test tunnel -- --ignored --nocapture bench`.
#[test]
#[ignore]
fn bench_tunnel() {
    let fx = Fixture::start(TunnelSettings::default());
    const ROUNDS: usize = 300;
    // 1. Keystroke round trip: one byte to `cat` through the tunnel and back,
    // next to a direct TCP echo on loopback.
    let direct = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 1];
            while s.read_exact(&mut b).is_ok() {
                s.write_all(&b).unwrap();
            }
        });
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_nodelay(true).unwrap();
        let mut t = Vec::new();
        let mut b = [0u8; 1];
        for _ in 0..ROUNDS {
            let t0 = Instant::now();
            c.write_all(b"x").unwrap();
            c.read_exact(&mut b).unwrap();
            t.push(t0.elapsed());
        }
        median(t)
    };
    let tunneled = fx.rt.block_on(async {
        let mut ws = fx.open(&fx.cloud.admin_key, shell("cat", None)).await;
        let mut t = Vec::new();
        for _ in 0..ROUNDS {
            let t0 = Instant::now();
            send(&mut ws, Frame::Data(1, b"x".to_vec())).await;
            loop {
                match recv(&mut ws).await {
                    Some(Frame::Data(s, d)) => {
                        send(&mut ws, Frame::Credit(s, d.len() as u32)).await;
                        break;
                    }
                    Some(_) => {}
                    None => panic!("closed"),
                }
            }
            t.push(t0.elapsed());
        }
        median(t)
    });
    println!("BENCH keystroke round trip (median of {ROUNDS}): direct TCP echo {direct:?}, through the tunnel {tunneled:?}");

    // 2. Port-forward throughput: 200 MiB from a local server, directly and
    // through `resin tunnel`.
    const MIB: usize = 200;
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sport = server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let chunk = Arc::new(vec![7u8; 1 << 20]);
        for s in server.incoming() {
            let mut s = s.unwrap();
            let chunk = chunk.clone();
            std::thread::spawn(move || {
                for _ in 0..MIB {
                    if s.write_all(&chunk).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let drain = |port: u16| {
        let t0 = Instant::now();
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0usize;
        loop {
            match c.read(&mut buf).unwrap() {
                0 => break,
                k => n += k,
            }
        }
        assert_eq!(n, MIB << 20);
        (MIB as f64) / t0.elapsed().as_secs_f64()
    };
    let direct_mibs = drain(sport);
    let lport = free_port();
    let mut tunnel = fx
        .resin()
        .args(["tunnel", &fx.uuid, &format!("{lport}:127.0.0.1:{sport}")])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(tunnel.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let tunnel_mibs = drain(lport);
    let _ = tunnel.kill();
    let _ = tunnel.wait();
    println!("BENCH port-forward throughput ({MIB} MiB): direct {direct_mibs:.0} MiB/s, through `resin tunnel` {tunnel_mibs:.0} MiB/s");

    // 3. Idle tunnels: RSS of the cloud per connected device, and of this
    // process per tunnel module (each with its connection) once idle.
    const DEVICES: usize = 300;
    let keys: Vec<String> = (0..DEVICES)
        .map(|_| register(&fx.cloud, &fx.prov_key).1)
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let cloud_pid = fx.cloud.pid().unwrap();
    let me = std::process::id();
    let (cloud0, me0) = (rss_kib(cloud_pid), rss_kib(me));
    for k in &keys {
        fx.rt.spawn(resin_supervisor::tunnel::run(TunnelOptions {
            api_endpoint: fx.cloud.url(),
            device_key: k.clone(),
            root_ca: Some(fx.cloud.ca_pem()),
            settings: TunnelSettings::default(),
            docker: None,
            poll_now: Arc::new(tokio::sync::Notify::new()),
            reboot: None,
        }));
    }
    std::thread::sleep(Duration::from_secs(15));
    let (cloud1, me1) = (rss_kib(cloud_pid), rss_kib(me));
    println!(
        "BENCH idle tunnels ({DEVICES}): cloud RSS {cloud0} -> {cloud1} KiB = {:.1} KiB per connected device; \
         device side (tunnel module + its TLS WebSocket) {me0} -> {me1} KiB = {:.1} KiB per tunnel",
        (cloud1.saturating_sub(cloud0)) as f64 / DEVICES as f64,
        (me1.saturating_sub(me0)) as f64 / DEVICES as f64
    );
}

/// BENCHMARKS.md, "Remote access": 10 000 idle device tunnels held by one
/// resin-cloud process (SQLite, HTTPS), its RSS per connected device (goal
/// < 64 KiB), and a session to the last device connected. The devices are
/// this process's tunnel modules. Run with
/// `cargo test -p resin-supervisor --test tunnel -- --ignored --nocapture bench_idle_10k`
/// (`IDLE_DEVICES` sets the count).
#[test]
#[ignore]
fn bench_idle_10k_tunnels() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let devices: usize = std::env::var("IDLE_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    // Each side holds one socket per device: raise this process's open-file
    // limit to its hard limit before the cloud is spawned (it inherits it).
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(
        hard >= devices as u64 + 1000,
        "RLIMIT_NOFILE hard limit {hard} is too low for {devices} tunnels (ulimit -Hn)"
    );
    println!("RLIMIT_NOFILE {soft} -> {hard}");
    let cloud = CloudProc::start_with_env(&[("RESIN_CLOUD_DEVICE_REQUESTS_PER_MIN", "0")]);
    let fx = Fixture::on(cloud, TunnelSettings::default());
    let cloud_pid = fx.cloud.pid().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{cloud_pid}/limits")).unwrap();
    let cloud_nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_owned();
    println!("cloud: {cloud_nofile}");

    let t0 = Instant::now();
    let register_url = format!("{}/device/register", fx.cloud.url());
    let devs: Vec<(String, String)> = (0..devices)
        .map(|_| {
            let uuid = uuid::Uuid::new_v4().simple().to_string();
            let (st, body) = http(
                "POST",
                &register_url,
                Some(&fx.prov_key),
                Some(json!({"uuid": uuid, "deviceType": "qemuarm64"})),
            );
            assert_eq!(st, 201, "register: {body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            (uuid, v["apiKey"].as_str().unwrap().to_owned())
        })
        .collect();
    println!("registered {devices} devices in {:?}", t0.elapsed());
    std::thread::sleep(Duration::from_secs(2));
    let cloud0 = rss_kib(cloud_pid);
    let established = || {
        let out = Command::new("ss")
            .args([
                "-Htn",
                "state",
                "established",
                &format!("( sport = :{} )", fx.cloud.port),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let base = established();
    let t0 = Instant::now();
    let ca = fx.cloud.ca_pem();
    const BATCH: usize = 250;
    for (i, chunk) in devs.chunks(BATCH).enumerate() {
        for (_, key) in chunk {
            fx.rt.spawn(resin_supervisor::tunnel::run(TunnelOptions {
                api_endpoint: fx.cloud.url(),
                device_key: key.clone(),
                root_ca: Some(ca.clone()),
                settings: TunnelSettings::default(),
                docker: None,
                poll_now: Arc::new(tokio::sync::Notify::new()),
                reboot: None,
            }));
        }
        // Let the handshakes of one batch finish before the next.
        let want = base + i * BATCH + chunk.len();
        let end = Instant::now() + Duration::from_secs(120);
        while established() < want && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let connected = established() - base;
    println!(
        "{connected} of {devices} tunnels connected in {:?}",
        t0.elapsed()
    );
    assert!(
        connected >= devices,
        "only {connected} of {devices} tunnels connected"
    );
    // Idle: let the connections settle (and the first pings pass).
    std::thread::sleep(Duration::from_secs(25));
    let cloud1 = rss_kib(cloud_pid);
    // A session to the last device to connect still works.
    let (last, _) = devs.last().unwrap();
    let t1 = Instant::now();
    let out = fx
        .resin()
        .args(["ssh", last, "--", "echo", "last-one"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = t1.elapsed();
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(0), "last-one\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "BENCH {devices} idle tunnels in one resin-cloud: RSS {cloud0} -> {cloud1} KiB = {:.1} KiB per connected device; \
         `resin ssh` to the last device: exit 0 in {took:?}",
        (cloud1.saturating_sub(cloud0)) as f64 / devices as f64
    );
}
