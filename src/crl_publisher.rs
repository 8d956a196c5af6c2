//! CRL publication: decides what the intermediate's CRL lists and when a
//! new one is due (on a schedule and after each revocation), has `ca::crl`
//! sign it into the database, and serves the newest one over plain HTTP at
//! `/crl/0` (the URL every certificate names in its CRL distribution
//! point).
//!
//! The database is the single source of truth: every instance serves the
//! latest stored row, so instances sharing a database serve the same CRL,
//! and the CRL number is unique there, so two instances racing to publish
//! produce one CRL, not two with the same number.

use crate::ca::Ca;
use crate::clock::Clock;
use crate::config::Config;
use crate::core::{RevocationCounts, RevokedEntry, StoredCrl};
use crate::problem::{Path, Problem};
use crate::sa::{DynStore, Store};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

/// How many times a publication that lost the insert race tries again
/// because the winner's CRL lacked something it must list.
const PUBLISH_ATTEMPTS: usize = 5;
/// The updater looks at the latest CRL at most this far apart, so a CRL
/// past due (or one published by a peer) is noticed within seconds.
const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Sign and store a new CRL listing every revoked, unexpired certificate:
/// number = latest + 1, thisUpdate = `now`, nextUpdate = `now` +
/// `ca.crl_lifetime_secs`.
///
/// When another instance inserts the same number first, its CRL is returned
/// instead, provided it lists every certificate revoked when this call
/// looks again (every one it saw, and any revoked since; it normally does:
/// both read the same table). If it does not (it read the table before a
/// revocation this call must publish), this call signs again with the next
/// number, so a caller that just revoked a certificate gets a CRL that
/// lists it.
pub async fn publish(
    store: &dyn Store,
    ca: &Ca,
    now: i64,
    cfg: &Config,
) -> Result<StoredCrl, Problem> {
    let lifetime = i64::try_from(cfg.ca.crl_lifetime_secs)
        .map_err(|_| Problem::internal("ca.crl_lifetime_secs is too large"))?;
    let next_update = now
        .checked_add(lifetime)
        .ok_or_else(|| Problem::internal("CRL nextUpdate overflows"))?;
    for _ in 0..PUBLISH_ATTEMPTS {
        // The number first, then the entries: a CRL numbered after one we
        // saw was read from the table no earlier than ours.
        let number = match store.latest_crl().await? {
            Some(latest) => latest.number + 1,
            None => 1,
        };
        let entries = store.revoked_certificates(now).await?;
        let revoked = entries.len();
        let counts = RevocationCounts::of(&entries);
        let crl = StoredCrl {
            number,
            this_update: now,
            next_update,
            der: ca.sign_crl(number, now, next_update, entries)?,
            counts: Some(counts),
        };
        if store.insert_crl(&crl).await? {
            tracing::info!(
                number,
                revoked,
                "published CRL {number} ({revoked} entries)"
            );
            return Ok(crl);
        }
        // The winner must list what this call would have: read again (what
        // it read went into its own CRL). A revocation since makes that
        // more, never less, so at worst this signs once more.
        drop(crl);
        if let Some(winner) = store.latest_crl().await? {
            if covers(&winner, &store.revoked_certificates(now).await?) {
                return Ok(winner);
            }
        }
    }
    Err(Problem::internal(format!(
        "could not publish a CRL in {PUBLISH_ATTEMPTS} attempts: other instances kept winning"
    )))
}

/// Whether the stored CRL lists every entry in `entries` with its reason
/// (RFC 5280 §5.3.1: unspecified, 0, is written as no reason at all). It
/// may list more: certificates that have expired since.
fn covers(crl: &StoredCrl, entries: &[RevokedEntry]) -> bool {
    let Ok((_, parsed)) = CertificateRevocationList::from_der(&crl.der) else {
        return false;
    };
    let listed: HashMap<String, i64> = parsed
        .iter_revoked_certificates()
        .map(|r| {
            let reason = r.reason_code().map_or(0, |(_, c)| i64::from(c.0));
            (hex::encode(r.raw_serial()), reason)
        })
        .collect();
    entries
        .iter()
        .all(|e| listed.get(&e.serial) == Some(&e.reason))
}

/// Whether `latest` must be replaced at `now`: it is older than
/// `ca.crl_update_secs`, or (only if the updater stalled) past nextUpdate.
fn due(latest: &StoredCrl, now: i64, cfg: &Config) -> bool {
    let update = i64::try_from(cfg.ca.crl_update_secs).unwrap_or(i64::MAX);
    now.saturating_sub(latest.this_update) >= update || now >= latest.next_update
}

/// Everything publication needs, in one cheap handle: the RA holds it in an
/// `Arc` and calls [`CrlPublisher::publish_now`] after each revocation; the
/// management listener serves [`CrlPublisher::current`].
pub struct CrlPublisher {
    store: DynStore,
    ca: Arc<Ca>,
    clock: Arc<Clock>,
    cfg: Arc<Config>,
    /// One publication at a time per process: concurrent revocations would
    /// otherwise race each other for the same number, and only the database
    /// needs to settle races between instances.
    publishing: tokio::sync::Mutex<()>,
}

