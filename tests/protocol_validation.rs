//! RFC 8555 protocol tests, part 4: real validation (http-01 against a responder in the
//! test, dns-01 and CAA through `cairn testdns`), the challenge/authorization/order
//! state machine on failure, and crash-restarts (SIGKILL) with state on disk.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// A testdns, a server validating for real through it, and a client with an account.
async fn setup() -> (TestDns, Server, AcmeClient) {
    let dns = TestDns::start();
    let server = Server::start(ServerOpts::test().with_dns(dns.dns_addr));
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    c.register().await;
    (dns, server, c)
}

/// (authz URL, challenge object) of the first authorization's challenge of `kind`.
async fn first_challenge(c: &AcmeClient, order: &Value, kind: &str) -> (String, Value) {
    let authz_url = AcmeClient::authz_urls(order)[0].clone();
    let authz = c.post_as_get(&authz_url).await.expect_status(200).json();
    let ch = AcmeClient::challenge(&authz, kind)
        .unwrap_or_else(|| panic!("no {kind} challenge: {authz}"))
        .clone();
    (authz_url, ch)
}

/// POSTs `{}` to the challenge; asserts 200, Link up to the authorization.
async fn answer(c: &AcmeClient, authz_url: &str, ch: &Value) -> Value {
    let r = c
        .post(ch["url"].as_str().expect("challenge url"), Some(json!({})))
        .await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(
        r.link("up").as_deref(),
        Some(authz_url),
        "challenge Link rel=up: {r}"
    );
    let body = r.json();
    let st = body["status"].as_str().unwrap_or("");
    assert!(
        ["processing", "valid", "invalid"].contains(&st),
        "challenge after POST {{}}: {body}"
    );
    body
}

/// Waits for the authorization to settle and checks the failure is reported at every
/// level: challenge invalid with an `error` of one of `kinds`, authz invalid, order invalid.
async fn expect_failed_validation(
    c: &AcmeClient,
    order_url: &str,
    authz_url: &str,
    ch_url: &str,
    kinds: &[&str],
) {
    let authz = c.wait_status(authz_url, &["valid", "invalid"], T).await;
    assert_eq!(
        authz["status"], "invalid",
        "validation should fail: {authz}"
    );
    let r = c.post_as_get(ch_url).await.expect_status(200);
    let ch = r.json();
    assert_eq!(ch["status"], "invalid", "{ch}");
    let err = &ch["error"];
    let ty = err["type"]
        .as_str()
        .unwrap_or_else(|| panic!("invalid challenge without error: {ch}"));
    assert!(
        kinds.iter().any(|k| ty == format!("{ERR_NS}{k}")),
        "challenge error {ty}, expected one of {kinds:?}: {ch}"
    );
    assert!(err["detail"].is_string(), "{ch}");
    if let Some(s) = err["status"].as_u64() {
        assert!((400..500).contains(&s), "{ch}");
    }
    let order = c.wait_status(order_url, &["invalid"], T).await;
    assert_eq!(order["status"], "invalid");
    let (csr, _) = make_csr(&["x.example.com"], CertKey::P256);
    let r = c.finalize(&order, &csr).await;
    assert_problem(&r, 403, "orderNotReady");
}

/// Finalizes a ready order and checks the chain against the root.
async fn finish(server: &Server, c: &AcmeClient, order_url: &str, names: &[&str]) {
    let order = c.wait_status(order_url, &["ready"], T).await;
    let (csr, _) = make_csr(names, CertKey::P256);
    let r = c.finalize(&order, &csr).await;
    assert_eq!(r.status, 200, "{r}");
    let order = c.wait_status(order_url, &["valid"], T).await;
    let pem = c
        .download_cert_pem(order["certificate"].as_str().expect("certificate"))
        .await;
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(verify_chain(&pem, &server.root_pem()), want);
}

