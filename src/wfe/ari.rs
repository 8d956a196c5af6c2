//! renewalInfo (RFC 9773 §4): an unauthenticated GET, one indexed lookup.

use super::{json_response, AppState};
use crate::problem::{Path, Problem};
use crate::wire;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::Response;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub async fn renewal_info(
    State(s): State<AppState>,
    Path(cert_id): Path<String>,
) -> Result<Response, Problem> {
    let info = s.ra.renewal_info(&cert_id).await?;
    let body = wire::RenewalInfo {
        suggested_window: wire::SuggestedWindow {
            start: rfc3339(info.start)?,
            end: rfc3339(info.end)?,
        },
        explanation_url: info.explanation_url.as_deref(),
    };
    Ok(json_response(
        StatusCode::OK,
        &body,
        vec![(header::RETRY_AFTER, info.retry_after.to_string())],
    ))
}

fn rfc3339(t: i64) -> Result<String, Problem> {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .ok_or_else(|| Problem::internal(format!("time {t} out of range")))
}
