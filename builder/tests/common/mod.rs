//! Shared helpers of the builder's integration tests: the real Docker engine
//! and registry from scripts/services.sh, the arm64 base image made by
//! scripts/lib/base-image.sh, and small projects on disk.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use resin_api_types::build::BuildLogLine;
use resin_builder::{BuildError, BuildOutput, BuildRequest, Limits};

pub fn docker_host() -> String {
    std::env::var("RESIN_TEST_DOCKER_HOST").unwrap_or_else(|_| {
        panic!("RESIN_TEST_DOCKER_HOST is unset: run scripts/services.sh and `source /tmp/resin-run/env.sh`")
    })
}

pub fn registry() -> String {
    std::env::var("RESIN_TEST_REGISTRY").unwrap_or_else(|_| {
        panic!("RESIN_TEST_REGISTRY is unset: run scripts/services.sh and `source /tmp/resin-run/env.sh`")
    })
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Pushes the arm64 busybox base image (once per test binary) and returns
/// `<registry>/library/busybox`.
pub fn base_image() -> String {
    static DONE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let script = repo_root().join("scripts/lib/base-image.sh");
        let out = Command::new("bash")
            .arg("-c")
            .arg("source \"$1\" && push_base_image \"$2\" \"$3\"")
            .arg("bash")
            .arg(&script)
            .arg(registry())
            .arg(docker_host())
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "push_base_image: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("{}/library/busybox", registry())
    })
    .clone()
}

/// Writes `files` (relative path, text) under a new temp dir.
pub fn project(files: &[(&str, String)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (rel, text) in files {
        let p = d.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    d
}

/// A namespace no other test or run uses.
pub fn namespace(what: &str) -> String {
    format!(
        "h-builder-test/{what}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_000
    )
}

pub fn request(dir: &Path, namespace: &str) -> BuildRequest {
    BuildRequest {
        project_dir: dir.to_owned(),
        registry: registry(),
        device_registry: None,
        namespace: namespace.to_owned(),
        platform: "linux/arm64".into(),
        tag: "b1".into(),
        nocache: false,
        limits: Limits {
            timeout: Duration::from_secs(300),
            max_context_bytes: 10 << 20,
        },
    }
}

/// Runs a build; returns its result and the log lines.
pub async fn build(req: &BuildRequest) -> (Result<BuildOutput, BuildError>, Vec<BuildLogLine>) {
    let docker = bollard::Docker::connect_with_host(&docker_host()).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let r = resin_builder::run_machine(&docker, req, &tx).await;
    drop(tx);
    let mut lines = Vec::new();
    while let Some(l) = rx.recv().await {
        lines.push(l);
    }
    (r, lines)
}

/// The tags the registry holds for a repository (none when it has none).
pub fn registry_tags(repo_path: &str) -> Vec<String> {
    let url = format!("http://{}/v2/{repo_path}/tags/list", registry());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent.get(&url).call().unwrap();
    if r.status() == 404 {
        return vec![];
    }
    let v: serde_json::Value =
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    v["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// GET a JSON document from the registry with an Accept header.
pub fn registry_json(path: &str, accept: &str) -> serde_json::Value {
    let url = format!("http://{}{path}", registry());
    let mut r = ureq::get(&url).header("Accept", accept).call().unwrap();
    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
}

pub fn log_text(lines: &[BuildLogLine]) -> String {
    lines
        .iter()
        .map(|l| match &l.service {
            Some(s) => format!("[{s}] {}", l.message),
            None => l.message.clone(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The local images whose repository is under `namespace`.
pub fn local_images(namespace: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .env("DOCKER_HOST", docker_host())
        .output()
        .expect("docker CLI");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("/{namespace}/")))
        .map(str::to_owned)
        .collect()
}

/// Removes the local images under `namespace` (the fleet cache a test made).
pub fn remove_local_images(namespace: &str) {
    for i in local_images(namespace) {
        let _ = Command::new("docker")
            .args(["rmi", &i])
            .env("DOCKER_HOST", docker_host())
            .output();
    }
}
