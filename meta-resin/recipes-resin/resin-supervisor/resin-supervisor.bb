SUMMARY = "resin supervisor: the device agent that runs the fleet's containers"
DESCRIPTION = "Registers the device with the resin cloud, reconciles the target \
               state against the Docker engine, reports state and logs, and drives A/B OS \
               updates through RAUC."
SECTION = "base"

require recipes-resin/resin-workspace.inc

# The workspace member to build (cargo --manifest-path supervisor/Cargo.toml).
CARGO_SRC_DIR = "supervisor"

inherit systemd

SYSTEMD_SERVICE:${PN} = "resin-supervisor.service resin-boot-guard.service resin-ca.service"

do_install:append() {
    # The unit lives beside the code (supervisor/dist/); there is no copy of it
    # in this layer.
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/supervisor/dist/resin-supervisor.service ${D}${systemd_system_unitdir}/
    # The boot guard reboots an unconfirmed trial boot of a new OS slot.
    install -m 0644 ${S}/supervisor/dist/resin-boot-guard.service ${D}${systemd_system_unitdir}/
    install -d ${D}${libexecdir}
    install -m 0755 ${S}/supervisor/dist/resin-boot-guard ${D}${libexecdir}/
    # config.json's rootCA into the system trust store (for dockerd and RAUC).
    install -m 0644 ${S}/supervisor/dist/resin-ca.service ${D}${systemd_system_unitdir}/
    install -m 0755 ${S}/supervisor/dist/resin-ca ${D}${libexecdir}/
}

RDEPENDS:${PN} += "ca-certificates docker-moby rauc"
