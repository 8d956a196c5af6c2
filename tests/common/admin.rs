//! Running `cairn admin` as an operator would, against a test's server.

use super::*;
use serde_json::Value;
use std::process::Command;

/// What one `cairn admin` run did.
pub struct AdminRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub command: String,
}

impl std::fmt::Display for AdminRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> exit {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.command, self.code, self.stdout, self.stderr
        )
    }
}

impl AdminRun {
    pub fn ok(self) -> AdminRun {
        assert_eq!(self.code, Some(0), "{self}");
        self
    }

    /// Exit 1 with one line on stderr, containing `needle`.
    pub fn error(self, needle: &str) -> AdminRun {
        assert_eq!(self.code, Some(1), "{self}");
        assert_eq!(
            self.stderr.trim().lines().count(),
            1,
            "one-line error: {self}"
        );
        assert!(self.stderr.contains(needle), "expected {needle:?}: {self}");
        self
    }

    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}\n{self}")))
            .collect()
    }
}

/// Runs `cairn admin <args>` with the server's whole configuration (preset,
/// data directory, database and the test's `CAIRN_*` settings), nothing from
/// the developer's shell. Blocking: call it from `spawn_blocking` or accept
/// that the test's runtime waits (these tests run one client at a time).
pub fn admin(server: &Server, args: &[&str]) -> AdminRun {
    let mut cmd = Command::new(cairn_bin());
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
    for (k, v) in &server.opts.env {
        cmd.env(k, v);
    }
    if let Some(db) = &server.database {
        cmd.env("CAIRN_DATABASE_URL", &db.url);
    }
    let command = format!("cairn admin {}", args.join(" "));
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{command}: cannot run: {e}"));
    AdminRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        command,
    }
}
