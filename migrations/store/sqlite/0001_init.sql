-- Message store of m2pool-payment (SQLite, WAL, synchronous=FULL).
-- Everything the daemon itself must not forget lives here, so that a state
-- change and the responses it causes commit in one transaction (DESIGN §3).

-- Every request as received. A delivery is acknowledged to RabbitMQ only after
-- its row is committed; the body hash makes a redelivery harmless.
CREATE TABLE inbox (
    id          INTEGER PRIMARY KEY,
    kind        TEXT    NOT NULL,            -- topup | withdraw | pay | remove
    body_hash   BLOB    NOT NULL UNIQUE,     -- sha256 of kind and body
    body        BLOB    NOT NULL,
    outcome     TEXT    NOT NULL,            -- accepted | refused | bad_signature | unaddressable
    error       TEXT,
    received_at INTEGER NOT NULL             -- unix milliseconds
);

-- Addresses watched for deposits, per chain and symbol.
CREATE TABLE watches (
    chain      TEXT    NOT NULL,
    address    BLOB    NOT NULL,             -- 20 bytes
    symbol     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (chain, address, symbol)
) WITHOUT ROWID;

-- Deposits seen on chain. state: 0 pending, 1 confirmed, 2 failed, 3 orphaned
-- (its block left the canonical chain; it is pending again if mined again,
-- failed if it is not back by `due`).
CREATE TABLE deposits (
    id           INTEGER PRIMARY KEY,
    chain        TEXT    NOT NULL,
    tx_hash      BLOB    NOT NULL,
    log_index    INTEGER NOT NULL,           -- -1 for native ether
    symbol       TEXT    NOT NULL,
    address      BLOB    NOT NULL,
    from_address BLOB    NOT NULL,
    amount       TEXT    NOT NULL,           -- base units, decimal text
    block_number INTEGER NOT NULL,
    block_hash   BLOB    NOT NULL,
    state        INTEGER NOT NULL,
    due          INTEGER NOT NULL,           -- height at which it is decided
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    UNIQUE (chain, tx_hash, log_index)
);
-- Only undecided deposits are indexed: per-block work is what matures.
CREATE INDEX deposits_due ON deposits (chain, due) WHERE state IN (0, 3);

-- The canonical chain as the watcher last verified it: the highest row is the
-- block cursor, the rows below it (a window of recent blocks) find the fork
-- point of a reorganisation by their hashes.
CREATE TABLE chain_blocks (
    chain       TEXT    NOT NULL,
    number      INTEGER NOT NULL,
    hash        BLOB    NOT NULL,
    parent_hash BLOB    NOT NULL,
    PRIMARY KEY (chain, number)
) WITHOUT ROWID;

-- Responses to publish. A row is written in the transaction of the state change
-- that causes it, and marked sent only after the broker confirmed it.
CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY,
    kind       TEXT    NOT NULL,             -- topup_resp | withdraw_resp | pay_resp | remove_resp
    body       BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    sent_at    INTEGER
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
