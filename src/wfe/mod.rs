//! Web front end: the axum router for the ACME API, JWS authentication,
//! nonces, and the common headers (`Link: rel="index"`, `Cache-Control`,
//! and `Replay-Nonce` on newNonce and POST responses). It turns each request into one
//! `ra` call and never touches SQL.

mod account;
mod ari;
mod directory;
mod docs;
mod jws;
mod nonce;
mod order;
pub mod rates;

use crate::config::Config;
use crate::core::{Account, AccountId};
use crate::key::{KeyError, PublicKey};
use crate::problem::Problem;
use crate::ra::Ra;
use crate::ratelimit::RequestRateLimiter;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use rates::{ClientIp, RequestRateLayer};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;

pub(crate) use nonce::{Nonces, SKEW_SECS as NONCE_SKEW_SECS};

pub(crate) struct Wfe {
    pub ra: Arc<Ra>,
    pub nonces: Nonces,
    pub cfg: Arc<Config>,
    /// Per-IP request rates (LIMITS.md §1), also the client-IP rule.
    pub rates: Arc<RequestRateLimiter>,
    /// Signature verifiers of account keys, by key thumbprint.
    pub verifiers: VerifierCache,
    /// Request bodies in memory, all connections together.
    pub bodies: BodyBudget,
    /// Injected faults (`crate::faults`), off unless configured.
    pub faults: Arc<crate::faults::Faults>,
}

/// Bytes of request bodies that may be in memory at once
/// (`server.max_buffered_body_bytes`). A request reserves what it may
/// read before reading any of it, so a flood of unfinished bodies (many
/// HTTP/2 streams) is refused up front instead of growing memory.
pub(crate) struct BodyBudget(std::sync::atomic::AtomicUsize);

impl BodyBudget {
    pub fn new(bytes: usize) -> BodyBudget {
        BodyBudget(std::sync::atomic::AtomicUsize::new(bytes))
    }

    fn reserve(&self, n: usize) -> Option<BodyReservation<'_>> {
        use std::sync::atomic::Ordering;
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(n)
            })
            .ok()
            .map(|_| BodyReservation(self, n))
    }
}

/// Bytes of the budget held until dropped.
struct BodyReservation<'a>(&'a BodyBudget, usize);

