//! Registration authority: the decisions. Account, order and authorization
//! life cycles (RFC 8555 §7.1.6), identifier policy, finalization. It asks
//! `sa` to record, `ca` to sign and `va` to validate, and never sees HTTP.

use crate::ca::{self, Ca};
use crate::clock::Clock;
use crate::config::Config;
use crate::core::lifecycle::{self, WhyInvalid};
use crate::core::*;
use crate::crl::CrlPublisher;
use crate::key::PublicKey;
use crate::policy::{Name, Policy};
use crate::problem::Problem;
use crate::ratelimit::{LimitError, Limiter, Spent};
use crate::sa::*;
use crate::va::Va;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use std::sync::Arc;
use std::time::Duration;

mod accounts;
mod ari;
mod authz;
mod eab;
mod finalize;
mod orders;
pub mod status;
mod store;
pub use ari::{cert_id, window, RenewalInfo};
pub use eab::{ExternalBinding, MacAlg};
pub use store::{error_doc, problem_of};

pub struct Ra {
    cfg: Arc<Config>,
    store: DynStore,
    ca: Arc<Ca>,
    va: Arc<Va>,
    policy: Policy,
    clock: Arc<Clock>,
    /// The intermediate's subject key identifier: the AKI of every
    /// certificate, and the first half of ARI certIDs.
    issuer_key_id: Vec<u8>,
    /// Publishes a fresh CRL after each revocation.
    crl: Arc<CrlPublisher>,
    /// The issuance-window rate limits (LIMITS.md §2).
    limiter: Arc<Limiter>,
}

/// What a client asked of newAccount (RFC 8555 §7.3).
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewAccountRequest {
    #[serde(default)]
    pub contact: Option<Vec<String>>,
    #[serde(default)]
    pub terms_of_service_agreed: Option<bool>,
    #[serde(default)]
    pub only_return_existing: Option<bool>,
    #[serde(default)]
    pub external_account_binding: Option<serde_json::Value>,
}

/// An update to an account (RFC 8555 §7.3.2, §7.3.6). Other fields clients
/// send are ignored.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountUpdate {
    #[serde(default)]
    pub contact: Option<Vec<String>>,
    #[serde(default)]
    pub status: Option<String>,
}

/// What a client asked of newOrder (RFC 8555 §7.4).
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewOrderRequest {
    #[serde(default)]
    pub identifiers: Option<Vec<Identifier>>,
    #[serde(default)]
    pub not_before: Option<serde_json::Value>,
    #[serde(default)]
    pub not_after: Option<serde_json::Value>,
    /// RFC 9773 §5: the certID of the certificate this order replaces.
    #[serde(default)]
    pub replaces: Option<String>,
    /// A certificate profile offered in the directory's `meta.profiles`.
    #[serde(default)]
    pub profile: Option<String>,
}

impl Ra {
    pub fn new(
        cfg: Arc<Config>,
        store: DynStore,
        ca: Arc<Ca>,
        va: Arc<Va>,
        clock: Arc<Clock>,
        crl: Arc<CrlPublisher>,
        limiter: Arc<Limiter>,
    ) -> anyhow::Result<Arc<Ra>> {
        let policy = Policy::new(&cfg.policy)?;
        let issuer_key_id = subject_key_id(ca.intermediate_der())
            .ok_or_else(|| anyhow::anyhow!("the intermediate has no subject key identifier"))?;
        Ok(Arc::new(Ra {
            cfg,
            store,
            ca,
            va,
            policy,
            clock,
            issuer_key_id,
            crl,
            limiter,
        }))
    }

