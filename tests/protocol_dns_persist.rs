//! dns-persist-01 (draft-ietf-acme-dns-persist-01) end to end: a scripted client, a
//! standing TXT record at `_validation-persist.<name>` served by `cairn testdns`, and
//! the real server validating through it. No installed client speaks the method yet.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);
/// The `test` preset's `va.dns_persist_issuer_domains`.
const ISSUER: &str = "cairn.localhost";

async fn setup_with(opts: ServerOpts) -> (TestDns, Server, AcmeClient) {
    let dns = TestDns::start();
    let server = Server::start(opts.with_dns(dns.dns_addr));
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    c.register().await;
    (dns, server, c)
}

async fn setup() -> (TestDns, Server, AcmeClient) {
    setup_with(ServerOpts::test()).await
}

/// The record the draft's §4.1 asks for: issuer, then this account's URL.
fn record(c: &AcmeClient, extra: &str) -> String {
    format!("{ISSUER}; accounturi={}{extra}", c.account_url())
}

fn types(authz: &Value) -> Vec<String> {
    let mut t: Vec<String> = authz["challenges"]
        .as_array()
        .unwrap_or_else(|| panic!("no challenges: {authz}"))
        .iter()
        .map(|c| c["type"].as_str().unwrap_or("").to_string())
        .collect();
    t.sort();
    t
}

/// Every authorization of the order, and its dns-persist-01 challenge.
async fn persist_challenges(c: &AcmeClient, order: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for url in AcmeClient::authz_urls(order) {
        let authz = c.post_as_get(&url).await.expect_status(200).json();
        let ch = AcmeClient::challenge(&authz, "dns-persist-01")
            .unwrap_or_else(|| panic!("no dns-persist-01 challenge: {authz}"))
            .clone();
        out.push((url, ch));
    }
    out
}

/// POSTs `{}` to the challenge (RFC 8555 §7.5.1; draft §4).
async fn answer(c: &AcmeClient, ch: &Value) {
    let r = c
        .post(ch["url"].as_str().expect("challenge url"), Some(json!({})))
        .await;
    assert_eq!(r.status, 200, "{r}");
}

/// Answers every authorization's dns-persist-01 challenge and waits for each to settle.
async fn validate_all(c: &AcmeClient, order: &Value) -> Vec<Value> {
    let chs = persist_challenges(c, order).await;
    for (_, ch) in &chs {
        answer(c, ch).await;
    }
    let mut out = Vec::new();
    for (url, _) in &chs {
        out.push(c.wait_status(url, &["valid", "invalid"], T).await);
    }
    out
}

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

/// The challenge object is the draft's §3.1: type, url, status and
/// `issuer-domain-names`, and no token; a record naming the account validates, and
/// the certificate issues.
#[tokio::test]
async fn record_naming_issuer_and_account_validates() {
    let (dns, server, c) = setup().await;
    let (order_url, order) = c.new_order(&["p1.example.com"]).await;
    let chs = persist_challenges(&c, &order).await;
    let ch = &chs[0].1;
    assert_eq!(ch["status"], "pending", "{ch}");
    assert_eq!(ch["issuer-domain-names"], json!([ISSUER]), "{ch}");
    // An unused token, for clients that expect one on every challenge
    // (Ruby's acme-client); the record below does not name it.
    assert!(
        ch["token"].as_str().is_some_and(|t| t.len() >= 22),
        "dns-persist-01 carries a token: {ch}"
    );
    dns.set_txt("_validation-persist.p1.example.com", &record(&c, ""));
    let authz = validate_all(&c, &order).await.remove(0);
    assert_eq!(authz["status"], "valid", "{authz}");
    let ch = AcmeClient::challenge(&authz, "dns-persist-01").expect("challenge");
    assert_eq!(ch["status"], "valid", "{ch}");
    assert!(ch["validated"].is_string(), "{ch}");
    finish(&server, &c, &order_url, &["p1.example.com"]).await;
}

/// §4.3: records for other CAs are ignored and any one good record for this CA is
/// enough; §4.1: unknown parameters are ignored, the issuer compares case-insensitively
/// (§3.1 normalization), and a record longer than one 255-octet character-string is
/// read whole (§9.1).
#[tokio::test]
async fn good_record_among_others_and_long_record_validate() {
    let (dns, _server, c) = setup().await;
    let host = "_validation-persist.p2.example.com";
    dns.set_txt(
        host,
        "other-ca.example; accounturi=https://other-ca.example/acct/9",
    );
    dns.set_txt(host, &format!("{ISSUER}; accounturi={}0", c.account_url()));
    let padding = "x".repeat(300);
    let good = format!(
        "{}; accounturi={}; future-extension={padding}; policy=exact",
        ISSUER.to_uppercase(),
        c.account_url()
    );
    assert!(good.len() > 255);
    dns.set_txt(host, &good);
    let (_, order) = c.new_order(&["p2.example.com"]).await;
    let authz = validate_all(&c, &order).await.remove(0);
    assert_eq!(authz["status"], "valid", "{authz}");
}

