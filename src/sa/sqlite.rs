//! SQLite, the embedded default (one file in WAL mode): what differs from
//! PostgreSQL. One writer at a time, so no statement needs a lock of its
//! own; list parameters are spelled out; the rate-limit batch is one
//! `BEGIN IMMEDIATE` transaction.

use super::exec::{
    query, query_scalar, Cell, Connection, DbError, ErrorKind, Fetch, Output, Query, Row, Value,
};
use super::sql::{Backend, SqlStore};
use super::*;
use crate::core::gcra::{self, Decision};
use crate::core::limits::{batch, BucketTxn};
use rusqlite::types::{ToSqlOutput, ValueRef};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use std::future::{ready, Future};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

/// How long a statement waits for another process's write lock (SQLite's
/// busy handler). It waits on the calling thread, a runtime worker: only
/// another process writing the file (`cairn admin` beside the server) makes
/// it wait at all, since the store's own writes queue for its one writer.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Prepared statements kept per connection: every statement of the store,
/// and the variants of those built at run time (a nonce batch of each size,
/// lists of each length).
const STATEMENT_CACHE: usize = 512;

/// The connections the store keeps for itself: one writer, behind a fair
/// async mutex, and readers. SQLite lets one connection write at a time;
/// with several writers, the others waited for its lock in SQLite's busy
/// handler, which sleeps (1, 2, 5 ... 100 ms) rather than queues, and made
/// the p99. One writer in a queue takes turns at once. Other processes
/// sharing the file still meet the busy handler.
///
/// Every statement runs inline, on the task's own thread, when its
/// connection is ours (rusqlite; `exec.rs` says why not sqlx here).
/// Statements take microseconds; a commit with `synchronous = FULL` adds
/// an fsync, during which this runtime worker waits.
pub(crate) struct Sqlite {
    writer: Mutex<Option<Held>>,
    readers: Vec<Mutex<Option<Held>>>,
    batches: Arc<Batches>,
}

/// Group commit. The writer runs every write inside an open transaction,
/// a batch: a transaction of the store's that begins the batch is the
/// batch's own (its ROLLBACK ends the batch, which holds nothing else), one
/// that joins an open batch a savepoint in it, a single statement a
/// statement in it. (A savepoint copies each page it changes to SQLite's
/// sub-journal first: 3% of an issuance's CPU when every transaction was
/// one.) When the writer is given back and another
/// task waits for it, the batch stays open for that task's writes, and one
/// COMMIT (one set of WAL frames for the pages they share, one lock round)
/// ends them all. A write made for an HTTP request (`track_writes`) is
/// answered only once its batch is committed (`Store::durable`); any other
/// write commits before its store call returns, as without batches. A
/// batch is numbered; `committed` is the newest committed, `failed` the
/// recent ones that were rolled back. A batch left open for a waiter that
/// then gave up (its request was dropped) is committed by the next call
/// that finds the writer idle. With `synchronous = FULL` a batch costs one
/// fsync instead of one per write: the `dev` preset issues about a third
/// faster for a sixth less CPU; the `test` preset, which syncs only at
/// checkpoints, saves about 2%.
#[derive(Default)]
struct Batches {
    /// Tasks queued for the writer.
    waiting: AtomicUsize,
    /// The newest batch begun.
    begun: AtomicU64,
    committed: AtomicU64,
    failed: std::sync::Mutex<std::collections::VecDeque<u64>>,
}

impl Batches {
    fn done(&self, batch: u64) -> Option<Result<(), DbError>> {
        let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if failed.contains(&batch) {
            return Some(Err(DbError::other(
                "the transaction this request's writes were committed with failed",
            )));
        }
        (self.committed.load(SeqCst) >= batch).then_some(Ok(()))
    }

    fn fail(&self, batch: u64) {
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if failed.len() >= 64 {
            failed.pop_front();
        }
        failed.push_back(batch);
    }
}

tokio::task_local! {
    /// The newest batch the current request wrote in or read from.
    static WRITES: std::cell::Cell<u64>;
}

/// Run `fut` (an HTTP request), noting the newest batch of the writer it
/// wrote in or read from: its answer waits for `Store::durable(that)`.
pub async fn track_writes<F: Future>(fut: F) -> (F::Output, u64) {
    WRITES
        .scope(std::cell::Cell::new(0), async {
            let out = fut.await;
            (out, WRITES.with(|w| w.get()))
        })
        .await
}

