//! `resin rollout …`: staged rollouts (`/v1/rollout`, see
//! docs/architecture.md, "Rollouts").

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context, Result};
use resin_api_types::rollout::{RolloutProgress, RolloutState};
use resin_cli::api::{with_query, Api};
use resin_cli::args::{Cli, RolloutAct, RolloutCmd, RolloutCreate};
use serde_json::{json, Value};

use super::{
    confirm, connect, fleet_by_name, id_of, print_json, print_list, release_by_ref, split_tag,
    usage,
};

pub fn run(cli: &Cli, cmd: &RolloutCmd) -> Result<()> {
    match cmd {
        RolloutCmd::Create(c) => create(cli, c),
        RolloutCmd::List { fleet } => list(cli, fleet.as_deref()),
        RolloutCmd::Show { id, watch } => show(cli, *id, *watch),
        RolloutCmd::Start(a) => act(cli, "start", a),
        RolloutCmd::Pause(a) => act(cli, "pause", a),
        RolloutCmd::Resume(a) => act(cli, "resume", a),
        RolloutCmd::Halt(a) => act(cli, "halt", a),
        RolloutCmd::Rollback(a) => {
            confirm(
                cli,
                &format!(
                    "roll back rollout {} (every updated device goes back)",
                    a.id
                ),
            )?;
            act(cli, "rollback", a)
        }
        RolloutCmd::Cancel(a) => act(cli, "cancel", a),
    }
}

fn create(cli: &Cli, c: &RolloutCreate) -> Result<()> {
    let api = connect(cli)?;
    let fleet = fleet_by_name(&api, &c.fleet)?;
    let fid = id_of(&fleet)?;
    let wave = |percent: Option<u32>, tags: Option<Value>, last: bool| {
        let mut w = json!({
            "soak_secs": c.soak,
            "timeout_secs": c.timeout,
            "success_percent": c.success_percent,
            "max_failure_percent": c.max_failure_percent,
            "min_sample": c.min_sample,
            "pause_after": c.pause_after_each && !last,
        });
        if let Some(p) = percent {
            w["percent"] = json!(p);
        }
        if let Some(t) = tags {
            w["tags"] = t;
        }
        if let Some(m) = c.max_failures {
            w["max_failures"] = json!(m);
        }
        w
    };
    let mut waves = Vec::new();
    if !c.canary_tags.is_empty() {
        let mut tags = serde_json::Map::new();
        for t in &c.canary_tags {
            match split_tag(t) {
                (k, Some(v)) if !k.is_empty() => {
                    tags.insert(k.to_owned(), json!(v));
                }
                _ => return Err(usage(format!("--canary-tag takes KEY=VALUE, not {t:?}"))),
            }
        }
        waves.push(wave(None, Some(Value::Object(tags)), false));
    }
    for (i, p) in c.waves.iter().enumerate() {
        waves.push(wave(Some(*p), None, i + 1 == c.waves.len()));
    }
    let mut body = json!({"fleet": fid, "waves": waves});
    if let Some(r) = &c.release {
        body["release"] = json!(id_of(&release_by_ref(&api, r)?)?);
    }
    if let Some(v) = &c.os_version {
        body["os_version"] = json!(v);
    }
    if let Some(n) = &c.name {
        body["name"] = json!(n);
    }
    let mut p = api
        .post("/v1/rollout", &body)
        .with_context(|| format!("creating a rollout on fleet {}", c.fleet))?;
    let id = id_of(&p)?;
    if c.start {
        p = api
            .post(&format!("/v1/rollout({id})/start"), &json!({}))
            .with_context(|| format!("starting rollout {id}"))?;
    }
    if cli.json {
        return print_json(&p);
    }
    let p: RolloutProgress = serde_json::from_value(p).context("reading the rollout")?;
    println!(
        "created rollout {id} ({}); {}",
        p.state,
        if c.start {
            format!("watch it with `resin rollout show {id} --watch`")
        } else {
            format!("start it with `resin rollout start {id}`")
        }
    );
    Ok(())
}

fn list(cli: &Cli, fleet: Option<&str>) -> Result<()> {
    let api = connect(cli)?;
    let mut q = vec![("$orderby", "id desc".to_owned())];
    if let Some(f) = fleet {
        let fid = id_of(&fleet_by_name(&api, f)?)?;
        q.push(("$filter", format!("fleet eq {fid}")));
    }
    let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let items = api.list(&with_query("/v1/rollout", &q))?;
    print_list(
        cli.json,
        &items,
        &[
            ("ID", "id"),
            ("NAME", "name"),
            ("FLEET", "fleet"),
            ("RELEASE", "release"),
            ("OS", "os_version"),
            ("STATE", "state"),
            ("WAVE", "current_wave"),
            ("UPDATED", "updated_at"),
        ],
    )
}

