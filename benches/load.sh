#!/usr/bin/env bash
# Load comparison on loopback: the gateway (full policy: JWT, scopes, strict body, two rate-limit
# decisions, durable audit with group commit) against nginx as a plain reverse proxy and HAProxy
# with its built-in jwt_verify, all in front of the same nginx origin, under the same wrk load
# (2 threads, 32 connections, connector PATCHes with a bearer token and a unique
# client-request-id). Prints median req/s, p50 and p99 per target over ROUNDS rounds and the ratios.
# A measurement, not a test: it exits non-zero only when setting up fails.
#
#   bash benches/load.sh            # ROUNDS=3 DURATION=10s by default
#   TARGETS=gateway:18084 FSYNC=off bash benches/load.sh   # one target; audit.fsync for diagnosis
#   PERF=/tmp/gw.data bash benches/load.sh   # also samples the gateway with perf (linux-perf)
#   LOAD=read TARGETS=gateway:18084 bash benches/load.sh   # GET /v1.0/users: proxying alone, no policy
#   GATEWAY_B=/tmp/old-build TARGETS="gateway:18084 gateway-b:18086" bash benches/load.sh   # A/B two builds
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

missing=()
for tool in wrk nginx haproxy openssl; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx haproxy openssl >/dev/null
fi
cargo build --release --quiet

# A test signing key, its JWKS, and a token for the gateway's audience.
TENANT=6b1d9e62-3c1a-4f7e-9a52-0c0ffee0c0de
ISS="https://issuer.test/$TENANT/v2.0"
openssl genrsa -out "$WORK/key.pem" 2048 2>/dev/null
openssl rsa -in "$WORK/key.pem" -pubout -out "$WORK/pub.pem" 2>/dev/null
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
N=$(openssl rsa -in "$WORK/key.pem" -noout -modulus | cut -d= -f2 | xxd -r -p | b64url)
printf '{"keys":[{"kty":"RSA","use":"sig","alg":"RS256","kid":"load","n":"%s","e":"AQAB"}]}' "$N" > "$WORK/jwks.json"
HEADER=$(printf '{"alg":"RS256","typ":"JWT","kid":"load"}' | b64url)
EXP=$(( $(date +%s) + 7200 ))
PAYLOAD=$(printf '{"aud":"api://connector-gateway","iss":"%s","tid":"%s","oid":"0a1b2c3d-0000-4000-8000-0000000000a1","azp":"c0ffee00-0000-4000-8000-000000000001","roles":["OnPremisesPublishingProfiles.ReadWrite.All"],"exp":%s}' "$ISS" "$TENANT" "$EXP" | b64url)
SIG=$(printf '%s.%s' "$HEADER" "$PAYLOAD" | openssl dgst -sha256 -sign "$WORK/key.pem" -binary | b64url)
TOKEN="$HEADER.$PAYLOAD.$SIG"
CONNECTOR=b4ad1e2c-5c8f-4f1a-9f3e-4a6f2a6c7a01
PATH_=/beta/onPremisesPublishingProfiles/applicationProxy/connectors/$CONNECTOR

