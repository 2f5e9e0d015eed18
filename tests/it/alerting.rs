//! Alert notifications: the store's per-receiver state (restarts neither
//! re-page nor forget a resolve), the notifier against fake receivers on
//! loopback (Alertmanager v4 shape, Standard Webhooks signatures, retries
//! with a stable `webhook-id`), on a manual clock.

use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use linetokd::domain::{AccessToken, ChannelId, GroupName, KeyId};
use linetokd::rotator::ENGINE_ALERTS;
use linetokd::store::{
    AlertChanges, AlertLabel, AlertScope, AlertSpec, ChannelSpec, IssuedToken, NotifyItem,
    NotifyKind, Store, fingerprint,
};

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).unwrap()
}

fn ch() -> ChannelId {
    ChannelId::new("1000")
}

fn synced(path: &Path) -> Store {
    let store = Store::open(path).unwrap();
    store
        .sync_config(
            t0(),
            &[ChannelSpec {
                id: ch(),
                name: "shop-bot".into(),
                groups: vec![GroupName::new("backend")],
                fingerprint: None,
                short_lived: Vec::new(),
            }],
        )
        .unwrap();
    store
}

/// States the channel's engine alerts as the rotator does.
fn sync(store: &Store, at: DateTime<Utc>, specs: &[AlertSpec]) -> AlertChanges {
    let channel = ch();
    let scope = AlertScope {
        channel: Some(&channel),
        group: None,
        names: ENGINE_ALERTS,
    };
    store.sync_alerts(at, scope, specs).unwrap()
}

fn no_live_token() -> AlertSpec {
    AlertSpec {
        label: None,
        group: Some(GroupName::new("backend")),
        alertname: "no_live_token",
        severity: "critical",
        summary: "backend has no live token".into(),
    }
}

fn store_token(store: &Store, key_id: &str, value: &str, at: DateTime<Utc>) {
    let intent = store
        .begin_issue(at, &ch(), &GroupName::new("backend"))
        .unwrap();
    store
        .complete_issue(
            at,
            intent,
            &IssuedToken {
                key_id: KeyId::new(key_id),
                value: AccessToken::new(value),
                issued_at: at,
                expires_at: at + Duration::days(30),
                verified_at: Some(at),
            },
            &[],
        )
        .unwrap();
}

mod store {
    use super::*;
    use crate::store::{OnBackend, backends};

    #[test]
    fn a_notification_keeps_its_id_across_failures_and_a_restart_and_ends_sent_on_both_backends() {
        for b in backends("notification_keeps_its_id") {
            notification_keeps_its_id(b);
        }
    }

