//! RFC 8555 protocol tests, part 1: directory, nonces, accounts and key rollover.
//! Each test runs its own `cairn serve` (test preset) on free loopback ports and talks
//! to it over HTTPS with the harness's JWS client. Orders and certificates are in
//! `protocol_order.rs`, JWS-level refusals in `protocol_jws.rs`, real validation and
//! restarts in `protocol_validation.rs`.

mod common;

use common::*;
use serde_json::{json, Value};

/// Every URL in the directory is absolute HTTPS on this server.
#[tokio::test]
async fn directory_lists_absolute_urls_and_meta() {
    let server = Server::start(ServerOpts::test());
    let http = server.http_client();
    let resp = http
        .get(&server.dir_url)
        .send()
        .await
        .expect("GET directory");
    let r = AcmeResponse::read("GET", &server.dir_url, resp).await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.content_type().as_deref(), Some("application/json"), "{r}");
    let dir = r.json();
    for name in [
        "newNonce",
        "newAccount",
        "newOrder",
        "revokeCert",
        "keyChange",
    ] {
        let url = dir[name]
            .as_str()
            .unwrap_or_else(|| panic!("directory lacks {name}: {dir}"));
        assert!(
            url.starts_with(&format!("{}/", server.base_url)),
            "{name} = {url} is not an absolute URL on {}",
            server.base_url
        );
    }
    let meta = &dir["meta"];
    assert!(meta.is_object(), "directory without meta: {dir}");
    // test preset: Cairn's own terms page, the project website, caaIdentities, no EAB.
    assert_eq!(
        meta["termsOfService"],
        format!("{}/terms", server.base_url),
        "{meta}"
    );
    assert_eq!(
        meta["website"], "https://github.com/cairn-ca/cairn",
        "{meta}"
    );
    assert_eq!(meta["caaIdentities"], json!(["cairn.localhost"]), "{meta}");
    assert!(
        meta.get("externalAccountRequired").is_none() || meta["externalAccountRequired"] == false,
        "externalAccountRequired: {meta}"
    );
}

/// Where the Host header is trusted (dev, test), URLs follow it; with
/// `server.external_url` they never do, whatever Host a client sends.
#[tokio::test]
async fn urls_follow_host_only_where_trusted() {
    async fn directory_with_host(server: &Server, host: &str) -> Value {
        let resp = server
            .http_client()
            .get(&server.dir_url)
            .header("host", host)
            .send()
            .await
            .expect("GET directory");
        let r = AcmeResponse::read("GET", &server.dir_url, resp).await;
        assert_eq!(r.status, 200, "{r}");
        r.json()
    }
    let server = Server::start(ServerOpts::test());
    let dir = directory_with_host(&server, "other.example:8443").await;
    assert_eq!(
        dir["newNonce"], "https://other.example:8443/acme/new-nonce",
        "{dir}"
    );

    let server = Server::start(
        ServerOpts::test()
            .with_env("CAIRN_SERVER_TRUST_HOST_HEADER", "false")
            .with_env("CAIRN_SERVER_EXTERNAL_URL", "https://acme.cairn.example"),
    );
    for host in ["evil.example", "localhost"] {
        let dir = directory_with_host(&server, host).await;
        assert_eq!(
            dir["newNonce"], "https://acme.cairn.example/acme/new-nonce",
            "{dir}"
        );
        assert_eq!(
            dir["meta"]["termsOfService"], "https://acme.cairn.example/terms",
            "{dir}"
        );
    }
}

/// The staging and production presets refuse to start without
/// `server.external_url`, naming the key.
#[test]
fn shared_presets_refuse_to_start_without_an_external_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    for preset in ["staging", "production"] {
        let mut cmd = std::process::Command::new(cairn_bin());
        scrub_env(&mut cmd);
        let mut child = cmd
            .args(["serve", "--preset", preset, "--data-dir"])
            .arg(dir.path())
            .env("CAIRN_SERVER_LISTEN", format!("127.0.0.1:{}", free_port()))
            .env("CAIRN_SERVER_MANAGEMENT_LISTEN", "")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn cairn");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{preset}: cairn serve started without server.external_url");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
            .expect("stderr");
        assert!(!status.success(), "{preset}: {err}");
        assert!(
            err.contains("server.external_url is required"),
            "{preset}: {err}"
        );
    }
}

