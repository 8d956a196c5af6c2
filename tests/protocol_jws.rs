//! RFC 8555 protocol tests, part 3: the request envelope (§6.2–§6.5). Every malformed
//! JWS, bad nonce, wrong URL, wrong key reference or unsupported algorithm is refused
//! with the right problem, a `Replay-Nonce`, and never a 5xx.

mod common;

use common::*;
use serde_json::json;

/// A server and a client with an account.
async fn setup() -> (Server, AcmeClient) {
    let server = Server::start(ServerOpts::test());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    c.register().await;
    (server, c)
}

/// A correct newOrder JWS for `c`, to be broken by each test.
async fn order_jws(c: &AcmeClient) -> (String, serde_json::Value) {
    let url = c.endpoint("newOrder");
    let h = c.header_kid(&url).await;
    let payload = AcmeClient::order_payload(&["jws.example.com"]).to_string();
    let key = c.key();
    (url, jws(&h, payload.as_bytes(), &key))
}

#[tokio::test]
async fn wrong_content_type_refused() {
    let (_server, c) = setup().await;
    for ct in [
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
    ] {
        let (url, body) = order_jws(&c).await;
        let r = c.post_body(&url, ct, body.to_string()).await;
        assert_problem_any(&r, &[(415, "malformed"), (400, "malformed")]);
    }
    // No Content-Type at all.
    let (url, body) = order_jws(&c).await;
    let resp = c
        .http
        .post(&url)
        .body(body.to_string())
        .send()
        .await
        .expect("POST");
    let r = AcmeResponse::read("POST", &url, resp).await;
    assert_problem_any(&r, &[(415, "malformed"), (400, "malformed")]);
    // The refused requests created nothing, and the flow still works.
    let (_, order) = c.new_order(&["jws.example.com"]).await;
    assert_eq!(order["status"], "pending");
}

#[tokio::test]
async fn malformed_bodies_refused() {
    let (_server, c) = setup().await;
    let url = c.endpoint("newOrder");
    let key = c.key();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"{not json".to_vec()),
        ("empty body", Vec::new()),
        ("JSON array", b"[]".to_vec()),
        ("JSON string", b"\"x\"".to_vec()),
        ("missing signature", {
            let (_, j) = order_jws(&c).await;
            json!({"protected": j["protected"], "payload": j["payload"]})
                .to_string()
                .into_bytes()
        }),
        ("missing protected", {
            let (_, j) = order_jws(&c).await;
            json!({"payload": j["payload"], "signature": j["signature"]})
                .to_string()
                .into_bytes()
        }),
        ("missing payload", {
            let (_, j) = order_jws(&c).await;
            json!({"protected": j["protected"], "signature": j["signature"]})
                .to_string()
                .into_bytes()
        }),
        ("protected not base64url", {
            let (_, j) = order_jws(&c).await;
            json!({"protected": "!!!", "payload": j["payload"], "signature": j["signature"]})
                .to_string()
                .into_bytes()
        }),
        ("protected not JSON", {
            let j = jws_raw_header(b"not json", b"{}", &key);
            j.to_string().into_bytes()
        }),
        ("signature not base64url", {
            let (_, mut j) = order_jws(&c).await;
            j["signature"] = json!("***");
            j.to_string().into_bytes()
        }),
        ("payload not JSON", {
            let h = c.header_kid(&url).await;
            jws(&h, b"hello", &key).to_string().into_bytes()
        }),
        ("unprotected header", {
            let (_, mut j) = order_jws(&c).await;
            j["header"] = json!({"kid": c.account_url()});
            j.to_string().into_bytes()
        }),
    ];
    for (label, body) in cases {
        let r = c.post_body(&url, "application/jose+json", body).await;
        assert_eq!(r.status, 400, "{label}: {r}");
        assert_problem(&r, 400, "malformed");
    }
}

/// ACME uses only the flattened JSON serialization (RFC 8555 §6.2).
#[tokio::test]
async fn compact_and_general_serializations_refused() {
    let (_server, c) = setup().await;
    let (url, j) = order_jws(&c).await;
    let r = c
        .post_body(&url, "application/jose+json", to_compact(&j))
        .await;
    assert_problem(&r, 400, "malformed");
    let (url, j) = order_jws(&c).await;
    let r = c.post_jws(&url, &to_general(&j)).await;
    assert_problem(&r, 400, "malformed");
}

