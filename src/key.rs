//! Key policy: which public keys Cairn accepts, as account keys (a JWS `jwk`,
//! RFC 7517/7518) and as certificate keys (a CSR's SubjectPublicKeyInfo), and
//! the one canonical form in which keys are compared, hashed and stored.
//!
//! A [`PublicKey`] exists only for a key that passed the policy, so holding
//! one means "acceptable", and two keys are the same key exactly when they
//! are equal: every spelling that could make one key look like two (leading
//! zero bytes, short or long coordinates, non-canonical DER or Ed25519
//! encodings) is refused when the key is read.
//!
//! The policy, Boulder's (`goodkey`) where it has one:
//! - RSA: a modulus of 2048, 3072 or 4096 bits, odd; public exponent 65537
//!   (a huge exponent makes every verification cost many times the usual CPU).
//! - ECDSA: P-256 or P-384, a point on the curve.
//! - Ed25519 (account keys only): a canonical point that is not of small order
//!   (a small-order key verifies an all-zero signature for many messages).
//!
//! Refusals come in two kinds ([`KeyError`]): `Encoding` when the key is not
//! written as the standards require (JSON types, base64url, RFC 7518's
//! minimal integers and full-length coordinates, private members, DER),
//! `Policy` when it reads as a key Cairn will not accept (type, curve, size,
//! exponent, invalid or weak point). A JWS key maps them to `malformed` and
//! `badPublicKey` (as Boulder does for policy failures), a CSR key to
//! `badCSR` (RFC 8555 §7.4: "the CSR is unacceptable (e.g., due to a short
//! key)").

use crate::problem::Problem;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_DSA, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_PKCS1_RSASSAPSS, OID_SIG_ED25519, OID_SIG_ED448,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey as X509Key;
use x509_parser::x509::SubjectPublicKeyInfo;

/// RSA modulus sizes accepted, in bits.
pub const RSA_BITS: [usize; 3] = [2048, 3072, 4096];
/// The one RSA public exponent accepted (65537, big-endian).
const RSA_EXPONENT: [u8; 3] = [1, 0, 1];
/// JWK members that hold private key material (RFC 7518 §6.2.2, §6.3.2, §6.4.1).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Why a key was refused; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    Encoding(String),
    Policy(String),
}

impl KeyError {
    /// As the problem for a JWS key: `malformed` or `badPublicKey`.
    pub fn for_jws(self) -> Problem {
        match self {
            KeyError::Encoding(d) => Problem::malformed(d),
            KeyError::Policy(d) => Problem::bad_public_key(d),
        }
    }

    /// As the problem for a CSR's key: always `badCSR`.
    pub fn for_csr(self) -> Problem {
        match self {
            KeyError::Encoding(d) | KeyError::Policy(d) => Problem::bad_csr(d),
        }
    }
}

fn encoding<T>(detail: impl Into<String>) -> Result<T, KeyError> {
    Err(KeyError::Encoding(detail.into()))
}

fn policy<T>(detail: impl Into<String>) -> Result<T, KeyError> {
    Err(KeyError::Policy(detail.into()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
}

impl Curve {
    fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
        }
    }

    /// Bytes in one coordinate.
    fn size(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }

    /// OpenSSL's group, built once: building one per key checked cost
    /// more than the check.
    fn group(self) -> Result<&'static openssl::ec::EcGroupRef, openssl::error::ErrorStack> {
        use openssl::ec::EcGroup;
        use openssl::nid::Nid;
        use std::sync::LazyLock;
        type Group = LazyLock<Result<EcGroup, openssl::error::ErrorStack>>;
        static P256: Group = LazyLock::new(|| EcGroup::from_curve_name(Nid::X9_62_PRIME256V1));
        static P384: Group = LazyLock::new(|| EcGroup::from_curve_name(Nid::SECP384R1));
        match self {
            Curve::P256 => &*P256,
            Curve::P384 => &*P384,
        }
        .as_deref()
        .map_err(Clone::clone)
    }

    /// The DER of a SubjectPublicKeyInfo up to the uncompressed point:
    /// SEQUENCE { SEQUENCE { id-ecPublicKey, the curve }, BIT STRING {.
    fn spki_header(self) -> &'static [u8] {
        match self {
            Curve::P256 => &[
                0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
                0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
            ],
            Curve::P384 => &[
                0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
                0x05, 0x2b, 0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
            ],
        }
    }
}

