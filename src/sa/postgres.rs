//! PostgreSQL, for production and for several Cairn instances sharing one
//! database: what differs from SQLite. Where SQLite's single writer keeps a
//! statement correct, PostgreSQL takes a row lock first (`lock_replaced`,
//! `lock_challenge_authz`; `sql.rs` says why at each use); list parameters
//! are one array; the rate-limit batch is one call of the `rate_limit_spend`
//! function (migrations 0004, 0006), which locks its rows in key order.
//! Transactions that lock an authorization and a challenge lock the
//! authorization first, so they cannot deadlock one another.

use super::exec::{
    query, query_scalar, Cell, Connection, DbError, ErrorKind, Fetch, Output, Query, Row, Value,
};
use super::sql::{Backend, SqlStore};
use super::*;
use crate::core::gcra::{self, Decision};
use crate::core::limits::{batch, BucketTxn, TxnMode};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{
    PgArguments, PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow, PgTransactionManager,
};
use sqlx::{Arguments, ConnectOptions, Executor, Row as _, TransactionManager, TypeInfo, ValueRef};
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

const ATTEMPTS: usize = 5;

/// The pool: connections are borrowed per statement (or transaction), so
/// one broken by a server restart is replaced.
pub(crate) struct Postgres {
    pool: PgPool,
}

fn pg_error(e: sqlx::Error) -> DbError {
    let kind = match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => ErrorKind::UniqueViolation,
        // Deadlock (40P01) or serialization failure (40001): the statement
        // can simply run again. Lock ordering makes these rare (a prune
        // racing a spend); they are not errors the caller should see.
        sqlx::Error::Database(d)
            if matches!(d.code().as_deref(), Some("40P01") | Some("40001")) =>
        {
            ErrorKind::Retryable
        }
        _ => ErrorKind::Other,
    };
    DbError::new(kind, e)
}

fn bind(args: &mut PgArguments, v: &Value<'_>) -> Result<(), sqlx::error::BoxDynError> {
    use super::exec::Kind;
    match v {
        Value::Null(Kind::Int) => args.add(None::<i64>),
        Value::Null(Kind::Bool) => args.add(None::<bool>),
        Value::Null(Kind::Text) => args.add(None::<&str>),
        Value::Null(Kind::Blob) => args.add(None::<&[u8]>),
        Value::Int(i) => args.add(*i),
        Value::Bool(b) => args.add(*b),
        Value::Text(s) => args.add(&**s),
        Value::Blob(b) => args.add(&**b),
        Value::Ints(v) => args.add(&**v),
        Value::Texts(v) => args.add(*v),
    }
}

/// A column's value by its PostgreSQL type (the types our schema uses).
fn cell(r: &PgRow, i: usize) -> Result<Cell, sqlx::Error> {
    let raw = r.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(Cell::Null);
    }
    let ty = raw.type_info().name().to_string();
    Ok(match ty.as_str() {
        "INT8" => Cell::Int(r.try_get(i)?),
        "INT4" => Cell::Int(r.try_get::<i32, _>(i)?.into()),
        "INT2" => Cell::Int(r.try_get::<i16, _>(i)?.into()),
        "BOOL" => Cell::Bool(r.try_get(i)?),
        "FLOAT8" => Cell::Real(r.try_get(i)?),
        "TEXT" | "VARCHAR" | "NAME" | "BPCHAR" => Cell::Text(r.try_get(i)?),
        "BYTEA" => Cell::Blob(r.try_get(i)?),
        "INT8[]" => Cell::Ints(r.try_get(i)?),
        "TEXT[]" => Cell::Texts(r.try_get(i)?),
        _ => {
            return Err(sqlx::Error::Decode(
                format!("column {i}: unsupported type {ty}").into(),
            ))
        }
    })
}

fn rows(pg: &[PgRow]) -> Result<Vec<Row>, DbError> {
    let Some(first) = pg.first() else {
        return Ok(Vec::new());
    };
    use sqlx::Column as _;
    let names: Arc<[Box<str>]> = first.columns().iter().map(|c| c.name().into()).collect();
    pg.iter()
        .map(|r| {
            let cells = (0..names.len())
                .map(|i| cell(r, i))
                .collect::<Result<_, _>>()
                .map_err(pg_error)?;
            Ok(Row::new(names.clone(), cells))
        })
        .collect()
}

impl Connection for PgConnection {
    async fn run<'a>(
        &'a mut self,
        sql: &'a str,
        params: &'a [Value<'a>],
        fetch: Fetch,
    ) -> Result<Output, DbError> {
        let mut args = PgArguments::default();
        for v in params {
            bind(&mut args, v).map_err(|e| DbError::other(format!("binding: {e}")))?;
        }
        let q = sqlx::query_with(sql, args);
        Ok(match fetch {
            Fetch::Affected => Output {
                rows: Vec::new(),
                affected: self.execute(q).await.map_err(pg_error)?.rows_affected(),
            },
            Fetch::First => Output {
                rows: rows(self.fetch_optional(q).await.map_err(pg_error)?.as_slice())?,
                affected: 0,
            },
            Fetch::All => Output {
                rows: rows(&self.fetch_all(q).await.map_err(pg_error)?)?,
                affected: 0,
            },
        })
    }

    async fn begin_raw(&mut self) -> Result<(), DbError> {
        PgTransactionManager::begin(self, None)
            .await
            .map_err(pg_error)
    }

    async fn commit_raw(&mut self) -> Result<(), DbError> {
        PgTransactionManager::commit(self).await.map_err(pg_error)
    }

    async fn rollback_raw(&mut self) -> Result<(), DbError> {
        PgTransactionManager::rollback(self).await.map_err(pg_error)
    }

    /// Queued: sent before the connection's next statement (or when the
    /// pool takes it back).
    fn abort(&mut self) {
        PgTransactionManager::start_rollback(self)
    }
}

