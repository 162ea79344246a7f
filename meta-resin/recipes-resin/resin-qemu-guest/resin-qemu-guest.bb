SUMMARY = "resin QEMU test hooks: the boot marker the qemu-tests harness waits for"
DESCRIPTION = "Installs qemu-tests/guest/rootfs of the resin repository at \
               RESIN_SRCREV (no copy \
               in this layer): resin-boot-marker.service prints 'resin-qemu: up \
               slot=... version=...' on the serial console, resin-boot-times.service \
               the boot's slowest units, and a DHCP .network for QEMU's user-mode \
               network. resin-image adds it on qemuarm64; the QEMU stand-in runs this \
               same do_install."
HOMEPAGE = "https://example.invalid/resin"
SECTION = "base"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

inherit systemd allarch

require recipes-resin/resin-srcrev.inc

PV = "0.1.0+git"
SRC_URI = "${RESIN_GIT_URI};destsuffix=resin"
SRCREV = "${RESIN_SRCREV}"
S = "${UNPACKDIR}/resin/qemu-tests/guest/rootfs"

SYSTEMD_SERVICE:${PN} = "resin-boot-marker.service resin-boot-times.service"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -D -m 0755 ${S}/usr/local/sbin/resin-boot-marker ${D}${prefix}/local/sbin/resin-boot-marker
    install -D -m 0755 ${S}/usr/local/sbin/resin-boot-times ${D}${prefix}/local/sbin/resin-boot-times
    install -D -m 0644 ${S}/etc/systemd/system/resin-boot-marker.service \
        ${D}${systemd_system_unitdir}/resin-boot-marker.service
    install -D -m 0644 ${S}/etc/systemd/system/resin-boot-times.service \
        ${D}${systemd_system_unitdir}/resin-boot-times.service
    install -D -m 0644 ${S}/etc/systemd/network/20-wired.network \
        ${D}${sysconfdir}/systemd/network/20-wired.network
}

FILES:${PN} += "${prefix}/local/sbin"
