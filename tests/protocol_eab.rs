//! External account binding (RFC 8555 §7.3.4) over the wire: the directory
//! says when it is required; newAccount without one gets
//! `externalAccountRequired`, a badly formed one `malformed`, an unknown,
//! revoked, expired or used key or a bad MAC `unauthorized`; finding an
//! existing account needs none; a single-use key binds one account even
//! when clients race for it at two instances; a key's names restrict what
//! its account may order. Keys come from `cairn admin eab create`, as an
//! operator makes them. Runs on either backend (`CAIRN_TEST_BACKEND=postgres`).

mod common;

use common::admin::admin;
use common::*;
use serde_json::{json, Value};

const REQUIRED: &str = "CAIRN_ACME_EXTERNAL_ACCOUNT_REQUIRED";

fn eab_server() -> Server {
    Server::start(ServerOpts::test().with_env(REQUIRED, "true"))
}

/// `cairn admin eab create --json [args]`: (kid, base64url HMAC key).
fn create_key(server: &Server, args: &[&str]) -> (String, String) {
    let mut all = vec!["eab", "create", "--json"];
    all.extend_from_slice(args);
    let v = admin(server, &all).ok().json_lines().remove(0);
    (
        v["kid"].as_str().expect("kid").to_string(),
        v["hmacKey"].as_str().expect("hmacKey").to_string(),
    )
}

/// The account id of an account URL.
fn account_id(url: &str) -> String {
    url.rsplit('/').next().expect("account URL").to_string()
}

/// newAccount for `c`'s key with this binding (ToS agreed).
async fn new_account_with(c: &AcmeClient, binding: Value) -> AcmeResponse {
    c.new_account_payload(json!({"termsOfServiceAgreed": true, "externalAccountBinding": binding}))
        .await
}

/// The account of `c`'s key does not exist.
async fn assert_no_account(c: &AcmeClient) {
    let r = c
        .new_account_payload(json!({"onlyReturnExisting": true}))
        .await;
    assert_problem(&r, 400, "accountDoesNotExist");
}

#[tokio::test]
async fn required_binding_creates_a_bound_account_and_lookups_need_none() {
    let server = eab_server();
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    assert_eq!(
        c.directory()["meta"]["externalAccountRequired"],
        true,
        "{}",
        c.directory()
    );

    let r = c.new_account(&[], true).await;
    let p = assert_problem(&r, 401, "externalAccountRequired");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("externalAccountBinding"),
        "{p}"
    );
    assert_no_account(&c).await;

    let (kid, hmac) = create_key(&server, &[]);
    let r = c.new_account_eab(&kid, &hmac).await;
    assert_eq!(r.status, 201, "{r}");
    let url = r.location().expect("Location");

    // The account records its key; admin shows it.
    let shown = admin(&server, &["accounts", "show", &account_id(&url), "--json"])
        .ok()
        .json_lines()
        .remove(0);
    assert_eq!(shown["externalAccountKey"], kid.as_str(), "{shown}");
    let text = admin(&server, &["accounts", "show", &account_id(&url)]).ok();
    assert!(
        text.stdout.contains(&format!("eab key     {kid}")),
        "{text}"
    );

    // Finding the account needs no binding: onlyReturnExisting, and a
    // plain newAccount for the same key.
    let r = c
        .new_account_payload(json!({"onlyReturnExisting": true}))
        .await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.location().as_deref(), Some(url.as_str()));
    let r = c.new_account(&[], true).await;
    assert_eq!(r.status, 200, "{r}");
    // And a client re-sending its (now used) binding finds it too.
    let r = c.new_account_eab(&kid, &hmac).await;
    assert_eq!(r.status, 200, "{r}");

    // A single-use key binds no second account.
    let other = AcmeClient::new(&server, KeyKind::Es256).await;
    let r = other.new_account_eab(&kid, &hmac).await;
    let p = assert_problem(&r, 403, "unauthorized");
    assert!(p["detail"].as_str().unwrap().contains("single-use"), "{p}");
    assert_no_account(&other).await;

    // A reusable one binds several; every MAC algorithm is accepted.
    let (kid, hmac) = create_key(&server, &["--reusable"]);
    let key = b64u_decode(&hmac);
    for alg in ["HS256", "HS384", "HS512"] {
        let c = AcmeClient::new(&server, KeyKind::Es256).await;
        let h = json!({"alg": alg, "kid": kid, "url": c.endpoint("newAccount")});
        let b = eab_jws(&h, &serde_json::to_vec(&c.key().jwk()).unwrap(), &key);
        let r = new_account_with(&c, b).await;
        assert_eq!(r.status, 201, "{alg}: {r}");
    }
    let listed = admin(&server, &["eab", "list", "--json"]).ok().json_lines();
    let row = listed.iter().find(|v| v["kid"] == kid.as_str()).unwrap();
    assert_eq!(row["boundAccounts"], 3, "{row}");
}

