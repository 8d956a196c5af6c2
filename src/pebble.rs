//! `cairn pebble` (and the binary run under the name `pebble`): Pebble's
//! command line, JSON configuration and `PEBBLE_*` environment variables,
//! translated onto the `test` preset, then [`crate::serve::run`].
//!
//! A client suite that starts `pebble -config FILE -dnsserver HOST:PORT`
//! gets Cairn instead by changing the binary's path: the same listeners
//! (the ACME API and an HTTPS management interface with `/roots/0`), the
//! directory at `/dir`, validation on the configured ports through the
//! given DNS server. State lives in a fresh temporary data directory, as
//! Pebble's lives in memory, unless `-datadir` (or `CAIRN_DATA_DIR`) names
//! one: then a run is durable.
//!
//! Nothing is ignored silently. A key Pebble does not have is an error
//! naming it (Pebble would ignore a misspelt key; Cairn stops). A key or
//! variable Pebble has but Cairn cannot honour yet is a warning naming it.
//! `externalAccountMACKeys` become external account keys in the store at
//! start (reusable, any name, as Pebble's are), replacing any of the same
//! id, so a restart with a `-datadir` is idempotent.

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde_json::Value;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::config::{Config, Sources};

/// `cairn pebble`'s flags, spelt as Pebble's (Go's `flag` package takes
/// `-name` and `--name`; the binary's entry point rewrites the first).
#[derive(Debug, Clone, clap::Args)]
pub struct PebbleArgs {
    /// Pebble's JSON configuration file.
    #[arg(long, default_value = "test/config/pebble-config.json")]
    pub config: PathBuf,
    /// DNS server for validation, `HOST:PORT` (Pebble: the system resolver
    /// when absent).
    #[arg(long)]
    pub dnsserver: Option<String>,
    /// Pebble's strict mode: a JWS payload with ACME v1's `resource` field
    /// and a challenge POST whose body is not `{}` are refused
    /// (`acme.strict`).
    #[arg(long)]
    pub strict: bool,
    /// Behave as Let's Encrypt does where Pebble differs on purpose
    /// (README, "Let's Encrypt's behaviour"): its profiles, no good nonce
    /// refused, an asynchronous finalize, no strict checks. Also
    /// `CAIRN_PEBBLE_LETSENCRYPT=1`.
    #[arg(long, env = "CAIRN_PEBBLE_LETSENCRYPT")]
    pub letsencrypt: bool,
    /// Print the version and exit.
    #[arg(long)]
    pub version: bool,
    /// Keep state in this directory (created if missing) rather than in a
    /// temporary one removed at exit. Also `CAIRN_DATA_DIR`.
    #[arg(long, env = "CAIRN_DATA_DIR")]
    pub datadir: Option<PathBuf>,
}

/// Flags of Pebble and `pebble-challtestsrv` that Go spells with one dash:
/// [`go_flags`] gives them clap's two.
pub const PEBBLE_FLAGS: &[&str] = &[
    "config",
    "dnsserver",
    "strict",
    "version",
    "datadir",
    "letsencrypt",
];

/// Rewrites Go-style `-name[=value]` flags among `names` as `--name[=value]`,
/// up to a `--`; everything else passes unchanged.
pub fn go_flags(args: Vec<std::ffi::OsString>, names: &[&str]) -> Vec<std::ffi::OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut rest = false;
    for a in args {
        if rest {
            out.push(a);
            continue;
        }
        if a == "--" {
            rest = true;
            out.push(a);
            continue;
        }
        let rewritten = a.to_str().and_then(|s| {
            let name = s.strip_prefix('-').filter(|n| !n.starts_with('-'))?;
            let bare = name.split_once('=').map_or(name, |(n, _)| n);
            names.contains(&bare).then(|| format!("-{s}").into())
        });
        out.push(rewritten.unwrap_or(a));
    }
    out
}

