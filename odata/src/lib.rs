//! resin-odata (placeholder; see its issue).
