//! The dashboard's page handlers. Reads are scoped by
//! [`perms::read_scope`] and writes go through [`resources`] (which asks
//! [`perms`]), with the session's [`Actor`], so a page shows and changes
//! exactly what the same user's API key would.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use minijinja::context;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::Row;

use super::audit::{self, Entry};
use super::session::{self, Session};
use super::{check_csrf, render, see_other, Auth, WebError, WebResult};
use crate::auth::Actor;
use crate::error::ApiError;
use crate::resources::{self, bind_all, dyn_query, Param};
use crate::{actions, db, logs, os, perms, ratelimit, schema, AppState};

type FormMap = HashMap<String, String>;

/// Devices per page of the fleet page.
pub const PAGE_SIZE: i64 = 50;

fn res(name: &str) -> Result<&'static schema::Resource, WebError> {
    schema::resource(name)
        .ok_or_else(|| WebError(ApiError::internal(format!("no resource {name}"))))
}

/// What every page's layout needs.
fn base(s: &Session) -> minijinja::Value {
    context! {
        user => s.username.clone(),
        admin => s.admin,
        csrf => s.csrf.clone(),
        read_at => db::now(),
    }
}

/// Any serde value as a template value.
fn sv<T: Serialize>(x: &T) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(x))
}

fn field<'a>(form: &'a FormMap, name: &str) -> &'a str {
    form.get(name).map(|s| s.trim()).unwrap_or_default()
}

async fn log_change(app: &AppState, s: &Session, action: &str, target: &str, detail: Option<&str>) {
    audit::record(
        &app.db,
        &s.actor(),
        Entry {
            via: "web",
            action,
            target,
            detail,
        },
    )
    .await;
}

// ---------------------------------------------------------------- login

pub async fn home() -> Response {
    see_other("/fleets")
}

#[derive(serde::Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

