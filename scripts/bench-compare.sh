#!/usr/bin/env bash
# sse-bridge and nginx + nchan side by side, on this machine, over loopback only.
#
#   scripts/bench-compare.sh            # the issue's loads (about 5 minutes after the build)
#   scripts/bench-compare.sh --quick    # a smoke run (about 1 minute)
#   scripts/bench-compare.sh --tls      # the same steps over TLS (HTTP/1.1, same test cert)
#
# Starts a release sse-bridge (temp config: /publish on, no brokers) and a private nginx with
# nchan (its own prefix in a temp dir, config from bench/nchan/nginx.conf), then runs the same
# loads against both, alternating server order each round so drift hits both, with
# sse-loadgen publishing through each server's own HTTP publish endpoint:
#   load-1k   1,000 connections x 1,000 events/s over 10 topics, 256-byte payloads
#   load-10k 10,000 connections x    50 events/s over 10 topics, 256-byte payloads
#   idle-20k 20,000 idle connections (capped by RLIMIT_NOFILE): server memory per connection
#   churn    connect / first bytes / close with 200 in parallel (sse-churn): how fast each
#            server opens streams, the cost of a reconnect herd
# Both servers are restarted before each scenario, so every memory figure starts from a fresh
# process. With --tls, a test CA and a certificate for 127.0.0.1 are made here (openssl, EC
# P-256), the bridge serves them with [server.tls] and nginx with `listen ... ssl`, and every
# step (subscribers, publishers, churn) connects over TLS 1.2/1.3 with ALPN http/1.1, trusting
# that CA only. Results: OUT/results.jsonl (one JSON line per run), OUT/summary.md, OUT/compare.png.
#
# Options:
#   --quick              short smoke run (200 and 500 connections, 5 s, 1,000 idle)
#   --rounds N           alternations per scenario (default 1; each round runs both servers)
#   --duration S         seconds of publishing per load run (default 30; quick 5)
#   --out DIR            output directory (default target/bench-compare/<date-time>)
#   --bridge-bin PATH    use this sse-bridge binary instead of building one
#   --loadgen-bin PATH   use this sse-loadgen binary instead of building one
#   --only NAME          run only the scenario NAME (load-1k, load-10k, idle-20k, or quick names)
#   --tls                serve and load both servers over TLS (output directory gets -tls)
# Installs nginx + libnginx-mod-nchan (apt) and matplotlib (pip) if they are missing; --tls
# needs openssl.
# On 2 cores the load generator competes with the server for CPU: read ratios, not absolutes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

quick=0
rounds=1
duration=""
out=""
bridge_bin="${SSE_BRIDGE_BIN:-}"
loadgen_bin="${SSE_LOADGEN_BIN:-}"
only=""
tls=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --rounds) rounds="$2"; shift ;;
    --duration) duration="$2"; shift ;;
    --out) out="$2"; shift ;;
    --bridge-bin) bridge_bin="$2"; shift ;;
    --loadgen-bin) loadgen_bin="$2"; shift ;;
    --only) only="$2"; shift ;;
    --tls) tls=1 ;;
    -h|--help) sed -n '2,34p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$duration" ] || { [ "$quick" = 1 ] && duration=5 || duration=30; }
[ -n "$out" ] || out="$ROOT/target/bench-compare/$(date +%Y%m%d-%H%M%S)$([ "$quick" = 1 ] && echo -quick)$([ "$tls" = 1 ] && echo -tls)"
mkdir -p "$out"
out=$(cd "$out" && pwd)

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

# --- prerequisites -----------------------------------------------------------------------
NCHAN_MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so
if ! command -v nginx >/dev/null || [ ! -f "$NCHAN_MODULE" ]; then
  echo "== installing nginx and libnginx-mod-nchan"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nginx libnginx-mod-nchan
fi
. scripts/bench-lib.sh
bench_prepare
churn_bin="$(dirname "$loadgen_bin")/sse-churn"

# Every process started here gets the most file descriptors it may have.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile=$(ulimit -n)
max_conns=$((nofile - 300))

# --- scenarios -------------------------------------------------------------------------
# name connections events/s topics mode
if [ "$quick" = 1 ]; then
  scenarios=("quick-200 200 200 10 load" "quick-500 500 50 10 load" "quick-idle-1k 1000 0 10 idle")
  idle_wait=3
else
  scenarios=("load-1k 1000 1000 10 load" "load-10k 10000 50 10 load" "idle-20k 20000 0 10 idle")
  idle_wait=10
fi

# --- servers ---------------------------------------------------------------------------
tmp=$(mktemp -d /tmp/sse-bench.XXXXXX)
bridge_pid=""
nginx_pid=""
token="bench-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"

