-- The web dashboard (issue 13).
-- A user's dashboard password: an argon2id PHC string, set with
-- `resin-cloud user passwd <name>`. NULL: the user cannot log in to the web.
ALTER TABLE "user" ADD COLUMN password_hash TEXT;
-- A logged-in browser: only the sha256 of the cookie's token is stored,
-- with the session's CSRF token and its absolute expiry.
CREATE TABLE web_session (
    id {{ID}},
    token_hash TEXT NOT NULL UNIQUE,
    "user" BIGINT NOT NULL REFERENCES "user"(id) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX web_session_user ON web_session("user");
-- Who changed what: written by the dashboard's and the API's mutating
-- handlers. `owner` is the user whose data it is (who may read the entry),
-- `actor` who did it (NULL once that user is gone).
CREATE TABLE audit_log (
    id {{ID}},
    at TEXT NOT NULL,
    actor BIGINT REFERENCES "user"(id) ON DELETE SET NULL,
    owner BIGINT NOT NULL REFERENCES "user"(id) ON DELETE CASCADE,
    via TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX audit_log_owner ON audit_log(owner, id)
