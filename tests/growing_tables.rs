//! Flat as history grows (issue 12): with a history loaded (`cairn admin
//! load-history`), no statement a server runs reads a table that grows
//! with every issuance whole. Each statement the server logged is
//! explained on its own database: SQLite's `EXPLAIN QUERY PLAN`,
//! PostgreSQL's generic plan (the one a prepared statement gets) on
//! analyzed tables.

mod common;

use common::admin::admin;
use common::*;
use serde_json::Value;

/// Tables that grow with every issuance (or account): no statement the
/// server runs may read one of them whole.
const GROWING: &[&str] = &[
    "accounts",
    "orders",
    "authzs",
    "order_authzs",
    "challenges",
    "certificates",
    "certificate_names",
];

/// The statements a server ran (sqlx's statement log, JSON), distinct.
fn logged_statements(log: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(s) = v["db.statement"].as_str() else {
            continue;
        };
        let s = s.trim().to_string();
        let first = s
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let ours = ["SELECT", "INSERT", "UPDATE", "DELETE", "WITH"].contains(&first.as_str());
        if ours && !s.contains("_sqlx_migrations") && !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// The highest `$N` in a statement.
fn params(stmt: &str) -> usize {
    let b = stmt.as_bytes();
    let mut max = 0;
    for (i, _) in stmt.match_indices('$') {
        let digits: String = b[i + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .map(|c| *c as char)
            .collect();
        max = max.max(digits.parse().unwrap_or(0));
    }
    max
}

/// Table behind each alias or name a statement gives after FROM, JOIN,
/// UPDATE or INTO.
fn aliases(stmt: &str) -> Vec<(String, String)> {
    let words: Vec<&str> = stmt
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        if ["FROM", "JOIN", "UPDATE", "INTO"].contains(&w.to_ascii_uppercase().as_str()) {
            if let Some(table) = words.get(i + 1) {
                out.push((table.to_string(), table.to_string()));
                let mut next = words.get(i + 2).copied().unwrap_or("");
                if next.eq_ignore_ascii_case("AS") {
                    next = words.get(i + 3).copied().unwrap_or("");
                }
                if next.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !next.is_empty() {
                    out.push((next.to_string(), table.to_string()));
                }
            }
        }
    }
    out
}

/// The growing table that the plan node on `plan[0]` reads whole: a
/// sequential scan, or an index scan with no index condition (an index
/// read end to end, as for ORDER BY id LIMIT n).
fn pg_unbounded_scan(plan: &[String], partial: &[String]) -> Option<&'static str> {
    let node = plan[0].trim_start().trim_start_matches("->").trim();
    let table = if let Some(rest) = node.strip_prefix("Seq Scan on ") {
        rest.split_whitespace().next()?
    } else if node.starts_with("Index Scan using ") || node.starts_with("Index Only Scan using ") {
        let index = node
            .split_whitespace()
            .nth(if node.starts_with("Index Only") { 4 } else { 3 })?;
        let rest = node.split(" on ").nth(1)?;
        // A partial index holds only the rows its predicate names.
        let bounded = partial.iter().any(|p| p == index)
            || plan[1..]
                .iter()
                .take_while(|l| !l.contains("->"))
                .any(|l| l.contains("Index Cond:"));
        if bounded {
            return None;
        }
        rest.split_whitespace().next()?
    } else {
        return None;
    };
    GROWING.iter().copied().find(|t| *t == table)
}

