SUMMARY = "RAUC system.conf and keyring of resin OS"
DESCRIPTION = "system.conf is rendered at build time by resin-imagegen from the \
               disk layout (slots rootfs.0/rootfs.1, bootloader, grubenv, data directory on \
               resin-state), so it cannot disagree with the disk image. The keyring is \
               RESIN_RAUC_KEYRING_FILE."
HOMEPAGE = "https://example.invalid/resin"
SECTION = "base"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

inherit resin-imagegen

INHIBIT_DEFAULT_DEPS = "1"
PACKAGE_ARCH = "${MACHINE_ARCH}"

RPROVIDES:${PN} += "virtual-rauc-conf"

do_compile[file-checksums] += "${RESIN_RAUC_KEYRING_FILE}:True"
do_compile() {
    resin_imagegen_render ${B}/rendered
}

do_install() {
    # /etc/rauc: the path the layout's [boot] keyring and RAUC's default
    # system.conf location use.
    install -d ${D}${sysconfdir}/rauc
    install -m 0644 ${B}/rendered/etc/rauc/system.conf ${D}${sysconfdir}/rauc/system.conf
    install -m 0644 ${RESIN_RAUC_KEYRING_FILE} ${D}${sysconfdir}/rauc/keyring.pem
}
