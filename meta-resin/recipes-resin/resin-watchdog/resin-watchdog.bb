SUMMARY = "resin OS: systemd arms the hardware watchdog"
DESCRIPTION = "A system.conf.d drop-in setting RuntimeWatchdogSec and \
               RebootWatchdogSec, so a trial boot that hangs is reset by the \
               hardware watchdog and falls back through the bootloader's attempt counter."
HOMEPAGE = "https://example.invalid/resin"
SECTION = "base"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

SRC_URI = "file://10-resin-watchdog.conf"

S = "${UNPACKDIR}"

inherit allarch

do_install() {
    install -D -m 0644 ${S}/10-resin-watchdog.conf ${D}${systemd_unitdir}/system.conf.d/10-resin-watchdog.conf
}

FILES:${PN} += "${systemd_unitdir}/system.conf.d"
RDEPENDS:${PN} = "systemd"
