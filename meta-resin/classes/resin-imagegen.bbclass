# Gives a recipe resin-imagegen-native and resin_imagegen_render.
#
# Everything that must agree with the disk layout (grub.cfg, grubenv, U-Boot
# boot script, fstab, RAUC system.conf) is rendered at build time by
# `resin-imagegen render` from RESIN_LAYOUT with RESIN_IMAGEGEN_SET (see
# conf/distro/include/resin-settings.inc), so it always agrees with the image.

DEPENDS:append = " resin-imagegen-native"

# resin_imagegen_render DIR: renders every file of the layout into DIR
# (EFI/BOOT/grub.cfg, EFI/BOOT/grubenv, boot.cmd, uboot-env.txt, etc/fstab,
# etc/rauc/system.conf).
resin_imagegen_render[doc] = "Renders the layout's files (grub.cfg, fstab, system.conf...) into a directory"
resin_imagegen_render() {
    rm -rf "$1"
    mkdir -p "$1"
    resin-imagegen render --layout ${RESIN_LAYOUT} ${RESIN_IMAGEGEN_SET} --out-dir "$1"
}
