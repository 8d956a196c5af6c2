//! A small ACME client for tests: JWS signing (josekit keys), nonce bookkeeping, and
//! enough low-level hooks (`post_raw`, `post_jws`, `post_body`, the `corrupt_*` and
//! `to_*` helpers) to send every kind of bad request RFC 8555 says a server must refuse.

use super::Server;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use josekit::jwk::alg::ed::EdCurve;
use josekit::jwk::KeyPair as _;
use josekit::jws::{EdDSA, JwsSigner, ES256, ES384};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The ACME error namespace (RFC 8555 §6.7).
pub const ERR_NS: &str = "urn:ietf:params:acme:error:";

pub fn b64u(data: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

pub fn b64u_decode(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(s)
        .unwrap_or_else(|e| panic!("not base64url: {s:?}: {e}"))
}

// ---------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------

/// Account key algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Es256,
    Es384,
    /// RS256 with a modulus of this many bits.
    Rs256(u32),
    /// EdDSA over Ed25519.
    EdDsa,
}

/// An account key: its public JWK (only the RFC 7638 required members), a signer,
/// and the private key as PKCS#8 PEM (to use the same key in a CSR).
pub struct AcmeKey {
    pub kind: KeyKind,
    alg: &'static str,
    jwk: Value,
    signer: KeySigner,
    private_pem: Vec<u8>,
}

/// josekit for EC and EdDSA (it produces the JWS r||s form); openssl for RSA, because
/// josekit refuses keys under 2048 bits and tests need weak keys to see them refused.
enum KeySigner {
    Jose(Box<dyn JwsSigner>),
    Rsa(openssl::pkey::PKey<openssl::pkey::Private>),
}

impl fmt::Debug for AcmeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AcmeKey({:?}, {})", self.kind, self.jwk)
    }
}

/// Keeps only the members RFC 7638 uses for a key type (josekit adds `alg`).
fn minimal_jwk(full: &josekit::jwk::Jwk) -> Value {
    let map: &serde_json::Map<String, Value> = full.as_ref();
    let keep: &[&str] = match map.get("kty").and_then(Value::as_str) {
        Some("RSA") => &["e", "kty", "n"],
        Some("EC") => &["crv", "kty", "x", "y"],
        Some("OKP") => &["crv", "kty", "x"],
        other => panic!("unexpected kty {other:?}"),
    };
    let mut out = serde_json::Map::new();
    for k in keep {
        out.insert(k.to_string(), map.get(*k).cloned().expect("jwk member"));
    }
    Value::Object(out)
}

impl AcmeKey {
    pub fn generate(kind: KeyKind) -> AcmeKey {
        fn jose(
            alg: &'static str,
            kp: &dyn josekit::jwk::KeyPair,
            signer: Box<dyn JwsSigner>,
        ) -> (&'static str, Value, KeySigner, Vec<u8>) {
            (
                alg,
                minimal_jwk(&kp.to_jwk_public_key()),
                KeySigner::Jose(signer),
                kp.to_pem_private_key(),
            )
        }
        let (alg, jwk, signer, private_pem) = match kind {
            KeyKind::Es256 => {
                let kp = ES256.generate_key_pair().expect("P-256 key");
                let signer = ES256
                    .signer_from_pem(kp.to_pem_private_key())
                    .expect("ES256 signer");
                jose("ES256", &kp, Box::new(signer))
            }
            KeyKind::Es384 => {
                let kp = ES384.generate_key_pair().expect("P-384 key");
                let signer = ES384
                    .signer_from_pem(kp.to_pem_private_key())
                    .expect("ES384 signer");
                jose("ES384", &kp, Box::new(signer))
            }
            KeyKind::EdDsa => {
                let kp = EdDSA
                    .generate_key_pair(EdCurve::Ed25519)
                    .expect("Ed25519 key");
                let signer = EdDSA
                    .signer_from_pem(kp.to_pem_private_key())
                    .expect("EdDSA signer");
                jose("EdDSA", &kp, Box::new(signer))
            }
            KeyKind::Rs256(bits) => {
                let rsa = openssl::rsa::Rsa::generate(bits).expect("RSA key");
                let jwk = json!({
                    "e": b64u(rsa.e().to_vec()),
                    "kty": "RSA",
                    "n": b64u(rsa.n().to_vec()),
                });
                let pkey = openssl::pkey::PKey::from_rsa(rsa).expect("PKey");
                let pem = pkey.private_key_to_pem_pkcs8().expect("PKCS#8");
                ("RS256", jwk, KeySigner::Rsa(pkey), pem)
            }
        };
        AcmeKey {
            kind,
            alg,
            jwk,
            signer,
            private_pem,
        }
    }