/// Each statement's plan lines that read a growing table whole: SQLite's
/// `SCAN t` (with or without an index), PostgreSQL's `Seq Scan on t` or
/// an index scan without an index condition (in its generic plan, the one
/// a prepared statement gets, on analyzed tables).
async fn full_scans(server: &Server, statements: &[String]) -> Vec<String> {
    use sqlx::{Connection, Executor, Row};
    let mut bad = Vec::new();
    match &server.database {
        Some(db) => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
            // A test database is small, and on small tables a sequential
            // scan is often the cheapest plan, index or not. With them
            // priced out, a plan that still reads a table whole has no
            // index to serve it.
            conn.execute(
                "ANALYZE; SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off",
            )
            .await
            .expect("analyze");
            let partial: Vec<String> = sqlx::query_scalar(
                "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                 WHERE i.indpred IS NOT NULL",
            )
            .fetch_all(&mut conn)
            .await
            .expect("partial indexes");
            for s in statements {
                let nulls = vec!["NULL"; params(s)].join(", ");
                let sql = format!(
                    "PREPARE p AS {s}; EXPLAIN EXECUTE p{}",
                    if nulls.is_empty() {
                        String::new()
                    } else {
                        format!("({nulls})")
                    }
                );
                let plan: Vec<String> = sqlx::raw_sql(&sql)
                    .fetch_all(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("EXPLAIN {s}: {e}"))
                    .iter()
                    .filter_map(|r| r.try_get(0).ok())
                    .collect();
                conn.execute("DEALLOCATE ALL").await.expect("deallocate");
                for (i, line) in plan.iter().enumerate() {
                    if let Some(table) = pg_unbounded_scan(&plan[i..], &partial) {
                        bad.push(format!("{} ({table})\n    in: {s}", line.trim()));
                    }
                }
            }
        }
        None => {
            let url = format!("sqlite://{}", server.data_dir.join("cairn.db").display());
            let mut conn = sqlx::SqliteConnection::connect(&url)
                .await
                .expect("connect");
            for s in statements {
                let sql = format!("EXPLAIN QUERY PLAN {s}");
                let q = (0..params(s)).fold(sqlx::query(&sql), |q, _| q.bind(None::<i64>));
                let rows = q
                    .fetch_all(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("EXPLAIN QUERY PLAN {s}: {e}"));
                let names = aliases(s);
                for r in rows {
                    let detail: String = r.try_get("detail").expect("detail");
                    let Some(rest) = detail.strip_prefix("SCAN ") else {
                        continue;
                    };
                    let alias = rest.split_whitespace().next().unwrap_or("");
                    let table = names
                        .iter()
                        .find(|(a, _)| a == alias)
                        .map_or(alias, |(_, t)| t.as_str());
                    if GROWING.contains(&table) {
                        bad.push(format!("{detail} ({table})\n    in: {s}"));
                    }
                }
            }
        }
    }
    bad
}

/// Flat as history grows: with a history loaded, no statement that a
/// server runs (issuance, ARI, replacement, revocation, the CRL, the
/// retention purge) reads a growing table whole.
#[tokio::test]
async fn no_statement_reads_a_growing_table_whole() {
    let server = Server::start(
        ServerOpts::always_valid()
            .with_env("CAIRN_LOG", "warn,sqlx::query=debug")
            .with_env("CAIRN_LOG_FORMAT", "json")
            .with_env("CAIRN_RETENTION_INTERVAL_SECS", "1"),
    );
    admin(
        &server,
        &[
            "load-history",
            "--certificates",
            "2000",
            "--accounts",
            "500",
            "--batch",
            "500",
        ],
    )
    .ok();
    let serial = admin(&server, &["certs", "list", "--account", "7", "--json"])
        .ok()
        .json_lines()[0]["serial"]
        .as_str()
        .expect("serial")
        .to_string();
    let pem = admin(&server, &["certs", "show", &serial, "--pem"])
        .ok()
        .stdout;
    let loaded_id = cairn::ra::cert_id(&pem_to_ders(&pem).remove(0)).expect("certID");

    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    c.register().await;
    let ari = |id: String| {
        let c = &c;
        async move { c.get(&format!("{}/{id}", c.endpoint("renewalInfo"))).await }
    };
    assert_eq!(ari(loaded_id).await.status, 200);
    let key = AcmeKey::generate(KeyKind::Es256);
    let names = ["plan.example.com"];
    let (_, _, pem) = c
        .issue_always_valid(&names, &csr_der(&names, &key.openssl_pkey()))
        .await;
    let der = pem_to_ders(&pem).remove(0);
    let id = cairn::ra::cert_id(&der).expect("certID");
    assert_eq!(ari(id.clone()).await.status, 200);
    let mut p = AcmeClient::order_payload(&names);
    p["replaces"] = serde_json::json!(id);
    let r = c.new_order_raw(p).await;
    assert_eq!(r.status, 201, "{r}");
    let r = c
        .post(
            &c.endpoint("revokeCert"),
            Some(serde_json::json!({"certificate": b64u(&der), "reason": 4})),
        )
        .await;
    assert_eq!(r.status, 200, "{r}");
    // At least one scheduled purge (every second) after all that.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;

    let statements = logged_statements(&server.log());
    // The purge and the CRL ran too.
    for kind in [
        "FROM orders o WHERE o.expires",
        "FROM authzs a WHERE a.expires",
        "WHERE revoked_at IS NOT NULL",
    ] {
        assert!(
            statements.iter().any(|s| s.contains(kind)),
            "no statement with {kind:?} ran"
        );
    }
    let bad = full_scans(&server, &statements).await;
    assert!(
        bad.is_empty(),
        "{} of {} statements read a growing table whole:\n{}",
        bad.len(),
        statements.len(),
        bad.join("\n")
    );
}
