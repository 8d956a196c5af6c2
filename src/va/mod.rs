//! Validation authority: http-01, dns-01, tls-alpn-01 and CAA, with a
//! configurable resolver, ports and address policy.
//! INTERFACE STUB: implemented by the VA work; signatures are the contract.

use crate::config::VaConfig;
use crate::problem::Problem;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChallengeType {
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "dns-01")]
    Dns01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl ChallengeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeType::Http01 => "http-01",
            ChallengeType::Dns01 => "dns-01",
            ChallengeType::TlsAlpn01 => "tls-alpn-01",
        }
    }

    pub fn parse(s: &str) -> Option<ChallengeType> {
        match s {
            "http-01" => Some(ChallengeType::Http01),
            "dns-01" => Some(ChallengeType::Dns01),
            "tls-alpn-01" => Some(ChallengeType::TlsAlpn01),
            _ => None,
        }
    }
}

/// One validation to perform.
#[derive(Debug, Clone)]
pub struct ValidationRequest {
    /// The identifier, lower-case, without any `*.` prefix.
    pub domain: String,
    /// True if the authorization is for `*.domain` (only dns-01 is offered then).
    pub wildcard: bool,
    pub challenge: ChallengeType,
    pub token: String,
    /// `token || '.' || base64url(JWK thumbprint)` (RFC 8555 §8.1).
    pub key_authorization: String,
    /// The account URL, for CAA `accounturi` (RFC 8657).
    pub account_uri: String,
}

/// What the VA saw, recorded on the challenge as `validationRecord`
/// (RFC 8555 §8 leaves the shape to the server; these are Boulder's names).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidationRecord {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub hostname: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses_resolved: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address_used: Option<String>,
}

pub struct Va {}

impl Va {
    /// `caa_identities`: the CAA issuer domain names that mean this CA.
    pub fn new(_cfg: &VaConfig, _caa_identities: Vec<String>) -> anyhow::Result<Va> {
        Ok(Va {})
    }

    /// Perform one validation, then (on success) the CAA check. On failure
    /// the problem's type is one of `connection`, `dns`, `incorrectResponse`,
    /// `tls`, `unauthorized`, `caa`, with a detail a user can act on.
    pub async fn validate(&self, _req: &ValidationRequest) -> Result<Vec<ValidationRecord>, Problem> {
        Err(Problem::internal("VA not implemented yet"))
    }
}
