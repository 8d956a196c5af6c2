//! The request-rate layer over real HTTP: a small axum router wrapped in
//! `RequestRateLayer`, served on a loopback port with `ConnectInfo`, driven
//! with reqwest. Proves burst then refusal (429, `Retry-After`, problem
//! members), isolation per client through a trusted proxy's
//! `X-Forwarded-For`, and that the header is ignored from anyone else.

use axum::extract::Extension;
use axum::routing::{get, post};
use axum::Router;
use cairn::clock::Clock;
use cairn::ratelimit::{LimitSet, LimitsConfig, Profile, RequestRateLimiter, TrustedProxies};
use cairn::wfe::rates::{ClientIp, RequestRateLayer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Serve a router limited by `cfg`; returns its base URL.
async fn serve(cfg: LimitsConfig) -> String {
    let limiter = Arc::new(RequestRateLimiter::new(
        &LimitSet::resolve(&cfg),
        TrustedProxies::parse(&cfg.trusted_proxies).unwrap(),
        Arc::new(Clock::system()),
        "https://ca.example/docs/rate-limits",
    ));
    let app = Router::new()
        .route("/directory", get(|| async { "{}" }))
        .route("/acme/new-nonce", get(|| async { "" }))
        .route(
            "/acme/new-acct",
            post(|ip: Option<Extension<ClientIp>>| async move {
                ip.map(|Extension(ClientIp(ip))| ip.to_string())
                    .unwrap_or_default()
            }),
        )
        .route("/acme/order/{id}", get(|| async { "order" }))
        .layer(RequestRateLayer::new(limiter));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    format!("http://{addr}")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `unlimited` plus one class: new-nonce at 2/s with a burst of 3, and
/// new-account at 1/s with a burst of 2.
fn small(trusted: &[&str]) -> LimitsConfig {
    let mut cfg = LimitsConfig::with_profile(Profile::Unlimited);
    cfg.requests.new_nonce.per_second = 2;
    cfg.requests.new_nonce.burst = 3;
    cfg.requests.new_account.per_second = 1;
    cfg.requests.new_account.burst = 2;
    cfg.trusted_proxies = trusted.iter().map(|s| s.to_string()).collect();
    cfg
}

async fn nonce(c: &reqwest::Client, base: &str, xff: Option<&str>) -> reqwest::Response {
    let mut req = c.get(format!("{base}/acme/new-nonce"));
    if let Some(x) = xff {
        req = req.header("x-forwarded-for", x);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_then_refusal_with_retry_after() {
    let base = serve(small(&[])).await;
    let c = client();
    for i in 0..3 {
        assert_eq!(nonce(&c, &base, None).await.status(), 200, "request {i}");
    }
    let r = nonce(&c, &base, None).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(r.headers()["retry-after"], "1");
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["type"], "urn:ietf:params:acme:error:rateLimited");
    assert_eq!(body["status"], 429);
    assert_eq!(body["limit"], "newNonceRequestsPerIp");
    assert_eq!(body["key"], "127.0.0.1");
    assert_eq!(body["retryAfter"], 1);
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("too many new-nonce requests from 127.0.0.1"),
        "{detail}"
    );
    assert!(detail.contains("retry after "), "{detail}");

    // Classes are separate buckets; an unlimited class is never refused.
    for _ in 0..20 {
        assert_eq!(
            c.get(format!("{base}/directory"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(
            c.get(format!("{base}/acme/order/1"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    // After Retry-After, requests are allowed again.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(nonce(&c, &base, None).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxy_forwarded_clients_are_limited_separately() {
    let base = serve(small(&["127.0.0.0/8"])).await;
    let c = client();
    // The left part is client-supplied and ignored; the right-most
    // untrusted address is the client.
    let a = "198.51.100.99, 203.0.113.1";
    for _ in 0..3 {
        assert_eq!(nonce(&c, &base, Some(a)).await.status(), 200);
    }
    let r = nonce(&c, &base, Some(a)).await;
    assert_eq!(r.status(), 429);
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["key"], "203.0.113.1");
    // A different client behind the same proxy has its own bucket, and so
    // does the proxy itself.
    assert_eq!(nonce(&c, &base, Some("203.0.113.2")).await.status(), 200);
    assert_eq!(nonce(&c, &base, None).await.status(), 200);
    // IPv6 clients share their /64.
    for _ in 0..3 {
        assert_eq!(
            nonce(&c, &base, Some("2001:db8:1:2::1")).await.status(),
            200
        );
    }
    let r = nonce(&c, &base, Some("2001:db8:1:2::ffff")).await;
    assert_eq!(r.status(), 429);
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["key"], "2001:db8:1:2::/64");

    // New-account handlers see the same client the layer counted.
    let r = c
        .post(format!("{base}/acme/new-acct"))
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "203.0.113.7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_forwarded_header_is_ignored() {
    let base = serve(small(&["10.0.0.0/8"])).await;
    let c = client();
    // Every request claims another client; all count against the peer.
    for i in 0..3 {
        let xff = format!("203.0.113.{i}");
        assert_eq!(nonce(&c, &base, Some(&xff)).await.status(), 200);
    }
    let r = nonce(&c, &base, Some("203.0.113.50")).await;
    assert_eq!(r.status(), 429);
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["key"], "127.0.0.1");
    let r = c
        .post(format!("{base}/acme/new-acct"))
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_new_account_burst_is_fifteen() {
    let base = serve(LimitsConfig::with_profile(Profile::Production)).await;
    let c = client();
    let mut ok = 0;
    let mut refused = None;
    for _ in 0..20 {
        let r = c
            .post(format!("{base}/acme/new-acct"))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            ok += 1;
        } else {
            refused = Some(r);
            break;
        }
    }
    // 15 in the burst, plus at most one refilled while the loop ran (5/s).
    assert!((15..=16).contains(&ok), "{ok}");
    let r = refused.expect("never refused");
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
}
