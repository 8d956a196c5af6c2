//! The directory, newNonce and the issuer certificate.

use super::{json_response, AppState, Base, PublicRead};
use crate::wire;
use axum::extract::State;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;

/// RFC 8555 §7.1.1. All URLs absolute, built from the request's Host.
pub async fn directory(
    State(s): State<AppState>,
    Extension(base): Extension<Base>,
    _: PublicRead,
) -> Response {
    let a = &s.cfg.acme;
    let body = wire::Directory {
        new_nonce: base.url("/acme/new-nonce"),
        new_account: base.url("/acme/new-acct"),
        new_order: base.url("/acme/new-order"),
        key_change: base.url("/acme/key-change"),
        revoke_cert: base.url("/acme/revoke-cert"),
        renewal_info: base.url("/acme/renewal-info"),
        meta: wire::DirectoryMeta {
            terms_of_service: base.terms_url(&s.cfg),
            website: (!a.website.is_empty()).then_some(a.website.as_str()),
            caa_identities: &a.caa_identities,
            external_account_required: a.external_account_required,
            profiles: s
                .cfg
                .profiles
                .iter()
                .map(|(n, p)| (n.as_str(), p.description.as_str()))
                .collect(),
        },
    };
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
