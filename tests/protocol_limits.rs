//! Issue 6's issuance-window limits (LIMITS.md §2) end to end, through real
//! HTTP against the real server, each at its boundary: the last allowed
//! request succeeds; the next is refused with 429 `rateLimited`, a
//! `Retry-After` equal (±1 s) to the refill time computed from the configured
//! numbers and the time the test took, `Replay-Nonce`, `Link` rel=index and
//! rel=help, a detail naming the limit (its section of the docs page), the key
//! and the retry time, and the members `limit`, `key`, `retryAfter`; after
//! moving the server's clock by exactly `Retry-After` seconds, exactly one more
//! succeeds and the next is refused again.
//!
//! Then the fixed limits (100 identifiers, pending authorizations), registered
//! domains by the Public Suffix List, the renewal and ARI exemptions, refunds
//! (a refused request spends nothing, a failed or deactivated authorization
//! gives the certificate reservation back, revocation gives nothing back),
//! the paused-account flow with `cairn admin unpause`, and the `RateLimit`
//! headers of allowed requests.
//!
//! Every test runs its own server with `CAIRN_LIMITS_PROFILE=unlimited` plus
//! the numbers of the one limit it proves (small bursts, refill intervals of
//! minutes or more so the time a test takes barely moves a bucket), and runs
//! on either backend (`CAIRN_TEST_BACKEND=postgres`).

mod common;

use cairn::ratelimit::LimitName;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The refill interval (seconds per token) most tests configure: long
/// enough that the seconds a test takes are a small, measured correction.
const EI: u64 = 600;
const WEEK: u64 = 7 * 86_400;

/// `opts` with `CAIRN_LIMITS_PROFILE=unlimited` and one window limit (its
/// snake_case config name) switched on with `burst`, `count`, `period`.
fn with_limit(opts: ServerOpts, limit: &str, burst: u64, count: u64, period: u64) -> ServerOpts {
    opts.with_limit(limit, burst, count, period)
}

/// One window limit whose burst equals its count, refilling one token every
/// `ei` seconds.
fn with_bucket(opts: ServerOpts, limit: &str, burst: u64, ei: u64) -> ServerOpts {
    with_limit(opts, limit, burst, burst, burst * ei)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// The `Retry-After` a refusal may announce when the bucket's first token
/// (of the tokens that matter) was spent by a request sent at `since`: one
/// refill interval minus the time elapsed between that spend and the
/// refusal (at least 0, at most `since.elapsed()`), rounded up, ±1 s.
fn wait_bounds(ei: u64, since: Instant) -> (u64, u64) {
    let elapsed = since.elapsed().as_secs() + 1;
    (ei.saturating_sub(elapsed + 1), ei + 1)
}

/// What a refusal's `key` must be.
enum Key<'a> {
    Exact(&'a str),
    /// Contains every one of these (e.g. the names of an exact set, the
    /// identifier of an (account, identifier) key).
    Contains(&'a [&'a str]),
}

/// The time in a detail's `retry after 2026-11-22 14:03:00 UTC`, Unix seconds.
fn detail_retry_time(detail: &str) -> i64 {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let i = detail
        .find("retry after ")
        .unwrap_or_else(|| panic!("detail without `retry after <time>`: {detail}"))
        + "retry after ".len();
    let s = detail.get(i..i + 23).unwrap_or_default();
    assert!(s.ends_with(" UTC"), "retry time not in UTC: {detail}");
    time::PrimitiveDateTime::parse(&s[..19], &fmt)
        .unwrap_or_else(|e| panic!("retry time {s:?}: {e}: {detail}"))
        .assume_utc()
        .unix_timestamp()
}

/// Asserts a refusal by `limit` (camelCase) of LIMITS.md §3 and the contract;
/// returns its `Retry-After`, which must lie within `wait`.
async fn assert_refused(
    server: &Server,
    r: &AcmeResponse,
    limit: &str,
    key: Key<'_>,
    wait: (u64, u64),
) -> u64 {
    let p = assert_problem(r, 429, "rateLimited");
    assert_index_link(r, &server.dir_url);
    assert!(
        r.links("help")
            .iter()
            .any(|u| u.contains("/docs/rate-limits")),
        "no Link rel=\"help\" to the rate-limit docs:\n{r}"
    );
    let ra: u64 = r
        .retry_after()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("429 without a numeric Retry-After:\n{r}"));
    assert!(
        wait.0 <= ra && ra <= wait.1,
        "Retry-After {ra} is not the refill time (expected {}..={} s):\n{r}",
        wait.0,
        wait.1
    );
    assert_eq!(p["limit"], limit, "extension member `limit`:\n{r}");
    assert_eq!(
        p["retryAfter"].as_u64(),
        Some(ra),
        "extension member `retryAfter` must equal Retry-After:\n{r}"
    );
    let k = p["key"]
        .as_str()
        .unwrap_or_else(|| panic!("extension member `key` missing:\n{r}"));
    let detail = p["detail"].as_str().unwrap_or_default();
    match key {
        Key::Exact(want) => {
            assert_eq!(k, want, "extension member `key`:\n{r}");
            assert!(detail.contains(want), "detail does not name {want:?}:\n{r}");
        }
        Key::Contains(parts) => {
            for part in parts {
                assert!(k.contains(part), "`key` does not contain {part:?}:\n{r}");
                assert!(detail.contains(part), "detail does not name {part:?}:\n{r}");
            }
        }
    }
    let anchor = LimitName::parse(limit)
        .unwrap_or_else(|| panic!("{limit} is not a limit name"))
        .doc_anchor();
    assert!(
        detail.contains(&format!("/docs/rate-limits#{anchor}")),
        "detail does not link the limit's section #{anchor}:\n{r}"
    );
    // The retry time is the server's now plus Retry-After.
    let at = detail_retry_time(detail);
    let server_now = unix_now() + clock_offset(server).await;
    assert!(
        (at - (server_now + ra as i64)).abs() <= 2,
        "retry time {at} in the detail is not now ({server_now}) + Retry-After ({ra}):\n{r}"
    );
    ra
}

