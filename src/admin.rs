//! `cairn admin`: operator controls. `eab` manages external account
//! binding keys (`admin/eab.rs`). `certs list` finds issued
//! certificates, `certs show` prints one (or its PEM chain), `certs revoke`
//! revokes one and publishes a CRL at once, and
//! `certs renew-early` moves ARI windows into the past (how a CA handles an
//! incident without revoking). `overrides list|set|remove` edits the
//! rate-limit override file that running servers re-read within
//! `limits.overrides_reload_secs`, and `unpause` lifts the pauses that
//! consecutive authorization failures put on an account, and `purge` runs
//! one retention purge (`crate::retention`). It opens the same
//! database and CA files as `cairn serve`, and works while servers run on
//! them.

mod eab;
mod history;

use crate::ca::Ca;
use crate::clock::Clock;
use crate::config::{Config, Sources};
use crate::core::limits::LimitStore;
use crate::core::{spki_hash, AccountId, Certificate};
use crate::ra::KEY_COMPROMISE;
use crate::ratelimit::{
    go_duration, Limit, LimitName, LimitSet, Limiter, OverrideEntry, Overrides,
};
use crate::sa::{self, CertQuery, DynStore};
use anyhow::{anyhow, bail, Context};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `cairn admin [--config F] [--preset P] [--data-dir D] certs ...`; the
/// configuration flags may also follow the subcommand.
#[derive(clap::Args)]
pub struct AdminArgs {
    /// TOML file applied on top of the preset (as for `cairn serve`).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Preset: dev (default), test, staging, production.
    #[arg(long, global = true)]
    pub preset: Option<String>,
    /// Data directory (database, CA keys) of the server to administer.
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: AdminCommand,
}

#[derive(clap::Subcommand)]
pub(crate) enum AdminCommand {
    /// Issued certificates: list, revoke, renew early.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Per-key rate-limit overrides (newOrdersPerAccount by account id,
    /// certificatesPerDomain by registered domain); running servers pick up
    /// changes within `limits.overrides_reload_secs`, without a restart.
    #[command(subcommand)]
    Overrides(OverridesCommand),
    /// Lift the pause that too many consecutive failed authorizations put on
    /// an account for an identifier, and start its failure count afresh.
    Unpause(UnpauseArgs),
    /// Accounts: show one, or deactivate it (RFC 8555 §7.3.6: for good).
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Rate-limit state.
    #[command(subcommand)]
    Limits(LimitsCommand),
    /// External account binding keys (RFC 8555 §7.3.4): create, list,
    /// revoke.
    #[command(subcommand)]
    Eab(eab::EabCommand),
    /// Purge expired orders, authorizations, used nonces and full
    /// rate-limit buckets now, as the servers do every
    /// `retention.interval_secs` (`[retention]`; certificates, revocations,
    /// accounts and valid orders are kept).
    Purge(PurgeArgs),
    /// Benchmarking: write N certificates issued over the last days (with
    /// their accounts, orders, authorizations and challenges) straight
    /// into a new database, bypassing ACME (BENCHMARKS.md, "History").
    #[command(hide = true)]
    LoadHistory(history::LoadHistoryArgs),
}

#[derive(clap::Args)]
pub(crate) struct PurgeArgs {
    /// Count what would be purged; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Subcommand)]
pub(crate) enum AccountsCommand {
    /// The account: status, contacts, key, certificates, pauses, order bucket.
    Show(AccountArgs),
    /// Deactivate the account: its key can sign nothing from now on.
    Deactivate(AccountArgs),
}

#[derive(clap::Args)]
pub(crate) struct AccountArgs {
    /// The account id, or its URL (`.../acme/acct/<id>`).
    pub account: String,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Subcommand)]
pub(crate) enum LimitsCommand {
    /// One bucket now, read with the arithmetic that decides (nothing is
    /// spent): tokens left, when the next returns, when it is full.
    Show(LimitShowArgs),
}

#[derive(clap::Args)]
pub(crate) struct LimitShowArgs {
    /// The limit, e.g. certificatesPerDomain, newOrdersPerAccount.
    #[arg(long)]
    pub limit: String,
    /// Its key: a registered domain, an account id, an IP address, ...
    #[arg(long)]
    pub key: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Subcommand)]
pub(crate) enum OverridesCommand {
    /// The overrides in the override file.
    List(OverridesListArgs),
    /// Add or replace the override of one limit for one key.
    Set(OverrideSetArgs),
    /// Remove the override of one limit for one key.
    Remove(OverrideRemoveArgs),
}

#[derive(clap::Args)]
pub(crate) struct OverridesListArgs {
    /// One JSON object a line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub(crate) struct OverrideSetArgs {
    /// newOrdersPerAccount or certificatesPerDomain.
    #[arg(long)]
    pub limit: String,
    /// An account id (or URL) for newOrdersPerAccount; a registered domain
    /// (e.g. example.co.uk) for certificatesPerDomain.
    #[arg(long)]
    pub key: String,
    /// Tokens the bucket holds (requests allowed at once).
    #[arg(long)]
    pub burst: u64,
    /// Tokens refilled per period.
    #[arg(long)]
    pub count: u64,
    /// The period: seconds, or a duration such as 3h, 7d, 1h30m.
    #[arg(long)]
    pub period: String,
    /// Why (a ticket number, a customer): kept in the file.
    #[arg(long, default_value = "")]
    pub comment: String,
    /// Keep the bucket's history even when the limit is raised (by default a
    /// raise resets the bucket so the new numbers apply at once).
    #[arg(long)]
    pub no_reset: bool,
}

#[derive(clap::Args)]
pub(crate) struct OverrideRemoveArgs {
    /// newOrdersPerAccount or certificatesPerDomain.
    #[arg(long)]
    pub limit: String,
    /// The key the override was set for.
    #[arg(long)]
    pub key: String,
}

