//! The LINE Login module (issue 13) against the in-process sandbox on a
//! manual clock: the module's own passes (`Login::pass`, `start_up`) and
//! its HTTP routes (`http::app`, oneshot), judged at the sandbox and in an
//! encrypted store.
//!
//! Depends on `support` (the sandbox lab) and the crate's public API.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{DateTime, Duration, Utc};
use linetokd::clock::{Clock as _, ManualClock};
use linetokd::config::{LoginChannelConfig, LoginConfig, LoginTimings};
use linetokd::delivery::TokenBook;
use linetokd::domain::{ChannelId, ChannelSecret};
use linetokd::http::{ApiKeys, HttpState};
use linetokd::line::RequestObserver;
use linetokd::line::login::{LoginClient, LoginEndpoint};
use linetokd::login::{Import, Login, LoginApiError};
use linetokd::metrics::Metrics;
use linetokd::sandbox::{LoginAppType, LoginChannelConfig as SandboxLogin};
use linetokd::secret::Secret;
use linetokd::store::crypt::{KeyMaterial, Keyring};
use linetokd::store::{Durability, EventKind, GrantState, Store, StoreOptions};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::support::{self, SandboxLab};

/// A native-app Login channel that rotates refresh tokens.
const LOGIN: &str = "1660000000";
const LOGIN_SECRET: &str = "login-SECRET-never-shown";
/// A second Login channel, whose tokens must not import into the first.
const OTHER: &str = "1660000001";
const ADMIN: &str = "admin-key-0123456789";
const READER: &str = "reader-key-0123456789";

/// Every call to LINE the module made, with the manual clock's time.
type Calls = Arc<Mutex<Vec<(LoginEndpoint, DateTime<Utc>)>>>;

struct Rig {
    lab: SandboxLab,
    login: Arc<Login>,
    store: Store,
    metrics: Arc<Metrics>,
    /// Every call the module made, with the manual clock's time.
    calls: Calls,
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
    keyring: Arc<Keyring>,
}

fn config(rate: u32) -> LoginConfig {
    LoginConfig {
        channels: vec![LoginChannelConfig {
            id: ChannelId::new(LOGIN),
            name: "shop-login".into(),
            secret: None,
        }],
        timings: LoginTimings {
            refresh_before: StdDuration::from_secs(3 * 86_400),
            horizon: StdDuration::from_secs(90 * 86_400),
            horizon_margin: StdDuration::from_secs(12 * 3600),
            reauth_notify_before: StdDuration::from_secs(7 * 86_400),
            max_requests_per_second: rate,
        },
        admin_api_key: Secret::new(ADMIN),
        reader_api_key: Secret::new(READER),
    }
}

async fn rig(rate: u32) -> Rig {
    let lab = support::sandbox_lab().await;
    for (id, rotate) in [(LOGIN, true), (OTHER, false)] {
        lab.sandbox
            .register_login_channel(SandboxLogin {
                id: ChannelId::new(id),
                secret: ChannelSecret::new(LOGIN_SECRET),
                app_type: LoginAppType::Native,
                rotate_refresh_tokens: rotate,
            })
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("db.key");
    linetokd::keygen::write_db_key(&key).unwrap();
    let material = KeyMaterial::from_file_bytes(&std::fs::read(&key).unwrap()).unwrap();
    let keyring = Arc::new(Keyring::new([(1, material)], 1).unwrap());
    let db = dir.path().join("linetokd.db");
    let store = open(&db, &keyring);
    let (login, metrics, calls) = module(&lab, &store, rate);
    Rig {
        lab,
        login,
        store,
        metrics,
        calls,
        _dir: dir,
        db,
        keyring,
    }
}

fn open(db: &std::path::Path, keyring: &Arc<Keyring>) -> Store {
    Store::open_with(
        db,
        StoreOptions {
            durability: Durability::Unsynced,
            keyring: Some(Arc::clone(keyring)),
            keep_plaintext: false,
            shared: false,
        },
    )
    .unwrap()
}

fn module(lab: &SandboxLab, store: &Store, rate: u32) -> (Arc<Login>, Arc<Metrics>, Calls) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&calls);
    let clock = lab.clock.clone();
    let observer: RequestObserver<LoginEndpoint> = Arc::new(move |endpoint, _, _| {
        seen.lock().unwrap().push((endpoint, clock.now()));
    });
    let metrics = Metrics::shared();
    let login = Login::new(
        &config(rate),
        store.clone(),
        LoginClient::new(lab.client.clone(), Some(observer)),
        Arc::new(lab.clock.clone()),
        Arc::clone(&metrics),
        7,
    );
    (login, metrics, calls)
}

impl Rig {
    fn channel(&self) -> ChannelId {
        ChannelId::new(LOGIN)
    }

    fn now(&self) -> DateTime<Utc> {
        self.lab.clock.now()
    }

    fn refreshes(&self) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(e, _)| *e == LoginEndpoint::Refresh)
            .count()
    }

    /// A user logs in at the sandbox on `channel`; returns the token answer.
    fn sandbox_login(&self, channel: &str, subject: &str) -> Value {
        let grant = self
            .lab
            .sandbox
            .login(&ChannelId::new(channel), subject, "profile openid")
            .unwrap();
        json!({
            "access_token": grant.access_token,
            "refresh_token": grant.refresh_token,
            "expires_in": grant.expires_in,
        })
    }

    fn http(&self) -> axum::Router {
        linetokd::http::app(HttpState {
            tokens: TokenBook::new(),
            keys: Arc::new(std::sync::RwLock::new(ApiKeys::new())),
            clock: Arc::new(self.lab.clock.clone()),
            metrics: Some(Arc::clone(&self.metrics)),
            readiness: None,
            long_lived: None,
            stateless: None,
            login: Some(Arc::clone(&self.login)),
        })
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        let response = driven(&self.lab.clock, self.http().oneshot(request))
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, json)
    }

    /// `subject` logs in at the sandbox, and the login is posted to the
    /// import API with `extra` fields added to the body: the answer.
    async fn post_login(&self, subject: &str, extra: Value) -> (StatusCode, Value) {
        let t = self.sandbox_login(LOGIN, subject);
        let mut body = json!({
            "subject": subject,
            "access_token": t["access_token"],
            "refresh_token": t["refresh_token"],
            "expires_in": t["expires_in"],
        });
        if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
            body.extend(extra);
        }
        self.call(
            "POST",
            &format!("/v1/login/{LOGIN}/grants"),
            ADMIN,
            Some(body),
        )
        .await
    }

    /// Imports `subject`'s sandbox login through the API.
    async fn import(&self, subject: &str) -> Value {
        let (status, answer) = self
            .post_login(subject, json!({"login_at": self.now().to_rfc3339()}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        answer
    }

    /// Moves the clock to `at` and runs a pass.
    async fn pass_at(&self, at: DateTime<Utc>) {
        self.lab.clock.set(at);
        driven(&self.lab.clock, self.login.pass()).await.unwrap();
    }

    fn events(&self, kind: EventKind) -> Vec<String> {
        self.store
            .events_of_channel(&self.channel(), 1000)
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.detail)
            .collect()
    }
}