fn login_page(status: StatusCode, next: &str, error: Option<&str>, secure: bool) -> Response {
    let token = session::random_token();
    let mut r = super::render_status(
        status,
        "login.html",
        context! {
            csrf => token.clone(),
            next => next,
            error => error,
            read_at => db::now(),
        },
    );
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(
        session::LOGIN_CSRF_COOKIE,
        &token,
        Duration::from_secs(3600),
        secure,
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

pub async fn login_form(State(app): State<AppState>, Query(q): Query<NextQuery>) -> Response {
    login_page(
        StatusCode::OK,
        &super::safe_next(q.next.as_deref()),
        None,
        app.config.tls.is_some(),
    )
}

/// `POST /login`: wrong passwords are refused with 401, counted per client
/// address in the API's auth-failure window ([`ratelimit::Limits`]) and
/// slowed by a second; over the limit the address gets 429 for the rest of
/// the minute, right password or not.
pub async fn login(State(app): State<AppState>, req: Request) -> WebResult {
    let secure = app.config.tls.is_some();
    let ip = ratelimit::client_ip(&req);
    let headers = req.headers().clone();
    let Form(form): Form<FormMap> = Form::from_request(req, &app)
        .await
        .map_err(|e| WebError(ApiError::bad_request(e.body_text())))?;
    let next = super::safe_next(form.get("next").map(String::as_str));
    let cookie_token = session::cookie(&headers, session::LOGIN_CSRF_COOKIE);
    let form_token = form.get("csrf").map(String::as_str);
    if !matches!((cookie_token, form_token), (Some(c), Some(f)) if crate::auth::constant_time_eq(c.as_bytes(), f.as_bytes()))
    {
        return Ok(login_page(
            StatusCode::FORBIDDEN,
            &next,
            Some("The login form expired (missing or wrong CSRF token): please try again."),
            secure,
        ));
    }
    let limit = app.config.auth_failures_per_min;
    let now = Instant::now();
    if let Some(ip) = ip {
        if let Some(left) = app.limits.auth_failures.blocked(&ip, limit, now) {
            let mut r = login_page(
                StatusCode::TOO_MANY_REQUESTS,
                &next,
                Some(&format!(
                    "Too many failed logins from this address: try again in {} s.",
                    left.as_secs().max(1)
                )),
                secure,
            );
            if let Ok(v) = HeaderValue::from_str(&left.as_secs().max(1).to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return Ok(r);
        }
    }
    let username = field(&form, "username");
    let password = form.get("password").map(String::as_str).unwrap_or_default();
    match session::check_login(&app.db, username, password).await? {
        Some(user) => {
            let token = session::create(&app.db, user).await?;
            audit::record_for(
                &app.db,
                user,
                user,
                Entry {
                    via: "web",
                    action: "login",
                    target: &format!("user({user})"),
                    detail: ip.map(|i| i.to_string()).as_deref(),
                },
            )
            .await;
            let mut r = see_other(&next);
            let h = r.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&session::set_cookie(
                session::COOKIE,
                &token,
                session::SESSION_TTL,
                secure,
            )) {
                h.append(header::SET_COOKIE, v);
            }
            if let Ok(v) = HeaderValue::from_str(&session::set_cookie(
                session::LOGIN_CSRF_COOKIE,
                "",
                Duration::ZERO,
                secure,
            )) {
                h.append(header::SET_COOKIE, v);
            }
            Ok(r)
        }
        None => {
            if let Some(ip) = ip {
                if app.limits.auth_failures.hit(&ip, limit, now).is_some() {
                    tracing::warn!(%ip, "too many failed dashboard logins: refusing for a minute");
                }
            }
            tracing::info!(username, ?ip, "dashboard login refused");
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(login_page(
                StatusCode::UNAUTHORIZED,
                &next,
                Some("Wrong username or password."),
                secure,
            ))
        }
    }
}

pub async fn logout(
    State(app): State<AppState>,
    Auth(s): Auth,
    headers: HeaderMap,
    Form(form): Form<FormMap>,
) -> WebResult {
    check_csrf(&s, &headers, &form)?;
    session::destroy(&app.db, &headers).await?;
    let mut r = see_other("/login");
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(
        session::COOKIE,
        "",
        Duration::ZERO,
        app.config.tls.is_some(),
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(r)
}

// ---------------------------------------------------------------- fleets

#[derive(Serialize)]
struct FleetRow {
    id: i64,
    name: String,
    device_type: String,
    target_release: Option<i64>,
    target_os_version: Option<String>,
    devices: i64,
    online: i64,
}

pub async fn fleets(State(app): State<AppState>, Auth(s): Auth) -> WebResult {
    let actor = s.actor();
    let scope = perms::read_scope(&actor, "fleet", "f");
    let rows = dyn_query(format!(
        "SELECT f.id, f.name, f.device_type, f.target_release, f.target_os_version, \
         (SELECT COUNT(*) FROM device d WHERE d.fleet = f.id), \
         (SELECT COUNT(*) FROM device d WHERE d.fleet = f.id AND d.is_online) \
         FROM fleet f WHERE {} ORDER BY f.name, f.id",
        scope.to_sql()
    ))
    .fetch_all(&app.db.pool)
    .await
    .map_err(ApiError::from)?;
    let mut list = Vec::new();
    for r in rows {
        list.push(FleetRow {
            id: r.try_get(0).map_err(ApiError::from)?,
            name: r.try_get(1).map_err(ApiError::from)?,
            device_type: r.try_get(2).map_err(ApiError::from)?,
            target_release: r.try_get(3).map_err(ApiError::from)?,
            target_os_version: r.try_get(4).map_err(ApiError::from)?,
            devices: r.try_get(5).map_err(ApiError::from)?,
            online: r.try_get(6).map_err(ApiError::from)?,
        });
    }
    Ok(render(
        "fleets.html",
        context! { ..base(&s), ..context! { fleets => sv(&list) } },
    ))
}

pub async fn create_fleet(
    State(app): State<AppState>,
    Auth(s): Auth,
    headers: HeaderMap,
    Form(form): Form<FormMap>,
) -> WebResult {
    check_csrf(&s, &headers, &form)?;
    let body = json!({
        "name": field(&form, "name"),
        "device_type": field(&form, "device_type"),
    });
    let (_, v) = resources::create(&app, &s.actor(), res("fleet")?, &body).await?;
    let id = v.get("id").and_then(Value::as_i64).unwrap_or_default();
    log_change(
        &app,
        &s,
        "create",
        &format!("fleet({id})"),
        Some(field(&form, "name")),
    )
    .await;
    Ok(see_other(&format!("/fleets/{id}")))
}

pub async fn new_provisioning_key(
    State(app): State<AppState>,
    Auth(s): Auth,
    Path(id): Path<i64>,
    headers: HeaderMap,
    Form(form): Form<FormMap>,
) -> WebResult {
    check_csrf(&s, &headers, &form)?;
    resources::read_one(&app, &s.actor(), res("fleet")?, id).await?;
    let body = json!({"fleet": id, "name": "dashboard"});
    let (_, v) = resources::create(&app, &s.actor(), res("provisioning_key")?, &body).await?;
    let key = v.get("key").and_then(Value::as_str).unwrap_or_default();
    let key_id = v.get("id").and_then(Value::as_i64).unwrap_or_default();
    log_change(
        &app,
        &s,
        "create",
        &format!("provisioning_key({key_id})"),
        Some(&format!("fleet({id})")),
    )
    .await;
    Ok(render(
        "key_shown.html",
        context! { ..base(&s), ..context! {
            what => "provisioning key",
            key => key,
            back => format!("/fleets/{id}"),
        }},
    ))
}

#[derive(serde::Deserialize)]
pub struct ImageQuery {
    version: Option<String>,
    compression: Option<String>,
}

/// The fleet's configured image: the API's `/v1/os/download`, as the user.
pub async fn fleet_image(
    State(app): State<AppState>,
    Auth(s): Auth,
    Path(id): Path<i64>,
    Query(q): Query<ImageQuery>,
) -> WebResult {
    let mut query = format!("fleet={id}");
    if let Some(v) = q.version.as_deref().filter(|v| !v.is_empty()) {
        query.push_str(&format!("&version={}", super::encode_query(v)));
    }
    if let Some(c) = q.compression.as_deref().filter(|c| !c.is_empty()) {
        query.push_str(&format!("&compression={}", super::encode_query(c)));
    }
    let actor = s.actor();
    let resp = os::download(&app, &actor, Some(&query)).await?;
    log_change(&app, &s, "download image", &format!("fleet({id})"), None).await;
    Ok(resp)
}

/// Sets the fleet's target release and/or target OS version.
pub async fn fleet_target(
    State(app): State<AppState>,
    Auth(s): Auth,
    Path(id): Path<i64>,
    headers: HeaderMap,
    Form(form): Form<FormMap>,
) -> WebResult {
    check_csrf(&s, &headers, &form)?;
    let mut body = serde_json::Map::new();
    if let Some(r) = form.get("target_release") {
        let v = if r.trim().is_empty() {
            Value::Null
        } else {
            Value::from(parse_id("target_release", r)?)
        };
        body.insert("target_release".into(), v);
    }
    if let Some(o) = form.get("target_os_version") {
        let v = if o.trim().is_empty() {
            Value::Null
        } else {
            Value::from(o.trim())
        };
        body.insert("target_os_version".into(), v);
    }
    let body = Value::Object(body);
    resources::patch(&app, &s.actor(), res("fleet")?, id, &body).await?;
    log_change(
        &app,
        &s,
        "update",
        &format!("fleet({id})"),
        Some(&body.to_string()),
    )
    .await;
    Ok(see_other(&format!("/fleets/{id}")))
}

fn parse_id(what: &str, v: &str) -> Result<i64, WebError> {
    v.trim().parse::<i64>().map_err(|_| {
        WebError(ApiError::bad_request_field(
            what,
            format!("{what} must be an id"),
        ))
    })
}

/// The fleet page's filters, sort and page (its query string).
#[derive(Debug, Default, Clone, serde::Deserialize, Serialize)]
pub struct DeviceFilter {
    /// `key` or `key=value`.
    #[serde(default)]
    pub tag: String,
    #[serde(default)]
    pub status: String,
    /// online, offline or empty.
    #[serde(default)]
    pub online: String,
    /// A release id: devices whose target (pin, rollout, fleet) is it.
    #[serde(default)]
    pub release: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub sort: String,
    #[serde(default)]
    pub dir: String,
    #[serde(default)]
    pub page: Option<i64>,
}

impl DeviceFilter {
    /// The filters and sort as a query string (no page), as a saved view
    /// keeps them.
    fn query(&self) -> String {
        let href = self.href(0, 1);
        let q = href.split_once('?').map(|(_, q)| q).unwrap_or_default();
        q.strip_suffix("page=1")
            .unwrap_or(q)
            .trim_end_matches('&')
            .to_owned()
    }

    /// The query string for page `page` (same filters and sort).
    fn href(&self, fleet: i64, page: i64) -> String {
        let mut q = vec![];
        for (k, v) in [
            ("tag", &self.tag),
            ("status", &self.status),
            ("online", &self.online),
            ("release", &self.release),
            ("os", &self.os),
            ("sort", &self.sort),
            ("dir", &self.dir),
        ] {
            if !v.is_empty() {
                q.push(format!("{k}={}", super::encode_query(v)));
            }
        }
        q.push(format!("page={page}"));
        format!("/fleets/{fleet}?{}", q.join("&"))
    }
}

#[derive(Serialize)]
pub struct DeviceRow {
    pub id: i64,
    pub uuid: String,
    pub name: String,
    pub online: bool,
    pub status: Option<String>,
    pub last_seen: Option<String>,
    pub os_version: Option<String>,
    pub target_release: Option<String>,
    pub running_release: Option<String>,
    pub os_update_state: Option<String>,
    pub os_update_progress: Option<i64>,
    /// The lowest download progress of a service still downloading.
    pub download_progress: Option<i64>,
}

/// One page of a fleet's devices and the number that match, filtered,
/// sorted and paged in the database.
pub async fn fleet_devices(
    app: &AppState,
    actor: &Actor,
    fleet: i64,
    f: &DeviceFilter,
) -> Result<(Vec<DeviceRow>, i64), ApiError> {
    // The devices of fleet $1, if the caller may read the fleet: its devices
    // are readable exactly when it is (perms.rs: a device's owner is its
    // fleet's). Asked once of the fleet (an uncorrelated EXISTS), not of
    // each of 10k devices as the device scope's correlated subquery would.
    let scope = perms::read_scope(actor, "fleet", "sf");
    let mut cond = vec![
        "d.fleet = $1".to_owned(),
        format!(
            "EXISTS (SELECT 1 FROM fleet sf WHERE sf.id = $1 AND {})",
            scope.to_sql()
        ),
    ];
    let mut params = vec![Param::Int(Some(fleet))];
    let next = |p: Param, params: &mut Vec<Param>| {
        params.push(p);
        format!("${}", params.len())
    };
    if !f.status.is_empty() {
        let m = next(Param::Text(Some(f.status.clone())), &mut params);
        cond.push(format!("d.status = {m}"));
    }
    match f.online.as_str() {
        "online" => cond.push("d.is_online".into()),
        "offline" => cond.push("NOT d.is_online".into()),
        _ => {}
    }
    if !f.os.is_empty() {
        let m = next(Param::Text(Some(f.os.clone())), &mut params);
        cond.push(format!("d.os_version = {m}"));
    }
    if !f.release.is_empty() {
        let id =
            f.release.trim().parse::<i64>().map_err(|_| {
                ApiError::bad_request_field("release", "release must be a release id")
            })?;
        let m = next(Param::Int(Some(id)), &mut params);
        cond.push(format!(
            "COALESCE(d.pinned_release, d.rollout_release, \
             (SELECT tf.target_release FROM fleet tf WHERE tf.id = $1)) = {m}"
        ));
    }
    if !f.tag.is_empty() {
        let (k, v) = match f.tag.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (f.tag.trim(), None),
        };
        let mk = next(Param::Text(Some(k.to_owned())), &mut params);
        let mut e = format!(
            "EXISTS (SELECT 1 FROM device_tag dt WHERE dt.device = d.id AND dt.tag_key = {mk}"
        );
        if let Some(v) = v {
            let mv = next(Param::Text(Some(v.to_owned())), &mut params);
            e.push_str(&format!(" AND dt.value = {mv}"));
        }
        e.push(')');
        cond.push(e);
    }
    let order = match f.sort.as_str() {
        "status" => "d.status",
        "last_seen" => "d.last_seen",
        "os" => "d.os_version",
        "online" => "CASE WHEN d.is_online THEN 1 ELSE 0 END",
        _ => "d.name",
    };
    let dir = if f.dir == "desc" { "DESC" } else { "ASC" };
    let wher = cond.join(" AND ");
    let total: i64 = bind_all(
        dyn_query(format!("SELECT COUNT(*) FROM device d WHERE {wher}")),
        &params,
    )
    .fetch_one(&app.db.pool)
    .await?
    .try_get(0)?;
    let page = f.page.unwrap_or(1).max(1);
    let offset = (page - 1).saturating_mul(PAGE_SIZE);
    if offset >= total {
        return Ok((Vec::new(), total));
    }
    // A page past the middle is read from the other end (the order
    // reversed, then the rows turned back): the last page is then the
    // first 50 of an index scan rather than 10,000 rows sorted or skipped.
    // NULLs sort first one way and last the other in both databases, so
    // the reversed order is exactly the other end of the same order.
    let from_end = offset > total / 2;
    let (qdir, qoffset, limit) = if from_end {
        let limit = PAGE_SIZE.min(total - offset);
        let rdir = if dir == "ASC" { "DESC" } else { "ASC" };
        (rdir, total - offset - limit, limit)
    } else {
        (dir, offset, PAGE_SIZE)
    };
    // Only plain columns per row: the target release's id (pin, rollout,
    // else the fleet's, read once), its uuid looked up for the page's rows
    // afterwards. A subquery in the select list would run for every row
    // OFFSET skips, too (PostgreSQL projects before the Limit).
    let sql = format!(
        "SELECT d.id, d.uuid, d.name, CASE WHEN d.is_online THEN 1 ELSE 0 END, d.status, \
         d.last_seen, d.os_version, \
         COALESCE(d.pinned_release, d.rollout_release, \
           (SELECT tf.target_release FROM fleet tf WHERE tf.id = $1)), \
         d.os_update_state, d.os_update_progress, d.apps \
         FROM device d WHERE {wher} ORDER BY {order} {qdir}, d.id {qdir} \
         LIMIT {limit} OFFSET {qoffset}"
    );
    let mut rows = bind_all(dyn_query(sql), &params)
        .fetch_all(&app.db.pool)
        .await?;
    if from_end {
        rows.reverse();
    }
    let mut targets: Vec<i64> = rows
        .iter()
        .filter_map(|r| r.try_get::<Option<i64>, _>(7).ok().flatten())
        .collect();
    targets.sort_unstable();
    targets.dedup();
    let uuids = release_uuids(app, &targets).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let apps: Option<String> = r.try_get(10)?;
        let (running, progress) = summarize_apps(apps.as_deref());
        let target: Option<i64> = r.try_get(7)?;
        out.push(DeviceRow {
            id: r.try_get(0)?,
            uuid: r.try_get(1)?,
            name: r.try_get(2)?,
            online: r.try_get::<i64, _>(3)? != 0,
            status: r.try_get(4)?,
            last_seen: r.try_get(5)?,
            os_version: r.try_get(6)?,
            target_release: target.and_then(|t| uuids.get(&t).cloned()),
            running_release: running,
            os_update_state: r.try_get(8)?,
            os_update_progress: r.try_get(9)?,
            download_progress: progress,
        });
    }
    Ok((out, total))
}

/// The uuids of releases `ids` (a page's targets: a few distinct ids).
async fn release_uuids(app: &AppState, ids: &[i64]) -> Result<HashMap<i64, String>, ApiError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    let rows = dyn_query(format!(
        "SELECT id, uuid FROM \"release\" WHERE id IN ({})",
        list.join(", ")
    ))
    .fetch_all(&app.db.pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

type Apps = BTreeMap<String, resin_api_types::AppReport>;

/// The release the device's apps run (when they agree) and the lowest
/// download progress of a downloading service.
fn summarize_apps(apps: Option<&str>) -> (Option<String>, Option<i64>) {
    let Some(apps) = apps.and_then(|a| serde_json::from_str::<Apps>(a).ok()) else {
        return (None, None);
    };
    let running = apps.values().find_map(|a| a.release_uuid.clone());
    let progress = apps
        .values()
        .flat_map(|a| a.services.values())
        .filter_map(|s| s.download_progress)
        .map(i64::from)
        .min();
    (running, progress)
}

async fn distinct(app: &AppState, sql: &str, fleet: i64) -> Result<Vec<String>, ApiError> {
    let rows = dyn_query(sql.to_owned())
        .bind(fleet)
        .fetch_all(&app.db.pool)
        .await?;
    rows.iter()
        .map(|r| r.try_get::<String, _>(0).map_err(ApiError::from))
        .collect()
}

pub async fn fleet(
    State(app): State<AppState>,
    Auth(s): Auth,
    Path(id): Path<i64>,
    Query(f): Query<DeviceFilter>,
    headers: HeaderMap,
) -> WebResult {
    let actor = s.actor();
    let fleet = resources::read_one(&app, &actor, res("fleet")?, id).await?;
    let (devices, total) = fleet_devices(&app, &actor, id, &f).await?;
    let page = f.page.unwrap_or(1).max(1);
    let pages = ((total + PAGE_SIZE - 1) / PAGE_SIZE).max(1);
    let table = context! {
        fleet_id => id,
        devices => sv(&devices),
        total => total,
        page => page,
        pages => pages,
        prev => (page > 1).then(|| f.href(id, page - 1)),
        next => (page < pages).then(|| f.href(id, page + 1)),
        self_href => f.href(id, page),
        filter => sv(&f),
        read_at => db::now(),
    };
    if headers.contains_key("hx-request") {
        return Ok(render("devices_table.html", table));
    }
    let statuses = distinct(
        &app,
        "SELECT DISTINCT status FROM device WHERE fleet = $1 AND status IS NOT NULL ORDER BY status",
        id,
    )
    .await?;
    let os_versions = distinct(
        &app,
        "SELECT DISTINCT os_version FROM device WHERE fleet = $1 AND os_version IS NOT NULL \
         ORDER BY os_version",
        id,
    )
    .await?;
    let releases = fleet_releases(&app, &actor, id).await?;
    let env_vars = children(&app, &actor, "fleet_env_var", "fleet", id).await?;
    let config_vars = children(&app, &actor, "fleet_config_var", "fleet", id).await?;
    let os_releases = resources::read_all(&app, &actor, res("os_release")?).await?;
    let device_type = fleet
        .get("device_type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let os_releases: Vec<Value> = os_releases
        .into_iter()
        .filter(|o| o.get("device_type").and_then(Value::as_str) == Some(device_type))
        .collect();
    // Where its devices may move: the user's other fleets of the same type.
    let move_to: Vec<Value> = resources::read_all(&app, &actor, res("fleet")?)
        .await?
        .into_iter()
        .filter(|f| {
            f.get("device_type").and_then(Value::as_str) == Some(device_type)
                && f.get("id").and_then(Value::as_i64) != Some(id)
        })
        .collect();
    let rollouts = dyn_query(format!(
        "SELECT t.id FROM rollout t WHERE t.fleet = $1 AND {} ORDER BY t.id DESC LIMIT 10",
        perms::read_scope(&actor, "rollout", "t").to_sql()
    ))
    .bind(id)
    .fetch_all(&app.db.pool)
    .await
    .map_err(ApiError::from)?;
    let mut rollout_list = Vec::new();
    for r in rollouts {
        let rid: i64 = r.try_get(0).map_err(ApiError::from)?;
        rollout_list.push(crate::rollout::progress(&app.db, &actor, rid).await?);
    }
    let views = saved_views(&app, &s, id).await?;
    Ok(render(
        "fleet.html",
        context! { ..base(&s), ..table, ..context! {
            views => sv(&views),
            view_query => f.query(),
            fleet => sv(&fleet),
            statuses => sv(&statuses),
            os_versions => sv(&os_versions),
            releases => sv(&releases),
            os_releases => sv(&os_releases),
            move_to => sv(&move_to),
            rollouts => sv(&rollout_list),
            env_vars => sv(&env_vars),
            config_vars => sv(&config_vars),
        }},
    ))
}

#[derive(Serialize)]
struct SavedView {
    id: i64,
    name: String,
    href: String,
}

/// The most saved views a user keeps per fleet.
pub const VIEWS_MAX: i64 = 50;

/// The session user's saved views of fleet `fleet` (the caller has checked
/// that the user may read the fleet).
async fn saved_views(app: &AppState, s: &Session, fleet: i64) -> Result<Vec<SavedView>, ApiError> {
    let rows = sqlx::query(
        "SELECT id, name, query FROM saved_view WHERE \"user\" = $1 AND fleet = $2 ORDER BY name, id",
    )
    .bind(s.user)
    .bind(fleet)
    .fetch_all(&app.db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            let query: String = r.try_get(2)?;
            Ok(SavedView {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
                href: if query.is_empty() {
                    format!("/fleets/{fleet}")
                } else {
                    format!("/fleets/{fleet}?{query}")
                },
            })
        })
        .collect()
}

/// `POST /fleets/{id}/views`: saves the fleet page's current filters and
/// sort (`query`, as the page renders it) under `name` (the same name
/// again replaces it); with `delete` = a view id, removes that view.
/// Views are the session user's own; the fleet must be one the user reads.
pub async fn fleet_views(
    State(app): State<AppState>,
    Auth(s): Auth,
    Path(id): Path<i64>,
    headers: HeaderMap,
    Form(form): Form<FormMap>,
) -> WebResult {
    check_csrf(&s, &headers, &form)?;
    resources::read_one(&app, &s.actor(), res("fleet")?, id).await?;
    if let Some(v) = form.get("delete") {
        let vid = parse_id("delete", v)?;
        let n =
            sqlx::query("DELETE FROM saved_view WHERE id = $1 AND \"user\" = $2 AND fleet = $3")
                .bind(vid)
                .bind(s.user)
                .bind(id)
                .execute(&app.db.pool)
                .await
                .map_err(ApiError::from)?
                .rows_affected();
        if n == 0 {
            return Err(WebError(ApiError::not_found(format!(
                "saved view {vid} does not exist"
            ))));
        }
        return Ok(see_other(&format!("/fleets/{id}")));
    }
    let name = field(&form, "name");
    if name.is_empty() || name.chars().count() > 100 {
        return Err(WebError(ApiError::bad_request_field(
            "name",
            "name the view (1 to 100 characters)",
        )));
    }
    // Only what the fleet page itself understands is kept, re-encoded.
    let bad_query = |e: String| WebError(ApiError::bad_request_field("query", e));
    let uri: axum::http::Uri = format!("/?{}", field(&form, "query"))
        .parse()
        .map_err(|e| bad_query(format!("{e}")))?;
    let Query(filter) =
        Query::<DeviceFilter>::try_from_uri(&uri).map_err(|e| bad_query(e.body_text()))?;
    let query = filter.query();
    let mut tx = app.db.begin_write().await.map_err(ApiError::from)?;
    let count: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM saved_view WHERE \"user\" = $1 AND fleet = $2")
            .bind(s.user)
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(ApiError::from)?;
    let replaced = sqlx::query(
        "UPDATE saved_view SET query = $1 WHERE \"user\" = $2 AND fleet = $3 AND name = $4",
    )
    .bind(&query)
    .bind(s.user)
    .bind(id)
    .bind(name)
    .execute(&mut *tx)
    .await
    .map_err(ApiError::from)?
    .rows_affected();
    if replaced == 0 {
        if count >= VIEWS_MAX {
            return Err(WebError(ApiError::conflict(format!(
                "at most {VIEWS_MAX} saved views a fleet: remove one first"
            ))));
        }
        sqlx::query(
            "INSERT INTO saved_view (\"user\", fleet, name, query, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(s.user)
        .bind(id)
        .bind(name)
        .bind(&query)
        .bind(db::now())
        .execute(&mut *tx)
        .await
        .map_err(ApiError::from)?;
    }
    tx.commit().await.map_err(ApiError::from)?;
    Ok(see_other(&if query.is_empty() {
        format!("/fleets/{id}")
    } else {
        format!("/fleets/{id}?{query}")
    }))
}

async fn fleet_releases(app: &AppState, actor: &Actor, fleet: i64) -> Result<Vec<Value>, ApiError> {
    let r = schema::resource("release").ok_or_else(|| ApiError::internal("no release resource"))?;
    let rows = dyn_query(format!(
        "SELECT {} FROM \"release\" t WHERE t.fleet = $1 AND {} ORDER BY t.id DESC",
        resources::select_cols(r, "t"),
        perms::read_scope(actor, "release", "t").to_sql()
    ))
    .bind(fleet)
    .fetch_all(&app.db.pool)
    .await?;
    rows.iter()
        .map(|row| resources::row_to_json(r, row))
        .collect()
}

pub async fn releases(
    State(app): State<AppState>,
    Auth(s): Auth,
    Path(id): Path<i64>,
) -> WebResult {
    let actor = s.actor();
    let fleet = resources::read_one(&app, &actor, res("fleet")?, id).await?;
    let releases = fleet_releases(&app, &actor, id).await?;
    Ok(render(
        "releases.html",
        context! { ..base(&s), ..context! { fleet => sv(&fleet), releases => sv(&releases) } },
    ))
}

/// Rows of `resource` under `parent_col = id`, within the caller's read scope.
async fn children(
    app: &AppState,
    actor: &Actor,
    resource: &str,
    parent_col: &str,
    id: i64,
) -> Result<Vec<Value>, ApiError> {
    let r = schema::resource(resource)
        .ok_or_else(|| ApiError::internal(format!("no resource {resource}")))?;
    let rows = dyn_query(format!(
        "SELECT {} FROM {} t WHERE t.\"{parent_col}\" = $1 AND {} ORDER BY t.id",
        resources::select_cols(r, "t"),
        r.table,
        perms::read_scope(actor, resource, "t").to_sql()
    ))
    .bind(id)
    .fetch_all(&app.db.pool)
    .await?;
    rows.iter()
        .map(|row| resources::row_to_json(r, row))
        .collect()
}

pub async fn release(State(app): State<AppState>, Auth(s): Auth, Path(id): Path<i64>) -> WebResult {
    let actor = s.actor();
    let release = resources::read_one(&app, &actor, res("release")?, id).await?;
    let services = children(&app, &actor, "service", "release", id).await?;
    let images = children(&app, &actor, "image", "release", id).await?;
    let composition = release
        .get("composition")
        .map(|c| serde_json::to_string_pretty(c).unwrap_or_default())
        .unwrap_or_default();
    let build_log = release_build_log(&app, &actor, id).await?;
    Ok(render(
        "release.html",
        context! { ..base(&s), ..context! {
            build_log => sv(&build_log),
            release => sv(&release),
            composition => composition,
            services => sv(&services),
            images => sv(&images),
        }},
    ))
}

/// The most of a build log the release page reads (its text, bytes).
pub const BUILD_LOG_MAX: usize = 4 << 20;

/// The log of the build that made release `id`, from the API's own
/// `GET /v1/release(<id>)/logs` ([`crate::build::release_logs`]); `None`
/// when the release was not built by resin's builder.
async fn release_build_log(
    app: &AppState,
    actor: &Actor,
    id: i64,
) -> Result<Option<Vec<resin_api_types::build::BuildLogLine>>, ApiError> {
    let resp = match crate::build::release_logs(app, actor, id).await {
        Ok(r) => r,
        Err(e) if e.status == StatusCode::NOT_FOUND => return Ok(None),
        Err(e) => return Err(e),
    };
    let body = axum::body::to_bytes(resp.into_body(), BUILD_LOG_MAX)
        .await
        .map_err(|e| ApiError::internal(format!("reading release({id})'s build log: {e}")))?;
    Ok(Some(
        String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or(resin_api_types::build::BuildLogLine {
                    service: None,
                    message: l.to_owned(),
                    state: None,
                    release: None,
                    is_error: false,
                })
            })
            .collect(),
    ))
}