#[derive(clap::Args)]
pub(crate) struct UnpauseArgs {
    /// The account id, or its URL (`.../acme/acct/<id>`).
    #[arg(long)]
    pub account: String,
    /// Only this identifier (default: every identifier the account is
    /// paused for).
    #[arg(long)]
    pub identifier: Option<String>,
}

#[derive(clap::Subcommand)]
pub(crate) enum CertsCommand {
    /// List certificates by name, account or serial, newest first.
    List(ListArgs),
    /// One certificate: names, account, order, validity, revocation; its
    /// PEM chain with `--pem`.
    Show(ShowArgs),
    /// Revoke a certificate and publish a fresh CRL.
    Revoke(RevokeArgs),
    /// Move the ARI renewal window of matching certificates into the past,
    /// so ARI-aware clients renew them at once.
    RenewEarly(RenewEarlyArgs),
}

#[derive(clap::Args)]
#[group(id = "which", required = true, multiple = true)]
pub(crate) struct ListArgs {
    /// A dNSName in the certificate (exact match, case-insensitive).
    #[arg(long, group = "which")]
    pub name: Option<String>,
    /// An account id, or its URL (`.../acme/acct/<id>`).
    #[arg(long, group = "which")]
    pub account: Option<String>,
    /// A serial number (hex; colons and a leading 0x are ignored).
    #[arg(long, group = "which")]
    pub serial: Option<String>,
    /// Most certificates shown.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// One JSON object a line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub(crate) struct ShowArgs {
    /// The serial number (hex; colons and a leading 0x are ignored).
    pub serial: String,
    /// One JSON object instead of text.
    #[arg(long, conflicts_with = "pem")]
    pub json: bool,
    /// The certificate and its chain (PEM), as ACME clients download it.
    #[arg(long)]
    pub pem: bool,
}

#[derive(clap::Args)]
pub(crate) struct RevokeArgs {
    /// The certificate's serial number (hex; colons and a leading 0x are
    /// ignored).
    pub serial: String,
    /// RFC 5280 reason, by number or name: unspecified (0), keyCompromise
    /// (1, also blocks the key), affiliationChanged (3), superseded (4),
    /// cessationOfOperation (5), privilegeWithdrawn (9).
    #[arg(long, allow_negative_numbers = true)]
    pub reason: String,
}

#[derive(clap::Args)]
#[group(id = "which", required = true, multiple = true)]
pub(crate) struct RenewEarlyArgs {
    /// The certificate with this serial number.
    #[arg(long, group = "which")]
    pub serial: Option<String>,
    /// Certificates naming this dNSName.
    #[arg(long, group = "which")]
    pub name: Option<String>,
    /// Certificates issued before this time: RFC 3339 or Unix seconds.
    #[arg(long, group = "which")]
    pub issued_before: Option<String>,
}

/// Revocation reasons an operator may give (RFC 5280 §5.3.1), as Let's
/// Encrypt's admin tool allows them: the subscriber's reasons plus
/// privilegeWithdrawn. cACompromise, certificateHold, removeFromCRL and
/// aACompromise make no sense for an end-entity certificate of this CA.
const OPERATOR_REASONS: &[(i64, &str)] = &[
    (0, "unspecified"),
    (1, "keyCompromise"),
    (3, "affiliationChanged"),
    (4, "superseded"),
    (5, "cessationOfOperation"),
    (9, "privilegeWithdrawn"),
];

/// Run one `cairn admin` command; output goes to stdout, the error (if
/// any) becomes the one-line message `main` prints.
pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let src = Sources {
        preset: args.preset,
        file: args.config,
        data_dir: args.data_dir,
    };
    let cmd = match args.command {
        AdminCommand::Certs(cmd) => cmd,
        AdminCommand::Overrides(cmd) => return overrides(&src, cmd).await,
        AdminCommand::Unpause(a) => return unpause(&src, a).await,
        AdminCommand::Accounts(cmd) => return accounts(&src, cmd).await,
        AdminCommand::Limits(LimitsCommand::Show(a)) => return limit_show(&src, a).await,
        AdminCommand::Eab(cmd) => return eab::run(&src, cmd).await,
        AdminCommand::Purge(a) => return purge(&src, a).await,
        AdminCommand::LoadHistory(a) => return history::run(&src, a).await,
    };
    // Check the arguments before touching the database: a typo must change
    // nothing.
    match cmd {
        CertsCommand::List(a) => {
            let q = CertQuery {
                serial: a.serial.as_deref().map(normalize_serial).transpose()?,
                name: a.name.map(|n| n.to_ascii_lowercase()),
                domain: None,
                account: a.account.as_deref().map(parse_account).transpose()?,
                issued_before: None,
                limit: a.limit.max(1),
            };
            let cfg = Config::load(&src)?;
            let store = open_store(&cfg).await?;
            let certs = store.find_certificates(&q).await?;
            let now = Clock::system().unix();
            print!("{}", render_list(&certs, now, a.json)?);
            Ok(())
        }
        CertsCommand::Show(a) => {
            let serial = normalize_serial(&a.serial)?;
            let cfg = Config::load(&src)?;
            let store = open_store(&cfg).await?;
            let cert = store
                .certificate(&serial)
                .await?
                .ok_or_else(|| anyhow!("no certificate with serial {serial}"))?;
            if a.pem {
                print!("{}", cert.chain_pem);
            } else {
                print!("{}", render_show(&cert, Clock::system().unix(), a.json)?);
            }
            Ok(())
        }
        CertsCommand::Revoke(a) => {
            let serial = normalize_serial(&a.serial)?;
            let reason = parse_reason(&a.reason)?;
            let cfg = Config::load(&src)?;
            revoke(&cfg, &serial, reason).await
        }
        CertsCommand::RenewEarly(a) => {
            let q = CertQuery {
                serial: a.serial.as_deref().map(normalize_serial).transpose()?,
                name: a.name.map(|n| n.to_ascii_lowercase()),
                domain: None,
                account: None,
                issued_before: a.issued_before.as_deref().map(parse_time).transpose()?,
                limit: 0,
            };
            let cfg = Config::load(&src)?;
            let store = open_store(&cfg).await?;
            let marked = store.mark_renew_early(&q, Clock::system().unix()).await?;
            println!(
                "marked {marked} certificate{} for early renewal",
                if marked == 1 { "" } else { "s" }
            );
            Ok(())
        }
    }
}

