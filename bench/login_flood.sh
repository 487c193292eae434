#!/usr/bin/env bash
# What a wrong-password login flood does to everyone else (security issue,
# finding 1: before the fix, 48 flooding connections pushed another user's
# send median from 2-5 ms to 715 ms). Goal: other users' send latency stays
# within 2x of baseline.
#
# One server (--shards 1 as in the finding; SHARDS to change), real argon2
# parameters. Legitimate load: loadgen `direct` (CONNS connections, RATE
# msgs/s, DURATION s), run ROUNDS times without and ROUNDS times with the
# flood, alternating. The flood (loadgen's `login_flood` binary) starts once
# loadgen's users are logged in: FLOOD connections from 12 source addresses,
# wrong passwords for 1000 account names, as fast as the server answers.
# Compared: loadgen's ack latency p50/p99 (median over rounds), with/without.
#
# Usage: bench/login_flood.sh [--rounds N]    Env: BIN, CONNS (200), RATE (1000),
#        DURATION (30), FLOOD (48), SHARDS (1), RESULTS_MD (bench/RESULTS.md; - for none)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
ROUNDS=3
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) ROUNDS=$2; shift 2 ;;
        *) echo "usage: $0 [--rounds N]" >&2; exit 2 ;;
    esac
done
BIN=${BIN:-target/release}
CONNS=${CONNS:-200}; RATE=${RATE:-1000}; DURATION=${DURATION:-30}; FLOOD=${FLOOD:-48}
SHARDS=${SHARDS:-1}; RESULTS_MD=${RESULTS_MD:-bench/RESULTS.md}
[ -x "$BIN/ringchat" ] && [ -x "$BIN/loadgen" ] && [ -x "$BIN/login_flood" ] \
    || cargo build --release -p ringchat -p loadgen
WORK=$(mktemp -d /tmp/ringchat-login-flood.XXXXXX)
FLOOD_PID=
trap '[ -n "$FLOOD_PID" ] && kill "$FLOOD_PID" 2>/dev/null; stop_server; rm -rf "$WORK"' EXIT
echo "provisioning $CONNS users (real argon2 parameters)..."
"$BIN/ringchat" provision --data-dir "$WORK/data" --users "$CONNS" --prefix lf --friends-pairs >/dev/null
start_server "$BIN/ringchat" "$WORK/data" "$WORK/server.log" --shards "$SHARDS"
echo "server pid $SERVER_PID on $SERVER_ADDR (--shards $SHARDS)"

sessions() {
    python3 -c 'import sys, urllib.request
t = urllib.request.urlopen("http://" + sys.argv[1] + "/metrics", timeout=2).read().decode()
print(int(sum(float(l.split()[-1]) for l in t.splitlines() if l.startswith("ringchat_sessions{"))))' \
        "$METRICS_ADDR" 2>/dev/null || echo 0
}

# run_once NAME FLOOD(0/1): loadgen direct; with the flood started once loadgen's logins are done.
run_once() {
    local name=$1 flood=$2 out="$WORK/$1"
    mkdir -p "$out"
    "$BIN/loadgen" --server "$SERVER_ADDR" --prefix lf --scenario direct --connections "$CONNS" \
        --rate "$RATE" --duration "$DURATION" --drain 5 --server-pid "$SERVER_PID" \
        --report "$out" >"$out/loadgen.out" 2>&1 &
    local lg=$!
    if [ "$flood" = 1 ]; then
        # loadgen logs everyone in before it sends; start the flood then
        # (the server's session gauge says when).
        for _ in $(seq 1 600); do
            [ "$(sessions)" -ge "$CONNS" ] && break
            sleep 0.1
        done
        sleep 1
        "$BIN/login_flood" --server "$SERVER_ADDR" --connections "$FLOOD" --sources 12 \
            --accounts 1000 --duration $((DURATION + 5)) >"$out/flood.json" 2>"$out/flood.err" &
        FLOOD_PID=$!
    fi
    wait "$lg" || { echo "loadgen failed ($name):"; tail -20 "$out/loadgen.out"; exit 1; }
    if [ -n "$FLOOD_PID" ]; then wait "$FLOOD_PID" || true; FLOOD_PID=; fi
    python3 - "$out" "$name" <<'EOF'
import json, sys, os
d = json.load(open(os.path.join(sys.argv[1], "report.json")))
a = d["ack_ms"]
f = os.path.join(sys.argv[1], "flood.json")
fl = json.load(open(f)) if os.path.exists(f) and os.path.getsize(f) else None
bad = d["lost"] + d["duplicated"] + d["out_of_order"]
line = f'{sys.argv[2]:>10}: acked {d["acked"]} ack p50 {a["p50"]:.2f} ms p99 {a["p99"]:.2f} ms lost/dup/ooo {d["lost"]}/{d["duplicated"]}/{d["out_of_order"]}'
if fl:
    line += f' | flood {fl["attempts_per_s"]:.0f} attempts/s {fl["replies"]}'
print(line)
json.dump({"p50": a["p50"], "p99": a["p99"], "bad": bad, "flood": fl},
          open(os.path.join(sys.argv[1], "summary.json"), "w"))
EOF
}

for r in $(seq 1 "$ROUNDS"); do
    run_once "base-$r" 0
    run_once "flood-$r" 1
done

python3 - "$WORK" "$ROUNDS" "$CONNS" "$RATE" "$DURATION" "$FLOOD" "$SHARDS" "$RESULTS_MD" <<'EOF'
import json, os, statistics, sys, datetime, subprocess
work, rounds = sys.argv[1], int(sys.argv[2])
conns, rate, dur, flood, shards, md = sys.argv[3:9]
S = lambda n: json.load(open(os.path.join(work, n, "summary.json")))
base = [S(f"base-{r}") for r in range(1, rounds + 1)]
fl = [S(f"flood-{r}") for r in range(1, rounds + 1)]
med = lambda xs, k: statistics.median(x[k] for x in xs)
b50, b99, f50, f99 = med(base, "p50"), med(base, "p99"), med(fl, "p50"), med(fl, "p99")
r50, r99 = f50 / b50, f99 / b99
aps = statistics.median(x["flood"]["attempts_per_s"] for x in fl if x["flood"])
bad = sum(x["bad"] for x in base + fl)
ok = r50 <= 2.0 and r99 <= 2.0 and bad == 0
verdict = "PASS" if ok else "FAIL"
print(f"login-flood: {verdict} ack p50 {b50:.2f} -> {f50:.2f} ms ({r50:.2f}x), "
      f"p99 {b99:.2f} -> {f99:.2f} ms ({r99:.2f}x), flood {aps:.0f} attempts/s, "
      f"lost/dup/ooo {bad} (goal: within 2x)")
if md != "-":
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    date = datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M")
    with open(md, "a") as f:
        f.write(f"| {date} | {rev} | login flood ({flood} conns, 12 addrs, 1000 names; "
                f"--shards {shards}) vs {conns} conns x {rate}/s direct, {rounds} rounds x {dur} s | "
                f"ack p50 {b50:.2f}->{f50:.2f} ms ({r50:.2f}x), p99 {b99:.2f}->{f99:.2f} ms ({r99:.2f}x); "
                f"flood {aps:.0f} attempts/s; {verdict} |\n")
sys.exit(0 if ok else 1)
EOF
