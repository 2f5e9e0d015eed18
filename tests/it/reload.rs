//! Live reload of the real daemon against the sandbox (issue 5, item 3):
//! a group added by editing the file is issued a token (the file watch, no
//! signal); a group removed (then SIGHUP) keeps its tokens for
//! `removal_grace`, then they are revoked at LINE and its sink deleted; an
//! invalid edit leaves the old config in force, and the log, `/metrics`
//! and `linetokd status` all say so.
//!
//! The config file is replaced the way editors save (a temp file renamed
//! over it). Every wait is on a log line of the daemon (JSON, debug).

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use crate::e2e::harness::{CHANNEL, Lab, Line, Stream, http_url};
use crate::observability::{
    DEBUG, STEADY, client, group_toml, issued, linetokd, printed, readyz, scrape, sink_path,
    sink_written, status_json,
};

/// The API key of group `a`, which the token API must keep honouring.
const KEY_A: &str = "reload-api-key-a";

/// A predicate: a reload began for `cause`.
fn reloading(cause: &str) -> impl Fn(&Line) -> bool + '_ {
    move |l| l.is_with("reloading the config", "cause", cause)
}

/// When a JSON log line was written.
fn logged_at(line: &Line) -> DateTime<Utc> {
    let at = line
        .field("timestamp")
        .expect("JSON lines carry a timestamp");
    DateTime::parse_from_rfc3339(&at)
        .unwrap()
        .with_timezone(&Utc)
}