// ---------------------------------------------------------------- devices

#[derive(Serialize)]
struct LogRow {
    time: String,
    service: Option<String>,
    message: String,
    stderr: bool,
}

async fn recent_logs(app: &AppState, device: i64, n: i64) -> Result<Vec<LogRow>, ApiError> {
    let rows = sqlx::query(
        "SELECT timestamp, service, message, CASE WHEN is_stderr THEN 1 ELSE 0 END \
         FROM device_log WHERE device = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(device)
    .bind(n)
    .fetch_all(&app.db.pool)
    .await?;
    let mut out = Vec::new();
    for r in rows.iter().rev() {
        let ts: i64 = r.try_get(0)?;
        out.push(LogRow {
            time: time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts) * 1_000_000)
                .map(db::format_ts)
                .unwrap_or_default(),
            service: r.try_get(1)?,
            message: r.try_get(2)?,
            stderr: r.try_get::<i64, _>(3)? != 0,
        });
    }
    Ok(out)
}

/// The device page's query: `os_before` pages the OS-update history.
#[derive(Debug, Default, serde::Deserialize)]
pub struct DeviceQuery {
    #[serde(default)]
    os_before: Option<i64>,
}

/// OS-update events shown at a time on the device page.
pub const OS_EVENTS_SHOWN: i64 = 20;

