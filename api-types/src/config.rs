//! `config.json` on the boot partition: how a device finds its cloud.
//!
//! imagegen and the cloud's configured-image download write it; the
//! supervisor reads it. It holds the provisioning key, never the device key:
//! the device key lives on the state partition (the FAT boot partition is not
//! a safe place to write secrets atomically).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigJson {
    /// Base URL of resin-cloud, e.g. `http://10.0.2.2:8080`.
    pub api_endpoint: String,
    /// Numeric fleet id.
    pub fleet_id: i64,
    pub fleet_name: String,
    /// Device type slug, e.g. `qemuarm64`.
    pub device_type: String,
    /// Fleet provisioning key, used once to register.
    pub provisioning_key: String,
    /// Target-state poll interval in milliseconds.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Optional registry mirror the device's engine should use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_mirror: Option<String>,
    /// Optional pre-chosen device uuid (otherwise the supervisor makes one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Optional device name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    /// The CA that signed the cloud's certificate: base64 of its PEM text
    /// (as balena's `balenaRootCA`). When set, the device trusts only this
    /// CA for the cloud (no public roots), and the OS adds it to the system
    /// trust store for dockerd and RAUC.
    #[serde(rename = "rootCA", default, skip_serializing_if = "Option::is_none")]
    pub root_ca: Option<String>,
    /// Remote access through the cloud (`crate::tunnel`): which sessions
    /// this device accepts. Unset: every kind, TCP forwards to loopback only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<crate::tunnel::TunnelSettings>,
}

/// Default poll interval: 60 s, as balena and Mender ship.
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 60_000;

fn default_poll_interval_ms() -> u64 {
    DEFAULT_POLL_INTERVAL_MS
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigJsonError {
    #[error("config.json is not valid: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("config.json: {field} is empty")]
    Empty { field: &'static str },
    #[error("config.json: rootCA is not base64: {0}")]
    RootCaBase64(#[from] base64::DecodeError),
    #[error("config.json: rootCA holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    RootCaPem,
}

/// The PEM text as config.json's `rootCA` (base64).
pub fn encode_root_ca(pem: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(pem)
}

impl ConfigJson {
    /// Parses and checks the fields a device cannot work without.
    pub fn parse(text: &str) -> Result<Self, ConfigJsonError> {
        let c: Self = serde_json::from_str(text)?;
        for (field, v) in [
            ("apiEndpoint", &c.api_endpoint),
            ("deviceType", &c.device_type),
            ("provisioningKey", &c.provisioning_key),
        ] {
            if v.trim().is_empty() {
                return Err(ConfigJsonError::Empty { field });
            }
        }
        c.root_ca_pem()?;
        Ok(c)
    }

    /// The CA's PEM text, decoded from `rootCA` (`None` when unset).
    pub fn root_ca_pem(&self) -> Result<Option<Vec<u8>>, ConfigJsonError> {
        use base64::Engine;
        let Some(b64) = self.root_ca.as_deref().filter(|s| !s.trim().is_empty()) else {
            return Ok(None);
        };
        // Line breaks are allowed (a `base64` without -w0 wraps at 76).
        let compact: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let pem = base64::engine::general_purpose::STANDARD.decode(compact)?;
        if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
            return Err(ConfigJsonError::RootCaPem);
        }
        Ok(Some(pem))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_applies_defaults_and_rejects_empty_key() {
        let c = ConfigJson::parse(
            r#"{"apiEndpoint":"http://x","fleetId":1,"fleetName":"f","deviceType":"qemuarm64","provisioningKey":"k"}"#,
        )
        .unwrap();
        assert_eq!(c.poll_interval_ms, DEFAULT_POLL_INTERVAL_MS);
        let e = ConfigJson::parse(
            r#"{"apiEndpoint":"http://x","fleetId":1,"fleetName":"f","deviceType":"qemuarm64","provisioningKey":" "}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("provisioningKey"));
    }

    #[test]
    fn root_ca_is_base64_pem_and_checked_at_parse() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let base = r#"{"apiEndpoint":"https://x","fleetId":1,"fleetName":"f","deviceType":"qemuarm64","provisioningKey":"k""#;
        let c = ConfigJson::parse(&format!(
            r#"{base},"rootCA":"{}"}}"#,
            encode_root_ca(pem.as_bytes())
        ))
        .unwrap();
        assert_eq!(c.root_ca_pem().unwrap().unwrap(), pem.as_bytes());
        assert!(serde_json::to_string(&c).unwrap().contains("\"rootCA\":"));
        let none = ConfigJson::parse(&format!("{base}}}")).unwrap();
        assert_eq!(none.root_ca_pem().unwrap(), None);
        assert!(!serde_json::to_string(&none).unwrap().contains("rootCA"));
        let e = ConfigJson::parse(&format!(r#"{base},"rootCA":"%%%"}}"#)).unwrap_err();
        assert!(e.to_string().contains("rootCA is not base64"), "{e}");
        let e = ConfigJson::parse(&format!(
            r#"{base},"rootCA":"{}"}}"#,
            encode_root_ca(b"hello")
        ))
        .unwrap_err();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
    }
}
