//! Typed configuration: a preset (`config/<name>.toml`, compiled in), then an
//! optional TOML file, then `CAIRN_*` environment variables, validated once at
//! start. After loading, code trusts it.
//!
//! Every setting has an environment name: its TOML path joined with `_` and
//! upper-cased, e.g. `va.http01_port` is `CAIRN_VA_HTTP01_PORT` and
//! `database.url` is `CAIRN_DATABASE_URL`. Lists are comma-separated.

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The compiled-in presets.
pub(crate) const PRESETS: &[(&str, &str)] = &[
    ("dev", include_str!("../config/dev.toml")),
    ("test", include_str!("../config/test.toml")),
    ("staging", include_str!("../config/staging.toml")),
    ("production", include_str!("../config/production.toml")),
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the database, CA keys and certificates live.
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub ca: CaConfig,
    pub acme: AcmeConfig,
    pub va: VaConfig,
    pub policy: PolicyConfig,
    /// Rate limits (LIMITS.md): `[limits]`, see `crate::ratelimit`.
    pub limits: crate::ratelimit::LimitsConfig,
    /// Certificate profiles offered (directory `meta.profiles`), by name.
    /// A `[profiles]` table in a file replaces the preset's whole set.
    pub profiles: std::collections::BTreeMap<String, ProfileConfig>,
    pub retention: RetentionConfig,
    /// Injected faults for client test suites (`crate::faults`).
    pub faults: FaultsConfig,
}

/// Fault injection (README, "Fault injection"): off while `rules` is empty.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsConfig {
    /// Seed of the draws for `P%` rules: one seed, one sequence of faults.
    pub seed: u64,
    /// Rules `ENDPOINT:FAULT[=N][@WHEN]`, e.g. `newOrder:rateLimited=30@50%`.
    pub rules: Vec<String>,
}

/// A certificate profile: what an order of this profile may contain, how
/// long its authorizations live, and what its certificate looks like.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// Shown in the directory's `meta.profiles`.
    pub description: String,
    /// Certificate validity, seconds (notAfter - notBefore), 1 s to 100
    /// years.
    pub validity_secs: u64,
    /// Identifier types an order may contain: `dns`, `ip`.
    pub identifier_types: Vec<crate::core::IdentifierType>,
    /// Maximum identifiers per order (1-100).
    pub max_names: usize,
    /// Lifetime of a pending authorization and of an order, seconds.
    pub pending_authz_lifetime_secs: u64,
    pub order_lifetime_secs: u64,
    /// How long a valid authorization is reused by later orders of the same
    /// account and profile, seconds.
    pub valid_authz_lifetime_secs: u64,
    /// Put a dNSName in the subject common name (the CSR's CN if it asks
    /// for one of the order's names, else the first).
    pub common_name: bool,
    /// Include the Subject Key Identifier extension.
    pub subject_key_id: bool,
    /// Add TLS Client Authentication to the extended key usages (always
    /// TLS Server Authentication).
    pub client_auth: bool,
    /// Add the keyEncipherment key usage for RSA keys (TLS 1.2 RSA key
    /// exchange; always digitalSignature).
    pub key_encipherment: bool,
    /// ARI (RFC 9773): the suggested renewal window opens when 1/N of the
    /// certificate's validity is left (Let's Encrypt: 3; 2 for short-lived
    /// certificates), and lasts 1/M of the validity.
    pub ari_window_divisor: u32,
    pub ari_window_length_divisor: u32,
}

