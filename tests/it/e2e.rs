//! End to end: the real `linetokd` binary and the sandbox as separate
//! processes, talking HTTP over loopback, as an operator would run them.
//!
//! Each test builds its own [`Lab`] (temp dir, keys from `linetokd keygen`,
//! a sandbox on a free port, a daemon config) and drives `linetokd run`
//! with signals, `kill -9` and restarts. It waits on the daemon's own log
//! lines (JSON, `RUST_LOG=debug`) and checks the outcome from outside: the
//! sandbox's inspection API is the truth at LINE, the database (opened
//! read-only) what the daemon recorded. Every test ends by searching all
//! output for every token the sandbox issued.
//!
//! Lifetimes are seconds long so a rotation happens within a test; no test
//! sleeps: every wait is on a log line, an exit, or a reply.

mod ha;
mod ha_faults;
mod ha_many;
pub mod harness;
mod operator;
mod postgres;

use std::collections::HashMap;

use linetokd::domain::{ChannelId, TokenState};
use serde_json::json;

use self::harness::{GROUPS, Lab, Line, Proc, SandboxToken, assert_nothing_secret_in};

/// Tokens that rotate every 5 to 6 seconds; the next rotation comes while
/// the oldest token still lives, so the daemon must revoke it first to keep
/// a group at two. Verify and reconcile run often.
const ROTATING: &str = r#"
token_lifetime = "16s"
rotate_before = "10s"
rotation_jitter = "1s"
verify_interval = "3s"
reconcile_interval = "4s"
max_issues_per_hour = 1000
"#;

/// Tokens that rotate 3 to 4 seconds after issue; no verify or reconcile
/// comes in between (they would touch the faults a test sets up).
const ROTATING_QUIETLY: &str = r#"
token_lifetime = "12s"
rotate_before = "8s"
rotation_jitter = "1s"
verify_interval = "1h"
reconcile_interval = "1h"
max_issues_per_hour = 1000
"#;

/// Nothing is due for minutes after the first issuance.
const STEADY: &str = r#"
token_lifetime = "10m"
rotate_before = "1m"
rotation_jitter = "1s"
verify_interval = "1h"
reconcile_interval = "1h"
"#;

/// The daemon's log level in most tests: debug shows "issuing a token",
/// "LINE request" and "pass done", which the tests wait on.
const DEBUG: &str = "debug";

/// A predicate: the daemon issued (and stored) a token for `group`.
fn issued(group: &str) -> impl Fn(&Line) -> bool + '_ {
    move |l| l.is_with("token issued", "group", group)
}

/// A predicate: a scheduler pass finished.
fn pass_done(l: &Line) -> bool {
    l.is("pass done")
}

/// Waits until every group has had `n` tokens issued.
async fn wait_issued(daemon: &Proc, n: usize) {
    for group in GROUPS {
        daemon
            .wait_for_n(
                0,
                n,
                &format!("{n} tokens issued for group {group}"),
                issued(group),
            )
            .await;
    }
}

/// The store's group for each key ID it holds.
fn owners(lab: &Lab) -> HashMap<String, String> {
    lab.stored()
        .into_iter()
        .map(|t| {
            (
                t.record.key_id.as_str().to_owned(),
                t.group.as_str().to_owned(),
            )
        })
        .collect()
}

/// Asserts that the sandbox issued nothing the store does not hold, with the
/// same value: no token was ever lost between LINE's answer and the disk.
fn assert_every_token_stored(lab: &Lab, tokens: &[SandboxToken]) {
    let stored: HashMap<String, String> = lab
        .stored()
        .into_iter()
        .map(|t| {
            (
                t.record.key_id.as_str().to_owned(),
                t.value.expose().to_owned(),
            )
        })
        .collect();
    for t in tokens {
        assert_eq!(
            stored.get(&t.key_id),
            Some(&t.access_token),
            "the sandbox issued {} but the store does not hold it",
            t.key_id
        );
    }
}

