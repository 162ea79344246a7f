//! The web dashboard: server-rendered HTML pages under `/`, served by the
//! same binary on the same port as the API.
//!
//! - Templates are minijinja, embedded in the binary, auto-escaped.
//! - htmx (vendored, `static/htmx.min.js`) and a small hand-written
//!   `static/logs.js` make parts live; every page works without them.
//! - No inline script or style: every page carries a strict
//!   Content-Security-Policy ([`CSP`]).
//! - A browser logs in with a username and password ([`session`]); the
//!   session acts as the user ([`session::Session::actor`]) and every read
//!   and write goes through the API's own permission rules
//!   ([`crate::perms`], via [`crate::resources`]), never a copy of them.

pub mod audit;
mod pages;
pub mod session;
mod terminal;

use std::sync::LazyLock;

use axum::extract::{FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use minijinja::Environment;

use crate::error::ApiError;
use crate::AppState;

use session::Session;

/// The Content-Security-Policy of every dashboard response: scripts, styles
/// and connections only from this origin, no inline script or style, no
/// eval, no framing, forms post only here.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

/// The vendored and hand-written static files: (name, content type, bytes).
/// htmx's version and sha256 are recorded in docs/dashboard.md.
const STATIC: &[(&str, &str, &[u8])] = &[
    (
        "htmx.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("static/htmx.min.js"),
    ),
    (
        "logs.js",
        "text/javascript; charset=utf-8",
        include_bytes!("static/logs.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("static/app.css"),
    ),
    // xterm.js and its style sheet (npm @xterm/xterm; version, sha256 and
    // licence in docs/dashboard.md and static/xterm.LICENSE), and the
    // terminal page's own script.
    (
        "xterm.js",
        "text/javascript; charset=utf-8",
        include_bytes!("static/xterm.js"),
    ),
    (
        "xterm.css",
        "text/css; charset=utf-8",
        include_bytes!("static/xterm.css"),
    ),
    (
        "terminal.js",
        "text/javascript; charset=utf-8",
        include_bytes!("static/terminal.js"),
    ),
];

/// The templates, embedded.
const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("error.html", include_str!("templates/error.html")),
    ("fleets.html", include_str!("templates/fleets.html")),
    ("fleet.html", include_str!("templates/fleet.html")),
    (
        "devices_table.html",
        include_str!("templates/devices_table.html"),
    ),
    ("device.html", include_str!("templates/device.html")),
    ("releases.html", include_str!("templates/releases.html")),
    ("release.html", include_str!("templates/release.html")),
    (
        "os_releases.html",
        include_str!("templates/os_releases.html"),
    ),
    ("audit.html", include_str!("templates/audit.html")),
    ("settings.html", include_str!("templates/settings.html")),
    ("key_shown.html", include_str!("templates/key_shown.html")),
    ("terminal.html", include_str!("templates/terminal.html")),
];

static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    for (name, text) in TEMPLATES {
        if let Err(e) = env.add_template(name, text) {
            tracing::error!("dashboard template {name}: {e:#}");
        }
    }
    env
});

