//! HTTPS: the cloud serves the certificate `resin-cloud init` made, clients
//! that trust its CA get through and clients with another CA are refused,
//! HTTP/2 comes by ALPN, and a new certificate is served without a restart
//! (file change and SIGHUP).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{trusting, Backend, Server};
use resin_cloud::tls::{self, InitRequest, TlsSettings};

fn init(dir: &Path, force: bool) {
    tls::init(&InitRequest {
        dir: dir.to_owned(),
        hosts: vec!["localhost".into(), "127.0.0.1".into()],
        force,
        keep_ca: false,
    })
    .unwrap();
}

fn https_server(dir: &Path, watch_ms: u64) -> Server {
    let settings = TlsSettings {
        cert: dir.join(tls::SERVER_CERT),
        key: dir.join(tls::SERVER_KEY),
        ca: Some(dir.join(tls::CA_CERT)),
        watch_ms,
    };
    Server::start_with(Backend::Sqlite, move |c| c.tls = Some(settings))
}

/// A copy of the CA file as it is now (the test replaces the original).
fn keep_ca(dir: &Path, name: &str) -> PathBuf {
    let copy = dir.parent().unwrap().join(name);
    std::fs::copy(dir.join(tls::CA_CERT), &copy).unwrap();
    copy
}

/// GET /ping with a client that trusts only `ca`: Ok(body) or the error text.
fn ping(base: &str, ca: &Path) -> Result<String, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(trusting(ca))
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    agent
        .get(&format!("{base}/ping"))
        .call()
        .map_err(|e| e.to_string())
        .and_then(|mut r| r.body_mut().read_to_string().map_err(|e| e.to_string()))
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn clients_that_trust_the_ca_get_through_and_others_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("tls");
    init(&dir, false);
    let s = https_server(&dir, 0);
    assert!(s.base.starts_with("https://127.0.0.1:"), "{}", s.base);

    // The harness's client trusts the CA: the API works over HTTPS.
    assert_eq!(s.get("/ping", "").body, "OK");
    let (_, key) = s.user("alice");
    let r = s.get("/v1/fleet", &key);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        s.app.config.public_url, s.base,
        "the URL devices are given is https"
    );

    // A client that trusts another CA refuses the cloud, and says why.
    let other = d.path().join("other");
    init(&other, false);
    let err = ping(&s.base, &other.join(tls::CA_CERT)).unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("invalid peer certificate"),
        "{err}"
    );
    // Plain HTTP to the HTTPS port gets no answer.
    let plain = s.base.replacen("https://", "http://", 1);
    let r = ureq::get(&format!("{plain}/ping")).call();
    assert!(
        r.is_err(),
        "plain HTTP was answered: {:?}",
        r.map(|r| r.status())
    );
}

#[test]
fn http2_is_negotiated_by_alpn() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("tls");
    init(&dir, false);
    let s = https_server(&dir, 0);
    let curl = |proto: &str| {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
            ])
            .arg(proto)
            .arg("--cacert")
            .arg(dir.join(tls::CA_CERT))
            .arg(format!("{}/ping", s.base))
            .output()
            .expect("curl (package curl) runs");
        assert!(
            out.status.success(),
            "curl {proto}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl("--http2"), "2 200");
    assert_eq!(curl("--http1.1"), "1.1 200");
}

#[test]
fn a_changed_certificate_is_served_without_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("tls");
    init(&dir, false);
    let s = https_server(&dir, 200);
    let first = keep_ca(&dir, "first-ca.pem");
    assert_eq!(ping(&s.base, &first).as_deref(), Ok("OK"));

    // A new CA and server certificate replace the files (rename, as init writes).
    init(&dir, true);
    let second = keep_ca(&dir, "second-ca.pem");
    wait_until("the new certificate is served", || {
        ping(&s.base, &second).is_ok()
    });
    assert!(ping(&s.base, &first).is_err(), "the old one is gone");

    // A broken file is not served: the last good certificate stays.
    std::fs::write(dir.join(tls::SERVER_CERT), "not a certificate").unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(ping(&s.base, &second).as_deref(), Ok("OK"));
}

#[test]
fn sighup_reloads_the_certificate() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("tls");
    init(&dir, false);
    // No file watching: only the signal reloads.
    let s = https_server(&dir, 0);
    let first = keep_ca(&dir, "first-ca.pem");
    init(&dir, true);
    let second = keep_ca(&dir, "second-ca.pem");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ping(&s.base, &first).as_deref(), Ok("OK"), "not yet");
    let st = Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    wait_until("SIGHUP loads the new certificate", || {
        ping(&s.base, &second).is_ok()
    });
}

/// The binary: `init` makes the files once and refuses to overwrite them;
/// `serve` without a certificate says how to get one.
#[test]
fn init_and_serve_from_the_command_line() {
    let bin = env!("CARGO_BIN_EXE_resin-cloud");
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let serve = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&serve.stderr);
    assert!(!serve.status.success());
    assert!(
        err.contains("resin-cloud init") && err.contains("server.pem"),
        "{err}"
    );

    let init = || {
        Command::new(bin)
            .args(["init", "--host", "cloud.example,10.0.2.2", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap()
    };
    let out = init();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["hosts"], serde_json::json!(["cloud.example", "10.0.2.2"]));
    let ca = std::fs::read(data.join("tls/ca.pem")).unwrap();
    let again = init();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("--force"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(std::fs::read(data.join("tls/ca.pem")).unwrap(), ca);

    // The certificate names 10.0.2.2 (the guest's view of the host) and the DNS name.
    let o = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(data.join("tls/server.pem"))
        .output()
        .expect("openssl (package openssl) runs");
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(
        t.contains("DNS:cloud.example") && t.contains("IP Address:10.0.2.2"),
        "{t}"
    );
}
