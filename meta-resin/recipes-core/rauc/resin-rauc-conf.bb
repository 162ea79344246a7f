SUMMARY = "RAUC system.conf and keyring of resin OS"
DESCRIPTION = "system.conf is rendered at build time by resin-imagegen from the \
               disk layout (slots rootfs.0/rootfs.1, bootloader, grubenv, data directory on \
               resin-state), so it cannot disagree with the disk image. The keyring is \
               RESIN_RAUC_KEYRING_FILE."
HOMEPAGE = "https://example.invalid/resin"
SECTION = "base"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

inherit resin-imagegen resin-keys

INHIBIT_DEFAULT_DEPS = "1"
PACKAGE_ARCH = "${MACHINE_ARCH}"

RPROVIDES:${PN} += "virtual-rauc-conf"

do_compile[file-checksums] += "${@'${RESIN_RAUC_KEYRING_FILE}:True' if d.getVar('RESIN_RAUC_KEYRING_FILE') else ''}"
do_compile[prefuncs] += "resin_check_rauc_keys"
do_compile() {
    resin_imagegen_render ${B}/rendered
    conf=${B}/rendered/etc/rauc/system.conf
    # Only verity bundles (signed hash tree checked while reading): plain
    # bundles are refused by the device.
    sed -i -e '/^\[system\]$/a bundle-formats=-plain' $conf
    if [ "${RESIN_BOOTLOADER}" = "uboot" ]; then
        # The attempts RAUC writes into BOOT_x_LEFT when it marks a slot good
        # or makes it primary (the same count boot.cmd starts from).
        sed -i -e '/^\[system\]$/a boot-attempts=${RESIN_BOOT_ATTEMPTS}\nboot-attempts-primary=${RESIN_BOOT_ATTEMPTS}' $conf
    fi
    grep -q '^bundle-formats=-plain$' $conf || bbfatal "could not add bundle-formats to $conf"
}

do_install() {
    # /etc/rauc: the path the layout's [boot] keyring and RAUC's default
    # system.conf location use.
    install -d ${D}${sysconfdir}/rauc
    install -m 0644 ${B}/rendered/etc/rauc/system.conf ${D}${sysconfdir}/rauc/system.conf
    install -m 0644 ${RESIN_RAUC_KEYRING_FILE} ${D}${sysconfdir}/rauc/keyring.pem
}
