#!/usr/bin/env bash
# Chaos benchmark: thousands of users sending through nginx while nodes die,
# Redis restarts and the MySQL store goes away (issue 10, item 2).
#
# What it runs (all on this machine):
#   - a PRIVATE redis-server on a free port, started (and restarted) by this
#     script: the machine's shared Redis (6379) is never touched;
#   - faultproxy (tools/loadgen/src/bin/faultproxy.rs), a TCP proxy in front of the machine's shared
#     MariaDB (3306), which is NEVER stopped: the nodes reach the store only
#     through the proxy (`?prefer_socket=false`, so the driver cannot switch
#     to the Unix socket), and "MariaDB stops for 10 s" is the proxy closing
#     its listener (connects refused) and resetting every connection for
#     MYSQL_DOWN seconds. That is what the nodes would see of a stopped
#     mysqld; it does not reproduce mysqld's own restart time or cold caches;
#   - `tools/cluster up 3 --shards 1` (MySQL store, Redis, nginx with
#     worker_connections 16384 / worker_rlimit_nofile: 2 fds per client);
#   - `ringchat provision` of CONNS users (friend pairs, groups of 10), made
#     directly on 3306 before the run;
#   - `loadgen --scenario mixed --reconnect` through nginx: CONNS
#     connections, RATE msgs/s for DURATION s, over PROCS processes (source
#     addresses 127.0.0.2, 127.0.0.3, ...). loadgen reconnects lost
#     connections (Resume with `since`), resends unacknowledged messages with
#     the same client_msg_id, and retries sends answered `Internal` with
#     back-off (report.json `internal_retries`).
# Faults, on a schedule printed at the start (times from loadgen's GO):
# kill -9 of a random node every ~KILL_EVERY s, restarted DOWN s later with
# its recorded arguments (`tools/cluster start nI`); in between, once each:
# SIGTERM of a node (graceful drain) restarted DOWN s after the signal, a
# Redis restart (SIGTERM, no persistence, started again at once), a MySQL
# outage of MYSQL_DOWN s.
#
# Output, in OUT (default bench/results/chaos-<UTC timestamp>/): the per-fault
# table, totals and a PASS/FAIL line (bench/chaos_report.py; also in
# summary.txt), chaos.html (self-contained: inline SVG throughput and
# p99 over time, faults marked), chaos.json, loadgen's report
# (loadgen/report.json, report.html), node/nginx/redis/proxy logs.
# Goals (PASS): 0 lost, 0 duplicated, 0 out of order, every send acked,
# resume p99 < 1 s, no SendOk wait > 1.5 s outside the MySQL outage
# (the outage, from 2 s before it to 3 s after the store is back, is
# excluded from that check only).
#
# Usage: bench/chaos.sh
# Env: CONNS (3000), RATE (1500), DURATION (300), KILL_EVERY (45), DOWN (10),
#      MYSQL_DOWN (10), PROCS (2), SEED (random; picks the victims), OUT,
#      KEEP=1 (leave the cluster and private services running at the end),
#      SERVE_EXTRA (more `serve` arguments for every node, split on spaces).
# A short run: CONNS=400 RATE=300 DURATION=110 KILL_EVERY=30 bench/chaos.sh
# Prerequisites: a release build (built if missing), nginx with the stream
# module, redis-server, redis-cli, the mysql client, python3; the shared
# MariaDB on 127.0.0.1:3306 (root, no password). Not a CI step: it needs
# the whole machine for ~8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
CONNS=${CONNS:-3000}
RATE=${RATE:-1500}
DURATION=${DURATION:-300}
KILL_EVERY=${KILL_EVERY:-45}
DOWN=${DOWN:-10}
MYSQL_DOWN=${MYSQL_DOWN:-10}
PROCS=${PROCS:-2}
SEED=${SEED:-$RANDOM}
NODES=3
BIN=target/release
MYSQL_DIRECT=mysql://root@127.0.0.1:3306
export NO_COLOR=1

for c in nginx redis-server redis-cli mysql python3; do
    command -v "$c" >/dev/null || { echo "chaos: $c not found (see the prerequisites in $0)" >&2; exit 2; }
done
if [ ! -x "$BIN/ringchat" ] || [ ! -x "$BIN/loadgen" ] || [ ! -x "$BIN/faultproxy" ]; then
    cargo build --release -p ringchat -p loadgen
