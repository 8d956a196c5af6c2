//! Registration authority: the decisions. Account, order and authorization
//! life cycles (RFC 8555 §7.1.6), identifier policy, finalization. It asks
//! `sa` to record, `ca` to sign and `va` to validate, and never sees HTTP.
//! It is the one place where store errors become ACME problems (`store.rs`).
//!
//! One `impl Ra` per operation group:
//! - `accounts.rs`: newAccount, the `kid` lookup, updates, key rollover.
//! - `eab.rs`: external account binding.
//! - `orders.rs`: newOrder, order reads, limits and reservations.
//! - `authz.rs`: authorizations, challenges, background validation.
//! - `finalize.rs`: finalization, certificate reads, the names backfill.
//! - `revocation.rs`: revokeCert and the revocation rule operators share.
//! - `ari.rs`: renewal information (RFC 9773) and `replaces`.
//! - `status.rs`: the management listener's status queries.
//! - `sweepers.rs`: background tasks (reservations, interrupted validations).
//! - `store.rs`: `StoreError` → `Problem`, stored error documents.
//!
//! This file keeps `Ra`, its constructor and the small helpers the groups
//! share. The requests it takes are `crate::wire`'s.

use crate::ca::Ca;
use crate::clock::Clock;
use crate::config::Config;
use crate::core::lifecycle::{self, WhyInvalid};
use crate::core::{Authz, Identifier, Order};
use crate::crl_publisher::CrlPublisher;
use crate::policy::Policy;
use crate::problem::Problem;
use crate::ratelimit::{LimitError, Limiter, Spent};
use crate::sa::DynStore;
use crate::va::Va;
use std::sync::Arc;

mod accounts;
mod ari;
mod authz;
mod eab;
mod finalize;
mod orders;
mod revocation;
pub(crate) mod status;
mod store;
mod sweepers;
pub use ari::cert_id;
pub(crate) use eab::{ExternalBinding, MacAlg};
pub(crate) use revocation::{record_revocation, RevokeBy, KEY_COMPROMISE};
pub use store::{error_doc, problem_of};

pub(crate) struct Ra {
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

/// The order as a client must see it (RFC 8555 §7.1.6): its status
/// derived by `lifecycle::order_state`, and the error that explains a
/// derived `invalid`.
fn order_with_current_status(mut order: Order, authzs: &[Authz], now: i64) -> Order {
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

/// The authorization as a client must see it: its status derived by
/// `lifecycle::authz_status` (a pending or valid one past its expiry is
/// expired).
fn authz_with_current_status(mut a: Authz, now: i64) -> Authz {
    a.status = lifecycle::authz_status(&a, now);
    a
}
