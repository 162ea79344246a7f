//! The `/v1` routes: dispatch from URL segments (`device`, `device(42)`,
//! `device/$count`, `device(42)/logs`, …) to CRUD, queries and sub-resources.

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use crate::auth::{self, Actor};
use crate::error::{ApiError, ApiResult};
use crate::schema::{self, Resource};
use crate::{actions, logs, metadata, os, perms, query, resources, rollout, AppState};

/// `name` or `name(<integer key>)`.
pub fn parse_segment(seg: &str) -> ApiResult<(&'static Resource, Option<i64>)> {
    let (name, key) = match seg.find('(') {
        Some(i) => {
            let inner = seg[i + 1..].strip_suffix(')').ok_or_else(|| {
                ApiError::bad_request(format!("{seg:?}: the key must end with ')'"))
            })?;
            let inner = inner.strip_prefix("id=").unwrap_or(inner);
            let key = inner.parse::<i64>().map_err(|_| {
                ApiError::bad_request(format!(
                    "{seg:?}: the key must be an integer, e.g. {}(42)",
                    &seg[..i]
                ))
            })?;
            (&seg[..i], Some(key))
        }
        None => (seg, None),
    };
    let res = schema::resource(name)
        .ok_or_else(|| ApiError::not_found(format!("no resource named {name:?}")))?;
    Ok((res, key))
}

fn body_json(body: &Bytes) -> ApiResult<Value> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Everything at `/v1/{seg}`.
pub async fn v1(
    State(app): State<AppState>,
    method: Method,
    Path(seg): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = async {
        if seg == "$metadata" && matches!(method, Method::GET | Method::HEAD) {
            return Ok(metadata::csdl_response());
        }
        let actor = auth::resolve(&app.db, &headers).await?;
        perms::may_use_v1(&actor)?;
        let (res, key) = parse_segment(&seg)?;
        match (method, key) {
            // HEAD answers as GET does (the server drops the body).
            (Method::GET | Method::HEAD, key) => {
                query::get(
                    &app,
                    &actor,
                    res,
                    key,
                    q.as_deref(),
                    false,
                    prefer(&headers),
                )
                .await
            }
            (Method::POST, None) if res.name == "rollout" => {
                let v = rollout::create(&app, &actor, &body).await?;
                audited(&app, &actor, "create", format!("rollout({})", v.id)).await;
                let mut resp = (StatusCode::CREATED, Json(&v)).into_response();
                let location = format!("{}/v1/rollout({})", app.config.public_url, v.id);
                if let Ok(h) = axum::http::HeaderValue::from_str(&location) {
                    resp.headers_mut().insert(axum::http::header::LOCATION, h);
                }
                Ok(resp)
            }
            (Method::POST, None) => {
                let (status, v) = resources::create(&app, &actor, res, &body_json(&body)?).await?;
                if let Some(id) = v.get("id").and_then(Value::as_i64) {
                    audited(&app, &actor, "create", format!("{}({id})", res.name)).await;
                }
                let mut resp = (status, Json(&v)).into_response();
                if let Some(id) = v.get("id").and_then(Value::as_i64) {
                    let location = format!("{}/v1/{}({id})", app.config.public_url, res.name);
                    if let Ok(h) = axum::http::HeaderValue::from_str(&location) {
                        resp.headers_mut().insert(axum::http::header::LOCATION, h);
                    }
                }
                Ok(resp)
            }
            (Method::PATCH, Some(id)) => {
                let body = body_json(&body)?;
                resources::patch(&app, &actor, res, id, &body).await?;
                audited(&app, &actor, "update", format!("{}({id})", res.name)).await;
                Ok(StatusCode::NO_CONTENT.into_response())
            }
            (Method::DELETE, Some(id)) => {
                let force = force_param(q.as_deref())?;
                resources::delete(&app, &actor, res, id, force).await?;
                audited(&app, &actor, "delete", format!("{}({id})", res.name)).await;
                Ok(StatusCode::NO_CONTENT.into_response())
            }
            (m, _) => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{m} is not allowed on /v1/{seg}"),
            )),
        }
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

/// Writes an audit-log entry for a successful API write.
async fn audited(app: &AppState, actor: &Actor, action: &str, target: String) {
    crate::web::audit::record(
        &app.db,
        actor,
        crate::web::audit::Entry {
            via: "api",
            action,
            target: &target,
            detail: None,
        },
    )
    .await;
}

/// The `Prefer` header, if it is text.
fn prefer(headers: &HeaderMap) -> Option<&str> {
    headers.get("prefer").and_then(|v| v.to_str().ok())
}

/// `?force=true|false` of a DELETE (the only parameter it takes).
fn force_param(q: Option<&str>) -> ApiResult<bool> {
    let mut force = false;
    for pair in q.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("force", "true")) => force = true,
            Some(("force", "false")) => force = false,
            _ => {
                return Err(ApiError::bad_request_field(
                    "force",
                    format!("DELETE takes only force=true or force=false, not {pair:?}"),
                ))
            }
        }
    }
    Ok(force)
}