/// What the database forgets, and when (`crate::retention`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Purge expired orders and authorizations every `interval_secs`. Used
    /// nonces and full rate-limit buckets are pruned either way.
    pub enabled: bool,
    /// Seconds between purges.
    pub interval_secs: u64,
    /// Seconds an order or authorization is kept after it expired.
    pub keep_expired_secs: u64,
    /// Rows deleted per transaction (each table in turn).
    pub batch_size: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// HTTPS listener for the ACME API.
    pub listen: SocketAddr,
    /// Runtime threads that serve requests; 0: one per core. The `test`
    /// preset runs one: a client's test suite beside it on a small machine
    /// gets the other cores, and one thread spends less CPU per issuance
    /// (no hand-offs between threads) and answers one client sooner, at
    /// the cost of peak throughput under many concurrent clients.
    pub worker_threads: usize,
    /// The ACME API's externally visible base URL (`https://acme.example.com`,
    /// no path): every URL Cairn renders (directory, Location, Link, `kid`,
    /// the JWS `url` check) starts with it. Empty: taken from each request's
    /// `Host`, which only `trust_host_header` allows.
    pub external_url: String,
    /// Render URLs from the request's `Host` when `external_url` is empty,
    /// so `localhost`, `127.0.0.1` and `[::1]` all work (`dev`, `test`).
    /// Off in `staging` and `production`: a client must not choose the URLs
    /// a shared CA hands out, so `external_url` is required there.
    pub trust_host_header: bool,
    /// Plain-HTTP management listener (roots, intermediates); empty disables it.
    pub management_listen: String,
    /// Serve the management listener over HTTPS, with the ACME listener's
    /// certificate, as Pebble does (`cairn pebble` sets it).
    pub management_tls: bool,
    /// Also serve the CA's private keys on the management listener
    /// (`/root-keys/0`, `/intermediate-keys/0`), as Pebble does. For test
    /// CAs only: whoever reaches the listener can then sign as the CA.
    pub management_ca_keys: bool,
    /// PEM certificate chain and key for the HTTPS listener. Empty: Cairn
    /// issues one from its own root for localhost, 127.0.0.1 and ::1.
    pub tls_cert: String,
    pub tls_key: String,
    /// On SIGTERM/SIGINT: stop accepting, then wait at most this long for
    /// requests in flight to finish before closing the rest.
    pub shutdown_grace_secs: u64,
    /// Largest accepted request body, in bytes. A larger `Content-Length`
    /// is refused (413) before any of the body is read.
    pub max_body_bytes: usize,
    /// Longest accepted request target (path and query), bytes (414 above).
    pub max_uri_bytes: usize,
    /// Largest accepted header fields of a request, bytes in total (431
    /// above). hyper refuses heads over twice `max_uri_bytes +
    /// max_header_bytes` itself, with an empty 431.
    pub max_header_bytes: usize,
    /// Open connections, both listeners together. At the cap the
    /// connection that has waited on its client the longest is closed for
    /// a new one. Lowered at start to the open-file limit less 128.
    pub max_connections: usize,
    /// Seconds for a TLS handshake, from accept to finished.
    pub tls_handshake_timeout_secs: u64,
    /// Seconds from the first byte of an HTTP/1 request head to its end.
    pub header_read_timeout_secs: u64,
    /// Seconds from a request's head to the end of its body.
    pub body_timeout_secs: u64,
    /// Seconds a connection may sit with no request in progress (after
    /// the handshake, between keep-alive requests, HTTP/2 with no stream)
    /// before it is closed.
    pub idle_timeout_secs: u64,
    /// HTTP/2: concurrent streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: flow-control windows, bytes: what a client may send on one
    /// stream, and on one connection, before the server reads it.
    pub h2_stream_window_bytes: u32,
    pub h2_connection_window_bytes: u32,
    /// Request bodies all connections together may have in memory, bytes.
    /// Each request reserves its `Content-Length` (or `max_body_bytes`)
    /// before reading; past this, requests get 503 with `Retry-After`.
    pub max_buffered_body_bytes: usize,
    /// Serve `POST /clock/advance {"seconds": N}` on the management listener,
    /// which moves this instance's clock forward (rehearsing rate-limit
    /// windows and expiry). On in the `test` preset only.
    pub clock_control: bool,
    /// A second path answered exactly as `/directory` (`cairn pebble` sets
    /// Pebble's `/dir`); empty for none.
    pub directory_alias: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path` or `postgres://...`. Empty: `sqlite://<data_dir>/cairn.db`.
    pub url: String,
    pub max_connections: u32,
    /// SQLite only: when a commit reaches the disk (its `synchronous`).
    pub sqlite_synchronous: SqliteSynchronous,
}

/// SQLite's `synchronous` in WAL mode. `full`: every commit is on the
/// disk before it is acknowledged, so it survives a power loss. `normal`:
/// commits reach the operating system, not the disk, until a checkpoint;
/// they survive the process being killed (`kill -9`), not a power loss or
/// a kernel crash, and cost no fsync each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    Full,
    Normal,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// Key type of the generated root and intermediate: `ecdsa-p256`,
    /// `ecdsa-p384` or `rsa-2048`.
    pub key_type: String,
    /// Subject common names of the generated hierarchy.
    pub root_name: String,
    pub intermediate_name: String,
    /// Base URL (plain HTTP) where the issuer certificate is published, used
    /// in the AIA caIssuers field and the CRL distribution point (the CRL is
    /// `<issuer_base_url>/crl/0`). Empty: `http://<management_listen>`.
    pub issuer_base_url: String,
    /// How often a fresh CRL is signed even when nothing was revoked, seconds.
    /// A revocation publishes a new CRL at once.
    pub crl_update_secs: u64,
    /// nextUpdate of a CRL: thisUpdate plus this many seconds. Must exceed
    /// `crl_update_secs` so a published CRL never goes stale.
    pub crl_lifetime_secs: u64,
}

