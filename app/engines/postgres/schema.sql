-- The PostgreSQL map broker's tables and functions: Centrifugo 6.8+'s layout
-- (internal/pgmapbroker/internal/sql/schema.sql, schema version 1), so a Centrifugo node
-- and this server can share one database. Names, column types and the functions'
-- signatures are Centrifugo's; keep them so.
--
-- Placeholders, replaced by schema.py before running:
--   __PREFIX__     <table_prefix>_map_ (JSONB data) or <table_prefix>_binary_map_ (BYTEA)
--   __DATA_TYPE__  JSONB or BYTEA
-- Both variants are created whatever binary_data says, as Centrifugo does.
-- Every statement is idempotent; the functions follow the marker line below.
--
-- Fan-out: a change is a row of __PREFIX__stream (global id for readers, channel_offset
-- for clients). Every write takes the row lock of its shard in __PREFIX__shard_lock
-- (shard = abs(hashtext(channel)) % number of shards) before it draws its id, and holds
-- it to commit: within one shard, ids commit in id order, so a reader that keeps one
-- cursor per shard (the last id it read) never skips a row. pg_notify on
-- __PREFIX__stream_notify wakes readers early.

CREATE TABLE IF NOT EXISTS __PREFIX__stream (
    id              BIGSERIAL,
    channel         TEXT NOT NULL,
    channel_offset  BIGINT NOT NULL,
    epoch           TEXT NOT NULL DEFAULT '',
    key             TEXT NOT NULL,
    data            __DATA_TYPE__,
    tags            JSONB,
    client_id       TEXT,
    user_id         TEXT,
    conn_info       __DATA_TYPE__,
    chan_info        __DATA_TYPE__,
    removed         BOOLEAN DEFAULT FALSE,
    prev_data       __DATA_TYPE__,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    shard_id        SMALLINT NOT NULL DEFAULT 0,
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);

-- Daily partitions <stream>_YYYY_MM_DD are made ahead and dropped whole (schema.py).
CREATE INDEX IF NOT EXISTS __PREFIX__stream_channel_epoch_offset_idx ON __PREFIX__stream (channel, epoch, channel_offset);
CREATE INDEX IF NOT EXISTS __PREFIX__stream_channel_id_idx ON __PREFIX__stream (channel, id DESC);
CREATE INDEX IF NOT EXISTS __PREFIX__stream_shard_id_idx ON __PREFIX__stream (shard_id, id);
CREATE INDEX IF NOT EXISTS __PREFIX__stream_created_at_idx ON __PREFIX__stream (created_at);

CREATE TABLE IF NOT EXISTS __PREFIX__state (
    channel             TEXT NOT NULL,
    key                 TEXT NOT NULL,
    data                __DATA_TYPE__,
    tags                JSONB,
    client_id           TEXT,
    user_id             TEXT,
    conn_info           __DATA_TYPE__,
    chan_info            __DATA_TYPE__,
    key_version         BIGINT DEFAULT 0,
    key_version_epoch   TEXT,
    key_offset          BIGINT NOT NULL,
    expires_at          TIMESTAMPTZ,
    created_at          TIMESTAMPTZ DEFAULT NOW(),
    updated_at          TIMESTAMPTZ DEFAULT NOW(),
    PRIMARY KEY (channel, key)
);

CREATE INDEX IF NOT EXISTS __PREFIX__state_expires_idx
    ON __PREFIX__state (expires_at)
    WHERE expires_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS __PREFIX__meta (
    channel         TEXT PRIMARY KEY,
    top_offset      BIGINT NOT NULL DEFAULT 0,
    epoch           TEXT NOT NULL DEFAULT '',
    created_at      TIMESTAMPTZ DEFAULT NOW(),
    updated_at      TIMESTAMPTZ DEFAULT NOW(),
    expires_at      TIMESTAMPTZ
);

CREATE INDEX IF NOT EXISTS __PREFIX__meta_expires_idx
    ON __PREFIX__meta (expires_at)
    WHERE expires_at IS NOT NULL;

-- result_epoch: the epoch the first write committed under, answered on a replay even
-- when the channel has a new epoch since.
CREATE TABLE IF NOT EXISTS __PREFIX__idempotency (
    channel         TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    result_offset   BIGINT NOT NULL,
    result_epoch    TEXT   NOT NULL,
    result_id       BIGINT NOT NULL,
    expires_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (channel, idempotency_key)
);

