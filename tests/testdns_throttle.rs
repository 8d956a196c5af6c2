//! `cairn testdns`'s write throttle and bulk endpoint, against the real binary:
//! what a DNS provider's API that limits writes per second (deSEC's, in the
//! forum thread of issue 16) looks like to a dns-01 client, so users meet it
//! here before production.
//!
//! Each test starts its own `cairn testdns` with the throttle configured on
//! its command line (or in its environment) and talks HTTP to its API and
//! DNS to its resolver port. The throttle is a GCRA bucket of `N` writes
//! refilled at `N` per period, so `6/s` admits six writes at once and then
//! one every 1/6 s; the tests' writes take a few milliseconds each, far
//! inside that.

mod common;

use common::TestDns;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What the throttle says when it refuses a write, as deSEC says it.
fn throttled_detail(secs: u64) -> String {
    let unit = if secs == 1 { "second" } else { "seconds" };
    format!("Request was throttled. Expected available in {secs} {unit}.")
}

/// One API answer: status, `Retry-After` (if any), `Content-Type`, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    content_type: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// Asserts this is the throttle's 429 with `Retry-After: secs`, and the
    /// same number in the JSON detail.
    fn assert_throttled(&self, secs: u64) {
        assert_eq!(self.status, 429, "expected a 429: {self:?}");
        assert_eq!(
            self.retry_after.as_deref(),
            Some(secs.to_string().as_str()),
            "Retry-After: {self:?}"
        );
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/json"),
            "Content-Type: {self:?}"
        );
        assert_eq!(self.json(), json!({ "detail": throttled_detail(secs) }));
    }
}

struct Api {
    dns: TestDns,
    http: reqwest::Client,
}

impl Api {
    fn start(args: &[&str]) -> Api {
        Api::start_env(args, &[])
    }

    fn start_env(args: &[&str], env: &[(&str, &str)]) -> Api {
        Api {
            dns: TestDns::start_with(args, env),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("build an HTTP client"),
        }
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Answer {
        let mut req = self
            .http
            .post(format!("{}{path}", self.dns.api_url))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = req.send().await.expect("POST to testdns");
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| v.to_str().expect("ASCII header").to_string())
        };
        let (retry_after, content_type) = (header("retry-after"), header("content-type"));
        Answer {
            status: resp.status().as_u16(),
            retry_after,
            content_type,
            body: resp.text().await.expect("read the body"),
        }
    }

    async fn set_txt(&self, token: Option<&str>, host: &str, value: &str) -> Answer {
        self.post("/set-txt", token, json!({"host": host, "value": value}))
            .await
    }

    async fn txt(&self, name: &str) -> Vec<String> {
        txt_query(self.dns.dns_addr, name).await
    }
}

/// The TXT values the mock DNS serves for `name`, asked over UDP.
async fn txt_query(addr: SocketAddr, name: &str) -> Vec<String> {
    let mut m = Message::new();
    m.set_id(7)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query);
    m.add_query(Query::query(
        Name::from_ascii(name).expect("a DNS name"),
        RecordType::TXT,
    ));
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind UDP");
    sock.send_to(&m.to_vec().expect("encode"), addr)
        .await
        .expect("send the query");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .expect("DNS answer within 5 s")
        .expect("receive");
    let mut values: Vec<String> = Message::from_vec(&buf[..n])
        .expect("decode the answer")
        .answers()
        .iter()
        .filter_map(|r| r.data().as_txt())
        .map(|t| {
            t.txt_data()
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .collect();
    values.sort();
    values
}

/// `_acme-challenge` names of seven SANs under one registered domain, as a
/// certificate with 7 names asks for.
fn seven_challenges(domain: &str) -> Vec<String> {
    ["a", "b", "c", "d", "e", "f", "g"]
        .iter()
        .map(|l| format!("_acme-challenge.{l}.{domain}"))
        .collect()
}

#[tokio::test]
async fn seventh_write_in_a_second_is_throttled_with_retry_after() {
    let api = Api::start(&["--write-rate", "6/s", "--write-scope", "domain"]);
    let hosts = seven_challenges("example.com");
    let started = Instant::now();
    for (i, host) in hosts[..6].iter().enumerate() {
        let a = api.set_txt(None, host, &format!("token-{i}")).await;
        assert_eq!(a.status, 200, "write {} of 6: {a:?}", i + 1);
    }
    let refused = api.set_txt(None, &hosts[6], "token-6").await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(160),
        "the seven writes took {elapsed:?}: too slow to test 6/s"
    );
    // The next token comes back 1/6 s after the burst: rounded up, 1 second.
    refused.assert_throttled(1);
    assert!(
        api.txt(&hosts[6]).await.is_empty(),
        "a refused write changed the zone"
    );
    eprintln!("7 writes under 6/s: 7th refused after {elapsed:?}, Retry-After 1");

    // Waiting what Retry-After says is enough.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a = api.set_txt(None, &hosts[6], "token-6").await;
    assert_eq!(a.status, 200, "after waiting Retry-After: {a:?}");
    assert_eq!(api.txt(&hosts[6]).await, vec!["token-6"]);

    // Clearing is a write too.
    let mut statuses = Vec::new();
    for host in &hosts {
        statuses.push(api.post("/clear-txt", None, json!({"host": host})).await);
    }
    assert!(
        statuses.iter().any(|a| a.status == 429),
        "seven clears at once were all admitted: {statuses:?}"
    );
}

