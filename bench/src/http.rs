//! One keep-alive HTTP/1.1 connection (hyper's low-level client), so a run
//! uses exactly as many connections as it has workers.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// `http://host:port` split into what we need.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: String,
    pub host: HeaderValue,
}

impl Target {
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("{url}: only http:// URLs are supported"))?;
        let hostport = rest.trim_end_matches('/');
        if hostport.contains('/') {
            bail!("{url}: give the base URL without a path");
        }
        let addr = if hostport.contains(':') {
            hostport.to_string()
        } else {
            format!("{hostport}:80")
        };
        Ok(Self {
            addr,
            host: HeaderValue::from_str(hostport).context("host header")?,
        })
    }
}

/// A response: status, headers, body.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A connection that reconnects after an error.
pub struct Conn {
    target: Target,
    sender: Option<SendRequest<Full<Bytes>>>,
    timeout: Duration,
}

impl Conn {
    pub fn new(target: Target, timeout: Duration) -> Self {
        Self {
            target,
            sender: None,
            timeout,
        }
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Full<Bytes>>> {
        let ready = matches!(&self.sender, Some(s) if !s.is_closed());
        if !ready {
            let stream = TcpStream::connect(&self.target.addr)
                .await
                .with_context(|| format!("connecting to {}", self.target.addr))?;
            stream.set_nodelay(true)?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        self.sender.as_mut().ok_or_else(|| anyhow!("no connection"))
    }

    /// Sends one request and reads the whole answer. On any error the
    /// connection is dropped, so the next call reconnects.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        auth: Option<&HeaderValue>,
        extra: Option<(&'static str, &HeaderValue)>,
        body: Option<Bytes>,
    ) -> Result<Answer> {
        let timeout = self.timeout;
        let r = tokio::time::timeout(timeout, self.request_inner(method, path, auth, extra, body))
            .await;
        match r {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                self.sender = None;
                bail!("timed out after {timeout:?}")
            }
        }
    }

    async fn request_inner(
        &mut self,
        method: Method,
        path: &str,
        auth: Option<&HeaderValue>,
        extra: Option<(&'static str, &HeaderValue)>,
        body: Option<Bytes>,
    ) -> Result<Answer> {
        let host = self.target.host.clone();
        let sender = self.connect().await?;
        sender.ready().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, host);
        if let Some(a) = auth {
            req = req.header(hyper::header::AUTHORIZATION, a.clone());
        }
        if let Some((k, v)) = extra {
            req = req.header(k, v.clone());
        }
        let has_body = body.is_some();
        if has_body {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(body.unwrap_or_default()))?;
        let resp = sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}
