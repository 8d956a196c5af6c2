//! The `LimitStore` contract (rate-limit buckets and paused identifiers),
//! run against both backends like `store_backends.rs`: each behaviour is one
//! function, called once for SQLite (a file in a temporary directory) and
//! once for PostgreSQL (a database of its own on `CAIRN_TEST_DATABASE_URL`,
//! dropped afterwards). The race tests open several stores on one database,
//! as several Cairn instances would, and check that no bucket ever admits
//! more than it holds.
//!
//! Without `CAIRN_TEST_DATABASE_URL` the PostgreSQL half fails, so CI cannot
//! skip it silently; `CAIRN_TEST_SKIP_POSTGRES=1` skips it on purpose.

mod common;

use cairn::clock::Clock;
use cairn::core::{AccountId, ChallengeType, Identifier};
use cairn::problem::Problem;
use cairn::ratelimit::{
    BucketTxn, Limit, LimitError, LimitName, LimitSet, LimitStore, Limiter, LimitsConfig,
    Overrides, Profile, TxnMode, WindowConfig,
};
use cairn::sa::{DynStore, NewAuthz, NewOrder, OrderAuthz};
use common::{contract_tests, Fixture};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Barrier;

/// Fixed times: nothing here reads the real clock.
const S: i64 = 1_000_000_000;
const NOW: i64 = 1_700_000_000 * S;
const NOW_SECS: i64 = 1_700_000_000;

contract_tests!(
    spend_until_empty_then_refill,
    batch_is_all_or_nothing,
    spend_only_never_decides,
    check_only_never_writes,
    refunds_never_exceed_the_burst,
    reset_and_prune,
    duplicate_keys_are_refused,
    pause_and_unpause,
    pending_authzs_are_counted,
    race_single_bucket_admits_exactly_its_burst,
    race_overlapping_batches_never_overspend,
    limiter_new_account_denial_refund_and_refill,
    limiter_new_order_renewals_and_overrides,
    limiter_failures_pause_and_unpause,
);

fn txn(id: &str, burst: u64, period_secs: u64, mode: TxnMode) -> BucketTxn {
    BucketTxn {
        limit: LimitName::CertificatesPerDomain,
        key: format!("test:{id}"),
        display: id.to_string(),
        params: Limit::new(burst, burst, period_secs).unwrap(),
        cost: 1,
        mode,
    }
}

async fn spend1(s: &DynStore, t: &BucketTxn, now: i64) -> cairn::ratelimit::Decision {
    let d = s.spend_buckets(std::slice::from_ref(t), now).await.unwrap();
    assert_eq!(d.len(), 1);
    d[0]
}

/// Tokens left, read without spending (a check-only transaction of cost 0).
async fn remaining(s: &DynStore, t: &BucketTxn, now: i64) -> u64 {
    let mut probe = t.clone();
    probe.mode = TxnMode::CheckOnly;
    probe.cost = 0;
    spend1(s, &probe, now).await.remaining
}

// ------------------------------------------------------------ behaviours ---

async fn spend_until_empty_then_refill(f: &Fixture) {
    let s = f.open(2).await;
    // 5 per hour: one token every 12 minutes.
    let t = txn("a.example", 5, 3600, TxnMode::CheckAndSpend);
    for i in 0..5 {
        let d = spend1(&s, &t, NOW).await;
        assert!(d.allowed, "spend {i}");
        assert_eq!(d.remaining, 4 - i);
    }
    let d = spend1(&s, &t, NOW).await;
    assert!(!d.allowed);
    assert_eq!(d.retry_in_ns, 12 * 60 * S);
    // A refusal spent nothing: still exactly one token at the refill time.
    let d = spend1(&s, &t, NOW + 12 * 60 * S - 1).await;
    assert!(!d.allowed);
    assert_eq!(d.retry_in_ns, 1);
    assert!(spend1(&s, &t, NOW + 12 * 60 * S).await.allowed);
    assert!(!spend1(&s, &t, NOW + 12 * 60 * S).await.allowed);
    // A second instance sees the same bucket.
    let s2 = f.open(1).await;
    assert!(!spend1(&s2, &t, NOW + 12 * 60 * S).await.allowed);
    assert!(spend1(&s2, &t, NOW + 24 * 60 * S).await.allowed);
}