    /// Return the reservations of orders that will never issue (failed,
    /// expired or abandoned in processing), every couple of seconds, so a
    /// failed order gives its certificate tokens back promptly.
    pub fn spawn_reservation_sweeper(self: &Arc<Self>) {
        let ra = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                let now = ra.clock.unix();
                match ra
                    .store
                    .dead_reservations(now, now - lifecycle::STALE_PROCESSING_SECS, 500)
                    .await
                {
                    Ok(ids) => {
                        for id in ids {
                            ra.release_reservation(id).await;
                        }
                    }
                    Err(e) => tracing::warn!("finding orders to refund: {e}"),
                }
            }
        });
    }

    /// The order as a client must see it (RFC 8555 §7.1.6): its status
    /// derived by `lifecycle::order_state`, and the error that explains a
    /// derived `invalid`.
    fn refine_order(&self, mut order: Order, authzs: &[Authz], now: i64) -> Order {
        let state = lifecycle::order_state(&order, authzs, now);
        order.status = state.status;
        let error = match state.why {
            None => return order,
            Some(WhyInvalid::Interrupted) => {
                Problem::server_internal("issuance was interrupted; create a new order")
            }
            Some(WhyInvalid::Expired) => Problem::malformed("the order expired"),
            Some(WhyInvalid::Authz(a, a_status)) => {
                let ident = Identifier::of(a.identifier_type, a.display_name());
                let cause = a
                    .challenges
                    .iter()
                    .find_map(|c| c.error.as_ref().map(problem_of))
                    .unwrap_or_else(|| {
                        Problem::unauthorized(format!(
                            "authorization for {} is {}",
                            ident.value,
                            a_status.as_str()
                        ))
                    });
                let sub = cause.sub(ident.clone());
                Problem::unauthorized(format!(
                    "authorization for {} is {}: {}",
                    ident.value,
                    a_status.as_str(),
                    cause.detail
                ))
                .with_subproblems(vec![sub])
            }
        };
        order.error = Some(error_doc(&error));
        order
    }

    /// Take over validations left in processing: at start every one (a
    /// restart interrupted them; a duplicate run elsewhere is harmless, the
    /// first result recorded wins), then periodically those whose lease ran
    /// out, so an instance that died never leaves a challenge processing.
    pub fn spawn_validation_sweeper(self: &Arc<Self>) {
        let ra = self.clone();
        tokio::spawn(async move {
            let lease = ra.validation_lease_secs();
            let mut stale_before = ra.clock.unix() + 1;
            let mut tick = tokio::time::interval(Duration::from_secs((lease as u64 / 2).max(1)));
            loop {
                tick.tick().await;
                match ra
                    .store
                    .claim_stale_challenges(stale_before, ra.clock.unix())
                    .await
                {
                    Ok(ids) => {
                        for id in ids {
                            tracing::info!(
                                challenge = id.0,
                                "taking over an interrupted validation"
                            );
                            ra.spawn_validation(id, None);
                        }
                    }
                    Err(e) => tracing::warn!("claiming interrupted validations: {e}"),
                }
                stale_before = ra.clock.unix() - lease;
            }
        });
    }

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
        test_fault("crash-after-revoke-commit");
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

    pub fn ca(&self) -> &Ca {
        &self.ca
    }
}

/// An order for an identifier set certified this long before the
/// certificate's lifetime ran out still counts as a renewal.
const RENEWAL_MARGIN_SECS: i64 = 30 * 86_400;

/// A limiter result as the RA acts on it: a refusal is the client's
/// problem; a limiter outage lets the request through (as Boulder does),
/// logged, rather than failing issuance.
fn allow(r: Result<Spent, LimitError>) -> Result<Spent, Problem> {
    match r {
        Ok(s) => Ok(s),
        Err(LimitError::Unavailable(p)) => {
            tracing::warn!("rate limits unavailable, request allowed: {}", p.detail);
            Ok(Spent::none())
        }
        Err(e) => Err(e.to_problem()),
    }
}

/// The subjectKeyIdentifier of a DER certificate.
fn subject_key_id(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
}

/// Crash tests' fault hook: when the operator's environment has
/// `CAIRN_TEST_FAULT=<name>`, the process aborts at the point called `name`
/// (as a `kill -9` would stop it there). Only the process environment can
/// arm it, never a request. Points: `crash-after-revoke-commit` (a
/// revocation is committed, its CRL not yet signed).
fn test_fault(name: &str) {
    static FAULT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let armed = FAULT.get_or_init(|| std::env::var("CAIRN_TEST_FAULT").ok());
    if armed.as_deref() == Some(name) {
        eprintln!("CAIRN_TEST_FAULT={name}: aborting");
        std::process::abort();
    }
}

/// Revocation reasons a subscriber may give (RFC 5280 §5.3.1): unspecified,
/// keyCompromise, affiliationChanged, superseded, cessationOfOperation.
const USER_REVOCATION_REASONS: &[i64] = &[0, 1, 3, 4, 5];

/// RFC 5280 §5.3.1 keyCompromise.
pub const KEY_COMPROMISE: i64 = 1;

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

fn refine_authz(mut a: Authz, now: i64) -> Authz {
    a.status = lifecycle::authz_status(&a, now);
    a
}
