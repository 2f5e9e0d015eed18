//! End to end on PostgreSQL (issue 12): the real daemon with its store in
//! a database of the test cluster (`[daemon] database_url_file`), against
//! the sandbox process. It issues, rotates and revokes as on SQLite, never
//! holds more than two live tokens per group at the sandbox, stores every
//! token LINE issued, keeps them across a restart, lets `status` read
//! beside it, refuses a second writer, and prints neither a token nor the
//! database password.
//!
//! Each test skips with one printed line when there is no PostgreSQL,
//! unless `LINETOKD_REQUIRE_POSTGRES=1`.

use super::harness::{GROUPS, Lab, Proc, Stream};
use super::{DEBUG, ROTATING, STEADY, assert_every_token_stored, pass_done, wait_issued};

/// No output names the database password (the daemon's role needs one).
fn assert_no_password(procs: &[&Proc]) {
    for proc in procs {
        assert!(
            !proc.all_text().contains(crate::pg_harness::PASSWORD),
            "an output holds the database password:\n{}",
            proc.all_text()
        );
    }
}

fn stdout(proc: &Proc) -> String {
    proc.lines()
        .into_iter()
        .filter(|l| l.stream == Stream::Stdout)
        .map(|l| l.text + "\n")
        .collect()
}

/// No group ever had more than two tokens live at the sandbox at once:
/// checked at every instant a token was issued.
pub(super) fn assert_at_most_two_live(tokens: &[super::harness::SandboxToken], lab: &Lab) {
    let owners: std::collections::HashMap<String, String> = lab
        .stored()
        .into_iter()
        .map(|t| {
            (
                t.record.key_id.as_str().to_owned(),
                t.group.as_str().to_owned(),
            )
        })
        .collect();
    for t in tokens {
        for group in GROUPS {
            let live = tokens
                .iter()
                .filter(|o| owners.get(&o.key_id).map(String::as_str) == Some(group))
                .filter(|o| o.live_at(t.issued_at))
                .count();
            assert!(
                live <= 2,
                "group {group} had {live} live tokens at {}",
                t.issued_at
            );
        }
    }
}

#[tokio::test]
async fn on_postgres_the_daemon_issues_rotates_and_keeps_two_per_group() {
    let Some(lab) = Lab::start_on_postgres(ROTATING, "info", "pg_daemon_rotates").await else {
        return;
    };
    let mut daemon = lab.run("daemon on postgres", DEBUG, &[]);
    // Three tokens per group: the first, and two rotations (each revoking
    // the oldest once a third would be live).
    wait_issued(&daemon, 3).await;
    daemon.signal("TERM");
    daemon.exit_ok().await;
    let tokens = lab.tokens().await;
    assert!(tokens.len() >= 6, "{tokens:?}");
    assert_every_token_stored(&lab, &tokens);
    assert_at_most_two_live(&tokens, &lab);
    assert_no_password(&[&daemon]);
    lab.assert_nothing_secret_printed(&[&daemon]).await;
}

#[tokio::test]
async fn on_postgres_a_restart_keeps_every_token_and_status_reads_beside_the_daemon() {
    let Some(lab) = Lab::start_on_postgres(STEADY, "info", "pg_daemon_restart").await else {
        return;
    };
    // Before any daemon ran, `plan` plans from nothing, as it does with
    // no SQLite file.
    let mut plan = lab.cli("plan before the first run", &["plan"]).await;
    plan.exit_ok().await;
    assert!(
        stdout(&plan).contains("planning from nothing"),
        "{}",
        plan.all_text()
    );

    let mut first = lab.run("first run", DEBUG, &[]);
    first.wait_for(0, "the first pass", pass_done).await;
    assert_eq!(first.count(0, |l| l.is("token issued")), 2);

    // `status` beside the running daemon reads the same database and names
    // it by its URL without the password (the harness's has none; the
    // masked form is what every message uses).
    let mut status = lab.cli("status", &["status", "--json"]).await;
    status.exit_ok().await;
    let report: serde_json::Value = serde_json::from_str(&stdout(&status)).unwrap();
    let database = report["database"].as_str().unwrap();
    assert!(database.starts_with("postgres://"), "{database}");
    assert_eq!(database, lab.location.to_string());
    let groups = report["channels"][0]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{report}");
    // Whether a daemon runs is the writer lock's holder, in the database.
    assert_eq!(report["daemon"]["running"], true, "{report}");

    // A second daemon on the same database is refused: one writer per
    // database until leases are wired in.
    let mut second = lab.run("second daemon", DEBUG, &[]);
    let exit = second.exit().await;
    assert_eq!(exit.code(), Some(1), "{}", second.all_text());
    assert!(
        second
            .all_text()
            .contains("another linetokd instance already writes the PostgreSQL database"),
        "{}",
        second.all_text()
    );

    first.signal("TERM");
    first.exit_ok().await;
    let mut stopped = lab.cli("status when stopped", &["status", "--json"]).await;
    stopped.exit_ok().await;
    let report: serde_json::Value = serde_json::from_str(&stdout(&stopped)).unwrap();
    assert_eq!(report["daemon"]["running"], false, "{report}");
    let tokens_before = lab.tokens().await;
    let stored_before = lab.stored();
    assert_eq!(stored_before.len(), 2);

    let mut again = lab.run("after the restart", DEBUG, &[]);
    again
        .wait_for(0, "the first pass after the restart", pass_done)
        .await;
    assert_eq!(
        again.count(0, |l| l.is("issuing a token")),
        0,
        "the restart issued a token:\n{}",
        again.all_text()
    );
    again.signal("TERM");
    again.exit_ok().await;
    assert_eq!(lab.tokens().await.len(), tokens_before.len());
    assert_eq!(lab.stored(), stored_before);
    assert!(database.contains(":***@"), "{database}");
    assert_no_password(&[&first, &second, &again, &status, &stopped]);
    lab.assert_nothing_secret_printed(&[&first, &second, &again, &status])
        .await;
}
