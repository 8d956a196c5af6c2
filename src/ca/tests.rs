use super::*;
use crate::config::Sources;
use base64::Engine;
use openssl::bn::BigNumContext;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::stack::Stack;
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509NameBuilder, X509ReqBuilder};
use x509_parser::extensions::{GeneralName, ParsedExtension};

fn config(dir: &Path, key_type: &str) -> Config {
    let src = Sources {
        preset: Some("test".into()),
        file: None,
        data_dir: Some(dir.to_path_buf()),
    };
    let mut cfg = Config::load_with_env(&src, |_| None).expect("test preset loads");
    cfg.ca.key_type = key_type.into();
    cfg.ca.issuer_base_url = "http://127.0.0.1:15000".into();
    cfg
}

fn rsa_key(bits: u32) -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(bits).unwrap()).unwrap()
}

fn ec_key(nid: Nid) -> PKey<Private> {
    PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(nid).unwrap()).unwrap()).unwrap()
}

/// A CSR built by openssl, as a client would.
fn make_csr(
    key: &PKey<Private>,
    cn: Option<&str>,
    dns: &[&str],
    ip: Option<&str>,
    md: MessageDigest,
) -> Vec<u8> {
    let mut b = X509ReqBuilder::new().unwrap();
    b.set_pubkey(key).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    if let Some(cn) = cn {
        name.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
    }
    b.set_subject_name(&name.build()).unwrap();
    if !dns.is_empty() || ip.is_some() {
        let mut san = SubjectAlternativeName::new();
        for d in dns {
            san.dns(d);
        }
        if let Some(ip) = ip {
            san.ip(ip);
        }
        let ext = san.build(&b.x509v3_context(None)).unwrap();
        let mut stack = Stack::new().unwrap();
        stack.push(ext).unwrap();
        b.add_extensions(&stack).unwrap();
    }
    b.sign(key, md).unwrap();
    b.build().to_der().unwrap()
}

fn cert_der(pem: &str) -> Vec<u8> {
    store::pem_certificate(pem, "test").unwrap()
}

fn ski(c: &X509Certificate<'_>) -> Vec<u8> {
    c.iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
        .expect("SKI present")
}

fn aki(c: &X509Certificate<'_>) -> Vec<u8> {
    c.iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(k) => {
                k.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .expect("AKI present")
}

fn openssl_verify(dir: &Path, ca: &Ca, leaf_chain: &str) {
    let leaf_pem = leaf_chain
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap();
    let root = dir.join("v-root.pem");
    let int = dir.join("v-int.pem");
    let leaf = dir.join("v-leaf.pem");
    std::fs::write(&root, ca.root_pem()).unwrap();
    std::fs::write(&int, ca.intermediate_pem()).unwrap();
    std::fs::write(&leaf, leaf_pem).unwrap();
    let out = std::process::Command::new("/usr/bin/openssl")
        .args(["verify", "-purpose", "sslserver", "-CAfile"])
        .arg(&root)
        .arg("-untrusted")
        .arg(&int)
        .arg(&leaf)
        .output()
        .expect("openssl runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(": OK"),
        "openssl verify failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn create_then_reload_gives_identical_hierarchy() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "ecdsa-p256");
    let ca = Ca::load_or_create(&cfg).unwrap();
    let again = Ca::load_or_create(&cfg).unwrap();
    assert_eq!(ca.root_pem(), again.root_pem());
    assert_eq!(ca.intermediate_pem(), again.intermediate_pem());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("root.pem")).unwrap(),
        ca.root_pem()
    );
    #[cfg(unix)]
    for key in ["ca/root-key.pem", "ca/intermediate-key.pem"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    // No temporary files left behind.
    for entry in std::fs::read_dir(dir.path().join("ca")).unwrap() {
        let name = entry.unwrap().file_name();
        assert!(!name.to_string_lossy().contains(".tmp-"), "{name:?}");
    }

    let root_der = cert_der(ca.root_pem());
    let int_der = cert_der(ca.intermediate_pem());
    let (_, root) = X509Certificate::from_der(&root_der).unwrap();
    let (_, int) = X509Certificate::from_der(&int_der).unwrap();
    assert!(root.is_ca());
    let ku = root.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
    let bc = int.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let ku = int.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
    assert_eq!(aki(&int), ski(&root));
    int.verify_signature(Some(root.public_key())).unwrap();
    root.verify_signature(None).unwrap();
    assert_eq!(
        root.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        cfg.ca.root_name
    );
    assert_eq!(int.issuer().as_raw(), root.subject().as_raw());
    let years = |c: &X509Certificate<'_>| {
        (c.validity().not_after.timestamp() - c.validity().not_before.timestamp()) / 86400 / 365
    };
    assert_eq!(years(&root), 10);
    assert_eq!(years(&int), 5);
}

