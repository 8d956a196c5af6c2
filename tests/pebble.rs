//! Cairn as a drop-in for Pebble and pebble-challtestsrv, against the real
//! binary run under those two names (symlinks), as client suites run them:
//! `pebble -config FILE -dnsserver ADDR -strict` with a typical Pebble JSON
//! configuration, and `pebble-challtestsrv -management ... -http01 ...`.
//!
//! Each test starts its own pair on free loopback ports, with its own
//! listener certificate (a throwaway CA made here, as Pebble's test
//! certificates are), and drives them over HTTPS, DNS and the challenge
//! test server's API.

mod common;

use common::{b64u, free_port, free_tcp_udp_port, AcmeClient, AcmeKey, CertKey, KeyKind};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A throwaway CA and a certificate for localhost, 127.0.0.1 and ::1 it
/// issued, written as PEM files in `dir` (Pebble's configuration names a
/// certificate and key; its clients trust the CA).
struct ListenerCert {
    ca_pem: String,
    cert: PathBuf,
    key: PathBuf,
}

fn listener_cert(dir: &Path) -> ListenerCert {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "test listener CA");
    let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .expect("params");
    let cert = params.signed_by(&key, &issuer).expect("cert");
    let (cert_path, key_path) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    ListenerCert {
        ca_pem: ca_cert.pem(),
        cert: cert_path,
        key: key_path,
    }
}

/// The binary under another name, in `dir`.
fn named(dir: &Path, name: &str) -> PathBuf {
    let link = dir.join(name);
    std::os::unix::fs::symlink(common::cairn_bin(), &link).expect("symlink");
    link
}

/// A child process killed on drop; its output goes to a file shown on
/// failure.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(cmd: &mut Command, log: PathBuf) -> Proc {
        common::scrub_env(cmd);
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn");
        Proc {
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit by itself; its status and log.
    fn wait_exit(&mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                return (st, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "still running after {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `addr` accepts TCP connections.
    fn wait_tcp(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("exited ({st}) before {addr} answered:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{addr} not up after 20 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log.display(), self.log());
        }
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `pebble-challtestsrv` on free loopback ports, with 2.4's flag names
/// (`-dns01`) or current ones (`-dnsserver`).
struct ChallTestSrv {
    proc: Proc,
    api: SocketAddr,
    dns: SocketAddr,
    http01: SocketAddr,
    tlsalpn01: SocketAddr,
}

impl ChallTestSrv {
    fn start(dir: &Path, dns_flag: &str, extra: &[&str]) -> ChallTestSrv {
        let (api, dns) = (loopback(free_port()), loopback(free_tcp_udp_port()));
        let (http01, tlsalpn01) = (loopback(free_port()), loopback(free_port()));
        let mut cmd = Command::new(named(dir, "pebble-challtestsrv"));
        cmd.args(["-management", &api.to_string()])
            .args([dns_flag, &dns.to_string()])
            .args(["-http01", &http01.to_string()])
            .args(["-tlsalpn01", &tlsalpn01.to_string()])
            .args(extra);
        let mut proc = Proc::spawn(&mut cmd, dir.join("challtestsrv.log"));
        for a in [api, dns, http01, tlsalpn01] {
            proc.wait_tcp(a);
        }
        ChallTestSrv {
            proc,
            api,
            dns,
            http01,
            tlsalpn01,
        }
    }

    /// POSTs to the management API; (status, body).
    fn post(&self, path: &str, body: Value) -> (u16, String) {
        common::http_post_blocking(self.api, path, &body.to_string())
            .unwrap_or_else(|e| panic!("{path}: {e}\n{}", self.proc.log()))
    }

    fn ok(&self, path: &str, body: Value) {
        let (st, b) = self.post(path, body.clone());
        assert_eq!(st, 200, "{path} {body}: {b}");
    }

    fn history(&self, kind: &str, host: &str) -> Vec<Value> {
        let (st, b) = self.post(&format!("/{kind}-request-history"), json!({"host": host}));
        assert_eq!(st, 200, "{kind} history: {b}");
        serde_json::from_str::<Vec<Value>>(&b).unwrap_or_else(|e| panic!("{e}: {b:?}"))
    }
}

/// `pebble` (the binary under that name) with a typical Pebble JSON
/// configuration on free loopback ports, validating through `chall`.
struct Pebble {
    proc: Proc,
    dir_url: String,
    mgmt_url: String,
    http: reqwest::Client,
}

fn pebble_config(cert: &ListenerCert, listen: u16, mgmt: u16, chall: &ChallTestSrv) -> Value {
    json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{listen}"),
        "managementListenAddress": format!("127.0.0.1:{mgmt}"),
        "certificate": cert.cert,
        "privateKey": cert.key,
        "httpPort": chall.http01.port(),
        "tlsPort": chall.tlsalpn01.port(),
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
        "externalAccountMACKeys": {},
        "domainBlocklist": ["blocked-domain.example"],
        "retryAfter": {"authz": 3, "order": 5},
        "keyAlgorithm": "ecdsa",
        "profiles": {
            "default": {"description": "The profile you know and love", "validityPeriod": 7776000},
            "shortlived": {"description": "A short-lived cert profile", "validityPeriod": 518400}
        }
    }})
}

impl Pebble {
    /// `cmd` is the binary as `pebble` or as `cairn pebble`.
    fn start(
        dir: &Path,
        cmd: Command,
        cert: &ListenerCert,
        chall: &ChallTestSrv,
        env: &[(&str, &str)],
    ) -> Pebble {
        Pebble::start_with(dir, cmd, cert, chall, env, &json!({}))
    }

    /// `start`, with `settings` (members of `"pebble"`) over the typical
    /// configuration.
    fn start_with(
        dir: &Path,
        mut cmd: Command,
        cert: &ListenerCert,
        chall: &ChallTestSrv,
        env: &[(&str, &str)],
        settings: &Value,
    ) -> Pebble {
        let (listen, mgmt) = (free_port(), free_port());
        let config = dir.join("pebble-config.json");
        let mut json = pebble_config(cert, listen, mgmt, chall);
        if let (Some(p), Some(extra)) = (json["pebble"].as_object_mut(), settings.as_object()) {
            p.extend(extra.clone());
        }
        std::fs::write(&config, json.to_string()).expect("config");
        cmd.arg("-config")
            .arg(&config)
            .args(["-dnsserver", &chall.dns.to_string()])
            .arg("-strict")
            .envs(env.iter().copied());
        let mut proc = Proc::spawn(&mut cmd, dir.join("pebble.log"));
        proc.wait_tcp(loopback(listen));
        proc.wait_tcp(loopback(mgmt));
        let root = reqwest::Certificate::from_pem(cert.ca_pem.as_bytes()).expect("CA");
        let http = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(root)
            .timeout(Duration::from_secs(20))
            .build()
            .expect("client");
        Pebble {
            proc,
            dir_url: format!("https://127.0.0.1:{listen}/dir"),
            mgmt_url: format!("https://127.0.0.1:{mgmt}"),
            http,
        }
    }

    async fn mgmt_get(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.mgmt_url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.proc.log()));
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }
}

