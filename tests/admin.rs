//! `cairn admin certs` against a running server: the real binary, run as a
//! separate process on the server's data directory and database, as an
//! operator would. Listing by name and by account; revocation seen by the
//! ACME API (alreadyRevoked), by ARI (a past window) and in the CRL at the
//! certificate's distribution point at once; early renewal by serial, by
//! name and by issue time moving only the chosen windows; refusals that
//! change nothing. Runs on either backend (`CAIRN_TEST_BACKEND=postgres`).

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Waits until the Unix second after the current one; returns it.
async fn next_second() -> i64 {
    let next = now_unix() + 1;
    while now_unix() < next {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    next
}

/// One issued certificate.
struct Cert {
    der: Vec<u8>,
    serial: String,
}

/// `c` (registered) issues a certificate for `names` with a fresh key.
async fn issue(c: &AcmeClient, names: &[&str]) -> (Cert, AcmeKey) {
    let key = AcmeKey::generate(KeyKind::Es256);
    let csr = csr_der(names, &key.openssl_pkey());
    let (_, _, pem) = c.issue_always_valid(names, &csr).await;
    let der = pem_to_ders(&pem).remove(0);
    let (_, parsed) = X509Certificate::from_der(&der).expect("certificate parses");
    let serial = hex::encode(parsed.raw_serial());
    (Cert { der, serial }, key)
}

async fn new_account(server: &Server) -> (AcmeClient, i64) {
    let c = AcmeClient::new(server, KeyKind::Es256).await;
    let url = c.register().await;
    let id = url
        .rsplit('/')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("account URL {url} ends in no id"));
    (c, id)
}

/// The ARI suggested window (start, end) in Unix seconds.
async fn ari_window(c: &AcmeClient, cert: &Cert) -> (i64, i64) {
    let cert_id = cairn::ra::cert_id(&cert.der).expect("certID of an issued certificate");
    let url = format!("{}/{cert_id}", c.endpoint("renewalInfo"));
    let r = c.get(&url).await;
    assert_eq!(r.status, 200, "renewalInfo: {r}");
    let v = r.json();
    let t = |k: &str| {
        let s = v["suggestedWindow"][k]
            .as_str()
            .unwrap_or_else(|| panic!("no suggestedWindow.{k}: {v}"));
        OffsetDateTime::parse(s, &Rfc3339)
            .unwrap_or_else(|e| panic!("{s:?}: {e}"))
            .unix_timestamp()
    };
    (t("start"), t("end"))
}

async fn assert_window_past(c: &AcmeClient, cert: &Cert, what: &str) {
    let (start, end) = ari_window(c, cert).await;
    let now = now_unix();
    assert!(
        start <= end && end < now,
        "{what}: window {start}..{end} should be in the past (now {now})"
    );
}

async fn assert_window_future(c: &AcmeClient, cert: &Cert, what: &str) {
    let (start, end) = ari_window(c, cert).await;
    let now = now_unix();
    assert!(
        now < start && start < end,
        "{what}: window {start}..{end} should be in the future (now {now})"
    );
}

fn revoke_payload(cert: &Cert) -> Value {
    json!({"certificate": b64u(&cert.der)})
}

/// The URI of the certificate's CRL distribution point.
fn crl_dp(der: &[u8]) -> String {
    let (_, cert) = X509Certificate::from_der(der).expect("certificate parses");
    let uri = cert
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::CRLDistributionPoints(dps) => {
                dps.iter().find_map(|dp| match &dp.distribution_point {
                    Some(DistributionPointName::FullName(names)) => {
                        names.iter().find_map(|n| match n {
                            GeneralName::URI(u) => Some(u.to_string()),
                            _ => None,
                        })
                    }
                    _ => None,
                })
            }
            _ => None,
        })
        .expect("a CRL distribution point URI");
    uri
}

/// The CRL at `cert`'s distribution point, signature checked against the
/// intermediate: serial → reason code.
async fn crl_entries(server: &Server, cert: &Cert) -> Vec<(String, Option<u8>)> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client");
    let get = |url: String| {
        let http = http.clone();
        async move {
            let resp = http
                .get(&url)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}"));
            assert_eq!(resp.status(), 200, "GET {url}");
            resp.bytes().await.expect("body").to_vec()
        }
    };
    let int_pem = get(format!("{}/intermediates/0", server.mgmt_url)).await;
    let int_der = pem_to_ders(&String::from_utf8_lossy(&int_pem)).remove(0);
    let (_, int) = X509Certificate::from_der(&int_der).expect("intermediate parses");
    let der = get(crl_dp(&cert.der)).await;
    let (_, crl) = CertificateRevocationList::from_der(&der).expect("CRL parses");
    crl.verify_signature(int.public_key())
        .expect("CRL signed by the intermediate");
    crl.iter_revoked_certificates()
        .map(|r| {
            (
                hex::encode(r.raw_serial()),
                r.reason_code().map(|(_, c)| c.0),
            )
        })
        .collect()
}

