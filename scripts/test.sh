#!/usr/bin/env bash
# Runs every test of resin on this machine, installing and starting what the
# tests need first (Debian packages, binfmt, private dockerd, PostgreSQL,
# registry). Exits non-zero on the first failure.
#
#   scripts/test.sh           # everything
#   scripts/test.sh --quick   # skip the checks in scripts/checks/ marked slow
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
cd "$RESIN_ROOT"
QUICK=0; [ "${1:-}" = "--quick" ] && QUICK=1

t0=$(date +%s)
stage() { log "[$(( $(date +%s) - t0 ))s] $*"; }

# Disk space, for the record: a full run from a fresh clone used about 13 GB
# at its peak (see the README), most of it the cargo target dir and one QEMU
# run's work dir, which refuses to start below RESIN_QEMU_MIN_FREE_GIB.
stage "free space: $(df -h --output=avail "$RESIN_ROOT" | tail -1 | tr -d ' ') beside the clone, $(df -h --output=avail /var/tmp | tail -1 | tr -d ' ') in /var/tmp"

stage "installing packages"
install_packages
ensure_rust
ensure_binfmt
rustup component add rustfmt clippy >/dev/null 2>&1 || true

stage "starting services"
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
# skipped by --quick.
for c in scripts/checks/*.sh; do
  [ -e "$c" ] || continue
  if [ $QUICK = 1 ] && head -5 "$c" | grep -q '^# slow'; then stage "skip $c (--quick)"; continue; fi
  stage "check $c"
  bash "$c"
done

stage "all tests passed"
