//! The web dashboard over HTTP against a real resin-cloud, without a
//! browser: pages parsed with `scraper`. Login and logout, CSRF, failed
//! logins counted and slowed, expired sessions, tenants kept apart, HTML
//! escaping, paging and filters, API keys, the CSP header.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::web::Browser;
use common::{Backend, Server};
use serde_json::json;

const PW: &str = "correct horse battery";

fn login_logout_csrf_and_audit(backend: Backend) {
    let s = Server::start(backend);
    let (_, key) = s.web_user("alice", PW);
    let mut b = Browser::new(&s);

    // Not logged in: every page sends to the login page, remembering where.
    let p = b.get("/fleets/1?page=2");
    assert_eq!(p.status, 303);
    assert_eq!(p.location(), "/login?next=/fleets/1%3Fpage%3D2");

    // The login page: strict CSP, no inline script, a CSRF cookie.
    let p = b.get("/login");
    assert_eq!(p.status, 200);
    let csp = p.header("content-security-policy").expect("CSP header");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert_eq!(p.header("x-frame-options").as_deref(), Some("DENY"));
    for src in p.attrs("script", "src") {
        assert!(src.starts_with("/static/"), "{src}");
    }
    assert_eq!(p.texts("script").concat().trim(), "", "inline script");

    // The login form without its CSRF token: 403.
    let p = b.post("/login", &[("username", "alice"), ("password", PW)]);
    assert_eq!(p.status, 403, "{}", p.body);
    assert!(!b.cookies.contains_key("resin_session"));
    // Each login form comes with a fresh token.
    let csrf = p.csrf();

    // A wrong password: refused, slowed, no session.
    let t = Instant::now();
    let p = b.post(
        "/login",
        &[
            ("csrf", &csrf),
            ("username", "alice"),
            ("password", "wrong"),
        ],
    );
    assert_eq!(p.status, 401);
    assert!(t.elapsed() >= Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(p.text("#login-error"), "Wrong username or password.");
    assert!(!b.cookies.contains_key("resin_session"));
    // An unknown user looks the same.
    let csrf = p.csrf();
    let p = b.post(
        "/login",
        &[("csrf", &csrf), ("username", "nobody"), ("password", PW)],
    );
    assert_eq!(p.status, 401);

    // The right password: a strict, HttpOnly session cookie (no Secure on
    // plain HTTP), and back to where the user was going.
    let csrf = p.csrf();
    let p = b.post(
        "/login",
        &[
            ("csrf", &csrf),
            ("next", "/fleets/1?page=2"),
            ("username", "alice"),
            ("password", PW),
        ],
    );
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(p.location(), "/fleets/1?page=2");
    let cookie = p
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("resin_session="))
        .expect("session cookie");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(!cookie.contains("Secure"), "{cookie}");

    let p = b.get("/fleets");
    assert_eq!(p.status, 200);
    assert!(p.header("content-security-policy").is_some());
    assert_eq!(p.header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(p.text(".who"), "alice");
    assert!(!p.text("footer").is_empty() && p.text("footer").contains("Data read at"));
    let csrf = p.csrf();

    // Creating a fleet without the CSRF token: 403 and nothing made.
    let p = b.post("/fleets", &[("name", "f1"), ("device_type", "qemuarm64")]);
    assert_eq!(p.status, 403, "{}", p.body);
    assert!(p.text("#error-message").contains("CSRF"));
    let p = b.post(
        "/fleets",
        &[("csrf", "x"), ("name", "f1"), ("device_type", "qemuarm64")],
    );
    assert_eq!(p.status, 403);
    assert_eq!(s.get("/v1/fleet/$count", &key).body, "0");

    // With it: made, through the API's rules (a bad name is the API's 400).
    let p = b.post(
        "/fleets",
        &[
            ("csrf", &csrf),
            ("name", "f1"),
            ("device_type", "qemuarm64"),
        ],
    );
    assert_eq!(p.status, 303, "{}", p.body);
    let fleet_path = p.location();
    let p = b.get(&fleet_path);
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(p.text("#fleet-name"), "f1");
    assert_eq!(s.get("/v1/fleet/$count", &key).body, "1");
    let p = b.post(
        "/fleets",
        &[
            ("csrf", &csrf),
            ("name", "f1"),
            ("device_type", "qemuarm64"),
        ],
    );
    assert_eq!(p.status, 409, "a second f1: {}", p.body);

    // The audit log names the login and the fleet, web and API alike.
    s.create(
        &key,
        "fleet",
        json!({"name": "f2", "device_type": "qemuarm64"}),
    );
    let p = b.get("/audit");
    assert_eq!(p.status, 200);
    let rows = p.texts("#audit tbody tr");
    let fleet_id = fleet_path.trim_start_matches("/fleets/");
    assert!(
        rows.iter()
            .any(|r| r.contains("web") && r.contains(&format!("fleet({fleet_id})"))),
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r.contains("api") && r.contains("create")),
        "{rows:?}"
    );
    assert!(rows.iter().any(|r| r.contains("login")), "{rows:?}");

    // Logging out needs the token too, and ends the session for good.
    let old = b.cookies.clone();
    assert_eq!(b.post("/logout", &[]).status, 403);
    let p = b.post("/logout", &[("csrf", &csrf)]);
    assert_eq!(p.status, 303);
    assert_eq!(p.location(), "/login");
    assert!(!b.cookies.contains_key("resin_session"));
    b.cookies = old;
    let p = b.get("/fleets");
    assert_eq!(p.status, 303, "the old cookie is dead");
    assert!(p.location().starts_with("/login"));
}

fn expired_sessions_go_to_login(backend: Backend) {
    let s = Server::start(backend);
    s.web_user("alice", PW);
    let mut b = Browser::new(&s);
    assert_eq!(b.login("alice", PW).status, 303);
    assert_eq!(b.get("/fleets").status, 200);
    s.rt.block_on(
        sqlx::query("UPDATE web_session SET expires_at = '2000-01-01T00:00:00Z'")
            .execute(&s.app.db.pool),
    )
    .unwrap();
    let p = b.get("/settings");
    assert_eq!(p.status, 303);
    assert_eq!(p.location(), "/login?next=/settings");
    // An htmx request is told where to go, too.
    let p = b.request_with("GET", "/fleets", None, &[("HX-Request", "true")]);
    assert_eq!(p.status, 303);
    assert_eq!(
        p.header("hx-redirect").as_deref(),
        Some("/login?next=/fleets")
    );
    // A new password ends every session.
    assert_eq!(b.login("alice", PW).status, 303);
    assert_eq!(b.get("/fleets").status, 200);
    s.rt.block_on(resin_cloud::web::session::set_password(
        &s.app.db,
        "alice",
        "another long password",
    ))
    .unwrap();
    assert_eq!(b.get("/fleets").status, 303);
}

fn failed_logins_are_limited() {
    let s = Server::start_with(Backend::Sqlite, |c| c.auth_failures_per_min = 3);
    s.web_user("alice", PW);
    let mut b = Browser::new(&s);
    for _ in 0..3 {
        assert_eq!(b.login("alice", "wrong").status, 401);
    }
    // Over the limit: refused even with the right password.
    let p = b.login("alice", PW);
    assert_eq!(p.status, 429, "{}", p.body);
    assert!(p.header("retry-after").is_some());
    assert!(p.text("#login-error").contains("Too many failed logins"));
    assert!(!b.cookies.contains_key("resin_session"));
}

