#!/usr/bin/env bash
# Runs every test of resin on this machine, installing and starting what the
# tests need first (Debian packages, binfmt, private dockerd, PostgreSQL,
# registry). Exits non-zero on the first failure. Ends with a table of each
# stage's time (also when a stage fails).
#
#   scripts/test.sh           # everything
#   scripts/test.sh --quick   # skip the checks in scripts/checks/ marked slow
#
# Caches live outside the clone: the cargo target dir under
# /var/cache/resin-cargo (keyed by the toolchain and Cargo.lock), the arm64
# rootfs, kernel and cross build under /var/cache/resin-qemu and
# /var/cache/resin-cargo, the fresh-root tarball under /var/cache/resin-fresh,
# bitbake's under /var/cache/resin-bitbake (see docs/ci.md).
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
cd "$RESIN_ROOT"
QUICK=0; [ "${1:-}" = "--quick" ] && QUICK=1

mkdir -p "$RESIN_RUN"
export RESIN_STAGES=$RESIN_RUN/stages.tsv
: >"$RESIN_STAGES"
RESIN_ON_EXIT='stage_table >&2'

# Disk space, for the record: a full run from a fresh clone used about 13 GB
# at its peak (see the README), most of it the cargo target dir and one QEMU
# run's work dir, which refuses to start below RESIN_QEMU_MIN_FREE_GIB.
log "free space: $(df -h --output=avail "$RESIN_ROOT" | tail -1 | tr -d ' ') beside the clone, $(df -h --output=avail /var/tmp | tail -1 | tr -d ' ') in /var/tmp"

stage "apt: Debian packages"
install_packages
ensure_rust
ensure_binfmt
rustup component add rustfmt clippy >/dev/null 2>&1 || true
log "cargo target dir: $CARGO_TARGET_DIR"

stage "services: PostgreSQL, dockerd, registry"
start_postgres
start_dockerd
start_registry
write_env

stage "cargo fmt --check"
cargo fmt --all -- --check

stage "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

stage "cargo test"
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$RESIN_RUN/cargo-test.log"

# Each part adds its own checks as scripts/checks/NN-name.sh (oelint, kas,
# fuzz, QEMU scenarios…). A check whose first lines contain "# slow" is
# skipped by --quick. A check may time its own steps with `stage`; they
# appear nested under it in the table.
for c in scripts/checks/*.sh; do
  [ -e "$c" ] || continue
  if [ $QUICK = 1 ] && head -5 "$c" | grep -q '^# slow'; then log "skip $c (--quick)"; continue; fi
  stage "check $(basename "$c" .sh)"
  RESIN_STAGE_DEPTH=1 bash "$c"
done

stage_end
log "all tests passed"
