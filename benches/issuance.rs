//! Issuance load generator: N concurrent ACME accounts run full flows (newOrder →
//! authz → challenge → poll → finalize → certificate) against the real `cairn`
//! binary and the run prints issuances/s, latency percentiles per step, errors by
//! type, and the server's CPU time per issuance read from `/proc/<pid>/stat`.
//! `--only-nonce` measures HEAD newNonce alone; `--only-ari` measures GET
//! renewalInfo alone (each worker first issues one certificate to ask about).
//! `--server pebble` drives Debian's Pebble 2.4 with the same client instead, and
//! `--summarize` turns the JSON lines of such runs into the tables of
//! scripts/bench-vs-pebble. How to run it and the figures measured so far are in
//! BENCHMARKS.md.
//!
//! The client is deliberately lean (one current-thread Tokio runtime, keys and
//! accounts made before the clock starts, one keep-alive HTTP/1.1 connection per
//! worker) because it shares the machine's cores with the server; its own CPU
//! time is reported beside the server's so the split is visible.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use clap::Parser;
use josekit::jwk::KeyPair as _;
use josekit::jws::{JwsSigner, ES256};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ERR_NS: &str = "urn:ietf:params:acme:error:";
/// Every request loop stops by itself: `--issuances` runs are cut off here too.
const HARD_CAP: Duration = Duration::from_secs(1800);
/// A single request slower than this counts as a `timeout` error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a flow waits for an order to become ready (or valid) before giving up.
const POLL_LIMIT: Duration = Duration::from_secs(15);

