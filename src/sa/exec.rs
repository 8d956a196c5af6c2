//! The store's own execution interface, the one thing `sql.rs` runs its
//! statements through: parameters as [`Value`]s, a query builder shaped as
//! the call sites read (`query(sql).bind(x)...execute(conn)`), rows decoded
//! by column name ([`Row::try_get`]), and transactions ([`Tx`]: begin,
//! commit, rolled back when dropped uncommitted).
//!
//! Two connections implement [`Connection`]: `rusqlite::Connection`
//! (`sqlite.rs`), which runs each statement inline, on the calling thread,
//! and sqlx's `PgConnection` (`postgres.rs`), over the network. Why not sqlx
//! for both: sqlx's SQLite driver runs every statement on a worker thread of
//! its own and hands the command and each row over channels, two or more
//! thread switches per statement; SQLite's own work for our statements (µs)
//! is smaller than those switches.

use super::StoreError;
use std::borrow::Cow;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

/// A statement's parameter, bound to its `$N`.
#[derive(Debug, Clone)]
pub(super) enum Value<'q> {
    /// NULL, of the type PostgreSQL is told (SQLite ignores it).
    Null(Kind),
    Int(i64),
    Bool(bool),
    Text(Cow<'q, str>),
    Blob(Cow<'q, [u8]>),
    /// An array (PostgreSQL only: `= ANY($1)`; SQLite spells lists out).
    Ints(Cow<'q, [i64]>),
    Texts(&'q [&'q str]),
}

/// The type of a NULL parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Int,
    Bool,
    Text,
    Blob,
}

/// A value type with a NULL of its own (see [`Value::Null`]).
pub(super) trait Typed {
    const KIND: Kind;
}

macro_rules! value_from {
    ($($t:ty => $kind:ident, |$v:ident| $e:expr;)*) => {$(
        impl<'q> From<$t> for Value<'q> {
            fn from($v: $t) -> Value<'q> {
                $e
            }
        }
        impl<'q> Typed for $t {
            const KIND: Kind = Kind::$kind;
        }
    )*};
}

value_from! {
    i64 => Int, |v| Value::Int(v);
    bool => Bool, |v| Value::Bool(v);
    &'q str => Text, |v| Value::Text(Cow::Borrowed(v));
    &'q String => Text, |v| Value::Text(Cow::Borrowed(v.as_str()));
    String => Text, |v| Value::Text(Cow::Owned(v));
    &'q [u8] => Blob, |v| Value::Blob(Cow::Borrowed(v));
    &'q Vec<u8> => Blob, |v| Value::Blob(Cow::Borrowed(v.as_slice()));
    Vec<u8> => Blob, |v| Value::Blob(Cow::Owned(v));
}

impl<'q, T: Into<Value<'q>> + Typed> From<Option<T>> for Value<'q> {
    fn from(v: Option<T>) -> Value<'q> {
        v.map_or(Value::Null(T::KIND), Into::into)
    }
}

impl<'q> From<&'q [i64]> for Value<'q> {
    fn from(v: &'q [i64]) -> Value<'q> {
        Value::Ints(Cow::Borrowed(v))
    }
}

impl<'q> From<&'q Vec<i64>> for Value<'q> {
    fn from(v: &'q Vec<i64>) -> Value<'q> {
        Value::Ints(Cow::Borrowed(v.as_slice()))
    }
}

impl<'q> From<&'q [&'q str]> for Value<'q> {
    fn from(v: &'q [&'q str]) -> Value<'q> {
        Value::Texts(v)
    }
}

impl<'q> From<&'q Vec<&'q str>> for Value<'q> {
    fn from(v: &'q Vec<&'q str>) -> Value<'q> {
        Value::Texts(v.as_slice())
    }
}

/// A column's value in a row read.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cell {
    Null,
    Int(i64),
    Bool(bool),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    Ints(Vec<i64>),
    Texts(Vec<String>),
}

/// One row, its cells by column.
#[derive(Debug, Clone)]
pub(super) struct Row {
    names: Arc<[Box<str>]>,
    cells: Vec<Cell>,
}

impl Row {
    pub(super) fn new(names: Arc<[Box<str>]>, cells: Vec<Cell>) -> Row {
        Row { names, cells }
    }

    /// The column's value as a `T` (by name, or by position).
    pub(super) fn try_get<T: FromCell>(&self, col: impl ColumnIndex) -> Result<T, DbError> {
        let i = col.index(&self.names)?;
        T::from_cell(&self.cells[i]).map_err(|e| DbError::other(format!("column {col}: {e}")))
    }
}

