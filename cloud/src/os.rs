//! OS releases: raw uploads of bundles and base images (temp file, fsync,
//! rename), bundle downloads with `Range`, and configured image downloads.

use std::path::PathBuf;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use sqlx::Row;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::auth::{self, Actor};
use crate::error::{ApiError, ApiResult};
use resin_imagegen::configure::Compression;

use crate::{perms, resources, AppState};

/// Where an OS release's files live.
pub fn release_dir(app: &AppState, id: i64) -> PathBuf {
    app.config.data_dir.join("os").join(id.to_string())
}

fn file_name(kind: &str) -> &'static str {
    if kind == "bundle" {
        "bundle.raucb"
    } else {
        "image.img"
    }
}

/// `PUT /v1/os_release(<id>)/bundle|image`: streams the body to a temp file
/// beside the target, hashing it, then fsyncs and renames it into place.
pub async fn upload(
    app: &AppState,
    actor: &Actor,
    id: i64,
    kind: &str,
    body: Body,
) -> ApiResult<Response> {
    let (sha, size) = upload_stream(app, actor, id, kind, body.into_data_stream(), false).await?;
    Ok((
        StatusCode::OK,
        axum::Json(serde_json::json!({"sha256": sha, "size": size})),
    )
        .into_response())
}

/// [`upload`] from any stream of chunks (the dashboard's multipart field):
/// returns the file's sha256 and size. With `check_bundle`, a bundle that is
/// not shaped like a RAUC bundle ([`check_bundle`]) is refused with 400
/// before it replaces anything. On any error the temp file is gone.
pub async fn upload_stream<S, E>(
    app: &AppState,
    actor: &Actor,
    id: i64,
    kind: &str,
    mut stream: S,
    check_bundle: bool,
) -> ApiResult<(String, u64)>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    perms::may_change(actor)?;
    if !resources::may_write(app, actor, "os_release", id).await? {
        return Err(ApiError::not_found(format!("os_release({id}) not found")));
    }
    let dir = release_dir(app, id);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ApiError::io("creating the release directory", e))?;
    let final_path = dir.join(file_name(kind));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        file_name(kind),
        resources::new_uuid()
    ));
    let what = format!("storing the {kind} of os_release({id})");
    let result = async {
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| ApiError::io(&what, e))?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::bad_request(format!("reading the upload: {e}")))?;
            hasher.update(&chunk);
            write_sparse(&mut file, size, &chunk)
                .await
                .map_err(|e| ApiError::io(&what, e))?;
            size += chunk.len() as u64;
        }
        if size == 0 {
            return Err(ApiError::bad_request("the upload is empty"));
        }
        // Zero blocks were skipped: the length covers a trailing hole.
        file.set_len(size)
            .await
            .map_err(|e| ApiError::io(&what, e))?;
        file.sync_all().await.map_err(|e| ApiError::io(&what, e))?;
        drop(file);
        if kind == "image" {
            // Refuse images resin-imagegen cannot configure, now rather
            // than at download time.
            let check = tmp.clone();
            tokio::task::spawn_blocking(move || {
                let f = std::fs::File::open(&check)?;
                resin_imagegen::configure::locate(&f).map(|_| ())
            })
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| ApiError::bad_request(format!("not a resin disk image: {e}")))?;
        }
        if kind == "bundle" && check_bundle {
            let check = tmp.clone();
            tokio::task::spawn_blocking(move || self::check_bundle(&check))
                .await
                .map_err(ApiError::internal)?
                .map_err(|e| ApiError::bad_request_field("bundle", e))?;
        }
        Ok((hex::encode(hasher.finalize()), size))
    }
    .await;
    let (sha, size) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            drain(&mut stream).await;
            return Err(e);
        }
    };
    tokio::fs::rename(&tmp, &final_path)
        .await
        .map_err(|e| ApiError::io(&what, e))?;
    if let Ok(d) = tokio::fs::File::open(&dir).await {
        let _ = d.sync_all().await;
    }
    let size_i = i64::try_from(size).map_err(ApiError::internal)?;
    if kind == "bundle" {
        sqlx::query("UPDATE os_release SET bundle_sha256 = $1, bundle_size = $2 WHERE id = $3")
            .bind(&sha)
            .bind(size_i)
            .bind(id)
            .execute(&app.db.pool)
            .await?;
    } else {
        sqlx::query("UPDATE os_release SET image_size = $1 WHERE id = $2")
            .bind(size_i)
            .bind(id)
            .execute(&app.db.pool)
            .await?;
    }
    // Any fleet of any owner may target this version (and a public one).
    crate::cache::changed(app, crate::cache::Change::All).await;
    Ok((sha, size))
}