# nginx: the origin (answers like Graph) and a plain reverse proxy in front of it.
cat > "$WORK/nginx.conf" <<NGINX
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  upstream origin { server 127.0.0.1:18081; keepalive 64; }
  server { listen 127.0.0.1:18081;
    location / { default_type application/json; return 200 '{"id":"$CONNECTOR","status":"inactive"}'; } }
  server { listen 127.0.0.1:18082;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
NGINX
nginx -c "$WORK/nginx.conf" -g 'daemon off;' & PIDS+=($!)

# HAProxy with its built-in JWT check.
cat > "$WORK/haproxy.cfg" <<HAPROXY
global
  nbthread 2
defaults
  mode http
  timeout connect 3s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend jwt
  bind 127.0.0.1:18083
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
  http-request deny unless { var(txn.alg) -m str RS256 }
  http-request deny unless { var(txn.bearer),jwt_verify(txn.alg,"$WORK/pub.pem") -m int 1 }
  default_backend origin
backend origin
  server o 127.0.0.1:18081
HAPROXY
haproxy -f "$WORK/haproxy.cfg" -q & PIDS+=($!)

# The gateway, full policy.
cat > "$WORK/gateway.toml" <<GATEWAY
[server]
listen = "127.0.0.1:18084"
[admin]
listen = "127.0.0.1:18085"
[upstream]
url = "http://127.0.0.1:18081"
[auth]
jwks_file = "jwks.json"
issuers = ["https://issuer.test/{tenantid}/v2.0"]
audiences = ["api://connector-gateway"]
[rate_limit]
per_principal = { rate = "1000000/s", burst = 1000000 }
per_connector = { rate = "1000000/s", burst = 1000000 }
[audit]
path = "audit.jsonl"
fsync = "${FSYNC:-batch}"
GATEWAY
RUST_LOG=warn ./target/release/connector-gateway serve --config "$WORK/gateway.toml" 2>"$WORK/gateway.log" & GATEWAY_PID=$!; PIDS+=($GATEWAY_PID)
# An A/B peer: another build of the gateway (GATEWAY_B=path/to/binary), same config, own port and trail.
if [ -n "${GATEWAY_B:-}" ]; then
  sed -e 's/18084/18086/' -e 's/18085/18087/' -e 's/audit.jsonl/audit-b.jsonl/' "$WORK/gateway.toml" > "$WORK/gateway-b.toml"
  RUST_LOG=warn "$GATEWAY_B" serve --config "$WORK/gateway-b.toml" 2>"$WORK/gateway-b.log" & PIDS+=($!)
fi

cat > "$WORK/patch.lua" <<LUA
local counter = 0
wrk.method = "PATCH"
wrk.body = '{"status":"inactive"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $TOKEN"
request = function()
  counter = counter + 1
  wrk.headers["client-request-id"] = string.format("load-%d-%d", math.random(1, 1000000000), counter)
  return wrk.format(nil, "$PATH_")
end
LUA
# The same load as a read of a non-connector path: what proxying alone costs, without the policy.
sed -e 's/wrk.method = "PATCH"/wrk.method = "GET"/' -e "s|$PATH_|/v1.0/users|" -e '/wrk.body/d' "$WORK/patch.lua" > "$WORK/read.lua"

for port in 18081 18082 18083 18084 ${GATEWAY_B:+18086}; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done
check=$(curl -s -o /dev/null -w '%{http_code}' -X PATCH -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d '{"status":"inactive"}' "http://127.0.0.1:18084$PATH_")
[ "$check" = 200 ] || { echo "gateway answered $check; see $WORK/gateway.log"; cat "$WORK/gateway.log"; exit 1; }
check=$(curl -s -o /dev/null -w '%{http_code}' -X PATCH -H "Authorization: Bearer $TOKEN" -d '{}' "http://127.0.0.1:18083$PATH_")
[ "$check" = 200 ] || { echo "haproxy answered $check"; exit 1; }

rss() { awk '/VmRSS/ {print $2}' "/proc/$GATEWAY_PID/status"; }
RSS_START=$(rss)
# Resident size every 10 s while the load runs, to show whether memory grows or plateaus.
( while kill -0 "$GATEWAY_PID" 2>/dev/null; do sleep 10; rss >> "$WORK/rss.log" || true; done ) & PIDS+=($!)
to_ms() { awk '{ v=$1; if (v ~ /us$/) { sub(/us/,"",v); print v/1000 } else if (v ~ /ms$/) { sub(/ms/,"",v); print v } else { sub(/s/,"",v); print v*1000 } }'; }
declare -A RPS P50 P99 ERR
for round in $(seq "$ROUNDS"); do
  for target in ${TARGETS:-nginx:18082 haproxy-jwt:18083 gateway:18084}; do
    name=${target%%:*}; port=${target##*:}
    if [ -n "${PERF:-}" ] && [ "$name" = gateway ]; then
      perf record -q -e cpu-clock -F 499 ${PERF_CALLGRAPH:--g} -p "$GATEWAY_PID" -o "$PERF" 2>/dev/null & PERF_PID=$!
    fi
    out=$(wrk -t2 -c32 -d"$DURATION" --latency -s "$WORK/${LOAD:-patch}.lua" "http://127.0.0.1:$port")
    if [ -n "${PERF_PID:-}" ]; then kill -INT "$PERF_PID"; wait "$PERF_PID" || true; PERF_PID=; fi
    RPS[$name]+="$(echo "$out" | awk '/Requests\/sec/ {print $2}') "
    P50[$name]+="$(echo "$out" | awk '$1=="50%" {print $2}' | to_ms) "
    P99[$name]+="$(echo "$out" | awk '$1=="99%" {print $2}' | to_ms) "
    ERR[$name]=$(( ${ERR[$name]:-0} + $(echo "$out" | awk '/Non-2xx/ {print $5}' | grep -E '^[0-9]+$' || echo 0) ))
  done
done
RSS_END=$(rss)

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "$(date -u +%Y-%m-%d) $(nproc) cores, $(uname -m); wrk -t2 -c32 -d$DURATION, $ROUNDS rounds, medians"
printf '%-12s %12s %10s %10s %10s\n' target req/s p50-ms p99-ms non-2xx
NAMES=$(for t in ${TARGETS:-nginx haproxy-jwt gateway}; do echo -n "${t%%:*} "; done)
for name in $NAMES; do
  printf '%-12s %12s %10s %10s %10s\n' "$name" "$(echo ${RPS[$name]} | median)" "$(echo ${P50[$name]} | median)" "$(echo ${P99[$name]} | median)" "${ERR[$name]}"
done
audit=$(curl -s http://127.0.0.1:18085/metrics | awk '/^gateway_audit_records_total/ {r=$2} /^gateway_audit_syncs_total/ {s=$2} END {if (s > 0) printf "%d records in %d syncs, %.1f per group commit", r, s, r/s}')
echo "gateway audit: $audit"
echo "gateway RSS: start ${RSS_START} KiB, end ${RSS_END} KiB; every 10 s: $(tr '\n' ' ' < "$WORK/rss.log" 2>/dev/null)"
[ "$NAMES" = "nginx haproxy-jwt gateway " ] || exit 0
g=$(echo ${RPS[gateway]} | median); n=$(echo ${RPS[nginx]} | median); h=$(echo ${RPS[haproxy-jwt]} | median)
gp=$(echo ${P99[gateway]} | median); np=$(echo ${P99[nginx]} | median)
echo "gateway/nginx throughput: $(awk -v a="$g" -v b="$n" 'BEGIN {printf "%.2f", a/b}')x; gateway/haproxy-jwt: $(awk -v a="$g" -v b="$h" 'BEGIN {printf "%.2f", a/b}')x; p99 gateway/nginx: $(awk -v a="$gp" -v b="$np" 'BEGIN {printf "%.2f", a/b}')x"
