//! The store, written once for both databases: [`SqlStore`] is generic over
//! a [`Backend`], and every statement whose text is the same on SQLite and
//! PostgreSQL is written here, once, with `$N` placeholders, run through
//! the store's own execution interface (`exec.rs`: `query(sql).bind(x)`,
//! rows read by column name). What truly differs is the `Backend`: its
//! connections (SQLite's held and run inline, PostgreSQL's pooled), the few
//! locks PostgreSQL needs where SQLite has its one writer, list parameters
//! and aggregates, and the rate-limit batch (`sqlite.rs`, `postgres.rs`).
//!
//! Concurrency on PostgreSQL, once for every statement here: they run at
//! READ COMMITTED (its default), where each statement sees the rows
//! committed before it started, and an UPDATE/DELETE that finds its target
//! row changed by a concurrent transaction waits for it, then re-evaluates
//! its WHERE against the row's new version (the target table only:
//! subqueries on other tables keep the statement's snapshot). So a
//! conditional UPDATE whose whole condition is on the target row is an
//! atomic compare-and-set, and `INSERT ... ON CONFLICT DO NOTHING` waits
//! for a concurrent insert of the same key and then does nothing. The
//! statements that also decide from rows of other tables say what keeps
//! them correct (`create_order`, `start_challenge`, `begin_finalize`).
//! SQLite runs one writer at a time, which rules those races out.

use super::exec::{query, query_scalar, Connection, DbError, ErrorKind, Query, Row, Value};
use super::*;
use crate::core::gcra::Decision;
use crate::core::lifecycle::sql as rule;
use crate::core::limits::BucketTxn;
use std::ops::DerefMut;
use std::sync::{Arc, LazyLock};
use tokio::sync::{mpsc, oneshot};

/// What differs between the databases. Implemented by `sqlite::Sqlite`
/// (`sqlite.rs`) and `postgres::Postgres` (`postgres.rs`), each holding its
/// connections.
#[async_trait]
pub(super) trait Backend: Sized + Send + Sync + 'static {
    /// The connection statements run on (`exec::Connection`).
    type Conn: Connection;
    /// A connection lent for one statement or transaction.
    type Guard<'a>: DerefMut<Target = Self::Conn> + Send
    where
        Self: 'a;
    /// Whether nonces are spent in batches by one writer (`spend_nonces`).
    const BATCH_NONCES: bool;
    /// Appended to a purge's SELECT of the rows to delete.
    const SKIP_LOCKED: &'static str;

    /// Connect, set the connections up, and bring the schema up to date.
    async fn open(url: &str, max_connections: u32, sync: SqliteSynchronous)
        -> anyhow::Result<Self>;
    /// A connection for statements that write (and transactions).
    async fn writer(&self) -> Result<Self::Guard<'_>, DbError>;
    /// A connection for statements that only read.
    async fn reader(&self) -> Result<Self::Guard<'_>, DbError>;
    /// (open connections, idle ones).
    fn pool_stats(&self) -> (u32, usize);
    /// Wait until the writes of batch `batch` are committed (SQLite's
    /// group commit; every other write is committed when its call returns).
    async fn durable(&self, _batch: u64) -> Result<(), DbError> {
        Ok(())
    }
    /// Close every connection, waiting for those in use.
    async fn close(&self);

    /// `col` is one of `n` parameters numbered from `$first`.
    fn in_list(col: &str, first: usize, n: usize) -> String;
    fn bind_ids<'q>(q: Query<'q>, ids: &'q [i64]) -> Query<'q>;
    fn bind_strs<'q>(q: Query<'q>, items: &'q [&'q str]) -> Query<'q>;

    /// The values (column `v`) of the rows of `select` as one column, which
    /// `ids` or `texts` decode (in no particular order).
    fn array(select: &str) -> String;
    fn ids(r: &Row, col: &str) -> Result<Vec<i64>, StoreError>;
    fn texts(r: &Row, col: &str) -> Result<Vec<String>, StoreError>;

    /// `Store::account_spending_nonce`: one round trip where there is a
    /// network.
    async fn account_spending_nonce(
        s: &SqlStore<Self>,
        id: AccountId,
        nonce: &[u8],
        expires: i64,
    ) -> Result<(Option<Account>, bool), StoreError>;

    /// In `create_order`'s transaction, before the order is inserted:
    /// serialise the orders replacing this certificate.
    async fn lock_replaced<C: Connection>(tx: &mut C, serial: &str) -> Result<(), DbError>;

    /// At the start of a transaction that changes a challenge's status:
    /// serialise them per authorization. False if there is surely no such
    /// challenge.
    async fn lock_challenge_authz<C: Connection>(
        tx: &mut C,
        id: ChallengeId,
    ) -> Result<bool, DbError>;

    /// `n` fresh ids for rows of `table` (its `id` column), inside a
    /// writing transaction, for rows inserted with their ids given.
    async fn reserve_ids<C: Connection>(
        tx: &mut C,
        table: &str,
        n: usize,
    ) -> Result<Vec<i64>, DbError>;

    /// The rate-limit batch and bucket maintenance: how each database
    /// makes a batch atomic (see `LimitStore`).
    async fn spend_buckets(
        s: &SqlStore<Self>,
        txns: &[BucketTxn],
        now: i64,
    ) -> Result<Vec<Decision>, StoreError>;
    async fn refund_buckets(
        s: &SqlStore<Self>,
        txns: &[BucketTxn],
        now: i64,
    ) -> Result<u64, StoreError>;
    async fn reset_buckets(s: &SqlStore<Self>, keys: &[String]) -> Result<u64, StoreError>;
}

/// A parameter of a statement built at run time: a value it owns.
type Param = Value<'static>;

/// Most parameters one multi-row statement binds. Both databases allow
/// more (SQLite 32,766, PostgreSQL 65,535), but binding a SQLite parameter
/// by name walks the statement's parameter list: a statement's binding
/// costs the square of its parameters (at 30,000, five sixths of
/// load-history's time went there).
const MAX_PARAMS: usize = 300;

pub(crate) struct SqlStore<DB: Backend> {
    db: Arc<DB>,
    /// SQLite: nonces to spend, taken by `spend_nonces` in batches.
    nonces: Option<mpsc::UnboundedSender<NonceSpend>>,
}

/// A nonce to record as used, until when, and who waits for the answer.
type NonceSpend = (Vec<u8>, i64, oneshot::Sender<Result<bool, StoreError>>);

/// Most nonces spent by one statement.
const NONCE_BATCH: usize = 128;

const ACCOUNT_COLS: &str = "id, thumbprint, jwk, contact, status, created_at, eab_kid";
const EAB_COLS: &str =
    "kid, hmac_key, names, created_at, expires, reusable, revoked_at, bound_count, first_account";
const CHALLENGE_COLS: &str = "id, authz_id, type, token, status, validated, error, records";
const CERT_COLS: &str =
    "serial, account_id, order_id, der, chain_pem, not_before, not_after, issued_at,
     revoked_at, revoked_reason, names, renew_early_at, spki_sha256";

/// How many superseded CRLs stay in the table.
const CRLS_KEPT: i64 = 10;

/// Retention: order `o` never issued and expired before `$1`, and holds no
/// rate-limit tokens (the reservation sweeper gives them back first). A
/// valid order is kept for good: its certificate's `order_id` refers to it.
const PURGEABLE_ORDER: &str = "o.expires < $1 AND o.status <> 'valid'
     AND NOT EXISTS (SELECT 1 FROM order_reservations r WHERE r.order_id = o.id)
     AND NOT EXISTS (SELECT 1 FROM certificates c WHERE c.order_id = o.id)";

