//! Permissions, declared in one place: which rows each kind of caller may
//! read and change. Handlers never decide access themselves; they ask here
//! for a SQL row filter ([`read_scope`], [`write_scope`]) or a yes/no
//! ([`may_use_v1`]).
//!
//! The rules:
//! - anonymous callers reach nothing but the service documents;
//! - a user reaches their own user row, their API keys, their fleets and
//!   everything hanging off those fleets (devices, releases, services,
//!   images, env/config vars, tags, provisioning keys) and their own OS
//!   releases. OS releases are per owner: (owner, device type, version) is
//!   unique, and a fleet's target OS version resolves only to its owner's
//!   releases (in the target state, `/v1/os/download` and `/os/bundle`). There is no admin role yet, so there
//!   are no public OS releases either;
//! - provisioning keys and device keys reach no `/v1` resource at all: a
//!   provisioning key may only register a device into its own fleet and a
//!   device key only its own device's device-API endpoints (enforced in
//!   [`crate::device_api`] through [`device_may_access`]).

use crate::auth::Actor;
use crate::error::{ApiError, ApiResult};

/// A row filter over a table aliased `alias`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Nothing,
    /// A SQL boolean expression. It contains only column references and the
    /// caller's numeric user id (an `i64` from our own key lookup, never
    /// client text), so it is safe to splice into parameterised SQL.
    Sql(String),
}

impl Scope {
    /// As a SQL boolean expression.
    pub fn to_sql(&self) -> String {
        match self {
            Scope::All => "1 = 1".into(),
            Scope::Nothing => "1 = 0".into(),
            Scope::Sql(s) => format!("({s})"),
        }
    }
}

/// The rule table: how to reach the owning user's id from a row of each
/// resource (`alias` is the row's table alias).
fn owner_expr(resource: &str, alias: &str) -> Option<String> {
    let t = alias;
    Some(match resource {
        "user" => format!("{t}.id"),
        "api_key" => format!("{t}.\"user\""),
        "fleet" | "os_release" => format!("{t}.owner"),
        "device" | "release" | "fleet_env_var" | "fleet_config_var" | "fleet_tag"
        | "provisioning_key" | "rollout" => {
            format!("(SELECT pf.owner FROM fleet pf WHERE pf.id = {t}.fleet)")
        }
        "service" | "image" => format!(
            "(SELECT pf.owner FROM \"release\" pr JOIN fleet pf ON pf.id = pr.fleet \
             WHERE pr.id = {t}.\"release\")"
        ),
        "device_env_var" | "device_config_var" | "device_tag" => format!(
            "(SELECT pf.owner FROM device pd JOIN fleet pf ON pf.id = pd.fleet \
             WHERE pd.id = {t}.device)"
        ),
        "rollout_event" => format!(
            "(SELECT pf.owner FROM rollout pr JOIN fleet pf ON pf.id = pr.fleet \
             WHERE pr.id = {t}.rollout)"
        ),
        "service_env_var" => format!(
            "(SELECT pf.owner FROM service ps JOIN \"release\" pr ON pr.id = ps.\"release\" \
             JOIN fleet pf ON pf.id = pr.fleet WHERE ps.id = {t}.service)"
        ),
        _ => return None,
    })
}

/// Rows of `resource` the caller may read.
pub fn read_scope(actor: &Actor, resource: &str, alias: &str) -> Scope {
    match actor {
        Actor::User(uid) => match owner_expr(resource, alias) {
            Some(e) => Scope::Sql(format!("{e} = {uid}")),
            None => Scope::Nothing,
        },
        Actor::Anonymous | Actor::ProvisioningKey { .. } | Actor::Device { .. } => Scope::Nothing,
    }
}

/// Rows of `resource` the caller may change or delete (and, for parents,
/// create children under).
pub fn write_scope(actor: &Actor, resource: &str, alias: &str) -> Scope {
    match actor {
        Actor::User(_) if resource == "user" => Scope::Nothing,
        Actor::User(uid) => match owner_expr(resource, alias) {
            Some(e) => Scope::Sql(format!("{e} = {uid}")),
            None => Scope::Nothing,
        },
        _ => Scope::Nothing,
    }
}

/// Gate for every `/v1` resource route: only users get past it.
pub fn may_use_v1(actor: &Actor) -> ApiResult<i64> {
    match actor {
        Actor::User(uid) => Ok(*uid),
        Actor::Anonymous => Err(ApiError::unauthorized()),
        Actor::ProvisioningKey { .. } => Err(ApiError::forbidden(
            "a provisioning key may only register devices",
        )),
        Actor::Device { .. } => Err(ApiError::forbidden(
            "a device key may only use its own device's device-API endpoints",
        )),
    }
}

/// Device-API gate: only the device `uuid` itself. Returns its id.
pub fn device_may_access(actor: &Actor, uuid: &str) -> ApiResult<i64> {
    match actor {
        Actor::Device { id, uuid: own, .. } if own == uuid => Ok(*id),
        Actor::Anonymous => Err(ApiError::unauthorized()),
        _ => Err(ApiError::forbidden(
            "only the device itself may use its device-API endpoints",
        )),
    }
}

/// Registration gate: a provisioning key, for its own fleet. Returns the fleet.
pub fn may_register(actor: &Actor) -> ApiResult<i64> {
    match actor {
        Actor::ProvisioningKey { fleet } => Ok(*fleet),
        Actor::Anonymous => Err(ApiError::unauthorized()),
        _ => Err(ApiError::forbidden(
            "registering a device needs a provisioning key",
        )),
    }
}

/// Who may fetch an OS bundle: devices (of the bundle's device type, checked
/// by the caller) and users.
pub fn may_fetch_bundle(actor: &Actor) -> ApiResult<()> {
    match actor {
        Actor::Device { .. } | Actor::User(_) => Ok(()),
        Actor::Anonymous => Err(ApiError::unauthorized()),
        Actor::ProvisioningKey { .. } => Err(ApiError::forbidden(
            "a provisioning key may only register devices",
        )),
    }
}
