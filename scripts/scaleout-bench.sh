#!/usr/bin/env bash
# Scale-out by interest (issue #17): N bridge processes on one nats-server, each with its own
# clients on their own `user.<n>` topics, `nats.interest = "all"` against `"on-demand"`, on this
# machine over loopback.
#
#   scripts/scaleout-bench.sh                  # N = 1, 2, 3 bridges x all, on-demand (~8 min after the build)
#   scripts/scaleout-bench.sh --bridges 3      # the issue's run only: 3 bridges, 30,000 clients, 3,000 events/s
#
# Every run starts its own nats-server (free ports, monitoring on) and N release bridges on it,
# each bridging `user.>` with the run's interest mode (on-demand: `user.>` is the allowlist and
# each client's `user.<n>` is one upstream subscription). Per-IP limits are off, as in the other
# benchmarks: the clients come from a few loopback addresses. Then one `sse-loadgen` per bridge
# (a process holds at most RLIMIT_NOFILE sockets) opens --clients-per-bridge clients, client i
# of bridge b on its own topic user.(b*C + i), and publishes --rate-per-bridge events/s through
# NATS over those users, all load generators over the same window (--start-at-ms). So bridge b's
# clients and their events are the same in every run, and only the number of replicas and the
# interest mode change: with N = 3 and the defaults, 30,000 clients and 3,000 events/s over all
# users, the issue's scenario. While they publish, a sampler reads every bridge's /metrics and
# /proc/<pid>/stat once a second.
#
# Per bridge and run it prints: messages received from the broker per second
# (sse_bridge_events_received_total{source="nats"}), those no client wanted
# (sse_bridge_events_unwanted_total), event copies delivered to streams
# (sse_bridge_deliveries_total), CPU (utime + stime from /proc) and CPU per delivered event;
# and nats-server's CPU. Results: OUT/results.jsonl (the load generators' JSON lines),
# OUT/timeline.csv (the samples), OUT/summary.md and OUT/scaleout.png.
#
# Options:
#   --bridges "1 2 3"          numbers of bridges to run (default "1 2 3")
#   --modes "all on-demand"    interest modes to run (default both)
#   --clients-per-bridge C     clients (and users) per bridge (default 10000)
#   --rate-per-bridge R        events/s published to each bridge's users (default 1000)
#   --duration S               seconds of publishing per run (default 30)
#   --connect-wait S           seconds from the start of the load generators to the start of
#                              publishing, for every client to connect (default 20 + C*N/1000)
#   --payload-bytes B          event payload size (default 128)
#   --source-ips S             client source addresses per load generator (default 8)
#   --out DIR                  output directory (default target/scaleout-bench/<date-time>)
#   --bridge-bin PATH          use this sse-bridge binary instead of building one
#   --loadgen-bin PATH         use this sse-loadgen binary instead of building one
# Installs nats-server (apt) and matplotlib (pip) if they are missing. The bridges' logs go to
# OUT/<run>-bridge<b>.log. On 2 cores the bridges, nats-server and the load generators share
# the CPU: CPU seconds are each process's own, but a busy machine still inflates them.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

bridges_list="1 2 3"
modes="all on-demand"
per_bridge=10000
rate_per_bridge=1000
duration=30
connect_wait=""
payload=128
source_ips=8
out=""
bridge_bin="${SSE_BRIDGE_BIN:-}"
loadgen_bin="${SSE_LOADGEN_BIN:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --bridges) bridges_list="$2"; shift ;;
    --modes) modes="$2"; shift ;;
    --clients-per-bridge) per_bridge="$2"; shift ;;
    --rate-per-bridge) rate_per_bridge="$2"; shift ;;
    --duration) duration="$2"; shift ;;
    --connect-wait) connect_wait="$2"; shift ;;
    --payload-bytes) payload="$2"; shift ;;
    --source-ips) source_ips="$2"; shift ;;
    --out) out="$2"; shift ;;
    --bridge-bin) bridge_bin="$2"; shift ;;
    --loadgen-bin) loadgen_bin="$2"; shift ;;
    -h|--help) sed -n '2,43p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for n in $bridges_list; do
  case "$n" in [1-8]) ;; *) echo "--bridges: 1..8 each" >&2; exit 2 ;; esac
done
for m in $modes; do
  case "$m" in all|on-demand) ;; *) echo "--modes: all, on-demand" >&2; exit 2 ;; esac
