//! `docs/cli.md`, generated from the clap declaration in [`crate::args`]:
//! one section per command with its usage, arguments and options. A test
//! (`cli/tests/docs.rs`) fails when the committed file differs.

use std::fmt::Write;

use clap::Command;

/// The whole reference page.
pub fn markdown() -> String {
    let mut cmd = crate::args::command();
    cmd.build();
    let mut out = String::new();
    out.push_str(
        "<!-- Generated from cli/src/args.rs; do not edit. Regenerate with\n     \
         RESIN_UPDATE_DOCS=1 cargo test -p resin-cli --test docs -->\n\n",
    );
    out.push_str("# The `resin` CLI\n\n");
    if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
        let _ = writeln!(out, "{about}\n");
    }
    out.push_str(
        "Global options (`--api-url`, `--api-key`, `--config`, `--json`, `--yes`, `--timeout`) \
         may stand before or after the subcommand. Every command prints a table or a line \
         for people, and JSON with `--json`.\n\n",
    );
    out.push_str("## Commands\n\n");
    let mut index = String::new();
    let mut body = String::new();
    for sub in cmd
        .get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help")
    {
        walk(sub, "resin", 0, &mut index, &mut body);
    }
    out.push_str(&index);
    out.push('\n');
    section(&cmd, "resin", &mut out, true);
    out.push_str(&body);
    out
}

fn anchor(path: &str) -> String {
    path.replace(' ', "-")
}

fn walk(cmd: &Command, parent: &str, depth: usize, index: &mut String, body: &mut String) {
    let path = format!("{parent} {}", cmd.get_name());
    let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
    let _ = writeln!(
        index,
        "{}- [`{path}`](#{}): {about}",
        "  ".repeat(depth),
        anchor(&path)
    );
    section(cmd, &path, body, false);
    for sub in cmd
        .get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help")
    {
        walk(sub, &path, depth + 1, index, body);
    }
}

fn section(cmd: &Command, path: &str, out: &mut String, top: bool) {
    let _ = writeln!(out, "<a id=\"{}\"></a>\n", anchor(path));
    let _ = writeln!(out, "## `{path}`\n");
    if !top {
        if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
            let _ = writeln!(out, "{about}\n");
        }
    }
    let aliases: Vec<&str> = cmd.get_visible_aliases().collect();
    let hidden_aliases: Vec<&str> = cmd.get_all_aliases().collect();
    if !hidden_aliases.is_empty() {
        let shown = if aliases.is_empty() {
            &hidden_aliases
        } else {
            &aliases
        };
        let _ = writeln!(out, "Also: `{}`.\n", shown.join("`, `"));
    }
    let mut c = cmd.clone().bin_name(path);
    let usage = c.render_usage().to_string();
    let usage = usage.trim_start_matches("Usage: ");
    let _ = writeln!(out, "```text\n{usage}\n```\n");
    let positionals: Vec<_> = cmd.get_positionals().filter(|a| !a.is_hide_set()).collect();
    if !positionals.is_empty() {
        out.push_str("Arguments:\n\n");
        for a in positionals {
            let name = a
                .get_value_names()
                .and_then(|v| v.first())
                .map(|v| v.to_string())
                .unwrap_or_else(|| a.get_id().to_string().to_uppercase());
            let _ = writeln!(out, "- `{name}`: {}", help_of(a));
        }
        out.push('\n');
    }
    let opts: Vec<_> = cmd
        .get_arguments()
        .filter(|a| !a.is_positional() && !a.is_hide_set())
        .filter(|a| top || !a.is_global_set())
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .collect();
    if !opts.is_empty() {
        out.push_str("Options:\n\n");
        for a in opts {
            let mut flag = String::new();
            if let Some(s) = a.get_short() {
                let _ = write!(flag, "-{s}, ");
            }
            if let Some(l) = a.get_long() {
                let _ = write!(flag, "--{l}");
            }
            if a.get_action().takes_values() {
                let v = a
                    .get_value_names()
                    .and_then(|v| v.first())
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| a.get_id().to_string().to_uppercase());
                let _ = write!(flag, " {v}");
            }
            let _ = writeln!(out, "- `{flag}`: {}", help_of(a));
        }
        out.push('\n');
    }
}

fn help_of(a: &clap::Arg) -> String {
    let mut h = a
        .get_long_help()
        .or(a.get_help())
        .map(|h| h.to_string().replace('\n', " "))
        .unwrap_or_default();
    let values: Vec<String> = a
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| format!("`{}`", v.get_name()))
        .collect();
    if !values.is_empty() && a.get_action().takes_values() {
        let _ = write!(h, " (one of {})", values.join(", "));
    }
    let defaults: Vec<String> = a
        .get_default_values()
        .iter()
        .map(|d| d.to_string_lossy().into_owned())
        .filter(|d| !d.is_empty())
        .collect();
    if !defaults.is_empty() && a.get_action().takes_values() {
        let _ = write!(h, " [default: {}]", defaults.join(", "));
    }
    if let Some(env) = a.get_env() {
        let _ = write!(h, " [env: {}]", env.to_string_lossy());
    }
    h
}