#[derive(Parser, Debug, Clone)]
#[command(
    name = "issuance",
    about = "Cairn issuance benchmark: cargo bench --bench issuance -- [options]"
)]
struct Args {
    /// The `cairn` binary to start (default: the one cargo built with this bench,
    /// target/release/cairn).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Directory URL of an already-running server instead of starting one; repeat it
    /// to spread the workers round-robin over several instances.
    #[arg(long = "directory")]
    directories: Vec<String>,
    /// Root certificate (PEM file) the running server's HTTPS certificate chains to.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Process id(s) of the running server(s), to read their CPU time and RSS.
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// Concurrent workers, each with its own account and connection.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds to measure (workers start no new flow after this).
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Stop after this many issuances instead of after --duration.
    #[arg(long)]
    issuances: Option<u64>,
    /// Measure HEAD newNonce alone, at the highest rate the workers reach (a server
    /// the bench starts then runs with `CAIRN_LIMITS_PROFILE=unlimited`).
    #[arg(long)]
    only_nonce: bool,
    /// Measure GET renewalInfo (ARI) alone: each worker issues one certificate, not
    /// measured, then asks for its renewal window as fast as it can.
    #[arg(long)]
    only_ari: bool,
    /// Measure, then pre-load this many issuances, then measure again: latency with an
    /// (almost) empty database against a large one.
    #[arg(long, default_value_t = 0)]
    history: u64,
    /// Before starting a Cairn server, write this many past issuances into its new
    /// data directory (or database) with `cairn admin load-history`: a store that has
    /// issued that many certificates, without going through ACME (BENCHMARKS.md,
    /// "History").
    #[arg(long, default_value_t = 0)]
    preload: u64,
    /// Workers used for the --history pre-load.
    #[arg(long, default_value_t = 16)]
    history_concurrency: usize,
    /// Client runtime threads: 1 is a current-thread runtime (the least overhead).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Also print one JSON object per measured phase.
    #[arg(long)]
    json: bool,
    /// Keep the temporary data directory (database, server log) of a started server.
    #[arg(long)]
    keep_data: bool,
    /// Extra `KEY=VALUE` environment for a server the bench starts (repeatable),
    /// e.g. `CAIRN_LIMITS_PROFILE=unlimited` or `CAIRN_DATABASE_URL=postgres://...`.
    #[arg(long = "server-env")]
    server_env: Vec<String>,
    /// The server to start: `cairn`, or `pebble` (Debian's Pebble 2.4, for the
    /// side-by-side rows of scripts/bench-vs-pebble). Against Pebble the client never
    /// lets a newOrder overlap an authorization POST-as-GET (see `PebbleLock`).
    #[arg(long, value_enum, default_value_t = ServerKind::Cairn)]
    server: ServerKind,
    /// The Pebble binary for `--server pebble`.
    #[arg(long, default_value = "/usr/bin/pebble")]
    pebble_bin: PathBuf,
    /// pebble-challtestsrv, the DNS server of `--http01` runs (both servers).
    #[arg(long, default_value = "/usr/bin/pebble-challtestsrv")]
    challtestsrv_bin: PathBuf,
    /// Cairn's preset (`test`, `dev`, ...).
    #[arg(long, default_value = "test")]
    preset: String,
    /// Cairn instances to start on one data directory (and one database); the workers
    /// are spread round-robin over them.
    #[arg(long, default_value_t = 1)]
    instances: usize,
    /// A PostgreSQL server (URL of a database to connect to, with the right to create
    /// databases): Cairn runs on a fresh database there, dropped after the run, and
    /// the CPU of that cluster's processes working for it is reported beside Cairn's.
    #[arg(long)]
    database_url: Option<String>,
    /// Real http-01 validation instead of always-valid: the server resolves names
    /// through pebble-challtestsrv (A 127.0.0.1) and fetches the key authorization
    /// from a responder in this process.
    #[arg(long)]
    http01: bool,
    /// After the measured run, start a fresh server with its SQL statement log on and
    /// count the statements of this many issuances (same concurrency; Cairn only).
    #[arg(long, default_value_t = 0)]
    count_sql: u64,
    /// Row name written into the JSON line (scripts/bench-vs-pebble).
    #[arg(long)]
    row: Option<String>,
    /// Row whose Pebble figures a Cairn-only row is compared with (`--summarize`).
    #[arg(long)]
    baseline: Option<String>,
    /// Append the first measured phase as one JSON line to this file (or, when the run
    /// fails, a line saying why).
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Read the JSON lines of a file written with --json-out and print the Markdown
    /// tables of scripts/bench-vs-pebble; runs nothing.
    #[arg(long)]
    summarize: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> std::process::ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.is_empty() {
        // `cargo test --benches` runs bench targets with no arguments: this one needs
        // a release server and 20 s, so it only says how to run it.
        println!("issuance benchmark: run it with `cargo bench --bench issuance -- [options]`");
        return std::process::ExitCode::SUCCESS;
    }
    let args = Args::parse();
    if let Some(path) = &args.summarize {
        return match summarize(path) {
            Ok(md) => {
                print!("{md}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("issuance: --summarize {}: {e:#}", path.display());
                std::process::ExitCode::FAILURE
            }
        };
    }
    let rt = if args.client_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.client_threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("issuance: cannot build the Tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let json_out = args.json_out.clone();
    let failed_line = |why: String| {
        json!({
            "row": args.row, "baseline": args.baseline,
            "server": server_label(&args), "failed": why,
        })
    };
    // SIGTERM (a timeout) drops the run: its servers are killed, its database dropped.
    let result = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = run(args.clone()) => r,
            _ = term.recv() => Err(anyhow::anyhow!("terminated (SIGTERM)")),
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("issuance: {e:#}");
            if let Some(path) = json_out {
                // The first line of the error is the reason; logs follow it.
                let why = format!("{e:#}")
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                if let Err(e) = append_line(&path, &failed_line(why)) {
                    eprintln!("issuance: --json-out {}: {e}", path.display());
                }
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn append_line(path: &std::path::Path, v: &Value) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{v}")
}

/// How a row's server is named in the tables.
fn server_label(args: &Args) -> String {
    match args.server {
        ServerKind::Pebble => "Pebble".to_string(),
        ServerKind::Cairn => format!(
            "Cairn ({} preset, {}{})",
            args.preset,
            if args.database_url.is_some() {
                "PostgreSQL"
            } else {
                "SQLite"
            },
            if args.instances > 1 {
                format!(", {} instances", args.instances)
            } else {
                String::new()
            }
        ),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.concurrency == 0 || args.history_concurrency == 0 || args.instances == 0 {
        anyhow::bail!("--concurrency, --history-concurrency and --instances must be at least 1");
    }
    let pebble = args.server == ServerKind::Pebble;
    if pebble
        && (args.database_url.is_some()
            || args.instances != 1
            || args.count_sql > 0
            || args.preload > 0
            || args.preset != "test")
    {
        anyhow::bail!(
            "--database-url, --instances, --count-sql, --preload and --preset are for Cairn, not --server pebble"
        );
    }
    if !args.directories.is_empty()
        && (args.http01 || args.count_sql > 0 || args.preload > 0 || pebble)
    {
        anyhow::bail!(
            "--http01, --count-sql, --preload and --server are for servers the bench starts, not --directory"
        );
    }
    let keyauths = args.http01.then(KeyAuths::default);
    let http01_port = match &keyauths {
        Some(k) => Some(start_responder(k.clone()).await?),
        None => None,
    };
    let mut rig = None;
    let (dir_urls, root_pem, pids) = if args.directories.is_empty() {
        let r = Rig::start(&args, http01_port, false).await?;
        let out = (r.dir_urls.clone(), r.root_pem.clone(), r.pids());
        rig = Some(r);
        out
    } else {
        let root = args
            .root
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("--directory needs --root PEM"))?;
        let pem = std::fs::read(root)
            .map_err(|e| anyhow::anyhow!("read --root {}: {e}", root.display()))?;
        (args.directories.clone(), pem, args.server_pids.clone())
    };

    let ctx = Ctx::new(
        &dir_urls,
        root_pem,
        pids,
        rig.as_ref().and_then(|r| r.db.clone()),
        Vec::new(),
        keyauths.clone(),
        pebble,
    )
    .await?;
    print_header(&args, &ctx, rig.as_ref());

    let limit = Limit {
        duration: Duration::from_secs_f64(args.duration.max(0.1)),
        issuances: args.issuances,
    };
    let mut reports = Vec::new();
    if args.only_nonce {
        reports.push(run_nonce_phase(&ctx, args.concurrency, &limit).await?);
    } else if args.only_ari {
        reports.push(run_ari_phase(&ctx, args.concurrency, &limit).await?);
    } else {
        // Only a server this bench started is known to begin with an empty database.
        let started_here = rig.is_some();
        let (label, before) = match (started_here, args.preload) {
            (true, 0) => ("empty db".to_string(), Some(0)),
            (true, n) => (format!("{n} stored"), Some(n)),
            (false, _) => ("first run".to_string(), None),
        };
        let first = run_issuance_phase(&ctx, &label, args.concurrency, &limit, before).await?;
        let mut issued = first.issuances;
        reports.push(first);
        if args.history > 0 {
            let t = Instant::now();
            println!(
                "pre-loading {} issuances with {} workers (not measured)...",
                args.history, args.history_concurrency
            );
            let preload = Limit {
                duration: HARD_CAP,
                issuances: Some(args.history),
            };
            let p = run_issuance_phase(&ctx, "preload", args.history_concurrency, &preload, None)
                .await?;
            issued += p.issuances;
            println!(
                "pre-loaded {} issuances in {:.1} s ({:.1}/s, {} errors)",
                p.issuances,
                t.elapsed().as_secs_f64(),
                p.rate(),
                p.error_count()
            );
            let label = format!("after +{} history", p.issuances);
            let before = started_here.then_some(issued);
            reports.push(run_issuance_phase(&ctx, &label, args.concurrency, &limit, before).await?);
        }
    }
    let preload_secs = rig.as_ref().and_then(|r| r.preload_secs);
    // The measured servers go before the counting pass starts its own.
    drop(ctx);
    drop(rig);
    if args.count_sql > 0 && !args.only_nonce {
        reports[0].sql_per_op = Some(count_sql(&args, http01_port, keyauths).await?);
    }
    for r in &reports {
        r.print_table();
    }
    if reports.len() > 1 {
        print_comparison(&reports);
    }
    let line = |r: &Report| {
        let mut j = r.json();
        j["row"] = json!(args.row);
        j["baseline"] = json!(args.baseline);
        j["server"] = json!(server_label(&args));
        j["http01"] = json!(args.http01);
        j["instances"] = json!(args.instances);
        j["preload"] = json!(args.preload);
        j["preload_secs"] = json!(preload_secs);
        j
    };
    if args.json {
        for r in &reports {
            println!("{}", line(r));
        }
    }
    if let Some(path) = &args.json_out {
        append_line(path, &line(&reports[0]))
            .map_err(|e| anyhow::anyhow!("--json-out {}: {e}", path.display()))?;
    }
    Ok(())
}

/// SQL statements per issuance: a fresh server (and database) of the same
/// configuration logs every statement (sqlx's `sqlx::query` events, as JSON lines),
/// and the log lines written while `--count-sql` issuances run are counted. A run
/// apart from the measured one, because logging each statement costs CPU.
async fn count_sql(
    args: &Args,
    http01_port: Option<u16>,
    keyauths: Option<KeyAuths>,
) -> anyhow::Result<f64> {
    let rig = Rig::start(args, http01_port, true).await?;
    let logs = rig.servers.iter().map(|p| p.log_path.clone()).collect();
    let ctx = Ctx::new(
        &rig.dir_urls,
        rig.root_pem.clone(),
        rig.pids(),
        None,
        logs,
        keyauths,
        false,
    )
    .await?;
    let limit = Limit {
        duration: HARD_CAP,
        issuances: Some(args.count_sql),
    };
    let r = run_issuance_phase(&ctx, "SQL count", args.concurrency, &limit, None).await?;
    match (r.sql_statements, r.issuances) {
        (Some(n), i) if i > 0 => {
            println!(
                "SQL statements: {n} in {i} issuances ({:.1} per issuance; separate run with the statement log on)",
                n as f64 / i as f64
            );
            Ok(n as f64 / i as f64)
        }
        _ => anyhow::bail!("--count-sql: no issuance or no statement log to count"),
    }
}

// ---------------------------------------------------------------------------------------
// The servers under test
// ---------------------------------------------------------------------------------------

/// Which ACME server a run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ServerKind {
    Cairn,
    Pebble,
}

/// A child process, killed (SIGKILL) and reaped on drop. It also gets SIGKILL when this
/// bench dies first (PR_SET_PDEATHSIG), so no server outlives a run killed by a timeout.
struct Proc {
    child: Child,
    pid: u32,
    what: String,
    log_path: PathBuf,
}

impl Proc {
    fn spawn(what: &str, cmd: &mut Command, log_path: PathBuf) -> anyhow::Result<Proc> {
        use std::os::unix::process::CommandExt as _;
        let log = std::fs::File::create(&log_path)?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: runs in the forked child before exec and makes one system call
        // (prctl), which is async-signal-safe; it allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))
                .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("spawn {what}: {e}"))?;
        Ok(Proc {
            pid: child.id(),
            child,
            what: what.to_string(),
            log_path,
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until `root()` gives a PEM and `url` answers 2xx over HTTPS trusting it;
    /// returns that PEM.
    fn wait_ready(
        &mut self,
        url: &str,
        root: impl Fn() -> Option<Vec<u8>>,
    ) -> anyhow::Result<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                anyhow::bail!(
                    "{} exited during start ({status}); log:\n{}",
                    self.what,
                    self.log()
                );
            }
            if let Some(pem) = root() {
                if let Ok(client) = http_client(&pem) {
                    let answered = std::thread::scope(|s| {
                        s.spawn(|| probe_directory(&client, url))
                            .join()
                            .unwrap_or(false)
                    });
                    if answered {
                        return Ok(pem);
                    }
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "{} did not answer {url} within 30 s; log:\n{}",
                    self.what,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything one run starts, in a temporary directory: the server process(es),
/// pebble-challtestsrv for `--http01`, a fresh PostgreSQL database for
/// `--database-url`. Dropping it kills the processes, then drops the database.
struct Rig {
    servers: Vec<Proc>,
    helpers: Vec<Proc>,
    db: Option<Arc<FreshDb>>,
    dir_urls: Vec<String>,
    root_pem: Vec<u8>,
    /// What was started, for the header.
    desc: Vec<String>,
    data_dir: PathBuf,
    keep: bool,
    /// How long `--preload` took.
    preload_secs: Option<f64>,
    _tmp: Option<tempfile::TempDir>,
}

impl Rig {
    /// `http01_port`: where the bench's own http-01 responder listens (`--http01`);
    /// `sql_log`: Cairn logs every SQL statement (the `--count-sql` pass only).
    async fn start(args: &Args, http01_port: Option<u16>, sql_log: bool) -> anyhow::Result<Rig> {
        let tmp = tempfile::Builder::new().prefix("cairn-bench-").tempdir()?;
        let base = tmp.path().to_path_buf();
        let data_dir = base.join("data");
        std::fs::create_dir_all(&data_dir)?;
        let mut rig = Rig {
            servers: Vec::new(),
            helpers: Vec::new(),
            db: None,
            dir_urls: Vec::new(),
            root_pem: Vec::new(),
            desc: Vec::new(),
            data_dir,
            keep: args.keep_data,
            preload_secs: None,
            _tmp: None,
        };
        // --keep-data: the directory outlives the run on purpose.
        if rig.keep {
            let _ = tmp.keep();
        } else {
            rig._tmp = Some(tmp);
        }
        let dns = match http01_port {
            Some(_) => Some(rig.start_challtestsrv(args, &base)?),
            None => None,
        };
        match args.server {
            ServerKind::Pebble => rig.start_pebble(args, &base, http01_port, dns)?,
            ServerKind::Cairn => {
                rig.start_cairn(args, &base, http01_port, dns, sql_log)
                    .await?
            }
        }
        Ok(rig)
    }

    fn pids(&self) -> Vec<u32> {
        self.servers.iter().map(|p| p.pid).collect()
    }

    /// pebble-challtestsrv as the one DNS server both Pebble and Cairn resolve
    /// challenge names with: every A query answers 127.0.0.1 and AAAA nothing; its
    /// own challenge responders are off (the bench answers http-01 itself).
    fn start_challtestsrv(&mut self, args: &Args, base: &std::path::Path) -> anyhow::Result<u16> {
        let dns = free_port()?;
        let mgmt = free_port()?;
        let mut cmd = Command::new(&args.challtestsrv_bin);
        cmd.arg("-dns01")
            .arg(format!("127.0.0.1:{dns}"))
            .arg("-management")
            .arg(format!("127.0.0.1:{mgmt}"))
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""]);
        let mut p = Proc::spawn(
            "pebble-challtestsrv",
            &mut cmd,
            base.join("challtestsrv.log"),
        )?;
        let deadline = Instant::now() + Duration::from_secs(15);
        // It binds DNS before its management listener.
        while std::net::TcpStream::connect(("127.0.0.1", mgmt)).is_err() {
            if let Ok(Some(status)) = p.child.try_wait() {
                anyhow::bail!("pebble-challtestsrv exited ({status}); log:\n{}", p.log());
            }
            if Instant::now() > deadline {
                anyhow::bail!("pebble-challtestsrv did not start; log:\n{}", p.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.desc.push(format!(
            "{} (pid {}): DNS on 127.0.0.1:{dns} (A 127.0.0.1, no AAAA)",
            args.challtestsrv_bin.display(),
            p.pid
        ));
        self.helpers.push(p);
        Ok(dns)
    }

    /// Debian's Pebble on free loopback ports with a TLS certificate made here, no
    /// sleeps before validation, no deliberately rejected nonces, and every challenge
    /// valid at once unless http-01 is real (then `-dnsserver` is challtestsrv).
    fn start_pebble(
        &mut self,
        args: &Args,
        base: &std::path::Path,
        http01_port: Option<u16>,
        dns: Option<u16>,
    ) -> anyhow::Result<()> {
        let (cert_pem, key_pem, root_pem) = pebble_tls()?;
        let (cert_path, key_path) = (base.join("pebble-tls.pem"), base.join("pebble-tls.key"));
        std::fs::write(&cert_path, cert_pem)?;
        std::fs::write(&key_path, key_pem)?;
        let listen = free_port()?;
        let mgmt = free_port()?;
        let dead = free_port()?;
        let config = json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": cert_path,
            "privateKey": key_path,
            "httpPort": http01_port.unwrap_or(dead),
            "tlsPort": dead,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        let config_path = base.join("pebble-config.json");
        std::fs::write(&config_path, config.to_string())?;
        let mut cmd = Command::new(&args.pebble_bin);
        for (k, _) in std::env::vars() {
            if k.starts_with("PEBBLE_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("-config")
            .arg(&config_path)
            .current_dir(base)
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0");
        let mode = match dns {
            Some(d) => {
                cmd.arg("-dnsserver").arg(format!("127.0.0.1:{d}"));
                format!(
                    "-dnsserver 127.0.0.1:{d}, httpPort {}",
                    http01_port.unwrap_or(dead)
                )
            }
            None => {
                cmd.env("PEBBLE_VA_ALWAYS_VALID", "1");
                "PEBBLE_VA_ALWAYS_VALID=1".to_string()
            }
        };
        cmd.envs(args.server_env.iter().filter_map(|kv| kv.split_once('=')));
        let mut p = Proc::spawn("pebble", &mut cmd, base.join("pebble.log"))?;
        let url = format!("https://127.0.0.1:{listen}/dir");
        self.root_pem = p.wait_ready(&url, || Some(root_pem.clone()))?;
        self.desc.push(format!(
            "{} (pid {}), PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 {mode}",
            args.pebble_bin.display(),
            p.pid
        ));
        self.servers.push(p);
        self.dir_urls.push(url);
        Ok(())
    }

    /// `--instances` × `cairn serve --preset P` on one data directory (and one fresh
    /// database with `--database-url`), each on free loopback ports.
    async fn start_cairn(
        &mut self,
        args: &Args,
        base: &std::path::Path,
        http01_port: Option<u16>,
        dns: Option<u16>,
        sql_log: bool,
    ) -> anyhow::Result<()> {
        let bin = match &args.server_bin {
            Some(b) => b.clone(),
            // cargo builds the package's binaries (release profile) with a bench.
            None => PathBuf::from(env!("CARGO_BIN_EXE_cairn")),
        };
        if !bin.exists() {
            anyhow::bail!(
                "server binary {} is missing: build it first with `cargo build --release` \
                 (or pass --server-bin PATH)",
                bin.display()
            );
        }
        if let Some(admin) = &args.database_url {
            self.db = Some(Arc::new(FreshDb::create(admin).await?));
        }
        if args.preload > 0 && !sql_log {
            self.preload(args, &bin, base)?;
        }
        for i in 0..args.instances {
            let listen = free_port()?;
            let mgmt = free_port()?;
            // Nothing listens here: always-valid validation must not need DNS.
            let dead = free_port()?;
            let mut cmd = Command::new(&bin);
            for (k, _) in std::env::vars() {
                if k.starts_with("CAIRN_") && k != "CAIRN_LOG" {
                    cmd.env_remove(k);
                }
            }
            cmd.arg("serve")
                .arg("--preset")
                .arg(&args.preset)
                .arg("--data-dir")
                .arg(&self.data_dir)
                .env("CAIRN_SERVER_LISTEN", format!("127.0.0.1:{listen}"))
                .env(
                    "CAIRN_SERVER_MANAGEMENT_LISTEN",
                    format!("127.0.0.1:{mgmt}"),
                );
            match (http01_port, dns) {
                (Some(http), Some(dns)) => cmd
                    .env("CAIRN_VA_ALWAYS_VALID", "false")
                    .env("CAIRN_VA_HTTP01_PORT", http.to_string())
                    .env("CAIRN_VA_RESOLVER", format!("127.0.0.1:{dns}")),
                _ => cmd
                    .env("CAIRN_VA_ALWAYS_VALID", "true")
                    .env("CAIRN_VA_RESOLVER", format!("127.0.0.1:{dead}")),
            };
            if let Some(db) = &self.db {
                cmd.env("CAIRN_DATABASE_URL", &db.url);
            }
            // Instances sharing a data directory keep used nonces in the
            // database (a `local` server runs alone).
            if args.instances > 1 {
                cmd.env("CAIRN_ACME_NONCES", "shared");
            }
            if sql_log {
                cmd.env("CAIRN_LOG", "warn,sqlx::query=debug")
                    .env("CAIRN_LOG_FORMAT", "json");
            }
            // newNonce alone from one address runs into the per-IP request
            // rate of any limit set; this mode measures the server, not it.
            cmd.envs(
                args.only_nonce
                    .then_some(("CAIRN_LIMITS_PROFILE", "unlimited")),
            )
            .envs(args.server_env.iter().filter_map(|kv| kv.split_once('=')));
            let mut p = Proc::spawn(
                &format!("cairn serve #{}", i + 1),
                &mut cmd,
                base.join(format!("server{}.log", i + 1)),
            )?;
            let url = format!("https://127.0.0.1:{listen}/directory");
            let root_path = self.data_dir.join("root.pem");
            self.root_pem = p.wait_ready(&url, || std::fs::read(&root_path).ok())?;
            self.desc.push(format!(
                "{} (pid {}), preset {}, {}, {}",
                bin.display(),
                p.pid,
                args.preset,
                if dns.is_some() {
                    "real http-01"
                } else {
                    "always_valid"
                },
                match &self.db {
                    Some(db) => format!("PostgreSQL database {}", db.name),
                    None => "SQLite".to_string(),
                }
            ));
            self.servers.push(p);
            self.dir_urls.push(url);
        }
        Ok(())
    }
}

impl Rig {
    /// `cairn admin load-history --certificates N` on the data directory (and
    /// database) the servers will use, before they start.
    fn preload(
        &mut self,
        args: &Args,
        bin: &std::path::Path,
        base: &std::path::Path,
    ) -> anyhow::Result<()> {
        let t = Instant::now();
        let mut cmd = Command::new(bin);
        for (k, _) in std::env::vars() {
            if k.starts_with("CAIRN_") && k != "CAIRN_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.arg("admin")
            .arg("--preset")
            .arg(&args.preset)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("load-history")
            .arg("--certificates")
            .arg(args.preload.to_string());
        if let Some(db) = &self.db {
            cmd.env("CAIRN_DATABASE_URL", &db.url);
        }
        cmd.envs(args.server_env.iter().filter_map(|kv| kv.split_once('=')));
        println!(
            "pre-loading {} certificates (cairn admin load-history)...",
            args.preload
        );
        let mut p = Proc::spawn(
            "cairn admin load-history",
            &mut cmd,
            base.join("load-history.log"),
        )?;
        let status = p.child.wait()?;
        let log = p.log();
        if !status.success() {
            anyhow::bail!("cairn admin load-history failed ({status}):\n{log}");
        }
        self.preload_secs = Some(t.elapsed().as_secs_f64());
        self.desc.push(format!(
            "history: {}",
            log.lines()
                .find(|l| l.starts_with("loaded "))
                .unwrap_or("(no summary)")
        ));
        Ok(())
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // Servers first, so none is mid-request when its helpers or database go.
        self.servers.clear();
        self.helpers.clear();
        if self.keep {
            eprintln!("kept data dir {}", self.data_dir.display());
        }
    }
}

/// Pebble's HTTPS listener needs a certificate. Debian's package ships none (upstream's
/// `test/certs` are not in it), so each run makes a throwaway root and a leaf for
/// 127.0.0.1 and localhost, and the client trusts that root alone.
fn pebble_tls() -> anyhow::Result<(String, String, Vec<u8>)> {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "issuance bench: Pebble TLS root");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut leaf =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem(), ca_cert.pem().into_bytes()))
}

/// A database of its own on the PostgreSQL server at `--database-url`, dropped after
/// the run, and the cluster's processes whose CPU is counted beside the server's.
struct FreshDb {
    admin_url: String,
    name: String,
    url: String,
    /// A connection to the admin database, to list the processes working for ours.
    watch: tokio::sync::Mutex<sqlx::PgConnection>,
    /// The cluster's postmaster, when the cluster runs on this machine.
    postmaster: Option<u32>,
}

impl FreshDb {
    async fn create(admin_url: &str) -> anyhow::Result<FreshDb> {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(admin_url)
            .await
            .map_err(|e| anyhow::anyhow!("connect to --database-url: {e}"))?;
        let name = format!("cairn_bench_{:016x}", rand::random::<u64>());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut conn)
            .await?;
        // Our backend's parent is the postmaster, if that backend is a process here.
        let postmaster = u32::try_from(backend)
            .ok()
            .filter(|pid| proc_comm(*pid).as_deref() == Some("postgres"))
            .and_then(parent_pid);
        let mut url = url::Url::parse(admin_url)?;
        url.set_path(&format!("/{name}"));
        Ok(FreshDb {
            admin_url: admin_url.to_string(),
            name,
            url: url.to_string(),
            watch: tokio::sync::Mutex::new(conn),
            postmaster,
        })
    }

    /// utime+stime ticks of each PostgreSQL process working for this database: its
    /// backends, the cluster's background processes (they have no database) and the
    /// postmaster. Other databases' backends (other users of a shared cluster) are
    /// left out. None when the cluster's processes are not visible here.
    async fn cpu_ticks(&self) -> Option<BTreeMap<u32, u64>> {
        let postmaster = self.postmaster?;
        let mut conn = self.watch.lock().await;
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 OR datname IS NULL",
        )
        .bind(&self.name)
        .fetch_all(&mut *conn)
        .await
        .ok()?;
        let mut out = BTreeMap::new();
        for pid in pids
            .into_iter()
            .filter_map(|p| u32::try_from(p).ok())
            .chain([postmaster])
        {
            if let Some((u, s)) = cpu_ticks(&pid.to_string()) {
                out.insert(pid, u + s);
            }
        }
        Some(out)
    }
}

impl Drop for FreshDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside the client's runtime: a private one on its own thread.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                use sqlx::Connection as _;
                let mut c = sqlx::PgConnection::connect(&admin).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut c)
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("issuance: could not drop database {}", self.name);
        }
    }
}

/// The command name of a process (`/proc/<pid>/comm`).
fn proc_comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The parent of a process (`PPid` in `/proc/<pid>/status`).
fn parent_pid(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

/// Tokens the bench's http-01 responder answers, with their key authorizations.
type KeyAuths = Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>;

/// The http-01 responder both servers validate against (`--http01`): one HTTP/1.1
/// server in this process, on the client's runtime, answering every registered token.
async fn start_responder(keyauths: KeyAuths) -> anyhow::Result<u16> {
    async fn respond(
        axum::extract::State(k): axum::extract::State<KeyAuths>,
        axum::extract::Path(token): axum::extract::Path<String>,
    ) -> Result<String, axum::http::StatusCode> {
        k.lock()
            .ok()
            .and_then(|m| m.get(&token).cloned())
            .ok_or(axum::http::StatusCode::NOT_FOUND)
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let app = axum::Router::new()
        .route(
            "/.well-known/acme-challenge/{token}",
            axum::routing::get(respond),
        )
        .with_state(keyauths);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(port)
}

/// One GET of the directory on a private runtime (the caller may be inside one).
fn probe_directory(client: &reqwest::Client, url: &str) -> bool {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return false;
    };
    rt.block_on(async { matches!(client.get(url).send().await, Ok(r) if r.status().is_success()) })
}

/// A loopback port free now and not handed out before by this process:
/// the kernel may give a just-released port again, and two of a server's
/// listeners on one port stopped a two-instance run at start.
fn free_port() -> std::io::Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
}

fn http_client(root_pem: &[u8]) -> anyhow::Result<reqwest::Client> {
    let cert = reqwest::Certificate::from_pem(root_pem)?;
    Ok(reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(cert)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .tcp_nodelay(true)
        .build()?)
}

// ---------------------------------------------------------------------------------------
// /proc readings
// ---------------------------------------------------------------------------------------

/// `getconf CLK_TCK` (the unit of /proc/<pid>/stat times); 100 if it cannot be read.
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// (utime, stime) in clock ticks of a process ("self" or a pid), all threads included.
fn cpu_ticks(pid: &str) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it are plain.
    let rest = s.get(s.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state), so utime (field 14) is f[11] and stime (15) is f[12].
    Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
}

/// A size in KiB from /proc/<pid>/status: `VmRSS:` (resident now) or `VmHWM:` (peak).
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// (busy, total) jiffies of the whole machine from the first line of /proc/stat.
fn machine_ticks() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let nums: Vec<u64> = s
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest times are inside user).
    let total: u64 = nums.iter().take(8).sum();
    let idle = nums.get(3)? + nums.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// CPU and memory readings at one instant.
