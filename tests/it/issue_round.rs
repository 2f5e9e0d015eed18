//! Issue rounds (the rotator issues a channel's due groups in one round,
//! sharing the store's work): what the round must keep from the
//! one-at-a-time loop, judged at a recording mock LINE that looks into the
//! daemon's database (a read-only connection) as each issue request
//! arrives.
//!
//! - One issuance in flight per channel: when LINE is asked for a token,
//!   exactly one intent is open (that request's) and every earlier token of
//!   the round is already stored, so a crash leaves at most one token LINE
//!   issued unrecorded (invariant 6).
//! - The round stops at a failure, LINE's or the store's: nothing after it
//!   is journaled or sent until the driver has decided again, so an answer
//!   that leaves open whether LINE issued is followed by a key-ID listing
//!   before the next issue, exactly as without rounds.
//! - The round stops when the listing it was decided on is too old to
//!   issue on: the next issue waits for a fresh one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use linetokd::clock::ManualClock;
use linetokd::domain::{ChannelId, GroupName};
use linetokd::policy::Rules;
use linetokd::rotator::{ChannelSetup, Rotator};
use linetokd::store::Store;
use tokio_util::sync::CancellationToken;

use crate::support::{self, Mock, Reply, Seen};

const CHANNEL: &str = "1234567893";
const KID_LIST: &str = "/oauth2/v2.1/tokens/kid";
const ISSUE: &str = "/oauth2/v2.1/token";
const GROUPS: usize = 6;

/// What the database held when an issue request arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AtIssue {
    open_intents: usize,
    stored_tokens: usize,
}

/// How the mock answers the `n`th issue request (from 0).
#[derive(Clone, Copy)]
enum IssueAnswer {
    Token,
    /// A token whose key ID LINE already gave the first one: the store
    /// refuses to record it.
    SameKeyIdAsTheFirst,
    /// A 500: LINE issued nothing.
    Error,
    /// A 200 without `key_id`: LINE may have issued.
    Broken,
}

/// A LINE that lists the key IDs it gave (`round-kid-0` to `-{n-1}`),
/// verifies every token as the channel's and answers the `n`th issue
/// request with `answer(n)`; at each issue request
/// it records what the database at `db` holds.
async fn mock_line(
    db: PathBuf,
    answer: fn(usize) -> IssueAnswer,
) -> (Mock, Arc<Mutex<Vec<AtIssue>>>) {
    mock_line_on(db, answer, None).await
}

