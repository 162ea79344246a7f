//! API errors, answered in the OData JSON error format
//! `{"error":{"code":"…","message":"…"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error answer: HTTP status, a short machine code, a human message and,
/// where one field is at fault, its name (OData's `target`).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub target: Option<String>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            target: None,
        }
    }
    /// The same error, naming the field at fault.
    pub fn with_target(mut self, field: impl Into<String>) -> Self {
        self.target = Some(field.into());
        self
    }
    pub fn bad_request_field(field: &str, message: impl Into<String>) -> Self {
        Self::bad_request(message).with_target(field)
    }
    pub fn conflict_field(field: &str, message: impl Into<String>) -> Self {
        Self::conflict(message).with_target(field)
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "missing or invalid API key (Authorization: Bearer <key>)",
        )
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "Conflict", message)
    }
    /// The server's disk (or database) is full: 507, so a client knows that
    /// retrying later, after an operator frees space, can work.
    pub fn storage_full(what: impl std::fmt::Display) -> Self {
        tracing::error!("no space left while {what}");
        Self::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "InsufficientStorage",
            format!("the server has no space left while {what}; nothing was stored"),
        )
    }
    /// A failed file operation: 507 when the disk is full, else 500.
    pub fn io(what: &str, e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::StorageFull {
            Self::storage_full(what)
        } else {
            Self::internal(format!("{what}: {e}"))
        }
    }
    pub fn internal(message: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {message}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "internal error (see the server log)",
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            use sqlx::error::ErrorKind;
            match db.kind() {
                ErrorKind::UniqueViolation => {
                    let fields = unique_fields(db.message(), db.constraint());
                    let message = match &fields {
                        Some(f) => format!("an entity with this {f} already exists"),
                        None => "an entity with these unique values already exists".to_owned(),
                    };
                    let e = Self::conflict(message);
                    return match fields {
                        Some(f) => e.with_target(f),
                        None => e,
                    };
                }
                ErrorKind::ForeignKeyViolation => {
                    return Self::bad_request("a referenced entity does not exist")
                }
                ErrorKind::NotNullViolation => {
                    return Self::bad_request("a required field is missing")
                }
                _ => {}
            }
            // SQLITE_FULL (13) and PostgreSQL's disk_full (53100).
            if matches!(db.code().as_deref(), Some("13") | Some("53100")) {
                return Self::storage_full("writing to the database");
            }
        }
        if let sqlx::Error::RowNotFound = e {
            return Self::not_found("no such entity");
        }
        Self::internal(e)
    }
}

/// The fields of a violated unique constraint, as `name` or `owner, name`:
/// from SQLite's message (`UNIQUE constraint failed: fleet.owner,
/// fleet.name`) or PostgreSQL's constraint name (`fleet_owner_name_key`,
/// matched against the schema's fields of that table).
fn unique_fields(message: &str, constraint: Option<&str>) -> Option<String> {
    if let Some(cols) = message.strip_prefix("UNIQUE constraint failed: ") {
        let names: Vec<&str> = cols
            .split(',')
            .map(|c| c.trim().rsplit('.').next().unwrap_or_default())
            .collect();
        return Some(names.join(", "));
    }
    let middle = constraint?.strip_suffix("_key")?;
    // The longest table name that prefixes the constraint, then its fields
    // in order (field names may hold '_' too).
    let res = crate::schema::RESOURCES
        .iter()
        .filter(|r| middle.starts_with(&format!("{}_", r.name)))
        .max_by_key(|r| r.name.len())?;
    let mut rest = &middle[res.name.len() + 1..];
    let mut cols = Vec::new();
    let mut all: Vec<&str> = res.fields.iter().map(|f| f.name).collect();
    all.extend(["key_hash", "api_key_hash", "owner"]);
    all.sort_by_key(|n| std::cmp::Reverse(n.len()));
    while !rest.is_empty() {
        let f = all
            .iter()
            .find(|f| rest == **f || rest.starts_with(&format!("{f}_")))?;
        cols.push(*f);
        rest = rest.get(f.len() + 1..).unwrap_or_default();
    }
    Some(cols.join(", "))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::json!({"code": self.code, "message": self.message});
        if let (Some(t), Some(o)) = (self.target, error.as_object_mut()) {
            o.insert("target".into(), serde_json::Value::String(t));
        }
        let body = serde_json::json!({ "error": error });
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6750: say which scheme to use.
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"resin\""),
            );
        }
        resp
    }
}
