//! newOrder, orders, finalize, authorizations, challenges and certificate
//! download (RFC 8555 §7.4, §7.5).

use super::{json_response, path_id, rfc3339, AnyKey, AppState, Base, Kid, Signed, Signer};
use crate::core::{
    Authz, AuthzId, AuthzStatus, Challenge, ChallengeId, ChallengeStatus, ChallengeType,
    Identifier, Order, OrderId, OrderStatus,
};
use crate::problem::{Path, Problem};
use crate::ra::RevokeBy;
use crate::wire::{
    self, AuthzUpdate, ChallengeResponse, FinalizeRequest, NewOrderRequest, RevokeRequest,
};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde_json::Value;

fn order_json<'a>(s: &'a AppState, base: &Base, o: &'a Order) -> wire::Order<'a> {
    let status = if held_processing(s, o) {
        OrderStatus::Processing
    } else {
        o.status
    };
    wire::Order {
        status,
        expires: rfc3339(o.expires),
        identifiers: &o.identifiers,
        authorizations: o
            .authz_ids
            .iter()
            .map(|a| base.url(&format!("/acme/authz/{a}")))
            .collect(),
        finalize: base.url(&format!("/acme/finalize/{}", o.id)),
        // Orders from before profiles have the default one.
        profile: if o.profile.is_empty() {
            &s.cfg.acme.default_profile
        } else {
            &o.profile
        },
        certificate: match (status, &o.cert_serial) {
            (OrderStatus::Valid, Some(serial)) => Some(base.url(&format!("/acme/cert/{serial}"))),
            _ => None,
        },
        error: o.error.as_ref(),
        replaces: o
            .replaces
            .as_deref()
            .map(|serial| s.ra.serial_cert_id(serial)),
    }
}

/// An issued order a `processing` fault (`crate::faults`) still shows as
/// processing, as Let's Encrypt's asynchronous finalize does.
fn held_processing(s: &AppState, o: &Order) -> bool {
    o.status == OrderStatus::Valid && s.faults.held_until(o.id.0).is_some()
}

fn order_response(s: &AppState, base: &Base, o: &Order, status: StatusCode) -> Response {
    let body = order_json(s, base, o);
    let mut h = vec![(header::LOCATION, base.url(&format!("/acme/order/{}", o.id)))];
    // Processing as rendered: stored, or held so by a `processing` fault.
    if body.status == OrderStatus::Processing {
        h.push((header::RETRY_AFTER, s.cfg.acme.retry_after_secs.to_string()));
    }
    json_response(status, &body, h)
}

fn challenge_json<'a>(s: &'a AppState, base: &Base, c: &'a Challenge) -> wire::Challenge<'a> {
    wire::Challenge {
        kind: c.kind,
        url: base.url(&format!("/acme/chall/{}", c.id)),
        status: c.status,
        // The draft's dns-persist-01 object has no token; this one carries
        // an unused random one, because clients that read every challenge
        // of an authorization fail on one without (Ruby's acme-client
        // 2.0.9 raises KeyError), and clients of the draft ignore it.
        token: &c.token,
        issuer_domain_names: (c.kind == ChallengeType::DnsPersist01)
            .then_some(s.cfg.va.dns_persist_issuer_domains.as_slice()),
        validated: c.validated.map(rfc3339),
        error: c.error.as_ref(),
        validation_record: c
            .records
            .as_deref()
            .and_then(|r| serde_json::from_str::<Value>(r).ok()),
    }
}

fn authz_json<'a>(s: &'a AppState, base: &Base, a: &'a Authz) -> wire::Authorization<'a> {
    wire::Authorization {
        identifier: Identifier::of(a.identifier_type, a.identifier.as_str()),
        status: a.status,
        expires: rfc3339(a.expires),
        challenges: a
            .challenges
            .iter()
            .map(|c| challenge_json(s, base, c))
            .collect(),
        wildcard: a.wildcard,
    }
}

pub async fn new_order(
    State(s): State<AppState>,
    Extension(base): Extension<Base>,
    Signed(post, _): Signed<Kid>,
) -> Result<Response, Problem> {
    let req: NewOrderRequest = post.json()?;
    let (order, _, limits) = s.ra.new_order(post.account()?, req).await?;
    let mut resp = order_response(&s, &base, &order, StatusCode::CREATED);
    if let Some(info) = limits {
        super::rates::apply(&info, resp.headers_mut());
    }
    Ok(resp)
}

pub async fn order(
    State(s): State<AppState>,
    Extension(base): Extension<Base>,
    Path(id): Path<String>,
    Signed(post, _): Signed<Kid>,
) -> Result<Response, Problem> {
    let id = OrderId(path_id(&id)?);
    post.require_post_as_get()?;
    let order = s.ra.order(post.account()?, id).await?;
    Ok(order_response(&s, &base, &order, StatusCode::OK))
}

