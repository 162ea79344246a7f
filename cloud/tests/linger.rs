//! A client that is still sending when the server answers early (413 for a
//! body over the limit) must get the answer, not a reset. Before the
//! lingering close, the server closed at once; the client's next writes met
//! a reset ("Broken pipe"), and a client that stops at a write error (ureq,
//! as CI's hardening test saw under load) never read the 413.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{Backend, Server};

#[test]
fn an_early_413_reaches_a_client_still_sending_its_body() {
    let s = Server::start(Backend::Sqlite);
    let (_, key) = s.user("alice");
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let total: usize = 64 * 1024 * 1024;
    write!(
        c,
        "POST /v1/fleet HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {total}\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    // Past the 16 MiB limit: the server answers 413 now.
    while sent <= 16 * 1024 * 1024 {
        c.write_all(&chunk).unwrap();
        sent += chunk.len();
    }
    // Let it answer and close before the rest goes out, as a slow client or
    // a loaded machine would.
    std::thread::sleep(Duration::from_millis(500));
    while sent < total {
        c.write_all(&chunk).unwrap_or_else(|e| {
            panic!("the server reset the connection after {sent} of {total} bytes: {e}")
        });
        sent += chunk.len();
    }
    let mut resp = Vec::new();
    c.read_to_end(&mut resp).unwrap();
    let resp = String::from_utf8_lossy(&resp);
    assert!(
        resp.starts_with("HTTP/1.1 413"),
        "expected a 413, got {:?}",
        resp.lines().next()
    );
    // The connection is not kept for another request: a pooling client
    // must not send its next request into it.
    assert!(
        resp.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "no Connection: close on a refused body: {resp}"
    );
}
