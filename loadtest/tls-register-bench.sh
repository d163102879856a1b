#!/usr/bin/env bash
# REGISTER/s with digest authentication over TLS: Dialtone against Kamailio
# 5.6 with its `tls` module, driven by the same client (`dialtone-load
# register-latency --tls --md5`, one reused TLS connection per client), on
# the same machine, in the same run, with their steps interleaved.
#
#   loadtest/tls-register-bench.sh [--rates "2000 4000 ..."] [--seconds S] [--users N]
#       [--clients C] [--port P] [--out DIR] [--only dialtone|kamailio]
#       [--kam-workers N] [--kam-shm MB] [--prereg-rate R] [--keep-going]
#       [--quiet-wait S] [--noisy-pct P] [--noisy-retries N] [--max-restarts N]
#
# What it does:
#   1. Generates a self-signed certificate (EC P-256, subjectAltName
#      IP:127.0.0.1) into OUT/tls/, served by both servers and trusted by
#      the client, and a users CSV (userNNNNNN;pwNNNNNNx;callee, N users).
#   2. Starts both servers fresh, each on its own ports (below): a release
#      Dialtone node on an empty data directory (durable event log as
#      always; MD5 digest, the default for new domains; no per-source rate
#      limit, connection limits and lockouts out of the way, since every
#      client connection comes from 127.0.0.1), and Kamailio 5.6 with
#      loadtest/kamailio-tls/kamailio.cfg (auth_db on SQLite, usrloc in
#      memory, WORKERS TCP/TLS workers). Provisions the users (Dialtone:
#      `dialtone-load provision-csv` over gRPC; Kamailio: its `subscriber`
#      table) and registers every user once on each.
#   3. Runs the rate ladder: for each rate, one step on each server, the
#      order alternating from one rate to the next (Dialtone first, then
#      Kamailio first, ...), so that a disturbance of the shared machine
#      hits both. The server not being measured is idle. Each server's
#      ladder stops at its first failing step unless --keep-going.
#   4. Writes OUT/steps.tsv (one row per step), OUT/summary.txt (the highest
#      passing and clean achieved rate of each and the ratios) and prints
#      the summary's last line.
#
# Per step (the rules of the SIPp harness of the UDP comparison, see
# docs/performance.md): the client offers RATE registrations/s (REGISTER ->
# 401 -> REGISTER with credentials -> 200) for S seconds, open loop. A step
# *passes* when < 1 % of the registrations started failed (error response,
# broken connection, or no answer within 5 s) and the achieved rate is at
# least 95 % of the offered one; it is *clean* when, besides, the p99 of
# the whole registration (from its scheduled start to the 200) is at most
# 100 ms. CPU is read from /proc/PID/stat (utime + stime, summed over all
# of Kamailio's processes; the node is one process) over the window from 3 s
# after the client starts (it opens its connections first) to 1 s before
# the step's end, in % of one core, for the server, the client and all
# processes; "other" is what neither used. Before each step the script
# waits (at most --quiet-wait s) for the machine to be idle, and a step in
# which other processes used more than --noisy-pct % of a core is marked
# `noisy` and run again (at most --noisy-retries times). A server that dies
# during a step (Kamailio: any of its processes) is restarted fresh,
# provisioned and pre-registered again, the step marked `crashed` and run
# again, at most --max-restarts (2) times per step; the summary counts
# the crashes.
#
# Ports (P = --port, default 5900): Dialtone SIP UDP/TCP P, SIP TLS P+1,
# gRPC P+2, metrics P+3; Kamailio SIP TLS P+11.
#
# Needs: the Debian packages kamailio, kamailio-tls-modules,
# kamailio-sqlite-modules, sqlite3 and openssl (apt-get install -y ...).
# Builds the release binaries unless DIALTONE_BENCH_NO_BUILD=1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/node.sh"