/// `acme.terms_of_service` naming Cairn's own terms page, served at this
/// path of the ACME listener.
pub(crate) const BUILTIN_TERMS: &str = "/terms";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// Terms-of-service URL shown in the directory; empty means none, and then
    /// agreement is not required. `BUILTIN_TERMS` (`"/terms"`) means Cairn's
    /// own short terms page, served at that path of this server.
    pub terms_of_service: String,
    pub website: String,
    pub caa_identities: Vec<String>,
    /// RFC 8555 §7.3.4: newAccount must carry an external account binding
    /// made with a key from `cairn admin eab create`.
    pub external_account_required: bool,
    /// The profile of orders that name none; one of `[profiles]`.
    pub default_profile: String,
    /// Pebble's `-strict` checks: refuse a JWS payload carrying ACME v1's
    /// `resource` field, and a challenge POST whose body is not exactly
    /// `{}` (RFC 8555 §7.5.1). Off in every preset (Let's Encrypt makes
    /// neither refusal); `cairn pebble -strict` turns it on.
    pub strict: bool,
    /// Orders per page in the account's orders list.
    pub orders_per_page: u32,
    /// Maximum contacts per account.
    pub max_contacts: usize,
    /// `Retry-After` on pending challenges/authorizations and processing orders.
    pub retry_after_secs: u64,
    /// Lifetime of a nonce, seconds.
    pub nonce_lifetime_secs: u64,
    /// Where used nonces are remembered (`NonceStore`).
    pub nonces: NonceStore,
    /// `Retry-After` of renewalInfo responses (RFC 9773), seconds.
    pub ari_retry_after_secs: u64,
    /// `explanationURL` of renewalInfo windows moved by `cairn admin certs
    /// renew-early` or revocation; empty leaves it out.
    pub ari_explanation_url: String,
}

/// Where used nonces are remembered. `shared`: in the database, under the
/// database's key, so any number of instances sharing it accept a nonce
/// once between them. `local`: in this process's memory, under a key of
/// its own, with no database write per request; only one instance may
/// then serve the data directory (a lock on `<data_dir>/nonces.lock`), and
/// a restart makes every earlier nonce `badNonce` (clients retry with the
/// `Replay-Nonce` of the error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NonceStore {
    Shared,
    Local,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaConfig {
    /// Port dialled for http-01 (80 in production).
    pub http01_port: u16,
    /// Port dialled for tls-alpn-01 (443 in production).
    pub tls_alpn01_port: u16,
    /// DNS resolver `host:port`; empty uses the system configuration.
    pub resolver: String,
    /// Allow validation against private, loopback and link-local addresses.
    pub allow_private_addresses: bool,
    /// Make every validation succeed without any network traffic (load tests).
    pub always_valid: bool,
    /// Per-validation timeout, seconds.
    pub timeout_secs: u64,
    /// Largest http-01 response body read, bytes.
    pub http_max_body_bytes: usize,
    /// Maximum redirects followed for http-01.
    pub http_max_redirects: usize,
    /// Check CAA records before marking a challenge valid.
    pub check_caa: bool,
    /// The Issuer Domain Names a dns-persist-01 record may name for this CA
    /// (the challenge's `issuer-domain-names`, draft-ietf-acme-dns-persist-01
    /// §3.1): lower-case A-labels without a trailing dot, at most 10. Empty:
    /// dns-persist-01 is not offered.
    #[serde(default)]
    pub dns_persist_issuer_domains: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Names (and everything under them) that may never be issued for.
    pub blocked_names: Vec<String>,
    /// Public Suffix List file; empty uses the snapshot compiled in.
    pub public_suffix_list: String,
}

/// Where configuration comes from, in order of precedence (last wins).
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub preset: Option<String>,
    pub file: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
}

impl Config {
    /// Load a preset, then `file`, then `CAIRN_*` variables, then flags.
    pub fn load(src: &Sources) -> anyhow::Result<Config> {
        let cfg = Self::load_with_env(src, |k| std::env::var(k).ok())?;
        cfg.warn_unknown_env();
        Ok(cfg)
    }

