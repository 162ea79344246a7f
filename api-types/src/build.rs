//! Builds (`git push`, `resin push`): the project a build starts from (a
//! compose document whose services have `build:` contexts or `image:`
//! references, validated by the one compose validator), the build states,
//! and the NDJSON log lines the cloud streams back.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::compose::{parse_release, ComposeError};
use crate::target::ReleaseTarget;

/// The keys of a service's `build:` mapping that resin understands.
pub const BUILD_KEYS: &[&str] = &["context", "dockerfile", "args"];

/// Where a service's image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceSource {
    /// Built from a context directory of the project.
    Build(BuildSpec),
    /// Pulled from a registry and pinned by digest.
    Image(String),
}

/// A service's `build:` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// The context directory, relative to the project root, normalised
    /// (`.` for the root; never absolute, never leaving the project).
    pub context: String,
    /// The Dockerfile, relative to the context (`Dockerfile` by default).
    pub dockerfile: String,
    /// Build arguments.
    pub args: BTreeMap<String, String>,
}

/// A validated build project: each service's source, in name order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildProject {
    pub services: BTreeMap<String, ServiceSource>,
    /// The document without the `build:` keys; [`BuildProject::pin`] puts
    /// the built images in.
    doc: Value,
}

const PLACEHOLDER: &str = "resin.invalid/placeholder:build";

fn err(path: &str, message: impl fmt::Display) -> ComposeError {
    ComposeError {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// Normalises a relative path of the project: no absolute paths, no `..`
/// that leaves the root. `./a/../b/` becomes `b`, `.` and `` become `.`.
fn relative_path(path: &str, p: &str) -> Result<String, ComposeError> {
    if p.starts_with('/') {
        return Err(err(path, format!("{p:?} must be relative to the project")));
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(err(path, format!("{p:?} leaves the project directory")));
                }
            }
            c => parts.push(c),
        }
    }
    Ok(if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    })
}

fn build_spec(path: &str, v: &Value) -> Result<BuildSpec, ComposeError> {
    let mut spec = BuildSpec {
        context: ".".into(),
        dockerfile: "Dockerfile".into(),
        args: BTreeMap::new(),
    };
    match v {
        Value::String(s) => spec.context = relative_path(path, s)?,
        Value::Object(m) => {
            for (k, v) in m {
                let kp = format!("{path}.{k}");
                match k.as_str() {
                    "context" => {
                        let s = v.as_str().ok_or_else(|| err(&kp, "expected a string"))?;
                        spec.context = relative_path(&kp, s)?;
                    }
                    "dockerfile" => {
                        let s = v.as_str().ok_or_else(|| err(&kp, "expected a string"))?;
                        spec.dockerfile = relative_path(&kp, s)?;
                        if spec.dockerfile == "." {
                            return Err(err(&kp, "names no file"));
                        }
                    }
                    "args" => {
                        spec.args = crate::compose::kv_map(&kp, v, crate::compose::BareKey::Refuse)?
                    }
                    _ => {
                        return Err(err(
                            &kp,
                            format!("unsupported key (supported: {})", BUILD_KEYS.join(", ")),
                        ))
                    }
                }
            }
        }
        _ => {
            return Err(err(
                path,
                "expected a context path or a mapping with `context`",
            ))
        }
    }
    Ok(spec)
}

/// Validates a compose document whose services may have `build:` instead
/// of (or besides) `image:`. Everything but `build:` goes through
/// [`parse_release`], so a bad port or an unknown key fails exactly as it
/// would on `POST /v1/release`.
pub fn parse_build_project(doc: &Value) -> Result<BuildProject, ComposeError> {
    let mut doc = doc.clone();
    let mut services = BTreeMap::new();
    if let Some(Value::Object(svcs)) = doc.get_mut("services") {
        for (name, svc) in svcs.iter_mut() {
            let Some(m) = svc.as_object_mut() else {
                continue; // parse_release names it
            };
            let p = format!("services.{name}");
            let source =
                match m.remove("build") {
                    Some(b) => {
                        // With both, compose builds and tags the result `image`;
                        // resin names its images itself, so `image` is ignored.
                        m.insert("image".into(), Value::String(PLACEHOLDER.into()));
                        ServiceSource::Build(build_spec(&format!("{p}.build"), &b)?)
                    }
                    None => match m.get("image").and_then(Value::as_str) {
                        Some(i) => ServiceSource::Image(i.to_owned()),
                        None => return Err(err(
                            &p,
                            "needs `build:` (a context to build) or `image:` (an image to pull)",
                        )),
                    },
                };
            services.insert(name.clone(), source);
        }
    }
    parse_release(&doc)?;
    Ok(BuildProject { services, doc })
}

