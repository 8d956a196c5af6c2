//! Retention: what the database forgets, so a CA that runs for years keeps
//! a database the size of its certificates. Every `retention.interval_secs`
//! each instance (or `cairn admin purge`, once) deletes, in transactions of
//! at most `retention.batch_size` rows:
//!
//! - orders that never issued (pending, processing or invalid; no
//!   certificate), once expired for `retention.keep_expired_secs`, with
//!   their links to authorizations; one still holding rate-limit tokens
//!   waits until the reservation sweeper gave them back;
//! - authorizations expired for as long, with their challenges and order
//!   links: nothing reuses an expired authorization or counts it as
//!   pending, and an order whose status is still derived from it (not
//!   valid, not expired as long) keeps it;
//! - used nonces past their lifetime (refused by age before any lookup)
//!   and rate-limit buckets that are full again (they read as missing
//!   rows), whether or not `retention.enabled`.
//!
//! Kept for good: accounts, certificates with their names and revocations
//! (CRLs, ARI, `cairn admin certs`), blocked keys, CRLs (the newest few)
//! and valid orders. A valid order is the `order_id` of its certificate,
//! answers GET with its certificate URL, and carries the `replaces` of an
//! ARI renewal; once its authorizations are purged it lists none.
//!
//! On PostgreSQL every batch locks its rows with SKIP LOCKED, so instances
//! purging at once take disjoint rows and wait for nobody.

use crate::clock::Clock;
use crate::config::RetentionConfig;
use crate::core::StoreError;
use crate::sa::{DynStore, Purged};
use std::sync::Arc;
use std::time::Duration;

pub struct Retention {
    store: DynStore,
    clock: Arc<Clock>,
    cfg: RetentionConfig,
}

/// What one purge did (or, dry, would do).
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Orders and authorizations that expired before this (Unix seconds)
    /// were purged.
    pub expired_before: i64,
    #[serde(flatten)]
    pub rows: Purged,
}

impl Retention {
    pub fn new(store: DynStore, clock: Arc<Clock>, cfg: RetentionConfig) -> Retention {
        Retention { store, clock, cfg }
    }

    /// One purge, every batch of it. `orders_and_authzs` false prunes only
    /// nonces and buckets (`retention.enabled = false`). `dry_run` counts
    /// what would go and deletes nothing.
    pub async fn run(&self, orders_and_authzs: bool, dry_run: bool) -> Result<Report, StoreError> {
        let now = self.clock.unix();
        let expired_before = now.saturating_sub(self.cfg.keep_expired_secs as i64);
        // A nonce is remembered until its expiry plus the clock skew allowed
        // between instances; this instance's clock may run ahead by as much.
        let nonces_before = now - crate::wfe::NONCE_SKEW_SECS;
        let buckets_before = self.clock.now().unix_timestamp_nanos() as i64;
        let mut rows = if dry_run {
            self.store
                .purgeable(expired_before, nonces_before, buckets_before)
                .await?
        } else {
            let batch = self.cfg.batch_size.max(1);
            let mut rows = Purged::default();
            if orders_and_authzs {
                // Orders first: their links go with them, which frees
                // authorizations only they held.
                self.batches(
                    &mut rows,
                    |s| async move { s.purge_orders(expired_before, batch).await },
                    |p| p.orders,
                )
                .await?;
                self.batches(
                    &mut rows,
                    |s| async move { s.purge_authzs(expired_before, batch).await },
                    |p| p.authzs,
                )
                .await?;
            }
            self.batches(
                &mut rows,
                |s| async move {
                    let n = s.prune_nonces(nonces_before, batch).await?;
                    Ok(Purged {
                        used_nonces: n,
                        ..Purged::default()
                    })
                },
                |p| p.used_nonces,
            )
            .await?;
            self.batches(
                &mut rows,
                |s| async move {
                    let n = s.prune_buckets(buckets_before, batch).await?;
                    Ok(Purged {
                        rate_limit_buckets: n,
                        ..Purged::default()
                    })
                },
                |p| p.rate_limit_buckets,
            )
            .await?;
            rows
        };
        if !orders_and_authzs {
            rows = Purged {
                used_nonces: rows.used_nonces,
                rate_limit_buckets: rows.rate_limit_buckets,
                ..Purged::default()
            };
        }
        Ok(Report {
            expired_before,
            rows,
        })
    }

    /// Run `batch` until it deletes fewer rows than a full batch (by
    /// `main`), counting every row in `total` and in the metrics.
    async fn batches<F, Fut>(
        &self,
        total: &mut Purged,
        batch: F,
        main: fn(&Purged) -> u64,
    ) -> Result<(), StoreError>
    where
        F: Fn(DynStore) -> Fut,
        Fut: std::future::Future<Output = Result<Purged, StoreError>>,
    {
        loop {
            let p = batch(self.store.clone()).await?;
            for (table, n) in p.tables() {
                crate::metrics::purged(table, n);
            }
            total.add(p);
            if main(&p) < u64::from(self.cfg.batch_size.max(1)) {
                return Ok(());
            }
            // Let requests at the database between batches.
            tokio::task::yield_now().await;
        }
    }

    /// The schedule: one purge every `interval_secs`, the first one an
    /// interval after start. Abort the handle to stop it (at shutdown); a
    /// batch cut off rolls back.
    pub fn spawn(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let every = Duration::from_secs(self.cfg.interval_secs.max(1));
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match self.run(self.cfg.enabled, false).await {
                    Ok(r) if r.rows.orders + r.rows.authzs > 0 => tracing::info!(
                        orders = r.rows.orders,
                        authorizations = r.rows.authzs,
                        challenges = r.rows.challenges,
                        used_nonces = r.rows.used_nonces,
                        "retention: purged expired rows"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("retention: purge failed: {e}"),
                }
            }
        })
    }
}