pub async fn device(
    State(app): State<AppState>,
    Auth(s): Auth,
    Path(id): Path<i64>,
    Query(q): Query<DeviceQuery>,
) -> WebResult {
    let actor = s.actor();
    // Read first: a device the user may not read is a 404 before anything
    // of it (its OS-update history included) is looked at.
    let device = resources::read_one(&app, &actor, res("device")?, id).await?;
    let fleet_id = device
        .get("fleet")
        .and_then(Value::as_i64)
        .unwrap_or_default();
    let fleet = resources::read_one(&app, &actor, res("fleet")?, fleet_id).await?;
    let env = children(&app, &actor, "device_env_var", "device", id).await?;
    let tags = children(&app, &actor, "device_tag", "device", id).await?;
    let releases = fleet_releases(&app, &actor, fleet_id).await?;
    let apps: Option<Apps> = device
        .get("apps")
        .filter(|a| !a.is_null())
        .and_then(|a| serde_json::from_value(a.clone()).ok());
    let logs = recent_logs(&app, id, 200).await?;
    let actions = recent_actions(&app, &actor, id).await?;
    let os_events = crate::os_history::recent(&app.db.pool, id, q.os_before, OS_EVENTS_SHOWN)
        .await
        .map_err(ApiError::from)?;
    let os_older = (os_events.len() as i64 == OS_EVENTS_SHOWN)
        .then(|| {
            os_events
                .last()
                .map(|e| format!("/devices/{id}?os_before={}#os-history", e.id))
        })
        .flatten();
    Ok(render(
        "device.html",
        context! { ..base(&s), ..context! {
            actions => sv(&actions),
            os_events => sv(&os_events),
            os_older => os_older,
            os_paged => q.os_before.is_some(),
            device => sv(&device),
            fleet => sv(&fleet),
            env => sv(&env),
            tags => sv(&tags),
            releases => sv(&releases),
            apps => sv(&apps),
            logs => sv(&logs),
        }},
    ))
}

