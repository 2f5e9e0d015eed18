//! What every accept loop of the daemon shares (the HTTP listener, the
//! control socket): waiting out a failed `accept` with backoff
//! instead of spinning, and one log line per streak of failures instead of
//! one per failure.
//!
//! At the descriptor limit `accept` fails at once with EMFILE, every time,
//! without blocking: a loop that only logs and tries again spins a core and
//! fills the disk (issue 9's reliability run: 23 million log lines in 57 s).
//! [`AcceptBackoff`] waits [`AcceptBackoff::FIRST`] after the first failure,
//! doubling up to [`AcceptBackoff::MAX`], and starts over once a connection
//! is accepted. A failure that concerns only the connection being accepted
//! (its peer gave up while it waited in the backlog) is no reason to wait.
//!
//! Depends on tokio's timer and tokio-util's cancellation only.

use std::io;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The backoff state of one accept loop.
#[derive(Debug)]
pub struct AcceptBackoff {
    /// Which listener, for the log.
    what: &'static str,
    /// Failures since the last accepted connection.
    streak: u64,
    /// The pause after the next failure.
    next: Duration,
}

impl AcceptBackoff {
    /// The pause after the first failure of a streak: short, because a
    /// descriptor is often freed within milliseconds.
    pub const FIRST: Duration = Duration::from_millis(10);
    /// The longest pause: a freed descriptor is noticed within a second,
    /// and a loop that keeps failing costs one syscall per second.
    pub const MAX: Duration = Duration::from_secs(1);

    /// A fresh state for the listener named `what` in the log.
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            streak: 0,
            next: Self::FIRST,
        }
    }

    /// Accepts the next connection with `accept`, waiting out failures;
    /// `None` once `shutdown` fires (also in the middle of a pause).
    pub async fn accept<T, F, Fut>(
        &mut self,
        mut accept: F,
        shutdown: &CancellationToken,
    ) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = io::Result<T>>,
    {
        loop {
            let result = tokio::select! {
                () = shutdown.cancelled() => return None,
                result = accept() => result,
            };
            match result {
                Ok(connection) => {
                    self.succeeded();
                    return Some(connection);
                }
                Err(e) if concerns_one_connection(&e) => {
                    tracing::debug!(listener = self.what, error = %e, "a connection went away before it was accepted");
                }
                Err(e) => {
                    let pause = self.failed(&e);
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }

    /// Counts a failure and says how long to pause; logs the first of a
    /// streak only.
    fn failed(&mut self, error: &io::Error) -> Duration {
        if self.streak == 0 {
            tracing::warn!(
                listener = self.what,
                error = %error,
                "accepting connections fails; trying again with backoff (at most {} s apart) and \
                 logging once more when it works again. Out of file descriptors? See LimitNOFILE",
                Self::MAX.as_secs()
            );
        }
        self.streak = self.streak.saturating_add(1);
        let pause = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        pause
    }

    /// Ends a streak of failures, if there was one.
    fn succeeded(&mut self) {
        if self.streak > 0 {
            tracing::info!(
                listener = self.what,
                failures = self.streak,
                "accepting connections works again"
            );
        }
        self.streak = 0;
        self.next = Self::FIRST;
    }
}

/// Errors that belong to one connection in the backlog, not to the
/// listener: the next accept can go ahead at once.
fn concerns_one_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use tokio::time::Instant;

    use super::*;

    /// Log output captured for one test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn count(&self, needle: &str) -> usize {
            String::from_utf8_lossy(&self.0.lock().unwrap())
                .lines()
                .filter(|l| l.contains(needle))
                .count()
        }
    }

    fn emfile() -> io::Result<u32> {
        // What accept(2) answers at the descriptor limit.
        Err(io::Error::from_raw_os_error(24))
    }

    fn aborted() -> io::Result<u32> {
        Err(io::ErrorKind::ConnectionAborted.into())
    }

    #[tokio::test(start_paused = true)]
    async fn emfile_backs_off_doubling_to_a_second_and_logs_once_per_streak() {
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        // Another test running in parallel may have evaluated these
        // callsites while no subscriber wanted them, and tracing caches
        // that "never": recompute with this thread's subscriber counted.
        tracing::callsite::rebuild_interest_cache();

        let mut script: VecDeque<io::Result<u32>> = VecDeque::new();
        script.extend((0..10).map(|_| emfile()));
        script.push_back(Ok(1));
        // A reset connection in between: no pause, no streak.
        script.push_back(aborted());
        script.push_back(Ok(2));
        script.extend((0..3).map(|_| emfile()));
        script.push_back(aborted());
        script.push_back(Ok(3));
        let mut backoff = AcceptBackoff::new("test");
        let shutdown = CancellationToken::new();
        let mut next = || {
            let result = script.pop_front().expect("the script ran out");
            async move { result }
        };

        let start = Instant::now();
        assert_eq!(backoff.accept(&mut next, &shutdown).await, Some(1));
        // 10, 20, 40, ... 640 ms, then capped at 1 s three times.
        assert_eq!(start.elapsed(), Duration::from_millis(4270));

        let start = Instant::now();
        assert_eq!(backoff.accept(&mut next, &shutdown).await, Some(2));
        assert_eq!(start.elapsed(), Duration::ZERO);

        // A new streak starts again at 10 ms.
        let start = Instant::now();
        assert_eq!(backoff.accept(&mut next, &shutdown).await, Some(3));
        assert_eq!(start.elapsed(), Duration::from_millis(70));

        assert_eq!(logs.count("accepting connections fails"), 2);
        assert_eq!(logs.count("accepting connections works again"), 2);
        assert_eq!(logs.count("failures=10"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_wait_and_the_pause() {
        let shutdown = CancellationToken::new();
        let mut backoff = AcceptBackoff::new("test");
        // Failing for ever: the pauses grow to a second, and shutdown still
        // ends the loop at once.
        let cancel = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            cancel.cancel();
        });
        let start = Instant::now();
        let got = backoff.accept(|| async { emfile() }, &shutdown).await;
        assert_eq!(got, None);
        assert_eq!(start.elapsed(), Duration::from_millis(2500));

        let mut backoff = AcceptBackoff::new("test");
        let got = backoff
            .accept(std::future::pending::<io::Result<u32>>, &shutdown)
            .await;
        assert_eq!(got, None);
    }
}