/// The dashboard's routes for the OpenAPI document: (path, method,
/// summary). All answer HTML (or a redirect to `/login`) and take the
/// session cookie; POSTs take a form with the CSRF token.
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("/", "get", "Dashboard: redirects to /fleets"),
    ("/login", "get", "Dashboard: the login form"),
    (
        "/login",
        "post",
        "Dashboard: log in (username, password, csrf)",
    ),
    ("/logout", "post", "Dashboard: log out"),
    ("/fleets", "get", "Dashboard: the user's fleets"),
    ("/fleets", "post", "Dashboard: create a fleet"),
    (
        "/fleets/{id}",
        "get",
        "Dashboard: a fleet's devices (filters, sort, pages), target, provisioning, rollouts",
    ),
    (
        "/fleets/{id}/provisioning-key",
        "post",
        "Dashboard: a new provisioning key, shown once",
    ),
    (
        "/fleets/{id}/image",
        "get",
        "Dashboard: the fleet's configured image (as /v1/os/download)",
    ),
    (
        "/fleets/{id}/target",
        "post",
        "Dashboard: set the fleet's target release and OS",
    ),
    (
        "/fleets/{id}/views",
        "post",
        "Dashboard: save the device table's filters and sort as a named view (or delete one)",
    ),
    (
        "/fleets/{id}/releases",
        "get",
        "Dashboard: the fleet's releases",
    ),
    (
        "/fleets/{fleet}/rollouts/{id}/{action}",
        "post",
        "Dashboard: a rollout action (pause, resume, halt, ...)",
    ),
    (
        "/devices/{id}",
        "get",
        "Dashboard: a device's state, services, env vars, tags, pin and logs",
    ),
    (
        "/devices/{id}/pin",
        "post",
        "Dashboard: pin a release (or none)",
    ),
    (
        "/devices/{id}/actions",
        "post",
        "Dashboard: a device action (reboot, restart all services or one), as POST /v1/device({id})/actions",
    ),
    (
        "/devices/{id}/env",
        "post",
        "Dashboard: set or remove a device env var",
    ),
    (
        "/devices/{id}/tags",
        "post",
        "Dashboard: set or remove a device tag",
    ),
    (
        "/devices/{id}/logs/stream",
        "get",
        "Dashboard: the device's live logs (server-sent events)",
    ),
    (
        "/devices/{id}/logs.txt",
        "get",
        "Dashboard: the device's stored logs as a text file",
    ),
    (
        "/releases/{id}",
        "get",
        "Dashboard: a release's composition, services, images and digests",
    ),
    ("/os-releases", "get", "Dashboard: OS releases"),
    (
        "/os-releases",
        "post",
        "Dashboard: upload an OS release (multipart: csrf, device_type, version, bundle, image)",
    ),
    ("/audit", "get", "Dashboard: the audit log"),
    ("/settings", "get", "Dashboard: API keys"),
    (
        "/settings/keys",
        "post",
        "Dashboard: create an API key, shown once",
    ),
    (
        "/settings/keys/{id}/revoke",
        "post",
        "Dashboard: revoke an API key",
    ),
    (
        "/devices/{id}/terminal",
        "get",
        "Dashboard: a terminal on the device (xterm.js over the tunnel)",
    ),
    (
        "/devices/{id}/terminal/ticket",
        "post",
        "Dashboard: a single-use ticket (30 s) for the device's tunnel WebSocket (JSON {ticket, url, expires_in}; X-CSRF-Token)",
    ),
    (
        "/static/{file}",
        "get",
        "Dashboard: static files (htmx, logs.js, app.css)",
    ),
];

/// The dashboard's routes (merged into [`crate::router`]).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::home))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/fleets", get(pages::fleets).post(pages::create_fleet))
        .route("/fleets/{id}", get(pages::fleet))
        .route(
            "/fleets/{id}/provisioning-key",
            post(pages::new_provisioning_key),
        )
        .route("/fleets/{id}/image", get(pages::fleet_image))
        .route("/fleets/{id}/target", post(pages::fleet_target))
        .route("/fleets/{id}/bulk", post(pages::fleet_bulk))
        .route("/fleets/{id}/views", post(pages::fleet_views))
        .route("/fleets/{id}/{kind}", post(pages::fleet_var))
        .route("/fleets/{id}/releases", get(pages::releases))
        .route(
            "/fleets/{fleet}/rollouts/{id}/{action}",
            post(pages::rollout_action),
        )
        .route("/devices/{id}", get(pages::device))
        .route("/devices/{id}/pin", post(pages::device_pin))
        .route("/devices/{id}/actions", post(pages::device_action))
        .route("/devices/{id}/env", post(pages::device_env))
        .route("/devices/{id}/tags", post(pages::device_tag))
        .route("/devices/{id}/logs/stream", get(pages::device_log_stream))
        .route("/devices/{id}/logs.txt", get(pages::device_log_download))
        .route("/releases/{id}", get(pages::release))
        .route(
            "/os-releases",
            get(pages::os_releases)
                .post(pages::upload_os_release)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/audit", get(pages::audit_page))
        .route("/settings", get(pages::settings))
        .route("/settings/keys", post(pages::create_key))
        .route("/settings/keys/{id}/revoke", post(pages::revoke_key))
        .route("/static/{file}", get(static_file))
        .merge(terminal::router())
        .layer(axum::middleware::from_fn(security_headers))
}