done
[ -n "$out" ] || out="$ROOT/target/scaleout-bench/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
out=$(cd "$out" && pwd)

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

# --- prerequisites -----------------------------------------------------------------------
if ! command -v nats-server >/dev/null; then
  echo "== installing nats-server"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nats-server
fi
. scripts/bench-lib.sh
bench_prepare

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile=$(ulimit -n)
if [ "$per_bridge" -gt $((nofile - 300)) ]; then
  echo "--clients-per-bridge $per_bridge exceeds RLIMIT_NOFILE $nofile here (one bridge holds them all)" >&2
  exit 2
fi

# --- processes -------------------------------------------------------------------------
tmp=$(mktemp -d /tmp/sse-scaleout.XXXXXX)
nats_pid=""; sampler_pid=""; bridge_pids=(); loadgen_pids=()

stop_pid() { # pid: SIGTERM, wait up to 15 s, then SIGKILL
  [ -n "$1" ] || return 0
  kill "$1" 2>/dev/null || true
  for _ in $(seq 150); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
stop_all() {
  local p
  for p in "${loadgen_pids[@]}"; do stop_pid "$p"; done
  loadgen_pids=()
  stop_pid "$sampler_pid"; sampler_pid=""
  for p in "${bridge_pids[@]}"; do stop_pid "$p"; done
  bridge_pids=()
  stop_pid "$nats_pid"; nats_pid=""
}
cleanup() { stop_all; rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# bridge_config FILE PORT ADMIN_PORT NATS_PORT MODE
bridge_config() {
  cat >"$1" <<CONFIG
[server]
listen = "127.0.0.1:$2"
heartbeat_interval = "15s"
[admin]
listen = "127.0.0.1:$3"
[limits]
max_streams = 0
max_streams_per_ip = 0
connect_rate_per_ip = 0
[nats]
url = "nats://127.0.0.1:$4"
subjects = ["user.>"]
interest = "$5"
[interest]
# One upstream subscription per client here (each on its own user); no per-address share:
# every client comes from a few loopback addresses.
max_subscriptions = $((per_bridge + 1000))
max_subscriptions_per_ip = 0
[log]
level = "warn"
CONFIG
}

wait_ready() { # admin_port: /readyz 200 with every source connected
  local body=""
  for _ in $(seq 150); do
    body=$(curl -s -m 1 "http://127.0.0.1:$1/readyz" || true)
    case "$body" in *'"ready":true'*) case "$body" in *disconnected*) ;; *) return 0 ;; esac ;; esac
    sleep 0.1
  done
  echo "bridge on admin port $1 not ready: $body" >&2
  return 1
}

# The sampler: once a second, every bridge's counters and CPU, and nats-server's CPU, as CSV
# rows (run, t relative to the publishing start, process, ...). Runs until killed.
sampler() { # run start_ms nats_pid "pid:admin_port ..."
  exec python3 - "$@" >>"$out/timeline.csv" <<'PY'
import os, sys, time, urllib.request
run, start_ms, nats_pid, targets = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split()
tick = os.sysconf("SC_CLK_TCK")
def cpu(pid):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / tick
    except (OSError, IndexError, ValueError):
        return float("nan")
WANT = {
    'sse_bridge_events_received_total{source="nats"}': "received",
    'sse_bridge_events_unwanted_total{source="nats"}': "unwanted",
    "sse_bridge_deliveries_total": "delivered",
    "sse_bridge_open_streams": "streams",
    'sse_bridge_upstream_subscriptions{source="nats"}': "upstream",
}
def scrape(port):
    vals = dict.fromkeys(WANT.values(), 0.0)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    for line in body.splitlines():
        name, _, v = line.rpartition(" ")
        if name in WANT:
            vals[WANT[name]] = float(v)
    return vals
fields = ["received", "unwanted", "delivered", "streams", "upstream"]
while True:
    t = time.time() * 1000 - start_ms
    rows = []
    for i, tp in enumerate(targets):
        pid, port = tp.split(":")
        c = cpu(int(pid))
        v = scrape(port)
        if v is not None:
            rows.append([run, f"{t / 1000:.3f}", f"bridge{i}", f"{c:.2f}"] + [f"{v[k]:g}" for k in fields])
    rows.append([run, f"{t / 1000:.3f}", "nats", f"{cpu(nats_pid):.2f}"] + [""] * len(fields))
    print("\n".join(",".join(r) for r in rows), flush=True)
    time.sleep(max(0.05, 1 - (time.time() * 1000 - start_ms - t) / 1000))
PY
}

