//! The builder against the real engine and registry: a two-service project
//! with a `RUN` step under arm64 emulation comes out pinned by digest, with
//! arm64 in the registry's manifest; every bad input fails with a clear
//! error and pushes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use resin_api_types::build::BuildState;

fn two_services(base: &str, web_run: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "docker-compose.yml",
            "services:\n  web:\n    build: ./web\n    ports: ['8080:80']\n  worker:\n    build:\n      context: worker\n    environment: [MODE]\n".into(),
        ),
        (
            "web/Dockerfile",
            format!("FROM {base}\nRUN {web_run}\nCMD [\"cat\", \"/arch\"]\n"),
        ),
        (
            "worker/Dockerfile",
            format!("FROM {base}\nCOPY . /app\nCMD [\"ls\", \"/app\"]\n"),
        ),
        ("worker/data.txt", "hello\n".into()),
        ("worker/.dockerignore", "secret.txt\n".into()),
        ("worker/secret.txt", "no\n".into()),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_service_project_builds_for_arm64_and_is_pinned_by_digest() {
    let base = base_image();
    let dir = project(&two_services(
        &base,
        "uname -m > /arch && echo \"ran on $(cat /arch)\"",
    ));
    let ns = namespace("ok");
    let req = request(dir.path(), &ns);
    let (r, lines) = build(&req).await;
    let text = log_text(&lines);
    let out = r.unwrap_or_else(|e| panic!("{e}\n{text}"));
    // The RUN step ran arm64 code (binfmt), and said so in the log.
    assert!(text.contains("[web] ran on aarch64"), "{text}");
    assert_eq!(lines.last().unwrap().state, Some(BuildState::Success));
    for svc in ["web", "worker"] {
        let image = &out.images[svc];
        let (repo, digest) = image.split_once('@').unwrap();
        assert_eq!(repo, format!("{}/{ns}/{svc}", registry()));
        assert!(
            digest.starts_with("sha256:") && digest.len() == 71,
            "{image}"
        );
        assert_eq!(out.composition["services"][svc]["image"], image.as_str());
        // The registry's own manifest and config say arm64: not the name.
        let path = repo.split_once('/').unwrap().1;
        let m = registry_json(
            &format!("/v2/{path}/manifests/{digest}"),
            "application/vnd.docker.distribution.manifest.v2+json",
        );
        let cfg = m["config"]["digest"].as_str().unwrap();
        let c = registry_json(&format!("/v2/{path}/blobs/{cfg}"), "*/*");
        assert_eq!(c["architecture"], "arm64", "{svc}: {c}");
    }
    assert_eq!(out.composition["services"]["web"]["ports"][0], "8080:80");
    assert_eq!(out.target.services["worker"].environment["MODE"], "");
    assert!(out.composition["services"]["web"].get("build").is_none());

    // A second build of the same project comes from the fleet's cache.
    let mut again = request(dir.path(), &ns);
    again.tag = "b2".into();
    let (r2, lines2) = build(&again).await;
    let text2 = log_text(&lines2);
    let out2 = r2.unwrap_or_else(|e| panic!("{e}\n{text2}"));
    assert!(text2.contains("Using cache"), "{text2}");
    assert!(
        !text2.contains("ran on aarch64"),
        "the RUN step ran again: {text2}"
    );
    // Nothing changed, so nothing is pushed again: the same digests, found
    // in the registry.
    assert_eq!(out2.images, out.images);
    assert!(!text2.contains("pushing "), "{text2}");
    assert!(
        text2.contains("unchanged since the fleet's last build"),
        "{text2}"
    );
    // …and nocache runs it again.
    let mut fresh = request(dir.path(), &ns);
    fresh.tag = "b3".into();
    fresh.nocache = true;
    let (r3, lines3) = build(&fresh).await;
    let text3 = log_text(&lines3);
    let out3 = r3.unwrap_or_else(|e| panic!("{e}\n{text3}"));
    assert!(text3.contains("ran on aarch64"), "{text3}");
    // A rebuilt image is a new image, and it is pushed.
    assert!(text3.contains("[web] pushing "), "{text3}");
    assert_ne!(out3.images["web"], out.images["web"]);
    // Locally only the fleet cache stays: each service's `latest`.
    let mut left = local_images(&ns);
    left.sort();
    assert_eq!(
        left,
        ["web", "worker"].map(|s| format!("{}/{ns}/{s}:latest", registry()))
    );
    remove_local_images(&ns);
}

