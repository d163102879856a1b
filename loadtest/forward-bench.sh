#!/usr/bin/env bash
# Calls/s with a forward on busy on every call, against plain calls, on the
# same node in the same run, with the SIPp harness (its run-sip-bench.sh,
# in $DIALTONE_BENCH_DIR; described at the top of docs/performance.md).
#
#   loadtest/forward-bench.sh [--callers M] [--rates "800 1200 1600 2000"] [--rounds 2]
#                             [--port P] [--busy-port B] [--out DIR] [-- run-sip-bench.sh options]
#
# Defaults: M = 5000 (15,000 users), P = 5170, B = 5191; SIPp's other ports
# 5161 (harness REGISTER), 5162 (UAC), 5190 (UAS), 5163 (registrations here).
#
# It builds the release binaries (unless DIALTONE_BENCH_NO_BUILD=1), starts
# one fresh node as sip-bench.sh does (127.0.0.1:P, gRPC P+2, metrics P+3;
# data in a temp dir, durable log as always, no per-source rate limit) and
# provisions 3M users over gRPC (dialtone-load provision-csv):
#
#   callers  user000000 .. user(M-1)      the harness's UAC (uac_auth.xml)
#   dialled  user(M)    .. user(2M-1)     phone: loadtest/sipp/uas_busy.xml on
#                                         127.0.0.1:B, answers every INVITE 486
#   partners user(2M)   .. user(3M-1)     phone: the harness's UAS (uas.xml) on
#                                         127.0.0.1:5190, answers 180/200
#
# Dialled user M+i forwards on busy to partner 2M+i (dialtone-load
# forward-csv --busy-to-offset M). The dialled and partner users are
# registered once (SIPp register_auth.xml, Expires 3600); the busy UAS runs
# for the whole session. Then, for each rate of --rates, --rounds times:
# a plain run (caller i calls partner 2M+i: one leg) then a forward run
# (caller i calls dialled M+i: 486, then the node rings partner 2M+i with
# Diversion/History-Info: two legs), each one harness call step
# (run-sip-bench.sh --tests calls --cps-rates R; it registers the callers,
# starts its UAS, runs the UAC for --call-duration s, 20 by default, holding
# each call 1 s). A mode stops at the first rate at which it failed in every
# round. The harness's pass/clean rules apply to each step; it gets the node
# and the busy UAS as --server-pids (so that neither counts as noise from
# other processes); the node's and the busy UAS's own CPU over the harness's
# steady window come from a 1 s sampler of /proc/PID/stat.
#
# Writes DIR/results.tsv (a row per step: uptime's 1-min load before it,
# the harness's figures, node and busy-UAS CPU in % of one core, INVITEs the
# busy UAS took: in a forward run as many as calls, none in a plain run) and
# DIR/summary.txt (per mode the highest rate that passed, and was clean, in
# every round; forward/plain ratios). Each step's harness output is in
# DIR/RATE-MODE-ROUND/. Every SIPp run is bounded (-m, -timeout, timeout).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/node.sh"
bench=${DIALTONE_BENCH_DIR:?set DIALTONE_BENCH_DIR to the directory of the SIPp benchmark harness (docs/performance.md)}
callers=5000; rates="800 1200 1600 2000"; rounds=2; port=5170; busy_port=5191; out=""
uas_port=5190; call_duration=20; domain=example.test
while [ $# -gt 0 ]; do
  case "$1" in
    --callers) callers=$2; shift 2;;
    --rates) rates=$2; shift 2;;
    --rounds) rounds=$2; shift 2;;
    --port) port=$2; shift 2;;
    --busy-port) busy_port=$2; shift 2;;
    --out) out=$2; shift 2;;
    --) shift; break;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2;;
  esac
done
# SIPp ports off the harness's defaults (5061/5062/5090), so that another
# benchmark on the machine does not take them; options after -- win.
args=(--reg-port 5161 --uac-port 5162 --uas-port 5190 "$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --uas-port) uas_port=${args[i + 1]};;
    --call-duration) call_duration=${args[i + 1]};;
    --cps-rates|--tests|--users|--target|--domain|--server-pids|--out|--provision-cmd)
      echo "${args[i]} is set by $0" >&2; exit 2;;
  esac
