//! The `[limits]` configuration and the limit sets it names.
//!
//! One setting, `limits.profile`, picks a whole set: `production`
//! (LIMITS.md exactly), `staging` (generous, so client test suites never
//! trip a limit by accident) or `unlimited` (issuance windows and request
//! rates off). Every number can then be set on top, per limit, in
//! `[limits.windows.<limit>]` and `[limits.requests.<endpoint>]`: a field
//! left at 0 keeps the profile's value. Numbers given for a limit the
//! profile turns off switch that limit on, the missing fields taken from
//! `production`; so `profile = "unlimited"` plus one table is "only this
//! limit", which is what the project's own limit tests use.
//!
//! Every leaf has an environment name (config.rs rules), e.g.
//! `CAIRN_LIMITS_PROFILE`, `CAIRN_LIMITS_WINDOWS_NEW_ORDERS_PER_ACCOUNT_BURST`,
//! `CAIRN_LIMITS_REQUESTS_NEW_NONCE_PER_SECOND`, `CAIRN_LIMITS_TRUSTED_PROXIES`
//! (comma-separated).

use super::{Limit, LimitName};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A named limit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Production,
    Staging,
    Unlimited,
}

/// `[limits]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// `production`, `staging` or `unlimited`.
    pub profile: Profile,
    /// Per-limit numbers on top of the profile.
    pub windows: WindowsConfig,
    /// Per-endpoint request rates on top of the profile.
    pub requests: RequestRatesConfig,
    /// Peers (IP addresses or CIDRs) whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
    /// The per-key override file; empty: `<data_dir>/rate-limit-overrides.toml`.
    pub overrides_file: String,
    /// How often the override file's modification time is polled, seconds.
    pub overrides_reload_secs: u64,
    /// Pending authorizations an account may hold (LIMITS.md: 300).
    pub max_pending_authzs: u64,
    /// Base URL of the rate-limit documentation that details link to (the
    /// limit's anchor is appended); empty: the server's own page.
    pub docs_url: String,
}

/// `[limits.windows.<limit>]`: 0 keeps the profile's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    pub burst: u64,
    pub count: u64,
    pub period_secs: u64,
}

/// `[limits.windows]`, one table per limit of LIMITS.md §2.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowsConfig {
    pub new_registrations_per_ip: WindowConfig,
    pub new_registrations_per_ipv6_range: WindowConfig,
    pub new_orders_per_account: WindowConfig,
    pub certificates_per_domain: WindowConfig,
    pub certificates_per_fqdn_set: WindowConfig,
    pub failed_authorizations_per_identifier: WindowConfig,
    pub consecutive_authorization_failures: WindowConfig,
}

impl WindowsConfig {
    pub fn get(&self, name: LimitName) -> WindowConfig {
        match name {
            LimitName::NewRegistrationsPerIp => self.new_registrations_per_ip,
            LimitName::NewRegistrationsPerIpv6Range => self.new_registrations_per_ipv6_range,
            LimitName::NewOrdersPerAccount => self.new_orders_per_account,
            LimitName::CertificatesPerDomain => self.certificates_per_domain,
            LimitName::CertificatesPerFqdnSet => self.certificates_per_fqdn_set,
            LimitName::FailedAuthorizationsPerIdentifier => {
                self.failed_authorizations_per_identifier
            }
            LimitName::ConsecutiveAuthorizationFailures => self.consecutive_authorization_failures,
        }
    }
}

/// `[limits.requests.<endpoint>]`: 0 keeps the profile's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestRateConfig {
    pub per_second: u32,
    pub burst: u32,
}

/// `[limits.requests]`, one table per endpoint class of LIMITS.md §1.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestRatesConfig {
    pub new_nonce: RequestRateConfig,
    pub new_account: RequestRateConfig,
    pub new_order: RequestRateConfig,
    pub revoke_cert: RequestRateConfig,
    pub renewal_info: RequestRateConfig,
    pub directory: RequestRateConfig,
    /// Every other URL under `/acme/`.
    pub other: RequestRateConfig,
}

impl RequestRatesConfig {
    pub fn get(&self, class: EndpointClass) -> RequestRateConfig {
        match class {
            EndpointClass::NewNonce => self.new_nonce,
            EndpointClass::NewAccount => self.new_account,
            EndpointClass::NewOrder => self.new_order,
            EndpointClass::RevokeCert => self.revoke_cert,
            EndpointClass::RenewalInfo => self.renewal_info,
            EndpointClass::Directory => self.directory,
            EndpointClass::Other => self.other,
        }
    }
}