#[test]
fn half_present_hierarchy_is_completed_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "ecdsa-p256");
    let ca = Ca::load_or_create(&cfg).unwrap();
    let ca_dir = dir.path().join("ca");

    // Intermediate certificate lost: re-issued for the same key.
    let int_key = std::fs::read(ca_dir.join("intermediate-key.pem")).unwrap();
    std::fs::remove_file(ca_dir.join("intermediate.pem")).unwrap();
    let ca2 = Ca::load_or_create(&cfg).unwrap();
    assert_eq!(ca.root_pem(), ca2.root_pem());
    assert_ne!(ca.intermediate_pem(), ca2.intermediate_pem());
    assert_eq!(
        std::fs::read(ca_dir.join("intermediate-key.pem")).unwrap(),
        int_key
    );

    // Intermediate entirely lost: a new one under the same root.
    std::fs::remove_file(ca_dir.join("intermediate.pem")).unwrap();
    std::fs::remove_file(ca_dir.join("intermediate-key.pem")).unwrap();
    let ca3 = Ca::load_or_create(&cfg).unwrap();
    assert_eq!(ca.root_pem(), ca3.root_pem());

    // Root certificate lost but its key kept: same key, and the existing
    // intermediate still chains to it.
    let root_key = std::fs::read(ca_dir.join("root-key.pem")).unwrap();
    std::fs::remove_file(ca_dir.join("root.pem")).unwrap();
    let ca4 = Ca::load_or_create(&cfg).unwrap();
    assert_eq!(
        std::fs::read(ca_dir.join("root-key.pem")).unwrap(),
        root_key
    );
    assert_eq!(ca3.intermediate_pem(), ca4.intermediate_pem());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("root.pem")).unwrap(),
        ca4.root_pem()
    );

    // Root gone entirely while an intermediate exists: refuse.
    std::fs::remove_file(ca_dir.join("root.pem")).unwrap();
    std::fs::remove_file(ca_dir.join("root-key.pem")).unwrap();
    assert!(Ca::load_or_create(&cfg).is_err());
}

#[test]
fn mismatched_intermediate_stops_startup() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    Ca::load_or_create(&config(a.path(), "ecdsa-p256")).unwrap();
    Ca::load_or_create(&config(b.path(), "ecdsa-p256")).unwrap();
    std::fs::copy(
        b.path().join("ca/intermediate.pem"),
        a.path().join("ca/intermediate.pem"),
    )
    .unwrap();
    assert!(Ca::load_or_create(&config(a.path(), "ecdsa-p256")).is_err());
}

