//! `cairn admin overrides` and `cairn admin unpause` against a running
//! server, and the rate-limit documentation page. The real binary runs as a
//! separate process on the server's data directory, database and
//! configuration, as an operator would: overrides round-trip through the
//! file and bad input changes nothing; an override raising
//! newOrdersPerAccount for one account applies to the running server
//! without a restart (and only to that account), and removing it restores
//! the default; an account paused by consecutive failed validations is
//! unpaused with a fresh failure count; `/docs/rate-limits` has an anchor
//! for every limit and the numbers in force. Runs on either backend
//! (`CAIRN_TEST_BACKEND=postgres`).

mod common;

use cairn::ratelimit::LimitName;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn overrides_file(server: &Server) -> std::path::PathBuf {
    server.data_dir.join("rate-limit-overrides.toml")
}

fn file_bytes(path: &std::path::Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

async fn new_account(server: &Server) -> (AcmeClient, i64) {
    let c = AcmeClient::new(server, KeyKind::Es256).await;
    let url = c.register().await;
    let id = url
        .rsplit('/')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("account URL {url} ends in no id"));
    (c, id)
}

/// A 429 rateLimited problem for `limit`; returns the problem document.
fn assert_limited(r: &AcmeResponse, limit: &str) -> Value {
    let p = assert_problem(r, 429, "rateLimited");
    assert_eq!(p["limit"], limit, "{r}");
    p
}

// ----------------------------------------------------------------------------
// Overrides: the file and the command line
// ----------------------------------------------------------------------------

#[tokio::test]
async fn overrides_set_list_remove_and_refusals() {
    let server = Server::start(ServerOpts::test().with_env("CAIRN_LIMITS_PROFILE", "unlimited"));
    let (c, id) = new_account(&server).await;
    let id_s = id.to_string();
    let path = overrides_file(&server);

    let run = admin(&server, &["overrides", "list"]).ok();
    assert!(run.stdout.starts_with("no overrides in"), "{run}");
    let run = admin(&server, &["overrides", "list", "--json"]).ok();
    assert!(run.stdout.is_empty(), "{run}");

    // A raise is written, then the bucket reset once servers reloaded.
    let run = admin(
        &server,
        &[
            "overrides",
            "set",
            "--limit",
            "newOrdersPerAccount",
            "--key",
            &id_s,
            "--burst",
            "1000",
            "--count",
            "1000",
            "--period",
            "3h",
            "--comment",
            "ticket 1",
        ],
    )
    .ok();
    assert!(run.stdout.contains("burst 1000, 1000 per 3h0m0s"), "{run}");
    assert!(
        run.stdout
            .contains(&format!("reset the bucket newOrdersPerAccount:{id}")),
        "{run}"
    );
    let run = admin(
        &server,
        &[
            "overrides",
            "set",
            "--limit",
            "certificatesPerDomain",
            "--key",
            "Example.CO.uk.",
            "--burst",
            "500",
            "--count",
            "500",
            "--period",
            "7d",
            "--no-reset",
        ],
    )
    .ok();
    assert!(!run.stdout.contains("reset the bucket"), "{run}");

    let run = admin(&server, &["overrides", "list", "--json"]).ok();
    let rows = run.json_lines();
    assert_eq!(rows.len(), 2, "{run}");
    assert_eq!(rows[0]["limit"], "newOrdersPerAccount");
    assert_eq!(rows[0]["key"], id_s);
    assert_eq!(rows[0]["burst"], 1000);
    assert_eq!(rows[0]["period_secs"], 10_800);
    assert_eq!(rows[0]["comment"], "ticket 1");
    assert_eq!(rows[1]["limit"], "certificatesPerDomain");
    assert_eq!(rows[1]["key"], "example.co.uk");
    assert_eq!(rows[1]["period_secs"], 604_800);

    // Replacing by account URL keeps one entry per key and says what it was.
    let run = admin(
        &server,
        &[
            "overrides",
            "set",
            "--limit",
            "newOrdersPerAccount",
            "--key",
            &c.account_url(),
            "--burst",
            "2000",
            "--count",
            "2000",
            "--period",
            "10800",
            "--no-reset",
        ],
    )
    .ok();
    assert!(
        run.stdout.contains("was burst 1000, 1000 per 3h0m0s"),
        "{run}"
    );
    let run = admin(&server, &["overrides", "list"]).ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{run}");
    for col in ["LIMIT", "KEY", "BURST", "COUNT", "PERIOD", "COMMENT"] {
        assert!(lines[0].contains(col), "{run}");
    }
    assert!(lines[1].starts_with("newOrdersPerAccount"), "{run}");
    assert!(lines[1].contains("2000"), "{run}");
    assert!(lines[2].contains("example.co.uk"), "{run}");
    assert!(lines[2].contains("168h0m0s"), "{run}");

    // Refusals: exit 1, one clear line, the file untouched.
    let before = file_bytes(&path).expect("the override file exists");
    let set = |limit: &str, key: &str, burst: &str, period: &str| {
        admin(
            &server,
            &[
                "overrides",
                "set",
                "--limit",
                limit,
                "--key",
                key,
                "--burst",
                burst,
                "--count",
                "10",
                "--period",
                period,
            ],
        )
    };
    set("certificatesPerFqdnSet", "x.example.com", "10", "7d").error("cannot be overridden");
    set("newRegistrationsPerIp", "192.0.2.1", "10", "3h").error("cannot be overridden");
    set("consecutiveAuthorizationFailures", &id_s, "10", "1d").error("cannot be overridden");
    set("lavishOrders", &id_s, "10", "3h").error("unknown limit");
    set("newOrdersPerAccount", "abc", "10", "3h").error("account id");
    set("newOrdersPerAccount", "999999", "10", "3h").error("no account 999999");
    set("certificatesPerDomain", "not a domain", "10", "7d").error("registered domain");
    set("newOrdersPerAccount", &id_s, "10", "3x").error("is not a duration");
    set("newOrdersPerAccount", &id_s, "10", "0").error("longer than 0");
    set("newOrdersPerAccount", &id_s, "0", "3h").error("must all be positive");
    admin(
        &server,
        &[
            "overrides",
            "remove",
            "--limit",
            "certificatesPerFqdnSet",
            "--key",
            "x.example",
        ],
    )
    .error("cannot be overridden");
    admin(
        &server,
        &[
            "overrides",
            "remove",
            "--limit",
            "newOrdersPerAccount",
            "--key",
            "777",
        ],
    )
    .error("no override");
    // A missing argument is a usage error (clap's exit 2).
    let run = admin(
        &server,
        &[
            "overrides",
            "set",
            "--limit",
            "newOrdersPerAccount",
            "--key",
            &id_s,
        ],
    );
    assert_eq!(run.code, Some(2), "{run}");
    assert_eq!(
        file_bytes(&path).as_deref(),
        Some(&before[..]),
        "file changed"
    );

    let run = admin(
        &server,
        &[
            "overrides",
            "remove",
            "--limit",
            "certificatesPerDomain",
            "--key",
            "EXAMPLE.co.uk",
        ],
    )
    .ok();
    assert!(run.stdout.contains("removed"), "{run}");
    let rows = admin(&server, &["overrides", "list", "--json"])
        .ok()
        .json_lines();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["limit"], "newOrdersPerAccount");

    // The running server read every version without complaint.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !server.log().contains("keeping the previous overrides"),
        "{}",
        server.log_tail(4000)
    );
}

