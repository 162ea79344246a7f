SUMMARY = "resin image generator: A/B disk images, bmap and RAUC bundles"
DESCRIPTION = "Lays out the resin disk image from a rootfs with the layout file \
               imagegen/layouts/resin-ab.toml and renders the files that must agree with the \
               layout (grub.cfg, grubenv, U-Boot boot script, fstab, RAUC system.conf). The \
               image class and the boot/RAUC recipes use its native variant."
SECTION = "devel"

require recipes-resin/resin-workspace.inc

CARGO_SRC_DIR = "imagegen"

# The layout and its templates, installed next to the tool so that recipes
# using resin-imagegen-native find them in their native sysroot.
do_install:append() {
    install -d ${D}${datadir}/resin-imagegen/layouts ${D}${datadir}/resin-imagegen/templates
    install -m 0644 ${S}/imagegen/layouts/*.toml ${D}${datadir}/resin-imagegen/layouts/
    install -m 0644 ${S}/imagegen/templates/*.j2 ${D}${datadir}/resin-imagegen/templates/
}

BBCLASSEXTEND = "native"
