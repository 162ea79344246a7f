//! Remote access: ONE outbound WebSocket to `<cloud>/device/v1/tunnel`
//! (device key; over TLS trusting only config.json's `rootCA`), kept open
//! with reconnects (exponential backoff with jitter). The device never
//! listens. Sessions the cloud opens on it (frames in
//! `resin_api_types::tunnel`): a shell on the host through a PTY (or pipes
//! for a command without a terminal), the same in a service's container
//! (an engine exec), and TCP forwards to what config.json's
//! `tunnel.tcpAllow` allows (loopback by default). Each kind can be
//! switched off in config.json. Connection frames: PollNow (the target
//! state changed: poll at once) and Reboot.
//!
//! Flow control: each session may have [`INITIAL_WINDOW`] bytes of output
//! unacknowledged; it waits for Credit frames for more, so a stalled reader
//! stalls only its own session.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use futures_util::{SinkExt, StreamExt};
use resin_api_types::tunnel::{
    AllowRule, CloseInfo, Frame, OpenRequest, TunnelSettings, WinSize, DEVICE_PATH, INITIAL_WINDOW,
    MAX_DATA,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::provision::backoff;

/// The cloud pings every 20 s; this much silence means the link is dead.
const SILENCE: Duration = Duration::from_secs(75);

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("tunnel URL {url}: {message}")]
    Url { url: String, message: String },
    #[error("connecting the tunnel to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS to {url}: {message}")]
    Tls { url: String, message: String },
    #[error("WebSocket handshake with {url}: {source}")]
    Handshake {
        url: String,
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    #[error("tunnel to {url}: {message}")]
    Protocol { url: String, message: String },
}

/// What the tunnel needs from the supervisor.
#[derive(Clone)]
pub struct TunnelOptions {
    /// config.json `apiEndpoint` (`http(s)://…`).
    pub api_endpoint: String,
    pub device_key: String,
    /// config.json `rootCA` as PEM: then only this CA is trusted.
    pub root_ca: Option<Vec<u8>>,
    pub settings: TunnelSettings,
    /// The engine, for `exec` sessions.
    pub docker: Option<Docker>,
    /// Cut the poller's wait short.
    pub poll_now: Arc<Notify>,
    /// The rebooter (honours update locks).
    pub reboot: Option<mpsc::Sender<String>>,
}

/// A byte stream the WebSocket runs over (TCP, or TLS over TCP).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The tunnel's WebSocket.
pub type Ws = WebSocketStream<Box<dyn Io>>;

/// `ws(s)://…/device/v1/tunnel` of an API endpoint.
pub fn tunnel_url(api_endpoint: &str) -> Result<String, TunnelError> {
    let base = api_endpoint.trim_end_matches('/');
    let rest = if let Some(r) = base.strip_prefix("https://") {
        format!("wss://{r}")
    } else if let Some(r) = base.strip_prefix("http://") {
        format!("ws://{r}")
    } else {
        return Err(TunnelError::Url {
            url: api_endpoint.to_owned(),
            message: "not http:// or https://".into(),
        });
    };
    Ok(format!("{rest}{DEVICE_PATH}"))
}

