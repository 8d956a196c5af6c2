//! Request rates per client IP and endpoint (LIMITS.md §1): in-memory GCRA
//! buckets, one keyed `governor` limiter per endpoint class, per instance.
//! The tower layer that applies them to requests is the WFE's
//! (`wfe::rates`); this file knows no HTTP types.
//!
//! Cost: for a client already seen, a request costs a path match, one
//! lookup in a sharded map and one compare-and-swap: no I/O, no allocation
//! (`benches/ratelimit_layer.rs` measures both). Memory stays bounded: a
//! housekeeping task drops every bucket that has refilled
//! (`retain_recent`), and with these rates a bucket refills within seconds.
//!
//! The client is the socket peer, or, when
//! the peer is a configured trusted proxy, the right-most address of
//! `X-Forwarded-For` that is not itself a trusted proxy: the left part of
//! that header is whatever the client chose to send. IPv6 clients are keyed
//! by their /64, which one subscriber usually holds whole.

use super::config::{EndpointClass, LimitSet, RequestRate};
use super::format_utc;
use crate::clock::Clock;
use crate::problem::Problem;
use governor::clock::{Clock as _, DefaultClock};
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Peers whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    /// (network, prefix length) in IPv6 space; IPv4 as IPv4-mapped.
    nets: Vec<(u128, u32)>,
}

/// An address in one 128-bit space: IPv4 as `::ffff:a.b.c.d`.
fn to_u128(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn mask(bits: u32) -> u128 {
    u128::MAX.checked_shl(128 - bits.min(128)).unwrap_or(0)
}

impl TrustedProxies {
    /// Parse `1.2.3.4`, `10.0.0.0/8`, `::1`, `fd00::/8`...
    pub fn parse(list: &[String]) -> Result<TrustedProxies, String> {
        let mut nets = Vec::new();
        for item in list {
            let item = item.trim();
            let (addr, len) = match item.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (item, None),
            };
            let ip: IpAddr = addr
                .parse()
                .map_err(|_| format!("{item:?} is not an IP address or CIDR"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = match len {
                Some(l) => l
                    .parse::<u32>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("{item:?}: bad prefix length"))?,
                None => max,
            };
            let bits = if ip.is_ipv4() { bits + 96 } else { bits };
            nets.push((to_u128(ip) & mask(bits), bits));
        }
        Ok(TrustedProxies { nets })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let a = to_u128(ip);
        self.nets.iter().any(|(net, bits)| a & mask(*bits) == *net)
    }

    /// The client of a request that arrived from `peer` with these
    /// `X-Forwarded-For` field lines (in the order received; read only when
    /// the peer is a trusted proxy).
    pub fn client_ip<'a, I>(&self, peer: IpAddr, forwarded: I) -> IpAddr
    where
        I: IntoIterator<Item = &'a [u8]>,
        I::IntoIter: DoubleEndedIterator,
    {
        if self.nets.is_empty() || !self.contains(peer) {
            return peer;
        }
        let mut client = peer;
        // Right to left over every X-Forwarded-For field line.
        for value in forwarded.into_iter().rev() {
            let Ok(s) = std::str::from_utf8(value) else {
                return client;
            };
            for token in s.rsplit(',') {
                let Some(ip) = parse_forwarded(token) else {
                    return client;
                };
                client = ip;
                if !self.contains(ip) {
                    return ip;
                }
            }
        }
        client
    }
}

/// One `X-Forwarded-For` element: an address, possibly `[v6]:port` or
/// `v4:port`.
fn parse_forwarded(token: &str) -> Option<IpAddr> {
    let t = token.trim();
    if let Ok(ip) = t.parse() {
        return Some(ip);
    }
    if let Some(rest) = t.strip_prefix('[') {
        return rest.split_once(']').and_then(|(a, _)| a.parse().ok());
    }
    t.parse::<SocketAddr>().ok().map(|s| s.ip())
}

/// A bucket key: IPv4 addresses whole, IPv6 by /64, in one 128-bit space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpKey(u128);

impl IpKey {
    pub fn of(ip: IpAddr) -> IpKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => IpKey(u128::from(v4.to_ipv6_mapped())),
            IpAddr::V6(v6) => IpKey(u128::from(v6) & mask(64)),
        }
    }

    /// How the key is shown to clients: the address, or the /64.
    fn display(ip: IpAddr) -> String {
        match ip.to_canonical() {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("{}/64", Ipv6Addr::from(u128::from(v6) & mask(64))),
        }
    }
}

type Keyed = RateLimiter<IpKey, DashMapStateStore<IpKey>, DefaultClock>;

/// What the layer decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not a rate-limited path, no limit for its class, or no peer address.
    Unlimited,
    Allowed {
        class: EndpointClass,
        client: IpAddr,
    },
    Refused {
        class: EndpointClass,
        client: IpAddr,
        wait: Duration,
    },
}

