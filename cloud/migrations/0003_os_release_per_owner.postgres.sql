-- OS releases are per owner: (owner, device_type, version) is unique, so two
-- users may each publish 3.0 for the same device type.
ALTER TABLE os_release DROP CONSTRAINT IF EXISTS os_release_device_type_version_key;
ALTER TABLE os_release ADD CONSTRAINT os_release_owner_device_type_version_key UNIQUE (owner, device_type, version)
