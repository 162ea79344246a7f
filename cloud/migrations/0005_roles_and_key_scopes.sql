-- Roles and key scopes (issue 15).
-- An admin publishes public OS releases and manages users.
ALTER TABLE "user" ADD COLUMN is_admin BOOLEAN NOT NULL DEFAULT FALSE;
-- A user's API key: 'full' or 'read-only', and optionally limited to one
-- fleet (and what hangs off it). expires_at already exists.
ALTER TABLE api_key ADD COLUMN scope TEXT NOT NULL DEFAULT 'full';
ALTER TABLE api_key ADD COLUMN fleet BIGINT REFERENCES fleet(id) ON DELETE CASCADE;
-- An OS release an admin published for everyone. A fleet's target OS
-- version resolves to its owner's own release first, then to a public one.
ALTER TABLE os_release ADD COLUMN is_public BOOLEAN NOT NULL DEFAULT FALSE;
CREATE UNIQUE INDEX os_release_public ON os_release (device_type, version) WHERE is_public;
