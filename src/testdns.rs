//! `cairn testdns`: a mock DNS server for tests and clients' dns-01 hooks,
//! with an HTTP API shaped like Let's Encrypt's challenge test server
//! (`pebble-challtestsrv`).
//!
//! The DNS side answers UDP and TCP queries from an in-memory zone: every
//! name has an A record (the default IPv4) unless `/add-a` set one, AAAA only
//! when set (or a default IPv6 is configured), TXT, CAA and CNAME only when
//! set, and names marked with `/set-servfail` fail for every type. Messages
//! are parsed and built with hickory-proto, so malformed packets are dropped
//! or answered FORMERR, never trusted.
//!
//! The API can throttle writes (`--write-rate`, `--write-scope`) the way a
//! DNS provider's API does, answering 429 with `Retry-After`, and has a bulk
//! endpoint (`/bulk-txt`) that a throttle counts once: dns-01 clients and
//! their hooks meet a provider's limits here before production.
//!
//! `start` binds everything (port 0 works, for tests) and returns the bound
//! addresses; [`run`] is `start` plus waiting forever.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header::{AUTHORIZATION, RETRY_AFTER};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecoder, Restrict};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use anyhow::Context;

use crate::config::PolicyConfig;
use crate::policy::Policy;
use crate::ratelimit::gcra::{self, Limit};

mod challenges;

/// `pebble-challtestsrv`'s flags, as current releases and 2.4 name them
/// (Go spells them with one dash; the binary's entry point gives them two).
pub const CHALLTESTSRV_FLAGS: &[&str] = &[
    "management",
    "dnsserver",
    "dns01",
    "doh",
    "doh-cert",
    "doh-cert-key",
    "http01",
    "https01",
    "tlsalpn01",
    "defaultIPv4",
    "defaultIPv6",
    "challtestsrv",
];

/// `cairn testdns`'s flags, with `pebble-challtestsrv`'s names as aliases.
/// Addresses are Go's (`:8053` is every interface, IPv4 and IPv6); the
/// servers that take a list take it comma-separated, and an empty value
/// turns that server off.
#[derive(Debug, Clone, clap::Args)]
pub struct TestDnsArgs {
    /// UDP and TCP addresses of the DNS server (default 127.0.0.1:8053).
    /// Also `-dnsserver` (challtestsrv) and `-dns01` (challtestsrv 2.4).
    #[arg(
        long,
        visible_alias = "dnsserver",
        alias = "dns01",
        env = "CAIRN_TESTDNS_DNS_LISTEN"
    )]
    pub dns_listen: Option<String>,
    /// Address of the HTTP management API (default 127.0.0.1:8055). Also
    /// `-management`.
    #[arg(long, visible_alias = "management", env = "CAIRN_TESTDNS_API_LISTEN")]
    pub api_listen: Option<String>,
    /// A answer for names with no A record set (default 127.0.0.1; empty:
    /// none). Also `-defaultIPv4`.
    #[arg(
        long,
        visible_alias = "defaultIPv4",
        env = "CAIRN_TESTDNS_DEFAULT_IPV4"
    )]
    pub default_ipv4: Option<String>,
    /// AAAA answer for names with no AAAA record set (default none; ::1
    /// with `--challtestsrv`). Also `-defaultIPv6`.
    #[arg(
        long,
        visible_alias = "defaultIPv6",
        env = "CAIRN_TESTDNS_DEFAULT_IPV6"
    )]
    pub default_ipv6: Option<String>,
    /// http-01 responders (`/add-http01`, `/add-redirect`) on these
    /// addresses (default none; `:5002` with `--challtestsrv`).
    #[arg(long)]
    pub http01: Option<String>,
    /// The same over HTTPS, with a self-signed certificate (default none;
    /// `:5003` with `--challtestsrv`).
    #[arg(long)]
    pub https01: Option<String>,
    /// tls-alpn-01 responders (`/add-tlsalpn01`) on these addresses
    /// (default none; `:5001` with `--challtestsrv`).
    #[arg(long)]
    pub tlsalpn01: Option<String>,
    /// DNS-over-HTTPS (RFC 8484, `/dns-query`) on these addresses; needs
    /// `--doh-cert` and `--doh-cert-key` (default none; `:8443` with
    /// `--challtestsrv`, off with a warning when no certificate is given).
    #[arg(long)]
    pub doh: Option<String>,
    /// PEM certificate chain of the DoH server.
    #[arg(long = "doh-cert")]
    pub doh_cert: Option<PathBuf>,
    /// PEM private key of the DoH server.
    #[arg(long = "doh-cert-key")]
    pub doh_cert_key: Option<PathBuf>,
    /// `pebble-challtestsrv`'s defaults for every address not given: all
    /// interfaces, every responder on, AAAA ::1. Implied when the binary
    /// runs under the name `pebble-challtestsrv`.
    #[arg(long)]
    pub challtestsrv: bool,
    /// Throttle the API's writes: at most N at once, refilled at N per
    /// second, minute or hour (`6/s`, `60/m`, `1000/h`). Repeat it (or
    /// separate with commas) for several rates, all enforced. Off by default.
    #[arg(
        long,
        value_name = "N/s|N/m|N/h",
        env = "CAIRN_TESTDNS_WRITE_RATE",
        value_delimiter = ','
    )]
    pub write_rate: Vec<WriteRate>,
    /// Who shares a throttle bucket: each registered domain written to, or
    /// each API token (`Authorization: Bearer <token>`).
    #[arg(
        long,
        value_enum,
        default_value_t = WriteScope::Domain,
        env = "CAIRN_TESTDNS_WRITE_SCOPE"
    )]
    pub write_scope: WriteScope,
}

impl TestDnsArgs {
    /// Loopback, ephemeral ports, default A 127.0.0.1: what tests want.
    pub fn ephemeral() -> TestDnsArgs {
        TestDnsArgs {
            dns_listen: Some("127.0.0.1:0".into()),
            api_listen: Some("127.0.0.1:0".into()),
            default_ipv4: None,
            default_ipv6: None,
            http01: None,
            https01: None,
            tlsalpn01: None,
            doh: None,
            doh_cert: None,
            doh_cert_key: None,
            challtestsrv: false,
            write_rate: Vec::new(),
            write_scope: WriteScope::Domain,
        }
    }

    /// The addresses and defaults, flags over the mode's defaults.
    fn settings(&self) -> anyhow::Result<Settings> {
        let ct = self.challtestsrv;
        let pick = |v: &Option<String>, cairn: &str, challtestsrv: &str| {
            v.clone()
                .unwrap_or_else(|| if ct { challtestsrv } else { cairn }.to_string())
        };
        let binds = |flag: &str, v: String| -> anyhow::Result<Vec<SocketAddr>> {
            v.split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(|a| crate::pebble::go_listen_addr(a).with_context(|| format!("--{flag}")))
                .collect()
        };
        let default_ip = |flag: &str, v: String| -> anyhow::Result<Option<IpAddr>> {
            let v = v.trim();
            if v.is_empty() {
                return Ok(None);
            }
            v.parse()
                .map(Some)
                .map_err(|_| anyhow::anyhow!("--{flag}: {v:?} is not an IP address"))
        };
        let api = binds(
            "api-listen",
            pick(&self.api_listen, "127.0.0.1:8055", ":8055"),
        )?;
        if api.len() > 1 {
            anyhow::bail!("--api-listen takes one address");
        }
        let default_ipv4 = match default_ip(
            "default-ipv4",
            pick(&self.default_ipv4, "127.0.0.1", "127.0.0.1"),
        )? {
            None => None,
            Some(IpAddr::V4(ip)) => Some(ip),
            Some(IpAddr::V6(_)) => anyhow::bail!("--default-ipv4 must be an IPv4 address"),
        };
        let default_ipv6 = match default_ip("default-ipv6", pick(&self.default_ipv6, "", "::1"))? {
            None => None,
            Some(IpAddr::V6(ip)) => Some(ip),
            Some(IpAddr::V4(_)) => anyhow::bail!("--default-ipv6 must be an IPv6 address"),
        };
        Ok(Settings {
            dns: binds(
                "dns-listen",
                pick(&self.dns_listen, "127.0.0.1:8053", ":8053"),
            )?,
            api: api.first().copied(),
            http01: binds("http01", pick(&self.http01, "", ":5002"))?,
            https01: binds("https01", pick(&self.https01, "", ":5003"))?,
            tlsalpn01: binds("tlsalpn01", pick(&self.tlsalpn01, "", ":5001"))?,
            doh: binds("doh", pick(&self.doh, "", ":8443"))?,
            default_ipv4,
            default_ipv6,
        })
    }
}

