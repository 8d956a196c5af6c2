//! The management listener's status page (`GET /status`): what was issued
//! for a registered domain or an account, each limit's bucket exact to the
//! second (the same numbers a refusal gives), whether a planned order is a
//! renewal, and paused identifiers with the unpause command; rendered in a
//! real headless Chromium (Debian's), screenshot included.

mod common;

use common::*;
use serde_json::json;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn with_limit(opts: ServerOpts, limit: &str, burst: u64, count: u64, period: u64) -> ServerOpts {
    opts.with_limit(limit, burst, count, period)
}

async fn page(server: &Server, query: &str) -> (u16, String) {
    mgmt_get(server, &format!("/status?{query}")).await
}

/// The text of the `left` cell and the "next token in N s" of a limit's row.
fn row(html: &str, limit: &str) -> (String, Option<u64>) {
    let start = html
        .find(&format!("<tr data-limit=\"{limit}\">"))
        .unwrap_or_else(|| panic!("no row for {limit}:\n{html}"));
    let tr = &html[start..start + html[start..].find("</tr>").expect("row end")];
    let left = tr
        .split("<td class=\"left\">")
        .nth(1)
        .and_then(|s| s.split("</td>").next())
        .unwrap_or_default()
        .to_string();
    let next = tr
        .split("in ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok());
    (left, next)
}

#[tokio::test]
async fn shows_issued_certificates_limits_and_renewals() {
    // Two certificates per registered domain, one token back per 1,800 s.
    let server = Server::start(with_limit(
        ServerOpts::always_valid(),
        "certificates_per_domain",
        2,
        2,
        3600,
    ));
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    let acct = c.register().await;
    let account = acct.rsplit('/').next().unwrap().to_string();
    let mut serials = Vec::new();
    for names in [
        &["alpha.co.uk"][..],
        &["www.alpha.co.uk", "shop.alpha.co.uk"][..],
    ] {
        let (csr, _) = make_csr(names, CertKey::P256);
        let (_, order, _) = c.issue_always_valid(names, &csr).await;
        let cert_url = order["certificate"]
            .as_str()
            .expect("certificate URL")
            .to_string();
        serials.push(cert_url.rsplit('/').next().unwrap().to_string());
    }
    // Another customer's certificate must not show.
    let (csr, _) = make_csr(&["beta.com"], CertKey::P256);
    c.issue_always_valid(&["beta.com"], &csr).await;

    let (status, html) = page(&server, "domain=Shop.Alpha.co.uk").await;
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains("<strong id=\"registered\">alpha.co.uk</strong>"),
        "{html}"
    );
    for s in &serials {
        assert!(html.contains(s.as_str()), "serial {s} missing:\n{html}");
    }
    assert!(html.contains("Certificates (2)"), "{html}");
    assert!(
        !html.contains("beta.com"),
        "another domain's certificate:\n{html}"
    );
    let (left, next) = row(&html, "certificatesPerDomain");
    assert_eq!(left, "0 of 2", "{html}");
    let next = next.expect("a next-token time");

    // The refusal says the same, to the second.
    let r = c
        .new_order_raw(AcmeClient::order_payload(&["api.alpha.co.uk"]))
        .await;
    assert_problem(&r, 429, "rateLimited");
    let retry: u64 = r
        .retry_after()
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!(
        next.abs_diff(retry) <= 1,
        "page says {next} s, the refusal {retry} s"
    );

    // By account: its certificates (all three), its order bucket.
    let (_, html) = page(&server, &format!("account={acct}")).await;
    assert!(html.contains("Certificates (3)"), "{html}");

    // A planned order: the same set again is a renewal, a new set is not.
    let (_, html) = page(&server, "names=shop.alpha.co.uk,www.alpha.co.uk").await;
    assert!(
        html.contains("would be a <strong>renewal</strong>"),
        "{html}"
    );
    let (_, html) = page(&server, "names=new.alpha.co.uk").await;
    assert!(
        html.contains("would be a <strong>new issuance</strong>"),
        "{html}"
    );

    // Bad input: a precise message, 400, nothing else.
    let (status, html) = page(&server, "account=abc").await;
    assert_eq!(status, 400);
    assert!(html.contains("neither an account id"), "{html}");
    let (status, html) = page(&server, "domain=co.uk").await;
    assert_eq!(status, 400);
    assert!(html.contains("public suffix"), "{html}");
    let (status, html) = page(&server, "domain=%3Cscript%3E").await;
    assert_eq!(status, 400);
    assert!(
        !html.contains("<script>"),
        "input echoed unescaped:\n{html}"
    );
    let _ = account;
}

