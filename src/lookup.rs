//! `GET /status` on the management listener: "what was issued for my
//! domain, which limit am I at, when may I retry". A small server-rendered
//! page (a form, no script) over `Ra::status`: enter a registered domain, an
//! account id, and optionally the names of a planned order.
//!
//! Everything shown comes from the code that decides: certificates from the
//! store, buckets read by the limiter with the same arithmetic that admits
//! or refuses (nothing is spent), the renewal rule of newOrder, and the
//! pauses. Times are exact to the second, in UTC.

use crate::core::AccountId;
use crate::ra::status::{StatusQuery, StatusReport};
use crate::ra::Ra;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::fmt::Write as _;
use std::sync::Arc;

pub fn router(ra: Arc<Ra>) -> Router {
    Router::new().route("/status", get(status)).with_state(ra)
}

#[derive(serde::Deserialize, Default)]
struct Params {
    #[serde(default)]
    domain: String,
    #[serde(default)]
    account: String,
    #[serde(default)]
    names: String,
}

async fn status(
    State(ra): State<Arc<Ra>>,
    query: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let p = query.map(|Query(p)| p).unwrap_or_default();
    let (report, error) = match parse(&p) {
        Err(e) => (None, Some(e)),
        Ok(q) if q.domain.is_none() && q.account.is_none() && q.names.is_empty() => (None, None),
        Ok(q) => match ra.status(&q).await {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(e.detail)),
        },
    };
    let html = render(&p, report.as_ref(), error.as_deref());
    let code = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    (
        code,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

fn parse(p: &Params) -> Result<StatusQuery, String> {
    let domain =
        Some(p.domain.trim().trim_end_matches('.').to_ascii_lowercase()).filter(|d| !d.is_empty());
    let account = match p.account.trim() {
        "" => None,
        a => {
            let id = a.rsplit('/').next().unwrap_or(a);
            Some(AccountId(
                id.parse::<i64>().ok().filter(|i| *i > 0).ok_or_else(|| {
                    format!("account {a:?} is neither an account id nor an account URL")
                })?,
            ))
        }
    };
    let names: Vec<String> = p
        .names
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|n| !n.is_empty())
        .map(|n| n.to_ascii_lowercase())
        .collect();
    Ok(StatusQuery {
        domain,
        account,
        names,
    })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Unix seconds in the page's form, the one rate-limit details use.
fn utc(unix: i64) -> String {
    crate::ratelimit::format_utc(unix.saturating_mul(1_000_000_000))
}

fn render(p: &Params, r: Option<&StatusReport>, error: Option<&str>) -> String {
    let mut h = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Cairn: issued certificates and rate limits</title>\n<style>\
         body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}\
         table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;padding:.3em .5em;\
         text-align:left}th{background:#f4f4f4}.revoked{color:#a00}.error{color:#a00}\
         label{display:block;margin:.4em 0}input{width:24em}code{background:#f4f4f4}\
         </style></head><body>\n<h1>Issued certificates and rate limits</h1>\n",
    );
    let _ = write!(
        h,
        "<form method=\"get\" action=\"/status\">\n\
         <label>Registered domain <input name=\"domain\" value=\"{}\" placeholder=\"example.com\"></label>\n\
         <label>Account id <input name=\"account\" value=\"{}\" placeholder=\"42\"></label>\n\
         <label>Names of a planned order <input name=\"names\" value=\"{}\" \
         placeholder=\"example.com, www.example.com\"></label>\n\
         <button type=\"submit\">Look up</button>\n</form>\n",
        esc(&p.domain),
        esc(&p.account),
        esc(&p.names)
    );
    if let Some(e) = error {
        let _ = writeln!(h, "<p class=\"error\" id=\"error\">{}</p>", esc(e));
    }
    if let Some(r) = r {
        let _ = writeln!(h, "<p id=\"now\">As of {}.</p>", utc(r.now));
        if let Some(d) = &r.registered_domain {
            let _ = writeln!(
                h,
                "<p>Registered domain: <strong id=\"registered\">{}</strong></p>",
                esc(d)
            );
        }
        h.push_str("<h2>Rate limits</h2>\n");
        if r.buckets.is_empty() {
            h.push_str("<p>No limit applies to what you entered (or the limits are off).</p>\n");
        } else {
            h.push_str(
                "<table id=\"limits\"><tr><th>limit</th><th>key</th><th>left</th>\
                 <th>next token</th><th>full again</th></tr>\n",
            );
            for b in &r.buckets {
                let next = match b.next_in_secs {
                    None => "now (full)".to_string(),
                    Some(s) => format!("in {s} s, at {}", utc(r.now + s as i64)),
                };
                let _ = writeln!(
                    h,
                    "<tr data-limit=\"{lim}\"><td><a href=\"/docs/rate-limits#{anchor}\">{lim}</a></td>\
                     <td>{key}</td><td class=\"left\">{left} of {burst}</td><td>{next}</td>\
                     <td>in {full} s, at {full_at}</td></tr>",
                    lim = b.limit.as_str(),
                    anchor = b.limit.doc_anchor(),
                    key = esc(&b.key),
                    left = b.remaining,
                    burst = b.burst,
                    full = b.full_in_secs,
                    full_at = utc(r.now + b.full_in_secs as i64),
                );
            }
            h.push_str("</table>\n");
        }
        if let Some(renewal) = r.renewal {
            let _ = writeln!(
                h,
                "<p id=\"renewal\">An order for exactly <code>{}</code> {}.</p>",
                esc(&r.names.join(", ")),
                if renewal {
                    "would be a <strong>renewal</strong>: certificatesPerDomain and \
                     newOrdersPerAccount do not count it"
                } else {
                    "would be a <strong>new issuance</strong>, not a renewal: every limit counts it"
                }
            );
        }
        if !r.paused.is_empty() {
            h.push_str("<h2>Paused identifiers</h2>\n<ul id=\"paused\">\n");
            for ident in &r.paused {
                let _ = writeln!(h, "<li><code>{}</code></li>", esc(ident));
            }
            let account = p.account.trim();
            let _ = write!(
                h,
                "</ul>\n<p>Fix the validation setup, then ask the CA's operator to run \
                 <code>cairn admin unpause --account {}</code>.</p>\n",
                esc(account.rsplit('/').next().unwrap_or(account))
            );
        }
        let _ = writeln!(h, "<h2>Certificates ({})</h2>", r.certificates.len());
        if !r.certificates.is_empty() {
            h.push_str(
                "<table id=\"certificates\"><tr><th>names</th><th>serial</th><th>issued</th>\
                 <th>expires</th><th>status</th></tr>\n",
            );
            for c in &r.certificates {
                let status = match c.revoked_at {
                    Some(at) => format!("<span class=\"revoked\">revoked {}</span>", utc(at)),
                    None if c.not_after <= r.now => "expired".to_string(),
                    None => "valid".to_string(),
                };
                let _ = writeln!(h, "<tr><td>{}</td><td class=\"serial\"><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&c.names.join(", ")),
                    esc(&c.serial),
                    utc(c.issued_at),
                    utc(c.not_after),
                    status
                );
            }
            h.push_str("</table>\n");
        }
    }
    h.push_str("</body></html>\n");
    h
}
