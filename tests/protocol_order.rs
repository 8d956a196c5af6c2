//! RFC 8555 protocol tests, part 2: orders, authorizations, challenges, finalize and
//! certificates (§7.4, §7.5), with `always_valid` so validation is not the point, and
//! the walls between accounts.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(15);

async fn client(server: &Server) -> AcmeClient {
    let c = AcmeClient::new(server, KeyKind::Es256).await;
    c.register().await;
    c
}

fn is_rfc3339(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
    })
}

fn ids(order: &Value) -> Vec<String> {
    let mut v: Vec<String> = order["identifiers"]
        .as_array()
        .unwrap_or_else(|| panic!("order without identifiers: {order}"))
        .iter()
        .map(|i| {
            assert_eq!(i["type"], "dns", "{order}");
            i["value"].as_str().expect("identifier value").to_string()
        })
        .collect();
    v.sort();
    v
}

/// A URL with its last path segment replaced: the same kind of resource, not existing.
fn sibling_url(url: &str) -> String {
    let (head, _) = url.rsplit_once('/').expect("URL has a path");
    format!("{head}/0nonexistent0")
}

#[tokio::test]
async fn new_order_single_name() {
    let server = Server::start(ServerOpts::test());
    let c = client(&server).await;
    let r = c
        .new_order_raw(AcmeClient::order_payload(&["single.example.com"]))
        .await;
    assert_eq!(r.status, 201, "{r}");
    let order_url = r
        .location()
        .unwrap_or_else(|| panic!("newOrder without Location: {r}"));
    assert!(r.nonce().is_some(), "{r}");
    assert_index_link(&r, &server.dir_url);
    let order = r.json();
    assert_eq!(order["status"], "pending", "{order}");
    assert!(is_rfc3339(&order["expires"]), "order expires: {order}");
    assert_eq!(ids(&order), vec!["single.example.com"]);
    assert!(
        order["finalize"]
            .as_str()
            .is_some_and(|u| u.starts_with(&server.base_url)),
        "{order}"
    );
    assert!(
        order.get("certificate").is_none() || order["certificate"].is_null(),
        "{order}"
    );
    let authzs = AcmeClient::authz_urls(&order);
    assert_eq!(authzs.len(), 1, "{order}");

    // The order URL returns the same order.
    let r = c.post_as_get(&order_url).await;
    assert_eq!(r.status, 200, "{r}");
    assert_index_link(&r, &server.dir_url);
    let again = r.json();
    assert_eq!(again["status"], "pending");
    assert_eq!(again["authorizations"], order["authorizations"]);
    assert_eq!(again["finalize"], order["finalize"]);

    // The authorization: pending, one challenge of each type, distinct strong tokens.
    let r = c.post_as_get(&authzs[0]).await;
    assert_eq!(r.status, 200, "{r}");
    assert_index_link(&r, &server.dir_url);
    assert!(
        r.retry_after().is_some(),
        "pending authorization without Retry-After: {r}"
    );
    let authz = r.json();
    assert_eq!(authz["status"], "pending", "{authz}");
    assert_eq!(
        authz["identifier"],
        json!({"type": "dns", "value": "single.example.com"}),
        "{authz}"
    );
    assert!(is_rfc3339(&authz["expires"]), "authz expires: {authz}");
    assert!(
        authz.get("wildcard").is_none() || authz["wildcard"] == false,
        "{authz}"
    );
    let challenges = authz["challenges"]
        .as_array()
        .unwrap_or_else(|| panic!("{authz}"));
    let mut types: Vec<&str> = challenges
        .iter()
        .map(|c| c["type"].as_str().unwrap_or(""))
        .collect();
    types.sort();
    // dns-persist-01: the test preset sets va.dns_persist_issuer_domains.
    assert_eq!(
        types,
        vec!["dns-01", "dns-persist-01", "http-01", "tls-alpn-01"],
        "{authz}"
    );
    let mut tokens = std::collections::HashSet::new();
    for ch in challenges {
        assert_eq!(ch["status"], "pending", "{ch}");
        assert!(
            ch["url"]
                .as_str()
                .is_some_and(|u| u.starts_with(&server.base_url)),
            "{ch}"
        );
        // dns-persist-01 carries an unused token too (for clients that
        // expect one on every challenge): checked like the others.
        let token = ch["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token: {ch}"));
        // RFC 8555 §8.1: at least 128 bits of entropy, base64url.
        assert!(token.len() >= 22, "token too short: {token}");
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "token is not base64url: {token}"
        );
        assert!(tokens.insert(token.to_string()), "tokens repeat: {authz}");
    }
}

/// `*.x` and `x` in one order: two authorizations for `x`, the wildcard one marked and
/// offering only dns-01 (RFC 8555 §7.1.3, §7.4) and dns-persist-01 (its draft, §5).
#[tokio::test]
async fn new_order_wildcard_and_base() {
    let server = Server::start(ServerOpts::test());
    let c = client(&server).await;
    let (_, order) = c
        .new_order(&["*.wild.example.com", "wild.example.com"])
        .await;
    assert_eq!(ids(&order), vec!["*.wild.example.com", "wild.example.com"]);
    let urls = AcmeClient::authz_urls(&order);
    assert_eq!(urls.len(), 2, "{order}");
    let mut saw_wild = false;
    let mut saw_base = false;
    for u in urls {
        let authz = c.post_as_get(&u).await.expect_status(200).json();
        // The authorization's identifier never carries the "*." prefix.
        assert_eq!(
            authz["identifier"],
            json!({"type": "dns", "value": "wild.example.com"}),
            "{authz}"
        );
        let types: Vec<&str> = authz["challenges"]
            .as_array()
            .expect("challenges")
            .iter()
            .map(|c| c["type"].as_str().unwrap_or(""))
            .collect();
        if authz["wildcard"] == true {
            saw_wild = true;
            assert_eq!(
                types,
                vec!["dns-01", "dns-persist-01"],
                "wildcard authz must offer only dns-01 and dns-persist-01: {authz}"
            );
        } else {
            saw_base = true;
            assert!(types.contains(&"http-01"), "{authz}");
        }
    }
    assert!(saw_wild && saw_base);
}

