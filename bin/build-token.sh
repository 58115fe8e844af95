#!/usr/bin/env bash
# Regenerates the test contracts' bytecode (tests/contracts/*.bin) from their
# sources with the pinned solc (solcjs from npm, into .tools/). The committed
# .bin files are what tests and bin/dev.sh deploy; run this after editing a
# source.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_solc
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for name in TestUSDT TestFalseToken; do
    "$SOLCJS" --bin --optimize -o "$out" "$ROOT/tests/contracts/$name.sol" >/dev/null
    cp "$out"/*"$name".bin "$ROOT/tests/contracts/$name.bin"
    echo "wrote tests/contracts/$name.bin ($(wc -c < "$ROOT/tests/contracts/$name.bin") hex chars)"
done
