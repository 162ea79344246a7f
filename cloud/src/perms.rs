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
//!   releases (in the target state, `/v1/os/download` and `/os/bundle`), or
//!   else a public one;
//! - an admin (`user.is_admin`) is a user who may also publish public OS
//!   releases (`is_public`, readable by everyone) and read, create, change
//!   and delete users;
//! - a user's API key may be read-only (`scope = 'read-only'`: every write
//!   is a 403) and/or limited to one fleet (`fleet`: only that fleet and
//!   what hangs off it, the user's own row and the OS releases; no API keys,
//!   no new fleets); an expired key is a 401 ([`crate::auth`]);
//! - the audit log (`audit_log`, the dashboard's) is read by the user whose
//!   data each entry is about (its `owner`);
//! - provisioning keys and device keys reach no `/v1` resource at all: a
//!   provisioning key may only register a device into its own fleet and a
//!   device key only its own device's device-API endpoints (enforced in
//!   [`crate::device_api`] through [`device_may_access`]).

use crate::auth::Actor;
use crate::db::Db;
use crate::error::{ApiError, ApiResult};
use crate::resources::dyn_query;

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
        "fleet" | "os_release" | "audit_log" => format!("{t}.owner"),
        "device" | "release" | "fleet_env_var" | "fleet_config_var" | "fleet_tag"
        | "provisioning_key" | "rollout" => {
            format!("(SELECT pf.owner FROM fleet pf WHERE pf.id = {t}.fleet)")
        }
        "service" | "image" => format!(
            "(SELECT pf.owner FROM \"release\" pr JOIN fleet pf ON pf.id = pr.fleet \
             WHERE pr.id = {t}.\"release\")"
        ),
        "device_env_var" | "device_config_var" | "device_tag" | "device_action" => format!(
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

/// The rule table for fleet-scoped keys: how to reach the fleet id from a
/// row of each resource. `None`: the resource does not hang off a fleet.
fn fleet_expr(resource: &str, alias: &str) -> Option<String> {
    let t = alias;
    Some(match resource {
        "fleet" => format!("{t}.id"),
        "device" | "release" | "fleet_env_var" | "fleet_config_var" | "fleet_tag"
        | "provisioning_key" => format!("{t}.fleet"),
        "service" | "image" => {
            format!("(SELECT pr.fleet FROM \"release\" pr WHERE pr.id = {t}.\"release\")")
        }
        "device_env_var" | "device_config_var" | "device_tag" | "device_action" => {
            format!("(SELECT pd.fleet FROM device pd WHERE pd.id = {t}.device)")
        }
        "service_env_var" => format!(
            "(SELECT pr.fleet FROM service ps JOIN \"release\" pr ON pr.id = ps.\"release\" \
             WHERE ps.id = {t}.service)"
        ),
        _ => return None,
    })
}

/// Rows of `resource` the caller may read.
///
/// Admins read every user row (user management); otherwise an admin is
/// a user like any other. Everyone reads the public OS releases. A
/// fleet-scoped key reads only its fleet's tree, its own user row and the
/// OS releases; no API keys.
pub fn read_scope(actor: &Actor, resource: &str, alias: &str) -> Scope {
    let Actor::User {
        id: uid,
        admin,
        fleet,
        ..
    } = actor
    else {
        return Scope::Nothing;
    };
    if resource == "user" && *admin && fleet.is_none() {
        return Scope::All;
    }
    let Some(owner) = owner_expr(resource, alias) else {
        return Scope::Nothing;
    };
    let own = if resource == "os_release" {
        format!("{owner} = {uid} OR {alias}.is_public")
    } else {
        format!("{owner} = {uid}")
    };
    match fleet {
        None => Scope::Sql(own),
        Some(f) => match (fleet_expr(resource, alias), resource) {
            (Some(e), _) => Scope::Sql(format!("{owner} = {uid} AND {e} = {f}")),
            (None, "user" | "os_release") => Scope::Sql(own),
            (None, _) => Scope::Nothing,
        },
    }
}

/// Rows of `resource` the caller may change or delete (and, for parents,
/// create children under). A read-only key changes nothing; a
/// fleet-scoped key only its fleet's tree; user rows only an admin.
pub fn write_scope(actor: &Actor, resource: &str, alias: &str) -> Scope {
    let Actor::User {
        id: uid,
        admin,
        read_only,
        fleet,
    } = actor
    else {
        return Scope::Nothing;
    };
    if *read_only {
        return Scope::Nothing;
    }
    if resource == "user" {
        return if *admin && fleet.is_none() {
            Scope::All
        } else {
            Scope::Nothing
        };
    }
    let Some(owner) = owner_expr(resource, alias) else {
        return Scope::Nothing;
    };
    match fleet {
        None => Scope::Sql(format!("{owner} = {uid}")),
        Some(f) => match fleet_expr(resource, alias) {
            Some(e) => Scope::Sql(format!("{owner} = {uid} AND {e} = {f}")),
            None => Scope::Nothing,
        },
    }
}

/// Gate for every `/v1` resource route: only users get past it.
pub fn may_use_v1(actor: &Actor) -> ApiResult<i64> {
    match actor {
        Actor::User { id, .. } => Ok(*id),
        Actor::Anonymous => Err(ApiError::unauthorized()),
        Actor::ProvisioningKey { .. } => Err(ApiError::forbidden(
            "a provisioning key may only register devices",
        )),
        Actor::Device { .. } => Err(ApiError::forbidden(
            "a device key may only use its own device's device-API endpoints",
        )),
    }
}

/// Gate for every `/v1` write (POST, PATCH, DELETE, uploads): a read-only
/// key gets 403.
pub fn may_change(actor: &Actor) -> ApiResult<i64> {
    let uid = may_use_v1(actor)?;
    match actor {
        Actor::User {
            read_only: true, ..
        } => Err(ApiError::forbidden("this API key is read-only")),
        _ => Ok(uid),
    }
}

/// May the caller create a row of `resource`? Parents are checked by the
/// caller through [`write_scope`]; this covers what has no parent: a
/// fleet-scoped key creates only inside its fleet (no fleets, API keys or
/// OS releases), and only an admin creates users or public OS releases.
pub fn may_create(actor: &Actor, resource: &str, public: bool) -> ApiResult<i64> {
    let uid = may_change(actor)?;
    let (admin, fleet) = match actor {
        Actor::User { admin, fleet, .. } => (*admin, *fleet),
        _ => (false, None),
    };
    if fleet.is_some() && (fleet_expr(resource, "t").is_none() || resource == "fleet") {
        return Err(ApiError::forbidden(format!(
            "this API key is limited to one fleet and cannot create a {resource}"
        )));
    }
    if (resource == "user" || public) && !admin {
        return Err(ApiError::forbidden(if public {
            "only an admin may publish a public OS release"
        } else {
            "only an admin may create users"
        }));
    }
    Ok(uid)
}

/// Is the caller an admin (with an unscoped key)?
pub fn is_admin(actor: &Actor) -> bool {
    matches!(
        actor,
        Actor::User {
            admin: true,
            fleet: None,
            ..
        }
    )
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
        Actor::Device { .. } | Actor::User { .. } => Ok(()),
        Actor::Anonymous => Err(ApiError::unauthorized()),
        Actor::ProvisioningKey { .. } => Err(ApiError::forbidden(
            "a provisioning key may only register devices",
        )),
    }
}

/// What the caller wants to do with a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read it ([`read_scope`]).
    Read,
    /// Change it, or act on it ([`write_scope`], after [`may_change`]).
    Write,
}

/// Ok when the caller may `access` device `id`; otherwise 404, so another
/// tenant's device looks like one that does not exist.
pub async fn require_device(db: &Db, actor: &Actor, id: i64, access: Access) -> ApiResult<()> {
    let scope = match access {
        Access::Read => {
            may_use_v1(actor)?;
            read_scope(actor, "device", "t")
        }
        Access::Write => {
            may_change(actor)?;
            write_scope(actor, "device", "t")
        }
    };
    let row = dyn_query(format!(
        "SELECT t.id FROM device t WHERE t.id = $1 AND {}",
        scope.to_sql()
    ))
    .bind(id)
    .fetch_optional(&db.pool)
    .await?;
    match row {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(format!("device({id}) not found"))),
    }
}
