//! End to end under `[ha]` with more than two instances and channels
//! (issue 12), checked from outside: the lease rows in the database, the
//! tokens at the sandbox, and every line printed.
//!
//! 1. Three `linetokd run` processes share one PostgreSQL database and four
//!    channels: each channel ends up led by the instance the spreading rule
//!    prefers (one valid lease row each), and every channel rotates. The
//!    instance leading the most channels is killed with SIGKILL: each of
//!    its channels is taken over by a survivor under the next epoch, once
//!    its grant ran out (database time), and rotates again; the other
//!    channels do not move.
//! 2. Two daemons started in this process, each on a wall clock ten
//!    minutes off (one ahead, one behind), share a database: leases are
//!    judged by the database's clock only, so exactly one leads, and when
//!    it stops cleanly the other takes over within seconds under the next
//!    epoch, without issuing anything the skew would make it think due.
//!    With tokens that live seconds (shorter than the skew), the successor
//!    ahead must still not hold a group at three live tokens: under [ha]
//!    the engine dates and judges tokens on the database's clock, not the
//!    host's.
//!
//! Every test ends at the sandbox: never more than two live tokens of ours
//! per group, never more than LINE's 30 per channel, and no token value or
//! channel secret in any output. Each skips with one printed line when
//! there is no PostgreSQL, unless `LINETOKD_REQUIRE_POSTGRES=1`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use linetokd::app::{Daemon, RunOptions};
use linetokd::clock::{Clock, MAX_SYSTEM_SLEEP, SharedClock, Sleep};
use linetokd::config::Settings;
use linetokd::domain::{ChannelId, GroupName};
use linetokd::ha::InstanceId;
use linetokd::rotator::RotationEvent;
use linetokd::store::Location;
use linetokd::store::pg::LeaseTable;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::harness::{CHANNEL, GROUPS, Lab, Line, PATIENCE, Proc, SECRET, SandboxToken, kid_of};
use super::postgres::assert_at_most_two_live;
use super::{DEBUG, ROTATING};

/// LINE's cap on a channel's live tokens.
const CHANNEL_CAP: usize = 30;

/// The `[ha]` lines of instance `name`: a 9 s lease renewed every second
/// (validation's floor with a 2 s request timeout: 9 > 2 + 1 + 5).
fn ha(name: &str) -> String {
    format!("instance_id = \"{name}\"\nlease = \"9s\"\nrenew = \"1s\"")
}

/// The lease of [`ha`].
const LEASE: chrono::Duration = chrono::Duration::seconds(9);

/// The lease table and the database's now.
async fn lease_table(lab: &Lab) -> LeaseTable {
    let Location::Postgres(target) = &lab.location else {
        panic!("an HA lab runs on PostgreSQL");
    };
    let pool = linetokd::store::pg::PgPool::connect(target, &Default::default())
        .await
        .unwrap();
    pool.leases().await.unwrap()
}

/// `channel`'s row: holder, epoch, valid until (database time).
fn row(table: &LeaseTable, channel: &str) -> (String, i64, DateTime<Utc>) {
    let (_, lease) = table
        .leases
        .iter()
        .find(|(c, _)| c.as_str() == channel)
        .unwrap_or_else(|| panic!("channel {channel} has no lease row: {table:?}"));
    (
        lease.holder.as_str().to_owned(),
        lease.epoch.0,
        lease.valid_until,
    )
}

/// The index in `names` of the instance the spreading rule prefers for
/// `channel` while exactly `names` are alive.
fn preferred(names: &[&str], channel: &str) -> usize {
    let ids: Vec<InstanceId> = names.iter().map(|n| InstanceId::new(*n)).collect();
    let best = linetokd::ha::spread::preferred(&ids, &ChannelId::new(channel)).unwrap();
    ids.iter().position(|i| i == best).unwrap()
}

/// "leading the channel" for `channel`.
fn leading_on(channel: &str) -> impl Fn(&Line) -> bool + Copy + '_ {
    move |l| l.is_with("leading the channel", "channel", channel)
}

/// "token issued" for `channel`, any group.
fn issued_on(channel: &str) -> impl Fn(&Line) -> bool + '_ {
    move |l| l.is_with("token issued", "channel", channel)
}

/// "token issued" for `group` of `channel`.
fn issued_on_group<'a>(channel: &'a str, group: &'a str) -> impl Fn(&Line) -> bool + 'a {
    move |l| issued_on(channel)(l) && l.field("group").as_deref() == Some(group)
}