async fn batch_is_all_or_nothing(f: &Fixture) {
    let s = f.open(2).await;
    let full = txn("full", 10, 3600, TxnMode::CheckAndSpend);
    let empty = txn("empty", 1, 3600, TxnMode::CheckAndSpend);
    assert!(spend1(&s, &empty, NOW).await.allowed);

    // `empty` refuses: `full` is not written although it was allowed.
    let d = s
        .spend_buckets(&[full.clone(), empty.clone()], NOW)
        .await
        .unwrap();
    assert!(d[0].allowed && !d[1].allowed);
    assert_eq!(remaining(&s, &full, NOW).await, 10);

    // Both have tokens: both are written.
    let later = NOW + 3600 * S;
    let d = s
        .spend_buckets(&[full.clone(), empty.clone()], later)
        .await
        .unwrap();
    assert!(d[0].allowed && d[1].allowed);
    assert_eq!(remaining(&s, &full, later).await, 9);
    assert_eq!(remaining(&s, &empty, later).await, 0);
}

async fn spend_only_never_decides(f: &Fixture) {
    let s = f.open(2).await;
    let gate = txn("gate", 1, 3600, TxnMode::CheckAndSpend);
    let side = txn("side", 1, 3600, TxnMode::SpendOnly);
    assert!(spend1(&s, &side, NOW).await.allowed);
    // `side` is empty but spend-only: the batch is allowed, `gate` spent.
    let d = s
        .spend_buckets(&[gate.clone(), side.clone()], NOW)
        .await
        .unwrap();
    assert!(d[0].allowed && !d[1].allowed);
    assert_eq!(remaining(&s, &gate, NOW).await, 0);

    // A denied batch does not write its spend-only transactions either.
    let fresh = txn("fresh-side", 3, 3600, TxnMode::SpendOnly);
    let d = s
        .spend_buckets(&[gate.clone(), fresh.clone()], NOW)
        .await
        .unwrap();
    assert!(!d[0].allowed && d[1].allowed);
    assert_eq!(remaining(&s, &fresh, NOW).await, 3);
}

async fn check_only_never_writes(f: &Fixture) {
    let s = f.open(2).await;
    let t = txn("peek", 2, 3600, TxnMode::CheckOnly);
    for _ in 0..5 {
        let d = spend1(&s, &t, NOW).await;
        assert!(d.allowed);
        assert_eq!(d.remaining, 1);
    }
    // Mixed with a spending transaction, it still is not written.
    let spend = txn("other", 2, 3600, TxnMode::CheckAndSpend);
    s.spend_buckets(&[t.clone(), spend.clone()], NOW)
        .await
        .unwrap();
    assert_eq!(remaining(&s, &t, NOW).await, 2);
    assert_eq!(remaining(&s, &spend, NOW).await, 1);
    // Nor is a row made for it: pruning far ahead finds only the spent one.
    assert_eq!(s.prune_buckets(NOW + 10 * 3600 * S, 100).await.unwrap(), 1);
}

async fn refunds_never_exceed_the_burst(f: &Fixture) {
    let s = f.open(2).await;
    let t = txn("refund", 3, 3600, TxnMode::CheckAndSpend);
    // Nothing to refund on a missing bucket.
    assert_eq!(
        s.refund_buckets(std::slice::from_ref(&t), NOW)
            .await
            .unwrap(),
        0
    );
    spend1(&s, &t, NOW).await;
    spend1(&s, &t, NOW).await;
    assert_eq!(remaining(&s, &t, NOW).await, 1);
    assert_eq!(
        s.refund_buckets(std::slice::from_ref(&t), NOW)
            .await
            .unwrap(),
        1
    );
    assert_eq!(remaining(&s, &t, NOW).await, 2);
    // Refunding more than was spent stops at full.
    for _ in 0..3 {
        s.refund_buckets(std::slice::from_ref(&t), NOW)
            .await
            .unwrap();
    }
    assert_eq!(remaining(&s, &t, NOW).await, 3);
    let mut three = t.clone();
    three.cost = 3;
    assert!(spend1(&s, &three, NOW).await.allowed);
    assert!(!spend1(&s, &t, NOW).await.allowed, "not one token more");
    // Check-only transactions are never refunded.
    let peek = txn("refund", 3, 3600, TxnMode::CheckOnly);
    assert_eq!(s.refund_buckets(&[peek], NOW).await.unwrap(), 0);
    assert_eq!(remaining(&s, &t, NOW).await, 0);
}

