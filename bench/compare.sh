#!/usr/bin/env bash
# Runs the same loadgen workload against two already-running servers, one
# after the other, and prints a side-by-side table with ratios B/A — e.g.
# the team's existing cc_ChatServer deployment (A) against ringchat (B)
# before migrating.
#
# Usage: bench/compare.sh ADDR_A ADDR_B [--protocol legacy|native]
#            [--connections N] [--rate R] [--duration S] [--scenario direct|group|connect|mixed]
#            [--prefix P] [--id-base-a N] [--id-base-b N] [--id-map-a F] [--id-map-b F]
#            [--protocol-a P] [--protocol-b P] [-- extra loadgen args...]
# --protocol-a/-b override --protocol for one side, e.g. the old server over
# legacy (A) against ringchat's native port (B).
# defaults: --protocol legacy --connections 1000 --rate 1000 --duration 20 --scenario direct
#
# Users must exist on both servers, named by loadgen's contract (users
# `<prefix><i>`, password `loadgen-pass`, users 2i/2i+1 friends, group j =
# users j*K..j*K+K-1 named `<prefix>g<j>`):
#   - ringchat: `ringchat provision --users N --prefix lg --friends-pairs
#     --groups N/10 --group-size 10 --fast-hash` before starting the server.
#   - the old server: created by the team (its own tables). The legacy login
#     is by numeric id: give the ids with --id-base-a (id of `<prefix>0`, the
#     others consecutive) or --id-map-a (file of `name id` lines). loadgen
#     checks every login reply's name, so a wrong mapping fails loudly.
# Over the legacy protocol sends are not acknowledged: only e2e latency is
# measured, and `rate` is messages written. Env: LOADGEN (binary), OUT (dir
# for the reports; default a temp dir that is removed).
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 2 ] || usage
A=$1; B=$2; shift 2
PROTO=legacy; CONNS=1000; RATE=1000; DUR=20; SCEN=direct; PREFIX=lg
IDA=(); IDB=(); EXTRA=(); PA=; PB=
while [ $# -gt 0 ]; do
    case "$1" in
        --protocol) PROTO=$2; shift 2 ;;
        --protocol-a) PA=$2; shift 2 ;;
        --protocol-b) PB=$2; shift 2 ;;
        --connections) CONNS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --duration) DUR=$2; shift 2 ;;
        --scenario) SCEN=$2; shift 2 ;;
        --prefix) PREFIX=$2; shift 2 ;;
        --id-base-a) IDA+=(--id-base "$2"); shift 2 ;;
        --id-base-b) IDB+=(--id-base "$2"); shift 2 ;;
        --id-map-a) IDA+=(--id-map "$2"); shift 2 ;;
        --id-map-b) IDB+=(--id-map "$2"); shift 2 ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) usage ;;
        *) echo "compare: unknown argument $1" >&2; usage ;;
    esac
done
PA=${PA:-$PROTO}; PB=${PB:-$PROTO}
LOADGEN=${LOADGEN:-target/release/loadgen}
[ -x "$LOADGEN" ] || cargo build --release -p loadgen
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT"; else OUT=$(mktemp -d /tmp/ringchat-compare.XXXXXX); trap 'rm -rf "$OUT"' EXIT; fi

status=0
run() { # name addr protocol id-args...
    local name=$1 addr=$2 proto=$3; shift 3
    echo "== $name: $addr ($proto $SCEN, $CONNS connections, $RATE msgs/s, ${DUR}s)" >&2
    if ! "$LOADGEN" --server "$addr" --protocol "$proto" --scenario "$SCEN" --prefix "$PREFIX" \
        --connections "$CONNS" --rate "$RATE" --duration "$DUR" --report "$OUT/$name" \
        "$@" ${EXTRA[@]+"${EXTRA[@]}"} > "$OUT/$name.txt" 2> "$OUT/$name.stderr"; then
        status=1
        echo "   loadgen reported a failure against $name:" >&2
        grep -E "FAIL|error" "$OUT/$name.stderr" >&2 || tail -5 "$OUT/$name.stderr" >&2
    fi
}
run A "$A" "$PA" ${IDA[@]+"${IDA[@]}"}
run B "$B" "$PB" ${IDB[@]+"${IDB[@]}"}

python3 - "$OUT/A/report.json" "$OUT/B/report.json" "$A" "$B" <<'PY'
import json, sys
def load(p):
    try:
        return json.load(open(p))
    except Exception:
        return None
a, b = load(sys.argv[1]), load(sys.argv[2])
if a is None or b is None:
    print("compare: a run produced no report (see the errors above)")
    sys.exit(0)
def errs(d):
    return d["conn_failures"] + d["send_errors"] + sum(d["errors"].values())
rows = [
    ("connections", lambda d: d["connections"]),
    ("connect rate /s", lambda d: d["connect_rate_per_s"]),
    ("rate achieved /s", lambda d: d["rate_per_s"]),
    ("delivered", lambda d: d["delivered"]),
    ("e2e p50 ms", lambda d: d["e2e_ms"]["p50"]),
    ("e2e p99 ms", lambda d: d["e2e_ms"]["p99"]),
    ("e2e max ms", lambda d: d["e2e_ms"]["max"]),
]
if "native" in (a.get("protocol"), b.get("protocol")):
    rows.append(("ack p99 ms", lambda d: d["ack_ms"]["p99"] if d.get("protocol") != "legacy" else None))
rows += [
    ("login p99 ms", lambda d: d["login_ms"]["p99"]),
    ("lost", lambda d: d["lost"]),
    ("duplicated", lambda d: d["duplicated"]),
    ("out of order", lambda d: d["out_of_order"]),
    ("errors", errs),
]
def fmt(v):
    if v is None:
        return "n/a"
    return f"{v:.3f}".rstrip("0").rstrip(".") if isinstance(v, float) else str(v)
w = max(len(sys.argv[3]), len(sys.argv[4]), 12)
print(f"\n{'':<18} {'A':>{w}} {'B':>{w}} {'B/A':>8}")
print(f"{'server':<18} {sys.argv[3]:>{w}} {sys.argv[4]:>{w}}")
print(f"{'protocol':<18} {a.get('protocol', '?'):>{w}} {b.get('protocol', '?'):>{w}}")
for name, f in rows:
    va, vb = f(a), f(b)
    if va is None or vb is None:
        ratio = "-"
    else:
        ratio = f"{vb / va:.2f}" if va else ("-" if not vb else "inf")
    print(f"{name:<18} {fmt(va):>{w}} {fmt(vb):>{w}} {ratio:>8}")
if "legacy" in (a.get("protocol"), b.get("protocol")):
    print("legacy protocol: no send acks, so no ack latency; rate = messages written")
for tag, d in (("A", a), ("B", b)):
    if d["errors"]:
        print(f"errors {tag}: {json.dumps(d['errors'])}")
PY
exit $status
