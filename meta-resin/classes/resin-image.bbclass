# The resin A/B disk image: IMAGE_FSTYPES type "resinimg".
#
# resin-imagegen-native lays out the whole disk from the layout file of the
# resin repository (see resin-imagegen.bbclass): resin-boot (vfat ESP, filled
# from RESIN_BOOT_FILES plus the rendered grub.cfg/grubenv), resin-rootA (this
# image's ext4), an empty resin-rootB of the same size, resin-state and
# resin-data. It writes ${IMAGE_NAME}.resinimg, its block map (.resinimg.bmap)
# and a zstd-compressed copy (.resinimg.zst, what the cloud serves).
#
# Variables (defaults in conf/distro/include/resin-settings.inc):
# RESIN_BOOT_SIZE, RESIN_ROOTFS_SIZE, RESIN_STATE_SIZE, RESIN_DATA_MIN_SIZE
# (empty: the layout's sizes), RESIN_DEVELOPMENT ("0"); here:
# RESIN_BOOT_FILES, RESIN_BOOT_DEPENDS.

inherit resin-imagegen resin-keys

# Files of DEPLOY_DIR_IMAGE copied into resin-boot, as "SOURCE;DEST" (DEST
# relative to the partition's root; default: the source's name).
RESIN_BOOT_FILES ??= ""
RESIN_BOOT_FILES:qemuarm64 ??= "grub-efi-bootaa64.efi;EFI/BOOT/BOOTAA64.EFI"
# meta-raspberrypi's list (firmware, config.txt, device trees, u-boot.bin as
# the kernel the firmware starts, boot.scr from resin-bootfiles). U-Boot's
# environment is not a file here: it is the layout's resin-env partition.
RESIN_BOOT_FILES:rpi ??= "${IMAGE_BOOT_FILES}"
# Recipe tasks that deploy RESIN_BOOT_FILES.
RESIN_BOOT_DEPENDS ??= ""
RESIN_BOOT_DEPENDS:qemuarm64 ??= "grub-efi:do_deploy resin-bootfiles:do_deploy"
RESIN_BOOT_DEPENDS:rpi ??= "rpi-bootfiles:do_deploy u-boot:do_deploy resin-bootfiles:do_deploy virtual/kernel:do_deploy"

# Only the machines resin-machines.inc configures: any other MACHINE is refused
# at parse time ("incompatible with machine") instead of building a disk with
# no bootloader.
COMPATIBLE_MACHINE = "^(${@'|'.join(d.getVar('RESIN_SUPPORTED_MACHINES').split())})$"

# Explicit, not appended to the machine's list: the rootfs slot (ext4, which the
# bundle ships), the rootfs as a tarball (qemu-tests --rootfs) and the disk.
IMAGE_FSTYPES = "ext4 tar.zst resinimg"
IMAGE_TYPEDEP:resinimg = "ext4"
do_image_resinimg[depends] += "resin-imagegen-native:do_populate_sysroot ${RESIN_BOOT_DEPENDS}"

# The rootfs must fit its slot: resin-imagegen build refuses a rootfs larger
# than the layout's slot (no second size parser here).

# meta-rauc's rauc-mark-good marks every boot good before the supervisor's
# health check: never install it (see recipes-core/rauc/rauc_%.bbappend).
PACKAGE_EXCLUDE:append = " rauc-mark-good"
BAD_RECOMMENDATIONS:append = " rauc-mark-good"

# A read-only root; the persistent bits live on resin-state (resin-persist).
IMAGE_FEATURES:append = " read-only-rootfs"
IMAGE_FEATURES:append = " ${@'ssh-server-openssh allow-empty-password empty-root-password allow-root-login post-install-logging' if d.getVar('RESIN_DEVELOPMENT') == '1' else ''}"

# The GRUB entries and the U-Boot script load /boot/vmlinuz and
# /boot/initrd.img from the slot (the kernel is updated with the slot).
# The kernel has what it needs to mount the root built in, so initrd.img is an
# empty initramfs (a cpio trailer): the kernel finds no /init in it and mounts
# root= itself.
ROOTFS_POSTPROCESS_COMMAND:append = " resin_boot_links"
resin_boot_links[doc] = "Links /boot/vmlinuz to the kernel and adds an empty /boot/initrd.img"
resin_boot_links() {
    kimg=$(cd ${IMAGE_ROOTFS}/boot && ls ${KERNEL_IMAGETYPE}-* 2>/dev/null | head -n 1)
    [ -n "$kimg" ] || bbfatal "no /boot/${KERNEL_IMAGETYPE}-* in the rootfs: add kernel-image to IMAGE_INSTALL"
    ln -sf "$kimg" ${IMAGE_ROOTFS}/boot/vmlinuz
    if [ ! -e ${IMAGE_ROOTFS}/boot/initrd.img ]; then
        (cd ${WORKDIR} && : | cpio -o -H newc --quiet > ${IMAGE_ROOTFS}/boot/initrd.img)
    fi
}