/// Issues a certificate for `http.example.com` (http-01) and
/// `alpn.example.com` (tls-alpn-01) through Pebble's `/dir`, answering the
/// challenges through the challenge test server's responders; returns the
/// PEM chain.
async fn issue(p: &Pebble, chall: &ChallTestSrv) -> String {
    issue_finalizing(p, chall).await.0
}

/// [`issue`], and the finalize's `Retry-After`.
async fn issue_finalizing(p: &Pebble, chall: &ChallTestSrv) -> (String, Option<String>) {
    let client = AcmeClient::from_parts(
        p.http.clone(),
        &p.dir_url,
        AcmeKey::generate(KeyKind::Es256),
    )
    .await;
    // Pebble (and Cairn as Pebble) refuses some good nonces on purpose.
    client.retry_bad_nonce();
    client.register().await;
    let (order_url, order) = client
        .new_order(&["http.example.com", "alpn.example.com"])
        .await;
    for authz_url in AcmeClient::authz_urls(&order) {
        let authz = client.post_as_get(&authz_url).await.ok().json();
        let name = authz["identifier"]["value"].as_str().expect("name");
        let kind = if name.starts_with("http.") {
            "http-01"
        } else {
            "tls-alpn-01"
        };
        let ch = AcmeClient::challenge(&authz, kind).expect("challenge");
        let token = ch["token"].as_str().expect("token");
        let ka = client.key_authorization(token);
        if kind == "http-01" {
            chall.ok("/add-http01", json!({"token": token, "content": ka}));
        } else {
            chall.ok("/add-tlsalpn01", json!({"host": name, "content": ka}));
        }
        let r = client
            .post(ch["url"].as_str().expect("url"), Some(json!({})))
            .await;
        assert_eq!(r.status, 200, "{r}");
    }
    let order = client
        .wait_status(&order_url, &["ready"], Duration::from_secs(20))
        .await;
    let (csr, _) = common::make_csr(&["http.example.com", "alpn.example.com"], CertKey::P256);
    let r = client.finalize(&order, &csr).await;
    assert_eq!(r.status, 200, "finalize: {r}");
    let retry_after = r.header("retry-after");
    let order = client
        .wait_status(&order_url, &["valid"], Duration::from_secs(20))
        .await;
    let pem = client
        .download_cert_pem(order["certificate"].as_str().expect("certificate"))
        .await;
    (pem, retry_after)
}