/// A listen address as Go's `net.Listen` reads it: `:PORT` and the
/// unspecified addresses mean every interface, IPv4 and IPv6; `localhost`
/// means 127.0.0.1; otherwise an IP literal (`[::1]:5555`, `127.0.0.1:80`).
pub(crate) fn go_listen_addr(s: &str) -> anyhow::Result<SocketAddr> {
    let s = s.trim();
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("{s:?} is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| anyhow!("{s:?}: {port:?} is not a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = match host {
        "" | "0.0.0.0" | "::" => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        "localhost" => IpAddr::from([127, 0, 0, 1]),
        h => h
            .parse()
            .map_err(|_| anyhow!("{s:?}: {h:?} is not an IP address (or empty, or localhost)"))?,
    };
    Ok(SocketAddr::new(ip, port))
}

/// `-strict` and `-letsencrypt` on top of a translated configuration.
///
/// `-letsencrypt` makes Cairn do what Let's Encrypt does where Pebble
/// deliberately differs: Let's Encrypt's three profiles (the preset's,
/// `classic` by default, IP addresses only in `shortlived`) instead of
/// Pebble's; no good nonce refused (`PEBBLE_WFE_NONCEREJECT` ignored); an
/// asynchronous finalize (the order reads `processing` for a second after
/// it, as Let's Encrypt's does while it issues) with its `Retry-After: 3`;
/// none of `-strict`'s
/// refusals, which Let's Encrypt does not make. What Cairn always does is
/// Let's Encrypt's already: validation at once, valid authorizations
/// always reused, one chain (leaf and intermediate).
pub(crate) fn apply_modes(t: &mut Translation, strict: bool, letsencrypt: bool) {
    let Some(overlay) = t.overlay.as_table_mut() else {
        return;
    };
    let table = |overlay: &mut toml::Table, name: &str| -> toml::Table {
        match overlay.remove(name) {
            Some(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        }
    };
    let mut acme = table(overlay, "acme");
    if letsencrypt {
        overlay.remove("profiles");
        acme.remove("default_profile");
        let mut faults = toml::Table::new();
        faults.insert(
            "rules".into(),
            toml::Value::Array(vec!["finalize:processing=1".into()]),
        );
        overlay.insert("faults".into(), toml::Value::Table(faults));
        // Boulder's `orderRetryAfter`, on a processing order.
        acme.insert("retry_after_secs".into(), 3.into());
        if strict {
            t.warnings.push(
                "-strict: off under -letsencrypt (Let's Encrypt makes none of its refusals)".into(),
            );
        }
        t.warnings.push(
            "-letsencrypt: Let's Encrypt's profiles (pebble.profiles not used), no good \
             nonce refused, finalize asynchronous for a second, Retry-After 3 s (pebble.retryAfter \
             not used)"
                .into(),
        );
    } else if strict {
        acme.insert("strict".into(), true.into());
    }
    if !acme.is_empty() {
        overlay.insert("acme".into(), toml::Value::Table(acme));
    }
}

/// `cairn pebble`: translate, then serve until SIGTERM/SIGINT.
pub async fn run(args: PebbleArgs) -> anyhow::Result<()> {
    if args.version {
        println!("Pebble version: cairn {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading the Pebble configuration {}", args.config.display()))?;
    let json: Value = serde_json::from_str(&text)
        .with_context(|| format!("parsing {} (JSON)", args.config.display()))?;
    let env: Vec<(String, String)> = std::env::vars().collect();
    let mut t = translate(&json, &env, args.dnsserver.as_deref())
        .with_context(|| format!("{}", args.config.display()))?;
    apply_modes(&mut t, args.strict, args.letsencrypt);
    for w in &t.warnings {
        tracing::warn!("{w}");
    }
    if args.strict && !args.letsencrypt {
        tracing::info!(
            "-strict: ACME v1's \"resource\" field and challenge POST bodies other than {{}} \
             are refused (acme.strict)"
        );
    }
    let (data_dir, temp) = match &args.datadir {
        Some(d) => (d.clone(), None),
        None => {
            let d = TempDataDir::create()?;
            (d.path.clone(), Some(d))
        }
    };
    tracing::info!(
        "data directory: {}{}",
        data_dir.display(),
        if temp.is_some() {
            " (temporary, removed at exit; -datadir keeps state)"
        } else {
            ""
        }
    );
    let cfg = Config::load_with_overlay(
        &Sources {
            preset: Some("test".into()),
            file: None,
            data_dir: Some(data_dir),
        },
        Some(t.overlay),
        |k| std::env::var(k).ok(),
    )?;
    cfg.warn_unknown_env();
    put_eab_keys(&cfg, &t.eab_keys).await?;
    let result = crate::serve::run(cfg).await;
    drop(temp);
    result
}

/// Pebble's MAC keys into the store, before the server starts.
async fn put_eab_keys(cfg: &Config, keys: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    crate::config::ensure_dir(&cfg.data_dir)?;
    let store = crate::sa::open(&cfg.database_url(), 1).await?;
    let now = crate::clock::Clock::system().unix();
    for (kid, hmac_key) in keys {
        store
            .put_eab_key(&crate::core::EabKey {
                kid: kid.clone(),
                hmac_key: hmac_key.clone(),
                names: Vec::new(),
                created_at: now,
                expires: None,
                reusable: true,
                revoked_at: None,
                bound_count: 0,
                first_account: None,
            })
            .await
            .with_context(|| format!("pebble.externalAccountMACKeys.{kid}"))?;
    }
    store.close().await;
    Ok(())
}

/// A Pebble configuration and environment, as Cairn settings.
#[derive(Debug)]
pub(crate) struct Translation {
    /// Settings over the `test` preset, as a TOML file would give them.
    pub overlay: toml::Value,
    /// What Cairn accepts but cannot do as Pebble does, one line each,
    /// naming the key or variable.
    pub warnings: Vec<String>,
    /// `externalAccountMACKeys`: key id and HMAC key (decoded).
    pub eab_keys: Vec<(String, Vec<u8>)>,
}

/// Pebble's configuration keys (Go's JSON decoding matches them ignoring
/// case, and so does this), from Pebble's `cmd/pebble/main.go`.
const KEYS: &[&str] = &[
    "listenAddress",
    "managementListenAddress",
    "httpPort",
    "tlsPort",
    "certificate",
    "privateKey",
    "ocspResponderURL",
    "externalAccountBindingRequired",
    "externalAccountMACKeys",
    "caaIdentities",
    "domainBlocklist",
    "keyAlgorithm",
    "profiles",
    "retryAfter",
    "certificateValidityPeriod",
];

/// Pebble's default CAA identity when the configuration names none.
const PEBBLE_CAA_IDENTITY: &str = "pebble.letsencrypt.org";

/// The members of `"pebble"`, by their canonical key, read as Go's JSON
/// decoding would: absent or null is the zero value, a wrong type an error
/// naming the key.
struct Fields<'a>(HashMap<&'static str, &'a Value>);

impl Fields<'_> {
    fn str(&self, key: &str) -> anyhow::Result<String> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => bail!("pebble.{key} must be a string"),
        }
    }

    fn int(&self, key: &str) -> anyhow::Result<u64> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(0),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| anyhow!("pebble.{key} must be a whole number")),
        }
    }

    fn bool(&self, key: &str) -> anyhow::Result<bool> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => bail!("pebble.{key} must be true or false"),
        }
    }

    fn strings(&self, key: &str) -> anyhow::Result<Vec<String>> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| anyhow!("pebble.{key} must be a list of strings"))
                })
                .collect(),
            Some(_) => bail!("pebble.{key} must be a list of strings"),
        }
    }
}

