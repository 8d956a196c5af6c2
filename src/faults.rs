//! Fault injection for client test suites (README, "Fault injection"): per
//! endpoint, a chosen share or sequence of requests is answered with
//! `rateLimited` 429, 503, 500 or `badNonce` instead of being handled, is
//! answered late, or (finalize) leaves its order `processing` for a while
//! after the certificate is issued, as Let's Encrypt's asynchronous
//! finalize does.
//!
//! A rule is one string, `ENDPOINT:FAULT[=N][@WHEN]`:
//! - ENDPOINT: a route name as in the metrics and request log (`newNonce`,
//!   `newAccount`, `account`, `orders`, `keyChange`, `newOrder`, `order`,
//!   `finalize`, `authz`, `challenge`, `certificate`, `revokeCert`,
//!   `renewalInfo`, `directory`, `issuer`), or `*` for all of them;
//! - FAULT: `rateLimited=SECS` (429, Retry-After SECS, default 1),
//!   `unavailable=SECS` (503, Retry-After), `serverInternal` (500),
//!   `badNonce` (400; POSTs only: the nonce is refused though it was good),
//!   `slow=MS` (answered normally after MS milliseconds), `processing=SECS`
//!   (`finalize` only: the order reads `processing`, with Retry-After and
//!   without its certificate, for SECS seconds after the finalize);
//! - WHEN: `P%` (each request with probability P, drawn from the seed, the
//!   rule and the request's number, so a run is reproducible), `#A-B+C`
//!   (those request numbers of the endpoint, counted from 1 per rule), or
//!   nothing (every request).
//!
//! Rules come from `faults.rules` (configuration or `CAIRN_FAULTS_RULES`,
//! comma-separated) and can be replaced at run time on the management
//! listener (`GET`, `PUT`, `DELETE /faults`). The first rule that fires for
//! a request decides it. Off unless a rule is given.

use crate::clock::Clock;
use crate::problem::Problem;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// The route names a rule may name (besides `*`).
pub const ENDPOINTS: &[&str] = &[
    "directory",
    "newNonce",
    "newAccount",
    "account",
    "orders",
    "keyChange",
    "newOrder",
    "order",
    "finalize",
    "authz",
    "challenge",
    "certificate",
    "revokeCert",
    "issuer",
    "renewalInfo",
];

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    RateLimited { retry_after: u64 },
    Unavailable { retry_after: u64 },
    ServerInternal,
    BadNonce,
    Slow { ms: u64 },
    Processing { secs: u64 },
}

#[derive(Debug, Clone, PartialEq)]
pub enum When {
    Always,
    /// Probability in [0, 1].
    Share(f64),
    /// Inclusive ranges of request numbers (from 1).
    Requests(Vec<(u64, u64)>),
}

/// One parsed rule and its counters.
#[derive(Debug)]
pub struct Rule {
    pub spec: String,
    pub endpoint: String,
    pub fault: Fault,
    pub when: When,
    seen: AtomicU64,
    fired: AtomicU64,
}

impl Rule {
    /// Parse `ENDPOINT:FAULT[=N][@WHEN]`; the error says what is wrong.
    pub fn parse(spec: &str) -> Result<Rule, String> {
        let s = spec.trim();
        let bad = |why: String| Err(format!("fault rule {s:?}: {why}"));
        let Some((endpoint, rest)) = s.split_once(':') else {
            return bad("expected ENDPOINT:FAULT[=N][@WHEN]".into());
        };
        if endpoint != "*" && !ENDPOINTS.contains(&endpoint) {
            return bad(format!(
                "unknown endpoint {endpoint:?} (one of *, {})",
                ENDPOINTS.join(", ")
            ));
        }
        let (fault, when) = match rest.split_once('@') {
            Some((f, w)) => (f, Some(w)),
            None => (rest, None),
        };
        let (name, arg) = match fault.split_once('=') {
            Some((n, a)) => match a.parse::<u64>() {
                Ok(v) => (n, Some(v)),
                Err(_) => return bad(format!("{a:?} is not a whole number")),
            },
            None => (fault, None),
        };
        let no_arg = |f: Fault| match arg {
            None => Ok(f),
            Some(_) => Err(format!("fault rule {s:?}: {name} takes no value")),
        };
        let fault = match name {
            "rateLimited" => Fault::RateLimited {
                retry_after: arg.unwrap_or(1),
            },
            "unavailable" => Fault::Unavailable {
                retry_after: arg.unwrap_or(1),
            },
            "serverInternal" => no_arg(Fault::ServerInternal)?,
            "badNonce" => no_arg(Fault::BadNonce)?,
            "slow" => match arg {
                Some(ms) if ms <= 60_000 => Fault::Slow { ms },
                _ => return bad("slow needs =MS, at most 60000".into()),
            },
            "processing" => match arg {
                Some(secs) if endpoint == "finalize" && secs <= 86_400 => {
                    Fault::Processing { secs }
                }
                _ => return bad("processing=SECS (at most 86400) applies to finalize only".into()),
            },
            other => {
                return bad(format!(
                    "unknown fault {other:?} (rateLimited, unavailable, serverInternal, \
                     badNonce, slow, processing)"
                ))
            }
        };
        let when = match when {
            None => When::Always,
            Some(w) => match parse_when(w) {
                Some(w) => w,
                None => {
                    return bad(format!(
                        "when {w:?} is neither P% (0-100) nor #N, #A-B joined by +"
                    ))
                }
            },
        };
        Ok(Rule {
            spec: s.to_string(),
            endpoint: endpoint.to_string(),
            fault,
            when,
            seen: AtomicU64::new(0),
            fired: AtomicU64::new(0),
        })
    }

