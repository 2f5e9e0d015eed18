//! Short-lived groups against the sandbox (issue 11, part 1): the real
//! daemon and the sandbox on one manual clock (the `recovery` rig), judged
//! from the outside at the sandbox.
//!
//! LINE lists no short-lived tokens and silently evicts a channel's oldest
//! when a 31st is issued, by anyone. So the daemon can only learn of an
//! eviction by verifying each of its short-lived tokens; these tests check
//! that it does, alerts, reissues, never holds more than 2 per group, and
//! that its revoke reaches `/v2/oauth/revoke` and is confirmed.
//!
//! Depends on `recovery` (the rig) and the crate's public API.

use std::collections::BTreeMap;

use chrono::Duration;
use linetokd::domain::{GroupName, KeyId, TokenState};
use linetokd::sandbox::{Faults, SandboxToken, SandboxTokenState, TokenKind};
use linetokd::store::AlertScope;

use crate::recovery::{Rig, chan, rotation};

/// Our short-lived tokens LINE holds live now, by group (read at the
/// sandbox, mapped to groups through the store by fingerprint); and how
/// many live short-lived tokens the channel has in all.
fn ours_at_line(rig: &Rig) -> (BTreeMap<GroupName, Vec<SandboxToken>>, usize) {
    let now = rig.sandbox.now();
    let live: Vec<SandboxToken> = rig
        .sandbox
        .tokens_since(&rig.chans[0].id, 0)
        .into_iter()
        .filter(|t| {
            t.kind == TokenKind::ShortLived
                && t.state == SandboxTokenState::Live
                && now < t.expires_at
        })
        .collect();
    let total = live.len();
    let mut by_group: BTreeMap<GroupName, Vec<SandboxToken>> = BTreeMap::new();
    for t in live {
        let id = KeyId::short_lived(&t.access_token);
        if let Some(stored) = rig.store().token(&id).unwrap() {
            by_group.entry(stored.group).or_default().push(t);
        }
    }
    (by_group, total)
}

/// Checks the invariants at LINE: at most 2 live short-lived tokens per
/// group of ours, at most 30 on the channel.
fn check(rig: &Rig) -> BTreeMap<GroupName, Vec<SandboxToken>> {
    let (ours, total) = ours_at_line(rig);
    assert!(total <= 30, "{} short-lived tokens live at LINE", total);
    for (g, tokens) in &ours {
        assert!(
            tokens.len() <= 2,
            "{g} has {} live short-lived tokens",
            tokens.len()
        );
    }
    ours
}

/// Another issuer on the channel takes a short-lived token, as LINE's
/// own SDK would: `POST /v2/oauth/accessToken` with the channel secret.
async fn foreign_issue(rig: &Rig) {
    let c = &rig.chans[0];
    let answer = reqwest::Client::new()
        .post(format!("{}/v2/oauth/accessToken", rig.base_url))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", c.id.as_str()),
            ("client_secret", c.secret.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
}

/// Runs the daemon until `until`, checking the invariants at LINE after
/// every step it takes.
async fn run_checked(rig: &mut Rig, until: chrono::DateTime<chrono::Utc>) {
    loop {
        let deadline = rig.deadline().await;
        check(rig);
        if deadline > until {
            rig.run_until(until).await;
            check(rig);
            return;
        }
        let before = rig.passes();
        rig.clock.set(deadline.max(rig.now()));
        rig.pass_after(before).await;
    }
}

/// A channel of short-lived groups (and `v21_groups` v2.1 ones) at a
/// fresh sandbox with no faults, its daemon started: what most tests here
/// begin with.
struct Setup<'a> {
    v21_groups: usize,
    short_lived: &'a [&'a str],
    assertion: bool,
    verify: &'a str,
}

async fn start(setup: Setup<'_>) -> Rig {
    let mut c = chan(0, setup.v21_groups);
    c.short_lived = setup.short_lived.iter().map(|g| group(g)).collect();
    c.assertion = setup.assertion;
    Rig::start(
        vec![c],
        rotation("30d", "1d", "10m", setup.verify, "1h"),
        Faults::default(),
        |_| {},
    )
    .await
}