# U-Boot machines: the slot carries its kernel's device trees as
# /boot/dtb/<KERNEL_DEVICETREE entry> (e.g. broadcom/bcm2711-rpi-4-b.dtb, the
# name U-Boot's ${fdtfile} has), and boot.scr boots with them
# (resin-bootfiles' resin_slot_devicetree), so kernel and DTB never skew.
ROOTFS_POSTPROCESS_COMMAND:append = " resin_slot_dtbs"
resin_slot_dtbs[doc] = "Puts the kernel's device trees under /boot/dtb/ by their KERNEL_DEVICETREE names"
resin_slot_dtbs() {
    [ "${RESIN_BOOTLOADER}" = "uboot" ] || return 0
    found=0
    for dtb in ${KERNEL_DEVICETREE}; do
        case "$dtb" in *.dtb) ;; *) continue ;; esac
        # kernel-devicetree installs it flat, or by its full name with KERNEL_DTBVENDORED.
        f=${IMAGE_ROOTFS}/boot/$dtb
        [ -f "$f" ] || f=${IMAGE_ROOTFS}/boot/$(basename $dtb)
        [ -f "$f" ] || bbfatal "no /boot/$dtb in the rootfs: add kernel-devicetree to IMAGE_INSTALL"
        install -D -m 0644 "$f" ${IMAGE_ROOTFS}/boot/dtb/$dtb
        found=1
    done
    [ $found = 1 ] || bbfatal "KERNEL_DEVICETREE names no .dtb for the slot's /boot/dtb/"
}

do_image_resinimg[prefuncs] += "resin_check_rauc_keys"

# resin_copy_boot_files DIR: copies RESIN_BOOT_FILES from DEPLOY_DIR_IMAGE into DIR.
resin_copy_boot_files[doc] = "Copies RESIN_BOOT_FILES (SOURCE;DEST) from DEPLOY_DIR_IMAGE into a directory"
resin_copy_boot_files() {
    bootdir=$1
    rm -rf $bootdir
    mkdir -p $bootdir
    # Quoted first: the entries hold ';', which the shell must not see as a separator.
    boot_files="${RESIN_BOOT_FILES}"
    for entry in $boot_files; do
        src=${entry%%;*}
        dest=${entry#*;}
        [ "$dest" = "$entry" ] && dest=""
        found=0
        for f in ${DEPLOY_DIR_IMAGE}/$src; do
            [ -e "$f" ] || continue
            found=1
            case "$dest" in
            "") install -D -m 0644 "$f" "$bootdir/$(basename "$f")" ;;
            */) install -D -m 0644 "$f" "$bootdir/$dest$(basename "$f")" ;;
            *) install -D -m 0644 "$f" "$bootdir/$dest" ;;
            esac
        done
        [ $found = 1 ] || bbfatal "RESIN_BOOT_FILES: nothing in ${DEPLOY_DIR_IMAGE} matches $src"
    done
}

# The boot partition's files also go into the rootfs, under
# /usr/lib/resin-boot/, with the rendered grub.cfg (GRUB machines): an OS update
# installs them into resin-boot (the bundle's hook, resin-bundle-hook). The
# bootloader's state (grubenv, the U-Boot environments) is left out: it belongs
# to the device, not to the OS version.
ROOTFS_POSTPROCESS_COMMAND:append = " resin_boot_payload"
do_rootfs[depends] += "resin-imagegen-native:do_populate_sysroot ${RESIN_BOOT_DEPENDS}"
resin_boot_payload[doc] = "Installs the boot partition's files into /usr/lib/resin-boot for OS updates"
resin_boot_payload() {
    payload=${IMAGE_ROOTFS}${nonarch_libdir}/resin-boot
    resin_copy_boot_files $payload
    if [ "${RESIN_BOOTLOADER}" = "grub" ]; then
        resin_imagegen_render ${WORKDIR}/resin-boot-rendered
        install -D -m 0644 ${WORKDIR}/resin-boot-rendered/EFI/BOOT/grub.cfg $payload/EFI/BOOT/grub.cfg
    fi
}

IMAGE_CMD:resinimg[doc] = "Assembles the A/B disk image and its bmap with resin-imagegen"
IMAGE_CMD:resinimg() {
    bootdir=${WORKDIR}/resin-boot
    resin_copy_boot_files $bootdir

    out=${IMGDEPLOYDIR}/${IMAGE_NAME}.resinimg
    resin-imagegen build --layout ${RESIN_LAYOUT} ${RESIN_IMAGEGEN_SET} \
        --rootfs ${IMGDEPLOYDIR}/${IMAGE_NAME}.ext4 \
        --boot $bootdir \
        --output $out --bmap --compress zstd
}