    fn notification_keeps_its_id(b: OnBackend) {
        let name = b.name;
        let store = &b.store;
        let mut changed = store.subscribe_alerts();
        sync(store, t0(), &[no_live_token()]);
        assert!(
            changed.has_changed().unwrap(),
            "raising must wake the notifier"
        );
        changed.mark_unchanged();
        let fp = fingerprint(
            Some(&ch()),
            Some(&GroupName::new("backend")),
            "no_live_token",
            None,
        );
        let alerts = store.alerts_to_notify(t0()).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].fingerprint, fp);
        assert_eq!(alerts[0].resolved_at, None);

        let item = NotifyItem {
            fingerprint: fp.clone(),
            started_at: t0(),
            kind: NotifyKind::Firing,
        };
        let at = t0() + Duration::seconds(30);
        store
            .begin_notification(at, "ops", "id-1", std::slice::from_ref(&item))
            .unwrap();
        store
            .notification_failed("ops", "id-1", at + Duration::seconds(5))
            .unwrap();

        // A restart: the notification is still in flight, with its id.
        let b = b.restart();
        let store = &b.store;
        let states = store.notification_states().unwrap();
        assert_eq!(states.len(), 1, "{name}");
        let pending = states[0].pending.clone().unwrap();
        assert_eq!(pending.id, "id-1");
        assert_eq!(pending.attempts, 1);
        assert_eq!(pending.since, at);
        assert_eq!(pending.next_at, at + Duration::seconds(5));
        assert_eq!(states[0].sent_count, 0);

        let sent = at + Duration::seconds(5);
        store
            .finish_notification(sent, "ops", "id-1", true)
            .unwrap();
        let state = &store.notification_states().unwrap()[0];
        assert_eq!(state.pending, None);
        assert_eq!(state.sent_count, 1);
        assert_eq!(state.last_sent_at, Some(sent));
        assert!(!state.resolve_sent);

        // Resolved: listed while recent, and the resolve is recorded once.
        let resolved_at = t0() + Duration::hours(1);
        let changed = store.subscribe_alerts();
        sync(store, resolved_at, &[]);
        assert!(changed.has_changed().unwrap());
        let alerts = store.alerts_to_notify(resolved_at).unwrap();
        assert_eq!(alerts[0].resolved_at, Some(resolved_at));
        assert!(
            store
                .alerts_to_notify(resolved_at + Duration::seconds(1))
                .unwrap()
                .is_empty()
        );
        let resolve = NotifyItem {
            kind: NotifyKind::Resolved,
            ..item.clone()
        };
        store
            .begin_notification(resolved_at, "ops", "id-2", &[resolve])
            .unwrap();
        store
            .finish_notification(resolved_at, "ops", "id-2", true)
            .unwrap();
        let state = &store.notification_states().unwrap()[0];
        assert!(state.resolve_sent);
        assert_eq!(
            state.sent_count, 1,
            "a resolve is not a firing notification"
        );

        // The alert fires again: a new episode starts the row afresh.
        let again = t0() + Duration::hours(2);
        sync(store, again, &[no_live_token()]);
        let episode = NotifyItem {
            started_at: again,
            ..item
        };
        store
            .begin_notification(again, "ops", "id-3", &[episode])
            .unwrap();
        let state = &store.notification_states().unwrap()[0];
        assert_eq!(state.started_at, again);
        assert_eq!(state.sent_count, 0);
        assert_eq!(state.last_sent_at, None);
        assert!(!state.resolve_sent);
        // Given up: the repeat interval counts from here, nothing was sent.
        store
            .finish_notification(again, "ops", "id-3", false)
            .unwrap();
        let state = &store.notification_states().unwrap()[0];
        assert_eq!(
            (state.sent_count, state.last_sent_at),
            (0, Some(again)),
            "{name}"
        );
    }

    #[test]
    fn state_of_long_resolved_alerts_and_removed_receivers_is_pruned_but_not_what_is_in_flight_on_both_backends()
     {
        for b in backends("notification_state_is_pruned") {
            state_is_pruned(&b.store, b.name);
        }
    }

    fn state_is_pruned(store: &Store, name: &str) {
        sync(store, t0(), &[no_live_token()]);
        let fp = fingerprint(
            Some(&ch()),
            Some(&GroupName::new("backend")),
            "no_live_token",
            None,
        );
        let item = NotifyItem {
            fingerprint: fp,
            started_at: t0(),
            kind: NotifyKind::Firing,
        };
        store
            .begin_notification(t0(), "ops", "a", std::slice::from_ref(&item))
            .unwrap();
        store.finish_notification(t0(), "ops", "a", true).unwrap();
        store
            .begin_notification(t0(), "chat", "b", &[item])
            .unwrap();
        let resolved = t0() + Duration::hours(1);
        sync(store, resolved, &[]);
        let both = ["ops".to_owned(), "chat".to_owned()];
        assert_eq!(
            store.prune_notifications(resolved, &both).unwrap(),
            0,
            "{name}"
        );
        let later = resolved + Duration::days(2);
        assert_eq!(
            store.prune_notifications(later, &both).unwrap(),
            1,
            "{name}"
        );
        let left = store.notification_states().unwrap();
        assert_eq!(left.len(), 1, "{name}");
        assert_eq!(left[0].receiver, "chat", "{name}");
        // A receiver gone from the config takes its state with it, in
        // flight or not.
        assert_eq!(
            store
                .prune_notifications(resolved, &["ops".to_owned()])
                .unwrap(),
            1,
            "{name}"
        );
        assert!(store.notification_states().unwrap().is_empty(), "{name}");
    }

    #[test]
    fn owners_state_only_their_own_alerts_and_daemon_wide_ones_have_no_channel_on_both_backends() {
        for b in backends("owners_state_only_their_own_alerts") {
            owners_state_their_own(&b.store, b.name);
        }
    }

    fn owners_state_their_own(store: &Store, name: &str) {
        let channel = ch();
        let backend = GroupName::new("backend");
        let sink = |path: &str| AlertSpec {
            group: Some(backend.clone()),
            label: Some(AlertLabel {
                name: "sink",
                value: path.into(),
            }),
            alertname: "sink_failing",
            severity: "warning",
            summary: format!("writing {path} failed"),
        };
        let delivery = AlertScope {
            channel: Some(&channel),
            group: Some(&backend),
            names: &["sink_failing"],
        };
        let daemon = AlertScope {
            channel: None,
            group: None,
            names: &["config_reload_failed"],
        };
        let reload = AlertSpec {
            group: None,
            label: None,
            alertname: "config_reload_failed",
            severity: "warning",
            summary: "bad kid".into(),
        };
        sync(store, t0(), &[no_live_token()]);
        let raised = store
            .sync_alerts(t0(), delivery, &[sink("/run/a.json"), sink("/run/b.env")])
            .unwrap();
        assert_eq!(
            raised.raised.len(),
            2,
            "one per sink: the label tells them apart"
        );
        store
            .sync_alerts(t0(), daemon, std::slice::from_ref(&reload))
            .unwrap();

        // The engine states its alerts without the delivery's: they stay.
        let later = t0() + Duration::minutes(1);
        let changes = sync(store, later, &[]);
        assert_eq!(changes.resolved.len(), 1);
        assert_eq!(changes.resolved[0].alertname, "no_live_token");
        let firing = store.firing_alerts().unwrap();
        let names: Vec<(&str, Option<&str>)> = firing
            .iter()
            .map(|a| {
                (
                    a.alertname.as_str(),
                    a.label.as_ref().map(|(_, v)| v.as_str()),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("config_reload_failed", None),
                ("sink_failing", Some("/run/a.json")),
                ("sink_failing", Some("/run/b.env")),
            ],
            "{name}"
        );
        let fingerprints: Vec<&str> = firing.iter().map(|a| a.fingerprint.as_str()).collect();
        assert!(fingerprints.contains(&"-/-/config_reload_failed"));
        assert!(fingerprints.contains(&"1000/backend/sink_failing//run/a.json"));
        assert_eq!(firing[0].channel_id, None, "{name}");

        // One sink fixed: only its alert resolves; a changed summary is
        // kept without raising again.
        let mut b = sink("/run/b.env");
        b.summary = "writing /run/b.env failed 6 times".into();
        let changes = store.sync_alerts(later, delivery, &[b]).unwrap();
        assert!(changes.raised.is_empty());
        assert_eq!(changes.resolved.len(), 1);
        let b_row = store
            .firing_alerts()
            .unwrap()
            .into_iter()
            .find(|a| a.label.as_ref().is_some_and(|(_, v)| v == "/run/b.env"))
            .unwrap();
        assert_eq!(b_row.summary, "writing /run/b.env failed 6 times", "{name}");
        assert_eq!(b_row.started_at, t0(), "{name}");
        // The daemon-wide alert resolves on its own owner's word.
        let changes = store.sync_alerts(later, daemon, &[]).unwrap();
        assert_eq!(changes.resolved.len(), 1);
        assert_eq!(changes.resolved[0].channel_id, None);
        assert!(
            store
                .firing_alerts()
                .unwrap()
                .iter()
                .all(|a| a.alertname == "sink_failing")
        );
    }

    #[test]
    fn alerts_nobody_states_any_more_resolve_when_the_config_drops_their_group_or_channel() {
        let dir = tempfile::tempdir().unwrap();
        let store = synced(&dir.path().join("linetokd.db"));
        let channel = ch();
        let backend = GroupName::new("backend");
        let sink = AlertSpec {
            group: Some(backend.clone()),
            label: Some(AlertLabel {
                name: "sink",
                value: "/run/a.json".into(),
            }),
            alertname: "sink_failing",
            severity: "warning",
            summary: "writing /run/a.json failed".into(),
        };
        let delivery = AlertScope {
            channel: Some(&channel),
            group: Some(&backend),
            names: &["sink_failing"],
        };
        store.sync_alerts(t0(), delivery, &[sink]).unwrap();
        sync(&store, t0(), &[no_live_token()]);
        let spec = |groups: Vec<GroupName>| ChannelSpec {
            id: ch(),
            name: "shop-bot".into(),
            groups,
            fingerprint: None,
            short_lived: Vec::new(),
        };
        // The group leaves the config (e.g. while the daemon was stopped):
        // its sink alert has no owner any more; the engine's alert stays
        // with the rotator, which states it while the group holds tokens.
        let later = t0() + Duration::minutes(1);
        let report = store
            .sync_config(later, &[spec(vec![GroupName::new("other")])])
            .unwrap();
        assert_eq!(report.resolved_alerts, 1);
        let names: Vec<String> = store
            .firing_alerts()
            .unwrap()
            .into_iter()
            .map(|a| a.alertname)
            .collect();
        assert_eq!(names, vec!["no_live_token".to_owned()]);
        // The channel leaves the config: everything of it resolves.
        let report = store.sync_config(later, &[]).unwrap();
        assert_eq!(report.resolved_alerts, 1);
        assert!(store.firing_alerts().unwrap().is_empty());
    }

    #[test]
    fn a_schema_5_database_keeps_its_alerts_through_migration_6() {
        use linetokd::store::migrate::{self, MIGRATIONS};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("linetokd.db");
        {
            let mut conn = rusqlite::Connection::open(&path).unwrap();
            migrate::apply(&mut conn, &MIGRATIONS[..5]).unwrap();
            conn.execute_batch(
                "INSERT INTO channels (id, name, added_at) VALUES ('1000', 'shop', 1);
                 INSERT INTO alerts (fingerprint, channel_id, group_name, alertname, severity,
                                     summary, started_at, last_seen_at, resolved_at) VALUES
                   ('1000/backend/no_live_token', '1000', 'backend', 'no_live_token',
                    'critical', 'no token', 1000, 2000, NULL),
                   ('1000/-/channel_full', '1000', NULL, 'channel_full', 'warning',
                    'full', 500, 900, 900);",
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let firing = store.firing_alerts().unwrap();
        assert_eq!(firing.len(), 1);
        let a = &firing[0];
        assert_eq!(a.fingerprint, "1000/backend/no_live_token");
        assert_eq!(a.channel_id, Some(ch()));
        assert_eq!(a.group, Some(GroupName::new("backend")));
        assert_eq!(a.label, None);
        assert_eq!(a.started_at.timestamp_millis(), 1000);
        let all = store
            .alerts_to_notify(DateTime::from_timestamp_millis(0).unwrap())
            .unwrap();
        assert_eq!(all.len(), 2, "the resolved row is kept too");
        // And the engine's next statement resolves the migrated alert as
        // its own.
        let changes = sync(&store, t0(), &[]);
        assert_eq!(changes.resolved.len(), 1);
    }

    /// PostgreSQL orders text by the database's collation; a database
    /// created under `en_US` puts `_` before `a` before `B`. SQLite
    /// orders by bytes (`B` < `_` < `a`), and so must the store on both.
    /// The PostgreSQL columns are switched to a linguistic collation here,
    /// since the test cluster's own is C.
    #[test]
    fn alerts_and_notification_states_are_listed_in_byte_order_on_both_backends() {
        for b in backends("alerts_in_byte_order") {
            if b.is_postgres() {
                b.batch(
                "ALTER TABLE alerts ALTER COLUMN fingerprint TYPE TEXT COLLATE \"en-US-x-icu\"; \
                 ALTER TABLE alert_notifications \
                   ALTER COLUMN fingerprint TYPE TEXT COLLATE \"en-US-x-icu\", \
                   ALTER COLUMN receiver TYPE TEXT COLLATE \"en-US-x-icu\";",
            );
            }
            let store = &b.store;
            let channel = ch();
            let backend = GroupName::new("backend");
            let sink = |path: &str| AlertSpec {
                group: Some(backend.clone()),
                label: Some(AlertLabel {
                    name: "sink",
                    value: path.into(),
                }),
                alertname: "sink_failing",
                severity: "warning",
                summary: format!("writing {path} failed"),
            };
            let delivery = AlertScope {
                channel: Some(&channel),
                group: Some(&backend),
                names: &["sink_failing"],
            };
            // All raised at one instant: the fingerprint decides.
            store
                .sync_alerts(
                    t0(),
                    delivery,
                    &[sink("/run/a.json"), sink("/run/B.env"), sink("/run/_x")],
                )
                .unwrap();
            let labels = |alerts: Vec<linetokd::store::AlertRecord>| -> Vec<String> {
                alerts.into_iter().map(|a| a.label.unwrap().1).collect()
            };
            let in_bytes = ["/run/B.env", "/run/_x", "/run/a.json"];
            assert_eq!(
                labels(store.firing_alerts().unwrap()),
                in_bytes,
                "{}",
                b.name
            );
            assert_eq!(
                labels(store.firing_in(delivery).unwrap()),
                in_bytes,
                "{}",
                b.name
            );
            assert_eq!(
                labels(store.alerts_to_notify(t0()).unwrap()),
                in_bytes,
                "{}",
                b.name
            );

            let item = NotifyItem {
                fingerprint: fingerprint(
                    Some(&channel),
                    Some(&backend),
                    "sink_failing",
                    Some("/run/_x"),
                ),
                started_at: t0(),
                kind: NotifyKind::Firing,
            };
            for (receiver, id) in [("chat", "1"), ("Ops", "2"), ("_all", "3")] {
                store
                    .begin_notification(t0(), receiver, id, std::slice::from_ref(&item))
                    .unwrap();
            }
            let receivers: Vec<String> = store
                .notification_states()
                .unwrap()
                .into_iter()
                .map(|s| s.receiver)
                .collect();
            assert_eq!(receivers, ["Ops", "_all", "chat"], "{}", b.name);
        }
    }

    /// The monthly count adds up per receiver and month (the month is
    /// text the notifier computes, `YYYY-MM`; no date arithmetic in SQL),
    /// and a stop stays for the month: an upsert that PostgreSQL runs
    /// without SQLite's two-value `max`.
    #[test]
    fn a_receivers_month_adds_up_and_stays_stopped_once_stopped_on_both_backends() {
        for b in backends("receiver_months") {
            let store = &b.store;
            assert_eq!(
                store.receiver_month("admins", "2026-03").unwrap(),
                (0, false),
                "{}",
                b.name
            );
            store
                .record_receiver_month("admins", "2026-03", 2, false)
                .unwrap();
            assert_eq!(
                store.receiver_month("admins", "2026-03").unwrap(),
                (2, false),
                "{}",
                b.name
            );
            store
                .record_receiver_month("admins", "2026-03", 3, true)
                .unwrap();
            store
                .record_receiver_month("admins", "2026-03", 1, false)
                .unwrap();
            assert_eq!(
                store.receiver_month("admins", "2026-03").unwrap(),
                (6, true),
                "{}",
                b.name
            );
            assert_eq!(
                store.receiver_month("admins", "2026-04").unwrap(),
                (0, false),
                "{}",
                b.name
            );
            assert_eq!(
                store.receiver_month("others", "2026-03").unwrap(),
                (0, false),
                "{}",
                b.name
            );
        }
    }

    #[test]
    fn stored_token_values_are_found_and_screened() {
        let dir = tempfile::tempdir().unwrap();
        let store = synced(&dir.path().join("linetokd.db"));
        let value = "eyJhbGciOiJIUzI1NiJ9.tokentokentokentoken";
        store_token(&store, "k1", value, t0());
        assert!(store.holds_token(&format!("x {value} y")).unwrap());
        assert!(!store.holds_token("nothing here").unwrap());
        let screened = store.screen_text(&format!("leak: {value}")).unwrap();
        assert!(!screened.contains(value), "{screened}");
    }
}

/// A fake receiver on 127.0.0.1:0: records each request's headers and body
/// and answers with the status `answer` gives for the n-th request.
pub(crate) mod fake {
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::http::HeaderMap;
    use tokio::sync::mpsc;

    use crate::support::{Served, serve};

    /// One request received.
    #[derive(Debug, Clone)]
    pub struct Got {
        pub path: String,
        pub headers: HeaderMap,
        pub body: String,
    }

    impl Got {
        pub fn header(&self, name: &str) -> String {
            self.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        }

        pub fn json(&self) -> serde_json::Value {
            serde_json::from_str(&self.body).unwrap()
        }
    }

    pub struct Fake {
        pub base_url: String,
        got: Arc<Mutex<Vec<Got>>>,
        arrivals: mpsc::UnboundedReceiver<()>,
        _served: Served,
    }

    impl Fake {
        /// `answer(n)` gives the status and extra headers of the n-th
        /// request (0-based).
        pub async fn start(
            answer: impl Fn(usize) -> (u16, Vec<(&'static str, &'static str)>) + Send + Sync + 'static,
        ) -> Self {
            let got = Arc::new(Mutex::new(Vec::new()));
            let (tx, arrivals) = mpsc::unbounded_channel();
            let answer = Arc::new(answer);
            let log = got.clone();
            let app = Router::new().fallback(move |request: axum::extract::Request| {
                let (log, answer, tx) = (log.clone(), answer.clone(), tx.clone());
                async move {
                    let path = request.uri().path().to_owned();
                    let headers = request.headers().clone();
                    let body = axum::body::to_bytes(request.into_body(), 1 << 20)
                        .await
                        .unwrap();
                    let n = {
                        let mut log = log.lock().unwrap();
                        log.push(Got {
                            path,
                            headers,
                            body: String::from_utf8(body.to_vec()).unwrap(),
                        });
                        log.len() - 1
                    };
                    let (status, extra) = answer(n);
                    let _ = tx.send(());
                    let mut response = axum::response::Response::new(axum::body::Body::empty());
                    *response.status_mut() = axum::http::StatusCode::from_u16(status).unwrap();
                    for (k, v) in extra {
                        response
                            .headers_mut()
                            .insert(k, axum::http::HeaderValue::from_static(v));
                    }
                    response
                }
            });
            let served = serve(app).await;
            Self {
                base_url: served.base_url.clone(),
                got,
                arrivals,
                _served: served,
            }
        }

        pub fn got(&self) -> Vec<Got> {
            self.got.lock().unwrap().clone()
        }

        /// Waits for the next request to arrive (bounded, so a broken
        /// notifier fails the test instead of hanging it).
        pub async fn arrival(&mut self) {
            tokio::time::timeout(std::time::Duration::from_secs(90), self.arrivals.recv())
                .await
                .expect("no request reached the fake receiver")
                .unwrap();
        }
    }
}

mod notifier {
    use std::sync::Arc;

    use linetokd::alerting::{
        Endpoint, Notifier, NotifierSettings, Receiver, ReceiverKind, RouteSettings, Severity,
        TokenSource, WebhookFormat, sign,
    };
    use linetokd::channel_index::ChannelIndex;
    use linetokd::clock::{Clock, ManualClock, SharedClock};
    use linetokd::domain::AccessToken;
    use linetokd::metrics::Metrics;
    use linetokd::secret::Secret;
    use proptest::prelude::*;
    use tokio_util::sync::CancellationToken;

    use super::fake::Fake;
    use super::*;

    const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn webhook(fake: &Fake, format: WebhookFormat) -> Receiver {
        Receiver {
            name: "ops".into(),
            min_severity: Severity::Warning,
            timeout: std::time::Duration::from_secs(10),
            kind: ReceiverKind::Webhook {
                url: Endpoint(reqwest::Url::parse(&format!("{}/hook", fake.base_url)).unwrap()),
                format,
                secret: Some(Secret::new(WHSEC)),
            },
        }
    }

    fn settings(receivers: Vec<Receiver>) -> NotifierSettings {
        NotifierSettings {
            route: RouteSettings {
                group_wait: Duration::seconds(30),
                group_interval: Duration::minutes(5),
                repeat_warning: Duration::hours(4),
                repeat_critical: Duration::hours(1),
            },
            external_url: Some("http://linetokd.internal:9464/status".into()),
            receivers,
            channel_names: [(ch(), "shop-bot".to_owned())]
                .into_iter()
                .collect::<ChannelIndex>(),
            tokens: TokenSource::new(|channel, group| {
                (channel == &ch() && group.as_str() == "backend")
                    .then(|| AccessToken::new(PUSH_TOKEN))
            }),
        }
    }

    /// The token a `line` receiver pushes with in these tests.
    const PUSH_TOKEN: &str = "push-token-VALUE-0123456789abcdefghij";

    fn line(fake: &Fake, budget: u32) -> Receiver {
        Receiver {
            name: "admins".into(),
            min_severity: Severity::Warning,
            timeout: std::time::Duration::from_secs(10),
            kind: ReceiverKind::Line {
                api: reqwest::Url::parse(&fake.base_url).unwrap(),
                channel: ch(),
                group: GroupName::new("backend"),
                to: vec![
                    format!("U{}", "a".repeat(32)),
                    format!("U{}", "b".repeat(32)),
                ],
                monthly_budget: budget,
            },
        }
    }

    #[tokio::test]
    async fn a_line_push_reuses_its_retry_key_takes_409_as_delivered_and_keeps_to_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = synced(&dir.path().join("linetokd.db"));
        let at = t0() + Duration::seconds(30);
        let clock = ManualClock::new(at);
        let metrics = Metrics::shared();
        // Attempt 1: A fails (500), B is accepted. Attempt 2: A is
        // accepted, B's repeat answers 409 (LINE saw its retry key).
        let fake = Fake::start(|n| match n {
            0 => (500, vec![]),
            3 => (409, vec![]),
            _ => (200, vec![]),
        })
        .await;
        let n = notifier(&store, &clock, &metrics, vec![line(&fake, 4)]);
        sync(&store, t0(), &[no_live_token()]);
        assert_eq!(n.step().await.unwrap(), Some(at + Duration::seconds(5)));
        clock.set(at + Duration::seconds(5));
        n.step().await.unwrap();
        let got = fake.got();
        assert_eq!(got.len(), 4);
        let keys: Vec<String> = got.iter().map(|g| g.header("x-line-retry-key")).collect();
        assert_eq!(keys[0], keys[2], "A's retry carries its key");
        assert_eq!(keys[1], keys[3], "B's retry carries its key");
        assert_ne!(keys[0], keys[1]);
        assert_eq!(keys[0].len(), 36);
        assert_eq!(
            &keys[0][14..15],
            "4",
            "a UUID version 4 in form: {}",
            keys[0]
        );
        for g in &got {
            assert_eq!(g.path, "/v2/bot/message/push");
            assert_eq!(g.header("authorization"), format!("Bearer {PUSH_TOKEN}"));
            assert!(!g.body.contains(PUSH_TOKEN));
            let v = g.json();
            let text = v["messages"][0]["text"].as_str().unwrap();
            assert!(
                text.contains("[CRITICAL] no_live_token on shop-bot/backend"),
                "{text}"
            );
        }
        assert_eq!(got[0].json()["to"], format!("U{}", "a".repeat(32)));
        assert_eq!(got[1].json()["to"], format!("U{}", "b".repeat(32)));
        let state = &store.notification_states().unwrap()[0];
        assert_eq!((state.sent_count, state.pending.clone()), (1, None));
        let month = at.format("%Y-%m").to_string();
        assert_eq!(store.receiver_month("admins", &month).unwrap(), (3, false));

        // The resolve needs two more messages; the budget (4) has one left:
        // the receiver is out of quota, so nothing is routed to it (no
        // attempt, no rejection logged each repeat) until the month turns.
        let resolved = at + Duration::minutes(1);
        clock.set(resolved);
        sync(&store, resolved, &[]);
        // The spent budget is itself an alert (for other receivers) until
        // the month turns: that is when the notifier looks next.
        let next_month = DateTime::parse_from_rfc3339("2023-12-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(n.step().await.unwrap(), Some(next_month));
        assert!(
            store
                .firing_alerts()
                .unwrap()
                .iter()
                .any(|a| a.alertname == "line_receiver_quota")
        );
        assert_eq!(fake.got().len(), 4);
        assert!(!store.notification_states().unwrap()[0].resolve_sent);
        assert!(!metrics.render().contains(
            r#"linetokd_alert_notifications_total{receiver="admins",result="rejected"}"#
        ));
    }

    #[tokio::test]
    async fn lines_monthly_limit_stops_the_receiver_until_the_month_turns() {
        let dir = tempfile::tempdir().unwrap();
        let store = synced(&dir.path().join("linetokd.db"));
        let at = t0() + Duration::seconds(30);
        let clock = ManualClock::new(at);
        let fake = Fake::start(|n| (if n == 0 { 429 } else { 200 }, vec![])).await;
        let n = notifier(&store, &clock, &Metrics::shared(), vec![line(&fake, 100)]);
        sync(&store, t0(), &[no_live_token()]);
        n.step().await.unwrap();
        let month = at.format("%Y-%m").to_string();
        let (_, stopped) = store.receiver_month("admins", &month).unwrap();
        assert!(stopped);
        // Inside the month nothing more is pushed, not even the repeat.
        let later = at + Duration::hours(2);
        clock.set(later);
        n.step().await.unwrap();
        let before = fake.got().len();
        assert_eq!(before, 2, "A refused (429), B accepted, then nothing");
        // The next month it pushes again.
        let next_month = DateTime::parse_from_rfc3339("2023-12-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        clock.set(next_month);
        n.step().await.unwrap();
        assert_eq!(fake.got().len(), before + 2);
    }

    #[tokio::test]
    async fn a_line_receiver_out_of_quota_is_an_alert_for_the_others_until_the_month_turns() {
        let dir = tempfile::tempdir().unwrap();
        let store = synced(&dir.path().join("linetokd.db"));
        let at = t0() + Duration::seconds(30);
        let clock = ManualClock::new(at);
        // LINE refuses this month's pushes (429) and takes next month's.
        let line_fake = Fake::start(|n| (if n < 2 { 429 } else { 200 }, vec![])).await;
        let hook_fake = Fake::start(|_| (200, vec![])).await;
        let n = notifier(
            &store,
            &clock,
            &Metrics::shared(),
            vec![
                line(&line_fake, 100),
                webhook(&hook_fake, WebhookFormat::Alertmanager),
            ],
        );
        sync(&store, t0(), &[no_live_token()]);
        n.step().await.unwrap();
        assert_eq!(
            line_fake.got().len(),
            2,
            "a push per recipient, refused with 429"
        );
        assert_eq!(hook_fake.got().len(), 1, "the webhook got no_live_token");

        // The next step sees the stopped month: the quota alert fires,
        // daemon-wide, labelled with the receiver.
        n.step().await.unwrap();
        let quota: Vec<_> = store
            .firing_alerts()
            .unwrap()
            .into_iter()
            .filter(|a| a.alertname == "line_receiver_quota")
            .collect();
        assert_eq!(quota.len(), 1, "{quota:?}");
        assert_eq!(quota[0].channel_id, None);
        assert_eq!(
            quota[0].label,
            Some(("receiver".to_owned(), "admins".to_owned()))
        );
        // After group_interval (the webhook was told of no_live_token at
        // `at`) the webhook is told; the line receiver is not asked to push
        // news of its own silence.
        clock.set(at + Duration::minutes(5));
        let due = n.step().await.unwrap();
        let got = hook_fake.got();
        assert_eq!(got.len(), 2, "the quota alert went to the webhook");
        let body = got[1].json();
        let alert = body["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["labels"]["alertname"] == "line_receiver_quota")
            .unwrap_or_else(|| panic!("no quota alert in {body}"));
        assert_eq!(alert["labels"]["receiver"], "admins");
        assert!(alert["labels"].get("channel").is_none(), "{body}");
        assert_eq!(line_fake.got().len(), 2);
        // The notifier wakes no later than the month's turn, which
        // resolves it and tells the webhook once.
        let next_month = DateTime::parse_from_rfc3339("2023-12-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert!(due.is_some_and(|d| d <= next_month), "{due:?}");
        clock.set(next_month);
        n.step().await.unwrap();
        assert!(
            !store
                .firing_alerts()
                .unwrap()
                .iter()
                .any(|a| a.alertname == "line_receiver_quota")
        );
        clock.set(next_month + Duration::seconds(31));
        n.step().await.unwrap();
        let resolves: Vec<serde_json::Value> = hook_fake
            .got()
            .iter()
            .flat_map(|g| g.json()["alerts"].as_array().cloned().unwrap_or_default())
            .filter(|a| {
                a["status"] == "resolved" && a["labels"]["alertname"] == "line_receiver_quota"
            })
            .collect();
        assert_eq!(
            resolves.len(),
            1,
            "one resolve for the quota alert; sent: {:#?}",
            hook_fake
                .got()
                .iter()
                .map(fake::Got::json)
                .collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn a_line_receiver_waits_for_its_groups_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = synced(&dir.path().join("linetokd.db"));
        let at = t0() + Duration::seconds(30);
        let clock = ManualClock::new(at);
        let fake = Fake::start(|_| (200, vec![])).await;
        let mut r = line(&fake, 100);
        if let ReceiverKind::Line { group, .. } = &mut r.kind {
            *group = GroupName::new("crm");
        }
        let n = notifier(&store, &clock, &Metrics::shared(), vec![r]);
        sync(&store, t0(), &[no_live_token()]);
        // No token for crm: retried like a failure, nothing sent.
        assert_eq!(n.step().await.unwrap(), Some(at + Duration::seconds(5)));
        assert!(fake.got().is_empty());
    }

    fn notifier(
        store: &Store,
        clock: &ManualClock,
        metrics: &Arc<Metrics>,
        receivers: Vec<Receiver>,
    ) -> Arc<Notifier> {
        let shared: SharedClock = Arc::new(clock.clone());
        Notifier::new(
            store.clone(),
            shared,
            Arc::clone(metrics),
            settings(receivers),
        )
        .unwrap()
    }

    fn assert_signed(got: &fake::Got) {
        let key = sign::decode_secret(WHSEC).unwrap();
        let id = got.header("webhook-id");
        let ts: i64 = got.header("webhook-timestamp").parse().unwrap();
        assert!(!id.is_empty());
        assert_eq!(
            got.header("webhook-signature"),
            sign::sign(&key, &id, ts, got.body.as_bytes()),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn a_raised_alert_is_sent_after_group_wait_signed_in_alertmanagers_shape() {
        let dir = tempfile::tempdir().unwrap();
        let store = synced(&dir.path().join("linetokd.db"));
        let clock = ManualClock::new(t0());
        let metrics = Metrics::shared();
        let fake = Fake::start(|_| (200, vec![])).await;
        let n = notifier(
            &store,
            &clock,
            &metrics,
            vec![webhook(&fake, WebhookFormat::Alertmanager)],
        );
        sync(&store, t0(), &[no_live_token()]);

        assert_eq!(n.step().await.unwrap(), Some(t0() + Duration::seconds(30)));
        assert!(fake.got().is_empty());
        clock.set(t0() + Duration::seconds(30));
        let next = n.step().await.unwrap();
        assert_eq!(
            next,
            Some(t0() + Duration::seconds(30) + Duration::hours(1))
        );
        let got = fake.got();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].path, "/hook");
        assert_eq!(got[0].header("content-type"), "application/json");
        assert_eq!(
            got[0].header("webhook-timestamp"),
            (t0() + Duration::seconds(30)).timestamp().to_string()
        );
        assert_signed(&got[0]);
        let v = got[0].json();
        assert_eq!(v["version"], "4");
        assert_eq!(v["receiver"], "ops");
        assert_eq!(v["status"], "firing");
        assert_eq!(v["externalURL"], "http://linetokd.internal:9464/status");
        let alert = &v["alerts"][0];
        assert_eq!(alert["labels"]["alertname"], "no_live_token");
        assert_eq!(alert["labels"]["channel_name"], "shop-bot");
        assert_eq!(alert["labels"]["group"], "backend");
        assert_eq!(alert["labels"]["severity"], "critical");
        assert_eq!(alert["annotations"]["summary"], "backend has no live token");
        let text = metrics.render();
        assert!(
            text.contains(
                r#"linetokd_alert_notifications_total{receiver="ops",result="delivered"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"linetokd_alerts_firing{alertname="no_live_token",severity="critical"} 1"#
            ),
            "{text}"
        );
    }

    /// A resolve being retried when its alert fires again: the retry must
    /// not tell the new episode (its `startsAt`) as resolved; the new
    /// episode goes out as firing instead.
    #[tokio::test]
    async fn a_resolve_retried_after_its_alert_fired_again_does_not_resolve_the_new_episode() {
        let dir = tempfile::tempdir().unwrap();
        let store = synced(&dir.path().join("linetokd.db"));
        let first = t0() + Duration::seconds(30);
        let clock = ManualClock::new(first);
        // The resolve (the second request) fails once.
        let fake = Fake::start(|n| (if n == 1 { 500 } else { 200 }, vec![])).await;
        let n = notifier(
            &store,
            &clock,
            &Metrics::shared(),
            vec![webhook(&fake, WebhookFormat::Alertmanager)],
        );
        sync(&store, t0(), &[no_live_token()]);
        n.step().await.unwrap();
        let resolved = t0() + Duration::seconds(60);
        clock.set(resolved);
        sync(&store, resolved, &[]);
        n.step().await.unwrap();
        assert_eq!(fake.got().len(), 2, "firing, then the resolve (500)");
        // It fires again before the resolve's retry.
        let again = resolved + Duration::seconds(2);
        clock.set(again);
        sync(&store, again, &[no_live_token()]);
        // The retry falls due; then the new episode after group_wait.
        for at in [
            resolved + Duration::seconds(5),
            again + Duration::seconds(30),
        ] {
            clock.set(at);
            n.step().await.unwrap();
        }
        let starts = |a: &serde_json::Value| a["startsAt"].as_str().unwrap_or_default().to_owned();
        let new_start = "2023-11-14T22:14:22.000Z";
        let mut told_new_firing = false;
        for g in fake.got() {
            for a in g.json()["alerts"].as_array().cloned().unwrap_or_default() {
                if starts(&a) == new_start {
                    assert_eq!(a["status"], "firing", "the new episode told as {a}");
                    told_new_firing = true;
                }
            }
        }
        assert!(
            told_new_firing,
            "{:#?}",
            fake.got().iter().map(fake::Got::json).collect::<Vec<_>>()
        );
    }

    /// A receiver down for a day: the notification is given up 24 h after
    /// its first attempt, counted and ended (not retried any more).
    #[tokio::test]
    async fn a_notification_failing_for_24_hours_is_given_up_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = synced(&dir.path().join("linetokd.db"));
        let first = t0() + Duration::seconds(30);
        let clock = ManualClock::new(first);
        let metrics = Metrics::shared();
        let fake = Fake::start(|_| (503, vec![])).await;
        let n = notifier(
            &store,
            &clock,
            &metrics,
            vec![webhook(&fake, WebhookFormat::Alertmanager)],
        );
        sync(&store, t0(), &[no_live_token()]);
        let mut at = first;
        while at < first + Duration::hours(24) {
            at = n.step().await.unwrap().expect("a retry is due");
            clock.set(at);
        }
        n.step().await.unwrap();
        let attempts = fake.got().len();
        assert!(
            attempts > 250,
            "5 s doubling to 5 min over a day: {attempts}"
        );
        let state = &store.notification_states().unwrap()[0];
        assert_eq!((state.sent_count, state.pending.clone()), (0, None));
        assert!(
            metrics.render().contains(
                r#"linetokd_alert_notifications_total{receiver="ops",result="given_up"} 1"#
            ),
            "{}",
            metrics.render()
        );
        // Given up, not retried: the next step waits for the repeat.
        let after = clock.now();
        let next = n.step().await.unwrap();
        assert_eq!(fake.got().len(), attempts);
        assert!(next.is_some_and(|t| t > after), "{next:?}");
    }

    #[tokio::test]
    async fn retries_on_500_keep_the_webhook_id_and_back_off() {
        let dir = tempfile::tempdir().unwrap();
        let store = synced(&dir.path().join("linetokd.db"));
        let clock = ManualClock::new(t0() + Duration::seconds(30));
        let metrics = Metrics::shared();
        let fake = Fake::start(|n| (if n < 2 { 500 } else { 200 }, vec![])).await;
        let n = notifier(
            &store,
            &clock,
            &metrics,
            vec![webhook(&fake, WebhookFormat::Linetokd)],
        );
        sync(&store, t0(), &[no_live_token()]);

        let first = t0() + Duration::seconds(30);
        assert_eq!(n.step().await.unwrap(), Some(first + Duration::seconds(5)));
        clock.set(first + Duration::seconds(5));
        assert_eq!(n.step().await.unwrap(), Some(first + Duration::seconds(15)));
        clock.set(first + Duration::seconds(15));
        n.step().await.unwrap();
        let got = fake.got();
        assert_eq!(got.len(), 3);
        let ids: Vec<String> = got.iter().map(|g| g.header("webhook-id")).collect();
        assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
        for g in &got {
            assert_signed(g);
            assert_eq!(g.json()["id"], ids[0].as_str());
            assert_eq!(g.json()["status"], "firing");
        }
        let state = &store.notification_states().unwrap()[0];
        assert_eq!((state.sent_count, state.pending.clone()), (1, None));
        let text = metrics.render();
        assert!(
            text.contains(
                r#"linetokd_alert_notifications_total{receiver="ops",result="failed"} 2"#
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_429_retry_after_is_honoured_and_a_400_is_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let store = synced(&dir.path().join("linetokd.db"));
        let at = t0() + Duration::seconds(30);
        let clock = ManualClock::new(at);
        let metrics = Metrics::shared();
        let fake = Fake::start(|n| match n {
            0 => (429, vec![("retry-after", "120")]),
            _ => (400, vec![]),
        })
        .await;
        let n = notifier(
            &store,
            &clock,
            &metrics,
            vec![webhook(&fake, WebhookFormat::Alertmanager)],
        );
        sync(&store, t0(), &[no_live_token()]);
        assert_eq!(n.step().await.unwrap(), Some(at + Duration::seconds(120)));
        clock.set(at + Duration::seconds(120));
        // Rejected: given up at once; the repeat interval counts from here.
        assert_eq!(
            n.step().await.unwrap(),
            Some(at + Duration::seconds(120) + Duration::hours(1))
        );
        assert_eq!(fake.got().len(), 2);
        let state = &store.notification_states().unwrap()[0];
        assert_eq!(state.sent_count, 0);
        assert!(metrics.render().contains(r#"result="rejected"} 1"#));
    }

    #[tokio::test]
    async fn a_restart_inside_the_repeat_interval_does_not_page_again_but_sends_the_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("linetokd.db");
        let fake = Fake::start(|_| (200, vec![])).await;
        let sent_at = t0() + Duration::seconds(30);
        {
            let store = synced(&path);
            let clock = ManualClock::new(sent_at);
            let n = notifier(
                &store,
                &clock,
                &Metrics::shared(),
                vec![webhook(&fake, WebhookFormat::Alertmanager)],
            );
            sync(&store, t0(), &[no_live_token()]);
            n.step().await.unwrap();
            assert_eq!(fake.got().len(), 1);
        }
        // The daemon restarts half an hour later.
        let store = Store::open(&path).unwrap();
        let clock = ManualClock::new(sent_at + Duration::minutes(30));
        let n = notifier(
            &store,
            &clock,
            &Metrics::shared(),
            vec![webhook(&fake, WebhookFormat::Alertmanager)],
        );
        assert_eq!(n.step().await.unwrap(), Some(sent_at + Duration::hours(1)));
        assert_eq!(fake.got().len(), 1, "paged again after a restart");
        // Resolved: sent once, and only once.
        let resolved = sent_at + Duration::minutes(40);
        clock.set(resolved);
        sync(&store, resolved, &[]);
        assert_eq!(n.step().await.unwrap(), None);
        assert_eq!(n.step().await.unwrap(), None);
        let got = fake.got();
        assert_eq!(got.len(), 2);
        let v = got[1].json();
        assert_eq!(v["status"], "resolved");
        assert_eq!(v["alerts"][0]["endsAt"], "2023-11-14T22:53:50.000Z");
    }

    #[tokio::test]
    async fn the_task_wakes_when_alerts_change_and_when_they_fall_due() {
        let dir = tempfile::tempdir().unwrap();
        let store = synced(&dir.path().join("linetokd.db"));
        let clock = ManualClock::new(t0());
        let mut fake = Fake::start(|_| (200, vec![])).await;
        let n = notifier(
            &store,
            &clock,
            &Metrics::shared(),
            vec![webhook(&fake, WebhookFormat::Alertmanager)],
        );
        sync(&store, t0(), &[no_live_token()]);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&n).run(cancel.clone()));
        // It sleeps on the clock until group_wait is over, then sends.
        assert_eq!(clock.next_deadline().await, t0() + Duration::seconds(30));
        clock.set(t0() + Duration::seconds(30));
        fake.arrival().await;
        assert_eq!(fake.got()[0].json()["status"], "firing");
        // Resolving wakes it: nothing else is due for an hour.
        let resolved = t0() + Duration::minutes(5);
        clock.set(resolved);
        sync(&store, resolved, &[]);
        fake.arrival().await;
        assert_eq!(fake.got()[1].json()["status"], "resolved");
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(clock.now(), resolved);
    }

    /// Under `[ha]`, an instance without the daemon-wide duties notifies
    /// no one, but its `linetokd_alerts_firing` follows the shared store:
    /// it does not keep an alert it raised before handing a channel over.
    #[tokio::test]
    async fn without_the_duties_nothing_is_sent_and_the_firing_gauge_follows_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = synced(&dir.path().join("linetokd.db"));
        let clock = ManualClock::new(t0());
        let metrics = Metrics::shared();
        let fake = Fake::start(|_| (200, vec![])).await;
        let n = notifier(
            &store,
            &clock,
            &metrics,
            vec![webhook(&fake, WebhookFormat::Alertmanager)],
        );
        n.share(Arc::new(|| false), Duration::seconds(10));
        sync(&store, t0(), &[no_live_token()]);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&n).run(cancel.clone()));
        let firing = r#"linetokd_alerts_firing{alertname="no_live_token",severity="critical"}"#;
        // It reads the store, then sleeps one share interval.
        assert_eq!(clock.next_deadline().await, t0() + Duration::seconds(10));
        let text = metrics.render();
        assert!(text.contains(&format!("{firing} 1")), "{text}");
        // Resolved by the instance that leads now: at the next look, 0.
        sync(&store, t0() + Duration::seconds(5), &[]);
        clock.set(t0() + Duration::seconds(10));
        // The woken sleeper's deadline stays listed until its task runs.
        let next = loop {
            let next = clock.next_deadline().await;
            if next > t0() + Duration::seconds(10) {
                break next;
            }
            tokio::task::yield_now().await;
        };
        assert_eq!(next, t0() + Duration::seconds(20));
        let text = metrics.render();
        assert!(text.contains(&format!("{firing} 0")), "{text}");
        assert!(fake.got().is_empty());
        cancel.cancel();
        task.await.unwrap();
    }

    fn slack(fake: &Fake) -> Receiver {
        Receiver {
            name: "chat".into(),
            min_severity: Severity::Warning,
            timeout: std::time::Duration::from_secs(10),
            kind: ReceiverKind::Slack {
                url: Endpoint(
                    reqwest::Url::parse(&format!("{}/services/T0/B0/x", fake.base_url)).unwrap(),
                ),
            },
        }
    }

    #[tokio::test]
    async fn slack_gets_one_message_a_second_and_its_429_retry_after_is_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let store = synced(&dir.path().join("linetokd.db"));
        let at = t0() + Duration::seconds(30);
        let clock = ManualClock::new(at);
        let metrics = Metrics::shared();
        let fake = Fake::start(|n| match n {
            0 => (429, vec![("retry-after", "7")]),
            _ => (200, vec![]),
        })
        .await;
        let n = notifier(&store, &clock, &metrics, vec![slack(&fake)]);
        sync(&store, t0(), &[no_live_token()]);
        // 429 with Retry-After: 7 s, longer than the first backoff (5 s).
        assert_eq!(n.step().await.unwrap(), Some(at + Duration::seconds(7)));
        clock.set(at + Duration::seconds(6));
        assert_eq!(n.step().await.unwrap(), Some(at + Duration::seconds(7)));
        assert_eq!(fake.got().len(), 1);
        let sent = at + Duration::seconds(7);
        clock.set(sent);
        n.step().await.unwrap();
        let got = fake.got();
        assert_eq!(got.len(), 2);
        let v = got[1].json();
        let text = v["text"].as_str().unwrap();
        assert!(
            text.contains(
                "[CRITICAL] no_live_token on shop-bot/backend: backend has no live token"
            ),
            "{text}"
        );
        // A resolve half a second later waits for Slack's one-a-second.
        let resolved = sent + Duration::milliseconds(500);
        clock.set(resolved);
        sync(&store, resolved, &[]);
        assert_eq!(n.step().await.unwrap(), Some(sent + Duration::seconds(1)));
        assert_eq!(fake.got().len(), 2);
        clock.set(sent + Duration::seconds(1));
        assert_eq!(n.step().await.unwrap(), None);
        let got = fake.got();
        assert_eq!(got.len(), 3);
        assert!(
            got[2].json()["text"]
                .as_str()
                .unwrap()
                .contains("[RESOLVED]")
        );
    }

    #[tokio::test]
    async fn alertmanager_gets_firing_alerts_again_every_resend_interval_and_the_resolve_with_ends_at()
     {
        let dir = tempfile::tempdir().unwrap();
        let store = synced(&dir.path().join("linetokd.db"));
        let clock = ManualClock::new(t0());
        let fake = Fake::start(|_| (200, vec![])).await;
        let am = Receiver {
            name: "am".into(),
            min_severity: Severity::Warning,
            timeout: std::time::Duration::from_secs(10),
            kind: ReceiverKind::Alertmanager {
                urls: vec![reqwest::Url::parse(&fake.base_url).unwrap()],
                resend_interval: Duration::minutes(1),
            },
        };
        let n = notifier(&store, &clock, &Metrics::shared(), vec![am]);
        sync(&store, t0(), &[no_live_token()]);
        let first = t0() + Duration::seconds(30);
        clock.set(first);
        assert_eq!(n.step().await.unwrap(), Some(first + Duration::minutes(1)));
        clock.set(first + Duration::minutes(1));
        n.step().await.unwrap();
        let resolved = first + Duration::seconds(70);
        clock.set(resolved);
        sync(&store, resolved, &[]);
        assert_eq!(n.step().await.unwrap(), None);
        let got = fake.got();
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|g| g.path == "/api/v2/alerts"));
        let push = got[0].json();
        assert_eq!(push[0]["labels"]["alertname"], "no_live_token");
        assert_eq!(push[0]["startsAt"], "2023-11-14T22:13:20.000Z");
        // Firing: ends three resend intervals ahead unless re-sent.
        assert_eq!(push[0]["endsAt"], "2023-11-14T22:16:50.000Z");
        assert_eq!(got[1].json()[0]["endsAt"], "2023-11-14T22:17:50.000Z");
        assert_eq!(got[2].json()[0]["endsAt"], "2023-11-14T22:15:00.000Z");
    }

    /// An Alertmanager pair with one instance down: the other taking the
    /// push is delivery (a cluster shares it), so later alerts are not held
    /// behind a day of retries of the one that is down.
    #[tokio::test]
    async fn one_alertmanager_of_a_pair_taking_the_push_is_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let store = synced(&dir.path().join("linetokd.db"));
        let clock = ManualClock::new(t0());
        let up = Fake::start(|_| (200, vec![])).await;
        let down = Fake::start(|_| (503, vec![])).await;
        let am = Receiver {
            name: "am".into(),
            min_severity: Severity::Warning,
            timeout: std::time::Duration::from_secs(10),
            kind: ReceiverKind::Alertmanager {
                urls: vec![
                    reqwest::Url::parse(&down.base_url).unwrap(),
                    reqwest::Url::parse(&up.base_url).unwrap(),
                ],
                resend_interval: Duration::minutes(1),
            },
        };
        let metrics = Metrics::shared();
        let n = notifier(&store, &clock, &metrics, vec![am]);
        sync(&store, t0(), &[no_live_token()]);
        let first = t0() + Duration::seconds(30);
        clock.set(first);
        // Delivered: the next step is the resend, not a retry in 5 s.
        assert_eq!(n.step().await.unwrap(), Some(first + Duration::minutes(1)));
        assert_eq!((up.got().len(), down.got().len()), (1, 1));
        let state = &store.notification_states().unwrap()[0];
        assert_eq!((state.sent_count, state.pending.clone()), (1, None));
        assert!(
            metrics.render().contains(
                r#"linetokd_alert_notifications_total{receiver="am",result="delivered"} 1"#
            )
        );
    }

    #[tokio::test]
    async fn a_receiver_that_hangs_does_not_hold_up_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = synced(&dir.path().join("linetokd.db"));
        let clock = ManualClock::new(t0() + Duration::seconds(30));
        // "stuck" answers only once released.
        let release = Arc::new(tokio::sync::Notify::new());
        let gate = Arc::clone(&release);
        let stuck_app = axum::Router::new().fallback(move || {
            let gate = Arc::clone(&gate);
            async move {
                gate.notified().await;
                axum::http::StatusCode::OK
            }
        });
        let stuck = crate::support::serve(stuck_app).await;
        let mut fine = Fake::start(|_| (200, vec![])).await;
        let mut first = webhook(&fine, WebhookFormat::Alertmanager);
        first.name = "stuck".into();
        first.kind = ReceiverKind::Webhook {
            url: Endpoint(reqwest::Url::parse(&stuck.base_url).unwrap()),
            format: WebhookFormat::Alertmanager,
            secret: None,
        };
        let n = notifier(
            &store,
            &clock,
            &Metrics::shared(),
            vec![first, webhook(&fine, WebhookFormat::Alertmanager)],
        );
        sync(&store, t0(), &[no_live_token()]);
        let step = tokio::spawn({
            let n = Arc::clone(&n);
            async move { n.step().await }
        });
        // "ops" is served while "stuck" still waits for its answer.
        fine.arrival().await;
        release.notify_one();
        step.await.unwrap().unwrap();
        let states = store.notification_states().unwrap();
        assert!(states.iter().all(|s| s.sent_count == 1), "{states:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]

        /// Token values that reached an alert's text or label (here:
        /// stored after the alert was raised, so the store's screen could
        /// not know them then) never appear in what any receiver gets:
        /// both webhook formats, Slack, Alertmanager and a LINE push.
        #[test]
        fn no_token_value_reaches_a_payload(
            values in proptest::collection::vec("[A-Za-z0-9+/=._-]{24,64}", 1..4),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let store = synced(&dir.path().join("linetokd.db"));
                let clock = ManualClock::new(t0() + Duration::seconds(30));
                let fakes = [
                    Fake::start(|_| (200, vec![])).await,
                    Fake::start(|_| (200, vec![])).await,
                    Fake::start(|_| (200, vec![])).await,
                    Fake::start(|_| (200, vec![])).await,
                    Fake::start(|_| (200, vec![])).await,
                ];
                let mut linetokd_format = webhook(&fakes[1], WebhookFormat::Linetokd);
                linetokd_format.name = "ops-events".into();
                let am = Receiver {
                    name: "am".into(),
                    min_severity: Severity::Warning,
                    timeout: std::time::Duration::from_secs(10),
                    kind: ReceiverKind::Alertmanager {
                        urls: vec![reqwest::Url::parse(&fakes[3].base_url).unwrap()],
                        resend_interval: Duration::minutes(1),
                    },
                };
                let receivers = vec![
                    webhook(&fakes[0], WebhookFormat::Alertmanager),
                    linetokd_format,
                    slack(&fakes[2]),
                    am,
                    line(&fakes[4], 1000),
                ];
                let n = notifier(&store, &clock, &Metrics::shared(), receivers);
                let mut alert = no_live_token();
                alert.summary = format!("leaked {} here", values.join(" and "));
                sync(&store, t0(), &[alert]);
                let (channel, backend) = (ch(), GroupName::new("backend"));
                let scope = AlertScope {
                    channel: Some(&channel),
                    group: Some(&backend),
                    names: &["sink_failing"],
                };
                let sink = AlertSpec {
                    group: Some(backend.clone()),
                    label: Some(AlertLabel { name: "sink", value: format!("/run/{}", values[0]) }),
                    alertname: "sink_failing",
                    severity: "warning",
                    summary: "a sink fails".into(),
                };
                store.sync_alerts(t0(), scope, &[sink]).unwrap();
                for (i, v) in values.iter().enumerate() {
                    store_token(&store, &format!("k{i}"), v, t0());
                }
                n.step().await.unwrap();
                for fake in &fakes {
                    let got = fake.got();
                    prop_assert!(!got.is_empty(), "{} got nothing", fake.base_url);
                    for g in &got {
                        for v in &values {
                            prop_assert!(!g.body.contains(v.as_str()), "{} leaked in {}", v, g.body);
                        }
                    }
                }
                Ok(())
            })?;
        }
    }

    #[test]
    fn the_daemon_takes_its_receivers_from_the_config_and_check_config_hides_their_urls() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("url");
        std::fs::write(&url, "https://hooks.example/T0/TOPSECRET\n").unwrap();
        std::fs::set_permissions(&url, std::fs::Permissions::from_mode(0o600)).unwrap();
        let whsec = dir.path().join("whsec");
        std::fs::write(&whsec, WHSEC).unwrap();
        std::fs::set_permissions(&whsec, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = format!(
            "[daemon]\nstate_dir = \"{dir}\"\n[alerts]\ngroup_wait = \"10s\"\n\
             [[alerts.receiver]]\nname = \"ops\"\ntype = \"webhook\"\nurl_file = \"{url}\"\n\
             format = \"linetokd\"\nsigning_secret_file = \"{whsec}\"\nmin_severity = \"critical\"\n\
             [[alerts.receiver]]\nname = \"am\"\ntype = \"alertmanager\"\nurls = [\"http://127.0.0.1:9093\"]\n",
            dir = dir.path().display(),
            url = url.display(),
            whsec = whsec.display()
        );
        let settings = linetokd::config::Settings::from_toml(
            &text,
            std::path::Path::new("test.toml"),
            &std::collections::HashMap::new(),
        )
        .unwrap();
        let valid = settings.validate().unwrap();
        let n = linetokd::app::notifier_settings(&valid, TokenSource::none());
        assert_eq!(n.route.group_wait, Duration::seconds(10));
        assert_eq!(n.route.repeat_critical, Duration::hours(1));
        assert_eq!(n.receivers.len(), 2);
        assert_eq!(n.receivers[0].min_severity, Severity::Critical);
        let ReceiverKind::Webhook {
            url: u,
            format,
            secret,
        } = &n.receivers[0].kind
        else {
            panic!("{:?}", n.receivers[0]);
        };
        assert_eq!(u.0.as_str(), "https://hooks.example/T0/TOPSECRET");
        assert_eq!(*format, WebhookFormat::Linetokd);
        assert_eq!(secret.as_ref().map(Secret::expose), Some(WHSEC));
        assert_eq!(n.receivers[1].repeat(), Some(Duration::minutes(1)));
        for shown in [format!("{n:?}"), settings.render_resolved()] {
            assert!(!shown.contains("TOPSECRET"), "{shown}");
            assert!(!shown.contains("MfKQ9r8"), "{shown}");
        }
        assert!(settings.render_resolved().contains("url_file = "));
    }
}

