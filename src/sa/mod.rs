//! Storage authority: the only code that speaks SQL. It makes no policy
//! decisions: the RA decides, the `Store` records. Writes that belong
//! together happen in one transaction; uniqueness that matters (one
//! certificate per order, one use per nonce, one account per key) is a
//! database constraint.

mod limits;
mod postgres;
mod sqlite;

use crate::problem::{Identifier, Problem};
use crate::va::ChallengeType;
use async_trait::async_trait;
use std::sync::Arc;

pub use limits::*;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

macro_rules! id_type {
    ($($name:ident),*) => {$(
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub i64);
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    )*};
}
id_type!(AccountId, OrderId, AuthzId, ChallengeId);

macro_rules! status_enum {
    ($name:ident { $($variant:ident => $s:literal),* $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
        pub enum $name { $(#[serde(rename = $s)] $variant),* }
        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),* }
            }
            pub fn parse(s: &str) -> Result<$name, Problem> {
                match s {
                    $($s => Ok($name::$variant),)*
                    other => Err(Problem::internal(format!(
                        concat!("bad ", stringify!($name), " in database: {:?}"), other))),
                }
            }
        }
    };
}
status_enum!(AccountStatus { Valid => "valid", Deactivated => "deactivated", Revoked => "revoked" });
status_enum!(OrderStatus { Pending => "pending", Ready => "ready", Processing => "processing", Valid => "valid", Invalid => "invalid" });
status_enum!(AuthzStatus { Pending => "pending", Valid => "valid", Invalid => "invalid", Deactivated => "deactivated", Expired => "expired", Revoked => "revoked" });
status_enum!(ChallengeStatus { Pending => "pending", Processing => "processing", Valid => "valid", Invalid => "invalid" });

#[derive(Debug, Clone)]
pub struct Account {
    pub id: AccountId,
    pub thumbprint: String,
    /// The public JWK, JSON.
    pub jwk: String,
    pub contact: Vec<String>,
    pub status: AccountStatus,
    pub created_at: i64,
}

/// An order as stored; `status` is the stored status, which the RA refines
/// (pending → ready/invalid from its authorizations and expiry).
#[derive(Debug, Clone)]
pub struct Order {
    pub id: OrderId,
    pub account_id: AccountId,
    pub status: OrderStatus,
    pub expires: i64,
    pub identifiers: Vec<Identifier>,
    pub authz_ids: Vec<AuthzId>,
    pub error: Option<Problem>,
    pub cert_serial: Option<String>,
    /// RFC 9773: serial of the certificate this order replaces.
    pub replaces: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone)]
pub struct Authz {
    pub id: AuthzId,
    pub account_id: AccountId,
    /// The identifier value without any `*.` prefix.
    pub identifier: String,
    pub wildcard: bool,
    pub status: AuthzStatus,
    pub expires: i64,
    pub challenges: Vec<Challenge>,
}

#[derive(Debug, Clone)]
pub struct Challenge {
    pub id: ChallengeId,
    pub authz_id: AuthzId,
    pub kind: ChallengeType,
    pub token: String,
    pub status: ChallengeStatus,
    pub validated: Option<i64>,
    pub error: Option<Problem>,
    /// Validation records, JSON array.
    pub records: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Certificate {
    pub serial: String,
    pub account_id: AccountId,
    pub order_id: OrderId,
    pub der: Vec<u8>,
    pub chain_pem: String,
    pub not_before: i64,
    pub not_after: i64,
    pub issued_at: i64,
    pub revoked_at: Option<i64>,
    pub revoked_reason: Option<i64>,
    /// The dNSNames certified, as ordered in the certificate.
    pub names: Vec<String>,
    /// When an operator asked for early renewal (the ARI window moves into
    /// the past).
    pub renew_early_at: Option<i64>,
    /// `spki_hash` of the certified key.
    pub spki_sha256: Vec<u8>,
}

/// A revoked, unexpired certificate as a CRL lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct RevokedEntry {
    /// Lower-case hex of the DER serial's content bytes.
    pub serial: String,
    pub revoked_at: i64,
    pub reason: i64,
}

/// A signed CRL of the intermediate.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCrl {
    pub number: i64,
    pub this_update: i64,
    pub next_update: i64,
    pub der: Vec<u8>,
}

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

