//! Generic CRUD for the `/v1` resources described in [`crate::schema`]:
//! validation of POST/PATCH bodies, permission-scoped reads and writes.

use axum::http::StatusCode;
use serde_json::{Map, Value};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::auth::{self, Actor, KeyKind};
use crate::error::{ApiError, ApiResult};
use crate::perms::{self, Scope};
use crate::schema::{self, Kind, Resource, Write};
use crate::AppState;
use crate::{cache, db};

/// A value bound to a SQL placeholder.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Int(Option<i64>),
    Text(Option<String>),
    Bool(bool),
    Real(Option<f64>),
}

pub type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// A query from SQL built at run time. Only ever used with SQL assembled
/// from the static schema and permission rules; client values are bound.
pub fn dyn_query(sql: String) -> AnyQuery<'static> {
    sqlx::query(sqlx::AssertSqlSafe(sql))
}

/// Binds params in order.
pub fn bind_all<'q>(mut q: AnyQuery<'q>, params: &[Param]) -> AnyQuery<'q> {
    for p in params {
        q = match p.clone() {
            Param::Int(v) => q.bind(v),
            Param::Text(v) => q.bind(v),
            Param::Bool(v) => q.bind(v),
            Param::Real(v) => q.bind(v),
        };
    }
    q
}

