-- Wallet store of m2pool-payment (MySQL 8 / MariaDB).
-- The Go version's `eth_balance` table is left alone: its keys were not really
-- encrypted and cannot be carried over (`m2pool-payment wallet import`).

-- Wallets whose keys the daemon holds, AES-256-GCM encrypted.
CREATE TABLE wallets (
    id            BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    chain         VARCHAR(16)  NOT NULL,
    address       VARCHAR(42)  NOT NULL,      -- lower-case 0x hex
    label         VARCHAR(16)  NOT NULL,      -- user | collection
    encrypted_key TEXT         NOT NULL,      -- v1:hex(nonce || ciphertext || tag)
    created_at    BIGINT       NOT NULL,      -- unix milliseconds
    UNIQUE KEY wallets_chain_address (chain, address)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Confirmed movements, exactly once each.
CREATE TABLE ledger (
    id           BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    chain        VARCHAR(16)  NOT NULL,
    symbol       VARCHAR(16)  NOT NULL,
    address      VARCHAR(42)  NOT NULL,
    delta        VARCHAR(80)  NOT NULL,       -- signed base units, decimal text
    kind         VARCHAR(16)  NOT NULL,       -- deposit | payout | fee
    tx_hash      VARCHAR(66)  NOT NULL,
    log_index    BIGINT       NOT NULL,       -- Transfer log index; -1 payout or ether, -2 fee
    block_number BIGINT       NOT NULL,
    created_at   BIGINT       NOT NULL,
    UNIQUE KEY ledger_movement (chain, tx_hash, log_index, address, kind),
    KEY ledger_address (chain, address, symbol)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Balance per address and symbol: the sum of its ledger rows.
CREATE TABLE balances (
    chain      VARCHAR(16)  NOT NULL,
    address    VARCHAR(42)  NOT NULL,
    symbol     VARCHAR(16)  NOT NULL,
    balance    VARCHAR(80)  NOT NULL,         -- signed base units, decimal text
    updated_at BIGINT       NOT NULL,
    PRIMARY KEY (chain, address, symbol)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