/// Whether the file at `path` is shaped like a RAUC bundle: a squashfs
/// image (magic `hsqs`) followed (after dm-verity data, in the verity
/// format) by a CMS signature (DER, `0x30`) and the signature's size as a
/// big-endian u64 in the last 8 bytes. Only the shape: the device checks
/// the signature against its keyring when it installs the bundle.
pub fn check_bundle(path: &std::path::Path) -> Result<(), String> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |e: std::io::Error| format!("reading the bundle: {e}");
    let mut f = std::fs::File::open(path).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    let mut magic = [0u8; 4];
    if size < 96 + 8 || f.read_exact(&mut magic).is_err() || &magic != b"hsqs" {
        return Err(
            "not a RAUC bundle: it does not start with a squashfs image \
                    (a bundle is made by `rauc bundle`, e.g. resin-imagegen's bundle output)"
                .into(),
        );
    }
    let mut trailer = [0u8; 8];
    f.seek(SeekFrom::End(-8)).map_err(io)?;
    f.read_exact(&mut trailer).map_err(io)?;
    let sig = u64::from_be_bytes(trailer);
    let no_sig = || {
        "not a RAUC bundle: it has no signature at its end (a bundle ends with a CMS \
         signature and its size); was it signed by `rauc bundle`?"
            .to_owned()
    };
    if sig == 0 || sig > size - 96 - 8 {
        return Err(no_sig());
    }
    let mut first = [0u8; 1];
    f.seek(SeekFrom::Start(size - 8 - sig)).map_err(io)?;
    f.read_exact(&mut first).map_err(io)?;
    if first[0] != 0x30 {
        return Err(no_sig());
    }
    Ok(())
}

/// Reads and drops what is left of a refused upload (up to 256 MiB, for
/// up to 30 s), so the client gets the error answer instead of a broken
/// pipe: a connection closed while the client still sends loses our answer.
async fn drain<S, E>(stream: &mut S)
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
{
    let mut left: usize = 256 << 20;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(Ok(chunk)) = stream.next().await {
            left = left.saturating_sub(chunk.len());
            if left == 0 {
                return;
            }
        }
    })
    .await;
}

/// Sparse-write granularity: a block of zeros this size (at any offset) is
/// skipped, leaving a hole. Disk images are mostly unused partition space, so
/// a 3 GiB image with 700 MiB of data takes about 700 MiB on the server.
const HOLE_BLOCK: usize = 4096;

/// The ranges of `data` to write: runs of blocks that are not all zeros
/// (the all-zero blocks between them become holes).
fn data_runs(data: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, block) in data.chunks(HOLE_BLOCK).enumerate() {
        if block.iter().all(|&b| b == 0) {
            continue;
        }
        let (start, end) = (i * HOLE_BLOCK, i * HOLE_BLOCK + block.len());
        match runs.last_mut() {
            Some(r) if r.end == start => r.end = end,
            _ => runs.push(start..end),
        }
    }
    runs
}

/// Writes `data` at `offset` of a new file, skipping the all-zero blocks
/// (the file is fresh, so a skipped range reads back as zeros once the
/// caller sets the final length).
async fn write_sparse(file: &mut tokio::fs::File, offset: u64, data: &[u8]) -> std::io::Result<()> {
    for run in data_runs(data) {
        file.seek(std::io::SeekFrom::Start(offset + run.start as u64))
            .await?;
        file.write_all(&data[run]).await?;
    }
    Ok(())
}

/// A parsed single `Range: bytes=…` header.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeReq {
    Full,
    Part { start: u64, end: u64 },
    Unsatisfiable,
}

