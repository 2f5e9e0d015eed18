//! A hostile LINE (issue 8, "Why" item 9): the answers a fake LINE sent in
//! an outside tester's run, each as a regression test of the engine.
//!
//! - a 429 with `Retry-After: 99999999` parks the group at most an hour and
//!   never past its current token's deadline, and `rotate` overrides it;
//! - the reconcile before each retry does not end the failure streak, so
//!   the backoff grows;
//! - a 200 that breaks the contract closes the intent as "may have
//!   issued", the next step is a listing that reports the token as
//!   foreign, and the retry waits at least a minute;
//! - an empty `access_token` in a 200 does not wedge the group;
//! - three rotations on a clock that does not move keep the newest token
//!   and revoke the oldest.
//!
//! Each drives the rotator directly ([`Rotator::pass`]) on a manual clock,
//! against a recording [`Mock`] LINE or the in-process sandbox, and checks
//! what the store recorded: the condition holds by construction, not by
//! timing.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use linetokd::clock::{Clock as _, ManualClock};
use linetokd::domain::{ChannelId, ChannelSecret, FailureKind, GroupName, KeyId, TokenState};
use linetokd::line::jwt::AssertionSigner;
use linetokd::metrics::Metrics;
use linetokd::policy::Rules;
use linetokd::policy::backoff::{MAX_RETRY_AFTER, MAYBE_ISSUED_FLOOR};
use linetokd::rotator::{ChannelSetup, RotationEvent, Rotator, RotatorParts};
use linetokd::sandbox::{Faults, SandboxTokenState};
use linetokd::store::{ChannelSpec, GroupRow, Store};
use rusqlite::Connection;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

use crate::support::{self, LAB_CHANNEL, LAB_KID, LAB_SECRET, Mock, Reply, Seen};

const ISSUE: &str = "/oauth2/v2.1/token";
const KID_LIST: &str = "/oauth2/v2.1/tokens/kid";
const VERIFY: &str = "/oauth2/v2.1/verify";
const REVOKE: &str = "/oauth2/v2.1/revoke";

/// One channel ([`LAB_CHANNEL`]) with one group `a`, worked by a rotator
/// on `clock` over a fresh store.
struct Engine {
    rotator: Arc<Rotator>,
    store: Store,
    dir: TempDir,
}

impl Engine {
    fn new(
        base_url: &str,
        clock: &ManualClock,
        signer: AssertionSigner,
        secret: Option<&str>,
        rules: Rules,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("linetokd.db")).unwrap();
        let groups = vec![GroupName::new("a")];
        store
            .sync_config(
                clock.now(),
                &[ChannelSpec {
                    id: channel(),
                    name: "chan".into(),
                    groups: groups.clone(),
                    fingerprint: None,
                    short_lived: Vec::new(),
                }],
            )
            .unwrap();
        let rotator = Rotator::new(RotatorParts {
            store: store.clone(),
            line: support::line_client(base_url, clock, StdDuration::from_secs(10)),
            clock: Arc::new(clock.clone()),
            rules,
            channels: vec![ChannelSetup {
                id: channel(),
                name: "chan".into(),
                signer: Some(signer),
                secret: secret.map(ChannelSecret::new),
                groups,
                fingerprint: None,
            }],
            concurrency: 1,
            seed: Some(11),
            metrics: Metrics::shared(),
            leadership: None,
        });
        Self {
            rotator,
            store,
            dir,
        }
    }

    /// The engine on the project's sandbox, with the channel's registered
    /// key and its secret.
    fn on_lab(lab: &support::SandboxLab) -> Self {
        Self::new(
            &lab.base_url,
            &lab.clock,
            support::signer(LAB_CHANNEL, LAB_KID),
            Some(LAB_SECRET),
            generous(),
        )
    }

    /// Works the channel until it idles; returns when it is due again.
    async fn pass(&self) -> DateTime<Utc> {
        self.rotator.pass(&CancellationToken::new()).await.unwrap()
    }

    /// Group `a` as stored.
    fn group(&self) -> GroupRow {
        self.store
            .groups(&channel())
            .unwrap()
            .into_iter()
            .find(|g| g.name == group())
            .unwrap()
    }

    /// `(key ID, state)` of group `a`'s stored tokens, oldest first.
    fn tokens(&self) -> Vec<(KeyId, TokenState)> {
        self.store
            .tokens_of_group(&channel(), &group())
            .unwrap()
            .into_iter()
            .map(|t| (t.record.key_id, t.record.state))
            .collect()
    }

    /// `(outcome, maybe_issued)` of every issue intent, in order, read
    /// beside the rotator's connection.
    fn intents(&self) -> Vec<(String, i64)> {
        let conn = Connection::open(self.dir.path().join("linetokd.db")).unwrap();
        conn.prepare("SELECT outcome, maybe_issued FROM issue_intents ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    async fn rotate(&self) {
        self.rotator
            .request_rotation(&channel(), Some(&group()), "the test")
            .await
            .unwrap();
    }
}

