//! Storage authority: the only code that speaks SQL. It makes no policy
//! decisions: the RA decides, the `Store` records. Writes that belong
//! together happen in one transaction; uniqueness that matters (one
//! certificate per order, one use per nonce, one account per key) is a
//! database constraint.

mod exec;
mod limits;
mod postgres;
mod sql;
mod sqlite;
mod timed;

pub use sqlite::{track_writes, tracked_writes};

pub(crate) use timed::timed;

pub(crate) use crate::config::SqliteSynchronous;
use crate::core::limits::LimitStore;
use crate::core::*;
use async_trait::async_trait;
use std::sync::Arc;

/// Which certificates an operator means (`cairn admin certs`). Every given
/// field must match; at least one is required by the callers.
#[derive(Debug, Clone, Default)]
pub struct CertQuery {
    pub serial: Option<String>,
    /// A dNSName in the certificate, exactly (lower-cased).
    pub name: Option<String>,
    /// A dNSName equal to this domain or under it (`*.d`, `x.d`).
    pub domain: Option<String>,
    pub account: Option<AccountId>,
    /// Issued strictly before this time.
    pub issued_before: Option<i64>,
    /// Most results returned (newest first); `mark_renew_early` ignores it.
    pub limit: u32,
}

/// A new authorization to create with an order.
#[derive(Debug, Clone)]
pub struct NewAuthz {
    pub identifier_type: IdentifierType,
    pub identifier: String,
    pub profile: String,
    pub wildcard: bool,
    pub expires: i64,
    pub challenges: Vec<(ChallengeType, String)>,
}

/// An order's authorization: one to reuse, or one to create.
#[derive(Debug, Clone)]
pub enum OrderAuthz {
    Reuse(AuthzId),
    New(NewAuthz),
}

#[derive(Debug, Clone)]
pub struct NewOrder {
    pub account_id: AccountId,
    pub expires: i64,
    pub identifiers: Vec<Identifier>,
    pub authzs: Vec<OrderAuthz>,
    /// RFC 9773 `replaces`: the serial of a certificate the RA checked.
    /// The store refuses it (`Conflict::AlreadyReplaced`) while another live order
    /// replaces the same certificate.
    pub replaces: Option<String>,
    /// Rate-limit tokens the order reserved (JSON), kept until it issues
    /// (consumed) or fails (given back).
    pub reservation: Option<String>,
    pub profile: String,
    pub now: i64,
}

/// An account as `cairn admin load-history` writes it (see `PastIssuance`).
#[derive(Debug, Clone)]
pub struct PastAccount {
    pub jwk: String,
    pub thumbprint: String,
    pub created_at: i64,
}

/// A certificate issued in the past with what led to it: a valid order,
/// one valid authorization per name (each with its challenges, the one
/// that validated it valid, the others still pending, as an issuance
/// leaves them), the certificate and its name rows. `cairn admin
/// load-history` writes these in bulk, bypassing ACME, so that a benchmark
/// can run against a store that has issued a million certificates.
#[derive(Debug, Clone)]
pub struct PastIssuance {
    pub profile: String,
    pub ordered_at: i64,
    pub order_expires: i64,
    pub authz_expires: i64,
    /// Per authorization, in `cert.names` order: the challenges offered
    /// (type, token); the first is the one that validated. Empty: the
    /// authorizations are gone (retention purged them).
    pub challenges: Vec<Vec<(ChallengeType, String)>>,
    /// Per authorization: the validation record (JSON) of the challenge
    /// that validated it.
    pub records: Vec<String>,
    /// The certificate; its `order_id` is ignored (the store assigns the
    /// order a fresh id).
    pub cert: Certificate,
}

/// The outcome of a key change.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyChange {
    Changed,
    /// The new key already belongs to this account.
    InUse(AccountId),
}

pub type DynStore = Arc<dyn Store>;

/// Rows a purge removed (or, counted dry, would remove), by table
/// (`crate::retention` says what goes and why).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Purged {
    pub orders: u64,
    pub authzs: u64,
    pub challenges: u64,
    pub order_authzs: u64,
    pub used_nonces: u64,
    pub rate_limit_buckets: u64,
}

