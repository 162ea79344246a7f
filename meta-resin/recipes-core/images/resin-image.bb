SUMMARY = "resin OS: the A/B device image running the resin supervisor and Docker"
DESCRIPTION = "Read-only rootfs with systemd, the Docker engine (docker-moby), \
               RAUC and the resin supervisor, laid out as a resin A/B disk image by \
               resin-imagegen. RESIN_DEVELOPMENT = \"1\" adds openssh and debug conveniences."
HOMEPAGE = "https://example.invalid/resin"
SECTION = "image"
LICENSE = "MIT"

inherit core-image resin-image

IMAGE_INSTALL = "\
    packagegroup-core-boot \
    kernel-image \
    docker-moby \
    rauc \
    resin-supervisor \
    resin-persist \
    resin-watchdog \
    ca-certificates \
    e2fsprogs-e2fsck \
    e2fsprogs-resize2fs \
    ${@'libubootenv-bin resin-bootfiles kernel-devicetree' if d.getVar('RESIN_BOOTLOADER') == 'uboot' else 'grub-editenv'} \
    ${CORE_IMAGE_EXTRA_INSTALL} \
"

# The qemu-tests harness waits for its boot marker on the console.
IMAGE_INSTALL:append:qemuarm64 = " resin-qemu-guest"

IMAGE_LINGUAS = ""
