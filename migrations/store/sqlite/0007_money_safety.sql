-- What a deposit or payout is answered with is fixed when it is recorded:
-- its decimals (a token later taken out of `eth_config.tokens` is still
-- answered in its own units) and, for a token payout, the contract it moves
-- (a replacement signs the same transfer whatever the config says now).
-- Rows of earlier schemas have NULL and take the config's values.
ALTER TABLE deposits ADD COLUMN decimals INTEGER;
ALTER TABLE payouts ADD COLUMN decimals INTEGER;
ALTER TABLE payouts ADD COLUMN contract BLOB;

-- The transaction hash its `status=2` carried: every repeat of that answer
-- carries it too, even after a fee bump replaced the transaction.
ALTER TABLE payouts ADD COLUMN announced_tx BLOB;
UPDATE payouts SET announced_tx = tx_hash WHERE announced = 1;

-- Since when the node refuses the payout's signed transaction (NULL: it
-- took the last broadcast), and what it said.
ALTER TABLE payouts ADD COLUMN refused_at INTEGER;
ALTER TABLE payouts ADD COLUMN refusal TEXT;
-- A remove asked to cancel it after the node kept refusing it: its nonce is
-- given to a zero-value transfer to the wallet itself.
ALTER TABLE payouts ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
-- It was the cancelling transfer that was mined.
ALTER TABLE payouts ADD COLUMN cancel_mined INTEGER NOT NULL DEFAULT 0;
-- A transaction that cancels its payout (the zero-value self-transfer).
ALTER TABLE payout_txs ADD COLUMN cancels INTEGER NOT NULL DEFAULT 0;

-- The block cursor when a watch started: deposits up to
-- `eth_config.lookback_blocks` blocks before it are looked for. Watches of
-- earlier schemas need no lookback (NULL).
ALTER TABLE watch_log ADD COLUMN block INTEGER;

-- Small settings the daemon keeps between runs: per chain, the last watch
-- looked back (`lookback_done.<chain>`) and the confirm_height the stored
-- due heights were computed with (`confirm_height.<chain>`).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value)
    SELECT 'lookback_done.' || chain, CAST(MAX(id) AS TEXT) FROM watch_log GROUP BY chain;
-- Payouts waiting for the transfer that cancels them to be signed: few, and
-- looked for each time the payout sender is woken.
CREATE INDEX payouts_cancel ON payouts (chain, id)
    WHERE cancel_requested = 1 AND state IN ('signed', 'sent');
