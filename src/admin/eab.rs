//! `cairn admin eab create|list|revoke`: the external account binding keys
//! (RFC 8555 §7.3.4) an internal PKI hands its subscribers. `create` prints
//! the HMAC key once; the database keeps it (the server must verify MACs
//! with it) but nothing prints it again.

use super::{fmt_time, open_store, parse_period, parse_time, render_table};
use crate::clock::Clock;
use crate::config::{Config, Sources};
use crate::core::EabKey;
use crate::policy::Policy;
use anyhow::{anyhow, bail};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use rand::RngCore;

#[derive(clap::Subcommand)]
pub enum EabCommand {
    /// Create a key and print its id and HMAC key (shown this once).
    Create(CreateArgs),
    /// The keys: names, expiry, use, revocation (never the HMAC key).
    List(ListArgs),
    /// Revoke a key: it binds no more accounts (those it bound stay).
    Revoke(RevokeArgs),
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// What accounts bound by the key may order: exact names
    /// (`www.example.com`) or `*.domain` (any name below domain, wildcards
    /// included). Default: any name.
    #[arg(long, num_args = 1..)]
    pub names: Vec<String>,
    /// When the key stops binding: RFC 3339, Unix seconds, or a duration
    /// from now (30d, 12h). Default: never.
    #[arg(long)]
    pub expires: Option<String>,
    /// Bind any number of accounts (default: one).
    #[arg(long)]
    pub reusable: bool,
    /// `{"kid": ..., "hmacKey": ...}` instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// One JSON object a line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct RevokeArgs {
    /// The key id.
    pub kid: String,
}

pub async fn run(src: &Sources, cmd: EabCommand) -> anyhow::Result<()> {
    match cmd {
        EabCommand::Create(a) => create(src, a).await,
        EabCommand::List(a) => {
            let cfg = Config::load(src)?;
            let keys = open_store(&cfg).await?.eab_keys().await?;
            print!("{}", render(&keys, Clock::system().unix(), a.json)?);
            Ok(())
        }
        EabCommand::Revoke(a) => {
            let cfg = Config::load(src)?;
            let store = open_store(&cfg).await?;
            let kid = a.kid.trim();
            let Some(key) = store.eab_key(kid).await? else {
                bail!("no external account key {kid:?} (cairn admin eab list shows them)");
            };
            if let Some(t) = key.revoked_at {
                bail!(
                    "external account key {kid} was already revoked at {}",
                    fmt_time(t)
                );
            }
            if !store.revoke_eab_key(kid, Clock::system().unix()).await? {
                bail!("external account key {kid} was revoked concurrently");
            }
            println!("revoked external account key {kid}");
            Ok(())
        }
    }
}

