//! `GET /docs/rate-limits`: the page every `rateLimited` problem links to;
//! and `GET /terms`, Cairn's own terms of service when configured.
//!
//! One static HTML page (no script, a little inline CSS) describing each
//! limit of LIMITS.md §1 and §2 with the numbers this server enforces, taken
//! from the resolved limit set rather than written into the text, so the
//! page cannot drift from the configuration. Each limit has the `id` anchor
//! that problem details append (`LimitName::doc_anchor`, `#request-rates`,
//! `#pending-authorizations`). Per-key overrides are deliberately not shown:
//! they are one customer's business.

use super::{AppState, Base, PublicRead};
use crate::problem::Problem;
use crate::ratelimit::{go_duration, EndpointClass, Limit, LimitName, LimitSet};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use std::fmt::Write as _;

/// The page, rendered per request (it is small, and the Host decides the
/// URLs in the example).
pub async fn rate_limits(
    State(s): State<AppState>,
    Extension(base): Extension<Base>,
    _: PublicRead,
) -> Response {
    let html = render(&s.cfg, &base);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response()
}

/// Cairn's own terms of service (`acme.terms_of_service = "/terms"`): short,
/// but real, so that clients' agreement path runs as against a public CA.
/// Served only when configured; otherwise the path does not exist.
pub async fn terms(State(s): State<AppState>, _: PublicRead) -> Response {
    if s.cfg.acme.terms_of_service != crate::config::BUILTIN_TERMS {
        return Problem::not_found("no such resource").into_response();
    }
    let html = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
        <title>Cairn: terms of service</title></head><body>\n\
        <h1>Terms of service</h1>\n\
        <p>This is a Cairn test or development certificate authority. Its certificates \
        are for testing: nothing outside the systems that trust this CA's own root will \
        trust them, and the CA may be reset, with every account, order and certificate \
        in it, at any time.</p>\n\
        <p>By creating an account you agree to request certificates only for names you \
        control or are allowed to test with, to keep your account key private, and to \
        respect the rate limits (<a href=\"/docs/rate-limits\">/docs/rate-limits</a>).</p>\n\
        <p>There is no warranty of any kind.</p>\n</body></html>\n";
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response()
}

/// What the page says about one issuance-window limit.
struct About {
    title: &'static str,
    key: &'static str,
    counts: &'static str,
    renewals: &'static str,
    refunds: &'static str,
}

fn about(limit: LimitName) -> About {
    match limit {
        LimitName::NewRegistrationsPerIp => About {
            title: "New registrations per IP address",
            key: "the client's IPv4 address, or its full IPv6 address",
            counts: "each account created. A newAccount request for a key that already has an \
                     account, or with <code>onlyReturnExisting</code>, creates nothing and costs \
                     nothing.",
            renewals: "not applicable (accounts, not certificates)",
            refunds: "given back if the account is not created after all",
        },
        LimitName::NewRegistrationsPerIpv6Range => About {
            title: "New registrations per IPv6 range",
            key: "the client's IPv6 /48 (IPv4 clients are not counted here)",
            counts: "each account created from an IPv6 address in the range",
            renewals: "not applicable (accounts, not certificates)",
            refunds: "given back if the account is not created after all",
        },
        LimitName::NewOrdersPerAccount => About {
            title: "New orders per account",
            key: "the account id",
            counts: "each new order",
            renewals: "renewals and ARI renewals do not count",
            refunds: "never given back: an order was made, whatever became of it",
        },
        LimitName::CertificatesPerDomain => About {
            title: "New certificates per registered domain",
            key: "the registered domain, by the Public Suffix List: \
                  <code>new.blog.example.co.uk</code> counts for <code>example.co.uk</code>. A \
                  name under a suffix that is not in the list (e.g. <code>.test</code>) counts \
                  for the label left of that suffix.",
            counts: "each new order reserves one certificate per distinct registered domain \
                     among its names",
            renewals: "renewals and ARI renewals do not count",
            refunds: "the reservation is given back when the order ends without a certificate \
                      (a failed or deactivated authorization, a failed finalize, expiry); \
                      revoking a certificate gives nothing back",
        },
        LimitName::CertificatesPerFqdnSet => About {
            title: "New certificates per exact set of identifiers",
            key: "the set of names in the order, lower-cased and sorted (order and case do not \
                  matter)",
            counts: "each new order reserves one certificate for its exact set of names",
            renewals: "renewals <strong>do</strong> count; only ARI renewals are exempt",
            refunds: "the reservation is given back when the order ends without a certificate; \
                      revoking a certificate gives nothing back",
        },
        LimitName::FailedAuthorizationsPerIdentifier => About {
            title: "Authorization failures per identifier per account",
            key: "the account and the identifier (a wildcard counts for its base name)",
            counts: "each failed validation, and each pending authorization the client \
                     deactivates. New orders for the identifier are refused while the bucket \
                     is empty.",
            renewals: "renewals count; only ARI renewals are exempt",
            refunds: "none",
        },
        LimitName::ConsecutiveAuthorizationFailures => About {
            title: "Consecutive authorization failures per identifier per account",
            key: "the account and the identifier (a wildcard counts for its base name)",
            counts: "each failed validation in a row; any successful validation for the \
                     identifier starts the count again. When the bucket runs out the account \
                     is <a href=\"#pausing\">paused</a> for that identifier.",
            renewals: "renewals count; only ARI renewals are exempt",
            refunds: "a successful validation, or an unpause, resets the count",
        },
    }
}

