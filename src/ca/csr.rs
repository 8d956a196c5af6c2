//! CSR parsing and public-key policy: what a finalize request may ask us to
//! certify. Everything here handles client-controlled bytes, so every failure
//! is a `Problem` naming what was wrong, never a panic.

use super::Csr;
use crate::key::{Curve, KeyError, PublicKey};
use crate::problem::Problem;
use rcgen::{PublicKeyData, SignatureAlgorithm};
use std::net::IpAddr;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_PKCS1_SHA1WITHRSA, OID_SHA1_WITH_RSA, OID_X509_EXT_SUBJECT_ALT_NAME,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

/// A subject public key taken from a CSR, handed to rcgen as is.
///
/// rcgen writes a certificate's SubjectPublicKeyInfo from `algorithm()` and
/// `der_bytes()`, and its own CSR parser picks `algorithm()` from the CSR's
/// *signature* algorithm: a P-384 key in a CSR signed with ecdsa-with-SHA256
/// became a certificate claiming a P-256 key with a 97-byte point, which no one
/// can decode. Here the algorithm comes from the SPKI itself, and
/// [`SpkiKey::from_spki_der`] checks that rcgen's re-encoding is byte-identical
/// to the CSR's SPKI before anything is signed.
pub(crate) struct SpkiKey {
    spki: Vec<u8>,
    key: Vec<u8>,
    alg: &'static SignatureAlgorithm,
    pub(crate) public_key: PublicKey,
}

impl PublicKeyData for SpkiKey {
    // Used for the SubjectKeyIdentifier: the hash of the exact bytes we certify.
    fn subject_public_key_info(&self) -> Vec<u8> {
        self.spki.clone()
    }

    fn der_bytes(&self) -> &[u8] {
        &self.key
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// rcgen's own SPKI encoding of (algorithm, key bytes), through the trait's
/// default `subject_public_key_info`, which is what rcgen writes into
/// certificates.
struct RcgenEncoding<'a> {
    key: &'a [u8],
    alg: &'static SignatureAlgorithm,
}

impl PublicKeyData for RcgenEncoding<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.key
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

impl SpkiKey {
    /// A CSR's key, through the key policy (`crate::key`): `badCSR` for any
    /// key Cairn does not certify and for bytes that are not a canonical SPKI.
    pub(crate) fn from_spki_der(der: &[u8]) -> Result<SpkiKey, Problem> {
        let key = PublicKey::from_spki_der(der).map_err(KeyError::for_csr)?;
        key.check_certifiable().map_err(KeyError::for_csr)?;
        let alg = match &key {
            PublicKey::Rsa { .. } => &rcgen::PKCS_RSA_SHA256,
            PublicKey::Ec {
                curve: Curve::P256, ..
            } => &rcgen::PKCS_ECDSA_P256_SHA256,
            PublicKey::Ec {
                curve: Curve::P384, ..
            } => &rcgen::PKCS_ECDSA_P384_SHA384,
            PublicKey::Ed25519(_) => {
                return Err(Problem::internal("an Ed25519 key passed check_certifiable"))
            }
        };
        let (_, spki) = SubjectPublicKeyInfo::from_der(der).map_err(|e| {
            tracing::debug!("CSR SubjectPublicKeyInfo: {e}");
            Problem::bad_csr("the CSR's SubjectPublicKeyInfo is not valid DER")
        })?;
        let raw = spki.subject_public_key.data.to_vec();
        if (RcgenEncoding { key: &raw, alg }).subject_public_key_info() != der {
            // PublicKey checked the DER is canonical: rcgen must write the same.
            return Err(Problem::bad_csr(
                "the SubjectPublicKeyInfo is not in canonical DER form",
            ));
        }
        Ok(SpkiKey {
            spki: der.to_vec(),
            key: raw,
            alg,
            public_key: key,
        })
    }
}

/// Parse a DER CSR, check its key, verify its self-signature and collect its
/// names. See [`super::parse_csr`].
pub(crate) fn parse(der: &[u8]) -> Result<Csr, Problem> {
    let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|e| {
        // The parser's own words (nom/DER internals) are logged only.
        tracing::debug!("CSR parse: {e}");
        Problem::bad_csr("CSR is not a valid DER-encoded PKCS#10 request")
    })?;
    if !rest.is_empty() {
        return Err(Problem::bad_csr("trailing bytes after the CSR"));
    }
    let info = &csr.certification_request_info;
    let spki_der = info.subject_pki.raw.to_vec();
    // The key first: a key Cairn does not certify is named whatever else is wrong.
    let key = SpkiKey::from_spki_der(&spki_der)?.public_key;

