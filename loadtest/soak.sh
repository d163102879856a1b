#!/usr/bin/env bash
# Soak run: registrations and calls together at fixed rates for a
# long time against a fresh release node, sampling its memory and live
# objects, then judging: RSS growth after warm-up < 5 %, no failed
# registrations or calls beyond SIPp's own retransmission noise, no leaked
# actors, transactions or dialogs once the load stops.
#
#   loadtest/soak.sh [--minutes M | --seconds S] [--reg-rate R] [--cps C] [--users N]
#                    [--port P] [--out DIR] [--node-bin PATH] [--load-bin PATH]
#                    [--max-growth-pct P] [--warm-up S] [--sample-secs S]
#
# Defaults: 10 minutes, 4,000 REGISTER/s and 800 calls/s together (about
# half of the node's measured capacity on the 2-core machine: each alone
# reaches ~16,000/s and ~3,300/s, docs/performance.md). Two user sets: N
# phones that only re-register (every REGISTER is a durable event), and N
# callers calling N callees registered at one SIPp UAS (every call step is
# a durable event in both users' streams). Every SIPp run is bounded by -m
# and -timeout. Prints one line per sample and a verdict; exit 1 when the
# verdict fails. `--minutes 1` is the short version.
#
# --node-bin / --load-bin: the `dialtone` and `dialtone-load` programs to
# run (default: target/release/, built first); a program given is not built.
# The test suite's short soak (tests/tests/soak_short.rs) runs debug builds
# this way, with --seconds and a --max-growth-pct (default 5) for debug RSS.
# --warm-up S: the RSS growth is measured from the first sample at or after
# S seconds (default: a third of the run); in a short run it must come after
# the ~34 s in which what the node keeps 32 s after it ends (completed
# transactions, ended dialogs) piles up to its steady level. --sample-secs S:
# seconds between samples (default 10).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/node.sh"
scen="$root/tests/sipp"
minutes=10; seconds=""; reg_rate=4000; cps=800; users=2000; port=5690; out=""
node_bin=""; load_bin=""; max_growth=5; warm_up=""; sample_secs=10
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=$2; shift 2;;
    --seconds) seconds=$2; shift 2;;
    --reg-rate) reg_rate=$2; shift 2;;
    --cps) cps=$2; shift 2;;
    --users) users=$2; shift 2;;
    --port) port=$2; shift 2;;
    --out) out=$2; shift 2;;
    --node-bin) node_bin=$2; shift 2;;
    --load-bin) load_bin=$2; shift 2;;
    --max-growth-pct) max_growth=$2; shift 2;;
    --warm-up) warm_up=$2; shift 2;;
    --sample-secs) sample_secs=$2; shift 2;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2;;
  esac
