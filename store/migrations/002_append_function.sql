-- orrery_append: one group-commit batch of appends in one call (and one transaction).
--
-- Each append i has a_stream[i], a_expected[i] (-1 = any version, 0 = must not exist),
-- a_cause[i] (NULL = not a reaction) and a_count[i] events. Events are flattened in
-- order: e_append[j] is the 1-based index of the append event j belongs to; e_data[j]
-- is the event's UTF-8 JSON as bytea (cheaper to send than json[]), stored as json. An
-- array that would hold only NULLs may be passed as NULL (unnest pads it with NULLs).
-- A stream appears at most once per batch (the caller queues a second append of a
-- stream for the next batch).
-- Returns one row per append, in order: status 'ok' | 'conflict' | 'duplicate', the
-- stream's version (new, current, or the recorded one) and the last event's position.
-- A conflicting append does not affect the others of its batch.
--
-- Position = (xid << 20) + ordinal of the event in this transaction, so ordering by
-- position is ordering by (transaction, order within it); readers only read below
-- (snapshot xmin << 20), where no transaction can still commit.

CREATE FUNCTION orrery_append(
    a_stream text[], a_expected int[], a_cause text[], a_count int[],
    e_append int[], e_type text[], e_data bytea[], e_event_id uuid[],
    e_occurred_at timestamptz[], e_correlation_id text[], e_causation_id text[],
    e_project_id text[], e_user_id text[])
RETURNS TABLE (out_status text, out_version int, out_position bigint)
LANGUAGE plpgsql AS $fn$
DECLARE
    base bigint;
BEGIN
    IF cardinality(a_stream) <> (SELECT count(DISTINCT s) FROM unnest(a_stream) AS s) THEN
        RAISE EXCEPTION 'orrery_append: a stream appears more than once in one batch';
    END IF;
    IF cardinality(e_type) >= 1048576 THEN
        RAISE EXCEPTION 'orrery_append: at most 2^20 - 1 events per transaction';
    END IF;
    base := pg_current_xact_id()::text::bigint << 20;

    -- Take every stream's row lock in one sorted order: writers of the same stream
    -- serialise (the loser then sees the winner's version) and batches cannot deadlock.
    INSERT INTO streams (stream, version)
        SELECT s, 0 FROM unnest(a_stream) AS s ORDER BY s
        ON CONFLICT (stream) DO NOTHING;
    PERFORM 1 FROM streams WHERE stream = ANY (a_stream) ORDER BY stream FOR UPDATE;

    -- A new statement, so a new snapshot: it sees every version and reaction
    -- committed before we got the locks.
    RETURN QUERY
    WITH a AS (
        SELECT t.stream, t.expected, t.cause, t.i::int AS i, t.cnt,
               -- 0-based ordinal of the append's first event in the flattened arrays
               (sum(t.cnt) OVER (ORDER BY t.i) - t.cnt)::bigint AS first,
               s.version AS cur, r.version AS dup_version, r.position AS dup_position
        FROM unnest(a_stream, a_expected, a_cause, a_count)
             WITH ORDINALITY AS t(stream, expected, cause, cnt, i)
        JOIN streams s ON s.stream = t.stream
        LEFT JOIN reactions r ON r.stream = t.stream AND r.cause = t.cause
    ), d AS (
        SELECT a.*, CASE WHEN a.cnt > 0 THEN base + a.first + a.cnt - 1 ELSE 0 END AS last_pos,
               CASE WHEN a.dup_version IS NOT NULL THEN 'duplicate'
                    WHEN a.expected <> -1 AND a.expected <> a.cur THEN 'conflict'
                    ELSE 'ok' END AS status
        FROM a
    ), ins AS (
        INSERT INTO events (position, stream, version, type, data, event_id, occurred_at,
                            correlation_id, causation_id, project_id, user_id)
        SELECT base + e.ord - 1, d.stream, d.cur + (e.ord - d.first)::int, e.type,
               convert_from(e.data, 'UTF8')::json,
               e.event_id, e.occurred_at, e.correlation_id, e.causation_id, e.project_id,
               e.user_id
        FROM unnest(e_append, e_type, e_data, e_event_id, e_occurred_at, e_correlation_id,
                    e_causation_id, e_project_id, e_user_id)
             WITH ORDINALITY AS e(app, type, data, event_id, occurred_at, correlation_id,
                                  causation_id, project_id, user_id, ord)
        JOIN d ON d.i = e.app
        WHERE d.status = 'ok'
    ), upd AS (
        UPDATE streams AS s SET version = d.cur + d.cnt
        FROM d WHERE s.stream = d.stream AND d.status = 'ok' AND d.cnt > 0
    ), rx AS (
        INSERT INTO reactions (stream, cause, version, position)
        SELECT d.stream, d.cause, d.cur + d.cnt, d.last_pos
        FROM d WHERE d.status = 'ok' AND d.cause IS NOT NULL
    )
    SELECT d.status,
           CASE d.status WHEN 'duplicate' THEN d.dup_version
                         WHEN 'ok' THEN d.cur + d.cnt ELSE d.cur END,
           CASE d.status WHEN 'duplicate' THEN d.dup_position
                         WHEN 'ok' THEN d.last_pos ELSE 0::bigint END
    FROM d ORDER BY d.i;

    -- Delivered at commit, never for a rolled-back batch.
    IF EXISTS (SELECT 1 FROM events WHERE position >= base AND position < base + 1048576) THEN
        PERFORM pg_notify('orrery_events', base::text);
    END IF;
END
$fn$;
