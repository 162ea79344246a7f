-- The dashboard's saved views (issue 13): a user's named filters and sort
-- of a fleet's device table, as the fleet page's query string. Private to
-- the user; gone with the user or the fleet.
CREATE TABLE saved_view (
    id {{ID}},
    "user" BIGINT NOT NULL REFERENCES "user"(id) ON DELETE CASCADE,
    fleet BIGINT NOT NULL REFERENCES fleet(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    query TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE ("user", fleet, name)
);
