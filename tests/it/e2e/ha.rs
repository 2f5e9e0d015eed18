//! End to end under `[ha]` (issue 12): two real daemons sharing one
//! PostgreSQL database, the sandbox as a process. One instance leads the
//! channel (the lease row says which), only it calls LINE, the other
//! serves the same tokens from the shared store and writes its own sinks;
//! `linetokd rotate` on the follower is carried out by the leader; a
//! leader killed with SIGKILL is replaced once its lease runs out, under a
//! new epoch, and rotations go on. Checked from outside after each: at the
//! sandbox never more than two live tokens per group, every token LINE
//! issued is in the store, and no token value in any output.
//!
//! Short settings keep the tests quick: request timeout 2 s, lease 9 s,
//! renewal every second (validation's floor: 9 > 2 + 1 + 5).
//!
//! Each test skips with one printed line when there is no PostgreSQL,
//! unless `LINETOKD_REQUIRE_POSTGRES=1`.

use std::path::Path;

use chrono::{DateTime, Utc};
use linetokd::domain::{ChannelId, GroupName};
use linetokd::ha::InstanceId;
use linetokd::store::Location;

use super::harness::{CHANNEL, GROUPS, Lab, Line, SandboxToken, http_url};
use super::postgres::assert_at_most_two_live;
use super::{DEBUG, ROTATING, STEADY, assert_every_token_stored, issued};

const LEASE: chrono::Duration = chrono::Duration::seconds(9);

fn ha(instance: &str) -> String {
    format!("instance_id = \"{instance}\"\nlease = \"9s\"\nrenew = \"1s\"")
}

/// A line saying this instance now leads the lab's channel (not the
/// daemon-wide duties, which are leased too).
fn leading(l: &Line) -> bool {
    l.is_with("leading the channel", "channel", CHANNEL)
}

/// The channel's lease row: holder, epoch, valid until (database time).
async fn lease_row(lab: &Lab) -> (String, i64, DateTime<Utc>) {
    lease_row_of(lab, CHANNEL).await
}

/// The lease row of `channel` (or of the daemon-wide duties).
async fn lease_row_of(lab: &Lab, channel: &str) -> (String, i64, DateTime<Utc>) {
    let Location::Postgres(target) = &lab.location else {
        panic!("an HA lab runs on PostgreSQL");
    };
    let pool = linetokd::store::pg::PgPool::connect(target, &Default::default())
        .await
        .unwrap();
    let table = pool.leases().await.unwrap();
    let (_, lease) = table
        .leases
        .iter()
        .find(|(c, _)| c.as_str() == channel)
        .expect("the channel has a lease row");
    (
        lease.holder.as_str().to_owned(),
        lease.epoch.0,
        lease.valid_until,
    )
}

/// Which of `names` the spreading rule prefers for the lab's channel
/// while all are alive: the instance that leads it once they all run.
fn preferred(names: &[&str]) -> usize {
    let ids: Vec<InstanceId> = names.iter().map(|n| InstanceId::new(*n)).collect();
    let best = linetokd::ha::spread::preferred(&ids, &ChannelId::new(CHANNEL)).unwrap();
    ids.iter().position(|i| i == best).unwrap()
}

/// The newest stored token of `group`, as the store holds it.
fn newest_value(lab: &Lab, group: &str) -> String {
    let mut tokens = lab
        .store()
        .tokens_of_group(&ChannelId::new(CHANNEL), &GroupName::new(group))
        .unwrap();
    tokens.sort_by_key(|t| t.record.issued_at);
    tokens.last().unwrap().value.expose().to_owned()
}

fn sink(dir: &Path, group: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{group}.token"))).unwrap_or_default()
}

/// The value of the first sample whose line starts with `prefix` in a
/// Prometheus text exposition.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `linetokd_channel_leader` of the lab's channel on the daemon at `url`.
async fn leader_gauge(url: &str) -> Option<f64> {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric(
        &text,
        &format!("linetokd_channel_leader{{channel=\"{CHANNEL}\""),
    )
}

