-- The HTTP API (docs/architecture.md, "HTTP API"): every outbox row gets a
-- stream position once committed, numbered by one task in commit order, so
-- that a WebSocket client resuming after position N misses nothing; and
-- deposits are read by address.
ALTER TABLE outbox ADD COLUMN seq INTEGER;
CREATE INDEX outbox_seq ON outbox (seq, id);
CREATE INDEX deposits_address ON deposits (chain, address, symbol, id);
