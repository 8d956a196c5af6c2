//! The challenge responders of `pebble-challtestsrv`, on the mock's zone:
//! http-01 (plain and over HTTPS with a self-signed certificate),
//! tls-alpn-01 (RFC 8737) and DNS-over-HTTPS (RFC 8484). Each records the
//! requests it sees in the zone's history, as challtestsrv does.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::{CertifiedKey, SigningKey};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::{handle_packet, key, lock, EventKind, Shared};

/// The ALPN protocol of tls-alpn-01 (RFC 8737 §6.2).
const ACME_TLS_1: &[u8] = b"acme-tls/1";
/// Longest a responder connection may last, handshake included.
const CONN_DEADLINE: Duration = Duration::from_secs(30);
/// Largest DoH query accepted (a DNS message is at most 64 KiB).
const MAX_DOH_BYTES: usize = 65_535;

type Tasks = Vec<JoinHandle<anyhow::Result<()>>>;

/// The responders' shared parts: the zone, and one P-256 key for the
/// self-signed certificates (https-01's, and each tls-alpn-01 answer's).
pub(super) struct Responders {
    zone: Shared,
    key: Arc<rcgen::KeyPair>,
    signer: Arc<dyn SigningKey>,
}

impl Responders {
    pub(super) fn new(zone: Shared) -> anyhow::Result<Responders> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signer = rustls::crypto::ring::sign::any_supported_type(&der)?;
        Ok(Responders {
            zone,
            key: Arc::new(key),
            signer,
        })
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// http-01 responders on `addrs` (over TLS when `https`).
    pub(super) async fn serve_http01(
        &self,
        addrs: &[SocketAddr],
        https: bool,
        tasks: &mut Tasks,
    ) -> anyhow::Result<Vec<SocketAddr>> {
        let tls = if https {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "challenge test server");
            let cert = params.self_signed(&*self.key)?;
            let ck = CertifiedKey::new(vec![cert.der().clone()], self.signer.clone());
            let mut cfg = rustls::ServerConfig::builder_with_provider(Self::provider())
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(Fixed(Arc::new(ck))));
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(TlsAcceptor::from(Arc::new(cfg)))
        } else {
            None
        };
        let app = Router::new().fallback(http01).with_state(self.zone.clone());
        let mut bound = Vec::new();
        for addr in addrs {
            let what = if https { "https-01" } else { "http-01" };
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("binding the {what} responder on {addr}: {e}"))?;
            bound.push(l.local_addr()?);
            tasks.push(tokio::spawn(serve_http(l, tls.clone(), app.clone())));
        }
        Ok(bound)
    }

    /// tls-alpn-01 responders on `addrs`.
    pub(super) async fn serve_tlsalpn01(
        &self,
        addrs: &[SocketAddr],
        tasks: &mut Tasks,
    ) -> anyhow::Result<Vec<SocketAddr>> {
        let resolver = AlpnCerts {
            zone: self.zone.clone(),
            key: self.key.clone(),
            signer: self.signer.clone(),
        };
        let mut cfg = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        cfg.alpn_protocols = vec![ACME_TLS_1.to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(cfg));
        let mut bound = Vec::new();
        for addr in addrs {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("binding the tls-alpn-01 responder on {addr}: {e}"))?;
            bound.push(l.local_addr()?);
            let acceptor = acceptor.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = l.accept().await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let acceptor = acceptor.clone();
                    // The handshake is the answer; then close.
                    tokio::spawn(async move {
                        let accepted =
                            tokio::time::timeout(CONN_DEADLINE, acceptor.accept(stream)).await;
                        if let Ok(Ok(mut tls)) = accepted {
                            let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
                        }
                    });
                }
            }));
        }
        Ok(bound)
    }

    /// DNS-over-HTTPS on `addrs`, with the certificate and key in the files.
    pub(super) async fn serve_doh(
        &self,
        addrs: &[SocketAddr],
        cert: &Path,
        key: &Path,
        tasks: &mut Tasks,
    ) -> anyhow::Result<Vec<SocketAddr>> {
        use rustls::pki_types::pem::PemObject;
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| anyhow::anyhow!("--doh-cert {}: {e}", cert.display()))?;
        let key_der = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| anyhow::anyhow!("--doh-cert-key {}: {e}", key.display()))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tls = TlsAcceptor::from(Arc::new(cfg));
        let app = Router::new()
            .route("/dns-query", axum::routing::get(doh_get).post(doh_post))
            .with_state(self.zone.clone());
        let mut bound = Vec::new();
        for addr in addrs {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("binding the DoH server on {addr}: {e}"))?;
            bound.push(l.local_addr()?);
            tasks.push(tokio::spawn(serve_http(l, Some(tls.clone()), app.clone())));
        }
        Ok(bound)
    }
}

/// A certificate resolver with one certificate for every name.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// What a TLS connection told the HTTP layer: its SNI name.
#[derive(Clone)]
struct Tls {
    server_name: String,
}

