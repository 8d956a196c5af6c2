//! Real ACME clients against the real `cairn` binary on loopback: certbot
//! (PyPI) with http-01 and dns-01, lego (Debian) with http-01, tls-alpn-01 and
//! dns-01, wildcards included, Caddy (Debian) obtaining its own certificates
//! over http-01 and tls-alpn-01 on its own listeners, and Ruby's acme-client
//! gem (Debian, driven by `tests/clients/acme_client.rb`) over http-01; each
//! issuing and (most) renewing; every certificate is verified up to the
//! server's root and must name exactly what was asked. One test makes
//! validation fail on purpose, so the suite cannot pass against a server
//! that skips validation. certbot, lego and the gem revoke (the result
//! checked with `cairn admin certs list`, and for certbot and lego a second,
//! refused attempt), and certbot's ARI check is driven by `cairn admin certs
//! renew-early`. lego's dns-01 also runs against a mock DNS whose API
//! throttles writes (issue 16's forum thread): with a hook that gives up on a
//! 429 it fails as users saw it fail; with a hook that waits `Retry-After`,
//! or with `EXEC_SEQUENCE_INTERVAL`, it issues. certbot and lego register
//! with external account binding keys made by `cairn admin eab create`, and
//! are refused without one where the server requires it.
//!
//! `scripts/test` installs the clients and points `CAIRN_TEST_CERTBOT`,
//! `CAIRN_TEST_LEGO`, `CAIRN_TEST_CADDY` and `CAIRN_TEST_RUBY` (a `ruby`
//! that loads the gem) at them. A test whose client is not configured
//! panics, so CI can never pass while skipping them;
//! `CAIRN_TEST_SKIP_CLIENTS=1` skips them on purpose for quick local runs.
//!
//! Every test starts its own `cairn testdns` and `cairn serve` on free ports
//! and keeps the client's state in its own temporary directory, so the tests
//! run in parallel. A failing client run panics with the command and the
//! client's output; the harness then prints the tails of the server's and the
//! mock DNS's logs. Each run's duration is printed (`... took 1.3s`); set
//! `CAIRN_TEST_CLIENT_OUTPUT=1` to see the clients' output on success too.

mod common;

use common::{pem_to_ders, verify_chain, Server, ServerOpts, TestDns};
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a single client run may take. Issuance on loopback takes seconds;
/// lego sleeps 5 s between polls when it gets no `Retry-After`, so two minutes
/// leaves room for a slow server without letting a hang eat the whole
/// per-test timeout (which would lose the client's output).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// The client named by `var`, or `None` when the real-client tests are
/// skipped on purpose. Unset without the skip is a configuration error.
fn client_path(var: &str) -> Option<PathBuf> {
    if std::env::var("CAIRN_TEST_SKIP_CLIENTS").as_deref() == Ok("1") {
        eprintln!("CAIRN_TEST_SKIP_CLIENTS=1: skipping this real-client test");
        return None;
    }
    match std::env::var_os(var) {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ => panic!(
            "{var} is not set: run the suite through scripts/test, which installs the ACME \
             clients (certbot, lego, Caddy, Ruby's acme-client) and exports their paths, or \
             set CAIRN_TEST_SKIP_CLIENTS=1 to skip the real-client tests"
        ),
    }
}

/// A test's world: its own mock DNS, its own server and a scratch directory
/// for the client's configuration, keys, logs and hook scripts.
struct Env {
    // Field order is drop order: stop the server before its DNS.
    server: Server,
    dns: TestDns,
    tmp: tempfile::TempDir,
}

impl Env {
    fn start() -> Env {
        Env::start_with(|opts| opts)
    }

    /// Like `start`, with the server's options adjusted by `opts`.
    fn start_with(opts: impl FnOnce(ServerOpts) -> ServerOpts) -> Env {
        Env::start_with_dns(TestDns::start(), opts)
    }

    /// Like `start_with`, with a mock DNS of the caller's (e.g. throttled).
    fn start_with_dns(dns: TestDns, opts: impl FnOnce(ServerOpts) -> ServerOpts) -> Env {
        let server = Server::start(opts(ServerOpts::test().with_dns(dns.dns_addr)));
        let tmp = tempfile::Builder::new()
            .prefix("cairn-clients-")
            .tempdir()
            .expect("create a temporary directory");
        Env { server, dns, tmp }
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// Writes the dns-01 hook both clients call. certbot runs it as
    /// `hook certbot-auth|certbot-cleanup` with `CERTBOT_DOMAIN` and
    /// `CERTBOT_VALIDATION` in its environment; lego's `exec` provider runs it
    /// as `hook present|cleanup <fqdn> <value>`. Python, not curl, because
    /// Python is on every machine that runs certbot.
    fn write_dns_hook(&self) -> PathBuf {
        let path = self.dir().join("dns-hook.py");
        let script = format!(
            r#"#!/usr/bin/env python3
import json, os, sys, urllib.request

API = {api:?}
# Talk to the mock DNS directly even when a proxy is configured.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({{}}))

def post(path, body):
    req = urllib.request.Request(API + path, data=json.dumps(body).encode(),
                                 headers={{"Content-Type": "application/json"}}, method="POST")
    with OPENER.open(req, timeout=10) as resp:
        resp.read()
    print("dns hook:", path, json.dumps(body), file=sys.stderr)

mode = sys.argv[1]
if mode.startswith("certbot-"):
    domain = os.environ["CERTBOT_DOMAIN"]
    if domain.startswith("*."):
        domain = domain[2:]
    host = "_acme-challenge." + domain + "."
    if mode == "certbot-auth":
        post("/set-txt", {{"host": host, "value": os.environ["CERTBOT_VALIDATION"]}})
    else:
        post("/clear-txt", {{"host": host}})
elif mode == "present":
    post("/set-txt", {{"host": sys.argv[2], "value": sys.argv[3]}})
elif mode == "cleanup":
    post("/clear-txt", {{"host": sys.argv[2]}})
else:
    sys.exit("dns hook: unknown mode " + mode)
"#,
            api = self.dns.api_url.trim_end_matches('/'),
        );
        fs::write(&path, script).expect("write the dns-01 hook");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .expect("make the dns-01 hook executable");
        path
    }

    /// Runs one client command to completion, prints how long it took, and
    /// panics with everything needed to debug it when it fails or hangs.
    fn run(&self, label: &str, cmd: Command) -> ClientRun {
        let run = self.execute(label, cmd);
        match &run.outcome {
            Ok(status) if status.success() => {
                eprintln!("{label} took {:?}", run.took);
                if std::env::var("CAIRN_TEST_CLIENT_OUTPUT").as_deref() == Ok("1") {
                    eprintln!(
                        "--- {label}: stdout ---\n{}\n--- {label}: stderr ---\n{}",
                        run.stdout, run.stderr
                    );
                }
                run
            }
            Ok(status) => self.fail(&run, &format!("exited with {status}")),
            Err(why) => self.fail(&run, why),
        }
    }

    /// Runs a client command that must fail (exit non-zero, not hang);
    /// returns its stdout and stderr together.
    fn run_expecting_failure(&self, label: &str, cmd: Command) -> String {
        let run = self.execute(label, cmd);
        match &run.outcome {
            Ok(status) if status.success() => self.fail(&run, "succeeded but should have failed"),
            Ok(_) => {
                eprintln!("{label} failed as expected after {:?}", run.took);
                format!("{}\n{}", run.stdout, run.stderr)
            }
            Err(why) => self.fail(&run, why),
        }
    }

    /// Spawns the client with its output in files (not pipes: a chatty client
    /// cannot block on a full pipe) and waits for it, at most `CLIENT_TIMEOUT`.
    fn execute(&self, label: &str, mut cmd: Command) -> ClientRun {
        let slug: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let out_path = self.dir().join(format!("{slug}.stdout"));
        let err_path = self.dir().join(format!("{slug}.stderr"));
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(&out_path).expect("create stdout file"))
            .stderr(fs::File::create(&err_path).expect("create stderr file"));
        // Everything here is on loopback: never go through a proxy.
        for var in [
            "http_proxy",
            "https_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "all_proxy",
            "ALL_PROXY",
        ] {
            cmd.env_remove(var);
        }
        let command_line = format!("{cmd:?}");

        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{label}: cannot start {command_line}: {e}"));
        let outcome = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if started.elapsed() > CLIENT_TIMEOUT => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(format!("timed out after {CLIENT_TIMEOUT:?} and was killed"));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => break Err(format!("waiting for it failed: {e}")),
            }
        };
        let read = |p: &Path| fs::read_to_string(p).unwrap_or_else(|e| format!("<{e}>"));
        ClientRun {
            label: label.to_string(),
            command_line,
            outcome,
            took: started.elapsed(),
            stdout: read(&out_path),
            stderr: read(&err_path),
        }
    }

    /// Panics with the command and the client's output. The server's and
    /// the mock DNS's logs follow it: the harness prints their tails when a
    /// `Server` or `TestDns` is dropped during a panic.
    fn fail(&self, run: &ClientRun, why: &str) -> ! {
        let certbot_log = fs::read_to_string(self.dir().join("logs/letsencrypt.log"))
            .map(|log| format!("\n--- certbot log (tail) ---\n{}", tail(&log, 120)))
            .unwrap_or_default();
        panic!(
            "{} {why} after {:?}\n--- command ---\n{}\n\
             --- client stdout ---\n{}\n--- client stderr ---\n{}{certbot_log}\n\
             --- server log: {} (its tail follows) ---",
            run.label,
            run.took,
            run.command_line,
            run.stdout,
            run.stderr,
            self.server.log_path.display(),
        );
    }
}