/// What [`TestDnsArgs`] resolve to.
struct Settings {
    dns: Vec<SocketAddr>,
    api: Option<SocketAddr>,
    http01: Vec<SocketAddr>,
    https01: Vec<SocketAddr>,
    tlsalpn01: Vec<SocketAddr>,
    doh: Vec<SocketAddr>,
    default_ipv4: Option<Ipv4Addr>,
    default_ipv6: Option<Ipv6Addr>,
}

/// TTL of every answer. Zero, so resolvers that cache see changes at once.
const TTL: u32 = 0;
/// Largest UDP answer without EDNS (RFC 1035 §4.2.1).
const UDP_PLAIN_MAX: usize = 512;
/// How long a TCP connection may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(30);
/// Longest CNAME chain followed when answering.
const MAX_CNAME_CHAIN: usize = 8;

/// One CAA property as set through `/add-caa`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CaaPolicy {
    pub tag: String,
    pub value: String,
    /// Sets the issuer-critical flag (128).
    #[serde(default)]
    pub critical: bool,
    /// Raw flags byte; ORed with `critical`.
    #[serde(default)]
    pub flags: u8,
}

/// The in-memory zone. Keys are lower-case names without the trailing dot.
#[derive(Debug, Default)]
struct Zone {
    default_ipv4: Option<Ipv4Addr>,
    default_ipv6: Option<Ipv6Addr>,
    a: HashMap<String, Vec<Ipv4Addr>>,
    aaaa: HashMap<String, Vec<Ipv6Addr>>,
    txt: HashMap<String, Vec<String>>,
    caa: HashMap<String, Vec<CaaPolicy>>,
    cname: HashMap<String, String>,
    servfail: HashSet<String>,
    /// http-01 key authorizations by token (`/add-http01`).
    http01: HashMap<String, String>,
    /// http-01 redirects: request path to target URL (`/add-redirect`).
    redirects: HashMap<String, String>,
    /// tls-alpn-01 key authorizations by host (`/add-tlsalpn01`).
    tlsalpn01: HashMap<String, String>,
    /// Requests seen, by host and kind (`/http-request-history`, ...).
    history: History,
}

/// The kinds of request history, as `/clear-request-history` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum EventKind {
    Http,
    Dns,
    TlsAlpn,
}

/// Requests the servers saw, by host (lower case, no trailing dot, no
/// port) and kind, each event as challtestsrv renders it. Bounded: the
/// newest [`MAX_EVENTS`] per host and kind, [`MAX_HOSTS`] hosts.
#[derive(Debug, Default)]
struct History {
    events: HashMap<(String, EventKind), std::collections::VecDeque<serde_json::Value>>,
}

const MAX_EVENTS: usize = 1000;
const MAX_HOSTS: usize = 10_000;

impl History {
    fn record(&mut self, host: &str, kind: EventKind, event: serde_json::Value) {
        let k = (key(host), kind);
        if !self.events.contains_key(&k) && self.events.len() >= MAX_HOSTS {
            return;
        }
        let list = self.events.entry(k).or_default();
        if list.len() >= MAX_EVENTS {
            list.pop_front();
        }
        list.push_back(event);
    }

    fn get(&self, host: &str, kind: EventKind) -> Vec<serde_json::Value> {
        self.events
            .get(&(key(host), kind))
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn clear(&mut self, host: &str, kind: EventKind) {
        self.events.remove(&(key(host), kind));
    }
}

/// Shared state. A std mutex: it is never held across an await and every
/// critical section is a map lookup.
type Shared = Arc<Mutex<Zone>>;

fn lock(zone: &Shared) -> std::sync::MutexGuard<'_, Zone> {
    // A poisoned lock only means a panic elsewhere mid-update of a test zone;
    // the data is still usable.
    zone.lock().unwrap_or_else(|e| e.into_inner())
}

/// Normalizes a host name: lower case, no trailing dot.
fn key(host: &str) -> String {
    host.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// A running testdns: bound addresses, and the tasks serving them.
pub(crate) struct TestDnsHandle {
    /// UDP and TCP address of the (first) DNS server; port 0 if none runs.
    pub dns_addr: SocketAddr,
    /// Address of the HTTP API; port 0 if it is off.
    pub api_addr: SocketAddr,
    /// Where the http-01, https-01, tls-alpn-01 and DoH servers listen.
    pub http01_addrs: Vec<SocketAddr>,
    pub https01_addrs: Vec<SocketAddr>,
    pub tlsalpn01_addrs: Vec<SocketAddr>,
    pub doh_addrs: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl TestDnsHandle {
    /// Base URL of the API, e.g. `http://127.0.0.1:8055` (for unit tests;
    /// the binary logs its addresses).
    #[cfg(test)]
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    /// Waits until a server task ends (they only end on error).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let tasks = std::mem::take(&mut self.tasks);
        if tasks.is_empty() {
            anyhow::bail!("nothing to serve: every server is turned off");
        }
        let (res, _, rest) = futures::future::select_all(tasks).await;
        for t in rest {
            t.abort();
        }
        match res {
            Ok(r) => r,
            Err(e) => Err(anyhow::anyhow!("testdns task failed: {e}")),
        }
    }
}

impl Drop for TestDnsHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Binds the DNS (UDP+TCP), API and challenge responder listeners and
/// starts serving.
pub(crate) async fn start(args: TestDnsArgs) -> anyhow::Result<TestDnsHandle> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = args.settings()?;
    let throttle = Throttle::new(&args.write_rate, args.write_scope)?;
    // The snapshot of the Public Suffix List compiled into Cairn, as its
    // rate limits use by default.
    let psl = Policy::new(&PolicyConfig {
        blocked_names: Vec::new(),
        public_suffix_list: String::new(),
    })?;
    let zone: Shared = Arc::new(Mutex::new(Zone {
        default_ipv4: settings.default_ipv4,
        default_ipv6: settings.default_ipv6,
        ..Zone::default()
    }));
    let unbound = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let mut tasks = Vec::new();

    let mut dns_addr = None;
    for addr in &settings.dns {
        let (udp, tcp) = bind_dns(*addr).await?;
        dns_addr.get_or_insert(udp.local_addr()?);
        tasks.push(tokio::spawn(serve_udp(Arc::new(udp), zone.clone())));
        tasks.push(tokio::spawn(serve_tcp(tcp, zone.clone())));
    }
    let mut api_addr = unbound;
    if let Some(addr) = settings.api {
        let api = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding testdns API on {addr}: {e}"))?;
        api_addr = api.local_addr()?;
        let app = router(Api {
            zone: zone.clone(),
            psl: Arc::new(psl),
            throttle: throttle.map(Arc::new),
        });
        tasks.push(tokio::spawn(async move {
            axum::serve(api, app).await?;
            Ok(())
        }));
    }
    let responders = challenges::Responders::new(zone.clone())?;
    let http01_addrs = responders
        .serve_http01(&settings.http01, false, &mut tasks)
        .await?;
    let https01_addrs = responders
        .serve_http01(&settings.https01, true, &mut tasks)
        .await?;
    let tlsalpn01_addrs = responders
        .serve_tlsalpn01(&settings.tlsalpn01, &mut tasks)
        .await?;
    let doh_addrs = match (&args.doh_cert, &args.doh_cert_key) {
        _ if settings.doh.is_empty() => Vec::new(),
        (Some(cert), Some(key)) => {
            responders
                .serve_doh(&settings.doh, cert, key, &mut tasks)
                .await?
        }
        (None, None) if args.doh.is_none() => {
            tracing::warn!(
                "testdns: DNS-over-HTTPS is off: -doh-cert and -doh-cert-key name its \
                 certificate (pebble-challtestsrv would fail to start it too)"
            );
            Vec::new()
        }
        _ => anyhow::bail!("--doh needs both --doh-cert and --doh-cert-key"),
    };
    Ok(TestDnsHandle {
        dns_addr: dns_addr.unwrap_or(unbound),
        api_addr,
        http01_addrs,
        https01_addrs,
        tlsalpn01_addrs,
        doh_addrs,
        tasks,
    })
}