/// Translates `{"pebble": {...}}` and the `PEBBLE_*` variables in `env`
/// (with `-dnsserver`) into settings over the `test` preset.
pub(crate) fn translate(
    json: &Value,
    env: &[(String, String)],
    dnsserver: Option<&str>,
) -> anyhow::Result<Translation> {
    let top = json.as_object().ok_or_else(|| {
        anyhow!("the configuration must be a JSON object {{\"pebble\": {{...}}}}")
    })?;
    let mut pebble = None;
    for (k, v) in top {
        if k.eq_ignore_ascii_case("pebble") {
            pebble = Some(v);
        } else {
            bail!("unknown key {k:?}: a Pebble configuration has only \"pebble\"");
        }
    }
    let empty = serde_json::Map::new();
    let p = match pebble {
        None => &empty,
        Some(v) => v
            .as_object()
            .ok_or_else(|| anyhow!("\"pebble\" must be an object"))?,
    };
    let mut fields = HashMap::new();
    for (k, v) in p {
        let Some(known) = KEYS.iter().find(|n| n.eq_ignore_ascii_case(k)) else {
            bail!(
                "unknown key \"pebble.{k}\" (Pebble would ignore it; Cairn stops so that a \
                 misspelt key is seen). Pebble's keys: {}",
                KEYS.join(", ")
            );
        };
        fields.insert(*known, v);
    }
    let f = Fields(fields);
    let mut warnings = Vec::new();
    let mut server = toml::Table::new();
    let mut ca = toml::Table::new();
    let mut acme = toml::Table::new();
    let mut va = toml::Table::new();
    let mut policy = toml::Table::new();

    // Listeners. Go's ListenAndServeTLS takes "" as ":https".
    let listen = f.str("listenAddress")?;
    let listen = if listen.is_empty() {
        ":443".into()
    } else {
        listen
    };
    let listen = go_listen_addr(&listen).context("pebble.listenAddress")?;
    server.insert("listen".into(), listen.to_string().into());
    let mgmt = f.str("managementListenAddress")?;
    let mgmt = if mgmt.is_empty() {
        String::new()
    } else {
        go_listen_addr(&mgmt)
            .context("pebble.managementListenAddress")?
            .to_string()
    };
    server.insert("management_listen".into(), mgmt.into());
    server.insert("management_tls".into(), true.into());
    server.insert("management_ca_keys".into(), true.into());
    server.insert("directory_alias".into(), "/dir".into());
    // Pebble's own clients trust its certificate for whatever name they
    // dial; Cairn's listener certificate is issued for localhost only.
    let (cert, key) = (f.str("certificate")?, f.str("privateKey")?);
    if cert.is_empty() != key.is_empty() {
        bail!("pebble.certificate and pebble.privateKey must be given together");
    }
    if cert.is_empty() {
        warnings.push(
            "pebble.certificate and pebble.privateKey are empty: Cairn serves a certificate \
             from its own root for localhost, 127.0.0.1 and ::1 (Pebble would not start)"
                .into(),
        );
    }
    server.insert("tls_cert".into(), cert.into());
    server.insert("tls_key".into(), key.into());

    // Validation.
    for (key, cairn) in [("httpPort", "http01_port"), ("tlsPort", "tls_alpn01_port")] {
        let port = f.int(key)?;
        let port =
            u16::try_from(port).map_err(|_| anyhow!("pebble.{key}: {port} is not a port"))?;
        if port == 0 {
            warnings.push(format!(
                "pebble.{key} is not set: Cairn validates on the test preset's port"
            ));
        } else {
            va.insert(cairn.into(), i64::from(port).into());
        }
    }
    // Pebble without -dnsserver uses the system resolver.
    let resolver = match dnsserver {
        Some(d) if !d.trim().is_empty() => {
            let a = d.trim();
            let a = a
                .parse::<SocketAddr>()
                .or_else(|_| go_listen_addr(a))
                .map_err(|_| anyhow!("-dnsserver {d:?} is not IP:PORT"))?;
            a.to_string()
        }
        _ => String::new(),
    };
    va.insert("resolver".into(), resolver.into());

    // Identities, names, keys.
    let mut caa = f.strings("caaIdentities")?;
    if caa.is_empty() {
        caa.push(PEBBLE_CAA_IDENTITY.into());
    }
    acme.insert("caa_identities".into(), caa.into());
    policy.insert("blocked_names".into(), f.strings("domainBlocklist")?.into());
    let key_type = match f.str("keyAlgorithm")?.as_str() {
        "" | "rsa" => "rsa-2048",
        "ecdsa" => "ecdsa-p256",
        other => bail!("pebble.keyAlgorithm: {other:?} is not one of \"rsa\", \"ecdsa\""),
    };
    ca.insert("key_type".into(), key_type.into());

    let ocsp = f.str("ocspResponderURL")?;
    if !ocsp.is_empty() {
        warnings.push(format!(
            "pebble.ocspResponderURL {ocsp:?}: not supported; Cairn publishes revocation \
             through a CRL only (no OCSP URL in certificates)"
        ));
    }
    let eab_keys = eab_of(&f, &mut acme)?;
    let profiles = profiles_of(&f, &mut acme)?;
    retry_after_of(&f, &mut acme, &mut warnings)?;

    let mut faults = toml::Table::new();
    translate_env(env, &mut warnings, &mut va, &mut acme, &mut faults);

    let mut overlay = toml::Table::new();
    for (name, t) in [
        ("server", server),
        ("ca", ca),
        ("acme", acme),
        ("va", va),
        ("policy", policy),
        ("profiles", profiles),
        ("faults", faults),
    ] {
        if !t.is_empty() {
            overlay.insert(name.into(), toml::Value::Table(t));
        }
    }
    Ok(Translation {
        overlay: toml::Value::Table(overlay),
        warnings,
        eab_keys,
    })
}