    let sig_alg = &csr.signature_algorithm.algorithm;
    // ring would verify sha1WithRSA ("legacy use"); we do not accept it.
    if *sig_alg == OID_PKCS1_SHA1WITHRSA || *sig_alg == OID_SHA1_WITH_RSA {
        return Err(Problem::bad_csr(
            "CSR signatures using SHA-1 are not accepted",
        ));
    }
    csr.verify_signature().map_err(|e| {
        tracing::debug!("CSR signature: {e}");
        Problem::bad_csr(format!(
            "CSR signature ({sig_alg}) does not verify with the CSR's public key"
        ))
    })?;

    let mut names = Vec::new();
    let mut ips = Vec::new();
    for attr in info.iter_attributes() {
        let ParsedCriAttribute::ExtensionRequest(req) = attr.parsed_attribute() else {
            continue;
        };
        for ext in &req.extensions {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for gn in &san.general_names {
                        match san_name(gn)? {
                            SanName::Dns(n) => names.push(n),
                            SanName::Ip(ip) => ips.push(ip.to_string()),
                        }
                    }
                }
                ParsedExtension::ParseError { error }
                    if ext.oid == OID_X509_EXT_SUBJECT_ALT_NAME =>
                {
                    return Err(Problem::bad_csr(format!(
                        "unparsable subjectAltName extension: {error}"
                    )));
                }
                _ => {}
            }
        }
    }

    let mut common_name = None;
    for cn in info.subject.iter_common_name() {
        let value = cn
            .as_str()
            .map_err(|_| Problem::bad_csr("subject common name is not a readable string"))?;
        if value.is_empty() {
            continue;
        }
        // Some clients put an IP identifier in the CN too (RFC 8738 §3
        // certificates do not; the address is taken as an IP SAN).
        if let Ok(ip) = value.parse::<IpAddr>() {
            ips.push(ip.to_string());
            continue;
        }
        let value = checked_name(value, "subject common name")?;
        common_name.get_or_insert_with(|| value.clone());
        names.push(value);
    }

    names.sort();
    names.dedup();
    ips.sort();
    ips.dedup();
    if names.is_empty() && ips.is_empty() {
        return Err(Problem::bad_csr(
            "CSR contains no names: no dNSName or iPAddress SANs and no subject common name",
        ));
    }
    Ok(Csr {
        names,
        ips,
        common_name,
        spki_der,
        key,
    })
}

enum SanName {
    Dns(String),
    Ip(IpAddr),
}

/// A dNSName SAN (lower-cased) or an iPAddress SAN; any other kind of SAN
/// is refused by name.
fn san_name(gn: &GeneralName<'_>) -> Result<SanName, Problem> {
    let refuse = |what: String| {
        Err(Problem::bad_csr(format!(
            "CSR contains a {what} SAN; only dNSName and iPAddress SANs are accepted"
        )))
    };
    match gn {
        GeneralName::DNSName(s) => checked_name(s, "dNSName SAN").map(SanName::Dns),
        GeneralName::IPAddress(b) => match super::san_ip(b) {
            Some(ip) => Ok(SanName::Ip(ip)),
            None => refuse(format!("malformed IP address ({} bytes)", b.len())),
        },
        GeneralName::RFC822Name(s) => refuse(format!("email address ({s:?})")),
        GeneralName::URI(s) => refuse(format!("URI ({s:?})")),
        GeneralName::OtherName(oid, _) => refuse(format!("otherName ({oid})")),
        GeneralName::DirectoryName(_) => refuse("directoryName".into()),
        GeneralName::RegisteredID(oid) => refuse(format!("registeredID ({oid})")),
        GeneralName::X400Address(_) => refuse("x400Address".into()),
        GeneralName::EDIPartyName(_) => refuse("ediPartyName".into()),
        GeneralName::Invalid(_, _) => refuse("malformed".into()),
    }
}

/// Lower-case a name; names that could never be a dNSName (empty, non-ASCII,
/// spaces or control characters) are refused here so issuance cannot fail on
/// them later.
fn checked_name(s: &str, what: &str) -> Result<String, Problem> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Problem::bad_csr(format!(
            "{what} {s:?} is not a valid DNS name"
        )));
    }
    Ok(s.to_ascii_lowercase())
}