/// `cairn testdns`: start, log the addresses, serve until an error.
pub async fn run(args: TestDnsArgs) -> anyhow::Result<()> {
    let throttle = match args.write_rate.as_slice() {
        [] => "writes not throttled".to_string(),
        rates => format!(
            "writes throttled to {} per {}",
            rates
                .iter()
                .map(WriteRate::to_string)
                .collect::<Vec<_>>()
                .join(" and "),
            match args.write_scope {
                WriteScope::Domain => "registered domain",
                WriteScope::Token => "API token",
            }
        ),
    };
    let handle = start(args).await?;
    let list = |v: &[SocketAddr]| match v {
        [] => "off".to_string(),
        v => v
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    };
    tracing::info!(
        "testdns: DNS on {} (udp+tcp), API on http://{} ({throttle}); http-01 {}, https-01 {}, \
         tls-alpn-01 {}, DoH {}",
        handle.dns_addr,
        handle.api_addr,
        list(&handle.http01_addrs),
        list(&handle.https01_addrs),
        list(&handle.tlsalpn01_addrs),
        list(&handle.doh_addrs),
    );
    handle.wait().await
}

/// Binds UDP and TCP on the same port. With port 0 the UDP port is chosen
/// first and TCP tries to follow it; a few attempts cover the rare case of
/// that TCP port being taken.
async fn bind_dns(addr: SocketAddr) -> anyhow::Result<(UdpSocket, TcpListener)> {
    let mut last_err = None;
    for _ in 0..10 {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding testdns UDP on {addr}: {e}"))?;
        let bound = udp.local_addr()?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 => last_err = Some(e),
            Err(e) => anyhow::bail!("binding testdns TCP on {addr}: {e}"),
        }
    }
    anyhow::bail!(
        "binding testdns TCP next to UDP: {}",
        last_err.map(|e| e.to_string()).unwrap_or_default()
    )
}

async fn serve_udp(sock: Arc<UdpSocket>, zone: Shared) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            // ICMP errors surface as recv errors on some systems; keep serving.
            Err(e) => {
                tracing::debug!("testdns udp recv: {e}");
                continue;
            }
        };
        let packet = buf[..n].to_vec();
        let sock = sock.clone();
        let zone = zone.clone();
        tokio::spawn(async move {
            if let Some(resp) = handle_packet(&packet, &zone, true, "") {
                if let Err(e) = sock.send_to(&resp, peer).await {
                    tracing::debug!("testdns udp send to {peer}: {e}");
                }
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, zone: Shared) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!("testdns tcp accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let zone = zone.clone();
        tokio::spawn(async move {
            if let Err(e) = tcp_conn(stream, &zone).await {
                tracing::debug!("testdns tcp {peer}: {e}");
            }
        });
    }
}

async fn tcp_conn(mut stream: TcpStream, zone: &Shared) -> std::io::Result<()> {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(n)) => n as usize,
            // EOF or idle: the client is done.
            Ok(Err(_)) | Err(_) => return Ok(()),
        };
        let mut msg = vec![0u8; len];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut msg))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "read timeout"))??;
        if let Some(resp) = handle_packet(&msg, zone, false, "") {
            let Ok(rlen) = u16::try_from(resp.len()) else {
                continue;
            };
            let mut out = Vec::with_capacity(resp.len() + 2);
            out.extend_from_slice(&rlen.to_be_bytes());
            out.extend_from_slice(&resp);
            stream.write_all(&out).await?;
        }
    }
}

/// Parses one query and returns the encoded answer, or None to stay silent.
/// The question goes into the request history (`user_agent`: DoH's).
fn handle_packet(packet: &[u8], zone: &Shared, udp: bool, user_agent: &str) -> Option<Vec<u8>> {
    let req = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!("testdns: malformed query ({} bytes): {e}", packet.len());
            // Answer FORMERR when there is at least a header to echo the id of.
            if packet.len() >= 12 {
                let id = u16::from_be_bytes([packet[0], packet[1]]);
                return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                    .to_vec()
                    .ok();
            }
            return None;
        }
    };
    if req.message_type() != MessageType::Query {
        return None;
    }
    let resp = {
        let mut zone = lock(zone);
        if let Some(q) = req.queries().first() {
            let event = serde_json::json!({
                "Question": {
                    "Name": q.name().to_ascii(),
                    "Qtype": u16::from(q.query_type()),
                    "Qclass": u16::from(q.query_class()),
                },
                "UserAgent": user_agent,
            });
            zone.history
                .record(&q.name().to_ascii(), EventKind::Dns, event);
        }
        answer(&req, &zone)
    };
    let bytes = resp.to_vec().ok()?;
    if udp {
        let limit = req
            .extensions()
            .as_ref()
            .map(|e| usize::from(e.max_payload()).max(UDP_PLAIN_MAX))
            .unwrap_or(UDP_PLAIN_MAX);
        if bytes.len() > limit {
            // Too big for UDP: header and question only, TC set, so the
            // client retries over TCP.
            return resp.truncate().to_vec().ok();
        }
    }
    Some(bytes)
}

/// Builds the response to one query message.
fn answer(req: &Message, zone: &Zone) -> Message {
    let mut resp = Message::new();
    resp.set_id(req.id())
        .set_message_type(MessageType::Response)
        .set_op_code(req.op_code())
        .set_authoritative(true)
        .set_recursion_desired(req.recursion_desired())
        .set_recursion_available(true);
    for q in req.queries() {
        resp.add_query(q.clone());
    }
    if let Some(edns) = req.extensions() {
        let mut e = Edns::new();
        e.set_max_payload(edns.max_payload().max(UDP_PLAIN_MAX as u16));
        resp.set_edns(e);
    }
    if req.op_code() != OpCode::Query {
        resp.set_response_code(ResponseCode::NotImp);
        return resp;
    }
    // One question per message is all DNS supports in practice (RFC 9619).
    let Some(q) = req.queries().first() else {
        resp.set_response_code(ResponseCode::FormErr);
        return resp;
    };
    tracing::debug!("testdns query: {} {}", q.name(), q.query_type());
    let (code, records) = lookup(q, zone);
    resp.set_response_code(code);
    for r in records {
        resp.add_answer(r);
    }
    resp
}

