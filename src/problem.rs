//! The one error type: ACME problem documents (RFC 7807 + RFC 8555 §6.7).
//!
//! Every failure a client can cause is a `Problem` built by one constructor per
//! ACME error type, so a handler cannot pair the wrong type and HTTP status.
//! Internal errors are logged with an id and answered as `serverInternal`
//! without leaking details.

use crate::core::Identifier;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The ACME error namespace (RFC 8555 §6.7).
const ACME_ERROR_NS: &str = "urn:ietf:params:acme:error:";

/// The ACME error types Cairn answers with (RFC 8555 §6.7, RFC 8555's
/// registry and RFC 9773 `alreadyReplaced`). Each has one usual HTTP status;
/// a few named constructors (404, 405, 413, 414, 415, 431, 408, 503) give
/// `malformed` or `serverInternal` another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Malformed,
    BadNonce,
    Unauthorized,
    AccountDoesNotExist,
    BadCsr,
    BadPublicKey,
    BadSignatureAlgorithm,
    RejectedIdentifier,
    UnsupportedIdentifier,
    RateLimited,
    OrderNotReady,
    AlreadyRevoked,
    AlreadyReplaced,
    BadRevocationReason,
    InvalidContact,
    UnsupportedContact,
    UserActionRequired,
    ExternalAccountRequired,
    InvalidProfile,
    Conflict,
    Connection,
    Dns,
    IncorrectResponse,
    Tls,
    Caa,
    Compound,
    ServerInternal,
}

impl Kind {
    pub const ALL: [Kind; 27] = [
        Kind::Malformed,
        Kind::BadNonce,
        Kind::Unauthorized,
        Kind::AccountDoesNotExist,
        Kind::BadCsr,
        Kind::BadPublicKey,
        Kind::BadSignatureAlgorithm,
        Kind::RejectedIdentifier,
        Kind::UnsupportedIdentifier,
        Kind::RateLimited,
        Kind::OrderNotReady,
        Kind::AlreadyRevoked,
        Kind::AlreadyReplaced,
        Kind::BadRevocationReason,
        Kind::InvalidContact,
        Kind::UnsupportedContact,
        Kind::UserActionRequired,
        Kind::ExternalAccountRequired,
        Kind::InvalidProfile,
        Kind::Conflict,
        Kind::Connection,
        Kind::Dns,
        Kind::IncorrectResponse,
        Kind::Tls,
        Kind::Caa,
        Kind::Compound,
        Kind::ServerInternal,
    ];

    /// The short name, e.g. `badNonce`.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Malformed => "malformed",
            Kind::BadNonce => "badNonce",
            Kind::Unauthorized => "unauthorized",
            Kind::AccountDoesNotExist => "accountDoesNotExist",
            Kind::BadCsr => "badCSR",
            Kind::BadPublicKey => "badPublicKey",
            Kind::BadSignatureAlgorithm => "badSignatureAlgorithm",
            Kind::RejectedIdentifier => "rejectedIdentifier",
            Kind::UnsupportedIdentifier => "unsupportedIdentifier",
            Kind::RateLimited => "rateLimited",
            Kind::OrderNotReady => "orderNotReady",
            Kind::AlreadyRevoked => "alreadyRevoked",
            Kind::AlreadyReplaced => "alreadyReplaced",
            Kind::BadRevocationReason => "badRevocationReason",
            Kind::InvalidContact => "invalidContact",
            Kind::UnsupportedContact => "unsupportedContact",
            Kind::UserActionRequired => "userActionRequired",
            Kind::ExternalAccountRequired => "externalAccountRequired",
            Kind::InvalidProfile => "invalidProfile",
            Kind::Conflict => "conflict",
            Kind::Connection => "connection",
            Kind::Dns => "dns",
            Kind::IncorrectResponse => "incorrectResponse",
            Kind::Tls => "tls",
            Kind::Caa => "caa",
            Kind::Compound => "compound",
            Kind::ServerInternal => "serverInternal",
        }
    }

    /// The usual HTTP status of this type.
    pub const fn status(self) -> u16 {
        match self {
            Kind::Malformed
            | Kind::BadNonce
            | Kind::AccountDoesNotExist
            | Kind::BadCsr
            | Kind::BadPublicKey
            | Kind::BadSignatureAlgorithm
            | Kind::RejectedIdentifier
            | Kind::UnsupportedIdentifier
            | Kind::AlreadyRevoked
            | Kind::BadRevocationReason
            | Kind::InvalidContact
            | Kind::UnsupportedContact
            | Kind::Connection
            | Kind::Dns
            | Kind::Tls => 400,
            Kind::Unauthorized
            | Kind::OrderNotReady
            | Kind::UserActionRequired
            | Kind::IncorrectResponse
            | Kind::Caa
            | Kind::Compound => 403,
            Kind::RateLimited => 429,
            Kind::AlreadyReplaced | Kind::Conflict => 409,
            Kind::ExternalAccountRequired => 401,
            Kind::InvalidProfile => 400,
            Kind::ServerInternal => 500,
        }
    }

    /// `urn:ietf:params:acme:error:<name>`.
    pub fn urn(self) -> String {
        format!("{ACME_ERROR_NS}{}", self.name())
    }

    /// From the full URN or the short name.
    pub fn parse(s: &str) -> Option<Kind> {
        let name = s.strip_prefix(ACME_ERROR_NS).unwrap_or(s);
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.urn())
    }
}