rates="2000 4000 6000 8000 10000 12000 14000 16000"; seconds=20; users=10000; clients=200
port=5900; out=""; only=""; kam_workers=$(nproc); kam_shm=1024; kam_pkg=16; prereg_rate=2000
keep_going=0; max_restarts=2; quiet_wait=120; quiet_threshold=15; noisy_pct=25; noisy_retries=2; settle=3
domain=example.test
while [ $# -gt 0 ]; do
  case "$1" in
    --rates) rates=$2; shift 2;;
    --seconds) seconds=$2; shift 2;;
    --users) users=$2; shift 2;;
    --clients) clients=$2; shift 2;;
    --port) port=$2; shift 2;;
    --out) out=$2; shift 2;;
    --only) only=$2; shift 2;;
    --kam-workers) kam_workers=$2; shift 2;;
    --kam-shm) kam_shm=$2; shift 2;;
    --prereg-rate) prereg_rate=$2; shift 2;;
    --keep-going) keep_going=1; shift;;
    --quiet-wait) quiet_wait=$2; shift 2;;
    --noisy-pct) noisy_pct=$2; shift 2;;
    --noisy-retries) noisy_retries=$2; shift 2;;
    --max-restarts) max_restarts=$2; shift 2;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2;;
  esac
done
case "$only" in
  "") servers="dialtone kamailio";;
  dialtone|kamailio) servers=$only;;
  *) echo "--only takes dialtone or kamailio" >&2; exit 2;;
esac
for tool in openssl sqlite3 ss; do
  command -v "$tool" >/dev/null || { echo "$tool missing" >&2; exit 1; }
done
if [[ " $servers " == *" kamailio "* ]]; then
  command -v kamailio >/dev/null && [ -f /usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so ] &&
    [ -f /usr/lib/x86_64-linux-gnu/kamailio/modules/db_sqlite.so ] || {
    echo "needs: apt-get install -y kamailio kamailio-tls-modules kamailio-sqlite-modules" >&2; exit 1; }
fi

out=${out:-${TMPDIR:-/tmp}/tls-register-bench/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out/steps" "$out/tls"; out=$(cd "$out" && pwd)
[ "${DIALTONE_BENCH_NO_BUILD:-0}" = 1 ] || (cd "$root" && cargo build --release -q -p dialtone-node -p dialtone-loadtest)
bin="$root/target/release"
load="$bin/dialtone-load"
clk_tck=$(getconf CLK_TCK)
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

dt_sip=127.0.0.1:$port; dt_tls=127.0.0.1:$((port + 1)); dt_grpc=127.0.0.1:$((port + 2))
dt_metrics=127.0.0.1:$((port + 3)); kam_tls=127.0.0.1:$((port + 11))
target_of() { if [ "$1" = dialtone ]; then echo "$dt_tls"; else echo "$kam_tls"; fi; }

# ------------------------------------------------------------ certificate, users
cert=$out/tls/cert.pem; key=$out/tls/key.pem
loopback_cert "$cert" "$key"
csv=$out/users.csv
awk -v n="$users" 'BEGIN { print "SEQUENTIAL"
  for (i = 0; i < n; i++) printf "user%06d;pw%06dx;user%06d\n", i, i, (i + int(n / 2)) % n }' > "$csv"

# ------------------------------------------------------------ servers
node=""; kam=""; data=""; kamrun=""; kam_nprocs=0
stop_dialtone() {
  if [ -n "$node" ]; then kill -TERM "$node" 2>/dev/null || true; wait "$node" 2>/dev/null || true; fi
  [ -n "$data" ] && rm -rf "$data"
  node=""; data=""
}
stop_kamailio() {
  if [ -n "$kam" ]; then
    kill -TERM "$kam" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$kam" 2>/dev/null || break; sleep 0.1; done
    wait "$kam" 2>/dev/null || true
  fi
  [ -n "$kamrun" ] && cat "$kamrun/kamailio.log" >> "$out/kamailio.log" 2>/dev/null
  [ -n "$kamrun" ] && rm -rf "$kamrun"
  kam=""; kamrun=""
}
stop_all() { stop_dialtone; stop_kamailio; }
trap stop_all EXIT