async fn reset_and_prune(f: &Fixture) {
    let s = f.open(2).await;
    let a = txn("reset-a", 1, 3600, TxnMode::CheckAndSpend);
    let b = txn("reset-b", 1, 60, TxnMode::CheckAndSpend);
    spend1(&s, &a, NOW).await;
    spend1(&s, &b, NOW).await;
    assert!(!spend1(&s, &a, NOW).await.allowed);
    assert_eq!(
        s.reset_buckets(std::slice::from_ref(&a.key)).await.unwrap(),
        1
    );
    assert!(spend1(&s, &a, NOW).await.allowed, "a reset bucket is full");
    assert_eq!(s.reset_buckets(&["test:nothing".into()]).await.unwrap(), 0);

    // Two minutes on, `b` (refilled) is pruned and `a` (not) is kept.
    let later = NOW + 120 * S;
    assert_eq!(s.prune_buckets(later, 100).await.unwrap(), 1);
    assert!(!spend1(&s, &a, later).await.allowed);
    assert!(spend1(&s, &b, later).await.allowed);
}

async fn duplicate_keys_are_refused(f: &Fixture) {
    let s = f.open(1).await;
    let t = txn("dup", 5, 60, TxnMode::CheckAndSpend);
    assert!(s.spend_buckets(&[t.clone(), t.clone()], NOW).await.is_err());
    assert_eq!(remaining(&s, &t, NOW).await, 5);
    assert!(s.spend_buckets(&[], NOW).await.unwrap().is_empty());
}

async fn pause_and_unpause(f: &Fixture) {
    let s = f.open(2).await;
    let (a, b) = (AccountId(1), AccountId(2));
    let idents = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(s.pause(a, "x.example", NOW_SECS).await.unwrap());
    assert!(
        !s.pause(a, "x.example", NOW_SECS).await.unwrap(),
        "already paused"
    );
    assert!(s.pause(a, "y.example", NOW_SECS).await.unwrap());
    assert!(s.pause(b, "x.example", NOW_SECS).await.unwrap());
    assert_eq!(
        paused(&*s, a, &idents(&["y.example", "x.example", "z.example"])).await,
        idents(&["x.example", "y.example"])
    );
    assert!(paused(&*s, a, &[]).await.is_empty());

    assert_eq!(
        s.unpause(a, Some("x.example"), NOW_SECS + 1).await.unwrap(),
        idents(&["x.example"])
    );
    assert_eq!(
        paused(&*s, a, &idents(&["x.example", "y.example"])).await,
        idents(&["y.example"])
    );
    assert_eq!(
        s.unpause(a, None, NOW_SECS + 2).await.unwrap(),
        idents(&["y.example"])
    );
    assert!(s.unpause(a, None, NOW_SECS + 3).await.unwrap().is_empty());
    // Other accounts are untouched; a pair can be paused again.
    assert_eq!(
        paused(&*s, b, &idents(&["x.example"])).await,
        idents(&["x.example"])
    );
    assert!(s.pause(a, "x.example", NOW_SECS + 4).await.unwrap());
}

