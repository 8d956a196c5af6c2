//! A tls-alpn-01 responder (RFC 8737) for validation tests: on 127.0.0.1:port it
//! completes TLS handshakes offering ALPN `acme-tls/1` with, for the SNI name, a
//! self-signed certificate carrying that name and the critical acmeIdentifier
//! extension (SHA-256 of the key authorization). Own thread, own runtime.

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Certs {
    by_name: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    hits: AtomicUsize,
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.hits.fetch_add(1, Ordering::SeqCst);
        let name = hello.server_name()?.to_ascii_lowercase();
        self.by_name
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name)
            .cloned()
    }
}

pub struct TlsAlpn01Responder {
    pub port: u16,
    certs: Arc<Certs>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TlsAlpn01Responder {
    /// Binds 127.0.0.1:port (retrying for up to 5 s) and serves handshakes.
    pub fn start(port: u16) -> TlsAlpn01Responder {
        Self::start_on("127.0.0.1", port)
    }

    /// The same on another loopback address (`::1` for IPv6 identifiers).
    pub fn start_on(ip: &str, port: u16) -> TlsAlpn01Responder {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match std::net::TcpListener::bind((ip, port)) {
                Ok(l) => break l,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => panic!("tls-alpn-01 responder: bind {ip} port {port}: {e}"),
            }
        };
        listener.set_nonblocking(true).expect("set_nonblocking");
        let certs = Arc::new(Certs::default());
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(certs.clone());
        config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let acceptor = acceptor.clone();
                            tokio::spawn(async move {
                                if let Ok(mut tls) = acceptor.accept(stream).await {
                                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
                                }
                            });
                        }
                    }
                }
            });
        });
        TlsAlpn01Responder {
            port,
            certs,
            shutdown: Some(tx),
        }
    }

    /// Answer handshakes for `domain` with the acmeIdentifier of `key_authorization`.
    pub fn set(&self, domain: &str, key_authorization: &str) {
        self.set_for(domain, domain, key_authorization)
    }

    /// Answer handshakes whose SNI is `sni` with a certificate naming `san`
    /// (an IP address becomes an iPAddress SAN: RFC 8738 §6 has the SNI be
    /// the address's reverse-DNS name).
    pub fn set_for(&self, sni: &str, san: &str, key_authorization: &str) {
        let domain = sni;
        let digest = Sha256::digest(key_authorization.as_bytes());
        let mut params = rcgen::CertificateParams::new(vec![san.to_string()]).expect("params");
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&digest)];
        let kp = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&kp).expect("self-signed certificate");
        let key = rustls::crypto::ring::sign::any_supported_type(&PrivateKeyDer::Pkcs8(
            PrivatePkcs8KeyDer::from(kp.serialize_der()),
        ))
        .expect("signing key");
        let ck = Arc::new(CertifiedKey::new(vec![cert.der().clone()], key));
        self.certs
            .by_name
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(domain.to_ascii_lowercase(), ck);
    }

    /// TLS handshakes seen so far.
    pub fn hits(&self) -> usize {
        self.certs.hits.load(Ordering::SeqCst)
    }
}

impl Drop for TlsAlpn01Responder {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