/// The device's last [`ACTIONS_SHOWN`] actions, newest first (the
/// `device_action` resource, in the caller's read scope).
async fn recent_actions(
    app: &AppState,
    actor: &Actor,
    device: i64,
) -> Result<Vec<Value>, ApiError> {
    let r = res("device_action").map_err(|e| e.0)?;
    let rows = dyn_query(format!(
        "SELECT {} FROM device_action t WHERE t.device = $1 AND {} ORDER BY t.id DESC LIMIT {ACTIONS_SHOWN}",
        resources::select_cols(r, "t"),
        perms::read_scope(actor, "device_action", "t").to_sql()
    ))
    .bind(device)
    .fetch_all(&app.db.pool)
    .await?;
    rows.iter()
        .map(|row| resources::row_to_json(r, row))
        .collect()
}

/// Actions listed on the device page (all: `resin device actions`).
pub const ACTIONS_SHOWN: i64 = 10;

/// A device action from the device page (reboot, restart all services, or
/// restart one): the API's own [`actions::create`], as the session's user,
/// so the rights, limits and target-state change are the API's.
pub async fn device_action(
    State(app): State<AppState>,
    Auth(s): Auth,
    Path(id): Path<i64>,
    headers: HeaderMap,
    Form(form): Form<FormMap>,
) -> WebResult {
    check_csrf(&s, &headers, &form)?;
    let body = action_body(&form);
    actions::create(&app, &s.actor(), id, body.to_string().as_bytes()).await?;
    log_change(
        &app,
        &s,
        "action",
        &format!("device({id})"),
        Some(&body.to_string()),
    )
    .await;
    Ok(see_other(&format!("/devices/{id}#actions")))
}