/// Issue for a CSR and check everything a client or verifier looks at.
fn issue_and_check(dir: &Path, ca: &Ca, key: &PKey<Private>, md: MessageDigest, rsa: bool) {
    let csr_der = make_csr(
        key,
        Some("Example.COM"),
        &["www.example.com", "example.com"],
        None,
        md,
    );
    let csr = parse_csr(&csr_der).unwrap();
    assert_eq!(csr.names, vec!["example.com", "www.example.com"]);
    assert_eq!(csr.common_name.as_deref(), Some("example.com"));
    assert_eq!(csr.spki_der, key.public_key_to_der().unwrap());

    let now = OffsetDateTime::now_utc();
    let names = vec!["www.example.com".to_string(), "example.com".to_string()];
    let issued = ca
        .issue(&csr, &names, &Config::test_profile("classic"), now)
        .unwrap();
    let (_, leaf) = X509Certificate::from_der(&issued.der).unwrap();

    assert_eq!(leaf.public_key().raw, csr.spki_der.as_slice());
    // openssl must be able to decode the certified key, and it must be ours.
    let ossl = openssl::x509::X509::from_der(&issued.der).unwrap();
    assert!(ossl.public_key().unwrap().public_eq(key));

    let int_der = cert_der(ca.intermediate_pem());
    let (_, int) = X509Certificate::from_der(&int_der).unwrap();
    let root_der = cert_der(ca.root_pem());
    let (_, root) = X509Certificate::from_der(&root_der).unwrap();
    leaf.verify_signature(Some(int.public_key())).unwrap();
    int.verify_signature(Some(root.public_key())).unwrap();
    assert_eq!(leaf.issuer().as_raw(), int.subject().as_raw());

    let sans: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|g| match g {
            GeneralName::DNSName(d) => d.to_string(),
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect();
    assert_eq!(sans, names);
    assert_eq!(
        leaf.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "www.example.com"
    );
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth && eku.other.is_empty());
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature());
    assert_eq!(ku.key_encipherment(), rsa);
    assert!(!ku.key_cert_sign());
    assert!(!leaf.basic_constraints().unwrap().unwrap().value.ca);
    assert_eq!(aki(&leaf), ski(&int));
    assert!(!ski(&leaf).is_empty());
    let aia = leaf
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityInfoAccess(a) => Some(a.accessdescs.clone()),
            _ => None,
        })
        .expect("AIA present");
    assert_eq!(aia.len(), 1);
    assert_eq!(
        aia[0].access_location,
        GeneralName::URI("http://127.0.0.1:15000/intermediates/0")
    );

    let serial = leaf.raw_serial();
    assert_eq!(serial.len(), 16);
    assert_eq!(serial[0] & 0x80, 0);
    assert_eq!(hex::encode(serial), issued.serial);

    assert_eq!(
        leaf.validity().not_before.timestamp(),
        issued.not_before.unix_timestamp()
    );
    assert_eq!(
        leaf.validity().not_after.timestamp(),
        issued.not_after.unix_timestamp()
    );
    assert_eq!(
        now.unix_timestamp() - issued.not_before.unix_timestamp(),
        60
    );
    assert_eq!(
        (issued.not_after - issued.not_before).whole_seconds(),
        7_776_000
    );

    assert!(issued.chain_pem.ends_with(ca.intermediate_pem()));
    let chain = store::pem_certificates(&issued.chain_pem).unwrap();
    assert_eq!(chain, vec![issued.der.clone(), int_der]);
    openssl_verify(dir, ca, &issued.chain_pem);
}

#[test]
fn issues_for_every_accepted_key_type() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(&config(dir.path(), "ecdsa-p384")).unwrap();
    for bits in [2048, 3072, 4096] {
        issue_and_check(
            dir.path(),
            &ca,
            &rsa_key(bits),
            MessageDigest::sha256(),
            true,
        );
    }
    issue_and_check(
        dir.path(),
        &ca,
        &ec_key(Nid::X9_62_PRIME256V1),
        MessageDigest::sha256(),
        false,
    );
    // P-384 signed with SHA-256 and with SHA-384: rcgen's own CSR parsing
    // once turned the first into a certificate claiming a P-256 key.
    let p384 = ec_key(Nid::SECP384R1);
    issue_and_check(dir.path(), &ca, &p384, MessageDigest::sha256(), false);
    issue_and_check(dir.path(), &ca, &p384, MessageDigest::sha384(), false);
}

