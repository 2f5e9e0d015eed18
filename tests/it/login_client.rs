//! The LINE Login client against a [`Mock`]: the exact shape of every
//! request (form fields, no empty fields, headers, the JSON body of
//! deauthorize), the answers, and the classification of failures
//! (`invalid_grant`, `invalid_client`, 429, transient, an unusable success).
//! Every error is checked for leaks of every credential the request
//! carried.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use linetokd::domain::{AccessToken, ChannelId, ChannelSecret, RefreshToken};
use linetokd::line::login::{LoginClient, LoginEndpoint, LoginError};
use linetokd::line::{Deauthorization, LineError, RequestObserver, Verification};

use crate::support::{self, Mock, Reply, Seen, assert_leaks_nothing};

const USER_TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.USER-token-never-shown.sig";
const CHANNEL_TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.CHANNEL-token-never-shown.sig";
const REFRESH: &str = "REFRESH-token-never-shown-0123";
const SECRET: &str = "login-SECRET-never-shown";
const CODE: &str = "CODE-never-shown-abcdef";
const CHANNEL: &str = "1660000000";
const TIMEOUT: Duration = Duration::from_secs(10);

const REFRESHED: &str = r#"{"access_token":"eyJhbGciOiJIUzI1NiJ9.NEW-access.sig","expires_in":2592000,"refresh_token":"NEW-refresh-0123456789","scope":"profile openid","token_type":"Bearer"}"#;

fn channel() -> ChannelId {
    ChannelId::new(CHANNEL)
}

fn secret() -> ChannelSecret {
    ChannelSecret::new(SECRET)
}

fn refresh_token() -> RefreshToken {
    RefreshToken::new(REFRESH)
}

fn client_for(mock: &Mock) -> LoginClient {
    let line = support::line_client(&mock.base_url, &support::manual_clock(), TIMEOUT);
    LoginClient::new(line, None)
}

/// Checks `err` against the fixed credentials and every value the mock
/// received but the public ones (grant types, channel ID, redirect URI).
fn assert_no_leak(err: &LoginError, mock: &Mock) {
    let public = [
        "refresh_token",
        "authorization_code",
        CHANNEL,
        "https://app.example/cb",
    ];
    let seen: Vec<String> = mock.seen().iter().flat_map(Seen::values).collect();
    let mut secrets: Vec<&str> = seen
        .iter()
        .map(String::as_str)
        .filter(|v| !public.contains(v))
        .collect();
    secrets.extend([USER_TOKEN, CHANNEL_TOKEN, REFRESH, SECRET, CODE]);
    assert_leaks_nothing(err, &secrets);
}

fn keys(seen: &Seen) -> Vec<&str> {
    seen.form.iter().map(|(k, _)| k.as_str()).collect()
}

