//! Mass issuance for a hosting platform (issue 16 §1): one ACME account
//! orders certificates for many customers' domains from several client
//! machines at once, on the `staging` preset, with real http-01 validation
//! (a responder on the validation port, `cairn testdns` resolving every name
//! to 127.0.0.1). Every certificate is checked, the account's order list
//! must hold every order (no lost update), and any badNonce, rate limit or
//! failed validation fails the run.
//!
//! The 500-domain run is in CI on both backends; the 6,000-domain
//! measurement of BENCHMARKS.md is the same run, scaled up (`#[ignore]`d):
//!
//! ```sh
//! cargo nextest run --release --test mass_issuance --run-ignored only --no-capture
//! ```

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How long one order may take to become ready or valid.
const T: Duration = Duration::from_secs(60);
const WEEK: u64 = 7 * 86_400;
/// Public suffixes of the customers' domains: ICANN ones of one and two
/// labels and a private one (a shop platform's own), so registered domains
/// must come from the Public Suffix List, not from counting labels.
const SUFFIXES: [&str; 4] = ["com", "co.uk", "com.au", "myshopify.com"];
/// The platform's servers, as the source addresses of their connections.
const SOURCES: [Ipv4Addr; 2] = [Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)];
/// Orders in flight at once over all sources: each holds one pending
/// authorization, far below the 300 an account may hold.
const WORKERS: usize = 32;

/// Customer `i`'s own registered domain.
fn customer(i: usize) -> String {
    format!("shop{i}.{}", SUFFIXES[i % SUFFIXES.len()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_issues_for_500_customers_from_two_addresses() {
    mass_issuance(500).await;
}

/// The figure in BENCHMARKS.md and the README: build with `--release`;
/// `CAIRN_MASS_DOMAINS` changes the count, `CAIRN_TEST_BACKEND=postgres`
/// the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement of several minutes: 6,000 domains"]
async fn measure_6000_customers() {
    let n = std::env::var("CAIRN_MASS_DOMAINS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6000);
    mass_issuance(n).await;
}

async fn mass_issuance(n: usize) {
    let dns = TestDns::start();
    // The staging preset as shipped, except: private validation targets
    // (everything here is loopback), and one certificate per registered
    // domain a week, so that two customers sharing a bucket would show.
    let server = Server::start(
        ServerOpts::test()
            .with_preset("staging")
            .with_dns(dns.dns_addr)
            .with_env("CAIRN_VA_ALLOW_PRIVATE_ADDRESSES", "true")
            .with_env("CAIRN_LIMITS_WINDOWS_CERTIFICATES_PER_DOMAIN_BURST", "1")
            .with_env("CAIRN_LIMITS_WINDOWS_CERTIFICATES_PER_DOMAIN_COUNT", "1")
            .with_env(
                "CAIRN_LIMITS_WINDOWS_CERTIFICATES_PER_DOMAIN_PERIOD_SECS",
                &WEEK.to_string(),
            ),
    );
    let responder = Arc::new(Http01Responder::start(server.http01_port));
    let http: Vec<reqwest::Client> = SOURCES.iter().map(|ip| client_from(&server, *ip)).collect();
    let account = AcmeClient::from_parts(
        http[0].clone(),
        &server.dir_url,
        AcmeKey::generate(KeyKind::Es256),
    )
    .await;
    account.register().await;
    // One client per worker, as each platform server runs its own ACME
    // client: the same account key and URL, its own connection and nonces.
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let c = AcmeClient::from_parts(
            http[w % http.len()].clone(),
            &server.dir_url,
            AcmeKey::generate(KeyKind::Es256),
        )
        .await;
        c.set_key_of(&account);
        c.set_kid(account.kid());
        workers.push(c);
    }

    let verifier = Arc::new(ChainVerifier::new(&server.root_pem()));
    let next = Arc::new(AtomicUsize::new(0));
    let sample = Arc::new(OnceLock::new());
    let server_pid = server.pid().expect("server running").to_string();
    let cpu_before = (cpu_seconds(&server_pid), cpu_seconds("self"));
    let started = Instant::now();
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|c| {
            let (responder, verifier, next, sample) = (
                responder.clone(),
                verifier.clone(),
                next.clone(),
                sample.clone(),
            );
            tokio::spawn(async move {
                let mut orders = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return orders;
                    }
                    let name = customer(i);
                    let (order_url, pem) = issue_http01(&c, &responder, &name).await;
                    let names = verifier
                        .verify(&pem)
                        .unwrap_or_else(|e| panic!("{name}: {e}\n{pem}"));
                    assert_eq!(names, [name], "the certificate's names");
                    let _ = sample.set(pem);
                    orders.push(order_url);
                }
            })
        })
        .collect();
    let mut issued = BTreeSet::new();
    for t in tasks {
        match t.await {
            Ok(orders) => issued.extend(orders),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let per_issuance_ms = |before: Option<f64>, pid: &str| match (before, cpu_seconds(pid)) {
        (Some(b), Some(a)) => format!("{:.1} ms", (a - b) * 1e3 / n as f64),
        _ => "n/a".to_string(),
    };
    let (server_ms, client_ms) = (
        per_issuance_ms(cpu_before.0, &server_pid),
        per_issuance_ms(cpu_before.1, "self"),
    );
    assert_eq!(issued.len(), n, "distinct valid orders");
    println!(
        "{n} certificates for {n} registered domains, one account, {} sources, \
         {WORKERS} orders in flight, {}: {elapsed:.1} s ({:.1} s per 1,000, {:.0}/s); \
         CPU per issuance: server {server_ms}, this test (client) {client_ms}",
        SOURCES.len(),
        if postgres_backend() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        elapsed * 1000.0 / n as f64,
        n as f64 / elapsed
    );
    assert!(responder.hits() >= n, "every name was validated over HTTP");
    // The verifier does refuse: a leaf without its intermediate has no path
    // to the root.
    let leaf = der_to_pem(&pem_to_ders(sample.get().expect("a certificate"))[0]);
    assert!(verifier.verify(&leaf).is_err(), "a leaf alone verified");

    // No lost update: the account lists every one of its orders.
    assert_eq!(account_orders(&account).await, issued);

    // Customers never shared a bucket (each spent its registered domain's
    // only token above); a customer's subdomain shares its customer's.
    for (i, suffix) in SUFFIXES.iter().enumerate() {
        let registered = customer(i);
        let r = account
            .new_order_raw(AcmeClient::order_payload(&[&format!("www.{registered}")]))
            .await;
        let p = assert_problem(&r, 429, "rateLimited");
        assert_eq!(p["limit"], "certificatesPerDomain", "{suffix}: {r}");
        assert_eq!(
            p["key"], registered,
            "the refusal counts the customer's registered domain:\n{r}"
        );
        assert!(r.retry_after().is_some(), "{r}");
    }
    account.new_order(&[&customer(n)]).await;
}

/// User plus system CPU seconds of a process (`self` or a pid), all
/// threads, from /proc; `None` where there is no /proc.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses: utime
    // and stime are the 12th and 13th of them (proc(5)).
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let ticks = fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?;
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()?;
    let per_second: f64 = String::from_utf8(out.stdout).ok()?.trim().parse().ok()?;
    Some(ticks as f64 / per_second)
}

/// A client whose connections leave from `source`; `localhost` is pinned
/// to the IPv4 listener so no connection goes out over `::1` instead.
fn client_from(server: &Server, source: Ipv4Addr) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(server.root_pem().as_bytes()).expect("root.pem");
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .local_address(IpAddr::V4(source))
        .resolve(
            "localhost",
            SocketAddr::from(([127, 0, 0, 1], server.listen_port)),
        )
        .build()
        .expect("reqwest client")
}

