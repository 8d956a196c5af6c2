//! `cairn serve`: wire the authorities together and run the listeners: the
//! HTTPS ACME API and the plain-HTTP management listener (roots and
//! intermediates, as Pebble serves them).

use crate::ca::Ca;
use crate::clock::Clock;
use crate::config::{ensure_dir, Config};
use crate::crl_publisher::CrlPublisher;
use crate::listener::{self, Connections, Limits};
use crate::problem::Path;
use crate::ra::Ra;
use crate::ratelimit::{LimitSet, Limiter, Overrides, RequestRateLimiter, TrustedProxies};
use crate::retention::Retention;
use crate::sa::DynStore;
use crate::va::Va;
use crate::wfe::{self, Nonces, Wfe};
use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;
use std::time::Duration;

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    // One crypto provider for every rustls user in the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    ensure_dir(&cfg.data_dir)?;
    // Before anything is opened: a `local` nonce server runs alone.
    let nonce_lock = Nonces::lock(&cfg.data_dir, cfg.acme.nonces)?;
    let metrics_handle = match crate::metrics::install() {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!("metrics recorder not installed: {e}");
            None
        }
    };
    let cfg = Arc::new(cfg);
    let clock = Arc::new(Clock::system());
    let store = crate::sa::open_with(
        &cfg.database_url(),
        cfg.database.max_connections,
        cfg.database.sqlite_synchronous,
    )
    .await
    .with_context(|| {
        format!(
            "opening the database {}",
            crate::config::redact_url(&cfg.database_url())
        )
    })?;
    let store = crate::sa::timed(store, crate::metrics::db_query);
    let ca = Arc::new(Ca::load_or_create(&cfg).context("loading the CA")?);
    // The RA publishes through this after each revocation; the updater and
    // the management listener share it.
    let crl = CrlPublisher::new(store.clone(), ca.clone(), clock.clone(), cfg.clone());
    let va =
        Arc::new(Va::new(&cfg.va, cfg.acme.caa_identities.clone()).context("starting the VA")?);
    // Rate limits: one limit set, the override file (re-read when it
    // changes), the issuance windows in the database and the per-IP
    // request rates in memory.
    let limit_set =
        LimitSet::try_resolve(&cfg.limits).map_err(|e| anyhow::anyhow!("limits: {e}"))?;
    let docs_url = cfg
        .limits
        .docs_url_or(&format!("{}/docs/rate-limits", cfg.default_base_url()));
    let overrides = Overrides::load(&cfg.limits.overrides_path(&cfg.data_dir))
        .context("loading the rate-limit overrides")?;
    overrides.spawn_reloader(Duration::from_secs(cfg.limits.overrides_reload_secs.max(1)));
    let limiter = Arc::new(Limiter::new(
        limit_set.clone(),
        overrides,
        store.clone(),
        clock.clone(),
        docs_url.clone(),
    ));
    let rates = Arc::new(RequestRateLimiter::new(
        &limit_set,
        TrustedProxies::parse(&cfg.limits.trusted_proxies)
            .map_err(|e| anyhow::anyhow!("limits.trusted_proxies: {e}"))?,
        clock.clone(),
        docs_url,
    ));
    let ra = Ra::new(
        cfg.clone(),
        store.clone(),
        ca.clone(),
        va,
        clock.clone(),
        crl.clone(),
        limiter.clone(),
    )?;
    let nonces = Nonces::new(
        store.clone(),
        clock.clone(),
        cfg.acme.nonce_lifetime_secs,
        cfg.acme.nonces,
        nonce_lock,
    )
    .await?;
    let faults = Arc::new(
        crate::faults::Faults::new(cfg.faults.seed, &cfg.faults.rules, clock.clone())
            .map_err(|e| anyhow::anyhow!("faults.rules: {e}"))?,
    );
    let wfe = Arc::new(Wfe {
        ra: ra.clone(),
        nonces,
        cfg: cfg.clone(),
        rates: rates.clone(),
        verifiers: Default::default(),
        bodies: wfe::BodyBudget::new(cfg.server.max_buffered_body_bytes),
        faults: faults.clone(),
    });

    let (cert_pem, key_pem) = if cfg.server.tls_cert.is_empty() {
        ca.tls_listener_cert(clock.now())?
    } else {
        (
            std::fs::read_to_string(&cfg.server.tls_cert)
                .with_context(|| format!("server.tls_cert {}", cfg.server.tls_cert))?,
            std::fs::read_to_string(&cfg.server.tls_key)
                .with_context(|| format!("server.tls_key {}", cfg.server.tls_key))?,
        )
    };
    let tls = tls_acceptor(&cert_pem, &key_pem).context("TLS certificate for the listener")?;
    let conns = Connections::new(listener::connection_cap(cfg.server.max_connections));
    if conns.cap() < cfg.server.max_connections {
        tracing::warn!(
            "server.max_connections lowered to {} by the open-file limit",
            conns.cap()
        );
    }
    let limits = Arc::new(Limits::new(&cfg.server));

    {
        let ra = ra.clone();
        tokio::spawn(async move {
            match ra.backfill_certificate_names().await {
                Ok(0) => {}
                Ok(n) => tracing::info!("recorded the names of {n} earlier certificates"),
                Err(e) => tracing::warn!("recording earlier certificates' names: {}", e.detail),
            }
        });
    }
    ra.spawn_validation_sweeper();
    ra.spawn_reservation_sweeper();
    let retention = Arc::new(Retention::new(
        store.clone(),
        clock.clone(),
        cfg.retention.clone(),
    ))
    .spawn();
    crl.spawn_updater();

    if let Some(addr) = cfg.management_listen() {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the management listener {addr}"))?;
        let clock_control = cfg.server.clock_control.then(|| clock.clone());
        let observed = Observed {
            limiter: limiter.clone(),
            rates: rates.clone(),
            metrics: metrics_handle.clone(),
            store: store.clone(),
        };
        let app = management_router(
            ca.clone(),
            crl.clone(),
            clock_control,
            cfg.server.management_ca_keys,
        )
        .merge(pebble_management(store.clone()))
        .merge(
            Router::new()
                .route("/metrics", get(metrics))
                .route("/health", get(health))
                .route("/ready", get(ready))
                .with_state(observed),
        )
        .merge(crate::lookup::router(ra.clone()))
        .merge(crate::faults::router(faults.clone()))
        // Every answer the management listener shapes is a problem
        // document too, unknown paths and methods included.
        .fallback(|| async { crate::problem::Problem::not_found("no such resource") })
        .method_not_allowed_fallback(|| async { crate::problem::Problem::method_not_allowed() });
        let (scheme, mgmt_tls) = if cfg.server.management_tls {
            ("https", Some(tls.clone()))
        } else {
            ("http", None)
        };
        tracing::info!(
            "management: {scheme}://{addr} (roots at /roots/0, intermediates at \
             /intermediates/0, CRL at /crl/0)"
        );
        tokio::spawn(listener::serve(
            listener,
            mgmt_tls,
            app,
            conns.clone(),
            limits.clone(),
        ));
    }

    let app = with_directory_alias(wfe::router(wfe), &cfg.server.directory_alias);
    let acme_listener = tokio::net::TcpListener::bind(cfg.server.listen)
        .await
        .with_context(|| format!("binding the ACME listener {}", cfg.server.listen))?;
    match cfg.server.directory_alias.as_str() {
        "" => tracing::info!("directory: {}/directory", cfg.default_base_url()),
        alias => tracing::info!(
            "directory: {}{alias} (and /directory)",
            cfg.default_base_url()
        ),
    }
    tracing::info!("root certificate: {}", cfg.data_path("root.pem").display());
    tracing::info!(
        "serving from {} runtime thread(s) (server.worker_threads)",
        tokio::runtime::Handle::current().metrics().num_workers()
    );
    let acme = tokio::spawn(listener::serve(
        acme_listener,
        Some(tls),
        app,
        conns.clone(),
        limits,
    ));
    shutdown_signal().await;
    drain(&conns, Duration::from_secs(cfg.server.shutdown_grace_secs)).await;
    acme.abort();
    retention.abort();
    store.close().await;
    tracing::info!("shut down");
    Ok(())
}

