//! `cairn admin load-history`, a benchmarking tool: N certificates issued
//! over the last days, with the accounts, orders, authorizations,
//! challenges and name rows an ACME issuance leaves, written straight into
//! a new database in large transactions (BENCHMARKS.md, "History"). Every
//! certificate is real: a fresh P-256 key, signed by this data directory's
//! intermediate, so whatever reads a stored certificate (download, ARI,
//! revocation, `certs show`) finds what issuance would have stored.
//!
//! What the configuration's retention would have purged by now (the
//! authorizations and challenges of old orders) is not written: the store
//! looks as one that has been issuing for those days.
//!
//! The names are under `.test` (RFC 6761: never a real domain), and it
//! writes only into a database that holds no certificate yet: a
//! benchmark's, never a CA's in service.

use crate::ca::{Ca, Csr};
use crate::config::{Config, Sources};
use crate::core::{spki_hash, AccountId, Certificate, ChallengeType, OrderId};
use crate::key::PublicKey;
use crate::sa::{self, CertQuery, DynStore, PastAccount, PastIssuance};
use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use rand::Rng;
use rcgen::PublicKeyData as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use time::OffsetDateTime;

#[derive(clap::Args)]
pub struct LoadHistoryArgs {
    /// Certificates to write.
    #[arg(long)]
    pub certificates: u64,
    /// Accounts they belong to (default: one per ten certificates).
    #[arg(long)]
    pub accounts: Option<u64>,
    /// Issuance times are spread evenly over this many days before now.
    #[arg(long, default_value_t = 90)]
    pub days: u64,
    /// Share of the certificates revoked (unspecified, superseded or
    /// cessationOfOperation), in percent.
    #[arg(long, default_value_t = 1.0)]
    pub revoked_percent: f64,
    /// Certificates per transaction.
    #[arg(long, default_value_t = 2000)]
    pub batch: u64,
}

/// A certificate's registered domain is renewed about every 60 days: over
/// 90 days, 1.5 certificates per domain. Renewals of a domain certify the
/// same names (so renewal detection finds the earlier ones) for the same
/// account.
const CERTS_PER_DOMAIN: f64 = 1.5;

/// Challenges an authorization offers, the first one the one that validated.
const OFFERED: [ChallengeType; 3] = [
    ChallengeType::Http01,
    ChallengeType::Dns01,
    ChallengeType::TlsAlpn01,
];

/// What every generator thread needs.
struct Plan {
    ca: Ca,
    profile_name: String,
    profile: crate::config::ProfileConfig,
    accounts: Vec<AccountId>,
    domains: u64,
    certificates: u64,
    batch: u64,
    now: i64,
    span_secs: i64,
    revoked: f64,
    /// Authorizations that expired before this were purged by retention
    /// (if the configuration runs it) and are not written.
    purged_before: i64,
}

