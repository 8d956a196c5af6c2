-- rate_limit_spend, as 0004, except that check-only transactions neither
-- create nor lock a row: they are read as they stand (a missing row is a
-- full bucket). A newOrder for 100 names checks 100 failed-authorization
-- buckets; it no longer writes 100 rows (pruned a minute later) and holds
-- 100 row locks to do so. Spending transactions are created and locked in
-- key order as before, so batches still cannot deadlock.
CREATE OR REPLACE FUNCTION rate_limit_spend(
    p_keys   TEXT[],
    p_offset BIGINT[],
    p_cost   BIGINT[],
    p_mode   SMALLINT[],
    p_now    BIGINT
) RETURNS TABLE (idx INTEGER, old_tat BIGINT, written BOOLEAN)
LANGUAGE plpgsql AS $$
DECLARE
    n       INTEGER := coalesce(array_length(p_keys, 1), 0);
    spends  TEXT[];
    tats    BIGINT[];
    held    BIGINT;
    base    BIGINT;
    new_tat BIGINT;
    ok      BOOLEAN := TRUE;
    i       INTEGER;
BEGIN
    SELECT coalesce(array_agg(u.k ORDER BY u.k), '{}') INTO spends
      FROM unnest(p_keys, p_mode) AS u (k, m) WHERE u.m <> 1;

    -- Spending rows that do not exist yet are created full (TAT 0), in key
    -- order; then they are locked, in key order. A row pruned between the
    -- two (pruning skips locked rows) is missing: go round again.
    LOOP
        INSERT INTO rate_limit_buckets (key, tat)
        SELECT k, 0 FROM unnest(spends) AS k ORDER BY k
        ON CONFLICT (key) DO NOTHING;

        PERFORM 1 FROM rate_limit_buckets b
          WHERE b.key = ANY (spends) ORDER BY b.key FOR UPDATE;

        SELECT count(*) INTO held
          FROM rate_limit_buckets b WHERE b.key = ANY (spends);
        EXIT WHEN held = coalesce(array_length(spends, 1), 0);
    END LOOP;

    SELECT array_agg(coalesce(b.tat, 0) ORDER BY u.ord) INTO tats
      FROM unnest(p_keys) WITH ORDINALITY AS u (key, ord)
      LEFT JOIN rate_limit_buckets b ON b.key = u.key;

    FOR i IN 1 .. n LOOP
        base := greatest(p_now, tats[i]);
        new_tat := base + p_cost[i];
        IF p_mode[i] <> 2 AND p_now - (new_tat - p_offset[i]) < 0 THEN
            ok := FALSE;
        END IF;
    END LOOP;

    FOR i IN 1 .. n LOOP
        base := greatest(p_now, tats[i]);
        new_tat := base + p_cost[i];
        written := ok AND p_mode[i] <> 1 AND p_cost[i] > 0
                   AND p_now - (new_tat - p_offset[i]) >= 0;
        IF written THEN
            UPDATE rate_limit_buckets SET tat = new_tat WHERE key = p_keys[i];
        END IF;
        idx := i;
        old_tat := tats[i];
        RETURN NEXT;
    END LOOP;
END;
$$;