done
out=${out:-${TMPDIR:-/tmp}/sip-bench-results/forward-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"; out=$(cd "$out" && pwd)
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$out/console.log" >&2; }

command -v sipp >/dev/null || { echo "sipp missing: apt-get install -y sip-tester" >&2; exit 1; }
[ "${DIALTONE_BENCH_NO_BUILD:-0}" = 1 ] || (cd "$root" && cargo build --release -q -p dialtone-node -p dialtone-loadtest)
bin="$root/target/release"

data=$(mktemp -d "${TMPDIR:-/tmp}/dialtone-fwdbench-XXXXXX")
grpc=127.0.0.1:$((port + 2))
busy=""; sampler=""
stop() {
  for p in $sampler $busy; do kill -TERM "$p" 2>/dev/null || true; done
  [ -n "${node:-}" ] && { kill -TERM "$node" 2>/dev/null; wait "$node" 2>/dev/null; }
  rm -rf "$data"
}
trap stop EXIT
start_node "$bin/dialtone" "$data" "$out" --grpc-addr "$grpc" --metrics-addr 127.0.0.1:$((port + 3)) \
  --sip-addr 127.0.0.1:$port --sip-challenge-md5-first --sip-source-rate 0
{ "$bin/dialtone" --version; git -C "$root" rev-parse HEAD; echo "node pid=$node data=$data"; nproc
  lscpu | grep 'Model name'; sipp -v 2>&1 | grep -m1 -o 'SIPp v[^ ]*' || true
  echo "cmd: $0 --callers $callers --rates '$rates' --rounds $rounds --port $port --busy-port $busy_port -- ${args[*]}"
} > "$out/dialtone-info.txt"

# Users: callers [0, M), dialled [M, 2M), partners [2M, 3M).
m=$callers
csv() {  # csv FIRST COUNT [CALLEE_OFFSET]: SIPp users CSV of users FIRST.., field2 = user + offset
  awk -v f="$1" -v n="$2" -v o="${3:-}" 'BEGIN { print "SEQUENTIAL"
    for (i = f; i < f + n; i++) { printf "user%06d;pw%06dx", i, i; if (o != "") printf ";user%06d", i + o; printf "\n" } }'
}
csv 0 $((3 * m)) > "$out/users.csv"
csv "$m" "$m" > "$out/dialled.csv"
csv $((2 * m)) "$m" > "$out/partners.csv"
csv "$m" $((2 * m)) > "$out/rules.csv"       # dialled then partners: offset M
csv 0 "$m" $((2 * m)) > "$out/plain.csv"     # caller i -> partner 2M+i
csv 0 "$m" "$m" > "$out/forward.csv"         # caller i -> dialled M+i
log "provisioning $((3 * m)) users and $m busy rules"
"$bin/dialtone-load" --server "http://$grpc" provision-csv --domain "$domain" --csv "$out/users.csv" | tee -a "$out/console.log"
"$bin/dialtone-load" --server "http://$grpc" forward-csv --domain "$domain" --csv "$out/rules.csv" \
  --busy-to-offset "$m" | tee -a "$out/console.log"

# The dialled users' phones: one SIPp UAS answering 486, for the session.
nrates=$(wc -w <<<"$rates")
bound=$(( nrates * rounds * 2 * (call_duration + 240) + 600 ))
timeout -k 5 "$bound" sipp -sf "$here/sipp/uas_busy.xml" -i 127.0.0.1 -p "$busy_port" -nostdin \
  -buff_size 4194304 -timeout "${bound}s" -trace_screen -screen_file "$out/busy-uas.screen" \
  -trace_stat -stf "$out/busy-uas.stat.csv" -fd 1 \
  > "$out/busy-uas.stdout" 2> "$out/busy-uas.stderr" &
busy_wrapper=$!
sleep 1
busy=$(pgrep -P "$busy_wrapper" -x sipp || true)
[ -n "$busy" ] || { echo "the busy UAS did not start; see $out/busy-uas.stderr" >&2; exit 1; }

