#!/usr/bin/env bash
# Soak test: one server for N minutes (default 30), cycling
#   1. mixed load (80 % direct, 20 % group) - CONNS connections at RATE msgs/s
#      for LOAD_SECS (3000 x 1500/s x 180 s; 60 s when --minutes < 10),
#   2. a login storm (everyone drops and resumes with its token),
#   3. an idle gap - nothing connected for IDLE_SECS (90 s; 45 s when short:
#      owner state is dropped after 60 s unused and the heap trimmed right
#      after, so a long gap's last samples show the settled footprint).
#      Always longer than 35 s: an old bug killed every shard after ~35 s
#      without traffic (docs/WAKEUPS.md), and only a server left alone shows
#      that kind of thing. The last idle gap stretches to the end of the run.
# Every loadgen run checks exactly-once, in-order delivery (and that every
# connection logged in). A sampler (bench/soak_tool.py) records every 10 s the
# server's RSS, open fds, CPU and the worst p99 of loadgen's 10 s windows
# (`loadgen --window-report`), scans the server log for panics, and during
# idle gaps sends a message through the server (2 probe users log in, send,
# receive) so a deaf server is caught while idle.
#
# Fails on: lost/duplicated/out-of-order messages or a failed loadgen run,
# a panic in the server log, the server dying, a failed liveness probe, the
# server not stopping on SIGTERM, idle RSS that keeps growing (the settled
# anonymous RSS at the end of each idle gap: median of the last third of the
# gaps > median of the middle third + 10 % and + 4 MiB, see soak_tool.py
# analyze), or idle fds that do not return to their floor.
#
# Usage: bench/soak.sh [--minutes N] [--out DIR]
#   --minutes N  run length (default 30; at least 3, which CI can afford)
#   --out DIR    report directory (default bench/results/soak-<UTC timestamp>)
# Env: BIN (binaries dir, default target/release; built if missing there),
#      LOADGEN (loadgen binary, default $BIN/loadgen),
#      CONNS (3000), RATE (1500), STORM_CONNS (CONNS), LOAD_SECS, IDLE_SECS,
#      SHARDS (server --shards, default: one per CPU), RESULTS_MD (file to
#      append the row to, default bench/RESULTS.md; `-` for none).
# Writes DIR/samples.csv, phases.csv, runs.csv, windows.jsonl, summary.txt,
# soak.svg, server.log and runs/ (loadgen reports); appends a row to
# bench/RESULTS.md. Last line: `soak: PASS ...` or `soak: FAIL <reason>`.
set -uo pipefail
# bash reads a script while it runs it, so editing this file during a
# 60-minute run once broke the run's verdict. Run from a private copy: the
# copy unlinks itself at once (bash keeps it open), SOAK_SELF names the real one.
if [ -z "${SOAK_SELF:-}" ]; then
    copy=$(mktemp "${TMPDIR:-/tmp}/soak.XXXXXX.sh") && cp "$0" "$copy" \
        && SOAK_SELF=$0 exec bash "$copy" "$@"
    echo "soak: cannot make a private copy of $0" >&2; exit 2
fi
rm -f "$0"
cd "$(dirname "$SOAK_SELF")/.."
. bench/lib.sh

usage() { sed -n '2,35p' "$SOAK_SELF" | sed 's/^# \{0,1\}//'; exit 2; }
MINUTES=30
OUT=
CMD="bench/soak.sh${*:+ $*}"
for v in SHARDS IDLE_SECS LOAD_SECS STORM_CONNS RATE CONNS LOADGEN BIN; do
    [ -z "${!v:-}" ] || CMD="$v=${!v} $CMD"
done
while [ $# -gt 0 ]; do
    case $1 in
        --minutes) MINUTES=${2:-}; shift 2 ;;
        --minutes=*) MINUTES=${1#*=}; shift ;;
        --out) OUT=${2:-}; shift 2 ;;
        --out=*) OUT=${1#*=}; shift ;;
        -h|--help) usage ;;
        *) echo "soak: unknown argument $1" >&2; usage ;;
    esac
