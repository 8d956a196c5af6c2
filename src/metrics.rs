//! Prometheus metrics, through the `metrics` facade: the code counts where
//! things happen (these functions), and `cairn serve` installs the exporter
//! whose text `GET /metrics` on the management listener renders. Without an
//! installed recorder (unit tests, `cairn admin`) every call is a no-op.
//!
//! Names follow Prometheus' conventions: `cairn_` prefix, the unit in the
//! name, `_total` on counters. Label values come from fixed sets (route
//! templates, challenge types, outcomes), never from client input, so the
//! number of series stays bounded.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets (seconds): loopback requests take about a millisecond,
/// a finalize with a CA signature a few, validation seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often recorded histogram values are folded into their buckets.
const UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// Install the process-wide recorder (once; a second call returns an error),
/// and its upkeep. Call from within the runtime.
///
/// The recorder keeps every histogram value recorded (about 36 per
/// issuance: request and store-call durations) until something folds them
/// into the buckets: a scrape, or `run_upkeep`, which `install_recorder`
/// leaves to its caller. Unscraped, the server's memory grew by about
/// 0.3 MB a second under load (BENCHMARKS.md, "History").
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    describe_counter!(
        "cairn_http_requests_total",
        "ACME API requests answered, by endpoint (route), method and status."
    );
    describe_histogram!(
        "cairn_http_request_duration_seconds",
        "Time to answer an ACME API request, by endpoint (route)."
    );
    describe_counter!("cairn_issuances_total", "Certificates issued.");
    describe_counter!(
        "cairn_validations_total",
        "Challenge validations recorded, by challenge type and result (valid or the ACME error type)."
    );
    describe_histogram!(
        "cairn_validation_duration_seconds",
        "Time a validation took, by challenge type."
    );
    describe_counter!(
        "cairn_nonces_total",
        "Nonces presented in JWS requests, by result (redeemed, or why refused)."
    );
    describe_gauge!(
        "cairn_db_pool_connections",
        "Database pool connections by state (idle, in_use), read at each scrape."
    );
    describe_histogram!(
        "cairn_db_query_duration_seconds",
        "Time a store call took (its statements and transaction), by operation."
    );
    describe_counter!(
        "cairn_retention_purged_rows_total",
        "Rows the retention purge deleted, by table."
    );
    describe_gauge!(
        "cairn_build_info",
        "Always 1; the labels say which build runs."
    );
    gauge!("cairn_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

/// One answered ACME API request.
pub fn request(endpoint: &'static str, method: &str, status: u16, seconds: f64) {
    let method = match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        _ => "other",
    };
    counter!("cairn_http_requests_total", "endpoint" => endpoint, "method" => method, "status" => status.to_string())
        .increment(1);
    histogram!("cairn_http_request_duration_seconds", "endpoint" => endpoint).record(seconds);
}

pub fn issuance() {
    counter!("cairn_issuances_total").increment(1);
}

/// A validation whose result was recorded; `result` is `valid` or the
/// problem's ACME type without its namespace.
pub fn validation(challenge: &'static str, result: &str, seconds: f64) {
    counter!("cairn_validations_total", "challenge" => challenge, "result" => result.to_string())
        .increment(1);
    histogram!("cairn_validation_duration_seconds", "challenge" => challenge).record(seconds);
}

/// A nonce presented: `redeemed`, or why it was refused (`used`,
/// `expired`, `malformed`, `foreign`, `future`).
pub fn nonce(result: &'static str) {
    counter!("cairn_nonces_total", "result" => result).increment(1);
}

/// The database pool at a scrape: open connections and idle ones.
pub fn db_pool(open: u32, idle: usize) {
    let idle = idle.min(open as usize);
    gauge!("cairn_db_pool_connections", "state" => "idle").set(idle as f64);
    gauge!("cairn_db_pool_connections", "state" => "in_use").set((open as usize - idle) as f64);
}

/// Rows the retention purge deleted from `table`.
pub fn purged(table: &'static str, rows: u64) {
    if rows > 0 {
        counter!("cairn_retention_purged_rows_total", "table" => table).increment(rows);
    }
}

/// One store call (`sa::Store` or `LimitStore` method) and how long it took.
pub fn db_query(operation: &'static str, took: std::time::Duration) {
    histogram!("cairn_db_query_duration_seconds", "operation" => operation)
        .record(took.as_secs_f64());
}

/// The route template a path belongs to: a fixed label per ACME resource,
/// so ids never become label values.
pub fn endpoint(path: &str) -> &'static str {
    let mut parts = path.trim_start_matches('/').split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("directory"), None, _, _) => "directory",
        (Some("terms"), None, _, _) => "terms",
        (Some("docs"), Some("rate-limits"), None, _) => "docs",
        (Some("acme"), Some(r), rest, more) => match (r, rest, more) {
            ("new-nonce", None, _) => "newNonce",
            ("new-acct", None, _) => "newAccount",
            ("acct", Some(_), None) => "account",
            ("acct", Some(_), Some("orders")) => "orders",
            ("key-change", None, _) => "keyChange",
            ("new-order", None, _) => "newOrder",
            ("order", Some(_), None) => "order",
            ("finalize", Some(_), None) => "finalize",
            ("authz", Some(_), None) => "authz",
            ("chall", Some(_), None) => "challenge",
            ("cert", Some(_), None) => "certificate",
            ("revoke-cert", None, _) => "revokeCert",
            ("issuer", Some(_), None) => "issuer",
            ("renewal-info", Some(_), None) => "renewalInfo",
            _ => "unknown",
        },
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::endpoint;

    #[test]
    fn endpoints_are_route_templates() {
        assert_eq!(endpoint("/directory"), "directory");
        assert_eq!(endpoint("/acme/order/42"), "order");
        assert_eq!(endpoint("/acme/acct/7/orders"), "orders");
        assert_eq!(endpoint("/acme/renewal-info/abc.def"), "renewalInfo");
        assert_eq!(endpoint("/acme/order/42/x"), "unknown");
        assert_eq!(endpoint("/%FF"), "unknown");
        assert_eq!(endpoint("/"), "unknown");
    }
}