    /// `CAIRN_*` variables of this process that name no setting: a renamed
    /// or misspelt key, which would otherwise be ignored without a word.
    /// Variables Cairn reads outside the configuration are not counted.
    pub fn unknown_env_names(&self, names: impl Iterator<Item = String>) -> Vec<String> {
        const OTHERS: &[&str] = &[
            "CAIRN_LOG",
            "CAIRN_LOG_FORMAT",
            "CAIRN_PRESET",
            "CAIRN_CONFIG",
        ];
        const OTHER_PREFIXES: &[&str] = &["CAIRN_TEST_", "CAIRN_TESTDNS_"];
        let mut known = std::collections::BTreeSet::new();
        if let Ok(value) = toml::Value::try_from(self) {
            env_names(&value, "CAIRN", &mut known);
        }
        let mut unknown: Vec<String> = names
            .filter(|k| k.starts_with("CAIRN_"))
            .filter(|k| !known.contains(k) && !OTHERS.contains(&k.as_str()))
            .filter(|k| !OTHER_PREFIXES.iter().any(|p| k.starts_with(p)))
            .collect();
        unknown.sort();
        unknown
    }

    /// A warning naming each unknown `CAIRN_*` variable (scripts around
    /// Cairn may use the prefix for their own, so a start goes on;
    /// `cairn config check` refuses them).
    pub fn warn_unknown_env(&self) {
        for name in self.unknown_env_names(std::env::vars().map(|(k, _)| k)) {
            tracing::warn!(
                "environment variable {name} names no setting, so it changes nothing (a \
                 setting's variable is its TOML path upper-cased and joined with _, e.g. \
                 CAIRN_VA_HTTP01_PORT)"
            );
        }
    }

