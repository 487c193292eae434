#!/usr/bin/env bash
# Failover smoke: loadgen survives server deaths with exact accounting.
#
# Starts a release server, runs `loadgen --reconnect` (mixed: direct + group
# messages) with CONNS connections sending RATE msgs/s, kills the server with
# SIGKILL mid-run KILLS times, each time restarting it on the same data dir
# and port (the embedded SQLite store persists), then checks loadgen's
# report.json: reconnects > 0, lost 0, duplicated 0, out-of-order 0, every
# sent message acked (unacked 0, send_errors 0), nothing held back.
#
# MODE=cluster does the same through nginx in front of a 2-node cluster
# (tools/cluster: MariaDB + Redis): each kill takes one node down (n1, n2,
# n1, ...) and restarts it with the same arguments after DOWN_MS; loadgen
# reconnects through the nginx port, landing on whichever node is up.
#
# Usage: bench/failover_smoke.sh            (PROFILE=release|debug, default release)
# Env: CONNS (400), RATE (400), DURATION (20 s of sending), KILLS (2),
#      DOWN_MS (how long the server stays dead, 1500), KEEP=1 keeps the work dir,
#      LOADGEN_ARGS (extra loadgen arguments, e.g. "--procs 2"),
#      FAULT=no-resend|double-send|resend-new-id makes loadgen misbehave on
#      purpose; the check must then FAIL: unacked (no-resend: unacked
#      messages forgotten at a reconnect), duplicated (double-send: every
#      100th message sent twice under two client_msg_ids; resend-new-id:
#      resends under a new id, duplicated only if a first try had been
#      stored, which a kill does not always produce).
# Last line: `failover smoke: PASS ...` or `failover smoke: FAIL <reasons>`.
# OUT=dir copies loadgen's report (report.json, report.html) there.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
PROFILE=${PROFILE:-release}
BIN=target/$PROFILE
CONNS=${CONNS:-400}
RATE=${RATE:-400}
DURATION=${DURATION:-20}
KILLS=${KILLS:-2}
DOWN_MS=${DOWN_MS:-1500}
MODE=${MODE:-single}
case $MODE in single|cluster) ;; *) echo "failover smoke: MODE is single or cluster" >&2; exit 2 ;; esac
if [ ! -x "$BIN/ringchat" ] || [ ! -x "$BIN/loadgen" ]; then
    if [ "$PROFILE" = release ]; then cargo build --release -p ringchat -p loadgen; else cargo build -p ringchat -p loadgen; fi
