#!/usr/bin/env bash
# slow: a cold run parses ~3200 recipes per machine (see docs/yocto.md, "CI times"); warm about 2 min.
# Real bitbake over meta-resin, against the layer snapshots in ../shared/yocto-layers/
# (the commits the kas files pin), offline (BB_NO_NETWORK = "1"), as an unprivileged user:
#  1. every snapshot's sha256 matches MANIFEST.txt, and every kas pin (kas/*.yml, with
#     each overlay) is a MANIFEST commit of that layer;
#  2. the snapshots are extracted once into a cache keyed by the pins
#     ($RESIN_BITBAKE_CACHE, default /var/cache/resin-bitbake/<pin-hash>/), where the
#     build dirs (parse cache, TMPDIR) also stay between runs;
#  3. bblayers.conf and local.conf come from `kas dump` of kas/<machine>.yml (the same
#     layers, local_conf_header, MACHINE and DISTRO kas would write), plus only the CI
#     paths and BB_NO_NETWORK;
#  4. per machine (qemuarm64, raspberrypi4-64): `bitbake -p` and
#     `bitbake -g resin-image resin-bundle`; any ERROR, or any WARNING naming meta-resin,
#     fails the check;
#  5. policy, on `bitbake -e` and the graph: DISTRO_FEATURES is exactly the distro's
#     declared RESIN_DISTRO_FEATURES; no x11/wayland recipe is built for the target;
#     rauc-mark-good is in resin-image's PACKAGE_EXCLUDE and BAD_RECOMMENDATIONS.
# Times (docs/yocto.md, "CI times"): warm about 2 minutes; cold (empty cache) one full
# parse per machine, 920 s measured on 2 cores shared with other builds; the run after a
# cold run still parses every recipe of the second machine (raspberrypi4-64) once more
# (open, narrowed down in docs/yocto.md, "CI times").
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
cd "$RESIN_ROOT"

snap=${RESIN_YOCTO_LAYERS:-$RESIN_ROOT/../shared/yocto-layers}
cache_root=${RESIN_BITBAKE_CACHE:-/var/cache/resin-bitbake}
bbuser=${RESIN_BITBAKE_USER:-resin-bb}
machines=(qemuarm64 raspberrypi4-64)
venv=${XDG_CACHE_HOME:-$HOME/.cache}/resin/meta-venv   # made by 70-meta-resin.sh
KAS=$venv/bin/kas
[ -x "$KAS" ] || die "kas not found at $KAS (scripts/checks/70-meta-resin.sh installs it)"
[ -f "$snap/MANIFEST.txt" ] || die "no layer snapshots at $snap (MANIFEST.txt missing)"
for t in chrpath diffstat gawk makeinfo zstd; do
  command -v "$t" >/dev/null || die "$t missing: bitbake's host tools are in RESIN_APT_PACKAGES (scripts/test.sh installs them)"
done

