# resin: containerd keeps its state on resin-data (/mnt/data/containerd), since
# the rootfs is read-only and /var/lib is tmpfs. Only for the resin distro.
FILESEXTRAPATHS:prepend:resin := "${THISDIR}/files:"

SRC_URI:append:resin = " file://config.toml file://resin-data-root.conf"

do_install:append:resin() {
    install -d ${D}${sysconfdir}/containerd ${D}${systemd_system_unitdir}/containerd.service.d
    install -m 0644 ${UNPACKDIR}/config.toml ${D}${sysconfdir}/containerd/config.toml
    install -m 0644 ${UNPACKDIR}/resin-data-root.conf ${D}${systemd_system_unitdir}/containerd.service.d/
}

FILES:${PN}:append:resin = " ${sysconfdir}/containerd/config.toml ${systemd_system_unitdir}/containerd.service.d"