run_one() { # bridges mode
  local n=$1 mode=$2 run="$1-$2" i
  local nport mport
  nport=$(free_port); mport=$(free_port)
  nats-server -a 127.0.0.1 -p "$nport" -m "$mport" >"$out/$run-nats.log" 2>&1 &
  nats_pid=$!
  wait_port "$nport" 15 || { echo "nats-server did not start"; cat "$out/$run-nats.log"; exit 1; }
  local ports=() admins=() targets=""
  for i in $(seq 0 $((n - 1))); do
    ports+=("$(free_port)"); admins+=("$(free_port)")
    bridge_config "$tmp/$run-$i.toml" "${ports[$i]}" "${admins[$i]}" "$nport" "$mode"
    "$bridge_bin" --config "$tmp/$run-$i.toml" >"$out/$run-bridge$i.log" 2>&1 &
    bridge_pids+=($!)
    targets+="${bridge_pids[$i]}:${admins[$i]} "
  done
  for i in $(seq 0 $((n - 1))); do wait_ready "${admins[$i]}"; done
  local wait_s=${connect_wait:-$((20 + per_bridge * n / 1000))}
  local start_ms=$(( $(date +%s%3N) + wait_s * 1000 ))
  echo "== $run: $n bridge(s) x $per_bridge clients, $((rate_per_bridge * n)) events/s over $((per_bridge * n)) users," \
    "nats.interest = \"$mode\"; publishing ${wait_s} s from now for ${duration} s"
  echo "   uptime: $(uptime)" | tee -a "$out/uptime.txt"
  sampler "$run" "$start_ms" "$nats_pid" "$targets" &
  sampler_pid=$!
  for i in $(seq 0 $((n - 1))); do
    "$loadgen_bin" --label "$mode" --scenario "$run-bridge$i" \
      --sub-url "http://127.0.0.1:${ports[$i]}/events?topic={topic}" \
      --connections "$per_bridge" --topics "$per_bridge" --topic-prefix user --topic-offset $((i * per_bridge)) \
      --publisher nats --nats "127.0.0.1:$nport" --rate "$rate_per_bridge" --duration "$duration" \
      --payload-bytes "$payload" --server-pid "${bridge_pids[$i]}" --source-ips "$source_ips" \
      --settle 1 --drain 5 --start-at-ms "$start_ms" --json-out "$out/results.jsonl" \
      >"$out/$run-loadgen$i.txt" 2>&1 &
    loadgen_pids+=($!)
  done
  local status=0 p
  for p in "${loadgen_pids[@]}"; do wait "$p" || status=$?; done
  loadgen_pids=()
  for i in $(seq 0 $((n - 1))); do
    grep -v '^{' "$out/$run-loadgen$i.txt" | sed "s/^/   bridge$i: /"
  done
  [ "$status" = 0 ] || echo "   a load generator exited with status $status (3: loss, duplicates or a slow publisher; see above)"
  curl -s -m 5 "http://127.0.0.1:$mport/varz" | python3 -c \
    'import json,sys; v=json.load(sys.stdin); print("   nats-server: %d subscriptions, %d msgs in, %d msgs out" % (v["subscriptions"], v["in_msgs"], v["out_msgs"]))' \
    | tee -a "$out/nats-varz.txt" || true
  stop_all
  sleep 2 # let closed connections leave TIME_WAIT's way before the next run
}

echo "== results in $out (RLIMIT_NOFILE $nofile; $(nproc) cores shared by nats-server, the bridges and the load generators)"
echo "run,t,process,cpu_s,received,unwanted,delivered,streams,upstream" >"$out/timeline.csv"
: >"$out/uptime.txt"
for n in $bridges_list; do
  for mode in $modes; do
    run_one "$n" "$mode"
  done
done

# --- summary and plot --------------------------------------------------------------------
python3 - "$out" "$duration" <<'PY'
import csv, json, math, os, sys, collections
out, duration = sys.argv[1], float(sys.argv[2])
rows = collections.defaultdict(lambda: collections.defaultdict(list))  # run -> process -> [row]
for r in csv.DictReader(open(os.path.join(out, "timeline.csv"))):
    rows[r["run"]][r["process"]].append(r)
