//! Shared helpers of the supervisor's integration tests: the real Docker
//! engine and registry from scripts/services.sh, tiny busybox images, and
//! target-state builders.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use resin_api_types::{AppTarget, ReleaseTarget, ServiceTarget};
use resin_supervisor::engine::Engine;
use resin_supervisor::planner::TargetApps;

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

/// Runs the docker CLI against the test engine; panics with its stderr.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", docker_host())
        .output()
        .expect("docker CLI");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Like [`docker`], but returns None on failure.
pub fn docker_ok(args: &[&str]) -> Option<String> {
    let out = Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", docker_host())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A tar of a busybox-static rootfs (Debian's busybox-static), made once.
fn busybox_tar() -> PathBuf {
    let dir = PathBuf::from("/tmp/resin-run/supervisor-test");
    let tar = dir.join("busybox-rootfs.tar");
    if tar.exists() {
        return tar;
    }
    assert!(
        std::path::Path::new("/bin/busybox").exists(),
        "/bin/busybox missing: apt-get install busybox-static (scripts/services.sh installs it)"
    );
    let root = dir.join(format!("rootfs.{}", std::process::id()));
    std::fs::create_dir_all(root.join("bin")).unwrap();
    for d in ["tmp", "data", "proc", "sys", "dev", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for app in [
        "sh", "sleep", "echo", "cat", "touch", "ls", "date", "env", "rm", "mkdir", "true",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(app)).unwrap();
    }
    let part = dir.join(format!("busybox.{}.tar", std::process::id()));
    let st = Command::new("tar")
        .args([
            "-C",
            root.to_str().unwrap(),
            "-cf",
            part.to_str().unwrap(),
            ".",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::rename(&part, &tar).unwrap();
    let _ = std::fs::remove_dir_all(&root);
    tar
}

/// Imports a distinct busybox image, pushes it to the test registry and
/// removes it locally, so the supervisor has to pull it. Returns its ref.
pub fn registry_image(name: &str) -> String {
    let r = local_image(&format!("{}/sv-test/{name}", registry()));
    docker(&["push", &r]);
    docker(&["rmi", &r]);
    r
}

/// Imports a distinct busybox image under `repo:latest` (no registry).
pub fn local_image(repo: &str) -> String {
    let tar = busybox_tar();
    let r = format!("{repo}:latest");
    docker(&[
        "import",
        "--change",
        &format!("ENV IMAGE_REF={r}"),
        tar.to_str().unwrap(),
        &r,
    ]);
    r
}

/// A unique 32-hex app uuid per test.
pub fn app_uuid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A service running a shell that logs a line and waits, and exits on TERM.
pub fn svc(image: &str) -> ServiceTarget {
    ServiceTarget {
        image: image.into(),
        restart: "always".into(),
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            "echo started $RESIN_SERVICE_NAME; trap 'exit 0' TERM; while true; do sleep 1; done"
                .into(),
        ]),
        ..Default::default()
    }
}

pub fn target(app: &str, release: &str, services: &[(&str, ServiceTarget)]) -> TargetApps {
    let mut rel = ReleaseTarget::default();
    for (n, s) in services {
        rel.services.insert((*n).into(), s.clone());
    }
    let mut a = AppTarget {
        name: "test-app".into(),
        ..Default::default()
    };
    a.releases.insert(release.into(), rel);
    BTreeMap::from([(app.to_owned(), a)])
}

pub async fn engine() -> Engine {
    Engine::connect(Some(&docker_host()))
        .await
        .expect("connect to the test dockerd")
}

/// `name state release` of the managed containers of `app`, sorted.
pub fn containers_of(app: &str) -> Vec<String> {
    let out = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=io.resin.app-uuid={app}"),
        "--format",
        "{{.Label \"io.resin.service-name\"}} {{.State}} {{.Label \"io.resin.release-uuid\"}}",
    ]);
    let mut v: Vec<String> = out
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    v
}

/// Removes everything of `app` (containers, networks, volumes, lock dir).
pub fn cleanup(app: &str) {
    let ids = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=io.resin.app-uuid={app}"),
    ]);
    for id in ids.lines().filter(|l| !l.is_empty()) {
        let _ = docker_ok(&["rm", "-f", id]);
    }
    let nets = docker(&[
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("label=io.resin.app-uuid={app}"),
    ]);
    for n in nets.lines().filter(|l| !l.is_empty()) {
        let _ = docker_ok(&["network", "rm", n]);
    }
    let vols = docker(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("label=io.resin.app-uuid={app}"),
    ]);
    for v in vols.lines().filter(|l| !l.is_empty()) {
        let _ = docker_ok(&["volume", "rm", v]);
    }
    let _ = std::fs::remove_dir_all(format!("/tmp/resin/locks/{app}"));
}