/// A public key that passed the policy, in canonical form: RSA integers
/// big-endian without leading zeros, EC coordinates at the curve's full
/// length, the Ed25519 point's canonical encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Ec {
        curve: Curve,
        x: Vec<u8>,
        y: Vec<u8>,
    },
    Ed25519([u8; 32]),
}

impl PublicKey {
    /// Read a public JWK (a JWS `jwk`, keyChange's `oldKey`, a stored
    /// account key). Members other than the key's own and the private ones
    /// (`alg`, `kid`, `use`, ...) are ignored.
    pub fn from_jwk(v: &Value) -> Result<PublicKey, KeyError> {
        let Value::Object(map) = v else {
            return encoding("the JWK must be a JSON object");
        };
        if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| map.contains_key(**m)) {
            return encoding(format!(
                "the JWK must be a public key; it has the private member {m:?}"
            ));
        }
        match member_str(map, "kty")? {
            "RSA" => rsa(uint(map, "n")?, uint(map, "e")?),
            "EC" => {
                let curve = match member_str(map, "crv")? {
                    "P-256" => Curve::P256,
                    "P-384" => Curve::P384,
                    c => {
                        return policy(format!(
                            "EC curve {c:?} is not accepted; use P-256 or P-384"
                        ))
                    }
                };
                let (x, y) = (b64_member(map, "x")?, b64_member(map, "y")?);
                for (name, c) in [("x", &x), ("y", &y)] {
                    if c.len() != curve.size() {
                        // RFC 7518 §6.2.1.2: the full coordinate size, no more, no less.
                        return encoding(format!(
                            "EC {name:?} must be {} bytes for {}, not {}",
                            curve.size(),
                            curve.name(),
                            c.len()
                        ));
                    }
                }
                ec(curve, x, y)
            }
            "OKP" => match member_str(map, "crv")? {
                "Ed25519" => {
                    let x = b64_member(map, "x")?;
                    let x: [u8; 32] = x.as_slice().try_into().or_else(|_| {
                        encoding(format!("Ed25519 \"x\" must be 32 bytes, not {}", x.len()))
                    })?;
                    ed25519(x)
                }
                c => policy(format!("OKP curve {c:?} is not accepted; use Ed25519")),
            },
            kty => policy(format!(
                "key type {kty:?} is not accepted; use RSA, EC (P-256, P-384) or OKP (Ed25519)"
            )),
        }
    }

    /// Read a DER SubjectPublicKeyInfo (a CSR's, a certificate's). It must be
    /// the canonical DER of the key, byte for byte.
    pub fn from_spki_der(der: &[u8]) -> Result<PublicKey, KeyError> {
        let (rest, spki) = match SubjectPublicKeyInfo::from_der(der) {
            Ok(parsed) => parsed,
            Err(e) => {
                tracing::debug!("SubjectPublicKeyInfo parse: {e}");
                return encoding("the SubjectPublicKeyInfo is not valid DER");
            }
        };
        if !rest.is_empty() {
            return encoding("trailing bytes after the SubjectPublicKeyInfo");
        }
        let alg = &spki.algorithm.algorithm;
        let key = if *alg == OID_PKCS1_RSAENCRYPTION {
            let Ok(X509Key::RSA(k)) = spki.parsed() else {
                return encoding("malformed RSA public key");
            };
            rsa(
                strip_zeros(k.modulus).to_vec(),
                strip_zeros(k.exponent).to_vec(),
            )?
        } else if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let Some(oid) = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
            else {
                return policy("an EC key without a named curve is not accepted");
            };
            let curve = if oid == OID_EC_P256 {
                Curve::P256
            } else if oid == OID_NIST_EC_P384 {
                Curve::P384
            } else if oid == OID_NIST_EC_P521 {
                return policy("ECDSA P-521 keys are not accepted; use P-256 or P-384");
            } else {
                return policy(format!(
                    "EC curve {oid} is not accepted; use P-256 or P-384"
                ));
            };
            // Uncompressed only: what every client sends and every verifier reads.
            let point = &spki.subject_public_key.data;
            let size = curve.size();
            if point.len() != 1 + 2 * size || point[0] != 4 {
                return encoding(format!(
                    "the {} key must be an uncompressed point of {} bytes",
                    curve.name(),
                    1 + 2 * size
                ));
            }
            ec(
                curve,
                point[1..1 + size].to_vec(),
                point[1 + size..].to_vec(),
            )?
        } else if *alg == OID_SIG_ED25519 {
            let Ok(x) = <[u8; 32]>::try_from(&*spki.subject_public_key.data) else {
                return encoding("an Ed25519 key is 32 bytes");
            };
            ed25519(x)?
        } else {
            let name = if *alg == OID_SIG_ED448 {
                "Ed448".to_string()
            } else if *alg == OID_KEY_TYPE_DSA {
                "DSA".to_string()
            } else if *alg == OID_PKCS1_RSASSAPSS {
                "RSASSA-PSS".to_string()
            } else {
                format!("key algorithm {alg}")
            };
            return policy(format!(
                "{name} keys are not accepted; use RSA (2048, 3072 or 4096 bits), ECDSA P-256 or P-384"
            ));
        };
        if key.spki_der()? != der {
            // e.g. RSA without the NULL parameters, a non-minimal length or integer.
            return encoding("the SubjectPublicKeyInfo is not in canonical DER form");
        }
        Ok(key)
    }

    /// Whether Cairn puts this key in a certificate: RSA and ECDSA only.
    pub fn check_certifiable(&self) -> Result<(), KeyError> {
        match self {
            PublicKey::Ed25519(_) => policy(
                "Ed25519 keys are not accepted in certificates; use RSA (2048, 3072 or 4096 bits), ECDSA P-256 or P-384",
            ),
            _ => Ok(()),
        }
    }

    /// The JWS algorithm this key signs with.
    pub fn jws_alg(&self) -> &'static str {
        match self {
            PublicKey::Rsa { .. } => "RS256",
            PublicKey::Ec {
                curve: Curve::P256, ..
            } => "ES256",
            PublicKey::Ec {
                curve: Curve::P384, ..
            } => "ES384",
            PublicKey::Ed25519(_) => "EdDSA",
        }
    }

    /// The canonical JWK: the RFC 7638 required members only.
    pub fn to_jwk(&self) -> Value {
        match self {
            PublicKey::Rsa { n, e } => {
                json!({"e": B64.encode(e), "kty": "RSA", "n": B64.encode(n)})
            }
            PublicKey::Ec { curve, x, y } => json!({
                "crv": curve.name(), "kty": "EC", "x": B64.encode(x), "y": B64.encode(y)
            }),
            PublicKey::Ed25519(x) => json!({"crv": "Ed25519", "kty": "OKP", "x": B64.encode(x)}),
        }
    }

    /// RFC 7638 thumbprint (SHA-256, base64url): the account's identity.
    pub fn thumbprint(&self) -> String {
        let b = |v: &[u8]| B64.encode(v);
        // Members in lexical order, no whitespace; base64url needs no escaping.
        let canonical = match self {
            PublicKey::Rsa { n, e } => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, b(e), b(n)),
            PublicKey::Ec { curve, x, y } => format!(
                r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                curve.name(),
                b(x),
                b(y)
            ),
            PublicKey::Ed25519(x) => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, b(x)),
        };
        B64.encode(Sha256::digest(canonical.as_bytes()))
    }

    /// The canonical DER SubjectPublicKeyInfo (what blocked keys are hashed over).
    pub fn spki_der(&self) -> Result<Vec<u8>, KeyError> {
        use openssl::bn::BigNum;
        use openssl::pkey::{Id, PKey};
        let fail = |e: openssl::error::ErrorStack| {
            tracing::warn!("encoding an accepted public key failed: {e}");
            KeyError::Encoding("the public key cannot be encoded".into())
        };
        let pkey = match self {
            PublicKey::Rsa { n, e } => {
                let rsa = openssl::rsa::Rsa::from_public_components(
                    BigNum::from_slice(n).map_err(fail)?,
                    BigNum::from_slice(e).map_err(fail)?,
                )
                .map_err(fail)?;
                PKey::from_rsa(rsa).map_err(fail)?
            }
            PublicKey::Ec { curve, x, y } => {
                // A named curve's SPKI is a fixed header before the point
                // (RFC 5480): no need to build an OpenSSL key for it.
                let mut der = curve.spki_header().to_vec();
                der.push(4);
                der.extend_from_slice(x);
                der.extend_from_slice(y);
                return Ok(der);
            }
            PublicKey::Ed25519(x) => {
                PKey::public_key_from_raw_bytes(x, Id::ED25519).map_err(fail)?
            }
        };
        pkey.public_key_to_der().map_err(fail)
    }
}

