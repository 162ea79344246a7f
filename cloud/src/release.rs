//! Releases: `POST /v1/release` with `{fleet, composition}`, where the
//! composition is a compose document as JSON. It is validated into the
//! shared [`ReleaseTarget`] shape, and service and image rows are created.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use resin_api_types::{NetworkTarget, ReleaseTarget, ServiceTarget, VolumeTarget};
use serde_json::{Map, Value};
use sqlx::Row;

use crate::auth::Actor;
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::resources::{self, new_uuid};
use crate::{schema, AppState};

/// A top-level volume or network: name, driver, labels.
type NamedSpec = (String, Option<String>, BTreeMap<String, String>);

const SERVICE_KEYS: &[&str] = &[
    "image",
    "environment",
    "labels",
    "ports",
    "volumes",
    "networks",
    "restart",
    "command",
    "entrypoint",
    "privileged",
    "devices",
    "cap_add",
    "cap_drop",
    "network_mode",
    "depends_on",
];

fn err(path: &str, msg: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("composition.{path}: {msg}"))
}

fn string_list(path: &str, v: &Value) -> ApiResult<Vec<String>> {
    let arr = v.as_array().ok_or_else(|| err(path, "expected a list"))?;
    arr.iter()
        .enumerate()
        .map(|(i, x)| match x {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            _ => Err(err(&format!("{path}[{i}]"), "expected a string")),
        })
        .collect()
}

/// Compose maps may be written as `{K: V}` or `["K=V", …]`.
fn string_map(path: &str, v: &Value) -> ApiResult<BTreeMap<String, String>> {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Null => String::new(),
                    _ => return Err(err(&format!("{path}.{k}"), "expected a scalar")),
                };
                Ok((k.clone(), s))
            })
            .collect(),
        Value::Array(_) => string_list(path, v)?
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
                _ => Err(err(path, format!("{kv:?} is not KEY=VALUE"))),
            })
            .collect(),
        _ => Err(err(path, "expected a map or a list of KEY=VALUE")),
    }
}

fn command(path: &str, v: &Value) -> ApiResult<Vec<String>> {
    match v {
        Value::String(s) => Ok(s.split_whitespace().map(str::to_owned).collect()),
        _ => string_list(path, v),
    }
}

/// Compose `depends_on`: a list of service names, or a map of name to
/// `{condition: service_started}` (the only condition the supervisor keeps:
/// it starts dependencies first).
fn depends_on(path: &str, v: &Value) -> ApiResult<Vec<String>> {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(n, spec)| {
                let cond = spec.get("condition").and_then(Value::as_str);
                if !matches!(cond, None | Some("service_started")) {
                    return Err(err(
                        &format!("{path}.{n}.condition"),
                        "only service_started is supported",
                    ));
                }
                Ok(n.clone())
            })
            .collect(),
        _ => string_list(path, v),
    }
}

/// Every `depends_on` names a service of the same release, and the
/// dependencies have no cycle (the supervisor could start none of them).
fn check_dependencies(rel: &ReleaseTarget) -> ApiResult<()> {
    for (name, svc) in &rel.services {
        if let Some(d) = svc
            .depends_on
            .iter()
            .find(|d| !rel.services.contains_key(*d))
        {
            return Err(err(
                &format!("services.{name}.depends_on"),
                format!("unknown service {d:?}"),
            ));
        }
    }
    // Depth-first search; `path` is the chain being followed.
    fn visit<'a>(
        rel: &'a ReleaseTarget,
        name: &'a str,
        path: &mut Vec<&'a str>,
        done: &mut std::collections::BTreeSet<&'a str>,
    ) -> Result<(), String> {
        if let Some(at) = path.iter().position(|p| *p == name) {
            let mut cycle = path[at..].to_vec();
            cycle.push(name);
            return Err(cycle.join(" -> "));
        }
        if done.contains(name) {
            return Ok(());
        }
        path.push(name);
        if let Some(svc) = rel.services.get(name) {
            for d in &svc.depends_on {
                visit(rel, d, path, done)?;
            }
        }
        path.pop();
        done.insert(name);
        Ok(())
    }
    let mut done = std::collections::BTreeSet::new();
    for name in rel.services.keys() {
        visit(rel, name, &mut Vec::new(), &mut done).map_err(|cycle| {
            err(
                &format!("services.{name}.depends_on"),
                format!("dependency cycle {cycle}"),
            )
        })?;
    }
    Ok(())
}

