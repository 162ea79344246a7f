#!/usr/bin/env bash
# Checks of the Yocto layer meta-resin/ and the kas files kas/ (no bitbake, no network but PyPI):
#  1. RESIN_SRCREV (meta-resin/recipes-resin/resin-srcrev.inc), the commit the
#     release recipes build, is in this repository's history, and
#     resin-supervisor-crates.inc is in sync with that commit's Cargo.lock;
#  2. oelint-adv (--mode all) is clean over every .bb/.bbappend/.bbclass/.conf
#     of meta-resin (suppressions: meta-resin/.oelint.cfg, each with its reason);
#  3. the development RAUC keys sign a bundle that real `rauc` verifies
#     against the development keyring;
#  4. every kas file, and each machine file with the kas/dev.yml overlay, passes
#     kas's own schema validation (`kas dump`, offline: repo fetch and checkout
#     are skipped), and every remote repo is pinned to a commit on a branch;
#  5. resin-keys.bbclass's resin_check_rauc_keys (run with a stand-in datastore):
#     a production build refuses unset keys and the committed development keys;
#  6. the bundle's boot-partition hook (resin-bundle-hook) copies the new OS's
#     boot files into a stand-in boot partition and leaves the bootloader state;
#  7. one OS definition: the QEMU stand-in's resin-owned files are meta-resin's,
#     from its recipes' own install steps, plus the listed QEMU-only ones
#     (qemu-tests/scripts/os-drift.sh).
# Tools: kas 5.5 and oelint-adv 9.11 from PyPI, in a venv under ~/.cache/resin.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
cd "$RESIN_ROOT"

venv=${XDG_CACHE_HOME:-$HOME/.cache}/resin/meta-venv
if ! "$venv/bin/kas" --version 2>/dev/null | grep -q '^kas 5\.5' \
  || ! "$venv/bin/oelint-adv" --version 2>/dev/null | grep -q '^oelint-adv 9\.11'; then
  log "installing kas 5.5 and oelint-adv 9.11 into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'kas==5.5.*' 'oelint-adv==9.11.*'
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# 1. RESIN_SRCREV in this repository's history; crates.inc in sync with its Cargo.lock.
inc=meta-resin/recipes-resin/resin-supervisor/resin-supervisor-crates.inc
rev=$(sed -n 's/^RESIN_SRCREV = "\([0-9a-f]\{40\}\)"$/\1/p' meta-resin/recipes-resin/resin-srcrev.inc)
[ -n "$rev" ] || die "meta-resin/recipes-resin/resin-srcrev.inc: no 40-hex RESIN_SRCREV"
if git cat-file -e "$rev^{commit}" 2>/dev/null; then
  git merge-base --is-ancestor "$rev" HEAD || die "RESIN_SRCREV $rev is not an ancestor of HEAD"
  git show "$rev:Cargo.lock" >"$tmp/Cargo.lock"
  python3 meta-resin/scripts/gen-crates-inc.py --lock "$tmp/Cargo.lock" --output "$tmp/crates.inc"
  if ! diff -u "$inc" "$tmp/crates.inc" >"$tmp/crates.diff"; then
    head -40 "$tmp/crates.diff" >&2
    die "$inc does not match the Cargo.lock of RESIN_SRCREV $rev. Regenerate it with: meta-resin/scripts/gen-crates-inc.sh (then commit it)"
  fi
  log "meta-resin: RESIN_SRCREV ${rev:0:12} is in HEAD's history; $inc matches its Cargo.lock ($(grep -c '^SRC_URI += "crate://' "$inc") crates)"
elif [ "$(git rev-parse --is-shallow-repository)" = true ]; then
  log "meta-resin: RESIN_SRCREV ${rev:0:12} is not in this shallow clone: crates.inc not checked"
else
  die "RESIN_SRCREV $rev is not a commit of this repository"
fi

# 2. oelint-adv.
mapfile -t files < <(find meta-resin -name '*.bb' -o -name '*.bbappend' -o -name '*.bbclass' -o -name '*.conf' \
  | grep -v '/repart.d/' | sort)
if ! OELINT_CONFIG="$RESIN_ROOT/meta-resin/.oelint.cfg" "$venv/bin/oelint-adv" --quiet --mode all --jobs 2 "${files[@]}"; then
  die "oelint-adv found problems in meta-resin (fix them, or suppress with a reason in meta-resin/.oelint.cfg)"
