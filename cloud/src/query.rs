//! `GET /v1/<resource>[(<key>)][/$count]`: reads with the OData query
//! options, through resin-odata's parser and SQL renderer. The permission
//! rules of [`crate::perms`] are injected as row filters on every entity set
//! the query touches (including `$expand` and `$filter` navigation).

use std::sync::OnceLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use resin_odata::{
    Access, Dialect, EntitySet, Field, FieldType, NavKind, Navigation, RowFilter, Schema, Value,
};

use crate::auth::Actor;
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::perms::{self, Scope};
use crate::resources::Param;
use crate::schema::{Kind, Resource, RESOURCES};
use crate::AppState;

/// The OData schema, generated once from [`crate::schema::RESOURCES`].
pub fn odata_schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let sets: Vec<EntitySet> = RESOURCES.iter().map(entity_set).collect();
        Schema {
            sets: Box::leak(sets.into_boxed_slice()),
        }
    })
}

fn entity_set(r: &Resource) -> EntitySet {
    let fields: Vec<Field> = r
        .fields
        .iter()
        .map(|f| Field {
            name: f.name,
            ty: match f.kind {
                Kind::Int => FieldType::Int,
                Kind::Text => FieldType::Text,
                Kind::Bool => FieldType::Bool,
                Kind::Real => FieldType::Float,
                Kind::Time => FieldType::Timestamp,
                Kind::Json => FieldType::Json,
            },
            column: f.name,
            filterable: f.kind != Kind::Json,
            selectable: true,
        })
        .collect();
    let mut navs: Vec<Navigation> = r
        .fields
        .iter()
        .filter_map(|f| {
            let name: &'static str = Box::leak(f.navigation()?.into_boxed_str());
            f.references.map(|to| Navigation {
                name,
                target: to,
                kind: NavKind::ToOne {
                    local_column: f.name,
                },
            })
        })
        .collect();
    navs.extend(r.children.iter().map(|c| Navigation {
        name: c.name,
        target: c.resource,
        kind: NavKind::ToMany {
            remote_column: c.via,
        },
    }));
    EntitySet {
        name: r.name,
        table: r.table.trim_matches('"'),
        key: "id",
        fields: Box::leak(fields.into_boxed_slice()),
        navigations: Box::leak(navs.into_boxed_slice()),
    }
}

/// The caller's read rules, as resin-odata row filters.
struct ActorAccess<'a>(&'a Actor);

impl Access for ActorAccess<'_> {
    fn row_filter(&self, set: &EntitySet) -> Option<RowFilter> {
        match perms::read_scope(self.0, set.name, "{t}") {
            Scope::All => Some(RowFilter {
                sql: String::new(),
                params: vec![],
            }),
            Scope::Nothing => None,
            Scope::Sql(sql) => Some(RowFilter {
                sql,
                params: vec![],
            }),
        }
    }
}

fn dialect(app: &AppState) -> Dialect {
    match app.db.dialect {
        db::Dialect::Sqlite => Dialect::Sqlite,
        db::Dialect::Postgres => Dialect::Postgres,
    }
}

fn params(values: Vec<Value>) -> Vec<Param> {
    values
        .into_iter()
        .map(|v| match v {
            Value::Null => Param::Text(None),
            Value::Bool(b) => Param::Bool(b),
            Value::Int(i) => Param::Int(Some(i)),
            Value::Float(f) => Param::Real(Some(f)),
            Value::Text(s) => Param::Text(Some(s)),
        })
        .collect()
}

/// The paging, cost and time limits of one read, from the config.
struct Limits {
    page: u64,
    /// The page the client asked for with `Prefer: odata.maxpagesize`, as granted.
    preferred: Option<u64>,
    max_rows: u64,
    timeout: std::time::Duration,
}

impl Limits {
    fn new(app: &AppState, prefer: Option<&str>) -> Self {
        let c = &app.config;
        let preferred = prefer
            .and_then(max_page_size)
            .map(|n| n.clamp(1, c.max_page_size));
        Limits {
            page: preferred.unwrap_or(c.page_size),
            preferred,
            max_rows: c.max_expand_rows,
            timeout: std::time::Duration::from_millis(c.query_timeout_ms),
        }
    }
}

