//! resin-api-types: the one definition of every shape that crosses the wire
//! between resin-cloud and resin-supervisor (and the `config.json` that
//! imagegen injects into a disk image). Nothing here does I/O.
//!
//! - [`register`]: `POST /device/register`
//! - [`target`]: `GET /device/v3/{uuid}/state` (the target state)
//! - [`report`]: `PATCH /device/v3/state` (the current state report)
//! - [`logs`]: `POST /device/v2/{uuid}/log-stream` (NDJSON log lines)
//! - [`config`]: `config.json` on the boot partition
//! - [`compose`]: the compose parser and validator (CLI, cloud, supervisor)
//! - [`labels`]: container labels and update strategies the supervisor uses
//! - [`rollout`]: staged rollouts (`/v1/rollout`)
//! - [`paths`]: the device-API paths, built in one place
//! - [`tunnel`]: the remote-access tunnel's frames (`/device/v1/tunnel`)

pub mod build;
pub mod compose;
pub mod config;
pub mod labels;
pub mod logs;
pub mod paths;
pub mod register;
pub mod report;
pub mod rollout;
pub mod target;
pub mod tunnel;

pub use config::{encode_root_ca, ConfigJson, ConfigJsonError};
pub use logs::LogLine;
pub use register::{RegisterProof, RegisterRequest, RegisterResponse};
pub use report::{
    AppReport, DeviceReport, OsUpdateReport, OsUpdateState, ServiceReport, ServiceStatus,
    StateReport,
};
pub use target::{
    config_flag, AppTarget, BundleRef, DeviceTarget, EnvLayers, NetworkTarget, OsTarget,
    ReleaseTarget, ServiceTarget, TargetState, VolumeTarget, OS_ALLOW_DOWNGRADE_VAR,
};
