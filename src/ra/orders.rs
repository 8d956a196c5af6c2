//! Orders (RFC 8555 §7.4): newOrder (profile, identifier policy,
//! authorization reuse, rate limits), reading an account's orders, and the
//! certificate tokens an order reserves and gives back.

use super::{allow, authz_with_current_status, order_with_current_status, Ra, RENEWAL_MARGIN_SECS};
use crate::core::*;
use crate::policy::Name;
use crate::problem::Problem;
use crate::ratelimit::{RateLimitInfo, Spent};
use crate::sa::*;
use crate::wire::NewOrderRequest;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;

impl Ra {
    /// newOrder. Rate limits: an ARI renewal (`replaces`) is exempt from
    /// all; otherwise the pending-authorization cap, then one batch that
    /// spends new-orders-per-account (not for a renewal) and reserves the
    /// certificate tokens the order will use (see `Limiter::check_new_order`).
    pub async fn new_order(
        &self,
        acct: &Account,
        req: NewOrderRequest,
    ) -> Result<(Order, Vec<Authz>, Option<RateLimitInfo>), Problem> {
        if req.not_before.as_ref().is_some_and(|v| !v.is_null())
            || req.not_after.as_ref().is_some_and(|v| !v.is_null())
        {
            return Err(Problem::malformed(
                "notBefore and notAfter are not supported",
            ));
        }
        let ids = req
            .identifiers
            .ok_or_else(|| Problem::malformed("newOrder requires identifiers"))?;
        let (profile_name, profile) = self.order_profile(req.profile.as_deref())?;
        let names = self.policy.check_order(
            &ids,
            (profile_name, profile),
            self.cfg.va.allow_private_addresses,
        )?;
        self.check_binding_names(acct, &names).await?;
        let replaces = match &req.replaces {
            Some(id) => Some(self.check_replaces(acct, id, &names).await?),
            None => None,
        };
        let now = self.clock.unix();
        let mut expires = now + profile.order_lifetime_secs as i64;
        let mut authzs = Vec::with_capacity(names.len());
        // Reuse a valid authorization only if it outlives a day of work on the order.
        let min_reuse = now + 86_400.min(profile.order_lifetime_secs as i64);
        for n in &names {
            match self
                .store
                .reusable_authz(
                    acct.id,
                    (n.kind, &n.base, n.wildcard),
                    Some(profile_name),
                    min_reuse,
                )
                .await?
            {
                Some(id) => authzs.push(OrderAuthz::Reuse(id)),
                None => authzs.push(OrderAuthz::New(self.new_authz(n, profile_name, now))),
            }
        }
        for a in &authzs {
            if let OrderAuthz::New(n) = a {
                expires = expires.min(n.expires);
            }
        }
        let spent = if replaces.is_some() {
            Spent::none()
        } else {
            self.check_order_limits(acct, &names, &authzs, now).await?
        };
        let identifiers = names.iter().map(Name::identifier).collect();
        let created = self
            .store
            .create_order(NewOrder {
                account_id: acct.id,
                expires,
                identifiers,
                authzs,
                replaces,
                reservation: spent.reservation(),
                profile: profile_name.to_string(),
                now,
            })
            .await;
        let order = match created {
            Ok(o) => o,
            Err(e) => {
                self.refund(&spent).await;
                return Err(e.into());
            }
        };
        let authzs = self.store.authzs(&order.authz_ids).await?;
        // A reused authorization may expire before the order: the order
        // cannot outlive its authorizations' usefulness anyway.
        let order = order_with_current_status(order, &authzs, now);
        let authzs = authzs
            .into_iter()
            .map(|a| authz_with_current_status(a, now))
            .collect();
        Ok((order, authzs, spent.info))
    }

