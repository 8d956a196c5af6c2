//! Rate limits (LIMITS.md): two mechanisms, one vocabulary.
//!
//! - Request rates per client IP and endpoint (`layer`): a tower layer over
//!   in-memory GCRA buckets, per instance, costing no I/O and no allocation.
//! - Issuance windows ([`Limiter`]): GCRA buckets stored in the database as
//!   one row per key holding its TAT, shared by every instance. All of a
//!   request's limits are checked and spent in one atomic batch
//!   ([`LimitStore::spend_buckets`]); a denied batch writes
//!   nothing, and the client is told about the limit that resets furthest in
//!   the future (Boulder's rule).
//!
//! Layout: `gcra` is the arithmetic and [`LimitStore`] the storage
//! interface (both in `core`, so that `sa` implements it without importing
//! this module); `config` the limit sets
//! (`production`, `staging`, `unlimited`) and their overrides from
//! configuration; `keys` the bucket keys; `overrides` the per-key override
//! file (reloaded while running, edited by the admin CLI); `limiter` the
//! transactions the RA runs.

mod layer;

mod config;
mod keys;
mod limiter;
mod overrides;

pub use crate::core::gcra::{Decision, Limit};
pub use crate::core::limits::{BucketTxn, LimitName, LimitStore, TxnMode};
pub use config::{LimitSet, LimitsConfig, Profile, WindowConfig};
pub use layer::{RequestRateLimiter, TrustedProxies, Verdict};
pub use limiter::{LimitError, Limiter, Spent};
pub use overrides::Overrides;

pub(crate) use crate::core::gcra;
pub(crate) use config::EndpointClass;
pub(crate) use keys::{bucket_key, fqdn_set_hash};
pub(crate) use limiter::{BucketState, RateLimitInfo};
pub(crate) use overrides::OverrideEntry;

/// What the limits mean to clients and operators; the names themselves
/// are in `core::limits`, with the storage interface.
impl LimitName {
    /// Whether per-key overrides may raise this limit (LIMITS.md §2).
    pub fn allows_overrides(self) -> bool {
        matches!(
            self,
            LimitName::NewOrdersPerAccount | LimitName::CertificatesPerDomain
        )
    }

    /// What an override's key is, for error messages and the admin CLI.
    pub fn override_key_kind(self) -> &'static str {
        match self {
            LimitName::NewOrdersPerAccount => "an account id",
            LimitName::CertificatesPerDomain => "a registered domain",
            _ => "nothing: this limit has no overrides",
        }
    }

    /// The anchor of this limit's section on the documentation page.
    pub fn doc_anchor(self) -> &'static str {
        match self {
            LimitName::NewRegistrationsPerIp => "new-registrations-per-ip",
            LimitName::NewRegistrationsPerIpv6Range => "new-registrations-per-ipv6-range",
            LimitName::NewOrdersPerAccount => "new-orders-per-account",
            LimitName::CertificatesPerDomain => "new-certificates-per-registered-domain",
            LimitName::CertificatesPerFqdnSet => "new-certificates-per-exact-set-of-identifiers",
            LimitName::FailedAuthorizationsPerIdentifier => {
                "authorization-failures-per-identifier-per-account"
            }
            LimitName::ConsecutiveAuthorizationFailures => {
                "consecutive-authorization-failures-per-identifier-per-account"
            }
        }
    }

    /// The config key under `[limits.windows]` (snake_case, so that the
    /// `CAIRN_LIMITS_WINDOWS_<NAME>_<FIELD>` environment names read well).
    pub fn config_key(self) -> &'static str {
        match self {
            LimitName::NewRegistrationsPerIp => "new_registrations_per_ip",
            LimitName::NewRegistrationsPerIpv6Range => "new_registrations_per_ipv6_range",
            LimitName::NewOrdersPerAccount => "new_orders_per_account",
            LimitName::CertificatesPerDomain => "certificates_per_domain",
            LimitName::CertificatesPerFqdnSet => "certificates_per_fqdn_set",
            LimitName::FailedAuthorizationsPerIdentifier => "failed_authorizations_per_identifier",
            LimitName::ConsecutiveAuthorizationFailures => "consecutive_authorization_failures",
        }
    }

    /// The problem detail for a refusal, Boulder's wording: the limit and
    /// its size, the key, the window, the time a retry succeeds, and where to
    /// read more. `key` is the display key (an IP, a /48, an account id, a
    /// registered domain, an identifier); `retry_at` is a formatted UTC time.
    pub fn detail(self, limit: &Limit, key: &str, retry_at: &str, docs_url: &str) -> String {
        let n = limit.burst;
        let window = go_duration(limit.period_secs);
        let what = match self {
            LimitName::NewRegistrationsPerIp => {
                format!("too many new registrations ({n}) from this IP address ({key})")
            }
            LimitName::NewRegistrationsPerIpv6Range => format!(
                "too many new registrations ({n}) from this /48 subnet of IPv6 addresses ({key})"
            ),
            LimitName::NewOrdersPerAccount => {
                format!("too many new orders ({n}) from this account ({key})")
            }
            LimitName::CertificatesPerDomain => {
                format!("too many certificates ({n}) already issued for {key:?}")
            }
            LimitName::CertificatesPerFqdnSet => format!(
                "too many certificates ({n}) already issued for this exact set of identifiers ({key})"
            ),
            LimitName::FailedAuthorizationsPerIdentifier => {
                format!("too many failed authorizations ({n}) for {key:?}")
            }
            LimitName::ConsecutiveAuthorizationFailures => {
                format!("too many consecutive failed authorizations ({n}) for {key:?}")
            }
        };
        format!(
            "{what} in the last {window}, retry after {retry_at}: see {docs_url}#{}",
            self.doc_anchor()
        )
    }
}

