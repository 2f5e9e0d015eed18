//! Which notifications are due: a pure function of the time, the alerts,
//! what each receiver was sent, and the settings. No IO, no clock: the
//! notifier ([`super::Notifier`]) reads the store, calls [`route`], sends
//! what it returns, records the outcome and calls it again; the tests call
//! it with times of their choosing.
//!
//! The rules (docs/design.md, "Alerts"; after Alertmanager's):
//!
//! - A new alert is first sent `group_wait` after it started; a warning,
//!   and a resolve, also not before `group_interval` after the receiver's
//!   last notification, so a burst of them goes out as one (critical alerts
//!   do not wait for it). When anything is due for a receiver, every alert
//!   firing for it goes along (a flush carries the whole group, as in
//!   Alertmanager): what fires together goes out in one notification, and
//!   the alerts' repeats fall due together afterwards.
//! - A firing alert is sent again every repeat interval (by severity, or the
//!   receiver's own, e.g. Alertmanager's `resend_interval`) after the last
//!   notification was delivered or given up.
//! - A resolve is sent once, and only to receivers that were told the alert
//!   fired.
//! - A receiver sees only alerts at or above its `min_severity`, and none
//!   about itself (a `line` receiver out of quota).
//! - A receiver has at most one notification in flight. A failed one is
//!   retried with the same id and the same alerts, 5 s after the first
//!   failure, doubling to 5 min, and given up 24 h after its first attempt;
//!   new alerts wait for it (the receiver is down for them as well).
//!
//! Depends on `store`'s row types only.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};

use crate::store::{AlertRecord, NotifyItem, NotifyKind, NotifyState};

/// The first retry comes this long after the first failure.
pub const FIRST_RETRY: Duration = Duration::seconds(5);
/// Retries never wait longer than this (bar a receiver's `Retry-After`).
pub const MAX_RETRY: Duration = Duration::minutes(5);
/// A notification not delivered this long after its first attempt is given
/// up.
pub const GIVE_UP_AFTER: Duration = Duration::hours(24);

/// True for an alert about receiver `name` itself (`line_receiver_quota`
/// labelled with its name): that receiver cannot send it, the others
/// must.
fn is_about(alert: &AlertRecord, name: &str) -> bool {
    alert
        .label
        .as_ref()
        .is_some_and(|(label, value)| label == "receiver" && value == name)
}

/// An alert's severity, ordered: a receiver with `min_severity = warning`
/// gets both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// For the record (`long_lived_old_still_valid`): below every
    /// receiver's `min_severity`, so it is listed by `status` and counted in
    /// metrics but never sent.
    Info,
    /// Needs attention soon.
    Warning,
    /// Needs attention now.
    Critical,
}

impl Severity {
    /// The stored spelling; anything but `info` and `warning` counts as
    /// critical, so an unknown severity is never filtered away.
    pub fn parse(text: &str) -> Self {
        match text {
            "info" => Self::Info,
            "warning" => Self::Warning,
            _ => Self::Critical,
        }
    }

    /// `info`, `warning` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

/// The timing shared by every receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSettings {
    /// How long a new alert waits before its first notification.
    pub group_wait: Duration,
    /// How long new warnings and resolves wait after the receiver's last
    /// notification, so a burst goes out as one message, not one each.
    pub group_interval: Duration,
    /// How often a firing warning is sent again.
    pub repeat_warning: Duration,
    /// How often a firing critical alert is sent again.
    pub repeat_critical: Duration,
}

/// What routing needs to know of one receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverRoute {
    /// Its name (the key of its state rows).
    pub name: String,
    /// The least severe alert it gets.
    pub min_severity: Severity,
    /// Its own repeat interval, overriding the severity's (Alertmanager's
    /// API forgets an alert that is not re-sent).
    pub repeat: Option<Duration>,
}

/// A notification to attempt now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The receiver.
    pub receiver: String,
    /// The id of the notification being retried; `None` for a new one
    /// (the notifier makes its id and records it before the first attempt).
    pub retry_of: Option<String>,
    /// Failed attempts so far (0 for a new one).
    pub attempts: u32,
    /// The alerts it carries, sorted by fingerprint.
    pub items: Vec<NotifyItem>,
}

