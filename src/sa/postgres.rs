//! PostgreSQL, for production and for several Cairn instances sharing one
//! database: what differs from SQLite. Where SQLite's single writer keeps a
//! statement correct, PostgreSQL takes a row lock first (`lock_replaced`,
//! `lock_challenge_authz`; `sql.rs` says why at each use); list parameters
//! are one array; the rate-limit batch is one call of the `rate_limit_spend`
//! function (migrations 0004, 0006), which locks its rows in key order.
//! Transactions that lock an authorization and a challenge lock the
//! authorization first, so they cannot deadlock one another.

use super::sql::{Backend, Query, SqlStore};
use super::*;
use crate::core::gcra::{self, Decision};
use crate::core::limits::{batch, BucketTxn, TxnMode};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, Pool, Postgres, Row};
use std::str::FromStr;

/// Locks the authorization of challenge `$1` (FOR NO KEY UPDATE: it
/// conflicts with other such locks and with UPDATEs of the authorization,
/// but not with the KEY SHARE locks that foreign-key checks take, so orders
/// reusing the authorization are not held up). Every transaction that
/// changes a challenge's status takes it first, which serializes them per
/// authorization and fixes the lock order (authorization, then challenge).
const LOCK_CHALLENGE_AUTHZ: &str = "SELECT a.id FROM authzs a
     WHERE a.id = (SELECT c.authz_id FROM challenges c WHERE c.id = $1)
     FOR NO KEY UPDATE";

/// Deadlock (40P01) or serialization failure (40001): the statement can
/// simply run again. Lock ordering makes these rare (a prune racing a
/// spend); they are not errors the caller should see.
fn retryable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("40P01") | Some("40001")))
}

const ATTEMPTS: usize = 5;

#[async_trait]
impl Backend for Postgres {
    const BEGIN_WRITE: &'static str = "BEGIN";
    /// Connections are borrowed from the pool per statement, so one broken
    /// by a server restart is replaced.
    const HOLD_CONNECTIONS: bool = false;
    /// Purges running at once on several instances take disjoint rows, and
    /// none waits for a row another transaction holds.
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";

    /// Safe when several instances start at once: sqlx 0.8's migrator
    /// (`Migrator::run_direct`, sqlx-core `migrate/migrator.rs`) first takes
    /// `pg_advisory_lock(id)` on its connection, with `id` derived from the
    /// database name (sqlx-postgres `migrate.rs`, `lock`/`generate_lock_id`),
    /// and only then creates `_sqlx_migrations` and applies what is missing,
    /// each migration in its own transaction. A second instance blocks on the
    /// lock, then finds every migration applied and does nothing.
    /// `sync` is SQLite's: PostgreSQL's durability is its server's
    /// (`synchronous_commit`).
    async fn connect(
        url: &str,
        max_connections: u32,
        _sync: SqliteSynchronous,
    ) -> anyhow::Result<Pool<Postgres>> {
        let opts = PgConnectOptions::from_str(url)?.application_name("cairn");
        // One plain connection first: a server that is down or refuses us
        // fails the start at once with its real cause, where the pool would
        // wait 30 s and report only a timeout.
        opts.connect().await?.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect_with(opts)
            .await?;
        if let Err(e) = sqlx::migrate!("migrations/postgres").run(&pool).await {
            // A failed run returns before `pg_advisory_unlock`: close the
            // pool so the session, and with it the lock, ends now rather
            // than when this pool is dropped.
            pool.close().await;
            return Err(e.into());
        }
        Ok(pool)
    }

    /// One array parameter: one prepared statement whatever the number.
    async fn make_reader(_: &mut PgConnection) -> Result<(), sqlx::Error> {
        Ok(())
    }

    fn in_list(col: &str, first: usize, _: usize) -> String {
        format!("{col} = ANY(${first})")
    }

    fn rows_affected(r: &sqlx::postgres::PgQueryResult) -> u64 {
        r.rows_affected()
    }

    fn bind_ids<'q>(q: Query<'q, Postgres>, ids: &'q [i64]) -> Query<'q, Postgres> {
        q.bind(ids)
    }