done
case $MINUTES in ''|*[!0-9]*) echo "soak: --minutes takes a whole number" >&2; exit 2 ;; esac
[ "$MINUTES" -ge 3 ] || { echo "soak: --minutes must be at least 3 (one load phase, one idle gap > 35 s)" >&2; exit 2; }

BIN=${BIN:-target/release}
LOADGEN=${LOADGEN:-$BIN/loadgen}
if [ ! -x "$BIN/ringchat" ] || [ ! -x "$LOADGEN" ]; then
    if [ "$BIN" = target/release ]; then
        cargo build --release -p ringchat -p loadgen || exit 2
    else
        echo "soak: no ringchat in BIN=$BIN or no loadgen at $LOADGEN" >&2; exit 2
    fi
fi
if ! "$LOADGEN" --help | grep -q -- --window-report; then
    echo "soak: $LOADGEN has no --window-report (rebuild: cargo build --release -p loadgen)" >&2
    exit 2
fi
if [ "$MINUTES" -lt 10 ]; then LOAD_S=${LOAD_SECS:-60}; IDLE_S=${IDLE_SECS:-45}
else LOAD_S=${LOAD_SECS:-180}; IDLE_S=${IDLE_SECS:-90}; fi
CONNS=${CONNS:-3000}
RATE=${RATE:-1500}
STORM_CONNS=${STORM_CONNS:-$CONNS}
USERS=$(( CONNS > STORM_CONNS ? CONNS : STORM_CONNS ))
[ "$IDLE_S" -gt 35 ] || echo "soak: warning: IDLE_SECS=$IDLE_S is not longer than 35 s" >&2

STAMP=$(date -u +%Y-%m-%d-%H%M%S)
OUT=${OUT:-bench/results/soak-$STAMP}
mkdir -p "$OUT/runs"
WORK=$(mktemp -d /tmp/ringchat-soak.XXXXXX)
STATE=$WORK/state
mkdir -p "$STATE/windows"
: > "$OUT/phases.csv"; : > "$OUT/runs.csv"; : > "$OUT/windows.jsonl"
TOOL="python3 bench/soak_tool.py"
# Run private copies: a rebuild of target/release during the run must not
# change what is being soaked (nor make the summary describe another binary).
describe() { echo "$1 (built $(date -u -r "$1" '+%F %T') UTC, sha256 $(sha256sum "$1" | cut -c1-12))"; }
SERVER_DESC=$(describe "$BIN/ringchat")
SERVER_SHA=$(sha256sum "$BIN/ringchat" | cut -c1-12)
LOADGEN_DESC=$(describe "$LOADGEN")
mkdir -p "$WORK/bin"
cp "$BIN/ringchat" "$WORK/bin/ringchat" && cp "$LOADGEN" "$WORK/bin/loadgen" \
    || { echo "soak: FAIL copying the binaries"; rm -rf "$WORK"; exit 2; }
RINGCHAT=$WORK/bin/ringchat
LOADGEN=$WORK/bin/loadgen

say() { local m; m="[$(date -u +%H:%M:%S)] $*"; echo "$m"; echo "$m" >> "$OUT/soak.log"; }
failed() { [ -s "$STATE/fail" ]; }
note_fail() { echo "$*" >> "$STATE/fail"; say "FAIL: $*"; }
now_ms() { date +%s%3N; }
rel() { local d=$(( $(now_ms) - T0_MS )); printf '%d.%01d' $(( d / 1000 )) $(( d % 1000 / 100 )); }
left() { echo $(( T_END - $(date +%s) )); }