#[tokio::test]
async fn reload_adds_removes_after_grace_and_survives_an_invalid_edit() {
    let lab = Lab::start(STEADY, "info").await;
    let a = group_toml(&lab, "a", Some(KEY_A));
    let b = group_toml(&lab, "b", None);
    let c = group_toml(&lab, "c", None);
    lab.replace_config(&lab.config_text(STEADY, &format!("{a}{b}")));
    let mut daemon = lab.run("daemon", DEBUG, &[]);
    let url = http_url(&daemon).await;
    for group in ["a", "b"] {
        daemon
            .wait_for(0, "its sink written", sink_written(group))
            .await;
    }
    let (_, first_b) = daemon.wait_for(0, "b's token", issued("b")).await;
    let key_b = first_b.field("key_id").unwrap();
    let (_, first_a) = daemon.wait_for(0, "a's token", issued("a")).await;
    let key_a = first_a.field("key_id").unwrap();

    // 1. Add c by editing the file: the watcher reloads, c is issued and
    //    published. No signal is sent.
    let mark = daemon.mark();
    lab.replace_config(&lab.config_text(STEADY, &format!("{a}{b}{c}")));
    daemon
        .wait_for(
            mark,
            "a reload for the file change",
            reloading("the config file changed"),
        )
        .await;
    daemon
        .wait_for(mark, "c added", |l| {
            l.is_with("group added by reload", "group", "c")
        })
        .await;
    daemon.wait_for(mark, "c's token", issued("c")).await;
    daemon
        .wait_for(mark, "c's sink written", sink_written("c"))
        .await;
    let sink_c: Value =
        serde_json::from_str(&std::fs::read_to_string(sink_path(&lab, "c")).unwrap()).unwrap();
    assert_eq!(sink_c["group"], "c");
    assert_eq!(sink_c["channel"], CHANNEL);
    assert_eq!(
        daemon.count(mark, reloading("SIGHUP")),
        0,
        "the file watch alone reloaded"
    );

    // 2. Remove b with a 3 s grace, and tell the daemon with SIGHUP (the
    //    watcher may reload as well: a second reload finds nothing new).
    let mark = daemon.mark();
    let grace = format!("{STEADY}removal_grace = \"3s\"\n");
    let without_b = lab.config_text(&grace, &format!("{a}{c}"));
    lab.replace_config(&without_b);
    daemon.signal("HUP");
    daemon
        .wait_for(mark, "a reload for SIGHUP", reloading("SIGHUP"))
        .await;
    let (_, removed) = daemon
        .wait_for(mark, "b removed", |l| {
            l.begins("group removed by reload") && l.field("group").as_deref() == Some("b")
        })
        .await;
    let (_, revoked) = daemon
        .wait_for(mark, "b's token revoked", |l| {
            l.is_with("token revoked", "group", "b")
        })
        .await;
    assert_eq!(revoked.field("key_id").as_deref(), Some(key_b.as_str()));
    daemon
        .wait_for(mark, "b's sink deleted", |l| {
            l.is_with("sink of a removed group deleted", "group", "b")
        })
        .await;
    assert!(!sink_path(&lab, "b").exists(), "b's sink is gone");
    assert!(sink_path(&lab, "a").exists() && sink_path(&lab, "c").exists());
    assert_eq!(
        daemon.count(mark, |l| l.begins("group removed by reload")),
        1,
        "b is removed once, whatever reloads"
    );
    // At LINE: b's token revoked, no earlier than the grace allows (the
    // store keeps whole seconds, so up to a second less), a's untouched.
    let tokens = lab.tokens().await;
    let at_line = |key: &str| tokens.iter().find(|t| t.key_id == key).unwrap().clone();
    let b_at_line = at_line(&key_b);
    assert_eq!(b_at_line.state, "revoked", "{b_at_line:?}");
    let revoked_at = b_at_line.revoked_at.unwrap();
    assert!(
        revoked_at >= logged_at(&removed) + Duration::seconds(2),
        "revoked at {revoked_at}, removed at {}",
        logged_at(&removed)
    );
    assert!(logged_at(&revoked) >= logged_at(&removed) + Duration::seconds(2));
    assert_eq!(at_line(&key_a).state, "live");

    // 3. An invalid edit: rotate_before longer than token_lifetime.
    let valid = lab.dir().join("valid.toml");
    std::fs::write(&valid, &without_b).unwrap();
    let reloads_before = scrape(&url)
        .await
        .get("linetokd_config_reloads_total", &[("result", "success")])
        .unwrap();
    assert!(reloads_before >= 2.0, "{reloads_before}");
    let mark = daemon.mark();
    let invalid = grace.replace("rotate_before = \"1m\"", "rotate_before = \"20m\"");
    assert_ne!(invalid, grace);
    lab.replace_config(&lab.config_text(&invalid, &format!("{a}{c}")));
    let (_, failed) = daemon
        .wait_for(mark, "the failed reload", |l| {
            l.is("config reload failed; the previous config stays in force")
        })
        .await;
    assert_eq!(failed.field("level").as_deref(), Some("ERROR"));
    let error = failed.field("error").unwrap();
    assert!(error.contains("rotation.rotate_before"), "{error}");

    // Still running on the old config: ready, a's token served with a's key.
    let (status, body) = readyz(&url).await;
    assert_eq!(status, 200, "{body}");
    let served = client()
        .get(format!("{url}/v1/channels/{CHANNEL}/groups/a/token"))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let served: Value = served.json().await.unwrap();
    assert_eq!(served["key_id"], key_a.as_str());
    let metrics = scrape(&url).await;
    assert_eq!(
        metrics.get("linetokd_config_reloads_total", &[("result", "failure")]),
        Some(1.0)
    );
    assert_eq!(
        metrics.get("linetokd_config_reloads_total", &[("result", "success")]),
        Some(reloads_before)
    );

    // `status` (run with the last valid config: it refuses the invalid
    // one) shows the failed reload.
    let (code, status) = linetokd(
        "status",
        &["status", "--config", valid.to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{}", status.all_text());
    let table = printed(&status, Stream::Stdout);
    let reload_line = table
        .lines()
        .find(|l| l.starts_with("last config reload at "))
        .unwrap_or_else(|| panic!("no reload line in\n{table}"));
    assert!(
        reload_line.contains(": failed (the config file changed): ")
            && reload_line.contains("rotation.rotate_before"),
        "{reload_line}"
    );
    let report = status_json(&valid).await;
    assert_eq!(
        report["last_reload"]["ok"], false,
        "{}",
        report["last_reload"]
    );
    let outcome = report["last_reload"]["outcome"].as_str().unwrap();
    assert!(outcome.contains("rotation.rotate_before"), "{outcome}");

    // `status` and `health` against the live, invalid file: the file's
    // problem as a warning, and the report from the config the daemon runs
    // on (its copy in the state directory): a half-finished edit does not
    // lock the operator out of a running daemon.
    let (code, refused) = linetokd(
        "status-invalid",
        &["status", "--config", lab.config.to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{}", refused.all_text());
    let said = printed(&refused, Stream::Stderr);
    assert!(
        said.contains("rotation.rotate_before")
            && said.contains("using the config the running daemon loaded"),
        "{said}"
    );
    assert!(
        printed(&refused, Stream::Stdout).contains(": failed (the config file changed): "),
        "{}",
        refused.all_text()
    );
    let (code, health) = linetokd(
        "health-invalid",
        &["health", "--config", lab.config.to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{}", health.all_text());
    // Without the daemon's copy: exit 2 with the problem, and the
    // daemon's refusal of it.
    std::fs::remove_file(lab.dir().join(linetokd::app::CONFIG_IN_FORCE)).unwrap();
    let (code, no_copy) = linetokd(
        "status-no-copy",
        &["status", "--config", lab.config.to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(code, 2, "{}", no_copy.all_text());
    let said = printed(&no_copy, Stream::Stderr);
    assert!(
        said.contains("rotation.rotate_before")
            && said.contains("the running daemon's last config reload at")
            && said.contains("previous config in force"),
        "{said}"
    );

    daemon.signal("TERM");
    daemon.exit_ok().await;
    lab.assert_nothing_secret_printed(&[&daemon, &status, &refused, &health, &no_copy])
        .await;
}

/// Bug: the daemon began watching the config file only after its first
/// pass, so an edit saved while the first tokens were being issued was
/// never applied (seen as a reload test that waited forever under load).
/// Here LINE answers slowly, so the edit lands inside the first pass by
/// construction.
#[tokio::test]
async fn a_config_edit_during_the_first_pass_is_not_missed() {
    let lab = Lab::start(STEADY, "info").await;
    let a = group_toml(&lab, "a", None);
    let c = group_toml(&lab, "c", None);
    lab.replace_config(&lab.config_text(STEADY, &a));
    lab.set_faults(json!({"endpoints": {"/oauth2/v2.1/token": {"latency_ms": 3000}}}))
        .await;
    let mut daemon = lab.run("daemon", DEBUG, &[]);
    daemon
        .wait_for(0, "the first issue begun", |l| {
            l.is_with("issuing a token", "group", "a")
        })
        .await;
    lab.replace_config(&lab.config_text(STEADY, &format!("{a}{c}")));
    lab.set_faults(json!({})).await;
    daemon
        .wait_for(
            0,
            "a reload for the file change",
            reloading("the config file changed"),
        )
        .await;
    daemon.wait_for(0, "c's token", issued("c")).await;
    daemon
        .wait_for(0, "c's sink written", sink_written("c"))
        .await;
    daemon.signal("TERM");
    daemon.exit_ok().await;
    lab.assert_nothing_secret_printed(&[&daemon]).await;
}

/// A predicate: the daemon logged `config_reload_failed` raised.
fn reload_alert_raised(l: &Line) -> bool {
    l.field("alert").as_deref() == Some("config_reload_failed")
        && l.field("level").as_deref() == Some("WARN")
}

/// A predicate: the daemon logged `config_reload_failed` resolved.
fn reload_alert_resolved(l: &Line) -> bool {
    l.field("alert").as_deref() == Some("config_reload_failed") && l.begins("alert resolved")
}

/// The daemon-wide alerts `linetokd status --json` lists, after checking
/// that no channel lists `config_reload_failed` as its own.
async fn daemon_alerts(config: &std::path::Path) -> Vec<Value> {
    let report = status_json(config).await;
    for channel in report["channels"].as_array().unwrap() {
        let firing = channel["firing"].as_array().unwrap();
        assert!(
            firing
                .iter()
                .all(|a| a["alertname"] != "config_reload_failed"),
            "{channel}"
        );
    }
    report["alerts"].as_array().unwrap().clone()
}

/// Issue 10: a rejected reload (a file change or SIGHUP) raises the
/// daemon-wide `config_reload_failed` naming the problem, which `status`
/// shows (JSON and text); the next good reload resolves it, and so does a
/// start with a valid config after a run that left it firing.
#[tokio::test]
async fn a_rejected_reload_raises_config_reload_failed_until_a_good_load() {
    let lab = Lab::start(STEADY, "info").await;
    let a = group_toml(&lab, "a", None);
    let good = lab.config_text(STEADY, &a);
    lab.replace_config(&good);
    let valid = lab.dir().join("valid.toml");
    std::fs::write(&valid, &good).unwrap();
    let mut daemon = lab.run("daemon", DEBUG, &[]);
    daemon
        .wait_for(0, "a's sink written", sink_written("a"))
        .await;
    assert!(daemon_alerts(&valid).await.is_empty());

    // 1. A bad edit, applied by the file watch.
    let mark = daemon.mark();
    let invalid = STEADY.replace("rotate_before = \"1m\"", "rotate_before = \"20m\"");
    assert_ne!(invalid, STEADY);
    lab.replace_config(&lab.config_text(&invalid, &a));
    daemon
        .wait_for(mark, "the failed reload", |l| {
            l.is("config reload failed; the previous config stays in force")
        })
        .await;
    daemon
        .wait_for(mark, "the alert raised", reload_alert_raised)
        .await;
    let alerts = daemon_alerts(&valid).await;
    let [alert] = alerts.as_slice() else {
        panic!("one daemon-wide alert expected: {alerts:#?}")
    };
    assert_eq!(alert["alertname"], "config_reload_failed");
    assert_eq!(alert["severity"], "warning");
    assert_eq!(alert["group"], Value::Null);
    assert_eq!(alert["label"], Value::Null);
    let summary = alert["summary"].as_str().unwrap();
    assert!(
        summary.starts_with(
            "the config reload (the config file changed) was rejected and the previous \
             config stays in force: "
        ) && summary.contains("rotation.rotate_before"),
        "{summary}"
    );
    // The text output shows it on a line of its own.
    let (code, status) = linetokd(
        "status",
        &["status", "--config", valid.to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{}", status.all_text());
    let table = printed(&status, Stream::Stdout);
    let lines: Vec<&str> = table
        .lines()
        .filter(|l| l.contains("config_reload_failed"))
        .collect();
    let [line] = lines.as_slice() else {
        panic!("one alert line expected in\n{table}")
    };
    assert!(
        line.starts_with("firing since ")
            && line.contains(&format!(": WARNING config_reload_failed: {summary}")),
        "{line}"
    );

    // 2. The file is put right: the reload resolves the alert.
    let mark = daemon.mark();
    lab.replace_config(&good);
    daemon
        .wait_for(mark, "the alert resolved", reload_alert_resolved)
        .await;
    assert!(daemon_alerts(&valid).await.is_empty());

    // 3. SIGHUP while the channel's secret file is missing (the file watch
    //    sees no change to the config itself): raised again, naming it.
    let secret = lab.dir().join("chan.secret");
    let away = lab.dir().join("chan.secret.away");
    std::fs::rename(&secret, &away).unwrap();
    let mark = daemon.mark();
    daemon.signal("HUP");
    daemon
        .wait_for(mark, "the alert raised for SIGHUP", reload_alert_raised)
        .await;
    std::fs::rename(&away, &secret).unwrap();
    let alerts = daemon_alerts(&valid).await;
    let [alert] = alerts.as_slice() else {
        panic!("one daemon-wide alert expected: {alerts:#?}")
    };
    let summary = alert["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("the config reload (SIGHUP) was rejected")
            && summary.contains(secret.to_str().unwrap()),
        "{summary}"
    );

    // 4. The daemon stops with it firing; status still shows it (it is in
    //    the store). A start with a valid config resolves it.
    daemon.signal("TERM");
    daemon.exit_ok().await;
    assert_eq!(daemon_alerts(&valid).await.len(), 1);
    let mut again = lab.run("daemon-again", DEBUG, &[]);
    again
        .wait_for(0, "the alert resolved at start", reload_alert_resolved)
        .await;
    assert!(daemon_alerts(&valid).await.is_empty());
    again.signal("TERM");
    again.exit_ok().await;
    lab.assert_nothing_secret_printed(&[&daemon, &again, &status])
        .await;
}

/// Found in review: a reload saved the config in force into the state
/// directory the *new* file names, though a `[daemon]` change takes effect
/// only at a restart, while the daemon removes the copy from its own when
/// it stops: the copy went where no running daemon is and stayed there.
#[tokio::test]
async fn a_reload_keeps_the_config_in_force_where_the_running_daemon_keeps_its_state() {
    let lab = Lab::start(STEADY, "info").await;
    let a = group_toml(&lab, "a", None);
    lab.replace_config(&lab.config_text(STEADY, &a));
    let mut daemon = lab.run("daemon", DEBUG, &[]);
    daemon.wait_for(0, "a's token", issued("a")).await;
    let in_force = lab.dir().join(linetokd::app::CONFIG_IN_FORCE);
    assert!(in_force.exists());

    // Found by an outside tester: with a TOML syntax error in a channel
    // entry the commands did not find the copy (the README says a
    // half-finished edit never locks the operator out).
    let original = lab.config_text(STEADY, &a);
    let mark = daemon.mark();
    lab.replace_config(&format!("{original}\n[[channel.group\nname = \"broken\"\n"));
    daemon
        .wait_for(mark, "the broken file refused", |l| {
            l.is("config reload failed; the previous config stays in force")
        })
        .await;
    let (code, status) = linetokd(
        "status-syntax-error",
        &["status", "--config", lab.config.to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{}", status.all_text());
    assert!(
        printed(&status, Stream::Stderr).contains("using the config the running daemon loaded"),
        "{}",
        status.all_text()
    );

    let elsewhere = tempfile::tempdir().unwrap();
    let state = lab.dir().to_str().unwrap().to_owned();
    let text = lab.config_text(STEADY, &a).replace(
        &format!("state_dir = \"{state}\""),
        &format!("state_dir = \"{}\"", elsewhere.path().display()),
    );
    assert_ne!(
        text,
        lab.config_text(STEADY, &a),
        "the edit must move state_dir"
    );
    let mark = daemon.mark();
    lab.replace_config(&text);
    daemon
        .wait_for(mark, "the reload applied", |l| l.is("config reloaded"))
        .await;
    assert_eq!(std::fs::read_to_string(&in_force).unwrap(), text);
    let moved = elsewhere.path().join(linetokd::app::CONFIG_IN_FORCE);
    assert!(!moved.exists(), "a copy was left in the new state_dir");

    daemon.signal("TERM");
    daemon.exit_ok().await;
    assert!(!in_force.exists(), "the copy outlived the daemon");
    lab.assert_nothing_secret_printed(&[&daemon, &status]).await;
}
