-- Failed deposits are few: this index lets a metrics scrape count them
-- without reading the table, and costs nothing when a deposit is recorded
-- pending. Pending and orphaned deposits are counted through deposits_due,
-- payouts through payouts_state; confirmed ones are the rest of MAX(id)
-- (rows of deposits and payouts are never deleted).
CREATE INDEX deposits_failed ON deposits (chain) WHERE state = 2;