fi
WORK=$(mktemp -d /tmp/ringchat-failover.XXXXXX)
LG_PID=
CNAME=lgfo$$
cleanup() {
    [ -z "$LG_PID" ] || kill "$LG_PID" 2>/dev/null || true
    stop_server
    if [ "$MODE" = cluster ]; then
        [ -z "${KEEP:-}" ] || cp -r "$RUN" "$WORK/cluster-run" 2>/dev/null
        tools/cluster down --name "$CNAME" --purge >/dev/null 2>&1 || true
    fi
    if [ -n "${KEEP:-}" ]; then echo "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

if [ "$MODE" = single ]; then
    "$BIN/ringchat" provision --data-dir "$WORK/data" --users "$CONNS" --prefix fo \
        --friends-pairs --groups $(( CONNS / 10 )) --group-size 10 --fast-hash $(insecure_fast_hash "$BIN/ringchat") > "$WORK/provision.log"
    PORT=$(free_port)
    SERVER_ADDR=127.0.0.1:$PORT
    # serve N: starts (or restarts) the server on the same port and data dir.
    serve() {
        local log=$WORK/server-$1.log
        "$BIN/ringchat" serve --listen "$SERVER_ADDR" --data-dir "$WORK/data" \
            $(insecure_fast_hash "$BIN/ringchat") >"$log" 2>&1 &
        SERVER_PID=$!
        echo "$SERVER_PID" > "$WORK/server.pid"
        for _ in $(seq 1 200); do
            grep -q "ringchat listening on" "$log" 2>/dev/null && return 0
            kill -0 "$SERVER_PID" 2>/dev/null || { echo "server died:"; cat "$log"; return 1; }
            sleep 0.05
        done
        echo "server did not start:"; cat "$log"; return 1
    }
    serve 0
    victim() { echo "$SERVER_PID"; }
    revive() { serve "$1"; }
else
    MYSQL_URL=${RINGCHAT_MYSQL:-mysql://root@127.0.0.1:3306}
    REDIS_URL=${RINGCHAT_REDIS:-redis://127.0.0.1:6379}
    RUN=/tmp/ringchat-cluster-$CNAME
    # nginx on PORT, nodes on PORT+1, PORT+2 (and their WebSocket listeners
    # 50 above, as tools/cluster lays them out): find the free ports.
    for _ in $(seq 1 50); do
        PORT=$(( 20000 + RANDOM % 20000 ))
        python3 -c "import socket,sys
for p in [*range($PORT, $PORT + 3), *range($PORT + 50, $PORT + 53)]:
    s = socket.socket(); s.bind(('127.0.0.1', p)); s.close()" 2>/dev/null && break
    done
    SERVER_ADDR=127.0.0.1:$PORT
    "$BIN/ringchat" provision --store "$MYSQL_URL/ringchat_cluster_$CNAME" --users "$CONNS" --prefix fo \
        --friends-pairs --groups $(( CONNS / 10 )) --group-size 10 --fast-hash $(insecure_fast_hash "$BIN/ringchat") > "$WORK/provision.log"
    # The cluster is laid out as tools/cluster does (its run directory, pid
    # files, nginx template), so `tools/cluster down --purge` cleans it up,
    # but each node gets its own --data-dir (tools/cluster starts every node
    # with the default ./data, whose lock the second node then refuses).
    mkdir -p "$RUN"
    # start_node I TAG: starts (or restarts) node nI with the same arguments.
    start_node() {
        local i=$1 log=$RUN/n$1-$2.log pid
        mkdir -p "$WORK/n$i"
        "$BIN/ringchat" serve --listen "127.0.0.1:$(( PORT + i ))" --shards 1 --data-dir "$WORK/n$i" \
            --ws-listen "127.0.0.1:$(( PORT + 50 + i ))" \
            --store "$MYSQL_URL/ringchat_cluster_$CNAME" --redis "$REDIS_URL" --node-id "n$i" \
            --redis-prefix "ringchat_cluster_$CNAME:" $(insecure_fast_hash "$BIN/ringchat") \
            > "$log" 2>&1 < /dev/null &
        pid=$!
        echo "$pid" > "$RUN/n$i.pid"
        [ "$i" != 1 ] || echo "$pid" > "$WORK/server.pid"
        for _ in $(seq 1 300); do
            grep -q "listening on" "$log" 2>/dev/null && return 0
            kill -0 "$pid" 2>/dev/null || { echo "node n$i died:"; cat "$log"; return 1; }
            sleep 0.1
        done
        echo "node n$i did not start:"; cat "$log"; return 1
    }
    start_node 1 0
    start_node 2 0
    awk -v listen="127.0.0.1:$PORT" -v wslisten="127.0.0.1:$(( PORT + 50 ))" -v run="$RUN" \
        -v nodes="127.0.0.1:$(( PORT + 1 )) 127.0.0.1:$(( PORT + 2 ))" \
        -v wsnodes="127.0.0.1:$(( PORT + 51 )) 127.0.0.1:$(( PORT + 52 ))" '
        /^[[:space:]]*#/ { print; next }
        /\{\{NODE\}\}/ { n = split(nodes, a, " "); for (i = 1; i <= n; i++) { l = $0; gsub(/\{\{NODE\}\}/, a[i], l); print l }; next }
        /\{\{WS_NODE\}\}/ { n = split(wsnodes, a, " "); for (i = 1; i <= n; i++) { l = $0; gsub(/\{\{WS_NODE\}\}/, a[i], l); print l }; next }
        { gsub(/\{\{LISTEN\}\}/, listen); gsub(/\{\{WS_LISTEN\}\}/, wslisten); gsub(/\{\{RUN_DIR\}\}/, run); print }' nginx/ringchat.conf > "$RUN/nginx.conf"
    nginx -c "$RUN/nginx.conf" -e "$RUN/error.log"
    for _ in $(seq 1 50); do [ -s "$RUN/nginx.pid" ] && break; sleep 0.1; done
    echo "cluster: nginx on $SERVER_ADDR (pid $(cat "$RUN/nginx.pid")), nodes on ports $(( PORT + 1 )), $(( PORT + 2 ))"
    # The node killed by kill k: n1, n2, n1, ...
    node_of() { echo $(( ($1 - 1) % 2 + 1 )); }
    victim() { cat "$RUN/n$(node_of "$KILL_NO").pid"; }
    revive() { start_node "$(node_of "$1")" "$1"; }
fi
"$BIN/loadgen" --server "$SERVER_ADDR" --prefix fo --scenario mixed --group-size 10 \
    --connections "$CONNS" --rate "$RATE" --duration "$DURATION" --drain 30 --reconnect \
    --server-pid-file "$WORK/server.pid" --report "$WORK/report" ${FAULT:+--test-fault "$FAULT"} ${LOADGEN_ARGS:-} > "$WORK/loadgen.out" 2> "$WORK/loadgen.err" &
LG_PID=$!
for _ in $(seq 1 600); do
    grep -q "starting" "$WORK/loadgen.err" 2>/dev/null && break
    kill -0 "$LG_PID" 2>/dev/null || break
    sleep 0.1
done
# KILLS kills spread evenly over the sending window.
for k in $(seq 1 "$KILLS"); do
    KILL_NO=$k
    sleep "$(awk -v d="$DURATION" -v k="$KILLS" 'BEGIN { printf "%.1f", d / (k + 1) }')"
    kill -0 "$LG_PID" 2>/dev/null || break
    V=$(victim)
    echo "kill -9 server (pid $V) at $(date -u +%T)"
    kill -KILL "$V"
    wait "$V" 2>/dev/null || true
    sleep "$(awk -v m="$DOWN_MS" 'BEGIN { printf "%.3f", m / 1000 }')"
    revive "$k"
    echo "server restarted (pid $(victim))"
done
rc=0
wait "$LG_PID" || rc=$?
LG_PID=
tail -n 25 "$WORK/loadgen.out"
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && cp "$WORK"/report/* "$OUT"/ && echo "report: $OUT/report.html"; fi
grep -E "FAIL|login failures" "$WORK/loadgen.err" || true
python3 - "$WORK/report/report.json" "$rc" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
rc = int(sys.argv[2])
bad = []
def need(cond, what):
    if not cond:
        bad.append(what)
need(j["reconnects"] > 0, f"reconnects = {j['reconnects']} (expected > 0)")
for k in ("lost", "duplicated", "out_of_order", "unacked", "send_errors", "held_back"):
    need(j[k] == 0, f"{k} = {j[k]}")
need(j["sent"] > 0 and j["acked"] == j["sent"], f"acked {j['acked']} of {j['sent']} sent")
need(j["delivered"] == j["expected_deliveries"],
     f"delivered {j['delivered']} != expected {j['expected_deliveries']}")
need(rc == 0, f"loadgen exited {rc}")
print(f"reconnects {j['reconnects']} (losses {j['losses']}, failed attempts {j['reconnect_failures']}), "
      f"resent {j['resent']} (deduped by the server {j['resend_deduped']}), "
      f"resume p99 {j['resume_ms']['p99']} ms, unavailable max {j['unavailable_ms']} ms, "
      f"gaps {j['gaps']}, redelivered {j['redelivered']}")
if bad:
    print("failover smoke: FAIL " + "; ".join(bad))
    sys.exit(1)
print(f"failover smoke: PASS {j['sent']} sent, {j['acked']} acked, {j['delivered']} delivered, "
      f"0 lost/dup/out-of-order across {j['reconnects']} reconnects")
PY
