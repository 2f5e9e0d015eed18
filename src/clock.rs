//! Where "now" comes from, and how to wait for a wall-clock instant.
//!
//! Token expiry is wall-clock time, so everything that compares against an
//! expiry asks a [`Clock`] instead of calling `Utc::now()`. Production wires
//! in [`SystemClock`]; tests, the simulation and the sandbox use
//! [`ManualClock`], whose clones share one time, so the daemon and the
//! sandbox can run months of virtual time in lockstep.
//!
//! Waiting goes through the clock too ([`Clock::sleep_until`]): with a
//! manual clock a sleeper wakes exactly when a test moves the time past its
//! deadline, and a test can ask when the next sleeper is due
//! ([`ManualClock::next_deadline`]) instead of sleeping itself.
//!
//! Only `app` (and `main`) choose the clock; lower modules receive one.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Duration, Utc};
use tokio::sync::{Notify, watch};

/// A boxed future returned by [`Clock::sleep_until`].
pub type Sleep<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// A source of the current wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;

    /// Resolves at or after `deadline` on this clock, possibly earlier for a
    /// [`SystemClock`] (see there); callers re-read [`Clock::now`] after
    /// waking and decide again.
    fn sleep_until(&self, deadline: DateTime<Utc>) -> Sleep<'_>;
}

/// Milliseconds on the machine's suspend-counting monotonic clock
/// (`CLOCK_BOOTTIME`): it never steps and, unlike `CLOCK_MONOTONIC` (std's
/// and tokio's `Instant`), keeps counting while the machine is suspended.
/// A lease holder measures what is left of its grant on it
/// (docs/design.md §14.2): a resumed machine must see its grant as over.
pub fn boot_millis() -> i64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    t.tv_sec
        .saturating_mul(1000)
        .saturating_add(t.tv_nsec / 1_000_000)
}

/// A clock shared between tasks.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

/// The longest single sleep on the system clock. tokio sleeps on the
/// monotonic clock, which stops while a machine is suspended and ignores
/// wall-clock steps; waking at least this often bounds how late a rotation
/// can be noticed after a resume or an NTP step.
pub const MAX_SYSTEM_SLEEP: Duration = Duration::minutes(5);

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> Sleep<'_> {
        let wait = (deadline - Utc::now()).clamp(Duration::zero(), MAX_SYSTEM_SLEEP);
        let wait = wait.to_std().unwrap_or_default();
        Box::pin(tokio::time::sleep(wait))
    }
}

/// Another clock moved by an offset that is set while it runs. Under
/// `[ha]` the engine's time is the shared database's: the lease keeper
/// measures how far the database's clock is from this host's after each
/// reading ([`ShiftedClock::observe`]), so every instance stamps issue
/// times and expiries, and judges them, on one clock, and a host clock set
/// minutes wrong changes nothing.
pub struct ShiftedClock {
    inner: SharedClock,
    offset_ms: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for ShiftedClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShiftedClock")
            .field("offset", &self.offset())
            .finish_non_exhaustive()
    }
}

impl ShiftedClock {
    /// `inner`, not shifted yet.
    pub fn new(inner: SharedClock) -> Arc<Self> {
        Arc::new(Self {
            inner,
            offset_ms: std::sync::atomic::AtomicI64::new(0),
        })
    }

    /// The unshifted clock's reading.
    pub fn inner_now(&self) -> DateTime<Utc> {
        self.inner.now()
    }

