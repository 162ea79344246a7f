//! Device-API paths, built in one place for the cloud's router and the
//! supervisor's client.

/// `POST`: register with a provisioning key.
pub const REGISTER: &str = "/device/register";
/// `PATCH`: the current state report.
pub const STATE_REPORT: &str = "/device/v3/state";
/// Router pattern for the target state.
pub const TARGET_STATE_ROUTE: &str = "/device/v3/{uuid}/state";
/// Router pattern for the log stream.
pub const LOG_STREAM_ROUTE: &str = "/device/v2/{uuid}/log-stream";

/// `GET`: the target state of device `uuid`.
pub fn target_state(uuid: &str) -> String {
    format!("/device/v3/{uuid}/state")
}

/// `POST`: NDJSON log lines of device `uuid`.
pub fn log_stream(uuid: &str) -> String {
    format!("/device/v2/{uuid}/log-stream")
}
