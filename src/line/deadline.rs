//! The whole-request deadline of a LINE call, and what it does when the
//! process could not run as the deadline passed.
//!
//! A deadline timer that fires long after its instant means this process
//! was stopped (SIGSTOP, a frozen cgroup such as `docker pause`) or
//! starved, not that LINE was slow: LINE's answer may be sitting in the
//! socket, read by nobody. Giving up then is the worst outcome on an issue
//! call: LINE issued a token whose value this process drops unread, so
//! nobody can revoke it, and it stays live at LINE for its lifetime (under
//! `[ha]`, a leader paused past its lease would leave its successor a lost
//! token instead of an orphan it revokes itself). So a late deadline
//! grants a short grace, counted from when the process runs again, to read
//! what has arrived. A deadline met on time still gets one turn of the
//! runtime's IO ([`SETTLE`]), for an answer that arrived as a short pause
//! ended.
//!
//! The cost: a request whose bytes had not left when the process stopped
//! may go out in that grace, after the caller's lease ended. That is the
//! case of a leader paused between its lease check and its call, which
//! the design already covers (docs/design.md §14.3: its issue is held
//! against by the takeover, its token fenced and revoked as an orphan).
//! A suspended machine is not "late": `CLOCK_MONOTONIC`, which tokio's
//! timers use, stops during suspend.
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
/// busy machine delays timers by milliseconds, a pause by far more (a
/// pause that ends just after the deadline is late by little, so this
/// is small).
pub const LATE: Duration = Duration::from_millis(100);

/// How long a request whose deadline passed while the process could not
/// run gets to finish once it runs again: enough to read an answer that
/// is already in the socket, too short to wait for one that is not.
pub const GRACE: Duration = Duration::from_secs(2);

/// What even a deadline met on time gives the request: one turn of the
/// runtime's IO, so an answer already in the socket (one that arrived as
/// a short pause ended) is read rather than dropped. A slow answer still
/// ends at the deadline plus this.
pub const SETTLE: Duration = Duration::from_millis(50);

/// `fut`'s output if it finishes within `timeout`, or within [`GRACE`] after
/// a deadline that fired more than [`LATE`] after its instant, or else
/// within [`SETTLE`]; `None` when it did not. `endpoint` names the request
/// in the log line a late deadline writes.
pub async fn within<F: Future>(timeout: Duration, endpoint: &str, fut: F) -> Option<F::Output> {
    let allowance = Allowance {
        late: LATE,
        grace: GRACE,
        settle: SETTLE,
    };
    within_with(timeout, allowance, endpoint, fut).await
}

/// What [`within_with`] allows after the deadline.
#[derive(Debug, Clone, Copy)]
pub struct Allowance {
    /// A timer this late means the process could not run.
    pub late: Duration,
    /// What a late deadline gives the request.
    pub grace: Duration,
    /// What a deadline on time gives it.
    pub settle: Duration,
}

/// [`within`] with its allowances as arguments, for tests.
pub async fn within_with<F: Future>(
    timeout: Duration,
    allowance: Allowance,
    endpoint: &str,
    fut: F,
) -> Option<F::Output> {
    let deadline = Instant::now() + timeout;
    let mut fut = std::pin::pin!(fut);
    if let Ok(output) = tokio::time::timeout_at(deadline, fut.as_mut()).await {
        return Some(output);
    }
    let lateness = Instant::now().saturating_duration_since(deadline);
    if lateness <= allowance.late {
        return tokio::time::timeout(allowance.settle, fut).await.ok();
    }
    let grace = allowance.grace;
    // Tests wait on this line: the request in flight across a pause.
    tracing::debug!(
        endpoint,
        late_ms = u64::try_from(lateness.as_millis()).unwrap_or(u64::MAX),
        "a LINE request's deadline passed while linetokd could not run: reading what arrived"
    );
    tokio::time::timeout(grace, fut).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOW: Allowance = Allowance {
        late: Duration::from_millis(100),
        grace: Duration::from_secs(2),
        settle: Duration::from_millis(50),
    };

    #[tokio::test(start_paused = true)]
    async fn a_request_that_never_answers_ends_at_its_deadline_and_a_settle() {
        let started = Instant::now();
        let outcome = within(Duration::from_secs(3), "test", std::future::pending::<()>()).await;
        assert_eq!(outcome, None);
        // On time: only the settle is added.
        assert_eq!(started.elapsed(), Duration::from_secs(3) + SETTLE);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_within_the_timeout_is_returned() {
        let answer = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            "answer"
        };
        assert_eq!(
            within(Duration::from_secs(3), "test", answer).await,
            Some("answer")
        );
    }

    /// The process "pauses" across the 1 s deadline (paused time jumps
    /// `pause` at once, so the deadline's timer fires `pause` − 1 s late),
    /// and the answer is handed on only after the request has seen its
    /// timer fire, as hyper's connection task hands it on after the
    /// process resumes.
    async fn paused_across_the_deadline(
        pause: Duration,
        allowance: Allowance,
    ) -> Option<&'static str> {
        let (answer_tx, answer_rx) = tokio::sync::oneshot::channel();
        let request = async move { answer_rx.await.expect("the answer is sent") };
        let resume = async move {
            tokio::task::yield_now().await;
            tokio::time::advance(pause).await;
            // The request is polled with its timer fired before the answer
            // is handed on.
            tokio::task::yield_now().await;
            let _ = answer_tx.send("answer");
        };
        let (outcome, ()) = tokio::join!(
            within_with(Duration::from_secs(1), allowance, "test", request),
            resume
        );
        outcome
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_that_arrives_as_the_process_resumes_is_read() {
        // Long past the deadline, and just past it (a 0.7 s lateness, as
        // an outside tester's 2.4 s stop gave).
        for pause in [Duration::from_secs(6), Duration::from_millis(1_700)] {
            assert_eq!(
                paused_across_the_deadline(pause, ALLOW).await,
                Some("answer"),
                "{pause:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn without_the_grace_that_answer_would_be_lost() {
        let none = Allowance {
            grace: Duration::ZERO,
            settle: Duration::ZERO,
            ..ALLOW
        };
        assert_eq!(
            paused_across_the_deadline(Duration::from_secs(6), none).await,
            None
        );
    }

    /// Late, but nothing arrived: the grace ends it.
    #[tokio::test(start_paused = true)]
    async fn a_late_deadline_without_an_answer_ends_after_the_grace() {
        let request = std::future::pending::<()>();
        let pause = async {
            tokio::task::yield_now().await;
            // Paused time jumps; the deadline's timer fires 5 s late.
            tokio::time::advance(Duration::from_secs(6)).await;
        };
        let started = Instant::now();
        let (outcome, ()) = tokio::join!(
            within_with(Duration::from_secs(1), ALLOW, "test", request),
            pause
        );
        assert_eq!(outcome, None);
        assert_eq!(started.elapsed(), Duration::from_secs(8));
    }
}
