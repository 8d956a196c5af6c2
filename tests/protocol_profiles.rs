//! Certificate profiles (Let's Encrypt's `classic`, `tlsserver`,
//! `shortlived`; draft-aaron-acme-profiles) and IP address identifiers
//! (RFC 8738), against the real server on the `test` preset.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

const DAY: i64 = 86_400;

fn ip_payload(ips: &[&str], profile: Option<&str>) -> Value {
    let ids: Vec<Value> = ips
        .iter()
        .map(|v| json!({"type": "ip", "value": v}))
        .collect();
    let mut p = json!({ "identifiers": ids });
    if let Some(name) = profile {
        p["profile"] = json!(name);
    }
    p
}

fn with_profile(names: &[&str], profile: &str) -> Value {
    let mut p = AcmeClient::order_payload(names);
    p["profile"] = json!(profile);
    p
}

/// What a verifier sees of a leaf certificate.
struct Leaf {
    validity: i64,
    cn: Vec<String>,
    dns: Vec<String>,
    ips: Vec<String>,
    skid: bool,
    client_auth: bool,
    server_auth: bool,
    basic_constraints_critical: Option<bool>,
}

fn leaf(pem: &str) -> Leaf {
    let der = &pem_to_ders(pem)[0];
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(der).expect("leaf parses");
    let mut l = Leaf {
        validity: c.validity().not_after.timestamp() - c.validity().not_before.timestamp(),
        cn: c
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().unwrap_or("?").to_string())
            .collect(),
        dns: Vec::new(),
        ips: Vec::new(),
        skid: false,
        client_auth: false,
        server_auth: false,
        basic_constraints_critical: None,
    };
    for e in c.extensions() {
        match e.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for g in &san.general_names {
                    match g {
                        GeneralName::DNSName(n) => l.dns.push(n.to_string()),
                        GeneralName::IPAddress(b) => l.ips.push(match b.len() {
                            4 => {
                                std::net::IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string()
                            }
                            _ => std::net::IpAddr::from(<[u8; 16]>::try_from(*b).unwrap())
                                .to_string(),
                        }),
                        other => panic!("unexpected SAN {other:?}"),
                    }
                }
            }
            ParsedExtension::SubjectKeyIdentifier(_) => l.skid = true,
            ParsedExtension::ExtendedKeyUsage(eku) => {
                l.client_auth = eku.client_auth;
                l.server_auth = eku.server_auth;
            }
            ParsedExtension::BasicConstraints(bc) => {
                assert!(!bc.ca, "a leaf must not be a CA");
                l.basic_constraints_critical = Some(e.critical);
            }
            _ => {}
        }
    }
    l
}

#[tokio::test]
async fn directory_offers_the_three_profiles() {
    let server = Server::start(ServerOpts::test());
    let client = AcmeClient::new(&server, KeyKind::Es256).await;
    let profiles = &client.directory()["meta"]["profiles"];
    let names: Vec<&String> = profiles
        .as_object()
        .expect("meta.profiles")
        .keys()
        .collect();
    assert_eq!(names, ["classic", "shortlived", "tlsserver"], "{profiles}");
    for (_, d) in profiles.as_object().unwrap() {
        assert!(d.as_str().is_some_and(|d| !d.is_empty()), "{profiles}");
    }
}

