//! The store with every call timed: a decorator over any [`Store`] that
//! reports each call's name and duration to a hook (`cairn serve` gives it
//! `metrics::db_query`, the `cairn_db_query_duration_seconds` histogram).
//! Timed at the trait boundary, so the figure is what the caller waited for
//! (pool wait, statements, transaction), at the cost of one `Instant` per
//! call.

use super::*;
use crate::core::gcra::Decision;
use crate::core::limits::{BucketTxn, OrderLimitFacts};
use std::time::{Duration, Instant};

/// Called after every store call with its method name and duration.
pub type Observe = fn(&'static str, Duration);

/// `inner`, with every call reported to `observe`.
pub fn timed(inner: DynStore, observe: Observe) -> DynStore {
    Arc::new(Timed { inner, observe })
}

struct Timed {
    inner: DynStore,
    observe: Observe,
}

/// The trait impl for `Timed`: each listed method calls the inner store's,
/// timed; `also` holds the methods written out (untimed ones).
macro_rules! timed_impl {
    (impl $trait:ident {
        $(async fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*
    } also { $($also:tt)* }) => {
        #[async_trait]
        impl $trait for Timed {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    let start = Instant::now();
                    let r = self.inner.$name($($arg),*).await;
                    (self.observe)(stringify!($name), start.elapsed());
                    r
                }
            )*
            $($also)*
        }
    };
}

