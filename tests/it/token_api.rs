//! The token API (`http::app`) driven with tower's `oneshot`, no socket:
//! every refusal (no key, malformed header, wrong key, another group's key,
//! a group without a key, unknown channel or group, nothing issued yet) has
//! its status and JSON error code, and no refusal body carries any token;
//! the right key gets the current and previous tokens.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::Duration;
use linetokd::clock::{Clock as _, ManualClock};
use linetokd::delivery::{GroupTokens, PublishedToken, TokenBook};
use linetokd::domain::{AccessToken, ChannelId, GroupName, KeyId};
use linetokd::http::{ApiKeys, HttpState, app};
use linetokd::secret::Secret;
use serde_json::Value;
use tower::ServiceExt as _;

use crate::support::manual_clock;

const CHANNEL: &str = "1234567890";
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
        previous: Some(published("kid-a1", TOKENS[1], &clock, Duration::days(1))),
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
    let mut request = Request::get(path);
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
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
