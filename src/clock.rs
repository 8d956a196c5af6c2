//! The injectable clock. Code that reads time takes a `Clock`, never
//! `SystemTime::now()`, so tests (and the `test` preset's clock control) can
//! move time instead of sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use time::{Duration, OffsetDateTime};

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

    /// Move the clock forward by `secs` seconds.
    pub fn advance(&self, secs: i64) {
        self.offset_secs.fetch_add(secs.max(0), Ordering::Relaxed);
    }
}
