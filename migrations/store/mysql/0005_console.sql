-- The operator console (docs/architecture.md, "Operator console"): a payout
-- is found by its order_id, its recipient or its requested wallet through an
-- index. Payouts are few next to requests; topups pay nothing for these.
ALTER TABLE payouts
    ADD KEY payouts_order (order_id),
    ADD KEY payouts_to (to_address, id),
    ADD KEY payouts_from (from_address, id);
