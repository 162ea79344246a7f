#!/usr/bin/env bash
# OS-update checks beyond `cargo test`: no production build of the supervisor
# carries the crash-test failpoints, and the FSM diagram names every state
# of osupdate/src/state.rs. (The RAUC, download and crash tests themselves run
# in `cargo test -p resin-osupdate`.) Takes about a second.
set -euo pipefail
cd "$(dirname "$0")/../.."

for pkg in resin-supervisor; do
  tree=$(cargo tree -p "$pkg" -e normal,build,features --offline 2>&1) || {
    echo "cargo tree -p $pkg failed:"; echo "$tree"; exit 1; }
  if grep -q 'resin-osupdate feature "failpoints"' <<<"$tree"; then
    echo "FAIL: $pkg's normal build enables resin-osupdate's failpoints feature" >&2
    exit 1
  fi
done

states=$(sed -n '/^pub enum State {/,/^}/p' osupdate/src/state.rs \
  | grep -oE '^    [A-Z][A-Za-z]+' | tr -d ' ')
[ -n "$states" ] || { echo "FAIL: no states found in osupdate/src/state.rs" >&2; exit 1; }
for s in $states; do
  grep -q "label=\"$s" docs/images/osupdate-fsm.dot || {
    echo "FAIL: state $s is missing from docs/images/osupdate-fsm.dot" >&2; exit 1; }
  grep -qi "$s" docs/design/osupdate.md || {
    echo "FAIL: state $s is missing from docs/design/osupdate.md" >&2; exit 1; }
done
echo "osupdate checks ok ($(echo $states | wc -w) states documented, no failpoints in production builds)"
