//! SQLite, the embedded default (one file in WAL mode): what differs from
//! PostgreSQL. One writer at a time, so no statement needs a lock of its
//! own; list parameters are spelled out; the rate-limit batch is one
//! `BEGIN IMMEDIATE` transaction.

use super::sql::{Backend, Query, SqlStore};
use super::*;
use crate::core::gcra::{self, Decision};
use crate::core::limits::{batch, BucketTxn};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow};
use sqlx::{Pool, Row, Sqlite, SqliteConnection};
use std::str::FromStr;
use std::time::Duration;

#[async_trait]
impl Backend for Sqlite {
    /// The write lock at once: the transaction's reads and its writes see
    /// one state, and no read lock has to be upgraded (which fails at once,
    /// busy timeout or not, when another process wrote in between).
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    const HOLD_CONNECTIONS: bool = true;
    /// One writer at a time: nothing to skip.
    const SKIP_LOCKED: &'static str = "";

    async fn connect(
        url: &str,
        max_connections: u32,
        sync: SqliteSynchronous,
    ) -> anyhow::Result<Pool<Sqlite>> {
        let opts = SqliteConnectOptions::from_str(url)?;
        restrict_database_files(opts.get_filename())?;
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // `database.sqlite_synchronous` (config.rs says what each keeps).
            .synchronous(match sync {
                SqliteSynchronous::Full => sqlx::sqlite::SqliteSynchronous::Full,
                SqliteSynchronous::Normal => sqlx::sqlite::SqliteSynchronous::Normal,
            })
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect_with(opts)
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        Ok(pool)
    }

    async fn make_reader(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
        sqlx::query("PRAGMA query_only = ON")
            .execute(conn)
            .await
            .map(|_| ())
    }

    fn in_list(col: &str, first: usize, n: usize) -> String {
        if n == 0 {
            return format!("{col} IN (NULL)");
        }
        let params: Vec<String> = (first..first + n).map(|i| format!("${i}")).collect();
        format!("{col} IN ({})", params.join(", "))
    }

    fn rows_affected(r: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        r.rows_affected()
    }

    fn bind_ids<'q>(q: Query<'q, Sqlite>, ids: &'q [i64]) -> Query<'q, Sqlite> {
        ids.iter().fold(q, |q, id| q.bind(*id))
    }

