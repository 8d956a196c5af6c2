//! revokeCert (RFC 8555 §7.6): every way to be authorized, every reason, and
//! the refusals.

mod common;

use common::*;
use serde_json::json;

struct Issued {
    der: Vec<u8>,
    cert_url: String,
}

/// An account that has issued a certificate for `names` with `cert_key`.
async fn issue(server: &Server, names: &[&str], cert_key: &AcmeKey) -> (AcmeClient, Issued) {
    let c = AcmeClient::new(server, KeyKind::Es256).await;
    c.register().await;
    let csr = csr_der(names, &cert_key.openssl_pkey());
    let (_, order, pem) = c.issue_always_valid(names, &csr).await;
    let der = pem_to_ders(&pem).remove(0);
    let cert_url = order["certificate"]
        .as_str()
        .expect("certificate url")
        .to_string();
    (c, Issued { der, cert_url })
}

fn payload(der: &[u8], reason: Option<i64>) -> serde_json::Value {
    match reason {
        Some(r) => json!({"certificate": b64u(der), "reason": r}),
        None => json!({"certificate": b64u(der)}),
    }
}

#[tokio::test]
async fn directory_advertises_revoke_cert() {
    let server = Server::start(ServerOpts::always_valid());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    assert!(c.endpoint("revokeCert").ends_with("/acme/revoke-cert"));
}

#[tokio::test]
async fn owner_revokes_with_each_accepted_reason_then_already_revoked() {
    let server = Server::start(ServerOpts::always_valid());
    for reason in [None, Some(0), Some(1), Some(3), Some(4), Some(5)] {
        let key = AcmeKey::generate(KeyKind::Es256);
        let (c, cert) = issue(&server, &["owner.example.com"], &key).await;
        let url = c.endpoint("revokeCert");
        let r = c.post(&url, Some(payload(&cert.der, reason))).await;
        assert_eq!(r.status, 200, "reason {reason:?}: {r}");
        assert!(r.nonce().is_some(), "{r}");
        let r = c.post(&url, Some(payload(&cert.der, reason))).await;
        assert_problem(&r, 400, "alreadyRevoked");
        // A revoked certificate stays downloadable.
        let r = c.download_cert(&cert.cert_url).await;
        assert_eq!(r.status, 200, "{r}");
    }
}

#[tokio::test]
async fn unaccepted_reasons_are_refused_and_change_nothing() {
    let server = Server::start(ServerOpts::always_valid());
    let key = AcmeKey::generate(KeyKind::Es256);
    let (c, cert) = issue(&server, &["reason.example.com"], &key).await;
    let url = c.endpoint("revokeCert");
    for reason in [2, 6, 7, 8, 9, 10, 11, -1, 1000] {
        let r = c.post(&url, Some(payload(&cert.der, Some(reason)))).await;
        assert_problem(&r, 400, "badRevocationReason");
    }
    let r = c.post(&url, Some(payload(&cert.der, Some(4)))).await;
    assert_eq!(r.status, 200, "{r}");
}

#[tokio::test]
async fn certificate_key_can_revoke() {
    let server = Server::start(ServerOpts::always_valid());
    let key = AcmeKey::generate(KeyKind::Es256);
    let (c, cert) = issue(&server, &["bykey.example.com"], &key).await;
    let by_key = AcmeClient::with_key(&server, key).await;
    let url = c.endpoint("revokeCert");
    let r = by_key
        .post_jwk(&url, Some(payload(&cert.der, Some(1))))
        .await;
    assert_eq!(r.status, 200, "{r}");
    let r = by_key.post_jwk(&url, Some(payload(&cert.der, None))).await;
    assert_problem(&r, 400, "alreadyRevoked");
}

#[tokio::test]
async fn another_key_cannot_revoke_by_jwk() {
    let server = Server::start(ServerOpts::always_valid());
    let key = AcmeKey::generate(KeyKind::Es256);
    let (c, cert) = issue(&server, &["wrongkey.example.com"], &key).await;
    let stranger = AcmeClient::new(&server, KeyKind::Es256).await;
    let r = stranger
        .post_jwk(&c.endpoint("revokeCert"), Some(payload(&cert.der, None)))
        .await;
    assert_problem(&r, 403, "unauthorized");
}

#[tokio::test]
async fn other_account_needs_authorizations_for_every_name() {
    let server = Server::start(ServerOpts::always_valid());
    let key = AcmeKey::generate(KeyKind::Es256);
    let (c, cert) = issue(&server, &["a.shared.example", "b.shared.example"], &key).await;
    let url = c.endpoint("revokeCert");

    let other = AcmeClient::new(&server, KeyKind::Es256).await;
    other.register().await;
    let r = other.post(&url, Some(payload(&cert.der, None))).await;
    assert_problem(&r, 403, "unauthorized");

    // Valid authorization for one name only: still refused.
    let (order_url, order) = other.new_order(&["a.shared.example"]).await;
    other.authorize_always_valid(&order_url, &order).await;
    let r = other.post(&url, Some(payload(&cert.der, None))).await;
    assert_problem(&r, 403, "unauthorized");

    // For both names: accepted.
    let (order_url, order) = other.new_order(&["b.shared.example"]).await;
    other.authorize_always_valid(&order_url, &order).await;
    let r = other.post(&url, Some(payload(&cert.der, Some(4)))).await;
    assert_eq!(r.status, 200, "{r}");
    let r = c.post(&url, Some(payload(&cert.der, None))).await;
    assert_problem(&r, 400, "alreadyRevoked");
}

#[tokio::test]
async fn unknown_or_garbage_certificates_are_refused() {
    let server = Server::start(ServerOpts::always_valid());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    c.register().await;
    let url = c.endpoint("revokeCert");
    let r = c.post(&url, Some(json!({"certificate": "!!!"}))).await;
    assert_problem(&r, 400, "malformed");
    let r = c
        .post(
            &url,
            Some(json!({"certificate": b64u(b"not a certificate")})),
        )
        .await;
    assert_problem(&r, 400, "malformed");
    let r = c.post(&url, Some(json!({"reason": 4}))).await;
    assert_problem(&r, 400, "malformed");
    // A real certificate this CA did not issue: the server's own root.
    let root = pem_to_ders(&server.root_pem()).remove(0);
    let r = c.post(&url, Some(payload(&root, None))).await;
    assert_problem(&r, 404, "malformed");
}