/// The answer records for one question.
fn lookup(q: &Query, zone: &Zone) -> (ResponseCode, Vec<Record>) {
    let qtype = q.query_type();
    let mut name = q.name().clone();
    let mut k = key(&name.to_ascii());
    let mut records = Vec::new();

    if zone.servfail.contains(&k) {
        return (ResponseCode::ServFail, Vec::new());
    }
    if qtype == RecordType::CNAME {
        if let Some(target) = zone.cname.get(&k) {
            if let Some(t) = fqdn(target) {
                records.push(Record::from_rdata(name, TTL, RData::CNAME(CNAME(t))));
            }
        }
        return (ResponseCode::NoError, records);
    }
    // Follow CNAMEs, answering with the chain plus the target's records.
    for _ in 0..MAX_CNAME_CHAIN {
        let Some(target) = zone.cname.get(&k) else {
            break;
        };
        let Some(t) = fqdn(target) else {
            break;
        };
        records.push(Record::from_rdata(
            name,
            TTL,
            RData::CNAME(CNAME(t.clone())),
        ));
        name = t;
        k = key(target);
        if zone.servfail.contains(&k) {
            return (ResponseCode::ServFail, Vec::new());
        }
    }

    match qtype {
        RecordType::A => {
            let addrs = match zone.a.get(&k) {
                Some(v) => v.clone(),
                None => zone.default_ipv4.into_iter().collect(),
            };
            for ip in addrs {
                records.push(Record::from_rdata(name.clone(), TTL, RData::A(A(ip))));
            }
        }
        RecordType::AAAA => {
            let addrs = match zone.aaaa.get(&k) {
                Some(v) => v.clone(),
                None => zone.default_ipv6.into_iter().collect(),
            };
            for ip in addrs {
                records.push(Record::from_rdata(name.clone(), TTL, RData::AAAA(AAAA(ip))));
            }
        }
        RecordType::TXT => {
            for v in zone.txt.get(&k).into_iter().flatten() {
                records.push(Record::from_rdata(name.clone(), TTL, RData::TXT(txt(v))));
            }
        }
        // Every name is its own zone apex, as in the challenge test server:
        // clients such as lego look for the SOA of the zone before dns-01.
        RecordType::SOA => {
            if let (Some(ns), Some(mbox)) = (
                fqdn("ns.testdns.invalid"),
                fqdn("hostmaster.testdns.invalid"),
            ) {
                records.push(Record::from_rdata(
                    name.clone(),
                    TTL,
                    RData::SOA(SOA::new(ns, mbox, 1, 3600, 600, 86400, 0)),
                ));
            }
        }
        RecordType::CAA => {
            for p in zone.caa.get(&k).into_iter().flatten() {
                match caa_rdata(p) {
                    Some(rd) => records.push(Record::from_rdata(name.clone(), TTL, rd)),
                    None => tracing::debug!("testdns: CAA policy {p:?} cannot be encoded"),
                }
            }
        }
        _ => {}
    }
    (ResponseCode::NoError, records)
}

fn fqdn(host: &str) -> Option<Name> {
    let mut n = Name::from_ascii(host.trim()).ok()?;
    n.set_fqdn(true);
    Some(n)
}

/// A TXT value split into character-strings of at most 255 bytes.
fn txt(value: &str) -> TXT {
    let chunks: Vec<&[u8]> = value.as_bytes().chunks(255).collect();
    if chunks.is_empty() {
        return TXT::from_bytes(vec![b"".as_slice()]);
    }
    TXT::from_bytes(chunks)
}

/// Encodes a CAA property through hickory's own decoder, so arbitrary tags
/// and values (even ones hickory cannot interpret) go out as given.
fn caa_rdata(p: &CaaPolicy) -> Option<RData> {
    let tag = p.tag.as_bytes();
    if tag.is_empty() || tag.len() > 15 || !tag.iter().all(u8::is_ascii_alphanumeric) {
        return None;
    }
    let flags = p.flags | if p.critical { 0x80 } else { 0 };
    let mut raw = Vec::with_capacity(2 + tag.len() + p.value.len());
    raw.push(flags);
    raw.push(tag.len() as u8);
    raw.extend_from_slice(tag);
    raw.extend_from_slice(p.value.as_bytes());
    let len = u16::try_from(raw.len()).ok()?;
    let mut dec = BinDecoder::new(&raw);
    RData::read(&mut dec, RecordType::CAA, Restrict::new(len)).ok()
}

// ---------------------------------------------------------------- HTTP API

/// What the API handlers share: the zone, the Public Suffix List (to find a
/// record's registered domain) and the write throttle, if one is configured.
#[derive(Clone)]
struct Api {
    zone: Shared,
    psl: Arc<Policy>,
    throttle: Option<Arc<Throttle>>,
}

impl Api {
    /// Spends one write for a request that would change records of `host`
    /// (a bulk request passes its domain), or refuses it. Only called once
    /// the request is known to be valid: a refused or malformed request
    /// costs nothing.
    fn admit(&self, headers: &HeaderMap, host: &str) -> Result<(), ApiError> {
        let Some(throttle) = &self.throttle else {
            return Ok(());
        };
        let key = match throttle.scope {
            WriteScope::Token => bearer_token(headers)?,
            WriteScope::Domain => self.psl.registered_domain(host),
        };
        throttle.spend(&key, throttle.now_ns()).map_err(|wait_ns| {
            let secs = gcra::retry_after_secs(wait_ns).max(1);
            match throttle.scope {
                WriteScope::Domain => {
                    tracing::info!("testdns: throttled a write to {key} ({secs} s)")
                }
                WriteScope::Token => {
                    tracing::info!("testdns: throttled a token's write ({secs} s)")
                }
            }
            ApiError::Throttled { secs }
        })
    }
}

fn router(api: Api) -> Router {
    Router::new()
        .route("/set-txt", post(set_txt))
        .route("/clear-txt", post(clear_txt))
        .route("/bulk-txt", post(bulk_txt))
        .route("/add-a", post(add_a))
        .route("/clear-a", post(clear_a))
        .route("/add-aaaa", post(add_aaaa))
        .route("/clear-aaaa", post(clear_aaaa))
        .route("/set-default-ipv4", post(set_default_ipv4))
        .route("/set-default-ipv6", post(set_default_ipv6))
        .route("/add-caa", post(add_caa))
        .route("/clear-caa", post(clear_caa))
        .route("/set-cname", post(set_cname))
        .route("/clear-cname", post(clear_cname))
        .route("/set-servfail", post(set_servfail))
        .route("/clear-servfail", post(clear_servfail))
        .route("/add-http01", post(add_http01))
        .route("/del-http01", post(del_http01))
        .route("/add-redirect", post(add_redirect))
        .route("/del-redirect", post(del_redirect))
        .route("/add-tlsalpn01", post(add_tlsalpn01))
        .route("/del-tlsalpn01", post(del_tlsalpn01))
        .route("/http-request-history", post(http_history))
        .route("/dns-request-history", post(dns_history))
        .route("/tlsalpn01-request-history", post(tlsalpn01_history))
        .route("/clear-request-history", post(clear_history))
        .with_state(api)
}

/// The API's one error type: a bad request (plain text, as the challenge
/// test server answers), or the throttle's refusal, worded and shaped as
/// deSEC's API words it (Django REST framework's throttling): 429, whole
/// seconds in `Retry-After`, the same number in a JSON `detail`.
#[derive(Debug)]
enum ApiError {
    BadRequest(String),
    Throttled { secs: u64 },
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::BadRequest(why) => (StatusCode::BAD_REQUEST, why).into_response(),
            ApiError::Throttled { secs } => {
                let unit = if secs == 1 { "second" } else { "seconds" };
                let detail = format!("Request was throttled. Expected available in {secs} {unit}.");
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(RETRY_AFTER, secs.to_string())],
                    axum::Json(serde_json::json!({ "detail": detail })),
                )
                    .into_response()
            }
        }
    }
}

fn bad(why: impl Into<String>) -> ApiError {
    ApiError::BadRequest(why.into())
}

type ApiResult = Result<StatusCode, ApiError>;

/// A JSON body whatever its Content-Type: the challenge test server's
/// clients (and `curl -d`) often send none or a form type.
struct AnyJson<T>(Result<T, String>);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for AnyJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| bad(format!("{}\n", e.body_text())))?;
        Ok(AnyJson(
            serde_json::from_slice(&bytes).map_err(|e| format!("invalid JSON body: {e}\n")),
        ))
    }
}

fn body<T>(b: AnyJson<T>) -> Result<T, ApiError> {
    b.0.map_err(ApiError::BadRequest)
}

fn host_key(host: &str) -> Result<String, ApiError> {
    let k = key(host);
    if k.is_empty() {
        return Err(bad("empty host\n"));
    }
    Ok(k)
}

