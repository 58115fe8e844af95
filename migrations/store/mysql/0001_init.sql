-- Message store of m2pool-payment on MySQL 8 / MariaDB 10.6+: the schema the
-- SQLite migrations (migrations/store/sqlite) arrive at, in one step. Same
-- tables, columns and meanings; what SQLite keeps in partial indexes is an
-- ordinary index here, and the inbox's partial unique index is a unique index
-- on a generated column that is NULL where SQLite's index holds no row.

-- Requests as received.
CREATE TABLE inbox (
    id          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    kind        VARCHAR(16)  NOT NULL,            -- topup | withdraw | pay | remove
    body_hash   VARBINARY(32) NOT NULL,           -- sha256 of kind and body
    body        MEDIUMBLOB   NOT NULL,
    outcome     VARCHAR(16)  NOT NULL,            -- accepted | refused | bad_signature | unaddressable
    error       TEXT,
    received_at BIGINT       NOT NULL,            -- unix milliseconds
    -- The body hash of every request but an accepted topup: a repeat of one
    -- of those is told apart by it (SQLite: a partial unique index).
    deduped     VARBINARY(32) GENERATED ALWAYS AS
        (CASE WHEN kind <> 'topup' OR outcome <> 'accepted' THEN body_hash END) STORED,
    UNIQUE KEY inbox_body (deduped),
    KEY inbox_hash (body_hash)
) ENGINE=InnoDB;

-- Watches and stops, in order; the watch set is replayed from it.
CREATE TABLE watch_log (
    id      BIGINT        NOT NULL AUTO_INCREMENT PRIMARY KEY,
    chain   VARCHAR(16)   NOT NULL,
    address VARBINARY(20) NOT NULL,
    symbol  VARCHAR(32)   NOT NULL,
    watched BIGINT        NOT NULL,               -- 1 watch, 0 stop watching
    at      BIGINT        NOT NULL,               -- unix milliseconds
    block   BIGINT,
    KEY watch_log_address (chain, address, symbol)
) ENGINE=InnoDB;

CREATE TABLE deposits (
    id           BIGINT        NOT NULL AUTO_INCREMENT PRIMARY KEY,
    chain        VARCHAR(16)   NOT NULL,
    tx_hash      VARBINARY(32) NOT NULL,
    log_index    BIGINT        NOT NULL,          -- -1 for the native coin
    symbol       VARCHAR(32)   NOT NULL,
    address      VARBINARY(20) NOT NULL,
    from_address VARBINARY(20) NOT NULL,
    amount       VARCHAR(80)   NOT NULL,          -- base units, decimal text
    block_number BIGINT        NOT NULL,
    block_hash   VARBINARY(32) NOT NULL,
    state        BIGINT        NOT NULL,
    due          BIGINT        NOT NULL,          -- height at which it is decided
    created_at   BIGINT        NOT NULL,
    updated_at   BIGINT        NOT NULL,
    decimals     BIGINT,
    UNIQUE KEY deposits_tx (chain, tx_hash, log_index),
    KEY deposits_due (chain, state, due),
    KEY deposits_state (state, chain)
) ENGINE=InnoDB;

-- The applied chain window: the cursor is the highest block of each chain.
CREATE TABLE chain_blocks (
    chain       VARCHAR(16)   NOT NULL,
    number      BIGINT        NOT NULL,
    hash        VARBINARY(32) NOT NULL,
    parent_hash VARBINARY(32) NOT NULL,
    PRIMARY KEY (chain, number)
) ENGINE=InnoDB;

-- Responses waiting for the broker.
CREATE TABLE outbox (
    id         BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
    kind       VARCHAR(32) NOT NULL,              -- topup_resp | withdraw_resp | pay_resp | remove_resp | dead:…
    body       MEDIUMBLOB  NOT NULL,
    created_at BIGINT      NOT NULL,
    sent_at    BIGINT,
    reason     TEXT,
    line       TEXT,
    KEY outbox_unsent (sent_at, id)
) ENGINE=InnoDB;

