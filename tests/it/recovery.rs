//! Recovery that keeps the core promise (issue 8, "Why" items 1 to 4): the
//! real daemon (`app::Daemon`: scheduler, rotator, store, LINE client) and
//! the in-process sandbox on one manual clock, each breakage driven as a
//! scenario and judged from the outside, at the sandbox.
//!
//! 1. A near-full channel (29 foreign tokens expiring at fractional
//!    seconds) is filled as soon as LINE has room, with no 30-minute hold.
//! 2. A fixed mistake (a wrong `kid`) is picked up at once by a reload, by
//!    `linetokd rotate` (the rotator's `request_rotation`) and by a restart.
//! 3. 20 % 500s and 10 % 429s on every endpoint for a virtual day never
//!    leave a group without a live token.
//! 4. A token verify refuses while LINE still lists it is revoked and
//!    replaced, and the daemon's channel count matches LINE's; a fresh
//!    token that fails its first verify is revoked and retried on the
//!    transient schedule.
//!
//! After every step (the daemon asleep on the clock) [`Watch`] reads the
//! sandbox's live tokens, maps ours to groups through the store, and checks
//! at most 2 live per group and 30 per channel; it times every stretch a
//! group spent without a live token (exactly: from the end of life of its
//! last token, expiry or revocation, to the issue of the next), which each
//! test bounds by what LINE made unavoidable.
//!
//! Time moves as in `simulation.rs`: nothing sleeps; the driver waits until
//! the daemon sleeps on the [`ManualClock`], checks, moves the clock to the
//! daemon's deadline and waits for the pass that wakes it.
//!
//! Depends on `support` (fixture key, start time) and the crate's public
//! API only.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Duration, Utc};
use linetokd::app::{Daemon, RunOptions};
use linetokd::clock::{Clock, ManualClock, SharedClock, Sleep};
use linetokd::config::{Settings, ValidConfig};
use linetokd::domain::{ChannelId, ChannelSecret, FailureKind, GroupName, KeyId, SigningKid};
use linetokd::line::keys::VerifyingKey;
use linetokd::policy::{self, Rules};
use linetokd::sandbox::faults::ANY_ENDPOINT;
use linetokd::sandbox::{
    Endpoint, FaultRule, Faults, Sandbox, SandboxTokenState, TokenIssuer, VerifyRefusal,
};
use linetokd::snapshot::Snapshot;
use linetokd::store::{Durability, EventKind, Store};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support;

/// LINE's cap on live v2.1 tokens per channel.
const CAP: usize = 30;

/// How long after a foreign token's expiry the daemon may take to fill the
/// slot: it cannot know the instant (LINE does not say), so it lists the key
/// IDs again within `full_recheck` (1 min), plus a second's margin.
fn recheck_bound() -> Duration {
    Duration::minutes(1) + Duration::seconds(1)
}

/// One configured channel.
#[derive(Clone)]
pub(crate) struct Chan {
    pub(crate) id: ChannelId,
    name: String,
    /// The `kid` the fixture key is registered under at LINE.
    kid_at_line: SigningKid,
    /// The `kid` the config names (wrong when it differs).
    kid_in_config: SigningKid,
    pub(crate) secret: String,
    groups: Vec<GroupName>,
    /// Groups kept with short-lived tokens (`kind = "short-lived"`). The
    /// [`Watch`] follows v2.1 groups only (it reads LINE's v2.1 listing);
    /// `short_lived.rs` watches these itself.
    pub(crate) short_lived: Vec<GroupName>,
    /// False leaves `key_file` and `kid` out of the config (a channel that
    /// needs no assertion key).
    pub(crate) assertion: bool,
}

pub(crate) fn chan(i: usize, groups: usize) -> Chan {
    let kid = SigningKid::new(format!("recovery-kid-{i:02}"));
    Chan {
        id: ChannelId::new(format!("{}", 1_700_000_000 + i)),
        name: format!("ch{i:02}"),
        kid_at_line: kid.clone(),
        kid_in_config: kid,
        secret: format!("recovery-secret-{i:02}-0123456789abcdef"),
        groups: (0..groups)
            .map(|g| GroupName::new(format!("g{g:02}")))
            .collect(),
        short_lived: Vec::new(),
        assertion: true,
    }
}

/// The `[rotation]` section: the defaults, with the intervals given.
pub(crate) fn rotation(
    lifetime: &str,
    before: &str,
    jitter: &str,
    verify: &str,
    reconcile: &str,
) -> String {
    format!(
        "\ntoken_lifetime = \"{lifetime}\"\nrotate_before = \"{before}\"\n\
         rotation_jitter = \"{jitter}\"\nverify_interval = \"{verify}\"\n\
         reconcile_interval = \"{reconcile}\"\nmax_issues_per_hour = 12\n"
    )
}

fn write_private(path: &Path, bytes: &[u8]) {
    fs::write(path, bytes).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// Waits on the daemon with a generous real-time guard, so a stuck daemon
/// fails the test instead of hanging it (not a timed assertion: a pass
/// takes milliseconds).
async fn guarded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(std::time::Duration::from_secs(120), f).await {
        Ok(v) => v,
        Err(_) => panic!("the daemon is stuck: {what} did not happen within 120 s of real time"),
    }
}

/// The sandbox on a loopback port, a config for it, and the real daemon on
/// the sandbox's manual clock; the daemon can be restarted on the same
/// database and reloaded with an edited config.
/// The sandbox's clock: the rig's, `offset_ms` ahead (LINE's clock and
/// ours disagree).
struct OffsetClock {
    base: ManualClock,
    offset_ms: Arc<AtomicI64>,
}