impl CrlPublisher {
    pub fn new(
        store: DynStore,
        ca: Arc<Ca>,
        clock: Arc<Clock>,
        cfg: Arc<Config>,
    ) -> Arc<CrlPublisher> {
        Arc::new(CrlPublisher {
            store,
            ca,
            clock,
            cfg,
            publishing: tokio::sync::Mutex::new(()),
        })
    }

    /// Sign and store a new CRL now (after a revocation). The CRL returned
    /// lists every certificate revoked before the call.
    pub async fn publish_now(&self) -> Result<StoredCrl, Problem> {
        let _one_at_a_time = self.publishing.lock().await;
        publish(&*self.store, &self.ca, self.clock.unix(), &self.cfg).await
    }

    /// The CRL to serve: the latest stored one, or a fresh one if there is
    /// none yet or the latest is past its nextUpdate.
    pub async fn current(&self) -> Result<StoredCrl, Problem> {
        let now = self.clock.unix();
        match self.store.latest_crl().await? {
            Some(latest) if now < latest.next_update => Ok(latest),
            _ => self.publish_if_due().await,
        }
    }

    /// Publish unless the latest CRL (perhaps a peer's, perhaps signed while
    /// we waited for the lock) is recent enough and lists every stored
    /// revocation; returns the CRL in force.
    ///
    /// Checking the stored revocations is what makes publication follow
    /// from the database rather than from the request that revoked: a
    /// process that died between a revocation's commit and its CRL (or
    /// whose publication failed) leaves a revocation the newest CRL does not
    /// cover, and the next check, at start or within `MAX_CHECK_INTERVAL`,
    /// publishes it. It costs one read of the newest CRL and one COUNT over
    /// the revoked certificates' index per check (`still_covers`).
    async fn publish_if_due(&self) -> Result<StoredCrl, Problem> {
        let _one_at_a_time = self.publishing.lock().await;
        let now = self.clock.unix();
        if let Some(latest) = self.store.latest_crl().await? {
            if !due(&latest, now, &self.cfg) && self.still_covers(&latest, now).await? {
                return Ok(latest);
            }
        }
        publish(&*self.store, &self.ca, now, &self.cfg).await
    }

    /// Whether `crl` still lists every stored revocation. The certificates
    /// it was signed from are those revoked with not_after after its
    /// thisUpdate; a revocation since would add one or make one
    /// keyCompromise, so equal counts for that set mean nothing changed.
    /// Only a CRL stored without its counts is compared entry by entry.
    async fn still_covers(&self, crl: &StoredCrl, now: i64) -> Result<bool, Problem> {
        Ok(match crl.counts {
            Some(counts) => self.store.revocation_counts(crl.this_update).await? == counts,
            None => covers(crl, &self.store.revoked_certificates(now).await?),
        })
    }

    /// Keep the CRL fresh: at start and every few seconds, publish a new one
    /// if none exists, the latest is older than `ca.crl_update_secs`, or it
    /// misses a stored revocation. Runs until the process ends; failures are
    /// logged and retried on the next tick.
    pub fn spawn_updater(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let publisher = self.clone();
        let every = Duration::from_secs(publisher.cfg.ca.crl_update_secs).min(MAX_CHECK_INTERVAL);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = publisher.publish_if_due().await {
                    tracing::warn!("CRL update failed: {e}");
                }
            }
        })
    }
}

/// `max-age` for a CRL served at `now`: never past nextUpdate and never
/// longer than `ca.crl_update_secs`, so a cache holds a CRL no longer than
/// the schedule would keep it (a revocation publishes sooner; that is the
/// price of caching at all).
fn max_age(crl: &StoredCrl, now: i64, cfg: &Config) -> i64 {
    let update = i64::try_from(cfg.ca.crl_update_secs).unwrap_or(i64::MAX);
    crl.next_update.saturating_sub(now).min(update).max(0)
}

/// `GET`/`HEAD /crl/{n}` for the management listener. Only index 0 exists:
/// one full CRL per issuer.
pub fn router(publisher: Arc<CrlPublisher>) -> Router {
    Router::new()
        .route("/crl/{n}", get(serve_crl))
        .with_state(publisher)
}