pub async fn run(src: &Sources, a: LoadHistoryArgs) -> anyhow::Result<()> {
    if a.certificates == 0 || a.batch == 0 {
        bail!("--certificates and --batch must be at least 1");
    }
    if !(0.0..=100.0).contains(&a.revoked_percent) {
        bail!("--revoked-percent must be between 0 and 100");
    }
    let n_accounts = a.accounts.unwrap_or(a.certificates / 10).max(1);
    let cfg = Config::load(src)?;
    let profile = cfg
        .profile("")
        .ok_or_else(|| anyhow!("no default profile"))?
        .clone();
    // A fresh data directory gets its hierarchy and database here, as
    // `cairn serve` would make them.
    let ca = Ca::load_or_create(&cfg).context("loading the CA")?;
    let url = cfg.database_url();
    let store = sa::open(&url, 2)
        .await
        .with_context(|| format!("opening the database {}", crate::config::redact_url(&url)))?;
    let any = CertQuery {
        limit: 1,
        ..CertQuery::default()
    };
    if !store.find_certificates(&any).await?.is_empty() {
        bail!("the database already holds certificates: load-history writes only into a new one");
    }
    let started = Instant::now();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let span_secs = i64::try_from(a.days.saturating_mul(86_400)).unwrap_or(i64::MAX);
    let accounts = insert_accounts(&store, n_accounts, now, span_secs).await?;
    eprintln!(
        "load-history: {n_accounts} accounts in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let plan = Arc::new(Plan {
        ca,
        profile_name: cfg.acme.default_profile.clone(),
        profile,
        accounts,
        domains: ((a.certificates as f64 / CERTS_PER_DOMAIN).ceil() as u64).max(1),
        certificates: a.certificates,
        batch: a.batch,
        now,
        span_secs,
        revoked: a.revoked_percent / 100.0,
        purged_before: if cfg.retention.enabled {
            now.saturating_sub(cfg.retention.keep_expired_secs as i64)
        } else {
            i64::MIN
        },
    });

    // Signing is the CPU work: one generator thread per core, each taking
    // the next batch; this task writes the batches as they come.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<anyhow::Result<Vec<PastIssuance>>>(threads);
    for _ in 0..threads {
        let (plan, next, tx) = (plan.clone(), next.clone(), tx.clone());
        std::thread::spawn(move || loop {
            let b = next.fetch_add(1, Ordering::Relaxed);
            let first = b.saturating_mul(plan.batch);
            if first >= plan.certificates {
                return;
            }
            let last = (first + plan.batch).min(plan.certificates);
            let batch = (first..last).map(|i| issuance(&plan, i)).collect();
            if tx.blocking_send(batch).is_err() {
                return;
            }
        });
    }
    drop(tx);
    let (mut written, mut revoked, mut shown) = (0u64, 0u64, 0u64);
    while let Some(batch) = rx.recv().await {
        let batch = batch?;
        store.insert_past_issuances(&batch).await?;
        written += batch.len() as u64;
        revoked += batch.iter().filter(|p| p.cert.revoked_at.is_some()).count() as u64;
        if written * 10 / plan.certificates > shown {
            shown = written * 10 / plan.certificates;
            eprintln!(
                "load-history: {written} certificates in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    store.close().await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "loaded {written} certificates ({revoked} revoked) of {} registered domains for {n_accounts} accounts, issued over {} days, in {secs:.1} s ({:.0}/s)",
        plan.domains,
        a.days,
        written as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// `n` accounts with real ES256 keys, created over the span.
async fn insert_accounts(
    store: &DynStore,
    n: u64,
    now: i64,
    span_secs: i64,
) -> anyhow::Result<Vec<AccountId>> {
    let mut ids = Vec::with_capacity(n as usize);
    let mut rng = rand::thread_rng();
    let mut left = n;
    while left > 0 {
        let take = left.min(5000);
        let mut batch = Vec::with_capacity(take as usize);
        for _ in 0..take {
            let key = PublicKey::from_spki_der(&p256_key()?.subject_public_key_info())
                .map_err(|e| anyhow!("a generated key: {e:?}"))?;
            batch.push(PastAccount {
                jwk: key.to_jwk().to_string(),
                thumbprint: key.thumbprint(),
                created_at: now - span_secs - rng.gen_range(0..86_400),
            });
        }
        ids.extend(store.insert_past_accounts(&batch).await?);
        left -= take;
    }
    Ok(ids)
}

fn p256_key() -> anyhow::Result<rcgen::KeyPair> {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| anyhow!("generating a P-256 key: {e}"))
}

/// Certificate `i`: its registered domain `d<k>.test` (`i` modulo the
/// domains, so renewals of a domain spread over the span), that domain's
/// account, an issuance time drawn evenly over the span.
fn issuance(plan: &Plan, i: u64) -> anyhow::Result<PastIssuance> {
    let mut rng = rand::thread_rng();
    let k = i % plan.domains;
    let account = plan.accounts[(k % plan.accounts.len() as u64) as usize];
    let domain = format!("d{k}.test");
    let names = if k.is_multiple_of(2) {
        vec![domain.clone()]
    } else {
        vec![domain.clone(), format!("www.{domain}")]
    };
    let issued_at = plan.now - rng.gen_range(0..plan.span_secs.max(1));
    // Ordered, validated and finalized within a few seconds.
    let ordered_at = issued_at - rng.gen_range(1..10);
    let key = p256_key()?;
    let spki_der = key.subject_public_key_info();
    let csr = Csr {
        names: names.clone(),
        ips: Vec::new(),
        common_name: None,
        key: PublicKey::from_spki_der(&spki_der).map_err(|e| anyhow!("a generated key: {e:?}"))?,
        spki_der,
    };
    let when = OffsetDateTime::from_unix_timestamp(issued_at)?;
    let issued = plan
        .ca
        .issue(&csr, &names, &plan.profile, when)
        .map_err(|p| anyhow!("signing: {}", p.detail))?;
    let revoked_at = (rng.gen::<f64>() < plan.revoked)
        .then(|| issued_at + rng.gen_range(0..(plan.now - issued_at).max(1)));
    let authz_expires = ordered_at + plan.profile.valid_authz_lifetime_secs as i64;
    let kept = if authz_expires < plan.purged_before {
        &[][..]
    } else {
        &names[..]
    };
    let challenges = kept
        .iter()
        .map(|_| {
            OFFERED
                .iter()
                .map(|t| (*t, B64.encode(rng.gen::<[u8; 32]>())))
                .collect()
        })
        .collect::<Vec<Vec<_>>>();
    let records = kept
        .iter()
        .zip(&challenges)
        .map(|(name, offered)| {
            serde_json::json!([{
                "url": format!("http://{name}/.well-known/acme-challenge/{}", offered[0].1),
                "hostname": name,
                "port": "80",
                "addressesResolved": ["192.0.2.1"],
                "addressUsed": "192.0.2.1",
            }])
            .to_string()
        })
        .collect();
    Ok(PastIssuance {
        profile: plan.profile_name.clone(),
        ordered_at,
        order_expires: ordered_at + plan.profile.order_lifetime_secs as i64,
        authz_expires,
        challenges,
        records,
        cert: Certificate {
            serial: issued.serial,
            account_id: account,
            order_id: OrderId(0),
            der: issued.der,
            chain_pem: issued.chain_pem,
            not_before: issued.not_before.unix_timestamp(),
            not_after: issued.not_after.unix_timestamp(),
            issued_at,
            revoked_at,
            revoked_reason: revoked_at.map(|_| [0, 4, 5][rng.gen_range(0..3)]),
            names,
            renew_early_at: None,
            spki_sha256: spki_hash(&csr.spki_der),
        },
    })
}