/// RFC 8555 §6.5: missing, unknown, garbage and replayed nonces → 400 badNonce with a
/// fresh Replay-Nonce, which then works.
#[tokio::test]
async fn bad_nonces_refused_with_fresh_nonce() {
    let (_server, c) = setup().await;
    let url = c.endpoint("newOrder");
    let key = c.key();
    let payload = AcmeClient::order_payload(&["nonce.example.com"]).to_string();
    let kid = c.account_url();
    let mut headers = vec![
        ("missing", json!({"alg": key.alg(), "kid": kid, "url": url})),
        (
            "empty",
            json!({"alg": key.alg(), "kid": kid, "url": url, "nonce": ""}),
        ),
        (
            "unknown",
            json!({"alg": key.alg(), "kid": kid, "url": url, "nonce": b64u([7u8; 16])}),
        ),
        (
            "not base64url",
            json!({"alg": key.alg(), "kid": kid, "url": url, "nonce": "!!!***"}),
        ),
        (
            "not a string",
            json!({"alg": key.alg(), "kid": kid, "url": url, "nonce": 12345}),
        ),
    ];
    // A nonce with one character changed.
    let mut n = c.fresh_nonce().await.into_bytes();
    n[0] = if n[0] == b'A' { b'B' } else { b'A' };
    headers.push((
        "altered",
        json!({"alg": key.alg(), "kid": kid, "url": url, "nonce": String::from_utf8(n).expect("ascii")}),
    ));
    for (label, h) in headers {
        let r = c.post_raw(&url, h, payload.as_bytes(), &key).await;
        assert_eq!(r.status, 400, "{label} nonce: {r}");
        if label == "not a string" {
            assert_problem_any(&r, &[(400, "badNonce"), (400, "malformed")]);
        } else {
            assert_problem(&r, 400, "badNonce");
        }
        // The fresh nonce from the error works.
        let fresh = r.nonce().expect("nonce");
        let h = json!({"alg": key.alg(), "kid": kid, "url": url, "nonce": fresh});
        let ok = c.post_raw(&url, h, payload.as_bytes(), &key).await;
        assert_eq!(
            ok.status, 201,
            "{label}: the nonce from the badNonce response was refused: {ok}"
        );
    }
}

/// A nonce is single-use: the second request with it is badNonce.
#[tokio::test]
async fn replayed_nonce_refused() {
    let (_server, c) = setup().await;
    let url = c.endpoint("newOrder");
    let key = c.key();
    let h = c.header_kid(&url).await;
    let body = jws(
        &h,
        AcmeClient::order_payload(&["replay.example.com"])
            .to_string()
            .as_bytes(),
        &key,
    );
    let first = c.post_jws(&url, &body).await;
    assert_eq!(first.status, 201, "{first}");
    let second = c.post_jws(&url, &body).await;
    assert_problem(&second, 400, "badNonce");
    // Also across endpoints: the account URL with a used nonce.
    let acct = c.account_url();
    let h2 = json!({"alg": key.alg(), "kid": acct, "url": acct, "nonce": h["nonce"]});
    let r = c.post_raw(&acct, h2, b"", &key).await;
    assert_problem(&r, 400, "badNonce");
}

/// Nonces from `newNonce`, HEAD and GET, both work once.
#[tokio::test]
async fn nonces_from_head_and_get_work() {
    let (_server, c) = setup().await;
    let nn = c.endpoint("newNonce");
    for r in [c.head(&nn).await, c.get(&nn).await] {
        let nonce = r.nonce().expect("nonce");
        let acct = c.account_url();
        let key = c.key();
        let h = json!({"alg": key.alg(), "kid": acct, "url": acct, "nonce": nonce});
        let ok = c.post_raw(&acct, h, b"", &key).await;
        assert_eq!(ok.status, 200, "{ok}");
    }
}

