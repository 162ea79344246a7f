SUMMARY = "resin OS persistence: state bind mounts and growing resin-data"
DESCRIPTION = "The rootfs is read-only. resin-state-binds bind-mounts the \
               persistent bits (machine-id, hostname, ...) from resin-state over their paths \
               on every boot, seeding them on first boot. systemd-repart grows resin-data to \
               the end of the disk on first boot (its repart.d is rendered from the disk \
               layout by resin-imagegen) and systemd-growfs grows its ext4."
HOMEPAGE = "https://example.invalid/resin"
SECTION = "base"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

SRC_URI = "\
    file://resin-state-binds \
    file://resin-state-binds.service \
    file://resin-growfs-data.service \
"

S = "${UNPACKDIR}"

# The repart.d definitions are rendered from the layout with this build's
# RESIN_IMAGEGEN_SET, so they are the machine's.
inherit systemd resin-imagegen

PACKAGE_ARCH = "${MACHINE_ARCH}"

SYSTEMD_SERVICE:${PN} = "resin-state-binds.service resin-growfs-data.service"

# Paths kept on resin-state (under /mnt/state/root-overlay/), one per word.
RESIN_PERSISTENT_PATHS ??= "${sysconfdir}/machine-id ${sysconfdir}/hostname ${localstatedir}/lib/systemd"

do_install() {
    install -d ${D}${libexecdir} ${D}${systemd_system_unitdir} ${D}${nonarch_libdir}/repart.d ${D}${sysconfdir}/default
    install -m 0755 ${S}/resin-state-binds ${D}${libexecdir}/resin-state-binds
    sed -i -e 's,@LIBEXECDIR@,${libexecdir},g' ${S}/resin-state-binds.service
    install -m 0644 ${S}/resin-state-binds.service ${S}/resin-growfs-data.service ${D}${systemd_system_unitdir}/
    # systemd-repart's definitions: one per partition of the disk layout (labels,
    # types, sizes; only resin-data may grow), the layout being their one source.
    resin-imagegen render-repart --layout ${RESIN_LAYOUT} ${RESIN_IMAGEGEN_SET} --out ${D}${nonarch_libdir}/repart.d
    echo 'RESIN_PERSISTENT_PATHS="${RESIN_PERSISTENT_PATHS}"' > ${D}${sysconfdir}/default/resin-state-binds
}

FILES:${PN} += "${nonarch_libdir}/repart.d"
RDEPENDS:${PN} += "systemd util-linux-mount"
