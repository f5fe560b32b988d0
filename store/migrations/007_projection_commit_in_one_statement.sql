-- A projection batch whose writes are all whole rows commits in one statement: its row
-- writes and its checkpoints' moves as data-modifying CTEs, with no BEGIN and no COMMIT
-- (store/pg_projection.py). A checkpoint that another runner moved first must undo the
-- rows written beside it; this raises, and so aborts the statement, when fewer
-- checkpoints moved than were asked for.

CREATE OR REPLACE FUNCTION orrery_checkpoints_moved(moved bigint, wanted int)
RETURNS boolean
LANGUAGE plpgsql AS $fn$
BEGIN
    IF moved <> wanted THEN
        RAISE EXCEPTION 'projection checkpoints moved by another runner (% of % as expected)',
            moved, wanted USING ERRCODE = 'OR409';
    END IF;
    RETURN true;
END
$fn$;