/// At most 100 names per order.
#[tokio::test]
async fn new_order_name_limit() {
    let server = Server::start(ServerOpts::test());
    let c = client(&server).await;
    let names: Vec<String> = (0..101).map(|i| format!("n{i}.example.com")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let r = c.new_order_raw(AcmeClient::order_payload(&refs)).await;
    assert_problem_any(&r, &[(400, "malformed"), (400, "rejectedIdentifier")]);
    let (_, order) = c.new_order(&refs[..100]).await;
    assert_eq!(AcmeClient::authz_urls(&order).len(), 100);
    assert_eq!(ids(&order).len(), 100);
}

#[tokio::test]
async fn new_order_unsupported_identifier_type() {
    let server = Server::start(ServerOpts::test());
    let c = client(&server).await;
    for id in [
        json!({"type": "email", "value": "admin@example.com"}),
        json!({"type": "foo", "value": "example.com"}),
        json!({"type": "DNS", "value": "example.com"}),
    ] {
        let r = c.new_order_raw(json!({"identifiers": [id]})).await;
        assert_problem(&r, 400, "unsupportedIdentifier");
    }
    // One bad type spoils the order even beside a good name.
    let r = c
        .new_order_raw(json!({"identifiers": [
            {"type": "dns", "value": "good.example.com"},
            {"type": "email", "value": "admin@example.com"}
        ]}))
        .await;
    assert_problem_any(
        &r,
        &[(400, "unsupportedIdentifier"), (400, "rejectedIdentifier")],
    );
}

/// `xn--` labels must be A-labels of valid IDNA2008 U-labels (RFC 5891, the
/// Baseline Requirements' P-Label): bad Punycode, a decoded emoji, mixed
/// scripts and non-NFC results are refused with a subproblem naming the
/// label; real IDNs are accepted.
#[tokio::test]
async fn new_order_refuses_malformed_idns() {
    let server = Server::start(ServerOpts::test());
    let c = client(&server).await;
    for (name, label, why) in [
        ("xn--a.test", "xn--a", "IDNA2008"),
        ("xn--ls8h.test", "xn--ls8h", "U+1F4A9"),
        ("xn--zz.example.com", "xn--zz", "Punycode"),
        ("www.xn--pple-43d.com", "xn--pple-43d", "mixes scripts"),
        (
            "xn--ex-8tb.example.com",
            "xn--ex-8tb",
            "Normalization Form C",
        ),
        (
            "xn--109-3veba6djs1bfxlfmx6c9g.xn--f1awi.xn--p1ai",
            "xn--109-3veba6djs1bfxlfmx6c9g",
            "Normalization Form C",
        ),
    ] {
        let r = c.new_order_raw(AcmeClient::order_payload(&[name])).await;
        let p = assert_problem(&r, 400, "rejectedIdentifier");
        let subs = p["subproblems"]
            .as_array()
            .unwrap_or_else(|| panic!("no subproblems: {r}"));
        let sub = subs
            .iter()
            .find(|s| s["identifier"]["value"] == name)
            .unwrap_or_else(|| panic!("no subproblem for {name}: {r}"));
        assert_eq!(
            sub["type"],
            format!("{ERR_NS}rejectedIdentifier"),
            "{name}: {sub}"
        );
        let detail = sub["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(label) && detail.contains(why),
            "{name}: the detail must name {label:?} and say {why:?}: {sub}"
        );
    }
    // Real IDNs, and a label that merely looks reserved elsewhere, pass.
    c.new_order(&["xn--bcher-kva.example.com", "xn--mnchen-3ya.example.com"])
        .await;
}

/// Names the CA will not issue for → 400 rejectedIdentifier, with one subproblem per bad
/// identifier (RFC 8555 §6.7.1).
#[tokio::test]
async fn new_order_rejected_identifiers() {
    let server = Server::start(ServerOpts::test());
    let c = client(&server).await;
    let long_label = format!("{}.example.com", "a".repeat(64));
    let long_name = format!("{}.example.com", ["abcdefghij"; 25].join("."));
    let bad: Vec<&str> = vec![
        "a..b.example.com",
        "-a.example.com",
        "a-.example.com",
        "a_b.example.com",
        &long_label,
        &long_name,
        "trailing.example.com.",
        "*.*.example.com",
        "x.*.example.com",
        "*example.com",
        "co.uk",
        "com",
        "localhost",
        "1.2.3.4",
        "ünicode.example.com",
        "space here.example.com",
        "",
        ".example.com",
    ];
    for name in &bad {
        let r = c.new_order_raw(AcmeClient::order_payload(&[name])).await;
        assert_eq!(r.status, 400, "{name:?} accepted: {r}");
        let p = assert_problem(&r, 400, "rejectedIdentifier");
        let subs = p["subproblems"]
            .as_array()
            .unwrap_or_else(|| panic!("no subproblems: {r}"));
        assert!(
            subs.iter().any(|s| s["identifier"]["value"] == *name),
            "subproblems do not name {name:?}: {r}"
        );
    }
    // Several bad names beside a good one: one subproblem for each bad name.
    let mix = [
        "ok.example.com",
        "a..b.example.com",
        "a_b.example.com",
        "co.uk",
    ];
    let r = c.new_order_raw(AcmeClient::order_payload(&mix)).await;
    let p = assert_problem(&r, 400, "rejectedIdentifier");
    let subs = p["subproblems"]
        .as_array()
        .unwrap_or_else(|| panic!("no subproblems: {r}"));
    for name in &mix[1..] {
        let sub = subs
            .iter()
            .find(|s| s["identifier"]["value"] == *name)
            .unwrap_or_else(|| panic!("no subproblem for {name}: {r}"));
        assert_eq!(sub["identifier"]["type"], "dns", "{sub}");
        assert!(
            sub["type"].as_str().is_some_and(|t| t.starts_with(ERR_NS)),
            "subproblem type: {sub}"
        );
        assert!(sub["detail"].is_string(), "subproblem detail: {sub}");
    }
    assert!(
        !subs
            .iter()
            .any(|s| s["identifier"]["value"] == "ok.example.com"),
        "a subproblem for the good name: {r}"
    );
}

#[tokio::test]
async fn new_order_without_identifiers_is_malformed() {
    let server = Server::start(ServerOpts::test());
    let c = client(&server).await;
    for payload in [
        json!({"identifiers": []}),
        json!({}),
        json!({"identifiers": "example.com"}),
        json!({"identifiers": [{"type": "dns"}]}),
        json!({"identifiers": [{"value": "example.com"}]}),
        json!({"identifiers": [{"type": "dns", "value": 42}]}),
    ] {
        let r = c.new_order_raw(payload.clone()).await;
        let p = assert_problem_any(
            &r,
            &[
                (400, "malformed"),
                (400, "rejectedIdentifier"),
                (400, "unsupportedIdentifier"),
            ],
        );
        if payload == json!({"identifiers": []}) || payload == json!({}) {
            assert_eq!(p["type"], format!("{ERR_NS}malformed"), "{payload}: {r}");
        }
    }
    // POST-as-GET to newOrder.
    let r = c.post_as_get(&c.endpoint("newOrder")).await;
    assert_problem(&r, 400, "malformed");
}

/// The same name twice is one identifier and one authorization.
#[tokio::test]
async fn new_order_deduplicates_names() {
    let server = Server::start(ServerOpts::test());
    let c = client(&server).await;
    let (_, order) = c
        .new_order(&["dup.example.com", "other.example.com", "dup.example.com"])
        .await;
    assert_eq!(ids(&order), vec!["dup.example.com", "other.example.com"]);
    assert_eq!(AcmeClient::authz_urls(&order).len(), 2, "{order}");
}

/// Fields clients send that newOrder does not define are ignored (CLIENTS.md).
#[tokio::test]
async fn new_order_ignores_extra_fields() {
    let server = Server::start(ServerOpts::test());
    let c = client(&server).await;
    let r = c
        .new_order_raw(json!({
            "identifiers": [{"type": "dns", "value": "extra.example.com"}],
            "authorizations": null,
            "status": "",
            "expires": "0001-01-01T00:00:00Z",
            "finalize": "",
            "someExtension": true,
        }))
        .await;
    assert_eq!(r.status, 201, "{r}");
    assert_eq!(r.json()["status"], "pending", "{r}");
}

/// Reads are POST-as-GET with an empty payload; `{}` where a read is meant is malformed.
#[tokio::test]
async fn post_as_get_with_payload_is_malformed() {
    let server = Server::start(ServerOpts::always_valid());
    let c = client(&server).await;
    let (csr, _) = make_csr(&["pag.example.com"], CertKey::P256);
    let (order_url, order, _) = c.issue_always_valid(&["pag.example.com"], &csr).await;
    let r = c.post(&order_url, Some(json!({}))).await;
    assert_problem(&r, 400, "malformed");
    let cert_url = order["certificate"].as_str().expect("certificate");
    let r = c.post(cert_url, Some(json!({}))).await;
    assert_problem(&r, 400, "malformed");
    // The orders list too.
    let acct = c
        .post_as_get(&c.account_url())
        .await
        .expect_status(200)
        .json();
    let r = c
        .post(acct["orders"].as_str().expect("orders"), Some(json!({})))
        .await;
    assert_problem(&r, 400, "malformed");
}

/// A plain GET on a POST-as-GET resource is refused cleanly (never 5xx, never the data).
#[tokio::test]
async fn plain_get_on_order_is_refused() {
    let server = Server::start(ServerOpts::test());
    let c = client(&server).await;
    let (order_url, order) = c.new_order(&["get.example.com"]).await;
    for url in [
        order_url.clone(),
        AcmeClient::authz_urls(&order)[0].clone(),
        c.account_url(),
    ] {
        let r = c.get(&url).await;
        assert!(r.status == 405 || r.status == 400 || r.status == 404, "{r}");
        assert_problem_shape(&r);
        assert!(
            !r.text().contains("get.example.com"),
            "plain GET reveals the resource: {r}"
        );
    }
}

/// A POST-as-GET on a challenge reads it; only `{}` starts validation.
#[tokio::test]
async fn challenge_post_as_get_does_not_start_validation() {
    let server = Server::start(ServerOpts::always_valid());
    let c = client(&server).await;
    let (order_url, order) = c.new_order(&["read.example.com"]).await;
    let authz_url = &AcmeClient::authz_urls(&order)[0];
    let authz = c.post_as_get(authz_url).await.expect_status(200).json();
    let ch = AcmeClient::challenge(&authz, "http-01").expect("http-01");
    let ch_url = ch["url"].as_str().expect("url");
    let r = c.post_as_get(ch_url).await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json()["status"], "pending", "{r}");
    assert_eq!(
        r.link("up").as_deref(),
        Some(authz_url.as_str()),
        "challenge Link rel=up: {r}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let authz = c.post_as_get(authz_url).await.expect_status(200).json();
    assert_eq!(
        authz["status"], "pending",
        "POST-as-GET started validation: {authz}"
    );
    let order = c.post_as_get(&order_url).await.expect_status(200).json();
    assert_eq!(order["status"], "pending", "{order}");
}

/// pending → (challenge) → ready → (finalize) → processing → valid, with every header
/// the RFC and the clients rely on along the way.
#[tokio::test]
async fn order_lifecycle_to_certificate() {
    let server = Server::start(ServerOpts::always_valid());
    let c = client(&server).await;
    let names = ["life.example.com", "www.life.example.com"];
    let (order_url, order) = c.new_order(&names).await;
    assert_eq!(order["status"], "pending");

    // Finalize too early.
    let (csr, key) = make_csr(&names, CertKey::P256);
    let r = c.finalize(&order, &csr).await;
    assert_problem(&r, 403, "orderNotReady");

    for authz_url in AcmeClient::authz_urls(&order) {
        let authz = c.post_as_get(&authz_url).await.expect_status(200).json();
        let ch = AcmeClient::challenge(&authz, "http-01").expect("http-01");
        let ch_url = ch["url"].as_str().expect("url");
        let r = c.post(ch_url, Some(json!({}))).await;
        assert_eq!(r.status, 200, "{r}");
        assert!(r.nonce().is_some(), "{r}");
        assert_index_link(&r, &server.dir_url);
        assert_eq!(
            r.link("up").as_deref(),
            Some(authz_url.as_str()),
            "challenge Link rel=up: {r}"
        );
        let body = r.json();
        assert_eq!(body["type"], "http-01", "{body}");
        assert_eq!(body["url"], ch["url"], "{body}");
        assert_eq!(body["token"], ch["token"], "{body}");
        let st = body["status"].as_str().unwrap_or("");
        assert!(
            st == "processing" || st == "valid",
            "challenge after POST {{}}: {body}"
        );
        if st == "processing" {
            assert!(
                r.retry_after().is_some(),
                "processing challenge without Retry-After: {r}"
            );
        }
        let authz = c.wait_status(&authz_url, &["valid"], T).await;
        let ch = AcmeClient::challenge(&authz, "http-01").expect("http-01");
        assert_eq!(ch["status"], "valid", "{authz}");
        assert!(
            is_rfc3339(&ch["validated"]),
            "valid challenge without validated: {ch}"
        );
        let r = c.post_as_get(ch["url"].as_str().expect("url")).await;
        assert_eq!(r.json()["status"], "valid", "{r}");
    }
    let order = c.wait_status(&order_url, &["ready"], T).await;

    let r = c.finalize(&order, &csr).await;
    assert_eq!(r.status, 200, "finalize: {r}");
    assert_eq!(
        r.location().as_deref(),
        Some(order_url.as_str()),
        "finalize Location: {r}"
    );
    assert!(r.nonce().is_some(), "{r}");
    let body = r.json();
    let st = body["status"].as_str().unwrap_or("");
    assert!(
        st == "processing" || st == "valid",
        "order after finalize: {body}"
    );
    if st == "processing" {
        assert!(
            r.retry_after().is_some(),
            "processing order without Retry-After: {r}"
        );
    }
    let order = c.wait_status(&order_url, &["valid"], T).await;
    let cert_url = order["certificate"]
        .as_str()
        .unwrap_or_else(|| panic!("{order}"))
        .to_string();
    assert!(cert_url.starts_with(&server.base_url), "{cert_url}");

    let r = c.download_cert(&cert_url).await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(
        r.content_type().as_deref(),
        Some("application/pem-certificate-chain"),
        "{r}"
    );
    assert!(r.nonce().is_some(), "{r}");
    assert_index_link(&r, &server.dir_url);
    assert!(
        r.link("up").is_some(),
        "certificate without Link rel=up to its issuer: {r}"
    );
    let pem = r.text();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let ders = pem_to_ders(&pem);
    assert!(ders.len() >= 2, "chain without an intermediate: {pem}");
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(verify_chain(&pem, &server.root_pem()), want);
    assert_eq!(
        cert_spki(&ders[0]),
        spki_der(&key),
        "certificate key differs from the CSR's"
    );

    // The order is done: finalizing again is refused.
    let r = c.finalize(&order, &csr).await;
    assert_problem(&r, 403, "orderNotReady");
    // And the account's order list has it.
    let acct = c
        .post_as_get(&c.account_url())
        .await
        .expect_status(200)
        .json();
    let list = c
        .post_as_get(acct["orders"].as_str().expect("orders"))
        .await
        .expect_status(200)
        .json();
    assert!(
        list["orders"]
            .as_array()
            .expect("orders")
            .iter()
            .any(|o| *o == order_url),
        "{list}"
    );
}

/// Certificates for every common key type carry the CSR's SubjectPublicKeyInfo byte for
/// byte (CLIENTS.md: one server broke P-384).
#[tokio::test]
async fn certificates_for_every_key_type() {
    let server = Server::start(ServerOpts::always_valid());
    let c = client(&server).await;
    let root = server.root_pem();
    for (i, kind) in [CertKey::Rsa(2048), CertKey::P256, CertKey::P384]
        .into_iter()
        .enumerate()
    {
        let name = format!("k{i}.example.com");
        let (csr, key) = make_csr(&[&name], kind);
        let (_, _, pem) = c.issue_always_valid(&[&name], &csr).await;
        assert_eq!(verify_chain(&pem, &root), vec![name.clone()], "{kind:?}");
        let ders = pem_to_ders(&pem);
        assert_eq!(
            cert_spki(&ders[0]),
            spki_der(&key),
            "{kind:?}: SPKI differs from the CSR's"
        );
    }
}

/// A wildcard and its base name in one certificate.
#[tokio::test]
async fn wildcard_certificate() {
    let server = Server::start(ServerOpts::always_valid());
    let c = client(&server).await;
    let names = ["*.wc.example.com", "wc.example.com"];
    let (csr, _) = make_csr(&names, CertKey::P256);
    let (_, _, pem) = c.issue_always_valid(&names, &csr).await;
    assert_eq!(
        verify_chain(&pem, &server.root_pem()),
        vec!["*.wc.example.com", "wc.example.com"]
    );
}

/// RFC 8555 §7.5.2: a deactivated authorization makes its order invalid.
#[tokio::test]
async fn authz_deactivation_invalidates_order() {
    let server = Server::start(ServerOpts::always_valid());
    let c = client(&server).await;
    let (order_url, order) = c.new_order(&["deauth.example.com"]).await;
    let authz_url = AcmeClient::authz_urls(&order)[0].clone();
    let r = c
        .post(&authz_url, Some(json!({"status": "deactivated"})))
        .await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json()["status"], "deactivated", "{r}");
    let authz = c.post_as_get(&authz_url).await.expect_status(200).json();
    assert_eq!(authz["status"], "deactivated", "{authz}");
    let order = c.wait_status(&order_url, &["invalid"], T).await;
    assert_eq!(order["status"], "invalid");

    // A challenge of a deactivated authorization cannot be answered into validity.
    let ch = AcmeClient::challenge(&authz, "http-01").expect("http-01");
    let r = c
        .post(ch["url"].as_str().expect("url"), Some(json!({})))
        .await;
    if r.status >= 400 {
        assert_problem_shape(&r);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let authz = c.post_as_get(&authz_url).await.expect_status(200).json();
    assert_eq!(authz["status"], "deactivated", "{authz}");
    // Finalizing the invalid order is refused.
    let (csr, _) = make_csr(&["deauth.example.com"], CertKey::P256);
    let r = c.finalize(&order, &csr).await;
    assert_problem(&r, 403, "orderNotReady");
}

/// A valid authorization can be deactivated too; other status values are refused.
#[tokio::test]
async fn authz_update_rules() {
    let server = Server::start(ServerOpts::always_valid());
    let c = client(&server).await;
    let (order_url, order) = c.new_order(&["upd.example.com"]).await;
    let authz_url = AcmeClient::authz_urls(&order)[0].clone();
    for status in ["valid", "invalid", "revoked", "pending"] {
        let r = c.post(&authz_url, Some(json!({"status": status}))).await;
        assert_problem(&r, 400, "malformed");
    }
    let r = c.post(&authz_url, Some(json!({"foo": "bar"}))).await;
    assert_problem(&r, 400, "malformed");
    c.authorize_always_valid(&order_url, &order).await;
    let r = c
        .post(&authz_url, Some(json!({"status": "deactivated"})))
        .await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json()["status"], "deactivated", "{r}");
}

