//! resin-osupdate (placeholder; see its issue).