/// An account paused after failed validations: the page lists the paused
/// identifier and the command that lifts it.
#[tokio::test]
async fn shows_paused_identifiers_with_the_unpause_command() {
    let dns = TestDns::start();
    let server = Server::start(with_limit(
        ServerOpts::test().with_dns(dns.dns_addr),
        "consecutive_authorization_failures",
        1,
        1,
        86_400,
    ));
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    let acct = c.register().await;
    let id = acct.rsplit('/').next().unwrap().to_string();
    // With a burst of 1, the second consecutive failure pauses.
    for _ in 0..2 {
        let (_, order) = c.new_order(&["down.example.com"]).await;
        let authz_url = AcmeClient::authz_urls(&order).remove(0);
        let authz = c.post_as_get(&authz_url).await.json();
        let ch = AcmeClient::challenge(&authz, "http-01").expect("http-01 challenge");
        c.post(ch["url"].as_str().expect("url"), Some(json!({})))
            .await;
        c.wait_status(&authz_url, &["invalid"], Duration::from_secs(10))
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, html) = page(&server, &format!("account={id}")).await;
        if html.contains("id=\"paused\"") {
            assert!(html.contains("<code>down.example.com</code>"), "{html}");
            assert!(
                html.contains(&format!("cairn admin unpause --account {id}")),
                "{html}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never paused:\n{html}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn chromium() -> Option<PathBuf> {
    if std::env::var("CAIRN_TEST_SKIP_CLIENTS").as_deref() == Ok("1") {
        eprintln!("CAIRN_TEST_SKIP_CLIENTS=1: skipping the browser test");
        return None;
    }
    match std::env::var_os("CAIRN_TEST_CHROMIUM") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => panic!(
            "CAIRN_TEST_CHROMIUM is not set: run through scripts/test (it installs Debian's \
             chromium) or set CAIRN_TEST_SKIP_CLIENTS=1"
        ),
    }
}

fn headless(chromium: &PathBuf, profile: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("run chromium")
}

/// Debian's Chromium renders the page: its DOM has the certificate, and a
/// screenshot is a real picture (not blank).
#[tokio::test]
async fn renders_in_headless_chromium() {
    let Some(chromium) = chromium() else { return };
    let server = Server::start(ServerOpts::always_valid());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    c.register().await;
    let (csr, _) = make_csr(&["render.example.org"], CertKey::P256);
    let (_, order, _) = c.issue_always_valid(&["render.example.org"], &csr).await;
    let serial = order["certificate"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let url = format!("{}/status?domain=render.example.org", server.mgmt_url);
    let tmp = tempfile::tempdir().expect("tempdir");

    let out = tokio::task::spawn_blocking({
        let (chromium, url, dir) = (chromium.clone(), url.clone(), tmp.path().join("p1"));
        move || headless(&chromium, &dir, &["--dump-dom", &url])
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains(&serial),
        "the rendered DOM lacks the serial:\n{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dom.contains("<table id=\"certificates\">"), "{dom}");

    let shot = tmp.path().join("status.png");
    let out = tokio::task::spawn_blocking({
        let (chromium, url, dir, shot) = (chromium, url, tmp.path().join("p2"), shot.clone());
        move || {
            headless(
                &chromium,
                &dir,
                &[
                    &format!("--screenshot={}", shot.display()),
                    "--window-size=1000,700",
                    &url,
                ],
            )
        }
    })
    .await
    .unwrap();
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("a frame");
    assert_eq!((info.width, info.height), (1000, 700));
    let pixels = &buf[..info.buffer_size()];
    let dark = pixels
        .chunks(info.color_type.samples())
        .filter(|p| p[0] < 100)
        .count();
    let total = pixels.len() / info.color_type.samples();
    // Text and table borders: some dark pixels, far from all of them.
    assert!(
        dark > total / 500 && dark < total / 2,
        "{dark} dark pixels of {total}: a blank or black page"
    );
}