impl<'de> serde::Deserialize<'de> for Kind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Kind, D::Error> {
        let s = String::deserialize(d)?;
        Kind::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown ACME error type {s:?}")))
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A per-identifier sub-error (RFC 8555 §6.7.1).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Subproblem {
    #[serde(rename = "type")]
    pub kind: Kind,
    pub detail: String,
    pub identifier: Identifier,
}

/// An ACME problem document. Construct it with the named constructors.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: Kind,
    pub detail: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subproblems: Vec<Subproblem>,
    /// RFC 8555 §6.2: `badSignatureAlgorithm` lists the accepted algorithms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithms: Option<Vec<String>>,
    /// Seconds for the `Retry-After` header; not part of the document.
    #[serde(skip)]
    pub retry_after: Option<u64>,
    /// A `Location` header to send with the problem (key-change conflict).
    #[serde(skip)]
    pub location: Option<String>,
    /// A `Link: <url>;rel="help"` header (rate limits: their documentation).
    #[serde(skip)]
    pub help: Option<String>,
    /// RFC 7807 §3.2 extension members of `rateLimited` problems, so a
    /// client need not parse the detail text.
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitMembers>,
}

/// The machine-readable part of a rate-limit problem (RFC 7807 §3.2
/// extension members): which limit, which key it counted, and the seconds
/// until a retry succeeds (the `Retry-After` header carries the same
/// number; absent when waiting does not help, e.g. a paused account).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RateLimitMembers {
    pub limit: String,
    pub key: String,
    #[serde(
        rename = "retryAfter",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_after: Option<u64>,
}

macro_rules! constructors {
    ($($fn:ident => $kind:ident;)*) => {
        $(
            #[doc = concat!("`", stringify!($kind), "`, with its usual status.")]
            pub fn $fn(detail: impl Into<String>) -> Problem {
                Problem::of(Kind::$kind, detail)
            }
        )*
    };
}

