//! `resin device sessions`: the audit of a device's remote-access sessions
//! (`GET /v1/device({id})/tunnel/sessions`, the `tunnel_session` table;
//! docs/interfaces.md, "Tunnel").

use anyhow::{Context, Result};
use resin_cli::args::Cli;
use serde_json::Value;

use super::{connect, device_by_ref, id_of, print_list};

/// `resin device sessions <dev>`: newest first.
pub fn list(cli: &Cli, r: &str) -> Result<()> {
    let api = connect(cli)?;
    let dev = device_by_ref(&api, r)?;
    let id = id_of(&dev)?;
    let v = api
        .get(&format!("/v1/device({id})/tunnel/sessions"))
        .with_context(|| format!("reading the session audit of device {r}"))?;
    let mut items = v["value"].as_array().cloned().unwrap_or_default();
    // A session still open has no end and no exit status yet.
    for it in &mut items {
        if it["ended_at"].is_null() && !cli.json {
            it["ended_at"] = Value::from("(open)");
        }
    }
    print_list(
        cli.json,
        &items,
        &[
            ("ID", "id"),
            ("USER", "username"),
            ("KIND", "kind"),
            ("TARGET", "target"),
            ("STARTED", "started_at"),
            ("ENDED", "ended_at"),
            ("UP", "bytes_up"),
            ("DOWN", "bytes_down"),
            ("EXIT", "exit_code"),
            ("ERROR", "error"),
        ],
    )
}