fn serial_of(pem: &str) -> String {
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("X.509");
    cert.raw_serial_as_string().replace(':', "")
}

use rustls::pki_types::pem::PemObject;

/// The binary run as `pebble` with a typical Pebble configuration serves
/// `/dir`, validates http-01 and tls-alpn-01 through pebble-challtestsrv's
/// responders, issues, and its HTTPS management interface serves the root,
/// the intermediate, their keys and the certificate's status.
#[tokio::test]
async fn pebble_by_name_serves_dir_and_issues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = listener_cert(dir.path());
    let chall = ChallTestSrv::start(dir.path(), "-dnsserver", &["-https01", "", "-doh", ""]);
    let p = Pebble::start(
        dir.path(),
        Command::new(named(dir.path(), "pebble")),
        &cert,
        &chall,
        &[("PEBBLE_VA_NOSLEEP", "1")],
    );

    let r = p.http.get(&p.dir_url).send().await.expect("GET /dir");
    assert_eq!(r.status(), 200);
    // The test preset's one runtime thread (server.worker_threads).
    let log = p.proc.log();
    assert!(log.contains("serving from 1 runtime thread(s)"), "{log}");
    let d: Value = serde_json::from_str(&r.text().await.expect("body")).expect("directory JSON");
    for k in [
        "newNonce",
        "newAccount",
        "newOrder",
        "revokeCert",
        "keyChange",
    ] {
        assert!(d[k].as_str().is_some(), "no {k} in {d}");
    }
    assert_eq!(
        d["meta"]["caaIdentities"],
        json!(["pebble.letsencrypt.org"])
    );

    let chain = issue(&p, &chall).await;

    // The validation requests reached the responders, and were recorded.
    let seen = chall.history("http", "http.example.com");
    assert!(
        seen.iter().any(|e| e["URL"]
            .as_str()
            .unwrap_or("")
            .contains("/.well-known/acme-challenge/")),
        "{seen:?}"
    );
    let seen = chall.history("tlsalpn01", "alpn.example.com");
    assert_eq!(
        seen[0]["SupportedProtos"],
        json!(["acme-tls/1"]),
        "{seen:?}"
    );
    assert!(!chall.history("dns", "http.example.com").is_empty());

    // Management over HTTPS: root, intermediate, keys, certificate status.
    let (st, root) = p.mgmt_get("/roots/0").await;
    assert_eq!(st, 200);
    let (st, inter) = p.mgmt_get("/intermediates/0").await;
    assert_eq!(st, 200);
    assert!(
        chain.contains(inter.trim()),
        "the chain ends in /intermediates/0"
    );
    assert!(!chain.contains(root.trim()));
    for path in ["/root-keys/0", "/intermediate-keys/0"] {
        let (st, key) = p.mgmt_get(path).await;
        assert_eq!(st, 200, "{path}");
        assert!(key.contains("PRIVATE KEY"), "{path}: {key}");
    }
    assert_eq!(p.mgmt_get("/roots/1").await.0, 404);
    let serial = serial_of(&chain);
    let (st, body) = p
        .mgmt_get(&format!("/cert-status-by-serial/{serial}"))
        .await;
    assert_eq!(st, 200, "{body}");
    let status: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(status["Status"], "Valid", "{status}");
    assert!(status["Certificate"]
        .as_str()
        .is_some_and(|c| chain.starts_with(c.trim())));
    assert_eq!(
        p.mgmt_get("/cert-status-by-serial/00ff").await.0,
        404,
        "unknown serial"
    );
    assert_eq!(p.mgmt_get("/cert-status-by-serial/xyz").await.0, 400);

    // The domain block list.
    let client = AcmeClient::from_parts(
        p.http.clone(),
        &p.dir_url,
        AcmeKey::generate(KeyKind::Es256),
    )
    .await;
    // Pebble (and Cairn as Pebble) refuses some good nonces on purpose.
    client.retry_bad_nonce();
    client.register().await;
    let r = client
        .new_order_raw(AcmeClient::order_payload(&["blocked-domain.example"]))
        .await;
    assert_eq!(r.status, 400, "{r}");
    assert_eq!(
        r.problem_type().as_deref(),
        Some("urn:ietf:params:acme:error:rejectedIdentifier")
    );
    // -strict and the variables were reported, not ignored.
    let log = p.proc.log();
    assert!(log.contains("-strict"), "{log}");
    // Pebble's profiles are the directory's, and are honoured.
    let profiles = client.directory()["meta"]["profiles"].clone();
    let names: Vec<&String> = profiles
        .as_object()
        .expect("meta.profiles")
        .keys()
        .collect();
    assert_eq!(names, ["default", "shortlived"], "{profiles}");
    let mut payload = AcmeClient::order_payload(&["short.example.com"]);
    payload["profile"] = serde_json::json!("shortlived");
    let r = client.new_order_raw(payload).await;
    assert_eq!(r.status, 201, "{r}");
    assert_eq!(r.json()["profile"], "shortlived");
    let (_, order) = client.new_order(&["plain.example.com"]).await;
    assert_eq!(order["profile"], "default");
}

