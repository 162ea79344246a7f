//! Lingering close for the HTTP listener.
//!
//! When the server answers before it has read the whole request (a 413 for a
//! body over the limit, hyper's own 414 for an over-long URI, a 401 or 404 for
//! an upload the caller may not make) and then closes, the client is usually
//! still sending. A socket closed with unread input sends a TCP reset, and a
//! reset makes the client's kernel drop the response it had not read yet: the
//! client sees "connection reset" or "broken pipe" instead of the status, and
//! only when the machine is slow enough for the race to go that way.
//!
//! So every accepted connection is wrapped in [`Linger`]. When hyper is done
//! with it, the socket is not closed at once: a task half-closes it (the client
//! reads the response and then end-of-file) and reads and discards what the
//! client still sends, until end-of-file, [`LINGER_IDLE`] without data, or
//! [`LINGER_TOTAL`] in all, the same bounds nginx's `lingering_close` uses.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// The longest a closed connection is drained.
pub const LINGER_TOTAL: Duration = Duration::from_secs(30);
/// Draining stops after this long without data from the client.
pub const LINGER_IDLE: Duration = Duration::from_secs(5);

/// A TCP listener whose connections close with a lingering close.
#[derive(Debug)]
pub struct LingerListener(pub TcpListener);

impl axum::serve::Listener for LingerListener {
    type Io = Linger;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, addr)) => {
                    // Small writes (tunnel keystrokes, SSE lines) go out at once
                    // rather than waiting for the peer's delayed ACK (Nagle).
                    let _ = stream.set_nodelay(true);
                    return (Linger(Some(stream)), addr);
                }
                Err(e) => {
                    // Per-connection errors (the peer went away before the
                    // accept) need no pause; others (out of descriptors) do.
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::ConnectionRefused
                    ) {
                        tracing::warn!(error = %e, "accept failed; retrying in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// An accepted connection that is drained, not reset, when dropped.
#[derive(Debug)]
pub struct Linger(Option<TcpStream>);

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection already closed")
}

impl AsyncRead for Linger {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.0.as_mut() {
            Some(s) => Pin::new(s).poll_read(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for Linger {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.0.as_mut() {
            Some(s) => Pin::new(s).poll_write(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.0.as_mut() {
            Some(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.0.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.0.as_mut() {
            Some(s) => Pin::new(s).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.0.as_mut() {
            Some(s) => Pin::new(s).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Drop for Linger {
    fn drop(&mut self) {
        if let Some(stream) = self.0.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(drain(stream));
            }
        }
    }
}

/// Half-closes the connection, then reads and discards until the client
/// closes its side, goes quiet for [`LINGER_IDLE`], or [`LINGER_TOTAL`] passes.
async fn drain(mut stream: TcpStream) {
    // The end of our response: the client reads it, then end-of-file.
    let _ = stream.shutdown().await;
    let deadline = tokio::time::Instant::now() + LINGER_TOTAL;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let idle = tokio::time::Instant::now() + LINGER_IDLE;
        match tokio::time::timeout_at(deadline.min(idle), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => continue,
            _ => return,
        }
    }
}

/// Whether a request comes with a body (for [`close_after_refused_body`]).
pub fn has_body(req: &axum::extract::Request) -> bool {
    use axum::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
    req.headers().contains_key(TRANSFER_ENCODING)
        || req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

/// An error answer to a request that came with a body says
/// `Connection: close` (part of the server-wide middleware,
/// [`crate::service`]). The handler may have refused it before reading the
/// body, and the connection then closes (with the lingering close above); a
/// client that pooled the connection for its next request would otherwise
/// send that request into a socket that is going away.
pub fn close_after_refused_body(has_body: bool, resp: &mut axum::response::Response) {
    if has_body && (resp.status().is_client_error() || resp.status().is_server_error()) {
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
}

/// The same lingering close for the HTTPS server (axum-server): the TCP
/// stream under TLS is wrapped, so the drain reads raw bytes after the TLS
/// session has closed.
#[derive(Debug, Clone, Copy, Default)]
pub struct LingerAcceptor;

impl<S> axum_server::accept::Accept<TcpStream, S> for LingerAcceptor {
    type Stream = Linger;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Linger, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let _ = stream.set_nodelay(true);
        std::future::ready(Ok((Linger(Some(stream)), service)))
    }
}