/// The API's action request from a form's `action` and `service` fields.
fn action_body(form: &FormMap) -> Value {
    let mut body = json!({"action": field(form, "action")});
    let service = field(form, "service");
    if !service.is_empty() {
        body["service"] = Value::from(service);
    }
    body
}

pub async fn device_pin(
    State(app): State<AppState>,
    Auth(s): Auth,
    Path(id): Path<i64>,
    headers: HeaderMap,
    Form(form): Form<FormMap>,
) -> WebResult {
    check_csrf(&s, &headers, &form)?;
    let r = field(&form, "release");
    let v = if r.is_empty() {
        Value::Null
    } else {
        Value::from(parse_id("release", r)?)
    };
    resources::patch(
        &app,
        &s.actor(),
        res("device")?,
        id,
        &json!({"pinned_release": v}),
    )
    .await?;
    log_change(
        &app,
        &s,
        "pin",
        &format!("device({id})"),
        Some(&v.to_string()),
    )
    .await;
    Ok(see_other(&format!("/devices/{id}")))
}

/// Sets (creates or changes) or, with `delete`, removes one of a device's
/// env vars or tags, through the API's generic writes.
async fn set_child(
    app: &AppState,
    s: &Session,
    device: i64,
    resource: &str,
    key_col: &str,
    name: &str,
    value: Option<&str>,
) -> Result<(), WebError> {
    set_child_of(app, s, ("device", device), resource, key_col, name, value).await
}

/// [`set_child`] under any parent: (`device` or `fleet`, id).
async fn set_child_of(
    app: &AppState,
    s: &Session,
    (parent, device): (&str, i64),
    resource: &str,
    key_col: &str,
    name: &str,
    value: Option<&str>,
) -> Result<(), WebError> {
    let actor = s.actor();
    // A parent the user cannot see is a 404, as on its page.
    resources::read_one(app, &actor, res(parent)?, device).await?;
    let existing = children(app, &actor, resource, parent, device)
        .await?
        .into_iter()
        .find(|v| v.get(key_col).and_then(Value::as_str) == Some(name))
        .and_then(|v| v.get("id").and_then(Value::as_i64));
    let r = res(resource)?;
    match (existing, value) {
        (Some(cid), None) => resources::delete(app, &actor, r, cid, false).await?,
        (None, None) => {}
        (Some(cid), Some(v)) => resources::patch(app, &actor, r, cid, &json!({"value": v})).await?,
        (None, Some(v)) => {
            resources::create(
                app,
                &actor,
                r,
                &json!({parent: device, key_col: name, "value": v}),
            )
            .await?;
        }
    }
    log_change(
        app,
        s,
        if value.is_some() { "set" } else { "delete" },
        &format!("{parent}({device})"),
        Some(&format!("{resource} {name}")),
    )
    .await;
    Ok(())
}

pub async fn device_env(
    State(app): State<AppState>,
    Auth(s): Auth,
    Path(id): Path<i64>,
    headers: HeaderMap,
    Form(form): Form<FormMap>,
) -> WebResult {
    check_csrf(&s, &headers, &form)?;
    let value = (!form.contains_key("delete")).then(|| field(&form, "value"));
    set_child(
        &app,
        &s,
        id,
        "device_env_var",
        "name",
        field(&form, "name"),
        value,
    )
    .await?;
    Ok(see_other(&format!("/devices/{id}")))
}

pub async fn device_tag(
    State(app): State<AppState>,
    Auth(s): Auth,
    Path(id): Path<i64>,
    headers: HeaderMap,
    Form(form): Form<FormMap>,
) -> WebResult {
    check_csrf(&s, &headers, &form)?;
    let value = (!form.contains_key("delete")).then(|| field(&form, "value"));
    set_child(
        &app,
        &s,
        id,
        "device_tag",
        "tag_key",
        field(&form, "key"),
        value,
    )
    .await?;
    Ok(see_other(&format!("/devices/{id}")))
}

