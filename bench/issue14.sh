#!/usr/bin/env bash
# Every row of issue 14's table, measured on one release build, each next to
# the disk's own fdatasync floor measured at the start (bench/disk_floor.py):
#   direct      native, 10k connections x 5k msgs/s, 2 shards
#   legacy-1k   old JSON protocol (--legacy-listen), 500 pairs, open loop 1k msgs/s
#   legacy-5k   the same at 5k msgs/s (the CPU per message to compare 1k/s with)
#   legacy-closed  500 pairs, closed loop (--closed-loop DEPTH messages in flight per connection)
#   idle        19k idle logged-in connections, RSS per connection
#   group100    2k users in groups of 100, GROUP_RATE posts/s (x99 deliveries), loadgen spread
#               over GROUP_PROCS processes
#   storm       10k connections drop at once and resume with their tokens
# Output: bench/results/<stamp>-issue14/ (one loadgen report per row, summary.md by
# bench/summary.py; server logs in raw/, which git ignores).
# Env: SKIP_BUILD=1, SECS (default 20), DEPTH (8), GROUP_RATE (3000), GROUP_PROCS (2),
#      ONLY="direct legacy idle group storm" (a subset).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -p ringchat -p loadgen
BIN=${BIN:-target/release}
SECS=${SECS:-20}; DEPTH=${DEPTH:-8}; GROUP_RATE=${GROUP_RATE:-3000}; GROUP_PROCS=${GROUP_PROCS:-2}
ONLY=${ONLY:-direct legacy idle group storm}
OUT=bench/results/$(date +%Y-%m-%d-%H%M%S)-issue14
mkdir -p "$OUT/raw" # raw/: server logs, not committed (.gitignore)
WORK=$(mktemp -d /tmp/ringchat-i14.XXXXXX)
LEGACY_PORT=
trap 'stop_server; rm -rf "$WORK"' EXIT
want() { [[ " $ONLY " == *" $1 "* ]]; }
FAST=$(insecure_fast_hash "$BIN/ringchat")
provision() { local dir=$1; shift
    "$BIN/ringchat" provision --data-dir "$dir" --prefix lg --fast-hash $FAST "$@" >/dev/null; }
lg() { local name=$1 addr=$2; shift 2
    echo "== $name: $*" | tee -a "$OUT/log.txt"
    "$BIN/loadgen" --server "$addr" --server-pid "$SERVER_PID" --report "$OUT/$name" "$@" \
        > "$OUT/$name.txt" 2> "$OUT/$name.stderr" || echo "   (loadgen exit $?)" | tee -a "$OUT/log.txt"
    tail -n 25 "$OUT/$name.txt" | grep -E "rate|ack_ms|e2e_ms|login_ms|resume|lost|cpu|rss" | head -8 || true
}
fresh() { # fresh DIR [provision args...] -> server on a fresh store, with a legacy listener
    local dir=$1; shift
    stop_server; rm -rf "$dir"
    provision "$dir" "$@"
    LEGACY_PORT=$(free_port)
    # shellcheck disable=SC2086 # SERVE_EXTRA: words
    start_server "$BIN/ringchat" "$dir" "$OUT/raw/server-$(basename "$dir").log" \
        --legacy-listen "127.0.0.1:$LEGACY_PORT" ${SERVE_EXTRA:-}
    sleep 1
}

mkdir -p "$WORK/floor"
python3 bench/disk_floor.py "$WORK/floor" 300 --json > "$OUT/disk_floor.json"
echo "disk floor: $(python3 bench/disk_floor.py "$WORK/floor" 300)" | tee -a "$OUT/log.txt"

if want direct; then
    fresh "$WORK/d" --users 20000 --friends-pairs
    lg direct "$SERVER_ADDR" --scenario direct --connections 10000 --rate 5000 --duration "$SECS" --drain 15
fi
if want legacy; then
    # One loadgen process is one source address, and the old protocol allows
    # 64 connections per address waiting to log in: --max-inflight 48. The
    # closed loop measures capacity, not the per-user send limit (20/s by
    # default; a closed loop of 50k msgs/s over 1000 users is 50/s each).
    SERVE_EXTRA="--max-send-rate 0"
    for r in 1000 5000; do
        fresh "$WORK/l$r" --users 1000 --friends-pairs
        lg "legacy-${r%000}k" "127.0.0.1:$LEGACY_PORT" --protocol legacy --scenario direct \
            --connections 1000 --rate "$r" --duration "$SECS" --drain 10 --max-inflight 48
    done
    fresh "$WORK/lc" --users 1000 --friends-pairs
    lg legacy-closed "127.0.0.1:$LEGACY_PORT" --protocol legacy --scenario direct \
        --connections 1000 --closed-loop "$DEPTH" --duration "$SECS" --drain 10 --max-inflight 48
    SERVE_EXTRA=
fi
if want idle; then
    fresh "$WORK/i" --users 20000 --friends-pairs --groups 2000 --group-size 10
    lg idle "$SERVER_ADDR" --scenario connect --connections 19000 --duration 10 --procs 2 \
        --expect-connections 19000
fi
if want group; then
    fresh "$WORK/g" --users 2000 --groups 20 --group-size 100
    lg group100 "$SERVER_ADDR" --scenario group --group-size 100 --connections 2000 \
        --rate "$GROUP_RATE" --duration "$SECS" --drain 15 --procs "$GROUP_PROCS"
fi
if want storm; then
    fresh "$WORK/s" --users 10000 --friends-pairs
    lg storm "$SERVER_ADDR" --scenario login-storm --connections 10000 --duration 30 \
        --max-inflight 10000 --procs 2
fi
stop_server

python3 bench/summary.py "$OUT" > "$OUT/summary.md"
cat "$OUT/summary.md"
