//! Nonces (RFC 8555 §6.5). A nonce is an authenticated token, not a row:
//! 8 bytes of issue time and 8 more, followed by a 16-byte HMAC tag.
//! Issuing one costs no I/O, so `newNonce` is the cheapest endpoint;
//! redeeming one checks the tag and the age without I/O, then records it
//! as used, in one of two places (`acme.nonces`):
//!
//! - `shared`: the 8 bytes are random and the key is the database's, which
//!   every instance shares; one insert, which fails on a second use,
//!   records it, so a nonce is good exactly once at every instance and
//!   across restarts. Expired nonces are refused without a lookup, which
//!   keeps the used set no larger than one lifetime of traffic.
//! - `local`: the 8 bytes are a counter and the key is this process's own,
//!   so no other instance and no later run of this one accepts the nonce;
//!   a bit per counter value in a window of the latest [`WINDOW`] records
//!   it, with no I/O (Boulder's nonce service works the same way). A
//!   nonce older than the window is refused as expired. A lock on
//!   `<data_dir>/nonces.lock` keeps a second instance off the directory.

use crate::clock::Clock;
use crate::config::NonceStore;
use crate::problem::Problem;
use crate::sa::DynStore;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

type HmacSha256 = Hmac<Sha256>;

const BODY_LEN: usize = 16;
const TAG_LEN: usize = 16;
/// Tolerated clock difference between instances, seconds.
pub const SKEW_SECS: i64 = 60;

pub struct Nonces {
    mac: HmacSha256,
    lifetime: i64,
    clock: Arc<Clock>,
    used: Used,
    /// `<data_dir>/nonces.lock`, locked while this server runs ([`Nonces::lock`]),
    /// as `mode` asks.
    _lock: std::fs::File,
}

/// Where used nonces are remembered.
enum Used {
    Store(DynStore),
    Memory(Window),
}

/// A nonce that passed [`Nonces::check`]: spent already (`local`), or to
/// be spent in the store (`shared`: the body, remembered until `expires`).
pub enum Checked {
    Spent,
    ToSpend(Vec<u8>, i64),
}

impl Nonces {
    pub async fn new(
        store: DynStore,
        clock: Arc<Clock>,
        lifetime_secs: u64,
        mode: NonceStore,
        lock: std::fs::File,
    ) -> anyhow::Result<Nonces> {
        let fresh: [u8; 32] = rand::random();
        let (key, used) = match mode {
            NonceStore::Shared => (
                store.secret("nonce-hmac-key", &fresh).await?,
                Used::Store(store),
            ),
            NonceStore::Local => (fresh.to_vec(), Used::Memory(Window::new())),
        };
        let mac =
            HmacSha256::new_from_slice(&key).map_err(|e| anyhow::anyhow!("nonce key: {e}"))?;
        Ok(Nonces {
            mac,
            lifetime: lifetime_secs as i64,
            clock,
            used,
            _lock: lock,
        })
    }

    /// `<data_dir>/nonces.lock`: held exclusively by a `local` server, shared
    /// by `shared` ones, so a `local` server never runs beside another
    /// instance on one data directory.
    pub fn lock(data_dir: &Path, mode: NonceStore) -> anyhow::Result<std::fs::File> {
        let path = data_dir.join("nonces.lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
        let taken = match mode {
            NonceStore::Local => f.try_lock(),
            NonceStore::Shared => f.try_lock_shared(),
        };
        match taken {
            Ok(()) => Ok(f),
            Err(std::fs::TryLockError::WouldBlock) => Err(anyhow::anyhow!(match mode {
                NonceStore::Local => format!(
                    "another Cairn instance serves {}: with acme.nonces = \"local\" used nonces \
                     live in one process's memory, so it must run alone; give every instance \
                     acme.nonces = \"shared\"",
                    data_dir.display()
                ),
                NonceStore::Shared => format!(
                    "a Cairn instance with acme.nonces = \"local\" serves {} and must run alone; \
                     give every instance acme.nonces = \"shared\"",
                    data_dir.display()
                ),
            })),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(anyhow::anyhow!("locking {}: {e}", path.display()))
            }
        }
    }

    pub fn issue(&self) -> String {
        let mut buf = [0u8; BODY_LEN + TAG_LEN];
        buf[..8].copy_from_slice(&self.clock.unix().to_be_bytes());
        let tail = match &self.used {
            Used::Store(_) => rand::random(),
            Used::Memory(window) => window.issue().to_be_bytes(),
        };
        buf[8..BODY_LEN].copy_from_slice(&tail);
        let mut mac = self.mac.clone();
        mac.update(&buf[..BODY_LEN]);
        let tag = mac.finalize().into_bytes();
        buf[BODY_LEN..].copy_from_slice(&tag[..TAG_LEN]);
        B64.encode(buf)
    }