#[tokio::test]
async fn first_start_issues_then_short_lifetimes_rotate_and_never_three_live() {
    let lab = Lab::start(ROTATING, "debug").await;
    let mut daemon = lab.run("daemon", DEBUG, &[]);

    // First start: one token per group, live at LINE, stored with its value.
    wait_issued(&daemon, 1).await;
    let tokens = lab.tokens().await;
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    assert!(tokens.iter().all(|t| t.state == "live"), "{tokens:?}");
    let stored = lab.stored();
    assert_eq!(stored.len(), 2);
    assert_ne!(stored[0].group, stored[1].group);
    assert!(stored.iter().all(|t| t.record.state == TokenState::Live));
    assert_every_token_stored(&lab, &tokens);

    // Rotation, lifetime - rotate_before later: a new token per group and
    // the old one still live for consumers that have not switched.
    wait_issued(&daemon, 2).await;
    let tokens = lab.tokens().await;
    let owner = owners(&lab);
    for group in GROUPS {
        let live: Vec<&SandboxToken> = tokens
            .iter()
            .filter(|t| {
                owner.get(&t.key_id).map(String::as_str) == Some(group) && t.state == "live"
            })
            .collect();
        assert_eq!(live.len(), 2, "group {group}: {tokens:?}");
    }

    // The next rotation comes while the oldest still lives: it must go first.
    wait_issued(&daemon, 3).await;
    daemon.signal("TERM");
    daemon.exit_ok().await;

    // The whole history at LINE: at no issue instant did a group hold three
    // live tokens, and everything LINE issued is in the store.
    let tokens = lab.tokens().await;
    let owner = owners(&lab);
    assert_every_token_stored(&lab, &tokens);
    for group in GROUPS {
        let mine: Vec<&SandboxToken> = tokens
            .iter()
            .filter(|t| owner.get(&t.key_id).map(String::as_str) == Some(group))
            .collect();
        assert!(mine.len() >= 3, "group {group}: {mine:?}");
        for t in &mine {
            let live = mine.iter().filter(|o| o.live_at(t.issued_at)).count();
            assert!(
                live <= 2,
                "group {group} had {live} live tokens when {} was issued: {mine:?}",
                t.key_id
            );
        }
    }
    // Revoked at LINE exactly when the store says so.
    let store = lab.stored();
    for t in &tokens {
        let s = store
            .iter()
            .find(|s| s.record.key_id.as_str() == t.key_id)
            .unwrap();
        assert_eq!(
            t.state == "revoked",
            s.record.state == TokenState::Revoked,
            "{t:?} vs {s:?}"
        );
    }
    assert!(
        tokens.iter().any(|t| t.state == "revoked"),
        "the make-room path ran: {tokens:?}"
    );
    lab.assert_nothing_secret_printed(&[&daemon]).await;
}

#[tokio::test]
async fn a_restart_keeps_every_token_and_issues_nothing_until_due() {
    let lab = Lab::start(STEADY, "info").await;
    let mut first = lab.run("first run", DEBUG, &[]);
    let (done, _) = first.wait_for(0, "the first pass", pass_done).await;
    assert_eq!(first.count(0, |l| l.is("token issued")), 2);
    first.signal("TERM");
    first.exit_ok().await;
    assert!(first.find(done, |l| l.is("stopped")).is_some());
    let tokens_before = lab.tokens().await;
    let stored_before = lab.stored();
    assert_eq!(tokens_before.len(), 2);
    assert_eq!(stored_before.len(), 2);

    let mut second = lab.run("second run", DEBUG, &[]);
    second
        .wait_for(0, "the first pass after the restart", pass_done)
        .await;
    assert_eq!(
        second.count(0, |l| l.is("issuing a token")),
        0,
        "the restart issued a token:\n{}",
        second.all_text()
    );
    assert_eq!(
        second.count(0, |l| l.begins("an issuance was in flight")),
        0
    );
    second.signal("TERM");
    second.exit_ok().await;

    // LINE and the store are exactly as before the restart.
    let tokens_after = lab.tokens().await;
    assert_eq!(
        tokens_after
            .iter()
            .map(|t| (&t.key_id, &t.state))
            .collect::<Vec<_>>(),
        tokens_before
            .iter()
            .map(|t| (&t.key_id, &t.state))
            .collect::<Vec<_>>()
    );
    assert_eq!(lab.stored(), stored_before);
    lab.assert_nothing_secret_printed(&[&first, &second]).await;
}

