SUMMARY = "resin OS update: a RAUC bundle with the rootfs slot of resin-image"
DESCRIPTION = "Installs resin-image's ext4 into the inactive rootfs slot \
               (rootfs.0 or rootfs.1). Signed with RESIN_RAUC_CERT_FILE/RESIN_RAUC_KEY_FILE \
               (development keys by default)."
HOMEPAGE = "https://example.invalid/resin"
SECTION = "base"
LICENSE = "MIT"

inherit bundle

# Same compatible as the device's system.conf (rendered from the layout).
RAUC_BUNDLE_COMPATIBLE = "resin-${RESIN_DEVICE_TYPE}"
RAUC_BUNDLE_VERSION = "${DISTRO_VERSION}"
RAUC_BUNDLE_DESCRIPTION = "resin OS ${DISTRO_VERSION} for ${MACHINE}"
RAUC_BUNDLE_FORMAT = "verity"

RAUC_BUNDLE_SLOTS = "rootfs"
RAUC_SLOT_rootfs = "resin-image"
RAUC_SLOT_rootfs[fstype] = "ext4"

RAUC_KEY_FILE = "${RESIN_RAUC_KEY_FILE}"
RAUC_CERT_FILE = "${RESIN_RAUC_CERT_FILE}"
RAUC_KEYRING_FILE = "${RESIN_RAUC_KEYRING_FILE}"
