//! Rate limits, answered 429 with `Retry-After` (seconds):
//! - **auth failures** per client address: after `auth_failures_per_min`
//!   requests with a wrong or expired key (a 401 to a request that carried
//!   `Authorization`) within a minute, every request of that address that
//!   carries a key is refused until the minute is over, so keys cannot be
//!   guessed at speed;
//! - **device endpoints** (`/device/…`) per key: at most
//!   `device_requests_per_min` a minute.
//!
//! Windows are fixed minutes per client, in memory, per replica. The client
//! address is the peer's; when the peer is on loopback (a reverse proxy on
//! the same host, e.g. nginx), the last `X-Forwarded-For` entry is used
//! instead, since that is the one the proxy added itself.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;

use crate::error::ApiError;
use crate::linger::LingerListener;
use crate::AppState;

const WINDOW: Duration = Duration::from_secs(60);

/// Above this many tracked clients, windows that are over are dropped.
const PRUNE_ABOVE: usize = 100_000;

/// Fixed one-minute windows of counts per key.
pub struct Windows<K> {
    map: Mutex<HashMap<K, (Instant, u64)>>,
}

impl<K> Default for Windows<K> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Windows<K> {
    /// If `key` is over `limit` in its current window: the time left.
    pub fn blocked<Q>(&self, key: &Q, limit: u64, now: Instant) -> Option<Duration>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        if limit == 0 {
            return None;
        }
        let map = self.map.lock().ok()?;
        match map.get(key) {
            Some((start, n)) if *n >= limit && now.duration_since(*start) < WINDOW => {
                Some(WINDOW.saturating_sub(now.duration_since(*start)))
            }
            _ => None,
        }
    }

    /// Counts one for `key`; returns the time left if that went over `limit`.
    /// The key is copied into the map only the first time it is counted.
    pub fn hit<Q>(&self, key: &Q, limit: u64, now: Instant) -> Option<Duration>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if limit == 0 {
            return None;
        }
        let mut map = self.map.lock().ok()?;
        if map.len() > PRUNE_ABOVE {
            map.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        if !map.contains_key(key) {
            map.insert(key.to_owned(), (now, 0));
        }
        let e = map.get_mut(key)?;
        if now.duration_since(e.0) >= WINDOW {
            *e = (now, 0);
        }
        e.1 += 1;
        (e.1 > limit).then(|| WINDOW.saturating_sub(now.duration_since(e.0)))
    }
}

/// The limiter state of one replica.
#[derive(Default)]
pub struct Limits {
    pub auth_failures: Windows<IpAddr>,
    pub device: Windows<String>,
}

fn too_many(left: Duration, message: &str) -> Response {
    let secs = left.as_secs().max(1);
    let mut resp =
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", message).into_response();
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// The peer address of a connection, as the servers hand it to handlers
/// (`into_make_service_with_connect_info::<ClientAddr>()`), for plain HTTP
/// (axum over [`LingerListener`]) and HTTPS (axum-server) alike.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, LingerListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, LingerListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

impl Connected<SocketAddr> for ClientAddr {
    fn connect_info(addr: SocketAddr) -> Self {
        ClientAddr(addr)
    }
}

/// The client's address (see the module docs), if known.
pub fn client_ip(req: &Request) -> Option<IpAddr> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<ClientAddr>>()
        .map(|c| c.0 .0.ip())?;
    if peer.is_loopback() {
        let forwarded = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok());
        if let Some(ip) = forwarded {
            return Some(ip);
        }
    }
    Some(peer)
}

/// What [`check`] saw of a request, for [`record`].
pub struct Seen {
    now: Instant,
    ip: Option<IpAddr>,
    has_key: bool,
}

/// A refusal by [`check`]: answer it with [`Refused::into_response`].
#[derive(Debug)]
pub struct Refused {
    left: Duration,
    message: &'static str,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        too_many(self.left, self.message)
    }
}

/// Both limits, before the request runs (part of the server-wide
/// middleware, [`crate::service`]): the 429 if the request is refused.
pub fn check(app: &AppState, req: &Request) -> Result<Seen, Refused> {
    let now = Instant::now();
    let ip = client_ip(req);
    let key = crate::auth::bearer(req.headers());
    let has_key = key.is_some();
    let auth_limit = app.config.auth_failures_per_min;
    if let (Some(ip), true) = (ip, has_key) {
        if let Some(left) = app.limits.auth_failures.blocked(&ip, auth_limit, now) {
            return Err(Refused {
                left,
                message: "too many requests with a wrong or expired key from this address",
            });
        }
    }
    let dev_limit = app.config.device_requests_per_min;
    if dev_limit > 0 && req.uri().path().starts_with("/device/") {
        if let Some(k) = key {
            if let Some(left) = app.limits.device.hit(k, dev_limit, now) {
                return Err(Refused {
                    left,
                    message: "too many device-API requests with this key",
                });
            }
        }
    }
    Ok(Seen { now, ip, has_key })
}

/// Counts an auth failure once the answer is known.
pub fn record(app: &AppState, seen: Seen, resp: &Response) {
    if resp.status() == StatusCode::UNAUTHORIZED && seen.has_key {
        if let Some(ip) = seen.ip {
            let limit = app.config.auth_failures_per_min;
            if app.limits.auth_failures.hit(&ip, limit, seen.now).is_some() {
                tracing::warn!(%ip, "too many requests with a wrong key: refusing for a minute");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_window_counts_to_its_limit_and_then_refuses_until_it_is_over() {
        let w = Windows::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(w.hit(&"a", 3, t0).is_none());
        }
        assert!(w.blocked(&"a", 3, t0).is_some());
        assert!(w.blocked(&"b", 3, t0).is_none());
        let left = w.hit(&"a", 3, t0 + Duration::from_secs(20)).unwrap();
        assert_eq!(left.as_secs(), 40);
        assert!(w.blocked(&"a", 3, t0 + WINDOW).is_none());
        assert!(w.hit(&"a", 3, t0 + WINDOW).is_none());
        assert!(w.hit(&"a", 0, t0).is_none(), "0 is no limit");
    }
}