#[tokio::test]
async fn badly_formed_bindings_are_malformed() {
    let server = eab_server();
    let (kid, hmac) = create_key(&server, &["--reusable"]);
    let key = b64u_decode(&hmac);
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    let url = c.endpoint("newAccount");
    let jwk = serde_json::to_vec(&c.key().jwk()).unwrap();
    let other_jwk = serde_json::to_vec(&AcmeKey::generate(KeyKind::Es256).jwk()).unwrap();
    let good = eab_jws(&json!({"alg": "HS256", "kid": kid, "url": url}), &jwk, &key);
    let hdr = |h: Value| eab_jws(&h, &jwk, &key);
    let mut unprotected = good.clone();
    unprotected["header"] = json!({"kid": kid});
    let mut no_sig = good.clone();
    no_sig.as_object_mut().unwrap().remove("signature");

    let cases: Vec<(&str, Value, &str)> = vec![
        ("not an object", json!("a binding"), "flattened JWS"),
        ("general serialization", to_general(&good), "flattened"),
        ("unprotected header", unprotected, "unprotected"),
        ("no signature", no_sig, "signature"),
        (
            "signature algorithm",
            hdr(json!({"alg": "ES256", "kid": kid, "url": url})),
            "MAC algorithm",
        ),
        (
            "alg none",
            hdr(json!({"alg": "none", "kid": kid, "url": url})),
            "MAC algorithm",
        ),
        (
            "a nonce",
            hdr(json!({"alg": "HS256", "kid": kid, "url": url, "nonce": "abc"})),
            "nonce",
        ),
        ("no kid", hdr(json!({"alg": "HS256", "url": url})), "kid"),
        (
            "kid not a string",
            hdr(json!({"alg": "HS256", "kid": 7, "url": url})),
            "kid",
        ),
        (
            "another url",
            hdr(json!({"alg": "HS256", "kid": kid, "url": c.endpoint("newOrder")})),
            "newAccount URL",
        ),
        ("no url", hdr(json!({"alg": "HS256", "kid": kid})), "url"),
        (
            "crit",
            hdr(json!({"alg": "HS256", "kid": kid, "url": url, "crit": ["b64"], "b64": false})),
            "crit",
        ),
        (
            "another key",
            eab_jws(
                &json!({"alg": "HS256", "kid": kid, "url": url}),
                &other_jwk,
                &key,
            ),
            "not the account key",
        ),
        (
            "payload not JSON",
            eab_jws(
                &json!({"alg": "HS256", "kid": kid, "url": url}),
                b"not json",
                &key,
            ),
            "payload",
        ),
        (
            "payload not a JWK",
            eab_jws(
                &json!({"alg": "HS256", "kid": kid, "url": url}),
                br#"{"kty":"nope"}"#,
                &key,
            ),
            "payload",
        ),
    ];
    for (what, binding, needle) in cases {
        let r = new_account_with(&c, binding).await;
        let p = assert_problem(&r, 400, "malformed");
        let detail = p["detail"].as_str().unwrap();
        assert!(
            detail.starts_with("externalAccountBinding: ") && detail.contains(needle),
            "{what}: {p}"
        );
        assert!(!leaks_library_internals(detail), "{what}: {p}");
    }
    assert_no_account(&c).await;

    // The same key, well formed, works: the cases above failed for their flaw.
    let r = new_account_with(&c, good).await;
    assert_eq!(r.status, 201, "{r}");

    // The JWK is compared as a key: members reordered still match.
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    let jwk = c.key().jwk();
    let reordered = format!(
        r#"{{"y":{},"x":{},"kty":"EC","crv":"P-256"}}"#,
        jwk["y"], jwk["x"]
    );
    let b = eab_jws(
        &json!({"alg": "HS256", "kid": kid, "url": c.endpoint("newAccount")}),
        reordered.as_bytes(),
        &key,
    );
    let r = new_account_with(&c, b).await;
    assert_eq!(r.status, 201, "{r}");
}