/// Every kind of bad CSR, a key Cairn will not certify included → badCSR, and the order
/// stays ready so a good CSR still works.
#[tokio::test]
async fn finalize_refuses_bad_csrs() {
    let server = Server::start(ServerOpts::always_valid());
    let c = client(&server).await;
    let names = ["f.example.com", "g.example.com"];
    let (order_url, order) = c.new_order(&names).await;
    let order = c.authorize_always_valid(&order_url, &order).await;
    let fin = order["finalize"].as_str().expect("finalize").to_string();

    let p256 = || gen_cert_key(CertKey::P256);
    let mut tampered = csr_der(&names, &p256());
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"garbage".to_vec()),
        ("empty", Vec::new()),
        ("wrong names", csr_der(&["h.example.com"], &p256())),
        ("missing a name", csr_der(&["f.example.com"], &p256())),
        (
            "extra name",
            csr_der(
                &["f.example.com", "g.example.com", "h.example.com"],
                &p256(),
            ),
        ),
        (
            "CN not among the names",
            csr_der_with_cn(&names, Some("h.example.com"), &p256()),
        ),
        ("no names at all", csr_der_with_cn(&[], None, &p256())),
        ("bad signature", tampered),
        (
            "account key as certificate key",
            csr_der(&names, &c.key().openssl_pkey()),
        ),
    ];
    for (label, csr) in cases {
        let r = c.finalize(&order, &csr).await;
        assert_eq!(r.status, 400, "CSR case {label:?}: {r}");
        assert_problem(&r, 400, "badCSR");
    }
    // A key Cairn will not certify makes the CSR unacceptable (RFC 8555 §7.4:
    // badCSR); badPublicKey is for the JWS key.
    let p521 = {
        let group =
            openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::SECP521R1).expect("P-521");
        openssl::pkey::PKey::from_ec_key(openssl::ec::EcKey::generate(&group).expect("key"))
            .expect("PKey")
    };
    let e3 = openssl::pkey::PKey::from_rsa(
        openssl::rsa::Rsa::generate_with_e(2048, &openssl::bn::BigNum::from_u32(3).expect("3"))
            .expect("RSA e=3"),
    )
    .expect("PKey");
    let weak_keys = [
        ("RSA-1024", gen_cert_key(CertKey::Rsa(1024))),
        ("P-521", p521),
        ("RSA e=3", e3),
        ("Ed25519", gen_cert_key(CertKey::Ed25519)),
    ];
    for (label, key) in weak_keys {
        let r = c.finalize(&order, &csr_der(&names, &key)).await;
        assert_eq!(r.status, 400, "{label}: {r}");
        assert_problem(&r, 400, "badCSR");
    }

    // Not base64url, missing, wrong type.
    for payload in [
        json!({"csr": "!!!not base64!!!"}),
        json!({}),
        json!({"csr": 5}),
    ] {
        let r = c.post(&fin, Some(payload)).await;
        assert_problem_any(&r, &[(400, "malformed"), (400, "badCSR")]);
    }

    let order_now = c.post_as_get(&order_url).await.expect_status(200).json();
    assert_eq!(
        order_now["status"], "ready",
        "a refused CSR must leave the order ready: {order_now}"
    );
    let (csr, _) = make_csr(&["g.example.com", "f.example.com"], CertKey::P384);
    let r = c.finalize(&order, &csr).await;
    assert_eq!(r.status, 200, "{r}");
    let order = c.wait_status(&order_url, &["valid"], T).await;
    let pem = c
        .download_cert_pem(order["certificate"].as_str().expect("certificate"))
        .await;
    assert_eq!(
        verify_chain(&pem, &server.root_pem()),
        vec!["f.example.com", "g.example.com"]
    );
}

