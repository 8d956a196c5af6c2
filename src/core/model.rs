//! The resources as stored: ids, rows and their statuses. Plain data, no
//! I/O; every status rule is in [`super::lifecycle`].

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! id_type {
    ($($name:ident),*) => {$(
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub i64);
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    )*};
}
id_type!(AccountId, OrderId, AuthzId, ChallengeId);

/// A name the enum does not know (read from the database or a request).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?}")]
pub struct UnknownName {
    pub what: &'static str,
    pub name: String,
}

/// `FromStr` through serde, so the names are written once (the
/// `#[serde(rename...)]` of each enum); `as_str` is checked against them
/// in the tests below.
macro_rules! serde_from_str {
    ($($name:ident),*) => {$(
        impl FromStr for $name {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<$name, UnknownName> {
                use serde::de::IntoDeserializer;
                let d: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
                    s.into_deserializer();
                $name::deserialize(d).map_err(|_| UnknownName {
                    what: stringify!($name),
                    name: s.to_owned(),
                })
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
serde_from_str!(
    AccountStatus,
    OrderStatus,
    AuthzStatus,
    ChallengeStatus,
    ChallengeType,
    IdentifierType
);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountStatus {
    Valid,
    Deactivated,
    Revoked,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Valid => "valid",
            AccountStatus::Deactivated => "deactivated",
            AccountStatus::Revoked => "revoked",
        }
    }
}

/// RFC 8555 §7.1.6. `Ready` is never stored: it is derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Pending,
    Ready,
    Processing,
    Valid,
    Invalid,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Ready => "ready",
            OrderStatus::Processing => "processing",
            OrderStatus::Valid => "valid",
            OrderStatus::Invalid => "invalid",
        }
    }
}

/// RFC 8555 §7.1.6. `Expired` is never stored: it is derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthzStatus {
    Pending,
    Valid,
    Invalid,
    Deactivated,
    Expired,
    Revoked,
}

impl AuthzStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthzStatus::Pending => "pending",
            AuthzStatus::Valid => "valid",
            AuthzStatus::Invalid => "invalid",
            AuthzStatus::Deactivated => "deactivated",
            AuthzStatus::Expired => "expired",
            AuthzStatus::Revoked => "revoked",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChallengeStatus {
    Pending,
    Processing,
    Valid,
    Invalid,
}

impl ChallengeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeStatus::Pending => "pending",
            ChallengeStatus::Processing => "processing",
            ChallengeStatus::Valid => "valid",
            ChallengeStatus::Invalid => "invalid",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChallengeType {
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "dns-01")]
    Dns01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// draft-ietf-acme-dns-persist-01: a standing TXT record at
    /// `_validation-persist.<name>` naming the CA and the account.
    #[serde(rename = "dns-persist-01")]
    DnsPersist01,
}

impl ChallengeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeType::Http01 => "http-01",
            ChallengeType::Dns01 => "dns-01",
            ChallengeType::TlsAlpn01 => "tls-alpn-01",
            ChallengeType::DnsPersist01 => "dns-persist-01",
        }
    }
}

/// The identifier types Cairn issues for: DNS names (RFC 8555) and IP
/// addresses (RFC 8738).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentifierType {
    Dns,
    Ip,
}

impl IdentifierType {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentifierType::Dns => "dns",
            IdentifierType::Ip => "ip",
        }
    }
}

/// An identifier as it appears in orders and problem subproblems.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identifier {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

impl Identifier {
    pub fn dns(value: impl Into<String>) -> Self {
        Identifier::of(IdentifierType::Dns, value)
    }

    pub fn of(kind: IdentifierType, value: impl Into<String>) -> Self {
        Identifier {
            kind: kind.as_str().into(),
            value: value.into(),
        }
    }
}

/// A problem document (RFC 7807) as stored with an order or a challenge:
/// the JSON the RA wrote from a `Problem`, which it reads back as one. The
/// model holds it as data so that nothing below the RA depends on the
/// error type of the protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorDoc(pub serde_json::Value);

#[derive(Debug, Clone)]
pub struct Account {
    pub id: AccountId,
    pub thumbprint: String,
    /// The public JWK, JSON.
    pub jwk: String,
    pub contact: Vec<String>,
    pub status: AccountStatus,
    pub created_at: i64,
    /// The external account key that bound it (RFC 8555 §7.3.4), if any.
    pub eab_kid: Option<String>,
}

/// An external account binding key (RFC 8555 §7.3.4), handed to a
/// subscriber out of band (`cairn admin eab create`).
#[derive(Debug, Clone, PartialEq)]
pub struct EabKey {
    pub kid: String,
    /// The HMAC key the binding's MAC is made with.
    pub hmac_key: Vec<u8>,
    /// What accounts bound by it may order: exact names, or `*.domain` for
    /// any name below `domain` (wildcards included). Empty: anything.
    pub names: Vec<String>,
    pub created_at: i64,
    pub expires: Option<i64>,
    /// Binds any number of accounts; otherwise one.
    pub reusable: bool,
    pub revoked_at: Option<i64>,
    /// How many accounts it bound, and the first of them.
    pub bound_count: i64,
    pub first_account: Option<AccountId>,
}

impl EabKey {
    /// Whether an account bound by this key may order `identifier` (an
    /// identifier value, lower-case, `*.` for a wildcard).
    pub fn allows(&self, identifier: &str) -> bool {
        self.names.is_empty()
            || self.names.iter().any(|p| match p.strip_prefix('*') {
                Some(suffix) => identifier.ends_with(suffix),
                None => identifier == p,
            })
    }
}

