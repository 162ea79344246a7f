#!/usr/bin/env bash
# resin-cloud as a process: bootstrap prints {"user_id","api_key"}, serve
# answers on loopback, a device registers with a provisioning key and gets a
# 304 on an unchanged target state. (The Rust tests cover the API in depth.)
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
cd "$RESIN_ROOT"
ensure_rust
cloud_instance

json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

OUT=$("$BIN" bootstrap --username check --fleet f --device-type qemuarm64)
KEY=$(printf '%s' "$OUT" | json '["api_key"]')
FLEET=$(printf '%s' "$OUT" | json '["fleet_id"]')
printf '%s' "$OUT" | json '["user_id"]' >/dev/null

cloud_serve

auth=(-H "Authorization: Bearer $KEY" -H "Content-Type: application/json")
PROV=$(curl -fsS "${auth[@]}" -d "{\"fleet\":$FLEET,\"name\":\"check\"}" "$URL/v1/provisioning_key" | json '["key"]')
UUID=$(python3 -c 'import uuid; print(uuid.uuid4().hex)')
DEV=$(curl -fsS -H "Authorization: Bearer $PROV" -H "Content-Type: application/json" \
  -d "{\"uuid\":\"$UUID\",\"deviceType\":\"qemuarm64\"}" "$URL/device/register" | json '["apiKey"]')
ETAG=$(curl -fsS -o /dev/null -D - -H "Authorization: Bearer $DEV" "$URL/device/v3/$UUID/state" \
  | tr -d '\r' | awk -F': ' 'tolower($1)=="etag"{print $2}')
[ -n "$ETAG" ] || die "no ETag on the target state"
CODE=$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $DEV" -H "If-None-Match: $ETAG" \
  "$URL/device/v3/$UUID/state")
[ "$CODE" = 304 ] || die "expected 304 for an unchanged target state, got $CODE"
CODE=$(curl -sS -o /dev/null -w '%{http_code}' "${auth[@]}" "$URL/v1/fleet?\$filter=name%20eq")
[ "$CODE" = 400 ] || die "expected 400 for a malformed \$filter, got $CODE"
echo "30-cloud: ok (bootstrap, serve, register, ETag/304, 400 on bad query)"