    pub fn load_with_env(
        src: &Sources,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Config> {
        Self::load_with_overlay(src, None, env)
    }

    /// Like [`Config::load_with_env`], with `overlay` (a table of settings,
    /// as a TOML file would give them) applied after the file and before
    /// the environment: how `cairn pebble` applies a translated Pebble
    /// configuration.
    pub fn load_with_overlay(
        src: &Sources,
        overlay: Option<toml::Value>,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Config> {
        let preset = src
            .preset
            .clone()
            .or_else(|| env("CAIRN_PRESET"))
            .unwrap_or_else(|| "dev".into());
        let text = PRESETS
            .iter()
            .find(|(n, _)| *n == preset)
            .map(|(_, t)| *t)
            .ok_or_else(|| anyhow!("unknown preset {preset:?} (dev, test, staging, production)"))?;
        let mut value: toml::Value = toml::from_str(text).context("preset")?;
        let file = src
            .file
            .clone()
            .or_else(|| env("CAIRN_CONFIG").map(PathBuf::from));
        if let Some(path) = &file {
            let t = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            let over: toml::Value =
                toml::from_str(&t).with_context(|| format!("parsing {}", path.display()))?;
            merge(&mut value, over, "")?;
        }
        if let Some(over) = overlay {
            merge(&mut value, over, "")?;
        }
        apply_env(&mut value, "CAIRN", &env)?;
        if let Some(d) = &src.data_dir {
            if let toml::Value::Table(t) = &mut value {
                t.insert(
                    "data_dir".into(),
                    toml::Value::String(d.display().to_string()),
                );
            }
        }
        let cfg: Config = value
            .try_into()
            .map_err(|e| anyhow!("configuration: {e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The profile named `name`; `""` (orders from before profiles) is the
    /// default profile.
    pub fn profile(&self, name: &str) -> Option<&ProfileConfig> {
        let name = if name.is_empty() {
            &self.acme.default_profile
        } else {
            name
        };
        self.profiles.get(name)
    }

    /// A profile of the `test` preset, for unit tests.
    #[cfg(test)]
    pub fn test_profile(name: &str) -> ProfileConfig {
        let src = Sources {
            preset: Some("test".into()),
            ..Sources::default()
        };
        let cfg = Config::load_with_env(&src, |_| None).expect("test preset loads");
        cfg.profiles[name].clone()
    }

    /// The longest validity of any profile: how far back an earlier
    /// certificate for the same names may still be live.
    pub fn max_validity_secs(&self) -> u64 {
        self.profiles
            .values()
            .map(|p| p.validity_secs)
            .max()
            .unwrap_or(0)
    }

    fn validate_profiles(&self) -> anyhow::Result<()> {
        if self.profiles.is_empty() {
            bail!("profiles: at least one certificate profile is required");
        }
        if !self.profiles.contains_key(&self.acme.default_profile) {
            bail!(
                "acme.default_profile: {:?} is not one of the profiles {:?}",
                self.acme.default_profile,
                self.profiles.keys().collect::<Vec<_>>()
            );
        }
        for (name, p) in &self.profiles {
            let ok_name = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
            if !ok_name {
                bail!("profiles.{name}: a profile name is 1-64 letters, digits, '-', '_' or '.'");
            }
            if p.validity_secs == 0 || p.validity_secs > 100 * 365 * 86_400 {
                bail!("profiles.{name}.validity_secs must be between 1 second and 100 years");
            }
            if p.identifier_types.is_empty() {
                bail!("profiles.{name}.identifier_types: name at least one of \"dns\", \"ip\"");
            }
            if p.max_names == 0 || p.max_names > 100 {
                bail!("profiles.{name}.max_names must be between 1 and 100");
            }
            if !(2..=100).contains(&p.ari_window_divisor) {
                bail!("profiles.{name}.ari_window_divisor must be between 2 and 100");
            }
            if !(2..=1000).contains(&p.ari_window_length_divisor)
                || p.ari_window_length_divisor < p.ari_window_divisor
            {
                bail!(
                    "profiles.{name}.ari_window_length_divisor must be between \
                     ari_window_divisor and 1000 (the window ends before the certificate)"
                );
            }
            for (k, v) in [
                ("pending_authz_lifetime_secs", p.pending_authz_lifetime_secs),
                ("order_lifetime_secs", p.order_lifetime_secs),
                ("valid_authz_lifetime_secs", p.valid_authz_lifetime_secs),
            ] {
                if v == 0 || v > 398 * 86_400 {
                    bail!("profiles.{name}.{k} must be between 1 second and 398 days");
                }
            }
        }
        Ok(())
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.limits.validate().map_err(|e| anyhow!(e))?;
        if !self.management_listen().map(|_| true).unwrap_or(false)
            && !self.server.management_listen.is_empty()
        {
            bail!(
                "server.management_listen: {:?} is not host:port",
                self.server.management_listen
            );
        }
        match self.ca.key_type.as_str() {
            "ecdsa-p256" | "ecdsa-p384" | "rsa-2048" => {}
            k => bail!("ca.key_type: {k:?} is not ecdsa-p256, ecdsa-p384 or rsa-2048"),
        }
        self.validate_profiles()?;
        for rule in &self.faults.rules {
            crate::faults::Rule::parse(rule).map_err(|e| anyhow!("faults.rules: {e}"))?;
        }
        if self.ca.crl_update_secs == 0 || self.ca.crl_lifetime_secs <= self.ca.crl_update_secs {
            bail!("ca.crl_update_secs must be at least 1 and less than ca.crl_lifetime_secs");
        }
        if self.retention.interval_secs == 0 || self.retention.interval_secs > 86_400 {
            bail!("retention.interval_secs must be between 1 and 86400");
        }
        if self.retention.batch_size == 0 || self.retention.batch_size > 10_000 {
            bail!("retention.batch_size must be between 1 and 10000");
        }
        if self.retention.keep_expired_secs > 100 * 366 * 86_400 {
            bail!("retention.keep_expired_secs must be at most 100 years");
        }
        if self.acme.orders_per_page == 0 {
            bail!("acme.orders_per_page must be at least 1");
        }
        if !self.va.resolver.is_empty() && self.va.resolver.parse::<SocketAddr>().is_err() {
            bail!("va.resolver: {:?} is not ip:port", self.va.resolver);
        }
        check_issuer_domains(&self.va.dns_persist_issuer_domains)?;
        let tos = &self.acme.terms_of_service;
        if !tos.is_empty()
            && tos != BUILTIN_TERMS
            && !(tos.starts_with("https://") || tos.starts_with("http://"))
        {
            bail!(
                "acme.terms_of_service: {tos:?} is neither an http(s) URL nor {BUILTIN_TERMS:?} \
                 (Cairn's own page)"
            );
        }
        let ext = &self.server.external_url;
        if ext.is_empty() {
            if !self.server.trust_host_header {
                bail!(
                    "server.external_url is required (e.g. \"https://acme.example.com\") when \
                     server.trust_host_header is false, as in the staging and production presets"
                );
            }
        } else {
            let u = url::Url::parse(ext)
                .map_err(|e| anyhow!("server.external_url: {ext:?} is not a URL: {e}"))?;
            if u.scheme() != "https"
                || u.host_str().is_none()
                || u.path() != "/"
                || u.query().is_some()
                || u.fragment().is_some()
                || !u.username().is_empty()
                || ext.ends_with('/')
            {
                bail!(
                    "server.external_url: {ext:?} must be https://HOST[:PORT], with no path, \
                     query or trailing slash"
                );
            }
        }
        self.validate_connection_limits()?;
        let alias = &self.server.directory_alias;
        if !alias.is_empty()
            && (!alias.starts_with('/')
                || alias == "/directory"
                || alias.starts_with("/acme/")
                || alias.contains(['?', '#']))
        {
            bail!(
                "server.directory_alias: {alias:?} must be a path such as \"/dir\", not \
                 /directory and not under /acme/"
            );
        }
        if self.server.tls_cert.is_empty() != self.server.tls_key.is_empty() {
            bail!("server.tls_cert and server.tls_key must be set together");
        }
        if !self.database.url.is_empty()
            && !self.database.url.starts_with("sqlite:")
            && !self.database.url.starts_with("postgres://")
            && !self.database.url.starts_with("postgresql://")
        {
            bail!("database.url must start with sqlite: or postgres://");
        }
        Ok(())
    }

    fn validate_connection_limits(&self) -> anyhow::Result<()> {
        let s = &self.server;
        for (name, v) in [
            ("tls_handshake_timeout_secs", s.tls_handshake_timeout_secs),
            ("header_read_timeout_secs", s.header_read_timeout_secs),
            ("body_timeout_secs", s.body_timeout_secs),
            ("idle_timeout_secs", s.idle_timeout_secs),
        ] {
            if v == 0 || v > 3600 {
                bail!("server.{name} must be between 1 and 3600");
            }
        }
        if s.max_connections == 0 || s.h2_max_concurrent_streams == 0 {
            bail!("server.max_connections and server.h2_max_concurrent_streams must be at least 1");
        }
        if s.max_uri_bytes < 256 || s.max_header_bytes < 1024 {
            bail!("server.max_uri_bytes must be at least 256 and server.max_header_bytes at least 1024");
        }
        // RFC 9113 §6.9.1: windows above 2^31-1 are a protocol error.
        let window = 16_384..=0x7fff_ffff;
        if !window.contains(&s.h2_stream_window_bytes)
            || !window.contains(&s.h2_connection_window_bytes)
        {
            bail!("server.h2_stream_window_bytes and h2_connection_window_bytes must be between 16384 and 2147483647");
        }
        if s.max_buffered_body_bytes < s.max_body_bytes {
            bail!("server.max_buffered_body_bytes must be at least server.max_body_bytes");
        }
        Ok(())
    }

    pub fn management_listen(&self) -> Option<SocketAddr> {
        self.server.management_listen.parse().ok()
    }

    /// The database URL, defaulting to a SQLite file in the data directory.
    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("cairn.db").display())
        } else {
            self.database.url.clone()
        }
    }

    /// Base URL of the plain-HTTP listener that publishes issuer certificates.
    pub fn issuer_base_url(&self) -> String {
        if !self.ca.issuer_base_url.is_empty() {
            return self.ca.issuer_base_url.trim_end_matches('/').to_string();
        }
        let scheme = if self.server.management_tls {
            "https"
        } else {
            "http"
        };
        match self.management_listen() {
            Some(a) => format!("{scheme}://{a}"),
            None => String::new(),
        }
    }

    /// The ACME base URL used where no request is at hand (CAA accounturi,
    /// logs): `server.external_url`, else `https://localhost:<port>` for
    /// loopback or unspecified listeners.
    pub fn default_base_url(&self) -> String {
        if !self.server.external_url.is_empty() {
            return self.server.external_url.clone();
        }
        let a = self.server.listen;
        if a.ip().is_loopback() || a.ip().is_unspecified() {
            format!("https://localhost:{}", a.port())
        } else {
            format!("https://{a}")
        }
    }

    pub fn data_path(&self, name: &str) -> PathBuf {
        self.data_dir.join(name)
    }
}

/// Merge `over` into `base`, refusing keys the base does not have.
fn merge(base: &mut toml::Value, over: toml::Value, path: &str) -> anyhow::Result<()> {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get_mut(&k) {
                    // A profile set is replaced whole: what a file offers
                    // is exactly what it lists.
                    Some(slot) if p == "profiles" => *slot = v,
                    Some(slot) => merge(slot, v, &p)?,
                    None => bail!("unknown configuration key {p:?}"),
                }
            }
            Ok(())
        }
        (slot, v) => {
            *slot = v;
            Ok(())
        }
    }
}

