//! The daemon's upkeep of token values at rest: after the active database
//! key changed (`[encryption] active`), re-encrypts the rows under other
//! keys in small steps, and keeps the `linetokd_db_*` metrics current.
//!
//! Each tick seals at most [`REKEY_BATCH`] rows in one short transaction
//! ([`Store::rekey_step`]), so the rotator never waits long for the
//! writer. Ticks wait on the [`Clock`](crate::clock::Clock), never spin,
//! [`BUSY_TICK`] apart while rows remain. Afterwards the task wakes only
//! for the rotator's events, to count the values again for the metrics:
//! no timer runs between due times.
//!
//! Depends on `store`, `metrics`, `clock` and `event`; `app` starts it
//! when the config has `[encryption]`.

use std::sync::Arc;

use chrono::Duration;
use tokio_util::sync::CancellationToken;

use tokio::sync::broadcast;

use crate::clock::SharedClock;
use crate::event::RotationEvent;
use crate::metrics::Metrics;
use crate::store::{REKEY_BATCH, Store, StoreError};

/// The wait between re-encryption steps while rows remain.
pub const BUSY_TICK: Duration = Duration::seconds(1);

/// The longest wait between attempts after re-encryption failed.
const MAX_ERROR_WAIT: Duration = Duration::hours(1);

/// How long the metric refresh waits after a token event for more of them
/// (real time: it only bounds the counting work, decides nothing).
const REFRESH_GAP: std::time::Duration = std::time::Duration::from_secs(1);

/// Re-encrypts what is under other keys, a step per [`BUSY_TICK`] of the
/// clock, then keeps the metrics current: a refresh after the token events
/// of each second, and no wake-up without one. Runs until `shutdown` is
/// cancelled. The active key changes only with a restart, so once every
/// row is under it the re-encryption is done for this run.
pub async fn run(
    store: Store,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    mut events: broadcast::Receiver<RotationEvent>,
    shutdown: CancellationToken,
) {
    let mut announced = false;
    let mut wait = BUSY_TICK;
    loop {
        let step = store.blocking(Store::rekey_step).await;
        // Before the logs below, so what they say is what /metrics shows.
        refresh_metrics(&store, &metrics).await;
        match step {
            Ok(progress) => {
                wait = BUSY_TICK;
                if progress.rekeyed > 0 && !announced {
                    tracing::info!(
                        remaining = progress.remaining + progress.rekeyed,
                        batch = REKEY_BATCH,
                        "re-encrypting stored token values under the active database key"
                    );
                    announced = true;
                }
                if progress.remaining == 0 {
                    if announced {
                        tracing::info!(
                            "every stored token value is encrypted under the active database \
                             key; keys no longer shown by `linetokd status` can be removed"
                        );
                    }
                    break;
                }
            }
            Err(e) => {
                // A worn-out or missing key does not mend itself: back off
                // rather than log the same error every second.
                wait = (wait * 2).min(MAX_ERROR_WAIT);
                tracing::error!(error = %crate::logging::error_chain(&e), retry_in_s = wait.num_seconds(), "re-encrypting token values failed; trying again");
            }
        }
        let wake = clock.now() + wait;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = clock.sleep_until(wake) => {}
        }
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            event = events.recv() => {
                if matches!(event, Err(broadcast::error::RecvError::Closed)) {
                    return;
                }
            }
        }
        // Take in what else happens meanwhile: one count for a burst.
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(REFRESH_GAP) => {}
        }
        events = events.resubscribe();
        refresh_metrics(&store, &metrics).await;
    }
}

/// Sets the `linetokd_db_*` metrics from the store; a failed read leaves
/// them as they were (and is logged).
pub async fn refresh_metrics(store: &Store, metrics: &Metrics) {
    let read = store
        .blocking(|s| Ok((s.value_counts()?, s.seal_counts()?, s.decrypt_failures())))
        .await;
    match read {
        Ok((rows, sealed, failures)) => {
            let rows: Vec<(Option<u32>, u64)> = rows.iter().map(|c| (c.key, c.rows)).collect();
            metrics.set_db_values(&rows, &sealed, failures);
        }
        Err(e) => log_read_failure(&e),
    }
}

fn log_read_failure(e: &StoreError) {
    tracing::warn!(error = %crate::logging::error_chain(e), "cannot count stored token values for the metrics");
}