    /// How far this clock is moved from the inner one.
    pub fn offset(&self) -> Duration {
        Duration::milliseconds(self.offset_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Takes in a reading of the reference clock: it said `reference`
    /// while the inner clock went from `sent` to `received`. The offset
    /// becomes `reference − midpoint`, wrong by at most half the round
    /// trip.
    pub fn observe(&self, reference: DateTime<Utc>, sent: DateTime<Utc>, received: DateTime<Utc>) {
        let midpoint = sent + (received - sent) / 2;
        let offset = (reference - midpoint).num_milliseconds();
        self.offset_ms
            .store(offset, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Clock for ShiftedClock {
    fn now(&self) -> DateTime<Utc> {
        self.inner.now() + self.offset()
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> Sleep<'_> {
        // Callers read `now` again after waking: an offset that moved
        // meanwhile costs one early or late wake-up, nothing more.
        self.inner.sleep_until(deadline - self.offset())
    }
}

/// A clock that only moves when told to. Clones share the same time and
/// the same set of sleepers.
#[derive(Debug, Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

#[derive(Debug)]
struct ManualInner {
    now: watch::Sender<DateTime<Utc>>,
    /// Deadlines of the sleepers currently waiting, by sleeper id.
    sleepers: Mutex<Sleepers>,
    /// Signalled whenever a sleeper starts waiting.
    sleeper_added: Notify,
}

#[derive(Debug, Default)]
struct Sleepers {
    next_id: u64,
    deadlines: BTreeMap<u64, DateTime<Utc>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            inner: Arc::new(ManualInner {
                now: watch::Sender::new(start),
                sleepers: Mutex::new(Sleepers::default()),
                sleeper_added: Notify::new(),
            }),
        }
    }

    /// Moves the clock forward (or backward, for a negative `by`).
    pub fn advance(&self, by: Duration) {
        self.inner.now.send_modify(|now| *now += by);
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: DateTime<Utc>) {
        self.inner.now.send_replace(to);
    }

    /// How many tasks are waiting in [`Clock::sleep_until`].
    pub fn sleepers(&self) -> usize {
        self.lock().deadlines.len()
    }

    /// Waits until at least one task sleeps on this clock and returns the
    /// earliest deadline among the sleepers. A simulation calls this to
    /// learn how far it may move the time.
    pub async fn next_deadline(&self) -> DateTime<Utc> {
        loop {
            let added = self.inner.sleeper_added.notified();
            if let Some(earliest) = self.lock().deadlines.values().min().copied() {
                return earliest;
            }
            added.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sleepers> {
        self.inner
            .sleepers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Removes a sleeper's deadline when its future completes or is dropped.
struct SleeperGuard<'a> {
    clock: &'a ManualClock,
    id: u64,
}

impl Drop for SleeperGuard<'_> {
    fn drop(&mut self) {
        self.clock.lock().deadlines.remove(&self.id);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.inner.now.borrow()
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> Sleep<'_> {
        Box::pin(async move {
            let mut rx = self.inner.now.subscribe();
            if *rx.borrow_and_update() >= deadline {
                return;
            }
            let id = {
                let mut sleepers = self.lock();
                let id = sleepers.next_id;
                sleepers.next_id += 1;
                sleepers.deadlines.insert(id, deadline);
                id
            };
            let _guard = SleeperGuard { clock: self, id };
            self.inner.sleeper_added.notify_waiters();
            // The sender lives as long as `self`, so this cannot fail while
            // we hold `&self`.
            let _ = rx.wait_for(|now| *now >= deadline).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn clones_of_a_manual_clock_share_one_time() {
        let a = ManualClock::new(at(1_700_000_000));
        let b = a.clone();
        a.advance(Duration::hours(3));
        assert_eq!(b.now(), at(1_700_000_000) + Duration::hours(3));
        b.set(at(1_700_000_000));
        assert_eq!(a.now(), at(1_700_000_000));
    }

    #[tokio::test]
    async fn a_sleeper_wakes_when_the_clock_passes_its_deadline() {
        let clock = ManualClock::new(at(0));
        let sleeper = {
            let clock = clock.clone();
            tokio::spawn(async move {
                clock.sleep_until(at(100)).await;
                clock.now()
            })
        };
        assert_eq!(clock.next_deadline().await, at(100));
        clock.set(at(50));
        assert_eq!(clock.sleepers(), 1);
        clock.set(at(100));
        assert_eq!(sleeper.await.unwrap(), at(100));
        assert_eq!(clock.sleepers(), 0);
    }

    #[tokio::test]
    async fn sleeping_until_the_past_returns_at_once() {
        let clock = ManualClock::new(at(10));
        clock.sleep_until(at(5)).await;
        assert_eq!(clock.sleepers(), 0);
    }
}