#[derive(Debug, Clone)]
struct Snapshot {
    at: Instant,
    server: Option<(u64, u64)>,
    server_rss_kib: Option<u64>,
    /// Peak RSS (VmHWM), summed over the server processes.
    server_hwm_kib: Option<u64>,
    client: Option<(u64, u64)>,
    machine: Option<(u64, u64)>,
    /// utime+stime ticks per PostgreSQL process working for the run's database.
    db: Option<BTreeMap<u32, u64>>,
    /// SQL statement lines in the servers' logs so far (`--count-sql` pass).
    sql_lines: Option<u64>,
}

impl Snapshot {
    async fn take(ctx: &Ctx) -> Snapshot {
        let db = match &ctx.db {
            Some(db) => db.cpu_ticks().await,
            None => None,
        };
        let sql_lines = (!ctx.sql_logs.is_empty())
            .then(|| {
                ctx.sql_logs
                    .iter()
                    .map(|p| sql_log_lines(p))
                    .sum::<Option<u64>>()
            })
            .flatten();
        let pids = &ctx.pids;
        let sum = |v: Vec<Option<(u64, u64)>>| -> Option<(u64, u64)> {
            v.into_iter()
                .try_fold((0, 0), |acc, x| x.map(|(u, s)| (acc.0 + u, acc.1 + s)))
        };
        let has = !pids.is_empty();
        let status_sum = |key: &str| {
            has.then(|| {
                pids.iter()
                    .map(|p| status_kib(*p, key))
                    .sum::<Option<u64>>()
            })
            .flatten()
        };
        Snapshot {
            at: Instant::now(),
            server: has
                .then(|| sum(pids.iter().map(|p| cpu_ticks(&p.to_string())).collect()))
                .flatten(),
            server_rss_kib: status_sum("VmRSS:"),
            server_hwm_kib: status_sum("VmHWM:"),
            client: cpu_ticks("self"),
            machine: machine_ticks(),
            db,
            sql_lines,
        }
    }
}

