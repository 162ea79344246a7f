-- OS-update history (issue 13): each change of the OS-update state a
-- device reports (downloading, installing, rebooting, verifying, committed,
-- failed, rolled-back), with the versions and the reason, kept so the
-- dashboard can show how an update went after the device has moved on.
-- Bounded per device (crate::os_history::KEEP).
CREATE TABLE os_update_event (
    id {{ID}},
    device BIGINT NOT NULL REFERENCES device(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    from_state TEXT,
    os_version TEXT,
    target_version TEXT,
    reason TEXT,
    boot_slot TEXT,
    at TEXT NOT NULL
);
CREATE INDEX os_update_event_device ON os_update_event(device, id);