/// The token of `Authorization: Bearer <token>`, the throttle's key in the
/// token scope; a request without the header is one more key of its own
/// (the empty string, which no token can be).
fn bearer_token(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(String::new());
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty());
    match token {
        Some(t) => Ok(t.to_string()),
        None => Err(bad(
            "the Authorization header must be \"Bearer <token>\" (or absent)\n",
        )),
    }
}

#[derive(Deserialize)]
struct HostBody {
    host: String,
}

#[derive(Deserialize)]
struct TxtBody {
    host: String,
    value: String,
}

#[derive(Deserialize)]
struct AddrBody {
    host: String,
    addresses: Vec<String>,
}

#[derive(Deserialize)]
struct IpBody {
    ip: String,
}

#[derive(Deserialize)]
struct CaaBody {
    host: String,
    policies: Vec<CaaPolicy>,
}

#[derive(Deserialize)]
struct CnameBody {
    host: String,
    target: String,
}

async fn set_txt(State(api): State<Api>, headers: HeaderMap, b: AnyJson<TxtBody>) -> ApiResult {
    let b = body(b)?;
    let k = host_key(&b.host)?;
    api.admit(&headers, &k)?;
    add_txt(&mut lock(&api.zone), k, b.value);
    Ok(StatusCode::OK)
}

/// Adds a TXT value; several values for one name coexist.
fn add_txt(zone: &mut Zone, host: String, value: String) {
    let vals = zone.txt.entry(host).or_default();
    if !vals.contains(&value) {
        vals.push(value);
    }
}

async fn clear_txt(State(api): State<Api>, headers: HeaderMap, b: AnyJson<HostBody>) -> ApiResult {
    let k = host_key(&body(b)?.host)?;
    api.admit(&headers, &k)?;
    lock(&api.zone).txt.remove(&k);
    Ok(StatusCode::OK)
}

/// Most records one bulk request may carry.
const MAX_BULK_RECORDS: usize = 1000;

/// `/bulk-txt`: TXT records of one registered domain set and cleared in
/// one request, as a DNS provider's bulk endpoint does (deSEC's counts
/// once against its write limit, and so does this one).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkTxtBody {
    /// A registered domain (eTLD+1 by the Public Suffix List), e.g.
    /// `example.com`; every host must have it as its registered domain.
    domain: String,
    #[serde(default)]
    set: Vec<TxtBody>,
    #[serde(default)]
    clear: Vec<HostBody>,
}

/// A bulk request that passed every check: names normalised.
struct BulkTxt {
    domain: String,
    set: Vec<(String, String)>,
    clear: Vec<String>,
}

/// Checks a whole bulk request before anything is applied, and reports
/// every bad record (by its place in `set` or `clear`) at once.
fn check_bulk(psl: &Policy, b: BulkTxtBody) -> Result<BulkTxt, ApiError> {
    let domain = key(&b.domain);
    if let Err(p) = psl.check_name(&domain) {
        return Err(bad(format!(
            "domain {:?} is not a registered domain: {}\n",
            b.domain, p.detail
        )));
    }
    let registered = psl.registered_domain(&domain);
    if registered != domain {
        return Err(bad(format!(
            "domain {:?} is not a registered domain: it is under {registered}; name that \
             instead\n",
            b.domain
        )));
    }
    let records = b.set.len() + b.clear.len();
    if records == 0 {
        return Err(bad("nothing to set or clear\n"));
    }
    if records > MAX_BULK_RECORDS {
        return Err(bad(format!(
            "{records} records: at most {MAX_BULK_RECORDS} in one request\n"
        )));
    }
    let mut errors = String::new();
    let mut check_host = |field: &str, i: usize, host: &str| -> Option<String> {
        let k = key(host);
        let why = if k.is_empty() {
            "empty host".to_string()
        } else if fqdn(&k).is_none() {
            "not a DNS name".to_string()
        } else {
            let theirs = psl.registered_domain(&k);
            if theirs == domain {
                return Some(k);
            }
            format!("not in domain {domain} (its registered domain is {theirs})")
        };
        errors.push_str(&format!("{field}[{i}]: host {host:?}: {why}\n"));
        None
    };
    let set: Vec<(String, String)> = b
        .set
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| Some((check_host("set", i, &r.host)?, r.value)))
        .collect();
    let clear: Vec<String> = b
        .clear
        .iter()
        .enumerate()
        .filter_map(|(i, r)| check_host("clear", i, &r.host))
        .collect();
    if !errors.is_empty() {
        return Err(bad(format!("nothing was changed:\n{errors}")));
    }
    Ok(BulkTxt { domain, set, clear })
}

async fn bulk_txt(
    State(api): State<Api>,
    headers: HeaderMap,
    b: AnyJson<BulkTxtBody>,
) -> ApiResult {
    let bulk = check_bulk(&api.psl, body(b)?)?;
    api.admit(&headers, &bulk.domain)?;
    // All under one lock: a DNS query sees the zone before or after, never
    // halfway. Clears go first, so a host in both lists ends up with exactly
    // the values set.
    let mut zone = lock(&api.zone);
    for host in &bulk.clear {
        zone.txt.remove(host);
    }
    for (host, value) in bulk.set {
        add_txt(&mut zone, host, value);
    }
    Ok(StatusCode::OK)
}

fn parse_addrs<T: std::str::FromStr>(addrs: &[String]) -> Result<Vec<T>, ApiError> {
    addrs
        .iter()
        .map(|a| {
            a.trim()
                .parse::<T>()
                .map_err(|_| bad(format!("bad address {a:?}\n")))
        })
        .collect()
}

async fn add_a(State(api): State<Api>, headers: HeaderMap, b: AnyJson<AddrBody>) -> ApiResult {
    let b = body(b)?;
    let k = host_key(&b.host)?;
    let addrs: Vec<Ipv4Addr> = parse_addrs(&b.addresses)?;
    api.admit(&headers, &k)?;
    let mut zone = lock(&api.zone);
    let v = zone.a.entry(k).or_default();
    for a in addrs {
        if !v.contains(&a) {
            v.push(a);
        }
    }
    Ok(StatusCode::OK)
}

async fn clear_a(State(api): State<Api>, headers: HeaderMap, b: AnyJson<HostBody>) -> ApiResult {
    let k = host_key(&body(b)?.host)?;
    api.admit(&headers, &k)?;
    lock(&api.zone).a.remove(&k);
    Ok(StatusCode::OK)
}

async fn add_aaaa(State(api): State<Api>, headers: HeaderMap, b: AnyJson<AddrBody>) -> ApiResult {
    let b = body(b)?;
    let k = host_key(&b.host)?;
    let addrs: Vec<Ipv6Addr> = parse_addrs(&b.addresses)?;
    api.admit(&headers, &k)?;
    let mut zone = lock(&api.zone);
    let v = zone.aaaa.entry(k).or_default();
    for a in addrs {
        if !v.contains(&a) {
            v.push(a);
        }
    }
    Ok(StatusCode::OK)
}

async fn clear_aaaa(State(api): State<Api>, headers: HeaderMap, b: AnyJson<HostBody>) -> ApiResult {
    let k = host_key(&body(b)?.host)?;
    api.admit(&headers, &k)?;
    lock(&api.zone).aaaa.remove(&k);
    Ok(StatusCode::OK)
}

/// An empty `ip` clears the default.
fn parse_default_ip(ip: &str) -> Result<Option<IpAddr>, ApiError> {
    let ip = ip.trim();
    if ip.is_empty() {
        return Ok(None);
    }
    ip.parse::<IpAddr>()
        .map(Some)
        .map_err(|_| bad(format!("bad address {ip:?}\n")))
}

// The defaults configure the mock itself, not any domain's records (a DNS
// provider has nothing like them): never throttled.
async fn set_default_ipv4(State(api): State<Api>, b: AnyJson<IpBody>) -> ApiResult {
    match parse_default_ip(&body(b)?.ip)? {
        None => lock(&api.zone).default_ipv4 = None,
        Some(IpAddr::V4(ip)) => lock(&api.zone).default_ipv4 = Some(ip),
        Some(IpAddr::V6(_)) => return Err(bad("not an IPv4 address\n")),
    }
    Ok(StatusCode::OK)
}

