//! Provisioning: Unprovisioned → Registering → Registered. The uuid is
//! chosen once and written to device.json before the first register call,
//! so a crash mid-registration registers the same uuid again (the cloud
//! answers a repeated register for a uuid with the same device).

use std::path::{Path, PathBuf};
use std::time::Duration;

use resin_api_types::{ConfigJson, RegisterRequest};
use serde::{Deserialize, Serialize};

use crate::cloud::Cloud;
use crate::store::{self, StoreError};

/// `device.json` on the state partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceIdentity {
    pub uuid: String,
    /// Set once registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
}

/// The provisioning state machine's states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProvisioningState {
    /// No device.json yet.
    Unprovisioned,
    /// A uuid is persisted; the register call has not succeeded yet.
    Registering { uuid: String },
    /// Uuid and device key persisted.
    Registered {
        uuid: String,
        api_key: String,
        id: Option<i64>,
    },
}

impl ProvisioningState {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Unprovisioned => "unprovisioned",
            Self::Registering { .. } => "registering",
            Self::Registered { .. } => "registered",
        }
    }

    fn from_identity(id: Option<DeviceIdentity>) -> Self {
        match id {
            None => Self::Unprovisioned,
            Some(DeviceIdentity {
                uuid,
                api_key: Some(api_key),
                id,
            }) => Self::Registered { uuid, api_key, id },
            Some(DeviceIdentity { uuid, .. }) => Self::Registering { uuid },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("registration task failed: {0}")]
    Join(String),
}

pub fn device_json(state_dir: &Path) -> PathBuf {
    state_dir.join("device.json")
}

/// Reads the current provisioning state from `state_dir`.
pub fn load(state_dir: &Path) -> Result<ProvisioningState, StoreError> {
    Ok(ProvisioningState::from_identity(store::read_json(
        &device_json(state_dir),
    )?))
}

/// Exponential backoff: `base * 2^failures`, capped, times `jitter`
/// (a factor the caller draws, e.g. in 0.8..1.2; tests pass 1.0).
pub fn backoff(base: Duration, failures: u32, cap: Duration, jitter: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << failures.min(16));
    exp.min(cap).mul_f64(jitter.clamp(0.0, 2.0))
}

/// Runs the FSM until the device is registered; retries the register call
/// with backoff for as long as it takes. `on_state` sees each state.
pub async fn provision(
    config: &ConfigJson,
    state_dir: &Path,
    cloud: &Cloud,
    versions: (Option<String>, Option<String>),
    on_state: &(dyn Fn(&ProvisioningState) + Sync),
) -> Result<(String, String), ProvisionError> {
    let path = device_json(state_dir);
    let mut state = load(state_dir)?;
    let mut failures = 0u32;
    loop {
        on_state(&state);
        tracing::info!(state = state.name(), "provisioning");
        state = match state {
            ProvisioningState::Registered { uuid, api_key, .. } => return Ok((uuid, api_key)),
            ProvisioningState::Unprovisioned => {
                let uuid = config
                    .uuid
                    .clone()
                    .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
                // Persisted before the first call: a crash re-registers it.
                store::write_json(
                    &path,
                    &DeviceIdentity {
                        uuid: uuid.clone(),
                        api_key: None,
                        id: None,
                    },
                )?;
                ProvisioningState::Registering { uuid }
            }
            ProvisioningState::Registering { uuid } => {
                let req = RegisterRequest {
                    uuid: uuid.clone(),
                    device_type: config.device_type.clone(),
                    name: config.device_name.clone(),
                    supervisor_version: versions.0.clone(),
                    os_version: versions.1.clone(),
                };
                let c = cloud.clone();
                let key = config.provisioning_key.clone();
                let r = tokio::task::spawn_blocking(move || c.register(&key, &req))
                    .await
                    .map_err(|e| ProvisionError::Join(e.to_string()))?;
                match r {
                    Ok(resp) if resp.uuid == uuid => {
                        let id = DeviceIdentity {
                            uuid: uuid.clone(),
                            api_key: Some(resp.api_key.clone()),
                            id: Some(resp.id),
                        };
                        store::write_json(&path, &id)?;
                        ProvisioningState::Registered {
                            uuid,
                            api_key: resp.api_key,
                            id: Some(resp.id),
                        }
                    }
                    Ok(resp) => {
                        tracing::warn!(sent = %uuid, got = %resp.uuid, "cloud answered another uuid; retrying");
                        failures += 1;
                        ProvisioningState::Registering { uuid }
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %e, failures, "registration failed; retrying");
                        ProvisioningState::Registering { uuid }
                    }
                }
            }
        };
        if failures > 0 && matches!(state, ProvisioningState::Registering { .. }) {
            let jitter = rand::random_range(0.8..1.2);
            let wait = backoff(
                Duration::from_secs(1),
                failures - 1,
                Duration::from_secs(300),
                jitter,
            );
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(1), 0, s(300), 1.0), s(1));
        assert_eq!(backoff(s(1), 3, s(300), 1.0), s(8));
        assert_eq!(backoff(s(1), 30, s(300), 1.0), s(300));
        assert_eq!(backoff(s(10), 1, s(300), 1.5), s(30));
    }

    #[test]
    fn state_is_read_from_device_json() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(load(d.path()).unwrap(), ProvisioningState::Unprovisioned);
        store::write_json(
            &device_json(d.path()),
            &DeviceIdentity {
                uuid: "u".into(),
                api_key: None,
                id: None,
            },
        )
        .unwrap();
        assert_eq!(
            load(d.path()).unwrap(),
            ProvisioningState::Registering { uuid: "u".into() }
        );
    }
}
