//! Fault injection (`crate::faults`, README "Fault injection") against the
//! real server: rules from the configuration and from the management
//! listener, each fault as a client sees it, and reproducible draws.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn faults(server: &Server, method: reqwest::Method, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, format!("{}/faults", server.mgmt_url));
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = req.send().await.expect("management /faults");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn configured_sequence_refuses_exactly_those_requests() {
    let server = Server::start(
        ServerOpts::always_valid().with_env("CAIRN_FAULTS_RULES", "newOrder:rateLimited=7@#1+3"),
    );
    let client = AcmeClient::new(&server, KeyKind::Es256).await;
    client.register().await;
    let mut got = Vec::new();
    for i in 0..4 {
        let r = client
            .new_order_raw(AcmeClient::order_payload(&[&format!("s{i}.example")]))
            .await;
        if r.status == 429 {
            let p = assert_problem(&r, 429, "rateLimited");
            assert!(
                p["detail"].as_str().unwrap().contains("injected fault"),
                "{p}"
            );
            assert_eq!(r.retry_after().as_deref(), Some("7"));
            assert!(r.nonce().is_some(), "a refused POST still carries a nonce");
        }
        got.push(r.status);
    }
    assert_eq!(got, [429, 201, 429, 201]);
    let (_, v) = faults(&server, reqwest::Method::GET, None).await;
    assert_eq!(
        v["rules"],
        json!([{"rule": "newOrder:rateLimited=7@#1+3", "requests": 4, "fired": 2}])
    );
}

#[tokio::test]
async fn rules_replaced_at_run_time_and_bad_ones_change_nothing() {
    let server = Server::start(ServerOpts::test());
    let client = AcmeClient::new(&server, KeyKind::Es256).await;
    let url = client.endpoint("newNonce");

    let (status, v) = faults(
        &server,
        reqwest::Method::PUT,
        Some(json!({"rules": ["newNonce:unavailable=2@#2"]})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let statuses: Vec<u16> = {
        let mut s = Vec::new();
        for _ in 0..3 {
            let r = client.head(&url).await;
            if r.status == 503 {
                assert_eq!(r.retry_after().as_deref(), Some("2"));
            }
            s.push(r.status);
        }
        s
    };
    assert_eq!(statuses, [200, 503, 200]);

    for bad in [
        json!({"rules": ["newNonce:explode"]}),
        json!({"rules": "newNonce:badNonce"}),
        json!({"rules": [], "extra": 1}),
    ] {
        let (status, v) = faults(&server, reqwest::Method::PUT, Some(bad.clone())).await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert_eq!(v["type"], "urn:ietf:params:acme:error:malformed", "{v}");
    }
    let (_, v) = faults(&server, reqwest::Method::GET, None).await;
    assert_eq!(
        v["rules"][0]["rule"], "newNonce:unavailable=2@#2",
        "unchanged: {v}"
    );
    assert_eq!(v["rules"][0]["fired"], 1);

    let (status, v) = faults(&server, reqwest::Method::DELETE, None).await;
    assert_eq!((status, v["rules"].clone()), (200, json!([])));
    for _ in 0..3 {
        assert_eq!(client.head(&url).await.status, 200);
    }
}

#[tokio::test]
async fn bad_nonce_server_internal_and_slow_answers() {
    let server = Server::start(ServerOpts::always_valid().with_env(
        "CAIRN_FAULTS_RULES",
        "*:badNonce@#2,newAccount:serverInternal@#1",
    ));
    let client = AcmeClient::new(&server, KeyKind::Es256).await;
    // newAccount #1 is a 500 and creates nothing; #2 is the second POST
    // overall: a good nonce refused as badNonce, with a fresh one.
    let r = client.new_account(&[], true).await;
    // An injected 500 is still a whole problem document.
    assert_eq!(r.status, 500, "{r}");
    assert_eq!(
        r.content_type().as_deref(),
        Some("application/problem+json")
    );
    let p = r.json();
    assert_eq!(
        p["type"], "urn:ietf:params:acme:error:serverInternal",
        "{p}"
    );
    assert!(
        p["detail"].as_str().unwrap().contains("injected fault"),
        "{p}"
    );
    let r = client.new_account(&[], true).await;
    assert_problem(&r, 400, "badNonce");
    assert!(r.nonce().is_some());
    let r = client.new_account(&[], true).await;
    assert_eq!(r.status, 201, "exactly one account, created now: {r}");
    // GETs are never badNonce; the second directory read from now is slow.
    let (status, _) = faults(
        &server,
        reqwest::Method::PUT,
        Some(json!({"rules": ["*:badNonce", "directory:slow=400@#2"]})),
    )
    .await;
    assert_eq!(status, 200);
    let t = Instant::now();
    assert_eq!(client.get(&server.dir_url).await.status, 200);
    let first = t.elapsed();
    let t = Instant::now();
    assert_eq!(client.get(&server.dir_url).await.status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    assert!(first < Duration::from_millis(400), "{first:?}");
}

#[tokio::test]
async fn finalize_leaves_the_order_processing_for_a_while() {
    let server = Server::start(
        ServerOpts::always_valid().with_env("CAIRN_FAULTS_RULES", "finalize:processing=30"),
    );
    let client = AcmeClient::new(&server, KeyKind::Es256).await;
    client.register().await;
    let (url, order) = client.new_order(&["held.example"]).await;
    let order = client.authorize_always_valid(&url, &order).await;
    let (csr, _) = make_csr(&["held.example"], CertKey::P256);
    let r = client.finalize(&order, &csr).await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json()["status"], "processing", "{r}");
    assert!(r.json().get("certificate").is_none());
    assert_eq!(r.retry_after().as_deref(), Some("1"));
    let r = client.post_as_get(&url).await;
    assert_eq!(r.json()["status"], "processing");
    // Once the time has passed the order is valid with its certificate.
    advance_clock(&server, 31).await;
    let r = client.post_as_get(&url).await;
    assert_eq!(r.json()["status"], "valid", "{r}");
    let cert = r.json()["certificate"].as_str().unwrap().to_string();
    assert!(client
        .download_cert_pem(&cert)
        .await
        .contains("BEGIN CERTIFICATE"));
}

/// Which of 60 newNonce requests a `P%` rule refuses.
async fn draws(seed: u64) -> Vec<bool> {
    let server = Server::start(
        ServerOpts::test()
            .with_env("CAIRN_FAULTS_RULES", "newNonce:rateLimited@40%")
            .with_env("CAIRN_FAULTS_SEED", &seed.to_string()),
    );
    let client = AcmeClient::new(&server, KeyKind::Es256).await;
    let url = client.endpoint("newNonce");
    let mut out = Vec::new();
    for _ in 0..60 {
        out.push(client.head(&url).await.status == 429);
    }
    out
}

#[tokio::test]
async fn shares_are_reproducible_from_the_seed() {
    let a = draws(42).await;
    assert_eq!(a, draws(42).await, "the same seed gives the same faults");
    assert_ne!(a, draws(43).await);
    let n = a.iter().filter(|x| **x).count();
    assert!((12..=36).contains(&n), "{n} of 60 at 40%");
}

#[tokio::test]
async fn bad_rules_stop_the_start() {
    let out = std::process::Command::new(cairn_bin())
        .args(["config", "show", "--preset", "test"])
        .env("CAIRN_FAULTS_RULES", "order:processing=5")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("faults.rules") && err.contains("finalize only"),
        "{err}"
    );
}
