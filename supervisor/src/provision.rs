//! Provisioning: Unprovisioned → Registering → Registered. The uuid and the
//! device key are chosen on the device and written to device.json before the
//! first register call, so a crash mid-registration registers the same uuid
//! with the same key again, and the cloud answers that with the same device.
//! The cloud refuses (409) a repeated register without the device's key; a
//! uuid refused so that the supervisor picked itself is swapped for a fresh
//! one, while one from config.json is the operator's and is kept.

use std::path::{Path, PathBuf};
use std::time::Duration;

use resin_api_types::{ConfigJson, RegisterProof, RegisterRequest};
use serde::{Deserialize, Serialize};

use crate::cloud::Cloud;
use crate::store::{self, StoreError};

/// `device.json` on the state partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceIdentity {
    pub uuid: String,
    /// The device key, chosen on the device before the first register call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// The cloud's device id; set once the cloud answered the register.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
}

/// The provisioning state machine's states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProvisioningState {
    /// No device.json yet.
    Unprovisioned,
    /// A uuid is persisted, and the key once chosen (device.json of an
    /// older supervisor has none); the cloud has not answered yet.
    Registering {
        uuid: String,
        api_key: Option<String>,
    },
    /// Uuid, device key and the cloud's device id persisted.
    Registered {
        uuid: String,
        api_key: String,
        id: i64,
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

    /// Registered only with both key and id: a key alone was saved before
    /// the register call and proves nothing about the cloud's answer.
    fn from_identity(id: Option<DeviceIdentity>) -> Self {
        match id {
            None => Self::Unprovisioned,
            Some(DeviceIdentity {
                uuid,
                api_key: Some(api_key),
                id: Some(id),
            }) => Self::Registered { uuid, api_key, id },
            Some(DeviceIdentity { uuid, api_key, .. }) => Self::Registering { uuid, api_key },
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

/// A device key made on the device: `resin_d_` and 64 hex digits (the shape
/// of the cloud's own), from the thread's CSPRNG.
pub fn new_device_key() -> String {
    format!("resin_d_{}", hex::encode(rand::random::<[u8; 32]>()))
}

fn new_uuid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Writes uuid and key (no id) to device.json, atomically: what a crash
/// before the cloud's answer leaves, and what the next start registers.
fn persist_registering(path: &Path, uuid: String) -> Result<ProvisioningState, StoreError> {
    let api_key = new_device_key();
    store::write_json(
        path,
        &DeviceIdentity {
            uuid: uuid.clone(),
            api_key: Some(api_key.clone()),
            id: None,
        },
    )?;
    Ok(ProvisioningState::Registering {
        uuid,
        api_key: Some(api_key),
    })
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
                let uuid = config.uuid.clone().unwrap_or_else(new_uuid);
                // Persisted before the first call: a crash re-registers it.
                persist_registering(&path, uuid)?
            }
            // device.json of an older supervisor: the key is chosen now,
            // and saved before the call like a new one.
            ProvisioningState::Registering {
                uuid,
                api_key: None,
            } => persist_registering(&path, uuid)?,
            ProvisioningState::Registering {
                uuid,
                api_key: Some(api_key),
            } => {
                let req = RegisterRequest {
                    uuid: uuid.clone(),
                    device_type: config.device_type.clone(),
                    name: config.device_name.clone(),
                    supervisor_version: versions.0.clone(),
                    os_version: versions.1.clone(),
                };
                let proof = RegisterProof {
                    api_key: Some(api_key.clone()),
                };
                let c = cloud.clone();
                let key = config.provisioning_key.clone();
                let r = tokio::task::spawn_blocking(move || c.register(&key, &req, &proof))
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
                            id: resp.id,
                        }
                    }
                    Ok(resp) => {
                        tracing::warn!(sent = %uuid, got = %resp.uuid, "cloud answered another uuid; retrying");
                        failures += 1;
                        ProvisioningState::Registering {
                            uuid,
                            api_key: Some(api_key),
                        }
                    }
                    Err(e) if e.is_conflict() && config.uuid.as_deref() != Some(uuid.as_str()) => {
                        // Registered before without this key (an older
                        // supervisor's lost answer, or a clash): the uuid
                        // was our own pick, so pick a fresh one.
                        failures += 1;
                        let fresh = new_uuid();
                        tracing::warn!(refused = %uuid, %fresh, error = %e, "uuid refused; registering a fresh uuid");
                        persist_registering(&path, fresh)?
                    }
                    Err(e) => {
                        failures += 1;
                        if e.is_conflict() {
                            tracing::error!(%uuid, error = %e, "the uuid from config.json is registered under another key; retrying");
                        } else {
                            tracing::warn!(error = %e, failures, "registration failed; retrying");
                        }
                        ProvisioningState::Registering {
                            uuid,
                            api_key: Some(api_key),
                        }
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
            ProvisioningState::Registering {
                uuid: "u".into(),
                api_key: None
            }
        );
    }

    /// A key without an id was saved before the register call: that is
    /// Registering (register again with it), not Registered.
    #[test]
    fn a_saved_key_without_an_id_still_registers() {
        let d = tempfile::tempdir().unwrap();
        let mut id = DeviceIdentity {
            uuid: "u".into(),
            api_key: Some("resin_d_k".into()),
            id: None,
        };
        store::write_json(&device_json(d.path()), &id).unwrap();
        assert_eq!(
            load(d.path()).unwrap(),
            ProvisioningState::Registering {
                uuid: "u".into(),
                api_key: Some("resin_d_k".into())
            }
        );
        id.id = Some(7);
        store::write_json(&device_json(d.path()), &id).unwrap();
        assert_eq!(
            load(d.path()).unwrap(),
            ProvisioningState::Registered {
                uuid: "u".into(),
                api_key: "resin_d_k".into(),
                id: 7
            }
        );
    }

    #[test]
    fn device_keys_are_resin_d_and_64_hex_digits_and_differ() {
        let (a, b) = (new_device_key(), new_device_key());
        assert_ne!(a, b);
        for k in [a, b] {
            let hex = k.strip_prefix("resin_d_").unwrap();
            assert_eq!(hex.len(), 64, "{k}");
            assert!(
                hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
                "{k}"
            );
        }
    }
}
