//! `cairn serve`: wire the authorities together and run the listeners: the
//! HTTPS ACME API and the plain-HTTP management listener (roots and
//! intermediates, as Pebble serves them).

use crate::ca::Ca;
use crate::clock::Clock;
use crate::config::{ensure_dir, Config};
use crate::crl::CrlPublisher;
use crate::ra::Ra;
use crate::va::Va;
use crate::wfe::{self, Nonces, Wfe};
use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use axum_server::tls_rustls::RustlsConfig;
use std::sync::Arc;
use std::time::Duration;

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    // One crypto provider for every rustls user in the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    ensure_dir(&cfg.data_dir)?;
    let cfg = Arc::new(cfg);
    let clock = Arc::new(Clock::system());
    let store = crate::sa::open(&cfg.database_url(), cfg.database.max_connections)
        .await
        .with_context(|| format!("opening the database {}", cfg.database_url()))?;
    let ca = Arc::new(Ca::load_or_create(&cfg).context("loading the CA")?);
    // The RA publishes through this after each revocation; the updater and
    // the management listener share it.
    let crl = CrlPublisher::new(store.clone(), ca.clone(), clock.clone(), cfg.clone());
    let va =
        Arc::new(Va::new(&cfg.va, cfg.acme.caa_identities.clone()).context("starting the VA")?);
    let ra = Ra::new(
        cfg.clone(),
        store.clone(),
        ca.clone(),
        va,
        clock.clone(),
        crl.clone(),
    )?;
    let nonces = Nonces::new(store.clone(), clock.clone(), cfg.acme.nonce_lifetime_secs).await?;
    let wfe = Arc::new(Wfe {
        ra: ra.clone(),
        nonces,
        cfg: cfg.clone(),
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
    let tls = RustlsConfig::from_pem(cert_pem.into_bytes(), key_pem.into_bytes())
        .await
        .context("TLS certificate for the listener")?;

    ra.spawn_validation_sweeper();
    spawn_pruner(wfe.clone());
    crl.spawn_updater();

    if let Some(addr) = cfg.management_listen() {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the management listener {addr}"))?;
        let clock_control = cfg.server.clock_control.then(|| clock.clone());
        let app = management_router(ca.clone(), crl.clone(), clock_control);
        tracing::info!(
            "management: http://{addr} (roots at /roots/0, intermediates at /intermediates/0, \
             CRL at /crl/0)"
        );
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("management listener failed: {e}");
            }
        });
    }

    let app = wfe::router(wfe);
    let std_listener = std::net::TcpListener::bind(cfg.server.listen)
        .with_context(|| format!("binding the ACME listener {}", cfg.server.listen))?;
    std_listener.set_nonblocking(true)?;
    tracing::info!("directory: {}/directory", cfg.default_base_url());
    tracing::info!("root certificate: {}", cfg.data_path("root.pem").display());
    let server = axum_server::from_tcp_rustls(std_listener, tls).serve(app.into_make_service());
    tokio::select! {
        r = server => r.context("ACME listener")?,
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    Ok(())
}

fn spawn_pruner(wfe: Arc<Wfe>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            if let Err(e) = wfe.nonces.prune().await {
                tracing::warn!("pruning used nonces: {e}");
            }
        }
    });
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

fn management_router(ca: Arc<Ca>, crl: Arc<CrlPublisher>, clock: Option<Arc<Clock>>) -> Router {
    let mut router = Router::new()
        .route("/roots/{n}", get(root))
        .route("/intermediates/{n}", get(intermediate))
        .with_state(ca)
        .merge(crate::crl::router(crl));
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
        Ok(a) if (0..=10 * 366 * 86_400).contains(&a.seconds) => {
            clock.advance(a.seconds);
            tracing::info!(
                seconds = a.seconds,
                offset = clock.offset(),
                "clock advanced"
            );
            clock_json(&clock)
        }
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
        _ => (StatusCode::NOT_FOUND, "no such root\n").into_response(),
    }
}

async fn intermediate(State(ca): State<Arc<Ca>>, Path(n): Path<String>) -> Response {
    match n.as_str() {
        "0" => pem(ca.intermediate_pem()),
        _ => (StatusCode::NOT_FOUND, "no such intermediate\n").into_response(),
    }
}
