//! The dashboard terminal's single-use tickets: a logged-in page asks for a
//! ticket (session cookie + CSRF) and opens the device's session WebSocket
//! with `?ticket=` instead of a key. A fake device (a WebSocket client on
//! `/device/v1/tunnel` that answers an Open with a prompt and echoes what it
//! is sent) stands in for the supervisor.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/webdriver.rs"]
mod webdriver;

use common::web::Browser;
use common::{Backend, Server};
use futures_util::{SinkExt, StreamExt};
use resin_api_types::tunnel::{CloseInfo, Frame, OpenRequest, WinSize};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Connects a fake device with `key` to the cloud at `base` (http://…): it
/// answers Open with "fake shell ready" and each line it is sent (ended by
/// CR or LF) with "ran: <line>"; the line "exit" closes the session with
/// exit code 0.
pub async fn fake_device(base: &str, key: &str) {
    let url = format!("{}/device/v1/tunnel", base.replace("http://", "ws://"));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {key}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut lines: std::collections::HashMap<u32, Vec<u8>> = Default::default();
    while let Some(Ok(m)) = ws.next().await {
        let Message::Binary(b) = m else { continue };
        let replies = match Frame::decode(&b).unwrap() {
            Frame::Open(s, _) => vec![Frame::Data(s, b"fake shell ready\r\n".to_vec())],
            Frame::Data(s, d) => {
                let buf = lines.entry(s).or_default();
                buf.extend_from_slice(&d);
                let mut out = Vec::new();
                while let Some(i) = buf.iter().position(|c| *c == b'\r' || *c == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    let line = String::from_utf8_lossy(&line[..i]).into_owned();
                    if line == "exit" {
                        out.push(Frame::Close(
                            s,
                            CloseInfo {
                                exit_code: Some(0),
                                error: None,
                            },
                        ));
                    } else if !line.is_empty() {
                        out.push(Frame::Data(s, format!("ran: {line}\r\n").into_bytes()));
                    }
                }
                out
            }
            _ => continue,
        };
        for r in replies {
            ws.send(Message::Binary(r.encode().unwrap().into()))
                .await
                .unwrap();
        }
    }
}

/// The handshake's status (101 on success) for `/v1/device(<device>)/tunnel?ticket=…`
/// on `base`, with `origin`; on 101, the first Data the session gets.
fn open_with_ticket(
    s: &Server,
    base: &str,
    device: i64,
    ticket: &str,
    origin: Option<&str>,
) -> (u16, String) {
    s.rt.block_on(async {
        let url = format!(
            "{}/v1/device({device})/tunnel?ticket={ticket}",
            base.replace("http://", "ws://")
        );
        let mut req = url.into_client_request().unwrap();
        if let Some(o) = origin {
            req.headers_mut().insert("Origin", o.parse().unwrap());
        }
        let mut ws = match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                let body = String::from_utf8_lossy(r.body().as_deref().unwrap_or_default());
                return (r.status().as_u16(), body.into_owned());
            }
            Err(e) => panic!("handshake: {e}"),
        };
        let open = Frame::Open(
            1,
            OpenRequest::Shell {
                command: vec![],
                service: None,
                tty: Some(WinSize { cols: 80, rows: 24 }),
            },
        );
        ws.send(Message::Binary(open.encode().unwrap().into()))
            .await
            .unwrap();
        let first = loop {
            let m = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
                .await
                .expect("a frame within 10 s");
            match m {
                Some(Ok(Message::Binary(b))) => match Frame::decode(&b).unwrap() {
                    Frame::Data(_, d) => break String::from_utf8_lossy(&d).into_owned(),
                    Frame::Close(_, c) => panic!("closed: {c:?}"),
                    _ => continue,
                },
                other => panic!("no Data: {other:?}"),
            }
        };
        ws.send(Message::Binary(
            Frame::Data(1, b"exit\r".to_vec()).encode().unwrap().into(),
        ))
        .await
        .unwrap();
        while let Some(Ok(_)) = ws.next().await {}
        (101, first)
    })
}

