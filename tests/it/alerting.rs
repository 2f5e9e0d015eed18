//! Alert notifications: the store's per-receiver state (restarts neither
//! re-page nor forget a resolve), the notifier against fake receivers on
//! loopback (Alertmanager v4 shape, Standard Webhooks signatures, retries
//! with a stable `webhook-id`), on a manual clock.

use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use linetokd::domain::{AccessToken, ChannelId, GroupName, KeyId};
use linetokd::store::{
    AlertSpec, ChannelSpec, IssuedToken, NotifyItem, NotifyKind, Store, fingerprint,
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
            }],
        )
        .unwrap();
    store
}

fn no_live_token() -> AlertSpec {
    AlertSpec {
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

    #[test]
    fn a_notification_keeps_its_id_across_failures_and_a_restart_and_ends_sent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("linetokd.db");
        let store = synced(&path);
        let mut changed = store.subscribe_alerts();
        store.sync_alerts(t0(), &ch(), &[no_live_token()]).unwrap();
        assert!(
            changed.has_changed().unwrap(),
            "raising must wake the notifier"
        );
        changed.mark_unchanged();
        let fp = fingerprint(&ch(), Some(&GroupName::new("backend")), "no_live_token");
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
        drop(store);

        // A restart: the notification is still in flight, with its id.
        let store = Store::open(&path).unwrap();
        let states = store.notification_states().unwrap();
        assert_eq!(states.len(), 1);
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
        store.sync_alerts(resolved_at, &ch(), &[]).unwrap();
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
        store.sync_alerts(again, &ch(), &[no_live_token()]).unwrap();
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
        assert_eq!((state.sent_count, state.last_sent_at), (0, Some(again)));
    }

    #[test]
    fn state_of_long_resolved_alerts_is_pruned_but_not_what_is_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let store = synced(&dir.path().join("linetokd.db"));
        store.sync_alerts(t0(), &ch(), &[no_live_token()]).unwrap();
        let fp = fingerprint(&ch(), Some(&GroupName::new("backend")), "no_live_token");
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
        store.sync_alerts(resolved, &ch(), &[]).unwrap();
        assert_eq!(store.prune_notifications(resolved).unwrap(), 0);
        let later = resolved + Duration::days(2);
        assert_eq!(store.prune_notifications(later).unwrap(), 1);
        let left = store.notification_states().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].receiver, "chat");
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
