//! Every JWS check in one place (RFC 8555 §6.2, RFC 7515), one small
//! function per check. Flattened JSON serialization only; algorithms RS256
//! (2048–4096-bit keys), ES256, ES384 and EdDSA (Ed25519).

use crate::key::{Curve, KeyError, PublicKey};
use crate::problem::Problem;
use crate::ra::{ExternalBinding, MacAlg};
use crate::wire::KeyChangePayload;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::signature::{
    RsaPublicKeyComponents, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED,
    RSA_PKCS1_2048_8192_SHA256,
};
use serde_json::{Map, Value};
use std::sync::Arc;

/// The algorithms a client may sign with, as listed in `badSignatureAlgorithm`.
pub const ALGORITHMS: &[&str] = &["RS256", "ES256", "ES384", "EdDSA"];

/// A parsed, not yet verified, flattened JWS.
#[derive(Debug)]
pub struct Jws {
    pub protected_b64: String,
    pub payload_b64: String,
    pub signature: Vec<u8>,
    pub header: Map<String, Value>,
    pub alg: String,
}

impl Jws {
    pub fn signing_input(&self) -> String {
        format!("{}.{}", self.protected_b64, self.payload_b64)
    }

    pub fn payload(&self) -> Result<Vec<u8>, Problem> {
        B64.decode(self.payload_b64.as_bytes())
            .map_err(|_| Problem::malformed("JWS payload is not base64url"))
    }

    pub fn header_str(&self, name: &str) -> Result<Option<&str>, Problem> {
        match self.header.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Problem::malformed(format!(
                "JWS header {name:?} must be a string"
            ))),
        }
    }
}

/// Parse a flattened JWS (RFC 7515 §7.2.2) and check its algorithm.
pub fn parse(body: &[u8]) -> Result<Jws, Problem> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Problem::malformed(format!("request body is not JSON: {e}")))?;
    let jws = parse_flattened(v, "request body")?;
    if !ALGORITHMS.contains(&jws.alg.as_str()) {
        return Err(Problem::bad_signature_algorithm(
            format!("JWS algorithm {:?} is not supported", jws.alg),
            ALGORITHMS,
        ));
    }
    check_no_extensions(&jws.header)?;
    Ok(jws)
}

/// The parts of a flattened JWS (`what` names it in problems), its
/// algorithm not yet checked.
fn parse_flattened(v: Value, what: &str) -> Result<Jws, Problem> {
    let Value::Object(obj) = v else {
        return Err(Problem::malformed(format!(
            "{what} must be a flattened JWS object"
        )));
    };
    if obj.contains_key("signatures") {
        return Err(Problem::malformed(
            "JWS must use the flattened JSON serialization, not the general one",
        ));
    }
    // RFC 8555 §6.2: the JWS MUST NOT have an unprotected header.
    if obj.contains_key("header") {
        return Err(Problem::malformed(
            "JWS must not have an unprotected header",
        ));
    }
    let field = |name: &str| -> Result<String, Problem> {
        match obj.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(Problem::malformed(format!("JWS {name:?} must be a string"))),
            None => Err(Problem::malformed(format!("JWS is missing {name:?}"))),
        }
    };
    let protected_b64 = field("protected")?;
    let payload_b64 = field("payload")?;
    let signature = B64
        .decode(field("signature")?.as_bytes())
        .map_err(|_| Problem::malformed("JWS signature is not base64url"))?;
    if signature.is_empty() {
        return Err(Problem::malformed("JWS signature is empty"));
    }
    let header_bytes = B64
        .decode(protected_b64.as_bytes())
        .map_err(|_| Problem::malformed("JWS protected header is not base64url"))?;
    let header: Map<String, Value> = serde_json::from_slice(&header_bytes)
        .map_err(|_| Problem::malformed("JWS protected header is not a JSON object"))?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.clone(),
        _ => return Err(Problem::malformed("JWS protected header has no \"alg\"")),
    };
    Ok(Jws {
        protected_b64,
        payload_b64,
        signature,
        header,
        alg,
    })
}