/// A rustls client config trusting only `ca_pem` (or the public roots).
pub fn tls_config(ca_pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for c in CertificateDer::pem_slice_iter(pem) {
                let c = c.map_err(|e| format!("rootCA: {e}"))?;
                roots.add(c).map_err(|e| format!("rootCA: {e}"))?;
            }
            if roots.is_empty() {
                return Err("rootCA holds no certificate".into());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Opens a WebSocket to `url` (`ws://` or `wss://`) with `Authorization:
/// Bearer <key>`, over TLS that trusts `tls`.
pub async fn connect_ws(
    url: &str,
    key: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Ws, TunnelError> {
    let bad = |message: String| TunnelError::Url {
        url: url.to_owned(),
        message,
    };
    let mut req = url.into_client_request().map_err(|e| bad(e.to_string()))?;
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {key}")
            .parse()
            .map_err(|_| bad("the key is not a valid header".into()))?,
    );
    let uri = req.uri().clone();
    let secure = uri.scheme_str() == Some("wss");
    let host = uri
        .host()
        .ok_or_else(|| bad("no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let tcp = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| TunnelError::Connect {
        url: url.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out after 15 s"),
    })?
    .map_err(|source| TunnelError::Connect {
        url: url.to_owned(),
        source,
    })?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = if secure {
        let cfg = match tls {
            Some(c) => c,
            None => tls_config(None).map_err(|message| TunnelError::Tls {
                url: url.to_owned(),
                message,
            })?,
        };
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| {
            TunnelError::Tls {
                url: url.to_owned(),
                message: e.to_string(),
            }
        })?;
        let s = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| TunnelError::Tls {
                url: url.to_owned(),
                message: e.to_string(),
            })?;
        Box::new(s)
    } else {
        Box::new(tcp)
    };
    // tungstenite allocates its read buffer up front: 128 KiB by default,
    // more than the rest of an idle tunnel.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, io, Some(config))
        .await
        .map_err(|e| TunnelError::Handshake {
            url: url.to_owned(),
            source: Box::new(e),
        })?;
    Ok(ws)
}

/// Keeps the tunnel up for ever (returns at once when it is switched off).
pub async fn run(opts: TunnelOptions) {
    if !opts.settings.enabled {
        tracing::info!("tunnel switched off in config.json");
        return;
    }
    let url = match tunnel_url(&opts.api_endpoint) {
        Ok(u) => u,
        Err(e) => {
            tracing::error!("no tunnel: {e}");
            return;
        }
    };
    let tls = match tls_config(opts.root_ca.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("no tunnel: {e}");
            return;
        }
    };
    let mut failures = 0u32;
    loop {
        let started = tokio::time::Instant::now();
        match connect_ws(&url, &opts.device_key, Some(tls.clone())).await {
            Ok(ws) => {
                tracing::info!(%url, "tunnel connected");
                match serve(ws, &opts).await {
                    Ok(()) => tracing::info!("tunnel closed by the cloud"),
                    Err(e) => tracing::warn!("tunnel: {e}"),
                }
                // A connection that lasted resets the backoff.
                if started.elapsed() > Duration::from_secs(60) {
                    failures = 0;
                }
            }
            Err(e) => tracing::warn!(failures, "tunnel: {e}"),
        }
        let delay = backoff(
            Duration::from_secs(1),
            failures,
            Duration::from_secs(300),
            rand::random_range(0.5..1.5),
        );
        failures = failures.saturating_add(1);
        tokio::time::sleep(delay).await;
    }
}

/// What a session task receives.
enum Input {
    Data(Vec<u8>),
    Resize(WinSize),
    Eof,
}

struct Session {
    input: mpsc::UnboundedSender<Input>,
    credit: Arc<Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

/// A session's way out: its stream, the connection's writer, its credit.
#[derive(Clone)]
struct Out {
    stream: u32,
    tx: mpsc::UnboundedSender<Frame>,
    credit: Arc<Semaphore>,
}

impl Out {
    /// Sends output, waiting for credit; false when the tunnel is gone.
    async fn data(&self, stderr: bool, bytes: &[u8]) -> bool {
        for chunk in bytes.chunks(MAX_DATA) {
            let Ok(permit) = self.credit.acquire_many(chunk.len() as u32).await else {
                return false;
            };
            permit.forget();
            let f = if stderr {
                Frame::Stderr(self.stream, chunk.to_vec())
            } else {
                Frame::Data(self.stream, chunk.to_vec())
            };
            if self.tx.send(f).is_err() {
                return false;
            }
        }
        true
    }

    /// Returns `n` bytes of credit to the peer.
    fn consumed(&self, n: usize) {
        if n > 0 {
            let _ = self.tx.send(Frame::Credit(
                self.stream,
                u32::try_from(n).unwrap_or(u32::MAX),
            ));
        }
    }

