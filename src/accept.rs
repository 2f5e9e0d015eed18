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
    /// Streaks logged as started and as over, and the length of the last
    /// one that ended: what the log said, kept so a test can check it
    /// without capturing log output (tracing's per-callsite cache makes
    /// captured logs unreliable under parallel tests).
    logged: Logged,
}

/// What [`AcceptBackoff`] has logged so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Logged {
    /// Streaks whose start was logged.
    pub started: u64,
    /// Streaks whose end was logged.
    pub ended: u64,
    /// Failures in the last streak that ended.
    pub last_failures: u64,
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
            logged: Logged::default(),
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
            self.logged.started += 1;
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

    /// What has been logged so far.
    pub fn logged(&self) -> Logged {
        self.logged
    }

    /// Ends a streak of failures, if there was one.
    fn succeeded(&mut self) {
        if self.streak > 0 {
            self.logged.ended += 1;
            self.logged.last_failures = self.streak;
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

    use tokio::time::Instant;

    use super::*;

    fn emfile() -> io::Result<u32> {
        // What accept(2) answers at the descriptor limit.
        Err(io::Error::from_raw_os_error(24))
    }

    fn aborted() -> io::Result<u32> {
        Err(io::ErrorKind::ConnectionAborted.into())
    }

    #[tokio::test(start_paused = true)]
    async fn emfile_backs_off_doubling_to_a_second_and_logs_once_per_streak() {
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
        assert_eq!(
            backoff.logged(),
            Logged {
                started: 1,
                ended: 1,
                last_failures: 10
            }
        );

        let start = Instant::now();
        assert_eq!(backoff.accept(&mut next, &shutdown).await, Some(2));
        assert_eq!(start.elapsed(), Duration::ZERO);

        // A new streak starts again at 10 ms.
        let start = Instant::now();
        assert_eq!(backoff.accept(&mut next, &shutdown).await, Some(3));
        assert_eq!(start.elapsed(), Duration::from_millis(70));

        // One line when a streak starts and one when it ends, never one
        // per failure: two streaks, the first of 10 failures (the reset
        // connection in between is no failure).
        let logged = backoff.logged();
        assert_eq!((logged.started, logged.ended), (2, 2));
        assert_eq!(logged.last_failures, 3);
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