/// Middleware: the CSP and the other browser hardening headers on every
/// dashboard response; pages (not static files) are never cached.
async fn security_headers(req: Request, next: Next) -> Response {
    let is_static = req.uri().path().starts_with("/static/");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !is_static && !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

async fn static_file(Path(file): Path<String>) -> Response {
    match STATIC.iter().find(|(n, _, _)| *n == file) {
        Some((_, ctype, bytes)) => (
            [
                (header::CONTENT_TYPE, *ctype),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            *bytes,
        )
            .into_response(),
        None => error_page(StatusCode::NOT_FOUND, &format!("no static file {file:?}")),
    }
}

/// Renders template `name` with `ctx`; a template error is a 500 page.
pub fn render(name: &str, ctx: minijinja::Value) -> Response {
    render_status(StatusCode::OK, name, ctx)
}

fn render_status(status: StatusCode, name: &str, ctx: minijinja::Value) -> Response {
    let out = ENV.get_template(name).and_then(|t| t.render(ctx));
    match out {
        Ok(html) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response(),
        Err(e) => {
            tracing::error!("rendering {name}: {e:#}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                "<!doctype html><title>error</title><p>The page could not be rendered.</p>",
            )
                .into_response()
        }
    }
}

/// An HTML error page.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    render_status(
        status,
        "error.html",
        minijinja::context! {
            status => status.as_u16(),
            reason => status.canonical_reason().unwrap_or("Error"),
            message => message,
            read_at => crate::db::now(),
        },
    )
}

/// A dashboard handler's error: answered as an HTML page with the API
/// error's status and message.
#[derive(Debug)]
pub struct WebError(pub ApiError);

impl<E: Into<ApiError>> From<E> for WebError {
    fn from(e: E) -> Self {
        WebError(e.into())
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        if self.0.status.is_server_error() {
            tracing::error!("dashboard: {}", self.0.message);
        }
        error_page(self.0.status, &self.0.message)
    }
}

pub type WebResult = Result<Response, WebError>;

/// 303 to `to`.
pub fn see_other(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// A path on this site that is safe to redirect to after login.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.starts_with("/login")
                && n.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            n.to_owned()
        }
        _ => "/fleets".to_owned(),
    }
}

/// Percent-encodes a query value.
pub fn encode_query(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The logged-in user of a page request. Without a live session the
/// request is sent to the login page (htmx requests get `HX-Redirect`).
pub struct Auth(pub Session);

impl FromRequestParts<AppState> for Auth {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Response> {
        match session::lookup(&app.db, &parts.headers).await {
            Ok(Some(s)) => Ok(Auth(s)),
            Ok(None) => {
                let next = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                let to = format!("/login?next={}", encode_query(&safe_next(Some(next))));
                let mut r = see_other(&to);
                if parts.headers.contains_key("hx-request") {
                    if let Ok(v) = HeaderValue::from_str(&to) {
                        r.headers_mut().insert("hx-redirect", v);
                    }
                }
                Err(r)
            }
            Err(e) => Err(WebError::from(e).into_response()),
        }
    }
}

/// 403 unless the form field `csrf` or the `X-CSRF-Token` header carries
/// the session's token.
pub fn check_csrf(
    s: &Session,
    headers: &HeaderMap,
    form: &std::collections::HashMap<String, String>,
) -> Result<(), WebError> {
    let token = form
        .get("csrf")
        .map(String::as_str)
        .or_else(|| headers.get("x-csrf-token").and_then(|v| v.to_str().ok()));
    if s.csrf_ok(token) {
        Ok(())
    } else {
        Err(WebError(ApiError::forbidden(
            "missing or wrong CSRF token: reload the page and try again",
        )))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        for (name, _) in TEMPLATES {
            ENV.get_template(name)
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
    }

    #[test]
    fn after_login_only_local_paths_are_followed() {
        assert_eq!(safe_next(Some("/fleets/3?page=2")), "/fleets/3?page=2");
        assert_eq!(safe_next(Some("//evil.example/")), "/fleets");
        assert_eq!(safe_next(Some("https://evil.example/")), "/fleets");
        assert_eq!(safe_next(Some("/\\evil")), "/fleets");
        assert_eq!(safe_next(Some("/login")), "/fleets");
        assert_eq!(safe_next(None), "/fleets");
    }
}