/// `odata.maxpagesize=N` from a `Prefer` header (`maxpagesize=N` too, as
/// OData 4.01 allows).
fn max_page_size(prefer: &str) -> Option<u64> {
    prefer.split(',').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        let k = k.trim().to_ascii_lowercase();
        (k == "odata.maxpagesize" || k == "maxpagesize")
            .then(|| v.trim().trim_matches('"').parse().ok())
            .flatten()
    })
}

fn read_error(e: db::ReadError) -> ApiError {
    match e {
        db::ReadError::Timeout(t) => ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "QueryTimeout",
            format!(
                "the query ran longer than {} ms and was stopped; narrow it with $filter, \
                 a smaller $top, or fewer $expand levels",
                t.as_millis()
            ),
        ),
        db::ReadError::Db(e) => e.into(),
    }
}

fn render_error(e: resin_odata::RenderError) -> ApiError {
    let mut msg = e.to_string();
    if let resin_odata::RenderError::UnknownNavigation { set, nav } = &e {
        // A foreign key's navigation is `<key>_entity`: say so to a client
        // that still writes `$expand=fleet`.
        let renamed = format!("{nav}_entity");
        if crate::schema::resource(set).is_some_and(|r| r.field(nav).is_some())
            && odata_schema()
                .set(set)
                .is_some_and(|s| s.navigation(&renamed).is_some())
        {
            msg.push_str(&format!(
                " ('{nav}' is the id; the navigation to that entity is '{renamed}')"
            ));
        }
    }
    ApiError::bad_request(msg)
}

async fn count(
    app: &AppState,
    set: &str,
    q: &resin_odata::QueryOptions,
    access: &ActorAccess<'_>,
    d: Dialect,
    limits: &Limits,
) -> ApiResult<u64> {
    let sql = resin_odata::render_count(odata_schema(), set, q, access, d).map_err(render_error)?;
    let text = format!("SELECT CAST(count AS TEXT) FROM ({}) AS c", sql.sql);
    let rows = app
        .db
        .read_texts(text, &params(sql.params), limits.timeout)
        .await
        .map_err(read_error)?;
    rows.first()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| ApiError::internal(format!("COUNT of {set} returned {rows:?}")))
}

/// Refuses (400) a read whose `$expand` tree could produce more than the
/// configured rows, by [`resin_odata::expand_cost`] over the counts of rows
/// the caller can see.
async fn check_cost(
    app: &AppState,
    res: &Resource,
    q: &resin_odata::QueryOptions,
    rows: u64,
    access: &ActorAccess<'_>,
    d: Dialect,
    limits: &Limits,
) -> ApiResult<()> {
    if q.expand.is_empty() {
        return Ok(());
    }
    let schema = odata_schema();
    let mut counts = std::collections::HashMap::new();
    for set in resin_odata::to_many_targets(schema, res.name, q).map_err(render_error)? {
        let n = count(
            app,
            set,
            &resin_odata::QueryOptions::default(),
            access,
            d,
            limits,
        )
        .await?;
        counts.insert(set, n);
    }
    let cost = resin_odata::expand_cost(schema, res.name, q, rows, &|s| {
        counts.get(s).copied().unwrap_or(0)
    })
    .map_err(render_error)?;
    if cost > limits.max_rows {
        return Err(ApiError::bad_request_field(
            "$expand",
            format!(
                "this $expand could produce about {cost} rows, more than the {} one request may; \
                 add $top inside the to-many expansions, filter, or expand fewer levels",
                limits.max_rows
            ),
        ));
    }
    Ok(())
}

/// The link to the next page: the request's own query with `$skip` and
/// `$top` moved on.
fn next_link(
    app: &AppState,
    res: &Resource,
    raw_query: Option<&str>,
    skip: u64,
    top: Option<u64>,
) -> String {
    let mut pairs: Vec<String> = raw_query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let k = p.split_once('=').map_or(*p, |(k, _)| k);
            let k = resin_odata::percent_decode("", k).unwrap_or_default();
            k != "$skip" && k != "$top"
        })
        .map(str::to_owned)
        .collect();
    pairs.push(format!("$skip={skip}"));
    if let Some(t) = top {
        pairs.push(format!("$top={t}"));
    }
    format!(
        "{}/v1/{}?{}",
        app.config.public_url,
        res.name,
        pairs.join("&")
    )
}