t0=$(date +%s)
step() { log "bitbake: [$(( $(date +%s) - t0 ))s] $*"; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# 1. sha256 of every snapshot, then the kas pins against the MANIFEST.
step "checking $(wc -l <"$snap/MANIFEST.txt") snapshots against MANIFEST.txt"
while read -r file _layer _branch _commit sum; do
  [ -n "$file" ] || continue
  got=$(sha256sum "$snap/$file" | cut -d' ' -f1)
  [ "$got" = "$sum" ] || die "$snap/$file: sha256 $got, MANIFEST.txt says $sum"
done <"$snap/MANIFEST.txt"

configs=()
for f in kas/*.yml; do
  case $f in kas/base.yml|kas/scarthgap.yml|kas/dev.yml|*.lock.yml) continue ;; esac
  configs+=("$f")
  [ -f kas/dev.yml ] && configs+=("$f:kas/dev.yml")
  [ -f kas/scarthgap.yml ] && configs+=("$f:kas/scarthgap.yml")
done
for c in "${configs[@]}"; do
  KAS_WORK_DIR="$tmp" "$KAS" -l warning dump --format json --skip finish_setup_repos --skip repos_checkout \
    "$c" >"$tmp/$(echo "$c" | tr '/:' '__').json" 2>"$tmp/kas.err" || { cat "$tmp/kas.err" >&2; die "kas rejects $c"; }
done
# Prints "name commit" for every pinned repo of each machine file (wrynose), after
# checking every pin of every combination against the MANIFEST.
python3 - "$snap/MANIFEST.txt" "$tmp" "${configs[@]}" >"$tmp/pins" <<'PY'
import json, sys
manifest, tmp, configs = sys.argv[1], sys.argv[2], sys.argv[3:]
known = {}
for line in open(manifest):
    parts = line.split()
    if len(parts) == 5:
        known.setdefault(parts[1], {})[parts[3]] = parts[0]
errors, pins = [], {}
for c in configs:
    cfg = json.load(open(f"{tmp}/{c.replace('/', '_').replace(':', '_')}.json"))
    over = cfg.get("overrides", {}).get("repos", {})
    for name, repo in (cfg.get("repos") or {}).items():
        repo = dict(repo or {})
        if not repo.get("url"):
            continue
        repo.update({k: v for k, v in over.get(name, {}).items() if v is not None})
        commit = repo.get("commit")
        if commit not in known.get(name, {}):
            errors.append(f"{c}: repo {name} pins {commit}, which MANIFEST.txt has no snapshot of "
                          f"(move the snapshot with the pin)")
        elif ":" not in c:
            pins[name] = commit
if errors:
    sys.exit("\n".join(errors))
for name in sorted(pins):
    print(name, pins[name], known[name][pins[name]])
PY
step "kas pins match MANIFEST.txt in ${#configs[@]} configurations"

# 2. The layers, extracted once per set of pins.
pinhash=$(cut -d' ' -f1,2 "$tmp/pins" | sha256sum | cut -c1-16)
top=$cache_root/$pinhash
mkdir -p "$cache_root"
if [ "$(id -u)" = 0 ]; then
  id "$bbuser" >/dev/null 2>&1 || useradd --system --create-home --home-dir "$cache_root/home" --shell /bin/bash "$bbuser"
  as_bb() { runuser -u "$bbuser" -- "$@"; }
  # oe-core's sanity check wants the en_US.UTF-8 locale.
  locale -a 2>/dev/null | grep -qix 'en_US.utf8' || localedef -i en_US -c -f UTF-8 en_US.UTF-8
else
  bbuser=$(id -un)   # not root: bitbake runs as the calling user
  as_bb() { "$@"; }
fi
mkdir -p "$top/layers"
while read -r name commit file; do
  d=$top/layers/$name
  if [ "$(cat "$d/.resin-commit" 2>/dev/null)" != "$commit" ]; then
    step "extracting $file"
    rm -rf "$d" "$d.new"
    mkdir -p "$d.new"
    zstd -dc "$snap/$file" | tar -x -C "$d.new" --strip-components=1
    echo "$commit" >"$d.new/.resin-commit"
    mv "$d.new" "$d"
  fi
done <"$tmp/pins"
# This repository's tracked files (meta-resin and the workspace its recipes fetch
# from), copied where the unprivileged user can read them.
rm -rf "$top/resin"
mkdir -p "$top/resin"
git ls-files -z --cached --others --exclude-standard | cpio -0pdm --quiet "$top/resin"
# Removes the caches of older pin sets (one set is kept: the current one).
for old in "$cache_root"/*/; do
  case $old in "$top/"|"$cache_root/home/") ;; *) [ -d "$old/layers" ] && rm -rf "$old" ;; esac
done
chown -R "$bbuser" "$top"
step "layers ready in $top"

# 3.-5. per machine. A warning is meta-resin's when it names the layer or one of
# its recipes (the cache path, which holds "resin-bitbake", does not count).
ours="meta-resin/|$(find meta-resin -name '*.bb' | sed 's|.*/||; s|\.bb$||' | sort | paste -sd'|' | sed 's/|/\\b|\\b/g; s/^/\\b/; s/$/\\b/')"
summary=()
for m in "${machines[@]}"; do
  b=$top/build-$m
  mkdir -p "$b/conf"
  python3 - "$tmp/kas_$m.yml.json" "$top" "$b" <<'PY'
import json, sys
cfg, top, build = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
layers = []
for name, repo in (cfg.get("repos") or {}).items():
    root = f"{top}/resin" if not (repo or {}).get("url") else f"{top}/layers/{name}"
    for layer, state in ((repo or {}).get("layers") or {".": None}).items():
        if state in ("disabled", "excluded"):
            continue
        layers.append(root if layer == "." else f"{root}/{layer}")