fn render(cfg: &crate::config::Config, base: &Base) -> String {
    let set = LimitSet::resolve(&cfg.limits);
    let mut h = String::with_capacity(16 * 1024);
    head(&mut h, cfg);
    issuance_limits(&mut h, &set);
    fixed_limits(&mut h, cfg);
    request_rates(&mut h, &set);
    rules(&mut h);
    refusal(&mut h, base);
    h
}

/// The page's head and what a limit is.
fn head(h: &mut String, cfg: &crate::config::Config) {
    let profile = format!("{:?}", cfg.limits.profile).to_lowercase();
    h.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>Rate limits</title>\n<style>\n\
         body{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;\
         line-height:1.5;color:#222}\n\
         table{border-collapse:collapse;margin:1rem 0}\n\
         th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}\n\
         td.n{text-align:right}\n\
         pre{background:#f4f4f4;padding:.75rem;overflow-x:auto}\n\
         code{background:#f4f4f4}\n\
         section{border-top:1px solid #ddd;margin-top:1.5rem}\n\
         .off{color:#777}\n\
         </style>\n</head>\n<body>\n<h1>Rate limits</h1>\n",
    );
    let _ = writeln!(
        h,
        "<p>This CA limits how fast certificates are requested, as Let's Encrypt does. The \
         numbers below are the ones <strong>in force on this server</strong> (limit set \
         <code>{profile}</code>). Every limit is a token bucket: it holds <em>burst</em> \
         tokens and refills at <em>count</em> per <em>period</em>; a request that finds too \
         few tokens is refused with <a href=\"#rate-limited-responses\">429 rateLimited</a>, \
         and a refused request costs nothing.</p>"
    );
}

/// The issuance windows: a summary table, then a section per limit.
fn issuance_limits(h: &mut String, set: &LimitSet) {
    h.push_str(
        "<h2 id=\"issuance-limits\">Issuance limits</h2>\n\
         <p>Shared by every instance of this CA.</p>\n<table>\n\
         <tr><th>limit</th><th>keyed by</th><th>burst</th><th>refill</th>\
         <th>override</th></tr>\n",
    );
    for limit in LimitName::ALL {
        let a = about(limit);
        let (burst, refill) = match set.window(limit) {
            Some(l) => (num(l.burst), refill(&l)),
            None => ("off".into(), "off".into()),
        };
        let _ = writeln!(
            h,
            "<tr><td><a href=\"#{}\">{}</a></td><td>{}</td><td class=\"n\">{burst}</td>\
             <td>{refill}</td><td>{}</td></tr>",
            limit.doc_anchor(),
            a.title,
            short_key(limit),
            if limit.allows_overrides() {
                "yes"
            } else {
                "no"
            },
        );
    }
    h.push_str("</table>\n");

    for limit in LimitName::ALL {
        let a = about(limit);
        let _ = write!(
            h,
            "<section id=\"{}\">\n<h3>{}</h3>\n<p><code>\"limit\": \"{}\"</code></p>\n<ul>\n",
            limit.doc_anchor(),
            a.title,
            limit.as_str()
        );
        match set.window(limit) {
            Some(l) => {
                let _ = writeln!(
                    h,
                    "<li><strong>In force:</strong> <span class=\"burst\">{}</span> at once, \
                     refilling {} (one every {}); an empty bucket is full again after {}.</li>",
                    num(l.burst),
                    refill(&l),
                    interval(l.emission_interval_ns()),
                    interval(l.burst_offset_ns()),
                );
            }
            None => {
                h.push_str(
                    "<li class=\"off\"><strong>In force:</strong> off on this server.</li>\n",
                );
            }
        }
        let _ = writeln!(
            h,
            "<li><strong>Keyed by:</strong> {}.</li>",
            trim_dot(a.key)
        );
        let _ = writeln!(
            h,
            "<li><strong>What counts:</strong> {}.</li>",
            trim_dot(a.counts)
        );
        let _ = writeln!(h, "<li><strong>Renewals:</strong> {}.</li>", a.renewals);
        let _ = writeln!(h, "<li><strong>Refunds:</strong> {}.</li>", a.refunds);
        let _ = writeln!(
            h,
            "<li><strong>Overrides:</strong> {}.</li>\n</ul>\n</section>",
            if limit.allows_overrides() {
                "the CA's operator can raise it for one key (see <a href=\"#overrides\">overrides</a>)"
            } else {
                "none"
            }
        );
    }
}

/// The limits that are policy rather than buckets.
fn fixed_limits(h: &mut String, cfg: &crate::config::Config) {
    let _ = write!(
        h,
        "<section id=\"pending-authorizations\">\n<h3>Pending authorizations per account</h3>\n\
         <p><code>\"limit\": \"pendingAuthorizationsPerAccount\"</code></p>\n\
         <p>An account may hold at most <strong>{}</strong> pending authorizations. A new order \
         that would create more is refused; complete or deactivate pending authorizations (or \
         let them expire) first. The refusal's <code>Retry-After</code> is when enough of them \
         expire for the order to fit.</p>\n</section>\n\
         <section id=\"names-per-order\">\n<h3>Identifiers per order</h3>\n\
         <p>An order (and so a certificate) has at most as many identifiers as its profile \
         allows ({}); more is a <code>rejectedIdentifier</code> error, not a rate limit.</p>\n\
         </section>\n\
         <section id=\"profiles\">\n<h3>Profiles and IP addresses</h3>\n\
         <p>As at Let's Encrypt, every limit is the same whatever the order's profile: orders \
         and certificates of all profiles spend the same buckets, and a renewal is the same \
         set of identifiers certified within the longest profile's validity. For an IP address \
         identifier the \"registered domain\" is the IPv4 address itself, or the IPv6 \
         address's /64.</p>\n</section>\n",
        num(cfg.limits.max_pending_authzs),
        cfg.profiles
            .iter()
            .map(|(n, p)| format!("<code>{n}</code> <strong>{}</strong>", p.max_names))
            .collect::<Vec<_>>()
            .join(", "),
    );
}

/// The per-IP request rates.
fn request_rates(h: &mut String, set: &LimitSet) {
    h.push_str(
        "<section id=\"request-rates\">\n<h2>Request rates</h2>\n\
         <p>Per client IP address (IPv6 addresses grouped by /64), per endpoint, counted by \
         each instance of the CA on its own. <code>\"limit\"</code> names the endpoint, e.g. \
         <code>newOrderRequestsPerIp</code>. Behind a load balancer the client address is \
         taken from <code>X-Forwarded-For</code> only when the peer is one of the CA's trusted \
         proxies.</p>\n<table>\n<tr><th>endpoint</th><th><code>limit</code></th>\
         <th>requests per second</th><th>burst</th></tr>\n",
    );
    for class in EndpointClass::ALL {
        let (rate, burst) = match set.request_rate(class) {
            Some(r) => (num(u64::from(r.per_second)), num(u64::from(r.burst))),
            None => ("not limited".into(), "not limited".into()),
        };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td><code>{}</code></td><td class=\"n\">{rate}</td>\
             <td class=\"n\">{burst}</td></tr>",
            endpoint_label(class),
            class.limit_name(),
        );
    }
    h.push_str("</table>\n</section>\n");
}

/// Renewals, ARI, refunds, pauses and overrides.
fn rules(h: &mut String) {
    h.push_str(
        "<section id=\"renewals\">\n<h2>Renewals</h2>\n\
         <p>An order whose set of names equals that of a certificate already issued (order \
         and case ignored; key and extensions do not matter) is a <em>renewal</em>. It does \
         not count against new orders per account nor certificates per registered domain, \
         but does count against the exact set of identifiers and authorization failures. \
         Issue new certificates before renewals to get the most out of a window.</p>\n\
         </section>\n\
         <section id=\"ari-renewals\">\n<h2>ARI renewals</h2>\n\
         <p>A new order whose <code>replaces</code> field (RFC 9773) names a certificate of the \
         same account that shares at least one name with the order is exempt from \
         <strong>every</strong> limit. Clients that support ARI (certbot 4.1+, lego \
         <code>--ari-enable</code>) send it when they renew.</p>\n</section>\n\
         <section id=\"refunds\">\n<h2>Refunds</h2>\n\
         <p>A refused request spends nothing. When a request is refused by a later check, or \
         an order ends without a certificate, what it reserved is given back (see each \
         limit). New orders per account are never given back, and revoking a certificate \
         gives nothing back.</p>\n</section>\n",
    );
    h.push_str(
        "<section id=\"pausing\">\n<h2>Paused accounts</h2>\n\
         <p>When <a href=\"#consecutive-authorization-failures-per-identifier-per-account\">\
         consecutive authorization failures</a> run out, the account is <em>paused</em> for \
         that identifier: its new orders naming it are refused with 429 \
         <code>rateLimited</code> and no <code>Retry-After</code>, because waiting does not \
         help. Fix the validation setup (DNS, firewall, web server), then ask the operator of \
         this CA to unpause the account; the operator runs \
         <code>cairn admin unpause --account N</code> (optionally \
         <code>--identifier NAME</code>), which also starts the failure count afresh.</p>\n\
         </section>\n\
         <section id=\"overrides\">\n<h2>Overrides</h2>\n\
         <p>New orders per account (by account id) and certificates per registered domain (by \
         registered domain) can be raised for one key by the CA's operator \
         (<code>cairn admin overrides set</code>); running servers apply it within seconds, \
         without a restart. No other limit has overrides.</p>\n</section>\n",
    );
}

/// What a refusal looks like, and the RateLimit headers.
fn refusal(h: &mut String, base: &Base) {
    let docs = esc(&base.url("/docs/rate-limits"));
    let _ = write!(
        h,
        "<section id=\"rate-limited-responses\">\n<h2>What a refusal looks like</h2>\n\
         <pre>HTTP/1.1 429 Too Many Requests\n\
         Content-Type: application/problem+json\n\
         Retry-After: 36\n\
         Replay-Nonce: ...\n\
         Link: &lt;{dir}&gt;;rel=\"index\"\n\n\
         {{\n  \"type\": \"urn:ietf:params:acme:error:rateLimited\",\n  \
         \"detail\": \"too many new orders (300) from this account (42) in the last 3h0m0s, \
         retry after 2026-11-22 14:03:00 UTC: see {docs}#new-orders-per-account\",\n  \
         \"status\": 429,\n  \"limit\": \"newOrdersPerAccount\",\n  \"key\": \"42\",\n  \
         \"retryAfter\": 36\n}}</pre>\n\
         <p><code>Retry-After</code> and <code>retryAfter</code> are whole seconds, rounded \
         up: a retry after exactly that long succeeds. <code>limit</code> names the limit, \
         <code>key</code> what was counted (an IP address, an account, a registered domain, \
         the names), and the detail says when a retry succeeds and links here.</p>\n\
         <p id=\"rate-limit-headers\">Successful newAccount and newOrder responses carry \
         <code>RateLimit-Policy</code> and <code>RateLimit</code> \
         (draft-ietf-httpapi-ratelimit-headers) for the most constrained limit the request \
         touched, e.g. <code>RateLimit-Policy: \"newOrdersPerAccount\";q=300;w=10800</code> \
         and <code>RateLimit: \"newOrdersPerAccount\";r=299;t=36</code> (<code>r</code>: \
         tokens left, <code>t</code>: seconds until the bucket is full), so a client can slow \
         down before it is refused.</p>\n</section>\n</body>\n</html>\n",
        dir = esc(&base.url("/directory")),
    );
}

fn short_key(limit: LimitName) -> &'static str {
    match limit {
        LimitName::NewRegistrationsPerIp => "IP address",
        LimitName::NewRegistrationsPerIpv6Range => "IPv6 /48",
        LimitName::NewOrdersPerAccount => "account",
        LimitName::CertificatesPerDomain => "registered domain",
        LimitName::CertificatesPerFqdnSet => "exact set of names",
        LimitName::FailedAuthorizationsPerIdentifier
        | LimitName::ConsecutiveAuthorizationFailures => "account and identifier",
    }
}

fn endpoint_label(class: EndpointClass) -> &'static str {
    match class {
        EndpointClass::Other => "every other ACME URL",
        c => c.label(),
    }
}