/// Pebble's profiles, each a Cairn profile with Pebble's behaviour (every
/// identifier type, 100 names, client auth too); orders naming none get
/// "default" (Pebble would pick one at random).
fn profiles_of(f: &Fields, acme: &mut toml::Table) -> anyhow::Result<toml::Table> {
    let fallback = match f.int("certificateValidityPeriod")? {
        0 => 7_776_000,
        v => v,
    };
    let pebble_profile =
        |description: &str, validity: u64, cn: bool| -> anyhow::Result<toml::Value> {
            let v = i64::try_from(validity)
                .map_err(|_| anyhow!("validityPeriod {validity} is too large"))?;
            let mut t = toml::Table::new();
            t.insert("description".into(), description.into());
            t.insert("validity_secs".into(), v.into());
            t.insert(
                "identifier_types".into(),
                toml::Value::Array(vec!["dns".into(), "ip".into()]),
            );
            t.insert("max_names".into(), 100.into());
            t.insert("pending_authz_lifetime_secs".into(), 3600.into());
            t.insert("order_lifetime_secs".into(), 3600.into());
            t.insert("valid_authz_lifetime_secs".into(), 2_592_000.into());
            t.insert("common_name".into(), cn.into());
            t.insert("subject_key_id".into(), true.into());
            t.insert("client_auth".into(), true.into());
            t.insert("key_encipherment".into(), true.into());
            // Pebble's window is Let's Encrypt's rule by validity.
            let short = validity < 10 * 86_400;
            t.insert(
                "ari_window_divisor".into(),
                (if short { 2 } else { 3 }).into(),
            );
            t.insert("ari_window_length_divisor".into(), 50.into());
            Ok(toml::Value::Table(t))
        };
    let mut profiles = toml::Table::new();
    match f.0.get("profiles") {
        None | Some(Value::Null) => {}
        Some(Value::Object(ps)) => {
            for (name, prof) in ps {
                let prof = prof
                    .as_object()
                    .ok_or_else(|| anyhow!("pebble.profiles.{name} must be an object"))?;
                let mut period = 0;
                let mut description = String::new();
                let mut cn = true;
                for (k, v) in prof {
                    match k.to_ascii_lowercase().as_str() {
                        "validityperiod" => {
                            period = v.as_u64().ok_or_else(|| {
                                anyhow!("pebble.profiles.{name}.{k} must be a whole number")
                            })?
                        }
                        "description" => {
                            description = v
                                .as_str()
                                .ok_or_else(|| {
                                    anyhow!("pebble.profiles.{name}.{k} must be a string")
                                })?
                                .to_string()
                        }
                        "promotecommonname" => {
                            cn = v.as_bool().ok_or_else(|| {
                                anyhow!("pebble.profiles.{name}.{k} must be true or false")
                            })?
                        }
                        _ => bail!(
                            "unknown key \"pebble.profiles.{name}.{k}\" (a profile has \
                             description, promoteCommonName, validityPeriod)"
                        ),
                    }
                }
                let validity = if period > 0 { period } else { fallback };
                profiles.insert(name.clone(), pebble_profile(&description, validity, cn)?);
            }
        }
        Some(_) => bail!("pebble.profiles must be an object of name to profile"),
    }
    if profiles.is_empty() {
        profiles.insert(
            "default".into(),
            pebble_profile("The profile you know and love", fallback, true)?,
        );
    }
    let default = if profiles.contains_key("default") {
        "default".to_string()
    } else {
        profiles.keys().next().cloned().unwrap_or_default()
    };
    acme.insert("default_profile".into(), default.into());

    Ok(profiles)
}

