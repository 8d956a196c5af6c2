//! `cairn config check FILE` and `cairn config show`: validate without
//! starting (the message names the key), print the effective
//! configuration with passwords masked.

mod common;

use common::{cairn_bin, scrub_env};
use std::process::Command;

fn cairn(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(cairn_bin());
    scrub_env(&mut cmd);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run cairn");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_check_names_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p.to_string_lossy().into_owned()
    };
    let good = write("good.toml", "[server]\nlisten = \"127.0.0.1:14444\"\n");
    let (ok, out, err) = cairn(&["config", "check", &good], &[]);
    assert!(ok, "{err}");
    assert!(out.starts_with("ok: "), "{out}");

    for (text, needle) in [
        ("[server]\nbogus = 3\n", "server.bogus"),
        ("[va]\nhttp01_port = \"x\"\n", "va.http01_port"),
        ("[acme]\nmax_names = 100\n", "acme.max_names"),
        (
            "[acme]\ndefault_profile = \"gold\"\n",
            "acme.default_profile",
        ),
        (
            "[profiles.mine]\ndescription = \"x\"\n",
            "missing field `validity_secs`",
        ),
        (
            "[acme]\ndefault_profile = \"mine\"\n[profiles.mine]\ndescription = \"x\"\n\
             validity_secs = 600\nidentifier_types = [\"dns\", \"email\"]\nmax_names = 1\n\
             pending_authz_lifetime_secs = 60\norder_lifetime_secs = 60\n\
             valid_authz_lifetime_secs = 60\ncommon_name = false\nsubject_key_id = false\n\
             client_auth = false\nkey_encipherment = false\n",
            "unknown variant `email`",
        ),
        (
            "[server]\nexternal_url = \"http://x\"\n",
            "server.external_url",
        ),
        ("not toml [", "TOML"),
    ] {
        let f = write("bad.toml", text);
        let (ok, out, err) = cairn(&["config", "check", &f], &[]);
        assert!(!ok, "{text:?} passed: {out}");
        assert!(
            err.contains(needle),
            "{text:?}: the error must name {needle:?}: {err}"
        );
    }
    // A [profiles] table replaces the preset's set: the default must be in it.
    let own = write(
        "own.toml",
        "[profiles.mine]\ndescription = \"x\"\nvalidity_secs = 600\n\
         identifier_types = [\"dns\"]\nmax_names = 1\npending_authz_lifetime_secs = 60\n\
         order_lifetime_secs = 60\nvalid_authz_lifetime_secs = 60\ncommon_name = false\n\
         subject_key_id = false\nclient_auth = false\nkey_encipherment = false\n\
         ari_window_divisor = 3\nari_window_length_divisor = 50\n",
    );
    let (ok, _, err) = cairn(&["config", "check", &own], &[]);
    assert!(
        !ok && err
            .contains("acme.default_profile: \"classic\" is not one of the profiles [\"mine\"]"),
        "{err}"
    );
    let (ok, out, err) = cairn(
        &["config", "check", &own],
        &[("CAIRN_ACME_DEFAULT_PROFILE", "mine")],
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("ok: "), "{out}");

    // A variable that names no setting (here one that moved into the
    // profiles) is refused by the check (a start warns about it).
    let (ok, _, err) = cairn(
        &["config", "check", &good],
        &[("CAIRN_ACME_ORDER_LIFETIME_SECS", "5")],
    );
    assert!(
        !ok && err.contains("CAIRN_ACME_ORDER_LIFETIME_SECS names no setting"),
        "{err}"
    );
    let (ok, _, err) = cairn(
        &["config", "check", &good],
        &[
            ("CAIRN_PROFILES_CLASSIC_ORDER_LIFETIME_SECS", "5"),
            ("CAIRN_LOG", "debug"),
        ],
    );
    assert!(ok, "{err}");

    // Staging without its required external URL fails the check too.
    let (ok, _, err) = cairn(&["config", "check", "--preset", "staging", &good], &[]);
    assert!(
        !ok && err.contains("server.external_url is required"),
        "{err}"
    );
}

#[test]
fn config_show_prints_the_effective_configuration_masked() {
    let (ok, out, err) = cairn(
        &["config", "show", "--preset", "test"],
        &[
            (
                "CAIRN_DATABASE_URL",
                "postgres://cairn:hunter2@db.internal/cairn",
            ),
            ("CAIRN_VA_HTTP01_PORT", "6001"),
        ],
    );
    assert!(ok, "{err}");
    assert!(!out.contains("hunter2"), "a password in the output:\n{out}");
    assert!(
        out.contains("postgres://cairn:***@db.internal/cairn"),
        "{out}"
    );
    assert!(out.contains("http01_port = 6001"), "{out}");
    // What it prints is itself a configuration `serve` accepts.
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("shown.toml");
    let (_, shown, _) = cairn(&["config", "show", "--preset", "test"], &[]);
    std::fs::write(&f, shown).expect("write");
    let (ok, _, err) = cairn(
        &["config", "check", "--preset", "test", &f.to_string_lossy()],
        &[],
    );
    assert!(ok, "config show's output does not check: {err}");
}