async fn set_default_ipv6(State(api): State<Api>, b: AnyJson<IpBody>) -> ApiResult {
    match parse_default_ip(&body(b)?.ip)? {
        None => lock(&api.zone).default_ipv6 = None,
        Some(IpAddr::V6(ip)) => lock(&api.zone).default_ipv6 = Some(ip),
        Some(IpAddr::V4(_)) => return Err(bad("not an IPv6 address\n")),
    }
    Ok(StatusCode::OK)
}

async fn add_caa(State(api): State<Api>, headers: HeaderMap, b: AnyJson<CaaBody>) -> ApiResult {
    let b = body(b)?;
    let k = host_key(&b.host)?;
    for p in &b.policies {
        if caa_rdata(p).is_none() {
            return Err(bad(format!(
                "bad CAA policy: tag {:?} must be 1-15 letters or digits\n",
                p.tag
            )));
        }
    }
    api.admit(&headers, &k)?;
    lock(&api.zone).caa.entry(k).or_default().extend(b.policies);
    Ok(StatusCode::OK)
}

async fn clear_caa(State(api): State<Api>, headers: HeaderMap, b: AnyJson<HostBody>) -> ApiResult {
    let k = host_key(&body(b)?.host)?;
    api.admit(&headers, &k)?;
    lock(&api.zone).caa.remove(&k);
    Ok(StatusCode::OK)
}

async fn set_cname(State(api): State<Api>, headers: HeaderMap, b: AnyJson<CnameBody>) -> ApiResult {
    let b = body(b)?;
    let k = host_key(&b.host)?;
    let target = host_key(&b.target)?;
    if fqdn(&target).is_none() {
        return Err(bad(format!("bad target {:?}\n", b.target)));
    }
    api.admit(&headers, &k)?;
    lock(&api.zone).cname.insert(k, target);
    Ok(StatusCode::OK)
}

async fn clear_cname(
    State(api): State<Api>,
    headers: HeaderMap,
    b: AnyJson<HostBody>,
) -> ApiResult {
    let k = host_key(&body(b)?.host)?;
    api.admit(&headers, &k)?;
    lock(&api.zone).cname.remove(&k);
    Ok(StatusCode::OK)
}

async fn set_servfail(
    State(api): State<Api>,
    headers: HeaderMap,
    b: AnyJson<HostBody>,
) -> ApiResult {
    let k = host_key(&body(b)?.host)?;
    api.admit(&headers, &k)?;
    lock(&api.zone).servfail.insert(k);
    Ok(StatusCode::OK)
}

async fn clear_servfail(
    State(api): State<Api>,
    headers: HeaderMap,
    b: AnyJson<HostBody>,
) -> ApiResult {
    let k = host_key(&body(b)?.host)?;
    api.admit(&headers, &k)?;
    lock(&api.zone).servfail.remove(&k);
    Ok(StatusCode::OK)
}

// ------------------------------------------- challenge responses, history
//
// As pebble-challtestsrv: these configure the mock's responders, not any
// domain's DNS records, so the write throttle does not count them.

#[derive(Deserialize)]
struct Http01Body {
    token: String,
    content: String,
}

#[derive(Deserialize)]
struct TokenBody {
    token: String,
}

#[derive(Deserialize)]
struct RedirectBody {
    path: String,
    #[serde(rename = "targetURL")]
    target_url: String,
}

#[derive(Deserialize)]
struct PathBody {
    path: String,
}

#[derive(Deserialize)]
struct TlsAlpnBody {
    host: String,
    content: String,
}

#[derive(Deserialize)]
struct ClearHistoryBody {
    host: String,
    #[serde(rename = "type")]
    kind: String,
}

fn non_empty<'a>(field: &str, v: &'a str) -> Result<&'a str, ApiError> {
    if v.is_empty() {
        return Err(bad(format!("{field} must not be empty\n")));
    }
    Ok(v)
}

/// `/add-http01 {"token", "content"}`: the http-01 responders answer
/// `/.well-known/acme-challenge/<token>` with `content`.
async fn add_http01(State(api): State<Api>, b: AnyJson<Http01Body>) -> ApiResult {
    let b = body(b)?;
    non_empty("token", &b.token)?;
    non_empty("content", &b.content)?;
    lock(&api.zone).http01.insert(b.token, b.content);
    Ok(StatusCode::OK)
}

async fn del_http01(State(api): State<Api>, b: AnyJson<TokenBody>) -> ApiResult {
    let b = body(b)?;
    lock(&api.zone).http01.remove(non_empty("token", &b.token)?);
    Ok(StatusCode::OK)
}

/// `/add-redirect {"path", "targetURL"}`: plain-HTTP requests for `path`
/// get a 302 to `targetURL`.
async fn add_redirect(State(api): State<Api>, b: AnyJson<RedirectBody>) -> ApiResult {
    let b = body(b)?;
    non_empty("path", &b.path)?;
    non_empty("targetURL", &b.target_url)?;
    if axum::http::HeaderValue::from_str(&b.target_url).is_err() {
        return Err(bad("targetURL cannot be a Location header\n"));
    }
    lock(&api.zone).redirects.insert(b.path, b.target_url);
    Ok(StatusCode::OK)
}

async fn del_redirect(State(api): State<Api>, b: AnyJson<PathBody>) -> ApiResult {
    let b = body(b)?;
    lock(&api.zone)
        .redirects
        .remove(non_empty("path", &b.path)?);
    Ok(StatusCode::OK)
}

/// `/add-tlsalpn01 {"host", "content"}`: the tls-alpn-01 responders answer
/// `host` with a certificate carrying SHA-256(`content`) (the key
/// authorization itself, hashed here as challtestsrv does).
async fn add_tlsalpn01(State(api): State<Api>, b: AnyJson<TlsAlpnBody>) -> ApiResult {
    let b = body(b)?;
    let k = host_key(&b.host)?;
    non_empty("content", &b.content)?;
    lock(&api.zone).tlsalpn01.insert(k, b.content);
    Ok(StatusCode::OK)
}

async fn del_tlsalpn01(State(api): State<Api>, b: AnyJson<HostBody>) -> ApiResult {
    let k = host_key(&body(b)?.host)?;
    lock(&api.zone).tlsalpn01.remove(&k);
    Ok(StatusCode::OK)
}

fn history(api: &Api, b: AnyJson<HostBody>, kind: EventKind) -> Result<Response, ApiError> {
    let host = host_key(&body(b)?.host)?;
    let events = lock(&api.zone).history.get(&host, kind);
    Ok(axum::Json(events).into_response())
}

/// `/http-request-history {"host"}`: the requests the http-01 and https-01
/// responders saw for `host`, oldest first.
async fn http_history(State(api): State<Api>, b: AnyJson<HostBody>) -> Result<Response, ApiError> {
    history(&api, b, EventKind::Http)
}

async fn dns_history(State(api): State<Api>, b: AnyJson<HostBody>) -> Result<Response, ApiError> {
    history(&api, b, EventKind::Dns)
}

async fn tlsalpn01_history(
    State(api): State<Api>,
    b: AnyJson<HostBody>,
) -> Result<Response, ApiError> {
    history(&api, b, EventKind::TlsAlpn)
}

/// `/clear-request-history {"host", "type": "http"|"dns"|"tlsalpn"}`.
async fn clear_history(State(api): State<Api>, b: AnyJson<ClearHistoryBody>) -> ApiResult {
    let b = body(b)?;
    let host = host_key(&b.host)?;
    let kind = match b.kind.as_str() {
        "http" => EventKind::Http,
        "dns" => EventKind::Dns,
        "tlsalpn" => EventKind::TlsAlpn,
        other => {
            return Err(bad(format!(
                "{other:?} event type unknown (http, dns, tlsalpn)\n"
            )))
        }
    };
    lock(&api.zone).history.clear(&host, kind);
    Ok(StatusCode::OK)
}

// ----------------------------------------------------------- write throttle

