#!/usr/bin/env bash
# A rolling deploy between two real sse-bridge processes, with browser-like clients, on this
# machine over loopback (issue #12, "Rollout benchmark").
#
#   scripts/rollout-bench.sh              # scenarios a, b, c at 5,000 clients, a-10k, b-10k
#   scripts/rollout-bench.sh --only a     # one scenario
#
# Each scenario starts its own nats-server with JetStream (free ports, temp store), creates the
# stream ROLL (subjects roll.js.>), and starts bridges A and B on it, both bridging the
# JetStream stream (durable topic roll.js.x) and core NATS roll.core.> (ring-only topic
# roll.core.x). `sse-loadgen --mode rollout` then opens N EventSource-like clients on A, each
# one stream with both topics, publishes 200 events/s in all through NATS, SIGTERMs A once
# everyone is steady, and follows the clients to B (A, B is the stand-in load balancer's
# order: a reconnect goes to the next live address). Scenarios:
#   a      paced drain: the default server.drain_spread (0.5 x drain_timeout 10 s)
#   b      all at once: server.drain_spread = 0 (every stream ends at once; each still gets
#          its own jittered retry: of server.retry +-50 %)
#   c      as a, and B with limits.connect_rate_per_ip = 100 (burst 100): refused clients are
#          told when to come back and return later (5,000 behind one address: about 50 s)
#   a-10k, b-10k   a and b with 10,000 clients (the listen-overflow figure)
# Per-IP limits are off unless the scenario sets them (as in the other benchmarks), and all
# clients come from one source address, as behind an ingress that hides client addresses.
# Prints each run's figures; OUT/results.jsonl (one JSON line per run), OUT/timeline.csv
# (connects per 100 ms at each bridge), OUT/summary.md and OUT/rollout.png.
#
# Options:
#   --only NAME          run only the scenario NAME (repeatable)
#   --clients N          clients of a, b, c (default 5000); --big N for a-10k, b-10k (0: skip)
#   --rate R             events per second over both topics (default 200); --big-rate R for
#                        a-10k and b-10k (default: the same)
#   --source-ips S       source addresses of the clients (default 1)
#   --out DIR            output directory (default target/rollout-bench/<date-time>)
#   --bridge-extra TOML  appended to both bridges' configuration (a section of its own, e.g.
#                        $'[resume]\nmax_concurrent_reads = 64'), for experiments
#   --bridge-bin PATH    use this sse-bridge binary instead of building one
#   --loadgen-bin PATH   use this sse-loadgen binary instead of building one
# Installs nats-server (apt) and matplotlib (pip) if they are missing. A's and B's logs go to
# OUT/<scenario>-{a,b}.log. The listen-overflow figures are the kernel's counters for the
# whole network namespace: anything else running here counts too.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

only=()
clients=5000
big=10000
rate=200
big_rate=""
source_ips=1
out=""
bridge_bin="${SSE_BRIDGE_BIN:-}"
bridge_extra=""
loadgen_bin="${SSE_LOADGEN_BIN:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --only) only+=("$2"); shift ;;
    --clients) clients="$2"; shift ;;
    --big) big="$2"; shift ;;
    --rate) rate="$2"; shift ;;
    --big-rate) big_rate="$2"; shift ;;
    --source-ips) source_ips="$2"; shift ;;
    --out) out="$2"; shift ;;
    --bridge-bin) bridge_bin="$2"; shift ;;
    --bridge-extra) bridge_extra="$2"; shift ;;
    --loadgen-bin) loadgen_bin="$2"; shift ;;
    -h|--help) sed -n '2,39p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$out" ] || out="$ROOT/target/rollout-bench/$(date +%Y%m%d-%H%M%S)"
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

# Every process started here gets the most file descriptors it may have.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile=$(ulimit -n)

# --- scenarios -------------------------------------------------------------------------
[ -n "$big_rate" ] || big_rate=$rate
# name clients events/s drain_spread connect_rate_per_ip(B)
scenarios=("a $clients $rate 0.5 0" "b $clients $rate 0 0" "c $clients $rate 0.5 100")
if [ "$big" -gt 0 ]; then
  scenarios+=("a-10k $big $big_rate 0.5 0" "b-10k $big $big_rate 0 0")
