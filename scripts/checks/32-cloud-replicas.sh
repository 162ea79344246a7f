#!/usr/bin/env bash
# Two resin-cloud replicas on one PostgreSQL database behind nginx (its own
# config on loopback ports, never the system service), as a deployment with
# a load balancer runs them:
# - a change made through replica A reaches a device polling through
#   replica B within one poll (LISTEN/NOTIFY invalidates B's cache), and
#   every poll through the round-robin balancer sees it;
# - log lines posted to A stream live from a follower on B;
# - with both replicas' rollout evaluators running, a rollout started
#   through one replica completes, and its completing step is taken by
#   exactly one replica (one event, one replica's log).
# nginx routes a request with `X-Replica: a|b` to that replica, and any
# other request round-robin to both.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
cd "$RESIN_ROOT"
ensure_rust
command -v nginx >/dev/null || die "nginx is missing (nginx-light in RESIN_APT_PACKAGES)"
[ -n "${RESIN_TEST_PG_URL:-}" ] || die "RESIN_TEST_PG_URL is not set (scripts/services.sh)"

cargo build -q ${CI:+--locked} -p resin-cloud
BIN="$CARGO_TARGET_DIR/debug/resin-cloud"
WORK=$(mktemp -d)
chmod 755 "$WORK"
DB="resin_replicas_$$_$RANDOM"
DB_URL="${RESIN_TEST_PG_URL%/*}/$DB"
base=$((20000 + RANDOM % 20000))
PORT_A=$base PORT_B=$((base + 1)) PORT_LB=$((base + 2))
LB="http://127.0.0.1:$PORT_LB"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx/nginx.pid" ] && kill "$(cat "$WORK/nginx/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  psql -q "$RESIN_TEST_PG_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
psql -q "$RESIN_TEST_PG_URL" -c "CREATE DATABASE $DB" >/dev/null

json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

export RESIN_CLOUD_DATABASE_URL="$DB_URL" RESIN_CLOUD_PLAIN_HTTP=true RESIN_CLOUD_ROLLOUT_EVAL_MS=300
OUT=$("$BIN" --data-dir "$WORK/a" bootstrap --username check --fleet f --device-type qemuarm64)
KEY=$(printf '%s' "$OUT" | json '["api_key"]')
FLEET=$(printf '%s' "$OUT" | json '["fleet_id"]')

for r in a b; do
  port=$PORT_A; [ $r = b ] && port=$PORT_B
  "$BIN" --data-dir "$WORK/$r" --listen "127.0.0.1:$port" --public-url "$LB" serve >"$WORK/$r.log" 2>&1 &
  pids+=($!)
done

mkdir -p "$WORK/nginx/tmp"
cat >"$WORK/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/tmp;
  proxy_temp_path $WORK/nginx/tmp;
  fastcgi_temp_path $WORK/nginx/tmp;
  uwsgi_temp_path $WORK/nginx/tmp;
  scgi_temp_path $WORK/nginx/tmp;
  upstream both { server 127.0.0.1:$PORT_A; server 127.0.0.1:$PORT_B; keepalive 8; }
  upstream a { server 127.0.0.1:$PORT_A; }
  upstream b { server 127.0.0.1:$PORT_B; }
  map \$http_x_replica \$replica { a a; b b; default both; }
  server {
    listen 127.0.0.1:$PORT_LB;
    location / {
      proxy_pass http://\$replica;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_buffering off;
      proxy_read_timeout 60s;
      add_header X-Upstream \$upstream_addr always;
    }
  }
}
CONF
nginx -t -q -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" 2>"$WORK/nginx/test.log" || { cat "$WORK/nginx/test.log"; die "nginx config"; }
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf"
for r in a b; do
  wait_for curl -fsS -H "X-Replica: $r" "$LB/ping" || { cat "$WORK/$r.log" >&2; die "replica $r did not start behind nginx"; }
done
# Each replica caches only once it listens for the other's changes.
for r in a b; do
  wait_for grep -q "listening on resin_events" "$WORK/$r.log" || { cat "$WORK/$r.log" >&2; die "replica $r never listened"; }
done

auth=(-H "Authorization: Bearer $KEY" -H "Content-Type: application/json")
PROV=$(curl -fsS "${auth[@]}" -H "X-Replica: a" -d "{\"fleet\":$FLEET,\"name\":\"p\"}" "$LB/v1/provisioning_key" | json '["key"]')
UUID=$(python3 -c 'import uuid; print(uuid.uuid4().hex)')
REG=$(curl -fsS -H "Authorization: Bearer $PROV" -H "Content-Type: application/json" -H "X-Replica: a" \
  -d "{\"uuid\":\"$UUID\",\"deviceType\":\"qemuarm64\"}" "$LB/device/register")
DEV=$(printf '%s' "$REG" | json '["apiKey"]')
DEV_ID=$(printf '%s' "$REG" | json '["id"]')

# poll REPLICA [ETAG] -> prints "<status> <etag>"
poll() {
  local h=(-H "Authorization: Bearer $DEV")
  [ "$1" != lb ] && h+=(-H "X-Replica: $1")
  [ -n "${2:-}" ] && h+=(-H "If-None-Match: $2")
  curl -sS -o /dev/null -D "$WORK/h" -w '%{http_code}' "${h[@]}" "$LB/device/v3/$UUID/state"
  printf ' %s\n' "$(tr -d '\r' <"$WORK/h" | awk -F': ' 'tolower($1)=="etag"{print $2}')"
}