impl OffsetClock {
    fn offset(&self) -> Duration {
        Duration::milliseconds(self.offset_ms.load(Ordering::SeqCst))
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> DateTime<Utc> {
        self.base.now() + self.offset()
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> Sleep<'_> {
        self.base.sleep_until(deadline - self.offset())
    }
}

pub(crate) struct Rig {
    pub(crate) clock: ManualClock,
    /// How far LINE's (the sandbox's) clock is ahead of ours.
    line_ahead_ms: Arc<AtomicI64>,
    pub(crate) sandbox: Sandbox,
    pub(crate) base_url: String,
    pub(crate) chans: Vec<Chan>,
    rotation: String,
    daemon: Option<Daemon>,
    daemon_stop: CancellationToken,
    sandbox_stop: CancellationToken,
    watch: Watch,
    dir: tempfile::TempDir,
}

impl Rig {
    /// Registers `chans` at a fresh sandbox (each with its `kid_at_line`),
    /// applies `faults`, lets `prepare` act on the sandbox before the daemon
    /// exists, then starts the daemon.
    pub(crate) async fn start(
        chans: Vec<Chan>,
        rotation: String,
        faults: Faults,
        prepare: impl FnOnce(&Sandbox),
    ) -> Self {
        let clock = ManualClock::new(support::start_time());
        let line_ahead_ms = Arc::new(AtomicI64::new(0));
        let sandbox = Sandbox::empty(Arc::new(OffsetClock {
            base: clock.clone(),
            offset_ms: Arc::clone(&line_ahead_ms),
        }));
        sandbox.set_faults(faults).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let sandbox_stop = CancellationToken::new();
        tokio::spawn(sandbox.clone().serve(listener, sandbox_stop.clone()));
        let public = support::fixture_key().public_jwk().to_json_pretty();
        for c in &chans {
            sandbox
                .register_channel(
                    c.id.clone(),
                    ChannelSecret::new(c.secret.clone()),
                    vec![(
                        c.kid_at_line.clone(),
                        VerifyingKey::parse(public.as_bytes()).unwrap(),
                    )],
                )
                .unwrap();
        }
        prepare(&sandbox);
        let dir = tempfile::tempdir().unwrap();
        let pem = fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys/rsa2048-pkcs8.pem"),
        )
        .unwrap();
        write_private(&dir.path().join("assertion.pem"), &pem);
        let watch = Watch::new(clock.now(), &chans);
        let mut rig = Self {
            clock,
            line_ahead_ms,
            sandbox,
            base_url,
            chans,
            rotation,
            daemon: None,
            daemon_stop: CancellationToken::new(),
            sandbox_stop,
            watch,
            dir,
        };
        rig.start_daemon().await;
        rig
    }

    pub(crate) fn config_path(&self) -> PathBuf {
        self.dir.path().join("linetokd.toml")
    }

    /// Writes the config from `self.chans` and loads it.
    fn write_config(&self) -> ValidConfig {
        let d = self.dir.path();
        let mut toml = format!(
            "[daemon]\ndatabase = \"{db}\"\nstate_dir = \"{dir}\"\nline_api = \"{api}\"\n\
             listen = \"127.0.0.1:0\"\nrequest_timeout = \"10s\"\n\n[rotation]{rotation}",
            db = d.join("linetokd.db").display(),
            dir = d.display(),
            api = self.base_url,
            rotation = self.rotation,
        );
        for c in &self.chans {
            let secret = d.join(format!("{}.secret", c.name));
            write_private(&secret, c.secret.as_bytes());
            write!(
                toml,
                "\n[[channel]]\nid = \"{}\"\nname = \"{}\"\nsecret_file = \"{}\"\n",
                c.id,
                c.name,
                secret.display()
            )
            .unwrap();
            if c.assertion {
                write!(
                    toml,
                    "key_file = \"{}\"\nkid = \"{}\"\n",
                    d.join("assertion.pem").display(),
                    c.kid_in_config,
                )
                .unwrap();
            }
            for g in &c.groups {
                write!(toml, "\n  [[channel.group]]\n  name = \"{g}\"\n").unwrap();
            }
            for g in &c.short_lived {
                write!(
                    toml,
                    "\n  [[channel.group]]\n  name = \"{g}\"\n  kind = \"short-lived\"\n"
                )
                .unwrap();
            }
        }
        fs::write(self.config_path(), toml).unwrap();
        Settings::load(&self.config_path(), &HashMap::new())
            .unwrap()
            .validate()
            .unwrap()
    }

    /// Starts a daemon on the rig's database with the config as it stands,
    /// and waits for its first pass to end.
    async fn start_daemon(&mut self) {
        assert!(self.daemon.is_none());
        let config = self.write_config();
        let shared: SharedClock = Arc::new(self.clock.clone());
        self.daemon_stop = CancellationToken::new();
        let daemon = Daemon::start(
            &config,
            shared,
            self.daemon_stop.clone(),
            RunOptions {
                seed: Some(8),
                retry: None,
                durability: Durability::Unsynced,
                observer: None,
                manual_alerts: false,
            },
        )
        .await
        .unwrap();
        self.daemon = Some(daemon);
        self.deadline().await;
    }

    /// Stops the daemon and waits until every task of it has ended.
    async fn stop_daemon(&mut self) {
        self.daemon_stop.cancel();
        let daemon = self.daemon.take().unwrap();
        guarded("shutdown", daemon.stopped()).await.unwrap();
    }

    pub(crate) fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().unwrap()
    }

    pub(crate) fn store(&self) -> &Store {
        self.daemon().rotator.store()
    }

    pub(crate) fn passes(&self) -> u64 {
        self.daemon().scheduler.borrow().passes
    }

    /// Waits until the daemon sleeps and returns when it wants to wake.
    pub(crate) async fn deadline(&self) -> DateTime<Utc> {
        guarded("the next sleep", self.clock.next_deadline()).await
    }

    /// Waits for the pass after `before` to end, then for the daemon to
    /// sleep again.
    pub(crate) async fn pass_after(&self, before: u64) {
        let mut state = self.daemon().scheduler.clone();
        guarded("a pass", state.wait_for(|s| s.passes > before))
            .await
            .unwrap();
        self.deadline().await;
    }

    /// Reloads the config as it stands now (what the file watch and
    /// SIGHUP do) and waits for the pass it causes.
    pub(crate) async fn reload(&self) {
        let before = self.passes();
        let config = self.write_config();
        self.daemon().reload(&config).await.unwrap();
        self.pass_after(before).await;
    }

    /// Checks the world now (see [`Watch::observe`]).
    fn observe(&mut self) {
        let store = self.daemon.as_ref().unwrap().rotator.store().clone();
        self.watch.observe(&self.sandbox, &store);
    }

    /// Lets the daemon run every pass it wants until `until`, checking the
    /// world after each; ends with the clock at `until`.
    pub(crate) async fn run_until(&mut self, until: DateTime<Utc>) {
        let mut same_instant = 0;
        let mut last = self.now();
        loop {
            let deadline = self.deadline().await;
            self.observe();
            // A daemon that keeps asking to wake at the same instant spins.
            same_instant = if deadline <= last {
                same_instant + 1
            } else {
                0
            };
            last = deadline;
            assert!(
                same_instant < 1000,
                "the daemon wakes again and again at {deadline} without time moving"
            );
            if deadline > until {
                self.clock.set(until.max(self.clock.now()));
                self.observe();
                return;
            }
            let before = self.passes();
            self.clock.set(deadline.max(self.clock.now()));
            self.pass_after(before).await;
        }
    }

    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The live tokens of ours LINE holds for one group, oldest first.
    fn live_of(&self, ci: usize, group: &str) -> Vec<linetokd::sandbox::LiveToken> {
        self.sandbox
            .live_tokens(&self.chans[ci].id)
            .into_iter()
            .filter(|t| t.issuer == TokenIssuer::Api)
            .filter(|t| {
                self.store()
                    .token(&t.key_id)
                    .unwrap()
                    .is_some_and(|s| s.group.as_str() == group)
            })
            .collect()
    }

    /// The daemon's view of a channel now: (live ours, foreign, unsettled,
    /// free capacity).
    fn counts(&self, ci: usize) -> (u32, u32, u32, i64) {
        channel_counts(self.store(), &self.chans[ci].id, self.now())
    }

    pub(crate) async fn finish(mut self) -> Watch {
        self.observe();
        self.stop_daemon().await;
        self.sandbox_stop.cancel();
        self.watch.close(self.clock.now());
        self.watch
    }
}

