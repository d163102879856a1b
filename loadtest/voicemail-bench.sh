#!/usr/bin/env bash
# Concurrent voicemail recordings on one node (issue 17): how many callers
# can leave a message at once with no lost or late frames, the node's CPU
# per live media session, and the RTP packets/s one core of it handles.
#
#   loadtest/voicemail-bench.sh [--sessions "250 500 750 1000"] [--seconds 60]
#                               [--rate 50] [--boxes 10] [--media stream|pcap]
#                               [--port 5370] [--out DIR]
#
# For each step N of --sessions, on a fresh node (release build, data in a
# temp dir, durable log as always; SIP 127.0.0.1:P UDP, gRPC P+2, metrics
# P+3, RTP ports 20000-29999, no per-source rate limit, MD5 challenges
# first for SIPp):
#   - users: callers user000000 .. user(N-1) (`dialtone-load
#     provision-csv`), and --boxes mailbox owners after them, each with
#     its box enabled (max 1000 messages, messages up to --seconds + 30 s,
#     at most 600) and every call forwarded to it (`user forward --always
#     voicemail`); caller i calls box i mod K;
#   - one SIPp (loadtest/sipp/uac_voicemail.xml) places the N calls at
#     --rate calls/s (-l N -m N: they ramp up to N at once), each one
#     authenticating (407), sending G.711 u-law at 20 ms (50 packets/s)
#     from its ACK on through the greeting, the beep and the recording,
#     and hanging up after --seconds: the node then saves each message (a
#     WAV blob written and fsynced, an event appended);
#   - a sampler reads, every second, the node's and SIPp's CPU
#     (/proc/PID/stat), the node's RSS and its dialtone_media_* metrics.
# The audio comes from loadtest/vm-audio.py (a generator, no binary blob):
#   --media stream (default): SIPp's rtp_stream loops a 10 s u-law WAV from
#     one UDP socket per call, in a few threads (-rtp_threadtasks);
#   --media pcap: play_pcap_audio of a capture as long as the call
#     (continuous sequence numbers and timestamps; it cannot loop one
#     without a jump). SIPp 3.6 sends it from one thread and one raw
#     socket per call, and Linux gives every raw UDP socket a copy of each
#     UDP datagram to its address: the callers' media address is
#     127.0.0.2 so that the SIP traffic and the RTP to the node (at
#     127.0.0.1) are not copied N times; the node's prompts and reports to
#     the callers still are, which costs the machine (not the node) time
#     that grows as N squared while greetings play.
#
# Writes DIR/results.tsv and DIR/results.md (one row per step) and
# DIR/N/ (node log, SIPp files, samples, metrics before/after). Columns:
#   sessions        N: calls placed at once (-l N), one media session each
#   placed answered failed   SIPp's calls created, 200 OKs to the INVITE,
#                   failed calls (any unexpected message, timeout, error)
#   messages        messages in the boxes after the step (each answered
#                   call that reached the recording leaves one)
#   live_max        the highest dialtone_media_sessions_live sampled
#   steady_s        the steady window: from the moment live_max was first
#                   reached + 10 s (the last caller's greeting and beep)
#                   to the first hang-up (SIPp start + --seconds); the
#                   per-second figures below are over it. "na" when the
#                   calls are too short for one (raise --seconds)
#   live_avg        mean live sessions over the window
#   node_cpu_pct    the node's CPU over the window, % of one core (200 =
#                   both cores of this machine)
#   cpu_pct_per_session   node_cpu_pct / live_avg
#   rx_pps tx_pps   RTP packets/s the media plane received / sent
#   pps_per_core    (rx_pps + tx_pps) / (node_cpu_pct / 100): packets/s
#                   one fully busy core of the node handles, everything
#                   else the node does in the window included
#   sipp_cpu_pct    SIPp's CPU over the window (the load generator shares
#                   the 2 cores: compare with 200 - node_cpu_pct)
#   hangup_cpu_pct  the node's CPU from the first hang-up until the live
#                   count is back to 0 (saving N messages)
#   rss_mb          the node's highest RSS sampled
#   lost late concealed recorded   over the whole step (metrics after -
#                   before): RTP packets lost (sequence gaps), audio
#                   packets too late for the recording's playout (over
#                   the jitter buffer's 60 ms), recorded 20 ms frames with
#                   missing audio filled in, recorded frames
#   ticks           session ticks measured (a tick: a recording's next
#                   frame, a prompt's next packet, a report, when due)
#   tick_p50_us tick_p99_us   upper bound of the lateness bucket holding
#                   the median / 99th percentile tick (100, 250, 500,
#                   1000, 2000, 5000, ... µs; tokio's timers count whole
#                   milliseconds, so up to 2000 is the timer, not load;
#                   the recording's jitter buffer waits 60 ms)
#   tick_max_us     the largest lateness since the node started
#   pass            yes when every call was answered and none failed,
#                   live_max reached N, messages = answered, and lost,
#                   late and concealed are 0
# A step's SIPp run is bounded (-timeout, timeout); every run stops by
# itself. The machine should be quiet: SIPp and the node share it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/node.sh"
sessions="250 500 750 1000"; seconds=60; rate=50; boxes=10; media=stream; port=5370; out=""
domain=example.test; sipp_port=5375; media_port=40000
while [ $# -gt 0 ]; do
  case "$1" in
    --sessions) sessions=$2; shift 2;;
    --seconds) seconds=$2; shift 2;;
    --rate) rate=$2; shift 2;;
    --boxes) boxes=$2; shift 2;;
    --media) media=$2; shift 2;;
    --port) port=$2; shift 2;;
    --out) out=$2; shift 2;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2;;
  esac