impl BuildProject {
    /// A project of one service, `main`, built from the root's Dockerfile.
    pub fn single_dockerfile() -> BuildProject {
        let mut services = BTreeMap::new();
        services.insert(
            "main".to_owned(),
            ServiceSource::Build(BuildSpec {
                context: ".".into(),
                dockerfile: "Dockerfile".into(),
                args: BTreeMap::new(),
            }),
        );
        let doc =
            serde_json::json!({"services": {"main": {"image": PLACEHOLDER, "restart": "always"}}});
        BuildProject { services, doc }
    }

    /// The release composition with each service's image replaced by its
    /// pinned reference (`repo@sha256:…`), validated again.
    pub fn pin(
        &self,
        images: &BTreeMap<String, String>,
    ) -> Result<(Value, ReleaseTarget), ComposeError> {
        let mut doc = self.doc.clone();
        if let Some(Value::Object(svcs)) = doc.get_mut("services") {
            for (name, svc) in svcs.iter_mut() {
                let image = images.get(name).ok_or_else(|| {
                    err(&format!("services.{name}"), "no image was built or pulled")
                })?;
                if let Some(m) = svc.as_object_mut() {
                    m.insert("image".into(), Value::String(image.clone()));
                }
            }
        }
        let target = parse_release(&doc)?;
        Ok((doc, target))
    }
}

/// A build's state. Transitions (guarded by [`BuildState::can_go`]):
/// queued → building → success | failed | cancelled, and queued → cancelled
/// or failed (a job that cannot start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildState {
    Queued,
    Building,
    Success,
    Failed,
    Cancelled,
}

impl BuildState {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildState::Queued => "queued",
            BuildState::Building => "building",
            BuildState::Success => "success",
            BuildState::Failed => "failed",
            BuildState::Cancelled => "cancelled",
        }
    }

    /// Whether a build may go from `self` to `to`.
    pub fn can_go(self, to: BuildState) -> bool {
        use BuildState::*;
        matches!(
            (self, to),
            (Queued, Building)
                | (Queued, Failed)
                | (Queued, Cancelled)
                | (Building, Success)
                | (Building, Failed)
                | (Building, Cancelled)
        )
    }

    /// Success, failed and cancelled are final.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            BuildState::Success | BuildState::Failed | BuildState::Cancelled
        )
    }
}

impl fmt::Display for BuildState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BuildState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "queued" => BuildState::Queued,
            "building" => BuildState::Building,
            "success" => BuildState::Success,
            "failed" => BuildState::Failed,
            "cancelled" => BuildState::Cancelled,
            _ => return Err(format!("unknown build state {s:?}")),
        })
    }
}

/// One NDJSON line of a build's log stream (`POST /v1/build`, the stored
/// log, and the lines `git push` shows as `remote:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildLogLine {
    /// The service the line is about; none for the build as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub message: String,
    /// Set on the lines that change the build's or a service's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<BuildState>,
    /// The release made by a successful build (on the last line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<i64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_error: bool,
}

/// Maps a fleet's device type to the image platform its devices run.
pub fn platform_of_device_type(device_type: &str) -> Option<&'static str> {
    Some(match device_type {
        "qemuarm64" | "raspberrypi4-64" | "raspberrypi3-64" | "raspberrypi5"
        | "generic-aarch64" | "jetson-nano" | "rockpi-4b-rk3399" | "odroid-c2" => "linux/arm64",
        "raspberrypi3" | "raspberrypi2" | "beaglebone-black" | "generic-armv7ahf" => "linux/arm/v7",
        "raspberrypi" | "raspberrypi0-2w-32" => "linux/arm/v6",
        "qemux86-64" | "genericx86-64" | "generic-amd64" | "intel-nuc" => "linux/amd64",
        _ => return None,
    })
}

/// `.dockerignore` patterns (what a build context leaves out; `resin push`
/// and the builder read them the same way): `#` comments, `!` re-includes, `*`, `?` and
/// `**`; a pattern that matches a directory excludes all below it; the last
/// matching pattern wins (as in Docker).
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    rules: Vec<(bool, Vec<String>)>,
}

impl DockerIgnore {
    pub fn parse(text: &str) -> DockerIgnore {
        let mut rules = Vec::new();
        for line in text.lines() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (neg, pat) = match l.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, l),
            };
            let parts: Vec<String> = pat
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .map(str::to_owned)
                .collect();
            if !parts.is_empty() {
                rules.push((neg, parts));
            }
        }
        DockerIgnore { rules }
    }

    /// Whether the relative path `rel` (`a/b/c`) is excluded.
    pub fn excluded(&self, rel: &str) -> bool {
        let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
        let mut out = false;
        for (neg, pat) in &self.rules {
            // The path or any of its parent directories matches.
            let hit = (1..=comps.len()).any(|n| match_parts(pat, &comps[..n]));
            if hit {
                out = !neg;
            }
        }
        out
    }
}