/// Parses `Range` against a file of `size` bytes. Several ranges at once are
/// answered with the whole file (allowed by RFC 9110).
pub fn parse_range(h: Option<&str>, size: u64) -> RangeReq {
    let Some(h) = h else { return RangeReq::Full };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeReq::Unsatisfiable;
    };
    if spec.contains(',') {
        return RangeReq::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeReq::Unsatisfiable;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| s.parse::<u64>().ok();
    let (start, end) = match (a.is_empty(), b.is_empty()) {
        (true, true) => return RangeReq::Unsatisfiable,
        (true, false) => match num(b) {
            Some(0) | None => return RangeReq::Unsatisfiable,
            Some(n) => (size.saturating_sub(n), size.saturating_sub(1)),
        },
        (false, true) => match num(a) {
            Some(s) => (s, size.saturating_sub(1)),
            None => return RangeReq::Unsatisfiable,
        },
        (false, false) => match (num(a), num(b)) {
            (Some(s), Some(e)) if s <= e => (s, e.min(size.saturating_sub(1))),
            _ => return RangeReq::Unsatisfiable,
        },
    };
    if size == 0 || start >= size {
        return RangeReq::Unsatisfiable;
    }
    RangeReq::Part { start, end }
}

/// `GET /os/bundle/{id}`
pub async fn bundle(
    axum::extract::State(app): axum::extract::State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    bundle_inner(&app, &id, &headers)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn bundle_inner(app: &AppState, id: &str, headers: &HeaderMap) -> ApiResult<Response> {
    let actor = auth::resolve(&app.db, headers).await?;
    perms::may_fetch_bundle(&actor)?;
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::bad_request("the bundle id must be an integer"))?;
    // Only the owner's OS releases and the public ones: for a user, their
    // own; for a device, those of its fleet's owner. Anyone else's is
    // answered as missing.
    let owner_sql = match &actor {
        Actor::Device { .. } => {
            "(SELECT f.owner FROM device d JOIN fleet f ON f.id = d.fleet WHERE d.id = $2)"
        }
        _ => "$2",
    };
    let owner_id = match &actor {
        Actor::Device { id, .. } => *id,
        Actor::User { id, .. } => *id,
        _ => return Err(ApiError::unauthorized()),
    };
    let row = resources::dyn_query(format!(
        "SELECT device_type, bundle_size FROM os_release \
         WHERE id = $1 AND (owner = {owner_sql} OR is_public)"
    ))
    .bind(id)
    .bind(owner_id)
    .fetch_optional(&app.db.pool)
    .await?
    .ok_or_else(|| ApiError::not_found(format!("os_release({id}) not found")))?;
    let device_type: String = row.try_get(0)?;
    let size: Option<i64> = row.try_get(1)?;
    if let Actor::Device { id: dev, .. } = actor {
        let t: Option<String> = sqlx::query("SELECT device_type FROM device WHERE id = $1")
            .bind(dev)
            .fetch_optional(&app.db.pool)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        if t.as_deref() != Some(device_type.as_str()) {
            return Err(ApiError::forbidden(
                "this bundle is for another device type",
            ));
        }
    }
    if size.is_none() {
        return Err(ApiError::not_found(format!(
            "os_release({id}) has no bundle yet"
        )));
    }
    let path = release_dir(app, id).join(file_name("bundle"));
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?;
    let size = file.metadata().await.map_err(ApiError::internal)?.len();
    let range = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        size,
    );
    let (status, start, len) = match range {
        RangeReq::Full => (StatusCode::OK, 0, size),
        RangeReq::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        RangeReq::Unsatisfiable => {
            let mut r = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "RangeNotSatisfiable",
                format!("the bundle has {size} bytes"),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
    };
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(ApiError::internal)?;
    let stream = futures_util::stream::unfold(
        (file.take(len), vec![0u8; 64 * 1024]),
        |(mut f, mut buf)| async move {
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => Some((
                    Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(&buf[..n])),
                    (f, buf),
                )),
                Err(e) => Some((Err(e), (f, buf))),
            }
        },
    );
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&len.to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", start + len - 1)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(resp)
}