#[tokio::test]
async fn retry_after_is_exact_for_slow_rates() {
    // 2 per minute: a token every 30 s, so the third write waits 30 s less
    // the few milliseconds the first two took: Retry-After rounds up to 30.
    let api = Api::start(&["--write-rate", "2/m"]);
    for v in ["1", "2"] {
        let a = api.set_txt(None, "_acme-challenge.example.net", v).await;
        assert_eq!(a.status, 200, "{a:?}");
    }
    let refused = api.set_txt(None, "_acme-challenge.example.net", "3").await;
    refused.assert_throttled(30);
    eprintln!("2/m: third write refused, Retry-After 30");
}

#[tokio::test]
async fn bulk_request_of_seven_records_is_counted_once() {
    let api = Api::start(&["--write-rate", "6/s", "--write-scope", "domain"]);
    let hosts = seven_challenges("example.com");
    let set: Vec<Value> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| json!({"host": h, "value": format!("token-{i}")}))
        .collect();
    let a = api
        .post(
            "/bulk-txt",
            None,
            json!({"domain": "example.com", "set": set}),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    for (i, host) in hosts.iter().enumerate() {
        assert_eq!(api.txt(host).await, vec![format!("token-{i}")], "{host}");
    }

    // It cost one write: five more fit in the burst, the sixth does not.
    for i in 0..5 {
        let a = api.set_txt(None, "other.example.com", &i.to_string()).await;
        assert_eq!(a.status, 200, "write {} after the bulk: {a:?}", i + 1);
    }
    api.set_txt(None, "other.example.com", "x")
        .await
        .assert_throttled(1);

    // A bulk is throttled like any write, and a refused one changes nothing.
    let refused = api
        .post(
            "/bulk-txt",
            None,
            json!({"domain": "example.com", "clear": [{"host": hosts[0]}]}),
        )
        .await;
    refused.assert_throttled(1);
    assert_eq!(api.txt(&hosts[0]).await, vec!["token-0"]);

    // Clear and set in one request: clears first, so a host in both ends up
    // with exactly the new values.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a = api
        .post(
            "/bulk-txt",
            None,
            json!({
                "domain": "example.com",
                "clear": hosts.iter().map(|h| json!({"host": h})).collect::<Vec<_>>(),
                "set": [{"host": hosts[0], "value": "renewed"}],
            }),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(api.txt(&hosts[0]).await, vec!["renewed"]);
    for host in &hosts[1..] {
        assert!(api.txt(host).await.is_empty(), "{host} was not cleared");
    }
}

#[tokio::test]
async fn per_domain_scope_keeps_registered_domains_apart() {
    let api = Api::start(&["--write-rate", "6/s", "--write-scope", "domain"]);
    for (i, host) in seven_challenges("example.com")[..6].iter().enumerate() {
        let a = api.set_txt(None, host, &i.to_string()).await;
        assert_eq!(a.status, 200, "{a:?}");
    }
    // Same registered domain, deeper name: the same bucket.
    api.set_txt(None, "_acme-challenge.shop.eu.example.com", "x")
        .await
        .assert_throttled(1);
    // Other registered domains, even under a multi-label public suffix
    // (example.co.uk and other.co.uk are two domains): their own buckets.
    for domain in ["example.org", "example.co.uk", "other.co.uk"] {
        for (i, host) in seven_challenges(domain)[..6].iter().enumerate() {
            let a = api.set_txt(None, host, &i.to_string()).await;
            assert_eq!(a.status, 200, "{domain} write {}: {a:?}", i + 1);
        }
    }
    // The token plays no part in this scope.
    api.set_txt(Some("another-account"), "_acme-challenge.example.com", "x")
        .await
        .assert_throttled(1);
}

#[tokio::test]
async fn per_token_scope_keeps_tokens_apart() {
    let api = Api::start(&["--write-rate", "6/s", "--write-scope", "token"]);
    // One token's writes count together whatever the domain.
    for i in 0..6 {
        let domain = if i % 2 == 0 {
            "example.com"
        } else {
            "example.org"
        };
        let a = api
            .set_txt(Some("token-a"), &format!("_acme-challenge.{domain}"), "v")
            .await;
        assert_eq!(a.status, 200, "token-a write {}: {a:?}", i + 1);
    }
    api.set_txt(Some("token-a"), "_acme-challenge.example.net", "v")
        .await
        .assert_throttled(1);
    // Another token, same domain: its own bucket.
    for i in 0..6 {
        let a = api
            .set_txt(Some("token-b"), "_acme-challenge.example.com", "v")
            .await;
        assert_eq!(a.status, 200, "token-b write {}: {a:?}", i + 1);
    }
    // No token at all is a key of its own.
    let a = api.set_txt(None, "_acme-challenge.example.com", "v").await;
    assert_eq!(a.status, 200, "no token: {a:?}");
    // An Authorization header that is not a bearer token is refused.
    let resp = api
        .http
        .post(format!("{}/set-txt", api.dns.api_url))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .body(json!({"host": "_acme-challenge.example.com", "value": "v"}).to_string())
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status().as_u16(), 400);
    let body = resp.text().await.expect("body");
    assert!(body.contains("Bearer"), "{body}");
}