/// Two connections are plenty for one command, and leave the servers'
/// share of a PostgreSQL connection limit alone.
/// A SQLite file that does not exist yet is refused rather than created: it
/// means a wrong `--data-dir`, and an empty database would answer every
/// query with nothing.
async fn open_store(cfg: &Config) -> anyhow::Result<DynStore> {
    let url = cfg.database_url();
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let path = rest
            .trim_start_matches("//")
            .split('?')
            .next()
            .unwrap_or("");
        if !path.is_empty() && path != ":memory:" && !std::path::Path::new(path).exists() {
            bail!(
                "no database at {path}: is {} the server's data directory (--data-dir)?",
                cfg.data_dir.display()
            );
        }
    }
    sa::open(&url, 2)
        .await
        .with_context(|| format!("opening the database {}", crate::config::redact_url(&url)))
}

/// Load the server's CA (needed to sign the CRL), refusing to create one:
/// `Ca::load_or_create` would make a new hierarchy in a wrong data
/// directory, and a CRL signed by it would help no one. Its file lock is
/// held only while loading, so a running server does not block this.
fn load_existing_ca(cfg: &Config) -> anyhow::Result<Ca> {
    let ca_dir = cfg.data_dir.join("ca");
    for file in ["intermediate.pem", "intermediate-key.pem"] {
        if !ca_dir.join(file).is_file() {
            bail!(
                "{} does not exist: is {} the server's data directory (--data-dir)?",
                ca_dir.join(file).display(),
                cfg.data_dir.display()
            );
        }
    }
    Ca::load_or_create(cfg).context("loading the CA")
}

async fn revoke(cfg: &Config, serial: &str, reason: i64) -> anyhow::Result<()> {
    // Before revoking, so a revocation never happens without its CRL.
    let ca = load_existing_ca(cfg)?;
    let store = open_store(cfg).await?;
    let clock = Clock::system();
    let cert = store
        .certificate(serial)
        .await?
        .ok_or_else(|| anyhow!("no certificate with serial {serial} was issued by this CA"))?;
    // Operators are trusted: their keyCompromise blocks the key (and revokes
    // its other certificates) without a proof of possession. The key's hash
    // comes from the certificate itself, whatever the row holds.
    let block_key = if reason == KEY_COMPROMISE {
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert.der).map_err(|e| {
            anyhow!("certificate {serial} does not parse ({e}): cannot block its key")
        })?;
        Some(spki_hash(parsed.public_key().raw))
    } else {
        None
    };
    // The RA's rule: only a newly shown key compromise changes a revoked
    // certificate.
    if !crate::ra::record_revocation(&*store, &cert, reason, block_key.as_deref(), clock.unix())
        .await?
    {
        match cert.revoked_at {
            Some(at) => bail!(
                "certificate {serial} is already revoked ({}, at {})",
                reason_name(cert.revoked_reason.unwrap_or(0)),
                fmt_time(at)
            ),
            None => bail!("certificate {serial} is already revoked (concurrently)"),
        }
    }
    println!("revoked {serial} ({})", reason_name(reason));
    if block_key.is_some() {
        println!("blocked its key; other unrevoked certificates of that key were revoked too");
    }
    // Publish now rather than at the next scheduled update, so relying
    // parties see the revocation at once. Servers serve the newest CRL in
    // the database, whoever signed it.
    let crl = crate::crl_publisher::publish(&*store, &ca, clock.unix(), cfg)
        .await
        .map_err(|p| {
            anyhow!(
                "the certificate is revoked, but publishing a CRL failed ({}); the servers \
                 publish one within ca.crl_update_secs",
                p.detail
            )
        })?;
    println!("published CRL number {}", crl.number);
    Ok(())
}

/// `purge [--dry-run]`: one retention purge with the configured
/// `keep_expired_secs`, whether or not the servers' schedule is enabled.
async fn purge(src: &Sources, a: PurgeArgs) -> anyhow::Result<()> {
    let cfg = Config::load(src)?;
    let store = open_store(&cfg).await?;
    let retention =
        crate::retention::Retention::new(store, Arc::new(Clock::system()), cfg.retention.clone());
    let report = retention.run(true, a.dry_run).await?;
    if a.json {
        let mut v = serde_json::to_value(report)?;
        v["dryRun"] = a.dry_run.into();
        v["expiredBefore"] = fmt_time(report.expired_before).into();
        println!("{v}");
        return Ok(());
    }
    println!(
        "{} expired before {}:",
        if a.dry_run { "would purge" } else { "purged" },
        fmt_time(report.expired_before)
    );
    let mut out = String::new();
    let rows: Vec<Vec<String>> = report
        .rows
        .tables()
        .iter()
        .map(|(table, n)| vec![table.to_string(), n.to_string()])
        .collect();
    render_table(&["TABLE", "ROWS"], &rows, &mut out)?;
    print!("{out}");
    Ok(())
}