impl Purged {
    /// (table, rows), in the order a purge deletes them.
    pub fn tables(&self) -> [(&'static str, u64); 6] {
        [
            ("orders", self.orders),
            ("order_authzs", self.order_authzs),
            ("authzs", self.authzs),
            ("challenges", self.challenges),
            ("used_nonces", self.used_nonces),
            ("rate_limit_buckets", self.rate_limit_buckets),
        ]
    }

    pub fn add(&mut self, o: Purged) {
        self.orders += o.orders;
        self.authzs += o.authzs;
        self.challenges += o.challenges;
        self.order_authzs += o.order_authzs;
        self.used_nonces += o.used_nonces;
        self.rate_limit_buckets += o.rate_limit_buckets;
    }
}

#[async_trait]
pub trait Store: LimitStore + Send + Sync {
    /// One trivial round trip: is the database there (`/ready`)?
    async fn ping(&self) -> Result<(), StoreError>;
    /// The connection pool: (open connections, idle ones).
    fn pool_stats(&self) -> (u32, usize);
    /// Wait until the writes an HTTP request made or read are committed
    /// (`batch` from [`track_writes`]); an error if they were rolled back.
    /// The request is answered only then.
    async fn durable(&self, _batch: u64) -> Result<(), StoreError> {
        Ok(())
    }
    /// Close every pooled connection (at shutdown), waiting for those in use.
    async fn close(&self);
    /// Record a nonce as used; false if it was used before.
    async fn redeem_nonce(&self, nonce: &[u8], expires: i64) -> Result<bool, StoreError>;
    /// Forget up to `limit` used nonces that expired before `before`.
    async fn prune_nonces(&self, before: i64, limit: u32) -> Result<u64, StoreError>;
    /// The named secret, created from `fresh` if absent (first writer wins).
    async fn secret(&self, name: &str, fresh: &[u8]) -> Result<Vec<u8>, StoreError>;

    /// Create the account for this key, or return the existing one
    /// (`false` when it already existed). With `eab_kid`, a new account is
    /// bound by that external account key in the same transaction, which
    /// counts the use: the key must be unrevoked, unexpired at `now`, and
    /// unused unless reusable, or nothing is created
    /// (`Conflict::EabKeyUnusable`), whatever runs concurrently.
    async fn create_account(
        &self,
        jwk: &str,
        thumbprint: &str,
        contact: &[String],
        eab_kid: Option<&str>,
        now: i64,
    ) -> Result<(Account, bool), StoreError>;
    async fn account(&self, id: AccountId) -> Result<Option<Account>, StoreError>;
    /// The account with this id, and whether this call spent the nonce
    /// (false: it was used before), together: an authenticated POST's one
    /// round trip before its own work (one statement on PostgreSQL). The
    /// nonce is spent whether or not the account exists.
    async fn account_spending_nonce(
        &self,
        id: AccountId,
        nonce: &[u8],
        expires: i64,
    ) -> Result<(Option<Account>, bool), StoreError>;
    async fn account_by_thumbprint(&self, thumbprint: &str) -> Result<Option<Account>, StoreError>;
    async fn update_account_contact(
        &self,
        id: AccountId,
        contact: &[String],
    ) -> Result<(), StoreError>;
    /// Deactivate the account and its pending/valid authorizations.
    async fn deactivate_account(&self, id: AccountId) -> Result<(), StoreError>;
    async fn change_account_key(
        &self,
        id: AccountId,
        old_thumbprint: &str,
        jwk: &str,
        thumbprint: &str,
    ) -> Result<KeyChange, StoreError>;

    /// Store an external account key; an existing key with this kid gets
    /// the new secret and terms and is unrevoked (its bindings are kept).
    async fn put_eab_key(&self, key: &EabKey) -> Result<(), StoreError>;
    async fn eab_key(&self, kid: &str) -> Result<Option<EabKey>, StoreError>;
    /// Every external account key, oldest first.
    async fn eab_keys(&self) -> Result<Vec<EabKey>, StoreError>;
    /// Revoke the key: it binds no more accounts (those it bound stay).
    /// False if there is no such unrevoked key.
    async fn revoke_eab_key(&self, kid: &str, now: i64) -> Result<bool, StoreError>;

