//! Accounts (RFC 8555 §7.3): newAccount, lookup by `kid` (spending the
//! request's nonce), updates, deactivation and key rollover; the contact
//! and account-key checks they share.

use super::{allow, ExternalBinding, Ra};
use crate::core::*;
use crate::key::{KeyError, PublicKey};
use crate::problem::Problem;
use crate::ratelimit::{RateLimitInfo, Spent};
use crate::sa::*;
use crate::wire::{AccountUpdate, NewAccountRequest};
use std::net::IpAddr;

impl Ra {
    /// newAccount: create, or find the account of this key (`false` when it
    /// existed already). Creating one spends the registration limits of
    /// `client` (the requester's address); the most constrained of them
    /// comes back for the response's rate-limit headers. `binding` is the
    /// request's external account binding, well-formed (the WFE checked
    /// it); finding an existing account needs none.
    pub async fn new_account(
        &self,
        key: &PublicKey,
        req: NewAccountRequest,
        binding: Option<ExternalBinding>,
        client: Option<IpAddr>,
    ) -> Result<(Account, bool, Option<RateLimitInfo>), Problem> {
        let thumbprint = key.thumbprint();
        if let Some(existing) = self.store.account_by_thumbprint(&thumbprint).await? {
            if existing.status != AccountStatus::Valid {
                return Err(Problem::unauthorized(format!(
                    "the account of this key is {}",
                    existing.status.as_str()
                )));
            }
            return Ok((existing, false, None));
        }
        if req.only_return_existing == Some(true) {
            return Err(Problem::account_does_not_exist(
                "no account exists with the provided key",
            ));
        }
        self.check_account_key_not_blocked(key).await?;
        if !self.cfg.acme.terms_of_service.is_empty() && req.terms_of_service_agreed != Some(true) {
            return Err(Problem::malformed(
                "you must agree to the terms of service (termsOfServiceAgreed: true)",
            ));
        }
        // RFC 8555 §7.3.4 lets a server that does not require a binding
        // ignore one; Cairn checks any binding it is given (as Pebble
        // does), so a bad key is never silently accepted and the account is
        // held to the key's names.
        let eab = match binding {
            Some(b) => Some(self.check_binding(&b).await?),
            None if self.cfg.acme.external_account_required => {
                return Err(Problem::external_account_required(
                    "this CA requires an external account binding (externalAccountBinding) \
                     to create an account; ask its operator for a key",
                ))
            }
            None => None,
        };
        let contact = self.check_contacts(req.contact.as_deref().unwrap_or_default())?;
        let spent = match client {
            Some(ip) => allow(self.limiter.check_new_account(ip).await)?,
            None => Spent::none(),
        };
        let created = self
            .store
            .create_account(
                &key.to_jwk().to_string(),
                &thumbprint,
                &contact,
                eab.as_ref().map(|k| k.kid.as_str()),
                self.clock.unix(),
            )
            .await;
        match created {
            Ok((acct, true)) => Ok((acct, true, spent.info)),
            // Created concurrently by another request with this key, or
            // not at all: this request registered nothing.
            other => {
                self.refund(&spent).await;
                Ok(other.map(|(acct, _)| (acct, false, None))?)
            }
        }
    }

    /// Wait until the writes of an HTTP request are committed
    /// (`sa::track_writes`); a `serverInternal` problem if they were not.
    pub async fn durable(&self, batch: u64) -> Result<(), Problem> {
        Ok(self.store.durable(batch).await?)
    }

    /// The account named by a `kid`, which must exist and be valid, read
    /// in the same round trip that spends the request's nonce if the store
    /// keeps used nonces (checked by the WFE, remembered until `expires`);
    /// also whether the nonce was unused.
    pub async fn account_for_kid(
        &self,
        id: AccountId,
        nonce: Option<(Vec<u8>, i64)>,
    ) -> Result<(Account, bool), Problem> {
        let (acct, fresh) = match nonce {
            Some((nonce, expires)) => {
                self.store
                    .account_spending_nonce(id, &nonce, expires)
                    .await?
            }
            None => (self.store.account(id).await?, true),
        };
        let acct =
            acct.ok_or_else(|| Problem::account_does_not_exist("no account exists with this kid"))?;
        if acct.status != AccountStatus::Valid {
            return Err(Problem::unauthorized(format!(
                "account is {}",
                acct.status.as_str()
            )));
        }
        Ok((acct, fresh))
    }