/// Some clients send `Content-Type: application/jose+json` on GET and HEAD (CLIENTS.md).
#[tokio::test]
async fn directory_and_nonce_ignore_content_type_on_get() {
    let server = Server::start(ServerOpts::test());
    let http = server.http_client();
    let resp = http
        .get(&server.dir_url)
        .header("content-type", "application/jose+json")
        .send()
        .await
        .expect("GET directory");
    let r = AcmeResponse::read("GET", &server.dir_url, resp).await;
    assert_eq!(r.status, 200, "{r}");
    let new_nonce = r.json()["newNonce"].as_str().expect("newNonce").to_string();
    for head in [true, false] {
        let req = if head {
            http.head(&new_nonce)
        } else {
            http.get(&new_nonce)
        };
        let resp = req
            .header("content-type", "application/jose+json")
            .send()
            .await
            .expect("newNonce");
        let r = AcmeResponse::read(if head { "HEAD" } else { "GET" }, &new_nonce, resp).await;
        assert!(r.status == 200 || r.status == 204, "{r}");
        assert!(r.nonce().is_some(), "{r}");
    }
}

/// RFC 8555 §7.2: HEAD → 200, GET → 204, both with Replay-Nonce and Cache-Control: no-store.
#[tokio::test]
async fn new_nonce_head_and_get() {
    let server = Server::start(ServerOpts::test());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    let url = c.endpoint("newNonce");
    let head = c.head(&url).await;
    assert_eq!(head.status, 200, "{head}");
    let get = c.get(&url).await;
    assert_eq!(get.status, 204, "{get}");
    assert!(
        get.body.is_empty(),
        "GET newNonce body must be empty: {get}"
    );
    let mut seen = std::collections::HashSet::new();
    for r in [&head, &get] {
        let n = r.nonce().unwrap_or_else(|| panic!("no Replay-Nonce: {r}"));
        // RFC 8555 §6.5.1: the value is base64url, no padding.
        assert!(
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "Replay-Nonce is not base64url: {n:?}"
        );
        assert!(seen.insert(n), "the same nonce twice");
        let cc = r.header("cache-control").unwrap_or_default();
        assert!(
            cc.contains("no-store"),
            "Cache-Control must have no-store: {r}"
        );
        assert_index_link(r, &server.dir_url);
    }
}

/// RFC 8555 §6.5: `Replay-Nonce` on newNonce and on every response to a POST
/// (successes, problems, 404, 405 and rate-limit refusals), and on no plain
/// GET or HEAD: directory, issuer, renewalInfo, docs, unknown paths, a GET of
/// a POST-only resource, a refused GET, and nothing on the management
/// listener. Ruby's acme-client crashes on a nonce from the directory.
#[tokio::test]
async fn replay_nonce_only_on_new_nonce_and_posts() {
    // One request a second, burst 1, for newAccount and renewalInfo: a quick
    // second request of each is refused by the request-rate layer.
    let server = Server::start(
        ServerOpts::always_valid()
            .with_env("CAIRN_LIMITS_REQUESTS_NEW_ACCOUNT_PER_SECOND", "1")
            .with_env("CAIRN_LIMITS_REQUESTS_NEW_ACCOUNT_BURST", "1")
            .with_env("CAIRN_LIMITS_REQUESTS_RENEWAL_INFO_PER_SECOND", "1")
            .with_env("CAIRN_LIMITS_REQUESTS_RENEWAL_INFO_BURST", "1"),
    );
    let http = server.http_client();
    let send = |method: reqwest::Method, url: String| {
        let http = http.clone();
        async move {
            let resp = http
                .request(method.clone(), &url)
                .header("content-type", "application/jose+json")
                .body(if method == reqwest::Method::POST {
                    "{}"
                } else {
                    ""
                })
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
            AcmeResponse::read(method.as_str(), &url, resp).await
        }
    };
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    let account = c.new_account(&[], true).await;
    assert_eq!(account.status, 201, "{account}");
    let (csr, _) = make_csr(&["nonce.example.com"], CertKey::P256);
    let (_, order, _) = c.issue_always_valid(&["nonce.example.com"], &csr).await;
    let cert_url = order["certificate"].as_str().expect("certificate URL");
    let cert = c.download_cert(cert_url).await.expect_status(200);
    let cert_id = cairn::ra::cert_id(&pem_to_ders(&cert.text())[0]).expect("certID");
    let renewal_info = format!("{}/{cert_id}", c.endpoint("renewalInfo"));

    // renewalInfo first: the requests below spend its one-request burst.
    let info = send(reqwest::Method::GET, renewal_info.clone()).await;
    let mut checked = vec![account, cert, info.expect_status(200)];
    // POSTs: successes and every kind of refusal.
    checked.push(c.post_as_get(&c.account_url()).await.expect_status(200));
    checked.push(send(reqwest::Method::POST, c.endpoint("newOrder")).await);
    checked.push(send(reqwest::Method::POST, format!("{}/nope", server.base_url)).await);
    checked.push(send(reqwest::Method::POST, renewal_info.clone()).await);
    checked.push(
        c.post_body(&c.endpoint("newOrder"), "text/plain", "{}")
            .await,
    );
    // newNonce, and GETs of everything else.
    let new_nonce = c.endpoint("newNonce");
    checked.push(send(reqwest::Method::HEAD, new_nonce.clone()).await);
    checked.push(send(reqwest::Method::GET, new_nonce).await);
    for url in [
        server.dir_url.clone(),
        format!("{}/acme/issuer/0", server.base_url),
        format!("{}/docs/rate-limits", server.base_url),
        format!("{}/terms", server.base_url),
        format!("{}/acme/renewal-info/AAAA.AAAA", server.base_url),
        format!("{}/nope", server.base_url),
        c.endpoint("newOrder"),
        cert_url.to_string(),
    ] {
        for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
            checked.push(send(method, url.clone()).await);
        }
    }
    // Refusals of the request-rate layer, of a POST and of a GET.
    let mut refused = |r: AcmeResponse| {
        let done = r.status == 429;
        checked.push(r);
        done
    };
    for _ in 0..20 {
        if refused(send(reqwest::Method::POST, c.endpoint("newAccount")).await) {
            break;
        }
    }
    for _ in 0..20 {
        if refused(send(reqwest::Method::GET, renewal_info.clone()).await) {
            break;
        }
    }
    // The management listener is not ACME: no nonces at all.
    for path in [
        "/roots/0",
        "/intermediates/0",
        "/crl/0",
        "/metrics",
        "/clock",
    ] {
        checked.push(send(reqwest::Method::GET, format!("{}{path}", server.mgmt_url)).await);
    }

    let statuses: std::collections::BTreeSet<u16> = checked.iter().map(|r| r.status).collect();
    for status in [200, 201, 204, 400, 404, 405, 415, 429] {
        assert!(
            statuses.contains(&status),
            "no {status} among the checked responses: {statuses:?}"
        );
    }
    let broken: Vec<String> = checked.iter().filter_map(nonce_rule_broken).collect();
    assert!(
        broken.is_empty(),
        "Replay-Nonce belongs on newNonce and POST responses only:\n{}",
        broken.join("\n")
    );
}