/// The real daemon against the sandbox: LINE down, so the groups have no
/// live token; the webhook receiver hears of it after group_wait, signed,
/// and of the resolve once LINE is back. Nothing secret reaches it.
mod daemon {
    use serde_json::json;

    use super::fake::Fake;
    use crate::e2e::harness::{GROUPS, Lab, write_private};
    use crate::observability::{DEBUG, STEADY};

    const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[tokio::test]
    async fn a_daemon_sends_its_alerts_to_a_webhook_and_their_resolve() {
        let lab = Lab::start(STEADY, "info").await;
        lab.set_faults(json!({"down": true})).await;
        let mut fake = Fake::start(|_| (200, vec![])).await;
        let url_file = lab.dir().join("webhook-url");
        write_private(&url_file, &format!("{}/hook\n", fake.base_url));
        let whsec_file = lab.dir().join("whsec");
        write_private(&whsec_file, WHSEC);
        let mut groups = String::new();
        for group in GROUPS {
            groups.push_str(&format!("\n  [[channel.group]]\n  name = \"{group}\"\n"));
        }
        let config = format!(
            "{}\n[alerts]\ngroup_wait = \"1s\"\ngroup_interval = \"1s\"\n[[alerts.receiver]]\nname = \"ops\"\n\
             type = \"webhook\"\nurl_file = \"{}\"\nsigning_secret_file = \"{}\"\n",
            lab.config_text(STEADY, &groups),
            url_file.display(),
            whsec_file.display()
        );
        lab.replace_config(&config);
        let mut daemon = lab.run("daemon", DEBUG, &[]);

        fake.arrival().await;
        let first = fake.got()[0].clone();
        let v = first.json();
        assert_eq!(v["status"], "firing", "{v}");
        assert_eq!(v["receiver"], "ops");
        let names: Vec<String> = v["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                a["labels"]["alertname"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        // LINE down: the key-ID listing fails first (reconcile_failing);
        // groups without a token may add no_live_token.
        assert!(
            names
                .iter()
                .any(|n| n == "reconcile_failing" || n == "no_live_token"),
            "{v}"
        );
        assert_eq!(
            v["alerts"][0]["labels"]["channel"],
            crate::e2e::harness::CHANNEL
        );
        let key = linetokd::alerting::sign::decode_secret(WHSEC).unwrap();
        let ts: i64 = first.header("webhook-timestamp").parse().unwrap();
        assert_eq!(
            first.header("webhook-signature"),
            linetokd::alerting::sign::sign(
                &key,
                &first.header("webhook-id"),
                ts,
                first.body.as_bytes()
            )
        );

        // LINE is back: tokens are issued, the alerts resolve, and the
        // receiver hears of it.
        lab.set_faults(json!({})).await;
        loop {
            fake.arrival().await;
            let got = fake.got();
            let last = got.last().unwrap().json();
            if last["status"] == "resolved" {
                break;
            }
        }
        daemon
            .wait_for(0, "a delivery logged", |l| {
                l.is("alert notification delivered")
            })
            .await;
        daemon.signal("TERM");
        daemon.exit_ok().await;
        let tokens = lab.tokens().await;
        assert!(!tokens.is_empty());
        for got in fake.got() {
            for t in &tokens {
                assert!(
                    !got.body.contains(&t.access_token),
                    "a token reached the receiver"
                );
            }
        }
        lab.assert_nothing_secret_printed(&[&daemon]).await;
        assert!(
            !daemon.all_text().contains(&fake.base_url),
            "the webhook URL was logged"
        );
    }
}

/// `linetokd alerts test --receiver NAME`: a synthetic alert to one
/// receiver, its answer printed, never its URL.
mod command {
    use super::fake::Fake;
    use crate::e2e::harness::write_private;