done
case "$media" in stream|pcap) ;; *) echo "--media is stream or pcap" >&2; exit 2;; esac
max_message_secs=$((seconds + 30)); [ "$max_message_secs" -gt 600 ] && max_message_secs=600
[ "$seconds" -le 570 ] || { echo "--seconds at most 570 (a box's messages are at most 600 s)" >&2; exit 2; }
for n in $sessions; do
  [ "$n" -le $((boxes * 1000)) ] || { echo "$n calls need more than --boxes $boxes (1000 messages each)" >&2; exit 2; }
done
out=${out:-${TMPDIR:-/tmp}/voicemail-bench-results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"; out=$(cd "$out" && pwd)
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$out/console.log" >&2; }

command -v sipp >/dev/null || { echo "sipp missing: apt-get install -y sip-tester" >&2; exit 1; }
[ "$(id -u)" = 0 ] || [ "$media" = stream ] || { echo "--media pcap needs root (SIPp's raw sockets)" >&2; exit 1; }
[ "${DIALTONE_BENCH_NO_BUILD:-0}" = 1 ] || (cd "$root" && cargo build --release --all-features -q -p dialtone-node -p dialtone-loadtest)
bin="${CARGO_TARGET_DIR:-$root/target}/release"
grpc=127.0.0.1:$((port + 2)); metrics=127.0.0.1:$((port + 3))
hz=$(getconf CLK_TCK)

# The callers' audio, once for all steps.
if [ "$media" = pcap ]; then
  "$here/vm-audio.py" --seconds $((seconds + 5)) --pcap "$out/caller.pcap"
  media_ip=127.0.0.2
  action="<exec play_pcap_audio=\"$out/caller.pcap\"/>"
  sdp_port="[media_port]"
else
  "$here/vm-audio.py" --wav "$out/caller.wav"
  media_ip=127.0.0.1
  action="<exec rtp_stream=\"$out/caller.wav,-1,0\"/>"
  sdp_port="[auto_media_port]"
fi
sed -e "s|@MEDIA_ACTION@|$action|" -e "s|@MEDIA_PORT@|$sdp_port|" "$here/sipp/uac_voicemail.xml" > "$out/uac_voicemail.xml"

{ "$bin/dialtone" --version; git -C "$root" rev-parse HEAD; nproc; lscpu | grep 'Model name' || true
  sipp -v 2>&1 | grep -m1 -o 'SIPp v[^ ]*' || true; uname -r
  echo "cmd: $0 --sessions '$sessions' --seconds $seconds --rate $rate --boxes $boxes --media $media --port $port"
} > "$out/info.txt"

node=""; sampler=""; sipp_wrapper=""; data=""
stop() {
  for p in $sampler $sipp_wrapper; do kill -TERM "$p" 2>/dev/null || true; done
  [ -n "$node" ] && { kill -TERM "$node" 2>/dev/null; wait "$node" 2>/dev/null || true; }
  [ -n "$data" ] && rm -rf "$data"
  node=""; sampler=""; sipp_wrapper=""; data=""
}
trap stop EXIT

ticks() { local f; f=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }; f=${f##*) }; echo "$f" | awk '{print $12 + $13}'; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
scrape() { curl -s --max-time 5 "http://$metrics/metrics" || true; }
# The value of metric line $2 (exact name with labels) in the scrape file $1.
metric() { awk -v k="$2" '$1 == k { v = $2 } END { print v + 0 }' "$1"; }

printf 'sessions\tplaced\tanswered\tfailed\tmessages\tlive_max\tsteady_s\tlive_avg\tnode_cpu_pct\tcpu_pct_per_session\trx_pps\ttx_pps\tpps_per_core\tsipp_cpu_pct\thangup_cpu_pct\trss_mb\tlost\tlate\tconcealed\trecorded\tticks\ttick_p50_us\ttick_p99_us\ttick_max_us\tpass\n' > "$out/results.tsv"

for n in $sessions; do
  dir="$out/$n"; mkdir -p "$dir"
  log "step $n: starting a node"
  data=$(mktemp -d "${TMPDIR:-/tmp}/dialtone-vmbench-XXXXXX")
  start_node "$bin/dialtone" "$data" "$dir" --grpc-addr "$grpc" --metrics-addr "$metrics" \
    --sip-addr 127.0.0.1:$port --sip-challenge-md5-first --sip-source-rate 0 --rtp-ports 20000-29999
  cli() { "$bin/dialtone" --server "http://$grpc" "$@"; }

  # Callers [0, N), box owners [N, N + K); caller i -> box N + (i mod K).
  awk -v n="$n" -v k="$boxes" 'BEGIN { print "SEQUENTIAL"
    for (i = 0; i < n + k; i++) printf "user%06d;pw%06dx\n", i, i }' > "$dir/users.csv"
  awk -v n="$n" -v k="$boxes" 'BEGIN { print "SEQUENTIAL"
    for (i = 0; i < n; i++) printf "user%06d;pw%06dx;user%06d\n", i, i, n + i % k }' > "$dir/calls.csv"
  log "step $n: provisioning $n callers and $boxes boxes"
  "$bin/dialtone-load" --server "http://$grpc" provision-csv --domain "$domain" --csv "$dir/users.csv" \
    >> "$dir/provision.log" 2>&1 || { log "provisioning failed: see $dir/provision.log"; exit 1; }
  for k in $(seq 0 $((boxes - 1))); do
    box=$(printf 'user%06d@%s' $((n + k)) "$domain")
    { cli voicemail enable "$box" --pin 246810 --max-messages 1000 --max-message-secs "$max_message_secs" &&
      cli user forward "$box" --always voicemail; } >> "$dir/provision.log" 2>&1 \
      || { log "box $box: setting up failed: see $dir/provision.log"; exit 1; }
  done

  scrape > "$dir/metrics-before.txt"
  # Sampler: "T epoch node_ticks sipp_ticks node_rss_kb" then the media
  # metrics as "M epoch name value", every second.
  sipp_pid=""
  ( while kill -0 "$node" 2>/dev/null; do
      now=$(date +%s.%N); s=$(cat "$dir/sipp.pid" 2>/dev/null || true)
      echo "T $now $(ticks "$node") $( [ -n "$s" ] && ticks "$s" || echo 0) $(rss_kb "$node")"
      scrape | awk -v t="$now" '/^dialtone_media_(sessions_live|rtp_packets_(received|sent)_total) / { print "M", t, $1, $2 }'
      sleep 1
    done ) > "$dir/samples.txt" &
  sampler=$!

  bound=$(( n / rate + seconds + 120 ))
  log "step $n: $n calls at $rate/s, $seconds s each ($media), bounded to $bound s"
  t0=$(date +%s.%N)
  ( ulimit -n "$(ulimit -Hn)" 2>/dev/null || true   # SIPp: sockets (and threads) per call
    exec timeout -k 5 "$bound" sipp 127.0.0.1:$port -sf "$out/uac_voicemail.xml" -inf "$dir/calls.csv" \
      -key domain "$domain" -i 127.0.0.1 -p $sipp_port -mi "$media_ip" -mp $media_port \
      -r "$rate" -rp 1000 -l "$n" -m "$n" -d $((seconds * 1000)) -nostdin -buff_size 4194304 \
      -max_socket 4096 -timeout "${bound}s" -trace_screen -screen_file "$dir/sipp.screen" \
      -trace_stat -stf "$dir/sipp.stat.csv" -fd 1 -trace_err -error_file "$dir/sipp.errors" \
      > "$dir/sipp.stdout" 2> "$dir/sipp.stderr" ) &
  sipp_wrapper=$!
  sleep 1
  # The subshell became `timeout` (exec): SIPp is its child.
  pgrep -P "$sipp_wrapper" -x sipp > "$dir/sipp.pid" 2>/dev/null || true
  sipp_rc=0; wait "$sipp_wrapper" || sipp_rc=$?
  sipp_wrapper=""
  t_end=$(date +%s.%N)
  log "step $n: SIPp exited with $sipp_rc"
  # Hang-ups are done; the last sessions end as their messages are saved.
  for _ in $(seq 60); do
    live=$(scrape | awk '$1 == "dialtone_media_sessions_live" { print $2 + 0 }')
    [ "${live:-0}" = 0 ] && break
    sleep 1
  done
  t_idle=$(date +%s.%N)
  sleep 2   # the sessions' last publication, a last sample
  scrape > "$dir/metrics-after.txt"
  kill -TERM "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true; sampler=""

  messages=0
  for k in $(seq 0 $((boxes - 1))); do
    box=$(printf 'user%06d@%s' $((n + k)) "$domain")
    c=$(cli --json voicemail list "$box" 2>> "$dir/provision.log" \
        | python3 -c 'import json, sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0)
    messages=$((messages + c))
  done
  stop

  # SIPp's figures: calls created, successful and failed (its last stat
  # line); 200 OKs to the INVITE (the first "200 <-" line of its screen).
  read -r placed ok failed < <(awk -F';' 'NR == 1 { for (i = 1; i <= NF; i++) h[$i] = i; next }
      { c = $h["TotalCallCreated"]; s = $h["SuccessfulCall(C)"]; f = $h["FailedCall(C)"] }
      END { print c + 0, s + 0, f + 0 }' "$dir/sipp.stat.csv" 2>/dev/null || echo "0 0 0")
  answered=$(awk '/^ *200 <-/ { for (i = 3; i <= NF; i++) if ($i ~ /^[0-9]+$/) { print $i; exit } }' \
    "$dir/sipp.screen" 2>/dev/null || true)
  answered=${answered:-0}

  # The window figures from the samples.
  read -r live_max steady live_avg node_cpu rx_pps tx_pps sipp_cpu hang_cpu rss_mb < <(
    awk -v t0="$t0" -v d="$seconds" -v hz="$hz" -v t_idle="$t_idle" '
      $1 == "T" { nt++; T[nt] = $2; NC[nt] = $3; SC[nt] = $4; if ($5 > rss) rss = $5 }
      $1 == "M" && $3 == "dialtone_media_sessions_live" { nl++; LT[nl] = $2; LV[nl] = $4
                  if ($4 > max) { max = $4 } }
      $1 == "M" && $3 == "dialtone_media_rtp_packets_received_total" { nr++; RT[nr] = $2; RV[nr] = $4 }
      $1 == "M" && $3 == "dialtone_media_rtp_packets_sent_total" { ns++; ST[ns] = $2; SV[ns] = $4 }
      # The first sample at or after t, the last at or before it.
      function after(t, n, X,   k) { for (k = 1; k <= n; k++) if (X[k] >= t) return k; return 0 }
      function before(t, n, X,   k) { for (k = n; k >= 1; k--) if (X[k] <= t) return k; return 0 }
      END {
        for (k = 1; k <= nl; k++) if (LV[k] >= max) { reached = LT[k]; break }
        w0 = reached + 10; w1 = t0 + d
        a = after(w0, nt, T); b = before(w1, nt, T)
        if (max == 0 || !a || !b || T[b] - T[a] < 5) { steady = "na"; cpu = "na"; sc = "na"; rx = "na"; tx = "na"; avg = "na" }
        else {
          steady = sprintf("%.0f", T[b] - T[a])
          cpu = sprintf("%.1f", 100 * (NC[b] - NC[a]) / hz / (T[b] - T[a]))
          sc = sprintf("%.1f", 100 * (SC[b] - SC[a]) / hz / (T[b] - T[a]))
          ra = after(w0, nr, RT); rb = before(w1, nr, RT)
          rx = (ra && rb && RT[rb] > RT[ra]) ? sprintf("%.0f", (RV[rb] - RV[ra]) / (RT[rb] - RT[ra])) : "na"
          sa = after(w0, ns, ST); sb = before(w1, ns, ST)
          tx = (sa && sb && ST[sb] > ST[sa]) ? sprintf("%.0f", (SV[sb] - SV[sa]) / (ST[sb] - ST[sa])) : "na"
          sum = 0; cnt = 0; for (k = 1; k <= nl; k++) if (LT[k] >= T[a] && LT[k] <= T[b]) { sum += LV[k]; cnt++ }
          avg = cnt ? sprintf("%.0f", sum / cnt) : "na"
        }
        h0 = after(t0 + d, nt, T); h1 = before(t_idle, nt, T)
        hang = (h0 && h1 && T[h1] - T[h0] >= 1) ? sprintf("%.1f", 100 * (NC[h1] - NC[h0]) / hz / (T[h1] - T[h0])) : "na"
        printf "%d %s %s %s %s %s %s %s %.0f\n", max, steady, avg, cpu, rx, tx, sc, hang, rss / 1024
      }' "$dir/samples.txt")

  # The whole step's counts, from the metrics before and after.
  delta() { echo $(( $(metric "$dir/metrics-after.txt" "$1") - $(metric "$dir/metrics-before.txt" "$1") )); }
  lost=$(delta dialtone_media_rtp_packets_lost_total)
  late=$(delta dialtone_media_late_packets_total)
  concealed=$(delta dialtone_media_concealed_frames_total)
  recorded=$(delta dialtone_media_recorded_frames_total)
  ticks_n=$(delta dialtone_media_tick_lateness_us_count)
  quantile() {  # quantile Q: the smallest bucket bound holding a fraction Q of the ticks
    local le
    for le in 100 250 500 1000 2000 5000 10000 20000 50000 100000 250000 +Inf; do
      local c
      c=$(delta "dialtone_media_tick_lateness_us_bucket{le=\"$le\"}")
      if awk -v c="$c" -v t="$ticks_n" -v q="$1" 'BEGIN { exit !(t > 0 && c >= q * t) }'; then echo "$le"; return; fi
    done
    echo na
  }
  p50=$(quantile 0.5); p99=$(quantile 0.99)
  tick_max=$(metric "$dir/metrics-after.txt" dialtone_media_tick_lateness_max_us)
  per_session=$(awk -v c="$node_cpu" -v l="$live_avg" 'BEGIN { if (c == "na" || l == "na" || l == 0) print "na"; else printf "%.3f", c / l }')
  per_core=$(awk -v c="$node_cpu" -v r="$rx_pps" -v t="$tx_pps" 'BEGIN { if (c == "na" || r == "na" || t == "na" || c == 0) print "na"; else printf "%.0f", (r + t) / (c / 100) }')
  pass=no
  if [ "$answered" = "$n" ] && [ "$failed" = 0 ] && [ "$live_max" -ge "$n" ] && [ "$messages" = "$answered" ] \
     && [ "$lost" = 0 ] && [ "$late" = 0 ] && [ "$concealed" = 0 ]; then pass=yes; fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$n" "$placed" "$answered" "$failed" "$messages" "$live_max" "$steady" "$live_avg" "$node_cpu" "$per_session" \
    "$rx_pps" "$tx_pps" "$per_core" "$sipp_cpu" "$hang_cpu" "$rss_mb" "$lost" "$late" "$concealed" "$recorded" \
    "$ticks_n" "$p50" "$p99" "$tick_max" "$pass" >> "$out/results.tsv"
  log "step $n: placed=$placed answered=$answered failed=$failed messages=$messages live_max=$live_max" \
      "node_cpu=$node_cpu% per_session=$per_session% rx=$rx_pps/s tx=$tx_pps/s per_core=$per_core/s" \
      "lost=$lost late=$late concealed=$concealed tick_p99<=$p99 µs max=$tick_max µs pass=$pass"
done

awk -F'\t' 'NR == 1 { printf "|"; for (i = 1; i <= NF; i++) printf " %s |", $i; printf "\n|"
                      for (i = 1; i <= NF; i++) printf "---|"; printf "\n"; next }
            { printf "|"; for (i = 1; i <= NF; i++) printf " %s |", $i; printf "\n" }' "$out/results.tsv" > "$out/results.md"
column -t -s $'\t' "$out/results.tsv" | tee -a "$out/console.log"
echo "results in $out"