/// One certificate for `name`: newOrder, the http-01 challenge served by
/// `responder`, finalize, download. Returns (order URL, PEM chain).
async fn issue_http01(c: &AcmeClient, responder: &Http01Responder, name: &str) -> (String, String) {
    let (order_url, order) = c.new_order(&[name]).await;
    let authz_url = &AcmeClient::authz_urls(&order)[0];
    let authz = c.post_as_get(authz_url).await.expect_status(200).json();
    let ch = AcmeClient::challenge(&authz, "http-01")
        .unwrap_or_else(|| panic!("no http-01 challenge: {authz}"));
    let token = ch["token"].as_str().expect("token");
    responder.set(token, &c.key_authorization(token));
    c.post(ch["url"].as_str().expect("challenge url"), Some(json!({})))
        .await
        .expect_status(200);
    let order = c.wait_status(&order_url, &["ready", "invalid"], T).await;
    assert_eq!(order["status"], "ready", "{name}: {order}");
    responder.remove(token);
    let (csr, _) = make_csr(&[name], CertKey::P256);
    let mut order = c.finalize(&order, &csr).await.expect_status(200).json();
    if order["status"] != "valid" {
        order = c.wait_status(&order_url, &["valid", "invalid"], T).await;
    }
    assert_eq!(order["status"], "valid", "{name}: {order}");
    let pem = c
        .download_cert_pem(order["certificate"].as_str().expect("certificate URL"))
        .await;
    (order_url, pem)
}

/// Every order URL in the account's orders list, following `rel="next"`.
async fn account_orders(c: &AcmeClient) -> BTreeSet<String> {
    let acct = c.post_as_get(&c.account_url()).await.expect_status(200);
    let mut next = acct.json()["orders"].as_str().map(str::to_string);
    let mut all = BTreeSet::new();
    while let Some(url) = next {
        let r = c.post_as_get(&url).await.expect_status(200);
        let page: Value = r.json();
        for o in page["orders"].as_array().expect("orders array") {
            assert!(
                all.insert(o.as_str().expect("order URL").to_string()),
                "listed twice: {o}"
            );
        }
        next = r.link("next");
    }
    all
}
