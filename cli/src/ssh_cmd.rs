//! `resin ssh` and `resin tunnel`: sessions to a device through the cloud's
//! tunnel (`GET /v1/device(<id>)/tunnel`, a WebSocket of
//! `resin_api_types::tunnel` frames; docs/interfaces.md, "Tunnel").
//!
//! `ssh` gives an interactive terminal (raw mode, window size, resizes) or
//! runs one command and exits with its exit code; `tunnel` listens on a
//! local TCP port and opens one forward session per accepted connection.

use std::io::{IsTerminal, Read};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use resin_api_types::tunnel::{CloseInfo, Frame, OpenRequest, WinSize, INITIAL_WINDOW, MAX_DATA};
use resin_cli::args::{Cli, SshArgs, TunnelArgs};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{credentials, device_by_ref, id_of, usage};

/// The byte stream under the WebSocket (TCP or TLS).
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Ws = WebSocketStream<Box<dyn Io>>;

/// Where sessions to one device are opened.
#[derive(Clone)]
struct Target {
    url: String,
    key: String,
    tls: Arc<rustls::ClientConfig>,
}

fn tls_config(ca: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("CA file {}", path.display()))?;
            for c in CertificateDer::pem_slice_iter(&pem) {
                roots
                    .add(c.with_context(|| format!("CA file {}", path.display()))?)
                    .with_context(|| format!("CA file {}", path.display()))?;
            }
            if roots.is_empty() {
                bail!("CA file {}: no PEM certificate in it", path.display());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// The device's session URL, the key and the TLS trust of this login.
fn target(cli: &Cli, device: &str) -> Result<Target> {
    let (url, key, ca) = credentials(cli)?;
    let api = super::connect(cli)?;
    let dev = device_by_ref(&api, device)?;
    let id = id_of(&dev)?;
    let base = url.trim_end_matches('/');
    let ws = if let Some(r) = base.strip_prefix("https://") {
        format!("wss://{r}")
    } else if let Some(r) = base.strip_prefix("http://") {
        format!("ws://{r}")
    } else {
        return Err(usage(format!("API URL {url:?} is not http:// or https://")));
    };
    Ok(Target {
        url: format!("{ws}/v1/device({id})/tunnel"),
        key,
        tls: tls_config(ca.as_deref())?,
    })
}

async fn connect(t: &Target) -> Result<Ws> {
    let mut req = t.url.as_str().into_client_request()?;
    req.headers_mut()
        .insert("Authorization", format!("Bearer {}", t.key).parse()?);
    let uri = req.uri().clone();
    let secure = uri.scheme_str() == Some("wss");
    let host = uri
        .host()
        .ok_or_else(|| anyhow!("{}: no host", t.url))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .with_context(|| format!("cannot reach the resin cloud at {}", t.url))?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = if secure {
        let name = rustls::pki_types::ServerName::try_from(host.clone())?;
        Box::new(
            tokio_rustls::TlsConnector::from(t.tls.clone())
                .connect(name, tcp)
                .await
                .with_context(|| format!("TLS to {}", t.url))?,
        )
    } else {
        Box::new(tcp)
    };
    match tokio_tungstenite::client_async(req, io).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or(body);
            Err(resin_cli::api::ApiError::Status {
                method: "GET",
                path: t.url.clone(),
                status,
                message,
            }
            .into())
        }
        Err(e) => Err(anyhow!("WebSocket to {}: {e}", t.url)),
    }
}

async fn send(ws: &mut futures_util::stream::SplitSink<Ws, Message>, f: Frame) -> Result<()> {
    ws.send(Message::Binary(f.encode()?.into()))
        .await
        .context("sending to the cloud")
}

/// The next frame of the session (None: the socket closed).
async fn next(ws: &mut futures_util::stream::SplitStream<Ws>) -> Result<Option<Frame>> {
    loop {
        match ws.next().await {
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(Message::Binary(b))) => return Ok(Some(Frame::decode(&b)?)),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(anyhow!("tunnel: {e}")),
        }
    }
}