/// newAccount: 201 + Location for a new key, 200 + the same Location for a known key.
#[tokio::test]
async fn new_account_then_same_key_returns_existing() {
    let server = Server::start(ServerOpts::test());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    let r = c.new_account(&["mailto:admin@example.com"], true).await;
    assert_eq!(r.status, 201, "{r}");
    let loc = r.location().unwrap_or_else(|| panic!("no Location: {r}"));
    assert!(loc.starts_with(&server.base_url), "{loc}");
    assert!(r.nonce().is_some(), "{r}");
    assert_index_link(&r, &server.dir_url);
    let acct = r.json();
    assert_eq!(acct["status"], "valid", "{acct}");
    assert_eq!(
        acct["contact"],
        json!(["mailto:admin@example.com"]),
        "{acct}"
    );
    assert!(
        acct["orders"].is_string(),
        "account without orders URL: {acct}"
    );

    let again = c.new_account(&["mailto:admin@example.com"], true).await;
    assert_eq!(again.status, 200, "{again}");
    assert_eq!(again.location().as_deref(), Some(loc.as_str()), "{again}");
    assert_eq!(again.json()["status"], "valid", "{again}");

    // Without the (repeated) contact and ToS, the same key still finds the same account.
    let bare = c.new_account_payload(json!({})).await;
    assert_eq!(bare.status, 200, "{bare}");
    assert_eq!(bare.location().as_deref(), Some(loc.as_str()), "{bare}");
}

/// Every account key algorithm the server claims (ES256, ES384, RS256, EdDSA) works.
#[tokio::test]
async fn new_account_with_every_key_type() {
    let server = Server::start(ServerOpts::test());
    for kind in [
        KeyKind::Es256,
        KeyKind::Es384,
        KeyKind::Rs256(2048),
        KeyKind::EdDsa,
    ] {
        let c = AcmeClient::new(&server, kind).await;
        let r = c.new_account(&[], true).await;
        assert_eq!(r.status, 201, "{kind:?}: {r}");
        // And the kid path verifies with the stored key.
        let get = c.post_as_get(&c.account_url()).await;
        assert_eq!(get.status, 200, "{kind:?} POST-as-GET account: {get}");
    }
}

/// A 1024-bit RSA account key is too weak (DESIGN: RS256 with 2048–4096 bits).
#[tokio::test]
async fn new_account_rsa_1024_refused() {
    let server = Server::start(ServerOpts::test());
    let c = AcmeClient::new(&server, KeyKind::Rs256(1024)).await;
    let r = c.new_account(&[], true).await;
    assert_problem_any(&r, &[(400, "badPublicKey"), (400, "malformed")]);
}

