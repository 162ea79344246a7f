SUMMARY = "resin OS update: a RAUC bundle with the rootfs slot of resin-image"
DESCRIPTION = "Installs resin-image's ext4 into the inactive rootfs slot \
               (rootfs.0 or rootfs.1). Signed with RESIN_RAUC_CERT_FILE/RESIN_RAUC_KEY_FILE, \
               which a build must set (resin-keys.bbclass)."
HOMEPAGE = "https://example.invalid/resin"
SECTION = "base"
LICENSE = "MIT"

inherit bundle resin-keys

# Only the machines resin-machines.inc configures (as resin-image).
COMPATIBLE_MACHINE = "^(${@'|'.join(d.getVar('RESIN_SUPPORTED_MACHINES').split())})$"
do_bundle[prefuncs] += "resin_check_rauc_keys"

# Same compatible as the device's system.conf (rendered from the layout).
RAUC_BUNDLE_COMPATIBLE = "resin-${RESIN_DEVICE_TYPE}"
# The OS release version (resin-settings.inc), plus meta-rauc's build stamp
# (RAUC_BUNDLE_BUILD, the build's DATETIME) so two builds of one version differ.
RAUC_BUNDLE_VERSION = "${RESIN_OS_VERSION}"
RAUC_BUNDLE_DESCRIPTION = "resin OS ${RESIN_OS_VERSION} for ${MACHINE}"
RAUC_BUNDLE_FORMAT = "verity"

RAUC_BUNDLE_SLOTS = "rootfs"
RAUC_SLOT_rootfs = "resin-image"
RAUC_SLOT_rootfs[fstype] = "ext4"

# The boot partition is updated from the new rootfs's /usr/lib/resin-boot/ after
# the slot is written (docs/yocto.md, "Boot partition updates").
SRC_URI += "file://resin-bundle-hook"
RAUC_BUNDLE_HOOKS[file] = "resin-bundle-hook"
RAUC_SLOT_rootfs[hooks] = "post-install"

RAUC_KEY_FILE = "${RESIN_RAUC_KEY_FILE}"
RAUC_CERT_FILE = "${RESIN_RAUC_CERT_FILE}"
RAUC_KEYRING_FILE = "${RESIN_RAUC_KEYRING_FILE}"