    fn bind_strs<'q>(q: Query<'q, Sqlite>, items: &'q [&'q str]) -> Query<'q, Sqlite> {
        items.iter().fold(q, |q, s| q.bind(*s))
    }

    /// Comma-separated: ids and DNS identifiers hold no commas.
    fn array(select: &str) -> String {
        format!("(SELECT group_concat(v, ',') FROM ({select}))")
    }

    fn ids(r: &SqliteRow, col: &str) -> Result<Vec<i64>, StoreError> {
        Self::texts(r, col)?
            .iter()
            .map(|s| s.parse().map_err(|_| StoreError::corrupt("an id")))
            .collect()
    }

    fn texts(r: &SqliteRow, col: &str) -> Result<Vec<String>, StoreError> {
        Ok(r.try_get::<Option<String>, _>(col)?
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect())
    }

    async fn account_spending_nonce(
        s: &SqlStore<Sqlite>,
        id: AccountId,
        nonce: &[u8],
        expires: i64,
    ) -> Result<(Option<Account>, bool), StoreError> {
        // Embedded: two statements cost no network round trip; the read
        // (a reader) and the spend (the writer's batch) run side by side.
        let (acct, fresh) = tokio::join!(s.account(id), s.redeem_nonce(nonce, expires));
        Ok((acct?, fresh?))
    }

    async fn lock_replaced(_: &mut SqliteConnection, _: &str) -> Result<(), sqlx::Error> {
        // The order's INSERT, the transaction's first write, takes the
        // database's write lock.
        Ok(())
    }

    async fn lock_challenge_authz(
        _: &mut SqliteConnection,
        _: ChallengeId,
    ) -> Result<bool, sqlx::Error> {
        // The transaction's first write takes the database's write lock.
        Ok(true)
    }

    async fn reserve_ids(
        tx: &mut SqliteConnection,
        table: &str,
        n: usize,
    ) -> Result<Vec<i64>, sqlx::Error> {
        // The write lock is held: nobody inserts meanwhile. Past the
        // highest id ever given (AUTOINCREMENT's sqlite_sequence, which
        // inserting a higher id moves on), so a purged row's id stays unused.
        let last: i64 = sqlx::query_scalar(&format!(
            "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = $1), 0),
                        COALESCE((SELECT MAX(id) FROM {table}), 0))"
        ))
        .bind(table)
        .fetch_one(tx)
        .await?;
        Ok((1..=n as i64).map(|i| last + i).collect())
    }

    async fn spend_buckets(
        s: &SqlStore<Sqlite>,
        txns: &[BucketTxn],
        now: i64,
    ) -> Result<Vec<Decision>, StoreError> {
        // BEGIN IMMEDIATE takes the write lock at once, so batches from
        // several connections (or processes sharing the file) run one after
        // another and never decide on a TAT another is about to change.
        let keys: Vec<&str> = txns.iter().map(|t| t.key.as_str()).collect();
        let mut conn = s.writer().await?;
        let mut tx = conn.begin().await?;
        let tats = SqlStore::<Sqlite>::read_tats(&mut *tx, &keys).await?;
        let (decisions, writes) = batch::decide(txns, &tats, now);
        if !writes.is_empty() {
            // One statement for every bucket written.
            let values: Vec<String> = (0..writes.len())
                .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
                .collect();
            let sql = format!(
                "INSERT INTO rate_limit_buckets (key, tat) VALUES {} \
                 ON CONFLICT (key) DO UPDATE SET tat = excluded.tat",
                values.join(", ")
            );
            writes
                .iter()
                .fold(sqlx::query(&sql), |q, &(i, tat)| q.bind(keys[i]).bind(tat))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(decisions)
    }

    async fn refund_buckets(
        s: &SqlStore<Sqlite>,
        txns: &[BucketTxn],
        now: i64,
    ) -> Result<u64, StoreError> {
        let txns: Vec<&BucketTxn> = batch::refundable(txns).collect();
        if txns.is_empty() {
            return Ok(0);
        }
        let keys: Vec<&str> = txns.iter().map(|t| t.key.as_str()).collect();
        let mut conn = s.writer().await?;
        let mut tx = conn.begin().await?;
        let tats = SqlStore::<Sqlite>::read_tats(&mut *tx, &keys).await?;
        let mut changed = 0;
        for (t, tat) in txns.iter().zip(tats) {
            let d = gcra::refund(&t.params, tat, t.cost, now);
            if d.allowed {
                sqlx::query("UPDATE rate_limit_buckets SET tat = $1 WHERE key = $2")
                    .bind(d.new_tat_ns)
                    .bind(&t.key)
                    .execute(&mut *tx)
                    .await?;
                changed += 1;
            }
        }
        tx.commit().await?;
        Ok(changed)
    }

    async fn reset_buckets(s: &SqlStore<Sqlite>, keys: &[String]) -> Result<u64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let sql = format!(
            "DELETE FROM rate_limit_buckets WHERE {}",
            Self::in_list("key", 1, keys.len())
        );
        Ok(Self::bind_strs(sqlx::query(&sql), &keys)
            .execute(&mut *s.writer().await?)
            .await?
            .rows_affected())
    }
}

/// The database holds the nonce HMAC key and every account: owner-only.
/// Create the file 0600 before SQLite does (its `-wal` and `-shm` files take
/// the database file's mode), and narrow existing files to 0600.
fn restrict_database_files(db: &std::path::Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if db.as_os_str().is_empty() || db.as_os_str() == ":memory:" {
            return Ok(());
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(db)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(anyhow::anyhow!("creating {}: {e}", db.display())),
        }
        for suffix in ["", "-wal", "-shm"] {
            let mut p = db.as_os_str().to_owned();
            p.push(suffix);
            let p = std::path::PathBuf::from(p);
            if let Ok(meta) = std::fs::metadata(&p) {
                if meta.permissions().mode() & 0o077 != 0 {
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                        .map_err(|e| anyhow::anyhow!("making {} owner-only: {e}", p.display()))?;
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = db;
    Ok(())
}