/// The newest batch the current request depends on (0: none, or outside
/// a request).
pub fn tracked_writes() -> u64 {
    WRITES.try_with(|w| w.get()).unwrap_or(0)
}

/// Note that the current request depends on `batch`; false outside a
/// request.
fn track(batch: u64) -> bool {
    WRITES.try_with(|w| w.set(w.get().max(batch))).is_ok()
}

/// A connection of the store's, and whether what runs on it now may only
/// read. Readers always: they are also `query_only`. The writer when it is
/// lent for reading (`Sqlite::reader`), so a write sent to a reader fails
/// whichever connection the read is given.
pub(crate) struct Held {
    conn: rusqlite::Connection,
    read_only: bool,
    /// The writer's: the batches, the open one, whether a transaction of
    /// the store's is open in it (and how), and whether a write outside
    /// any request is in it (then it commits when the writer is given back).
    batching: Option<Arc<Batches>>,
    batch: Option<u64>,
    tx: InBatch,
    untracked: bool,
}

/// How a transaction of the store's sits in the writer's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InBatch {
    /// No transaction of the store's is open.
    None,
    /// It began the batch: the batch holds its writes only, until it ends.
    Head,
    /// It joined an open batch as a savepoint.
    Savepoint,
}

impl Held {
    /// Open a batch if none is (the writer's first write since the last
    /// COMMIT), and note that the caller's write is in it.
    fn join_batch(&mut self) -> Result<(), DbError> {
        let Some(b) = &self.batching else {
            return Ok(());
        };
        let batch = match self.batch {
            Some(n) => n,
            None => {
                control(&self.conn, "BEGIN IMMEDIATE").map_err(sqlite_error)?;
                let n = b.begun.fetch_add(1, SeqCst) + 1;
                self.batch = Some(n);
                n
            }
        };
        if !track(batch) {
            self.untracked = true;
        }
        Ok(())
    }

    /// Commit the open batch, if any.
    fn commit_batch(&mut self) {
        let (Some(b), Some(batch)) = (&self.batching, self.batch.take()) else {
            return;
        };
        self.untracked = false;
        match control(&self.conn, "COMMIT") {
            Ok(()) => {
                b.committed.fetch_max(batch, SeqCst);
            }
            Err(e) => {
                tracing::error!("committing a batch of writes: {e}");
                if !self.conn.is_autocommit() {
                    if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                        tracing::warn!("rolling back a batch of writes: {e}");
                    }
                }
                b.fail(batch);
            }
        }
    }

    /// Roll back a transaction that began the batch, and with it the batch
    /// (nothing else is in it: the writer was this transaction's from its
    /// BEGIN). Nothing of the batch is left to wait for, so it counts as
    /// ended: a request that tracked it is not kept waiting or failed.
    fn roll_back_head(&mut self) -> rusqlite::Result<()> {
        self.tx = InBatch::None;
        let r = self.conn.execute_batch("ROLLBACK");
        if let (Some(b), Some(batch)) = (&self.batching, self.batch.take()) {
            self.untracked = false;
            if r.is_ok() {
                b.committed.fetch_max(batch, SeqCst);
            } else {
                b.fail(batch);
            }
        }
        r
    }

    /// After an error: SQLite ends the whole transaction on some (a full
    /// disk, I/O): the batch is then lost, and so are its writes.
    fn check_batch(&mut self) {
        if let (Some(b), Some(batch)) = (&self.batching, self.batch) {
            if self.conn.is_autocommit() {
                self.batch = None;
                self.tx = InBatch::None;
                self.untracked = false;
                b.fail(batch);
            }
        }
    }
}

/// A connection lent for one statement or transaction. The writer lent
/// for reading (`lent_for_reading`) may write again once it is given back.
pub(crate) struct Lent<'a> {
    conn: MappedMutexGuard<'a, Held>,
    restore: bool,
}

impl<'a> Lent<'a> {
    fn new(conn: MappedMutexGuard<'a, Held>) -> Lent<'a> {
        Lent {
            conn,
            restore: false,
        }
    }

    fn lent_for_reading(mut self) -> Lent<'a> {
        if !self.conn.read_only {
            self.conn.read_only = true;
            self.restore = true;
        }
        self
    }
}