    /// An RS256 key from an openssl RSA key of any shape (a weak size, an odd
    /// exponent): what a hostile client could sign with.
    pub fn from_rsa(rsa: openssl::rsa::Rsa<openssl::pkey::Private>) -> AcmeKey {
        let jwk = json!({
            "e": b64u(rsa.e().to_vec()),
            "kty": "RSA",
            "n": b64u(rsa.n().to_vec()),
        });
        let pkey = openssl::pkey::PKey::from_rsa(rsa).expect("PKey");
        let private_pem = pkey.private_key_to_pem_pkcs8().expect("PKCS#8");
        AcmeKey {
            kind: KeyKind::Rs256(pkey.bits()),
            alg: "RS256",
            jwk,
            signer: KeySigner::Rsa(pkey),
            private_pem,
        }
    }

    /// The same key pair, announcing `jwk` as its public key (e.g. the same key
    /// written in a non-canonical form).
    pub fn with_jwk(mut self, jwk: Value) -> AcmeKey {
        self.jwk = jwk;
        self
    }

    /// The same key pair again (a client that knows a certificate's key).
    pub fn clone_key(&self) -> AcmeKey {
        let signer = match self.kind {
            KeyKind::Es256 => KeySigner::Jose(Box::new(
                ES256
                    .signer_from_pem(&self.private_pem)
                    .expect("ES256 signer"),
            )),
            KeyKind::Es384 => KeySigner::Jose(Box::new(
                ES384
                    .signer_from_pem(&self.private_pem)
                    .expect("ES384 signer"),
            )),
            KeyKind::EdDsa => KeySigner::Jose(Box::new(
                EdDSA
                    .signer_from_pem(&self.private_pem)
                    .expect("EdDSA signer"),
            )),
            KeyKind::Rs256(_) => KeySigner::Rsa(
                openssl::pkey::PKey::private_key_from_pem(&self.private_pem).expect("RSA key"),
            ),
        };
        AcmeKey {
            kind: self.kind,
            alg: self.alg,
            jwk: self.jwk.clone(),
            signer,
            private_pem: self.private_pem.clone(),
        }
    }

    /// The JWS `alg` for this key.
    pub fn alg(&self) -> &'static str {
        self.alg
    }

    /// The public JWK as sent in a `jwk` header.
    pub fn jwk(&self) -> Value {
        self.jwk.clone()
    }

    /// RFC 7638 thumbprint (SHA-256, base64url): members in lexicographic order, no spaces.
    pub fn thumbprint(&self) -> String {
        // `minimal_jwk` inserted the members in lexicographic order, so this holds with or
        // without serde_json's preserve_order.
        let canonical = serde_json::to_string(&self.jwk).expect("serialize jwk");
        b64u(Sha256::digest(canonical.as_bytes()))
    }

    /// Raw JWS signature over `message` (r||s for ECDSA, as JWS requires).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match &self.signer {
            KeySigner::Jose(s) => s.sign(message).expect("sign"),
            KeySigner::Rsa(pkey) => {
                // RSASSA-PKCS1-v1_5 with SHA-256 (openssl's default padding for RSA).
                let mut signer =
                    openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), pkey)
                        .expect("RSA signer");
                signer.update(message).expect("sign");
                signer.sign_to_vec().expect("sign")
            }
        }
    }

    /// PKCS#8 PEM of the private key.
    pub fn private_key_pem(&self) -> &[u8] {
        &self.private_pem
    }

    /// The private key as an openssl `PKey` (e.g. to put the account key in a CSR).
    pub fn openssl_pkey(&self) -> openssl::pkey::PKey<openssl::pkey::Private> {
        openssl::pkey::PKey::private_key_from_pem(&self.private_pem).expect("parse own key")
    }
}

/// Builds a flattened JSON JWS (RFC 7515 §7.2.2) over the given protected header and
/// payload bytes. The header is used as given, so tests control every member.
pub fn jws(protected: &Value, payload: &[u8], key: &AcmeKey) -> Value {
    let p = b64u(serde_json::to_vec(protected).expect("serialize header"));
    let pl = b64u(payload);
    let sig = key.sign(format!("{p}.{pl}").as_bytes());
    json!({"protected": p, "payload": pl, "signature": b64u(sig)})
}

/// Same as `jws`, with the protected header given as raw bytes (e.g. invalid JSON).
pub fn jws_raw_header(protected: &[u8], payload: &[u8], key: &AcmeKey) -> Value {
    let p = b64u(protected);
    let pl = b64u(payload);
    let sig = key.sign(format!("{p}.{pl}").as_bytes());
    json!({"protected": p, "payload": pl, "signature": b64u(sig)})
}

