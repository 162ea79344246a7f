//! The one compose parser and validator: a compose document (as JSON) into
//! a [`ReleaseTarget`], and the typed forms of the service fields the
//! engine needs (ports, restart policy, mounts, devices).
//!
//! The CLI runs it before upload, the cloud runs it on `POST /v1/release`
//! (a bad release is a 400 there, never a loop on the device), and the
//! supervisor uses the typed parsers when it builds a container. Every
//! error carries the path of the field, `services.web.ports[0]`, so it
//! names the service and the field.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

use crate::target::{NetworkTarget, ReleaseTarget, ServiceTarget, VolumeTarget};

/// A compose document or field that resin cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ComposeError {
    /// Where in the document: `services.web.ports[0]`, `volumes.data`, or
    /// empty for the document itself.
    pub path: String,
    pub message: String,
}

fn err(path: &str, message: impl fmt::Display) -> ComposeError {
    ComposeError {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// The service keys resin understands.
pub const SERVICE_KEYS: &[&str] = &[
    "image",
    "environment",
    "labels",
    "ports",
    "volumes",
    "networks",
    "restart",
    "command",
    "entrypoint",
    "privileged",
    "devices",
    "cap_add",
    "cap_drop",
    "network_mode",
    "depends_on",
];

/// The top-level keys resin understands.
pub const TOP_LEVEL_KEYS: &[&str] = &["version", "name", "services", "volumes", "networks"];

/// The keys of a top-level volume or network.
pub const NAMED_OBJECT_KEYS: &[&str] = &["driver", "driver_opts", "labels"];

/// `[a-zA-Z0-9][a-zA-Z0-9_.-]*`: service, volume and network names.
pub fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

// ---------------------------------------------------------------------------
// Typed fields

/// Compose `restart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Restart {
    No,
    #[default]
    Always,
    OnFailure,
    UnlessStopped,
}

impl Restart {
    pub fn as_str(self) -> &'static str {
        match self {
            Restart::No => "no",
            Restart::Always => "always",
            Restart::OnFailure => "on-failure",
            Restart::UnlessStopped => "unless-stopped",
        }
    }
}

impl FromStr for Restart {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "no" => Restart::No,
            "always" => Restart::Always,
            "on-failure" => Restart::OnFailure,
            "unless-stopped" => Restart::UnlessStopped,
            _ => {
                return Err(format!(
                    "restart {s:?} is not one of no, always, on-failure, unless-stopped"
                ))
            }
        })
    }
}

/// Transport protocol of a port mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// A compose port: `[ip:][host:]container[/proto]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub host_ip: Option<String>,
    /// `None`: the engine picks a host port (or none is published).
    pub host_port: Option<u16>,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl PortMapping {
    /// The engine's key for the container side, `80/tcp`.
    pub fn container_key(&self) -> String {
        format!("{}/{}", self.container_port, self.protocol.as_str())
    }
}

fn port_number(s: &str, whole: &str) -> Result<u16, String> {
    if s.contains('-') {
        return Err(format!("port {whole:?}: port ranges are not supported"));
    }
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!(
            "port {whole:?}: {s:?} is not a port number (1-65535); want [ip:][host:]container[/tcp|udp|sctp]"
        )),
    }
}

impl FromStr for PortMapping {
    type Err = String;
    fn from_str(p: &str) -> Result<Self, String> {
        let (spec, proto) = match p.rsplit_once('/') {
            Some((s, proto)) => (s, proto),
            None => (p, "tcp"),
        };
        let protocol = match proto {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            _ => {
                return Err(format!(
                    "port {p:?}: protocol {proto:?} is not tcp, udp or sctp"
                ))
            }
        };
        // `[::1]:8080:80`: a bracketed IPv6 address first.
        let (ip, rest) = match spec.strip_prefix('[') {
            Some(r) => match r.split_once("]:") {
                Some((ip, rest)) => (Some(ip), rest),
                None => return Err(format!("port {p:?}: unterminated [IPv6 address]")),
            },
            None => (None, spec),
        };
        let parts: Vec<&str> = rest.split(':').collect();
        let (ip, host, container) = match (ip, parts.as_slice()) {
            (None, [c]) => (None, None, *c),
            (None, [h, c]) => (None, Some(*h), *c),
            (None, [ip, h, c]) => (Some(*ip), Some(*h), *c),
            (Some(ip), [h, c]) => (Some(ip), Some(*h), *c),
            _ => {
                return Err(format!(
                    "port {p:?}: want [ip:][host:]container[/tcp|udp|sctp]"
                ))
            }
        };
        let host_port = match host {
            None | Some("") => None,
            Some(h) => Some(port_number(h, p)?),
        };
        if let Some(ip) = ip.filter(|ip| ip.parse::<std::net::IpAddr>().is_err()) {
            return Err(format!("port {p:?}: {ip:?} is not an IP address"));
        }
        Ok(Self {
            host_ip: ip.map(str::to_owned),
            host_port,
            container_port: port_number(container, p)?,
            protocol,
        })
    }
}

