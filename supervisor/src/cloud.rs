//! The device-API client (ureq, blocking; callers run it on tokio's
//! blocking pool): register, target state with ETag, state report, logs.

use std::io::Write;
use std::time::Duration;

use resin_api_types::{
    paths, LogLine, RegisterProof, RegisterRequest, RegisterResponse, StateReport, TargetState,
};
use serde::Serialize;

/// Whole-request timeout; a device on a bad link must not hang a task.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("cloud unreachable at {url}: {message}")]
    Unreachable { url: String, message: String },
    /// The TLS handshake failed: most often the cloud's certificate is not
    /// signed by the CA this device trusts (config.json `rootCA`).
    #[error("refusing the cloud at {url}: its TLS certificate is not trusted (this device trusts {trust}): {message}")]
    Tls {
        url: String,
        trust: &'static str,
        message: String,
    },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url} answered a body that is not what the device API promises: {message}")]
    Body { url: String, message: String },
}

impl CloudError {
    /// 401/403: the key is not (or no longer) valid.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            CloudError::Status {
                status: 401 | 403,
                ..
            }
        )
    }

    /// 409: the cloud refuses the request as it stands (a register for a
    /// uuid that is already registered, without that device's key).
    pub fn is_conflict(&self) -> bool {
        matches!(self, CloudError::Status { status: 409, .. })
    }
}

/// The register body: the request's fields and the proof's `apiKey` in one
/// JSON object (api-types, `RegisterProof`).
#[derive(Serialize)]
struct RegisterBody<'a> {
    #[serde(flatten)]
    req: &'a RegisterRequest,
    #[serde(flatten)]
    proof: &'a RegisterProof,
}

/// A target-state fetch.
#[derive(Debug, Clone, PartialEq)]
pub enum Fetched {
    NotModified,
    New {
        target: TargetState,
        etag: Option<String>,
    },
}

#[derive(Clone, Debug)]
pub struct Cloud {
    agent: ureq::Agent,
    base: String,
    trust: &'static str,
}

/// config.json's `rootCA` that is no usable CA certificate.
#[derive(Debug, thiserror::Error)]
#[error("config.json rootCA: {0}")]
pub struct RootCaError(String);

/// A TLS client config that trusts only the CA certificate(s) in `pem`: no
/// public roots, so a cloud with any other certificate is refused.
pub fn trust_only(pem: &[u8]) -> Result<ureq::tls::TlsConfig, RootCaError> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(RootCaError(e.to_string())),
        }
    }
    if certs.is_empty() {
        return Err(RootCaError("no certificate in the PEM text".into()));
    }
    Ok(ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
        .build())
}

impl Cloud {
    /// A client that trusts the public (Mozilla) roots built into ureq.
    pub fn new(api_endpoint: &str) -> Self {
        Self::with_tls(api_endpoint, None)
    }

    /// A client with the given TLS trust (`trust_only(config.json rootCA)`),
    /// or the public roots for `None`.
    pub fn with_tls(api_endpoint: &str, tls: Option<ureq::tls::TlsConfig>) -> Self {
        let mut b = ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false);
        let trust = if let Some(tls) = tls {
            b = b.tls_config(tls);
            "only the CA in config.json rootCA"
        } else {
            "the public roots"
        };
        Self {
            agent: b.build().into(),
            base: api_endpoint.trim_end_matches('/').to_owned(),
            trust,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn check(
        &self,
        url: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<ureq::http::Response<ureq::Body>, CloudError> {
        let mut resp = r.map_err(|e| {
            // ureq reports a failed handshake as rustls' error, or as an I/O
            // error around it.
            let tls = match &e {
                ureq::Error::Rustls(_) => true,
                ureq::Error::Io(io) => io.get_ref().is_some_and(|i| i.is::<rustls::Error>()),
                _ => false,
            };
            if tls {
                CloudError::Tls {
                    url: url.into(),
                    trust: self.trust,
                    message: e.to_string(),
                }
            } else {
                CloudError::Unreachable {
                    url: url.into(),
                    message: e.to_string(),
                }
            }
        })?;
        let status = resp.status().as_u16();
        if status >= 400 {
            let body = resp.body_mut().read_to_string().unwrap_or_default();
            let body: String = body.chars().take(500).collect();
            return Err(CloudError::Status {
                url: url.into(),
                status,
                body,
            });
        }
        Ok(resp)
    }

    /// `POST /device/register` with the provisioning key; `proof` carries
    /// the device key the device chose (its proof on a repeated register).
    pub fn register(
        &self,
        provisioning_key: &str,
        req: &RegisterRequest,
        proof: &RegisterProof,
    ) -> Result<RegisterResponse, CloudError> {
        let url = self.url(paths::REGISTER);
        let r = self
            .agent
            .post(&url)
            .header("Authorization", &format!("Bearer {provisioning_key}"))
            .send_json(RegisterBody { req, proof });
        let mut resp = self.check(&url, r)?;
        resp.body_mut().read_json().map_err(|e| CloudError::Body {
            url,
            message: e.to_string(),
        })
    }

    /// `GET /device/v3/{uuid}/state` with `If-None-Match`.
    pub fn target(&self, uuid: &str, key: &str, etag: Option<&str>) -> Result<Fetched, CloudError> {
        let url = self.url(&paths::target_state(uuid));
        let mut req = self
            .agent
            .get(&url)
            .header("Authorization", &format!("Bearer {key}"));
        if let Some(e) = etag {
            req = req.header("If-None-Match", e);
        }
        let mut resp = self.check(&url, req.call())?;
        if resp.status().as_u16() == 304 {
            return Ok(Fetched::NotModified);
        }
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let target: TargetState = resp
            .body_mut()
            .with_config()
            .limit(16 * 1024 * 1024)
            .read_json()
            .map_err(|e| CloudError::Body {
                url: url.clone(),
                message: e.to_string(),
            })?;
        if !target.contains_key(uuid) {
            return Err(CloudError::Body {
                url,
                message: format!("no entry for device {uuid}"),
            });
        }
        Ok(Fetched::New { target, etag })
    }

    /// `PATCH /device/v3/state`.
    pub fn report(&self, key: &str, report: &StateReport) -> Result<(), CloudError> {
        let url = self.url(paths::STATE_REPORT);
        let r = self
            .agent
            .patch(&url)
            .header("Authorization", &format!("Bearer {key}"))
            .send_json(report);
        self.check(&url, r).map(|_| ())
    }

    /// `POST /device/v2/{uuid}/log-stream`, NDJSON, gzip.
    pub fn logs(&self, uuid: &str, key: &str, lines: &[LogLine]) -> Result<(), CloudError> {
        let url = self.url(&paths::log_stream(uuid));
        let ndjson = resin_api_types::logs::to_ndjson(lines);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let body = gz
            .write_all(ndjson.as_bytes())
            .and_then(|()| gz.finish())
            .map_err(|e| CloudError::Body {
                url: url.clone(),
                message: e.to_string(),
            })?;
        let r = self
            .agent
            .post(&url)
            .header("Authorization", &format!("Bearer {key}"))
            .header("Content-Type", "application/x-ndjson")
            .header("Content-Encoding", "gzip")
            .send(&body[..]);
        self.check(&url, r).map(|_| ())
    }
}