/// One finished (or killed) client run.
struct ClientRun {
    label: String,
    command_line: String,
    /// The exit status, or why there is none (timeout).
    outcome: Result<std::process::ExitStatus, String>,
    took: Duration,
    stdout: String,
    stderr: String,
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What a verified certificate file told us.
struct Issued {
    /// The leaf, DER.
    leaf: Vec<u8>,
    /// The leaf's serial, hex, to tell a renewal from the original.
    serial: String,
    /// The serial as Cairn stores it (lower-case hex, no colons): what
    /// `cairn admin` takes.
    serial_hex: String,
}

/// Checks that `path` holds a chain, leaf first, that verifies up to the
/// server's root (`openssl verify`, through the harness) and whose leaf names
/// exactly `names`.
fn verify_issued(env: &Env, path: &Path, names: &[&str]) -> Issued {
    let pem = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let got: BTreeSet<String> = verify_chain(&pem, &env.server.root_pem())
        .into_iter()
        .collect();
    let want: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
    assert_eq!(
        got,
        want,
        "{}: SANs differ from the requested names",
        path.display()
    );
    let leaf = pem_to_ders(&pem).swap_remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).expect("parse the leaf");
    let serial = cert.raw_serial_as_string();
    let serial_hex = hex::encode(cert.raw_serial());
    Issued {
        leaf,
        serial,
        serial_hex,
    }
}

// ---------------------------------------------------------------- cairn admin

/// Runs `cairn admin <args>` on the test server's data directory and
/// database, as an operator would next to a running server; panics unless
/// it succeeds. Returns its stdout.
fn cairn_admin(env: &Env, args: &[&str]) -> String {
    let server = &env.server;
    let mut cmd = Command::new(common::cairn_bin());
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str() {
            if k.starts_with("CAIRN_") && k != "CAIRN_LOG" {
                cmd.env_remove(k);
            }
        }
    }
    cmd.arg("admin")
        .args(["--preset", &server.opts.preset])
        .arg("--data-dir")
        .arg(&server.data_dir)
        .args(args)
        .env(
            "CAIRN_SERVER_MANAGEMENT_LISTEN",
            format!("127.0.0.1:{}", server.mgmt_port),
        );
    if let Some(db) = &server.database {
        cmd.env("CAIRN_DATABASE_URL", &db.url);
    }
    let out = cmd.output().expect("run cairn admin");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "cairn admin {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The status `cairn admin certs list` gives the certificate: `valid`,
/// `revoked(keyCompromise)`, `renew-early`...
fn admin_status(env: &Env, issued: &Issued) -> String {
    let out = cairn_admin(
        env,
        &["certs", "list", "--serial", &issued.serial_hex, "--json"],
    );
    let row: serde_json::Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("cairn admin certs list --json: {e}:\n{out}"));
    row["status"].as_str().unwrap_or_default().to_string()
}

// ------------------------------------------------------------------ certbot

/// certbot with its state in the test's directory, talking to the server.
fn certbot(env: &Env, certbot: &Path, subcommand: &str) -> Command {
    let dir = env.dir();
    let mut cmd = Command::new(certbot);
    cmd.arg(subcommand)
        .arg("--server")
        .arg(&env.server.dir_url)
        .arg("--config-dir")
        .arg(dir.join("config"))
        .arg("--work-dir")
        .arg(dir.join("work"))
        .arg("--logs-dir")
        .arg(dir.join("logs"))
        .args([
            "--non-interactive",
            "--agree-tos",
            "-m",
            "test@example.com",
            "--no-eff-email",
        ])
        .env("REQUESTS_CA_BUNDLE", &env.server.root_pem_path);
    if subcommand == "renew" {
        // certbot sleeps up to 8 minutes before renewing when stdin is no tty.
        cmd.arg("--no-random-sleep-on-renew");
    }
    cmd
}

/// certbot's `cert.pem` is the leaf alone (no chain to verify it with): it
/// must be `fullchain.pem`'s first certificate.
fn assert_certbot_cert_pem_is_leaf(env: &Env, cert_name: &str, issued: &Issued) {
    let path = certbot_live(env, cert_name, "cert.pem");
    let pem = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert_eq!(
        pem_to_ders(&pem),
        vec![issued.leaf.clone()],
        "{} is not fullchain.pem's leaf",
        path.display()
    );
}

fn certbot_live(env: &Env, cert_name: &str, file: &str) -> PathBuf {
    env.dir().join("config/live").join(cert_name).join(file)
}

#[test]
fn certbot_http01_issues_and_renews() {
    let Some(bin) = client_path("CAIRN_TEST_CERTBOT") else {
        return;
    };
    let env = Env::start();
    let names = ["a.example.com", "b.example.com"];
    let port = env.server.http01_port.to_string();

    let mut cmd = certbot(&env, &bin, "certonly");
    cmd.args(["--standalone", "--http-01-address", "127.0.0.1"])
        .args(["--http-01-port", &port])
        .args(["--cert-name", "http01"]);
    for name in names {
        cmd.args(["-d", name]);
    }
    env.run("certbot http-01 issuance", cmd);
    let first = verify_issued(&env, &certbot_live(&env, "http01", "fullchain.pem"), &names);
    assert_certbot_cert_pem_is_leaf(&env, "http01", &first);

    // The renewal configuration certbot saved (standalone, port, address)
    // must be enough to renew.
    let mut cmd = certbot(&env, &bin, "renew");
    cmd.args(["--force-renewal", "--cert-name", "http01"]);
    env.run("certbot http-01 renewal", cmd);
    let renewed = verify_issued(&env, &certbot_live(&env, "http01", "fullchain.pem"), &names);
    assert_ne!(
        first.serial, renewed.serial,
        "renewal returned the same certificate"
    );
}

