//! The token-bucket arithmetic (GCRA), as pure functions of a stored TAT and
//! an injected "now", exactly as Boulder's `ratelimits/gcra.go` does it.
//!
//! A bucket's only state is its TAT (theoretical arrival time): the instant,
//! in Unix nanoseconds, at which it will be full again. A TAT at or before
//! now, or no TAT at all, is a full bucket. Nanoseconds are integers all the
//! way through, so a decision is the same whichever process (or the
//! PostgreSQL function of migration 0004) computes it.

/// A bucket's parameters: `burst` tokens, refilled at `count` per `period`.
///
/// The two derived values are integers fixed at construction:
/// `emission_interval = period / count` (time to earn one token) and
/// `burst_offset = emission_interval * burst` (time for an empty bucket to
/// fill).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    pub burst: u64,
    pub count: u64,
    pub period_secs: u64,
    emission_interval_ns: i64,
    burst_offset_ns: i64,
}

/// The longest a bucket may take to refill: bounds `TAT = now + offset` far
/// below `i64::MAX` nanoseconds (year 2262), whatever the configuration.
const MAX_BURST_OFFSET_NS: i128 = 100 * 366 * 86_400 * 1_000_000_000;

impl Limit {
    /// Validate and precompute. All three numbers must be positive, the
    /// period must be at least one nanosecond per token, and the bucket must
    /// refill within a century.
    pub fn new(burst: u64, count: u64, period_secs: u64) -> Result<Limit, String> {
        if burst == 0 || count == 0 || period_secs == 0 {
            return Err(format!(
                "burst ({burst}), count ({count}) and period ({period_secs}s) must all be positive"
            ));
        }
        let period_ns = i128::from(period_secs) * 1_000_000_000;
        let ei = period_ns / i128::from(count);
        if ei == 0 {
            return Err(format!(
                "count {count} per {period_secs}s is more than one token per nanosecond"
            ));
        }
        let offset = ei * i128::from(burst);
        if offset > MAX_BURST_OFFSET_NS {
            return Err(format!(
                "a bucket of {burst} refilling {count} per {period_secs}s takes more than a century to fill"
            ));
        }
        Ok(Limit {
            burst,
            count,
            period_secs,
            // Both fit: offset <= MAX_BURST_OFFSET_NS < i64::MAX and ei <= offset.
            emission_interval_ns: ei as i64,
            burst_offset_ns: offset as i64,
        })
    }

    /// Nanoseconds to earn one token.
    pub fn emission_interval_ns(&self) -> i64 {
        self.emission_interval_ns
    }

    /// Nanoseconds for an empty bucket to fill.
    pub fn burst_offset_ns(&self) -> i64 {
        self.burst_offset_ns
    }

    /// `cost` tokens in nanoseconds; `cost` is clamped to the burst (a
    /// larger cost could never be allowed and would only risk overflow).
    pub fn cost_ns(&self, cost: u64) -> i64 {
        // cost <= burst, so this is at most burst_offset: no overflow.
        self.emission_interval_ns * cost.min(self.burst) as i64
    }
}

/// The outcome of one spend, check or refund against one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Spend/check: enough tokens. Refund: the TAT changed.
    pub allowed: bool,
    /// Whole tokens left after this operation (before it, when denied).
    pub remaining: u64,
    /// Nanoseconds until the cost could be afforded: positive when denied;
    /// when allowed, non-zero only if fewer than `cost` tokens are left.
    pub retry_in_ns: i64,
    /// Nanoseconds until the bucket is full again.
    pub reset_in_ns: i64,
    /// The TAT to store if this is written (the old one when denied).
    pub new_tat_ns: i64,
}

/// Spend `cost` tokens (or check whether one could): `tat` is the stored TAT,
/// `None` for a missing key (a full bucket).
pub fn spend(limit: &Limit, tat: Option<i64>, cost: u64, now: i64) -> Decision {
    let ei = limit.emission_interval_ns;
    // Unused capacity cannot pile up above the burst.
    let base = tat.map_or(now, |t| t.max(now));
    let cost_ns = limit.cost_ns(cost);
    let new_tat = base + cost_ns;
    let diff = now - (new_tat - limit.burst_offset_ns);
    if diff < 0 {
        return Decision {
            allowed: false,
            remaining: ((now - (base - limit.burst_offset_ns)) / ei).max(0) as u64,
            retry_in_ns: -diff,
            reset_in_ns: base - now,
            new_tat_ns: tat.unwrap_or(now),
        };
    }
    Decision {
        allowed: true,
        remaining: (diff / ei) as u64,
        retry_in_ns: if diff < cost_ns { cost_ns - diff } else { 0 },
        reset_in_ns: new_tat - now,
        new_tat_ns: new_tat,
    }
}

/// Give back `cost` tokens. Only a TAT in the future can be refunded, and
/// never above a full bucket: the new TAT is at least `now`.
pub fn refund(limit: &Limit, tat: Option<i64>, cost: u64, now: i64) -> Decision {
    let Some(tat) = tat.filter(|t| *t >= now) else {
        return Decision {
            allowed: false,
            remaining: limit.burst,
            retry_in_ns: 0,
            reset_in_ns: 0,
            new_tat_ns: tat.unwrap_or(now),
        };
    };
    let new_tat = (tat - limit.cost_ns(cost)).max(now);
    let diff = now - (new_tat - limit.burst_offset_ns);
    Decision {
        allowed: new_tat != tat,
        remaining: (diff / limit.emission_interval_ns) as u64,
        retry_in_ns: 0,
        reset_in_ns: new_tat - now,
        new_tat_ns: new_tat,
    }
}

