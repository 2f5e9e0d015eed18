//! The token API (`http::app`) driven with tower's `oneshot`, no socket:
//! every refusal (no key, malformed header, two headers, wrong key, another
//! group's key, a group without a key, unknown channel or group, nothing
//! issued yet) has its status and JSON error code, and no refusal body
//! carries any token; the right key gets the current and previous tokens,
//! with the channel named by its ID or its name.
//!
//! Then the listener itself (`http::serve`) on a port-0 socket: its
//! connection cap, and silent or half-sent connections closed by the
//! header-read timeout so a real request gets through a flood of them.
//! Last, the real daemon against the sandbox: the API's paths,
//! `linetokd token` and `linetokd rotate` take the channel's name.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::Duration;
use linetokd::clock::{Clock as _, ManualClock};
use linetokd::delivery::{GroupTokens, PublishedToken, TokenBook};
use linetokd::domain::{AccessToken, ChannelId, GroupName, KeyId};
use linetokd::http::{ApiKeys, HttpState, ServeSettings, app, serve};
use linetokd::secret::Secret;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::e2e::harness::{self, GROUPS, PATIENCE, http_url};
use crate::observability::{DEBUG, STEADY, group_toml, linetokd, printed, sink_written};
use crate::support::manual_clock;

const CHANNEL: &str = "1234567890";
/// The channel's configured name, which the paths take as well as its ID.
const CHANNEL_NAME: &str = "shop-bot";
const KEY_A: &str = "api-key-of-group-a-0123456789";
const KEY_B: &str = "api-key-of-group-b-9876543210";

/// Every token value the lab publishes; no refusal may contain any.
const TOKENS: [&str; 3] = [
    "eyJhbGciOiJIUzI1NiJ9.current-A-token-value",
    "eyJhbGciOiJIUzI1NiJ9.previous-A-token-value",
    "eyJhbGciOiJIUzI1NiJ9.current-B-token-value",
];

struct Lab {
    state: HttpState,
    clock: ManualClock,
}

fn published(key: &str, value: &str, clock: &ManualClock, lives: Duration) -> PublishedToken {
    PublishedToken {
        key_id: KeyId::new(key),
        token: AccessToken::new(value),
        issued_at: clock.now(),
        expires_at: clock.now() + lives,
    }
}

