-- Staged rollouts (docs/architecture.md, "Rollouts"). Times the evaluator
-- compares are BIGINT milliseconds since the epoch; event times are TEXT as
-- elsewhere.
CREATE TABLE rollout (
    id {{ID}},
    fleet BIGINT NOT NULL REFERENCES fleet(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    "release" BIGINT REFERENCES "release"(id) ON DELETE CASCADE,
    os_version TEXT,
    waves TEXT NOT NULL,
    state TEXT NOT NULL,
    current_wave BIGINT NOT NULL DEFAULT 0,
    next_eval_at BIGINT NOT NULL DEFAULT 0,
    passes BIGINT NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
-- At most one open rollout per fleet.
CREATE UNIQUE INDEX rollout_one_open ON rollout(fleet) WHERE state IN ('draft', 'running', 'paused', 'halted');
-- Wave membership, materialised when the rollout starts (and for devices
-- that join the fleet later), and each member's health.
CREATE TABLE rollout_device (
    rollout BIGINT NOT NULL REFERENCES rollout(id) ON DELETE CASCADE,
    device BIGINT NOT NULL REFERENCES device(id) ON DELETE CASCADE,
    wave BIGINT NOT NULL,
    state TEXT NOT NULL,
    assigned_at BIGINT,
    running_since BIGINT,
    restarts BIGINT NOT NULL DEFAULT 0,
    reason TEXT,
    PRIMARY KEY (rollout, device)
);
CREATE INDEX rollout_device_device ON rollout_device(device);
CREATE TABLE rollout_event (
    id {{ID}},
    rollout BIGINT NOT NULL REFERENCES rollout(id) ON DELETE CASCADE,
    from_state TEXT,
    to_state TEXT NOT NULL,
    wave BIGINT,
    action TEXT NOT NULL,
    reason TEXT NOT NULL,
    counts TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX rollout_event_rollout ON rollout_event(rollout, id);
-- What a rollout assigned to the device: the target state uses it after a
-- pin and before the fleet's target, read in the same query as the rest of
-- the device, so the poll path has no query more.
ALTER TABLE device ADD COLUMN rollout_release BIGINT REFERENCES "release"(id) ON DELETE SET NULL;
ALTER TABLE device ADD COLUMN rollout_os_version TEXT;
-- A pending action for the supervisor (restart, reboot), JSON, delivered in
-- the target state until the device acknowledges it.
ALTER TABLE device ADD COLUMN action TEXT
