#!/usr/bin/env bash
# Full benchmark: builds release, provisions users (before the server
# starts: `ringchat provision` writes the store directly), starts a fresh
# release server with its own data dir and --metrics, then runs
#   1. direct: 10k connections, 5k msgs/s, 30 s
#   2. rate sweep (direct, 2k connections, 10 s steps): highest rate with p99 < 50 ms
#   3. group fan-out: 2k connections in groups of 10, 500 msgs/s, 20 s
#   4. connect: 19k idle connections on a fresh server, RSS per connection
# Before the runs, the disk's own fdatasync latency is measured in the data
# dir (bench/disk_floor.py): every latency row stands next to its floor.
# Results go to bench/results/<date>/ (summary.md: per scenario CPU µs per
# message, RSS per connection, latencies next to the fdatasync floor) and one
# row is appended to bench/RESULTS.md.
# Env: SKIP_BUILD=1, DIRECT_SECS, SWEEP_RATES.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -p ringchat -p loadgen
BIN=target/release
STAMP=$(date +%Y-%m-%d-%H%M%S)
OUT=bench/results/$STAMP
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/ringchat-bench.XXXXXX)
trap 'stop_server; rm -rf "$WORK"' EXIT
j() { python3 -c "import json,sys; d=json.load(open('$1')); print(eval('d'+sys.argv[1]))" "$2"; }

provision() { "$BIN/ringchat" provision --data-dir "$1" --users 20000 --prefix lg \
    --friends-pairs --groups 2000 --group-size 10 --fast-hash $(insecure_fast_hash "$BIN/ringchat"); }
lg() { local name=$1; shift
    echo "== $name: $*" | tee -a "$OUT/log.txt"
    "$BIN/loadgen" --server "$SERVER_ADDR" --server-pid "$SERVER_PID" --report "$OUT/$name" "$@" \
        > >(tee "$OUT/$name.txt") 2> "$OUT/$name.stderr"
}

provision "$WORK/data"
FLOOR=$(python3 bench/disk_floor.py "$WORK/data" 300 --json)
echo "disk floor: $(python3 bench/disk_floor.py "$WORK/data" 300)" | tee -a "$OUT/log.txt"
echo "$FLOOR" > "$OUT/disk_floor.json"
start_server "$BIN/ringchat" "$WORK/data" "$OUT/server.log"
curl -s "http://$METRICS_ADDR/metrics" > "$OUT/metrics-start.txt" || true

status=0
lg direct --scenario direct --connections 10000 --rate 5000 --duration "${DIRECT_SECS:-30}" --drain 15 --procs 1 || status=1
curl -s "http://$METRICS_ADDR/metrics" > "$OUT/metrics-after-direct.txt" || true

best=0
for r in ${SWEEP_RATES:-1000 2000 4000 6000 8000 10000 14000 20000}; do
    if lg "sweep-$r" --scenario direct --connections 2000 --rate "$r" --duration 10 --drain 10 --expect-p99-ms 50 --expect-rate $((r * 95 / 100)); then
        best=$r
    else
        break
    fi
done
echo "sweep: highest rate with p99 < 50 ms: $best msgs/s" | tee -a "$OUT/log.txt"

lg group --scenario group --connections 2000 --group-size 10 --rate 500 --duration 20 --drain 15 || status=1
stop_server

# Fresh server so RSS growth is only the idle connections.
provision "$WORK/data2"
start_server "$BIN/ringchat" "$WORK/data2" "$OUT/server-connect.log"
sleep 1
lg connect --scenario connect --connections 19000 --duration 10 --procs 2 --expect-connections 19000 || status=1
stop_server

D=$OUT/direct/report.json; G=$OUT/group/report.json; C=$OUT/connect/report.json
row="| $STAMP | $(uname -m) $(nproc)cpu $(awk '/MemTotal/{printf "%.0fGiB", $2/1048576}' /proc/meminfo) | $(git rev-parse --short HEAD) \
| $(j $D '["connections"]') | $(j $D '["rate_per_s"]') | $(j $D '["ack_ms"]["p50"]') / $(j $D '["ack_ms"]["p99"]') \
| $(j $D '["e2e_ms"]["p50"]') / $(j $D '["e2e_ms"]["p99"]') | $(j $D '["lost"]')/$(j $D '["duplicated"]')/$(j $D '["out_of_order"]') \
| $(j $D '["server_cpu_percent"]') | $best | $(j $G '["e2e_ms"]["p99"]') | $(j $C '["connections"]') | $(j $C '["server_rss_per_conn_bytes"]') |"
if [ ! -f bench/RESULTS.md ]; then
    cat > bench/RESULTS.md <<'HDR'
# Benchmark results (bench/run.sh)

direct = 10k connections x 5k msgs/s x 30 s; latencies in ms from the scheduled send time;
sweep = highest direct rate (2k connections) with p99 < 50 ms; cpu = server CPU % of one core.

| date | machine | commit | direct conns | direct rate/s | ack p50/p99 | e2e p50/p99 | lost/dup/ooo | server cpu % | sweep max rate | group e2e p99 | idle conns | RSS B/conn |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
HDR
fi
echo "$row" >> bench/RESULTS.md
echo "$row"
# Per scenario: CPU per message and memory per connection, next to the floor.
python3 bench/summary.py "$OUT" > "$OUT/summary.md"
cat "$OUT/summary.md"
exit $status