fn act(cli: &Cli, action: &str, a: &RolloutAct) -> Result<()> {
    let api = connect(cli)?;
    let body = match &a.reason {
        Some(r) => json!({"reason": r}),
        None => json!({}),
    };
    let p = api
        .post(&format!("/v1/rollout({})/{action}", a.id), &body)
        .with_context(|| {
            format!(
                "{action} rollout {} (see its state with `resin rollout show {}`)",
                a.id, a.id
            )
        })?;
    if cli.json {
        return print_json(&p);
    }
    let p: RolloutProgress = serde_json::from_value(p).context("reading the rollout")?;
    println!("rollout {} is {}", a.id, p.state);
    if let Some(e) = p.events.last() {
        println!("  {}", e.reason);
    }
    Ok(())
}

fn fetch(api: &Api, id: i64) -> Result<(Value, RolloutProgress)> {
    let v = api.get(&format!("/v1/rollout({id})/progress"))?;
    let p = serde_json::from_value(v.clone()).context("reading the rollout")?;
    Ok((v, p))
}

/// `[#####-----....]`: healthy, failed, in progress, of the wave's size.
pub fn bar(healthy: u64, failed: u64, in_progress: u64, size: u64, width: usize) -> String {
    if size == 0 {
        return format!("[{}]", " ".repeat(width));
    }
    let part = |n: u64| ((n as f64 / size as f64) * width as f64).round() as usize;
    let h = part(healthy).min(width);
    let f = part(failed).min(width - h);
    let i = part(in_progress).min(width - h - f);
    format!(
        "[{}{}{}{}]",
        "#".repeat(h),
        "x".repeat(f),
        "~".repeat(i),
        ".".repeat(width - h - f - i)
    )
}

/// The text `rollout show` prints.
pub fn render(p: &RolloutProgress) -> String {
    let mut out = String::new();
    let what = match (&p.release, &p.os_version) {
        (Some(r), _) => format!("release {r}"),
        (None, Some(v)) => format!("OS {v}"),
        _ => "-".into(),
    };
    out.push_str(&format!(
        "ROLLOUT  {} {:?} of {what} to fleet {}\nSTATE    {} (wave {} of {})\n\n",
        p.id,
        p.name,
        p.fleet,
        p.state,
        (p.current_wave + 1).min(p.waves.len() as u64),
        p.waves.len()
    ));
    for (i, w) in p.waves.iter().enumerate() {
        let c = &w.counts;
        let sel = match (&w.wave.percent, &w.wave.tags) {
            (Some(pc), _) => format!("{pc:>3} %"),
            (None, Some(t)) => t
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "wave {:<2} {sel:<12} {} {}/{} healthy, {} failed, {} updating, {} waiting{}\n",
            i + 1,
            bar(
                c.healthy,
                c.failed,
                c.in_progress,
                c.size.saturating_sub(c.excluded),
                30
            ),
            c.healthy,
            c.size.saturating_sub(c.excluded),
            c.failed,
            c.in_progress,
            c.pending,
            if c.reverted > 0 {
                format!(", {} moved back", c.reverted)
            } else {
                String::new()
            }
        ));
    }
    out.push_str("\nEVENTS\n");
    for e in &p.events {
        out.push_str(&format!("{}  {:<9} {}\n", e.at, e.action, e.reason));
    }
    out
}

fn show(cli: &Cli, id: i64, watch: bool) -> Result<()> {
    let api = connect(cli)?;
    loop {
        let (v, p) = fetch(&api, id)?;
        if cli.json {
            print_json(&v)?;
        } else {
            let mut out = std::io::stdout().lock();
            if watch && out.is_terminal() {
                // Clear the screen and go home, so the bars update in place.
                write!(out, "\x1b[2J\x1b[H")?;
            }
            write!(out, "{}", render(&p))?;
            out.flush()?;
        }
        let running = p.state == RolloutState::Running;
        if !watch || !running {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_fill_by_share() {
        assert_eq!(bar(5, 0, 0, 10, 10), "[#####.....]");
        assert_eq!(bar(2, 3, 5, 10, 10), "[##xxx~~~~~]");
        assert_eq!(bar(0, 0, 0, 0, 4), "[    ]");
        assert_eq!(bar(10, 0, 0, 10, 10), "[##########]");
    }
}