/// A notification to give up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GiveUp {
    /// The receiver.
    pub receiver: String,
    /// The notification's id.
    pub id: String,
    /// Failed attempts.
    pub attempts: u32,
    /// How many alerts it carried.
    pub alerts: usize,
}

/// What [`route`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routing {
    /// Notifications to attempt now, one per receiver at most.
    pub due: Vec<Due>,
    /// Notifications to give up now.
    pub give_up: Vec<GiveUp>,
    /// When something next falls due, if anything will without a change of
    /// alerts.
    pub next_at: Option<DateTime<Utc>>,
}

/// When the attempt after `failed` failed attempts is due, `now` being the
/// time of the last failure: 5 s doubling to 5 min, or the receiver's
/// `Retry-After` when that is later.
pub fn next_attempt(
    now: DateTime<Utc>,
    failed: u32,
    retry_after: Option<Duration>,
) -> DateTime<Utc> {
    let doublings = failed.saturating_sub(1).min(16);
    let backoff = (FIRST_RETRY * (1_i32 << doublings)).min(MAX_RETRY);
    now + retry_after.map_or(backoff, |r| r.max(backoff))
}

/// The notifications due at `now`. `alerts` holds the firing alerts and
/// the recently resolved ones; `states` every state row.
pub fn route(
    now: DateTime<Utc>,
    alerts: &[AlertRecord],
    states: &[NotifyState],
    receivers: &[ReceiverRoute],
    settings: &RouteSettings,
) -> Routing {
    let mut by_receiver: HashMap<&str, HashMap<&str, &NotifyState>> = HashMap::new();
    for s in states {
        by_receiver
            .entry(s.receiver.as_str())
            .or_default()
            .insert(s.fingerprint.as_str(), s);
    }
    let none = HashMap::new();
    let mut out = Routing::default();
    for r in receivers {
        let mine = by_receiver.get(r.name.as_str()).unwrap_or(&none);
        if in_flight(now, r, mine, &mut out) {
            continue;
        }
        let mut due_now = Vec::new();
        let mut untold = Vec::new();
        let mut firing = Vec::new();
        let mut earliest: Option<DateTime<Utc>> = None;
        // New warnings and resolves wait `group_interval` after the last
        // notification the receiver got; a critical alert does not.
        let last_told = mine.values().filter_map(|s| s.last_sent_at).max();
        let paced = |at: DateTime<Utc>, severity: Severity| match last_told {
            Some(last) if severity < Severity::Critical => at.max(last + settings.group_interval),
            _ => at,
        };
        for a in alerts {
            let severity = Severity::parse(&a.severity);
            if severity < r.min_severity || is_about(a, &r.name) {
                continue;
            }
            // A row of an earlier episode says nothing about this one.
            let state = mine
                .get(a.fingerprint.as_str())
                .filter(|s| s.started_at == a.started_at);
            let item = |kind| NotifyItem {
                fingerprint: a.fingerprint.clone(),
                started_at: a.started_at,
                kind,
            };
            if a.resolved_at.is_none() {
                firing.push(item(NotifyKind::Firing));
            }
            let (at, kind) = match (a.resolved_at, state) {
                (
                    None,
                    Some(NotifyState {
                        last_sent_at: Some(last),
                        ..
                    }),
                ) => (*last + repeat(r, severity, settings), NotifyKind::Firing),
                (None, _) => {
                    untold.push(item(NotifyKind::Firing));
                    (
                        paced(a.started_at + settings.group_wait, severity),
                        NotifyKind::Firing,
                    )
                }
                (Some(resolved), Some(s)) if s.sent_count > 0 && !s.resolve_sent => {
                    (paced(resolved, severity), NotifyKind::Resolved)
                }
                (Some(_), _) => continue,
            };
            if at <= now {
                due_now.push(item(kind));
            } else {
                earliest = Some(earliest.map_or(at, |e| e.min(at)));
            }
        }
        if due_now.is_empty() {
            out.next_at = min_time(out.next_at, earliest);
            continue;
        }
        // A flush carries the receiver's whole group, as Alertmanager's
        // does: every alert firing for it (so their repeats fall due
        // together from now on, one message per repeat interval rather than
        // one per alert) and the resolves due.
        let mut items: BTreeMap<String, NotifyItem> = BTreeMap::new();
        for item in due_now.into_iter().chain(untold).chain(firing) {
            items.entry(item.fingerprint.clone()).or_insert(item);
        }
        out.due.push(Due {
            receiver: r.name.clone(),
            retry_of: None,
            attempts: 0,
            items: items.into_values().collect(),
        });
    }
    out
}