/// Puts the terminal in raw mode until dropped.
struct RawMode(Option<rustix::termios::Termios>);

impl RawMode {
    fn enter(on: bool) -> Self {
        use rustix::termios::{tcgetattr, tcsetattr, OptionalActions};
        if !on {
            return RawMode(None);
        }
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(&stdin) else {
            return RawMode(None);
        };
        let mut raw = saved.clone();
        raw.make_raw();
        let _ = tcsetattr(&stdin, OptionalActions::Now, &raw);
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let _ = rustix::termios::tcsetattr(
                std::io::stdin(),
                rustix::termios::OptionalActions::Now,
                t,
            );
        }
    }
}

fn winsize() -> WinSize {
    match rustix::termios::tcgetwinsize(std::io::stdout()) {
        Ok(w) if w.ws_col > 0 && w.ws_row > 0 => WinSize {
            cols: w.ws_col,
            rows: w.ws_row,
        },
        _ => WinSize { cols: 80, rows: 24 },
    }
}

/// Reads stdin on a thread (blocking reads), in chunks the window allows.
fn stdin_chunks() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// `resin ssh`: returns the remote exit code (255 when the session failed).
pub fn ssh(cli: &Cli, a: &SshArgs) -> Result<i32> {
    let t = target(cli, &a.device)?;
    let interactive = a.command.is_empty();
    let tty = (interactive || a.tty)
        && !a.no_tty
        && std::io::stdin().is_terminal()
        && std::io::stdout().is_terminal();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let ws = connect(&t).await?;
        let (mut tx, mut rx) = ws.split();
        let open = OpenRequest::Shell {
            command: a.command.clone(),
            service: a.service.clone(),
            tty: tty.then(winsize),
        };
        send(&mut tx, Frame::Open(1, open)).await?;
        let _raw = RawMode::enter(tty);
        let mut winch = if tty {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok()
        } else {
            None
        };
        let mut input = stdin_chunks();
        let mut input_open = true;
        let mut credit = i64::from(INITIAL_WINDOW);
        let mut stdout = tokio::io::stdout();
        let mut stderr = tokio::io::stderr();
        loop {
            tokio::select! {
                f = next(&mut rx) => match f? {
                    None => bail!("the cloud closed the session without an exit status"),
                    Some(Frame::Data(_, d)) => {
                        stdout.write_all(&d).await?;
                        stdout.flush().await?;
                        send(&mut tx, Frame::Credit(1, d.len() as u32)).await?;
                    }
                    Some(Frame::Stderr(_, d)) => {
                        stderr.write_all(&d).await?;
                        send(&mut tx, Frame::Credit(1, d.len() as u32)).await?;
                    }
                    Some(Frame::Credit(_, n)) => credit += i64::from(n),
                    Some(Frame::Close(_, CloseInfo { exit_code, error })) => {
                        stdout.flush().await?;
                        if let Some(e) = error {
                            drop(_raw);
                            eprintln!("resin: {e}");
                            return Ok(exit_code.unwrap_or(255));
                        }
                        return Ok(exit_code.unwrap_or(0));
                    }
                    Some(_) => {}
                },
                c = input.recv(), if input_open && credit >= MAX_DATA as i64 => match c {
                    Some(d) => {
                        credit -= d.len() as i64;
                        send(&mut tx, Frame::Data(1, d)).await?;
                    }
                    None => {
                        input_open = false;
                        send(&mut tx, Frame::Eof(1)).await?;
                    }
                },
                Some(()) = async { match winch.as_mut() { Some(w) => w.recv().await, None => std::future::pending().await } } => {
                    send(&mut tx, Frame::Resize(1, winsize())).await?;
                }
            }
        }
    })
}