/// RFC 8555 §7.3.4: an external account binding, a flattened JWS over
/// `payload` with `protected` as given, MACed (OpenSSL's HMAC, not the
/// server's code) with `hmac_key` under the header's `alg` (HS256, HS384 or
/// HS512).
pub fn eab_jws(protected: &Value, payload: &[u8], hmac_key: &[u8]) -> Value {
    use openssl::hash::MessageDigest;
    let digest = match protected["alg"].as_str() {
        Some("HS384") => MessageDigest::sha384(),
        Some("HS512") => MessageDigest::sha512(),
        _ => MessageDigest::sha256(),
    };
    let p = b64u(serde_json::to_vec(protected).expect("serialize header"));
    let pl = b64u(payload);
    let pkey = openssl::pkey::PKey::hmac(hmac_key).expect("HMAC key");
    let mut signer = openssl::sign::Signer::new(digest, &pkey).expect("HMAC signer");
    signer
        .update(format!("{p}.{pl}").as_bytes())
        .expect("HMAC update");
    let mac = signer.sign_to_vec().expect("HMAC");
    json!({"protected": p, "payload": pl, "signature": b64u(mac)})
}

/// The binding a client sends: `kid`, HS256, `url`, over `key`'s JWK.
pub fn eab_binding(kid: &str, hmac_key: &[u8], url: &str, key: &AcmeKey) -> Value {
    let h = json!({"alg": "HS256", "kid": kid, "url": url});
    eab_jws(&h, &serde_json::to_vec(&key.jwk()).expect("JWK"), hmac_key)
}

/// Flips a bit in the signature (still valid base64url, still the right length).
pub fn corrupt_signature(jws: &mut Value) {
    let mut sig = b64u_decode(jws["signature"].as_str().expect("signature"));
    let i = sig.len() / 2;
    sig[i] ^= 0x01;
    jws["signature"] = Value::String(b64u(sig));
}

/// The JWS in compact serialization (`a.b.c`), which ACME forbids.
pub fn to_compact(jws: &Value) -> String {
    format!(
        "{}.{}.{}",
        jws["protected"].as_str().expect("protected"),
        jws["payload"].as_str().expect("payload"),
        jws["signature"].as_str().expect("signature")
    )
}

/// The JWS in general JSON serialization (a `signatures` array), which ACME forbids.
pub fn to_general(jws: &Value) -> Value {
    json!({
        "payload": jws["payload"],
        "signatures": [{"protected": jws["protected"], "signature": jws["signature"]}]
    })
}

// ---------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------

/// A fully read HTTP response. `Display` prints method, URL, status, headers and body,
/// for assertion messages: `assert_eq!(r.status, 201, "{r}")`.
#[derive(Clone)]
pub struct AcmeResponse {
    pub method: String,
    pub url: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl AcmeResponse {
    pub async fn read(method: &str, url: &str, resp: reqwest::Response) -> AcmeResponse {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: reading body: {e}"))
            .to_vec();
        AcmeResponse {
            method: method.to_string(),
            url: url.to_string(),
            status,
            headers,
            body,
        }
    }

    /// First value of a header, if present and ASCII.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("<non-ascii>").to_string())
    }

    /// Every value of a header.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("<non-ascii>").to_string())
            .collect()
    }

    /// Media type without parameters, lower-cased.
    pub fn content_type(&self) -> Option<String> {
        self.header("content-type").map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
    }

    pub fn location(&self) -> Option<String> {
        self.header("location")
    }

    pub fn nonce(&self) -> Option<String> {
        self.header("replay-nonce")
    }

    pub fn retry_after(&self) -> Option<String> {
        self.header("retry-after")
    }

    /// Targets of every `Link` with the given relation (RFC 8288).
    pub fn links(&self, rel: &str) -> Vec<String> {
        self.header_all("link")
            .iter()
            .flat_map(|h| parse_links(h))
            .filter(|(_, rels)| rels.iter().any(|r| r.eq_ignore_ascii_case(rel)))
            .map(|(url, _)| url)
            .collect()
    }

    /// The single `Link` target with this relation, if any.
    pub fn link(&self, rel: &str) -> Option<String> {
        self.links(rel).into_iter().next()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics (showing the response) if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self}"))
    }

    /// The body as JSON, or None.
    pub fn try_json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The problem `type`, if the body is a JSON object with one.
    pub fn problem_type(&self) -> Option<String> {
        self.try_json()?.get("type")?.as_str().map(str::to_string)
    }

    /// The status must be 2xx; returns self for chaining.
    pub fn ok(self) -> AcmeResponse {
        assert!((200..300).contains(&self.status), "expected 2xx: {self}");
        self
    }

    pub fn expect_status(self, status: u16) -> AcmeResponse {
        assert_eq!(self.status, status, "unexpected status: {self}");
        self
    }
}