/// Another account's order, authorization, challenge, finalize and certificate URLs are
/// 404, indistinguishable from URLs that do not exist, and nothing changes.
#[tokio::test]
async fn other_accounts_resources_are_hidden() {
    let server = Server::start(ServerOpts::always_valid());
    let a = client(&server).await;
    let (csr, _) = make_csr(&["secret-a.example.com"], CertKey::P256);
    let (done_url, done, _) = a.issue_always_valid(&["secret-a.example.com"], &csr).await;
    let cert_url = done["certificate"]
        .as_str()
        .expect("certificate")
        .to_string();
    let done_authz = AcmeClient::authz_urls(&done)[0].clone();
    let done_authz_obj = a.post_as_get(&done_authz).await.expect_status(200).json();
    let done_chall = AcmeClient::challenge(&done_authz_obj, "http-01").expect("http-01")["url"]
        .as_str()
        .expect("url")
        .to_string();
    let (pending_url, pending) = a.new_order(&["secret-b.example.com"]).await;
    let pending_authz = AcmeClient::authz_urls(&pending)[0].clone();
    let pending_authz_obj = a
        .post_as_get(&pending_authz)
        .await
        .expect_status(200)
        .json();
    let pending_chall = AcmeClient::challenge(&pending_authz_obj, "http-01").expect("http-01")
        ["url"]
        .as_str()
        .expect("url")
        .to_string();
    let (ready_url, ready) = a.new_order(&["secret-c.example.com"]).await;
    let ready = a.authorize_always_valid(&ready_url, &ready).await;

    let b = client(&server).await;
    let a_acct = a.account_url();
    let hidden = |r: &AcmeResponse| {
        assert_eq!(r.status, 404, "another account's resource must be 404: {r}");
        let p = assert_problem_shape(r);
        let t = r.text();
        assert!(!t.contains("secret-"), "404 reveals identifiers: {r}");
        assert!(!t.contains(&a_acct), "404 reveals the owner: {r}");
        p
    };
    let reads = [
        &done_url,
        &done_authz,
        &done_chall,
        &cert_url,
        &pending_url,
        &pending_authz,
        &pending_chall,
    ];
    for url in reads {
        let r = b.post_as_get(url).await;
        let p = hidden(&r);
        let n = b.post_as_get(&sibling_url(url)).await;
        if n.status == 404 {
            assert_eq!(
                p["type"],
                assert_problem_shape(&n)["type"],
                "differs from a missing resource:\n{r}\n{n}"
            );
        }
    }
    // Writes: answer A's challenge, deactivate A's authorization, finalize A's order.
    let r = b.post(&pending_chall, Some(json!({}))).await;
    hidden(&r);
    let r = b
        .post(&pending_authz, Some(json!({"status": "deactivated"})))
        .await;
    hidden(&r);
    let (csr, _) = make_csr(&["secret-c.example.com"], CertKey::P256);
    let r = b.finalize(&ready, &csr).await;
    hidden(&r);

    // Nothing moved for A.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let authz = a
        .post_as_get(&pending_authz)
        .await
        .expect_status(200)
        .json();
    assert_eq!(authz["status"], "pending", "{authz}");
    let ch = a
        .post_as_get(&pending_chall)
        .await
        .expect_status(200)
        .json();
    assert_eq!(ch["status"], "pending", "{ch}");
    let o = a.post_as_get(&ready_url).await.expect_status(200).json();
    assert_eq!(o["status"], "ready", "{o}");
    // B's order list does not include A's orders.
    let bacct = b
        .post_as_get(&b.account_url())
        .await
        .expect_status(200)
        .json();
    let list = b
        .post_as_get(bacct["orders"].as_str().expect("orders"))
        .await
        .expect_status(200)
        .json();
    assert_eq!(list["orders"], json!([]), "{list}");
}