impl Drop for BodyReservation<'_> {
    fn drop(&mut self) {
        self.0
             .0
            .fetch_add(self.1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Account keys' verifiers, built once per key rather than per request (an
/// OpenSSL key decode costs about three signature checks). Keyed by the
/// RFC 7638 thumbprint, so a key change simply misses; bounded by clearing
/// when full, which costs one rebuild per active account.
#[derive(Default)]
pub(crate) struct VerifierCache(
    std::sync::Mutex<std::collections::HashMap<String, jws::KeyVerifier>>,
);

/// Verifiers kept before the cache starts over.
const VERIFIER_CACHE_MAX: usize = 10_000;

impl VerifierCache {
    fn get_or_build(&self, acct: &Account) -> Result<jws::KeyVerifier, Problem> {
        if let Some(v) = self.lock().get(&acct.thumbprint) {
            return Ok(v.clone());
        }
        let v = jws::KeyVerifier::new(&account_key(acct)?)?;
        let mut map = self.lock();
        if map.len() >= VERIFIER_CACHE_MAX {
            map.clear();
        }
        map.insert(acct.thumbprint.clone(), v.clone());
        Ok(v)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, jws::KeyVerifier>> {
        // A panic while holding it cannot leave the map inconsistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An account's stored key, read through the key policy like any `jwk`: a
/// key stored before the policy refused it (a huge RSA exponent, a
/// small-order Ed25519 point) signs nothing any more.
fn account_key(acct: &Account) -> Result<PublicKey, Problem> {
    let v: serde_json::Value = serde_json::from_str(&acct.jwk).map_err(Problem::internal)?;
    PublicKey::from_jwk(&v).map_err(|e| {
        let (KeyError::Encoding(d) | KeyError::Policy(d)) = e;
        Problem::bad_public_key(format!("this account's key is no longer accepted: {d}"))
    })
}

pub(crate) type AppState = Arc<Wfe>;

/// The externally visible base URL of this request: `https://<Host>`.
#[derive(Clone, Debug)]
pub(crate) struct Base(pub String);

impl Base {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.0, path)
    }

    /// The terms-of-service URL to advertise, if any: Cairn's own page is a
    /// path of this server.
    pub fn terms_url(&self, cfg: &Config) -> Option<String> {
        match cfg.acme.terms_of_service.as_str() {
            "" => None,
            crate::config::BUILTIN_TERMS => Some(self.url(crate::config::BUILTIN_TERMS)),
            url => Some(url.to_string()),
        }
    }
}

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        // Link targets (rel="index", "up", "help", "terms-of-service") and
        // anything a client may GET are also read with POST-as-GET: see
        // `PublicRead`.
        .route(
            "/directory",
            get(directory::directory).post(directory::directory),
        )
        .route("/acme/new-nonce", get(directory::new_nonce))
        .route("/acme/new-acct", post(account::new_account))
        .route("/acme/acct/{id}", post(account::account))
        .route("/acme/acct/{id}/orders", post(account::orders))
        .route("/acme/key-change", post(account::key_change))
        .route("/acme/new-order", post(order::new_order))
        .route("/acme/order/{id}", post(order::order))
        .route("/acme/finalize/{id}", post(order::finalize))
        .route("/acme/authz/{id}", post(order::authz))
        .route("/acme/chall/{id}", post(order::challenge))
        .route("/acme/cert/{serial}", post(order::certificate))
        .route("/acme/revoke-cert", post(order::revoke))
        .route(
            "/acme/issuer/0",
            get(directory::issuer).post(directory::issuer),
        )
        .route("/acme/renewal-info/{cert_id}", get(ari::renewal_info))
        .route(
            "/docs/rate-limits",
            get(docs::rate_limits).post(docs::rate_limits),
        )
        .route(
            crate::config::BUILTIN_TERMS,
            get(docs::terms).post(docs::terms),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Innermost: an injected fault stands where the handler's answer
        // would, with the nonce, Link and request log of any answer.
        .layer(axum::middleware::from_fn_with_state(
            state.faults.clone(),
            crate::faults::layer,
        ))
        // Inside the common headers: a refusal carries a nonce and Link too.
        .layer(RequestRateLayer::new(state.rates.clone()))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            common_headers,
        ))
        .with_state(state)
}

/// The address a request comes from (for per-IP limits): what the
/// request-rate layer decided, else the peer (or the address a trusted
/// proxy forwarded for); `None` when the server runs without peer
/// addresses.
pub(crate) struct ClientAddr(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(ClientIp(ip)) = parts.extensions.get::<ClientIp>() {
            return Ok(ClientAddr(Some(*ip)));
        }
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| {
            let forwarded = parts
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .map(|v| v.as_bytes());
            state.rates.client_ip(c.0.ip(), forwarded)
        });
        Ok(ClientAddr(peer))
    }
}

async fn not_found() -> Problem {
    Problem::not_found("no such resource")
}

async fn method_not_allowed() -> Problem {
    Problem::method_not_allowed()
}

