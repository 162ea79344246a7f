-- PostgreSQL only (device's fillfactor): SQLite has no such setting.
SELECT 1;