/// Lines of one SQL statement each in a Cairn log written with
/// `CAIRN_LOG=warn,sqlx::query=debug` and `CAIRN_LOG_FORMAT=json`.
fn sql_log_lines(path: &std::path::Path) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    Some(
        s.lines()
            .filter(|l| l.contains(r#""target":"sqlx::query""#))
            .count() as u64,
    )
}

// ---------------------------------------------------------------------------------------
// ACME client
// ---------------------------------------------------------------------------------------

/// One server instance: its directory's URLs.
struct Target {
    new_nonce: String,
    new_account: String,
    new_order: String,
    renewal_info: Option<String>,
}

impl Target {
    async fn discover(dir_url: &str, root_pem: &[u8]) -> anyhow::Result<Target> {
        let client = http_client(root_pem)?;
        let resp = client.get(dir_url).send().await?;
        if !resp.status().is_success() {
            anyhow::bail!("GET {dir_url}: HTTP {}", resp.status());
        }
        let dir: Value = serde_json::from_slice(&resp.bytes().await?)?;
        let field = |k: &str| -> anyhow::Result<String> {
            dir.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| anyhow::anyhow!("directory {dir_url} has no {k}"))
        };
        Ok(Target {
            new_nonce: field("newNonce")?,
            new_account: field("newAccount")?,
            new_order: field("newOrder")?,
            renewal_info: field("renewalInfo").ok(),
        })
    }
}

/// Why a flow failed, by step, for the error table.
#[derive(Debug)]
struct FlowError {
    step: &'static str,
    kind: String,
}

fn flow_err(step: &'static str, kind: impl Into<String>) -> FlowError {
    FlowError {
        step,
        kind: kind.into(),
    }
}

fn transport_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else if e.is_body() || e.is_decode() {
        "body".into()
    } else {
        "transport".into()
    }
}

/// The parts of a response a flow uses.
struct Resp {
    location: Option<String>,
    body: bytes::Bytes,
}

impl Resp {
    fn json(&self, step: &'static str) -> Result<Value, FlowError> {
        serde_json::from_slice(&self.body).map_err(|_| flow_err(step, "response is not JSON"))
    }
}

/// An ACME account and its connection: signs with ES256 (josekit) and keeps the
/// Replay-Nonce of every response for the next request.
struct Acme {
    http: reqwest::Client,
    target: Arc<Target>,
    signer: josekit::jws::alg::ecdsa::EcdsaJwsSigner,
    jwk: Value,
    kid: Option<String>,
    nonce: Option<String>,
    bad_nonce_retries: u64,
    /// The certificate key (P-256, rcgen), one per worker: CSRs differ only by name.
    cert_key: rcgen::KeyPair,
    /// The PEM chain of the last certificate issued (for `--only-ari`).
    last_cert: Vec<u8>,
    /// HTTP requests sent (every attempt, newNonce included).
    requests: u64,
    /// RFC 7638 thumbprint of the account key, for http-01 key authorizations.
    thumbprint: String,
    /// Where to publish http-01 key authorizations (`--http01`).
    keyauths: Option<KeyAuths>,
    /// Against Pebble only: see `PebbleLock`.
    pebble_lock: Option<PebbleLock>,
}

impl Acme {
    fn new(target: Arc<Target>, root_pem: &[u8]) -> anyhow::Result<Acme> {
        let kp = ES256.generate_key_pair()?;
        let signer = ES256.signer_from_jwk(&kp.to_jwk_private_key())?;
        let full = kp.to_jwk_public_key();
        let map: &serde_json::Map<String, Value> = full.as_ref();
        // RFC 7638 members only; josekit adds others (alg, use) that a server ignores
        // but that would cost bytes on every newAccount.
        let mut jwk = serde_json::Map::new();
        for k in ["crv", "kty", "x", "y"] {
            if let Some(v) = map.get(k) {
                jwk.insert(k.to_string(), v.clone());
            }
        }
        // RFC 7638: the required members in lexicographic order, no whitespace.
        let member = |k: &str| jwk.get(k).and_then(Value::as_str).unwrap_or_default();
        let canonical = format!(
            r#"{{"crv":"{}","kty":"{}","x":"{}","y":"{}"}}"#,
            member("crv"),
            member("kty"),
            member("x"),
            member("y")
        );
        let thumbprint = B64.encode(<sha2::Sha256 as sha2::Digest>::digest(canonical));
        Ok(Acme {
            requests: 0,
            thumbprint,
            keyauths: None,
            pebble_lock: None,
            http: http_client(root_pem)?,
            target,
            signer,
            jwk: Value::Object(jwk),
            kid: None,
            nonce: None,
            bad_nonce_retries: 0,
            last_cert: Vec::new(),
            cert_key: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
        })
    }