/// §5: `*.x` is authorized by the record at `_validation-persist.x` with
/// policy=wildcard (value case-insensitive, §4.1), and the same record covers `x`.
#[tokio::test]
async fn wildcard_with_policy_wildcard_validates() {
    let (dns, server, c) = setup().await;
    let names = ["*.p3.example.com", "p3.example.com"];
    let (order_url, order) = c.new_order(&names).await;
    for url in AcmeClient::authz_urls(&order) {
        let authz = c.post_as_get(&url).await.expect_status(200).json();
        if authz["wildcard"] == true {
            assert_eq!(types(&authz), ["dns-01", "dns-persist-01"], "{authz}");
        }
    }
    dns.set_txt(
        "_validation-persist.p3.example.com",
        &record(&c, "; policy=WILDCARD"),
    );
    for authz in validate_all(&c, &order).await {
        assert_eq!(authz["status"], "valid", "{authz}");
    }
    finish(&server, &c, &order_url, &names).await;
}

/// The point of the method: a second order's new authorization validates from the
/// record published once, with no DNS change in between.
#[tokio::test]
async fn record_persists_across_orders() {
    let (dns, _server, c) = setup().await;
    dns.set_txt("_validation-persist.p4.example.com", &record(&c, ""));
    let (_, first) = c.new_order(&["p4.example.com"]).await;
    let authz = validate_all(&c, &first).await.remove(0);
    assert_eq!(authz["status"], "valid", "{authz}");
    // Deactivate it (RFC 8555 §7.5.2) so the next order cannot reuse it.
    let first_authz = AcmeClient::authz_urls(&first)[0].clone();
    let r = c
        .post(&first_authz, Some(json!({"status": "deactivated"})))
        .await;
    assert_eq!(r.status, 200, "{r}");

    let (order_url, second) = c.new_order(&["p4.example.com"]).await;
    let second_authz = AcmeClient::authz_urls(&second)[0].clone();
    assert_ne!(second_authz, first_authz, "a new authorization: {second}");
    assert_eq!(second["status"], "pending", "{second}");
    let authz = validate_all(&c, &second).await.remove(0);
    assert_eq!(authz["status"], "valid", "{authz}");
    c.wait_status(&order_url, &["ready"], T).await;
}

