//! `GET /v1/<resource>[(<key>)][/$count]`: reads with the OData query
//! options, through resin-odata's parser and SQL renderer. The permission
//! rules of [`crate::perms`] are injected as row filters on every entity set
//! the query touches (including `$expand` and `$filter` navigation).

use std::sync::OnceLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use resin_odata::{
    Access, Dialect, EntitySet, Field, FieldType, NavKind, Navigation, RowFilter, Schema, Value,
};
use sqlx::Row;

use crate::auth::Actor;
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::perms::{self, Scope};
use crate::resources::{bind_all, dyn_query, Param};
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
            f.references.map(|to| Navigation {
                name: f.name,
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

/// Answers a GET on a collection, an entity or a `$count`.
pub async fn get(
    app: &AppState,
    actor: &Actor,
    res: &Resource,
    key: Option<i64>,
    raw_query: Option<&str>,
    count_only: bool,
) -> ApiResult<Response> {
    let q = resin_odata::parse_query(raw_query.unwrap_or_default())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let schema = odata_schema();
    let access = ActorAccess(actor);
    let d = dialect(app);
    if count_only || (q.count && key.is_none()) {
        let sql = {
            let access: &dyn Access = &access;
            resin_odata::render_count(schema, res.name, &q, access, d)
                .map_err(|e| ApiError::bad_request(e.to_string()))?
        };
        let row = bind_all(dyn_query(sql.sql), &params(sql.params))
            .fetch_one(&app.db.pool)
            .await?;
        let n: i64 = row.try_get(0)?;
        if count_only {
            return Ok((
                [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))],
                n.to_string(),
            )
                .into_response());
        }
        let value = select(app, res, None, &q, &access, d).await?;
        return Ok(Json(serde_json::json!({"@odata.count": n, "value": value})).into_response());
    }
    let value = select(app, res, key, &q, &access, d).await?;
    match key {
        Some(id) => value
            .into_iter()
            .next()
            .map(|v| Json(v).into_response())
            .ok_or_else(|| ApiError::not_found(format!("{}({id}) not found", res.name))),
        None => Ok(Json(serde_json::json!({ "value": value })).into_response()),
    }
}

fn render(
    res: &Resource,
    key: Option<&Value>,
    q: &resin_odata::QueryOptions,
    access: &ActorAccess<'_>,
    d: Dialect,
) -> ApiResult<resin_odata::Sql> {
    resin_odata::render_select(odata_schema(), res.name, key, q, access, d)
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

async fn select(
    app: &AppState,
    res: &Resource,
    key: Option<i64>,
    q: &resin_odata::QueryOptions,
    access: &ActorAccess<'_>,
    d: Dialect,
) -> ApiResult<Vec<serde_json::Value>> {
    let key = key.map(Value::Int);
    let sql = render(res, key.as_ref(), q, access, d)?;
    let rows = bind_all(dyn_query(sql.sql), &params(sql.params))
        .fetch_all(&app.db.pool)
        .await?;
    rows.iter()
        .map(|r| {
            let text: String = r.try_get(0)?;
            serde_json::from_str(&text).map_err(ApiError::internal)
        })
        .collect()
}
