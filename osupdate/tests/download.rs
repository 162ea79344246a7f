//! Bundle download against a real HTTP server on 127.0.0.1 that drops
//! connections at random offsets; wrong sha256; free-space refusal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::*;
use rand::Rng;
use resin_osupdate::download::{self, DownloadError, DownloadRequest};

fn request(url: &str, body: &[u8], dir: &std::path::Path) -> DownloadRequest {
    DownloadRequest {
        url: url.to_string(),
        sha256: sha256_hex(body),
        size: body.len() as u64,
        api_key: "device-key".into(),
        dir: dir.to_path_buf(),
        free_space_margin: 0,
        attempts: 1,
        retry_delay: Duration::from_millis(10),
        read_timeout: Duration::from_secs(60),
        tls: None,
    }
}

#[test]
fn interrupted_at_random_offsets_then_resumed_gives_the_exact_file() {
    let body = random_bytes(3 * 1024 * 1024 + 123);
    let mut rng = rand::rng();
    let mut cuts: Vec<u64> = (0..4).map(|_| rng.random_range(1..600_000)).collect();
    cuts.push(0); // one connection that sends headers and no body at all
    let server = FileServer::start(body.clone(), "device-key", cuts.clone());
    let dir = tempfile::tempdir().unwrap();
    let req = request(&server.url, &body, dir.path());
    let cancel = AtomicBool::new(false);
    // Each call gets one connection: it fails, keeping the .part file.
    let mut failures = 0;
    let path = loop {
        match download::download(&req, &cancel, &mut |_| {}) {
            Ok(p) => break p,
            Err(DownloadError::Interrupted { .. }) => failures += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
        assert!(failures <= cuts.len(), "too many failures");
    };
    assert_eq!(failures, cuts.len());
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert!(!download::part_path(dir.path(), &req.sha256).exists());
    // Every reconnect asked for the rest only.
    let reqs = server.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), cuts.len() + 1);
    assert!(!reqs[0].to_lowercase().contains("range:"));
    let mut offset = 0u64;
    for (i, cut) in cuts.iter().enumerate() {
        offset += cut;
        if offset > 0 {
            assert!(
                reqs[i + 1].contains(&format!("bytes={offset}-")),
                "request {} should resume at {offset}: {}",
                i + 1,
                reqs[i + 1]
            );
        }
        assert!(reqs[i + 1].contains("Bearer device-key"));
    }
    // Nothing was sent twice.
    assert_eq!(
        server.served.load(std::sync::atomic::Ordering::SeqCst),
        body.len()
    );
}

#[test]
fn retries_inside_one_call_resume_too() {
    let body = random_bytes(1024 * 1024);
    let server = FileServer::start(body.clone(), "device-key", vec![1000, 250_000, 7]);
    let dir = tempfile::tempdir().unwrap();
    let mut req = request(&server.url, &body, dir.path());
    req.attempts = 5;
    let mut last = 0;
    let path = download::download(&req, &AtomicBool::new(false), &mut |b| {
        assert!(b >= last || b == 0, "progress went back");
        last = b;
    })
    .unwrap();
    assert_eq!(last, body.len() as u64);
    assert_eq!(std::fs::read(path).unwrap(), body);
}

#[test]
fn wrong_sha256_is_refused_and_the_part_file_removed() {
    let body = random_bytes(200_000);
    let server = FileServer::start(body.clone(), "device-key", vec![]);
    let dir = tempfile::tempdir().unwrap();
    let mut req = request(&server.url, &body, dir.path());
    req.sha256 = sha256_hex(b"something else");
    let err = download::download(&req, &AtomicBool::new(false), &mut |_| {}).unwrap_err();
    assert!(matches!(err, DownloadError::Sha256Mismatch { .. }), "{err}");
    assert!(err.to_string().contains(&req.sha256));
    assert!(!download::part_path(dir.path(), &req.sha256).exists());
    assert!(!download::bundle_path(dir.path(), &req.sha256).exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_bundle_larger_than_the_free_space_is_refused_before_any_request() {
    let body = random_bytes(1000);
    let server = FileServer::start(body.clone(), "device-key", vec![]);
    let dir = tempfile::tempdir().unwrap();
    let free = download::free_space(dir.path()).unwrap();
    let mut req = request(&server.url, &body, dir.path());
    req.size = free + 1024 * 1024;
    let err = download::download(&req, &AtomicBool::new(false), &mut |_| {}).unwrap_err();
    match err {
        DownloadError::NoSpace {
            needed, available, ..
        } => {
            assert!(needed > available, "{needed} {available}")
        }
        other => panic!("expected NoSpace, got {other}"),
    }
    assert!(server.requests.lock().unwrap().is_empty());
}

#[test]
fn wrong_key_and_malformed_sha_are_clear_errors() {
    let body = random_bytes(1000);
    let server = FileServer::start(body.clone(), "device-key", vec![]);
    let dir = tempfile::tempdir().unwrap();
    let mut req = request(&server.url, &body, dir.path());
    req.api_key = "wrong".into();
    let err = download::download(&req, &AtomicBool::new(false), &mut |_| {}).unwrap_err();
    assert!(
        matches!(err, DownloadError::Status { status: 401, .. }),
        "{err}"
    );
    req.sha256 = "../../etc/passwd".into();
    let err = download::download(&req, &AtomicBool::new(false), &mut |_| {}).unwrap_err();
    assert!(matches!(err, DownloadError::BadSha256 { .. }), "{err}");
}

/// A server that sends the headers and `after` bytes of the body, then
/// holds the connection open and sends nothing more.
fn stalling_server(body: &[u8], after: usize) -> String {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/os/bundle/1", listener.local_addr().unwrap());
    let body = body.to_vec();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&body[..after]);
            let _ = conn.flush();
            held.push(conn);
        }
    });
    url
}

/// Runs a download on a thread; None if it has not ended after `secs`.
fn download_within(
    req: DownloadRequest,
    cancel: std::sync::Arc<AtomicBool>,
    secs: u64,
) -> Option<Result<std::path::PathBuf, DownloadError>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(download::download(&req, &cancel, &mut |_| {}));
    });
    rx.recv_timeout(Duration::from_secs(secs)).ok()
}

#[test]
fn a_stalled_body_times_out_and_keeps_what_arrived() {
    let body = random_bytes(300_000);
    let url = stalling_server(&body, 100_000);
    let dir = tempfile::tempdir().unwrap();
    let mut req = request(&url, &body, dir.path());
    req.read_timeout = Duration::from_secs(1);
    let started = std::time::Instant::now();
    let r = download_within(req.clone(), Default::default(), 15)
        .expect("the download of a stalled stream never ended");
    assert!(
        matches!(r, Err(DownloadError::Interrupted { at: 100_000, .. })),
        "{r:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let part = download::part_path(dir.path(), &req.sha256);
    assert_eq!(std::fs::metadata(part).unwrap().len(), 100_000);
}

#[test]
fn the_cancel_flag_interrupts_a_stalled_body() {
    let body = random_bytes(300_000);
    let url = stalling_server(&body, 1000);
    let dir = tempfile::tempdir().unwrap();
    let req = request(&url, &body, dir.path());
    let cancel = std::sync::Arc::new(AtomicBool::new(false));
    let c = cancel.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        c.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let started = std::time::Instant::now();
    // read_timeout is 60 s: only the flag can end it this soon.
    let r = download_within(req, cancel, 10).expect("the cancel flag did not end the download");
    assert!(matches!(r, Err(DownloadError::Cancelled)), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}