/// A registered client.
async fn account(server: &Server) -> (AcmeClient, u64) {
    let c = AcmeClient::new(server, KeyKind::Es256).await;
    let url = c.register().await;
    let id = url
        .rsplit('/')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("account URL {url} ends in no id"));
    (c, id)
}

/// Issues a certificate for `names` on an `always_valid` server; returns its DER.
async fn issue(c: &AcmeClient, names: &[&str]) -> Vec<u8> {
    let (csr, _) = make_csr(names, CertKey::P256);
    let (_, _, pem) = c.issue_always_valid(names, &csr).await;
    pem_to_ders(&pem).remove(0)
}

async fn order(c: &AcmeClient, names: &[&str]) -> AcmeResponse {
    c.new_order_raw(AcmeClient::order_payload(names)).await
}

/// After a clock advance the held nonce is too old: every client fetches a new one.
async fn advance(server: &Server, secs: u64, clients: &[&AcmeClient]) -> Instant {
    advance_clock(server, secs).await;
    for c in clients {
        c.forget_nonce();
    }
    Instant::now()
}

// ---------------------------------------------------------------------------------------
// 1. Every limit of LIMITS.md §2 at its boundary
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn new_registrations_per_ip_at_the_boundary() {
    let server = Server::start(with_bucket(
        ServerOpts::always_valid(),
        "new_registrations_per_ip",
        2,
        EI,
    ));
    let since = Instant::now();
    let (a, _) = account(&server).await;
    // The key's existing account, and onlyReturnExisting, create nothing and spend nothing.
    let r = a.new_account(&[], true).await;
    assert_eq!(r.status, 200, "{r}");
    let r = a
        .new_account_payload(json!({"onlyReturnExisting": true}))
        .await;
    assert_eq!(r.status, 200, "{r}");
    let stranger = AcmeClient::new(&server, KeyKind::Es256).await;
    let r = stranger
        .new_account_payload(json!({"onlyReturnExisting": true}))
        .await;
    assert_problem(&r, 400, "accountDoesNotExist");
    // The second (last) token.
    account(&server).await;
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    let r = c.new_account(&[], true).await;
    let ra = assert_refused(
        &server,
        &r,
        "newRegistrationsPerIp",
        Key::Exact("127.0.0.1"),
        wait_bounds(EI, since),
    )
    .await;
    let since = advance(&server, ra, &[&c]).await;
    let r = c.new_account(&[], true).await;
    assert_eq!(r.status, 201, "one more after Retry-After: {r}");
    let d = AcmeClient::new(&server, KeyKind::Es256).await;
    let r = d.new_account(&[], true).await;
    assert_refused(
        &server,
        &r,
        "newRegistrationsPerIp",
        Key::Exact("127.0.0.1"),
        wait_bounds(EI, since),
    )
    .await;
}

#[tokio::test]
async fn new_registrations_per_ipv6_range_at_the_boundary() {
    // The harness can listen on [::1]: the client is then ::1, in ::/48.
    let server = Server::start_ipv6(with_bucket(
        ServerOpts::always_valid(),
        "new_registrations_per_ipv6_range",
        2,
        EI,
    ));
    assert!(server.dir_url.starts_with("https://[::1]:"));
    let since = Instant::now();
    account(&server).await;
    account(&server).await;
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    let r = c.new_account(&[], true).await;
    let ra = assert_refused(
        &server,
        &r,
        "newRegistrationsPerIpv6Range",
        Key::Exact("::/48"),
        wait_bounds(EI, since),
    )
    .await;
    let since = advance(&server, ra, &[&c]).await;
    let r = c.new_account(&[], true).await;
    assert_eq!(r.status, 201, "one more after Retry-After: {r}");
    let d = AcmeClient::new(&server, KeyKind::Es256).await;
    let r = d.new_account(&[], true).await;
    assert_refused(
        &server,
        &r,
        "newRegistrationsPerIpv6Range",
        Key::Exact("::/48"),
        wait_bounds(EI, since),
    )
    .await;
}