CREATE INDEX IF NOT EXISTS __PREFIX__idempotency_expires_idx ON __PREFIX__idempotency (expires_at);

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

-- Write one key. Suppression checks in the order every broker uses: idempotency,
-- version, key mode, CAS. Answers the channel's position (and, for a CAS mismatch, the
-- key's current offset and data).
CREATE OR REPLACE FUNCTION __PREFIX__publish(
    p_channel TEXT,
    p_key TEXT,
    p_data __DATA_TYPE__,
    p_tags JSONB DEFAULT NULL,
    p_key_ttl INTERVAL DEFAULT NULL,
    p_meta_ttl INTERVAL DEFAULT NULL,
    p_key_mode TEXT DEFAULT NULL,
    p_expected_offset BIGINT DEFAULT NULL,
    p_expected_epoch TEXT DEFAULT NULL,
    p_key_version BIGINT DEFAULT NULL,
    p_key_version_epoch TEXT DEFAULT NULL,
    p_idempotency_key TEXT DEFAULT NULL,
    p_idempotency_ttl INTERVAL DEFAULT NULL,
    p_use_delta BOOLEAN DEFAULT FALSE,
    p_client_id TEXT DEFAULT NULL,
    p_user_id TEXT DEFAULT NULL,
    p_conn_info __DATA_TYPE__ DEFAULT NULL,
    p_chan_info __DATA_TYPE__ DEFAULT NULL,
    p_refresh_ttl_on_suppress BOOLEAN DEFAULT FALSE,
    p_num_shards INTEGER DEFAULT NULL
) RETURNS TABLE(
    result_id BIGINT,
    channel_offset BIGINT,
    epoch TEXT,
    suppressed BOOLEAN,
    suppress_reason TEXT,
    current_data __DATA_TYPE__,
    current_offset BIGINT
) AS $$
DECLARE
    v_shard INTEGER;
    v_top BIGINT;
    v_epoch TEXT;
    v_fresh BOOLEAN;
    v_found BOOLEAN;
    v_ver BIGINT;
    v_ver_epoch TEXT;
    v_cur_offset BIGINT;
    v_cur_data __DATA_TYPE__;
    v_prev __DATA_TYPE__;
    v_res_epoch TEXT;
    v_id BIGINT;
