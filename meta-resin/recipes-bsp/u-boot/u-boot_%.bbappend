# resin: U-Boot keeps its environment where the disk layout puts it: the
# resin-env partition of imagegen's layout (fs = "uboot-env", two redundant
# copies), read from the MMC at that partition's offset. A power cut during
# saveenv (boot.scr writes the A/B attempt counter on every boot) leaves the
# other copy. The Kconfig fragment (uboot-env.cfg: CONFIG_ENV_IS_IN_MMC, the
# offsets and size) and /etc/fw_env.config are rendered from the layout by
# resin-imagegen, so the partition's number, offset and size are stated only
# in the layout file. Only for the resin distro on U-Boot machines.
inherit_defer ${@'resin-imagegen' if d.getVar('RESIN_BOOTLOADER') == 'uboot' else ''}

do_configure:append:resin:rpi() {
    resin_imagegen_render ${WORKDIR}/resin-rendered
    grep -q '^CONFIG_ENV_IS_IN_MMC=y' ${WORKDIR}/resin-rendered/uboot-env.cfg \
        || bbfatal "the layout ${RESIN_LAYOUT} has no uboot-env partition for U-Boot's environment"
    merge_config.sh -m .config ${WORKDIR}/resin-rendered/uboot-env.cfg
    cml1_do_configure
}

# meta-raspberrypi installs its own fw_env.config; the layout's replaces it, so
# every /etc/fw_env.config in the build agrees with resin-bootfiles'.
do_install:append:resin:rpi() {
    install -D -m 0644 ${WORKDIR}/resin-rendered/etc/fw_env.config ${D}${sysconfdir}/fw_env.config
}
