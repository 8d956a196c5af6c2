//! Issuance-window limits when several instances of one CA race for the
//! last tokens of a bucket (LIMITS.md §2, "Correct under concurrency"):
//! hundreds of new-orders for names under one registered domain, released
//! at once across the instances, and exactly `burst` of them are admitted.
//!
//! - Three instances on one PostgreSQL database (only on the PostgreSQL
//!   backend, `CAIRN_TEST_BACKEND=postgres`, which CI's second pass runs):
//!   200 new-orders against certificatesPerDomain = 50, five rounds; and the
//!   same with every admitted order carried through to a certificate.
//! - Two instances on one database, on either backend (on the default one
//!   they share a SQLite file, whose lock serialises the writers; database
//!   busy must never reach a client as a 500): 100 against 25.
//!
//! Every refused request must be `429 rateLimited` naming the limit and the
//! registered domain, with a `Retry-After` of at most one token's refill time;
//! every refusal is counted once in the instances' `/metrics`; and no
//! instance may have let a request through because its limit store failed.
//!
//! Each new-order round uses a registered domain of its own
//! (`n<i>.race<r>.com`), so that the sweeper returning the previous round's
//! reservations (its orders expire) can never hand tokens back in the middle
//! of a round. The issuance variant does the opposite: its admitted orders all
//! end in a certificate (nothing is returned), so its second round reuses the
//! registered domain after every instance's clock moved 7 days, and must
//! again admit exactly the limit.

mod common;

use common::*;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Barrier;

/// One week, the period of certificatesPerDomain.
const WEEK_SECS: u64 = 604_800;

/// Accounts the racing requests are spread over (not a multiple of 2 or 3, so
/// each account is used through every instance).
const ACCOUNTS: usize = 31;

/// `unlimited` with only certificatesPerDomain switched on, at `limit` per
/// week with a burst of `limit`; every challenge succeeds.
fn opts(limit: u64) -> ServerOpts {
    let limit = limit.to_string();
    ServerOpts::always_valid()
        .shared_nonces()
        .with_env("CAIRN_LIMITS_PROFILE", "unlimited")
        .with_env("CAIRN_LIMITS_WINDOWS_CERTIFICATES_PER_DOMAIN_BURST", &limit)
        .with_env("CAIRN_LIMITS_WINDOWS_CERTIFICATES_PER_DOMAIN_COUNT", &limit)
        .with_env(
            "CAIRN_LIMITS_WINDOWS_CERTIFICATES_PER_DOMAIN_PERIOD_SECS",
            &WEEK_SECS.to_string(),
        )
}

/// `n` instances of one CA: the first and its peers (same data directory,
/// same database).
fn cluster(n: usize, limit: u64) -> Vec<Server> {
    let first = Server::start(opts(limit));
    let mut servers: Vec<Server> = (1..n).map(|_| first.start_peer()).collect();
    servers.insert(0, first);
    servers
}

/// The racing clients: `requests` of them, each bound to one instance
/// (round-robin) and signing for one of `ACCOUNTS` accounts, which were
/// registered round-robin over the instances beforehand. Every client has
/// its own HTTP connection (made while fetching the directory), so the
/// race is not serialised behind a connection pool.
async fn racers(servers: &[Server], requests: usize) -> Vec<Arc<AcmeClient>> {
    let mut accounts = Vec::with_capacity(ACCOUNTS);
    for a in 0..ACCOUNTS {
        let c = AcmeClient::new(&servers[a % servers.len()], KeyKind::Es256).await;
        c.register().await;
        accounts.push(c);
    }
    let mut racers = Vec::with_capacity(requests);
    for i in 0..requests {
        let c = accounts[i % ACCOUNTS]
            .via(&servers[i % servers.len()])
            .await;
        racers.push(Arc::new(c));
    }
    racers
}

/// What one racing request came to.
struct Outcome {
    name: String,
    /// The new-order response.
    response: AcmeResponse,
    /// The certificate URL, when the order was carried through to one.
    certificate: Option<String>,
}