impl std::ops::Deref for Lent<'_> {
    type Target = Held;
    fn deref(&self) -> &Held {
        &self.conn
    }
}

impl std::ops::DerefMut for Lent<'_> {
    fn deref_mut(&mut self) -> &mut Held {
        &mut self.conn
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if self.restore {
            self.conn.read_only = false;
        }
        // Given back: the batch ends unless another task waits to add to
        // it (and no write outside a request, which commits now, is in it).
        let c = &mut *self.conn;
        if let (Some(b), Some(_)) = (&c.batching, c.batch) {
            if c.untracked || b.waiting.load(SeqCst) == 0 {
                c.commit_batch();
            }
        }
    }
}

fn held(m: &Mutex<Option<Held>>) -> Option<Lent<'_>> {
    let conn = MutexGuard::try_map(m.try_lock().ok()?, Option::as_mut).ok()?;
    Some(Lent::new(conn))
}

async fn lock_held(m: &Mutex<Option<Held>>) -> Result<Lent<'_>, DbError> {
    MutexGuard::try_map(m.lock().await, Option::as_mut)
        .map(Lent::new)
        .map_err(|_| DbError::other("the store is closed"))
}

/// Counts a task queued for the writer, until it has it (or gives up).
struct Queued<'a>(&'a Batches);

impl<'a> Queued<'a> {
    fn new(b: &'a Batches) -> Queued<'a> {
        b.waiting.fetch_add(1, SeqCst);
        Queued(b)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, SeqCst);
    }
}

/// One connection to the file, set up as the store uses it.
fn connect(
    path: &std::path::Path,
    sync: SqliteSynchronous,
    reader: bool,
) -> rusqlite::Result<Held> {
    let c = rusqlite::Connection::open(path)?;
    c.busy_timeout(BUSY_TIMEOUT)?;
    c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    let sync = match sync {
        SqliteSynchronous::Full => "FULL",
        SqliteSynchronous::Normal => "NORMAL",
    };
    c.execute_batch(&format!(
        "PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON;"
    ))?;
    if reader {
        // A write sent to a reader by mistake fails in tests instead of
        // waiting for the lock.
        c.execute_batch("PRAGMA query_only = ON;")?;
    }
    c.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(Held {
        conn: c,
        read_only: reader,
        batching: None,
        batch: None,
        tx: InBatch::None,
        untracked: false,
    })
}

/// A transaction-control statement, prepared once per connection (each
/// runs several times an issuance; `execute_batch` parses it every time).
fn control(c: &rusqlite::Connection, sql: &str) -> rusqlite::Result<()> {
    c.prepare_cached(sql)?.execute([]).map(drop)
}

fn sqlite_error(e: rusqlite::Error) -> DbError {
    use rusqlite::ffi::{SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_UNIQUE};
    let kind = match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == SQLITE_CONSTRAINT_PRIMARYKEY =>
        {
            ErrorKind::UniqueViolation
        }
        _ => ErrorKind::Other,
    };
    DbError::new(kind, e)
}

/// A parameter as SQLite takes it: no booleans (0, 1), no arrays.
struct Param<'a>(&'a Value<'a>);

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self.0 {
            Value::Null(_) => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Bool(b) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*b))),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
            Value::Ints(_) | Value::Texts(_) => {
                return Err(rusqlite::Error::ToSqlConversionFailure(
                    "an array parameter on SQLite (in_list spells lists out)".into(),
                ))
            }
        })
    }
}

fn cell(v: ValueRef<'_>) -> Result<Cell, DbError> {
    Ok(match v {
        ValueRef::Null => Cell::Null,
        ValueRef::Integer(i) => Cell::Int(i),
        ValueRef::Real(f) => Cell::Real(f),
        ValueRef::Text(t) => Cell::Text(
            String::from_utf8(t.to_vec()).map_err(|_| DbError::other("text is not UTF-8"))?,
        ),
        ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
    })
}