BEGIN
    -- The channel's epoch must outlive its keys.
    IF p_meta_ttl IS NOT NULL AND p_key_ttl IS NULL THEN
        RAISE EXCEPTION 'meta_ttl must be NULL (permanent) when key_ttl is NULL (permanent keys)';
    END IF;
    IF p_meta_ttl IS NOT NULL AND p_key_ttl IS NOT NULL AND p_meta_ttl < p_key_ttl THEN
        RAISE EXCEPTION 'meta_ttl must be >= key_ttl (metadata must outlive keys)';
    END IF;
    IF p_num_shards IS NULL THEN
        SELECT count(*)::INTEGER INTO p_num_shards FROM __PREFIX__shard_lock;
    END IF;
    IF p_num_shards <= 0 THEN
        RAISE EXCEPTION 'shard_lock table is empty — run EnsureSchema first';
    END IF;
    v_shard := abs(hashtext(p_channel)::bigint) % p_num_shards;

    -- Locks always in this order: shard, meta, state (no deadlock with expiry).
    PERFORM 1 FROM __PREFIX__shard_lock WHERE shard_id = v_shard FOR UPDATE;

    -- Meta row, created with a new epoch when absent, locked either way in one statement
    -- (a cleanup may delete it between a DO NOTHING and a SELECT). xmax = 0: just made.
    INSERT INTO __PREFIX__meta AS m (channel, top_offset, epoch, updated_at)
    VALUES (p_channel, 0, substr(md5(random()::text || random()::text), 1, 8), NOW())
    ON CONFLICT (channel) DO UPDATE SET updated_at = m.updated_at
    RETURNING m.top_offset, m.epoch, (xmax = 0) INTO v_top, v_epoch, v_fresh;

    -- A new epoch starts with an empty state: rows left from a dead epoch go.
    IF v_fresh THEN
        DELETE FROM __PREFIX__state WHERE channel = p_channel;
    END IF;

    IF p_idempotency_key IS NOT NULL THEN
        SELECT i.result_offset, i.result_epoch INTO v_cur_offset, v_res_epoch
        FROM __PREFIX__idempotency i
        WHERE i.channel = p_channel AND i.idempotency_key = p_idempotency_key
          AND i.expires_at > NOW();
        IF FOUND THEN
            RETURN QUERY SELECT NULL::BIGINT, v_cur_offset, v_res_epoch, TRUE,
                'idempotency'::TEXT, NULL::__DATA_TYPE__, NULL::BIGINT;
            RETURN;
        END IF;
    END IF;

    -- Version: an empty p_key_version_epoch matches any stored one.
    IF p_key_version IS NOT NULL AND p_key IS NOT NULL AND p_key != '' THEN
        SELECT s.key_version, s.key_version_epoch INTO v_ver, v_ver_epoch
        FROM __PREFIX__state s WHERE s.channel = p_channel AND s.key = p_key;
        IF FOUND AND v_ver IS NOT NULL AND v_ver > 0
           AND (p_key_version_epoch IS NULL OR p_key_version_epoch = ''
                OR p_key_version_epoch = v_ver_epoch)
           AND p_key_version <= v_ver THEN
            RETURN QUERY SELECT NULL::BIGINT, v_top, v_epoch, TRUE, 'version'::TEXT,
                NULL::__DATA_TYPE__, NULL::BIGINT;
            RETURN;
        END IF;
    END IF;

    -- Key mode: a key past its TTL but not yet removed by expiry still exists (its
    -- removal is not in the stream yet).
    IF p_key_mode IS NOT NULL THEN
        v_found := EXISTS(SELECT 1 FROM __PREFIX__state s WHERE s.channel = p_channel AND s.key = p_key);
        IF p_key_mode = 'if_new' AND v_found THEN
            IF p_refresh_ttl_on_suppress AND p_key_ttl IS NOT NULL THEN
                UPDATE __PREFIX__state SET expires_at = NOW() + p_key_ttl, updated_at = NOW()
                WHERE __PREFIX__state.channel = p_channel AND __PREFIX__state.key = p_key;
                -- The channel must not expire under a key kept alive.
                IF p_meta_ttl IS NOT NULL THEN
                    UPDATE __PREFIX__meta SET expires_at = NOW() + p_meta_ttl, updated_at = NOW()
                    WHERE __PREFIX__meta.channel = p_channel;
                END IF;
            END IF;
            RETURN QUERY SELECT NULL::BIGINT, v_top, v_epoch, TRUE, 'key_exists'::TEXT,
                NULL::__DATA_TYPE__, NULL::BIGINT;
            RETURN;
        END IF;
        IF p_key_mode = 'if_exists' AND NOT v_found THEN
            RETURN QUERY SELECT NULL::BIGINT, v_top, v_epoch, TRUE, 'key_not_found'::TEXT,
                NULL::__DATA_TYPE__, NULL::BIGINT;
            RETURN;
        END IF;
    END IF;

    -- CAS: the key's offset and (when given) the channel's epoch.
    IF p_expected_offset IS NOT NULL THEN
        SELECT s.key_offset, s.data INTO v_cur_offset, v_cur_data
        FROM __PREFIX__state s WHERE s.channel = p_channel AND s.key = p_key;
        IF NOT FOUND OR v_cur_offset != p_expected_offset
           OR (p_expected_epoch IS NOT NULL AND v_epoch != p_expected_epoch) THEN
            RETURN QUERY SELECT NULL::BIGINT, v_top, v_epoch, TRUE,
                'position_mismatch'::TEXT, v_cur_data, v_cur_offset;
            RETURN;
        END IF;
    END IF;

    UPDATE __PREFIX__meta SET
        top_offset = top_offset + 1,
        expires_at = CASE WHEN p_meta_ttl IS NOT NULL THEN NOW() + p_meta_ttl ELSE expires_at END,
        updated_at = NOW()
    WHERE __PREFIX__meta.channel = p_channel
    RETURNING top_offset INTO v_top;

    -- The base of a per-key delta, read before the state row is overwritten.
    IF p_use_delta AND p_key IS NOT NULL AND p_key != '' THEN
        SELECT s.data INTO v_prev FROM __PREFIX__state s
        WHERE s.channel = p_channel AND s.key = p_key;
    END IF;

    INSERT INTO __PREFIX__state (
        channel, key, data, tags, client_id, user_id, conn_info, chan_info,
        key_version, key_version_epoch, key_offset, expires_at, updated_at
    ) VALUES (
        p_channel, p_key, p_data, p_tags, p_client_id, p_user_id, p_conn_info, p_chan_info,
        p_key_version, p_key_version_epoch, v_top,
        CASE WHEN p_key_ttl IS NOT NULL THEN NOW() + p_key_ttl ELSE NULL END, NOW()
    )
    ON CONFLICT (channel, key) DO UPDATE SET
        data = EXCLUDED.data, tags = EXCLUDED.tags,
        client_id = EXCLUDED.client_id, user_id = EXCLUDED.user_id,
        conn_info = EXCLUDED.conn_info, chan_info = EXCLUDED.chan_info,
        -- An unversioned write keeps the stored version: a late older versioned write is
        -- still dropped.
        key_version = COALESCE(EXCLUDED.key_version, __PREFIX__state.key_version),
        key_version_epoch = COALESCE(EXCLUDED.key_version_epoch, __PREFIX__state.key_version_epoch),
        key_offset = EXCLUDED.key_offset, expires_at = EXCLUDED.expires_at, updated_at = NOW();

    INSERT INTO __PREFIX__stream (
        channel, channel_offset, epoch, key, data, tags, client_id, user_id,
        conn_info, chan_info, prev_data, shard_id
    ) VALUES (
        p_channel, v_top, v_epoch, p_key, p_data, p_tags, p_client_id, p_user_id,
        p_conn_info, p_chan_info, v_prev, v_shard
    ) RETURNING __PREFIX__stream.id INTO v_id;

    IF p_idempotency_key IS NOT NULL THEN
        INSERT INTO __PREFIX__idempotency
            (channel, idempotency_key, result_offset, result_epoch, result_id, expires_at)
        VALUES (p_channel, p_idempotency_key, v_top, v_epoch, v_id,
                NOW() + COALESCE(p_idempotency_ttl, INTERVAL '5 minutes'))
        ON CONFLICT DO NOTHING;
    END IF;

    PERFORM pg_notify('__PREFIX__stream_notify', '');
    RETURN QUERY SELECT v_id, v_top, v_epoch, FALSE, NULL::TEXT, NULL::__DATA_TYPE__, NULL::BIGINT;
