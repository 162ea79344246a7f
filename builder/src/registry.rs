//! The registry side: what the registry holds for a pushed digest (its
//! manifest and the config blob's architecture), read over the Registry
//! HTTP API v2, so the check does not trust the image's name or the engine.

use serde_json::Value;

use crate::error::BuildError;

const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.oci.image.manifest.v1+json";

/// Splits `host[:port]/path` into the host and the repository path.
pub fn split_repo(repo: &str) -> (&str, &str) {
    repo.split_once('/').unwrap_or((repo, ""))
}

/// The registry's base URL: plain HTTP for loopback hosts (as dockerd
/// treats them), HTTPS otherwise.
pub fn base_url(host: &str) -> String {
    let h = host.split(':').next().unwrap_or(host);
    if h == "localhost" || h.starts_with("127.") || h == "[::1]" {
        format!("http://{host}")
    } else {
        format!("https://{host}")
    }
}

fn get_json(url: &str, accept: &str) -> Result<Value, BuildError> {
    let rerr = |message: String| BuildError::Registry {
        url: url.to_owned(),
        message,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .into();
    let mut resp = agent
        .get(url)
        .header("Accept", accept)
        .call()
        .map_err(|e| rerr(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(rerr(format!("HTTP {}", resp.status())));
    }
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| rerr(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| rerr(format!("not JSON: {e}")))
}

/// The architecture of the image the registry stores as `repo@digest`
/// (from the manifest's config blob).
pub fn architecture(repo: &str, digest: &str) -> Result<String, BuildError> {
    let (host, path) = split_repo(repo);
    let base = base_url(host);
    let murl = format!("{base}/v2/{path}/manifests/{digest}");
    let manifest = get_json(&murl, MANIFEST_TYPES)?;
    let config = manifest
        .pointer("/config/digest")
        .and_then(Value::as_str)
        .ok_or_else(|| BuildError::Registry {
            url: murl.clone(),
            message: "the manifest has no config digest (a manifest list?)".into(),
        })?;
    let curl = format!("{base}/v2/{path}/blobs/{config}");
    let cfg = get_json(&curl, "*/*")?;
    Ok(cfg
        .get("architecture")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned())
}

/// Whether the registry answers its API's base endpoint.
pub fn reachable(host: &str) -> Result<(), BuildError> {
    let url = format!("{}/v2/", base_url(host));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .into();
    agent
        .get(&url)
        .call()
        .map(|_| ())
        .map_err(|e| BuildError::Registry {
            url,
            message: format!("not reachable: {e}"),
        })
}
