//! Integration-test harness: runs the real `cairn` binary (the ACME server and the
//! mock DNS server) on free loopback ports, and drives it with a small JWS-signing
//! ACME client (`acme`), CSR and chain helpers (`certs`) and http-01 and tls-alpn-01
//! responders (`http01`, `tlsalpn`).
//!
//! Process control (`Server`, `TestDns`) is synchronous so it can be used from plain
//! `#[test]`s (client-binary tests) and from `#[tokio::test]`s alike: waiting for the
//! server's HTTPS listener runs on a private runtime in a scoped thread, never on the
//! caller's runtime. Children are killed on drop; if the test is panicking, the drop
//! prints the tail of the child's stderr, which is kept in a file.

// Every test binary compiles this module but uses only part of it.
#![allow(dead_code, unused_imports)]

pub mod acme;
pub mod admin;
pub mod certs;
pub mod db;
pub mod http01;
pub mod tlsalpn;

pub use acme::*;
pub use admin::*;
pub use certs::*;
pub(crate) use db::contract_tests;
pub use db::{postgres_backend, Fixture, TestDb};
pub use http01::*;
pub use tlsalpn::*;

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long `Server::start`/`restart` wait for the directory to answer.
pub const SERVER_START_TIMEOUT: Duration = Duration::from_secs(20);

/// The `cairn` binary cargo built for this test run.
pub fn cairn_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cairn"))
}

/// Ports handed out by this process, so two tests running in parallel never get
/// the same port between `free_port` dropping its probe socket and the child binding it.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A loopback TCP port that was free a moment ago and that this process has not
/// handed out before.
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        if HANDED_OUT
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(port)
        {
            return port;
        }
    }
}

/// Like `free_port`, but the port is also free for UDP (DNS listens on both).
pub fn free_tcp_udp_port() -> u16 {
    loop {
        let port = free_port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Runs a future to completion on a private current-thread runtime in a scoped thread,
/// so it works whether or not the caller is already inside a Tokio runtime.
pub fn block_on<F>(fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build a Tokio runtime")
                .block_on(fut)
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// A minimal blocking HTTP/1.1 POST (the testdns API is plain HTTP on loopback; this
/// keeps `TestDns` free of any async runtime). Returns (status, body).
pub fn http_post_blocking(
    addr: SocketAddr,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    s.flush()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The last `max` bytes of a log file (whole lines), for panic messages.
pub fn log_tail(path: &Path, max: usize) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let cut = text[start..]
        .find('\n')
        .map(|i| start + i + 1)
        .unwrap_or(start);
    format!("[...]\n{}", &text[cut..])
}

/// Removes every `CAIRN_*` variable the test process inherited (except the log filter),
/// so a developer's shell cannot change what the tests run against.
pub fn scrub_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str() {
            if k.starts_with("CAIRN_") && k != "CAIRN_LOG" {
                cmd.env_remove(k);
            }
        }
    }
}

fn open_log(path: &Path, banner: &str) -> (File, File) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open log {}: {e}", path.display()));
    let _ = writeln!(f, "===== harness: {banner} =====");
    let g = f.try_clone().expect("clone log file handle");
    (f, g)
}

fn kill_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill(); // SIGKILL on Unix
        let _ = c.wait();
    }
}

// ---------------------------------------------------------------------------------------
// TestDns
// ---------------------------------------------------------------------------------------