/// `GET /v1/os/download?fleet=<id>&version=<v>&compression=zstd|xz|none`:
/// the fleet's base image for `version` (default: the fleet's target OS
/// version) with a config.json written in, holding a fresh provisioning
/// key. Streamed: configured by resin-imagegen on the fly and compressed in
/// a blocking task.
pub async fn download(app: &AppState, actor: &Actor, q: Option<&str>) -> ApiResult<Response> {
    let mut fleet = None;
    let mut version = None;
    let mut compression = Compression::None;
    for pair in q.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        // %XX escapes are decoded; a '+' stays a '+' (versions such as
        // 1.0+build), as RFC 3986 reads a query.
        let decode = |what: &str, s: &str| {
            resin_odata::percent_decode(what, &s.replace('+', "%2B"))
                .map_err(|e| ApiError::bad_request(e.to_string()))
        };
        let (k, v) = (decode("parameter name", k)?, decode(k, v)?);
        let v = v.as_str();
        match k.as_str() {
            "fleet" => {
                fleet = Some(
                    v.parse::<i64>()
                        .map_err(|_| ApiError::bad_request("fleet must be an integer fleet id"))?,
                )
            }
            "version" => {
                resources::check_slug("version", v)?;
                version = Some(v.to_owned());
            }
            "compression" => {
                compression = match v {
                    "none" => Compression::None,
                    "zstd" => Compression::Zstd,
                    "xz" => Compression::Xz,
                    _ => {
                        return Err(ApiError::bad_request(
                            "compression must be zstd, xz or none",
                        ))
                    }
                }
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {k:?} (fleet, version, compression)"
                )))
            }
        }
    }
    let fleet = fleet.ok_or_else(|| ApiError::bad_request("fleet=<id> is required"))?;
    if !resources::may_write(app, actor, "fleet", fleet).await? {
        return Err(ApiError::not_found(format!("fleet({fleet}) not found")));
    }
    let row =
        sqlx::query("SELECT name, device_type, target_os_version, owner FROM fleet WHERE id = $1")
            .bind(fleet)
            .fetch_one(&app.db.pool)
            .await?;
    let fleet_name: String = row.try_get(0)?;
    let device_type: String = row.try_get(1)?;
    let target: Option<String> = row.try_get(2)?;
    let owner: i64 = row.try_get(3)?;
    let version = version.or(target).ok_or_else(|| {
        ApiError::bad_request("version=<v> is required (the fleet has no target OS version)")
    })?;
    let os = sqlx::query(
        "SELECT id, image_size FROM os_release \
         WHERE (owner = $1 OR is_public) AND device_type = $2 AND version = $3 \
         ORDER BY CASE WHEN owner = $4 THEN 0 ELSE 1 END, id LIMIT 1",
    )
    .bind(owner)
    .bind(&device_type)
    .bind(&version)
    .bind(owner)
    .fetch_optional(&app.db.pool)
    .await?
    .ok_or_else(|| {
        ApiError::not_found(format!(
            "no OS release {version} for device type {device_type}"
        ))
    })?;
    let os_id: i64 = os.try_get(0)?;
    let image_size: Option<i64> = os.try_get(1)?;
    if image_size.is_none() {
        return Err(ApiError::not_found(format!(
            "OS release {version} has no base image uploaded"
        )));
    }
    let path = release_dir(app, os_id).join(file_name("image"));
    let base = std::fs::File::open(&path)
        .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?;

    // The CA devices of this image trust (and only it): read per download,
    // so a CA file replaced by `resin-cloud init --force` is what new images carry.
    let root_ca = match app.config.tls.as_ref().and_then(|t| t.ca.as_ref()) {
        Some(ca) => Some(crate::tls::root_ca_field(ca).map_err(ApiError::internal)?),
        None => None,
    };
    let (key, hash) = auth::new_key(auth::KeyKind::Provisioning);
    let config = resin_api_types::ConfigJson {
        api_endpoint: app.config.public_url.clone(),
        fleet_id: fleet,
        fleet_name,
        device_type: device_type.clone(),
        provisioning_key: key,
        poll_interval_ms: app.config.poll_interval_ms,
        registry_mirror: None,
        uuid: None,
        device_name: None,
        root_ca,
        tunnel: None,
    };
    let json = serde_json::to_vec_pretty(&config).map_err(ApiError::internal)?;
    let mut tx = app.db.begin_write().await?;
    sqlx::query(
        "INSERT INTO provisioning_key (fleet, name, key_hash, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(fleet)
    .bind(format!("image download {version}"))
    .bind(hash)
    .bind(crate::db::now())
    .execute(&mut *tx)
    .await?;

    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (chunk_tx, mut chunk_rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
    tokio::task::spawn_blocking(move || {
        let mut reader =
            match resin_imagegen::configure::configured_reader_compressed(base, &json, compression)
            {
                Ok(r) => {
                    let _ = ready_tx.send(Ok(()));
                    r
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match std::io::Read::read(&mut reader, &mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if chunk_tx
                        .blocking_send(Ok(bytes::Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        return; // the client went away
                    }
                }
                Err(e) => {
                    let _ = chunk_tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    match ready_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(ApiError::conflict(format!(
                "the base image of OS release {version} cannot be configured: {e}"
            )))
        }
        Err(_) => return Err(ApiError::internal("image task ended early")),
    }
    tx.commit().await?;
    let stream = futures_util::stream::poll_fn(move |cx| chunk_rx.poll_recv(cx));
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    let name = format!("resin-{device_type}-{version}.img{}", compression.suffix());
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let (Compression::None, Some(size)) = (compression, image_size) {
        if let Ok(v) = HeaderValue::from_str(&size.to_string()) {
            h.insert(header::CONTENT_LENGTH, v);
        }
    }
    Ok(resp)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_bundle_shaped_files_pass_the_bundle_check() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("b");
        let sig = [0x30u8, 0x82, 0x01, 0x00];
        let mut good = b"hsqs".to_vec();
        good.resize(4096, 7);
        good.extend_from_slice(&sig);
        good.extend_from_slice(&(sig.len() as u64).to_be_bytes());
        std::fs::write(&p, &good).unwrap();
        assert_eq!(check_bundle(&p), Ok(()));
        for (bad, why) in [
            (b"bundle bytes".to_vec(), "squashfs"),
            ([b"xsqs".as_slice(), &good[4..]].concat(), "squashfs"),
            (good[..good.len() - 1].to_vec(), "signature"),
            (
                [&good[..4096], &[0x31, 0, 0, 0], &good[4100..]].concat(),
                "signature",
            ),
            (
                [&good[..good.len() - 8], &u64::MAX.to_be_bytes()[..]].concat(),
                "signature",
            ),
        ] {
            std::fs::write(&p, &bad).unwrap();
            let e = check_bundle(&p).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn zero_blocks_are_left_out_of_the_runs_written() {
        let mut d = vec![0u8; 5 * HOLE_BLOCK + 10];
        d[1] = 1; // block 0
        d[HOLE_BLOCK + 7] = 1; // block 1, joined to block 0
        d[4 * HOLE_BLOCK] = 1; // block 4, after two zero blocks
        assert_eq!(
            data_runs(&d),
            vec![0..2 * HOLE_BLOCK, 4 * HOLE_BLOCK..5 * HOLE_BLOCK]
        );
        d[5 * HOLE_BLOCK + 9] = 1; // the short last block
        assert_eq!(data_runs(&d)[1], 4 * HOLE_BLOCK..5 * HOLE_BLOCK + 10);
        assert!(data_runs(&[0u8; 100]).is_empty());
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), RangeReq::Full);
        assert_eq!(
            parse_range(Some("bytes=0-3"), 10),
            RangeReq::Part { start: 0, end: 3 }
        );
        assert_eq!(
            parse_range(Some("bytes=5-"), 10),
            RangeReq::Part { start: 5, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=-4"), 10),
            RangeReq::Part { start: 6, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=8-100"), 10),
            RangeReq::Part { start: 8, end: 9 }
        );
        assert_eq!(parse_range(Some("bytes=10-"), 10), RangeReq::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), RangeReq::Unsatisfiable);
        assert_eq!(parse_range(Some("items=0-1"), 10), RangeReq::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=a-b"), 10), RangeReq::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), RangeReq::Full);
    }
}
