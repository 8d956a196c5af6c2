//! Renewal information (RFC 9773): renewalInfo, certIDs, `replaces` in
//! newOrder; and the keyCompromise rules that block a key.

mod common;

use common::*;
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

struct Issued {
    der: Vec<u8>,
    cert_id: String,
}

async fn issue_with(c: &AcmeClient, names: &[&str], cert_key: &AcmeKey) -> Issued {
    let csr = csr_der(names, &cert_key.openssl_pkey());
    let (_, _, pem) = c.issue_always_valid(names, &csr).await;
    let der = pem_to_ders(&pem).remove(0);
    let cert_id = cairn::ra::cert_id(&der).expect("certID");
    Issued { der, cert_id }
}

async fn account_with_cert(server: &Server, names: &[&str]) -> (AcmeClient, Issued) {
    let c = AcmeClient::new(server, KeyKind::Es256).await;
    c.register().await;
    let cert = issue_with(&c, names, &AcmeKey::generate(KeyKind::Es256)).await;
    (c, cert)
}

fn ts(v: &serde_json::Value) -> i64 {
    OffsetDateTime::parse(v.as_str().expect("RFC 3339 string"), &Rfc3339)
        .expect("RFC 3339")
        .unix_timestamp()
}

fn validity(der: &[u8]) -> (i64, i64) {
    let (_, c) = x509_parser::parse_x509_certificate(der).expect("certificate");
    (
        c.validity().not_before.timestamp(),
        c.validity().not_after.timestamp(),
    )
}

async fn renewal_info(c: &AcmeClient, cert_id: &str) -> AcmeResponse {
    c.get(&format!("{}/{cert_id}", c.endpoint("renewalInfo")))
        .await
}

#[tokio::test]
async fn fresh_certificate_window_is_in_the_last_third_with_retry_after() {
    let server = Server::start(ServerOpts::always_valid());
    let (c, cert) = account_with_cert(&server, &["ari.example.com"]).await;
    assert!(c.endpoint("renewalInfo").ends_with("/acme/renewal-info"));
    let r = renewal_info(&c, &cert.cert_id).await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.retry_after().as_deref(), Some("21600"), "{r}");
    assert!(r
        .content_type()
        .unwrap_or_default()
        .starts_with("application/json"));
    let body = r.json();
    let (start, end) = (
        ts(&body["suggestedWindow"]["start"]),
        ts(&body["suggestedWindow"]["end"]),
    );
    let (nb, na) = validity(&cert.der);
    let third = (na + 1 - nb) / 3;
    assert!(start >= na - third && start < end && end < na, "{body}");
    assert!(body.get("explanationURL").is_none(), "{body}");
}

#[tokio::test]
async fn malformed_and_unknown_cert_ids() {
    let server = Server::start(ServerOpts::always_valid());
    let (c, cert) = account_with_cert(&server, &["ids.example.com"]).await;
    let (aki, serial) = cert.cert_id.split_once('.').expect("dot");
    for bad in [
        "nodot",
        "!!!.???",
        &format!("{aki}."),
        &format!(".{serial}"),
        "a.b.c",
    ] {
        let r = renewal_info(&c, bad).await;
        assert_problem(&r, 400, "malformed");
    }
    // Another issuer's AKI, and an unknown serial of ours: 404.
    let r = renewal_info(&c, &format!("{}.{serial}", b64u([7u8; 20]))).await;
    assert_problem(&r, 404, "malformed");
    let r = renewal_info(&c, &format!("{aki}.{}", b64u([0x11u8; 16]))).await;
    assert_problem(&r, 404, "malformed");
    // A leading zero byte (DER's positive sign) names the same serial.
    let mut bytes = b64u_decode(serial);
    bytes.insert(0, 0);
    let r = renewal_info(&c, &format!("{aki}.{}", b64u(&bytes))).await;
    assert_eq!(r.status, 200, "{r}");
}

#[tokio::test]
async fn revoked_certificate_window_is_in_the_past() {
    let server = Server::start(ServerOpts::always_valid());
    let (c, cert) = account_with_cert(&server, &["gone.example.com"]).await;
    let r = c
        .post(
            &c.endpoint("revokeCert"),
            Some(json!({"certificate": b64u(&cert.der), "reason": 4})),
        )
        .await;
    assert_eq!(r.status, 200, "{r}");
    let body = renewal_info(&c, &cert.cert_id).await.ok().json();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    assert!(ts(&body["suggestedWindow"]["end"]) < now, "{body}");
    assert!(ts(&body["suggestedWindow"]["start"]) < ts(&body["suggestedWindow"]["end"]));
}