    fn close(&self, exit_code: Option<i32>, error: Option<String>) {
        let _ = self
            .tx
            .send(Frame::Close(self.stream, CloseInfo { exit_code, error }));
    }
}

/// Serves one connection until it ends; every session ends with it.
pub async fn serve(ws: Ws, opts: &TunnelOptions) -> Result<(), TunnelError> {
    let url = opts.api_endpoint.clone();
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    let writer = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            let Ok(b) = f.encode() else { continue };
            if sink.send(Message::Binary(b.into())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<u32>();
    let mut sessions: HashMap<u32, Session> = HashMap::new();
    let allow = opts.settings.allow_rules().unwrap_or_else(|e| {
        tracing::error!("{e}: TCP forwards refused");
        Vec::new()
    });
    let result = loop {
        let msg = tokio::select! {
            m = tokio::time::timeout(SILENCE, stream.next()) => m,
            Some(s) = done_rx.recv() => { sessions.remove(&s); continue }
        };
        let b = match msg {
            Err(_) => {
                break Err(TunnelError::Protocol {
                    url,
                    message: format!("silent for {} s", SILENCE.as_secs()),
                })
            }
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => break Ok(()),
            Ok(Some(Err(e))) => {
                break Err(TunnelError::Protocol {
                    url,
                    message: e.to_string(),
                })
            }
            Ok(Some(Ok(Message::Binary(b)))) => b,
            Ok(Some(Ok(_))) => continue,
        };
        let f = match Frame::decode(&b) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("tunnel: {e}; frame ignored");
                continue;
            }
        };
        match f {
            Frame::PollNow => {
                tracing::info!("tunnel: poll now");
                opts.poll_now.notify_one();
            }
            Frame::Reboot => {
                tracing::info!("tunnel: reboot asked");
                if let Some(r) = &opts.reboot {
                    let _ = r.try_send("reboot asked through the tunnel".into());
                }
            }
            Frame::Open(s, req) => {
                let credit = Arc::new(Semaphore::new(INITIAL_WINDOW as usize));
                let out = Out {
                    stream: s,
                    tx: tx.clone(),
                    credit: credit.clone(),
                };
                if sessions.contains_key(&s) {
                    out.close(None, Some(format!("stream {s} is already open")));
                    continue;
                }
                if sessions.len() >= opts.settings.max_sessions as usize {
                    out.close(
                        None,
                        Some(format!(
                            "the device allows {} sessions at once",
                            opts.settings.max_sessions
                        )),
                    );
                    continue;
                }
                if let Err(why) = permitted(&opts.settings, &allow, &req) {
                    tracing::warn!(kind = req.kind(), target = %req.target(), "tunnel session refused: {why}");
                    out.close(None, Some(why));
                    continue;
                }
                tracing::info!(stream = s, kind = req.kind(), target = %req.target(), "tunnel session");
                let (in_tx, in_rx) = mpsc::unbounded_channel();
                let docker = opts.docker.clone();
                let done = done_tx.clone();
                let task = tokio::spawn(async move {
                    let (code, err) = match run_session(req, docker, &out, in_rx).await {
                        Ok(code) => (code, None),
                        Err(e) => (None, Some(e)),
                    };
                    out.close(code, err);
                    let _ = done.send(s);
                });
                sessions.insert(
                    s,
                    Session {
                        input: in_tx,
                        credit,
                        task,
                    },
                );
            }
            Frame::Data(s, d) => {
                if let Some(sess) = sessions.get(&s) {
                    let _ = sess.input.send(Input::Data(d));
                }
            }
            Frame::Resize(s, w) => {
                if let Some(sess) = sessions.get(&s) {
                    let _ = sess.input.send(Input::Resize(w));
                }
            }
            Frame::Eof(s) => {
                if let Some(sess) = sessions.get(&s) {
                    let _ = sess.input.send(Input::Eof);
                }
            }
            Frame::Credit(s, n) => {
                if let Some(sess) = sessions.get(&s) {
                    // A peer that credits more than it was sent cannot grow
                    // the window past the semaphore's limit.
                    let room = Semaphore::MAX_PERMITS - sess.credit.available_permits();
                    sess.credit.add_permits((n as usize).min(room));
                }
            }
            Frame::Close(s, _) => {
                if let Some(sess) = sessions.remove(&s) {
                    // Dropping the task kills its child (kill_on_drop).
                    sess.task.abort();
                }
            }
            Frame::Opened(_) | Frame::Stderr(..) => {}
        }
    };
    for (_, s) in sessions.drain() {
        s.task.abort();
    }
    writer.abort();
    result
}