#[tokio::test]
async fn orders_echo_their_profile_and_unknown_ones_are_refused() {
    let server = Server::start(ServerOpts::always_valid());
    let client = AcmeClient::new(&server, KeyKind::Es256).await;
    client.register().await;

    let (_, order) = client.new_order(&["default.example"]).await;
    assert_eq!(order["profile"], "classic", "{order}");
    let r = client
        .new_order_raw(with_profile(&["short.example"], "shortlived"))
        .await;
    assert_eq!(r.status, 201, "{r}");
    assert_eq!(r.json()["profile"], "shortlived");
    // The order as read back says the same.
    let url = r.location().unwrap();
    assert_eq!(
        client.post_as_get(&url).await.json()["profile"],
        "shortlived"
    );

    let r = client
        .new_order_raw(with_profile(&["x.example"], "nonsense"))
        .await;
    let p = assert_problem(&r, 400, "invalidProfile");
    let detail = p["detail"].as_str().unwrap();
    for offered in ["classic", "tlsserver", "shortlived", "nonsense"] {
        assert!(detail.contains(offered), "{detail}");
    }
    let r = client
        .new_order_raw(
            json!({"identifiers": [{"type": "dns", "value": "x.example"}], "profile": 7}),
        )
        .await;
    assert_problem(&r, 400, "malformed");
    // tlsserver and shortlived allow 25 names, classic 100.
    let many: Vec<String> = (0..26).map(|i| format!("n{i}.example")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let r = client.new_order_raw(with_profile(&many, "tlsserver")).await;
    let p = assert_problem(&r, 400, "rejectedIdentifier");
    assert!(p["detail"].as_str().unwrap().contains("at most 25"), "{p}");
    let r = client.new_order_raw(with_profile(&many, "classic")).await;
    assert_eq!(r.status, 201, "{r}");
}

#[tokio::test]
async fn each_profile_shapes_its_certificate() {
    let server = Server::start(ServerOpts::always_valid());
    let client = AcmeClient::new(&server, KeyKind::Es256).await;
    client.register().await;
    // (profile, validity, CN, SKID)
    for (profile, validity, cn, skid) in [
        ("classic", 90 * DAY, true, true),
        ("tlsserver", 45 * DAY, false, false),
        ("shortlived", 160 * 3600, false, false),
    ] {
        let name = format!("{profile}.example.com");
        let r = client.new_order_raw(with_profile(&[&name], profile)).await;
        assert_eq!(r.status, 201, "{r}");
        let url = r.location().unwrap();
        let order = client.authorize_always_valid(&url, &r.json()).await;
        let (csr, _) = make_csr(&[&name], CertKey::P256);
        let f = client.finalize(&order, &csr).await;
        assert_eq!(f.status, 200, "{f}");
        let order = client
            .wait_status(&url, &["valid"], Duration::from_secs(15))
            .await;
        let pem = client
            .download_cert_pem(order["certificate"].as_str().unwrap())
            .await;
        let l = leaf(&pem);
        assert_eq!(l.validity, validity, "{profile}");
        assert_eq!(!l.cn.is_empty(), cn, "{profile}: CN {:?}", l.cn);
        assert_eq!(l.skid, skid, "{profile}");
        assert!(l.server_auth && !l.client_auth, "{profile}: EKU");
        assert_eq!(l.basic_constraints_critical, Some(true), "{profile}");
        assert_eq!(l.dns, vec![name.clone()], "{profile}");
        // ARI's window follows the profile's validity.
        let ari = client
            .get(&format!(
                "{}/{}",
                client.endpoint("renewalInfo"),
                cert_id_of(&pem)
            ))
            .await;
        assert_eq!(ari.status, 200, "{ari}");
        let w = &ari.json()["suggestedWindow"];
        let start = time::OffsetDateTime::parse(
            w["start"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
        .unix_timestamp();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!(
            start - now < validity,
            "{profile}: window {w} inside the validity"
        );
        assert!(
            start - now > validity / 3,
            "{profile}: window {w} late in the validity"
        );
    }
}

/// The RFC 9773 certID of a PEM chain's leaf.
fn cert_id_of(pem: &str) -> String {
    let der = &pem_to_ders(pem)[0];
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
    let aki = c
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .expect("AKI");
    format!("{}.{}", b64u(aki), b64u(c.raw_serial()))
}

#[tokio::test]
async fn the_ari_window_is_the_profiles() {
    // classic's window moved to the last quarter, a tenth of the validity long.
    let server = Server::start(
        ServerOpts::always_valid()
            .with_env("CAIRN_PROFILES_CLASSIC_ARI_WINDOW_DIVISOR", "4")
            .with_env("CAIRN_PROFILES_CLASSIC_ARI_WINDOW_LENGTH_DIVISOR", "10"),
    );
    let client = AcmeClient::new(&server, KeyKind::Es256).await;
    client.register().await;
    let (csr, _) = make_csr(&["ari.example.com"], CertKey::P256);
    let (_, _, pem) = client.issue_always_valid(&["ari.example.com"], &csr).await;
    let der = &pem_to_ders(&pem)[0];
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
    let (nb, na) = (
        c.validity().not_before.timestamp(),
        c.validity().not_after.timestamp(),
    );
    let ari = client
        .get(&format!(
            "{}/{}",
            client.endpoint("renewalInfo"),
            cert_id_of(&pem)
        ))
        .await;
    let w = &ari.json()["suggestedWindow"];
    let t = |k: &str| {
        time::OffsetDateTime::parse(
            w[k].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
        .unix_timestamp()
    };
    let validity = na + 1 - nb;
    assert_eq!(t("start"), na - validity / 4, "{w}");
    assert_eq!(t("end") - t("start"), validity / 10, "{w}");
}

#[tokio::test]
async fn authorizations_are_reused_only_within_a_profile() {
    let server = Server::start(ServerOpts::always_valid());
    let client = AcmeClient::new(&server, KeyKind::Es256).await;
    client.register().await;
    let (url, order) = client.new_order(&["reuse.example"]).await;
    client.authorize_always_valid(&url, &order).await;

    let again = client
        .new_order_raw(with_profile(&["reuse.example"], "classic"))
        .await;
    assert_eq!(
        again.json()["status"],
        "ready",
        "classic reuses classic: {again}"
    );
    let other = client
        .new_order_raw(with_profile(&["reuse.example"], "shortlived"))
        .await;
    assert_eq!(
        other.json()["status"],
        "pending",
        "shortlived validates anew: {other}"
    );
}

#[tokio::test]
async fn ip_identifiers_need_a_profile_that_takes_them_and_canonical_text() {
    let server = Server::start(ServerOpts::always_valid());
    let client = AcmeClient::new(&server, KeyKind::Es256).await;
    client.register().await;

    // classic (the default) and tlsserver take DNS names only.
    for profile in [None, Some("tlsserver")] {
        let r = client
            .new_order_raw(ip_payload(&["127.0.0.1"], profile))
            .await;
        let p = assert_problem(&r, 400, "rejectedIdentifier");
        assert_eq!(p["subproblems"][0]["identifier"]["type"], "ip", "{p}");
        assert!(
            p["detail"].as_str().unwrap().contains("does not allow ip"),
            "{p}"
        );
    }
    for bad in [
        "127.000.0.1",
        "::0001",
        "0:0:0:0:0:0:0:1",
        "localhost",
        "127.0.0.1/8",
        "*.127.0.0.1",
    ] {
        let r = client
            .new_order_raw(ip_payload(&[bad], Some("shortlived")))
            .await;
        let p = assert_problem(&r, 400, "malformed");
        assert_eq!(p["subproblems"][0]["identifier"]["value"], bad, "{p}");
    }
    for never in ["0.0.0.0", "255.255.255.255", "224.0.0.1", "::", "ff02::1"] {
        let r = client
            .new_order_raw(ip_payload(&[never], Some("shortlived")))
            .await;
        assert_problem(&r, 400, "rejectedIdentifier");
    }
    // An unknown identifier type is still unsupportedIdentifier.
    let r = client
        .new_order_raw(json!({"identifiers": [{"type": "email", "value": "a@b.example"}], "profile": "shortlived"}))
        .await;
    assert_problem(&r, 400, "unsupportedIdentifier");
}

#[tokio::test]
async fn the_staging_preset_refuses_private_ip_identifiers() {
    let server = Server::start(
        ServerOpts::always_valid().with_env("CAIRN_VA_ALLOW_PRIVATE_ADDRESSES", "false"),
    );
    let client = AcmeClient::new(&server, KeyKind::Es256).await;
    client.register().await;
    for private in [
        "127.0.0.1",
        "10.1.2.3",
        "192.168.1.1",
        "::1",
        "fe80::1",
        "fd00::1",
    ] {
        let r = client
            .new_order_raw(ip_payload(&[private], Some("shortlived")))
            .await;
        let p = assert_problem(&r, 400, "rejectedIdentifier");
        assert!(
            p["detail"].as_str().unwrap().contains("publicly routable"),
            "{p}"
        );
    }
    let r = client
        .new_order_raw(ip_payload(
            &["8.8.8.8", "2001:4860:4860::8888"],
            Some("shortlived"),
        ))
        .await;
    assert_eq!(r.status, 201, "{r}");
}

/// Orders an IP address under `shortlived`, validates it for real with
/// `kind`, finalizes with an iPAddress SAN and checks the certificate.
async fn issue_for_ip(server: &Server, ip: &str, kind: &str) {
    let client = AcmeClient::new(server, KeyKind::Es256).await;
    client.register().await;
    let r = client
        .new_order_raw(ip_payload(&[ip], Some("shortlived")))
        .await;
    assert_eq!(r.status, 201, "{r}");
    let url = r.location().unwrap();
    let order = r.json();
    assert_eq!(order["identifiers"], json!([{"type": "ip", "value": ip}]));
    let authz_url = AcmeClient::authz_urls(&order)[0].clone();
    let authz = client.post_as_get(&authz_url).await.json();
    assert_eq!(
        authz["identifier"],
        json!({"type": "ip", "value": ip}),
        "{authz}"
    );
    let mut types: Vec<&str> = authz["challenges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    types.sort();
    assert_eq!(
        types,
        ["http-01", "tls-alpn-01"],
        "no dns-01 for an address: {authz}"
    );
    let ch = AcmeClient::challenge(&authz, kind).unwrap();
    let token = ch["token"].as_str().unwrap();
    let ka = client.key_authorization(token);
    let bind = if ip.contains(':') { "::1" } else { "127.0.0.1" };
    let (_h, _t);
    if kind == "http-01" {
        let h = Http01Responder::start_on(bind, server.http01_port);
        h.set(token, &ka);
        _h = Some(h);
        _t = None;
    } else {
        let t = TlsAlpn01Responder::start_on(bind, server.tls_alpn01_port);
        let addr: std::net::IpAddr = ip.parse().unwrap();
        t.set_for(&reverse_name(addr), ip, &ka);
        _t = Some(t);
        _h = None;
    }
    let r = client
        .post(ch["url"].as_str().unwrap(), Some(json!({})))
        .await;
    assert_eq!(r.status, 200, "{r}");
    let authz = client
        .wait_status(&authz_url, &["valid", "invalid"], Duration::from_secs(15))
        .await;
    assert_eq!(authz["status"], "valid", "{authz}");
    let record = &AcmeClient::challenge(&authz, kind).unwrap()["validationRecord"][0];
    assert_eq!(record["hostname"], ip, "{record}");
    if kind == "http-01" {
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        assert_eq!(
            record["url"],
            format!(
                "http://{host}:{}/.well-known/acme-challenge/{token}",
                server.http01_port
            )
        );
    }

    let order = client
        .wait_status(&url, &["ready"], Duration::from_secs(15))
        .await;
    // A CSR with the address as a dNSName does not match.
    let key = gen_cert_key(CertKey::P256);
    let f = client
        .finalize(&order, &csr_der_full(&[ip], &[], None, &key))
        .await;
    assert_problem(&f, 400, "badCSR");
    let f = client
        .finalize(&order, &csr_der_full(&[], &[ip], None, &key))
        .await;
    assert_eq!(f.status, 200, "{f}");
    let order = client
        .wait_status(&url, &["valid"], Duration::from_secs(15))
        .await;
    let pem = client
        .download_cert_pem(order["certificate"].as_str().unwrap())
        .await;
    let l = leaf(&pem);
    assert_eq!(l.ips, vec![ip.to_string()]);
    assert!(
        l.dns.is_empty() && l.cn.is_empty(),
        "no CN or dNSName for an address"
    );
    assert_eq!(l.validity, 160 * 3600);
    let root = std::fs::read_to_string(&server.root_pem_path).unwrap();
    verify_chain(&pem, &root);
}

/// RFC 8738 §6's reverse-DNS name, written out independently of Cairn's.
fn reverse_name(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(a) => {
            let mut o: Vec<String> = a.octets().iter().map(|b| b.to_string()).collect();
            o.reverse();
            format!("{}.in-addr.arpa", o.join("."))
        }
        std::net::IpAddr::V6(a) => {
            let hex: String = a.octets().iter().map(|b| format!("{b:02x}")).collect();
            let nibbles: Vec<String> = hex.chars().rev().map(|c| c.to_string()).collect();
            format!("{}.ip6.arpa", nibbles.join("."))
        }
    }
}

#[tokio::test]
async fn ipv4_identifier_by_http01() {
    let server = Server::start(ServerOpts::test());
    issue_for_ip(&server, "127.0.0.1", "http-01").await;
}

#[tokio::test]
async fn ipv6_identifier_by_http01() {
    let server = Server::start(ServerOpts::test());
    issue_for_ip(&server, "::1", "http-01").await;
}

#[tokio::test]
async fn ipv4_identifier_by_tls_alpn01() {
    let server = Server::start(ServerOpts::test());
    issue_for_ip(&server, "127.0.0.1", "tls-alpn-01").await;
}

#[tokio::test]
async fn ipv6_identifier_by_tls_alpn01() {
    let server = Server::start(ServerOpts::test());
    issue_for_ip(&server, "::1", "tls-alpn-01").await;
}
