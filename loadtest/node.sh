# Sourced by the load scripts (sip-bench.sh, register-latency.sh, soak.sh,
# tls-register-bench.sh, transport-memory.sh, notify-fanout.sh,
# voicemail-bench.sh, conference-bench.sh).
#
#   start_node NODE_BIN DATA_DIR OUT_DIR [serve options...]
#
# Starts `NODE_BIN serve --data-dir DATA_DIR [options]` in the background
# (stdout in OUT_DIR/node.out, stderr in OUT_DIR/node.log), sets `node` to
# its PID, waits up to 10 s for its ready line, and exports DIALTONE_TOKEN:
# the admin token the node wrote to DATA_DIR/admin.token on its first start
# (dialtone-load and the CLI read it). Exits the script if the node does not
# come up. Set the caller's EXIT trap (which stops `$node`) before calling.
start_node() {
  local bin=$1 data=$2 out=$3
  shift 3
  "$bin" serve --data-dir "$data" "$@" > "$out/node.out" 2> "$out/node.log" &
  node=$!
  for _ in $(seq 100); do grep -q "dialtone ready" "$out/node.out" && break; sleep 0.1; done
  grep -q "dialtone ready" "$out/node.out" || { echo "node did not start; see $out/node.log" >&2; exit 1; }
  DIALTONE_TOKEN=$(cat "$data/admin.token")
  export DIALTONE_TOKEN
}

#   loopback_cert CERT KEY
#
# Writes a self-signed ECDSA P-256 server certificate for 127.0.0.1 (and
# localhost) to CERT and its key to KEY (openssl's output next to CERT as
# CERT.log): what the TLS and WSS benchmarks serve and their clients trust.
loopback_cert() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1,DNS:localhost \
    -addext basicConstraints=critical,CA:FALSE -addext keyUsage=digitalSignature \
    -addext extendedKeyUsage=serverAuth -keyout "$2" -out "$1" 2> "$1.log"
}

#   users_csv N FILE
#
# Writes a SIPp users CSV of N users, user000000;pw000000x and on (the
# passwords `dialtone-load provision-csv` gives them).
users_csv() {
  { echo SEQUENTIAL; for i in $(seq 0 $(($1 - 1))); do printf 'user%06d;pw%06dx\n' "$i" "$i"; done; } > "$2"
}
