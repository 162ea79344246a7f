//! Configured image downloads end to end: an operator uploads a base image
//! built by resin-imagegen as an OS release, downloads it configured for a
//! fleet (none, zstd, xz), decompresses it and finds config.json inside.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::path::Path;

use common::{Backend, Server};
use resin_api_types::ConfigJson;
use serde_json::json;

both!(configured_image_download);

/// A small image with resin's layout (slots shrunk to keep it quick).
fn base_image(dir: &Path) -> std::path::PathBuf {
    let layout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../imagegen/layouts/resin-ab.toml");
    let sets: Vec<String> = [
        "rootA.size=8MiB",
        "boot.size=8MiB",
        "state.size=8MiB",
        "data.min-size=8MiB",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let plan = resin_imagegen::layout::Layout::load(&layout, &sets)
        .unwrap()
        .plan()
        .unwrap();
    let rootfs = dir.join("rootfs");
    let boot = dir.join("boot");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/os-release"), "VERSION_ID=1.0\n").unwrap();
    std::fs::create_dir_all(&boot).unwrap();
    let out = dir.join("base.img");
    let opts = resin_imagegen::build::BuildOptions {
        inputs: [("rootfs".to_string(), rootfs), ("boot".to_string(), boot)]
            .into_iter()
            .collect(),
        config: None,
        output: out.clone(),
        bmap: false,
        compression: resin_imagegen::configure::Compression::None,
        seed: Some("cloud-test".into()),
    };
    resin_imagegen::build::build(&plan, &opts).unwrap();
    out
}

fn configured_image_download(backend: Backend) {
    let s = Server::start(backend);
    let (_, alice) = s.user("alice");
    let (_, bob) = s.user("bob");
    let (fleet, _) = s.fleet(&alice, "demo");
    let work = tempfile::tempdir().unwrap();
    let img = base_image(work.path());
    let bytes = std::fs::read(&img).unwrap();

    let osr = s.create(
        &alice,
        "os_release",
        json!({"device_type": "qemuarm64", "version": "1.0"}),
    );
    let id = osr["id"].as_i64().unwrap();
    // Not an image: refused, nothing stored.
    let r = s.raw(
        "PUT",
        &format!("/v1/os_release({id})/image"),
        Some(&alice),
        &[],
        vec![0u8; 4096],
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("not a resin disk image"));
    assert_eq!(
        s.get(&format!("/v1/os_release({id})"), &alice).json()["image_size"],
        serde_json::Value::Null
    );
    let r = s.raw(
        "PUT",
        &format!("/v1/os_release({id})/image"),
        Some(&alice),
        &[],
        bytes.clone(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        s.get(&format!("/v1/os_release({id})"), &alice).json()["image_size"],
        bytes.len() as i64
    );

    for (compression, decode) in [
        (
            "none",
            Box::new(|b: Vec<u8>| b) as Box<dyn Fn(Vec<u8>) -> Vec<u8>>,
        ),
        (
            "zstd",
            Box::new(|b: Vec<u8>| zstd::decode_all(&b[..]).unwrap()),
        ),
        (
            "xz",
            Box::new(|b: Vec<u8>| {
                let mut out = Vec::new();
                xz2::read::XzDecoder::new(&b[..])
                    .read_to_end(&mut out)
                    .unwrap();
                out
            }),
        ),
    ] {
        let path = format!("/v1/os/download?fleet={fleet}&version=1.0&compression={compression}");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let resp = agent
            .get(format!("{}{}", s.base, path))
            .header("Authorization", format!("Bearer {alice}"))
            .call()
            .unwrap();
        assert_eq!(resp.status(), 200, "{compression}");
        let body = resp
            .into_body()
            .with_config()
            .limit(1 << 32)
            .read_to_vec()
            .unwrap();
        let image = decode(body);
        assert_eq!(
            image.len(),
            bytes.len(),
            "{compression}: same size as the base"
        );
        let out = work.path().join(format!("dl-{compression}.img"));
        std::fs::write(&out, &image).unwrap();
        let f = std::fs::File::open(&out).unwrap();
        let cfg = resin_imagegen::configure::read_config(&f).unwrap();
        let cfg = ConfigJson::parse(std::str::from_utf8(&cfg).unwrap()).unwrap();
        assert_eq!(cfg.api_endpoint, s.base);
        assert_eq!(cfg.fleet_id, fleet);
        assert_eq!(cfg.fleet_name, "demo");
        assert_eq!(cfg.device_type, "qemuarm64");
        assert_eq!(cfg.poll_interval_ms, 60_000);
        // The provisioning key in the image registers a device.
        let uuid = uuid::Uuid::new_v4().simple().to_string();
        let r = s.post(
            "/device/register",
            &cfg.provisioning_key,
            json!({"uuid": uuid, "deviceType": "qemuarm64"}),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }
    // The fleet's target OS version is the default version.
    assert_eq!(
        s.patch(
            &format!("/v1/fleet({fleet})"),
            &alice,
            json!({"target_os_version": "1.0"})
        )
        .status,
        204
    );
    let r = s.raw(
        "GET",
        &format!("/v1/os/download?fleet={fleet}"),
        Some(&alice),
        &[],
        vec![],
    );
    assert_eq!(r.status, 200);
    // Errors.
    for (q, status) in [
        (format!("fleet={fleet}&version=9.9"), 404),
        (format!("fleet={fleet}&compression=rar"), 400),
        ("version=1.0".to_string(), 400),
        ("fleet=abc".to_string(), 400),
        (format!("fleet={fleet}&colour=red"), 400),
    ] {
        let r = s.raw(
            "GET",
            &format!("/v1/os/download?{q}"),
            Some(&alice),
            &[],
            vec![],
        );
        assert_eq!(r.status, status, "{q}: {}", r.body);
    }
    assert_eq!(
        s.raw(
            "GET",
            &format!("/v1/os/download?fleet={fleet}"),
            Some(&bob),
            &[],
            vec![]
        )
        .status,
        404
    );
    assert_eq!(
        s.raw(
            "GET",
            &format!("/v1/os/download?fleet={fleet}"),
            None,
            &[],
            vec![]
        )
        .status,
        401
    );
}