with open(f"{build}/conf/bblayers.conf", "w") as f:
    f.write('# Written by scripts/checks/75-bitbake.sh from `kas dump`.\nBBPATH = "${TOPDIR}"\nBBFILES ?= ""\n')
    f.write("BBLAYERS ?= \" \\\n" + "".join(f"    {l} \\\n" for l in layers) + '"\n')
with open(f"{build}/conf/local.conf", "w") as f:
    f.write("# Written by scripts/checks/75-bitbake.sh from `kas dump`.\n")
    for key, text in sorted((cfg.get("local_conf_header") or {}).items()):
        f.write(f"# kas local_conf_header: {key}\n{text}\n")
    f.write(f'MACHINE ??= "{cfg["machine"]}"\nDISTRO ??= "{cfg["distro"]}"\n')
    f.write("# CI only: no network, the build's state in the cache dir.\n"
            'BB_NO_NETWORK = "1"\nBB_NUMBER_THREADS = "2"\nBB_NUMBER_PARSE_THREADS = "2"\n'
            f'DL_DIR = "{top}/downloads"\nSSTATE_DIR = "{top}/sstate-cache"\nTMPDIR = "{build}/tmp"\n'
            'BB_DISKMON_DIRS = ""\nBB_HASHSERVE_DB_DIR = "${SSTATE_DIR}"\n')
PY
  # A cache dir that was moved or copied (e.g. a warm copy of /var/cache/resin-bitbake)
  # keeps the old TMPDIR in tmp/saved_tmpdir, and oe-core's sanity check then stops
  # with "TMPDIR has changed location". This check only parses and resolves graphs
  # (nothing in TMPDIR holds a path that matters), so the record is moved along.
  if [ -f "$b/tmp/saved_tmpdir" ] && [ "$(cat "$b/tmp/saved_tmpdir")" != "$b/tmp" ]; then
    log "bitbake: $m: the cache moved from $(dirname "$(cat "$b/tmp/saved_tmpdir")"): a cache that really moved parses every recipe again (its entries name the old paths)"
    echo "$b/tmp" >"$b/tmp/saved_tmpdir"
  fi
  chown -R "$bbuser" "$b"
  # bitbake in oe-core's build environment, as the unprivileged user, without root's env.
  # One resident bitbake server per machine (BB_SERVER_TIMEOUT) for -p, -g and -e:
  # the recipes are parsed once, in memory. Separate servers re-parsed every recipe
  # on a cold cache (the parse cache written by -p was not found by -g's new
  # server: a cold run cost two full parses per machine). Stopped with -m below.
  bb() {
    as_bb env -i BB_SERVER_TIMEOUT=300 HOME="$cache_root/home" PATH=/usr/local/bin:/usr/bin:/bin LANG=en_US.UTF-8 LC_ALL=en_US.UTF-8 \
      bash -c 'cd "$1/layers/openembedded-core" && BITBAKEDIR="$1/layers/bitbake" . ./oe-init-build-env "$2" >/dev/null && shift 2 && exec bitbake "$@"' \
      bb "$top" "$b" "$@"
  }
  check_log() { # LOG WHAT: fail on errors and on warnings that name meta-resin
    if grep -E '^(ERROR|FATAL):' "$1" >/dev/null; then
      grep -E -A3 '^(ERROR|FATAL):' "$1" | head -60 >&2; die "$m: $2 reported errors (log: $1)"
    fi
    if grep -E "^WARNING:.*($ours)" "$1" >/dev/null; then
      grep -E "^WARNING:.*($ours)" "$1" | head -20 >&2; die "$m: $2 warns about meta-resin (log: $1)"
    fi
  }

  step "$m: bitbake -p"
  bb -p >"$b/parse.log" 2>&1 || { tail -40 "$b/parse.log" >&2; die "$m: bitbake -p failed (log: $b/parse.log)"; }
  check_log "$b/parse.log" "bitbake -p"
  recipes=$(grep -oE 'Parsing of [0-9]+ \.bb files complete' "$b/parse.log" | grep -oE '[0-9]+' | tail -1)
  [ -n "$recipes" ] || recipes=$(grep -oE 'Loaded [0-9]+ entries from dependency cache' "$b/parse.log" | grep -oE '[0-9]+' | tail -1)

  step "$m: bitbake -g resin-image resin-bundle"
  rm -f "$b/task-depends.dot" "$b/pn-buildlist"
  (cd "$b" && bb -g resin-image resin-bundle) >"$b/graph.log" 2>&1 \
    || { tail -40 "$b/graph.log" >&2; die "$m: bitbake -g resin-image resin-bundle failed (log: $b/graph.log)"; }
  check_log "$b/graph.log" "bitbake -g"
  tasks=$(grep -cE '^"[^"]+" \[label=' "$b/task-depends.dot")
  pns=$(wc -l <"$b/pn-buildlist")

  # One -e only: after a cold parse, each further -e found no parse cache (the base
  # configuration hashed differently) and parsed every recipe again.
  step "$m: bitbake -e resin-image (policy)"
  bb -e resin-image >"$b/env-image.txt" 2>"$b/env.log" || { tail -20 "$b/env.log" >&2; die "$m: bitbake -e resin-image failed"; }
  python3 - "$m" "$b" <<'PY'
