#!/usr/bin/env bash
# slow: builds cargo-fuzz (first run) and the fuzz target; fuzzing itself is bounded.
# Fuzzes resin-odata: arbitrary query strings go through parse_query and, when
# they parse, render_select/render_count for SQLite and PostgreSQL against a
# fixed schema (odata/fuzz/src/lib.rs). The oracle fails on any panic, on
# placeholders out of order, and on SQL that a real (bundled) SQLite rejects.
#
# Mode (ODATA_FUZZ_MODE, default auto):
#   libfuzzer  cargo-fuzz + libFuzzer on the nightly toolchain (what CI runs
#              when `rustup run nightly` works or `rustup toolchain install
#              nightly` succeeds; both did on the build machine, 2026-11-26);
#   stable     a seeded mutation loop over odata/fuzz/seeds.txt on the stable
#              toolchain (the fallback when nightly or cargo-fuzz cannot be had).
# Fuzzing time: ODATA_FUZZ_SECONDS (default 60; the run itself stays <= 90 s).
# Crashes are kept in odata/fuzz/artifacts/parse_query/ (libfuzzer mode).
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
ensure_rust
cd "$RESIN_ROOT/odata/fuzz"

SECS=${ODATA_FUZZ_SECONDS:-60}
MODE=${ODATA_FUZZ_MODE:-auto}

if [ "$MODE" = auto ]; then
  MODE=stable
  if rustup run nightly rustc --version >/dev/null 2>&1 \
     || timeout 300 rustup toolchain install nightly --profile minimal >/dev/null 2>&1; then
    if command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked; then
      MODE=libfuzzer
    else
      log "cargo-fuzz could not be installed: falling back to the stable loop"
    fi
  else
    log "no nightly toolchain: falling back to the stable loop"
  fi
fi

case "$MODE" in
  libfuzzer)
    corpus=corpus/parse_query
    mkdir -p "$corpus"
    i=0
    while IFS= read -r line; do
      [ -n "$line" ] && printf '%s' "$line" > "$corpus/seed-$i"
      i=$((i + 1))
    done < seeds.txt
    log "odata fuzz: libFuzzer for ${SECS}s"
    # Its own cache dir: nightly and sanitizer flags share nothing with the workspace's.
    CARGO_TARGET_DIR=$(ensure_cargo_target fuzz "rustup run nightly rustc")
    export CARGO_TARGET_DIR
    (cd .. && cargo +nightly fuzz build parse_query)
    (cd .. && timeout $((SECS + 60)) cargo +nightly fuzz run parse_query "fuzz/$corpus" -- \
      -max_total_time="$SECS" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    ;;
  stable)
    log "odata fuzz: stable mutation loop for ${SECS}s"
    cargo build --release --no-default-features --bin stable_loop
    timeout $((SECS + 30)) "$CARGO_TARGET_DIR/release/stable_loop" "$SECS"
    ;;
  *) die "ODATA_FUZZ_MODE must be auto, libfuzzer or stable" ;;
esac
