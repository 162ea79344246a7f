//! Compose `depends_on`: start order, and stop order reversed.

use std::collections::BTreeMap;

use super::steps::{Plan, Step};
use crate::spec::ServiceSpec;

/// Compose `depends_on` within one app: a service starts after the services
/// it depends on have started (when they start in this plan), and its old
/// container stops before theirs. An app whose `depends_on` has a cycle (or
/// names a service it does not have) is planned without that order.
pub(super) fn order_by_depends_on(p: &mut Plan, specs: &[ServiceSpec]) {
    let mut by_app: BTreeMap<&str, BTreeMap<&str, &[String]>> = BTreeMap::new();
    for s in specs {
        by_app
            .entry(s.app_uuid.as_str())
            .or_default()
            .insert(s.service.as_str(), &s.depends_on);
    }
    let find = |p: &Plan, app: &str, svc: &str, start: bool| -> Vec<usize> {
        p.steps
            .iter()
            .enumerate()
            .filter(|(_, s)| match s {
                Step::Start {
                    app_uuid, service, ..
                } => start && app_uuid == app && service == svc,
                Step::Stop {
                    app_uuid, service, ..
                }
                | Step::Kill {
                    app_uuid, service, ..
                } => !start && app_uuid == app && service == svc,
                _ => false,
            })
            .map(|(i, _)| i)
            .collect()
    };
    for (app, deps) in by_app {
        if deps.values().all(|d| d.is_empty()) || !depends_on_is_acyclic(&deps) {
            continue;
        }
        for (svc, on) in &deps {
            for d in on.iter() {
                // Start after the dependency's start.
                let before = find(p, app, d, true);
                for i in find(p, app, svc, true) {
                    for &b in &before {
                        if !p.after[i].contains(&b) {
                            p.after[i].push(b);
                        }
                    }
                }
                // The dependency's old container stops after this one's.
                let before = find(p, app, svc, false);
                for i in find(p, app, d, false) {
                    for &b in &before {
                        if !p.after[i].contains(&b) {
                            p.after[i].push(b);
                        }
                    }
                }
            }
        }
    }
}

/// True when every `depends_on` names a service of the app and there is no
/// cycle.
fn depends_on_is_acyclic(deps: &BTreeMap<&str, &[String]>) -> bool {
    // Kahn's algorithm over "service → what it depends on".
    let mut left: BTreeMap<&str, usize> = BTreeMap::new();
    for (svc, on) in deps {
        if on
            .iter()
            .any(|d| !deps.contains_key(d.as_str()) || d == svc)
        {
            return false;
        }
        left.insert(svc, on.len());
    }
    let mut done: Vec<&str> = left
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(s, _)| *s)
        .collect();
    let mut seen = 0;
    while let Some(d) = done.pop() {
        seen += 1;
        for (svc, on) in deps {
            let n = on.iter().filter(|x| x.as_str() == d).count();
            if n > 0 {
                if let Some(c) = left.get_mut(svc) {
                    *c -= n;
                    if *c == 0 {
                        done.push(svc);
                    }
                }
            }
        }
    }
    seen == deps.len()
}