/// Retention: authorization `a` expired before `$1` (nothing reuses it, and
/// no pending-authorization count sees it), and no order whose status is
/// derived from it links it: only a valid order (final; it issued) or one
/// expired before `$1` (its own expiry decides its status) may.
const PURGEABLE_AUTHZ: &str = "a.expires < $1 AND NOT EXISTS (
       SELECT 1 FROM order_authzs oa JOIN orders o ON o.id = oa.order_id
       WHERE oa.authz_id = a.id AND o.status <> 'valid' AND o.expires >= $1)";

/// Another live order (`lifecycle`: not invalid) that replaces certificate
/// `$1`, other than order `$2`, at `$3` (stale before `$4`).
static LIVE_REPLACEMENT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT EXISTS (SELECT 1 FROM orders o
         WHERE o.replaces = $1 AND o.id <> $2 AND NOT {})",
        rule::order_invalid("o", "$3", "$4")
    )
});

/// Order `$2` to processing if it is ready (`lifecycle`) at `$1`.
static BEGIN_FINALIZE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE orders SET status = 'processing', updated_at = $1
         WHERE id = $2 AND {}",
        rule::order_ready("orders", "$1")
    )
});

/// Each authorization joined to its challenges, one row per challenge
/// (the challenge's columns under their own names); a WHERE follows.
const AUTHZS_SELECT: &str =
    "SELECT a.id AS a_id, a.account_id, a.identifier_type, a.identifier, a.wildcard,
            a.profile, a.status AS a_status, a.expires,
            c.id, c.authz_id, c.type, c.token, c.status, c.validated, c.error, c.records
     FROM authzs a LEFT JOIN challenges c ON c.authz_id = a.id";

/// Orders holding a reservation that will never issue (`lifecycle`:
/// invalid) at `$1` (stale before `$2`), at most `$3`.
static DEAD_RESERVATIONS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT r.order_id FROM order_reservations r JOIN orders o ON o.id = r.order_id
         WHERE {} ORDER BY r.order_id LIMIT $3",
        rule::order_invalid("o", "$1", "$2")
    )
});