#[test]
fn every_ca_key_type_issues() {
    for key_type in ["ecdsa-p256", "ecdsa-p384", "rsa-2048"] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), key_type);
        let ca = Ca::load_or_create(&cfg).unwrap();
        let again = Ca::load_or_create(&cfg).unwrap();
        assert_eq!(ca.root_pem(), again.root_pem());
        assert_eq!(ca.intermediate_pem(), again.intermediate_pem());
        issue_and_check(
            dir.path(),
            &again,
            &ec_key(Nid::X9_62_PRIME256V1),
            MessageDigest::sha256(),
            false,
        );
        issue_and_check(
            dir.path(),
            &again,
            &rsa_key(2048),
            MessageDigest::sha256(),
            true,
        );
    }
}

#[test]
fn long_first_name_gets_no_common_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "ecdsa-p256");
    cfg.ca.issuer_base_url = String::new();
    cfg.server.management_listen = String::new();
    let ca = Ca::load_or_create(&cfg).unwrap();
    let long = format!("{}.example.com", "a".repeat(60));
    let key = ec_key(Nid::X9_62_PRIME256V1);
    let csr = parse_csr(&make_csr(
        &key,
        None,
        &[&long],
        None,
        MessageDigest::sha256(),
    ))
    .unwrap();
    assert_eq!(csr.common_name, None);
    let issued = ca
        .issue(
            &csr,
            std::slice::from_ref(&long),
            &Config::test_profile("classic"),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    let (_, leaf) = X509Certificate::from_der(&issued.der).unwrap();
    assert_eq!(leaf.subject().iter_common_name().count(), 0);
    // With an empty subject the SAN extension must be critical (RFC 5280).
    assert!(leaf.subject_alternative_name().unwrap().unwrap().critical);
    // No issuer URL known: no AIA.
    assert!(!leaf.iter_extensions().any(|e| matches!(
        e.parsed_extension(),
        ParsedExtension::AuthorityInfoAccess(_)
    )));
}

fn problem_type(r: Result<Csr, Problem>) -> String {
    r.expect_err("CSR must be refused").short_type().to_string()
}

#[test]
fn refuses_bad_csrs() {
    assert_eq!(problem_type(parse_csr(b"not a csr")), "badCSR");
    assert_eq!(problem_type(parse_csr(&[])), "badCSR");

    let key = ec_key(Nid::X9_62_PRIME256V1);
    let good = make_csr(&key, None, &["a.example"], None, MessageDigest::sha256());
    let mut trailing = good.clone();
    trailing.push(0);
    assert_eq!(problem_type(parse_csr(&trailing)), "badCSR");
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 5);
    assert_eq!(problem_type(parse_csr(&truncated)), "badCSR");

    // A flipped bit in the signature value.
    let mut broken = good.clone();
    let last = broken.len() - 1;
    broken[last] ^= 0x01;
    let p = parse_csr(&broken).unwrap_err();
    assert_eq!(p.short_type(), "badCSR");
    assert!(p.detail.contains("signature"), "{}", p.detail);

    // Also for RSA, where the signature is a plain bit string.
    let rsa = rsa_key(2048);
    let mut broken = make_csr(&rsa, None, &["a.example"], None, MessageDigest::sha256());
    let last = broken.len() - 1;
    broken[last] ^= 0x80;
    assert_eq!(problem_type(parse_csr(&broken)), "badCSR");

    // An iPAddress SAN is an IP name (RFC 8738), kept apart from DNS names.
    let csr = parse_csr(&make_csr(
        &key,
        None,
        &["a.example"],
        Some("127.0.0.1"),
        MessageDigest::sha256(),
    ))
    .unwrap();
    assert_eq!(csr.names, vec!["a.example"]);
    assert_eq!(csr.ips, vec!["127.0.0.1"]);

    let p = parse_csr(&make_csr(&key, None, &[], None, MessageDigest::sha256())).unwrap_err();
    assert_eq!(p.short_type(), "badCSR");
    assert!(p.detail.contains("no names"), "{}", p.detail);

    // SHA-1 signatures are refused even though they verify.
    assert_eq!(
        problem_type(parse_csr(&make_csr(
            &rsa,
            None,
            &["a.example"],
            None,
            MessageDigest::sha1()
        ))),
        "badCSR"
    );
}