/// `overrides list|set|remove`. The arguments are checked before the file
/// or the database is touched: a typo changes nothing.
async fn overrides(src: &Sources, cmd: OverridesCommand) -> anyhow::Result<()> {
    match cmd {
        OverridesCommand::List(a) => {
            let cfg = Config::load(src)?;
            let path = cfg.limits.overrides_path(&cfg.data_dir);
            let entries = list_overrides(&path)?;
            print!("{}", render_overrides(&entries, &path, a.json)?);
            Ok(())
        }
        OverridesCommand::Set(a) => set_override(src, a).await,
        OverridesCommand::Remove(a) => {
            let limit = parse_override_limit(&a.limit)?;
            let key = override_key(limit, &a.key)?;
            let cfg = Config::load(src)?;
            let path = cfg.limits.overrides_path(&cfg.data_dir);
            let removed = Overrides::remove_from_file(&path, limit, &key)
                .with_context(|| format!("rate-limit overrides {}", path.display()))?;
            if !removed {
                bail!(
                    "there is no override of {limit} for {key} in {}",
                    path.display()
                );
            }
            println!("removed the override of {limit} for {key}");
            // No reset: the bucket's history was earned and the limit goes
            // down, so what was spent keeps counting.
            let default = match LimitSet::resolve(&cfg.limits).window(limit) {
                Some(l) => describe(&l),
                None => "off (this configuration's limit set has no such limit)".into(),
            };
            println!(
                "running servers return to the default ({default}) within {} s",
                cfg.limits.overrides_reload_secs
            );
            Ok(())
        }
    }
}

fn list_overrides(path: &Path) -> anyhow::Result<Vec<OverrideEntry>> {
    Overrides::list_file(path).with_context(|| format!("rate-limit overrides {}", path.display()))
}

/// `overrides set`: write the override, then, when it raises the limit,
/// reset the key's bucket. A bucket's state is a time (its TAT) earned under
/// the old numbers, so an exhausted bucket can stay exhausted under a raised
/// limit (e.g. 50/week → 1000/week keeps a full week of debt). The reset
/// waits until running servers have re-read the file (one reload interval
/// and a second), so requests in between are judged by the old numbers on
/// the old history rather than spending a fresh bucket under the old
/// numbers, which the new ones would then inherit.
async fn set_override(src: &Sources, a: OverrideSetArgs) -> anyhow::Result<()> {
    let limit = parse_override_limit(&a.limit)?;
    let key = override_key(limit, &a.key)?;
    let period = parse_period(&a.period)?;
    let new = Limit::new(a.burst, a.count, period).map_err(|e| anyhow!("{limit}: {e}"))?;
    let cfg = Config::load(src)?;
    let path = cfg.limits.overrides_path(&cfg.data_dir);
    // Also refuses to touch a file the servers could not read.
    let previous = list_overrides(&path)?
        .into_iter()
        .find(|e| e.limit == limit.as_str() && e.key == key)
        .and_then(|e| Limit::new(e.burst, e.count, e.period_secs).ok());
    let default = LimitSet::resolve(&cfg.limits).window(limit);
    let store = open_store(&cfg).await?;
    if limit == LimitName::NewOrdersPerAccount {
        let id: i64 = key.parse().unwrap_or(0);
        if store.account(AccountId(id)).await?.is_none() {
            bail!("there is no account {key} on this CA");
        }
    }
    let entry = Overrides::set_in_file(&path, limit, &key, a.burst, a.count, period, &a.comment)
        .with_context(|| format!("rate-limit overrides {}", path.display()))?;
    let was = match (previous, default) {
        (Some(p), _) => format!("was {} (an override)", describe(&p)),
        (None, Some(d)) => format!("was {} (the default)", describe(&d)),
        (None, None) => "the limit is off in this configuration, so the override applies only \
             on servers where it is on"
            .to_string(),
    };
    println!("set {limit} for {}: {}; {was}", entry.key, describe(&new));
    let reload = cfg.limits.overrides_reload_secs;
    println!("running servers load it within {reload} s");
    let raised = match previous.or(default) {
        Some(old) => raises(&new, &old),
        // Unknown here; a reset is harmless where the limit is off.
        None => true,
    };
    if !raised {
        println!("not a raise: the bucket keeps its history");
        return Ok(());
    }
    if a.no_reset {
        println!("--no-reset: the bucket keeps its history");
        return Ok(());
    }
    let wait = reload.saturating_add(1);
    println!(
        "waiting {wait} s for them, then resetting the bucket so the new numbers apply at once"
    );
    tokio::time::sleep(Duration::from_secs(wait)).await;
    limiter(&cfg, store)
        .reset_bucket(limit, &entry.key)
        .await
        .map_err(|p| {
            anyhow!(
                "the override is written, but resetting the bucket failed ({}); the raise \
                 applies as the bucket refills",
                p.detail
            )
        })?;
    println!(
        "reset the bucket {}",
        crate::ratelimit::bucket_key(limit, &entry.key)
    );
    Ok(())
}

/// `unpause`: lift the account's pauses (one identifier or all) and give
/// each a fresh consecutive-failure bucket (`Limiter::unpause` does both).
async fn unpause(src: &Sources, a: UnpauseArgs) -> anyhow::Result<()> {
    let account = parse_account(&a.account)?;
    let ident = match a.identifier.as_deref().map(str::trim) {
        Some("") => bail!("--identifier must name an identifier, e.g. www.example.com"),
        Some(i) => Some(i.trim_end_matches('.').to_ascii_lowercase()),
        None => None,
    };
    let cfg = Config::load(src)?;
    let store = open_store(&cfg).await?;
    if store.account(account).await?.is_none() {
        bail!("there is no account {account} on this CA");
    }
    let done = limiter(&cfg, store)
        .unpause(account, ident.as_deref())
        .await?;
    if done.is_empty() {
        match &ident {
            Some(i) => println!("nothing to unpause: account {account} is not paused for {i}"),
            None => println!("nothing to unpause: account {account} is not paused"),
        }
    }
    for i in &done {
        println!("unpaused account {account} for {i}");
    }
    Ok(())
}

