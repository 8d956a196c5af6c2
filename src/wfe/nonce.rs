//! Nonces (RFC 8555 §6.5). A nonce is an authenticated token, not a row:
//! 8 bytes of issue time and 8 random bytes, followed by a 16-byte HMAC tag
//! under a key every instance shares (kept in the database). Issuing one
//! costs no I/O, so `newNonce` is the cheapest endpoint; redeeming one
//! checks the tag and the age without I/O, then records it as used with one
//! insert that fails on a second use, so a nonce is good exactly once at
//! every instance and across restarts. Expired nonces are refused without a
//! lookup, which keeps the used set no larger than one lifetime of traffic.

use crate::clock::Clock;
use crate::problem::Problem;
use crate::sa::DynStore;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
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
    store: DynStore,
}

impl Nonces {
    pub async fn new(
        store: DynStore,
        clock: Arc<Clock>,
        lifetime_secs: u64,
    ) -> anyhow::Result<Nonces> {
        let fresh: [u8; 32] = rand::random();
        let key = store.secret("nonce-hmac-key", &fresh).await?;
        let mac =
            HmacSha256::new_from_slice(&key).map_err(|e| anyhow::anyhow!("nonce key: {e}"))?;
        Ok(Nonces {
            mac,
            lifetime: lifetime_secs as i64,
            clock,
            store,
        })
    }

    pub fn issue(&self) -> String {
        let mut buf = [0u8; BODY_LEN + TAG_LEN];
        buf[..8].copy_from_slice(&self.clock.unix().to_be_bytes());
        let random: [u8; 8] = rand::random();
        buf[8..BODY_LEN].copy_from_slice(&random);
        let mut mac = self.mac.clone();
        mac.update(&buf[..BODY_LEN]);
        let tag = mac.finalize().into_bytes();
        buf[BODY_LEN..].copy_from_slice(&tag[..TAG_LEN]);
        B64.encode(buf)
    }

    /// Check a nonce without spending it: issued by this CA (HMAC), not
    /// from the future, not expired. Returns what to spend (the body) and
    /// until when it must be remembered as used.
    pub fn check(&self, nonce: &str) -> Result<(Vec<u8>, i64), Problem> {
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
        Ok((body.to_vec(), expires + SKEW_SECS))
    }

    /// Check and spend a nonce (requests without an account).
    pub async fn redeem(&self, nonce: &str) -> Result<(), Problem> {
        let (body, expires) = self.check(nonce)?;
        if !self.store.redeem_nonce(&body, expires).await? {
            return Err(used_nonce());
        }
        crate::metrics::nonce("redeemed");
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
