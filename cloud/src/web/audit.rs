//! The audit log: who changed what. Written by the dashboard's mutating
//! handlers and by the API's generic writes (`/v1` POST, PATCH, DELETE and
//! rollout actions); read by the user whose data it is (`owner`).

use crate::auth::Actor;
use crate::db::{self, Db};

/// One entry to write.
pub struct Entry<'a> {
    /// `web` or `api`.
    pub via: &'a str,
    /// e.g. `create`, `update`, `delete`, `login`, `pin`.
    pub action: &'a str,
    /// e.g. `fleet(3)`.
    pub target: &'a str,
    pub detail: Option<&'a str>,
}

/// Records `entry` done by `actor` (a user; other actors are not audited
/// here) on that user's own data. A failure is logged, never answered: the
/// change it describes has already been made.
pub async fn record(db: &Db, actor: &Actor, entry: Entry<'_>) {
    let Actor::User { id, .. } = actor else {
        return;
    };
    record_for(db, *id, *id, entry).await;
}

/// Records `entry` done by user `actor` on the data of user `owner`.
pub async fn record_for(db: &Db, actor: i64, owner: i64, entry: Entry<'_>) {
    let r = sqlx::query(
        "INSERT INTO audit_log (at, actor, owner, via, action, target, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(db::now())
    .bind(actor)
    .bind(owner)
    .bind(entry.via)
    .bind(entry.action)
    .bind(entry.target)
    .bind(entry.detail)
    .execute(&db.pool)
    .await;
    if let Err(e) = r {
        tracing::warn!(
            actor,
            target = entry.target,
            "writing the audit log failed: {e}"
        );
    }
}
