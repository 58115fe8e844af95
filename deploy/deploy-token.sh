#!/bin/sh
# One-shot of docker-compose.yml: deploys the test USDT
# (tests/contracts/TestUSDT.bin: 6 decimals, `transfer` returns nothing, as
# mainnet USDT) on the stack's anvil from anvil's first account with its first
# nonce, which puts it at the address deploy/docker-config.json names, and
# mints 1,000,000 of it to anvil's second account for trying deposits.
# Does nothing when the token is already there. POSIX sh and curl only.
#
#   RPC_URL=http://127.0.0.1:8545 TOKEN_BIN=tests/contracts/TestUSDT.bin sh deploy/deploy-token.sh
set -eu
RPC_URL="${RPC_URL:-http://anvil:8545}"
TOKEN_BIN="${TOKEN_BIN:-/deploy/TestUSDT.bin}"
# anvil's well-known dev accounts (mnemonic "test test ... junk").
DEPLOYER=0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266
HOLDER=0x70997970c51812dc3a010c7d01b50e0d17dc79c8
# The first contract DEPLOYER creates (nonce 0): eth_config.tokens in
# deploy/docker-config.json.
TOKEN=0x5fbdb2315678afecb367f032d93f642f64180aa3

rpc() { # method params-json -> result (raw JSON), empty when the node does not answer
    curl -sf -H 'content-type: application/json' \
        -d "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"$1\",\"params\":$2}" "$RPC_URL" |
        sed -e 's/.*"result":\(.*\)}$/\1/' || true
}
receipt() { # tx hash (quoted) -> waits until it is mined
    i=0
    while [ "$(rpc eth_getTransactionReceipt "[$1]")" = null ]; do
        i=$((i + 1))
        [ "$i" -le 300 ] || { echo "no receipt for $1 within 30 s" >&2; exit 1; }
        sleep 0.1
    done
}
pad() { printf '%064s' "$1" | tr ' ' 0; }

i=0
until [ -n "$(rpc eth_chainId '[]')" ]; do
    i=$((i + 1))
    [ "$i" -le 120 ] || { echo "no node at $RPC_URL within 60 s" >&2; exit 1; }
    sleep 0.5
done

if [ "$(rpc eth_getCode "[\"$TOKEN\",\"latest\"]")" != '"0x"' ]; then
    echo "test USDT already at $TOKEN"
    exit 0
fi
nonce="$(rpc eth_getTransactionCount "[\"$DEPLOYER\",\"latest\"]")"
if [ "$nonce" != '"0x0"' ]; then
    echo "$DEPLOYER has sent transactions already (nonce $nonce): the token cannot land at $TOKEN; start from a fresh chain" >&2
    exit 1
fi

tx="$(rpc eth_sendTransaction "[{\"from\":\"$DEPLOYER\",\"data\":\"0x$(tr -d ' \r\n' <"$TOKEN_BIN")\"}]")"
case "$tx" in '"0x'*) ;; *) echo "deploying the token failed: $tx" >&2; exit 1 ;; esac
receipt "$tx"
if [ "$(rpc eth_getCode "[\"$TOKEN\",\"latest\"]")" = '"0x"' ]; then
    echo "the token did not land at $TOKEN" >&2
    exit 1
fi
# mint(address,uint256): 1,000,000 USDT (10^12 base units) to HOLDER.
tx="$(rpc eth_sendTransaction "[{\"from\":\"$DEPLOYER\",\"to\":\"$TOKEN\",\"data\":\"0x40c10f19$(pad "${HOLDER#0x}")$(pad e8d4a51000)\"}]")"
case "$tx" in '"0x'*) ;; *) echo "minting failed: $tx" >&2; exit 1 ;; esac
receipt "$tx"
echo "test USDT deployed at $TOKEN; 1,000,000 minted to $HOLDER"