    async fn alerts_test(config: &std::path::Path, receiver: &str) -> std::process::Output {
        let args = [
            "alerts".to_owned(),
            "test".to_owned(),
            "--receiver".to_owned(),
            receiver.to_owned(),
            "--config".to_owned(),
            config.display().to_string(),
        ];
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_linetokd"))
                .args(&args)
                .env_remove("RUST_LOG")
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_test_alert_reaches_the_receiver_and_its_answer_is_printed() {
        let fake = Fake::start(|n| (if n == 0 { 200 } else { 503 }, vec![])).await;
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("url");
        write_private(&url, &format!("{}/hook/SECRETPATH", fake.base_url));
        let config = dir.path().join("linetokd.toml");
        std::fs::write(
            &config,
            format!(
                "[daemon]\nstate_dir = \"{}\"\n[[alerts.receiver]]\nname = \"ops\"\n\
                 type = \"webhook\"\nurl_file = \"{}\"\nmin_severity = \"critical\"\n",
                dir.path().display(),
                url.display()
            ),
        )
        .unwrap();

        let out = alerts_test(&config, "ops").await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stdout}{stderr}");
        assert_eq!(stdout, "ops (request 1): delivered\n");
        let got = fake.got();
        assert_eq!(got.len(), 1);
        let v = got[0].json();
        assert_eq!(v["alerts"][0]["labels"]["alertname"], "linetokd_test");
        assert_eq!(v["alerts"][0]["labels"]["severity"], "critical");

        // The receiver now answers 503: exit 1, said without the URL.
        let out = alerts_test(&config, "ops").await;
        assert_eq!(out.status.code(), Some(1));
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            all.contains("not delivered: the receiver answered 503"),
            "{all}"
        );
        assert!(
            !all.contains("SECRETPATH") && !all.contains(&fake.base_url),
            "{all}"
        );

        // An unknown receiver is a usage error naming the known ones.
        let out = alerts_test(&config, "pager").await;
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("known: ops"));
    }
}
