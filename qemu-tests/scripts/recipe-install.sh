#!/usr/bin/env bash
# Runs meta-resin's own install steps into a directory, outside bitbake: the
# one definition of every resin-owned file of the OS (units, scripts, configs,
# docker's daemon.json, containerd's config, RAUC's system.conf, the boot
# payload). The QEMU stand-in (assets.sh device-rootfs) composes its rootfs with
# this, and scripts/checks/70-meta-resin.sh compares the result with the
# stand-in's rootfs (no drift between the two OS definitions).
#
#   recipe-install.sh DESTDIR ENTRY...
#
# ENTRY is a recipe or bbappend under meta-resin/ (its do_compile and
# do_install shell functions run, base first then :append, with the overrides
# the qemuarm64 resin build has active: resin, qemuarm64), or CLASS#FUNC (the
# shell function FUNC of meta-resin/classes/CLASS, e.g. the image's boot
# payload, resin-image.bbclass#resin_boot_payload).
#
# Bitbake's variables get a merged-/usr Debian layout (what both OSes use):
# sysconfdir=/etc, libexecdir=/usr/libexec, systemd_system_unitdir=
# /usr/lib/systemd/system ... The recipe's own single-line assignments of S and
# RESIN_* (and of the distro's resin-settings.inc) are evaluated as bitbake
# would. The native tools are stood in for:
#   resin-imagegen render / resin_imagegen_render  copy RESIN_QEMU_RENDERED
#                                                  (a `resin-imagegen render` output dir)
#   resin-imagegen render-repart                   copy RESIN_QEMU_RENDERED/repart.d
#                                                  (its `render-repart` output)
#   RESIN_RAUC_KEYRING_FILE                        RESIN_QEMU_KEYRING
#   DEPLOY_DIR_IMAGE                               RESIN_QEMU_DEPLOY (boot files)
# A recipe fetched with git (S = ${UNPACKDIR}/resin) sees this working tree.
# SYSTEMD_SERVICE units are enabled as systemd.bbclass does, from their
# [Install] WantedBy=/RequiredBy=.
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib/common.sh"

dest=${1:?usage: recipe-install.sh DESTDIR ENTRY...}
shift
# The directories a base recipe's do_install has made before a bbappend's
# :append runs (base-files' /etc, ...), as in both rootfs.
mkdir -p "$dest"/{etc,usr/bin,usr/sbin,usr/lib,usr/libexec,usr/share,var}
dest=$(cd "$dest" && pwd)
layer=$RESIN_ROOT/meta-resin

# The shell function NAME's body from FILE (a bitbake function: "NAME() {" to
# the first "}" in column 0).
fn_body() {
  awk -v n="$2() {" '$0 == n { on = 1; next } on && /^}/ { on = 0; next } on { print }' "$1"
}

# Expands ${NAME} in stdin as bitbake expands a shell function's body at
# parse time (also inside quotes): NAME is one of the variables in FILE
# (NAME=VALUE, NAME="VALUE" or NAME='VALUE' lines, later ones win, values expanded in turn);
# any other ${...} is left to the shell.
bb_expand() {
  python3 -c '
import re, sys
v = {}
for line in open(sys.argv[1]):
    m = re.match(r"""^([A-Za-z_][A-Za-z0-9_]*)=(["\x27]?)(.*)\2$""", line.rstrip("\n"))
    if m:
        v[m.group(1)] = m.group(3)
def ex(t, depth=0):
    if depth > 10:
        return t
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: ex(v[m.group(1)], depth + 1) if m.group(1) in v else m.group(0), t)
sys.stdout.write(ex(sys.stdin.read()))
' "$1"
}

# Single-line assignments of S and RESIN_* (plain, or with an active override)
# from FILE, as shell assignments; ${@python} values are skipped.
assignments() {
  sed -n -E 's/^(S|RESIN_[A-Z0-9_]+)(:resin|:qemuarm64)? *(\?\?=|\?=|:=|=) *"([^"\\]*)"$/\1="\4"/p' "$1" \
    | grep -v '\${@' || true
}

# The files a recipe requires (require/include, relative to the layer).
requires() {
  sed -n -E 's/^(require|include) +(.*)$/\2/p' "$1" | while read -r r; do
    [ -f "$layer/$r" ] && echo "$layer/$r"
  done
}

# Shims for the native tools and bitbake's logging (defined in every task).
shims() {
  cat <<'SH'
bbfatal() { echo "recipe-install: $RI_ENTRY: $*" >&2; exit 1; }
bbwarn() { echo "recipe-install: $RI_ENTRY: warning: $*" >&2; }
bbnote() { :; }
resin_imagegen_render() {
  [ -n "${RESIN_QEMU_RENDERED:-}" ] || bbfatal "resin-imagegen render: RESIN_QEMU_RENDERED is not set"
  rm -rf "$1" && mkdir -p "$1" && cp -a "$RESIN_QEMU_RENDERED/." "$1/"
}
resin-imagegen() {
  local cmd=$1 out=""
  while [ $# -gt 0 ]; do case "$1" in --out|--output|--out-dir) out=$2 ;; esac; shift; done
  case "$cmd" in
  render) resin_imagegen_render "$out" ;;
  render-repart)
    [ -d "${RESIN_QEMU_RENDERED:-}/repart.d" ] || bbfatal "resin-imagegen render-repart: no repart.d in RESIN_QEMU_RENDERED"
    mkdir -p "$out" && cp -a "$RESIN_QEMU_RENDERED/repart.d/." "$out/" ;;
  *) bbfatal "resin-imagegen $cmd: only render and render-repart are stood in for" ;;
  esac
}
SH
}