/// Several finalize requests racing on one ready order: no 5xx, and the order ends valid
/// with one certificate whose key is one of the CSRs' (DESIGN: one certificate per
/// finalize is a database constraint).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_finalize_issues_one_certificate() {
    let server = Server::start(ServerOpts::always_valid());
    let c = std::sync::Arc::new(client(&server).await);
    let (order_url, order) = c.new_order(&["race.example.com"]).await;
    let order = c.authorize_always_valid(&order_url, &order).await;
    let mut tasks = Vec::new();
    let mut spkis = Vec::new();
    for _ in 0..6 {
        let (csr, key) = make_csr(&["race.example.com"], CertKey::P256);
        spkis.push(spki_der(&key));
        // Sign each request with its own fresh nonce before sending any of them.
        let fin = order["finalize"].as_str().expect("finalize").to_string();
        let h = json!({
            "alg": "ES256",
            "kid": c.account_url(),
            "nonce": c.fresh_nonce().await,
            "url": fin,
        });
        let body = jws(
            &h,
            json!({"csr": b64u(&csr)}).to_string().as_bytes(),
            &c.key(),
        );
        let c = c.clone();
        tasks.push(tokio::spawn(async move { c.post_jws(&fin, &body).await }));
    }
    let mut ok = 0;
    for t in tasks {
        let r = t.await.expect("task");
        if r.status == 200 {
            ok += 1;
        } else {
            assert_problem(&r, 403, "orderNotReady");
        }
    }
    assert!(ok >= 1, "no finalize succeeded");
    let order = c.wait_status(&order_url, &["valid"], T).await;
    let pem = c
        .download_cert_pem(order["certificate"].as_str().expect("certificate"))
        .await;
    let ders = pem_to_ders(&pem);
    assert!(
        spkis.contains(&cert_spki(&ders[0])),
        "certificate key is none of the CSRs'"
    );
    let again = c.post_as_get(&order_url).await.expect_status(200).json();
    assert_eq!(
        again["certificate"], order["certificate"],
        "the certificate URL changed"
    );
}

