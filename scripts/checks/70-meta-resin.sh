#!/usr/bin/env bash
# Checks of the Yocto layer meta-resin/ and the kas files kas/ (no bitbake, no network but PyPI):
#  1. resin-supervisor-crates.inc is in sync with Cargo.lock;
#  2. oelint-adv is clean over every .bb/.bbappend/.bbclass/.conf of meta-resin
#     (suppressions: meta-resin/.oelint.cfg, each with its reason);
#  3. the development RAUC keys sign a bundle that real `rauc` verifies
#     against the development keyring;
#  4. every kas file, and each machine file with the scarthgap overlay, passes
#     kas's own schema validation (`kas dump`, offline: repo fetch and checkout
#     are skipped), and every remote repo is pinned to a commit on a branch.
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

# 1. crates.inc in sync with Cargo.lock.
inc=meta-resin/recipes-resin/resin-supervisor/resin-supervisor-crates.inc
python3 meta-resin/scripts/gen-crates-inc.py --lock Cargo.lock --output "$tmp/crates.inc"
if ! diff -u "$inc" "$tmp/crates.inc" >"$tmp/crates.diff"; then
  head -40 "$tmp/crates.diff" >&2
  die "$inc is out of date with Cargo.lock. Regenerate it with: meta-resin/scripts/gen-crates-inc.sh (then commit it)"
fi
log "meta-resin: $inc matches Cargo.lock ($(grep -c '^SRC_URI += "crate://' "$inc") crates)"

# 2. oelint-adv.
mapfile -t files < <(find meta-resin -name '*.bb' -o -name '*.bbappend' -o -name '*.bbclass' -o -name '*.conf' \
  | grep -v '/repart.d/' | sort)
if ! OELINT_CONFIG="$RESIN_ROOT/meta-resin/.oelint.cfg" "$venv/bin/oelint-adv" --quiet --jobs 2 "${files[@]}"; then
  die "oelint-adv found problems in meta-resin (fix them, or suppress with a reason in meta-resin/.oelint.cfg)"
fi
log "meta-resin: oelint-adv clean over ${#files[@]} files"

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
  case $f in kas/base.yml|kas/scarthgap.yml) ;; *) combos+=("$f:kas/scarthgap.yml") ;; esac
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
    if "scarthgap.yml" in combo and name not in over:
        errors.append(f"repo {name}: kas/scarthgap.yml does not move it to scarthgap")
if errors:
    sys.exit(f"{combo}: " + "; ".join(errors))
PY
done
log "meta-resin: kas validates ${#combos[@]} configurations: ${combos[*]}"