/// Channel CHANNEL with groups a (current + previous), b (current only),
/// keyless (no api_key_file, has a token) and fresh (has a key, nothing
/// issued yet).
fn lab() -> Lab {
    let clock = manual_clock();
    let channel = ChannelId::new(CHANNEL);
    let book = TokenBook::new();
    let now = clock.now();
    book.update(&channel, &GroupName::new("a"), |_| GroupTokens {
        current: Some(published("kid-a2", TOKENS[0], &clock, Duration::days(30))),
        previous: Some(Box::new(published(
            "kid-a1",
            TOKENS[1],
            &clock,
            Duration::days(1),
        ))),
    });
    book.update(&channel, &GroupName::new("b"), |g| {
        g.with_new(
            published("kid-b1", TOKENS[2], &clock, Duration::days(30)),
            now,
        )
    });
    book.update(&channel, &GroupName::new("keyless"), |g| {
        g.with_new(
            published("kid-k1", "keyless-token-value", &clock, Duration::days(30)),
            now,
        )
    });
    let mut keys = ApiKeys::new();
    keys.name_channel(channel.clone(), CHANNEL_NAME);
    keys.insert(
        channel.clone(),
        GroupName::new("a"),
        Some(&Secret::new(KEY_A)),
    );
    keys.insert(
        channel.clone(),
        GroupName::new("b"),
        Some(&Secret::new(KEY_B)),
    );
    keys.insert(channel.clone(), GroupName::new("keyless"), None);
    keys.insert(
        channel,
        GroupName::new("fresh"),
        Some(&Secret::new("api-key-of-fresh")),
    );
    Lab {
        state: HttpState {
            tokens: book,
            keys: Arc::new(std::sync::RwLock::new(keys)),
            clock: Arc::new(clock.clone()),
            metrics: None,
            readiness: None,
            long_lived: None,
            stateless: None,
            login: None,
        },
        clock,
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn get(state: &HttpState, path: &str, authorization: Option<&str>) -> Answer {
    get_with(state, path, authorization.as_slice()).await
}

/// [`get`] with any number of `Authorization` headers.
async fn get_with(state: &HttpState, path: &str, authorizations: &[&str]) -> Answer {
    let mut request = Request::get(path);
    for value in authorizations {
        request = request.header(header::AUTHORIZATION, *value);
    }
    let response = app(state.clone())
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    Answer {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

fn path(channel: &str, group: &str) -> String {
    format!("/v1/channels/{channel}/groups/{group}/token")
}

/// Asserts a refusal: the status, a JSON body `{error, message}` with the
/// given code, and not a single token value anywhere in it.
fn assert_refusal(answer: &Answer, status: StatusCode, code: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    let json: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(json["error"], code, "{}", answer.body);
    assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(json.as_object().unwrap().len(), 2, "{}", answer.body);
    for token in TOKENS.iter().chain(&["keyless-token-value"]) {
        assert!(
            !answer.body.contains(token),
            "refusal leaks a token: {}",
            answer.body
        );
    }
    assert!(!answer.body.contains(KEY_A) && !answer.body.contains(KEY_B));
}

#[tokio::test]
async fn no_key_is_401_with_a_bearer_challenge() {
    let lab = lab();
    let answer = get(&lab.state, &path(CHANNEL, "a"), None).await;
    assert_refusal(&answer, StatusCode::UNAUTHORIZED, "missing_credentials");
    let challenge = answer.headers[header::WWW_AUTHENTICATE].to_str().unwrap();
    assert!(challenge.starts_with("Bearer"), "{challenge}");
}

#[tokio::test]
async fn a_malformed_authorization_header_is_401() {
    let lab = lab();
    for bad in [
        "Bearer".to_owned(),
        "Bearer ".to_owned(),
        format!("Basic {KEY_A}"),
        KEY_A.to_owned(),
        format!("Bearer {KEY_A} extra"),
    ] {
        let answer = get(&lab.state, &path(CHANNEL, "a"), Some(&bad)).await;
        assert_refusal(&answer, StatusCode::UNAUTHORIZED, "malformed_credentials");
        assert!(
            answer.headers.contains_key(header::WWW_AUTHENTICATE),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn a_wrong_key_is_403() {
    let lab = lab();
    let answer = get(&lab.state, &path(CHANNEL, "a"), Some("Bearer not-a-key")).await;
    assert_refusal(&answer, StatusCode::FORBIDDEN, "invalid_key");
    // A prefix of the right key is not the right key.
    let prefix = format!("Bearer {}", &KEY_A[..KEY_A.len() - 1]);
    let answer = get(&lab.state, &path(CHANNEL, "a"), Some(&prefix)).await;
    assert_refusal(&answer, StatusCode::FORBIDDEN, "invalid_key");
}

#[tokio::test]
async fn another_groups_key_is_403() {
    let lab = lab();
    let answer = get(
        &lab.state,
        &path(CHANNEL, "a"),
        Some(&format!("Bearer {KEY_B}")),
    )
    .await;
    assert_refusal(&answer, StatusCode::FORBIDDEN, "forbidden");
    let answer = get(
        &lab.state,
        &path(CHANNEL, "b"),
        Some(&format!("Bearer {KEY_A}")),
    )
    .await;
    assert_refusal(&answer, StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test]
async fn a_group_without_an_api_key_is_closed_to_every_key() {
    let lab = lab();
    let answer = get(
        &lab.state,
        &path(CHANNEL, "keyless"),
        Some(&format!("Bearer {KEY_A}")),
    )
    .await;
    assert_refusal(&answer, StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test]
async fn an_unknown_channel_or_group_is_404_for_a_valid_key_and_403_otherwise() {
    let lab = lab();
    let bearer = format!("Bearer {KEY_A}");
    for p in [path(CHANNEL, "nope"), path("999", "a"), path("999", "nope")] {
        let answer = get(&lab.state, &p, Some(&bearer)).await;
        assert_refusal(&answer, StatusCode::NOT_FOUND, "unknown_group");
        // Without a valid key, nothing tells what exists.
        let answer = get(&lab.state, &p, Some("Bearer guess")).await;
        assert_refusal(&answer, StatusCode::FORBIDDEN, "invalid_key");
    }
}

#[tokio::test]
async fn a_group_with_nothing_issued_yet_is_503_not_issued() {
    let lab = lab();
    let answer = get(
        &lab.state,
        &path(CHANNEL, "fresh"),
        Some("Bearer api-key-of-fresh"),
    )
    .await;
    assert_refusal(&answer, StatusCode::SERVICE_UNAVAILABLE, "not_issued");
    assert!(answer.headers.contains_key(header::RETRY_AFTER));
}

#[tokio::test]
async fn the_right_key_gets_current_and_previous() {
    let lab = lab();
    let answer = get(
        &lab.state,
        &path(CHANNEL, "a"),
        Some(&format!("Bearer {KEY_A}")),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.headers[header::CACHE_CONTROL], "no-store");
    let json: Value = serde_json::from_str(&answer.body).unwrap();
    let now = lab.clock.now();
    let rfc =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    assert_eq!(
        json,
        serde_json::json!({
            "access_token": TOKENS[0],
            "token_type": "Bearer",
            "key_id": "kid-a2",
            "expires_at": rfc(now + Duration::days(30)),
            "issued_at": rfc(now),
            "channel": CHANNEL,
            "group": "a",
            "previous": {
                "access_token": TOKENS[1],
                "key_id": "kid-a1",
                "expires_at": rfc(now + Duration::days(1)),
            },
        })
    );
    // The scheme is case-insensitive; b has no previous token.
    let answer = get(
        &lab.state,
        &path(CHANNEL, "b"),
        Some(&format!("bearer {KEY_B}")),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let json: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(json["access_token"], TOKENS[2]);
    assert_eq!(json["previous"], Value::Null);
}

#[tokio::test]
async fn expired_tokens_are_never_served() {
    let lab = lab();
    let bearer = format!("Bearer {KEY_A}");
    // Past the previous token's expiry: only the current one is served.
    lab.clock.advance(Duration::days(2));
    let answer = get(&lab.state, &path(CHANNEL, "a"), Some(&bearer)).await;
    let json: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(json["key_id"], "kid-a2");
    assert_eq!(json["previous"], Value::Null);
    // Past both: nothing to serve, even though the book still holds them.
    lab.clock.advance(Duration::days(30));
    let answer = get(&lab.state, &path(CHANNEL, "a"), Some(&bearer)).await;
    assert_refusal(&answer, StatusCode::SERVICE_UNAVAILABLE, "not_issued");
}

#[tokio::test]
async fn healthz_answers_ok() {
    let lab = lab();
    let answer = get(&lab.state, "/healthz", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "ok");
}

#[tokio::test]
async fn two_authorization_headers_are_400_whatever_they_hold() {
    let lab = lab();
    let right = format!("Bearer {KEY_A}");
    let other = format!("Bearer {KEY_B}");
    for pair in [
        [right.as_str(), right.as_str()],
        [right.as_str(), other.as_str()],
        [other.as_str(), right.as_str()],
        [right.as_str(), "Basic eDp5"],
    ] {
        let answer = get_with(&lab.state, &path(CHANNEL, "a"), &pair).await;
        assert_refusal(&answer, StatusCode::BAD_REQUEST, "ambiguous_credentials");
        let json: Value = serde_json::from_str(&answer.body).unwrap();
        assert!(
            json["message"]
                .as_str()
                .unwrap()
                .contains("more than one Authorization header"),
            "{}",
            answer.body
        );
    }
}

#[tokio::test]
async fn the_channel_is_named_by_its_id_or_its_name() {
    let lab = lab();
    let bearer = format!("Bearer {KEY_A}");
    let by_id = get(&lab.state, &path(CHANNEL, "a"), Some(&bearer)).await;
    let by_name = get(&lab.state, &path(CHANNEL_NAME, "a"), Some(&bearer)).await;
    assert_eq!(by_id.status, StatusCode::OK, "{}", by_id.body);
    assert_eq!(by_name.status, StatusCode::OK, "{}", by_name.body);
    // The same document, which names the channel by its ID.
    assert_eq!(by_name.body, by_id.body);
    let json: Value = serde_json::from_str(&by_name.body).unwrap();
    assert_eq!(json["channel"], CHANNEL);
    assert_eq!(json["access_token"], TOKENS[0]);

    // By name, the other refusals are what they are by ID.
    let answer = get(&lab.state, &path(CHANNEL_NAME, "b"), Some(&bearer)).await;
    assert_refusal(&answer, StatusCode::FORBIDDEN, "forbidden");
    let answer = get(&lab.state, &path(CHANNEL_NAME, "nope"), Some(&bearer)).await;
    assert_refusal(&answer, StatusCode::NOT_FOUND, "unknown_group");
    // Names are exact: no case folding, no other channel's name.
    for other in ["Shop-Bot", "other-bot"] {
        let answer = get(&lab.state, &path(other, "a"), Some(&bearer)).await;
        assert_refusal(&answer, StatusCode::NOT_FOUND, "unknown_group");
    }
}

// ---------------------------------------------------------------------------
// the listener: connection cap and timeouts

/// Serves the lab's app on a fresh port-0 socket with `settings`.
async fn listen(
    state: HttpState,
    settings: ServeSettings,
) -> (
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(listener, state, settings, shutdown.clone()));
    (addr, shutdown, server)
}

/// Connects and sends `GET /healthz`; the answer is read by
/// [`answer_of`].
async fn healthz_request(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: linetokd\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    stream
}

/// Everything the server sends until it closes.
async fn answer_of(mut stream: TcpStream) -> String {
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8(answer).unwrap()
}

/// Waits until the server closes `stream` (end of file or reset), having
/// sent nothing.
async fn closed_by_the_server(mut stream: TcpStream) {
    let mut buf = [0u8; 256];
    match tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(n)) => panic!(
            "the server answered a silent connection: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(_) => panic!("the server kept a silent connection open for {PATIENCE:?}"),
    }
}

#[tokio::test]
async fn at_the_connection_cap_a_new_connection_waits_for_a_free_slot() {
    let lab = lab();
    // Timeouts far beyond the test: only a closed connection frees a slot.
    let settings = ServeSettings {
        max_connections: 2,
        header_read_timeout: Duration::hours(1).to_std().unwrap(),
        idle_timeout: Duration::hours(1).to_std().unwrap(),
    };
    let (addr, shutdown, server) = listen(lab.state.clone(), settings).await;
    // The kernel queues connections in order, so these two take the slots.
    let first = TcpStream::connect(addr).await.unwrap();
    let second = TcpStream::connect(addr).await.unwrap();
    let mut waiting = tokio::spawn(answer_of(healthz_request(addr).await));
    // Waiting for nothing to happen has no event to wait on: half a second
    // with no answer shows the cap holds (a broken cap answers in
    // microseconds; a slow machine can only make this pass, not fail).
    let early = tokio::time::timeout(std::time::Duration::from_millis(500), &mut waiting).await;
    assert!(early.is_err(), "answered past the cap: {early:?}");
    // A client hangs up: its slot goes to the waiting connection.
    drop(first);
    let answer = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("a freed slot was not given to the waiting connection")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");

    // Shutdown closes the idle connection and ends the server.
    shutdown.cancel();
    closed_by_the_server(second).await;
    tokio::time::timeout(PATIENCE, server)
        .await
        .expect("the server did not stop")
        .unwrap();
}

#[tokio::test]
async fn silent_and_half_sent_connections_beyond_the_cap_cannot_starve_a_real_request() {
    let lab = lab();
    let settings = ServeSettings {
        max_connections: 4,
        header_read_timeout: std::time::Duration::from_millis(300),
        idle_timeout: Duration::hours(1).to_std().unwrap(),
    };
    let (addr, shutdown, server) = listen(lab.state.clone(), settings).await;
    // Three times the cap: connections that send nothing, and connections
    // that send half a request head and stop (slowloris).
    let mut holders = Vec::new();
    for i in 0..12 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        if i % 2 == 1 {
            stream
                .write_all(b"GET /v1/channels/1234567890/groups/a/token HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        holders.push(stream);
    }
    // Queued behind all of them, a real request is answered once the
    // header timeout has cleared the way.
    let answer = tokio::time::timeout(PATIENCE, answer_of(healthz_request(addr).await))
        .await
        .expect("a real request starved behind half-open connections");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // And every one of them was closed by the server, not left open.
    for holder in holders {
        closed_by_the_server(holder).await;
    }
    shutdown.cancel();
    tokio::time::timeout(PATIENCE, server)
        .await
        .expect("the server did not stop")
        .unwrap();
}

/// The systemd unit's descriptor limit leaves room above the listener's
/// connection cap: at the cap, the daemon still has descriptors for its
/// database, its control socket, LINE and its sinks.
#[test]
fn the_units_descriptor_limit_is_at_least_twice_the_connection_cap() {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/linetokd.service"),
    )
    .unwrap();
    let limits: Vec<u64> = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("LimitNOFILE="))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("LimitNOFILE={v}")))
        .collect();
    let [limit] = limits[..] else {
        panic!("LimitNOFILE= set {} times", limits.len())
    };
    let cap = ServeSettings::default().max_connections as u64;
    assert!(limit >= 2 * cap, "LimitNOFILE={limit} for a cap of {cap}");
}

// ---------------------------------------------------------------------------
// the real daemon: names everywhere

#[tokio::test]
async fn the_daemon_takes_a_channels_name_in_the_api_token_and_rotate() {
    // The harness names its channel "chan".
    const NAME: &str = "chan";
    let lab = harness::Lab::start(STEADY, "info").await;
    let groups: String = GROUPS
        .iter()
        .map(|g| group_toml(&lab, g, Some(&format!("api-key-of-{g}"))))
        .collect();
    lab.replace_config(&lab.config_text(STEADY, &groups));
    let mut daemon = lab.run("daemon", DEBUG, &[]);
    let url = http_url(&daemon).await;
    daemon
        .wait_for(0, "a's sink written", sink_written("a"))
        .await;

    let client = reqwest::Client::new();
    let fetch = |channel: &str| {
        client
            .get(format!("{url}/v1/channels/{channel}/groups/a/token"))
            .bearer_auth("api-key-of-a")
            .send()
    };
    let by_id = fetch(harness::CHANNEL).await.unwrap();
    assert_eq!(by_id.status(), 200);
    let by_id: Value = by_id.json().await.unwrap();
    let by_name = fetch(NAME).await.unwrap();
    assert_eq!(by_name.status(), 200);
    let by_name: Value = by_name.json().await.unwrap();
    assert_eq!(by_name, by_id);
    assert_eq!(by_name["channel"], harness::CHANNEL);
    assert_eq!(fetch("no-such-channel").await.unwrap().status(), 404);

    // `linetokd token --channel <name>` reads the same token from the store.
    let config = lab.config.to_str().unwrap();
    let (code, token) = linetokd(
        "token",
        &[
            "token",
            "--channel",
            NAME,
            "--group",
            "a",
            "--config",
            config,
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{}", token.all_text());
    assert_eq!(
        printed(&token, harness::Stream::Stdout).trim_end(),
        by_id["access_token"].as_str().unwrap()
    );
    let (code, unknown) = linetokd(
        "token",
        &[
            "token",
            "--channel",
            "no-such-channel",
            "--group",
            "a",
            "--config",
            config,
        ],
        &[],
    )
    .await;
    assert_eq!(code, 2, "{}", unknown.all_text());
    assert!(
        printed(&unknown, harness::Stream::Stderr)
            .contains("channel no-such-channel is not configured"),
        "{}",
        unknown.all_text()
    );

    // `linetokd rotate --channel <name>`: the daemon resolves the name and
    // reports by ID.
    let (code, rotate) = linetokd(
        "rotate",
        &[
            "rotate",
            "--channel",
            NAME,
            "--group",
            "a",
            "--config",
            config,
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{}", rotate.all_text());
    assert!(
        printed(&rotate, harness::Stream::Stdout)
            .contains(&format!("channel {} group a", harness::CHANNEL)),
        "{}",
        rotate.all_text()
    );

    daemon.signal("TERM");
    daemon.exit_ok().await;
    lab.assert_nothing_secret_printed(&[&daemon, &rotate, &unknown])
        .await;
}