/// The daemon's counts for a channel, read from its store as `status` does:
/// (live ours, foreign, unsettled, free capacity).
fn channel_counts(store: &Store, channel: &ChannelId, now: DateTime<Utc>) -> (u32, u32, u32, i64) {
    let state = Snapshot::read(store, channel, now)
        .unwrap()
        .state(channel, true);
    let view = policy::ChannelView {
        live_ours: policy::live_ours(now, &state.groups, linetokd::domain::TokenKind::V21),
        ..state.view
    };
    let capacity = policy::free_capacity(&view, &Rules::default(), 0);
    (view.live_ours, view.foreign, view.lost, capacity)
}

/// A stretch a group spent without a live token at LINE.
#[derive(Debug, Clone)]
struct Gap {
    channel: usize,
    group: GroupName,
    /// When its last token died (expiry or revocation), or the daemon's
    /// start for its first token.
    from: DateTime<Utc>,
    /// When the next token was issued; `None` if the run ended first.
    to: Option<DateTime<Utc>>,
    /// Before the group's first token.
    first: bool,
}

impl Gap {
    fn length(&self, end: DateTime<Utc>) -> Duration {
        self.to.unwrap_or(end) - self.from
    }
}

#[derive(Default)]
struct Cover {
    /// Key IDs live at the last observation.
    live: Vec<KeyId>,
    /// The open gap's start, if the group has no live token.
    gap_from: Option<DateTime<Utc>>,
    ever_live: bool,
}

/// The outside observer: what LINE holds, checked after every step.
pub(crate) struct Watch {
    chans: Vec<(ChannelId, Vec<GroupName>)>,
    cover: BTreeMap<(usize, GroupName), Cover>,
    gaps: Vec<Gap>,
    observations: u64,
    max_live_group: usize,
    max_live_channel: usize,
    min_capacity: i64,
    end: Option<DateTime<Utc>>,
}

impl Watch {
    fn new(start: DateTime<Utc>, chans: &[Chan]) -> Self {
        let mut cover = BTreeMap::new();
        for (ci, c) in chans.iter().enumerate() {
            for g in &c.groups {
                cover.insert(
                    (ci, g.clone()),
                    Cover {
                        gap_from: Some(start),
                        ..Cover::default()
                    },
                );
            }
        }
        Self {
            chans: chans
                .iter()
                .map(|c| (c.id.clone(), c.groups.clone()))
                .collect(),
            cover,
            gaps: Vec::new(),
            observations: 0,
            max_live_group: 0,
            max_live_channel: 0,
            min_capacity: i64::MAX,
            end: None,
        }
    }

    /// Reads LINE's live tokens at one instant and checks them: our every
    /// live token is known to the store, at most 2 per group and 30 per
    /// channel; every group's coverage is tracked; the daemon's free
    /// capacity (as `status` shows it) is never negative.
    fn observe(&mut self, sandbox: &Sandbox, store: &Store) {
        self.observations += 1;
        let (now, live) = sandbox.live_tokens_all();
        for (ci, (id, groups)) in self.chans.clone().iter().enumerate() {
            let tokens = live.get(id).cloned().unwrap_or_default();
            assert!(
                tokens.len() <= CAP,
                "{now}: channel {id} has {} live tokens at LINE",
                tokens.len()
            );
            self.max_live_channel = self.max_live_channel.max(tokens.len());
            let mut by_group: BTreeMap<GroupName, Vec<&linetokd::sandbox::LiveToken>> =
                BTreeMap::new();
            for t in tokens.iter().filter(|t| t.issuer == TokenIssuer::Api) {
                let stored = store.token(&t.key_id).unwrap().unwrap_or_else(|| {
                    panic!(
                        "{now}: LINE holds {} on {id}, issued by the daemon, unknown to its store",
                        t.key_id
                    )
                });
                by_group.entry(stored.group).or_default().push(t);
            }
            for g in groups {
                let mine = by_group.get(g).cloned().unwrap_or_default();
                assert!(
                    mine.len() <= 2,
                    "{now}: {id}/{g} has {} live tokens at LINE: {:?}",
                    mine.len(),
                    mine.iter().map(|t| &t.key_id).collect::<Vec<_>>()
                );
                self.max_live_group = self.max_live_group.max(mine.len());
                let cover = self.cover.get_mut(&(ci, g.clone())).unwrap();
                if mine.is_empty() {
                    if cover.gap_from.is_none() {
                        // The exact end of life of the tokens last seen.
                        let died = cover
                            .live
                            .iter()
                            .filter_map(|k| sandbox.token(id, k))
                            .map(|t| t.revoked_at.unwrap_or(t.expires_at).min(t.expires_at))
                            .max()
                            .unwrap_or(now);
                        cover.gap_from = Some(died);
                    }
                } else if let Some(from) = cover.gap_from.take() {
                    let to = mine
                        .iter()
                        .map(|t| t.issued_at)
                        .filter(|at| *at >= from)
                        .min()
                        .unwrap_or(now);
                    self.gaps.push(Gap {
                        channel: ci,
                        group: g.clone(),
                        from,
                        to: Some(to),
                        first: !cover.ever_live,
                    });
                    cover.ever_live = true;
                }
                cover.live = mine.iter().map(|t| t.key_id.clone()).collect();
            }
            let (_, _, _, capacity) = channel_counts(store, id, now);
            assert!(
                capacity >= 0,
                "{now}: the daemon counts capacity {capacity} on {id}"
            );
            self.min_capacity = self.min_capacity.min(capacity);
        }
    }

    /// Records the gaps still open at `end`.
    fn close(&mut self, end: DateTime<Utc>) {
        self.end = Some(end);
        for ((ci, g), cover) in &self.cover {
            if let Some(from) = cover.gap_from {
                self.gaps.push(Gap {
                    channel: *ci,
                    group: g.clone(),
                    from,
                    to: None,
                    first: !cover.ever_live,
                });
            }
        }
    }

    /// The longest any group waited for its first token.
    fn longest_first_wait(&self) -> Duration {
        let end = self.end.expect("the watch is closed");
        self.gaps
            .iter()
            .filter(|g| g.first)
            .map(|g| g.length(end))
            .max()
            .unwrap_or_else(Duration::zero)
    }

