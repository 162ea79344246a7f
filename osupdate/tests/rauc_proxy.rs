//! Our zbus proxy against the real `rauc service` (RAUC 1.8) on a private
//! bus with file-backed slots and a custom bootloader script.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use resin_osupdate::rauc::RaucError;

#[tokio::test]
async fn properties_and_slot_status_describe_the_booted_system() {
    let env = RaucEnv::start().await;
    let rauc = env.rauc().await;
    assert_eq!(rauc.compatible().await.unwrap(), COMPATIBLE);
    assert_eq!(rauc.boot_slot().await.unwrap(), "A");
    assert_eq!(rauc.operation().await.unwrap(), "idle");
    assert_eq!(rauc.last_error().await.unwrap(), "");
    assert_eq!(rauc.primary().await.unwrap(), "rootfs.0");
    let slots = rauc.slot_status().await.unwrap();
    let names: Vec<_> = slots
        .iter()
        .map(|s| (s.name.as_str(), s.bootname.as_str(), s.state.as_str()))
        .collect();
    assert_eq!(
        names,
        [("rootfs.0", "A", "booted"), ("rootfs.1", "B", "inactive")]
    );
    assert_eq!(rauc.booted_slot().await.unwrap().name, "rootfs.0");
}

#[tokio::test]
async fn install_writes_the_other_slot_and_reports_progress() {
    let env = RaucEnv::start().await;
    let payload = random_bytes(1024 * 1024);
    let bundle = env.bundle("good", "2.0", COMPATIBLE, "ca", &payload);
    let slot_a_before = file_sha256(&env.slot("A"));
    let rauc = env.rauc().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    rauc.install(&bundle, Duration::from_secs(60), move |pct, msg| {
        s2.lock().unwrap().push((pct, msg.to_string()));
    })
    .await
    .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 3, "progress seen: {seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0].0 <= w[1].0),
        "progress not monotonic: {seen:?}"
    );
    assert_eq!(seen.last().unwrap().0, 100);
    let b = std::fs::read(env.slot("B")).unwrap();
    assert_eq!(&b[..payload.len()], &payload[..], "slot B holds the image");
    assert_eq!(
        file_sha256(&env.slot("A")),
        slot_a_before,
        "booted slot untouched"
    );
    assert_eq!(rauc.primary().await.unwrap(), "rootfs.1");
    assert_eq!(env.bl_primary(), "B");
    let slots = rauc.slot_status().await.unwrap();
    let b = slots.iter().find(|s| s.name == "rootfs.1").unwrap();
    assert_eq!(b.bundle_version.as_deref(), Some("2.0"));
    assert_eq!(b.status.as_deref(), Some("ok"));
    assert_eq!(b.installed_count, Some(1));
}

#[tokio::test]
async fn bundle_signed_by_a_foreign_ca_is_rejected_and_nothing_is_written() {
    let env = RaucEnv::start().await;
    let bundle = env.bundle("foreign", "2.0", COMPATIBLE, "foreign", &random_bytes(4096));
    let a = file_sha256(&env.slot("A"));
    let b = file_sha256(&env.slot("B"));
    let rauc = env.rauc().await;
    let err = rauc
        .install(&bundle, Duration::from_secs(60), |_, _| {})
        .await
        .unwrap_err();
    match &err {
        RaucError::Rejected { last_error, .. } => {
            assert!(
                last_error.to_lowercase().contains("signature"),
                "{last_error}"
            )
        }
        other => panic!("expected a rejection, got {other}"),
    }
    assert_eq!(file_sha256(&env.slot("A")), a);
    assert_eq!(file_sha256(&env.slot("B")), b);
    assert_eq!(rauc.operation().await.unwrap(), "idle");
    assert_eq!(env.bl_primary(), "A");
}

#[tokio::test]
async fn bundle_for_another_compatible_is_rejected() {
    let env = RaucEnv::start().await;
    let bundle = env.bundle(
        "othercompat",
        "2.0",
        "resin-raspberrypi4-64",
        "ca",
        &random_bytes(4096),
    );
    let b = file_sha256(&env.slot("B"));
    let rauc = env.rauc().await;
    let err = rauc
        .install(&bundle, Duration::from_secs(60), |_, _| {})
        .await
        .unwrap_err();
    match &err {
        RaucError::Rejected { last_error, .. } => {
            assert!(
                last_error.to_lowercase().contains("compatible"),
                "{last_error}"
            )
        }
        other => panic!("expected a rejection, got {other}"),
    }
    assert_eq!(file_sha256(&env.slot("B")), b);
    assert_eq!(env.bl_primary(), "A");
}

#[tokio::test]
async fn mark_good_and_bad_reach_the_bootloader() {
    let mut env = RaucEnv::start().await;
    let bundle = env.bundle("good", "2.0", COMPATIBLE, "ca", &random_bytes(4096));
    env.rauc()
        .await
        .install(&bundle, Duration::from_secs(60), |_, _| {})
        .await
        .unwrap();
    // "Reboot" into B.
    env.start_service("B").await;
    let rauc = env.rauc().await;
    assert_eq!(rauc.boot_slot().await.unwrap(), "B");
    assert_eq!(rauc.booted_slot().await.unwrap().name, "rootfs.1");
    let (slot, msg) = rauc.mark("good", "booted").await.unwrap();
    assert_eq!(slot, "rootfs.1");
    assert!(msg.contains("good"), "{msg}");
    assert_eq!(env.bl_state("B"), "good");
    let (slot, _) = rauc.mark("bad", "booted").await.unwrap();
    assert_eq!(slot, "rootfs.1");
    assert_eq!(env.bl_state("B"), "bad");
    let (slot, _) = rauc.mark("active", "other").await.unwrap();
    assert_eq!(slot, "rootfs.0");
    assert_eq!(env.bl_primary(), "A");
    let slots = rauc.slot_status().await.unwrap();
    assert_eq!(
        slots
            .iter()
            .find(|s| s.name == "rootfs.1")
            .unwrap()
            .boot_status,
        "bad"
    );
    // A bad identifier is a D-Bus error, not a crash of anything.
    assert!(rauc.mark("good", "rootfs.9").await.is_err());
}
