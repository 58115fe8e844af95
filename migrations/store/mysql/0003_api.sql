-- The HTTP API (docs/architecture.md, "HTTP API"): every outbox row gets a
-- stream position once committed, numbered by one task in commit order, so
-- that a WebSocket client resuming after position N misses nothing; and
-- deposits are read by address.
ALTER TABLE outbox ADD COLUMN seq BIGINT NULL, ADD KEY outbox_seq (seq, id);
ALTER TABLE deposits ADD KEY deposits_address (chain, address, symbol, id);
