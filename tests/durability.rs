//! Nothing the server acknowledged is lost when it is killed (SIGKILL) in
//! the middle of a burst of issuances: every account, order and certificate
//! answered with a 2xx is there after a restart. On the dev preset (SQLite
//! `synchronous = full`) and the test preset (`normal`: a commit is
//! acknowledged once the operating system has it, which survives the
//! process dying). Run on either backend.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the server acknowledged to one client.
#[derive(Default)]
struct Acked {
    account: Option<String>,
    orders: Vec<String>,
    certificates: Vec<String>,
}

/// Issue certificates in a loop until the server goes away (or, as a
/// client may reconnect to the restarted server at once, until `stop`),
/// recording each acknowledgement as it arrives. Any failure ends it.
async fn issue_until_killed(
    c: Arc<AcmeClient>,
    n: usize,
    acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicBool>,
) {
    let r = c.new_account(&[], true).await;
    if r.status != 201 {
        return;
    }
    acked.lock().unwrap().account = r.location();
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let name = format!("d{n}-{i}.example.com");
        let r = c.new_order_raw(AcmeClient::order_payload(&[&name])).await;
        let (Some(order_url), 201) = (r.location(), r.status) else {
            return;
        };
        acked.lock().unwrap().orders.push(order_url.clone());
        let order = r.json();
        let ready = c.authorize_always_valid(&order_url, &order).await;
        let (csr, _) = make_csr(&[&name], CertKey::P256);
        let r = c.finalize(&ready, &csr).await;
        if r.status != 200 {
            return;
        }
        let done = r.json();
        match done["certificate"].as_str() {
            Some(cert) if done["status"] == "valid" => {
                acked.lock().unwrap().certificates.push(cert.to_string())
            }
            _ => return,
        }
    }
}

async fn kill_mid_burst_loses_nothing(opts: ServerOpts) {
    let mut server = Server::start(opts);
    let mut clients = Vec::new();
    let mut tasks = Vec::new();
    let stop = Arc::new(AtomicBool::new(false));
    for n in 0..4 {
        let c = Arc::new(AcmeClient::new(&server, KeyKind::Es256).await);
        let acked = Arc::new(Mutex::new(Acked::default()));
        // A panic in a helper when the server dies ends the task only.
        tasks.push(tokio::spawn(issue_until_killed(
            c.clone(),
            n,
            acked.clone(),
            stop.clone(),
        )));
        clients.push((c, acked));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::task::block_in_place(|| server.restart());
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }

    let mut issued = 0;
    for (c, acked) in clients {
        let mut c = Arc::into_inner(c).expect("the task ended");
        c.reconnect(&server);
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        let account = acked
            .account
            .as_deref()
            .expect("an account before the kill");
        let r = c.post_as_get(account).await;
        assert_eq!(r.status, 200, "account {account} lost: {r}");
        for url in &acked.orders {
            let r = c.post_as_get(url).await;
            assert_eq!(r.status, 200, "order {url} lost: {r}");
        }
        for url in &acked.certificates {
            let r = c.post_as_get(url).await;
            assert_eq!(r.status, 200, "certificate {url} lost: {r}");
        }
        issued += acked.certificates.len();
    }
    assert!(issued > 0, "no certificate issued before the kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_acknowledged_on_the_dev_preset() {
    kill_mid_burst_loses_nothing(
        ServerOpts::always_valid()
            .with_preset("dev")
            // dev's production limits would stop the burst within seconds.
            .with_env("CAIRN_LIMITS_PROFILE", "staging"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_acknowledged_on_the_test_preset() {
    kill_mid_burst_loses_nothing(ServerOpts::always_valid()).await;
}