/// How a column is named: by name or by position.
pub(super) trait ColumnIndex: std::fmt::Display + Copy {
    fn index(self, names: &[Box<str>]) -> Result<usize, DbError>;
}

impl ColumnIndex for &str {
    fn index(self, names: &[Box<str>]) -> Result<usize, DbError> {
        names
            .iter()
            .position(|n| &**n == self)
            .ok_or_else(|| DbError::other(format!("no column {self}")))
    }
}

impl ColumnIndex for usize {
    fn index(self, names: &[Box<str>]) -> Result<usize, DbError> {
        if self < names.len() {
            Ok(self)
        } else {
            Err(DbError::other(format!("no column {self}")))
        }
    }
}

/// A Rust type a cell decodes to.
pub(super) trait FromCell: Sized {
    fn from_cell(c: &Cell) -> Result<Self, String>;
}

fn mismatch<T>(want: &str, c: &Cell) -> Result<T, String> {
    Err(format!("expected {want}, found {c:?}"))
}

impl FromCell for i64 {
    fn from_cell(c: &Cell) -> Result<i64, String> {
        match c {
            Cell::Int(i) => Ok(*i),
            c => mismatch("an integer", c),
        }
    }
}

/// SQLite has no boolean: 0 or 1.
impl FromCell for bool {
    fn from_cell(c: &Cell) -> Result<bool, String> {
        match c {
            Cell::Bool(b) => Ok(*b),
            Cell::Int(i) => Ok(*i != 0),
            c => mismatch("a boolean", c),
        }
    }
}

impl FromCell for String {
    fn from_cell(c: &Cell) -> Result<String, String> {
        match c {
            Cell::Text(s) => Ok(s.clone()),
            c => mismatch("text", c),
        }
    }
}

impl FromCell for Vec<u8> {
    fn from_cell(c: &Cell) -> Result<Vec<u8>, String> {
        match c {
            Cell::Blob(b) => Ok(b.clone()),
            c => mismatch("a blob", c),
        }
    }
}

impl FromCell for Vec<i64> {
    fn from_cell(c: &Cell) -> Result<Vec<i64>, String> {
        match c {
            Cell::Ints(v) => Ok(v.clone()),
            c => mismatch("an integer array", c),
        }
    }
}

impl FromCell for Vec<String> {
    fn from_cell(c: &Cell) -> Result<Vec<String>, String> {
        match c {
            Cell::Texts(v) => Ok(v.clone()),
            c => mismatch("a text array", c),
        }
    }
}

impl<T: FromCell> FromCell for Option<T> {
    fn from_cell(c: &Cell) -> Result<Option<T>, String> {
        match c {
            Cell::Null => Ok(None),
            c => T::from_cell(c).map(Some),
        }
    }
}

/// A database error, with what the store tells apart.
#[derive(Debug)]
pub(super) struct DbError {
    pub(super) kind: ErrorKind,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ErrorKind {
    /// A unique constraint refused the row.
    UniqueViolation,
    /// Deadlock or serialization failure (PostgreSQL): run it again.
    Retryable,
    Other,
}

impl DbError {
    pub(super) fn new(kind: ErrorKind, message: impl std::fmt::Display) -> DbError {
        DbError {
            kind,
            message: message.to_string(),
        }
    }

    pub(super) fn other(message: impl std::fmt::Display) -> DbError {
        DbError::new(ErrorKind::Other, message)
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<DbError> for StoreError {
    fn from(e: DbError) -> StoreError {
        StoreError::Database(format!("database: {e}"))
    }
}

/// What a statement's caller wants back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fetch {
    /// The number of rows it changed.
    Affected,
    /// Its first row, if any.
    First,
    /// Every row.
    All,
}

/// A statement's outcome: rows (as `Fetch` asked) and rows changed.
#[derive(Debug, Default)]
pub(super) struct Output {
    pub(super) rows: Vec<Row>,
    pub(super) affected: u64,
}

/// A database connection the store runs statements on.
pub(super) trait Connection: Send {
    /// Run one statement with its parameters (`$1` is `params[0]`).
    fn run<'a>(
        &'a mut self,
        sql: &'a str,
        params: &'a [Value<'a>],
        fetch: Fetch,
    ) -> impl Future<Output = Result<Output, DbError>> + Send + 'a;
    /// Begin a writing transaction (SQLite: `BEGIN IMMEDIATE`).
    fn begin_raw(&mut self) -> impl Future<Output = Result<(), DbError>> + Send;
    fn commit_raw(&mut self) -> impl Future<Output = Result<(), DbError>> + Send;
    fn rollback_raw(&mut self) -> impl Future<Output = Result<(), DbError>> + Send;
    /// End the open transaction, if any, without waiting (a [`Tx`]
    /// dropped uncommitted): at once, or before the connection's next use.
    fn abort(&mut self);