/// The per-class keyed limiters of one instance.
pub struct RequestRateLimiter {
    limiters: [Option<Keyed>; 7],
    rates: [Option<RequestRate>; 7],
    proxies: TrustedProxies,
    clock: Arc<Clock>,
    docs_url: String,
    /// Refusals per class since start, in `EndpointClass::ALL` order.
    refusals: [AtomicU64; 7],
}

static WARNED_NO_PEER: AtomicBool = AtomicBool::new(false);

impl RequestRateLimiter {
    /// `clock` only dates the retry time in details; the buckets run on a
    /// monotonic clock of their own.
    pub fn new(
        set: &LimitSet,
        proxies: TrustedProxies,
        clock: Arc<Clock>,
        docs_url: impl Into<String>,
    ) -> RequestRateLimiter {
        let rates = EndpointClass::ALL.map(|c| set.request_rate(c));
        let limiters = rates.map(|r| {
            let r = r?;
            let quota = Quota::per_second(NonZeroU32::new(r.per_second)?)
                .allow_burst(NonZeroU32::new(r.burst)?);
            Some(RateLimiter::dashmap(quota))
        });
        RequestRateLimiter {
            limiters,
            rates,
            proxies,
            clock,
            docs_url: docs_url.into(),
            refusals: Default::default(),
        }
    }

    /// Refusals per endpoint class since start (for metrics).
    pub fn refusal_counts(&self) -> Vec<(EndpointClass, u64)> {
        EndpointClass::ALL
            .into_iter()
            .map(|c| (c, self.refusals[c.index()].load(Ordering::Relaxed)))
            .collect()
    }

    /// True when no class is limited (the `unlimited` profile): the layer
    /// then only passes requests through.
    pub fn is_unlimited(&self) -> bool {
        self.limiters.iter().all(Option::is_none)
    }

    /// The client a request comes from: the peer, or the address a trusted
    /// proxy forwarded for.
    pub fn client_ip<'a, I>(&self, peer: IpAddr, forwarded: I) -> IpAddr
    where
        I: IntoIterator<Item = &'a [u8]>,
        I::IntoIter: DoubleEndedIterator,
    {
        self.proxies.client_ip(peer, forwarded)
    }

    /// Spend one request of `class` for `client`: `Err(wait)` when refused.
    pub fn check(&self, class: EndpointClass, client: IpAddr) -> Result<(), Duration> {
        let Some(l) = &self.limiters[class.index()] else {
            return Ok(());
        };
        l.check_key(&IpKey::of(client))
            .map_err(|not_until| not_until.wait_time_from(l.clock().now()))
    }

