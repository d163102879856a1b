#!/usr/bin/env bash
# REGISTER response time seen by the client (the target: p99 REGISTER
# response time under half the maximum load < 5 ms), with exact percentiles
# instead of SIPp's coarse repartition buckets.
#
#   loadtest/register-latency.sh [--rate R] [--seconds S] [--users N] [--port P] [--out DIR]
#
# Starts a fresh release node (durable log as always), provisions N users
# (default 10,000), registers them once, then runs SIPp's REGISTER-with-auth
# scenario (tests/sipp/register_auth.xml) at R registrations/s (default
# 8,000: half of the ~16,000/s measured maximum) for S seconds (default 20)
# with -trace_rtt: every response time is written down. Prints p50, p90,
# p99, p99.9 and max for
#   - challenge: the first REGISTER to its 401,
#   - authenticated: the REGISTER with credentials to its 200 (waits for the
#     fsynced event),
#   - every REGISTER: both together (what "REGISTER response time" means
#     per request),
# and the node's own summary (dialtone_sip_register_seconds, sub-millisecond),
# plus SIPp's success and failure counts. SIPp keeps time in whole
# milliseconds (and on this VM its clock advances in 4 ms steps), so its
# percentiles only bound the client's view; `dialtone-load register-latency`
# measures the same to the microsecond.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/node.sh"
rate=8000; seconds=20; users=10000; port=5780; out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) rate=$2; shift 2;;
    --seconds) seconds=$2; shift 2;;
    --users) users=$2; shift 2;;
    --port) port=$2; shift 2;;
    --out) out=$2; shift 2;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2;;
  esac
done
command -v sipp >/dev/null || { echo "sipp missing: apt-get install -y sip-tester" >&2; exit 1; }
out=${out:-${TMPDIR:-/tmp}/dialtone-reg-latency-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"; out=$(cd "$out" && pwd)
[ "${DIALTONE_BENCH_NO_BUILD:-0}" = 1 ] || (cd "$root" && cargo build --release -q -p dialtone-node -p dialtone-loadtest)
bin="$root/target/release"
data=$(mktemp -d "${TMPDIR:-/tmp}/dialtone-reg-latency-XXXXXX")
grpc=127.0.0.1:$((port + 10)); metrics=127.0.0.1:$((port + 11))
domain=example.test
trap '[ -n "${node:-}" ] && { kill -TERM "$node" 2>/dev/null; wait "$node" 2>/dev/null; }; rm -rf "$data"' EXIT
start_node "$bin/dialtone" "$data" "$out" --grpc-addr "$grpc" --metrics-addr "$metrics" \
  --sip-addr "127.0.0.1:$port" --sip-challenge-md5-first --sip-source-rate 0

users_csv "$users" "$out/users.csv"
"$bin/dialtone-load" --server "http://$grpc" provision-csv --domain "$domain" --csv "$out/users.csv" > "$out/provision.txt"

sipp_run() { # NAME RATE COUNT [more SIPp options]
  local name=$1 r=$2 n=$3; shift 3
  (cd "$out" && timeout -k 5 $((n / r + 60)) sipp "127.0.0.1:$port" -sf "$root/tests/sipp/register_auth.xml" \
    -inf "$out/users.csv" -key domain "$domain" -key contact_hostport "127.0.0.1:9" -key expires 3600 \
    -auth_uri "$domain" -i 127.0.0.1 -p $((port + 1)) -r "$r" -rp 1000 -m "$n" -nostdin \
    -buff_size 4194304 -timeout $((n / r + 50))s -recv_timeout 10000 -trace_stat -stf "$out/$name.stat.csv" \
    -fd 1 "$@" > "$out/$name.out" 2>&1) || true
}
# Everyone registered once first: the measured run refreshes bindings (the
# steady state of a registrar), each one a ContactRefreshed event.
sipp_run preregister 4000 "$users"

sleep 5
sipp_run measured "$rate" $((rate * seconds)) -trace_rtt -rtt_freq 1000
curl -s "http://$metrics/metrics" > "$out/metrics-after.txt" || true
grep '^dialtone_sip_register_seconds' "$out/metrics-after.txt" > "$out/server-after.txt" || true

stat_field() { awk -F';' -v col="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next } END { print $c }' "$1"; }
ok=$(stat_field "$out/measured.stat.csv" "SuccessfulCall(C)")
failed=$(stat_field "$out/measured.stat.csv" "FailedCall(C)")
retrans=$(stat_field "$out/measured.stat.csv" "Retransmissions(C)")
elapsed=$(stat_field "$out/measured.stat.csv" "ElapsedTime(C)")
rtt=$(ls "$out"/*_rtt.csv | head -1)

# -trace_rtt lines: date_ms;response_time_ms;rtd_no (header first). SIPp
# keeps time in whole milliseconds: "0" means under 1 ms, "4" 4.000-4.999 ms.
percentiles() { # label, rtd number or "all"
  awk -F';' -v want="$2" 'NR > 1 && (want == "all" || $3 == want) { print $2 }' "$rtt" | sort -g |
    awk -v label="$1" '{ v[NR] = $1 } END {
      if (NR == 0) { printf "%-14s no samples\n", label; exit }
      n = NR
      printf "%-14s n=%-8d p50 %d ms  p90 %d ms  p99 %d ms  p99.9 %d ms  max %d ms (whole ms, rounded down)\n", label, n,
        v[int(n * 0.50) + 1], v[int(n * 0.90) + 1], v[int(n * 0.99) + 1], v[int(n * 0.999) + 1], v[n]
    }'
}
{
  echo "register-latency: $(date -Is) rate=$rate/s seconds=$seconds users=$users host=$(nproc) CPUs, $(lscpu | awk -F: '/Model name/ { gsub(/^ +/, "", $2); print $2 }')"
  echo "sipp: registrations ok=$ok failed=$failed retransmissions=$retrans elapsed=$elapsed"
  percentiles "challenge" 1
  percentiles "authenticated" 2
  percentiles "every REGISTER" all
  # The node's own summary (a rolling window of recent REGISTERs, seconds).
  awk '/quantile=/ { q = $1; sub(/.*quantile="/, "", q); sub(/".*/, "", q); printf "node p%s %.3f ms  ", q * 100, $2 * 1000 }
    END { print "(dialtone_sip_register_seconds, every REGISTER, recent window)" }' "$out/server-after.txt"
} | tee "$out/summary.txt"
echo "results in $out"