/// RFC 8555 §6.4: the `url` header must be exactly the request URL.
#[tokio::test]
async fn url_header_must_match_request() {
    let (server, c) = setup().await;
    let url = c.endpoint("newOrder");
    let key = c.key();
    let payload = AcmeClient::order_payload(&["url.example.com"]).to_string();
    let kid = c.account_url();
    let wrong_urls = vec![
        c.endpoint("newAccount"),
        format!("{url}/"),
        format!("{url}?x=1"),
        url.replace("https://localhost", "https://127.0.0.1"),
        url.replace("https://", "http://"),
        format!(
            "https://evil.example{}",
            url.trim_start_matches(&server.base_url)
        ),
    ];
    for wrong in wrong_urls {
        let h = json!({"alg": key.alg(), "kid": kid, "nonce": c.nonce().await, "url": wrong});
        let r = c.post_raw(&url, h, payload.as_bytes(), &key).await;
        assert_problem_any(
            &r,
            &[
                (403, "unauthorized"),
                (401, "unauthorized"),
                (400, "malformed"),
            ],
        );
    }
    let h = json!({"alg": key.alg(), "kid": kid, "nonce": c.nonce().await});
    let r = c.post_raw(&url, h, payload.as_bytes(), &key).await;
    assert_problem_any(&r, &[(400, "malformed"), (403, "unauthorized")]);
    let h = json!({"alg": key.alg(), "kid": kid, "nonce": c.nonce().await, "url": 5});
    let r = c.post_raw(&url, h, payload.as_bytes(), &key).await;
    assert_problem_any(&r, &[(400, "malformed"), (403, "unauthorized")]);
}

/// RFC 8555 §6.2: `jwk` only for newAccount (and revokeCert), `kid` for the rest, never both.
#[tokio::test]
async fn jwk_and_kid_in_the_right_places() {
    let (_server, c) = setup().await;
    let key = c.key();
    // jwk where kid is required.
    let r = c
        .post_jwk(
            &c.endpoint("newOrder"),
            Some(AcmeClient::order_payload(&["k.example.com"])),
        )
        .await;
    assert_problem(&r, 400, "malformed");
    let r = c.post_jwk(&c.account_url(), None).await;
    assert_problem(&r, 400, "malformed");
    // kid where jwk is required.
    let r = c
        .post_kid(
            &c.endpoint("newAccount"),
            Some(json!({"termsOfServiceAgreed": true})),
        )
        .await;
    assert_problem(&r, 400, "malformed");
    // Both.
    let url = c.endpoint("newOrder");
    let h = json!({"alg": key.alg(), "kid": c.account_url(), "jwk": key.jwk(), "nonce": c.nonce().await, "url": url});
    let r = c
        .post_raw(
            &url,
            h,
            AcmeClient::order_payload(&["k.example.com"])
                .to_string()
                .as_bytes(),
            &key,
        )
        .await;
    assert_problem(&r, 400, "malformed");
    // Neither.
    let h = json!({"alg": key.alg(), "nonce": c.nonce().await, "url": url});
    let r = c
        .post_raw(
            &url,
            h,
            AcmeClient::order_payload(&["k.example.com"])
                .to_string()
                .as_bytes(),
            &key,
        )
        .await;
    assert_problem(&r, 400, "malformed");
}

/// A kid that names no account → 400 accountDoesNotExist (or malformed if it is not even
/// an account URL of this server).
#[tokio::test]
async fn unknown_kid_refused() {
    let (server, c) = setup().await;
    let url = c.endpoint("newOrder");
    let key = c.key();
    let payload = AcmeClient::order_payload(&["kid.example.com"]).to_string();
    let acct = c.account_url();
    let (prefix, _) = acct.rsplit_once('/').expect("account URL has a path");
    for kid in [
        format!("{prefix}/999999999"),
        format!("{prefix}/nonexistent"),
    ] {
        let h = json!({"alg": key.alg(), "kid": kid, "nonce": c.nonce().await, "url": url});
        let r = c.post_raw(&url, h, payload.as_bytes(), &key).await;
        assert_problem(&r, 400, "accountDoesNotExist");
    }
    for kid in [
        "https://evil.example/acme/acct/1".to_string(),
        format!("{}/not-an-account", server.base_url),
        "1".to_string(),
    ] {
        let h = json!({"alg": key.alg(), "kid": kid, "nonce": c.nonce().await, "url": url});
        let r = c.post_raw(&url, h, payload.as_bytes(), &key).await;
        assert_problem_any(
            &r,
            &[
                (400, "accountDoesNotExist"),
                (400, "malformed"),
                (403, "unauthorized"),
            ],
        );
    }
}