/// The variable name of every leaf of `value`.
fn env_names(value: &toml::Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
    if let toml::Value::Table(t) = value {
        for (k, v) in t {
            let name = format!("{prefix}_{}", k.to_uppercase());
            if v.is_table() {
                env_names(v, &name, out);
            } else {
                out.insert(name);
            }
        }
    }
}

/// Override every leaf that has a `CAIRN_*` variable set.
/// draft-ietf-acme-dns-persist-01 §3.1: one to ten names, each a lower-case
/// A-label name with no trailing dot, at most 253 octets. Checked rather
/// than normalized, so the challenge shows exactly what was configured.
fn check_issuer_domains(names: &[String]) -> anyhow::Result<()> {
    const KEY: &str = "va.dns_persist_issuer_domains";
    if names.len() > 10 {
        bail!("{KEY}: {} names; the draft allows at most 10", names.len());
    }
    for n in names {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if n.len() > 253 || !n.split('.').all(label_ok) {
            bail!(
                "{KEY}: {n:?} is not a lower-case A-label domain name without a trailing dot \
                 (e.g. \"ca.example.com\")"
            );
        }
    }
    Ok(())
}

fn apply_env(
    value: &mut toml::Value,
    prefix: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> anyhow::Result<()> {
    if let toml::Value::Table(t) = value {
        for (k, v) in t.iter_mut() {
            let name = format!("{prefix}_{}", k.to_uppercase());
            if let toml::Value::Table(_) = v {
                apply_env(v, &name, env)?;
                continue;
            }
            let Some(raw) = env(&name) else { continue };
            *v = parse_like(v, &raw).with_context(|| format!("environment variable {name}"))?;
        }
    }
    Ok(())
}

fn parse_like(current: &toml::Value, raw: &str) -> anyhow::Result<toml::Value> {
    Ok(match current {
        toml::Value::String(_) => toml::Value::String(raw.to_string()),
        toml::Value::Integer(_) => toml::Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| anyhow!("{raw:?} is not an integer"))?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(match raw.trim() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => bail!("{raw:?} is not a boolean"),
        }),
        toml::Value::Float(_) => toml::Value::Float(
            raw.trim()
                .parse()
                .map_err(|_| anyhow!("{raw:?} is not a number"))?,
        ),
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        other => bail!("cannot set a {} from the environment", other.type_str()),
    })
}