impl Problem {
    /// Only the named constructors below build problems, so a kind is never
    /// paired with a status it does not have.
    fn new(kind: Kind, status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            kind,
            detail: detail.into(),
            status: status.as_u16(),
            subproblems: Vec::new(),
            algorithms: None,
            retry_after: None,
            location: None,
            help: None,
            rate_limit: None,
        }
    }

    fn of(kind: Kind, detail: impl Into<String>) -> Problem {
        let status = StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::BAD_REQUEST);
        Problem::new(kind, status, detail)
    }

    /// The one problem that stands for a single subproblem (the order had
    /// one bad identifier): its type and detail, the type's usual status.
    pub fn from_sub(sub: &Subproblem) -> Problem {
        Problem::of(sub.kind, sub.detail.clone())
    }

    /// Point the client at documentation (`Link: rel="help"`).
    pub fn with_help(mut self, url: impl Into<String>) -> Problem {
        self.help = Some(url.into());
        self
    }

    /// A `rateLimited` problem (429) carrying the extension members `limit`,
    /// `key` and `retryAfter`, and the `Retry-After` header when
    /// `retry_after` is set.
    pub fn rate_limited_for(
        limit: impl Into<String>,
        key: impl Into<String>,
        retry_after: Option<u64>,
        detail: impl Into<String>,
    ) -> Problem {
        let mut p = Problem::rate_limited(detail);
        p.retry_after = retry_after;
        p.rate_limit = Some(RateLimitMembers {
            limit: limit.into(),
            key: key.into(),
            retry_after,
        });
        p
    }

    constructors! {
        malformed => Malformed;
        bad_nonce => BadNonce;
        unauthorized => Unauthorized;
        account_does_not_exist => AccountDoesNotExist;
        bad_csr => BadCsr;
        bad_public_key => BadPublicKey;
        rejected_identifier => RejectedIdentifier;
        unsupported_identifier => UnsupportedIdentifier;
        rate_limited => RateLimited;
        order_not_ready => OrderNotReady;
        already_revoked => AlreadyRevoked;
        already_replaced => AlreadyReplaced;
        bad_revocation_reason => BadRevocationReason;
        invalid_contact => InvalidContact;
        unsupported_contact => UnsupportedContact;
        external_account_required => ExternalAccountRequired;
        invalid_profile => InvalidProfile;
        conflict => Conflict;
        connection => Connection;
        dns => Dns;
        incorrect_response => IncorrectResponse;
        tls => Tls;
        caa => Caa;
    }

    /// `serverInternal` (500) that is not a bug to log: a state the client
    /// must start over from (an issuance interrupted by a crash).
    pub fn server_internal(detail: impl Into<String>) -> Problem {
        Problem::of(Kind::ServerInternal, detail)
    }

    /// 415: the request's Content-Type is not the one the resource takes.
    pub fn unsupported_media_type(detail: impl Into<String>) -> Problem {
        Problem::new(Kind::Malformed, StatusCode::UNSUPPORTED_MEDIA_TYPE, detail)
    }

    /// 404 with type `malformed`, as Boulder answers unknown resources. It
    /// reveals nothing about whether the resource exists for someone else.
    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(Kind::Malformed, StatusCode::NOT_FOUND, detail)
    }

    /// 405 for a method the resource does not support.
    pub fn method_not_allowed() -> Problem {
        Problem::new(
            Kind::Malformed,
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed for this resource",
        )
    }

    /// 413 for a request body above the limit.
    pub fn too_large(detail: impl Into<String>) -> Problem {
        Problem::new(Kind::Malformed, StatusCode::PAYLOAD_TOO_LARGE, detail)
    }

    /// 408: the request body did not arrive in time.
    pub fn request_timeout(detail: impl Into<String>) -> Problem {
        Problem::new(Kind::Malformed, StatusCode::REQUEST_TIMEOUT, detail)
    }

    /// 414 for a request target above `server.max_uri_bytes`.
    pub fn uri_too_long(detail: impl Into<String>) -> Problem {
        Problem::new(Kind::Malformed, StatusCode::URI_TOO_LONG, detail)
    }

    /// 431 for header fields above `server.max_header_bytes`.
    pub fn header_too_large(detail: impl Into<String>) -> Problem {
        Problem::new(
            Kind::Malformed,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            detail,
        )
    }

    /// 503 with `Retry-After`: the server is at a capacity limit (not the
    /// client's fault, not a bug); a retry shortly succeeds.
    pub fn unavailable(detail: impl Into<String>) -> Problem {
        Problem::new(
            Kind::ServerInternal,
            StatusCode::SERVICE_UNAVAILABLE,
            detail,
        )
        .with_retry_after(1)
    }

    /// RFC 8555 §6.2: the JWS algorithm is not supported; lists what is.
    pub fn bad_signature_algorithm(detail: impl Into<String>, allowed: &[&str]) -> Problem {
        let mut p = Problem::of(Kind::BadSignatureAlgorithm, detail);
        p.algorithms = Some(allowed.iter().map(|s| s.to_string()).collect());
        p
    }

    /// An internal error: logged with an id, answered without internals.
    pub fn internal(err: impl std::fmt::Display) -> Problem {
        // The request's id when there is one: the same id is on the
        // request's log line, so the detail leads an operator to both.
        let id = crate::request::id().unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
        tracing::error!(request_id = %id, "internal error: {err}");
        let mut p = Problem::new(
            Kind::ServerInternal,
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error (request id {id})"),
        );
        p.retry_after = Some(60);
        p
    }

    pub fn with_subproblems(mut self, subproblems: Vec<Subproblem>) -> Problem {
        self.subproblems = subproblems;
        self
    }

    pub fn with_retry_after(mut self, secs: u64) -> Problem {
        self.retry_after = Some(secs);
        self
    }

    /// A subproblem of this problem's type for one identifier.
    pub fn sub(&self, identifier: Identifier) -> Subproblem {
        Subproblem {
            kind: self.kind,
            detail: self.detail.clone(),
            identifier,
        }
    }

    /// The short name of the type, e.g. `badNonce`.
    pub fn short_type(&self) -> &'static str {
        self.kind.name()
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.short_type(), self.detail)
    }
}

