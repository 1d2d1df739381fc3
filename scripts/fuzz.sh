#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/) for a bounded time each, starting from the seed
# corpus in the repository (fuzz/corpus/<target>/), with the nightly toolchain that is
# installed. New inputs go to a temporary directory, so the repository stays clean.
#
#   scripts/fuzz.sh [seconds-per-target]      (default 60; CI uses a short time, e.g. 30)
#
# Exits non-zero on the first finding; the input that triggered it is written to
# fuzz/artifacts/<target>/ and can be replayed with
#   (cd fuzz && cargo +nightly fuzz run <target> artifacts/<target>/<file>)
# Environment: FUZZ_TOOLCHAIN (default: the first installed nightly), FUZZ_SANITIZER
# (default: address; "none" builds faster), FUZZ_SEED and FUZZ_RUNS (a fixed seed and a run
# count make a run repeatable: CI explores the same inputs every time, so a red CI is a real,
# reproducible finding, and new exploration happens in longer runs by hand).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

secs="${1:-60}"
case "$secs" in '' | *[!0-9]*) echo "usage: $0 [seconds-per-target]" >&2; exit 2 ;; esac
toolchain="${FUZZ_TOOLCHAIN:-$(rustup toolchain list | awk '/^nightly/ { print $1; exit }')}"
if [ -z "$toolchain" ]; then
  echo "no nightly toolchain installed: rustup toolchain install nightly" >&2
  exit 1
fi
sanitizer="${FUZZ_SANITIZER:-address}"
if ! cargo +"$toolchain" fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

cd fuzz
echo "== building fuzz targets ($toolchain, sanitizer $sanitizer)"
cargo +"$toolchain" fuzz build --sanitizer "$sanitizer"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for target in $(cargo +"$toolchain" fuzz list); do
  mkdir -p "$work/$target" "corpus/$target"
  echo "== fuzz $target for ${secs}s"
  # The first corpus directory receives new inputs; the seeds are only read.
  cargo +"$toolchain" fuzz run --sanitizer "$sanitizer" "$target" "$work/$target" "corpus/$target" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
    ${FUZZ_SEED:+-seed="$FUZZ_SEED"} ${FUZZ_RUNS:+-runs="$FUZZ_RUNS"}
done
echo "== fuzzing found nothing"