/// Validates a compose document (as JSON) into a release target.
pub fn parse_composition(doc: &Value) -> ApiResult<ReleaseTarget> {
    let top = doc
        .as_object()
        .ok_or_else(|| ApiError::bad_request("composition must be a JSON object"))?;
    for k in top.keys() {
        if !matches!(
            k.as_str(),
            "services" | "volumes" | "networks" | "version" | "name"
        ) {
            return Err(err(
                k,
                "unknown top-level key (services, volumes, networks)",
            ));
        }
    }
    let services = top
        .get("services")
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| err("services", "a non-empty map of services is required"))?;
    let mut out = ReleaseTarget::default();
    for (name, svc) in services {
        let p = format!("services.{name}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(err(&p, "service names use a-z, A-Z, 0-9, '-', '_', '.'"));
        }
        let m = svc.as_object().ok_or_else(|| err(&p, "expected a map"))?;
        for k in m.keys() {
            if !SERVICE_KEYS.contains(&k.as_str()) {
                return Err(err(
                    &format!("{p}.{k}"),
                    format!("unsupported key (supported: {})", SERVICE_KEYS.join(", ")),
                ));
            }
        }
        let image = m
            .get("image")
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty() && !s.contains(char::is_whitespace))
            .ok_or_else(|| err(&format!("{p}.image"), "an image reference is required"))?;
        let mut t = ServiceTarget {
            image: image.to_owned(),
            restart: "always".into(),
            ..Default::default()
        };
        for (k, v) in m {
            let kp = format!("{p}.{k}");
            match k.as_str() {
                "environment" => t.environment = string_map(&kp, v)?,
                "labels" => t.labels = string_map(&kp, v)?,
                "ports" => t.ports = string_list(&kp, v)?,
                "volumes" => t.volumes = string_list(&kp, v)?,
                "networks" => {
                    t.networks = match v {
                        Value::Object(n) => n.keys().cloned().collect(),
                        _ => string_list(&kp, v)?,
                    }
                }
                "restart" => {
                    let r = v.as_str().unwrap_or_default();
                    if !matches!(r, "no" | "always" | "on-failure" | "unless-stopped") {
                        return Err(err(&kp, "one of no, always, on-failure, unless-stopped"));
                    }
                    t.restart = r.to_owned();
                }
                "command" => t.command = Some(command(&kp, v)?),
                "entrypoint" => t.entrypoint = Some(command(&kp, v)?),
                "privileged" => {
                    t.privileged = v.as_bool().ok_or_else(|| err(&kp, "expected true/false"))?
                }
                "devices" => t.devices = string_list(&kp, v)?,
                "cap_add" => t.cap_add = string_list(&kp, v)?,
                "cap_drop" => t.cap_drop = string_list(&kp, v)?,
                "network_mode" => {
                    t.network_mode = Some(
                        v.as_str()
                            .ok_or_else(|| err(&kp, "expected a string"))?
                            .to_owned(),
                    )
                }
                "depends_on" => t.depends_on = depends_on(&kp, v)?,
                _ => {}
            }
        }
        out.services.insert(name.clone(), t);
    }
    check_dependencies(&out)?;
    let empty = Map::new();
    let named = |key: &str| -> ApiResult<Vec<NamedSpec>> {
        let Some(v) = top.get(key) else {
            return Ok(vec![]);
        };
        let m = v.as_object().ok_or_else(|| err(key, "expected a map"))?;
        m.iter()
            .map(|(n, spec)| {
                let s = spec.as_object().unwrap_or(&empty);
                let driver = s.get("driver").and_then(Value::as_str).map(str::to_owned);
                let labels = match s.get("labels") {
                    Some(l) => string_map(&format!("{key}.{n}.labels"), l)?,
                    None => BTreeMap::new(),
                };
                Ok((n.clone(), driver, labels))
            })
            .collect()
    };
    for (n, driver, labels) in named("volumes")? {
        out.volumes.insert(n, VolumeTarget { driver, labels });
    }
    for (n, driver, labels) in named("networks")? {
        out.networks.insert(n, NetworkTarget { driver, labels });
    }
    Ok(out)
}

/// `POST /v1/release`.
pub async fn create(app: &AppState, actor: &Actor, body: &Value) -> ApiResult<(StatusCode, Value)> {
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    for k in obj.keys() {
        if !matches!(k.as_str(), "fleet" | "composition" | "status") {
            return Err(ApiError::bad_request(format!(
                "release has no writable field {k:?}"
            )));
        }
    }
    let fleet = obj
        .get("fleet")
        .and_then(Value::as_i64)
        .ok_or_else(|| ApiError::bad_request("release.fleet (an integer) is required"))?;
    let status = match obj.get("status") {
        None => "success".to_owned(),
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "release.status must be a non-empty string",
            ))
        }
    };
    let composition = obj
        .get("composition")
        .ok_or_else(|| ApiError::bad_request("release.composition is required"))?;
    if !resources::may_write(app, actor, "fleet", fleet).await? {
        return Err(ApiError::bad_request(format!(
            "release.fleet: fleet({fleet}) not found"
        )));
    }
    let mut target = parse_composition(composition)?;
    let mut tx = app.db.begin_write().await?;
    let row = sqlx::query(
        "INSERT INTO \"release\" (uuid, fleet, composition, target_json, status, created_at) \
         VALUES ($1, $2, $3, '{}', $4, $5) RETURNING id",
    )
    .bind(new_uuid())
    .bind(fleet)
    .bind(composition.to_string())
    .bind(&status)
    .bind(db::now())
    .fetch_one(&mut *tx)
    .await?;
    let id: i64 = row.try_get(0)?;
    for (name, svc) in target.services.iter_mut() {
        let row = sqlx::query(
            "INSERT INTO service (\"release\", name, image) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(id)
        .bind(name)
        .bind(&svc.image)
        .fetch_one(&mut *tx)
        .await?;
        svc.id = row.try_get(0)?;
        let digest = svc
            .image
            .split_once('@')
            .map(|(_, d)| d.to_owned())
            .filter(|d| d.starts_with("sha256:"));
        sqlx::query(
            "INSERT INTO image (service, \"release\", ref, digest) VALUES ($1, $2, $3, $4)",
        )
        .bind(svc.id)
        .bind(id)
        .bind(&svc.image)
        .bind(digest)
        .execute(&mut *tx)
        .await?;
    }
    target.id = id;
    let json = serde_json::to_string(&target).map_err(ApiError::internal)?;
    sqlx::query("UPDATE \"release\" SET target_json = $1 WHERE id = $2")
        .bind(json)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    crate::cache::changed(app, crate::cache::Change::Fleet(fleet)).await;
    let res =
        schema::resource("release").ok_or_else(|| ApiError::internal("no release resource"))?;
    Ok((
        StatusCode::CREATED,
        resources::read_one(app, actor, res, id).await?,
    ))
}