/// Run one statement inline. `$N` is SQLite's named parameter "$N",
/// numbered by SQLite in order of first appearance: each is bound by name
/// to `params[N - 1]`.
fn run(held: &mut Held, sql: &str, params: &[Value<'_>], fetch: Fetch) -> Result<Output, DbError> {
    let r = run_stmt(held, sql, params, fetch);
    if r.is_err() {
        held.check_batch();
    }
    r
}

fn run_stmt(
    held: &mut Held,
    sql: &str,
    params: &[Value<'_>],
    fetch: Fetch,
) -> Result<Output, DbError> {
    // The statement log, under sqlx's target (which PostgreSQL's statements
    // still log through), so one filter shows every statement on either
    // database (`CAIRN_LOG=sqlx::query=debug`; the bench counts them).
    tracing::debug!(target: "sqlx::query", { db.statement = sql }, "query");
    let writes = !held
        .conn
        .prepare_cached(sql)
        .map_err(sqlite_error)?
        .readonly();
    if writes {
        if held.read_only {
            return Err(DbError::other(format!(
                "{sql:?} writes, on a connection lent for reading"
            )));
        }
        held.join_batch()?;
    }
    let c = &held.conn;
    let mut stmt = c.prepare_cached(sql).map_err(sqlite_error)?;
    for i in 1..=stmt.parameter_count() {
        let v = stmt
            .parameter_name(i)
            .and_then(|n| n.strip_prefix('$')?.parse::<usize>().ok())
            .and_then(|n| params.get(n.checked_sub(1)?))
            .ok_or_else(|| DbError::other(format!("parameter {i} of {sql:?} is not bound")))?;
        stmt.raw_bind_parameter(i, Param(v)).map_err(sqlite_error)?;
    }
    let readonly = stmt.readonly();
    let mut names: Option<Arc<[Box<str>]>> = None;
    let mut out = Output::default();
    // A statement that writes is stepped to its end, its rows wanted or
    // not: its writes are complete only then.
    let mut rows = stmt.raw_query();
    while let Some(row) = rows.next().map_err(sqlite_error)? {
        let wanted = match fetch {
            Fetch::Affected => false,
            Fetch::First => out.rows.is_empty(),
            Fetch::All => true,
        };
        if !wanted {
            if readonly {
                break;
            }
            continue;
        }
        let names = match &names {
            Some(n) => n.clone(),
            None => {
                let stmt: &rusqlite::Statement<'_> = row.as_ref();
                let n: Arc<[Box<str>]> = (0..stmt.column_count())
                    .map(|i| stmt.column_name(i).map(Into::into))
                    .collect::<rusqlite::Result<_>>()
                    .map_err(sqlite_error)?;
                names.insert(n).clone()
            }
        };
        let cells = (0..names.len())
            .map(|i| cell(row.get_ref(i).map_err(sqlite_error)?))
            .collect::<Result<_, _>>()?;
        out.rows.push(Row::new(names, cells));
    }
    drop(rows);
    if !readonly {
        out.affected = c.changes();
    }
    Ok(out)
}

impl Connection for Held {
    fn run<'a>(
        &'a mut self,
        sql: &'a str,
        params: &'a [Value<'a>],
        fetch: Fetch,
    ) -> impl Future<Output = Result<Output, DbError>> + Send + 'a {
        ready(run(self, sql, params, fetch))
    }

    /// The write lock at once: the transaction's reads and its writes see
    /// one state, and no read lock has to be upgraded (which fails at once,
    /// busy timeout or not, when another process wrote in between).
    /// On the writer: the batch's own if none is open, else a savepoint in
    /// the open one.
    fn begin_raw(&mut self) -> impl Future<Output = Result<(), DbError>> + Send {
        ready(if self.read_only {
            Err(DbError::other(
                "a transaction on a connection lent for reading",
            ))
        } else if self.batching.is_some() {
            let head = self.batch.is_none();
            self.join_batch().and_then(|()| {
                if head {
                    self.tx = InBatch::Head;
                } else {
                    control(&self.conn, "SAVEPOINT tx").map_err(sqlite_error)?;
                    self.tx = InBatch::Savepoint;
                }
                Ok(())
            })
        } else {
            control(&self.conn, "BEGIN IMMEDIATE").map_err(sqlite_error)
        })
    }

    /// In a batch, the transaction's writes stay in it (committed with it).
    fn commit_raw(&mut self) -> impl Future<Output = Result<(), DbError>> + Send {
        let r = match std::mem::replace(&mut self.tx, InBatch::None) {
            InBatch::Savepoint => control(&self.conn, "RELEASE tx"),
            InBatch::Head => Ok(()),
            InBatch::None => control(&self.conn, "COMMIT"),
        };
        if r.is_err() {
            self.check_batch();
        }
        ready(r.map_err(sqlite_error))
    }

    fn rollback_raw(&mut self) -> impl Future<Output = Result<(), DbError>> + Send {
        let r = match std::mem::replace(&mut self.tx, InBatch::None) {
            InBatch::Savepoint => self.conn.execute_batch("ROLLBACK TO tx; RELEASE tx"),
            InBatch::Head => self.roll_back_head(),
            InBatch::None => self.conn.execute_batch("ROLLBACK"),
        };
        if r.is_err() {
            self.check_batch();
        }
        ready(r.map_err(sqlite_error))
    }

    fn abort(&mut self) {
        // Some errors end the transaction (and the batch) themselves.
        self.check_batch();
        let r = match std::mem::replace(&mut self.tx, InBatch::None) {
            InBatch::Savepoint => self
                .conn
                .execute_batch("ROLLBACK TO tx; RELEASE tx")
                .inspect_err(|_| self.check_batch()),
            InBatch::Head => self.roll_back_head(),
            InBatch::None if self.batching.is_none() && !self.conn.is_autocommit() => {
                self.conn.execute_batch("ROLLBACK")
            }
            InBatch::None => Ok(()),
        };
        if let Err(e) = r {
            tracing::warn!("rolling back a transaction: {e}");
        }
    }
}