#[tokio::test]
async fn http01_validation_succeeds() {
    let (_dns, server, c) = setup().await;
    let responder = Http01Responder::start(server.http01_port);
    let (order_url, order) = c.new_order(&["h1.example.com"]).await;
    let (authz_url, ch) = first_challenge(&c, &order, "http-01").await;
    let token = ch["token"].as_str().expect("token");
    responder.set(token, &c.key_authorization(token));
    answer(&c, &authz_url, &ch).await;
    let authz = c.wait_status(&authz_url, &["valid", "invalid"], T).await;
    assert_eq!(authz["status"], "valid", "{authz}");
    let ch = AcmeClient::challenge(&authz, "http-01").expect("http-01");
    assert_eq!(ch["status"], "valid", "{authz}");
    assert!(ch["validated"].is_string(), "{ch}");
    assert!(
        responder.hits() >= 1,
        "the server never asked the responder"
    );
    finish(&server, &c, &order_url, &["h1.example.com"]).await;
}

#[tokio::test]
async fn http01_wrong_key_authorization_fails() {
    let (_dns, server, c) = setup().await;
    let responder = Http01Responder::start(server.http01_port);
    let (order_url, order) = c.new_order(&["h2.example.com"]).await;
    let (authz_url, ch) = first_challenge(&c, &order, "http-01").await;
    let token = ch["token"].as_str().expect("token");
    responder.set(token, &format!("{token}.not-the-thumbprint"));
    answer(&c, &authz_url, &ch).await;
    let ch_url = ch["url"].as_str().expect("url");
    expect_failed_validation(
        &c,
        &order_url,
        &authz_url,
        ch_url,
        &["incorrectResponse", "unauthorized"],
    )
    .await;
}

#[tokio::test]
async fn http01_missing_token_fails() {
    let (_dns, server, c) = setup().await;
    let _responder = Http01Responder::start(server.http01_port);
    let (order_url, order) = c.new_order(&["h3.example.com"]).await;
    let (authz_url, ch) = first_challenge(&c, &order, "http-01").await;
    answer(&c, &authz_url, &ch).await;
    let ch_url = ch["url"].as_str().expect("url");
    expect_failed_validation(
        &c,
        &order_url,
        &authz_url,
        ch_url,
        &["incorrectResponse", "unauthorized"],
    )
    .await;
}

#[tokio::test]
async fn http01_connection_refused_fails() {
    let (_dns, _server, c) = setup().await;
    // Nothing listens on the http-01 port.
    let (order_url, order) = c.new_order(&["h4.example.com"]).await;
    let (authz_url, ch) = first_challenge(&c, &order, "http-01").await;
    answer(&c, &authz_url, &ch).await;
    let ch_url = ch["url"].as_str().expect("url");
    expect_failed_validation(&c, &order_url, &authz_url, ch_url, &["connection"]).await;
}

/// While the responder is slow, the challenge is `processing` with a Retry-After.
#[tokio::test]
async fn processing_challenge_has_retry_after() {
    let (_dns, server, c) = setup().await;
    let responder = Http01Responder::start(server.http01_port);
    responder.set_delay(Duration::from_secs(2));
    let (order_url, order) = c.new_order(&["slow.example.com"]).await;
    let (authz_url, ch) = first_challenge(&c, &order, "http-01").await;
    let token = ch["token"].as_str().expect("token");
    responder.set(token, &c.key_authorization(token));
    let ch_url = ch["url"].as_str().expect("url").to_string();
    let r = c.post(&ch_url, Some(json!({}))).await;
    assert_eq!(r.status, 200, "{r}");
    if r.json()["status"] == "processing" {
        assert!(
            r.retry_after().is_some(),
            "processing challenge without Retry-After: {r}"
        );
        let again = c.post_as_get(&ch_url).await.expect_status(200);
        if again.json()["status"] == "processing" {
            assert!(
                again.retry_after().is_some(),
                "processing challenge without Retry-After: {again}"
            );
        }
        // The authorization is still pending (RFC 8555 §7.1.6) and says when to come back.
        let authz = c.post_as_get(&authz_url).await.expect_status(200);
        if authz.json()["status"] == "pending" {
            assert!(
                authz.retry_after().is_some(),
                "pending authz without Retry-After: {authz}"
            );
        }
    }
    let authz = c.wait_status(&authz_url, &["valid", "invalid"], T).await;
    assert_eq!(authz["status"], "valid", "{authz}");
    c.wait_status(&order_url, &["ready"], T).await;
}

