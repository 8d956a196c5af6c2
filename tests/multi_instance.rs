//! Several `cairn serve` processes on one database and one CA directory
//! behave as one CA: nonces, accounts, orders and validations cross
//! instances; a dead instance's validation is taken over; racing finalizes
//! issue once. Run on either backend (`CAIRN_TEST_BACKEND=postgres` for the
//! production shape; SQLite shares its file between processes on one host).

mod common;

use common::*;
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_is_good_once_at_every_instance() {
    let a = Server::start(ServerOpts::always_valid().shared_nonces());
    let b = a.start_peer();
    let ca = AcmeClient::new(&a, KeyKind::Es256).await;
    let cb = AcmeClient::new(&b, KeyKind::Es256).await;

    // A nonce from A is accepted by B...
    let nonce = ca.fresh_nonce().await;
    let url_b = cb.endpoint("newAccount");
    let key = cb.key();
    let h = json!({"alg": key.alg(), "jwk": key.jwk(), "nonce": nonce, "url": url_b});
    let signed = jws(&h, br#"{"termsOfServiceAgreed":true}"#, &key);
    let r = cb.post_jws(&url_b, &signed).await;
    assert_eq!(r.status, 201, "{r}");
    // ...once: replayed at B, and at A, it is refused.
    let r = cb.post_jws(&url_b, &signed).await;
    assert_problem(&r, 400, "badNonce");
    let url_a = ca.endpoint("newAccount");
    let h = json!({"alg": key.alg(), "jwk": key.jwk(), "nonce": nonce, "url": url_a});
    let r = ca.post_jws(&url_a, &jws(&h, b"{}", &key)).await;
    assert_problem(&r, 400, "badNonce");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_moves_between_instances() {
    let a = Server::start(ServerOpts::always_valid().shared_nonces());
    let b = a.start_peer();
    assert_eq!(a.root_pem(), b.root_pem(), "instances must share one CA");

    let ca = AcmeClient::new(&a, KeyKind::Es256).await;
    ca.register().await;
    let cb = ca.via(&b).await;
    let r = cb.post_as_get(&cb.account_url()).await;
    assert_eq!(r.status, 200, "account created on A, read on B: {r}");

    // Ordered on A, authorized and finalized on B, downloaded from A.
    let (order_url_a, order) = ca.new_order(&["moves.example.com"]).await;
    let order_url_b = rebase(&order_url_a, &b);
    let order_b = cb.post_as_get(&order_url_b).await.expect_status(200).json();
    assert_eq!(order_b["status"], order["status"]);
    let ready = cb.authorize_always_valid(&order_url_b, &order_b).await;
    let (csr, _) = make_csr(&["moves.example.com"], CertKey::P256);
    let r = cb.finalize(&ready, &csr).await;
    assert_eq!(r.status, 200, "finalize on B: {r}");
    let valid = ca.wait_status(&order_url_a, &["valid"], T).await;
    let cert_url = rebase(valid["certificate"].as_str().expect("certificate"), &a);
    let pem = ca.download_cert_pem(&cert_url).await;
    assert_eq!(verify_chain(&pem, &a.root_pem()), ["moves.example.com"]);
}

/// A validation started by an instance that then dies is finished by
/// another one within a bounded time; the client polls the survivor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instances_validation_is_taken_over() {
    let dns = TestDns::start();
    let opts = ServerOpts::test()
        .shared_nonces()
        .with_dns(dns.dns_addr)
        .with_env("CAIRN_VA_TIMEOUT_SECS", "2");
    let mut a = Server::start(opts);
    let b = a.start_peer();
    let ca = AcmeClient::new(&a, KeyKind::Es256).await;
    ca.register().await;
    let cb = ca.via(&b).await;

    let responder = Http01Responder::start(a.http01_port);
    // Longer than A will live, shorter than the VA timeout.
    responder.set_delay(Duration::from_millis(1500));
    let (order_url, order) = ca.new_order(&["takeover.example.com"]).await;
    let authz_url = AcmeClient::authz_urls(&order)[0].clone();
    let authz = ca.post_as_get(&authz_url).await.expect_status(200).json();
    let ch = AcmeClient::challenge(&authz, "http-01")
        .expect("http-01")
        .clone();
    let token = ch["token"].as_str().expect("token");
    responder.set(token, &ca.key_authorization(token));
    let ch_url = ch["url"].as_str().expect("url").to_string();
    let r = ca.post(&ch_url, Some(json!({}))).await;
    assert_eq!(r.status, 200, "{r}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while responder.hits() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "A never started validating"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.stop();
    responder.set_delay(Duration::ZERO);

    let started = std::time::Instant::now();
    let ch_now = cb
        .wait_status(
            &rebase(&ch_url, &b),
            &["valid", "invalid"],
            Duration::from_secs(40),
        )
        .await;
    eprintln!("validation taken over after {:?}", started.elapsed());
    assert_eq!(ch_now["status"], "valid", "{ch_now}");
    cb.wait_status(&rebase(&order_url, &b), &["ready"], T).await;
    assert!(
        b.log().contains("taking over an interrupted validation"),
        "{}",
        b.log_tail(4000)
    );
}

/// Peers started at the same moment (migrations, CA and listener-certificate
/// loading racing) all come up and serve the same root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_starting_together_serve_the_same_root() {
    let a = Server::start(ServerOpts::always_valid().shared_nonces());
    // Peers of a fresh server, started in parallel threads.
    let peers: Vec<Server> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3).map(|_| s.spawn(|| a.start_peer())).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("peer start"))
            .collect()
    });
    for p in &peers {
        let got = p
            .http_client()
            .get(format!("{}/roots/0", p.mgmt_url))
            .send()
            .await
            .expect("GET roots/0")
            .text()
            .await
            .expect("body");
        assert_eq!(got, a.root_pem(), "every instance serves the same root");
    }
}