fn match_parts(pat: &[String], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p == "**" => (0..=path.len()).any(|i| match_parts(rest, &path[i..])),
        Some((p, rest)) => match path.split_first() {
            Some((c, prest)) => glob(p.as_bytes(), c.as_bytes()) && match_parts(rest, prest),
            None => false,
        },
    }
}

/// `*` and `?` within one path component.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((b'?', rest)) => !s.is_empty() && glob(rest, &s[1..]),
        Some((b'\\', rest)) if !rest.is_empty() => {
            !s.is_empty() && s[0] == rest[0] && glob(&rest[1..], &s[1..])
        }
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn build_and_image_services_are_told_apart() {
        let p = parse_build_project(&json!({"services": {
            "web": {"build": "./web/", "ports": ["80:80"]},
            "db": {"image": "reg/db:1"},
            "api": {"build": {"context": "api", "dockerfile": "docker/Dockerfile.arm", "args": {"A": "1"}}},
        }}))
        .unwrap();
        assert_eq!(
            p.services["web"],
            ServiceSource::Build(BuildSpec {
                context: "web".into(),
                dockerfile: "Dockerfile".into(),
                args: BTreeMap::new()
            })
        );
        assert_eq!(p.services["db"], ServiceSource::Image("reg/db:1".into()));
        match &p.services["api"] {
            ServiceSource::Build(b) => {
                assert_eq!(b.dockerfile, "docker/Dockerfile.arm");
                assert_eq!(b.args["A"], "1");
            }
            o => panic!("{o:?}"),
        }
        let images: BTreeMap<String, String> = ["web", "db", "api"]
            .iter()
            .map(|s| (s.to_string(), format!("r/{s}@sha256:{}", "a".repeat(64))))
            .collect();
        let (doc, target) = p.pin(&images).unwrap();
        assert_eq!(doc["services"]["web"]["ports"][0], "80:80");
        assert!(doc["services"]["web"].get("build").is_none());
        assert_eq!(target.services["db"].image, images["db"]);
    }

    #[test]
    fn the_compose_validator_refuses_what_it_refuses_for_releases() {
        let e = parse_build_project(
            &json!({"services": {"web": {"build": ".", "ports": ["99999:80"]}}}),
        )
        .unwrap_err();
        assert!(e.path.starts_with("services.web.ports"), "{e}");
        let e = parse_build_project(&json!({"services": {"web": {"build": ".", "colour": "red"}}}))
            .unwrap_err();
        assert_eq!(e.path, "services.web.colour");
        let e = parse_build_project(
            &json!({"services": {"web": {"build": {"context": ".", "target": "x"}}}}),
        )
        .unwrap_err();
        assert_eq!(e.path, "services.web.build.target");
        let e =
            parse_build_project(&json!({"services": {"web": {"build": "../other"}}})).unwrap_err();
        assert!(e.message.contains("leaves the project"), "{e}");
        let e = parse_build_project(&json!({"services": {"web": {"build": "/etc"}}})).unwrap_err();
        assert!(e.message.contains("relative"), "{e}");
        let e =
            parse_build_project(&json!({"services": {"web": {"restart": "always"}}})).unwrap_err();
        assert!(e.message.contains("build"), "{e}");
        let e = parse_build_project(&json!({"services": {}})).unwrap_err();
        assert_eq!(e.path, "services");
    }

    #[test]
    fn build_states_move_only_forward() {
        use BuildState::*;
        assert!(Queued.can_go(Building));
        assert!(Building.can_go(Success));
        assert!(Building.can_go(Cancelled));
        assert!(!Success.can_go(Building));
        assert!(!Failed.can_go(Success));
        assert!(!Queued.can_go(Success));
        assert!(!Cancelled.can_go(Building));
        for s in [Queued, Building, Success, Failed, Cancelled] {
            assert_eq!(s.as_str().parse::<BuildState>().unwrap(), s);
        }
    }

    #[test]
    fn device_types_map_to_platforms() {
        assert_eq!(platform_of_device_type("qemuarm64"), Some("linux/arm64"));
        assert_eq!(
            platform_of_device_type("raspberrypi4-64"),
            Some("linux/arm64")
        );
        assert_eq!(platform_of_device_type("toaster"), None);
    }

    #[test]
    fn dockerignore_patterns_match_like_docker() {
        let i = DockerIgnore::parse("# c\nnode_modules\n*.log\n!keep.log\nsecret/**\ndocs/*.md\n");
        assert!(i.excluded("node_modules"));
        assert!(i.excluded("node_modules/a/b.js"));
        assert!(i.excluded("x.log"));
        assert!(!i.excluded("keep.log"));
        assert!(i.excluded("secret/a/b"));
        assert!(i.excluded("docs/a.md"));
        assert!(!i.excluded("docs/sub/a.md"));
        assert!(!i.excluded("src/main.rs"));
        assert!(
            !i.excluded("sub/x.log"),
            "patterns are anchored at the root"
        );
    }
}