fi

# --- processes -------------------------------------------------------------------------
tmp=$(mktemp -d /tmp/sse-rollout.XXXXXX)
nats_pid=""; a_pid=""; b_pid=""

stop_pid() { # pid: SIGTERM, wait up to 15 s, then SIGKILL
  [ -n "$1" ] || return 0
  kill "$1" 2>/dev/null || true
  for _ in $(seq 150); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
stop_all() {
  stop_pid "$a_pid"; a_pid=""
  stop_pid "$b_pid"; b_pid=""
  stop_pid "$nats_pid"; nats_pid=""
}
cleanup() { stop_all; rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM


# Creates the JetStream stream ROLL (subjects roll.js.>) over the NATS text protocol.
create_stream() { # nats_port
  python3 - "$1" <<'PY'
import json, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
f = s.makefile("rb")
f.readline()  # INFO
cfg = json.dumps({"name": "ROLL", "subjects": ["roll.js.>"], "storage": "file",
                  "retention": "limits", "max_msgs": -1, "max_bytes": -1, "max_age": 0,
                  "num_replicas": 1, "discard": "old"}).encode()
s.sendall(b'CONNECT {"verbose":false}\r\nSUB _INBOX.roll 1\r\n'
          + b"PUB $JS.API.STREAM.CREATE.ROLL _INBOX.roll %d\r\n%s\r\n" % (len(cfg), cfg))
while True:
    line = f.readline()
    if line.startswith(b"MSG"):
        reply = f.read(int(line.split()[-1]) + 2)
        if b'"error"' in reply:
            sys.exit("stream create failed: " + reply.decode())
        break
    if line.startswith(b"PING"):
        s.sendall(b"PONG\r\n")
    if not line:
        sys.exit("NATS closed the connection")
PY
}

# bridge_config FILE PORT ADMIN_PORT NATS_PORT DRAIN_SPREAD CONNECT_RATE
bridge_config() {
  cat >"$1" <<CONFIG
[server]
listen = "127.0.0.1:$2"
drain_spread = $5
[admin]
listen = "127.0.0.1:$3"
[limits]
max_streams = 0
max_streams_per_ip = 0
connect_rate_per_ip = $6
[nats]
url = "nats://127.0.0.1:$4"
subjects = ["roll.core.>"]
[jetstream]
url = "nats://127.0.0.1:$4"
streams = ["ROLL"]
[log]
level = "warn"
$bridge_extra
CONFIG
}

wait_ready() { # admin_port: /readyz 200 with every source connected
  for _ in $(seq 150); do
    body=$(curl -s -m 1 "http://127.0.0.1:$1/readyz" || true)
    case "$body" in *'"ready":true'*) case "$body" in *disconnected*) ;; *) return 0 ;; esac ;; esac
    sleep 0.1
  done
  echo "bridge on admin port $1 not ready: $body" >&2
  return 1
}

