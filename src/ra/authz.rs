//! Authorizations and challenges (RFC 8555 §7.5): reading and
//! deactivating authorizations, answering a challenge, and the validation
//! it starts in the background (bounded, recorded once, counted against
//! the failure limits).

use super::{authz_with_current_status, error_doc, Ra};
use crate::core::*;
use crate::problem::Problem;
use crate::va::ValidationRequest;
use std::sync::Arc;
use std::time::Duration;

/// What a validation needs: the challenge, its authorization, and the
/// account's key thumbprint (for the key authorization).
pub(super) struct Validation {
    challenge: Challenge,
    authz: Authz,
    thumbprint: String,
}

impl Ra {
    pub async fn authz(&self, acct: &Account, id: AuthzId) -> Result<Authz, Problem> {
        let a = self
            .store
            .authz(id)
            .await?
            .filter(|a| a.account_id == acct.id)
            .ok_or_else(|| Problem::not_found("no such authorization"))?;
        Ok(authz_with_current_status(a, self.clock.unix()))
    }

    /// RFC 8555 §7.5.2: a client may deactivate a pending or valid authorization.
    pub async fn deactivate_authz(&self, acct: &Account, id: AuthzId) -> Result<Authz, Problem> {
        let a = self.authz(acct, id).await?;
        if !matches!(a.status, AuthzStatus::Pending | AuthzStatus::Valid) {
            return Err(Problem::malformed(format!(
                "authorization is {}; only pending or valid authorizations can be deactivated",
                a.status.as_str()
            )));
        }
        if self.store.deactivate_authz(id).await? {
            if a.status == AuthzStatus::Pending {
                // Boulder counts a pending authorization given up as a failure.
                self.count_failure(acct.id, &a.identifier).await;
            }
            // Its orders can no longer issue: their tokens come back now.
            self.release_reservations_of(id).await;
        }
        self.authz(acct, id).await
    }

    /// A failed (or abandoned) authorization: spend the failure limits;
    /// pausing happens inside when the consecutive ones run out.
    async fn count_failure(&self, account: AccountId, identifier: &str) {
        if let Err(e) = self.limiter.spend_failed_authz(account, identifier).await {
            tracing::warn!(
                account = account.0,
                identifier,
                "counting a failed authorization: {}",
                e.detail
            );
        }
    }

    /// A challenge and its authorization, if they belong to this account.
    pub async fn challenge(
        &self,
        acct: &Account,
        id: ChallengeId,
    ) -> Result<(Challenge, Authz), Problem> {
        let a = self
            .store
            .authz_of_challenge(id)
            .await?
            .filter(|a| a.account_id == acct.id)
            .ok_or_else(|| Problem::not_found("no such challenge"))?;
        let c = a
            .challenges
            .iter()
            .find(|c| c.id == id)
            .cloned()
            .ok_or_else(|| Problem::not_found("no such challenge"))?;
        Ok((c, authz_with_current_status(a, self.clock.unix())))
    }

    /// The client says a challenge is ready (RFC 8555 §7.5.1): start its
    /// validation in the background. Answering a challenge that is not
    /// pending changes nothing and returns it as it is.
    pub async fn respond_challenge(
        self: &Arc<Self>,
        acct: &Account,
        id: ChallengeId,
    ) -> Result<(Challenge, Authz), Problem> {
        let (mut c, a) = self.challenge(acct, id).await?;
        if c.status == ChallengeStatus::Pending && a.status == AuthzStatus::Pending {
            if !self.store.start_challenge(id, self.clock.unix()).await? {
                // Another request started one first: show what it did.
                return self.challenge(acct, id).await;
            }
            // What the store now holds: this challenge is processing. The
            // validation gets what was just read rather than reading it again.
            c.status = ChallengeStatus::Processing;
            let job = Validation {
                challenge: c.clone(),
                authz: a.clone(),
                thumbprint: acct.thumbprint.clone(),
            };
            self.spawn_validation(id, Some(job));
        }
        Ok((c, a))
    }

    /// Validate challenge `id` in the background; `job` is what the caller
    /// already read of it (None: read it here).
    pub(super) fn spawn_validation(self: &Arc<Self>, id: ChallengeId, job: Option<Validation>) {
        let ra = self.clone();
        tokio::spawn(async move {
            if let Err(e) = ra.validate(id, job).await {
                tracing::error!(challenge = id.0, "validation could not be recorded: {e}");
            }
        });
    }