#[tokio::test]
async fn under_ha_one_instance_leads_the_follower_serves_and_a_killed_leader_is_replaced() {
    let Some(lab) = Lab::start_on_postgres(ROTATING, "info", "ha_failover").await else {
        return;
    };
    let configs = [
        lab.ha_instance("one", ROTATING, "2s", &ha("one")),
        lab.ha_instance("two", ROTATING, "2s", &ha("two")),
    ];
    let mut procs = [
        lab.run_config("instance one", &configs[0], DEBUG),
        lab.run_config("instance two", &configs[1], DEBUG),
    ];
    let names = ["one", "two"];
    // Whichever instance acquires first, the channel ends with the one the
    // spreading rule prefers (the other hands it over): wait for that one.
    let l = preferred(&names);
    let f = 1 - l;
    procs[l].wait_for(0, "leading the channel", leading).await;
    // The leader issues for every group; the follower never calls LINE.
    for group in GROUPS {
        procs[l]
            .wait_for(0, &format!("a token for {group}"), issued(group))
            .await;
    }
    // Epoch 1, or 2 when the other instance acquired first and handed
    // the channel over.
    let (holder, first_epoch, _) = lease_row(&lab).await;
    assert_eq!(holder, names[l]);
    assert!((1..=2).contains(&first_epoch), "epoch {first_epoch}");

    // The follower publishes what the leader stored: its own sink files
    // hold each group's newest token.
    for group in GROUPS {
        procs[f]
            .wait_for(0, &format!("{group}'s token published"), |line| {
                line.is_with("published a token another instance stored", "group", group)
            })
            .await;
    }
    let follower_dir = configs[f].parent().unwrap();
    for group in GROUPS {
        let in_sink = sink(follower_dir, group);
        let stored: Vec<String> = lab
            .store()
            .tokens_of_group(&ChannelId::new(CHANNEL), &GroupName::new(group))
            .unwrap()
            .into_iter()
            .map(|t| t.value.expose().to_owned())
            .collect();
        assert!(
            stored.contains(&in_sink.trim().to_owned()),
            "the follower's sink of {group} holds no token of the store"
        );
        // The follower ran its own hook for the token it published, after
        // writing the sink.
        let published = lab
            .stored()
            .into_iter()
            .find(|t| t.value.expose() == in_sink.trim())
            .unwrap();
        let key_id = published.record.key_id.as_str().to_owned();
        procs[f]
            .wait_for(0, &format!("the hook of {group}"), |l| {
                l.is("hook succeeded") && l.field("key_id").as_deref() == Some(&key_id)
            })
            .await;
        let hooked = std::fs::read_to_string(follower_dir.join(format!("{group}.hooked")))
            .unwrap_or_default();
        // (Tokens rotate every few seconds here: a later one may follow.)
        assert!(
            hooked.lines().any(|l| l == key_id),
            "the follower's hook of {group} never ran for {key_id}"
        );
    }

    // The follower is ready too, and each instance's metrics say which
    // one leads.
    let urls = [http_url(&procs[0]).await, http_url(&procs[1]).await];
    let ready = reqwest::get(format!("{}/readyz", urls[f])).await.unwrap();
    assert_eq!(ready.status(), 200, "the follower's /readyz");
    assert_eq!(leader_gauge(&urls[l]).await, Some(1.0));
    assert_eq!(leader_gauge(&urls[f]).await.unwrap_or(0.0), 0.0);

    // kill -9 the leader: the follower takes over once the grant ran out,
    // under epoch 2, and rotates.
    let (_, _, valid_until_before) = lease_row(&lab).await;
    let mark = procs[f].mark();
    procs[l].kill9().await;
    procs[f].wait_for(mark, "the takeover", leading).await;
    let (holder, epoch, valid_until) = lease_row(&lab).await;
    assert_eq!(holder, names[f]);
    assert_eq!(epoch, first_epoch + 1);
    // Database times: the new grant began (valid_until - lease) no later
    // than the old grant's end plus one renewal after the reading above,
    // the keeper's tick and slack for a loaded machine.
    let granted_at = valid_until - LEASE;
    let bound = valid_until_before + chrono::Duration::seconds(2) + chrono::Duration::seconds(8);
    assert!(
        granted_at <= bound,
        "the takeover came at {granted_at}, the old grant ended by {valid_until_before}"
    );
    for group in GROUPS {
        procs[f]
            .wait_for(
                mark,
                &format!("a rotation of {group} by the new leader"),
                issued(group),
            )
            .await;
    }
    assert_eq!(leader_gauge(&urls[f]).await, Some(1.0));
    let metrics = reqwest::get(format!("{}/metrics", urls[f]))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(
            &metrics,
            &format!("linetokd_lease_takeovers_total{{channel=\"{CHANNEL}\""),
        ),
        Some(1.0),
        "{metrics}"
    );
    procs[f].signal("TERM");
    procs[f].exit_ok().await;
    let tokens = lab.tokens().await;
    // The kill lands at an arbitrary instant, so it may fall between
    // LINE's answer to an issue and its store: then exactly one token is
    // the killed leader's, never stored, and the new leader closed that
    // issuance as possibly issued when it took over (a lost token).
    let stored: Vec<String> = lab
        .stored()
        .iter()
        .map(|t| t.record.key_id.as_str().to_owned())
        .collect();
    let unstored: Vec<&SandboxToken> = tokens
        .iter()
        .filter(|t| !stored.contains(&t.key_id))
        .collect();
    let in_flight = |l: &Line| {
        l.begins("taking the channel over: an issuance of the previous leader was in flight")
    };
    match unstored.as_slice() {
        [] => assert_every_token_stored(&lab, &tokens),
        [lost] => {
            assert_eq!(
                procs[f].count(mark, in_flight),
                1,
                "{} was never stored",
                lost.key_id
            );
            // Counted against the group the closed issuance names.
            let at = procs[f].find(mark, in_flight).unwrap();
            let group = procs[f].lines()[at].field("group").unwrap();
            let group_keys: Vec<String> = lab
                .stored()
                .iter()
                .filter(|t| t.group.as_str() == group)
                .map(|t| t.record.key_id.as_str().to_owned())
                .chain([lost.key_id.clone()])
                .collect();
            for t in &tokens {
                let live = tokens
                    .iter()
                    .filter(|o| group_keys.contains(&o.key_id) && o.live_at(t.issued_at))
                    .count();
                assert!(
                    live <= 2,
                    "group {group} had {live} live tokens at {}",
                    t.issued_at
                );
            }
            let others: Vec<SandboxToken> = tokens
                .iter()
                .filter(|t| t.key_id != lost.key_id)
                .cloned()
                .collect();
            assert_every_token_stored(&lab, &others);
        }
        more => panic!("{} tokens were never stored", more.len()),
    }
    assert_at_most_two_live(&tokens, &lab);
    let newest: Vec<String> = GROUPS.iter().map(|g| newest_value(&lab, g)).collect();
    assert!(!newest.is_empty());
    lab.assert_nothing_secret_printed(&[&procs[0], &procs[1]])
        .await;
}