    /// HEAD newNonce.
    async fn fetch_nonce(&mut self, step: &'static str) -> Result<String, FlowError> {
        self.requests += 1;
        let resp = self
            .http
            .head(&self.target.new_nonce)
            .send()
            .await
            .map_err(|e| flow_err(step, format!("newNonce {}", transport_kind(&e))))?;
        resp.headers()
            .get("replay-nonce")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| flow_err(step, "newNonce without Replay-Nonce"))
    }

    fn sign(&self, url: &str, nonce: &str, payload: &[u8]) -> String {
        let mut protected = json!({"alg": "ES256", "nonce": nonce, "url": url});
        match &self.kid {
            Some(kid) => protected["kid"] = json!(kid),
            None => protected["jwk"] = self.jwk.clone(),
        }
        let p = B64.encode(protected.to_string());
        let pl = B64.encode(payload);
        // Signing with a valid in-memory P-256 key only fails if OpenSSL is broken.
        let sig = self
            .signer
            .sign(format!("{p}.{pl}").as_bytes())
            .expect("ES256 signing with a freshly generated key");
        json!({"protected": p, "payload": pl, "signature": B64.encode(sig)}).to_string()
    }

    /// A JWS POST (payload empty = POST-as-GET); retries once on badNonce.
    async fn post(
        &mut self,
        step: &'static str,
        url: &str,
        payload: &[u8],
    ) -> Result<Resp, FlowError> {
        for attempt in 0..2 {
            let nonce = match self.nonce.take() {
                Some(n) => n,
                None => self.fetch_nonce(step).await?,
            };
            let body = self.sign(url, &nonce, payload);
            self.requests += 1;
            let resp = self
                .http
                .post(url)
                .header("content-type", "application/jose+json")
                .body(body)
                .send()
                .await
                .map_err(|e| flow_err(step, transport_kind(&e)))?;
            let status = resp.status();
            let headers = resp.headers();
            self.nonce = headers
                .get("replay-nonce")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let location = headers
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = resp
                .bytes()
                .await
                .map_err(|e| flow_err(step, transport_kind(&e)))?;
            if status.is_success() {
                return Ok(Resp { location, body });
            }
            let ptype = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| "no problem document".into());
            let ptype = ptype.strip_prefix(ERR_NS).unwrap_or(&ptype).to_string();
            if attempt == 0 && ptype == "badNonce" {
                self.bad_nonce_retries += 1;
                continue;
            }
            return Err(flow_err(
                step,
                format!("{ptype} (HTTP {})", status.as_u16()),
            ));
        }
        unreachable!("the loop returns on its second attempt")
    }

    async fn create_account(&mut self) -> Result<(), FlowError> {
        let url = self.target.new_account.clone();
        let r = self
            .post("newAccount", &url, br#"{"termsOfServiceAgreed":true}"#)
            .await?;
        self.kid = Some(
            r.location
                .ok_or_else(|| flow_err("newAccount", "no Location"))?,
        );
        Ok(())
    }

    /// One full issuance for `name`; `csr` is its DER CSR, made before the clock starts.
    async fn issue(&mut self, name: &str, csr: &[u8]) -> Result<Timings, FlowError> {
        let start = Instant::now();
        let url = self.target.new_order.clone();
        let payload = json!({"identifiers": [{"type": "dns", "value": name}]}).to_string();
        let r = {
            let _exclusive = match &self.pebble_lock {
                Some(l) => Some(l.clone().write_owned().await),
                None => None,
            };
            self.post("newOrder", &url, payload.as_bytes()).await?
        };
        let order_url = r
            .location
            .clone()
            .ok_or_else(|| flow_err("newOrder", "no Location"))?;
        let order = r.json("newOrder")?;
        let authz_url = str_field(&order, "newOrder", |o| o["authorizations"][0].as_str())?;
        let finalize_url = str_field(&order, "newOrder", |o| o["finalize"].as_str())?;
        let t_new_order = start.elapsed();

        let t = Instant::now();
        let authz = {
            let _shared = match &self.pebble_lock {
                Some(l) => Some(l.clone().read_owned().await),
                None => None,
            };
            self.post("authz", &authz_url, b"").await?.json("authz")?
        };
        let chall = authz["challenges"].as_array().and_then(|cs| {
            cs.iter()
                .find(|c| c["type"] == "http-01")
                .or_else(|| cs.first())
        });
        let chall_url = chall
            .and_then(|c| c["url"].as_str())
            .map(str::to_string)
            .ok_or_else(|| flow_err("authz", "no challenge"))?;
        let token = chall.and_then(|c| c["token"].as_str()).map(str::to_string);
        let t_authz = t.elapsed();

        let t = Instant::now();
        let published = match (&self.keyauths, token) {
            (Some(k), Some(token)) => {
                let keyauth = format!("{token}.{}", self.thumbprint);
                if let Ok(mut m) = k.lock() {
                    m.insert(token.clone(), keyauth);
                }
                Some((k.clone(), token))
            }
            (Some(_), None) => return Err(flow_err("authz", "http-01 challenge without token")),
            _ => None,
        };
        let answered = self.post("challenge", &chall_url, b"{}").await;
        let t_challenge = t.elapsed();

        let t = Instant::now();
        let polled = match answered {
            Ok(_) => self.poll_order(&order_url, "ready", "poll").await,
            Err(e) => Err(e),
        };
        if let Some((k, token)) = published {
            if let Ok(mut m) = k.lock() {
                m.remove(&token);
            }
        }
        let (_, polls) = polled?;
        let t_poll = t.elapsed();

        let t = Instant::now();
        let csr_b64 = B64.encode(csr);
        let r = self
            .post(
                "finalize",
                &finalize_url,
                json!({ "csr": csr_b64 }).to_string().as_bytes(),
            )
            .await?;
        let mut order = r.json("finalize")?;
        let mut finalize_polls = 0;
        if order["status"] != "valid" {
            // Cairn finalizes synchronously; a server that does not is polled.
            let (o, n) = self.poll_order(&order_url, "valid", "finalize").await?;
            order = o;
            finalize_polls = n;
        }
        let cert_url = str_field(&order, "finalize", |o| o["certificate"].as_str())?;
        let t_finalize = t.elapsed();

        let t = Instant::now();
        let cert = self.post("certificate", &cert_url, b"").await?;
        if !cert.body.starts_with(b"-----BEGIN CERTIFICATE-----") {
            return Err(flow_err("certificate", "not a PEM chain"));
        }
        let t_cert = t.elapsed();
        self.last_cert = cert.body.to_vec();
        Ok(Timings {
            new_order: t_new_order,
            authz: t_authz,
            challenge: t_challenge,
            poll: t_poll,
            finalize: t_finalize,
            cert: t_cert,
            flow: start.elapsed(),
            polls: polls + finalize_polls,
        })
    }

    /// POST-as-GET the order until its status is `want`; returns it and the number of
    /// reads. Polls far faster than the 1 s Retry-After Cairn suggests, so the figure
    /// measures the server, not a client's politeness: 0, 1, 2, 4 ... 32 ms apart.
    async fn poll_order(
        &mut self,
        url: &str,
        want: &str,
        step: &'static str,
    ) -> Result<(Value, u32), FlowError> {
        let start = Instant::now();
        let mut wait = Duration::ZERO;
        let mut polls = 0;
        loop {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            polls += 1;
            let order = self.post(step, url, b"").await?.json(step)?;
            match order["status"].as_str() {
                Some(s) if s == want => return Ok((order, polls)),
                Some("invalid") => return Err(flow_err(step, "order became invalid")),
                _ => {}
            }
            if start.elapsed() > POLL_LIMIT {
                return Err(flow_err(step, format!("order not {want} after 15 s")));
            }
            wait = (wait * 2)
                .max(Duration::from_millis(1))
                .min(Duration::from_millis(32));
        }
    }
}

fn str_field(
    v: &Value,
    step: &'static str,
    get: impl Fn(&Value) -> Option<&str>,
) -> Result<String, FlowError> {
    get(v)
        .map(str::to_string)
        .ok_or_else(|| flow_err(step, "response lacks a URL it needs"))
}

/// A DER CSR for one name (CN and SAN), signed by the worker's certificate key.
fn make_csr(name: &str, key: &rcgen::KeyPair) -> Result<Vec<u8>, rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    Ok(params.serialize_request(key)?.der().to_vec())
}

// ---------------------------------------------------------------------------------------
// Phases
// ---------------------------------------------------------------------------------------

struct Ctx {
    targets: Vec<Arc<Target>>,
    root_pem: Vec<u8>,
    pids: Vec<u32>,
    clk_tck: f64,
    /// The database whose PostgreSQL processes' CPU is counted.
    db: Option<Arc<FreshDb>>,
    /// Server logs whose SQL statement lines are counted (the `--count-sql` pass).
    sql_logs: Vec<PathBuf>,
    /// The http-01 responder's tokens (`--http01`).
    keyauths: Option<KeyAuths>,
    /// Against Pebble: keeps newOrder and authorization reads apart.
    pebble_lock: Option<PebbleLock>,
}

impl Ctx {
    async fn new(
        dir_urls: &[String],
        root_pem: Vec<u8>,
        pids: Vec<u32>,
        db: Option<Arc<FreshDb>>,
        sql_logs: Vec<PathBuf>,
        keyauths: Option<KeyAuths>,
        pebble: bool,
    ) -> anyhow::Result<Ctx> {
        let mut targets = Vec::new();
        for url in dir_urls {
            targets.push(Arc::new(Target::discover(url, &root_pem).await?));
        }
        Ok(Ctx {
            targets,
            root_pem,
            pids,
            clk_tck: clock_ticks_per_second(),
            db,
            sql_logs,
            keyauths,
            pebble_lock: pebble.then(PebbleLock::default),
        })
    }
}

/// Pebble 2.4 deadlocks when a newOrder overlaps a POST-as-GET of an authorization:
/// its in-memory store takes its orders and authorizations locks in opposite orders
/// on those two paths. Against Pebble, every worker's newOrder holds this lock
/// exclusively for the whole request and every authorization read holds it shared,
/// so the two never overlap at the server (other requests are not held back). The
/// wait counts in that flow's latency: it is what it costs to drive Pebble at all.
type PebbleLock = Arc<tokio::sync::RwLock<()>>;

struct Limit {
    duration: Duration,
    issuances: Option<u64>,
}

/// Durations of the steps of one successful flow.
#[derive(Debug, Clone, Copy)]
struct Timings {
    new_order: Duration,
    authz: Duration,
    challenge: Duration,
    poll: Duration,
    finalize: Duration,
    cert: Duration,
    flow: Duration,
    polls: u32,
}

/// Picks one step's duration out of a flow's timings.
type StepOf = fn(&Timings) -> Duration;

#[derive(Default)]
struct WorkerStats {
    timings: Vec<Timings>,
    nonce_latencies: Vec<Duration>,
    errors: BTreeMap<String, u64>,
    bad_nonce_retries: u64,
    /// HTTP requests sent while measuring.
    requests: u64,
}

/// Shared stop conditions of one phase.
struct Gate {
    deadline: Instant,
    max: Option<u64>,
    claimed: AtomicU64,
    errors: AtomicU64,
    done: AtomicU64,
    aborted: AtomicBool,
}

impl Gate {
    fn new(limit: &Limit, start: Instant) -> Gate {
        let cap = if limit.issuances.is_some() {
            HARD_CAP
        } else {
            limit.duration.min(HARD_CAP)
        };
        Gate {
            deadline: start + cap,
            max: limit.issuances,
            claimed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            done: AtomicU64::new(0),
            aborted: AtomicBool::new(false),
        }
    }

    /// Whether a worker may start one more operation (and reserves it).
    fn claim(&self) -> bool {
        if self.aborted.load(Ordering::Relaxed) || Instant::now() >= self.deadline {
            return false;
        }
        match self.max {
            Some(max) => self.claimed.fetch_add(1, Ordering::Relaxed) < max,
            None => true,
        }
    }