run_entry() {
  local entry=$1 file func work task s body name
  work=$(mktemp -d)
  mkdir -p "$work/unpack" "$work/build" "$work/image-rootfs"
  {
    echo "set -e"
    echo "RI_ENTRY='$entry'"
    cat <<VARS
D='$dest'
IMAGE_ROOTFS='$dest'
WORKDIR='$work'
UNPACKDIR='$work/unpack'
B='$work/build'
S='$work/unpack'
prefix=/usr
exec_prefix=/usr
bindir=/usr/bin
sbindir=/usr/sbin
libdir=/usr/lib
libexecdir=/usr/libexec
nonarch_libdir=/usr/lib
datadir=/usr/share
sysconfdir=/etc
localstatedir=/var
systemd_unitdir=/usr/lib/systemd
systemd_system_unitdir=/usr/lib/systemd/system
MACHINE=qemuarm64
DEPLOY_DIR_IMAGE='${RESIN_QEMU_DEPLOY:-$work/deploy}'
VARS
    shims
    assignments "$layer/conf/distro/include/resin-settings.inc"
  } >"$work/env.sh"

  case "$entry" in
  *#*)
    file=$layer/classes/${entry%%#*}
    func=${entry#*#}
    [ -f "$file" ] || die "recipe-install: $file does not exist"
    # Every shell function of the class (FUNC may call the others), then the
    # class's variables, then the shims again (they stand in for the native tool).
    assignments "$file" >>"$work/env.sh"
    echo "RESIN_RAUC_KEYRING_FILE='${RESIN_QEMU_KEYRING:-}'" >>"$work/env.sh"
    sed -n -E 's/^([a-z_][a-z0-9_]*)\(\) \{$/\1/p' "$file" | while read -r name; do
      printf '%s() {\n' "$name"; fn_body "$file" "$name"; printf '}\n'
    done | bb_expand "$work/env.sh" >"$work/fns.sh"
    cat "$work/fns.sh" >>"$work/env.sh"
    shims >>"$work/env.sh"
    echo "$func" >>"$work/env.sh"
    ;;
  *)
    file=$layer/$entry
    [ -f "$file" ] || die "recipe-install: $file does not exist"
    for r in $(requires "$file"); do assignments "$r"; done >>"$work/env.sh"
    assignments "$file" >>"$work/env.sh"
    echo "RESIN_RAUC_KEYRING_FILE='${RESIN_QEMU_KEYRING:-}'" >>"$work/env.sh"
    # A git recipe unpacks the repository as ${UNPACKDIR}/resin; the local
    # files (SRC_URI file://, found in files/) are unpacked as bitbake does.
    ln -s "$RESIN_ROOT" "$work/unpack/resin"
    if [ -d "$(dirname "$file")/files" ]; then
      cp -a "$(dirname "$file")/files/." "$work/unpack/"
    fi
    for task in do_compile do_install; do
      grep -q "^$task\[noexec\] *= *\"1\"" "$file" && continue
      for s in "" ":append" ":append:resin" ":append:qemuarm64"; do
        body=$(fn_body "$file" "$task$s")
        [ -n "$body" ] || continue
        # Tasks run in ${B}, as bitbake's shell tasks do.
        printf '(cd "$B"\n%s\n)\n' "$body" | bb_expand "$work/env.sh" >>"$work/tasks.sh"
      done
    done
    # systemd.bbclass: enable SYSTEMD_SERVICE from the units' [Install].
    sed -n -E 's/^SYSTEMD_SERVICE:\$\{PN\} *\+?= *"(.*)"$/\1/p' "$file" | tr ' ' '\n' | sed '/^$/d' \
      >"$work/units"
    ;;
  esac
  cat "$work/tasks.sh" >>"$work/env.sh" 2>/dev/null || true
  bash "$work/env.sh" || { rm -rf "$work"; die "recipe-install: $entry failed"; }
  local unit path target
  while read -r unit; do
    path=$dest/usr/lib/systemd/system/$unit
    [ -f "$path" ] || { rm -rf "$work"; die "recipe-install: $entry: SYSTEMD_SERVICE $unit is not installed"; }
    sed -n -E 's/^(WantedBy|RequiredBy)=(.*)$/\1 \2/p' "$path" | while read -r kind target; do
      for t in $target; do
        [ "$kind" = WantedBy ] && w=wants || w=requires
        mkdir -p "$dest/etc/systemd/system/$t.$w"
        ln -sfn "/usr/lib/systemd/system/$unit" "$dest/etc/systemd/system/$t.$w/$unit"
      done
    done
  done < <(cat "$work/units" 2>/dev/null || true)
  rm -rf "$work"
}

for e in "$@"; do
  run_entry "$e"
done