/// Headers on every response: `Link: rel="index"`, `Cache-Control:
/// no-store` (nothing here may be cached), and a fresh `Replay-Nonce` on
/// newNonce and on every response to a POST (RFC 8555 §6.5: errors too,
/// clients take their next nonce from them). A plain GET gets none, as
/// from Boulder: Ruby's acme-client fetches the directory through a
/// connection without a nonce pool and crashes on one.
async fn common_headers(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let base = base_url(req.headers(), req.uri(), &state.cfg);
    req.extensions_mut().insert(Base(base.clone()));
    let is_directory = req.uri().path() == "/directory";
    let wants_nonce = req.method() == Method::POST || req.uri().path() == "/acme/new-nonce";
    let method = req.method().clone();
    let endpoint = crate::metrics::endpoint(req.uri().path());
    let current = crate::request::Request::new();
    let mut resp = match check_head(&req, &state.cfg) {
        Ok(()) => {
            let (resp, writes) =
                crate::sa::track_writes(crate::request::scope(current.clone(), next.run(req)))
                    .await;
            // Answered once what it wrote (or read of others' writes) is
            // committed: nothing acknowledged is lost in a crash.
            let durable = crate::request::scope(current.clone(), state.ra.durable(writes));
            match durable.await {
                Ok(()) => resp,
                Err(p) => p.into_response(),
            }
        }
        Err(p) => p.into_response(),
    };
    let elapsed = started.elapsed();
    crate::metrics::request(
        endpoint,
        method.as_str(),
        resp.status().as_u16(),
        elapsed.as_secs_f64(),
    );
    // One line per request: the route (not the path, which may carry
    // anything a client sent), never the JWS or its key.
    tracing::info!(
        target: "cairn::request",
        request_id = %current.id,
        method = %method,
        endpoint,
        status = resp.status().as_u16(),
        latency_ms = format!("{:.3}", elapsed.as_secs_f64() * 1000.0),
        account = current.account(),
        "request"
    );
    let h = resp.headers_mut();
    if wants_nonce {
        if let Ok(v) = HeaderValue::from_str(&state.nonces.issue()) {
            h.insert("replay-nonce", v);
        }
    }
    if !is_directory {
        if let Ok(v) = HeaderValue::from_str(&format!("<{base}/directory>;rel=\"index\"")) {
            h.append(header::LINK, v);
        }
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The request target and header fields within `server.max_uri_bytes` and
/// `server.max_header_bytes`. hyper's own limits are twice these, so what
/// lies between gets a problem document rather than hyper's empty answer.
fn check_head(req: &Request, cfg: &Config) -> Result<(), Problem> {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > cfg.server.max_uri_bytes {
        return Err(Problem::uri_too_long(format!(
            "the request target is {target} bytes, more than {}",
            cfg.server.max_uri_bytes
        )));
    }
    // As on the wire: "name: value\r\n".
    let fields: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    if fields > cfg.server.max_header_bytes {
        return Err(Problem::header_too_large(format!(
            "the header fields are {fields} bytes, more than {}",
            cfg.server.max_header_bytes
        )));
    }
    Ok(())
}

/// `server.external_url` when set; else (only where `trust_host_header`
/// allows, which config validation guarantees) `https://` plus the request's
/// Host, so URLs match what the client used (localhost, 127.0.0.1 or
/// [::1]). A Host that is not a plausible authority falls back to the
/// configured default.
fn base_url(headers: &HeaderMap, uri: &axum::http::Uri, cfg: &Config) -> String {
    if !cfg.server.external_url.is_empty() || !cfg.server.trust_host_header {
        return cfg.default_base_url();
    }
    // HTTP/2 requests carry the host in `:authority` (the URI), not `Host`.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .filter(|h| !h.is_empty() && h.parse::<axum::http::uri::Authority>().is_ok());
    match host {
        Some(h) => format!("https://{h}"),
        None => cfg.default_base_url(),
    }
}

/// A read of a resource served to anyone: a GET or HEAD as it comes, or a
/// POST-as-GET (RFC 8555 §6.3), verified like every POST (`kid`, nonce,
/// `url`, empty payload). Every URL Cairn puts in a `Link` header must
/// answer POST-as-GET: Caddy reads a certificate's `rel="up"` that way (and
/// retried forever on a 405), and Boulder serves the directory and its
/// issuers for both.
pub(crate) struct PublicRead;

impl FromRequest<AppState> for PublicRead {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Problem> {
        if req.method() != Method::POST {
            return Ok(PublicRead);
        }
        let (parts, body) = req.into_parts();
        let base = parts
            .extensions
            .get::<Base>()
            .ok_or_else(|| Problem::internal("no Base: the common-headers layer is missing"))?;
        state
            .verify_post(base, &parts.uri, &parts.headers, body, KeyMode::Kid)
            .await?
            .require_post_as_get()?;
        Ok(PublicRead)
    }
}

/// A verified signed POST (RFC 8555 §6.2) as a handler's last argument:
/// content type, size, JWS, key or account, signature, nonce and `url`
/// checked by [`Wfe::verify_post`] with `M`'s key mode; any failure is the
/// problem document the handler would have returned.
pub(crate) struct Signed<M: SignedBy>(pub Post, std::marker::PhantomData<M>);

/// How a [`Signed`] request identifies its key.
pub(crate) trait SignedBy: Send {
    const MODE: KeyMode;
}

/// Signed with the account's `kid` (every request but two).
pub(crate) struct Kid;
/// Signed with a `jwk` (newAccount).
pub(crate) struct Jwk;
/// Either (revokeCert: the account, or the certificate's own key).
pub(crate) struct AnyKey;

impl SignedBy for Kid {
    const MODE: KeyMode = KeyMode::Kid;
}
impl SignedBy for Jwk {
    const MODE: KeyMode = KeyMode::Jwk;
}
impl SignedBy for AnyKey {
    const MODE: KeyMode = KeyMode::Any;
}

impl<M: SignedBy> FromRequest<AppState> for Signed<M> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Problem> {
        let (parts, body) = req.into_parts();
        let base = parts
            .extensions
            .get::<Base>()
            .ok_or_else(|| Problem::internal("no Base: the common-headers layer is missing"))?;
        let post = state
            .verify_post(base, &parts.uri, &parts.headers, body, M::MODE)
            .await?;
        Ok(Signed(post, std::marker::PhantomData))
    }
}

/// How a request must identify its key (RFC 8555 §6.2).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyMode {
    /// `jwk` (newAccount, keyChange's inner JWS).
    Jwk,
    /// `kid` (everything else).
    Kid,
    /// Either (revokeCert: the account, or the certificate's key).
    Any,
}