/// Answering a challenge again (while processing or once valid) never breaks anything.
#[tokio::test]
async fn challenge_answered_twice() {
    let server = Server::start(ServerOpts::always_valid());
    let c = client(&server).await;
    let (order_url, order) = c.new_order(&["twice.example.com"]).await;
    let authz_url = AcmeClient::authz_urls(&order)[0].clone();
    let authz = c.post_as_get(&authz_url).await.expect_status(200).json();
    let ch_url = AcmeClient::challenge(&authz, "http-01").expect("http-01")["url"]
        .as_str()
        .expect("url")
        .to_string();
    c.post(&ch_url, Some(json!({}))).await.expect_status(200);
    let r = c.post(&ch_url, Some(json!({}))).await;
    if r.status != 200 {
        assert_problem_shape(&r);
    }
    c.wait_status(&authz_url, &["valid"], T).await;
    let r = c.post(&ch_url, Some(json!({}))).await;
    if r.status == 200 {
        assert_eq!(r.json()["status"], "valid", "{r}");
    } else {
        assert_problem_shape(&r);
    }
    // Another challenge of a valid authorization cannot be started into a new state.
    let dns_url = AcmeClient::challenge(&authz, "dns-01").expect("dns-01")["url"]
        .as_str()
        .expect("url")
        .to_string();
    let r = c.post(&dns_url, Some(json!({}))).await;
    if r.status != 200 {
        assert_problem_shape(&r);
    }
    let authz = c.post_as_get(&authz_url).await.expect_status(200).json();
    assert_eq!(authz["status"], "valid", "{authz}");
    c.wait_status(&order_url, &["ready"], T).await;
}