run_scenario() { # name clients events/s drain_spread connect_rate_b
  local name=$1 n=$2 ev_rate=$3 spread=$4 rate_b=$5
  if [ "$n" -gt $((nofile - 200)) ]; then
    echo "== $name: $n clients exceed RLIMIT_NOFILE $nofile here; skipped"
    return 0
  fi
  local nport aport aadm bport badm
  nport=$(free_port)
  mkdir -p "$tmp/$name/js"
  nats-server -a 127.0.0.1 -p "$nport" -js -sd "$tmp/$name/js" >"$out/$name-nats.log" 2>&1 &
  nats_pid=$!
  wait_port "$nport" 15 || { echo "nats-server did not start"; cat "$out/$name-nats.log"; exit 1; }
  create_stream "$nport"
  aport=$(free_port); aadm=$(free_port); bport=$(free_port); badm=$(free_port)
  bridge_config "$tmp/$name/a.toml" "$aport" "$aadm" "$nport" "$spread" 0
  bridge_config "$tmp/$name/b.toml" "$bport" "$badm" "$nport" "$spread" "$rate_b"
  "$bridge_bin" --config "$tmp/$name/a.toml" >"$out/$name-a.log" 2>&1 &
  a_pid=$!
  "$bridge_bin" --config "$tmp/$name/b.toml" >"$out/$name-b.log" 2>&1 &
  b_pid=$!
  wait_ready "$aadm"; wait_ready "$badm"
  echo "== $name: $n clients on A (:$aport), $ev_rate events/s, SIGTERM A, move to B (:$bport);" \
    "drain_spread $spread; B connect_rate_per_ip $rate_b"
  local status=0
  "$loadgen_bin" --mode rollout --label bridge --scenario "$name" --connections "$n" \
    --targets "127.0.0.1:$aport,127.0.0.1:$bport" --durable-topic roll.js.x --core-topic roll.core.x \
    --nats "127.0.0.1:$nport" --rate "$ev_rate" --payload-bytes 64 --sigterm-pid "$a_pid" \
    --source-ips "$source_ips" --steady 3 --after 3 --drain 10 --back-timeout 180 \
    --json-out "$out/results.jsonl" --timeline-out "$out/timeline.csv" \
    2> >(tee -a "$out/loadgen.log" >&2) | tee -a "$out/loadgen.log" | grep -v '^{' || status=$?
  # A exits by itself once drained; its exit status says whether it drained in time.
  local a_status=0
  for _ in $(seq 200); do kill -0 "$a_pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$a_pid" 2>/dev/null; then
    echo "   A (pid $a_pid) still running 20 s after the run; stopping it"
    stop_pid "$a_pid"
  else
    wait "$a_pid" || a_status=$?
    echo "   A exited with status $a_status"
  fi
  a_pid=""
  [ "$status" = 0 ] || echo "   sse-loadgen exit status $status (3: a figure missed its target; see above)"
  # B's own account: streams it closed (and why), refusals, resume reads, gap events.
  curl -s -m 5 "http://127.0.0.1:$badm/metrics" >"$out/$name-b.metrics" || true
  grep -E '^sse_bridge_[a-z_]*(closed|disconnects|rejected|gap|resume_broker_reads|resume_spills|shed|open_streams)[a-z_]*[{ ]' "$out/$name-b.metrics" \
    | grep -v ' 0$' | sed 's/^/   B: /' || true
  stop_pid "$b_pid"; b_pid=""
  stop_pid "$nats_pid"; nats_pid=""
  sleep 2 # let closed connections leave TIME_WAIT's way before the next run
}