impl fmt::Display for AcmeResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} {} -> {}", self.method, self.url, self.status)?;
        for (k, v) in &self.headers {
            writeln!(f, "  {k}: {}", v.to_str().unwrap_or("<non-ascii>"))?;
        }
        let text = self.text();
        if text.len() > 3000 {
            let mut end = 3000;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            write!(f, "  {}[... {} bytes]", &text[..end], text.len())
        } else {
            write!(f, "  {text}")
        }
    }
}

impl fmt::Debug for AcmeResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Parses one `Link` header value into (target, relations).
pub fn parse_links(header: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = header;
    while let Some(lt) = rest.find('<') {
        let Some(gt) = rest[lt..].find('>') else {
            break;
        };
        let url = rest[lt + 1..lt + gt].to_string();
        let after = &rest[lt + gt + 1..];
        // Parameters run until the next link (a ',' followed by '<'), or the end.
        let end = after
            .char_indices()
            .find(|&(i, c)| c == ',' && after[i + 1..].trim_start().starts_with('<'))
            .map(|(i, _)| i)
            .unwrap_or(after.len());
        let params = &after[..end];
        let mut rels = Vec::new();
        for p in params.split(';') {
            let p = p.trim();
            if let Some((k, v)) = p.split_once('=') {
                if k.trim().eq_ignore_ascii_case("rel") {
                    let v = v.trim().trim_matches('"');
                    rels.extend(v.split_whitespace().map(str::to_string));
                }
            }
        }
        out.push((url, rels));
        rest = &after[end..];
    }
    out
}

/// Asserts an RFC 7807 problem: the HTTP status, `Content-Type:
/// application/problem+json`, `type` = `urn:ietf:params:acme:error:<kind>`, a `status`
/// member equal to the HTTP status, a `detail` string, and a `Replay-Nonce` header
/// exactly when the request was a POST (`assert_nonce_rule`).
/// Returns the problem document.
pub fn assert_problem(r: &AcmeResponse, status: u16, kind: &str) -> Value {
    assert_problem_any(r, &[(status, kind)])
}

/// Like `assert_problem`, but any of several (status, kind) pairs is accepted (where the
/// RFC leaves a choice, e.g. 415 or 400 malformed for a wrong content type).
pub fn assert_problem_any(r: &AcmeResponse, allowed: &[(u16, &str)]) -> Value {
    let p = assert_problem_shape(r);
    let ty = p["type"].as_str().unwrap_or_default().to_string();
    let ok = allowed
        .iter()
        .any(|(s, k)| r.status == *s && ty == format!("{ERR_NS}{k}"));
    assert!(
        ok,
        "expected one of {allowed:?}, got {} {ty}:\n{r}",
        r.status
    );
    assert_nonce_rule(r);
    p
}

/// RFC 8555 §6.5, as Boulder does it: a `Replay-Nonce` on every response to
/// a POST (errors included) and from newNonce, on nothing else. Ruby's
/// acme-client reads the directory through a connection without a nonce
/// pool, and crashes on a nonce there.
pub fn assert_nonce_rule(r: &AcmeResponse) {
    if let Some(why) = nonce_rule_broken(r) {
        panic!("{why}:\n{r}");
    }
}

/// How `r` breaks the rule of `assert_nonce_rule`, if it does.
pub fn nonce_rule_broken(r: &AcmeResponse) -> Option<String> {
    let wanted = r.method == "POST" || r.url.contains("/acme/new-nonce");
    match r.nonce() {
        Some(n) if wanted && n.is_empty() => Some("empty Replay-Nonce".into()),
        None if wanted => Some(format!(
            "{} {} -> {} has no Replay-Nonce",
            r.method, r.url, r.status
        )),
        Some(_) if !wanted => Some(format!(
            "{} {} -> {} has a Replay-Nonce",
            r.method, r.url, r.status
        )),
        _ => None,
    }
}

