//! End to end, what an operator relies on across a crash and a broken disk:
//! a `linetokd revoke` the daemon accepted survives `kill -9` and is carried
//! out after the restart (issue 8, "operator requests live only in
//! memory"), and a database deleted under a running daemon stops it with
//! exit 1 and the file's name instead of tokens stored where nobody will
//! find them.
//!
//! Both drive the real binary against the sandbox process ([`Lab`]) and
//! wait on the daemon's log lines, never on time.

use serde_json::{Value, json};

use super::harness::{CHANNEL, Lab, Proc};
use super::{DEBUG, STEADY, issued, pass_done, wait_issued};

/// `linetokd status --json`, parsed.
async fn status_json(lab: &Lab) -> Value {
    let mut status = lab.cli("status", &["status", "--json"]).await;
    status.exit_ok().await;
    let stdout: String = status
        .lines()
        .into_iter()
        .filter(|l| l.stream == super::harness::Stream::Stdout)
        .map(|l| l.text)
        .collect();
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The `pending_requests` of group `group` in a status report.
fn pending_requests(status: &Value, group: &str) -> Vec<Value> {
    let channel = status["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == CHANNEL)
        .unwrap_or_else(|| panic!("no channel {CHANNEL} in {status}"));
    let group = channel["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == group)
        .unwrap_or_else(|| panic!("no group {group} in {channel}"));
    group["pending_requests"]
        .as_array()
        .unwrap_or_else(|| panic!("no pending_requests in {group}"))
        .clone()
}

#[tokio::test]
async fn a_revoke_accepted_before_kill_9_is_carried_out_after_the_restart() {
    let lab = Lab::start(STEADY, "info").await;
    let mut first = lab.run("first run", DEBUG, &[]);
    wait_issued(&first, 1).await;
    let before = lab.tokens().await;
    assert_eq!(before.len(), 2, "{before:?}");
    let owner_a = lab
        .stored()
        .into_iter()
        .find(|t| t.group.as_str() == "a")
        .unwrap()
        .record
        .key_id;

    // LINE's revoke never answers: the incident is accepted and stored, its
    // first step (revoking group a's token) hangs, nothing is carried out.
    lab.set_faults(json!({"endpoints": {"/oauth2/v2.1/revoke": {"hang_rate": 1.0}}}))
        .await;
    let mark = first.mark();
    let config = lab.config.to_str().unwrap().to_owned();
    let mut revoke = Proc::spawn(
        "revoke",
        &[
            "revoke",
            "--channel",
            CHANNEL,
            "--group",
            "a",
            "--config",
            &config,
        ],
        &[],
    );
    first
        .wait_for(mark, "the incident to be accepted", |l| {
            l.begins("incident declared over the control socket")
        })
        .await;

    // `status` shows the request while the daemon works on it.
    let status = status_json(&lab).await;
    let pending = pending_requests(&status, "a");
    assert_eq!(pending.len(), 1, "{status}");
    assert_eq!(pending[0]["kind"], "incident", "{status}");
    assert!(pending_requests(&status, "b").is_empty(), "{status}");

    first.kill9().await;
    assert_eq!(
        first.count(mark, issued("a")),
        0,
        "the incident was not finished"
    );
    // The client's answer died with the daemon: it says so and exits 1.
    let answer = revoke.exit().await;
    assert_eq!(answer.code(), Some(1), "{}", revoke.all_text());
    // Nothing happened at LINE: group a's token is still live.
    let at_kill = lab.tokens().await;
    assert_eq!(at_kill.len(), 2, "{at_kill:?}");
    assert!(at_kill.iter().all(|t| t.state == "live"), "{at_kill:?}");
    // The request outlived the process.
    let status = status_json(&lab).await;
    assert_eq!(pending_requests(&status, "a").len(), 1, "{status}");

    lab.set_faults(json!({})).await;
    let mut second = lab.run("second run", DEBUG, &[]);
    let (_, fresh) = second
        .wait_for(0, "the incident's token", issued("a"))
        .await;
    assert_eq!(
        fresh.field("reason").as_deref(),
        Some("incident"),
        "{}",
        fresh.text
    );
    let fresh_key = fresh.field("key_id").unwrap();
    second.signal("TERM");
    second.exit_ok().await;

    // At LINE: group a's old token revoked, its fresh one live; group b's
    // token untouched; nothing else issued.
    let tokens = lab.tokens().await;
    assert_eq!(tokens.len(), 3, "{tokens:?}");
    let state = |key: &str| {
        tokens
            .iter()
            .find(|t| t.key_id == key)
            .map(|t| t.state.clone())
            .unwrap_or_else(|| panic!("{key} not at the sandbox: {tokens:?}"))
    };
    assert_eq!(state(owner_a.as_str()), "revoked");
    assert_eq!(state(&fresh_key), "live");
    for b in before.iter().filter(|t| t.key_id != owner_a.as_str()) {
        assert_eq!(state(&b.key_id), "live", "group b was touched");
    }
    // And the request is closed: nothing pending any more.
    let status = status_json(&lab).await;
    assert!(pending_requests(&status, "a").is_empty(), "{status}");
    lab.assert_nothing_secret_printed(&[&first, &second, &revoke])
        .await;
}

#[tokio::test]
async fn a_database_deleted_under_the_daemon_stops_it_with_exit_1_naming_the_file() {
    let lab = Lab::start(STEADY, "info").await;
    let mut daemon = lab.run("daemon", DEBUG, &[]);
    wait_issued(&daemon, 1).await;
    // The first pass is over (its alerts written): from here only the
    // rotate below writes, so it is what meets the missing file.
    daemon.wait_for(0, "the first pass's end", pass_done).await;
    let mark = daemon.mark();

    std::fs::remove_file(&lab.db).unwrap();
    // A write: the operator asks for a rotation.
    let rotate = lab.cli("rotate", &["rotate", "--channel", CHANNEL]).await;

    let status = daemon.exit().await;
    assert_eq!(status.code(), Some(1), "{}", daemon.all_text());
    let text = daemon.all_text();
    let path = lab.db.display().to_string();
    let named = daemon
        .lines()
        .iter()
        .skip(mark)
        .any(|l| l.text.contains("deleted or replaced") && l.text.contains(&path));
    assert!(named, "no error naming {path}:\n{text}");
    assert_eq!(
        daemon.count(mark, |l| l.is("issuing a token")),
        0,
        "nothing is issued into an unlinked database:\n{text}"
    );
    // The rotate was not carried out either, and said so.
    let answer = rotate.all_text();
    assert!(answer.contains("deleted or replaced"), "{answer}");
    assert_eq!(lab.tokens().await.len(), 2);
    // The database is not silently recreated.
    assert!(!lab.db.exists());
    lab.assert_nothing_secret_printed(&[&daemon, &rotate]).await;
}