#[tokio::test]
async fn new_orders_per_account_at_the_boundary() {
    let server = Server::start(with_bucket(
        ServerOpts::always_valid(),
        "new_orders_per_account",
        2,
        EI,
    ));
    let (c, id) = account(&server).await;
    let id = id.to_string();
    let since = Instant::now();
    c.new_order(&["one.example.com"]).await;
    c.new_order(&["two.example.com"]).await;
    let r = order(&c, &["three.example.com"]).await;
    let ra = assert_refused(
        &server,
        &r,
        "newOrdersPerAccount",
        Key::Exact(&id),
        wait_bounds(EI, since),
    )
    .await;
    // Another account has its own bucket.
    let (other, _) = account(&server).await;
    other.new_order(&["three.example.com"]).await;

    let since = advance(&server, ra, &[&c, &other]).await;
    c.new_order(&["three.example.com"]).await;
    let r = order(&c, &["four.example.com"]).await;
    assert_refused(
        &server,
        &r,
        "newOrdersPerAccount",
        Key::Exact(&id),
        wait_bounds(EI, since),
    )
    .await;

    // Counted per limit on the management listener.
    let (status, metrics) = mgmt_get(&server, "/metrics").await;
    assert_eq!(status, 200, "{metrics}");
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("cairn_rate_limit_refusals_total")
                && l.contains("limit=\"newOrdersPerAccount\"")
        })
        .unwrap_or_else(|| panic!("no refusal counter for newOrdersPerAccount:\n{metrics}"));
    let n: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("counter line {line:?}"));
    assert_eq!(n, 2.0, "{line}");
}

#[tokio::test]
async fn certificates_per_domain_at_the_boundary() {
    let server = Server::start(with_bucket(
        ServerOpts::always_valid(),
        "certificates_per_domain",
        2,
        EI,
    ));
    let (c, _) = account(&server).await;
    let since = Instant::now();
    issue(&c, &["a.example.com"]).await;
    issue(&c, &["b.example.com", "www.b.example.com"]).await;
    let r = order(&c, &["c.example.com"]).await;
    let ra = assert_refused(
        &server,
        &r,
        "certificatesPerDomain",
        Key::Exact("example.com"),
        wait_bounds(EI, since),
    )
    .await;
    let since = advance(&server, ra, &[&c]).await;
    issue(&c, &["c.example.com"]).await;
    let r = order(&c, &["d.example.com"]).await;
    assert_refused(
        &server,
        &r,
        "certificatesPerDomain",
        Key::Exact("example.com"),
        wait_bounds(EI, since),
    )
    .await;
}

#[tokio::test]
async fn certificates_per_fqdn_set_at_the_boundary() {
    let server = Server::start(with_bucket(
        ServerOpts::always_valid(),
        "certificates_per_fqdn_set",
        2,
        EI,
    ));
    let (c, _) = account(&server).await;
    let names = ["a.set.example.org", "b.set.example.org"];
    let since = Instant::now();
    issue(&c, &names).await;
    issue(&c, &["b.set.example.org", "a.set.example.org"]).await;
    // Order and case do not make another set.
    let r = order(&c, &["B.Set.Example.ORG", "a.set.example.org"]).await;
    let ra = assert_refused(
        &server,
        &r,
        "certificatesPerFqdnSet",
        Key::Contains(&names),
        wait_bounds(EI, since),
    )
    .await;
    // A different set is not counted with it.
    c.new_order(&["a.set.example.org"]).await;

    let since = advance(&server, ra, &[&c]).await;
    issue(&c, &names).await;
    let r = order(&c, &names).await;
    assert_refused(
        &server,
        &r,
        "certificatesPerFqdnSet",
        Key::Contains(&names),
        wait_bounds(EI, since),
    )
    .await;
}

/// Answers the http-01 challenge of the order's (single) authorization on a
/// server whose http-01 port is closed, and waits for it to be invalid.
async fn fail_authz(c: &AcmeClient, order: &Value) {
    let authz_url = AcmeClient::authz_urls(order).remove(0);
    let authz = c.post_as_get(&authz_url).await.ok().json();
    assert_eq!(authz["status"], "pending", "{authz}");
    let ch = AcmeClient::challenge(&authz, "http-01")
        .unwrap_or_else(|| panic!("no http-01 challenge: {authz}"));
    let r = c
        .post(ch["url"].as_str().expect("challenge url"), Some(json!({})))
        .await;
    assert_eq!(r.status, 200, "challenge response: {r}");
    c.wait_status(&authz_url, &["invalid"], Duration::from_secs(10))
        .await;
    settle().await;
}

/// The server records a validation's result (visible to the client) before it
/// counts the failure or resets the count; give that a moment so the next
/// step sees it.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Orders `name` and fails its validation.
async fn order_and_fail(c: &AcmeClient, name: &str) {
    let (_, order) = c.new_order(&[name]).await;
    fail_authz(c, &order).await;
}