    fn bind_strs<'q>(q: Query<'q, Postgres>, items: &'q [&'q str]) -> Query<'q, Postgres> {
        q.bind(items)
    }

    fn array(select: &str) -> String {
        format!("ARRAY({select})")
    }

    fn ids(r: &PgRow, col: &str) -> Result<Vec<i64>, StoreError> {
        Ok(r.try_get(col)?)
    }

    fn texts(r: &PgRow, col: &str) -> Result<Vec<String>, StoreError> {
        Ok(r.try_get(col)?)
    }

    async fn account_spending_nonce(
        s: &SqlStore<Postgres>,
        id: AccountId,
        nonce: &[u8],
        expires: i64,
    ) -> Result<(Option<Account>, bool), StoreError> {
        // One statement: the nonce insert (as in redeem_nonce: a racing
        // second insert waits for the first's commit, then conflicts) and
        // the account, joined to a one-row source so a missing account
        // still reports the nonce.
        let r = sqlx::query(
            "WITH spent AS (
                 INSERT INTO used_nonces (nonce, expires) VALUES ($2, $3)
                 ON CONFLICT DO NOTHING RETURNING 1)
             SELECT (SELECT count(*) FROM spent) AS fresh,
                    a.id, a.thumbprint, a.jwk, a.contact, a.status, a.created_at, a.eab_kid
             FROM (SELECT 1) AS one LEFT JOIN accounts a ON a.id = $1",
        )
        .bind(id.0)
        .bind(nonce)
        .bind(expires)
        .fetch_one(&s.pool)
        .await?;
        let fresh = r.try_get::<i64, _>("fresh")? == 1;
        let acct = match r.try_get::<Option<i64>, _>("id")? {
            Some(_) => Some(SqlStore::<Postgres>::account_from_row(&r)?),
            None => None,
        };
        Ok((acct, fresh))
    }

    async fn lock_replaced(tx: &mut PgConnection, serial: &str) -> Result<(), sqlx::Error> {
        // The second of two orders replacing the certificate waits here,
        // then sees the first.
        sqlx::query("SELECT 1 FROM certificates WHERE serial = $1 FOR UPDATE")
            .bind(serial)
            .execute(tx)
            .await?;
        Ok(())
    }

    async fn lock_challenge_authz(
        tx: &mut PgConnection,
        id: ChallengeId,
    ) -> Result<bool, sqlx::Error> {
        let authz: Option<i64> = sqlx::query_scalar(LOCK_CHALLENGE_AUTHZ)
            .bind(id.0)
            .fetch_optional(tx)
            .await?;
        Ok(authz.is_some())
    }

    async fn reserve_ids(
        tx: &mut PgConnection,
        table: &str,
        n: usize,
    ) -> Result<Vec<i64>, sqlx::Error> {
        // From the column's sequence, as a default id would be: safe beside
        // concurrent inserts (the ids need not be consecutive).
        sqlx::query_scalar(
            "SELECT nextval(pg_get_serial_sequence($1, 'id')) FROM generate_series(1, $2)",
        )
        .bind(table)
        .bind(n as i64)
        .fetch_all(tx)
        .await
    }

    async fn spend_buckets(
        s: &SqlStore<Postgres>,
        txns: &[BucketTxn],
        now: i64,
    ) -> Result<Vec<Decision>, StoreError> {
        let mut attempt = 0;
        let rows = loop {
            attempt += 1;
            match spend_once(s, txns, now).await {
                Ok(rows) => break rows,
                Err(e) if retryable(&e) && attempt < ATTEMPTS => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if rows.len() != txns.len() {
            return Err(StoreError::Database(format!(
                "rate_limit_spend returned {} rows for {} transactions",
                rows.len(),
                txns.len()
            )));
        }
        // The function decided under its locks; the same arithmetic here
        // gives the full decisions (remaining, retry) for the caller.
        let tats: Vec<Option<i64>> = rows.iter().map(|(t, _)| Some(*t)).collect();
        let (decisions, writes) = batch::decide(txns, &tats, now);
        let written: Vec<usize> = rows
            .iter()
            .enumerate()
            .filter(|(_, (_, w))| *w)
            .map(|(i, _)| i)
            .collect();
        if written != writes.iter().map(|(i, _)| *i).collect::<Vec<_>>() {
            return Err(StoreError::Database(
                "rate_limit_spend and the GCRA in Rust disagree (migration out of date?)".into(),
            ));
        }
        Ok(decisions)
    }

    async fn refund_buckets(
        s: &SqlStore<Postgres>,
        txns: &[BucketTxn],
        now: i64,
    ) -> Result<u64, StoreError> {
        let mut txns: Vec<&BucketTxn> = batch::refundable(txns).collect();
        if txns.is_empty() {
            return Ok(0);
        }
        // Lock in key order, as rate_limit_spend does, so the two cannot
        // deadlock; then decide and write under the locks.
        txns.sort_by(|a, b| a.key.cmp(&b.key));
        let keys: Vec<&str> = txns.iter().map(|t| t.key.as_str()).collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result: Result<u64, sqlx::Error> = async {
                let mut tx = s.pool.begin().await?;
                let rows = sqlx::query(
                    "SELECT key, tat FROM rate_limit_buckets WHERE key = ANY($1) \
                     ORDER BY key FOR UPDATE",
                )
                .bind(&keys)
                .fetch_all(&mut *tx)
                .await?;
                let mut found = std::collections::HashMap::with_capacity(rows.len());
                for r in rows {
                    found.insert(r.try_get::<String, _>("key")?, r.try_get::<i64, _>("tat")?);
                }
                let mut upd_keys = Vec::new();
                let mut upd_tats = Vec::new();
                for t in &txns {
                    let d = gcra::refund(&t.params, found.get(&t.key).copied(), t.cost, now);
                    if d.allowed {
                        upd_keys.push(t.key.as_str());
                        upd_tats.push(d.new_tat_ns);
                    }
                }
                if !upd_keys.is_empty() {
                    sqlx::query(
                        "UPDATE rate_limit_buckets b SET tat = u.tat \
                         FROM unnest($1::text[], $2::bigint[]) AS u (key, tat) WHERE b.key = u.key",
                    )
                    .bind(&upd_keys)
                    .bind(&upd_tats)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(upd_keys.len() as u64)
            }
            .await;
            match result {
                Ok(n) => return Ok(n),
                Err(e) if retryable(&e) && attempt < ATTEMPTS => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn reset_buckets(s: &SqlStore<Postgres>, keys: &[String]) -> Result<u64, StoreError> {
        // One row per statement: a multi-row DELETE would lock in an order
        // of its own choosing.
        let mut keys: Vec<&String> = keys.iter().collect();
        keys.sort();
        keys.dedup();
        let mut n = 0;
        for k in keys {
            n += sqlx::query("DELETE FROM rate_limit_buckets WHERE key = $1")
                .bind(k)
                .execute(&s.pool)
                .await?
                .rows_affected();
        }
        Ok(n)
    }
}

/// One call of `rate_limit_spend`: per transaction, the TAT it decided on
/// and whether it wrote.
async fn spend_once(
    s: &SqlStore<Postgres>,
    txns: &[BucketTxn],
    now: i64,
) -> Result<Vec<(i64, bool)>, sqlx::Error> {
    let keys: Vec<&str> = txns.iter().map(|t| t.key.as_str()).collect();
    let offsets: Vec<i64> = txns.iter().map(|t| t.params.burst_offset_ns()).collect();
    let costs: Vec<i64> = txns.iter().map(|t| t.params.cost_ns(t.cost)).collect();
    let modes: Vec<i16> = txns
        .iter()
        .map(|t| match t.mode {
            TxnMode::CheckAndSpend => 0,
            TxnMode::CheckOnly => 1,
            TxnMode::SpendOnly => 2,
        })
        .collect();
    let rows = sqlx::query(
        "SELECT idx, old_tat, written FROM rate_limit_spend($1, $2, $3, $4, $5) ORDER BY idx",
    )
    .bind(&keys)
    .bind(&offsets)
    .bind(&costs)
    .bind(&modes)
    .bind(now)
    .fetch_all(&s.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get::<i64, _>("old_tat")?,
                r.try_get::<bool, _>("written")?,
            ))
        })
        .collect()
}
