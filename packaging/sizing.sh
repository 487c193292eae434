#!/usr/bin/env bash
# Measures what one idle logged-in connection costs the server: resident
# memory (VmRSS, RssAnon) and file descriptors, with 0 and with N connections
# held by loadgen (`--scenario connect`). Numbers for docs/DEPLOY.md.
# Usage: packaging/sizing.sh [--connections N] [--shards S] [--hold SECS]
#        (defaults 5000, 2, 20; needs target/release/{ringchat,loadgen})
set -euo pipefail
cd "$(dirname "$0")/.."
N=5000; SHARDS=2; HOLD=20
while [ $# -gt 0 ]; do
    case $1 in
        --connections) N=$2; shift 2 ;;
        --shards) SHARDS=$2; shift 2 ;;
        --hold) HOLD=$2; shift 2 ;;
        *) echo "usage: $0 [--connections N] [--shards S] [--hold SECS]"; exit 2 ;;
    esac
done
BIN=${BIN:-target/release}
[ -x "$BIN/ringchat" ] && [ -x "$BIN/loadgen" ] || { echo "build first: cargo build --release -p ringchat -p loadgen"; exit 1; }
WORK=$(mktemp -d /tmp/ringchat-sizing.XXXXXX)
SPID=""
trap '[ -n "$SPID" ] && kill "$SPID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN/ringchat" provision --data-dir "$WORK/data" --users "$N" --prefix sz --fast-hash --insecure-fast-hash-for-tests >/dev/null
: > "$WORK/server.out"
"$BIN/ringchat" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" --shards "$SHARDS" \
    --insecure-fast-hash-for-tests \
    >"$WORK/server.out" 2>"$WORK/server.err" &
SPID=$!
for _ in $(seq 1 100); do grep -q "listening on" "$WORK/server.out" && break; sleep 0.1; done
sleep 2
sample() { # label -> "rss_kib anon_kib fds"
    local r a f
    r=$(awk '/^VmRSS/ {print $2}' "/proc/$SPID/status")
    a=$(awk '/^RssAnon/ {print $2}' "/proc/$SPID/status")
    f=$(ls "/proc/$SPID/fd" | wc -l)
    echo "$r $a $f"
}
read -r R0 A0 F0 < <(sample)
echo "idle, 0 connections:  VmRSS ${R0} KiB  RssAnon ${A0} KiB  fds ${F0}  (${SHARDS} shards)"
"$BIN/loadgen" --server "127.0.0.1:$PORT" --prefix sz --scenario connect --connections "$N" \
    --duration "$HOLD" --drain 1 --server-pid "$SPID" >"$WORK/loadgen.out" 2>&1 &
LG=$!
# Sample near the end of the hold, when every connection is logged in.
sleep $((HOLD * 3 / 4 + 2))
read -r R1 A1 F1 < <(sample)
wait "$LG" || { cat "$WORK/loadgen.out"; exit 1; }
grep -iE "connections|connect rate|logins" "$WORK/loadgen.out" | head -3 || true
echo "idle, $N connections: VmRSS ${R1} KiB  RssAnon ${A1} KiB  fds ${F1}"
awk -v n="$N" -v r0="$R0" -v r1="$R1" -v a0="$A0" -v a1="$A1" -v f0="$F0" -v f1="$F1" 'BEGIN {
    printf "per connection: VmRSS %.0f B, RssAnon %.0f B, fds %.2f\n",
        (r1 - r0) * 1024 / n, (a1 - a0) * 1024 / n, (f1 - f0) / n }'
echo "fixed fds with 0 connections: ${F0} (listeners, rings, eventfds, store files, stdio)"
