#!/usr/bin/env bash
# Where sse-bridge spends its CPU under a fan-out load: one fresh bridge (temp config: /publish
# on, no brokers, admission limits off, as scripts/bench-compare.sh), one sse-loadgen run
# against it, and the bridge profiled while the load runs.
#
#   scripts/profile-load.sh --tool perf      -c 1000 -r 1000 -d 20   # perf record -g (sampled)
#   scripts/profile-load.sh --tool callgrind -c 200  -r 200  -d 10   # instruction counts
#   scripts/profile-load.sh --tool none      -c 1000 -r 1000 -d 30   # just the loadgen figures
#   scripts/profile-load.sh --server nchan --tool perf -c 1000 -r 1000 -d 20   # nginx + nchan instead
#
# Options:
#   --tool perf|callgrind|none   profiler (default perf)
#   --server bridge|nchan        server under load (default bridge; nchan: a private nginx with
#                                bench/nchan/nginx.conf, as scripts/bench-compare.sh; perf or none)
#   -c N, -r RATE, -d SECONDS     connections, events/s over 10 topics, seconds of publishing
#   --bridge-bin PATH            default target/bench/release/sse-bridge
#   --loadgen-bin PATH           default target/bench/release/sse-loadgen
#   --out DIR                    default target/profile/<date-time>
# perf: `perf record -g` on the bridge's pid while the load runs (cpu-clock sampling where the
# machine has no hardware counters), then `perf report --no-children` into OUT/perf.txt.
# callgrind: the bridge runs under `valgrind --tool=callgrind` (about 50 times slower: keep the
# load small); OUT/callgrind.txt is callgrind_annotate's inclusive and self summaries, and the
# loadgen's deliveries divide the total instruction count (OUT/summary.txt). Every run also
# prints the server's user and system CPU per delivery (/proc/<pid>/stat, over the server's
# life: startup and connection setup included). Build with
# `CARGO_TARGET_DIR=target/bench cargo build --release -p sse-bridge -p sse-loadgen`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
tool=perf server=bridge conns=1000 rate=1000 dur=20 out=""
bridge_bin=$ROOT/target/bench/release/sse-bridge
loadgen_bin=$ROOT/target/bench/release/sse-loadgen
while [ $# -gt 0 ]; do
  case "$1" in
    --tool) tool=$2; shift ;;
    --server) server=$2; shift ;;
    -c) conns=$2; shift ;;
    -r) rate=$2; shift ;;
    -d) dur=$2; shift ;;
    --bridge-bin) bridge_bin=$2; shift ;;
    --loadgen-bin) loadgen_bin=$2; shift ;;
    --out) out=$2; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$out" ] || out=$ROOT/target/profile/$(date +%Y%m%d-%H%M%S)-$server-$tool
[ "$server" = bridge ] || [ "$tool" != callgrind ] || { echo "callgrind: bridge only" >&2; exit 2; }
mkdir -p "$out"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
tmp=$(mktemp -d /tmp/sse-profile.XXXXXX)
. scripts/bench-lib.sh
bport=$(free_port); aport=$(free_port)
token="prof-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
bench_bridge_config "$tmp/bridge.toml" "$bport" "$aport" "$token"
pid=""
perf_pid=""
cleanup() {
  [ -z "$perf_pid" ] || { kill -INT "$perf_pid" 2>/dev/null || true; wait "$perf_pid" 2>/dev/null || true; }
  [ -z "$pid" ] || { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
  rm -rf "$tmp"
}
trap cleanup EXIT
pids=""
if [ "$server" = nchan ]; then
  mkdir -p "$tmp/nginx"
  nofile=$(ulimit -n)
  sed -e "s#@NCHAN_MODULE@#/usr/lib/nginx/modules/ngx_nchan_module.so#" -e "s#@NOFILE@#$nofile#" \
      -e "s#@PREFIX@#$tmp/nginx#g" -e "s#@USER@#$(id -un)#" -e "s#@WORKER_CONNECTIONS@#$((nofile - 100))#" \
      -e "s#@PORT@#$bport#g" bench/nchan/nginx.conf >"$tmp/nginx/nginx.conf"
  nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log" >"$out/nginx.log" 2>&1 &
  pid=$!
  for _ in $(seq 150); do (echo >"/dev/tcp/127.0.0.1/$bport") 2>/dev/null && break; sleep 0.1; done
  sleep 0.5
  pids=$(echo "$pid $(pgrep -P "$pid" | tr '\n' ' ')" | xargs | tr ' ' ',')
fi
case "$server-$tool" in
  nchan-*) ;;
  bridge-callgrind)
    valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out" \
      "$bridge_bin" --config "$tmp/bridge.toml" >"$out/bridge.log" 2>&1 &
    pid=$! ;;
  *) "$bridge_bin" --config "$tmp/bridge.toml" >"$out/bridge.log" 2>&1 & pid=$! ;;