/// Runs a build that must fail; checks the error text, the final state and
/// that the registry got nothing under the namespace.
async fn fails(
    files: &[(&str, String)],
    what: &str,
    tweak: impl FnOnce(&mut resin_builder::BuildRequest),
) -> String {
    let dir = project(files);
    let ns = namespace(what);
    let mut req = request(dir.path(), &ns);
    tweak(&mut req);
    let (r, lines) = build(&req).await;
    let e = match r {
        Ok(o) => panic!("{what}: the build succeeded: {:?}", o.images),
        Err(e) => e.to_string(),
    };
    let last = lines.last().unwrap();
    assert_eq!(last.state, Some(BuildState::Failed), "{what}");
    assert!(
        last.is_error && last.message.contains(&e),
        "{what}: {last:?}"
    );
    for svc in ["web", "worker", "main"] {
        assert_eq!(
            registry_tags(&format!("{ns}/{svc}")),
            Vec::<String>::new(),
            "{what}: {svc} was pushed"
        );
    }
    assert_eq!(
        local_images(&ns),
        Vec::<String>::new(),
        "{what}: images were left behind"
    );
    e
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_fails_clearly_and_pushes_nothing() {
    let base = base_image();
    let ok = two_services(&base, "uname -m > /arch");

    let e = fails(&[("README", "x".into())], "empty", |_| {}).await;
    assert_eq!(
        e,
        "the project is empty: no docker-compose.yml and no Dockerfile at its root"
    );

    let mut missing = ok.clone();
    missing.retain(|(p, _)| *p != "worker/Dockerfile");
    let e = fails(&missing, "nodockerfile", |_| {}).await;
    assert_eq!(e, "service worker: no Dockerfile at \"worker/Dockerfile\"");

    let mut bad = ok.clone();
    bad[0].1 = "services:\n  web:\n    build: ./web\n    ports: ['80:99999']\n".into();
    let e = fails(&bad, "badport", |_| {}).await;
    assert!(
        e.starts_with("docker-compose.yml: services.web.ports[0]"),
        "{e}"
    );
    bad[0].1 = "services:\n  web:\n    build: ./web\n    colour: red\n".into();
    let e = fails(&bad, "badkey", |_| {}).await;
    assert!(
        e.starts_with("docker-compose.yml: services.web.colour: unsupported key"),
        "{e}"
    );

    let mut big = ok.clone();
    big.push(("worker/big.bin", "x".repeat(2 << 20)));
    let e = fails(&big, "toolarge", |r| r.limits.max_context_bytes = 1 << 20).await;
    assert_eq!(
        e,
        "service worker: the build context is over the limit of 1048576 bytes"
    );

    // A failing RUN step: the engine's message is the error, and worker
    // (built fine before or after) is not pushed either.
    let failing = two_services(&base, "echo about to fail && exit 3");
    let e = fails(&failing, "runfails", |_| {}).await;
    assert!(e.starts_with("service web: the build failed: The command '/bin/sh -c echo about to fail && exit 3' returned a non-zero code: 3"), "{e}");

    let slow = two_services(&base, "sleep 60");
    let t0 = std::time::Instant::now();
    let e = fails(&slow, "timeout", |r| {
        r.limits.timeout = Duration::from_secs(4)
    })
    .await;
    assert_eq!(e, "the build ran past its timeout of 4 s");
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());

    let e = fails(&ok, "registrydown", |r| r.registry = "127.0.0.1:9".into()).await;
    assert!(
        e.starts_with("registry http://127.0.0.1:9/v2/: not reachable"),
        "{e}"
    );
}