fn group(name: &str) -> GroupName {
    GroupName::new(name)
}

#[tokio::test]
async fn the_31st_short_lived_token_evicts_ours_and_the_daemon_reissues_at_its_next_verify() {
    let mut rig = start(Setup {
        v21_groups: 1,
        short_lived: &["liff-a", "liff-b"],
        assertion: true,
        verify: "1h",
    })
    .await;

    // The first pass issued one short-lived token per group (and the v2.1
    // group its own, in the other pool).
    let first = check(&rig);
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(first.values().all(|t| t.len() == 1));
    let oldest = first
        .iter()
        .min_by_key(|(_, t)| t[0].seq)
        .map(|(g, t)| (g.clone(), KeyId::short_lived(&t[0].access_token)))
        .unwrap();
    let status = rig.store().token(&oldest.1).unwrap().unwrap();
    assert_eq!(status.record.state, TokenState::Live);

    // Another issuer takes 29: the 31st evicts the channel's oldest, ours.
    for _ in 0..29 {
        foreign_issue(&rig).await;
    }
    let after = check(&rig);
    assert!(
        !after.contains_key(&oldest.0),
        "{} should have lost its token at LINE",
        oldest.0
    );
    // The daemon cannot know yet: nothing lists short-lived tokens.
    assert_eq!(
        rig.store().token(&oldest.1).unwrap().unwrap().record.state,
        TokenState::Live
    );

    // Within one verify interval (plus the jitter's reach) it finds out,
    // alerts, and issues a replacement; the replacement (the 31st again)
    // evicts the next oldest, the other group's, which its own next verify
    // finds, and so on until every group holds a token.
    let start = rig.now();
    run_checked(&mut rig, start + Duration::hours(1)).await;
    let stored = rig.store().token(&oldest.1).unwrap().unwrap();
    assert_eq!(stored.record.state, TokenState::Gone, "{stored:?}");
    assert!(
        stored
            .state_reason
            .as_deref()
            .unwrap_or("")
            .contains("evicted"),
        "{:?}",
        stored.state_reason
    );
    // The alert fires for the evicted group, and lasts an hour after the
    // latest eviction so it reaches people although the group was given a
    // replacement at once.
    let channel = rig.chans[0].id.clone();
    let evicted_alert = |rig: &Rig| {
        rig.store()
            .firing_in(AlertScope {
                channel: Some(&channel),
                group: Some(&oldest.0),
                names: &["short_lived_evicted"],
            })
            .unwrap()
    };
    let firing = evicted_alert(&rig);
    assert_eq!(firing.len(), 1, "{firing:?}");
    assert_eq!(firing[0].severity, "warning");
    assert!(
        firing[0].summary.contains("evicted"),
        "{}",
        firing[0].summary
    );

    run_checked(&mut rig, start + Duration::hours(3)).await;
    let now_ours = check(&rig);
    for g in [group("liff-a"), group("liff-b")] {
        let tokens = now_ours.get(&g).cloned().unwrap_or_default();
        assert_eq!(tokens.len(), 1, "{g} at LINE: {tokens:?}");
        // The token LINE holds is the one the daemon hands out.
        let id = KeyId::short_lived(&tokens[0].access_token);
        let book = rig.daemon().tokens.get(&channel, &g);
        assert_eq!(book.current.unwrap().key_id, id);
    }
    assert!(
        evicted_alert(&rig).is_empty(),
        "the alert should have resolved an hour after the last eviction"
    );
    let metrics = rig.daemon().metrics.render();
    let evictions: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("linetokd_short_lived_evictions_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(evictions >= 1, "{metrics}");
    assert!(
        metrics.contains(r#"group="liff-a",kind="short-lived"} 1"#),
        "{metrics}"
    );
    // No token value reached the metrics.
    for t in rig.sandbox.tokens_since(&channel, 0) {
        assert!(!metrics.contains(t.access_token.expose()));
    }
    rig.finish().await;
}

/// Our own short-lived issue can be the channel's 31st: LINE then evicts
/// the oldest token on the channel, which may be one of ours (another
/// group's, or the rotating group's previous one). The daemon verifies its
/// oldest short-lived token right after each such issue, so it learns of
/// the eviction at the same instant, not at that token's next verify.
#[tokio::test]
async fn our_own_31st_short_lived_issue_is_followed_by_a_verify_of_our_oldest() {
    let rig = start(Setup {
        v21_groups: 0,
        short_lived: &["liff-a", "liff-b"],
        assertion: true,
        verify: "1d",
    })
    .await;
    assert_eq!(check(&rig).len(), 2);
    // Another issuer fills the pool to 30.
    for _ in 0..28 {
        foreign_issue(&rig).await;
    }
    assert_eq!(ours_at_line(&rig).1, 30);
    let channel = rig.chans[0].id.clone();
    let issued_by_us = |rig: &Rig| {
        rig.sandbox
            .tokens_since(&channel, 0)
            .into_iter()
            .filter(|t| t.kind == TokenKind::ShortLived)
            .filter(|t| {
                rig.store()
                    .token(&KeyId::short_lived(&t.access_token))
                    .unwrap()
                    .is_some()
            })
            .count()
    };
    // Time runs until the first rotation: our third issue, the 31st.
    let limit = rig.now() + Duration::days(30);
    while issued_by_us(&rig) < 3 {
        let deadline = rig.deadline().await;
        assert!(deadline < limit, "no rotation within 30 days");
        check(&rig);
        let before = rig.passes();
        rig.clock.set(deadline.max(rig.now()));
        rig.pass_after(before).await;
    }
    // Without moving the clock (no token's verify interval elapses), every
    // token of ours LINE no longer holds is soon known to be gone. Polled
    // in real time: other tasks sleep on the clock too, so "a task sleeps"
    // does not mean "the scheduler is done".
    let now = rig.sandbox.now();
    let at = rig.now();
    let evicted: Vec<KeyId> = rig
        .sandbox
        .tokens_since(&channel, 0)
        .into_iter()
        .filter(|t| !(t.state == SandboxTokenState::Live && now < t.expires_at))
        .map(|t| KeyId::short_lived(&t.access_token))
        .filter(|id| rig.store().token(id).unwrap().is_some())
        .collect();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    for id in &evicted {
        loop {
            let stored = rig.store().token(id).unwrap().unwrap();
            if stored.record.state != TokenState::Live {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} of {} was evicted at LINE, but the daemon still counts it live",
                stored.group
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    assert_eq!(rig.now(), at, "the clock did not move");
    check(&rig);
    let evicted = evicted.len();
    assert!(
        evicted >= 1,
        "the 31st issue should have evicted one of ours"
    );
    rig.finish().await;
}

#[tokio::test]
async fn an_incident_revokes_a_short_lived_token_at_v2_oauth_revoke_and_confirms_it() {
    let mut rig = start(Setup {
        v21_groups: 0,
        short_lived: &["liff"],
        assertion: true,
        verify: "1h",
    })
    .await;
    let before = check(&rig);
    let old = before[&group("liff")][0].clone();
    let channel = rig.chans[0].id.clone();
    let passes = rig.passes();
    rig.daemon()
        .rotator
        .request_incident(&channel, &group("liff"), "test")
        .await
        .unwrap();
    rig.pass_after(passes).await;
    let now = rig.now();
    run_checked(&mut rig, now + Duration::minutes(1)).await;

    // At LINE: the old token revoked (not evicted, not expired), one new.
    let old_now = rig
        .sandbox
        .tokens_since(&channel, old.seq)
        .into_iter()
        .find(|t| t.seq == old.seq)
        .unwrap();
    assert_eq!(old_now.state, SandboxTokenState::Revoked);
    let after = check(&rig);
    let new = &after[&group("liff")];
    assert_eq!(new.len(), 1);
    assert_ne!(new[0].access_token, old.access_token);
    let stored = rig
        .store()
        .token(&KeyId::short_lived(&old.access_token))
        .unwrap()
        .unwrap();
    assert_eq!(stored.record.state, TokenState::Revoked);

    // `status` beside the running daemon names the group's kind, never a
    // token value. (It reads the system clock, which is not the rig's, so
    // which tokens it calls live is not asserted here.)
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_linetokd"))
        .args(["status", "--json", "--config"])
        .arg(rig.config_path())
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    let g = &report["channels"][0]["groups"][0];
    assert_eq!(g["name"], "liff");
    assert_eq!(g["kind"], "short-lived");
    for t in rig.sandbox.tokens_since(&channel, 0) {
        assert!(!text.contains(t.access_token.expose()));
    }
    rig.finish().await;
}

/// A channel of short-lived groups needs no assertion key: configured with
/// its secret alone, it is issued, verified and rotated like any other.
#[tokio::test]
async fn a_channel_without_an_assertion_key_keeps_short_lived_groups() {
    let mut rig = start(Setup {
        v21_groups: 0,
        short_lived: &["liff"],
        assertion: false,
        verify: "1h",
    })
    .await;
    let first = check(&rig);
    assert_eq!(first[&group("liff")].len(), 1, "{first:?}");
    // Into the rotation window: a successor, and never a third.
    let start = rig.now();
    run_checked(&mut rig, start + Duration::days(29) + Duration::hours(1)).await;
    let later = check(&rig);
    let tokens = &later[&group("liff")];
    assert!(!tokens.is_empty() && tokens.len() <= 2, "{tokens:?}");
    assert!(
        tokens
            .iter()
            .any(|t| t.access_token != first[&group("liff")][0].access_token),
        "rotated"
    );
    rig.finish().await;
}

/// LINE answers 200 to a revoke of a token it does not know, so a revoke
/// that LINE answers but does not carry out looks like success: only the
/// confirming verify shows the token still lives. The daemon treats it as
/// a failed revoke (the token stays recorded live, the step is retried),
/// and revokes it for real once LINE does.
#[tokio::test]
async fn a_revoke_line_answers_but_does_not_carry_out_is_noticed_and_retried() {
    use linetokd::sandbox::FaultRule;
    let mut rig = start(Setup {
        v21_groups: 0,
        short_lived: &["liff"],
        assertion: true,
        verify: "1h",
    })
    .await;
    let old = check(&rig)[&group("liff")][0].clone();
    let old_id = KeyId::short_lived(&old.access_token);
    let channel = rig.chans[0].id.clone();
    let ignoring = Faults {
        seed: Some(1),
        endpoints: [(
            "/v2/oauth/revoke".to_owned(),
            FaultRule {
                ignore_rate: 1.0,
                ..FaultRule::default()
            },
        )]
        .into_iter()
        .collect(),
        ..Faults::default()
    };
    rig.sandbox.set_faults(ignoring).unwrap();
    let passes = rig.passes();
    rig.daemon()
        .rotator
        .request_incident(&channel, &group("liff"), "test")
        .await
        .unwrap();
    rig.pass_after(passes).await;
    let now = rig.now();
    run_checked(&mut rig, now + Duration::seconds(5)).await;
    // Still live at LINE, still recorded live, and the failure is named.
    let still = rig
        .sandbox
        .tokens_since(&channel, old.seq)
        .into_iter()
        .find(|t| t.seq == old.seq)
        .unwrap();
    assert_eq!(still.state, SandboxTokenState::Live);
    assert_eq!(
        rig.store().token(&old_id).unwrap().unwrap().record.state,
        TokenState::Live
    );
    let runtime = rig.store().groups(&channel).unwrap()[0].runtime.clone();
    assert!(
        runtime
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("still accepts the token"),
        "{runtime:?}"
    );

    // LINE carries revokes out again: the retry revokes it for real.
    rig.sandbox.set_faults(Faults::default()).unwrap();
    let now = rig.now();
    run_checked(&mut rig, now + Duration::minutes(15)).await;
    let gone = rig
        .sandbox
        .tokens_since(&channel, old.seq)
        .into_iter()
        .find(|t| t.seq == old.seq)
        .unwrap();
    assert_eq!(gone.state, SandboxTokenState::Revoked);
    assert_eq!(
        rig.store().token(&old_id).unwrap().unwrap().record.state,
        TokenState::Revoked
    );
    let after = check(&rig);
    assert_eq!(after[&group("liff")].len(), 1);
    rig.finish().await;
}
