//! The ACME wire format: every request payload Cairn reads and every
//! resource it answers with (RFC 8555 §7, RFC 9773), as serde types in one
//! place. The WFE parses requests into these and hands them to the RA as
//! they are; it builds responses from the model. Statuses, identifiers and
//! stored error documents are `core`'s; problem documents are
//! [`crate::problem`]'s (they carry an HTTP status). Imports only `core`.
//!
//! Requests ignore members they do not know. Optional response members
//! are left out, never `null`: clients tell states apart by presence.

use crate::core::{
    AccountStatus, AuthzStatus, ChallengeStatus, ChallengeType, ErrorDoc, Identifier, OrderStatus,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

// ---- Requests ----

/// newAccount (RFC 8555 §7.3).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewAccountRequest {
    #[serde(default)]
    pub contact: Option<Vec<String>>,
    #[serde(default)]
    pub terms_of_service_agreed: Option<bool>,
    #[serde(default)]
    pub only_return_existing: Option<bool>,
    /// A flattened JWS (RFC 8555 §7.3.4), checked by the WFE.
    #[serde(default)]
    pub external_account_binding: Option<Value>,
}

/// An update to an account (RFC 8555 §7.3.2, §7.3.6). Other fields clients
/// send are ignored.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountUpdate {
    #[serde(default)]
    pub contact: Option<Vec<String>>,
    #[serde(default)]
    pub status: Option<String>,
}

/// keyChange's inner JWS payload (RFC 8555 §7.3.5).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
// The problem detail for a payload that is not an object has always named
// the type "Inner"; kept so bad input gets the same document.
#[serde(expecting = "struct Inner")]
pub struct KeyChangePayload {
    /// The account URL.
    pub account: String,
    /// The account's current key, a JWK.
    pub old_key: Value,
}

/// newOrder (RFC 8555 §7.4).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewOrderRequest {
    #[serde(default)]
    pub identifiers: Option<Vec<Identifier>>,
    #[serde(default)]
    pub not_before: Option<Value>,
    #[serde(default)]
    pub not_after: Option<Value>,
    /// RFC 9773 §5: the certID of the certificate this order replaces.
    #[serde(default)]
    pub replaces: Option<String>,
    /// A certificate profile offered in the directory's `meta.profiles`.
    #[serde(default)]
    pub profile: Option<String>,
}

/// finalize (RFC 8555 §7.4): the CSR, base64url DER.
#[derive(Debug, Deserialize)]
pub struct FinalizeRequest {
    pub csr: String,
}

/// An update to an authorization (RFC 8555 §7.5.2): only
/// `{"status": "deactivated"}` is one.
#[derive(Debug, Deserialize)]
pub struct AuthzUpdate {
    pub status: Option<String>,
}

/// A challenge response (RFC 8555 §7.5.1): `{}`; any object is accepted
/// unless `acme.strict`.
#[derive(Debug, Deserialize)]
pub struct ChallengeResponse {}

/// revokeCert (RFC 8555 §7.6).
#[derive(Debug, Deserialize)]
pub struct RevokeRequest {
    /// base64url DER.
    pub certificate: String,
    /// A CRL reason code (RFC 5280 §5.3.1).
    pub reason: Option<i64>,
}

// ---- Responses ----

/// The directory (RFC 8555 §7.1.1), with renewalInfo (RFC 9773 §4).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Directory<'a> {
    pub new_nonce: String,
    pub new_account: String,
    pub new_order: String,
    pub key_change: String,
    pub revoke_cert: String,
    pub renewal_info: String,
    pub meta: DirectoryMeta<'a>,
}

/// The directory's `meta`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryMeta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terms_of_service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub website: Option<&'a str>,
    pub caa_identities: &'a [String],
    pub external_account_required: bool,
    /// draft-ietf-acme-profiles: name → description.
    pub profiles: BTreeMap<&'a str, &'a str>,
}

/// An account (RFC 8555 §7.1.2).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Account<'a> {
    pub status: AccountStatus,
    pub contact: &'a [String],
    /// The URL of its orders list.
    pub orders: String,
    /// The public JWK.
    pub key: Value,
    pub created_at: String,
}

/// An account's orders list (RFC 8555 §7.1.2.1), one page.
#[derive(Debug, Serialize)]
pub struct OrderList {
    pub orders: Vec<String>,
}

/// An order (RFC 8555 §7.1.3).
#[derive(Debug, Serialize)]
pub struct Order<'a> {
    pub status: OrderStatus,
    pub expires: String,
    pub identifiers: &'a [Identifier],
    pub authorizations: Vec<String>,
    pub finalize: String,
    /// draft-ietf-acme-profiles.
    pub profile: &'a str,
    /// Once valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// Once invalid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a ErrorDoc>,
    /// RFC 9773 §5: the certID of the certificate it replaces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

/// An authorization (RFC 8555 §7.1.4).
#[derive(Debug, Serialize)]
pub struct Authorization<'a> {
    /// Without any `*.` prefix.
    pub identifier: Identifier,
    pub status: AuthzStatus,
    pub expires: String,
    pub challenges: Vec<Challenge<'a>>,
    /// Present only when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub wildcard: bool,
}

/// A challenge (RFC 8555 §7.1.5, §8).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Challenge<'a> {
    #[serde(rename = "type")]
    pub kind: ChallengeType,
    pub url: String,
    pub status: ChallengeStatus,
    pub token: &'a str,
    /// draft-ietf-acme-dns-persist-01 §3.1: the names a record may use for
    /// this CA (dns-persist-01 only).
    #[serde(
        rename = "issuer-domain-names",
        skip_serializing_if = "Option::is_none"
    )]
    pub issuer_domain_names: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validated: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a ErrorDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation_record: Option<Value>,
}

/// renewalInfo (RFC 9773 §4.2).
#[derive(Debug, Serialize)]
pub struct RenewalInfo<'a> {
    #[serde(rename = "suggestedWindow")]
    pub suggested_window: SuggestedWindow,
    #[serde(rename = "explanationURL", skip_serializing_if = "Option::is_none")]
    pub explanation_url: Option<&'a str>,
}

/// When to renew: RFC 3339 times.
#[derive(Debug, Serialize)]
pub struct SuggestedWindow {
    pub start: String,
    pub end: String,
}
