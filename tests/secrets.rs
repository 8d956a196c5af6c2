//! Secrets stay secret: a database password never appears in what `cairn
//! serve` or `cairn admin` print when the database cannot be reached, and
//! the data directory and the SQLite files (which hold the nonce HMAC key
//! and every account) are owner-only.

mod common;

use common::{cairn_bin, free_port, scrub_env};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "s3cret-Pw_9";

/// Waits up to 60 s for the child to exit; returns its status and stderr.
fn wait_exit(mut child: Child, what: &str) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    (status, err)
}

fn cairn(args: &[&str], data_dir: &Path, db_url: &str) -> Child {
    let mut cmd = Command::new(cairn_bin());
    scrub_env(&mut cmd);
    cmd.args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("CAIRN_DATABASE_URL", db_url)
        .env("CAIRN_SERVER_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env(
            "CAIRN_SERVER_MANAGEMENT_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cairn")
}

/// A PostgreSQL nobody listens on: the start fails at once with the real
/// cause, and neither command prints the password (in the authority or as a
/// query parameter).
#[test]
fn database_passwords_are_not_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    for url in [
        format!("postgres://cairn:{PASSWORD}@127.0.0.1:{port}/cairn"),
        format!("postgres://cairn@127.0.0.1:{port}/cairn?password={PASSWORD}&sslmode=disable"),
    ] {
        for args in [
            &["serve", "--preset", "test"][..],
            &["admin", "--preset", "test", "certs", "list", "--json"][..],
        ] {
            let started = Instant::now();
            let (status, err) = wait_exit(cairn(args, dir.path(), &url), args[0]);
            assert!(!status.success(), "{args:?} {url}: {err}");
            assert!(
                !err.contains(PASSWORD),
                "{args:?} printed the database password:\n{err}"
            );
            assert!(
                err.contains("opening the database postgres://cairn") && err.contains("***"),
                "{args:?} should name the database with the password masked:\n{err}"
            );
            assert!(
                err.to_lowercase().contains("refused"),
                "{args:?} should give the real cause:\n{err}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "{args:?} took {:?} to report an unreachable database",
                started.elapsed()
            );
        }
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A data directory `cairn serve` creates is 0700, and the SQLite database
/// with its WAL and shared-memory files are 0600.
#[test]
fn data_directory_and_database_are_owner_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("fresh").join("data");
    let mut child = cairn(&["serve", "--preset", "test"], &data, "");
    let db = data.join("cairn.db");
    let files = [
        db.clone(),
        data.join("cairn.db-wal"),
        data.join("cairn.db-shm"),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !files.iter().all(|f| f.exists()) || !data.join("root.pem").exists() {
        if let Some(s) = child.try_wait().expect("wait") {
            panic!("cairn serve exited: {s}");
        }
        assert!(Instant::now() < deadline, "no database files after 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let result = std::panic::catch_unwind(|| {
        assert_eq!(mode(&data), 0o700, "data directory");
        assert_eq!(mode(&data.join("ca")), 0o700, "CA directory");
        for f in &files {
            assert_eq!(mode(f), 0o600, "{}", f.display());
        }
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }

    // An existing database left world-readable is narrowed at the next start.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut child = cairn(&["serve", "--preset", "test"], &data, "");
    let deadline = Instant::now() + Duration::from_secs(30);
    while mode(&db) != 0o600 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(mode(&db), 0o600, "an existing database is narrowed");
}