import re, sys
m, b = sys.argv[1], sys.argv[2]
def env(path):
    vals = {}
    for line in open(path, errors="replace"):
        mm = re.match(r'^(?:export )?([A-Za-z0-9_:${}.\-+/]+)="(.*)"$', line.rstrip("\n"))
        if mm:
            vals[mm.group(1)] = mm.group(2)
    return vals
img = env(f"{b}/env-image.txt")
errors = []
# DISTRO_FEATURES as declared (no back-filled or defaulted extras, nothing missing).
declared, got = set(img.get("RESIN_DISTRO_FEATURES", "").split()), set(img.get("DISTRO_FEATURES", "").split())
if not declared:
    errors.append("RESIN_DISTRO_FEATURES is not set (the distro's declared features)")
elif declared != got:
    errors.append(f"DISTRO_FEATURES differs from RESIN_DISTRO_FEATURES: extra {sorted(got - declared)}, "
                  f"missing {sorted(declared - got)}")
for feat in ("x11", "wayland", "opengl", "vulkan", "ptest"):
    if feat in got:
        errors.append(f"DISTRO_FEATURES has {feat}")
# No x11/wayland recipe built for the target.
graphical = re.compile(r"^(libx11|libxcb|libxau|libxdmcp|libxext|libxrender|libxfixes|libxi|libxrandr|"
                       r"libxdamage|libxshmfence|libxxf86vm|libxkbcommon|xkeyboard-config|xserver-.*|"
                       r"wayland|wayland-protocols|weston|libdrm|mesa|libepoxy|xorgproto)$")
pns = [l.strip() for l in open(f"{b}/pn-buildlist")]
bad = [p for p in pns if graphical.match(p)]
if bad:
    errors.append(f"x11/wayland/graphics recipes in the graph of resin-image resin-bundle: {bad}")
# rauc-mark-good can never be installed: PACKAGE_EXCLUDE makes do_rootfs fail if
# anything depends on it, BAD_RECOMMENDATIONS drops a recommendation of it (rauc's).
for var in ("PACKAGE_EXCLUDE", "BAD_RECOMMENDATIONS"):
    if "rauc-mark-good" not in img.get(var, "").split():
        errors.append(f"rauc-mark-good is not in resin-image's {var}")
if "rauc-mark-good" in img.get("IMAGE_INSTALL", "").split():
    errors.append("rauc-mark-good is in IMAGE_INSTALL")
if errors:
    sys.exit(f"{m}: policy: " + "; ".join(errors))
print(f"{m}: policy ok: DISTRO_FEATURES = {' '.join(sorted(got))}; no x11/wayland recipe among "
      f"{len(pns)}; rauc-mark-good excluded")
PY
  bb -m >/dev/null 2>&1 || true   # stops this machine's bitbake server
  summary+=("$m: $recipes recipes parsed, $tasks tasks / $pns recipes in the graph of resin-image resin-bundle, policy ok")
done

step "done"
for s in "${summary[@]}"; do log "bitbake: $s"; done