    /// A writing transaction on this connection.
    fn begin(&mut self) -> impl Future<Output = Result<Tx<'_, Self>, DbError>> + Send
    where
        Self: Sized,
    {
        async move {
            self.begin_raw().await?;
            Ok(Tx {
                conn: self,
                open: true,
            })
        }
    }
}

/// An open transaction: statements run on it (`&mut *tx`); rolled back if
/// dropped before `commit`.
pub(super) struct Tx<'c, C: Connection> {
    conn: &'c mut C,
    open: bool,
}

impl<C: Connection> Tx<'_, C> {
    pub(super) async fn commit(mut self) -> Result<(), DbError> {
        let r = self.conn.commit_raw().await;
        // A failed COMMIT may leave the transaction open: Drop ends it.
        self.open = r.is_err();
        r
    }

    pub(super) async fn rollback(mut self) -> Result<(), DbError> {
        let r = self.conn.rollback_raw().await;
        self.open = r.is_err();
        r
    }
}

impl<C: Connection> Drop for Tx<'_, C> {
    fn drop(&mut self) {
        if self.open {
            self.conn.abort();
        }
    }
}

impl<C: Connection> std::ops::Deref for Tx<'_, C> {
    type Target = C;
    fn deref(&self) -> &C {
        self.conn
    }
}

impl<C: Connection> std::ops::DerefMut for Tx<'_, C> {
    fn deref_mut(&mut self) -> &mut C {
        self.conn
    }
}

/// A statement and its parameters, `$1` first.
pub(super) struct Query<'q> {
    sql: &'q str,
    params: Vec<Value<'q>>,
}

pub(super) fn query(sql: &str) -> Query<'_> {
    Query {
        sql,
        params: Vec::new(),
    }
}

impl<'q> Query<'q> {
    /// The next parameter.
    pub(super) fn bind(mut self, v: impl Into<Value<'q>>) -> Query<'q> {
        self.params.push(v.into());
        self
    }

    async fn run(self, c: &mut impl Connection, fetch: Fetch) -> Result<Output, DbError> {
        c.run(self.sql, &self.params, fetch).await
    }

    /// Run it; the number of rows it changed.
    pub(super) async fn execute(self, c: &mut impl Connection) -> Result<u64, DbError> {
        Ok(self.run(c, Fetch::Affected).await?.affected)
    }

    pub(super) async fn fetch_all(self, c: &mut impl Connection) -> Result<Vec<Row>, DbError> {
        Ok(self.run(c, Fetch::All).await?.rows)
    }

    pub(super) async fn fetch_optional(
        self,
        c: &mut impl Connection,
    ) -> Result<Option<Row>, DbError> {
        Ok(self.run(c, Fetch::First).await?.rows.into_iter().next())
    }

    pub(super) async fn fetch_one(self, c: &mut impl Connection) -> Result<Row, DbError> {
        self.fetch_optional(c)
            .await?
            .ok_or_else(|| DbError::other("no rows returned by a query that expected a row"))
    }
}

/// A statement whose rows are one value each (its first column).
pub(super) struct Scalar<'q, T> {
    q: Query<'q>,
    t: PhantomData<fn() -> T>,
}

pub(super) fn query_scalar<T: FromCell>(sql: &str) -> Scalar<'_, T> {
    Scalar {
        q: query(sql),
        t: PhantomData,
    }
}

impl<'q, T: FromCell> Scalar<'q, T> {
    pub(super) fn bind(mut self, v: impl Into<Value<'q>>) -> Scalar<'q, T> {
        self.q = self.q.bind(v);
        self
    }

    pub(super) async fn fetch_all(self, c: &mut impl Connection) -> Result<Vec<T>, DbError> {
        let rows = self.q.fetch_all(c).await?;
        rows.iter().map(|r| r.try_get(0)).collect()
    }

    pub(super) async fn fetch_optional(
        self,
        c: &mut impl Connection,
    ) -> Result<Option<T>, DbError> {
        self.q
            .fetch_optional(c)
            .await?
            .map(|r| r.try_get(0))
            .transpose()
    }

    pub(super) async fn fetch_one(self, c: &mut impl Connection) -> Result<T, DbError> {
        self.q.fetch_one(c).await?.try_get(0)
    }
}