/// `cairn testdns` on free loopback ports.
pub struct TestDns {
    /// UDP+TCP address of the mock DNS server (pass to `ServerOpts::dns`).
    pub dns_addr: SocketAddr,
    /// Base URL of the HTTP API, e.g. `http://127.0.0.1:4567`.
    pub api_url: String,
    pub api_addr: SocketAddr,
    pub log_path: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl TestDns {
    /// Spawns `cairn testdns` and waits until both its API and its DNS listener answer
    /// (up to 10 s per attempt; a start that fails, e.g. on a taken port, is retried on
    /// new ports).
    pub fn start() -> TestDns {
        TestDns::start_with(&[], &[])
    }

    /// Like `start`, with extra command-line arguments and environment (e.g. the
    /// write throttle: `--write-rate 6/s`).
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> TestDns {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_path = dir.path().join("testdns.log");
        let mut errors = Vec::new();
        for attempt in 1..=3 {
            let dns_addr: SocketAddr = ([127, 0, 0, 1], free_tcp_udp_port()).into();
            let api_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let (out, err) = open_log(&log_path, &format!("testdns start, attempt {attempt}"));
            let mut cmd = Command::new(cairn_bin());
            scrub_env(&mut cmd);
            cmd.arg("testdns")
                .arg("--dns-listen")
                .arg(dns_addr.to_string())
                .arg("--api-listen")
                .arg(api_addr.to_string())
                .args(args)
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            let mut child = Some(
                cmd.spawn()
                    .unwrap_or_else(|e| panic!("spawn {}: {e}", cairn_bin().display())),
            );
            match wait_testdns(&mut child, api_addr, dns_addr, Duration::from_secs(10)) {
                Ok(()) => {
                    return TestDns {
                        dns_addr,
                        api_url: format!("http://{api_addr}"),
                        api_addr,
                        log_path,
                        child,
                        _dir: dir,
                    }
                }
                Err(e) => {
                    kill_child(&mut child);
                    errors.push(format!("attempt {attempt}: {e}"));
                }
            }
        }
        panic!(
            "cairn testdns did not start: {}\n--- testdns log ---\n{}",
            errors.join("; "),
            log_tail(&log_path, 8000)
        )
    }

    /// POSTs a JSON body to an API path (e.g. `/set-txt`); panics unless 2xx.
    pub fn api(&self, path: &str, body: serde_json::Value) {
        let text = body.to_string();
        match http_post_blocking(self.api_addr, path, &text) {
            Ok((s, _)) if (200..300).contains(&s) => {}
            Ok((s, b)) => panic!("testdns {path} {text} -> {s}: {b}"),
            Err(e) => panic!(
                "testdns {path} {text}: {e}\n--- testdns log ---\n{}",
                log_tail(&self.log_path, 4000)
            ),
        }
    }

    /// Adds a TXT value (several values for one host coexist).
    pub fn set_txt(&self, host: &str, value: &str) {
        self.api(
            "/set-txt",
            serde_json::json!({"host": host, "value": value}),
        );
    }
    pub fn clear_txt(&self, host: &str) {
        self.api("/clear-txt", serde_json::json!({"host": host}));
    }
    pub fn add_a(&self, host: &str, addrs: &[&str]) {
        self.api(
            "/add-a",
            serde_json::json!({"host": host, "addresses": addrs}),
        );
    }
    pub fn clear_a(&self, host: &str) {
        self.api("/clear-a", serde_json::json!({"host": host}));
    }
    pub fn add_aaaa(&self, host: &str, addrs: &[&str]) {
        self.api(
            "/add-aaaa",
            serde_json::json!({"host": host, "addresses": addrs}),
        );
    }
    pub fn clear_aaaa(&self, host: &str) {
        self.api("/clear-aaaa", serde_json::json!({"host": host}));
    }
    pub fn set_default_ipv4(&self, ip: &str) {
        self.api("/set-default-ipv4", serde_json::json!({"ip": ip}));
    }
    pub fn add_caa(&self, host: &str, tag: &str, value: &str) {
        self.api(
            "/add-caa",
            serde_json::json!({"host": host, "policies": [{"tag": tag, "value": value}]}),
        );
    }
    pub fn clear_caa(&self, host: &str) {
        self.api("/clear-caa", serde_json::json!({"host": host}));
    }
    pub fn set_cname(&self, host: &str, target: &str) {
        self.api(
            "/set-cname",
            serde_json::json!({"host": host, "target": target}),
        );
    }
    pub fn set_servfail(&self, host: &str) {
        self.api("/set-servfail", serde_json::json!({"host": host}));
    }
    pub fn clear_servfail(&self, host: &str) {
        self.api("/clear-servfail", serde_json::json!({"host": host}));
    }

    /// The testdns stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

fn wait_testdns(
    child: &mut Option<Child>,
    api_addr: SocketAddr,
    dns_addr: SocketAddr,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut api_up = false;
    loop {
        if let Some(c) = child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(format!("testdns exited early ({status})"));
            }
        }
        if !api_up {
            api_up =
                http_post_blocking(api_addr, "/clear-txt", r#"{"host":"harness-probe.test."}"#)
                    .is_ok();
        }
        if api_up && dns_probe(dns_addr) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "not ready after {timeout:?} (api answered: {api_up})"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        kill_child(&mut self.child);
        if std::thread::panicking() {
            eprintln!(
                "--- testdns log ({}) ---\n{}",
                self.log_path.display(),
                log_tail(&self.log_path, 4000)
            );
        }
    }
}

/// Sends one DNS query (A for `harness-probe.test.`) over UDP; true if anything answers.
fn dns_probe(addr: SocketAddr) -> bool {
    let Ok(sock) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["harness-probe", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    if sock.send_to(&q, addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(sock.recv_from(&mut buf), Ok((n, _)) if n >= 12 && buf[0] == 0x12 && buf[1] == 0x34)
}

// ---------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------

/// How to run `cairn serve`.
#[derive(Debug, Clone)]
pub struct ServerOpts {
    /// `--preset` (normally "test").
    pub preset: String,
    /// Extra environment, applied after the harness's own (so it can override the ports).
    pub env: Vec<(String, String)>,
    /// Resolver for validation (`CAIRN_VA_RESOLVER`). `None` points the resolver at a
    /// loopback port where nothing listens, so a test without `TestDns` never reaches a
    /// shared DNS server on 8053.
    pub dns: Option<SocketAddr>,
    /// Open-file limit (soft and hard) of the server process, if lowered.
    pub nofile_limit: Option<u64>,
}

impl Default for ServerOpts {
    fn default() -> Self {
        ServerOpts {
            preset: "test".into(),
            env: Vec::new(),
            dns: None,
            nofile_limit: None,
        }
    }
}

impl ServerOpts {
    /// The `test` preset, nothing else.
    pub fn test() -> ServerOpts {
        ServerOpts::default()
    }
    /// The `test` preset with `CAIRN_VA_ALWAYS_VALID=true`: every challenge succeeds.
    pub fn always_valid() -> ServerOpts {
        ServerOpts::default().with_env("CAIRN_VA_ALWAYS_VALID", "true")
    }
    /// Used nonces in the database (`acme.nonces = "shared"`), as several
    /// instances on one data directory need (`Server::start_peer`).
    pub fn shared_nonces(self) -> ServerOpts {
        self.with_env("CAIRN_ACME_NONCES", "shared")
    }
    pub fn with_env(mut self, key: &str, value: &str) -> ServerOpts {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
    pub fn with_dns(mut self, dns: SocketAddr) -> ServerOpts {
        self.dns = Some(dns);
        self
    }
    /// Starts the server with at most `n` open files (RLIMIT_NOFILE, soft and hard).
    pub fn with_nofile_limit(mut self, n: u64) -> ServerOpts {
        self.nofile_limit = Some(n);
        self
    }
    /// The `unlimited` limit set with one window limit (`limit` in
    /// snake_case, as in the configuration) set to these numbers.
    pub fn with_limit(self, limit: &str, burst: u64, count: u64, period_secs: u64) -> ServerOpts {
        let up = limit.to_ascii_uppercase();
        self.with_env("CAIRN_LIMITS_PROFILE", "unlimited")
            .with_env(
                &format!("CAIRN_LIMITS_WINDOWS_{up}_BURST"),
                &burst.to_string(),
            )
            .with_env(
                &format!("CAIRN_LIMITS_WINDOWS_{up}_COUNT"),
                &count.to_string(),
            )
            .with_env(
                &format!("CAIRN_LIMITS_WINDOWS_{up}_PERIOD_SECS"),
                &period_secs.to_string(),
            )
    }
    pub fn with_preset(mut self, preset: &str) -> ServerOpts {
        self.preset = preset.to_string();
        self
    }
}

/// `cairn serve` on free loopback ports with a fresh data directory.
pub struct Server {
    /// `https://localhost:P/directory`
    pub dir_url: String,
    /// `https://localhost:P`
    pub base_url: String,
    /// `http://127.0.0.1:M` (management listener)
    pub mgmt_url: String,
    pub data_dir: PathBuf,
    pub root_pem_path: PathBuf,
    /// Port validation dials for http-01 (`CAIRN_VA_HTTP01_PORT`): bind a responder here.
    pub http01_port: u16,
    /// Port validation dials for tls-alpn-01 (`CAIRN_VA_TLS_ALPN01_PORT`).
    pub tls_alpn01_port: u16,
    pub listen_port: u16,
    pub mgmt_port: u16,
    /// The server's stdout and stderr, across restarts.
    pub log_path: PathBuf,
    pub opts: ServerOpts,
    child: Option<Child>,
    starts: u32,
    log_printed: bool,
    /// The PostgreSQL database of this server (and of instances sharing it).
    pub database: Option<std::sync::Arc<TestDb>>,
    _tmp: tempfile::TempDir,
}

enum StartError {
    /// The child exited before answering (maybe a port was taken).
    Exited(String),
    Timeout,
}

impl Server {
    /// Starts a server and waits (up to `SERVER_START_TIMEOUT`) until its directory
    /// answers over HTTPS, trusting `<data_dir>/root.pem`. Panics with the server's log
    /// if it does not.
    pub fn start(opts: ServerOpts) -> Server {
        Server::start_on(opts, false)
    }

    /// Like `start`, but the ACME listener is on `[::1]` (IPv6 loopback), and
    /// `base_url`/`dir_url` are `https://[::1]:P`, so clients connect over IPv6
    /// (the server sees the client as `::1`). The management listener stays on
    /// 127.0.0.1.
    pub fn start_ipv6(opts: ServerOpts) -> Server {
        Server::start_on(opts, true)
    }

    fn start_on(opts: ServerOpts, ipv6: bool) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        std::fs::create_dir_all(&data_dir).expect("create data dir");
        // The log lives next to the data dir's contents so a failing test can print it.
        let log_path = data_dir.join("server.log");
        let mut server = Server {
            dir_url: String::new(),
            base_url: String::new(),
            mgmt_url: String::new(),
            root_pem_path: data_dir.join("root.pem"),
            data_dir,
            http01_port: 0,
            tls_alpn01_port: 0,
            listen_port: 0,
            mgmt_port: 0,
            log_path,
            opts: opts.clone(),
            child: None,
            starts: 0,
            log_printed: false,
            database: postgres_backend()
                .then(|| std::sync::Arc::new(TestDb::create_blocking(&db::admin_url()))),
            _tmp: tmp,
        };
        for attempt in 1..=3 {
            server.pick_ports();
            if ipv6 {
                // A port free on 127.0.0.1 a moment ago; `opts.env` is applied
                // after the harness's own CAIRN_SERVER_LISTEN, so this one wins.
                server.opts = opts.clone().with_env(
                    "CAIRN_SERVER_LISTEN",
                    &format!("[::1]:{}", server.listen_port),
                );
                server.base_url = format!("https://[::1]:{}", server.listen_port);
                server.dir_url = format!("{}/directory", server.base_url);
            }
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(StartError::Exited(why)) if attempt < 3 => {
                    eprintln!(
                        "harness: cairn serve exited during start ({why}); retrying on new ports"
                    );
                }
                Err(e) => server.fail_start(e),
            }
        }
        unreachable!("loop returns or panics")
    }

    /// Another instance of the same CA: same data directory (CA material),
    /// same database, same validation ports and DNS, its own listeners and
    /// log. Several of these behind a load balancer are one CA.
    pub fn start_peer(&self) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let log_path = tmp.path().join("server.log");
        let mut peer = Server {
            dir_url: String::new(),
            base_url: String::new(),
            mgmt_url: String::new(),
            root_pem_path: self.root_pem_path.clone(),
            data_dir: self.data_dir.clone(),
            http01_port: self.http01_port,
            tls_alpn01_port: self.tls_alpn01_port,
            listen_port: 0,
            mgmt_port: 0,
            log_path,
            opts: self.opts.clone(),
            child: None,
            starts: 0,
            log_printed: false,
            database: self.database.clone(),
            _tmp: tmp,
        };
        for attempt in 1..=3 {
            peer.pick_listen_ports();
            match peer.spawn_and_wait() {
                Ok(()) => return peer,
                Err(StartError::Exited(why)) if attempt < 3 => {
                    eprintln!("harness: peer exited during start ({why}); retrying on new ports");
                }
                Err(e) => peer.fail_start(e),
            }
        }
        unreachable!("loop returns or panics")
    }

    fn pick_listen_ports(&mut self) {
        self.listen_port = free_port();
        self.mgmt_port = free_port();
        self.base_url = format!("https://localhost:{}", self.listen_port);
        self.dir_url = format!("{}/directory", self.base_url);
        self.mgmt_url = format!("http://127.0.0.1:{}", self.mgmt_port);
    }

    fn pick_ports(&mut self) {
        self.listen_port = free_port();
        self.mgmt_port = free_port();
        self.http01_port = free_port();
        self.tls_alpn01_port = free_port();
        self.base_url = format!("https://localhost:{}", self.listen_port);
        self.dir_url = format!("{}/directory", self.base_url);
        self.mgmt_url = format!("http://127.0.0.1:{}", self.mgmt_port);
    }

    fn fail_start(&mut self, e: StartError) -> ! {
        kill_child(&mut self.child);
        self.log_printed = true;
        let why = match e {
            StartError::Exited(s) => format!("exited: {s}"),
            StartError::Timeout => format!(
                "no answer from {} within {SERVER_START_TIMEOUT:?}",
                self.dir_url
            ),
        };
        panic!(
            "cairn serve did not start ({why})\n--- server log ({}) ---\n{}",
            self.log_path.display(),
            log_tail(&self.log_path, 12000)
        )
    }

    fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        self.starts += 1;
        let (out, err) = open_log(&self.log_path, &format!("serve start #{}", self.starts));
        let resolver = match self.opts.dns {
            Some(a) => a.to_string(),
            // Nothing listens there (the port was free a moment ago): lookups fail fast.
            None => format!("127.0.0.1:{}", free_port()),
        };
        let mut cmd = Command::new(cairn_bin());
        scrub_env(&mut cmd);
        cmd.arg("serve")
            .arg("--preset")
            .arg(&self.opts.preset)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env(
                "CAIRN_SERVER_LISTEN",
                format!("127.0.0.1:{}", self.listen_port),
            )
            .env(
                "CAIRN_SERVER_MANAGEMENT_LISTEN",
                format!("127.0.0.1:{}", self.mgmt_port),
            )
            .env("CAIRN_VA_HTTP01_PORT", self.http01_port.to_string())
            .env("CAIRN_VA_TLS_ALPN01_PORT", self.tls_alpn01_port.to_string())
            .env("CAIRN_VA_RESOLVER", resolver);
        if let Some(db) = &self.database {
            cmd.env("CAIRN_DATABASE_URL", &db.url);
        }
        // The shared presets render every URL from server.external_url and
        // refuse to start without one: here it is this listener.
        if ["staging", "production"].contains(&self.opts.preset.as_str()) {
            cmd.env("CAIRN_SERVER_EXTERNAL_URL", &self.base_url);
        }
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        if let Some(n) = self.opts.nofile_limit {
            use std::os::unix::process::CommandExt;
            let limit = rustix::process::Rlimit {
                current: Some(n),
                maximum: Some(n),
            };
            // SAFETY: between fork and exec only setrlimit(2) runs, which is
            // async-signal-safe and allocates nothing.
            unsafe {
                cmd.pre_exec(move || {
                    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)
                        .map_err(std::io::Error::from)
                });
            }
        }
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", cairn_bin().display()));
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), StartError> {
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        let dir_url = self.dir_url.clone();
        let root_path = self.root_pem_path.clone();
        let child = self.child.as_mut().expect("child was just spawned");
        block_on(async move {
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(StartError::Exited(status.to_string()));
                }
                if let Ok(pem) = std::fs::read(&root_path) {
                    if let Some(client) = client_trusting(&pem, Duration::from_secs(2)) {
                        if let Ok(resp) = client.get(&dir_url).send().await {
                            if resp.status().is_success() {
                                return Ok(());
                            }
                        }
                    }
                }
                if Instant::now() > deadline {
                    return Err(StartError::Timeout);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }

    /// Kills the server with SIGKILL (a crash, not a shutdown) and starts it again on the
    /// same ports and data directory.
    pub fn restart(&mut self) {
        kill_child(&mut self.child);
        let mut last = StartError::Timeout;
        // The old process's listeners are gone once `wait` returns; a few retries cover a
        // slow kernel releasing the ports.
        for _ in 0..5 {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(e @ StartError::Exited(_)) => {
                    last = e;
                    std::thread::sleep(Duration::from_millis(300));
                }
                Err(e) => self.fail_start(e),
            }
        }
        self.fail_start(last)
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        kill_child(&mut self.child);
    }

    /// Sends SIGTERM and waits up to `timeout` for the server to exit;
    /// returns its exit status (`None`: still running, then killed).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// OS process id of the running server, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The root certificate (PEM) as written to `<data_dir>/root.pem`.
    pub fn root_pem(&self) -> String {
        std::fs::read_to_string(&self.root_pem_path)
            .unwrap_or_else(|e| panic!("read {}: {e}", self.root_pem_path.display()))
    }

    /// A client that trusts only Cairn's root and does not follow redirects.
    pub fn http_client(&self) -> reqwest::Client {
        client_trusting(self.root_pem().as_bytes(), Duration::from_secs(30))
            .expect("root.pem is a certificate reqwest accepts")
    }

    /// The server's stdout+stderr so far (all starts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Last `max` bytes of the log.
    pub fn log_tail(&self, max: usize) -> String {
        log_tail(&self.log_path, max)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        kill_child(&mut self.child);
        if std::thread::panicking() && !self.log_printed {
            eprintln!(
                "--- cairn serve log ({}) ---\n{}",
                self.log_path.display(),
                log_tail(&self.log_path, 12000)
            );
        }
    }
}

