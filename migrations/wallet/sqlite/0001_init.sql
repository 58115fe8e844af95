-- Wallet store of m2pool-payment, embedded SQLite (used when the config has no
-- MySQL). Same tables as migrations/wallet/mysql.

-- Wallets whose keys the daemon holds, AES-256-GCM encrypted.
CREATE TABLE wallets (
    id            INTEGER PRIMARY KEY,
    chain         TEXT    NOT NULL,
    address       TEXT    NOT NULL,           -- lower-case 0x hex
    label         TEXT    NOT NULL,           -- user | collection
    encrypted_key TEXT    NOT NULL,           -- v1:hex(nonce || ciphertext || tag)
    created_at    INTEGER NOT NULL,           -- unix milliseconds
    UNIQUE (chain, address)
);

-- Confirmed movements, exactly once each.
CREATE TABLE ledger (
    id           INTEGER PRIMARY KEY,
    chain        TEXT    NOT NULL,
    symbol       TEXT    NOT NULL,
    address      TEXT    NOT NULL,
    delta        TEXT    NOT NULL,            -- signed base units, decimal text
    kind         TEXT    NOT NULL,            -- deposit | payout | fee
    tx_hash      TEXT    NOT NULL,
    log_index    INTEGER NOT NULL,            -- Transfer log index; -1 payout or ether, -2 fee
    block_number INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    UNIQUE (chain, tx_hash, log_index, address, kind)
);
CREATE INDEX ledger_address ON ledger (chain, address, symbol);

-- Balance per address and symbol: the sum of its ledger rows.
CREATE TABLE balances (
    chain      TEXT    NOT NULL,
    address    TEXT    NOT NULL,
    symbol     TEXT    NOT NULL,
    balance    TEXT    NOT NULL,              -- signed base units, decimal text
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (chain, address, symbol)
);