start_dialtone() {
  data=$(mktemp -d "${TMPDIR:-/tmp}/dialtone-tls-bench-XXXXXX")
  # Every client connection comes from 127.0.0.1: no per-source message
  # rate, the connection limits far above --clients, and no lockout of the
  # address (Kamailio has none either).
  start_node "$bin/dialtone" "$data" "$out" --grpc-addr "$dt_grpc" --metrics-addr "$dt_metrics" \
    --sip-addr "$dt_sip" --sip-tls-addr "$dt_tls" --sip-tls-cert "$cert" --sip-tls-key "$key" \
    --sip-digest-algorithms md5 --sip-source-rate 0 \
    --sip-max-connections-per-source 100000 --sip-max-connections 100000 \
    --sip-lockout-user-failures 0 --sip-lockout-source-failures 0
  "$load" --server "http://$dt_grpc" provision-csv --domain "$domain" --csv "$csv" > "$out/dialtone-provision.txt"
  log "dialtone: node pid $node, $(cat "$out/dialtone-provision.txt")"
}

start_kamailio() {
  kamrun=$(mktemp -d "${TMPDIR:-/tmp}/kamailio-tls-bench-XXXXXX")
  local db=$kamrun/kamailio.sqlite
  sqlite3 "$db" < "$here/kamailio-tls/schema.sql"
  {
    echo "BEGIN;"
    awk -F';' -v d="$domain" 'NR > 1 && NF >= 2 && $1 != "" {
      printf "INSERT INTO subscriber (username, domain, password) VALUES (\047%s\047, \047%s\047, \047%s\047);\n", $1, d, $2 }' "$csv"
    echo "COMMIT;"
  } | sqlite3 "$db"
  # -m/-M: 1 GiB shared and 16 MiB private memory per process, as in the
  # UDP comparison (TLS connections and OpenSSL's state live in shared
  # memory). --atexit=no: the tls module's advice for OpenSSL >= 1.1. No
  # core dumps: they would be the size of the shared memory, in /.
  ulimit -c 0
  kamailio -f "$here/kamailio-tls/kamailio.cfg" -DD -E --atexit=no -Y "$kamrun" -P "$kamrun/kamailio.pid" \
    -m "$kam_shm" -M "$kam_pkg" \
    -A "WORKERS=$kam_workers" -A "LISTEN=tls:$kam_tls" -A "DOMAIN=\"$domain\"" \
    -A "DBURL=\"sqlite://$db\"" -A "CTLSOCK=\"unix:$kamrun/kamailio_ctl\"" \
    -A "TLS_CERT=\"$cert\"" -A "TLS_KEY=\"$key\"" -A "MAX_CONNECTIONS=$((clients * 2 + 1024))" \
    </dev/null >"$kamrun/kamailio.log" 2>&1 &
  kam=$!
  for _ in $(seq 100); do
    ss -ltn | awk '{ print $4 }' | grep -qx "$kam_tls" && break
    kill -0 "$kam" 2>/dev/null || break
    sleep 0.1
  done
  ss -ltn | awk '{ print $4 }' | grep -qx "$kam_tls" || {
    echo "kamailio did not start:" >&2; tail -20 "$kamrun/kamailio.log" >&2; exit 1; }
  sleep 0.5
  kam_nprocs=$(kam_pids | wc -w)
  log "kamailio: main pid $kam, $(sqlite3 "$db" 'SELECT count(*) FROM subscriber;') subscribers," \
      "processes: $(kam_pids | wc -w)"
}
kam_pids() { echo "$kam $(pgrep -P "$kam" | tr '\n' ' ')"; }
server_pids() { if [ "$1" = dialtone ]; then echo "$node"; else kam_pids; fi; }
# Whether the server still runs whole (Kamailio: every process it started
# with; it shuts down when a worker dies).
server_alive() {
  if [ "$1" = dialtone ]; then
    kill -0 "$node" 2>/dev/null
  else
    kill -0 "$kam" 2>/dev/null && [ "$(kam_pids | wc -w)" -ge "$kam_nprocs" ]
  fi
}