timed_impl! {
    impl Store {
        async fn ping(&self) -> Result<(), StoreError>;
        async fn redeem_nonce(&self, nonce: &[u8], expires: i64) -> Result<bool, StoreError>;
        async fn prune_nonces(&self, before: i64, limit: u32) -> Result<u64, StoreError>;
        async fn secret(&self, name: &str, fresh: &[u8]) -> Result<Vec<u8>, StoreError>;
        async fn create_account(&self, jwk: &str, thumbprint: &str, contact: &[String], eab_kid: Option<&str>, now: i64) -> Result<(Account, bool), StoreError>;
        async fn account(&self, id: AccountId) -> Result<Option<Account>, StoreError>;
        async fn put_eab_key(&self, key: &EabKey) -> Result<(), StoreError>;
        async fn eab_key(&self, kid: &str) -> Result<Option<EabKey>, StoreError>;
        async fn eab_keys(&self) -> Result<Vec<EabKey>, StoreError>;
        async fn revoke_eab_key(&self, kid: &str, now: i64) -> Result<bool, StoreError>;
        async fn account_spending_nonce(&self, id: AccountId, nonce: &[u8], expires: i64) -> Result<(Option<Account>, bool), StoreError>;
        async fn account_by_thumbprint(&self, thumbprint: &str) -> Result<Option<Account>, StoreError>;
        async fn update_account_contact(&self, id: AccountId, contact: &[String]) -> Result<(), StoreError>;
        async fn deactivate_account(&self, id: AccountId) -> Result<(), StoreError>;
        async fn change_account_key(&self, id: AccountId, old_thumbprint: &str, jwk: &str, thumbprint: &str) -> Result<KeyChange, StoreError>;
        async fn create_order(&self, order: NewOrder) -> Result<Order, StoreError>;
        async fn order(&self, id: OrderId) -> Result<Option<Order>, StoreError>;
        async fn account_orders(&self, account: AccountId, after: Option<OrderId>, limit: u32) -> Result<Vec<OrderId>, StoreError>;
        async fn reusable_authz(&self, account: AccountId, identifier: (IdentifierType, &str, bool), profile: Option<&str>, min_expires: i64) -> Result<Option<AuthzId>, StoreError>;
        async fn authz(&self, id: AuthzId) -> Result<Option<Authz>, StoreError>;
        async fn authz_of_challenge(&self, id: ChallengeId) -> Result<Option<Authz>, StoreError>;
        async fn authzs(&self, ids: &[AuthzId]) -> Result<Vec<Authz>, StoreError>;
        async fn deactivate_authz(&self, id: AuthzId) -> Result<bool, StoreError>;
        async fn challenge(&self, id: ChallengeId) -> Result<Option<Challenge>, StoreError>;
        async fn start_challenge(&self, id: ChallengeId, now: i64) -> Result<bool, StoreError>;
        async fn finish_challenge(&self, id: ChallengeId, result: Result<String, ErrorDoc>, now: i64, valid_authz_expires: i64) -> Result<bool, StoreError>;
        async fn claim_stale_challenges(&self, stale_before: i64, now: i64) -> Result<Vec<ChallengeId>, StoreError>;
        async fn begin_finalize(&self, id: OrderId, now: i64) -> Result<bool, StoreError>;
        async fn complete_order(&self, id: OrderId, cert: &Certificate, now: i64) -> Result<(), StoreError>;
        async fn fail_order(&self, id: OrderId, error: &ErrorDoc, now: i64) -> Result<(), StoreError>;
        async fn take_reservation(&self, id: OrderId) -> Result<Option<String>, StoreError>;
        async fn reservations_of_authz(&self, authz: AuthzId) -> Result<Vec<OrderId>, StoreError>;
        async fn dead_reservations(&self, now: i64, stale_before: i64, limit: u32) -> Result<Vec<OrderId>, StoreError>;
        async fn certificate(&self, serial: &str) -> Result<Option<Certificate>, StoreError>;
        async fn revoke_certificate(&self, serial: &str, reason: i64, now: i64, block_key: Option<&[u8]>) -> Result<bool, StoreError>;
        async fn key_blocked(&self, spki_sha256: &[u8]) -> Result<bool, StoreError>;
        async fn find_certificates(&self, q: &CertQuery) -> Result<Vec<Certificate>, StoreError>;
        async fn mark_renew_early(&self, q: &CertQuery, now: i64) -> Result<u64, StoreError>;
        async fn certificates_without_names(&self, limit: u32) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
        async fn set_certificate_names(&self, serial: &str, names: &[String], spki_sha256: Option<&[u8]>) -> Result<(), StoreError>;
        async fn revoked_certificates(&self, not_after_after: i64) -> Result<Vec<RevokedEntry>, StoreError>;
        async fn revocation_counts(&self, not_after_after: i64) -> Result<RevocationCounts, StoreError>;
        async fn purge_orders(&self, expired_before: i64, limit: u32) -> Result<Purged, StoreError>;
        async fn purge_authzs(&self, expired_before: i64, limit: u32) -> Result<Purged, StoreError>;
        async fn purgeable(&self, expired_before: i64, nonces_before: i64, buckets_before: i64) -> Result<Purged, StoreError>;
        async fn latest_crl(&self) -> Result<Option<StoredCrl>, StoreError>;
        async fn insert_crl(&self, crl: &StoredCrl) -> Result<bool, StoreError>;
        async fn insert_past_accounts(&self, accounts: &[PastAccount]) -> Result<Vec<AccountId>, StoreError>;
        async fn insert_past_issuances(&self, batch: &[PastIssuance]) -> Result<(), StoreError>;
    } also {
        async fn durable(&self, batch: u64) -> Result<(), StoreError> {
            self.inner.durable(batch).await
        }
        fn pool_stats(&self) -> (u32, usize) {
            self.inner.pool_stats()
        }

        async fn close(&self) {
            self.inner.close().await
        }
    }
}

timed_impl! {
    impl LimitStore {
        async fn spend_buckets(&self, txns: &[BucketTxn], now: i64) -> Result<Vec<Decision>, StoreError>;
        async fn refund_buckets(&self, txns: &[BucketTxn], now: i64) -> Result<u64, StoreError>;
        async fn reset_buckets(&self, keys: &[String]) -> Result<u64, StoreError>;
        async fn prune_buckets(&self, now: i64, limit: u32) -> Result<u64, StoreError>;
        async fn pause(&self, account: AccountId, identifier: &str, now: i64) -> Result<bool, StoreError>;
        async fn unpause(&self, account: AccountId, identifier: Option<&str>, now: i64) -> Result<Vec<String>, StoreError>;
        async fn order_limit_facts(&self, account: AccountId, identifiers: &[String], set_hash: &str, since: i64, now: i64) -> Result<OrderLimitFacts, StoreError>;
        async fn paused_identifiers(&self, account: AccountId) -> Result<Vec<String>, StoreError>;
        async fn pending_authz_expiry(&self, account: AccountId, nth: u64, now: i64) -> Result<Option<i64>, StoreError>;
    } also {}
}