/// A profile of a few seconds, as suites configure to see a client renew
/// (tokio-rustls-acme's `validityPeriod: 10`), starts and issues a
/// certificate of exactly that validity that is valid when it arrives:
/// the backdating of notBefore does not eat a short certificate's life.
#[tokio::test]
async fn pebble_seconds_long_profile_issues_live_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = listener_cert(dir.path());
    let chall = ChallTestSrv::start(dir.path(), "-dnsserver", &["-https01", "", "-doh", ""]);
    let p = Pebble::start_with(
        dir.path(),
        Command::new(named(dir.path(), "pebble")),
        &cert,
        &chall,
        &[("PEBBLE_VA_NOSLEEP", "1"), ("PEBBLE_WFE_NONCEREJECT", "0")],
        &json!({"profiles": {"default": {"description": "renew me", "validityPeriod": 10}}}),
    );
    let chain = issue(&p, &chall).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(chain.as_bytes()).expect("PEM");
    let (_, leaf) = x509_parser::parse_x509_certificate(&der).expect("X.509");
    let (nb, na) = (
        leaf.validity().not_before.timestamp(),
        leaf.validity().not_after.timestamp(),
    );
    assert_eq!(na - nb, 10, "validity of the profile");
    assert!(
        nb <= now && now < na,
        "not valid on arrival: {nb}..{na}, now {now}"
    );
    // Most of its life is still ahead: a client renewing at two thirds
    // (tokio-rustls-acme) renews a live certificate.
    assert!(na - now >= 5, "{nb}..{na}, now {now}");
}

/// `cairn pebble` behaves the same; Pebble's variables it cannot honour
/// are warnings naming them, unknown keys stop it, and state is temporary
/// unless `-datadir` keeps it.
#[tokio::test]
async fn cairn_pebble_reports_what_it_cannot_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = listener_cert(dir.path());
    let chall = ChallTestSrv::start(dir.path(), "-dns01", &["-https01", ""]);
    let data = dir.path().join("data");
    let mut cmd = Command::new(common::cairn_bin());
    cmd.arg("pebble").arg("-datadir").arg(&data);
    let p = Pebble::start(
        dir.path(),
        cmd,
        &cert,
        &chall,
        &[
            ("PEBBLE_WFE_NONCEREJECT", "10"),
            ("PEBBLE_ALTERNATE_ROOTS", "2"),
            ("PEBBLE_VA_SLEEPTYME", "3"),
        ],
    );
    issue(&p, &chall).await;
    let log = p.proc.log();
    for name in [
        // Honoured now, as a fault rule refusing 10% of good nonces.
        "*:badNonce@10%",
        "PEBBLE_ALTERNATE_ROOTS=2",
        "PEBBLE_VA_SLEEPTYME",
        "pebble.retryAfter",
    ] {
        assert!(log.contains(name), "{name} not reported:\n{log}");
    }
    assert!(
        data.join("cairn.db").exists(),
        "-datadir keeps the database"
    );
    drop(p);

    // A misspelt key stops it, naming the key.
    let config = dir.path().join("bad.json");
    std::fs::write(
        &config,
        json!({"pebble": {"listenAdress": "127.0.0.1:1"}}).to_string(),
    )
    .expect("write");
    let mut cmd = Command::new(common::cairn_bin());
    cmd.arg("pebble").arg("-config").arg(&config);
    let mut bad = Proc::spawn(&mut cmd, dir.path().join("bad.log"));
    let (st, log) = bad.wait_exit(Duration::from_secs(20));
    assert!(!st.success());
    assert!(log.contains("\"pebble.listenAdress\""), "{log}");
}

