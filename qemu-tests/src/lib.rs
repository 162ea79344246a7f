//! resin-qemu-tests (placeholder; see its issue).
