-- The transaction-log line of each response, made when the answer was
-- decided; the relay writes it once the broker has the response, without
-- reading the body again. NULL for dead letters, for responses that name no
-- plain address, and for rows written before this migration (the relay
-- reads those bodies, as it used to).
ALTER TABLE outbox ADD COLUMN line TEXT;
