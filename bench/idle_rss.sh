#!/usr/bin/env bash
# Idle memory after real-password logins (issue: idle RSS must stay under 32 MB).
# Provisions N users with the server's real argon2 parameters (19 MiB, t=2),
# starts one server, logs every user in once (loadgen `connect`), lets them
# go, waits, and prints the server's idle RSS (total and anonymous).
# Usage: bench/idle_rss.sh [--users N] [--idle SECS]   (defaults 1000, 15)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
USERS=1000; IDLE=15
while [ $# -gt 0 ]; do
    case $1 in
        --users) USERS=$2; shift 2 ;;
        --idle) IDLE=$2; shift 2 ;;
        *) echo "usage: $0 [--users N] [--idle SECS]"; exit 2 ;;
    esac
done
BIN=${BIN:-target/release}
[ -x "$BIN/ringchat" ] && [ -x "$BIN/loadgen" ] || cargo build --release -p ringchat -p loadgen
WORK=$(mktemp -d /tmp/ringchat-idle-rss.XXXXXX)
trap 'stop_server; rm -rf "$WORK"' EXIT
"$BIN/ringchat" provision --data-dir "$WORK/data" --users "$USERS" --prefix ir >/dev/null
start_server "$BIN/ringchat" "$WORK/data" "$WORK/server.log"
rss() { awk '/^VmRSS|^RssAnon/ {printf "%s %d KiB  ", $1, $2}' "/proc/$SERVER_PID/status"; echo; }
echo "fresh:            $(rss)"
"$BIN/loadgen" --server "$SERVER_ADDR" --prefix ir --scenario connect --connections "$USERS" \
    --duration 3 --drain 1 --server-pid "$SERVER_PID" >"$WORK/loadgen.out" 2>&1 \
    || { cat "$WORK/loadgen.out"; exit 1; }
grep -iE "conn|login" "$WORK/loadgen.out" | tail -3
echo "after $USERS logins (connections closed): $(rss)"
sleep "$IDLE"
echo "idle ${IDLE}s later:  $(rss)"