fi
OUT=${OUT:-bench/results/chaos-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
NAME=chaos$$
RUN=/tmp/ringchat-cluster-$NAME
DB=ringchat_cluster_$NAME
FAULTS=$OUT/faults.jsonl
: > "$FAULTS"

# nginx on PORT, nodes on PORT+1..PORT+3; Redis and the proxy anywhere free.
for _ in $(seq 1 50); do
    PORT=$(( 20000 + RANDOM % 20000 ))
    python3 -c "import socket
for p in range($PORT, $PORT + $NODES + 1):
    s = socket.socket(); s.bind(('127.0.0.1', p)); s.close()" 2>/dev/null && break
done
REDIS_PORT=$(free_port)
PROXY_PORT=$(free_port)
REDIS_PID=
PROXY_PID=
LG_PID=

now() { date +%s.%N | cut -c1-14; }
# fault KIND NODE T_UNIX [END_UNIX] [NOTE]: one line of faults.jsonl
fault() {
    printf '{"kind":"%s","node":"%s","t_unix":%s,"end_unix":%s,"note":"%s"}\n' \
        "$1" "$2" "$3" "${4:-null}" "${5:-}" >> "$FAULTS"
}
start_redis() {
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --maxclients 10000 --logfile "$OUT/logs/redis.log" --daemonize no < /dev/null > /dev/null 2>&1 &
    REDIS_PID=$!
    for _ in $(seq 1 100); do
        redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && return 0
        sleep 0.05
    done
    echo "chaos: private redis-server did not start (see $OUT/logs/redis.log)" >&2
    return 1
}
stop_pid() { # pid: SIGTERM, wait up to 10 s
    [ -n "$1" ] || return 0
    kill -TERM "$1" 2>/dev/null || return 0
    for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
}
cleanup() {
    [ -z "$LG_PID" ] || kill "$LG_PID" 2>/dev/null || true
    if [ -d "$RUN" ]; then
        cp "$RUN"/*.log "$RUN"/nginx.conf "$OUT/logs/" 2>/dev/null || true
    fi
    if [ -n "${KEEP:-}" ]; then
        echo "chaos: KEEP=1: cluster '$NAME' ($RUN), redis pid $REDIS_PID (port $REDIS_PORT), proxy pid $PROXY_PID (port $PROXY_PORT) left running"
        return
    fi
    # Purged directly on 3306 (the proxy may be in an outage).
    RINGCHAT_MYSQL=$MYSQL_DIRECT RINGCHAT_REDIS=redis://127.0.0.1:$REDIS_PORT \
        tools/cluster down --name "$NAME" --purge > "$OUT/logs/cluster-down.log" 2>&1 || true
    mysql -h 127.0.0.1 -P 3306 -u root -e "DROP DATABASE IF EXISTS \`$DB\`" 2>/dev/null || true
    stop_pid "$REDIS_PID"
    stop_pid "$PROXY_PID"
}
trap cleanup EXIT

# The schedule: kill -9 every KILL_EVERY s from t=20; the three one-off
# faults in the middle of the first three gaps; nothing in the last 15 s.
SCHED=()
t=20
specials=(sigterm redis mysql)
k=0
while awk -v t="$t" -v d="$DURATION" 'BEGIN { exit !(t <= d - 15) }'; do
    SCHED+=("$t kill9")
    mid=$(awk -v t="$t" -v g="$KILL_EVERY" 'BEGIN { printf "%.1f", t + g / 2 }')
    if [ "$k" -lt 3 ] && awk -v t="$mid" -v d="$DURATION" 'BEGIN { exit !(t <= d - 15) }'; then
        SCHED+=("$mid ${specials[$k]}")
        k=$((k + 1))
    fi
    t=$(awk -v t="$t" -v g="$KILL_EVERY" 'BEGIN { printf "%.1f", t + g }')
done
RANDOM=$SEED
echo "chaos: $CONNS connections, $RATE msgs/s (mixed: 80 % direct, 20 % group of 10) for ${DURATION}s through nginx, $NODES nodes (--shards 1), seed $SEED"
echo "chaos: private redis on $REDIS_PORT, MySQL proxy on $PROXY_PORT -> 127.0.0.1:3306, nginx on $PORT; output in $OUT"
echo "chaos: fault schedule (seconds after loadgen starts sending):"
for e in "${SCHED[@]}"; do
    set -- $e
    case $2 in
        kill9) echo "  t=$1  kill -9 a random node, restart it ${DOWN}s later" ;;
        sigterm) echo "  t=$1  SIGTERM a random node (graceful drain), restart it ${DOWN}s after the signal" ;;
        redis) echo "  t=$1  restart Redis (SIGTERM, start again at once; no persistence)" ;;
        mysql) echo "  t=$1  MySQL outage: the proxy refuses and resets connections for ${MYSQL_DOWN}s" ;;
    esac
done
[ "$k" = 3 ] || echo "chaos: note: DURATION too short for every one-off fault (only $k of 3 scheduled)"

start_redis
"$BIN/faultproxy" "$PROXY_PORT" 127.0.0.1 3306 2> "$OUT/logs/proxy.log" &
PROXY_PID=$!
for _ in $(seq 1 50); do grep -q listening "$OUT/logs/proxy.log" 2>/dev/null && break; sleep 0.1; done

echo "chaos: provisioning $CONNS users ($(( CONNS / 10 )) groups) in $DB"
FAST=$(insecure_fast_hash "$BIN/ringchat")
"$BIN/ringchat" provision --store "$MYSQL_DIRECT/$DB" --users "$CONNS" --prefix ch \
    --friends-pairs --groups $(( CONNS / 10 )) --group-size 10 --fast-hash $FAST > "$OUT/logs/provision.log"

RINGCHAT_BIN=$BIN/ringchat \
RINGCHAT_MYSQL="mysql://root@127.0.0.1:$PROXY_PORT?prefer_socket=false" \
RINGCHAT_REDIS=redis://127.0.0.1:$REDIS_PORT \
RINGCHAT_SERVE_EXTRA="$FAST ${SERVE_EXTRA:-}" \
NGINX_WORKER_CONNECTIONS=16384 \
    tools/cluster up "$NODES" --port "$PORT" --name "$NAME" --shards 1
cluster() {
    RINGCHAT_BIN=$BIN/ringchat RINGCHAT_MYSQL="mysql://root@127.0.0.1:$PROXY_PORT?prefer_socket=false" \
        RINGCHAT_REDIS=redis://127.0.0.1:$REDIS_PORT tools/cluster "$@" --name "$NAME"
}

"$BIN/loadgen" --server "127.0.0.1:$PORT" --prefix ch --scenario mixed --group-size 10 \
    --connections "$CONNS" --rate "$RATE" --duration "$DURATION" --drain 30 --reconnect \
    --procs "$PROCS" --server-pid-file "$RUN/n1.pid" --report "$OUT/loadgen" \
    > "$OUT/loadgen.out" 2> "$OUT/loadgen.err" &
LG_PID=$!
for _ in $(seq 1 3000); do
    grep -q "starting" "$OUT/loadgen.err" 2>/dev/null && break
    kill -0 "$LG_PID" 2>/dev/null || { echo "chaos: loadgen exited before starting:"; tail -n 20 "$OUT/loadgen.err"; exit 1; }
    sleep 0.1
done
grep "logged in" "$OUT/loadgen.err" || true
GO=$(awk -v n="$(now)" 'BEGIN { printf "%.3f", n + 0.7 }')
until_t() { # sleep until GO + $1
    local s
    s=$(awk -v g="$GO" -v t="$1" -v n="$(now)" 'BEGIN { d = g + t - n; printf "%.3f", (d > 0 ? d : 0) }')
    sleep "$s"
}
pick() { echo "n$(( RANDOM % NODES + 1 ))"; }
for e in "${SCHED[@]}"; do
    set -- $e
    until_t "$1"
    kill -0 "$LG_PID" 2>/dev/null || break
    case $2 in
        kill9)
            n=$(pick); pid=$(cat "$RUN/$n.pid")
            t0=$(now); kill -KILL "$pid"
            echo "[t=$1] kill -9 $n (pid $pid)"
            until_t "$(awk -v t="$1" -v d="$DOWN" 'BEGIN { print t + d }')"
            { cluster start "$n" || echo "chaos: restart of $n FAILED"; } | sed "s/^/[t=$1] restart: /"
            fault kill9 "$n" "$t0" "$(now)"
            ;;
        sigterm)
            n=$(pick); pid=$(cat "$RUN/$n.pid")
            t0=$(now); kill -TERM "$pid"
            echo "[t=$1] SIGTERM $n (pid $pid)"
            for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
            gone=$(now)
            echo "[t=$1] $n exited after $(awk -v a="$t0" -v b="$gone" 'BEGIN { printf "%.2f", b - a }') s"
            until_t "$(awk -v t="$1" -v d="$DOWN" 'BEGIN { print t + d }')"
            { cluster start "$n" || echo "chaos: restart of $n FAILED"; } | sed "s/^/[t=$1] restart: /"
            fault sigterm "$n" "$t0" "$(now)" "exited $(awk -v a="$t0" -v b="$gone" 'BEGIN { printf "%.2f", b - a }') s after the signal"
            ;;
        redis)
            t0=$(now)
            stop_pid "$REDIS_PID"
            start_redis
            t1=$(now)
            echo "[t=$1] Redis restarted (down $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s)"
            fault redis redis "$t0" "$t1"
            ;;
        mysql)
            t0=$(now); kill -USR1 "$PROXY_PID"
            echo "[t=$1] MySQL outage starts"
            until_t "$(awk -v t="$1" -v d="$MYSQL_DOWN" 'BEGIN { print t + d }')"
            kill -USR2 "$PROXY_PID"; t1=$(now)
            echo "[t=$1] MySQL back"
            fault mysql mysql "$t0" "$t1"
            ;;
    esac
done
rc=0
wait "$LG_PID" || rc=$?
LG_PID=
echo "chaos: loadgen exited with $rc"
tail -n 22 "$OUT/loadgen.out"
cp "$RUN"/*.log "$RUN"/nginx.conf "$OUT/logs/" 2>/dev/null || true
python3 bench/chaos_report.py --dir "$OUT" --logs "$OUT/logs" \
    --title "bench/chaos.sh: CONNS=$CONNS RATE=$RATE DURATION=$DURATION KILL_EVERY=$KILL_EVERY DOWN=$DOWN MYSQL_DOWN=$MYSQL_DOWN PROCS=$PROCS SEED=$SEED" \
    | tee "$OUT/summary.txt"
grep -q '^chaos: PASS' "$OUT/summary.txt"