done
command -v sipp >/dev/null || { echo "sipp missing: apt-get install -y sip-tester" >&2; exit 1; }
out=${out:-${TMPDIR:-/tmp}/dialtone-soak-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"; out=$(cd "$out" && pwd)
# Build only the programs not given.
build=()
[ -n "$node_bin" ] || build+=(-p dialtone-node)
[ -n "$load_bin" ] || build+=(-p dialtone-loadtest)
if [ "${DIALTONE_BENCH_NO_BUILD:-0}" != 1 ] && [ ${#build[@]} -gt 0 ]; then
  (cd "$root" && cargo build --release -q "${build[@]}")
fi
node_bin=${node_bin:-$root/target/release/dialtone}
load_bin=${load_bin:-$root/target/release/dialtone-load}
for b in "$node_bin" "$load_bin"; do
  [ -x "$b" ] || { echo "$b: not an executable" >&2; exit 1; }
done
data=$(mktemp -d "${TMPDIR:-/tmp}/dialtone-soak-data-XXXXXX")
grpc=127.0.0.1:$((port + 10)); metrics=127.0.0.1:$((port + 11))
uas_port=$((port + 1)); reg_port=$((port + 2)); uac_port=$((port + 3)); pre_port=$((port + 4))
domain=soak.example
# The summary names the duration the way it was given.
if [ -n "$seconds" ]; then duration="seconds=$seconds"; else seconds=$((minutes * 60)); duration="minutes=$minutes"; fi
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  [ -n "${node:-}" ] && { kill -TERM "$node" 2>/dev/null; wait "$node" 2>/dev/null || true; }
  rm -rf "$data"
}
trap cleanup EXIT

start_node "$node_bin" "$data" "$out" --grpc-addr "$grpc" --metrics-addr "$metrics" \
  --sip-addr "127.0.0.1:$port" --sip-challenge-md5-first --sip-source-rate 0

# Users: phones (re-register only), callers and callees.
{ echo SEQUENTIAL; for i in $(seq 0 $((users - 1))); do printf 'phone%06d;pw%06dx\n' "$i" "$i"; done; } > "$out/phones.csv"
{ echo SEQUENTIAL; for i in $(seq 0 $((users - 1))); do printf 'caller%06d;pw%06dx;callee%06d\n' "$i" "$i" "$i"; done; } > "$out/callers.csv"
{ echo SEQUENTIAL; for i in $(seq 0 $((users - 1))); do printf 'callee%06d;pw%06dx\n' "$i" "$i"; done; } > "$out/callees.csv"
for csv in phones callers callees; do
  "$load_bin" --server "http://$grpc" provision-csv --domain "$domain" --csv "$out/$csv.csv" > "$out/provision-$csv.txt"
done

sipp_common=(-i 127.0.0.1 -nostdin -buff_size 4194304 -trace_stat -fd 10)
# Callees: one contact each, at the UAS.
timeout 120 sipp 127.0.0.1:$port -sf "$scen/register_auth.xml" -inf "$out/callees.csv" \
  -key domain "$domain" -key contact_hostport "127.0.0.1:$uas_port" -key expires 3600 \
  -auth_uri "$domain" -p "$pre_port" -r 1000 -m "$users" -timeout 100s -stf "$out/pre-register.stat.csv" \
  "${sipp_common[@]}" > "$out/pre-register.out" 2>&1
bound=$((seconds + 120))
timeout -k 5 "$bound" sipp -sf "$scen/load_uas.xml" -p "$uas_port" -timeout "${bound}s" \
  "${sipp_common[@]}" -stf "$out/uas.stat.csv" > "$out/uas.out" 2>&1 &
pids+=($!)
sleep 1
timeout -k 5 "$bound" sipp 127.0.0.1:$port -sf "$scen/register_auth.xml" -inf "$out/phones.csv" \
  -key domain "$domain" -key contact_hostport "127.0.0.1:9" -key expires 3600 -auth_uri "$domain" \
  -p "$reg_port" -r "$reg_rate" -rp 1000 -m $((reg_rate * seconds)) -timeout "${bound}s" \
  -recv_timeout 10000 -stf "$out/reg.stat.csv" "${sipp_common[@]}" > "$out/reg.out" 2>&1 &
reg_pid=$!; pids+=($reg_pid)
timeout -k 5 "$bound" sipp 127.0.0.1:$port -sf "$scen/load_uac_auth.xml" -inf "$out/callers.csv" \
  -key domain "$domain" -auth_uri "$domain" -p "$uac_port" -r "$cps" -rp 1000 -m $((cps * seconds)) \
  -d 1000 -default_behaviors all,-abortunexp -timeout "${bound}s" -recv_timeout 10000 \
  -stf "$out/calls.stat.csv" "${sipp_common[@]}" > "$out/calls.out" 2>&1 &
calls_pid=$!; pids+=($calls_pid)

# The sum of a metric's series (all labels).
metric() {
  curl -s "http://$metrics/metrics" |
    awk -v m="$1" '{ n = $1; sub(/\{.*/, "", n) } n == m { s += $2; f = 1 } END { if (f) print s; else print "na" }'
}
rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$node/status"; }
printf 'elapsed_s\trss_mb\tactors_live\tsip_transactions_dialogs\tcalls_active\n' | tee "$out/samples.tsv"
start=$(date +%s)
while kill -0 "$reg_pid" 2>/dev/null || kill -0 "$calls_pid" 2>/dev/null; do
  now=$(($(date +%s) - start))
  [ "$now" -gt $((seconds + 60)) ] && break
  printf '%s\t%s\t%s\t%s\t%s\n' "$now" "$(( $(rss_kb) / 1024 ))" "$(metric dialtone_actors_live)" \
    "$(metric dialtone_sip_dialogs)" "$(metric dialtone_calls_active)" | tee -a "$out/samples.tsv"
  sleep "$sample_secs"
done
wait "$reg_pid" 2>/dev/null || true
wait "$calls_pid" 2>/dev/null || true
# Let timers run out (idle actors passivate, finished dialogs are forgotten).
sleep 40
final_rss=$(( $(rss_kb) / 1024 ))
final_dialogs=$(metric dialtone_sip_dialogs); final_calls=$(metric dialtone_calls_active)
printf 'after the load + 40 s: rss_mb=%s actors_live=%s dialogs=%s calls_active=%s\n' "$final_rss" \
  "$(metric dialtone_actors_live)" "$final_dialogs" "$final_calls" | tee "$out/after.txt"

stat_field() { # last value of a column of a SIPp -trace_stat file
  awk -F';' -v col="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next } END { print $c }' "$1"
}
reg_ok=$(stat_field "$out/reg.stat.csv" "SuccessfulCall(C)"); reg_failed=$(stat_field "$out/reg.stat.csv" "FailedCall(C)")
calls_ok=$(stat_field "$out/calls.stat.csv" "SuccessfulCall(C)"); calls_failed=$(stat_field "$out/calls.stat.csv" "FailedCall(C)")
# Growth: the last sample under load against the sample a third of the way in (warm-up done).
warm=$(awk -F'\t' -v t="${warm_up:-$((seconds / 3))}" 'NR > 1 && $1 >= t { print $2; exit }' "$out/samples.tsv")
last=$(awk -F'\t' -v t="$seconds" 'NR > 1 && $1 <= t { v = $2 } END { print v }' "$out/samples.tsv")
growth=$(awk -v a="$warm" -v b="$last" 'BEGIN { if (a > 0) printf "%.1f", (b - a) * 100 / a; else print "na" }')
verdict=pass
awk -v g="$growth" -v max="$max_growth" 'BEGIN { exit !(g == "na" || g >= max) }' && verdict=fail
awk -v f="$reg_failed" -v o="$reg_ok" 'BEGIN { exit !(o == 0 || f * 100 > o) }' && verdict=fail
awk -v f="$calls_failed" -v o="$calls_ok" 'BEGIN { exit !(o == 0 || f * 100 > o) }' && verdict=fail
# Leaks: every call ended by then, every dialog forgotten (32 s after its end).
[ "$final_dialogs" = 0 ] && [ "$final_calls" = 0 ] || verdict=fail
summary="soak $duration reg_rate=$reg_rate cps=$cps registrations_ok=$reg_ok failed=$reg_failed calls_ok=$calls_ok failed=$calls_failed rss_mb_warm=$warm rss_mb_end=$last growth_pct=$growth rss_mb_after=$final_rss verdict=$verdict"
echo "$summary" | tee "$out/summary.txt"
echo "results in $out"
[ "$verdict" = pass ]
