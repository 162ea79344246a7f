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
    User(i64),
    ProvisioningKey { fleet: i64 },
    Device { id: i64, uuid: String, fleet: i64 },
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
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Equality that takes the same time wherever the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Resolves the caller. A missing header is `Anonymous`; a key that is
/// present but unknown or expired is a 401.
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
            "SELECT key_hash, \"user\", expires_at FROM api_key WHERE key_hash = $1"
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
        KeyKind::User => Actor::User(id),
        KeyKind::Provisioning => Actor::ProvisioningKey { fleet: id },
        KeyKind::Device => Actor::Device {
            id,
            fleet: row.try_get(3)?,
            uuid: row.try_get(4)?,
        },
    })
}