/// `5 per 3h0m0s`.
fn refill(l: &Limit) -> String {
    format!("{} per {}", num(l.count), go_duration(l.period_secs))
}

/// A duration in nanoseconds, Go style, with tenths of a second where a
/// refill interval has them (`21.6s`), and whole days past two (`1152
/// days` reads better than `27648h0m0s`).
fn interval(ns: i64) -> String {
    let ns = ns.max(0) as u64;
    let secs = ns / 1_000_000_000;
    let tenths = ns % 1_000_000_000 / 100_000_000;
    if secs >= 2 * 86_400 && secs.is_multiple_of(86_400) && tenths == 0 {
        return format!("{} days", num(secs / 86_400));
    }
    if tenths == 0 || secs >= 3600 {
        return go_duration(secs);
    }
    let g = go_duration(secs);
    // go_duration ends in "<s>s": put the tenths before the unit.
    format!("{}.{tenths}s", g.trim_end_matches('s'))
}

/// Thousands separated by commas (`1,152`).
fn num(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn trim_dot(s: &str) -> &str {
    s.strip_suffix('.').unwrap_or(s)
}

/// The Host header chose the base URL: escape it like any input.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_preset, Config};

    fn config(env: &[(&str, &str)]) -> Config {
        load_preset("dev", env).unwrap()
    }

    fn section<'a>(html: &'a str, id: &str) -> &'a str {
        let start = html
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("no #{id}"));
        let rest = &html[start..];
        let end = rest.find("</section>").unwrap_or(rest.len());
        &rest[..end]
    }

    #[test]
    fn every_anchor_and_the_numbers_in_force() {
        let base = Base("https://ca.example".into());
        let html = render(&config(&[]), &base);
        for limit in LimitName::ALL {
            assert!(
                html.contains(&format!("id=\"{}\"", limit.doc_anchor())),
                "{limit}"
            );
        }
        for id in [
            "request-rates",
            "pending-authorizations",
            "pausing",
            "overrides",
        ] {
            assert!(html.contains(&format!("id=\"{id}\"")), "{id}");
        }
        // Production (the dev preset's set), LIMITS.md's numbers.
        let s = section(&html, "new-registrations-per-ip");
        assert!(
            s.contains(">10</span>") && s.contains("one every 18m0s"),
            "{s}"
        );
        let s = section(&html, "new-registrations-per-ipv6-range");
        assert!(s.contains("one every 21.6s"), "{s}");
        let s = section(
            &html,
            "consecutive-authorization-failures-per-identifier-per-account",
        );
        assert!(
            s.contains(">1,152</span>") && s.contains("1 per 24h0m0s"),
            "{s}"
        );
        let s = section(&html, "new-certificates-per-registered-domain");
        assert!(s.contains(">50</span>") && s.contains("3h21m36s"), "{s}");
        let s = section(&html, "request-rates");
        assert!(s.contains("<td>new-nonce</td><td><code>newNonceRequestsPerIp</code></td><td class=\"n\">20</td><td class=\"n\">10</td>"), "{s}");
        assert!(section(&html, "pending-authorizations").contains("<strong>300</strong>"));
        assert!(html.contains("https://ca.example/docs/rate-limits#new-orders-per-account"));

        // Numbers on top, limits off.
        let html = render(
            &config(&[
                ("CAIRN_LIMITS_PROFILE", "unlimited"),
                ("CAIRN_LIMITS_WINDOWS_NEW_ORDERS_PER_ACCOUNT_BURST", "7"),
            ]),
            &base,
        );
        let s = section(&html, "new-orders-per-account");
        assert!(
            s.contains(">7</span>") && s.contains("300 per 3h0m0s"),
            "{s}"
        );
        assert!(section(&html, "new-registrations-per-ip").contains("off on this server"));
        assert!(section(&html, "request-rates").contains("not limited"));
    }

    #[test]
    fn host_is_escaped_and_numbers_formatted() {
        let html = render(&config(&[]), &Base("https://a\"<b>".into()));
        assert!(!html.contains("a\"<b>"));
        assert!(html.contains("https://a&quot;&lt;b&gt;/directory"));
        assert_eq!(num(0), "0");
        assert_eq!(num(999), "999");
        assert_eq!(num(1152), "1,152");
        assert_eq!(num(300_000), "300,000");
        assert_eq!(interval(36_000_000_000), "36s");
        assert_eq!(interval(21_600_000_000), "21.6s");
        assert_eq!(interval(120_960_000_000_000), "33h36m0s");
        assert_eq!(interval(64_800_000_000), "1m4.8s");
        assert_eq!(interval(86_400_000_000_000), "24h0m0s");
        assert_eq!(interval(604_800_000_000_000), "7 days");
        assert_eq!(interval(1152 * 86_400_000_000_000), "1,152 days");
    }
}
