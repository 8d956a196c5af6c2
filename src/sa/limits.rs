//! Rate-limit storage: GCRA buckets (one row per key holding its TAT) and
//! paused (account, identifier) pairs, on both backends.
//!
//! The store makes no policy decisions beyond the GCRA arithmetic it must
//! run under its lock: [`LimitStore::spend_buckets`] reads every bucket of a
//! batch, decides with `ratelimit::gcra::spend`, and writes only if every
//! deciding transaction is allowed, atomically, in one round trip:
//!
//! - SQLite: one transaction opened with `BEGIN IMMEDIATE`, which takes the
//!   database's write lock at its first statement, so batches from several
//!   connections (or processes sharing the file) run one after another and
//!   never decide on a TAT another batch is about to change.
//! - PostgreSQL: one call of the `rate_limit_spend` function (migration
//!   0004), which creates missing rows, locks all rows of the batch in key
//!   order and decides and writes under those locks.

use super::{AccountId, PgStore, SqliteStore};
use crate::problem::Problem;
use crate::ratelimit::gcra::{self, Decision};
use crate::ratelimit::BucketTxn;
use async_trait::async_trait;
use sqlx::Row;

/// Storage for the issuance-window limiter.
#[async_trait]
pub trait LimitStore: Send + Sync {
    /// Apply a batch atomically: every transaction is decided on the
    /// buckets' current TATs (`now` in Unix nanoseconds); if every
    /// transaction that checks is allowed, every allowed transaction that
    /// spends is written, otherwise nothing is. Returns one decision per
    /// transaction, in order. Keys must be distinct.
    async fn spend_buckets(&self, txns: &[BucketTxn], now: i64) -> Result<Vec<Decision>, Problem>;

    /// Give back the cost of each spending transaction (`gcra::refund`:
    /// never above a full bucket; missing or full buckets are left alone).
    /// Returns how many buckets changed.
    async fn refund_buckets(&self, txns: &[BucketTxn], now: i64) -> Result<u64, Problem>;

    /// Delete these buckets (they read as full). Returns how many existed.
    async fn reset_buckets(&self, keys: &[String]) -> Result<u64, Problem>;

    /// Delete buckets that are full again (TAT before `now`, nanoseconds);
    /// they read the same as missing ones. Returns how many.
    async fn prune_buckets(&self, now: i64) -> Result<u64, Problem>;

    /// Pause the account for the identifier (`now` in Unix seconds). True if
    /// it was not paused already.
    async fn pause(&self, account: AccountId, identifier: &str, now: i64) -> Result<bool, Problem>;

    /// Lift the pause for one identifier, or all of the account's. Returns
    /// the identifiers that were paused, sorted.
    async fn unpause(
        &self,
        account: AccountId,
        identifier: Option<&str>,
        now: i64,
    ) -> Result<Vec<String>, Problem>;

    /// What newOrder's limits need beyond the buckets, in one statement:
    /// the account's pending, unexpired authorizations (`now`: seconds),
    /// whether the identifier set `set_hash` was certified at or after
    /// `since` (a renewal), and which of `identifiers` the account is
    /// paused for.
    async fn order_limit_facts(
        &self,
        account: AccountId,
        identifiers: &[String],
        set_hash: &str,
        since: i64,
        now: i64,
    ) -> Result<OrderLimitFacts, Problem>;

    /// Every identifier the account is paused for, sorted.
    async fn paused_identifiers(&self, account: AccountId) -> Result<Vec<String>, Problem>;

    /// When the account's `nth` earliest-expiring pending authorization
    /// expires (Unix seconds), if it holds that many unexpired at `now`:
    /// the moment `nth` pending authorizations' room comes back by itself.
    async fn pending_authz_expiry(
        &self,
        account: AccountId,
        nth: u64,
        now: i64,
    ) -> Result<Option<i64>, Problem>;
}

/// See [`LimitStore::order_limit_facts`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderLimitFacts {
    pub pending_authzs: u64,
    pub renewal: bool,
    /// Sorted.
    pub paused: Vec<String>,
}

