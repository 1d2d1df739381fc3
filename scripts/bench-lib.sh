# Shared by the benchmark scripts (sourced, not run): a free loopback port, and the bridge
# configuration every benchmark runs, so the figures of different scripts are comparable.

# A port that is free now (bind-and-release; the caller binds it soon after).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_port PORT SECONDS: until something listens on 127.0.0.1:PORT (non-zero after SECONDS).
wait_port() { # port seconds
  for _ in $(seq $(($2 * 10))); do
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# bench_bridge_config FILE BRIDGE_PORT ADMIN_PORT TOKEN
# A bridge with POST /publish on (TOKEN) and no brokers. The load comes from a few loopback
# addresses, so per-IP admission limits are off (nginx + nchan has none either); 0 means
# unlimited. Heartbeats every 15 s, warnings only in the log.
bench_bridge_config() {
  cat >"$1" <<CONFIG
[server]
listen = "127.0.0.1:$2"
heartbeat_interval = "15s"
[admin]
listen = "127.0.0.1:$3"
[publish]
token = "$4"
[limits]
max_streams = 0
max_streams_per_ip = 0
connect_rate_per_ip = 0
[log]
level = "warn"
CONFIG
}

# bench_prepare: what every benchmark needs before it runs: matplotlib for its plot (pip, if
# missing), and release binaries of the bridge and the load generator unless $bridge_bin and
# $loadgen_bin already name them (the caller's options); sets both.
bench_prepare() {
  if ! python3 -c 'import matplotlib' 2>/dev/null; then
    echo "== installing matplotlib (pip)"
    python3 -m pip install -q matplotlib || echo "warning: no matplotlib; the plot will be skipped" >&2
  fi
  if [ -z "$bridge_bin" ] || [ -z "$loadgen_bin" ]; then
    echo "== building release binaries"
    cargo build --release --quiet -p sse-bridge -p sse-loadgen --bins
    tdir="${CARGO_TARGET_DIR:-$ROOT/target}"
    [ -n "$bridge_bin" ] || bridge_bin="$tdir/release/sse-bridge"
    [ -n "$loadgen_bin" ] || loadgen_bin="$tdir/release/sse-loadgen"
  fi
}
