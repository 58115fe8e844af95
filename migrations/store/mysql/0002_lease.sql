-- The active instance's lease (docs/architecture.md, "High availability"):
-- one row, renewed by the holder; `term` grows with every new holder and
-- fences every commit. Times are the database's clock, in unix milliseconds.
CREATE TABLE lease (
    name VARCHAR(32) NOT NULL PRIMARY KEY,
    holder VARCHAR(255) NOT NULL,
    term BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    renewed_at BIGINT NOT NULL
) ENGINE = InnoDB;
INSERT INTO lease (name, holder, term, expires_at, renewed_at) VALUES ('active', '', 0, 0, 0);
