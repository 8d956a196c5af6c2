-- Rate limits (LIMITS.md §2): one row per GCRA bucket holding its TAT
-- (theoretical arrival time, Unix nanoseconds; at or before now = full).
-- Keys are `<limitName>:<id>`. A missing row is a full bucket.
CREATE TABLE rate_limit_buckets (
    key TEXT PRIMARY KEY,
    tat BIGINT NOT NULL
);
-- Pruning buckets that are full again.
CREATE INDEX rate_limit_buckets_tat ON rate_limit_buckets (tat);

-- Identifiers an account is paused for (consecutive authorization
-- failures); a row with unpaused_at set is no longer paused.
CREATE TABLE rate_limit_paused (
    account_id  BIGINT NOT NULL,
    identifier  TEXT NOT NULL,
    paused_at   BIGINT NOT NULL,
    unpaused_at BIGINT,
    PRIMARY KEY (account_id, identifier)
);

-- Counting an account's pending authorizations (at most 300).
CREATE INDEX authzs_pending ON authzs (account_id, expires) WHERE status = 'pending';

-- One batch of bucket transactions, atomically, in one round trip: the
-- GCRA of src/ratelimit/gcra.rs (`spend`), integer for integer.
--
-- Arrays are parallel, one element per transaction: key, burst offset
-- (ns), cost in ns (cost * emission interval, computed by the caller), mode
-- (0 check+spend, 1 check-only, 2 spend-only). Keys must be distinct.
--
-- Concurrency: missing rows are inserted first (TAT 0 = full) in key order,
-- so every key then exists and can be locked; the rows are then locked with
-- FOR UPDATE in key order. Every caller takes its locks in the same order,
-- so two batches sharing keys serialise on the first shared key and cannot
-- deadlock. Decisions are made on the locked (latest committed) TATs, and
-- only if every deciding transaction is allowed are the new TATs written.
-- Returns, per transaction in input order, the TAT the decision was made
-- on (0 for a bucket that had no row) and whether a new TAT was written.
CREATE FUNCTION rate_limit_spend(
    p_keys   TEXT[],
    p_offset BIGINT[],
    p_cost   BIGINT[],
    p_mode   SMALLINT[],
    p_now    BIGINT
) RETURNS TABLE (idx INTEGER, old_tat BIGINT, written BOOLEAN)
LANGUAGE plpgsql AS $$
DECLARE
    n       INTEGER := coalesce(array_length(p_keys, 1), 0);
    tats    BIGINT[];
    held    BIGINT;
    base    BIGINT;
    new_tat BIGINT;
    ok      BOOLEAN := TRUE;
    i       INTEGER;
BEGIN
    -- Rows that do not exist yet are created full (TAT 0), in key order;
    -- then every row is locked, in key order. A row pruned between the two
    -- (pruning deletes full buckets, skipping locked rows) is missing from
    -- the locked set: go round again until all are held.
    LOOP
        INSERT INTO rate_limit_buckets (key, tat)
        SELECT k, 0 FROM unnest(p_keys) AS k ORDER BY k
        ON CONFLICT (key) DO NOTHING;

        PERFORM 1 FROM rate_limit_buckets b
          WHERE b.key = ANY (p_keys) ORDER BY b.key FOR UPDATE;

        SELECT array_agg(b.tat ORDER BY u.ord), count(b.key) INTO tats, held
          FROM unnest(p_keys) WITH ORDINALITY AS u (key, ord)
          LEFT JOIN rate_limit_buckets b ON b.key = u.key;
        EXIT WHEN held = n;
    END LOOP;

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