/// Handles a receiver's notification in flight, if it has one: due for a
/// retry, given up, or waiting (its time becomes a candidate for
/// `next_at`). True when there was one, so nothing new is started.
fn in_flight(
    now: DateTime<Utc>,
    r: &ReceiverRoute,
    mine: &HashMap<&str, &NotifyState>,
    out: &mut Routing,
) -> bool {
    let mut pending: BTreeMap<&str, Vec<&NotifyState>> = BTreeMap::new();
    for s in mine.values() {
        if let Some(p) = &s.pending {
            pending.entry(p.id.as_str()).or_default().push(s);
        }
    }
    for (id, mut rows) in pending.iter_mut().map(|(id, rows)| (*id, rows.clone())) {
        rows.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
        let Some(p) = rows.first().and_then(|s| s.pending.as_ref()) else {
            continue;
        };
        if now - p.since >= GIVE_UP_AFTER {
            out.give_up.push(GiveUp {
                receiver: r.name.clone(),
                id: id.to_owned(),
                attempts: p.attempts,
                alerts: rows.len(),
            });
        } else if p.next_at <= now {
            out.due.push(Due {
                receiver: r.name.clone(),
                retry_of: Some(id.to_owned()),
                attempts: p.attempts,
                items: rows
                    .iter()
                    .filter_map(|s| {
                        s.pending.as_ref().map(|p| NotifyItem {
                            fingerprint: s.fingerprint.clone(),
                            started_at: s.started_at,
                            kind: p.kind,
                        })
                    })
                    .collect(),
            });
        } else {
            out.next_at = min_time(out.next_at, Some(p.next_at));
        }
    }
    !pending.is_empty()
}

fn repeat(r: &ReceiverRoute, severity: Severity, settings: &RouteSettings) -> Duration {
    r.repeat.unwrap_or(match severity {
        Severity::Info | Severity::Warning => settings.repeat_warning,
        Severity::Critical => settings.repeat_critical,
    })
}

