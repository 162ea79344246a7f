//! API errors, answered in the OData JSON error format
//! `{"error":{"code":"…","message":"…"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error answer: HTTP status, a short machine code and a human message.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
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
                    return Self::conflict("an entity with these unique values already exists")
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}