/// Graceful shutdown: accept nothing new, let what is in flight finish
/// (HTTP/1 answers say `Connection: close`) for at most `grace`, then the
/// caller closes the database. A validation still running is left
/// `processing` under its lease: the next start, or another instance, runs
/// it again.
async fn drain(conns: &Connections, grace: Duration) {
    tracing::info!(
        open_connections = conns.open_count(),
        grace_secs = grace.as_secs(),
        "shutting down: draining connections"
    );
    conns.drain();
    let deadline = tokio::time::Instant::now() + grace;
    while conns.open_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = conns.open_count();
    if left > 0 {
        tracing::warn!(connections = left, "grace period over: closing the rest");
    }
}

/// The ACME listener's TLS: the PEM chain and key, ALPN `h2` and `http/1.1`.
fn tls_acceptor(cert_pem: &str, key_pem: &str) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("reading the certificate chain")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("reading the key")?;
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// What the management listener's `/metrics`, `/health` and `/ready` read.
#[derive(Clone)]
struct Observed {
    limiter: Arc<Limiter>,
    rates: Arc<RequestRateLimiter>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    store: DynStore,
}

/// `GET /health`: the process is up and answering.
async fn health() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

/// `GET /ready`: this instance can serve ACME requests: the database
/// answers (its migrations ran when it was opened, before the listeners
/// started) and the CA keys are loaded (they are before any listener
/// starts). 503 with the reason otherwise; load balancers route on it.
async fn ready(State(o): State<Observed>) -> Response {
    let check = tokio::time::timeout(Duration::from_secs(5), o.store.ping()).await;
    let (status, body) = match check {
        Ok(Ok(())) => (
            StatusCode::OK,
            serde_json::json!({"status": "ready", "database": "ok", "ca": "loaded"}),
        ),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "unavailable", "database": e.to_string()}),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "unavailable", "database": "no answer within 5 s"}),
        ),
    };
    (status, axum::Json(body)).into_response()
}

