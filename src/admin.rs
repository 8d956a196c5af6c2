//! `cairn admin`: operator controls over issued certificates. `certs list`
//! finds them, `certs revoke` revokes one and publishes a CRL at once, and
//! `certs renew-early` moves ARI windows into the past (how a CA handles an
//! incident without revoking). It opens the same database and CA files as
//! `cairn serve`, and works while servers run on them.

use crate::ca::Ca;
use crate::clock::Clock;
use crate::config::{Config, Sources};
use crate::sa::{self, AccountId, CertQuery, Certificate, DynStore};
use anyhow::{anyhow, bail, Context};
use std::fmt::Write as _;
use std::path::PathBuf;
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
    pub command: AdminCommand,
}

#[derive(clap::Subcommand)]
pub enum AdminCommand {
    /// Issued certificates: list, revoke, renew early.
    #[command(subcommand)]
    Certs(CertsCommand),
}

#[derive(clap::Subcommand)]
pub enum CertsCommand {
    /// List certificates by name, account or serial, newest first.
    List(ListArgs),
    /// Revoke a certificate and publish a fresh CRL.
    Revoke(RevokeArgs),
    /// Move the ARI renewal window of matching certificates into the past,
    /// so ARI-aware clients renew them at once.
    RenewEarly(RenewEarlyArgs),
}

#[derive(clap::Args)]
#[group(id = "which", required = true, multiple = true)]
pub struct ListArgs {
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
pub struct RevokeArgs {
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
pub struct RenewEarlyArgs {
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

const KEY_COMPROMISE: i64 = 1;

/// Run one `cairn admin` command; output goes to stdout, the error (if
/// any) becomes the one-line message `main` prints.
pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let src = Sources {
        preset: args.preset,
        file: args.config,
        data_dir: args.data_dir,
    };
    let AdminCommand::Certs(cmd) = args.command;
    // Check the arguments before touching the database: a typo must change
    // nothing.
    match cmd {
        CertsCommand::List(a) => {
            let q = CertQuery {
                serial: a.serial.as_deref().map(normalize_serial).transpose()?,
                name: a.name.map(|n| n.to_ascii_lowercase()),
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
        .with_context(|| format!("opening the database {url}"))
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
    if let Some(at) = cert.revoked_at {
        bail!(
            "certificate {serial} is already revoked ({}, at {})",
            reason_name(cert.revoked_reason.unwrap_or(0)),
            fmt_time(at)
        );
    }
    // Operators are trusted: their keyCompromise blocks the key (and revokes
    // its other certificates) without a proof of possession.
    let block_key = (reason == KEY_COMPROMISE).then(|| cert.spki_sha256.clone());
    if !store
        .revoke_certificate(serial, reason, clock.unix(), block_key.as_deref())
        .await?
    {
        bail!("certificate {serial} is already revoked (concurrently)");
    }
    println!("revoked {serial} ({})", reason_name(reason));
    if block_key.is_some() {
        println!("blocked its key; other unrevoked certificates of that key were revoked too");
    }
    // Publish now rather than at the next scheduled update, so relying
    // parties see the revocation at once. Servers serve the newest CRL in
    // the database, whoever signed it.
    let crl = crate::crl::publish(&*store, &ca, clock.unix(), cfg)
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
            let v = serde_json::json!({
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
            });
            writeln!(out, "{}", serde_json::to_string(&v)?)?;
        }
        return Ok(out);
    }
    let rows: Vec<[String; 5]> = certs
        .iter()
        .map(|c| {
            [
                c.serial.clone(),
                c.account_id.to_string(),
                c.names.join(","),
                fmt_time(c.not_after),
                status(c, now),
            ]
        })
        .collect();
    let header = ["SERIAL", "ACCOUNT", "NAMES", "NOT_AFTER", "STATUS"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
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
            order_id: sa::OrderId(1),
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
}
