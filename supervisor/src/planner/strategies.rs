//! Update strategies (label `io.resin.update.strategy`), one small pure
//! function each, as balena's `update-strategies`: given a service's
//! replacement (its new container to create, the old ones still alive),
//! each adds its steps and their order to the plan.

use resin_api_types::labels::UpdateStrategy;

use super::model::{Container, RunState};
use super::steps::{stop_then_remove, wait_for_lock, Plan, Step};

/// One service whose target container does not exist yet.
pub(super) struct Replacement<'a> {
    pub app: &'a str,
    pub service: &'a str,
    pub create: Step,
    /// The new container's start.
    pub start: Step,
    /// The image fetch, when the image is missing.
    pub fetch: Option<Step>,
    /// Networks and volumes the create waits for.
    pub prerequisites: Vec<usize>,
    /// Removals of the service's dead containers (the create waits for
    /// them: a replacement of the same config takes their name).
    pub dead: Vec<usize>,
    /// The service's old containers still alive.
    pub old: Vec<&'a Container>,
    /// An update lock holds the old containers.
    pub locked: bool,
    /// Old images delete-then-download removes before it fetches.
    pub old_images: Vec<String>,
}

/// Plans `r` under `strategy`; with no old container every strategy is a
/// plain fetch, create and start.
pub(super) fn replace(p: &mut Plan, strategy: UpdateStrategy, r: Replacement<'_>) {
    if r.old.is_empty() {
        return fresh(p, r);
    }
    match strategy {
        UpdateStrategy::DownloadThenKill => download_then_kill(p, r),
        UpdateStrategy::HandOver => hand_over(p, r),
        UpdateStrategy::KillThenDownload => kill_then_download(p, r, false),
        UpdateStrategy::DeleteThenDownload => kill_then_download(p, r, true),
    }
}

/// The fetch (after `after`), then the create after the fetch, the
/// prerequisites, the dead containers' removal and `after`.
fn fetch_then_create(p: &mut Plan, r: &Replacement<'_>, after: &[usize]) -> usize {
    let mut deps: Vec<usize> = r.fetch.iter().map(|f| p.add(f.clone(), after)).collect();
    deps.extend(&r.prerequisites);
    deps.extend(&r.dead);
    deps.extend(after);
    p.add(r.create.clone(), &deps)
}

/// Nothing to replace: fetch, create, start.
fn fresh(p: &mut Plan, r: Replacement<'_>) {
    let create = fetch_then_create(p, &r, &[]);
    p.add(r.start, &[create]);
}

/// The new container starts beside the old ones; the planner ends the old
/// ones once the new one signals or times out.
fn hand_over(p: &mut Plan, r: Replacement<'_>) {
    fresh(p, r)
}

/// The old containers keep running until the new image is there and the
/// new container exists; then stop old, start new, remove old.
fn download_then_kill(p: &mut Plan, r: Replacement<'_>) {
    let create = fetch_then_create(p, &r, &[]);
    if r.locked {
        return wait_for_lock(p, r.app, r.service, &[create]);
    }
    let mut start_after = vec![create];
    for o in r.old.iter().filter(|o| o.state == RunState::Running) {
        start_after.push(p.add(
            Step::Stop {
                id: o.id.clone(),
                app_uuid: r.app.into(),
                service: r.service.into(),
            },
            &[create],
        ));
    }
    let start = p.add(r.start.clone(), &start_after);
    for o in &r.old {
        p.add(
            Step::Remove {
                id: o.id.clone(),
                app_uuid: r.app.into(),
                service: r.service.into(),
            },
            &[start],
        );
    }
}

/// The old containers go first, then fetch, create, start: the outage is
/// the service's own download. `delete_images` (delete-then-download) also
/// removes the old images before the fetch.
fn kill_then_download(p: &mut Plan, r: Replacement<'_>, delete_images: bool) {
    if r.locked {
        return wait_for_lock(p, r.app, r.service, &[]);
    }
    let mut removed: Vec<usize> = r.dead.clone();
    for o in &r.old {
        removed.push(stop_then_remove(p, o, &[]));
    }
    let mut before_fetch = removed.clone();
    if delete_images {
        for image in &r.old_images {
            before_fetch.push(p.add(
                Step::RemoveImage {
                    image: image.clone(),
                },
                &removed,
            ));
        }
    }
    let create = fetch_then_create(p, &r, &before_fetch);
    p.add(r.start, &[create]);
}