async fn pending_authzs_are_counted(f: &Fixture) {
    let s = f.open(2).await;
    let (acct, _) = s
        .create_account("{}", "tp-pending", &[], None, NOW_SECS)
        .await
        .unwrap();
    let authz = |name: &str, expires: i64| {
        OrderAuthz::New(NewAuthz {
            identifier_type: cairn::core::IdentifierType::Dns,
            profile: "classic".into(),
            identifier: name.into(),
            wildcard: false,
            expires,
            challenges: vec![(ChallengeType::Http01, format!("tok-{name}"))],
        })
    };
    s.create_order(NewOrder {
        profile: "classic".into(),
        account_id: acct.id,
        expires: NOW_SECS + 3600,
        identifiers: vec![Identifier::dns("a.example"), Identifier::dns("b.example")],
        authzs: vec![
            authz("a.example", NOW_SECS + 3600),
            authz("b.example", NOW_SECS + 10),
        ],
        replaces: None,
        reservation: None,
        now: NOW_SECS,
    })
    .await
    .unwrap();
    let pending = |account: AccountId, now: i64| {
        let s = s.clone();
        async move {
            s.order_limit_facts(account, &[], "", 0, now)
                .await
                .unwrap()
                .pending_authzs
        }
    };
    assert_eq!(pending(acct.id, NOW_SECS).await, 2);
    assert_eq!(
        pending(acct.id, NOW_SECS + 10).await,
        1,
        "expired ones do not count"
    );
    assert_eq!(pending(AccountId(999), NOW_SECS).await, 0);
}