fn require_distinct(txns: &[BucketTxn]) -> Result<(), Problem> {
    let mut keys: Vec<&str> = txns.iter().map(|t| t.key.as_str()).collect();
    keys.sort_unstable();
    if keys.windows(2).any(|w| w[0] == w[1]) {
        return Err(Problem::internal("rate-limit batch with a duplicate key"));
    }
    Ok(())
}

/// Decide a batch on the TATs read (`None`: no row). Returns the decisions
/// and the TATs to write (index, new TAT), empty when the batch is denied.
fn decide(
    txns: &[BucketTxn],
    tats: &[Option<i64>],
    now: i64,
) -> (Vec<Decision>, Vec<(usize, i64)>) {
    let decisions: Vec<Decision> = txns
        .iter()
        .zip(tats)
        .map(|(t, tat)| gcra::spend(&t.params, *tat, t.cost, now))
        .collect();
    let allowed = txns
        .iter()
        .zip(&decisions)
        .all(|(t, d)| !t.checks() || d.allowed);
    let writes = if allowed {
        txns.iter()
            .zip(&decisions)
            .enumerate()
            .filter(|(_, (t, d))| t.spends() && t.cost > 0 && d.allowed)
            .map(|(i, (_, d))| (i, d.new_tat_ns))
            .collect()
    } else {
        Vec::new()
    };
    (decisions, writes)
}