/// A logged-in browser's ticket for `device`: (status, JSON body).
fn ticket(b: &mut Browser, device: i64, csrf: Option<&str>) -> (u16, Value) {
    let headers: Vec<(&str, &str)> = csrf.map(|c| ("X-CSRF-Token", c)).into_iter().collect();
    let p = b.request_with(
        "POST",
        &format!("/devices/{device}/terminal/ticket"),
        Some(Vec::new()),
        &headers,
    );
    let v = serde_json::from_str(&p.body).unwrap_or(Value::Null);
    (p.status, v)
}

fn tickets_are_single_use_short_lived_and_bound(backend: Backend) {
    let s = Server::start(backend);
    let (_, alice_key) = s.web_user("alice", "alice-password-1");
    let (_, bob_key) = s.web_user("bob", "bob-password-12");
    let (_, prov) = s.fleet(&alice_key, "a");
    let (dev, _, dev_key) = s.device(&prov);
    let (_, bob_prov) = s.fleet(&bob_key, "b");
    let (bob_dev, _, _) = s.device(&bob_prov);
    let base = s.base.clone();
    s.rt.spawn(async move { fake_device(&base, &dev_key).await });
    // Wait for the device's tunnel.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.app.tunnels.get(dev).is_none() {
        assert!(
            std::time::Instant::now() < end,
            "the fake device never connected"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let mut a = Browser::new(&s);
    assert_eq!(a.login("alice", "alice-password-1").status, 303);
    let csrf = a.csrf();
    // The device page links to the terminal page, which loads the scripts.
    let page = a.get(&format!("/devices/{dev}"));
    assert_eq!(
        page.attrs("#terminal-link", "href"),
        vec![format!("/devices/{dev}/terminal")]
    );
    let term = a.get(&format!("/devices/{dev}/terminal"));
    assert_eq!(term.status, 200, "{}", term.body);
    assert_eq!(
        term.attrs("script[src]", "src"),
        vec![
            "/static/htmx.min.js",
            "/static/xterm.js",
            "/static/terminal.js"
        ]
    );
    assert!(term
        .header("content-security-policy")
        .unwrap()
        .contains("connect-src 'self'"));
    for f in ["xterm.js", "xterm.css", "terminal.js"] {
        assert_eq!(a.get(&format!("/static/{f}")).status, 200, "{f}");
    }

    // No CSRF token: no ticket.
    assert_eq!(ticket(&mut a, dev, None).0, 403);
    // A ticket opens one session, once.
    let (st, t) = ticket(&mut a, dev, Some(&csrf));
    assert_eq!(st, 200, "{t}");
    assert_eq!(t["expires_in"], 30);
    let t = t["ticket"].as_str().unwrap().to_owned();
    let origin = s.app.config.public_url.clone();
    assert_eq!(
        open_with_ticket(&s, &s.base, dev, &t, Some(&origin)),
        (101, "fake shell ready\r\n".to_owned())
    );
    let (st, body) = open_with_ticket(&s, &s.base, dev, &t, Some(&origin));
    assert_eq!(st, 401, "a used ticket: {body}");
    assert!(body.contains("used already"), "{body}");

    // Another site's page: 403, whatever the ticket.
    let (_, t2) = ticket(&mut a, dev, Some(&csrf));
    let t2 = t2["ticket"].as_str().unwrap();
    let (st, _) = open_with_ticket(&s, &s.base, dev, t2, Some("https://evil.example"));
    assert_eq!(st, 403, "a wrong Origin");

    // Expired (30 s are over).
    let (_, t3) = ticket(&mut a, dev, Some(&csrf));
    let t3 = t3["ticket"].as_str().unwrap();
    s.rt.block_on(
        sqlx::query("UPDATE tunnel_ticket SET expires_at = '2000-01-01T00:00:00Z'")
            .execute(&s.app.db.pool),
    )
    .unwrap();
    let (st, body) = open_with_ticket(&s, &s.base, dev, t3, None);
    assert_eq!(st, 401, "an expired ticket: {body}");
    assert!(body.contains("expired"), "{body}");

    // Bob: no ticket for Alice's device, and his own device's ticket does
    // not open hers.
    let mut b = Browser::new(&s);
    assert_eq!(b.login("bob", "bob-password-12").status, 303);
    let bob_csrf = b.csrf();
    assert_eq!(ticket(&mut b, dev, Some(&bob_csrf)).0, 404);
    assert_eq!(b.get(&format!("/devices/{dev}/terminal")).status, 404);
    let (st, bt) = ticket(&mut b, bob_dev, Some(&bob_csrf));
    assert_eq!(st, 200);
    let (st, body) = open_with_ticket(&s, &s.base, dev, bt["ticket"].as_str().unwrap(), None);
    assert_eq!(st, 401, "Bob's ticket on Alice's device: {body}");
    assert!(body.contains("another device"), "{body}");

    // Audited like the CLI's sessions: one session, Alice's.
    let rows = s
        .get(&format!("/v1/device({dev})/tunnel/sessions"), &alice_key)
        .json();
    let rows = rows["value"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["username"], "alice");
    assert_eq!(rows[0]["kind"], "shell");

    // On PostgreSQL a ticket made on one replica opens a session on another
    // (which forwards it to the replica holding the device).
    if backend == Backend::Postgres {
        let other = s.replica();
        let (_, t4) = ticket(&mut a, dev, Some(&csrf));
        let t4 = t4["ticket"].as_str().unwrap();
        let base_b = format!("http://{}", other.addr);
        assert_eq!(
            open_with_ticket(&s, &base_b, dev, t4, None),
            (101, "fake shell ready\r\n".to_owned())
        );
        other.task.abort();
    }
}

#[test]
fn sqlite_tickets_are_single_use_short_lived_and_bound() {
    tickets_are_single_use_short_lived_and_bound(Backend::Sqlite);
}

#[test]
fn postgres_tickets_are_single_use_short_lived_and_bound() {
    tickets_are_single_use_short_lived_and_bound(Backend::Postgres);
}

/// The terminal page in chromium: it gets a ticket, opens a shell on the
/// fake device, and what is typed runs there and its output shows.
#[test]
fn the_terminal_page_runs_a_command_in_chromium() {
    use std::time::Duration;
    let s = Server::start(Backend::Sqlite);
    let (_, key) = s.web_user("alice", "alice-password-1");
    let (_, prov) = s.fleet(&key, "a");
    let (dev, _, dev_key) = s.device(&prov);
    let base = s.base.clone();
    s.rt.spawn(async move { fake_device(&base, &dev_key).await });
    let mut d = webdriver::Driver::start();
    d.goto(&format!("{}/login", s.base));
    d.type_into("#username", "alice");
    d.type_into("#password", "alice-password-1");
    d.click("form.login button[type=submit]");
    d.wait_for(Duration::from_secs(10), "the fleets page", |d| {
        d.url().ends_with("/fleets")
    });
    d.goto(&format!("{}/devices/{dev}", s.base));
    d.click("#terminal-link");
    d.wait_for(Duration::from_secs(15), "the terminal to connect", |d| {
        d.attr("#terminal", "data-state").as_deref() == Some("live")
    });
    d.wait_for(Duration::from_secs(10), "the shell's prompt", |d| {
        d.text(".xterm-rows").contains("fake shell ready")
    });
    d.type_into(".xterm-helper-textarea", "echo hello\u{E007}");
    d.wait_for(Duration::from_secs(10), "the command's output", |d| {
        d.text(".xterm-rows").contains("ran: echo hello")
    });
    // Readable: light text in a monospace font on the black screen (the CSP
    // refuses xterm's own <style> elements; app.css stands in for them).
    assert_eq!(
        d.css_value(".xterm-rows", "color"),
        "rgba(255, 255, 255, 1)"
    );
    assert!(
        d.css_value(".xterm-rows", "font-family")
            .contains("monospace"),
        "{}",
        d.css_value(".xterm-rows", "font-family")
    );
    d.screenshot(&webdriver::screenshots().join("terminal.png"));
    d.type_into(".xterm-helper-textarea", "exit\u{E007}");
    d.wait_for(Duration::from_secs(10), "the session's end", |d| {
        d.attr("#terminal", "data-state").as_deref() == Some("closed")
    });
    assert_eq!(d.text("#terminal-state"), "session ended (exit 0)");
    let rows = s
        .get(&format!("/v1/device({dev})/tunnel/sessions"), &key)
        .json();
    assert_eq!(rows["value"][0]["username"], "alice");
    assert_eq!(rows["value"][0]["kind"], "shell");
}
