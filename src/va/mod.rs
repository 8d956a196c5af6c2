//! Validation authority: http-01, dns-01, tls-alpn-01, dns-persist-01 and
//! CAA, with a configurable resolver, ports and address policy.
//!
//! Layout: [`addr`] is the address policy (no private addresses unless
//! configured), [`dns`] the resolver (hickory, caching off), `http01`,
//! `dns01`, [`tlsalpn`] and `dns_persist` the challenges, [`caa`] the CAA check that
//! follows a successful challenge. Everything a network peer sends is
//! untrusted: bounded reads, sanitized echoes in problem details, no panics.

pub mod addr;
pub mod caa;
pub mod dns;
mod dns01;
mod dns_persist;
mod http01;
#[cfg(test)]
mod tests;
pub mod tlsalpn;

use std::sync::Arc;
use std::time::Duration;

use crate::config::VaConfig;
use crate::core::{ChallengeType, IdentifierType};
use crate::problem::Problem;
use serde::{Deserialize, Serialize};

/// One validation to perform.
#[derive(Debug, Clone)]
pub struct ValidationRequest {
    pub identifier_type: IdentifierType,
    /// The identifier, lower-case, without any `*.` prefix; for an ip
    /// identifier, the address's canonical text.
    pub domain: String,
    /// True if the authorization is for `*.domain` (only dns-01 and
    /// dns-persist-01 are offered then).
    pub wildcard: bool,
    pub challenge: ChallengeType,
    pub token: String,
    /// `token || '.' || base64url(JWK thumbprint)` (RFC 8555 §8.1).
    pub key_authorization: String,
    /// The account URL, for CAA `accounturi` (RFC 8657) and dns-persist-01's.
    pub account_uri: String,
    /// The server's clock (UNIX seconds), for dns-persist-01's `persistUntil`.
    pub now: i64,
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

/// The validation authority. Built once at start; cheap to share.
pub struct Va {
    cfg: VaConfig,
    /// Our CAA issuer domain names, lower case.
    caa_identities: Vec<String>,
    dns: dns::Dns,
    tls: Arc<rustls::ClientConfig>,
}

impl Va {
    /// `caa_identities`: the CAA issuer domain names that mean this CA.
    pub fn new(cfg: &VaConfig, caa_identities: Vec<String>) -> anyhow::Result<Va> {
        let timeout = Duration::from_secs(cfg.timeout_secs.max(1));
        Ok(Va {
            cfg: cfg.clone(),
            caa_identities: caa_identities
                .into_iter()
                .map(|s| s.trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect(),
            dns: dns::Dns::new(&cfg.resolver, timeout, cfg.allow_private_addresses)?,
            tls: tlsalpn::client_config()?,
        })
    }

    /// Perform one validation, then (on success) the CAA check. On failure
    /// the problem's type is one of `connection`, `dns`, `incorrectResponse`,
    /// `tls`, `unauthorized`, `caa`, with a detail a user can act on.
    pub async fn validate(
        &self,
        req: &ValidationRequest,
    ) -> Result<Vec<ValidationRecord>, Problem> {
        if self.cfg.always_valid {
            return Ok(vec![ValidationRecord {
                hostname: req.domain.clone(),
                ..ValidationRecord::default()
            }]);
        }
        if req.wildcard
            && !matches!(
                req.challenge,
                ChallengeType::Dns01 | ChallengeType::DnsPersist01
            )
        {
            return Err(Problem::malformed(format!(
                "wildcard authorization for *.{} can only be validated with dns-01 or dns-persist-01, not {}",
                req.domain,
                req.challenge.as_str()
            )));
        }
        let ip = req.identifier_type == IdentifierType::Ip;
        if ip
            && matches!(
                req.challenge,
                ChallengeType::Dns01 | ChallengeType::DnsPersist01
            )
        {
            return Err(Problem::malformed(format!(
                "IP address {} cannot be validated with {} (RFC 8738 §7)",
                req.domain,
                req.challenge.as_str()
            )));
        }
        let secs = self.cfg.timeout_secs.max(1);
        let work = async {
            let records = match req.challenge {
                ChallengeType::Http01 => {
                    self.http01(&req.domain, &req.token, &req.key_authorization)
                        .await?
                }
                ChallengeType::Dns01 => self.dns01(&req.domain, &req.key_authorization).await?,
                ChallengeType::TlsAlpn01 => {
                    self.tls_alpn01(&req.domain, &req.key_authorization).await?
                }
                ChallengeType::DnsPersist01 => {
                    self.dns_persist01(&req.domain, req.wildcard, &req.account_uri, req.now)
                        .await?
                }
            };
            // CAA is a DNS record; an address has none to check (RFC 8738 §9).
            if self.cfg.check_caa && !ip {
                self.check_caa(&req.domain, req.wildcard, req.challenge, &req.account_uri)
                    .await?;
            }
            Ok(records)
        };
        match tokio::time::timeout(Duration::from_secs(secs), work).await {
            Ok(r) => r,
            Err(_) => Err(Problem::connection(format!(
                "Timeout after {secs}s during {} validation of {}",
                req.challenge.as_str(),
                req.domain
            ))),
        }
    }
}

/// base64url(SHA-256(key authorization)), unpadded: the dns-01 TXT value
/// (RFC 8555 §8.4).
pub fn dns01_digest(key_authorization: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(key_authorization.as_bytes()))
}

/// Makes peer-supplied text safe to echo in a problem detail: at most `max`
/// characters, control characters replaced, an ellipsis when cut.
pub(crate) fn sanitize(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    if s.chars().nth(max).is_some() {
        out.push_str("...");
    }
    out
}