fn listed_serials(run: &AdminRun) -> Vec<String> {
    run.json_lines()
        .iter()
        .map(|v| v["serial"].as_str().expect("serial").to_string())
        .collect()
}

#[tokio::test]
async fn lists_certificates_by_name_and_by_account() {
    let server = Server::start(ServerOpts::always_valid());
    let (a, a_id) = new_account(&server).await;
    let (b, b_id) = new_account(&server).await;
    let (a1, _) = issue(&a, &["one.example.com", "shared.example.com"]).await;
    let (b1, _) = issue(&b, &["two.example.com", "shared.example.com"]).await;
    // "Newest first" has one-second resolution: issue a2 a second later.
    next_second().await;
    let (a2, _) = issue(&a, &["three.example.com"]).await;

    let run = admin(
        &server,
        &["certs", "list", "--name", "SHARED.example.com", "--json"],
    )
    .ok();
    let mut got = listed_serials(&run);
    got.sort();
    let mut want = vec![a1.serial.clone(), b1.serial.clone()];
    want.sort();
    assert_eq!(got, want, "{run}");
    for v in run.json_lines() {
        assert_eq!(v["status"], "valid", "{v}");
        assert!(v["names"]
            .as_array()
            .expect("names")
            .contains(&json!("shared.example.com")));
        assert!(v["not_after"].is_string(), "{v}");
    }

    let run = admin(
        &server,
        &["certs", "list", "--name", "one.example.com", "--json"],
    )
    .ok();
    assert_eq!(listed_serials(&run), vec![a1.serial.clone()], "{run}");
    let row = &run.json_lines()[0];
    assert_eq!(row["account"], a_id, "{run}");

    // Newest first; --limit keeps the newest.
    let a_str = a_id.to_string();
    let run = admin(&server, &["certs", "list", "--account", &a_str, "--json"]).ok();
    assert_eq!(
        listed_serials(&run),
        vec![a2.serial.clone(), a1.serial.clone()],
        "{run}"
    );
    let run = admin(
        &server,
        &[
            "certs",
            "list",
            "--account",
            &a_str,
            "--limit",
            "1",
            "--json",
        ],
    )
    .ok();
    assert_eq!(listed_serials(&run), vec![a2.serial.clone()], "{run}");

    // An account URL works as well as its id.
    let run = admin(
        &server,
        &["certs", "list", "--account", &b.account_url(), "--json"],
    )
    .ok();
    assert_eq!(listed_serials(&run), vec![b1.serial.clone()], "{run}");
    assert_eq!(run.json_lines()[0]["account"], b_id);

    // The table: a header, one row per certificate with its columns.
    let run = admin(&server, &["certs", "list", "--name", "shared.example.com"]).ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{run}");
    for col in ["SERIAL", "ACCOUNT", "NAMES", "NOT_AFTER", "STATUS"] {
        assert!(lines[0].contains(col), "{run}");
    }
    let row = lines
        .iter()
        .find(|l| l.starts_with(&b1.serial))
        .unwrap_or_else(|| panic!("no row for {}: {run}", b1.serial));
    assert!(row.contains("two.example.com,shared.example.com"), "{run}");
    assert!(row.trim_end().ends_with("valid"), "{run}");

    // Nothing matches: an empty list, not an error.
    let run = admin(
        &server,
        &["certs", "list", "--name", "nobody.example.com", "--json"],
    )
    .ok();
    assert!(run.stdout.is_empty(), "{run}");
    // No selector: a usage error.
    let run = admin(&server, &["certs", "list"]);
    assert_eq!(run.code, Some(2), "{run}");
}