/// persistUntil is judged by the server's clock (§4.1 item 5): a record good for an
/// hour validates now and fails once the server's clock has moved two hours on.
#[tokio::test]
async fn persist_until_is_judged_by_the_server_clock() {
    let (dns, server, c) = setup().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let until = now + 3600;
    dns.set_txt(
        "_validation-persist.p5.example.com",
        &record(&c, &format!("; persistUntil={until}")),
    );
    let (_, first) = c.new_order(&["p5.example.com"]).await;
    let authz = validate_all(&c, &first).await.remove(0);
    assert_eq!(authz["status"], "valid", "{authz}");
    let r = c
        .post(
            &AcmeClient::authz_urls(&first)[0],
            Some(json!({"status": "deactivated"})),
        )
        .await;
    assert_eq!(r.status, 200, "{r}");

    let st = reqwest::Client::new()
        .post(format!("{}/clock/advance", server.mgmt_url))
        .header("content-type", "application/json")
        .body(r#"{"seconds": 7200}"#)
        .send()
        .await
        .expect("management listener answers")
        .status();
    assert_eq!(st, 200);
    // The nonce in hand is two hours old by the server's clock now.
    c.forget_nonce();
    let (_, second) = c.new_order(&["p5.example.com"]).await;
    let authz = validate_all(&c, &second).await.remove(0);
    assert_eq!(authz["status"], "invalid", "{authz}");
    let ch = AcmeClient::challenge(&authz, "dns-persist-01").expect("challenge");
    assert_eq!(ch["error"]["type"], format!("{ERR_NS}unauthorized"), "{ch}");
    let detail = ch["error"]["detail"].as_str().unwrap_or("");
    assert!(detail.contains(&format!("persistUntil={until}")), "{ch}");
}

/// Each way a record can fail, with the draft's §9.3.1 problem type and a detail
/// that says what was found and what was expected.
#[tokio::test]
async fn bad_records_fail_with_actionable_problems() {
    let (dns, _server, c) = setup().await;
    let acct = c.account_url();
    // (name, wildcard?, TXT value or None for no record, problem type, detail needle)
    let cases: Vec<(&str, bool, Option<String>, &str, String)> = vec![
        (
            "f1.example.com",
            false,
            Some(format!("other-ca.example; accounturi={acct}")),
            "unauthorized",
            ISSUER.to_string(),
        ),
        (
            "f2.example.com",
            false,
            Some(format!("{ISSUER}; accounturi={acct}9")),
            "unauthorized",
            acct.clone(),
        ),
        (
            "f3.example.com",
            false,
            Some(ISSUER.to_string()),
            "malformed",
            "accounturi".to_string(),
        ),
        (
            "f4.example.com",
            true,
            Some(format!("{ISSUER}; accounturi={acct}")),
            "unauthorized",
            "policy=wildcard".to_string(),
        ),
        (
            "f5.example.com",
            false,
            Some(format!(
                "{ISSUER}; accounturi={acct}; persistUntil=1721952000"
            )),
            "unauthorized",
            "persistUntil=1721952000".to_string(),
        ),
        (
            "f6.example.com",
            false,
            Some(format!("{ISSUER}; accounturi={acct}; persistUntil=soon")),
            "malformed",
            "persistUntil".to_string(),
        ),
        (
            "f7.example.com",
            false,
            Some(format!("{ISSUER}; accounturi={acct}; accounturi={acct}")),
            "malformed",
            "more than once".to_string(),
        ),
        (
            "f8.example.com",
            false,
            Some(format!("{ISSUER}; accounturi {acct}")),
            "malformed",
            "tag=value".to_string(),
        ),
        (
            "f9.example.com",
            false,
            None,
            "unauthorized",
            "_validation-persist.f9.example.com".to_string(),
        ),
    ];
    for (name, wildcard, value, kind, needle) in cases {
        let order_name = if wildcard {
            format!("*.{name}")
        } else {
            name.to_string()
        };
        if let Some(v) = &value {
            dns.set_txt(&format!("_validation-persist.{name}"), v);
        }
        let (order_url, order) = c.new_order(&[&order_name]).await;
        let authz = validate_all(&c, &order).await.remove(0);
        assert_eq!(authz["status"], "invalid", "{name} {value:?}: {authz}");
        let ch = AcmeClient::challenge(&authz, "dns-persist-01").expect("challenge");
        assert_eq!(
            ch["error"]["type"],
            format!("{ERR_NS}{kind}"),
            "{name} {value:?}: {ch}"
        );
        let detail = ch["error"]["detail"].as_str().unwrap_or("");
        assert!(
            detail.contains(&needle),
            "{name}: wanted {needle:?} in {ch}"
        );
        if let Some(v) = &value {
            let shown = v.split(';').next().unwrap_or(v);
            assert!(detail.contains(shown), "{name}: the record is shown: {ch}");
        }
        let order = c.wait_status(&order_url, &["invalid"], T).await;
        assert_eq!(order["status"], "invalid");
    }
}

/// CAA `validationmethods` (RFC 8657 §4) names the method like any other (draft §7.7).
#[tokio::test]
async fn caa_validationmethods_applies_to_dns_persist() {
    let (dns, _server, c) = setup().await;
    dns.add_caa(
        "c1.example.com",
        "issue",
        &format!("{ISSUER}; validationmethods=dns-01"),
    );
    dns.add_caa(
        "c2.example.com",
        "issue",
        &format!("{ISSUER}; validationmethods=dns-persist-01"),
    );
    for (name, want) in [("c1.example.com", "invalid"), ("c2.example.com", "valid")] {
        dns.set_txt(&format!("_validation-persist.{name}"), &record(&c, ""));
        let (_, order) = c.new_order(&[name]).await;
        let authz = validate_all(&c, &order).await.remove(0);
        assert_eq!(authz["status"], want, "{name}: {authz}");
        if want == "invalid" {
            let ch = AcmeClient::challenge(&authz, "dns-persist-01").expect("challenge");
            assert_eq!(ch["error"]["type"], format!("{ERR_NS}caa"), "{ch}");
        }
    }
}

/// Not offered when `va.dns_persist_issuer_domains` is empty.
#[tokio::test]
async fn not_offered_when_unconfigured() {
    let (_dns, _server, c) =
        setup_with(ServerOpts::test().with_env("CAIRN_VA_DNS_PERSIST_ISSUER_DOMAINS", "")).await;
    let (_, order) = c.new_order(&["*.n1.example.com", "n1.example.com"]).await;
    for url in AcmeClient::authz_urls(&order) {
        let authz = c.post_as_get(&url).await.expect_status(200).json();
        assert!(
            !types(&authz).iter().any(|t| t == "dns-persist-01"),
            "{authz}"
        );
    }
}

/// Never for IP identifiers: the draft registers it for dns identifiers only (§8.1),
/// and an address has no name to put `_validation-persist` under.
#[tokio::test]
async fn not_offered_for_ip_identifiers() {
    let (_dns, _server, c) = setup().await;
    let r = c
        .new_order_raw(json!({
            "identifiers": [{"type": "ip", "value": "127.0.0.1"}],
            "profile": "shortlived",
        }))
        .await;
    assert_eq!(r.status, 201, "{r}");
    let authz_url = AcmeClient::authz_urls(&r.json())[0].clone();
    let authz = c.post_as_get(&authz_url).await.expect_status(200).json();
    assert_eq!(types(&authz), ["http-01", "tls-alpn-01"], "{authz}");
}