fn users_never_see_each_other(backend: Backend) {
    let s = Server::start(backend);
    let (_, a_key) = s.web_user("alice", PW);
    s.web_user("bob", PW);
    let (fleet, prov) = s.fleet(&a_key, "alice-secret-fleet");
    let (dev, uuid, dev_key) = s.device(&prov);
    assert_eq!(
        s.patch(
            &format!("/v1/device({dev})"),
            &a_key,
            json!({"name": "alice-secret-device"})
        )
        .status,
        204
    );
    let rel = s.create(
        &a_key,
        "release",
        json!({"fleet": fleet, "composition": {"services": {"main": {"image": "127.0.0.1:1/secret@sha256:0001"}}}}),
    );
    let rel = rel["id"].as_i64().unwrap();
    let r = s.raw(
        "POST",
        &format!("/device/v2/{uuid}/log-stream"),
        Some(&dev_key),
        &[("Content-Type", "application/x-ndjson")],
        b"{\"timestamp\":1,\"service\":\"main\",\"message\":\"alice-secret-log\"}\n".to_vec(),
    );
    assert_eq!(r.status, 200);

    // Alice sees her things.
    let mut a = Browser::new(&s);
    assert_eq!(a.login("alice", PW).status, 303);
    let p = a.get(&format!("/devices/{dev}"));
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(p.text("#device-name"), "alice-secret-device");
    assert!(p.body.contains("alice-secret-log"));

    // Bob sees none of them, by any id.
    let mut b = Browser::new(&s);
    assert_eq!(b.login("bob", PW).status, 303);
    let p = b.get("/fleets");
    assert!(!p.body.contains("alice-secret"), "{}", p.body);
    for path in [
        format!("/fleets/{fleet}"),
        format!("/fleets/{fleet}/releases"),
        format!("/fleets/{fleet}/image?version=1.0"),
        format!("/devices/{dev}"),
        format!("/devices/{dev}/logs.txt"),
        format!("/devices/{dev}/logs/stream"),
        format!("/releases/{rel}"),
    ] {
        let p = b.get(&path);
        assert_eq!(p.status, 404, "{path}: {}", p.body);
        for secret in ["alice-secret", &uuid, "sha256:0001"] {
            assert!(
                !p.body.contains(secret),
                "{path} shows {secret}: {}",
                p.body
            );
        }
    }
    // Nor can he change them.
    let csrf = b.csrf();
    for (path, fields) in [
        (format!("/devices/{dev}/pin"), vec![("release", "")]),
        (
            format!("/devices/{dev}/env"),
            vec![("name", "X"), ("value", "1")],
        ),
        (
            format!("/devices/{dev}/tags"),
            vec![("key", "k"), ("value", "v")],
        ),
        (
            format!("/fleets/{fleet}/target"),
            vec![("target_release", "")],
        ),
        (format!("/fleets/{fleet}/provisioning-key"), vec![]),
    ] {
        let mut f = fields.clone();
        f.push(("csrf", &csrf));
        let p = b.post(&path, &f);
        assert_eq!(p.status, 404, "{path}: {}", p.body);
    }
    // Pinning alice's release on a device of his own is refused too.
    let (bfleet, bprov) = s.fleet(&s.user("bob").1, "bob-fleet");
    let _ = bfleet;
    let (bdev, _, _) = s.device(&bprov);
    let p = b.post(
        &format!("/devices/{bdev}/pin"),
        &[("csrf", &csrf), ("release", &rel.to_string())],
    );
    assert!(matches!(p.status, 400 | 404), "{}: {}", p.status, p.body);
    let d = s.get(&format!("/v1/device({dev})"), &a_key).json();
    assert!(d["pinned_release"].is_null());
    let envs = s.get("/v1/device_env_var", &a_key).json();
    assert_eq!(envs["value"].as_array().unwrap().len(), 0);
    let p = b.get("/audit");
    assert!(!p.body.contains("alice"), "{}", p.body);
}

const XSS: &str = "<script>alert(1)</script>";