/// `accounts show|deactivate`.
async fn accounts(src: &Sources, cmd: AccountsCommand) -> anyhow::Result<()> {
    let (a, deactivate) = match cmd {
        AccountsCommand::Show(a) => (a, false),
        AccountsCommand::Deactivate(a) => (a, true),
    };
    let id = parse_account(&a.account)?;
    let cfg = Config::load(src)?;
    let store = open_store(&cfg).await?;
    let Some(acct) = store.account(id).await? else {
        bail!("no account {}", id.0);
    };
    if deactivate {
        if acct.status.as_str() == "deactivated" {
            bail!("account {} is already deactivated", id.0);
        }
        store.deactivate_account(id).await?;
        println!("account {} deactivated", id.0);
        return Ok(());
    }
    let certs = store
        .find_certificates(&CertQuery {
            account: Some(id),
            limit: 10_000,
            ..Default::default()
        })
        .await?;
    let limiter = limiter(&cfg, store.clone());
    let paused = limiter.paused(id).await.map_err(|p| anyhow!(p.detail))?;
    let bucket = limiter
        .bucket_state(LimitName::NewOrdersPerAccount, &id.0.to_string())
        .await
        .map_err(|p| anyhow!(p.detail))?;
    let now = Clock::system().unix();
    let valid = certs
        .iter()
        .filter(|c| c.revoked_at.is_none() && c.not_after > now)
        .count();
    let key: serde_json::Value = serde_json::from_str(&acct.jwk).unwrap_or_default();
    let key_type = match (key["kty"].as_str(), key["crv"].as_str()) {
        (Some(kty), Some(crv)) => format!("{kty} {crv}"),
        (Some("RSA"), None) => format!(
            "RSA {}",
            key["n"].as_str().map(|n| n.len() * 6 / 8 * 8).unwrap_or(0)
        ),
        (Some(kty), None) => kty.to_string(),
        _ => "unknown".into(),
    };
    let orders = bucket.map(|b| (b.remaining, b.limit.burst));
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "id": id.0,
                "status": acct.status.as_str(),
                "contact": acct.contact,
                "createdAt": fmt_time(acct.created_at),
                "keyThumbprint": acct.thumbprint,
                "keyType": key_type,
                "externalAccountKey": acct.eab_kid,
                "certificates": certs.len(),
                "validCertificates": valid,
                "paused": paused,
                "newOrdersLeft": orders.map(|o| o.0),
                "newOrdersBurst": orders.map(|o| o.1),
            })
        );
    } else {
        println!("account     {}", id.0);
        println!("status      {}", acct.status.as_str());
        println!("contact     {}", acct.contact.join(", "));
        println!("created     {}", fmt_time(acct.created_at));
        println!("key         {key_type}, thumbprint {}", acct.thumbprint);
        println!("eab key     {}", acct.eab_kid.as_deref().unwrap_or("none"));
        println!("certs       {} ({valid} valid)", certs.len());
        if let Some((left, burst)) = orders {
            println!("new orders  {left} of {burst} left (newOrdersPerAccount)");
        }
        if paused.is_empty() {
            println!("paused      none");
        } else {
            println!(
                "paused      {} (cairn admin unpause --account {})",
                paused.join(", "),
                id.0
            );
        }
    }
    Ok(())
}

/// `limits show --limit L --key K`: the bucket as the limiter sees it, with
/// the override file in force.
async fn limit_show(src: &Sources, a: LimitShowArgs) -> anyhow::Result<()> {
    let limit = LimitName::parse(a.limit.trim()).ok_or_else(|| {
        anyhow!(
            "no limit {:?}; one of {}",
            a.limit,
            LimitName::ALL
                .iter()
                .map(|l| l.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let key = a.key.trim().to_ascii_lowercase();
    if key.is_empty() {
        bail!("--key must not be empty");
    }
    let cfg = Config::load(src)?;
    let store = open_store(&cfg).await?;
    let overrides = Overrides::load(&cfg.limits.overrides_path(&cfg.data_dir))
        .context("loading the rate-limit overrides")?;
    let store_l: Arc<dyn LimitStore> = store;
    let limiter = Limiter::new(
        LimitSet::resolve(&cfg.limits),
        overrides,
        store_l,
        Arc::new(Clock::system()),
        String::new(),
    );
    let Some(b) = limiter
        .bucket_state(limit, &key)
        .await
        .map_err(|p| anyhow!(p.detail))?
    else {
        bail!("{} is off in this configuration", limit.as_str());
    };
    let params = &b.limit;
    let next = b.next_in_ns.map(crate::ratelimit::BucketState::secs);
    let full = crate::ratelimit::BucketState::secs(b.full_in_ns);
    let d = &b;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "limit": limit.as_str(), "key": key, "burst": params.burst,
                "count": params.count, "periodSecs": params.period_secs,
                "remaining": d.remaining, "nextTokenInSecs": next, "fullInSecs": full,
            })
        );
    } else {
        println!(
            "{} {key}: {} of {} left ({} per {} s); {}; full in {full} s",
            limit.as_str(),
            d.remaining,
            params.burst,
            params.count,
            params.period_secs,
            match next {
                Some(s) => format!("next token in {s} s"),
                None => "full".to_string(),
            }
        );
    }
    Ok(())
}

/// A limiter over the store, for its admin operations (no overrides, no
/// docs link: nothing here is checked or shown to a client).
fn limiter(cfg: &Config, store: DynStore) -> Limiter {
    let store: Arc<dyn LimitStore> = store;
    Limiter::new(
        LimitSet::resolve(&cfg.limits),
        Overrides::empty(),
        store,
        Arc::new(Clock::system()),
        String::new(),
    )
}

/// A limit that allows overrides, by its camelCase name.
fn parse_override_limit(input: &str) -> anyhow::Result<LimitName> {
    let s = input.trim();
    let limit = LimitName::parse(s).ok_or_else(|| {
        anyhow!(
            "unknown limit {s:?}: overrides exist for newOrdersPerAccount (key: an account \
             id) and certificatesPerDomain (key: a registered domain)"
        )
    })?;
    if !limit.allows_overrides() {
        bail!(
            "{limit} cannot be overridden: overrides exist only for newOrdersPerAccount (key: \
             an account id) and certificatesPerDomain (key: a registered domain)"
        );
    }
    Ok(limit)
}

