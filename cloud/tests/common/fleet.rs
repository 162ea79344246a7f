//! A simulated fleet: many fake devices in one real fleet, each following a
//! script, reporting what a supervisor would report for the release its
//! target state names. The devices are rows written in bulk (registering
//! 1,000 devices one request at a time would only time the HTTP stack);
//! their reports are written into the same columns `PATCH /device/v3/state`
//! writes, and what each device runs is what its target state resolves to
//! (`pinned_release`, then `rollout_release`, then the fleet's target).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{json, Value};
use sqlx::Row;

use super::Server;

/// What a fake device does with the new release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// Runs it.
    Good,
    /// Its service exits again and again.
    CrashLoop,
    /// Never reports again once told to update.
    Silent,
}

pub struct SimFleet {
    pub fleet: i64,
    pub old_release: i64,
    pub new_release: i64,
    pub old_uuid: String,
    pub new_uuid: String,
    /// Device ids in creation order, with their scripts.
    pub devices: Vec<(i64, Script)>,
    /// Devices whose target ever named the new release.
    pub ever_new: BTreeSet<i64>,
}

fn release(s: &Server, key: &str, fleet: i64, image: &str) -> (i64, String) {
    let r = s.create(
        key,
        "release",
        json!({"fleet": fleet, "composition": {"services": {"main": {"image": image}}}}),
    );
    (
        r["id"].as_i64().unwrap(),
        r["uuid"].as_str().unwrap().to_owned(),
    )
}

impl SimFleet {
    /// A fleet `name` of `n` devices on an old release, with a new release
    /// ready; `script(i)` says what device `i` does.
    pub fn new(
        s: &Server,
        key: &str,
        name: &str,
        n: usize,
        script: impl Fn(usize) -> Script,
    ) -> Self {
        let (fleet, _) = s.fleet(key, name);
        let (old_release, old_uuid) = release(s, key, fleet, "127.0.0.1:1/app@sha256:0001");
        let (new_release, new_uuid) = release(s, key, fleet, "127.0.0.1:1/app@sha256:0002");
        assert_eq!(
            s.patch(
                &format!("/v1/fleet({fleet})"),
                key,
                json!({"target_release": old_release})
            )
            .status,
            204
        );
        let db = s.app.db.clone();
        let mut ids: Vec<i64> = s.rt.block_on(async {
            let mut tx = db.begin_write().await.unwrap();
            let mut ids = Vec::new();
            for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
                let values: Vec<String> = chunk
                    .iter()
                    .map(|i| {
                        let uuid = uuid::Uuid::new_v4().simple().to_string();
                        format!("('{uuid}', 'sim-{i}', {fleet}, 'qemuarm64', '2026-01-01T00:00:00Z')")
                    })
                    .collect();
                let sql = format!(
                    "INSERT INTO device (uuid, name, fleet, device_type, created_at) VALUES {} RETURNING id",
                    values.join(", ")
                );
                for r in sqlx::query(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&mut *tx)
                    .await
                    .unwrap()
                {
                    ids.push(r.try_get::<i64, _>(0).unwrap());
                }
            }
            tx.commit().await.unwrap();
            ids
        });
        ids.sort_unstable();
        let devices = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, script(i)))
            .collect();
        SimFleet {
            fleet,
            old_release,
            new_release,
            old_uuid,
            new_uuid,
            devices,
            ever_new: BTreeSet::new(),
        }
    }

    fn apps(release_uuid: &str, status: &str) -> String {
        json!({"app": {"release_uuid": release_uuid, "services": {"main": {
            "status": status, "release_uuid": release_uuid, "image": "img"}}}})
        .to_string()
    }

    /// The release each device's target resolves to (id by device).
    pub fn targets(&self, s: &Server) -> HashMap<i64, Option<i64>> {
        let db = s.app.db.clone();
        let fleet = self.fleet;
        s.rt.block_on(async move {
            sqlx::query(
                "SELECT d.id, COALESCE(d.pinned_release, d.rollout_release, f.target_release) \
                 FROM device d JOIN fleet f ON f.id = d.fleet WHERE d.fleet = $1",
            )
            .bind(fleet)
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.try_get(0).unwrap(), r.try_get(1).unwrap()))
            .collect()
        })
    }

    /// Every device looks at its target and reports, by its script.
    pub fn tick(&mut self, s: &Server) {
        let targets = self.targets(s);
        let mut groups: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for (id, script) in &self.devices {
            let on_new = targets.get(id).copied().flatten() == Some(self.new_release);
            if on_new {
                self.ever_new.insert(*id);
            }
            let apps = match (on_new, script) {
                (false, _) => Self::apps(&self.old_uuid, "running"),
                (true, Script::Good) => Self::apps(&self.new_uuid, "running"),
                (true, Script::CrashLoop) => Self::apps(&self.new_uuid, "exited"),
                (true, Script::Silent) => continue,
            };
            groups.entry(apps).or_default().push(*id);
        }
        let db = s.app.db.clone();
        s.rt.block_on(async move {
            let mut tx = db.begin_write().await.unwrap();
            for (apps, ids) in groups {
                for chunk in ids.chunks(500) {
                    let list: Vec<String> = chunk.iter().map(i64::to_string).collect();
                    let sql = format!(
                        "UPDATE device SET apps = $1, is_online = TRUE WHERE id IN ({})",
                        list.join(", ")
                    );
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(&apps)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                }
            }
            tx.commit().await.unwrap();
        });
    }

    /// Members of rollout `r` by wave (device id → wave index).
    pub fn waves(&self, s: &Server, rollout: i64) -> HashMap<i64, i64> {
        let db = s.app.db.clone();
        s.rt.block_on(async move {
            sqlx::query("SELECT device, wave FROM rollout_device WHERE rollout = $1")
                .bind(rollout)
                .fetch_all(&db.pool)
                .await
                .unwrap()
                .iter()
                .map(|r| (r.try_get(0).unwrap(), r.try_get(1).unwrap()))
                .collect()
        })
    }
}

/// A rollout body: percentage waves with `soak`/`timeout` seconds.
pub fn waves(percents: &[u32], soak: u64, timeout: u64) -> Value {
    Value::Array(
        percents
            .iter()
            .map(|p| json!({"percent": p, "soak_secs": soak, "timeout_secs": timeout}))
            .collect(),
    )
}