// ----------------------------------------------------------------------------
// Overrides: a running server applies them
// ----------------------------------------------------------------------------

/// `c` creates an order for a fresh name; the raw response.
async fn order(c: &AcmeClient, tag: &str, n: &mut u32) -> AcmeResponse {
    *n += 1;
    let name = format!("o{n}.{tag}.example.com");
    c.new_order_raw(AcmeClient::order_payload(&[&name])).await
}

/// Orders until one is refused (at most `max`); (orders made, the refusal).
async fn orders_until_refused(
    c: &AcmeClient,
    tag: &str,
    n: &mut u32,
    max: u32,
) -> (u32, AcmeResponse) {
    for made in 0..=max {
        let r = order(c, tag, n).await;
        if r.status != 201 {
            return (made, r);
        }
    }
    panic!("{tag}: more than {max} orders allowed");
}

#[tokio::test]
async fn override_applies_to_a_running_server_without_restart() {
    let server = Server::start(
        ServerOpts::test()
            .with_env("CAIRN_LIMITS_PROFILE", "unlimited")
            .with_env("CAIRN_LIMITS_WINDOWS_NEW_ORDERS_PER_ACCOUNT_BURST", "2")
            .with_env("CAIRN_LIMITS_WINDOWS_NEW_ORDERS_PER_ACCOUNT_COUNT", "2")
            .with_env(
                "CAIRN_LIMITS_WINDOWS_NEW_ORDERS_PER_ACCOUNT_PERIOD_SECS",
                "10800",
            ),
    );
    let (a, a_id) = new_account(&server).await;
    let (b, b_id) = new_account(&server).await;
    let (mut na, mut nb) = (0, 0);

    let (made, r) = orders_until_refused(&a, "a", &mut na, 10).await;
    assert_eq!(made, 2, "{r}");
    let p = assert_limited(&r, "newOrdersPerAccount");
    assert_eq!(p["key"], a_id.to_string(), "{r}");
    let detail = p["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("too many new orders (2)"), "{r}");
    assert!(r.retry_after().is_some(), "{r}");

    // The link in the detail leads to the section of this limit.
    let link = detail
        .rsplit("see ")
        .next()
        .unwrap_or_default()
        .trim_end_matches('.');
    let (page, anchor) = link
        .split_once('#')
        .unwrap_or_else(|| panic!("no anchor in {detail:?}"));
    assert_eq!(anchor, LimitName::NewOrdersPerAccount.doc_anchor());
    let html = server
        .http_client()
        .get(page)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {page}: {e}"))
        .text()
        .await
        .expect("docs page body");
    assert!(html.contains(&format!("id=\"{anchor}\"")), "{html}");

    let a_s = a_id.to_string();
    let run = admin(
        &server,
        &[
            "overrides",
            "set",
            "--limit",
            "newOrdersPerAccount",
            "--key",
            &a_s,
            "--burst",
            "5",
            "--count",
            "5",
            "--period",
            "3h",
        ],
    )
    .ok();
    assert!(
        run.stdout
            .contains(&format!("reset the bucket newOrdersPerAccount:{a_id}")),
        "{run}"
    );
    // The command waited for the reload: the next order succeeds within
    // moments (polled for a few seconds), then exactly five in all.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let r = order(&a, "a", &mut na).await;
        if r.status == 201 {
            break;
        }
        assert_limited(&r, "newOrdersPerAccount");
        assert!(
            Instant::now() < deadline,
            "the override did not apply within 3 s: {r}\n{}",
            server.log_tail(4000)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (more, r) = orders_until_refused(&a, "a", &mut na, 10).await;
    assert_eq!(1 + more, 5, "{r}");
    let p = assert_limited(&r, "newOrdersPerAccount");
    assert!(
        p["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("too many new orders (5)"),
        "{r}"
    );

    // Another account keeps the default.
    let (made, r) = orders_until_refused(&b, "b", &mut nb, 10).await;
    assert_eq!(made, 2, "{r}");
    let p = assert_limited(&r, "newOrdersPerAccount");
    assert_eq!(p["key"], b_id.to_string(), "{r}");

    // Removing restores the default for `a` (its spent orders still count).
    admin(
        &server,
        &[
            "overrides",
            "remove",
            "--limit",
            "newOrdersPerAccount",
            "--key",
            &a_s,
        ],
    )
    .ok();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = order(&a, "a", &mut na).await;
        let p = assert_limited(&r, "newOrdersPerAccount");
        if p["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("too many new orders (2)")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the removal did not apply within 5 s: {r}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ----------------------------------------------------------------------------
// Unpause
// ----------------------------------------------------------------------------

/// New orders for `name`, each failing its http-01 validation (nothing
/// listens on the port the server dials), until one is refused. Returns
/// (failed validations, the refusal).
async fn fail_until_paused(c: &AcmeClient, name: &str) -> (u32, AcmeResponse) {
    for failures in 0..8 {
        let r = c.new_order_raw(AcmeClient::order_payload(&[name])).await;
        if r.status != 201 {
            return (failures, r);
        }
        let order = r.json();
        let authz_url = AcmeClient::authz_urls(&order).remove(0);
        let authz = c.post_as_get(&authz_url).await.ok().json();
        assert_eq!(authz["status"], "pending", "{authz}");
        let ch = AcmeClient::challenge(&authz, "http-01")
            .unwrap_or_else(|| panic!("no http-01 challenge: {authz}"));
        let url = ch["url"].as_str().expect("challenge url");
        let r = c.post(url, Some(json!({}))).await;
        assert_eq!(r.status, 200, "challenge response: {r}");
        c.wait_status(&authz_url, &["invalid"], Duration::from_secs(30))
            .await;
    }
    panic!("{name}: never paused after 8 failed validations");
}

#[tokio::test]
async fn unpause_lifts_a_pause_and_starts_the_count_afresh() {
    let dns = TestDns::start();
    let server = Server::start(
        ServerOpts::test()
            .with_dns(dns.dns_addr)
            .with_env("CAIRN_LIMITS_PROFILE", "unlimited")
            .with_env(
                "CAIRN_LIMITS_WINDOWS_CONSECUTIVE_AUTHORIZATION_FAILURES_BURST",
                "2",
            ),
    );
    let (c, id) = new_account(&server).await;
    let id_s = id.to_string();
    let name = "paused.example.com";

    // Burst 2: the third consecutive failure pauses (the pause is recorded
    // just after the authorization turns invalid, so one more order may
    // slip through).
    let (failures, r) = fail_until_paused(&c, name).await;
    assert!((3..=4).contains(&failures), "{failures} failures: {r}");
    let p = assert_limited(&r, "consecutiveAuthorizationFailures");
    assert_eq!(r.retry_after(), None, "no Retry-After for a pause: {r}");
    let detail = p["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&format!("cairn admin unpause --account {id}")),
        "{r}"
    );
    assert!(detail.contains(name), "{r}");
    // Only that identifier.
    let r = c
        .new_order_raw(AcmeClient::order_payload(&["other.example.com"]))
        .await;
    assert_eq!(r.status, 201, "{r}");

    let run = admin(
        &server,
        &[
            "unpause",
            "--account",
            &id_s,
            "--identifier",
            "other.example.com",
        ],
    )
    .ok();
    assert!(run.stdout.contains("nothing to unpause"), "{run}");
    let r = c.new_order_raw(AcmeClient::order_payload(&[name])).await;
    assert_limited(&r, "consecutiveAuthorizationFailures");

    let run = admin(&server, &["unpause", "--account", &id_s]).ok();
    assert!(
        run.stdout
            .contains(&format!("unpaused account {id} for {name}")),
        "{run}"
    );
    // Lifted, and the failure count starts again: it takes as many failures
    // as the first time to pause again (without the reset, one would do).
    let (again, r) = fail_until_paused(&c, name).await;
    assert!((3..=4).contains(&again), "{again} failures: {r}");
    assert_limited(&r, "consecutiveAuthorizationFailures");

    // By identifier (a trailing dot and case do not matter), then nothing
    // left; unknown accounts are refused.
    let run = admin(
        &server,
        &[
            "unpause",
            "--account",
            &c.account_url(),
            "--identifier",
            "PAUSED.example.com.",
        ],
    )
    .ok();
    assert!(run.stdout.contains("unpaused"), "{run}");
    let run = admin(&server, &["unpause", "--account", &id_s]).ok();
    assert!(run.stdout.contains("nothing to unpause"), "{run}");
    let r = c.new_order_raw(AcmeClient::order_payload(&[name])).await;
    assert_eq!(r.status, 201, "{r}");
    admin(&server, &["unpause", "--account", "999999"]).error("no account 999999");
    admin(&server, &["unpause", "--account", "nobody"]).error("not an account id");
}

// ----------------------------------------------------------------------------
// The documentation page
// ----------------------------------------------------------------------------

#[tokio::test]
async fn docs_page_has_every_anchor_and_the_numbers_in_force() {
    let server = Server::start(
        ServerOpts::test().with_env("CAIRN_LIMITS_WINDOWS_NEW_ORDERS_PER_ACCOUNT_BURST", "7"),
    );
    let url = format!("{}/docs/rate-limits", server.base_url);
    let resp = server
        .http_client()
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(resp.status(), 200, "{url}");
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/html; charset=utf-8")
    );
    let html = resp.text().await.expect("body");
    let mut anchors: Vec<&str> = LimitName::ALL.iter().map(|l| l.doc_anchor()).collect();
    // The request-rate refusals' and the pending-authorization refusal's.
    anchors.extend([
        "request-rates",
        "pending-authorizations",
        "pausing",
        "overrides",
    ]);
    for a in anchors {
        assert!(html.contains(&format!("id=\"{a}\"")), "no #{a} in {html}");
    }
    assert!(!html.contains("<script"), "static page");
    // The numbers in force: the staging set of the test preset, with the
    // one number given on top.
    let section = |id: &str| {
        let start = html
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("no #{id}"));
        let rest = &html[start..];
        rest[..rest.find("</section>").unwrap_or(rest.len())].to_string()
    };
    assert!(
        section("new-orders-per-account").contains(">7</span>"),
        "{}",
        section("new-orders-per-account")
    );
    assert!(
        section("new-certificates-per-registered-domain").contains(">30,000</span>"),
        "{}",
        section("new-certificates-per-registered-domain")
    );
    assert!(html.contains("<code>staging</code>"), "profile shown");
}