#[tokio::test]
async fn dns01_validation_succeeds() {
    let (dns, server, c) = setup().await;
    let (order_url, order) = c.new_order(&["d1.example.com"]).await;
    let (authz_url, ch) = first_challenge(&c, &order, "dns-01").await;
    let token = ch["token"].as_str().expect("token");
    dns.set_txt("_acme-challenge.d1.example.com.", &c.dns01_txt_value(token));
    answer(&c, &authz_url, &ch).await;
    let authz = c.wait_status(&authz_url, &["valid", "invalid"], T).await;
    assert_eq!(authz["status"], "valid", "{authz}");
    finish(&server, &c, &order_url, &["d1.example.com"]).await;
}

/// `x` and `*.x` validated by two TXT values side by side on `_acme-challenge.x`
/// (what certbot, lego, dehydrated, uacme and acme-client all do).
#[tokio::test]
async fn dns01_wildcard_and_base_with_two_txt_values() {
    let (dns, server, c) = setup().await;
    let names = ["*.d2.example.com", "d2.example.com"];
    let (order_url, order) = c.new_order(&names).await;
    let mut to_answer = Vec::new();
    for authz_url in AcmeClient::authz_urls(&order) {
        let authz = c.post_as_get(&authz_url).await.expect_status(200).json();
        let ch = AcmeClient::challenge(&authz, "dns-01")
            .expect("dns-01")
            .clone();
        let token = ch["token"].as_str().expect("token").to_string();
        dns.set_txt("_acme-challenge.d2.example.com", &c.dns01_txt_value(&token));
        to_answer.push((authz_url, ch));
    }
    for (authz_url, ch) in &to_answer {
        answer(&c, authz_url, ch).await;
    }
    for (authz_url, _) in &to_answer {
        let authz = c.wait_status(authz_url, &["valid", "invalid"], T).await;
        assert_eq!(authz["status"], "valid", "{authz}");
    }
    finish(&server, &c, &order_url, &names).await;
}

#[tokio::test]
async fn dns01_wrong_value_fails() {
    let (dns, _server, c) = setup().await;
    let (order_url, order) = c.new_order(&["d3.example.com"]).await;
    let (authz_url, ch) = first_challenge(&c, &order, "dns-01").await;
    dns.set_txt("_acme-challenge.d3.example.com.", "not-the-right-digest");
    answer(&c, &authz_url, &ch).await;
    let ch_url = ch["url"].as_str().expect("url");
    expect_failed_validation(
        &c,
        &order_url,
        &authz_url,
        ch_url,
        &["incorrectResponse", "unauthorized"],
    )
    .await;
}

#[tokio::test]
async fn dns01_missing_record_fails() {
    let (_dns, _server, c) = setup().await;
    let (order_url, order) = c.new_order(&["d4.example.com"]).await;
    let (authz_url, ch) = first_challenge(&c, &order, "dns-01").await;
    answer(&c, &authz_url, &ch).await;
    let ch_url = ch["url"].as_str().expect("url");
    expect_failed_validation(
        &c,
        &order_url,
        &authz_url,
        ch_url,
        &["dns", "unauthorized", "incorrectResponse"],
    )
    .await;
}

