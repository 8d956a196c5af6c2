//! The RA's background work: returning the reservations of orders that
//! will never issue, and taking over validations whose runner died.

use super::Ra;
use crate::core::lifecycle;
use std::sync::Arc;
use std::time::Duration;

impl Ra {
    /// Return the reservations of orders that will never issue (failed,
    /// expired or abandoned in processing), every couple of seconds, so a
    /// failed order gives its certificate tokens back promptly.
    pub fn spawn_reservation_sweeper(self: &Arc<Self>) {
        let ra = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                let now = ra.clock.unix();
                match ra
                    .store
                    .dead_reservations(now, now - lifecycle::STALE_PROCESSING_SECS, 500)
                    .await
                {
                    Ok(ids) => {
                        for id in ids {
                            ra.release_reservation(id).await;
                        }
                    }
                    Err(e) => tracing::warn!("finding orders to refund: {e}"),
                }
            }
        });
    }

    /// Take over validations left in processing: at start every one (a
    /// restart interrupted them; a duplicate run elsewhere is harmless, the
    /// first result recorded wins), then periodically those whose lease ran
    /// out, so an instance that died never leaves a challenge processing.
    pub fn spawn_validation_sweeper(self: &Arc<Self>) {
        let ra = self.clone();
        tokio::spawn(async move {
            let lease = ra.validation_lease_secs();
            let mut stale_before = ra.clock.unix() + 1;
            let mut tick = tokio::time::interval(Duration::from_secs((lease as u64 / 2).max(1)));
            loop {
                tick.tick().await;
                match ra
                    .store
                    .claim_stale_challenges(stale_before, ra.clock.unix())
                    .await
                {
                    Ok(ids) => {
                        for id in ids {
                            tracing::info!(
                                challenge = id.0,
                                "taking over an interrupted validation"
                            );
                            ra.spawn_validation(id, None);
                        }
                    }
                    Err(e) => tracing::warn!("claiming interrupted validations: {e}"),
                }
                stale_before = ra.clock.unix() - lease;
            }
        });
    }
}
