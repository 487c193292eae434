#!/usr/bin/env bash
# Validates the packaging as far as this machine allows:
#   1. packaging/ringchat.service: `systemd-analyze verify` (with ExecStart
#      pointed at the built binary, which verify requires to exist) and the
#      offline hardening score of `systemd-analyze security`.
#   2. packaging/Dockerfile: with a reachable Docker daemon, builds the image
#      and runs it with the documented `docker run` options, then probes
#      /readyz and a chat login. Without one, runs the image's steps by hand:
#      the build stage's command, the runtime stage's file layout (staged in a
#      temporary root), the runtime's shared-library needs (only glibc and
#      libgcc_s and zlib, which debian:bookworm-slim has), and the binary started as an
#      unprivileged user with the image's environment, probed with the image's
#      HEALTHCHECK command.
# Usage: packaging/check.sh            (from anywhere; builds the release binary if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
WORK=$(mktemp -d /tmp/ringchat-packaging.XXXXXX)
PID=""
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---- build (the Dockerfile's build stage) ---------------------------------
BIN=${BIN:-$ROOT/target/release/ringchat}
if [ ! -x "$BIN" ]; then
    cargo build --release --locked -p ringchat
fi
ok "binary $BIN"

# ---- 1. systemd unit --------------------------------------------------------
if command -v systemd-analyze >/dev/null 2>&1; then
    mkdir -p "$WORK/unit"
    sed "s#/usr/local/bin/ringchat#$BIN#" packaging/ringchat.service > "$WORK/unit/ringchat.service"
    systemd-analyze verify "$WORK/unit/ringchat.service" || fail "systemd-analyze verify"
    ok "systemd-analyze verify packaging/ringchat.service"
    if score=$(cd "$WORK/unit" && systemd-analyze security --offline=true ringchat.service 2>/dev/null \
        | sed -n 's/.*Overall exposure level for ringchat.service: \([0-9.]*\).*/\1/p'); then
        [ -n "$score" ] && ok "systemd-analyze security --offline: exposure $score (0 best, 10 worst)"
        [ -n "$score" ] && awk -v s="$score" 'BEGIN { exit !(s <= 3.0) }' \
            || fail "hardening exposure ${score:-unknown} > 3.0"
    fi
    # The io_uring syscalls must be allowed explicitly (not in @system-service).
    grep -q '^SystemCallFilter=io_uring_setup io_uring_enter io_uring_register' packaging/ringchat.service \
        || fail "the unit does not allow the io_uring syscalls"
else
    echo "skip: systemd-analyze not installed (apt-get install systemd)"
fi

# ---- 2. container image -----------------------------------------------------
# The build context must hold what the build stage compiles.
for f in Cargo.toml Cargo.lock src vendor/glommio tools/loadgen ringchat.example.toml; do
    [ -e "$f" ] || fail "build context lacks $f"
    if grep -qxF "${f%%/*}/" .dockerignore || grep -qxF "$f" .dockerignore; then
        fail ".dockerignore excludes $f, which the build needs"
    fi
done
ok "build context (.dockerignore) keeps the sources"

LISTEN_PORT=$(free_port); METRICS_PORT=$(free_port)
if docker info >/dev/null 2>&1; then
    docker build -f packaging/Dockerfile -t ringchat:check .
    CID=$(docker run -d --rm --security-opt seccomp=unconfined \
        --ulimit memlock=-1 --ulimit nofile=1048576:1048576 \
        -p "127.0.0.1:$LISTEN_PORT:7000" -p "127.0.0.1:$METRICS_PORT:9100" ringchat:check)
    trap 'docker rm -f "$CID" >/dev/null 2>&1; cleanup' EXIT
    ADDR=127.0.0.1:$LISTEN_PORT
else
    echo "note: no Docker daemon here ($(command -v docker >/dev/null && echo 'client only' || echo 'no docker')): running the image's steps by hand"
    # Runtime stage: the files it copies, under a staged root.
    R=$WORK/root
    chmod 0755 "$WORK"   # mktemp made it 0700; the image's / is world-readable
    install -D -m 0755 "$BIN" "$R/usr/local/bin/ringchat"
    install -D -m 0644 ringchat.example.toml "$R/etc/ringchat/ringchat.toml"
    install -d -m 0700 "$R/var/lib/ringchat"
    ok "runtime layout staged in $R"
    # Shared libraries: all from libc6, libgcc-s1 and zlib1g (all in bookworm-slim;
    # zlib1g because dpkg needs it).
    extra=$(ldd "$R/usr/local/bin/ringchat" | awk '{print $1}' \
        | grep -vE '^(linux-vdso\.so|/lib64/ld-linux-x86-64\.so|ld-linux|libc\.so|libm\.so|libgcc_s\.so|libz\.so|libpthread\.so|libdl\.so|librt\.so)' || true)
    [ -z "$extra" ] || fail "the binary needs libraries bookworm-slim lacks: $extra"
    ok "shared libraries: glibc, libgcc_s, zlib only (all in bookworm-slim)"
    # USER ringchat: an unprivileged uid owning the data directory.
    chown -R 65534:65534 "$R/var/lib/ringchat"
    # The image's ENV (ports moved to free ones: host networking here). The
    # memlock limit stays this shell's (`docker run --ulimit memlock=-1` may
    # not be reproducible without CAP_SYS_RESOURCE); 2 shards fit in 8 MiB.
    echo "note: memlock limit $(ulimit -l) KiB, nofile $(ulimit -n), as uid 65534"
    (
        cd "$R/var/lib/ringchat"
        exec env -i PATH=/usr/bin:/bin RUST_LOG=info \
            RINGCHAT_LISTEN="127.0.0.1:$LISTEN_PORT" RINGCHAT_METRICS="127.0.0.1:$METRICS_PORT" \
            RINGCHAT_DATA_DIR="$R/var/lib/ringchat" RINGCHAT_SHARDS=2 \
            setpriv --reuid=65534 --regid=65534 --clear-groups \
            "$R/usr/local/bin/ringchat" serve --config "$R/etc/ringchat/ringchat.toml"
    ) > "$WORK/server.log" 2>&1 &
    PID=$!
    ADDR=127.0.0.1:$LISTEN_PORT
fi

# The image's HEALTHCHECK command, against the mapped metrics port.
HC=$(sed -n 's/.*CMD \["bash", "-c", "\(.*\)"\]$/\1/p' packaging/Dockerfile | sed 's/\\\\/\\/g')
[ -n "$HC" ] || fail "no HEALTHCHECK command found in packaging/Dockerfile"
HC=${HC//9100/$METRICS_PORT}
for i in $(seq 1 100); do
    bash -c "$HC" 2>/dev/null && break
    [ -n "$PID" ] && ! kill -0 "$PID" 2>/dev/null && { cat "$WORK/server.log"; fail "server exited"; }
    sleep 0.2
done
bash -c "$HC" || { cat "$WORK/server.log" 2>/dev/null; fail "HEALTHCHECK (/readyz) did not pass"; }
ok "HEALTHCHECK command: /readyz 200"
NAME=pkgcheck$RANDOM
printf '/register %s s3cret-pass!\n/login %s s3cret-pass!\n/quit\n' "$NAME" "$NAME" \
    | "$BIN" chat --server "$ADDR" > "$WORK/chat.out" 2>&1 || { cat "$WORK/chat.out"; fail "chat login"; }
grep -q "^ok login $NAME" "$WORK/chat.out" || { cat "$WORK/chat.out"; fail "chat login"; }
ok "register + login through $ADDR"
[ -n "$PID" ] && grep -q '"session started"\|session started' "$WORK/server.log" && ok "lifecycle log line seen"
echo "packaging checks passed"