/// The endpoint classes of LIMITS.md §1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointClass {
    NewNonce,
    NewAccount,
    NewOrder,
    RevokeCert,
    RenewalInfo,
    Directory,
    /// Every other URL under `/acme/`.
    Other,
}

impl EndpointClass {
    pub const ALL: [EndpointClass; 7] = [
        EndpointClass::NewNonce,
        EndpointClass::NewAccount,
        EndpointClass::NewOrder,
        EndpointClass::RevokeCert,
        EndpointClass::RenewalInfo,
        EndpointClass::Directory,
        EndpointClass::Other,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The class of a request path; `None` for paths that are not rate
    /// limited (nothing outside `/directory` and `/acme/`).
    pub fn of_path(path: &str) -> Option<EndpointClass> {
        Some(match path {
            "/directory" => EndpointClass::Directory,
            "/acme/new-nonce" => EndpointClass::NewNonce,
            "/acme/new-acct" => EndpointClass::NewAccount,
            "/acme/new-order" => EndpointClass::NewOrder,
            "/acme/revoke-cert" => EndpointClass::RevokeCert,
            p if p == "/acme/renewal-info" || p.starts_with("/acme/renewal-info/") => {
                EndpointClass::RenewalInfo
            }
            p if p.starts_with("/acme/") => EndpointClass::Other,
            _ => return None,
        })
    }

    /// The name used as the problem's `limit` member.
    pub fn limit_name(self) -> &'static str {
        match self {
            EndpointClass::NewNonce => "newNonceRequestsPerIp",
            EndpointClass::NewAccount => "newAccountRequestsPerIp",
            EndpointClass::NewOrder => "newOrderRequestsPerIp",
            EndpointClass::RevokeCert => "revokeCertRequestsPerIp",
            EndpointClass::RenewalInfo => "renewalInfoRequestsPerIp",
            EndpointClass::Directory => "directoryRequestsPerIp",
            EndpointClass::Other => "acmeRequestsPerIp",
        }
    }

    /// How the endpoint is named in details.
    pub fn label(self) -> &'static str {
        match self {
            EndpointClass::NewNonce => "new-nonce",
            EndpointClass::NewAccount => "new-account",
            EndpointClass::NewOrder => "new-order",
            EndpointClass::RevokeCert => "revoke-cert",
            EndpointClass::RenewalInfo => "renewal-info",
            EndpointClass::Directory => "directory",
            EndpointClass::Other => "ACME",
        }
    }
}

/// One endpoint's request rate: `per_second` requests per second with a
/// burst of `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRate {
    pub per_second: u32,
    pub burst: u32,
}

/// The effective limits: each issuance window and each request rate, or
/// `None` where it is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSet {
    windows: [Option<Limit>; 7],
    requests: [Option<RequestRate>; 7],
}

/// (burst, count, period_secs) per limit, in `LimitName::ALL` order.
type WindowTable = [(u64, u64, u64); 7];

const H: u64 = 3600;
const DAY: u64 = 86_400;
const WEEK: u64 = 7 * DAY;

/// LIMITS.md §2, exactly.
const PRODUCTION_WINDOWS: WindowTable = [
    (10, 10, 3 * H),
    (500, 500, 3 * H),
    (300, 300, 3 * H),
    (50, 50, WEEK),
    (5, 5, WEEK),
    (5, 5, H),
    (1152, 1, DAY),
];

/// Generous: a client test suite running hundreds of orders from one
/// address and one account never meets these.
const STAGING_WINDOWS: WindowTable = [
    (30_000, 30_000, 3 * H),
    (300_000, 300_000, 3 * H),
    (300_000, 300_000, 3 * H),
    (30_000, 30_000, WEEK),
    (30_000, 30_000, WEEK),
    (3_000, 3_000, H),
    (3_600, 4, DAY),
];

/// (per second, burst) per endpoint, in `EndpointClass::ALL` order.
type RequestTable = [(u32, u32); 7];

/// LIMITS.md §1, exactly.
const PRODUCTION_REQUESTS: RequestTable = [
    (20, 10),
    (5, 15),
    (300, 200),
    (10, 100),
    (1000, 100),
    (40, 40),
    (250, 125),
];

