-- The apps part of the last state report (resin_api_types::AppReport by app
-- uuid, as JSON), so the cloud shows each service's status, release and image.
ALTER TABLE device ADD COLUMN apps TEXT
