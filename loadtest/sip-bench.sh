#!/usr/bin/env bash
# SIP benchmark of a Dialtone node with the target-agnostic SIPp harness
# (its run-sip-bench.sh, in $DIALTONE_BENCH_DIR; described at the top of
# docs/performance.md), in the same way the Kamailio anchor figures were
# measured, so that the two can be compared in one run.
#
#   loadtest/sip-bench.sh [--users N] [--port P] [--out DIR] [--kamailio] [-- run-sip-bench.sh options]
#
# It builds the release binaries (if needed), starts a fresh node on
# 127.0.0.1:5070 (data in a temp dir, durable log as always; no per-source
# rate limit: SIPp sends everything from one address), provisions the
# users CSV through gRPC (dialtone-load provision-csv), runs the harness with
# the node's PID (CPU and memory per step), and stops the node. With
# --kamailio it then runs the Kamailio anchor (children=2, unpinned, the
# machine's core count) with the same options, for the ratio.
# Every SIPp run is bounded by the harness (-m, -timeout, coreutils timeout).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/node.sh"
bench=${DIALTONE_BENCH_DIR:?set DIALTONE_BENCH_DIR to the directory of the SIPp benchmark harness (docs/performance.md)}
users=10000; out=""; kamailio=0; port=5070
while [ $# -gt 0 ]; do
  case "$1" in
    --users) users=$2; shift 2;;
    --out) out=$2; shift 2;;
    --kamailio) kamailio=1; shift;;
    --port) port=$2; shift 2;;
    --) shift; break;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2;;
  esac
done
out=${out:-${TMPDIR:-/tmp}/sip-bench-results/dialtone-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"; out=$(cd "$out" && pwd)

command -v sipp >/dev/null || { echo "sipp missing: apt-get install -y sip-tester" >&2; exit 1; }
[ "${DIALTONE_BENCH_NO_BUILD:-0}" = 1 ] || (cd "$root" && cargo build --release -q -p dialtone-node -p dialtone-loadtest)
bin="$root/target/release"

data=$(mktemp -d "${TMPDIR:-/tmp}/dialtone-bench-XXXXXX")
grpc=127.0.0.1:50651
trap '[ -n "${node:-}" ] && { kill -TERM "$node" 2>/dev/null; wait "$node" 2>/dev/null; }; rm -rf "$data"' EXIT
start_node "$bin/dialtone" "$data" "$out" --grpc-addr "$grpc" --metrics-addr 127.0.0.1:9465 \
  --sip-addr 127.0.0.1:$port --sip-challenge-md5-first --sip-source-rate 0

"$bench/sipp/gen-users.sh" "$users" > "$out/users.csv"
{ "$bin/dialtone" --version; echo "node pid=$node data=$data"; nproc; lscpu | grep 'Model name'; } > "$out/dialtone-info.txt"
"$bench/run-sip-bench.sh" --target 127.0.0.1:$port --domain example.test --users "$out/users.csv" \
  --provision-cmd "$bin/dialtone-load --server http://$grpc provision-csv --domain \"\$DOMAIN\" --csv \"\$USERS_CSV\"" \
  --server-pids "$node" --out "$out" \
  --hook-cmd "curl -s http://127.0.0.1:9465/metrics > \"\$OUT/metrics-\$PHASE-\$TEST.txt\" || true" \
  "$@" | tee "$out/console.log"

if [ "$kamailio" = 1 ]; then
  kill -TERM $node; wait $node 2>/dev/null || true
  # The harness's provisioning hook writes to bench/run/kamailio.sqlite unless
  # told otherwise, while start-kamailio.sh serves the DB in its run
  # directory: without this every authenticated REGISTER gets a fresh 401.
  export KAMAILIO_DB=${KAMAILIO_DB:-${KAMAILIO_RUNDIR:-${TMPDIR:-/tmp}/kamailio-bench-run}/kamailio.sqlite}
  "$bench/kamailio/bench-kamailio.sh" --workers "$(nproc)" --kam-cpu none --sipp-cpus none \
    --users "$users" --port "$port" --out "$out/kamailio" -- "$@" | tee "$out/kamailio-console.log"
fi
echo "results in $out"
