//! Test apps: an arm64 busybox image made with the host's private dockerd
//! (`docker import` of a busybox-static:arm64 rootfs), pushed to the loopback
//! registry, and the compose documents of the test releases.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::assets::{run, AssetError, Workspace};

/// The env var naming the private dockerd (scripts/services.sh starts it).
pub const DOCKER_HOST_VAR: &str = "RESIN_TEST_DOCKER_HOST";

/// The test image, pushed: `repo@sha256:…` as the guest names it.
#[derive(Debug, Clone)]
pub struct TestImage {
    /// e.g. `10.0.2.2:55000/resin-qemu/busybox@sha256:…`
    pub guest_ref: String,
}

fn docker(host: &str) -> Command {
    let mut c = Command::new("docker");
    c.env("DOCKER_HOST", host);
    c
}

/// Builds and pushes the arm64 busybox image. `host_registry` is where the
/// host pushes (127.0.0.1:port), `guest_registry` where the device pulls.
/// With `filler_mib` > 0 the image also holds that much random data
/// (`/filler.bin`), so the device needs a while to pull it; `tag` tells the
/// variants apart.
pub fn push_busybox(
    ws: &Workspace,
    work: &Path,
    docker_host: &str,
    host_registry: &str,
    guest_registry: &str,
    tag: &str,
    filler_mib: usize,
) -> Result<TestImage, AssetError> {
    let deb = ws.step("busybox-deb", &[], &[])?;
    let dir = work.join(format!("busybox-rootfs-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|source| AssetError::Io {
        what: "creating busybox-rootfs".into(),
        source,
    })?;
    run(
        "dpkg -x busybox",
        Command::new("dpkg").arg("-x").arg(&deb).arg(&dir),
    )?;
    let sh = "set -e; cd \"$1\"; mkdir -p tmp data proc sys dev etc; \
              for a in sh echo sleep cat wc date ls mkdir tr seq head tail true env; do ln -sf busybox bin/$a; done; \
              tar -C \"$1\" -cf \"$2\" .";
    if filler_mib > 0 {
        let filler: Vec<u8> = (0..filler_mib << 20)
            .map(|_| rand::random::<u8>())
            .collect();
        std::fs::write(dir.join("filler.bin"), filler).map_err(|source| AssetError::Io {
            what: "writing the image's filler".into(),
            source,
        })?;
    }
    let tar = work.join(format!("busybox-rootfs-{tag}.tar"));
    run(
        "making the busybox rootfs tar",
        Command::new("sh")
            .args(["-c", sh, "sh"])
            .arg(&dir)
            .arg(&tar),
    )?;
    let tag = format!("{host_registry}/resin-qemu/busybox:{tag}");
    let mut import = docker(docker_host);
    import
        .args([
            "import",
            "--platform",
            "linux/arm64",
            "--change",
            "ENV PATH=/bin",
            "--change",
            "CMD [\"/bin/sh\"]",
        ])
        .arg(&tar)
        .arg(&tag);
    run("docker import", &mut import)?;
    run("docker push", docker(docker_host).args(["push", &tag]))?;
    let digest = run(
        "docker inspect",
        docker(docker_host).args(["inspect", "--format", "{{index .RepoDigests 0}}", &tag]),
    )?;
    let sha = digest.rsplit('@').next().unwrap_or_default().to_string();
    if !sha.starts_with("sha256:") {
        return Err(AssetError::Command {
            what: "docker inspect".into(),
            status: "ok".into(),
            stderr: format!("no RepoDigest for {tag}: {digest:?}"),
        });
    }
    Ok(TestImage {
        guest_ref: format!("{guest_registry}/resin-qemu/busybox@{sha}"),
    })
}

/// The two-service test release: `heartbeat` prints a numbered line every
/// second (with `$GREETING`), `store` appends a line to a named volume on each
/// start and prints how many it holds. Both exit on SIGTERM (a shell as PID 1
/// ignores it otherwise, and every stop would wait out Docker's 10 s).
/// `ticker` always runs `base` and has no setting that changes, so it is the
/// same in every release; heartbeat and store run `image` with `greeting`.
pub fn composition(image: &TestImage, base: &TestImage, greeting: &str) -> Value {
    json!({
        "services": {
            "heartbeat": {
                "image": image.guest_ref,
                "command": ["/bin/sh", "-c", "trap 'exit 0' TERM; i=0; while true; do i=$((i+1)); echo \"heartbeat $i $GREETING\"; sleep 1; done"],
                "environment": {"GREETING": greeting},
                "restart": "always"
            },
            // The same in every release: a release that does not change a
            // service must not restart it (same container, counter goes on).
            "ticker": {
                "image": base.guest_ref,
                "command": ["/bin/sh", "-c", "trap 'exit 0' TERM; i=0; while true; do i=$((i+1)); echo \"ticker $i\"; sleep 2; done"],
                "restart": "always"
            },
            "store": {
                "image": image.guest_ref,
                "command": ["/bin/sh", "-c", "trap 'exit 0' TERM; echo \"start $GREETING\" >> /data/starts; echo \"store starts=$(wc -l < /data/starts) greeting=$GREETING\"; while true; do sleep 5; echo \"store alive starts=$(wc -l < /data/starts)\"; done"],
                "environment": {"GREETING": greeting},
                "volumes": ["appdata:/data"],
                "restart": "always"
            }
        },
        "volumes": {"appdata": {}}
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn composition_has_three_services_and_a_named_volume() {
        let base = TestImage {
            guest_ref: "r@sha256:00".into(),
        };
        let big = TestImage {
            guest_ref: "r@sha256:11".into(),
        };
        let c = composition(&base, &base, "hi");
        assert_eq!(c["services"].as_object().unwrap().len(), 3);
        let other = composition(&big, &base, "v2");
        assert_eq!(other["services"]["heartbeat"]["image"], "r@sha256:11");
        assert_eq!(
            c["services"]["ticker"], other["services"]["ticker"],
            "ticker is the same in every release"
        );
        assert_eq!(c["services"]["store"]["volumes"][0], "appdata:/data");
        assert!(c["volumes"]["appdata"].is_object());
        assert_eq!(c["services"]["heartbeat"]["environment"]["GREETING"], "hi");
    }
}