/// Starts a daemon, lets it issue each group's first token, sets `fault`
/// on the sandbox, and kills the daemon with SIGKILL once the rotation's
/// issuance is in flight (`after_answer`: once LINE has answered it, while
/// the daemon verifies the new token; otherwise while LINE has not). Then
/// restarts it and checks that nothing stored was lost and the lost
/// issuance was reported. Returns the key ID of the token LINE issued for
/// the lost issuance, if it did.
async fn kill_9_during_an_issuance(fault: serde_json::Value, after_answer: bool) -> Option<String> {
    let lab = Lab::start(ROTATING_QUIETLY, "info").await;
    let mut first = lab.run("first run", DEBUG, &[]);
    wait_issued(&first, 1).await;
    lab.set_faults(fault).await;
    let mark = first.mark();
    let (at, issuing) = first
        .wait_for(mark, "the rotation's issuance to start", |l| {
            l.is("issuing a token")
        })
        .await;
    let group = issuing.field("group").unwrap();
    let intent = issuing.field("intent").unwrap();
    if after_answer {
        first
            .wait_for(at, "LINE's answer to the issue", |l| {
                l.is_with("LINE request", "endpoint", "v21_issue")
                    && l.field("status").as_deref() == Some("200")
            })
            .await;
    }
    first.kill9().await;
    assert_eq!(
        first.count(mark, issued(&group)),
        0,
        "the issuance was not finished"
    );

    // What the crash left: the tokens stored before, an open intent, and
    // perhaps a token at LINE that the database never got.
    let stored_before = lab.stored();
    assert_eq!(stored_before.len(), 2);
    let open = lab.store().open_intents().unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].id.to_string(), intent);
    assert_eq!(open[0].group.as_str(), group);
    let tokens = lab.tokens().await;
    let unstored: Vec<&SandboxToken> = tokens
        .iter()
        .filter(|t| {
            !stored_before
                .iter()
                .any(|s| s.record.key_id.as_str() == t.key_id)
        })
        .collect();
    assert_eq!(unstored.len(), usize::from(after_answer), "{tokens:?}");
    let lost_key_id = unstored.first().map(|t| t.key_id.clone());

    lab.set_faults(json!({})).await;
    let mut second = lab.run("second run", DEBUG, &[]);
    let (_, warning) = second
        .wait_for(0, "the lost issuance to be reported", |l| {
            l.begins("an issuance was in flight when linetokd last stopped")
        })
        .await;
    assert_eq!(warning.field("level").as_deref(), Some("WARN"));
    assert_eq!(warning.field("intent").as_deref(), Some(intent.as_str()));
    assert_eq!(warning.field("group").as_deref(), Some(group.as_str()));
    let (reconciled, report) = second
        .wait_for(0, "the reconcile after the restart", |l| {
            l.is("reconciled with LINE")
        })
        .await;
    assert_eq!(
        report.field("foreign").as_deref(),
        Some(if after_answer { "1" } else { "0" })
    );
    if let Some(key_id) = &lost_key_id {
        // The token LINE issued for the lost issuance is named, at once.
        let (_, foreign) = second
            .wait_for(0, "the lost token to be reported as foreign", |l| {
                l.begins("foreign token") && l.field("key_id").as_deref() == Some(key_id)
            })
            .await;
        assert_eq!(foreign.field("level").as_deref(), Some("WARN"));
        let kids = lab
            .store()
            .foreign_kids(&ChannelId::new(harness::CHANNEL))
            .unwrap();
        assert_eq!(kids.len(), 1);
        assert_eq!(kids[0].key_id.as_str(), key_id);
    }
    // The group's rotation then completes, after a single reconcile. The
    // group first waits as after any answer that may have issued (a
    // minute, or less as here where its token's deadline comes first).
    let (rotated, _) = second
        .wait_for(reconciled, "the group's rotation", issued(&group))
        .await;
    let reconciles = second.lines()[..rotated]
        .iter()
        .filter(|l| l.is_with("LINE request", "endpoint", "v21_key_ids"))
        .count();
    assert_eq!(reconciles, 1, "{}", second.all_text());
    // The alerts tell the operator the same: with a token LINE issued for
    // the lost attempt, `lost_token` names it as a candidate and it is a
    // `foreign_token`; without one, the listing proved nothing was lost.
    let firing = lab.store().firing_alerts().unwrap();
    let lost: Vec<_> = firing
        .iter()
        .filter(|a| a.alertname == "lost_token")
        .collect();
    let foreign: Vec<_> = firing
        .iter()
        .filter(|a| a.alertname == "foreign_token")
        .collect();
    match &lost_key_id {
        Some(key_id) => {
            assert_eq!(lost.len(), 1, "{firing:#?}");
            assert_eq!(
                lost[0].group.as_ref().map(|g| g.as_str()),
                Some(group.as_str())
            );
            assert!(
                lost[0].summary.contains(key_id.as_str()),
                "{}",
                lost[0].summary
            );
            assert_eq!(foreign.len(), 1, "{firing:#?}");
            assert_eq!(
                foreign[0].label,
                Some(("key_id".to_owned(), key_id.clone()))
            );
        }
        None => assert!(lost.is_empty() && foreign.is_empty(), "{firing:#?}"),
    }
    second.signal("TERM");
    second.exit_ok().await;

    // Nothing stored before the crash was lost or changed.
    let store = lab.store();
    for before in &stored_before {
        let now = store.token(&before.record.key_id).unwrap().unwrap();
        assert_eq!(now.value.expose(), before.value.expose());
        assert_eq!(now.record.issued_at, before.record.issued_at);
        assert_eq!(now.record.expires_at, before.record.expires_at);
        assert_eq!(now.group, before.group);
    }
    assert!(store.open_intents().unwrap().is_empty());
    lab.assert_nothing_secret_printed(&[&first, &second]).await;
    lost_key_id
}

