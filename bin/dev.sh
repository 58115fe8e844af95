#!/usr/bin/env bash
# Local dev environment in one command: an anvil chain with a test USDT, a dev
# config with embedded SQLite stores, and the daemon in the foreground.
#
#   bin/dev.sh            # Ctrl-C stops the daemon and the chain
#
# Environment: DEV_PORT (anvil, 8545), DEV_KEY (communication key, dev-secret),
# DEV_WALLET_KEY (wallet key-encryption key, dev-wallet-key),
# DEV_CONFIRM_HEIGHT (20), DEV_BLOCK_TIME (seconds per block, 1; 0 = mine on
# every transaction), RUST_LOG.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

PORT="${DEV_PORT:-8545}"
KEY="${DEV_KEY:-dev-secret}"
CONFIRM="${DEV_CONFIRM_HEIGHT:-20}"
BLOCK_TIME="${DEV_BLOCK_TIME:-1}"
DEV="$ROOT/target/dev"
RPC="http://127.0.0.1:$PORT"
# anvil's well-known dev accounts (mnemonic "test test ... junk").
DEPLOYER=0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266
USER_ADDR=0x70997970c51812dc3a010c7d01b50e0d17dc79c8
USER_KEY=0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d

ensure_anvil
ensure_rabbitmq
if port_open "$PORT"; then
    echo "port $PORT is taken: stop what runs there or set DEV_PORT" >&2
    exit 1
fi

say "building m2pool-payment"
(cd "$ROOT" && cargo build --quiet --bin m2pool-payment)

mkdir -p "$DEV"
rm -f "$DEV"/msg.db* "$DEV"/wallet.db*
mining=(); [ "$BLOCK_TIME" != 0 ] && mining=(--block-time "$BLOCK_TIME")
say "starting anvil on $RPC"
"$ANVIL_BIN" --port "$PORT" "${mining[@]}" >"$DEV/anvil.log" 2>&1 &
ANVIL_PID=$!
DAEMON_PID=
cleanup() {
    kill $DAEMON_PID $ANVIL_PID 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
wait_port "$PORT" 30 anvil

rpc() { # method params-json -> result (raw JSON)
    curl -sf -H 'content-type: application/json' \
        -d "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"$1\",\"params\":$2}" "$RPC" |
        sed -e 's/.*"result":\(.*\)}$/\1/'
}
receipt() { # tx hash -> receipt JSON, waiting for it
    local r
    for _ in $(seq 1 100); do
        r="$(rpc eth_getTransactionReceipt "[$1]")"
        [ "$r" != null ] && { echo "$r"; return 0; }
        sleep 0.1
    done
    echo "no receipt for $1" >&2; return 1
}
pad() { printf '%064s' "$1" | tr ' ' 0; }

say "deploying the test USDT"
tx="$(rpc eth_sendTransaction "[{\"from\":\"$DEPLOYER\",\"data\":\"0x$(cat "$ROOT/tests/contracts/TestUSDT.bin")\"}]")"
TOKEN="$(receipt "$tx" | sed -e 's/.*"contractAddress":"\(0x[0-9a-fA-F]*\)".*/\1/')"
# mint(address,uint256): 1,000,000 USDT to the test user
amount="$(printf '%x' 1000000000000)"
tx="$(rpc eth_sendTransaction "[{\"from\":\"$DEPLOYER\",\"to\":\"$TOKEN\",\"data\":\"0x40c10f19$(pad "${USER_ADDR#0x}")$(pad "$amount")\"}]")"
receipt "$tx" >/dev/null

cat >"$DEV/config.json" <<JSON
{
  "net": ["ETH"],
  "rmq_config": {
    "sub_addr": "amqp://guest:guest@127.0.0.1:5672/%2f",
    "pay":           { "queue": "pay.auto.queue",            "exchange": "pay.exchange", "routing": ["pay.auto.routing.key"] },
    "topup":         { "queue": "pay.recharge.queue",        "exchange": "pay.exchange", "routing": ["pay.recharge.routing.key"] },
    "withdraw":      { "queue": "pay.withdraw.queue",        "exchange": "pay.exchange", "routing": ["pay.withdraw.routing.key"] },
    "remove":        { "queue": "pay.remove.queue",          "exchange": "pay.exchange", "routing": ["pay.remove.routing.key"] },
    "pay_resp":      { "queue": "pay.auto.return.queue",     "exchange": "pay.exchange", "routing": ["pay.auto.return.routing.key"] },
    "topup_resp":    { "queue": "pay.recharge.return.queue", "exchange": "pay.exchange", "routing": ["pay.recharge.return.routing.key"] },
    "withdraw_resp": { "queue": "pay.withdraw.return.queue", "exchange": "pay.exchange", "routing": ["pay.withdraw.return.routing.key"] },
    "remove_resp":   { "queue": "pay.remove.return.queue",   "exchange": "pay.exchange", "routing": ["pay.remove.return.routing.key"] }
  },
  "msg_config": { "sqlite_path": "$DEV/msg.db" },
  "log_config": { "dir": "$DEV/logs" },
  "eth_config": {
    "rpc_url": "$RPC",
    "ws_url": "ws://127.0.0.1:$PORT",
    "confirm_height": $CONFIRM,
    "sqlite_path": "$DEV/wallet.db",
    "chain_id": 31337,
    "tokens": [ { "symbol": "USDT", "address": "$TOKEN", "decimals": 6 } ]
  }
}
JSON

# The test account is a hot wallet of the gateway, and anvil's account 2 the
# collection wallet, so withdrawals and payments work at once.
export M2POOL_WALLET_KEY="${DEV_WALLET_KEY:-dev-wallet-key}"
BIN="$ROOT/target/debug/m2pool-payment"
echo "$USER_KEY" | "$BIN" --config "$DEV/config.json" wallet import >/dev/null
echo "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a" |
    "$BIN" --config "$DEV/config.json" wallet import --collection >/dev/null

cat <<INFO

  dev chain     $RPC  (ws://127.0.0.1:$PORT, chain id 31337, ${BLOCK_TIME}s blocks)
  test USDT     $TOKEN  (6 decimals)
  test account  $USER_ADDR
                private key $USER_KEY
                10000 ETH and 1,000,000 USDT; a hot wallet of the gateway
  collection    0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc (anvil account 2)
  config        $DEV/config.json
  key           $KEY   (sign messages: target/debug/m2pool-payment sign --key $KEY FILE)
  RabbitMQ      amqp://guest:guest@127.0.0.1:5672, queues pay.*

INFO

say "running the daemon (Ctrl-C to stop)"
M2POOL_PAYMENT_KEY="$KEY" "$BIN" --config "$DEV/config.json" &
DAEMON_PID=$!
wait $DAEMON_PID
