#!/usr/bin/env bash
# A/B: the same workload against two server binaries, interleaved (A B A B
# ...) so that a noisy, shared machine hurts both alike; prints each round
# and the medians with ratios B/A. Each run is a fresh server on a fresh,
# provisioned data dir (the embedded store), pinned shards, loadgen open loop.
#
# Usage: bench/ab.sh BIN_A BIN_B [--rounds N] [--connections N] [--rate R]
#            [--duration S] [--scenario direct|group|mixed] [--shards N]
# defaults: 3 rounds, 4000 connections, 4000 msgs/s, 20 s, direct, one shard per CPU.
# BIN_A/BIN_B: `ringchat` binaries (e.g. a release build of the old commit
# copied aside, and target/release/ringchat). Env LOADGEN (default
# target/release/loadgen). Fails if any run loses, duplicates or reorders.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 2 ] || usage
A=$1; B=$2; shift 2
ROUNDS=3; CONNS=4000; RATE=4000; DUR=20; SCEN=direct; SHARDS=
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --connections) CONNS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --duration) DUR=$2; shift 2 ;;
        --scenario) SCEN=$2; shift 2 ;;
        --shards) SHARDS=$2; shift 2 ;;
        -h|--help) usage ;;
        *) echo "ab: unknown argument $1" >&2; usage ;;
    esac
done
LOADGEN=${LOADGEN:-target/release/loadgen}
for b in "$A" "$B" "$LOADGEN"; do [ -x "$b" ] || { echo "ab: $b is not an executable" >&2; exit 2; }; done
WORK=$(mktemp -d /tmp/ringchat-ab.XXXXXX)
trap 'stop_server; rm -rf "$WORK"' EXIT
SERVE=()
[ -z "$SHARDS" ] || SERVE+=(--shards "$SHARDS")

one() { # label bin round
    local label=$1 bin=$2 r=$3 dir=$WORK/$1-$3
    "$bin" provision --data-dir "$dir" --users "$CONNS" --prefix ab --friends-pairs \
        --groups $(( CONNS / 10 )) --group-size 10 --fast-hash $(insecure_fast_hash "$bin") > /dev/null
    start_server "$bin" "$dir" "$WORK/$label-$r.log" "${SERVE[@]}" || exit 1
    "$LOADGEN" --server "$SERVER_ADDR" --server-pid "$SERVER_PID" --prefix ab --scenario "$SCEN" \
        --connections "$CONNS" --rate "$RATE" --duration "$DUR" --group-size 10 \
        --expect-connections "$CONNS" --report "$WORK/$label-$r" > "$WORK/$label-$r.out" 2>&1 \
        || { echo "ab: loadgen failed on $label round $r:"; tail -5 "$WORK/$label-$r.out"; exit 1; }
    stop_server
    python3 - "$WORK/$label-$r/report.json" "$label" "$r" >> "$WORK/rows" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
bad = d["lost"] + d["duplicated"] + d["out_of_order"]
print(sys.argv[2], sys.argv[3], d["rate_per_s"], d["ack_ms"]["p50"], d["ack_ms"]["p99"],
      d["e2e_ms"]["p99"], d.get("server_cpu_percent", 0), bad)
PY
    tail -1 "$WORK/rows" | awk '{printf "  %s round %s: rate %.0f/s  ack p50 %.2f ms  p99 %.2f ms  e2e p99 %.2f ms  cpu %.0f %%  lost+dup+ooo %d\n", $1, $2, $3, $4, $5, $6, $7, $8}'
}

echo "ab: $SCEN, $CONNS connections x $RATE msgs/s x ${DUR}s, $ROUNDS rounds"
echo "  A = $A"
echo "  B = $B"
for r in $(seq 1 "$ROUNDS"); do
    one A "$A" "$r"
    one B "$B" "$r"
done
python3 - "$WORK/rows" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
cols = [("rate/s", 2), ("ack p50 ms", 3), ("ack p99 ms", 4), ("e2e p99 ms", 5), ("server cpu %", 6)]
med = lambda lab, i: statistics.median(float(r[i]) for r in rows if r[0] == lab)
print("\n| median of rounds | A | B | B/A |\n|---|---|---|---|")
for name, i in cols:
    a, b = med("A", i), med("B", i)
    print(f"| {name} | {a:.2f} | {b:.2f} | {b / a if a else float('nan'):.2f} |")
per = lambda lab: statistics.median(float(r[6]) * 1e4 / float(r[2]) for r in rows if r[0] == lab and float(r[2]))
a, b = per("A"), per("B")
print(f"| server cpu µs/msg | {a:.1f} | {b:.1f} | {b / a if a else float('nan'):.2f} |")
bad = sum(int(r[7]) for r in rows)
print(f"\nlost+duplicated+out-of-order over all runs: {bad}")
sys.exit(1 if bad else 0)
PY