#[async_trait]
impl Backend for Sqlite {
    type Conn = Held;
    type Guard<'a> = Lent<'a>;
    const BATCH_NONCES: bool = true;
    /// One writer at a time: nothing to skip.
    const SKIP_LOCKED: &'static str = "";

    /// The schema is brought up to date by sqlx's migrator (its
    /// `_sqlx_migrations` is what every database made so far records), on
    /// a pool of its own that is closed before the store's connections open.
    async fn open(
        url: &str,
        max_connections: u32,
        sync: SqliteSynchronous,
    ) -> anyhow::Result<Sqlite> {
        let opts = SqliteConnectOptions::from_str(url)?;
        let path = opts.get_filename().to_path_buf();
        if path.as_os_str().is_empty() || path.as_os_str() == ":memory:" {
            anyhow::bail!("database.url {url:?}: SQLite needs a file (WAL), not memory");
        }
        restrict_database_files(&path)?;
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await?;
        let migrated = sqlx::migrate!("migrations/sqlite").run(&pool).await;
        pool.close().await;
        migrated?;
        let batches = Arc::new(Batches::default());
        let mut writer = connect(&path, sync, false)?;
        writer.batching = Some(batches.clone());
        let readers = (0..max_connections.saturating_sub(1).max(1))
            .map(|_| Ok(Mutex::new(Some(connect(&path, sync, true)?))))
            .collect::<anyhow::Result<_>>()?;
        Ok(Sqlite {
            writer: Mutex::new(Some(writer)),
            readers,
            batches,
        })
    }

