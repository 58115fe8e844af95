-- Signed webhooks (docs/architecture.md, "Webhooks"). `notify_targets`: the
-- `notify_url` a request gave, by the sha256 of what its answers share (the
-- kind and queue_id, or the kind, chain, address and symbol). Deliveries are
-- planned by the stream's sequencer, in the transaction that numbers the
-- answers, and sent in id order per target group by the dispatcher.
-- `state`: 0 pending, 1 delivered, 2 dead. Times in unix milliseconds.
CREATE TABLE notify_targets (
    target VARBINARY(32) NOT NULL PRIMARY KEY,
    url TEXT NOT NULL,
    updated_at BIGINT NOT NULL
) ENGINE = InnoDB;
CREATE TABLE webhook_deliveries (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    seq BIGINT NOT NULL,
    grp VARBINARY(32) NOT NULL,
    kind VARCHAR(64) NOT NULL,
    url TEXT NOT NULL,
    host VARCHAR(255) NOT NULL,
    body MEDIUMBLOB NOT NULL,
    state TINYINT NOT NULL DEFAULT 0,
    attempts INT NOT NULL DEFAULT 0,
    first_at BIGINT NOT NULL,
    next_at BIGINT NOT NULL,
    last_error TEXT NULL,
    done_at BIGINT NULL,
    KEY webhook_due (state, next_at),
    KEY webhook_group (grp, state, id),
    KEY webhook_done (state, done_at)
) ENGINE = InnoDB;
