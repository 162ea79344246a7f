# resin: Docker's data-root is on resin-data (/mnt/data/docker), since the
# rootfs is read-only and the same for every device. Only for the resin distro.
FILESEXTRAPATHS:prepend:resin := "${THISDIR}/files:"

SRC_URI:append:resin = " file://daemon.json file://resin-data-root.conf"

do_install:append:resin() {
    install -d ${D}${sysconfdir}/docker ${D}${systemd_system_unitdir}/docker.service.d
    install -m 0644 ${UNPACKDIR}/daemon.json ${D}${sysconfdir}/docker/daemon.json
    install -m 0644 ${UNPACKDIR}/resin-data-root.conf ${D}${systemd_system_unitdir}/docker.service.d/
}

FILES:${PN}:append:resin = " ${sysconfdir}/docker/daemon.json ${systemd_system_unitdir}/docker.service.d"