fn channel() -> ChannelId {
    ChannelId::new(LAB_CHANNEL)
}

fn group() -> GroupName {
    GroupName::new("a")
}

/// Rules whose hourly budget never gets in the way.
fn generous() -> Rules {
    Rules {
        max_issues_per_hour: 1000,
        ..Rules::default()
    }
}

/// How a [`fake_line`] answers an issue request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum IssueAnswer {
    /// A fresh token, 30 days.
    Token,
    /// 429 with `Retry-After: 99999999`.
    RetryAfterYears,
    /// 500.
    ServerError,
    /// 200 with an empty `access_token` (LINE may have issued a token
    /// under `key_id` `empty-kid`).
    EmptyToken,
    /// 200 that replays the first token issued, with a mistyped
    /// `expires_in`: unusable, but carrying a token linetokd holds.
    ReplayBroken,
    /// 200 with an HTML page: unusable, and LINE issued nothing.
    Html,
    /// 200 with an HTML page, LINE having issued (and listing) a token.
    HtmlIssued,
}

/// A fake LINE: issues unique tokens (or fails as `answer` says), lists
/// every key ID it handed out (and `empty-kid` once an empty token was
/// answered), verifies every token as the channel's for 30 days.
struct FakeLine {
    mock: Mock,
    answer: Arc<Mutex<IssueAnswer>>,
    /// Key IDs the list leaves out ([`FakeLine::unlist`]).
    unlisted: Arc<Mutex<Vec<String>>>,
}