impl std::error::Error for Problem {}

impl From<anyhow::Error> for Problem {
    fn from(e: anyhow::Error) -> Problem {
        Problem::internal(format!("{e:#}"))
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        let mut resp = (self.status_code(), body).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(loc) = self
            .location
            .as_deref()
            .and_then(|l| HeaderValue::from_str(l).ok())
        {
            h.insert(header::LOCATION, loc);
        }
        if let Some(help) = self
            .help
            .as_deref()
            .and_then(|u| HeaderValue::from_str(&format!("<{u}>;rel=\"help\"")).ok())
        {
            h.append(header::LINK, help);
        }
        resp
    }
}

pub type Result<T, E = Problem> = std::result::Result<T, E>;

/// axum's `Path`, refusing what it cannot decode (`%FF`) with a problem
/// document rather than axum's `400 text/plain`.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Problem))]
pub struct Path<T>(pub T);

/// axum's `Query`, refusing what it cannot deserialize (a repeated
/// parameter) with a problem document.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Problem))]
pub struct Query<T>(pub T);

impl From<PathRejection> for Problem {
    fn from(r: PathRejection) -> Problem {
        match r {
            // A route whose handler wants a parameter it does not have: a bug.
            PathRejection::MissingPathParams(e) => Problem::internal(e),
            r => Problem::malformed(r.body_text()),
        }
    }
}

impl From<QueryRejection> for Problem {
    fn from(r: QueryRejection) -> Problem {
        Problem::malformed(r.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_type_with_namespace_and_subproblems() {
        let p = Problem::rejected_identifier("bad names").with_subproblems(vec![
            Problem::rejected_identifier("x").sub(Identifier::dns("a..b")),
        ]);
        let v: serde_json::Value = serde_json::to_value(&p).unwrap();
        assert_eq!(v["type"], "urn:ietf:params:acme:error:rejectedIdentifier");
        assert_eq!(v["status"], 400);
        assert_eq!(v["subproblems"][0]["identifier"]["value"], "a..b");
        assert!(v.get("algorithms").is_none());
    }

    #[test]
    fn rate_limited_carries_extension_members_and_retry_after() {
        let p = Problem::rate_limited_for(
            "certificatesPerDomain",
            "example.co.uk",
            Some(1080),
            "too many certificates",
        );
        let v: serde_json::Value = serde_json::to_value(&p).unwrap();
        assert_eq!(v["type"], "urn:ietf:params:acme:error:rateLimited");
        assert_eq!(v["status"], 429);
        assert_eq!(v["limit"], "certificatesPerDomain");
        assert_eq!(v["key"], "example.co.uk");
        assert_eq!(v["retryAfter"], 1080);
        let back: Problem = serde_json::from_value(v).unwrap();
        assert_eq!(back.rate_limit, p.rate_limit);
        let resp = p.into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1080");

        // Other problems carry none of the members.
        let v = serde_json::to_value(Problem::malformed("x")).unwrap();
        assert!(v.get("limit").is_none() && v.get("retryAfter").is_none());
        let back: Problem = serde_json::from_value(v).unwrap();
        assert!(back.rate_limit.is_none());
    }

    #[test]
    fn internal_hides_details() {
        let p = Problem::internal("secret path /etc/x");
        assert!(!p.detail.contains("/etc/x"));
        assert_eq!(p.status, 500);
    }
}
