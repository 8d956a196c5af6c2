//! The issuance-window limiter: the transactions the RA runs, as Boulder's
//! `ratelimits` package shapes them (BOULDER.md §1.3–1.4).
//!
//! A transaction names one bucket, a cost and a mode: *check+spend* (must
//! have the tokens; written if the whole batch is allowed), *check-only*
//! (takes part in the decision, never written) or *spend-only* (best effort,
//! never decides). A batch goes to the store in one atomic round trip; a
//! denied batch writes nothing and is reported as the [`Denial`] of the
//! limit that resets furthest in the future. What an allowed batch spent
//! comes back as [`Spent`], which [`Limiter::refund`] gives back when a later
//! step fails, so a bucket never leaks tokens.
//!
//! The store can fail (database down). That is [`LimitError::Unavailable`],
//! distinct from a denial, so the caller can choose, as Boulder does, to let
//! the request through rather than fail issuance on a limiter outage.

use super::gcra::{retry_after_secs, Decision, Limit};
use super::keys::{bucket_key, normalize_identifiers, registration_ip_key, registration_range_key};
use super::{format_utc, fqdn_set_hash, LimitName, LimitSet, Overrides};
use crate::clock::Clock;
use crate::core::limits::{BucketTxn, LimitStore, OrderLimitFacts, TxnMode};
use crate::core::{AccountId, StoreError};
use crate::problem::Problem;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A refused request: the strictest limit of the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub limit: LimitName,
    /// The display key (what was counted).
    pub key: String,
    pub params: Limit,
    /// Whole seconds until a retry succeeds (rounded up).
    pub retry_after_secs: u64,
    /// When a retry succeeds, Unix nanoseconds.
    pub retry_at_ns: i64,
    /// Tokens left (fewer than the cost).
    pub remaining: u64,
    docs_url: String,
}

impl Denial {
    /// Boulder-style detail: limit, key, window, retry time, docs link.
    pub fn detail(&self) -> String {
        self.limit.detail(
            &self.params,
            &self.key,
            &format_utc(self.retry_at_ns),
            &self.docs_url,
        )
    }

    /// The 429 `rateLimited` problem with `Retry-After` and the extension
    /// members `limit`, `key` and `retryAfter`.
    pub fn to_problem(&self) -> Problem {
        Problem::rate_limited_for(
            self.limit.as_str(),
            self.key.clone(),
            Some(self.retry_after_secs),
            self.detail(),
        )
        .with_help(&self.docs_url)
    }
}

impl From<Denial> for Problem {
    fn from(d: Denial) -> Problem {
        d.to_problem()
    }
}

/// A bucket as it stands, from a check-only decision of one token (which
/// reports the state as if that token were spent when it could be).
#[derive(Debug, Clone)]
pub struct BucketState {
    pub limit: Limit,
    /// Whole tokens left.
    pub remaining: u64,
    /// Nanoseconds until the next token returns; `None` when full.
    pub next_in_ns: Option<i64>,
    /// Nanoseconds until the bucket is full.
    pub full_in_ns: i64,
}

impl BucketState {
    fn from_check(limit: Limit, d: &Decision) -> BucketState {
        let ei = limit.emission_interval_ns().max(1);
        let (remaining, full_in_ns) = if d.allowed {
            // Undo the hypothetical spend of one token.
            (d.remaining + 1, (d.reset_in_ns - ei).max(0))
        } else {
            (d.remaining, d.reset_in_ns.max(0))
        };
        let missing = limit.burst.saturating_sub(remaining);
        // Tokens return one per emission interval, the last when full.
        let next_in_ns = (missing > 0 && full_in_ns > 0)
            .then(|| (full_in_ns - (missing as i64 - 1) * ei).max(0));
        BucketState {
            limit,
            remaining: remaining.min(limit.burst),
            next_in_ns,
            full_in_ns,
        }
    }

    /// Whole seconds, rounded up (a retry at that second succeeds).
    pub fn secs(ns: i64) -> u64 {
        (ns.max(0) as u64).div_ceil(1_000_000_000)
    }
}