# --- TLS (--tls) -------------------------------------------------------------------------
# A private CA and a server certificate for 127.0.0.1 and localhost, EC P-256 (what a modern
# deployment serves), both servers on the same files; clients trust the CA only.
scheme=http
tls_args=()
if [ "$tls" = 1 ]; then
  command -v openssl >/dev/null || { echo "--tls needs openssl" >&2; exit 1; }
  mkdir -p "$tmp/tls"
  (
    cd "$tmp/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
      -subj "/CN=sse-bench test CA" -keyout ca.key -out ca.crt \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=127.0.0.1" \
      -keyout server.key -out server.csr 2>/dev/null
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
      "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" >server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
      -extfile server.ext -out server.crt 2>/dev/null
  ) || { echo "making the test certificate failed" >&2; exit 1; }
  scheme=https
  tls_args=(--ca-file "$tmp/tls/ca.crt")
fi

stop_servers() {
  if [ -n "$bridge_pid" ]; then
    kill "$bridge_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$bridge_pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$bridge_pid" 2>/dev/null || true
    wait "$bridge_pid" 2>/dev/null || true
    bridge_pid=""
  fi
  if [ -n "$nginx_pid" ]; then
    kill -QUIT "$nginx_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$nginx_pid" 2>/dev/null || break; sleep 0.2; done
    kill -TERM "$nginx_pid" 2>/dev/null || true
    wait "$nginx_pid" 2>/dev/null || true
    nginx_pid=""
  fi
}
cleanup() {
  stop_servers
  cp -f "$tmp"/bridge.log "$tmp"/nginx/error.log "$out"/ 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM


start_servers() {
  bport=$(free_port); aport=$(free_port); nport=$(free_port)
  bench_bridge_config "$tmp/bridge.toml" "$bport" "$aport" "$token"
  if [ "$tls" = 1 ]; then
    printf '[server.tls]\ncert_file = "%s"\nkey_file = "%s"\n' "$tmp/tls/server.crt" "$tmp/tls/server.key" \
      >>"$tmp/bridge.toml"
  fi
  "$bridge_bin" --config "$tmp/bridge.toml" >>"$tmp/bridge.log" 2>&1 &
  bridge_pid=$!
  wait_port "$aport" 15 || { echo "sse-bridge did not start:"; cat "$tmp/bridge.log"; exit 1; }

  mkdir -p "$tmp/nginx"
  sed -e "s#@NCHAN_MODULE@#$NCHAN_MODULE#" -e "s#@NOFILE@#$nofile#" -e "s#@PREFIX@#$tmp/nginx#g" \
      -e "s#@USER@#$(id -un)#" -e "s#@WORKER_CONNECTIONS@#$((nofile - 100))#" -e "s#@PORT@#$nport#g" \
      bench/nchan/nginx.conf >"$tmp/nginx/nginx.conf"
  if [ "$tls" = 1 ]; then
    # TLS 1.2 and 1.3 on the same listener, as the bridge; nginx's other TLS defaults.
    sed -i -e "s#^\( *\)listen \(127.0.0.1:$nport\) backlog=4096;#\1listen \2 ssl backlog=4096;\n\1ssl_certificate $tmp/tls/server.crt;\n\1ssl_certificate_key $tmp/tls/server.key;\n\1ssl_protocols TLSv1.2 TLSv1.3;#" \
      "$tmp/nginx/nginx.conf"
    grep -q "ssl_certificate " "$tmp/nginx/nginx.conf" || { echo "could not add ssl to nginx.conf" >&2; exit 1; }
  fi
  nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log" >>"$tmp/nginx/error.log" 2>&1 &
  nginx_pid=$!
  wait_port "$nport" 15 || { echo "nginx did not start:"; cat "$tmp/nginx/error.log"; exit 1; }
  sleep 0.5
}

server_pids() { # bridge|nchan -> comma-separated pids (nginx: master and workers)
  if [ "$1" = bridge ]; then echo "$bridge_pid"; else
    echo "$nginx_pid $(pgrep -P "$nginx_pid" | tr '\n' ' ')" | xargs | tr ' ' ','
  fi
}

run_one() { # server scenario conns rate topics mode
  local server=$1 name=$2 conns=$3 rate=$4 topics=$5 mode=$6 sub pub tok=()
  if [ "$server" = bridge ]; then
    sub="$scheme://127.0.0.1:$bport/events?topic={topic}"; pub="$scheme://127.0.0.1:$bport/publish?topic={topic}"
    tok=(--pub-token "$token")
  else
    sub="$scheme://127.0.0.1:$nport/events?topic={topic}"; pub="$scheme://127.0.0.1:$nport/pub?topic={topic}"
  fi
  local args=(--label "$server" --scenario "$name" --connections "$conns" --topics "$topics"
    --sub-url "$sub" --server-pid "$(server_pids "$server")" --json-out "$out/results.jsonl"
    --source-ips 16 --threads 1 "${tls_args[@]}")
  if [ "$mode" = idle ]; then
    args+=(--mode idle --duration "$idle_wait")
  else
    # One publish connection per topic: each request waits for its answer, so fewer
    # connections could not hold 1,000 events/s on a busy machine.
    args+=(--mode load --rate "$rate" --duration "$duration" --payload-bytes 256 --pub-url "$pub" "${tok[@]}"
      --pub-conns "$topics")
  fi
  echo "== $name on $server$([ "$tls" = 1 ] && echo " over TLS"): $conns connections, $([ "$mode" = idle ] && echo idle || echo "$rate events/s over $topics topics")"
  "$loadgen_bin" "${args[@]}" | tee -a "$out/loadgen.log" | grep -v '^{' || echo "   (sse-loadgen reported failures; see $out/loadgen.log)"
  sleep 2 # let closed connections leave TIME_WAIT's way before the next run
}

echo "== results in $out (RLIMIT_NOFILE $nofile; $(nproc) cores shared by servers and load generator$([ "$tls" = 1 ] && echo "; over TLS"))"
for sc in "${scenarios[@]}"; do
  read -r name conns rate topics mode <<<"$sc"
  [ -z "$only" ] || [ "$only" = "$name" ] || continue
  if [ "$conns" -gt "$max_conns" ]; then
    echo "   $name: $conns connections exceed RLIMIT_NOFILE $nofile here; running $max_conns"
    conns=$max_conns
  fi
  for r in $(seq "$rounds"); do
    if [ $((r % 2)) = 1 ]; then order="bridge nchan"; else order="nchan bridge"; fi
    for server in $order; do
      stop_servers
      start_servers
      run_one "$server" "$name" "$conns" "$rate" "$topics" "$mode"
    done
  done
done
# Churn: both servers fresh, same client, same order alternation as above.
if [ -z "$only" ] || [ "$only" = churn ]; then
  churn_s=$([ "$quick" = 1 ] && echo 3 || echo 10)
  for r in $(seq "$rounds"); do
    if [ $((r % 2)) = 1 ]; then order="bridge nchan"; else order="nchan bridge"; fi
    for server in $order; do
      stop_servers
      start_servers
      port=$([ "$server" = bridge ] && echo "$bport" || echo "$nport")
      echo "== churn on $server$([ "$tls" = 1 ] && echo " over TLS (a handshake per cycle)"): connect, first bytes, close; 200 in parallel for ${churn_s}s"
      "$churn_bin" --url "$scheme://127.0.0.1:$port/events?topic=churn" --parallel 200 --duration "$churn_s" \
        --label "$server" "${tls_args[@]}" | tee -a "$out/churn.log" || echo "   (sse-churn reported failures)"
      sleep 2
    done
  done
fi
stop_servers

# --- summary and plot --------------------------------------------------------------------
[ -s "$out/results.jsonl" ] && python3 - "$out" "$tls" <<'PY'
import json, sys, os, collections
out = sys.argv[1]
tls = sys.argv[2] == "1"  # --tls: every connection was TLS (HTTP/1.1)
runs = [json.loads(l) for l in open(os.path.join(out, "results.jsonl")) if l.strip()]
by = collections.defaultdict(list)
for r in runs:
    by[(r["scenario"], r["label"])].append(r)
def med(xs):
    xs = sorted(x for x in xs if x is not None)
    return xs[len(xs) // 2] if xs else None
rows = []
hdr = ("| scenario | server | conns ok/failed | events/s | deliveries/s | CPU µs/delivery | p50 ms | p99 ms | p99.9 ms | max ms "
       "| lost/dup/reord | RSS B/conn | PSS B/conn | loadgen CPU % |")
lines = [hdr, "|" + "|".join(["---"] * (hdr.count("|") - 1)) + "|"]
for (sc, label), rs in sorted(by.items(), key=lambda kv: (min(r["connections"] for r in kv[1]), kv[0][0], kv[0][1])):
    r = rs[-1]
    s = r.get("server") or {}
    cpu = med([x.get("server", {}).get("cpu_us_per_delivery") for x in rs])
    p99 = med([x["latency_ms"]["p99"] for x in rs])
    idle = r["mode"] == "idle"
    lines.append("| {} | {} | {}/{} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0f} | {:.0f} | {:.0f} |".format(
        sc, label, r["connections_ok"], r["connections_failed"],
        "idle" if idle else r["rate"], "-" if idle else r["deliveries_per_s"],
        "-" if idle or cpu is None else f"{cpu:.2f}",
        "-" if idle else r["latency_ms"]["p50"], "-" if idle else p99,
        "-" if idle else r["latency_ms"]["p999"], "-" if idle else r["latency_ms"]["max"],
        "-" if idle else f'{r["lost"]}/{r["duplicates"]}/{r["reordered"]}',
        s.get("rss_per_conn_bytes", 0), s.get("pss_per_conn_bytes", 0), r["loadgen"]["cpu_pct"]))
    rows.append((sc, label, r, cpu, p99))
for (sc, label, r, cpu, p99) in rows:
    problems = []
    if r["connections_failed"]:
        problems.append(f'{r["connections_failed"]} connections failed ({r["first_error"]})')
    if r["mode"] == "load" and r.get("publish_rate_achieved", r["rate"]) < 0.95 * r["rate"]:
        problems.append(f'publisher reached only {r["publish_rate_achieved"]} events/s of {r["rate"]}')
    if r["mode"] == "load" and (r["lost"] or r["duplicates"] or r["reordered"]):
        problems.append("lost/duplicate/reordered events")
    if problems:
        lines.append(f"\nWARNING {sc} on {label}: " + "; ".join(problems))
if tls:
    lines.insert(0, "Over TLS (TLS 1.2/1.3, ALPN http/1.1, EC P-256 test certificate) for both servers.\n")
summary = "\n".join(lines)
open(os.path.join(out, "summary.md"), "w").write(summary + "\n")
print(summary)

# Ratios against nchan, per scenario (the issue's targets).
print()
for sc in sorted({k[0] for k in by}):
    b, n = by.get((sc, "bridge")), by.get((sc, "nchan"))
    if not b or not n:
        continue
    if b[-1]["mode"] == "idle":
        bb, nn = b[-1]["server"]["pss_per_conn_bytes"], n[-1]["server"]["pss_per_conn_bytes"]
        print(f"{sc}: PSS per idle connection bridge {bb:.0f} B vs nchan {nn:.0f} B (target: bridge <= 8192 B)")
    else:
        bc = med([x["server"]["cpu_us_per_delivery"] for x in b]); nc = med([x["server"]["cpu_us_per_delivery"] for x in n])
        bp = med([x["latency_ms"]["p99"] for x in b]); np_ = med([x["latency_ms"]["p99"] for x in n])
        if bc and nc:
            print(f"{sc}: CPU per delivery bridge/nchan = {bc / nc:.2f} (target <= 0.5); p99 bridge {bp} ms vs nchan {np_} ms")

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit(0)
load = [r for r in rows if r[2]["mode"] == "load"]
fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
for label, color in (("bridge", "tab:blue"), ("nchan", "tab:orange")):
    pts = sorted((r[2]["connections"], r[3], r[4]) for r in load if r[1] == label and r[3] is not None)
    if pts:
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=label)
        axes[1].plot([p[0] for p in pts], [p[2] for p in pts], "o-", color=color, label=label)
for ax, title, unit in ((axes[0], "Server CPU per delivery", "µs"), (axes[1], "p99 publish→receive latency", "ms")):
    ax.set_xscale("log"); ax.set_xlabel("connections"); ax.set_ylabel(unit); ax.set_title(title)
    ax.grid(True, alpha=0.3); ax.legend()
idle = [r for r in rows if r[2]["mode"] == "idle"]
if idle:
    labels = [f'{r[1]}\n{r[2]["connections_ok"]} conns' for r in idle]
    vals = [r[2]["server"]["pss_per_conn_bytes"] / 1024 for r in idle]
    axes[2].bar(labels, vals, color=["tab:blue" if r[1] == "bridge" else "tab:orange" for r in idle])
    axes[2].axhline(8, color="gray", linestyle="--", label="target 8 KiB")
    axes[2].set_ylabel("KiB (PSS)"); axes[2].set_title("Server memory per idle connection"); axes[2].legend()
quick = "quick" in os.path.basename(out)
durs = sorted({r[2]["duration_s"] for r in load})
fig.suptitle(("QUICK SMOKE RUN — " if quick else "") + "sse-bridge vs nginx+nchan, loopback" + (" over TLS" if tls else "") + ", "
             f"{os.cpu_count()} cores shared with the load generator"
             + (f", {'/'.join(f'{d:g}' for d in durs)} s of publishing per run" if durs else ""))
fig.tight_layout()
fig.savefig(os.path.join(out, "compare.png"), dpi=110)
print(f"\nplot: {os.path.join(out, 'compare.png')}")
PY
if [ -s "$out/churn.log" ]; then
  { echo; echo "Churn (sse-churn, 200 in parallel):"; echo; sed 's/^/    /' "$out/churn.log"; } >>"$out/summary.md"
  cat "$out/churn.log"
fi
echo "== done: $out"
