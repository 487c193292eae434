#!/usr/bin/env bash
# Property-based fuzzing on the stable toolchain (issue 10 item 5): runs each
# proptest target (tests/prop_*.rs) for about N minutes by re-running its
# test binary with a large PROPTEST_CASES (a fresh random seed every run,
# sized from the previous run's speed), one test thread at low priority.
# Prints executions and findings per target, appends a row to
# bench/RESULTS.md, exits non-zero on any finding (a failed property, a
# crash, or a run that hung past its timeout).
#
# Usage: bench/fuzz.sh [--minutes N] [--targets "prop_wire prop_legacy prop_core"]
#                      [--debug] [--no-record]
#   --minutes N  per target (default 2; fractions allowed, e.g. 0.5)
#   --debug      dev profile (overflow checks and debug assertions on);
#                default release, which shares build artefacts with bench/
#   --no-record  do not append to bench/RESULTS.md
# FUZZ_TEST_ARGS: extra arguments for the test binaries, e.g. a test name
# filter, or --include-ignored to fuzz the known-bug tests too.
# A failing case is shrunk by proptest and saved under tests/proptest-regressions
# (replayed first by every later run); reproduce with
#   cargo test --release --test <target> <test name>
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=2
TARGETS="prop_wire prop_legacy prop_core"
PROFILE=release
RECORD=1
while [ $# -gt 0 ]; do
    case $1 in
        --minutes) MINUTES=$2; shift 2 ;;
        --targets) TARGETS=$2; shift 2 ;;
        --debug) PROFILE=dev; shift ;;
        --no-record) RECORD=0; shift ;;
        *) sed -n '2,20p' "$0"; exit 2 ;;
    esac
done
BUDGET=$(python3 -c "print(max(1, int(float('$MINUTES') * 60)))")
WORK=$(mktemp -d /tmp/ringchat-fuzz.XXXXXX)
PROFILE_FLAG=()
[ "$PROFILE" = release ] && PROFILE_FLAG=(--release)

# Build every target first, so the time budget is spent fuzzing.
declare -A BIN
for t in $TARGETS; do
    out=$(cargo test "${PROFILE_FLAG[@]}" --test "$t" --no-run 2>&1) || { echo "$out"; exit 1; }
    BIN[$t]=$(echo "$out" | sed -n "s/.*Executable.*(\(.*\/$t-[0-9a-f]*\)).*/\1/p" | tail -1)
    [ -x "${BIN[$t]}" ] || { echo "no test binary for $t:"; echo "$out"; exit 1; }
done

declare -A EXECS FIND RUNS
TOTAL_FINDINGS=0
for t in $TARGETS; do
    echo "== $t: ~${BUDGET}s (${PROFILE})"
    start=$(date +%s)
    deadline=$((start + BUDGET))
    cases=500
    execs=0; findings=0; runs=0
    while :; do
        now=$(date +%s)
        [ "$now" -lt "$deadline" ] || break
        runs=$((runs + 1))
        log="$WORK/$t.$runs.log"
        t0=$(date +%s.%N)
        # Runs are sized for <= 60 s: one still going after 15 minutes hangs.
        rc=0
        PROPTEST_CASES=$cases timeout --signal=KILL 900 nice -n 10 \
            "${BIN[$t]}" --test-threads 1 ${FUZZ_TEST_ARGS:-} >"$log" 2>&1 || rc=$?
        t1=$(date +%s.%N)
        passed=$(sed -n 's/^test result: .* \([0-9]*\) passed;.*/\1/p' "$log" | tail -1)
        failed=$(sed -n 's/^test result: .* \([0-9]*\) failed;.*/\1/p' "$log" | tail -1)
        passed=${passed:-0}; failed=${failed:-0}
        execs=$((execs + cases * passed))
        if [ "$rc" -ne 0 ]; then
            # Failed properties (counted once per test: a saved failure is
            # replayed by every later run), or a crash/hang (no summary line).
            sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$log" >>"$WORK/$t.failed"
            [ "$failed" -gt 0 ] || echo "crash or hang (exit $rc) in run $runs" >>"$WORK/$t.failed"
            findings=$(sort -u "$WORK/$t.failed" | wc -l)
            echo "   run $runs: FAILED (exit $rc), log kept: $log"
            grep -E "^test .* FAILED|minimal failing input|panicked at|Test failed" "$log" | head -20 | sed 's/^/     /'
            cp "$log" "$WORK/finding-$t-$runs.log"
        fi
        secs=$(python3 -c "print(round($t1 - $t0, 2))")
        echo "   run $runs: PROPTEST_CASES=$cases x $passed tests in ${secs}s"
        # Size the next run to ~60 s or what is left, whichever is less.
        left=$((deadline - $(date +%s)))
        cases=$(python3 -c "
c, s, left = $cases, max($t1 - $t0, 0.05), $left
want = max(1.0, min(60.0, left))
print(max(10, min(c * 20, int(c * want / s))))")
        [ "$left" -gt 2 ] || break
    done
    EXECS[$t]=$execs; FIND[$t]=$findings; RUNS[$t]=$runs
    TOTAL_FINDINGS=$((TOTAL_FINDINGS + findings))
    echo "   $t: $execs executions in $runs runs, $findings findings"
    [ "$findings" -eq 0 ] || sort -u "$WORK/$t.failed" | sed 's/^/     finding: /'
done

echo
echo "== summary (${MINUTES} min per target, ${PROFILE})"
cells=()
for t in $TARGETS; do
    printf '%-12s %12s executions  %s findings\n' "$t" "${EXECS[$t]}" "${FIND[$t]}"
    cells+=("${t#prop_} ${EXECS[$t]} (${FIND[$t]})")
done
result=pass
[ "$TOTAL_FINDINGS" -eq 0 ] || result="FINDINGS: $(cat "$WORK"/*.failed 2>/dev/null | sort -u | paste -sd, -)"
row=" $(IFS=';'; echo "${cells[*]}" | sed 's/;/; /g') | $result |"
if [ "$RECORD" = 1 ]; then
    # One row in the "Fuzzing" table (created at the end the first time).
    ROW="| $(date -u +%Y-%m-%d-%H%M%S) | $(git rev-parse --short HEAD) | $PROFILE | $MINUTES |$row" \
    python3 - bench/RESULTS.md <<'PY'
import os, sys
path, row = sys.argv[1], os.environ["ROW"]
lines = open(path).read().rstrip("\n").split("\n")
head = [i for i, l in enumerate(lines) if l.startswith("## Fuzzing")]
if not head:
    lines += ["", "## Fuzzing (bench/fuzz.sh: proptest targets tests/prop_*.rs, stable toolchain)", "",
              "Executions = passing proptest cases (one generated input or operation sequence each);",
              "findings = failed properties, crashes or hangs.", "",
              "| date | commit | profile | min/target | executions (findings) per target | result |",
              "|---|---|---|---|---|---|"]
    at = len(lines)
else:
    at = head[0] + 1
    while at < len(lines) and not lines[at].startswith("|"):
        at += 1
    while at < len(lines) and lines[at].startswith("|"):
        at += 1
lines.insert(at, row)
open(path, "w").write("\n".join(lines) + "\n")
PY
    echo "appended to bench/RESULTS.md"
fi
if [ "$TOTAL_FINDINGS" -gt 0 ]; then
    echo "FINDINGS: $TOTAL_FINDINGS (logs in $WORK; shrunk inputs saved in tests/proptest-regressions/)"
    exit 1
fi
rm -rf "$WORK"
echo "no findings"