    /// A failed operation gives its reservation back; a run where nearly everything
    /// fails stops instead of hammering the server with errors.
    fn failed(&self) {
        if self.max.is_some() {
            self.claimed.fetch_sub(1, Ordering::Relaxed);
        }
        let errors = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
        if errors >= 200 && errors > 10 * self.done.load(Ordering::Relaxed) {
            self.aborted.store(true, Ordering::Relaxed);
        }
    }
}

async fn make_clients(ctx: &Ctx, n: usize, accounts: bool) -> anyhow::Result<Vec<Acme>> {
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let target = ctx.targets[i % ctx.targets.len()].clone();
        let mut c = Acme::new(target, &ctx.root_pem)?;
        c.keyauths = ctx.keyauths.clone();
        c.pebble_lock = ctx.pebble_lock.clone();
        clients.push(c);
    }
    if accounts {
        // Concurrently, so the setup of 32 accounts takes one round trip's worth.
        let results = futures::future::join_all(clients.iter_mut().map(|c| async {
            c.nonce = Some(c.fetch_nonce("newNonce").await?);
            c.create_account().await
        }))
        .await;
        for r in results {
            r.map_err(|e| anyhow::anyhow!("account setup: {}: {}", e.step, e.kind))?;
        }
    }
    Ok(clients)
}