#[tokio::test]
async fn revocation_shows_in_acme_ari_and_crl_at_once() {
    let server = Server::start(ServerOpts::always_valid());
    let (c, _) = new_account(&server).await;
    let (cert, key) = issue(&c, &["revoked.example.com"]).await;
    let (other, _) = issue(&c, &["superseded.example.com"]).await;
    let (bystander, _) = issue(&c, &["bystander.example.com"]).await;
    assert_window_future(&c, &cert, "before revocation").await;

    // A serial as `openssl x509 -serial` prints it: upper case.
    let upper = cert.serial.to_uppercase();
    let run = admin(
        &server,
        &["certs", "revoke", &upper, "--reason", "keyCompromise"],
    )
    .ok();
    assert!(run.stdout.contains(&cert.serial), "{run}");
    assert!(run.stdout.contains("published CRL"), "{run}");
    let run = admin(
        &server,
        &["certs", "revoke", &other.serial, "--reason", "4"],
    )
    .ok();
    assert!(run.stdout.contains("superseded"), "{run}");

    // The ACME API knows.
    let url = c.endpoint("revokeCert");
    let r = c.post(&url, Some(revoke_payload(&cert))).await;
    assert_problem(&r, 400, "alreadyRevoked");
    // ARI tells clients to renew now.
    assert_window_past(&c, &cert, "revoked").await;
    assert_window_past(&c, &other, "revoked").await;
    assert_window_future(&c, &bystander, "not revoked").await;
    // The CRL at the distribution point lists both with their reasons,
    // without waiting for the schedule (5 minutes in the test preset).
    let entries = crl_entries(&server, &cert).await;
    assert!(
        entries.contains(&(cert.serial.clone(), Some(1))),
        "{entries:?}"
    );
    assert!(
        entries.contains(&(other.serial.clone(), Some(4))),
        "{entries:?}"
    );
    assert!(
        !entries.iter().any(|(s, _)| *s == bystander.serial),
        "{entries:?}"
    );
    // The list says so.
    let run = admin(
        &server,
        &["certs", "list", "--serial", &cert.serial, "--json"],
    )
    .ok();
    assert_eq!(
        run.json_lines()[0]["status"],
        "revoked(keyCompromise)",
        "{run}"
    );

    // keyCompromise blocked the key: no new certificate for it.
    let names = ["revoked-again.example.com"];
    let (order_url, order) = c.new_order(&names).await;
    let order = c.authorize_always_valid(&order_url, &order).await;
    let r = c
        .finalize(&order, &csr_der(&names, &key.openssl_pkey()))
        .await;
    assert_problem(&r, 400, "badCSR");

    // A second revocation: a clear error, exit 1.
    admin(&server, &["certs", "revoke", &cert.serial, "--reason", "0"]).error("already revoked");
}

#[tokio::test]
async fn refused_revocations_change_nothing() {
    let server = Server::start(ServerOpts::always_valid());
    let (c, _) = new_account(&server).await;
    let (cert, _) = issue(&c, &["kept.example.com"]).await;

    for reason in [
        "2",
        "cACompromise",
        "6",
        "certificateHold",
        "8",
        "10",
        "-1",
        "compromised",
    ] {
        admin(
            &server,
            &["certs", "revoke", &cert.serial, "--reason", reason],
        )
        .error("not accepted");
    }
    admin(&server, &["certs", "revoke", "abcdef", "--reason", "1"]).error("no certificate");
    admin(&server, &["certs", "revoke", "not-hex", "--reason", "1"]).error("not a hexadecimal");
    // Without a reason: a usage error from the argument parser.
    let run = admin(&server, &["certs", "revoke", &cert.serial]);
    assert_eq!(run.code, Some(2), "{run}");

    // Nothing changed: still valid everywhere, and the owner can revoke it.
    let run = admin(
        &server,
        &["certs", "list", "--serial", &cert.serial, "--json"],
    )
    .ok();
    assert_eq!(run.json_lines()[0]["status"], "valid", "{run}");
    assert_window_future(&c, &cert, "after refusals").await;
    assert!(
        !crl_entries(&server, &cert)
            .await
            .iter()
            .any(|(s, _)| *s == cert.serial),
        "a refused revocation reached the CRL"
    );
    let r = c
        .post(&c.endpoint("revokeCert"), Some(revoke_payload(&cert)))
        .await;
    assert_eq!(r.status, 200, "{r}");
}

/// The count `renew-early` printed.
fn marked(run: &AdminRun) -> u64 {
    run.stdout
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no count in the output: {run}"))
}