    fn applies(&self, endpoint: &str, method: &Method) -> bool {
        (self.endpoint == "*" || self.endpoint == endpoint)
            // A nonce can only be refused where one was sent.
            && (self.fault != Fault::BadNonce || method == Method::POST)
    }

    /// Count this request; whether the rule fires for it.
    fn fires(&self, seed: u64, index: usize) -> bool {
        let n = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        let fire = match &self.when {
            When::Always => true,
            When::Share(p) => {
                let draw = splitmix64(seed ^ (index as u64).rotate_left(32) ^ n);
                (draw as f64 / u64::MAX as f64) < *p
            }
            When::Requests(ranges) => ranges.iter().any(|(a, b)| (*a..=*b).contains(&n)),
        };
        if fire {
            self.fired.fetch_add(1, Ordering::Relaxed);
        }
        fire
    }
}

fn parse_when(w: &str) -> Option<When> {
    if let Some(p) = w.strip_suffix('%') {
        let p: f64 = p.parse().ok()?;
        return (0.0..=100.0).contains(&p).then_some(When::Share(p / 100.0));
    }
    let list = w.strip_prefix('#')?;
    let mut ranges = Vec::new();
    for part in list.split('+') {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
            None => {
                let n = part.parse().ok()?;
                (n, n)
            }
        };
        if a == 0 || b < a {
            return None;
        }
        ranges.push((a, b));
    }
    Some(When::Requests(ranges))
}

/// SplitMix64: a fixed, well-mixed function of its input (Steele et al.).
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The rules in force and the orders held in `processing`.
pub struct Faults {
    /// Whether any rule is in force: the one check every request makes
    /// when fault injection is off.
    active: std::sync::atomic::AtomicBool,
    state: RwLock<(u64, Arc<Vec<Rule>>)>,
    /// Order id -> the time (unix milliseconds) until which it reads
    /// `processing`.
    held: Mutex<HashMap<i64, i64>>,
    clock: Arc<Clock>,
}

/// What `GET /faults` shows.
#[derive(Serialize)]
pub struct FaultsView {
    pub seed: u64,
    pub rules: Vec<RuleView>,
}

#[derive(Serialize)]
pub struct RuleView {
    pub rule: String,
    pub requests: u64,
    pub fired: u64,
}

impl Faults {
    /// From configuration; the rules were checked when it was loaded.
    pub fn new(seed: u64, specs: &[String], clock: Arc<Clock>) -> Result<Faults, String> {
        let rules = specs
            .iter()
            .map(|s| Rule::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        if !rules.is_empty() {
            tracing::warn!(rules = ?specs, seed, "fault injection is on");
        }
        Ok(Faults {
            active: (!rules.is_empty()).into(),
            state: RwLock::new((seed, Arc::new(rules))),
            held: Mutex::new(HashMap::new()),
            clock,
        })
    }

    fn current(&self) -> (u64, Arc<Vec<Rule>>) {
        let g = self.state.read().unwrap_or_else(|e| e.into_inner());
        (g.0, g.1.clone())
    }

    /// Replace the rules (and the seed); counters start again.
    pub fn replace(&self, seed: u64, specs: &[String]) -> Result<(), String> {
        let rules = specs
            .iter()
            .map(|s| Rule::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        tracing::warn!(rules = ?specs, seed, "fault rules replaced");
        let active = !rules.is_empty();
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = (seed, Arc::new(rules));
        self.active.store(active, Ordering::Relaxed);
        Ok(())
    }

    pub fn view(&self) -> FaultsView {
        let (seed, rules) = self.current();
        FaultsView {
            seed,
            rules: rules
                .iter()
                .map(|r| RuleView {
                    rule: r.spec.clone(),
                    requests: r.seen.load(Ordering::Relaxed),
                    fired: r.fired.load(Ordering::Relaxed),
                })
                .collect(),
        }
    }

    /// Until when (unix milliseconds) an order reads `processing`, if a
    /// `processing` fault holds it now.
    pub fn held_until(&self, order: i64) -> Option<i64> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_empty() {
            return None;
        }
        let now = self.now_ms();
        held.retain(|_, until| *until > now);
        held.get(&order).copied()
    }

    fn now_ms(&self) -> i64 {
        (self.clock.now().unix_timestamp_nanos() / 1_000_000) as i64
    }

    fn hold(&self, path: &str, secs: u64) {
        let Some(id) = path.rsplit('/').next().and_then(|s| s.parse::<i64>().ok()) else {
            return;
        };
        // Milliseconds: a hold of N seconds lasts N seconds, not N - 1 and
        // a fraction as whole seconds would make it.
        let until = self.now_ms() + secs as i64 * 1000;
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, until);
    }
}

