#!/usr/bin/env bash
# How long a presence change takes to reach the subscribers of one user
# (the target: a NOTIFY fan-out to 1,000 subscribers of one user within
# 200 ms p99).
#
#   loadtest/notify-fanout.sh [--subscribers N] [--changes C] [--spacing-ms MS]
#                             [--transport udp|wss] [--port P] [--out DIR]
#
# Starts a fresh release node (SIP UDP, and WSS with a self-signed ECDSA
# P-256 certificate), provisions N+1 users (`dialtone-load provision-csv`),
# then runs `dialtone-load notify-fanout`: N phones (default 1,000; each
# its own user and its own UDP socket or WSS connection) subscribe to the
# presence of user000000 and answer every NOTIFY with 200; user000000's
# phone (UDP) then registers and unregisters in turn, C changes (default
# 20) SPACING apart (default 1,000 ms). For every (change, subscriber)
# pair the NOTIFY showing the new state (PIDF <basic> open/closed) is
# timed from the send of the REGISTER that caused the change, from that
# REGISTER's 200 OK, and (UDP) on the wire; see loadtest/src/fanout.rs and
# docs/performance.md for the definitions. Prints p50/p90/p99/max, the
# missing NOTIFYs (each one a failure) and PASS/FAIL against 200 ms p99
# from the send, with the node's own dialtone_sip_notify_fanout_seconds.
#
# Subscribers are spread over loopback source addresses 127.1.x.y (one
# per 25) as phones come from many addresses, so the node's per-source
# SUBSCRIBE limit (50/s, bursts of 200) and message rate stay at their
# defaults. Subscriptions are granted 600 s (the node's default maximum):
# C x SPACING must stay well under that.
#
# Ports P..P+11 (default 6100): SIP UDP P, WSS P+2, gRPC P+10, metrics P+11.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/node.sh"
subscribers=1000; changes=20; spacing=1000; transport=udp; port=6100; out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --subscribers) subscribers=$2; shift 2;;
    --changes) changes=$2; shift 2;;
    --spacing-ms) spacing=$2; shift 2;;
    --transport) transport=$2; shift 2;;
    --port) port=$2; shift 2;;
    --out) out=$2; shift 2;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2;;
  esac
done
case "$transport" in udp|wss) ;; *) echo "--transport udp or wss" >&2; exit 2;; esac
out=${out:-${TMPDIR:-/tmp}/dialtone-notify-fanout-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"; out=$(cd "$out" && pwd)
ulimit -n "$(ulimit -Hn)"
[ "${DIALTONE_BENCH_NO_BUILD:-0}" = 1 ] || (cd "$root" && cargo build --release -q -p dialtone-node -p dialtone-loadtest)
bin="${CARGO_TARGET_DIR:-$root/target}/release"
domain=example.test
grpc=127.0.0.1:$((port + 10)); metrics=127.0.0.1:$((port + 11))
sip=127.0.0.1:$port; wss=127.0.0.1:$((port + 2))

loopback_cert "$out/sip.pem" "$out/sip.key"
users_csv $((subscribers + 1)) "$out/users.csv"

data=$(mktemp -d "${TMPDIR:-/tmp}/dialtone-notify-fanout-XXXXXX")
trap '[ -n "${node:-}" ] && { kill -TERM "$node" 2>/dev/null; wait "$node" 2>/dev/null; }; rm -rf "$data"' EXIT
start_node "$bin/dialtone" "$data" "$out" --grpc-addr "$grpc" --metrics-addr "$metrics" \
  --sip-addr "$sip" --sip-wss-addr "$wss" --sip-tls-cert "$out/sip.pem" --sip-tls-key "$out/sip.key"
"$bin/dialtone-load" --server "http://$grpc" provision-csv --domain "$domain" --csv "$out/users.csv" > "$out/provision.txt"

status=0
"$bin/dialtone-load" notify-fanout --transport "$transport" --target "$sip" --wss-target "$wss" \
  --tls-ca "$out/sip.pem" --domain "$domain" --csv "$out/users.csv" --subscribers "$subscribers" \
  --changes "$changes" --spacing-ms "$spacing" > "$out/fanout.txt" 2> "$out/fanout.err" || status=$?
curl -s "http://$metrics/metrics" > "$out/metrics.txt" || true
{
  echo "notify-fanout: $(date -Is) transport=$transport subscribers=$subscribers changes=$changes spacing=${spacing}ms host=$(nproc) CPUs, $(lscpu | awk -F: '/Model name/ { gsub(/^ +/, "", $2); print $2 }')"
  grep -v '^notify-fanout:' "$out/fanout.txt" || true
  # The node's own view: the whole fan-out of each change (building and
  # handing every NOTIFY to the transport), a summary over recent changes.
  awk '/^dialtone_sip_notify_fanout_seconds/ && /quantile=/ { q = $1; sub(/.*quantile="/, "", q); sub(/".*/, "", q); printf "node p%s %.3f ms  ", q * 100, $2 * 1000 }
    /^dialtone_sip_notify_fanout_seconds_count/ { n = $2 }
    END { print "(dialtone_sip_notify_fanout_seconds over " n " fan-outs)" }' "$out/metrics.txt"
  echo "exit status $status"
} | tee "$out/summary.txt"
echo "results in $out"
exit "$status"