    async fn create_order(&self, order: NewOrder) -> Result<Order, StoreError>;
    async fn order(&self, id: OrderId) -> Result<Option<Order>, StoreError>;
    /// Order ids of an account, ascending, after `after`, at most `limit`.
    async fn account_orders(
        &self,
        account: AccountId,
        after: Option<OrderId>,
        limit: u32,
    ) -> Result<Vec<OrderId>, StoreError>;
    /// A valid, unexpired (beyond `min_expires`) authorization to reuse.
    /// A valid authorization of this account for this identifier, created
    /// under `profile` (any, if `None`), that lives past `min_expires`.
    async fn reusable_authz(
        &self,
        account: AccountId,
        identifier: (IdentifierType, &str, bool),
        profile: Option<&str>,
        min_expires: i64,
    ) -> Result<Option<AuthzId>, StoreError>;
    async fn authz(&self, id: AuthzId) -> Result<Option<Authz>, StoreError>;
    /// The authorization challenge `id` belongs to, with its challenges
    /// (one statement: what a challenge request reads).
    async fn authz_of_challenge(&self, id: ChallengeId) -> Result<Option<Authz>, StoreError>;
    async fn authzs(&self, ids: &[AuthzId]) -> Result<Vec<Authz>, StoreError>;
    async fn deactivate_authz(&self, id: AuthzId) -> Result<bool, StoreError>;
    async fn challenge(&self, id: ChallengeId) -> Result<Option<Challenge>, StoreError>;
    /// Move a pending challenge of a pending, unexpired authorization to
    /// processing, unless another challenge of it already is. True if moved.
    async fn start_challenge(&self, id: ChallengeId, now: i64) -> Result<bool, StoreError>;
    /// Record a validation result on the challenge and its authorization.
    /// False if another run recorded one first (nothing changed).
    async fn finish_challenge(
        &self,
        id: ChallengeId,
        result: Result<String, ErrorDoc>,
        now: i64,
        valid_authz_expires: i64,
    ) -> Result<bool, StoreError>;
    /// Take over validations whose lease ran out: challenges processing
    /// since before `stale_before` (their instance died or restarted) get a
    /// new lease from `now`. Each is claimed by exactly one caller.
    async fn claim_stale_challenges(
        &self,
        stale_before: i64,
        now: i64,
    ) -> Result<Vec<ChallengeId>, StoreError>;

