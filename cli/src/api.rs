//! A blocking client of the resin cloud API (ureq 3): bearer auth, JSON in
//! and out, and errors that carry the cloud's OData error message.

use std::io::Read;
use std::time::Duration;

use serde_json::Value;

/// Errors from talking to the cloud.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the resin cloud at {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: ureq::Error,
    },
    #[error("CA file {path}: {message}")]
    Ca {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("{method} {path} failed: HTTP {status}: {message}")]
    Status {
        method: &'static str,
        path: String,
        status: u16,
        message: String,
    },
    #[error("{method} {path}: the cloud answered something unexpected: {detail}")]
    Unexpected {
        method: &'static str,
        path: String,
        detail: String,
    },
}

impl ApiError {
    /// The HTTP status, when the cloud answered with an error status.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An OData string literal: `'it''s'`.
pub fn odata_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Builds `path?k=v&…` with encoded values.
pub fn with_query(path: &str, params: &[(&str, &str)]) -> String {
    if params.is_empty() {
        return path.to_string();
    }
    let qs: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    format!("{path}?{}", qs.join("&"))
}

/// The cloud API at `base` (e.g. `http://127.0.0.1:8080`) with a user key.
pub struct Api {
    agent: ureq::Agent,
    /// An agent without a global timeout, for uploads, downloads and follows.
    streaming: ureq::Agent,
    base: String,
    key: String,
}

type Resp = ureq::http::Response<ureq::Body>;

/// A TLS client config that trusts only the CA certificate(s) in the PEM
/// file `path` (`resin --ca`).
pub fn trust_only(path: &std::path::Path) -> Result<ureq::tls::TlsConfig, ApiError> {
    let err = |message: String| ApiError::Ca {
        path: path.to_path_buf(),
        message,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let ureq::tls::PemItem::Certificate(c) = item.map_err(|e| err(e.to_string()))? {
            certs.push(c);
        }
    }
    if certs.is_empty() {
        return Err(err("no PEM certificate in it".into()));
    }
    Ok(ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
        .build())
}

impl ApiError {
    /// The TLS handshake failed (most often: the cloud's certificate is not
    /// signed by a trusted CA).
    pub fn is_tls(&self) -> bool {
        match self {
            ApiError::Transport { source, .. } => match source {
                ureq::Error::Rustls(_) => true,
                // ureq reports a failed handshake as an I/O error around rustls'.
                ureq::Error::Io(e) => e.get_ref().is_some_and(|i| i.is::<rustls::Error>()),
                _ => false,
            },
            _ => false,
        }
    }
}

impl Api {
    /// A client that trusts the public roots.
    pub fn new(base: &str, key: &str, timeout: Duration) -> Self {
        Self::with_tls(base, key, timeout, None)
    }

