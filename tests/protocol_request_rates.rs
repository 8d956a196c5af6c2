//! The request-rate layer of LIMITS.md §1 on the real server, with the
//! production profile's numbers (new-nonce 20/s burst 10, directory 40/s
//! burst 40): a burst gets exactly `burst` requests (plus what refills while
//! it runs, computed from the time it took) and then 429 `rateLimited` with
//! `Retry-After`, `Link` rel=index and, on newNonce, `Replay-Nonce`; each
//! endpoint class has its own bucket; behind a trusted proxy `X-Forwarded-For` picks the
//! client's bucket, from anyone else it is ignored.
//!
//! Retry-After is whole seconds, rounded up: the layer's waits here are a
//! fraction of a second (1/20 s for new-nonce), so it says 1.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// new-nonce in the production profile (LIMITS.md §1).
const NONCE_RATE: u32 = 20;
const NONCE_BURST: u32 = 10;
/// directory in the production profile.
const DIR_RATE: u32 = 40;
const DIR_BURST: u32 = 40;

fn production() -> ServerOpts {
    ServerOpts::always_valid().with_env("CAIRN_LIMITS_PROFILE", "production")
}

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    xff: Option<&str>,
) -> AcmeResponse {
    let mut req = http.request(method.clone(), url);
    if let Some(x) = xff {
        req = req.header("x-forwarded-for", x);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    AcmeResponse::read(method.as_str(), url, resp).await
}

/// Sends requests one after another until one is refused (at most
/// `burst * 3`). Returns how many were allowed, the refusal, and how long the
/// run took.
async fn burst_until_refused(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    xff: Option<&str>,
    burst: u32,
) -> (u32, AcmeResponse, Duration) {
    let start = Instant::now();
    let mut allowed = 0;
    for _ in 0..burst * 3 {
        let r = send(http, method.clone(), url, xff).await;
        if r.status == 429 {
            return (allowed, r, start.elapsed());
        }
        assert!(r.status < 300, "{r}");
        allowed += 1;
    }
    panic!("{url}: {allowed} requests allowed in a row, no refusal");
}

/// `burst` and at most what refilled during `elapsed` at `rate` per second
/// (one more for a token that was nearly back when the run started).
fn assert_burst(allowed: u32, burst: u32, rate: u32, elapsed: Duration, what: &str) {
    let refill = (elapsed.as_secs_f64() * f64::from(rate)).floor() as u32;
    assert!(
        allowed >= burst && allowed <= burst + refill + 1,
        "{what}: {allowed} allowed, expected {burst} (+ up to {refill} refilled in {elapsed:?}, +1)"
    );
}

/// Right after a refusal, a bucket holds only what refilled since: at most
/// `elapsed * rate` tokens, plus one for the refill before the run began.
fn assert_refill_only(allowed: u32, rate: u32, elapsed: Duration, what: &str) {
    let refill = (elapsed.as_secs_f64() * f64::from(rate)).ceil() as u32;
    assert!(
        allowed <= refill + 1,
        "{what}: {allowed} allowed in {elapsed:?}; an empty bucket refilling {rate}/s allows at most {}",
        refill + 1
    );
}

/// The refusal of the request-rate layer: 429 rateLimited, Retry-After 1
/// (a sub-second wait rounded up), Replay-Nonce when the request was to
/// newNonce (or a POST) and none on a refused GET of the directory, Link
/// rel=index (except on the directory itself); for a response with a body,
/// the problem members.
fn assert_rate_refusal(server: &Server, r: &AcmeResponse, limit: &str, key: &str) {
    assert_eq!(r.status, 429, "{r}");
    assert_eq!(r.retry_after().as_deref(), Some("1"), "{r}");
    assert_nonce_rule(r);
    // Every response but the directory's own links the directory (the
    // server's rule for all responses, refusals included).
    if r.url != server.dir_url {
        assert_index_link(r, &server.dir_url);
    }
    if r.method != "HEAD" {
        let p = assert_problem(r, 429, "rateLimited");
        assert_eq!(p["limit"], limit, "{r}");
        assert_eq!(p["key"], key, "{r}");
        assert_eq!(p["retryAfter"], 1, "{r}");
        let detail = p["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(key) && detail.contains("retry after "),
            "{r}"
        );
    }
}

#[tokio::test]
async fn new_nonce_burst_then_refusal_and_classes_are_separate() {
    let server = Server::start(production());
    let http = server.http_client();
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    let nonce_url = c.endpoint("newNonce");
    // Let the buckets the harness and the client touched refill.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let (allowed, r, elapsed) =
        burst_until_refused(&http, reqwest::Method::HEAD, &nonce_url, None, NONCE_BURST).await;
    assert_burst(allowed, NONCE_BURST, NONCE_RATE, elapsed, "HEAD new-nonce");
    assert_rate_refusal(&server, &r, "newNonceRequestsPerIp", "127.0.0.1");
    // GET new-nonce is the same bucket (at most a token refilled since the
    // refusal); its refusal has a body to check.
    let (allowed, r, elapsed) =
        burst_until_refused(&http, reqwest::Method::GET, &nonce_url, None, NONCE_BURST).await;
    assert_refill_only(
        allowed,
        NONCE_RATE,
        elapsed,
        "GET new-nonce after the burst",
    );
    assert_rate_refusal(&server, &r, "newNonceRequestsPerIp", "127.0.0.1");

    // Other classes are unaffected by the empty new-nonce bucket.
    let r = send(&http, reqwest::Method::GET, &server.dir_url, None).await;
    assert_eq!(r.status, 200, "{r}");
    let info = format!("{}/AAAA.AAAA", c.endpoint("renewalInfo"));
    let r = send(&http, reqwest::Method::GET, &info, None).await;
    assert_ne!(r.status, 429, "renewal-info: {r}");
    let r = http
        .post(c.endpoint("newAccount"))
        .header("content-type", "application/jose+json")
        .body("{}")
        .send()
        .await
        .expect("POST new-account");
    let r = AcmeResponse::read("POST", &c.endpoint("newAccount"), r).await;
    assert_problem(&r, 400, "malformed");

    // The directory has its own bucket (40/s, burst 40).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (allowed, r, elapsed) = burst_until_refused(
        &http,
        reqwest::Method::GET,
        &server.dir_url,
        None,
        DIR_BURST,
    )
    .await;
    assert_burst(allowed, DIR_BURST, DIR_RATE, elapsed, "GET directory");
    assert_rate_refusal(&server, &r, "directoryRequestsPerIp", "127.0.0.1");

    // A fraction of a second later new-nonce answers again.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let r = send(&http, reqwest::Method::HEAD, &nonce_url, None).await;
    assert!(r.status < 300, "{r}");
}