/// A duration the way Go prints one (`3h0m0s`, `168h0m0s`, `36s`), which is
/// what Boulder's details contain and what clients have seen for years.
pub(crate) fn go_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// A Unix time (nanoseconds) as `2026-11-22 14:03:00 UTC`, rounded up to
/// the second so that the time shown is never before the tokens are back.
pub(crate) fn format_utc(unix_ns: i64) -> String {
    let secs = unix_ns.div_euclid(1_000_000_000) + i64::from(unix_ns % 1_000_000_000 != 0);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("@{secs}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_override_policy() {
        for n in LimitName::ALL {
            assert_eq!(LimitName::parse(n.as_str()), Some(n));
        }
        assert_eq!(LimitName::parse("nope"), None);
        let allowed: Vec<_> = LimitName::ALL
            .into_iter()
            .filter(|n| n.allows_overrides())
            .collect();
        assert_eq!(
            allowed,
            vec![
                LimitName::NewOrdersPerAccount,
                LimitName::CertificatesPerDomain
            ]
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(3 * 3600), "3h0m0s");
        assert_eq!(go_duration(7 * 86_400), "168h0m0s");
        assert_eq!(go_duration(36), "36s");
        assert_eq!(go_duration(21 * 60 + 36), "21m36s");
        assert_eq!(go_duration(3600 + 1), "1h0m1s");
    }

    #[test]
    fn detail_names_limit_key_window_and_retry_time() {
        let l = Limit::new(10, 10, 3 * 3600).unwrap();
        // 2026-11-22 14:03:00 UTC
        let at = format_utc(1_795_356_180 * 1_000_000_000);
        assert_eq!(at, "2026-11-22 14:03:00 UTC");
        assert_eq!(format_utc(1_795_356_179 * 1_000_000_000 + 1), at);
        let d = LimitName::NewRegistrationsPerIp.detail(
            &l,
            "192.0.2.1",
            &at,
            "https://ca.example/docs/rate-limits",
        );
        assert_eq!(
            d,
            "too many new registrations (10) from this IP address (192.0.2.1) in the last \
             3h0m0s, retry after 2026-11-22 14:03:00 UTC: see \
             https://ca.example/docs/rate-limits#new-registrations-per-ip"
        );
        let c = Limit::new(50, 50, 7 * 86_400).unwrap();
        let d = LimitName::CertificatesPerDomain.detail(&c, "example.co.uk", &at, "u");
        assert!(
            d.starts_with(
                "too many certificates (50) already issued for \"example.co.uk\" in the last 168h0m0s"
            ),
            "{d}"
        );
        assert!(d.ends_with("u#new-certificates-per-registered-domain"));
    }
}