/// A compose short-form volume entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// `data:/data[:ro]`: a named volume of the release.
    Volume {
        name: String,
        target: String,
        options: Option<String>,
    },
    /// `/host/path:/in[:ro]`.
    Bind {
        source: String,
        target: String,
        options: Option<String>,
    },
    /// `/data`: a volume the engine makes for the container.
    Anonymous { target: String },
}

const MOUNT_OPTIONS: &[&str] = &[
    "ro",
    "rw",
    "z",
    "Z",
    "nocopy",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "private",
    "rprivate",
    "cached",
    "delegated",
    "consistent",
];

impl Mount {
    /// The path inside the container.
    pub fn target(&self) -> &str {
        match self {
            Mount::Volume { target, .. }
            | Mount::Bind { target, .. }
            | Mount::Anonymous { target } => target,
        }
    }
}

impl FromStr for Mount {
    type Err = String;
    fn from_str(v: &str) -> Result<Self, String> {
        let parts: Vec<&str> = v.split(':').collect();
        let (src, target, options) = match parts.as_slice() {
            [t] => (None, *t, None),
            [s, t] => (Some(*s), *t, None),
            [s, t, o] => (Some(*s), *t, Some(*o)),
            _ => return Err(format!("volume {v:?}: want [source:]target[:options]")),
        };
        if !target.starts_with('/') {
            return Err(format!(
                "volume {v:?}: the target {target:?} must be an absolute path"
            ));
        }
        if let Some(o) = options {
            if let Some(bad) = o.split(',').find(|o| !MOUNT_OPTIONS.contains(o)) {
                return Err(format!("volume {v:?}: unknown option {bad:?}"));
            }
        }
        let target = target.to_owned();
        let options = options.map(str::to_owned);
        Ok(match src {
            None => Mount::Anonymous { target },
            Some(s) if s.starts_with('/') => Mount::Bind {
                source: s.to_owned(),
                target,
                options,
            },
            Some(s) if s.starts_with('.') || s.starts_with('~') => {
                return Err(format!(
                    "volume {v:?}: relative bind mounts mean nothing on a device; use a named volume or an absolute path"
                ))
            }
            Some(s) if valid_name(s) => Mount::Volume {
                name: s.to_owned(),
                target,
                options,
            },
            Some(s) => {
                return Err(format!(
                    "volume {v:?}: {s:?} is neither an absolute path nor a volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"
                ))
            }
        })
    }
}

/// A compose device mapping: `/dev/host[:/dev/container[:rwm]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMapping {
    pub host: String,
    pub container: String,
    /// Cgroup permissions, a non-empty subset of `rwm`.
    pub permissions: String,
}

impl FromStr for DeviceMapping {
    type Err = String;
    fn from_str(d: &str) -> Result<Self, String> {
        let parts: Vec<&str> = d.split(':').collect();
        let (host, container, perms) = match parts.as_slice() {
            [h] => (*h, *h, "rwm"),
            [h, c] if c.starts_with('/') => (*h, *c, "rwm"),
            [h, p] => (*h, *h, *p),
            [h, c, p] => (*h, *c, *p),
            _ => return Err(format!("device {d:?}: want host[:container[:rwm]]")),
        };
        for path in [host, container] {
            if !path.starts_with('/') {
                return Err(format!("device {d:?}: {path:?} must be an absolute path"));
            }
        }
        if perms.is_empty() || !perms.chars().all(|c| "rwm".contains(c)) {
            return Err(format!(
                "device {d:?}: permissions {perms:?} must be letters of rwm"
            ));
        }
        Ok(Self {
            host: host.to_owned(),
            container: container.to_owned(),
            permissions: perms.to_owned(),
        })
    }
}

