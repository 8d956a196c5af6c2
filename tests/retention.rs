//! Retention against the real binary, on either backend
//! (`CAIRN_TEST_BACKEND=postgres`): the server's scheduled purge, with its
//! clock moved past expiry, removes expired orders and authorizations and
//! used nonces, keeps live ones, and keeps every certificate usable
//! (download, ARI, `replaces`, revocation, `cairn admin certs`); `cairn
//! admin purge` counts dry and purges once, in real time.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const DAY: u64 = 86_400;

/// Scrapes `/metrics` until `cairn_retention_purged_rows_total{table}`
/// reaches `at_least` for every table given; panics after 20 s.
async fn wait_purged(server: &Server, tables: &[(&str, f64)]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape(server).await;
        let done = tables.iter().all(|(t, n)| {
            sample(&text, "cairn_retention_purged_rows_total", &[("table", t)])
                .is_some_and(|v| v >= *n)
        });
        if done {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no purge of {tables:?} within 20 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn scheduled_purge_forgets_expired_rows_and_keeps_certificates_usable() {
    let server =
        // Used nonces in the database, whose rows the purge forgets.
        Server::start(
            ServerOpts::always_valid()
                .shared_nonces()
                .with_env("CAIRN_RETENTION_INTERVAL_SECS", "1"),
        );
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    c.register().await;
    let cert_key = AcmeKey::generate(KeyKind::Es256);
    let csr = csr_der(&["keep.example"], &cert_key.openssl_pkey());
    let (issued_url, issued, pem) = c.issue_always_valid(&["keep.example"], &csr).await;
    let der = pem_to_ders(&pem).remove(0);
    let cert_id = cairn::ra::cert_id(&der).expect("certID");
    let serial = cert_id
        .split('.')
        .nth(1)
        .map(b64u_decode)
        .map(hex_of)
        .unwrap();
    let (expired_url, expired) = c.new_order(&["gone.example"]).await;
    let expired_authz = AcmeClient::authz_urls(&expired).remove(0);
    let issued_authz = AcmeClient::authz_urls(&issued).remove(0);

    // Past the 1-hour order, the 30-day valid authorization and the
    // 1-day retention of the test preset.
    advance_clock(&server, 32 * DAY).await;
    c.forget_nonce();
    let (live_url, live) = c.new_order(&["live.example"]).await;
    let live_authz = AcmeClient::authz_urls(&live).remove(0);
    wait_purged(
        &server,
        &[
            ("orders", 1.0),
            ("authzs", 2.0),
            ("challenges", 6.0),
            ("used_nonces", 4.0),
        ],
    )
    .await;

    for gone in [&expired_url, &expired_authz, &issued_authz] {
        assert_problem(&c.post_as_get(gone).await, 404, "malformed");
    }
    let live = c.post_as_get(&live_url).await.ok().json();
    assert_eq!(live["status"], "pending", "{live}");
    assert_eq!(
        c.post_as_get(&live_authz).await.ok().json()["status"],
        "pending"
    );
    // The issued order stays, with its certificate.
    let order = c.post_as_get(&issued_url).await.ok().json();
    assert_eq!(order["status"], "valid", "{order}");
    assert_eq!(order["certificate"], issued["certificate"]);
    assert_eq!(order["authorizations"], json!([]), "{order}");
    let cert_url = order["certificate"].as_str().unwrap();
    assert_eq!(c.download_cert_pem(cert_url).await, pem);

    // ARI and `replaces` still find the certificate...
    let ari = c
        .get(&format!("{}/{cert_id}", c.endpoint("renewalInfo")))
        .await;
    assert_eq!(ari.status, 200, "{ari}");
    let mut p = AcmeClient::order_payload(&["keep.example"]);
    p["replaces"] = json!(cert_id);
    let r = c.new_order_raw(p).await;
    assert_eq!(r.status, 201, "{r}");
    // ... and so do the operator's tools and revocation.
    let shown = admin(&server, &["certs", "show", &serial, "--json"]).ok();
    let shown = &shown.json_lines()[0];
    assert_eq!(shown["names"], json!(["keep.example"]), "{shown}");
    assert_eq!(
        Some(shown["order"].as_i64().unwrap().to_string().as_str()),
        issued_url.rsplit('/').next()
    );
    let r = c
        .post(
            &c.endpoint("revokeCert"),
            Some(json!({"certificate": b64u(&der), "reason": 4})),
        )
        .await;
    assert_eq!(r.status, 200, "{r}");
    let shown = admin(&server, &["certs", "show", &serial, "--json"]).ok();
    assert_eq!(shown.json_lines()[0]["revoked_reason"], "superseded");
    let listed = admin(&server, &["certs", "list", "--name", "keep.example"]).ok();
    assert!(listed.stdout.contains(&serial), "{listed}");
}

fn hex_of(bytes: Vec<u8>) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `cairn admin purge` in real time, with 3-second orders and
/// authorizations and no retention grace; the server's own schedule off.
#[tokio::test]
async fn admin_purge_counts_dry_then_purges_once() {
    let server = Server::start(
        ServerOpts::always_valid()
            .with_env("CAIRN_PROFILES_CLASSIC_ORDER_LIFETIME_SECS", "3")
            .with_env("CAIRN_PROFILES_CLASSIC_PENDING_AUTHZ_LIFETIME_SECS", "3")
            .with_env("CAIRN_PROFILES_CLASSIC_VALID_AUTHZ_LIFETIME_SECS", "3")
            .with_env("CAIRN_RETENTION_KEEP_EXPIRED_SECS", "0")
            .with_env("CAIRN_RETENTION_ENABLED", "false"),
    );
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    c.register().await;
    let csr = csr_der(
        &["kept.example"],
        &AcmeKey::generate(KeyKind::Es256).openssl_pkey(),
    );
    let (_, _, pem) = c.issue_always_valid(&["kept.example"], &csr).await;
    let (expired_url, _) = c.new_order(&["gone.example"]).await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    let counts = |run: &AdminRun| -> Value {
        let v = run.json_lines().remove(0);
        json!([v["orders"], v["authzs"], v["challenges"], v["orderAuthzs"]])
    };
    // One order, two authorizations (gone.example, and kept.example's,
    // expired too), four challenges each (http-01, dns-01, tls-alpn-01,
    // dns-persist-01 in the test preset), two links.
    let dry = admin(&server, &["purge", "--dry-run", "--json"]).ok();
    assert_eq!(counts(&dry), json!([1, 2, 8, 2]), "{dry}");
    assert_eq!(dry.json_lines()[0]["dryRun"], true, "{dry}");
    let again = admin(&server, &["purge", "--dry-run", "--json"]).ok();
    assert_eq!(counts(&again), json!([1, 2, 8, 2]), "{again}");
    let text = admin(&server, &["purge", "--dry-run"]).ok();
    assert!(
        text.stdout.starts_with("would purge expired before "),
        "{text}"
    );

    let done = admin(&server, &["purge", "--json"]).ok();
    assert_eq!(counts(&done), json!([1, 2, 8, 2]), "{done}");
    let after = admin(&server, &["purge", "--json"]).ok();
    assert_eq!(counts(&after), json!([0, 0, 0, 0]), "{after}");
    assert_problem(&c.post_as_get(&expired_url).await, 404, "malformed");

    // The certificate is all there.
    let der = pem_to_ders(&pem).remove(0);
    let cert_id = cairn::ra::cert_id(&der).expect("certID");
    let serial = hex_of(b64u_decode(cert_id.split('.').nth(1).unwrap()));
    let shown = admin(&server, &["certs", "show", &serial]).ok();
    assert!(shown.stdout.contains("kept.example"), "{shown}");
    assert!(shown.stdout.contains("status       valid"), "{shown}");
    let chain = admin(&server, &["certs", "show", &serial, "--pem"]).ok();
    assert_eq!(chain.stdout, pem);
}

#[tokio::test]
async fn certs_show_names_an_unknown_serial() {
    let server = Server::start(ServerOpts::always_valid());
    admin(&server, &["certs", "show", "0abc"]).error("no certificate with serial 0abc");
    admin(&server, &["certs", "show", "xyz"]).error("serial");
}