/// Pebble's EAB settings are Cairn's: with `externalAccountBindingRequired`
/// a newAccount without a binding gets `externalAccountRequired`; a binding
/// made with a key of `externalAccountMACKeys` creates accounts (more than
/// one: Pebble's keys are reusable), one with a wrong MAC is refused; and a
/// restart on the same `-datadir` puts the keys in again without complaint.
#[tokio::test]
async fn pebble_eab_settings_bind_accounts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = listener_cert(dir.path());
    let chall = ChallTestSrv::start(dir.path(), "-dns01", &["-https01", ""]);
    let data = dir.path().join("data");
    // instant-acme's eab_required test key.
    let mac = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let eab = json!({
        "externalAccountBindingRequired": true,
        "externalAccountMACKeys": {"test-account": mac}
    });
    let pebble = named(dir.path(), "pebble");
    for run in 0..2 {
        let mut cmd = Command::new(&pebble);
        cmd.arg("-datadir").arg(&data);
        let p = Pebble::start_with(dir.path(), cmd, &cert, &chall, &[], &eab);
        let c = AcmeClient::from_parts(
            p.http.clone(),
            &p.dir_url,
            AcmeKey::generate(KeyKind::Es256),
        )
        .await;
        c.retry_bad_nonce();
        assert_eq!(c.directory()["meta"]["externalAccountRequired"], true);
        let r = c.new_account(&[], true).await;
        common::assert_problem(&r, 401, "externalAccountRequired");
        let r = c
            .new_account_eab("test-account", &b64u(b"another key"))
            .await;
        common::assert_problem(&r, 403, "unauthorized");
        let r = c.new_account_eab("test-account", mac).await;
        assert_eq!(r.status, 201, "run {run}: {r}\n{}", p.proc.log());
    }
}

fn dns_query(addr: SocketAddr, name: &str, t: RecordType) -> Message {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    sock.send_to(&query_bytes(name, t), addr).expect("send");
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("DNS answer");
    Message::from_vec(&buf[..n]).expect("DNS message")
}

fn query_bytes(name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(7)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), t));
    m.to_vec().expect("encode")
}

fn rdata(m: &Message) -> Vec<String> {
    m.answers()
        .iter()
        .map(|r| match r.data() {
            RData::TXT(t) => t.to_string(),
            other => other.to_string(),
        })
        .collect()
}

/// A TLS handshake offering ALPN `protos` for `sni`: the certificate's DER,
/// or None when the handshake fails.
fn tls_handshake(addr: SocketAddr, sni: &str, protos: &[u8]) -> Option<Vec<u8>> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let mut b = SslConnector::builder(SslMethod::tls()).expect("connector");
    b.set_verify(SslVerifyMode::NONE);
    b.set_alpn_protos(protos).expect("alpn");
    let tcp = std::net::TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let tls = b.build().connect(sni, tcp).ok()?;
    tls.ssl().peer_certificate()?.to_der().ok()
}