/// The device's own rules for a session: feature switches and the allow-list.
fn permitted(
    settings: &TunnelSettings,
    allow: &[AllowRule],
    req: &OpenRequest,
) -> Result<(), String> {
    match req {
        OpenRequest::Shell { service: None, .. } if !settings.shell => {
            Err("host shells are switched off on this device (config.json tunnel.shell)".into())
        }
        OpenRequest::Shell {
            service: Some(_), ..
        } if !settings.exec => Err(
            "shells in containers are switched off on this device (config.json tunnel.exec)".into(),
        ),
        OpenRequest::Tcp { .. } if !settings.tcp => {
            Err("TCP forwards are switched off on this device (config.json tunnel.tcp)".into())
        }
        OpenRequest::Tcp { host, port } if !allow.iter().any(|r| r.allows(host, *port)) => {
            Err(format!(
                "{host}:{port} is not in this device's allow-list (config.json tunnel.tcpAllow)"
            ))
        }
        _ => Ok(()),
    }
}

async fn run_session(
    req: OpenRequest,
    docker: Option<Docker>,
    out: &Out,
    input: mpsc::UnboundedReceiver<Input>,
) -> Result<Option<i32>, String> {
    match req {
        OpenRequest::Tcp { host, port } => tcp(&host, port, out, input).await.map(|()| None),
        OpenRequest::Shell {
            command,
            service: Some(service),
            tty,
        } => {
            let docker = docker.ok_or("no container engine on this device")?;
            exec(&docker, &service, &command, tty, out, input)
                .await
                .map(Some)
        }
        OpenRequest::Shell {
            command,
            service: None,
            tty: Some(size),
        } => host_pty(&command, size, out, input).await.map(Some),
        OpenRequest::Shell {
            command,
            service: None,
            tty: None,
        } => host_pipes(&command, out, input).await.map(Some),
    }
}

/// `sh -c "<words>"` (as ssh runs a command), or a login shell.
fn shell_args(command: &[String]) -> Vec<String> {
    if command.is_empty() {
        vec!["-l".into()]
    } else {
        vec!["-c".into(), command.join(" ")]
    }
}

