-- Builds (issue 12): a job queue that resin-cloud's builder workers take
-- from (FOR UPDATE SKIP LOCKED on PostgreSQL; one writer on SQLite).
-- status: queued, building, success, failed, cancelled (guarded in build.rs).
CREATE TABLE build (
    id {{ID}},
    uuid TEXT NOT NULL UNIQUE,
    fleet BIGINT NOT NULL REFERENCES fleet(id) ON DELETE CASCADE,
    "user" BIGINT NOT NULL REFERENCES "user"(id) ON DELETE CASCADE,
    status TEXT NOT NULL,
    source TEXT NOT NULL,
    nocache BOOLEAN NOT NULL DEFAULT FALSE,
    pin BOOLEAN NOT NULL DEFAULT TRUE,
    context_path TEXT NOT NULL,
    "release" BIGINT REFERENCES "release"(id) ON DELETE SET NULL,
    error TEXT,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT
);
CREATE INDEX build_status ON build(status, id);
CREATE INDEX build_fleet ON build(fleet);
CREATE INDEX build_release ON build("release");
-- One row per log line: a BuildLogLine as JSON.
CREATE TABLE build_log (
    id {{ID}},
    build BIGINT NOT NULL REFERENCES build(id) ON DELETE CASCADE,
    line TEXT NOT NULL
);
CREATE INDEX build_log_build ON build_log(build, id);