/// A verified POST: who signed it and what it says.
pub(crate) struct Post {
    pub payload: Vec<u8>,
    pub signer: Signer,
}

pub(crate) enum Signer {
    /// A `jwk` that passed the key policy.
    Jwk(PublicKey),
    Account(Account),
}

impl Post {
    pub fn account(&self) -> Result<&Account, Problem> {
        match &self.signer {
            Signer::Account(a) => Ok(a),
            Signer::Jwk(_) => Err(Problem::malformed("this request must be signed with kid")),
        }
    }

    /// RFC 8555 §6.3: a POST-as-GET has an empty payload.
    pub fn is_post_as_get(&self) -> bool {
        self.payload.is_empty()
    }

    pub fn require_post_as_get(&self) -> Result<(), Problem> {
        if self.is_post_as_get() {
            Ok(())
        } else {
            Err(Problem::malformed(
                "this resource is read with POST-as-GET (an empty payload)",
            ))
        }
    }

    /// The payload as JSON of type `T`; unknown members are ignored.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Problem> {
        let v: serde_json::Value = serde_json::from_slice(&self.payload)
            .map_err(|e| Problem::malformed(format!("payload is not JSON: {e}")))?;
        if !v.is_object() {
            return Err(Problem::malformed("payload must be a JSON object"));
        }
        serde_json::from_value(v).map_err(|e| Problem::malformed(format!("payload: {e}")))
    }
}

impl Wfe {
    /// Authenticate a POST: content type, size, JWS shape, algorithm, key or
    /// account, signature, nonce, and the `url` header, in that order.
    pub async fn verify_post(
        &self,
        base: &Base,
        uri: &Uri,
        headers: &HeaderMap,
        body: Body,
        mode: KeyMode,
    ) -> Result<Post, Problem> {
        check_content_type(headers)?;
        let bytes = self.read_body(headers, body).await?;
        let jws = jws::parse(&bytes)?;
        let nonce = jws
            .header_str("nonce")?
            .ok_or_else(|| Problem::bad_nonce("JWS has no anti-replay nonce"))?
            .to_string();
        let url = jws
            .header_str("url")?
            .ok_or_else(|| Problem::malformed("JWS header has no \"url\""))?
            .to_string();
        let signer = match (jws.header.get("jwk"), jws.header.get("kid"), mode) {
            (Some(_), Some(_), _) => {
                return Err(Problem::malformed(
                    "JWS header must not carry both \"jwk\" and \"kid\"",
                ))
            }
            (Some(v), None, KeyMode::Jwk | KeyMode::Any) => {
                let key = jws::parse_jwk(v)?;
                jws::verify(&jws, &key)?;
                self.nonces.redeem(&nonce).await?;
                Signer::Jwk(key)
            }
            (None, Some(_), KeyMode::Kid | KeyMode::Any) => {
                let kid = jws.header_str("kid")?.unwrap_or_default();
                let id = parse_kid(base, kid)?;
                // One round trip reads the account and spends the nonce
                // (checked here first: a forged or stale one costs no I/O).
                let spend = match self.nonces.check(&nonce)? {
                    nonce::Checked::Spent => None,
                    nonce::Checked::ToSpend(body, expires) => Some((body, expires)),
                };
                let (acct, fresh) = self.ra.account_for_kid(id, spend).await?;
                crate::request::set_account(acct.id.0);
                self.verifiers.get_or_build(&acct)?.verify(&jws)?;
                if !fresh {
                    return Err(nonce::used_nonce());
                }
                crate::metrics::nonce("redeemed");
                Signer::Account(acct)
            }
            (None, None, KeyMode::Any) => {
                return Err(Problem::malformed(
                    "JWS header must carry \"jwk\" or \"kid\"",
                ))
            }
            (_, _, KeyMode::Jwk) => {
                return Err(Problem::malformed(
                    "this request must be signed with \"jwk\", not \"kid\"",
                ))
            }
            (_, _, KeyMode::Kid) => {
                return Err(Problem::malformed(
                    "this request must be signed with \"kid\", not \"jwk\"",
                ))
            }
        };
        check_url(base, uri, &url)?;
        let payload = jws.payload()?;
        if self.cfg.acme.strict {
            refuse_v1_resource(&payload)?;
        }
        Ok(Post { payload, signer })
    }
}

