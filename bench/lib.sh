# Shared helpers for bench/*.sh and perf/*.sh (sourced, not run).
# Starts servers on free loopback ports and cleans up only the processes
# these scripts started (by pid).

# free_port: a loopback port nothing listens on, never one this script was
# already given: the kernel may hand the same just-released port to two calls
# in a row, and a server given it for two listeners refuses to start (CI saw
# "ws-listen address ... is already in use"). The list lives in a file named
# after this shell's pid ($$ is the same in $(...) subshells).
free_port() {
    local seen=${TMPDIR:-/tmp}/ringchat-free-ports.$$ p
    while :; do
        p=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        if ! grep -qx "$p" "$seen" 2>/dev/null; then
            echo "$p" >> "$seen"
            echo "$p"
            return
        fi
    done
}

# insecure_fast_hash BIN: prints --insecure-fast-hash-for-tests if BIN knows it
# (needed with `provision --fast-hash`, and given to `serve` so the benchmark's
# cheap hashes are not upgraded at each first login: docs/SECURITY.md); older
# binaries (A/B runs) took --fast-hash alone.
insecure_fast_hash() {
    if "$1" provision --help 2>/dev/null | grep -q -- --insecure-fast-hash-for-tests; then
        echo --insecure-fast-hash-for-tests
    fi
}

# start_server BIN DATA_DIR LOG [extra serve args...] -> sets SERVER_PID, SERVER_ADDR, METRICS_ADDR
start_server() {
    local bin=$1 dir=$2 log=$3 port mport
    shift 3
    port=$(free_port); mport=$(free_port)
    SERVER_ADDR=127.0.0.1:$port
    METRICS_ADDR=127.0.0.1:$mport
    # The log exists before the wait below greps it (the background job's
    # redirection may not have run yet).
    : >"$log"
    # shellcheck disable=SC2046 # empty or one word
    "$bin" serve --listen "$SERVER_ADDR" --data-dir "$dir" --metrics "$METRICS_ADDR" \
        $(insecure_fast_hash "$bin") "$@" >"$log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 100); do
        grep -q "ringchat listening on" "$log" && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || { echo "server died:"; cat "$log"; return 1; }
        sleep 0.1
    done
    echo "server did not start:"; cat "$log"; return 1
}

stop_server() {
    if [ -n "${SERVER_PID:-}" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=
}