/// RFC 8555 §7.3.4: newAccount's `externalAccountBinding` is a flattened
/// JWS with a MAC algorithm, the key id as `kid`, the newAccount URL as
/// `url` and no nonce, over the account key (`account_key`, compared as a
/// key: its thumbprint, not its JSON). Every flaw is `malformed`; the MAC is
/// checked by the RA, which holds the key.
pub fn parse_binding(
    v: Value,
    url: &str,
    account_key: &PublicKey,
) -> Result<ExternalBinding, Problem> {
    let in_binding = |mut p: Problem| {
        p.detail = format!("externalAccountBinding: {}", p.detail);
        p
    };
    let jws = parse_flattened(v, "it").map_err(in_binding)?;
    let alg = MacAlg::parse(&jws.alg).ok_or_else(|| {
        in_binding(Problem::malformed(format!(
            "algorithm {:?} is not a MAC algorithm (one of {})",
            jws.alg,
            MacAlg::NAMES.join(", ")
        )))
    })?;
    check_no_extensions(&jws.header).map_err(in_binding)?;
    if jws.header.contains_key("nonce") {
        return Err(in_binding(Problem::malformed(
            "it must not have a \"nonce\"",
        )));
    }
    let kid = match jws.header_str("kid").map_err(in_binding)? {
        Some(k) if !k.is_empty() => k.to_string(),
        _ => {
            return Err(in_binding(Problem::malformed(
                "its protected header must have \"kid\", the external account key id",
            )))
        }
    };
    if jws.header_str("url").map_err(in_binding)? != Some(url) {
        return Err(in_binding(Problem::malformed(format!(
            "its \"url\" must be the newAccount URL {url:?}"
        ))));
    }
    let payload: Value = serde_json::from_slice(&jws.payload().map_err(in_binding)?)
        .map_err(|_| in_binding(Problem::malformed("its payload is not JSON (a JWK)")))?;
    let bound = PublicKey::from_jwk(&payload).map_err(|e| {
        in_binding(Problem::malformed(format!(
            "its payload is not the account key: {}",
            e.for_jws().detail
        )))
    })?;
    if bound.thumbprint() != account_key.thumbprint() {
        return Err(in_binding(Problem::malformed(
            "its payload is not the account key (the JWS's \"jwk\")",
        )));
    }
    Ok(ExternalBinding {
        kid,
        alg,
        signing_input: jws.signing_input(),
        mac: jws.signature,
    })
}

/// What keyChange's inner JWS says (RFC 8555 §7.3.5).
pub struct KeyChange {
    /// The account URL it names.
    pub account: String,
    /// The key the account has now.
    pub old_key: PublicKey,
}

/// Check keyChange's inner JWS (the outer one's payload): flattened, signed
/// by the new key given as `jwk` (no `kid`), no nonce, the outer `url`, and
/// a payload of `{account, oldKey}`. Returns the new key and the payload.
pub fn parse_key_change(body: &[u8], url: &str) -> Result<(PublicKey, KeyChange), Problem> {
    let inner = parse(body)?;
    if inner.header.contains_key("nonce") {
        return Err(Problem::malformed(
            "keyChange inner JWS must not have a nonce",
        ));
    }
    if inner.header.contains_key("kid") {
        return Err(Problem::malformed(
            "keyChange inner JWS must use \"jwk\", not \"kid\"",
        ));
    }
    if inner.header_str("url")? != Some(url) {
        return Err(Problem::malformed(
            "keyChange inner JWS \"url\" must equal the outer \"url\"",
        ));
    }
    let new_key = parse_jwk(
        inner
            .header
            .get("jwk")
            .ok_or_else(|| Problem::malformed("keyChange inner JWS has no \"jwk\""))?,
    )?;
    verify(&inner, &new_key)?;
    let payload: KeyChangePayload = serde_json::from_slice(&inner.payload()?)
        .map_err(|e| Problem::malformed(format!("keyChange inner payload: {e}")))?;
    let old_key = PublicKey::from_jwk(&payload.old_key)
        .map_err(|e| Problem::malformed(format!("keyChange \"oldKey\": {}", e.for_jws().detail)))?;
    Ok((
        new_key,
        KeyChange {
            account: payload.account,
            old_key,
        },
    ))
}

/// RFC 7515 §4.1.11: a JWS whose `crit` names an extension the recipient
/// does not understand is invalid. ACME defines none and Cairn understands
/// none (and `crit` may be neither empty nor list registered names), so any
/// `crit` is refused. RFC 7797's unencoded payload (`"b64": false`) is such
/// an extension; `"b64": true` is the default and harmless.
fn check_no_extensions(header: &Map<String, Value>) -> Result<(), Problem> {
    if let Some(crit) = header.get("crit") {
        return Err(Problem::malformed(format!(
            "JWS \"crit\" ({crit}) is not accepted: Cairn understands no JWS extensions (RFC 7515 §4.1.11)"
        )));
    }
    match header.get("b64") {
        None | Some(Value::Bool(true)) => Ok(()),
        Some(_) => Err(Problem::malformed(
            "JWS unencoded payloads (RFC 7797 \"b64\": false) are not accepted; ACME payloads are base64url",
        )),
    }
}