/// A `test` server whose validations fail fast: TestDns answers every name
/// with 127.0.0.1, and nothing listens on the http-01 port (`connection`).
fn failing_server(dns: &TestDns, limit: &str, burst: u64, count: u64, period: u64) -> Server {
    Server::start(with_limit(
        ServerOpts::test().with_dns(dns.dns_addr),
        limit,
        burst,
        count,
        period,
    ))
}

#[tokio::test]
async fn failed_authorizations_per_identifier_at_the_boundary() {
    let dns = TestDns::start();
    let server = failing_server(&dns, "failed_authorizations_per_identifier", 2, 2, 2 * EI);
    let (c, _) = account(&server).await;
    let name = "fail.example.com";
    let since = Instant::now();
    order_and_fail(&c, name).await;
    order_and_fail(&c, name).await;
    let r = order(&c, &[name]).await;
    let ra = assert_refused(
        &server,
        &r,
        "failedAuthorizationsPerIdentifier",
        Key::Contains(&[name]),
        wait_bounds(EI, since),
    )
    .await;
    // Per identifier: another name of the same domain is not refused.
    c.new_order(&["other.example.com"]).await;

    // Orders only check this limit; a failed validation spends it. So after
    // Retry-After exactly one more failure is allowed.
    let since = advance(&server, ra, &[&c]).await;
    order_and_fail(&c, name).await;
    let r = order(&c, &[name]).await;
    assert_refused(
        &server,
        &r,
        "failedAuthorizationsPerIdentifier",
        Key::Contains(&[name]),
        wait_bounds(EI, since),
    )
    .await;
}

/// Orders `*.{base}` and validates it by dns-01 through TestDns.
async fn validate_wildcard(c: &AcmeClient, dns: &TestDns, base: &str) {
    let wildcard = format!("*.{base}");
    let (order_url, order) = c.new_order(&[&wildcard]).await;
    let authz_url = AcmeClient::authz_urls(&order).remove(0);
    let authz = c.post_as_get(&authz_url).await.ok().json();
    let ch = AcmeClient::challenge(&authz, "dns-01")
        .unwrap_or_else(|| panic!("no dns-01 challenge: {authz}"));
    let token = ch["token"].as_str().expect("token");
    dns.set_txt(
        &format!("_acme-challenge.{base}."),
        &c.dns01_txt_value(token),
    );
    let r = c
        .post(ch["url"].as_str().expect("challenge url"), Some(json!({})))
        .await;
    assert_eq!(r.status, 200, "{r}");
    c.wait_status(&authz_url, &["valid"], Duration::from_secs(10))
        .await;
    c.wait_status(&order_url, &["ready"], Duration::from_secs(10))
        .await;
    settle().await;
}

/// Consecutive failures: `burst` failures are allowed (an order after them
/// is accepted), the next failure pauses the (account, identifier) — the
/// spend that finds the bucket empty pauses, as Boulder's RA does — and a
/// success in between starts the count again. A paused identifier is refused
/// with no Retry-After and a detail saying how to unpause; `cairn admin
/// unpause` lifts it.
#[tokio::test]
async fn consecutive_authorization_failures_pause_until_unpaused() {
    let dns = TestDns::start();
    let server = failing_server(&dns, "consecutive_authorization_failures", 2, 1, 86_400);
    let (c, id) = account(&server).await;
    let base = "pause.example.com";
    order_and_fail(&c, base).await;
    order_and_fail(&c, base).await;
    // `burst` consecutive failures: not paused yet.
    let (_, o3) = c.new_order(&[base]).await;
    // A success (the wildcard's authorization is for the same identifier)
    // starts the count again.
    validate_wildcard(&c, &dns, base).await;
    fail_authz(&c, &o3).await;
    let r = order(&c, &[base]).await;
    assert_eq!(
        r.status, 201,
        "1 failure since a success: a successful validation must reset the count: {r}"
    );
    fail_authz(&c, &r.json()).await;
    let (_, o5) = c.new_order(&[base]).await;
    fail_authz(&c, &o5).await; // the third since the success: paused

    let r = order(&c, &[base]).await;
    let p = assert_problem(&r, 429, "rateLimited");
    assert_index_link(&r, &server.dir_url);
    assert_eq!(
        r.retry_after(),
        None,
        "waiting does not unpause: no Retry-After\n{r}"
    );
    assert_eq!(p["limit"], "consecutiveAuthorizationFailures", "{r}");
    let detail = p["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&format!("cairn admin unpause --account {id}")) && detail.contains(base),
        "the detail must name the identifier and say how to unpause:\n{r}"
    );
    // Paused for that identifier only; an order that includes it is refused.
    c.new_order(&["elsewhere.example.com"]).await;
    let r = order(&c, &["elsewhere.example.com", base]).await;
    assert_problem(&r, 429, "rateLimited");
    // Another account is not paused.
    let (other, _) = account(&server).await;
    other.new_order(&[base]).await;

    let run = admin(&server, &["unpause", "--account", &id.to_string()]).ok();
    let r = order(&c, &[base]).await;
    assert_eq!(r.status, 201, "unpaused: {r}\n{run}");
}

