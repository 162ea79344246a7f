#!/usr/bin/env bash
# One OS definition: fails on any drift between the OS meta-resin builds and
# the QEMU stand-in (assets.sh), in the resin-owned files.
#  1. every recipe of meta-resin with a do_compile/do_install, and every
#     ROOTFS_POSTPROCESS_COMMAND step of resin-image.bbclass, is run by the
#     stand-in (assets.sh STANDIN_RECIPES) or listed, with its reason, in
#     NOT_IN_STANDIN;
#  2. meta-resin's side: every such recipe and step but the native tool
#     (resin-imagegen) run into a directory (recipe-install.sh); the stand-in's
#     side: `assets.sh os-layer`, the resin-owned part of its rootfs; both from
#     the same stand-in inputs (rendered files, keyring, GRUB);
#  3. every file or link of meta-resin's side is in the stand-in's with the
#     same content (or link target) and mode, and every file of the stand-in's
#     side that meta-resin does not install is listed in assets.sh QEMU_ONLY.
# Prints the unit files and config paths of both sides. No bitbake, no QEMU,
# a few seconds.
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib/common.sh"
cd "$RESIN_ROOT"
assets=qemu-tests/scripts/assets.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

mapfile -t standin < <(bash "$assets" standin-recipes)
mapfile -t not_in_standin < <(bash "$assets" not-in-standin)
mapfile -t qemu_only < <(bash "$assets" qemu-only)

# 1. The layer's recipes with an install step, and the image class's rootfs steps.
fail=0
mapfile -t recipes < <(cd meta-resin && grep -lE '^do_(compile|install)(:[a-z0-9_]+)*\(\) *\{' \
  $(find recipes-* -name '*.bb' -o -name '*.bbappend' | sort))
mapfile -t steps < <(sed -n -E 's/^ROOTFS_POSTPROCESS_COMMAND:append = " ([a-z_]+)"$/resin-image.bbclass#\1/p' \
  meta-resin/classes/resin-image.bbclass)
[ ${#steps[@]} -gt 0 ] || die "no ROOTFS_POSTPROCESS_COMMAND step found in resin-image.bbclass: the scan is broken"
for r in "${recipes[@]}" "${steps[@]}"; do
  in=0
  for s in "${standin[@]}" "${not_in_standin[@]}"; do [ "$s" = "$r" ] && in=1; done
  if [ $in = 0 ]; then
    echo "drift: meta-resin's $r installs files, but the stand-in does not run it (add it to STANDIN_RECIPES in $assets, or to NOT_IN_STANDIN with the reason)" >&2
    fail=1
  fi
done
# meta-resin's side: all of them but the native tool, which is not in the image.
image=()
for r in "${recipes[@]}" "${steps[@]}"; do
  case "$r" in recipes-resin/resin-imagegen/*|*#resin_boot_links) continue ;; esac
  image+=("$r")
done

# 2. The same inputs for both sides.
in=$tmp/in
mkdir -p "$in/rendered/etc/rauc" "$in/rendered/EFI/BOOT" "$in/deploy"
printf '[system]\ncompatible=resin-qemuarm64\nbootloader=grub\n' >"$in/rendered/etc/rauc/system.conf"
echo 'PARTLABEL=resin-state /mnt/state ext4 defaults 0 2' >"$in/rendered/etc/fstab"
echo 'menuentry "rendered"' >"$in/rendered/EFI/BOOT/grub.cfg"
mkdir -p "$in/rendered/repart.d"
printf '[Partition]\nType=esp\nLabel=resin-boot\n' >"$in/rendered/repart.d/10-boot.conf"
echo 'grub' >"$in/deploy/grub-efi-bootaa64.efi"
echo 'keyring' >"$in/keyring.pem"
echo 'supervisor' >"$in/resin-supervisor"
export RESIN_QEMU_RENDERED=$in/rendered RESIN_QEMU_KEYRING=$in/keyring.pem RESIN_QEMU_DEPLOY=$in/deploy \
  RESIN_QEMU_SUPERVISOR=$in/resin-supervisor
bash qemu-tests/scripts/recipe-install.sh "$tmp/meta" "${image[@]}"
bash "$assets" os-layer "$tmp/standin" 1.0.0 >/dev/null

# Files and links (not directories), with "mode content-hash" or "link target".
listing() {
  (cd "$1" && find . -mindepth 1 \( -type f -o -type l \) | sed 's|^\./||' | LC_ALL=C sort | while read -r f; do
    if [ -L "$f" ]; then echo "$f -> $(readlink "$f")"; else echo "$f $(stat -c %a "$f") $(sha256sum <"$f" | cut -c1-12)"; fi
  done)
}
listing "$tmp/meta" >"$tmp/meta.list"
listing "$tmp/standin" >"$tmp/standin.list"

is_qemu_only() {
  local p
  for p in "${qemu_only[@]}"; do
    # shellcheck disable=SC2053
    [[ $1 == $p ]] && return 0
  done
  return 1
}

# 3. meta-resin's files in the stand-in, the same; the stand-in's others listed.
while read -r line; do
  f=${line%% *}
  if ! grep -qxF "$line" "$tmp/standin.list"; then
    if grep -q "^$(printf '%s' "$f" | sed 's/[][\.*^$]/\\&/g') " "$tmp/standin.list"; then
      echo "drift: $f differs: meta-resin has [$line], the stand-in [$(grep "^$(printf '%s' "$f" | sed 's/[][\.*^$]/\\&/g') " "$tmp/standin.list")]" >&2
      diff -u "$tmp/meta/$f" "$tmp/standin/$f" >&2 || true
    else
      echo "drift: meta-resin installs $f, the stand-in does not" >&2
    fi
    fail=1
  fi
done <"$tmp/meta.list"
while read -r line; do
  f=${line%% *}
  if ! grep -q "^$(printf '%s' "$f" | sed 's/[][\.*^$]/\\&/g') " "$tmp/meta.list" && ! is_qemu_only "$f"; then
    echo "drift: the stand-in has $f, which meta-resin does not install (install it from a recipe, or list it in QEMU_ONLY in $assets with the reason)" >&2
    fail=1
  fi
done <"$tmp/standin.list"

units() { grep -E '^(usr/lib/systemd|etc/systemd|etc/|usr/lib/repart.d|usr/lib/resin-boot)' "$1" | cut -d' ' -f1 | tr '\n' ' '; }
echo "meta-resin (${#image[@]} recipes and steps): $(units "$tmp/meta.list")" >&2
echo "stand-in (meta-resin's plus QEMU_ONLY): $(units "$tmp/standin.list")" >&2
[ $fail = 0 ] || die "the QEMU stand-in and meta-resin define different OSes (above)"
log "one OS definition: the stand-in has meta-resin's $(wc -l <"$tmp/meta.list") files and links, the same, plus $(($(wc -l <"$tmp/standin.list") - $(wc -l <"$tmp/meta.list"))) listed in QEMU_ONLY"