/// `onlyReturnExisting`: unknown key → 400 accountDoesNotExist; known key → 200.
#[tokio::test]
async fn only_return_existing() {
    let server = Server::start(ServerOpts::test());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    let r = c
        .new_account_payload(json!({"onlyReturnExisting": true}))
        .await;
    assert_problem(&r, 400, "accountDoesNotExist");
    assert!(c.kid().is_none());

    let loc = c.register().await;
    let r = c
        .new_account_payload(json!({"onlyReturnExisting": true, "termsOfServiceAgreed": true}))
        .await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.location().as_deref(), Some(loc.as_str()), "{r}");
}

/// RFC 8555 §7.3: unsupported scheme → unsupportedContact, bad value → invalidContact.
#[tokio::test]
async fn new_account_contact_errors() {
    let server = Server::start(ServerOpts::test());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    for bad in [
        "tel:+15555550100",
        "https://example.com/contact",
        "xmpp:a@example.com",
    ] {
        let r = c.new_account(&[bad], true).await;
        assert_problem(&r, 400, "unsupportedContact");
    }
    for bad in [
        "mailto:",
        "mailto:not-an-address",
        "mailto:@example.com",
        "mailto:admin@",
        "mailto:a@example.com,b@example.com",
        "mailto:admin@example.com?subject=hi",
        "mailto:admin@exa mple.com",
    ] {
        let r = c.new_account(&[bad], true).await;
        assert_problem(&r, 400, "invalidContact");
    }
    // Not a list at all.
    let r = c
        .new_account_payload(
            json!({"contact": "mailto:admin@example.com", "termsOfServiceAgreed": true}),
        )
        .await;
    assert_problem(&r, 400, "malformed");
    // More contacts than the configured maximum (10 in the test preset).
    let many: Vec<String> = (0..11)
        .map(|i| format!("mailto:admin{i}@example.com"))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let r = c.new_account(&many, true).await;
    assert_problem_shape(&r);
    assert_eq!(r.status, 400, "{r}");
    // None of these created an account.
    let r = c
        .new_account_payload(json!({"onlyReturnExisting": true}))
        .await;
    assert_problem(&r, 400, "accountDoesNotExist");
}

/// With terms of service configured: in the directory, and required at newAccount.
#[tokio::test]
async fn terms_of_service_required_when_configured() {
    let tos = "https://example.com/tos";
    let server = Server::start(ServerOpts::test().with_env("CAIRN_ACME_TERMS_OF_SERVICE", tos));
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    assert_eq!(
        c.directory()["meta"]["termsOfService"],
        tos,
        "{}",
        c.directory()
    );
    let r = c.new_account(&[], false).await;
    assert_problem(&r, 400, "malformed");
    let r = c.new_account_payload(json!({"contact": []})).await;
    assert_problem(&r, 400, "malformed");
    let r = c.new_account(&[], true).await;
    assert_eq!(r.status, 201, "{r}");
}

