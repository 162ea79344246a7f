//! The dashboard terminal: `GET /devices/<id>/terminal` is a page with a
//! vendored xterm.js (`static/xterm.js`, `static/xterm.css`) and
//! `static/terminal.js`. The script asks `POST /devices/<id>/terminal/ticket`
//! (session cookie and `X-CSRF-Token`) for a single-use ticket valid for
//! 30 s ([`crate::tunnel::issue_ticket`]), then opens the device's session
//! WebSocket `/v1/device(<id>)/tunnel?ticket=…` with it instead of a key:
//! a shell on a PTY the size of the terminal, audited like `resin ssh`.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use minijinja::context;
use serde_json::{json, Value};

use super::{check_csrf, render, Auth, WebError, WebResult};
use crate::error::ApiError;
use crate::{perms, resources, schema, AppState};

/// The terminal's routes (merged into the dashboard's router).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/devices/{id}/terminal", get(page))
        .route("/devices/{id}/terminal/ticket", post(ticket))
}

async fn page(State(app): State<AppState>, Auth(s): Auth, Path(id): Path<i64>) -> WebResult {
    let actor = s.actor();
    let res = schema::resource("device")
        .ok_or_else(|| WebError(ApiError::internal("no resource device")))?;
    let device = resources::read_one(&app, &actor, res, id).await?;
    perms::require_device(&app.db, &actor, id, perms::Access::Write).await?;
    let name = device.get("name").and_then(Value::as_str).unwrap_or("");
    Ok(render(
        "terminal.html",
        context! {
            user => s.username.clone(),
            admin => s.admin,
            csrf => s.csrf.clone(),
            read_at => crate::db::now(),
            device => context! { id => id, name => name },
        },
    ))
}

async fn ticket(
    State(app): State<AppState>,
    Auth(s): Auth,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> WebResult {
    check_csrf(&s, &headers, &Default::default())?;
    perms::require_device(&app.db, &s.actor(), id, perms::Access::Write).await?;
    let t = crate::tunnel::issue_ticket(&app, s.user, id)
        .await
        .map_err(ApiError::from)?;
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "ticket": t,
            "url": format!("/v1/device({id})/tunnel?ticket={t}"),
            "expires_in": crate::tunnel::TICKET_TTL.as_secs(),
        })),
    )
        .into_response())
}