/// The device's live logs: the API's SSE stream (`/v1/device(id)/logs?follow=true`)
/// for the session's user.
pub async fn device_log_stream(
    State(app): State<AppState>,
    Auth(s): Auth,
    Path(id): Path<i64>,
) -> WebResult {
    Ok(logs::get_logs(&app, &s.actor(), id, Some("follow=true&count=0")).await?)
}

/// The device's stored log lines as a text file.
pub async fn device_log_download(
    State(app): State<AppState>,
    Auth(s): Auth,
    Path(id): Path<i64>,
) -> WebResult {
    let device = resources::read_one(&app, &s.actor(), res("device")?, id).await?;
    let n = i64::try_from(app.config.log_retention).unwrap_or(i64::MAX);
    let mut text = String::new();
    for l in recent_logs(&app, id, n).await? {
        text.push_str(&format!(
            "{} {} {}\n",
            l.time,
            l.service.as_deref().unwrap_or("-"),
            l.message
        ));
    }
    let uuid = device
        .get("uuid")
        .and_then(Value::as_str)
        .unwrap_or("device");
    let disposition = format!("attachment; filename=\"{uuid}.log\"");
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        text,
    )
        .into_response())
}

// ---------------------------------------------------------------- the rest

pub async fn os_releases(State(app): State<AppState>, Auth(s): Auth) -> WebResult {
    let list = resources::read_all(&app, &s.actor(), res("os_release")?).await?;
    Ok(render(
        "os_releases.html",
        context! { ..base(&s), ..context! { os_releases => sv(&list) } },
    ))
}

/// `POST /os-releases`: a new OS release from the upload form (multipart:
/// `csrf`, `device_type`, `version`, then the `bundle` file and optionally
/// the `image` file, in that order). The row is made with
/// [`resources::create`] and the files are stored by [`os::upload_stream`],
/// the API's upload code, with the bundle's shape checked. Any error removes
/// the new release again (row and files): nothing is left half-made.
pub async fn upload_os_release(
    State(app): State<AppState>,
    Auth(s): Auth,
    headers: HeaderMap,
    mut multipart: axum::extract::Multipart,
) -> WebResult {
    let actor = s.actor();
    let bad = |m: String| WebError(ApiError::bad_request(m));
    let mut form = FormMap::new();
    let mut created: Option<i64> = None;
    let mut stored = Vec::new();
    let result: Result<(), WebError> = async {
        while let Some(part) = multipart
            .next_field()
            .await
            .map_err(|e| bad(format!("reading the upload form: {e}")))?
        {
            let name = part.name().unwrap_or_default().to_owned();
            if name != "bundle" && name != "image" {
                let v = part
                    .text()
                    .await
                    .map_err(|e| bad(format!("reading the field {name:?}: {e}")))?;
                form.insert(name, v);
                continue;
            }
            // An empty file input (no image chosen) is sent with no file name.
            if part.file_name().unwrap_or_default().is_empty() {
                continue;
            }
            let id = match created {
                Some(id) => id,
                None => {
                    check_csrf(&s, &headers, &form)?;
                    let body = json!({
                        "device_type": field(&form, "device_type"),
                        "version": field(&form, "version"),
                    });
                    let (_, v) = resources::create(&app, &actor, res("os_release")?, &body).await?;
                    let id = v.get("id").and_then(Value::as_i64).ok_or_else(|| {
                        WebError(ApiError::internal("a new os_release without an id"))
                    })?;
                    created = Some(id);
                    id
                }
            };
            let (sha, size) = os::upload_stream(&app, &actor, id, &name, part, true).await?;
            stored.push(format!("{name} {size} bytes sha256 {sha}"));
        }
        if !stored.iter().any(|f| f.starts_with("bundle ")) {
            check_csrf(&s, &headers, &form)?;
            return Err(WebError(ApiError::bad_request_field(
                "bundle",
                "choose a RAUC bundle (.raucb) to upload",
            )));
        }
        Ok(())
    }
    .await;
    match (result, created) {
        (Ok(()), Some(id)) => {
            log_change(
                &app,
                &s,
                "upload",
                &format!("os_release({id})"),
                Some(&stored.join("; ")),
            )
            .await;
            Ok(see_other("/os-releases"))
        }
        (Err(e), Some(id)) => {
            // Nothing half-made: the new release (row and files) goes again.
            if let Err(d) = resources::delete(&app, &actor, res("os_release")?, id, true).await {
                tracing::warn!("removing the failed upload os_release({id}): {}", d.message);
            }
            Err(e)
        }
        (Err(e), None) => Err(e),
        (Ok(()), None) => Err(WebError(ApiError::internal("no os_release made"))),
    }
}

#[derive(Serialize)]
struct AuditRow {
    at: String,
    actor: Option<String>,
    via: String,
    action: String,
    target: String,
    detail: Option<String>,
}

pub async fn audit_page(State(app): State<AppState>, Auth(s): Auth) -> WebResult {
    let actor = s.actor();
    let rows = dyn_query(format!(
        "SELECT a.at, u.username, a.via, a.action, a.target, a.detail FROM audit_log a \
         LEFT JOIN \"user\" u ON u.id = a.actor WHERE {} ORDER BY a.id DESC LIMIT 500",
        perms::read_scope(&actor, "audit_log", "a").to_sql()
    ))
    .fetch_all(&app.db.pool)
    .await
    .map_err(ApiError::from)?;
    let mut list = Vec::new();
    for r in rows {
        list.push(AuditRow {
            at: r.try_get(0).map_err(ApiError::from)?,
            actor: r.try_get(1).map_err(ApiError::from)?,
            via: r.try_get(2).map_err(ApiError::from)?,
            action: r.try_get(3).map_err(ApiError::from)?,
            target: r.try_get(4).map_err(ApiError::from)?,
            detail: r.try_get(5).map_err(ApiError::from)?,
        });
    }
    Ok(render(
        "audit.html",
        context! { ..base(&s), ..context! { entries => sv(&list) } },
    ))
}

pub async fn settings(State(app): State<AppState>, Auth(s): Auth) -> WebResult {
    let keys = resources::read_all(&app, &s.actor(), res("api_key")?).await?;
    let fleets = resources::read_all(&app, &s.actor(), res("fleet")?).await?;
    Ok(render(
        "settings.html",
        context! { ..base(&s), ..context! { keys => sv(&keys), fleets => sv(&fleets) } },
    ))
}

pub async fn create_key(
    State(app): State<AppState>,
    Auth(s): Auth,
    headers: HeaderMap,
    Form(form): Form<FormMap>,
) -> WebResult {
    check_csrf(&s, &headers, &form)?;
    let mut body = json!({"name": field(&form, "name")});
    let scope = field(&form, "scope");
    if !scope.is_empty() {
        body["scope"] = Value::from(scope);
    }
    let fleet = field(&form, "fleet");
    if !fleet.is_empty() {
        body["fleet"] = Value::from(parse_id("fleet", fleet)?);
    }
    let (_, v) = resources::create(&app, &s.actor(), res("api_key")?, &body).await?;
    let key = v.get("key").and_then(Value::as_str).unwrap_or_default();
    let id = v.get("id").and_then(Value::as_i64).unwrap_or_default();
    log_change(
        &app,
        &s,
        "create",
        &format!("api_key({id})"),
        Some(field(&form, "name")),
    )
    .await;
    Ok(render(
        "key_shown.html",
        context! { ..base(&s), ..context! {
            what => "API key",
            key => key,
            back => "/settings",
        }},
    ))
}