END;
$$ LANGUAGE plpgsql;

-- publish that raises instead of answering a suppression (for SQL callers).
CREATE OR REPLACE FUNCTION __PREFIX__publish_strict(
    p_channel TEXT,
    p_key TEXT,
    p_data __DATA_TYPE__,
    p_tags JSONB DEFAULT NULL,
    p_key_ttl INTERVAL DEFAULT NULL,
    p_meta_ttl INTERVAL DEFAULT NULL,
    p_key_mode TEXT DEFAULT NULL,
    p_expected_offset BIGINT DEFAULT NULL,
    p_expected_epoch TEXT DEFAULT NULL,
    p_key_version BIGINT DEFAULT NULL,
    p_key_version_epoch TEXT DEFAULT NULL,
    p_idempotency_key TEXT DEFAULT NULL,
    p_idempotency_ttl INTERVAL DEFAULT NULL,
    p_use_delta BOOLEAN DEFAULT FALSE,
    p_client_id TEXT DEFAULT NULL,
    p_user_id TEXT DEFAULT NULL,
    p_conn_info __DATA_TYPE__ DEFAULT NULL,
    p_chan_info __DATA_TYPE__ DEFAULT NULL,
    p_refresh_ttl_on_suppress BOOLEAN DEFAULT FALSE,
    p_num_shards INTEGER DEFAULT NULL
) RETURNS TABLE(
    result_id BIGINT,
    channel_offset BIGINT,
    epoch TEXT
) AS $$
DECLARE
    r RECORD;
