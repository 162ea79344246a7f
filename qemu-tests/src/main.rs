//! `resin-qemu`: builds the QEMU device and runs the end-to-end scenarios.

fn main() -> anyhow::Result<()> {
    Ok(())
}