#[tokio::test]
async fn renew_early_by_serial_name_and_issue_time() {
    let server = Server::start(ServerOpts::always_valid());
    let (c, _) = new_account(&server).await;
    let (c1, _) = issue(&c, &["early1.example.com"]).await;
    let (c2, _) = issue(&c, &["early2.example.com", "other.example.com"]).await;
    let (c3, _) = issue(&c, &["early3.example.com"]).await;
    // issued_at has one-second resolution: c4 is issued strictly after `cut`.
    let cut = next_second().await;
    let (c4, _) = issue(&c, &["early4.example.com"]).await;
    for (cert, what) in [(&c1, "c1"), (&c2, "c2"), (&c3, "c3"), (&c4, "c4")] {
        assert_window_future(&c, cert, what).await;
    }

    let run = admin(&server, &["certs", "renew-early", "--serial", &c1.serial]).ok();
    assert_eq!(marked(&run), 1, "{run}");
    assert_window_past(&c, &c1, "c1 by serial").await;
    for (cert, what) in [(&c2, "c2"), (&c3, "c3"), (&c4, "c4")] {
        assert_window_future(&c, cert, what).await;
    }

    let run = admin(
        &server,
        &["certs", "renew-early", "--name", "early2.example.com"],
    )
    .ok();
    assert_eq!(marked(&run), 1, "{run}");
    assert_window_past(&c, &c2, "c2 by name").await;
    for (cert, what) in [(&c3, "c3"), (&c4, "c4")] {
        assert_window_future(&c, cert, what).await;
    }

    // Issued before `cut`: c1..c3, of which only c3 is not marked yet.
    let cut_rfc3339 = OffsetDateTime::from_unix_timestamp(cut)
        .expect("valid time")
        .format(&Rfc3339)
        .expect("formats");
    let run = admin(
        &server,
        &["certs", "renew-early", "--issued-before", &cut_rfc3339],
    )
    .ok();
    assert_eq!(marked(&run), 1, "{run}");
    assert_window_past(&c, &c3, "c3 by issue time").await;
    assert_window_future(&c, &c4, "c4, issued after the cut").await;
    // The same cut in Unix seconds: nothing left to mark.
    let run = admin(
        &server,
        &["certs", "renew-early", "--issued-before", &cut.to_string()],
    )
    .ok();
    assert_eq!(marked(&run), 0, "{run}");
    assert_window_future(&c, &c4, "c4").await;

    let run = admin(
        &server,
        &["certs", "list", "--name", "early1.example.com", "--json"],
    )
    .ok();
    assert_eq!(run.json_lines()[0]["status"], "renew-early", "{run}");

    // Refusals.
    let run = admin(&server, &["certs", "renew-early"]);
    assert_eq!(run.code, Some(2), "{run}");
    admin(
        &server,
        &["certs", "renew-early", "--issued-before", "last tuesday"],
    )
    .error("neither RFC 3339 nor Unix seconds");
    let run = admin(&server, &["certs", "renew-early", "--serial", "abcdef"]).ok();
    assert_eq!(marked(&run), 0, "{run}");
    assert_window_future(&c, &c4, "c4 after refusals").await;
}

/// `accounts show` names what an operator needs; `accounts deactivate`
/// ends the account's key for good; a missing account is a one-line error.
#[tokio::test]
async fn accounts_show_and_deactivate() {
    let server = Server::start(ServerOpts::always_valid());
    let (c, id) = new_account(&server).await;
    issue(&c, &["acct-show.example.com"]).await;
    let id_s = id.to_string();

    let run = admin(&server, &["accounts", "show", &id_s, "--json"]).ok();
    let v = &run.json_lines()[0];
    assert_eq!(v["id"], id, "{run}");
    assert_eq!(v["status"], "valid", "{run}");
    assert_eq!(v["certificates"], 1, "{run}");
    assert_eq!(v["validCertificates"], 1, "{run}");
    assert_eq!(v["keyThumbprint"].as_str().map(str::len), Some(43), "{run}");
    let run = admin(&server, &["accounts", "show", &c.account_url()]).ok();
    assert!(run.stdout.contains("status      valid"), "{run}");

    admin(&server, &["accounts", "show", "999999"]).error("no account 999999");
    admin(&server, &["accounts", "show", "x"]).error("not an account id");

    admin(&server, &["accounts", "deactivate", &id_s]).ok();
    admin(&server, &["accounts", "deactivate", &id_s]).error("already deactivated");
    let r = c.post_as_get(&c.account_url()).await;
    assert_problem(&r, 403, "unauthorized");
    let v = &admin(&server, &["accounts", "show", &id_s, "--json"])
        .ok()
        .json_lines()[0];
    assert_eq!(v["status"], "deactivated");
}

/// `limits show` reads a bucket with the limiter's arithmetic: after one
/// issuance for a domain, one token fewer; a bad limit name lists the good
/// ones.
#[tokio::test]
async fn limits_show_reads_the_bucket() {
    let server = Server::start(ServerOpts::always_valid().with_limit(
        "certificates_per_domain",
        5,
        5,
        5 * 3600,
    ));
    let (c, _) = new_account(&server).await;
    let show = || {
        let run = admin(
            &server,
            &[
                "limits",
                "show",
                "--limit",
                "certificatesPerDomain",
                "--key",
                "limits.example",
                "--json",
            ],
        )
        .ok();
        run.json_lines()[0].clone()
    };
    let v = show();
    assert_eq!(
        (v["remaining"].as_u64(), v["burst"].as_u64()),
        (Some(5), Some(5)),
        "{v}"
    );
    assert!(v["nextTokenInSecs"].is_null(), "{v}");
    issue(&c, &["www.limits.example"]).await;
    let v = show();
    assert_eq!(v["remaining"], 4, "{v}");
    let next = v["nextTokenInSecs"].as_u64().expect("a next token");
    assert!((3595..=3600).contains(&next), "{v}");
    admin(
        &server,
        &["limits", "show", "--limit", "nope", "--key", "x"],
    )
    .error("certificatesPerDomain");
}
