-- The operator console (docs/architecture.md, "Operator console"): a payout
-- is found by its order_id, its recipient or its requested wallet through an
-- index. Payouts are few next to requests; topups pay nothing for these.
CREATE INDEX payouts_order ON payouts (order_id) WHERE order_id <> '';
CREATE INDEX payouts_to ON payouts (to_address, id);
CREATE INDEX payouts_from ON payouts (from_address, id);