/// The transactions a refund touches: those that spend something.
fn refundable(txns: &[BucketTxn]) -> impl Iterator<Item = &BucketTxn> {
    txns.iter().filter(|t| t.spends() && t.cost > 0)
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

// ---------------------------------------------------------------- SQLite ---

impl SqliteStore {
    async fn read_tats<'e, E>(exec: E, keys: &[&str]) -> Result<Vec<Option<i64>>, Problem>
    where
        E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
    {
        let sql = format!(
            "SELECT key, tat FROM rate_limit_buckets WHERE key IN ({})",
            placeholders(keys.len())
        );
        let mut q = sqlx::query(&sql);
        for k in keys {
            q = q.bind(*k);
        }
        let rows = q.fetch_all(exec).await?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for r in rows {
            found.insert(r.try_get::<String, _>("key")?, r.try_get::<i64, _>("tat")?);
        }
        Ok(keys.iter().map(|k| found.get(*k).copied()).collect())
    }
}

#[async_trait]
impl LimitStore for SqliteStore {
    async fn paused_identifiers(&self, account: AccountId) -> Result<Vec<String>, Problem> {
        Ok(sqlx::query_scalar(
            "SELECT identifier FROM rate_limit_paused
             WHERE account_id = ?1 AND unpaused_at IS NULL ORDER BY identifier",
        )
        .bind(account.0)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn spend_buckets(&self, txns: &[BucketTxn], now: i64) -> Result<Vec<Decision>, Problem> {
        require_distinct(txns)?;
        if txns.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&str> = txns.iter().map(|t| t.key.as_str()).collect();
        if !txns.iter().any(BucketTxn::spends) {
            // Check-only: a read, no lock needed.
            let tats = Self::read_tats(&self.pool, &keys).await?;
            return Ok(decide(txns, &tats, now).0);
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let tats = Self::read_tats(&mut *tx, &keys).await?;
        let (decisions, writes) = decide(txns, &tats, now);
        for (i, tat) in writes {
            sqlx::query(
                "INSERT INTO rate_limit_buckets (key, tat) VALUES (?, ?) \
                 ON CONFLICT (key) DO UPDATE SET tat = excluded.tat",
            )
            .bind(keys[i])
            .bind(tat)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(decisions)
    }

    async fn refund_buckets(&self, txns: &[BucketTxn], now: i64) -> Result<u64, Problem> {
        let txns: Vec<&BucketTxn> = refundable(txns).collect();
        if txns.is_empty() {
            return Ok(0);
        }
        let keys: Vec<&str> = txns.iter().map(|t| t.key.as_str()).collect();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let tats = Self::read_tats(&mut *tx, &keys).await?;
        let mut changed = 0;
        for (t, tat) in txns.iter().zip(tats) {
            let d = gcra::refund(&t.params, tat, t.cost, now);
            if d.allowed {
                sqlx::query("UPDATE rate_limit_buckets SET tat = ? WHERE key = ?")
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

    async fn reset_buckets(&self, keys: &[String]) -> Result<u64, Problem> {
        if keys.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "DELETE FROM rate_limit_buckets WHERE key IN ({})",
            placeholders(keys.len())
        );
        let mut q = sqlx::query(&sql);
        for k in keys {
            q = q.bind(k);
        }
        Ok(q.execute(&self.pool).await?.rows_affected())
    }

    async fn prune_buckets(&self, now: i64) -> Result<u64, Problem> {
        let r = sqlx::query("DELETE FROM rate_limit_buckets WHERE tat < ?")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    async fn pause(&self, account: AccountId, identifier: &str, now: i64) -> Result<bool, Problem> {
        let r = sqlx::query(
            "INSERT INTO rate_limit_paused (account_id, identifier, paused_at) VALUES (?, ?, ?) \
             ON CONFLICT (account_id, identifier) DO UPDATE \
             SET paused_at = excluded.paused_at, unpaused_at = NULL \
             WHERE rate_limit_paused.unpaused_at IS NOT NULL",
        )
        .bind(account.0)
        .bind(identifier)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn unpause(
        &self,
        account: AccountId,
        identifier: Option<&str>,
        now: i64,
    ) -> Result<Vec<String>, Problem> {
        let mut v: Vec<String> = sqlx::query_scalar(
            "UPDATE rate_limit_paused SET unpaused_at = ? \
             WHERE account_id = ? AND unpaused_at IS NULL AND (? IS NULL OR identifier = ?) \
             RETURNING identifier",
        )
        .bind(now)
        .bind(account.0)
        .bind(identifier)
        .bind(identifier)
        .fetch_all(&self.pool)
        .await?;
        v.sort();
        Ok(v)
    }

    async fn order_limit_facts(
        &self,
        account: AccountId,
        identifiers: &[String],
        set_hash: &str,
        since: i64,
        now: i64,
    ) -> Result<OrderLimitFacts, Problem> {
        let list = if identifiers.is_empty() {
            "NULL".to_string()
        } else {
            (0..identifiers.len())
                .map(|i| format!("?{}", i + 5))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // DNS identifiers hold no commas: a comma list is unambiguous.
        let sql = format!(
            "SELECT (SELECT COUNT(*) FROM authzs
                     WHERE account_id = ?1 AND status = 'pending' AND expires > ?2) AS pending,
                    EXISTS (SELECT 1 FROM certificates
                            WHERE set_hash = ?3 AND issued_at >= ?4) AS renewal,
                    (SELECT group_concat(identifier, ',') FROM
                        (SELECT identifier FROM rate_limit_paused
                         WHERE account_id = ?1 AND unpaused_at IS NULL AND identifier IN ({list})
                         ORDER BY identifier)) AS paused"
        );
        let mut q = sqlx::query(&sql)
            .bind(account.0)
            .bind(now)
            .bind(set_hash)
            .bind(since);
        for i in identifiers {
            q = q.bind(i);
        }
        let r = q.fetch_one(&self.pool).await?;
        let paused: Option<String> = r.try_get("paused")?;
        let mut paused: Vec<String> = paused
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        paused.sort();
        Ok(OrderLimitFacts {
            pending_authzs: r.try_get::<i64, _>("pending")?.max(0) as u64,
            renewal: r.try_get("renewal")?,
            paused,
        })
    }
    async fn pending_authz_expiry(
        &self,
        account: AccountId,
        nth: u64,
        now: i64,
    ) -> Result<Option<i64>, Problem> {
        let Some(offset) = nth.checked_sub(1).and_then(|o| i64::try_from(o).ok()) else {
            return Ok(None);
        };
        Ok(sqlx::query_scalar(
            "SELECT expires FROM authzs
             WHERE account_id = ?1 AND status = 'pending' AND expires > ?2
             ORDER BY expires LIMIT 1 OFFSET ?3",
        )
        .bind(account.0)
        .bind(now)
        .bind(offset)
        .fetch_optional(&self.pool)
        .await?)
    }
}

// ------------------------------------------------------------ PostgreSQL ---

/// Deadlock (40P01) or serialization failure (40001): the statement can
/// simply run again. Lock ordering makes these rare (a prune racing a
/// spend); they are not errors the caller should see.
fn retryable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("40P01") | Some("40001")))
}

const PG_ATTEMPTS: usize = 5;

impl PgStore {
    async fn pg_spend_once(
        &self,
        txns: &[BucketTxn],
        now: i64,
    ) -> Result<Vec<(i64, bool)>, sqlx::Error> {
        let keys: Vec<&str> = txns.iter().map(|t| t.key.as_str()).collect();
        let offsets: Vec<i64> = txns.iter().map(|t| t.params.burst_offset_ns()).collect();
        let costs: Vec<i64> = txns.iter().map(|t| t.params.cost_ns(t.cost)).collect();
        let modes: Vec<i16> = txns
            .iter()
            .map(|t| match t.mode {
                crate::ratelimit::TxnMode::CheckAndSpend => 0,
                crate::ratelimit::TxnMode::CheckOnly => 1,
                crate::ratelimit::TxnMode::SpendOnly => 2,
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
        .fetch_all(&self.pool)
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
}

#[async_trait]
impl LimitStore for PgStore {
    async fn paused_identifiers(&self, account: AccountId) -> Result<Vec<String>, Problem> {
        Ok(sqlx::query_scalar(
            "SELECT identifier FROM rate_limit_paused
             WHERE account_id = $1 AND unpaused_at IS NULL ORDER BY identifier",
        )
        .bind(account.0)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn spend_buckets(&self, txns: &[BucketTxn], now: i64) -> Result<Vec<Decision>, Problem> {
        require_distinct(txns)?;
        if txns.is_empty() {
            return Ok(Vec::new());
        }
        if !txns.iter().any(BucketTxn::spends) {
            // Check-only: a read, no lock needed.
            let keys: Vec<&str> = txns.iter().map(|t| t.key.as_str()).collect();
            let rows = sqlx::query("SELECT key, tat FROM rate_limit_buckets WHERE key = ANY($1)")
                .bind(&keys)
                .fetch_all(&self.pool)
                .await?;
            let mut found = std::collections::HashMap::with_capacity(rows.len());
            for r in rows {
                found.insert(r.try_get::<String, _>("key")?, r.try_get::<i64, _>("tat")?);
            }
            let tats: Vec<Option<i64>> = keys.iter().map(|k| found.get(*k).copied()).collect();
            return Ok(decide(txns, &tats, now).0);
        }
        let mut attempt = 0;
        let rows = loop {
            attempt += 1;
            match self.pg_spend_once(txns, now).await {
                Ok(rows) => break rows,
                Err(e) if retryable(&e) && attempt < PG_ATTEMPTS => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if rows.len() != txns.len() {
            return Err(Problem::internal(format!(
                "rate_limit_spend returned {} rows for {} transactions",
                rows.len(),
                txns.len()
            )));
        }
        // The function decided under its locks; the same arithmetic here
        // gives the full decisions (remaining, retry) for the caller.
        let tats: Vec<Option<i64>> = rows.iter().map(|(t, _)| Some(*t)).collect();
        let (decisions, writes) = decide(txns, &tats, now);
        let written: Vec<usize> = rows
            .iter()
            .enumerate()
            .filter(|(_, (_, w))| *w)
            .map(|(i, _)| i)
            .collect();
        if written != writes.iter().map(|(i, _)| *i).collect::<Vec<_>>() {
            return Err(Problem::internal(
                "rate_limit_spend and the GCRA in Rust disagree (migration out of date?)",
            ));
        }
        Ok(decisions)
    }

    async fn refund_buckets(&self, txns: &[BucketTxn], now: i64) -> Result<u64, Problem> {
        let mut txns: Vec<&BucketTxn> = refundable(txns).collect();
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
                let mut tx = self.pool.begin().await?;
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
                Err(e) if retryable(&e) && attempt < PG_ATTEMPTS => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn reset_buckets(&self, keys: &[String]) -> Result<u64, Problem> {
        // One row per statement: a multi-row DELETE would lock in an order
        // of its own choosing.
        let mut keys: Vec<&String> = keys.iter().collect();
        keys.sort();
        keys.dedup();
        let mut n = 0;
        for k in keys {
            n += sqlx::query("DELETE FROM rate_limit_buckets WHERE key = $1")
                .bind(k)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        Ok(n)
    }

    async fn prune_buckets(&self, now: i64) -> Result<u64, Problem> {
        // SKIP LOCKED: never wait for (or deadlock with) a batch in flight.
        let r = sqlx::query(
            "DELETE FROM rate_limit_buckets WHERE key IN ( \
               SELECT key FROM rate_limit_buckets WHERE tat < $1 \
               FOR UPDATE SKIP LOCKED)",
        )
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    async fn pause(&self, account: AccountId, identifier: &str, now: i64) -> Result<bool, Problem> {
        let r = sqlx::query(
            "INSERT INTO rate_limit_paused (account_id, identifier, paused_at) VALUES ($1, $2, $3) \
             ON CONFLICT (account_id, identifier) DO UPDATE \
             SET paused_at = excluded.paused_at, unpaused_at = NULL \
             WHERE rate_limit_paused.unpaused_at IS NOT NULL",
        )
        .bind(account.0)
        .bind(identifier)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn unpause(
        &self,
        account: AccountId,
        identifier: Option<&str>,
        now: i64,
    ) -> Result<Vec<String>, Problem> {
        let mut v: Vec<String> = sqlx::query_scalar(
            "UPDATE rate_limit_paused SET unpaused_at = $1 \
             WHERE account_id = $2 AND unpaused_at IS NULL \
               AND ($3::text IS NULL OR identifier = $3) \
             RETURNING identifier",
        )
        .bind(now)
        .bind(account.0)
        .bind(identifier)
        .fetch_all(&self.pool)
        .await?;
        v.sort();
        Ok(v)
    }

    async fn order_limit_facts(
        &self,
        account: AccountId,
        identifiers: &[String],
        set_hash: &str,
        since: i64,
        now: i64,
    ) -> Result<OrderLimitFacts, Problem> {
        let r = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM authzs
                     WHERE account_id = $1 AND status = 'pending' AND expires > $2) AS pending,
                    EXISTS (SELECT 1 FROM certificates
                            WHERE set_hash = $3 AND issued_at >= $4) AS renewal,
                    ARRAY(SELECT identifier FROM rate_limit_paused
                          WHERE account_id = $1 AND unpaused_at IS NULL AND identifier = ANY($5)
                          ORDER BY identifier) AS paused",
        )
        .bind(account.0)
        .bind(now)
        .bind(set_hash)
        .bind(since)
        .bind(identifiers)
        .fetch_one(&self.pool)
        .await?;
        Ok(OrderLimitFacts {
            pending_authzs: r.try_get::<i64, _>("pending")?.max(0) as u64,
            renewal: r.try_get("renewal")?,
            paused: r.try_get("paused")?,
        })
    }

    async fn pending_authz_expiry(
        &self,
        account: AccountId,
        nth: u64,
        now: i64,
    ) -> Result<Option<i64>, Problem> {
        let Some(offset) = nth.checked_sub(1).and_then(|o| i64::try_from(o).ok()) else {
            return Ok(None);
        };
        Ok(sqlx::query_scalar(
            "SELECT expires FROM authzs
             WHERE account_id = $1 AND status = 'pending' AND expires > $2
             ORDER BY expires LIMIT 1 OFFSET $3",
        )
        .bind(account.0)
        .bind(now)
        .bind(offset)
        .fetch_optional(&self.pool)
        .await?)
    }
}