/// RFC 8555 §6.2: an unsupported `alg` → 400 badSignatureAlgorithm listing `algorithms`.
#[tokio::test]
async fn unsupported_algorithms_refused() {
    let (_server, c) = setup().await;
    let url = c.endpoint("newOrder");
    let key = c.key();
    let payload = AcmeClient::order_payload(&["alg.example.com"]).to_string();
    for alg in ["HS256", "RS512", "none", "PS256", "ES512", "es256"] {
        let h = json!({"alg": alg, "kid": c.account_url(), "nonce": c.nonce().await, "url": url});
        let r = c.post_raw(&url, h, payload.as_bytes(), &key).await;
        let p = assert_problem(&r, 400, "badSignatureAlgorithm");
        let algs = p["algorithms"]
            .as_array()
            .unwrap_or_else(|| panic!("no algorithms array: {r}"));
        let algs: Vec<&str> = algs.iter().filter_map(|a| a.as_str()).collect();
        for want in ["RS256", "ES256"] {
            assert!(algs.contains(&want), "algorithms lacks {want}: {r}");
        }
        assert!(!algs.contains(&"none") && !algs.contains(&"HS256"), "{r}");
    }
    // `alg` empty or missing.
    let h = json!({"alg": "", "kid": c.account_url(), "nonce": c.nonce().await, "url": url});
    let r = c.post_raw(&url, h, payload.as_bytes(), &key).await;
    assert_problem_any(&r, &[(400, "malformed"), (400, "badSignatureAlgorithm")]);
    let h = json!({"kid": c.account_url(), "nonce": c.nonce().await, "url": url});
    let r = c.post_raw(&url, h, payload.as_bytes(), &key).await;
    assert_problem_any(&r, &[(400, "malformed"), (400, "badSignatureAlgorithm")]);
    // `alg` that does not fit the key (ES384 header, P-256 key; RS256 header, EC key).
    for alg in ["ES384", "RS256", "EdDSA"] {
        let h = json!({"alg": alg, "kid": c.account_url(), "nonce": c.nonce().await, "url": url});
        let r = c.post_raw(&url, h, payload.as_bytes(), &key).await;
        assert_problem_any(&r, &[(400, "malformed"), (400, "badSignatureAlgorithm")]);
    }
}

/// A signature that does not verify → 400 malformed; nothing is created.
#[tokio::test]
async fn bad_signatures_refused() {
    let (_server, c) = setup().await;
    let (url, mut j) = order_jws(&c).await;
    corrupt_signature(&mut j);
    let r = c.post_jws(&url, &j).await;
    assert_problem(&r, 400, "malformed");

    // Signed by another key than the account's.
    let url = c.endpoint("newOrder");
    let stranger = AcmeKey::generate(KeyKind::Es256);
    let h = c.header_kid(&url).await;
    let r = c
        .post_raw(
            &url,
            h,
            AcmeClient::order_payload(&["sig.example.com"])
                .to_string()
                .as_bytes(),
            &stranger,
        )
        .await;
    assert_problem(&r, 400, "malformed");

    // newAccount whose jwk is not the signing key.
    let na = c.endpoint("newAccount");
    let a = AcmeKey::generate(KeyKind::Es256);
    let b = AcmeKey::generate(KeyKind::Es256);
    let h = json!({"alg": "ES256", "jwk": a.jwk(), "nonce": c.nonce().await, "url": na});
    let r = c
        .post_raw(&na, h, br#"{"termsOfServiceAgreed":true}"#, &b)
        .await;
    assert_problem(&r, 400, "malformed");

    // An ECDSA signature in DER (ASN.1) instead of the JWS r||s form.
    let h = c.header_kid(&url).await;
    let p = b64u(serde_json::to_vec(&h).expect("json"));
    let pl = b64u(AcmeClient::order_payload(&["der.example.com"]).to_string());
    let pkey = c.key().openssl_pkey();
    let mut signer =
        openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &pkey).expect("signer");
    signer
        .update(format!("{p}.{pl}").as_bytes())
        .expect("update");
    let der = signer.sign_to_vec().expect("sign");
    let r = c
        .post_jws(
            &url,
            &json!({"protected": p, "payload": pl, "signature": b64u(der)}),
        )
        .await;
    assert_problem(&r, 400, "malformed");

    // Truncated and empty signatures.
    let (url, mut j) = order_jws(&c).await;
    let sig = b64u_decode(j["signature"].as_str().expect("sig"));
    j["signature"] = json!(b64u(&sig[..sig.len() - 1]));
    let r = c.post_jws(&url, &j).await;
    assert_problem(&r, 400, "malformed");
    let (url, mut j) = order_jws(&c).await;
    j["signature"] = json!("");
    let r = c.post_jws(&url, &j).await;
    assert_problem(&r, 400, "malformed");

    // None of those created an order.
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
    assert_eq!(
        list["orders"],
        json!([]),
        "a refused request created an order: {list}"
    );
}