/// The select list of a resource's public fields over alias `t`.
pub fn select_cols(res: &Resource, t: &str) -> String {
    res.fields
        .iter()
        .map(|f| match f.kind {
            Kind::Bool => format!("CASE WHEN {t}.\"{0}\" THEN 1 ELSE 0 END AS \"{0}\"", f.name),
            _ => format!("{t}.\"{}\"", f.name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One row (selected with [`select_cols`]) as a JSON object.
pub fn row_to_json(res: &Resource, row: &AnyRow) -> ApiResult<Value> {
    let mut m = Map::new();
    for (i, f) in res.fields.iter().enumerate() {
        let v = match f.kind {
            Kind::Int => row.try_get::<Option<i64>, _>(i)?.map(Value::from),
            Kind::Bool => row
                .try_get::<Option<i64>, _>(i)?
                .map(|b| Value::Bool(b != 0)),
            Kind::Real => row.try_get::<Option<f64>, _>(i)?.map(Value::from),
            Kind::Text | Kind::Time => row.try_get::<Option<String>, _>(i)?.map(Value::from),
            Kind::Json => row
                .try_get::<Option<String>, _>(i)?
                .map(|s| serde_json::from_str(&s).unwrap_or(Value::String(s))),
        };
        m.insert(f.name.to_owned(), v.unwrap_or(Value::Null));
    }
    Ok(Value::Object(m))
}

/// Reads one entity the caller may see, or 404.
pub async fn read_one(app: &AppState, actor: &Actor, res: &Resource, id: i64) -> ApiResult<Value> {
    read_one_in(app, &perms::read_scope(actor, res.name, "t"), res, id).await
}

/// Reads one entity within `scope`, or 404.
async fn read_one_in(app: &AppState, scope: &Scope, res: &Resource, id: i64) -> ApiResult<Value> {
    let sql = format!(
        "SELECT {} FROM {} t WHERE t.id = $1 AND {}",
        select_cols(res, "t"),
        res.table,
        scope.to_sql()
    );
    let row = dyn_query(sql)
        .bind(id)
        .fetch_optional(&app.db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("{}({id}) not found", res.name)))?;
    row_to_json(res, &row)
}

/// Reads every entity the caller may see (no query options).
pub async fn read_all(app: &AppState, actor: &Actor, res: &Resource) -> ApiResult<Vec<Value>> {
    let scope = perms::read_scope(actor, res.name, "t");
    let sql = format!(
        "SELECT {} FROM {} t WHERE {} ORDER BY t.id",
        select_cols(res, "t"),
        res.table,
        scope.to_sql()
    );
    let rows = dyn_query(sql).fetch_all(&app.db.pool).await?;
    rows.iter().map(|r| row_to_json(res, r)).collect()
}

/// True when the caller may change row `id` of `resource`.
pub async fn may_write(app: &AppState, actor: &Actor, resource: &str, id: i64) -> ApiResult<bool> {
    let Some(res) = schema::resource(resource) else {
        return Ok(false);
    };
    let scope = perms::write_scope(actor, resource, "t");
    if scope == Scope::Nothing {
        return Ok(false);
    }
    let sql = format!(
        "SELECT t.id FROM {} t WHERE t.id = $1 AND {}",
        res.table,
        scope.to_sql()
    );
    Ok(dyn_query(sql)
        .bind(id)
        .fetch_optional(&app.db.pool)
        .await?
        .is_some())
}

/// Checks one JSON value against a field and converts it to a [`Param`].
fn to_param(res: &Resource, f: &schema::Field, v: &Value) -> ApiResult<Param> {
    let bad = |what: &str| {
        ApiError::bad_request(format!("{}.{}: expected {what}, got {v}", res.name, f.name))
    };
    if v.is_null() {
        if !f.nullable {
            return Err(ApiError::bad_request(format!(
                "{}.{} may not be null",
                res.name, f.name
            )));
        }
        return Ok(match f.kind {
            Kind::Int => Param::Int(None),
            Kind::Real => Param::Real(None),
            _ => Param::Text(None),
        });
    }
    Ok(match f.kind {
        Kind::Int => Param::Int(Some(v.as_i64().ok_or_else(|| bad("an integer"))?)),
        Kind::Real => Param::Real(Some(v.as_f64().ok_or_else(|| bad("a number"))?)),
        Kind::Bool => Param::Bool(v.as_bool().ok_or_else(|| bad("true or false"))?),
        Kind::Text => {
            let s = v.as_str().ok_or_else(|| bad("a string"))?;
            if s.trim().is_empty() {
                return Err(ApiError::bad_request(format!(
                    "{}.{} may not be empty",
                    res.name, f.name
                )));
            }
            if s.len() > 4096 {
                return Err(bad("at most 4096 bytes"));
            }
            Param::Text(Some(s.to_owned()))
        }
        Kind::Time => {
            let s = v
                .as_str()
                .ok_or_else(|| bad("an RFC 3339 timestamp string"))?;
            Param::Text(Some(
                db::normalize_ts(s).ok_or_else(|| bad("an RFC 3339 timestamp"))?,
            ))
        }
        Kind::Json => Param::Text(Some(v.to_string())),
    })
}

/// Validates a POST/PATCH body into (field, param) pairs.
pub fn validate_body(
    res: &Resource,
    body: &Value,
    creating: bool,
) -> ApiResult<Vec<(&'static str, Param)>> {
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    let mut out = Vec::new();
    for (k, v) in obj {
        let f = res
            .field(k)
            .ok_or_else(|| ApiError::bad_request(format!("{} has no field {k:?}", res.name)))?;
        let allowed = match f.write {
            Write::Never => false,
            Write::Create => creating,
            Write::Always => true,
        };
        if !allowed {
            return Err(ApiError::bad_request(format!(
                "{}.{k} cannot be set{}",
                res.name,
                if f.write == Write::Create {
                    " after creation"
                } else {
                    ""
                }
            )));
        }
        out.push((f.name, to_param(res, f, v)?));
    }
    if creating {
        for f in res
            .fields
            .iter()
            .filter(|f| f.required && f.write != Write::Never)
        {
            if !obj.contains_key(f.name) {
                return Err(ApiError::bad_request(format!(
                    "{}.{} is required",
                    res.name, f.name
                )));
            }
        }
    }
    if out.is_empty() && !creating {
        return Err(ApiError::bad_request("nothing to change"));
    }
    Ok(out)
}

fn get_int(fields: &[(&str, Param)], name: &str) -> Option<i64> {
    fields.iter().find_map(|(n, p)| match p {
        Param::Int(v) if *n == name => *v,
        _ => None,
    })
}

fn get_text(fields: &[(&str, Param)], name: &str) -> Option<String> {
    fields.iter().find_map(|(n, p)| match p {
        Param::Text(v) if *n == name => v.clone(),
        _ => None,
    })
}

/// Device types, versions and similar slugs: letters, digits, `.-_+`.
pub fn check_slug(what: &str, s: &str) -> ApiResult<()> {
    if s.is_empty()
        || s.len() > 128
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
    {
        return Err(ApiError::bad_request(format!(
            "{what} {s:?} must be 1 to 128 of a-z, A-Z, 0-9, '.', '-', '_', '+'"
        )));
    }
    Ok(())
}

/// Checks references and per-resource rules shared by POST and PATCH.
/// `row` is the id being patched (None on POST).
async fn check_links(
    app: &AppState,
    actor: &Actor,
    res: &Resource,
    fields: &[(&'static str, Param)],
    row: Option<i64>,
) -> ApiResult<()> {
    for (name, p) in fields {
        let Some(f) = res.field(name) else { continue };
        if let (Some(to), Param::Int(Some(id))) = (f.references, p) {
            if !may_write(app, actor, to, *id).await? {
                return Err(ApiError::bad_request(format!(
                    "{}.{name}: {to}({id}) not found",
                    res.name
                )));
            }
        }
    }
    // A fleet's target release and a device's pinned release must belong to
    // that fleet.
    let release_fleet = |rel: i64| async move {
        app.db
            .scalar_i64("SELECT fleet FROM \"release\" WHERE id = $1", rel)
            .await
    };
    match res.name {
        "fleet" => {
            if let (Some(rel), Some(fleet)) = (get_int(fields, "target_release"), row) {
                if release_fleet(rel).await? != Some(fleet) {
                    return Err(ApiError::bad_request(format!(
                        "fleet.target_release: release({rel}) belongs to another fleet"
                    )));
                }
            } else if get_int(fields, "target_release").is_some() {
                return Err(ApiError::bad_request(
                    "fleet.target_release can be set once the fleet has releases (PATCH)",
                ));
            }
            if let Some(dt) = get_text(fields, "device_type") {
                check_slug("device_type", &dt)?;
            }
            if let Some(v) = get_text(fields, "target_os_version") {
                check_slug("target_os_version", &v)?;
            }
        }
        "device" => {
            if let Some(rel) = get_int(fields, "pinned_release") {
                let fleet = match (get_int(fields, "fleet"), row) {
                    (Some(f), _) => Some(f),
                    (None, Some(id)) => {
                        app.db
                            .scalar_i64("SELECT fleet FROM device WHERE id = $1", id)
                            .await?
                    }
                    _ => None,
                };
                if release_fleet(rel).await? != fleet {
                    return Err(ApiError::bad_request(format!(
                        "device.pinned_release: release({rel}) belongs to another fleet"
                    )));
                }
            }
            if let Some(u) = get_text(fields, "uuid") {
                check_uuid(&u)?;
            }
            if let Some(v) = get_text(fields, "target_os_version") {
                check_slug("target_os_version", &v)?;
            }
        }
        "api_key" => {
            if let Some(sc) = get_text(fields, "scope") {
                if !auth::SCOPES.contains(&sc.as_str()) {
                    return Err(ApiError::bad_request_field(
                        "scope",
                        format!("api_key.scope {sc:?} must be one of {:?}", auth::SCOPES),
                    ));
                }
            }
        }
        "user" => {
            if let Some(u) = get_text(fields, "username") {
                check_slug("username", &u)?;
            }
        }
        "os_release" => {
            if let Some(dt) = get_text(fields, "device_type") {
                check_slug("device_type", &dt)?;
            }
            if let Some(v) = get_text(fields, "version") {
                check_slug("version", &v)?;
            }
        }
        "fleet_env_var" | "device_env_var" | "service_env_var" | "fleet_config_var"
        | "device_config_var" => {
            if let Some(n) = get_text(fields, "name") {
                if !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    || n.starts_with(|c: char| c.is_ascii_digit())
                {
                    return Err(ApiError::bad_request(format!(
                        "{}.name {n:?} must be a variable name (A-Z, a-z, 0-9, _; not starting with a digit)",
                        res.name
                    )));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// A device uuid: 32 lowercase hex characters.
pub fn check_uuid(u: &str) -> ApiResult<()> {
    if u.len() != 32 || !u.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
        return Err(ApiError::bad_request(format!(
            "uuid {u:?} must be 32 lowercase hex characters"
        )));
    }
    Ok(())
}

/// A new random uuid, 32 lowercase hex characters.
pub fn new_uuid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// POST: creates an entity and answers it (with `key` for key resources).
pub async fn create(
    app: &AppState,
    actor: &Actor,
    res: &Resource,
    body: &Value,
) -> ApiResult<(StatusCode, Value)> {
    perms::may_change(actor)?;
    if !res.writable {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{} cannot be created directly", res.name),
        ));
    }
    let public = res.name == "os_release" && body.get("is_public") == Some(&Value::Bool(true));
    let uid = perms::may_create(actor, res.name, public)?;
    if res.name == "release" {
        return crate::release::create(app, actor, body).await;
    }
    let mut fields = validate_body(res, body, true)?;
    check_links(app, actor, res, &fields, None).await?;
    let mut key = None;
    match res.name {
        "api_key" => {
            // An admin may make a key for another user; anyone else's
            // keys are their own.
            if get_int(&fields, "user").is_none() {
                fields.push(("user", Param::Int(Some(uid))));
            }
            let (k, h) = auth::new_key(KeyKind::User);
            key = Some(k);
            fields.push(("key_hash", Param::Text(Some(h))));
        }
        "provisioning_key" => {
            let (k, h) = auth::new_key(KeyKind::Provisioning);
            key = Some(k);
            fields.push(("key_hash", Param::Text(Some(h))));
        }
        "fleet" => {
            fields.push(("owner", Param::Int(Some(uid))));
            fields.push(("uuid", Param::Text(Some(new_uuid()))));
        }
        "os_release" => fields.push(("owner", Param::Int(Some(uid)))),
        "device" => {
            let uuid = get_text(&fields, "uuid").unwrap_or_else(new_uuid);
            if get_text(&fields, "uuid").is_none() {
                fields.push(("uuid", Param::Text(Some(uuid.clone()))));
            }
            if get_text(&fields, "name").is_none() {
                fields.push(("name", Param::Text(Some(uuid[..7].to_owned()))));
            }
            if get_text(&fields, "device_type").is_none() {
                let fleet = get_int(&fields, "fleet").unwrap_or_default();
                let row = sqlx::query("SELECT device_type FROM fleet WHERE id = $1")
                    .bind(fleet)
                    .fetch_one(&app.db.pool)
                    .await?;
                fields.push(("device_type", Param::Text(Some(row.try_get(0)?))));
            }
        }
        _ => {}
    }
    if res.fields.iter().any(|f| f.name == "created_at") {
        fields.push(("created_at", Param::Text(Some(db::now()))));
    }
    let cols: Vec<String> = fields.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    let marks: Vec<String> = (1..=fields.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "INSERT INTO {} ({}) VALUES ({}) RETURNING id",
        res.table,
        cols.join(", "),
        marks.join(", ")
    );
    let params: Vec<Param> = fields.into_iter().map(|(_, p)| p).collect();
    let row = bind_all(dyn_query(sql), &params)
        .fetch_one(&app.db.pool)
        .await?;
    let id: i64 = row.try_get(0)?;
    if let Some(change) = cache::change_of(app, res.name, id).await? {
        cache::changed(app, change).await;
    }
    // An admin's key for another user is answered although the admin
    // cannot read it afterwards.
    let mut entity = if key.is_some() && res.name == "api_key" {
        read_one_in(app, &Scope::All, res, id).await?
    } else {
        read_one(app, actor, res, id).await?
    };
    if let (Some(k), Some(obj)) = (key, entity.as_object_mut()) {
        obj.insert("key".into(), Value::String(k));
    }
    Ok((StatusCode::CREATED, entity))
}

/// PATCH: changes the given fields of a row the caller owns.
pub async fn patch(
    app: &AppState,
    actor: &Actor,
    res: &Resource,
    id: i64,
    body: &Value,
) -> ApiResult<()> {
    perms::may_change(actor)?;
    if !res.writable {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{} cannot be changed directly", res.name),
        ));
    }
    if res.name == "os_release" && body.get("is_public").is_some() && !perms::is_admin(actor) {
        return Err(ApiError::forbidden(
            "only an admin may publish or withdraw a public OS release",
        ));
    }
    if !may_write(app, actor, res.name, id).await? {
        return Err(ApiError::not_found(format!("{}({id}) not found", res.name)));
    }
    let fields = validate_body(res, body, false)?;
    check_links(app, actor, res, &fields, Some(id)).await?;
    let sets: Vec<String> = fields
        .iter()
        .enumerate()
        .map(|(i, (n, _))| format!("\"{n}\" = ${}", i + 1))
        .collect();
    let sql = format!(
        "UPDATE {} SET {} WHERE id = ${}",
        res.table,
        sets.join(", "),
        fields.len() + 1
    );
    let mut params: Vec<Param> = fields.into_iter().map(|(_, p)| p).collect();
    params.push(Param::Int(Some(id)));
    let change = cache::change_of(app, res.name, id).await?;
    bind_all(dyn_query(sql), &params)
        .execute(&app.db.pool)
        .await?;
    if let Some(change) = change {
        cache::changed(app, change).await;
    }
    Ok(())
}

/// What still refers to row `id` of `res` in a way that a delete would
/// break: a fleet's devices, and the fleets and devices that target or pin
/// a release. Each entry is (referring field, the entities), e.g.
/// ("device.fleet", ["device(7)", …]).
async fn referrers(
    app: &AppState,
    res: &Resource,
    id: i64,
) -> ApiResult<Vec<(&'static str, Vec<String>)>> {
    let checks: &[(&str, &str, &str)] = match res.name {
        "fleet" => &[("device.fleet", "device", "fleet")],
        "release" => &[
            ("fleet.target_release", "fleet", "target_release"),
            ("device.pinned_release", "device", "pinned_release"),
        ],
        _ => &[],
    };
    let mut out = Vec::new();
    for (what, table, col) in checks {
        let rows = dyn_query(format!(
            "SELECT id FROM {table} WHERE {col} = $1 ORDER BY id LIMIT 6"
        ))
        .bind(id)
        .fetch_all(&app.db.pool)
        .await?;
        if rows.is_empty() {
            continue;
        }
        let mut names = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            if i == 5 {
                names.push("…".to_owned());
                break;
            }
            names.push(format!("{table}({})", r.try_get::<i64, _>(0)?));
        }
        out.push((*what, names));
    }
    Ok(out)
}

/// DELETE: removes a row the caller owns (children cascade). A fleet with
/// devices, or a release a fleet targets or a device pins, is answered 409
/// naming what refers to it, unless `force` (`?force=true`); a forced
/// delete is logged.
pub async fn delete(
    app: &AppState,
    actor: &Actor,
    res: &Resource,
    id: i64,
    force: bool,
) -> ApiResult<()> {
    perms::may_change(actor)?;
    if !res.writable {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{} cannot be deleted directly", res.name),
        ));
    }
    if !may_write(app, actor, res.name, id).await? {
        return Err(ApiError::not_found(format!("{}({id}) not found", res.name)));
    }
    let refs = referrers(app, res, id).await?;
    if !refs.is_empty() {
        let list: Vec<String> = refs
            .iter()
            .map(|(what, names)| format!("{what} of {}", names.join(", ")))
            .collect();
        if !force {
            return Err(ApiError::conflict_field(
                refs[0].0,
                format!(
                    "{}({id}) is still referred to by {}; remove those references first, \
                     or DELETE with ?force=true",
                    res.name,
                    list.join("; ")
                ),
            ));
        }
        tracing::warn!(
            actor = ?actor,
            "forced delete of {}({id}), still referred to by {}",
            res.name,
            list.join("; ")
        );
    }
    let change = cache::change_of(app, res.name, id).await?;
    let mut tx = app.db.begin_write().await?;
    if res.name == "release" {
        sqlx::query("UPDATE fleet SET target_release = NULL WHERE target_release = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    dyn_query(format!("DELETE FROM {} WHERE id = $1", res.table))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    if let Some(change) = change {
        cache::changed(app, change).await;
    }
    if res.name == "os_release" {
        let dir = app.config.data_dir.join("os").join(id.to_string());
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("removing {}: {e}", dir.display());
            }
        }
    }
    Ok(())
}