async fn serve_crl(
    State(publisher): State<Arc<CrlPublisher>>,
    Path(n): Path<String>,
    headers: HeaderMap,
) -> Response {
    if n != "0" {
        return crate::problem::Problem::not_found("no such CRL").into_response();
    }
    let crl = match publisher.current().await {
        Ok(crl) => crl,
        // Problem::internal already logged it with an id.
        Err(p) => return p.into_response(),
    };
    let now = publisher.clock.unix();
    let etag = format!("\"{}\"", crl.number);
    let mut out = HeaderMap::new();
    let cache = format!("public, max-age={}", max_age(&crl, now, &publisher.cfg));
    for (name, value) in [
        (header::ETAG, Some(etag.clone())),
        (header::CACHE_CONTROL, Some(cache)),
        (header::LAST_MODIFIED, http_date(crl.this_update)),
        (header::EXPIRES, http_date(crl.next_update)),
    ] {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            out.insert(name, v);
        }
    }
    if etag_matches(&headers, &etag) {
        return (StatusCode::NOT_MODIFIED, out).into_response();
    }
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/pkix-crl"),
    );
    (out, crl.der).into_response()
}

/// RFC 9110 §13.1.2: `If-None-Match` is `*` or a list of entity tags,
/// compared weakly (a `W/` prefix does not matter).
fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

/// RFC 9110 §5.6.7 IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(unix: i64) -> Option<String> {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()?
        .format(format)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crl(number: i64, this_update: i64, next_update: i64) -> StoredCrl {
        StoredCrl {
            number,
            this_update,
            next_update,
            der: Vec::new(),
            counts: None,
        }
    }

    fn cfg(update: u64, lifetime: u64) -> Config {
        let src = crate::config::Sources {
            preset: Some("test".into()),
            file: None,
            data_dir: Some(std::env::temp_dir()),
        };
        let mut cfg = Config::load_with_env(&src, |_| None).expect("test preset loads");
        cfg.ca.crl_update_secs = update;
        cfg.ca.crl_lifetime_secs = lifetime;
        cfg
    }

    /// Instances racing to publish (several updaters starting at once) all
    /// succeed, and the database ends up with one CRL per number.
    #[tokio::test]
    async fn racing_publishers_agree_through_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Arc::new(cfg(300, 86400));
        let mut ca_cfg = (*cfg).clone();
        ca_cfg.data_dir = dir.path().to_path_buf();
        let ca = Arc::new(Ca::load_or_create(&ca_cfg).unwrap());
        let url = format!("sqlite://{}", dir.path().join("crl.db").display());
        let store = crate::sa::open(&url, 4).await.unwrap();
        let clock = Arc::new(Clock::system());

        let first = publish(&*store, &ca, clock.unix(), &cfg).await.unwrap();
        assert_eq!(first.number, 1);
        let publishers: Vec<_> = (0..4)
            .map(|_| CrlPublisher::new(store.clone(), ca.clone(), clock.clone(), cfg.clone()))
            .collect();
        let results = futures::future::join_all(publishers.iter().map(|p| p.publish_now())).await;
        let mut numbers: Vec<i64> = results.into_iter().map(|r| r.unwrap().number).collect();
        numbers.sort();
        assert!(numbers.iter().all(|n| *n > 1), "{numbers:?}");
        let latest = store.latest_crl().await.unwrap().unwrap();
        assert_eq!(Some(&latest.number), numbers.last());

        // Fresh enough: serving and the updater's check publish nothing.
        let served = publishers[0].current().await.unwrap();
        assert_eq!(served.number, latest.number);
        let checked = publishers[1].publish_if_due().await.unwrap();
        assert_eq!(checked.number, latest.number);
        // Once the clock passes the update interval, the check publishes.
        clock.advance(300).unwrap();
        let renewed = publishers[1].publish_if_due().await.unwrap();
        assert_eq!(renewed.number, latest.number + 1);
        assert!(renewed.this_update >= latest.this_update + 300);
    }

    #[test]
    fn due_after_update_interval_or_next_update() {
        let cfg = cfg(300, 86400);
        let c = crl(1, 1000, 1000 + 86400);
        assert!(!due(&c, 1000, &cfg));
        assert!(!due(&c, 1299, &cfg));
        assert!(due(&c, 1300, &cfg));
        let short = crl(1, 1000, 1100);
        assert!(due(&short, 1100, &cfg));
    }

    #[test]
    fn max_age_is_bounded_by_schedule_and_next_update() {
        let cfg = cfg(300, 86400);
        assert_eq!(max_age(&crl(1, 1000, 1000 + 86400), 1000, &cfg), 300);
        assert_eq!(max_age(&crl(1, 1000, 1100), 1000, &cfg), 100);
        assert_eq!(max_age(&crl(1, 1000, 1100), 2000, &cfg), 0);
    }

    #[test]
    fn http_dates_are_imf_fixdate() {
        assert_eq!(
            http_date(784111777).as_deref(),
            Some("Sun, 06 Nov 1994 08:49:37 GMT")
        );
    }

    #[test]
    fn if_none_match_forms() {
        let mut h = HeaderMap::new();
        assert!(!etag_matches(&h, "\"3\""));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"2\", W/\"3\""),
        );
        assert!(etag_matches(&h, "\"3\""));
        assert!(!etag_matches(&h, "\"4\""));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(etag_matches(&h, "\"4\""));
    }
}
