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
        Ok(c)
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
}
