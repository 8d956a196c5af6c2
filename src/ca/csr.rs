//! CSR parsing and public-key policy: what a finalize request may ask us to
//! certify. Everything here handles client-controlled bytes, so every failure
//! is a `Problem` naming what was wrong, never a panic.

use super::Csr;
use crate::problem::Problem;
use base64::Engine;
use rcgen::{PublicKeyData, SignatureAlgorithm};
use std::net::IpAddr;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_DSA, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_PKCS1_RSASSAPSS, OID_PKCS1_SHA1WITHRSA, OID_SHA1_WITH_RSA,
    OID_SIG_ED25519, OID_SIG_ED448, OID_X509_EXT_SUBJECT_ALT_NAME,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// The key types we certify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa { bits: usize },
    P256,
    P384,
}

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
    pub(crate) kind: KeyKind,
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
    /// Classify a DER SubjectPublicKeyInfo: `badPublicKey` for any key type or
    /// size we do not certify, `badCSR` for bytes that are not an SPKI.
    pub(crate) fn from_spki_der(der: &[u8]) -> Result<SpkiKey, Problem> {
        let (rest, spki) = SubjectPublicKeyInfo::from_der(der)
            .map_err(|e| Problem::bad_csr(format!("unparsable SubjectPublicKeyInfo: {e}")))?;
        if !rest.is_empty() {
            return Err(Problem::bad_csr(
                "trailing bytes after SubjectPublicKeyInfo",
            ));
        }
        let (kind, alg) = classify_key(&spki)?;
        let key = spki.subject_public_key.data.to_vec();
        let reencoded = RcgenEncoding { key: &key, alg }.subject_public_key_info();
        if reencoded != der {
            // e.g. RSA without the NULL parameters, or a non-minimal length:
            // we would certify different bytes than the client asked for.
            return Err(Problem::bad_public_key(
                "the SubjectPublicKeyInfo is not in canonical DER form",
            ));
        }
        Ok(SpkiKey {
            spki: der.to_vec(),
            key,
            alg,
            kind,
        })
    }
}

fn classify_key(
    spki: &SubjectPublicKeyInfo<'_>,
) -> Result<(KeyKind, &'static SignatureAlgorithm), Problem> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err(Problem::bad_public_key("malformed RSA public key"));
        };
        let bits = bit_length(rsa.modulus);
        if !matches!(bits, 2048 | 3072 | 4096) {
            return Err(Problem::bad_public_key(format!(
                "RSA {bits}-bit keys are not accepted; use 2048, 3072 or 4096 bits"
            )));
        }
        let e = strip_leading_zeros(rsa.exponent);
        // Exponents above 64 bits are legal but absurd; refusing them keeps
        // the check simple and rejects nothing real clients generate.
        let odd_above_one = e.len() <= 8
            && e.last().is_some_and(|b| b & 1 == 1)
            && e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)) > 1;
        if !odd_above_one {
            return Err(Problem::bad_public_key(
                "RSA public exponent must be odd and greater than 1 (65537 recommended)",
            ));
        }
        return Ok((KeyKind::Rsa { bits }, &rcgen::PKCS_RSA_SHA256));
    }
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| {
                Problem::bad_public_key("EC key without a named curve is not accepted")
            })?;
        let point = &spki.subject_public_key.data;
        let (kind, alg, point_len, name) = if curve == OID_EC_P256 {
            (KeyKind::P256, &rcgen::PKCS_ECDSA_P256_SHA256, 65, "P-256")
        } else if curve == OID_NIST_EC_P384 {
            (KeyKind::P384, &rcgen::PKCS_ECDSA_P384_SHA384, 97, "P-384")
        } else if curve == OID_NIST_EC_P521 {
            return Err(Problem::bad_public_key(
                "ECDSA P-521 keys are not accepted; use P-256 or P-384",
            ));
        } else {
            return Err(Problem::bad_public_key(format!(
                "EC curve {curve} is not accepted; use P-256 or P-384"
            )));
        };
        // Uncompressed form only: it is what every client sends and all
        // verifiers (ring among them) can read.
        if point.len() != point_len || point.first() != Some(&4) {
            return Err(Problem::bad_public_key(format!(
                "{name} public key must be an uncompressed point of {point_len} bytes"
            )));
        }
        return Ok((kind, alg));
    }
    let name = if *alg == OID_SIG_ED25519 {
        "Ed25519".to_string()
    } else if *alg == OID_SIG_ED448 {
        "Ed448".to_string()
    } else if *alg == OID_KEY_TYPE_DSA {
        "DSA".to_string()
    } else if *alg == OID_PKCS1_RSASSAPSS {
        "RSASSA-PSS".to_string()
    } else {
        format!("key algorithm {alg}")
    };
    Err(Problem::bad_public_key(format!(
        "{name} keys are not accepted; use RSA (2048, 3072 or 4096 bits), ECDSA P-256 or P-384"
    )))
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[first..]
}

fn bit_length(b: &[u8]) -> usize {
    match strip_leading_zeros(b) {
        [] => 0,
        [first, rest @ ..] => rest.len() * 8 + (8 - first.leading_zeros() as usize),
    }
}