pub async fn revoke_key(
    State(app): State<AppState>,
    Auth(s): Auth,
    Path(id): Path<i64>,
    headers: HeaderMap,
    Form(form): Form<FormMap>,
) -> WebResult {
    check_csrf(&s, &headers, &form)?;
    resources::delete(&app, &s.actor(), res("api_key")?, id, false).await?;
    log_change(&app, &s, "revoke", &format!("api_key({id})"), None).await;
    Ok(see_other("/settings"))
}

/// A rollout action (pause, resume, halt, …) from the fleet page: the
/// API's own state machine ([`crate::rollout::act`]).
pub async fn rollout_action(
    State(app): State<AppState>,
    Auth(s): Auth,
    Path((fleet, id, action)): Path<(i64, i64, String)>,
    headers: HeaderMap,
    Form(form): Form<FormMap>,
) -> WebResult {
    check_csrf(&s, &headers, &form)?;
    let reason = field(&form, "reason");
    let body = if reason.is_empty() {
        Vec::new()
    } else {
        json!({"reason": reason}).to_string().into_bytes()
    };
    crate::rollout::act(&app, &s.actor(), id, &action, &body).await?;
    log_change(&app, &s, &action, &format!("rollout({id})"), None).await;
    Ok(see_other(&format!("/fleets/{fleet}")))
}

/// Sets or removes a fleet env var (`kind` = env) or config var (config).
pub async fn fleet_var(
    State(app): State<AppState>,
    Auth(s): Auth,
    Path((id, kind)): Path<(i64, String)>,
    headers: HeaderMap,
    Form(form): Form<FormMap>,
) -> WebResult {
    check_csrf(&s, &headers, &form)?;
    let resource = match kind.as_str() {
        "env" => "fleet_env_var",
        "config" => "fleet_config_var",
        _ => {
            return Err(WebError(ApiError::not_found(format!(
                "no /fleets/{id}/{kind}"
            ))))
        }
    };
    let value = (!form.contains_key("delete")).then(|| field(&form, "value"));
    set_child_of(
        &app,
        &s,
        ("fleet", id),
        resource,
        "name",
        field(&form, "name"),
        value,
    )
    .await?;
    Ok(see_other(&format!("/fleets/{id}")))
}

/// The most devices one bulk action takes (a few pages' worth).
pub const BULK_MAX: usize = 500;

/// A bulk action on the devices ticked in the fleet page's table: pin a
/// release (or none), set a tag, remove a tag, reboot, or move to another
/// fleet ([`actions::create`], [`actions::move_device`]). Each device goes through the
/// same writes (and permission rules) as on its own page; devices of other
/// fleets or users are refused with the first error.
pub async fn fleet_bulk(
    State(app): State<AppState>,
    Auth(s): Auth,
    Path(id): Path<i64>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> WebResult {
    // Repeated `device` fields: parsed by hand (a map keeps only one).
    let mut form = FormMap::new();
    let mut devices = Vec::new();
    for (k, v) in form_urlencoded_pairs(&body) {
        if k == "device" {
            devices.push(parse_id("device", &v)?);
        } else {
            form.insert(k, v);
        }
    }
    check_csrf(&s, &headers, &form)?;
    let actor = s.actor();
    resources::read_one(&app, &actor, res("fleet")?, id).await?;
    if devices.is_empty() {
        return Err(WebError(ApiError::bad_request(
            "select at least one device",
        )));
    }
    if devices.len() > BULK_MAX {
        return Err(WebError(ApiError::bad_request(format!(
            "at most {BULK_MAX} devices at a time, not {}",
            devices.len()
        ))));
    }
    // Every device must be one of this fleet's, visible to the user.
    for d in &devices {
        let v = resources::read_one(&app, &actor, res("device")?, *d).await?;
        if v.get("fleet").and_then(Value::as_i64) != Some(id) {
            return Err(WebError(ApiError::bad_request(format!(
                "device({d}) is not in fleet({id})"
            ))));
        }
    }
    let action = field(&form, "action").to_owned();
    let tag = field(&form, "tag").to_owned();
    let (tag_key, tag_value) = match tag.split_once('=') {
        Some((k, v)) => (k.trim().to_owned(), v.trim().to_owned()),
        None => (tag.trim().to_owned(), String::new()),
    };
    match action.as_str() {
        "pin" => {
            let r = field(&form, "release");
            let v = if r.is_empty() {
                Value::Null
            } else {
                Value::from(parse_id("release", r)?)
            };
            for d in &devices {
                resources::patch(
                    &app,
                    &actor,
                    res("device")?,
                    *d,
                    &json!({"pinned_release": v}),
                )
                .await?;
            }
        }
        "tag" | "untag" if tag_key.is_empty() => {
            return Err(WebError(ApiError::bad_request_field(
                "tag",
                "name the tag: key=value (or key to remove it)",
            )));
        }
        "tag" => {
            for d in &devices {
                set_child(
                    &app,
                    &s,
                    *d,
                    "device_tag",
                    "tag_key",
                    &tag_key,
                    Some(&tag_value),
                )
                .await?;
            }
        }
        "untag" => {
            for d in &devices {
                set_child(&app, &s, *d, "device_tag", "tag_key", &tag_key, None).await?;
            }
        }
        "reboot" => {
            let body = json!({"action": "reboot"}).to_string();
            for d in &devices {
                actions::create(&app, &actor, *d, body.as_bytes()).await?;
            }
        }
        "move" => {
            let to = parse_id("to_fleet", field(&form, "to_fleet"))?;
            let body = json!({"fleet": to}).to_string();
            for d in &devices {
                let _moved = actions::move_device(&app, &actor, *d, body.as_bytes()).await?;
            }
        }
        other => {
            return Err(WebError(ApiError::bad_request_field(
                "action",
                format!("unknown bulk action {other:?} (pin, tag, untag, reboot, move)"),
            )))
        }
    }
    log_change(
        &app,
        &s,
        &format!("bulk {action}"),
        &format!("fleet({id})"),
        Some(&format!("{} devices", devices.len())),
    )
    .await;
    Ok(see_other(&format!("/fleets/{id}")))
}

/// `application/x-www-form-urlencoded` pairs, decoded ('+' is a space).
fn form_urlencoded_pairs(body: &[u8]) -> Vec<(String, String)> {
    let hex = |c: u8| (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let dec = |s: &str| -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push(h * 16 + l);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                },
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (dec(k), dec(v))
        })
        .collect()
}
