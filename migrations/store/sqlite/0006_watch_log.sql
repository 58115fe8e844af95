-- Watches become a log: a row per watch and per stop, in order, replayed at
-- start into the in-memory watch set (which decides what is new, so an
-- address watched again adds no row). The table keyed by address took a
-- random page write per new address on every commit; appending takes a page
-- per hundred. Lookups by address are for tools and tests only and read the
-- log backwards. When stops make the log much longer than the set, it is
-- compacted at start.
CREATE TABLE watch_log (
    id      INTEGER PRIMARY KEY,
    chain   TEXT    NOT NULL,
    address BLOB    NOT NULL,                -- 20 bytes
    symbol  TEXT    NOT NULL,
    watched INTEGER NOT NULL,                -- 1 watch, 0 stop watching
    at      INTEGER NOT NULL                 -- unix milliseconds
);
INSERT INTO watch_log (chain, address, symbol, watched, at)
    SELECT chain, address, symbol, 1, created_at FROM watches ORDER BY created_at;
DROP TABLE watches;