    /// The gaps after a group's first token.
    fn later_gaps(&self) -> Vec<&Gap> {
        self.gaps.iter().filter(|g| !g.first).collect()
    }

    fn summary(&self) -> String {
        let end = self.end.unwrap_or(DateTime::<Utc>::MAX_UTC);
        let mut out = format!(
            "{} observations, max live per group {}, per channel {}, min capacity {}\n",
            self.observations, self.max_live_group, self.max_live_channel, self.min_capacity
        );
        for g in &self.gaps {
            writeln!(
                out,
                "  ch{:02}/{} without a token {} ms ({}{} .. {})",
                g.channel,
                g.group,
                g.length(end).num_milliseconds(),
                if g.first { "first token, " } else { "" },
                g.from.format("%H:%M:%S%.3f"),
                g.to.map_or_else(
                    || "open".to_owned(),
                    |t| t.format("%H:%M:%S%.3f").to_string()
                ),
            )
            .unwrap();
        }
        out
    }
}

/// Asserts no group of channel `ci` is held by a permanent failure or a
/// 30-minute wait, and the channel's listing is not either.
fn assert_no_long_hold(store: &Store, channel: &ChannelId, now: DateTime<Utc>) {
    for g in store.groups(channel).unwrap() {
        assert_ne!(
            g.runtime.failure_kind,
            Some(FailureKind::Permanent),
            "{channel}/{} is held as a permanent failure: {:?}",
            g.name,
            g.runtime
        );
        if let Some(at) = g.runtime.retry_not_before {
            assert!(
                at - now < Duration::minutes(10),
                "{channel}/{} waits until {at}: {:?}",
                g.name,
                g.runtime
            );
        }
    }
    let row = store.channel(channel).unwrap().unwrap();
    if let Some(at) = row.reconcile.retry_not_before {
        assert!(
            at - now < Duration::minutes(10),
            "{channel}'s listing waits until {at}"
        );
    }
}

// ---------------------------------------------------------------------------
// 1. A near-full channel.

/// 29 tokens of another issuer fill the channel, expiring 90.7 s, 90.85 s,
/// ... after the start (every 150 ms). The daemon issues the one token that
/// fits, then the other two groups have theirs by the time the first and
/// second foreign tokens expire plus `full_recheck` and a second: never
/// half an hour later. The store never shows a permanent hold, a long wait
/// or a negative capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_full_channel_is_filled_as_soon_as_line_has_room() {
    let t0 = support::start_time();
    let expiries: Vec<DateTime<Utc>> = (0..29)
        .map(|i| t0 + Duration::milliseconds(90_700 + 150 * i))
        .collect();
    let chans = vec![chan(0, 3)];
    let id = chans[0].id.clone();
    let mut rig = Rig::start(
        chans,
        rotation("30d", "24h", "30m", "6h", "1h"),
        Faults::default(),
        |sandbox| {
            sandbox.add_foreign_tokens(&id, &expiries).unwrap();
        },
    )
    .await;
    rig.observe();
    let (ours, foreign, _, capacity) = rig.counts(0);
    assert_eq!(
        (ours, foreign, capacity),
        (1, 29, 0),
        "the daemon issues what fits"
    );
    // Every foreign token is an alert of its own, and the channel is low
    // on room.
    let firing = rig.store().firing_alerts().unwrap();
    let foreign: Vec<_> = firing
        .iter()
        .filter(|a| a.alertname == "foreign_token")
        .collect();
    assert_eq!(foreign.len(), 29, "{firing:#?}");
    assert!(
        foreign.iter().all(
            |a| a.group.is_none() && a.label.as_ref().is_some_and(|(name, _)| name == "key_id")
        )
    );
    assert!(
        firing.iter().any(|a| a.alertname == "capacity_low"),
        "{firing:#?}"
    );

    rig.run_until(t0 + Duration::minutes(45)).await;
    let now = rig.now();
    assert_no_long_hold(rig.store(), &rig.chans[0].id, now);
    // The foreign tokens expired and the channel has room: all resolved.
    let firing = rig.store().firing_alerts().unwrap();
    assert!(
        !firing
            .iter()
            .any(|a| a.alertname == "foreign_token" || a.alertname == "capacity_low"),
        "{firing:#?}"
    );
    let watch = rig.finish().await;
    println!("near-full channel:\n{}", watch.summary());

    // Each group's first token, in the order they came.
    let mut firsts: Vec<DateTime<Utc>> = watch
        .gaps
        .iter()
        .filter(|g| g.first)
        .map(|g| g.to.expect("a group never got a token"))
        .collect();
    firsts.sort();
    assert_eq!(firsts.len(), 3);
    assert_eq!(firsts[0], t0, "the first group is issued at once");
    for (k, at) in firsts.iter().enumerate().skip(1) {
        let room = expiries[k - 1];
        assert!(
            *at >= room,
            "issued before LINE had room: {at} < {room}\n{}",
            watch.summary()
        );
        assert!(
            *at <= room + recheck_bound(),
            "group {k} waited until {at}, LINE had room at {room}\n{}",
            watch.summary()
        );
    }
    assert!(watch.later_gaps().is_empty(), "{}", watch.summary());
}

// ---------------------------------------------------------------------------
// Clock skew.

/// LINE's clock runs 90 s ahead of ours: the daemon-wide `clock_skew`
/// alert fires at the next answer; at 45 s it keeps firing (hysteresis);
/// once the clocks agree within 30 s it resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_far_from_lines_raises_clock_skew_until_it_agrees_again() {
    let t0 = support::start_time();
    let mut rig = Rig::start(
        vec![chan(0, 1)],
        rotation("30d", "24h", "30m", "6h", "1h"),
        Faults::default(),
        |_| {},
    )
    .await;
    let skew_alerts = |rig: &Rig| -> Vec<String> {
        rig.store()
            .firing_alerts()
            .unwrap()
            .into_iter()
            .filter(|a| a.alertname == "clock_skew")
            .map(|a| {
                assert_eq!(a.channel_id, None, "clock_skew is about the daemon");
                a.summary
            })
            .collect()
    };
    assert!(skew_alerts(&rig).is_empty());
    let mut at = t0;
    for (ahead_s, fires) in [(90, true), (45, true), (10, false)] {
        rig.line_ahead_ms.store(ahead_s * 1000, Ordering::SeqCst);
        // The hourly listing asks LINE, whose answer carries its Date.
        at += Duration::minutes(61);
        rig.run_until(at).await;
        let firing = skew_alerts(&rig);
        assert_eq!(
            !firing.is_empty(),
            fires,
            "LINE {ahead_s} s ahead: {firing:?}"
        );
        if ahead_s == 90 {
            assert!(firing[0].contains("90 s behind"), "{firing:?}");
        }
    }
    rig.finish().await;
}