/// Everything at `/v1/{seg}/{sub}`.
pub async fn v1_sub(
    State(app): State<AppState>,
    method: Method,
    Path((seg, sub)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let actor: Actor = auth::resolve(&app.db, &headers).await?;
        perms::may_use_v1(&actor)?;
        if seg == "os" && sub == "download" && method == Method::GET {
            return os::download(&app, &actor, q.as_deref()).await;
        }
        let (res, key) = parse_segment(&seg)?;
        match (method, res.name, key, sub.as_str()) {
            (Method::GET | Method::HEAD, _, None, "$count") => {
                query::get(&app, &actor, res, None, q.as_deref(), true, None).await
            }
            (Method::GET, "release", Some(id), "logs") => {
                crate::build::release_logs(&app, &actor, id).await
            }
            (Method::GET, "device", Some(id), "logs") => {
                logs::get_logs(&app, &actor, id, q.as_deref()).await
            }
            // HEAD of the logs never follows: it has no body to stream into.
            (Method::HEAD, "device", Some(id), "logs") => {
                let q: Vec<&str> = q
                    .as_deref()
                    .unwrap_or_default()
                    .split('&')
                    .filter(|p| !p.is_empty() && !p.starts_with("follow="))
                    .collect();
                logs::get_logs(&app, &actor, id, Some(&q.join("&"))).await
            }
            (Method::GET, "device", Some(id), "actions") => actions::list(&app, &actor, id).await,
            (Method::POST, "device", Some(id), "actions" | "move") => {
                let body = axum::body::to_bytes(body, 64 * 1024)
                    .await
                    .map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
                if sub == "move" {
                    Ok(actions::move_device(&app, &actor, id, &body)
                        .await?
                        .into_response())
                } else {
                    actions::create(&app, &actor, id, &body).await
                }
            }
            (Method::GET, "rollout", Some(id), "progress") => {
                Ok(Json(rollout::progress(&app.db, &actor, id).await?).into_response())
            }
            (Method::POST, "rollout", Some(id), action) => {
                let body = axum::body::to_bytes(body, 64 * 1024)
                    .await
                    .map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
                let v = rollout::act(&app, &actor, id, action, &body).await?;
                audited(&app, &actor, action, format!("rollout({id})")).await;
                Ok(Json(v).into_response())
            }
            (Method::PUT, "os_release", Some(id), "bundle" | "image") => {
                os::upload(&app, &actor, id, &sub, body).await
            }
            _ => Err(ApiError::not_found(format!("no route /v1/{seg}/{sub}"))),
        }
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

/// The longest request target (path and query) served, in bytes; a longer
/// one is answered 414 in the JSON error shape. hyper itself refuses a URI
/// over 65,534 bytes before any handler runs, with a 414 that has no body;
/// this limit sits just below it so nearly every over-long URI gets ours.
pub const MAX_URI: usize = 64_000;

/// The JSON 414 for a request target over [`MAX_URI`] (part of the
/// server-wide middleware, [`crate::service`]).
pub fn refuse_long_uri(req: &axum::extract::Request) -> Option<Response> {
    let len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    (len > MAX_URI).then(|| {
        ApiError::new(
            StatusCode::URI_TOO_LONG,
            "UriTooLong",
            format!("the request target is {len} bytes, more than {MAX_URI}"),
        )
        .into_response()
    })
}

/// Gives the errors axum itself answers in plain text (413 from the body
/// limit, 405, …) the OData JSON error shape (part of the server-wide
/// middleware, [`crate::service`]).
pub fn json_error_shape(resp: Response) -> Response {
    let status = resp.status();
    // JSON errors, and the dashboard's HTML error pages, stay as they are.
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (code, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (
            "PayloadTooLarge",
            "the request body is larger than this endpoint takes",
        ),
        StatusCode::URI_TOO_LONG => ("UriTooLong", "the request target is too long"),
        StatusCode::METHOD_NOT_ALLOWED => (
            "MethodNotAllowed",
            "this method is not allowed on this path",
        ),
        StatusCode::NOT_FOUND => ("NotFound", "no such route"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("UnsupportedMediaType", "unsupported media type"),
        _ => return resp,
    };
    let mut out = ApiError::new(status, code, message).into_response();
    if let Some(allow) = resp.headers().get(axum::http::header::ALLOW) {
        out.headers_mut()
            .insert(axum::http::header::ALLOW, allow.clone());
    }
    out
}

/// `GET /v1`: the service document.
pub async fn service_document() -> Json<Value> {
    let sets: Vec<Value> = schema::RESOURCES
        .iter()
        .map(|r| serde_json::json!({"name": r.name, "kind": "EntitySet", "url": r.name}))
        .collect();
    Json(serde_json::json!({"@odata.context": "$metadata", "value": sets}))
}
