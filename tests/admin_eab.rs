//! `cairn admin eab create|list|revoke` against a running server's data
//! directory and database, as an operator runs them: what each prints
//! (text and `--json`), the refusals (each naming what was wrong, exit 1,
//! nothing changed), and what the ACME API then does with the keys. Runs on
//! either backend (`CAIRN_TEST_BACKEND=postgres`).

mod common;

use common::admin::admin;
use common::*;
use serde_json::Value;

fn list(server: &Server) -> Vec<Value> {
    admin(server, &["eab", "list", "--json"]).ok().json_lines()
}

#[tokio::test]
async fn create_prints_the_key_once_and_list_never_does() {
    let server = Server::start(ServerOpts::test());
    let none = admin(&server, &["eab", "list"]).ok();
    assert!(none.stdout.contains("no external account keys"), "{none}");
    assert!(list(&server).is_empty());

    // --json: exactly {"kid", "hmacKey"}; the key is 256 bits, base64url
    // without padding.
    let run = admin(&server, &["eab", "create", "--json"]).ok();
    let v: Value = serde_json::from_str(run.stdout.trim()).expect("one JSON object");
    let obj = v.as_object().expect("object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["hmacKey", "kid"], "{run}");
    let kid = v["kid"].as_str().unwrap().to_string();
    let hmac = v["hmacKey"].as_str().unwrap().to_string();
    assert!(!hmac.contains('=') && !hmac.contains('+') && !hmac.contains('/'));
    assert_eq!(b64u_decode(&hmac).len(), 32, "{run}");
    assert!(!kid.is_empty() && !kid.starts_with('-'), "{run}");

    // Text: the id and key, the terms, and that it is shown once.
    let text = admin(
        &server,
        &[
            "eab",
            "create",
            "--names",
            "WWW.Example.com",
            "*.corp.example.net",
            "--expires",
            "30d",
            "--reusable",
        ],
    )
    .ok();
    let line = |name: &str| {
        text.stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name:?} line: {text}"))
            .split_whitespace()
            .skip(name.split_whitespace().count())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let kid2 = line("kid");
    let hmac2 = line("hmac key");
    assert_eq!(b64u_decode(&hmac2).len(), 32, "{text}");
    assert_eq!(
        line("names"),
        "*.corp.example.net, www.example.com",
        "{text}"
    );
    assert!(text.stdout.contains("not shown again"), "{text}");

    // list: both keys, no secret anywhere.
    let rows = list(&server);
    assert_eq!(rows.len(), 2, "{rows:?}");
    let all = admin(&server, &["eab", "list"]).ok();
    for out in [all.stdout.clone(), format!("{rows:?}")] {
        assert!(!out.contains(&hmac) && !out.contains(&hmac2), "{out}");
    }
    assert!(
        all.stdout.contains(&kid) && all.stdout.contains(&kid2),
        "{all}"
    );
    let row = rows.iter().find(|r| r["kid"] == kid2.as_str()).unwrap();
    assert_eq!(row["status"], "usable");
    assert_eq!(row["reusable"], true);
    assert_eq!(row["names"][0], "*.corp.example.net");
    assert!(row["expires"].is_string(), "{row}");
    assert_eq!(row["boundAccounts"], 0);
    assert!(row.get("hmacKey").is_none(), "{row}");
    let row = rows.iter().find(|r| r["kid"] == kid.as_str()).unwrap();
    assert_eq!(row["reusable"], false);
    assert_eq!(row["expires"], Value::Null);

    // A key binds an account; list says so, and so does accounts show.
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    let r = c.new_account_eab(&kid, &hmac).await;
    assert_eq!(r.status, 201, "{r}");
    let id = r
        .location()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let row = list(&server)
        .into_iter()
        .find(|r| r["kid"] == kid.as_str())
        .unwrap();
    assert_eq!(row["status"], "used", "{row}");
    assert_eq!(row["boundAccounts"], 1);
    assert_eq!(row["firstAccount"].to_string(), id);
    let shown = admin(&server, &["accounts", "show", &id, "--json"])
        .ok()
        .json_lines()
        .remove(0);
    assert_eq!(shown["externalAccountKey"], kid.as_str());
}

#[tokio::test]
async fn refusals_name_what_was_wrong_and_change_nothing() {
    let server = Server::start(ServerOpts::test());
    for (args, needle) in [
        (vec!["--names", "bad..name"], "\"bad..name\""),
        (
            vec!["--names", "ok.example.com", "under_score.example"],
            "\"under_score.example\"",
        ),
        (vec!["--names", "*.co.uk"], "public suffix"),
        (vec!["--names", "a.*.example.com"], "\"a.*.example.com\""),
        (
            vec!["--expires", "2001-01-01T00:00:00Z"],
            "not in the future",
        ),
        (vec!["--expires", "soon"], "--expires \"soon\""),
    ] {
        let mut all = vec!["eab", "create"];
        all.extend(args);
        admin(&server, &all).error(needle);
    }
    assert!(list(&server).is_empty(), "a refused create stored a key");

    admin(&server, &["eab", "revoke", "nope"]).error("no external account key \"nope\"");
    let v = admin(&server, &["eab", "create", "--json"])
        .ok()
        .json_lines()
        .remove(0);
    let kid = v["kid"].as_str().unwrap();
    let hmac = v["hmacKey"].as_str().unwrap();
    let run = admin(&server, &["eab", "revoke", kid]).ok();
    assert!(
        run.stdout
            .contains(&format!("revoked external account key {kid}")),
        "{run}"
    );
    admin(&server, &["eab", "revoke", kid]).error("already revoked");
    let row = list(&server).remove(0);
    assert_eq!(row["status"], "revoked", "{row}");
    assert!(row["revokedAt"].is_string(), "{row}");

    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    let r = c.new_account_eab(kid, hmac).await;
    assert_problem(&r, 403, "unauthorized");
}
