#!/usr/bin/env bash
# Node memory with N phones held over WSS against the same N over UDP (the
# target: 10,000 WSS-registered clients held open with keep-alives cost the
# node at most twice the RSS of the same number of UDP registrations).
#
#   loadtest/transport-memory.sh [--clients N] [--hold-secs S] [--keepalive-secs K]
#                                [--port P] [--out DIR]
#
# For UDP, then WSS, each on a FRESH release node started with the same
# options (both listeners on, the same self-signed ECDSA P-256 certificate)
# and the same N users provisioned (default 10,000), `dialtone-load
# hold-clients` registers N phones — one user, one UDP socket or one WSS
# connection each, digest MD5, Expires 600, RFC 5626 outbound contact — and
# holds them S seconds (default 60) with keep-alives every K seconds
# (default 25: STUN Binding requests on UDP, WebSocket Pings on WSS). It
# reads the node's VmRSS and VmHWM (/proc/PID/status):
#   baseline    N users provisioned, nothing registered,
#   registered  all N registered (2 s after the last 200),
#   held        at the end of the hold, before any phone closes.
# The summary gives each, the WSS/UDP ratio of the total RSS (the target:
# <= 2 at "held") and of the growth over the baseline (what the phones
# themselves cost). Every phone must stay registered and answered: a
# failed registration, a dropped connection or an unanswered keep-alive
# fails the run.
#
# Phones are spread over loopback source addresses 127.1.x.y (one per 200
# phones) as real phones come from many addresses, so the node's
# per-source limits (256 connections, 5,000 messages/s) stay at their
# defaults. The node-wide connection limit (10,000 by default) is raised
# to N + 1,000: the benchmark holds exactly N connections and a node
# meant for N connected phones is configured for them. The open-file
# limit is raised to its hard limit for the node and the client (each
# needs N + some descriptors; `ulimit -Hn` must allow it).
#
# Ports P..P+11 (default 6000): SIP UDP P, WSS P+2, gRPC P+10, metrics P+11.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/node.sh"
clients=10000; hold=60; keepalive=25; port=6000; out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --clients) clients=$2; shift 2;;
    --hold-secs) hold=$2; shift 2;;
    --keepalive-secs) keepalive=$2; shift 2;;
    --port) port=$2; shift 2;;
    --out) out=$2; shift 2;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2;;
  esac
done
out=${out:-${TMPDIR:-/tmp}/dialtone-transport-memory-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"; out=$(cd "$out" && pwd)
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge $((clients + 1000)) ] ||
  { echo "open-file limit $(ulimit -n) too low for $clients clients (raise ulimit -Hn)" >&2; exit 1; }
[ "${DIALTONE_BENCH_NO_BUILD:-0}" = 1 ] || (cd "$root" && cargo build --release -q -p dialtone-node -p dialtone-loadtest)
bin="${CARGO_TARGET_DIR:-$root/target}/release"
domain=example.test
grpc=127.0.0.1:$((port + 10)); metrics=127.0.0.1:$((port + 11))
sip=127.0.0.1:$port; wss=127.0.0.1:$((port + 2))

loopback_cert "$out/sip.pem" "$out/sip.key"
users_csv "$clients" "$out/users.csv"

data=""
trap '[ -n "${node:-}" ] && { kill -TERM "$node" 2>/dev/null; wait "$node" 2>/dev/null; }; [ -n "$data" ] && rm -rf "$data"' EXIT
for transport in udp wss; do
  data=$(mktemp -d "${TMPDIR:-/tmp}/dialtone-transport-memory-XXXXXX")
  mkdir -p "$out/$transport"
  start_node "$bin/dialtone" "$data" "$out/$transport" --grpc-addr "$grpc" --metrics-addr "$metrics" \
    --sip-addr "$sip" --sip-wss-addr "$wss" --sip-tls-cert "$out/sip.pem" --sip-tls-key "$out/sip.key" \
    --sip-max-connections $((clients + 1000))
  "$bin/dialtone-load" --server "http://$grpc" provision-csv --domain "$domain" --csv "$out/users.csv" \
    > "$out/$transport/provision.txt"
  [ "$transport" = udp ] && target=$sip || target=$wss
  status=0
  "$bin/dialtone-load" hold-clients --transport "$transport" --target "$target" --tls-ca "$out/sip.pem" \
    --domain "$domain" --csv "$out/users.csv" --clients "$clients" --hold-secs "$hold" \
    --keepalive-secs "$keepalive" --node-pid "$node" > "$out/$transport/hold.txt" 2> "$out/$transport/hold.err" || status=$?
  echo "$status" > "$out/$transport/status"
  curl -s "http://$metrics/metrics" > "$out/$transport/metrics.txt" || true
  kill -TERM "$node"; wait "$node" 2>/dev/null || true; node=""
  rm -rf "$data"; data=""
done

# node_rss phase=P vmrss_kib=R vmhwm_kib=H
field() { # transport phase key
  awk -v phase="phase=$2" -v key="$3=" '$1 == "node_rss" && $2 == phase {
    for (i = 3; i <= NF; i++) if (index($i, key) == 1) print substr($i, length(key) + 1) }' "$out/$1/hold.txt"
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
{
  echo "transport-memory: $(date -Is) clients=$clients hold=${hold}s keepalive=${keepalive}s host=$(nproc) CPUs, $(lscpu | awk -F: '/Model name/ { gsub(/^ +/, "", $2); print $2 }'), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
  for t in udp wss; do
    echo "$t: $(grep -h '^registered\|^held\|^result' "$out/$t/hold.txt" | tr '\n' ' ')(exit $(cat "$out/$t/status"))"
    for p in baseline registered held; do
      printf '  %-10s VmRSS %8s MiB  VmHWM %8s MiB\n' "$p" "$(mib "$(field $t $p vmrss_kib)")" "$(mib "$(field $t $p vmhwm_kib)")"
    done
  done
  for p in registered held; do
    u=$(field udp $p vmrss_kib); w=$(field wss $p vmrss_kib)
    ub=$(field udp baseline vmrss_kib); wb=$(field wss baseline vmrss_kib)
    echo "$p: WSS/UDP total RSS ratio $(ratio "$w" "$u") (target <= 2); growth over the baseline: UDP $(mib $((u - ub))) MiB, WSS $(mib $((w - wb))) MiB, ratio $(ratio $((w - wb)) $((u - ub))); WSS per connection beyond UDP $(awk -v a=$((w - wb - u + ub)) -v n="$clients" 'BEGIN { printf "%.1f", a / n }') KiB"
  done
  u=$(field udp held vmrss_kib); w=$(field wss held vmrss_kib)
  awk -v u="$u" -v w="$w" -v su="$(cat "$out/udp/status")" -v sw="$(cat "$out/wss/status")" 'BEGIN {
    ok = (u > 0 && w / u <= 2 && su == 0 && sw == 0)
    printf "result: %s (held WSS/UDP RSS %.2f, clients %s/%s)\n", ok ? "PASS" : "FAIL", (u > 0 ? w / u : 0), su == 0 ? "ok" : "FAILED", sw == 0 ? "ok" : "FAILED" }'
} | tee "$out/summary.txt"
echo "results in $out"