/// One round: every racer signs a new-order for `name(i)` (nonce fetched
/// beforehand), all wait at a barrier, and all send at once. With `issue`,
/// an admitted order is then authorized, finalized and waited for until
/// valid. Returns the outcomes in racer order.
async fn race(
    racers: &[Arc<AcmeClient>],
    name: impl Fn(usize) -> String,
    issue: bool,
) -> Vec<Outcome> {
    let barrier = Arc::new(Barrier::new(racers.len()));
    let mut tasks = Vec::with_capacity(racers.len());
    for (i, c) in racers.iter().enumerate() {
        let c = c.clone();
        let barrier = barrier.clone();
        let name = name(i);
        tasks.push(tokio::spawn(async move {
            let url = c.endpoint("newOrder");
            let header = c.header_kid(&url).await;
            let payload = serde_json::to_vec(&AcmeClient::order_payload(&[name.as_str()]))
                .expect("serialize the order");
            let signed = jws(&header, &payload, &c.key());
            barrier.wait().await;
            let response = c.post_jws(&url, &signed).await;
            let mut certificate = None;
            if issue && response.status == 201 {
                let order_url = response
                    .location()
                    .unwrap_or_else(|| panic!("newOrder without Location: {response}"));
                let ready = c.authorize_always_valid(&order_url, &response.json()).await;
                let (csr, _) = make_csr(&[name.as_str()], CertKey::P256);
                let r = c.finalize(&ready, &csr).await;
                assert_eq!(r.status, 200, "finalize {name}: {r}");
                let valid = c
                    .wait_status(&order_url, &["valid"], Duration::from_secs(30))
                    .await;
                certificate = Some(
                    valid["certificate"]
                        .as_str()
                        .unwrap_or_else(|| panic!("valid order without certificate: {valid}"))
                        .to_string(),
                );
            }
            Outcome {
                name,
                response,
                certificate,
            }
        }));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    for t in tasks {
        outcomes.push(t.await.expect("racing request"));
    }
    outcomes
}

/// Exactly `limit` outcomes are 201 and every other one is a well-formed
/// certificatesPerDomain refusal for `domain`, with a Retry-After of at
/// most one token's refill time (`period / limit`, rounded up, +1).
fn check_round(outcomes: &[Outcome], limit: usize, domain: &str) {
    let refill = WEEK_SECS.div_ceil(limit as u64) + 1;
    let admitted = outcomes.iter().filter(|o| o.response.status == 201).count();
    for o in outcomes.iter().filter(|o| o.response.status != 201) {
        let r = &o.response;
        let p = assert_problem(r, 429, "rateLimited");
        let retry_after = r
            .retry_after()
            .unwrap_or_else(|| panic!("{}: 429 without Retry-After:\n{r}", o.name));
        let secs: u64 = retry_after.trim().parse().unwrap_or_else(|_| {
            panic!(
                "{}: Retry-After {retry_after:?} is not whole seconds:\n{r}",
                o.name
            )
        });
        assert!(
            (1..=refill).contains(&secs),
            "{}: Retry-After {secs} s is not within one token's refill (1..={refill} s):\n{r}",
            o.name
        );
        assert_eq!(p["limit"], "certificatesPerDomain", "{}:\n{r}", o.name);
        assert_eq!(p["key"], domain, "{}:\n{r}", o.name);
        assert_eq!(
            p["retryAfter"].as_u64(),
            Some(secs),
            "{}: retryAfter member differs from the Retry-After header:\n{r}",
            o.name
        );
        let detail = p["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(domain),
            "{}: the detail does not name the registered domain:\n{r}",
            o.name
        );
    }
    assert_eq!(
        admitted,
        limit,
        "{} of {} racing new-orders under {domain} were admitted, the limit is {limit}",
        admitted,
        outcomes.len()
    );
}

/// Every decision of the round was the limiter's: no instance let a request
/// through because its limit store failed (the RA lets requests through on
/// an outage, which under a race would admit more than the limit), and no
/// database-busy error surfaced.
fn assert_limiter_decided(servers: &[Server]) {
    for (i, s) in servers.iter().enumerate() {
        let log = s.log();
        for bad in [
            "rate limits unavailable",
            "database is locked",
            "database is busy",
        ] {
            assert!(
                !log.contains(bad),
                "instance {i} logged {bad:?}:\n{}",
                s.log_tail(6000)
            );
        }
    }
}

/// certificatesPerDomain refusals counted by every instance's `/metrics`,
/// summed: each refusal is counted once, by the instance that refused it.
async fn refusals_counted(servers: &[Server]) -> u64 {
    let http = reqwest::Client::new();
    let mut total = 0;
    for s in servers {
        let text = http
            .get(format!("{}/metrics", s.mgmt_url))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body");
        total += text
            .lines()
            .find_map(|l| {
                l.strip_prefix("cairn_rate_limit_refusals_total{limit=\"certificatesPerDomain\"}")
            })
            .map(|n| {
                n.trim()
                    .parse::<u64>()
                    .unwrap_or_else(|e| panic!("metric value {n:?}: {e}"))
            })
            .unwrap_or(0);
    }
    total
}

/// Moves every instance's clock (each has its own) forward by `secs`, and
/// drops the racers' saved nonces, which are then too old.
async fn advance_clocks(servers: &[Server], racers: &[Arc<AcmeClient>], secs: u64) {
    let http = reqwest::Client::new();
    for s in servers {
        let r = http
            .post(format!("{}/clock/advance", s.mgmt_url))
            .header("content-type", "application/json")
            .body(json!({ "seconds": secs }).to_string())
            .send()
            .await
            .expect("POST /clock/advance");
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        assert!(status.is_success(), "clock/advance -> {status}: {body}");
    }
    for c in racers {
        c.forget_nonce();
    }
}

/// `rounds` rounds of `requests` new-orders racing over `instances`
/// instances, each round under a registered domain of its own.
async fn new_orders_race(instances: usize, requests: usize, limit: usize, rounds: usize) {
    let started = Instant::now();
    let servers = cluster(instances, limit as u64);
    let racers = racers(&servers, requests).await;
    eprintln!(
        "{instances} instances, {ACCOUNTS} accounts, {requests} clients ready after {:?}",
        started.elapsed()
    );
    for round in 0..rounds {
        let domain = format!("race{round}.com");
        let t = Instant::now();
        let outcomes = race(&racers, |i| format!("n{i}.{domain}"), false).await;
        eprintln!(
            "round {round}: {requests} new-orders took {:?}",
            t.elapsed()
        );
        check_round(&outcomes, limit, &domain);
        assert_limiter_decided(&servers);
        assert_eq!(
            refusals_counted(&servers).await,
            ((requests - limit) * (round + 1)) as u64,
            "refusals in /metrics after round {round}"
        );
    }
    eprintln!("whole test took {:?}", started.elapsed());
}

/// `requests` full issuances racing over `instances` instances, twice
/// under one registered domain with every clock 7 days on in between:
/// exactly `limit` certificates each time.
async fn issuance_race(instances: usize, requests: usize, limit: usize) {
    let started = Instant::now();
    let servers = cluster(instances, limit as u64);
    let racers = racers(&servers, requests).await;
    let domain = "example.com";
    for round in 0..2 {
        if round > 0 {
            advance_clocks(&servers, &racers, WEEK_SECS).await;
        }
        let t = Instant::now();
        // New names each round: a name already issued would be a renewal,
        // which certificatesPerDomain does not count.
        let outcomes = race(&racers, |i| format!("r{round}-n{i}.race.{domain}"), true).await;
        eprintln!("round {round}: {requests} issuances took {:?}", t.elapsed());
        check_round(&outcomes, limit, domain);
        assert_limiter_decided(&servers);
        assert_eq!(
            refusals_counted(&servers).await,
            ((requests - limit) * (round + 1)) as u64,
            "refusals in /metrics after round {round}"
        );
        let mut certs: Vec<&str> = outcomes
            .iter()
            .filter_map(|o| o.certificate.as_deref())
            .map(|u| &u[u.find("/acme/").unwrap_or(0)..])
            .collect();
        certs.sort_unstable();
        certs.dedup();
        assert_eq!(certs.len(), limit, "distinct certificates this round");
        let issued: usize = servers
            .iter()
            .map(|s| s.log().matches("certificate issued").count())
            .sum();
        assert_eq!(
            issued,
            limit * (round + 1),
            "certificates issued (server logs) after round {round}"
        );
    }
    eprintln!("whole test took {:?}", started.elapsed());
}

/// The three-instance tests need a database server the instances share.
fn on_postgres(test: &str) -> bool {
    if postgres_backend() {
        return true;
    }
    eprintln!(
        "{test}: skipped: three instances racing need the PostgreSQL backend \
         (CAIRN_TEST_BACKEND=postgres with CAIRN_TEST_DATABASE_URL; CI's second pass runs it)"
    );
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_postgres_instances_admit_exactly_the_limit_of_new_orders() {
    if !on_postgres("three_postgres_instances_admit_exactly_the_limit_of_new_orders") {
        return;
    }
    new_orders_race(3, 200, 50, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_postgres_instances_issue_exactly_the_limit_of_certificates() {
    if !on_postgres("three_postgres_instances_issue_exactly_the_limit_of_certificates") {
        return;
    }
    issuance_race(3, 200, 50).await;
}

/// On the default backend the two instances share one SQLite file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_one_database_admit_exactly_the_limit_of_new_orders() {
    new_orders_race(2, 100, 25, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_one_database_issue_exactly_the_limit_of_certificates() {
    issuance_race(2, 100, 25).await;
}
