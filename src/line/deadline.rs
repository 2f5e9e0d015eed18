//! The whole-request deadline of a LINE call, and what it does when the
//! process could not run as the deadline passed.
//!
//! A deadline timer that fires long after its instant means this process
//! was stopped (SIGSTOP, a frozen VM or container) or starved, not that
//! LINE was slow: LINE's answer may be sitting in the socket, read by
//! nobody. Giving up then is the worst outcome on an issue call: LINE
//! issued a token whose value this process drops unread, so nobody can
//! revoke it, and it stays live at LINE for its lifetime (under `[ha]`, a
//! leader paused past its lease would leave its successor a lost token
//! instead of an orphan it revokes itself). So a late deadline grants a
//! short grace, counted from when the process runs again, to read what
//! has arrived. A deadline met on time is final.
//!
//! reqwest's own timeout cannot do this: it checks its timer before the
//! response, so a request resumed after a pause fails even when the
//! answer is there.
//!
//! Depends on tokio only.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How late a deadline's timer may fire and still count as on time: a
/// busy machine delays timers by milliseconds, a pause by far more.
pub const LATE: Duration = Duration::from_secs(1);

/// How long a request whose deadline passed while the process could not
/// run gets to finish once it runs again: enough to read an answer that
/// is already in the socket, too short to wait for one that is not.
pub const GRACE: Duration = Duration::from_secs(2);

/// `fut`'s output if it finishes within `timeout`, or within [`GRACE`] after
/// a deadline that fired more than [`LATE`] after its instant; `None` when
/// it did not.
pub async fn within<F: Future>(timeout: Duration, fut: F) -> Option<F::Output> {
    within_with(timeout, LATE, GRACE, fut).await
}

/// [`within`] with its thresholds as arguments, for tests.
pub async fn within_with<F: Future>(
    timeout: Duration,
    late: Duration,
    grace: Duration,
    fut: F,
) -> Option<F::Output> {
    let deadline = Instant::now() + timeout;
    let mut fut = std::pin::pin!(fut);
    if let Ok(output) = tokio::time::timeout_at(deadline, fut.as_mut()).await {
        return Some(output);
    }
    let lateness = Instant::now().saturating_duration_since(deadline);
    if lateness <= late {
        return None;
    }
    tracing::debug!(
        late_ms = u64::try_from(lateness.as_millis()).unwrap_or(u64::MAX),
        "a LINE request's deadline passed while linetokd could not run: reading what arrived"
    );
    tokio::time::timeout(grace, fut).await.ok()
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_request_that_never_answers_ends_at_its_deadline() {
        let started = Instant::now();
        let outcome = within(Duration::from_secs(3), std::future::pending::<()>()).await;
        assert_eq!(outcome, None);
        // On time: no grace is added.
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_within_the_timeout_is_returned() {
        let answer = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            "answer"
        };
        assert_eq!(within(Duration::from_secs(3), answer).await, Some("answer"));
    }

    /// The process "pauses" (its only runtime thread blocks) across the
    /// deadline while the answer arrives from another thread: resumed, the
    /// timer and the answer are both ready, and the answer wins.
    #[tokio::test(flavor = "current_thread")]
    async fn an_answer_that_arrived_while_the_process_was_paused_is_read() {
        let timeout = Duration::from_millis(50);
        let late = Duration::from_millis(100);
        let (answer_tx, answer_rx) = tokio::sync::oneshot::channel();
        let (sent_tx, sent_rx) = mpsc::channel();
        let request = async move {
            // The request goes out; the pause begins once it waits.
            tokio::task::yield_now().await;
            answer_rx.await.expect("the answer is sent")
        };
        let pause = async move {
            tokio::task::yield_now().await;
            let blocked_from = std::time::Instant::now();
            std::thread::spawn(move || {
                answer_tx.send("answer").expect("the request waits");
                sent_tx.send(()).expect("the pause waits");
            });
            // Blocks the runtime's one thread, as SIGSTOP would, until the
            // answer is there and the deadline is long past.
            sent_rx.recv().expect("the answer was sent");
            let until = blocked_from + timeout + late * 3;
            std::thread::sleep(until.saturating_duration_since(std::time::Instant::now()));
        };
        let (outcome, ()) = tokio::join!(
            within_with(timeout, late, Duration::from_secs(60), request),
            pause
        );
        assert_eq!(outcome, Some("answer"));
    }

    /// Late, but nothing arrived: the grace ends it.
    #[tokio::test(start_paused = true)]
    async fn a_late_deadline_without_an_answer_ends_after_the_grace() {
        let timeout = Duration::from_secs(1);
        let request = std::future::pending::<()>();
        let pause = async {
            tokio::task::yield_now().await;
            // Paused time jumps; the deadline's timer fires 5 s late.
            tokio::time::advance(Duration::from_secs(6)).await;
        };
        let started = Instant::now();
        let (outcome, ()) = tokio::join!(
            within_with(
                timeout,
                Duration::from_secs(1),
                Duration::from_secs(2),
                request
            ),
            pause
        );
        assert_eq!(outcome, None);
        assert_eq!(started.elapsed(), Duration::from_secs(8));
    }
}