read -r code ETAG < <(poll b)
[ "$code" = 200 ] && [ -n "$ETAG" ] || die "first poll through B: $code"
read -r code _ < <(poll b "$ETAG")
[ "$code" = 304 ] || die "an unchanged target through B: expected 304, got $code"

# The change, through A; the very next poll through B sees it.
curl -fsS "${auth[@]}" -H "X-Replica: a" -o /dev/null \
  -d "{\"fleet\":$FLEET,\"name\":\"REPLICA_CHECK\",\"value\":\"1\"}" "$LB/v1/fleet_env_var"
sleep 0.5 # one notification hop; a device polls every 60 s by default
read -r code NEW < <(poll b "$ETAG")
[ "$code" = 200 ] && [ "$NEW" != "$ETAG" ] || die "a change through A did not reach a poll through B: $code $NEW"
curl -fsS -H "Authorization: Bearer $DEV" -H "X-Replica: b" "$LB/device/v3/$UUID/state" | grep -q REPLICA_CHECK \
  || die "B answered a target state without the new variable"
# Round robin: every poll, on either replica, has the new state.
for _ in 1 2 3 4; do
  read -r code _ < <(poll lb "$NEW")
  [ "$code" = 304 ] || die "a poll through the balancer did not have the new state: $code"
done

# Logs posted to A stream live from a follower on B.
curl -sS -N --max-time 20 "${auth[@]}" -H "X-Replica: b" \
  "$LB/v1/device($DEV_ID)/logs?follow=true" >"$WORK/follow" 2>/dev/null &
FOLLOW=$!
pids+=($FOLLOW)
sleep 1
curl -fsS -o /dev/null -H "Authorization: Bearer $DEV" -H "X-Replica: a" \
  --data-binary $'{"timestamp":1,"message":"posted-to-a"}\n' "$LB/device/v2/$UUID/log-stream"
wait_for grep -q posted-to-a "$WORK/follow" || { cat "$WORK/follow" "$WORK/b.log" >&2; die "a log line posted to A never streamed from B"; }
kill "$FOLLOW" 2>/dev/null || true

# A rollout with both replicas evaluating every 300 ms: created through A,
# started through B; the device (reporting through the balancer) runs the
# release; exactly one replica takes the completing step.
FLEET_UUID=$(curl -fsS "${auth[@]}" "$LB/v1/fleet($FLEET)" | json '["uuid"]')
REL_JSON=$(curl -fsS "${auth[@]}" -H "X-Replica: a" \
  -d "{\"fleet\":$FLEET,\"composition\":{\"services\":{\"main\":{\"image\":\"img\"}}}}" "$LB/v1/release")
REL=$(printf '%s' "$REL_JSON" | json '["id"]')
REL_UUID=$(printf '%s' "$REL_JSON" | json '["uuid"]')
RO=$(curl -fsS "${auth[@]}" -H "X-Replica: a" \
  -d "{\"fleet\":$FLEET,\"release\":$REL,\"waves\":[{\"percent\":100,\"soak_secs\":1,\"timeout_secs\":120}]}" \
  "$LB/v1/rollout" | json '["id"]')
curl -fsS "${auth[@]}" -H "X-Replica: b" -d '{}' -o /dev/null "$LB/v1/rollout($RO)/start"
curl -fsS -H "Authorization: Bearer $DEV" -H "X-Replica: b" "$LB/device/v3/$UUID/state" | grep -q "$REL_UUID" \
  || die "the device's target through B does not name the rollout's release"
curl -fsS -o /dev/null -X PATCH -H "Authorization: Bearer $DEV" -H "Content-Type: application/json" \
  -d "{\"$UUID\":{\"apps\":{\"$FLEET_UUID\":{\"release_uuid\":\"$REL_UUID\",\"services\":{\"main\":{\"status\":\"running\",\"release_uuid\":\"$REL_UUID\",\"image\":\"img\"}}}}}}" \
  "$LB/device/v3/state"
rollout_state() { curl -fsS "${auth[@]}" "$LB/v1/rollout($RO)/progress" | json '["state"]'; }
rollout_done() { [ "$(rollout_state)" = completed ]; }
wait_for rollout_done || die "the rollout did not complete: $(rollout_state)"
sleep 1 # a few more passes by both replicas: nothing more may happen
EVENTS=$(curl -fsS "${auth[@]}" "$LB/v1/rollout_event?%24filter=rollout%20eq%20$RO%20and%20to_state%20eq%20%27completed%27" \
  | json '["value"].__len__()')
[ "$EVENTS" = 1 ] || die "the rollout has $EVENTS completion events, not 1"
took=()
for r in a b; do
  n=$(grep "rollout transition" "$WORK/$r.log" | grep -c "completed" || true)
  [ "$n" -gt 0 ] && took+=("$r:$n")
done
[ "${#took[@]}" = 1 ] && [ "${took[0]#*:}" = 1 ] || die "the completing step was logged by: ${took[*]:-no replica}"
echo "32-cloud-replicas: ok (2 replicas on PostgreSQL behind nginx: a change via A reached the next poll via B; logs posted to A streamed from B; a rollout's completing step was taken once, by replica ${took[0]%%:*})"