async fn create(src: &Sources, a: CreateArgs) -> anyhow::Result<()> {
    let cfg = Config::load(src)?;
    let now = Clock::system().unix();
    // Check the arguments before touching the database.
    let names = patterns(&Policy::new(&cfg.policy)?, &a.names)?;
    let expires = a.expires.as_deref().map(|t| expiry(t, now)).transpose()?;
    let key = EabKey {
        kid: hex::encode(random::<16>()),
        hmac_key: hmac_key(),
        names,
        created_at: now,
        expires,
        reusable: a.reusable,
        revoked_at: None,
        bound_count: 0,
        first_account: None,
    };
    open_store(&cfg).await?.put_eab_key(&key).await?;
    let hmac = B64.encode(&key.hmac_key);
    if a.json {
        println!("{}", serde_json::json!({"kid": key.kid, "hmacKey": hmac}));
    } else {
        println!("kid       {}", key.kid);
        println!("hmac key  {hmac}");
        println!("names     {}", names_text(&key.names));
        println!(
            "expires   {}",
            key.expires.map(fmt_time).unwrap_or_else(|| "never".into())
        );
        println!(
            "binds     {}",
            if key.reusable {
                "any number of accounts"
            } else {
                "one account"
            }
        );
        println!("The HMAC key is not shown again (certbot: --eab-kid, --eab-hmac-key).");
    }
    Ok(())
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

/// 256 random bits, drawn again while the base64url text starts with `-`
/// (1 in 64), so that it can follow a client's flag as its own argument
/// (`--eab-hmac-key -...` reads as another flag); a loss of 0.02 bits.
fn hmac_key() -> Vec<u8> {
    loop {
        let k = random::<32>();
        if !B64.encode(k).starts_with('-') {
            return k.to_vec();
        }
    }
}

/// Name patterns as stored (lower-case), each checked by the identifier
/// policy as the name (or wildcard) it stands for.
fn patterns(policy: &Policy, input: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::with_capacity(input.len());
    for p in input {
        let name = policy.check_name(p.trim()).map_err(|e| {
            anyhow!(
                "--names {p:?} is not an exact name or *.domain pattern: {}",
                e.detail
            )
        })?;
        out.push(name.value());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// `--expires`: a time, or a duration from `now`; in the future.
fn expiry(input: &str, now: i64) -> anyhow::Result<i64> {
    let t = match parse_time(input) {
        Ok(t) => t,
        Err(_) => {
            let secs = parse_period(input).map_err(|_| {
                anyhow!(
                    "--expires {input:?} is neither a time (RFC 3339, Unix seconds) nor a \
                     duration (30d, 12h)"
                )
            })?;
            now.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX))
        }
    };
    if t <= now {
        bail!("--expires {input:?} is not in the future");
    }
    Ok(t)
}

fn names_text(names: &[String]) -> String {
    if names.is_empty() {
        "any".into()
    } else {
        names.join(", ")
    }
}

/// What an operator wants to know first: revoked beats expired beats used.
fn state(k: &EabKey, now: i64) -> &'static str {
    if k.revoked_at.is_some() {
        "revoked"
    } else if k.expires.is_some_and(|t| t <= now) {
        "expired"
    } else if !k.reusable && k.bound_count > 0 {
        "used"
    } else {
        "usable"
    }
}

fn render(keys: &[EabKey], now: i64, json: bool) -> anyhow::Result<String> {
    let mut out = String::new();
    if json {
        for k in keys {
            let v = serde_json::json!({
                "kid": k.kid,
                "status": state(k, now),
                "names": k.names,
                "createdAt": fmt_time(k.created_at),
                "expires": k.expires.map(fmt_time),
                "reusable": k.reusable,
                "revokedAt": k.revoked_at.map(fmt_time),
                "boundAccounts": k.bound_count,
                "firstAccount": k.first_account.map(|a| a.0),
            });
            out.push_str(&v.to_string());
            out.push('\n');
        }
        return Ok(out);
    }
    if keys.is_empty() {
        out.push_str("no external account keys (cairn admin eab create makes one)\n");
        return Ok(out);
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.kid.clone(),
                state(k, now).into(),
                names_text(&k.names),
                fmt_time(k.created_at),
                k.expires.map(fmt_time).unwrap_or_else(|| "never".into()),
                if k.reusable { "reusable" } else { "once" }.into(),
                match k.first_account {
                    Some(a) if k.bound_count > 1 => format!("{} (first {a})", k.bound_count),
                    Some(a) => format!("1 ({a})"),
                    None => "0".into(),
                },
            ]
        })
        .collect();
    render_table(
        &[
            "KID", "STATUS", "NAMES", "CREATED", "EXPIRES", "USE", "ACCOUNTS",
        ],
        &rows,
        &mut out,
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_a_future_time_or_a_duration() {
        assert_eq!(expiry("30d", 1000).unwrap(), 1000 + 30 * 86_400);
        assert_eq!(expiry("2000", 1000).unwrap(), 2000);
        assert_eq!(expiry("2030-01-01T00:00:00Z", 1000).unwrap(), 1_893_456_000);
        assert!(expiry("999", 1000).is_err());
        assert!(expiry("soon", 1000).is_err());
    }

    #[test]
    fn hmac_keys_are_256_bits_and_never_start_with_a_dash() {
        for _ in 0..500 {
            let k = hmac_key();
            assert_eq!(k.len(), 32);
            assert!(!B64.encode(&k).starts_with('-'));
        }
    }
}
