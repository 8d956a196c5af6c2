//! External account binding (RFC 8555 §7.3.4): the binding of a
//! newAccount, as the WFE parsed it (structure, `url`, payload = the
//! account key), checked here against the key the store holds (MAC, state),
//! and the names a bound account may order.

use super::Ra;
use crate::core::{Account, EabKey, IdentifierType};
use crate::policy::Name;
use crate::problem::{Problem, Subproblem};
use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha384, Sha512};

/// The MAC algorithms a binding may use (RFC 8555 §7.3.4: "MUST indicate
/// a MAC-based algorithm"; the JWA HMACs, RFC 7518 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacAlg {
    Hs256,
    Hs384,
    Hs512,
}

impl MacAlg {
    pub const NAMES: &'static [&'static str] = &["HS256", "HS384", "HS512"];

    pub fn parse(alg: &str) -> Option<MacAlg> {
        match alg {
            "HS256" => Some(MacAlg::Hs256),
            "HS384" => Some(MacAlg::Hs384),
            "HS512" => Some(MacAlg::Hs512),
            _ => None,
        }
    }
}

/// A well-formed binding whose MAC is still to be checked.
#[derive(Debug, Clone)]
pub struct ExternalBinding {
    pub kid: String,
    pub alg: MacAlg,
    /// `protected.payload`, as the MAC covers it.
    pub signing_input: String,
    pub mac: Vec<u8>,
}

impl ExternalBinding {
    /// The MAC, compared in constant time (`Mac::verify_slice`).
    fn verifies_with(&self, key: &[u8]) -> bool {
        fn check<M: Mac + hmac::digest::KeyInit>(key: &[u8], input: &[u8], tag: &[u8]) -> bool {
            <M as Mac>::new_from_slice(key)
                .map(|m| m.chain_update(input).verify_slice(tag).is_ok())
                .unwrap_or(false)
        }
        let input = self.signing_input.as_bytes();
        match self.alg {
            MacAlg::Hs256 => check::<Hmac<Sha256>>(key, input, &self.mac),
            MacAlg::Hs384 => check::<Hmac<Sha384>>(key, input, &self.mac),
            MacAlg::Hs512 => check::<Hmac<Sha512>>(key, input, &self.mac),
        }
    }
}

impl Ra {
    /// The key of a binding, if the binding's MAC verifies with it and it may
    /// bind an account now. The store checks the last three again when it
    /// binds, atomically; these checks give the precise reason.
    pub(super) async fn check_binding(&self, b: &ExternalBinding) -> Result<EabKey, Problem> {
        let kid = &b.kid;
        let key = self.store.eab_key(kid).await?.ok_or_else(|| {
            Problem::unauthorized(format!("external account key {kid:?} is not known"))
        })?;
        // Before saying anything about the key's state: only its holder
        // learns whether it is revoked or used.
        if !b.verifies_with(&key.hmac_key) {
            return Err(Problem::unauthorized(format!(
                "the external account binding's MAC does not verify with key {kid:?}"
            )));
        }
        if key.revoked_at.is_some() {
            return Err(Problem::unauthorized(format!(
                "external account key {kid:?} was revoked"
            )));
        }
        if key.expires.is_some_and(|t| t <= self.clock.unix()) {
            return Err(Problem::unauthorized(format!(
                "external account key {kid:?} has expired"
            )));
        }
        if !key.reusable && key.bound_count > 0 {
            return Err(Problem::unauthorized(format!(
                "external account key {kid:?} is single-use and already bound an account"
            )));
        }
        Ok(key)
    }

    /// An account bound by a key with name patterns may order only names
    /// they allow: `rejectedIdentifier` naming each other one.
    pub(super) async fn check_binding_names(
        &self,
        acct: &Account,
        names: &[Name],
    ) -> Result<(), Problem> {
        let Some(kid) = &acct.eab_kid else {
            return Ok(());
        };
        let key = self.store.eab_key(kid).await?.ok_or_else(|| {
            Problem::internal(format!("account {} is bound by a missing key", acct.id))
        })?;
        // Patterns are DNS names: a key with patterns allows no IP address.
        let subs: Vec<Subproblem> = names
            .iter()
            .filter(|n| n.kind != IdentifierType::Dns || !key.allows(&n.value()))
            .map(|n| {
                Problem::rejected_identifier(format!(
                    "{:?} is not among the names this account's external account key allows \
                     ({})",
                    n.value(),
                    key.names.join(", ")
                ))
                .sub(n.identifier())
            })
            .collect();
        match subs.len() {
            0 => Ok(()),
            1 => Err(Problem::from_sub(&subs[0]).with_subproblems(subs)),
            n => Err(Problem::rejected_identifier(format!(
                "{n} identifiers are not among the names this account's external account key \
                 allows; see subproblems"
            ))
            .with_subproblems(subs)),
        }
    }
}