#[test]
fn certbot_dns01_wildcard_issues_and_renews() {
    let Some(bin) = client_path("CAIRN_TEST_CERTBOT") else {
        return;
    };
    let env = Env::start();
    let hook = env.write_dns_hook();
    let names = ["example.org", "*.example.org"];

    let mut cmd = certbot(&env, &bin, "certonly");
    cmd.args(["--manual", "--preferred-challenges", "dns"])
        .arg("--manual-auth-hook")
        .arg(format!("{} certbot-auth", hook.display()))
        .arg("--manual-cleanup-hook")
        .arg(format!("{} certbot-cleanup", hook.display()))
        // An RSA certificate key here; the http-01 test uses certbot's
        // default ECDSA P-256.
        .args(["--key-type", "rsa", "--rsa-key-size", "2048"])
        .args(["--cert-name", "dns01"]);
    for name in names {
        cmd.args(["-d", name]);
    }
    env.run("certbot dns-01 issuance", cmd);
    let first = verify_issued(&env, &certbot_live(&env, "dns01", "fullchain.pem"), &names);

    let mut cmd = certbot(&env, &bin, "renew");
    cmd.args(["--force-renewal", "--cert-name", "dns01"]);
    env.run("certbot dns-01 renewal", cmd);
    let renewed = verify_issued(&env, &certbot_live(&env, "dns01", "fullchain.pem"), &names);
    assert_ne!(
        first.serial, renewed.serial,
        "renewal returned the same certificate"
    );
}

/// certbot issues a certificate for `names` over http-01 (standalone, on
/// the port the server dials) into lineage `cert_name`.
fn certbot_http01(env: &Env, bin: &Path, cert_name: &str, names: &[&str]) -> Issued {
    let port = env.server.http01_port.to_string();
    let mut cmd = certbot(env, bin, "certonly");
    cmd.args(["--standalone", "--http-01-address", "127.0.0.1"])
        .args(["--http-01-port", &port])
        .args(["--cert-name", cert_name]);
    for name in names {
        cmd.args(["-d", name]);
    }
    env.run(&format!("certbot issuance ({cert_name})"), cmd);
    verify_issued(env, &certbot_live(env, cert_name, "fullchain.pem"), names)
}