# ------------------------------------------------------------ CPU
cpu_ticks() {  # utime + stime summed over PIDs (threads included)
  local t=0 p f
  for p in "$@"; do
    if f=$(cat "/proc/$p/stat" 2>/dev/null); then
      f=${f##*) }
      t=$(( t + $(echo "$f" | awk '{ print $12 + $13 }') ))
    fi
  done
  echo "$t"
}
all_ticks() {  # every process, including its reaped children
  cat /proc/[0-9]*/stat 2>/dev/null | awk '{ i = index($0, ") "); split(substr($0, i + 2), f, " ");
                                           t += f[12] + f[13] + f[14] + f[15] } END { printf "%d\n", t }'
}
wait_quiet() {
  [ "$quiet_wait" -gt 0 ] || return 0
  local waited=0 b0 b1 busy
  while :; do
    b0=$(all_ticks); sleep 2; b1=$(all_ticks)
    busy=$(( (b1 - b0) * 100 / clk_tck / 2 ))
    [ "$busy" -le "$quiet_threshold" ] && return 0
    waited=$((waited + 2))
    if [ "$waited" -ge "$quiet_wait" ]; then
      log "WARNING: host still busy (${busy}% of a core) after ${waited}s; running the step anyway"
      return 0
    fi
    [ $((waited % 20)) -eq 0 ] && log "host busy (${busy}% of a core); waiting..."
  done
}

# ------------------------------------------------------------ client runs
# register SERVER NAME RATE SECONDS: one client run; its output in
# OUT/steps/NAME.txt; sets CPU_* (window ticks) when SECONDS >= 6.
register() {
  local server=$1 name=$2 rate=$3 secs=$4 wstart=3 wlen s0 c0 a0 s1 c1 a1 pids
  wlen=$((secs - 4)); [ "$wlen" -lt 1 ] && wlen=1
  "$load" register-latency --tls --tls-ca "$cert" --target "$(target_of "$server")" --domain "$domain" \
    --csv "$csv" --rate "$rate" --seconds "$secs" --clients "$clients" --md5 \
    > "$out/steps/$name.txt" 2>&1 &
  local client=$!
  CPU_WIN=0
  if [ "$secs" -ge 6 ]; then
    sleep "$wstart"
    pids=$(server_pids "$server")
    # shellcheck disable=SC2086
    s0=$(cpu_ticks $pids); c0=$(cpu_ticks "$client"); a0=$(all_ticks)
    sleep "$wlen"
    # shellcheck disable=SC2086
    s1=$(cpu_ticks $pids); c1=$(cpu_ticks "$client"); a1=$(all_ticks)
    CPU_WIN=$wlen; CPU_SERVER=$((s1 - s0)); CPU_CLIENT=$((c1 - c0)); CPU_ALL=$((a1 - a0))
  fi
  wait "$client" || log "WARNING: the client failed ($server $name): $(tail -3 "$out/steps/$name.txt")"
}
summary_field() { # FILE KEY
  awk -v k="$2" '/^summary / { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) print kv[2] } }' "$1"
}

steps_tsv=$out/steps.tsv
printf 'server\toffered_per_s\tseconds\tattempted\tok\tfailed\ttimed_out\trejected\tbroken\tfailed_pct\tachieved_per_s\tlate_starts\twhole_p50_ms\twhole_p90_ms\twhole_p99_ms\twhole_max_ms\tserver_cpu_pct\tclient_cpu_pct\thost_cpu_pct\tother_cpu_pct\tserver_cpu_ms_per_reg\tpass\tclean\n' > "$steps_tsv"

