-- The PostgreSQL controller's tables and function: Centrifugo 6.8+'s layout
-- (internal/controllers/controller_postgres_schema.sql, schema version 1), so a Centrifugo
-- node and this server can share one database. Names, columns, the index and the
-- function's name, parameters and result are Centrifugo's; keep them so.
--
-- Placeholder, replaced by controller.py before running:
--   __PREFIX__  <table_prefix>_ (cf_ gives cf_controller_messages)
-- Every statement is idempotent; the function follows the marker line below.
--
-- A control message is one row: `node_id` '' for every node, else the one node it is for.
-- Each publish takes its shard's row in __PREFIX__controller_shard_lock FOR UPDATE before
-- it draws its id and keeps it to commit, so within a shard ids become visible in id
-- order: a reader keeping one cursor per shard (outbox.py) never skips a row.
-- pg_notify('__PREFIX__controller_notify') wakes readers early.

CREATE TABLE IF NOT EXISTS __PREFIX__controller_messages (
    id          BIGSERIAL,
    shard_id    SMALLINT NOT NULL DEFAULT 0,
    node_id     TEXT NOT NULL DEFAULT '',
    data        BYTEA NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);

CREATE INDEX IF NOT EXISTS __PREFIX__controller_messages_shard_id_idx
    ON __PREFIX__controller_messages (shard_id, id);

-- Rows 0..num_shards-1, fitted at every start (ddl.py).
CREATE TABLE IF NOT EXISTS __PREFIX__controller_shard_lock (
    shard_id SMALLINT PRIMARY KEY
);

CREATE TABLE IF NOT EXISTS __PREFIX__controller_schema_version (
    id              INTEGER PRIMARY KEY,
    schema_version  INTEGER NOT NULL
);
INSERT INTO __PREFIX__controller_schema_version (id, schema_version) VALUES (1, 1)
    ON CONFLICT (id) DO NOTHING;

-- @@functions@@

-- Shard lock, INSERT, NOTIFY. One shard: everything in shard 0; more: a targeted message
-- by the hash of its node id, a broadcast by transaction id.
CREATE OR REPLACE FUNCTION __PREFIX__controller_publish(
    p_data BYTEA,
    p_node_id TEXT DEFAULT '',
    p_num_shards INTEGER DEFAULT NULL
) RETURNS BIGINT AS $$
DECLARE
    v_id BIGINT;
    v_shard_id INTEGER;
BEGIN
    IF p_num_shards IS NULL OR p_num_shards <= 0 THEN
        SELECT COUNT(*)::INTEGER INTO p_num_shards FROM __PREFIX__controller_shard_lock;
    END IF;

    IF p_num_shards <= 1 THEN
        v_shard_id := 0;
    ELSIF p_node_id != '' THEN
        v_shard_id := abs(hashtext(p_node_id)::bigint) % p_num_shards;
    ELSE
        v_shard_id := (txid_current() % p_num_shards)::INTEGER;
    END IF;

    PERFORM 1 FROM __PREFIX__controller_shard_lock WHERE shard_id = v_shard_id FOR UPDATE;

    INSERT INTO __PREFIX__controller_messages (shard_id, node_id, data)
    VALUES (v_shard_id, p_node_id, p_data)
    RETURNING id INTO v_id;

    PERFORM pg_notify('__PREFIX__controller_notify', '');
    RETURN v_id;
END;
$$ LANGUAGE plpgsql;