#[async_trait]
impl Backend for Postgres {
    type Conn = PgConnection;
    type Guard<'a> = PoolConnection<sqlx::Postgres>;
    const BATCH_NONCES: bool = false;
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
    async fn open(
        url: &str,
        max_connections: u32,
        _sync: SqliteSynchronous,
    ) -> anyhow::Result<Postgres> {
        let opts = PgConnectOptions::from_str(url)?.application_name("cairn");
        // One plain connection first: a server that is down or refuses us
        // fails the start at once with its real cause, where the pool would
        // wait 30 s and report only a timeout.
        sqlx::Connection::close(opts.connect().await?).await?;
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
        Ok(Postgres { pool })
    }

    async fn writer(&self) -> Result<Self::Guard<'_>, DbError> {
        self.pool.acquire().await.map_err(pg_error)
    }

    async fn reader(&self) -> Result<Self::Guard<'_>, DbError> {
        self.pool.acquire().await.map_err(pg_error)
    }

    fn pool_stats(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    fn in_list(col: &str, first: usize, _: usize) -> String {
        format!("{col} = ANY(${first})")
    }

    /// One array parameter: one prepared statement whatever the number.
    fn bind_ids<'q>(q: Query<'q>, ids: &'q [i64]) -> Query<'q> {
        q.bind(ids)
    }

    fn bind_strs<'q>(q: Query<'q>, items: &'q [&'q str]) -> Query<'q> {
        q.bind(items)
    }

    fn array(select: &str) -> String {
        format!("ARRAY({select})")
    }

    fn ids(r: &Row, col: &str) -> Result<Vec<i64>, StoreError> {
        Ok(r.try_get(col)?)
    }

    fn texts(r: &Row, col: &str) -> Result<Vec<String>, StoreError> {
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
        let r = query(
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
        .fetch_one(&mut *s.writer().await?)
        .await?;
        let fresh = r.try_get::<i64>("fresh")? == 1;
        let acct = match r.try_get::<Option<i64>>("id")? {
            Some(_) => Some(SqlStore::<Postgres>::account_from_row(&r)?),
            None => None,
        };
        Ok((acct, fresh))
    }

    async fn lock_replaced<C: Connection>(tx: &mut C, serial: &str) -> Result<(), DbError> {
        // The second of two orders replacing the certificate waits here,
        // then sees the first.
        query("SELECT 1 FROM certificates WHERE serial = $1 FOR UPDATE")
            .bind(serial)
            .execute(tx)
            .await?;
        Ok(())
    }

    async fn lock_challenge_authz<C: Connection>(
        tx: &mut C,
        id: ChallengeId,
    ) -> Result<bool, DbError> {
        let authz: Option<i64> = super::exec::query_scalar(LOCK_CHALLENGE_AUTHZ)
            .bind(id.0)
            .fetch_optional(tx)
            .await?;
        Ok(authz.is_some())
    }

    async fn reserve_ids<C: Connection>(
        tx: &mut C,
        table: &str,
        n: usize,
    ) -> Result<Vec<i64>, DbError> {
        // From the column's sequence, as a default id would be: safe beside
        // concurrent inserts (the ids need not be consecutive).
        query_scalar("SELECT nextval(pg_get_serial_sequence($1, 'id')) FROM generate_series(1, $2)")
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
                Err(e) if e.kind == ErrorKind::Retryable && attempt < ATTEMPTS => continue,
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
            let result: Result<u64, DbError> = async {
                let mut conn = s.writer().await?;
                let mut tx = conn.begin().await?;
                let rows = query(
                    "SELECT key, tat FROM rate_limit_buckets WHERE key = ANY($1) \
                     ORDER BY key FOR UPDATE",
                )
                .bind(&keys)
                .fetch_all(&mut *tx)
                .await?;
                let mut found = std::collections::HashMap::with_capacity(rows.len());
                for r in rows {
                    found.insert(r.try_get::<String>("key")?, r.try_get::<i64>("tat")?);
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
                    query(
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
                Err(e) if e.kind == ErrorKind::Retryable && attempt < ATTEMPTS => continue,
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
            n += query("DELETE FROM rate_limit_buckets WHERE key = $1")
                .bind(k)
                .execute(&mut *s.writer().await?)
                .await?;
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
) -> Result<Vec<(i64, bool)>, DbError> {
    let keys: Vec<&str> = txns.iter().map(|t| t.key.as_str()).collect();
    let offsets: Vec<i64> = txns.iter().map(|t| t.params.burst_offset_ns()).collect();
    let costs: Vec<i64> = txns.iter().map(|t| t.params.cost_ns(t.cost)).collect();
    let modes: Vec<i64> = txns
        .iter()
        .map(|t| match t.mode {
            TxnMode::CheckAndSpend => 0,
            TxnMode::CheckOnly => 1,
            TxnMode::SpendOnly => 2,
        })
        .collect();
    let rows = query(
        "SELECT idx, old_tat, written FROM rate_limit_spend($1, $2, $3, $4::smallint[], $5) \
         ORDER BY idx",
    )
    .bind(&keys)
    .bind(&offsets)
    .bind(&costs)
    .bind(&modes)
    .bind(now)
    .fetch_all(&mut *s.writer().await?)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get::<i64>("old_tat")?, r.try_get::<bool>("written")?)))
        .collect()
}
