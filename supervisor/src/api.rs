//! The local API on 127.0.0.1:48484 for the apps on the device. Every route
//! but `/ping` needs the key from the state dir (`Authorization: Bearer` or
//! `?apikey=`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use resin_api_types::{labels, AppReport};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, watch, Notify};

use crate::engine::Engine;
use crate::planner::{Container, CurrentState};
use crate::report::apps_report;

/// What the API reads and the channels it pokes.
pub struct ApiState {
    pub key: String,
    pub version: String,
    pub engine: Engine,
    pub current: watch::Receiver<CurrentState>,
    /// Wakes the main loop for an immediate poll and reconcile.
    pub update: Arc<Notify>,
    /// Wakes the main loop to read the engine again.
    pub refresh: Arc<Notify>,
    /// Set with `update` to override locks on the next reconcile.
    pub force: Arc<AtomicBool>,
    pub reboot: mpsc::Sender<String>,
    /// Seconds since the epoch of the main loop's last pass.
    pub last_loop: Arc<AtomicI64>,
    /// `/v1/healthy` fails when the loop is older than this.
    pub healthy_within_secs: i64,
}

type Shared = Arc<ApiState>;

fn err(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"status": "failed", "message": message.into()})),
    )
        .into_response()
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let query = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("apikey=").map(str::to_owned))
    });
    match bearer.or(query) {
        Some(k) if same(k.as_bytes(), s.key.as_bytes()) => next.run(req).await,
        _ => err(StatusCode::UNAUTHORIZED, "missing or wrong API key"),
    }
}

pub fn router(state: Shared) -> Router {
    let protected = Router::new()
        .route("/v1/healthy", get(healthy))
        .route("/v1/reboot", post(reboot))
        .route("/v1/restart", post(restart_app))
        .route("/v1/update", post(update))
        .route("/v2/applications/state", get(apps_state))
        .route("/v2/applications/{app}/{action}", post(service_action))
        .route("/v2/version", get(version))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/ping", get(|| async { "OK" }))
        .merge(protected)
        .with_state(state)
}

async fn healthy(State(s): State<Shared>) -> Response {
    let now = crate::now_secs();
    let age = now - s.last_loop.load(Ordering::Relaxed);
    if age > s.healthy_within_secs {
        return err(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("main loop last ran {age} s ago"),
        );
    }
    if !s.engine.ping().await {
        return err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Docker engine unreachable",
        );
    }
    (StatusCode::OK, "OK").into_response()
}

#[derive(Deserialize, Default)]
struct ForceBody {
    #[serde(default)]
    force: bool,
}

/// The update lock that holds `service` of `app`: its own, or the app's.
fn lock_of(app: &str, service: &str) -> Option<String> {
    let own = labels::update_lock_path(app, service);
    if std::path::Path::new(&own).exists() {
        return Some(own);
    }
    let whole = crate::reconcile::app_lock_path(app);
    whole.exists().then(|| whole.display().to_string())
}

/// The update-lock files (services' and apps') that hold a managed
/// container of `cur`.
pub fn locks_held(cur: &CurrentState) -> Vec<String> {
    let mut held: Vec<String> = cur
        .containers
        .iter()
        .filter(|c| c.managed)
        .filter_map(|c| lock_of(&c.app_uuid, &c.service))
        .collect();
    held.sort();
    held.dedup();
    held
}

fn locked(held: &[String]) -> Response {
    err(
        StatusCode::LOCKED,
        format!("update locks held: {}", held.join(", ")),
    )
}

async fn reboot(State(s): State<Shared>, body: Option<Json<ForceBody>>) -> Response {
    let force = body.map(|b| b.0.force).unwrap_or_default();
    let held = locks_held(&s.current.borrow());
    if !force && !held.is_empty() {
        return locked(&held);
    }
    match s.reboot.try_send("local API".into()) {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(json!({"Data": "OK", "Error": null})),
        )
            .into_response(),
        Err(e) => err(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn update(State(s): State<Shared>, body: Option<Json<ForceBody>>) -> Response {
    if body.map(|b| b.0.force).unwrap_or_default() {
        s.force.store(true, Ordering::SeqCst);
    }
    s.update.notify_one();
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AppBody {
    app_uuid: String,
    /// Act even while an update lock is held (as balena's `force`).
    #[serde(default)]
    force: bool,
}

async fn restart_app(
    State(s): State<Shared>,
    body: Result<Json<AppBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(body)) = body else {
        return err(StatusCode::BAD_REQUEST, "body must be {\"appUuid\": \"…\"}");
    };
    let (ids, mut held): (Vec<String>, Vec<String>) = {
        let cur = s.current.borrow();
        let mine = cur
            .containers
            .iter()
            .filter(|c| c.managed && c.app_uuid == body.app_uuid);
        (
            mine.clone().map(|c| c.id.clone()).collect(),
            mine.filter_map(|c| lock_of(&c.app_uuid, &c.service))
                .collect(),
        )
    };
    if ids.is_empty() {
        return err(StatusCode::NOT_FOUND, format!("no app {}", body.app_uuid));
    }
    held.sort();
    held.dedup();
    if !body.force && !held.is_empty() {
        return locked(&held);
    }
    for id in ids {
        if let Err(e) = s.engine.restart(&id).await {
            return err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
    }
    s.refresh.notify_one();
    (StatusCode::OK, "OK").into_response()
}

async fn apps_state(State(s): State<Shared>) -> Json<BTreeMap<String, AppReport>> {
    Json(apps_report(&s.current.borrow()))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceBody {
    service_name: String,
    /// Act even while an update lock is held (as balena's `force`).
    #[serde(default)]
    force: bool,
}

async fn service_action(
    State(s): State<Shared>,
    Path((app, action)): Path<(String, String)>,
    _q: Query<BTreeMap<String, String>>,
    body: Result<Json<ServiceBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(body)) = body else {
        return err(
            StatusCode::BAD_REQUEST,
            "body must be {\"serviceName\": \"…\"}",
        );
    };
    let target: Option<Container> = {
        let cur = s.current.borrow();
        let mut mine: Vec<&Container> = cur
            .containers
            .iter()
            .filter(|c| c.managed && c.app_uuid == app && c.service == body.service_name)
            .collect();
        // Newest first: during a hand-over, act on the new container.
        mine.sort_by_key(|c| std::cmp::Reverse(c.created));
        mine.first().map(|c| (*c).clone())
    };
    let Some(c) = target else {
        return err(
            StatusCode::NOT_FOUND,
            format!("no service {} in app {app}", body.service_name),
        );
    };
    if !matches!(
        action.as_str(),
        "restart-service" | "stop-service" | "start-service"
    ) {
        return err(StatusCode::NOT_FOUND, format!("no action {action}"));
    }
    if let Some(lock) = lock_of(&app, &body.service_name).filter(|_| !body.force) {
        return locked(&[lock]);
    }
    let r = match action.as_str() {
        "restart-service" => s.engine.restart(&c.id).await,
        "stop-service" => s.engine.stop(&c.id).await,
        "start-service" => s.engine.start(&c.id).await,
        other => return err(StatusCode::NOT_FOUND, format!("no action {other}")),
    };
    // Let the main loop read the engine again (and report the change).
    s.refresh.notify_one();
    match r {
        Ok(()) => (StatusCode::OK, "OK").into_response(),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn version(State(s): State<Shared>) -> Json<serde_json::Value> {
    Json(json!({"status": "success", "version": s.version}))
}
