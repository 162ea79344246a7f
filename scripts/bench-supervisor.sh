#!/usr/bin/env bash
# Benchmarks of resin-supervisor (not tests): release binary size, idle RSS
# and CPU managing 5 containers next to dockerd's own RSS, and time from a
# new target state to all containers running for 1, 10 and 50 services
# (images already present). Uses the private dockerd of scripts/services.sh.
#   scripts/bench-supervisor.sh            # prints a Markdown table
#   BASELINE_REV=<commit> ROUNDS=3 scripts/bench-supervisor.sh
#       also builds the supervisor of <commit> (in its own worktree and
#       target dir under $BASELINE_DIR) and times both binaries on the same
#       targets, alternating, ROUNDS times each: medians and the ratio
#       (this tree ÷ baseline), so a loaded machine loads both alike.
#   SIZES="1 10" ...                        # only these service counts (1 10 50)
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
cd "$RESIN_ROOT"
ensure_rust
[ -f "$RESIN_RUN/env.sh" ] || die "run scripts/services.sh first"
. "$RESIN_RUN/env.sh"
export DOCKER_HOST=$RESIN_TEST_DOCKER_HOST

cargo build --release -p resin-supervisor >&2
BIN=${CARGO_TARGET_DIR:-target}/release/resin-supervisor
size=$(stat -c %s "$BIN")

W=$(mktemp -d); trap 'kill $SUP 2>/dev/null || true; [ -z "${APP:-}" ] || clean; rm -rf "$W"' EXIT
SUP=
# A busybox image, imported once.
IMG=resin-bench/busybox:latest
if ! docker image inspect $IMG >/dev/null 2>&1; then
  mkdir -p "$W/root/bin" "$W/root/tmp"; cp /bin/busybox "$W/root/bin/"
  for a in sh sleep echo; do ln -s busybox "$W/root/bin/$a"; done
  tar -C "$W/root" -cf "$W/bb.tar" . && docker import "$W/bb.tar" $IMG >/dev/null
fi
APP=$(cat /proc/sys/kernel/random/uuid | tr -d -); DEV=$(cat /proc/sys/kernel/random/uuid | tr -d -)
mkdir -p "$W/state"
echo "{\"uuid\":\"$DEV\",\"apiKey\":\"k\",\"id\":1}" > "$W/state/device.json"
echo "{\"apiEndpoint\":\"http://127.0.0.1:9\",\"fleetId\":1,\"fleetName\":\"b\",\"deviceType\":\"qemuarm64\",\"provisioningKey\":\"x\",\"pollIntervalMs\":60000}" > "$W/config.json"
printf 'VERSION_ID=bench\n' > "$W/os-release"

target() { # target N RELEASE
  python3 - "$1" "$2" "$APP" "$DEV" "$IMG" > "$W/state/target.json" <<'PY'
import json, sys
n, rel, app, dev, img = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
svc = {"image": img, "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 3600 & wait; done"]}
print(json.dumps({"etag": None, "target": {dev: {"name": "bench", "apps": {app: {"name": "bench",
  "releases": {rel: {"services": {f"s{i}": svc for i in range(n)}}}}}}}}))
PY
}
start_sup() { # [BIN]
  RESIN_SUPERVISOR_CONFIG_JSON=$W/config.json RESIN_SUPERVISOR_STATE_DIR=$W/state \
  RESIN_SUPERVISOR_DOCKER_HOST=$DOCKER_HOST RESIN_SUPERVISOR_LISTEN=127.0.0.1:0 \
  RESIN_SUPERVISOR_OS_RELEASE=$W/os-release RESIN_SUPERVISOR_DATA_PATH=$W \
  RESIN_SUPERVISOR_OS_UPDATES=false RESIN_SUPERVISOR_ONLY_APPS=$APP RESIN_SUPERVISOR_LOG=warn \
    "${1:-$BIN}" >"$W/sup.log" 2>&1 &
  SUP=$!
}
running() { docker ps -q --filter "label=io.resin.app-uuid=$APP" --filter status=running | wc -l; }
wait_running() { # N: seconds (ms precision) until N containers run
  local t0; t0=$(date +%s%N)
  while [ "$(running)" -lt "$1" ]; do sleep 0.05; done
  echo $(( ($(date +%s%N) - t0) / 1000000 ))
}
clean() { # the containers and the app's network (left behind, they used up the engine's address pools)
  docker ps -aq --filter "label=io.resin.app-uuid=$APP" | xargs -r docker rm -f >/dev/null
  docker network ls -q --filter "label=io.resin.app-uuid=$APP" | xargs -r docker network rm >/dev/null
}

echo "| measurement | value |"
echo "|---|---|"
echo "| release binary size (x86_64, stripped) | $(( size / 1024 )) KiB |"

time_run() { # time_run N BIN: ms from supervisor start to N containers running
  local ms
  clean; target "$1" "rel$1"; start_sup "$2"
  ms=$(wait_running "$1")
  # let the last round finish before the next run
  sleep 1; kill $SUP; wait $SUP 2>/dev/null || true
  echo "$ms"
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print (NR%2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }

if [ -z "${BASELINE_REV:-}" ]; then
  for n in ${SIZES:-1 10 50}; do
    echo "| target change → $n services running (images present) | $(time_run "$n" "$BIN") ms |"
  done
else
  rev=$(git rev-parse --short "$BASELINE_REV")
  base_dir=${BASELINE_DIR:-/var/tmp/resin-bench-baseline}/$rev
  [ -d "$base_dir/src" ] || git worktree add -q --detach "$base_dir/src" "$rev" >&2
  (cd "$base_dir/src" && CARGO_TARGET_DIR=$base_dir/target cargo build --release -p resin-supervisor >&2)
  BASE_BIN=$base_dir/target/release/resin-supervisor
  echo "| release binary size of $rev (x86_64, stripped) | $(( $(stat -c %s "$BASE_BIN") / 1024 )) KiB |"
  for n in ${SIZES:-1 10 50}; do
    new=() old=()
    for _ in $(seq "${ROUNDS:-3}"); do
      new+=("$(time_run "$n" "$BIN")"); old+=("$(time_run "$n" "$BASE_BIN")")
    done
    mn=$(median "${new[@]}"); mo=$(median "${old[@]}")
    echo "| target change → $n services running: this tree / $rev, median of ${ROUNDS:-3} alternating (ms: ${new[*]} / ${old[*]}) | $mn / $mo ms = $(awk -v a="$mn" -v b="$mo" 'BEGIN{printf "%.2f", a/b}')× |"
  done
fi

clean; target 5 rel5; start_sup; wait_running 5 >/dev/null; sleep 10
rss=$(awk '/VmRSS/{print $2}' /proc/$SUP/status)
t0=$(awk '{print $14+$15}' /proc/$SUP/stat); sleep 60; t1=$(awk '{print $14+$15}' /proc/$SUP/stat)
tck=$(getconf CLK_TCK)
dpid=$(cat "$RESIN_RUN/docker/docker.pid"); drss=$(awk '/VmRSS/{print $2}' /proc/$dpid/status)
echo "| supervisor idle RSS, 5 containers | $(( rss / 1024 )) MiB ($rss KiB) |"
echo "| supervisor CPU over 60 s idle | $(( t1 - t0 )) ticks of 1/$tck s |"
echo "| dockerd RSS in the same run | $(( drss / 1024 )) MiB |"
kill $SUP; wait $SUP 2>/dev/null || true; clean