#[tokio::test]
async fn code_exchange_sends_the_documented_form() {
    let mock = Mock::start(|_| {
        Reply::json(
            200,
            r#"{"access_token":"eyJhbGciOiJIUzI1NiJ9.a.b","expires_in":2592000,"id_token":"eyJ.x.y","refresh_token":"Aa1FdeggRhTnPNNpxr8p","scope":"profile openid","token_type":"Bearer"}"#,
        )
    })
    .await;
    let client = client_for(&mock);
    let answer = client
        .exchange_code(&channel(), &secret(), CODE, "https://app.example/cb", None)
        .await
        .unwrap();
    assert_eq!(answer.expires_in, 2_592_000);
    assert_eq!(
        answer.refresh_token.as_ref().map(RefreshToken::expose),
        Some("Aa1FdeggRhTnPNNpxr8p")
    );
    assert!(answer.id_token.is_some());
    client
        .exchange_code(
            &channel(),
            &secret(),
            CODE,
            "https://app.example/cb",
            Some("v".repeat(43).as_str()),
        )
        .await
        .unwrap();
    let seen = mock.seen();
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/oauth2/v2.1/token");
    assert_eq!(
        seen[0].content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert!(!seen[0].authorization);
    assert_eq!(
        keys(&seen[0]),
        [
            "grant_type",
            "code",
            "redirect_uri",
            "client_id",
            "client_secret"
        ]
    );
    assert_eq!(seen[0].param("grant_type"), Some("authorization_code"));
    assert_eq!(seen[0].param("code"), Some(CODE));
    assert_eq!(
        seen[0].param("redirect_uri"),
        Some("https://app.example/cb")
    );
    assert_eq!(seen[0].param("client_id"), Some(CHANNEL));
    assert_eq!(seen[0].param("client_secret"), Some(SECRET));
    assert_eq!(
        seen[1].param("code_verifier"),
        Some("v".repeat(43).as_str())
    );
}

#[tokio::test]
async fn refresh_sends_the_secret_only_when_given() {
    let mock = Mock::start(|_| Reply::json(200, REFRESHED)).await;
    let client = client_for(&mock);
    let answer = client
        .refresh(&channel(), Some(&secret()), &refresh_token())
        .await
        .unwrap();
    assert_eq!(
        answer.refresh_token.as_ref().map(RefreshToken::expose),
        Some("NEW-refresh-0123456789")
    );
    assert_eq!(answer.scope.as_deref(), Some("profile openid"));
    client
        .refresh(&channel(), None, &refresh_token())
        .await
        .unwrap();
    let seen = mock.seen();
    assert_eq!(seen[0].path, "/oauth2/v2.1/token");
    assert_eq!(
        keys(&seen[0]),
        ["grant_type", "refresh_token", "client_id", "client_secret"]
    );
    assert_eq!(seen[0].param("grant_type"), Some("refresh_token"));
    assert_eq!(seen[0].param("refresh_token"), Some(REFRESH));
    assert_eq!(seen[0].param("client_secret"), Some(SECRET));
    // Left out, not sent empty.
    assert_eq!(keys(&seen[1]), ["grant_type", "refresh_token", "client_id"]);
    assert!(!seen[1].authorization);
}

#[tokio::test]
async fn an_absent_or_empty_refresh_token_in_the_answer_means_keep_the_old() {
    for body in [
        r#"{"access_token":"eyJ.a.b","expires_in":2591999,"scope":"profile","token_type":"Bearer"}"#,
        r#"{"access_token":"eyJ.a.b","expires_in":2591999,"refresh_token":"","scope":"profile","token_type":"Bearer"}"#,
    ] {
        let mock = Mock::start(move |_| Reply::json(200, body)).await;
        let answer = client_for(&mock)
            .refresh(&channel(), None, &refresh_token())
            .await
            .unwrap();
        assert_eq!(answer.refresh_token, None, "{body}");
        assert_eq!(answer.expires_in, 2_591_999);
    }
}

#[tokio::test]
async fn verify_is_a_get_and_its_400_is_an_answer() {
    let mock = Mock::start(|seen| match seen.param("access_token") {
        Some(USER_TOKEN) => Reply::json(
            200,
            r#"{"scope":"profile","client_id":"1660000000","expires_in":2591659}"#,
        ),
        _ => Reply::json(
            400,
            r#"{"error":"invalid_request","error_description":"access token expired"}"#,
        ),
    })
    .await;
    let client = client_for(&mock);
    match client.verify(&AccessToken::new(USER_TOKEN)).await.unwrap() {
        Verification::Valid(v) => {
            assert_eq!(v.client_id, channel());
            assert_eq!(v.expires_in, 2_591_659);
            assert_eq!(v.scope.as_deref(), Some("profile"));
        }
        other => panic!("{other:?}"),
    }
    match client
        .verify(&AccessToken::new("eyJ.other.token"))
        .await
        .unwrap()
    {
        Verification::Rejected { code, .. } => assert_eq!(code.as_deref(), Some("invalid_request")),
        other => panic!("{other:?}"),
    }
    let seen = mock.seen();
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].path, "/oauth2/v2.1/verify");
    assert_eq!(seen[0].query.len(), 1);
    assert!(seen[0].form.is_empty());
}

#[tokio::test]
async fn both_revoke_forms_send_one_token_and_accept_an_empty_200() {
    let mock = Mock::start(|_| Reply::empty(200)).await;
    let client = client_for(&mock);
    client
        .revoke(&channel(), Some(&secret()), &AccessToken::new(USER_TOKEN))
        .await
        .unwrap();
    client
        .revoke(&channel(), None, &AccessToken::new(USER_TOKEN))
        .await
        .unwrap();
    client
        .revoke_refresh_token(&channel(), None, &refresh_token())
        .await
        .unwrap();
    client
        .revoke_refresh_token(&channel(), Some(&secret()), &refresh_token())
        .await
        .unwrap();
    let seen = mock.seen();
    assert!(seen.iter().all(|s| s.path == "/oauth2/v2.1/revoke"));
    assert_eq!(
        keys(&seen[0]),
        ["access_token", "client_id", "client_secret"]
    );
    assert_eq!(seen[0].param("access_token"), Some(USER_TOKEN));
    assert_eq!(keys(&seen[1]), ["access_token", "client_id"]);
    assert_eq!(keys(&seen[2]), ["refresh_token", "client_id"]);
    assert_eq!(seen[2].param("refresh_token"), Some(REFRESH));
    assert_eq!(
        keys(&seen[3]),
        ["refresh_token", "client_id", "client_secret"]
    );
}

