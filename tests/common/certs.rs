//! Certificate-side helpers: certificate keys and CSRs (openssl), PEM chains, chain
//! verification against Cairn's root (`openssl verify`, the same check a TLS client
//! makes) and reading SANs and public keys out of certificates (x509-parser).

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::stack::Stack;
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509NameBuilder, X509ReqBuilder};
use std::process::Command;

/// Certificate key types clients use (CLIENTS.md), plus weak/odd ones for refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKey {
    Rsa(u32),
    P256,
    P384,
    Ed25519,
}

pub fn gen_cert_key(kind: CertKey) -> PKey<Private> {
    match kind {
        CertKey::Rsa(bits) => {
            PKey::from_rsa(openssl::rsa::Rsa::generate(bits).expect("RSA key")).expect("PKey")
        }
        CertKey::P256 | CertKey::P384 => {
            let nid = if kind == CertKey::P256 {
                openssl::nid::Nid::X9_62_PRIME256V1
            } else {
                openssl::nid::Nid::SECP384R1
            };
            let group = openssl::ec::EcGroup::from_curve_name(nid).expect("curve");
            PKey::from_ec_key(openssl::ec::EcKey::generate(&group).expect("EC key")).expect("PKey")
        }
        CertKey::Ed25519 => PKey::generate_ed25519().expect("Ed25519 key"),
    }
}

/// A DER CSR for `names` (all as dNSName SANs; CN = the first name when it fits in 64
/// bytes), signed by `key`.
pub fn csr_der(names: &[&str], key: &PKey<Private>) -> Vec<u8> {
    let cn = names.first().copied().filter(|n| n.len() <= 64);
    csr_der_with_cn(names, cn, key)
}

/// A DER CSR with an explicit (or no) CN and the given SANs (none if `names` is empty).
pub fn csr_der_with_cn(names: &[&str], cn: Option<&str>, key: &PKey<Private>) -> Vec<u8> {
    csr_der_full(names, &[], cn, key)
}

/// A DER CSR with dNSName SANs `names`, iPAddress SANs `ips` and an
/// explicit (or no) CN.
pub fn csr_der_full(
    names: &[&str],
    ips: &[&str],
    cn: Option<&str>,
    key: &PKey<Private>,
) -> Vec<u8> {
    let mut b = X509ReqBuilder::new().expect("X509ReqBuilder");
    b.set_pubkey(key).expect("set_pubkey");
    let mut subject = X509NameBuilder::new().expect("X509NameBuilder");
    if let Some(cn) = cn {
        subject.append_entry_by_text("CN", cn).expect("CN");
    }
    b.set_subject_name(&subject.build()).expect("subject");
    if !names.is_empty() || !ips.is_empty() {
        let mut san = SubjectAlternativeName::new();
        for n in names {
            san.dns(n);
        }
        for ip in ips {
            san.ip(ip);
        }
        let ext = san.build(&b.x509v3_context(None)).expect("SAN extension");
        let mut exts = Stack::new().expect("stack");
        exts.push(ext).expect("push");
        b.add_extensions(&exts).expect("add_extensions");
    }
    // Ed25519 signs the message itself, without a separate digest.
    let md = if key.id() == openssl::pkey::Id::ED25519 {
        MessageDigest::null()
    } else {
        MessageDigest::sha256()
    };
    b.sign(key, md).expect("sign CSR");
    b.build().to_der().expect("CSR DER")
}

/// A fresh key of `kind` and a CSR for `names` signed by it.
pub fn make_csr(names: &[&str], kind: CertKey) -> (Vec<u8>, PKey<Private>) {
    let key = gen_cert_key(kind);
    (csr_der(names, &key), key)
}

/// SubjectPublicKeyInfo DER of a key.
pub fn spki_der(key: &PKey<Private>) -> Vec<u8> {
    key.public_key_to_der().expect("SPKI DER")
}

/// Every certificate in a PEM bundle, as DER, in order. Panics on a non-certificate block.
pub fn pem_to_ders(pem: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .map(|p| {
            let p = p.unwrap_or_else(|e| panic!("bad PEM ({e}):\n{pem}"));
            assert_eq!(p.label, "CERTIFICATE", "unexpected PEM block:\n{pem}");
            p.contents
        })
        .collect()
}

fn parse(der: &[u8]) -> x509_parser::certificate::X509Certificate<'_> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).expect("parse certificate");
    assert!(rest.is_empty(), "trailing bytes after a certificate");
    cert
}