/// A CAA record naming another CA forbids issuance (RFC 8659): the challenge or the
/// finalize fails with `caa`.
#[tokio::test]
async fn caa_for_another_ca_forbids_issuance() {
    let (dns, _server, c) = setup().await;
    dns.add_caa("caa1.example.com", "issue", "other-ca.example");
    let (order_url, order) = c.new_order(&["caa1.example.com"]).await;
    let (authz_url, ch) = first_challenge(&c, &order, "dns-01").await;
    let token = ch["token"].as_str().expect("token");
    dns.set_txt(
        "_acme-challenge.caa1.example.com.",
        &c.dns01_txt_value(token),
    );
    answer(&c, &authz_url, &ch).await;
    let authz = c.wait_status(&authz_url, &["valid", "invalid"], T).await;
    if authz["status"] == "invalid" {
        let ch = c
            .post_as_get(ch["url"].as_str().expect("url"))
            .await
            .expect_status(200)
            .json();
        assert_eq!(ch["error"]["type"], format!("{ERR_NS}caa"), "{ch}");
    } else {
        let order = c.wait_status(&order_url, &["ready"], T).await;
        let (csr, _) = make_csr(&["caa1.example.com"], CertKey::P256);
        let r = c.finalize(&order, &csr).await;
        let p = assert_problem_shape(&r);
        assert_eq!(p["type"], format!("{ERR_NS}caa"), "{r}");
    }
}

/// A CAA record naming this CA (`caaIdentities`) allows issuance.
#[tokio::test]
async fn caa_for_this_ca_allows_issuance() {
    let (dns, server, c) = setup().await;
    let ident = c.directory()["meta"]["caaIdentities"][0]
        .as_str()
        .unwrap_or("cairn.localhost")
        .to_string();
    dns.add_caa("caa2.example.com", "issue", &ident);
    let (order_url, order) = c.new_order(&["caa2.example.com"]).await;
    let (authz_url, ch) = first_challenge(&c, &order, "dns-01").await;
    let token = ch["token"].as_str().expect("token");
    dns.set_txt(
        "_acme-challenge.caa2.example.com.",
        &c.dns01_txt_value(token),
    );
    answer(&c, &authz_url, &ch).await;
    let authz = c.wait_status(&authz_url, &["valid", "invalid"], T).await;
    assert_eq!(authz["status"], "valid", "{authz}");
    finish(&server, &c, &order_url, &["caa2.example.com"]).await;
}

#[tokio::test]
async fn tls_alpn01_validation_succeeds() {
    let (_dns, server, c) = setup().await;
    let responder = TlsAlpn01Responder::start(server.tls_alpn01_port);
    let (order_url, order) = c.new_order(&["t1.example.com"]).await;
    let (authz_url, ch) = first_challenge(&c, &order, "tls-alpn-01").await;
    let token = ch["token"].as_str().expect("token");
    responder.set("t1.example.com", &c.key_authorization(token));
    answer(&c, &authz_url, &ch).await;
    let authz = c.wait_status(&authz_url, &["valid", "invalid"], T).await;
    assert_eq!(authz["status"], "valid", "{authz}");
    assert!(responder.hits() >= 1, "the server never connected");
    finish(&server, &c, &order_url, &["t1.example.com"]).await;
}

#[tokio::test]
async fn tls_alpn01_wrong_digest_fails() {
    let (_dns, server, c) = setup().await;
    let responder = TlsAlpn01Responder::start(server.tls_alpn01_port);
    let (order_url, order) = c.new_order(&["t2.example.com"]).await;
    let (authz_url, ch) = first_challenge(&c, &order, "tls-alpn-01").await;
    responder.set("t2.example.com", "wrong.key-authorization");
    answer(&c, &authz_url, &ch).await;
    let ch_url = ch["url"].as_str().expect("url");
    expect_failed_validation(
        &c,
        &order_url,
        &authz_url,
        ch_url,
        &["incorrectResponse", "unauthorized", "tls"],
    )
    .await;
}