/// The store's group of each key ID it holds on `channel`.
fn owners(lab: &Lab, channel: &str) -> HashMap<String, String> {
    let store = lab.store();
    GROUPS
        .iter()
        .flat_map(|g| {
            store
                .tokens_of_group(&ChannelId::new(channel), &GroupName::new(*g))
                .unwrap()
        })
        .map(|t| {
            (
                t.record.key_id.as_str().to_owned(),
                t.group.as_str().to_owned(),
            )
        })
        .collect()
}

/// No group of `channel` had more than two of its stored tokens live at the
/// sandbox at any instant a token was issued there, and the channel never
/// had more than LINE's cap live (whoever's).
fn assert_within_limits(lab: &Lab, channel: &str, tokens: &[SandboxToken]) {
    let owner = owners(lab, channel);
    for t in tokens {
        let live: Vec<&SandboxToken> = tokens.iter().filter(|o| o.live_at(t.issued_at)).collect();
        assert!(
            live.len() <= CHANNEL_CAP,
            "channel {channel} had {} live tokens at {}",
            live.len(),
            t.issued_at
        );
        for group in GROUPS {
            let of_group = live
                .iter()
                .filter(|o| owner.get(&o.key_id).map(String::as_str) == Some(group))
                .count();
            assert!(
                of_group <= 2,
                "group {group} of channel {channel} had {of_group} live tokens at {}: {tokens:?}",
                t.issued_at
            );
        }
    }
}

/// The tokens of `tokens` the store does not hold with the same value.
fn unstored<'a>(lab: &Lab, channel: &str, tokens: &'a [SandboxToken]) -> Vec<&'a SandboxToken> {
    let store = lab.store();
    let stored: HashMap<String, String> = GROUPS
        .iter()
        .flat_map(|g| {
            store
                .tokens_of_group(&ChannelId::new(channel), &GroupName::new(*g))
                .unwrap()
        })
        .map(|t| {
            (
                t.record.key_id.as_str().to_owned(),
                t.value.expose().to_owned(),
            )
        })
        .collect();
    tokens
        .iter()
        .filter(|t| stored.get(&t.key_id) != Some(&t.access_token))
        .collect()
}

/// The strings no output may contain: the channel secret, every token
/// value, and its payload and signature pieces (as
/// [`super::harness::assert_nothing_secret_in`] searches).
fn needles(tokens: &[SandboxToken]) -> Vec<(String, String)> {
    let mut needles = vec![(SECRET.to_owned(), "the channel secret".to_owned())];
    for t in tokens {
        needles.push((t.access_token.clone(), format!("token {}", t.key_id)));
        for piece in t.access_token.split('.').skip(1) {
            if piece.len() >= 16 {
                needles.push((piece.to_owned(), format!("a piece of token {}", t.key_id)));
            }
        }
    }
    needles
}

fn assert_no_needle_in(needles: &[(String, String)], name: &str, text: &str) {
    for (needle, what) in needles {
        assert!(
            !text.contains(needle.as_str()),
            "{name} printed {what}:\n{text}"
        );
    }
}

// ---------------------------------------------------------------------
// 1. Three instances, four channels, and a leader killed with SIGKILL.
// ---------------------------------------------------------------------

/// The channels beside [`CHANNEL`]. With instances `one`, `two` and
/// `three` the spreading rule gives `one` two channels (…891 and …892,
/// whose next choices are `two` and `three`) and the others one each
/// (the test computes this, and checks the one it relies on).
const EXTRA: [&str; 3] = ["1234567891", "1234567892", "1234567895"];
const NAMES: [&str; 3] = ["one", "two", "three"];

fn channels() -> Vec<&'static str> {
    std::iter::once(CHANNEL).chain(EXTRA).collect()
}

