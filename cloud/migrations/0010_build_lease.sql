-- Builds (issue 12): the lease of a running build. The worker that builds
-- renews heartbeat_at every few seconds; a `building` job whose heartbeat is
-- older than builder_lease_secs was left by a process that died, and any
-- builder process marks it failed (build.rs, `reap_stale`).
ALTER TABLE build ADD COLUMN heartbeat_at TEXT;
