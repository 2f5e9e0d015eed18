//! `linetokd status` and `linetokd plan`: what the daemon knows and what it
//! will do, read from the store while the daemon runs.
//!
//! The store is opened read-only (WAL lets it be read beside the writer);
//! nothing here writes it or takes its writer lock. Whether a daemon runs
//! is told by [`probe_daemon`] from the kernel's lock table, without
//! touching the lock (see there).
//!
//! Both commands see the world the same way ([`read_store`], then
//! `worlds`): each channel's store snapshot, built exactly as the rotator
//! builds its views ([`crate::snapshot`]), with the config file
//! applied on top the way the daemon applies it at start: configured groups
//! the store does not know yet start fresh, stored groups the config no
//! longer lists count as removed now. `status` drives every channel once at
//! `now` ([`crate::policy::drive`], the daemon's own driver) for each
//! group's next rotation, hold and alerts; `plan` runs the policy forward
//! ([`crate::forecast`]).
//!
//! Output: a compact human table, or (`--json`) the serde structs below,
//! whose field docs are the documentation of the JSON shape. Times are
//! RFC 3339 in UTC; every `*_in_secs`/`*_ago_secs` number is relative to
//! `generated_at`. Token values are never read into any report: only key
//! IDs, times and the store's screened error texts are.
//!
//! Depends on `store`, `snapshot` (shared view building),
//! `policy`, `forecast` and `domain`. Reads no config file and no clock:
//! `cli` passes the configured channels ([`ConfiguredChannel`]), the rules
//! and `now`.
//!
//! The parts: `stored` (reading the store), `world` (store and config
//! together), `daemon` (is a daemon running?), `report` and `render`
//! (`status`), `login` (LINE Login grant counts in `status`), `plan`
//! (`plan`).

mod daemon;
mod login;
mod plan;
mod render;
mod report;
mod stored;
mod world;

pub use daemon::{DaemonStatus, probe_daemon, probe_daemon_at};
pub use login::{LoginChannelStatus, LoginStatus, login_status};
pub use plan::{PlanCounts, PlanFormat, PlanRequest, PlannedStatus, write_plan};
pub use render::render_status;
pub use report::*;
pub use stored::{ConfiguredChannel, StoredState, read_store};

use chrono::Duration;

use self::render::{count, ts};
use self::report::severity_name;
use self::stored::StoredChannel;
use self::world::{ChannelWorld, GroupWorld, worlds};

/// The version of the JSON shapes of both reports; bumped only when a field
/// changes meaning or disappears (new fields may appear without a bump).
/// Version 2: `plan`'s `counts.verify` and `counts.reconcile` are `null`
/// unless `--all` (the routine reads are then not simulated). Within it,
/// `status`'s `daemon.lock_file` is `null` on PostgreSQL (a new kind of
/// store; on SQLite nothing changed).
pub const JSON_VERSION: u32 = 2;

/// `f` over `items`, on as many scoped threads as there are cores (at most
/// [`MAX_THREADS`]), the results in the items' order. A report's channels
/// are independent; at 100,000 groups building and printing them is a
/// third of `status`'s time. Few items stay on this thread.
fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(MAX_THREADS);
    if threads < 2 || items.len() < PARALLEL_FROM {
        return items.iter().map(f).collect();
    }
    let f = &f;
    std::thread::scope(|scope| {
        let parts: Vec<_> = items
            .chunks(items.len().div_ceil(threads))
            .map(|chunk| scope.spawn(move || chunk.iter().map(f).collect::<Vec<R>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|part| part.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// The most threads [`in_parallel`] uses.
const MAX_THREADS: usize = 4;

/// Below this many items [`in_parallel`] does not start threads.
const PARALLEL_FROM: usize = 256;

/// How far back `status` lists lost and failed issuances.
pub const RECENT_INTENTS: Duration = Duration::days(7);