BEGIN
    SELECT * INTO r FROM __PREFIX__publish(
        p_channel, p_key, p_data, p_tags, p_key_ttl, p_meta_ttl, p_key_mode,
        p_expected_offset, p_expected_epoch, p_key_version, p_key_version_epoch,
        p_idempotency_key, p_idempotency_ttl, p_use_delta,
        p_client_id, p_user_id, p_conn_info, p_chan_info,
        p_refresh_ttl_on_suppress, p_num_shards);
    IF r.suppressed THEN
        IF r.suppress_reason = 'key_exists' THEN
            RAISE EXCEPTION '__PREFIX__publish: key already exists: %.%', p_channel, p_key
                USING ERRCODE = 'unique_violation';
        ELSIF r.suppress_reason = 'key_not_found' THEN
            RAISE EXCEPTION '__PREFIX__publish: key not found: %.%', p_channel, p_key
                USING ERRCODE = 'no_data_found';
        ELSIF r.suppress_reason = 'position_mismatch' THEN
            RAISE EXCEPTION '__PREFIX__publish: CAS conflict on %.%', p_channel, p_key
                USING ERRCODE = 'serialization_failure', DETAIL = r.current_data::TEXT;
        ELSIF r.suppress_reason = 'version' THEN
            RAISE EXCEPTION '__PREFIX__publish: version conflict on %.%', p_channel, p_key
                USING ERRCODE = 'serialization_failure';
        ELSIF r.suppress_reason = 'idempotency' THEN
            RAISE EXCEPTION '__PREFIX__publish: duplicate idempotency key: %.%', p_channel, p_key
                USING ERRCODE = 'unique_violation';
        ELSE
            RAISE EXCEPTION '__PREFIX__publish: suppressed: %', r.suppress_reason
                USING ERRCODE = 'raise_exception';
        END IF;
    END IF;
    RETURN QUERY SELECT r.result_id, r.channel_offset, r.epoch;
END;
$$ LANGUAGE plpgsql;

-- Remove one key: its removal goes to the stream with the removed entry's tags.
CREATE OR REPLACE FUNCTION __PREFIX__remove(
    p_channel TEXT,
    p_key TEXT,
    p_meta_ttl INTERVAL DEFAULT NULL,
    p_expected_offset BIGINT DEFAULT NULL,
    p_expected_epoch TEXT DEFAULT NULL,
    p_idempotency_key TEXT DEFAULT NULL,
    p_idempotency_ttl INTERVAL DEFAULT NULL,
    p_client_id TEXT DEFAULT NULL,
    p_user_id TEXT DEFAULT NULL,
    p_num_shards INTEGER DEFAULT NULL
) RETURNS TABLE(
    result_id BIGINT,
    channel_offset BIGINT,
    epoch TEXT,
    suppressed BOOLEAN,
    suppress_reason TEXT,
    current_data __DATA_TYPE__,
    current_offset BIGINT
) AS $$
DECLARE
    v_shard INTEGER;
    v_top BIGINT;
    v_epoch TEXT;
    v_res_epoch TEXT;
    v_cur_offset BIGINT;
    v_cur_data __DATA_TYPE__;
    v_tags JSONB;
    v_id BIGINT;