/// The management listener serves the root and the intermediate; the certificate's
/// `Link: rel="up"` leads to the intermediate that issued it.
#[tokio::test]
async fn issuer_and_roots_are_served() {
    let server = Server::start(ServerOpts::always_valid());
    let c = client(&server).await;
    let (csr, _) = make_csr(&["up.example.com"], CertKey::P256);
    let (_, order, _) = c.issue_always_valid(&["up.example.com"], &csr).await;
    let r = c
        .download_cert(order["certificate"].as_str().expect("certificate"))
        .await;
    let chain = pem_to_ders(&r.text());
    let leaf = x509_parser::parse_x509_certificate(&chain[0])
        .expect("leaf")
        .1;
    // Validity as configured for the test preset (cert_validity_secs = 90 days).
    let secs = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!(
        secs > 0 && secs <= 7_776_000 + 3600,
        "leaf validity {secs}s"
    );

    let http = server.http_client();
    let get = |url: String| {
        let http = http.clone();
        async move {
            let resp = http
                .get(&url)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}"));
            AcmeResponse::read("GET", &url, resp).await
        }
    };
    let root = get(format!("{}/roots/0", server.mgmt_url)).await;
    assert_eq!(root.status, 200, "{root}");
    assert_eq!(
        pem_to_ders(&root.text()),
        pem_to_ders(&server.root_pem()),
        "/roots/0 is not root.pem"
    );
    let inter = get(format!("{}/intermediates/0", server.mgmt_url)).await;
    assert_eq!(inter.status, 200, "{inter}");
    assert_eq!(
        pem_to_ders(&inter.text()),
        vec![chain[1].clone()],
        "/intermediates/0 is not the chain's issuer"
    );

    let up_url = r
        .link("up")
        .unwrap_or_else(|| panic!("no Link rel=up: {r}"));
    let up = get(up_url).await;
    assert_eq!(up.status, 200, "{up}");
    let issuer = if up.body.starts_with(b"-----BEGIN") {
        pem_to_ders(&up.text()).remove(0)
    } else {
        up.body.clone()
    };
    assert_eq!(
        issuer, chain[1],
        "Link rel=up does not lead to the issuer: {up}"
    );
}