#[tokio::test]
async fn unknown_revoked_expired_keys_and_bad_macs_are_unauthorized() {
    let server = eab_server();
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    let (kid, hmac) = create_key(&server, &[]);

    // Unknown key id.
    let r = c.new_account_eab("no-such-kid", &hmac).await;
    let p = assert_problem(&r, 403, "unauthorized");
    assert!(p["detail"].as_str().unwrap().contains("not known"), "{p}");

    // A MAC made with another key.
    let (_, wrong) = create_key(&server, &[]);
    let r = c.new_account_eab(&kid, &wrong).await;
    let p = assert_problem(&r, 403, "unauthorized");
    assert!(p["detail"].as_str().unwrap().contains("MAC"), "{p}");

    // A flipped bit in the MAC.
    let mut b = eab_binding(
        &kid,
        &b64u_decode(&hmac),
        &c.endpoint("newAccount"),
        &c.key(),
    );
    corrupt_signature(&mut b);
    let r = new_account_with(&c, b).await;
    let p = assert_problem(&r, 403, "unauthorized");
    assert!(p["detail"].as_str().unwrap().contains("MAC"), "{p}");

    // Revoked.
    let (revoked, revoked_hmac) = create_key(&server, &[]);
    admin(&server, &["eab", "revoke", &revoked]).ok();
    let r = c.new_account_eab(&revoked, &revoked_hmac).await;
    let p = assert_problem(&r, 403, "unauthorized");
    assert!(p["detail"].as_str().unwrap().contains("revoked"), "{p}");

    // Expired: an hour's key, two hours later (the test preset's clock).
    let (expiring, expiring_hmac) = create_key(&server, &["--expires", "1h"]);
    let moved = reqwest::Client::new()
        .post(format!("{}/clock/advance", server.mgmt_url))
        .header("content-type", "application/json")
        .body(r#"{"seconds": 7200}"#)
        .send()
        .await
        .expect("clock advance");
    assert_eq!(moved.status(), 200);
    c.forget_nonce();
    let r = c.new_account_eab(&expiring, &expiring_hmac).await;
    let p = assert_problem(&r, 403, "unauthorized");
    assert!(p["detail"].as_str().unwrap().contains("expired"), "{p}");

    assert_no_account(&c).await;
    // None of the refusals used the key: it still binds.
    let r = c.new_account_eab(&kid, &hmac).await;
    assert_eq!(r.status, 201, "{r}");
}

/// RFC 8555 lets a server ignore a binding it does not require; Cairn
/// checks it, and binds the account to it.
#[tokio::test]
async fn a_binding_is_checked_when_not_required() {
    let server = Server::start(ServerOpts::test());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    assert_eq!(c.directory()["meta"]["externalAccountRequired"], false);
    let (kid, hmac) = create_key(&server, &["--names", "ok.example.com"]);
    let (_, wrong) = create_key(&server, &[]);
    let r = c.new_account_eab(&kid, &wrong).await;
    assert_problem(&r, 403, "unauthorized");
    let r = c.new_account_eab(&kid, &hmac).await;
    assert_eq!(r.status, 201, "{r}");
    c.new_order(&["ok.example.com"]).await;
    let r = c
        .new_order_raw(AcmeClient::order_payload(&["other.example.com"]))
        .await;
    assert_problem(&r, 400, "rejectedIdentifier");
    // Without a binding, accounts are made as ever.
    AcmeClient::new(&server, KeyKind::Es256)
        .await
        .register()
        .await;
}

#[tokio::test]
async fn a_keys_names_restrict_what_its_account_orders() {
    let server = Server::start(ServerOpts::always_valid().with_env(REQUIRED, "true"));
    let (kid, hmac) = create_key(
        &server,
        &["--names", "app.example.com", "*.corp.example.net"],
    );
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    assert_eq!(c.new_account_eab(&kid, &hmac).await.status, 201);

    let (order_url, order) = c
        .new_order(&[
            "app.example.com",
            "a.corp.example.net",
            "*.b.corp.example.net",
        ])
        .await;
    let ready = c.authorize_always_valid(&order_url, &order).await;
    assert_eq!(ready["status"], "ready", "{ready}");

    let r = c
        .new_order_raw(AcmeClient::order_payload(&["www.example.com"]))
        .await;
    let p = assert_problem(&r, 400, "rejectedIdentifier");
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains("\"www.example.com\""), "{p}");
    assert!(detail.contains("*.corp.example.net"), "{p}");

    // Two outside (the apex of a suffix pattern is outside it), one inside:
    // one subproblem per refused name.
    let r = c
        .new_order_raw(AcmeClient::order_payload(&[
            "corp.example.net",
            "app.example.com",
            "x.app.example.com",
        ]))
        .await;
    let p = assert_problem(&r, 400, "rejectedIdentifier");
    let subs = p["subproblems"].as_array().expect("subproblems");
    let mut refused: Vec<&str> = subs
        .iter()
        .map(|s| s["identifier"]["value"].as_str().unwrap())
        .collect();
    refused.sort();
    assert_eq!(refused, ["corp.example.net", "x.app.example.com"], "{p}");

    // A key without names allows anything.
    let (kid, hmac) = create_key(&server, &[]);
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    assert_eq!(c.new_account_eab(&kid, &hmac).await.status, 201);
    c.new_order(&["anything.example.org"]).await;
}

