//! Network tests of the VA: a real testdns on loopback, and real http-01
//! and tls-alpn-01 responders started here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use super::*;
use crate::testdns::{self, TestDnsArgs, TestDnsHandle};

async fn dns() -> TestDnsHandle {
    testdns::start(TestDnsArgs::ephemeral()).await.unwrap()
}

async fn api(h: &TestDnsHandle, path: &str, body: serde_json::Value) {
    let st = reqwest::Client::new()
        .post(format!("{}{path}", h.api_url()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(st, 200, "{path} {body}");
}

fn cfg(h: &TestDnsHandle) -> VaConfig {
    VaConfig {
        http01_port: 1,
        tls_alpn01_port: 1,
        resolver: h.dns_addr.to_string(),
        allow_private_addresses: true,
        always_valid: false,
        timeout_secs: 10,
        http_max_body_bytes: 1024,
        http_max_redirects: 3,
        check_caa: false,
        dns_persist_issuer_domains: vec!["cairn.test".into()],
    }
}

fn va(c: &VaConfig) -> Va {
    Va::new(c, vec!["cairn.test".into()]).unwrap()
}

fn req(domain: &str, challenge: ChallengeType, token: &str, ka: &str) -> ValidationRequest {
    ValidationRequest {
        identifier_type: crate::core::IdentifierType::Dns,
        domain: domain.into(),
        wildcard: false,
        challenge,
        token: token.into(),
        key_authorization: ka.into(),
        account_uri: "https://ca.test/acme/acct/1".into(),
        now: 0,
    }
}

fn assert_problem(p: &Problem, kind: &str, needle: &str) {
    assert_eq!(
        p.kind,
        crate::problem::Kind::parse(kind).expect("a kind"),
        "{p:?}"
    );
    assert!(
        p.detail.contains(needle),
        "detail {:?} lacks {needle:?}",
        p.detail
    );
}

// ------------------------------------------------------------- http-01

/// token -> (status, body, Location)
type Responses = Arc<HashMap<String, (u16, String, Option<String>)>>;

async fn respond(State(r): State<Responses>, Path(token): Path<String>) -> Response {
    match r.get(&token) {
        Some((status, body, loc)) => {
            let mut resp = (StatusCode::from_u16(*status).unwrap(), body.clone()).into_response();
            if let Some(l) = loc {
                resp.headers_mut()
                    .insert(header::LOCATION, l.parse().unwrap());
            }
            resp
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Starts an http-01 responder; `make` gets the port so redirects can name it.
async fn http_server(
    make: impl FnOnce(u16) -> Vec<(&'static str, u16, String, Option<String>)>,
) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let map: HashMap<_, _> = make(port)
        .into_iter()
        .map(|(t, s, b, l)| (t.to_string(), (s, b, l)))
        .collect();
    let app = Router::new()
        .route("/.well-known/acme-challenge/{token}", get(respond))
        .with_state(Arc::new(map));
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

fn path(t: &str) -> String {
    format!("/.well-known/acme-challenge/{t}")
}

#[tokio::test]
async fn http01_outcomes() {
    let h = dns().await;
    let port = http_server(|port| {
        vec![
            ("good", 200, "tok.thumb\r\n".into(), None),
            ("wrong", 200, "something\u{1b}[31m else".into(), None),
            ("big", 200, "x".repeat(5000), None),
            (
                "r1",
                302,
                String::new(),
                Some(format!("http://hop.example:{port}{}", path("r2"))),
            ),
            ("r2", 301, String::new(), Some(path("good"))),
            ("loop", 302, String::new(), Some(path("loop"))),
            (
                "badport",
                302,
                String::new(),
                Some(format!("http://hop.example:1234{}", path("good"))),
            ),
            (
                "ip",
                302,
                String::new(),
                Some(format!("http://127.0.0.1:{port}{}", path("good"))),
            ),
            (
                "ftp",
                302,
                String::new(),
                Some("ftp://hop.example/x".into()),
            ),
        ]
    })
    .await;
    let mut c = cfg(&h);
    c.http01_port = port;
    let va = va(&c);
    let h01 = |t: &str| req("web.example", ChallengeType::Http01, t, "tok.thumb");

    let recs = va.validate(&h01("good")).await.unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].hostname, "web.example");
    assert_eq!(recs[0].port.as_deref(), Some(port.to_string().as_str()));
    assert_eq!(
        recs[0].url.as_deref(),
        Some(format!("http://web.example:{port}{}", path("good")).as_str())
    );
    assert_eq!(recs[0].addresses_resolved, vec!["127.0.0.1"]);
    assert_eq!(recs[0].address_used.as_deref(), Some("127.0.0.1"));

    let p = va.validate(&h01("wrong")).await.unwrap_err();
    assert_problem(&p, "incorrectResponse", "Expected \"tok.thumb\"");
    assert!(p.detail.contains("something"), "{}", p.detail);
    assert!(
        !p.detail.contains('\u{1b}'),
        "control characters must not be echoed"
    );

    let p = va.validate(&h01("missing")).await.unwrap_err();
    assert_problem(
        &p,
        "unauthorized",
        &format!("Invalid response from http://web.example:{port}"),
    );
    assert!(p.detail.ends_with(": 404"), "{}", p.detail);

    let p = va.validate(&h01("big")).await.unwrap_err();
    assert_problem(&p, "incorrectResponse", "larger than 1024 bytes");

    let recs = va.validate(&h01("r1")).await.unwrap();
    let hosts: Vec<_> = recs.iter().map(|r| r.hostname.as_str()).collect();
    assert_eq!(hosts, vec!["web.example", "hop.example", "hop.example"]);
    assert!(recs[2].url.as_deref().unwrap().ends_with("/good"));

    let p = va.validate(&h01("loop")).await.unwrap_err();
    assert_problem(&p, "connection", "Too many redirects");
    let p = va.validate(&h01("badport")).await.unwrap_err();
    assert_problem(&p, "connection", "invalid port");
    let p = va.validate(&h01("ip")).await.unwrap_err();
    assert_problem(&p, "connection", "not IP addresses");
    let p = va.validate(&h01("ftp")).await.unwrap_err();
    assert_problem(&p, "connection", "only http and https");
}

/// An HTTPS http-01 responder (self-signed: the VA does not check the
/// certificate, as Let's Encrypt's does not) answering `ka` to every request.
async fn https_server(ka: &'static str) -> u16 {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cert = rcgen::generate_simple_self_signed(vec!["hop.example".to_string()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let sc = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(cert.cert.der().to_vec())], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(sc));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{ka}",
                    ka.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

/// Where a preset moves the validation ports (the test preset: 5002 and
/// 5001), a redirect may name either, as it may name 80 and 443: an
/// http-to-https redirect onto the TLS port is followed. Any other port is
/// still refused, and the refusal lists the allowed ones.
#[tokio::test]
async fn http01_redirect_to_the_moved_tls_port() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let h = dns().await;
    let tls_port = https_server("tok.thumb").await;
    let port = http_server(|port| {
        vec![
            (
                "to-https",
                302,
                String::new(),
                Some(format!("https://hop.example:{tls_port}{}", path("x"))),
            ),
            (
                "elsewhere",
                302,
                String::new(),
                Some(format!("https://hop.example:{}{}", port + 1, path("x"))),
            ),
        ]
    })
    .await;
    let mut c = cfg(&h);
    c.http01_port = port;
    c.tls_alpn01_port = tls_port;
    let va = va(&c);
    let h01 = |t: &str| req("web.example", ChallengeType::Http01, t, "tok.thumb");

    let recs = va.validate(&h01("to-https")).await.unwrap();
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert_eq!(recs[1].port.as_deref(), Some(tls_port.to_string().as_str()));
    assert!(recs[1]
        .url
        .as_deref()
        .unwrap()
        .starts_with("https://hop.example"));

    if port + 1 != tls_port {
        let p = va.validate(&h01("elsewhere")).await.unwrap_err();
        assert_problem(&p, "connection", "invalid port");
        let mut allowed = [80, 443, port, tls_port];
        allowed.sort_unstable();
        let list = allowed.map(|p| p.to_string()).join(", ");
        assert_problem(&p, "connection", &format!("only ports {list} are allowed"));
    }
}

#[tokio::test]
async fn http01_connection_and_dns_failures() {
    let h = dns().await;
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut c = cfg(&h);
    c.http01_port = closed;
    let va_ = va(&c);
    let p = va_
        .validate(&req("web.example", ChallengeType::Http01, "t", "t.k"))
        .await
        .unwrap_err();
    assert_problem(&p, "connection", "127.0.0.1: Fetching http://web.example");

    api(
        &h,
        "/set-servfail",
        serde_json::json!({"host": "broken.example"}),
    )
    .await;
    let p = va_
        .validate(&req("broken.example", ChallengeType::Http01, "t", "t.k"))
        .await
        .unwrap_err();
    assert_problem(&p, "dns", "SERVFAIL");

    api(&h, "/set-default-ipv4", serde_json::json!({"ip": ""})).await;
    let p = va_
        .validate(&req("nowhere.example", ChallengeType::Http01, "t", "t.k"))
        .await
        .unwrap_err();
    assert_problem(
        &p,
        "dns",
        "no valid A or AAAA records found for nowhere.example",
    );
}

#[tokio::test]
async fn address_policy_refuses_loopback() {
    let h = dns().await;
    let port = http_server(|_| vec![("good", 200, "t.k".into(), None)]).await;
    let mut c = cfg(&h);
    c.http01_port = port;
    c.allow_private_addresses = false;
    let va_ = va(&c);
    let p = va_
        .validate(&req("web.example", ChallengeType::Http01, "good", "t.k"))
        .await
        .unwrap_err();
    assert_problem(
        &p,
        "dns",
        "resolves only to non-public addresses (127.0.0.1)",
    );

    c.tls_alpn01_port = port;
    let p = va(&c)
        .validate(&req("web.example", ChallengeType::TlsAlpn01, "good", "t.k"))
        .await
        .unwrap_err();
    assert_problem(&p, "dns", "non-public");

    // A public address that is unreachable would be dialled; a mix keeps
    // only the public one (documentation ranges are refused too).
    api(
        &h,
        "/add-a",
        serde_json::json!({"host": "doc.example", "addresses": ["192.0.2.1", "10.0.0.1"]}),
    )
    .await;
    let p = va(&c)
        .validate(&req("doc.example", ChallengeType::Http01, "good", "t.k"))
        .await
        .unwrap_err();
    assert_problem(&p, "dns", "192.0.2.1, 10.0.0.1");
}

#[tokio::test]
async fn always_valid_and_wildcard_guard() {
    let h = dns().await;
    let mut c = cfg(&h);
    // Nothing listens here: always_valid must not touch the network.
    c.resolver = "127.0.0.1:1".into();
    c.always_valid = true;
    let recs = va(&c)
        .validate(&req("any.example", ChallengeType::Http01, "t", "t.k"))
        .await
        .unwrap();
    assert_eq!(
        recs,
        vec![ValidationRecord {
            hostname: "any.example".into(),
            ..Default::default()
        }]
    );

    let c = cfg(&h);
    let mut r = req("any.example", ChallengeType::Http01, "t", "t.k");
    r.wildcard = true;
    let p = va(&c).validate(&r).await.unwrap_err();
    assert_problem(&p, "malformed", "only be validated with dns-01");
}

// -------------------------------------------------------------- dns-01

#[tokio::test]
async fn dns01_outcomes() {
    let h = dns().await;
    let va_ = va(&cfg(&h));
    let d = |dom: &str, ka: &str| req(dom, ChallengeType::Dns01, "t", ka);

    let p = va_.validate(&d("txt.example", "a.k")).await.unwrap_err();
    assert_problem(
        &p,
        "unauthorized",
        "No TXT record found at _acme-challenge.txt.example",
    );

    api(
        &h,
        "/set-txt",
        serde_json::json!({"host": "_acme-challenge.txt.example.", "value": dns01_digest("a.k")}),
    )
    .await;
    let recs = va_.validate(&d("txt.example", "a.k")).await.unwrap();
    assert_eq!(recs[0].hostname, "txt.example");

    let p = va_.validate(&d("txt.example", "b.k")).await.unwrap_err();
    assert_problem(&p, "unauthorized", "Incorrect TXT record");
    assert!(p.detail.contains(&dns01_digest("a.k")), "{}", p.detail);

    // Wildcard and base name answered side by side on the same name.
    api(
        &h,
        "/set-txt",
        serde_json::json!({"host": "_acme-challenge.txt.example", "value": dns01_digest("b.k")}),
    )
    .await;
    let mut wild = d("txt.example", "b.k");
    wild.wildcard = true;
    va_.validate(&wild).await.unwrap();
    va_.validate(&d("txt.example", "a.k")).await.unwrap();

    // Cleared records are seen at once (no caching).
    api(
        &h,
        "/clear-txt",
        serde_json::json!({"host": "_acme-challenge.txt.example"}),
    )
    .await;
    let p = va_.validate(&d("txt.example", "a.k")).await.unwrap_err();
    assert_problem(&p, "unauthorized", "No TXT record");

    // CNAME delegation of the challenge name.
    api(
        &h,
        "/set-cname",
        serde_json::json!({"host": "_acme-challenge.cn.example", "target": "delegated.example"}),
    )
    .await;
    api(
        &h,
        "/set-txt",
        serde_json::json!({"host": "delegated.example", "value": dns01_digest("c.k")}),
    )
    .await;
    va_.validate(&d("cn.example", "c.k")).await.unwrap();

    api(
        &h,
        "/set-servfail",
        serde_json::json!({"host": "_acme-challenge.sf.example"}),
    )
    .await;
    let p = va_.validate(&d("sf.example", "c.k")).await.unwrap_err();
    assert_problem(
        &p,
        "dns",
        "SERVFAIL looking up TXT for _acme-challenge.sf.example",
    );
}

/// dns-persist-01 through the resolver: CNAMEs followed, SERVFAIL a `dns`
/// problem, IP identifiers refused. (Record semantics: `dns_persist`'s unit
/// tests and tests/protocol_dns_persist.rs.)
#[tokio::test]
async fn dns_persist01_through_the_resolver() {
    let h = dns().await;
    let va_ = va(&cfg(&h));
    let p = |dom: &str| req(dom, ChallengeType::DnsPersist01, "", "");
    let value = "cairn.test; accounturi=https://ca.test/acme/acct/1";

    api(
        &h,
        "/set-cname",
        serde_json::json!({"host": "_validation-persist.cn.example", "target": "persist.dns-operator.example"}),
    )
    .await;
    api(
        &h,
        "/set-txt",
        serde_json::json!({"host": "persist.dns-operator.example", "value": value}),
    )
    .await;
    let recs = va_.validate(&p("cn.example")).await.unwrap();
    assert_eq!(recs[0].hostname, "cn.example");

    api(
        &h,
        "/set-servfail",
        serde_json::json!({"host": "_validation-persist.sf.example"}),
    )
    .await;
    let e = va_.validate(&p("sf.example")).await.unwrap_err();
    assert_problem(
        &e,
        "dns",
        "SERVFAIL looking up TXT for _validation-persist.sf.example",
    );

    let mut ip = p("127.0.0.1");
    ip.identifier_type = crate::core::IdentifierType::Ip;
    let e = va_.validate(&ip).await.unwrap_err();
    assert_problem(&e, "malformed", "cannot be validated with dns-persist-01");
}

#[tokio::test]
async fn dns01_unreachable_resolver_is_dns_problem() {
    let h = dns().await;
    let mut c = cfg(&h);
    let closed = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    c.resolver = closed.to_string();
    c.timeout_secs = 3;
    let p = va(&c)
        .validate(&req("x.example", ChallengeType::Dns01, "t", "t.k"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            p.kind,
            crate::problem::Kind::Dns | crate::problem::Kind::Connection
        ),
        "{p:?}"
    );
}

// --------------------------------------------------------- tls-alpn-01

async fn tls_server(domain: &str, digest_of: &str, alpn: Vec<Vec<u8>>) -> SocketAddr {
    tls_server_with(domain, digest_of, alpn, false, false).await
}

/// `wrong_key`: sign the handshake with a key other than the certificate's.
/// `tls12`: offer TLS 1.2 only.
async fn tls_server_with(
    domain: &str,
    digest_of: &str,
    alpn: Vec<Vec<u8>>,
    wrong_key: bool,
    tls12: bool,
) -> SocketAddr {
    use rcgen::{CertificateParams, CustomExtension, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    let mut params = CertificateParams::new(vec![domain.to_string()]).unwrap();
    params
        .custom_extensions
        .push(CustomExtension::new_acme_identifier(&Sha256::digest(
            digest_of.as_bytes(),
        )));
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // with_single_cert would refuse the critical acmeIdentifier extension
    // (webpki does not know it), so hand rustls the key pair directly.
    let sign_with = if wrong_key {
        KeyPair::generate().unwrap()
    } else {
        key
    };
    let signing = provider
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            sign_with.serialize_der(),
        )))
        .unwrap();
    let certified = rustls::sign::CertifiedKey::new(vec![cert.der().clone()], signing);
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let mut sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    sc.alpn_protocols = alpn;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(sc));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(s).await {
                    use tokio::io::AsyncWriteExt;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn tls_alpn01_outcomes() {
    let h = dns().await;
    let acme = vec![b"acme-tls/1".to_vec()];
    let t = |dom: &str| req(dom, ChallengeType::TlsAlpn01, "t", "t.k");

    let good = tls_server("alpn.example", "t.k", acme.clone()).await;
    let mut c = cfg(&h);
    c.tls_alpn01_port = good.port();
    let recs = va(&c).validate(&t("alpn.example")).await.unwrap();
    assert_eq!(recs[0].hostname, "alpn.example");
    assert_eq!(
        recs[0].port.as_deref(),
        Some(good.port().to_string().as_str())
    );
    assert_eq!(recs[0].address_used.as_deref(), Some("127.0.0.1"));

    // The certificate names another host.
    let p = va(&c).validate(&t("other.example")).await.unwrap_err();
    assert_problem(&p, "unauthorized", "Requested other.example");

    let wrong = tls_server("alpn.example", "not.this", acme.clone()).await;
    c.tls_alpn01_port = wrong.port();
    let p = va(&c).validate(&t("alpn.example")).await.unwrap_err();
    assert_problem(&p, "unauthorized", "Expected acmeIdentifier value");

    let no_alpn = tls_server("alpn.example", "t.k", vec![]).await;
    c.tls_alpn01_port = no_alpn.port();
    let p = va(&c).validate(&t("alpn.example")).await.unwrap_err();
    assert_problem(&p, "tls", "acme-tls/1");

    let h2 = tls_server("alpn.example", "t.k", vec![b"h2".to_vec()]).await;
    c.tls_alpn01_port = h2.port();
    let p = va(&c).validate(&t("alpn.example")).await.unwrap_err();
    assert_problem(&p, "tls", "");

    // TLS 1.2 works too.
    let v12 = tls_server_with("alpn.example", "t.k", acme.clone(), false, true).await;
    c.tls_alpn01_port = v12.port();
    va(&c).validate(&t("alpn.example")).await.unwrap();

    // A certificate shown by someone without its private key is refused, in
    // TLS 1.3 and 1.2.
    for tls12 in [false, true] {
        let thief = tls_server_with("alpn.example", "t.k", acme.clone(), true, tls12).await;
        c.tls_alpn01_port = thief.port();
        let p = va(&c).validate(&t("alpn.example")).await.unwrap_err();
        assert_problem(&p, "tls", "handshake");
    }

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    c.tls_alpn01_port = closed.port();
    let p = va(&c).validate(&t("alpn.example")).await.unwrap_err();
    assert_problem(&p, "connection", "Error connecting");

    // Plain HTTP on the port: the handshake fails.
    let http = http_server(|_| vec![]).await;
    c.tls_alpn01_port = http;
    let p = va(&c).validate(&t("alpn.example")).await.unwrap_err();
    assert_problem(&p, "tls", "handshake");
}

// ----------------------------------------------------------------- CAA

#[tokio::test]
async fn caa_outcomes() {
    let h = dns().await;
    let mut c = cfg(&h);
    c.check_caa = true;
    let va_ = va(&c);
    // Every name gets a valid dns-01 record, so only CAA decides.
    async fn ready(h: &TestDnsHandle, dom: &str) {
        api(h, "/set-txt", serde_json::json!({"host": format!("_acme-challenge.{dom}"), "value": dns01_digest("t.k")})).await;
    }
    let check = |dom: &str, wildcard: bool| {
        let mut r = req(dom, ChallengeType::Dns01, "t", "t.k");
        r.wildcard = wildcard;
        r
    };
    let caa = |host: &str, policies: serde_json::Value| serde_json::json!({"host": host, "policies": policies});

    // No CAA anywhere: allowed.
    ready(&h, "none.example").await;
    va_.validate(&check("none.example", false)).await.unwrap();

    // issue on the parent, found by climbing.
    api(
        &h,
        "/add-caa",
        caa(
            "ok.example",
            serde_json::json!([{"tag": "issue", "value": "cairn.test"}]),
        ),
    )
    .await;
    ready(&h, "a.b.ok.example").await;
    va_.validate(&check("a.b.ok.example", false)).await.unwrap();

    // Another CA only.
    api(
        &h,
        "/add-caa",
        caa(
            "other.example",
            serde_json::json!([{"tag": "issue", "value": "letsencrypt.org"}]),
        ),
    )
    .await;
    ready(&h, "www.other.example").await;
    let p = va_
        .validate(&check("www.other.example", false))
        .await
        .unwrap_err();
    assert_problem(
        &p,
        "caa",
        "CAA record for other.example prevents issuance for www.other.example",
    );

    // The closest non-empty RRset wins over a parent's.
    api(
        &h,
        "/add-caa",
        caa(
            "www.other.example",
            serde_json::json!([{"tag": "issue", "value": "cairn.test"}]),
        ),
    )
    .await;
    va_.validate(&check("www.other.example", false))
        .await
        .unwrap();

    // issuewild forbids wildcards but not the base name.
    api(
        &h,
        "/add-caa",
        caa(
            "wild.example",
            serde_json::json!([
                {"tag": "issue", "value": "cairn.test"},
                {"tag": "issuewild", "value": ";"}
            ]),
        ),
    )
    .await;
    ready(&h, "wild.example").await;
    va_.validate(&check("wild.example", false)).await.unwrap();
    let p = va_
        .validate(&check("wild.example", true))
        .await
        .unwrap_err();
    assert_problem(&p, "caa", "*.wild.example");

    // issue ";" forbids everyone.
    api(
        &h,
        "/add-caa",
        caa(
            "forbid.example",
            serde_json::json!([{"tag": "issue", "value": ";"}]),
        ),
    )
    .await;
    ready(&h, "forbid.example").await;
    assert_problem(
        &va_.validate(&check("forbid.example", false))
            .await
            .unwrap_err(),
        "caa",
        "",
    );

    // Critical unknown tag.
    api(
        &h,
        "/add-caa",
        caa(
            "crit.example",
            serde_json::json!([
                {"tag": "issue", "value": "cairn.test"},
                {"tag": "tbs", "value": "x", "critical": true}
            ]),
        ),
    )
    .await;
    ready(&h, "crit.example").await;
    assert_problem(
        &va_.validate(&check("crit.example", false))
            .await
            .unwrap_err(),
        "caa",
        "critical",
    );

    // accounturi.
    api(
        &h,
        "/add-caa",
        caa(
            "acct.example",
            serde_json::json!([
                {"tag": "issue", "value": "cairn.test; accounturi=https://ca.test/acme/acct/1"}
            ]),
        ),
    )
    .await;
    ready(&h, "acct.example").await;
    va_.validate(&check("acct.example", false)).await.unwrap();
    let mut r = check("acct.example", false);
    r.account_uri = "https://ca.test/acme/acct/2".into();
    assert_problem(&va_.validate(&r).await.unwrap_err(), "caa", "acct/2");

    // validationmethods.
    api(
        &h,
        "/add-caa",
        caa(
            "vm.example",
            serde_json::json!([
                {"tag": "issue", "value": "cairn.test; validationmethods=http-01"}
            ]),
        ),
    )
    .await;
    ready(&h, "vm.example").await;
    assert_problem(
        &va_.validate(&check("vm.example", false)).await.unwrap_err(),
        "caa",
        "dns-01",
    );
    api(&h, "/clear-caa", serde_json::json!({"host": "vm.example"})).await;
    api(
        &h,
        "/add-caa",
        caa(
            "vm.example",
            serde_json::json!([
                {"tag": "issue", "value": "cairn.test; validationmethods=http-01,dns-01"}
            ]),
        ),
    )
    .await;
    va_.validate(&check("vm.example", false)).await.unwrap();

    // SERVFAIL on a CAA lookup fails closed.
    api(
        &h,
        "/set-servfail",
        serde_json::json!({"host": "sfparent.example"}),
    )
    .await;
    ready(&h, "x.sfparent.example").await;
    let p = va_
        .validate(&check("x.sfparent.example", false))
        .await
        .unwrap_err();
    assert_problem(&p, "dns", "CAA for sfparent.example");
}

#[test]
fn va_and_its_futures_are_send() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<Va>();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let h = dns().await;
        let v = va(&cfg(&h));
        let r = req("x.example", ChallengeType::Dns01, "t", "t.k");
        let fut = v.validate(&r);
        send(&fut);
    });
}
