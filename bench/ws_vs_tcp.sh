#!/usr/bin/env bash
# WebSocket vs raw TCP at the same load: one release server with
# `--ws-listen`, loadgen alternating `--protocol native` (TCP) and
# `--protocol ws` (A B A B ...), so a noisy, shared machine hurts both alike.
# Prints each round, then medians and the ratio ws/tcp of: ack p50/p99,
# e2e p99, server CPU (% of one core) and server CPU per message (µs).
#
# Usage: bench/ws_vs_tcp.sh [--rounds N] [--connections N] [--rate R]
#            [--duration S] [--scenario direct|group|mixed] [--shards N]
# defaults: 3 rounds, 2000 connections, 2000 msgs/s, 20 s, direct.
# Env BIN (default target/release). Fails if any run loses, duplicates or
# reorders a message.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
ROUNDS=3; CONNS=2000; RATE=2000; DUR=20; SCEN=direct; SHARDS=
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --connections) CONNS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --duration) DUR=$2; shift 2 ;;
        --scenario) SCEN=$2; shift 2 ;;
        --shards) SHARDS=$2; shift 2 ;;
        -h|--help) usage ;;
        *) echo "ws_vs_tcp: unknown argument $1" >&2; usage ;;
    esac
done
BIN=${BIN:-target/release}
[ -x "$BIN/ringchat" ] && [ -x "$BIN/loadgen" ] || cargo build --release -p ringchat -p loadgen
WORK=$(mktemp -d /tmp/ringchat-wsvs.XXXXXX)
trap 'stop_server; rm -rf "$WORK"' EXIT
SERVE=()
[ -z "$SHARDS" ] || SERVE+=(--shards "$SHARDS")

one() { # label protocol round
    local label=$1 proto=$2 r=$3 dir=$WORK/$1-$3 srv
    "$BIN/ringchat" provision --data-dir "$dir" --users "$CONNS" --prefix wv --friends-pairs \
        --groups $(( CONNS / 10 )) --group-size 10 --fast-hash $(insecure_fast_hash "$BIN/ringchat") > /dev/null
    local ws=127.0.0.1:$(free_port)
    start_server "$BIN/ringchat" "$dir" "$WORK/$label-$r.log" --ws-listen "$ws" "${SERVE[@]}" || exit 1
    srv=$SERVER_ADDR
    [ "$proto" = ws ] && srv=$ws
    "$BIN/loadgen" --server "$srv" --server-pid "$SERVER_PID" --prefix wv --scenario "$SCEN" \
        --protocol "$proto" --connections "$CONNS" --rate "$RATE" --duration "$DUR" --group-size 10 \
        --expect-connections "$CONNS" --report "$WORK/$label-$r" > "$WORK/$label-$r.out" 2>&1 \
        || { echo "ws_vs_tcp: loadgen failed on $label round $r:"; tail -5 "$WORK/$label-$r.out"; exit 1; }
    stop_server
    python3 - "$WORK/$label-$r/report.json" "$label" "$r" >> "$WORK/rows" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
bad = d["lost"] + d["duplicated"] + d["out_of_order"]
cpu = d.get("server_cpu_percent") or 0
rate = d["rate_per_s"] or 1
print(sys.argv[2], sys.argv[3], rate, d["ack_ms"]["p50"], d["ack_ms"]["p99"],
      d["e2e_ms"]["p99"], cpu, cpu / 100 * 1e6 / rate, bad)
PY
    tail -1 "$WORK/rows" | awk '{printf "  %-4s round %s: rate %.0f/s  ack p50 %.2f ms  p99 %.2f ms  e2e p99 %.2f ms  cpu %.0f %%  %.1f us/msg  lost+dup+ooo %d\n", $1, $2, $3, $4, $5, $6, $7, $8, $9}'
}

echo "ws_vs_tcp: $SCEN, $CONNS connections x $RATE msgs/s x ${DUR}s, $ROUNDS rounds ($(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
for r in $(seq 1 "$ROUNDS"); do
    one tcp native "$r"
    one ws ws "$r"
done
python3 - "$WORK/rows" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
cols = [("rate/s", 2), ("ack p50 ms", 3), ("ack p99 ms", 4), ("e2e p99 ms", 5),
        ("server cpu %", 6), ("server cpu us/msg", 7)]
med = lambda lab, i: statistics.median(float(r[i]) for r in rows if r[0] == lab)
print("\n| median of rounds | tcp | ws | ws/tcp |\n|---|---|---|---|")
for name, i in cols:
    a, b = med("tcp", i), med("ws", i)
    print(f"| {name} | {a:.2f} | {b:.2f} | {b / a if a else float('nan'):.2f} |")
bad = sum(int(r[8]) for r in rows)
print(f"\nlost+duplicated+out-of-order over all runs: {bad}")
sys.exit(1 if bad else 0)
PY