/// The management listener's `/faults`: `GET` shows the rules with how
/// many requests each saw and fired on; `PUT {"rules": [...], "seed": N}`
/// replaces them (counters start again; a bad rule changes nothing);
/// `DELETE` removes them all.
pub fn router(faults: Arc<Faults>) -> axum::Router {
    use axum::routing::get;
    async fn show(State(f): State<Arc<Faults>>) -> Response {
        axum::Json(f.view()).into_response()
    }
    async fn put(State(f): State<Arc<Faults>>, body: axum::body::Bytes) -> Response {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Put {
            rules: Vec<String>,
            #[serde(default)]
            seed: Option<u64>,
        }
        let p: Put = match serde_json::from_slice(&body) {
            Ok(p) => p,
            Err(e) => {
                return Problem::malformed(format!(
                    "expected {{\"rules\": [\"ENDPOINT:FAULT[=N][@WHEN]\", ...], \"seed\": N}}: {e}"
                ))
                .into_response()
            }
        };
        let seed = p.seed.unwrap_or_else(|| f.current().0);
        match f.replace(seed, &p.rules) {
            Ok(()) => axum::Json(f.view()).into_response(),
            Err(e) => Problem::malformed(e).into_response(),
        }
    }
    async fn clear(State(f): State<Arc<Faults>>) -> Response {
        let seed = f.current().0;
        // An empty list always parses.
        let _ = f.replace(seed, &[]);
        axum::Json(f.view()).into_response()
    }
    axum::Router::new()
        .route("/faults", get(show).put(put).delete(clear))
        .with_state(faults)
}

/// The middleware: decide the request's fault, if any.
pub async fn layer(State(faults): State<Arc<Faults>>, req: Request, next: Next) -> Response {
    if !faults.active.load(Ordering::Relaxed) {
        return next.run(req).await;
    }
    let (seed, rules) = faults.current();
    let endpoint = crate::metrics::endpoint(req.uri().path());
    let fired = rules
        .iter()
        .enumerate()
        .filter(|(_, r)| r.applies(endpoint, req.method()))
        .find(|(i, r)| r.fires(seed, *i))
        .map(|(_, r)| r);
    let Some(rule) = fired else {
        return next.run(req).await;
    };
    tracing::info!(endpoint, rule = %rule.spec, "injected fault");
    let why = format!("injected fault ({})", rule.spec);
    match rule.fault {
        Fault::RateLimited { retry_after } => Problem::rate_limited(why)
            .with_retry_after(retry_after)
            .into_response(),
        Fault::Unavailable { retry_after } => Problem::unavailable(why)
            .with_retry_after(retry_after)
            .into_response(),
        Fault::ServerInternal => Problem::server_internal(why).into_response(),
        Fault::BadNonce => Problem::bad_nonce(why).into_response(),
        Fault::Slow { ms } => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            next.run(req).await
        }
        Fault::Processing { secs } => {
            faults.hold(req.uri().path(), secs);
            next.run(req).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_or_say_why() {
        let r = Rule::parse("newOrder:rateLimited=30@50%").unwrap();
        assert_eq!(r.fault, Fault::RateLimited { retry_after: 30 });
        assert_eq!(r.when, When::Share(0.5));
        let r = Rule::parse("*:badNonce@#1-3+7").unwrap();
        assert_eq!(r.when, When::Requests(vec![(1, 3), (7, 7)]));
        assert_eq!(
            Rule::parse("finalize:processing=10").unwrap().fault,
            Fault::Processing { secs: 10 }
        );
        for (bad, why) in [
            ("newOrder", "ENDPOINT:FAULT"),
            ("nope:badNonce", "unknown endpoint"),
            ("newOrder:explode", "unknown fault"),
            ("newOrder:badNonce=3", "takes no value"),
            ("newOrder:slow", "slow needs"),
            ("order:processing=5", "finalize only"),
            ("newOrder:badNonce@150%", "neither"),
            ("newOrder:badNonce@#0", "neither"),
            ("newOrder:badNonce@#3-1", "neither"),
            ("newOrder:rateLimited=x", "not a whole number"),
        ] {
            let e = Rule::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn sequences_fire_exactly_and_shares_reproducibly() {
        let r = Rule::parse("newNonce:unavailable@#2+4-5").unwrap();
        let fired: Vec<bool> = (0..6).map(|_| r.fires(0, 0)).collect();
        assert_eq!(fired, [false, true, false, true, true, false]);

        let draw = |seed| {
            let r = Rule::parse("newOrder:serverInternal@30%").unwrap();
            (0..1000).map(|_| r.fires(seed, 0)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7), "same seed, same answers");
        assert_ne!(draw(7), draw(8));
        let share = draw(7).iter().filter(|f| **f).count();
        assert!((250..350).contains(&share), "{share} of 1000 at 30%");
    }
}