/// Ensure a directory exists (used for the data directory at start).
/// A URL fit for messages and logs: any password (in the authority, or a
/// `password`/`sslpassword` query parameter) replaced by `***`. A string that
/// does not parse as a URL is shown only up to its scheme.
pub fn redact_url(raw: &str) -> String {
    if raw.is_empty() {
        return String::new();
    }
    let Ok(mut u) = url::Url::parse(raw) else {
        return match raw.split_once(':') {
            Some((scheme, _)) => format!("{scheme}:***"),
            None => "***".into(),
        };
    };
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let secret =
                    k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword");
                (
                    k.into_owned(),
                    if secret { "***".into() } else { v.into_owned() },
                )
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

/// Create a directory (and its parents) if missing; a directory this creates
/// is owner-only (0700): the data directory holds keys and the database.
pub(crate) fn ensure_dir(p: &Path) -> anyhow::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(p)
        .with_context(|| format!("creating {}", p.display()))
}

/// Tests: a preset with these variables as the whole environment.
#[cfg(test)]
pub(crate) fn load_preset(preset: &str, env: &[(&str, &str)]) -> anyhow::Result<Config> {
    let m: std::collections::HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::load_with_env(
        &Sources {
            preset: Some(preset.into()),
            ..Default::default()
        },
        |k| m.get(k).cloned(),
    )
}

#[cfg(test)]
mod tests {
    use super::load_preset as load;
    use super::*;

    const EXTERNAL: (&str, &str) = ("CAIRN_SERVER_EXTERNAL_URL", "https://acme.example.com");

    #[test]
    fn every_preset_loads() {
        for (name, _) in PRESETS {
            load(name, &[EXTERNAL]).unwrap_or_else(|e| panic!("preset {name}: {e:#}"));
        }
    }

