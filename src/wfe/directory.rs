//! The directory, newNonce and the issuer certificate.

use super::{json_response, AppState, Base, PublicRead};
use axum::extract::State;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::json;

/// RFC 8555 §7.1.1. All URLs absolute, built from the request's Host.
pub async fn directory(
    State(s): State<AppState>,
    Extension(base): Extension<Base>,
    _: PublicRead,
) -> Response {
    let a = &s.cfg.acme;
    let mut meta = json!({
        "caaIdentities": a.caa_identities,
        "externalAccountRequired": a.external_account_required,
        "profiles": s.cfg.profiles.iter().map(|(n, p)| (n.clone(), json!(p.description))).collect::<serde_json::Map<_, _>>(),
    });
    if let Some(tos) = base.terms_url(&s.cfg) {
        meta["termsOfService"] = json!(tos);
    }
    if !a.website.is_empty() {
        meta["website"] = json!(a.website);
    }
    let body = json!({
        "newNonce": base.url("/acme/new-nonce"),
        "newAccount": base.url("/acme/new-acct"),
        "newOrder": base.url("/acme/new-order"),
        "keyChange": base.url("/acme/key-change"),
        "revokeCert": base.url("/acme/revoke-cert"),
        "renewalInfo": base.url("/acme/renewal-info"),
        "meta": meta,
    });
    json_response(StatusCode::OK, &body, vec![])
}

/// RFC 8555 §7.2: HEAD answers 200, GET 204; the nonce itself is added by
/// the common-headers layer.
pub async fn new_nonce(method: Method) -> Response {
    if method == Method::HEAD {
        StatusCode::OK.into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    }
}

/// The intermediate, the `rel="up"` target of certificates.
pub async fn issuer(State(s): State<AppState>, _: PublicRead) -> Response {
    (
        [(header::CONTENT_TYPE, "application/pem-certificate-chain")],
        s.ra.ca().intermediate_pem().to_string(),
    )
        .into_response()
}