/// The key authorization uses the RFC 7638 thumbprint of each key type (RSA, P-256,
/// P-384, Ed25519 members differ), checked by real dns-01 and http-01 validations.
#[tokio::test]
async fn validation_with_every_account_key_type() {
    let dns = TestDns::start();
    let server = Server::start(ServerOpts::test().with_dns(dns.dns_addr));
    let responder = Http01Responder::start(server.http01_port);
    for (i, kind) in [
        KeyKind::Rs256(2048),
        KeyKind::Es256,
        KeyKind::Es384,
        KeyKind::EdDsa,
    ]
    .into_iter()
    .enumerate()
    {
        let c = AcmeClient::new(&server, kind).await;
        c.register().await;
        let dns_name = format!("kd{i}.example.com");
        let http_name = format!("kh{i}.example.com");
        let (order_url, order) = c.new_order(&[&dns_name, &http_name]).await;
        for authz_url in AcmeClient::authz_urls(&order) {
            let authz = c.post_as_get(&authz_url).await.expect_status(200).json();
            let name = authz["identifier"]["value"]
                .as_str()
                .expect("identifier")
                .to_string();
            let ch = if name == dns_name {
                let ch = AcmeClient::challenge(&authz, "dns-01")
                    .expect("dns-01")
                    .clone();
                let token = ch["token"].as_str().expect("token");
                dns.set_txt(
                    &format!("_acme-challenge.{name}."),
                    &c.dns01_txt_value(token),
                );
                ch
            } else {
                let ch = AcmeClient::challenge(&authz, "http-01")
                    .expect("http-01")
                    .clone();
                let token = ch["token"].as_str().expect("token");
                responder.set(token, &c.key_authorization(token));
                ch
            };
            answer(&c, &authz_url, &ch).await;
            let authz = c.wait_status(&authz_url, &["valid", "invalid"], T).await;
            assert_eq!(authz["status"], "valid", "{kind:?} {name}: {authz}");
        }
        c.wait_status(&order_url, &["ready"], T).await;
    }
}

// ---------------------------------------------------------------------------------------
// Restarts (SIGKILL: a crash, not a clean shutdown)
// ---------------------------------------------------------------------------------------

/// Accounts and pending orders survive a crash, and the order can be completed after.
#[tokio::test]
async fn restart_keeps_account_and_pending_order() {
    let mut server = Server::start(ServerOpts::always_valid());
    let mut c = AcmeClient::new(&server, KeyKind::Es256).await;
    let acct = c.register().await;
    let (order_url, order) = c.new_order(&["persist.example.com"]).await;
    let (csr, _) = make_csr(&["persist.example.com"], CertKey::P256);
    let (done_url, done, _) = c
        .issue_always_valid(
            &["done.example.com"],
            &make_csr(&["done.example.com"], CertKey::P256).0,
        )
        .await;

    server.restart();
    c.reconnect(&server);

    let r = c
        .new_account_payload(json!({"onlyReturnExisting": true}))
        .await;
    assert_eq!(r.status, 200, "account lost in the restart: {r}");
    assert_eq!(r.location().as_deref(), Some(acct.as_str()), "{r}");
    let r = c.post_as_get(&order_url).await;
    assert_eq!(r.status, 200, "order lost in the restart: {r}");
    assert_eq!(r.json()["status"], "pending", "{r}");
    let ready = c.authorize_always_valid(&order_url, &order).await;
    let r = c.finalize(&ready, &csr).await;
    assert_eq!(r.status, 200, "{r}");
    let valid = c.wait_status(&order_url, &["valid"], T).await;
    let pem = c
        .download_cert_pem(valid["certificate"].as_str().expect("certificate"))
        .await;
    assert_eq!(
        verify_chain(&pem, &server.root_pem()),
        vec!["persist.example.com"]
    );

    // The certificate issued before the crash is still served, by the same CA.
    let again = c.post_as_get(&done_url).await.expect_status(200).json();
    assert_eq!(again["status"], "valid", "{again}");
    let pem = c
        .download_cert_pem(done["certificate"].as_str().expect("certificate"))
        .await;
    assert_eq!(
        verify_chain(&pem, &server.root_pem()),
        vec!["done.example.com"]
    );
}

