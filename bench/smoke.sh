#!/usr/bin/env bash
# CI smoke test for loadgen + server: 500 connections, 10 s of direct and
# 5 s of group messages at a modest rate, 5 s of direct over the legacy JSON
# protocol (open and closed loop), a login storm, and the failover smoke (bench/failover_smoke.sh:
# the server is killed with SIGKILL and restarted mid-run; loadgen
# --reconnect must end with every message acked exactly once, in order);
# fails on any lost, duplicated or out-of-order message (no latency
# thresholds: CI machines are noisy).
# Uses existing binaries if present (PROFILE=release|debug, default release),
# else builds them. Prints `loadgen smoke: N passed, 0 failed` on success.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
PROFILE=${PROFILE:-release}
BIN=target/$PROFILE
if [ ! -x "$BIN/ringchat" ] || [ ! -x "$BIN/loadgen" ]; then
    if [ "$PROFILE" = release ]; then cargo build --release -p ringchat -p loadgen; else cargo build -p ringchat -p loadgen; fi
fi
WORK=$(mktemp -d /tmp/ringchat-smoke.XXXXXX)
trap 'stop_server; rm -rf "$WORK"' EXIT
# Users must exist before the server starts (provision writes the store directly).
"$BIN/ringchat" provision --data-dir "$WORK/data" --users 500 --prefix sm \
    --friends-pairs --groups 50 --group-size 10 --fast-hash $(insecure_fast_hash "$BIN/ringchat")
LEGACY_ADDR=127.0.0.1:$(free_port)
WS_ADDR=127.0.0.1:$(free_port)
start_server "$BIN/ringchat" "$WORK/data" "$WORK/server.log" --legacy-listen "$LEGACY_ADDR" \
    --ws-listen "$WS_ADDR" --max-send-rate 0
pass=0; fail=0
run() {
    local name=$1; shift
    if "$BIN/loadgen" --server "${SRV:-$SERVER_ADDR}" --prefix sm --server-pid "$SERVER_PID" \
        --report "$WORK/$name" "$@" >"$WORK/$name.out" 2>&1; then
        pass=$((pass + 1)); echo "ok   $name"
    else
        fail=$((fail + 1)); echo "FAIL $name"; cat "$WORK/$name.out"; tail -20 "$WORK/server.log"
    fi
}
run direct --scenario direct --connections 500 --rate 500 --duration 10 --drain 10
run group --scenario group --connections 500 --group-size 10 --rate 100 --duration 5 --drain 10
# Legacy JSON protocol (fresh store: user sm<i> has id i+1, loadgen's default).
# At most 32 logins in flight: the legacy listener admits 64 unauthenticated
# connections per source address (docs/SECURITY.md).
SRV=$LEGACY_ADDR run legacy --protocol legacy --scenario direct --connections 500 --rate 250 --duration 5 --drain 10 --max-inflight 32
# Closed loop (2 in flight per connection, as fast as the server goes; the
# per-user send limit is off on this server so that it measures the path).
SRV=$LEGACY_ADDR run legacy-closed --protocol legacy --scenario direct --connections 500 --closed-loop 2 --duration 5 --drain 10 --max-inflight 32
# The same scenarios over WebSocket (one frame per binary message).
SRV=$WS_ADDR run ws-direct --protocol ws --scenario direct --connections 500 --rate 500 --duration 5 --drain 10
SRV=$WS_ADDR run ws-group --protocol ws --scenario group --connections 500 --group-size 10 --rate 100 --duration 5 --drain 10
run storm --scenario login-storm --connections 500 --duration 2 --expect-connections 500
if PROFILE=$PROFILE CONNS=300 RATE=300 DURATION=12 KILLS=2 bench/failover_smoke.sh >"$WORK/failover.out" 2>&1; then
    pass=$((pass + 1)); echo "ok   failover"
else
    fail=$((fail + 1)); echo "FAIL failover"; tail -40 "$WORK/failover.out"
fi
echo "loadgen smoke: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
