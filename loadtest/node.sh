# Sourced by the load scripts (sip-bench.sh, register-latency.sh, soak.sh).
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