/// Bodies over 64 KiB (server.max_body_bytes) → 413 or 400 malformed, as a problem.
#[tokio::test]
async fn oversized_body_refused() {
    let (_server, c) = setup().await;
    let url = c.endpoint("newOrder");
    let h = c.header_kid(&url).await;
    let pad = "x".repeat(70 * 1024);
    let payload = json!({"identifiers": [{"type": "dns", "value": "big.example.com"}], "pad": pad});
    let key = c.key();
    let r = c
        .post_raw(&url, h, payload.to_string().as_bytes(), &key)
        .await;
    assert_problem_any(&r, &[(413, "malformed"), (400, "malformed")]);
    // A body just under the limit with a valid JWS is still fine.
    let h = c.header_kid(&url).await;
    let pad = "x".repeat(30 * 1024);
    let payload = json!({"identifiers": [{"type": "dns", "value": "big.example.com"}], "pad": pad});
    let r = c
        .post_raw(&url, h, payload.to_string().as_bytes(), &key)
        .await;
    assert_eq!(r.status, 201, "{r}");
}

/// Extra protected-header parameters (`typ`, unknown names) are ignored (CLIENTS.md).
#[tokio::test]
async fn extra_header_parameters_ignored() {
    let (_server, c) = setup().await;
    let url = c.endpoint("newOrder");
    let mut h = c.header_kid(&url).await;
    h["typ"] = json!("JWT");
    h["x-custom"] = json!({"a": 1});
    let key = c.key();
    let r = c
        .post_raw(
            &url,
            h,
            AcmeClient::order_payload(&["typ.example.com"])
                .to_string()
                .as_bytes(),
            &key,
        )
        .await;
    assert_eq!(r.status, 201, "{r}");
}

/// RFC 7515 §4.1.11: a `crit` extension the server does not understand makes the JWS
/// invalid, and Cairn understands none; `crit` must not be empty or list registered
/// names. RFC 7797 unencoded payloads (`"b64": false`) are not ACME. All `malformed`,
/// for the outer JWS and for keyChange's inner one.
#[tokio::test]
async fn crit_and_unencoded_payloads_refused() {
    let (_server, c) = setup().await;
    let url = c.endpoint("newOrder");
    let key = c.key();
    let cases = [
        json!({"crit": ["x"], "x": 1}),
        json!({"crit": []}),
        json!({"crit": ["nonce"]}),
        json!({"crit": "x"}),
        json!({"b64": false, "crit": ["b64"]}),
        json!({"b64": false}),
        json!({"b64": "false"}),
    ];
    for extra in &cases {
        let mut h = c.header_kid(&url).await;
        for (k, v) in extra.as_object().expect("object") {
            h[k] = v.clone();
        }
        let payload = AcmeClient::order_payload(&["crit.example.com"]).to_string();
        let r = c.post_raw(&url, h, payload.as_bytes(), &key).await;
        assert_problem(&r, 400, "malformed");
    }

    let ku = c.endpoint("keyChange");
    let new_key = AcmeKey::generate(KeyKind::Es256);
    for extra in &cases {
        let mut ih = json!({"alg": new_key.alg(), "jwk": new_key.jwk(), "url": ku});
        for (k, v) in extra.as_object().expect("object") {
            ih[k] = v.clone();
        }
        let inner = jws(
            &ih,
            json!({"account": c.account_url(), "oldKey": key.jwk()})
                .to_string()
                .as_bytes(),
            &new_key,
        );
        let h = c.header_kid(&ku).await;
        let r = c.post_raw(&ku, h, inner.to_string().as_bytes(), &key).await;
        assert_problem(&r, 400, "malformed");
    }
    // Nothing was created or changed.
    c.post_as_get(&c.account_url()).await.expect_status(200);
    let (_, order) = c.new_order(&["crit.example.com"]).await;
    assert_eq!(order["status"], "pending");
}

