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
}

impl Cloud {
    pub fn new(api_endpoint: &str) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false)
            .build()
            .into();
        Self {
            agent,
            base: api_endpoint.trim_end_matches('/').to_owned(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn check(
        url: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<ureq::http::Response<ureq::Body>, CloudError> {
        let mut resp = r.map_err(|e| CloudError::Unreachable {
            url: url.into(),
            message: e.to_string(),
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
        let mut resp = Self::check(&url, r)?;
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
        let mut resp = Self::check(&url, req.call())?;
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
        Self::check(&url, r).map(|_| ())
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
        Self::check(&url, r).map(|_| ())
    }
}
