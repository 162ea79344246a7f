//! docs/cli.md is generated from the clap declaration; this test fails when
//! the committed file differs. Regenerate with
//! `RESIN_UPDATE_DOCS=1 cargo test -p resin-cli --test docs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[test]
fn docs_cli_md_is_generated_from_clap() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/cli.md");
    let want = resin_cli::docs::markdown();
    if std::env::var_os("RESIN_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/cli.md is out of date with cli/src/args.rs; regenerate it with \
         RESIN_UPDATE_DOCS=1 cargo test -p resin-cli --test docs"
    );
    for cmd in [
        "resin device pin",
        "resin device restart",
        "resin device reboot",
        "resin device move",
        "resin provisioning-key revoke",
        "resin logs",
    ] {
        assert!(want.contains(&format!("## `{cmd}`")), "{cmd} missing");
    }
}