/// Clients racing for one single-use key at two instances on one database:
/// exactly one account is created, every other request is `unauthorized`
/// and creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_use_key_binds_one_account_when_raced() {
    let a = Server::start(
        ServerOpts::test()
            .with_env(REQUIRED, "true")
            .shared_nonces(),
    );
    let b = a.start_peer();
    for round in 0..3 {
        let (kid, hmac) = create_key(&a, &[]);
        let mut clients = Vec::new();
        for i in 0..8 {
            let server = if i % 2 == 0 { &a } else { &b };
            let c = AcmeClient::new(server, KeyKind::Es256).await;
            c.nonce().await;
            clients.push(c);
        }
        let results =
            futures::future::join_all(clients.iter().map(|c| c.new_account_eab(&kid, &hmac))).await;
        let created = results.iter().filter(|r| r.status == 201).count();
        assert_eq!(created, 1, "round {round}: {results:#?}");
        for r in results.iter().filter(|r| r.status != 201) {
            assert_problem(r, 403, "unauthorized");
        }
        for (c, r) in clients.iter().zip(&results) {
            if r.status != 201 {
                assert_no_account(c).await;
            }
        }
        let listed = admin(&a, &["eab", "list", "--json"]).ok().json_lines();
        let row = listed.iter().find(|v| v["kid"] == kid.as_str()).unwrap();
        assert_eq!(row["boundAccounts"], 1, "{row}");
        assert_eq!(row["status"], "used", "{row}");
    }
}
