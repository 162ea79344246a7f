//! API keys and callers: keys are 32 random bytes shown once; only their
//! sha256 is stored. `Authorization: Bearer <key>` resolves to one [`Actor`].

use axum::http::HeaderMap;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::db::{self, Db};
use crate::error::{ApiError, ApiResult};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    Anonymous,
    /// A user's API key: the user, their role and the key's limits.
    User {
        id: i64,
        /// The user is an admin (public OS releases, user management).
        admin: bool,
        /// The key may only read (GET/HEAD).
        read_only: bool,
        /// The key reaches only this fleet and what hangs off it.
        fleet: Option<i64>,
    },
    ProvisioningKey {
        fleet: i64,
    },
    Device {
        id: i64,
        uuid: String,
        fleet: i64,
    },
}

/// What a key belongs to, read from its prefix, so a lookup touches one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    User,
    Provisioning,
    Device,
}

impl KeyKind {
    fn prefix(self) -> &'static str {
        match self {
            KeyKind::User => "resin_u_",
            KeyKind::Provisioning => "resin_p_",
            KeyKind::Device => "resin_d_",
        }
    }
}

/// A new random key of `kind` and its stored hash.
pub fn new_key(kind: KeyKind) -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let key = format!("{}{}", kind.prefix(), hex::encode(bytes));
    let hash = hash_key(&key);
    (key, hash)
}

/// Lowercase hex sha256 of a key.
pub fn hash_key(key: &str) -> String {
    hex::encode(key_digest(key))
}

/// The SHA-256 of a key, as bytes ([`hash_key`] is its hex): the
/// target-state cache's key ([`crate::cache`]).
pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Equality that takes the same time wherever the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The bearer token of a request, if any.
///
/// Read from the header's bytes: a key is ASCII, so a value that is not
/// UTF-8 has none, and the check is one pass (this runs on every poll).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(axum::http::header::AUTHORIZATION)?.as_bytes();
    let v = std::str::from_utf8(v).ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The scopes a user's API key may have (`api_key.scope`).
pub const SCOPES: &[&str] = &["full", "read-only"];

/// Resolves the caller. A missing header is `Anonymous`; a key that is
/// present but unknown or expired is a 401. A user key's scope other than
/// `full` counts as read-only, so an unknown value never grants writes.
pub async fn resolve(db: &Db, headers: &HeaderMap) -> ApiResult<Actor> {
    let Some(key) = bearer(headers) else {
        return Ok(Actor::Anonymous);
    };
    let kind = if key.starts_with(KeyKind::User.prefix()) {
        KeyKind::User
    } else if key.starts_with(KeyKind::Provisioning.prefix()) {
        KeyKind::Provisioning
    } else if key.starts_with(KeyKind::Device.prefix()) {
        KeyKind::Device
    } else {
        return Err(ApiError::unauthorized());
    };
    let hash = hash_key(key);
    let now = db::now();
    let sql = match kind {
        KeyKind::User => {
            "SELECT k.key_hash, k.\"user\", k.expires_at, \
             CASE WHEN u.is_admin THEN 1 ELSE 0 END, k.scope, k.fleet \
             FROM api_key k JOIN \"user\" u ON u.id = k.\"user\" WHERE k.key_hash = $1"
        }
        KeyKind::Provisioning => {
            "SELECT key_hash, fleet, expires_at FROM provisioning_key WHERE key_hash = $1"
        }
        KeyKind::Device => {
            "SELECT api_key_hash, id, CAST(NULL AS TEXT), fleet, uuid FROM device WHERE api_key_hash = $1"
        }
    };
    let row = sqlx::query(sql)
        .bind(&hash)
        .fetch_optional(&db.pool)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    let stored: String = row.try_get(0)?;
    if !constant_time_eq(stored.as_bytes(), hash.as_bytes()) {
        return Err(ApiError::unauthorized());
    }
    let id: i64 = row.try_get(1)?;
    let expires: Option<String> = row.try_get(2)?;
    if let Some(exp) = expires {
        if exp <= now {
            return Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "this key has expired",
            ));
        }
    }
    Ok(match kind {
        KeyKind::User => Actor::User {
            id,
            admin: row.try_get::<i64, _>(3)? != 0,
            read_only: row.try_get::<String, _>(4)? != "full",
            fleet: row.try_get(5)?,
        },
        KeyKind::Provisioning => Actor::ProvisioningKey { fleet: id },
        KeyKind::Device => Actor::Device {
            id,
            fleet: row.try_get(3)?,
            uuid: row.try_get(4)?,
        },
    })
}