fn exit_code(st: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

async fn host_pty(
    command: &[String],
    size: WinSize,
    out: &Out,
    mut input: mpsc::UnboundedReceiver<Input>,
) -> Result<i32, String> {
    let (pty, pts) = pty_process::open().map_err(|e| format!("opening a PTY: {e}"))?;
    pty.resize(pty_process::Size::new(size.rows, size.cols))
        .map_err(|e| format!("sizing the PTY: {e}"))?;
    let mut child = pty_process::Command::new("/bin/sh")
        .args(shell_args(command))
        .env("TERM", "xterm-256color")
        .kill_on_drop(true)
        .spawn(pts)
        .map_err(|e| format!("starting /bin/sh: {e}"))?;
    out.tx.send(Frame::Opened(out.stream)).ok();
    let (mut r, mut w) = pty.into_split();
    let mut buf = vec![0u8; MAX_DATA];
    let mut status = None;
    loop {
        tokio::select! {
            n = r.read(&mut buf) => match n {
                // EIO: every process on the terminal has gone.
                Ok(0) | Err(_) => break,
                Ok(n) => if !out.data(false, &buf[..n]).await { return Err("tunnel gone".into()) },
            },
            i = input.recv() => match i {
                Some(Input::Data(d)) => {
                    if w.write_all(&d).await.is_err() { break }
                    out.consumed(d.len());
                }
                Some(Input::Resize(s)) => { let _ = w.resize(pty_process::Size::new(s.rows, s.cols)); }
                // A terminal's end of input is its EOF character.
                Some(Input::Eof) => { let _ = w.write_all(&[4]).await; }
                None => break,
            },
            st = child.wait(), if status.is_none() => {
                status = Some(st.map_err(|e| e.to_string())?);
                // Output still in the PTY: read it for a moment.
                loop {
                    match tokio::time::timeout(Duration::from_millis(200), r.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => if !out.data(false, &buf[..n]).await { break },
                        _ => break,
                    }
                }
                break;
            }
        }
    }
    let st = match status {
        Some(s) => s,
        None => child.wait().await.map_err(|e| e.to_string())?,
    };
    Ok(exit_code(st))
}

async fn host_pipes(
    command: &[String],
    out: &Out,
    mut input: mpsc::UnboundedReceiver<Input>,
) -> Result<i32, String> {
    use std::process::Stdio;
    let mut child = tokio::process::Command::new("/bin/sh")
        .args(shell_args(command))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting /bin/sh: {e}"))?;
    out.tx.send(Frame::Opened(out.stream)).ok();
    let mut stdin = child.stdin.take();
    let mut so = child.stdout.take().ok_or("no stdout")?;
    let mut se = child.stderr.take().ok_or("no stderr")?;
    let (mut b1, mut b2) = (vec![0u8; MAX_DATA], vec![0u8; MAX_DATA]);
    let (mut so_open, mut se_open, mut in_open) = (true, true, true);
    while so_open || se_open {
        tokio::select! {
            n = so.read(&mut b1), if so_open => match n {
                Ok(0) | Err(_) => so_open = false,
                Ok(n) => if !out.data(false, &b1[..n]).await { return Err("tunnel gone".into()) },
            },
            n = se.read(&mut b2), if se_open => match n {
                Ok(0) | Err(_) => se_open = false,
                Ok(n) => if !out.data(true, &b2[..n]).await { return Err("tunnel gone".into()) },
            },
            i = input.recv(), if in_open => match i {
                Some(Input::Data(d)) => {
                    if let Some(s) = stdin.as_mut() {
                        if s.write_all(&d).await.is_err() { stdin = None }
                    }
                    out.consumed(d.len());
                }
                Some(Input::Resize(_)) => {}
                Some(Input::Eof) => stdin = None,
                None => { in_open = false; stdin = None }
            },
        }
    }
    let st = child.wait().await.map_err(|e| e.to_string())?;
    Ok(exit_code(st))
}

async fn tcp(
    host: &str,
    port: u16,
    out: &Out,
    mut input: mpsc::UnboundedReceiver<Input>,
) -> Result<(), String> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    let s = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((h, port)),
    )
    .await
    .map_err(|_| format!("connecting to {host}:{port}: timed out"))?
    .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
    let _ = s.set_nodelay(true);
    out.tx.send(Frame::Opened(out.stream)).ok();
    let (mut r, mut w) = s.into_split();
    let mut buf = vec![0u8; MAX_DATA];
    let mut in_open = true;
    loop {
        tokio::select! {
            n = r.read(&mut buf) => match n {
                Ok(0) => return Ok(()),
                Err(e) => return Err(format!("{host}:{port}: {e}")),
                Ok(n) => if !out.data(false, &buf[..n]).await { return Err("tunnel gone".into()) },
            },
            i = input.recv(), if in_open => match i {
                Some(Input::Data(d)) => {
                    w.write_all(&d).await.map_err(|e| format!("{host}:{port}: {e}"))?;
                    out.consumed(d.len());
                }
                Some(Input::Resize(_)) => {}
                Some(Input::Eof) | None => { in_open = false; let _ = w.shutdown().await; }
            },
        }
    }
}

/// The running container of `service` (managed by this supervisor).
async fn container_of(docker: &Docker, service: &str) -> Result<String, String> {
    use bollard::query_parameters::ListContainersOptionsBuilder;
    use resin_api_types::labels;
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![
            format!("{}=1", labels::MANAGED),
            format!("{}={service}", labels::SERVICE_NAME),
        ],
    )]);
    let list = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(false)
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(|e| format!("listing containers: {e}"))?;
    list.into_iter()
        .find_map(|c| c.id)
        .ok_or_else(|| format!("service {service:?} has no running container on this device"))
}