/// Checks what every error response must have (never 500, problem+json, a `type`, a
/// `status` member matching the HTTP status, a `detail`), not which error it is.
pub fn assert_problem_shape(r: &AcmeResponse) -> Value {
    assert!(r.status >= 400, "expected an error status:\n{r}");
    assert!(r.status < 500, "server error:\n{r}");
    assert_eq!(
        r.content_type().as_deref(),
        Some("application/problem+json"),
        "problem Content-Type:\n{r}"
    );
    let p = r.json();
    let ty = p["type"]
        .as_str()
        .unwrap_or_else(|| panic!("problem without type:\n{r}"));
    assert!(
        ty.starts_with(ERR_NS),
        "problem type outside the ACME namespace:\n{r}"
    );
    assert_eq!(
        p["status"].as_u64(),
        Some(r.status as u64),
        "problem status member:\n{r}"
    );
    assert!(p["detail"].is_string(), "problem without detail:\n{r}");
    let detail = p["detail"].as_str().unwrap_or_default();
    assert!(
        !leaks_library_internals(detail),
        "problem detail echoes a library's internals:\n{r}"
    );
    p
}

/// OpenSSL error strings (`error:1E08010C:DECODER routines::unsupported`),
/// Rust error type names and parser internals have no place in a detail.
pub fn leaks_library_internals(detail: &str) -> bool {
    let openssl_code = detail.match_indices("error:").any(|(i, _)| {
        let code = &detail.as_bytes()[i + 6..];
        code.len() > 8 && code[..8].iter().all(u8::is_ascii_hexdigit) && code[8] == b':'
    });
    openssl_code
        || [
            "routines:",
            "ErrorStack",
            "JoseError",
            "Parsing Error",
            "BerError",
            "Der(",
        ]
        .iter()
        .any(|m| detail.contains(m))
}

/// Asserts a `Link: <dir_url>;rel="index"` header (RFC 8555 §7.1).
pub fn assert_index_link(r: &AcmeResponse, dir_url: &str) {
    let idx = r.links("index");
    assert!(
        idx.iter().any(|u| u == dir_url),
        "expected Link <{dir_url}>;rel=\"index\", got {idx:?}:\n{r}"
    );
}

// ---------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------

/// A JWS-signing ACME client. Every method takes `&self`; the nonce, the account URL
/// (`kid`) and the key live behind mutexes so tests can change them.
pub struct AcmeClient {
    pub http: reqwest::Client,
    pub dir_url: String,
    dir: Value,
    key: Mutex<Arc<AcmeKey>>,
    kid: Mutex<Option<String>>,
    nonce: Mutex<Option<String>>,
    /// Retry `post` on `badNonce` as RFC 8555 §6.5 asks of clients (for
    /// servers that refuse good nonces on purpose, as Pebble does).
    retry_bad_nonce: std::sync::atomic::AtomicBool,
}

