//! The ACME wire format: every request payload Cairn reads and every
//! resource it answers with (RFC 8555 §7, RFC 9773), as serde types in one
//! place. The WFE parses requests into these and hands them to the RA as
//! they are; it builds responses from the model. Statuses, identifiers and
//! stored error documents are `core`'s; problem documents are
//! [`crate::problem`]'s (they carry an HTTP status). Imports only `core`.
//!
//! Requests ignore members they do not know. Optional response members
//! are left out, never `null`: clients tell states apart by presence.

use crate::core::Identifier;
use serde::Deserialize;
use serde_json::Value;

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
