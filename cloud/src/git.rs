//! Git smart-HTTP: `<cloud>/git/<fleet id, uuid or name>.git`, served by
//! the host's `git http-backend` (CGI) through tokio::process, streamed both
//! ways, behind HTTP Basic auth (user name, API key as password).
//!
//! - A missing or wrong login is a 401 with `WWW-Authenticate`; a fleet the
//!   user may not write is a 404. `REMOTE_USER` is set only after that.
//! - One bare repository per fleet, `<data-dir>/git/repos/<fleet uuid>.git`,
//!   made on first use, with `core.hooksPath` pointing at
//!   `<data-dir>/git/hooks`, whose `pre-receive` execs
//!   `resin-cloud git-hook pre-receive`.
//! - The hook ([`run_hook`]) packs the pushed commit (`git archive`), sends it
//!   over a unix socket (`<data-dir>/git/hook.sock`, with a per-process
//!   token) to the running server, which queues a build and streams its log
//!   back; the hook prints it, so `git push` shows it live as `remote:` lines,
//!   and exits non-zero unless the build succeeded, which rejects the push.
//! - Options go in the remote branch's name: `git push resin main:nocache`.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, RawQuery, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::Router;
use base64::Engine as _;
use futures_util::StreamExt;
use serde::Deserialize;
use sqlx::Row;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::auth::{self, Actor};
use crate::build::{self, FleetRef};
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// The git routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/git/{repo}/{*rest}", any(git))
        .layer(axum::extract::DefaultBodyLimit::disable())
}

fn git_dir(app: &AppState) -> PathBuf {
    app.config.data_dir.join("git")
}

/// The unix socket the hooks call.
pub fn hook_socket(data_dir: &Path) -> PathBuf {
    data_dir.join("git").join("hook.sock")
}

fn unauthorized(msg: &str) -> Response {
    let mut r = (StatusCode::UNAUTHORIZED, format!("{msg}\n")).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"resin\", charset=\"UTF-8\""),
    );
    r
}