declare -A best_pass best_clean stopped crashes
# step SERVER RATE: one measured step (re-run when noisy or crashed); returns 1 when
# the server's ladder should stop.
step() {
  local server=$1 rate=$2 attempt name f row noisy_runs=0 restarts=0
  for attempt in $(seq 0 $((noisy_retries + max_restarts))); do
    name="$server-$rate"; [ "$attempt" -gt 0 ] && name="$name-retry$attempt"
    wait_quiet
    log "$server: ${rate}/s for ${seconds}s"
    register "$server" "$name" "$rate" "$seconds"
    f=$out/steps/$name.txt
    local pass clean ach other
    pass=$(summary_field "$f" pass); clean=$(summary_field "$f" clean); ach=$(summary_field "$f" achieved_per_s)
    [ -n "$pass" ] || { pass=no; clean=no; ach=0; }
    row=$(awk -v w="$CPU_WIN" -v s="${CPU_SERVER:-0}" -v c="${CPU_CLIENT:-0}" -v a="${CPU_ALL:-0}" \
              -v t="$clk_tck" -v ach="$ach" 'BEGIN {
      if (w == 0) { print "na na na na na"; exit }
      sv = 100 * s / t / w; cl = 100 * c / t / w; h = 100 * a / t / w; o = h - sv - cl; if (o < 0) o = 0
      per = (ach > 0) ? 10 * sv / ach : 0      # ms of server CPU per registration
      printf "%.1f %.1f %.1f %.1f %.3f\n", sv, cl, h, o, per }')
    local svcpu clcpu hcpu percpu
    read -r svcpu clcpu hcpu other percpu <<<"$row"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
      "$server" "$rate" "$seconds" "$(summary_field "$f" attempted)" "$(summary_field "$f" ok)" \
      "$(summary_field "$f" failed)" "$(summary_field "$f" timed_out)" "$(summary_field "$f" rejected)" \
      "$(summary_field "$f" broken)" "$(summary_field "$f" failed_pct)" "$ach" "$(summary_field "$f" late_starts)" \
      "$(summary_field "$f" whole_p50_ms)" "$(summary_field "$f" whole_p90_ms)" "$(summary_field "$f" whole_p99_ms)" \
      "$(summary_field "$f" whole_max_ms)" "$svcpu" "$clcpu" "$hcpu" "$other" "$percpu" "$pass" "$clean" >> "$steps_tsv"
    if ! server_alive "$server"; then
      # A crash is no verdict on the rate: restart the server (fresh, as at
      # the start), count it, and run the step again, at most --max-restarts
      # times per step.
      sed -i '$ s/\t[a-z]*\t[a-z]*$/\tcrashed\tcrashed/' "$steps_tsv"
      crashes[$server]=$(( ${crashes[$server]} + 1 ))
      restarts=$((restarts + 1))
      log "$server ${rate}/s: the server died during the step (crash ${crashes[$server]}; see its log)"
      if [ "$restarts" -gt "$max_restarts" ]; then pass=no; clean=no; break; fi
      "stop_$server"; "start_$server"; preregister "$server"
      continue
    fi
    log "$server ${rate}/s: $(grep -m1 '^register-latency' "$f" | sed 's/^register-latency: //')"
    log "$server ${rate}/s: p99 $(summary_field "$f" whole_p99_ms) ms; cpu (% of a core) server=$svcpu" \
        "client=$clcpu other=$other; ${percpu} ms server CPU per registration -> pass=$pass clean=$clean"
    sleep "$settle"
    if [ "$other" != na ] && [ "$noisy_runs" -lt "$noisy_retries" ] && \
       awk -v o="$other" -v m="$noisy_pct" 'BEGIN { exit !(o > m) }'; then
      sed -i '$ s/\t[a-z]*\t[a-z]*$/\tnoisy\tnoisy/' "$steps_tsv"
      log "$server ${rate}/s: disturbed by other processes (${other}% of a core): discarded, re-running"
      noisy_runs=$((noisy_runs + 1))
      continue
    fi
    break
  done
  if [ "$pass" = yes ] && awk -v a="$ach" -v b="${best_pass[$server]}" 'BEGIN { exit !(a > b) }'; then
    best_pass[$server]=$ach
  fi
  if [ "$clean" = yes ] && awk -v a="$ach" -v b="${best_clean[$server]}" 'BEGIN { exit !(a > b) }'; then
    best_clean[$server]=$ach
  fi
  [ "$pass" = yes ] || [ "$keep_going" = 1 ]
}