/// Every endpoint of pebble-challtestsrv's management API, on the binary
/// run under that name with 2.4's flags (`-dns01`, `-defaultIPv4`,
/// `-defaultIPv6`, `-https01`, `-doh` with its certificate).
#[tokio::test]
async fn challtestsrv_api_endpoint_by_endpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = listener_cert(dir.path());
    let (https01, doh) = (loopback(free_port()), loopback(free_port()));
    let c = ChallTestSrv::start(
        dir.path(),
        "-dns01",
        &[
            "-https01",
            &https01.to_string(),
            "-doh",
            &doh.to_string(),
            "-doh-cert",
            cert.cert.to_str().expect("path"),
            "-doh-cert-key",
            cert.key.to_str().expect("path"),
            "-defaultIPv4",
            "10.0.0.1",
            "-defaultIPv6",
            "",
        ],
    );
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let http01 = |path: &str| format!("http://{}{path}", c.http01);
    let get = |url: String| {
        let plain = plain.clone();
        async move {
            let r = plain
                .get(&url)
                .header("host", "h.example.com")
                .send()
                .await
                .expect("GET");
            let loc = r
                .headers()
                .get("location")
                .map(|v| v.to_str().unwrap_or("").to_string());
            (r.status().as_u16(), loc, r.text().await.unwrap_or_default())
        }
    };

    // http-01: add, serve, delete; redirects; history.
    c.ok("/add-http01", json!({"token": "tok", "content": "tok.ka"}));
    let (st, _, body) = get(http01("/.well-known/acme-challenge/tok")).await;
    assert_eq!((st, body.as_str()), (200, "tok.ka"));
    c.ok("/del-http01", json!({"token": "tok"}));
    assert_eq!(get(http01("/.well-known/acme-challenge/tok")).await.2, "");
    c.ok(
        "/add-redirect",
        json!({"path": "/r", "targetURL": "https://elsewhere.example/x"}),
    );
    let (st, loc, _) = get(http01("/r")).await;
    assert_eq!(
        (st, loc.as_deref()),
        (302, Some("https://elsewhere.example/x"))
    );
    c.ok("/del-redirect", json!({"path": "/r"}));
    assert_eq!(get(http01("/r")).await.0, 200);
    assert_eq!(c.post("/add-http01", json!({"token": "t"})).0, 400);
    assert_eq!(
        c.post("/add-redirect", json!({"path": "", "targetURL": "x"}))
            .0,
        400
    );

    // https-01: the same tokens over TLS (self-signed), recorded as HTTPS.
    c.ok(
        "/add-http01",
        json!({"token": "tok2", "content": "tok2.ka"}),
    );
    let insecure = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("client");
    let r = insecure
        .get(format!("https://{https01}/.well-known/acme-challenge/tok2"))
        .send()
        .await
        .expect("https-01 GET");
    assert_eq!(r.text().await.expect("body"), "tok2.ka");
    let seen = c.history("http", "h.example.com");
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen[0]["URL"], "/.well-known/acme-challenge/tok");
    assert_eq!(seen[0]["HTTPS"], false);
    assert!(c
        .history("http", "127.0.0.1")
        .iter()
        .any(|e| e["HTTPS"] == true));
    c.ok(
        "/clear-request-history",
        json!({"host": "h.example.com", "type": "http"}),
    );
    assert!(c.history("http", "h.example.com").is_empty());
    assert_eq!(
        c.post(
            "/clear-request-history",
            json!({"host": "h", "type": "smtp"})
        )
        .0,
        400
    );

    // tls-alpn-01: a certificate with SHA-256 of the content, only for a
    // host with content and only to acme-tls/1.
    c.ok(
        "/add-tlsalpn01",
        json!({"host": "a.example.com", "content": "ka"}),
    );
    let der = tls_handshake(c.tlsalpn01, "a.example.com", b"\x0aacme-tls/1").expect("handshake");
    let (_, x) = x509_parser::parse_x509_certificate(&der).expect("X.509");
    let ext = x
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
        .expect("acmeIdentifier");
    assert!(ext.critical);
    let digest = Sha256::digest(b"ka");
    assert_eq!(&ext.value[2..], digest.as_slice());
    assert!(tls_handshake(c.tlsalpn01, "a.example.com", b"\x08http/1.1").is_none());
    assert!(tls_handshake(c.tlsalpn01, "b.example.com", b"\x0aacme-tls/1").is_none());
    c.ok("/del-tlsalpn01", json!({"host": "a.example.com"}));
    assert!(tls_handshake(c.tlsalpn01, "a.example.com", b"\x0aacme-tls/1").is_none());
    let seen = c.history("tlsalpn01", "a.example.com");
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[1]["SupportedProtos"], json!(["http/1.1"]));
    c.ok(
        "/clear-request-history",
        json!({"host": "a.example.com", "type": "tlsalpn"}),
    );
    assert!(c.history("tlsalpn01", "a.example.com").is_empty());

    // DNS: the defaults from the flags, then every record endpoint.
    let dns = c.dns;
    assert_eq!(
        rdata(&dns_query(dns, "any.example.", RecordType::A)),
        ["10.0.0.1"]
    );
    assert!(dns_query(dns, "any.example.", RecordType::AAAA)
        .answers()
        .is_empty());
    c.ok("/set-default-ipv4", json!({"ip": "10.0.0.2"}));
    c.ok("/set-default-ipv6", json!({"ip": "::2"}));
    assert_eq!(
        rdata(&dns_query(dns, "any.example.", RecordType::A)),
        ["10.0.0.2"]
    );
    assert_eq!(
        rdata(&dns_query(dns, "any.example.", RecordType::AAAA)),
        ["::2"]
    );
    c.ok(
        "/add-a",
        json!({"host": "a.example.", "addresses": ["10.1.1.1"]}),
    );
    c.ok(
        "/add-aaaa",
        json!({"host": "a.example.", "addresses": ["fd00::1"]}),
    );
    assert_eq!(
        rdata(&dns_query(dns, "a.example.", RecordType::A)),
        ["10.1.1.1"]
    );
    assert_eq!(
        rdata(&dns_query(dns, "a.example.", RecordType::AAAA)),
        ["fd00::1"]
    );
    c.ok("/clear-a", json!({"host": "a.example."}));
    c.ok("/clear-aaaa", json!({"host": "a.example."}));
    assert_eq!(
        rdata(&dns_query(dns, "a.example.", RecordType::A)),
        ["10.0.0.2"]
    );
    c.ok(
        "/set-txt",
        json!({"host": "_acme-challenge.t.example.", "value": "v1"}),
    );
    assert_eq!(
        rdata(&dns_query(
            dns,
            "_acme-challenge.t.example.",
            RecordType::TXT
        )),
        ["v1"]
    );
    c.ok("/clear-txt", json!({"host": "_acme-challenge.t.example."}));
    assert!(
        dns_query(dns, "_acme-challenge.t.example.", RecordType::TXT)
            .answers()
            .is_empty()
    );
    c.ok(
        "/add-caa",
        json!({"host": "c.example.", "policies": [{"tag": "issue", "value": "ca.example"}]}),
    );
    assert_eq!(
        dns_query(dns, "c.example.", RecordType::CAA)
            .answers()
            .len(),
        1
    );
    c.ok("/clear-caa", json!({"host": "c.example."}));
    assert!(dns_query(dns, "c.example.", RecordType::CAA)
        .answers()
        .is_empty());
    c.ok(
        "/set-cname",
        json!({"host": "alias.example.", "target": "a.example."}),
    );
    assert!(dns_query(dns, "alias.example.", RecordType::A).answers()[0]
        .data()
        .as_cname()
        .is_some());
    c.ok("/clear-cname", json!({"host": "alias.example."}));
    c.ok("/set-servfail", json!({"host": "sf.example."}));
    assert_eq!(
        dns_query(dns, "sf.example.", RecordType::A).response_code(),
        hickory_proto::op::ResponseCode::ServFail
    );
    c.ok("/clear-servfail", json!({"host": "sf.example."}));
    let seen = c.history("dns", "sf.example");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["Question"]["Name"], "sf.example.");
    assert_eq!(seen[0]["Question"]["Qtype"], 1);

    // DNS-over-HTTPS, with the certificate the flags named.
    let root = reqwest::Certificate::from_pem(cert.ca_pem.as_bytes()).expect("CA");
    let trusting = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .build()
        .expect("client");
    let doh_url = format!("https://localhost:{}/dns-query", doh.port());
    let r = trusting
        .post(&doh_url)
        .header("content-type", "application/dns-message")
        .header("user-agent", "doh-test")
        .body(query_bytes("any.example.", RecordType::A))
        .send()
        .await
        .expect("DoH POST");
    assert_eq!(r.status(), 200);
    let m = Message::from_vec(&r.bytes().await.expect("body")).expect("DNS");
    assert_eq!(rdata(&m), ["10.0.0.2"]);
    let r = trusting
        .get(format!(
            "{doh_url}?dns={}",
            b64u(query_bytes("doh.example.", RecordType::A))
        ))
        .send()
        .await
        .expect("DoH GET");
    assert_eq!(r.status(), 200);
    let seen = c.history("dns", "any.example");
    assert!(
        seen.iter().any(|e| e["UserAgent"] == "doh-test"),
        "{seen:?}"
    );
}