/// Instance `name`'s config: [`Lab::ha_instance`]'s (the lab's channel,
/// its groups writing raw sinks in the instance's directory) plus the
/// [`EXTRA`] channels, each with the same groups and sinks of its own.
fn config_for(lab: &Lab, name: &str) -> PathBuf {
    let path = lab.ha_instance(name, ROTATING, "2s", &ha(name));
    let state = path.parent().unwrap().to_owned();
    let mut text = std::fs::read_to_string(&path).unwrap();
    for id in EXTRA {
        text.push_str(&format!(
            "\n[[channel]]\nid = \"{id}\"\nname = \"chan-{id}\"\nkey_file = \"{key}\"\n\
             kid = \"{kid}\"\nsecret_file = \"{secret}\"\n",
            key = lab.dir().join("keys").join("chan.private.pem").display(),
            kid = kid_of(id),
            secret = lab.dir().join("chan.secret").display(),
        ));
        for group in GROUPS {
            text.push_str(&format!(
                "\n  [[channel.group]]\n  name = \"{group}\"\n  sinks = [{{ path = \"{}\", format = \"raw\" }}]\n",
                state.join(format!("{id}-{group}.token")).display()
            ));
        }
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// Waits for the first line matching `pred` at or after each process's
/// mark in whichever of the two processes prints it first; returns that
/// process's index in `procs` and the line.
async fn first_of(
    procs: [&Proc; 2],
    marks: [usize; 2],
    what: &str,
    pred: impl Fn(&Line) -> bool + Copy,
) -> (usize, Line) {
    tokio::select! {
        (_, line) = procs[0].wait_for(marks[0], what, pred) => (0, line),
        (_, line) = procs[1].wait_for(marks[1], what, pred) => (1, line),
    }
}

#[tokio::test]
async fn three_instances_spread_four_channels_and_a_killed_leaders_channels_move_to_survivors() {
    let Some(lab) =
        Lab::start_on_postgres_with_channels(ROTATING, "info", "ha_many_failover", &EXTRA).await
    else {
        return;
    };
    let configs: Vec<PathBuf> = NAMES.iter().map(|n| config_for(&lab, n)).collect();
    let mut procs: Vec<Proc> = NAMES
        .iter()
        .zip(&configs)
        .map(|(n, c)| lab.run_config(&format!("instance {n}"), c, DEBUG))
        .collect();
    let channels = channels();
    let leader: HashMap<&str, usize> = channels
        .iter()
        .map(|c| (*c, preferred(&NAMES, c)))
        .collect();

    // Whoever acquires first, each channel ends with its preferred
    // instance (the others hand it over), which then rotates its groups.
    for c in &channels {
        let l = leader[c];
        let (led, _) = procs[l]
            .wait_for(0, &format!("leading channel {c}"), leading_on(c))
            .await;
        for group in GROUPS {
            procs[l]
                .wait_for(
                    led,
                    &format!("a token for {c}/{group} by its leader"),
                    issued_on_group(c, group),
                )
                .await;
        }
    }
    // The database agrees: each channel has one valid grant, the
    // preferred instance's.
    let table = lease_table(&lab).await;
    // Beside the channels, the daemon-wide duties' lease.
    let channel_rows = table
        .leases
        .iter()
        .filter(|(c, _)| c.as_str() != linetokd::leader::DAEMON_DUTIES)
        .count();
    assert_eq!(channel_rows, channels.len(), "{table:?}");
    let mut epochs: HashMap<&str, i64> = HashMap::new();
    for c in &channels {
        let (holder, epoch, valid_until) = row(&table, c);
        assert_eq!(holder, NAMES[leader[c]], "channel {c}: {table:?}");
        assert!(valid_until > table.db_now, "channel {c}: {table:?}");
        epochs.insert(c, epoch);
    }
    // Every channel's tokens are at LINE, and each group's is stored.
    for c in &channels {
        let tokens = lab.tokens_of(c).await;
        let owner = owners(&lab, c);
        for group in GROUPS {
            assert!(
                tokens
                    .iter()
                    .any(|t| owner.get(&t.key_id).map(String::as_str) == Some(group)),
                "no token of {c}/{group} at the sandbox: {tokens:?}"
            );
        }
    }

    // kill -9 the instance leading the most channels.
    let victim = (0..NAMES.len())
        .max_by_key(|i| channels.iter().filter(|c| leader[*c] == *i).count())
        .unwrap();
    let moved: Vec<&str> = channels
        .iter()
        .copied()
        .filter(|c| leader[c] == victim)
        .collect();
    assert!(
        moved.len() >= 2,
        "the victim should lead several channels: {leader:?}"
    );
    let survivors: Vec<usize> = (0..NAMES.len()).filter(|i| *i != victim).collect();
    let survivor_names: Vec<&str> = survivors.iter().map(|i| NAMES[*i]).collect();
    let marks: Vec<usize> = procs.iter().map(Proc::mark).collect();
    procs[victim].kill9().await;
    // Its grants as it left them: the dead renew no more. (On a machine so
    // slow that a grant already ran out and was taken before this read,
    // its last renewal came before the read, so it ended no later than
    // the read's database time plus a lease: a looser bound, still sound.)
    let after_kill = lease_table(&lab).await;
    let mut ended: HashMap<&str, DateTime<Utc>> = HashMap::new();
    for c in &moved {
        let (holder, epoch, valid_until) = row(&after_kill, c);
        ended.insert(
            c,
            if holder == NAMES[victim] && epoch == epochs[c] {
                valid_until
            } else {
                after_kill.db_now + LEASE
            },
        );
    }

    let survivor_procs = [&procs[survivors[0]], &procs[survivors[1]]];
    let survivor_marks = [marks[survivors[0]], marks[survivors[1]]];
    for c in &moved {
        // The first survivor to lead it does so under the next epoch ...
        let (_, line) = first_of(
            survivor_procs,
            survivor_marks,
            &format!("a survivor leading channel {c}"),
            leading_on(c),
        )
        .await;
        assert_eq!(
            line.field("epoch").as_deref(),
            Some((epochs[c] + 1).to_string().as_str()),
            "{}",
            line.text
        );
        // ... at a database time no later than the dead grant's end plus
        // the takeover grace (one renewal interval), a keeper tick and
        // slack for a loaded machine. `valid_until - LEASE` is the grant's
        // last renewal, no earlier than the grant itself: a sound bound.
        let now = lease_table(&lab).await;
        let (holder, epoch, valid_until) = row(&now, c);
        assert!(survivor_names.contains(&holder.as_str()), "{now:?}");
        assert!(epoch > epochs[c], "{now:?}");
        let granted_by = valid_until - LEASE;
        let bound = ended[c] + chrono::Duration::seconds(10);
        assert!(
            granted_by <= bound,
            "channel {c} was taken over at {granted_by}, its dead grant ended at {}",
            ended[c]
        );
    }
    // Each moved channel settles with the survivor the rule now prefers,
    // which rotates it. A group whose issuance was in flight when the
    // leader died is counted as possibly issued and may be held back (the
    // takeover says so); every other group rotates.
    let mut heirs: HashMap<&str, usize> = HashMap::new();
    for c in &moved {
        let heir = survivors[preferred(&survivor_names, c)];
        heirs.insert(c, heir);
        let (led, _) = procs[heir]
            .wait_for(marks[heir], &format!("its heir leading {c}"), leading_on(c))
            .await;
        procs[heir]
            .wait_for(led, &format!("a rotation of {c} by its heir"), issued_on(c))
            .await;
        let in_doubt: HashSet<String> = survivors
            .iter()
            .flat_map(|s| procs[*s].lines().into_iter().skip(marks[*s]))
            .filter(|l| {
                l.begins("taking the channel over") && l.field("channel").as_deref() == Some(*c)
            })
            .filter_map(|l| l.field("group"))
            .collect();
        assert!(in_doubt.len() <= 1, "{c}: {in_doubt:?}");
        for group in GROUPS.iter().filter(|g| !in_doubt.contains(**g)) {
            procs[heir]
                .wait_for(
                    led,
                    &format!("a rotation of {c}/{group} by its heir"),
                    issued_on_group(c, group),
                )
                .await;
        }
    }
    // The database: moved channels are the heirs', under a newer epoch;
    // the others never moved (same holder, same epoch).
    let end = lease_table(&lab).await;
    for c in &channels {
        let (holder, epoch, valid_until) = row(&end, c);
        assert!(valid_until > end.db_now, "channel {c}: {end:?}");
        match heirs.get(c) {
            Some(heir) => {
                assert_eq!(holder, NAMES[*heir], "channel {c}: {end:?}");
                assert!(epoch > epochs[c], "channel {c}: {end:?}");
            }
            None => {
                assert_eq!(holder, NAMES[leader[c]], "channel {c}: {end:?}");
                assert_eq!(epoch, epochs[c], "channel {c}: {end:?}");
            }
        }
    }
    for s in &survivors {
        procs[*s].signal("TERM");
    }
    for s in &survivors {
        procs[*s].exit_ok().await;
    }

    // At the sandbox: LINE's limits held on every channel, every token is
    // stored except, on a moved channel, at most the one a killed issuance
    // got from LINE (nobody received it), and no value was printed.
    let mut all_tokens = Vec::new();
    for c in &channels {
        let tokens = lab.tokens_of(c).await;
        assert!(tokens.len() >= 2, "{c}: {tokens:?}");
        assert_within_limits(&lab, c, &tokens);
        let lost = unstored(&lab, c, &tokens);
        let allowed = usize::from(moved.contains(c));
        assert!(
            lost.len() <= allowed,
            "channel {c}: tokens LINE issued that the store does not hold: {lost:?}"
        );
        all_tokens.extend(tokens);
    }
    let needles = needles(&all_tokens);
    for proc in procs.iter().chain([&lab.sandbox, &lab.keygen]) {
        assert_no_needle_in(&needles, &proc.name, &proc.all_text());
    }
}

// ---------------------------------------------------------------------
// 2. Host clocks ten minutes off, in-process daemons.
// ---------------------------------------------------------------------

/// The system clock shifted by a fixed offset: a host whose clock is set
/// wrong. Waits are measured on it too, as the system clock's are.
#[derive(Debug, Clone, Copy)]
struct OffsetClock(chrono::Duration);

impl Clock for OffsetClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.0
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> Sleep<'_> {
        let wait = (deadline - self.now()).clamp(chrono::Duration::zero(), MAX_SYSTEM_SLEEP);
        Box::pin(tokio::time::sleep(wait.to_std().unwrap_or_default()))
    }
}