esac
[ "$server" = nchan ] || for _ in $(seq 600); do (echo >"/dev/tcp/127.0.0.1/$aport") 2>/dev/null && break; sleep 0.1; done
[ -n "$pids" ] || pids=$pid
if [ "$server" = nchan ]; then sub_path=events pub_path=pub; else sub_path=events pub_path=publish; fi
# The server pid for the loadgen's CPU figures (valgrind runs the bridge in the same pid).
lg_args=(--connections "$conns" --topics 10 --rate "$rate" --duration "$dur" --payload-bytes 256
  --sub-url "http://127.0.0.1:$bport/$sub_path?topic={topic}" --pub-url "http://127.0.0.1:$bport/$pub_path?topic={topic}"
  --pub-conns 10 --source-ips 16 --threads 1 --server-pid "$pids" --json-out "$out/loadgen.jsonl")
[ "$server" = nchan ] || lg_args+=(--pub-token "$token")
[ "$tool" = callgrind ] && lg_args+=(--drain 60 --settle 5)
if [ "$tool" = perf ]; then
  # Sample only while the load runs: start after the connections are open (loadgen settles 1 s).
  ( sleep 3; exec perf record -g -F 999 -o "$out/perf.data" -p "$pids" ) >"$out/perf-record.log" 2>&1 &
  perf_pid=$!
fi
"$loadgen_bin" "${lg_args[@]}" | tee "$out/loadgen.log" | grep -v '^{' || true
cpu_split() { # user and system seconds of the server processes so far
  local u=0 s=0 p f
  for p in ${pids//,/ }; do
    f=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null) || continue
    u=$((u + $(echo "$f" | awk '{print $12}'))); s=$((s + $(echo "$f" | awk '{print $13}')))
  done
  echo "$u $s"
}
if [ "$tool" != callgrind ]; then
  read -r ut st <<<"$(cpu_split)"
  deliveries=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readlines()[-1])["deliveries"])' "$out/loadgen.jsonl")
  python3 -c 'import sys; u,s,d=map(float,sys.argv[1:]); print(f"server CPU over its life: user {u/100:.2f} s, system {s/100:.2f} s; per delivery user {u/100/d*1e6:.2f} us, system {s/100/d*1e6:.2f} us")' \
    "$ut" "$st" "$deliveries" | tee "$out/cpu-split.txt"
fi
if [ -n "$perf_pid" ]; then
  kill -INT "$perf_pid" 2>/dev/null || true; wait "$perf_pid" 2>/dev/null || true; perf_pid=""
  perf report -i "$out/perf.data" --no-children --sort symbol --stdio --percent-limit 0.5 -g none \
    >"$out/perf.txt" 2>/dev/null || true
  perf report -i "$out/perf.data" --children --sort symbol --stdio --percent-limit 2 -g none \
    >"$out/perf-children.txt" 2>/dev/null || true
  echo "== perf (self, top): $out/perf.txt"; grep -v '^#' "$out/perf.txt" | grep -v '^$' | head -40
fi
if [ "$tool" = callgrind ]; then
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""
  deliveries=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readlines()[-1])["deliveries"])' "$out/loadgen.jsonl")
  callgrind_annotate --inclusive=yes "$out/callgrind.out" 2>/dev/null | head -80 >"$out/callgrind-inclusive.txt" || true
  callgrind_annotate "$out/callgrind.out" 2>/dev/null | head -80 >"$out/callgrind.txt" || true
  total=$(grep -m1 -E '^[0-9,]+ .*PROGRAM TOTALS' "$out/callgrind.txt" | awk '{gsub(",","",$1); print $1}')
  echo "instructions $total, deliveries $deliveries, per delivery $((total / deliveries))" | tee "$out/summary.txt"
  echo "== callgrind (self, top): $out/callgrind.txt"; sed -n '1,60p' "$out/callgrind.txt"
fi
echo "== output in $out"