SAMPLER_PID=
LG_PID=
SERVER_PID=
cleanup() {
    touch "$STATE/stop" 2>/dev/null
    if [ -n "$LG_PID" ]; then
        kill -KILL -- "-$LG_PID" 2>/dev/null || kill -KILL "$LG_PID" 2>/dev/null
        { wait "$LG_PID"; } 2>/dev/null
    fi
    if [ -n "$SAMPLER_PID" ]; then
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$SAMPLER_PID" 2>/dev/null || break; sleep 0.2; done
        kill "$SAMPLER_PID" 2>/dev/null
    fi
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "soak: FAIL interrupted"; exit 130' INT TERM

# --- setup: users first (provision writes the store directly), then the server.
say "soak: $MINUTES min, load ${LOAD_S}s mixed $CONNS conns x $RATE msgs/s, storm $STORM_CONNS conns, idle ${IDLE_S}s; out $OUT"
"$RINGCHAT" provision --data-dir "$WORK/data" --users "$USERS" --prefix sk \
    --friends-pairs --groups $(( USERS / 10 )) --group-size 10 --fast-hash $(insecure_fast_hash "$RINGCHAT") >> "$OUT/soak.log" 2>&1 \
    || { echo "soak: FAIL provisioning users"; exit 1; }
"$RINGCHAT" provision --data-dir "$WORK/data" --users 2 --prefix sp --friends-pairs --fast-hash $(insecure_fast_hash "$RINGCHAT") \
    >> "$OUT/soak.log" 2>&1 || { echo "soak: FAIL provisioning probe users"; exit 1; }
SERVE_ARGS=()
[ -z "${SHARDS:-}" ] || SERVE_ARGS+=(--shards "$SHARDS")
start_server "$RINGCHAT" "$WORK/data" "$OUT/server.log" "${SERVE_ARGS[@]}" \
    || { echo "soak: FAIL server did not start"; exit 1; }
T0_MS=$(now_ms)
T_END=$(( T0_MS / 1000 + MINUTES * 60 ))
say "server pid $SERVER_PID on $SERVER_ADDR (metrics $METRICS_ADDR); server $SERVER_DESC"

# Liveness probe: two probe users log in, exchange 4 messages, must all arrive.
PROBE=("$LOADGEN" --server "$SERVER_ADDR" --prefix sp --scenario direct --connections 2
       --rate 4 --duration 1 --drain 5 --connect-timeout-s 5 --expect-connections 2)
$TOOL sample --pid "$SERVER_PID" --state "$STATE" --csv "$OUT/samples.csv" --log "$OUT/server.log" \
    --interval 10 --t0 "$(printf '%d.%03d' $(( T0_MS / 1000 )) $(( T0_MS % 1000 )))" -- "${PROBE[@]}" 2>> "$OUT/soak.log" &
SAMPLER_PID=$!

PHASE=setup
set_phase() { echo "$1" > "$STATE/phase.tmp" && mv -f "$STATE/phase.tmp" "$STATE/phase"; }
phase_begin() { PHASE=$1; PHASE_T=$(rel); set_phase "$1"; say "phase $1 (t=${PHASE_T}s, $(left)s left)"; }
phase_end() { echo "$PHASE_T,$(rel),$PHASE" >> "$OUT/phases.csv"; set_phase between; }

# server_up: false (and the failure noted, with the exit status) once the
# server process is gone.
server_up() {
    kill -0 "$SERVER_PID" 2>/dev/null && return 0
    if [ -z "${SERVER_GONE:-}" ]; then
        SERVER_GONE=1
        local st=0
        { wait "$SERVER_PID"; } 2>/dev/null || st=$?
        note_fail "server process $SERVER_PID exited (status $st) at t=$(rel)s during $PHASE"
    fi
    return 1
}

# run_lg NAME LIMIT_SECS loadgen-args...: runs loadgen in its own process
# group, stops it early if the sampler saw a failure or the server died.
run_lg() {
    local name=$1 limit=$2 t_a rc=0 deadline
    shift 2
    t_a=$(rel)
    setsid "$LOADGEN" --server "$SERVER_ADDR" --server-pid "$SERVER_PID" --prefix sk \
        --report "$OUT/runs/$name" --window-report "$STATE/windows/$name.jsonl" "$@" \
        > "$OUT/runs/$name.out" 2> "$OUT/runs/$name.err" &
    LG_PID=$!
    deadline=$(( $(date +%s) + limit ))
    while kill -0 "$LG_PID" 2>/dev/null; do
        if failed || ! server_up || [ "$(date +%s)" -gt "$deadline" ]; then
            [ "$(date +%s)" -le "$deadline" ] || note_fail "loadgen $name still running after ${limit}s (server hung?)"
            kill -KILL -- "-$LG_PID" 2>/dev/null || kill -KILL "$LG_PID" 2>/dev/null
            break
        fi
        sleep 1
    done
    { wait "$LG_PID"; } 2>/dev/null || rc=$?
    LG_PID=
    local line
    line=$($TOOL run-row "$name" "$t_a" "$(rel)" "$rc" "$OUT/runs/$name" "$STATE/windows/$name.jsonl" \
        "$OUT/windows.jsonl" 2>&1 >> "$OUT/runs.csv")
    echo "$line" | tee -a "$OUT/soak.log"
    if [ "$rc" -ne 0 ] && ! failed; then
        local why
        why=$(grep -h "loadgen: FAIL" "$OUT/runs/$name.err" | sed 's/^loadgen: FAIL: //' | paste -sd ';' -)
        note_fail "loadgen $name exited $rc: ${why:-see runs/$name.err}"
    fi
}

idle_gap() {
    local until=$(( $(date +%s) + $1 ))
    phase_begin idle
    while [ "$(date +%s)" -lt "$until" ]; do
        failed && break
        server_up || break
        sleep 1
    done
    phase_end
}

# --- the cycles
cycle=0
while ! failed && [ "$(left)" -gt 0 ]; do
    cycle=$(( cycle + 1 ))
    # Load, if there is room for at least half a phase plus an idle gap after it.
    if [ "$(left)" -ge $(( LOAD_S / 2 + IDLE_S + 20 )) ]; then
        d=$(( $(left) - IDLE_S - 20 )); [ "$d" -le "$LOAD_S" ] || d=$LOAD_S
        phase_begin "load-$cycle"
        run_lg "load-$cycle" $(( d + 180 )) --scenario mixed --connections "$CONNS" --rate "$RATE" \
            --duration "$d" --drain 20 --group-size 10 --expect-connections "$CONNS" --connect-timeout-s 120
        phase_end
    fi
    failed && break
    if [ "$(left)" -ge $(( IDLE_S + 20 )) ]; then
        phase_begin "storm-$cycle"
        run_lg "storm-$cycle" 300 --scenario login-storm --connections "$STORM_CONNS" --duration 5 \
            --expect-connections "$STORM_CONNS" --connect-timeout-s 120
        phase_end
    fi
    failed && break
    l=$(left)
    [ "$l" -gt 0 ] || break
    # Idle; the last gap absorbs whatever is left when no further load fits.
    if [ $(( l - IDLE_S )) -lt $(( LOAD_S / 2 + IDLE_S + 20 )) ]; then d=$l; else d=$IDLE_S; fi
    idle_gap "$d"
done

failed && say "stopping early: $(awk '!seen[$0]++ { printf "%s%s", (n++ ? " | " : ""), $0 }' "$STATE/fail")"

# --- shutdown and verdict
FAIL_AT=   # when the run was stopped by a failure (for the plot)
if failed; then FAIL_AT=$(awk -v a="$(date -r "$STATE/fail" +%s%3N)" -v b="$T0_MS" 'BEGIN { printf "%.1f", (a - b) / 1000 }'); fi
sleep 0.5
touch "$STATE/stop"
wait "$SAMPLER_PID" 2>/dev/null
SAMPLER_PID=
set_phase stopping
if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID"
    for _ in $(seq 1 150); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        failed || note_fail "server did not stop within 15 s of SIGTERM"
        kill -KILL "$SERVER_PID" 2>/dev/null
    fi
else
    server_up
fi
if [ -z "${SERVER_GONE:-}" ]; then
    st=0; { wait "$SERVER_PID"; } 2>/dev/null || st=$?
    say "server stopped (exit status $st)"
fi
SERVER_PID=
if ! failed && grep -q -E "panicked|Panic while" "$OUT/server.log"; then
    note_fail "server log: $(grep -m1 -E "panicked|Panic while" "$OUT/server.log" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-200)"
fi
ELAPSED=$(rel)

A_FAILS= A_MAX_RSS=- A_END_RSS=- A_WORST_P99=- A_ACKED=0 A_DELIVERED=0
eval "$($TOOL analyze --out "$OUT")"
[ -z "$A_FAILS" ] || note_fail "$A_FAILS"
$TOOL plot --out "$OUT" --title "ringchat soak $STAMP: $MINUTES min, $CONNS conns x $RATE msgs/s mixed" \
    --tmax $(( MINUTES * 60 )) ${FAIL_AT:+--fail-at "$FAIL_AT"} || say "plot failed"

if failed; then
    RESULT=FAIL
    REASON=$(awk '!seen[$0]++ { printf "%s%s", (n++ ? " | " : ""), $0 }' "$STATE/fail")
else
    RESULT=PASS
fi
COMMIT=$(git describe --always --dirty 2>/dev/null || echo -)
{
    echo "ringchat soak: $RESULT"
    [ "$RESULT" = PASS ] || awk '!seen[$0]++ { print "  reason: " $0 }' "$STATE/fail"
    echo
    echo "command             $CMD"
    echo "started             $STAMP UTC, ran ${ELAPSED}s of $(( MINUTES * 60 ))s"
    echo "commit              $COMMIT"
    echo "server binary       $SERVER_DESC"
    echo "loadgen binary      $LOADGEN_DESC"
    echo "machine             $(uname -m) $(nproc) cpu, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
    echo "phases              load ${LOAD_S}s mixed $CONNS conns x $RATE msgs/s, storm $STORM_CONNS conns, idle ${IDLE_S}s"
    echo
    cat "$OUT/analysis.txt"
    echo
    echo "loadgen runs (name scenario t_start t_end rc conns acked delivered lost dup ooo unacked send_err ack_p99 e2e_p99 login_p99):"
    sed 's/^/  /; s/,/ /g' "$OUT/runs.csv"
    echo
    echo "phases (t_start t_end name):"
    sed 's/^/  /; s/,/ /g' "$OUT/phases.csv"
    if [ "$RESULT" = FAIL ] && grep -q -E "panicked|Panic while" "$OUT/server.log"; then
        echo
        echo "server log, first panic:"
        grep -m1 -A3 -E "panicked|Panic while" "$OUT/server.log" | sed 's/\x1b\[[0-9;]*m//g; s/^/  /'
    fi
} > "$OUT/summary.txt"
rm -f "$OUT/analysis.txt"

MINCOL=$MINUTES
[ "$RESULT" = PASS ] || MINCOL="$MINUTES (failed at $(awk -v s="$ELAPSED" 'BEGIN { printf "%d:%02d", s / 60, s % 60 }'))"
ROW="| $STAMP | $MINCOL | $RESULT | $A_MAX_RSS | $A_END_RSS | $A_WORST_P99 | $A_ACKED | $COMMIT / $SERVER_SHA | \`$CMD\` |"
RESULTS_MD=${RESULTS_MD:-bench/RESULTS.md}
[ "$RESULTS_MD" = - ] || $TOOL results-row "$RESULTS_MD" "$ROW"

cat "$OUT/summary.txt" >> "$OUT/soak.log"
sed -n '/^rss growth/,/^liveness/p' "$OUT/summary.txt"
echo "report: $OUT/summary.txt, $OUT/soak.svg"
if [ "$RESULT" = PASS ]; then
    echo "soak: PASS $MINUTES min, max RSS $A_MAX_RSS, RSS at end $A_END_RSS, worst window p99 $A_WORST_P99, $A_ACKED messages acked, 0 lost/dup/out-of-order"
    exit 0
fi
echo "soak: FAIL $REASON"
exit 1