/// Parse a DER CSR, check its key, verify its self-signature and collect its
/// names. See [`super::parse_csr`].
pub(crate) fn parse(der: &[u8]) -> Result<Csr, Problem> {
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| Problem::bad_csr(format!("CSR is not a valid PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(Problem::bad_csr("trailing bytes after the CSR"));
    }
    let info = &csr.certification_request_info;
    let spki_der = info.subject_pki.raw.to_vec();
    // The key first: an unacceptable key is `badPublicKey` whatever else is wrong.
    SpkiKey::from_spki_der(&spki_der)?;

    let sig_alg = &csr.signature_algorithm.algorithm;
    // ring would verify sha1WithRSA ("legacy use"); we do not accept it.
    if *sig_alg == OID_PKCS1_SHA1WITHRSA || *sig_alg == OID_SHA1_WITH_RSA {
        return Err(Problem::bad_csr(
            "CSR signatures using SHA-1 are not accepted",
        ));
    }
    csr.verify_signature().map_err(|e| {
        Problem::bad_csr(format!(
            "CSR signature ({}) does not verify with the CSR's public key: {e}",
            sig_alg
        ))
    })?;

    let mut names = Vec::new();
    for attr in info.iter_attributes() {
        let ParsedCriAttribute::ExtensionRequest(req) = attr.parsed_attribute() else {
            continue;
        };
        for ext in &req.extensions {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for gn in &san.general_names {
                        names.push(dns_name(gn)?);
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
        let value = checked_name(value, "subject common name")?;
        common_name.get_or_insert_with(|| value.clone());
        names.push(value);
    }

    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err(Problem::bad_csr(
            "CSR contains no names: neither dNSName SANs nor a subject common name",
        ));
    }
    Ok(Csr {
        names,
        common_name,
        spki_der,
    })
}

/// A dNSName SAN, lower-cased; any other kind of SAN is refused by name.
fn dns_name(gn: &GeneralName<'_>) -> Result<String, Problem> {
    let refuse = |what: String| {
        Err(Problem::bad_csr(format!(
            "CSR contains a {what} SAN; only dNSName SANs are accepted"
        )))
    };
    match gn {
        GeneralName::DNSName(s) => checked_name(s, "dNSName SAN"),
        GeneralName::IPAddress(b) => {
            let ip = match b.len() {
                4 => <[u8; 4]>::try_from(*b).map(IpAddr::from).ok(),
                16 => <[u8; 16]>::try_from(*b).map(IpAddr::from).ok(),
                _ => None,
            };
            match ip {
                Some(ip) => refuse(format!("IP address ({ip})")),
                None => refuse("malformed IP address".into()),
            }
        }
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

/// Whether a SubjectPublicKeyInfo is the JWK's key. See [`super::spki_matches_jwk`].
pub(crate) fn spki_matches_jwk(spki_der: &[u8], jwk: &josekit::jwk::Jwk) -> bool {
    let Ok((_, spki)) = SubjectPublicKeyInfo::from_der(spki_der) else {
        return false;
    };
    let param = |name: &str| -> Option<Vec<u8>> {
        let s = jwk.parameter(name)?.as_str()?;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .ok()
    };
    let same_int = |a: &[u8], b: &[u8]| strip_leading_zeros(a) == strip_leading_zeros(b);
    match (jwk.key_type(), spki.parsed()) {
        ("RSA", Ok(PublicKey::RSA(rsa))) => match (param("n"), param("e")) {
            (Some(n), Some(e)) => same_int(&n, rsa.modulus) && same_int(&e, rsa.exponent),
            _ => false,
        },
        ("EC", Ok(PublicKey::EC(point))) => {
            let Some(csr_curve) = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
            else {
                return false;
            };
            let (want, size) = if csr_curve == OID_EC_P256 {
                ("P-256", 32)
            } else if csr_curve == OID_NIST_EC_P384 {
                ("P-384", 48)
            } else if csr_curve == OID_NIST_EC_P521 {
                ("P-521", 66)
            } else {
                return false;
            };
            if jwk.curve() != Some(want) {
                return false;
            }
            let data = point.data();
            let (Some(x), Some(y)) = (param("x"), param("y")) else {
                return false;
            };
            data.len() == 1 + 2 * size
                && data[0] == 4
                && same_int(&x, &data[1..1 + size])
                && same_int(&y, &data[1 + size..])
        }
        _ => false,
    }
}

/// The DER SubjectPublicKeyInfo of an RSA or EC public JWK, as OpenSSL
/// encodes it (what CSRs carry): blocked-key checks on account keys.
pub(crate) fn jwk_spki_der(jwk: &josekit::jwk::Jwk) -> Option<Vec<u8>> {
    use openssl::bn::{BigNum, BigNumContext};
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    let param = |name: &str| -> Option<BigNum> {
        let s = jwk.parameter(name)?.as_str()?;
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .ok()?;
        BigNum::from_slice(&b).ok()
    };
    let pkey = match jwk.key_type() {
        "RSA" => {
            PKey::from_rsa(Rsa::from_public_components(param("n")?, param("e")?).ok()?).ok()?
        }
        "EC" => {
            let nid = match jwk.curve()? {
                "P-256" => Nid::X9_62_PRIME256V1,
                "P-384" => Nid::SECP384R1,
                "P-521" => Nid::SECP521R1,
                _ => return None,
            };
            let group = EcGroup::from_curve_name(nid).ok()?;
            let mut ctx = BigNumContext::new().ok()?;
            let mut point = openssl::ec::EcPoint::new(&group).ok()?;
            let (x, y) = (param("x")?, param("y")?);
            point
                .set_affine_coordinates_gfp(&group, &x, &y, &mut ctx)
                .ok()?;
            PKey::from_ec_key(EcKey::from_public_key(&group, &point).ok()?).ok()?
        }
        _ => return None,
    };
    pkey.public_key_to_der().ok()
}
