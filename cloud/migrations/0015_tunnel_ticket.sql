-- The dashboard terminal's single-use tickets (cloud/src/tunnel.rs): the
-- page asks for one (session cookie and CSRF token) and opens the session's
-- WebSocket with it instead of a key. Only the ticket's sha256 is kept; it
-- is bound to a user and a device, deleted when used, and expires after 30 s.
CREATE TABLE tunnel_ticket (
    hash TEXT PRIMARY KEY,
    "user" BIGINT NOT NULL,
    device BIGINT NOT NULL,
    expires_at TEXT NOT NULL
);