/// RSA from canonical big-endian integers: e = 65537, a modulus of an
/// accepted size, odd. Cheapest checks first; nothing here costs more than
/// a comparison.
fn rsa(n: Vec<u8>, e: Vec<u8>) -> Result<PublicKey, KeyError> {
    if e != RSA_EXPONENT {
        return policy("the RSA public exponent must be 65537");
    }
    let bits = bit_length(&n);
    if !RSA_BITS.contains(&bits) {
        return policy(format!(
            "RSA keys of {bits} bits are not accepted; use 2048, 3072 or 4096 bits"
        ));
    }
    if n.last().is_some_and(|b| b & 1 == 0) {
        return policy("the RSA modulus is even");
    }
    Ok(PublicKey::Rsa { n, e })
}

/// EC from full-length coordinates: the point must be on the curve (OpenSSL
/// also refuses coordinates at or above the field prime).
fn ec(curve: Curve, x: Vec<u8>, y: Vec<u8>) -> Result<PublicKey, KeyError> {
    let on_curve = (|| {
        let mut ctx = openssl::bn::BigNumContext::new()?;
        openssl::ec::EcPoint::from_bytes(curve.group()?, &sec1(&x, &y), &mut ctx)
    })();
    if on_curve.is_err() {
        return policy(format!("the EC key is not a point on {}", curve.name()));
    }
    Ok(PublicKey::Ec { curve, x, y })
}

