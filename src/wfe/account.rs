//! newAccount, the account resource (read, update, deactivate), its orders
//! list, and keyChange (RFC 8555 §7.3).

use super::{json_response, jws, path_id, AppState, Base, ClientAddr, Jwk, Kid, Signed, Signer};
use crate::core::{Account, OrderId};
use crate::problem::{Path, Problem, Query};
use crate::wire::{self, AccountUpdate, NewAccountRequest};
use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::Response;
use axum::Extension;
use serde_json::Value;

fn account_json<'a>(base: &Base, a: &'a Account) -> wire::Account<'a> {
    wire::Account {
        status: a.status,
        contact: &a.contact,
        orders: base.url(&format!("/acme/acct/{}/orders", a.id)),
        key: serde_json::from_str(&a.jwk).unwrap_or(Value::Null),
        created_at: super::rfc3339(a.created_at),
    }
}

fn account_headers(s: &AppState, base: &Base, a: &Account) -> Vec<(header::HeaderName, String)> {
    let mut h = vec![(header::LOCATION, base.url(&format!("/acme/acct/{}", a.id)))];
    if let Some(tos) = base.terms_url(&s.cfg) {
        h.push((header::LINK, format!("<{tos}>;rel=\"terms-of-service\"")));
    }
    h
}

pub async fn new_account(
    State(s): State<AppState>,
    Extension(base): Extension<Base>,
    ClientAddr(client): ClientAddr,
    uri: Uri,
    Signed(post, _): Signed<Jwk>,
) -> Result<Response, Problem> {
    let mut req: NewAccountRequest = post.json()?;
    let Signer::Jwk(key) = &post.signer else {
        return Err(Problem::malformed("newAccount must be signed with \"jwk\""));
    };
    let binding = req
        .external_account_binding
        .take()
        .map(|b| jws::parse_binding(b, &base.url(uri.path()), key))
        .transpose()?;
    let (acct, created, limits) = s.ra.new_account(key, req, binding, client).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    if created {
        tracing::info!(account = acct.id.0, "account created");
    }
    let mut resp = json_response(
        status,
        &account_json(&base, &acct),
        account_headers(&s, &base, &acct),
    );
    if let Some(info) = limits {
        super::rates::apply(&info, resp.headers_mut());
    }
    Ok(resp)
}

/// POST-as-GET reads the account; a payload updates contacts or deactivates.
pub async fn account(
    State(s): State<AppState>,
    Extension(base): Extension<Base>,
    Path(id): Path<String>,
    Signed(post, _): Signed<Kid>,
) -> Result<Response, Problem> {
    let id = path_id(&id)?;
    let acct = post.account()?;
    if acct.id.0 != id {
        return Err(Problem::unauthorized(
            "the request's kid is not this account",
        ));
    }
    let acct = if post.is_post_as_get() {
        acct.clone()
    } else {
        let upd: AccountUpdate = post.json()?;
        s.ra.update_account(acct, upd).await?
    };
    Ok(json_response(
        StatusCode::OK,
        &account_json(&base, &acct),
        account_headers(&s, &base, &acct),
    ))
}

#[derive(serde::Deserialize)]
pub struct Cursor {
    cursor: Option<String>,
}

/// RFC 8555 §7.1.2.1: the account's orders, paginated with `Link: rel="next"`.
pub async fn orders(
    State(s): State<AppState>,
    Extension(base): Extension<Base>,
    Path(id): Path<String>,
    Query(q): Query<Cursor>,
    Signed(post, _): Signed<Kid>,
) -> Result<Response, Problem> {
    let id = path_id(&id)?;
    post.require_post_as_get()?;
    let acct = post.account()?;
    if acct.id.0 != id {
        return Err(Problem::unauthorized(
            "the request's kid is not this account",
        ));
    }
    let after = match q.cursor.as_deref() {
        None => None,
        Some(c) => {
            Some(OrderId(c.parse::<i64>().map_err(|_| {
                Problem::malformed("cursor must be an order id")
            })?))
        }
    };
    let (ids, next) = s.ra.account_orders(acct, after).await?;
    let list = wire::OrderList {
        orders: ids
            .iter()
            .map(|o| base.url(&format!("/acme/order/{o}")))
            .collect(),
    };
    let mut h = vec![];
    if let Some(n) = next {
        h.push((
            header::LINK,
            format!(
                "<{}>;rel=\"next\"",
                base.url(&format!("/acme/acct/{}/orders?cursor={n}", acct.id))
            ),
        ));
    }
    Ok(json_response(StatusCode::OK, &list, h))
}

/// RFC 8555 §7.3.5: the payload is a JWS signed by the new key (`jwk`, no
/// nonce, same `url`) over `{account, oldKey}`.
pub async fn key_change(
    State(s): State<AppState>,
    Extension(base): Extension<Base>,
    uri: Uri,
    Signed(post, _): Signed<Kid>,
) -> Result<Response, Problem> {
    let acct = post.account()?;
    let (new_key, payload) = jws::parse_key_change(&post.payload, &base.url(uri.path()))?;
    if payload.account != base.url(&format!("/acme/acct/{}", acct.id)) {
        return Err(Problem::malformed(
            "keyChange inner payload \"account\" is not the signer's account",
        ));
    }
    let old_key = payload.old_key;
    match s.ra.change_key(acct, &old_key, &new_key).await {
        Ok(a) => Ok(json_response(
            StatusCode::OK,
            &account_json(&base, &a),
            account_headers(&s, &base, &a),
        )),
        Err(mut p) => {
            if let Some(id) = p.location.take() {
                p.location = Some(base.url(&format!("/acme/acct/{id}")));
            }
            Err(p)
        }
    }
}