/// The hash that identifies a set of identifiers whatever their order or
/// case: SHA-256 (hex) of the lower-cased, de-duplicated, sorted names
/// joined with `,`. Renewal detection and the exact-set limit use it.
pub fn identifier_set_hash<S: AsRef<str>>(names: &[S]) -> String {
    use sha2::{Digest, Sha256};
    let mut v: Vec<String> = names
        .iter()
        .map(|n| n.as_ref().to_ascii_lowercase())
        .collect();
    v.sort_unstable();
    v.dedup();
    hex::encode(Sha256::digest(v.join(",").as_bytes()))
}

/// SHA-256 of a DER SubjectPublicKeyInfo: how blocked keys are recorded.
pub fn spki_hash(spki_der: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    Sha256::digest(spki_der).to_vec()
}

/// A new authorization to create with an order.
#[derive(Debug, Clone)]
pub struct NewAuthz {
    pub identifier: String,
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
    /// The store refuses it (`alreadyReplaced`) while another live order
    /// replaces the same certificate.
    pub replaces: Option<String>,
    /// Rate-limit tokens the order reserved (JSON), kept until it issues
    /// (consumed) or fails (given back).
    pub reservation: Option<String>,
    pub now: i64,
}

/// The outcome of a key change.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyChange {
    Changed,
    /// The new key already belongs to this account.
    InUse(AccountId),
}

/// An order that stayed `processing` this long was interrupted (a crash
/// during issuance): it reads as invalid, frees the certificate it
/// replaces, and gives its reserved rate-limit tokens back.
pub const STALE_PROCESSING_SECS: i64 = 120;

pub type DynStore = Arc<dyn Store>;

#[async_trait]
pub trait Store: LimitStore + Send + Sync {
    /// One trivial round trip: is the database there (`/ready`)?
    async fn ping(&self) -> Result<(), Problem>;
    /// The connection pool: (open connections, idle ones).
    fn pool_stats(&self) -> (u32, usize);
    /// Close every pooled connection (at shutdown), waiting for those in use.
    async fn close(&self);
    /// Record a nonce as used; false if it was used before.
    async fn redeem_nonce(&self, nonce: &[u8], expires: i64) -> Result<bool, Problem>;
    async fn prune_nonces(&self, now: i64) -> Result<u64, Problem>;
    /// The named secret, created from `fresh` if absent (first writer wins).
    async fn secret(&self, name: &str, fresh: &[u8]) -> Result<Vec<u8>, Problem>;

    /// Create the account for this key, or return the existing one
    /// (`false` when it already existed).
    async fn create_account(
        &self,
        jwk: &str,
        thumbprint: &str,
        contact: &[String],
        now: i64,
    ) -> Result<(Account, bool), Problem>;
    async fn account(&self, id: AccountId) -> Result<Option<Account>, Problem>;
    /// The account with this id, and whether this call spent the nonce
    /// (false: it was used before), together: an authenticated POST's one
    /// round trip before its own work (one statement on PostgreSQL). The
    /// nonce is spent whether or not the account exists.
    async fn account_spending_nonce(
        &self,
        id: AccountId,
        nonce: &[u8],
        expires: i64,
    ) -> Result<(Option<Account>, bool), Problem>;
    async fn account_by_thumbprint(&self, thumbprint: &str) -> Result<Option<Account>, Problem>;
    async fn update_account_contact(
        &self,
        id: AccountId,
        contact: &[String],
    ) -> Result<(), Problem>;
    /// Deactivate the account and its pending/valid authorizations.
    async fn deactivate_account(&self, id: AccountId) -> Result<(), Problem>;
    async fn change_account_key(
        &self,
        id: AccountId,
        old_thumbprint: &str,
        jwk: &str,
        thumbprint: &str,
    ) -> Result<KeyChange, Problem>;

    async fn create_order(&self, order: NewOrder) -> Result<Order, Problem>;
    async fn order(&self, id: OrderId) -> Result<Option<Order>, Problem>;
    /// Order ids of an account, ascending, after `after`, at most `limit`.
    async fn account_orders(
        &self,
        account: AccountId,
        after: Option<OrderId>,
        limit: u32,
    ) -> Result<Vec<OrderId>, Problem>;
    /// A valid, unexpired (beyond `min_expires`) authorization to reuse.
    async fn reusable_authz(
        &self,
        account: AccountId,
        identifier: &str,
        wildcard: bool,
        min_expires: i64,
    ) -> Result<Option<AuthzId>, Problem>;
    async fn authz(&self, id: AuthzId) -> Result<Option<Authz>, Problem>;
    async fn authzs(&self, ids: &[AuthzId]) -> Result<Vec<Authz>, Problem>;
    async fn deactivate_authz(&self, id: AuthzId) -> Result<bool, Problem>;
    async fn challenge(&self, id: ChallengeId) -> Result<Option<Challenge>, Problem>;
    /// Move a pending challenge of a pending, unexpired authorization to
    /// processing, unless another challenge of it already is. True if moved.
    async fn start_challenge(&self, id: ChallengeId, now: i64) -> Result<bool, Problem>;
    /// Record a validation result on the challenge and its authorization.
    /// False if another run recorded one first (nothing changed).
    async fn finish_challenge(
        &self,
        id: ChallengeId,
        result: Result<String, Problem>,
        now: i64,
        valid_authz_expires: i64,
    ) -> Result<bool, Problem>;
    /// Take over validations whose lease ran out: challenges processing
    /// since before `stale_before` (their instance died or restarted) get a
    /// new lease from `now`. Each is claimed by exactly one caller.
    async fn claim_stale_challenges(
        &self,
        stale_before: i64,
        now: i64,
    ) -> Result<Vec<ChallengeId>, Problem>;