impl AcmeClient {
    /// From now on, `post` retries (up to 5 times) when a nonce is refused.
    pub fn retry_bad_nonce(&self) {
        self.retry_bad_nonce
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// A client for `server` with a fresh key of the given kind (no account yet).
    pub async fn new(server: &Server, kind: KeyKind) -> AcmeClient {
        Self::with_key(server, AcmeKey::generate(kind)).await
    }

    pub async fn with_key(server: &Server, key: AcmeKey) -> AcmeClient {
        Self::from_parts(server.http_client(), &server.dir_url, key).await
    }

    /// A client over any HTTP client and directory URL.
    pub async fn from_parts(http: reqwest::Client, dir_url: &str, key: AcmeKey) -> AcmeClient {
        let r = AcmeResponse::read(
            "GET",
            dir_url,
            http.get(dir_url)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {dir_url}: {e}")),
        )
        .await;
        assert_eq!(r.status, 200, "directory: {r}");
        AcmeClient {
            http,
            dir_url: dir_url.to_string(),
            dir: r.json(),
            key: Mutex::new(Arc::new(key)),
            kid: Mutex::new(None),
            nonce: Mutex::new(None),
            retry_bad_nonce: Default::default(),
        }
    }

    /// Sign with `other`'s key from now on (the same account elsewhere).
    pub fn set_key_of(&self, other: &AcmeClient) {
        *self.key.lock().expect("key lock") = other.key();
    }

    /// The same account through another instance of the CA, as a load
    /// balancer would route it: same key, same account, URLs on `server`.
    pub async fn via(&self, server: &Server) -> AcmeClient {
        let c = Self::from_parts(
            server.http_client(),
            &server.dir_url,
            AcmeKey::generate(KeyKind::Es256),
        )
        .await;
        *c.key.lock().expect("key lock") = self.key();
        c.set_kid(self.kid().map(|k| rebase(&k, server)));
        c
    }

    /// The directory as fetched at construction.
    pub fn directory(&self) -> &Value {
        &self.dir
    }

    /// A directory URL by name (`newNonce`, `newAccount`, `newOrder`, `keyChange`, ...).
    pub fn endpoint(&self, name: &str) -> String {
        self.dir[name]
            .as_str()
            .unwrap_or_else(|| panic!("directory has no {name:?}: {}", self.dir))
            .to_string()
    }

    pub fn key(&self) -> Arc<AcmeKey> {
        self.key.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_key(&self, key: AcmeKey) {
        *self.key.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
    }

    /// The account URL, once `new_account` succeeded (or `set_kid` was called).
    pub fn kid(&self) -> Option<String> {
        self.kid.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The account URL; panics if there is no account.
    pub fn account_url(&self) -> String {
        self.kid()
            .expect("no account yet: call new_account/register first")
    }

    pub fn set_kid(&self, kid: Option<String>) {
        *self.kid.lock().unwrap_or_else(|e| e.into_inner()) = kid;
    }

    /// Drops the saved nonce (e.g. after a restart), so the next request fetches one.
    pub fn forget_nonce(&self) {
        *self.nonce.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// New HTTP client (no pooled connections to a killed server) and no saved nonce.
    pub fn reconnect(&mut self, server: &Server) {
        self.http = server.http_client();
        self.forget_nonce();
    }

    fn remember_nonce(&self, r: &AcmeResponse) {
        if let Some(n) = r.nonce() {
            *self.nonce.lock().unwrap_or_else(|e| e.into_inner()) = Some(n);
        }
    }

    /// A nonce to use: the one from the last response, or a fresh one from `newNonce`.
    pub async fn nonce(&self) -> String {
        let saved = self.nonce.lock().unwrap_or_else(|e| e.into_inner()).take();
        match saved {
            Some(n) => n,
            None => self.fresh_nonce().await,
        }
    }

    /// A nonce from `HEAD newNonce`, always a network round trip.
    pub async fn fresh_nonce(&self) -> String {
        let r = self.head(&self.endpoint("newNonce")).await;
        assert!(r.status == 200 || r.status == 204, "HEAD newNonce: {r}");
        r.nonce()
            .unwrap_or_else(|| panic!("newNonce without Replay-Nonce: {r}"))
    }

    pub async fn get(&self, url: &str) -> AcmeResponse {
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let r = AcmeResponse::read("GET", url, resp).await;
        self.remember_nonce(&r);
        r
    }

    pub async fn head(&self, url: &str) -> AcmeResponse {
        let resp = self
            .http
            .head(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("HEAD {url}: {e}"));
        AcmeResponse::read("HEAD", url, resp).await
    }

    /// POSTs an arbitrary body with an arbitrary Content-Type. Remembers the Replay-Nonce.
    pub async fn post_body(
        &self,
        url: &str,
        content_type: &str,
        body: impl Into<Vec<u8>>,
    ) -> AcmeResponse {
        let resp = self
            .http
            .post(url)
            .header("content-type", content_type)
            .body(body.into())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let r = AcmeResponse::read("POST", url, resp).await;
        self.remember_nonce(&r);
        r
    }

    /// POSTs a JWS (any JSON) as `application/jose+json`.
    pub async fn post_jws(&self, url: &str, jws: &Value) -> AcmeResponse {
        self.post_body(
            url,
            "application/jose+json",
            serde_json::to_vec(jws).expect("serialize"),
        )
        .await
    }

    /// Signs `payload` under exactly the given protected header with `sign_with`, and POSTs it.
    pub async fn post_raw(
        &self,
        url: &str,
        protected: Value,
        payload: &[u8],
        sign_with: &AcmeKey,
    ) -> AcmeResponse {
        self.post_jws(url, &jws(&protected, payload, sign_with))
            .await
    }

    /// `{alg, kid, nonce, url}` for the current key and account, with a nonce.
    pub async fn header_kid(&self, url: &str) -> Value {
        let key = self.key();
        json!({"alg": key.alg(), "kid": self.account_url(), "nonce": self.nonce().await, "url": url})
    }

    /// `{alg, jwk, nonce, url}` for the current key, with a nonce.
    pub async fn header_jwk(&self, url: &str) -> Value {
        let key = self.key();
        json!({"alg": key.alg(), "jwk": key.jwk(), "nonce": self.nonce().await, "url": url})
    }

    fn payload_bytes(payload: Option<Value>) -> Vec<u8> {
        match payload {
            Some(v) => serde_json::to_vec(&v).expect("serialize payload"),
            None => Vec::new(), // POST-as-GET (RFC 8555 §6.3)
        }
    }

    /// Signed POST with `kid` if there is an account, else `jwk`. `None` = POST-as-GET.
    pub async fn post(&self, url: &str, payload: Option<Value>) -> AcmeResponse {
        let mut tries = 0;
        loop {
            let r = if self.kid().is_some() {
                self.post_kid(url, payload.clone()).await
            } else {
                self.post_jwk(url, payload.clone()).await
            };
            tries += 1;
            if !(self.should_retry(&r) && tries < 6) {
                return r;
            }
        }
    }

    /// A refused nonce, and the client retries those.
    fn should_retry(&self, r: &AcmeResponse) -> bool {
        self.retry_bad_nonce
            .load(std::sync::atomic::Ordering::Relaxed)
            && r.status == 400
            && r.problem_type().as_deref() == Some("urn:ietf:params:acme:error:badNonce")
    }

    /// POST-as-GET.
    pub async fn post_as_get(&self, url: &str) -> AcmeResponse {
        self.post(url, None).await
    }

    /// Signed POST with a `jwk` header, whatever the account state.
    pub async fn post_jwk(&self, url: &str, payload: Option<Value>) -> AcmeResponse {
        let h = self.header_jwk(url).await;
        let key = self.key();
        self.post_raw(url, h, &Self::payload_bytes(payload), &key)
            .await
    }

    /// Signed POST with a `kid` header; panics without an account.
    pub async fn post_kid(&self, url: &str, payload: Option<Value>) -> AcmeResponse {
        let h = self.header_kid(url).await;
        let key = self.key();
        self.post_raw(url, h, &Self::payload_bytes(payload), &key)
            .await
    }

    /// POSTs `newAccount` (always with `jwk`). On 200/201 the Location becomes the `kid`.
    pub async fn new_account(&self, contact: &[&str], tos: bool) -> AcmeResponse {
        self.new_account_payload(json!({"contact": contact, "termsOfServiceAgreed": tos}))
            .await
    }

    /// POSTs `newAccount` with an arbitrary payload (always with `jwk`).
    pub async fn new_account_payload(&self, payload: Value) -> AcmeResponse {
        let mut tries = 0;
        let r = loop {
            let r = self
                .post_jwk(&self.endpoint("newAccount"), Some(payload.clone()))
                .await;
            tries += 1;
            if !(self.should_retry(&r) && tries < 6) {
                break r;
            }
        };
        if r.status == 200 || r.status == 201 {
            if let Some(loc) = r.location() {
                self.set_kid(Some(loc));
            }
        }
        r
    }

    /// Creates an account (ToS agreed, no contact), asserts 201 + Location, returns its URL.
    pub async fn register(&self) -> String {
        let r = self.new_account(&[], true).await;
        assert_eq!(r.status, 201, "newAccount: {r}");
        r.location()
            .unwrap_or_else(|| panic!("newAccount without Location: {r}"))
    }

    /// POSTs `newAccount` (ToS agreed) bound to the external account key
    /// `kid` (`hmac_key` base64url, as `cairn admin eab create` prints it).
    pub async fn new_account_eab(&self, kid: &str, hmac_key_b64: &str) -> AcmeResponse {
        let binding = eab_binding(
            kid,
            &b64u_decode(hmac_key_b64),
            &self.endpoint("newAccount"),
            &self.key(),
        );
        self.new_account_payload(
            json!({"termsOfServiceAgreed": true, "externalAccountBinding": binding}),
        )
        .await
    }

    /// `{"identifiers": [{"type":"dns","value":..}, ..]}`
    pub fn order_payload(names: &[&str]) -> Value {
        let ids: Vec<Value> = names
            .iter()
            .map(|n| json!({"type": "dns", "value": n}))
            .collect();
        json!({ "identifiers": ids })
    }

    /// POSTs `newOrder` with an arbitrary payload.
    pub async fn new_order_raw(&self, payload: Value) -> AcmeResponse {
        self.post(&self.endpoint("newOrder"), Some(payload)).await
    }

    /// Creates an order for DNS names; asserts 201 + Location; returns (order URL, order).
    pub async fn new_order(&self, names: &[&str]) -> (String, Value) {
        let r = self.new_order_raw(Self::order_payload(names)).await;
        assert_eq!(r.status, 201, "newOrder {names:?}: {r}");
        let loc = r
            .location()
            .unwrap_or_else(|| panic!("newOrder without Location: {r}"));
        (loc, r.json())
    }

    /// `token.thumbprint` (RFC 8555 §8.1).
    pub fn key_authorization(&self, token: &str) -> String {
        format!("{token}.{}", self.key().thumbprint())
    }

    /// base64url(SHA-256(key authorization)) (RFC 8555 §8.4).
    pub fn dns01_txt_value(&self, token: &str) -> String {
        b64u(Sha256::digest(self.key_authorization(token).as_bytes()))
    }

    /// POSTs `{"csr": b64u(csr_der)}` to the order's `finalize` URL.
    pub async fn finalize(&self, order: &Value, csr_der: &[u8]) -> AcmeResponse {
        let url = order["finalize"]
            .as_str()
            .unwrap_or_else(|| panic!("order without finalize: {order}"));
        self.post(url, Some(json!({"csr": b64u(csr_der)}))).await
    }

    /// POST-as-GET `url` until `pred` holds for the 200 JSON body; returns that body.
    /// Panics with the last response after `timeout`.
    pub async fn poll_until(
        &self,
        url: &str,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.post_as_get(url).await;
            if r.status == 200 {
                if let Some(v) = r.try_json() {
                    if pred(&v) {
                        return v;
                    }
                }
            }
            if Instant::now() > deadline {
                panic!("poll_until timed out after {timeout:?}; last response:\n{r}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls until `status` is one of `statuses`.
    pub async fn wait_status(&self, url: &str, statuses: &[&str], timeout: Duration) -> Value {
        self.poll_until(url, |v| statuses.iter().any(|s| v["status"] == *s), timeout)
            .await
    }

    /// POST-as-GET of a certificate URL.
    pub async fn download_cert(&self, url: &str) -> AcmeResponse {
        self.post_as_get(url).await
    }

    /// Downloads a certificate chain, asserting 200 and the PEM chain content type.
    pub async fn download_cert_pem(&self, url: &str) -> String {
        let r = self.download_cert(url).await;
        assert_eq!(r.status, 200, "certificate download: {r}");
        assert_eq!(
            r.content_type().as_deref(),
            Some("application/pem-certificate-chain"),
            "certificate Content-Type: {r}"
        );
        r.text()
    }

    /// Finds the challenge of `kind` in an authorization.
    pub fn challenge<'a>(authz: &'a Value, kind: &str) -> Option<&'a Value> {
        authz["challenges"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == kind)
    }

    /// The order's authorization URLs.
    pub fn authz_urls(order: &Value) -> Vec<String> {
        order["authorizations"]
            .as_array()
            .unwrap_or_else(|| panic!("order without authorizations: {order}"))
            .iter()
            .map(|u| u.as_str().expect("authorization URL").to_string())
            .collect()
    }

    /// For a server running with `always_valid`: answers one challenge per pending
    /// authorization (http-01 if offered, else dns-01), then waits for the order to be
    /// `ready`. Returns the ready order.
    pub async fn authorize_always_valid(&self, order_url: &str, order: &Value) -> Value {
        for authz_url in Self::authz_urls(order) {
            let r = self.post_as_get(&authz_url).await;
            assert_eq!(r.status, 200, "authz: {r}");
            let authz = r.json();
            if authz["status"] != "pending" {
                continue;
            }
            let ch = Self::challenge(&authz, "http-01")
                .or_else(|| Self::challenge(&authz, "dns-01"))
                .unwrap_or_else(|| panic!("no http-01 or dns-01 challenge: {authz}"));
            let url = ch["url"].as_str().expect("challenge url");
            let r = self.post(url, Some(json!({}))).await;
            assert_eq!(r.status, 200, "challenge response: {r}");
        }
        self.wait_status(order_url, &["ready"], Duration::from_secs(15))
            .await
    }

    /// For a server running with `always_valid`: order, authorize, finalize, wait and
    /// download. Returns (order URL, the valid order, the PEM chain).
    pub async fn issue_always_valid(
        &self,
        names: &[&str],
        csr_der: &[u8],
    ) -> (String, Value, String) {
        let (order_url, order) = self.new_order(names).await;
        let order = self.authorize_always_valid(&order_url, &order).await;
        let r = self.finalize(&order, csr_der).await;
        assert_eq!(r.status, 200, "finalize: {r}");
        let order = self
            .wait_status(&order_url, &["valid"], Duration::from_secs(15))
            .await;
        let cert_url = order["certificate"]
            .as_str()
            .unwrap_or_else(|| panic!("valid order without certificate: {order}"));
        let pem = self.download_cert_pem(cert_url).await;
        (order_url, order, pem)
    }
}

/// `url` (any instance's) on `server`: the same path under its base URL.
pub fn rebase(url: &str, server: &Server) -> String {
    match url.find("/acme/") {
        Some(i) => format!("{}{}", server.base_url, &url[i..]),
        None => url.to_string(),
    }
}