/// The key as the override file stores it. An account may be given by URL;
/// a registered domain is lower-cased here and fully checked by
/// `Overrides::set_in_file`.
fn override_key(limit: LimitName, input: &str) -> anyhow::Result<String> {
    match limit {
        LimitName::NewOrdersPerAccount => match parse_account(input) {
            Ok(AccountId(id)) if id > 0 => Ok(id.to_string()),
            _ => bail!(
                "{limit}: the key must be an account id (a positive integer) or account URL, \
                 not {input:?}"
            ),
        },
        _ => {
            let d = input.trim().trim_end_matches('.').to_ascii_lowercase();
            if d.is_empty() {
                bail!(
                    "{limit}: the key must be {}, not {input:?}",
                    limit.override_key_kind()
                );
            }
            Ok(d)
        }
    }
}

/// A period: whole seconds (`10800`), or amounts with units `s`, `m`, `h`,
/// `d`, `w` (`3h`, `7d`, `1h30m`, Go's `168h0m0s`).
fn parse_period(input: &str) -> anyhow::Result<u64> {
    let s = input.trim();
    let bad = || {
        anyhow!(
            "period {input:?} is not a duration: give seconds (10800) or amounts with units \
             s, m, h, d, w (3h, 7d, 1h30m)"
        )
    };
    if let Ok(n) = s.parse::<u64>() {
        return if n == 0 {
            Err(anyhow!("period {input:?} must be longer than 0 seconds"))
        } else {
            Ok(n)
        };
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if !digits.is_empty() || total == 0 {
        return Err(if total == 0 && digits.is_empty() && !s.is_empty() {
            anyhow!("period {input:?} must be longer than 0 seconds")
        } else {
            bad()
        });
    }
    Ok(total)
}

/// Whether `new` allows more than `old`: a bigger burst or a faster refill.
fn raises(new: &Limit, old: &Limit) -> bool {
    let rate = |l: &Limit, other: &Limit| u128::from(l.count) * u128::from(other.period_secs);
    new.burst > old.burst || rate(new, old) > rate(old, new)
}

/// `burst 5, 5 per 3h0m0s`.
fn describe(l: &Limit) -> String {
    format!(
        "burst {}, {} per {}",
        l.burst,
        l.count,
        go_duration(l.period_secs)
    )
}

fn render_overrides(entries: &[OverrideEntry], path: &Path, json: bool) -> anyhow::Result<String> {
    let mut out = String::new();
    if json {
        for e in entries {
            let v = serde_json::json!({
                "limit": e.limit,
                "key": e.key,
                "burst": e.burst,
                "count": e.count,
                "period_secs": e.period_secs,
                "period": go_duration(e.period_secs),
                "comment": e.comment,
            });
            writeln!(out, "{}", serde_json::to_string(&v)?)?;
        }
        return Ok(out);
    }
    if entries.is_empty() {
        writeln!(out, "no overrides in {}", path.display())?;
        return Ok(out);
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.limit.clone(),
                e.key.clone(),
                e.burst.to_string(),
                e.count.to_string(),
                go_duration(e.period_secs),
                e.comment.clone(),
            ]
        })
        .collect();
    render_table(
        &["LIMIT", "KEY", "BURST", "COUNT", "PERIOD", "COMMENT"],
        &rows,
        &mut out,
    )?;
    Ok(out)
}

/// Left-aligned columns two spaces apart, trailing blanks trimmed.
fn render_table(header: &[&str], rows: &[Vec<String>], out: &mut String) -> anyhow::Result<()> {
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    Ok(())
}

/// A serial as the database stores it: lower-case hex of the DER INTEGER's
/// content bytes. Accepts what tools print: `openssl x509 -serial`
/// (upper case, maybe a leading `00`), colon-separated bytes, certbot's
/// hex without leading zeros, a `0x` prefix.
fn normalize_serial(input: &str) -> anyhow::Result<String> {
    let s = input.trim();
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    let digits: String = s.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || digits.len() > 42 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("serial {input:?} is not a hexadecimal serial number");
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    let bytes = hex::decode(padded).map_err(|e| anyhow!("serial {input:?}: {e}"))?;
    // Minimal DER INTEGER content of a positive number: no leading zero
    // byte unless the next byte's top bit is set.
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len() - 1);
    let mut der = bytes[first..].to_vec();
    if der[0] & 0x80 != 0 {
        der.insert(0, 0);
    }
    Ok(hex::encode(der))
}

/// A reason by number or by its RFC 5280 name (case-insensitive).
fn parse_reason(input: &str) -> anyhow::Result<i64> {
    let s = input.trim();
    let found = match s.parse::<i64>() {
        Ok(n) => OPERATOR_REASONS.iter().find(|(code, _)| *code == n),
        Err(_) => OPERATOR_REASONS
            .iter()
            .find(|(_, name)| name.eq_ignore_ascii_case(s)),
    };
    match found {
        Some((code, _)) => Ok(*code),
        None => {
            let allowed: Vec<String> = OPERATOR_REASONS
                .iter()
                .map(|(c, n)| format!("{n} ({c})"))
                .collect();
            bail!(
                "revocation reason {input:?} is not accepted; use one of: {}",
                allowed.join(", ")
            )
        }
    }
}

/// An account id, or an account URL ending in `/<id>`.
fn parse_account(input: &str) -> anyhow::Result<AccountId> {
    let id = input.trim().trim_end_matches('/').rsplit('/').next();
    id.and_then(|s| s.parse::<i64>().ok())
        .map(AccountId)
        .ok_or_else(|| anyhow!("account {input:?} is not an account id or account URL"))
}