BEGIN
    IF p_num_shards IS NULL THEN
        SELECT count(*)::INTEGER INTO p_num_shards FROM __PREFIX__shard_lock;
    END IF;
    IF p_num_shards <= 0 THEN
        RAISE EXCEPTION 'shard_lock table is empty — run EnsureSchema first';
    END IF;
    v_shard := abs(hashtext(p_channel)::bigint) % p_num_shards;
    PERFORM 1 FROM __PREFIX__shard_lock WHERE shard_id = v_shard FOR UPDATE;

    -- Locked, so a cleanup cannot delete the meta row under this removal.
    SELECT m.top_offset, m.epoch INTO v_top, v_epoch
    FROM __PREFIX__meta m WHERE m.channel = p_channel FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT NULL::BIGINT, 0::BIGINT, ''::TEXT, TRUE, 'key_not_found'::TEXT,
            NULL::__DATA_TYPE__, NULL::BIGINT;
        RETURN;
    END IF;

    IF p_idempotency_key IS NOT NULL THEN
        SELECT i.result_offset, i.result_epoch INTO v_cur_offset, v_res_epoch
        FROM __PREFIX__idempotency i
        WHERE i.channel = p_channel AND i.idempotency_key = p_idempotency_key
          AND i.expires_at > NOW();
        IF FOUND THEN
            RETURN QUERY SELECT NULL::BIGINT, v_cur_offset, v_res_epoch, TRUE,
                'idempotency'::TEXT, NULL::__DATA_TYPE__, NULL::BIGINT;
            RETURN;
        END IF;
    END IF;

    IF p_expected_offset IS NOT NULL THEN
        SELECT s.key_offset, s.data INTO v_cur_offset, v_cur_data
        FROM __PREFIX__state s WHERE s.channel = p_channel AND s.key = p_key;
        IF NOT FOUND OR v_cur_offset != p_expected_offset
           OR (p_expected_epoch IS NOT NULL AND v_epoch != p_expected_epoch) THEN
            RETURN QUERY SELECT NULL::BIGINT, v_top, v_epoch, TRUE,
                'position_mismatch'::TEXT, v_cur_data, v_cur_offset;
            RETURN;
        END IF;
    END IF;

    -- A key past its TTL counts as removed already (its expiry removal is coming).
    SELECT s.tags INTO v_tags FROM __PREFIX__state s
    WHERE s.channel = p_channel AND s.key = p_key
      AND (s.expires_at IS NULL OR s.expires_at > NOW());
    IF NOT FOUND THEN
        RETURN QUERY SELECT NULL::BIGINT, v_top, v_epoch, TRUE, 'key_not_found'::TEXT,
            NULL::__DATA_TYPE__, NULL::BIGINT;
        RETURN;
    END IF;

    UPDATE __PREFIX__meta SET
        top_offset = top_offset + 1,
        expires_at = CASE WHEN p_meta_ttl IS NOT NULL THEN NOW() + p_meta_ttl ELSE expires_at END,
        updated_at = NOW()
    WHERE __PREFIX__meta.channel = p_channel
    RETURNING top_offset INTO v_top;

    DELETE FROM __PREFIX__state WHERE __PREFIX__state.channel = p_channel AND __PREFIX__state.key = p_key;

    INSERT INTO __PREFIX__stream (channel, channel_offset, epoch, key, removed, client_id, user_id, shard_id, tags)
    VALUES (p_channel, v_top, v_epoch, p_key, TRUE, p_client_id, p_user_id, v_shard, v_tags)
    RETURNING __PREFIX__stream.id INTO v_id;

    IF p_idempotency_key IS NOT NULL THEN
        INSERT INTO __PREFIX__idempotency
            (channel, idempotency_key, result_offset, result_epoch, result_id, expires_at)
        VALUES (p_channel, p_idempotency_key, v_top, v_epoch, v_id,
                NOW() + COALESCE(p_idempotency_ttl, INTERVAL '5 minutes'))
        ON CONFLICT DO NOTHING;
    END IF;

    PERFORM pg_notify('__PREFIX__stream_notify', '');
    RETURN QUERY SELECT v_id, v_top, v_epoch, FALSE, NULL::TEXT, NULL::__DATA_TYPE__, NULL::BIGINT;
END;
$$ LANGUAGE plpgsql;

-- remove that raises when nothing was removed (for SQL callers).
CREATE OR REPLACE FUNCTION __PREFIX__remove_strict(
    p_channel TEXT,
    p_key TEXT,
    p_meta_ttl INTERVAL DEFAULT NULL,
    p_expected_offset BIGINT DEFAULT NULL,
    p_expected_epoch TEXT DEFAULT NULL,
    p_idempotency_key TEXT DEFAULT NULL,
    p_idempotency_ttl INTERVAL DEFAULT NULL,
    p_client_id TEXT DEFAULT NULL,
    p_user_id TEXT DEFAULT NULL,
    p_num_shards INTEGER DEFAULT NULL
) RETURNS TABLE(
    result_id BIGINT,
    channel_offset BIGINT,
    epoch TEXT
) AS $$
DECLARE
    r RECORD;
BEGIN
    SELECT * INTO r FROM __PREFIX__remove(
        p_channel, p_key, p_meta_ttl, p_expected_offset, p_expected_epoch,
        p_idempotency_key, p_idempotency_ttl, p_client_id, p_user_id, p_num_shards);
    IF r.suppressed THEN
        RAISE EXCEPTION '__PREFIX__remove: key not found: %.%', p_channel, p_key
            USING ERRCODE = 'no_data_found';
    END IF;
    RETURN QUERY SELECT r.result_id, r.channel_offset, r.epoch;