/// Fifty times production: load tests from one loopback address and
/// clients polling ten times a second stay far below.
const STAGING_REQUESTS: RequestTable = [
    (1_000, 500),
    (250, 750),
    (15_000, 10_000),
    (500, 5_000),
    (50_000, 5_000),
    (2_000, 2_000),
    (12_500, 6_250),
];

impl Profile {
    fn windows(self) -> Option<&'static WindowTable> {
        match self {
            Profile::Production => Some(&PRODUCTION_WINDOWS),
            Profile::Staging => Some(&STAGING_WINDOWS),
            Profile::Unlimited => None,
        }
    }

    fn requests(self) -> Option<&'static RequestTable> {
        match self {
            Profile::Production => Some(&PRODUCTION_REQUESTS),
            Profile::Staging => Some(&STAGING_REQUESTS),
            Profile::Unlimited => None,
        }
    }
}

fn window_index(name: LimitName) -> usize {
    name as usize
}

impl LimitSet {
    /// The effective set. Numbers are checked by [`LimitsConfig::validate`];
    /// a bad one seen here anyway is logged and the profile's value kept.
    pub fn resolve(cfg: &LimitsConfig) -> LimitSet {
        match LimitSet::try_resolve(cfg) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("limits: {e}; using the {:?} profile as is", cfg.profile);
                LimitSet::try_resolve(&LimitsConfig {
                    windows: WindowsConfig::default(),
                    requests: RequestRatesConfig::default(),
                    ..cfg.clone()
                })
                .unwrap_or(LimitSet {
                    windows: [None; 7],
                    requests: [None; 7],
                })
            }
        }
    }

    /// The effective set, or the first configuration error.
    pub fn try_resolve(cfg: &LimitsConfig) -> Result<LimitSet, String> {
        let mut windows = [None; 7];
        for name in LimitName::ALL {
            let over = cfg.windows.get(name);
            let base = cfg.profile.windows().map(|t| t[window_index(name)]);
            let given = over != WindowConfig::default();
            let (b, c, p) = match base {
                Some(b) => b,
                None if given => PRODUCTION_WINDOWS[window_index(name)],
                None => continue,
            };
            let pick = |o: u64, d: u64| if o == 0 { d } else { o };
            let limit = Limit::new(
                pick(over.burst, b),
                pick(over.count, c),
                pick(over.period_secs, p),
            )
            .map_err(|e| format!("limits.windows.{}: {e}", name.config_key()))?;
            windows[window_index(name)] = Some(limit);
        }
        let mut requests = [None; 7];
        for class in EndpointClass::ALL {
            let over = cfg.requests.get(class);
            let base = cfg.profile.requests().map(|t| t[class.index()]);
            let given = over != RequestRateConfig::default();
            let (r, b) = match base {
                Some(b) => b,
                None if given => PRODUCTION_REQUESTS[class.index()],
                None => continue,
            };
            let pick = |o: u32, d: u32| if o == 0 { d } else { o };
            requests[class.index()] = Some(RequestRate {
                per_second: pick(over.per_second, r),
                burst: pick(over.burst, b),
            });
        }
        Ok(LimitSet { windows, requests })
    }

    /// The limit's default parameters, `None` when it is off.
    pub fn window(&self, name: LimitName) -> Option<Limit> {
        self.windows[window_index(name)]
    }

    /// The endpoint's request rate, `None` when it is not limited.
    pub fn request_rate(&self, class: EndpointClass) -> Option<RequestRate> {
        self.requests[class.index()]
    }
}

impl LimitsConfig {
    /// Checks done once at start (called from `Config::validate`).
    pub fn validate(&self) -> Result<(), String> {
        LimitSet::try_resolve(self)?;
        super::TrustedProxies::parse(&self.trusted_proxies)
            .map_err(|e| format!("limits.trusted_proxies: {e}"))?;
        if self.overrides_reload_secs == 0 {
            return Err("limits.overrides_reload_secs must be at least 1".into());
        }
        if self.max_pending_authzs == 0 {
            return Err("limits.max_pending_authzs must be at least 1".into());
        }
        Ok(())
    }

    /// The override file: `overrides_file`, or the default in `data_dir`.
    pub fn overrides_path(&self, data_dir: &Path) -> PathBuf {
        if self.overrides_file.is_empty() {
            data_dir.join("rate-limit-overrides.toml")
        } else {
            PathBuf::from(&self.overrides_file)
        }
    }

