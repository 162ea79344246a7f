-- Device actions (issue 16): a reboot, or a restart of all services or of
-- one, asked for by a user, carried out once by the supervisor. The open
-- ones are also kept, as JSON, in device.action (migration 0004), so the
-- target state reads them with the rest of the device row.
CREATE TABLE device_action (
    id {{ID}},
    device BIGINT NOT NULL REFERENCES device(id) ON DELETE CASCADE,
    action TEXT NOT NULL,
    service TEXT,
    state TEXT NOT NULL,
    result TEXT,
    requested_by BIGINT REFERENCES "user"(id) ON DELETE SET NULL,
    requested_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX device_action_device ON device_action(device, id);