async fn run_issuance_phase(
    ctx: &Ctx,
    label: &str,
    concurrency: usize,
    limit: &Limit,
    db_issuances_before: Option<u64>,
) -> anyhow::Result<Report> {
    let clients = make_clients(ctx, concurrency, true).await?;
    let before = Snapshot::take(ctx).await;
    let gate = Arc::new(Gate::new(limit, before.at));
    let mut handles = Vec::new();
    for mut c in clients {
        let gate = gate.clone();
        handles.push(tokio::spawn(async move {
            let mut stats = WorkerStats::default();
            // Account set-up is outside the window.
            c.requests = 0;
            while gate.claim() {
                let name = format!("{:016x}.example.com", rand::random::<u64>());
                let csr = match make_csr(&name, &c.cert_key) {
                    Ok(csr) => csr,
                    Err(e) => {
                        *stats.errors.entry(format!("client: CSR {e}")).or_default() += 1;
                        gate.failed();
                        continue;
                    }
                };
                match c.issue(&name, &csr).await {
                    Ok(t) => {
                        gate.done.fetch_add(1, Ordering::Relaxed);
                        stats.timings.push(t);
                    }
                    Err(e) => {
                        *stats
                            .errors
                            .entry(format!("{}: {}", e.step, e.kind))
                            .or_default() += 1;
                        gate.failed();
                        // After a transport error the nonce may be stale or missing.
                        c.nonce = None;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            stats.bad_nonce_retries = c.bad_nonce_retries;
            stats.requests = c.requests;
            stats
        }));
    }
    let stats = join_workers(handles).await?;
    let after = Snapshot::take(ctx).await;
    Ok(Report::new(
        Mode::Issuance,
        label,
        concurrency,
        ctx,
        &before,
        &after,
        stats,
        gate.aborted.load(Ordering::Relaxed),
        db_issuances_before,
    ))
}

async fn run_nonce_phase(ctx: &Ctx, concurrency: usize, limit: &Limit) -> anyhow::Result<Report> {
    let clients = make_clients(ctx, concurrency, false).await?;
    let targets = clients
        .into_iter()
        .map(|c| {
            let url = c.target.new_nonce.clone();
            (c, reqwest::Method::HEAD, url)
        })
        .collect();
    run_request_phase(
        ctx,
        "newNonce only",
        "newNonce",
        "replay-nonce",
        targets,
        limit,
    )
    .await
}

async fn run_ari_phase(ctx: &Ctx, concurrency: usize, limit: &Limit) -> anyhow::Result<Report> {
    let mut clients = make_clients(ctx, concurrency, true).await?;
    // Each worker asks about a certificate of its own, issued before the clock starts.
    let mut targets = Vec::with_capacity(clients.len());
    for mut c in clients.drain(..) {
        let name = format!("{:016x}.example.com", rand::random::<u64>());
        let csr = make_csr(&name, &c.cert_key)?;
        c.issue(&name, &csr)
            .await
            .map_err(|e| anyhow::anyhow!("issuing for --only-ari: {}: {}", e.step, e.kind))?;
        let der = first_pem_der(&c.last_cert)
            .ok_or_else(|| anyhow::anyhow!("--only-ari: the certificate is not PEM"))?;
        let cert_id = cairn::ra::cert_id(&der)
            .ok_or_else(|| anyhow::anyhow!("--only-ari: no certID for the certificate"))?;
        let base = c
            .target
            .renewal_info
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the directory has no renewalInfo"))?;
        targets.push((c, reqwest::Method::GET, format!("{base}/{cert_id}")));
    }
    run_request_phase(
        ctx,
        "renewalInfo GET only",
        "renewalInfo",
        "retry-after",
        targets,
        limit,
    )
    .await
}

/// One kind of request, as fast as each worker gets answers: a success is a
/// 2xx carrying `header`, with its whole body read.
async fn run_request_phase(
    ctx: &Ctx,
    label: &str,
    step: &'static str,
    header: &'static str,
    targets: Vec<(Acme, reqwest::Method, String)>,
    limit: &Limit,
) -> anyhow::Result<Report> {
    let concurrency = targets.len();
    // One request per connection first, so TLS handshakes fall outside the window.
    for (c, method, url) in &targets {
        let _ = c.http.request(method.clone(), url).send().await;
    }
    let before = Snapshot::take(ctx).await;
    let gate = Arc::new(Gate::new(limit, before.at));
    let mut handles = Vec::new();
    for (c, method, url) in targets {
        let gate = gate.clone();
        handles.push(tokio::spawn(async move {
            let mut stats = WorkerStats::default();
            while gate.claim() {
                let t = Instant::now();
                stats.requests += 1;
                let ok = match c.http.request(method.clone(), &url).send().await {
                    Ok(resp) if resp.status().is_success() => {
                        let has = resp.headers().contains_key(header);
                        resp.bytes().await.is_ok() && has
                    }
                    Ok(resp) => {
                        *stats
                            .errors
                            .entry(format!("{step}: HTTP {}", resp.status().as_u16()))
                            .or_default() += 1;
                        false
                    }
                    Err(e) => {
                        *stats
                            .errors
                            .entry(format!("{step}: {}", transport_kind(&e)))
                            .or_default() += 1;
                        false
                    }
                };
                if ok {
                    gate.done.fetch_add(1, Ordering::Relaxed);
                    stats.nonce_latencies.push(t.elapsed());
                } else {
                    gate.failed();
                }
            }
            stats
        }));
    }
    let stats = join_workers(handles).await?;
    let after = Snapshot::take(ctx).await;
    Ok(Report::new(
        Mode::Nonce,
        label,
        concurrency,
        ctx,
        &before,
        &after,
        stats,
        gate.aborted.load(Ordering::Relaxed),
        None,
    ))
}

/// The DER of the first certificate in a PEM chain.
fn first_pem_der(pem: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(pem).ok()?;
    let body = text
        .split("-----BEGIN CERTIFICATE-----")
        .nth(1)?
        .split("-----END CERTIFICATE-----")
        .next()?;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

async fn join_workers(
    handles: Vec<tokio::task::JoinHandle<WorkerStats>>,
) -> anyhow::Result<WorkerStats> {
    let mut all = WorkerStats::default();
    for h in handles {
        let s = h.await?;
        all.timings.extend(s.timings);
        all.nonce_latencies.extend(s.nonce_latencies);
        for (k, v) in s.errors {
            *all.errors.entry(k).or_default() += v;
        }
        all.bad_nonce_retries += s.bad_nonce_retries;
        all.requests += s.requests;
    }
    Ok(all)
}

// ---------------------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Issuance,
    Nonce,
}

/// Nearest-rank percentiles of one latency series, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Pct {
    n: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Pct {
    fn of(mut v: Vec<Duration>) -> Option<Pct> {
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let at = |p: f64| {
            let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
            v[rank - 1].as_secs_f64() * 1e3
        };
        Some(Pct {
            n: v.len(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
        })
    }

    fn json(&self) -> Value {
        let r = |x: f64| (x * 1000.0).round() / 1000.0;
        json!({"n": self.n, "p50": r(self.p50), "p90": r(self.p90), "p99": r(self.p99), "max": r(self.max)})
    }
}

struct Report {
    mode: Mode,
    label: String,
    concurrency: usize,
    seconds: f64,
    /// Successful issuances (or nonces in nonce mode).
    issuances: u64,
    latencies: Vec<(&'static str, Pct)>,
    polls_per_flow: f64,
    errors: BTreeMap<String, u64>,
    bad_nonce_retries: u64,
    aborted: bool,
    server_user_s: Option<f64>,
    server_sys_s: Option<f64>,
    client_s: Option<f64>,
    machine_busy: Option<f64>,
    /// Share of the machine busy with neither the server nor this bench.
    other_busy: Option<f64>,
    rss_start_kib: Option<u64>,
    rss_end_kib: Option<u64>,
    /// Peak RSS (VmHWM) of the server process(es) at the end, start-up included.
    hwm_kib: Option<u64>,
    db_issuances_before: Option<u64>,
    /// HTTP requests the client sent in the window.
    requests: u64,
    /// CPU seconds of the PostgreSQL processes working for the run's database.
    db_cpu_s: Option<f64>,
    /// SQL statements logged in the window (`--count-sql` pass).
    sql_statements: Option<u64>,
    /// SQL statements per issuance, from the `--count-sql` pass.
    sql_per_op: Option<f64>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    fn new(
        mode: Mode,
        label: &str,
        concurrency: usize,
        ctx: &Ctx,
        before: &Snapshot,
        after: &Snapshot,
        stats: WorkerStats,
        aborted: bool,
        db_issuances_before: Option<u64>,
    ) -> Report {
        let secs = |a: u64, b: u64| b.saturating_sub(a) as f64 / ctx.clk_tck;
        let (server_user_s, server_sys_s) = match (before.server, after.server) {
            (Some(b), Some(a)) => (Some(secs(b.0, a.0)), Some(secs(b.1, a.1))),
            _ => (None, None),
        };
        let client_s = match (before.client, after.client) {
            (Some(b), Some(a)) => Some(secs(b.0 + b.1, a.0 + a.1)),
            _ => None,
        };
        let machine_busy = match (before.machine, after.machine) {
            (Some(b), Some(a)) if a.1 > b.1 => {
                Some((a.0 - b.0) as f64 / (a.1 - b.1) as f64 * 100.0)
            }
            _ => None,
        };
        // A process that started within the window counts from zero; one that ended
        // within it is lost (the pool keeps its connections for the whole run).
        let db_cpu_s = match (&before.db, &after.db) {
            (Some(b), Some(a)) => Some(
                a.iter()
                    .map(|(pid, t)| t.saturating_sub(b.get(pid).copied().unwrap_or(0)))
                    .sum::<u64>() as f64
                    / ctx.clk_tck,
            ),
            _ => None,
        };
        // What neither the server (nor its PostgreSQL) nor this bench used: other
        // processes on the machine (builds, tests), which make latencies noisy.
        // /proc/stat counts in USER_HZ, the same unit as CLK_TCK on Linux.
        let other_busy = match (before.machine, after.machine, client_s) {
            (Some(b), Some(a), Some(c)) if a.1 > b.1 => {
                let server = server_user_s.zip(server_sys_s).map_or(0.0, |(u, s)| u + s);
                let busy = secs(b.0, a.0);
                let db = db_cpu_s.unwrap_or(0.0);
                Some(((busy - server - db - c) / secs(b.1, a.1) * 100.0).max(0.0))
            }
            _ => None,
        };
        let sql_statements = match (before.sql_lines, after.sql_lines) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b)),
            _ => None,
        };
        let issuances = match mode {
            Mode::Issuance => stats.timings.len(),
            Mode::Nonce => stats.nonce_latencies.len(),
        } as u64;
        let mut latencies = Vec::new();
        let polls_per_flow = if stats.timings.is_empty() {
            0.0
        } else {
            stats.timings.iter().map(|t| t.polls as f64).sum::<f64>() / stats.timings.len() as f64
        };
        let series: [(&'static str, StepOf); 7] = [
            ("newOrder", |t| t.new_order),
            ("authz (POST-as-GET)", |t| t.authz),
            ("challenge {}", |t| t.challenge),
            ("poll until ready", |t| t.poll),
            ("finalize", |t| t.finalize),
            ("cert download", |t| t.cert),
            ("whole flow", |t| t.flow),
        ];
        if mode == Mode::Issuance {
            for (name, f) in series {
                if let Some(p) = Pct::of(stats.timings.iter().map(f).collect()) {
                    latencies.push((name, p));
                }
            }
        } else if let Some(p) = Pct::of(stats.nonce_latencies) {
            let name = if label.starts_with("renewalInfo") {
                "GET renewalInfo"
            } else {
                "HEAD newNonce"
            };
            latencies.push((name, p));
        }
        Report {
            mode,
            label: label.to_string(),
            concurrency,
            seconds: after.at.duration_since(before.at).as_secs_f64(),
            issuances,
            latencies,
            polls_per_flow,
            errors: stats.errors,
            bad_nonce_retries: stats.bad_nonce_retries,
            aborted,
            server_user_s,
            server_sys_s,
            client_s,
            machine_busy,
            other_busy,
            rss_start_kib: before.server_rss_kib,
            rss_end_kib: after.server_rss_kib,
            hwm_kib: after.server_hwm_kib,
            db_issuances_before,
            requests: stats.requests,
            db_cpu_s,
            sql_statements,
            sql_per_op: None,
        }
    }

    fn rate(&self) -> f64 {
        self.issuances as f64 / self.seconds.max(1e-9)
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn server_cpu_s(&self) -> Option<f64> {
        Some(self.server_user_s? + self.server_sys_s?)
    }

    /// Server CPU milliseconds per issuance (or per nonce).
    fn server_ms_per_op(&self) -> Option<f64> {
        (self.issuances > 0)
            .then(|| self.server_cpu_s().map(|s| s * 1e3 / self.issuances as f64))?
    }

    fn db_ms_per_op(&self) -> Option<f64> {
        (self.issuances > 0).then(|| self.db_cpu_s.map(|s| s * 1e3 / self.issuances as f64))?
    }

    fn requests_per_op(&self) -> Option<f64> {
        (self.issuances > 0).then(|| self.requests as f64 / self.issuances as f64)
    }

    fn client_ms_per_op(&self) -> Option<f64> {
        (self.issuances > 0).then(|| self.client_s.map(|s| s * 1e3 / self.issuances as f64))?
    }

    fn unit(&self) -> &'static str {
        match self.mode {
            Mode::Issuance => "issuance",
            Mode::Nonce => "request",
        }
    }

    fn print_table(&self) {
        let mut out = String::new();
        let opt = |v: Option<f64>, digits: usize| match v {
            Some(x) => format!("{x:.digits$}"),
            None => "n/a".to_string(),
        };
        let mib = |v: Option<u64>| match v {
            Some(k) => format!("{:.1} MiB", k as f64 / 1024.0),
            None => "n/a".into(),
        };
        out.push_str(&format!(
            "\n== {} | concurrency {} | {:.1} s{} ==\n",
            self.label,
            self.concurrency,
            self.seconds,
            match self.db_issuances_before {
                Some(n) => format!(" | {n} issuances in the db before"),
                None => String::new(),
            }
        ));
        out.push_str(&format!(
            "{:<24}{} ({:.1}/s)\n",
            match self.mode {
                Mode::Issuance => "issuances",
                Mode::Nonce => "requests",
            },
            self.issuances,
            self.rate()
        ));
        out.push_str(&format!(
            "{:<24}{} ms/{} (user {} s + sys {} s = {} s)\n",
            "server CPU",
            opt(self.server_ms_per_op(), 3),
            self.unit(),
            opt(self.server_user_s, 2),
            opt(self.server_sys_s, 2),
            opt(self.server_cpu_s(), 2),
        ));
        if self.db_cpu_s.is_some() {
            out.push_str(&format!(
                "{:<24}{} ms/{} ({} s)\n",
                "PostgreSQL CPU",
                opt(self.db_ms_per_op(), 3),
                self.unit(),
                opt(self.db_cpu_s, 2),
            ));
        }
        out.push_str(&format!(
            "{:<24}{} per {}\n",
            "requests",
            opt(self.requests_per_op(), 2),
            self.unit()
        ));
        if let Some(n) = self.sql_per_op {
            out.push_str(&format!(
                "{:<24}{n:.1} per {} (separate run with the statement log on)\n",
                "SQL statements",
                self.unit()
            ));
        }
        out.push_str(&format!(
            "{:<24}{} ms/{} ({} s)\n",
            "client CPU (this bench)",
            opt(self.client_ms_per_op(), 3),
            self.unit(),
            opt(self.client_s, 2),
        ));
        out.push_str(&format!(
            "{:<24}{}% of all cores ({}% by other processes)\n",
            "machine busy",
            opt(self.machine_busy, 0),
            opt(self.other_busy, 0)
        ));
        out.push_str(&format!(
            "{:<24}start {}, end {}, peak (VmHWM) {}\n",
            "server RSS",
            mib(self.rss_start_kib),
            mib(self.rss_end_kib),
            mib(self.hwm_kib)
        ));
        if self.mode == Mode::Issuance {
            out.push_str(&format!(
                "{:<24}{:.2} order reads per flow, {} badNonce retries\n",
                "polling", self.polls_per_flow, self.bad_nonce_retries
            ));
        }
        out.push_str(&format!(
            "{:<24}{:>8} {:>9} {:>9} {:>9} {:>9}\n",
            "latency (ms)", "n", "p50", "p90", "p99", "max"
        ));
        for (name, p) in &self.latencies {
            out.push_str(&format!(
                "  {:<22}{:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2}\n",
                name, p.n, p.p50, p.p90, p.p99, p.max
            ));
        }
        if self.errors.is_empty() {
            out.push_str(&format!("{:<24}none\n", "errors"));
        } else {
            out.push_str(&format!("{:<24}{}\n", "errors", self.error_count()));
            let mut errs: Vec<_> = self.errors.iter().collect();
            errs.sort_by(|a, b| b.1.cmp(a.1));
            for (k, v) in errs {
                out.push_str(&format!("  {v:>8}  {k}\n"));
            }
        }
        if self.aborted {
            out.push_str("ABORTED: nearly every operation failed\n");
        }
        print!("{out}");
        let _ = std::io::stdout().flush();
    }

    fn json(&self) -> Value {
        let r3 = |v: Option<f64>| v.map(|x| (x * 1000.0).round() / 1000.0);
        let lat: serde_json::Map<String, Value> = self
            .latencies
            .iter()
            .map(|(k, p)| (k.to_string(), p.json()))
            .collect();
        json!({
            "mode": match self.mode { Mode::Issuance => "issuance", Mode::Nonce => "nonce" },
            "label": self.label,
            "concurrency": self.concurrency,
            "seconds": r3(Some(self.seconds)),
            "count": self.issuances,
            "per_second": r3(Some(self.rate())),
            "db_issuances_before": self.db_issuances_before,
            "server_cpu_ms_per_op": r3(self.server_ms_per_op()),
            "server_user_s": r3(self.server_user_s),
            "server_sys_s": r3(self.server_sys_s),
            "client_cpu_ms_per_op": r3(self.client_ms_per_op()),
            "client_cpu_s": r3(self.client_s),
            "machine_busy_pct": r3(self.machine_busy),
            "other_processes_busy_pct": r3(self.other_busy),
            "server_rss_kib_start": self.rss_start_kib,
            "server_rss_kib_end": self.rss_end_kib,
            "server_hwm_kib": self.hwm_kib,
            "requests": self.requests,
            "requests_per_op": r3(self.requests_per_op()),
            "db_cpu_s": r3(self.db_cpu_s),
            "db_cpu_ms_per_op": r3(self.db_ms_per_op()),
            "sql_per_op": self.sql_per_op.map(|x| (x * 10.0).round() / 10.0),
            "polls_per_flow": r3(Some(self.polls_per_flow)),
            "bad_nonce_retries": self.bad_nonce_retries,
            "errors": self.errors,
            "aborted": self.aborted,
            "latency_ms": lat,
        })
    }
}

fn print_comparison(reports: &[Report]) {
    println!(
        "\n{:<28}{:>10} {:>10} {:>11} {:>11} {:>11} {:>12}",
        "phase", "per s", "srv ms/op", "order p50", "order p99", "flow p50", "flow p99"
    );
    for r in reports {
        let get = |name: &str| r.latencies.iter().find(|(n, _)| *n == name).map(|p| p.1);
        let (o, f) = (get("newOrder"), get("whole flow"));
        let ms = |p: Option<Pct>, hi: bool| match p {
            Some(p) => format!("{:.2}", if hi { p.p99 } else { p.p50 }),
            None => "-".into(),
        };
        println!(
            "{:<28}{:>10.1} {:>10} {:>11} {:>11} {:>11} {:>12}",
            r.label,
            r.rate(),
            r.server_ms_per_op()
                .map(|x| format!("{x:.3}"))
                .unwrap_or_else(|| "n/a".into()),
            ms(o, false),
            ms(o, true),
            ms(f, false),
            ms(f, true)
        );
    }
}

fn print_header(args: &Args, ctx: &Ctx, rig: Option<&Rig>) {
    println!("Cairn issuance benchmark");
    match rig {
        Some(r) => {
            for d in &r.desc {
                println!("started: {d}");
            }
            println!("data dir {}", r.data_dir.display());
            if ctx.pebble_lock.is_some() {
                println!(
                    "client: newOrder never overlaps an authorization read (Pebble 2.4 deadlock)"
                );
            }
        }
        None => println!(
            "server: {} running instance(s), pids {:?}",
            ctx.targets.len(),
            ctx.pids
        ),
    }
    println!(
        "client: HTTP/1.1 over TLS (reqwest+rustls), one keep-alive connection per worker; \
         {} runtime thread(s); ES256 accounts, P-256 CSRs",
        args.client_threads.max(1)
    );
    let what = match args.issuances {
        Some(n) => format!("{n} issuances"),
        None => format!("{} s", args.duration),
    };
    println!(
        "run: {} workers, {}{}{}; CPU from /proc (CLK_TCK {})",
        args.concurrency,
        what,
        if args.only_nonce {
            ", newNonce only"
        } else if args.only_ari {
            ", renewalInfo only"
        } else {
            ""
        },
        if args.history > 0 {
            format!(", then +{} history and again", args.history)
        } else {
            String::new()
        },
        ctx.clk_tck
    );
    let _ = std::io::stdout().flush();
}

// ---------------------------------------------------------------------------------------
// scripts/bench-vs-pebble: the side-by-side tables
// ---------------------------------------------------------------------------------------

/// The Markdown tables of scripts/bench-vs-pebble, from the JSON lines its runs wrote
/// with --json-out: every run in the order it ran, then Cairn/Pebble ratios per row
/// (means over each side's runs).
fn summarize(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let runs = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<Vec<Value>, _>>()?;
    let row_of = |r: &Value| r["row"].as_str().unwrap_or("(no row)").to_string();
    let is_pebble = |r: &Value| r["server"].as_str() == Some("Pebble");
    let num = |r: &Value, k: &str| r[k].as_f64();
    // The latency of one whole operation: an issuance, or the one request of a row
    // that measures a single kind of request.
    let whole = |r: &Value, p: &str| {
        let lat = &r["latency_ms"];
        lat["whole flow"][p]
            .as_f64()
            .or_else(|| lat["HEAD newNonce"][p].as_f64())
            .or_else(|| lat["GET renewalInfo"][p].as_f64())
    };
    // The mean of a field over runs, and a ratio of two such figures.
    let mean = |v: &[&Value], f: &dyn Fn(&Value) -> Option<f64>| {
        let xs: Vec<f64> = v.iter().filter_map(|r| f(r)).collect();
        (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".to_string(),
    };
    // Cairn's CPU per operation includes PostgreSQL's when there is one.
    let cpu_total = |r: &Value| {
        Some(num(r, "server_cpu_ms_per_op")? + num(r, "db_cpu_ms_per_op").unwrap_or(0.0))
    };
    let fmt_rate = |x: f64| {
        if x >= 1000.0 {
            format!("{x:.0}")
        } else {
            format!("{x:.1}")
        }
    };
    let fmt_ms = |x: f64| {
        if x < 0.1 {
            format!("{x:.3}")
        } else if x < 10.0 {
            format!("{x:.2}")
        } else {
            format!("{x:.1}")
        }
    };
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "–".to_string());

    let mut out = String::new();
    out.push_str(
        "| row | server | per second | whole p50 / p99 (ms) | server CPU (ms) | PostgreSQL CPU (ms) \
         | requests | SQL statements | peak RSS (VmHWM) | errors | other processes |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &runs {
        let (row, server) = (row_of(r), r["server"].as_str().unwrap_or("?"));
        if let Some(why) = r["failed"].as_str() {
            out.push_str(&format!(
                "| {row} | {server} | **failed**: {} | | | | | | | | |\n",
                why.replace('|', "\\|")
            ));
            continue;
        }
        let errors: u64 = r["errors"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        out.push_str(&format!(
            "| {row} | {server} | {} | {} / {} | {} | {} | {} | {} | {} | {errors} | {} |\n",
            or_dash(num(r, "per_second").map(fmt_rate)),
            or_dash(whole(r, "p50").map(fmt_ms)),
            or_dash(whole(r, "p99").map(fmt_ms)),
            or_dash(num(r, "server_cpu_ms_per_op").map(fmt_ms)),
            or_dash(num(r, "db_cpu_ms_per_op").map(fmt_ms)),
            or_dash(num(r, "requests_per_op").map(|x| format!("{x:.2}"))),
            or_dash(num(r, "sql_per_op").map(|x| format!("{x:.1}"))),
            or_dash(
                r["server_hwm_kib"]
                    .as_u64()
                    .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
            ),
            or_dash(num(r, "other_processes_busy_pct").map(|x| format!("{x:.0}%"))),
        ));
    }

    // Runs on a pre-loaded store: each row (the means of its runs, one per
    // round) against the row of the same server with the fewest stored
    // certificates.
    let stored = |r: &Value| r["preload"].as_u64().filter(|n| *n > 0);
    let history: Vec<&Value> = runs
        .iter()
        .filter(|r| stored(r).is_some() && r["failed"].is_null())
        .collect();
    if !history.is_empty() {
        let mut rows: Vec<(String, u64)> = Vec::new();
        for r in &history {
            let key = (row_of(r), stored(r).unwrap_or(0));
            if !rows.contains(&key) {
                rows.push(key);
            }
        }
        let runs_of = |row: &str| -> Vec<&Value> {
            history
                .iter()
                .copied()
                .filter(|r| row_of(r) == row)
                .collect()
        };
        let per_second = |r: &Value| num(r, "per_second");
        let p99 = |r: &Value| whole(r, "p99");
        let hwm = |r: &Value| r["server_hwm_kib"].as_f64();
        out.push_str(
            "\nAs history grows (each row, the mean of its runs, against the row of the same \
             server with the fewest stored certificates):\n\n\
             | row | stored certificates | runs | loaded in | throughput | whole p99 | peak RSS |\n\
             |---|---|---|---|---|---|---|\n",
        );
        for (row, n) in &rows {
            let these = runs_of(row);
            let Some(first) = these.first() else {
                continue;
            };
            let Some(base_row) = rows
                .iter()
                .filter(|(b, _)| runs_of(b).first().map(|r| &r["server"]) == Some(&first["server"]))
                .min_by_key(|(_, n)| *n)
            else {
                continue;
            };
            let base = runs_of(&base_row.0);
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                row,
                n,
                these.len(),
                or_dash(mean(&these, &|r| num(r, "preload_secs")).map(|s| format!("{s:.0} s"))),
                ratio(mean(&these, &per_second), mean(&base, &per_second)),
                ratio(mean(&these, &p99), mean(&base, &p99)),
                ratio(mean(&these, &hwm), mean(&base, &hwm)),
            ));
        }
    }
    if !runs.iter().any(is_pebble) {
        return Ok(out);
    }

    // Rows in the order they first ran; each side's successful runs.
    let mut rows: Vec<String> = Vec::new();
    for r in &runs {
        let row = row_of(r);
        if !rows.contains(&row) {
            rows.push(row);
        }
    }
    let ok = |row: &str, pebble: bool| -> Vec<&Value> {
        runs.iter()
            .filter(|r| row_of(r) == row && is_pebble(r) == pebble && r["failed"].is_null())
            .collect()
    };
    out.push_str(
        "\nCairn / Pebble (means over each side's runs; CPU is Cairn's plus PostgreSQL's \
         where it runs; for a Cairn-only row, against Pebble's row named):\n\n\
         | row | against Pebble's | throughput | server CPU per operation | whole p50 | whole p99 | Cairn's CPU against Cairn's in that row |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for row in &rows {
        let cairn = ok(row, false);
        if cairn.is_empty() {
            continue;
        }
        let own_pebble = ok(row, true);
        let baseline = cairn
            .iter()
            .find_map(|r| r["baseline"].as_str())
            .map(str::to_string);
        let (against, pebble) = if !own_pebble.is_empty() {
            (row.clone(), own_pebble)
        } else if let Some(b) = &baseline {
            (b.clone(), ok(b, true))
        } else {
            continue;
        };
        let cairn_in_baseline = match (&baseline, against == *row) {
            (Some(b), false) => ratio(
                mean(&cairn, &|r| num(r, "server_cpu_ms_per_op")),
                mean(&ok(b, false), &|r| num(r, "server_cpu_ms_per_op")),
            ),
            _ => "–".to_string(),
        };
        out.push_str(&format!(
            "| {row} | {against} | {} | {} | {} | {} | {cairn_in_baseline} |\n",
            ratio(
                mean(&cairn, &|r| num(r, "per_second")),
                mean(&pebble, &|r| num(r, "per_second"))
            ),
            ratio(mean(&cairn, &cpu_total), mean(&pebble, &cpu_total)),
            ratio(
                mean(&cairn, &|r| whole(r, "p50")),
                mean(&pebble, &|r| whole(r, "p50"))
            ),
            ratio(
                mean(&cairn, &|r| whole(r, "p99")),
                mean(&pebble, &|r| whole(r, "p99"))
            ),
        ));
    }
    Ok(out)
}