/// RFC 3339 or Unix seconds, as Unix seconds.
fn parse_time(input: &str) -> anyhow::Result<i64> {
    let s = input.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    OffsetDateTime::parse(s, &Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|_| anyhow!("time {input:?} is neither RFC 3339 nor Unix seconds"))
}

fn reason_name(code: i64) -> String {
    const ALL: &[(i64, &str)] = &[
        (0, "unspecified"),
        (1, "keyCompromise"),
        (2, "cACompromise"),
        (3, "affiliationChanged"),
        (4, "superseded"),
        (5, "cessationOfOperation"),
        (6, "certificateHold"),
        (8, "removeFromCRL"),
        (9, "privilegeWithdrawn"),
        (10, "aACompromise"),
    ];
    ALL.iter()
        .find(|(c, _)| *c == code)
        .map(|(_, n)| n.to_string())
        .unwrap_or_else(|| format!("reason {code}"))
}

fn fmt_time(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// What an operator wants to know first: revoked beats expired beats
/// marked for early renewal.
fn status(c: &Certificate, now: i64) -> String {
    if c.revoked_at.is_some() {
        format!("revoked({})", reason_name(c.revoked_reason.unwrap_or(0)))
    } else if c.not_after < now {
        "expired".into()
    } else if c.renew_early_at.is_some() {
        "renew-early".into()
    } else {
        "valid".into()
    }
}

fn render_list(certs: &[Certificate], now: i64, json: bool) -> anyhow::Result<String> {
    let mut out = String::new();
    if json {
        for c in certs {
            writeln!(out, "{}", serde_json::to_string(&cert_json(c, now))?)?;
        }
        return Ok(out);
    }
    let rows: Vec<Vec<String>> = certs
        .iter()
        .map(|c| {
            vec![
                c.serial.clone(),
                c.account_id.to_string(),
                c.names.join(","),
                fmt_time(c.not_after),
                status(c, now),
            ]
        })
        .collect();
    render_table(
        &["SERIAL", "ACCOUNT", "NAMES", "NOT_AFTER", "STATUS"],
        &rows,
        &mut out,
    )?;
    Ok(out)
}

/// One certificate as `certs list --json` prints it.
fn cert_json(c: &Certificate, now: i64) -> serde_json::Value {
    serde_json::json!({
        "serial": c.serial,
        "account": c.account_id.0,
        "names": c.names,
        "not_before": fmt_time(c.not_before),
        "not_after": fmt_time(c.not_after),
        "issued_at": fmt_time(c.issued_at),
        "status": status(c, now),
        "revoked_at": c.revoked_at.map(fmt_time),
        "revoked_reason": c.revoked_reason,
        "renew_early_at": c.renew_early_at.map(fmt_time),
    })
}

/// `certs show`: everything stored about one certificate.
fn render_show(c: &Certificate, now: i64, json: bool) -> anyhow::Result<String> {
    if json {
        // `certs list`'s object, with the order, the key hash and the
        // reason by name.
        let mut v = cert_json(c, now);
        v["order"] = c.order_id.0.into();
        v["revoked_reason"] = c.revoked_reason.map(reason_name).into();
        v["spki_sha256"] = hex::encode(&c.spki_sha256).into();
        return Ok(format!("{}\n", serde_json::to_string(&v)?));
    }
    let mut out = String::new();
    writeln!(out, "serial       {}", c.serial)?;
    writeln!(out, "status       {}", status(c, now))?;
    writeln!(out, "names        {}", c.names.join(", "))?;
    writeln!(out, "account      {}", c.account_id.0)?;
    writeln!(out, "order        {}", c.order_id.0)?;
    writeln!(out, "not before   {}", fmt_time(c.not_before))?;
    writeln!(out, "not after    {}", fmt_time(c.not_after))?;
    writeln!(out, "issued       {}", fmt_time(c.issued_at))?;
    if let Some(at) = c.revoked_at {
        writeln!(
            out,
            "revoked      {} ({})",
            fmt_time(at),
            reason_name(c.revoked_reason.unwrap_or(0))
        )?;
    }
    if let Some(at) = c.renew_early_at {
        writeln!(out, "renew early  since {}", fmt_time(at))?;
    }
    writeln!(out, "key sha256   {}", hex::encode(&c.spki_sha256))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_normalize_to_stored_form() {
        assert_eq!(normalize_serial("0A1B").unwrap(), "0a1b");
        assert_eq!(normalize_serial("a1b").unwrap(), "0a1b");
        assert_eq!(normalize_serial("0x00:0a:1b").unwrap(), "0a1b");
        assert_eq!(normalize_serial("8f").unwrap(), "008f");
        assert_eq!(normalize_serial("008F").unwrap(), "008f");
        assert_eq!(normalize_serial("0").unwrap(), "00");
        for bad in ["", "xyz", "0x", "12 34", &"f".repeat(43)] {
            assert!(normalize_serial(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reasons_by_number_or_name() {
        assert_eq!(parse_reason("keyCompromise").unwrap(), 1);
        assert_eq!(parse_reason("keycompromise").unwrap(), 1);
        assert_eq!(parse_reason("9").unwrap(), 9);
        assert_eq!(parse_reason("unspecified").unwrap(), 0);
        for bad in ["2", "cACompromise", "6", "8", "10", "-1", "nope"] {
            let e = parse_reason(bad).unwrap_err().to_string();
            assert!(e.contains("not accepted"), "{bad}: {e}");
        }
    }

    #[test]
    fn accounts_and_times() {
        assert_eq!(parse_account("7").unwrap(), AccountId(7));
        assert_eq!(
            parse_account("https://localhost:14000/acme/acct/12").unwrap(),
            AccountId(12)
        );
        assert!(parse_account("acct").is_err());
        assert_eq!(parse_time("1700000000").unwrap(), 1_700_000_000);
        assert_eq!(parse_time("2023-11-14T22:13:20Z").unwrap(), 1_700_000_000);
        assert!(parse_time("yesterday").is_err());
    }

    fn cert(serial: &str) -> Certificate {
        Certificate {
            serial: serial.into(),
            account_id: AccountId(3),
            order_id: crate::core::OrderId(1),
            der: Vec::new(),
            chain_pem: String::new(),
            not_before: 0,
            not_after: 1000,
            issued_at: 0,
            revoked_at: None,
            revoked_reason: None,
            names: vec!["a.example".into(), "b.example".into()],
            renew_early_at: None,
            spki_sha256: Vec::new(),
        }
    }

    #[test]
    fn statuses_and_rendering() {
        let valid = cert("01");
        let mut revoked = cert("02");
        revoked.revoked_at = Some(10);
        revoked.revoked_reason = Some(1);
        let mut early = cert("03");
        early.renew_early_at = Some(10);
        assert_eq!(status(&valid, 500), "valid");
        assert_eq!(status(&valid, 2000), "expired");
        assert_eq!(status(&revoked, 500), "revoked(keyCompromise)");
        assert_eq!(status(&early, 500), "renew-early");

        let table = render_list(&[valid.clone(), revoked], 500, false).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("SERIAL"), "{table}");
        assert!(lines[1].contains("a.example,b.example"), "{table}");
        assert!(lines[2].ends_with("revoked(keyCompromise)"), "{table}");

        let json = render_list(&[valid], 500, true).unwrap();
        let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
        assert_eq!(v["serial"], "01");
        assert_eq!(v["account"], 3);
        assert_eq!(v["status"], "valid");
        assert_eq!(v["names"][1], "b.example");
    }

    #[test]
    fn periods_in_seconds_or_units() {
        assert_eq!(parse_period("10800").unwrap(), 10_800);
        assert_eq!(parse_period("3h").unwrap(), 10_800);
        assert_eq!(parse_period(" 7d ").unwrap(), 604_800);
        assert_eq!(parse_period("1w").unwrap(), 604_800);
        assert_eq!(parse_period("1h30m").unwrap(), 5_400);
        assert_eq!(parse_period("168h0m0s").unwrap(), 604_800);
        assert_eq!(parse_period("90s").unwrap(), 90);
        for bad in [
            "",
            "h",
            "3x",
            "3h5",
            "-1",
            "1.5h",
            "3 h",
            "99999999999999999999d",
        ] {
            let e = parse_period(bad).unwrap_err().to_string();
            assert!(e.contains("is not a duration"), "{bad:?}: {e}");
        }
        for zero in ["0", "0h", "0d0s"] {
            let e = parse_period(zero).unwrap_err().to_string();
            assert!(e.contains("longer than 0"), "{zero:?}: {e}");
        }
    }

    #[test]
    fn override_limits_and_keys() {
        assert_eq!(
            parse_override_limit("newOrdersPerAccount").unwrap(),
            LimitName::NewOrdersPerAccount
        );
        assert_eq!(
            parse_override_limit("certificatesPerDomain").unwrap(),
            LimitName::CertificatesPerDomain
        );
        let e = parse_override_limit("certificatesPerFqdnSet")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot be overridden"), "{e}");
        let e = parse_override_limit("lots").unwrap_err().to_string();
        assert!(e.contains("unknown limit"), "{e}");

        let orders = LimitName::NewOrdersPerAccount;
        assert_eq!(override_key(orders, "42").unwrap(), "42");
        assert_eq!(
            override_key(orders, "https://localhost:14000/acme/acct/42").unwrap(),
            "42"
        );
        for bad in ["0", "-3", "abc", ""] {
            let e = override_key(orders, bad).unwrap_err().to_string();
            assert!(e.contains("account id"), "{bad:?}: {e}");
        }
        let domains = LimitName::CertificatesPerDomain;
        assert_eq!(
            override_key(domains, " Example.CO.uk. ").unwrap(),
            "example.co.uk"
        );
        assert!(override_key(domains, " ").is_err());
    }

    #[test]
    fn raises_means_more_burst_or_faster_refill() {
        let l = |b, c, p| Limit::new(b, c, p).unwrap();
        let old = l(2, 300, 10_800);
        assert!(raises(&l(5, 5, 10_800), &old));
        assert!(raises(&l(2, 600, 10_800), &old));
        assert!(raises(&l(2, 300, 3_600), &old));
        assert!(!raises(&l(2, 300, 10_800), &old));
        assert!(!raises(&l(1, 300, 10_800), &old));
        assert!(!raises(&l(2, 300, 21_600), &old));
        assert_eq!(describe(&old), "burst 2, 300 per 3h0m0s");
    }

    #[test]
    fn overrides_render_as_table_or_json() {
        let path = Path::new("/srv/o.toml");
        assert_eq!(
            render_overrides(&[], path, false).unwrap(),
            "no overrides in /srv/o.toml\n"
        );
        assert_eq!(render_overrides(&[], path, true).unwrap(), "");
        let e = OverrideEntry {
            limit: "certificatesPerDomain".into(),
            key: "example.co.uk".into(),
            burst: 1000,
            count: 1000,
            period_secs: 604_800,
            comment: "ticket 7".into(),
        };
        let table = render_overrides(std::slice::from_ref(&e), path, false).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("LIMIT"), "{table}");
        assert!(lines[1].starts_with("certificatesPerDomain  example.co.uk"));
        assert!(lines[1].ends_with("168h0m0s  ticket 7"), "{table}");
        let v: serde_json::Value =
            serde_json::from_str(render_overrides(&[e], path, true).unwrap().trim()).unwrap();
        assert_eq!(v["period_secs"], 604_800);
        assert_eq!(v["period"], "168h0m0s");
        assert_eq!(v["key"], "example.co.uk");
    }
}