#[tokio::test]
async fn replaces_succeeds_once_then_conflicts() {
    let server = Server::start(ServerOpts::always_valid());
    let (c, cert) = account_with_cert(&server, &["a.replace.example", "b.replace.example"]).await;
    let mut p = AcmeClient::order_payload(&["a.replace.example", "c.replace.example"]);
    p["replaces"] = json!(cert.cert_id);
    let r = c.new_order_raw(p.clone()).await;
    assert_eq!(r.status, 201, "{r}");
    assert_eq!(r.json()["replaces"], json!(cert.cert_id), "{r}");
    let first = r.json();
    let r = c.new_order_raw(p.clone()).await;
    assert_problem(&r, 409, "alreadyReplaced");

    // Once the first replacement fails, the certificate may be replaced again.
    for authz in AcmeClient::authz_urls(&first) {
        let r = c.post(&authz, Some(json!({"status": "deactivated"}))).await;
        assert_eq!(r.status, 200, "{r}");
    }
    let r = c.new_order_raw(p.clone()).await;
    assert_eq!(r.status, 201, "{r}");
}

#[tokio::test]
async fn replaces_is_refused_for_strangers_and_disjoint_orders() {
    let server = Server::start(ServerOpts::always_valid());
    let (owner, cert) = account_with_cert(&server, &["mine.example.org"]).await;
    let stranger = AcmeClient::new(&server, KeyKind::Es256).await;
    stranger.register().await;

    let mut p = AcmeClient::order_payload(&["mine.example.org"]);
    p["replaces"] = json!(cert.cert_id);
    let r = stranger.new_order_raw(p).await;
    assert_problem(&r, 403, "unauthorized");

    let mut p = AcmeClient::order_payload(&["other.example.org"]);
    p["replaces"] = json!(cert.cert_id);
    let r = owner.new_order_raw(p).await;
    assert_problem(&r, 400, "malformed");

    for bad in [
        json!("garbage"),
        json!(format!("{}.{}", b64u([1u8; 20]), b64u([2u8; 16]))),
        json!(7),
    ] {
        let mut p = AcmeClient::order_payload(&["mine.example.org"]);
        p["replaces"] = bad.clone();
        let r = owner.new_order_raw(p).await;
        assert_problem(&r, 400, "malformed");
    }
    // None of these created anything: the owner can still replace.
    let mut p = AcmeClient::order_payload(&["mine.example.org"]);
    p["replaces"] = json!(cert.cert_id);
    assert_eq!(owner.new_order_raw(p).await.status, 201);
}

#[tokio::test]
async fn a_finalized_replacement_blocks_another() {
    let server = Server::start(ServerOpts::always_valid());
    let (c, cert) = account_with_cert(&server, &["fin.replace.example"]).await;
    let mut p = AcmeClient::order_payload(&["fin.replace.example"]);
    p["replaces"] = json!(cert.cert_id);
    let r = c.new_order_raw(p.clone()).await;
    assert_eq!(r.status, 201, "{r}");
    let order_url = r.location().expect("Location");
    let order = r.json();
    let order = c.authorize_always_valid(&order_url, &order).await;
    let csr = csr_der(
        &["fin.replace.example"],
        &AcmeKey::generate(KeyKind::Es256).openssl_pkey(),
    );
    let r = c.finalize(&order, &csr).await;
    assert_eq!(r.status, 200, "{r}");
    c.wait_status(&order_url, &["valid"], std::time::Duration::from_secs(10))
        .await;
    let r = c.new_order_raw(p).await;
    assert_problem(&r, 409, "alreadyReplaced");
}

#[tokio::test]
async fn revocation_by_certificate_key_blocks_the_key_everywhere() {
    let server = Server::start(ServerOpts::always_valid());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    c.register().await;
    let key = AcmeKey::generate(KeyKind::Es256);
    let first = issue_with(&c, &["k1.example.net"], &key).await;
    let second = issue_with(&c, &["k2.example.net"], &key).await;

    let by_key = AcmeClient::with_key(&server, key.clone_key()).await;
    let r = by_key
        .post_jwk(
            &c.endpoint("revokeCert"),
            Some(json!({"certificate": b64u(&first.der), "reason": 0})),
        )
        .await;
    assert_eq!(r.status, 200, "{r}");

    // Every certificate of the key is revoked with it.
    let r = c
        .post(
            &c.endpoint("revokeCert"),
            Some(json!({"certificate": b64u(&second.der)})),
        )
        .await;
    assert_problem(&r, 400, "alreadyRevoked");

    // The key is never certified again ...
    let (order_url, order) = c.new_order(&["k3.example.net"]).await;
    let order = c.authorize_always_valid(&order_url, &order).await;
    let r = c
        .finalize(&order, &csr_der(&["k3.example.net"], &key.openssl_pkey()))
        .await;
    assert_problem(&r, 400, "badCSR");
    // ... and cannot hold an account.
    let blocked = AcmeClient::with_key(&server, key.clone_key()).await;
    let r = blocked.new_account(&[], true).await;
    assert_problem(&r, 400, "badPublicKey");
}