/// A crash while a challenge is being validated: after the restart the challenge ends
/// valid or invalid within a bounded time, never stuck in `processing`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_during_processing_challenge() {
    let dns = TestDns::start();
    let mut server = Server::start(ServerOpts::test().with_dns(dns.dns_addr));
    let mut c = AcmeClient::new(&server, KeyKind::Es256).await;
    c.register().await;
    let responder = Http01Responder::start(server.http01_port);
    responder.set_delay(Duration::from_secs(3));
    let (order_url, order) = c.new_order(&["crash.example.com"]).await;
    let (authz_url, ch) = first_challenge(&c, &order, "http-01").await;
    let token = ch["token"].as_str().expect("token");
    responder.set(token, &c.key_authorization(token));
    let ch_url = ch["url"].as_str().expect("url").to_string();

    // Send the challenge POST without waiting for its answer (the server may validate
    // before answering).
    let h = c.header_kid(&ch_url).await;
    let body = jws(&h, b"{}", &c.key());
    let http = c.http.clone();
    let url = ch_url.clone();
    let inflight = tokio::spawn(async move {
        http.post(&url)
            .header("content-type", "application/jose+json")
            .body(body.to_string())
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    // Wait until the validation is in flight, then crash the server.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while responder.hits() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the server never started validating"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::block_in_place(|| server.restart());
    let _ = inflight.await;
    responder.set_delay(Duration::ZERO);
    c.reconnect(&server);

    // Bounded: the VA timeout is a few seconds; allow generous slack.
    let ch_now = c
        .wait_status(&ch_url, &["valid", "invalid"], Duration::from_secs(45))
        .await;
    let authz = c.wait_status(&authz_url, &["valid", "invalid"], T).await;
    assert_eq!(
        authz["status"], ch_now["status"],
        "authz and challenge disagree: {authz}"
    );
    if ch_now["status"] == "invalid" {
        assert!(
            ch_now["error"]["type"].is_string(),
            "invalid without error: {ch_now}"
        );
        c.wait_status(&order_url, &["invalid"], T).await;
    } else {
        c.wait_status(&order_url, &["ready"], T).await;
    }
}

/// The members of an object, sorted.
fn members(v: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    keys
}

fn assert_members(what: &str, v: &Value, want: &[&str]) {
    let mut want = want.to_vec();
    want.sort();
    assert_eq!(members(v), want, "{what}: {v}");
}

/// Every ACME resource carries exactly its members: the optional ones
/// (`certificate`, `error`, `replaces`, `wildcard`, `validated`,
/// `validationRecord`, `issuer-domain-names`) where they apply and absent
/// (not `null`) elsewhere. Clients tell states apart by presence.
#[tokio::test]
async fn resources_carry_exactly_their_members() {
    let (_dns, server, c) = setup().await;
    let responder = Http01Responder::start(server.http01_port);

    let dir = c.get(&server.dir_url).await.expect_status(200).json();
    assert_members(
        "directory",
        &dir,
        &[
            "keyChange",
            "meta",
            "newAccount",
            "newNonce",
            "newOrder",
            "renewalInfo",
            "revokeCert",
        ],
    );
    assert_members(
        "directory meta",
        &dir["meta"],
        &[
            "caaIdentities",
            "externalAccountRequired",
            "profiles",
            "termsOfService",
            "website",
        ],
    );

    let account_members = ["contact", "createdAt", "key", "orders", "status"];
    let acct = c.post_as_get(&c.account_url()).await.expect_status(200);
    assert_members("account", &acct.json(), &account_members);
    let updated = c
        .post(
            &c.account_url(),
            Some(json!({"contact": ["mailto:wire@example.com"]})),
        )
        .await
        .expect_status(200);
    assert_members("updated account", &updated.json(), &account_members);

    // Pending: an order, its authorization and every challenge offered.
    let order_members = [
        "authorizations",
        "expires",
        "finalize",
        "identifiers",
        "profile",
        "status",
    ];
    let (order_url, order) = c.new_order(&["wire.example.com"]).await;
    assert_members("pending order", &order, &order_members);
    assert_members("identifier", &order["identifiers"][0], &["type", "value"]);
    let authz_url = AcmeClient::authz_urls(&order)[0].clone();
    let authz = c.post_as_get(&authz_url).await.expect_status(200).json();
    let authz_members = ["challenges", "expires", "identifier", "status"];
    assert_members("pending authz", &authz, &authz_members);
    assert_members("authz identifier", &authz["identifier"], &["type", "value"]);
    let challenges = authz["challenges"].as_array().expect("challenges");
    assert_eq!(challenges.len(), 4, "{authz}");
    for ch in challenges {
        let mut want = vec!["status", "token", "type", "url"];
        if ch["type"] == "dns-persist-01" {
            want.push("issuer-domain-names");
        }
        assert_members("pending challenge", ch, &want);
    }

    // Valid: the challenge gains `validated` and `validationRecord`, the
    // order `certificate`.
    let ch = AcmeClient::challenge(&authz, "http-01")
        .expect("http-01")
        .clone();
    let token = ch["token"].as_str().expect("token");
    responder.set(token, &c.key_authorization(token));
    answer(&c, &authz_url, &ch).await;
    let authz = c.wait_status(&authz_url, &["valid"], T).await;
    assert_members("valid authz", &authz, &authz_members);
    let ch = c
        .post_as_get(ch["url"].as_str().expect("url"))
        .await
        .expect_status(200)
        .json();
    assert_members(
        "valid challenge",
        &ch,
        &[
            "status",
            "token",
            "type",
            "url",
            "validated",
            "validationRecord",
        ],
    );
    let ready = c.wait_status(&order_url, &["ready"], T).await;
    assert_members("ready order", &ready, &order_members);
    let (csr, _) = make_csr(&["wire.example.com"], CertKey::P256);
    c.finalize(&ready, &csr).await.expect_status(200);
    let valid = c.wait_status(&order_url, &["valid"], T).await;
    let mut with_cert = order_members.to_vec();
    with_cert.push("certificate");
    assert_members("valid order", &valid, &with_cert);
    let pem = c
        .download_cert_pem(valid["certificate"].as_str().expect("certificate"))
        .await;
    let orders = c
        .post_as_get(&format!("{}/orders", c.account_url()))
        .await
        .expect_status(200)
        .json();
    assert_members("orders list", &orders, &["orders"]);

    // renewalInfo, and an order replacing that certificate.
    let cert_id = cairn::ra::cert_id(&pem_to_ders(&pem)[0]).expect("certID");
    let ari = c
        .get(&format!("{}/{cert_id}", c.endpoint("renewalInfo")))
        .await
        .expect_status(200)
        .json();
    assert_members("renewalInfo", &ari, &["suggestedWindow"]);
    assert_members(
        "suggestedWindow",
        &ari["suggestedWindow"],
        &["end", "start"],
    );
    let mut payload = AcmeClient::order_payload(&["wire.example.com"]);
    payload["replaces"] = json!(cert_id);
    let r = c.new_order_raw(payload).await.expect_status(201);
    let mut with_replaces = order_members.to_vec();
    with_replaces.push("replaces");
    assert_members("replacing order", &r.json(), &with_replaces);

    // A wildcard authorization says so.
    let (_, order) = c.new_order(&["*.wire.example.com"]).await;
    let authz = c
        .post_as_get(&AcmeClient::authz_urls(&order)[0])
        .await
        .expect_status(200)
        .json();
    let mut with_wildcard = authz_members.to_vec();
    with_wildcard.push("wildcard");
    assert_members("wildcard authz", &authz, &with_wildcard);

    // Invalid: the challenge and the order gain `error` (the challenge keeps
    // when it was tried in `validated`, with no records).
    let (order_url, order) = c.new_order(&["wire-fails.example.com"]).await;
    let (authz_url, ch) = first_challenge(&c, &order, "http-01").await;
    answer(&c, &authz_url, &ch).await;
    c.wait_status(&authz_url, &["invalid"], T).await;
    let ch = c
        .post_as_get(ch["url"].as_str().expect("url"))
        .await
        .expect_status(200)
        .json();
    assert_members(
        "invalid challenge",
        &ch,
        &["error", "status", "token", "type", "url", "validated"],
    );
    let invalid = c.wait_status(&order_url, &["invalid"], T).await;
    let mut with_error = order_members.to_vec();
    with_error.push("error");
    assert_members("invalid order", &invalid, &with_error);
}
