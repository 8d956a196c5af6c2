//! `cairn admin load-history` (BENCHMARKS.md, "History"): the rows it
//! writes are the rows issuance leaves, so a server on top of them serves
//! its certificates (show, PEM chain, ARI, revocation and the CRL) and
//! keeps issuing.

mod common;

use common::admin::admin;
use common::*;
use serde_json::Value;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

const LOADED: i64 = 2000;
const ACCOUNTS: i64 = 20;

/// `SELECT COUNT(*)` of each query, on the server's database.
async fn counts(server: &Server, queries: &[&str]) -> Vec<i64> {
    use sqlx::Connection;
    let mut out = Vec::new();
    match &server.database {
        Some(db) => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
            for q in queries {
                out.push(sqlx::query_scalar(q).fetch_one(&mut conn).await.expect(q));
            }
        }
        None => {
            let url = format!("sqlite://{}", server.data_dir.join("cairn.db").display());
            let mut conn = sqlx::SqliteConnection::connect(&url)
                .await
                .expect("connect");
            for q in queries {
                out.push(sqlx::query_scalar(q).fetch_one(&mut conn).await.expect(q));
            }
        }
    }
    out
}

#[tokio::test]
async fn loaded_history_is_served_like_issued_certificates() {
    let server = Server::start(ServerOpts::always_valid());
    let run = admin(
        &server,
        &[
            "load-history",
            "--certificates",
            &LOADED.to_string(),
            "--accounts",
            &ACCOUNTS.to_string(),
            "--revoked-percent",
            "5",
            "--batch",
            "300",
        ],
    )
    .ok();
    assert!(
        run.stdout
            .starts_with(&format!("loaded {LOADED} certificates")),
        "{run}"
    );

    // One valid order per certificate, one name row per name, one valid
    // authorization per name with three challenges (one valid).
    let c = counts(
        &server,
        &[
            "SELECT COUNT(*) FROM accounts",
            "SELECT COUNT(*) FROM orders WHERE status = 'valid' AND cert_serial IS NOT NULL",
            "SELECT COUNT(*) FROM certificates",
            "SELECT COUNT(*) FROM certificates c JOIN orders o ON o.id = c.order_id
             WHERE o.cert_serial = c.serial AND o.account_id = c.account_id",
            "SELECT COUNT(*) FROM certificate_names",
            "SELECT COUNT(*) FROM authzs WHERE status = 'valid'",
            "SELECT COUNT(*) FROM order_authzs oa JOIN authzs a ON a.id = oa.authz_id
             JOIN certificate_names n ON n.name = a.identifier
             JOIN certificates c ON c.serial = n.serial AND c.order_id = oa.order_id",
            "SELECT COUNT(*) FROM challenges",
            "SELECT COUNT(*) FROM challenges WHERE status = 'valid' AND records IS NOT NULL",
            "SELECT COUNT(*) FROM certificates WHERE revoked_at IS NOT NULL",
            "SELECT COUNT(DISTINCT account_id) FROM certificates",
        ],
    )
    .await;
    let [accounts, orders, certs, linked, names, authzs, name_links, challenges, validated, revoked, owners] =
        c[..]
    else {
        unreachable!("eleven queries")
    };
    assert_eq!(
        (accounts, orders, certs, linked),
        (ACCOUNTS, LOADED, LOADED, LOADED)
    );
    assert!(names > LOADED && names < 2 * LOADED, "{names} names");
    // The test preset's retention (1 day after their 30 days) purged the
    // authorizations of certificates older than 31 days: about a third
    // of 90 days' are left.
    assert!(
        authzs > names / 5 && authzs < names / 2,
        "{authzs} of {names}"
    );
    assert_eq!(name_links, authzs);
    assert_eq!((challenges, validated), (3 * authzs, authzs));
    assert!(revoked > 0 && revoked < LOADED / 5, "{revoked} revoked");
    assert_eq!(owners, ACCOUNTS);

    // A loaded certificate, as an operator finds it.
    let list = admin(&server, &["certs", "list", "--account", "3", "--json"]).ok();
    let lines = list.json_lines();
    let first = lines
        .iter()
        .find(|c| c["revoked_at"].is_null())
        .expect("an unrevoked certificate");
    let serial = first["serial"].as_str().expect("serial").to_string();
    let name = first["names"][0].as_str().expect("a name").to_string();
    assert!(name.ends_with(".test"), "{first}");
    let show = admin(&server, &["certs", "show", &serial, "--json"]).ok();
    let shown: Value = serde_json::from_str(&show.stdout).expect("JSON");
    assert_eq!(shown["account"], 3, "{shown}");
    let pem = admin(&server, &["certs", "show", &serial, "--pem"])
        .ok()
        .stdout;
    let chain_names = verify_chain(&pem, &server.root_pem());
    assert_eq!(
        chain_names,
        shown["names"]
            .as_array()
            .map(|v| v
                .iter()
                .map(|n| n.as_str().unwrap_or_default().to_string())
                .collect::<Vec<_>>())
            .unwrap_or_default()
    );
    let der = pem_to_ders(&pem).remove(0);

    // ARI answers for it.
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    let cert_id = cairn::ra::cert_id(&der).expect("certID");
    let r = c
        .get(&format!("{}/{cert_id}", c.endpoint("renewalInfo")))
        .await;
    assert_eq!(r.status, 200, "{r}");
    assert!(r.json()["suggestedWindow"]["start"].is_string(), "{r}");

    // Revoking it publishes a CRL that lists it beside the loaded
    // revocations still unexpired.
    admin(
        &server,
        &["certs", "revoke", &serial, "--reason", "superseded"],
    )
    .ok();
    let crl = reqwest::get(format!("{}/crl/0", server.mgmt_url))
        .await
        .expect("GET CRL")
        .bytes()
        .await
        .expect("CRL body");
    let (_, crl) = CertificateRevocationList::from_der(&crl).expect("CRL parses");
    let listed: Vec<String> = crl
        .iter_revoked_certificates()
        .map(|r| hex::encode(r.raw_serial()))
        .collect();
    assert!(
        listed
            .iter()
            .any(|s| s.trim_start_matches("00") == serial.trim_start_matches("00")),
        "{serial} not in the CRL"
    );
    assert!(
        listed.len() as i64 >= revoked,
        "{} listed, {revoked} revoked",
        listed.len()
    );

    // The server keeps issuing: new rows get ids past the loaded ones.
    c.register().await;
    let key = AcmeKey::generate(KeyKind::Es256);
    let csr = csr_der(&["after-history.example.com"], &key.openssl_pkey());
    let (order_url, _, _) = c
        .issue_always_valid(&["after-history.example.com"], &csr)
        .await;
    let order_id: i64 = order_url
        .rsplit('/')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("order id");
    assert!(order_id > LOADED, "{order_url}");

    // A database holding certificates is never loaded into.
    admin(&server, &["load-history", "--certificates", "10"]).error("already holds certificates");
}
