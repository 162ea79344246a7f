//! Configured image downloads end to end: an operator uploads a base image
//! built by resin-imagegen as an OS release, downloads it configured for a
//! fleet (none, zstd, xz), decompresses it and finds config.json inside.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::path::Path;

use common::image::base_image;
use common::{Backend, Server};
use resin_api_types::ConfigJson;
use serde_json::json;

both!(
    configured_image_download,
    full_disk_upload_is_refused_and_loses_nothing
);

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
    // Stored sparse: the empty partition space takes no disk on the server.
    {
        use std::os::unix::fs::MetadataExt;
        let stored = s.app.config.data_dir.join(format!("os/{id}/image.img"));
        let meta = std::fs::metadata(&stored).unwrap();
        assert_eq!(meta.len(), bytes.len() as u64);
        assert_eq!(std::fs::read(&stored).unwrap(), bytes, "same bytes back");
        assert!(
            meta.blocks() * 512 < meta.len() / 4,
            "{} bytes allocated for a {} byte image",
            meta.blocks() * 512,
            meta.len()
        );
    }

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
        (format!("fleet={fleet}&version=1.0%2"), 400),
        // Escapes are decoded, and a '+' stays a '+'.
        (format!("fleet={fleet}&version=1%2E0"), 200),
        (format!("fleet={fleet}&version=9.9+x"), 404),
    ] {
        let r = s.raw(
            "GET",
            &format!("/v1/os/download?{q}"),
            Some(&alice),
            &[],
            vec![],
        );
        assert_eq!(r.status, status, "{q}: {}", r.body);
        if q.ends_with("9.9+x") {
            assert!(r.body.contains("no OS release 9.9+x"), "{}", r.body);
        }
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

/// The data dir on a 1 MiB tmpfs: an upload that does not fit is answered
/// 507 with a clear message, leaves no temp file, and the bundle stored
/// before it stays as it was. (Mounting needs root, as CI runs.)
fn full_disk_upload_is_refused_and_loses_nothing(backend: Backend) {
    let small = tempfile::tempdir().unwrap();
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "resin-test-full"])
        .arg(small.path())
        .status()
        .expect("running mount");
    assert!(mount.success(), "mounting a tmpfs needs root");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(small.path());
    let data_dir = small.path().to_owned();
    let s = Server::start_with(backend, |c| c.data_dir = data_dir);
    let (_, alice) = s.user("alice");
    let osr = s.create(
        &alice,
        "os_release",
        json!({"device_type": "qemuarm64", "version": "2.0"}),
    );
    let id = osr["id"].as_i64().unwrap();
    let path = format!("/v1/os_release({id})/bundle");
    let first: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8 + 1).collect();
    let r = s.raw("PUT", &path, Some(&alice), &[], first.clone());
    assert_eq!(r.status, 200, "{}", r.body);

    // 4 MiB of non-zero bytes cannot fit in what is left.
    let big: Vec<u8> = (0..4u32 << 20).map(|i| (i % 253) as u8 + 1).collect();
    let r = s.raw("PUT", &path, Some(&alice), &[], big);
    assert_eq!(r.status, 507, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "InsufficientStorage");
    assert!(
        r.body.contains("no space left") && r.body.contains("nothing was stored"),
        "{}",
        r.body
    );
    let dir = small.path().join(format!("os/{id}"));
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["bundle.raucb".to_string()], "no temp file left");
    assert_eq!(std::fs::read(dir.join("bundle.raucb")).unwrap(), first);
    assert_eq!(
        s.get(&format!("/v1/os_release({id})"), &alice).json()["bundle_size"],
        first.len() as i64
    );
}
