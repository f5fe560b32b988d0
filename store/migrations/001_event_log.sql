-- The event log: events by global position, stream versions, idempotent reactions,
-- snapshots and projection checkpoints.

CREATE TABLE events (
    position       bigint PRIMARY KEY,   -- (xid << 20) + ordinal within the transaction
    stream         text NOT NULL,
    version        int NOT NULL,
    type           text NOT NULL,
    data           json NOT NULL,        -- json, not jsonb: the bytes read back exactly as sent
    event_id       uuid NOT NULL UNIQUE,
    occurred_at    timestamptz NOT NULL,
    correlation_id text,
    causation_id   text,
    project_id     text,
    user_id        text,
    UNIQUE (stream, version)
);

-- Rewritten on every append: room on each page keeps its updates HOT (no index churn).
CREATE TABLE streams (
    stream  text PRIMARY KEY,
    version int NOT NULL
) WITH (fillfactor = 30, autovacuum_vacuum_scale_factor = 0.01,
        autovacuum_vacuum_cost_delay = 0);

CREATE TABLE reactions (
    stream   text NOT NULL,
    cause    text NOT NULL,
    version  int NOT NULL,
    position bigint NOT NULL,
    PRIMARY KEY (stream, cause)
);

CREATE TABLE snapshots (
    stream  text PRIMARY KEY,
    version int NOT NULL,
    type    text NOT NULL,
    data    bytea NOT NULL
);

CREATE TABLE projection_checkpoints (
    name     text PRIMARY KEY,
    position bigint NOT NULL
);