impl FakeLine {
    async fn start(answer: IssueAnswer) -> Self {
        let answer = Arc::new(Mutex::new(answer));
        let issued = Arc::new(Mutex::new(Vec::<String>::new()));
        let n = AtomicUsize::new(0);
        let answered_empty = AtomicBool::new(false);
        let current = Arc::clone(&answer);
        let unlisted = Arc::new(Mutex::new(Vec::<String>::new()));
        let left_out = Arc::clone(&unlisted);
        let mock = Mock::start(move |seen: &Seen| match seen.path.as_str() {
            ISSUE => match *current.lock().unwrap() {
                IssueAnswer::Token => {
                    let i = n.fetch_add(1, Ordering::SeqCst);
                    issued.lock().unwrap().push(format!("kid-{i}"));
                    Reply::json(
                        200,
                        &format!(
                            r#"{{"access_token":"hostile-token-{i}","token_type":"Bearer","expires_in":2592000,"key_id":"kid-{i}"}}"#
                        ),
                    )
                }
                IssueAnswer::RetryAfterYears => {
                    Reply::json(429, r#"{"message":"Too many requests"}"#)
                        .header("retry-after", "99999999")
                }
                IssueAnswer::ServerError => {
                    Reply::json(500, r#"{"message":"Internal server error"}"#)
                }
                IssueAnswer::ReplayBroken => Reply::json(
                    200,
                    r#"{"access_token":"hostile-token-0","token_type":"Bearer","expires_in":"soon","key_id":"kid-0"}"#,
                ),
                IssueAnswer::Html => Reply::json(200, "<html>maintenance</html>"),
                IssueAnswer::HtmlIssued => {
                    let i = n.fetch_add(1, Ordering::SeqCst);
                    issued.lock().unwrap().push(format!("kid-{i}"));
                    Reply::json(200, "<html>maintenance</html>")
                }
                IssueAnswer::EmptyToken => {
                    answered_empty.store(true, Ordering::SeqCst);
                    Reply::json(
                        200,
                        r#"{"access_token":"","token_type":"Bearer","expires_in":2592000,"key_id":"empty-kid"}"#,
                    )
                }
            },
            KID_LIST => {
                let mut kids = issued.lock().unwrap().clone();
                if answered_empty.load(Ordering::SeqCst) {
                    kids.push("empty-kid".to_owned());
                }
                kids.retain(|k| !left_out.lock().unwrap().contains(k));
                Reply::json(200, &serde_json::json!({ "kids": kids }).to_string())
            }
            VERIFY => Reply::json(
                200,
                &format!(r#"{{"client_id":"{LAB_CHANNEL}","expires_in":2591990,"scope":""}}"#),
            ),
            _ => Reply::json(404, r#"{"message":"Not found"}"#),
        })
        .await;
        Self {
            mock,
            answer,
            unlisted,
        }
    }

    fn answer(&self, answer: IssueAnswer) {
        *self.answer.lock().unwrap() = answer;
    }

    /// A manual clock and an engine on this LINE with `secret`.
    fn engine(&self, secret: Option<&str>) -> (ManualClock, Engine) {
        let clock = support::manual_clock();
        let engine = Engine::new(
            &self.mock.base_url,
            &clock,
            support::signer(LAB_CHANNEL, "hostile-kid"),
            secret,
            generous(),
        );
        (clock, engine)
    }

    /// The key-ID list leaves `kid` out from now on.
    fn unlist(&self, kid: &str) {
        self.unlisted.lock().unwrap().push(kid.to_owned());
    }

    fn count(&self, path: &str) -> usize {
        self.mock.seen().iter().filter(|s| s.path == path).count()
    }
}

#[tokio::test]
async fn a_retry_after_of_three_years_waits_at_most_an_hour_never_past_the_deadline_and_rotate_overrides_it()
 {
    let line = FakeLine::start(IssueAnswer::RetryAfterYears).await;
    let clock = support::manual_clock();
    let engine = Engine::new(
        &line.mock.base_url,
        &clock,
        support::signer(LAB_CHANNEL, "hostile-kid"),
        None,
        generous(),
    );

    // No token yet: the first issue is refused with a 3-year Retry-After.
    let t0 = clock.now();
    engine.pass().await;
    let g = engine.group();
    assert_eq!(g.runtime.consecutive_failures, 1);
    assert_eq!(g.runtime.failure_kind, Some(FailureKind::RateLimited));
    let retry = g.runtime.retry_not_before.unwrap();
    assert!(retry > t0, "{retry}");
    assert!(retry <= t0 + MAX_RETRY_AFTER, "parked until {retry}");

    // `rotate` is the operator saying "try now": it ends the wait.
    line.answer(IssueAnswer::Token);
    engine.rotate().await;
    assert_eq!(engine.group().runtime.retry_not_before, None);
    engine.pass().await;
    assert_eq!(clock.now(), t0, "the clock did not move");
    let tokens = engine.tokens();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(engine.group().runtime.consecutive_failures, 0);
    let current = engine
        .store
        .token(&tokens[0].0)
        .unwrap()
        .unwrap()
        .record
        .expires_at;

    // Half an hour before that token expires its rotation is refused the
    // same way: the next attempt must come before the token's deadline.
    clock.set(current - Duration::minutes(30));
    line.answer(IssueAnswer::RetryAfterYears);
    let now = clock.now();
    engine.pass().await;
    let g = engine.group();
    assert_eq!(g.runtime.failure_kind, Some(FailureKind::RateLimited));
    let retry = g.runtime.retry_not_before.unwrap();
    let deadline = current - Rules::default().deadline_margin;
    assert!(
        retry > now && retry <= deadline,
        "retry at {retry}, the current token's deadline is {deadline}"
    );

    // And `rotate` overrides that wait too.
    line.answer(IssueAnswer::Token);
    engine.rotate().await;
    engine.pass().await;
    assert_eq!(clock.now(), now);
    assert_eq!(engine.tokens().len(), 2, "{:?}", engine.tokens());
    assert_eq!(engine.group().runtime.consecutive_failures, 0);
}

#[tokio::test]
async fn the_reconcile_before_each_retry_does_not_end_the_failure_streak() {
    let line = FakeLine::start(IssueAnswer::ServerError).await;
    let clock = support::manual_clock();
    // A listing is due before every retry.
    let rules = Rules {
        reconcile_interval: Duration::seconds(1),
        ..generous()
    };
    let engine = Engine::new(
        &line.mock.base_url,
        &clock,
        support::signer(LAB_CHANNEL, "hostile-kid"),
        None,
        rules,
    );

    let end = clock.now() + Duration::minutes(10);
    let mut streak = Vec::new();
    let mut waits = Vec::new();
    while clock.now() < end {
        let at = clock.now();
        engine.pass().await;
        let g = engine.group();
        let retry = g.runtime.retry_not_before.unwrap();
        streak.push(g.runtime.consecutive_failures);
        waits.push(retry - at);
        clock.set(retry.max(at + Duration::milliseconds(1)));
    }

    // Every retry failed once more: 1, 2, 3, ... with a successful listing
    // before most (a retry within a second of the last listing finds it
    // fresh), none of which ended the streak.
    let expected: Vec<u32> = (1..=u32::try_from(streak.len()).unwrap()).collect();
    assert_eq!(streak, expected, "waits {waits:?}");
    assert_eq!(line.count(ISSUE), streak.len());
    assert!(
        line.count(KID_LIST) >= streak.len() / 2,
        "{} listings for {} issues",
        line.count(KID_LIST),
        streak.len()
    );
    // The group has no token, so it is past any deadline and retries at
    // most `retry.base` apart however long the streak (found by an outside
    // test: a minute apart, as before, kept groups without a token for
    // minutes once LINE answered half the time); the hourly budget, set
    // high here, is what bounds such a group's attempts.
    let base = Rules::default().retry.base;
    assert!(
        waits.iter().all(|w| *w <= base),
        "a group without a token waited longer than {base}: {waits:?}"
    );
    assert!(
        streak.len() >= 120,
        "{} attempts in 10 minutes: {waits:?}",
        streak.len()
    );
}

/// Every issue answered 200 with `shape` (the sandbox issued the token).
fn issue_answers(shape: &str) -> Faults {
    serde_json::from_value(serde_json::json!({
        "endpoints": { ISSUE: { "malformed_rate": 1.0, "malformed_as": shape } }
    }))
    .unwrap()
}

/// The sandbox answering every issue with `shape`, and an engine on it
/// with `secret`.
async fn a_lab_answering(shape: &str, secret: Option<&str>) -> (support::SandboxLab, Engine) {
    let lab = support::sandbox_lab().await;
    lab.sandbox.set_faults(issue_answers(shape)).unwrap();
    let engine = Engine::new(
        &lab.base_url,
        &lab.clock,
        support::signer(LAB_CHANNEL, LAB_KID),
        secret,
        generous(),
    );
    (lab, engine)
}

#[tokio::test]
async fn a_200_that_breaks_the_contract_may_have_issued_and_lists_before_the_retry() {
    // An HTML page carries no token to revoke.
    let (lab, engine) = a_lab_answering("html", Some(LAB_SECRET)).await;
    let mut events = engine.rotator.subscribe();

    let t0 = lab.clock.now();
    engine.pass().await;
    // LINE issued (the sandbox holds a live token) but the answer was
    // unusable: the intent is closed as "may have issued".
    let at_line = lab.sandbox.tokens(&channel());
    assert_eq!(at_line.len(), 1);
    assert_eq!(at_line[0].state, SandboxTokenState::Live);
    let lost = at_line[0].key_id.clone().unwrap();
    assert_eq!(engine.intents(), [("failed".to_owned(), 1)]);
    let g = engine.group();
    assert_eq!(g.runtime.failure_kind, Some(FailureKind::MaybeIssued));
    // A group without a token retries the first such answer as soon as
    // the base allows (a run of them waits a minute each: the backoff's
    // table tests), after the listing that settles it.
    let retry = g.runtime.retry_not_before.unwrap();
    assert!(
        retry > t0 && retry < t0 + MAYBE_ISSUED_FLOOR,
        "retry at {retry}"
    );
    assert!(engine.tokens().is_empty());

    // LINE behaves again, but nothing is asked before the wait is over.
    lab.sandbox.set_faults(Faults::default()).unwrap();
    engine.pass().await;
    assert_eq!(lab.sandbox.tokens(&channel()).len(), 1);

    lab.clock.set(retry);
    engine.pass().await;
    let fresh = engine.tokens();
    assert_eq!(fresh.len(), 1, "{fresh:?}");

    // What happened after the failure: a listing that named the lost token
    // foreign, then the issue.
    let mut after_failure = Vec::new();
    let mut failed = false;
    while let Ok(event) = events.try_recv() {
        match event {
            RotationEvent::Failed { .. } => failed = true,
            RotationEvent::ForeignSeen { key_id, .. } if failed => {
                after_failure.push(format!("foreign {key_id}"));
            }
            RotationEvent::Issued { key_id, .. } if failed => {
                after_failure.push(format!("issued {key_id}"));
            }
            _ => {}
        }
    }
    assert!(failed);
    assert_eq!(
        after_failure,
        [format!("foreign {lost}"), format!("issued {}", fresh[0].0)]
    );
    let foreign = engine.store.foreign_kids(&channel()).unwrap();
    assert_eq!(foreign.len(), 1);
    assert_eq!(foreign[0].key_id, lost);
}

/// An unusable 200 that still carries the token (no `key_id`): found by an
/// outside test, where such answers a minute apart left eight tokens
/// nobody held until the channel was full. With the secret the token is
/// verified as the channel's, revoked at LINE, and the attempt is a
/// transient failure; without it, LINE may have issued, as before.
#[tokio::test]
async fn a_200_without_a_key_id_has_the_token_it_carried_revoked() {
    let (lab, engine) = a_lab_answering("missing_key_id", Some(LAB_SECRET)).await;
    let t0 = lab.clock.now();
    engine.pass().await;
    let at_line = lab.sandbox.tokens(&channel());
    assert_eq!(at_line.len(), 1);
    assert_eq!(at_line[0].state, SandboxTokenState::Revoked, "{at_line:?}");
    // Closed as failed, and not as "may have issued".
    assert_eq!(engine.intents(), [("failed".to_owned(), 0)]);
    let g = engine.group();
    assert_eq!(g.runtime.failure_kind, Some(FailureKind::Transient));
    let error = g.runtime.last_error.clone().unwrap_or_default();
    assert!(error.contains("revoked at LINE"), "{error}");
    let retry = g.runtime.retry_not_before.unwrap();
    assert!(
        retry <= t0 + Rules::default().retry.base,
        "retry at {retry}"
    );

    // LINE behaves again: the retry issues, and the listing finds nothing
    // foreign.
    lab.sandbox.set_faults(Faults::default()).unwrap();
    lab.clock.set(retry);
    engine.pass().await;
    assert_eq!(engine.tokens().len(), 1);
    assert!(engine.store.foreign_kids(&channel()).unwrap().is_empty());
    assert_eq!(lab.sandbox.live_tokens(&channel()).len(), 1);

    // Without the secret nothing can be revoked: LINE may have issued.
    let (lab, engine) = a_lab_answering("missing_key_id", None).await;
    engine.pass().await;
    assert_eq!(lab.sandbox.live_tokens(&channel()).len(), 1);
    let g = engine.group();
    assert_eq!(g.runtime.failure_kind, Some(FailureKind::MaybeIssued));
}

/// Unusable answers in a row near the token's expiry, where LINE issued
/// nothing: the listing that settles each comes at once, not at the
/// retry, and finding nothing it ends the "may have issued" pace, so the
/// retries come at the transient backoff. Found by an outside test: a
/// timeout and a 200 without a key ID in a row held the second retry a
/// minute, past the expiry, and the group went 49 s without a token while
/// LINE answered. Where LINE did issue, the minute stays.
#[tokio::test]
async fn unusable_answers_that_issued_nothing_retry_at_the_transient_pace() {
    let line = FakeLine::start(IssueAnswer::Token).await;
    let (clock, engine) = line.engine(None);
    let t0 = clock.now();
    engine.pass().await;
    let base = Rules::default().retry.base;
    // 30 s before the expiry: past the deadline margin, the rotation due.
    clock.set(t0 + Duration::days(30) - Duration::seconds(30));
    line.answer(IssueAnswer::Html);
    for attempt in 1..=3u32 {
        let at = clock.now();
        let listings = line.count(KID_LIST);
        engine.pass().await;
        let g = engine.group();
        assert_eq!(g.runtime.consecutive_failures, attempt);
        assert_eq!(
            g.runtime.failure_kind,
            Some(FailureKind::Transient),
            "attempt {attempt}: settled as issuing nothing"
        );
        assert!(
            line.count(KID_LIST) > listings,
            "attempt {attempt}: no listing"
        );
        let retry = g.runtime.retry_not_before.unwrap();
        assert!(
            retry <= at + base,
            "attempt {attempt}: retry at {retry}, {} s after it",
            (retry - at).num_milliseconds() as f64 / 1000.0
        );
        clock.set(retry);
    }
    line.answer(IssueAnswer::Token);
    engine.pass().await;
    assert_eq!(engine.group().runtime.consecutive_failures, 0);
    assert_eq!(
        engine
            .tokens()
            .iter()
            .filter(|(_, s)| *s == TokenState::Live)
            .count(),
        2
    );

    // LINE issued each time: the listing finds the token nobody holds, and
    // the next unknown answer waits a minute (each may leak a token).
    let line = FakeLine::start(IssueAnswer::Token).await;
    let (clock, engine) = line.engine(None);
    let t0 = clock.now();
    engine.pass().await;
    clock.set(t0 + Duration::days(29));
    line.answer(IssueAnswer::HtmlIssued);
    engine.pass().await;
    let g = engine.group();
    assert_eq!(g.runtime.failure_kind, Some(FailureKind::MaybeIssued));
    let retry = g.runtime.retry_not_before.unwrap();
    assert!(
        retry >= clock.now() + Duration::minutes(1),
        "retry at {retry}"
    );
}

/// An unusable 200 that carries a token linetokd already holds (a replay)
/// is not taken for a token to revoke: the consumers keep theirs, and the
/// attempt may have issued, as any unusable answer, until a listing
/// settles it (review finding).
#[tokio::test]
async fn an_unusable_200_replaying_a_token_we_hold_revokes_nothing() {
    let line = FakeLine::start(IssueAnswer::Token).await;
    let (_clock, engine) = line.engine(Some(LAB_SECRET));
    engine.pass().await;
    line.answer(IssueAnswer::ReplayBroken);
    engine.rotate().await;
    engine.pass().await;
    assert_eq!(line.count(REVOKE), 0, "a held token was revoked");
    assert!(
        engine
            .tokens()
            .iter()
            .any(|(k, state)| k.as_str() == "kid-0" && *state == TokenState::Live)
    );
    // The attempt may have issued, as any unusable answer; the listing
    // that settled it found no key ID nobody holds, so the retry is at the
    // transient pace.
    assert_eq!(engine.intents().last(), Some(&("failed".to_owned(), 1)));
    let g = engine.group();
    assert_eq!(g.runtime.failure_kind, Some(FailureKind::Transient));
}

/// A listing that finds a superseded token of ours dropped by LINE seconds
/// before its expiry (LINE's clock a little ahead) marks it expired and
/// says so, as the round's own expiry marking does. Found in the demo:
/// such an expiry was never announced, so the sinks and the token API
/// kept the token.
#[tokio::test]
async fn a_token_the_listing_finds_expired_is_announced() {
    let line = FakeLine::start(IssueAnswer::Token).await;
    let (clock, engine) = line.engine(Some(LAB_SECRET));
    let t0 = clock.now();
    engine.pass().await;
    clock.set(t0 + Duration::days(29) + Duration::hours(1));
    engine.pass().await;
    let live = |e: &Engine| {
        e.tokens()
            .into_iter()
            .filter(|(_, state)| *state == TokenState::Live)
            .map(|(k, _)| k.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(live(&engine), ["kid-0", "kid-1"]);

    let mut events = engine.rotator.subscribe();
    line.unlist("kid-0");
    clock.set(t0 + Duration::days(30) - Duration::milliseconds(500));
    engine.pass().await;
    assert_eq!(live(&engine), ["kid-1"]);
    let mut announced = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let RotationEvent::Expired { key_ids, .. } = event {
            announced.extend(key_ids.into_iter().map(|k| k.as_str().to_owned()));
        }
    }
    assert_eq!(announced, ["kid-0"]);
}

#[tokio::test]
async fn an_empty_access_token_in_a_200_does_not_wedge_the_group() {
    let line = FakeLine::start(IssueAnswer::EmptyToken).await;
    let clock = support::manual_clock();
    let engine = Engine::new(
        &line.mock.base_url,
        &clock,
        support::signer(LAB_CHANNEL, "hostile-kid"),
        None,
        generous(),
    );

    engine.pass().await;
    let g = engine.group();
    assert_eq!(g.runtime.consecutive_failures, 1);
    assert_eq!(g.runtime.failure_kind, Some(FailureKind::MaybeIssued));
    let error = g.runtime.last_error.clone().unwrap_or_default();
    assert!(!error.contains("close_"), "an internal name: {error}");
    assert_eq!(engine.intents(), [("failed".to_owned(), 1)]);

    // At the retry LINE answers properly: the group gets its token.
    line.answer(IssueAnswer::Token);
    clock.set(g.runtime.retry_not_before.unwrap());
    engine.pass().await;
    let tokens = engine.tokens();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(tokens[0].1, TokenState::Live);
    assert_eq!(engine.group().runtime.consecutive_failures, 0);
    // The possibly issued empty one was listed and is counted as foreign.
    let foreign = engine.store.foreign_kids(&channel()).unwrap();
    assert_eq!(foreign.len(), 1);
    assert_eq!(foreign[0].key_id.as_str(), "empty-kid");
}

#[tokio::test]
async fn three_rotations_on_a_still_clock_keep_the_newest_and_revoke_the_oldest() {
    let lab = support::sandbox_lab().await;
    let engine = Engine::on_lab(&lab);
    engine.pass().await;
    let t0 = lab.clock.now();
    for _ in 0..3 {
        engine.rotate().await;
        engine.pass().await;
    }
    assert_eq!(lab.clock.now(), t0, "the clock never moved");

    // The sandbox issued four tokens, in order; the store holds all four.
    let at_line: Vec<(KeyId, SandboxTokenState)> = lab
        .sandbox
        .tokens(&channel())
        .into_iter()
        .map(|t| (t.key_id.unwrap(), t.state))
        .collect();
    assert_eq!(at_line.len(), 4, "{at_line:?}");
    let state = |i: usize| at_line[i].1;
    // At most two live: the newest two; the oldest two revoked.
    assert_eq!(
        [state(0), state(1), state(2), state(3)],
        [
            SandboxTokenState::Revoked,
            SandboxTokenState::Revoked,
            SandboxTokenState::Live,
            SandboxTokenState::Live
        ],
        "{at_line:?}"
    );
    let stored = engine.tokens();
    for (key, at_sandbox) in &at_line {
        let (_, in_store) = stored.iter().find(|(k, _)| k == key).unwrap();
        assert_eq!(
            *in_store == TokenState::Live,
            *at_sandbox == SandboxTokenState::Live,
            "{key}: {stored:?}"
        );
    }
    // The token handed out is the newest.
    let snapshot = linetokd::snapshot::Snapshot::read(&engine.store, &channel(), t0).unwrap();
    let state = snapshot.state(&channel(), true);
    let current = state.groups[0].current(t0).unwrap();
    assert_eq!(current.key_id, at_line[3].0);
}

/// A channel's key is parsed for its signing burst and released when the
/// channel's work ends, after an issue and after a failed one: kept parsed, every
/// channel's key was about 5.4 KB of memory between bursts an hour apart.
#[tokio::test]
async fn a_channels_key_is_released_when_its_work_ends() {
    let lab = support::sandbox_lab().await;
    let engine = Engine::on_lab(&lab);
    let channels = engine.rotator.channels();
    let signer = channels[0].signer.as_ref().unwrap();
    engine.pass().await;
    assert_eq!(
        engine.tokens().len(),
        1,
        "the work signed: a listing and an issue"
    );
    assert!(!signer.key_is_parsed(), "released after the work");
    engine.rotate().await;
    engine.pass().await;
    assert_eq!(engine.tokens().len(), 2, "signed again after the release");
    assert!(!signer.key_is_parsed());

    // A work whose issue fails ends with the key released too.
    let line = FakeLine::start(IssueAnswer::ServerError).await;
    let clock = support::manual_clock();
    let failing = Engine::new(
        &line.mock.base_url,
        &clock,
        support::signer(LAB_CHANNEL, LAB_KID),
        Some(LAB_SECRET),
        generous(),
    );
    failing.pass().await;
    assert!(
        line.count(ISSUE) >= 1,
        "the work signed an issue that failed"
    );
    assert!(failing.tokens().is_empty());
    let channels = failing.rotator.channels();
    assert!(!channels[0].signer.as_ref().unwrap().key_is_parsed());
}