END;
$$ LANGUAGE plpgsql;

-- Remove keys whose TTL passed (at most p_batch_size), each as `remove` would: a removal
-- with the next offset and the key's tags. Locks per channel in publish's order (shard,
-- meta, state); rows another transaction holds are left for the next call.
CREATE OR REPLACE FUNCTION __PREFIX__expire_keys(
    p_batch_size INT DEFAULT 1000,
    p_num_shards INTEGER DEFAULT NULL,
    p_meta_ttl INTERVAL DEFAULT NULL,
    p_channel TEXT DEFAULT NULL
) RETURNS TABLE(
    out_channel TEXT,
    out_key TEXT,
    out_offset BIGINT,
    out_epoch TEXT
) AS $$
DECLARE
    v_channel TEXT;
    v_shard INTEGER;
    v_top BIGINT;
    v_epoch TEXT;
    v_keys TEXT[];
    v_tags JSONB[];
    v_n INT;
    v_done INT := 0;
BEGIN
    IF p_num_shards IS NULL THEN
        SELECT count(*)::INTEGER INTO p_num_shards FROM __PREFIX__shard_lock;
    END IF;
    IF p_num_shards <= 0 THEN
        RAISE EXCEPTION 'shard_lock table is empty — run EnsureSchema first';
    END IF;

    FOR v_channel IN
        SELECT DISTINCT s.channel FROM __PREFIX__state s
        WHERE s.expires_at IS NOT NULL AND s.expires_at <= NOW()
          AND (p_channel IS NULL OR s.channel = p_channel)
    LOOP
        v_shard := abs(hashtext(v_channel)::bigint) % p_num_shards;
        PERFORM 1 FROM __PREFIX__shard_lock WHERE shard_id = v_shard FOR UPDATE;

        SELECT m.top_offset, m.epoch INTO v_top, v_epoch
        FROM __PREFIX__meta m WHERE m.channel = v_channel FOR UPDATE;
        IF NOT FOUND THEN
            -- No epoch: nobody can read a removal; the keys just go.
            DELETE FROM __PREFIX__state
            WHERE channel = v_channel AND expires_at IS NOT NULL AND expires_at <= NOW();
            CONTINUE;
        END IF;

        SELECT array_agg(t.key), array_agg(COALESCE(t.tags, '{}'::jsonb)), count(*)
        INTO v_keys, v_tags, v_n
        FROM (
            SELECT s.key, s.tags FROM __PREFIX__state s
            WHERE s.channel = v_channel AND s.expires_at IS NOT NULL AND s.expires_at <= NOW()
            LIMIT p_batch_size - v_done
            FOR UPDATE SKIP LOCKED
        ) t;
        IF v_n IS NULL OR v_n = 0 THEN
            CONTINUE;
        END IF;

        UPDATE __PREFIX__meta SET
            top_offset = top_offset + v_n,
            expires_at = CASE WHEN p_meta_ttl IS NOT NULL THEN NOW() + p_meta_ttl ELSE expires_at END,
            updated_at = NOW()
        WHERE channel = v_channel
        RETURNING top_offset - v_n INTO v_top;

        DELETE FROM __PREFIX__state WHERE channel = v_channel AND key = ANY(v_keys);

        INSERT INTO __PREFIX__stream (channel, channel_offset, epoch, key, removed, shard_id, tags)
        SELECT v_channel, v_top + t.rn, v_epoch, t.k, TRUE, v_shard, t.tg
        FROM unnest(v_keys, v_tags) WITH ORDINALITY AS t(k, tg, rn);

        RETURN QUERY SELECT v_channel, t.k, (v_top + t.rn)::BIGINT, v_epoch
        FROM unnest(v_keys) WITH ORDINALITY AS t(k, rn);

        v_done := v_done + v_n;
        IF v_done >= p_batch_size THEN
            EXIT;
        END IF;
    END LOOP;

    IF v_done > 0 THEN
        PERFORM pg_notify('__PREFIX__stream_notify', '');
    END IF;
END;
$$ LANGUAGE plpgsql;
