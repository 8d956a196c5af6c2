//! Every JWS check in one place (RFC 8555 §6.2, RFC 7515), one small
//! function per check. Flattened JSON serialization only; algorithms RS256
//! (2048–4096-bit keys), ES256, ES384 and EdDSA (Ed25519).

use crate::problem::Problem;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use josekit::jwk::Jwk;
use josekit::jws::{EdDSA, JwsVerifier, ES256, ES384, RS256};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
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
    let Value::Object(obj) = v else {
        return Err(Problem::malformed(
            "request body must be a flattened JWS object",
        ));
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
    if !ALGORITHMS.contains(&alg.as_str()) {
        return Err(Problem::bad_signature_algorithm(
            format!("JWS algorithm {alg:?} is not supported"),
            ALGORITHMS,
        ));
    }
    check_no_extensions(&header)?;
    Ok(Jws {
        protected_b64,
        payload_b64,
        signature,
        header,
        alg,
    })
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

/// Parse the embedded `jwk` and check it is a public key Cairn accepts.
pub fn parse_jwk(v: &Value) -> Result<Jwk, Problem> {
    let Value::Object(map) = v else {
        return Err(Problem::malformed("JWS \"jwk\" must be a JSON object"));
    };
    if map.contains_key("d") {
        return Err(Problem::malformed(
            "JWS \"jwk\" must not contain a private key",
        ));
    }
    let jwk = Jwk::from_map(map.clone())
        .map_err(|e| Problem::malformed(format!("JWS \"jwk\" is not a valid JWK: {e}")))?;
    check_key(&jwk)?;
    Ok(jwk)
}

fn b64_param(jwk: &Jwk, name: &str) -> Result<Vec<u8>, Problem> {
    match jwk.parameter(name) {
        Some(Value::String(s)) => B64
            .decode(s.as_bytes())
            .map_err(|_| Problem::malformed(format!("JWK {name:?} is not base64url"))),
        _ => Err(Problem::malformed(format!("JWK is missing {name:?}"))),
    }
}

/// Key policy: RSA 2048–4096 bits, EC P-256/P-384, Ed25519.
pub fn check_key(jwk: &Jwk) -> Result<(), Problem> {
    match jwk.key_type() {
        "RSA" => {
            let n = b64_param(jwk, "n")?;
            let e = b64_param(jwk, "e")?;
            let n = strip_zeros(&n);
            let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
            if !(2048..=4096).contains(&bits) {
                return Err(Problem::bad_public_key(format!(
                    "RSA key of {bits} bits; 2048 to 4096 bits are accepted"
                )));
            }
            let e = strip_zeros(&e);
            if e.is_empty() || e.last().is_some_and(|b| b & 1 == 0) || e == [1] {
                return Err(Problem::bad_public_key("RSA public exponent is invalid"));
            }
            Ok(())
        }
        "EC" => match jwk.curve() {
            Some("P-256") | Some("P-384") => {
                b64_param(jwk, "x")?;
                b64_param(jwk, "y")?;
                Ok(())
            }
            c => Err(Problem::bad_public_key(format!(
                "EC curve {c:?} is not supported; use P-256 or P-384"
            ))),
        },
        "OKP" => match jwk.curve() {
            Some("Ed25519") => {
                b64_param(jwk, "x")?;
                Ok(())
            }
            c => Err(Problem::bad_public_key(format!(
                "OKP curve {c:?} is not supported; use Ed25519"
            ))),
        },
        kty => Err(Problem::bad_public_key(format!(
            "key type {kty:?} is not supported"
        ))),
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[i..]
}

/// A key ready to check signatures: the algorithm it fits and its verifier.
/// Building one costs far more than a verification (OpenSSL decodes the
/// key), so the WFE keeps them per account key.
#[derive(Clone)]
pub struct KeyVerifier {
    alg: &'static str,
    verifier: Arc<dyn JwsVerifier>,
}

impl KeyVerifier {
    /// The verifier of `jwk`; the algorithm is the one its type allows.
    pub fn new(jwk: &Jwk) -> Result<KeyVerifier, Problem> {
        let alg = match (jwk.key_type(), jwk.curve()) {
            ("RSA", _) => "RS256",
            ("EC", Some("P-256")) => "ES256",
            ("EC", Some("P-384")) => "ES384",
            ("OKP", Some("Ed25519")) => "EdDSA",
            _ => return Err(Problem::bad_public_key("unsupported key")),
        };
        let bad_key = |e: josekit::JoseError| Problem::malformed(format!("unusable JWK: {e}"));
        let verifier: Arc<dyn JwsVerifier> = match alg {
            "RS256" => Arc::new(RS256.verifier_from_jwk(jwk).map_err(bad_key)?),
            "ES256" => Arc::new(ES256.verifier_from_jwk(jwk).map_err(bad_key)?),
            "ES384" => Arc::new(ES384.verifier_from_jwk(jwk).map_err(bad_key)?),
            _ => Arc::new(EdDSA.verifier_from_jwk(jwk).map_err(bad_key)?),
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
        self.verifier
            .verify(jws.signing_input().as_bytes(), &jws.signature)
            .map_err(|_| Problem::malformed("JWS signature does not verify"))
    }
}

/// Verify the signature with `jwk`; the algorithm must fit the key.
pub fn verify(jws: &Jws, jwk: &Jwk) -> Result<(), Problem> {
    KeyVerifier::new(jwk)?.verify(jws)
}

/// RFC 7638 thumbprint: SHA-256 over the required members in lexical order.
pub fn thumbprint(jwk: &Jwk) -> Result<String, Problem> {
    let s = |name: &str| -> Result<String, Problem> {
        match jwk.parameter(name) {
            Some(Value::String(v)) => Ok(serde_json::to_string(v).map_err(Problem::internal)?),
            _ => Err(Problem::malformed(format!("JWK is missing {name:?}"))),
        }
    };
    let canonical = match jwk.key_type() {
        "RSA" => format!(r#"{{"e":{},"kty":"RSA","n":{}}}"#, s("e")?, s("n")?),
        "EC" => format!(
            r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
            s("crv")?,
            s("x")?,
            s("y")?
        ),
        "OKP" => format!(r#"{{"crv":{},"kty":"OKP","x":{}}}"#, s("crv")?, s("x")?),
        kty => {
            return Err(Problem::bad_public_key(format!(
                "key type {kty:?} is not supported"
            )))
        }
    };
    Ok(B64.encode(Sha256::digest(canonical.as_bytes())))
}

/// The public members of a JWK, as stored with the account.
pub fn public_json(jwk: &Jwk) -> Result<String, Problem> {
    let public = jwk
        .to_public_key()
        .map_err(|e| Problem::malformed(format!("JWK: {e}")))?;
    serde_json::to_string(public.as_ref()).map_err(Problem::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 §3.1.
        let jwk = Jwk::from_bytes(
            br#"{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}"#,
        )
        .unwrap();
        assert_eq!(
            thumbprint(&jwk).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn refuses_general_serialization_and_unknown_alg() {
        assert!(parse(br#"{"signatures":[]}"#).is_err());
        let hdr = B64.encode(br#"{"alg":"HS256","nonce":"x","url":"u"}"#);
        let body = format!(r#"{{"protected":"{hdr}","payload":"","signature":"AA"}}"#);
        let e = parse(body.as_bytes()).unwrap_err();
        assert_eq!(e.short_type(), "badSignatureAlgorithm");
        assert_eq!(e.algorithms.as_deref().unwrap().len(), 4);
    }

    #[test]
    fn small_rsa_keys_are_refused() {
        // josekit will not generate a key this small; openssl will.
        let rsa = openssl::rsa::Rsa::generate(1024).unwrap();
        let jwk = Jwk::from_bytes(
            serde_json::json!({
                "kty": "RSA",
                "n": B64.encode(rsa.n().to_vec()),
                "e": B64.encode(rsa.e().to_vec()),
            })
            .to_string(),
        )
        .unwrap();
        assert_eq!(check_key(&jwk).unwrap_err().short_type(), "badPublicKey");
        let pair = RS256.generate_key_pair(2048).unwrap();
        assert!(check_key(&pair.to_jwk_public_key()).is_ok());
    }
}
