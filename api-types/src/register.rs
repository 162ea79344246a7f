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

/// The proof a register body may carry beside the [`RegisterRequest`]
/// fields, in the same JSON object: `{"uuid": …, "deviceType": …, "apiKey":
/// "resin_d_…"}`.
///
/// The rule (docs/architecture.md, "Registration"): a uuid that is already
/// registered is answered again only to a caller that proves it is that
/// device, by sending the device's current key as `apiKey`; anyone else gets
/// 409, whichever fleet or tenant the uuid is in. A device may choose its
/// own key on the first registration (as balena devices do): then a retry
/// after a lost answer sends the same key and gets the same device back.
/// Without `apiKey` the cloud makes the key, and a repeated registration of
/// that uuid without it is refused (409): use a fresh uuid.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterProof {
    /// The device key: chosen by the device on first registration (
    /// `resin_d_` and 32 to 128 of `[A-Za-z0-9_-]`), and its proof after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}