#[tokio::test]
async fn key_compromise_claimed_by_the_account_does_not_block_the_key() {
    let server = Server::start(ServerOpts::always_valid());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    c.register().await;
    let key = AcmeKey::generate(KeyKind::Es256);
    let cert = issue_with(&c, &["claim.example.net"], &key).await;
    let r = c
        .post(
            &c.endpoint("revokeCert"),
            Some(json!({"certificate": b64u(&cert.der), "reason": 1})),
        )
        .await;
    assert_eq!(r.status, 200, "{r}");
    // Unproven: the same key may be certified again.
    issue_with(&c, &["claim.example.net"], &key).await;
}

/// Certificates stored before Cairn recorded names and key hashes (schema
/// 0003) get them at the next start, read from the certificates: then
/// a proven key compromise revokes them too.
#[tokio::test]
async fn certificates_from_before_names_were_recorded_are_backfilled() {
    let mut server = Server::start(ServerOpts::always_valid());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    c.register().await;
    let key = AcmeKey::generate(KeyKind::Es256);
    let old = issue_with(&c, &["old.example.net"], &key).await;

    // Make the row look like one written by the previous schema.
    server.stop();
    let wipe = [
        "UPDATE certificates SET names = '[]', set_hash = '', spki_sha256 = NULL",
        "DELETE FROM certificate_names",
    ];
    match &server.database {
        Some(db) => {
            use sqlx::{Connection, Executor};
            let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
            for q in wipe {
                conn.execute(q).await.expect(q);
            }
        }
        None => {
            use sqlx::{Connection, Executor};
            let url = format!("sqlite://{}", server.data_dir.join("cairn.db").display());
            let mut conn = sqlx::SqliteConnection::connect(&url)
                .await
                .expect("connect");
            for q in wipe {
                conn.execute(q).await.expect(q);
            }
        }
    }
    server.restart();
    let mut c = c;
    c.reconnect(&server);
    c.forget_nonce();

    // A new certificate for the same key, revoked with the key: the old one
    // goes with it only if its key hash was recorded again.
    let new = issue_with(&c, &["new.example.net"], &key).await;
    let by_key = AcmeClient::with_key(&server, key.clone_key()).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let r = by_key
        .post_jwk(
            &c.endpoint("revokeCert"),
            Some(json!({"certificate": b64u(&new.der)})),
        )
        .await;
    assert_eq!(r.status, 200, "{r}");
    // Watched through renewalInfo (a revoked certificate's window is in the
    // past), which changes nothing, unlike a revocation attempt would.
    loop {
        let body = renewal_info(&c, &old.cert_id).await.ok().json();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        if ts(&body["suggestedWindow"]["end"]) < now {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the old certificate was not revoked with its key: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A certificate revoked for another reason can still be revoked with its
/// key: the reason becomes keyCompromise and the key is blocked.
#[tokio::test]
async fn proven_compromise_of_a_revoked_certificate_blocks_the_key() {
    let server = Server::start(ServerOpts::always_valid());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    c.register().await;
    let key = AcmeKey::generate(KeyKind::Es256);
    let cert = issue_with(&c, &["late.example.net"], &key).await;
    let url = c.endpoint("revokeCert");
    let payload = json!({"certificate": b64u(&cert.der), "reason": 4});
    assert_eq!(c.post(&url, Some(payload.clone())).await.status, 200);
    assert_problem(&c.post(&url, Some(payload)).await, 400, "alreadyRevoked");

    let by_key = AcmeClient::with_key(&server, key.clone_key()).await;
    let signed = json!({"certificate": b64u(&cert.der)});
    let r = by_key.post_jwk(&url, Some(signed.clone())).await;
    assert_eq!(r.status, 200, "{r}");
    // Once keyCompromise, there is nothing more to record.
    let r = by_key.post_jwk(&url, Some(signed)).await;
    assert_problem(&r, 400, "alreadyRevoked");
    // And the key is blocked.
    let (order_url, order) = c.new_order(&["late2.example.net"]).await;
    let order = c.authorize_always_valid(&order_url, &order).await;
    let r = c
        .finalize(
            &order,
            &csr_der(&["late2.example.net"], &key.openssl_pkey()),
        )
        .await;
    assert_problem(&r, 400, "badCSR");
}