    /// Move a pending order whose authorizations are all valid and unexpired
    /// to processing. True if this call moved it.
    async fn begin_finalize(&self, id: OrderId, now: i64) -> Result<bool, Problem>;
    /// Store the certificate and make the order valid, in one transaction.
    async fn complete_order(
        &self,
        id: OrderId,
        cert: &Certificate,
        now: i64,
    ) -> Result<(), Problem>;
    async fn fail_order(&self, id: OrderId, error: &Problem, now: i64) -> Result<(), Problem>;
    /// Claim the order's reserved rate-limit tokens (None if it has none
    /// or another caller claimed them): exactly one caller gets them.
    async fn take_reservation(&self, id: OrderId) -> Result<Option<String>, Problem>;
    /// Pending orders that use this authorization and still hold a
    /// reservation (one already finalizing keeps its tokens).
    async fn reservations_of_authz(&self, authz: AuthzId) -> Result<Vec<OrderId>, Problem>;
    /// Orders holding a reservation that will never issue: invalid, failed
    /// authorizations, expired, or processing since before `stale_before`.
    async fn dead_reservations(
        &self,
        now: i64,
        stale_before: i64,
        limit: u32,
    ) -> Result<Vec<OrderId>, Problem>;
    async fn certificate(&self, serial: &str) -> Result<Option<Certificate>, Problem>;
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
    ) -> Result<bool, Problem>;
    /// Whether this SPKI hash was blocked by a keyCompromise revocation.
    async fn key_blocked(&self, spki_sha256: &[u8]) -> Result<bool, Problem>;
    /// Certificates matching the query, newest first.
    async fn find_certificates(&self, q: &CertQuery) -> Result<Vec<Certificate>, Problem>;
    /// Mark the matching unexpired, unrevoked certificates for early
    /// renewal (those not marked yet); returns how many were marked.
    async fn mark_renew_early(&self, q: &CertQuery, now: i64) -> Result<u64, Problem>;
    /// Certificates stored before names were recorded (schema 0003): up to
    /// `limit` of (serial, DER), for `set_certificate_names`.
    async fn certificates_without_names(
        &self,
        limit: u32,
    ) -> Result<Vec<(String, Vec<u8>)>, Problem>;
    /// Record what an older certificate certifies: its names (and so its
    /// identifier-set hash and name index) and its key's SPKI hash.
    async fn set_certificate_names(
        &self,
        serial: &str,
        names: &[String],
        spki_sha256: Option<&[u8]>,
    ) -> Result<(), Problem>;
    /// Revoked certificates whose not_after is after `not_after_after`
    /// (expired ones leave the CRL), by serial.
    async fn revoked_certificates(
        &self,
        not_after_after: i64,
    ) -> Result<Vec<RevokedEntry>, Problem>;
    async fn latest_crl(&self) -> Result<Option<StoredCrl>, Problem>;
    /// Insert a CRL; false if one with this number exists (another
    /// instance signed it first).
    async fn insert_crl(&self, crl: &StoredCrl) -> Result<bool, Problem>;
}

/// Open the store named by the database URL, running migrations.
pub async fn open(url: &str, max_connections: u32) -> anyhow::Result<DynStore> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url, max_connections).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::open(url, max_connections).await?))
    } else {
        anyhow::bail!(
            "database.url {:?}: expected sqlite:, postgres:// or postgresql://",
            crate::config::redact_url(url)
        )
    }
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<String, Problem> {
    serde_json::to_string(v).map_err(Problem::internal)
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, Problem> {
    serde_json::from_str(s).map_err(|e| Problem::internal(format!("bad JSON in database: {e}")))
}