/// Retry-After: Pebble has one for authorizations and one for orders;
/// Cairn one for both, so the shorter (clients poll no later than asked).
fn retry_after_of(
    f: &Fields,
    acme: &mut toml::Table,
    warnings: &mut Vec<String>,
) -> anyhow::Result<()> {
    match f.0.get("retryAfter") {
        None | Some(Value::Null) => {}
        Some(Value::Object(r)) => {
            let (mut authz, mut order) = (0, 0);
            for (k, v) in r {
                let n = v
                    .as_u64()
                    .ok_or_else(|| anyhow!("pebble.retryAfter.{k} must be a whole number"))?;
                match k.to_ascii_lowercase().as_str() {
                    "authz" => authz = n,
                    "order" => order = n,
                    _ => bail!("unknown key \"pebble.retryAfter.{k}\" (authz, order)"),
                }
            }
            let both: Vec<u64> = [authz, order].into_iter().filter(|n| *n > 0).collect();
            if let Some(min) = both.iter().min() {
                if both.len() == 2 && authz != order {
                    warnings.push(format!(
                        "pebble.retryAfter: Cairn has one Retry-After for authorizations and \
                         orders; using {min} s (authz {authz}, order {order})"
                    ));
                }
                acme.insert("retry_after_secs".into(), (*min as i64).into());
            }
        }
        Some(_) => bail!("pebble.retryAfter must be an object {{\"authz\": N, \"order\": N}}"),
    }

    Ok(())
}

/// External account binding: whether it is required, and Pebble's keys
/// (key id, HMAC key) to put in the store.
fn eab_of(f: &Fields, acme: &mut toml::Table) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    if f.bool("externalAccountBindingRequired")? {
        acme.insert("external_account_required".into(), true.into());
    }
    let mut eab_keys = Vec::new();
    match f.0.get("externalAccountMACKeys") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (kid, key) in m {
                // Pebble decodes them as base64url without padding.
                let key = key
                    .as_str()
                    .and_then(|k| B64.decode(k.trim_end_matches('=')).ok())
                    .filter(|k| !k.is_empty())
                    .ok_or_else(|| {
                        anyhow!("pebble.externalAccountMACKeys.{kid} must be a base64url key")
                    })?;
                eab_keys.push((kid.clone(), key));
            }
        }
        Some(_) => bail!("pebble.externalAccountMACKeys must be an object of key ID to key"),
    }

    Ok(eab_keys)
}

