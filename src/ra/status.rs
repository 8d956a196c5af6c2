//! What the management listener's status page shows (`crate::lookup`):
//! for a registered domain or an account, the certificates issued, each
//! limit's bucket read by the limiter that decides, whether an order for a
//! set of names would be a renewal (the rule `check_order_limits` applies),
//! and the account's paused identifiers. Read-only: nothing is spent.

use super::{Ra, RENEWAL_MARGIN_SECS};
use crate::core::{AccountId, Certificate, Identifier, IdentifierType};
use crate::problem::Problem;
use crate::ratelimit::{BucketState, LimitName};
use crate::sa::CertQuery;
use std::net::IpAddr;

/// What the page asks about: any of the three.
#[derive(Debug, Default)]
pub struct StatusQuery {
    pub domain: Option<String>,
    pub account: Option<AccountId>,
    /// A set of names a client is about to order.
    pub names: Vec<String>,
}

/// One limit's bucket for one key, now.
#[derive(Debug)]
pub struct BucketView {
    pub limit: LimitName,
    pub key: String,
    pub burst: u64,
    /// Whole tokens left.
    pub remaining: u64,
    /// Seconds until the next token returns (`None`: the bucket is full).
    pub next_in_secs: Option<u64>,
    /// Seconds until the bucket is full again.
    pub full_in_secs: u64,
}

#[derive(Debug, Default)]
pub struct StatusReport {
    pub now: i64,
    pub registered_domain: Option<String>,
    pub certificates: Vec<Certificate>,
    pub buckets: Vec<BucketView>,
    /// For `names`: would an order for exactly them be a renewal?
    pub renewal: Option<bool>,
    pub paused: Vec<String>,
    pub names: Vec<String>,
}

/// Certificates listed per query, newest first.
const MAX_CERTIFICATES: u32 = 200;

impl Ra {
    pub async fn status(&self, q: &StatusQuery) -> Result<StatusReport, Problem> {
        let now = self.clock.unix();
        let mut r = StatusReport {
            now,
            ..Default::default()
        };
        if let Some(domain) = &q.domain {
            let name = self.policy.check_name(domain)?;
            let registered = self.policy.registered_domain(&name.base);
            r.certificates = self
                .store
                .find_certificates(&CertQuery {
                    domain: Some(registered.clone()),
                    limit: MAX_CERTIFICATES,
                    ..Default::default()
                })
                .await?;
            self.bucket(&mut r, LimitName::CertificatesPerDomain, &registered)
                .await?;
            r.registered_domain = Some(registered);
        }
        if let Some(account) = q.account {
            if q.domain.is_none() {
                r.certificates = self
                    .store
                    .find_certificates(&CertQuery {
                        account: Some(account),
                        limit: MAX_CERTIFICATES,
                        ..Default::default()
                    })
                    .await?;
            }
            self.bucket(&mut r, LimitName::NewOrdersPerAccount, &account.to_string())
                .await?;
            r.paused = self.limiter.paused(account).await?;
        }
        if !q.names.is_empty() {
            // Addresses are ip identifiers, anything else a DNS name; checked
            // as the default profile would, with every type allowed.
            let mut any_type = self
                .cfg
                .profile("")
                .cloned()
                .ok_or_else(|| Problem::internal("no default profile"))?;
            any_type.identifier_types = vec![IdentifierType::Dns, IdentifierType::Ip];
            any_type.max_names = 100;
            let ids: Vec<Identifier> = q
                .names
                .iter()
                .map(|n| match n.parse::<IpAddr>() {
                    Ok(_) => Identifier::of(IdentifierType::Ip, n),
                    Err(_) => Identifier::dns(n),
                })
                .collect();
            let names = self.policy.check_order(&ids, ("", &any_type), true)?;
            let values: Vec<String> = names.iter().map(|n| n.value()).collect();
            let since = now - self.cfg.max_validity_secs() as i64 - RENEWAL_MARGIN_SECS;
            let facts = self
                .limiter
                .order_facts(q.account.unwrap_or(AccountId(0)), &values, since)
                .await
                .map_err(Problem::from)?;
            r.renewal = Some(facts.renewal);
            self.bucket(
                &mut r,
                LimitName::CertificatesPerFqdnSet,
                &crate::ratelimit::fqdn_set_hash(&values),
            )
            .await?;
            if let Some(b) = r.buckets.last_mut() {
                if b.limit == LimitName::CertificatesPerFqdnSet {
                    b.key = values.join(",");
                }
            }
            r.names = values;
        }
        Ok(r)
    }

    async fn bucket(
        &self,
        r: &mut StatusReport,
        limit: LimitName,
        key: &str,
    ) -> Result<(), Problem> {
        let Some(b) = self.limiter.bucket_state(limit, key).await? else {
            return Ok(());
        };
        r.buckets.push(BucketView {
            limit,
            key: key.to_string(),
            burst: b.limit.burst,
            remaining: b.remaining,
            next_in_secs: b.next_in_ns.map(BucketState::secs),
            full_in_secs: BucketState::secs(b.full_in_ns),
        });
        Ok(())
    }
}
