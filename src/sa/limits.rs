//! The rate limiter's storage (`LimitStore`, defined in `core::limits`):
//! what both databases run the same way. How a batch is made atomic is the
//! `Backend`'s (`sqlite.rs`, `postgres.rs`).

use super::exec::{query, query_scalar};
use super::sql::{Backend, SqlStore};
use super::*;
use crate::core::gcra::Decision;
use crate::core::limits::{batch, BucketTxn, OrderLimitFacts};

#[async_trait]
impl<DB> LimitStore for SqlStore<DB>
where
    DB: Backend,
{
    async fn spend_buckets(
        &self,
        txns: &[BucketTxn],
        now: i64,
    ) -> Result<Vec<Decision>, StoreError> {
        batch::require_distinct(txns)?;
        if txns.is_empty() {
            return Ok(Vec::new());
        }
        if !txns.iter().any(BucketTxn::spends) {
            // Check-only: a read, no lock needed.
            let keys: Vec<&str> = txns.iter().map(|t| t.key.as_str()).collect();
            let tats = Self::read_tats(&mut *self.reader().await?, &keys).await?;
            return Ok(batch::decide(txns, &tats, now).0);
        }
        DB::spend_buckets(self, txns, now).await
    }

    async fn refund_buckets(&self, txns: &[BucketTxn], now: i64) -> Result<u64, StoreError> {
        DB::refund_buckets(self, txns, now).await
    }

    async fn reset_buckets(&self, keys: &[String]) -> Result<u64, StoreError> {
        DB::reset_buckets(self, keys).await
    }

    async fn prune_buckets(&self, now: i64, limit: u32) -> Result<u64, StoreError> {
        // SKIP LOCKED (PostgreSQL): never wait for, or deadlock with, a
        // batch in flight; `rate_limit_spend` recreates a row pruned under it.
        let r = query(&format!(
            "DELETE FROM rate_limit_buckets WHERE key IN (
               SELECT key FROM rate_limit_buckets WHERE tat < $1 LIMIT $2{})",
            DB::SKIP_LOCKED
        ))
        .bind(now)
        .bind(i64::from(limit))
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(r)
    }

    async fn pause(
        &self,
        account: AccountId,
        identifier: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let r = query(
            "INSERT INTO rate_limit_paused (account_id, identifier, paused_at) VALUES ($1, $2, $3) \
             ON CONFLICT (account_id, identifier) DO UPDATE \
             SET paused_at = excluded.paused_at, unpaused_at = NULL \
             WHERE rate_limit_paused.unpaused_at IS NOT NULL",
        )
        .bind(account.0)
        .bind(identifier)
        .bind(now)
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(r == 1)
    }

    async fn unpause(
        &self,
        account: AccountId,
        identifier: Option<&str>,
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut v: Vec<String> = query_scalar(
            "UPDATE rate_limit_paused SET unpaused_at = $1 \
             WHERE account_id = $2 AND unpaused_at IS NULL \
               AND (CAST($3 AS TEXT) IS NULL OR identifier = $3) \
             RETURNING identifier",
        )
        .bind(now)
        .bind(account.0)
        .bind(identifier)
        .fetch_all(&mut *self.writer().await?)
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
    ) -> Result<OrderLimitFacts, StoreError> {
        let paused = DB::array(&format!(
            "SELECT identifier AS v FROM rate_limit_paused
             WHERE account_id = $1 AND unpaused_at IS NULL AND {}",
            DB::in_list("identifier", 5, identifiers.len())
        ));
        let sql = format!(
            "SELECT (SELECT COUNT(*) FROM authzs
                     WHERE account_id = $1 AND status = 'pending' AND expires > $2) AS pending,
                    EXISTS (SELECT 1 FROM certificates
                            WHERE set_hash = $3 AND issued_at >= $4) AS renewal,
                    {paused} AS paused"
        );
        let identifiers: Vec<&str> = identifiers.iter().map(String::as_str).collect();
        let q = query(&sql)
            .bind(account.0)
            .bind(now)
            .bind(set_hash)
            .bind(since);
        let r = DB::bind_strs(q, &identifiers)
            .fetch_one(&mut *self.reader().await?)
            .await?;
        let mut paused = DB::texts(&r, "paused")?;
        paused.sort();
        Ok(OrderLimitFacts {
            pending_authzs: r.try_get::<i64>("pending")?.max(0) as u64,
            renewal: r.try_get("renewal")?,
            paused,
        })
    }

    async fn paused_identifiers(&self, account: AccountId) -> Result<Vec<String>, StoreError> {
        Ok(query_scalar(
            "SELECT identifier FROM rate_limit_paused
             WHERE account_id = $1 AND unpaused_at IS NULL ORDER BY identifier",
        )
        .bind(account.0)
        .fetch_all(&mut *self.reader().await?)
        .await?)
    }

    async fn pending_authz_expiry(
        &self,
        account: AccountId,
        nth: u64,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        let Some(offset) = nth.checked_sub(1).and_then(|o| i64::try_from(o).ok()) else {
            return Ok(None);
        };
        Ok(query_scalar(
            "SELECT expires FROM authzs
             WHERE account_id = $1 AND status = 'pending' AND expires > $2
             ORDER BY expires LIMIT 1 OFFSET $3",
        )
        .bind(account.0)
        .bind(now)
        .bind(offset)
        .fetch_optional(&mut *self.reader().await?)
        .await?)
    }
}
