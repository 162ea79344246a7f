# resin: /etc/fstab is rendered from the disk layout by resin-imagegen, so the
# mounts of resin-boot, resin-state and resin-data always match the image.
# Only for the resin distro.
DEPENDS:append:resin = " resin-imagegen-native"

PACKAGE_ARCH:resin = "${MACHINE_ARCH}"

do_install:append:resin() {
    rm -rf ${WORKDIR}/resin-rendered
    resin-imagegen render --layout ${RESIN_LAYOUT} ${RESIN_IMAGEGEN_SET} --out-dir ${WORKDIR}/resin-rendered
    install -m 0644 ${WORKDIR}/resin-rendered/etc/fstab ${D}${sysconfdir}/fstab
    install -d ${D}/mnt/boot ${D}/mnt/state ${D}/mnt/data
}

FILES:${PN}:append:resin = " /mnt/boot /mnt/state /mnt/data"
