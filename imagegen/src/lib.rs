//! resin-imagegen (placeholder; see its issue).