/// Serves HTTP/1.1 on `listener` (over TLS when `tls`), each connection
/// for at most [`CONN_DEADLINE`].
async fn serve_http(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
) -> anyhow::Result<()> {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let (tls, app) = (tls.clone(), app.clone());
        tokio::spawn(tokio::time::timeout(CONN_DEADLINE, async move {
            let service = |info: Option<Tls>| {
                hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                    if let Some(info) = &info {
                        req.extensions_mut().insert(info.clone());
                    }
                    app.clone().oneshot(req.map(axum::body::Body::new))
                })
            };
            let http = hyper::server::conn::http1::Builder::new();
            match tls {
                None => {
                    let _ = http
                        .serve_connection(TokioIo::new(stream), service(None))
                        .await;
                }
                Some(acceptor) => {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let info = Tls {
                        server_name: stream.get_ref().1.server_name().unwrap_or("").to_string(),
                    };
                    let _ = http
                        .serve_connection(TokioIo::new(stream), service(Some(info)))
                        .await;
                }
            }
        }));
    }
}

fn user_agent(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Every request to an http-01 responder: recorded, then a redirect (plain
/// HTTP only), the key authorization of the token, or an empty 200.
async fn http01(State(zone): State<Shared>, req: Request) -> Response {
    let tls = req.extensions().get::<Tls>().cloned();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let path = req.uri().path().to_string();
    let mut zone = lock(&zone);
    let event = serde_json::json!({
        "URL": req.uri().to_string(),
        "Host": host,
        "HTTPS": tls.is_some(),
        "ServerName": tls.as_ref().map(|t| t.server_name.as_str()).unwrap_or(""),
        "UserAgent": user_agent(req.headers()),
    });
    // The host without its port, as challtestsrv keys it.
    let bare = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host.as_str(),
    };
    zone.history.record(
        bare.trim_start_matches('[').trim_end_matches(']'),
        EventKind::Http,
        event,
    );
    if tls.is_none() {
        if let Some(target) = zone.redirects.get(&path) {
            return (StatusCode::FOUND, [(header::LOCATION, target.clone())]).into_response();
        }
    }
    let content = path
        .strip_prefix("/.well-known/acme-challenge/")
        .and_then(|token| zone.http01.get(token))
        .cloned()
        .unwrap_or_default();
    content.into_response()
}

/// tls-alpn-01: a fresh self-signed certificate for the SNI name with the
/// critical acmeIdentifier extension, only to a client offering exactly
/// `acme-tls/1`, only for a host with a key authorization; otherwise the
/// handshake fails (no certificate).
struct AlpnCerts {
    zone: Shared,
    key: Arc<rcgen::KeyPair>,
    signer: Arc<dyn SigningKey>,
}

impl std::fmt::Debug for AlpnCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AlpnCerts")
    }
}

impl ResolvesServerCert for AlpnCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().unwrap_or("").to_string();
        let protos: Vec<Vec<u8>> = hello
            .alpn()
            .map(|i| i.map(<[u8]>::to_vec).collect())
            .unwrap_or_default();
        let content = {
            let mut zone = lock(&self.zone);
            let event = serde_json::json!({
                "ServerName": name,
                "SupportedProtos": protos
                    .iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect::<Vec<_>>(),
            });
            zone.history.record(&name, EventKind::TlsAlpn, event);
            zone.tlsalpn01.get(&key(&name)).cloned()
        };
        if protos != [ACME_TLS_1] {
            return None;
        }
        let digest = Sha256::digest(content?.as_bytes());
        let mut params = rcgen::CertificateParams::new(vec![name]).ok()?;
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&digest)];
        let cert = params.self_signed(&*self.key).ok()?;
        Some(Arc::new(CertifiedKey::new(
            vec![cert.der().clone()],
            self.signer.clone(),
        )))
    }
}

fn dns_message(answer: Option<Vec<u8>>) -> Response {
    match answer {
        Some(bytes) => ([(header::CONTENT_TYPE, "application/dns-message")], bytes).into_response(),
        None => (StatusCode::BAD_REQUEST, "not a DNS query\n").into_response(),
    }
}

/// `POST /dns-query`, body `application/dns-message` (RFC 8484 §4.1).
async fn doh_post(
    State(zone): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if body.len() > MAX_DOH_BYTES {
        return (StatusCode::PAYLOAD_TOO_LARGE, "DNS message too large\n").into_response();
    }
    dns_message(handle_packet(&body, &zone, false, &user_agent(&headers)))
}

#[derive(serde::Deserialize)]
struct DohGet {
    dns: String,
}

/// `GET /dns-query?dns=<base64url message>` (RFC 8484 §4.1).
async fn doh_get(
    State(zone): State<Shared>,
    headers: HeaderMap,
    q: Result<Query<DohGet>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return (
            StatusCode::BAD_REQUEST,
            "expected ?dns=<base64url DNS message>\n",
        )
            .into_response();
    };
    let Ok(packet) =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(q.dns.trim_end_matches('='))
    else {
        return (StatusCode::BAD_REQUEST, "dns is not base64url\n").into_response();
    };
    dns_message(handle_packet(&packet, &zone, false, &user_agent(&headers)))
}
