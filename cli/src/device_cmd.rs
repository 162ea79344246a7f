//! `resin device move/restart/reboot/actions`: device actions and moves
//! (`/v1/device({id})/actions`, `/v1/device({id})/move`; api-types
//! `actions`).

use anyhow::{Context, Result};
use resin_cli::args::Cli;
use resin_cli::table::cell;
use serde_json::{json, Value};

use super::{confirm, connect, device_by_ref, fleet_by_name, id_of, print_json, print_list};

/// `resin device restart <dev> [--service S]`
pub fn restart(cli: &Cli, r: &str, service: Option<&str>) -> Result<()> {
    let what = match service {
        Some(s) => format!("service {s}"),
        None => "every service".into(),
    };
    act(
        cli,
        r,
        json!({"action": "restart", "service": service}),
        &what,
    )
}

/// `resin device reboot <dev>`
pub fn reboot(cli: &Cli, r: &str) -> Result<()> {
    act(cli, r, json!({"action": "reboot"}), "reboot")
}

fn describe(dev: &Value) -> String {
    format!("{} ({})", cell(dev, "uuid"), cell(dev, "name"))
}

fn act(cli: &Cli, r: &str, mut body: Value, what: &str) -> Result<()> {
    let api = connect(cli)?;
    let dev = device_by_ref(&api, r)?;
    let id = id_of(&dev)?;
    if body["service"].is_null() {
        if let Some(o) = body.as_object_mut() {
            o.remove("service");
        }
    }
    let question = if what == "reboot" {
        format!("reboot device {}", describe(&dev))
    } else {
        format!("restart {what} on device {}", describe(&dev))
    };
    confirm(cli, &question)?;
    let a = api
        .post(&format!("/v1/device({id})/actions"), &body)
        .with_context(|| format!("asking device {r} to {question}"))?;
    if cli.json {
        return print_json(&a);
    }
    println!(
        "asked device {} to {} (action {}, {}); see `resin device actions {}`",
        cell(&dev, "uuid"),
        if what == "reboot" {
            "reboot once no update lock is held".to_owned()
        } else {
            format!("restart {what}")
        },
        cell(&a, "id"),
        cell(&a, "state"),
        cell(&dev, "uuid"),
    );
    Ok(())
}

/// `resin device actions <dev>`
pub fn list(cli: &Cli, r: &str) -> Result<()> {
    let api = connect(cli)?;
    let dev = device_by_ref(&api, r)?;
    let id = id_of(&dev)?;
    let v = api.get(&format!("/v1/device({id})/actions"))?;
    let items = v["value"].as_array().cloned().unwrap_or_default();
    print_list(
        cli.json,
        &items,
        &[
            ("ID", "id"),
            ("ACTION", "action"),
            ("SERVICE", "service"),
            ("STATE", "state"),
            ("RESULT", "result"),
            ("REQUESTED", "requested_at"),
            ("UPDATED", "updated_at"),
        ],
    )
}

/// `resin device move <dev> <fleet>`
pub fn move_to(cli: &Cli, r: &str, fleet: &str) -> Result<()> {
    let api = connect(cli)?;
    let dev = device_by_ref(&api, r)?;
    let id = id_of(&dev)?;
    let to = fleet_by_name(&api, fleet)?;
    let fid = id_of(&to)?;
    confirm(
        cli,
        &format!(
            "move device {} to fleet {} (its apps are replaced by that fleet's)",
            describe(&dev),
            cell(&to, "name")
        ),
    )?;
    let moved = api
        .post(&format!("/v1/device({id})/move"), &json!({ "fleet": fid }))
        .with_context(|| {
            format!(
                "moving device {r} to fleet {fleet} (a device moves only to a fleet of your own \
                 with its device type, {})",
                cell(&dev, "device_type")
            )
        })?;
    if cli.json {
        return print_json(&moved);
    }
    println!(
        "moved device {} to fleet {} (id {fid})",
        cell(&dev, "uuid"),
        cell(&to, "name")
    );
    Ok(())
}