/// Compose `network_mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkMode {
    Host,
    Bridge,
    None,
    /// `service:X`: share the network namespace of service X.
    Service(String),
    /// `container:ID`: share the network of a container resin does not manage.
    Container(String),
}

impl FromStr for NetworkMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "host" => NetworkMode::Host,
            "bridge" => NetworkMode::Bridge,
            "none" => NetworkMode::None,
            _ => match s.split_once(':') {
                Some(("service", x)) if !x.is_empty() => NetworkMode::Service(x.to_owned()),
                Some(("container", x)) if !x.is_empty() => NetworkMode::Container(x.to_owned()),
                _ => {
                    return Err(format!(
                    "network_mode {s:?} is not host, bridge, none, service:NAME or container:NAME"
                ))
                }
            },
        })
    }
}

// ---------------------------------------------------------------------------
// JSON helpers

fn string_list(path: &str, v: &Value) -> Result<Vec<String>, ComposeError> {
    let arr = v.as_array().ok_or_else(|| err(path, "expected a list"))?;
    arr.iter()
        .enumerate()
        .map(|(i, x)| match x {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            _ => Err(err(&format!("{path}[{i}]"), "expected a string")),
        })
        .collect()
}

/// How [`kv_map`] takes a list entry without `=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareKey {
    /// `KEY` is `KEY=""` (what a compose file means by it).
    Empty,
    /// `KEY` is an error (the stored composition is explicit).
    Refuse,
}

/// Compose maps written as `{K: V}` or `["K=V", …]` (environment, labels,
/// driver options); scalar values become strings.
pub fn kv_map(
    path: &str,
    v: &Value,
    bare: BareKey,
) -> Result<BTreeMap<String, String>, ComposeError> {
    match v {
        Value::Null => Ok(BTreeMap::new()),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Null => String::new(),
                    _ => {
                        return Err(err(
                            &format!("{path}.{k}"),
                            "expected a string, number or bool",
                        ))
                    }
                };
                Ok((k.clone(), s))
            })
            .collect(),
        Value::Array(_) => string_list(path, v)?
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
                None if bare == BareKey::Empty && !kv.is_empty() => Ok((kv, String::new())),
                _ => Err(err(path, format!("{kv:?} is not KEY=VALUE"))),
            })
            .collect(),
        _ => Err(err(path, "expected a map or a list of KEY=VALUE")),
    }
}

fn command(path: &str, v: &Value) -> Result<Vec<String>, ComposeError> {
    match v {
        Value::String(s) => Ok(s.split_whitespace().map(str::to_owned).collect()),
        _ => string_list(path, v),
    }
}

/// Compose `depends_on`: a list of service names, or a map of name to
/// `{condition: service_started}` (the only condition the supervisor keeps:
/// it starts dependencies first).
fn depends_on(path: &str, v: &Value) -> Result<Vec<String>, ComposeError> {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(n, spec)| {
                let cond = spec.get("condition").and_then(Value::as_str);
                if !matches!(cond, None | Some("service_started")) {
                    return Err(err(
                        &format!("{path}.{n}.condition"),
                        "only service_started is supported",
                    ));
                }
                Ok(n.clone())
            })
            .collect(),
        _ => string_list(path, v),
    }
}