/// Tokens live an hour and rotate ten minutes before expiry: twenty
/// minutes of disagreement between two hosts' clocks leaves a token
/// stored by either far from due on the other. Assertions are valid for
/// 15 minutes: LINE judges `exp` by its own clock, and the default 10
/// would be already past from a host 10 minutes behind (LINE refuses
/// that; it is no lease matter).
const SKEWED: &str = r#"
token_lifetime = "1h"
rotate_before = "10m"
rotation_jitter = "1s"
verify_interval = "1h"
reconcile_interval = "1h"
assertion_window = "15m"
"#;

/// The `[ha]` lines of a skewed instance: a 30 s lease, so a takeover
/// within seconds of a clean stop shows the release, not the expiry.
fn ha_long(name: &str) -> String {
    format!("instance_id = \"{name}\"\nlease = \"30s\"\nrenew = \"1s\"")
}

/// Log lines captured as JSON objects from this thread's daemons.
#[derive(Default)]
struct Capture {
    lines: Mutex<Vec<Value>>,
    text: Mutex<String>,
    news: watch::Sender<usize>,
}

impl Capture {
    fn push(&self, line: &str) {
        let value: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        self.text.lock().unwrap().push_str(line);
        self.text.lock().unwrap().push('\n');
        let mut lines = self.lines.lock().unwrap();
        lines.push(value);
        let n = lines.len();
        drop(lines);
        self.news.send_replace(n);
    }