    /// Only the test preset trades a power loss's worth of SQLite commits
    /// for an fsync per commit; kill -9 loses nothing on any preset.
    #[test]
    fn only_the_test_preset_skips_the_fsync_per_commit() {
        for (name, _) in PRESETS {
            let c = load(name, &[EXTERNAL]).unwrap();
            let want = if *name == "test" {
                SqliteSynchronous::Normal
            } else {
                SqliteSynchronous::Full
            };
            assert_eq!(c.database.sqlite_synchronous, want, "preset {name}");
        }
        let c = load("dev", &[("CAIRN_DATABASE_SQLITE_SYNCHRONOUS", "normal")]).unwrap();
        assert_eq!(c.database.sqlite_synchronous, SqliteSynchronous::Normal);
        let e = load("dev", &[("CAIRN_DATABASE_SQLITE_SYNCHRONOUS", "off")]).unwrap_err();
        assert!(format!("{e:#}").contains("sqlite_synchronous"), "{e:#}");
    }

    /// dev and test render URLs from the request's Host; staging and
    /// production only from `server.external_url`, which they require.
    #[test]
    fn shared_presets_require_an_external_url() {
        for name in ["dev", "test"] {
            let c = load(name, &[]).unwrap_or_else(|e| panic!("preset {name}: {e:#}"));
            assert!(c.server.trust_host_header && c.server.external_url.is_empty());
        }
        for name in ["staging", "production"] {
            let e = load(name, &[]).unwrap_err().to_string();
            assert!(e.contains("server.external_url is required"), "{name}: {e}");
            let c = load(name, &[EXTERNAL]).unwrap();
            assert!(!c.server.trust_host_header);
            assert_eq!(c.default_base_url(), "https://acme.example.com");
        }
        for bad in [
            "http://acme.example.com",
            "https://acme.example.com/",
            "https://acme.example.com/acme",
            "https://acme.example.com?x=1",
            "https://user:pw@acme.example.com",
            "acme.example.com",
        ] {
            let e = load("production", &[("CAIRN_SERVER_EXTERNAL_URL", bad)])
                .unwrap_err()
                .to_string();
            assert!(e.contains("server.external_url"), "{bad}: {e}");
        }
        load(
            "production",
            &[("CAIRN_SERVER_EXTERNAL_URL", "https://[::1]:8443")],
        )
        .unwrap();
    }

    #[test]
    fn env_overrides_nested_keys() {
        let c = load(
            "test",
            &[
                ("CAIRN_VA_HTTP01_PORT", "6000"),
                ("CAIRN_DATABASE_URL", "sqlite://x.db"),
                ("CAIRN_ACME_CAA_IDENTITIES", "a.example, b.example"),
            ],
        )
        .unwrap();
        assert_eq!(c.va.http01_port, 6000);
        assert_eq!(c.database_url(), "sqlite://x.db");
        assert_eq!(c.acme.caa_identities, vec!["a.example", "b.example"]);
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = load("dev", &[("CAIRN_VA_HTTP01_PORT", "eighty")]).unwrap_err();
        assert!(format!("{e:#}").contains("CAIRN_VA_HTTP01_PORT"), "{e:#}");
        let e = load("dev", &[("CAIRN_CA_KEY_TYPE", "dsa")]).unwrap_err();
        assert!(format!("{e:#}").contains("ca.key_type"), "{e:#}");
        for bad in ["dir", "/directory", "/acme/dir", "/dir?x"] {
            let e = load("test", &[("CAIRN_SERVER_DIRECTORY_ALIAS", bad)]).unwrap_err();
            assert!(
                format!("{e:#}").contains("server.directory_alias"),
                "{bad}: {e:#}"
            );
        }
        let c = load("test", &[("CAIRN_SERVER_DIRECTORY_ALIAS", "/dir")]).unwrap();
        assert_eq!(c.server.directory_alias, "/dir");
    }

    #[test]
    fn dns_persist_issuer_domains_are_checked() {
        let key = "CAIRN_VA_DNS_PERSIST_ISSUER_DOMAINS";
        assert_eq!(
            load("test", &[]).unwrap().va.dns_persist_issuer_domains,
            vec!["cairn.localhost"]
        );
        assert!(load("dev", &[(key, "")])
            .unwrap()
            .va
            .dns_persist_issuer_domains
            .is_empty());
        let eleven = (0..11)
            .map(|i| format!("ca{i}.example"))
            .collect::<Vec<_>>();
        for bad in [
            "CA.example",
            "ca.example.",
            "ca..example",
            "-ca.example",
            "ca_x.example",
            &eleven.join(","),
        ] {
            let e = load("test", &[(key, bad)]).unwrap_err();
            assert!(
                format!("{e:#}").contains("va.dns_persist_issuer_domains"),
                "{bad}: {e:#}"
            );
        }
        load("test", &[(key, "ca.example, xn--bcher-kva.example")]).unwrap();
    }
}
