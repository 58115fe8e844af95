-- Signed webhooks (docs/architecture.md, "Webhooks"). `notify_targets`: the
-- `notify_url` a request gave, by the sha256 of what its answers share (the
-- kind and queue_id, or the kind, chain, address and symbol). Deliveries are
-- planned by the stream's sequencer, in the transaction that numbers the
-- answers, and sent in id order per target group by the dispatcher.
-- `state`: 0 pending, 1 delivered, 2 dead. Times in unix milliseconds.
CREATE TABLE notify_targets (
    target BLOB NOT NULL PRIMARY KEY,
    url TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE webhook_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL,
    grp BLOB NOT NULL,
    kind TEXT NOT NULL,
    url TEXT NOT NULL,
    host TEXT NOT NULL,
    body BLOB NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_at INTEGER NOT NULL,
    next_at INTEGER NOT NULL,
    last_error TEXT,
    done_at INTEGER
);
CREATE INDEX webhook_due ON webhook_deliveries (state, next_at);
CREATE INDEX webhook_group ON webhook_deliveries (grp, state, id);
CREATE INDEX webhook_done ON webhook_deliveries (done_at) WHERE state = 1;
