//! resin-cloud (placeholder; see its issue).
