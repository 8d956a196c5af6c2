//! The issuance-window limiter's storage interface (as Boulder's
//! `ratelimits/source.go`): the limits' names, a batch of bucket
//! operations, and [`LimitStore`], which `sa` implements. It lives here,
//! not in `ratelimit`, so that `sa` implements it without importing the
//! limiter (and the limiter uses it without importing `sa`): no cycle.
//! `ratelimit` re-exports all of it; the store runs the GCRA arithmetic
//! ([`super::gcra`]) under its lock, so that is here too.

use super::error::StoreError;
use super::gcra::{self, Decision, Limit};
use super::model::AccountId;
use async_trait::async_trait;
use std::fmt;

/// The issuance-window limits of LIMITS.md §2. The string names are stable:
/// they appear in bucket keys, override files, problem documents and
/// metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LimitName {
    NewRegistrationsPerIp,
    NewRegistrationsPerIpv6Range,
    NewOrdersPerAccount,
    CertificatesPerDomain,
    CertificatesPerFqdnSet,
    FailedAuthorizationsPerIdentifier,
    ConsecutiveAuthorizationFailures,
}

impl LimitName {
    pub const ALL: [LimitName; 7] = [
        LimitName::NewRegistrationsPerIp,
        LimitName::NewRegistrationsPerIpv6Range,
        LimitName::NewOrdersPerAccount,
        LimitName::CertificatesPerDomain,
        LimitName::CertificatesPerFqdnSet,
        LimitName::FailedAuthorizationsPerIdentifier,
        LimitName::ConsecutiveAuthorizationFailures,
    ];

    /// The stable camelCase name.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitName::NewRegistrationsPerIp => "newRegistrationsPerIp",
            LimitName::NewRegistrationsPerIpv6Range => "newRegistrationsPerIpv6Range",
            LimitName::NewOrdersPerAccount => "newOrdersPerAccount",
            LimitName::CertificatesPerDomain => "certificatesPerDomain",
            LimitName::CertificatesPerFqdnSet => "certificatesPerFqdnSet",
            LimitName::FailedAuthorizationsPerIdentifier => "failedAuthorizationsPerIdentifier",
            LimitName::ConsecutiveAuthorizationFailures => "consecutiveAuthorizationFailures",
        }
    }

    pub fn parse(s: &str) -> Option<LimitName> {
        LimitName::ALL.into_iter().find(|n| n.as_str() == s)
    }
}

impl fmt::Display for LimitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a transaction takes part in its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnMode {
    /// Must have the tokens; spent if the whole batch is allowed.
    CheckAndSpend,
    /// Must have the tokens; never spent.
    CheckOnly,
    /// Spent if it has the tokens and the batch is allowed; never decides.
    SpendOnly,
}

/// One bucket operation of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketTxn {
    pub limit: LimitName,
    /// The stored key, `<limitName>:<id>`.
    pub key: String,
    /// The id shown to clients (an IP, a /48, an account, a domain...).
    pub display: String,
    /// The bucket's parameters (the override for this key, or the default).
    pub params: Limit,
    pub cost: u64,
    pub mode: TxnMode,
}

impl BucketTxn {
    /// Takes part in the decision.
    pub fn checks(&self) -> bool {
        self.mode != TxnMode::SpendOnly
    }

    /// Is written when allowed.
    pub fn spends(&self) -> bool {
        self.mode != TxnMode::CheckOnly
    }
}

/// Storage for the issuance-window limiter.
#[async_trait]
pub trait LimitStore: Send + Sync {
    /// Apply a batch atomically: every transaction is decided on the
    /// buckets' current TATs (`now` in Unix nanoseconds); if every
    /// transaction that checks is allowed, every allowed transaction that
    /// spends is written, otherwise nothing is. Returns one decision per
    /// transaction, in order. Keys must be distinct.
    async fn spend_buckets(
        &self,
        txns: &[BucketTxn],
        now: i64,
    ) -> Result<Vec<Decision>, StoreError>;

    /// Give back the cost of each spending transaction (`gcra::refund`:
    /// never above a full bucket; missing or full buckets are left alone).
    /// Returns how many buckets changed.
    async fn refund_buckets(&self, txns: &[BucketTxn], now: i64) -> Result<u64, StoreError>;

    /// Delete these buckets (they read as full). Returns how many existed.
    async fn reset_buckets(&self, keys: &[String]) -> Result<u64, StoreError>;

    /// Delete up to `limit` buckets that are full again (TAT before `now`,
    /// nanoseconds); they read the same as missing ones. Returns how many.
    async fn prune_buckets(&self, now: i64, limit: u32) -> Result<u64, StoreError>;

    /// Pause the account for the identifier (`now` in Unix seconds). True if
    /// it was not paused already.
    async fn pause(
        &self,
        account: AccountId,
        identifier: &str,
        now: i64,
    ) -> Result<bool, StoreError>;

    /// Lift the pause for one identifier, or all of the account's. Returns
    /// the identifiers that were paused, sorted.
    async fn unpause(
        &self,
        account: AccountId,
        identifier: Option<&str>,
        now: i64,
    ) -> Result<Vec<String>, StoreError>;

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
    ) -> Result<OrderLimitFacts, StoreError>;

    /// Every identifier the account is paused for, sorted.
    async fn paused_identifiers(&self, account: AccountId) -> Result<Vec<String>, StoreError>;

    /// When the account's `nth` earliest-expiring pending authorization
    /// expires (Unix seconds), if it holds that many unexpired at `now`:
    /// the moment `nth` pending authorizations' room comes back by itself.
    async fn pending_authz_expiry(
        &self,
        account: AccountId,
        nth: u64,
        now: i64,
    ) -> Result<Option<i64>, StoreError>;
}

/// See [`LimitStore::order_limit_facts`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderLimitFacts {
    pub pending_authzs: u64,
    pub renewal: bool,
    /// Sorted.
    pub paused: Vec<String>,
}

/// The batch rules every store applies, whatever its locking.
pub mod batch {
    use super::*;

    pub fn require_distinct(txns: &[BucketTxn]) -> Result<(), StoreError> {
        let mut keys: Vec<&str> = txns.iter().map(|t| t.key.as_str()).collect();
        keys.sort_unstable();
        if keys.windows(2).any(|w| w[0] == w[1]) {
            return Err(StoreError::Database(
                "rate-limit batch with a duplicate key".into(),
            ));
        }
        Ok(())
    }

    /// Decide a batch on the TATs read (`None`: no row). Returns the
    /// decisions and the TATs to write (index, new TAT), empty when the
    /// batch is denied.
    pub fn decide(
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
    pub fn refundable(txns: &[BucketTxn]) -> impl Iterator<Item = &BucketTxn> {
        txns.iter().filter(|t| t.spends() && t.cost > 0)
    }
}
