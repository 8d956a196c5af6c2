//! Cairn: an ACME (RFC 8555) certificate authority.
//!
//! Layout, Boulder-shaped; data flows one way, `wfe` → `ra` → `sa`/`ca`/`va`,
//! all of them over `core` (ARCHITECTURE.md has the rules,
//! tests/architecture.rs checks them):
//! - `core`: the model: ids, rows, statuses, lifecycle rules, `StoreError`.
//! - `wfe`: web front end: HTTP, JWS, nonces, headers. Never touches SQL.
//! - `ra`: registration authority: account/order/authorization life cycles.
//! - `sa`: storage authority: the only code that speaks SQL.
//! - `ca`: certificate authority: the hierarchy, issuance, CRL signing.
//! - `va`: validation authority: http-01, dns-01, tls-alpn-01, CAA.
//! - `policy`: which identifiers may be issued for.
//! - `ratelimit`: request rates in memory, issuance windows in the database.
//! - `key`: key policy and canonical keys, for account keys and CSR keys alike.
//! - `crl_publisher`: CRL publication (schedule, after revocations) and serving.
//! - `problem`: the one error type, ACME problem documents.
//! - `config`: typed configuration (presets, TOML file, `CAIRN_*` variables).
//! - `clock`: the injectable clock (system, or moved by tests).
//! - `serve`: `cairn serve`: wires the authorities together, runs the listeners.
//! - `listener`: connections: TLS, per-phase timeouts, the connection cap.
//! - `lookup`: the management listener's status page (issued certificates, limits).
//! - `metrics`: Prometheus series.
//! - `request`: the request being answered (id, account) for logs and problems.
//! - `faults`: fault injection for client test suites.
//! - `retention`: the scheduled purge of expired orders, authorizations and nonces.
//! - `admin`: `cairn admin`, operator controls over issued certificates.
//! - `testdns`: the mock DNS server of `cairn testdns`.
//! - `pebble`: `cairn pebble`, Pebble's command line and configuration.
//! - `wire`: the ACME wire format, request and response types.
//!
//! The `pub` modules are those the binary (src/main.rs), tests/ and
//! benches/ reach; everything else is crate-private.

// `Problem` is large (subproblems, algorithms); it is the error on the cold
// path, so boxing it everywhere would cost clarity for nothing measurable.
#![allow(clippy::result_large_err)]

pub mod admin;
mod ca;
pub mod clock;
pub mod config;
pub mod core;
mod crl_publisher;
mod faults;
mod key;
mod listener;
mod lookup;
mod metrics;
pub mod pebble;
mod policy;
pub mod problem;
pub mod ra;
pub mod ratelimit;
mod request;
mod retention;
pub mod sa;
pub mod serve;
pub mod testdns;
mod va;
pub mod wfe;
mod wire;
