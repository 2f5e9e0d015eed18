//! Stateless tokens on demand (docs/design.md §6, "Stateless tokens"): the cache behind
//! `GET /v1/channels/{channel}/stateless-token`, driven through the HTTP
//! app (`oneshot`, no socket) against the sandbox, a gated stub or a
//! recording mock, all on a manual wall clock:
//!
//! - 1,000 concurrent requests on a cold cache make exactly one issue at
//!   the sandbox;
//! - a refresh ahead of expiry serves the old token until the new one
//!   lands;
//! - a sandbox outage gives every waiter 503 with `Retry-After`, and the
//!   next request within 2 s does not reach LINE (then 4 s, then success);
//! - a permanent refusal is 502 naming LINE's code, held back likewise;
//! - the secret form sends exactly `grant_type`, `client_id`,
//!   `client_secret`;
//! - the local `max_issues_per_minute` guard answers 503 without calling
//!   LINE;
//! - a leader whose client hangs up does not cancel its flight;
//! - the order of refusals; a reload keeps or drops the cached token;
//! - the real daemon: config, answer, metrics, `status`, `check-config`,
//!   and no stateless token in any log, metric, status output or error.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration as StdDuration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::Duration;
use linetokd::clock::Clock as _;
use linetokd::clock::ManualClock;
use linetokd::delivery::TokenBook;
use linetokd::domain::{ChannelId, ChannelSecret};
use linetokd::http::{ApiKeys, HttpState, app};
use linetokd::line::{Endpoint, LineClient, LineClientConfig};
use linetokd::metrics::Metrics;
use linetokd::sandbox::{FaultRule, Faults, TokenKind};
use linetokd::secret::Secret;
use linetokd::stateless::{Margins, Stateless, StatelessAuth, StatelessRules, StatelessSetup};
use serde_json::Value;
use tower::ServiceExt as _;

use crate::e2e::harness::{self, PATIENCE, Stream, http_url, write_private};
use crate::observability::{DEBUG, Exposition, STEADY, linetokd, printed, scrape, status_json};
use crate::support::{LAB_CHANNEL, LAB_SECRET, Mock, Reply, sandbox_lab, signer};

const KEY: &str = "stateless-api-key-0123456789";
const PATH: &str = "/v1/channels/1234567890/stateless-token";

/// The daemon's cache, its HTTP state and what it counts.
struct Rig {
    state: HttpState,
    stateless: Arc<Stateless>,
    metrics: Arc<Metrics>,
    /// Calls to LINE's stateless issue endpoint, counted by the client.
    calls: Arc<AtomicUsize>,
}

fn rules(max_issues_per_minute: u32) -> StatelessRules {
    StatelessRules {
        margins: Margins {
            refresh_margin: Duration::minutes(2),
            refresh_ahead: Duration::minutes(5),
        },
        max_issues_per_minute,
        load_timeout: StdDuration::from_secs(10),
    }
}

fn setup(auth: StatelessAuth, identity: &str, rules: StatelessRules) -> StatelessSetup {
    StatelessSetup {
        channel: ChannelId::new(LAB_CHANNEL),
        auth,
        identity: identity.to_owned(),
        rules,
        sinks: Vec::new(),
    }
}

fn assertion() -> StatelessAuth {
    StatelessAuth::Assertion(Arc::new(signer(LAB_CHANNEL, crate::support::LAB_KID)))
}

fn secret(value: &str) -> StatelessAuth {
    StatelessAuth::Secret(ChannelSecret::new(value))
}

/// A cache for the lab channel at `base_url` on `clock`, with `setup`.
fn rig(base_url: &str, clock: &ManualClock, setup: StatelessSetup) -> Rig {
    rig_noting(base_url, clock, setup, None)
}

