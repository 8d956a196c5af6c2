//! Revocation (RFC 8555 §7.6): who may revoke a certificate, the one rule
//! that records a revocation (for ACME requests and operators alike), and
//! the CRL published after it.

use super::Ra;
use crate::ca;
use crate::core::*;
use crate::key::PublicKey;
use crate::problem::Problem;
use crate::sa::Store;

impl Ra {
    /// revokeCert (RFC 8555 §7.6). `by` is who signed: an account, which
    /// must hold the certificate or valid authorizations for all its names,
    /// or the certificate's own key. As Let's Encrypt does, a revocation by
    /// an account that merely controls the names is recorded as
    /// cessationOfOperation, and one by the certificate key as keyCompromise.
    pub async fn revoke(
        &self,
        by: RevokeBy<'_>,
        cert_der: &[u8],
        reason: Option<i64>,
    ) -> Result<(), Problem> {
        let reason = reason.unwrap_or(0);
        if !USER_REVOCATION_REASONS.contains(&reason) {
            return Err(Problem::bad_revocation_reason(format!(
                "reason {reason} is not accepted; use 0 (unspecified), 1 (keyCompromise), 3 (affiliationChanged), 4 (superseded) or 5 (cessationOfOperation)"
            )));
        }
        let (_, parsed) = x509_parser::parse_x509_certificate(cert_der)
            .map_err(|_| Problem::malformed("\"certificate\" is not a DER certificate"))?;
        let serial = hex::encode(parsed.raw_serial());
        let cert = self
            .store
            .certificate(&serial)
            .await?
            .filter(|c| c.der == cert_der)
            .ok_or_else(|| Problem::not_found("no such certificate issued by this CA"))?;
        // Only a request signed with the certificate's key proves the key
        // compromised: it is recorded as keyCompromise whatever the reason
        // given, and the key is blocked (Let's Encrypt CP/CPS §4.9.3).
        let mut block_key = None;
        let recorded = match by {
            RevokeBy::Key(key) => {
                if PublicKey::from_spki_der(parsed.public_key().raw).as_ref() != Ok(key) {
                    return Err(Problem::unauthorized(
                        "the JWS key is not the certificate's key",
                    ));
                }
                block_key = Some(spki_hash(parsed.public_key().raw));
                1
            }
            RevokeBy::Account(acct) if acct.id == cert.account_id => reason,
            RevokeBy::Account(acct) => {
                if !self.controls_all_names(acct, &parsed).await? {
                    return Err(Problem::unauthorized(
                        "this account neither holds the certificate nor has valid authorizations for all of its names",
                    ));
                }
                5
            }
        };
        if !record_revocation(
            &*self.store,
            &cert,
            recorded,
            block_key.as_deref(),
            self.clock.unix(),
        )
        .await?
        {
            return Err(Problem::already_revoked(
                "the certificate is already revoked",
            ));
        }
        tracing::info!(serial = %serial, reason = recorded, "certificate revoked");
        if fault_armed("crash-after-revoke-commit") {
            // The point is "committed": wait for the revocation's batch.
            self.durable(crate::sa::tracked_writes()).await?;
            test_fault("crash-after-revoke-commit");
        }
        // The revocation is recorded; a CRL that fails to publish now (or a
        // process that dies here) is caught up by the CRL updater, which
        // publishes whenever the newest CRL does not cover the stored
        // revocations.
        if let Err(e) = self.crl.publish_now().await {
            tracing::warn!(serial = %serial, "publishing the CRL after a revocation: {}", e.detail);
        }
        Ok(())
    }

    async fn controls_all_names(
        &self,
        acct: &Account,
        cert: &x509_parser::certificate::X509Certificate<'_>,
    ) -> Result<bool, Problem> {
        let Ok(Some(san)) = cert.subject_alternative_name() else {
            return Ok(false);
        };
        let now = self.clock.unix();
        for name in &san.value.general_names {
            let (kind, n) = match name {
                x509_parser::extensions::GeneralName::DNSName(n) => {
                    (IdentifierType::Dns, n.to_ascii_lowercase())
                }
                x509_parser::extensions::GeneralName::IPAddress(b) => match ca::san_ip(b) {
                    Some(ip) => (IdentifierType::Ip, ip.to_string()),
                    None => return Ok(false),
                },
                _ => return Ok(false),
            };
            let (base, wildcard) = match n.strip_prefix("*.") {
                Some(b) if kind == IdentifierType::Dns => (b.to_string(), true),
                _ => (n.clone(), false),
            };
            // Control of the base name covers its wildcard too; an
            // authorization of any profile shows control.
            let found = self
                .store
                .reusable_authz(acct.id, (kind, &base, wildcard), None, now)
                .await?
                .is_some()
                || (wildcard
                    && self
                        .store
                        .reusable_authz(acct.id, (kind, &base, false), None, now)
                        .await?
                        .is_some());
            if !found {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Crash tests' fault hook: when the operator's environment has
/// `CAIRN_TEST_FAULT=<name>`, the process aborts at the point called `name`
/// (as a `kill -9` would stop it there). Only the process environment can
/// arm it, never a request. Points: `crash-after-revoke-commit` (a
/// revocation is committed, its CRL not yet signed).
fn fault_armed(name: &str) -> bool {
    static FAULT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let armed = FAULT.get_or_init(|| std::env::var("CAIRN_TEST_FAULT").ok());
    armed.as_deref() == Some(name)
}

fn test_fault(name: &str) {
    if fault_armed(name) {
        eprintln!("CAIRN_TEST_FAULT={name}: aborting");
        std::process::abort();
    }
}

/// Revocation reasons a subscriber may give (RFC 5280 §5.3.1): unspecified,
/// keyCompromise, affiliationChanged, superseded, cessationOfOperation.
const USER_REVOCATION_REASONS: &[i64] = &[0, 1, 3, 4, 5];

pub use crate::core::KEY_COMPROMISE;

/// Record a revocation with `reason`, blocking the key whose SPKI hash is
/// `block_key` (which also revokes that key's other certificates): the one
/// rule for ACME requests and for operators (`cairn admin certs revoke`).
/// A revoked certificate changes only when a key compromise is newly
/// shown (its reason becomes keyCompromise and the key is blocked). False
/// when it was already revoked, before or concurrently.
pub async fn record_revocation(
    store: &dyn Store,
    cert: &Certificate,
    reason: i64,
    block_key: Option<&[u8]>,
    now: i64,
) -> Result<bool, StoreError> {
    let upgrade = block_key.is_some() && cert.revoked_reason != Some(KEY_COMPROMISE);
    if cert.revoked_at.is_some() && !upgrade {
        return Ok(false);
    }
    store
        .revoke_certificate(&cert.serial, reason, now, block_key)
        .await
}

/// Who signed a revocation request.
pub enum RevokeBy<'a> {
    Account(&'a Account),
    Key(&'a PublicKey),
}