    /// The profile a newOrder asked for, or the default; `invalidProfile`
    /// naming the offered ones for any other.
    fn order_profile<'a>(
        &'a self,
        asked: Option<&'a str>,
    ) -> Result<(&'a str, &'a crate::config::ProfileConfig), Problem> {
        let name = asked.unwrap_or(&self.cfg.acme.default_profile);
        match self.cfg.profiles.get_key_value(name) {
            Some((n, p)) => Ok((n.as_str(), p)),
            None => Err(Problem::invalid_profile(format!(
                "profile {name:?} is not offered; this CA offers {}",
                self.cfg
                    .profiles
                    .keys()
                    .map(|k| format!("{k:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The rate limits of a new order that is not an ARI renewal.
    async fn check_order_limits(
        &self,
        acct: &Account,
        names: &[Name],
        authzs: &[OrderAuthz],
        now: i64,
    ) -> Result<Spent, Problem> {
        let new_authzs = authzs
            .iter()
            .filter(|a| matches!(a, OrderAuthz::New(_)))
            .count() as u64;
        let values: Vec<String> = names.iter().map(|n| n.value()).collect();
        // A renewal: this exact set was certified within a certificate's
        // lifetime (plus a margin for late renewals).
        let since = now - self.cfg.max_validity_secs() as i64 - RENEWAL_MARGIN_SECS;
        let domains: Vec<String> = names.iter().map(|n| self.policy.domain_key(n)).collect();
        // Two round trips: what the limits need to know (pending
        // authorizations, renewal, pauses), then the atomic bucket batch.
        let facts = match self.limiter.order_facts(acct.id, &values, since).await {
            Ok(f) => f,
            Err(e) => return allow(Err(e)),
        };
        allow(
            self.limiter
                .check_new_order(
                    acct.id,
                    &values,
                    &domains,
                    &facts,
                    new_authzs,
                    self.cfg.limits.max_pending_authzs,
                )
                .await,
        )
    }

    /// Give back tokens a failed operation spent; a failure to do so is
    /// logged (the bucket refills on its own).
    pub(super) async fn refund(&self, spent: &Spent) {
        if let Err(e) = self.limiter.refund(spent).await {
            tracing::warn!("refunding rate-limit tokens: {}", e.detail);
        }
    }

    /// Give back the certificate tokens an order reserved, if it still
    /// holds them (exactly once, whoever calls).
    pub(super) async fn release_reservation(&self, order: OrderId) {
        let r = match self.store.take_reservation(order).await {
            Ok(Some(json)) => self.limiter.refund_reservation(&json).await,
            Ok(None) => Ok(()),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = r {
            tracing::warn!(
                order = order.0,
                "returning reserved rate-limit tokens: {}",
                e.detail
            );
        }
    }

    /// Give back the reservations of the orders using an authorization that
    /// just failed or was deactivated (the sweeper would, a little later).
    pub(super) async fn release_reservations_of(&self, authz: AuthzId) {
        match self.store.reservations_of_authz(authz).await {
            Ok(orders) => {
                for order in orders {
                    self.release_reservation(order).await;
                }
            }
            Err(e) => tracing::warn!(authz = authz.0, "finding orders to refund: {e}"),
        }
    }

    fn new_authz(&self, n: &Name, profile_name: &str, now: i64) -> NewAuthz {
        let mut types: Vec<ChallengeType> = if n.wildcard {
            // RFC 8555 §7.1.3: wildcards only by dns-01.
            vec![ChallengeType::Dns01]
        } else if n.kind == IdentifierType::Ip {
            // RFC 8738 §7: there is no DNS name to put a TXT record under.
            vec![ChallengeType::Http01, ChallengeType::TlsAlpn01]
        } else {
            vec![
                ChallengeType::Http01,
                ChallengeType::Dns01,
                ChallengeType::TlsAlpn01,
            ]
        };
        // draft-ietf-acme-dns-persist-01 registers the method for dns
        // identifiers only (§8.1); wildcards too, by a record with
        // policy=wildcard (§5). It has no token (§3.1).
        if n.kind == IdentifierType::Dns && !self.cfg.va.dns_persist_issuer_domains.is_empty() {
            types.push(ChallengeType::DnsPersist01);
        }
        let lifetime = self
            .cfg
            .profile(profile_name)
            .map_or(0, |p| p.pending_authz_lifetime_secs);
        NewAuthz {
            identifier_type: n.kind,
            identifier: n.base.clone(),
            profile: profile_name.to_string(),
            wildcard: n.wildcard,
            expires: now + lifetime as i64,
            // dns-persist-01 has a token too, though nothing uses it: see
            // `wfe::order::challenge_json`.
            challenges: types.into_iter().map(|t| (t, new_token())).collect(),
        }
    }

    /// The order, if it belongs to this account (404 otherwise, revealing nothing).
    pub async fn order(&self, acct: &Account, id: OrderId) -> Result<Order, Problem> {
        let order = self
            .store
            .order(id)
            .await?
            .filter(|o| o.account_id == acct.id)
            .ok_or_else(|| Problem::not_found("no such order"))?;
        let authzs = self.store.authzs(&order.authz_ids).await?;
        Ok(order_with_current_status(order, &authzs, self.clock.unix()))
    }

    /// One page of the account's order ids, and the cursor of the next page.
    pub async fn account_orders(
        &self,
        acct: &Account,
        after: Option<OrderId>,
    ) -> Result<(Vec<OrderId>, Option<OrderId>), Problem> {
        let per_page = self.cfg.acme.orders_per_page;
        let mut ids = self
            .store
            .account_orders(acct.id, after, per_page + 1)
            .await?;
        let next = if ids.len() > per_page as usize {
            ids.truncate(per_page as usize);
            ids.last().copied()
        } else {
            None
        };
        Ok((ids, next))
    }
}

/// A challenge token: 256 random bits, base64url (RFC 8555 §8.3 asks ≥128).
fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    B64.encode(bytes)
}