fi
log "meta-resin: oelint-adv --mode all clean over ${#files[@]} files"

# 3. development keys: rauc signs and verifies a small plain bundle with them.
command -v rauc >/dev/null || die "rauc is not installed (scripts/test.sh installs it; or: apt-get install rauc)"
keys=meta-resin/recipes-core/rauc/files/dev-keys
mkdir -p "$tmp/bundle"
echo resin >"$tmp/bundle/rootfs.ext4"
printf '[update]\ncompatible=resin-qemuarm64\nversion=0\n[bundle]\nformat=plain\n[image.rootfs]\nfilename=rootfs.ext4\n' \
  >"$tmp/bundle/manifest.raucm"
rauc bundle --cert="$keys/development-1.cert.pem" --key="$keys/development-1.key.pem" \
  "$tmp/bundle" "$tmp/dev.raucb" >"$tmp/rauc.log" 2>&1 || { cat "$tmp/rauc.log" >&2; die "rauc cannot sign with $keys"; }
rauc info --keyring="$keys/ca.cert.pem" "$tmp/dev.raucb" >"$tmp/rauc.log" 2>&1 \
  || { cat "$tmp/rauc.log" >&2; die "rauc does not verify a bundle signed with $keys against its CA"; }
log "meta-resin: development RAUC keys sign and verify a bundle"

