//! What the harness knows of the disk, read from imagegen's layout file through
//! resin-imagegen's library, so the layout stays the one source of partition labels
//! and slots: the root slots' bootnames, GPT labels and RAUC slot names.

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use resin_imagegen::layout::{Layout, Plan};
use resin_imagegen::render::rauc_slot_name;

/// One A/B root slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The bootloader's name of the slot (`A`), printed by the boot marker.
    pub bootname: String,
    /// The GPT partition label (`resin-rootA`).
    pub label: String,
    /// RAUC's slot name (`rootfs.0`), what the device reports as `boot_slot`.
    pub rauc: String,
}

/// The disk layout as the scenarios need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLayout {
    slots: [Slot; 2],
}

impl DiskLayout {
    /// Plans `layout` with `sets` (the same `--set`s the disk is built with).
    pub fn load(layout: &Path, sets: &[String]) -> anyhow::Result<Self> {
        let plan = Layout::load(layout, sets)
            .and_then(|l| l.plan())
            .with_context(|| format!("reading the disk layout {}", layout.display()))?;
        Self::from_plan(&plan).with_context(|| format!("the disk layout {}", layout.display()))
    }

    pub fn from_plan(plan: &Plan) -> anyhow::Result<Self> {
        let slots: Vec<Slot> = plan
            .root_slots()
            .enumerate()
            .map(|(i, p)| Slot {
                bootname: p.slot.clone().unwrap_or_default(),
                label: p.label.clone(),
                rauc: rauc_slot_name(i),
            })
            .collect();
        let Ok(slots) = <[Slot; 2]>::try_from(slots) else {
            bail!("the A/B scenarios need exactly two root slots");
        };
        Ok(Self { slots })
    }

    pub fn slots(&self) -> &[Slot; 2] {
        &self.slots
    }

    /// The slot with bootname `bootname`.
    pub fn slot(&self, bootname: &str) -> anyhow::Result<&Slot> {
        self.slots
            .iter()
            .find(|s| s.bootname == bootname)
            .ok_or_else(|| anyhow!("the disk layout has no slot {bootname:?}"))
    }

    /// The slot that is not `bootname`: where an OS update goes.
    pub fn other(&self, bootname: &str) -> anyhow::Result<&Slot> {
        self.slot(bootname)?;
        self.slots
            .iter()
            .find(|s| s.bootname != bootname)
            .ok_or_else(|| anyhow!("the disk layout has one slot {bootname:?}"))
    }

    /// RAUC's name of slot `bootname`.
    pub fn rauc(&self, bootname: &str) -> anyhow::Result<&str> {
        Ok(&self.slot(bootname)?.rauc)
    }

    /// The initrd's line naming the root it mounts when slot `bootname` boots.
    pub fn root_line(&self, bootname: &str) -> anyhow::Result<String> {
        Ok(format!(
            "resin-initrd: root PARTLABEL={}",
            self.slot(bootname)?.label
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn layout_file() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../imagegen/layouts/resin-ab.toml")
    }

    #[test]
    fn the_slots_and_labels_come_from_the_layout_file() {
        let d = DiskLayout::load(&layout_file(), &[]).unwrap();
        assert_eq!(
            d.slot("A").unwrap(),
            &Slot {
                bootname: "A".into(),
                label: "resin-rootA".into(),
                rauc: "rootfs.0".into()
            }
        );
        assert_eq!(d.other("A").unwrap().bootname, "B");
        assert_eq!(d.other("B").unwrap().label, "resin-rootA");
        assert_eq!(d.rauc("B").unwrap(), "rootfs.1");
        assert_eq!(
            d.root_line("B").unwrap(),
            "resin-initrd: root PARTLABEL=resin-rootB"
        );
        assert!(d.slot("C").is_err());
        assert!(d.other("C").is_err());
    }

    #[test]
    fn a_layout_with_other_labels_gives_other_names() {
        // What the harness would have hard-coded is renamed here: the
        // harness follows the layout.
        let text = std::fs::read_to_string(layout_file())
            .unwrap()
            .replace("label = \"resin-rootA\"", "label = \"sys-a\"")
            .replace("label = \"resin-rootB\"", "label = \"sys-b\"")
            .replace("slot = \"A\"", "slot = \"x\"")
            .replace("slot = \"B\"", "slot = \"y\"");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.toml");
        std::fs::write(&p, text).unwrap();
        let d = DiskLayout::load(&p, &[]).unwrap();
        assert_eq!(d.slot("x").unwrap().label, "sys-a");
        assert_eq!(d.other("x").unwrap().label, "sys-b");
        assert_eq!(d.rauc("y").unwrap(), "rootfs.1");
        assert!(d.slot("A").is_err());
    }

    #[test]
    fn a_set_that_renames_a_label_is_followed() {
        let d = DiskLayout::load(&layout_file(), &["rootB.label=other-b".into()]).unwrap();
        assert_eq!(d.other("A").unwrap().label, "other-b");
    }
}
