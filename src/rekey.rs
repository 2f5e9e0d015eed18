//! The daemon's upkeep of token values at rest: after the active database
//! key changed (`[encryption] active`), re-encrypts the rows under other
//! keys in small steps, and keeps the `linetokd_db_*` metrics current.
//!
//! Each tick seals at most [`REKEY_BATCH`] rows in one short transaction
//! ([`Store::rekey_step`]), so the rotator never waits long for the
//! writer. Ticks wait on the [`Clock`](crate::clock::Clock), never spin:
//! [`BUSY_TICK`] while rows remain, [`IDLE_TICK`] once every row is under
//! the active key (then only the metrics are refreshed).
//!
//! Depends on `store`, `metrics` and `clock`; `app` starts it when the
//! config has `[encryption]`.

use std::sync::Arc;

use chrono::Duration;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::store::{REKEY_BATCH, Store, StoreError};

/// The wait between re-encryption steps while rows remain.
pub const BUSY_TICK: Duration = Duration::seconds(1);
/// The wait between metric refreshes once every row is under the active key.
pub const IDLE_TICK: Duration = Duration::seconds(60);

/// Runs until `shutdown` is cancelled.
pub async fn run(
    store: Store,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut announced = false;
    loop {
        let step = store.blocking(Store::rekey_step).await;
        // Before the logs below, so what they say is what /metrics shows.
        refresh_metrics(&store, &metrics).await;
        let tick = match step {
            Ok(progress) => {
                if progress.rekeyed > 0 && !announced {
                    tracing::info!(
                        remaining = progress.remaining + progress.rekeyed,
                        batch = REKEY_BATCH,
                        "re-encrypting stored token values under the active database key"
                    );
                    announced = true;
                }
                if progress.remaining == 0 && announced {
                    tracing::info!(
                        "every stored token value is encrypted under the active database key; \
                         keys no longer shown by `linetokd status` can be removed"
                    );
                    announced = false;
                }
                if progress.remaining > 0 {
                    BUSY_TICK
                } else {
                    IDLE_TICK
                }
            }
            Err(e) => {
                tracing::error!(error = %crate::logging::error_chain(&e), "re-encrypting token values failed");
                IDLE_TICK
            }
        };
        let wake = clock.now() + tick;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = clock.sleep_until(wake) => {}
        }
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