/// An HTTP/2 client (hyper's, which instant-acme uses) sends the host in
/// `:authority` and no `Host` header: the URLs Cairn hands out must still
/// name the host it dialled (`[::1]`), not `localhost` (which resolves to
/// 127.0.0.1 first, where nothing listens).
#[tokio::test]
async fn http2_clients_get_urls_on_the_host_they_dialled() {
    use rustls::pki_types::{CertificateDer, ServerName};
    let server = common::Server::start_ipv6(common::ServerOpts::test());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(server.root_pem().as_bytes()) {
        roots.add(c.expect("root PEM")).expect("root");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("::1", server.listen_port))
        .await
        .expect("connect [::1]");
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = h2::client::handshake(tls).await.expect("h2");
    tokio::spawn(conn);
    let req = http::Request::get(format!("https://[::1]:{}/directory", server.listen_port))
        .body(())
        .expect("request");
    let (resp, _) = send.send_request(req, true).expect("send");
    let resp = resp.await.expect("response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        bytes.extend_from_slice(&chunk.expect("data"));
    }
    let dir: Value = serde_json::from_slice(&bytes).expect("JSON");
    let want = format!("https://[::1]:{}/", server.listen_port);
    assert!(
        dir["newAccount"]
            .as_str()
            .is_some_and(|u| u.starts_with(&want)),
        "{dir}"
    );
}