    /// Move a pending order whose authorizations are all valid and unexpired
    /// to processing. True if this call moved it.
    async fn begin_finalize(&self, id: OrderId, now: i64) -> Result<bool, StoreError>;
    /// Store the certificate and make the order valid, in one transaction.
    async fn complete_order(
        &self,
        id: OrderId,
        cert: &Certificate,
        now: i64,
    ) -> Result<(), StoreError>;
    async fn fail_order(&self, id: OrderId, error: &ErrorDoc, now: i64) -> Result<(), StoreError>;
    /// Claim the order's reserved rate-limit tokens (None if it has none
    /// or another caller claimed them): exactly one caller gets them.
    async fn take_reservation(&self, id: OrderId) -> Result<Option<String>, StoreError>;
    /// Pending orders that use this authorization and still hold a
    /// reservation (one already finalizing keeps its tokens).
    async fn reservations_of_authz(&self, authz: AuthzId) -> Result<Vec<OrderId>, StoreError>;
    /// Orders holding a reservation that will never issue: invalid, failed
    /// authorizations, expired, or processing since before `stale_before`.
    async fn dead_reservations(
        &self,
        now: i64,
        stale_before: i64,
        limit: u32,
    ) -> Result<Vec<OrderId>, StoreError>;
    async fn certificate(&self, serial: &str) -> Result<Option<Certificate>, StoreError>;
    /// Mark a certificate revoked; false if it already was. With
    /// `block_key` (the certificate's SPKI hash, for a proven keyCompromise)
    /// the key is blocked and every other unrevoked certificate of that key
    /// is revoked for keyCompromise, in the same transaction; a certificate
    /// revoked earlier for another reason is then re-revoked with `reason`
    /// (its revocation time kept), false only if it already had it.
    async fn revoke_certificate(
        &self,
        serial: &str,
        reason: i64,
        now: i64,
        block_key: Option<&[u8]>,
    ) -> Result<bool, StoreError>;
    /// Whether this SPKI hash was blocked by a keyCompromise revocation.
    async fn key_blocked(&self, spki_sha256: &[u8]) -> Result<bool, StoreError>;
    /// Certificates matching the query, newest first.
    async fn find_certificates(&self, q: &CertQuery) -> Result<Vec<Certificate>, StoreError>;
    /// Mark the matching unexpired, unrevoked certificates for early
    /// renewal (those not marked yet); returns how many were marked.
    async fn mark_renew_early(&self, q: &CertQuery, now: i64) -> Result<u64, StoreError>;
    /// Certificates stored before names were recorded (schema 0003): up to
    /// `limit` of (serial, DER), for `set_certificate_names`.
    async fn certificates_without_names(
        &self,
        limit: u32,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Record what an older certificate certifies: its names (and so its
    /// identifier-set hash and name index) and its key's SPKI hash.
    async fn set_certificate_names(
        &self,
        serial: &str,
        names: &[String],
        spki_sha256: Option<&[u8]>,
    ) -> Result<(), StoreError>;
    /// Revoked certificates whose not_after is after `not_after_after`
    /// (expired ones leave the CRL), by serial.
    async fn revoked_certificates(
        &self,
        not_after_after: i64,
    ) -> Result<Vec<RevokedEntry>, StoreError>;
    /// `RevocationCounts` of what `revoked_certificates` would list.
    async fn revocation_counts(&self, not_after_after: i64)
        -> Result<RevocationCounts, StoreError>;
    /// Retention, one bounded batch: up to `limit` orders that never
    /// issued (not valid, no certificate) and expired before
    /// `expired_before`, with their authorization links; an order still
    /// holding rate-limit tokens waits until the reservation sweeper gave
    /// them back.
    async fn purge_orders(&self, expired_before: i64, limit: u32) -> Result<Purged, StoreError>;
    /// Retention, one bounded batch: up to `limit` authorizations that
    /// expired before `expired_before`, with their challenges and order
    /// links, unless an order that is not valid and not yet expired before
    /// `expired_before` links them (its status is derived from them).
    async fn purge_authzs(&self, expired_before: i64, limit: u32) -> Result<Purged, StoreError>;
    /// What `purge_orders`, `purge_authzs`, `prune_nonces` (`nonces_before`)
    /// and `prune_buckets` (`buckets_before`, nanoseconds) would remove now,
    /// all batches together.
    async fn purgeable(
        &self,
        expired_before: i64,
        nonces_before: i64,
        buckets_before: i64,
    ) -> Result<Purged, StoreError>;
    /// Benchmarking (`cairn admin load-history`): insert these accounts,
    /// in one transaction; their ids, in order.
    async fn insert_past_accounts(
        &self,
        accounts: &[PastAccount],
    ) -> Result<Vec<AccountId>, StoreError>;
    /// Benchmarking (`cairn admin load-history`): insert these issuances
    /// of existing accounts, in one transaction of multi-row statements.
    async fn insert_past_issuances(&self, batch: &[PastIssuance]) -> Result<(), StoreError>;
    async fn latest_crl(&self) -> Result<Option<StoredCrl>, StoreError>;
    /// Insert a CRL; false if one with this number exists (another
    /// instance signed it first).
    async fn insert_crl(&self, crl: &StoredCrl) -> Result<bool, StoreError>;
}

/// Open the store named by the database URL, running migrations, with
/// full durability.
pub async fn open(url: &str, max_connections: u32) -> anyhow::Result<DynStore> {
    open_with(url, max_connections, SqliteSynchronous::Full).await
}

/// `open`, with SQLite's commits as durable as `sync` says.
pub(crate) async fn open_with(
    url: &str,
    max_connections: u32,
    sync: SqliteSynchronous,
) -> anyhow::Result<DynStore> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(
            sql::SqlStore::<sqlite::Sqlite>::open(url, max_connections, sync).await?,
        ))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            sql::SqlStore::<postgres::Postgres>::open(url, max_connections, sync).await?,
        ))
    } else {
        anyhow::bail!(
            "database.url {:?}: expected sqlite:, postgres:// or postgresql://",
            crate::config::redact_url(url)
        )
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Database(format!("encoding JSON: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::corrupt(format!("JSON: {e}")))
}

fn parse_name<T: std::str::FromStr<Err = UnknownName>>(s: &str) -> Result<T, StoreError> {
    s.parse().map_err(StoreError::corrupt)
}