/// [`rig`], noting each channel's issuing state in `store` when given.
fn rig_noting(
    base_url: &str,
    clock: &ManualClock,
    setup: StatelessSetup,
    store: Option<linetokd::store::Store>,
) -> Rig {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let line = LineClient::new(
        LineClientConfig {
            base_url: base_url.to_owned(),
            timeout: StdDuration::from_secs(10),
            observer: Some(Arc::new(move |endpoint, _, _| {
                if endpoint == Endpoint::IssueStateless {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
            })),
        },
        Arc::new(clock.clone()),
    )
    .unwrap();
    let metrics = Metrics::shared();
    let mut stateless = Stateless::new(line, Arc::new(clock.clone()), Arc::clone(&metrics));
    if let Some(store) = store {
        stateless = stateless.with_store(store);
    }
    let stateless = Arc::new(stateless);
    stateless.set_channels(vec![setup]);
    let mut keys = ApiKeys::new();
    keys.name_channel(ChannelId::new(LAB_CHANNEL), "shop");
    keys.insert_stateless(ChannelId::new(LAB_CHANNEL), &Secret::new(KEY));
    Rig {
        state: HttpState {
            tokens: TokenBook::new(),
            keys: Arc::new(std::sync::RwLock::new(keys)),
            clock: Arc::new(clock.clone()),
            metrics: Some(Arc::clone(&metrics)),
            readiness: None,
            long_lived: None,
            stateless: Some(Arc::clone(&stateless)),
            login: None,
        },
        stateless,
        metrics,
        calls,
    }
}

struct Answer {
    status: StatusCode,
    retry_after: Option<u64>,
    json: Value,
}

impl Answer {
    fn token(&self) -> &str {
        assert_eq!(self.status, StatusCode::OK, "{}", self.json);
        self.json["access_token"].as_str().unwrap()
    }
}

async fn get(state: &HttpState, path: &str, key: Option<&str>) -> Answer {
    let mut request = Request::get(path);
    if let Some(key) = key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let response = app(state.clone())
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    Answer {
        status,
        retry_after,
        json: serde_json::from_slice(&body).unwrap(),
    }
}

fn counter(metrics: &Metrics, name: &str, result: &str) -> f64 {
    Exposition::parse(&metrics.render())
        .get(
            name,
            &[
                ("channel", LAB_CHANNEL),
                ("channel_name", ""),
                ("result", result),
            ],
        )
        .unwrap_or(0.0)
}

fn requests(metrics: &Metrics, result: &str) -> f64 {
    counter(metrics, "linetokd_stateless_requests_total", result)
}

fn issues(metrics: &Metrics, result: &str) -> f64 {
    counter(metrics, "linetokd_stateless_issues_total", result)
}

/// The stateless endpoint's own fault rule.
fn stateless_fault(rule: FaultRule) -> Faults {
    let mut faults = Faults::default();
    faults.endpoints.insert("/oauth2/v3/token".to_owned(), rule);
    faults
}

#[tokio::test]
async fn a_thousand_concurrent_requests_on_a_cold_cache_make_one_issue() {
    let lab = sandbox_lab().await;
    // A slow LINE, so the requests pile up behind the one flight.
    lab.sandbox
        .set_faults(stateless_fault(FaultRule {
            latency_ms: 300,
            ..FaultRule::default()
        }))
        .unwrap();
    let rig = rig(
        &lab.base_url,
        &lab.clock,
        setup(assertion(), "a", rules(30)),
    );
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let state = rig.state.clone();
            tokio::spawn(async move { get(&state, PATH, Some(KEY)).await })
        })
        .collect();
    let mut values = std::collections::BTreeSet::new();
    for task in tasks {
        let answer = task.await.unwrap();
        values.insert(answer.token().to_owned());
        assert_eq!(answer.json["token_type"], "Bearer");
        assert_eq!(answer.json["expires_in"], 900);
    }
    assert_eq!(values.len(), 1, "every request got the same token");
    let issued = lab.sandbox.tokens(&lab.channel());
    assert_eq!(issued.len(), 1, "exactly one issue at the sandbox");
    assert_eq!(issued[0].kind, TokenKind::Stateless);
    assert_eq!(rig.calls.load(Ordering::SeqCst), 1);
    // One leader; everyone else waited for it (or came after it landed).
    assert_eq!(requests(&rig.metrics, "miss"), 1.0);
    assert_eq!(
        requests(&rig.metrics, "coalesced") + requests(&rig.metrics, "hit"),
        999.0
    );
    assert!(requests(&rig.metrics, "coalesced") > 0.0);
    assert_eq!(issues(&rig.metrics, "success"), 1.0);
    let value = issued[0].access_token.expose();
    assert_eq!(values.first().map(String::as_str), Some(value));
    assert!(!rig.metrics.render().contains(value));
    // expires_at = request sent + expires_in.
    assert_eq!(
        get(&rig.state, PATH, Some(KEY)).await.json["expires_at"],
        "2026-03-01T00:15:00Z"
    );
}