/// Who shares a throttle bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WriteScope {
    /// One bucket per API token (`Authorization: Bearer <token>`), as deSEC
    /// first limited writes per account; requests without a token share one.
    Token,
    /// One bucket per registered domain of the record written (Public
    /// Suffix List), as deSEC limits writes now.
    Domain,
}

/// A write rate, `N/s`, `N/m` or `N/h`: a bucket of `N` writes refilled at
/// `N` per second, minute or hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteRate {
    pub count: u32,
    pub period_secs: u32,
}

impl std::str::FromStr for WriteRate {
    type Err = String;

    fn from_str(s: &str) -> Result<WriteRate, String> {
        let wrong = || format!("{s:?} is not a rate such as 6/s, 60/m or 1000/h");
        let (count, unit) = s.trim().split_once('/').ok_or_else(wrong)?;
        let count: u32 = count.trim().parse().map_err(|_| wrong())?;
        let period_secs = match unit.trim() {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => return Err(wrong()),
        };
        if count == 0 {
            return Err(format!(
                "{s:?}: a rate of zero writes would refuse every write"
            ));
        }
        Ok(WriteRate { count, period_secs })
    }
}

impl std::fmt::Display for WriteRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.period_secs {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl WriteRate {
    fn limit(&self) -> Result<Limit, String> {
        let n = u64::from(self.count);
        Limit::new(n, n, u64::from(self.period_secs))
    }
}

/// Keyed GCRA buckets (the arithmetic of `crate::ratelimit::gcra`, which the
/// CA's own limits use), one per configured rate, in memory.
///
/// A write is admitted only if every rate admits it, and then spends from
/// each; a refused write spends nothing. Buckets only refill with time, so
/// the longest wait among the refusing rates is exactly when this write
/// would be admitted: that, rounded up to whole seconds, is `Retry-After`.
struct Throttle {
    limits: Vec<Limit>,
    scope: WriteScope,
    /// The buckets run on a monotonic clock: nanoseconds since this instant.
    epoch: Instant,
    /// Each key's TATs, one per limit. A std mutex: held for a few map
    /// operations, never across an await.
    buckets: Mutex<HashMap<String, Vec<i64>>>,
}

/// Above this many keys, buckets that have refilled (and so equal fresh
/// ones) are dropped before a new key is added.
const MAX_IDLE_BUCKETS: usize = 10_000;

impl Throttle {
    fn new(rates: &[WriteRate], scope: WriteScope) -> anyhow::Result<Option<Throttle>> {
        if rates.is_empty() {
            return Ok(None);
        }
        let limits = rates
            .iter()
            .map(|r| r.limit().map_err(|e| anyhow::anyhow!("--write-rate: {e}")))
            .collect::<anyhow::Result<_>>()?;
        Ok(Some(Throttle {
            limits,
            scope,
            epoch: Instant::now(),
            buckets: Mutex::new(HashMap::new()),
        }))
    }

    fn now_ns(&self) -> i64 {
        i64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(i64::MAX)
    }