#[tokio::test]
async fn bulk_with_one_bad_record_changes_nothing() {
    let api = Api::start(&["--write-rate", "6/s", "--write-scope", "domain"]);
    let hosts = seven_challenges("example.com");
    assert_eq!(api.set_txt(None, &hosts[0], "before").await.status, 200);

    let mut set: Vec<Value> = hosts[1..]
        .iter()
        .map(|h| json!({"host": h, "value": "new"}))
        .collect();
    set.insert(
        3,
        json!({"host": "_acme-challenge.example.org", "value": "new"}),
    );
    let a = api
        .post(
            "/bulk-txt",
            None,
            json!({"domain": "example.com", "set": set, "clear": [{"host": hosts[0]}]}),
        )
        .await;
    assert_eq!(a.status, 400, "{a:?}");
    assert!(
        a.body.contains("set[3]") && a.body.contains("example.org"),
        "the refusal should name the bad record: {}",
        a.body
    );
    assert_eq!(api.txt(&hosts[0]).await, vec!["before"], "the clear ran");
    for host in &hosts[1..] {
        assert!(api.txt(host).await.is_empty(), "{host} was set");
    }

    // Every malformed bulk request is refused with a reason, and changes
    // nothing either.
    let bad = [
        (json!({"set": [{"host": hosts[1], "value": "v"}]}), "domain"),
        (
            json!({"domain": "a.example.com", "set": [{"host": hosts[1], "value": "v"}]}),
            "registered domain",
        ),
        (
            json!({"domain": "co.uk", "set": [{"host": "_acme-challenge.x.co.uk", "value": "v"}]}),
            "registered domain",
        ),
        (json!({"domain": "example.com"}), "nothing"),
        (
            json!({"domain": "example.com", "set": [{"host": "", "value": "v"}]}),
            "set[0]",
        ),
        (
            json!({"domain": "example.com", "set": [{"host": "a..example.com", "value": "v"}]}),
            "set[0]",
        ),
        (
            json!({"domain": "example.com", "clear": [{"host": "example.org"}]}),
            "clear[0]",
        ),
        (
            json!({"domain": "example.com", "set": [{"host": hosts[1]}]}),
            "value",
        ),
        (json!({"domain": "example.com", "sets": []}), "sets"),
    ];
    for (body, why) in bad {
        let a = api.post("/bulk-txt", None, body.clone()).await;
        assert_eq!(a.status, 400, "{body}: {a:?}");
        assert!(
            a.body.contains(why),
            "{body}: expected {why:?} in {:?}",
            a.body
        );
    }
    assert_eq!(api.txt(&hosts[0]).await, vec!["before"]);
    for host in &hosts[1..] {
        assert!(api.txt(host).await.is_empty(), "{host} was set");
    }

    // Refused requests cost nothing: one write was spent, five remain.
    for i in 0..5 {
        let a = api.set_txt(None, &hosts[1], &i.to_string()).await;
        assert_eq!(a.status, 200, "write {} after the refusals: {a:?}", i + 1);
    }
    api.set_txt(None, &hosts[1], "x").await.assert_throttled(1);
}