/// The leaf of a PEM file as `openssl x509 -text` prints it.
fn openssl_text(path: &Path) -> String {
    let out = Command::new("/usr/bin/openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(path)
        .output()
        .expect("run openssl x509");
    assert!(
        out.status.success(),
        "openssl x509 -text {}",
        path.display()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// notAfter - notBefore of a DER certificate, seconds.
fn validity_secs(der: &[u8]) -> i64 {
    let (_, c) = x509_parser::parse_x509_certificate(der).expect("parse the leaf");
    c.validity().not_after.timestamp() - c.validity().not_before.timestamp()
}

#[test]
fn certbot_profiles_and_ip_addresses() {
    let Some(bin) = client_path("CAIRN_TEST_CERTBOT") else {
        return;
    };
    let env = Env::start();
    let port = env.server.http01_port.to_string();
    let standalone = |cmd: &mut Command| {
        cmd.args(["--standalone", "--http-01-address", "127.0.0.1"])
            .args(["--http-01-port", &port]);
    };

    // --preferred-profile, offered: a shortlived (160 hours) certificate.
    let mut cmd = certbot(&env, &bin, "certonly");
    standalone(&mut cmd);
    cmd.args(["--preferred-profile", "shortlived", "--cert-name", "short"])
        .args(["-d", "short.example.com"]);
    env.run("certbot --preferred-profile shortlived", cmd);
    let short = verify_issued(
        &env,
        &certbot_live(&env, "short", "fullchain.pem"),
        &["short.example.com"],
    );
    assert_eq!(validity_secs(&short.leaf), 160 * 3600);

    // --required-profile, not offered: Cairn's invalidProfile stops it.
    let mut cmd = certbot(&env, &bin, "certonly");
    standalone(&mut cmd);
    cmd.args(["--required-profile", "nonsense", "--cert-name", "nonsense"])
        .args(["-d", "nonsense.example.com"]);
    let out = env.run_expecting_failure("certbot --required-profile nonsense", cmd);
    let said = format!("{out}\n{}", certbot_log(&env));
    assert!(
        said.contains("invalidProfile") && said.contains("is not offered"),
        "certbot did not report Cairn's invalidProfile:\n{out}"
    );

    // An IP address (RFC 8738) by http-01, in the profile that takes them.
    let mut cmd = certbot(&env, &bin, "certonly");
    standalone(&mut cmd);
    cmd.args(["--preferred-profile", "shortlived", "--cert-name", "ip"])
        .args(["--ip-address", "127.0.0.1"]);
    env.run("certbot --ip-address 127.0.0.1", cmd);
    let chain = certbot_live(&env, "ip", "fullchain.pem");
    let pem = fs::read_to_string(&chain).expect("read the IP chain");
    assert!(
        verify_chain(&pem, &env.server.root_pem()).is_empty(),
        "no dNSName for an address"
    );
    let text = openssl_text(&certbot_live(&env, "ip", "cert.pem"));
    assert!(text.contains("IP Address:127.0.0.1"), "{text}");
    let subject = text
        .lines()
        .find(|l| l.trim_start().starts_with("Subject:"))
        .unwrap_or_default();
    assert!(
        !subject.contains("CN"),
        "an address is no subject CN:\n{text}"
    );

    // Without the profile the default (classic) refuses the address.
    let mut cmd = certbot(&env, &bin, "certonly");
    standalone(&mut cmd);
    cmd.args(["--cert-name", "ip-classic", "--ip-address", "127.0.0.1"]);
    let out = env.run_expecting_failure("certbot --ip-address under classic", cmd);
    let said = format!("{out}\n{}", certbot_log(&env));
    assert!(said.contains("does not allow ip"), "{out}");
}

/// certbot's debug log of its last run (each run starts a new one).
fn certbot_log(env: &Env) -> String {
    fs::read_to_string(env.dir().join("logs/letsencrypt.log")).unwrap_or_default()
}

#[test]
fn certbot_revokes_with_and_without_reason() {
    let Some(bin) = client_path("CAIRN_TEST_CERTBOT") else {
        return;
    };
    let env = Env::start();
    let compromised = certbot_http01(&env, &bin, "compromised", &["kc.example.com"]);
    let plain = certbot_http01(&env, &bin, "plain", &["plain.example.com"]);

    // By --cert-path, signed with the account key, reason keyCompromise.
    let revoke_compromised = || {
        let mut cmd = certbot(&env, &bin, "revoke");
        cmd.arg("--cert-path")
            .arg(certbot_live(&env, "compromised", "cert.pem"))
            .args(["--reason", "keycompromise", "--no-delete-after-revoke"]);
        cmd
    };
    env.run(
        "certbot revoke --reason keycompromise",
        revoke_compromised(),
    );
    assert_eq!(admin_status(&env, &compromised), "revoked(keyCompromise)");
    let output = env.run_expecting_failure("certbot revoke (again)", revoke_compromised());
    let log = certbot_log(&env);
    assert!(
        log.contains("urn:ietf:params:acme:error:alreadyRevoked"),
        "the second revocation should fail with alreadyRevoked; certbot said:\n{output}\n\
         --- certbot log ---\n{}",
        tail(&log, 60)
    );

    // Without a reason (certbot sends 0), deleting the lineage afterwards.
    let mut cmd = certbot(&env, &bin, "revoke");
    cmd.arg("--cert-path")
        .arg(certbot_live(&env, "plain", "cert.pem"))
        .arg("--delete-after-revoke");
    env.run("certbot revoke (no reason)", cmd);
    assert_eq!(admin_status(&env, &plain), "revoked(unspecified)");
    assert!(
        !certbot_live(&env, "plain", "cert.pem").exists(),
        "certbot kept the lineage it was told to delete"
    );
}

/// certbot 5 asks `renewalInfo` before renewing (RFC 9773). A fresh
/// certificate is not renewed; once an operator marks it with `cairn admin
/// certs renew-early`, a plain `certbot renew` (no `--force-renewal`)
/// renews it. certbot caches the answer until its `Retry-After` (saved as
/// `ari_retry_after` in the lineage's renewal configuration), so the server
/// here answers with a 2 s Retry-After instead of 6 h, and the test waits
/// it out rather than editing certbot's files.
#[test]
fn certbot_ari_renews_only_after_renew_early() {
    let Some(bin) = client_path("CAIRN_TEST_CERTBOT") else {
        return;
    };
    let env = Env::start_with(|o| o.with_env("CAIRN_ACME_ARI_RETRY_AFTER_SECS", "2"));
    let names = ["ari.example.com"];
    let first = certbot_http01(&env, &bin, "ari", &names);
    let cert_id = cairn::ra::cert_id(&first.leaf).expect("certID of the certificate");
    let renew = || {
        let mut cmd = certbot(&env, &bin, "renew");
        // certbot stores ari_retry_after as a naive local time: pin the zone.
        cmd.args(["--cert-name", "ari"]).env("TZ", "UTC");
        cmd
    };
    let asked_ari = |log: &str| {
        log.contains(&format!("/renewal-info/{cert_id}")) && log.contains("suggestedWindow")
    };

    let run = env.run("certbot renew (fresh certificate)", renew());
    let log = certbot_log(&env);
    assert!(
        asked_ari(&log),
        "certbot did not fetch renewal-info/{cert_id}:\n{}",
        tail(&log, 80)
    );
    assert!(
        format!("{}{}", run.stdout, run.stderr).contains("not due for renewal"),
        "a fresh certificate should not be due:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    let same = verify_issued(&env, &certbot_live(&env, "ari", "fullchain.pem"), &names);
    assert_eq!(
        same.serial, first.serial,
        "certbot renewed a fresh certificate"
    );
    // certbot saved the server's Retry-After, not its 6 h fallback for a
    // failed ARI request.
    let conf = fs::read_to_string(env.dir().join("config/renewal/ari.conf"))
        .expect("certbot's renewal configuration");
    let retry_at = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("ari_retry_after = "))
        .unwrap_or_else(|| panic!("no ari_retry_after in ari.conf:\n{conf}"));
    let retry_at = time::PrimitiveDateTime::parse(
        retry_at.trim(),
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
    )
    .unwrap_or_else(|e| panic!("ari_retry_after {retry_at:?}: {e}"))
    .assume_utc();
    let ahead = retry_at - time::OffsetDateTime::now_utc();
    assert!(
        ahead < time::Duration::minutes(1),
        "certbot will not ask again before {retry_at} (Retry-After not taken from the server)"
    );

    let out = cairn_admin(
        &env,
        &["certs", "renew-early", "--serial", &first.serial_hex],
    );
    assert!(out.contains("marked 1 "), "{out}");
    // Past certbot's ari_retry_after (2 s after the last check).
    std::thread::sleep(Duration::from_secs(3));

    env.run("certbot renew (after renew-early)", renew());
    assert!(
        asked_ari(&certbot_log(&env)),
        "certbot renewed without asking renewal-info"
    );
    let renewed = verify_issued(&env, &certbot_live(&env, "ari", "fullchain.pem"), &names);
    assert_ne!(
        first.serial, renewed.serial,
        "after renew-early, certbot renew kept the old certificate"
    );
}

// --------------------------------------------------------------------- lego

/// lego's global flags (in lego 4.9 they come before the subcommand), with
/// its state in the test's directory.
fn lego(env: &Env, lego: &Path, key_type: &str, domains: &[&str]) -> Command {
    let mut cmd = Command::new(lego);
    cmd.arg("--server")
        .arg(&env.server.dir_url)
        .arg("--path")
        .arg(env.dir().join("lego"))
        .args(["--email", "test@example.com", "--accept-tos"])
        .args(["--key-type", key_type])
        .env("LEGO_CA_CERTIFICATES", &env.server.root_pem_path);
    for domain in domains {
        cmd.args(["--domains", domain]);
    }
    cmd
}

/// Where lego stores a certificate: named after the first domain, with `_`
/// for a wildcard's `*`.
fn lego_cert(env: &Env, first_domain: &str) -> PathBuf {
    env.dir()
        .join("lego/certificates")
        .join(format!("{}.crt", first_domain.replace('*', "_")))
}

fn lego_renew(cmd: &mut Command) {
    // --days 9999: every certificate is "due", so this forces a renewal.
    cmd.args(["renew", "--days", "9999", "--no-random-sleep"]);
}

#[test]
fn lego_http01_issues_and_renews() {
    let Some(bin) = client_path("CAIRN_TEST_LEGO") else {
        return;
    };
    let env = Env::start();
    let names = ["x.example.com"];
    let listen = format!("127.0.0.1:{}", env.server.http01_port);
    let with_http = |cmd: &mut Command| {
        cmd.args(["--http", "--http.port", &listen]);
    };

    // Deactivating the authorization after issuance (RFC 8555 §7.5.2) makes
    // the renewal validate again instead of reusing it.
    let mut cmd = lego(&env, &bin, "ec256", &names);
    with_http(&mut cmd);
    cmd.args(["run", "--always-deactivate-authorizations", "true"]);
    env.run("lego http-01 issuance", cmd);
    let first = verify_issued(&env, &lego_cert(&env, names[0]), &names);

    let mut cmd = lego(&env, &bin, "ec256", &names);
    with_http(&mut cmd);
    lego_renew(&mut cmd);
    let renewal = env.run("lego http-01 renewal", cmd);
    assert!(
        renewal.stderr.contains("use http-01 solver"),
        "the renewal reused a deactivated authorization instead of validating again:\n{}",
        renewal.stderr
    );
    let renewed = verify_issued(&env, &lego_cert(&env, names[0]), &names);
    assert_ne!(
        first.serial, renewed.serial,
        "renewal returned the same certificate"
    );
}

#[test]
fn lego_tls_alpn01_issues() {
    let Some(bin) = client_path("CAIRN_TEST_LEGO") else {
        return;
    };
    let env = Env::start();
    let names = ["t.example.com", "u.example.com"];

    // A P-384 certificate key: CLIENTS.md warns of servers that mangle them.
    let mut cmd = lego(&env, &bin, "ec384", &names);
    cmd.args(["--tls", "--tls.port"])
        .arg(format!("127.0.0.1:{}", env.server.tls_alpn01_port))
        .arg("run");
    env.run("lego tls-alpn-01 issuance", cmd);
    verify_issued(&env, &lego_cert(&env, names[0]), &names);
}

#[test]
fn lego_dns01_wildcard_issues_and_renews() {
    let Some(bin) = client_path("CAIRN_TEST_LEGO") else {
        return;
    };
    let env = Env::start();
    let hook = env.write_dns_hook();
    let names = ["*.w.example.com", "w.example.com"];
    let with_dns = |cmd: &mut Command| {
        cmd.args(["--dns", "exec", "--dns.resolvers"])
            .arg(env.dns.dns_addr.to_string())
            // Only the mock DNS serves these names: do not look for their
            // authoritative servers, ask the resolver once and go on.
            .arg("--dns.disable-cp")
            .env("EXEC_PATH", &hook)
            .env("EXEC_POLLING_INTERVAL", "1")
            .env("EXEC_PROPAGATION_TIMEOUT", "30")
            // lego solves the exec provider's challenges one at a time, 60 s
            // apart by default (w.example.com and *.w.example.com share a
            // record name); a second is plenty against the mock DNS.
            .env("EXEC_SEQUENCE_INTERVAL", "1")
            .env_remove("EXEC_MODE");
    };

    let mut cmd = lego(&env, &bin, "rsa2048", &names);
    with_dns(&mut cmd);
    cmd.arg("run");
    env.run("lego dns-01 issuance", cmd);
    let first = verify_issued(&env, &lego_cert(&env, names[0]), &names);

    let mut cmd = lego(&env, &bin, "rsa2048", &names);
    with_dns(&mut cmd);
    lego_renew(&mut cmd);
    env.run("lego dns-01 renewal", cmd);
    let renewed = verify_issued(&env, &lego_cert(&env, names[0]), &names);
    assert_ne!(
        first.serial, renewed.serial,
        "renewal returned the same certificate"
    );
}

/// The seven names of the forum thread's certificate: one registered domain.
const SEVEN_NAMES: [&str; 7] = [
    "a.example.com",
    "b.example.com",
    "c.example.com",
    "d.example.com",
    "e.example.com",
    "f.example.com",
    "g.example.com",
];

/// What lego's users saw in the forum thread of issue 16, from deSEC's API.
const THROTTLED: &str = "Request was throttled. Expected available in 1 second.";

/// lego with `SEVEN_NAMES` over dns-01 through its `exec` provider and the
/// curl hook the README gives (`scripts/testdns-dns01-hook`), against a mock DNS whose API takes one write per second per
/// registered domain.
///
/// Why one per second: lego solves an `exec` provider's challenges one at a
/// time (present, wait for propagation, validate, clean up, then sleep
/// `EXEC_SEQUENCE_INTERVAL`), so its writes come in pairs: a name's cleanup
/// and the next name's present, milliseconds apart. That pair is what a
/// per-second limit refuses; deSEC's lego provider, which presents every
/// name at once, met a limit of 3 or 6 per second the same way. At 6/s this
/// run sees no 429 at all.
fn lego_against_throttled_dns(
    bin: &Path,
    retries: &str,
    sequence_interval: &str,
) -> (Env, Command) {
    let dns = TestDns::start_with(&["--write-rate", "1/s", "--write-scope", "domain"], &[]);
    let env = Env::start_with_dns(dns, |opts| opts);
    let hook = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/testdns-dns01-hook");
    let mut cmd = lego(&env, bin, "ec256", &SEVEN_NAMES);
    cmd.args(["--dns", "exec", "--dns.resolvers"])
        .arg(env.dns.dns_addr.to_string())
        .arg("--dns.disable-cp")
        .env("EXEC_PATH", &hook)
        .env("TESTDNS_API", &env.dns.api_url)
        .env("TESTDNS_RETRY", retries)
        // lego sleeps this long before its first propagation check, so a
        // name's cleanup always comes a second or more after its present.
        .env("EXEC_POLLING_INTERVAL", "1")
        .env("EXEC_PROPAGATION_TIMEOUT", "30")
        .env("EXEC_SEQUENCE_INTERVAL", sequence_interval)
        .env_remove("EXEC_MODE")
        .arg("run");
    (env, cmd)
}

/// How many writes the mock DNS refused.
fn throttled_writes(env: &Env) -> usize {
    env.dns.log().matches("testdns: throttled a write").count()
}

#[test]
fn lego_dns01_hook_that_gives_up_on_429_fails_like_the_forum_thread() {
    let Some(bin) = client_path("CAIRN_TEST_LEGO") else {
        return;
    };
    let (env, cmd) = lego_against_throttled_dns(&bin, "0", "0");
    let out = env.run_expecting_failure("lego dns-01, 7 names, hook gives up on 429", cmd);
    assert!(
        out.contains(THROTTLED),
        "lego should log the API's refusal; it said:\n{out}"
    );
    assert!(
        out.contains("[b.example.com] acme: error presenting token"),
        "lego should fail the second name's present; it said:\n{out}"
    );
    assert!(!lego_cert(&env, SEVEN_NAMES[0]).exists());
    let error = out
        .find("error: one or more domains")
        .map_or("", |i| &out[i..]);
    eprintln!(
        "what users saw ({} writes refused):\n{}\n...\n{error}",
        throttled_writes(&env),
        out.lines()
            .find(|l| l.contains(THROTTLED))
            .unwrap_or_default()
    );
}

#[test]
fn lego_dns01_hook_that_honours_retry_after_issues() {
    let Some(bin) = client_path("CAIRN_TEST_LEGO") else {
        return;
    };
    let (env, cmd) = lego_against_throttled_dns(&bin, "5", "0");
    env.run("lego dns-01, 7 names, TESTDNS_RETRY=5", cmd);
    verify_issued(&env, &lego_cert(&env, SEVEN_NAMES[0]), &SEVEN_NAMES);
    let refused = throttled_writes(&env);
    eprintln!("{refused} writes refused, each retried after Retry-After");
    assert!(
        refused > 0,
        "the API never throttled lego: nothing was tested"
    );
}

#[test]
fn lego_dns01_with_a_sequence_interval_issues() {
    let Some(bin) = client_path("CAIRN_TEST_LEGO") else {
        return;
    };
    // A second between one name's cleanup and the next name's present: the
    // plain hook is never refused.
    let (env, cmd) = lego_against_throttled_dns(&bin, "0", "1");
    env.run("lego dns-01, 7 names, EXEC_SEQUENCE_INTERVAL=1", cmd);
    verify_issued(&env, &lego_cert(&env, SEVEN_NAMES[0]), &SEVEN_NAMES);
    assert_eq!(
        throttled_writes(&env),
        0,
        "the sequence interval was not enough"
    );
}

#[test]
fn lego_revokes() {
    let Some(bin) = client_path("CAIRN_TEST_LEGO") else {
        return;
    };
    let env = Env::start();
    let names = ["revoke.lego.example.com"];
    let listen = format!("127.0.0.1:{}", env.server.http01_port);
    let mut cmd = lego(&env, &bin, "ec256", &names);
    cmd.args(["--http", "--http.port", &listen]).arg("run");
    env.run("lego http-01 issuance", cmd);
    let issued = verify_issued(&env, &lego_cert(&env, names[0]), &names);

    // Reason 4 (superseded), as lego users revoke after replacing; --keep
    // leaves the certificate in place for the second attempt.
    let revoke = || {
        let mut cmd = lego(&env, &bin, "ec256", &names);
        cmd.args(["revoke", "--reason", "4", "--keep"]);
        cmd
    };
    env.run("lego revoke", revoke());
    assert_eq!(admin_status(&env, &issued), "revoked(superseded)");
    let output = env.run_expecting_failure("lego revoke (again)", revoke());
    assert!(
        output.contains("urn:ietf:params:acme:error:alreadyRevoked"),
        "the second revocation should fail with alreadyRevoked; lego said:\n{output}"
    );
}

// Debian's lego 4.9.1 has no ARI support (its `renew` has no `--ari-enable`
// or any renewal-information flag; later lego releases added it), so there is
// no lego renewal-information test.

/// Guards the suite against passing vacuously: with lego answering http-01
/// on a port the server does not dial, validation must fail and lego must
/// report the server's `connection` problem.
#[test]
fn lego_http01_fails_when_the_challenge_is_not_served() {
    let Some(bin) = client_path("CAIRN_TEST_LEGO") else {
        return;
    };
    let env = Env::start();
    let names = ["nobody-home.example.com"];
    let elsewhere = format!("127.0.0.1:{}", common::free_port());

    let mut cmd = lego(&env, &bin, "ec256", &names);
    cmd.args(["--http", "--http.port", &elsewhere]).arg("run");
    let output = env.run_expecting_failure("lego http-01 with no responder", cmd);
    assert!(
        output.contains("urn:ietf:params:acme:error:connection"),
        "lego should report the server's connection problem; it said:\n{output}"
    );
    assert!(
        !lego_cert(&env, names[0]).exists(),
        "lego stored a certificate for a failed order"
    );
}

// ------------------------------------------------- external account binding

/// A server that requires external account binding (an internal PKI).
fn eab_env() -> Env {
    Env::start_with(|o| o.with_env("CAIRN_ACME_EXTERNAL_ACCOUNT_REQUIRED", "true"))
}

/// `cairn admin eab create --json`, as an operator hands a key out:
/// (kid, base64url HMAC key).
fn eab_key(env: &Env) -> (String, String) {
    let out = cairn_admin(env, &["eab", "create", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("cairn admin eab create --json: {e}:\n{out}"));
    let field = |k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("no {k}: {v}"))
            .to_string()
    };
    (field("kid"), field("hmacKey"))
}

/// The key bound exactly one account, and `accounts show` names the key.
fn assert_bound_once(env: &Env, kid: &str) {
    let out = cairn_admin(env, &["eab", "list", "--json"]);
    let row: serde_json::Value = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .find(|r| r["kid"] == kid)
        .unwrap_or_else(|| panic!("{kid} not listed:\n{out}"));
    assert_eq!(row["boundAccounts"], 1, "{row}");
    let account = row["firstAccount"].to_string();
    let shown = cairn_admin(env, &["accounts", "show", &account, "--json"]);
    let shown: serde_json::Value = serde_json::from_str(shown.trim()).expect("JSON");
    assert_eq!(shown["externalAccountKey"], kid, "{shown}");
}

/// Refused without a key (certbot reads `externalAccountRequired` from the
/// directory, or gets the server's problem); registers with one from
/// `cairn admin eab create` (`--eab-kid`, `--eab-hmac-key`) and issues.
#[test]
fn certbot_registers_with_an_eab_key_and_not_without() {
    let Some(bin) = client_path("CAIRN_TEST_CERTBOT") else {
        return;
    };
    let env = eab_env();
    let output = env.run_expecting_failure(
        "certbot register without EAB",
        certbot(&env, &bin, "register"),
    );
    let line = output
        .lines()
        .find(|l| l.to_ascii_lowercase().contains("external account"))
        .unwrap_or_else(|| {
            panic!("certbot did not say an external account binding is required:\n{output}")
        });
    eprintln!("certbot showed: {line}");

    let (kid, hmac) = eab_key(&env);
    let mut cmd = certbot(&env, &bin, "register");
    // `=`: a key may start with `-` for all certbot knows.
    cmd.args(["--eab-kid", &kid])
        .arg(format!("--eab-hmac-key={hmac}"));
    env.run("certbot register with EAB", cmd);
    assert_bound_once(&env, &kid);
    certbot_http01(&env, &bin, "eab", &["eab.example.com"]);
}

/// lego the same: refused without `--eab`, registers and issues with
/// `--eab --kid --hmac`.
#[test]
fn lego_registers_with_an_eab_key_and_not_without() {
    let Some(bin) = client_path("CAIRN_TEST_LEGO") else {
        return;
    };
    let env = eab_env();
    let names = ["eab.example.com"];
    let listen = format!("127.0.0.1:{}", env.server.http01_port);
    let mut cmd = lego(&env, &bin, "ec256", &names);
    cmd.args(["--http", "--http.port", &listen, "run"]);
    let output = env.run_expecting_failure("lego without EAB", cmd);
    let line = output
        .lines()
        .find(|l| l.to_ascii_lowercase().contains("external account"))
        .unwrap_or_else(|| {
            panic!("lego did not say an external account binding is required:\n{output}")
        });
    eprintln!("lego showed: {line}");

    let (kid, hmac) = eab_key(&env);
    let mut cmd = lego(&env, &bin, "ec256", &names);
    cmd.args(["--eab", "--kid", &kid])
        .arg(format!("--hmac={hmac}"))
        .args(["--http", "--http.port", &listen, "run"]);
    env.run("lego with EAB", cmd);
    verify_issued(&env, &lego_cert(&env, names[0]), &names);
    assert_bound_once(&env, &kid);
}

/// A client meeting a limit is told what happened: with certificatesPerDomain
/// at 1 a week, certbot's second certificate under the same registered
/// domain is refused, certbot exits non-zero, and what it prints is Cairn's
/// detail (the limit, the registered domain and when a retry succeeds).
#[test]
fn certbot_shows_a_rate_limited_refusal() {
    let Some(bin) = client_path("CAIRN_TEST_CERTBOT") else {
        return;
    };
    let env = Env::start_with(|o| {
        o.with_env("CAIRN_LIMITS_PROFILE", "unlimited")
            .with_env("CAIRN_LIMITS_WINDOWS_CERTIFICATES_PER_DOMAIN_BURST", "1")
            .with_env("CAIRN_LIMITS_WINDOWS_CERTIFICATES_PER_DOMAIN_COUNT", "1")
            .with_env(
                "CAIRN_LIMITS_WINDOWS_CERTIFICATES_PER_DOMAIN_PERIOD_SECS",
                "604800",
            )
    });
    // Both names count for the registered domain limited-example.org.
    let domain = "limited-example.org";
    let issued_at = time::OffsetDateTime::now_utc();
    certbot_http01(&env, &bin, "first", &["first.limited-example.org"]);

    let port = env.server.http01_port.to_string();
    let mut cmd = certbot(&env, &bin, "certonly");
    cmd.args(["--standalone", "--http-01-address", "127.0.0.1"])
        .args(["--http-01-port", &port])
        .args(["--cert-name", "second", "-d", "second.limited-example.org"]);
    let output = env.run_expecting_failure("certbot certonly (rate limited)", cmd);
    let refused_at = time::OffsetDateTime::now_utc();
    let log = certbot_log(&env);
    let context = format!(
        "certbot said:\n{output}\n--- certbot log ---\n{}",
        tail(&log, 60)
    );
    assert!(
        log.contains("urn:ietf:params:acme:error:rateLimited"),
        "certbot did not receive rateLimited; {context}"
    );
    // What certbot shows the user (not only its debug log) is Cairn's detail.
    let line = output
        .lines()
        .find(|l| l.contains("too many"))
        .unwrap_or_else(|| panic!("certbot did not show Cairn's detail; {context}"));
    eprintln!("certbot showed: {line}");
    // The registered domain itself, not only inside the requested name.
    let names_domain = line
        .match_indices(domain)
        .any(|(i, _)| !line[..i].ends_with('.'));
    assert!(
        names_domain,
        "the detail does not name the registered domain {domain}: {line}"
    );
    let at = line
        .find("retry after ")
        .map(|i| &line[i + "retry after ".len()..])
        .unwrap_or_else(|| panic!("the detail does not say when to retry: {line}"));
    let when = time::PrimitiveDateTime::parse(
        at.get(..19).unwrap_or(at),
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"),
    )
    .unwrap_or_else(|e| panic!("retry time in {line:?}: {e}"))
    .assume_utc();
    // One token a week, spent by the first order: a retry succeeds a week
    // after it (seconds rounded up).
    let week = time::Duration::days(7);
    assert!(
        when >= issued_at + week - time::Duration::seconds(1)
            && when <= refused_at + week + time::Duration::seconds(1),
        "retry time {when} is not a week after the first order \
         ({issued_at} .. {refused_at}): {line}"
    );
    assert!(
        !certbot_live(&env, "second", "fullchain.pem").exists(),
        "certbot stored a certificate for a refused order"
    );
}

/// Asserts the server validated `name` with `kind` (its log line per
/// validation), so a client cannot pass on a challenge type it was not
/// meant to use.
fn assert_validated_with(env: &Env, name: &str, kind: &str) {
    // A server on a terminal colours its log's fields: drop any escapes.
    let mut log = String::new();
    let mut in_escape = false;
    for c in env.server.log().chars() {
        match c {
            '\x1b' => in_escape = true,
            'm' if in_escape => in_escape = false,
            c if !in_escape => log.push(c),
            _ => {}
        }
    }
    let line = format!("kind=\"{kind}\" domain={name} outcome=valid");
    assert!(
        log.contains(&line),
        "the server did not validate {name} with {kind}; its validations:\n{}",
        log.lines()
            .filter(|l| l.contains("validation finished"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// -------------------------------------------------------------------- Caddy

/// How long Caddy may take to obtain its certificates: it needs about a
/// second on loopback. A failed attempt ends the wait at once (Caddy would
/// retry a minute later, and again, for days).
const CADDY_TIMEOUT: Duration = Duration::from_secs(45);

/// The challenge Caddy may use; the other one is disabled.
#[derive(Clone, Copy)]
enum CaddyChallenge {
    Http01,
    TlsAlpn01,
}

/// Caddy (`caddy run`) serving sites for `names`, with Cairn as its only CA
/// (`acme_ca`, Cairn's root as `acme_ca_root`), one challenge type, and
/// its own listeners (on loopback) on the ports Cairn dials: `http_port`
/// answers http-01, `https_port` tls-alpn-01. No admin endpoint; storage,
/// configuration and log in the test's directory. Killed on drop.
struct Caddy {
    child: std::process::Child,
    log: PathBuf,
    storage: PathBuf,
}

impl Caddy {
    fn start(env: &Env, bin: &Path, challenge: CaddyChallenge, names: &[&str]) -> Caddy {
        let dir = env.dir().join("caddy");
        fs::create_dir_all(&dir).expect("create Caddy's directory");
        let (http_port, https_port, disabled) = match challenge {
            CaddyChallenge::Http01 => (
                env.server.http01_port,
                common::free_port(),
                "disable_tlsalpn_challenge",
            ),
            CaddyChallenge::TlsAlpn01 => (
                common::free_port(),
                env.server.tls_alpn01_port,
                "disable_http_challenge",
            ),
        };
        let storage = dir.join("storage");
        let caddyfile = dir.join("Caddyfile");
        fs::write(
            &caddyfile,
            format!(
                "{{
\tadmin off
\tdefault_bind 127.0.0.1
\tstorage file_system {storage}
\thttp_port {http_port}
\thttps_port {https_port}
\tacme_ca {dir_url}
\tacme_ca_root {root}
\temail test@example.com
\tskip_install_trust
\tocsp_stapling off
}}

{sites} {{
\ttls {{
\t\tissuer acme {{
\t\t\t{disabled}
\t\t}}
\t}}
\trespond \"served by Caddy\"
}}
",
                storage = storage.display(),
                dir_url = env.server.dir_url,
                root = env.server.root_pem_path.display(),
                sites = names.join(", "),
            ),
        )
        .expect("write the Caddyfile");
        let log = dir.join("caddy.log");
        let out = fs::File::create(&log).expect("create Caddy's log");
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&caddyfile)
            // Caddy keeps its autosaved configuration and data under these.
            .env("HOME", &dir)
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env("XDG_DATA_HOME", dir.join("data"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone Caddy's log handle"))
            .stderr(out);
        for var in ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"] {
            cmd.env_remove(var);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Caddy {
            child,
            log,
            storage,
        }
    }

    /// Waits (at most `CADDY_TIMEOUT`, and no longer than Caddy's first
    /// failed attempt) until Caddy has stored a certificate for each name
    /// (it obtains one per name), then checks each chains to the server's
    /// root and names exactly its name.
    fn wait_for_certificates(&mut self, env: &Env, names: &[&str]) -> Vec<Issued> {
        let started = Instant::now();
        loop {
            // certmagic writes the key, the certificate, then the metadata
            // (`.json`): once that is there, the `.crt` is complete.
            let found: Option<Vec<PathBuf>> = names
                .iter()
                .map(|name| {
                    let crt = find_file(&self.storage, &format!("{name}.crt"))?;
                    crt.with_extension("json").exists().then_some(crt)
                })
                .collect();
            if let Some(paths) = found {
                eprintln!("Caddy obtained {names:?} in {:?}", started.elapsed());
                return names
                    .iter()
                    .zip(paths)
                    .map(|(name, path)| verify_issued(env, &path, &[name]))
                    .collect();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.fail(env, &format!("exited with {status}"));
            }
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            if log.contains(r#""msg":"will retry""#) {
                self.fail(env, "failed to obtain a certificate");
            }
            if started.elapsed() > CADDY_TIMEOUT {
                self.fail(
                    env,
                    &format!("had no certificate for {names:?} after {CADDY_TIMEOUT:?}"),
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn fail(&self, env: &Env, why: &str) -> ! {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        panic!(
            "Caddy {why}\n--- Caddy log (tail) ---\n{}\n\
             --- server log: {} (its tail follows) ---",
            tail(&log, 60),
            env.server.log_path.display(),
        );
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first file called `name` under `dir`, at any depth.
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if entry.file_name() == name {
            return Some(path);
        }
    }
    None
}

/// Caddy gets a certificate for each of two sites over http-01, answered by
/// its own HTTP listener. Before Cairn answered POST-as-GET on its issuer,
/// Caddy never finished: it follows the certificate's `Link: rel="up"` that
/// way, and retried the whole issuance on the 405.
#[test]
fn caddy_http01_obtains_certificates() {
    let Some(bin) = client_path("CAIRN_TEST_CADDY") else {
        return;
    };
    let env = Env::start();
    let names = ["caddy.example.com", "www.caddy.example.com"];
    let mut caddy = Caddy::start(&env, &bin, CaddyChallenge::Http01, &names);
    caddy.wait_for_certificates(&env, &names);
    for name in names {
        assert_validated_with(&env, name, "http-01");
    }
}

/// Caddy gets a certificate over tls-alpn-01, answered by its own HTTPS
/// listener.
#[test]
fn caddy_tls_alpn01_obtains_a_certificate() {
    let Some(bin) = client_path("CAIRN_TEST_CADDY") else {
        return;
    };
    let env = Env::start();
    let names = ["alpn.caddy.example.com"];
    let mut caddy = Caddy::start(&env, &bin, CaddyChallenge::TlsAlpn01, &names);
    caddy.wait_for_certificates(&env, &names);
    assert_validated_with(&env, names[0], "tls-alpn-01");
}

// ------------------------------------------------------- Ruby's acme-client

/// `tests/clients/acme_client.rb <step>` run by `ruby`, with the account key
/// in the test's directory.
fn ruby_acme_client(env: &Env, ruby: &Path, step: &str) -> Command {
    let mut cmd = Command::new(ruby);
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/acme_client.rb"))
        .arg(step)
        .arg(&env.server.dir_url)
        .arg(&env.server.root_pem_path)
        .arg(env.dir());
    cmd
}

/// The gem issues over http-01 (the script answers it), renews in a new
/// run that finds the account by its key alone, and revokes the first
/// certificate. Before Cairn stopped sending `Replay-Nonce` on GETs, the gem
/// crashed on its first request (the directory).
#[test]
fn ruby_acme_client_issues_renews_and_revokes() {
    let Some(ruby) = client_path("CAIRN_TEST_RUBY") else {
        return;
    };
    let env = Env::start();
    let names = ["ruby.example.com", "gem.example.com"];
    let issue = |label: &str, out: &str| {
        let mut cmd = ruby_acme_client(&env, &ruby, "issue");
        cmd.arg(env.server.http01_port.to_string())
            .arg(env.dir().join(out))
            .args(names);
        let run = env.run(label, cmd);
        let account = run
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("account: "))
            .unwrap_or_else(|| panic!("{label}: no account line in:\n{}", run.stdout))
            .to_string();
        (account, verify_issued(&env, &env.dir().join(out), &names))
    };

    let (account, first) = issue("acme-client issuance", "first.pem");
    assert!(account.ends_with(" (created)"), "{account}");
    for name in names {
        assert_validated_with(&env, name, "http-01");
    }
    let (again, renewed) = issue("acme-client renewal", "renewed.pem");
    assert_eq!(
        again,
        account.replace("(created)", "(existing)"),
        "the renewal did not find the account by its key"
    );
    assert_ne!(
        first.serial, renewed.serial,
        "renewal returned the same certificate"
    );

    let mut cmd = ruby_acme_client(&env, &ruby, "revoke");
    cmd.arg(env.dir().join("first.pem")).arg("4");
    env.run("acme-client revoke", cmd);
    assert_eq!(admin_status(&env, &first), "revoked(superseded)");
    assert_eq!(admin_status(&env, &renewed), "valid");
}

// ------------------------------------------------------------ fault injection

/// The faults of the README's table, each as a rule for the run.
const FAULTS: &[(&str, &str)] = &[
    ("429 on newOrder", "newOrder:rateLimited=2@#1"),
    ("503 on newNonce", "newNonce:unavailable=1@#1"),
    ("500 on finalize", "finalize:serverInternal@#1"),
    ("badNonce on a good nonce", "*:badNonce@#1"),
    ("slow order (3 s)", "order:slow=3000@#1"),
    ("processing for 5 s after finalize", "finalize:processing=5"),
];

/// Puts `rules` on the server's management listener (`PUT /faults`).
fn set_faults(env: &Env, rules: &[&str]) -> serde_json::Value {
    let body = serde_json::json!({ "rules": rules }).to_string();
    let out = Command::new("curl")
        .args(["-sS", "-X", "PUT", "-H", "content-type: application/json"])
        .args(["--data", &body])
        .arg(format!("{}/faults", env.server.mgmt_url))
        .output()
        .expect("run curl");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("PUT /faults: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn get_faults(env: &Env) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-sS"])
        .arg(format!("{}/faults", env.server.mgmt_url))
        .output()
        .expect("run curl");
    serde_json::from_slice(&out.stdout).expect("GET /faults")
}

/// One client run under one fault: did it get its certificate, how many
/// requests reached the faulted endpoint, how long it took.
struct Reaction {
    issued: bool,
    requests: u64,
    secs: f64,
    /// The client showed the problem's detail to its user.
    told: bool,
}

fn react(env: &Env, label: &str, rule: &str, cmd: Command) -> Reaction {
    set_faults(env, &[rule]);
    let started = Instant::now();
    let run = env.execute(label, cmd);
    let issued = matches!(&run.outcome, Ok(s) if s.success());
    let v = get_faults(env);
    set_faults(env, &[]);
    Reaction {
        issued,
        requests: v["rules"][0]["requests"].as_u64().unwrap_or(0),
        secs: started.elapsed().as_secs_f64(),
        told: format!("{}{}", run.stdout, run.stderr).contains("injected fault"),
    }
}

/// What certbot and lego do when Cairn injects each fault once: the table
/// in the README ("Fault injection"), checked here run by run.
#[test]
fn clients_react_to_injected_faults() {
    let (Some(certbot_bin), Some(lego_bin)) = (
        client_path("CAIRN_TEST_CERTBOT"),
        client_path("CAIRN_TEST_LEGO"),
    ) else {
        return;
    };
    let env = Env::start();
    let port = env.server.http01_port.to_string();
    let listen = format!("127.0.0.1:{}", env.server.http01_port);
    let mut table = Vec::new();
    for (i, (what, rule)) in FAULTS.iter().enumerate() {
        let name = format!("fault{i}.example.com");
        let mut cmd = certbot(&env, &certbot_bin, "certonly");
        cmd.args(["--standalone", "--http-01-address", "127.0.0.1"])
            .args(["--http-01-port", &port])
            .args(["--cert-name", &format!("fault{i}"), "-d", &name]);
        let c = react(&env, &format!("certbot under {rule}"), rule, cmd);
        let lname = format!("lego-fault{i}.example.com");
        let mut cmd = lego(&env, &lego_bin, "ec256", &[&lname]);
        cmd.args(["--http", "--http.port", &listen, "run"]);
        let l = react(&env, &format!("lego under {rule}"), rule, cmd);
        table.push((*what, *rule, c, l));
    }
    let shown: Vec<String> = table
        .iter()
        .map(|(what, rule, c, l)| {
            format!(
                "{what} ({rule}): certbot issued={} requests={} told={} {:.1}s; lego issued={} requests={} told={} {:.1}s",
                c.issued, c.requests, c.told, c.secs, l.issued, l.requests, l.told, l.secs
            )
        })
        .collect();
    eprintln!("{}", shown.join("\n"));
    // Per fault, as the README's table says: (certbot issued, retried the
    // faulted endpoint; lego issued, retried). Neither retries a 429, a
    // 503 or a 500 even once; both retry a refused nonce; both wait out a
    // slow answer and an order left processing.
    let expected = [
        (false, false, false, false),
        (false, false, false, false),
        (false, false, false, false),
        (true, true, true, true),
        (true, false, true, false),
        (true, false, true, false),
    ];
    let got: Vec<(bool, bool, bool, bool)> = table
        .iter()
        // More than one request reached the endpoint: a retry (for
        // `*:badNonce`, every POST counts, and issuing at all proves it).
        .map(|(_, _, c, l)| (c.issued, c.requests > 1, l.issued, l.requests > 1))
        .collect();
    assert_eq!(got, expected, "\n{}", shown.join("\n"));
    // Refusals with a body are shown to the user with Cairn's detail (a
    // HEAD newNonce answer has no body to show).
    for (what, _, c, l) in [&table[0], &table[2]] {
        assert!(
            c.told && l.told,
            "{what}: the detail was not shown\n{}",
            shown.join("\n")
        );
    }
    // The waits are real: the order was processing for 5 s.
    let (_, _, c, l) = &table[5];
    assert!(c.secs >= 5.0 && l.secs >= 5.0, "{}", shown.join("\n"));
}