/// Why a limited operation did not go ahead.
#[derive(Debug, Clone)]
pub enum LimitError {
    /// A limit refused the request.
    Denied(Box<Denial>),
    /// The account is paused for these identifiers (consecutive
    /// authorization failures) until an operator unpauses it.
    Paused {
        account: AccountId,
        identifiers: Vec<String>,
        docs_url: String,
    },
    /// The account holds too many pending authorizations (the fixed
    /// limit beside the windows); the problem says how many.
    TooManyPending(Problem),
    /// The limiter's store failed; the request was neither allowed nor
    /// refused by a limit (Boulder lets such requests through).
    Unavailable(Problem),
}

impl LimitError {
    /// The problem to send the client.
    pub fn to_problem(&self) -> Problem {
        match self {
            LimitError::Denied(d) => d.to_problem(),
            LimitError::Paused {
                account,
                identifiers,
                docs_url,
            } => {
                let list = identifiers.join(", ");
                let anchor = LimitName::ConsecutiveAuthorizationFailures.doc_anchor();
                // No Retry-After, as Let's Encrypt's: waiting does not
                // help, an unpause does (the detail says so).
                Problem::rate_limited_for(
                    LimitName::ConsecutiveAuthorizationFailures.as_str(),
                    identifiers.first().cloned().unwrap_or_default(),
                    None,
                    format!(
                        "account {account} is paused for {list} after too many consecutive \
                         failed authorizations: new orders for these identifiers are refused, \
                         however long you wait, until the CA's operator runs `cairn admin unpause --account {account}` \
                         (fix the validation setup first): see {docs_url}#{anchor}"
                    ),
                )
                .with_help(docs_url)
            }
            LimitError::TooManyPending(p) | LimitError::Unavailable(p) => p.clone(),
        }
    }
}

impl From<LimitError> for Problem {
    fn from(e: LimitError) -> Problem {
        e.to_problem()
    }
}

impl From<Problem> for LimitError {
    fn from(p: Problem) -> LimitError {
        LimitError::Unavailable(p)
    }
}

impl From<StoreError> for LimitError {
    fn from(e: StoreError) -> LimitError {
        LimitError::Unavailable(e.into())
    }
}

/// The most constrained limit an allowed request touched, for the IETF
/// `RateLimit-Policy` and `RateLimit` fields
/// (draft-ietf-httpapi-ratelimit-headers-09/10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitInfo {
    pub limit: LimitName,
    /// The policy's quota (the burst).
    pub quota: u64,
    /// The policy's window, seconds.
    pub window_secs: u64,
    /// Tokens left after this request.
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
}

impl RateLimitInfo {
    /// `RateLimit-Policy: "newOrdersPerAccount";q=300;w=10800`
    pub fn policy_header(&self) -> String {
        format!("\"{}\";q={};w={}", self.limit, self.quota, self.window_secs)
    }

    /// `RateLimit: "newOrdersPerAccount";r=299;t=36`
    pub fn header(&self) -> String {
        format!(
            "\"{}\";r={};t={}",
            self.limit, self.remaining, self.reset_secs
        )
    }
}

/// What an allowed batch spent: hand it to [`Limiter::refund`] if the
/// operation fails afterwards.
#[derive(Debug, Clone, Default)]
pub struct Spent {
    txns: Vec<BucketTxn>,
    /// The most constrained limit touched (None: no limit applied).
    pub info: Option<RateLimitInfo>,
}

/// One reserved token kind, as an order stores it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ReservedToken {
    limit: String,
    key: String,
    cost: u64,
}

impl Spent {
    /// The certificate tokens (per registered domain, per exact set) this
    /// spend reserved, as JSON for the order to keep; `None` if none.
    pub fn reservation(&self) -> Option<String> {
        let tokens: Vec<ReservedToken> = self
            .txns
            .iter()
            .filter(|t| {
                matches!(
                    t.limit,
                    LimitName::CertificatesPerDomain | LimitName::CertificatesPerFqdnSet
                )
            })
            .map(|t| ReservedToken {
                limit: t.limit.as_str().to_string(),
                key: t.key.clone(),
                cost: t.cost,
            })
            .collect();
        if tokens.is_empty() {
            None
        } else {
            serde_json::to_string(&tokens).ok()
        }
    }

    /// Nothing spent (e.g. an ARI renewal, exempt from every limit).
    pub fn none() -> Spent {
        Spent::default()
    }
}

