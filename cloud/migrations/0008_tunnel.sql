-- The audit of remote-access sessions (cloud/src/tunnel.rs). Rows outlive
-- the device and the user (no foreign keys): `owner` is the fleet owner at
-- the time, who may read them; `username` is kept as it was.
CREATE TABLE tunnel_session (
    id {{ID}},
    device BIGINT NOT NULL,
    device_uuid TEXT NOT NULL,
    owner BIGINT NOT NULL,
    "user" BIGINT,
    username TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    bytes_up BIGINT NOT NULL DEFAULT 0,
    bytes_down BIGINT NOT NULL DEFAULT 0,
    exit_code BIGINT,
    error TEXT
);
CREATE INDEX tunnel_session_device ON tunnel_session(device, id);