/// Seconds a client must wait, rounded up so that a retry after exactly
/// this many seconds finds the tokens back (`Retry-After`, `retryAfter`).
pub fn retry_after_secs(retry_in_ns: i64) -> u64 {
    if retry_in_ns <= 0 {
        0
    } else {
        (retry_in_ns as u64).div_ceil(1_000_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;
    const NOW: i64 = 1_700_000_000 * S;

    fn regs() -> Limit {
        Limit::new(10, 10, 3 * 3600).unwrap()
    }

    #[test]
    fn precomputes_exact_intervals() {
        let l = regs();
        assert_eq!(l.emission_interval_ns(), 18 * 60 * S);
        assert_eq!(l.burst_offset_ns(), 3 * 3600 * S);
        let certs = Limit::new(50, 50, 7 * 86_400).unwrap();
        assert_eq!(certs.emission_interval_ns(), 12_096 * S); // 201.6 min
        let pausing = Limit::new(1152, 1, 86_400).unwrap();
        assert_eq!(pausing.burst_offset_ns(), 1152 * 86_400 * S);
        assert!(Limit::new(0, 1, 1).is_err());
        assert!(Limit::new(1, 0, 1).is_err());
        assert!(Limit::new(1, 1, 0).is_err());
        assert!(Limit::new(u64::MAX, 1, 86_400).is_err());
        assert!(Limit::new(1, 2_000_000_000, 1).is_err());
    }

    #[test]
    fn burst_then_denied_with_exact_retry() {
        let l = regs();
        let mut tat = None;
        for i in 0..10 {
            let d = spend(&l, tat, 1, NOW);
            assert!(d.allowed, "spend {i}");
            assert_eq!(d.remaining, 9 - i);
            tat = Some(d.new_tat_ns);
        }
        // The last token spent: a retry is 18 minutes away.
        let last = spend(&l, Some(NOW + 9 * 18 * 60 * S), 1, NOW);
        assert!(last.allowed);
        assert_eq!(last.remaining, 0);
        assert_eq!(last.retry_in_ns, 18 * 60 * S);
        assert_eq!(last.reset_in_ns, 3 * 3600 * S);

        let d = spend(&l, tat, 1, NOW);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_in_ns, 18 * 60 * S);
        assert_eq!(retry_after_secs(d.retry_in_ns), 1080);
        assert_eq!(d.new_tat_ns, tat.unwrap(), "a denial changes nothing");

        // One nanosecond early is still denied; exactly on time is allowed,
        // and then the bucket is empty again.
        let early = spend(&l, tat, 1, NOW + 18 * 60 * S - 1);
        assert!(!early.allowed);
        assert_eq!(early.retry_in_ns, 1);
        let on_time = spend(&l, tat, 1, NOW + 18 * 60 * S);
        assert!(on_time.allowed);
        assert_eq!(on_time.remaining, 0);
        assert!(!spend(&l, Some(on_time.new_tat_ns), 1, NOW + 18 * 60 * S).allowed);
    }

    #[test]
    fn idle_time_never_fills_above_burst() {
        let l = regs();
        let d = spend(&l, Some(NOW - 1000 * 3600 * S), 1, NOW);
        assert!(d.allowed);
        assert_eq!(d.remaining, 9);
        assert_eq!(d.new_tat_ns, NOW + 18 * 60 * S);
    }

    #[test]
    fn multi_token_costs() {
        let l = regs();
        let d = spend(&l, None, 10, NOW);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        let d = spend(&l, None, 11, NOW);
        assert!(d.allowed, "a cost above the burst is clamped to it");
        let half = spend(&l, None, 6, NOW);
        let d = spend(&l, Some(half.new_tat_ns), 5, NOW);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 4);
        assert_eq!(d.retry_in_ns, 18 * 60 * S);
        // A zero cost (check-only refund) always passes and changes nothing.
        let d = spend(&l, Some(NOW + 3 * 3600 * S), 0, NOW);
        assert!(d.allowed);
        assert_eq!(d.new_tat_ns, NOW + 3 * 3600 * S);
    }

    #[test]
    fn refund_never_exceeds_burst() {
        let l = regs();
        // Nothing to refund: no key, or a TAT in the past.
        assert!(!refund(&l, None, 1, NOW).allowed);
        assert!(!refund(&l, Some(NOW - S), 1, NOW).allowed);
        // Two spent, three refunded: full, not above.
        let tat = NOW + 2 * 18 * 60 * S;
        let d = refund(&l, Some(tat), 3, NOW);
        assert!(d.allowed);
        assert_eq!(d.new_tat_ns, NOW);
        assert_eq!(d.remaining, 10);
        let d = refund(&l, Some(tat), 1, NOW);
        assert_eq!(d.new_tat_ns, NOW + 18 * 60 * S);
        assert_eq!(d.remaining, 9);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(0), 0);
        assert_eq!(retry_after_secs(-5), 0);
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(S), 1);
        assert_eq!(retry_after_secs(S + 1), 2);
    }
}