/// [`mock_line`], moving `clock` on by `each` at each of the first `first`
/// issue requests (LINE answering slowly for a while).
async fn mock_line_on(
    db: PathBuf,
    answer: fn(usize) -> IssueAnswer,
    slow: Option<(ManualClock, chrono::Duration, usize)>,
) -> (Mock, Arc<Mutex<Vec<AtIssue>>>) {
    let seen_at_issue = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen_at_issue);
    let issues = AtomicUsize::new(0);
    let mock = Mock::start(move |seen: &Seen| match seen.path.as_str() {
        // Every token it issued is live: the key IDs `Token` answers gave.
        KID_LIST => {
            let kids: Vec<String> = (0..issues.load(Ordering::SeqCst))
                .map(|n| format!("\"round-kid-{n}\""))
                .collect();
            Reply::json(200, &format!(r#"{{"kids":[{}]}}"#, kids.join(",")))
        }
        ISSUE => {
            record.lock().unwrap().push(look_into(&db));
            let n = issues.fetch_add(1, Ordering::SeqCst);
            if let Some((clock, each, first)) = &slow
                && n < *first
            {
                clock.advance(*each);
            }
            match answer(n) {
                IssueAnswer::SameKeyIdAsTheFirst => Reply::json(
                    200,
                    &format!(
                        r#"{{"access_token":"round-token-{n}","token_type":"Bearer","expires_in":2592000,"key_id":"round-kid-0"}}"#
                    ),
                ),
                IssueAnswer::Token => Reply::json(
                    200,
                    &format!(
                        r#"{{"access_token":"round-token-{n}","token_type":"Bearer","expires_in":2592000,"key_id":"round-kid-{n}"}}"#
                    ),
                ),
                IssueAnswer::Error => {
                    Reply::json(500, r#"{"message":"Internal server error"}"#)
                }
                IssueAnswer::Broken => Reply::json(
                    200,
                    &format!(
                        r#"{{"access_token":"round-token-{n}","token_type":"Bearer","expires_in":2592000}}"#
                    ),
                ),
            }
        }
        "/oauth2/v2.1/verify" => Reply::json(
            200,
            &format!(r#"{{"client_id":"{CHANNEL}","expires_in":2591990,"scope":"profile"}}"#),
        ),
        _ => Reply::json(404, r#"{"message":"Not found"}"#),
    })
    .await;
    (mock, seen_at_issue)
}

/// The daemon's database as another process would read it now.
fn look_into(db: &Path) -> AtIssue {
    let store = Store::open_read_only(db).unwrap();
    AtIssue {
        open_intents: store.open_intents().unwrap().len(),
        stored_tokens: store
            .live_tokens_of_channel(&ChannelId::new(CHANNEL))
            .unwrap()
            .len(),
    }
}

/// A rotator for one channel with groups `g00` to `g05`, on a clock that
/// never moves, over a fresh store at `db`.
fn rotator(db: &Path, base_url: &str) -> (Arc<Rotator>, Store) {
    rotator_on(db, base_url, support::manual_clock())
}

/// [`rotator`] on `clock`.
fn rotator_on(db: &Path, base_url: &str, clock: ManualClock) -> (Arc<Rotator>, Store) {
    let store = Store::open(db).unwrap();
    let setup = ChannelSetup {
        id: ChannelId::new(CHANNEL),
        name: "chan".into(),
        signer: Some(support::signer(CHANNEL, "round-kid")),
        secret: None,
        groups: (0..GROUPS)
            .map(|g| GroupName::new(format!("g{g:02}")))
            .collect(),
        fingerprint: None,
    };
    let rotator =
        support::one_channel_rotator(&store, base_url, &clock, Rules::default(), setup, 7);
    (rotator, store)
}

fn paths(mock: &Mock) -> Vec<&'static str> {
    mock.seen()
        .into_iter()
        .map(|s| match s.path.as_str() {
            KID_LIST => "list",
            ISSUE => "issue",
            "/oauth2/v2.1/verify" => "verify",
            _ => "other",
        })
        .collect()
}

/// Groups holding a live token, by name.
fn with_token(store: &Store) -> Vec<String> {
    let mut groups: Vec<String> = store
        .live_tokens_of_channel(&ChannelId::new(CHANNEL))
        .unwrap()
        .into_iter()
        .map(|t| t.group.to_string())
        .collect();
    groups.sort();
    groups
}

#[tokio::test]
async fn a_round_keeps_one_issuance_in_flight_and_stores_each_token_before_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("linetokd.db");
    let (mock, at_issue) = mock_line(db.clone(), |_| IssueAnswer::Token).await;
    let (rotator, store) = rotator(&db, &mock.base_url);

    rotator.pass(&CancellationToken::new()).await.unwrap();

    let expected: Vec<AtIssue> = (0..GROUPS)
        .map(|k| AtIssue {
            open_intents: 1,
            stored_tokens: k,
        })
        .collect();
    assert_eq!(*at_issue.lock().unwrap(), expected);
    assert_eq!(with_token(&store).len(), GROUPS);
    assert!(store.open_intents().unwrap().is_empty());
    // One listing before the first issue, then each group's issue and the
    // verify of its new token.
    let mut want = vec!["list"];
    for _ in 0..GROUPS {
        want.extend(["issue", "verify"]);
    }
    assert_eq!(paths(&mock), want);
}

/// LINE's 500 on the third issue: nothing was issued, so the driver goes on
/// with the other groups (no listing needed); the failed group waits for
/// its backoff. No intent is left open, none journaled for a request that
/// was never sent.
#[tokio::test]
async fn a_round_stops_at_a_failure_and_journals_nothing_it_did_not_send() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("linetokd.db");
    let (mock, at_issue) = mock_line(db.clone(), |n| {
        if n == 2 {
            IssueAnswer::Error
        } else {
            IssueAnswer::Token
        }
    })
    .await;
    let (rotator, store) = rotator(&db, &mock.base_url);

    rotator.pass(&CancellationToken::new()).await.unwrap();

    let seen = at_issue.lock().unwrap().clone();
    assert_eq!(seen.len(), GROUPS, "{:?}", paths(&mock));
    assert!(seen.iter().all(|s| s.open_intents == 1), "{seen:?}");
    assert!(store.open_intents().unwrap().is_empty());
    let groups = with_token(&store);
    assert_eq!(groups.len(), GROUPS - 1, "{groups:?}");
    assert!(!groups.contains(&"g02".to_owned()), "{groups:?}");
    let failed = store
        .group(&ChannelId::new(CHANNEL), &GroupName::new("g02"))
        .unwrap()
        .unwrap();
    assert_eq!(failed.runtime.consecutive_failures, 1);
}

/// A 200 without `key_id` on the third issue: LINE may have issued a token
/// nobody recorded. The round stops there, and the key IDs are listed
/// again before the next issue, which a round going on would have skipped.
#[tokio::test]
async fn after_an_answer_that_may_have_issued_the_next_issue_waits_for_a_listing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("linetokd.db");
    let (mock, _) = mock_line(db.clone(), |n| {
        if n == 2 {
            IssueAnswer::Broken
        } else {
            IssueAnswer::Token
        }
    })
    .await;
    let (rotator, store) = rotator(&db, &mock.base_url);

    rotator.pass(&CancellationToken::new()).await.unwrap();

    let paths = paths(&mock);
    let third_issue = paths
        .iter()
        .enumerate()
        .filter(|(_, p)| **p == "issue")
        .nth(2)
        .map(|(i, _)| i)
        .unwrap();
    assert_eq!(
        paths.get(third_issue + 1),
        Some(&"list"),
        "the next request after the broken answer: {paths:?}"
    );
    assert_eq!(with_token(&store).len(), GROUPS - 1, "{paths:?}");
}