/// `acme.strict` (Pebble's `-strict`): a payload carrying ACME v1's
/// non-empty `resource` field is refused.
fn refuse_v1_resource(payload: &[u8]) -> Result<(), Problem> {
    #[derive(serde::Deserialize)]
    struct V1 {
        resource: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<V1>(payload) {
        Ok(V1 {
            resource: Some(serde_json::Value::String(r)),
        }) if !r.is_empty() => Err(Problem::malformed(format!(
            "JWS payload carries ACME v1's \"resource\" field ({r:?}); ACME (RFC 8555) has none"
        ))),
        _ => Ok(()),
    }
}

impl Wfe {
    /// The request body, up to `server.max_body_bytes`. A larger
    /// `Content-Length` is refused from the header alone; the bytes it may
    /// take are reserved from the body budget before any is read.
    async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<bytes::Bytes, Problem> {
        let max = self.cfg.server.max_body_bytes;
        let too_large = || Problem::too_large(format!("request body is larger than {max} bytes"));
        let declared = match headers.get(header::CONTENT_LENGTH) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| Problem::malformed("Content-Length is not a number"))?,
            ),
        };
        if declared.is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        let limit = declared.map_or(max, |n| n as usize);
        let _reserved = self.bodies.reserve(limit).ok_or_else(|| {
            Problem::unavailable("too many request bodies in progress; retry shortly")
        })?;
        axum::body::to_bytes(body, limit).await.map_err(|e| {
            if caused_by::<crate::listener::BodyTimeout>(&e) {
                Problem::request_timeout(e.to_string())
            } else if caused_by::<http_body_util::LengthLimitError>(&e) {
                too_large()
            } else {
                Problem::malformed(format!("reading the request body: {e}"))
            }
        })
    }
}

/// Whether `e` or an error in its source chain is a `T`.
fn caused_by<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<T>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// RFC 8555 §6.2: POSTs carry `application/jose+json`.
fn check_content_type(headers: &HeaderMap) -> Result<(), Problem> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/jose+json") {
        Ok(())
    } else {
        Err(Problem::unsupported_media_type(format!(
            "Content-Type must be application/jose+json, not {ct:?}"
        )))
    }
}

/// RFC 8555 §6.4: the `url` header must be the URL the request was sent
/// to, so a JWS cannot be replayed at another endpoint.
fn check_url(base: &Base, uri: &Uri, url: &str) -> Result<(), Problem> {
    let expected = base.url(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    if url == expected {
        Ok(())
    } else {
        Err(Problem::unauthorized(format!(
            "JWS header \"url\" is {url:?} but the request was sent to {expected:?}"
        )))
    }
}

fn parse_kid(base: &Base, kid: &str) -> Result<AccountId, Problem> {
    let prefix = base.url("/acme/acct/");
    kid.strip_prefix(&prefix)
        .and_then(|id| id.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .map(AccountId)
        .ok_or_else(|| {
            Problem::account_does_not_exist(format!(
                "kid {kid:?} is not an account URL of this server"
            ))
        })
}

/// Parse a numeric path id; anything else is a resource that does not exist.
pub(crate) fn path_id(s: &str) -> Result<i64, Problem> {
    s.parse::<i64>()
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| Problem::not_found("no such resource"))
}

pub(crate) fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// A JSON response with optional extra headers.
pub(crate) fn json_response(
    status: StatusCode,
    body: &impl serde::Serialize,
    headers: Vec<(header::HeaderName, String)>,
) -> Response {
    let mut resp = (status, serde_json::to_vec(body).unwrap_or_default()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.append(name, v);
        }
    }
    resp
}