impl<DB> SqlStore<DB>
where
    DB: Backend,
{
    pub(super) async fn open(
        url: &str,
        max_connections: u32,
        sync: SqliteSynchronous,
    ) -> anyhow::Result<SqlStore<DB>> {
        let db = Arc::new(DB::open(url, max_connections, sync).await?);
        let nonces = DB::BATCH_NONCES.then(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(Self::spend_nonces(db.clone(), rx));
            tx
        });
        Ok(SqlStore { db, nonces })
    }

    /// Every authenticated request spends a nonce, an INSERT of its own:
    /// with one writer, the nonces of requests arriving together are spent
    /// by one statement instead, in one turn of the writer. A nonce given
    /// twice in a batch is fresh for the first asker only. Runs until the
    /// store is dropped.
    async fn spend_nonces(db: Arc<DB>, mut rx: mpsc::UnboundedReceiver<NonceSpend>) {
        let mut batch = Vec::with_capacity(NONCE_BATCH);
        while rx.recv_many(&mut batch, NONCE_BATCH).await > 0 {
            let result = match db.writer().await {
                Ok(mut conn) => Self::insert_nonces(&mut *conn, &batch).await,
                Err(e) => Err(e.into()),
            };
            match result {
                Ok(inserted) => {
                    let mut fresh: std::collections::HashSet<Vec<u8>> =
                        inserted.into_iter().collect();
                    for (nonce, _, reply) in batch.drain(..) {
                        let _ = reply.send(Ok(fresh.remove(&nonce)));
                    }
                }
                Err(e) => {
                    for (_, _, reply) in batch.drain(..) {
                        let _ = reply.send(Err(StoreError::Database(e.to_string())));
                    }
                }
            }
        }
    }

    /// Insert the batch's nonces; those inserted (not used before).
    async fn insert_nonces(
        conn: &mut DB::Conn,
        batch: &[NonceSpend],
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let values: Vec<String> = (0..batch.len())
            .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
            .collect();
        let sql = format!(
            "INSERT INTO used_nonces (nonce, expires) VALUES {} ON CONFLICT DO NOTHING RETURNING nonce",
            values.join(", ")
        );
        let q = batch
            .iter()
            .fold(query_scalar(&sql), |q, (nonce, expires, _)| {
                q.bind(nonce.as_slice()).bind(*expires)
            });
        Ok(q.fetch_all(conn).await?)
    }

    /// A connection for statements that write (and transactions).
    pub(super) async fn writer(&self) -> Result<DB::Guard<'_>, DbError> {
        self.db.writer().await
    }

    /// A connection for statements that only read.
    pub(super) async fn reader(&self) -> Result<DB::Guard<'_>, DbError> {
        self.db.reader().await
    }

    /// Authorizations from rows of [`AUTHZS_SELECT`], ordered by
    /// authorization: one row per challenge.
    fn authzs_from_rows(rows: &[Row]) -> Result<Vec<Authz>, StoreError> {
        let mut authzs: Vec<Authz> = Vec::new();
        for r in rows {
            let id = AuthzId(r.try_get("a_id")?);
            if authzs.last().is_none_or(|a| a.id != id) {
                authzs.push(Authz {
                    id,
                    account_id: AccountId(r.try_get("account_id")?),
                    identifier_type: parse_name(&r.try_get::<String>("identifier_type")?)?,
                    identifier: r.try_get("identifier")?,
                    wildcard: r.try_get("wildcard")?,
                    profile: r.try_get("profile")?,
                    status: parse_name(&r.try_get::<String>("a_status")?)?,
                    expires: r.try_get("expires")?,
                    challenges: Vec::new(),
                });
            }
            if r.try_get::<Option<i64>>("id")?.is_some() {
                let c = Self::challenge_from_row(r)?;
                if let Some(a) = authzs.last_mut() {
                    a.challenges.push(c);
                }
            }
        }
        Ok(authzs)
    }

    pub(super) fn account_from_row(r: &Row) -> Result<Account, StoreError> {
        Ok(Account {
            id: AccountId(r.try_get("id")?),
            thumbprint: r.try_get("thumbprint")?,
            jwk: r.try_get("jwk")?,
            contact: from_json(&r.try_get::<String>("contact")?)?,
            status: parse_name(&r.try_get::<String>("status")?)?,
            created_at: r.try_get("created_at")?,
            eab_kid: r.try_get("eab_kid")?,
        })
    }

    fn eab_key_from_row(r: &Row) -> Result<EabKey, StoreError> {
        Ok(EabKey {
            kid: r.try_get("kid")?,
            hmac_key: r.try_get("hmac_key")?,
            names: from_json(&r.try_get::<String>("names")?)?,
            created_at: r.try_get("created_at")?,
            expires: r.try_get("expires")?,
            reusable: r.try_get("reusable")?,
            revoked_at: r.try_get("revoked_at")?,
            bound_count: r.try_get("bound_count")?,
            first_account: r.try_get::<Option<i64>>("first_account")?.map(AccountId),
        })
    }

    fn challenge_from_row(r: &Row) -> Result<Challenge, StoreError> {
        Ok(Challenge {
            id: ChallengeId(r.try_get("id")?),
            authz_id: AuthzId(r.try_get("authz_id")?),
            kind: parse_name(&r.try_get::<String>("type")?)?,
            token: r.try_get("token")?,
            status: parse_name(&r.try_get::<String>("status")?)?,
            validated: r.try_get("validated")?,
            error: r
                .try_get::<Option<String>>("error")?
                .map(|s| from_json(&s))
                .transpose()?,
            records: r.try_get("records")?,
        })
    }

    fn cert_from_row(r: &Row) -> Result<Certificate, StoreError> {
        Ok(Certificate {
            serial: r.try_get("serial")?,
            account_id: AccountId(r.try_get("account_id")?),
            order_id: OrderId(r.try_get("order_id")?),
            der: r.try_get("der")?,
            chain_pem: r.try_get("chain_pem")?,
            not_before: r.try_get("not_before")?,
            not_after: r.try_get("not_after")?,
            issued_at: r.try_get("issued_at")?,
            revoked_at: r.try_get("revoked_at")?,
            revoked_reason: r.try_get("revoked_reason")?,
            names: from_json(&r.try_get::<String>("names")?)?,
            renew_early_at: r.try_get("renew_early_at")?,
            spki_sha256: r
                .try_get::<Option<Vec<u8>>>("spki_sha256")?
                .unwrap_or_default(),
        })
    }

    /// The query's filters as SQL conditions (each ` AND ...`) whose
    /// parameters are numbered from `$first`, and their values.
    fn cert_filters(q: &CertQuery, first: usize) -> (String, Vec<Param>) {
        let mut sql = String::new();
        let mut params = Vec::new();
        let mut add = |cond: &str, p: Param| {
            let n = first + params.len();
            sql.push_str(&cond.replace("$?", &format!("${n}")));
            params.push(p);
        };
        if let Some(serial) = &q.serial {
            add(" AND serial = $?", Param::from(serial.clone()));
        }
        if let Some(name) = &q.name {
            add(
                " AND serial IN (SELECT serial FROM certificate_names WHERE name = $?)",
                Param::from(name.to_ascii_lowercase()),
            );
        }
        if let Some(domain) = &q.domain {
            // Domain names hold no LIKE wildcards (policy allows only
            // [a-z0-9.-]), but escape them anyway.
            let d = domain.to_ascii_lowercase();
            add(
                " AND serial IN (SELECT serial FROM certificate_names WHERE name = $?",
                Param::from(d.clone()),
            );
            let escaped = d
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            add(
                " OR name LIKE $? ESCAPE '\\')",
                Param::from(format!("%.{escaped}")),
            );
        }
        if let Some(account) = q.account {
            add(" AND account_id = $?", Value::Int(account.0));
        }
        if let Some(before) = q.issued_before {
            add(" AND issued_at < $?", Value::Int(before));
        }
        (sql, params)
    }

    fn bind_params<'q>(q: Query<'q>, params: &'q [Param]) -> Query<'q> {
        params.iter().fold(q, |q, p| {
            let v: Value<'q> = p.clone();
            q.bind(v)
        })
    }

    /// Insert `rows` (one value per column of `cols` each) into `table` in
    /// as few statements as the parameter limit allows.
    async fn insert_rows(
        tx: &mut impl Connection,
        table: &str,
        cols: &[&str],
        rows: &[Vec<Param>],
    ) -> Result<(), StoreError> {
        let per_statement = (MAX_PARAMS / cols.len()).max(1);
        for chunk in rows.chunks(per_statement) {
            let values: Vec<String> = (0..chunk.len())
                .map(|r| {
                    let row: Vec<String> = (1..=cols.len())
                        .map(|c| format!("${}", r * cols.len() + c))
                        .collect();
                    format!("({})", row.join(", "))
                })
                .collect();
            let sql = format!(
                "INSERT INTO {table} ({}) VALUES {}",
                cols.join(", "),
                values.join(", ")
            );
            chunk
                .iter()
                .fold(query(&sql), |q, row| Self::bind_params(q, row))
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }

    /// Record what a certificate certifies, one row per name.
    async fn insert_names(
        tx: &mut impl Connection,
        serial: &str,
        names: &[String],
    ) -> Result<(), StoreError> {
        for name in names {
            query(
                "INSERT INTO certificate_names (name, serial) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(name.to_ascii_lowercase())
            .bind(serial)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }

    /// The buckets' TATs, in the order of `keys` (`None`: no row).
    pub(super) async fn read_tats(
        conn: &mut impl Connection,
        keys: &[&str],
    ) -> Result<Vec<Option<i64>>, StoreError> {
        let sql = format!(
            "SELECT key, tat FROM rate_limit_buckets WHERE {}",
            DB::in_list("key", 1, keys.len())
        );
        let rows = DB::bind_strs(query(&sql), keys).fetch_all(conn).await?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for r in rows {
            found.insert(r.try_get::<String>("key")?, r.try_get::<i64>("tat")?);
        }
        Ok(keys.iter().map(|k| found.get(*k).copied()).collect())
    }
}

#[async_trait]
impl<DB> Store for SqlStore<DB>
where
    DB: Backend,
{
    async fn ping(&self) -> Result<(), StoreError> {
        query("SELECT 1")
            .execute(&mut *self.reader().await?)
            .await?;
        Ok(())
    }

    fn pool_stats(&self) -> (u32, usize) {
        self.db.pool_stats()
    }

    async fn durable(&self, batch: u64) -> Result<(), StoreError> {
        Ok(self.db.durable(batch).await?)
    }

    async fn close(&self) {
        self.db.close().await
    }

    async fn redeem_nonce(&self, nonce: &[u8], expires: i64) -> Result<bool, StoreError> {
        if let Some(queue) = &self.nonces {
            let (tx, rx) = oneshot::channel();
            queue
                .send((nonce.to_vec(), expires, tx))
                .map_err(|_| StoreError::Database("database: the store is closed".into()))?;
            return rx.await.map_err(|_| {
                StoreError::Database("database: the nonce was not spent (store closed)".into())
            })?;
        }
        // Two instances inserting the same nonce: the second waits for the
        // first's commit, then conflicts and inserts nothing: one use only.
        let r = query(
            "INSERT INTO used_nonces (nonce, expires) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(nonce)
        .bind(expires)
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(r == 1)
    }

    async fn prune_nonces(&self, before: i64, limit: u32) -> Result<u64, StoreError> {
        let r = query(&format!(
            "DELETE FROM used_nonces WHERE nonce IN (
               SELECT nonce FROM used_nonces WHERE expires < $1 LIMIT $2{})",
            DB::SKIP_LOCKED
        ))
        .bind(before)
        .bind(i64::from(limit))
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(r)
    }

    async fn secret(&self, name: &str, fresh: &[u8]) -> Result<Vec<u8>, StoreError> {
        // The loser of a race waits in the INSERT for the winner's commit, so
        // the SELECT (a new statement, a new snapshot) sees the winner's value.
        query("INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(name)
            .bind(fresh)
            .execute(&mut *self.writer().await?)
            .await?;
        Ok(query_scalar("SELECT value FROM secrets WHERE name = $1")
            .bind(name)
            .fetch_one(&mut *self.writer().await?)
            .await?)
    }

    async fn create_account(
        &self,
        jwk: &str,
        thumbprint: &str,
        contact: &[String],
        eab_kid: Option<&str>,
        now: i64,
    ) -> Result<(Account, bool), StoreError> {
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        let id: Option<i64> = query_scalar(
            "INSERT INTO accounts (thumbprint, jwk, contact, status, created_at, eab_kid)
             VALUES ($1, $2, $3, 'valid', $4, $5) ON CONFLICT (thumbprint) DO NOTHING
             RETURNING id",
        )
        .bind(thumbprint)
        .bind(jwk)
        .bind(to_json(&contact)?)
        .bind(now)
        .bind(eab_kid)
        .fetch_optional(&mut *tx)
        .await?;
        if let (Some(id), Some(kid)) = (id, eab_kid) {
            // The key's use, conditional on the key row alone: two accounts
            // racing for a single-use key both reach this UPDATE, and the
            // second (on PostgreSQL, after waiting for the first's commit
            // and re-evaluating) finds bound_count = 1 and changes nothing.
            let r = query(
                "UPDATE eab_keys SET bound_count = bound_count + 1,
                     first_account = COALESCE(first_account, $2)
                 WHERE kid = $1 AND revoked_at IS NULL AND (expires IS NULL OR expires > $3)
                   AND (reusable OR bound_count = 0)",
            )
            .bind(kid)
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if r != 1 {
                return Err(StoreError::Conflict(Conflict::EabKeyUnusable(
                    kid.to_string(),
                )));
            }
        }
        tx.commit().await?;
        // Free the connection first: a pool of one would wait for itself.
        drop(conn);
        let acct = self
            .account_by_thumbprint(thumbprint)
            .await?
            .ok_or(StoreError::NotFound("account vanished after insert"))?;
        Ok((acct, id.is_some()))
    }

    async fn account(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
        query(&format!(
            "SELECT {ACCOUNT_COLS} FROM accounts WHERE id = $1"
        ))
        .bind(id.0)
        .fetch_optional(&mut *self.reader().await?)
        .await?
        .map(|r| Self::account_from_row(&r))
        .transpose()
    }

    async fn account_spending_nonce(
        &self,
        id: AccountId,
        nonce: &[u8],
        expires: i64,
    ) -> Result<(Option<Account>, bool), StoreError> {
        DB::account_spending_nonce(self, id, nonce, expires).await
    }

    async fn account_by_thumbprint(&self, thumbprint: &str) -> Result<Option<Account>, StoreError> {
        query(&format!(
            "SELECT {ACCOUNT_COLS} FROM accounts WHERE thumbprint = $1"
        ))
        .bind(thumbprint)
        .fetch_optional(&mut *self.reader().await?)
        .await?
        .map(|r| Self::account_from_row(&r))
        .transpose()
    }

    async fn update_account_contact(
        &self,
        id: AccountId,
        contact: &[String],
    ) -> Result<(), StoreError> {
        query("UPDATE accounts SET contact = $1 WHERE id = $2 AND status = 'valid'")
            .bind(to_json(&contact)?)
            .bind(id.0)
            .execute(&mut *self.writer().await?)
            .await?;
        Ok(())
    }

    async fn deactivate_account(&self, id: AccountId) -> Result<(), StoreError> {
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        query("UPDATE accounts SET status = 'deactivated' WHERE id = $1 AND status = 'valid'")
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        // RFC 8555 §7.3.6: the server SHOULD cancel pending operations.
        query(
            "UPDATE authzs SET status = 'deactivated' WHERE account_id = $1 AND status IN ('pending', 'valid')",
        )
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn change_account_key(
        &self,
        id: AccountId,
        old_thumbprint: &str,
        jwk: &str,
        thumbprint: &str,
    ) -> Result<KeyChange, StoreError> {
        // A concurrent key change of this account makes `thumbprint = $4`
        // false (0 rows; on PostgreSQL, re-evaluated on the new row); one of
        // another account to the same key makes the unique index fail (on
        // PostgreSQL, after waiting for it).
        let r = query(
            "UPDATE accounts SET jwk = $1, thumbprint = $2 WHERE id = $3 AND thumbprint = $4 AND status = 'valid'",
        )
        .bind(jwk)
        .bind(thumbprint)
        .bind(id.0)
        .bind(old_thumbprint)
        .execute(&mut *self.writer().await?)
        .await;
        match r {
            Ok(1) => Ok(KeyChange::Changed),
            Ok(_) => Err(StoreError::Conflict(Conflict::KeyChanged)),
            Err(e) if e.kind == ErrorKind::UniqueViolation => {
                let other = self
                    .account_by_thumbprint(thumbprint)
                    .await?
                    .ok_or(StoreError::NotFound("conflicting account vanished"))?;
                Ok(KeyChange::InUse(other.id))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn put_eab_key(&self, k: &EabKey) -> Result<(), StoreError> {
        query(
            "INSERT INTO eab_keys (kid, hmac_key, names, created_at, expires, reusable)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (kid) DO UPDATE SET hmac_key = excluded.hmac_key,
                 names = excluded.names, expires = excluded.expires,
                 reusable = excluded.reusable, revoked_at = NULL",
        )
        .bind(k.kid.as_str())
        .bind(k.hmac_key.as_slice())
        .bind(to_json(&k.names)?)
        .bind(k.created_at)
        .bind(k.expires)
        .bind(k.reusable)
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(())
    }

    async fn eab_key(&self, kid: &str) -> Result<Option<EabKey>, StoreError> {
        query(&format!("SELECT {EAB_COLS} FROM eab_keys WHERE kid = $1"))
            .bind(kid)
            .fetch_optional(&mut *self.reader().await?)
            .await?
            .map(|r| Self::eab_key_from_row(&r))
            .transpose()
    }

    async fn eab_keys(&self) -> Result<Vec<EabKey>, StoreError> {
        query(&format!(
            "SELECT {EAB_COLS} FROM eab_keys ORDER BY created_at, kid"
        ))
        .fetch_all(&mut *self.reader().await?)
        .await?
        .iter()
        .map(Self::eab_key_from_row)
        .collect()
    }

    async fn revoke_eab_key(&self, kid: &str, now: i64) -> Result<bool, StoreError> {
        let r = query("UPDATE eab_keys SET revoked_at = $1 WHERE kid = $2 AND revoked_at IS NULL")
            .bind(now)
            .bind(kid)
            .execute(&mut *self.writer().await?)
            .await?;
        Ok(r == 1)
    }

    async fn create_order(&self, o: NewOrder) -> Result<Order, StoreError> {
        // Orders replacing one certificate are serialised: on SQLite the
        // INSERT takes the write lock, on PostgreSQL `lock_replaced` the
        // certificate's row first; either way the replacement check below
        // sees every order committed before it.
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        if let Some(serial) = &o.replaces {
            DB::lock_replaced(&mut *tx, serial).await?;
        }
        let order_id: i64 = query_scalar(
            "INSERT INTO orders (account_id, status, expires, identifiers, created_at, updated_at, replaces, profile)
             VALUES ($1, 'pending', $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(o.account_id.0)
        .bind(o.expires)
        .bind(to_json(&o.identifiers)?)
        .bind(o.now)
        .bind(o.now)
        .bind(o.replaces.as_deref())
        .bind(o.profile.as_str())
        .fetch_one(&mut *tx)
        .await?;
        if let Some(serial) = &o.replaces {
            let taken: bool = query_scalar(LIVE_REPLACEMENT.as_str())
                .bind(serial.as_str())
                .bind(order_id)
                .bind(o.now)
                .bind(o.now - STALE_PROCESSING_SECS)
                .fetch_one(&mut *tx)
                .await?;
            if taken {
                return Err(StoreError::Conflict(Conflict::AlreadyReplaced(
                    serial.clone(),
                )));
            }
        }
        if let Some(tokens) = &o.reservation {
            query("INSERT INTO order_reservations (order_id, tokens) VALUES ($1, $2)")
                .bind(order_id)
                .bind(tokens.as_str())
                .execute(&mut *tx)
                .await?;
        }
        let mut authz_ids = Vec::with_capacity(o.authzs.len());
        for a in &o.authzs {
            let authz_id = match a {
                OrderAuthz::Reuse(id) => id.0,
                OrderAuthz::New(n) => {
                    let id: i64 = query_scalar(
                        "INSERT INTO authzs (account_id, identifier, wildcard, status, expires, created_at, identifier_type, profile)
                         VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7) RETURNING id",
                    )
                    .bind(o.account_id.0)
                    .bind(n.identifier.as_str())
                    .bind(n.wildcard)
                    .bind(n.expires)
                    .bind(o.now)
                    .bind(n.identifier_type.as_str())
                    .bind(n.profile.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
                    // One statement for the authorization's challenges.
                    if !n.challenges.is_empty() {
                        let values: Vec<String> = (0..n.challenges.len())
                            .map(|i| format!("($1, ${}, ${}, 'pending')", 2 * i + 2, 2 * i + 3))
                            .collect();
                        let sql = format!(
                            "INSERT INTO challenges (authz_id, type, token, status) VALUES {}",
                            values.join(", ")
                        );
                        n.challenges
                            .iter()
                            .fold(query(&sql).bind(id), |q, (kind, token)| {
                                q.bind(kind.as_str()).bind(token.as_str())
                            })
                            .execute(&mut *tx)
                            .await?;
                    }
                    id
                }
            };
            // A reused authorization may be deactivated concurrently: the
            // order still links it, and begin_finalize refuses it.
            query(
                "INSERT INTO order_authzs (order_id, authz_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(order_id)
            .bind(authz_id)
            .execute(&mut *tx)
            .await?;
            authz_ids.push(AuthzId(authz_id));
        }
        tx.commit().await?;
        Ok(Order {
            id: OrderId(order_id),
            account_id: o.account_id,
            status: OrderStatus::Pending,
            expires: o.expires,
            identifiers: o.identifiers,
            authz_ids,
            error: None,
            cert_serial: None,
            replaces: o.replaces,
            profile: o.profile,
            created_at: o.now,
            updated_at: o.now,
        })
    }

    async fn order(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        // One round trip: the order and its authorization ids together.
        let Some(r) = query(&format!(
            "SELECT id, account_id, status, expires, identifiers, error, cert_serial, replaces,
                    profile, created_at, updated_at, {} AS authz_ids
             FROM orders WHERE id = $1",
            DB::array("SELECT authz_id AS v FROM order_authzs WHERE order_id = orders.id")
        ))
        .bind(id.0)
        .fetch_optional(&mut *self.reader().await?)
        .await?
        else {
            return Ok(None);
        };
        Ok(Some(Order {
            id,
            account_id: AccountId(r.try_get("account_id")?),
            status: parse_name(&r.try_get::<String>("status")?)?,
            expires: r.try_get("expires")?,
            identifiers: from_json(&r.try_get::<String>("identifiers")?)?,
            authz_ids: {
                let mut ids = DB::ids(&r, "authz_ids")?;
                ids.sort_unstable();
                ids.into_iter().map(AuthzId).collect()
            },
            error: r
                .try_get::<Option<String>>("error")?
                .map(|s| from_json(&s))
                .transpose()?,
            cert_serial: r.try_get("cert_serial")?,
            replaces: r.try_get("replaces")?,
            profile: r.try_get("profile")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        }))
    }

    async fn account_orders(
        &self,
        account: AccountId,
        after: Option<OrderId>,
        limit: u32,
    ) -> Result<Vec<OrderId>, StoreError> {
        let ids: Vec<i64> = query_scalar(
            "SELECT id FROM orders WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(account.0)
        .bind(after.map(|a| a.0).unwrap_or(0))
        .bind(i64::from(limit))
        .fetch_all(&mut *self.reader().await?)
        .await?;
        Ok(ids.into_iter().map(OrderId).collect())
    }

    async fn reusable_authz(
        &self,
        account: AccountId,
        (kind, identifier, wildcard): (IdentifierType, &str, bool),
        profile: Option<&str>,
        min_expires: i64,
    ) -> Result<Option<AuthzId>, StoreError> {
        let id: Option<i64> = query_scalar(
            "SELECT id FROM authzs WHERE account_id = $1 AND identifier = $2 AND identifier_type = $3
             AND wildcard = $4 AND profile = COALESCE($5, profile) AND status = 'valid' AND expires > $6
             ORDER BY expires DESC LIMIT 1",
        )
        .bind(account.0)
        .bind(identifier)
        .bind(kind.as_str())
        .bind(wildcard)
        .bind(profile)
        .bind(min_expires)
        .fetch_optional(&mut *self.reader().await?)
        .await?;
        Ok(id.map(AuthzId))
    }

    async fn authz(&self, id: AuthzId) -> Result<Option<Authz>, StoreError> {
        Ok(self.authzs(&[id]).await?.into_iter().next())
    }

    async fn authz_of_challenge(&self, id: ChallengeId) -> Result<Option<Authz>, StoreError> {
        let sql = format!(
            "{AUTHZS_SELECT} WHERE a.id = (SELECT authz_id FROM challenges WHERE id = $1)
             ORDER BY a.id, c.id"
        );
        let rows = query(&sql)
            .bind(id.0)
            .fetch_all(&mut *self.reader().await?)
            .await?;
        Ok(Self::authzs_from_rows(&rows)?.into_iter().next())
    }

    async fn authzs(&self, ids: &[AuthzId]) -> Result<Vec<Authz>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
        let sql = format!(
            "{AUTHZS_SELECT} WHERE {} ORDER BY a.id, c.id",
            DB::in_list("a.id", 1, ids.len())
        );
        let rows = DB::bind_ids(query(&sql), &ids)
            .fetch_all(&mut *self.reader().await?)
            .await?;
        Self::authzs_from_rows(&rows)
    }

    async fn deactivate_authz(&self, id: AuthzId) -> Result<bool, StoreError> {
        let r = query(
            "UPDATE authzs SET status = 'deactivated' WHERE id = $1 AND status IN ('pending', 'valid')",
        )
        .bind(id.0)
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(r == 1)
    }

    async fn challenge(&self, id: ChallengeId) -> Result<Option<Challenge>, StoreError> {
        query(&format!(
            "SELECT {CHALLENGE_COLS} FROM challenges WHERE id = $1"
        ))
        .bind(id.0)
        .fetch_optional(&mut *self.reader().await?)
        .await?
        .map(|r| Self::challenge_from_row(&r))
        .transpose()
    }

    async fn start_challenge(&self, id: ChallengeId, now: i64) -> Result<bool, StoreError> {
        // On PostgreSQL the UPDATE alone would let two *different*
        // challenges of one authorization both start: each locks only its
        // own row, and each one's NOT EXISTS reads the other as still pending
        // (the subquery is not re-evaluated, and the other's change is not
        // committed). The authorization's lock rules that out: it is held to
        // commit by whoever starts a challenge of it, and the UPDATE, a later
        // statement, takes its snapshot only once the lock is ours, so it
        // sees every earlier start and every authorization change.
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        if !DB::lock_challenge_authz(&mut *tx, id).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        let r = query(
            "UPDATE challenges SET status = 'processing', started_at = $1
             WHERE id = $2 AND status = 'pending'
               AND EXISTS (SELECT 1 FROM authzs a WHERE a.id = challenges.authz_id
                           AND a.status = 'pending' AND a.expires > $1)
               AND NOT EXISTS (SELECT 1 FROM challenges o WHERE o.authz_id = challenges.authz_id
                               AND o.id != challenges.id AND o.status != 'pending')",
        )
        .bind(now)
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(r == 1)
    }

    async fn finish_challenge(
        &self,
        id: ChallengeId,
        result: Result<String, ErrorDoc>,
        now: i64,
        valid_authz_expires: i64,
    ) -> Result<bool, StoreError> {
        // Both UPDATEs are compare-and-sets on their own row, correct
        // without a lock; the authorization's lock keeps one lock order
        // with start_challenge (authorization, then challenge).
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        DB::lock_challenge_authz(&mut *tx, id).await?;
        let (status, error, records) = match &result {
            Ok(records) => ("valid", None, Some(records.as_str())),
            Err(p) => ("invalid", Some(to_json(p)?), None),
        };
        let authz_id: Option<i64> = query_scalar(
            "UPDATE challenges SET status = $1, validated = $2, error = $3, records = $4
             WHERE id = $5 AND status = 'processing' RETURNING authz_id",
        )
        .bind(status)
        .bind(now)
        .bind(error)
        .bind(records)
        .bind(id.0)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(authz_id) = authz_id {
            if result.is_ok() {
                query(
                    "UPDATE authzs SET status = 'valid', expires = $1 WHERE id = $2 AND status = 'pending'",
                )
                .bind(valid_authz_expires)
                .bind(authz_id)
                .execute(&mut *tx)
                .await?;
            } else {
                query("UPDATE authzs SET status = 'invalid' WHERE id = $1 AND status = 'pending'")
                    .bind(authz_id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(authz_id.is_some())
    }

    async fn claim_stale_challenges(
        &self,
        stale_before: i64,
        now: i64,
    ) -> Result<Vec<ChallengeId>, StoreError> {
        // One statement: a row re-checked under concurrent claims is taken
        // by one caller only, since the first moves started_at past the bound.
        let ids: Vec<i64> = query_scalar(
            "UPDATE challenges SET started_at = $1
             WHERE status = 'processing' AND started_at < $2 RETURNING id",
        )
        .bind(now)
        .bind(stale_before)
        .fetch_all(&mut *self.writer().await?)
        .await?;
        Ok(ids.into_iter().map(ChallengeId).collect())
    }

    async fn begin_finalize(&self, id: OrderId, now: i64) -> Result<bool, StoreError> {
        // One statement, no lock, and still correct when PostgreSQL
        // instances race:
        // - Two finalizes of the order: the second waits for the first's row
        //   lock, then re-evaluates `status = 'pending'` on the new version,
        //   finds 'processing' and updates nothing: exactly one wins.
        //   complete_order and fail_order change the row the same way.
        // - An authorization changing meanwhile: the NOT EXISTS is not
        //   re-evaluated, so it judges the authorizations as of this
        //   statement's snapshot. The only change that could matter is a
        //   valid authorization being deactivated (pending → valid cannot
        //   make us wrong: we just refuse, as if we had run first; expiry is
        //   `now`, not a write). That outcome equals running this statement
        //   just before the deactivation, a serial order: the deactivation
        //   reads nothing that we write, so there is no write skew to
        //   prevent. Locking the authorizations would buy nothing but waits.
        let r = query(BEGIN_FINALIZE.as_str())
            .bind(now)
            .bind(id.0)
            .execute(&mut *self.writer().await?)
            .await?;
        Ok(r == 1)
    }

    async fn complete_order(
        &self,
        id: OrderId,
        c: &Certificate,
        now: i64,
    ) -> Result<(), StoreError> {
        // A second completion of the order fails on certificates.order_id's
        // unique index (on PostgreSQL after waiting for the first to commit).
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        query(
            "INSERT INTO certificates (serial, account_id, order_id, der, chain_pem, not_before, not_after, issued_at, names, set_hash, spki_sha256)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(c.serial.as_str())
        .bind(c.account_id.0)
        .bind(c.order_id.0)
        .bind(c.der.as_slice())
        .bind(c.chain_pem.as_str())
        .bind(c.not_before)
        .bind(c.not_after)
        .bind(c.issued_at)
        .bind(to_json(&c.names)?)
        .bind(identifier_set_hash(&c.names))
        .bind(c.spki_sha256.as_slice())
        .execute(&mut *tx)
        .await?;
        Self::insert_names(&mut *tx, &c.serial, &c.names).await?;
        let r = query(
            "UPDATE orders SET status = 'valid', cert_serial = $1, updated_at = $2 WHERE id = $3 AND status = 'processing'",
        )
        .bind(c.serial.as_str())
        .bind(now)
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
        if r != 1 {
            tx.rollback().await?;
            return Err(StoreError::Conflict(Conflict::NotProcessing));
        }
        // The certificate uses the tokens the order reserved.
        query("DELETE FROM order_reservations WHERE order_id = $1")
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn fail_order(&self, id: OrderId, error: &ErrorDoc, now: i64) -> Result<(), StoreError> {
        query(
            "UPDATE orders SET status = 'invalid', error = $1, updated_at = $2
             WHERE id = $3 AND status IN ('pending', 'processing')",
        )
        .bind(to_json(error)?)
        .bind(now)
        .bind(id.0)
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(())
    }

    async fn take_reservation(&self, id: OrderId) -> Result<Option<String>, StoreError> {
        Ok(
            query_scalar("DELETE FROM order_reservations WHERE order_id = $1 RETURNING tokens")
                .bind(id.0)
                .fetch_optional(&mut *self.writer().await?)
                .await?,
        )
    }

    async fn reservations_of_authz(&self, authz: AuthzId) -> Result<Vec<OrderId>, StoreError> {
        let ids: Vec<i64> = query_scalar(
            "SELECT r.order_id FROM order_reservations r
             JOIN order_authzs oa ON oa.order_id = r.order_id
             JOIN orders o ON o.id = r.order_id
             WHERE oa.authz_id = $1 AND o.status = 'pending' ORDER BY r.order_id",
        )
        .bind(authz.0)
        .fetch_all(&mut *self.reader().await?)
        .await?;
        Ok(ids.into_iter().map(OrderId).collect())
    }

    async fn dead_reservations(
        &self,
        now: i64,
        stale_before: i64,
        limit: u32,
    ) -> Result<Vec<OrderId>, StoreError> {
        let ids: Vec<i64> = query_scalar(DEAD_RESERVATIONS.as_str())
            .bind(now)
            .bind(stale_before)
            .bind(i64::from(limit))
            .fetch_all(&mut *self.reader().await?)
            .await?;
        Ok(ids.into_iter().map(OrderId).collect())
    }

    async fn certificate(&self, serial: &str) -> Result<Option<Certificate>, StoreError> {
        let r = query(&format!(
            "SELECT {CERT_COLS} FROM certificates WHERE serial = $1"
        ))
        .bind(serial)
        .fetch_optional(&mut *self.reader().await?)
        .await?;
        r.as_ref().map(Self::cert_from_row).transpose()
    }

    async fn revoke_certificate(
        &self,
        serial: &str,
        reason: i64,
        now: i64,
        block_key: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        // A proven compromise also turns an earlier revocation's reason
        // into keyCompromise (its time kept), so the key gets blocked.
        let r = query(
            "UPDATE certificates
             SET revoked_at = COALESCE(revoked_at, $1), revoked_reason = $2
             WHERE serial = $3
               AND (revoked_at IS NULL
                    OR ($4 AND revoked_reason IS DISTINCT FROM $2))",
        )
        .bind(now)
        .bind(reason)
        .bind(serial)
        .bind(block_key.is_some())
        .execute(&mut *tx)
        .await?;
        if r != 1 {
            return Ok(false);
        }
        if let Some(hash) = block_key {
            query(
                "INSERT INTO blocked_keys (spki_sha256, blocked_at, serial) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
            )
            .bind(hash)
            .bind(now)
            .bind(serial)
            .execute(&mut *tx)
            .await?;
            query(
                "UPDATE certificates SET revoked_at = $1, revoked_reason = 1
                 WHERE spki_sha256 = $2 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(hash)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn key_blocked(&self, spki_sha256: &[u8]) -> Result<bool, StoreError> {
        Ok(
            query_scalar("SELECT EXISTS (SELECT 1 FROM blocked_keys WHERE spki_sha256 = $1)")
                .bind(spki_sha256)
                .fetch_one(&mut *self.reader().await?)
                .await?,
        )
    }

    async fn find_certificates(&self, q: &CertQuery) -> Result<Vec<Certificate>, StoreError> {
        let (filters, params) = Self::cert_filters(q, 2);
        let sql = format!(
            "SELECT {CERT_COLS} FROM certificates WHERE TRUE{filters}
             ORDER BY issued_at DESC, serial LIMIT $1"
        );
        let query = query(&sql).bind(i64::from(q.limit.max(1)));
        let rows = Self::bind_params(query, &params)
            .fetch_all(&mut *self.reader().await?)
            .await?;
        rows.iter().map(Self::cert_from_row).collect()
    }

    async fn mark_renew_early(&self, q: &CertQuery, now: i64) -> Result<u64, StoreError> {
        let (filters, params) = Self::cert_filters(q, 2);
        let sql = format!(
            "UPDATE certificates SET renew_early_at = $1
             WHERE renew_early_at IS NULL AND revoked_at IS NULL AND not_after > $1{filters}"
        );
        let query = query(&sql).bind(now);
        let r = Self::bind_params(query, &params)
            .execute(&mut *self.writer().await?)
            .await?;
        Ok(r)
    }

    async fn certificates_without_names(
        &self,
        limit: u32,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let rows = query("SELECT serial, der FROM certificates WHERE set_hash = '' LIMIT $1")
            .bind(i64::from(limit))
            .fetch_all(&mut *self.reader().await?)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("serial")?, r.try_get("der")?)))
            .collect()
    }

    async fn set_certificate_names(
        &self,
        serial: &str,
        names: &[String],
        spki_sha256: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        query(
            "UPDATE certificates SET names = $1, set_hash = $2, spki_sha256 = $3 WHERE serial = $4",
        )
        .bind(to_json(&names)?)
        .bind(identifier_set_hash(names))
        .bind(spki_sha256)
        .bind(serial)
        .execute(&mut *tx)
        .await?;
        Self::insert_names(&mut *tx, serial, names).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn revocation_counts(
        &self,
        not_after_after: i64,
    ) -> Result<RevocationCounts, StoreError> {
        let r = query(
            "SELECT COUNT(*) AS entries,
                    COALESCE(SUM(CASE WHEN revoked_reason = $2 THEN 1 ELSE 0 END), 0) AS key_compromises
             FROM certificates
             WHERE revoked_at IS NOT NULL AND not_after > $1",
        )
        .bind(not_after_after)
        .bind(KEY_COMPROMISE)
        .fetch_one(&mut *self.reader().await?)
        .await?;
        Ok(RevocationCounts {
            entries: r.try_get("entries")?,
            key_compromises: r.try_get("key_compromises")?,
        })
    }

    async fn revoked_certificates(
        &self,
        not_after_after: i64,
    ) -> Result<Vec<RevokedEntry>, StoreError> {
        // In pages, in the index's own order: a CRL lists every revoked,
        // unexpired certificate (10^4 on a store of 10^6 revoking 1%), and
        // all of them as rows at once, beside the entries made of them, was
        // the largest allocation the server ever made (BENCHMARKS.md,
        // "History"). Each page is its own statement; a revocation committed
        // between two is listed or not by where its certificate falls, and
        // the counts taken from these entries tell the CRL check which.
        const PAGE: i64 = 1000;
        let mut entries = Vec::new();
        // Where the next page starts: after this (not_after, serial), and
        // (the range the index seeks to) at or after this not_after.
        let mut after = (not_after_after, String::new());
        let mut from = not_after_after.saturating_add(1);
        loop {
            let rows = query(
                "SELECT not_after, serial, revoked_at, revoked_reason FROM certificates
                 WHERE revoked_at IS NOT NULL AND not_after >= $1
                   AND (not_after, serial) > ($2, $3)
                 ORDER BY not_after, serial
                 LIMIT $4",
            )
            .bind(from)
            .bind(after.0)
            .bind(after.1.as_str())
            .bind(PAGE)
            .fetch_all(&mut *self.reader().await?)
            .await?;
            for r in &rows {
                entries.push(RevokedEntry {
                    serial: r.try_get("serial")?,
                    revoked_at: r.try_get("revoked_at")?,
                    reason: r.try_get::<Option<i64>>("revoked_reason")?.unwrap_or(0),
                });
            }
            match rows.last() {
                Some(last) if rows.len() as i64 == PAGE => {
                    after = (last.try_get("not_after")?, last.try_get("serial")?);
                    from = after.0;
                }
                _ => break,
            }
        }
        // Sorted here: ORDER BY serial made SQLite read every certificate
        // in serial order rather than the revoked ones through their index.
        entries.sort_by(|a, b| a.serial.cmp(&b.serial));
        Ok(entries)
    }

    async fn purge_orders(&self, expired_before: i64, limit: u32) -> Result<Purged, StoreError> {
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        let ids: Vec<i64> = query_scalar(&format!(
            "SELECT o.id FROM orders o WHERE {PURGEABLE_ORDER} ORDER BY o.expires LIMIT $2{}",
            DB::SKIP_LOCKED
        ))
        .bind(expired_before)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        if ids.is_empty() {
            return Ok(Purged::default());
        }
        let links = format!(
            "DELETE FROM order_authzs WHERE {}",
            DB::in_list("order_id", 1, ids.len())
        );
        let links = DB::bind_ids(query(&links), &ids).execute(&mut *tx).await?;
        let orders = format!(
            "DELETE FROM orders WHERE {}",
            DB::in_list("id", 1, ids.len())
        );
        let orders = DB::bind_ids(query(&orders), &ids).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(Purged {
            orders,
            order_authzs: links,
            ..Purged::default()
        })
    }

    async fn purge_authzs(&self, expired_before: i64, limit: u32) -> Result<Purged, StoreError> {
        // On PostgreSQL the authorizations are locked first, as every
        // transaction that changes a challenge does (postgres.rs).
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        let ids: Vec<i64> = query_scalar(&format!(
            "SELECT a.id FROM authzs a WHERE {PURGEABLE_AUTHZ} ORDER BY a.expires LIMIT $2{}",
            DB::SKIP_LOCKED
        ))
        .bind(expired_before)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        if ids.is_empty() {
            return Ok(Purged::default());
        }
        let mut deleted = [0u64; 3];
        for (n, sql) in [
            "DELETE FROM challenges WHERE {authz_id}",
            "DELETE FROM order_authzs WHERE {authz_id}",
            "DELETE FROM authzs WHERE {id}",
        ]
        .into_iter()
        .enumerate()
        {
            let sql = sql
                .replace("{authz_id}", &DB::in_list("authz_id", 1, ids.len()))
                .replace("{id}", &DB::in_list("id", 1, ids.len()));
            let r = DB::bind_ids(query(&sql), &ids).execute(&mut *tx).await?;
            deleted[n] = r;
        }
        tx.commit().await?;
        Ok(Purged {
            challenges: deleted[0],
            order_authzs: deleted[1],
            authzs: deleted[2],
            ..Purged::default()
        })
    }

    async fn purgeable(
        &self,
        expired_before: i64,
        nonces_before: i64,
        buckets_before: i64,
    ) -> Result<Purged, StoreError> {
        let orders = format!("SELECT o.id FROM orders o WHERE {PURGEABLE_ORDER}");
        let authzs = format!("SELECT a.id FROM authzs a WHERE {PURGEABLE_AUTHZ}");
        let r = query(&format!(
            "SELECT
               (SELECT COUNT(*) FROM ({orders}) x) AS orders,
               (SELECT COUNT(*) FROM order_authzs
                 WHERE order_id IN ({orders}) OR authz_id IN ({authzs})) AS order_authzs,
               (SELECT COUNT(*) FROM ({authzs}) x) AS authzs,
               (SELECT COUNT(*) FROM challenges WHERE authz_id IN ({authzs})) AS challenges,
               (SELECT COUNT(*) FROM used_nonces WHERE expires < $2) AS used_nonces,
               (SELECT COUNT(*) FROM rate_limit_buckets WHERE tat < $3) AS rate_limit_buckets"
        ))
        .bind(expired_before)
        .bind(nonces_before)
        .bind(buckets_before)
        .fetch_one(&mut *self.reader().await?)
        .await?;
        let n = |col: &str| -> Result<u64, StoreError> {
            Ok(u64::try_from(r.try_get::<i64>(col)?).unwrap_or(0))
        };
        Ok(Purged {
            orders: n("orders")?,
            authzs: n("authzs")?,
            challenges: n("challenges")?,
            order_authzs: n("order_authzs")?,
            used_nonces: n("used_nonces")?,
            rate_limit_buckets: n("rate_limit_buckets")?,
        })
    }

    async fn insert_past_accounts(
        &self,
        accounts: &[PastAccount],
    ) -> Result<Vec<AccountId>, StoreError> {
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        let ids = DB::reserve_ids(&mut *tx, "accounts", accounts.len()).await?;
        let rows: Vec<Vec<Param>> = accounts
            .iter()
            .zip(&ids)
            .map(|(a, id)| {
                vec![
                    Value::Int(*id),
                    Param::from(a.thumbprint.clone()),
                    Param::from(a.jwk.clone()),
                    Param::from("[]"),
                    Param::from("valid"),
                    Value::Int(a.created_at),
                ]
            })
            .collect();
        let cols = ["id", "thumbprint", "jwk", "contact", "status", "created_at"];
        Self::insert_rows(&mut *tx, "accounts", &cols, &rows).await?;
        tx.commit().await?;
        Ok(ids.into_iter().map(AccountId).collect())
    }

    async fn insert_past_issuances(&self, batch: &[PastIssuance]) -> Result<(), StoreError> {
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        let order_ids = DB::reserve_ids(&mut *tx, "orders", batch.len()).await?;
        let n_authzs = batch.iter().map(|p| p.challenges.len()).sum();
        let mut authz_ids = DB::reserve_ids(&mut *tx, "authzs", n_authzs)
            .await?
            .into_iter();
        let (mut orders, mut authzs, mut links, mut challenges) = (vec![], vec![], vec![], vec![]);
        let (mut certs, mut names) = (vec![], vec![]);
        for (p, &order_id) in batch.iter().zip(&order_ids) {
            let c = &p.cert;
            let identifiers: Vec<Identifier> = c
                .names
                .iter()
                .map(|n| match n.parse::<std::net::IpAddr>() {
                    Ok(_) => Identifier::of(IdentifierType::Ip, n.as_str()),
                    Err(_) => Identifier::dns(n.as_str()),
                })
                .collect();
            orders.push(vec![
                Value::Int(order_id),
                Value::Int(c.account_id.0),
                Param::from("valid"),
                Value::Int(p.order_expires),
                Param::from(to_json(&identifiers)?),
                Param::from(c.serial.clone()),
                Value::Int(p.ordered_at),
                Value::Int(c.issued_at),
                Param::from(p.profile.clone()),
            ]);
            for ((i, offered), records) in identifiers.iter().zip(&p.challenges).zip(&p.records) {
                let authz_id = authz_ids
                    .next()
                    .ok_or(StoreError::NotFound("an authorization id"))?;
                let (value, wildcard) = match i.value.strip_prefix("*.") {
                    Some(base) => (base, true),
                    None => (i.value.as_str(), false),
                };
                authzs.push(vec![
                    Value::Int(authz_id),
                    Value::Int(c.account_id.0),
                    Param::from(value.to_string()),
                    Param::from(i.kind.clone()),
                    Value::Bool(wildcard),
                    Param::from("valid"),
                    Value::Int(p.authz_expires),
                    Value::Int(p.ordered_at),
                    Param::from(p.profile.clone()),
                ]);
                links.push(vec![Value::Int(order_id), Value::Int(authz_id)]);
                for (n, (kind, token)) in offered.iter().enumerate() {
                    let validated = n == 0;
                    challenges.push(vec![
                        Value::Int(authz_id),
                        Param::from(kind.as_str().to_string()),
                        Param::from(token.clone()),
                        Param::from(if validated { "valid" } else { "pending" }),
                        Param::from(validated.then_some(p.ordered_at)),
                        Param::from(validated.then(|| records.clone())),
                    ]);
                }
            }
            certs.push(vec![
                Param::from(c.serial.clone()),
                Value::Int(c.account_id.0),
                Value::Int(order_id),
                Param::from(c.der.clone()),
                Param::from(c.chain_pem.clone()),
                Value::Int(c.not_before),
                Value::Int(c.not_after),
                Value::Int(c.issued_at),
                Param::from(to_json(&c.names)?),
                Param::from(identifier_set_hash(&c.names)),
                Param::from(c.spki_sha256.clone()),
                Param::from(c.revoked_at),
                Param::from(c.revoked_reason),
            ]);
            for name in &c.names {
                names.push(vec![
                    Param::from(name.to_ascii_lowercase()),
                    Param::from(c.serial.clone()),
                ]);
            }
        }
        let tables: [(&str, &[&str], &[Vec<Param>]); 6] = [
            (
                "orders",
                &[
                    "id",
                    "account_id",
                    "status",
                    "expires",
                    "identifiers",
                    "cert_serial",
                    "created_at",
                    "updated_at",
                    "profile",
                ],
                &orders,
            ),
            (
                "authzs",
                &[
                    "id",
                    "account_id",
                    "identifier",
                    "identifier_type",
                    "wildcard",
                    "status",
                    "expires",
                    "created_at",
                    "profile",
                ],
                &authzs,
            ),
            ("order_authzs", &["order_id", "authz_id"], &links),
            (
                "challenges",
                &[
                    "authz_id",
                    "type",
                    "token",
                    "status",
                    "validated",
                    "records",
                ],
                &challenges,
            ),
            (
                "certificates",
                &[
                    "serial",
                    "account_id",
                    "order_id",
                    "der",
                    "chain_pem",
                    "not_before",
                    "not_after",
                    "issued_at",
                    "names",
                    "set_hash",
                    "spki_sha256",
                    "revoked_at",
                    "revoked_reason",
                ],
                &certs,
            ),
            ("certificate_names", &["name", "serial"], &names),
        ];
        for (table, cols, rows) in tables {
            Self::insert_rows(&mut *tx, table, cols, rows).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn latest_crl(&self) -> Result<Option<StoredCrl>, StoreError> {
        let r = query(
            "SELECT number, this_update, next_update, der, entries, key_compromises
             FROM crls ORDER BY number DESC LIMIT 1",
        )
        .fetch_optional(&mut *self.reader().await?)
        .await?;
        r.map(|r| {
            Ok(StoredCrl {
                number: r.try_get("number")?,
                this_update: r.try_get("this_update")?,
                next_update: r.try_get("next_update")?,
                der: r.try_get("der")?,
                counts: match (r.try_get("entries")?, r.try_get("key_compromises")?) {
                    (Some(entries), Some(key_compromises)) => Some(RevocationCounts {
                        entries,
                        key_compromises,
                    }),
                    _ => None,
                },
            })
        })
        .transpose()
    }

    async fn insert_crl(&self, crl: &StoredCrl) -> Result<bool, StoreError> {
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        let r = query(
            "INSERT INTO crls (number, this_update, next_update, der, entries, key_compromises)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT DO NOTHING",
        )
        .bind(crl.number)
        .bind(crl.this_update)
        .bind(crl.next_update)
        .bind(crl.der.as_slice())
        .bind(crl.counts.map(|c| c.entries))
        .bind(crl.counts.map(|c| c.key_compromises))
        .execute(&mut *tx)
        .await?;
        // Older CRLs are superseded; keep a few for inspection.
        query("DELETE FROM crls WHERE number < $1")
            .bind(crl.number - CRLS_KEPT)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r == 1)
    }
}