/// The test preset advertises Cairn's own terms page, as Pebble advertises
/// its own: it is served, agreement is required, and the account's
/// `Link: rel="terms-of-service"` names it.
#[tokio::test]
async fn builtin_terms_of_service_are_served_and_required() {
    let server = Server::start(ServerOpts::test());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    let tos = c.directory()["meta"]["termsOfService"]
        .as_str()
        .unwrap_or_else(|| panic!("no termsOfService: {}", c.directory()))
        .to_string();
    let resp = server.http_client().get(&tos).send().await.unwrap();
    assert_eq!(resp.status(), 200, "GET {tos}");
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/html"), "{ct}");
    let page = resp.text().await.unwrap();
    assert!(page.contains("Terms of service"), "{page}");

    let r = c.new_account(&[], false).await;
    let p = assert_problem(&r, 400, "malformed");
    assert!(
        p["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("terms of service"),
        "{r}"
    );
    let r = c.new_account(&[], true).await;
    assert_eq!(r.status, 201, "{r}");
    assert!(
        r.links("terms-of-service").contains(&tos),
        "newAccount must link the terms: {r}"
    );
}

/// Without terms configured there is no terms page and no agreement to give.
#[tokio::test]
async fn no_terms_of_service_when_unset() {
    let server = Server::start(ServerOpts::test().with_env("CAIRN_ACME_TERMS_OF_SERVICE", ""));
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    assert!(
        c.directory()["meta"].get("termsOfService").is_none(),
        "{}",
        c.directory()
    );
    let resp = server
        .http_client()
        .get(format!("{}/terms", server.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let r = c.new_account(&[], false).await;
    assert_eq!(r.status, 201, "{r}");
}

/// Fields a request does not define are ignored (CLIENTS.md), in the payload and the
/// protected header.
#[tokio::test]
async fn new_account_ignores_extra_fields() {
    let server = Server::start(ServerOpts::test());
    let c = AcmeClient::new(&server, KeyKind::Rs256(2048)).await;
    let url = c.endpoint("newAccount");
    let mut h = c.header_jwk(&url).await;
    h["typ"] = json!("JWT");
    let payload = json!({
        "contact": ["mailto:admin@example.com"],
        "termsOfServiceAgreed": true,
        "status": "",
        "orders": "",
        "someExtension": {"a": 1},
    });
    let key = c.key();
    let r = c
        .post_raw(&url, h, payload.to_string().as_bytes(), &key)
        .await;
    assert_eq!(r.status, 201, "{r}");
    assert_eq!(r.json()["status"], "valid", "{r}");
}

/// newAccount needs a JSON object payload: POST-as-GET and non-objects are malformed.
#[tokio::test]
async fn new_account_payload_must_be_an_object() {
    let server = Server::start(ServerOpts::test());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    let r = c.post_jwk(&c.endpoint("newAccount"), None).await;
    assert_problem(&r, 400, "malformed");
    let r = c
        .post_jwk(&c.endpoint("newAccount"), Some(json!([1, 2])))
        .await;
    assert_problem(&r, 400, "malformed");
    let r = c
        .post_jwk(&c.endpoint("newAccount"), Some(json!({"contact": 5})))
        .await;
    assert_problem(&r, 400, "malformed");
}

/// POST-as-GET on the account URL returns the account object.
#[tokio::test]
async fn account_post_as_get() {
    let server = Server::start(ServerOpts::test());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    c.new_account(&["mailto:a@example.com"], true)
        .await
        .expect_status(201);
    let r = c.post_as_get(&c.account_url()).await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.content_type().as_deref(), Some("application/json"), "{r}");
    assert!(r.nonce().is_some(), "{r}");
    assert_index_link(&r, &server.dir_url);
    let acct = r.json();
    assert_eq!(acct["status"], "valid", "{acct}");
    assert_eq!(acct["contact"], json!(["mailto:a@example.com"]), "{acct}");
    assert!(
        acct["orders"]
            .as_str()
            .is_some_and(|u| u.starts_with(&server.base_url)),
        "{acct}"
    );
}

/// Contacts can be replaced, and a bad replacement is refused without changing anything.
#[tokio::test]
async fn account_update_contacts() {
    let server = Server::start(ServerOpts::test());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    c.new_account(&["mailto:old@example.com"], true)
        .await
        .expect_status(201);
    let url = c.account_url();
    let r = c
        .post(
            &url,
            Some(json!({"contact": ["mailto:new@example.com", "mailto:second@example.com"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(
        r.json()["contact"],
        json!(["mailto:new@example.com", "mailto:second@example.com"]),
        "{r}"
    );
    let r = c.post_as_get(&url).await;
    assert_eq!(
        r.json()["contact"],
        json!(["mailto:new@example.com", "mailto:second@example.com"]),
        "{r}"
    );

    let r = c
        .post(&url, Some(json!({"contact": ["mailto:broken"]})))
        .await;
    assert_problem(&r, 400, "invalidContact");
    let r = c
        .post(&url, Some(json!({"contact": ["tel:+15555550100"]})))
        .await;
    assert_problem(&r, 400, "unsupportedContact");
    let r = c.post_as_get(&url).await;
    assert_eq!(
        r.json()["contact"],
        json!(["mailto:new@example.com", "mailto:second@example.com"]),
        "{r}"
    );

    // An empty list removes every contact.
    let r = c.post(&url, Some(json!({"contact": []}))).await;
    assert_eq!(r.status, 200, "{r}");
    let contact = &r.json()["contact"];
    assert!(contact.is_null() || *contact == json!([]), "{r}");
}

/// acme-client re-posts `{"termsOfServiceAgreed": true}` as an "update": answer 200 with
/// the account unchanged (CLIENTS.md). An empty object is a no-op too.
#[tokio::test]
async fn account_noop_updates_return_account_unchanged() {
    let server = Server::start(ServerOpts::test());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    c.new_account(&["mailto:a@example.com"], true)
        .await
        .expect_status(201);
    let url = c.account_url();
    let before = c.post_as_get(&url).await.expect_status(200).json();
    for payload in [json!({"termsOfServiceAgreed": true}), json!({})] {
        let r = c.post(&url, Some(payload.clone())).await;
        assert_eq!(r.status, 200, "{payload}: {r}");
        let after = r.json();
        for field in ["status", "contact", "orders"] {
            assert_eq!(
                after[field], before[field],
                "{payload}: {field} changed: {r}"
            );
        }
    }
}

/// An account URL signed by another account's key is refused, and nothing changes.
#[tokio::test]
async fn account_url_of_another_account_refused() {
    let server = Server::start(ServerOpts::test());
    let a = AcmeClient::new(&server, KeyKind::Es256).await;
    a.new_account(&["mailto:a@example.com"], true)
        .await
        .expect_status(201);
    let b = AcmeClient::new(&server, KeyKind::Es256).await;
    b.register().await;
    let a_url = a.account_url();
    let r = b.post_as_get(&a_url).await;
    assert_problem_any(
        &r,
        &[
            (403, "unauthorized"),
            (404, "malformed"),
            (404, "accountDoesNotExist"),
        ],
    );
    assert!(
        !r.text().contains("a@example.com"),
        "leaks the other account: {r}"
    );
    let r = b
        .post(
            &a_url,
            Some(json!({"contact": ["mailto:evil@example.com"]})),
        )
        .await;
    assert_problem_any(
        &r,
        &[
            (403, "unauthorized"),
            (404, "malformed"),
            (404, "accountDoesNotExist"),
        ],
    );
    let r = b.post(&a_url, Some(json!({"status": "deactivated"}))).await;
    assert_problem_any(
        &r,
        &[
            (403, "unauthorized"),
            (404, "malformed"),
            (404, "accountDoesNotExist"),
        ],
    );
    let acct = a.post_as_get(&a_url).await.expect_status(200).json();
    assert_eq!(acct["status"], "valid", "{acct}");
    assert_eq!(acct["contact"], json!(["mailto:a@example.com"]), "{acct}");
}

/// Only "deactivated" is a status a client may ask for.
#[tokio::test]
async fn account_status_other_than_deactivated_refused() {
    let server = Server::start(ServerOpts::test());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    c.register().await;
    for status in ["revoked", "valid-ish", "pending"] {
        let r = c
            .post(&c.account_url(), Some(json!({"status": status})))
            .await;
        assert_problem(&r, 400, "malformed");
    }
    let acct = c
        .post_as_get(&c.account_url())
        .await
        .expect_status(200)
        .json();
    assert_eq!(acct["status"], "valid", "{acct}");
}

/// RFC 8555 §7.3.6: after deactivation every request with that account is 403 unauthorized.
#[tokio::test]
async fn account_deactivation() {
    let server = Server::start(ServerOpts::always_valid());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    c.register().await;
    let (order_url, _) = c.new_order(&["deact.example.com"]).await;
    let url = c.account_url();
    let r = c.post(&url, Some(json!({"status": "deactivated"}))).await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json()["status"], "deactivated", "{r}");

    let r = c.post_as_get(&url).await;
    assert_problem(&r, 403, "unauthorized");
    let r = c
        .new_order_raw(AcmeClient::order_payload(&["again.example.com"]))
        .await;
    assert_problem(&r, 403, "unauthorized");
    let r = c.post_as_get(&order_url).await;
    assert_problem(&r, 403, "unauthorized");
    let r = c
        .post(&url, Some(json!({"contact": ["mailto:a@example.com"]})))
        .await;
    assert_problem(&r, 403, "unauthorized");
    let r = c.post(&url, Some(json!({"status": "deactivated"}))).await;
    assert_problem(&r, 403, "unauthorized");

    // newAccount with the same key must not hand back a usable account.
    let r = c
        .new_account_payload(json!({"onlyReturnExisting": true}))
        .await;
    if (200..300).contains(&r.status) {
        assert_eq!(r.json()["status"], "deactivated", "{r}");
    } else {
        assert_problem_any(&r, &[(403, "unauthorized"), (400, "accountDoesNotExist")]);
    }
}

/// The orders list (RFC 8555 §7.1.2.1) pages with `Link: rel="next"` (3 per page in the
/// test preset).
#[tokio::test]
async fn account_orders_list_paginates() {
    let server = Server::start(ServerOpts::test());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    c.register().await;
    let mut created = Vec::new();
    for i in 0..7 {
        let (url, _) = c.new_order(&[&format!("o{i}.example.com")]).await;
        created.push(url);
    }
    let acct = c
        .post_as_get(&c.account_url())
        .await
        .expect_status(200)
        .json();
    let mut page_url = acct["orders"].as_str().expect("orders URL").to_string();
    let mut listed = Vec::new();
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages <= 10, "pagination does not end");
        let r = c.post_as_get(&page_url).await;
        assert_eq!(r.status, 200, "{r}");
        let body = r.json();
        let orders = body["orders"]
            .as_array()
            .unwrap_or_else(|| panic!("no orders array: {r}"));
        assert!(
            orders.len() <= 3,
            "more than orders_per_page=3 on a page: {r}"
        );
        listed.extend(
            orders
                .iter()
                .map(|o| o.as_str().expect("order URL").to_string()),
        );
        match r.link("next") {
            Some(next) => {
                assert_eq!(orders.len(), 3, "a non-last page is not full: {r}");
                page_url = next;
            }
            None => break,
        }
    }
    assert_eq!(pages, 3, "7 orders at 3 per page");
    let mut a = listed.clone();
    a.sort();
    a.dedup();
    assert_eq!(a.len(), listed.len(), "an order listed twice: {listed:?}");
    let mut b = created.clone();
    b.sort();
    assert_eq!(a, b, "listed orders differ from created ones");

    // Another account cannot read this list.
    let other = AcmeClient::new(&server, KeyKind::Es256).await;
    other.register().await;
    let r = other
        .post_as_get(acct["orders"].as_str().expect("orders"))
        .await;
    assert_problem_any(
        &r,
        &[
            (403, "unauthorized"),
            (404, "malformed"),
            (404, "accountDoesNotExist"),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// keyChange (RFC 8555 §7.3.5)
// ---------------------------------------------------------------------------------------

/// The keyChange inner JWS: signed by the new key, `jwk` = new key, `url` = keyChange,
/// payload {account, oldKey}.
fn key_change_inner(url: &str, account: &str, old_jwk: Value, new_key: &AcmeKey) -> Value {
    jws(
        &json!({"alg": new_key.alg(), "jwk": new_key.jwk(), "url": url}),
        json!({"account": account, "oldKey": old_jwk})
            .to_string()
            .as_bytes(),
        new_key,
    )
}

/// Sends `inner` as the payload of an outer JWS signed by the client's current key (kid).
async fn post_key_change(c: &AcmeClient, inner: &Value) -> AcmeResponse {
    let url = c.endpoint("keyChange");
    let h = c.header_kid(&url).await;
    let key = c.key();
    c.post_raw(&url, h, inner.to_string().as_bytes(), &key)
        .await
}

#[tokio::test]
async fn key_change_rolls_the_account_key() {
    let server = Server::start(ServerOpts::test());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    let acct_url = c.register().await;
    let old = c.key();
    let new_key = AcmeKey::generate(KeyKind::Rs256(2048));
    let new_jwk = new_key.jwk();
    let url = c.endpoint("keyChange");
    let inner = key_change_inner(&url, &acct_url, old.jwk(), &new_key);
    let r = post_key_change(&c, &inner).await;
    assert_eq!(r.status, 200, "{r}");
    assert!(r.nonce().is_some(), "{r}");

    // The old key no longer authenticates the account (here its ES256 signature does not
    // even fit the new RSA key)...
    let r = c.post_as_get(&acct_url).await;
    assert_problem_any(
        &r,
        &[
            (400, "malformed"),
            (403, "unauthorized"),
            (400, "badSignatureAlgorithm"),
        ],
    );
    let r = c
        .new_account_payload(json!({"onlyReturnExisting": true}))
        .await;
    assert_problem(&r, 400, "accountDoesNotExist");

    // ...the new one does, with kid and through newAccount.
    c.set_key(new_key);
    c.set_kid(Some(acct_url.clone()));
    let r = c.post_as_get(&acct_url).await;
    assert_eq!(r.status, 200, "{r}");
    let r = c
        .new_account_payload(json!({"onlyReturnExisting": true}))
        .await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.location().as_deref(), Some(acct_url.as_str()), "{r}");
    assert_eq!(c.key().jwk(), new_jwk);
    let (_, order) = c.new_order(&["rolled.example.com"]).await;
    assert_eq!(order["status"], "pending");
}

/// Every malformed inner JWS is refused and the account keeps its key.
#[tokio::test]
async fn key_change_inner_jws_errors() {
    let server = Server::start(ServerOpts::test());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    let acct_url = c.register().await;
    let old = c.key();
    let url = c.endpoint("keyChange");
    let new_key = AcmeKey::generate(KeyKind::Es256);
    let payload = json!({"account": acct_url, "oldKey": old.jwk()}).to_string();

    // Inner JWS with a nonce.
    let inner = jws(
        &json!({"alg": new_key.alg(), "jwk": new_key.jwk(), "url": url, "nonce": c.fresh_nonce().await}),
        payload.as_bytes(),
        &new_key,
    );
    let r = post_key_change(&c, &inner).await;
    assert_problem(&r, 400, "malformed");

    // Inner url differs from the outer url.
    let inner = jws(
        &json!({"alg": new_key.alg(), "jwk": new_key.jwk(), "url": c.endpoint("newAccount")}),
        payload.as_bytes(),
        &new_key,
    );
    let r = post_key_change(&c, &inner).await;
    assert_problem_any(&r, &[(400, "malformed"), (403, "unauthorized")]);

    // Inner url missing.
    let inner = jws(
        &json!({"alg": new_key.alg(), "jwk": new_key.jwk()}),
        payload.as_bytes(),
        &new_key,
    );
    let r = post_key_change(&c, &inner).await;
    assert_problem(&r, 400, "malformed");

    // oldKey is not the account's key.
    let stranger = AcmeKey::generate(KeyKind::Es256);
    let inner = key_change_inner(&url, &acct_url, stranger.jwk(), &new_key);
    let r = post_key_change(&c, &inner).await;
    assert_problem_any(&r, &[(400, "malformed"), (403, "unauthorized")]);

    // account is not the outer kid.
    let other = AcmeClient::new(&server, KeyKind::Es256).await;
    let other_url = other.register().await;
    let inner = key_change_inner(&url, &other_url, old.jwk(), &new_key);
    let r = post_key_change(&c, &inner).await;
    assert_problem_any(&r, &[(400, "malformed"), (403, "unauthorized")]);

    // Inner signed by a key other than its jwk.
    let inner = jws(
        &json!({"alg": new_key.alg(), "jwk": new_key.jwk(), "url": url}),
        payload.as_bytes(),
        &stranger,
    );
    let r = post_key_change(&c, &inner).await;
    assert_problem(&r, 400, "malformed");

    // Inner with a corrupted signature.
    let mut inner = key_change_inner(&url, &acct_url, old.jwk(), &new_key);
    corrupt_signature(&mut inner);
    let r = post_key_change(&c, &inner).await;
    assert_problem(&r, 400, "malformed");

    // Inner with kid instead of jwk.
    let inner = jws(
        &json!({"alg": new_key.alg(), "kid": acct_url, "url": url}),
        payload.as_bytes(),
        &new_key,
    );
    let r = post_key_change(&c, &inner).await;
    assert_problem(&r, 400, "malformed");

    // Payload that is not a JWS at all.
    let r = post_key_change(&c, &json!({"account": acct_url, "oldKey": old.jwk()})).await;
    assert_problem(&r, 400, "malformed");

    // Outer signed with jwk instead of kid.
    let inner = key_change_inner(&url, &acct_url, old.jwk(), &new_key);
    let h = c.header_jwk(&url).await;
    let r = c
        .post_raw(&url, h, inner.to_string().as_bytes(), &old)
        .await;
    assert_problem(&r, 400, "malformed");

    // After all that, the old key still works and the new one is not bound.
    let r = c.post_as_get(&acct_url).await;
    assert_eq!(r.status, 200, "{r}");
    let probe = AcmeClient::with_key(&server, new_key).await;
    let r = probe
        .new_account_payload(json!({"onlyReturnExisting": true}))
        .await;
    assert_problem(&r, 400, "accountDoesNotExist");
}

/// A new key that already belongs to another account → 409 with that account's Location.
#[tokio::test]
async fn key_change_to_a_key_in_use_conflicts() {
    let server = Server::start(ServerOpts::test());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    let acct_url = c.register().await;
    let other = AcmeClient::new(&server, KeyKind::Es256).await;
    let other_url = other.register().await;
    let url = c.endpoint("keyChange");
    let inner = key_change_inner(&url, &acct_url, c.key().jwk(), &other.key());
    let r = post_key_change(&c, &inner).await;
    assert_eq!(r.status, 409, "{r}");
    assert_problem_shape(&r);
    assert!(r.nonce().is_some(), "{r}");
    assert_eq!(
        r.location().as_deref(),
        Some(other_url.as_str()),
        "409 must point at the account: {r}"
    );
    // Both accounts keep their keys.
    c.post_as_get(&acct_url).await.expect_status(200);
    other.post_as_get(&other_url).await.expect_status(200);
}

/// RFC 8555 §7.3.5: "Check that no account exists whose account key is the same as the
/// key in the jwk header parameter of the inner JWS" -- the account's own current key
/// included, so rolling to the same key is refused (409, or 400 as Boulder does).
#[tokio::test]
async fn key_change_to_the_same_key_refused() {
    let server = Server::start(ServerOpts::test());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    let acct_url = c.register().await;
    let url = c.endpoint("keyChange");
    let inner = key_change_inner(&url, &acct_url, c.key().jwk(), &c.key());
    let r = post_key_change(&c, &inner).await;
    assert!(r.status == 400 || r.status == 409, "{r}");
    assert_problem_shape(&r);
    c.post_as_get(&acct_url).await.expect_status(200);
}