fn script_in_names_and_logs_is_escaped(backend: Backend) {
    let s = Server::start(backend);
    let (_, key) = s.web_user("alice", PW);
    let (fleet, prov) = s.fleet(&key, "f");
    let (dev, uuid, dev_key) = s.device(&prov);
    assert_eq!(
        s.patch(&format!("/v1/device({dev})"), &key, json!({"name": XSS}))
            .status,
        204
    );
    let line = json!({"timestamp": 1, "service": "main", "message": format!("log {XSS}")});
    let r = s.raw(
        "POST",
        &format!("/device/v2/{uuid}/log-stream"),
        Some(&dev_key),
        &[("Content-Type", "application/x-ndjson")],
        format!("{line}\n").into_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let mut b = Browser::new(&s);
    b.login("alice", PW);
    for path in [format!("/fleets/{fleet}"), format!("/devices/{dev}")] {
        let p = b.get(&path);
        assert_eq!(p.status, 200, "{}", p.body);
        assert!(!p.body.contains(XSS), "{path}: unescaped");
        // The only scripts are the static files, none inline.
        for src in p.attrs("script", "src") {
            assert!(src.starts_with("/static/"), "{src}");
        }
        assert_eq!(p.texts("script").concat().trim(), "");
        // And the user sees the name as typed.
        assert!(
            p.texts("a, span").iter().any(|t| t == XSS),
            "{path}: the name is not shown as text"
        );
    }
    let p = b.get(&format!("/devices/{dev}"));
    assert_eq!(p.text("#device-name"), XSS);
    assert!(p.text("#log-lines").contains(&format!("main log {XSS}")));
    // The download is plain text, not HTML.
    let p = b.get(&format!("/devices/{dev}/logs.txt"));
    assert_eq!(p.status, 200);
    assert!(p.header("content-type").unwrap().starts_with("text/plain"));
    assert!(p.body.contains(&format!("main log {XSS}")));
}

fn fleet_page_filters_sorts_and_pages(backend: Backend) {
    let s = Server::start(backend);
    let (_, key) = s.web_user("alice", PW);
    let sim = common::fleet::SimFleet::new(&s, &key, "big", 120, |_| common::fleet::Script::Good);
    let fleet = sim.fleet;
    let (first, _) = sim.devices[0];
    let (second, _) = sim.devices[1];
    s.create(
        &key,
        "device_tag",
        json!({"device": first, "tag_key": "site", "value": "north"}),
    );
    s.rt.block_on(
        sqlx::query("UPDATE device SET status = 'Updating', os_version = '9.9' WHERE id = $1")
            .bind(second)
            .execute(&s.app.db.pool),
    )
    .unwrap();
    let apps = json!({"app": {"release_uuid": sim.old_uuid, "services": {"main": {
        "status": "downloading", "release_uuid": sim.new_uuid, "image": "x", "download_progress": 42}}}});
    s.rt.block_on(
        sqlx::query("UPDATE device SET apps = $1 WHERE id = $2")
            .bind(apps.to_string())
            .bind(second)
            .execute(&s.app.db.pool),
    )
    .unwrap();
    let mut b = Browser::new(&s);
    b.login("alice", PW);

    let p = b.get(&format!("/fleets/{fleet}"));
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(p.text("#device-count"), "120");
    assert_eq!(p.texts("#device-table tbody tr").len(), 50);
    let next = p.attrs("a[rel=next]", "href");
    assert_eq!(next, vec![format!("/fleets/{fleet}?page=2")]);
    let p = b.get(&format!("/fleets/{fleet}?page=3"));
    assert_eq!(p.texts("#device-table tbody tr").len(), 20);
    assert!(p.attrs("a[rel=next]", "href").is_empty());

    let p = b.get(&format!("/fleets/{fleet}?tag=site%3Dnorth"));
    assert_eq!(p.text("#device-count"), "1");
    assert_eq!(
        p.attrs("#device-table tbody tr", "data-device-id"),
        vec![first.to_string()]
    );
    let p = b.get(&format!("/fleets/{fleet}?tag=site%3Dsouth"));
    assert_eq!(p.text("#device-count"), "0");
    let p = b.get(&format!("/fleets/{fleet}?status=Updating"));
    assert_eq!(
        p.attrs("#device-table tbody tr", "data-device-id"),
        vec![second.to_string()]
    );
    let row = p.texts("#device-table tbody tr").concat();
    assert!(row.contains("apps 42%"), "{row}");
    let p = b.get(&format!("/fleets/{fleet}?os=9.9&sort=status&dir=desc"));
    assert_eq!(p.text("#device-count"), "1");
    let p = b.get(&format!("/fleets/{fleet}?release={}", sim.old_release));
    assert_eq!(p.text("#device-count"), "120");
    let p = b.get(&format!("/fleets/{fleet}?release={}", sim.new_release));
    assert_eq!(p.text("#device-count"), "0");
    let p = b.get(&format!("/fleets/{fleet}?release=abc"));
    assert_eq!(p.status, 400);

    // Sorted by status descending, the one device with a status comes
    // first (NULLs sort low in SQLite and high in PostgreSQL, so ascending
    // is not compared).
    let p = b.get(&format!("/fleets/{fleet}?sort=name"));
    let names = p.texts("#device-table tbody tr td:first-child");
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);

    // Paging in every sort gives each device once, in the database's own
    // order (pages past the middle are read from the other end and turned
    // back: ties broken by id and NULLs must come out the same).
    for (sort, dir, order) in [
        ("name", "asc", "name ASC, id ASC"),
        ("name", "desc", "name DESC, id DESC"),
        ("status", "asc", "status ASC, id ASC"),
        ("status", "desc", "status DESC, id DESC"),
        ("last_seen", "asc", "last_seen ASC, id ASC"),
        ("os", "desc", "os_version DESC, id DESC"),
    ] {
        let want: Vec<String> = s.rt.block_on(async {
            let ids: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT id FROM device WHERE fleet = $1 ORDER BY {order}"
            )))
            .bind(fleet)
            .fetch_all(&s.app.db.pool)
            .await
            .unwrap();
            ids.iter().map(i64::to_string).collect()
        });
        let mut got = Vec::new();
        for page in 1..=3 {
            let p = b.get(&format!(
                "/fleets/{fleet}?sort={sort}&dir={dir}&page={page}"
            ));
            got.extend(p.attrs("#device-table tbody tr", "data-device-id"));
        }
        assert_eq!(got, want, "sort={sort} dir={dir}");
    }
    let p = b.get(&format!("/fleets/{fleet}?page=4"));
    assert_eq!(p.status, 200);
    assert_eq!(p.text("#device-table tbody"), "No devices match.");

    // The htmx refresh gets only the table.
    let p = b.request_with(
        "GET",
        &format!("/fleets/{fleet}?page=2"),
        None,
        &[("HX-Request", "true")],
    );
    assert!(!p.body.contains("<html"), "{}", p.body);
    assert_eq!(p.texts("#device-table tbody tr").len(), 50);

    // The device page shows the service's download progress.
    let p = b.get(&format!("/devices/{second}"));
    assert!(p.text("#services").contains("downloading"));
    assert!(p.text("#services").contains("42%"));
}

fn api_keys_from_the_settings_page(backend: Backend) {
    let s = Server::start(backend);
    s.web_user("alice", PW);
    let mut b = Browser::new(&s);
    b.login("alice", PW);
    let csrf = b.csrf();
    let p = b.post(
        "/settings/keys",
        &[("csrf", &csrf), ("name", "ci"), ("scope", "read-only")],
    );
    assert_eq!(p.status, 200, "{}", p.body);
    let new_key = p.text("#new-key");
    assert!(new_key.starts_with("resin_u_"), "{new_key}");
    assert_eq!(s.get("/v1/fleet", &new_key).status, 200);
    let r = s.post(
        "/v1/fleet",
        &new_key,
        json!({"name": "x", "device_type": "qemuarm64"}),
    );
    assert_eq!(r.status, 403, "read-only: {}", r.body);
    let p = b.get("/settings");
    let ids = p.attrs("#api-keys tbody tr", "data-key-id");
    assert_eq!(ids.len(), 2, "bootstrap's and the new one");
    let id = ids.last().unwrap();
    assert_eq!(
        b.post(&format!("/settings/keys/{id}/revoke"), &[]).status,
        403
    );
    let p = b.post(&format!("/settings/keys/{id}/revoke"), &[("csrf", &csrf)]);
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(s.get("/v1/fleet", &new_key).status, 401);
}

