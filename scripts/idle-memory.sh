#!/usr/bin/env bash
# Heap and RSS per idle SSE connection of one sse-bridge binary (issue #5's memory target).
#
#   scripts/idle-memory.sh --bridge-bin target/bench/release/sse-bridge \
#       --loadgen-bin target/bench/release/sse-loadgen --connections 2000
#
# Starts a fresh bridge (temp config: /publish on, no brokers, admission limits off, log level
# warn), reads the admin metric sse_bridge_heap_allocated_bytes (jemalloc's live heap) and the
# process's VmRSS, opens N idle streams with `sse-loadgen --mode idle`, waits until the bridge
# counts N open streams plus 2 s, reads both again and prints (after - before) / N.
# Build the binaries first, e.g. in their own target dir so the debug build is left alone:
#   CARGO_TARGET_DIR=target/bench cargo build --release -p sse-bridge -p sse-loadgen
set -euo pipefail
cd "$(dirname "$0")/.."

bridge_bin=target/bench/release/sse-bridge
loadgen_bin=target/bench/release/sse-loadgen
conns=2000
while [ $# -gt 0 ]; do
  case "$1" in
    --bridge-bin) bridge_bin="$2"; shift ;;
    --loadgen-bin) loadgen_bin="$2"; shift ;;
    --connections) conns="$2"; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

. scripts/bench-lib.sh
bport=$(free_port)
aport=$(free_port)
tmp=$(mktemp -d)
trap 'kill "$bridge_pid" 2>/dev/null; rm -rf "$tmp"' EXIT
bench_bridge_config "$tmp/bridge.toml" "$bport" "$aport" "idle-memory-token-0123456789"
"$bridge_bin" --config "$tmp/bridge.toml" >"$tmp/bridge.log" 2>&1 &
bridge_pid=$!

metric() { curl -sf "http://127.0.0.1:$aport/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
rss() { awk '/^VmRSS/ { print $2 * 1024 }' "/proc/$bridge_pid/status"; }
for _ in $(seq 150); do metric sse_bridge_open_streams >/dev/null 2>&1 && break; sleep 0.1; done
sleep 1
heap0=$(metric sse_bridge_heap_allocated_bytes)
rss0=$(rss)

"$loadgen_bin" --mode idle -c "$conns" -d 20 --sub-url "http://127.0.0.1:$bport/events?topic={topic}" \
  --server-pid "$bridge_pid" --source-ips 16 --threads 1 >"$tmp/loadgen.log" 2>&1 &
lg_pid=$!
for _ in $(seq 600); do [ "$(metric sse_bridge_open_streams)" = "$conns" ] && break; sleep 0.1; done
[ "$(metric sse_bridge_open_streams)" = "$conns" ] || { echo "only $(metric sse_bridge_open_streams) streams opened"; exit 1; }
sleep 2
heap1=$(metric sse_bridge_heap_allocated_bytes)
rss1=$(rss)
wait "$lg_pid" || true

echo "binary          $bridge_bin"
echo "connections     $conns idle streams"
echo "heap            $heap0 -> $heap1 B: $(( (heap1 - heap0) / conns )) B per connection"
echo "RSS             $rss0 -> $rss1 B: $(( (rss1 - rss0) / conns )) B per connection"
echo "sse-loadgen     $(grep 'server memory' "$tmp/loadgen.log" | sed 's/^ *server memory *//')"