// ---------------------------------------------------------------------------------------
// 2. The fixed limits
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn at_most_100_identifiers_per_order() {
    let server = Server::start(ServerOpts::always_valid());
    let (c, _) = account(&server).await;
    let names: Vec<String> = (0..101).map(|i| format!("n{i}.hundred.example")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let r = order(&c, &refs).await;
    let p = assert_problem_any(&r, &[(400, "rejectedIdentifier"), (400, "malformed")]);
    assert_index_link(&r, &server.dir_url);
    let detail = p["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("101") && detail.contains("100"),
        "the detail must say how many and the maximum: {r}"
    );
    let r = order(&c, &refs[..100]).await;
    assert_eq!(r.status, 201, "100 identifiers are allowed: {r}");
}

#[tokio::test]
async fn pending_authorizations_per_account() {
    let server = Server::start(
        ServerOpts::always_valid()
            .with_env("CAIRN_LIMITS_PROFILE", "unlimited")
            .with_env("CAIRN_LIMITS_MAX_PENDING_AUTHZS", "3"),
    );
    let (c, _) = account(&server).await;
    let (_, o1) = c.new_order(&["p1.example.com", "p2.example.com"]).await;
    let r = order(&c, &["p3.example.com", "p4.example.com"]).await;
    let p = assert_problem(&r, 429, "rateLimited");
    assert_index_link(&r, &server.dir_url);
    assert!(
        p["detail"].as_str().unwrap_or_default().contains("pending"),
        "the detail must say pending authorizations are the problem: {r}"
    );
    c.new_order(&["p3.example.com"]).await;
    let r = order(&c, &["p4.example.com"]).await;
    assert_problem(&r, 429, "rateLimited");
    // Deactivating one makes room for one.
    let authz = AcmeClient::authz_urls(&o1).remove(0);
    let r = c.post(&authz, Some(json!({"status": "deactivated"}))).await;
    assert_eq!(r.status, 200, "{r}");
    c.new_order(&["p4.example.com"]).await;
    let r = order(&c, &["p5.example.com"]).await;
    assert_problem(&r, 429, "rateLimited");
    // Another account has its own count.
    let (other, _) = account(&server).await;
    other
        .new_order(&["p5.example.com", "p6.example.com", "p7.example.com"])
        .await;
}

/// The refusal says when room comes back by itself: when enough pending
/// authorizations expire for the order to fit (the test preset keeps a
/// pending authorization 3,600 s).
#[tokio::test]
async fn pending_authorizations_refusal_says_when_room_comes_back() {
    let server = Server::start(
        ServerOpts::always_valid()
            .with_env("CAIRN_LIMITS_PROFILE", "unlimited")
            .with_env("CAIRN_LIMITS_MAX_PENDING_AUTHZS", "3"),
    );
    let (c, _) = account(&server).await;
    // Two authorizations expiring at t0 + 3600, one at t0 + 1000 + 3600.
    c.new_order(&["q1.example.com", "q2.example.com"]).await;
    advance(&server, 1000, &[&c]).await;
    c.new_order(&["q3.example.com"]).await;

    let retry_after = |r: &AcmeResponse| -> u64 {
        let p = assert_problem(r, 429, "rateLimited");
        let ra: u64 = r
            .retry_after()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("a pending-authorization refusal without Retry-After:\n{r}"));
        assert_eq!(
            p["retryAfter"].as_u64(),
            Some(ra),
            "retryAfter member:\n{r}"
        );
        assert_eq!(p["limit"], "pendingAuthorizationsPerAccount", "{r}");
        assert!(
            p["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(&format!("in {ra} s")),
            "the detail must say when room comes back:\n{r}"
        );
        ra
    };
    // One more needs one to expire: the oldest, 2,600 s from now.
    let ra = retry_after(&order(&c, &["q4.example.com"]).await);
    assert!(
        (2595..=2600).contains(&ra),
        "Retry-After {ra}, expected 2600"
    );
    // Three more need all three to expire: the newest of them, 3,600 s.
    let ra = retry_after(&order(&c, &["q4.example.com", "q5.example.com", "q6.example.com"]).await);
    assert!(
        (3595..=3600).contains(&ra),
        "Retry-After {ra}, expected 3600"
    );
    // And it is true: once the oldest two expire, two fit without any action.
    advance(&server, 2600, &[&c]).await;
    c.new_order(&["q4.example.com", "q5.example.com"]).await;
}

// ---------------------------------------------------------------------------------------
// 3. Registered domains by the Public Suffix List
// ---------------------------------------------------------------------------------------

/// A `certificatesPerDomain` refusal (1 per week) for `key`.
async fn domain_refused(server: &Server, r: &AcmeResponse, key: &str) {
    assert_refused(
        server,
        r,
        "certificatesPerDomain",
        Key::Exact(key),
        (WEEK - 120, WEEK + 1),
    )
    .await;
}

#[tokio::test]
async fn registered_domains_follow_the_public_suffix_list() {
    let server = Server::start(with_limit(
        ServerOpts::always_valid(),
        "certificates_per_domain",
        1,
        1,
        WEEK,
    ));
    let (c, _) = account(&server).await;
    issue(&c, &["a.example.co.uk"]).await;
    let r = order(&c, &["b.c.example.co.uk"]).await;
    domain_refused(&server, &r, "example.co.uk").await;
    // A sibling under co.uk is another registered domain.
    c.new_order(&["www.other.co.uk"]).await;

    issue(&c, &["example.com"]).await;
    c.new_order(&["example.net"]).await;
    let r = order(&c, &["www.example.com"]).await;
    domain_refused(&server, &r, "example.com").await;

    // `.test` is not in the list: the label left of it is the registered domain.
    issue(&c, &["x.y.example.test"]).await;
    let r = order(&c, &["z.example.test"]).await;
    domain_refused(&server, &r, "example.test").await;
    c.new_order(&["another.test"]).await;
}

/// An order for IP addresses under `shortlived` (the profile that takes them).
async fn ip_order(c: &AcmeClient, ips: &[&str]) -> AcmeResponse {
    let ids: Vec<Value> = ips
        .iter()
        .map(|v| json!({"type": "ip", "value": v}))
        .collect();
    c.new_order_raw(json!({"identifiers": ids, "profile": "shortlived"}))
        .await
}

/// Issues a certificate for IP addresses on an `always_valid` server.
async fn issue_ips(c: &AcmeClient, ips: &[&str]) {
    let r = ip_order(c, ips).await;
    assert_eq!(r.status, 201, "{r}");
    let url = r.location().unwrap();
    let order = c.authorize_always_valid(&url, &r.json()).await;
    let key = gen_cert_key(CertKey::P256);
    let f = c
        .finalize(&order, &csr_der_full(&[], ips, None, &key))
        .await;
    assert_eq!(f.status, 200, "{f}");
    c.wait_status(&url, &["valid"], Duration::from_secs(15))
        .await;
}

#[tokio::test]
async fn ip_addresses_count_by_address_and_ipv6_64() {
    let server = Server::start(with_limit(
        ServerOpts::always_valid(),
        "certificates_per_domain",
        1,
        1,
        WEEK,
    ));
    let (c, _) = account(&server).await;
    // IPv6: the /64 is the "registered domain".
    issue_ips(&c, &["2001:db8:1:2::10"]).await;
    let r = ip_order(&c, &["2001:db8:1:2:ffff::20"]).await;
    domain_refused(&server, &r, "2001:db8:1:2::/64").await;
    assert_eq!(ip_order(&c, &["2001:db8:1:3::10"]).await.status, 201);
    // IPv4: the address itself; its neighbour has its own bucket.
    issue_ips(&c, &["198.51.100.7"]).await;
    let r = ip_order(&c, &["198.51.100.7", "2001:db8:9::1"]).await;
    domain_refused(&server, &r, "198.51.100.7").await;
    assert_eq!(ip_order(&c, &["198.51.100.8"]).await.status, 201);
}

// ---------------------------------------------------------------------------------------
// 4. Renewal and ARI exemptions
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn renewals_skip_orders_and_domain_but_spend_the_exact_set() {
    let server = Server::start(with_limit(
        with_limit(
            with_limit(
                ServerOpts::always_valid(),
                "new_orders_per_account",
                2,
                2,
                2 * EI,
            ),
            "certificates_per_domain",
            1,
            1,
            WEEK,
        ),
        "certificates_per_fqdn_set",
        2,
        2,
        WEEK,
    ));
    let (c, id) = account(&server).await;
    let id = id.to_string();
    // Spends one order (1 left), the domain's only token, one of two exact-set tokens.
    issue(&c, &["a.renew.example.com", "b.renew.example.com"]).await;
    // The same set in another order and case is a renewal: the empty domain
    // bucket does not refuse it.
    let r = order(&c, &["B.RENEW.EXAMPLE.COM", "a.renew.example.com"]).await;
    assert_eq!(r.status, 201, "a renewal is not counted per domain: {r}");
    // A new name of that domain is refused: the renewal did not refill it.
    let r = order(&c, &["c.renew.example.com"]).await;
    assert_refused(
        &server,
        &r,
        "certificatesPerDomain",
        Key::Exact("example.com"),
        (WEEK - 120, WEEK + 1),
    )
    .await;
    // The renewal spent the exact set.
    let r = order(&c, &["a.renew.example.com", "b.renew.example.com"]).await;
    assert_refused(
        &server,
        &r,
        "certificatesPerFqdnSet",
        Key::Contains(&["a.renew.example.com", "b.renew.example.com"]),
        (WEEK / 2 - 120, WEEK / 2 + 1),
    )
    .await;
    // The renewal (and the refusals) spent no new order: one is left, then none.
    c.new_order(&["other.example.net"]).await;
    let r = order(&c, &["more.example.org"]).await;
    assert_refused(
        &server,
        &r,
        "newOrdersPerAccount",
        Key::Exact(&id),
        (EI - 120, EI + 1),
    )
    .await;
}

#[tokio::test]
async fn ari_renewal_is_exempt_from_every_limit() {
    let mut opts = ServerOpts::always_valid();
    for limit in [
        "new_orders_per_account",
        "certificates_per_domain",
        "certificates_per_fqdn_set",
    ] {
        opts = with_limit(opts, limit, 1, 1, WEEK);
    }
    let server = Server::start(opts);
    let (c, _) = account(&server).await;
    let names = ["ari.example.com"];
    let der = issue(&c, &names).await;
    // Every bucket is empty now.
    let r = order(&c, &names).await;
    assert_problem(&r, 429, "rateLimited");
    let r = order(&c, &["new.example.org"]).await;
    assert_problem(&r, 429, "rateLimited");

    let cert_id = cairn::ra::cert_id(&der).expect("certID");
    let mut payload = AcmeClient::order_payload(&names);
    payload["replaces"] = json!(cert_id);
    let r = c.new_order_raw(payload).await;
    assert_eq!(r.status, 201, "an ARI renewal skips every limit: {r}");
    let order_url = r.location().expect("Location");
    // ... through to the certificate.
    let ready = c.authorize_always_valid(&order_url, &r.json()).await;
    let (csr, _) = make_csr(&names, CertKey::P256);
    let f = c.finalize(&ready, &csr).await;
    assert_eq!(f.status, 200, "finalize of an ARI renewal: {f}");
    c.wait_status(&order_url, &["valid"], Duration::from_secs(15))
        .await;
}

// ---------------------------------------------------------------------------------------
// 5. Refunds
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_refused_request_spends_nothing() {
    let server = Server::start(with_limit(
        with_limit(
            ServerOpts::always_valid(),
            "new_orders_per_account",
            2,
            2,
            2 * EI,
        ),
        "certificates_per_fqdn_set",
        1,
        1,
        WEEK,
    ));
    let (c, id) = account(&server).await;
    let id = id.to_string();
    // Spends an order and reserves the set's only token.
    c.new_order(&["s.example.com"]).await;
    // Not a renewal (nothing issued): refused by the exact set, spends no order.
    let r = order(&c, &["S.example.com"]).await;
    assert_refused(
        &server,
        &r,
        "certificatesPerFqdnSet",
        Key::Contains(&["s.example.com"]),
        (WEEK - 120, WEEK + 1),
    )
    .await;
    c.new_order(&["t.example.com"]).await;
    let r = order(&c, &["u.example.com"]).await;
    assert_refused(
        &server,
        &r,
        "newOrdersPerAccount",
        Key::Exact(&id),
        (EI - 120, EI + 1),
    )
    .await;
}

/// Retries `newOrder` for `names` until it is allowed (the sweeper returns
/// reservations within ~2 s); panics after `timeout`.
async fn order_eventually(c: &AcmeClient, names: &[&str], timeout: Duration) -> AcmeResponse {
    let deadline = Instant::now() + timeout;
    loop {
        let r = order(c, names).await;
        if r.status == 201 {
            eprintln!(
                "reservation for {names:?} back after {:?}",
                timeout.saturating_sub(deadline.saturating_duration_since(Instant::now()))
            );
            return r;
        }
        assert_problem(&r, 429, "rateLimited");
        if Instant::now() > deadline {
            panic!("the reservation was not returned within {timeout:?}:\n{r}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn failed_or_deactivated_authorizations_return_the_domain_reservation() {
    let dns = TestDns::start();
    let server = failing_server(&dns, "certificates_per_domain", 1, 1, WEEK);
    let (c, _) = account(&server).await;
    let (_, o1) = c.new_order(&["a.refund.example.com"]).await;
    let r = order(&c, &["b.refund.example.com"]).await;
    assert_refused(
        &server,
        &r,
        "certificatesPerDomain",
        Key::Exact("example.com"),
        (WEEK - 120, WEEK + 1),
    )
    .await;
    // The order's authorization fails: the order is invalid, its reservation back.
    fail_authz(&c, &o1).await;
    let r = order_eventually(&c, &["b.refund.example.com"], Duration::from_secs(5)).await;
    let o2 = r.json();
    let r = order(&c, &["c.refund.example.com"]).await;
    assert_problem(&r, 429, "rateLimited");
    // The client deactivates the pending authorization: the same, and at
    // once (the deactivation returns the tokens before it answers).
    let authz = AcmeClient::authz_urls(&o2).remove(0);
    let r = c.post(&authz, Some(json!({"status": "deactivated"}))).await;
    assert_eq!(r.status, 200, "{r}");
    let r = order(&c, &["c.refund.example.com"]).await;
    assert_eq!(r.status, 201, "{r}");
    let r = order(&c, &["d.refund.example.com"]).await;
    assert_problem(&r, 429, "rateLimited");
}

#[tokio::test]
async fn revocation_refunds_nothing() {
    let server = Server::start(with_limit(
        ServerOpts::always_valid(),
        "certificates_per_domain",
        1,
        1,
        WEEK,
    ));
    let (c, _) = account(&server).await;
    let der = issue(&c, &["rev.example.com"]).await;
    let r = c
        .post(
            &c.endpoint("revokeCert"),
            Some(json!({"certificate": b64u(&der), "reason": 4})),
        )
        .await;
    assert_eq!(r.status, 200, "revocation: {r}");
    let r = order(&c, &["www.rev.example.com"]).await;
    assert_refused(
        &server,
        &r,
        "certificatesPerDomain",
        Key::Exact("example.com"),
        (WEEK - 120, WEEK + 1),
    )
    .await;
    // Longer than the sweeper takes to return reservations: still nothing back.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = order(&c, &["www.rev.example.com"]).await;
    assert_problem(&r, 429, "rateLimited");
}

// ---------------------------------------------------------------------------------------
// 6. RateLimit headers on allowed requests; the docs page
// ---------------------------------------------------------------------------------------

/// `"name";r=N;t=T` or `"name";q=N;w=W` -> (name, the two numbers by key).
fn parse_ratelimit(v: &str) -> (String, Vec<(String, u64)>) {
    let mut parts = v.split(';').map(str::trim);
    let name = parts
        .next()
        .unwrap_or_default()
        .trim_matches('"')
        .to_string();
    let params = parts
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((k.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect();
    (name, params)
}

fn param(params: &[(String, u64)], key: &str, r: &AcmeResponse) -> u64 {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no {key}= in the RateLimit fields:\n{r}"))
}

/// (policy quota, policy window, remaining) of an allowed response, for `limit`.
fn ratelimit_fields(r: &AcmeResponse, limit: &str) -> (u64, u64, u64) {
    let policy = r
        .header("ratelimit-policy")
        .unwrap_or_else(|| panic!("no RateLimit-Policy:\n{r}"));
    let state = r
        .header("ratelimit")
        .unwrap_or_else(|| panic!("no RateLimit:\n{r}"));
    let (pn, pp) = parse_ratelimit(&policy);
    let (sn, sp) = parse_ratelimit(&state);
    assert_eq!(pn, limit, "RateLimit-Policy names the limit:\n{r}");
    assert_eq!(sn, limit, "RateLimit names the limit:\n{r}");
    (param(&pp, "q", r), param(&pp, "w", r), param(&sp, "r", r))
}

#[tokio::test]
async fn allowed_requests_carry_ratelimit_headers() {
    let server = Server::start(with_bucket(
        with_bucket(
            ServerOpts::always_valid(),
            "new_registrations_per_ip",
            5,
            EI,
        ),
        "new_orders_per_account",
        5,
        EI,
    ));
    let mut last = None;
    let mut clients = Vec::new();
    for _ in 0..2 {
        let c = AcmeClient::new(&server, KeyKind::Es256).await;
        let r = c.new_account(&[], true).await;
        assert_eq!(r.status, 201, "{r}");
        let (q, w, remaining) = ratelimit_fields(&r, "newRegistrationsPerIp");
        assert_eq!((q, w), (5, 5 * EI), "{r}");
        if let Some(prev) = last {
            assert_eq!(remaining + 1, prev, "one fewer per new account:\n{r}");
        } else {
            assert_eq!(remaining, 4, "{r}");
        }
        last = Some(remaining);
        clients.push(c);
    }
    let c = &clients[0];
    let mut last = None;
    for i in 0..3 {
        let r = order(c, &[&format!("h{i}.example.com")]).await;
        assert_eq!(r.status, 201, "{r}");
        let (q, w, remaining) = ratelimit_fields(&r, "newOrdersPerAccount");
        assert_eq!((q, w), (5, 5 * EI), "{r}");
        if let Some(prev) = last {
            assert_eq!(remaining + 1, prev, "one fewer per new order:\n{r}");
        } else {
            assert_eq!(remaining, 4, "{r}");
        }
        last = Some(remaining);
    }
}

#[tokio::test]
async fn docs_page_has_a_section_per_limit() {
    let server = Server::start(with_bucket(
        ServerOpts::always_valid(),
        "new_orders_per_account",
        7,
        EI,
    ));
    let url = format!("{}/docs/rate-limits", server.base_url);
    let r = server
        .http_client()
        .get(&url)
        .send()
        .await
        .expect("GET docs");
    let r = AcmeResponse::read("GET", &url, r).await;
    assert_eq!(r.status, 200, "{r}");
    assert!(
        r.content_type()
            .unwrap_or_default()
            .starts_with("text/html"),
        "{r}"
    );
    let html = r.text();
    // The limits' sections, and those that the pending-authorization and
    // request-rate refusals link to.
    let anchors = LimitName::ALL
        .iter()
        .map(|l| l.doc_anchor())
        .chain(["pending-authorizations", "request-rates"]);
    for anchor in anchors {
        assert!(
            html.contains(&format!("id=\"{anchor}\"")),
            "no section #{anchor}:\n{r}"
        );
    }
}