/// Every `depends_on` names a service of the same release, and the
/// dependencies have no cycle (the supervisor could start none of them).
fn check_dependencies(rel: &ReleaseTarget) -> Result<(), ComposeError> {
    for (name, svc) in &rel.services {
        if let Some(d) = svc
            .depends_on
            .iter()
            .find(|d| !rel.services.contains_key(*d))
        {
            return Err(err(
                &format!("services.{name}.depends_on"),
                format!("unknown service {d:?}"),
            ));
        }
    }
    // Depth-first search; `path` is the chain being followed.
    fn visit<'a>(
        rel: &'a ReleaseTarget,
        name: &'a str,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Result<(), String> {
        if let Some(at) = path.iter().position(|p| *p == name) {
            let mut cycle = path[at..].to_vec();
            cycle.push(name);
            return Err(cycle.join(" -> "));
        }
        if done.contains(name) {
            return Ok(());
        }
        path.push(name);
        if let Some(svc) = rel.services.get(name) {
            for d in &svc.depends_on {
                visit(rel, d, path, done)?;
            }
        }
        path.pop();
        done.insert(name);
        Ok(())
    }
    let mut done = BTreeSet::new();
    for name in rel.services.keys() {
        visit(rel, name, &mut Vec::new(), &mut done).map_err(|cycle| {
            err(
                &format!("services.{name}.depends_on"),
                format!("dependency cycle {cycle}"),
            )
        })?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The service and the release

/// Checks the typed fields of one service (ports, restart, volumes,
/// devices, network_mode) as the engine will read them. `services` are the
/// release's service names, for `network_mode: service:X`.
pub fn validate_service(
    name: &str,
    svc: &ServiceTarget,
    services: &BTreeSet<&str>,
) -> Result<(), ComposeError> {
    let p = |field: &str| format!("services.{name}.{field}");
    for (i, port) in svc.ports.iter().enumerate() {
        port.parse::<PortMapping>()
            .map_err(|m| err(&p(&format!("ports[{i}]")), m))?;
    }
    svc.restart
        .parse::<Restart>()
        .map_err(|m| err(&p("restart"), m))?;
    for (i, v) in svc.volumes.iter().enumerate() {
        v.parse::<Mount>()
            .map_err(|m| err(&p(&format!("volumes[{i}]")), m))?;
    }
    for (i, d) in svc.devices.iter().enumerate() {
        d.parse::<DeviceMapping>()
            .map_err(|m| err(&p(&format!("devices[{i}]")), m))?;
    }
    for (i, n) in svc.networks.iter().enumerate() {
        if !valid_name(n) {
            return Err(err(
                &p(&format!("networks[{i}]")),
                format!("{n:?} is not a network name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"),
            ));
        }
    }
    if let Some(m) = &svc.network_mode {
        match m.parse::<NetworkMode>() {
            Err(e) => return Err(err(&p("network_mode"), e)),
            Ok(NetworkMode::Service(x)) if x == name || !services.contains(x.as_str()) => {
                return Err(err(
                    &p("network_mode"),
                    format!("service:{x} names no other service of the release"),
                ))
            }
            Ok(_) => {}
        }
        if !svc.networks.is_empty() {
            return Err(err(
                &p("networks"),
                "a service with network_mode joins no networks",
            ));
        }
    }
    Ok(())
}

fn named_objects(
    top: &Map<String, Value>,
    key: &str,
) -> Result<Vec<(String, NamedObject)>, ComposeError> {
    let Some(v) = top.get(key) else {
        return Ok(vec![]);
    };
    let m = match v {
        Value::Null => return Ok(vec![]),
        Value::Object(m) => m,
        _ => return Err(err(key, format!("`{key}` must be a mapping"))),
    };
    let empty = Map::new();
    m.iter()
        .map(|(n, spec)| {
            let path = format!("{key}.{n}");
            if !valid_name(n) {
                return Err(err(&path, "names use [a-zA-Z0-9][a-zA-Z0-9_.-]*"));
            }
            let s = match spec {
                Value::Null => &empty,
                Value::Object(s) => s,
                _ => return Err(err(&path, "expected a map")),
            };
            for k in s.keys() {
                if !NAMED_OBJECT_KEYS.contains(&k.as_str()) {
                    return Err(err(
                        &format!("{path}.{k}"),
                        format!(
                            "unsupported key (supported: {})",
                            NAMED_OBJECT_KEYS.join(", ")
                        ),
                    ));
                }
            }
            let driver = match s.get("driver") {
                None | Some(Value::Null) => None,
                Some(Value::String(d)) if !d.trim().is_empty() => Some(d.clone()),
                Some(_) => return Err(err(&format!("{path}.driver"), "expected a driver name")),
            };
            let get = |k: &str| match s.get(k) {
                Some(l) => kv_map(&format!("{path}.{k}"), l, BareKey::Refuse),
                None => Ok(BTreeMap::new()),
            };
            Ok((
                n.clone(),
                NamedObject {
                    driver,
                    driver_opts: get("driver_opts")?,
                    labels: get("labels")?,
                },
            ))
        })
        .collect()
}

struct NamedObject {
    driver: Option<String>,
    driver_opts: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
}

/// Validates a compose document (as JSON) into a release target.
pub fn parse_release(doc: &Value) -> Result<ReleaseTarget, ComposeError> {
    let top = doc.as_object().ok_or_else(|| {
        err(
            "",
            "the composition must be a mapping with a `services` key",
        )
    })?;
    for k in top.keys() {
        if !TOP_LEVEL_KEYS.contains(&k.as_str()) {
            return Err(err(
                k,
                "unsupported top-level key (services, volumes, networks)",
            ));
        }
    }
    let services = match top.get("services") {
        Some(Value::Object(m)) if !m.is_empty() => m,
        Some(Value::Object(_)) => {
            return Err(err(
                "services",
                "is empty: a non-empty map of services is required",
            ))
        }
        Some(_) => {
            return Err(err(
                "services",
                "must be a mapping of service name to service",
            ))
        }
        None => return Err(err("services", "a non-empty map of services is required")),
    };
    let mut out = ReleaseTarget::default();
    for (name, svc) in services {
        let p = format!("services.{name}");
        if !valid_name(name) {
            return Err(err(
                &p,
                "service names must match [a-zA-Z0-9][a-zA-Z0-9_.-]*",
            ));
        }
        let m = svc
            .as_object()
            .ok_or_else(|| err(&p, "the service must be a mapping"))?;
        for k in m.keys() {
            if !SERVICE_KEYS.contains(&k.as_str()) {
                return Err(err(
                    &format!("{p}.{k}"),
                    format!("unsupported key (supported: {})", SERVICE_KEYS.join(", ")),
                ));
            }
        }
        let image = m
            .get("image")
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty() && !s.contains(char::is_whitespace))
            .ok_or_else(|| {
                err(
                    &format!("{p}.image"),
                    "a non-empty image reference is required",
                )
            })?;
        let mut t = ServiceTarget {
            image: image.to_owned(),
            restart: Restart::default().as_str().into(),
            ..Default::default()
        };
        for (k, v) in m {
            let kp = format!("{p}.{k}");
            match k.as_str() {
                "environment" => t.environment = kv_map(&kp, v, BareKey::Refuse)?,
                "labels" => t.labels = kv_map(&kp, v, BareKey::Refuse)?,
                "ports" => t.ports = string_list(&kp, v)?,
                "volumes" => t.volumes = string_list(&kp, v)?,
                "networks" => {
                    t.networks = match v {
                        Value::Object(n) => n.keys().cloned().collect(),
                        _ => string_list(&kp, v)?,
                    }
                }
                "restart" => {
                    t.restart = v
                        .as_str()
                        .ok_or_else(|| err(&kp, "one of no, always, on-failure, unless-stopped"))?
                        .to_owned()
                }
                "command" => t.command = Some(command(&kp, v)?),
                "entrypoint" => t.entrypoint = Some(command(&kp, v)?),
                "privileged" => {
                    t.privileged = v.as_bool().ok_or_else(|| err(&kp, "expected true/false"))?
                }
                "devices" => t.devices = string_list(&kp, v)?,
                "cap_add" => t.cap_add = string_list(&kp, v)?,
                "cap_drop" => t.cap_drop = string_list(&kp, v)?,
                "network_mode" => {
                    t.network_mode = Some(
                        v.as_str()
                            .ok_or_else(|| err(&kp, "expected a string"))?
                            .to_owned(),
                    )
                }
                "depends_on" => t.depends_on = depends_on(&kp, v)?,
                _ => {}
            }
        }
        out.services.insert(name.clone(), t);
    }
    let names: BTreeSet<&str> = out.services.keys().map(String::as_str).collect();
    for (name, svc) in &out.services {
        validate_service(name, svc, &names)?;
    }
    check_dependencies(&out)?;
    for (n, o) in named_objects(top, "volumes")? {
        out.volumes.insert(
            n,
            VolumeTarget {
                driver: o.driver,
                driver_opts: o.driver_opts,
                labels: o.labels,
            },
        );
    }
    for (n, o) in named_objects(top, "networks")? {
        out.networks.insert(
            n,
            NetworkTarget {
                driver: o.driver,
                driver_opts: o.driver_opts,
                labels: o.labels,
            },
        );
    }
    for (name, svc) in &out.services {
        for (i, n) in svc.networks.iter().enumerate() {
            if n != "default" && !out.networks.contains_key(n) {
                return Err(err(
                    &format!("services.{name}.networks[{i}]"),
                    format!("network {n:?} is not declared under the top-level `networks`"),
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
