//! An http-01 responder for validation tests: serves
//! `/.well-known/acme-challenge/{token}` on 127.0.0.1:port from a token map, with an
//! optional delay (to hold a validation in flight while the server is killed).
//! It runs on its own thread and runtime, so it keeps answering while the test's own
//! thread is blocked (e.g. in `Server::restart`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Shared {
    tokens: Mutex<HashMap<String, String>>,
    delay: Mutex<Duration>,
    hits: AtomicUsize,
}

pub struct Http01Responder {
    pub port: u16,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

async fn answer(State(s): State<Arc<Shared>>, Path(token): Path<String>) -> (StatusCode, String) {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let delay = *s.delay.lock().unwrap_or_else(|e| e.into_inner());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let v = s
        .tokens
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&token)
        .cloned();
    match v {
        Some(ka) => (StatusCode::OK, ka),
        None => (StatusCode::NOT_FOUND, "no such token".into()),
    }
}

impl Http01Responder {
    /// Binds 127.0.0.1:port (retrying for up to 5 s if the port is still taken) and serves.
    pub fn start(port: u16) -> Http01Responder {
        Self::start_on("127.0.0.1", port)
    }

    /// The same on another loopback address (`::1` for IPv6 identifiers).
    pub fn start_on(ip: &str, port: u16) -> Http01Responder {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match std::net::TcpListener::bind((ip, port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("http-01 responder: bind {ip} port {port}: {e}"),
            }
        };
        listener.set_nonblocking(true).expect("set_nonblocking");
        let shared = Arc::new(Shared::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new()
            .route("/.well-known/acme-challenge/{token}", get(answer))
            .with_state(shared.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await;
            });
        });
        Http01Responder {
            port,
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// Serve `key_authorization` for `token`.
    pub fn set(&self, token: &str, key_authorization: &str) {
        self.shared
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_string(), key_authorization.to_string());
    }

    pub fn remove(&self, token: &str) {
        self.shared
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
    }

    /// Delay every answer by this long.
    pub fn set_delay(&self, d: Duration) {
        *self.shared.delay.lock().unwrap_or_else(|e| e.into_inner()) = d;
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.shared.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Http01Responder {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Graceful shutdown waits for in-flight (possibly delayed) answers; don't block
        // the test on them, the thread ends by itself.
        drop(self.thread.take());
    }
}
