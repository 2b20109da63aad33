-- The PostgreSQL stream broker's tables and functions: Centrifugo 6.8+'s layout
-- (internal/pgstreambroker/internal/sql/schema.sql, schema version 1), so a Centrifugo node
-- and this server can share one database. Table names, columns, indexes and the functions'
-- names, parameters and result columns are Centrifugo's; keep them so.
--
-- Placeholders, replaced by stream_schema.py before running:
--   __PREFIX__        <table_prefix>_stream_ (JSONB data) or <table_prefix>_binary_stream_
--   __STREAM_TABLE__  the same without its trailing underscore (cf_stream)
--   __DATA_TYPE__     JSONB or BYTEA
-- Both variants are created whatever binary_data says, as Centrifugo does. Every statement
-- is idempotent; the functions follow the marker line below.
--
-- One table holds the history and the fan-out: a publication (kind 0), a join (kind 1) or
-- a leave (kind 2) is one row with a global id (for the readers) and, for publications,
-- the channel's next offset (for clients). Every write takes its shard's row in
-- __PREFIX__shard_lock (shard = abs(hashtext(channel)) % number of shards) FOR UPDATE
-- before it draws its id and keeps it to commit, so within a shard ids become visible in
-- id order: a reader keeping one cursor per shard (outbox.py) never skips a row.
-- pg_notify('__PREFIX__notify') wakes readers early.

CREATE TABLE IF NOT EXISTS __STREAM_TABLE__ (
    id              BIGSERIAL,
    channel         TEXT NOT NULL,
    channel_offset  BIGINT NOT NULL,
    epoch           TEXT NOT NULL DEFAULT '',
    kind            SMALLINT NOT NULL DEFAULT 0,
    data            __DATA_TYPE__,
    tags            JSONB,
    client_id       TEXT,
    user_id         TEXT,
    conn_info       __DATA_TYPE__,
    chan_info       __DATA_TYPE__,
    prev_data       __DATA_TYPE__,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    shard_id        SMALLINT NOT NULL DEFAULT 0,
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);

-- History reads (publications of one epoch, by offset); daily partitions
-- <stream>_YYYY_MM_DD are made ahead and dropped whole (ddl.py).
CREATE INDEX IF NOT EXISTS __STREAM_TABLE___channel_epoch_offset_idx
    ON __STREAM_TABLE__ (channel, epoch, channel_offset)
    WHERE kind = 0;
-- The readers' query: rows of a shard after its cursor.
CREATE INDEX IF NOT EXISTS __STREAM_TABLE___shard_id_idx
    ON __STREAM_TABLE__ (shard_id, id);
CREATE INDEX IF NOT EXISTS __STREAM_TABLE___created_at_idx
    ON __STREAM_TABLE__ (created_at);

-- A channel's stream: top offset and epoch, the history window the last publication set
-- (applied when reading), the last accepted version, and when the channel is forgotten
-- (the cleanup deletes the row; the next publication starts a new epoch).
CREATE TABLE IF NOT EXISTS __PREFIX__meta (
    channel            TEXT PRIMARY KEY,
    top_offset         BIGINT NOT NULL DEFAULT 0,
    epoch              TEXT NOT NULL DEFAULT '',
    history_ttl        INTERVAL NOT NULL DEFAULT interval '1 minute',
    history_size       INTEGER NOT NULL DEFAULT 100,
    top_version        BIGINT NOT NULL DEFAULT 0,
    top_version_epoch  TEXT NOT NULL DEFAULT '',
    expires_at         TIMESTAMPTZ NOT NULL DEFAULT NOW() + interval '7 days',
    created_at         TIMESTAMPTZ DEFAULT NOW(),
    updated_at         TIMESTAMPTZ DEFAULT NOW()
);

CREATE INDEX IF NOT EXISTS __PREFIX__meta_expires_idx
    ON __PREFIX__meta (expires_at);

-- Two writes per publication: let autovacuum keep up with busy channels.
ALTER TABLE __PREFIX__meta SET (
    autovacuum_vacuum_scale_factor = 0.05,
    autovacuum_vacuum_threshold = 100,
    autovacuum_analyze_scale_factor = 0.05
);

-- result_epoch: the epoch the first publication committed under, answered on a replay
-- even when the channel has a new epoch since.
CREATE TABLE IF NOT EXISTS __PREFIX__idempotency (
    channel         TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    result_offset   BIGINT NOT NULL,
    result_epoch    TEXT   NOT NULL,
    result_id       BIGINT NOT NULL,
    expires_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (channel, idempotency_key)
);