#[tokio::test]
async fn under_ha_rotate_on_the_follower_is_carried_out_by_the_leader() {
    let Some(lab) = Lab::start_on_postgres(STEADY, "info", "ha_rotate").await else {
        return;
    };
    let configs = [
        lab.ha_instance("one", STEADY, "2s", &ha("one")),
        lab.ha_instance("two", STEADY, "2s", &ha("two")),
    ];
    let mut procs = [
        lab.run_config("instance one", &configs[0], DEBUG),
        lab.run_config("instance two", &configs[1], DEBUG),
    ];
    let l = preferred(&["one", "two"]);
    let f = 1 - l;
    let (led, _) = procs[l].wait_for(0, "leading the channel", leading).await;
    // Its first pass as the leader: every group has its token (issued by
    // it, or by the other instance before the handover).
    procs[l].wait_for(led, "a pass", super::pass_done).await;
    let mark = procs[l].mark();
    // The other instance may have led (and issued) before the handover;
    // from here it must not call LINE.
    let follower_mark = procs[f].mark();
    let mut rotate = lab
        .cli_with(
            "rotate on the follower",
            &configs[f],
            &["rotate", "--channel", CHANNEL, "--group", GROUPS[0]],
        )
        .await;
    rotate.exit_ok().await;
    // The follower says the leader did it (naming the holder it last read
    // in the lease table).
    assert!(
        rotate.all_text().contains("done by the channel's leader"),
        "{}",
        rotate.all_text()
    );
    procs[l]
        .wait_for(mark, "the requested rotation", issued(GROUPS[0]))
        .await;
    // An incident declared on the follower: the leader revokes every token
    // the group had at LINE and issues a fresh one.
    let before: Vec<String> = lab
        .stored()
        .iter()
        .filter(|t| t.group.as_str() == GROUPS[1])
        .map(|t| t.record.key_id.as_str().to_owned())
        .collect();
    assert!(!before.is_empty());
    let mark = procs[l].mark();
    let mut revoke = lab
        .cli_with(
            "revoke on the follower",
            &configs[f],
            &["revoke", "--channel", CHANNEL, "--group", GROUPS[1]],
        )
        .await;
    revoke.exit_ok().await;
    assert!(
        revoke.all_text().contains("done by the channel's leader"),
        "{}",
        revoke.all_text()
    );
    procs[l]
        .wait_for(mark, "the incident's fresh token", issued(GROUPS[1]))
        .await;
    let at_line = lab.tokens().await;
    for key_id in &before {
        let token = at_line.iter().find(|t| &t.key_id == key_id).unwrap();
        assert!(token.revoked_at.is_some(), "{key_id} is still live at LINE");
    }
    assert_eq!(
        procs[f].count(follower_mark, |line| line.is("token issued")),
        0,
        "the follower called LINE"
    );
    // The daemon-wide duties (alert notifications) are leased like a
    // channel: one of the two instances holds them.
    let (duties, _, until) = lease_row_of(&lab, linetokd::leader::DAEMON_DUTIES).await;
    assert!(["one", "two"].contains(&duties.as_str()), "{duties}");
    assert!(until > Utc::now() - chrono::Duration::seconds(1));
    // An instance without [ha] would write every channel: it is refused
    // while instances under [ha] are alive.
    let mut sole = lab.run("an instance without [ha]", DEBUG, &[]);
    let exit = sole.exit().await;
    assert_eq!(exit.code(), Some(1), "{}", sole.all_text());
    assert!(
        sole.all_text()
            .contains("instances under [ha] write the PostgreSQL database"),
        "{}",
        sole.all_text()
    );
    // `status` on either instance names the leader and its epoch.
    let mut status = lab
        .cli_with("status", &configs[f], &["status", "--json"])
        .await;
    status.exit_ok().await;
    let text: String = status
        .lines()
        .into_iter()
        .filter(|l| l.stream == super::harness::Stream::Stdout)
        .map(|l| l.text)
        .collect();
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    // Instances under [ha] hold no writer lock; their heartbeats say a
    // daemon runs.
    assert_eq!(report["daemon"]["running"], true, "{report}");
    let lease = &report["channels"][0]["lease"];
    assert_eq!(lease["holder"], ["one", "two"][l], "{report}");
    assert!(
        lease["epoch"]
            .as_i64()
            .is_some_and(|e| (1..=2).contains(&e)),
        "{report}"
    );
    assert_eq!(lease["valid"], true, "{report}");
    // A second process under the leader's instance ID (a shared config
    // file naming one) is noticed by its heartbeat: it leads nothing and
    // takes no grant, rather than releasing the leader's as its own.
    let (_, epoch_before, _) = lease_row(&lab).await;
    let twin_config = lab.ha_instance("twin", STEADY, "2s", &ha(["one", "two"][l]));
    let mut twin = lab.run_config("a second process under the same ID", &twin_config, DEBUG);
    twin.wait_for(0, "the duplicate ID noticed", |line| {
        line.begins("another process is alive under this instance ID")
    })
    .await;
    // Each of its keeper's rounds stops at that heartbeat, before any
    // decision about a lease: the leader's grant is untouched.
    twin.signal("TERM");
    twin.exit_ok().await;
    assert_eq!(twin.count(0, leading), 0, "{}", twin.all_text());
    let (holder, epoch_after, _) = lease_row(&lab).await;
    assert_eq!(holder, ["one", "two"][l]);
    assert_eq!(epoch_after, epoch_before);
    // An instance whose config names other groups is reported by the
    // others: they share one set of groups in the database.
    let odd_config = lab.ha_instance("odd", STEADY, "2s", &ha("odd"));
    let text = std::fs::read_to_string(&odd_config).unwrap();
    let cut_at = text.find("\n  [[channel.group]]\n  name = \"b\"").unwrap();
    let rest = &text[cut_at + 1..];
    let end = rest.find("\n\n").map_or(rest.len(), |i| i + 1);
    std::fs::write(&odd_config, format!("{}{}", &text[..=cut_at], &rest[end..])).unwrap();
    let mark = procs[l].mark();
    let mut odd = lab.run_config("an instance naming other groups", &odd_config, DEBUG);
    procs[l]
        .wait_for(mark, "the other config reported", |line| {
            line.begins("instances alive name other channels or groups")
                && line.field("instances").as_deref() == Some("odd")
        })
        .await;
    odd.signal("TERM");
    odd.exit_ok().await;
    for proc in &procs {
        proc.signal("TERM");
    }
    for proc in &mut procs {
        proc.exit_ok().await;
    }
    // A clean stop hands the grant back: the row ends at once.
    let (_, _, valid_until) = lease_row(&lab).await;
    assert!(valid_until <= Utc::now() + chrono::Duration::seconds(1));
    lab.assert_nothing_secret_printed(&[&procs[0], &procs[1], &rotate, &sole, &twin, &odd])
        .await;
}
