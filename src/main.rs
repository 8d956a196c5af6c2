//! The `cairn` binary: `cairn serve`, `cairn admin`, `cairn testdns`.

use cairn::config::{Config, Sources};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// mimalloc (v2, no transparent huge pages): glibc's malloc and free were
/// 8-9% of an issuance's CPU (many small, short-lived allocations on two
/// worker threads), and mimalloc takes 9-12% off the whole (BENCHMARKS.md,
/// "Where the server's time goes"). v2 hands freed memory back to the
/// system sooner than v3; without huge pages the idle RSS stays ~30 MB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "An ACME (RFC 8555) certificate authority"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the ACME server (HTTPS API plus the plain-HTTP management listener).
    Serve(ConfigArgs),
    /// Run the mock DNS server with its HTTP API (for tests and dns-01 hooks).
    /// Also `pebble-challtestsrv`'s flags; run under that name (a symlink),
    /// its defaults too.
    Testdns(cairn::testdns::TestDnsArgs),
    /// Run as a drop-in for Pebble: `cairn pebble -config FILE [-dnsserver
    /// HOST:PORT] [-strict]`, or the binary run under the name `pebble`.
    Pebble(cairn::pebble::PebbleArgs),
    /// Operator controls: certificates (list, show, revoke, renew early),
    /// accounts, rate-limit overrides and state, unpausing, retention purge.
    Admin(cairn::admin::AdminArgs),
    /// Check or print the configuration without starting anything.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Exit 0 if a running server's management listener says it is ready
    /// (`GET /ready`), 1 otherwise: a container HEALTHCHECK.
    Healthcheck {
        /// The management listener's URL.
        #[arg(long, default_value = "http://127.0.0.1:15000")]
        url: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the preset plus FILE (and CAIRN_* variables) as `serve`
    /// would load them; print "ok" or what is wrong, with the key.
    Check {
        /// The TOML file to check (applied on top of the preset).
        file: PathBuf,
        /// Preset: dev (default), test, staging, production.
        #[arg(long)]
        preset: Option<String>,
    },
    /// Print the effective configuration as TOML (passwords masked).
    Show(ConfigArgs),
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// TOML file applied on top of the preset.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Preset: dev (default), test, staging, production.
    #[arg(long)]
    preset: Option<String>,
    /// Data directory (database, CA keys); overrides the configuration.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

async fn healthcheck(url: &str) -> anyhow::Result<()> {
    let url = format!("{}/ready", url.trim_end_matches('/'));
    let resp = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()?
        .get(&url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if status.is_success() {
        Ok(())
    } else {
        anyhow::bail!("GET {url}: {status}: {body}")
    }
}

impl ConfigArgs {
    fn load(&self) -> anyhow::Result<Config> {
        Config::load(&Sources {
            preset: self.preset.clone(),
            file: self.config.clone(),
            data_dir: self.data_dir.clone(),
        })
    }
}

/// The command line as clap should read it. Run under the name `pebble` or
/// `pebble-challtestsrv` (a symlink), the binary is `cairn pebble` or
/// `cairn testdns --challtestsrv`; those two take Go's one-dash flags.
fn args() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let name = args
        .first()
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .map(|n| n.trim_end_matches(".exe").to_string())
        .unwrap_or_default();
    let rest = args.split_off(1.min(args.len()));
    let (sub, rest): (Vec<std::ffi::OsString>, Vec<std::ffi::OsString>) = match name.as_str() {
        "pebble" => (vec!["pebble".into()], rest),
        "pebble-challtestsrv" => (vec!["testdns".into(), "--challtestsrv".into()], rest),
        _ => match rest.split_first() {
            Some((first, tail)) if first == "pebble" || first == "testdns" => {
                (vec![first.clone()], tail.to_vec())
            }
            _ => return [vec!["cairn".into()], rest].concat(),
        },
    };
    let flags = if sub[0] == "pebble" {
        cairn::pebble::PEBBLE_FLAGS
    } else {
        cairn::testdns::CHALLTESTSRV_FLAGS
    };
    [
        vec!["cairn".into()],
        sub,
        cairn::pebble::go_flags(rest, flags),
    ]
    .concat()
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse_from(args());
    // An admin command's stderr is for its one-line error; servers log.
    // sqlx's slow-statement warnings would print load-history's statements
    // whole (thousands of rows each).
    let default_filter = match cli.command {
        Command::Admin(_) => "warn,sqlx::query=error",
        _ => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // Human-readable by default; `CAIRN_LOG_FORMAT=json` gives one JSON
    // object per line (fields flattened) for log collectors.
    match std::env::var("CAIRN_LOG_FORMAT").as_deref() {
        Ok("json") => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        // Colours on a terminal only: in a file they are escape codes to
        // strip, and formatting them cost a tenth of a newNonce's CPU.
        Ok("text") | Ok("") | Err(_) => tracing_subscriber::fmt()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        Ok(other) => {
            eprintln!("cairn: CAIRN_LOG_FORMAT={other:?}: expected \"text\" or \"json\"");
            return std::process::ExitCode::FAILURE;
        }
    }
    // `cairn serve` sizes the runtime from its configuration.
    let serve = match &cli.command {
        Command::Serve(args) => match args.load() {
            Ok(cfg) => Some(cfg),
            Err(e) => {
                eprintln!("cairn: {e:#}");
                return std::process::ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let threads = match (&serve, &cli.command) {
        (Some(cfg), _) => cfg.server.worker_threads,
        // The drop-in runs the test preset: its threads, unless the
        // environment says otherwise (a bad setting is reported by the
        // command itself).
        (None, Command::Pebble(_)) => Config::load(&Sources {
            preset: Some("test".into()),
            file: None,
            data_dir: None,
        })
        .map_or(0, |c| c.server.worker_threads),
        (None, _) => 0,
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        rt.worker_threads(threads);
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Serve(args) => match serve {
                Some(cfg) => cairn::serve::run(cfg).await,
                None => cairn::serve::run(args.load()?).await,
            },
            Command::Testdns(args) => cairn::testdns::run(args).await,
            Command::Pebble(args) => cairn::pebble::run(args).await,
            Command::Admin(args) => cairn::admin::run(args).await,
            Command::Config(ConfigCommand::Check { file, preset }) => {
                let preset_name = preset.clone().unwrap_or_else(|| "dev".into());
                let cfg = Config::load(&Sources {
                    preset,
                    file: Some(file.clone()),
                    data_dir: None,
                })?;
                let unknown = cfg.unknown_env_names(std::env::vars().map(|(k, _)| k));
                if !unknown.is_empty() {
                    anyhow::bail!(
                        "environment variable {} names no setting (a setting's variable is its \
                         TOML path upper-cased and joined with _, e.g. CAIRN_VA_HTTP01_PORT)",
                        unknown.join(", ")
                    );
                }
                println!(
                    "ok: {} is valid (preset {}, database {})",
                    file.display(),
                    preset_name,
                    cairn::config::redact_url(&cfg.database_url())
                );
                Ok(())
            }
            Command::Config(ConfigCommand::Show(args)) => {
                let mut cfg = args.load()?;
                cfg.database.url = cairn::config::redact_url(&cfg.database.url);
                print!("{}", toml::to_string_pretty(&cfg)?);
                Ok(())
            }
            Command::Healthcheck { url } => healthcheck(&url).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
