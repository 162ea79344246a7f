//! resin-cli (placeholder; see its issue).