/// The dNSName SANs of a DER certificate, sorted.
pub fn cert_dns_names(der: &[u8]) -> Vec<String> {
    let cert = parse(der);
    let mut names: Vec<String> = match cert
        .subject_alternative_name()
        .expect("SAN extension parses")
    {
        Some(ext) => ext
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                x509_parser::extensions::GeneralName::DNSName(n) => Some(n.to_string()),
                _ => None,
            })
            .collect(),
        None => Vec::new(),
    };
    names.sort();
    names
}

/// SubjectPublicKeyInfo DER of a DER certificate.
pub fn cert_spki(der: &[u8]) -> Vec<u8> {
    parse(der).public_key().raw.to_vec()
}

/// True if the certificate is a CA (basicConstraints cA).
pub fn cert_is_ca(der: &[u8]) -> bool {
    parse(der).is_ca()
}

/// Verifies a PEM chain (leaf first, then intermediates) against `root_pem` with
/// `openssl verify -purpose sslserver`, checks the first certificate is not a CA, and
/// returns the leaf's dNSName SANs (sorted). Panics with openssl's output on failure.
pub fn verify_chain(chain_pem: &str, root_pem: &str) -> Vec<String> {
    let certs = pem_to_ders(chain_pem);
    assert!(!certs.is_empty(), "empty certificate chain");
    assert!(
        !cert_is_ca(&certs[0]),
        "the first certificate of the chain is a CA (leaf must come first)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root.pem");
    let leaf = dir.path().join("leaf.pem");
    let inter = dir.path().join("intermediates.pem");
    std::fs::write(&root, root_pem).expect("write root");
    std::fs::write(&leaf, der_to_pem(&certs[0])).expect("write leaf");
    let inters: String = certs[1..].iter().map(|d| der_to_pem(d)).collect();
    std::fs::write(&inter, &inters).expect("write intermediates");
    let mut cmd = Command::new("/usr/bin/openssl");
    cmd.arg("verify")
        .arg("-purpose")
        .arg("sslserver")
        .arg("-CAfile")
        .arg(&root);
    if certs.len() > 1 {
        cmd.arg("-untrusted").arg(&inter);
    }
    cmd.arg(&leaf);
    let out = cmd.output().expect("run /usr/bin/openssl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(": OK"),
        "openssl verify failed:\n{stdout}{stderr}\n--- chain ---\n{chain_pem}"
    );
    cert_dns_names(&certs[0])
}

/// Verifies many chains against one root in process (the same OpenSSL
/// verification as `verify_chain`, without a process per chain), for tests
/// that check hundreds of certificates.
pub struct ChainVerifier {
    store: openssl::x509::store::X509Store,
}

impl ChainVerifier {
    pub fn new(root_pem: &str) -> ChainVerifier {
        let root = openssl::x509::X509::from_pem(root_pem.as_bytes()).expect("root PEM");
        let mut b = openssl::x509::store::X509StoreBuilder::new().expect("X509StoreBuilder");
        b.add_cert(root).expect("add root");
        b.set_purpose(openssl::x509::X509PurposeId::SSL_SERVER)
            .expect("purpose sslserver");
        ChainVerifier { store: b.build() }
    }

    /// Like `verify_chain`: the chain (leaf first) must verify for a TLS
    /// server and its first certificate must not be a CA. Returns the leaf's
    /// dNSName SANs, sorted, or why it does not verify.
    pub fn verify(&self, chain_pem: &str) -> Result<Vec<String>, String> {
        let certs = openssl::x509::X509::stack_from_pem(chain_pem.as_bytes())
            .map_err(|e| format!("chain PEM: {e}"))?;
        let (leaf, rest) = certs.split_first().ok_or("empty certificate chain")?;
        let leaf_der = leaf.to_der().map_err(|e| e.to_string())?;
        if cert_is_ca(&leaf_der) {
            return Err("the first certificate of the chain is a CA".into());
        }
        let mut untrusted = Stack::new().map_err(|e| e.to_string())?;
        for c in rest {
            untrusted.push(c.clone()).map_err(|e| e.to_string())?;
        }
        let mut ctx = openssl::x509::X509StoreContext::new().map_err(|e| e.to_string())?;
        ctx.init(&self.store, leaf, &untrusted, |c| {
            Ok(c.verify_cert()?.then_some(()).ok_or(c.error()))
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("does not verify: {e}"))?;
        Ok(cert_dns_names(&leaf_der))
    }
}

/// PEM of one DER certificate.
pub fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}
