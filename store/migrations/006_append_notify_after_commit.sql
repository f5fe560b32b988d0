-- orrery_append no longer notifies inside the append's transaction. A NOTIFY takes
-- PostgreSQL's one notification lock at commit and holds it through the commit's WAL
-- flush, so every notifying commit in the cluster waited for the one before it: no group
-- commit, and under load a quarter of the appends' time was spent in that queue. The
-- writer now sends the wake-up on its own trip after the commit (store/pg_notify.py).
-- Everything else is as in 005; the 13-argument function of 004 keeps its notification
-- for older processes.

CREATE OR REPLACE FUNCTION orrery_append(
    a_stream text[], a_expected int[], a_cause text[], a_count int[],
    e_append int[], e_type text[], e_data bytea[], e_event_id uuid[],
    e_occurred_at timestamptz[], e_correlation_id text[], e_causation_id text[],
    e_project_id text[], e_user_id text[],
    c_append int[], c_cause text[], c_upto int[])
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
               s.version AS cur, r.version AS dup_version, r.position AS dup_position,
               xr.seen IS NOT NULL AS xdup
        FROM unnest(a_stream, a_expected, a_cause, a_count)
             WITH ORDINALITY AS t(stream, expected, cause, cnt, i)
        -- one index probe per append (LIMIT keeps them apart from the join order)
        CROSS JOIN LATERAL (SELECT version FROM streams
                            WHERE stream = t.stream LIMIT 1) s
        LEFT JOIN LATERAL (SELECT version, position FROM reactions
                           WHERE stream = t.stream AND cause = t.cause LIMIT 1) r ON true
        -- any of the append's other causes recorded already
        LEFT JOIN LATERAL (SELECT true AS seen
                           FROM unnest(c_append, c_cause) AS x(app, cause)
                           CROSS JOIN LATERAL (SELECT 1 FROM reactions
                                               WHERE stream = t.stream AND cause = x.cause
                                               LIMIT 1) y
                           WHERE x.app = t.i LIMIT 1) xr ON true
    ), d AS (
        SELECT a.*, CASE WHEN a.cnt > 0 THEN base + a.first + a.cnt - 1 ELSE 0 END AS last_pos,
               CASE WHEN a.dup_version IS NOT NULL OR a.xdup THEN 'duplicate'
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
        FROM d WHERE s.stream = d.stream AND s.stream = ANY (a_stream)
                 AND d.status = 'ok' AND d.cnt > 0
    ), rx AS (
        INSERT INTO reactions (stream, cause, version, position)
        SELECT d.stream, d.cause, d.cur + d.cnt, d.last_pos
        FROM d WHERE d.status = 'ok' AND d.cause IS NOT NULL
        UNION ALL
        SELECT d.stream, x.cause, d.cur + x.upto, base + d.first + x.upto - 1
        FROM unnest(c_append, c_cause, c_upto) AS x(app, cause, upto)
        JOIN d ON d.i = x.app WHERE d.status = 'ok'
    )
    SELECT d.status,
           CASE d.status WHEN 'duplicate' THEN coalesce(d.dup_version, d.cur)
                         WHEN 'ok' THEN d.cur + d.cnt ELSE d.cur END,
           CASE d.status WHEN 'duplicate' THEN coalesce(d.dup_position, 0::bigint)
                         WHEN 'ok' THEN d.last_pos ELSE 0::bigint END
    FROM d ORDER BY d.i;

END
$fn$
SET enable_seqscan = off;