// ---------------------------------------------------------------------------
// 2. A fixed mistake is picked up.

/// How the operator fixes the wrong `kid`.
#[derive(Debug, Clone, Copy)]
enum Fix {
    /// The config names the right kid; the daemon reloads it.
    Reload,
    /// The kid is registered at LINE (the console); `linetokd rotate`.
    Rotate,
    /// The config names the right kid; the daemon restarts.
    Restart,
}

/// A channel whose config names a kid LINE does not know (404: a permanent
/// failure, retried every 30 min). After the fix the group is issued a
/// token within seconds of virtual time; before it, nothing happens for
/// minutes and the store shows the long hold.
async fn a_fixed_kid_is_picked_up(fix: Fix) {
    let mut c = chan(0, 1);
    c.kid_in_config = SigningKid::new("recovery-kid-wrong");
    if matches!(fix, Fix::Rotate) {
        // The config is right; LINE does not know the kid yet.
        c.kid_at_line = SigningKid::new("recovery-kid-registered-later");
    }
    let t0 = support::start_time();
    let mut rig = Rig::start(
        vec![c],
        rotation("30d", "24h", "30m", "6h", "1h"),
        Faults::default(),
        |_| {},
    )
    .await;
    rig.run_until(t0 + Duration::minutes(5)).await;
    assert!(
        rig.live_of(0, "g00").is_empty(),
        "issued with a kid LINE does not know"
    );
    // The mistake is held as permanent: nothing before 30 minutes.
    let id = rig.chans[0].id.clone();
    let row = rig.store().channel(&id).unwrap().unwrap();
    let group = &rig.store().groups(&id).unwrap()[0];
    let held_until = row
        .reconcile
        .retry_not_before
        .into_iter()
        .chain(group.runtime.retry_not_before)
        .max()
        .expect("the failure is recorded");
    assert!(
        held_until - t0 >= Duration::minutes(25),
        "a wrong kid is a permanent failure, held until {held_until}"
    );

    let fixed_at = rig.now();
    match fix {
        Fix::Reload => {
            rig.chans[0].kid_in_config = rig.chans[0].kid_at_line.clone();
            rig.reload().await;
        }
        Fix::Rotate => {
            let public = support::fixture_key().public_jwk().to_json_pretty();
            rig.sandbox
                .register_channel(
                    id.clone(),
                    ChannelSecret::new(rig.chans[0].secret.clone()),
                    vec![(
                        rig.chans[0].kid_in_config.clone(),
                        VerifyingKey::parse(public.as_bytes()).unwrap(),
                    )],
                )
                .unwrap();
            rig.chans[0].kid_at_line = rig.chans[0].kid_in_config.clone();
            let before = rig.passes();
            rig.daemon()
                .rotator
                .request_rotation(&id, None, "test")
                .await
                .unwrap();
            rig.pass_after(before).await;
        }
        Fix::Restart => {
            rig.stop_daemon().await;
            rig.chans[0].kid_in_config = rig.chans[0].kid_at_line.clone();
            rig.start_daemon().await;
        }
    }
    rig.run_until(fixed_at + Duration::minutes(2)).await;
    let watch = rig.finish().await;
    println!("fixed kid ({fix:?}):\n{}", watch.summary());
    let first = watch.gaps[0].to.expect("never issued after the fix");
    assert!(
        first - fixed_at <= Duration::seconds(10),
        "{fix:?}: fixed at {fixed_at}, issued at {first}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kid_fixed_by_reload_is_picked_up_at_once() {
    a_fixed_kid_is_picked_up(Fix::Reload).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_ends_the_hold_of_a_kid_fixed_at_line() {
    a_fixed_kid_is_picked_up(Fix::Rotate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kid_fixed_by_restart_is_picked_up_at_once() {
    a_fixed_kid_is_picked_up(Fix::Restart).await;
}

// ---------------------------------------------------------------------------
// 3. Partial failure does not starve.

/// 20 % 500s and 10 % 429s (Retry-After 5 min) on every endpoint for a
/// virtual day; three channels of three groups; 2-hour tokens rotated
/// 30 min ahead, so every group rotates a dozen times. LINE answers most of
/// the time, so no group is ever without a live token once it had its
/// first, and no group ever has more than 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_failure_for_a_day_never_starves_a_group() {
    let faults = Faults {
        seed: Some(0x8_0003),
        down: false,
        endpoints: BTreeMap::from([(
            ANY_ENDPOINT.to_owned(),
            FaultRule {
                error_rate: 0.20,
                rate_limit_rate: 0.10,
                retry_after_secs: 300,
                ..FaultRule::default()
            },
        )]),
    };
    let t0 = support::start_time();
    let mut rig = Rig::start(
        (0..3).map(|i| chan(i, 3)).collect(),
        // The budget, 12 an hour, is small for this failure rate: failed
        // attempts spend it, and before the deadline rescue a group whose
        // next budget slot came after its token's expiry lost the token
        // (about 1 run in 6). Now it goes over, within invariant 4's bound
        // (checked below).
        rotation("2h", "30m", "5m", "30m", "15m"),
        faults,
        |_| {},
    )
    .await;
    rig.run_until(t0 + Duration::days(1)).await;
    // Invariant 4, from the journal (every attempt, failed ones included):
    // at most twice the budget plus one first-start burst per group in any
    // rolling hour of a channel.
    let busiest_hour = rig
        .chans
        .iter()
        .map(|c| {
            let times: Vec<DateTime<Utc>> = rig
                .store()
                .issue_times_since(&c.id, t0 - Duration::hours(1))
                .unwrap()
                .into_iter()
                .map(|(_, at)| at)
                .collect();
            times
                .iter()
                .map(|end| {
                    times
                        .iter()
                        .filter(|t| **t > *end - Duration::hours(1) && *t <= end)
                        .count()
                })
                .max()
                .unwrap_or(0)
        })
        .max()
        .unwrap();
    let issued: usize = rig
        .chans
        .iter()
        .map(|c| {
            rig.sandbox
                .tokens(&c.id)
                .iter()
                .filter(|t| t.issuer == TokenIssuer::Api)
                .count()
        })
        .sum();
    let watch = rig.finish().await;
    let first_wait = watch.longest_first_wait();
    println!(
        "partial failure: {issued} tokens issued; at most {busiest_hour} attempts in a \
         channel's hour (budget 12); longest wait for a first token {} ms\n{}",
        first_wait.num_milliseconds(),
        watch.summary()
    );
    assert!(
        busiest_hour <= 2 * 12 + 3,
        "invariant 4: {busiest_hour} attempts in one channel's hour"
    );
    assert!(
        issued >= 9 * 12,
        "only {issued} tokens in a day of 2-hour tokens"
    );
    assert!(
        first_wait <= Duration::minutes(5),
        "a group waited {first_wait} for its first token"
    );
    assert!(
        watch.later_gaps().is_empty(),
        "groups were without a live token:\n{}",
        watch.summary()
    );
    assert!(watch.max_live_group <= 2);
}

/// Found by an outside test: a group whose token ran out while LINE failed
/// then retried once a minute (slower than the 5-second pace it had while
/// it still held a token), and its channel's key-ID listing backed off to a
/// minute too; when LINE came back answering half the time, groups went up
/// to two minutes more without a token. A group with no token is past any
/// deadline: it retries, and its channel lists, at most `retry.base` (5 s)
/// apart. The hourly budget still bounds the issues; it is set high here,
/// as in that test, so that the pace is what is measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_whose_tokens_ran_out_retry_within_seconds_not_a_minute() {
    let t0 = support::start_time();
    let failing = |endpoint: &str, rate: f64, seed: u64| Faults {
        seed: Some(seed),
        down: false,
        endpoints: BTreeMap::from([(
            endpoint.to_owned(),
            FaultRule {
                error_rate: rate,
                ..FaultRule::default()
            },
        )]),
    };
    let chans = vec![chan(0, 3)];
    let id = chans[0].id.clone();
    let mut rig = Rig::start(
        chans,
        rotation("20m", "5m", "1m", "5m", "5m")
            .replace("max_issues_per_hour = 12", "max_issues_per_hour = 1000"),
        Faults::default(),
        |_| {},
    )
    .await;
    rig.run_until(t0 + Duration::minutes(5)).await;

    // Every issue fails until well after every token has run out (at 20
    // minutes): nine minutes of three groups without a token.
    rig.sandbox
        .set_faults(failing(Endpoint::IssueV21.path(), 1.0, 0x8_0007))
        .unwrap();
    rig.run_until(t0 + Duration::minutes(30)).await;
    for g in ["g00", "g01", "g02"] {
        assert!(rig.live_of(0, g).is_empty(), "{g} still has a token");
    }
    let tokenless_from = t0 + Duration::minutes(21);
    let issues = rig
        .store()
        .issue_times_since(&id, tokenless_from)
        .unwrap()
        .into_iter()
        .filter(|(_, at)| *at >= tokenless_from)
        .count();

    // Now every call fails, the listing too: ten minutes.
    let all_failing = rig.now();
    rig.sandbox
        .set_faults(failing(ANY_ENDPOINT, 1.0, 0x8_0008))
        .unwrap();
    rig.run_until(all_failing + Duration::minutes(10)).await;
    let listings = rig
        .store()
        .events_of_channel(&id, 100_000)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EventKind::ReconcileFailed && e.at >= all_failing)
        .count();

    // LINE answers half the time again.
    let back = rig.now();
    rig.sandbox
        .set_faults(failing(ANY_ENDPOINT, 0.5, 0x8_0009))
        .unwrap();
    rig.run_until(back + Duration::minutes(10)).await;
    let watch = rig.finish().await;
    let waits: Vec<Duration> = watch
        .later_gaps()
        .iter()
        .map(|g| g.to.map_or(Duration::MAX, |to| to - back))
        .collect();
    println!(
        "tokens ran out: {issues} issue attempts in 9 min, {listings} listings in 10 min; \
         once LINE answered half the time the groups waited {:?} ms\n{}",
        waits
            .iter()
            .map(Duration::num_milliseconds)
            .collect::<Vec<_>>(),
        watch.summary()
    );
    // At most 5 s apart: at least 108 a group in 9 minutes (a minute apart
    // gave about 9).
    assert!(
        issues >= 3 * 90,
        "{issues} issue attempts by three groups without a token in 9 minutes"
    );
    assert!(
        listings >= 100,
        "{listings} listings in 10 minutes while groups had no token"
    );
    assert_eq!(waits.len(), 3, "{}", watch.summary());
    assert!(
        waits.iter().all(|w| *w <= Duration::minutes(2)),
        "a group waited too long once LINE answered half the time:\n{}",
        watch.summary()
    );
}

/// Two groups on 20-minute tokens rotated 5 minutes ahead (jitter 10 s),
/// verified and listed every minute: the setting of the one-endpoint
/// failure tests below.
async fn two_groups_on_short_tokens() -> (Rig, ChannelId) {
    let chans = vec![chan(0, 2)];
    let id = chans[0].id.clone();
    let rig = Rig::start(
        chans,
        rotation("20m", "5m", "10s", "1m", "1m"),
        Faults::default(),
        |_| {},
    )
    .await;
    (rig, id)
}

/// `rule` on `endpoint` alone.
fn one_endpoint(endpoint: Endpoint, rule: FaultRule, seed: u64) -> Faults {
    Faults {
        seed: Some(seed),
        down: false,
        endpoints: BTreeMap::from([(endpoint.path().to_owned(), rule)]),
    }
}

/// A day's 429 on every call.
fn a_days_429() -> FaultRule {
    FaultRule {
        rate_limit_rate: 1.0,
        retry_after_secs: 86_400,
        ..FaultRule::default()
    }
}

/// Asserts that every issue after the first minute and before `until`
/// came by +16 min (due at +15 min less the jitter), and that no group
/// was ever without a live token; returns how many issues that was.
async fn successors_came_when_due(
    rig: Rig,
    id: &ChannelId,
    t0: DateTime<Utc>,
    until: DateTime<Utc>,
) -> usize {
    let issued: Vec<(GroupName, DateTime<Utc>)> = rig
        .store()
        .issue_times_since(id, t0)
        .unwrap()
        .into_iter()
        .filter(|(_, at)| *at > t0 + Duration::minutes(1))
        .collect();
    let watch = rig.finish().await;
    for (g, at) in issued.iter().filter(|(_, at)| *at < until) {
        assert!(
            *at <= t0 + Duration::minutes(16),
            "{g}'s successor came at +{} s, not at its due time (+900 s)\n{}",
            (*at - t0).num_seconds(),
            watch.summary()
        );
    }
    assert!(watch.later_gaps().is_empty(), "{}", watch.summary());
    issued.len()
}

/// A verify answered 429 with a day's `Retry-After` holds the group's
/// verifies, not its rotation: found twice from outside, first with the
/// issue held, then (once that was fixed in the plan's table) with the
/// key-ID listing the issue needs first held, so a channel whose last
/// listing was older than `reconcile_interval` rotated only at the
/// deadline (18 min 45 s here), where one more failure would have cost the
/// token. Each successor comes at its due time (15 min, less a jitter of
/// at most 10 s), a minute's slack allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verify_429_leaves_the_listing_and_the_due_rotation_alone() {
    let t0 = support::start_time();
    let (mut rig, id) = two_groups_on_short_tokens().await;
    rig.run_until(t0 + Duration::seconds(30)).await;
    rig.sandbox
        .set_faults(one_endpoint(Endpoint::VerifyV21, a_days_429(), 0x8_000a))
        .unwrap();
    rig.run_until(t0 + Duration::minutes(3)).await;
    for g in ["g00", "g01"] {
        let row = rig.store().group(&id, &GroupName::new(g)).unwrap().unwrap();
        assert_eq!(
            (row.runtime.failure_kind, row.runtime.failed_step.as_deref()),
            (Some(FailureKind::RateLimited), Some("verify")),
            "{g}'s verify met the 429"
        );
    }
    rig.run_until(t0 + Duration::minutes(17)).await;
    let end = rig.now();
    let issued = successors_came_when_due(rig, &id, t0, end).await;
    assert_eq!(issued, 2, "one successor a group");
}

