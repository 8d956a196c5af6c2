-- Rate limits (LIMITS.md §2): one row per GCRA bucket holding its TAT
-- (theoretical arrival time, Unix nanoseconds; at or before now = full).
-- Keys are `<limitName>:<id>`. A missing row is a full bucket.
CREATE TABLE rate_limit_buckets (
    key TEXT PRIMARY KEY NOT NULL,
    tat INTEGER NOT NULL
) WITHOUT ROWID;
-- Pruning buckets that are full again.
CREATE INDEX rate_limit_buckets_tat ON rate_limit_buckets (tat);

-- Identifiers an account is paused for (consecutive authorization
-- failures); a row with unpaused_at set is no longer paused.
CREATE TABLE rate_limit_paused (
    account_id  INTEGER NOT NULL,
    identifier  TEXT NOT NULL,
    paused_at   INTEGER NOT NULL,
    unpaused_at INTEGER,
    PRIMARY KEY (account_id, identifier)
);

-- Counting an account's pending authorizations (at most 300).
CREATE INDEX authzs_pending ON authzs (account_id, expires) WHERE status = 'pending';
