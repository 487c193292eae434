#!/usr/bin/env bash
# Cross-node benchmark: a 2-node MySQL-backed cluster behind nginx
# (tools/cluster up 2), users provisioned into its database, loadgen direct
# through the nginx port, then tools/cluster down --purge.
#
# nginx (least_conn) spreads the connections over the nodes, so about half
# of the friend pairs have their two users on different nodes and their
# messages cross the Redis bus. While the load runs, the script reads each
# node's user set from Redis and prints how many pairs are split.
#
# Usage: bench/cluster.sh [loadgen args...]
#   default: --scenario direct --connections 2000 --rate 1000 --duration 20
# Env: NAME (cluster name, default lgbench), PORT (nginx port, default 7300;
# nodes on PORT+1, PORT+2), RINGCHAT_MYSQL, RINGCHAT_REDIS (as tools/cluster),
# OUT (report dir, default bench/results/cluster-<date>).
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${NAME:-lgbench}
PORT=${PORT:-7300}
MYSQL_URL=${RINGCHAT_MYSQL:-mysql://root@127.0.0.1:3306}
REDIS_URL=${RINGCHAT_REDIS:-redis://127.0.0.1:6379}
DB=ringchat_cluster_$NAME
RPREFIX="ringchat_cluster_$NAME:"
OUT=${OUT:-bench/results/cluster-$(date +%Y-%m-%d-%H%M%S)}
ARGS=("$@")
[ ${#ARGS[@]} -gt 0 ] || ARGS=(--scenario direct --connections 2000 --rate 1000 --duration 20)
[ -x target/release/ringchat ] && [ -x target/release/loadgen ] || cargo build --release -p ringchat -p loadgen
export RINGCHAT_BIN=${RINGCHAT_BIN:-$PWD/target/release/ringchat}
mkdir -p "$OUT"
hostport() { local r="${1#*://}"; r="${r##*@}"; echo "${r%%/*}"; }
RH=$(hostport "$REDIS_URL")
rcli() { redis-cli -h "${RH%:*}" -p "${RH##*:}" "$@"; }

LG_PID=
cleanup() {
    [ -z "$LG_PID" ] || kill "$LG_PID" 2>/dev/null || true
    tools/cluster down --name "$NAME" --purge || true
}
trap cleanup EXIT

# Users first: provision creates the database and schema if needed, and the
# nodes load friendships and groups from it.
target/release/ringchat provision --store "$MYSQL_URL/$DB" --users 2000 --prefix cl \
    --friends-pairs --groups 200 --group-size 10 --fast-hash --insecure-fast-hash-for-tests
# The users have fast test hashes: keep them (docs/SECURITY.md).
RINGCHAT_SERVE_EXTRA=--insecure-fast-hash-for-tests tools/cluster up 2 --name "$NAME" --port "$PORT"

target/release/loadgen --server "127.0.0.1:$PORT" --prefix cl --report "$OUT/report" \
    "${ARGS[@]}" > "$OUT/loadgen.txt" 2> "$OUT/loadgen.stderr" &
LG_PID=$!
# Once everyone is logged in, see where nginx put each user.
for _ in $(seq 1 600); do
    grep -q "starting" "$OUT/loadgen.stderr" 2>/dev/null && break
    kill -0 "$LG_PID" 2>/dev/null || break
    sleep 0.1
done
sleep 1
rcli SMEMBERS "${RPREFIX}users:n1" | sort > "$OUT/users-n1.txt" || true
rcli SMEMBERS "${RPREFIX}users:n2" | sort > "$OUT/users-n2.txt" || true
MH=$(hostport "$MYSQL_URL")
mysql -h "${MH%:*}" -P "${MH##*:}" -u root -N -e \
    "SELECT id, username FROM \`$DB\`.users WHERE username LIKE 'cl%'" > "$OUT/ids.txt" || true
status=0
wait "$LG_PID" || status=$?
LG_PID=
cat "$OUT/loadgen.txt"
python3 - "$OUT" <<'PY'
import sys, os
d = sys.argv[1]
def ids(f):
    try:
        return {l.strip() for l in open(os.path.join(d, f)) if l.strip()}
    except OSError:
        return set()
n1, n2 = ids("users-n1.txt"), ids("users-n2.txt")
name_id = {}
for l in open(os.path.join(d, "ids.txt")):
    i, n = l.split()
    name_id[n] = i
def node(i):
    return "n1" if i in n1 else ("n2" if i in n2 else "?")
pairs = split = unknown = 0
k = 0
while f"cl{2*k}" in name_id and f"cl{2*k+1}" in name_id:
    a, b = node(name_id[f"cl{2*k}"]), node(name_id[f"cl{2*k+1}"])
    if a in ("n1", "n2") and b in ("n1", "n2"):
        pairs += 1
        split += a != b
    elif len(n1) + len(n2) and (a != "?" or b != "?"):
        unknown += 1
    k += 1
print(f"nodes: n1 {len(n1)} users, n2 {len(n2)} users; friend pairs on different nodes: "
      f"{split} of {pairs} ({100.0 * split / max(pairs, 1):.0f} %)")
PY
grep -E "FAIL" "$OUT/loadgen.stderr" || true
echo "report: $OUT/report/report.html"
exit $status