/// Two instances, 50 clients at once, each client's requests split between
/// them: every order ends valid with exactly one certificate, even with the
/// same finalize sent to both instances at the same moment. Repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_clients_on_two_instances_lose_nothing() {
    let a = Server::start(ServerOpts::always_valid().shared_nonces());
    let b = a.start_peer();
    for round in 0..3 {
        let mut tasks = Vec::new();
        for i in 0..50 {
            let (x, y) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
            let cx = AcmeClient::new(x, KeyKind::Es256).await;
            let y_http = y.http_client();
            let y_dir = y.dir_url.clone();
            let y_base = y.base_url.clone();
            tasks.push(tokio::spawn(async move {
                cx.register().await;
                let cy =
                    AcmeClient::from_parts(y_http, &y_dir, AcmeKey::generate(KeyKind::Es256)).await;
                cy.set_key_of(&cx);
                let on_y =
                    |u: &str| format!("{y_base}{}", &u[u.find("/acme/").expect("acme url")..]);
                cy.set_kid(cx.kid().map(|k| on_y(&k)));
                let name = format!("r{round}-c{i}.example.com");
                let (order_url, _) = cx.new_order(&[name.as_str()]).await;
                let order_y = cy
                    .post_as_get(&on_y(&order_url))
                    .await
                    .expect_status(200)
                    .json();
                let ready = cy.authorize_always_valid(&on_y(&order_url), &order_y).await;
                let (csr, _) = make_csr(&[name.as_str()], CertKey::P256);
                let ready_x = cx.post_as_get(&order_url).await.expect_status(200).json();
                assert_eq!(ready_x["status"], "ready", "{ready_x}");
                // The same finalize sent to both instances at once.
                let (r1, r2) = tokio::join!(cx.finalize(&ready_x, &csr), cy.finalize(&ready, &csr));
                let ok = [r1.status, r2.status].iter().filter(|s| **s == 200).count();
                assert!(ok >= 1, "no finalize succeeded: {r1} / {r2}");
                for r in [&r1, &r2] {
                    if r.status != 200 {
                        assert_problem(r, 403, "orderNotReady");
                    }
                }
                let valid = cx.wait_status(&order_url, &["valid"], T).await;
                let valid_y = cy
                    .post_as_get(&on_y(&order_url))
                    .await
                    .expect_status(200)
                    .json();
                assert_eq!(valid_y["status"], "valid");
                let cert = valid["certificate"]
                    .as_str()
                    .expect("certificate")
                    .to_string();
                cert[cert.find("/acme/").expect("acme url")..].to_string()
            }));
        }
        let mut certs = HashSet::new();
        for t in tasks {
            let cert: String = t.await.expect("client task");
            assert!(certs.insert(cert), "two orders share a certificate");
        }
        assert_eq!(certs.len(), 50);
        let issued = a.log().matches("certificate issued").count()
            + b.log().matches("certificate issued").count();
        assert_eq!(
            issued,
            50 * (round + 1),
            "certificates issued != orders finalized"
        );
    }
}