/// Answers a GET on a collection, an entity or a `$count`. A collection
/// comes in pages: at most the page size (`Prefer: odata.maxpagesize`, up to
/// the configured maximum, else the default), with `@odata.nextLink` when
/// more rows match.
pub async fn get(
    app: &AppState,
    actor: &Actor,
    res: &Resource,
    key: Option<i64>,
    raw_query: Option<&str>,
    count_only: bool,
    prefer: Option<&str>,
) -> ApiResult<Response> {
    let q = resin_odata::parse_query(raw_query.unwrap_or_default())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let access = ActorAccess(actor);
    let d = dialect(app);
    let limits = Limits::new(app, prefer);
    if count_only {
        let n = count(app, res.name, &q, &access, d, &limits).await?;
        return Ok((
            [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))],
            n.to_string(),
        )
            .into_response());
    }
    let Some(id) = key else {
        let take = q.top.map_or(limits.page, |t| t.min(limits.page));
        check_cost(app, res, &q, take, &access, d, &limits).await?;
        let total = if q.count {
            Some(count(app, res.name, &q, &access, d, &limits).await?)
        } else {
            None
        };
        let mut page_q = q.clone();
        page_q.top = Some(take.saturating_add(1));
        let mut rows = select(app, res, None, &page_q, &access, d, &limits).await?;
        let more = rows.len() as u64 > take;
        rows.truncate(usize::try_from(take).unwrap_or(usize::MAX));
        let next = (more && q.top.is_none_or(|t| t > take)).then(|| {
            let skip = q.skip.unwrap_or(0).saturating_add(take);
            next_link(app, res, raw_query, skip, q.top.map(|t| t - take))
        });
        let body = collection_body(total, next.as_deref(), rows);
        let mut resp = (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            crate::memory::body(body),
        )
            .into_response();
        if let Some(p) = limits.preferred {
            if let Ok(v) = HeaderValue::from_str(&format!("odata.maxpagesize={p}")) {
                resp.headers_mut().insert("preference-applied", v);
            }
        }
        return Ok(resp);
    };
    check_cost(app, res, &q, 1, &access, d, &limits).await?;
    let rows = select(app, res, Some(id), &q, &access, d, &limits).await?;
    rows.into_iter()
        .next()
        .map(|v| {
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                crate::memory::body(v.into_bytes()),
            )
                .into_response()
        })
        .ok_or_else(|| ApiError::not_found(format!("{}({id}) not found", res.name)))
}

/// A collection page as JSON: `@odata.count`, `@odata.nextLink` and `value`,
/// the rows as the database rendered them. Written straight into one buffer
/// rather than through a `serde_json::Value` tree: a page of the maximum size
/// with `$expand` is tens of MB, and its tree took about ten times that (and
/// glibc kept most of it after the answer: tests/memory.rs).
fn collection_body(total: Option<u64>, next: Option<&str>, rows: Vec<String>) -> Vec<u8> {
    let len = rows.iter().map(|r| r.len() + 1).sum::<usize>() + 64 + next.map_or(0, str::len);
    let mut out = Vec::with_capacity(len);
    out.push(b'{');
    if let Some(n) = total {
        out.extend_from_slice(format!("\"@odata.count\":{n},").as_bytes());
    }
    if let Some(link) = next {
        out.extend_from_slice(b"\"@odata.nextLink\":");
        out.extend_from_slice(serde_json::Value::from(link).to_string().as_bytes());
        out.push(b',');
    }
    out.extend_from_slice(b"\"value\":[");
    for (i, r) in rows.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(r.as_bytes());
    }
    out.extend_from_slice(b"]}");
    out
}

/// The rows of a read, each one JSON object as the database rendered it
/// (checked to be JSON, without building a tree of it).
async fn select(
    app: &AppState,
    res: &Resource,
    key: Option<i64>,
    q: &resin_odata::QueryOptions,
    access: &ActorAccess<'_>,
    d: Dialect,
    limits: &Limits,
) -> ApiResult<Vec<String>> {
    let key = key.map(Value::Int);
    let sql = resin_odata::render_select(odata_schema(), res.name, key.as_ref(), q, access, d)
        .map_err(render_error)?;
    let rows = app
        .db
        .read_texts(sql.sql, &params(sql.params), limits.timeout)
        .await
        .map_err(read_error)?;
    for text in &rows {
        serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(ApiError::internal)?;
    }
    Ok(rows)
}