/// The key-ID listing alone failing (a 429 asking for a day, then 500s)
/// holds no rotation: found from outside, where issues waited for a fresh
/// listing until the deadline and then for ever, and every group lost its
/// token at expiry while issue and verify worked. The last listing's count
/// stands; each successor comes at its due time (15 min less a jitter of
/// at most 10 s, a minute's slack allowed), and no group is ever without a
/// live token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_listing_alone_holds_no_rotation() {
    let t0 = support::start_time();
    let (mut rig, id) = two_groups_on_short_tokens().await;
    rig.run_until(t0 + Duration::seconds(30)).await;
    rig.sandbox
        .set_faults(one_endpoint(Endpoint::ListKids, a_days_429(), 0x8_000b))
        .unwrap();
    rig.run_until(t0 + Duration::minutes(17)).await;
    let failing = FaultRule {
        error_rate: 1.0,
        ..FaultRule::default()
    };
    rig.sandbox
        .set_faults(one_endpoint(Endpoint::ListKids, failing, 0x8_000b))
        .unwrap();
    rig.run_until(t0 + Duration::minutes(45)).await;
    let failed_listings = rig
        .store()
        .events_of_channel(&id, 100_000)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EventKind::ReconcileFailed)
        .count();
    assert!(failed_listings >= 2, "{failed_listings} failed listings");
    let issued = successors_came_when_due(rig, &id, t0, t0 + Duration::minutes(20)).await;
    // Two rotations a group in 45 minutes of 20-minute tokens.
    assert!(issued >= 4, "{issued} issues");
}