/// The issuance-window limiter: the limit set, the overrides and the store.
pub struct Limiter {
    set: LimitSet,
    overrides: Arc<Overrides>,
    store: Arc<dyn LimitStore>,
    clock: Arc<Clock>,
    docs_url: String,
    /// Refusals per limit since start, in `LimitName::ALL` order; paused
    /// refusals count under `consecutiveAuthorizationFailures`.
    refusals: [AtomicU64; 7],
    /// Refusals by the pending-authorization cap since start.
    pending_refusals: AtomicU64,
}

/// The identifier an authorization is for: a wildcard's authorization is
/// for its base name.
fn authz_identifier(name: &str) -> String {
    let n = name.to_ascii_lowercase();
    match n.strip_prefix("*.") {
        Some(base) => base.to_string(),
        None => n,
    }
}

impl Limiter {
    /// `docs_url` is the documentation page details link to (the limit's
    /// anchor is appended).
    pub fn new(
        set: LimitSet,
        overrides: Arc<Overrides>,
        store: Arc<dyn LimitStore>,
        clock: Arc<Clock>,
        docs_url: impl Into<String>,
    ) -> Limiter {
        Limiter {
            set,
            overrides,
            store,
            clock,
            docs_url: docs_url.into(),
            refusals: Default::default(),
            pending_refusals: AtomicU64::new(0),
        }
    }

    /// Refusals by the pending-authorization cap since start (for metrics).
    pub fn pending_authz_refusals(&self) -> u64 {
        self.pending_refusals.load(Ordering::Relaxed)
    }

    /// Refusals per limit since start (for metrics).
    pub fn refusal_counts(&self) -> Vec<(LimitName, u64)> {
        LimitName::ALL
            .into_iter()
            .map(|n| (n, self.refusals[n as usize].load(Ordering::Relaxed)))
            .collect()
    }