/// A LINE stub whose stateless answers wait for a permit: the test
/// decides when each issue lands. Answers `stateless-token-N`.
struct Gate {
    base_url: String,
    permits: Arc<tokio::sync::Semaphore>,
    calls: tokio::sync::watch::Receiver<usize>,
    _served: crate::support::Served,
}

async fn gate() -> Gate {
    let permits = Arc::new(tokio::sync::Semaphore::new(0));
    let (tx, calls) = tokio::sync::watch::channel(0usize);
    let tx = Arc::new(tx);
    let (p, t) = (Arc::clone(&permits), Arc::clone(&tx));
    let app = axum::Router::new().route(
        "/oauth2/v3/token",
        axum::routing::post(move || {
            let (permits, tx) = (Arc::clone(&p), Arc::clone(&t));
            async move {
                let mut n = 0;
                tx.send_modify(|c| {
                    *c += 1;
                    n = *c;
                });
                permits.acquire().await.unwrap().forget();
                axum::Json(serde_json::json!({
                    "access_token": format!("eyJhbGciOiJIUzI1NiJ9.stateless-token-{n}"),
                    "expires_in": 900,
                    "token_type": "Bearer",
                }))
            }
        }),
    );
    let served = crate::support::serve(app).await;
    Gate {
        base_url: served.base_url.clone(),
        permits,
        calls,
        _served: served,
    }
}

#[tokio::test]
async fn a_refresh_ahead_of_expiry_serves_the_old_token_until_the_new_one_lands() {
    let gate = gate().await;
    let clock = crate::support::manual_clock();
    let rig = rig(&gate.base_url, &clock, setup(assertion(), "a", rules(30)));
    let mut flights = rig.stateless.flights();

    gate.permits.add_permits(1);
    let first = get(&rig.state, PATH, Some(KEY)).await;
    assert_eq!(first.token(), "eyJhbGciOiJIUzI1NiJ9.stateless-token-1");
    assert_eq!(requests(&rig.metrics, "miss"), 1.0);
    // Before refresh_ahead: a plain hit.
    clock.advance(Duration::minutes(9));
    assert_eq!(
        get(&rig.state, PATH, Some(KEY)).await.token(),
        "eyJhbGciOiJIUzI1NiJ9.stateless-token-1"
    );
    assert_eq!(requests(&rig.metrics, "hit"), 1.0);

    // 10 min in, 5 min left: served, and one background refresh starts
    // (held at the gate).
    clock.advance(Duration::minutes(1) + Duration::seconds(1));
    let mut calls = gate.calls.clone();
    assert_eq!(
        get(&rig.state, PATH, Some(KEY)).await.token(),
        "eyJhbGciOiJIUzI1NiJ9.stateless-token-1"
    );
    tokio::time::timeout(PATIENCE, calls.wait_for(|n| *n == 2))
        .await
        .expect("the background refresh reached LINE")
        .unwrap();
    // While it is in flight, the old token is served and LINE gets no
    // second refresh.
    for _ in 0..5 {
        clock.advance(Duration::seconds(10));
        assert_eq!(
            get(&rig.state, PATH, Some(KEY)).await.token(),
            "eyJhbGciOiJIUzI1NiJ9.stateless-token-1"
        );
    }
    assert_eq!(*gate.calls.borrow(), 2);
    assert_eq!(requests(&rig.metrics, "refresh_ahead"), 6.0);

    // The new token lands; from then on it is served.
    gate.permits.add_permits(1);
    tokio::time::timeout(PATIENCE, flights.wait_for(|n| *n == 2))
        .await
        .expect("the refresh finished")
        .unwrap();
    let after = get(&rig.state, PATH, Some(KEY)).await;
    assert_eq!(after.token(), "eyJhbGciOiJIUzI1NiJ9.stateless-token-2");
    assert_eq!(after.json["expires_in"], 900 - 50);
    assert_eq!(*gate.calls.borrow(), 2);
    assert_eq!(issues(&rig.metrics, "success"), 2.0);
}