/// The key-ID listing failing when LINE refuses a rotation as the
/// channel's 31st token: found from outside, where every group then waited
/// for a listing and went without a token (78-83 s) until the listing
/// answered again, though foreign tokens had expired and LINE had room.
/// Here 28 foreign tokens fill the channel after the last listing and
/// expire at +15 min 30.5 s; the first rotation (+15 min less the jitter)
/// is refused; when the refusal's hold ends (a minute on) the issue goes on
/// the last listing's count and LINE takes it. Both successors come before
/// the old tokens expire, and no group is ever without a live token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_refusal_while_the_listing_fails_waits_a_minute_not_for_the_listing() {
    let t0 = support::start_time();
    let (mut rig, id) = two_groups_on_short_tokens().await;
    rig.run_until(t0 + Duration::seconds(30)).await;
    let failing = FaultRule {
        error_rate: 1.0,
        ..FaultRule::default()
    };
    rig.sandbox
        .set_faults(one_endpoint(Endpoint::ListKids, failing, 0x8_000c))
        .unwrap();
    let expiry = t0 + Duration::minutes(15) + Duration::milliseconds(30_500);
    rig.sandbox.add_foreign_tokens(&id, &[expiry; 28]).unwrap();
    rig.run_until(t0 + Duration::minutes(19)).await;
    let events = rig.store().events_of_channel(&id, 100_000).unwrap();
    let refused_at = events
        .iter()
        .find(|e| e.kind == EventKind::IssueFailed && e.detail.contains("no issue before"))
        .map(|e| e.at)
        .expect("LINE never refused a 31st token");
    let listed = rig.store().channel(&id).unwrap().unwrap().last_reconcile_at;
    assert!(
        listed < Some(t0 + Duration::seconds(30)),
        "the listing answered"
    );
    // The hold ends a minute (`full_recheck`) after the refusal: both
    // successors come then, a few seconds' slack allowed.
    let by = refused_at + Duration::seconds(65);
    for g in ["g00", "g01"] {
        let live = rig.live_of(0, g);
        assert!(
            live.iter()
                .any(|t| t.issued_at > t0 + Duration::minutes(14) && t.issued_at <= by),
            "{g} has no successor by {by} (refused at {refused_at}): {live:?}"
        );
    }
    let watch = rig.finish().await;
    assert!(watch.later_gaps().is_empty(), "{}", watch.summary());
    assert!(watch.max_live_group <= 2, "{}", watch.summary());
}

/// A new channel of 15 groups on the default budget (6 an hour) whose
/// first pass meets 30 % 500s on the issue endpoint: the burst spends the
/// budget two and a half times over, yet every failed group tries again a
/// minute later (its retries are the only repeats in the hour), so all 15
/// are live within minutes (two in this run; four allowed), not an hour;
/// and the channel's hour stays within twice the budget in repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_that_meets_errors_is_live_within_minutes_on_the_default_budget() {
    let faults = Faults {
        seed: Some(0x8_0005),
        down: false,
        endpoints: BTreeMap::from([(
            Endpoint::IssueV21.path().to_owned(),
            FaultRule {
                error_rate: 0.30,
                ..FaultRule::default()
            },
        )]),
    };
    let t0 = support::start_time();
    let mut rig = Rig::start(
        vec![chan(0, 15)],
        rotation("30d", "24h", "30m", "6h", "1h")
            .replace("max_issues_per_hour = 12", "max_issues_per_hour = 6"),
        faults,
        |_| {},
    )
    .await;
    rig.run_until(t0 + Duration::minutes(30)).await;
    let attempts = rig
        .store()
        .issue_times_since(&rig.chans[0].id, t0 - Duration::hours(1))
        .unwrap();
    let failed_first = attempts.len() - 15;
    let mut seen = std::collections::BTreeSet::new();
    let repeats = attempts
        .iter()
        .filter(|(g, _)| !seen.insert(g.clone()))
        .count();
    let watch = rig.finish().await;
    let first_wait = watch.longest_first_wait();
    println!(
        "first start with errors: {} attempts, {failed_first} failed, longest wait for a \
         first token {} ms\n{}",
        attempts.len(),
        first_wait.num_milliseconds(),
        watch.summary()
    );
    assert!(
        first_wait <= Duration::minutes(4),
        "a group waited {first_wait} for its first token"
    );
    // Every group is live, so each failure was retried: the attempts past
    // the first 15 are the failures.
    assert!(
        failed_first >= 3,
        "the faults failed only {failed_first} issues: no test"
    );
    assert!(
        repeats <= 2 * 6,
        "invariant 4: {repeats} repeat attempts in the channel's hour"
    );
    assert!(
        watch.later_gaps().is_empty(),
        "groups lost their token:\n{}",
        watch.summary()
    );
}

