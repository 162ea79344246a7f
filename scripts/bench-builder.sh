#!/usr/bin/env bash
# Benchmark of the builder (not a test): time from `git push` to the release's
# `success` for a two-service project (one RUN step under arm64 emulation),
# with a cold fleet cache and with a warm one, next to a plain
# `docker build --platform linux/arm64` of the same Dockerfiles with the same
# engine in the same run. The builder's overhead is the ratio.
# Uses the private dockerd and registry of scripts/services.sh.
#   scripts/bench-builder.sh [ROUNDS]      # prints a Markdown table (default 5 rounds)
# resin-cloud runs as a release build (CLOUD_PROFILE=debug for the debug one).
# The plain builds use Debian's /usr/bin/docker with the classic builder (the
# engine's builder the resin builder drives), once one after the other and
# once side by side (the resin builder builds a project's services at once).
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/base-image.sh"
cd "$RESIN_ROOT"
ensure_rust
[ -f "$RESIN_RUN/env.sh" ] || die "run scripts/services.sh first"
. "$RESIN_RUN/env.sh"
ROUNDS=${1:-5}
export CLOUD_PROFILE=${CLOUD_PROFILE:-release}
DOCKER=/usr/bin/docker
export DOCKER_BUILDKIT=0
export DOCKER_HOST=$RESIN_TEST_DOCKER_HOST
BASE=$(push_base_image "$RESIN_TEST_REGISTRY" "$DOCKER_HOST")
BASE=${BASE%@*}

cloud_instance
export RESIN_CLOUD_BUILDER_REGISTRY=$RESIN_TEST_REGISTRY RESIN_CLOUD_BUILDER_DOCKER_HOST=$DOCKER_HOST \
  RESIN_CLOUD_AUTH_FAILURES_PER_MIN=0
cloud_serve
KEY=$("$BIN" bootstrap --username bench --fleet "bench" | python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')
HOSTPORT=${URL#http://}

# The project: web runs a RUN step under emulation (a loop of 2000 shell
# iterations), worker copies files.
P=$WORK/project
mkdir -p "$P/web" "$P/worker"
cat >"$P/docker-compose.yml" <<EOF
services:
  web:
    build: ./web
  worker:
    build: ./worker
EOF
cat >"$P/web/Dockerfile" <<EOF
FROM $BASE
RUN i=0; while [ \$i -lt 2000 ]; do i=\$((i+1)); done; uname -m > /arch
CMD ["cat", "/arch"]
EOF
cat >"$P/worker/Dockerfile" <<EOF
FROM $BASE
COPY . /app
CMD ["ls", "/app"]
EOF
for i in $(seq 1 50); do echo "file $i" >"$P/worker/f$i.txt"; done
git -C "$P" init -q -b main
git -C "$P" -c user.name=b -c user.email=b@example.invalid add -A
git -C "$P" -c user.name=b -c user.email=b@example.invalid commit -q -m bench

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }

# A push with a new commit (an empty one: the tree, and so the cache key, stays;
# with CHANGED set, one of worker's files changed).
push() {
  local branch=$1
  git -C "$P" add -A
  git -C "$P" -c user.name=b -c user.email=b@example.invalid commit -q --allow-empty -m "round"
  GIT_TERMINAL_PROMPT=0 git -C "$P" push -q "http://bench:$KEY@$HOSTPORT/git/bench.git" "HEAD:$branch" \
    >"$WORK/push.log" 2>&1 || { cat "$WORK/push.log" >&2; die "git push failed"; }
}

plain() {
  local nocache=$1 tag=$2
  $DOCKER build -q $nocache --platform linux/arm64 -t "bench-plain/web:$tag" "$P/web" >/dev/null
  $DOCKER build -q $nocache --platform linux/arm64 -t "bench-plain/worker:$tag" "$P/worker" >/dev/null
}
# The same two builds side by side.
plain_par() {
  local nocache=$1 tag=$2 a b
  $DOCKER build -q $nocache --platform linux/arm64 -t "bench-plain/web:p$tag" "$P/web" >/dev/null & a=$!
  $DOCKER build -q $nocache --platform linux/arm64 -t "bench-plain/worker:p$tag" "$P/worker" >/dev/null & b=$!
  wait $a && wait $b
}

# One file of worker's context gets new content: its COPY layer and the steps
# after it are built again, from a warm cache.
change() { echo "round $1 $2" >"$P/worker/f1.txt"; }

declare -a COLD WARM PCOLD PWARM QCOLD QWARM CHG PCHG QCHG
for r in $(seq 1 "$ROUNDS"); do
  change "$r" push; t0=$(now); push main; t1=$(now); CHG+=("$(secs "$t0" "$t1")")
  change "$r" seq; t0=$(now); plain "" "c$r"; t1=$(now); PCHG+=("$(secs "$t0" "$t1")")
  change "$r" par; t0=$(now); plain_par "" "c$r"; t1=$(now); QCHG+=("$(secs "$t0" "$t1")")
  t0=$(now); push nocache; t1=$(now); COLD+=("$(secs "$t0" "$t1")")
  t0=$(now); push main; t1=$(now); WARM+=("$(secs "$t0" "$t1")")
  t0=$(now); plain --no-cache "r$r"; t1=$(now); PCOLD+=("$(secs "$t0" "$t1")")
  t0=$(now); plain "" "r$r"; t1=$(now); PWARM+=("$(secs "$t0" "$t1")")
  t0=$(now); plain_par --no-cache "r$r"; t1=$(now); QCOLD+=("$(secs "$t0" "$t1")")
  t0=$(now); plain_par "" "r$r"; t1=$(now); QWARM+=("$(secs "$t0" "$t1")")
done
$DOCKER images --format '{{.Repository}}:{{.Tag}}' | grep '^bench-plain/' | xargs -r $DOCKER rmi -f >/dev/null 2>&1 || true

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mc=$(median "${COLD[@]}"); mw=$(median "${WARM[@]}"); pc=$(median "${PCOLD[@]}"); pw=$(median "${PWARM[@]}")
qc=$(median "${QCOLD[@]}"); qw=$(median "${QWARM[@]}")
mg=$(median "${CHG[@]}"); pg=$(median "${PCHG[@]}"); qg=$(median "${QCHG[@]}")
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
echo "| case | git push → release success, s (median of $ROUNDS) | docker build one after the other, s | ratio | docker build side by side, s | ratio |"
echo "|---|---|---|---|---|---|"
echo "| cold (nocache) | $mc (${COLD[*]}) | $pc (${PCOLD[*]}) | $(ratio "$mc" "$pc") | $qc (${QCOLD[*]}) | $(ratio "$mc" "$qc") |"
echo "| warm cache | $mw (${WARM[*]}) | $pw (${PWARM[*]}) | $(ratio "$mw" "$pw") | $qw (${QWARM[*]}) | $(ratio "$mw" "$qw") |"
echo "| warm cache, one file changed | $mg (${CHG[*]}) | $pg (${PCHG[*]}) | $(ratio "$mg" "$pg") | $qg (${QCHG[*]}) | $(ratio "$mg" "$qg") |"
