//! The injectable clock. Code that reads time takes a `Clock`, never
//! `SystemTime::now()`, so tests (and the `test` preset's clock control) can
//! move time instead of sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use time::{Duration, OffsetDateTime};

/// How far ahead of the system clock the clock may be moved: 100 years.
pub(crate) const MAX_OFFSET_SECS: i64 = 100 * 366 * 86_400;

/// System time plus an offset that only moves forward.
#[derive(Debug, Default)]
pub struct Clock {
    offset_secs: AtomicI64,
}

impl Clock {
    pub fn system() -> Clock {
        Clock::default()
    }

    pub fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() + Duration::seconds(self.offset_secs.load(Ordering::Relaxed))
    }

    /// Unix seconds, the unit the database stores.
    pub fn unix(&self) -> i64 {
        self.now().unix_timestamp()
    }

    /// Seconds this clock runs ahead of the system clock.
    pub fn offset(&self) -> i64 {
        self.offset_secs.load(Ordering::Relaxed)
    }

    /// Move the clock forward by `secs` seconds, unless that would put it
    /// more than `MAX_OFFSET_SECS` ahead of the system clock (time
    /// arithmetic past year 9999 panics; certificates cannot say it).
    /// Returns the new offset, or the current one when refused.
    pub fn advance(&self, secs: i64) -> Result<i64, i64> {
        let secs = secs.max(0);
        self.offset_secs
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |off| {
                off.checked_add(secs).filter(|o| *o <= MAX_OFFSET_SECS)
            })
            .map(|old| old + secs)
    }
}