pub async fn finalize(
    State(s): State<AppState>,
    Extension(base): Extension<Base>,
    Path(id): Path<String>,
    Signed(post, _): Signed<Kid>,
) -> Result<Response, Problem> {
    let id = OrderId(path_id(&id)?);
    let f: FinalizeRequest = post.json()?;
    let der = B64
        .decode(f.csr.trim_end_matches('=').as_bytes())
        .map_err(|_| Problem::bad_csr("csr is not base64url-encoded DER"))?;
    let order = s.ra.finalize(post.account()?, id, &der).await?;
    Ok(order_response(&s, &base, &order, StatusCode::OK))
}

/// POST-as-GET reads; `{"status":"deactivated"}` deactivates (§7.5.2).
pub async fn authz(
    State(s): State<AppState>,
    Extension(base): Extension<Base>,
    Path(id): Path<String>,
    Signed(post, _): Signed<Kid>,
) -> Result<Response, Problem> {
    let id = AuthzId(path_id(&id)?);
    let acct = post.account()?;
    let a = if post.is_post_as_get() {
        s.ra.authz(acct, id).await?
    } else {
        let u: AuthzUpdate = post.json()?;
        if u.status.as_deref() != Some("deactivated") {
            return Err(Problem::malformed(
                "an authorization can only be updated with {\"status\": \"deactivated\"}",
            ));
        }
        s.ra.deactivate_authz(acct, id).await?
    };
    let mut h = vec![];
    if a.status == AuthzStatus::Pending {
        h.push((header::RETRY_AFTER, s.cfg.acme.retry_after_secs.to_string()));
    }
    Ok(json_response(StatusCode::OK, &authz_json(&s, &base, &a), h))
}

/// POST-as-GET reads; a JSON object (`{}`) asks for validation (§7.5.1).
pub async fn challenge(
    State(s): State<AppState>,
    Extension(base): Extension<Base>,
    Path(id): Path<String>,
    Signed(post, _): Signed<Kid>,
) -> Result<Response, Problem> {
    let id = ChallengeId(path_id(&id)?);
    let acct = post.account()?;
    let (c, a) = if post.is_post_as_get() {
        s.ra.challenge(acct, id).await?
    } else {
        // RFC 8555 §7.5.1: the body is `{}`; `acme.strict` (Pebble's
        // -strict) refuses anything else.
        if s.cfg.acme.strict && post.payload != b"{}" {
            return Err(Problem::malformed(
                "challenge initiation POST JWS body was not \"{}\"",
            ));
        }
        let _: ChallengeResponse = post.json()?;
        s.ra.respond_challenge(acct, id).await?
    };
    let mut h = vec![(
        header::LINK,
        format!(
            "<{}>;rel=\"up\"",
            base.url(&format!("/acme/authz/{}", a.id))
        ),
    )];
    if matches!(
        c.status,
        ChallengeStatus::Pending | ChallengeStatus::Processing
    ) {
        h.push((header::RETRY_AFTER, s.cfg.acme.retry_after_secs.to_string()));
    }
    Ok(json_response(
        StatusCode::OK,
        &challenge_json(&s, &base, &c),
        h,
    ))
}

/// RFC 8555 §7.4.2: the chain as PEM, leaf first.
pub async fn certificate(
    State(s): State<AppState>,
    Extension(base): Extension<Base>,
    Path(serial): Path<String>,
    Signed(post, _): Signed<Kid>,
) -> Result<Response, Problem> {
    if serial.len() > 64 || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Problem::not_found("no such certificate"));
    }
    post.require_post_as_get()?;
    let cert =
        s.ra.certificate(post.account()?, &serial.to_ascii_lowercase())
            .await?;
    let mut resp = cert.chain_pem.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/pem-certificate-chain"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("<{}>;rel=\"up\"", base.url("/acme/issuer/0"))) {
        h.append(header::LINK, v);
    }
    Ok(resp)
}

/// revokeCert (RFC 8555 §7.6): signed by an account (`kid`) or by the
/// certificate's key (`jwk`); 200 with an empty body.
pub async fn revoke(
    State(s): State<AppState>,
    Signed(post, _): Signed<AnyKey>,
) -> Result<Response, Problem> {
    let r: RevokeRequest = post.json()?;
    let der = B64
        .decode(r.certificate.trim_end_matches('=').as_bytes())
        .map_err(|_| Problem::malformed("\"certificate\" is not base64url-encoded DER"))?;
    let by = match &post.signer {
        Signer::Account(a) => RevokeBy::Account(a),
        Signer::Jwk(key) => RevokeBy::Key(key),
    };
    s.ra.revoke(by, &der, r.reason).await?;
    Ok(StatusCode::OK.into_response())
}
