# resin: U-Boot keeps a redundant environment (uboot.env and uboot-redund.env
# on resin-boot), matching resin-bootfiles' /etc/fw_env.config. Only for the
# resin distro on U-Boot machines.
FILESEXTRAPATHS:prepend:resin := "${THISDIR}/files:"
SRC_URI:append:resin:rpi = " file://resin-env-redundant.cfg"