/// An order as stored; `status` is the stored status, which
/// [`super::lifecycle::order_state`] refines (pending → ready/invalid from
/// its authorizations and expiry, processing → invalid when stale).
#[derive(Debug, Clone)]
pub struct Order {
    pub id: OrderId,
    pub account_id: AccountId,
    pub status: OrderStatus,
    pub expires: i64,
    pub identifiers: Vec<Identifier>,
    pub authz_ids: Vec<AuthzId>,
    pub error: Option<ErrorDoc>,
    pub cert_serial: Option<String>,
    /// RFC 9773: serial of the certificate this order replaces.
    pub replaces: Option<String>,
    /// The certificate profile; `""` for orders from before profiles,
    /// which mean the configured default.
    pub profile: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone)]
pub struct Authz {
    pub id: AuthzId,
    pub account_id: AccountId,
    pub identifier_type: IdentifierType,
    /// The identifier value without any `*.` prefix (an IP address in its
    /// canonical text form).
    pub identifier: String,
    pub wildcard: bool,
    /// The profile of the order that created it (see [`Order::profile`]).
    pub profile: String,
    pub status: AuthzStatus,
    pub expires: i64,
    pub challenges: Vec<Challenge>,
}

impl Authz {
    /// The identifier as ordered: `*.base` for wildcard authorizations.
    pub fn display_name(&self) -> String {
        if self.wildcard {
            format!("*.{}", self.identifier)
        } else {
            self.identifier.clone()
        }
    }
}

#[derive(Debug, Clone)]
pub struct Challenge {
    pub id: ChallengeId,
    pub authz_id: AuthzId,
    pub kind: ChallengeType,
    /// Empty for dns-persist-01, which has none (draft-ietf-acme-dns-persist-01 §3.1).
    pub token: String,
    pub status: ChallengeStatus,
    pub validated: Option<i64>,
    pub error: Option<ErrorDoc>,
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
    /// The dNSNames and IP addresses (canonical text) certified, as
    /// ordered in the certificate.
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
    /// What it was signed from; None for CRLs stored before the counts
    /// were (migration 0011).
    pub counts: Option<RevocationCounts>,
}

/// RFC 5280 §5.3.1 keyCompromise, the one reason a revoked certificate's
/// reason may still change to.
pub const KEY_COMPROMISE: i64 = 1;

/// The revoked certificates whose not_after is after a time: how many,
/// and how many of them for keyCompromise. A revocation only ever adds a
/// certificate or turns its reason into keyCompromise (`ra::record_revocation`),
/// so a set whose counts are unchanged is unchanged: the CRL check compares
/// these instead of holding every entry (BENCHMARKS.md, "History").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevocationCounts {
    pub entries: i64,
    pub key_compromises: i64,
}

impl RevocationCounts {
    pub fn of(entries: &[RevokedEntry]) -> RevocationCounts {
        RevocationCounts {
            entries: entries.len() as i64,
            key_compromises: entries
                .iter()
                .filter(|e| e.reason == KEY_COMPROMISE)
                .count() as i64,
        }
    }
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
pub(crate) fn spki_hash(spki_der: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    Sha256::digest(spki_der).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `as_str`, `FromStr` and serde agree, for every name.
    fn round_trip<T>(names: &[&str])
    where
        T: FromStr<Err = UnknownName> + Serialize + fmt::Display + fmt::Debug,
    {
        for &n in names {
            let v: T = n.parse().unwrap();
            assert_eq!(v.to_string(), n);
            assert_eq!(serde_json::to_value(&v).unwrap(), n);
        }
        assert!("Valid".parse::<T>().is_err());
    }

    #[test]
    fn names_are_written_once() {
        round_trip::<AccountStatus>(&["valid", "deactivated", "revoked"]);
        round_trip::<OrderStatus>(&["pending", "ready", "processing", "valid", "invalid"]);
        round_trip::<AuthzStatus>(&[
            "pending",
            "valid",
            "invalid",
            "deactivated",
            "expired",
            "revoked",
        ]);
        round_trip::<ChallengeStatus>(&["pending", "processing", "valid", "invalid"]);
        round_trip::<ChallengeType>(&["http-01", "dns-01", "tls-alpn-01", "dns-persist-01"]);
    }

    #[test]
    fn eab_patterns_are_exact_names_or_suffixes() {
        let key = |names: &[&str]| EabKey {
            kid: "k".into(),
            hmac_key: vec![],
            names: names.iter().map(|n| n.to_string()).collect(),
            created_at: 0,
            expires: None,
            reusable: false,
            revoked_at: None,
            bound_count: 0,
            first_account: None,
        };
        assert!(key(&[]).allows("anything.example"));
        let k = key(&["exact.example", "*.corp.example"]);
        for ok in [
            "exact.example",
            "a.corp.example",
            "a.b.corp.example",
            "*.corp.example",
        ] {
            assert!(k.allows(ok), "{ok}");
        }
        for no in [
            "corp.example",
            "a.exact.example",
            "*.exact.example",
            "xcorp.example",
            "example",
        ] {
            assert!(!k.allows(no), "{no}");
        }
    }

    #[test]
    fn identifier_set_hash_ignores_order_case_and_repeats() {
        assert_eq!(
            identifier_set_hash(&["B.example", "a.example", "b.example"]),
            identifier_set_hash(&["a.example", "b.example"])
        );
        assert_ne!(
            identifier_set_hash(&["a.example"]),
            identifier_set_hash(&["a.example", "b.example"])
        );
    }
}