/// RFC 8555 §6.3: a client reads every resource with POST-as-GET, so every
/// URL Cairn puts in a `Link` header must answer one (Caddy follows the
/// certificate's `rel="up"` that way, and retried forever on a 405). A full
/// issuance, with enough orders to page the account's list, collects every
/// link (`index`, `up`, `next`, `terms-of-service`); each is then read with
/// POST-as-GET, and the links of those answers too, and must answer 200.
#[tokio::test]
async fn every_link_answers_post_as_get() {
    let server = Server::start(ServerOpts::always_valid());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    let names = ["links.example.com"];
    let mut seen = vec![c.new_account(&[], true).await.expect_status(201)];
    let r = c
        .new_order_raw(AcmeClient::order_payload(&names))
        .await
        .expect_status(201);
    let order_url = r.location().expect("order Location");
    let order = r.json();
    seen.push(r);
    for authz_url in AcmeClient::authz_urls(&order) {
        let r = c.post_as_get(&authz_url).await.expect_status(200);
        let ch = AcmeClient::challenge(&r.json(), "http-01")
            .expect("an http-01 challenge")
            .clone();
        seen.push(r);
        let url = ch["url"].as_str().expect("challenge url");
        seen.push(c.post(url, Some(json!({}))).await.expect_status(200));
        seen.push(c.post_as_get(url).await.expect_status(200));
    }
    c.wait_status(&order_url, &["ready"], T).await;
    let (csr, _) = make_csr(&names, CertKey::P256);
    let r = c.finalize(&order, &csr).await.expect_status(200);
    seen.push(r);
    let order = c.wait_status(&order_url, &["valid"], T).await;
    seen.push(c.post_as_get(&order_url).await.expect_status(200));
    let cert_url = order["certificate"].as_str().expect("certificate URL");
    let cert = c.download_cert(cert_url).await.expect_status(200);
    let chain = pem_to_ders(&cert.text());
    seen.push(cert);
    // The test preset pages orders by 3: four orders make a second page.
    for i in 0..3 {
        c.new_order(&[&format!("page{i}.example.com")]).await;
    }
    let account = c.post_as_get(&c.account_url()).await.expect_status(200);
    let orders_url = account.json()["orders"]
        .as_str()
        .expect("account orders URL")
        .to_string();
    seen.push(account);
    seen.push(c.post_as_get(&orders_url).await.expect_status(200));

    // Follow every link, and every link of what they answer, once each.
    let mut rels_seen = std::collections::BTreeSet::new();
    let mut followed = std::collections::BTreeSet::new();
    let mut failures = vec![];
    while let Some(r) = seen.pop() {
        for (url, rels) in r.header_all("link").iter().flat_map(|h| parse_links(h)) {
            rels_seen.extend(rels.iter().cloned());
            if !followed.insert(url.clone()) {
                continue;
            }
            let answer = c.post_as_get(&url).await;
            if answer.status == 200 {
                seen.push(answer);
            } else {
                failures.push(format!("{rels:?} from {} {}:\n{answer}", r.method, r.url));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "links that do not answer POST-as-GET:\n{}",
        failures.join("\n")
    );
    for rel in ["index", "up", "next", "terms-of-service"] {
        assert!(
            rels_seen.contains(rel),
            "no rel={rel:?} link seen (followed {followed:?})"
        );
    }

    // What the directory and the issuer answer is what a GET gets.
    let http = server.http_client();
    let get = |url: String| {
        let http = http.clone();
        async move {
            let resp = http
                .get(&url)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}"));
            AcmeResponse::read("GET", &url, resp).await
        }
    };
    let dir = c.post_as_get(&server.dir_url).await.expect_status(200);
    assert_eq!(dir.json(), *c.directory(), "POST-as-GET of the directory");
    let issuer_url = format!("{}/acme/issuer/0", server.base_url);
    let issuer = c.post_as_get(&issuer_url).await.expect_status(200);
    assert_eq!(
        issuer.content_type().as_deref(),
        Some("application/pem-certificate-chain"),
        "{issuer}"
    );
    assert_eq!(pem_to_ders(&issuer.text()), vec![chain[1].clone()]);
    assert_eq!(get(issuer_url.clone()).await.body, issuer.body);

    // A POST there is still authenticated and still a read.
    let r = c.post(&issuer_url, Some(json!({}))).await;
    assert_problem(&r, 400, "malformed");
    let r = c.post_jwk(&server.dir_url, None).await;
    assert_problem(&r, 400, "malformed");
    let mut forged = jws(
        &json!({"alg": "ES256", "kid": c.account_url(), "nonce": c.nonce().await, "url": issuer_url}),
        b"",
        &c.key(),
    );
    corrupt_signature(&mut forged);
    let r = c.post_jws(&issuer_url, &forged).await;
    assert_problem_any(&r, &[(400, "malformed"), (403, "unauthorized")]);
}
