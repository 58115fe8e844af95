-- Requests that cannot be answered go to the configured dead-letter exchange
-- through the outbox (kind `dead_letter.<request kind>`); `reason` travels as
-- the `x-m2pool-reason` header.
ALTER TABLE outbox ADD COLUMN reason TEXT;