/// Pebble's variables, read as Pebble reads them.
fn translate_env(
    env: &[(String, String)],
    warnings: &mut Vec<String>,
    va: &mut toml::Table,
    acme: &mut toml::Table,
    faults: &mut toml::Table,
) {
    let truthy = |v: &str| matches!(v, "1" | "true" | "True" | "TRUE");
    let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let int = |name: &str| get(name).and_then(|v| v.trim().parse::<i64>().ok());
    if get("PEBBLE_VA_ALWAYS_VALID").is_some_and(truthy) {
        va.insert("always_valid".into(), true.into());
    }
    let no_sleep = get("PEBBLE_VA_NOSLEEP").is_some_and(truthy);
    if let (false, Some(v)) = (no_sleep, get("PEBBLE_VA_SLEEPTIME")) {
        warnings.push(format!(
            "PEBBLE_VA_SLEEPTIME={v}: not supported; Cairn validates at once, as with \
             PEBBLE_VA_NOSLEEP=1"
        ));
    }
    // Pebble refuses this share of good nonces, 5% unless told otherwise;
    // a fault rule does the same, reproducibly (seed 0).
    let reject = match get("PEBBLE_WFE_NONCEREJECT") {
        None => 5,
        Some(v) => match v.trim().parse::<u8>() {
            Ok(n) if n <= 100 => n,
            _ => {
                warnings.push(format!(
                    "PEBBLE_WFE_NONCEREJECT={v}: not a percentage (0-100); using Pebble's 5"
                ));
                5
            }
        },
    };
    if reject > 0 {
        faults.insert(
            "rules".into(),
            toml::Value::Array(vec![format!("*:badNonce@{reject}%").into()]),
        );
    }
    if let Some(v) = get("PEBBLE_AUTHZREUSE") {
        if v.trim() != "100" {
            warnings.push(format!(
                "PEBBLE_AUTHZREUSE={v}: Cairn always reuses a valid authorization of the \
                 account, as Let's Encrypt does (PEBBLE_AUTHZREUSE=100)"
            ));
        }
    }
    if let Some(n) = int("PEBBLE_CHAIN_LENGTH").filter(|n| *n > 1) {
        warnings.push(format!(
            "PEBBLE_CHAIN_LENGTH={n}: not supported; Cairn's chain is the leaf and one \
             intermediate (PEBBLE_CHAIN_LENGTH=1)"
        ));
    }
    if let Some(n) = int("PEBBLE_ALTERNATE_ROOTS").filter(|n| *n > 0) {
        warnings.push(format!(
            "PEBBLE_ALTERNATE_ROOTS={n}: not supported; Cairn has one root and no alternate \
             chains"
        ));
    }
    if let Some(n) = int("PEBBLE_WFE_ORDERS_PER_PAGE").filter(|n| *n > 0) {
        acme.insert("orders_per_page".into(), n.into());
    }
    const KNOWN: &[&str] = &[
        "PEBBLE_VA_ALWAYS_VALID",
        "PEBBLE_VA_NOSLEEP",
        "PEBBLE_VA_SLEEPTIME",
        "PEBBLE_WFE_NONCEREJECT",
        "PEBBLE_AUTHZREUSE",
        "PEBBLE_CHAIN_LENGTH",
        "PEBBLE_ALTERNATE_ROOTS",
        "PEBBLE_WFE_ORDERS_PER_PAGE",
    ];
    for (k, _) in env {
        if k.starts_with("PEBBLE_") && !KNOWN.contains(&k.as_str()) {
            warnings.push(format!(
                "{k}: not a variable Pebble reads ({}); ignored",
                KNOWN.join(", ")
            ));
        }
    }
}

/// A temporary data directory, `$TMPDIR/cairn-pebble-<pid>-<random>`,
/// removed when dropped. Suites kill Pebble with SIGKILL, which skips the
/// removal, so each start first removes those whose process is gone.
struct TempDataDir {
    path: PathBuf,
}

impl TempDataDir {
    fn create() -> anyhow::Result<TempDataDir> {
        let tmp = std::env::temp_dir();
        sweep_stale(&tmp);
        let name = format!(
            "cairn-pebble-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let path = tmp.join(name);
        crate::config::ensure_dir(&path)?;
        Ok(TempDataDir { path })
    }
}

impl Drop for TempDataDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!("removing {}: {e}", self.path.display());
        }
    }
}