/// Read the embedded `jwk` through the key policy (`crate::key`): `malformed`
/// for a JWK not written as RFC 7517/7518 require, `badPublicKey` for a key
/// Cairn does not accept.
pub fn parse_jwk(v: &Value) -> Result<PublicKey, Problem> {
    PublicKey::from_jwk(v).map_err(KeyError::for_jws)
}

/// A key ready to check signatures: the algorithm it fits and its verifier.
/// The WFE keeps them per account key, so a key is decoded once.
#[derive(Clone)]
pub struct KeyVerifier {
    alg: &'static str,
    verifier: Verifier,
}

/// ECDSA and RSA through ring, which verifies a P-256 signature in about
/// three quarters of OpenSSL's time (through josekit: 98 us against 72 us
/// here) and needs no decoded key object: the key policy (`crate::key`)
/// has already checked the point is on its curve, the RSA modulus size and
/// exponent, so ring is given the raw key.
#[derive(Clone)]
enum Verifier {
    Ecdsa(Arc<UnparsedPublicKey<Vec<u8>>>),
    Rsa(Arc<RsaPublicKeyComponents<Vec<u8>>>),
    /// Ed25519 through ed25519-dalek's strict verification: RFC 8032's
    /// accepts signatures that only hold in the small-order component,
    /// which the key policy already refuses for keys; strict verification
    /// refuses them for `R` too.
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl KeyVerifier {
    /// The verifier of `key`; the algorithm is the one its type allows.
    pub fn new(key: &PublicKey) -> Result<KeyVerifier, Problem> {
        let alg = key.jws_alg();
        let verifier = match key {
            PublicKey::Ed25519(x) => Verifier::Ed25519(
                ed25519_dalek::VerifyingKey::from_bytes(x).map_err(Problem::internal)?,
            ),
            PublicKey::Ec { curve, x, y } => {
                // JWS ECDSA signatures are r || s at the curve's size
                // (RFC 7518 §3.4): ring's FIXED encodings.
                let algorithm = match curve {
                    Curve::P256 => &ECDSA_P256_SHA256_FIXED,
                    Curve::P384 => &ECDSA_P384_SHA384_FIXED,
                };
                // The uncompressed point (SEC 1 §2.3.3).
                let point = [&[4u8][..], x, y].concat();
                Verifier::Ecdsa(Arc::new(UnparsedPublicKey::new(algorithm, point)))
            }
            PublicKey::Rsa { n, e } => Verifier::Rsa(Arc::new(RsaPublicKeyComponents {
                n: n.clone(),
                e: e.clone(),
            })),
        };
        Ok(KeyVerifier { alg, verifier })
    }

    /// Verify the signature; the JWS algorithm must fit the key.
    pub fn verify(&self, jws: &Jws) -> Result<(), Problem> {
        if jws.alg != self.alg {
            return Err(Problem::bad_signature_algorithm(
                format!(
                    "JWS algorithm {:?} does not fit the key ({} expected)",
                    jws.alg, self.alg
                ),
                ALGORITHMS,
            ));
        }
        let input = jws.signing_input();
        let input = input.as_bytes();
        let verified = match &self.verifier {
            Verifier::Ecdsa(k) => k.verify(input, &jws.signature).is_ok(),
            Verifier::Rsa(k) => k
                .verify(&RSA_PKCS1_2048_8192_SHA256, input, &jws.signature)
                .is_ok(),
            Verifier::Ed25519(k) => ed25519_dalek::Signature::from_slice(&jws.signature)
                .is_ok_and(|sig| k.verify_strict(input, &sig).is_ok()),
        };
        if verified {
            Ok(())
        } else {
            Err(Problem::malformed("JWS signature does not verify"))
        }
    }
}

/// Verify the signature with `key`; the algorithm must fit the key.
pub fn verify(jws: &Jws, key: &PublicKey) -> Result<(), Problem> {
    KeyVerifier::new(key)?.verify(jws)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_general_serialization_and_unknown_alg() {
        assert!(parse(br#"{"signatures":[]}"#).is_err());
        let hdr = B64.encode(br#"{"alg":"HS256","nonce":"x","url":"u"}"#);
        let body = format!(r#"{{"protected":"{hdr}","payload":"","signature":"AA"}}"#);
        let e = parse(body.as_bytes()).unwrap_err();
        assert_eq!(e.short_type(), "badSignatureAlgorithm");
        assert_eq!(e.algorithms.as_deref().unwrap().len(), 4);
    }
}