/// The second token cannot be stored (LINE gave it the first one's key
/// ID): the round stops there, as the loop stops at a store failure, and
/// no further intent is journaled or request sent in this pass.
#[tokio::test]
async fn a_store_failure_mid_round_stops_the_round() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("linetokd.db");
    let (mock, at_issue) = mock_line(db.clone(), |n| {
        if n == 1 {
            IssueAnswer::SameKeyIdAsTheFirst
        } else {
            IssueAnswer::Token
        }
    })
    .await;
    let (rotator, store) = rotator(&db, &mock.base_url);

    rotator.pass(&CancellationToken::new()).await.unwrap();

    assert_eq!(
        paths(&mock),
        ["list", "issue", "verify", "issue", "verify"],
        "{:?}",
        at_issue.lock().unwrap()
    );
    assert_eq!(with_token(&store), ["g00"]);
    // The unstored answer's intent stays open: LINE issued a token nobody
    // recorded, which the next listing settles.
    assert_eq!(store.open_intents().unwrap().len(), 1);
}

/// LINE takes two minutes for each of the first three issues: the listing
/// the round was decided on is then over five minutes old
/// (`reconcile_max_age_before_issue`), so the fourth waits for a fresh
/// listing, and the rest of the channel follows in a second round.
#[tokio::test]
async fn a_round_stops_when_its_listing_is_too_old_to_issue_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("linetokd.db");
    let clock = support::manual_clock();
    let (mock, _) = mock_line_on(
        db.clone(),
        |_| IssueAnswer::Token,
        Some((clock.clone(), chrono::Duration::minutes(2), 3)),
    )
    .await;
    let (rotator, store) = rotator_on(&db, &mock.base_url, clock);

    rotator.pass(&CancellationToken::new()).await.unwrap();

    let paths = paths(&mock);
    let mut want = vec!["list"];
    want.extend(["issue", "verify"].repeat(3));
    want.push("list");
    want.extend(["issue", "verify"].repeat(3));
    let tokens: Vec<(String, String)> = store
        .live_tokens_of_channel(&ChannelId::new(CHANNEL))
        .unwrap()
        .into_iter()
        .map(|t| (t.group.to_string(), t.record.key_id.to_string()))
        .collect();
    assert_eq!(paths, want, "{tokens:?}");
    assert_eq!(with_token(&store).len(), GROUPS);
}