    async fn writer(&self) -> Result<Self::Guard<'_>, DbError> {
        if let Some(c) = held(&self.writer) {
            return Ok(c);
        }
        let _queued = Queued::new(&self.batches);
        lock_held(&self.writer).await
    }

    /// The writer if it is free, else the first free reader, else the
    /// first reader when it is free. A connection's page cache is dropped
    /// whenever another connection has written since it last read; the
    /// writer's never is, and the first readers' seldom are, since reads
    /// go to the writer whenever it is idle. (Readers taken in turn read
    /// nearly every page afresh from the file: 3-5% of an issuance's CPU.)
    async fn reader(&self) -> Result<Self::Guard<'_>, DbError> {
        // A request whose writes are not committed yet reads them where
        // they are, and then depends on the batch it read from.
        let mine = tracked_writes();
        if mine > 0 && self.batches.done(mine).is_none() {
            let c = self.writer().await?;
            if let Some(batch) = c.batch {
                track(batch);
            }
            return Ok(c.lent_for_reading());
        }
        if let Some(c) = held(&self.writer) {
            // Not while a batch is open: it holds others' uncommitted writes.
            if c.batch.is_none() {
                return Ok(c.lent_for_reading());
            }
        }
        for r in &self.readers {
            if let Some(c) = held(r) {
                return Ok(c);
            }
        }
        lock_held(&self.readers[0]).await
    }

    fn pool_stats(&self) -> (u32, usize) {
        let all = std::iter::once(&self.writer).chain(&self.readers);
        let idle = all.filter(|m| m.try_lock().is_ok()).count();
        (self.readers.len() as u32 + 1, idle)
    }

    /// Wait until `batch` is committed; commit it if it is still open.
    async fn durable(&self, batch: u64) -> Result<(), DbError> {
        if batch == 0 {
            return Ok(());
        }
        loop {
            if let Some(r) = self.batches.done(batch) {
                return r;
            }
            let mut c = self.writer().await?;
            match c.batch {
                Some(open) if open <= batch => c.commit_batch(),
                // Neither open nor known (a failure forgotten): not durable.
                _ => {
                    return self.batches.done(batch).unwrap_or_else(|| {
                        Err(DbError::other(
                            "the outcome of this request's writes is unknown",
                        ))
                    })
                }
            }
        }
    }

    async fn close(&self) {
        if let Some(c) = self.writer.lock().await.as_mut() {
            c.commit_batch();
        }
        // The writer last: the last connection to close checkpoints.
        for m in self.readers.iter().chain(std::iter::once(&self.writer)) {
            if let Some(c) = m.lock().await.take() {
                if let Err((_, e)) = c.conn.close() {
                    tracing::warn!("closing a database connection: {e}");
                }
            }
        }
    }

    fn in_list(col: &str, first: usize, n: usize) -> String {
        if n == 0 {
            return format!("{col} IN (NULL)");
        }
        let params: Vec<String> = (first..first + n).map(|i| format!("${i}")).collect();
        format!("{col} IN ({})", params.join(", "))
    }

    fn bind_ids<'q>(q: Query<'q>, ids: &'q [i64]) -> Query<'q> {
        ids.iter().fold(q, |q, id| q.bind(*id))
    }

    fn bind_strs<'q>(q: Query<'q>, items: &'q [&'q str]) -> Query<'q> {
        items.iter().fold(q, |q, s| q.bind(*s))
    }

    /// Comma-separated: ids and DNS identifiers hold no commas.
    fn array(select: &str) -> String {
        format!("(SELECT group_concat(v, ',') FROM ({select}))")
    }

    fn ids(r: &Row, col: &str) -> Result<Vec<i64>, StoreError> {
        Self::texts(r, col)?
            .iter()
            .map(|s| s.parse().map_err(|_| StoreError::corrupt("an id")))
            .collect()
    }

    fn texts(r: &Row, col: &str) -> Result<Vec<String>, StoreError> {
        Ok(r.try_get::<Option<String>>(col)?
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

    async fn lock_replaced<C: Connection>(_: &mut C, _: &str) -> Result<(), DbError> {
        // The order's INSERT, the transaction's first write, takes the
        // database's write lock.
        Ok(())
    }

    async fn lock_challenge_authz<C: Connection>(
        _: &mut C,
        _: ChallengeId,
    ) -> Result<bool, DbError> {
        // The transaction's first write takes the database's write lock.
        Ok(true)
    }

    async fn reserve_ids<C: Connection>(
        tx: &mut C,
        table: &str,
        n: usize,
    ) -> Result<Vec<i64>, DbError> {
        // The write lock is held: nobody inserts meanwhile. Past the
        // highest id ever given (AUTOINCREMENT's sqlite_sequence, which
        // inserting a higher id moves on), so a purged row's id stays unused.
        let last: i64 = query_scalar(&format!(
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
                .fold(query(&sql), |q, &(i, tat)| q.bind(keys[i]).bind(tat))
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
                query("UPDATE rate_limit_buckets SET tat = $1 WHERE key = $2")
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
        Ok(Self::bind_strs(query(&sql), &keys)
            .execute(&mut *s.writer().await?)
            .await?)
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn open(dir: &tempfile::TempDir) -> Sqlite {
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        Sqlite::open(&url, 3, SqliteSynchronous::Normal)
            .await
            .expect("open")
    }

    /// Reads go to the writer while it is idle (its page cache is the one
    /// that stays valid), then to the first readers; a write is refused on
    /// any connection lent for reading, and the writer writes again once
    /// it is given back.
    #[tokio::test]
    async fn reads_prefer_the_idle_writer_and_never_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(&dir).await;
        let write = "CREATE TABLE IF NOT EXISTS t (x INTEGER)";

        let mut r = s.reader().await.expect("reader");
        assert!(
            s.writer.try_lock().is_err(),
            "an idle writer serves the read"
        );
        assert!(r.read_only);
        let err = run(&mut r, write, &[], Fetch::Affected).expect_err("a write on a read");
        assert!(err.to_string().contains("lent for reading"), "{err}");
        // While the writer is lent, reads go to the readers in order.
        let mut r2 = s.reader().await.expect("reader");
        assert!(s.readers[0].try_lock().is_err(), "the first reader next");
        assert!(s.readers[1].try_lock().is_ok());
        let err = run(&mut r2, write, &[], Fetch::Affected).expect_err("a write on a reader");
        assert!(err.to_string().contains("lent for reading"), "{err}");
        drop((r, r2));

        let mut w = s.writer().await.expect("writer");
        assert!(!w.read_only, "given back, the writer writes again");
        run(&mut w, write, &[], Fetch::Affected).expect("a write on the writer");
        w.begin_raw().await.expect("a transaction on the writer");
        w.rollback_raw().await.expect("rollback");
        drop(w);
        let mut r = s.reader().await.expect("reader");
        r.begin_raw().await.expect_err("a transaction on a read");
        let rows = run(&mut r, "SELECT COUNT(*) AS n FROM t", &[], Fetch::All).expect("read");
        assert_eq!(rows.rows.len(), 1);
    }

    fn count(c: &mut Held) -> i64 {
        let out = run(c, "SELECT COUNT(*) AS n FROM t", &[], Fetch::All).expect("count");
        out.rows[0].try_get("n").expect("n")
    }

    async fn with_table(dir: &tempfile::TempDir) -> Sqlite {
        let s = open(dir).await;
        {
            let mut w = s.writer().await.expect("writer");
            run(&mut w, "CREATE TABLE t (x INTEGER)", &[], Fetch::Affected).expect("create");
        }
        s
    }

    /// A request's write stays in the open batch while another task waits
    /// for the writer: nobody else reads it, the request itself does (from
    /// the writer), and `durable` commits it. A write outside any request
    /// commits when its call gives the writer back.
    #[tokio::test]
    async fn a_request_write_waits_in_its_batch_until_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = with_table(&dir).await;
        assert!(matches!(
            s.batches.done(s.batches.begun.load(SeqCst)),
            Some(Ok(()))
        ));

        let ((), batch) = track_writes(async {
            let mut w = s.writer().await.expect("writer");
            run(&mut w, "INSERT INTO t VALUES (1)", &[], Fetch::Affected).expect("insert");
            // Another task queued for the writer: the batch stays open.
            let _queued = Queued::new(&s.batches);
            drop(w);
            // The request reads its own write, from the writer.
            let mut r = s.reader().await.expect("reader");
            assert!(!r.read_only || r.batch.is_some(), "the writer, batch open");
            assert_eq!(count(&mut r), 1);
        })
        .await;
        assert!(batch > 0);
        assert!(s.batches.done(batch).is_none(), "not committed yet");
        // Other connections do not see it.
        {
            let mut other = s.readers[0].try_lock().expect("idle");
            assert_eq!(count(other.as_mut().expect("open")), 0);
        }
        s.durable(batch).await.expect("durable");
        assert!(matches!(s.batches.done(batch), Some(Ok(()))));
        {
            let mut other = s.readers[0].try_lock().expect("idle");
            assert_eq!(count(other.as_mut().expect("open")), 1);
        }

        // Outside a request: committed when the writer is given back,
        // even with a task waiting.
        let mut w = s.writer().await.expect("writer");
        run(&mut w, "INSERT INTO t VALUES (2)", &[], Fetch::Affected).expect("insert");
        let queued = Queued::new(&s.batches);
        drop(w);
        drop(queued);
        assert!(s
            .writer
            .try_lock()
            .expect("idle")
            .as_ref()
            .expect("open")
            .batch
            .is_none());
        let mut r = s.readers[0].try_lock().expect("idle");
        assert_eq!(count(r.as_mut().expect("open")), 2);
    }

    /// A transaction rolled back inside a batch undoes its own writes
    /// only; the batch's other writes commit.
    #[tokio::test]
    async fn a_rolled_back_transaction_leaves_the_rest_of_its_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = with_table(&dir).await;
        let ((), batch) = track_writes(async {
            let _queued = Queued::new(&s.batches);
            let mut w = s.writer().await.expect("writer");
            run(&mut w, "INSERT INTO t VALUES (1)", &[], Fetch::Affected).expect("insert");
            w.begin_raw().await.expect("begin");
            run(&mut w, "INSERT INTO t VALUES (2)", &[], Fetch::Affected).expect("insert");
            w.rollback_raw().await.expect("rollback");
            w.begin_raw().await.expect("begin");
            run(&mut w, "INSERT INTO t VALUES (3)", &[], Fetch::Affected).expect("insert");
            w.commit_raw().await.expect("commit");
            // A transaction dropped half-way.
            w.begin_raw().await.expect("begin");
            run(&mut w, "INSERT INTO t VALUES (4)", &[], Fetch::Affected).expect("insert");
            w.abort();
        })
        .await;
        s.durable(batch).await.expect("durable");
        let mut r = s.reader().await.expect("reader");
        let out = run(&mut r, "SELECT x FROM t ORDER BY x", &[], Fetch::All).expect("read");
        let xs: Vec<i64> = out
            .rows
            .iter()
            .map(|r| r.try_get("x").expect("x"))
            .collect();
        assert_eq!(xs, [1, 3]);
    }

    /// A transaction that begins a batch is the batch's own, not a
    /// savepoint: rolled back (or dropped) it takes the batch with it,
    /// leaving nothing to wait for, and the next transaction begins a new
    /// batch; committed, its writes wait in the batch like any other.
    #[tokio::test]
    async fn a_transaction_that_begins_a_batch_ends_it_when_rolled_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = with_table(&dir).await;
        // What another connection sees: the committed rows.
        let read = || {
            let conn = rusqlite::Connection::open(dir.path().join("t.db")).expect("open");
            let mut st = conn.prepare("SELECT x FROM t ORDER BY x").expect("prepare");
            let xs: Vec<i64> = st
                .query_map([], |r| r.get(0))
                .expect("query")
                .map(|x| x.expect("row"))
                .collect();
            xs
        };
        let ((), batch) = track_writes(async {
            let mut w = s.writer().await.expect("writer");
            w.begin_raw().await.expect("begin");
            assert_eq!(w.tx, InBatch::Head);
            run(&mut w, "INSERT INTO t VALUES (1)", &[], Fetch::Affected).expect("insert");
            w.rollback_raw().await.expect("rollback");
            assert_eq!(w.batch, None, "the rollback ended the batch");
            assert!((*w).conn.is_autocommit());
        })
        .await;
        assert!(batch > 0);
        s.durable(batch).await.expect("nothing left to wait for");
        let ((), batch) = track_writes(async {
            // Another task waits for the writer: the batch outlives this one.
            let _queued = Queued::new(&s.batches);
            let mut w = s.writer().await.expect("writer");
            w.begin_raw().await.expect("begin");
            assert_eq!(w.tx, InBatch::Head);
            run(&mut w, "INSERT INTO t VALUES (2)", &[], Fetch::Affected).expect("insert");
            w.abort();
            assert_eq!(w.batch, None, "a dropped transaction ends its batch");
            w.begin_raw().await.expect("begin");
            run(&mut w, "INSERT INTO t VALUES (3)", &[], Fetch::Affected).expect("insert");
            w.commit_raw().await.expect("commit");
            // Committed into the batch, still open.
            assert!(w.batch.is_some());
            w.begin_raw().await.expect("begin");
            assert_eq!(
                w.tx,
                InBatch::Savepoint,
                "a batch already open: a savepoint"
            );
            run(&mut w, "INSERT INTO t VALUES (4)", &[], Fetch::Affected).expect("insert");
            w.commit_raw().await.expect("commit");
        })
        .await;
        assert_eq!(read(), Vec::<i64>::new(), "uncommitted until durable");
        s.durable(batch).await.expect("durable");
        assert_eq!(read(), [3, 4]);
    }
}
