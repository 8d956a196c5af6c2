//! Operating Cairn: `/metrics` moves with a real issuance, `/health` and
//! `/ready` on the management listener (`/ready` follows the database),
//! one log line per request with an id that `serverInternal` problems name,
//! and a graceful SIGTERM that finishes what is in flight and loses nothing
//! it acknowledged.

mod common;

use common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn metrics_count_a_real_issuance() {
    let server = Server::start(ServerOpts::always_valid());
    let before = scrape(&server).await;
    assert_eq!(
        sample(&before, "cairn_issuances_total", &[]).unwrap_or(0.0),
        0.0
    );
    assert_eq!(
        sample(
            &before,
            "cairn_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0),
        "{before}"
    );

    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    c.register().await;
    let (csr, _) = make_csr(&["metrics.example.com"], CertKey::P256);
    c.issue_always_valid(&["metrics.example.com"], &csr).await;
    // A refused nonce is counted by why.
    let r = c
        .post_body(&c.endpoint("newOrder"), "application/jose+json", {
            let h = json!({"alg": "ES256", "kid": c.account_url(), "nonce": "AAAA", "url": c.endpoint("newOrder")});
            serde_json::to_vec(&jws(&h, b"{}", &c.key())).unwrap()
        })
        .await;
    assert_problem(&r, 400, "badNonce");

    let after = scrape(&server).await;
    let get = |m: &str, l: &[(&str, &str)]| {
        sample(&after, m, l).unwrap_or_else(|| panic!("no {m} {l:?} in:\n{after}"))
    };
    assert_eq!(get("cairn_issuances_total", &[]), 1.0);
    assert!(
        get(
            "cairn_validations_total",
            &[("challenge", "http-01"), ("result", "valid")]
        ) >= 1.0
    );
    assert!(
        get(
            "cairn_http_requests_total",
            &[
                ("endpoint", "finalize"),
                ("method", "POST"),
                ("status", "200")
            ]
        ) >= 1.0
    );
    assert!(
        get(
            "cairn_http_requests_total",
            &[("endpoint", "newAccount"), ("status", "201")]
        ) >= 1.0
    );
    assert!(
        get(
            "cairn_http_requests_total",
            &[("endpoint", "newOrder"), ("status", "400")]
        ) >= 1.0
    );
    assert!(
        get(
            "cairn_http_request_duration_seconds_count",
            &[("endpoint", "newOrder")]
        ) >= 2.0
    );
    assert!(get("cairn_nonces_total", &[("result", "redeemed")]) >= 4.0);
    assert_eq!(get("cairn_nonces_total", &[("result", "malformed")]), 1.0);
    assert!(get("cairn_db_pool_connections", &[("state", "idle")]) >= 0.0);
    // Store calls, timed by operation: none stored a certificate before.
    let db = "cairn_db_query_duration_seconds_count";
    let completed = [("operation", "complete_order")];
    assert_eq!(sample(&before, db, &completed), None, "{before}");
    assert_eq!(get(db, &completed), 1.0);
    // The test preset keeps used nonces in memory: a kid's account is read alone.
    assert!(get(db, &[("operation", "account")]) >= 3.0);
    assert_eq!(
        sample(&after, db, &[("operation", "account_spending_nonce")]),
        None
    );
    assert!(get("cairn_db_query_duration_seconds_sum", &completed) > 0.0);
    assert!(after.contains("cairn_rate_limit_refusals_total"), "{after}");
    // Ids never become label values.
    assert!(!after.contains("/acme/order/"), "{after}");
}

#[tokio::test]
async fn health_and_ready() {
    let server = Server::start(ServerOpts::test());
    // What the management listener refuses is a problem document too.
    for path in ["/roots/7", "/intermediates/x", "/crl/9", "/no/such/thing"] {
        let r = reqwest::get(format!("{}{path}", server.mgmt_url))
            .await
            .expect("GET");
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(
            r.headers()["content-type"].to_str().unwrap_or_default(),
            "application/problem+json",
            "{path}"
        );
    }
    let (status, body) = mgmt_get(&server, "/health").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = mgmt_get(&server, "/ready").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["status"], "ready", "{v}");

    // On PostgreSQL the database can go away: /ready says so, and recovers.
    let Some(db) = server.database.clone() else {
        return;
    };
    db.block_connections(true).await;
    let (status, body) = mgmt_get(&server, "/ready").await;
    assert_eq!(status, 503, "{body}");
    let (status, _) = mgmt_get(&server, "/health").await;
    assert_eq!(status, 200, "the process is alive all the same");
    db.block_connections(false).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = mgmt_get(&server, "/ready").await;
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/ready did not recover: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One line per request, with its id, route, status and account; a
/// `serverInternal` problem names the same id (checked on the log side:
/// every request line has an id).
#[tokio::test]
async fn one_log_line_per_request() {
    let server = Server::start(ServerOpts::test().with_env("CAIRN_LOG_FORMAT", "json"));
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    let acct = c.register().await;
    let id = acct.rsplit('/').next().unwrap().to_string();
    c.post_as_get(&acct).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = server.log();
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "cairn::request")
        .collect();
    let account_reads: Vec<&Value> = lines
        .iter()
        .filter(|v| v["endpoint"] == "account" && v["method"] == "POST")
        .collect();
    assert_eq!(account_reads.len(), 1, "{log}");
    let line = account_reads[0];
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["account"].to_string(), id, "{line}");
    assert_eq!(
        line["request_id"].as_str().map(str::len),
        Some(16),
        "{line}"
    );
    assert!(line["latency_ms"].is_string(), "{line}");
    // No secrets: no JWS, no key material, no nonce in any log line.
    assert!(!log.contains("\"protected\""), "a JWS was logged");
    assert!(
        !log.contains(&c.key().jwk()["x"].as_str().unwrap().to_string()),
        "a key was logged"
    );
}