    /// A challenge being validated, its authorization and its account's
    /// key thumbprint, as the validation started.
    async fn validation_job(&self, id: ChallengeId) -> Result<Validation, Problem> {
        let challenge = self
            .store
            .challenge(id)
            .await?
            .ok_or_else(|| Problem::internal("challenge vanished"))?;
        let authz = self
            .store
            .authz(challenge.authz_id)
            .await?
            .ok_or_else(|| Problem::internal("authorization vanished"))?;
        let acct = self
            .store
            .account(authz.account_id)
            .await?
            .ok_or_else(|| Problem::internal("account vanished"))?;
        Ok(Validation {
            challenge,
            authz,
            thumbprint: acct.thumbprint,
        })
    }

    async fn validate(&self, id: ChallengeId, job: Option<Validation>) -> Result<(), Problem> {
        let job = match job {
            Some(j) => j,
            None => self.validation_job(id).await?,
        };
        let Validation {
            challenge: c,
            authz: a,
            thumbprint,
        } = job;
        let req = ValidationRequest {
            identifier_type: a.identifier_type,
            domain: a.identifier.clone(),
            wildcard: a.wildcard,
            challenge: c.kind,
            key_authorization: format!("{}.{}", c.token, thumbprint),
            token: c.token.clone(),
            account_uri: format!(
                "{}/acme/acct/{}",
                self.cfg.default_base_url(),
                a.account_id.0
            ),
            now: self.clock.unix(),
        };
        // Bound the whole validation so a challenge never stays processing.
        let started = std::time::Instant::now();
        let limit = Duration::from_secs(self.validation_limit_secs());
        let result = match tokio::time::timeout(limit, self.va.validate(&req)).await {
            Ok(Ok(records)) => Ok(serde_json::to_string(&records).map_err(Problem::internal)?),
            Ok(Err(p)) => Err(p),
            Err(_) => Err(Problem::connection(format!(
                "validation of {} timed out after {}s",
                a.identifier,
                limit.as_secs()
            ))),
        };
        let outcome = match &result {
            Ok(_) => "valid".to_string(),
            Err(p) => p.to_string(),
        };
        let metric_result = match &result {
            Ok(_) => "valid".to_string(),
            Err(p) => p.kind.name().to_string(),
        };
        tracing::info!(challenge = id.0, kind = c.kind.as_str(), domain = %a.identifier, %outcome, "validation finished");
        let now = self.clock.unix();
        // Reused for as long as the authorization's profile says.
        let reuse = self
            .cfg
            .profile(&a.profile)
            .map_or(0, |p| p.valid_authz_lifetime_secs);
        let valid_expires = now + reuse as i64;
        // Only the run that records the result counts it: a validation may
        // run twice (a restart re-runs every one in flight; a peer's lease
        // may look stale) and must not count as two failures. A client
        // re-ordering in the milliseconds between the two is counted late.
        let failed = result.is_err();
        if !self
            .store
            .finish_challenge(id, result.map_err(|p| error_doc(&p)), now, valid_expires)
            .await?
        {
            return Ok(());
        }
        crate::metrics::validation(
            c.kind.as_str(),
            &metric_result,
            started.elapsed().as_secs_f64(),
        );
        if failed {
            self.count_failure(a.account_id, &a.identifier).await;
            // The authorization is invalid: its orders' tokens come back now.
            self.release_reservations_of(a.id).await;
        } else if let Err(e) = self
            .limiter
            .reset_pausing(a.account_id, &a.identifier)
            .await
        {
            tracing::warn!(identifier = %a.identifier, "resetting the failure count: {}", e.detail);
        }
        Ok(())
    }

    /// How long a validation may run before another instance (or this one
    /// after a restart) may assume its runner died and take it over.
    pub(super) fn validation_lease_secs(&self) -> i64 {
        self.validation_limit_secs() as i64 + 5
    }

    /// The VA bounds itself by `va.timeout_secs`; this outer bound only
    /// guards against a VA that does not.
    fn validation_limit_secs(&self) -> u64 {
        self.cfg.va.timeout_secs.saturating_add(5)
    }
}