    fn mark(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    fn find(&self, from: usize, pred: &impl Fn(&Value) -> bool) -> Option<(usize, Value)> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .enumerate()
            .skip(from)
            .find(|(_, l)| pred(l))
            .map(|(i, l)| (i, l.clone()))
    }

    fn all_text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// Waits for the first line at or after `from` matching `pred`.
    async fn wait_for(
        &self,
        from: usize,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> (usize, Value) {
        let mut news = self.news.subscribe();
        let found = tokio::time::timeout(PATIENCE, async {
            loop {
                news.borrow_and_update();
                if let Some(found) = self.find(from, &pred) {
                    return found;
                }
                news.changed().await.unwrap();
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "the daemons did not log {what} within {PATIENCE:?}; they logged:\n{}",
                self.all_text()
            )
        })
    }
}

/// One event's JSON, written by the fmt layer in pieces, pushed whole.
struct CaptureWriter {
    capture: Arc<Capture>,
    buf: Vec<u8>,
}

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for CaptureWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf).into_owned();
        for line in text.lines().filter(|l| !l.is_empty()) {
            self.capture.push(line);
        }
    }
}

/// A message field equal to `message`, and each `(name, value)` field.
fn event(message: &str, fields: &[(&str, &str)]) -> impl Fn(&Value) -> bool + use<> {
    let message = message.to_owned();
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    move |l: &Value| {
        l["message"].as_str() == Some(message.as_str())
            && fields.iter().all(|(n, v)| match &l[n.as_str()] {
                Value::String(s) => s == v,
                Value::Number(x) => x.to_string() == *v,
                _ => false,
            })
    }
}

/// One in-process instance: the daemon, its shutdown, the LINE endpoints
/// it called, and its rotation events.
struct Instance {
    name: &'static str,
    daemon: Option<Daemon>,
    shutdown: CancellationToken,
    calls: Arc<Mutex<Vec<&'static str>>>,
    events: tokio::sync::broadcast::Receiver<RotationEvent>,
}

impl Instance {
    async fn start(name: &'static str, config: &Path, offset: chrono::Duration) -> Self {
        let valid = Settings::load(config, &HashMap::new())
            .unwrap()
            .validate()
            .unwrap();
        let clock: SharedClock = Arc::new(OffsetClock(offset));
        assert!((clock.now() - Utc::now() - offset).num_seconds().abs() < 5);
        let calls: Arc<Mutex<Vec<&'static str>>> = Arc::default();
        let record = Arc::clone(&calls);
        let shutdown = CancellationToken::new();
        let options = RunOptions {
            observer: Some(Arc::new(move |endpoint, _status, _latency| {
                record.lock().unwrap().push(endpoint.as_str());
            })),
            ..RunOptions::default()
        };
        let daemon = Daemon::start(&valid, clock, shutdown.clone(), options)
            .await
            .unwrap_or_else(|e| panic!("{name} did not start: {e:#}"));
        let mut daemon = daemon;
        // Subscribed before its first pass: nothing it did is missed.
        let events = std::mem::replace(&mut daemon.events, daemon.rotator.subscribe());
        Self {
            name,
            daemon: Some(daemon),
            shutdown,
            calls,
            events,
        }
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().unwrap()
    }