/// `-strict` (which suites pass, and `Pebble::start` too) refuses ACME v1's
/// `resource` and a challenge POST body other than `{}`, as Pebble's does;
/// `-letsencrypt` brings Let's Encrypt's behaviour instead: its profiles,
/// no good nonce refused, no strict refusals, an asynchronous finalize.
#[tokio::test]
async fn strict_refusals_and_letsencrypt_behaviour() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = listener_cert(dir.path());
    let chall = ChallTestSrv::start(dir.path(), "-dnsserver", &["-https01", "", "-doh", ""]);
    let v1_order = json!({"resource": "new-order", "identifiers": [{"type": "dns", "value": "v1.example.com"}]});
    let pebble = named(dir.path(), "pebble");

    let p = Pebble::start(
        dir.path(),
        Command::new(&pebble),
        &cert,
        &chall,
        &[("PEBBLE_WFE_NONCEREJECT", "0")],
    );
    let c = AcmeClient::from_parts(
        p.http.clone(),
        &p.dir_url,
        AcmeKey::generate(KeyKind::Es256),
    )
    .await;
    c.register().await;
    let r = c.new_order_raw(v1_order.clone()).await;
    let prob = common::assert_problem(&r, 400, "malformed");
    assert!(
        prob["detail"].as_str().unwrap().contains("\"resource\""),
        "{prob}"
    );
    let (_, order) = c.new_order(&["strict.example.com"]).await;
    let authz = c
        .post_as_get(&AcmeClient::authz_urls(&order)[0])
        .await
        .json();
    let ch = AcmeClient::challenge(&authz, "http-01").expect("http-01");
    let url = ch["url"].as_str().expect("url");
    let r = c.post(url, Some(json!({"keyAuthorization": "x"}))).await;
    let prob = common::assert_problem(&r, 400, "malformed");
    assert!(
        prob["detail"].as_str().unwrap().contains("was not"),
        "{prob}"
    );
    drop(p);

    let mut cmd = Command::new(&pebble);
    cmd.arg("-letsencrypt");
    let p = Pebble::start(dir.path(), cmd, &cert, &chall, &[]);
    let c = AcmeClient::from_parts(
        p.http.clone(),
        &p.dir_url,
        AcmeKey::generate(KeyKind::Es256),
    )
    .await;
    let profiles = c.directory()["meta"]["profiles"].clone();
    let names: Vec<&String> = profiles.as_object().expect("profiles").keys().collect();
    assert_eq!(names, ["classic", "shortlived", "tlsserver"], "{profiles}");
    // No good nonce refused (Pebble's default would refuse 5%), and no
    // retry needed: 40 signed reads in a row.
    c.register().await;
    for _ in 0..40 {
        let r = c.post_as_get(&c.account_url()).await;
        assert_eq!(r.status, 200, "{r}");
    }
    // No strict refusal: Let's Encrypt takes the v1 field silently.
    assert_eq!(c.new_order_raw(v1_order).await.status, 201);
    // Finalize is asynchronous: the order first reads processing, with
    // Let's Encrypt's Retry-After (its `orderRetryAfter`, 3 s).
    let (pem, retry_after) = issue_finalizing(&p, &chall).await;
    assert!(pem.contains("BEGIN CERTIFICATE"));
    assert_eq!(retry_after.as_deref(), Some("3"));
    let log = p.proc.log();
    assert!(
        log.contains("-letsencrypt") && log.contains("finalize:processing=1"),
        "{log}"
    );
}