/// The SEC1 uncompressed encoding `04 || x || y`.
fn sec1(x: &[u8], y: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(1 + x.len() + y.len());
    p.push(4);
    p.extend_from_slice(x);
    p.extend_from_slice(y);
    p
}

/// Ed25519 from its 32-byte encoding: canonical (y < p), a curve point, and
/// not of small order.
fn ed25519(x: [u8; 32]) -> Result<PublicKey, KeyError> {
    // p = 2^255 - 19, little-endian: ed ff .. ff 7f. The sign bit (bit 255)
    // is not part of y.
    let y_at_least_p = x[0] >= 0xed && x[1..31].iter().all(|b| *b == 0xff) && x[31] & 0x7f == 0x7f;
    if y_at_least_p {
        return encoding("the Ed25519 key is not canonically encoded (y >= p)");
    }
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&x) else {
        return policy("the Ed25519 key is not a point on the curve");
    };
    if key.is_weak() {
        return policy("the Ed25519 key is a point of small order");
    }
    Ok(PublicKey::Ed25519(x))
}

fn member_str<'a>(map: &'a Map<String, Value>, name: &str) -> Result<&'a str, KeyError> {
    match map.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => encoding(format!("JWK {name:?} must be a string")),
        None => encoding(format!("the JWK has no {name:?}")),
    }
}

/// A base64url member (RFC 7515 §2: no padding, canonical trailing bits).
fn b64_member(map: &Map<String, Value>, name: &str) -> Result<Vec<u8>, KeyError> {
    B64.decode(member_str(map, name)?)
        .or_else(|_| encoding(format!("JWK {name:?} is not base64url")))
}