fn static_files_and_unknown_pages() {
    let s = Server::start(Backend::Sqlite);
    let mut b = Browser::new(&s);
    let p = b.get("/static/htmx.min.js");
    assert_eq!(p.status, 200);
    assert!(p
        .header("content-type")
        .unwrap()
        .starts_with("text/javascript"));
    assert!(p.body.starts_with("var htmx="));
    assert!(p.header("content-security-policy").is_some());
    let p = b.get("/static/logs.js");
    assert_eq!(p.status, 200);
    let p = b.get("/static/nope.js");
    assert_eq!(p.status, 404);
    assert!(p.header("content-type").unwrap().starts_with("text/html"));
    // The API keeps its JSON errors.
    let p = b.get("/v1/nope");
    assert_eq!(p.status, 401);
    assert!(p
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
}

#[test]
fn sqlite_failed_logins_are_limited() {
    failed_logins_are_limited()
}

#[test]
fn sqlite_static_files_and_unknown_pages() {
    static_files_and_unknown_pages()
}

fn bulk_actions_and_fleet_vars(backend: Backend) {
    let s = Server::start(backend);
    let (_, key) = s.web_user("alice", PW);
    let (_, bob_key) = s.web_user("bob", PW);
    let (fleet, prov) = s.fleet(&key, "f");
    let (a, _, _) = s.device(&prov);
    let (b2, _, _) = s.device(&prov);
    let (c, _, _) = s.device(&prov);
    let (_, bob_prov) = s.fleet(&bob_key, "bf");
    let (bob_dev, _, _) = s.device(&bob_prov);
    let rel = s.create(
        &key,
        "release",
        json!({"fleet": fleet, "composition": {"services": {"main": {"image": "127.0.0.1:1/app@sha256:0001"}}}}),
    )["id"]
        .as_i64()
        .unwrap();
    let mut b = Browser::new(&s);
    b.login("alice", PW);
    let csrf = b.csrf();
    let path = format!("/fleets/{fleet}/bulk");
    let (a_s, b_s, rel_s) = (a.to_string(), b2.to_string(), rel.to_string());
    let pinned =
        |id: i64| s.get(&format!("/v1/device({id})"), &key).json()["pinned_release"].clone();

    // Without the token: nothing changes.
    let p = b.post(
        &path,
        &[("device", &a_s), ("action", "pin"), ("release", &rel_s)],
    );
    assert_eq!(p.status, 403);
    assert!(pinned(a).is_null());
    // Pin two of three.
    let p = b.post(
        &path,
        &[
            ("csrf", &csrf),
            ("device", &a_s),
            ("device", &b_s),
            ("action", "pin"),
            ("release", &rel_s),
        ],
    );
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(pinned(a), json!(rel));
    assert_eq!(pinned(b2), json!(rel));
    assert!(pinned(c).is_null());
    // Tag them, filter by the tag, untag.
    let p = b.post(
        &path,
        &[
            ("csrf", &csrf),
            ("device", &a_s),
            ("device", &b_s),
            ("action", "tag"),
            ("tag", "site=north"),
        ],
    );
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(
        b.get(&format!("/fleets/{fleet}?tag=site%3Dnorth"))
            .text("#device-count"),
        "2"
    );
    let p = b.post(
        &path,
        &[
            ("csrf", &csrf),
            ("device", &a_s),
            ("action", "untag"),
            ("tag", "site"),
        ],
    );
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(
        b.get(&format!("/fleets/{fleet}?tag=site"))
            .text("#device-count"),
        "1"
    );
    // Another user's device in the list: refused, nothing changed.
    let p = b.post(
        &path,
        &[
            ("csrf", &csrf),
            ("device", &bob_dev.to_string()),
            ("action", "pin"),
            ("release", ""),
        ],
    );
    assert_eq!(p.status, 404, "{}", p.body);
    // Unpin through the bulk form.
    let p = b.post(
        &path,
        &[
            ("csrf", &csrf),
            ("device", &a_s),
            ("action", "pin"),
            ("release", ""),
        ],
    );
    assert_eq!(p.status, 303);
    assert!(pinned(a).is_null());
    let p = b.post(&path, &[("csrf", &csrf), ("action", "pin")]);
    assert_eq!(p.status, 400, "no device selected");

    // Fleet env and config vars.
    let p = b.post(
        &format!("/fleets/{fleet}/env"),
        &[("csrf", &csrf), ("name", "MODE"), ("value", "fast")],
    );
    assert_eq!(p.status, 303, "{}", p.body);
    let p = b.post(
        &format!("/fleets/{fleet}/config"),
        &[
            ("csrf", &csrf),
            ("name", "RESIN_SUPERVISOR_POLL_INTERVAL"),
            ("value", "30000"),
        ],
    );
    assert_eq!(p.status, 303, "{}", p.body);
    let p = b.get(&format!("/fleets/{fleet}"));
    assert!(p.text("#fleet-env").contains("MODE"));
    assert!(p.text("#fleet-config").contains("30000"));
    let envs = s.get("/v1/fleet_env_var", &key).json();
    assert_eq!(envs["value"][0]["value"], "fast");
    let p = b.post(
        &format!("/fleets/{fleet}/env"),
        &[("csrf", &csrf), ("name", "MODE"), ("delete", "1")],
    );
    assert_eq!(p.status, 303);
    assert_eq!(s.get("/v1/fleet_env_var/$count", &key).body, "0");
    // Bob cannot set alice's fleet vars.
    let mut bob = Browser::new(&s);
    bob.login("bob", PW);
    let bcsrf = bob.csrf();
    let p = bob.post(
        &format!("/fleets/{fleet}/env"),
        &[("csrf", &bcsrf), ("name", "X"), ("value", "1")],
    );
    assert_eq!(p.status, 404);
    let p = bob.post(
        &path,
        &[
            ("csrf", &bcsrf),
            ("device", &a_s),
            ("action", "pin"),
            ("release", ""),
        ],
    );
    assert_eq!(p.status, 404);
}

/// The device's target state (as the device polls it).
fn target(s: &Server, uuid: &str, dev_key: &str) -> serde_json::Value {
    let r = s.raw(
        "GET",
        &format!("/device/v3/{uuid}/state"),
        Some(dev_key),
        &[],
        vec![],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()[uuid].clone()
}

fn device_actions_and_bulk_reboot_and_move(backend: Backend) {
    let s = Server::start(backend);
    let (_, key) = s.web_user("alice", PW);
    let (_, bob_key) = s.web_user("bob", PW);
    let (fleet, prov) = s.fleet(&key, "f");
    let (fleet2, _) = s.fleet(&key, "f2");
    let other_type = s.create(
        &key,
        "fleet",
        json!({"name": "pis", "device_type": "raspberrypi4-64"}),
    )["id"]
        .as_i64()
        .unwrap();
    let (bob_fleet, _) = s.fleet(&bob_key, "bf");
    let rel = s.create(
        &key,
        "release",
        json!({"fleet": fleet, "composition": {"services": {"main": {"image": "127.0.0.1:1/app@sha256:0001"}}}}),
    )["id"]
        .as_i64()
        .unwrap();
    assert!(
        s.patch(
            &format!("/v1/fleet({fleet})"),
            &key,
            json!({"target_release": rel})
        )
        .status
            < 300
    );
    let (dev, uuid, dev_key) = s.device(&prov);
    let (dev2, uuid2, dev2_key) = s.device(&prov);
    let report = json!({uuid.clone(): {"status": "Idle",
        "apps": {"a1": {"release_uuid": "r1", "services": {"main": {"status": "running",
            "release_uuid": "r1", "image": "127.0.0.1:1/app@sha256:0001"}}}}}});
    let r = s.req("PATCH", "/device/v3/state", Some(&dev_key), Some(&report));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(target(&s, &uuid, &dev_key).get("actions").is_none());
    let count = |dev: i64| {
        s.get(&format!("/v1/device({dev})/actions"), &key).json()["value"]
            .as_array()
            .unwrap()
            .len()
    };

    let mut b = Browser::new(&s);
    b.login("alice", PW);
    let p = b.get(&format!("/devices/{dev}"));
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(p.text("#action-list tbody"), "No actions yet.");
    // A restart button on the service's row, a reboot button.
    assert_eq!(
        p.attrs("form.restart-service input[name=service]", "value"),
        vec!["main"]
    );
    let csrf = p.csrf();
    let path = format!("/devices/{dev}/actions");

    // Without the token: 403, nothing queued.
    let p = b.post(&path, &[("action", "reboot")]);
    assert_eq!(p.status, 403);
    assert_eq!(count(dev), 0);

    // The reboot button: queued, and in the device's target state.
    let p = b.post(&path, &[("csrf", &csrf), ("action", "reboot")]);
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(p.location(), format!("/devices/{dev}#actions"));
    let t = target(&s, &uuid, &dev_key);
    let acts = t["actions"].as_array().expect("actions in the target");
    assert_eq!(acts.len(), 1, "{t}");
    assert_eq!(acts[0]["action"], "reboot");
    // Restart one service, from its row.
    let p = b.post(
        &path,
        &[("csrf", &csrf), ("action", "restart"), ("service", "main")],
    );
    assert_eq!(p.status, 303, "{}", p.body);
    let t = target(&s, &uuid, &dev_key);
    assert_eq!(t["actions"][1]["action"], "restart");
    assert_eq!(t["actions"][1]["service"], "main");
    // A service the release does not have: the API's 400, shown as a page.
    let p = b.post(
        &path,
        &[("csrf", &csrf), ("action", "restart"), ("service", "nope")],
    );
    assert_eq!(p.status, 400, "{}", p.body);
    assert!(
        p.text("#error-message").contains("no service named"),
        "{}",
        p.body
    );
    assert_eq!(count(dev), 2);
    // The page lists them, newest first.
    let p = b.get(&format!("/devices/{dev}"));
    let rows = p.texts("#action-list tbody tr");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows[0].contains("restart") && rows[0].contains("main") && rows[0].contains("pending"),
        "{rows:?}"
    );
    assert!(rows[1].contains("reboot"), "{rows:?}");

    // Pin, then the unpin button.
    let p = b.post(
        &format!("/devices/{dev}/pin"),
        &[("csrf", &csrf), ("release", &rel.to_string())],
    );
    assert_eq!(p.status, 303);
    let p = b.get(&format!("/devices/{dev}"));
    assert_eq!(p.attrs("#unpin input[name=release]", "value"), vec![""]);
    let p = b.post(
        &format!("/devices/{dev}/pin"),
        &[("csrf", &csrf), ("release", "")],
    );
    assert_eq!(p.status, 303);
    assert!(s.get(&format!("/v1/device({dev})"), &key).json()["pinned_release"].is_null());
    assert!(b
        .get(&format!("/devices/{dev}"))
        .attrs("#unpin", "id")
        .is_empty());

    // Bob can neither act on alice's device nor see that it exists.
    let mut bob = Browser::new(&s);
    bob.login("bob", PW);
    let bcsrf = bob.csrf();
    let p = bob.post(&path, &[("csrf", &bcsrf), ("action", "reboot")]);
    assert_eq!(p.status, 404, "{}", p.body);
    assert!(!p.body.contains(&uuid));
    let p = bob.post(
        &format!("/fleets/{bob_fleet}/bulk"),
        &[
            ("csrf", &bcsrf),
            ("device", &dev.to_string()),
            ("action", "reboot"),
        ],
    );
    assert_eq!(p.status, 404, "{}", p.body);
    let p = bob.post(
        &format!("/fleets/{fleet}/bulk"),
        &[
            ("csrf", &bcsrf),
            ("device", &dev.to_string()),
            ("action", "reboot"),
        ],
    );
    assert_eq!(p.status, 404, "{}", p.body);
    assert_eq!(count(dev), 2, "bob queued nothing");
    assert_eq!(
        target(&s, &uuid, &dev_key)["actions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Bulk reboot of both devices.
    let bulk = format!("/fleets/{fleet}/bulk");
    let (d1, d2) = (dev.to_string(), dev2.to_string());
    let p = b.post(
        &bulk,
        &[
            ("csrf", &csrf),
            ("device", &d1),
            ("device", &d2),
            ("action", "reboot"),
        ],
    );
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(count(dev), 3);
    assert_eq!(
        target(&s, &uuid2, &dev2_key)["actions"][0]["action"],
        "reboot"
    );

    // Bulk move: the fleet page offers alice's other fleet of the same type.
    let p = b.get(&format!("/fleets/{fleet}"));
    let offered = p.attrs("#bulk-to-fleet option", "value");
    assert!(offered.contains(&fleet2.to_string()), "{offered:?}");
    assert!(!offered.contains(&other_type.to_string()), "{offered:?}");
    assert!(!offered.contains(&bob_fleet.to_string()), "{offered:?}");
    let fleet_of = |d: i64| s.get(&format!("/v1/device({d})"), &key).json()["fleet"].clone();
    // To another device type: the API's 409; to bob's fleet: 404.
    for (to, status) in [(other_type, 409), (bob_fleet, 404)] {
        let p = b.post(
            &bulk,
            &[
                ("csrf", &csrf),
                ("device", &d2),
                ("action", "move"),
                ("to_fleet", &to.to_string()),
            ],
        );
        assert_eq!(p.status, status, "{}", p.body);
        assert_eq!(fleet_of(dev2), json!(fleet));
    }
    let p = b.post(
        &bulk,
        &[
            ("csrf", &csrf),
            ("device", &d2),
            ("action", "move"),
            ("to_fleet", &fleet2.to_string()),
        ],
    );
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(fleet_of(dev2), json!(fleet2));
    assert_eq!(fleet_of(dev), json!(fleet));
    assert_eq!(
        b.get(&format!("/fleets/{fleet2}")).text("#device-count"),
        "1"
    );
}

fn os_update_history_on_the_device_page(backend: Backend) {
    let s = Server::start(backend);
    let (_, key) = s.web_user("alice", PW);
    s.web_user("bob", PW);
    let (_, prov) = s.fleet(&key, "f");
    let (dev, uuid, dev_key) = s.device(&prov);
    let report = |os_version: &str, os: serde_json::Value| {
        let r = s.req(
            "PATCH",
            "/device/v3/state",
            Some(&dev_key),
            Some(&json!({uuid.clone(): {"os_version": os_version, "os_update": os}})),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    };
    // A fake device updates 1.0 → 2.0, which is rolled back; then 1.0 →
    // 2.1, committed.
    report("1.0", json!({"state": "idle"}));
    for (v, os) in [
        (
            "1.0",
            json!({"state": "downloading", "target_version": "2.0", "progress": 10}),
        ),
        (
            "1.0",
            json!({"state": "downloading", "target_version": "2.0", "progress": 60}),
        ),
        (
            "1.0",
            json!({"state": "installing", "target_version": "2.0", "progress": 0}),
        ),
        (
            "1.0",
            json!({"state": "rebooting", "target_version": "2.0"}),
        ),
        (
            "2.0",
            json!({"state": "verifying", "target_version": "2.0", "boot_slot": "rootfs.1"}),
        ),
        (
            "1.0",
            json!({"state": "rolled-back", "target_version": "2.0",
            "reason": "health check <b>failed</b>: web not running", "boot_slot": "rootfs.0"}),
        ),
        ("1.0", json!({"state": "idle"})),
        (
            "1.0",
            json!({"state": "downloading", "target_version": "2.1"}),
        ),
        (
            "1.0",
            json!({"state": "installing", "target_version": "2.1"}),
        ),
        (
            "1.0",
            json!({"state": "rebooting", "target_version": "2.1"}),
        ),
        (
            "2.1",
            json!({"state": "committed", "target_version": "2.1", "boot_slot": "rootfs.1"}),
        ),
        ("2.1", json!({"state": "idle"})),
    ] {
        report(v, os);
    }
    let mut b = Browser::new(&s);
    b.login("alice", PW);
    let p = b.get(&format!("/devices/{dev}"));
    assert_eq!(p.status, 200, "{}", p.body);
    let rows: Vec<Vec<String>> = {
        let html = p.html();
        let tr = scraper::Selector::parse("#os-events tbody tr").unwrap();
        let td = scraper::Selector::parse("td").unwrap();
        html.select(&tr)
            .map(|r| {
                r.select(&td)
                    .map(|c| c.text().collect::<String>().trim().to_owned())
                    .collect()
            })
            .collect()
    };
    // Newest first; progress within a state and the returns to idle are not
    // events: (state, running OS, target OS, reason, slot).
    let want = [
        ("rebooting → committed", "2.1", "2.1", "", "rootfs.1"),
        ("installing → rebooting", "1.0", "2.1", "", ""),
        ("downloading → installing", "1.0", "2.1", "", ""),
        ("idle → downloading", "1.0", "2.1", "", ""),
        (
            "verifying → rolled-back",
            "1.0",
            "2.0",
            "health check <b>failed</b>: web not running",
            "rootfs.0",
        ),
        ("rebooting → verifying", "2.0", "2.0", "", "rootfs.1"),
        ("installing → rebooting", "1.0", "2.0", "", ""),
        ("downloading → installing", "1.0", "2.0", "", ""),
        ("idle → downloading", "1.0", "2.0", "", ""),
    ];
    assert_eq!(rows.len(), want.len(), "{rows:?}");
    for (row, (state, os, target, reason, slot)) in rows.iter().zip(want) {
        assert_eq!(&row[1..], &[state, os, target, reason, slot], "{rows:?}");
        assert!(row[0].ends_with('Z'), "a time: {row:?}");
    }
    assert!(!p.body.contains("<b>failed"), "the reason is escaped");
    assert!(p.attrs("#os-older", "href").is_empty(), "one page");

    // Bob cannot read it, by any query.
    let mut bob = Browser::new(&s);
    bob.login("bob", PW);
    for path in [
        format!("/devices/{dev}"),
        format!("/devices/{dev}?os_before=999999"),
    ] {
        let p = bob.get(&path);
        assert_eq!(p.status, 404, "{path}");
        assert!(!p.body.contains("health check"), "{path}: {}", p.body);
    }

    // Bounded, and paged 20 at a time with an "older" link.
    for i in 0..100 {
        report(
            "2.1",
            json!({"state": "downloading", "target_version": "3.0"}),
        );
        report(
            "2.1",
            json!({"state": "failed", "target_version": "3.0", "reason": format!("try {i}")}),
        );
    }
    let kept: i64 = s.rt.block_on(async {
        sqlx::query_scalar("SELECT COUNT(*) FROM os_update_event WHERE device = $1")
            .bind(dev)
            .fetch_one(&s.app.db.pool)
            .await
            .unwrap()
    });
    assert_eq!(kept, resin_cloud::os_history::KEEP);
    let mut path = format!("/devices/{dev}");
    let mut seen = Vec::new();
    loop {
        let p = b.get(&path);
        assert_eq!(p.status, 200, "{path}");
        let ids = p.attrs("#os-events tbody tr", "data-event-id");
        assert!(ids.len() <= 20, "{}", ids.len());
        seen.extend(ids.iter().map(|i| i.parse::<i64>().unwrap()));
        match p.attrs("#os-older", "href").pop() {
            // A browser keeps the fragment to itself.
            Some(next) => path = next.split('#').next().unwrap().to_owned(),
            None => break,
        }
    }
    assert_eq!(seen.len() as i64, resin_cloud::os_history::KEEP);
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first, no repeats"
    );
    let first = b.get(&format!("/devices/{dev}"));
    assert!(first.texts("#os-events tbody tr")[0].contains("try 99"));
}

/// A multipart/form-data body: text fields, then files (name, file name, bytes).
fn multipart(fields: &[(&str, &str)], files: &[(&str, &str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "----resin-test-boundary-7d1f";
    let mut body = Vec::new();
    for (k, v) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    for (k, file, data) in files {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"; filename=\"{file}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn os_release_upload_page(backend: Backend) {
    use sha2::Digest;
    let s = Server::start(backend);
    let (_, key) = s.web_user("alice", PW);
    s.web_user("bob", PW);
    let work = tempfile::tempdir().unwrap();
    let bundle = std::fs::read(common::image::small_bundle(work.path(), "2.0")).unwrap();
    let image = std::fs::read(common::image::base_image(work.path())).unwrap();
    let mut b = Browser::new(&s);
    b.login("alice", PW);
    let p = b.get("/os-releases");
    assert_eq!(p.status, 200);
    assert_eq!(
        p.attrs("#os-upload", "enctype"),
        vec!["multipart/form-data"]
    );
    let csrf = p.csrf();
    let upload = |b: &mut Browser, fields: &[(&str, &str)], files: &[(&str, &str, &[u8])]| {
        let (ctype, body) = multipart(fields, files);
        b.request_with(
            "POST",
            "/os-releases",
            Some(body),
            &[("Content-Type", &ctype)],
        )
    };
    let count = || s.get("/v1/os_release/$count", &key).body;
    // Nothing of a refused upload stays: no row, no file, no temp file.
    let os_dir = s.app.config.data_dir.join("os");
    let files_left = || -> Vec<String> { walk(&os_dir) };
    let meta = [
        ("csrf", csrf.as_str()),
        ("device_type", "qemuarm64"),
        ("version", "2.0"),
    ];

    // Without the CSRF token: 403, nothing made.
    let p = upload(&mut b, &meta[1..], &[("bundle", "b.raucb", &bundle)]);
    assert_eq!(p.status, 403, "{}", p.body);
    assert_eq!(count(), "0");
    // Not a bundle: a clear 400, nothing made.
    let p = upload(&mut b, &meta, &[("bundle", "b.raucb", b"bundle bytes")]);
    assert_eq!(p.status, 400, "{}", p.body);
    assert!(
        p.text("#error-message").contains("not a RAUC bundle"),
        "{}",
        p.body
    );
    assert_eq!(count(), "0");
    assert_eq!(files_left(), Vec::<String>::new());
    // A bundle cut short (its signature lost): the same.
    let p = upload(
        &mut b,
        &meta,
        &[("bundle", "b.raucb", &bundle[..bundle.len() - 100])],
    );
    assert_eq!(p.status, 400, "{}", p.body);
    assert!(p.text("#error-message").contains("signature"), "{}", p.body);
    // A good bundle with a bad image: the release goes again, files and all.
    let p = upload(
        &mut b,
        &meta,
        &[
            ("bundle", "b.raucb", &bundle),
            ("image", "x.img", b"not an image"),
        ],
    );
    assert_eq!(p.status, 400, "{}", p.body);
    assert!(
        p.text("#error-message").contains("not a resin disk image"),
        "{}",
        p.body
    );
    assert_eq!(count(), "0");
    assert_eq!(files_left(), Vec::<String>::new());
    // No bundle chosen: 400.
    let p = upload(&mut b, &meta, &[("bundle", "", b"")]);
    assert_eq!(p.status, 400, "{}", p.body);
    assert_eq!(count(), "0");

    // The real thing: bundle and image, stored as the API stores them.
    let p = upload(
        &mut b,
        &meta,
        &[
            ("bundle", "resin-2.0.raucb", &bundle),
            ("image", "resin.img", &image),
        ],
    );
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(p.location(), "/os-releases");
    let rows = s.get("/v1/os_release", &key).json()["value"].clone();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    let row = &rows[0];
    assert_eq!(row["version"], "2.0");
    assert_eq!(row["device_type"], "qemuarm64");
    assert_eq!(row["bundle_size"], bundle.len() as u64);
    assert_eq!(row["bundle_sha256"], hex(&sha2::Sha256::digest(&bundle)));
    assert_eq!(row["image_size"], image.len() as u64);
    let id = row["id"].as_i64().unwrap();
    assert_eq!(
        std::fs::read(os_dir.join(id.to_string()).join("bundle.raucb")).unwrap(),
        bundle
    );
    let p = b.get("/os-releases");
    assert!(p.text("#os-releases tbody").contains("2.0"), "{}", p.body);
    // The same version again: the API's 409; the first is untouched.
    let p = upload(&mut b, &meta, &[("bundle", "b.raucb", &bundle)]);
    assert_eq!(p.status, 409, "{}", p.body);
    assert_eq!(count(), "1");
    assert_eq!(files_left().len(), 2, "{:?}", files_left());
    // The audit log names the upload.
    assert!(b
        .get("/audit")
        .text("#audit tbody")
        .contains(&format!("os_release({id})")));
    // Bob does not see alice's (private) release.
    let mut bob = Browser::new(&s);
    bob.login("bob", PW);
    assert!(!bob
        .get("/os-releases")
        .text("#os-releases tbody")
        .contains("2.0"));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every file under `dir` (relative paths), sorted.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn rollout_buttons_change_the_rollout(backend: Backend) {
    let s = Server::start(backend);
    let (_, key) = s.web_user("alice", PW);
    let (_, bob_key) = s.web_user("bob", PW);
    let (fleet, prov) = s.fleet(&key, "f");
    let (bob_fleet, _) = s.fleet(&bob_key, "bf");
    s.device(&prov);
    let rel = s.create(
        &key,
        "release",
        json!({"fleet": fleet, "composition": {"services": {"main": {"image": "127.0.0.1:1/app@sha256:0001"}}}}),
    )["id"]
        .as_i64()
        .unwrap();
    let r = s.post(
        "/v1/rollout",
        &key,
        json!({"fleet": fleet, "release": rel, "waves": common::fleet::waves(&[50, 100], 60, 600)}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_i64().unwrap();
    assert_eq!(
        s.post(&format!("/v1/rollout({id})/start"), &key, json!({}))
            .status,
        200
    );
    let state = || s.get(&format!("/v1/rollout({id})"), &key).json()["state"].clone();
    assert_eq!(state(), "running");

    let mut b = Browser::new(&s);
    b.login("alice", PW);
    let page = |b: &mut Browser| b.get(&format!("/fleets/{fleet}"));
    let p = page(&mut b);
    let row = format!("#rollouts tr[data-rollout-id='{id}']");
    assert!(p.text(&row).contains("running"), "{}", p.text(&row));
    let buttons = p.attrs(&format!("{row} form"), "action");
    let url = |a: &str| format!("/fleets/{fleet}/rollouts/{id}/{a}");
    assert_eq!(buttons, vec![url("pause"), url("resume"), url("halt")]);
    let csrf = p.csrf();

    // Without the token: 403, still running.
    assert_eq!(b.post(&url("pause"), &[]).status, 403);
    assert_eq!(state(), "running");
    // Each button moves the rollout, and the page shows where it is.
    for (action, after) in [
        ("pause", "paused"),
        ("resume", "running"),
        ("halt", "halted"),
    ] {
        let p = b.post(&url(action), &[("csrf", &csrf)]);
        assert_eq!(p.status, 303, "{action}: {}", p.body);
        assert_eq!(p.location(), format!("/fleets/{fleet}"));
        assert_eq!(state(), after, "after {action}");
        assert!(page(&mut b).text(&row).contains(after), "{action}");
    }
    // A button the state machine does not allow: the API's 409, unchanged.
    let p = b.post(&url("pause"), &[("csrf", &csrf)]);
    assert_eq!(p.status, 409, "{}", p.body);
    assert_eq!(state(), "halted");

    // Bob cannot press alice's buttons, under either fleet's path.
    let mut bob = Browser::new(&s);
    bob.login("bob", PW);
    let bcsrf = bob.csrf();
    for path in [
        url("resume"),
        format!("/fleets/{bob_fleet}/rollouts/{id}/resume"),
    ] {
        let p = bob.post(&path, &[("csrf", &bcsrf)]);
        assert_eq!(p.status, 404, "{path}: {}", p.body);
    }
    assert_eq!(state(), "halted");
    // The audit log names the presses.
    let audit = b.get("/audit").texts("#audit tbody tr");
    for a in ["pause", "resume", "halt"] {
        assert!(
            audit
                .iter()
                .any(|r| r.contains(a) && r.contains(&format!("rollout({id})"))),
            "{a}: {audit:?}"
        );
    }
}

fn release_page_shows_its_build_log(backend: Backend) {
    let s = Server::start(backend);
    let (uid, key) = s.web_user("alice", PW);
    s.web_user("bob", PW);
    let (fleet, _) = s.fleet(&key, "f");
    let mk = || {
        s.create(
            &key,
            "release",
            json!({"fleet": fleet, "composition": {"services": {"main": {"image": "127.0.0.1:1/app@sha256:0001"}}}}),
        )["id"]
            .as_i64()
            .unwrap()
    };
    let (by_api, built) = (mk(), mk());
    // A build that made `built`, with its log, as the builder stores it.
    s.rt.block_on(async {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO build (uuid, fleet, \"user\", status, source, context_path, \"release\", \
             created_at) VALUES ('b1', $1, $2, 'success', 'api', '/nonexistent', $3, \
             '2026-12-02T00:00:00Z') RETURNING id",
        )
        .bind(fleet)
        .bind(uid)
        .bind(built)
        .fetch_one(&s.app.db.pool)
        .await
        .unwrap();
        for line in [
            json!({"message": "build 1 of fleet f"}),
            json!({"service": "main", "message": "Step 1/2 : FROM alpine", "state": "building"}),
            json!({"service": "main", "message": format!("warning: {XSS}"), "isError": true}),
            json!({"message": "done", "state": "success", "release": built}),
        ] {
            sqlx::query("INSERT INTO build_log (build, line) VALUES ($1, $2)")
                .bind(id)
                .bind(line.to_string())
                .execute(&s.app.db.pool)
                .await
                .unwrap();
        }
    });
    let mut b = Browser::new(&s);
    b.login("alice", PW);
    let p = b.get(&format!("/releases/{by_api}"));
    assert_eq!(p.status, 200, "{}", p.body);
    assert!(p
        .text("#build-log-none")
        .contains("not built by resin's builder"));
    let p = b.get(&format!("/releases/{built}"));
    assert_eq!(p.status, 200, "{}", p.body);
    let lines: Vec<String> = p
        .texts("#build-log span.line")
        .iter()
        .map(|l| l.trim().to_owned())
        .collect();
    assert_eq!(
        lines,
        [
            "build 1 of fleet f".to_owned(),
            "[main] Step 1/2 : FROM alpine (building)".to_owned(),
            format!("[main] warning: {XSS}"),
            "done (success)".to_owned(),
        ]
    );
    assert!(!p.body.contains(XSS), "escaped");
    assert_eq!(p.attrs("#build-log span.err", "class").len(), 1);
    // The same log as the API's.
    let api = s.get(&format!("/v1/release({built})/logs"), &key);
    assert_eq!(api.status, 200);
    assert_eq!(api.body.lines().count(), 4);
    let mut bob = Browser::new(&s);
    bob.login("bob", PW);
    let p = bob.get(&format!("/releases/{built}"));
    assert_eq!(p.status, 404);
    assert!(!p.body.contains("FROM alpine"));
}

fn saved_views_of_the_device_table(backend: Backend) {
    let s = Server::start(backend);
    let (_, key) = s.web_user("alice", PW);
    s.web_user("bob", PW);
    let (fleet, prov) = s.fleet(&key, "f");
    let (dev, _, _) = s.device(&prov);
    s.device(&prov);
    s.create(
        &key,
        "device_tag",
        json!({"device": dev, "tag_key": "site", "value": "north"}),
    );
    let mut b = Browser::new(&s);
    b.login("alice", PW);
    // The page's save form carries its current filters and sort.
    let p = b.get(&format!(
        "/fleets/{fleet}?tag=site%3Dnorth&sort=status&dir=desc&page=1"
    ));
    assert_eq!(p.text("#views .hint"), "none");
    let query = p
        .attrs("#save-view input[name=query]", "value")
        .pop()
        .unwrap();
    assert_eq!(query, "tag=site%3Dnorth&sort=status&dir=desc");
    let csrf = p.csrf();
    let path = format!("/fleets/{fleet}/views");
    assert_eq!(
        b.post(&path, &[("name", "north"), ("query", &query)])
            .status,
        403
    );
    let p = b.post(
        &path,
        &[("csrf", &csrf), ("name", "north"), ("query", &query)],
    );
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(p.location(), format!("/fleets/{fleet}?{query}"));
    // Listed as a link that applies the filters.
    let p = b.get(&format!("/fleets/{fleet}"));
    assert_eq!(p.text("#views a.view"), "north");
    let href = p.attrs("#views a.view", "href").pop().unwrap();
    let p = b.get(&href);
    assert_eq!(p.text("#device-count"), "1");
    // The same name again replaces it; a bad name or query is a 400.
    let p = b.post(
        &path,
        &[
            ("csrf", &csrf),
            ("name", "north"),
            ("query", "online=online"),
        ],
    );
    assert_eq!(p.status, 303);
    assert_eq!(
        b.get(&format!("/fleets/{fleet}"))
            .attrs("#views a.view", "href"),
        vec![format!("/fleets/{fleet}?online=online")]
    );
    assert_eq!(
        b.post(&path, &[("csrf", &csrf), ("name", ""), ("query", "")])
            .status,
        400
    );
    assert_eq!(
        b.post(
            &path,
            &[("csrf", &csrf), ("name", "x"), ("query", "page=abc")]
        )
        .status,
        400
    );
    // Bob sees none of alice's views and cannot save into her fleet.
    let mut bob = Browser::new(&s);
    bob.login("bob", PW);
    let bcsrf = bob.csrf();
    let p = bob.post(&path, &[("csrf", &bcsrf), ("name", "b"), ("query", "")]);
    assert_eq!(p.status, 404);
    let (bfleet, _) = s.fleet(&s.user("bob").1, "bf");
    // Removing: only one's own.
    let id = b
        .get(&format!("/fleets/{fleet}"))
        .attrs("#views form input[name=delete]", "value")
        .pop()
        .unwrap();
    for bpath in [path.clone(), format!("/fleets/{bfleet}/views")] {
        let p = bob.post(&bpath, &[("csrf", &bcsrf), ("delete", &id)]);
        assert_eq!(p.status, 404, "{bpath}");
    }
    let p = b.post(&path, &[("csrf", &csrf), ("delete", &id)]);
    assert_eq!(p.status, 303);
    assert_eq!(
        b.get(&format!("/fleets/{fleet}")).text("#views .hint"),
        "none"
    );
}

both!(
    saved_views_of_the_device_table,
    release_page_shows_its_build_log,
    rollout_buttons_change_the_rollout,
    os_release_upload_page,
    os_update_history_on_the_device_page,
    device_actions_and_bulk_reboot_and_move,
    bulk_actions_and_fleet_vars,
    login_logout_csrf_and_audit,
    expired_sessions_go_to_login,
    users_never_see_each_other,
    script_in_names_and_logs_is_escaped,
    fleet_page_filters_sorts_and_pages,
    api_keys_from_the_settings_page,
);

/// Median and 95th percentile of `n` timed runs of `f` (after 2 warm-ups).
fn timed(n: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    f();
    f();
    let mut t: Vec<Duration> = (0..n)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    t.sort();
    (t[n / 2], t[(n * 95).div_ceil(100) - 1])
}

/// The benchmark of BENCHMARKS.md ("Dashboard"): the fleet page of a fleet
/// of 10 000 devices, rendered on the server, next to the same page of the
/// same query through OData. Run with
/// `cargo test -p resin-cloud --test dashboard -- --ignored --nocapture bench_`.
#[test]
#[ignore]
fn bench_fleet_page_10k_devices() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let s = Server::start(backend);
        let (_, key) = s.web_user("alice", PW);
        let sim =
            common::fleet::SimFleet::new(&s, &key, "big", 10_000, |_| common::fleet::Script::Good);
        let fleet = sim.fleet;
        // A tag on every tenth device, a status on all.
        s.rt.block_on(async {
            sqlx::query("UPDATE device SET status = 'Idle', os_version = '1.0', is_online = TRUE")
                .execute(&s.app.db.pool)
                .await
                .unwrap();
            let mut tx = s.app.db.begin_write().await.unwrap();
            for (i, (id, _)) in sim.devices.iter().enumerate().filter(|(i, _)| i % 10 == 0) {
                sqlx::query(
                    "INSERT INTO device_tag (device, tag_key, value) VALUES ($1, 'site', $2)",
                )
                .bind(*id)
                .bind(if i % 20 == 0 { "north" } else { "south" })
                .execute(&mut *tx)
                .await
                .unwrap();
            }
            tx.commit().await.unwrap();
        });
        let mut b = Browser::new(&s);
        assert_eq!(b.login("alice", PW).status, 303);
        let n = 30;
        let mut rows = Vec::new();
        for (what, path, htmx) in [
            (
                "fleet page, page 1 by name",
                format!("/fleets/{fleet}"),
                false,
            ),
            (
                "devices table only (htmx refresh)",
                format!("/fleets/{fleet}"),
                true,
            ),
            (
                "fleet page, last page (200)",
                format!("/fleets/{fleet}?page=200"),
                false,
            ),
            (
                "fleet page, middle page (100)",
                format!("/fleets/{fleet}?page=100"),
                false,
            ),
            (
                "fleet page, tag site=north, by last seen desc",
                format!("/fleets/{fleet}?tag=site%3Dnorth&sort=last_seen&dir=desc"),
                false,
            ),
        ] {
            let (p50, p95) = timed(n, || {
                let h: &[(&str, &str)] = if htmx { &[("HX-Request", "true")] } else { &[] };
                let p = b.request_with("GET", &path, None, h);
                assert_eq!(p.status, 200);
            });
            rows.push((what.to_owned(), p50, p95));
        }
        let odata =
            format!("/v1/device?$filter=fleet eq {fleet}&$orderby=name&$top=50&$count=true");
        let (p50, p95) = timed(n, || {
            let r = s.get(&odata, &key);
            assert_eq!(r.status, 200);
        });
        rows.push((
            "OData: same page ($filter, $orderby, $top 50, $count)".into(),
            p50,
            p95,
        ));
        let odata_last = format!(
            "/v1/device?$filter=fleet eq {fleet}&$orderby=name&$top=50&$skip=9950&$count=true"
        );
        let (p50, p95) = timed(n, || {
            let r = s.get(&odata_last, &key);
            assert_eq!(r.status, 200);
        });
        rows.push(("OData: last page ($skip 9950)".into(), p50, p95));
        for (what, p50, p95) in rows {
            println!(
                "| {backend:?} | {what} | {:.1} | {:.1} |",
                p50.as_secs_f64() * 1000.0,
                p95.as_secs_f64() * 1000.0
            );
        }
    }
}
