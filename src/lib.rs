//! Cairn: an ACME (RFC 8555) certificate authority.
//!
//! Layout, Boulder-shaped; data flows one way, `wfe` → `ra` → `sa`/`ca`/`va`:
//! - [`config`]: typed configuration (presets, TOML file, `CAIRN_*` variables).
//! - [`problem`]: the one error type, ACME problem documents.
//! - `wfe`: web front end: HTTP, JWS, nonces, headers. Never touches SQL.
//! - `ra`: registration authority: account/order/authorization life cycles.
//! - `sa`: storage authority: the only code that speaks SQL.
//! - `ca`: certificate authority: the hierarchy and issuance.
//! - [`crl_publisher`]: CRL publication (schedule, after revocations) and serving.
//! - [`key`]: key policy and canonical keys, for account keys and CSR keys alike.
//! - [`listener`]: connections: TLS, per-phase timeouts, the connection cap.
//! - [`lookup`]: the management listener's status page (issued certificates, limits).
//! - [`metrics`]: Prometheus series; [`request`]: the request being answered (id, account).
//! - [`retention`]: the scheduled purge of expired orders, authorizations and nonces.
//! - `va`: validation authority: http-01, dns-01, tls-alpn-01, CAA.
//! - `policy`: which identifiers may be issued for.
//! - [`testdns`]: the mock DNS server of `cairn testdns`.
//! - [`pebble`]: `cairn pebble`, Pebble's command line and configuration.
//! - [`admin`]: `cairn admin`, operator controls over issued certificates.

// `Problem` is large (subproblems, algorithms); it is the error on the cold
// path, so boxing it everywhere would cost clarity for nothing measurable.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod ca;
pub mod clock;
pub mod config;
pub mod core;
pub mod crl_publisher;
pub mod faults;
pub mod key;
pub mod listener;
pub mod lookup;
pub mod metrics;
pub mod pebble;
pub mod policy;
pub mod problem;
pub mod ra;
pub mod ratelimit;
pub mod request;
pub mod retention;
pub mod sa;
pub mod serve;
pub mod testdns;
pub mod va;
pub mod wfe;