/// 200 concurrent single-token spends, from four instances, against a
/// bucket of 50: exactly 50 are admitted. Five rounds, one bucket each.
async fn race_single_bucket_admits_exactly_its_burst(f: &Fixture) {
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(f.open(8).await);
    }
    for round in 0..5 {
        let t = Arc::new(txn(
            &format!("race-{round}"),
            50,
            7 * 86_400,
            TxnMode::CheckAndSpend,
        ));
        let barrier = Arc::new(Barrier::new(200));
        let admitted = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..200 {
            let s = stores[i % stores.len()].clone();
            let (t, barrier, admitted) = (t.clone(), barrier.clone(), admitted.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let d = s
                    .spend_buckets(std::slice::from_ref(&*t), NOW)
                    .await
                    .unwrap();
                if d[0].allowed {
                    admitted.fetch_add(1, Ordering::Relaxed);
                } else {
                    // Every refusal carries a usable wait: one token's time.
                    assert_eq!(d[0].retry_in_ns, 7 * 86_400 * S / 50);
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(admitted.load(Ordering::Relaxed), 50, "round {round}");
        assert_eq!(remaining(&stores[0], &t, NOW).await, 0);
    }
}

/// Batches over overlapping keys, listed in different orders, racing from
/// several instances: no deadlock surfaces as an error, and no bucket
/// admits more than its burst.
async fn race_overlapping_batches_never_overspend(f: &Fixture) {
    let mut stores = Vec::new();
    for _ in 0..3 {
        stores.push(f.open(6).await);
    }
    const KEYS: usize = 5;
    const BURST: u64 = 20;
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let barrier = Arc::new(Barrier::new(120));
    let mut tasks = Vec::new();
    for i in 0..120 {
        let s = stores[i % stores.len()].clone();
        let (counts, barrier) = (counts.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            // Three keys, in an order that depends on i.
            let mut idx = vec![i % KEYS, (i + 1) % KEYS, (i + 3) % KEYS];
            if i % 2 == 1 {
                idx.reverse();
            }
            let batch: Vec<BucketTxn> = idx
                .iter()
                .map(|k| txn(&format!("overlap-{k}"), BURST, 3600, TxnMode::CheckAndSpend))
                .collect();
            barrier.wait().await;
            let d = s.spend_buckets(&batch, NOW).await.unwrap();
            let all = d.iter().all(|d| d.allowed);
            if all {
                for k in &idx {
                    counts[*k].fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut total = 0;
    for (k, c) in counts.iter().enumerate() {
        let c = c.load(Ordering::Relaxed);
        assert!(c <= BURST, "key {k} admitted {c}");
        let t = txn(&format!("overlap-{k}"), BURST, 3600, TxnMode::CheckAndSpend);
        // What the bucket says was spent matches what the callers saw.
        assert_eq!(remaining(&stores[0], &t, NOW).await, BURST - c, "key {k}");
        total += c;
    }
    assert!(total > 0);
}

// --------------------------------------------------------------- limiter ---
// The Limiter's transactions end to end on a real store, with the
// injectable clock moved instead of sleeping.

fn window(burst: u64, count: u64, period_secs: u64) -> WindowConfig {
    WindowConfig {
        burst,
        count,
        period_secs,
    }
}

fn limiter(
    store: &DynStore,
    cfg: &LimitsConfig,
    overrides: Arc<Overrides>,
) -> (Limiter, Arc<Clock>) {
    let clock = Arc::new(Clock::system());
    let ls: Arc<dyn LimitStore> = store.clone();
    let l = Limiter::new(
        LimitSet::resolve(cfg),
        overrides,
        ls,
        clock.clone(),
        "https://ca.example/docs/rate-limits",
    );
    (l, clock)
}

fn denial(r: Result<cairn::ratelimit::Spent, LimitError>) -> Problem {
    match r {
        Err(
            e @ (LimitError::Denied(_) | LimitError::Paused { .. } | LimitError::TooManyPending(_)),
        ) => e.to_problem(),
        Err(LimitError::Unavailable(p)) => panic!("store failed: {p}"),
        Ok(s) => panic!("allowed: {:?}", s.info),
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

async fn limiter_new_account_denial_refund_and_refill(f: &Fixture) {
    let s = f.open(2).await;
    let mut cfg = LimitsConfig::with_profile(Profile::Unlimited);
    cfg.windows.new_registrations_per_ip = window(2, 2, 3 * 3600);
    cfg.windows.new_registrations_per_ipv6_range = window(3, 3, 3 * 3600);
    let (l, clock) = limiter(&s, &cfg, Overrides::empty());
    let ip: IpAddr = "192.0.2.10".parse().unwrap();

    let first = l.check_new_account(ip).await.unwrap();
    let info = first.info.clone().unwrap();
    assert_eq!(info.limit, LimitName::NewRegistrationsPerIp);
    assert_eq!(
        (info.quota, info.remaining, info.window_secs),
        (2, 1, 3 * 3600)
    );
    let second = l.check_new_account(ip).await.unwrap();
    let p = denial(l.check_new_account(ip).await);
    assert_eq!(p.status, 429);
    assert_eq!(p.short_type(), "rateLimited");
    let m = p.rate_limit.clone().unwrap();
    assert_eq!(
        (m.limit.as_str(), m.key.as_str()),
        ("newRegistrationsPerIp", "192.0.2.10")
    );
    // One token per 90 minutes.
    let wait = p.retry_after.unwrap();
    assert!((5399..=5400).contains(&wait), "{wait}");
    assert_eq!(m.retry_after, Some(wait));
    assert!(
        p.detail
            .contains("too many new registrations (2) from this IP address"),
        "{}",
        p.detail
    );
    assert!(
        p.detail.contains("in the last 3h0m0s, retry after "),
        "{}",
        p.detail
    );
    assert!(p
        .detail
        .ends_with("https://ca.example/docs/rate-limits#new-registrations-per-ip"));

    // The account was not created after all: the refund makes room again.
    l.refund(&second).await.unwrap();
    let again = l.check_new_account(ip).await.unwrap();
    assert!(l.check_new_account(ip).await.is_err());
    drop(again);

    // After Retry-After seconds exactly one more is allowed.
    clock.advance(wait as i64).unwrap();
    l.check_new_account(ip).await.unwrap();
    assert!(l.check_new_account(ip).await.is_err());
    // Another address is another bucket.
    l.check_new_account("192.0.2.11".parse().unwrap())
        .await
        .unwrap();

    // IPv6: per address, and per /48 across addresses.
    for a in ["2001:db8:7:1::1", "2001:db8:7:2::1", "2001:db8:7:3::1"] {
        l.check_new_account(a.parse().unwrap()).await.unwrap();
    }
    let p = denial(
        l.check_new_account("2001:db8:7:4::1".parse().unwrap())
            .await,
    );
    let m = p.rate_limit.unwrap();
    assert_eq!(
        (m.limit.as_str(), m.key.as_str()),
        ("newRegistrationsPerIpv6Range", "2001:db8:7::/48")
    );
    l.check_new_account("2001:db8:8::1".parse().unwrap())
        .await
        .unwrap();
    let counts = l.refusal_counts();
    assert!(
        counts.contains(&(LimitName::NewRegistrationsPerIp, 3)),
        "{counts:?}"
    );
    assert!(
        counts.contains(&(LimitName::NewRegistrationsPerIpv6Range, 1)),
        "{counts:?}"
    );
}

async fn limiter_new_order_renewals_and_overrides(f: &Fixture) {
    let s = f.open(2).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("overrides.toml");
    let overrides = Overrides::load(&path).unwrap();
    let mut cfg = LimitsConfig::with_profile(Profile::Unlimited);
    cfg.windows.new_orders_per_account = window(3, 3, 3 * 3600);
    cfg.windows.certificates_per_domain = window(1, 1, 7 * 86_400);
    cfg.windows.certificates_per_fqdn_set = window(2, 2, 7 * 86_400);
    let (l, _clock) = limiter(&s, &cfg, overrides.clone());
    let acct = AccountId(7);
    let www = names(&["www.example.co.uk"]);
    let domain = names(&["example.co.uk"]);

    // First order for example.co.uk: it reserves the domain's token.
    let order = new_order(&l, acct, &www, &domain, false).await.unwrap();
    let info = order.info.clone().unwrap();
    assert_eq!(info.limit, LimitName::CertificatesPerDomain);
    assert_eq!(
        info.policy_header(),
        "\"certificatesPerDomain\";q=1;w=604800"
    );

    // Another name under the same registered domain: refused, per domain.
    let api = names(&["api.example.co.uk", "*.API.example.co.uk"]);
    let p = denial(new_order(&l, acct, &api, &domain, false).await);
    let m = p.rate_limit.clone().unwrap();
    assert_eq!(
        (m.limit.as_str(), m.key.as_str()),
        ("certificatesPerDomain", "example.co.uk")
    );
    assert!(
        p.detail
            .contains("already issued for \"example.co.uk\" in the last 168h0m0s"),
        "{}",
        p.detail
    );
    // The refused order spent nothing: orders per account still has one left.

    // A renewal of the same set skips per-domain and orders-per-account...
    new_order(&l, acct, &www, &domain, true).await.unwrap();
    // ...but not the exact set (2 issued: www twice).
    let p = denial(new_order(&l, acct, &www, &domain, true).await);
    let m = p.rate_limit.unwrap();
    assert_eq!(
        (m.limit.as_str(), m.key.as_str()),
        ("certificatesPerFqdnSet", "www.example.co.uk")
    );

    // An override applies without a restart: example.org gets 10 where the
    // default is 1 (the override file is re-read, not the server restarted).
    // (Other accounts, so orders per account stay out of it.)
    let org = names(&["example.org"]);
    new_order(&l, AccountId(100), &names(&["a.example.org"]), &org, false)
        .await
        .unwrap();
    assert!(
        new_order(&l, AccountId(101), &names(&["b.example.org"]), &org, false)
            .await
            .is_err()
    );
    for domain in ["example.org", "example.co.uk"] {
        Overrides::set_in_file(
            &path,
            LimitName::CertificatesPerDomain,
            domain,
            10,
            10,
            7 * 86_400,
            "",
        )
        .unwrap();
    }
    assert!(overrides.reload_if_changed());
    // A TAT earned under the old numbers still counts (an exhausted bucket
    // refills faster, but is not full): the admin CLI resets the bucket.
    assert!(
        new_order(&l, AccountId(102), &names(&["b.example.org"]), &org, false)
            .await
            .is_err()
    );
    l.reset_bucket(LimitName::CertificatesPerDomain, "Example.ORG")
        .await
        .unwrap();
    for (i, n) in ["b.example.org", "c.example.org", "d.example.org"]
        .iter()
        .enumerate()
    {
        new_order(&l, AccountId(103 + i as i64), &names(&[n]), &org, false)
            .await
            .unwrap();
    }
    l.reset_bucket(LimitName::CertificatesPerDomain, "example.co.uk")
        .await
        .unwrap();
    let second = new_order(&l, acct, &api, &domain, false).await.unwrap();

    // Orders per account: 1 (first) + 1 (this one) spent; renewals spent none.
    let third = new_order(
        &l,
        acct,
        &names(&["c.example.net"]),
        &names(&["example.net"]),
        false,
    )
    .await
    .unwrap();
    let p = denial(
        new_order(
            &l,
            acct,
            &names(&["d.example.info"]),
            &names(&["example.info"]),
            false,
        )
        .await,
    );
    assert_eq!(p.rate_limit.unwrap().limit, "newOrdersPerAccount");
    // Creating `third` failed: refunded (its order and its domain
    // reservation), so one more order fits, even for the same domain.
    l.refund(&third).await.unwrap();
    new_order(
        &l,
        acct,
        &names(&["d.example.net"]),
        &names(&["example.net"]),
        false,
    )
    .await
    .unwrap();
    drop(second);
}

async fn limiter_failures_pause_and_unpause(f: &Fixture) {
    let s = f.open(2).await;
    let mut cfg = LimitsConfig::with_profile(Profile::Unlimited);
    cfg.windows.failed_authorizations_per_identifier = window(3, 3, 3600);
    cfg.windows.consecutive_authorization_failures = window(2, 1, 86_400);
    let (l, _clock) = limiter(&s, &cfg, Overrides::empty());
    let acct = AccountId(9);
    let x = names(&["x.example.com"]);
    let d = names(&["example.com"]);

    // A success between failures resets the consecutive count.
    assert!(!l.spend_failed_authz(acct, "x.example.com").await.unwrap());
    l.reset_pausing(acct, "x.example.com").await.unwrap();
    assert!(!l.spend_failed_authz(acct, "x.example.com").await.unwrap());
    // Two consecutive failures empty the bucket; the next one pauses.
    assert!(!l.spend_failed_authz(acct, "X.example.com").await.unwrap());
    assert!(l.spend_failed_authz(acct, "x.example.com").await.unwrap());
    assert!(
        !l.spend_failed_authz(acct, "x.example.com").await.unwrap(),
        "already paused"
    );

    let p = denial(new_order(&l, acct, &names(&["*.x.example.com"]), &d, false).await);
    assert_eq!(p.status, 429);
    assert_eq!(p.retry_after, None, "waiting does not help");
    assert!(
        p.detail.contains("cairn admin unpause --account 9"),
        "{}",
        p.detail
    );
    assert_eq!(
        p.rate_limit.unwrap().limit,
        "consecutiveAuthorizationFailures"
    );
    // Other identifiers and other accounts are not paused.
    new_order(&l, acct, &names(&["y.example.com"]), &d, false)
        .await
        .unwrap();
    new_order(&l, AccountId(10), &x, &d, false).await.unwrap();
    assert_eq!(l.order_facts(acct, &x, 0).await.unwrap().paused, x);

    // Unpaused: the failed-authorization window (3 per hour, all spent) is
    // what refuses now, with a Retry-After.
    assert_eq!(l.unpause(acct, None).await.unwrap(), x);
    let p = denial(new_order(&l, acct, &x, &d, false).await);
    let m = p.rate_limit.clone().unwrap();
    assert_eq!(
        (m.limit.as_str(), m.key.as_str()),
        ("failedAuthorizationsPerIdentifier", "9:x.example.com")
    );
    assert!(p.retry_after.is_some());
    // The consecutive bucket starts afresh after an unpause.
    assert!(!l.spend_failed_authz(acct, "x.example.com").await.unwrap());
    assert!(!l.spend_failed_authz(acct, "x.example.com").await.unwrap());
    assert!(l.spend_failed_authz(acct, "x.example.com").await.unwrap());
}

/// `Limiter::check_new_order` with the facts read as the RA reads them,
/// but the renewal decided by the test.
async fn new_order(
    l: &Limiter,
    account: AccountId,
    names: &[String],
    domains: &[String],
    renewal: bool,
) -> Result<cairn::ratelimit::Spent, LimitError> {
    let mut facts = l.order_facts(account, names, 0).await?;
    facts.renewal = renewal;
    l.check_new_order(account, names, domains, &facts, 0, 300)
        .await
}

/// The identifiers among `idents` the account is paused for.
async fn paused(s: &dyn LimitStore, account: AccountId, idents: &[String]) -> Vec<String> {
    s.order_limit_facts(account, idents, "", 0, 0)
        .await
        .unwrap()
        .paused
}
