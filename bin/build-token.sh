#!/usr/bin/env bash
# Regenerates tests/contracts/TestUSDT.bin from TestUSDT.sol with the pinned
# solc (solcjs from npm, into .tools/). The committed .bin is what tests and
# bin/dev.sh deploy; run this after editing the source.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_solc
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
"$SOLCJS" --bin --optimize -o "$out" "$ROOT/tests/contracts/TestUSDT.sol" >/dev/null
cp "$out"/*TestUSDT.bin "$ROOT/tests/contracts/TestUSDT.bin"
echo "wrote tests/contracts/TestUSDT.bin ($(wc -c < "$ROOT/tests/contracts/TestUSDT.bin") hex chars)"
