-- Accepted topups leave the body-hash index. Applying a topup again only
-- watches an address that is watched already, so its inbox row needs no
-- lookup; and an index over random hashes cost a page write per request on
-- every commit, which was half of what the store spent on a burst of
-- topups. A redelivered topup is now recorded again, as a second row.
-- Everything else (payouts, removes, refused and unaddressable requests) is
-- still found by its body: a redelivery answers as the first delivery did
-- and is dead-lettered once. Queries that look a body up repeat the index's
-- condition so that SQLite can use it.
CREATE TABLE inbox_v5 (
    id          INTEGER PRIMARY KEY,
    kind        TEXT    NOT NULL,            -- topup | withdraw | pay | remove
    body_hash   BLOB    NOT NULL,            -- sha256 of kind and body
    body        BLOB    NOT NULL,
    outcome     TEXT    NOT NULL,            -- accepted | refused | bad_signature | unaddressable
    error       TEXT,
    received_at INTEGER NOT NULL             -- unix milliseconds
);
INSERT INTO inbox_v5 (id, kind, body_hash, body, outcome, error, received_at)
    SELECT id, kind, body_hash, body, outcome, error, received_at FROM inbox;
DROP TABLE inbox;
ALTER TABLE inbox_v5 RENAME TO inbox;
CREATE UNIQUE INDEX inbox_body ON inbox (body_hash)
    WHERE kind <> 'topup' OR outcome <> 'accepted';
