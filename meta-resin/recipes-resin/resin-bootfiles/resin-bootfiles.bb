SUMMARY = "resin OS A/B boot files rendered from the disk layout"
DESCRIPTION = "Renders the bootloader side of the A/B contract with \
               resin-imagegen: for GRUB (qemuarm64) grub.cfg and grubenv, which the image \
               class also installs into resin-boot; for U-Boot (raspberrypi4-64) boot.scr, \
               compiled from the rendered boot.cmd (BOOT_ORDER, BOOT_A_LEFT, BOOT_B_LEFT), \
               and the rendered /etc/fw_env.config, so that RAUC's fw_setenv/fw_printenv \
               reach both copies of the environment on the layout's resin-env partition."
HOMEPAGE = "https://example.invalid/resin"
SECTION = "bootloaders"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

inherit resin-imagegen deploy

DEPENDS:append = " u-boot-tools-native"
# meta-raspberrypi's U-Boot looks for boot.scr; this recipe provides it
# (PREFERRED_PROVIDER_u-boot-default-script = "resin-bootfiles").
PROVIDES += "u-boot-default-script"

INHIBIT_DEFAULT_DEPS = "1"
PACKAGE_ARCH = "${MACHINE_ARCH}"

# U-Boot's environment lives on the layout's resin-env partition (fs =
# "uboot-env": two redundant copies, which resin-imagegen build writes into the
# image from the rendered uboot-env.txt); /etc/fw_env.config is rendered from
# the same entry, and U-Boot's Kconfig fragment too (recipes-bsp/u-boot/).
# Nothing here restates its partition number, offset or size.

# resin_slot_devicetree BOOT_CMD: the kernel boots with the device tree of
# its own slot, /boot/dtb/${fdtfile} (resin-image.bbclass puts the
# KERNEL_DEVICETREE there), so kernel and DTB are always of one OS version,
# also after a fallback to the old slot; the firmware's device tree
# (${fdt_addr}) is used only when the slot has none (an OS from before this
# change). This belongs in imagegen's boot.cmd.j2; until then it is made here.
resin_slot_devicetree[doc] = "Makes boot.cmd boot with the device tree from the booted slot"
resin_slot_devicetree() {
    cmd=$1
    dev=$(sed -n 's/^ext4load \(.*\):\${resin_part} \${kernel_addr_r} .*/\1/p' $cmd)
    last=$(tail -n 1 $cmd)
    boot=${last%% *}
    [ -n "$dev" ] && [ "$last" = "$boot \${kernel_addr_r} - \${fdt_addr}" ] \
        || bbfatal "$cmd: no 'ext4load DEV:\${resin_part}' line, or its last line is not '$boot \${kernel_addr_r} - \${fdt_addr}'"
    sed -i '$d' $cmd
    printf '%s\n' \
        "if test -n \"\${fdtfile}\" && ext4load $dev:\${resin_part} \${fdt_addr_r} /boot/dtb/\${fdtfile}; then" \
        "  $boot \${kernel_addr_r} - \${fdt_addr_r}" \
        "else" \
        "  echo \"resin: no /boot/dtb/\${fdtfile} in slot \${resin_slot}: the firmware's device tree\"" \
        "  $boot \${kernel_addr_r} - \${fdt_addr}" \
        "fi" >> $cmd
}

do_compile() {
    resin_imagegen_render ${B}/rendered
    if [ "${RESIN_BOOTLOADER}" = "uboot" ]; then
        resin_slot_devicetree ${B}/rendered/boot.cmd
        mkimage -A arm64 -T script -C none -n "resin A/B boot script" \
            -d ${B}/rendered/boot.cmd ${B}/boot.scr
        grep -q '^/dev/disk/by-partlabel/' ${B}/rendered/etc/fw_env.config \
            || bbfatal "the layout ${RESIN_LAYOUT} has no uboot-env partition: fw_env.config would point at files on resin-boot"
    fi
}

do_install() {
    if [ "${RESIN_BOOTLOADER}" = "uboot" ]; then
        install -D -m 0644 ${B}/rendered/etc/fw_env.config ${D}${sysconfdir}/fw_env.config
    fi
}

do_deploy() {
    if [ "${RESIN_BOOTLOADER}" = "uboot" ]; then
        install -m 0644 ${B}/boot.scr ${DEPLOYDIR}/boot.scr
        install -m 0644 ${B}/rendered/boot.cmd ${DEPLOYDIR}/resin-boot.cmd
    else
        install -m 0644 ${B}/rendered/EFI/BOOT/grub.cfg ${DEPLOYDIR}/resin-grub.cfg
    fi
}
addtask deploy after do_compile before do_build

ALLOW_EMPTY:${PN} = "1"