/// `GET /metrics` (Prometheus text format): the `cairn_*` series the code
/// counts (requests, latency, issuances, validations, nonces, the database
/// pool, build info), and rate-limit refusals per limit since start,
/// issuance windows and request rates alike.
async fn metrics(State(o): State<Observed>) -> Response {
    let (limiter, rates) = (&o.limiter, &o.rates);
    let (open, idle) = o.store.pool_stats();
    crate::metrics::db_pool(open, idle);
    let mut out = o.metrics.as_ref().map(|m| m.render()).unwrap_or_default();
    out.push_str(
        "# HELP cairn_rate_limit_refusals_total Requests refused by a rate limit since start.\n\
         # TYPE cairn_rate_limit_refusals_total counter\n",
    );
    for (limit, n) in limiter.refusal_counts() {
        out.push_str(&format!(
            "cairn_rate_limit_refusals_total{{limit=\"{}\"}} {n}\n",
            limit.as_str()
        ));
    }
    out.push_str(&format!(
        "cairn_rate_limit_refusals_total{{limit=\"pendingAuthorizationsPerAccount\"}} {}\n",
        limiter.pending_authz_refusals()
    ));
    for (class, n) in rates.refusal_counts() {
        out.push_str(&format!(
            "cairn_rate_limit_refusals_total{{limit=\"{}\"}} {n}\n",
            class.limit_name()
        ));
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The ACME router, answering `alias` (if not empty) as `/directory`: the
/// path is rewritten before routing, so the alias is the directory in every
/// respect (headers, rate-limit class, metrics).
fn with_directory_alias(app: Router, alias: &str) -> Router {
    if alias.is_empty() {
        return app;
    }
    let alias: Arc<str> = Arc::from(alias);
    Router::new()
        .fallback_service(app)
        .layer(axum::middleware::map_request(
            move |mut req: axum::extract::Request| {
                let alias = alias.clone();
                async move {
                    if req.uri().path() == &*alias {
                        let mut parts = req.uri().clone().into_parts();
                        let pq = match req.uri().query() {
                            Some(q) => format!("/directory?{q}"),
                            None => "/directory".to_string(),
                        };
                        if let Ok(pq) = pq.parse() {
                            parts.path_and_query = Some(pq);
                            if let Ok(uri) = axum::http::Uri::from_parts(parts) {
                                *req.uri_mut() = uri;
                            }
                        }
                    }
                    req
                }
            },
        ))
}

fn management_router(
    ca: Arc<Ca>,
    crl: Arc<CrlPublisher>,
    clock: Option<Arc<Clock>>,
    ca_keys: bool,
) -> Router {
    let mut router = Router::new()
        .route("/roots/{n}", get(root))
        .route("/intermediates/{n}", get(intermediate));
    if ca_keys {
        router = router
            .route("/root-keys/{n}", get(root_key))
            .route("/intermediate-keys/{n}", get(intermediate_key));
    }
    let mut router = router
        .with_state(ca)
        .merge(crate::crl_publisher::router(crl));
    if let Some(clock) = clock {
        router = router.merge(
            Router::new()
                .route("/clock", get(clock_now))
                .route("/clock/advance", axum::routing::post(clock_advance))
                .with_state(clock),
        );
    }
    router
}

fn clock_json(clock: &Clock) -> Response {
    let now = clock
        .now()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    axum::Json(serde_json::json!({ "now": now, "offsetSeconds": clock.offset() })).into_response()
}

/// `GET /clock`: this instance's time and how far it was advanced.
async fn clock_now(State(clock): State<Arc<Clock>>) -> Response {
    clock_json(&clock)
}

/// `POST /clock/advance {"seconds": N}` (only with `server.clock_control`):
/// moves this instance's clock forward by N seconds (0 ≤ N ≤ 10 years).
async fn clock_advance(State(clock): State<Arc<Clock>>, body: axum::body::Bytes) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Advance {
        seconds: i64,
    }
    match serde_json::from_slice::<Advance>(&body) {
        Ok(a) if (0..=10 * 366 * 86_400).contains(&a.seconds) => match clock.advance(a.seconds) {
            Ok(offset) => {
                tracing::info!(seconds = a.seconds, offset, "clock advanced");
                clock_json(&clock)
            }
            Err(offset) => crate::problem::Problem::malformed(format!(
                "advancing {} s would put the clock more than {} s (100 years) ahead of the \
                 system clock; it is {offset} s ahead now",
                a.seconds,
                crate::clock::MAX_OFFSET_SECS
            ))
            .into_response(),
        },
        Ok(_) => crate::problem::Problem::malformed(
            "\"seconds\" must be between 0 and 316224000 (10 years)",
        )
        .into_response(),
        Err(e) => crate::problem::Problem::malformed(format!("expected {{\"seconds\": N}}: {e}"))
            .into_response(),
    }
}

fn pem(body: &str) -> Response {
    (
        [(header::CONTENT_TYPE, "application/pem-certificate-chain")],
        body.to_string(),
    )
        .into_response()
}

async fn root(State(ca): State<Arc<Ca>>, Path(n): Path<String>) -> Response {
    match n.as_str() {
        "0" => pem(ca.root_pem()),
        _ => crate::problem::Problem::not_found("no such root").into_response(),
    }
}

async fn intermediate(State(ca): State<Arc<Ca>>, Path(n): Path<String>) -> Response {
    match n.as_str() {
        "0" => pem(ca.intermediate_pem()),
        _ => crate::problem::Problem::not_found("no such intermediate").into_response(),
    }
}

/// `/root-keys/0` and `/intermediate-keys/0` (with
/// `server.management_ca_keys`): the CA's private keys, PKCS#8 PEM.
async fn root_key(State(ca): State<Arc<Ca>>, Path(n): Path<String>) -> Response {
    ca_key(&ca, &n, true)
}

async fn intermediate_key(State(ca): State<Arc<Ca>>, Path(n): Path<String>) -> Response {
    ca_key(&ca, &n, false)
}

fn ca_key(ca: &Ca, n: &str, root: bool) -> Response {
    if n != "0" {
        return crate::problem::Problem::not_found("no such key").into_response();
    }
    match ca.key_pems() {
        Ok((root_key, int_key)) => match if root { root_key } else { int_key } {
            Some(pem) => ([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response(),
            None => crate::problem::Problem::not_found("the key is not in the data directory")
                .into_response(),
        },
        Err(e) => crate::problem::Problem::internal(e).into_response(),
    }
}

/// Pebble's management reads that need the store:
/// `GET /cert-status-by-serial/<hex serial>`.
fn pebble_management(store: DynStore) -> Router {
    Router::new()
        .route("/cert-status-by-serial/{serial}", get(cert_status))
        .with_state(store)
}

/// `GET /cert-status-by-serial/<serial>`, as Pebble answers it: the
/// certificate (PEM) and whether it is revoked, by its serial in hex
/// (leading zeros optional). 400 for a serial that is not hex, 404 for an
/// unknown one.
async fn cert_status(State(store): State<DynStore>, Path(serial): Path<String>) -> Response {
    let hex = serial.trim().to_ascii_lowercase();
    let digits = hex.trim_start_matches('0');
    if hex.is_empty() || hex.len() > 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return (StatusCode::BAD_REQUEST, "the serial must be hexadecimal\n").into_response();
    }
    // Cairn stores the DER serial's content bytes in hex: whole bytes.
    let key = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits.to_string()
    };
    let cert = match store.certificate(&key).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return crate::problem::Problem::not_found("no such certificate").into_response()
        }
        Err(e) => return crate::problem::Problem::internal(e).into_response(),
    };
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}-----END CERTIFICATE-----\n",
        pem_base64(&cert.der)
    );
    let mut body = serde_json::json!({
        "Status": if cert.revoked_at.is_some() { "Revoked" } else { "Valid" },
        "Serial": if digits.is_empty() { "0" } else { digits },
        "Certificate": pem,
    });
    if let (Some(at), Some(obj)) = (cert.revoked_at, body.as_object_mut()) {
        let at = time::OffsetDateTime::from_unix_timestamp(at)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        obj.insert("RevokedAt".into(), at.into());
        if let Some(r) = cert.revoked_reason {
            obj.insert("Reason".into(), r.into());
        }
    }
    axum::Json(body).into_response()
}

/// Base64 in 64-character lines, each ending in a newline (PEM's body).
fn pem_base64(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 1);
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out
}