#[test]
fn refuses_keys_it_does_not_certify() {
    let cases: Vec<(PKey<Private>, MessageDigest, &str)> = vec![
        (ec_key(Nid::SECP521R1), MessageDigest::sha512(), "P-521"),
        (rsa_key(1024), MessageDigest::sha256(), "1024"),
        (rsa_key(2560), MessageDigest::sha256(), "2560"),
        (
            PKey::generate_ed25519().unwrap(),
            MessageDigest::null(),
            "Ed25519",
        ),
        (ec_key(Nid::SECP256K1), MessageDigest::sha256(), "curve"),
        (
            PKey::from_rsa(
                Rsa::generate_with_e(2048, &openssl::bn::BigNum::from_u32(3).unwrap()).unwrap(),
            )
            .unwrap(),
            MessageDigest::sha256(),
            "65537",
        ),
    ];
    for (key, md, needle) in cases {
        let p = parse_csr(&make_csr(&key, None, &["a.example"], None, md)).unwrap_err();
        // RFC 8555 §7.4: a key we will not certify makes the CSR unacceptable.
        assert_eq!(p.short_type(), "badCSR", "{needle}: {}", p.detail);
        assert!(p.detail.contains(needle), "{needle}: {}", p.detail);
    }
}

#[test]
fn names_are_lowercased_deduplicated_sorted() {
    let key = ec_key(Nid::X9_62_PRIME256V1);
    let csr = parse_csr(&make_csr(
        &key,
        Some("B.example"),
        &["c.EXAMPLE", "b.example", "*.A.example"],
        None,
        MessageDigest::sha256(),
    ))
    .unwrap();
    assert_eq!(csr.names, vec!["*.a.example", "b.example", "c.example"]);
    assert_eq!(csr.common_name.as_deref(), Some("b.example"));

    // CN only.
    let csr = parse_csr(&make_csr(
        &key,
        Some("Only.Example"),
        &[],
        None,
        MessageDigest::sha256(),
    ))
    .unwrap();
    assert_eq!(csr.names, vec!["only.example"]);
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn jwk_of(key: &PKey<Private>) -> crate::key::PublicKey {
    let json = if let Ok(rsa) = key.rsa() {
        serde_json::json!({"kty": "RSA", "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec())})
    } else {
        let ec = key.ec_key().unwrap();
        let group = ec.group();
        let (crv, size) = match group.curve_name() {
            Some(Nid::X9_62_PRIME256V1) => ("P-256", 32),
            _ => ("P-384", 48),
        };
        let mut x = openssl::bn::BigNum::new().unwrap();
        let mut y = openssl::bn::BigNum::new().unwrap();
        let mut ctx = BigNumContext::new().unwrap();
        ec.public_key()
            .affine_coordinates(group, &mut x, &mut y, &mut ctx)
            .unwrap();
        serde_json::json!({"kty": "EC", "crv": crv,
            "x": b64(&x.to_vec_padded(size).unwrap()), "y": b64(&y.to_vec_padded(size).unwrap())})
    };
    crate::key::PublicKey::from_jwk(&json).unwrap()
}

#[test]
fn csr_key_compared_with_jwk() {
    let keys = [
        rsa_key(2048),
        ec_key(Nid::X9_62_PRIME256V1),
        ec_key(Nid::SECP384R1),
    ];
    for (i, key) in keys.iter().enumerate() {
        let csr = parse_csr(&make_csr(
            key,
            None,
            &["a.example"],
            None,
            MessageDigest::sha256(),
        ))
        .unwrap();
        for (j, other) in keys.iter().enumerate() {
            assert_eq!(csr.key == jwk_of(other), i == j, "{i} {j}");
        }
    }
    let p256 = ec_key(Nid::X9_62_PRIME256V1);
    let csr = parse_csr(&make_csr(
        &p256,
        None,
        &["a.example"],
        None,
        MessageDigest::sha256(),
    ))
    .unwrap();
    assert_ne!(csr.key, jwk_of(&ec_key(Nid::X9_62_PRIME256V1)));
}

#[test]
fn listener_cert_reused_and_renewed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "ecdsa-p256");
    let ca = Ca::load_or_create(&cfg).unwrap();
    let now = OffsetDateTime::now_utc();
    let (chain, key) = ca.tls_listener_cert(now).unwrap();
    openssl_verify(dir.path(), &ca, &chain);
    let certs = store::pem_certificates(&chain).unwrap();
    assert_eq!(certs.len(), 2);
    assert_eq!(certs[1], cert_der(ca.intermediate_pem()));
    let (_, leaf) = X509Certificate::from_der(&certs[0]).unwrap();
    let sans: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|g| format!("{g:?}"))
        .collect();
    assert_eq!(sans.len(), 3, "{sans:?}");
    assert!(
        leaf.extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .server_auth
    );
    assert!(key.contains("BEGIN PRIVATE KEY"));
    // rustls must accept the pair as is.
    let ossl_key = PKey::private_key_from_pem(key.as_bytes()).unwrap();
    assert!(openssl::x509::X509::from_der(&certs[0])
        .unwrap()
        .public_key()
        .unwrap()
        .public_eq(&ossl_key));

    // Reused across restarts.
    let ca2 = Ca::load_or_create(&cfg).unwrap();
    assert_eq!(
        ca2.tls_listener_cert(now).unwrap(),
        (chain.clone(), key.clone())
    );
    // Still reused well before expiry.
    let later = now + Duration::days(300);
    assert_eq!(ca2.tls_listener_cert(later).unwrap().0, chain);
    // Re-issued within 30 days of expiry.
    let near = now + Duration::days(340);
    let (renewed, renewed_key) = ca2.tls_listener_cert(near).unwrap();
    assert_ne!(renewed, chain);
    assert_ne!(renewed_key, key);
    assert_eq!(ca2.tls_listener_cert(near).unwrap().0, renewed);

    // Re-issued when unparsable or missing.
    std::fs::write(dir.path().join("tls/cert.pem"), "garbage").unwrap();
    let (fixed, _) = ca2.tls_listener_cert(near).unwrap();
    assert_ne!(fixed, renewed);
    std::fs::remove_file(dir.path().join("tls/key.pem")).unwrap();
    let (fixed2, _) = ca2.tls_listener_cert(near).unwrap();
    assert_ne!(fixed2, fixed);

    // Re-issued when the intermediate changed.
    std::fs::remove_file(dir.path().join("ca/intermediate.pem")).unwrap();
    std::fs::remove_file(dir.path().join("ca/intermediate-key.pem")).unwrap();
    let ca3 = Ca::load_or_create(&cfg).unwrap();
    let (other, _) = ca3.tls_listener_cert(near).unwrap();
    assert_ne!(other, fixed2);
    assert!(other.ends_with(ca3.intermediate_pem()));
}

#[test]
fn ca_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Ca>();
}

#[test]
fn aia_encoding_round_trips() {
    let der = aia_ca_issuers("http://ca.example:15000/intermediates/0").unwrap();
    let ext = CustomExtension::from_oid_content(OID_AUTHORITY_INFO_ACCESS, der.clone());
    assert_eq!(ext.content(), der.as_slice());
    // Long URLs need a multi-byte DER length.
    let long = format!("http://{}/x", "a".repeat(300));
    let der = aia_ca_issuers(&long).unwrap();
    assert_eq!(&der[..2], &[0x30, 0x82]);
}