#[tokio::test]
async fn trusted_proxy_forwarded_clients_get_their_own_buckets() {
    let server = Server::start(production().with_env("CAIRN_LIMITS_TRUSTED_PROXIES", "127.0.0.1"));
    let http = server.http_client();
    let nonce_url = format!("{}/acme/new-nonce", server.base_url);
    let one = Some("198.51.100.1");
    let (allowed, r, elapsed) =
        burst_until_refused(&http, reqwest::Method::GET, &nonce_url, one, NONCE_BURST).await;
    assert_burst(allowed, NONCE_BURST, NONCE_RATE, elapsed, "client one");
    assert_rate_refusal(&server, &r, "newNonceRequestsPerIp", "198.51.100.1");
    // Another client behind the same proxy has a full bucket.
    let two = Some("198.51.100.2");
    let (allowed, r, elapsed) =
        burst_until_refused(&http, reqwest::Method::GET, &nonce_url, two, NONCE_BURST).await;
    assert_burst(allowed, NONCE_BURST, NONCE_RATE, elapsed, "client two");
    assert_rate_refusal(&server, &r, "newNonceRequestsPerIp", "198.51.100.2");
    // The proxy's own requests (no header) count for the proxy.
    let r = send(&http, reqwest::Method::HEAD, &nonce_url, None).await;
    assert!(r.status < 300, "{r}");
}

#[tokio::test]
async fn forwarded_for_is_ignored_from_untrusted_peers() {
    let server = Server::start(production());
    let http = server.http_client();
    let nonce_url = format!("{}/acme/new-nonce", server.base_url);
    let (allowed, r, elapsed) = burst_until_refused(
        &http,
        reqwest::Method::GET,
        &nonce_url,
        Some("198.51.100.1"),
        NONCE_BURST,
    )
    .await;
    assert_burst(allowed, NONCE_BURST, NONCE_RATE, elapsed, "spoofing client");
    // Counted for the socket's address, whatever the header says.
    assert_rate_refusal(&server, &r, "newNonceRequestsPerIp", "127.0.0.1");
    // Another "client" gets no bucket of its own: only what refilled since.
    let (allowed, r, elapsed) = burst_until_refused(
        &http,
        reqwest::Method::GET,
        &nonce_url,
        Some("198.51.100.2"),
        NONCE_BURST,
    )
    .await;
    assert_refill_only(allowed, NONCE_RATE, elapsed, "second spoofed address");
    assert_rate_refusal(&server, &r, "newNonceRequestsPerIp", "127.0.0.1");
}