lg = collections.defaultdict(dict)  # run -> bridge -> loadgen JSON
for l in open(os.path.join(out, "results.jsonl")):
    if l.strip():
        j = json.loads(l)
        run, _, b = j["scenario"].rpartition("-")
        lg[run][b] = j
# The window: from 2 s after publishing starts to 1 s before it ends (every load generator
# publishes over it).
lo, hi = 2.0, duration - 1.0
def window(samples):
    s = [x for x in samples if lo <= float(x["t"]) <= hi]
    return (s[0], s[-1]) if len(s) >= 2 else (None, None)
def rate(a, b, k):
    return (float(b[k]) - float(a[k])) / (float(b["t"]) - float(a["t"]))
hdr = ("| run | bridge | clients | received from NATS /s | unwanted /s | delivered /s | CPU % of a core "
       "| CPU µs per delivered event | nats-server CPU % | lost / dup | p50 / p99 latency |")
lines = [hdr, "|" + "|".join(["---"] * (hdr.count("|") - 1)) + "|"]
agg = []  # (n, mode, bridge, received/s, delivered/s, cpu µs per delivery)
def run_key(run):
    n, _, mode = run.partition("-")
    return int(n), mode
for run in sorted(rows, key=run_key):
    n, mode = run_key(run)
    na, nb = window(rows[run]["nats"])
    nats_cpu = 100 * rate(na, nb, "cpu_s") if na else float("nan")
    for proc in sorted(p for p in rows[run] if p.startswith("bridge")):
        a, b = window(rows[run][proc])
        if a is None:
            continue
        rec, unw, dl, cpu = (rate(a, b, k) for k in ("received", "unwanted", "delivered", "cpu_s"))
        per = cpu * 1e6 / dl if dl > 0 else float("nan")
        j = lg[run].get(proc, {})
        lat = j.get("latency_ms", {})
        lines.append(f"| {run} | {proc} | {int(float(b['streams']))} | {rec:.0f} | {unw:.0f} | {dl:.0f} | {100 * cpu:.1f} "
                     f"| {per:.1f} | {nats_cpu:.1f} | {j.get('lost', '?')} / {j.get('duplicates', '?')} "
                     f"| {lat.get('p50', '?')} / {lat.get('p99', '?')} ms |")
        agg.append((n, mode, proc, rec, dl, per, 100 * cpu))
summary = "\n".join(lines)
summary += f"\n\nRates over t = {lo:g}..{hi:g} s of the {duration:g} s of publishing (the sampler's first and last reading in it)."
open(os.path.join(out, "summary.md"), "w").write(summary + "\n")
print(summary)

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit(0)
fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
colors = {"all": "tab:red", "on-demand": "tab:green"}
for mode in ("all", "on-demand"):
    pts = [x for x in agg if x[1] == mode]
    if not pts:
        continue
    ns = sorted({x[0] for x in pts})
    mean = lambda i, n: sum(x[i] for x in pts if x[0] == n) / len([x for x in pts if x[0] == n])
    for ax, i in ((axes[0], 3), (axes[1], 5), (axes[2], 6)):
        ax.scatter([x[0] for x in pts], [x[i] for x in pts], color=colors[mode], alpha=0.5, s=18)
        ax.plot(ns, [mean(i, n) for n in ns], color=colors[mode], marker="o", label=f'interest = "{mode}"')
    axes[0].plot(ns, [mean(4, n) for n in ns], color=colors[mode], ls=":", lw=1,
                 label=f'delivered /s per bridge ("{mode}")')
axes[0].set_title("Messages received from NATS per second, per bridge")
axes[1].set_title("Bridge CPU per delivered event (µs)")
axes[2].set_title("Bridge CPU (% of one core)")
for ax in axes:
    ax.set_xlabel("bridges (each: its own clients and users)")
    ax.set_xticks(sorted({x[0] for x in agg}))
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
fig.suptitle("Scale-out by interest: per-bridge cost as replicas are added "
             f"({os.cpu_count()} cores shared by NATS, the bridges and the load generators)")
fig.tight_layout()
fig.savefig(os.path.join(out, "scaleout.png"), dpi=100)
print(f"\nplot: {os.path.join(out, 'scaleout.png')}")
PY
echo "== done: $out"