    /// The whole decision for a request: path → class, peer and
    /// `X-Forwarded-For` → client, then the bucket. This is the hot path.
    pub fn decide<'a, I>(&self, path: &str, peer: Option<IpAddr>, forwarded: I) -> Verdict
    where
        I: IntoIterator<Item = &'a [u8]>,
        I::IntoIter: DoubleEndedIterator,
    {
        let Some(class) = EndpointClass::of_path(path) else {
            return Verdict::Unlimited;
        };
        if self.limiters[class.index()].is_none() {
            return Verdict::Unlimited;
        }
        let Some(peer) = peer else {
            if !WARNED_NO_PEER.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "request-rate limits: no ConnectInfo<SocketAddr> on requests, so they \
                     are not limited (serve with into_make_service_with_connect_info)"
                );
            }
            return Verdict::Unlimited;
        };
        let client = self.proxies.client_ip(peer, forwarded);
        match self.check(class, client) {
            Ok(()) => Verdict::Allowed { class, client },
            Err(wait) => Verdict::Refused {
                class,
                client,
                wait,
            },
        }
    }

    /// The 429 `rateLimited` problem for a refusal, `Retry-After` rounded up
    /// to whole seconds (at least 1).
    pub fn refusal(&self, class: EndpointClass, client: IpAddr, wait: Duration) -> Problem {
        let wait_ns = i64::try_from(wait.as_nanos()).unwrap_or(i64::MAX / 2);
        let secs = super::gcra::retry_after_secs(wait_ns).max(1);
        let key = IpKey::display(client);
        let at =
            format_utc((self.clock.now().unix_timestamp_nanos() as i64).saturating_add(wait_ns));
        let rate = self.rates[class.index()];
        let (per_second, burst) = rate.map_or((0, 0), |r| (r.per_second, r.burst));
        self.refusals[class.index()].fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            limit = class.limit_name(),
            key = %key,
            retry_after = secs,
            "request rate refused a request"
        );
        Problem::rate_limited_for(
            class.limit_name(),
            key.clone(),
            Some(secs),
            format!(
                "too many {} requests from {key} ({per_second} per second, bursts of {burst}), \
                 retry after {at}: see {}#request-rates",
                class.label(),
                self.docs_url
            ),
        )
        .with_help(&self.docs_url)
    }

    /// Forget buckets that have refilled (they equal fresh ones).
    pub fn retain_recent(&self) {
        for l in self.limiters.iter().flatten() {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Buckets held, all classes together.
    pub fn len(&self) -> usize {
        self.limiters.iter().flatten().map(|l| l.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Run `retain_recent` every `every` for as long as the limiter lives.
    pub fn spawn_housekeeping(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<RequestRateLimiter> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(l) = weak.upgrade() else { return };
                l.retain_recent();
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::{LimitsConfig, Profile};

    fn proxies(l: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&l.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    /// X-Forwarded-For field lines, in the order received.
    fn xff<'a>(v: &[&'a str]) -> Vec<&'a [u8]> {
        v.iter().map(|s| s.as_bytes()).collect()
    }

    #[test]
    fn trusted_proxy_matching() {
        let p = proxies(&["10.0.0.0/8", "192.0.2.1", "fd00::/8"]);
        assert!(p.contains("10.1.2.3".parse().unwrap()));
        assert!(p.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(p.contains("192.0.2.1".parse().unwrap()));
        assert!(!p.contains("192.0.2.2".parse().unwrap()));
        assert!(p.contains("fd12::1".parse().unwrap()));
        assert!(!p.contains("fe80::1".parse().unwrap()));
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedProxies::parse(&["nope".into()]).is_err());
        let all = proxies(&["0.0.0.0/0"]);
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        assert!(!all.contains("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn client_ip_is_the_rightmost_untrusted_forwarded_address() {
        let p = proxies(&["10.0.0.0/8"]);
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        // A spoofed left part is ignored; inner proxies are skipped.
        let h = xff(&["1.1.1.1, 203.0.113.5", "10.0.0.7"]);
        assert_eq!(
            p.client_ip(proxy, h.clone()),
            "203.0.113.5".parse::<IpAddr>().unwrap()
        );
        // Untrusted peer: the header is ignored.
        assert_eq!(p.client_ip(stranger, h.clone()), stranger);
        // No header, or garbage on the right: the peer itself.
        assert_eq!(p.client_ip(proxy, xff(&[])), proxy);
        assert_eq!(p.client_ip(proxy, xff(&["203.0.113.5, junk"])), proxy);
        // Ports and brackets.
        assert_eq!(
            p.client_ip(proxy, xff(&["[2001:db8::5]:443"])),
            "2001:db8::5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            p.client_ip(proxy, xff(&["203.0.113.6:1234"])),
            "203.0.113.6".parse::<IpAddr>().unwrap()
        );
        // Everything trusted: the left-most address.
        assert_eq!(
            p.client_ip(proxy, xff(&["10.9.9.9, 10.0.0.2"])),
            "10.9.9.9".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let a = IpKey::of("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = IpKey::of("2001:db8:1:2:bbbb::9".parse().unwrap());
        let c = IpKey::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(
            IpKey::of("192.0.2.1".parse().unwrap()),
            IpKey::of("192.0.2.2".parse().unwrap())
        );
        assert_eq!(
            IpKey::display("2001:db8:1:2:aaaa::1".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn burst_then_refusal_per_client() {
        let mut cfg = LimitsConfig::with_profile(Profile::Unlimited);
        cfg.requests.new_nonce.per_second = 10;
        cfg.requests.new_nonce.burst = 3;
        let set = crate::ratelimit::LimitSet::resolve(&cfg);
        let l = RequestRateLimiter::new(
            &set,
            TrustedProxies::default(),
            Arc::new(Clock::system()),
            "https://ca/docs",
        );
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let h: [&[u8]; 0] = [];
        for _ in 0..3 {
            assert!(matches!(
                l.decide("/acme/new-nonce", Some(a), h),
                Verdict::Allowed { .. }
            ));
        }
        let Verdict::Refused { class, wait, .. } = l.decide("/acme/new-nonce", Some(a), h) else {
            panic!("fourth request allowed")
        };
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100));
        assert!(matches!(
            l.decide("/acme/new-nonce", Some(b), h),
            Verdict::Allowed { .. }
        ));
        // Other classes are unlimited on this profile.
        assert_eq!(l.decide("/directory", Some(a), h), Verdict::Unlimited);
        assert_eq!(l.decide("/acme/new-nonce", None, h), Verdict::Unlimited);

        let p = l.refusal(class, a, wait);
        assert_eq!(p.status, 429);
        assert_eq!(p.retry_after, Some(1));
        let m = p.rate_limit.clone().unwrap();
        assert_eq!(m.limit, "newNonceRequestsPerIp");
        assert_eq!(m.key, "192.0.2.1");
        assert!(p.detail.contains("new-nonce"), "{}", p.detail);
        assert!(
            p.detail.contains("https://ca/docs#request-rates"),
            "{}",
            p.detail
        );

        assert_eq!(l.len(), 2);
        // Governor keeps a bucket one emission interval past full.
        std::thread::sleep(Duration::from_millis(600));
        l.retain_recent();
        assert_eq!(l.len(), 0, "refilled buckets are dropped");
    }
}