/// A Base64urlUInt member (RFC 7518 §2): non-empty, minimal (zero is one
/// zero byte, nothing else starts with one).
fn uint(map: &Map<String, Value>, name: &str) -> Result<Vec<u8>, KeyError> {
    let v = b64_member(map, name)?;
    match v.as_slice() {
        [] => encoding(format!("JWK {name:?} is empty")),
        [0, _, ..] => encoding(format!(
            "JWK {name:?} has a leading zero byte; RFC 7518 §6.3.1 requires the minimal encoding"
        )),
        _ => Ok(v),
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[first..]
}

/// Bits in a big-endian unsigned integer.
fn bit_length(b: &[u8]) -> usize {
    match strip_zeros(b) {
        [] => 0,
        [first, rest @ ..] => rest.len() * 8 + (8 - first.leading_zeros() as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rsa_jwk(bits: u32) -> (openssl::rsa::Rsa<openssl::pkey::Private>, Value) {
        let rsa = openssl::rsa::Rsa::generate(bits).unwrap();
        let jwk = json!({"kty": "RSA", "n": B64.encode(rsa.n().to_vec()), "e": B64.encode(rsa.e().to_vec())});
        (rsa, jwk)
    }

    fn kind(r: Result<PublicKey, KeyError>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(KeyError::Encoding(_)) => "encoding",
            Err(KeyError::Policy(_)) => "policy",
        }
    }

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 §3.1.
        let jwk = json!({"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"});
        let key = PublicKey::from_jwk(&jwk).unwrap();
        assert_eq!(
            key.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        assert_eq!(PublicKey::from_jwk(&key.to_jwk()).unwrap(), key);
    }

    #[test]
    fn rsa_members_empty_one_byte_leading_zero_tiny_even_huge() {
        let (_, good) = rsa_jwk(2048);
        assert_eq!(kind(PublicKey::from_jwk(&good)), "ok");
        let n = B64.decode(good["n"].as_str().unwrap()).unwrap();
        let mut even = n.clone();
        *even.last_mut().unwrap() &= 0xfe;
        let with = |member: &str, value: Vec<u8>| {
            let mut j = good.clone();
            j[member] = json!(B64.encode(value));
            kind(PublicKey::from_jwk(&j))
        };
        let mut zero_n = vec![0];
        zero_n.extend(&n);
        for (member, value, want) in [
            ("n", vec![], "encoding"),
            ("n", vec![0], "policy"),
            ("n", vec![0, 0], "encoding"),
            ("n", vec![3], "policy"),
            ("n", zero_n, "encoding"),
            ("n", vec![0xc3, 0x51], "policy"),
            ("n", even, "policy"),
            ("n", vec![0xff; 1024], "policy"),
            ("n", vec![0xff; 513], "policy"),
            ("e", vec![], "encoding"),
            ("e", vec![0], "policy"),
            ("e", vec![0, 1, 0, 1], "encoding"),
            ("e", vec![1], "policy"),
            ("e", vec![3], "policy"),
            ("e", vec![1, 0, 0], "policy"),
            ("e", vec![0xff; 384], "policy"),
        ] {
            assert_eq!(with(member, value.clone()), want, "{member} = {value:02x?}");
        }
        // Sizes, with odd moduli of exactly that many bits.
        for bits in [1024, 2047, 2048, 2049, 2560, 3072, 4095, 4096, 4097] {
            let mut n = vec![0xffu8; bits / 8];
            if bits % 8 != 0 {
                n.insert(0, (1u8 << (bits % 8)) - 1);
            }
            assert_eq!(bit_length(&n), bits);
            let want = if RSA_BITS.contains(&bits) {
                "ok"
            } else {
                "policy"
            };
            assert_eq!(with("n", n), want, "{bits}");
        }
    }

    #[test]
    fn jwk_shape_errors_are_encoding_errors() {
        let (_, good) = rsa_jwk(2048);
        let mut private = good.clone();
        private["d"] = json!("AQAB");
        let mut number = good.clone();
        number["n"] = json!(5);
        let mut padded = good.clone();
        padded["e"] = json!("AQAB=");
        for bad in [json!([]), json!({"n": "AQAB"}), private, number, padded] {
            assert_eq!(kind(PublicKey::from_jwk(&bad)), "encoding", "{bad}");
        }
        assert_eq!(
            kind(PublicKey::from_jwk(&json!({"kty": "oct", "k": "AA"}))),
            "encoding"
        );
        assert_eq!(kind(PublicKey::from_jwk(&json!({"kty": "DSA"}))), "policy");
    }

    #[test]
    fn ec_coordinates_full_length_and_on_the_curve() {
        let group =
            openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
        let key = openssl::ec::EcKey::generate(&group).unwrap();
        let mut ctx = openssl::bn::BigNumContext::new().unwrap();
        let point = key
            .public_key()
            .to_bytes(
                &group,
                openssl::ec::PointConversionForm::UNCOMPRESSED,
                &mut ctx,
            )
            .unwrap();
        let (x, y) = (point[1..33].to_vec(), point[33..].to_vec());
        let jwk = |x: &[u8], y: &[u8]| json!({"kty": "EC", "crv": "P-256", "x": B64.encode(x), "y": B64.encode(y)});
        let good = PublicKey::from_jwk(&jwk(&x, &y)).unwrap();
        assert_eq!(
            PublicKey::from_spki_der(&good.spki_der().unwrap()).unwrap(),
            good
        );
        let mut long = vec![0];
        long.extend(&x);
        assert_eq!(kind(PublicKey::from_jwk(&jwk(&long, &y))), "encoding");
        assert_eq!(kind(PublicKey::from_jwk(&jwk(&x[1..], &y))), "encoding");
        let mut off = y.clone();
        off[31] ^= 1;
        assert_eq!(kind(PublicKey::from_jwk(&jwk(&x, &off))), "policy");
        // Coordinates at or above the field prime are not points.
        assert_eq!(kind(PublicKey::from_jwk(&jwk(&[0xff; 32], &y))), "policy");
        let mut p384 = jwk(&x, &y);
        p384["crv"] = json!("P-384");
        assert_eq!(kind(PublicKey::from_jwk(&p384)), "encoding");
        p384["crv"] = json!("P-521");
        assert_eq!(kind(PublicKey::from_jwk(&p384)), "policy");
    }

    #[test]
    fn ed25519_small_order_and_non_canonical_points() {
        let jwk = |x: &[u8]| json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode(x)});
        let p = |hex_le: &str| hex::decode(hex_le).unwrap();
        // The eight points of small order (canonical encodings, sign bit both ways).
        for x in [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000080",
            "0100000000000000000000000000000000000000000000000000000000000000",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        ] {
            assert_eq!(kind(PublicKey::from_jwk(&jwk(&p(x)))), "policy", "{x}");
        }
        // y >= p, including p + y for a y that is a point of large order.
        let mut found_large = false;
        for y in 2u8..19 {
            let mut canonical = [0u8; 32];
            canonical[0] = y;
            if ed25519(canonical).is_err() {
                continue;
            }
            found_large = true;
            let mut plus_p = [0xffu8; 32];
            plus_p[0] = 0xed + y;
            plus_p[31] = 0x7f;
            assert_eq!(kind(PublicKey::from_jwk(&jwk(&plus_p))), "encoding", "{y}");
        }
        assert!(found_large);
        for x in [
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ] {
            assert_eq!(kind(PublicKey::from_jwk(&jwk(&p(x)))), "encoding", "{x}");
        }
        assert_eq!(kind(PublicKey::from_jwk(&jwk(&[1; 31]))), "encoding");
        let kp = openssl::pkey::PKey::generate_ed25519().unwrap();
        let raw = kp.raw_public_key().unwrap();
        let good = PublicKey::from_jwk(&jwk(&raw)).unwrap();
        assert_eq!(
            PublicKey::from_spki_der(&kp.public_key_to_der().unwrap()).unwrap(),
            good
        );
        assert!(good.check_certifiable().is_err());
    }

    #[test]
    fn ec_spki_is_openssls_encoding() {
        use openssl::ec::{EcGroup, EcKey};
        use openssl::nid::Nid;
        for nid in [Nid::X9_62_PRIME256V1, Nid::SECP384R1] {
            let group = EcGroup::from_curve_name(nid).unwrap();
            let k = openssl::pkey::PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
            let der = k.public_key_to_der().unwrap();
            let key = PublicKey::from_spki_der(&der).unwrap();
            assert_eq!(key.spki_der().unwrap(), der, "{nid:?}");
        }
    }

    #[test]
    fn spki_and_jwk_name_the_same_key() {
        let (rsa, jwk) = rsa_jwk(2048);
        let der = openssl::pkey::PKey::from_rsa(rsa)
            .unwrap()
            .public_key_to_der()
            .unwrap();
        let from_jwk = PublicKey::from_jwk(&jwk).unwrap();
        assert_eq!(PublicKey::from_spki_der(&der).unwrap(), from_jwk);
        assert_eq!(from_jwk.spki_der().unwrap(), der);
        let e3 =
            openssl::rsa::Rsa::generate_with_e(2048, &openssl::bn::BigNum::from_u32(3).unwrap())
                .unwrap();
        let der = openssl::pkey::PKey::from_rsa(e3)
            .unwrap()
            .public_key_to_der()
            .unwrap();
        assert_eq!(kind(PublicKey::from_spki_der(&der)), "policy");
    }
}
