-- Remote access with more than one replica (cloud/src/tunnel_replicas.rs).
-- Each serving process (replica) has a row with the address the other
-- replicas reach it at and a heartbeat it renews every few seconds; a
-- replica whose heartbeat is stale is dead, and its rows are ignored and
-- then swept by any live replica.
CREATE TABLE tunnel_replica (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL
);
-- Which replica holds a device's tunnel socket (one row per connected
-- device; `conn` tells one connection of the device from the next).
CREATE TABLE tunnel_link (
    device BIGINT PRIMARY KEY,
    replica TEXT NOT NULL,
    conn BIGINT NOT NULL,
    connected_at TEXT NOT NULL
);
CREATE INDEX tunnel_link_replica ON tunnel_link(replica);
-- The secret replicas present to each other when one forwards a session
-- to the replica holding the device (one row, made by the first replica).
CREATE TABLE replica_secret (
    id BIGINT PRIMARY KEY,
    secret TEXT NOT NULL
);