/// Runs `work` to its end, moving the manual clock to the next deadline
/// whenever something sleeps on it (the module waiting for its channel's
/// bucket): nothing waits for wall time.
async fn driven<T>(clock: &ManualClock, work: impl std::future::Future<Output = T>) -> T {
    tokio::pin!(work);
    loop {
        tokio::select! {
            biased;
            out = &mut work => return out,
            () = tokio::task::yield_now() => {
                if clock.sleepers() > 0 {
                    let at = clock.next_deadline().await;
                    clock.set(at);
                }
            }
        }
    }
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

#[tokio::test]
async fn a_grant_refreshes_at_expiry_minus_refresh_before_until_its_horizon() {
    let rig = rig(5).await;
    let start = rig.now();
    let answer = rig.import("Ualice").await;
    assert_eq!(answer["horizon_estimated"], false);
    assert_eq!(time(&answer["horizon_at"]), start + Duration::days(90));
    let expires = time(&answer["access_expires_at"]);
    let grant = rig
        .store
        .login_grant(&rig.channel(), "Ualice")
        .unwrap()
        .unwrap();
    // Due 3 days before expiry, less at most an hour of jitter.
    let due = grant.next_refresh_at;
    assert!(
        due <= expires - Duration::days(3)
            && due > expires - Duration::days(3) - Duration::hours(1)
    );
    rig.pass_at(due - Duration::seconds(1)).await;
    assert_eq!(rig.refreshes(), 0, "nothing before the due time");
    rig.pass_at(due).await;
    assert_eq!(rig.refreshes(), 1);
    // Walk to the horizon: every refresh before horizon − 12h, none after.
    let horizon = start + Duration::days(90);
    let mut last = due;
    for _ in 0..10 {
        let next = rig
            .store
            .login_grant(&rig.channel(), "Ualice")
            .unwrap()
            .unwrap();
        if next.state != GrantState::Active || next.next_refresh_at >= horizon {
            break;
        }
        last = next.next_refresh_at;
        rig.pass_at(last).await;
    }
    assert!(last <= horizon - Duration::hours(12), "{last}");
    assert!(
        last > horizon - Duration::days(2),
        "the last refresh is close to the horizon: {last}"
    );
    let refreshes = rig.refreshes();
    assert_eq!(refreshes, 4, "27d, 54d, 81d and before the horizon");
    // At the horizon: needs_login, 410, no further call.
    rig.pass_at(horizon).await;
    let grant = rig
        .store
        .login_grant(&rig.channel(), "Ualice")
        .unwrap()
        .unwrap();
    assert_eq!(grant.state, GrantState::NeedsLogin);
    let (status, body) = rig
        .call(
            "GET",
            &format!("/v1/login/{LOGIN}/grants/Ualice/token"),
            READER,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(body["state"], "needs_login");
    rig.pass_at(horizon + Duration::days(30)).await;
    assert_eq!(rig.refreshes(), refreshes);
}

#[tokio::test]
async fn rotation_stores_the_new_refresh_token_before_the_token_is_served() {
    let rig = rig(5).await;
    rig.import("Ubob").await;
    let due = rig
        .store
        .login_grant(&rig.channel(), "Ubob")
        .unwrap()
        .unwrap()
        .next_refresh_at;
    rig.pass_at(due).await;
    let at_line = rig.lab.sandbox.login_grants(&rig.channel());
    let line_refresh = &at_line
        .iter()
        .find(|g| g.subject == "Ubob")
        .unwrap()
        .refresh_token;
    let (_, stored) = rig
        .store
        .login_grant_tokens(&rig.channel(), "Ubob")
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.refresh.expose(),
        line_refresh,
        "the rotated refresh token is stored"
    );
    let (status, body) = rig
        .call(
            "GET",
            &format!("/v1/login/{LOGIN}/grants/Ubob/token"),
            READER,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["access_token"], stored.access.expose());
    // The old refresh token is dead at LINE: only the stored one works, so
    // the next refresh succeeds.
    let due = rig
        .store
        .login_grant(&rig.channel(), "Ubob")
        .unwrap()
        .unwrap()
        .next_refresh_at;
    rig.pass_at(due).await;
    let grant = rig
        .store
        .login_grant(&rig.channel(), "Ubob")
        .unwrap()
        .unwrap();
    assert_eq!(grant.state, GrantState::Active);
    assert_eq!(rig.refreshes(), 2);
}

#[tokio::test]
async fn invalid_grant_ends_the_grant_with_no_further_calls_and_one_notice() {
    let rig = rig(5).await;
    rig.import("Ucarol").await;
    // The user revokes the whole grant at LINE (the SDK's logout form).
    let (_, tokens) = rig
        .store
        .login_grant_tokens(&rig.channel(), "Ucarol")
        .unwrap()
        .unwrap();
    LoginClient::new(rig.lab.client.clone(), None)
        .revoke_refresh_token(&rig.channel(), None, &tokens.refresh)
        .await
        .unwrap();
    let due = rig
        .store
        .login_grant(&rig.channel(), "Ucarol")
        .unwrap()
        .unwrap()
        .next_refresh_at;
    rig.pass_at(due).await;
    assert_eq!(rig.refreshes(), 1);
    let grant = rig
        .store
        .login_grant(&rig.channel(), "Ucarol")
        .unwrap()
        .unwrap();
    assert_eq!(grant.state, GrantState::NeedsLogin);
    for days in [1, 10, 100] {
        rig.pass_at(due + Duration::days(days)).await;
    }
    assert_eq!(rig.refreshes(), 1, "zero calls after invalid_grant");
    let firing = rig.store.firing_alerts().unwrap();
    let required: Vec<_> = firing
        .iter()
        .filter(|a| a.alertname == "login_reauth_required")
        .collect();
    assert_eq!(required.len(), 1);
    assert!(
        !required[0].summary.contains("Ucarol"),
        "alerts name the hash only"
    );
}

#[tokio::test]
async fn the_reauth_notice_fires_once_and_not_again_after_a_restart() {
    let rig = rig(5).await;
    // Logged in 80 days ago: the notice window (horizon − 7d) opened 3
    // days ago... no: it opens at day 83. Import with login_at 80 days ago.
    let t = rig.sandbox_login(LOGIN, "Udave");
    let login_at = rig.now() - Duration::days(80);
    let body = json!({
        "subject": "Udave", "access_token": t["access_token"],
        "refresh_token": t["refresh_token"], "expires_in": t["expires_in"],
        "login_at": login_at.timestamp(),
    });
    let (status, _) = rig
        .call(
            "POST",
            &format!("/v1/login/{LOGIN}/grants"),
            ADMIN,
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    rig.pass_at(rig.now()).await;
    assert!(rig.events(EventKind::LoginReauthDue).is_empty());
    rig.pass_at(login_at + Duration::days(83)).await;
    assert_eq!(rig.events(EventKind::LoginReauthDue).len(), 1);
    rig.pass_at(login_at + Duration::days(84)).await;
    assert_eq!(rig.events(EventKind::LoginReauthDue).len(), 1);
    // A restart: a new module on the same store.
    let (again, _, _) = module(&rig.lab, &rig.store, 5);
    driven(&rig.lab.clock, again.start_up()).await.unwrap();
    driven(&rig.lab.clock, again.pass()).await.unwrap();
    assert_eq!(
        rig.events(EventKind::LoginReauthDue).len(),
        1,
        "not repeated"
    );
    let alerts = rig.store.firing_alerts().unwrap();
    assert_eq!(
        alerts
            .iter()
            .filter(|a| a.alertname == "login_reauth_due")
            .count(),
        1
    );
}

#[tokio::test]
async fn a_refresh_lost_in_a_crash_is_reported_then_needs_login() {
    let rig = rig(5).await;
    rig.import("Uerin").await;
    // What a crash between LINE's answer and the commit leaves: an open
    // intent, and LINE having rotated the refresh token unseen.
    let (_, tokens) = rig
        .store
        .login_grant_tokens(&rig.channel(), "Uerin")
        .unwrap()
        .unwrap();
    rig.store
        .open_refresh_intent(rig.now(), &rig.channel(), "Uerin")
        .unwrap();
    LoginClient::new(rig.lab.client.clone(), None)
        .refresh(&rig.channel(), None, &tokens.refresh)
        .await
        .unwrap();
    let lost = driven(&rig.lab.clock, rig.login.start_up()).await.unwrap();
    assert_eq!(lost, 1);
    let reported = rig.events(EventKind::LoginLostRefresh);
    assert_eq!(reported.len(), 1, "never silent");
    assert!(!reported[0].contains("Uerin"));
    rig.pass_at(rig.now()).await;
    let grant = rig
        .store
        .login_grant(&rig.channel(), "Uerin")
        .unwrap()
        .unwrap();
    assert_eq!(grant.state, GrantState::NeedsLogin);
    let why = rig.events(EventKind::LoginNeedsLogin);
    assert!(why[0].contains("lost"), "{why:?}");
}

#[tokio::test]
async fn imports_are_checked_field_by_field() {
    let rig = rig(5).await;
    let other = rig.sandbox_login(OTHER, "Ufay");
    let body = json!({
        "subject": "Ufay", "access_token": other["access_token"],
        "refresh_token": other["refresh_token"], "expires_in": 2_592_000,
    });
    let (status, answer) = rig
        .call(
            "POST",
            &format!("/v1/login/{LOGIN}/grants"),
            ADMIN,
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer["field"], "access_token");
    assert!(
        !answer
            .to_string()
            .contains(other["access_token"].as_str().unwrap())
    );
    let mut zero = body.clone();
    zero["expires_in"] = json!(0);
    let (status, answer) = rig
        .call(
            "POST",
            &format!("/v1/login/{LOGIN}/grants"),
            ADMIN,
            Some(zero),
        )
        .await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("expires_in"))
    );
    // The reader key cannot import; the admin key cannot read.
    let (status, _) = rig
        .call(
            "POST",
            &format!("/v1/login/{LOGIN}/grants"),
            READER,
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Without login_at the horizon is estimated.
    let (status, answer) = rig.post_login("Ugus", json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(answer["horizon_estimated"], true);
    let (status, _) = rig
        .call(
            "GET",
            &format!("/v1/login/{LOGIN}/grants/Ugus/token"),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Delete revokes at LINE and removes the grant.
    let (status, _) = rig
        .call(
            "DELETE",
            &format!("/v1/login/{LOGIN}/grants/Ugus"),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(
        rig.store
            .login_grant(&rig.channel(), "Ugus")
            .unwrap()
            .is_none()
    );
    let at_line = rig.lab.sandbox.login_grants(&rig.channel());
    let g = at_line.iter().find(|g| g.subject == "Ugus").unwrap();
    assert_ne!(format!("{:?}", g.state), "Active");
}

/// How many grants the bulk import test imports (the issue's figure).
const GRANTS: usize = 10_000;

/// A bulk import of 10,000 grants keeps to the channel's bucket on the
/// clock: at most 5 verify calls in any one-second window. The manual
/// clock moves whenever the importer waits, so it takes seconds of real
/// time; `login_import.rs` checks the same through the CLI and a real
/// daemon at the sandbox.
#[tokio::test]
async fn a_bulk_import_keeps_to_the_rate_limit() {
    let rig = Arc::new(rig(5).await);
    let logins: Vec<(String, Value)> = (0..GRANTS)
        .map(|i| {
            let s = format!("Ubulk{i}");
            let t = rig.sandbox_login(LOGIN, &s);
            (s, t)
        })
        .collect();
    let done = Arc::new(AtomicUsize::new(0));
    let worker = {
        let (rig, done) = (Arc::clone(&rig), Arc::clone(&done));
        tokio::spawn(async move {
            for (s, t) in logins {
                let import = Import {
                    subject: s,
                    access_token: t["access_token"].as_str().unwrap().to_owned(),
                    refresh_token: t["refresh_token"].as_str().unwrap().to_owned(),
                    expires_in: t["expires_in"].as_i64().unwrap(),
                    login_at: None,
                };
                let r: Result<_, LoginApiError> = rig.login.import(&rig.channel(), import).await;
                r.unwrap();
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // Drive the manual clock whenever the importer waits for its bucket.
    while !worker.is_finished() {
        if rig.lab.clock.sleepers() > 0 {
            let at = rig.lab.clock.next_deadline().await;
            rig.lab.clock.set(at);
        }
        tokio::task::yield_now().await;
    }
    worker.await.unwrap();
    assert_eq!(done.load(Ordering::SeqCst), GRANTS);
    let calls = rig.calls.lock().unwrap().clone();
    let verifies: Vec<DateTime<Utc>> = calls
        .iter()
        .filter(|(e, _)| *e == LoginEndpoint::Verify)
        .map(|(_, at)| *at)
        .collect();
    assert_eq!(verifies.len(), GRANTS);
    // In any one-second window: at most 5.
    for (i, a) in verifies.iter().enumerate() {
        let within = verifies[i..]
            .iter()
            .take_while(|b| **b < *a + Duration::seconds(1))
            .count();
        assert!(within <= 5, "{within} calls within a second of call {i}");
    }
    // The bucket refills each second: GRANTS calls at 5 a second span at
    // least GRANTS / 5 - 1 seconds on the clock LINE sees.
    let span = *verifies.last().unwrap() - verifies[0];
    let least = Duration::seconds(i64::try_from(GRANTS / 5).unwrap() - 1);
    assert!(span >= least, "{GRANTS} calls at 5/s took {span}");
}

#[tokio::test]
async fn no_user_token_in_the_database_file_events_alerts_or_metrics() {
    let rig = rig(5).await;
    rig.import("Uhank").await;
    let due = rig
        .store
        .login_grant(&rig.channel(), "Uhank")
        .unwrap()
        .unwrap()
        .next_refresh_at;
    rig.pass_at(due).await;
    let mut values = Vec::new();
    for g in rig.lab.sandbox.login_grants(&rig.channel()) {
        values.push(g.refresh_token.clone());
        values.extend(g.retired_refresh_tokens.clone());
        values.extend(g.access_tokens.iter().map(|a| a.access_token.clone()));
    }
    assert!(values.len() >= 4);
    let events = format!("{:?}", rig.store.recent_events(1000).unwrap());
    let alerts = format!("{:?}", rig.store.firing_alerts().unwrap());
    let metrics = rig.metrics.render();
    let (db, keyring) = (rig.db.clone(), Arc::clone(&rig.keyring));
    let Rig {
        _dir: dir,
        lab,
        login,
        store,
        calls,
        ..
    } = rig;
    // Every holder of the store goes, so it can be reopened.
    drop((login, store, lab, calls));
    // Reopen and checkpoint so the WAL is folded into the file.
    let reopened = open(&db, &keyring);
    drop(reopened);
    let mut bytes = std::fs::read(&db).unwrap();
    for companion in ["-wal", "-shm"] {
        if let Ok(more) = std::fs::read(format!("{}{companion}", db.display())) {
            bytes.extend(more);
        }
    }
    for v in &values {
        let needle = v.as_bytes();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "a user token is in the database file"
        );
        for text in [&events, &alerts, &metrics] {
            assert!(!text.contains(v.as_str()));
        }
    }
    assert!(
        metrics.contains("linetokd_login_refresh_total"),
        "{metrics}"
    );
    assert!(metrics.contains("linetokd_login_import_total"));
    drop(dir);
}

/// Migration 10 on a schema-9 database: earlier rows kept, the grant
/// tables start empty, and a store without keys refuses to write a grant.
#[test]
fn a_schema_9_database_gains_the_login_tables() {
    use linetokd::store::migrate::{self, MIGRATIONS};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("linetokd.db");
    {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        migrate::apply(&mut conn, &MIGRATIONS[..9]).unwrap();
        conn.execute_batch("INSERT INTO channels (id, name, added_at) VALUES ('1000', 'shop', 1);")
            .unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.migrated().from, 9);
    assert_eq!(store.migrated().to, migrate::latest_version());
    assert!(store.login_grants().unwrap().is_empty());
    assert!(store.open_refresh_intents().unwrap().is_empty());
    let grant = linetokd::store::NewGrant {
        channel: ChannelId::new(LOGIN),
        subject: "Uzed".into(),
        access: linetokd::domain::AccessToken::new("a"),
        refresh: linetokd::domain::RefreshToken::new("r"),
        access_expires_at: support::start_time(),
        login_at: None,
        horizon_at: support::start_time(),
        horizon_estimated: true,
        scope: String::new(),
        next_refresh_at: support::start_time(),
    };
    let refused = store
        .import_login_grant(support::start_time(), &grant)
        .unwrap_err();
    assert!(refused.to_string().contains("[encryption]"), "{refused}");
}

/// A keyring of the given key files, `active` among them.
fn keyring_of(dir: &std::path::Path, ids: &[u32], active: u32) -> Arc<Keyring> {
    let keys = ids.iter().map(|id| {
        let file = dir.join(format!("db-{id}.key"));
        if !file.exists() {
            linetokd::keygen::write_db_key(&file).unwrap();
        }
        let material = KeyMaterial::from_file_bytes(&std::fs::read(&file).unwrap()).unwrap();
        (*id, material)
    });
    Arc::new(Keyring::new(keys, active).unwrap())
}

/// Grants are encrypted under key 1 of `dir`: moves the rig's key file
/// to where [`keyring_of`] finds key 1, imports `subjects`, and closes
/// everything that holds the store. Returns the database path.
async fn grants_under_key_1(dir: &std::path::Path, subjects: &[&str]) -> std::path::PathBuf {
    let rig = rig(5).await;
    for s in subjects {
        rig.import(s).await;
    }
    let db = dir.join("linetokd.db");
    let Rig {
        _dir: rig_dir,
        lab,
        login,
        store,
        calls,
        db: rig_db,
        ..
    } = rig;
    drop((login, store, lab, calls));
    std::fs::copy(rig_dir.path().join("db.key"), dir.join("db-1.key")).unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let from = format!("{}{suffix}", rig_db.display());
        if std::path::Path::new(&from).exists() {
            std::fs::copy(&from, format!("{}{suffix}", db.display())).unwrap();
        }
    }
    db
}

#[tokio::test]
async fn after_a_key_change_rekey_leaves_the_old_key_unused_by_grants() {
    let dir = tempfile::tempdir().unwrap();
    let subjects = ["Urekey0", "Urekey1", "Urekey2"];
    let db = grants_under_key_1(dir.path(), &subjects).await;
    // Key 2 becomes active; key 1 still decrypts.
    let both = keyring_of(dir.path(), &[1, 2], 2);
    let store = open(&db, &both);
    let counts = store.value_counts().unwrap();
    assert_eq!(
        counts,
        vec![linetokd::store::ValueCount {
            key: Some(1),
            rows: 3
        }],
        "the grants are counted under their key"
    );
    let mut steps = 0;
    loop {
        let step = store.rekey_step().unwrap();
        steps += 1;
        if step.remaining == 0 {
            break;
        }
        assert!(steps < 10, "rekey makes progress");
    }
    assert_eq!(
        store.value_counts().unwrap(),
        vec![linetokd::store::ValueCount {
            key: Some(2),
            rows: 3
        }]
    );
    let before: Vec<_> = subjects
        .iter()
        .map(|s| {
            let (_, t) = store
                .login_grant_tokens(&ChannelId::new(LOGIN), s)
                .unwrap()
                .unwrap();
            (t.access.expose().to_owned(), t.refresh.expose().to_owned())
        })
        .collect();
    drop(store);
    // Key 1 removed: the store opens (no row needs it) and both values of
    // every grant open under key 2 alone.
    let only_2 = keyring_of(dir.path(), &[2], 2);
    let store = open(&db, &only_2);
    for (s, (access, refresh)) in subjects.iter().zip(before) {
        let (_, t) = store
            .login_grant_tokens(&ChannelId::new(LOGIN), s)
            .unwrap()
            .unwrap();
        assert_eq!(t.access.expose(), access);
        assert_eq!(t.refresh.expose(), refresh);
    }
}

#[tokio::test]
async fn a_missing_key_with_grants_present_refuses_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = grants_under_key_1(dir.path(), &["Umiss0", "Umiss1"]).await;
    let only_2 = keyring_of(dir.path(), &[2], 2);
    let refused = Store::open_with(
        &db,
        StoreOptions {
            durability: Durability::Unsynced,
            keyring: Some(only_2),
            keep_plaintext: false,
            shared: false,
        },
    )
    .unwrap_err();
    let text = refused.to_string();
    assert!(
        text.contains("key 1: 2 rows (2 login grants)"),
        "names the key and its grants: {text}"
    );
    assert!(refused.needs_config_change(), "exit 2");
    // Without [encryption] at all: refused too, naming them.
    let refused = Store::open_with(
        &db,
        StoreOptions {
            durability: Durability::Unsynced,
            keyring: None,
            keep_plaintext: false,
            shared: false,
        },
    )
    .unwrap_err();
    assert!(refused.to_string().contains("2 login grants"), "{refused}");
}

#[tokio::test]
async fn db_decrypt_refuses_while_grants_exist_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = grants_under_key_1(dir.path(), &["Udecrypt"]).await;
    let ring = keyring_of(dir.path(), &[1], 1);
    let store = Store::open_with(
        &db,
        StoreOptions {
            durability: Durability::Unsynced,
            keyring: Some(ring),
            keep_plaintext: true,
            shared: false,
        },
    )
    .unwrap();
    let refused = store.decrypt_all().unwrap_err().to_string();
    assert!(refused.contains("1 LINE Login grant"), "{refused}");
    assert!(refused.contains("DELETE"), "says what to do: {refused}");
    assert_eq!(
        store.value_counts().unwrap(),
        vec![linetokd::store::ValueCount {
            key: Some(1),
            rows: 1
        }],
        "nothing was decrypted"
    );
}

impl Rig {
    fn calls_to(&self, endpoint: LoginEndpoint) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(e, _)| *e == endpoint)
            .count()
    }

    fn tokens(&self, subject: &str) -> linetokd::store::GrantTokens {
        self.store
            .login_grant_tokens(&self.channel(), subject)
            .unwrap()
            .unwrap()
            .1
    }

    /// A client with no observer: what a user or a test does at LINE.
    fn outsider(&self) -> LoginClient {
        LoginClient::new(self.lab.client.clone(), None)
    }

    async fn report_refused(&self, subject: &str) -> (StatusCode, Value) {
        self.call(
            "POST",
            &format!("/v1/login/{LOGIN}/grants/{subject}/token/refused"),
            READER,
            None,
        )
        .await
    }
}

#[tokio::test]
async fn a_refused_token_that_line_still_accepts_is_served_again_after_one_verify() {
    let rig = rig(5).await;
    rig.import("Ujudy").await;
    let before = rig.tokens("Ujudy").access.expose().to_owned();
    let verifies = rig.calls_to(LoginEndpoint::Verify);
    let (status, answer) = rig.report_refused("Ujudy").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["access_token"], before.as_str(), "the same token");
    assert_eq!(rig.calls_to(LoginEndpoint::Verify), verifies + 1);
    assert_eq!(rig.refreshes(), 0, "no refresh when LINE accepts it");
    // The admin key does not read tokens.
    let (status, _) = rig
        .call(
            "POST",
            &format!("/v1/login/{LOGIN}/grants/Ujudy/token/refused"),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn concurrent_reports_of_a_revoked_token_cause_one_verify_and_one_refresh() {
    let rig = rig(5).await;
    rig.import("Ukate").await;
    let old = rig.tokens("Ukate").access;
    // The user logged out of this device: LINE revokes the access token,
    // while the refresh token lives and the token has days left.
    rig.outsider()
        .revoke(&rig.channel(), None, &old)
        .await
        .unwrap();
    let verifies = rig.calls_to(LoginEndpoint::Verify);
    let (a, b, c) = tokio::join!(
        rig.report_refused("Ukate"),
        rig.report_refused("Ukate"),
        rig.report_refused("Ukate"),
    );
    assert_eq!(
        rig.calls_to(LoginEndpoint::Verify),
        verifies + 1,
        "one verify"
    );
    assert_eq!(rig.refreshes(), 1, "one refresh");
    let new = rig.tokens("Ukate").access.expose().to_owned();
    assert_ne!(new, old.expose());
    for (status, answer) in [a, b, c] {
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(
            answer["access_token"],
            new.as_str(),
            "every report gets the new token"
        );
    }
    // The refresh was journaled like a scheduled one.
    assert_eq!(rig.events(EventKind::LoginRefreshed).len(), 1);
    assert!(rig.store.open_refresh_intents().unwrap().is_empty());
    let (status, answer) = rig
        .call(
            "GET",
            &format!("/v1/login/{LOGIN}/grants/Ukate/token"),
            READER,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["access_token"], new.as_str());
    assert!(
        rig.metrics.render().contains(
            "linetokd_login_token_refused_total{channel=\"1660000000\",result=\"refreshed\"} 1"
        ),
        "{}",
        rig.metrics.render()
    );
}

#[tokio::test]
async fn a_refused_token_whose_refresh_is_refused_gives_410_and_no_further_calls() {
    let rig = rig(5).await;
    rig.import("Uliam").await;
    let tokens = rig.tokens("Uliam");
    // Logged out everywhere: the whole grant is revoked at LINE.
    rig.outsider()
        .revoke_refresh_token(&rig.channel(), None, &tokens.refresh)
        .await
        .unwrap();
    let (status, answer) = rig.report_refused("Uliam").await;
    assert_eq!(status, StatusCode::GONE, "{answer}");
    assert_eq!(answer["state"], "needs_login");
    assert_eq!(
        rig.calls_to(LoginEndpoint::Verify),
        2,
        "import + the report"
    );
    assert_eq!(rig.refreshes(), 1);
    let grant = rig
        .store
        .login_grant(&rig.channel(), "Uliam")
        .unwrap()
        .unwrap();
    assert_eq!(grant.state, GrantState::NeedsLogin);
    let calls = rig.calls.lock().unwrap().len();
    let (status, _) = rig.report_refused("Uliam").await;
    assert_eq!(status, StatusCode::GONE);
    for days in [1, 40] {
        rig.pass_at(rig.now() + Duration::days(days)).await;
    }
    assert_eq!(rig.calls.lock().unwrap().len(), calls, "zero further calls");
    // The notice went out like after a scheduled refresh's invalid_grant.
    assert!(
        rig.store
            .firing_alerts()
            .unwrap()
            .iter()
            .any(|a| a.alertname == "login_reauth_required")
    );
}

#[tokio::test]
async fn a_re_import_can_revoke_the_replaced_access_token_after_the_commit() {
    let rig = rig(5).await;
    rig.import("Umia").await;
    let old = rig.tokens("Umia").access;
    // The user logs in again; the service imports the new login.
    let (status, answer) = rig
        .post_login("Umia", json!({"revoke_previous": true}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["replaced"], true);
    assert_eq!(answer["previous_revoke"]["result"], "revoked", "{answer}");
    let outsider = rig.outsider();
    assert!(matches!(
        outsider.verify(&old).await.unwrap(),
        linetokd::line::types::Verification::Rejected { .. }
    ));
    let new = rig.tokens("Umia").access;
    assert!(matches!(
        outsider.verify(&new).await.unwrap(),
        linetokd::line::types::Verification::Valid(_)
    ));
    assert!(
        rig.events(EventKind::LoginImported)
            .iter()
            .any(|e| e.contains("replaced access token was revoked")),
        "{:?}",
        rig.events(EventKind::LoginImported)
    );
    // Without the field (the default): the replaced token lives on.
    let before = rig.tokens("Umia").access;
    let (status, answer) = rig.post_login("Umia", json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(answer.get("previous_revoke").is_none(), "{answer}");
    assert!(matches!(
        outsider.verify(&before).await.unwrap(),
        linetokd::line::types::Verification::Valid(_)
    ));
}

#[tokio::test]
async fn a_failed_revoke_of_the_replaced_token_is_reported_and_the_import_stands() {
    let rig = rig(5).await;
    rig.import("Unoah").await;
    let mut faults = linetokd::sandbox::Faults::default();
    faults.endpoints.insert(
        "/oauth2/v2.1/revoke".to_owned(),
        linetokd::sandbox::FaultRule {
            error_rate: 1.0,
            ..Default::default()
        },
    );
    rig.lab.sandbox.set_faults(faults).unwrap();
    let t = rig.sandbox_login(LOGIN, "Unoah");
    let body = json!({
        "subject": "Unoah", "access_token": t["access_token"],
        "refresh_token": t["refresh_token"], "expires_in": t["expires_in"],
        "revoke_previous": true,
    });
    let (status, answer) = rig
        .call(
            "POST",
            &format!("/v1/login/{LOGIN}/grants"),
            ADMIN,
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "the import stands: {answer}");
    assert_eq!(answer["previous_revoke"]["result"], "failed", "{answer}");
    assert!(answer["previous_revoke"]["message"].is_string());
    assert_eq!(
        rig.tokens("Unoah").access.expose(),
        t["access_token"].as_str().unwrap(),
        "the new grant is stored"
    );
    assert!(
        rig.events(EventKind::LoginImported)
            .iter()
            .any(|e| e.contains("revoking the replaced access token failed")),
    );
    // A wrong type is named.
    let (status, answer) = rig
        .call(
            "POST",
            &format!("/v1/login/{LOGIN}/grants"),
            ADMIN,
            Some(
                json!({"subject": "Unoah", "access_token": t["access_token"],
                "refresh_token": t["refresh_token"], "expires_in": 100,
                "revoke_previous": "yes"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer["field"], "revoke_previous");
}

/// Imports `subject`'s sandbox login as if it logged in `ago` before now.
async fn import_logged_in(rig: &Rig, subject: &str, ago: Duration) {
    let (status, answer) = rig
        .post_login(subject, json!({"login_at": (rig.now() - ago).timestamp()}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
}

#[tokio::test]
async fn more_than_twenty_reauth_notices_in_a_pass_reach_a_receiver_as_one_message() {
    use linetokd::alerting::{
        Endpoint, Notifier, NotifierSettings, Receiver, ReceiverKind, RouteSettings, Severity,
        TokenSource, WebhookFormat,
    };
    let rig = rig(1000).await;
    // 25 users who logged in 84 days ago: their horizons are 6 days away,
    // inside the 7-day notice window, all at once.
    let subjects: Vec<String> = (0..25).map(|i| format!("Ubulk{i:02}")).collect();
    for s in &subjects {
        import_logged_in(&rig, s, Duration::days(84)).await;
    }
    rig.pass_at(rig.now()).await;
    // The history and the metrics count each grant.
    assert_eq!(rig.events(EventKind::LoginReauthDue).len(), 25);
    assert!(
        rig.metrics
            .render()
            .contains("linetokd_login_reauth_due{channel=\"1660000000\"} 25"),
        "{}",
        rig.metrics.render()
    );
    let fake = crate::alerting::fake::Fake::start(|_| (200, vec![])).await;
    let notifier = Notifier::new(
        rig.store.clone(),
        Arc::new(rig.lab.clock.clone()),
        Metrics::shared(),
        NotifierSettings {
            route: RouteSettings {
                group_wait: Duration::seconds(30),
                group_interval: Duration::minutes(5),
                repeat_warning: Duration::hours(4),
                repeat_critical: Duration::hours(1),
            },
            external_url: None,
            receivers: vec![Receiver {
                name: "app".into(),
                min_severity: Severity::Warning,
                timeout: StdDuration::from_secs(10),
                // One request per alert: what a per-grant notice would
                // multiply.
                kind: ReceiverKind::Webhook {
                    url: Endpoint(reqwest::Url::parse(&format!("{}/hook", fake.base_url)).unwrap()),
                    format: WebhookFormat::Linetokd,
                    secret: None,
                },
            }],
            channel_names: linetokd::channel_index::ChannelIndex::default(),
            tokens: TokenSource::none(),
        },
    )
    .unwrap();
    notifier.step().await.unwrap();
    rig.lab.clock.set(rig.now() + Duration::seconds(30));
    notifier.step().await.unwrap();
    let got = fake.got();
    assert_eq!(got.len(), 1, "one message for the channel: {got:?}");
    let body = &got[0].body;
    assert!(body.contains("25 LINE Login grants"), "{body}");
    assert!(body.contains("and 20 more"), "{body}");
    for s in &subjects {
        assert!(!body.contains(s.as_str()), "no subject in a notice");
    }
    // At the threshold each grant is its own alert again: five grants
    // are deleted, 20 remain due.
    for s in &subjects[..5] {
        let (status, _) = rig
            .call(
                "DELETE",
                &format!("/v1/login/{LOGIN}/grants/{s}"),
                ADMIN,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    rig.pass_at(rig.now()).await;
    let due: Vec<_> = rig
        .store
        .firing_alerts()
        .unwrap()
        .into_iter()
        .filter(|a| a.alertname == "login_reauth_due")
        .collect();
    assert_eq!(due.len(), 20, "one per grant at 20");
}

// ---------------------------------------------------------------------------
// Review fixes: shutdown, revoke refusals, per-grant locks, channel holds,
// lost answers, the rejected channel, login_at, rescheduling, flights.
// ---------------------------------------------------------------------------

/// Polls `done` until it holds (a condition, not a fixed sleep); panics
/// after 20 s of wall time.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + StdDuration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < give_up, "never: {what}");
        tokio::time::sleep(StdDuration::from_millis(2)).await;
    }
}

/// [`driven`], but the clock is never moved past `limit`: `None` when
/// `work` has not ended after 20 s of wall time.
async fn driven_until<T>(
    clock: &ManualClock,
    limit: DateTime<Utc>,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    let give_up = tokio::time::Instant::now() + StdDuration::from_secs(20);
    tokio::pin!(work);
    loop {
        tokio::select! {
            biased;
            out = &mut work => return Some(out),
            () = tokio::time::sleep(StdDuration::from_millis(1)) => {
                if tokio::time::Instant::now() > give_up {
                    return None;
                }
                if clock.sleepers() > 0 {
                    let at = clock.next_deadline().await;
                    if at <= limit {
                        clock.set(at);
                    }
                }
            }
        }
    }
}

impl Rig {
    fn due_now(&self, subjects: &[&str]) {
        let now = self.now();
        let next: Vec<_> = subjects
            .iter()
            .map(|s| (self.channel(), (*s).to_owned(), now))
            .collect();
        self.store.reschedule_login_grants(&next).unwrap();
    }

    fn grant(&self, subject: &str) -> linetokd::store::GrantRecord {
        self.store
            .login_grant(&self.channel(), subject)
            .unwrap()
            .unwrap()
    }

    fn fault(&self, path: &str, rule: linetokd::sandbox::FaultRule) {
        let mut faults = linetokd::sandbox::Faults::default();
        faults.endpoints.insert(path.to_owned(), rule);
        self.lab.sandbox.set_faults(faults).unwrap();
    }

    fn no_faults(&self) {
        self.lab
            .sandbox
            .set_faults(linetokd::sandbox::Faults::default())
            .unwrap();
    }

    /// LOGIN becomes a web-app channel at LINE, whose secret the module
    /// does not send: LINE answers `invalid_client`.
    fn make_web_app(&self, web: bool) {
        self.lab
            .sandbox
            .register_login_channel(SandboxLogin {
                id: ChannelId::new(LOGIN),
                secret: ChannelSecret::new(LOGIN_SECRET),
                app_type: if web {
                    LoginAppType::Web
                } else {
                    LoginAppType::Native
                },
                rotate_refresh_tokens: true,
            })
            .unwrap();
    }

    fn rejected_alert(&self) -> Option<linetokd::store::AlertRecord> {
        self.store
            .firing_alerts()
            .unwrap()
            .into_iter()
            .find(|a| a.alertname == "login_channel_rejected")
    }
}

#[tokio::test]
async fn stop_ends_a_pass_between_two_refreshes_and_cuts_none() {
    let rig = rig(1).await;
    let subjects = ["Us1", "Us2", "Us3", "Us4"];
    for s in subjects {
        rig.import(s).await;
    }
    rig.due_now(&subjects);
    let stop = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(Arc::clone(&rig.login).run(stop.clone()));
    // The pass waits for the bucket (1 a second) on a clock nobody moves.
    wait_until("the pass waits for the bucket", || {
        rig.lab.clock.sleepers() > 0
    })
    .await;
    stop.cancel();
    tokio::time::timeout(StdDuration::from_secs(20), run)
        .await
        .expect("run ends without the bucket's wait")
        .unwrap();
    assert!(rig.refreshes() < subjects.len());
    assert!(
        rig.store.open_refresh_intents().unwrap().is_empty(),
        "no refresh was cut between its intent and its commit"
    );
}

#[tokio::test]
async fn a_revoke_line_refuses_keeps_the_grant_and_names_lines_code() {
    let rig = rig(5).await;
    rig.import("Urefused").await;
    rig.make_web_app(true);
    let (status, body) = rig
        .call(
            "DELETE",
            &format!("/v1/login/{LOGIN}/grants/Urefused"),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"], "line_refused");
    assert_eq!(body["line_error"], "invalid_client");
    assert!(
        body["message"].as_str().unwrap().contains("invalid_client"),
        "{body}"
    );
    assert_eq!(rig.grant("Urefused").state, GrantState::Active, "kept");
    // A re-import asking to revoke the replaced token reports the refusal.
    let (status, answer) = rig
        .post_login("Urefused", json!({"revoke_previous": true}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["previous_revoke"]["result"], "failed", "{answer}");
    assert!(
        answer["previous_revoke"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid_client"),
        "{answer}"
    );
}

/// LINE answers a revoke 200 whatever it did: a DELETE confirms with a
/// verify, and while LINE still accepts the access token the grant is
/// kept (502) so the delete can be asked again.
#[tokio::test]
async fn a_delete_whose_revoke_line_does_not_carry_out_keeps_the_grant() {
    let rig = rig(5).await;
    rig.import("Uignored").await;
    let mut faults = linetokd::sandbox::Faults::default();
    faults.endpoints.insert(
        "/oauth2/v2.1/revoke".to_owned(),
        linetokd::sandbox::FaultRule {
            ignore_rate: 1.0,
            ..linetokd::sandbox::FaultRule::default()
        },
    );
    rig.lab.sandbox.set_faults(faults).unwrap();
    let path = format!("/v1/login/{LOGIN}/grants/Uignored");
    let (status, body) = rig.call("DELETE", &path, ADMIN, None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"], "line_unavailable", "{body}");
    assert_eq!(rig.grant("Uignored").state, GrantState::Active, "kept");
    // LINE carries it out again: deleted.
    rig.lab
        .sandbox
        .set_faults(linetokd::sandbox::Faults::default())
        .unwrap();
    let (status, body) = rig.call("DELETE", &path, ADMIN, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
}

#[tokio::test]
async fn a_channel_held_by_a_429_does_not_hold_up_another_channels_report() {
    let rig = rig(5).await;
    let mut both = config(5);
    both.channels.push(LoginChannelConfig {
        id: ChannelId::new(OTHER),
        name: "other-login".into(),
        secret: None,
    });
    rig.login.reconfigure(&both);
    rig.import("Ua1").await;
    rig.import("Ua2").await;
    let t = rig.sandbox_login(OTHER, "Ub1");
    let (status, answer) = rig
        .call(
            "POST",
            &format!("/v1/login/{OTHER}/grants"),
            ADMIN,
            Some(json!({
                "subject": "Ub1", "access_token": t["access_token"],
                "refresh_token": t["refresh_token"], "expires_in": t["expires_in"],
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    rig.fault(
        "/oauth2/v2.1/token",
        linetokd::sandbox::FaultRule {
            rate_limit_rate: 1.0,
            retry_after_secs: 3600,
            ..Default::default()
        },
    );
    rig.lab.clock.set(rig.now() + Duration::seconds(1));
    rig.due_now(&["Ua1", "Ua2"]);
    let login = Arc::clone(&rig.login);
    let pass = tokio::spawn(async move { login.pass().await });
    wait_until("LOGIN is held by a 429", || {
        rig.refreshes() == 1 && rig.lab.clock.sleepers() > 0
    })
    .await;
    rig.no_faults();
    // The user of OTHER logs out: LINE no longer accepts the token.
    LoginClient::new(rig.lab.client.clone(), None)
        .revoke(
            &ChannelId::new(OTHER),
            None,
            &linetokd::domain::AccessToken::new(t["access_token"].as_str().unwrap()),
        )
        .await
        .unwrap();
    let start = rig.now();
    let limit = start + Duration::seconds(60);
    let report = driven_until(
        &rig.lab.clock,
        limit,
        rig.login.token_refused(&ChannelId::new(OTHER), "Ub1"),
    )
    .await
    .expect("the report of OTHER ends while LOGIN is held");
    assert!(report.is_ok(), "{report:?}");
    assert!(rig.now() <= limit);
    assert!(!pass.is_finished(), "LOGIN is still held");
    pass.abort();
}

#[tokio::test]
async fn a_delete_waits_for_the_refresh_in_flight_and_revokes_its_token() {
    let rig = rig(5).await;
    rig.import("Udel").await;
    rig.fault(
        "/oauth2/v2.1/token",
        linetokd::sandbox::FaultRule {
            latency_ms: 1000,
            ..Default::default()
        },
    );
    rig.lab.clock.set(rig.now() + Duration::seconds(1));
    rig.due_now(&["Udel"]);
    let login = Arc::clone(&rig.login);
    let pass = tokio::spawn(async move { login.pass().await });
    wait_until("the refresh is in flight", || {
        !rig.store.open_refresh_intents().unwrap().is_empty()
    })
    .await;
    let (status, body) = rig
        .call(
            "DELETE",
            &format!("/v1/login/{LOGIN}/grants/Udel"),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    pass.await.unwrap().unwrap();
    assert_eq!(rig.refreshes(), 1);
    assert!(
        rig.store
            .login_grant(&rig.channel(), "Udel")
            .unwrap()
            .is_none()
    );
    let at_line = rig.lab.sandbox.login_grants(&rig.channel());
    let grant = at_line.iter().find(|g| g.subject == "Udel").unwrap();
    assert_eq!(grant.access_tokens.len(), 2, "the refresh's token too");
    for token in &grant.access_tokens {
        assert_ne!(
            token.state,
            linetokd::sandbox::LoginTokenState::Live,
            "no live token is left unrecorded"
        );
    }
}

#[tokio::test]
async fn an_outage_costs_a_few_calls_per_channel_not_one_per_grant() {
    let rig = rig(50).await;
    let subjects = ["Uo1", "Uo2", "Uo3", "Uo4", "Uo5", "Uo6", "Uo7", "Uo8"];
    for s in subjects {
        rig.import(s).await;
    }
    rig.lab
        .sandbox
        .set_faults(linetokd::sandbox::Faults {
            down: true,
            ..Default::default()
        })
        .unwrap();
    rig.due_now(&subjects);
    let start = rig.now();
    rig.pass_at(start).await;
    assert_eq!(rig.refreshes(), 1, "one failing call, the rest held");
    // An hour of outage: the channel's hold doubles.
    loop {
        let next = driven(&rig.lab.clock, rig.login.pass())
            .await
            .unwrap()
            .unwrap();
        if next > start + Duration::hours(1) {
            break;
        }
        rig.lab.clock.set(next.max(rig.now()));
    }
    let during = rig.refreshes();
    assert!(during <= 8, "{during} calls in an hour of outage");
    rig.no_faults();
    for _ in 0..20 {
        if subjects
            .iter()
            .all(|s| rig.grant(s).last_refresh_at.is_some())
        {
            break;
        }
        let next = driven(&rig.lab.clock, rig.login.pass())
            .await
            .unwrap()
            .unwrap();
        rig.lab.clock.set(next.max(rig.now()));
    }
    for s in subjects {
        let g = rig.grant(s);
        assert!(
            g.last_refresh_at.is_some(),
            "{s} refreshed after the outage"
        );
        assert_eq!(g.consecutive_failures, 0);
    }
}

#[tokio::test]
async fn a_lost_answer_in_rotation_is_reported_and_explains_the_invalid_grant() {
    let rig = rig(5).await;
    rig.import("Ulost").await;
    rig.fault(
        "/oauth2/v2.1/token",
        linetokd::sandbox::FaultRule {
            drop_after_rate: 1.0,
            ..Default::default()
        },
    );
    rig.due_now(&["Ulost"]);
    rig.pass_at(rig.now()).await;
    assert_eq!(rig.refreshes(), 1);
    let reported = rig.events(EventKind::LoginLostRefresh);
    assert_eq!(reported.len(), 1, "never silent: {reported:?}");
    assert!(!reported[0].contains("Ulost"));
    assert!(rig.grant("Ulost").lost_refresh);
    rig.no_faults();
    for _ in 0..5 {
        if rig.grant("Ulost").state != GrantState::Active {
            break;
        }
        let at = rig.grant("Ulost").next_refresh_at.max(rig.now());
        rig.pass_at(at).await;
    }
    assert_eq!(rig.grant("Ulost").state, GrantState::NeedsLogin);
    let why = rig.events(EventKind::LoginNeedsLogin);
    assert!(why[0].contains("lost"), "{why:?}");
}

#[tokio::test]
async fn invalid_client_pauses_the_whole_channel_and_alerts_until_a_refresh_succeeds() {
    let rig = rig(5).await;
    rig.import("Uc1").await;
    rig.import("Uc2").await;
    rig.make_web_app(true);
    rig.due_now(&["Uc1", "Uc2"]);
    let start = rig.now();
    rig.pass_at(start).await;
    assert_eq!(rig.refreshes(), 1, "no call for the other grant");
    rig.pass_at(start + Duration::seconds(1)).await;
    let fired = rig.rejected_alert().expect("login_channel_rejected fires");
    rig.pass_at(start + Duration::minutes(30)).await;
    assert_eq!(rig.refreshes(), 1, "nothing during the pause");
    // The pause ends: one try, refused again; the alert never resolved.
    for minutes in [61, 62, 63] {
        rig.pass_at(start + Duration::minutes(minutes)).await;
        let again = rig.rejected_alert().expect("still firing");
        assert_eq!(again.started_at, fired.started_at, "one episode");
    }
    assert_eq!(rig.refreshes(), 2);
    // LINE accepts the channel again: the next try succeeds, the alert ends.
    rig.make_web_app(false);
    for minutes in [125, 126, 127] {
        rig.pass_at(start + Duration::minutes(minutes)).await;
    }
    assert!(rig.rejected_alert().is_none());
    assert!(rig.grant("Uc1").last_refresh_at.is_some());
    assert!(rig.grant("Uc2").last_refresh_at.is_some());
}

/// Found by the outside tester: a reload with the right secret cleared the
/// pause in memory and resolved the alert, but the refused grant kept
/// waiting in the store until the hour was over.
#[tokio::test]
async fn a_reload_with_the_secret_ends_the_pause_at_once() {
    let rig = rig(5).await;
    rig.import("Us1").await;
    rig.import("Us2").await;
    rig.make_web_app(true);
    rig.due_now(&["Us1", "Us2"]);
    let start = rig.now();
    rig.pass_at(start).await;
    rig.pass_at(start + Duration::seconds(1)).await;
    assert!(rig.rejected_alert().is_some());
    assert_eq!(rig.refreshes(), 1);
    let mut fixed = config(5);
    fixed.channels[0].secret = Some(ChannelSecret::new(LOGIN_SECRET));
    rig.login.reconfigure(&fixed);
    for seconds in [2, 3, 4] {
        rig.pass_at(start + Duration::seconds(seconds)).await;
    }
    assert_eq!(rig.refreshes(), 3, "both grants refreshed at once");
    assert!(rig.grant("Us1").last_refresh_at.is_some());
    assert!(rig.grant("Us2").last_refresh_at.is_some());
    assert!(rig.rejected_alert().is_none());
}

/// Found by the outside tester: LINE's 429 on an import's verify was a 502
/// (which `login import` retried at once and then dropped the line), and
/// LINE's `Retry-After` held nothing.
#[tokio::test]
async fn a_429_from_line_on_import_is_a_429_and_holds_the_channel() {
    let rig = rig(5).await;
    rig.fault(
        "/oauth2/v2.1/verify",
        linetokd::sandbox::FaultRule {
            rate_limit_rate: 1.0,
            retry_after_secs: 3,
            ..Default::default()
        },
    );
    let (status, body) = rig.post_login("Urate", json!({})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"], "line_rate_limited");
    assert!(body["message"].as_str().unwrap().contains("3s"), "{body}");
    rig.no_faults();
    // The next request of the channel waits out LINE's Retry-After.
    let before = rig.now();
    rig.import("Urate").await;
    assert!(
        rig.now() - before >= Duration::seconds(3),
        "{}",
        rig.now() - before
    );
}

#[tokio::test]
async fn a_login_at_in_the_future_or_past_the_horizon_is_refused_naming_it() {
    let rig = rig(5).await;
    for login_at in [
        rig.now() + Duration::days(1),
        rig.now() - Duration::days(91),
    ] {
        let t = rig.sandbox_login(LOGIN, "Uwhen");
        let (status, body) = rig
            .call(
                "POST",
                &format!("/v1/login/{LOGIN}/grants"),
                ADMIN,
                Some(json!({
                    "subject": "Uwhen", "access_token": t["access_token"],
                    "refresh_token": t["refresh_token"], "expires_in": t["expires_in"],
                    "login_at": login_at.to_rfc3339(),
                })),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["field"], "login_at");
    }
    assert!(
        rig.store
            .login_grant(&rig.channel(), "Uwhen")
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_reload_that_changes_refresh_before_reschedules_the_grants() {
    let rig = rig(5).await;
    rig.import("Ure").await;
    let before = rig.grant("Ure").next_refresh_at;
    let mut earlier = config(5);
    earlier.timings.refresh_before = StdDuration::from_secs(5 * 86_400);
    rig.login.reconfigure(&earlier);
    rig.pass_at(rig.now()).await;
    assert_eq!(rig.grant("Ure").next_refresh_at, before - Duration::days(2));
}

#[tokio::test]
async fn a_restart_after_the_last_refresh_before_the_horizon_makes_no_extra_refresh() {
    let rig = rig(5).await;
    let start = rig.now();
    rig.import("Ulast").await;
    let horizon = start + Duration::days(90);
    for _ in 0..10 {
        let g = rig.grant("Ulast");
        if g.next_refresh_at >= horizon {
            break;
        }
        rig.pass_at(g.next_refresh_at).await;
    }
    let refreshes = rig.refreshes();
    assert_eq!(refreshes, 4);
    let (again, _, calls) = module(&rig.lab, &rig.store, 5);
    rig.lab.clock.set(rig.now() + Duration::minutes(1));
    driven(&rig.lab.clock, again.start_up()).await.unwrap();
    driven(&rig.lab.clock, again.pass()).await.unwrap();
    assert!(calls.lock().unwrap().is_empty(), "no extra refresh");
    assert_eq!(rig.grant("Ulast").next_refresh_at, horizon);
}

#[tokio::test]
async fn the_shutdown_waits_for_a_token_refused_check_and_ends_its_wait() {
    let rig = rig(1).await;
    rig.import("Uflight").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(Arc::clone(&rig.login).run(stop.clone()));
    wait_until("the module sleeps", || rig.lab.clock.sleepers() > 0).await;
    let login = Arc::clone(&rig.login);
    let report =
        tokio::spawn(async move { login.token_refused(&ChannelId::new(LOGIN), "Uflight").await });
    // The check waits for the bucket (1 a second) on a clock nobody moves.
    wait_until("the check waits for the bucket", || {
        rig.lab.clock.sleepers() > 1
    })
    .await;
    stop.cancel();
    tokio::time::timeout(StdDuration::from_secs(20), run)
        .await
        .expect("run ends")
        .unwrap();
    let answer = tokio::time::timeout(StdDuration::from_secs(20), report)
        .await
        .expect("the check ended with the shutdown")
        .unwrap();
    assert!(
        matches!(&answer, Err(LoginApiError::Line(why)) if why.contains("stopping")),
        "{answer:?}"
    );
}

/// The store's grants and refresh journal through its API alone (no LINE,
/// no module), on SQLite and PostgreSQL.
mod store {
    use std::sync::Arc;
    use std::time::Duration as StdDuration;

    use chrono::{DateTime, Duration, Utc};
    use linetokd::domain::{AccessToken, ChannelId, RefreshToken};
    use linetokd::store::crypt::{KeyMaterial, Keyring};
    use linetokd::store::{
        GrantCount, GrantState, GrantSummary, NewGrant, RefreshFailure, RefreshedGrant, Store,
        StoreOptions,
    };

    use crate::store::{OnBackend, backends_with};

    fn t0() -> DateTime<Utc> {
        crate::support::start_time()
    }

    fn ch(id: &str) -> ChannelId {
        ChannelId::new(id)
    }

    /// Grants are stored only sealed: every store here has a key.
    fn encrypted(test: &str) -> Vec<OnBackend> {
        let keyring = Keyring::new([(1, KeyMaterial::generate().unwrap())], 1).unwrap();
        let options = StoreOptions {
            keyring: Some(Arc::new(keyring)),
            ..StoreOptions::default()
        };
        backends_with(test, &options)
    }

    /// Grant `n` of `subject` on `channel`: its values name both.
    fn grant(channel: &str, subject: &str, n: u32) -> NewGrant {
        NewGrant {
            channel: ch(channel),
            subject: subject.into(),
            access: AccessToken::new(format!("access-{channel}-{subject}-{n}")),
            refresh: RefreshToken::new(format!("refresh-{channel}-{subject}-{n}")),
            access_expires_at: t0() + Duration::days(30),
            login_at: Some(t0() - Duration::days(1)),
            horizon_at: t0() + Duration::days(89),
            horizon_estimated: false,
            scope: "profile openid".into(),
            next_refresh_at: t0() + Duration::days(29),
        }
    }

    fn values(store: &Store, channel: &str, subject: &str) -> (String, String) {
        let (_, tokens) = store
            .login_grant_tokens(&ch(channel), subject)
            .unwrap()
            .unwrap();
        (
            tokens.access.expose().to_owned(),
            tokens.refresh.expose().to_owned(),
        )
    }

    fn answer(access: &str, refresh: Option<&str>, scope: Option<&str>) -> RefreshedGrant {
        RefreshedGrant {
            access: AccessToken::new(access),
            refresh: refresh.map(RefreshToken::new),
            access_expires_at: t0() + Duration::days(60),
            scope: scope.map(str::to_owned),
            next_refresh_at: t0() + Duration::days(59),
        }
    }

    #[test]
    fn a_re_import_replaces_the_values_and_starts_the_grant_over_on_both_backends() {
        for b in encrypted("login_re_import") {
            let (store, name) = (&b.store, b.name);
            let first = grant("1000", "Uone", 1);
            assert!(!store.import_login_grant(t0(), &first).unwrap(), "{name}");
            let record = store.login_grant(&ch("1000"), "Uone").unwrap().unwrap();
            assert_eq!(record.state, GrantState::Active, "{name}");
            assert_eq!(record.access_expires_at, first.access_expires_at, "{name}");
            assert_eq!(record.login_at, first.login_at, "{name}");
            assert_eq!(record.horizon_at, first.horizon_at, "{name}");
            assert_eq!(record.scope, "profile openid", "{name}");
            assert_eq!(record.imported_at, t0(), "{name}");
            assert_eq!(record.next_refresh_at, first.next_refresh_at, "{name}");
            assert_eq!(
                values(store, "1000", "Uone"),
                ("access-1000-Uone-1".into(), "refresh-1000-Uone-1".into()),
                "{name}"
            );

            // Failures, a notice, a lost refresh and an open intent...
            let later = t0() + Duration::hours(1);
            let retry_at = later + Duration::minutes(5);
            let failure = RefreshFailure::Retry {
                retry_at,
                reason: "busy".into(),
            };
            store
                .fail_refresh(later, None, &ch("1000"), "Uone", &failure)
                .unwrap();
            let lost = RefreshFailure::Lost {
                retry_at,
                reason: "timeout".into(),
            };
            store
                .fail_refresh(later, None, &ch("1000"), "Uone", &lost)
                .unwrap();
            assert!(
                store
                    .note_reauth_due(later, &ch("1000"), "Uone", first.horizon_at)
                    .unwrap(),
                "{name}"
            );
            assert!(
                !store
                    .note_reauth_due(later, &ch("1000"), "Uone", first.horizon_at)
                    .unwrap(),
                "{name}: the notice is recorded once"
            );
            let record = store.login_grant(&ch("1000"), "Uone").unwrap().unwrap();
            assert_eq!(record.consecutive_failures, 2, "{name}");
            assert_eq!(record.retry_not_before, Some(retry_at), "{name}");
            assert_eq!(record.next_refresh_at, retry_at, "{name}");
            assert!(record.lost_refresh, "{name}");
            assert_eq!(record.reauth_due_notified_at, Some(later), "{name}");
            let (intent, _) = store
                .begin_refresh(later, &ch("1000"), "Uone")
                .unwrap()
                .unwrap();

            // ...all start over with a re-import, which hands back the
            // access token it replaced and closes the intent.
            let second = grant("1000", "Uone", 2);
            let (replaced, previous) = store.replace_login_grant(later, &second, true).unwrap();
            assert!(replaced, "{name}");
            assert_eq!(
                previous.map(|t| t.expose().to_owned()),
                Some("access-1000-Uone-1".to_owned()),
                "{name}"
            );
            let record = store.login_grant(&ch("1000"), "Uone").unwrap().unwrap();
            assert_eq!(
                (
                    record.consecutive_failures,
                    record.retry_not_before,
                    record.lost_refresh,
                    record.reauth_due_notified_at,
                    record.last_refresh_at,
                    record.imported_at,
                ),
                (0, None, false, None, None, later),
                "{name}"
            );
            assert!(store.open_refresh_intents().unwrap().is_empty(), "{name}");
            // The superseded refresh lands nowhere.
            let stale = answer("stale", Some("stale-refresh"), None);
            assert!(
                !store
                    .complete_refresh(later, intent, &ch("1000"), "Uone", &stale)
                    .unwrap(),
                "{name}"
            );
            assert_eq!(
                values(store, "1000", "Uone"),
                ("access-1000-Uone-2".into(), "refresh-1000-Uone-2".into()),
                "{name}"
            );
            // Without `take_previous` nothing is opened for the caller.
            let (replaced, previous) = store
                .replace_login_grant(later, &grant("1000", "Uone", 3), false)
                .unwrap();
            assert!(replaced && previous.is_none(), "{name}");
            assert!(
                store.login_grant(&ch("1000"), "Uother").unwrap().is_none(),
                "{name}"
            );
        }
    }

    #[test]
    fn a_refresh_is_journaled_and_its_answer_stored_with_the_intent_closed_on_both_backends() {
        for b in encrypted("login_refresh_journal") {
            let (store, name) = (&b.store, b.name);
            store
                .import_login_grant(t0(), &grant("1000", "Uone", 1))
                .unwrap();
            let at = t0() + Duration::minutes(1);
            let (first, tokens) = store
                .begin_refresh(at, &ch("1000"), "Uone")
                .unwrap()
                .unwrap();
            assert_eq!(tokens.refresh.expose(), "refresh-1000-Uone-1", "{name}");
            // One open intent per grant.
            assert!(
                store.begin_refresh(at, &ch("1000"), "Uone").is_err(),
                "{name}"
            );
            let open = store.open_refresh_intents().unwrap();
            assert_eq!(open.len(), 1, "{name}");
            assert_eq!(
                (
                    open[0].id,
                    open[0].channel.clone(),
                    open[0].subject.as_str()
                ),
                (first, ch("1000"), "Uone"),
                "{name}"
            );
            assert_eq!(open[0].opened_at, at, "{name}");

            // LINE kept the refresh token and said no scope: both stay.
            let done = t0() + Duration::minutes(2);
            assert!(
                store
                    .complete_refresh(done, first, &ch("1000"), "Uone", &answer("a2", None, None))
                    .unwrap(),
                "{name}"
            );
            assert!(
                !store
                    .complete_refresh(done, first, &ch("1000"), "Uone", &answer("a3", None, None))
                    .unwrap(),
                "{name}: an intent closes once"
            );
            assert_eq!(
                values(store, "1000", "Uone"),
                ("a2".into(), "refresh-1000-Uone-1".into()),
                "{name}"
            );
            let record = store.login_grant(&ch("1000"), "Uone").unwrap().unwrap();
            assert_eq!(record.scope, "profile openid", "{name}");
            assert_eq!(record.last_refresh_at, Some(done), "{name}");
            assert_eq!(
                record.access_expires_at,
                t0() + Duration::days(60),
                "{name}"
            );
            assert_eq!(record.next_refresh_at, t0() + Duration::days(59), "{name}");

            // LINE rotated the refresh token and narrowed the scope.
            let (second, _) = store
                .begin_refresh(done, &ch("1000"), "Uone")
                .unwrap()
                .unwrap();
            assert!(second > first, "{name}");
            let rotated = answer("a4", Some("r4"), Some("profile"));
            assert!(
                store
                    .complete_refresh(done, second, &ch("1000"), "Uone", &rotated)
                    .unwrap(),
                "{name}"
            );
            assert_eq!(
                values(store, "1000", "Uone"),
                ("a4".into(), "r4".into()),
                "{name}"
            );
            let record = store.login_grant(&ch("1000"), "Uone").unwrap().unwrap();
            assert_eq!(record.scope, "profile", "{name}");

            // A dead refresh token ends the grant: no refresh starts.
            let (third, _) = store
                .begin_refresh(done, &ch("1000"), "Uone")
                .unwrap()
                .unwrap();
            let dead = RefreshFailure::NeedsLogin {
                reason: "invalid_grant".into(),
            };
            store
                .fail_refresh(done, Some(third), &ch("1000"), "Uone", &dead)
                .unwrap();
            let record = store.login_grant(&ch("1000"), "Uone").unwrap().unwrap();
            assert_eq!(record.state, GrantState::NeedsLogin, "{name}");
            assert!(
                store
                    .begin_refresh(done, &ch("1000"), "Uone")
                    .unwrap()
                    .is_none(),
                "{name}"
            );
            assert!(store.open_refresh_intents().unwrap().is_empty(), "{name}");

            // An intent left open by a crash is closed as lost: the grant
            // is flagged and due at once.
            store
                .import_login_grant(done, &grant("1000", "Uone", 5))
                .unwrap();
            let crashed = store
                .open_refresh_intent(done, &ch("1000"), "Uone")
                .unwrap();
            let restart = done + Duration::minutes(3);
            let open = store.open_refresh_intents().unwrap();
            assert_eq!(
                open.iter().map(|i| i.id).collect::<Vec<_>>(),
                [crashed],
                "{name}"
            );
            store.close_lost_refresh(restart, &open[0]).unwrap();
            let record = store.login_grant(&ch("1000"), "Uone").unwrap().unwrap();
            assert!(record.lost_refresh, "{name}");
            assert_eq!(record.next_refresh_at, restart, "{name}");
            assert!(store.open_refresh_intents().unwrap().is_empty(), "{name}");

            // A delete closes any open intent and is true once.
            let (fourth, _) = store
                .begin_refresh(restart, &ch("1000"), "Uone")
                .unwrap()
                .unwrap();
            assert!(
                store
                    .delete_login_grant(restart, &ch("1000"), "Uone", "by request")
                    .unwrap(),
                "{name}"
            );
            assert!(
                !store
                    .delete_login_grant(restart, &ch("1000"), "Uone", "by request")
                    .unwrap(),
                "{name}"
            );
            assert!(
                store.login_grant(&ch("1000"), "Uone").unwrap().is_none(),
                "{name}"
            );
            assert!(store.open_refresh_intents().unwrap().is_empty(), "{name}");
            assert!(
                !store
                    .complete_refresh(restart, fourth, &ch("1000"), "Uone", &rotated)
                    .unwrap(),
                "{name}"
            );
        }
    }

    #[test]
    fn grants_are_summarised_scheduled_paused_and_ended_at_their_horizon_on_both_backends() {
        for b in encrypted("login_schedule") {
            let (store, name) = (&b.store, b.name);
            assert_eq!(store.next_login_refresh().unwrap(), None, "{name}");
            assert!(
                store
                    .login_grant_summary(t0(), StdDuration::from_secs(3600))
                    .unwrap()
                    .is_empty(),
                "{name}"
            );
            let mut estimated = grant("1000", "Ua", 1);
            estimated.horizon_estimated = true;
            estimated.login_at = None;
            let mut ending = grant("1000", "Ub", 1);
            ending.horizon_at = t0() + Duration::days(2);
            for g in [
                estimated,
                ending,
                grant("2000", "Uc", 1),
                grant("2000", "Ud", 1),
            ] {
                store.import_login_grant(t0(), &g).unwrap();
            }
            let dead = RefreshFailure::NeedsLogin {
                reason: "invalid_grant".into(),
            };
            store
                .fail_refresh(t0(), None, &ch("2000"), "Uc", &dead)
                .unwrap();

            // The notice window is 3 days: only Ub's horizon is inside it.
            let summary = store
                .login_grant_summary(t0(), StdDuration::from_secs(3 * 24 * 3600))
                .unwrap();
            assert_eq!(
                summary,
                [
                    GrantSummary {
                        channel: ch("1000"),
                        active: 2,
                        needs_login: 0,
                        revoked: 0,
                        reauth_due: 1,
                        horizon_estimated: 1,
                    },
                    GrantSummary {
                        channel: ch("2000"),
                        active: 1,
                        needs_login: 1,
                        revoked: 0,
                        reauth_due: 0,
                        horizon_estimated: 0,
                    },
                ],
                "{name}"
            );
            let count = |channel: &str, state, grants| GrantCount {
                channel: ch(channel),
                state,
                grants,
            };
            assert_eq!(
                store.login_grant_counts().unwrap(),
                [
                    count("1000", GrantState::Active, 2),
                    count("2000", GrantState::Active, 1),
                    count("2000", GrantState::NeedsLogin, 1),
                ],
                "{name}"
            );

            // Due: earliest first, at most `limit`, active only.
            store
                .reschedule_login_grants(&[
                    (ch("1000"), "Ua".into(), t0() - Duration::hours(2)),
                    (ch("1000"), "Ub".into(), t0() - Duration::hours(1)),
                    (ch("2000"), "Uc".into(), t0() - Duration::hours(3)),
                    (ch("2000"), "Ud".into(), t0() + Duration::hours(1)),
                ])
                .unwrap();
            let due = |limit| -> Vec<String> {
                store
                    .due_login_grants(t0(), limit)
                    .unwrap()
                    .into_iter()
                    .map(|g| g.subject)
                    .collect()
            };
            assert_eq!(due(1), ["Ua"], "{name}");
            assert_eq!(due(10), ["Ua", "Ub"], "{name}");
            assert_eq!(
                store.next_login_refresh().unwrap(),
                Some(t0() - Duration::hours(2)),
                "{name}"
            );

            // A paused channel's grants wait for the pause's end; a reload
            // ends it early and makes them due now.
            let until = t0() + Duration::hours(1);
            store
                .fail_refresh(
                    t0(),
                    None,
                    &ch("1000"),
                    "Ua",
                    &RefreshFailure::ChannelPaused { retry_at: until },
                )
                .unwrap();
            assert_eq!(due(10), ["Ub"], "{name}");
            assert_eq!(
                store.end_login_pause(t0(), &ch("1000"), until).unwrap(),
                1,
                "{name}"
            );
            let a = store.login_grant(&ch("1000"), "Ua").unwrap().unwrap();
            assert_eq!(
                (a.next_refresh_at, a.retry_not_before),
                (t0(), None),
                "{name}"
            );

            // Ub reaches its horizon.
            let past = t0() + Duration::days(2);
            assert_eq!(store.expire_login_horizons(past).unwrap(), 1, "{name}");
            assert_eq!(
                store.login_grant(&ch("1000"), "Ub").unwrap().unwrap().state,
                GrantState::NeedsLogin,
                "{name}"
            );
            assert_eq!(store.expire_login_horizons(past).unwrap(), 0, "{name}");
        }
    }

    /// Listings are by channel and subject in byte order on both
    /// backends, whatever collation PostgreSQL's columns have (switched to
    /// a linguistic one here, which puts `_` before `a` before `B`).
    #[test]
    fn grants_are_listed_in_byte_order_on_both_backends() {
        for b in encrypted("login_byte_order") {
            if b.is_postgres() {
                b.batch(
                    "ALTER TABLE login_grants \
                   ALTER COLUMN channel_id TYPE TEXT COLLATE \"en-US-x-icu\", \
                   ALTER COLUMN subject TYPE TEXT COLLATE \"en-US-x-icu\";",
                );
            }
            let (store, name) = (&b.store, b.name);
            for (channel, subject) in [("a1", "Ux"), ("B1", "ub"), ("B1", "UB"), ("_1", "Ux")] {
                store
                    .import_login_grant(t0(), &grant(channel, subject, 1))
                    .unwrap();
            }
            let listed: Vec<(String, String)> = store
                .login_grants()
                .unwrap()
                .into_iter()
                .map(|g| (g.channel.as_str().to_owned(), g.subject))
                .collect();
            let expected = [("B1", "UB"), ("B1", "ub"), ("_1", "Ux"), ("a1", "Ux")];
            assert_eq!(
                listed,
                expected.map(|(c, s)| (c.to_owned(), s.to_owned())),
                "{name}"
            );
            let channels = |names: Vec<ChannelId>| -> Vec<String> {
                names.into_iter().map(|c| c.as_str().to_owned()).collect()
            };
            let by_summary = store
                .login_grant_summary(t0(), StdDuration::from_secs(0))
                .unwrap()
                .into_iter()
                .map(|s| s.channel)
                .collect();
            assert_eq!(channels(by_summary), ["B1", "_1", "a1"], "{name}");
            let by_count = store
                .login_grant_counts()
                .unwrap()
                .into_iter()
                .map(|c| c.channel)
                .collect();
            assert_eq!(channels(by_count), ["B1", "_1", "a1"], "{name}");
        }
    }
}