echo "== results in $out (RLIMIT_NOFILE $nofile; $(nproc) cores shared by nats-server, both bridges and the clients)"
: >"$out/timeline.csv"
for sc in "${scenarios[@]}"; do
  read -r name n ev_rate spread rate_b <<<"$sc"
  if [ ${#only[@]} -gt 0 ] && ! printf '%s\n' "${only[@]}" | grep -qx "$name"; then continue; fi
  run_scenario "$name" "$n" "$ev_rate" "$spread" "$rate_b"
done

# --- summary and plot --------------------------------------------------------------------
python3 - "$out" <<'PY'
import csv, json, os, sys, collections
out = sys.argv[1]
runs = [json.loads(l) for l in open(os.path.join(out, "results.jsonl")) if l.strip()]
hdr = ("| scenario | clients | events/s | back | dead | JetStream lost / dup | JetStream not yet delivered at the end (clients) "
       "| core gap events (clients) "
       "| all back after | p50 / p99 back | ListenOverflows | peak connects at B | B slow-consumer cuts |")
lines = [hdr, "|" + "|".join(["---"] * (hdr.count("|") - 1)) + "|"]
def slow_cuts(name):
    try:
        for l in open(os.path.join(out, f"{name}-b.metrics")):
            if l.startswith('sse_bridge_disconnects_total{reason="slow_consumer"}'):
                return int(float(l.split()[-1]))
    except OSError:
        return None
    return 0
for r in runs:
    b = r["timeline"]["targets"][1]
    peak = max(b["connects"] or [0])
    lines.append("| {} | {} | {:g} | {} | {} | {} / {} | {} ({}) | {} ({}) | {} s | {} / {} s | {} | {} /100 ms | {} |".format(
        r["scenario"], r["clients"], r["rate"], r["back"], r["dead"], sum(r["durable_lost"]),
        sum(r["durable_duplicated"]), sum(r.get("durable_undelivered", [0])),
        sum(r.get("durable_clients_behind_at_end", [0])), r["gap_events"][1], r["clients_with_gap"][1], r["all_back_s"],
        r["back_p50_s"], r["back_p99_s"], r["listen_overflows"], peak, slow_cuts(r["scenario"])))
summary = "\n".join(lines)
open(os.path.join(out, "summary.md"), "w").write(summary + "\n")
print(summary)
for r in runs:
    bad = []
    if r["back"] != r["clients"]: bad.append(f'{r["clients"] - r["back"]} clients not back')
    if r["dead"]: bad.append(f'{r["dead"]} dead ({r["first_dead"]})')
    if sum(r["durable_lost"]) or sum(r["durable_duplicated"]): bad.append("JetStream events lost or duplicated")
    if sum(r.get("durable_undelivered", [0])):
        bad.append(f'{sum(r["durable_clients_behind_at_end"])} clients had not caught up when the run stopped')
    if r["listen_overflows"]: bad.append(f'{r["listen_overflows"]} listen overflows')
    if bad: print(f'WARNING {r["scenario"]}: ' + "; ".join(bad))

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit(0)
# scenario -> target -> column -> [(t, value per second)]
series = collections.defaultdict(lambda: collections.defaultdict(lambda: collections.defaultdict(list)))
order = collections.defaultdict(list)
for row in csv.DictReader(open(os.path.join(out, "timeline.csv"))):
    if row["scenario"] == "scenario":
        continue
    sc, tg = row["scenario"], row["target"]
    if tg not in order[sc]:
        order[sc].append(tg)
    for col in ("connects", "admitted", "refused", "ended"):
        series[sc][tg][col].append((int(row["t_ms"]) / 1000, int(row[col]) * 10))
labels = {"a": "a: paced drain (default), 5,000", "b": "b: all at once (drain_spread 0), 5,000",
          "c": "c: paced, B connect_rate_per_ip 100", "a-10k": "a-10k: paced, 10,000",
          "b-10k": "b-10k: all at once, 10,000"}
herd = [sc for sc in order if sc != "c"]
fig, axes = plt.subplots(3, 1, figsize=(12, 11))
def line(ax, pts, **kw):
    ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.1, **kw)
for sc in herd:
    a, b = order[sc][0], order[sc][1]
    line(axes[0], series[sc][b]["connects"], label=labels.get(sc, sc))
    line(axes[1], series[sc][a]["ended"], label=labels.get(sc, sc))
axes[0].set_title("Connects per second arriving at B (100 ms buckets)")
axes[1].set_title("Streams per second ended by A after SIGTERM")
if "c" in order:
    b = order["c"][1]
    for col, color in (("connects", "tab:blue"), ("admitted", "tab:green"), ("refused", "tab:red")):
        pts = series["c"][b][col]  # per 1 s here: 100 ms buckets of a 100 /s rate are mostly noise
        secs = [(pts[i][0], sum(p[1] for p in pts[i:i + 10]) / 10) for i in range(0, len(pts), 10)]
        line(axes[2], secs, label=f"{col} at B", color=color, drawstyle="steps-post")
    axes[2].set_title("c: B with connect_rate_per_ip = 100, all clients behind one address (1 s bins)")
for ax in axes:
    ax.set_ylabel("per second"); ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper right")
    ax.axvline(0, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("seconds after SIGTERM to A")
fig.suptitle(f"Rollout A → B with browser-like clients ({os.cpu_count()} cores shared by NATS, both bridges "
             "and the clients)")
fig.tight_layout()
fig.savefig(os.path.join(out, "rollout.png"), dpi=100)
print(f"\nplot: {os.path.join(out, 'rollout.png')}")
PY
echo "== done: $out"
