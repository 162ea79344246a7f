-- The dashboard's fleet page (issue 13) lists a fleet's devices by name, 50
-- a page: with this index the database reads them in order instead of
-- sorting the whole fleet for every page (10k devices: the last page sorted
-- 10,000 rows to return 50).
CREATE INDEX device_fleet_name ON device(fleet, name, id);