    fn calls(&self, endpoint: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|e| **e == endpoint)
            .count()
    }

    fn all_calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    fn led(&self) -> Vec<(ChannelId, i64)> {
        self.daemon()
            .rotator
            .leadership()
            .expect("an [ha] daemon has a leadership")
            .led()
            .into_iter()
            // The daemon-wide duties are leased too; only channels here.
            .filter(|(c, _)| c.as_str() != linetokd::leader::DAEMON_DUTIES)
            .map(|(c, e)| (c, e.0))
            .collect()
    }

    /// The tokens it issued (its rotation events so far).
    fn issued(&mut self) -> Vec<String> {
        let mut groups = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            if let RotationEvent::Issued { group, .. } = event {
                groups.push(group.as_str().to_owned());
            }
        }
        groups
    }

    /// Stops it cleanly: cancel, then wait for every task.
    async fn stop(&mut self) {
        self.shutdown.cancel();
        let daemon = self.daemon.take().unwrap();
        tokio::time::timeout(PATIENCE, daemon.stopped())
            .await
            .unwrap_or_else(|_| panic!("{} did not stop within {PATIENCE:?}", self.name))
            .unwrap();
    }
}

/// Waits until instance `name` has recorded itself alive `n` times: its
/// keeper records the heartbeat, then reads the lease table and acts on
/// it, so after two heartbeats it has acted at least once. The keeper
/// logs nothing while it only waits, so this polls the database (every
/// 100 ms, bounded by [`PATIENCE`]): there is no other signal.
async fn keeper_rounds(lab: &Lab, name: &str, n: usize) {
    let url = std::fs::read_to_string(lab.dir().join("database.url")).unwrap();
    let (client, connection) = tokio_postgres::connect(url.trim(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let mut seen: Vec<i64> = Vec::new();
    let waited = tokio::time::timeout(PATIENCE, async {
        let mut every = tokio::time::interval(std::time::Duration::from_millis(100));
        while seen.len() < n {
            every.tick().await;
            let rows = client
                .query(
                    "SELECT alive_until FROM ha_instances WHERE instance_id = $1",
                    &[&name],
                )
                .await
                .unwrap();
            if let Some(row) = rows.first() {
                let alive_until: i64 = row.get(0);
                if seen.last() != Some(&alive_until) {
                    seen.push(alive_until);
                }
            }
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "{name} recorded itself alive {} times in {PATIENCE:?}",
        seen.len()
    );
    drop(client);
    driver.abort();
}

/// Runs the skewed-clocks scenario with the first leader's clock
/// `leader_offset` off and the other's `other_offset`.
fn skewed_clocks(test: &str, leader_offset: chrono::Duration, other_offset: chrono::Duration) {
    in_process(|capture| async move {
        skewed_scenario(test, &capture, leader_offset, other_offset).await;
    });
}

/// Runs `body` on one thread whose log events (the in-process daemons')
/// go to the capture it is given.
fn in_process<F, Fut>(body: F)
where
    F: FnOnce(Arc<Capture>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let capture = Arc::new(Capture::default());
    let writer = Arc::clone(&capture);
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_env_filter("linetokd=debug")
        .with_writer(move || CaptureWriter {
            capture: Arc::clone(&writer),
            buf: Vec::new(),
        })
        .finish();
    // As in long_lived.rs: a second dispatcher makes tracing ask ours for
    // callsites a parallel test thread saw first; one thread, so ours sees
    // every event of the daemons' tasks.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let _guard = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(body(capture));
}

async fn skewed_scenario(
    test: &str,
    capture: &Capture,
    leader_offset: chrono::Duration,
    other_offset: chrono::Duration,
) {
    let Some(lab) = Lab::start_on_postgres(SKEWED, "info", test).await else {
        return;
    };
    let names = ["east", "west"];
    let l = preferred(&names, CHANNEL);
    let f = 1 - l;
    let configs: Vec<PathBuf> = names
        .iter()
        .map(|n| lab.ha_instance(n, SKEWED, "2s", &ha_long(n)))
        .collect();

    // The preferred instance starts first and leads; the other joins as a
    // follower (so it never had a reason to call LINE).
    let mut leader = Instance::start(names[l], &configs[l], leader_offset).await;
    capture
        .wait_for(
            0,
            "the first leader leading",
            event(
                "leading the channel",
                &[("channel", CHANNEL), ("instance", names[l])],
            ),
        )
        .await;
    for group in GROUPS {
        capture
            .wait_for(
                0,
                &format!("a token for {group}"),
                event("token issued", &[("channel", CHANNEL), ("group", group)]),
            )
            .await;
    }
    // The host clock is off by the offset, but under [ha] the engine runs
    // on the database's time: the tokens are dated by it (this machine's
    // real time, within seconds), and LINE's Date agrees with it, so no
    // skew is reported.
    let real_now = chrono::Utc::now();
    for t in lab.stored() {
        let off = (t.record.issued_at - real_now).num_seconds().abs();
        assert!(
            off < 60,
            "a token dated {} by a host {leader_offset} off",
            t.record.issued_at
        );
    }
    assert!(
        capture
            .find(0, &|l: &Value| l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("the local clock is")))
            .is_none(),
        "a clock skew was reported"
    );
    let mut other = Instance::start(names[f], &configs[f], other_offset).await;
    // The follower published what the leader stored (its sinks are
    // written before its start returns) ...
    let stored: Vec<String> = lab
        .stored()
        .into_iter()
        .map(|t| t.value.expose().to_owned())
        .collect();
    for group in GROUPS {
        let sink = configs[f].parent().unwrap().join(format!("{group}.token"));
        let value = std::fs::read_to_string(&sink).unwrap_or_default();
        assert!(
            stored.contains(&value.trim().to_owned()),
            "the follower's sink of {group} holds no stored token"
        );
    }
    // ... and has looked at the lease table at least once.
    keeper_rounds(&lab, names[f], 2).await;
    // Exactly one leads: the row is the leader's, valid by the database's
    // clock; the leader holds that epoch, the follower nothing, and the
    // follower never called LINE.
    let table = lease_table(&lab).await;
    let (holder, epoch, valid_until) = row(&table, CHANNEL);
    assert_eq!(holder, names[l], "{table:?}");
    assert!(valid_until > table.db_now, "{table:?}");
    assert_eq!(leader.led(), [(ChannelId::new(CHANNEL), epoch)]);
    assert!(other.led().is_empty(), "{:?}", other.led());
    assert_eq!(other.all_calls(), 0, "{:?}", other.calls.lock().unwrap());
    assert_eq!(leader.issued().len(), 2);
    let tokens_before = lab.tokens().await;
    assert_eq!(tokens_before.len(), 2, "{tokens_before:?}");

    // A clean stop hands the grant back: the row ends at once.
    let mark = capture.mark();
    leader.stop().await;
    let released = lease_table(&lab).await;
    let (holder, same_epoch, ended) = row(&released, CHANNEL);
    if holder == names[l] {
        assert_eq!(same_epoch, epoch);
        assert!(ended <= released.db_now, "{released:?}");
    }
    // The other takes over within seconds under the next epoch: database
    // times, the grant's last renewal (no earlier than the grant) no more
    // than a few seconds after the release, far less than the 30 s lease
    // it would otherwise have waited for.
    let (_, line) = capture
        .wait_for(
            mark,
            "the takeover",
            event(
                "leading the channel",
                &[("channel", CHANNEL), ("instance", names[f])],
            ),
        )
        .await;
    assert_eq!(line["epoch"].as_i64(), Some(epoch + 1), "{line}");
    let now = lease_table(&lab).await;
    let (holder, new_epoch, valid_until) = row(&now, CHANNEL);
    assert_eq!(holder, names[f], "{now:?}");
    assert_eq!(new_epoch, epoch + 1, "{now:?}");
    let granted_by = valid_until - chrono::Duration::seconds(30);
    let released_at = if row(&released, CHANNEL).0 == names[l] {
        ended
    } else {
        // Taken already when read: the release came before that grant.
        granted_by
    };
    assert!(
        granted_by <= released_at + chrono::Duration::seconds(10),
        "taken over at {granted_by}, released at {released_at}"
    );
    assert_eq!(other.led(), [(ChannelId::new(CHANNEL), epoch + 1)]);
    // Its first work under the grant (the takeover, then a round) issues
    // nothing: by its clock, twenty minutes off the first leader's, the
    // stored tokens are still far from due.
    let (took, _) = capture
        .wait_for(
            mark,
            "the new leader's takeover work",
            event("took the channel over", &[("channel", CHANNEL)]),
        )
        .await;
    capture
        .wait_for(took, "the new leader's round", event("pass done", &[]))
        .await;
    assert_eq!(other.calls("v21_issue"), 0, "{:?}", other.calls);
    assert!(other.issued().is_empty());
    other.stop().await;

    let tokens = lab.tokens().await;
    assert_eq!(
        tokens.iter().map(|t| &t.key_id).collect::<Vec<_>>(),
        tokens_before.iter().map(|t| &t.key_id).collect::<Vec<_>>()
    );
    assert!(tokens.iter().all(|t| t.state == "live"), "{tokens:?}");
    assert_at_most_two_live(&tokens, &lab);
    assert_within_limits(&lab, CHANNEL, &tokens);
    let needles = needles(&tokens);
    assert_no_needle_in(&needles, "the daemons", &capture.all_text());
    lab.assert_nothing_secret_printed(&[]).await;
}

#[test]
fn a_leader_ten_minutes_ahead_hands_over_to_one_ten_minutes_behind_within_seconds() {
    skewed_clocks(
        "ha_skew_ahead_first",
        chrono::Duration::minutes(10),
        chrono::Duration::minutes(-10),
    );
}

#[test]
fn a_leader_ten_minutes_behind_hands_over_to_one_ten_minutes_ahead_within_seconds() {
    skewed_clocks(
        "ha_skew_behind_first",
        chrono::Duration::minutes(-10),
        chrono::Duration::minutes(10),
    );
}

/// [`SKEWED`] with tokens that rotate every few seconds ([`ROTATING`]'s
/// lifetimes): twenty minutes between two hosts' clocks is far longer than
/// a token lives.
const SKEWED_ROTATING: &str = r#"
token_lifetime = "16s"
rotate_before = "10s"
rotation_jitter = "1s"
verify_interval = "3s"
reconcile_interval = "4s"
max_issues_per_hour = 1000
assertion_window = "15m"
"#;

async fn skewed_rotation_scenario(
    test: &str,
    capture: &Capture,
    leader_offset: chrono::Duration,
    other_offset: chrono::Duration,
) {
    let Some(lab) = Lab::start_on_postgres(SKEWED_ROTATING, "info", test).await else {
        return;
    };
    let names = ["east", "west"];
    let l = preferred(&names, CHANNEL);
    let f = 1 - l;
    let configs: Vec<PathBuf> = names
        .iter()
        .map(|n| lab.ha_instance(n, SKEWED_ROTATING, "2s", &ha_long(n)))
        .collect();
    let mut leader = Instance::start(names[l], &configs[l], leader_offset).await;
    // Each group rotated once: two live tokens each at LINE.
    for group in GROUPS {
        let pred = event("token issued", &[("channel", CHANNEL), ("group", group)]);
        let (first, _) = capture.wait_for(0, "a first token", &pred).await;
        capture.wait_for(first + 1, "a rotation", &pred).await;
    }
    let mut other = Instance::start(names[f], &configs[f], other_offset).await;
    keeper_rounds(&lab, names[f], 2).await;
    let mark = capture.mark();
    leader.stop().await;
    capture
        .wait_for(
            mark,
            "the takeover",
            event(
                "leading the channel",
                &[("channel", CHANNEL), ("instance", names[f])],
            ),
        )
        .await;
    // The new leader works the channel for a while: a token per group.
    for group in GROUPS {
        capture
            .wait_for(
                mark,
                &format!("{group} issued by the new leader"),
                event("token issued", &[("channel", CHANNEL), ("group", group)]),
            )
            .await;
    }
    other.stop().await;
    let tokens = lab.tokens().await;
    assert_at_most_two_live(&tokens, &lab);
    assert_within_limits(&lab, CHANNEL, &tokens);
    let needles = needles(&tokens);
    assert_no_needle_in(&needles, "the daemons", &capture.all_text());
    lab.assert_nothing_secret_printed(&[]).await;
}

/// A leader ten minutes behind stores tokens whose expiry, on its clock,
/// is LINE's; the successor ten minutes ahead must still count them while
/// LINE accepts them (and LINE's key-ID list says it does), so that it
/// never issues a third live token for a group.
#[test]
fn tokens_stored_by_a_leader_behind_are_not_judged_expired_early_by_one_ahead() {
    in_process(|capture| async move {
        skewed_rotation_scenario(
            "ha_skew_rotating_behind_first",
            &capture,
            chrono::Duration::minutes(-10),
            chrono::Duration::minutes(10),
        )
        .await;
    });
}