    /// A client with the given TLS trust ([`trust_only`]), or the public
    /// roots for `None`.
    pub fn with_tls(
        base: &str,
        key: &str,
        timeout: Duration,
        tls: Option<ureq::tls::TlsConfig>,
    ) -> Self {
        let mut agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout));
        let mut streaming = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(timeout));
        if let Some(tls) = tls {
            agent = agent.tls_config(tls.clone());
            streaming = streaming.tls_config(tls);
        }
        let agent = agent.build().new_agent();
        let streaming = streaming.build().new_agent();
        Self {
            agent,
            streaming,
            base: base.trim_end_matches('/').to_string(),
            key: key.to_string(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.key)
    }

    fn transport(&self, path: &str, source: ureq::Error) -> ApiError {
        ApiError::Transport {
            url: self.url(path),
            source,
        }
    }

    /// Turns a non-2xx response into [`ApiError::Status`] with the cloud's
    /// message; passes 2xx through.
    fn check(method: &'static str, path: &str, mut resp: Resp) -> Result<Resp, ApiError> {
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(resp);
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
            .unwrap_or_default();
        Err(ApiError::Status {
            method,
            path: path.to_string(),
            status,
            message: error_message(status, &body),
        })
    }

    fn read_json(method: &'static str, path: &str, mut resp: Resp) -> Result<Value, ApiError> {
        let text = resp
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_string()
            .map_err(|e| ApiError::Unexpected {
                method,
                path: path.to_string(),
                detail: e.to_string(),
            })?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| ApiError::Unexpected {
            method,
            path: path.to_string(),
            detail: format!("invalid JSON: {e}"),
        })
    }

    /// `GET path` → JSON.
    pub fn get(&self, path: &str) -> Result<Value, ApiError> {
        let resp = self
            .agent
            .get(self.url(path))
            .header("Authorization", self.bearer())
            .header("Accept", "application/json")
            .call()
            .map_err(|e| self.transport(path, e))?;
        let resp = Self::check("GET", path, resp)?;
        Self::read_json("GET", path, resp)
    }

    /// `GET` a collection → its `value` array, every page of it: the cloud
    /// answers at most a page (1000 by default) with `@odata.nextLink` while
    /// more entities match, and the link is followed on this client's own
    /// base URL (the cloud's public URL may be one this client cannot reach).
    pub fn list(&self, path: &str) -> Result<Vec<Value>, ApiError> {
        let mut all = Vec::new();
        let mut next = Some(path.to_string());
        // A bound on the pages, so a link that never ends cannot loop for ever.
        for _ in 0..MAX_PAGES {
            let Some(p) = next.take() else {
                return Ok(all);
            };
            let unexpected = |detail: &str| ApiError::Unexpected {
                method: "GET",
                path: p.clone(),
                detail: detail.into(),
            };
            let Value::Object(mut m) = self.get(&p)? else {
                return Err(unexpected("expected a JSON object"));
            };
            match m.remove("value") {
                Some(Value::Array(a)) => all.extend(a),
                _ => return Err(unexpected("no `value` array in the collection")),
            }
            if let Some(link) = m.get("@odata.nextLink").and_then(Value::as_str) {
                next = Some(
                    next_link_path(link)
                        .ok_or_else(|| unexpected("an @odata.nextLink without /v1/"))?
                        .to_string(),
                );
            }
        }
        Err(ApiError::Unexpected {
            method: "GET",
            path: path.to_string(),
            detail: format!("more than {MAX_PAGES} pages"),
        })
    }

    /// `POST path` with a JSON body → the created entity.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        let resp = self
            .agent
            .post(self.url(path))
            .header("Authorization", self.bearer())
            .header("Accept", "application/json")
            .send_json(body)
            .map_err(|e| self.transport(path, e))?;
        let resp = Self::check("POST", path, resp)?;
        Self::read_json("POST", path, resp)
    }

    /// `PATCH path` with a JSON body.
    pub fn patch(&self, path: &str, body: &Value) -> Result<(), ApiError> {
        let resp = self
            .agent
            .patch(self.url(path))
            .header("Authorization", self.bearer())
            .header("Accept", "application/json")
            .send_json(body)
            .map_err(|e| self.transport(path, e))?;
        Self::check("PATCH", path, resp).map(drop)
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> Result<(), ApiError> {
        let resp = self
            .agent
            .delete(self.url(path))
            .header("Authorization", self.bearer())
            .header("Accept", "application/json")
            .call()
            .map_err(|e| self.transport(path, e))?;
        Self::check("DELETE", path, resp).map(drop)
    }

    /// `PUT path` with a raw body of `len` bytes from `reader`.
    pub fn put_raw(&self, path: &str, reader: &mut dyn Read, len: u64) -> Result<Value, ApiError> {
        let resp = self
            .streaming
            .put(self.url(path))
            .header("Authorization", self.bearer())
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", len.to_string())
            .send(ureq::SendBody::from_reader(reader))
            .map_err(|e| self.transport(path, e))?;
        let resp = Self::check("PUT", path, resp)?;
        Self::read_json("PUT", path, resp)
    }

    /// `POST path` with a raw body, answered as a stream (a build's NDJSON
    /// log): the response headers and a reader. No overall timeout.
    pub fn post_stream(
        &self,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<(ureq::http::HeaderMap, impl Read + 'static), ApiError> {
        let resp = self
            .streaming
            .post(self.url(path))
            .header("Authorization", self.bearer())
            .header("Content-Type", content_type)
            .send(body)
            .map_err(|e| self.transport(path, e))?;
        let resp = Self::check("POST", path, resp)?;
        let headers = resp.headers().clone();
        Ok((headers, resp.into_body().into_reader()))
    }

    /// `GET path` as a stream: its declared length (if any) and a reader.
    /// No overall timeout, so it suits big downloads and long follows.
    pub fn get_stream(
        &self,
        path: &str,
        accept: &str,
    ) -> Result<(Option<u64>, impl Read + 'static), ApiError> {
        let resp = self
            .streaming
            .get(self.url(path))
            .header("Authorization", self.bearer())
            .header("Accept", accept)
            .call()
            .map_err(|e| self.transport(path, e))?;
        let resp = Self::check("GET", path, resp)?;
        let len = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok((len, resp.into_body().into_reader()))
    }
}

/// The human message of an error body: the OData `error.message`, else the
/// body text, else the status reason.
pub fn error_message(status: u16, body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        let msg = v
            .pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("error"));
        if let Some(Value::String(m)) = msg {
            return m.clone();
        }
    }
    let t = body.trim();
    if !t.is_empty() {
        return t.chars().take(500).collect();
    }
    match status {
        400 => "bad request",
        401 => "unauthorised (is the API key right? run `resin login`)",
        403 => "forbidden",
        404 => "not found",
        409 => "conflict",
        500..=599 => "server error",
        _ => "request failed",
    }
    .to_string()
}

/// The most pages [`Api::list`] follows.
const MAX_PAGES: usize = 10_000;

/// The path and query of an `@odata.nextLink` (`<public url>/v1/…`), to be
/// requested on the client's own base URL.
fn next_link_path(link: &str) -> Option<&str> {
    link.find("/v1/").map(|i| &link[i..])
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_next_link_is_followed_on_the_clients_base() {
        assert_eq!(
            next_link_path("http://10.0.2.2:8080/v1/device?$filter=x&$skip=1000"),
            Some("/v1/device?$filter=x&$skip=1000")
        );
        assert_eq!(next_link_path("nonsense"), None);
    }

    #[test]
    fn odata_error_message_is_extracted() {
        let b = r#"{"error":{"code":"400","message":"name must be unique"}}"#;
        assert_eq!(error_message(400, b), "name must be unique");
        assert_eq!(error_message(502, "bad gateway\n"), "bad gateway");
        assert!(error_message(401, "").contains("resin login"));
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            with_query(
                "/v1/fleet",
                &[("$filter", &format!("name eq {}", odata_str("it's")))]
            ),
            "/v1/fleet?%24filter=name%20eq%20%27it%27%27s%27"
        );
    }
}