#[tokio::test]
async fn deauthorize_sends_the_channel_token_as_bearer_and_json() {
    let mock = Mock::start(|seen| {
        let user = seen
            .json
            .as_ref()
            .and_then(|j| j["userAccessToken"].as_str())
            .unwrap_or_default()
            .to_owned();
        if user == USER_TOKEN {
            Reply::empty(204)
        } else {
            Reply::json(400, r#"{"message":"invalid token"}"#)
        }
    })
    .await;
    let client = client_for(&mock);
    let done = client
        .deauthorize(
            &channel(),
            &AccessToken::new(CHANNEL_TOKEN),
            &AccessToken::new(USER_TOKEN),
        )
        .await
        .unwrap();
    assert_eq!(done, Deauthorization::Deauthorized);
    let again = client
        .deauthorize(
            &channel(),
            &AccessToken::new(CHANNEL_TOKEN),
            &AccessToken::new("eyJ.gone.token"),
        )
        .await
        .unwrap();
    match again {
        Deauthorization::NotAccepted {
            description,
            request_id,
        } => {
            assert_eq!(description.as_deref(), Some("invalid token"));
            assert_eq!(request_id, None);
        }
        other => panic!("{other:?}"),
    }
    let seen = mock.seen();
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/user/v1/deauthorize");
    assert_eq!(seen[0].content_type.as_deref(), Some("application/json"));
    assert_eq!(
        seen[0].authorization_value.as_deref(),
        Some(format!("Bearer {CHANNEL_TOKEN}").as_str())
    );
    assert_eq!(
        seen[0].json,
        Some(serde_json::json!({ "userAccessToken": USER_TOKEN }))
    );
    assert!(seen[0].form.is_empty() && seen[0].query.is_empty());
}

#[tokio::test]
async fn a_refused_channel_token_on_deauthorize_is_an_error() {
    let mock = Mock::start(|_| Reply::json(401, r#"{"message":"Authentication failed"}"#)).await;
    let err = client_for(&mock)
        .deauthorize(
            &channel(),
            &AccessToken::new(CHANNEL_TOKEN),
            &AccessToken::new(USER_TOKEN),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, LineError::Permanent { .. }), "{err:?}");
    assert_eq!(err.endpoint(), LoginEndpoint::Deauthorize);
    assert!(!err.is_invalid_grant() && !err.is_invalid_client());
    assert_no_leak(&err, &mock);
}

/// What a refresh's failure is classified as, by the answer LINE gave.
#[tokio::test]
async fn refresh_failures_are_told_apart() {
    struct Case {
        reply: Reply,
        invalid_grant: bool,
        invalid_client: bool,
        rate_limited: bool,
        transient: bool,
        may_have_issued: bool,
    }
    let case = |reply: Reply| Case {
        reply,
        invalid_grant: false,
        invalid_client: false,
        rate_limited: false,
        transient: false,
        may_have_issued: false,
    };
    let cases = vec![
        Case {
            invalid_grant: true,
            ..case(Reply::json(
                400,
                r#"{"error":"invalid_grant","error_description":"invalid refresh token"}"#,
            ))
        },
        // The code alone decides, whatever the description says.
        Case {
            invalid_grant: true,
            ..case(Reply::json(400, r#"{"error":"invalid_grant"}"#))
        },
        Case {
            invalid_client: true,
            ..case(Reply::json(
                400,
                r#"{"error":"invalid_client","error_description":"invalid client_secret"}"#,
            ))
        },
        Case {
            invalid_client: true,
            ..case(Reply::json(401, r#"{"error":"invalid_client"}"#))
        },
        // Neither: a malformed request, or an answer in the other shape.
        case(Reply::json(
            400,
            r#"{"error":"invalid_request","error_description":"some parameters missed or invalid"}"#,
        )),
        case(Reply::json(400, r#"{"message":"invalid_grant"}"#)),
        Case {
            rate_limited: true,
            transient: true,
            ..case(
                Reply::json(429, r#"{"message":"Too many requests"}"#).header("retry-after", "7"),
            )
        },
        Case {
            transient: true,
            ..case(Reply::json(503, r#"{"message":"unavailable"}"#))
        },
        // LINE said yes, but the answer is unusable: LINE may have rotated.
        Case {
            may_have_issued: true,
            ..case(Reply::json(200, r#"{"access_token":"eyJ.a.b"}"#))
        },
        Case {
            may_have_issued: true,
            ..case(Reply::json(
                200,
                r#"{"access_token":"eyJ.a.b","expires_in":2592000,"refresh_token":"has space"}"#,
            ))
        },
    ];
    for (i, c) in cases.into_iter().enumerate() {
        let reply = c.reply.clone();
        let mock = Mock::start(move |_| reply.clone()).await;
        let err = client_for(&mock)
            .refresh(&channel(), Some(&secret()), &refresh_token())
            .await
            .unwrap_err();
        let what = format!("case {i}: {err}");
        assert_eq!(err.endpoint(), LoginEndpoint::Refresh, "{what}");
        assert_eq!(err.is_invalid_grant(), c.invalid_grant, "{what}");
        assert_eq!(err.is_invalid_client(), c.invalid_client, "{what}");
        assert_eq!(err.is_rate_limited(), c.rate_limited, "{what}");
        assert_eq!(err.is_transient(), c.transient, "{what}");
        assert_eq!(err.may_have_issued(), c.may_have_issued, "{what}");
        if c.rate_limited {
            assert_eq!(err.retry_after(), Some(Duration::from_secs(7)), "{what}");
        }
        assert!(
            err.to_string()
                .starts_with("POST /oauth2/v2.1/token (login_refresh): "),
            "{what}"
        );
        assert_no_leak(&err, &mock);
    }
}

#[tokio::test]
async fn a_server_echoing_credentials_cannot_leak_them() {
    let mock = Mock::start(|seen| {
        let echo = seen.values().join(" ");
        Reply::json(
            400,
            &serde_json::json!({"error": "invalid_grant", "error_description": echo}).to_string(),
        )
    })
    .await;
    let client = client_for(&mock);
    let err = client
        .refresh(&channel(), Some(&secret()), &refresh_token())
        .await
        .unwrap_err();
    assert!(err.is_invalid_grant());
    assert_no_leak(&err, &mock);
    let err = client
        .exchange_code(&channel(), &secret(), CODE, "https://app.example/cb", None)
        .await
        .unwrap_err();
    assert_no_leak(&err, &mock);
    let err = client
        .revoke_refresh_token(&channel(), Some(&secret()), &refresh_token())
        .await
        .unwrap_err();
    assert_no_leak(&err, &mock);
}

#[tokio::test]
async fn a_transport_failure_on_refresh_may_have_rotated() {
    // A port nothing listens on: connect fails, nothing was sent.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let line = support::line_client(&base, &support::manual_clock(), TIMEOUT);
    let err = LoginClient::new(line, None)
        .refresh(&channel(), None, &refresh_token())
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(!err.may_have_issued(), "nothing was sent: {err:?}");
}

#[tokio::test]
async fn the_observer_sees_login_labels() {
    let mock = Mock::start(|seen| match seen.path.as_str() {
        "/oauth2/v2.1/token" => Reply::json(200, REFRESHED),
        "/user/v1/deauthorize" => Reply::empty(204),
        _ => Reply::empty(200),
    })
    .await;
    type Calls = Vec<(&'static str, Option<u16>)>;
    let calls: Arc<Mutex<Calls>> = Arc::default();
    let observer: RequestObserver<LoginEndpoint> = {
        let calls = Arc::clone(&calls);
        Arc::new(move |op, status, _| calls.lock().unwrap().push((op.as_str(), status)))
    };
    let line = support::line_client(&mock.base_url, &support::manual_clock(), TIMEOUT);
    let client = LoginClient::new(line, Some(observer));
    client
        .refresh(&channel(), None, &refresh_token())
        .await
        .unwrap();
    client
        .revoke(&channel(), None, &AccessToken::new(USER_TOKEN))
        .await
        .unwrap();
    client
        .deauthorize(
            &channel(),
            &AccessToken::new(CHANNEL_TOKEN),
            &AccessToken::new(USER_TOKEN),
        )
        .await
        .unwrap();
    assert_eq!(
        *calls.lock().unwrap(),
        [
            ("login_refresh", Some(200)),
            ("login_revoke", Some(200)),
            ("login_deauthorize", Some(204)),
        ]
    );
}