/// Removes `cairn-pebble-<pid>-*` directories in `tmp` whose process no
/// longer runs (Linux: no `/proc/<pid>`; elsewhere nothing is removed).
fn sweep_stale(tmp: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("cairn-pebble-"))
            .and_then(|n| n.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(v: Value) -> anyhow::Result<Translation> {
        translate(&v, &[], None)
    }

    #[test]
    fn letsencrypt_retry_after_is_lets_encrypts() {
        let mut tr = t(json!({"pebble": {"retryAfter": {"authz": 7, "order": 7}}})).unwrap();
        apply_modes(&mut tr, false, true);
        assert_eq!(tr.overlay["acme"]["retry_after_secs"].as_integer(), Some(3));
        assert!(tr.warnings.join("\n").contains("Retry-After 3"));
    }

    #[test]
    fn go_flags_get_two_dashes() {
        let args = |v: &[&str]| {
            v.iter()
                .map(Into::into)
                .collect::<Vec<std::ffi::OsString>>()
        };
        assert_eq!(
            go_flags(
                args(&[
                    "-config",
                    "f",
                    "--dnsserver=x",
                    "-strict",
                    "-other",
                    "--",
                    "-config"
                ]),
                PEBBLE_FLAGS
            ),
            args(&[
                "--config",
                "f",
                "--dnsserver=x",
                "--strict",
                "-other",
                "--",
                "-config"
            ])
        );
        assert_eq!(
            go_flags(args(&["-config=a=b"]), PEBBLE_FLAGS),
            args(&["--config=a=b"])
        );
    }

    #[test]
    fn go_listen_addresses() {
        assert_eq!(go_listen_addr(":14000").unwrap().to_string(), "[::]:14000");
        assert_eq!(
            go_listen_addr("0.0.0.0:15000").unwrap().to_string(),
            "[::]:15000"
        );
        assert_eq!(
            go_listen_addr("[::1]:5555").unwrap().to_string(),
            "[::1]:5555"
        );
        assert_eq!(
            go_listen_addr("localhost:1").unwrap().to_string(),
            "127.0.0.1:1"
        );
        for bad in ["", "14000", "example.com:1", ":x", ":70000"] {
            assert!(go_listen_addr(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pebbles_own_test_config_translates() {
        let tr = t(json!({"pebble": {
            "listenAddress": "0.0.0.0:14000",
            "managementListenAddress": "0.0.0.0:15000",
            "certificate": "test/certs/localhost/cert.pem",
            "privateKey": "test/certs/localhost/key.pem",
            "httpPort": 5002, "tlsPort": 5001,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "domainBlocklist": ["blocked-domain.example"],
            "retryAfter": {"authz": 3, "order": 5},
            "keyAlgorithm": "ecdsa",
            "profiles": {
                "default": {"description": "d", "validityPeriod": 7776000},
                "shortlived": {"description": "s", "validityPeriod": 518400}
            }
        }}))
        .unwrap();
        let o = &tr.overlay;
        assert_eq!(o["server"]["listen"].as_str(), Some("[::]:14000"));
        assert_eq!(
            o["server"]["management_listen"].as_str(),
            Some("[::]:15000")
        );
        assert_eq!(o["server"]["management_tls"].as_bool(), Some(true));
        assert_eq!(o["server"]["directory_alias"].as_str(), Some("/dir"));
        assert_eq!(o["va"]["http01_port"].as_integer(), Some(5002));
        assert_eq!(o["va"]["resolver"].as_str(), Some(""));
        assert_eq!(o["ca"]["key_type"].as_str(), Some("ecdsa-p256"));
        assert_eq!(
            o["profiles"]["default"]["validity_secs"].as_integer(),
            Some(7776000)
        );
        assert_eq!(
            o["profiles"]["shortlived"]["validity_secs"].as_integer(),
            Some(518400)
        );
        assert_eq!(o["acme"]["default_profile"].as_str(), Some("default"));
        assert_eq!(o["acme"]["retry_after_secs"].as_integer(), Some(3));
        assert_eq!(
            o["acme"]["caa_identities"].as_array().unwrap()[0].as_str(),
            Some("pebble.letsencrypt.org")
        );
        let w = tr.warnings.join("\n");
        assert!(w.contains("pebble.retryAfter"), "{w}");
        // And Cairn accepts the result on top of the test preset.
        Config::load_with_overlay(
            &Sources {
                preset: Some("test".into()),
                ..Default::default()
            },
            Some(tr.overlay),
            |_| None,
        )
        .unwrap();
    }

    #[test]
    fn keys_match_ignoring_case_and_unknown_keys_stop() {
        let tr = t(json!({"Pebble": {"LISTENADDRESS": ":1", "httpport": 7}})).unwrap();
        assert_eq!(tr.overlay["va"]["http01_port"].as_integer(), Some(7));
        let e = t(json!({"pebble": {"listenAdress": ":1"}})).unwrap_err();
        assert!(
            format!("{e:#}").contains("\"pebble.listenAdress\""),
            "{e:#}"
        );
        let e = t(json!({"pebble": {}, "other": 1})).unwrap_err();
        assert!(format!("{e:#}").contains("\"other\""), "{e:#}");
        let e = t(json!({"pebble": {"retryAfter": {"authz": 1, "orders": 2}}})).unwrap_err();
        assert!(
            format!("{e:#}").contains("pebble.retryAfter.orders"),
            "{e:#}"
        );
        let e = t(json!({"pebble": {"keyAlgorithm": "dsa"}})).unwrap_err();
        assert!(format!("{e:#}").contains("keyAlgorithm"), "{e:#}");
    }

    #[test]
    fn what_cairn_cannot_do_is_named() {
        let tr = t(json!({"pebble": {"ocspResponderURL": "http://ocsp.example"}})).unwrap();
        let w = tr.warnings.join("\n");
        assert!(w.contains("pebble.ocspResponderURL"), "{w}");
    }

    #[test]
    fn eab_maps_onto_cairns_keys() {
        let tr = t(json!({"pebble": {
            "externalAccountBindingRequired": true,
            "externalAccountMACKeys": {"kid-1": "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"}
        }}))
        .unwrap();
        let w = tr.warnings.join("\n");
        assert!(!w.contains("externalAccount"), "{w}");
        assert_eq!(
            tr.overlay["acme"]["external_account_required"].as_bool(),
            Some(true)
        );
        assert_eq!(tr.eab_keys.len(), 1);
        assert_eq!(tr.eab_keys[0].0, "kid-1");
        assert_eq!(tr.eab_keys[0].1.len(), 48);
        let e = t(json!({"pebble": {"externalAccountMACKeys": {"k": "not base64!"}}})).unwrap_err();
        assert!(
            format!("{e:#}").contains("externalAccountMACKeys.k"),
            "{e:#}"
        );
    }

    #[test]
    fn environment_variables() {
        let env: Vec<(String, String)> = [
            ("PEBBLE_VA_ALWAYS_VALID", "1"),
            ("PEBBLE_VA_SLEEPTIME", "3"),
            ("PEBBLE_WFE_NONCEREJECT", "15"),
            ("PEBBLE_AUTHZREUSE", "50"),
            ("PEBBLE_CHAIN_LENGTH", "2"),
            ("PEBBLE_ALTERNATE_ROOTS", "1"),
            ("PEBBLE_WFE_ORDERS_PER_PAGE", "7"),
            ("PEBBLE_VA_NOSLEEEP", "1"),
            ("HOME", "/root"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let tr = translate(&json!({"pebble": {}}), &env, Some("[::1]:5555")).unwrap();
        assert_eq!(tr.overlay["va"]["always_valid"].as_bool(), Some(true));
        assert_eq!(tr.overlay["va"]["resolver"].as_str(), Some("[::1]:5555"));
        assert_eq!(tr.overlay["acme"]["orders_per_page"].as_integer(), Some(7));
        assert_eq!(
            tr.overlay["faults"]["rules"][0].as_str(),
            Some("*:badNonce@15%")
        );
        // Unset, Pebble's 5%; 0 turns it off.
        let tr5 = translate(&json!({"pebble": {}}), &[], None).unwrap();
        assert_eq!(
            tr5.overlay["faults"]["rules"][0].as_str(),
            Some("*:badNonce@5%")
        );
        let off = [("PEBBLE_WFE_NONCEREJECT".to_string(), "0".to_string())];
        let tr0 = translate(&json!({"pebble": {}}), &off, None).unwrap();
        assert!(tr0.overlay.get("faults").is_none());
        let w = tr.warnings.join("\n");
        for name in [
            "PEBBLE_VA_SLEEPTIME",
            "PEBBLE_AUTHZREUSE",
            "PEBBLE_CHAIN_LENGTH",
            "PEBBLE_ALTERNATE_ROOTS",
            "PEBBLE_VA_NOSLEEEP",
        ] {
            assert!(w.contains(name), "{name} not reported: {w}");
        }
        assert!(!w.contains("HOME"), "{w}");
    }
}
