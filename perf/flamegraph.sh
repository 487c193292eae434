#!/usr/bin/env bash
# Records the release server under a loadgen scenario with `perf record -g`
# and renders an SVG flame graph with inferno (installed on first use:
# `cargo install inferno`). See perf/README.md for how to read it.
#
# Usage: perf/flamegraph.sh [loadgen args...]
#   default: --scenario direct --connections 4000 --rate 4000 --duration 20
# Env: OUT (default perf/out, git-ignored), FREQ (sampling Hz, default 499),
# MINWIDTH (inferno --minwidth in pixels, default 0.5: frames narrower than
# that are left out, which keeps the SVG around 200 KB instead of several MB).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
OUT=${OUT:-perf/out}
FREQ=${FREQ:-499}
MINWIDTH=${MINWIDTH:-0.5}
mkdir -p "$OUT"
command -v perf >/dev/null || { echo "perf not installed (apt-get install linux-perf / linux-tools)"; exit 1; }
if ! command -v inferno-flamegraph >/dev/null; then
    cargo install inferno
fi
[ -x target/release/ringchat ] && [ -x target/release/loadgen ] || cargo build --release -p ringchat -p loadgen
ARGS=("$@")
[ ${#ARGS[@]} -gt 0 ] || ARGS=(--scenario direct --connections 4000 --rate 4000 --duration 20)
WORK=$(mktemp -d /tmp/ringchat-perf.XXXXXX)
PERF_PID=
cleanup() {
    [ -z "$PERF_PID" ] || kill -INT "$PERF_PID" 2>/dev/null || true
    stop_server; rm -rf "$WORK"
}
trap cleanup EXIT
target/release/ringchat provision --data-dir "$WORK/data" --users 20000 --friends-pairs \
    --groups 2000 --group-size 10 --fast-hash $(insecure_fast_hash target/release/ringchat)
start_server target/release/ringchat "$WORK/data" "$OUT/server.log"
# The release profile keeps debug=1, so frames resolve to functions; DWARF
# unwinding is more accurate than frame pointers for inlined async code.
perf record -F "$FREQ" -g --call-graph dwarf,16384 -p "$SERVER_PID" -o "$OUT/perf.data" &
PERF_PID=$!
sleep 1
target/release/loadgen --server "$SERVER_ADDR" --server-pid "$SERVER_PID" --report "$OUT/report" "${ARGS[@]}" || true
kill -INT "$PERF_PID"; wait "$PERF_PID" || true; PERF_PID=
perf script -i "$OUT/perf.data" 2>/dev/null | inferno-collapse-perf > "$OUT/stacks.folded"
inferno-flamegraph --minwidth "$MINWIDTH" --title "ringchat server: ${ARGS[*]}" < "$OUT/stacks.folded" > "$OUT/flamegraph.svg"
echo "wrote $OUT/flamegraph.svg ($(wc -l < "$OUT/stacks.folded") unique stacks)"
