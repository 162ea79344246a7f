//! `GET /v1/<resource>[(<key>)][/$count]`: reads, with the OData query
//! options. Permission filters from [`crate::perms`] are always applied.

use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::auth::Actor;
use crate::error::{ApiError, ApiResult};
use crate::schema::Resource;
use crate::{resources, AppState};

/// Answers a GET on a collection, an entity or a `$count`.
pub async fn get(
    app: &AppState,
    actor: &Actor,
    res: &Resource,
    key: Option<i64>,
    raw_query: Option<&str>,
    count_only: bool,
) -> ApiResult<Response> {
    if raw_query.is_some_and(|q| !q.is_empty()) {
        return Err(ApiError::bad_request("query options are not supported yet"));
    }
    if let Some(id) = key {
        return Ok(Json(resources::read_one(app, actor, res, id).await?).into_response());
    }
    let rows = resources::read_all(app, actor, res).await?;
    if count_only {
        return Ok(rows.len().to_string().into_response());
    }
    Ok(Json(serde_json::json!({ "value": rows })).into_response())
}