CREATE INDEX IF NOT EXISTS __PREFIX__idempotency_expires_idx
    ON __PREFIX__idempotency (expires_at);

ALTER TABLE __PREFIX__idempotency SET (
    autovacuum_vacuum_scale_factor = 0.05,
    autovacuum_vacuum_threshold = 100,
    autovacuum_analyze_scale_factor = 0.05
);

CREATE TABLE IF NOT EXISTS __PREFIX__shard_lock (
    shard_id SMALLINT PRIMARY KEY
);

CREATE TABLE IF NOT EXISTS __PREFIX__schema_version (
    id              INTEGER PRIMARY KEY,
    schema_version  INTEGER NOT NULL
);
INSERT INTO __PREFIX__schema_version (id, schema_version) VALUES (1, 1)
    ON CONFLICT (id) DO NOTHING;

-- @@functions@@

-- __PREFIX__publish: one publication in one transaction. Takes the shard's lock, then the
-- channel's meta row (made with a fresh 8-hex-digit epoch when absent); answers an earlier
-- result for a known idempotency key, or the current top for a version not newer than the
-- stored one in the same version epoch (an empty or NULL epoch matches any), both with
-- out_suppressed; otherwise advances the offset, refreshes the meta's window and expiry
-- (the larger of meta TTL and history TTL, 7 days when both are NULL, never when
-- negative), appends the row (with the epoch's last data as prev_data when p_use_delta),
-- remembers the idempotency key and notifies the readers.
CREATE OR REPLACE FUNCTION __PREFIX__publish(
    p_channel TEXT,
    p_data __DATA_TYPE__,
    p_tags JSONB DEFAULT NULL,
    p_history_ttl INTERVAL DEFAULT NULL,
    p_history_size INTEGER DEFAULT NULL,
    p_meta_ttl INTERVAL DEFAULT NULL,
    p_version BIGINT DEFAULT NULL,
    p_version_epoch TEXT DEFAULT NULL,
    p_idempotency_key TEXT DEFAULT NULL,
    p_idempotency_ttl INTERVAL DEFAULT NULL,
    p_use_delta BOOLEAN DEFAULT FALSE,
    p_client_id TEXT DEFAULT NULL,
    p_user_id TEXT DEFAULT NULL,
    p_conn_info __DATA_TYPE__ DEFAULT NULL,
    p_chan_info __DATA_TYPE__ DEFAULT NULL,
    p_num_shards INTEGER DEFAULT NULL
) RETURNS TABLE(
    out_result_id BIGINT,
    out_channel_offset BIGINT,
    out_epoch TEXT,
    out_suppressed BOOLEAN,
    out_suppress_reason TEXT
) AS $$
DECLARE
    v_shard INTEGER;
    v_offset BIGINT;
    v_epoch TEXT;
    v_version BIGINT;
    v_version_epoch TEXT;
    v_meta_ttl INTERVAL;
    v_prev __DATA_TYPE__;
    v_id BIGINT;
    v_known RECORD;
BEGIN
    IF p_num_shards IS NULL THEN
        SELECT COUNT(*)::INTEGER INTO p_num_shards FROM __PREFIX__shard_lock;
    END IF;
    IF p_num_shards <= 0 THEN
        RAISE EXCEPTION 'shard_lock table is empty — run EnsureSchema first';
    END IF;
    v_shard := abs(hashtext(p_channel)::bigint) % p_num_shards;
    PERFORM 1 FROM __PREFIX__shard_lock WHERE shard_id = v_shard FOR UPDATE;

    v_meta_ttl := GREATEST(COALESCE(p_meta_ttl, interval '0'), COALESCE(p_history_ttl, interval '0'));
    IF v_meta_ttl = interval '0' THEN
        v_meta_ttl := interval '7 days';
    END IF;

    -- One statement makes or locks the meta row (a cleanup cannot slip in between).
    INSERT INTO __PREFIX__meta AS m (channel, top_offset, epoch, updated_at)
    VALUES (p_channel, 0, substr(md5(random()::text || random()::text), 1, 8), NOW())
    ON CONFLICT (channel) DO UPDATE SET updated_at = m.updated_at
    RETURNING m.top_offset, m.epoch, m.top_version, m.top_version_epoch
    INTO v_offset, v_epoch, v_version, v_version_epoch;

    IF p_idempotency_key IS NOT NULL THEN
        SELECT result_offset, result_epoch INTO v_known
          FROM __PREFIX__idempotency
         WHERE channel = p_channel AND idempotency_key = p_idempotency_key
           AND expires_at > NOW();
        IF FOUND THEN
            RETURN QUERY SELECT NULL::BIGINT, v_known.result_offset, v_known.result_epoch,
                TRUE, 'idempotency'::TEXT;
            RETURN;
        END IF;
    END IF;

    IF p_version IS NOT NULL AND p_version > 0 AND v_version > 0
       AND (p_version_epoch IS NULL OR p_version_epoch = '' OR p_version_epoch = v_version_epoch)
       AND p_version <= v_version THEN
        RETURN QUERY SELECT NULL::BIGINT, v_offset, v_epoch, TRUE, 'version'::TEXT;
        RETURN;
    END IF;

    IF p_use_delta THEN
        SELECT s.data INTO v_prev FROM __STREAM_TABLE__ s
         WHERE s.channel = p_channel AND s.epoch = v_epoch AND s.kind = 0
         ORDER BY s.channel_offset DESC LIMIT 1;
    END IF;

    -- NULL parameters keep the stored window; only a versioned publication moves the
    -- version baseline.
    UPDATE __PREFIX__meta AS m
       SET top_offset = m.top_offset + 1,
           history_ttl = COALESCE(p_history_ttl, m.history_ttl),
           history_size = COALESCE(p_history_size, m.history_size),
           top_version = CASE WHEN p_version > 0 THEN p_version ELSE m.top_version END,
           top_version_epoch = CASE WHEN p_version > 0
               THEN COALESCE(p_version_epoch, m.top_version_epoch) ELSE m.top_version_epoch END,
           expires_at = CASE WHEN v_meta_ttl < interval '0' THEN 'infinity'::timestamptz
               ELSE NOW() + v_meta_ttl END,
           updated_at = NOW()
     WHERE m.channel = p_channel
    RETURNING m.top_offset INTO v_offset;

    INSERT INTO __STREAM_TABLE__ (channel, channel_offset, epoch, kind, data, tags,
        client_id, user_id, conn_info, chan_info, prev_data, shard_id)
    VALUES (p_channel, v_offset, v_epoch, 0, p_data, p_tags,
        p_client_id, p_user_id, p_conn_info, p_chan_info, v_prev, v_shard)
    RETURNING id INTO v_id;

    IF p_idempotency_key IS NOT NULL THEN
        INSERT INTO __PREFIX__idempotency (channel, idempotency_key, result_offset,
            result_epoch, result_id, expires_at)
        VALUES (p_channel, p_idempotency_key, v_offset, v_epoch, v_id,
            NOW() + COALESCE(p_idempotency_ttl, interval '5 minutes'))
        ON CONFLICT (channel, idempotency_key) DO NOTHING;
    END IF;

    PERFORM pg_notify('__PREFIX__notify', '');
    RETURN QUERY SELECT v_id, v_offset, v_epoch, FALSE, NULL::TEXT;
END;
$$ LANGUAGE plpgsql;

-- __PREFIX__publish_strict: __PREFIX__publish that raises instead of answering a
-- suppressed result (for applications publishing from their own transactions).
CREATE OR REPLACE FUNCTION __PREFIX__publish_strict(
    p_channel TEXT,
    p_data __DATA_TYPE__,
    p_tags JSONB DEFAULT NULL,
    p_history_ttl INTERVAL DEFAULT NULL,
    p_history_size INTEGER DEFAULT NULL,
    p_meta_ttl INTERVAL DEFAULT NULL,
    p_version BIGINT DEFAULT NULL,
    p_version_epoch TEXT DEFAULT NULL,
    p_idempotency_key TEXT DEFAULT NULL,
    p_idempotency_ttl INTERVAL DEFAULT NULL,
    p_use_delta BOOLEAN DEFAULT FALSE,
    p_client_id TEXT DEFAULT NULL,
    p_user_id TEXT DEFAULT NULL,
    p_conn_info __DATA_TYPE__ DEFAULT NULL,
    p_chan_info __DATA_TYPE__ DEFAULT NULL,
    p_num_shards INTEGER DEFAULT NULL
) RETURNS TABLE(
    out_result_id BIGINT,
    out_channel_offset BIGINT,
    out_epoch TEXT
) AS $$
DECLARE
    v_r RECORD;
BEGIN
    SELECT * INTO v_r FROM __PREFIX__publish(p_channel, p_data, p_tags, p_history_ttl,
        p_history_size, p_meta_ttl, p_version, p_version_epoch, p_idempotency_key,
        p_idempotency_ttl, p_use_delta, p_client_id, p_user_id, p_conn_info, p_chan_info,
        p_num_shards);
    IF v_r.out_suppressed THEN
        RAISE EXCEPTION 'publish suppressed: %', v_r.out_suppress_reason;
    END IF;
    RETURN QUERY SELECT v_r.out_result_id, v_r.out_channel_offset, v_r.out_epoch;
END;
$$ LANGUAGE plpgsql;

-- __PREFIX__publish_join / __PREFIX__publish_leave: a join (kind 1) or leave (kind 2) row
-- for the readers, under the shard lock like a publication (its id must not commit out of
-- order); no offset, no meta change.
CREATE OR REPLACE FUNCTION __PREFIX__publish_join(
    p_channel TEXT,
    p_client_id TEXT,
    p_user_id TEXT,
    p_conn_info __DATA_TYPE__ DEFAULT NULL,
    p_chan_info __DATA_TYPE__ DEFAULT NULL,
    p_num_shards INTEGER DEFAULT NULL
) RETURNS BIGINT AS $$
DECLARE
    v_shard INTEGER;
    v_id BIGINT;
BEGIN
    IF p_num_shards IS NULL THEN
        SELECT COUNT(*)::INTEGER INTO p_num_shards FROM __PREFIX__shard_lock;
    END IF;
    v_shard := abs(hashtext(p_channel)::bigint) % p_num_shards;
    PERFORM 1 FROM __PREFIX__shard_lock WHERE shard_id = v_shard FOR UPDATE;
    INSERT INTO __STREAM_TABLE__ (channel, channel_offset, kind, client_id, user_id,
        conn_info, chan_info, shard_id)
    VALUES (p_channel, 0, 1, p_client_id, p_user_id, p_conn_info, p_chan_info, v_shard)
    RETURNING id INTO v_id;
    PERFORM pg_notify('__PREFIX__notify', '');
    RETURN v_id;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION __PREFIX__publish_leave(
    p_channel TEXT,
    p_client_id TEXT,
    p_user_id TEXT,
    p_conn_info __DATA_TYPE__ DEFAULT NULL,
    p_chan_info __DATA_TYPE__ DEFAULT NULL,
    p_num_shards INTEGER DEFAULT NULL
) RETURNS BIGINT AS $$
DECLARE
    v_shard INTEGER;
    v_id BIGINT;
BEGIN
    IF p_num_shards IS NULL THEN
        SELECT COUNT(*)::INTEGER INTO p_num_shards FROM __PREFIX__shard_lock;
    END IF;
    v_shard := abs(hashtext(p_channel)::bigint) % p_num_shards;
    PERFORM 1 FROM __PREFIX__shard_lock WHERE shard_id = v_shard FOR UPDATE;
    INSERT INTO __STREAM_TABLE__ (channel, channel_offset, kind, client_id, user_id,
        conn_info, chan_info, shard_id)
    VALUES (p_channel, 0, 2, p_client_id, p_user_id, p_conn_info, p_chan_info, v_shard)
    RETURNING id INTO v_id;
    PERFORM pg_notify('__PREFIX__notify', '');
    RETURN v_id;
END;
$$ LANGUAGE plpgsql;

-- __PREFIX__remove_history: the channel's publications deleted under its shard lock (no
-- publication in flight survives it); the meta (epoch, top offset) stays, joins and
-- leaves go with their partitions.
CREATE OR REPLACE FUNCTION __PREFIX__remove_history(
    p_channel TEXT,
    p_num_shards INTEGER DEFAULT NULL
) RETURNS VOID AS $$
DECLARE
    v_shard INTEGER;
BEGIN
    IF p_num_shards IS NULL THEN
        SELECT COUNT(*)::INTEGER INTO p_num_shards FROM __PREFIX__shard_lock;
    END IF;
    v_shard := abs(hashtext(p_channel)::bigint) % p_num_shards;
    PERFORM 1 FROM __PREFIX__shard_lock WHERE shard_id = v_shard FOR UPDATE;
    DELETE FROM __STREAM_TABLE__ WHERE channel = p_channel AND kind = 0;
END;
$$ LANGUAGE plpgsql;

-- __PREFIX__top_position: the channel's (top offset, epoch), (0, '') when it has no
-- stream: read by an application in the transaction of its own state read, so a client
-- subscribing from it recovers what was published after.
CREATE OR REPLACE FUNCTION __PREFIX__top_position(
    p_channel TEXT
) RETURNS TABLE(
    out_top_offset BIGINT,
    out_epoch TEXT
) AS $$
BEGIN
    RETURN QUERY
    SELECT COALESCE(m.top_offset, 0::BIGINT), COALESCE(m.epoch, ''::TEXT)
      FROM (SELECT 1) AS one
      LEFT JOIN __PREFIX__meta m ON m.channel = p_channel;
END;
$$ LANGUAGE plpgsql;