    fn count_refusal(&self, limit: LimitName) {
        self.refusals[limit as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Now, Unix nanoseconds, from the injectable clock.
    pub fn now_ns(&self) -> i64 {
        // i64 nanoseconds last until 2262.
        self.clock.now().unix_timestamp_nanos() as i64
    }

    /// The parameters of `limit` for `id`: its override, else the default;
    /// `None` when the limit is off (no transaction is built).
    pub fn params(&self, limit: LimitName, id: &str) -> Option<Limit> {
        let default = self.set.window(limit)?;
        Some(self.overrides.get(limit, id).unwrap_or(default))
    }

    /// A transaction for `limit` on `id`, or `None` when the limit is off.
    pub fn txn(&self, limit: LimitName, id: &str, cost: u64, mode: TxnMode) -> Option<BucketTxn> {
        let params = self.params(limit, id)?;
        Some(BucketTxn {
            limit,
            key: bucket_key(limit, id),
            display: id.to_string(),
            params,
            cost,
            mode,
        })
    }

    /// New account: check and spend *new registrations per IP* (and, for an
    /// IPv6 client, *per IPv6 /48*). Refund the result if the account is
    /// not created after all.
    pub async fn check_new_account(&self, ip: IpAddr) -> Result<Spent, LimitError> {
        let mut txns = Vec::new();
        txns.extend(self.txn(
            LimitName::NewRegistrationsPerIp,
            &registration_ip_key(ip),
            1,
            TxnMode::CheckAndSpend,
        ));
        if let Some(range) = registration_range_key(ip) {
            txns.extend(self.txn(
                LimitName::NewRegistrationsPerIpv6Range,
                &range,
                1,
                TxnMode::CheckAndSpend,
            ));
        }
        self.transact(txns).await
    }

    /// New order (not an ARI renewal: those skip every limit, so do not
    /// call this). In order: refuse identifiers the account is paused for;
    /// then one batch of *new orders per account* (check+spend, skipped for
    /// a renewal), *authorization failures* per identifier (check-only),
    /// *certificates per registered domain* per domain (check+spend, skipped
    /// for a renewal) and *exact set* (check+spend).
    ///
    /// The certificate limits are spent here, as a reservation, rather than
    /// at issuance: instances racing for the last tokens then never admit
    /// more orders than the bucket allows, and a client is told at newOrder,
    /// before any validation work. The order keeps the reservation
    /// ([`Spent::reservation`]) until its certificate uses it; an order that
    /// fails or expires gives it back ([`Limiter::refund_reservation`]). `names` are the order's
    /// identifiers (wildcards as `*.name`); `registered_domains` their
    /// registered domains (`Policy::registered_domain`), duplicates allowed.
    /// Refund the result if the order is not created.
    pub async fn check_new_order(
        &self,
        account: AccountId,
        names: &[String],
        registered_domains: &[String],
        facts: &OrderLimitFacts,
        new_authzs: u64,
        max_pending_authzs: u64,
    ) -> Result<Spent, LimitError> {
        let idents = normalize_identifiers(
            &names
                .iter()
                .map(|n| authz_identifier(n))
                .collect::<Vec<_>>(),
        );
        if !facts.paused.is_empty()
            && self
                .set
                .window(LimitName::ConsecutiveAuthorizationFailures)
                .is_some()
        {
            self.count_refusal(LimitName::ConsecutiveAuthorizationFailures);
            tracing::info!(
                limit = LimitName::ConsecutiveAuthorizationFailures.as_str(),
                key = %format!("{account}:{}", facts.paused.join(",")),
                "paused account refused a new order"
            );
            return Err(LimitError::Paused {
                account,
                identifiers: facts.paused.clone(),
                docs_url: self.docs_url.clone(),
            });
        }
        let pending = facts.pending_authzs;
        if pending + new_authzs > max_pending_authzs {
            self.pending_refusals.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                limit = "pendingAuthorizationsPerAccount",
                key = %account,
                pending,
                new = new_authzs,
                "rate limit refused a request"
            );
            // Room comes back by itself when enough of the pending
            // authorizations expire: the `excess`-th earliest expiry.
            let excess = pending + new_authzs - max_pending_authzs;
            let now = self.clock.unix();
            let room_at = match self.store.pending_authz_expiry(account, excess, now).await {
                Ok(at) => at,
                Err(e) => {
                    tracing::warn!("reading pending authorizations' expiry: {e}");
                    None
                }
            };
            let retry_after = room_at.map(|at| at.saturating_sub(now).max(1) as u64);
            let when = match retry_after {
                Some(secs) => {
                    format!("; without that, room comes back in {secs} s, when the oldest expire")
                }
                None => String::new(),
            };
            return Err(LimitError::TooManyPending(
                Problem::rate_limited_for(
                    "pendingAuthorizationsPerAccount",
                    account.to_string(),
                    retry_after,
                    format!(
                        "too many pending authorizations for account {account}: it holds \
                         {pending} and this order needs {new_authzs} more, at most \
                         {max_pending_authzs} are allowed; complete or deactivate some \
                         first{when}: see {}#pending-authorizations",
                        self.docs_url
                    ),
                )
                .with_help(&self.docs_url),
            ));
        }
        let is_renewal = facts.renewal;
        let mut txns = Vec::new();
        if !is_renewal {
            txns.extend(self.txn(
                LimitName::NewOrdersPerAccount,
                &account.to_string(),
                1,
                TxnMode::CheckAndSpend,
            ));
        }
        for ident in &idents {
            txns.extend(self.txn(
                LimitName::FailedAuthorizationsPerIdentifier,
                &format!("{account}:{ident}"),
                1,
                TxnMode::CheckOnly,
            ));
        }
        self.issuance_txns(
            &mut txns,
            names,
            registered_domains,
            is_renewal,
            TxnMode::CheckAndSpend,
        );
        self.transact(txns).await
    }

    /// Give back a reservation an order kept (see [`Spent::reservation`]).
    /// A limit switched off since is skipped.
    pub async fn refund_reservation(&self, json: &str) -> Result<(), Problem> {
        let tokens: Vec<ReservedToken> = serde_json::from_str(json)
            .map_err(|e| Problem::internal(format!("bad reservation in database: {e}")))?;
        let txns: Vec<BucketTxn> = tokens
            .into_iter()
            .filter_map(|t| {
                let limit = LimitName::parse(&t.limit)?;
                let id = t.key.strip_prefix(&format!("{}:", limit.as_str()))?;
                self.txn(limit, id, t.cost, TxnMode::CheckAndSpend)
            })
            .collect();
        if txns.is_empty() {
            return Ok(());
        }
        self.store.refund_buckets(&txns, self.now_ns()).await?;
        Ok(())
    }

    fn issuance_txns(
        &self,
        txns: &mut Vec<BucketTxn>,
        names: &[String],
        registered_domains: &[String],
        is_renewal: bool,
        mode: TxnMode,
    ) {
        if !is_renewal {
            for domain in normalize_identifiers(registered_domains) {
                txns.extend(self.txn(LimitName::CertificatesPerDomain, &domain, 1, mode));
            }
        }
        if !names.is_empty() {
            if let Some(mut t) = self.txn(
                LimitName::CertificatesPerFqdnSet,
                &fqdn_set_hash(names),
                1,
                mode,
            ) {
                // Show the names, not the hash.
                t.display = normalize_identifiers(names).join(",");
                txns.push(t);
            }
        }
    }

    /// A validation failed (or a pending authorization was deactivated):
    /// spend *authorization failures* (spend-only), then *consecutive
    /// failures* (check+spend); when the latter is exhausted the account is
    /// paused for the identifier. True if this call paused it.
    pub async fn spend_failed_authz(
        &self,
        account: AccountId,
        identifier: &str,
    ) -> Result<bool, Problem> {
        let ident = authz_identifier(identifier);
        let id = format!("{account}:{ident}");
        if let Some(t) = self.txn(
            LimitName::FailedAuthorizationsPerIdentifier,
            &id,
            1,
            TxnMode::SpendOnly,
        ) {
            self.store.spend_buckets(&[t], self.now_ns()).await?;
        }
        let Some(t) = self.txn(
            LimitName::ConsecutiveAuthorizationFailures,
            &id,
            1,
            TxnMode::CheckAndSpend,
        ) else {
            return Ok(false);
        };
        let d = self.store.spend_buckets(&[t], self.now_ns()).await?;
        if d.first().is_some_and(|d| !d.allowed) {
            let newly = self.store.pause(account, &ident, self.clock.unix()).await?;
            if newly {
                tracing::warn!(
                    account = account.0,
                    identifier = %ident,
                    "account paused: too many consecutive failed authorizations"
                );
            }
            return Ok(newly);
        }
        Ok(false)
    }

    /// A validation succeeded: the consecutive-failure count starts again.
    pub async fn reset_pausing(&self, account: AccountId, identifier: &str) -> Result<(), Problem> {
        if self
            .set
            .window(LimitName::ConsecutiveAuthorizationFailures)
            .is_none()
        {
            return Ok(());
        }
        let id = format!("{account}:{}", authz_identifier(identifier));
        self.store
            .reset_buckets(&[bucket_key(LimitName::ConsecutiveAuthorizationFailures, &id)])
            .await?;
        Ok(())
    }

    /// Unpause the account for one identifier, or for all (admin CLI), and
    /// give those identifiers a fresh consecutive-failure bucket. Returns
    /// the identifiers unpaused.
    pub async fn unpause(
        &self,
        account: AccountId,
        identifier: Option<&str>,
    ) -> Result<Vec<String>, Problem> {
        let ident = identifier.map(authz_identifier);
        let done = self
            .store
            .unpause(account, ident.as_deref(), self.clock.unix())
            .await?;
        let keys: Vec<String> = done
            .iter()
            .map(|i| {
                bucket_key(
                    LimitName::ConsecutiveAuthorizationFailures,
                    &format!("{account}:{i}"),
                )
            })
            .collect();
        if !keys.is_empty() {
            self.store.reset_buckets(&keys).await?;
        }
        Ok(done)
    }

    /// Empty a bucket's history: it reads as full. The admin CLI calls this
    /// after `overrides set`, because a bucket's TAT was earned under the
    /// old parameters: an exhausted bucket stays exhausted under a raised
    /// limit (only refilling faster) until it is reset.
    /// A bucket's state now, read with the same arithmetic that decides
    /// (a check-only transaction of one token, nothing written). `None`
    /// when the limit is off for this set or key.
    pub async fn bucket_state(
        &self,
        limit: LimitName,
        id: &str,
    ) -> Result<Option<BucketState>, Problem> {
        let (Some(params), Some(txn)) = (
            self.params(limit, id),
            self.txn(limit, id, 1, TxnMode::CheckOnly),
        ) else {
            return Ok(None);
        };
        let now = self.now_ns();
        let decisions = self.store.spend_buckets(&[txn], now).await?;
        Ok(decisions
            .into_iter()
            .next()
            .map(|d| BucketState::from_check(params, &d)))
    }

    /// Every identifier the account is paused for.
    pub async fn paused(&self, account: AccountId) -> Result<Vec<String>, Problem> {
        Ok(self.store.paused_identifiers(account).await?)
    }

    pub async fn reset_bucket(&self, limit: LimitName, id: &str) -> Result<(), Problem> {
        self.store
            .reset_buckets(&[bucket_key(limit, &id.to_ascii_lowercase())])
            .await?;
        Ok(())
    }

    /// What [`Limiter::check_new_order`] needs besides the buckets, in one
    /// store round trip: pending authorizations, whether `names` were
    /// certified at or after `since` (a renewal), paused identifiers.
    pub async fn order_facts(
        &self,
        account: AccountId,
        names: &[String],
        since: i64,
    ) -> Result<OrderLimitFacts, LimitError> {
        let idents = normalize_identifiers(
            &names
                .iter()
                .map(|n| authz_identifier(n))
                .collect::<Vec<_>>(),
        );
        Ok(self
            .store
            .order_limit_facts(
                account,
                &idents,
                &fqdn_set_hash(names),
                since,
                self.clock.unix(),
            )
            .await?)
    }

    /// Run a batch: one atomic round trip. Duplicate keys keep their first
    /// transaction. Allowed: what was spent; denied: the strictest limit.
    pub async fn transact(&self, mut txns: Vec<BucketTxn>) -> Result<Spent, LimitError> {
        let mut seen = std::collections::HashSet::new();
        txns.retain(|t| seen.insert(t.key.clone()));
        if txns.is_empty() {
            return Ok(Spent::none());
        }
        let now = self.now_ns();
        let decisions = self.store.spend_buckets(&txns, now).await?;
        if decisions.len() != txns.len() {
            return Err(LimitError::Unavailable(Problem::internal(format!(
                "rate-limit store answered {} decisions for {} transactions",
                decisions.len(),
                txns.len()
            ))));
        }
        if let Some(d) = strictest_denial(&txns, &decisions, now, &self.docs_url) {
            tracing::info!(
                limit = d.limit.as_str(),
                key = %d.key,
                retry_after = d.retry_after_secs,
                "rate limit refused a request"
            );
            self.count_refusal(d.limit);
            return Err(LimitError::Denied(Box::new(d)));
        }
        let info = most_constrained(&txns, &decisions);
        let spent = txns
            .into_iter()
            .zip(&decisions)
            .filter(|(t, d)| t.spends() && t.cost > 0 && d.allowed)
            .map(|(t, _)| t)
            .collect();
        Ok(Spent { txns: spent, info })
    }

    /// Give back what `spent` took (never above a full bucket).
    pub async fn refund(&self, spent: &Spent) -> Result<(), Problem> {
        if spent.txns.is_empty() {
            return Ok(());
        }
        self.store
            .refund_buckets(&spent.txns, self.now_ns())
            .await?;
        Ok(())
    }
}

/// Boulder's rule: denied beats allowed, then the longest wait wins, then
/// the fewest tokens left. Spend-only transactions never decide.
fn strictest_denial(
    txns: &[BucketTxn],
    decisions: &[Decision],
    now: i64,
    docs_url: &str,
) -> Option<Denial> {
    let (t, d) = txns
        .iter()
        .zip(decisions)
        .filter(|(t, d)| t.checks() && !d.allowed)
        .max_by(|(_, a), (_, b)| {
            a.retry_in_ns
                .cmp(&b.retry_in_ns)
                .then(b.remaining.cmp(&a.remaining))
        })?;
    Some(Denial {
        limit: t.limit,
        key: t.display.clone(),
        params: t.params,
        retry_after_secs: retry_after_secs(d.retry_in_ns),
        retry_at_ns: now.saturating_add(d.retry_in_ns),
        remaining: d.remaining,
        docs_url: docs_url.to_string(),
    })
}

/// The checked limit with the fewest tokens left (ties: the one furthest
/// from full), for the rate-limit headers.
fn most_constrained(txns: &[BucketTxn], decisions: &[Decision]) -> Option<RateLimitInfo> {
    let (t, d) = txns
        .iter()
        .zip(decisions)
        .filter(|(t, _)| t.checks())
        .min_by(|(_, a), (_, b)| {
            a.remaining
                .cmp(&b.remaining)
                .then(b.reset_in_ns.cmp(&a.reset_in_ns))
        })?;
    Some(RateLimitInfo {
        limit: t.limit,
        quota: t.params.burst,
        window_secs: t.params.period_secs,
        remaining: d.remaining,
        reset_secs: retry_after_secs(d.reset_in_ns),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(limit: LimitName, burst: u64, mode: TxnMode) -> BucketTxn {
        BucketTxn {
            limit,
            key: bucket_key(limit, "k"),
            display: "k".into(),
            params: Limit::new(burst, burst, 3600).unwrap(),
            cost: 1,
            mode,
        }
    }

    fn dec(allowed: bool, remaining: u64, retry_s: i64, reset_s: i64) -> Decision {
        Decision {
            allowed,
            remaining,
            retry_in_ns: retry_s * 1_000_000_000,
            reset_in_ns: reset_s * 1_000_000_000,
            new_tat_ns: 0,
        }
    }

    #[test]
    fn strictest_is_the_longest_wait_and_spend_only_never_decides() {
        let txns = vec![
            txn(LimitName::NewOrdersPerAccount, 300, TxnMode::CheckAndSpend),
            txn(LimitName::CertificatesPerDomain, 50, TxnMode::CheckOnly),
            txn(LimitName::CertificatesPerFqdnSet, 5, TxnMode::SpendOnly),
        ];
        let ds = vec![
            dec(false, 0, 36, 100),
            dec(false, 0, 12_096, 100),
            dec(false, 0, 999_999, 100),
        ];
        let d = strictest_denial(&txns, &ds, 1_000_000_000, "u").unwrap();
        assert_eq!(d.limit, LimitName::CertificatesPerDomain);
        assert_eq!(d.retry_after_secs, 12_096);
        let p = d.to_problem();
        assert_eq!(p.status, 429);
        assert_eq!(p.retry_after, Some(12_096));
        let m = p.rate_limit.unwrap();
        assert_eq!(
            (m.limit.as_str(), m.key.as_str(), m.retry_after),
            ("certificatesPerDomain", "k", Some(12_096))
        );
        assert!(p.detail.contains("1970-01-01 03:21:37 UTC"), "{}", p.detail);

        let ds = vec![
            dec(true, 10, 0, 100),
            dec(true, 3, 0, 100),
            dec(false, 0, 9, 100),
        ];
        assert!(strictest_denial(&txns, &ds, 0, "u").is_none());
        let info = most_constrained(&txns, &ds).unwrap();
        assert_eq!(info.limit, LimitName::CertificatesPerDomain);
        assert_eq!(
            info.policy_header(),
            "\"certificatesPerDomain\";q=50;w=3600"
        );
        assert_eq!(info.header(), "\"certificatesPerDomain\";r=3;t=100");
    }

    #[test]
    fn paused_problem_says_how_to_unpause_without_retry_after() {
        let e = LimitError::Paused {
            account: AccountId(12),
            identifiers: vec!["a.example".into(), "b.example".into()],
            docs_url: "https://ca/docs".into(),
        };
        let p = e.to_problem();
        assert_eq!(p.status, 429);
        assert_eq!(p.retry_after, None);
        assert!(
            p.detail.contains("cairn admin unpause --account 12"),
            "{}",
            p.detail
        );
        assert!(p.detail.contains("a.example, b.example"));
        assert_eq!(
            p.rate_limit.unwrap().limit,
            "consecutiveAuthorizationFailures"
        );
    }

    #[test]
    fn wildcards_count_against_their_base_name() {
        assert_eq!(authz_identifier("*.Example.com"), "example.com");
        assert_eq!(authz_identifier("www.example.com"), "www.example.com");
    }
}