/// Unknown paths and wrong methods: clean 4xx, never 5xx.
#[tokio::test]
async fn unknown_paths_and_methods() {
    let (server, c) = setup().await;
    let r = c
        .get(&format!("{}/acme/no-such-thing", server.base_url))
        .await;
    assert!((400..500).contains(&r.status), "{r}");
    assert_problem_shape(&r);
    let r = c
        .post_as_get(&format!("{}/acme/no-such-thing", server.base_url))
        .await;
    assert!((400..500).contains(&r.status), "{r}");
    assert_problem_shape(&r);
    for name in ["newAccount", "newOrder", "keyChange", "revokeCert"] {
        // (revokeCert's absence is the directory test's business.)
        let Some(url) = c.directory()[name].as_str() else {
            continue;
        };
        let r = c.get(url).await;
        assert!(
            r.status == 405 || r.status == 400 || r.status == 404,
            "GET {name}: {r}"
        );
        assert_problem_shape(&r);
    }
    let r = c
        .post_body(&c.endpoint("newNonce"), "application/jose+json", "{}")
        .await;
    assert!((200..500).contains(&r.status), "{r}");
}

/// Paths and queries the router cannot decode are problem documents too,
/// not the extractors' `400 text/plain` (issue 10).
#[tokio::test]
async fn undecodable_paths_and_queries_get_problems() {
    let (server, c) = setup().await;
    let b = &server.base_url;
    let r = c.get(&format!("{b}/acme/renewal-info/%FF")).await;
    assert_problem(&r, 400, "malformed");
    for path in [
        "/acme/acct/%FF",
        "/acme/acct/%FF/orders",
        "/acme/order/%FF",
        "/acme/finalize/%FF",
        "/acme/authz/%FF",
        "/acme/chall/%FF",
        "/acme/cert/%FF",
    ] {
        let r = c.post_as_get(&format!("{b}{path}")).await;
        assert_problem(&r, 400, "malformed");
    }
    let url = format!("{}/orders?cursor=1&cursor=2", c.account_url());
    let r = c.post_as_get(&url).await;
    assert_problem(&r, 400, "malformed");
}

/// A request target above server.max_uri_bytes gets 414 and header fields
/// above server.max_header_bytes 431, as problem documents (issue 10).
#[tokio::test]
async fn long_paths_and_large_headers_get_problems() {
    let (server, _c) = setup().await;
    let http = server.http_client();
    let url = format!("{}/acme/order/{}", server.base_url, "1".repeat(8 * 1024));
    let resp = http.get(&url).send().await.expect("GET a long path");
    let r = AcmeResponse::read("GET", &url, resp).await;
    assert_problem(&r, 414, "malformed");
    let resp = http
        .get(&server.dir_url)
        .header("x-large", "a".repeat(24 * 1024))
        .send()
        .await
        .expect("GET with a large header");
    let r = AcmeResponse::read("GET", &server.dir_url, resp).await;
    assert_problem(&r, 431, "malformed");
}

/// The same nonce in several requests at once: exactly one is accepted (single use is
/// enforced atomically, not check-then-insert).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonce_raced_is_accepted_once() {
    let (_server, c) = setup().await;
    let c = std::sync::Arc::new(c);
    let url = c.account_url();
    let key = c.key();
    let nonce = c.fresh_nonce().await;
    let h = json!({"alg": key.alg(), "kid": url, "nonce": nonce, "url": url});
    let body = jws(&h, b"", &key);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = c.clone();
        let body = body.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move { c.post_jws(&url, &body).await }));
    }
    let mut ok = 0;
    for t in tasks {
        let r = t.await.expect("task");
        if r.status == 200 {
            ok += 1;
        } else {
            assert_problem(&r, 400, "badNonce");
        }
    }
    assert_eq!(ok, 1, "a nonce was accepted {ok} times");
}