# ------------------------------------------------------------ run
{
  echo "date: $(date -u +%FT%TZ)"
  echo "cmd: $0 --rates '$rates' --seconds $seconds --users $users --clients $clients --port $port" \
       "--kam-workers $kam_workers --kam-shm $kam_shm${only:+ --only $only}"
  echo "host: $(uname -srm), $(nproc) CPUs ($(lscpu | awk -F: '/Model name/ { gsub(/^ +/, "", $2); print $2 }')), $(awk '/MemTotal/ { print $2 " kB" }' /proc/meminfo)"
  echo "dialtone: $("$bin/dialtone" --version 2>&1 | head -1) ($(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo '?'))"
  command -v kamailio >/dev/null && echo "kamailio: $(kamailio -v 2>&1 | head -1); $(dpkg-query -W -f '${Package} ${Version}, ' kamailio kamailio-tls-modules kamailio-sqlite-modules 2>/dev/null)"
  echo "openssl: $(openssl version)"
  echo "kamailio workers (tcp_children): $kam_workers, shm ${kam_shm} MB, pkg ${kam_pkg} MB"
} > "$out/run-info.txt"

for s in $servers; do
  best_pass[$s]=0; best_clean[$s]=0; stopped[$s]=0; crashes[$s]=0
  "start_$s"
done
# Everyone once (the client takes the CSV's users in turn): the measured
# steps then refresh existing bindings, a registrar's steady state.
# A server that dies meanwhile is restarted (at most --max-restarts times).
preregister() {
  local s=$1 secs=$(( (users + prereg_rate - 1) / prereg_rate )) try
  for try in $(seq 0 "$max_restarts"); do
    log "$s: registering the $users users once"
    register "$s" "$s-preregister" "$(( (users + secs - 1) / secs ))" "$secs"
    log "$s: preregister: $(grep -m1 '^register-latency' "$out/steps/$s-preregister.txt" | sed 's/^register-latency: //')"
    server_alive "$s" && return 0
    crashes[$s]=$(( ${crashes[$s]} + 1 ))
    log "$s: the server died while registering everyone (crash ${crashes[$s]}; see its log); restarting it"
    "stop_$s"; "start_$s"
  done
  log "$s: gave up after $max_restarts restarts"; exit 1
}

for s in $servers; do
  echo "$s TLS session: $(openssl s_client -connect "$(target_of "$s")" -CAfile "$cert" </dev/null 2>/dev/null |
    awk '/^New,/ && !n++ { printf "%s, ", $0 } /Verify return code/ && !v++ { printf "%s", $0 }')" >> "$out/run-info.txt"
  preregister "$s"
done
cat "$out/run-info.txt" >&2

i=0
for rate in $rates; do
  order=$servers
  [ $((i % 2)) -eq 1 ] && order=$(echo "$servers" | awk '{ for (j = NF; j > 0; j--) printf "%s ", $j }')
  i=$((i + 1))
  running=0
  for s in $order; do
    [ "${stopped[$s]}" = 1 ] && continue
    running=1
    step "$s" "$rate" || { stopped[$s]=1; log "$s: stops at ${rate}/s (failed step)"; }
  done
  [ "$running" = 1 ] || break
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "na" }'; }
line=""
for s in $servers; do
  line="$line ${s}_pass_per_s=${best_pass[$s]} ${s}_clean_per_s=${best_clean[$s]} ${s}_crashes=${crashes[$s]}"
done
if [ "$servers" = "dialtone kamailio" ]; then
  line="$line ratio_pass=$(ratio "${best_pass[dialtone]}" "${best_pass[kamailio]}")"
  line="$line ratio_clean=$(ratio "${best_clean[dialtone]}" "${best_clean[kamailio]}")"
fi
line=${line# }
{
  cat "$out/run-info.txt"
  echo
  column -t -s $'\t' "$steps_tsv" 2>/dev/null || cat "$steps_tsv"
  echo
  echo "$line"
} > "$out/summary.txt"
column -t -s $'\t' "$steps_tsv" >&2 2>/dev/null || cat "$steps_tsv" >&2
log "results in $out"
echo "$line"