/// A reqwest client trusting only the given PEM root (no built-in roots, no redirects).
pub fn client_trusting(root_pem: &[u8], timeout: Duration) -> Option<reqwest::Client> {
    let cert = reqwest::Certificate::from_pem(root_pem).ok()?;
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(cert)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .build()
        .ok()
}

// ---------------------------------------------------------------------------------------
// Management listener and IPv6 (rate-limit tests)
// ---------------------------------------------------------------------------------------

/// POSTs a JSON body to a path of the server's management listener (e.g.
/// `/clock/advance`). Returns the status and the body as JSON (`Null` if it is not).
pub async fn mgmt_post(
    server: &Server,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let url = format!("{}{path}", server.mgmt_url);
    let r = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// GETs a path of the management listener; returns the status and the body text.
pub async fn mgmt_get(server: &Server, path: &str) -> (u16, String) {
    let url = format!("{}{path}", server.mgmt_url);
    let r = reqwest::get(&url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// Moves the server's clock forward by `secs` (`POST /clock/advance`, clock control
/// must be on, as in the `test` preset); panics unless 200. Clients holding a nonce
/// should `forget_nonce()` after a big advance (nonces age with the clock).
pub async fn advance_clock(server: &Server, secs: u64) {
    let (status, v) = mgmt_post(
        server,
        "/clock/advance",
        serde_json::json!({ "seconds": secs }),
    )
    .await;
    assert_eq!(status, 200, "POST /clock/advance {secs}: {v}");
}

/// The server's clock offset from real time, seconds (`GET /clock`).
pub async fn clock_offset(server: &Server) -> i64 {
    let (status, text) = mgmt_get(server, "/clock").await;
    assert_eq!(status, 200, "GET /clock: {text}");
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET /clock: {e}: {text}"));
    v["offsetSeconds"]
        .as_i64()
        .unwrap_or_else(|| panic!("GET /clock without offsetSeconds: {v}"))
}

/// The value of the first sample of `metric` whose labels include all of
/// `labels` (Prometheus text format).
pub fn sample(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(series, _)| {
            let (name, rest) = series.split_once('{').unwrap_or((series, ""));
            name == metric
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|(_, v)| v.parse().ok())
}

pub async fn scrape(server: &Server) -> String {
    let (status, text) = mgmt_get(server, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    text
}