#[tokio::test]
async fn unthrottled_by_default_and_configured_from_the_environment() {
    // No flags: the API takes any number of writes.
    let api = Api::start(&[]);
    for i in 0..50 {
        let a = api
            .set_txt(None, "_acme-challenge.example.com", &i.to_string())
            .await;
        assert_eq!(a.status, 200, "write {}: {a:?}", i + 1);
    }
    drop(api);

    // The same settings through the environment, two rates at once: both
    // must admit a write, and Retry-After is the later of the two.
    let api = Api::start_env(
        &[],
        &[
            ("CAIRN_TESTDNS_WRITE_RATE", "6/s,8/m"),
            ("CAIRN_TESTDNS_WRITE_SCOPE", "token"),
        ],
    );
    for i in 0..6 {
        let a = api
            .set_txt(Some("t"), "_acme-challenge.example.com", &i.to_string())
            .await;
        assert_eq!(a.status, 200, "write {}: {a:?}", i + 1);
    }
    // 6/s refuses now; after its second, 8/m still has two tokens.
    api.set_txt(Some("t"), "_acme-challenge.example.com", "x")
        .await
        .assert_throttled(1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..2 {
        let a = api
            .set_txt(Some("t"), "_acme-challenge.example.com", "y")
            .await;
        assert_eq!(a.status, 200, "{a:?}");
    }
    // Now 8/m is empty: a token every 7.5 s, the first about 7.5 s after
    // the first write (a second ago).
    let refused = api
        .set_txt(Some("t"), "_acme-challenge.example.com", "z")
        .await;
    assert_eq!(refused.status, 429, "{refused:?}");
    let secs: u64 = refused
        .retry_after
        .as_deref()
        .unwrap_or("")
        .parse()
        .expect("Retry-After");
    assert!((6..=7).contains(&secs), "Retry-After {secs}: {refused:?}");
    refused.assert_throttled(secs);
}

#[test]
fn a_bad_rate_stops_testdns_with_a_message() {
    for (args, env, needle) in [
        (vec!["--write-rate", "6/x"], vec![], "6/x"),
        (vec!["--write-rate", "0/s"], vec![], "0/s"),
        (vec!["--write-scope", "account"], vec![], "account"),
        (vec![], vec![("CAIRN_TESTDNS_WRITE_RATE", "six/s")], "six/s"),
    ] {
        let mut cmd = std::process::Command::new(common::cairn_bin());
        common::scrub_env(&mut cmd);
        let mut child = cmd
            .arg("testdns")
            .args(["--dns-listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
            .args(&args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run cairn testdns");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for cairn testdns") {
                break status;
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{args:?} {env:?}: cairn testdns started and ran");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
            .expect("read stderr");
        assert!(!status.success(), "{args:?} {env:?} exited successfully");
        assert!(stderr.contains(needle), "{args:?} {env:?}: {stderr}");
    }
}
