//! Dashboard logins: argon2id password hashes, sessions in a cookie, CSRF
//! tokens.
//!
//! A session is a random 32-byte token in the `resin_session` cookie
//! (HttpOnly, SameSite=Strict, Secure when the cloud serves TLS, Path=/);
//! the database keeps only its sha256, the user, the session's CSRF token
//! and an absolute expiry ([`SESSION_TTL`]). An expired or unknown cookie is
//! no session: pages redirect to `/login`. Logging out deletes the row.
//!
//! Every mutating form carries the session's CSRF token (field `csrf`, or
//! the `X-CSRF-Token` header for htmx requests); without it the answer is
//! 403. The login form, before any session exists, is guarded by a
//! double-submit token: a `resin_login_csrf` cookie that the form repeats.

use std::sync::LazyLock;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::http::HeaderMap;
use rand::RngCore;
use sqlx::Row;

use crate::auth::{self, Actor};
use crate::db::{self, Db};

/// The session cookie.
pub const COOKIE: &str = "resin_session";
/// The login form's double-submit CSRF cookie.
pub const LOGIN_CSRF_COOKIE: &str = "resin_login_csrf";
/// How long a session lasts from login (absolute, not sliding).
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// The shortest password `resin-cloud user passwd` accepts.
pub const MIN_PASSWORD_LEN: usize = 10;

/// A logged-in user.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: i64,
    pub username: String,
    pub admin: bool,
    pub csrf: String,
    pub expires_at: String,
}

impl Session {
    /// The caller as the API's permission rules see it: the user with full
    /// rights over their own data, exactly like an unscoped API key.
    pub fn actor(&self) -> Actor {
        Actor::User {
            id: self.user,
            admin: self.admin,
            read_only: false,
            fleet: None,
        }
    }

    /// Does `token` (a form field or header) match this session's CSRF token?
    pub fn csrf_ok(&self, token: Option<&str>) -> bool {
        token.is_some_and(|t| auth::constant_time_eq(t.as_bytes(), self.csrf.as_bytes()))
    }
}

/// 32 random bytes as lowercase hex.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The value of cookie `name` in the request, if any.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, Path=/, Secure when
/// `secure`; `max_age` 0 deletes the cookie.
pub fn set_cookie(name: &str, value: &str, max_age: Duration, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// Why a password could not be set or checked.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("the password must be at least {MIN_PASSWORD_LEN} characters long")]
    TooShort,
    #[error("no user named {0:?} (create one with `resin-cloud bootstrap --username {0}`)")]
    NoSuchUser(String),
    #[error("hashing the password: {0}")]
    Hash(argon2::password_hash::Error),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// An argon2id PHC string of `password` with a random salt.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(PasswordError::Hash)?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(PasswordError::Hash)
}

/// Does `password` match the PHC string `hash`? A malformed hash matches nothing.
pub fn verify_password(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(e) => {
            tracing::warn!("a stored password hash does not parse: {e}");
            false
        }
    }
}

/// A hash no password matches, checked for unknown users so that a login
/// takes as long whether or not the user exists.
static DUMMY_HASH: LazyLock<Option<String>> = LazyLock::new(|| hash_password(&random_token()).ok());

/// Sets user `username`'s dashboard password (`resin-cloud user passwd`).
/// Their existing sessions end.
pub async fn set_password(db: &Db, username: &str, password: &str) -> Result<(), PasswordError> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(PasswordError::TooShort);
    }
    let hash = hash_password(password)?;
    let mut tx = db.begin_write().await?;
    let row =
        sqlx::query("UPDATE \"user\" SET password_hash = $1 WHERE username = $2 RETURNING id")
            .bind(&hash)
            .bind(username)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| PasswordError::NoSuchUser(username.to_owned()))?;
    let id: i64 = row.try_get(0)?;
    sqlx::query("DELETE FROM web_session WHERE \"user\" = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Checks a login. `Some(user id)` when the password is right.
pub async fn check_login(
    db: &Db,
    username: &str,
    password: &str,
) -> Result<Option<i64>, sqlx::Error> {
    let row = sqlx::query("SELECT id, password_hash FROM \"user\" WHERE username = $1")
        .bind(username)
        .fetch_optional(&db.pool)
        .await?;
    let (id, hash): (Option<i64>, Option<String>) = match row {
        Some(r) => (Some(r.try_get(0)?), r.try_get(1)?),
        None => (None, None),
    };
    let password = password.to_owned();
    let ok = tokio::task::spawn_blocking(move || match hash {
        Some(h) => verify_password(&h, &password),
        None => {
            if let Some(d) = DUMMY_HASH.as_deref() {
                verify_password(d, &password);
            }
            false
        }
    })
    .await
    .unwrap_or(false);
    Ok(if ok { id } else { None })
}

/// Starts a session for `user`: returns the cookie token.
pub async fn create(db: &Db, user: i64) -> Result<String, sqlx::Error> {
    let token = random_token();
    let expires = time::OffsetDateTime::now_utc() + SESSION_TTL;
    sqlx::query(
        "INSERT INTO web_session (token_hash, \"user\", csrf, expires_at, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(auth::hash_key(&token))
    .bind(user)
    .bind(random_token())
    .bind(db::format_ts(expires))
    .bind(db::now())
    .execute(&db.pool)
    .await?;
    // Old sessions of anyone are dropped now and then, here.
    sqlx::query("DELETE FROM web_session WHERE expires_at <= $1")
        .bind(db::now())
        .execute(&db.pool)
        .await?;
    Ok(token)
}

/// The session of the request's cookie, unless missing, unknown or expired.
pub async fn lookup(db: &Db, headers: &HeaderMap) -> Result<Option<Session>, sqlx::Error> {
    let Some(token) = cookie(headers, COOKIE) else {
        return Ok(None);
    };
    let row = sqlx::query(
        "SELECT s.\"user\", u.username, CASE WHEN u.is_admin THEN 1 ELSE 0 END, s.csrf, \
         s.expires_at FROM web_session s JOIN \"user\" u ON u.id = s.\"user\" \
         WHERE s.token_hash = $1",
    )
    .bind(auth::hash_key(token))
    .fetch_optional(&db.pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let expires_at: String = row.try_get(4)?;
    if expires_at <= db::now() {
        return Ok(None);
    }
    Ok(Some(Session {
        user: row.try_get(0)?,
        username: row.try_get(1)?,
        admin: row.try_get::<i64, _>(2)? != 0,
        csrf: row.try_get(3)?,
        expires_at,
    }))
}

/// Ends the session of the request's cookie, if any.
pub async fn destroy(db: &Db, headers: &HeaderMap) -> Result<(), sqlx::Error> {
    if let Some(token) = cookie(headers, COOKIE) {
        sqlx::query("DELETE FROM web_session WHERE token_hash = $1")
            .bind(auth::hash_key(token))
            .execute(&db.pool)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_password_hash_is_argon2id_and_matches_only_its_password() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password(&h, "correct horse battery"));
        assert!(!verify_password(&h, "correct horse batterz"));
        assert!(!verify_password("not a hash", "x"));
        assert_ne!(h, hash_password("correct horse battery").unwrap(), "salted");
    }

    #[test]
    fn cookies_are_read_by_name_and_set_strict() {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            "a=1; resin_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
        let c = set_cookie(COOKIE, "t", SESSION_TTL, true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("Secure"));
        assert!(!set_cookie(COOKIE, "t", SESSION_TTL, false).contains("Secure"));
    }
}
