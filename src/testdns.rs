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
//! [`start`] binds everything (port 0 works, for tests) and returns the bound
//! addresses; [`run`] is `start` plus waiting forever.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
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

#[derive(Debug, Clone, clap::Args)]
pub struct TestDnsArgs {
    /// UDP and TCP address of the DNS server.
    #[arg(
        long,
        default_value = "127.0.0.1:8053",
        env = "CAIRN_TESTDNS_DNS_LISTEN"
    )]
    pub dns_listen: SocketAddr,
    /// HTTP address of the management API.
    #[arg(
        long,
        default_value = "127.0.0.1:8055",
        env = "CAIRN_TESTDNS_API_LISTEN"
    )]
    pub api_listen: SocketAddr,
    /// A answer for names with no A record set.
    #[arg(long, default_value = "127.0.0.1", env = "CAIRN_TESTDNS_DEFAULT_IPV4")]
    pub default_ipv4: Ipv4Addr,
    /// AAAA answer for names with no AAAA record set (none by default).
    #[arg(long, env = "CAIRN_TESTDNS_DEFAULT_IPV6")]
    pub default_ipv6: Option<Ipv6Addr>,
}

impl TestDnsArgs {
    /// Loopback, ephemeral ports, default A 127.0.0.1: what tests want.
    pub fn ephemeral() -> TestDnsArgs {
        TestDnsArgs {
            dns_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            api_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            default_ipv4: Ipv4Addr::LOCALHOST,
            default_ipv6: None,
        }
    }
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
pub struct CaaPolicy {
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
pub struct TestDnsHandle {
    /// UDP and TCP address of the DNS server (same port for both).
    pub dns_addr: SocketAddr,
    /// Address of the HTTP API.
    pub api_addr: SocketAddr,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl TestDnsHandle {
    /// Base URL of the API, e.g. `http://127.0.0.1:8055`.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    /// Waits until a server task ends (they only end on error).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let tasks = std::mem::take(&mut self.tasks);
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

/// Binds the DNS (UDP+TCP) and API listeners and starts serving.
pub async fn start(args: TestDnsArgs) -> anyhow::Result<TestDnsHandle> {
    let zone: Shared = Arc::new(Mutex::new(Zone {
        default_ipv4: Some(args.default_ipv4),
        default_ipv6: args.default_ipv6,
        ..Zone::default()
    }));

    let (udp, tcp) = bind_dns(args.dns_listen).await?;
    let dns_addr = udp.local_addr()?;
    let api = TcpListener::bind(args.api_listen)
        .await
        .map_err(|e| anyhow::anyhow!("binding testdns API on {}: {e}", args.api_listen))?;
    let api_addr = api.local_addr()?;

    let udp = Arc::new(udp);
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(serve_udp(udp, zone.clone())));
    tasks.push(tokio::spawn(serve_tcp(tcp, zone.clone())));
    let app = router(zone);
    tasks.push(tokio::spawn(async move {
        axum::serve(api, app).await?;
        Ok(())
    }));
    Ok(TestDnsHandle {
        dns_addr,
        api_addr,
        tasks,
    })
}

/// `cairn testdns`: start, log the addresses, serve until an error.
pub async fn run(args: TestDnsArgs) -> anyhow::Result<()> {
    let handle = start(args).await?;
    tracing::info!(
        "testdns: DNS on {} (udp+tcp), API on http://{}",
        handle.dns_addr,
        handle.api_addr
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
            if let Some(resp) = handle_packet(&packet, &zone, true) {
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
        if let Some(resp) = handle_packet(&msg, zone, false) {
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
fn handle_packet(packet: &[u8], zone: &Shared, udp: bool) -> Option<Vec<u8>> {
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
    let resp = answer(&req, &lock(zone));
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

fn router(zone: Shared) -> Router {
    Router::new()
        .route("/set-txt", post(set_txt))
        .route("/clear-txt", post(clear_txt))
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
        .with_state(zone)
}

type ApiResult = Result<StatusCode, (StatusCode, String)>;

/// A JSON body whatever its Content-Type: the challenge test server's
/// clients (and `curl -d`) often send none or a form type.
struct AnyJson<T>(Result<T, String>);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for AnyJson<T> {
    type Rejection = (StatusCode, String);

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("{}\n", e.body_text())))?;
        Ok(AnyJson(
            serde_json::from_slice(&bytes).map_err(|e| format!("invalid JSON body: {e}\n")),
        ))
    }
}

fn body<T>(b: AnyJson<T>) -> Result<T, (StatusCode, String)> {
    b.0.map_err(|e| (StatusCode::BAD_REQUEST, e))
}

fn host_key(host: &str) -> Result<String, (StatusCode, String)> {
    let k = key(host);
    if k.is_empty() {
        return Err((StatusCode::BAD_REQUEST, "empty host\n".into()));
    }
    Ok(k)
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

async fn set_txt(State(z): State<Shared>, b: AnyJson<TxtBody>) -> ApiResult {
    let b = body(b)?;
    let k = host_key(&b.host)?;
    let mut zone = lock(&z);
    let vals = zone.txt.entry(k).or_default();
    if !vals.contains(&b.value) {
        vals.push(b.value);
    }
    Ok(StatusCode::OK)
}

async fn clear_txt(State(z): State<Shared>, b: AnyJson<HostBody>) -> ApiResult {
    let k = host_key(&body(b)?.host)?;
    lock(&z).txt.remove(&k);
    Ok(StatusCode::OK)
}

fn parse_addrs<T: std::str::FromStr>(addrs: &[String]) -> Result<Vec<T>, (StatusCode, String)> {
    addrs
        .iter()
        .map(|a| {
            a.trim()
                .parse::<T>()
                .map_err(|_| (StatusCode::BAD_REQUEST, format!("bad address {a:?}\n")))
        })
        .collect()
}

async fn add_a(State(z): State<Shared>, b: AnyJson<AddrBody>) -> ApiResult {
    let b = body(b)?;
    let k = host_key(&b.host)?;
    let addrs: Vec<Ipv4Addr> = parse_addrs(&b.addresses)?;
    let mut zone = lock(&z);
    let v = zone.a.entry(k).or_default();
    for a in addrs {
        if !v.contains(&a) {
            v.push(a);
        }
    }
    Ok(StatusCode::OK)
}

async fn clear_a(State(z): State<Shared>, b: AnyJson<HostBody>) -> ApiResult {
    let k = host_key(&body(b)?.host)?;
    lock(&z).a.remove(&k);
    Ok(StatusCode::OK)
}

async fn add_aaaa(State(z): State<Shared>, b: AnyJson<AddrBody>) -> ApiResult {
    let b = body(b)?;
    let k = host_key(&b.host)?;
    let addrs: Vec<Ipv6Addr> = parse_addrs(&b.addresses)?;
    let mut zone = lock(&z);
    let v = zone.aaaa.entry(k).or_default();
    for a in addrs {
        if !v.contains(&a) {
            v.push(a);
        }
    }
    Ok(StatusCode::OK)
}

async fn clear_aaaa(State(z): State<Shared>, b: AnyJson<HostBody>) -> ApiResult {
    let k = host_key(&body(b)?.host)?;
    lock(&z).aaaa.remove(&k);
    Ok(StatusCode::OK)
}

/// An empty `ip` clears the default.
fn parse_default_ip(ip: &str) -> Result<Option<IpAddr>, (StatusCode, String)> {
    let ip = ip.trim();
    if ip.is_empty() {
        return Ok(None);
    }
    ip.parse::<IpAddr>()
        .map(Some)
        .map_err(|_| (StatusCode::BAD_REQUEST, format!("bad address {ip:?}\n")))
}

async fn set_default_ipv4(State(z): State<Shared>, b: AnyJson<IpBody>) -> ApiResult {
    match parse_default_ip(&body(b)?.ip)? {
        None => lock(&z).default_ipv4 = None,
        Some(IpAddr::V4(ip)) => lock(&z).default_ipv4 = Some(ip),
        Some(IpAddr::V6(_)) => {
            return Err((StatusCode::BAD_REQUEST, "not an IPv4 address\n".into()))
        }
    }
    Ok(StatusCode::OK)
}

async fn set_default_ipv6(State(z): State<Shared>, b: AnyJson<IpBody>) -> ApiResult {
    match parse_default_ip(&body(b)?.ip)? {
        None => lock(&z).default_ipv6 = None,
        Some(IpAddr::V6(ip)) => lock(&z).default_ipv6 = Some(ip),
        Some(IpAddr::V4(_)) => {
            return Err((StatusCode::BAD_REQUEST, "not an IPv6 address\n".into()))
        }
    }
    Ok(StatusCode::OK)
}

async fn add_caa(State(z): State<Shared>, b: AnyJson<CaaBody>) -> ApiResult {
    let b = body(b)?;
    let k = host_key(&b.host)?;
    for p in &b.policies {
        if caa_rdata(p).is_none() {
            return Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "bad CAA policy: tag {:?} must be 1-15 letters or digits\n",
                    p.tag
                ),
            ));
        }
    }
    lock(&z).caa.entry(k).or_default().extend(b.policies);
    Ok(StatusCode::OK)
}

async fn clear_caa(State(z): State<Shared>, b: AnyJson<HostBody>) -> ApiResult {
    let k = host_key(&body(b)?.host)?;
    lock(&z).caa.remove(&k);
    Ok(StatusCode::OK)
}

async fn set_cname(State(z): State<Shared>, b: AnyJson<CnameBody>) -> ApiResult {
    let b = body(b)?;
    let k = host_key(&b.host)?;
    let target = host_key(&b.target)?;
    if fqdn(&target).is_none() {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("bad target {:?}\n", b.target),
        ));
    }
    lock(&z).cname.insert(k, target);
    Ok(StatusCode::OK)
}

async fn clear_cname(State(z): State<Shared>, b: AnyJson<HostBody>) -> ApiResult {
    let k = host_key(&body(b)?.host)?;
    lock(&z).cname.remove(&k);
    Ok(StatusCode::OK)
}

async fn set_servfail(State(z): State<Shared>, b: AnyJson<HostBody>) -> ApiResult {
    let k = host_key(&body(b)?.host)?;
    lock(&z).servfail.insert(k);
    Ok(StatusCode::OK)
}

async fn clear_servfail(State(z): State<Shared>, b: AnyJson<HostBody>) -> ApiResult {
    let k = host_key(&body(b)?.host)?;
    lock(&z).servfail.remove(&k);
    Ok(StatusCode::OK)
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