#[tokio::test]
async fn kill_9_after_line_issued_but_before_storing_loses_nothing_and_reports_the_token() {
    // Verify never answers: LINE has issued the rotation's token, the daemon
    // has not stored it yet.
    let lost = kill_9_during_an_issuance(
        json!({"endpoints": {"/oauth2/v2.1/verify": {"hang_rate": 1.0}}}),
        true,
    )
    .await;
    assert!(lost.is_some());
}

#[tokio::test]
async fn kill_9_while_line_is_issuing_loses_nothing_and_reports_the_issuance() {
    // LINE takes a minute to answer the issue: the daemon dies waiting, and
    // the sandbox, seeing the connection go, never issues.
    let lost = kill_9_during_an_issuance(
        json!({"endpoints": {"/oauth2/v2.1/token": {"latency_ms": 60000}}}),
        false,
    )
    .await;
    assert!(lost.is_none());
}

/// Sends `signal` while LINE is slow to answer the first issuance: the call
/// finishes, its token is stored, and the daemon exits 0 without starting
/// anything new.
async fn a_stop_signal_lets_the_issue_in_flight_finish(signal: &str) {
    let lab = Lab::start(STEADY, "info").await;
    lab.set_faults(json!({"endpoints": {"/oauth2/v2.1/token": {"latency_ms": 2000}}}))
        .await;
    let mut daemon = lab.run("daemon", DEBUG, &[]);
    let (started, issuing) = daemon
        .wait_for(0, "the first issuance to start", |l| {
            l.is("issuing a token")
        })
        .await;
    let group = issuing.field("group").unwrap();
    daemon.signal(signal);
    daemon.exit_ok().await;

    let stop = daemon
        .find(started, |l| l.is("stop requested"))
        .expect("the stop is logged");
    assert_eq!(
        daemon.lines()[stop].field("signal").as_deref(),
        Some(format!("SIG{signal}").as_str())
    );
    let finished = daemon.find(stop, issued(&group)).unwrap_or_else(|| {
        panic!(
            "the issue in flight did not finish after the stop:\n{}",
            daemon.all_text()
        )
    });
    assert!(daemon.find(finished, |l| l.is("stopped")).is_some());
    assert_eq!(
        daemon.count(started + 1, |l| l.is("issuing a token")),
        0,
        "nothing new starts after the stop"
    );

    // The one token LINE issued is stored, and no issuance is left open.
    let tokens = lab.tokens().await;
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_every_token_stored(&lab, &tokens);
    assert_eq!(lab.stored()[0].group.as_str(), group);
    assert!(lab.store().open_intents().unwrap().is_empty());
    lab.assert_nothing_secret_printed(&[&daemon]).await;
}