/// SIGTERM during a burst: a request whose body is still arriving is
/// answered, every answer is whole and no 5xx, the process exits 0 within
/// the grace period, and every account it acknowledged is there after a
/// restart.
#[tokio::test]
async fn sigterm_finishes_in_flight_requests_and_loses_nothing() {
    let mut server =
        Server::start(ServerOpts::test().with_env("CAIRN_SERVER_SHUTDOWN_GRACE_SECS", "8"));
    let http = server.http_client();

    // A newAccount whose body arrives in two parts, around the SIGTERM.
    let slow = AcmeClient::new(&server, KeyKind::Es256).await;
    let url = slow.endpoint("newAccount");
    let body = serde_json::to_vec(&jws(
        &slow.header_jwk(&url).await,
        br#"{"termsOfServiceAgreed":true}"#,
        &slow.key(),
    ))
    .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(2);
    let half = body.len() / 2;
    tx.send(Ok(body[..half].to_vec())).await.unwrap();
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let slow_req = tokio::spawn(
        http.post(&url)
            .header("content-type", "application/jose+json")
            .body(reqwest::Body::wrap_stream(stream))
            .send(),
    );

    // The burst: clients creating accounts until the server goes away.
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    let new_nonce = slow.endpoint("newNonce");
    for _ in 0..6 {
        let stop = stop.clone();
        let http = http.clone();
        let (new_nonce, new_acct) = (new_nonce.clone(), url.clone());
        workers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                // Any failure to get an answer ends this worker: the server
                // refused or closed before answering, nothing acknowledged.
                let Ok(r) = http.head(&new_nonce).send().await else {
                    break;
                };
                let Some(nonce) = r
                    .headers()
                    .get("replay-nonce")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                else {
                    break;
                };
                let key = AcmeKey::generate(KeyKind::Es256);
                let h =
                    json!({"alg": key.alg(), "jwk": key.jwk(), "nonce": nonce, "url": new_acct});
                let body = serde_json::to_vec(&jws(&h, br#"{"termsOfServiceAgreed":true}"#, &key))
                    .unwrap();
                let Ok(resp) = http
                    .post(&new_acct)
                    .header("content-type", "application/jose+json")
                    .body(body)
                    .send()
                    .await
                else {
                    break;
                };
                let r = AcmeResponse::read("POST", &new_acct, resp).await;
                assert!(r.status < 500, "a 5xx during shutdown:\n{r}");
                if r.status == 201 {
                    acked.push((key, r.location().expect("Location")));
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pid = server.pid().expect("running");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The rest of the slow body, after the signal: still answered.
    tx.send(Ok(body[half..].to_vec())).await.unwrap();
    drop(tx);
    let resp = slow_req
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);

    let status = tokio::task::spawn_blocking(move || {
        let s = server.terminate(Duration::from_secs(12));
        (server, s)
    })
    .await
    .unwrap();
    let (mut server, status) = status;
    let status = status.expect("the server exits within the grace period");
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        server.log_tail(3000)
    );
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in workers {
        acked.extend(w.await.unwrap());
    }
    assert!(
        !acked.is_empty(),
        "the burst created no account before the signal"
    );
    assert!(
        server.log().contains("shut down"),
        "{}",
        server.log_tail(3000)
    );

    server.restart();
    for (key, url) in &acked {
        let c = AcmeClient::with_key(&server, key.clone_key()).await;
        c.set_kid(Some(url.clone()));
        let r = c.post_as_get(url).await;
        assert_eq!(r.status, 200, "acknowledged account {url} lost:\n{r}");
    }
    eprintln!(
        "{} acknowledged accounts all present after restart",
        acked.len()
    );
}

/// SQLite statements run on the request's own thread: after an issuance the
/// server has no thread per database connection (sqlx's SQLite driver had
/// one each, and handed every statement and row to it and back).
#[tokio::test]
async fn sqlite_statements_run_without_worker_threads() {
    if postgres_backend() {
        return;
    }
    let server = Server::start(ServerOpts::always_valid());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    c.register().await;
    let (csr, _) = make_csr(&["inline.example.com"], CertKey::P256);
    c.issue_always_valid(&["inline.example.com"], &csr).await;
    let pid = server.pid().expect("server pid");
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the server's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("sqlx-sqlite")),
        "threads: {names:?}"
    );
}

/// `server.worker_threads`: the test preset serves from one runtime thread,
/// 0 means one per core, and any other number is honoured.
#[tokio::test]
async fn the_runtime_has_the_configured_worker_threads() {
    fn workers(server: &Server) -> String {
        let log = server.log();
        let line = log
            .lines()
            .find(|l| l.contains("runtime thread(s)"))
            .unwrap_or_else(|| panic!("no runtime line in {log}"));
        line.split("serving from ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .expect("a count")
            .to_string()
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let test = Server::start(ServerOpts::test());
    assert_eq!(workers(&test), "1");
    let dev = Server::start(ServerOpts::test().with_env("CAIRN_SERVER_WORKER_THREADS", "0"));
    assert_eq!(workers(&dev), cores.to_string());
    let three = Server::start(ServerOpts::test().with_env("CAIRN_SERVER_WORKER_THREADS", "3"));
    assert_eq!(workers(&three), "3");
}