    /// The documentation URL details link to: `docs_url`, or `default` (the
    /// server's own page, which the caller knows).
    pub fn docs_url_or(&self, default: &str) -> String {
        if self.docs_url.is_empty() {
            default.to_string()
        } else {
            self.docs_url.clone()
        }
    }

    /// A config for tests and tools: the profile with no numbers on top.
    pub fn with_profile(profile: Profile) -> LimitsConfig {
        LimitsConfig {
            profile,
            windows: WindowsConfig::default(),
            requests: RequestRatesConfig::default(),
            trusted_proxies: Vec::new(),
            overrides_file: String::new(),
            overrides_reload_secs: 2,
            max_pending_authzs: 300,
            docs_url: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_is_limits_md() {
        let s = LimitSet::resolve(&LimitsConfig::with_profile(Profile::Production));
        let w = |n| s.window(n).unwrap();
        assert_eq!(
            w(LimitName::NewRegistrationsPerIp).emission_interval_ns(),
            18 * 60 * 1_000_000_000
        );
        assert_eq!(
            w(LimitName::NewRegistrationsPerIpv6Range).emission_interval_ns(),
            21_600_000_000
        );
        assert_eq!(
            w(LimitName::NewOrdersPerAccount).emission_interval_ns(),
            36_000_000_000
        );
        assert_eq!(
            w(LimitName::CertificatesPerDomain).emission_interval_ns(),
            12_096_000_000_000
        );
        assert_eq!(
            w(LimitName::CertificatesPerFqdnSet).emission_interval_ns(),
            33 * 3600 * 1_000_000_000 + 36 * 60 * 1_000_000_000
        );
        assert_eq!(
            w(LimitName::FailedAuthorizationsPerIdentifier).emission_interval_ns(),
            12 * 60 * 1_000_000_000
        );
        let c = w(LimitName::ConsecutiveAuthorizationFailures);
        assert_eq!((c.burst, c.count, c.period_secs), (1152, 1, 86_400));
        let r = |c| s.request_rate(c).unwrap();
        assert_eq!(
            r(EndpointClass::NewNonce),
            RequestRate {
                per_second: 20,
                burst: 10
            }
        );
        assert_eq!(r(EndpointClass::NewAccount).burst, 15);
        assert_eq!(r(EndpointClass::Other).per_second, 250);
    }

    #[test]
    fn staging_is_generous_and_unlimited_is_off() {
        let s = LimitSet::resolve(&LimitsConfig::with_profile(Profile::Staging));
        assert_eq!(
            s.window(LimitName::NewRegistrationsPerIp).unwrap().burst,
            30_000
        );
        assert_eq!(
            s.window(LimitName::CertificatesPerDomain).unwrap().burst,
            30_000
        );
        assert_eq!(
            s.window(LimitName::CertificatesPerDomain)
                .unwrap()
                .period_secs,
            WEEK
        );
        assert_eq!(
            s.window(LimitName::NewOrdersPerAccount).unwrap().burst,
            300_000
        );
        for c in EndpointClass::ALL {
            let st = s.request_rate(c).unwrap();
            let pr = PRODUCTION_REQUESTS[c.index()];
            assert!(st.per_second > pr.0 && st.burst > pr.1, "{c:?}");
        }
        let u = LimitSet::resolve(&LimitsConfig::with_profile(Profile::Unlimited));
        assert!(LimitName::ALL.iter().all(|n| u.window(*n).is_none()));
        assert!(EndpointClass::ALL
            .iter()
            .all(|c| u.request_rate(*c).is_none()));
    }

    #[test]
    fn numbers_on_top_of_a_profile() {
        let mut cfg = LimitsConfig::with_profile(Profile::Production);
        cfg.windows.new_orders_per_account.burst = 3;
        cfg.requests.new_nonce.per_second = 1;
        let s = LimitSet::resolve(&cfg);
        let l = s.window(LimitName::NewOrdersPerAccount).unwrap();
        assert_eq!((l.burst, l.count, l.period_secs), (3, 300, 3 * H));
        assert_eq!(
            s.request_rate(EndpointClass::NewNonce),
            Some(RequestRate {
                per_second: 1,
                burst: 10
            })
        );

        // On `unlimited`, numbers switch just that limit on.
        let mut cfg = LimitsConfig::with_profile(Profile::Unlimited);
        cfg.windows.certificates_per_domain = WindowConfig {
            burst: 2,
            count: 2,
            period_secs: 0,
        };
        let s = LimitSet::resolve(&cfg);
        let l = s.window(LimitName::CertificatesPerDomain).unwrap();
        assert_eq!((l.burst, l.count, l.period_secs), (2, 2, WEEK));
        assert!(s.window(LimitName::NewOrdersPerAccount).is_none());
        assert!(s.request_rate(EndpointClass::NewNonce).is_none());
    }

    #[test]
    fn bad_numbers_are_refused_with_the_key() {
        let mut cfg = LimitsConfig::with_profile(Profile::Production);
        cfg.windows.consecutive_authorization_failures.burst = u64::MAX;
        let e = cfg.validate().unwrap_err();
        assert!(
            e.contains("limits.windows.consecutive_authorization_failures"),
            "{e}"
        );
        let mut cfg = LimitsConfig::with_profile(Profile::Production);
        cfg.trusted_proxies = vec!["10.0.0.0/33".into()];
        assert!(cfg.validate().unwrap_err().contains("trusted_proxies"));
    }

    #[test]
    fn endpoint_classes_from_paths() {
        let c = EndpointClass::of_path;
        assert_eq!(c("/directory"), Some(EndpointClass::Directory));
        assert_eq!(c("/acme/new-nonce"), Some(EndpointClass::NewNonce));
        assert_eq!(c("/acme/new-acct"), Some(EndpointClass::NewAccount));
        assert_eq!(c("/acme/new-order"), Some(EndpointClass::NewOrder));
        assert_eq!(c("/acme/revoke-cert"), Some(EndpointClass::RevokeCert));
        assert_eq!(
            c("/acme/renewal-info/abc.def"),
            Some(EndpointClass::RenewalInfo)
        );
        assert_eq!(c("/acme/order/12"), Some(EndpointClass::Other));
        assert_eq!(c("/acme/new-order-x"), Some(EndpointClass::Other));
        assert_eq!(c("/roots/0"), None);
        assert_eq!(c("/"), None);
    }
}

#[cfg(test)]
mod preset_tests {
    use super::*;
    use crate::config::load_preset as load;

    #[test]
    fn presets_pick_their_profiles() {
        for (preset, profile) in [
            ("dev", Profile::Production),
            ("test", Profile::Staging),
            ("staging", Profile::Staging),
            ("production", Profile::Production),
        ] {
            let c = load(
                preset,
                &[("CAIRN_SERVER_EXTERNAL_URL", "https://ca.example")],
            )
            .unwrap();
            assert_eq!(c.limits.profile, profile, "{preset}");
            assert_eq!(c.limits.max_pending_authzs, 300);
        }
    }

    #[test]
    fn every_number_has_an_environment_name() {
        let c = load(
            "test",
            &[
                ("CAIRN_LIMITS_PROFILE", "unlimited"),
                ("CAIRN_LIMITS_WINDOWS_NEW_ORDERS_PER_ACCOUNT_BURST", "3"),
                (
                    "CAIRN_LIMITS_WINDOWS_NEW_ORDERS_PER_ACCOUNT_PERIOD_SECS",
                    "60",
                ),
                ("CAIRN_LIMITS_REQUESTS_NEW_NONCE_PER_SECOND", "7"),
                ("CAIRN_LIMITS_TRUSTED_PROXIES", "10.0.0.0/8, ::1"),
                (
                    "CAIRN_LIMITS_DOCS_URL",
                    "https://ca.example/docs/rate-limits",
                ),
            ],
        )
        .unwrap();
        assert_eq!(c.limits.profile, Profile::Unlimited);
        assert_eq!(c.limits.trusted_proxies, vec!["10.0.0.0/8", "::1"]);
        let s = LimitSet::resolve(&c.limits);
        let l = s.window(LimitName::NewOrdersPerAccount).unwrap();
        assert_eq!((l.burst, l.count, l.period_secs), (3, 300, 60));
        assert!(s.window(LimitName::CertificatesPerDomain).is_none());
        assert_eq!(
            s.request_rate(EndpointClass::NewNonce),
            Some(RequestRate {
                per_second: 7,
                burst: 10
            })
        );
        let e = load("dev", &[("CAIRN_LIMITS_PROFILE", "lavish")]).unwrap_err();
        assert!(format!("{e:#}").contains("lavish"), "{e:#}");
        let e = load("dev", &[("CAIRN_LIMITS_TRUSTED_PROXIES", "10.0.0.0/40")]).unwrap_err();
        assert!(format!("{e:#}").contains("limits.trusted_proxies"), "{e:#}");
    }
}
