-- The active instance's lease (docs/architecture.md, "High availability"):
-- one row, renewed by the holder; `term` grows with every new holder and
-- fences every commit. Times are the database's clock, in unix milliseconds.
CREATE TABLE lease (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    term INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    renewed_at INTEGER NOT NULL
);
INSERT INTO lease (name, holder, term, expires_at, renewed_at) VALUES ('active', '', 0, 0, 0);
