//! Cost of the request-rate layer's decision for a client it already knows
//! (LIMITS.md §1: "must cost almost nothing: no I/O, no allocation on the
//! hot path"). Criterion times `RequestRateLimiter::decide` (path → class,
//! peer and `X-Forwarded-For` → client, then the keyed GCRA bucket), and a
//! counting global allocator proves the path allocates nothing: after a
//! warm-up that creates the bucket, a million calls must allocate zero
//! times. Run: `cargo bench --bench ratelimit_layer`.

use axum::http::HeaderMap;
use cairn::clock::Clock;
use cairn::ratelimit::{
    LimitSet, LimitsConfig, Profile, RequestRateLimiter, TrustedProxies, Verdict,
};
use criterion::{criterion_group, criterion_main, Criterion};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The system allocator, counting allocations (and reallocations).
/// The X-Forwarded-For field lines of `h`, as the WFE's layer hands them on.
fn fwd(h: &HeaderMap) -> impl DoubleEndedIterator<Item = &[u8]> {
    h.get_all("x-forwarded-for").iter().map(|v| v.as_bytes())
}

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Production's classes, with new-nonce raised so the bench measures the
/// allowed path (a refusal decides the same way, then builds a problem).
fn limiter(trusted: &[&str]) -> RequestRateLimiter {
    let mut cfg = LimitsConfig::with_profile(Profile::Production);
    cfg.requests.new_nonce.per_second = 1_000_000_000;
    cfg.requests.new_nonce.burst = u32::MAX;
    RequestRateLimiter::new(
        &LimitSet::resolve(&cfg),
        TrustedProxies::parse(&trusted.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("proxies"),
        Arc::new(Clock::system()),
        "https://ca.example/docs",
    )
}

struct Case {
    name: &'static str,
    limiter: RequestRateLimiter,
    peer: IpAddr,
    headers: HeaderMap,
}

fn cases() -> Vec<Case> {
    let mut xff = HeaderMap::new();
    xff.insert(
        "x-forwarded-for",
        "198.51.100.1, 203.0.113.9".parse().expect("header"),
    );
    vec![
        Case {
            name: "direct_ipv4",
            limiter: limiter(&[]),
            peer: "192.0.2.1".parse().expect("ip"),
            headers: HeaderMap::new(),
        },
        Case {
            name: "direct_ipv6",
            limiter: limiter(&[]),
            peer: "2001:db8::1".parse().expect("ip"),
            headers: HeaderMap::new(),
        },
        Case {
            name: "trusted_proxy_xff",
            limiter: limiter(&["10.0.0.0/8"]),
            peer: "10.0.0.1".parse().expect("ip"),
            headers: xff,
        },
    ]
}

/// Allocations per call on the warm path, over `n` calls.
fn allocations_per_call(c: &Case, n: u64) -> f64 {
    // Warm-up: the first call creates the bucket (that one allocates).
    black_box(
        c.limiter
            .decide("/acme/new-nonce", Some(c.peer), fwd(&c.headers)),
    );
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..n {
        let v = c.limiter.decide(
            black_box("/acme/new-nonce"),
            Some(black_box(c.peer)),
            fwd(&c.headers),
        );
        assert!(matches!(v, Verdict::Allowed { .. }));
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / n as f64
}

fn bench(cr: &mut Criterion) {
    let cases = cases();
    for c in &cases {
        let per_call = allocations_per_call(c, 1_000_000);
        println!(
            "ratelimit_layer/{}: {per_call} allocations per call",
            c.name
        );
        assert_eq!(per_call, 0.0, "{}: the hot path allocated", c.name);
    }
    let mut g = cr.benchmark_group("ratelimit_layer");
    for c in &cases {
        g.bench_function(c.name, |b| {
            b.iter(|| {
                c.limiter.decide(
                    black_box("/acme/new-nonce"),
                    Some(black_box(c.peer)),
                    fwd(&c.headers),
                )
            })
        });
    }
    // A path that is not rate limited: the class match alone.
    let c = &cases[0];
    g.bench_function("unlimited_path", |b| {
        b.iter(|| {
            c.limiter
                .decide(black_box("/roots/0"), Some(c.peer), fwd(&c.headers))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
