//! resin-supervisor (placeholder; see its issue).