#[tokio::test]
async fn a_leader_that_hangs_up_does_not_cancel_the_flight_its_waiters_wait_for() {
    let gate = gate().await;
    let clock = crate::support::manual_clock();
    let rig = rig(&gate.base_url, &clock, setup(assertion(), "a", rules(30)));
    let state = rig.state.clone();
    let leader = tokio::spawn(async move { get(&state, PATH, Some(KEY)).await });
    let mut calls = gate.calls.clone();
    tokio::time::timeout(PATIENCE, calls.wait_for(|n| *n == 1))
        .await
        .expect("the leader's call reached LINE")
        .unwrap();
    // The client goes away mid-call; another request comes.
    leader.abort();
    let state = rig.state.clone();
    let waiter = tokio::spawn(async move { get(&state, PATH, Some(KEY)).await });
    gate.permits.add_permits(1);
    let answer = waiter.await.unwrap();
    assert_eq!(answer.token(), "eyJhbGciOiJIUzI1NiJ9.stateless-token-1");
    assert_eq!(*gate.calls.borrow(), 1, "one call to LINE");
    assert_eq!(issues(&rig.metrics, "success"), 1.0);
}

#[tokio::test]
async fn an_outage_gives_every_waiter_503_and_the_next_request_within_2s_does_not_reach_line() {
    let lab = sandbox_lab().await;
    lab.sandbox
        .set_faults(stateless_fault(FaultRule {
            error_rate: 1.0,
            latency_ms: 300,
            ..FaultRule::default()
        }))
        .unwrap();
    let rig = rig(
        &lab.base_url,
        &lab.clock,
        setup(assertion(), "a", rules(30)),
    );
    let waiters: Vec<_> = (0..50)
        .map(|_| {
            let state = rig.state.clone();
            tokio::spawn(async move { get(&state, PATH, Some(KEY)).await })
        })
        .collect();
    for waiter in waiters {
        let answer = waiter.await.unwrap();
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            answer.json
        );
        assert_eq!(answer.json["error"], "line_unavailable");
        assert_eq!(answer.retry_after, Some(2));
    }
    assert_eq!(
        rig.calls.load(Ordering::SeqCst),
        1,
        "one call for 50 waiters"
    );
    assert_eq!(requests(&rig.metrics, "error"), 50.0);

    // Within the 2 s: answered at once, LINE not called.
    lab.clock.advance(Duration::seconds(1));
    let held = get(&rig.state, PATH, Some(KEY)).await;
    assert_eq!(held.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(held.retry_after, Some(1));
    assert_eq!(rig.calls.load(Ordering::SeqCst), 1);

    // After it: one more call, which fails again and doubles the wait.
    lab.clock.advance(Duration::seconds(1));
    let again = get(&rig.state, PATH, Some(KEY)).await;
    assert_eq!(again.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(again.retry_after, Some(4));
    assert_eq!(rig.calls.load(Ordering::SeqCst), 2);
    assert_eq!(issues(&rig.metrics, "transient"), 2.0);

    // LINE is back; after the 4 s the next request issues.
    lab.sandbox.set_faults(Faults::default()).unwrap();
    lab.clock.advance(Duration::seconds(3));
    assert_eq!(
        get(&rig.state, PATH, Some(KEY)).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(rig.calls.load(Ordering::SeqCst), 2);
    lab.clock.advance(Duration::seconds(1));
    let back = get(&rig.state, PATH, Some(KEY)).await;
    assert_eq!(back.status, StatusCode::OK);
    assert_eq!(rig.calls.load(Ordering::SeqCst), 3);
    assert_eq!(issues(&rig.metrics, "success"), 1.0);
}

/// The daemon notes each channel's issuing state for `linetokd status`
/// (the token itself is never stored): "failing since" the first failure
/// of a run, with the hold, and "ok" with the issue and expiry after a
/// success.
#[tokio::test]
async fn each_calls_outcome_is_noted_for_status_without_the_token() {
    let lab = sandbox_lab().await;
    let dir = tempfile::tempdir().unwrap();
    let store = linetokd::store::Store::open(&dir.path().join("linetokd.db")).unwrap();
    let note = |store: &linetokd::store::Store| {
        store
            .note(&linetokd::store::stateless_note_key(&ChannelId::new(
                LAB_CHANNEL,
            )))
            .unwrap()
            .map(|n| n.value)
    };
    let noted = |store: linetokd::store::Store, prefix: &'static str| async move {
        let deadline = tokio::time::Instant::now() + StdDuration::from_secs(30);
        loop {
            if let Some(text) = note(&store).filter(|t| t.starts_with(prefix)) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no note starting {prefix:?}: {:?}",
                note(&store)
            );
            tokio::time::sleep(StdDuration::from_millis(10)).await;
        }
    };
    lab.sandbox
        .set_faults(stateless_fault(FaultRule {
            error_rate: 1.0,
            ..FaultRule::default()
        }))
        .unwrap();
    let rig = rig_noting(
        &lab.base_url,
        &lab.clock,
        setup(assertion(), "a", rules(30)),
        Some(store.clone()),
    );
    let first = lab.clock.now();
    assert_eq!(
        get(&rig.state, PATH, Some(KEY)).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let since = first.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let failing = noted(store.clone(), "failing since").await;
    assert!(failing.contains(&since), "{failing}");
    // A second failure of the same run keeps "since" at the first.
    lab.clock.advance(Duration::seconds(2));
    assert_eq!(
        get(&rig.state, PATH, Some(KEY)).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(rig.calls.load(Ordering::SeqCst), 2);
    let deadline = tokio::time::Instant::now() + StdDuration::from_secs(30);
    let held_until =
        (lab.clock.now() + Duration::seconds(4)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    while !note(&store).is_some_and(|t| t.contains(&held_until)) {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", note(&store));
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    assert!(note(&store).unwrap().contains(&since));
    // LINE is back: "ok", and no token anywhere in the note.
    lab.sandbox.set_faults(Faults::default()).unwrap();
    lab.clock.advance(Duration::seconds(4));
    let answer = get(&rig.state, PATH, Some(KEY)).await;
    assert_eq!(answer.status, StatusCode::OK);
    let ok = noted(store.clone(), "ok: issued at").await;
    let token = answer.json["access_token"].as_str().unwrap();
    assert!(!ok.contains(token), "{ok}");
}

#[tokio::test]
async fn a_permanent_refusal_is_502_naming_lines_error_code_and_is_held_back() {
    let lab = sandbox_lab().await;
    let wrong = "not-the-channel-secret-0123456789";
    let rig = rig(
        &lab.base_url,
        &lab.clock,
        setup(secret(wrong), "s", rules(30)),
    );
    let refused = get(&rig.state, PATH, Some(KEY)).await;
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY, "{}", refused.json);
    assert_eq!(refused.json["error"], "line_refused");
    assert_eq!(refused.json["line_status"], 400);
    assert_eq!(refused.json["line_error"], "invalid_request");
    assert!(!refused.json.to_string().contains(wrong));
    let again = get(&rig.state, PATH, Some(KEY)).await;
    assert_eq!(again.status, StatusCode::BAD_GATEWAY);
    assert_eq!(rig.calls.load(Ordering::SeqCst), 1);
    assert_eq!(issues(&rig.metrics, "permanent"), 1.0);
}

#[tokio::test]
async fn the_secret_form_sends_exactly_grant_type_client_id_and_client_secret() {
    let mock = Mock::start(|_| {
        Reply::json(
            200,
            r#"{"access_token":"eyJhbGciOiJIUzI1NiJ9.from-mock","expires_in":900,"token_type":"Bearer"}"#,
        )
    })
    .await;
    let clock = crate::support::manual_clock();
    let rig = rig(
        &mock.base_url,
        &clock,
        setup(secret(LAB_SECRET), "s", rules(30)),
    );
    assert_eq!(
        get(&rig.state, PATH, Some(KEY)).await.token(),
        "eyJhbGciOiJIUzI1NiJ9.from-mock"
    );
    let seen = mock.one();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/oauth2/v3/token");
    assert_eq!(
        seen.form,
        [
            ("grant_type".to_owned(), "client_credentials".to_owned()),
            ("client_id".to_owned(), LAB_CHANNEL.to_owned()),
            ("client_secret".to_owned(), LAB_SECRET.to_owned()),
        ]
    );
    assert!(!seen.authorization);
}

#[tokio::test]
async fn the_local_guard_answers_503_without_calling_line() {
    // A token that lives less than refresh_margin is never served, so
    // every request has to issue.
    let mock = Mock::start(|_| {
        Reply::json(
            200,
            r#"{"access_token":"eyJhbGciOiJIUzI1NiJ9.short","expires_in":60,"token_type":"Bearer"}"#,
        )
    })
    .await;
    let clock = crate::support::manual_clock();
    let rig = rig(&mock.base_url, &clock, setup(assertion(), "a", rules(2)));
    for _ in 0..2 {
        assert_eq!(
            get(&rig.state, PATH, Some(KEY)).await.status,
            StatusCode::OK
        );
        clock.advance(Duration::seconds(10));
    }
    let limited = get(&rig.state, PATH, Some(KEY)).await;
    assert_eq!(limited.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(limited.json["error"], "issue_limit");
    assert_eq!(limited.retry_after, Some(40));
    assert_eq!(mock.seen().len(), 2);
    clock.advance(Duration::seconds(40));
    assert_eq!(
        get(&rig.state, PATH, Some(KEY)).await.status,
        StatusCode::OK
    );
    assert_eq!(mock.seen().len(), 3);
}

#[tokio::test]
async fn refusals_come_in_the_token_apis_order() {
    let lab = sandbox_lab().await;
    let rig = rig(
        &lab.base_url,
        &lab.clock,
        setup(assertion(), "a", rules(30)),
    );
    {
        let mut keys = rig.state.keys.write().unwrap();
        keys.insert_stateless(ChannelId::new("555"), &Secret::new("key-of-555"));
        keys.insert(
            ChannelId::new(LAB_CHANNEL),
            linetokd::domain::GroupName::new("g"),
            Some(&Secret::new("group-key")),
        );
    }
    let code = |a: &Answer| a.json["error"].as_str().unwrap().to_owned();
    let none = get(&rig.state, PATH, None).await;
    assert_eq!(
        (none.status, code(&none)),
        (StatusCode::UNAUTHORIZED, "missing_credentials".into())
    );
    let wrong = get(&rig.state, PATH, Some("nope")).await;
    assert_eq!(
        (wrong.status, code(&wrong)),
        (StatusCode::FORBIDDEN, "invalid_key".into())
    );
    let wrong_elsewhere = get(&rig.state, "/v1/channels/999/stateless-token", Some("nope")).await;
    assert_eq!(wrong_elsewhere.status, StatusCode::FORBIDDEN);
    let not_enabled = get(&rig.state, "/v1/channels/999/stateless-token", Some(KEY)).await;
    assert_eq!(
        (not_enabled.status, code(&not_enabled)),
        (StatusCode::NOT_FOUND, "stateless_not_enabled".into())
    );
    let other = get(&rig.state, PATH, Some("key-of-555")).await;
    assert_eq!(
        (other.status, code(&other)),
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    let group_key = get(&rig.state, PATH, Some("group-key")).await;
    assert_eq!(group_key.status, StatusCode::FORBIDDEN);
    // By the channel's name too.
    let by_name = get(&rig.state, "/v1/channels/shop/stateless-token", Some(KEY)).await;
    assert_eq!(by_name.status, StatusCode::OK);
    assert_eq!(rig.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_reload_keeps_the_token_unless_the_credentials_changed() {
    let lab = sandbox_lab().await;
    let rig = rig(
        &lab.base_url,
        &lab.clock,
        setup(assertion(), "a", rules(30)),
    );
    let first = get(&rig.state, PATH, Some(KEY)).await.token().to_owned();
    // New margins, same credentials: the token stays; the new
    // refresh_ahead (10 min) applies at once.
    let mut wider = rules(30);
    wider.margins.refresh_ahead = Duration::minutes(10);
    rig.stateless
        .set_channels(vec![setup(assertion(), "a", wider)]);
    lab.clock.advance(Duration::minutes(6));
    assert_eq!(get(&rig.state, PATH, Some(KEY)).await.token(), first);
    assert_eq!(requests(&rig.metrics, "refresh_ahead"), 1.0);
    let mut flights = rig.stateless.flights();
    flights
        .wait_for(|n| *n == 2)
        .await
        .expect("the refresh finished");
    let refreshed = get(&rig.state, PATH, Some(KEY)).await.token().to_owned();
    assert_ne!(refreshed, first);
    // Other credentials: the cached token is dropped.
    rig.stateless
        .set_channels(vec![setup(secret(LAB_SECRET), "s", rules(30))]);
    let fresh = get(&rig.state, PATH, Some(KEY)).await.token().to_owned();
    assert_ne!(fresh, refreshed);
    assert_eq!(rig.calls.load(Ordering::SeqCst), 3);
    // Gone from the config: the channel serves nothing.
    rig.stateless.set_channels(Vec::new());
    assert_eq!(
        get(&rig.state, PATH, Some(KEY)).await.status,
        StatusCode::NOT_FOUND
    );
}

/// The real daemon with `[channel.stateless]`: the API answers, the sink
/// is written, the metrics count, `status` and `check-config` describe it,
/// and no stateless token appears in any output.
#[tokio::test]
async fn the_daemon_serves_stateless_tokens_and_prints_none() {
    let lab = harness::Lab::start(STEADY, "info").await;
    let key_file = lab.dir().join("stateless.apikey");
    write_private(&key_file, KEY);
    let sink = lab.dir().join("sinks").join("stateless.json");
    let stateless = format!(
        "\n  [channel.stateless]\n  auth = \"secret\"\n  refresh_margin = \"1m\"\n  \
         refresh_ahead = \"4m\"\n  max_issues_per_minute = 10\n  api_key_file = \"{}\"\n  \
         sinks = [{{ path = \"{}\", format = \"json\" }}]\n",
        key_file.display(),
        sink.display()
    );
    lab.replace_config(&lab.config_text(STEADY, &stateless));
    let mut daemon = lab.run("daemon", DEBUG, &[]);
    let url = http_url(&daemon).await;

    let client = reqwest::Client::new();
    let fetch = |key: &'static str| {
        client
            .get(format!("{url}/v1/channels/chan/stateless-token"))
            .bearer_auth(key)
            .send()
    };
    // The channel has a sink: its keeper issues at start, with no request.
    daemon
        .wait_for(0, "the stateless sink written", |l| {
            l.is("stateless sink written")
        })
        .await;
    let answer = fetch(KEY).await.unwrap();
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    let token = answer["access_token"].as_str().unwrap().to_owned();
    assert_eq!(answer["token_type"], "Bearer");
    let again: Value = fetch(KEY).await.unwrap().json().await.unwrap();
    assert_eq!(again["access_token"], token.as_str());
    assert_eq!(fetch("wrong-key").await.unwrap().status(), 403);
    let written: Value = serde_json::from_slice(&std::fs::read(&sink).unwrap()).unwrap();
    assert_eq!(written["access_token"], token.as_str());
    assert_eq!(written["channel"], harness::CHANNEL);

    let metrics = scrape(&url).await;
    let labels = |result| {
        [
            ("channel", harness::CHANNEL),
            ("channel_name", "chan"),
            ("result", result),
        ]
    };
    // Both requests were served from the keeper's token.
    assert_eq!(
        metrics.get("linetokd_stateless_requests_total", &labels("miss")),
        None
    );
    assert_eq!(
        metrics.get("linetokd_stateless_requests_total", &labels("hit")),
        Some(2.0)
    );
    assert_eq!(
        metrics.get("linetokd_stateless_issues_total", &labels("success")),
        Some(1.0)
    );
    let raw_metrics = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!raw_metrics.contains(&token));

    // `status` (a separate process) shows the kind from the config, and
    // how the last call to LINE went (noted by the daemon off the flight,
    // so it may take a moment).
    let deadline = tokio::time::Instant::now() + StdDuration::from_secs(30);
    let status = loop {
        let status = status_json(&lab.config).await;
        let state = status["channels"][0]["stateless"]["state"].as_str();
        if state.is_some_and(|s| s.starts_with("ok: issued at")) {
            break status;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    };
    let channel = &status["channels"][0];
    assert_eq!(channel["stateless"]["auth"], "secret");
    assert_eq!(channel["stateless"]["refresh_margin_secs"], 60);
    assert_eq!(channel["stateless"]["refresh_ahead_secs"], 240);
    assert_eq!(channel["stateless"]["max_issues_per_minute"], 10);
    assert!(!status.to_string().contains(&token));
    let config = lab.config.to_str().unwrap();
    let (code, text) = linetokd("status", &["status", "--config", config], &[]).await;
    assert_eq!(code, 0, "{}", text.all_text());
    assert!(
        printed(&text, Stream::Stdout).contains("stateless tokens: on demand by secret")
            && printed(&text, Stream::Stdout).contains("stateless state ("),
        "{}",
        text.all_text()
    );
    let (code, checked) =
        linetokd("check-config", &["check-config", "--config", config], &[]).await;
    assert_eq!(code, 0, "{}", checked.all_text());
    let resolved = printed(&checked, Stream::Stdout);
    assert!(resolved.contains("[channel.stateless]"), "{resolved}");
    assert!(resolved.contains("refresh_ahead = \"4m\""), "{resolved}");
    assert!(!resolved.contains(KEY));

    // Never stored: the database holds no stateless token.
    let db = std::fs::read(&lab.db).unwrap();
    assert!(!db.windows(token.len()).any(|w| w == token.as_bytes()));

    daemon.signal("TERM");
    daemon.exit_ok().await;
    let searched = lab
        .assert_nothing_secret_printed(&[&daemon, &text, &checked])
        .await;
    assert!(searched >= 1);
}

/// A channel with sinks keeps them fresh without any request: the keeper
/// issues at once (cold), again as the token enters `refresh_ahead`, and
/// the file always holds the newest token; a channel without sinks issues
/// nothing by itself.
#[tokio::test]
async fn sinks_are_kept_fresh_without_requests() {
    use linetokd::delivery::sink::{SinkFormat, SinkSpec};
    let lab = sandbox_lab().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stateless.raw");
    let mut with_sinks = setup(assertion(), "a", rules(30));
    with_sinks.sinks = vec![SinkSpec {
        path: path.clone(),
        format: SinkFormat::Raw,
        mode: 0o600,
        owner: None,
        group: None,
    }];
    let rig = rig(&lab.base_url, &lab.clock, with_sinks);
    let mut flights = rig.stateless.flights();
    let on_file = || std::fs::read_to_string(&path).unwrap_or_default();
    let issued = |lab: &crate::support::SandboxLab| {
        lab.sandbox
            .tokens_since(&lab.channel(), 0)
            .into_iter()
            .filter(|t| t.kind == TokenKind::Stateless)
            .map(|t| t.access_token.expose().to_owned())
            .collect::<Vec<_>>()
    };

    // Cold: the keeper issues with no request, and the file gets the token.
    flights.wait_for(|n| *n == 1).await.unwrap();
    let first = issued(&lab);
    assert_eq!(first.len(), 1);
    wait_until("the sink holds the first token", || on_file() == first[0]).await;
    assert_eq!(rig.calls.load(Ordering::SeqCst), 1);

    // Nothing more until the token enters refresh_ahead (15m - 5m).
    lab.clock.advance(Duration::minutes(9));
    tokio::task::yield_now().await;
    assert_eq!(issued(&lab).len(), 1);
    lab.clock
        .advance(Duration::minutes(1) + Duration::seconds(1));
    flights.wait_for(|n| *n == 2).await.unwrap();
    let both = issued(&lab);
    assert_eq!(both.len(), 2);
    wait_until("the sink holds the refreshed token", || {
        on_file() == both[1]
    })
    .await;
    // Served from the cache now, with no further call.
    assert_eq!(get(&rig.state, PATH, Some(KEY)).await.token(), both[1]);
    assert_eq!(rig.calls.load(Ordering::SeqCst), 2);

    // Without sinks nothing is issued until a request asks.
    rig.stateless
        .set_channels(vec![setup(secret(LAB_SECRET), "s", rules(30))]);
    lab.clock.advance(Duration::minutes(30));
    tokio::task::yield_now().await;
    assert_eq!(rig.calls.load(Ordering::SeqCst), 2);
}

/// Waits (polling on real time, bounded) until `cond` holds: the sink is
/// written by a task of its own after the flight ends.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        tokio::time::sleep(StdDuration::from_millis(5)).await;
    }
    panic!("{what}: not within 10 s");
}
