-- OS releases are per owner: (owner, device_type, version) is unique, so two
-- users may each publish 3.0 for the same device type. SQLite cannot drop a
-- table constraint, so the table is rebuilt (nothing references it by key).
CREATE TABLE os_release_new (
    id {{ID}},
    owner BIGINT NOT NULL REFERENCES "user"(id) ON DELETE CASCADE,
    device_type TEXT NOT NULL,
    version TEXT NOT NULL,
    bundle_sha256 TEXT,
    bundle_size BIGINT,
    image_size BIGINT,
    created_at TEXT NOT NULL,
    UNIQUE (owner, device_type, version)
);
INSERT INTO os_release_new (id, owner, device_type, version, bundle_sha256, bundle_size, image_size, created_at)
    SELECT id, owner, device_type, version, bundle_sha256, bundle_size, image_size, created_at FROM os_release;
DROP TABLE os_release;
ALTER TABLE os_release_new RENAME TO os_release