async fn exec(
    docker: &Docker,
    service: &str,
    command: &[String],
    tty: Option<WinSize>,
    out: &Out,
    mut input: mpsc::UnboundedReceiver<Input>,
) -> Result<i32, String> {
    use bollard::container::LogOutput;
    use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
    let id = container_of(docker, service).await?;
    let cmd: Vec<String> = if command.is_empty() {
        vec!["/bin/sh".into()]
    } else {
        vec!["/bin/sh".into(), "-c".into(), command.join(" ")]
    };
    let exec = docker
        .create_exec(
            &id,
            CreateExecOptions {
                attach_stdin: Some(true),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(tty.is_some()),
                cmd: Some(cmd),
                env: tty.map(|_| vec!["TERM=xterm-256color".to_owned()]),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("exec in {service}: {e}"))?
        .id;
    let started = docker
        .start_exec(
            &exec,
            Some(StartExecOptions {
                detach: false,
                tty: tty.is_some(),
                output_capacity: None,
            }),
        )
        .await
        .map_err(|e| format!("exec in {service}: {e}"))?;
    let StartExecResults::Attached {
        mut output,
        input: mut stdin,
    } = started
    else {
        return Err("the engine detached the exec".into());
    };
    let resize = |s: WinSize| {
        let exec = exec.clone();
        async move {
            let o = bollard::query_parameters::ResizeExecOptionsBuilder::default()
                .h(i32::from(s.rows))
                .w(i32::from(s.cols))
                .build();
            let _ = docker.resize_exec(&exec, o).await;
        }
    };
    if let Some(s) = tty {
        resize(s).await;
    }
    out.tx.send(Frame::Opened(out.stream)).ok();
    let mut in_open = true;
    loop {
        tokio::select! {
            o = output.next() => match o {
                None | Some(Err(_)) => break,
                Some(Ok(LogOutput::StdErr { message })) => {
                    if !out.data(true, &message).await { return Err("tunnel gone".into()) }
                }
                Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                    if !out.data(false, &message).await { return Err("tunnel gone".into()) }
                }
                Some(Ok(LogOutput::StdIn { .. })) => {}
            },
            i = input.recv(), if in_open => match i {
                Some(Input::Data(d)) => {
                    let _ = stdin.write_all(&d).await;
                    let _ = stdin.flush().await;
                    out.consumed(d.len());
                }
                Some(Input::Resize(s)) => resize(s).await,
                Some(Input::Eof) | None => {
                    in_open = false;
                    if tty.is_some() { let _ = stdin.write_all(&[4]).await; } else { let _ = stdin.shutdown().await; }
                }
            },
        }
    }
    // The exit code lands a moment after the output ends.
    for _ in 0..50 {
        let i = docker
            .inspect_exec(&exec)
            .await
            .map_err(|e| format!("exec in {service}: {e}"))?;
        if i.running != Some(true) {
            if let Some(c) = i.exit_code {
                return Ok(i32::try_from(c).unwrap_or(1));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("exec in {service}: no exit code"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            tunnel_url("https://c.example:8443/").ok().as_deref(),
            Some("wss://c.example:8443/device/v1/tunnel")
        );
        assert_eq!(
            tunnel_url("http://10.0.2.2:8080").ok().as_deref(),
            Some("ws://10.0.2.2:8080/device/v1/tunnel")
        );
        assert!(tunnel_url("ftp://x").is_err());
    }

    #[test]
    fn switches_and_allow_list_decide() {
        let mut s = TunnelSettings::default();
        let allow = s.allow_rules().unwrap_or_default();
        let shell = OpenRequest::Shell {
            command: vec![],
            service: None,
            tty: None,
        };
        let tcp = |h: &str, p| OpenRequest::Tcp {
            host: h.into(),
            port: p,
        };
        assert!(permitted(&s, &allow, &shell).is_ok());
        assert!(permitted(&s, &allow, &tcp("127.0.0.1", 80)).is_ok());
        let e = permitted(&s, &allow, &tcp("10.0.0.1", 80))
            .err()
            .unwrap_or_default();
        assert!(
            e.contains("10.0.0.1:80 is not in this device's allow-list"),
            "{e}"
        );
        s.shell = false;
        s.tcp = false;
        assert!(permitted(&s, &allow, &shell).is_err());
        assert!(permitted(&s, &allow, &tcp("127.0.0.1", 80)).is_err());
    }
}