fn min_time(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ChannelId;
    use crate::store::PendingNotification;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default()
    }

    fn secs(n: i64) -> Duration {
        Duration::seconds(n)
    }

    fn settings() -> RouteSettings {
        RouteSettings {
            group_wait: secs(30),
            group_interval: secs(300),
            repeat_warning: Duration::hours(4),
            repeat_critical: Duration::hours(1),
        }
    }

    fn receiver(name: &str, min: Severity) -> ReceiverRoute {
        ReceiverRoute {
            name: name.into(),
            min_severity: min,
            repeat: None,
        }
    }

    fn alert(name: &str, severity: &str, started: DateTime<Utc>) -> AlertRecord {
        AlertRecord {
            fingerprint: format!("1000/g/{name}"),
            channel_id: Some(ChannelId::new("1000")),
            label: None,
            group: None,
            alertname: name.into(),
            severity: severity.into(),
            summary: String::new(),
            started_at: started,
            resolved_at: None,
        }
    }

    /// What one notification carried: fingerprints and kinds.
    type Carried = Vec<(String, NotifyKind)>;

    /// A tiny model of the store and the notifier: applies what `route`
    /// says with every send succeeding (or failing, per `fail`), and
    /// counts what each receiver was sent.
    struct World {
        alerts: Vec<AlertRecord>,
        states: Vec<NotifyState>,
        receivers: Vec<ReceiverRoute>,
        sent: Vec<(DateTime<Utc>, String, Carried)>,
        next_id: u32,
    }

    impl World {
        fn new(receivers: Vec<ReceiverRoute>) -> Self {
            Self {
                alerts: Vec::new(),
                states: Vec::new(),
                receivers,
                sent: Vec::new(),
                next_id: 0,
            }
        }

        fn state(&mut self, fp: &str, receiver: &str) -> Option<&mut NotifyState> {
            self.states
                .iter_mut()
                .find(|s| s.fingerprint == fp && s.receiver == receiver)
        }

        /// Routes at `now` and applies the result until nothing more is due.
        fn step(&mut self, now: DateTime<Utc>, fail: bool) -> Option<DateTime<Utc>> {
            loop {
                let routing = route(
                    now,
                    &self.alerts,
                    &self.states,
                    &self.receivers,
                    &settings(),
                );
                if routing.due.is_empty() && routing.give_up.is_empty() {
                    return routing.next_at;
                }
                for g in routing.give_up {
                    self.finish(now, &g.receiver, &g.id, false);
                }
                for due in routing.due {
                    let id = due.retry_of.clone().unwrap_or_else(|| {
                        self.next_id += 1;
                        format!("n{}", self.next_id)
                    });
                    if due.retry_of.is_none() {
                        for item in &due.items {
                            let fresh = NotifyState {
                                fingerprint: item.fingerprint.clone(),
                                receiver: due.receiver.clone(),
                                started_at: item.started_at,
                                last_sent_at: None,
                                sent_count: 0,
                                resolve_sent: false,
                                pending: None,
                            };
                            let pending = Some(PendingNotification {
                                id: id.clone(),
                                kind: item.kind,
                                since: now,
                                attempts: 0,
                                next_at: now,
                            });
                            match self.state(&item.fingerprint, &due.receiver) {
                                Some(s) if s.started_at == item.started_at => s.pending = pending,
                                Some(s) => *s = NotifyState { pending, ..fresh },
                                None => self.states.push(NotifyState { pending, ..fresh }),
                            }
                        }
                    }
                    if fail {
                        for s in &mut self.states {
                            if let Some(p) = s.pending.as_mut().filter(|p| p.id == id) {
                                p.attempts += 1;
                                p.next_at = next_attempt(now, p.attempts, None);
                            }
                        }
                        // One attempt per step when failing: the caller
                        // moves the clock.
                        return route(
                            now,
                            &self.alerts,
                            &self.states,
                            &self.receivers,
                            &settings(),
                        )
                        .next_at;
                    }
                    self.sent.push((
                        now,
                        due.receiver.clone(),
                        due.items
                            .iter()
                            .map(|i| (i.fingerprint.clone(), i.kind))
                            .collect(),
                    ));
                    self.finish(now, &due.receiver, &id, true);
                }
            }
        }

        fn finish(&mut self, now: DateTime<Utc>, receiver: &str, id: &str, delivered: bool) {
            for s in &mut self.states {
                let Some(p) = s
                    .pending
                    .clone()
                    .filter(|p| p.id == id && s.receiver == receiver)
                else {
                    continue;
                };
                match p.kind {
                    NotifyKind::Firing => {
                        s.last_sent_at = Some(now);
                        s.sent_count += u32::from(delivered);
                    }
                    NotifyKind::Resolved => s.resolve_sent = true,
                }
                s.pending = None;
            }
        }

        fn sent_to(&self, receiver: &str) -> Vec<(DateTime<Utc>, Carried)> {
            self.sent
                .iter()
                .filter(|(_, r, _)| r == receiver)
                .map(|(t, _, items)| (*t, items.clone()))
                .collect()
        }
    }

    #[test]
    fn a_burst_of_warnings_waits_group_interval_after_the_last_send_and_a_critical_does_not() {
        let mut w = World::new(vec![receiver("ops", Severity::Warning)]);
        w.alerts.push(alert("w0", "warning", t0()));
        w.step(t0() + secs(30), false);
        assert_eq!(w.sent_to("ops").len(), 1);
        // Warnings keep coming, one a minute: they wait until 5 min after
        // that send and go out together.
        for i in 1..=4 {
            w.alerts.push(alert(
                &format!("w{i}"),
                "warning",
                t0() + Duration::minutes(i),
            ));
        }
        let paced = t0() + secs(30) + Duration::minutes(5);
        assert_eq!(
            w.step(t0() + Duration::minutes(4) + secs(31), false),
            Some(paced)
        );
        assert_eq!(w.sent_to("ops").len(), 1);
        w.step(paced, false);
        let sent = w.sent_to("ops");
        assert_eq!(sent.len(), 2);
        // The whole group: the four new ones and "w0".
        assert_eq!(sent[1].1.len(), 5, "{:?}", sent[1].1);
        // A critical alert goes out after group_wait whatever was sent.
        let at = paced + Duration::minutes(1);
        w.alerts.push(alert("c", "critical", at));
        assert_eq!(w.step(at, false), Some(at + secs(30)));
        w.step(at + secs(30), false);
        assert_eq!(w.sent_to("ops").len(), 3);
        // A resolve of a warning waits too.
        let resolved = at + Duration::minutes(2);
        w.alerts[0].resolved_at = Some(resolved);
        assert_eq!(
            w.step(resolved, false),
            Some(at + secs(30) + Duration::minutes(5))
        );
    }

    #[test]
    fn first_send_waits_group_wait_and_batches_what_fired_together() {
        let mut w = World::new(vec![receiver("ops", Severity::Warning)]);
        w.alerts.push(alert("a", "critical", t0()));
        w.alerts.push(alert("b", "warning", t0() + secs(10)));
        assert_eq!(w.step(t0(), false), Some(t0() + secs(30)));
        assert_eq!(w.step(t0() + secs(29), false), Some(t0() + secs(30)));
        assert!(w.sent.is_empty());
        // At 30 s "a" is due; "b" (due at 40 s) goes along in the flush.
        let next = w.step(t0() + secs(30), false);
        let sent = w.sent_to("ops");
        assert_eq!(sent.len(), 1);
        assert_eq!(
            sent[0].1,
            vec![
                ("1000/g/a".to_owned(), NotifyKind::Firing),
                ("1000/g/b".to_owned(), NotifyKind::Firing)
            ]
        );
        // Next: the critical repeat, one hour later.
        assert_eq!(next, Some(t0() + secs(30) + Duration::hours(1)));
    }

    #[test]
    fn repeats_by_severity_then_one_resolve() {
        let mut w = World::new(vec![receiver("ops", Severity::Warning)]);
        w.alerts.push(alert("crit", "critical", t0()));
        w.alerts.push(alert("warn", "warning", t0()));
        let first = t0() + secs(30);
        w.step(first, false);
        // Table: (time, what ops has been sent in total).
        let table = [
            (first + Duration::minutes(59), 1),
            (first + Duration::hours(1), 2),
            (first + Duration::hours(2), 3),
            (first + Duration::hours(3), 4),
            (first + Duration::hours(4), 5),
        ];
        for (at, total) in table {
            w.step(at, false);
            assert_eq!(w.sent_to("ops").len(), total, "at {at}");
        }
        // At 4 h both were due: one notification carries both.
        let last = w.sent_to("ops").pop().unwrap_or_else(|| (t0(), Vec::new()));
        assert_eq!(last.1.len(), 2, "{last:?}");
        // Every hourly repeat carried the whole group, "warn" too.
        assert!(w.sent_to("ops").iter().all(|(_, items)| items.len() == 2));
        // Resolve "crit": sent once, at once (with the group's firing
        // "warn", as every flush); nothing more for it.
        let resolved = first + Duration::hours(4) + secs(1);
        w.alerts[0].resolved_at = Some(resolved);
        w.step(resolved, false);
        let sent = w.sent_to("ops");
        assert_eq!(
            sent.last().map(|s| s.1.clone()),
            Some(vec![
                ("1000/g/crit".to_owned(), NotifyKind::Resolved),
                ("1000/g/warn".to_owned(), NotifyKind::Firing)
            ])
        );
        let count = sent.len();
        w.step(resolved + Duration::hours(10), false);
        let after: Vec<_> = w.sent_to("ops")[count..].to_vec();
        assert!(
            after
                .iter()
                .all(|(_, items)| items == &vec![("1000/g/warn".to_owned(), NotifyKind::Firing)]),
            "{after:?}"
        );
    }

    #[test]
    fn min_severity_filters_and_an_unnotified_resolve_is_not_sent() {
        let mut w = World::new(vec![
            receiver("all", Severity::Warning),
            receiver("pager", Severity::Critical),
        ]);
        w.alerts.push(alert("warn", "warning", t0()));
        w.step(t0() + secs(30), false);
        assert_eq!(w.sent_to("all").len(), 1);
        assert!(w.sent_to("pager").is_empty());
        // A critical alert that resolves inside group_wait is never sent,
        // nor is its resolve.
        let mut flap = alert("flap", "critical", t0() + secs(40));
        flap.resolved_at = Some(t0() + secs(50));
        w.alerts.push(flap);
        w.step(t0() + Duration::minutes(5), false);
        assert!(w.sent_to("pager").is_empty());
        assert_eq!(w.sent_to("all").len(), 1);
    }

    #[test]
    fn a_restart_inside_the_repeat_interval_sends_nothing() {
        let mut w = World::new(vec![receiver("ops", Severity::Warning)]);
        w.alerts.push(alert("a", "critical", t0()));
        w.step(t0() + secs(30), false);
        // A "restart" is routing again from the same state: the store keeps
        // last_sent_at, so nothing is due before the hour is up.
        let mut again = World::new(w.receivers.clone());
        again.alerts = w.alerts.clone();
        again.states = w.states.clone();
        assert_eq!(
            again.step(t0() + Duration::minutes(30), false),
            Some(t0() + secs(30) + Duration::hours(1))
        );
        assert!(again.sent.is_empty());
    }

    #[test]
    fn a_new_episode_is_sent_as_new() {
        let mut w = World::new(vec![receiver("ops", Severity::Warning)]);
        w.alerts.push(alert("a", "critical", t0()));
        w.step(t0() + secs(30), false);
        w.alerts[0].resolved_at = Some(t0() + secs(60));
        w.step(t0() + secs(60), false);
        // Fires again: a fresh group_wait, then a firing notification.
        w.alerts[0] = alert("a", "critical", t0() + secs(100));
        assert_eq!(w.step(t0() + secs(100), false), Some(t0() + secs(130)));
        w.step(t0() + secs(130), false);
        let kinds: Vec<NotifyKind> = w.sent_to("ops").iter().map(|s| s.1[0].1).collect();
        assert_eq!(
            kinds,
            [NotifyKind::Firing, NotifyKind::Resolved, NotifyKind::Firing]
        );
    }

    #[test]
    fn retries_back_off_keep_the_id_and_give_up_after_a_day() {
        let table = [
            (1, 5),
            (2, 10),
            (3, 20),
            (4, 40),
            (5, 80),
            (6, 160),
            (7, 300),
            (30, 300),
        ];
        for (failed, wait) in table {
            assert_eq!(
                next_attempt(t0(), failed, None),
                t0() + secs(wait),
                "{failed}"
            );
        }
        assert_eq!(next_attempt(t0(), 1, Some(secs(60))), t0() + secs(60));
        assert_eq!(next_attempt(t0(), 7, Some(secs(1))), t0() + secs(300));

        let mut w = World::new(vec![receiver("ops", Severity::Warning)]);
        w.alerts.push(alert("a", "critical", t0()));
        let mut now = t0() + secs(30);
        let mut attempts = 0;
        while let Some(next) = w.step(now, true) {
            attempts += 1;
            let pending: Vec<&PendingNotification> =
                w.states.iter().filter_map(|s| s.pending.as_ref()).collect();
            if pending.is_empty() {
                break;
            }
            assert!(pending.iter().all(|p| p.id == "n1"), "{pending:?}");
            now = next;
        }
        // Given up after a day: 5 s doubling to 5 min is about 293 attempts.
        assert!((280..300).contains(&attempts), "{attempts}");
        assert!(now - (t0() + secs(30)) >= GIVE_UP_AFTER);
        assert!(now - (t0() + secs(30)) < GIVE_UP_AFTER + MAX_RETRY);
        // The repeat clock restarts from the give-up; nothing was delivered.
        let state = &w.states[0];
        assert_eq!((state.sent_count, state.last_sent_at), (0, Some(now)));
    }

    #[test]
    fn a_receivers_own_repeat_overrides_the_severitys() {
        let mut am = receiver("am", Severity::Warning);
        am.repeat = Some(Duration::minutes(1));
        let mut w = World::new(vec![am]);
        w.alerts.push(alert("a", "warning", t0()));
        w.step(t0() + secs(30), false);
        assert_eq!(w.step(t0() + secs(60), false), Some(t0() + secs(90)));
        w.step(t0() + secs(90), false);
        assert_eq!(w.sent_to("am").len(), 2);
    }
}