// ---------------------------------------------------------------------------
// 4. Verify refusing a listed token.

/// Verify refuses group g00's current token while LINE's key-ID list still
/// lists it and its cap still counts it: the daemon marks it refused,
/// revokes it (the secret is configured) and issues a replacement; the
/// group never holds more than 2 live tokens at LINE, and after the next
/// reconcile the daemon's count (ours + foreign) is LINE's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_verify_refuses_is_revoked_replaced_and_counted() {
    let t0 = support::start_time();
    let chans = vec![chan(0, 2)];
    let id = chans[0].id.clone();
    let foreign: Vec<DateTime<Utc>> = (0..3)
        .map(|i| t0 + Duration::days(2) + Duration::milliseconds(333 * i))
        .collect();
    let mut rig = Rig::start(
        chans,
        rotation("30d", "24h", "30m", "1h", "2h"),
        Faults::default(),
        |sandbox| {
            sandbox.add_foreign_tokens(&id, &foreign).unwrap();
        },
    )
    .await;
    rig.run_until(t0 + Duration::minutes(10)).await;
    let first = rig.live_of(0, "g00");
    assert_eq!(first.len(), 1);
    let refused = first[0].key_id.clone();
    assert!(
        rig.sandbox
            .set_verify_refusal(&id, &refused, Some(VerifyRefusal::Invalid))
    );
    assert!(rig.sandbox.live_key_ids(&id).contains(&refused));

    // The next verify (within the hour) finds it.
    rig.run_until(t0 + Duration::minutes(70)).await;
    let at_line = rig.sandbox.token(&id, &refused).unwrap();
    assert_eq!(
        at_line.state,
        SandboxTokenState::Revoked,
        "the refused token is revoked at LINE"
    );
    let stored = rig.store().token(&refused).unwrap().unwrap();
    assert!(
        stored.record.refused_at.is_some(),
        "the store marks it refused"
    );
    let now_live = rig.live_of(0, "g00");
    assert_eq!(now_live.len(), 1, "one replacement");
    assert!(now_live[0].issued_at >= at_line.revoked_at.unwrap());
    let replaced_after = now_live[0].issued_at - at_line.revoked_at.unwrap();

    // After the next reconcile, the daemon counts what LINE counts.
    let reconciled = rig
        .store()
        .channel(&id)
        .unwrap()
        .unwrap()
        .last_reconcile_at
        .unwrap();
    rig.run_until(reconciled + Duration::hours(2) + Duration::minutes(1))
        .await;
    assert!(rig.store().channel(&id).unwrap().unwrap().last_reconcile_at > Some(reconciled));
    let (ours, foreign_count, unsettled, _) = rig.counts(0);
    let line_live = rig.sandbox.live_tokens(&id).len();
    assert_eq!(
        (ours + foreign_count + unsettled) as usize,
        line_live,
        "the daemon counts {ours} ours + {foreign_count} foreign + {unsettled} unsettled, LINE \
         holds {line_live}"
    );
    assert_eq!(foreign_count, 3);
    let watch = rig.finish().await;
    println!(
        "verify refusal: replaced {} ms after the revoke\n{}",
        replaced_after.num_milliseconds(),
        watch.summary()
    );
    assert!(watch.max_live_group <= 2);
}

/// A freshly issued token that fails its first verify (`refuse_live_rate`
/// 1.0 for that one call): it is stored refused, revoked at LINE, and the
/// group retries on the transient schedule (seconds), not 30 minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_token_that_fails_verify_is_revoked_and_retried_soon() {
    let t0 = support::start_time();
    let chans = vec![chan(0, 2)];
    let id = chans[0].id.clone();
    let mut rig = Rig::start(
        chans,
        rotation("30d", "24h", "30m", "6h", "1h"),
        Faults::default(),
        |_| {},
    )
    .await;
    rig.run_until(t0 + Duration::minutes(10)).await;
    let before: Vec<KeyId> = rig
        .live_of(0, "g01")
        .into_iter()
        .map(|t| t.key_id)
        .collect();
    assert_eq!(before.len(), 1);
    let seen = rig.sandbox.tokens(&id).len();

    rig.sandbox
        .set_faults(Faults {
            seed: Some(1),
            down: false,
            endpoints: BTreeMap::from([(
                Endpoint::VerifyV21.path().to_owned(),
                FaultRule {
                    refuse_live_rate: 1.0,
                    refuse_live_as: Some(VerifyRefusal::Invalid),
                    ..FaultRule::default()
                },
            )]),
        })
        .unwrap();
    let asked = rig.now();
    let passes = rig.passes();
    rig.daemon()
        .rotator
        .request_rotation(&id, Some(&GroupName::new("g01")), "test")
        .await
        .unwrap();
    rig.pass_after(passes).await;
    // The fresh token was issued, failed its verify, and the group waits
    // on the transient schedule.
    let fresh = rig.sandbox.tokens_since(&id, seen);
    assert_eq!(fresh.len(), 1, "one issue before the failure");
    let bad = fresh[0].key_id.clone().unwrap();
    let stored = rig.store().token(&bad).unwrap().unwrap();
    assert!(stored.record.refused_at.is_some(), "stored as refused");
    let group = rig
        .store()
        .group(&id, &GroupName::new("g01"))
        .unwrap()
        .unwrap();
    assert_eq!(group.runtime.failure_kind, Some(FailureKind::Transient));
    let retry_at = group.runtime.retry_not_before.unwrap();
    assert!(
        retry_at - asked <= Duration::seconds(30),
        "the retry waits until {retry_at}"
    );
    rig.sandbox.set_faults(Faults::default()).unwrap();

    rig.run_until(asked + Duration::minutes(5)).await;
    assert_eq!(
        rig.sandbox.token(&id, &bad).unwrap().state,
        SandboxTokenState::Revoked,
        "the refused fresh token is revoked"
    );
    let after = rig.live_of(0, "g01");
    assert_eq!(after.len(), 2, "the old token and the replacement");
    assert_eq!(after[0].key_id, before[0]);
    let replaced_after = after[1].issued_at - asked;
    assert!(
        replaced_after <= Duration::seconds(30),
        "replaced {replaced_after} after the request"
    );
    let watch = rig.finish().await;
    println!(
        "fresh token refused: replaced {} ms after the request\n{}",
        replaced_after.num_milliseconds(),
        watch.summary()
    );
    assert!(watch.later_gaps().is_empty());
}