/// A `shared` server's used nonces and key live in the database: a nonce
/// from before a crash is good once after it, and one used before it stays
/// used.
/// A POST-as-GET of `c`'s account with `nonce`.
async fn post_with_nonce(c: &AcmeClient, nonce: &str) -> AcmeResponse {
    let (acct, key) = (c.account_url(), c.key());
    let h = json!({"alg": key.alg(), "kid": acct, "url": acct, "nonce": nonce});
    c.post_raw(&acct, h, b"", &key).await
}

/// A nonce spent and one not yet, then a crash and restart of `server`:
/// (used, unused).
async fn nonces_across_a_restart(server: &mut Server, c: &mut AcmeClient) -> (String, String) {
    let used = c.fresh_nonce().await;
    assert_eq!(post_with_nonce(c, &used).await.status, 200);
    let unused = c.fresh_nonce().await;
    server.restart();
    c.reconnect(server);
    (used, unused)
}

#[tokio::test]
async fn shared_nonces_outlive_a_restart_and_stay_single_use() {
    let mut server = Server::start(ServerOpts::test().shared_nonces());
    let mut c = AcmeClient::new(&server, KeyKind::Es256).await;
    c.register().await;
    let (used, unused) = nonces_across_a_restart(&mut server, &mut c).await;
    assert_problem(&post_with_nonce(&c, &used).await, 400, "badNonce");
    let ok = post_with_nonce(&c, &unused).await;
    assert_eq!(ok.status, 200, "{ok}");
    assert_problem(&post_with_nonce(&c, &unused).await, 400, "badNonce");
}

/// A `local` server (the test preset) keeps used nonces in memory under a
/// key of its own: after a crash its earlier nonces are refused, never
/// accepted twice, and the refusal carries a nonce that works.
#[tokio::test]
async fn local_nonces_die_with_the_process() {
    let (mut server, mut c) = setup().await;
    let (used, unused) = nonces_across_a_restart(&mut server, &mut c).await;
    for nonce in [used, unused] {
        let r = post_with_nonce(&c, &nonce).await;
        assert_problem(&r, 400, "badNonce");
        let fresh = r.nonce().expect("a nonce with the refusal");
        let ok = post_with_nonce(&c, &fresh).await;
        assert_eq!(ok.status, 200, "{ok}");
    }
}

/// `cairn serve` on `server`'s data directory with `acme.nonces = nonces`:
/// how it exited and what it said (it must exit by itself).
fn serve_beside(server: &Server, nonces: &str) -> (std::process::ExitStatus, String) {
    let out = std::process::Command::new(cairn_bin())
        .args(["serve", "--preset", "test", "--data-dir"])
        .arg(&server.data_dir)
        .env("CAIRN_SERVER_LISTEN", "127.0.0.1:0")
        .env("CAIRN_SERVER_MANAGEMENT_LISTEN", "127.0.0.1:0")
        .env("CAIRN_ACME_NONCES", nonces)
        .env("CAIRN_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run cairn serve");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `local` server runs alone on its data directory: a second instance,
/// whichever way it keeps nonces, refuses to start and says why; and a
/// `local` one refuses to start beside a `shared` one.
#[tokio::test]
async fn a_local_nonce_server_runs_alone() {
    let (server, c) = setup().await;
    for nonces in ["local", "shared"] {
        let (status, err) = serve_beside(&server, nonces);
        assert!(!status.success(), "{nonces}: {err}");
        assert!(err.contains("acme.nonces = \"shared\""), "{nonces}: {err}");
    }
    // The running server never noticed.
    c.new_order(&["alone.example"]).await;

    let shared = Server::start(ServerOpts::test().shared_nonces());
    let (status, err) = serve_beside(&shared, "local");
    assert!(!status.success(), "{err}");
    assert!(err.contains("must run alone"), "{err}");
}
