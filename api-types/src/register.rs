//! `POST /device/register`, authorised with a fleet's provisioning key
//! (`Authorization: Bearer <provisioning key>`).

use serde::{Deserialize, Serialize};

/// What an unprovisioned device sends. The device picks its own uuid, so a
/// retried registration (lost response, crash) is recognised by the cloud and
/// answered with the same device instead of a second one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequest {
    /// 32 lowercase hex characters, chosen by the device.
    pub uuid: String,
    /// Device type slug, e.g. `qemuarm64`, `raspberrypi4-64`.
    pub device_type: String,
    /// Optional human name; the cloud picks one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Supervisor version, for the device row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor_version: Option<String>,
    /// OS version, for the device row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
}

/// What the cloud answers: the device's numeric id, its uuid and its device
/// key. The key is shown once; the cloud keeps only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterResponse {
    pub id: i64,
    pub uuid: String,
    pub api_key: String,
}
