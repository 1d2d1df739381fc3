#!/usr/bin/env bash
# Runs the whole test suite. On a fresh Debian machine it first installs what the tests need
# and the machine lacks: nats-server and redis-server (tests start their own on free ports),
# Chromium and Node.js (the real-browser EventSource test), and the harness's npm package.
# Extra arguments go to `cargo test` (e.g. scripts/test.sh --test delivery).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
command -v redis-server >/dev/null || missing+=(redis-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)
{ command -v node >/dev/null && command -v npm >/dev/null; } || missing+=(nodejs npm)
# curl --http2 (tests/tls.rs: HTTP/2 over TLS); redis-server --tls-port and --sentinel and
# redis-cli --cluster (tests/broker_auth.rs) come with the Debian redis-server and redis-tools.
# The sharded pub/sub tests (SSUBSCRIBE) need Redis 7: Debian 12's redis-server is 7.0.
command -v curl >/dev/null || missing+=(curl)
command -v redis-cli >/dev/null || missing+=(redis-tools)
. scripts/apt-lib.sh
apt_install ${missing[@]+"${missing[@]}"}
# Debian installs nats-server in /usr/sbin, which is not on every user's PATH.
export PATH="$PATH:/usr/sbin"

if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "== installing the browser test harness (npm ci)"
  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
fi

echo "== cargo test (every crate, every target: unit, integration, the fan-out allocation check)"
mkdir -p target
set +e
cargo test --workspace --all-targets --no-fail-fast "$@" 2>&1 | tee target/test-output.log
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "suite: %d passed, %d failed\n", p, f }' target/test-output.log
exit "$status"