#[tokio::test]
async fn sigterm_during_a_slow_issue_stores_its_token_and_exits_0() {
    a_stop_signal_lets_the_issue_in_flight_finish("TERM").await;
}

#[tokio::test]
async fn sigint_during_a_slow_issue_stores_its_token_and_exits_0() {
    a_stop_signal_lets_the_issue_in_flight_finish("INT").await;
}

#[tokio::test]
async fn a_second_instance_on_the_same_database_is_refused() {
    let lab = Lab::start(STEADY, "info").await;
    let mut first = lab.run("first daemon", DEBUG, &[]);
    first.wait_for(0, "the first pass", pass_done).await;

    let mut second = lab.run("second daemon", DEBUG, &[]);
    let status = second.exit().await;
    assert_eq!(status.code(), Some(1), "{}", second.all_text());
    let refusal = format!(
        "another linetokd (pid {}) is using {}",
        first.pid(),
        lab.db.display()
    );
    assert!(
        second.all_text().contains(&refusal),
        "expected {refusal:?} in:\n{}",
        second.all_text()
    );
    assert_eq!(second.count(0, |l| l.is("linetokd running")), 0);

    // The first one is undisturbed and still stops cleanly.
    first.signal("TERM");
    first.exit_ok().await;
    assert_eq!(lab.tokens().await.len(), 2);
    lab.assert_nothing_secret_printed(&[&first, &second]).await;
}

#[tokio::test]
async fn no_token_reaches_any_output_of_a_full_run_at_trace_level() {
    let mut lab = Lab::start(ROTATING, "trace").await;
    // Beside the rotating v2.1 groups, a short-lived one: its tokens are
    // issued, verified and logged through their own endpoints.
    let mut groups = String::new();
    for group in GROUPS {
        groups.push_str(&format!("\n  [[channel.group]]\n  name = \"{group}\"\n"));
    }
    groups.push_str("\n  [[channel.group]]\n  name = \"liff\"\n  kind = \"short-lived\"\n");
    lab.replace_config(&lab.config_text(ROTATING, &groups));

    // A run with JSON logs: issue, verify, reconcile, rotate, revoke.
    let mut first = lab.run("first run (json)", "trace", &[]);
    wait_issued(&first, 3).await;
    // A failing LINE call logs its error chain: make verify fail for a while.
    lab.set_faults(json!({"endpoints": {"/oauth2/v2.1/verify": {"error_rate": 1.0}}}))
        .await;
    let mark = first.mark();
    first
        .wait_for(mark, "a failed verify", |l| l.begins("verify failed"))
        .await;
    lab.set_faults(json!({})).await;
    first.signal("TERM");
    first.exit_ok().await;

    // A restart with text logs, until it has rotated once more.
    let mut second = lab.run(
        "second run (text)",
        "trace",
        &[("LINETOKD__DAEMON__LOG_FORMAT", "text")],
    );
    second
        .wait_for(0, "a token issued", |l| l.is("token issued"))
        .await;
    second.signal("INT");
    second.exit_ok().await;

    let tokens = lab.tokens().await;
    lab.stop_sandbox().await;

    // The search is only worth something if the run did all of that.
    assert!(tokens.len() >= 7, "{tokens:?}");
    assert!(
        tokens.iter().any(|t| t.state == "revoked"),
        "a token was revoked"
    );
    assert!(
        tokens.iter().any(|t| t.kind == "short_lived"),
        "a short-lived token was issued"
    );
    assert!(first.count(0, |l| l.field("level").as_deref() == Some("TRACE")) > 0);
    assert!(second.count(0, |l| l.text.contains("TRACE")) > 0);
    for verb in [
        "v21_issue",
        "v21_verify",
        "v21_key_ids",
        "v21_revoke",
        "short_lived_issue",
        "short_lived_verify",
    ] {
        assert!(
            first.count(0, |l| l.is_with("LINE request", "endpoint", verb)) > 0,
            "the run called {verb}"
        );
    }
    assert!(
        lab.sandbox
            .count(0, |l| l.text.contains("sandbox answered"))
            > 0
    );

    assert_nothing_secret_in(&tokens, &[&first, &second, &lab.sandbox, &lab.keygen]);
}