    pub async fn update_account(
        &self,
        acct: &Account,
        upd: AccountUpdate,
    ) -> Result<Account, Problem> {
        if let Some(status) = upd.status.as_deref() {
            if status != "deactivated" {
                return Err(Problem::malformed(format!(
                    "an account's status can only be changed to \"deactivated\", not {status:?}"
                )));
            }
        }
        if let Some(contact) = &upd.contact {
            let contact = self.check_contacts(contact)?;
            self.store.update_account_contact(acct.id, &contact).await?;
        }
        if upd.status.is_some() {
            self.store.deactivate_account(acct.id).await?;
        }
        self.store
            .account(acct.id)
            .await?
            .ok_or_else(|| Problem::internal("account vanished"))
    }

    /// keyChange (RFC 8555 §7.3.5), after the WFE has verified both JWSs.
    pub async fn change_key(
        &self,
        acct: &Account,
        old_key: &PublicKey,
        new_key: &PublicKey,
    ) -> Result<Account, Problem> {
        // Keys are compared by their canonical thumbprints: a key has one.
        let new_thumbprint = new_key.thumbprint();
        if old_key.thumbprint() != acct.thumbprint {
            return Err(Problem::malformed(
                "inner JWS oldKey is not the account's current key",
            ));
        }
        // RFC 8555 §7.3.5: no account, this one included, may already have the new key.
        if new_thumbprint == acct.thumbprint {
            let mut p = Problem::conflict("the new key is already this account's key");
            p.location = Some(format!("{}", acct.id.0));
            return Err(p);
        }
        self.check_account_key_not_blocked(new_key).await?;
        match self
            .store
            .change_account_key(
                acct.id,
                &acct.thumbprint,
                &new_key.to_jwk().to_string(),
                &new_thumbprint,
            )
            .await?
        {
            KeyChange::Changed => self
                .store
                .account(acct.id)
                .await?
                .ok_or_else(|| Problem::internal("account vanished")),
            KeyChange::InUse(other) => {
                let mut p = Problem::conflict("the new key is already in use by an account");
                p.location = Some(format!("{}", other.0));
                Err(p)
            }
        }
    }

    /// A key revoked for keyCompromise cannot hold an account.
    async fn check_account_key_not_blocked(&self, key: &PublicKey) -> Result<(), Problem> {
        let spki = key.spki_der().map_err(KeyError::for_jws)?;
        if self.store.key_blocked(&spki_hash(&spki)).await? {
            return Err(Problem::bad_public_key(
                "this key was revoked for keyCompromise and is blocked",
            ));
        }
        Ok(())
    }

    /// RFC 8555 §7.3: contacts are `mailto:` URIs with one plain address.
    fn check_contacts(&self, contacts: &[String]) -> Result<Vec<String>, Problem> {
        if contacts.len() > self.cfg.acme.max_contacts {
            return Err(Problem::malformed(format!(
                "too many contacts: {} (at most {})",
                contacts.len(),
                self.cfg.acme.max_contacts
            )));
        }
        let mut out = Vec::with_capacity(contacts.len());
        for c in contacts {
            let Some(addr) = c.strip_prefix("mailto:") else {
                return Err(Problem::unsupported_contact(format!(
                    "contact {c:?}: only mailto: contacts are supported"
                )));
            };
            if addr.contains(['?', ',', '%', ' ', '<', '>'])
                || addr.chars().any(|ch| ch.is_control())
            {
                return Err(Problem::invalid_contact(format!(
                    "contact {c:?}: a mailto: contact must be one plain address, without hfields"
                )));
            }
            let Some((local, domain)) = addr.rsplit_once('@') else {
                return Err(Problem::invalid_contact(format!(
                    "contact {c:?} is not an email address"
                )));
            };
            if local.is_empty() || local.len() > 64 || !local.is_ascii() {
                return Err(Problem::invalid_contact(format!(
                    "contact {c:?}: invalid local part"
                )));
            }
            if let Err(p) = self.policy.check_name(domain) {
                return Err(Problem::invalid_contact(format!(
                    "contact {c:?}: invalid domain: {}",
                    p.detail
                )));
            }
            if domain.starts_with('*') {
                return Err(Problem::invalid_contact(format!(
                    "contact {c:?}: invalid domain"
                )));
            }
            out.push(c.clone());
        }
        Ok(out)
    }
}