/// `LOCAL:REMOTE` of `resin tunnel`: ([addr:]port, [host:]port).
fn parse_mapping(s: &str) -> Result<(String, String, u16)> {
    let bad = || {
        usage(format!(
            "{s:?} is not LOCAL:REMOTE (e.g. 8080:80, 127.0.0.1:8080:127.0.0.1:80, 2222:172.17.0.2:22)"
        ))
    };
    let parts: Vec<&str> = s.split(':').collect();
    let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0);
    let (local, host, rport) = match parts.as_slice() {
        [l, r] => (format!("127.0.0.1:{l}"), "127.0.0.1".to_owned(), port(r)),
        [l, h, r] => (format!("127.0.0.1:{l}"), (*h).to_owned(), port(r)),
        [la, l, h, r] => (format!("{la}:{l}"), (*h).to_owned(), port(r)),
        _ => return Err(bad()),
    };
    let rport = rport.ok_or_else(bad)?;
    local.parse::<std::net::SocketAddr>().map_err(|_| bad())?;
    Ok((local, host, rport))
}

/// `resin tunnel`: forwards until interrupted.
pub fn tunnel(cli: &Cli, a: &TunnelArgs) -> Result<()> {
    let (local, host, port) = parse_mapping(&a.mapping)?;
    let t = target(cli, &a.device)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(&local)
            .await
            .with_context(|| format!("listening on {local}"))?;
        eprintln!(
            "forwarding {} to {host}:{port} on device {}",
            l.local_addr()?,
            a.device
        );
        loop {
            let (sock, peer) = tokio::select! {
                r = l.accept() => r?,
                _ = tokio::signal::ctrl_c() => return Ok(()),
            };
            let (t, host) = (t.clone(), host.clone());
            tokio::spawn(async move {
                if let Err(e) = forward(&t, sock, host, port).await {
                    eprintln!("resin: connection from {peer}: {e:#}");
                }
            });
        }
    })
}

async fn forward(t: &Target, sock: tokio::net::TcpStream, host: String, port: u16) -> Result<()> {
    let _ = sock.set_nodelay(true);
    let ws = connect(t).await?;
    let (mut tx, mut rx) = ws.split();
    send(&mut tx, Frame::Open(1, OpenRequest::Tcp { host, port })).await?;
    let (mut r, mut w) = sock.into_split();
    let mut buf = vec![0u8; MAX_DATA];
    let mut credit = i64::from(INITIAL_WINDOW);
    let mut local_open = true;
    loop {
        tokio::select! {
            f = next(&mut rx) => match f? {
                None => return Ok(()),
                Some(Frame::Data(_, d)) => {
                    w.write_all(&d).await?;
                    send(&mut tx, Frame::Credit(1, d.len() as u32)).await?;
                }
                Some(Frame::Credit(_, n)) => credit += i64::from(n),
                Some(Frame::Close(_, c)) => {
                    let _ = w.shutdown().await;
                    return match c.error {
                        Some(e) => Err(anyhow!("{e}")),
                        None => Ok(()),
                    };
                }
                Some(_) => {}
            },
            n = r.read(&mut buf), if local_open && credit >= MAX_DATA as i64 => match n {
                Ok(0) | Err(_) => {
                    local_open = false;
                    send(&mut tx, Frame::Eof(1)).await?;
                }
                Ok(n) => {
                    credit -= n as i64;
                    send(&mut tx, Frame::Data(1, buf[..n].to_vec())).await?;
                }
            },
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings() {
        assert_eq!(
            parse_mapping("8080:80").ok(),
            Some(("127.0.0.1:8080".into(), "127.0.0.1".into(), 80))
        );
        assert_eq!(
            parse_mapping("2222:172.17.0.2:22").ok(),
            Some(("127.0.0.1:2222".into(), "172.17.0.2".into(), 22))
        );
        assert_eq!(
            parse_mapping("0.0.0.0:9000:localhost:9000").ok(),
            Some(("0.0.0.0:9000".into(), "localhost".into(), 9000))
        );
        for bad in ["80", "x:80", "8080:0", "a:b:c:d:e"] {
            assert!(parse_mapping(bad).is_err(), "{bad}");
        }
    }
}
