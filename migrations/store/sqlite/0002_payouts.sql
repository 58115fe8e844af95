-- Withdrawals and payments (DESIGN §3: no double payout).
--
-- A payout is keyed by (chain, kind, queue_id, order_id): a repeat of a known
-- request finds its row. Its life: queued (listen) → claimed (a wallet's nonce
-- actor took it; no nonce yet, so a restart may put it back to queued) →
-- signed (nonce allocated, raw bytes and hash stored before broadcast) → sent
-- (the node accepted it) → mined → confirmed | failed; or refused (nothing was
-- signed) or cancelled (by a remove with its queue_id, only from queued).
CREATE TABLE payouts (
    id           INTEGER PRIMARY KEY,
    chain        TEXT    NOT NULL,
    kind         TEXT    NOT NULL,            -- withdraw | pay
    queue_id     TEXT    NOT NULL,
    order_id     TEXT    NOT NULL,            -- '' for a withdrawal
    content_hash BLOB    NOT NULL,            -- what was asked, to tell a repeat from a conflict
    symbol       TEXT    NOT NULL,
    from_address BLOB    NOT NULL,            -- as requested
    to_address   BLOB    NOT NULL,
    amount       TEXT    NOT NULL,            -- base units, decimal text
    state        TEXT    NOT NULL,
    announced    INTEGER NOT NULL DEFAULT 0,  -- status 2 published
    payer        BLOB,                        -- the wallet that pays: from_address or the collection wallet
    nonce        INTEGER,
    tx_hash      BLOB,                        -- the transaction that is (or was last) in flight
    block_number INTEGER,
    block_hash   BLOB,
    due          INTEGER,                     -- height at which a mined payout is decided
    success      INTEGER,                     -- receipt status once mined
    fee          TEXT,                        -- wei paid for gas once mined
    displaced    INTEGER NOT NULL DEFAULT 0,  -- its nonce was used by a transaction not ours
    error        TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    UNIQUE (chain, kind, queue_id, order_id)
);
CREATE INDEX payouts_state ON payouts (chain, state, id);
CREATE INDEX payouts_queue_id ON payouts (chain, queue_id);
CREATE INDEX payouts_due ON payouts (chain, due) WHERE state = 'mined';
-- One nonce of one wallet is never given to two payouts.
CREATE UNIQUE INDEX payouts_nonce ON payouts (chain, payer, nonce) WHERE nonce IS NOT NULL;

-- Every transaction signed for a payout: what a restart rebroadcasts, byte for byte.
CREATE TABLE payout_txs (
    tx_hash         BLOB    PRIMARY KEY,
    payout_id       INTEGER NOT NULL REFERENCES payouts (id),
    raw             BLOB    NOT NULL,
    gas_limit       INTEGER NOT NULL,
    max_fee_per_gas TEXT    NOT NULL,          -- wei
    priority_fee    TEXT    NOT NULL,          -- wei
    created_at      INTEGER NOT NULL
);
CREATE INDEX payout_txs_payout ON payout_txs (payout_id);

-- Final movements waiting to be applied to the wallet store's ledger, written
-- in the transaction that decides them; applied exactly once there.
CREATE TABLE ledger_outbox (
    id           INTEGER PRIMARY KEY,
    chain        TEXT    NOT NULL,
    symbol       TEXT    NOT NULL,
    address      BLOB    NOT NULL,
    delta        TEXT    NOT NULL,            -- signed base units
    kind         TEXT    NOT NULL,            -- deposit | payout | fee
    tx_hash      BLOB    NOT NULL,
    log_index    INTEGER NOT NULL,
    block_number INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    applied_at   INTEGER
);
CREATE INDEX ledger_outbox_pending ON ledger_outbox (id) WHERE applied_at IS NULL;