# 4. kas: schema validation of every file and overlay combination, offline.
combos=()
for f in kas/*.yml; do
  case $f in *.lock.yml) continue ;; esac
  combos+=("$f")
  case $f in kas/base.yml|kas/dev.yml) ;; *) combos+=("$f:kas/dev.yml") ;; esac
done
for c in "${combos[@]}"; do
  # --skip finish_setup_repos/repos_checkout: kas loads, merges and validates
  # the configuration but neither clones nor checks out the remote repos.
  if ! KAS_WORK_DIR="$tmp" "$venv/bin/kas" -l warning dump --format json \
      --skip finish_setup_repos --skip repos_checkout "$c" >"$tmp/dump.json" 2>"$tmp/kas.err"; then
    cat "$tmp/kas.err" >&2
    die "kas rejects $c"
  fi
  python3 - "$c" "$tmp/dump.json" <<'PY'
import json, re, sys
combo, path = sys.argv[1], sys.argv[2]
cfg = json.load(open(path))
over = cfg.get("overrides", {}).get("repos", {})
errors = []
for name, repo in (cfg.get("repos") or {}).items():
    repo = dict(repo or {})
    if not repo.get("url"):
        continue  # this repository
    repo.update({k: v for k, v in over.get(name, {}).items() if v is not None})
    if not re.fullmatch(r"[0-9a-f]{40}", str(repo.get("commit", ""))):
        errors.append(f"repo {name}: no pinned 40-hex commit")
    if not repo.get("branch"):
        errors.append(f"repo {name}: no branch (kas checks that the commit is on it)")
if errors:
    sys.exit(f"{combo}: " + "; ".join(errors))
PY
done
log "meta-resin: kas validates ${#combos[@]} configurations: ${combos[*]}"

# 5. The RAUC key policy of a build (the function bitbake runs before the tasks
#    that use the keys), with a stand-in for bitbake's datastore.
python3 - meta-resin/classes/resin-keys.bbclass "$keys" "$tmp" <<'PY'
import os, re, sys, textwrap
cls, devkeys, tmp = sys.argv[1], os.path.abspath(sys.argv[2]), sys.argv[3]
src = open(cls).read()
m = re.search(r"^python resin_check_rauc_keys\(\) \{\n(.*?)^\}", src, re.S | re.M)
if not m:
    sys.exit(f"{cls}: no python resin_check_rauc_keys()")
func = "def resin_check_rauc_keys(d):\n" + m.group(1)
class Fatal(Exception):
    pass
class BB:
    def __init__(self): self.warnings = []
    def fatal(self, msg): raise Fatal(msg)
    def warn(self, msg): self.warnings.append(msg)
class D(dict):
    def getVar(self, k): return self.get(k)
for name in ("ca.cert.pem", "signer.cert.pem", "signer.key.pem"):
    open(os.path.join(tmp, name), "w").write("x")
own = {"RESIN_RAUC_KEYRING_FILE": f"{tmp}/ca.cert.pem", "RESIN_RAUC_CERT_FILE": f"{tmp}/signer.cert.pem",
       "RESIN_RAUC_KEY_FILE": f"{tmp}/signer.key.pem"}
dev = {"RESIN_RAUC_KEYRING_FILE": f"{devkeys}/ca.cert.pem", "RESIN_RAUC_CERT_FILE": f"{devkeys}/development-1.cert.pem",
       "RESIN_RAUC_KEY_FILE": f"{devkeys}/development-1.key.pem"}
def run(vars):
    bb = BB()
    ns = {"bb": bb, "os": os}
    exec(func, ns)
    try:
        ns["resin_check_rauc_keys"](D(vars))
        return None, bb.warnings
    except Fatal as e:
        return str(e), bb.warnings
cases = [
    ("production, no keys", {"RESIN_DEVELOPMENT": "0"}, "resin-imagegen keys"),
    ("production, development keys", dict(dev, RESIN_DEVELOPMENT="0"), "refuses"),
    ("production, a missing key file", dict(own, RESIN_DEVELOPMENT="0", RESIN_RAUC_KEY_FILE=f"{tmp}/nope.pem"), "no such file"),
    ("production, own keys", dict(own, RESIN_DEVELOPMENT="0"), None),
    ("production, PKCS#11 key", dict(own, RESIN_DEVELOPMENT="0", RESIN_RAUC_KEY_FILE="pkcs11:token=x"), None),
    ("development, development keys", dict(dev, RESIN_DEVELOPMENT="1"), None),
]
for name, vars, want in cases:
    err, warns = run(vars)
    if want is None and err:
        sys.exit(f"resin_check_rauc_keys: {name}: refused: {err}")
    if want is not None and (not err or want not in err):
        sys.exit(f"resin_check_rauc_keys: {name}: expected a refusal mentioning {want!r}, got {err!r}")
    if name.startswith("development") and not warns:
        sys.exit(f"resin_check_rauc_keys: {name}: no warning about the development keys")
PY
log "meta-resin: the RAUC key policy refuses unset and development keys in a production build (6 cases)"

# 6. The boot-partition update hook, run as RAUC runs it after writing the slot.
hook=meta-resin/recipes-core/bundles/files/resin-bundle-hook
h=$tmp/hook
mkdir -p "$h/slot/usr/lib/resin-boot/EFI/BOOT" "$h/slot/usr/lib/resin-boot/overlays" "$h/boot/EFI/BOOT"
echo new-cfg >"$h/slot/usr/lib/resin-boot/EFI/BOOT/grub.cfg"
echo image-env >"$h/slot/usr/lib/resin-boot/EFI/BOOT/grubenv"
echo image-env >"$h/slot/usr/lib/resin-boot/uboot.env"
echo dtbo >"$h/slot/usr/lib/resin-boot/overlays/a.dtbo"
echo old-cfg >"$h/boot/EFI/BOOT/grub.cfg"
echo device-state >"$h/boot/EFI/BOOT/grubenv"
echo device-state >"$h/boot/uboot.env"
# Another slot class: nothing changes.
RESIN_BOOT_MOUNT=$h/boot RAUC_SLOT_CLASS=appfs RAUC_SLOT_MOUNT_POINT=$h/slot sh "$hook" slot-post-install 2>/dev/null
[ "$(cat "$h/boot/EFI/BOOT/grub.cfg")" = old-cfg ] || die "$hook changed resin-boot for a non-rootfs slot"
RESIN_BOOT_MOUNT=$h/boot RAUC_SLOT_CLASS=rootfs RAUC_SLOT_MOUNT_POINT=$h/slot sh "$hook" slot-post-install 2>"$h/log" \
  || { cat "$h/log" >&2; die "$hook failed"; }
[ "$(cat "$h/boot/EFI/BOOT/grub.cfg")" = new-cfg ] || die "$hook did not install the new grub.cfg"
[ "$(cat "$h/boot/overlays/a.dtbo" 2>/dev/null)" = dtbo ] || die "$hook did not install a new file in a new directory"
[ "$(cat "$h/boot/EFI/BOOT/grubenv")" = device-state ] && [ "$(cat "$h/boot/uboot.env")" = device-state ] \
  || die "$hook overwrote the bootloader state (grubenv / uboot.env)"
[ -z "$(find "$h/boot" -name '*.resin-new')" ] || die "$hook left a temp file in resin-boot"
log "meta-resin: the bundle hook updates resin-boot from the new rootfs and keeps the bootloader state"

# 7. One OS definition: no drift between meta-resin and the QEMU stand-in.
bash qemu-tests/scripts/os-drift.sh