/// HTTP Basic: the user name and an API key of that user.
async fn basic_auth(app: &AppState, headers: &HeaderMap) -> Result<(Actor, i64, String), Response> {
    let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    else {
        return Err(unauthorized("log in with your user name and an API key"));
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default();
    let Some((name, key)) = decoded.split_once(':') else {
        return Err(unauthorized("log in with your user name and an API key"));
    };
    let mut h = HeaderMap::new();
    if let Ok(v) = header::HeaderValue::from_str(&format!("Bearer {key}")) {
        h.insert(header::AUTHORIZATION, v);
    }
    let actor = match auth::resolve(&app.db, &h).await {
        Ok(a @ Actor::User { .. }) => a,
        _ => return Err(unauthorized("wrong user name or API key")),
    };
    let user = match build::writing_user(&actor) {
        Ok(u) => u,
        Err(e) => return Err(e.into_response()),
    };
    let username: Option<String> = sqlx::query("SELECT username FROM \"user\" WHERE id = $1")
        .bind(user)
        .fetch_optional(&app.db.pool)
        .await
        .ok()
        .flatten()
        .and_then(|r| r.try_get(0).ok());
    if username.as_deref() != Some(name) {
        return Err(unauthorized("wrong user name or API key"));
    }
    Ok((actor, user, name.to_owned()))
}

async fn run(cmd: &mut tokio::process::Command, what: &str) -> ApiResult<()> {
    let out = cmd
        .output()
        .await
        .map_err(|e| ApiError::internal(format!("{what}: {e}")))?;
    if !out.status.success() {
        return Err(ApiError::internal(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// Writes the shared hooks directory (the pre-receive hook execs `exe`).
pub fn write_hooks(data_dir: &Path, exe: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = data_dir.join("git").join("hooks");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("pre-receive");
    let tmp = dir.join(".pre-receive.tmp");
    let exe = exe.to_string_lossy().replace('\'', "'\\''");
    let mut f = std::fs::File::create(&tmp)?;
    write!(
        f,
        "#!/bin/sh\n# Written by resin-cloud: builds the pushed commit; a failed build rejects the push.\nexec '{exe}' git-hook pre-receive\n"
    )?;
    f.sync_all()?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &path)
}

/// The fleet's bare repository, made on first use.
async fn ensure_repo(app: &AppState, fleet: &FleetRef) -> ApiResult<PathBuf> {
    let repos = git_dir(app).join("repos");
    let repo = repos.join(format!("{}.git", fleet.uuid));
    if repo.join("HEAD").exists() {
        return Ok(repo);
    }
    tokio::fs::create_dir_all(&repos)
        .await
        .map_err(|e| ApiError::io("creating the git directory", e))?;
    let tmp = repos.join(format!(".{}.tmp", crate::resources::new_uuid()));
    run(
        tokio::process::Command::new("git")
            .args(["init", "--bare", "-q", "-b", "main"])
            .arg(&tmp),
        "git init",
    )
    .await?;
    let hooks = git_dir(app).join("hooks");
    for (k, v) in [
        ("http.receivepack", "true".to_owned()),
        ("core.hooksPath", hooks.to_string_lossy().into_owned()),
        ("receive.denyDeletes", "true".to_owned()),
    ] {
        run(
            tokio::process::Command::new("git")
                .arg("--git-dir")
                .arg(&tmp)
                .args(["config", k, &v]),
            "git config",
        )
        .await?;
    }
    if let Err(e) = tokio::fs::rename(&tmp, &repo).await {
        let _ = tokio::fs::remove_dir_all(&tmp).await;
        if !repo.join("HEAD").exists() {
            return Err(ApiError::io("creating the fleet's repository", e));
        }
    }
    Ok(repo)
}

async fn git(
    State(app): State<AppState>,
    method: Method,
    UrlPath((repo, rest)): UrlPath<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (actor, user, username) = match basic_auth(&app, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let r = async {
        let Some(fleet_name) = repo.strip_suffix(".git") else {
            return Err(ApiError::not_found("the repository is <fleet>.git"));
        };
        let fleet = build::writable_fleet(&app, &actor, fleet_name).await?;
        let repo_dir = ensure_repo(&app, &fleet).await?;
        let project_root = repo_dir
            .parent()
            .ok_or_else(|| ApiError::internal("repository without a parent"))?
            .to_owned();
        let mut cmd = tokio::process::Command::new("git");
        cmd.arg("http-backend")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("GIT_PROJECT_ROOT", &project_root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("REQUEST_METHOD", method.as_str())
            .env("PATH_INFO", format!("/{}.git/{rest}", fleet.uuid))
            .env("QUERY_STRING", q.unwrap_or_default())
            .env("REMOTE_USER", &username)
            .env("REMOTE_ADDR", "127.0.0.1")
            .env("RESIN_GIT_SOCKET", hook_socket(&app.config.data_dir))
            .env("RESIN_GIT_TOKEN", app.hook_token.as_str())
            .env("RESIN_GIT_FLEET", fleet.id.to_string())
            .env("RESIN_GIT_USER", user.to_string());
        for (h, var) in [
            (header::CONTENT_TYPE, "CONTENT_TYPE"),
            (header::CONTENT_LENGTH, "CONTENT_LENGTH"),
            (header::CONTENT_ENCODING, "HTTP_CONTENT_ENCODING"),
        ] {
            if let Some(v) = headers.get(&h).and_then(|v| v.to_str().ok()) {
                cmd.env(var, v);
            }
        }
        if let Some(v) = headers.get("git-protocol").and_then(|v| v.to_str().ok()) {
            cmd.env("GIT_PROTOCOL", v);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        let mut child = cmd
            .spawn()
            .map_err(|e| ApiError::internal(format!("starting git http-backend: {e}")))?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(ApiError::internal("git http-backend without pipes"));
        };
        // Request body → stdin, streamed.
        tokio::spawn(async move {
            let mut s = body.into_data_stream();
            while let Some(Ok(chunk)) = s.next().await {
                if stdin.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            drop(stdin);
        });
        tokio::spawn(async move {
            let mut e = String::new();
            let _ = tokio::io::BufReader::new(stderr)
                .read_to_string(&mut e)
                .await;
            if !e.trim().is_empty() {
                tracing::warn!("git http-backend: {}", e.trim());
            }
            let _ = child.wait().await;
        });
        // CGI headers, then the body streamed.
        let mut out = tokio::io::BufReader::new(stdout);
        let mut status = StatusCode::OK;
        let mut resp_headers = HeaderMap::new();
        loop {
            let mut line = String::new();
            let n = out
                .read_line(&mut line)
                .await
                .map_err(|e| ApiError::internal(format!("reading git http-backend: {e}")))?;
            let line = line.trim_end();
            if n == 0 || line.is_empty() {
                break;
            }
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            if k.eq_ignore_ascii_case("status") {
                if let Some(code) = v
                    .split_whitespace()
                    .next()
                    .and_then(|c| c.parse::<u16>().ok())
                    .and_then(|c| StatusCode::from_u16(c).ok())
                {
                    status = code;
                }
            } else if let (Ok(k), Ok(v)) = (
                header::HeaderName::from_bytes(k.as_bytes()),
                header::HeaderValue::from_str(v),
            ) {
                resp_headers.append(k, v);
            }
        }
        let stream = futures_util::stream::unfold(out, |mut out| async move {
            let mut buf = vec![0u8; 16 * 1024];
            match out.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, std::io::Error>(Bytes::from(buf)), out))
                }
                Err(e) => Some((Err(e), out)),
            }
        });
        let mut resp = Response::new(Body::from_stream(stream));
        *resp.status_mut() = status;
        *resp.headers_mut() = resp_headers;
        Ok::<_, ApiError>(resp)
    }
    .await;
    r.unwrap_or_else(|e| {
        if e.status == StatusCode::NOT_FOUND {
            (StatusCode::NOT_FOUND, format!("{}\n", e.message)).into_response()
        } else {
            e.into_response()
        }
    })
}

// ---- the hook's side of the unix socket ----

#[derive(Debug, Deserialize)]
struct HookParams {
    fleet: i64,
    user: i64,
    #[serde(default)]
    nocache: bool,
}

/// The router served on the hook socket.
pub fn hook_router(state: AppState) -> Router {
    Router::new()
        .route("/internal/git-build", post(hook_build))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

async fn hook_build(
    State(app): State<AppState>,
    Query(p): Query<HookParams>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let token = headers
            .get("x-resin-hook-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !auth::constant_time_eq(token.as_bytes(), app.hook_token.as_bytes()) {
            return Err(ApiError::unauthorized());
        }
        let uuid: String = sqlx::query("SELECT uuid FROM fleet WHERE id = $1")
            .bind(p.fleet)
            .fetch_one(&app.db.pool)
            .await?
            .try_get(0)?;
        build::check_user_limit(&app, p.user).await?;
        let stream = body
            .into_data_stream()
            .map(|r| r.map_err(std::io::Error::other));
        let ctx = build::store_context(&app, stream).await?;
        let fleet = FleetRef { id: p.fleet, uuid };
        let id = build::enqueue(&app, p.user, &fleet, "git", p.nocache, true, &ctx).await?;
        let mut r = Response::new(Body::from_stream(build::follow(app.clone(), id, true)));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/x-ndjson"),
        );
        Ok::<_, ApiError>(r)
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

/// Serves [`hook_router`] on the unix socket until the process ends.
pub async fn serve_hook_socket(state: AppState) -> std::io::Result<()> {
    let path = hook_socket(&state.config.data_dir);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    axum::serve(listener, hook_router(state)).await
}

/// The options a pushed branch name carries (`nocache`).
pub fn branch_options(refname: &str) -> bool {
    let name = refname.strip_prefix("refs/heads/").unwrap_or(refname);
    name.split(['-', '+', '_', ',']).any(|t| t == "nocache")
}

/// `resin-cloud git-hook pre-receive`: runs inside `git receive-pack`.
/// Returns the process exit status.
pub fn run_hook() -> i32 {
    use std::io::{BufRead, Read, Write};
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let (socket, token, fleet, user) = (
        env("RESIN_GIT_SOCKET"),
        env("RESIN_GIT_TOKEN"),
        env("RESIN_GIT_FLEET"),
        env("RESIN_GIT_USER"),
    );
    if socket.is_empty() || token.is_empty() {
        println!("resin: this hook runs only under resin-cloud's git server");
        return 1;
    }
    let mut input = String::new();
    if std::io::stdin().read_to_string(&mut input).is_err() {
        println!("resin: cannot read the pushed refs");
        return 1;
    }
    let zero = |s: &str| s.chars().all(|c| c == '0');
    let Some((new, refname)) = input.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        let (_old, new, r) = (it.next()?, it.next()?, it.next()?);
        (!zero(new)).then(|| (new.to_owned(), r.to_owned()))
    }) else {
        println!("resin: nothing to build (no commit was pushed)");
        return 1;
    };
    let nocache = branch_options(&refname);
    println!(
        "resin: building {refname} at {}{}",
        &new[..new.len().min(12)],
        if nocache { " without cache" } else { "" }
    );
    let _ = std::io::stdout().flush();
    let archive = std::process::Command::new("git")
        .args(["archive", "--format=tar", &new])
        .stderr(Stdio::inherit())
        .output();
    let tar = match archive {
        Ok(o) if o.status.success() => o.stdout,
        Ok(o) => {
            println!(
                "resin: git archive failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return 1;
        }
        Err(e) => {
            println!("resin: running git archive: {e}");
            return 1;
        }
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let body = match gz.write_all(&tar).and_then(|_| gz.finish()) {
        Ok(b) => b,
        Err(e) => {
            println!("resin: compressing the project: {e}");
            return 1;
        }
    };
    let mut s = match std::os::unix::net::UnixStream::connect(&socket) {
        Ok(s) => s,
        Err(e) => {
            println!("resin: the cloud's builder is not reachable ({socket}): {e}");
            return 1;
        }
    };
    let head = format!(
        "POST /internal/git-build?fleet={fleet}&user={user}&nocache={nocache} HTTP/1.0\r\n\
         Host: resin\r\nX-Resin-Hook-Token: {token}\r\nContent-Type: application/gzip\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    if s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(&body))
        .is_err()
    {
        println!("resin: sending the project to the builder failed");
        return 1;
    }
    let mut r = std::io::BufReader::new(s);
    let mut status_line = String::new();
    let _ = r.read_line(&mut status_line);
    let ok_status = status_line.split_whitespace().nth(1) == Some("200");
    loop {
        let mut l = String::new();
        match r.read_line(&mut l) {
            Ok(0) | Err(_) => break,
            Ok(_) if l.trim().is_empty() => break,
            Ok(_) => {}
        }
    }
    if !ok_status {
        let mut rest = String::new();
        let _ = r.read_to_string(&mut rest);
        let msg = serde_json::from_str::<serde_json::Value>(&rest)
            .ok()
            .and_then(|v| {
                v.pointer("/error/message")
                    .and_then(|m| m.as_str())
                    .map(str::to_owned)
            })
            .unwrap_or(rest);
        println!("resin: the build was refused: {}", msg.trim());
        return 1;
    }
    let mut success = false;
    for line in r.lines() {
        let Ok(line) = line else { break };
        let Ok(l) = serde_json::from_str::<resin_api_types::build::BuildLogLine>(&line) else {
            continue;
        };
        match &l.service {
            Some(s) => println!("[{s}] {}", l.message),
            None => println!("{}", l.message),
        }
        let _ = std::io::stdout().flush();
        if l.state == Some(resin_api_types::build::BuildState::Success) {
            success = true;
        }
    }
    if success {
        0
    } else {
        println!("resin: the push is rejected: the build did not succeed");
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_names_carry_options() {
        assert!(branch_options("refs/heads/nocache"));
        assert!(branch_options("refs/heads/main-nocache"));
        assert!(!branch_options("refs/heads/main"));
        assert!(!branch_options("refs/heads/nocache2"));
    }
}