    /// Spends one write for `key` at `now_ns`, or returns how many
    /// nanoseconds until it would be admitted.
    fn spend(&self, key: &str, now_ns: i64) -> Result<(), i64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let tats = buckets.get(key);
        let decisions: Vec<gcra::Decision> = self
            .limits
            .iter()
            .enumerate()
            .map(|(i, l)| gcra::spend(l, tats.and_then(|t| t.get(i).copied()), 1, now_ns))
            .collect();
        if let Some(wait) = decisions
            .iter()
            .filter(|d| !d.allowed)
            .map(|d| d.retry_in_ns)
            .max()
        {
            return Err(wait);
        }
        if tats.is_none() && buckets.len() >= MAX_IDLE_BUCKETS {
            buckets.retain(|_, tats| tats.iter().any(|t| *t > now_ns));
        }
        buckets.insert(
            key.to_string(),
            decisions.iter().map(|d| d.new_tat_ns).collect(),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(4242)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    async fn udp_ask(addr: SocketAddr, name: &str, t: RecordType) -> Message {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.send_to(&query(name, t), addr).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        Message::from_vec(&buf[..n]).unwrap()
    }

    async fn tcp_ask(addr: SocketAddr, name: &str, t: RecordType) -> Message {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let q = query(name, t);
        s.write_u16(q.len() as u16).await.unwrap();
        s.write_all(&q).await.unwrap();
        let n = s.read_u16().await.unwrap();
        let mut buf = vec![0u8; n as usize];
        s.read_exact(&mut buf).await.unwrap();
        Message::from_vec(&buf).unwrap()
    }

    async fn post(h: &TestDnsHandle, path: &str, body: serde_json::Value) -> u16 {
        reqwest::Client::new()
            .post(format!("{}{path}", h.api_url()))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    fn txts(m: &Message) -> Vec<String> {
        m.answers()
            .iter()
            .filter_map(|r| r.data().as_txt())
            .map(|t| {
                t.txt_data()
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .collect()
    }

    #[tokio::test]
    async fn answers_default_and_set_records() {
        let h = start(TestDnsArgs::ephemeral()).await.unwrap();
        let m = udp_ask(h.dns_addr, "anything.example.", RecordType::A).await;
        assert_eq!(m.id(), 4242);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert_eq!(m.answers()[0].data().as_a(), Some(&A(Ipv4Addr::LOCALHOST)));

        // No AAAA by default: NOERROR, no data.
        let m = udp_ask(h.dns_addr, "anything.example.", RecordType::AAAA).await;
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.answers().is_empty());

        assert_eq!(
            post(
                &h,
                "/add-a",
                serde_json::json!({"host": "Foo.Example.", "addresses": ["10.1.2.3", "10.1.2.4"]})
            )
            .await,
            200
        );
        let m = tcp_ask(h.dns_addr, "foo.EXAMPLE.", RecordType::A).await;
        assert_eq!(m.answers().len(), 2);
        post(&h, "/clear-a", serde_json::json!({"host": "foo.example"})).await;
        let m = udp_ask(h.dns_addr, "foo.example.", RecordType::A).await;
        assert_eq!(m.answers().len(), 1);

        post(&h, "/set-default-ipv6", serde_json::json!({"ip": "::1"})).await;
        let m = udp_ask(h.dns_addr, "x.example.", RecordType::AAAA).await;
        assert_eq!(m.answers().len(), 1);
        post(
            &h,
            "/add-aaaa",
            serde_json::json!({"host": "y.example", "addresses": ["2001:db8::1"]}),
        )
        .await;
        let m = udp_ask(h.dns_addr, "y.example.", RecordType::AAAA).await;
        assert_eq!(
            m.answers()[0].data().as_aaaa(),
            Some(&AAAA("2001:db8::1".parse().unwrap()))
        );

        // TXT: values coexist, clear removes all.
        post(
            &h,
            "/set-txt",
            serde_json::json!({"host": "_acme-challenge.x.example.", "value": "one"}),
        )
        .await;
        post(
            &h,
            "/set-txt",
            serde_json::json!({"host": "_acme-challenge.x.example", "value": "two"}),
        )
        .await;
        let m = udp_ask(h.dns_addr, "_acme-challenge.x.example.", RecordType::TXT).await;
        let mut got = txts(&m);
        got.sort();
        assert_eq!(got, vec!["one", "two"]);
        // A 600-byte value is split in character-strings and comes back whole.
        let long = "z".repeat(600);
        post(
            &h,
            "/set-txt",
            serde_json::json!({"host": "long.example", "value": long}),
        )
        .await;
        let m = tcp_ask(h.dns_addr, "long.example.", RecordType::TXT).await;
        assert_eq!(txts(&m), vec![long]);
        post(
            &h,
            "/clear-txt",
            serde_json::json!({"host": "_acme-challenge.x.example."}),
        )
        .await;
        let m = udp_ask(h.dns_addr, "_acme-challenge.x.example.", RecordType::TXT).await;
        assert!(m.answers().is_empty());

        // Unknown type: NOERROR, empty.
        let m = udp_ask(h.dns_addr, "x.example.", RecordType::MX).await;
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.answers().is_empty());
    }

    #[tokio::test]
    async fn caa_cname_servfail() {
        let h = start(TestDnsArgs::ephemeral()).await.unwrap();
        let st = post(
            &h,
            "/add-caa",
            serde_json::json!({"host": "c.example", "policies": [
                {"tag": "issue", "value": "cairn.test; accounturi=https://x/acct/1"},
                {"tag": "issuewild", "value": ";"},
                {"tag": "tbs", "value": "x", "critical": true}
            ]}),
        )
        .await;
        assert_eq!(st, 200);
        let m = udp_ask(h.dns_addr, "c.example.", RecordType::CAA).await;
        let caas: Vec<_> = m
            .answers()
            .iter()
            .filter_map(|r| r.data().as_caa())
            .collect();
        assert_eq!(caas.len(), 3);
        assert_eq!(caas[0].tag().as_str(), "issue");
        assert_eq!(
            caas[0].raw_value(),
            b"cairn.test; accounturi=https://x/acct/1"
        );
        assert!(caas[2].issuer_critical());

        post(
            &h,
            "/set-cname",
            serde_json::json!({"host": "_acme-challenge.a.example", "target": "b.example."}),
        )
        .await;
        post(
            &h,
            "/set-txt",
            serde_json::json!({"host": "b.example", "value": "v"}),
        )
        .await;
        let m = udp_ask(h.dns_addr, "_acme-challenge.a.example.", RecordType::TXT).await;
        assert!(m.answers()[0].data().as_cname().is_some());
        assert_eq!(txts(&m), vec!["v"]);

        post(
            &h,
            "/set-servfail",
            serde_json::json!({"host": "bad.example"}),
        )
        .await;
        let m = udp_ask(h.dns_addr, "bad.example.", RecordType::A).await;
        assert_eq!(m.response_code(), ResponseCode::ServFail);
        post(
            &h,
            "/clear-servfail",
            serde_json::json!({"host": "bad.example"}),
        )
        .await;
        let m = udp_ask(h.dns_addr, "bad.example.", RecordType::A).await;
        assert_eq!(m.response_code(), ResponseCode::NoError);
    }

    #[tokio::test]
    async fn api_rejects_bad_input_and_survives_garbage() {
        let h = start(TestDnsArgs::ephemeral()).await.unwrap();
        assert_eq!(
            post(&h, "/set-txt", serde_json::json!({"host": "x"})).await,
            400
        );
        assert_eq!(
            post(
                &h,
                "/add-a",
                serde_json::json!({"host": "x", "addresses": ["nope"]})
            )
            .await,
            400
        );
        assert_eq!(
            post(
                &h,
                "/add-caa",
                serde_json::json!({"host": "x", "policies": [{"tag": "is-sue", "value": ""}]})
            )
            .await,
            400
        );
        let st = reqwest::Client::new()
            .post(format!("{}/set-txt", h.api_url()))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(st, 400);

        // Garbage over UDP and TCP, then a real query still works.
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for junk in [&b""[..], b"\x00", &[0xffu8; 40], &[0u8; 12]] {
            sock.send_to(junk, h.dns_addr).await.unwrap();
        }
        let mut s = TcpStream::connect(h.dns_addr).await.unwrap();
        s.write_all(&[0, 5, 1, 2, 3, 4, 5]).await.unwrap();
        drop(s);
        let m = udp_ask(h.dns_addr, "ok.example.", RecordType::A).await;
        assert_eq!(m.answers().len(), 1);
    }

    const SEC: i64 = 1_000_000_000;

    fn throttle(rates: &[&str]) -> Throttle {
        let rates: Vec<WriteRate> = rates.iter().map(|r| r.parse().unwrap()).collect();
        Throttle::new(&rates, WriteScope::Domain).unwrap().unwrap()
    }

    #[test]
    fn write_rates_parse() {
        let r = |s: &str| s.parse::<WriteRate>();
        assert_eq!(
            r("6/s"),
            Ok(WriteRate {
                count: 6,
                period_secs: 1
            })
        );
        assert_eq!(
            r(" 60 / m "),
            Ok(WriteRate {
                count: 60,
                period_secs: 60
            })
        );
        assert_eq!(
            r("1000/h"),
            Ok(WriteRate {
                count: 1000,
                period_secs: 3600
            })
        );
        assert_eq!(r("60/m").unwrap().to_string(), "60/m");
        for bad in [
            "", "6", "6/", "/s", "6/x", "6/sec", "-1/s", "six/s", "0/s", "6/s/s",
        ] {
            assert!(r(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn throttle_admits_a_burst_then_says_exactly_when() {
        let t = throttle(&["6/s"]);
        for _ in 0..6 {
            assert_eq!(t.spend("example.com", 0), Ok(()));
        }
        // One token every 1/6 s: the seventh write waits exactly that.
        let ei = SEC / 6;
        assert_eq!(t.spend("example.com", 0), Err(ei));
        assert_eq!(t.spend("example.com", ei - 1), Err(1));
        assert_eq!(gcra::retry_after_secs(ei), 1);
        // A refusal spent nothing: the token is there on time.
        assert_eq!(t.spend("example.com", ei), Ok(()));
        // Other keys have their own buckets.
        assert_eq!(t.spend("example.org", ei), Ok(()));
    }

    #[test]
    fn throttle_with_several_rates_waits_for_the_slowest() {
        let t = throttle(&["6/s", "8/m"]);
        for _ in 0..6 {
            assert_eq!(t.spend("k", 0), Ok(()));
        }
        // 6/s refuses; 8/m would admit, but a refused write spends nothing.
        assert_eq!(t.spend("k", 0), Err(SEC / 6));
        assert_eq!(t.spend("k", SEC), Ok(()));
        assert_eq!(t.spend("k", SEC), Ok(()));
        // 8/m is empty: its next token comes 7.5 s after the start.
        assert_eq!(t.spend("k", SEC), Err(7 * SEC + SEC / 2 - SEC));
        assert_eq!(gcra::retry_after_secs(6 * SEC + SEC / 2), 7);
        assert_eq!(t.spend("k", 7 * SEC + SEC / 2), Ok(()));
    }

    #[test]
    fn throttle_forgets_refilled_buckets_when_crowded() {
        let t = throttle(&["1/s"]);
        for i in 0..MAX_IDLE_BUCKETS {
            assert_eq!(t.spend(&format!("d{i}.example"), 0), Ok(()));
        }
        assert_eq!(t.spend("busy.example", SEC / 2), Ok(()));
        // All earlier buckets were full again at 1 s: only they go.
        assert_eq!(t.spend("new.example", SEC), Ok(()));
        assert_eq!(t.buckets.lock().unwrap().len(), 2);
        assert_eq!(t.spend("busy.example", SEC), Err(SEC / 2));
    }

    #[test]
    fn bearer_tokens() {
        let h = |v: Option<&str>| {
            let mut m = HeaderMap::new();
            if let Some(v) = v {
                m.insert(AUTHORIZATION, v.parse().unwrap());
            }
            bearer_token(&m).map_err(|e| format!("{e:?}"))
        };
        assert_eq!(h(None), Ok(String::new()));
        assert_eq!(h(Some("Bearer abc")), Ok("abc".into()));
        assert_eq!(h(Some("bearer  abc ")), Ok("abc".into()));
        for bad in [
            "Basic dXNlcjpwYXNz",
            "Bearer",
            "Bearer   ",
            "Token abc",
            "abc",
        ] {
            assert!(h(Some(bad)).is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn many_concurrent_queries() {
        let h = start(TestDnsArgs::ephemeral()).await.unwrap();
        let addr = h.dns_addr;
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                tokio::spawn(async move {
                    let name = format!("n{i}.example.");
                    if i % 2 == 0 {
                        udp_ask(addr, &name, RecordType::A).await
                    } else {
                        tcp_ask(addr, &name, RecordType::A).await
                    }
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().answers().len(), 1);
        }
    }
}