    /// Check a nonce: issued by this CA (HMAC), not from the future, not
    /// expired; and spend it if it is remembered in memory.
    pub fn check(&self, nonce: &str) -> Result<Checked, Problem> {
        let raw = B64
            .decode(nonce)
            .map_err(|_| refused("malformed", "not base64url"))?;
        if raw.len() != BODY_LEN + TAG_LEN {
            return Err(refused("malformed", "wrong length"));
        }
        let (body, tag) = raw.split_at(BODY_LEN);
        let mut mac = self.mac.clone();
        mac.update(body);
        mac.verify_truncated_left(tag)
            .map_err(|_| refused("foreign", "not issued by this server"))?;
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&body[..8]);
        let issued = i64::from_be_bytes(ts);
        let now = self.clock.unix();
        if issued > now + SKEW_SECS {
            return Err(refused("future", "issued in the future"));
        }
        let expires = issued + self.lifetime;
        if expires < now {
            return Err(refused("expired", "expired"));
        }
        match &self.used {
            Used::Store(_) => Ok(Checked::ToSpend(body.to_vec(), expires + SKEW_SECS)),
            Used::Memory(window) => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&body[8..]);
                window.spend(u64::from_be_bytes(n))?;
                Ok(Checked::Spent)
            }
        }
    }

    /// Check and spend a nonce (requests without an account).
    pub async fn redeem(&self, nonce: &str) -> Result<(), Problem> {
        if let (Checked::ToSpend(body, expires), Used::Store(store)) =
            (self.check(nonce)?, &self.used)
        {
            if !store.redeem_nonce(&body, expires).await? {
                return Err(used_nonce());
            }
        }
        crate::metrics::nonce("redeemed");
        Ok(())
    }
}

/// How many of the latest nonces a `local` server remembers: a bit each
/// (128 KiB). An older one is refused as expired; at the `newNonce` rate
/// a whole server manages (about 50,000 a second) that is 20 seconds, at
/// any real client's pace hours.
pub const WINDOW: u64 = 1 << 20;

/// The used bits of the latest [`WINDOW`] nonces, by counter: counter `c`
/// is bit `c % WINDOW`, cleared when `c` is issued and set when it is
/// spent. Lock-free: every race ends in a refusal, never a second use.
struct Window {
    next: AtomicU64,
    bits: Box<[AtomicU64]>,
}

impl Window {
    fn new() -> Window {
        Window {
            next: AtomicU64::new(0),
            bits: (0..WINDOW / 64).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn slot(&self, c: u64) -> (&AtomicU64, u64) {
        let i = c % WINDOW;
        (&self.bits[(i / 64) as usize], 1 << (i % 64))
    }

    fn issue(&self) -> u64 {
        let c = self.next.fetch_add(1, SeqCst);
        let (word, bit) = self.slot(c);
        word.fetch_and(!bit, SeqCst);
        c
    }

    fn spend(&self, c: u64) -> Result<(), Problem> {
        let next = self.next.load(SeqCst);
        if c >= next {
            return Err(refused("foreign", "not issued by this server"));
        }
        let too_old = || refused("expired", "too old (more recent nonces were issued)");
        if next - c > WINDOW {
            return Err(too_old());
        }
        let (word, bit) = self.slot(c);
        if word.fetch_or(bit, SeqCst) & bit != 0 {
            return Err(used_nonce());
        }
        // Issued since the first look: `c + WINDOW` now owns the bit.
        if self.next.load(SeqCst) - c > WINDOW {
            return Err(too_old());
        }
        Ok(())
    }
}

/// A refused nonce, counted by why (`cairn_nonces_total{result}`).
fn refused(result: &'static str, why: &str) -> Problem {
    crate::metrics::nonce(result);
    Problem::bad_nonce(format!("JWS has an invalid anti-replay nonce: {why}"))
}

/// A nonce spent before.
pub fn used_nonce() -> Problem {
    refused("used", "already used")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spent(w: &Window, c: u64) -> bool {
        w.spend(c).is_ok()
    }

    #[test]
    fn a_nonce_is_spent_once() {
        let w = Window::new();
        let (a, b) = (w.issue(), w.issue());
        assert!(spent(&w, b));
        assert!(spent(&w, a));
        assert!(!spent(&w, a));
        assert!(!spent(&w, b));
    }

    #[test]
    fn a_counter_never_issued_is_refused() {
        let w = Window::new();
        assert!(!spent(&w, 0));
        w.issue();
        assert!(!spent(&w, 1));
        assert!(!spent(&w, u64::MAX));
    }

    #[test]
    fn a_nonce_older_than_the_window_is_refused_and_its_slot_is_fresh_again() {
        let w = Window::new();
        let old = w.issue();
        assert!(spent(&w, old));
        let kept = w.issue();
        for _ in 2..WINDOW {
            w.issue();
        }
        // `old` is the oldest nonce still in the window: spent already.
        assert!(!spent(&w, old));
        // Its slot passes to `old + WINDOW`, unused although `old` was spent.
        let reuse = w.issue();
        assert_eq!(reuse, old + WINDOW);
        assert!(!spent(&w, old), "out of the window");
        assert!(spent(&w, kept), "the oldest in the window");
        assert!(spent(&w, reuse));
        assert!(!spent(&w, reuse));
    }

    #[test]
    fn racing_spenders_win_once_each() {
        let w = Arc::new(Window::new());
        let issued: Vec<u64> = (0..2000).map(|_| w.issue()).collect();
        let wins: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let (w, issued) = (&w, &issued);
                    s.spawn(move || issued.iter().filter(|&&c| spent(w, c)).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(wins, issued.len());
    }
}