register() {  # register NAME CSV CONTACT_PORT
  local n
  n=$(($(wc -l < "$2") - 1))
  log "registering $n users of $(basename "$2") with contact 127.0.0.1:$3"
  timeout -k 5 $((n / 1000 + 60)) sipp 127.0.0.1:$port -sf "$bench/sipp/register_auth.xml" -inf "$2" \
    -key domain "$domain" -key contact_hostport "127.0.0.1:$3" -key expires 3600 -auth_uri "$domain" \
    -p 5163 -r 1000 -rp 1000 -m "$n" -i 127.0.0.1 -nostdin -buff_size 4194304 -recv_timeout 10000 \
    -timeout $((n / 1000 + 50))s > "$out/$1.stdout" 2> "$out/$1.stderr" \
    || { echo "registration $1 failed (sipp exit $?); see $out/$1.stderr" >&2; exit 1; }
}
register register-dialled "$out/dialled.csv" "$busy_port"
register register-partners "$out/partners.csv" "$uas_port"

# CPU sampler: "epoch_s node_ticks busy_ticks" every second.
ticks() { local f; f=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }; f=${f##*) }; echo "$f" | awk '{print $12 + $13}'; }
( while kill -0 "$node" 2>/dev/null; do echo "$(date +%s.%N) $(ticks "$node") $(ticks "$busy")"; sleep 1; done ) > "$out/cpu-samples.txt" &
sampler=$!

# INVITEs the busy UAS has taken so far (its last stat line).
busy_calls() {
  awk -F';' 'NR == 1 { for (i = 1; i <= NF; i++) h[$i] = i; next } { n = $h["IncomingCall(C)"] } END { print n + 0 }' \
    "$out/busy-uas.stat.csv" 2>/dev/null || echo 0
}

# cpu_window T0 T1 -> "node_pct busy_pct" over [T0, T1] (interpolated samples)
cpu_window() {
  awk -v t0="$1" -v t1="$2" -v hz="$(getconf CLK_TCK)" '
    function at(t, c,   k) { for (k = 2; k <= n; k++) if (T[k] >= t) return V[c, k - 1] + (V[c, k] - V[c, k - 1]) * (t - T[k - 1]) / (T[k] - T[k - 1]); return V[c, n] }
    { n++; T[n] = $1; V[1, n] = $2; V[2, n] = $3 }
    END { if (n < 2 || t0 < T[1] || t1 <= t0) { print "na na"; exit }
          printf "%.1f %.1f\n", 100 * (at(t1, 1) - at(t0, 1)) / hz / (t1 - t0), 100 * (at(t1, 2) - at(t0, 2)) / hz / (t1 - t0) }' \
    "$out/cpu-samples.txt"
}

printf 'rate\tmode\tround\tstart_utc\tload1_before\tpass\tclean\tstarted\tsuccess\tfailed\tunfinished\tachieved_per_s\tretrans\trt_p99_bucket_ms\tnode_cpu_pct\tbusy_uas_cpu_pct\tsipp_cpu_pct\tserver_cpu_pct\tother_cpu_pct\tbusy_uas_calls\n' > "$out/results.tsv"
# Per mode: stopped (failed in every round of a rate), and whether every step
# so far passed / was clean (then the rate is the mode's best so far).
declare -A stopped all_pass all_clean best_pass best_clean failed_rounds clean_rounds
for mode in plain forward; do
  stopped[$mode]=0; all_pass[$mode]=1; all_clean[$mode]=1; best_pass[$mode]=0; best_clean[$mode]=0
done
for r in $rates; do
  for mode in plain forward; do failed_rounds[$mode]=0; clean_rounds[$mode]=0; done
  for round in $(seq "$rounds"); do
    for mode in plain forward; do
      [ "${stopped[$mode]}" = 1 ] && continue
      dir="$out/$r-$mode-$round"
      load1=$(cut -d' ' -f1 /proc/loadavg)
      busy0=$(busy_calls)
      log "$mode $r calls/s, round $round (uptime: $(uptime | sed 's/.*load average/load average/'))"
      "$bench/run-sip-bench.sh" --target 127.0.0.1:$port --domain "$domain" --users "$out/$mode.csv" \
        --server-pids "$node $busy" --out "$dir" --tests calls --cps-rates "$r" --prereg-rate 2000 \
        --hook-cmd "curl -s http://127.0.0.1:$((port + 3))/metrics > \"\$OUT/metrics-\$PHASE-\$TEST.txt\" || true" \
        "${args[@]}" > "$dir.console.log" 2>&1 || log "harness exited with $? (see $dir.console.log)"
      sleep 2   # the busy UAS's stat line (every second) catches up
      busy_n=$(($(busy_calls) - busy0))
      row=$(awk -F'\t' '$1 == "calls"' "$dir/steps.tsv" | tail -1)
      [ -n "$row" ] || { log "no call step in $dir/steps.tsv"; row=$(printf 'calls\t%s\t\t\t0\t0\t0\t0\t100\t0\t0\t0\tna\tna\tna\tna\tna\tno\tno' "$r"); }
      stat=$dir/calls-$r.stat.csv
      for a in 1 2 3 4; do [ -f "$dir/calls-$r-retry$a.stat.csv" ] && stat=$dir/calls-$r-retry$a.stat.csv; done
      t0=$(awk -F';' 'NR == 1 { for (i = 1; i <= NF; i++) h[$i] = i; next }
                      NR == 2 { split($h["StartTime"], a, "\t"); printf "%.3f\n", a[3] }' "$stat" 2>/dev/null || true)
      t0=${t0:-0}
      read -r ncpu bcpu < <(cpu_window "$(awk -v t="$t0" 'BEGIN{printf "%.3f", t + 2}')" \
                                        "$(awk -v t="$t0" -v d="$call_duration" 'BEGIN{printf "%.3f", t + d - 2}')")
      IFS=$'\t' read -r _ _ _ _ started success failed unfinished _ ach retrans _ p99 sippcpu svcpu _ other pass clean <<<"$row"
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$mode" "$round" \
        "$(date -u -d "@${t0%.*}" +%H:%M:%S 2>/dev/null || echo na)" "$load1" "$pass" "$clean" "$started" "$success" \
        "$failed" "$unfinished" "$ach" "$retrans" "$p99" "$ncpu" "$bcpu" "$sippcpu" "$svcpu" "$other" "$busy_n" >> "$out/results.tsv"
      log "$mode $r/s round $round: pass=$pass clean=$clean started=$started ok=$success failed=$failed" \
          "unfinished=$unfinished achieved=$ach/s retrans=$retrans p99$p99 node_cpu=$ncpu% busy_uas_cpu=$bcpu% other=$other% busy_uas_calls=$busy_n"
      [ "$pass" = yes ] || failed_rounds[$mode]=$((failed_rounds[$mode] + 1))
      [ "$clean" = yes ] && clean_rounds[$mode]=$((clean_rounds[$mode] + 1))
    done
  done
  for mode in plain forward; do
    [ "${stopped[$mode]}" = 1 ] && continue
    [ "${failed_rounds[$mode]}" = 0 ] || all_pass[$mode]=0
    [ "${clean_rounds[$mode]}" = "$rounds" ] || all_clean[$mode]=0
    [ "${all_pass[$mode]}" = 1 ] && best_pass[$mode]=$r
    [ "${all_clean[$mode]}" = 1 ] && best_clean[$mode]=$r
    if [ "${failed_rounds[$mode]}" = "$rounds" ]; then stopped[$mode]=1; log "$mode failed at $r/s in every round: stopped"; fi
  done
done
ratio() { awk -v f="$1" -v p="$2" 'BEGIN { if (p > 0) printf "%.2f", f / p; else print "na" }'; }
{
  echo "plain_pass_all_rounds=${best_pass[plain]} forward_pass_all_rounds=${best_pass[forward]}" \
       "ratio_pass=$(ratio "${best_pass[forward]}" "${best_pass[plain]}")"
  echo "plain_clean_all_rounds=${best_clean[plain]} forward_clean_all_rounds=${best_clean[forward]}" \
       "ratio_clean=$(ratio "${best_clean[forward]}" "${best_clean[plain]}")"
  echo "(per mode, the highest rate of --rates such that every step up to it, in every round, passed /"
  echo " was clean; 0: the first rate did not. The top rate of the ladder is a lower bound.)"
} > "$out/summary.txt"
column -t -s $'\t' "$out/results.tsv" | tee -a "$out/console.log"
tee -a "$out/console.log" < "$out/summary.txt"
echo "results in $out"