CREATE TABLE payouts (
    id               BIGINT        NOT NULL AUTO_INCREMENT PRIMARY KEY,
    chain            VARCHAR(16)   NOT NULL,
    kind             VARCHAR(16)   NOT NULL,      -- withdraw | pay
    queue_id         VARCHAR(255)  NOT NULL,
    order_id         VARCHAR(255)  NOT NULL,      -- '' for a withdrawal
    content_hash     VARBINARY(32) NOT NULL,
    symbol           VARCHAR(32)   NOT NULL,
    from_address     VARBINARY(20) NOT NULL,
    to_address       VARBINARY(20) NOT NULL,
    amount           VARCHAR(80)   NOT NULL,      -- base units, decimal text
    state            VARCHAR(16)   NOT NULL,
    announced        BIGINT        NOT NULL DEFAULT 0,
    payer            VARBINARY(20),
    nonce            BIGINT,
    tx_hash          VARBINARY(32),
    block_number     BIGINT,
    block_hash       VARBINARY(32),
    due              BIGINT,
    success          BIGINT,
    fee              VARCHAR(80),
    displaced        BIGINT        NOT NULL DEFAULT 0,
    error            TEXT,
    created_at       BIGINT        NOT NULL,
    updated_at       BIGINT        NOT NULL,
    decimals         BIGINT,
    contract         VARBINARY(20),
    announced_tx     VARBINARY(32),
    refused_at       BIGINT,
    refusal          TEXT,
    cancel_requested BIGINT        NOT NULL DEFAULT 0,
    cancel_mined     BIGINT        NOT NULL DEFAULT 0,
    UNIQUE KEY payouts_key (chain, kind, queue_id, order_id),
    KEY payouts_state (chain, state, id),
    KEY payouts_queue_id (chain, queue_id),
    KEY payouts_due (chain, state, due),
    UNIQUE KEY payouts_nonce (chain, payer, nonce),
    KEY payouts_cancel (chain, cancel_requested, state, id)
) ENGINE=InnoDB;

-- Every transaction signed for a payout.
CREATE TABLE payout_txs (
    tx_hash         VARBINARY(32) NOT NULL PRIMARY KEY,
    payout_id       BIGINT        NOT NULL,
    raw             MEDIUMBLOB    NOT NULL,
    gas_limit       BIGINT        NOT NULL,
    max_fee_per_gas VARCHAR(80)   NOT NULL,       -- wei
    priority_fee    VARCHAR(80)   NOT NULL,       -- wei
    created_at      BIGINT        NOT NULL,
    cancels         BIGINT        NOT NULL DEFAULT 0,
    KEY payout_txs_payout (payout_id),
    CONSTRAINT payout_txs_payout_fk FOREIGN KEY (payout_id) REFERENCES payouts (id)
) ENGINE=InnoDB;

-- Final movements for the wallet store's ledger.
CREATE TABLE ledger_outbox (
    id           BIGINT        NOT NULL AUTO_INCREMENT PRIMARY KEY,
    chain        VARCHAR(16)   NOT NULL,
    symbol       VARCHAR(32)   NOT NULL,
    address      VARBINARY(20) NOT NULL,
    delta        VARCHAR(80)   NOT NULL,          -- signed base units
    kind         VARCHAR(16)   NOT NULL,          -- deposit | payout | fee
    tx_hash      VARBINARY(32) NOT NULL,
    log_index    BIGINT        NOT NULL,
    block_number BIGINT        NOT NULL,
    created_at   BIGINT        NOT NULL,
    applied_at   BIGINT,
    KEY ledger_outbox_pending (applied_at, id)
) ENGINE=InnoDB;

CREATE TABLE meta (
    `key`   VARCHAR(191) NOT NULL PRIMARY KEY,
    value   TEXT         NOT NULL
) ENGINE=InnoDB;
