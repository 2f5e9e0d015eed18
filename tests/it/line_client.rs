//! The LINE client: every call, every class of answer.
//!
//! The first half talks to a [`Mock`] that answers what a test tells it to,
//! so each failure class is produced on purpose: 5xx, 429 with both
//! `Retry-After` forms, empty and HTML bodies, both error shapes, the
//! 30-token refusal, a server that never answers, a reset connection, a
//! refused connection, a redirect. Every error produced is checked for leaks
//! of the token, the secret and the assertion the request carried.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use linetokd::clock::SharedClock;
use linetokd::domain::{AccessToken, ChannelId, ChannelSecret};
use linetokd::line::{
    Endpoint, ErrorBody, LineClient, LineClientConfig, LineError, MAX_RETRY_AFTER, TransientCause,
    Verification,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use crate::support::{self, Mock, Reply, Seen, assert_leaks_nothing};

const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.TOKEN-VALUE-never-shown.sig";
const SECRET: &str = "channel-SECRET-never-shown";
const CHANNEL: &str = "1234567890";
const TIMEOUT: Duration = Duration::from_secs(10);

fn token() -> AccessToken {
    AccessToken::new(TOKEN)
}

fn secret() -> ChannelSecret {
    ChannelSecret::new(SECRET)
}

fn channel() -> ChannelId {
    ChannelId::new(CHANNEL)
}

fn client_for(mock: &Mock) -> LineClient {
    support::line_client(&mock.base_url, &support::manual_clock(), TIMEOUT)
}

/// Checks `err` against the fixed secrets and every value `mock` received
/// (which includes the assertions the client signed).
fn assert_no_leak(err: &LineError, mock: &Mock) {
    let seen: Vec<String> = mock.seen().iter().flat_map(Seen::values).collect();
    let mut secrets: Vec<&str> = seen
        .iter()
        .map(String::as_str)
        .filter(|v| v.len() > 20) // the credentials, not `client_credentials`-sized noise
        .collect();
    secrets.extend([TOKEN, SECRET]);
    assert_leaks_nothing(err, &secrets);
}

const ISSUED: &str = r#"{"access_token":"eyJhbGciOiJIUz.TOKEN-VALUE-never-shown.sig","expires_in":2592000,"token_type":"Bearer","key_id":"sDTOzw5wIfxxxxPEzcmeQA"}"#;

// ---------------------------------------------------------------------------
// Success shapes against the mock
// ---------------------------------------------------------------------------

#[tokio::test]
async fn revoke_accepts_an_empty_200_body() {
    let mock = Mock::start(|_| Reply::empty(200)).await;
    let client = client_for(&mock);
    client
        .revoke_v21(&channel(), &secret(), &token())
        .await
        .unwrap();
    client.revoke_short_lived(&token()).await.unwrap();
    let seen = mock.seen();
    assert_eq!(seen[0].param("client_secret"), Some(SECRET));
    assert_eq!(seen[1].param("access_token"), Some(TOKEN));
}

#[tokio::test]
async fn verify_400_is_an_answer_not_an_error() {
    let mock = Mock::start(|seen| match seen.param("access_token") {
        Some("good") => Reply::json(
            200,
            r#"{"client_id":"1234567890","expires_in":3138007490,"scope":"P CM"}"#,
        ),
        Some("oauth") => Reply::json(
            400,
            r#"{"error":"invalid_request","error_description":"The access token expired"}"#,
        )
        .header("x-line-request-id", "rid-400"),
        _ => Reply::json(400, r#"{"message":"failed to parse"}"#),
    })
    .await;
    let client = client_for(&mock);
    for verify_short in [false, true] {
        let verify = |t: &'static str| {
            let client = client.clone();
            async move {
                let t = AccessToken::new(t);
                if verify_short {
                    client.verify_short_lived(&t).await
                } else {
                    client.verify_v21(&t).await
                }
            }
        };
        match verify("good").await.unwrap() {
            Verification::Valid(v) => {
                assert_eq!(v.client_id, channel());
                assert_eq!(v.expires_in, 3_138_007_490); // beyond i32
                assert_eq!(v.scope.as_deref(), Some("P CM"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            verify("oauth").await.unwrap(),
            Verification::Rejected {
                code: Some("invalid_request".into()),
                description: Some("The access token expired".into()),
                request_id: Some("rid-400".into()),
            }
        );
        assert_eq!(
            verify("other").await.unwrap(),
            Verification::Rejected {
                code: None,
                description: Some("failed to parse".into()),
                request_id: None,
            }
        );
    }
}

// ---------------------------------------------------------------------------
// Transient
// ---------------------------------------------------------------------------

#[tokio::test]
async fn server_errors_are_transient_and_keep_the_request_id() {
    let mock = Mock::start(|_| Reply {
        status: 503,
        headers: vec![
            ("content-type".into(), "text/html; charset=utf-8".into()),
            ("x-line-request-id".into(), "b5f2c0de".into()),
        ],
        body: "<html><body>503 Service Unavailable</body></html>".into(),
    })
    .await;
    let client = client_for(&mock);
    let err = client
        .issue_v21(
            &support::signer(CHANNEL, "kid-1"),
            chrono::Duration::days(30),
        )
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(err.request_id(), Some("b5f2c0de"));
    assert_eq!(err.endpoint(), Endpoint::IssueV21);
    match &err {
        LineError::Transient {
            cause: TransientCause::ServerError { status, body },
            ..
        } => {
            assert_eq!(*status, 503);
            assert_eq!(
                *body,
                ErrorBody::NotJson {
                    content_type: Some("text/html; charset=utf-8".into())
                }
            );
        }
        other => panic!("{other:?}"),
    }
    let shown = err.to_string();
    assert!(shown.contains("503 Service Unavailable"), "{shown}");
    assert!(shown.contains("non-JSON body"), "{shown}");
    assert!(shown.contains("b5f2c0de"), "{shown}");
    assert!(!shown.contains("<html>"), "raw bodies stay out: {shown}");
    assert_no_leak(&err, &mock);
}

#[tokio::test]
async fn rate_limits_carry_retry_after_in_seconds() {
    let mock = Mock::start(|_| {
        Reply::json(429, r#"{"message":"Too many requests"}"#).header("retry-after", "120")
    })
    .await;
    let err = client_for(&mock)
        .issue_short_lived(&channel(), &secret())
        .await
        .unwrap_err();
    assert!(matches!(err, LineError::RateLimited { .. }), "{err:?}");
    assert!(err.is_transient());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
    assert_no_leak(&err, &mock);
}

#[tokio::test]
async fn rate_limits_carry_retry_after_as_an_http_date() {
    // LINE's date is 90 s after our (manual) clock's now.
    let at = support::start_time() + chrono::Duration::seconds(90);
    let date = at.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    let mock = Mock::start(move |_| Reply::empty(429).header("retry-after", &date)).await;
    let err = client_for(&mock).verify_v21(&token()).await.unwrap_err();
    assert!(matches!(err, LineError::RateLimited { .. }), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(90)));
    assert_no_leak(&err, &mock);
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_without_showing_the_url() {
    // The handler never completes; the client's own timeout ends the wait.
    let app = axum::Router::new().fallback(std::future::pending::<&'static str>);
    let served = support::serve(app).await;
    let client = support::line_client(
        &served.base_url,
        &support::manual_clock(),
        Duration::from_millis(300),
    );
    // verify puts the token in the query string: reqwest's error would show it.
    let err = client.verify_v21(&token()).await.unwrap_err();
    assert!(
        matches!(
            err,
            LineError::Transient {
                cause: TransientCause::Timeout,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert_eq!(err.request_id(), None);
    assert_leaks_nothing(&err, &[TOKEN, "access_token="]);
}

#[tokio::test]
async fn a_reset_connection_is_transient() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        // Read the request, then reset the connection instead of answering.
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await.unwrap();
        stream.set_zero_linger().unwrap();
        drop(stream);
    });
    let client = support::line_client(&base_url, &support::manual_clock(), TIMEOUT);
    let err = client
        .revoke_v21(&channel(), &secret(), &token())
        .await
        .unwrap_err();
    server.await.unwrap();
    assert!(
        matches!(
            err,
            LineError::Transient {
                cause: TransientCause::Network,
                ..
            }
        ),
        "{err:?}"
    );
    assert_leaks_nothing(&err, &[TOKEN, SECRET]);
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    // Bind then drop: the port is free and nothing listens on it.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let client = support::line_client(&base_url, &support::manual_clock(), TIMEOUT);
    let err = client.verify_v21(&token()).await.unwrap_err();
    assert!(
        matches!(
            err,
            LineError::Transient {
                cause: TransientCause::Connect,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("GET /oauth2/v2.1/verify: could not connect"),
        "{err}"
    );
    assert_leaks_nothing(&err, &[TOKEN]);
}

#[tokio::test]
async fn an_issue_success_off_contract_may_have_issued() {
    let mock = Mock::start(|seen| match seen.path.as_str() {
        // key_id missing.
        "/oauth2/v2.1/token" => Reply::json(200, r#"{"access_token":"eyJ.TOKEN-VALUE-never-shown.x","expires_in":1,"token_type":"Bearer"}"#),
        // A token-like string where a number belongs: serde would quote it.
        _ => Reply::json(200, r#"{"access_token":"a","expires_in":"TOKEN-VALUE-never-shown","token_type":"Bearer"}"#),
    })
    .await;
    let client = client_for(&mock);
    let missing = client
        .issue_v21(
            &support::signer(CHANNEL, "kid-1"),
            chrono::Duration::days(1),
        )
        .await
        .unwrap_err();
    let mistyped = client
        .issue_stateless_with_secret(&channel(), &secret())
        .await
        .unwrap_err();
    for err in [&missing, &mistyped] {
        assert!(matches!(err, LineError::MaybeIssued { .. }), "{err:?}");
        assert!(err.may_have_issued());
        assert!(!err.is_transient());
        assert_leaks_nothing(err, &["TOKEN-VALUE-never-shown"]);
        assert_no_leak(err, &mock);
    }
    assert!(
        missing.to_string().contains("missing field `key_id`"),
        "{missing}"
    );
}

#[tokio::test]
async fn an_oversized_answer_is_not_buffered() {
    let mock =
        Mock::start(|_| Reply::json(200, &format!(r#"{{"kids":["{}"]}}"#, "k".repeat(200_000))))
            .await;
    let err = client_for(&mock)
        .valid_key_ids(&support::signer(CHANNEL, "kid-1"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LineError::Transient {
                cause: TransientCause::UnreadableAnswer { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------
// Permanent and the 30-token refusal
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_thirty_token_refusal_is_its_own_variant() {
    let mock = Mock::start(|_| {
        Reply::json(
            400,
            r#"{"message":"The maximum number of access tokens has already been issued"}"#,
        )
        .header("x-line-request-id", "rid-30")
    })
    .await;
    let err = client_for(&mock)
        .issue_v21(
            &support::signer(CHANNEL, "kid-1"),
            chrono::Duration::days(30),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, LineError::TooManyTokens { .. }), "{err:?}");
    assert!(!err.is_transient());
    assert_eq!(err.request_id(), Some("rid-30"));
    assert!(err.to_string().contains("30 valid v2.1 tokens"), "{err}");
    assert_no_leak(&err, &mock);
}

#[tokio::test]
async fn a_rejected_assertion_is_permanent_with_its_code() {
    let mock = Mock::start(|_| {
        Reply::json(
            400,
            r#"{"error":"invalid_client","error_description":"Invalid exp"}"#,
        )
    })
    .await;
    let client = client_for(&mock);
    let signer = support::signer(CHANNEL, "kid-1");
    let errors = [
        client
            .issue_v21(&signer, chrono::Duration::days(30))
            .await
            .unwrap_err(),
        client.valid_key_ids(&signer).await.unwrap_err(),
        client
            .issue_stateless_with_assertion(&signer)
            .await
            .unwrap_err(),
    ];
    for err in &errors {
        assert!(matches!(err, LineError::Permanent { .. }), "{err:?}");
        assert!(!err.is_transient());
        assert_eq!(err.code(), Some("invalid_client"));
        assert_eq!(err.status(), Some(reqwest::StatusCode::BAD_REQUEST));
        assert_no_leak(err, &mock);
    }
}

#[tokio::test]
async fn an_unknown_signing_key_is_a_permanent_404() {
    let mock = Mock::start(|_| {
        Reply::json(
            404,
            r#"{"message":"Cannot find channel key that satisfies the conditions"}"#,
        )
    })
    .await;
    let err = client_for(&mock)
        .valid_key_ids(&support::signer(CHANNEL, "kid-unknown"))
        .await
        .unwrap_err();
    assert!(err.is_unknown_signing_key(), "{err:?}");
    assert!(!err.is_transient());
    assert_no_leak(&err, &mock);
}

#[tokio::test]
async fn empty_and_html_error_bodies_still_name_the_status() {
    let mock = Mock::start(|seen| match seen.path.as_str() {
        "/oauth2/v2.1/revoke" => Reply::empty(400),
        _ => Reply {
            status: 403,
            headers: vec![("content-type".into(), "text/html".into())],
            body: "<html>Forbidden</html>".into(),
        },
    })
    .await;
    let client = client_for(&mock);
    let empty = client
        .revoke_v21(&channel(), &secret(), &token())
        .await
        .unwrap_err();
    assert_eq!(
        empty.to_string(),
        "POST /oauth2/v2.1/revoke: LINE refused the request: 400 Bad Request with an empty body"
    );
    let html = client
        .issue_short_lived(&channel(), &secret())
        .await
        .unwrap_err();
    assert_eq!(
        html.to_string(),
        "POST /v2/oauth/accessToken: LINE refused the request: 403 Forbidden with a non-JSON body (text/html)"
    );
    for err in [&empty, &html] {
        assert!(matches!(err, LineError::Permanent { .. }), "{err:?}");
        assert_no_leak(err, &mock);
    }
}

#[tokio::test]
async fn secrets_echoed_in_an_error_body_are_scrubbed() {
    let echo = format!(
        r#"{{"error":"invalid_client","error_description":"bad secret {SECRET} for token {TOKEN}"}}"#
    );
    let mock = Mock::start(move |_| Reply::json(400, &echo)).await;
    let err = client_for(&mock)
        .revoke_v21(&channel(), &secret(), &token())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("[redacted]"), "{err}");
    assert_no_leak(&err, &mock);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let elsewhere = Mock::start(|_| Reply::json(200, ISSUED)).await;
    let location = format!("{}/steal", elsewhere.base_url);
    let mock = Mock::start(move |_| Reply::empty(307).header("location", &location)).await;
    let err = client_for(&mock)
        .revoke_v21(&channel(), &secret(), &token())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(reqwest::StatusCode::TEMPORARY_REDIRECT));
    assert!(matches!(err, LineError::Permanent { .. }), "{err:?}");
    assert!(
        elsewhere.seen().is_empty(),
        "credentials were sent to the redirect target"
    );
}

#[tokio::test]
async fn a_lifetime_beyond_thirty_days_is_refused_before_sending() {
    let mock = Mock::start(|_| Reply::json(200, ISSUED)).await;
    let err = client_for(&mock)
        .issue_v21(
            &support::signer(CHANNEL, "kid-1"),
            chrono::Duration::days(31),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, LineError::Assertion { .. }), "{err:?}");
    assert!(!err.is_transient());
    assert!(mock.seen().is_empty());
}

// ---------------------------------------------------------------------------
// Clock skew, observer, logs
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_date_header_gives_the_clock_skew() {
    // LINE's clock is 45 s behind ours.
    let line_now = support::start_time() - chrono::Duration::seconds(45);
    let date = line_now.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    let mock = Mock::start(move |_| Reply::empty(200).header("date", &date)).await;
    let client = client_for(&mock);
    assert_eq!(client.last_clock_skew(), None);
    client.revoke_short_lived(&token()).await.unwrap();
    assert_eq!(
        client.last_clock_skew(),
        Some(chrono::Duration::seconds(45))
    );
}

#[tokio::test]
async fn the_observer_sees_every_request_with_its_status() {
    let mock = Mock::start(|seen| match seen.path.as_str() {
        "/v2/oauth/revoke" => Reply::empty(200),
        _ => Reply::empty(500),
    })
    .await;
    type Calls = Vec<(Endpoint, Option<u16>)>;
    let calls: Arc<Mutex<Calls>> = Arc::default();
    let record = calls.clone();
    let config = LineClientConfig {
        base_url: mock.base_url.clone(),
        timeout: TIMEOUT,
        observer: Some(Arc::new(move |endpoint, status, _latency| {
            record.lock().unwrap().push((endpoint, status));
        })),
    };
    let clock: SharedClock = Arc::new(support::manual_clock());
    let client = LineClient::new(config, clock).unwrap();
    client.revoke_short_lived(&token()).await.unwrap();
    client.verify_v21(&token()).await.unwrap_err();
    assert_eq!(
        *calls.lock().unwrap(),
        [
            (Endpoint::RevokeShortLived, Some(200)),
            (Endpoint::VerifyV21, Some(500))
        ]
    );
}

#[test]
fn logs_name_endpoint_status_and_request_id_but_no_credential() {
    let logs = Arc::new(Mutex::new(Vec::<u8>::new()));
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("linetokd=debug")
        .with_ansi(false)
        .with_writer(move || LogWriter(writer.clone()))
        .finish();
    // tracing caches each callsite's interest globally. With a single live
    // dispatcher it asks whichever thread hits a callsite first, and a
    // parallel test thread (no subscriber) would cache "never". A second live
    // dispatcher makes tracing consult every dispatcher, ours included.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let _guard = tracing::subscriber::set_default(subscriber);
    // Parallel tests may have cached "nobody listens" for these callsites.
    tracing::callsite::rebuild_interest_cache();
    // One thread, so the subscriber sees the client's events.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let assertions = runtime.block_on(async {
        // LINE's clock 2 minutes behind ours: worth a warning.
        let date = (support::start_time() - chrono::Duration::minutes(2))
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let mock = Mock::start(move |seen| {
            match seen.path.as_str() {
                "/oauth2/v2.1/tokens/kid" => {
                    Reply::json(200, r#"{"kids":["k1"]}"#).header("x-line-request-id", "rid-kids")
                }
                _ => Reply::json(400, r#"{"error":"invalid_client"}"#)
                    .header("x-line-request-id", "rid-revoke"),
            }
            .header("date", &date)
        })
        .await;
        let client = client_for(&mock);
        let kids = client
            .valid_key_ids(&support::signer(CHANNEL, "kid-1"))
            .await
            .unwrap();
        assert_eq!(kids.len(), 1);
        client
            .revoke_v21(&channel(), &secret(), &token())
            .await
            .unwrap_err();
        mock.seen()
            .iter()
            .flat_map(Seen::values)
            .collect::<Vec<_>>()
    });
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("endpoint=\"v21_key_ids\""), "{logs}");
    assert!(logs.contains("status=200"), "{logs}");
    assert!(logs.contains("request_id=\"rid-kids\""), "{logs}");
    assert!(logs.contains("request_id=\"rid-revoke\""), "{logs}");
    assert!(logs.contains("latency_ms="), "{logs}");
    // The skew warning, once although two answers were skewed.
    assert_eq!(logs.matches("check NTP").count(), 1, "{logs}");
    for value in assertions
        .iter()
        .filter(|v| v.len() > 20)
        .map(String::as_str)
        .chain([TOKEN, SECRET])
    {
        assert!(
            !logs.contains(value),
            "a credential reached the log: {logs}"
        );
    }
}

/// A `MakeWriter` target appending to a shared buffer.
struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn bad_configs_are_refused_with_a_reason() {
    let clock: SharedClock = Arc::new(support::manual_clock());
    let bad = LineClient::new(
        LineClientConfig {
            base_url: "api.line.me".into(),
            ..LineClientConfig::default()
        },
        clock.clone(),
    )
    .unwrap_err();
    assert!(bad.to_string().contains("\"api.line.me\""), "{bad}");
    let zero = LineClient::new(
        LineClientConfig {
            timeout: Duration::ZERO,
            ..LineClientConfig::default()
        },
        clock.clone(),
    )
    .unwrap_err();
    assert!(zero.to_string().contains("timeout"), "{zero}");
    let default = LineClient::new(LineClientConfig::default(), clock).unwrap();
    assert_eq!(default.base_url(), "https://api.line.me");
}

// ---------------------------------------------------------------------------
// A hostile LINE (issue 8): caps, "may have issued", validated values, words
// ---------------------------------------------------------------------------

/// The token value every hostile answer below carries (or a piece of it).
const HOSTILE_TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.HOSTILE-TOKEN-VALUE.sig";

/// An issue answer with `access_token`, `expires_in` and `key_id` as given
/// (raw JSON fragments).
fn issue_answer(token: &str, expires_in: &str, key_id: &str) -> String {
    format!(
        r#"{{"access_token":{token},"expires_in":{expires_in},"token_type":"Bearer","key_id":{key_id}}}"#
    )
}

/// Issues once against a mock that answers `reply`, returning the error.
async fn issue_against(reply: Reply) -> (LineError, Mock) {
    let mock = Mock::start(move |_| reply.clone()).await;
    let err = client_for(&mock)
        .issue_v21(
            &support::signer(CHANNEL, "kid-1"),
            chrono::Duration::days(30),
        )
        .await
        .unwrap_err();
    (err, mock)
}

/// Every rendering of `err` and its sources, joined: what an operator may
/// see in a log line.
fn rendered(err: &LineError) -> String {
    let mut all = vec![err.to_string(), format!("{err:#}")];
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        all.push(s.to_string());
        source = s.source();
    }
    all.join(" | ")
}

/// Item 4 of issue 8: words for people, the endpoint named, no URL, no
/// query string, no Rust debug names.
fn assert_reads_as_words(err: &LineError) {
    let text = rendered(err);
    assert!(
        text.starts_with(&err.endpoint().to_string()),
        "the endpoint comes first: {text}"
    );
    for bad in [
        "http://",
        "127.0.0.1",
        "?",
        "access_token=",
        "client_assertion=",
        "Some(",
        "None",
        "::",
        "{ ",
        "SendRequest",
        "Kind",
        "struct",
        "Response",
    ] {
        assert!(!text.contains(bad), "{bad:?} in {text}");
    }
    if let Some(status) = err.status() {
        assert!(text.contains(status.as_str()), "no status in {text}");
    }
}

#[tokio::test]
async fn a_hostile_retry_after_is_capped_at_an_hour() {
    // Both forms, both statuses that carry one: 99999999 s is three years,
    // the date is a century away.
    let far = (support::start_time() + chrono::Duration::days(36_500))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    for (status, value) in [
        (429, "99999999".to_owned()),
        (503, "99999999".to_owned()),
        (429, far.clone()),
        (503, far),
    ] {
        let mock = Mock::start(move |_| Reply::empty(status).header("retry-after", &value)).await;
        let err = client_for(&mock).verify_v21(&token()).await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        assert_eq!(err.retry_after(), Some(MAX_RETRY_AFTER), "{err}");
        assert_eq!(MAX_RETRY_AFTER, Duration::from_secs(3600));
        assert_reads_as_words(&err);
    }
    // A plausible value is LINE's.
    let mock = Mock::start(|_| Reply::empty(429).header("retry-after", "3599")).await;
    let err = client_for(&mock).verify_v21(&token()).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3599)));
}

#[tokio::test]
async fn every_malformed_issue_answer_may_have_issued() {
    let t = format!("\"{HOSTILE_TOKEN}\"");
    let kid = r#""sDTOzw5wIfxxxxPEzcmeQA""#;
    let long_kid = format!("\"{}\"", "k".repeat(129));
    let long_token = format!("\"{}{}\"", HOSTILE_TOKEN, "x".repeat(4096));
    // (what, body, content type, whether the key ID is still readable)
    let cases: Vec<(&str, String, &str, bool)> = vec![
        (
            "key_id missing",
            format!(r#"{{"access_token":{t},"expires_in":2592000,"token_type":"Bearer"}}"#),
            "application/json",
            false,
        ),
        (
            "expires_in a float",
            issue_answer(&t, "2592000.5", kid),
            "application/json",
            true,
        ),
        (
            "expires_in a string",
            issue_answer(&t, r#""2592000""#, kid),
            "application/json",
            true,
        ),
        (
            "expires_in negative",
            issue_answer(&t, "-1", kid),
            "application/json",
            true,
        ),
        (
            "expires_in zero",
            issue_answer(&t, "0", kid),
            "application/json",
            true,
        ),
        (
            "expires_in 30 days and 61 s",
            issue_answer(&t, "2592061", kid),
            "application/json",
            true,
        ),
        (
            "expires_in beyond i64",
            issue_answer(&t, "99999999999999999999", kid),
            "application/json",
            true,
        ),
        (
            "HTML",
            "<html><body>OK</body></html>".into(),
            "text/html",
            false,
        ),
        ("an empty body", String::new(), "application/json", false),
        (
            "truncated JSON",
            issue_answer(&t, "2592000", kid)[..60].to_owned(),
            "application/json",
            false,
        ),
        ("JSON null", "null".into(), "application/json", false),
        (
            "an empty access_token",
            issue_answer(r#""""#, "2592000", kid),
            "application/json",
            true,
        ),
        (
            "a token with a newline",
            issue_answer(&format!("\"{HOSTILE_TOKEN}\\n\""), "2592000", kid),
            "application/json",
            true,
        ),
        (
            "a token with a space",
            issue_answer(&format!("\"{HOSTILE_TOKEN} x\""), "2592000", kid),
            "application/json",
            true,
        ),
        (
            "a token over 4096 bytes",
            issue_answer(&long_token, "2592000", kid),
            "application/json",
            true,
        ),
        (
            "a numeric token",
            issue_answer("42", "2592000", kid),
            "application/json",
            true,
        ),
        (
            "an empty key_id",
            issue_answer(&t, "2592000", r#""""#),
            "application/json",
            false,
        ),
        (
            "a key_id over 128 bytes",
            issue_answer(&t, "2592000", &long_kid),
            "application/json",
            false,
        ),
        (
            "a key_id with a control character",
            issue_answer(&t, "2592000", r#""kid\u001b[31m""#),
            "application/json",
            false,
        ),
        (
            "a key_id with a newline",
            issue_answer(&t, "2592000", r#""kid\nforged log line""#),
            "application/json",
            false,
        ),
        (
            "a key_id with a quote",
            issue_answer(&t, "2592000", r#""k\"id""#),
            "application/json",
            false,
        ),
    ];
    for (what, body, content_type, kid_readable) in cases {
        let reply = Reply {
            status: 200,
            headers: vec![
                ("content-type".into(), content_type.into()),
                ("x-line-request-id".into(), "rid-200".into()),
            ],
            body,
        };
        let (err, mock) = issue_against(reply).await;
        assert!(
            matches!(err, LineError::MaybeIssued { .. }),
            "{what}: {err:?}"
        );
        assert!(err.may_have_issued(), "{what}");
        assert!(!err.is_transient(), "{what}");
        assert!(!err.is_channel_full(), "{what}");
        assert_eq!(err.retry_after(), None, "{what}");
        assert_eq!(err.status(), Some(reqwest::StatusCode::OK), "{what}");
        assert_eq!(err.request_id(), Some("rid-200"), "{what}");
        assert_eq!(
            err.issued_key_id().map(|k| k.as_str()),
            kid_readable.then_some("sDTOzw5wIfxxxxPEzcmeQA"),
            "{what}"
        );
        let shown = err.to_string();
        assert!(shown.contains("may have issued a token"), "{what}: {shown}");
        assert!(!shown.contains("forged"), "{what}: {shown}");
        assert!(
            !shown.contains('\n') && !shown.contains('\u{1b}'),
            "{what}: {shown}"
        );
        assert_leaks_nothing(&err, &[HOSTILE_TOKEN, "HOSTILE-TOKEN-VALUE"]);
        assert_no_leak(&err, &mock);
        assert_reads_as_words(&err);
    }
}

#[tokio::test]
async fn a_well_formed_issue_answer_still_parses() {
    // The bounds themselves are accepted: 30 days and a minute, a 128-byte
    // key ID, a 4096-byte token of LINE's characters.
    let token = format!("eyJ.{}-_~+/=", "t".repeat(4096 - 11));
    let kid = "k".repeat(128);
    let body = issue_answer(&format!("\"{token}\""), "2592060", &format!("\"{kid}\""));
    let mock = Mock::start(move |_| Reply::json(200, &body)).await;
    let issued = client_for(&mock)
        .issue_v21(
            &support::signer(CHANNEL, "kid-1"),
            chrono::Duration::days(30),
        )
        .await
        .unwrap();
    assert_eq!(issued.access_token.expose(), token);
    assert_eq!(issued.key_id.as_str(), kid);
    assert_eq!(issued.expires_in, 2_592_060);
}

#[tokio::test]
async fn error_statuses_on_issue_mean_nothing_was_issued() {
    let cases = [
        (
            400,
            r#"{"error":"invalid_client","error_description":"Invalid exp"}"#,
            false,
        ),
        (
            400,
            r#"{"message":"The maximum number of access tokens has already been issued"}"#,
            true,
        ),
        // The same shape with other words is still the 30-token refusal:
        // the class never depends on LINE's wording.
        (400, r#"{"message":"Zu viele Token"}"#, true),
        (
            404,
            r#"{"message":"Cannot find channel key that satisfies the conditions"}"#,
            false,
        ),
        (429, r#"{"message":"Too many requests"}"#, false),
        (500, r#"{"message":"Internal server error"}"#, false),
        (503, "<html>503</html>", false),
    ];
    for (status, body, full) in cases {
        let (err, mock) = issue_against(Reply::json(status, body)).await;
        assert!(!err.may_have_issued(), "{status} {body}: {err:?}");
        assert_eq!(err.is_channel_full(), full, "{status} {body}: {err:?}");
        assert_eq!(err.status().map(|s| s.as_u16()), Some(status));
        assert_no_leak(&err, &mock);
        assert_reads_as_words(&err);
    }
    // The message shape on the key-ID list is no refusal to issue.
    let mock = Mock::start(|_| Reply::json(400, r#"{"message":"x"}"#)).await;
    let err = client_for(&mock)
        .valid_key_ids(&support::signer(CHANNEL, "kid-1"))
        .await
        .unwrap_err();
    assert!(!err.is_channel_full(), "{err:?}");
}

#[tokio::test]
async fn a_malformed_key_id_fails_the_whole_listing() {
    let long = "k".repeat(129);
    let cases = [
        r#"{"kids":["sDTOzw5wIfxxxxPEzcmeQA",""]}"#.to_owned(),
        r#"{"kids":["sDTOzw5wIfxxxxPEzcmeQA","a b"]}"#.to_owned(),
        r#"{"kids":["sDTOzw5wIfxxxxPEzcmeQA","kid\nforged"]}"#.to_owned(),
        r#"{"kids":["sDTOzw5wIfxxxxPEzcmeQA","kid\u0000"]}"#.to_owned(),
        format!(r#"{{"kids":["sDTOzw5wIfxxxxPEzcmeQA","{long}"]}}"#),
        r#"{"kids":["sDTOzw5wIfxxxxPEzcmeQA",7]}"#.to_owned(),
    ];
    for body in cases {
        let answer = body.clone();
        let mock = Mock::start(move |_| Reply::json(200, &answer)).await;
        let err = client_for(&mock)
            .valid_key_ids(&support::signer(CHANNEL, "kid-1"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                LineError::Transient {
                    cause: TransientCause::UnreadableAnswer { .. },
                    ..
                }
            ),
            "{body}: {err:?}"
        );
        assert!(err.is_transient(), "{body}");
        assert!(!err.may_have_issued(), "{body}");
        let shown = err.to_string();
        assert!(
            !shown.contains("forged") && !shown.contains(&long),
            "{shown}"
        );
        assert_reads_as_words(&err);
    }
    let mock = Mock::start(|_| Reply::json(200, r#"{"kids":["ok-1","a b"]}"#)).await;
    let err = client_for(&mock)
        .valid_key_ids(&support::signer(CHANNEL, "kid-1"))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("entry 2 of 2 in the key-ID list: the key ID has whitespace at byte 1"),
        "{err}"
    );
}

#[tokio::test]
async fn lost_answers_on_issue_may_have_issued_and_refused_connections_did_not() {
    // A server that never answers: the request went out, the answer never came.
    let app = axum::Router::new().fallback(std::future::pending::<&'static str>);
    let served = support::serve(app).await;
    let client = support::line_client(
        &served.base_url,
        &support::manual_clock(),
        Duration::from_millis(300),
    );
    let signer = support::signer(CHANNEL, "kid-1");
    let err = client
        .issue_v21(&signer, chrono::Duration::days(30))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LineError::Transient {
                cause: TransientCause::Timeout,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.may_have_issued() && err.is_transient());
    assert_reads_as_words(&err);
    // The same on a call that issues nothing is just transient.
    let err = client.verify_v21(&token()).await.unwrap_err();
    assert!(!err.may_have_issued() && err.is_transient());
    assert_reads_as_words(&err);

    // A reset after the request was read.
    let (base_url, server) = raw_server(|_| None).await;
    let client = support::line_client(&base_url, &support::manual_clock(), TIMEOUT);
    let err = client
        .issue_short_lived(&channel(), &secret())
        .await
        .unwrap_err();
    server.await.unwrap();
    assert!(
        matches!(
            err,
            LineError::Transient {
                cause: TransientCause::Network,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.may_have_issued());
    assert_reads_as_words(&err);

    // Nothing listening: nothing was sent.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let client = support::line_client(&base_url, &support::manual_clock(), TIMEOUT);
    let err = client
        .issue_v21(&signer, chrono::Duration::days(30))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LineError::Transient {
                cause: TransientCause::Connect,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.may_have_issued());
    assert_reads_as_words(&err);
}

#[tokio::test]
async fn an_answer_cut_off_mid_body_is_classified_by_its_status() {
    // 200 with half an issue answer: LINE issued, we lost the token.
    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\
                x-line-request-id: rid-cut\r\n\r\n{\"access_token\":\"eyJhbGciOiJIUzI1NiJ9.HOSTILE";
    let (base_url, server) = raw_server(move |_| Some(head.to_owned())).await;
    let err = issue_v21_at(&base_url, TIMEOUT).await;
    server.await.unwrap();
    assert!(matches!(err, LineError::MaybeIssued { .. }), "{err:?}");
    assert!(err.may_have_issued());
    assert_eq!(err.request_id(), Some("rid-cut"));
    assert!(
        err.to_string()
            .contains("the connection broke while the body was read"),
        "{err}"
    );
    assert_leaks_nothing(&err, &["HOSTILE"]);
    assert_reads_as_words(&err);

    // 400 cut off: LINE said no; the status is the answer.
    let head = "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
                content-length: 500\r\n\r\n{\"mess";
    let (base_url, server) = raw_server(move |_| Some(head.to_owned())).await;
    let err = issue_v21_at(&base_url, TIMEOUT).await;
    server.await.unwrap();
    assert!(
        matches!(
            err,
            LineError::Permanent {
                body: ErrorBody::Cut,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.may_have_issued());
    assert_reads_as_words(&err);
}

/// The status line and headers arrive, then the body stalls past the
/// request deadline: the status still classifies the outcome.
#[tokio::test]
async fn a_body_that_stalls_past_the_deadline_is_classified_by_its_status() {
    let deadline = Duration::from_millis(300);
    // 200: LINE issued; the token is lost with the body.
    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\
                x-line-request-id: rid-stall\r\n\r\n{\"access_token\":\"eyJ";
    let (base_url, server) = stalling_server(head).await;
    let err = issue_v21_at(&base_url, deadline).await;
    server.await.unwrap();
    assert!(matches!(err, LineError::MaybeIssued { .. }), "{err:?}");
    assert_eq!(err.request_id(), Some("rid-stall"));
    assert!(
        err.to_string()
            .contains("the request deadline passed while the body was read"),
        "{err}"
    );
    assert_reads_as_words(&err);

    // 429 with Retry-After: LINE refused; nothing was issued.
    let head = "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
                retry-after: 90\r\ncontent-length: 500\r\n\r\n{\"mess";
    let (base_url, server) = stalling_server(head).await;
    let err = issue_v21_at(&base_url, deadline).await;
    server.await.unwrap();
    assert!(matches!(err, LineError::RateLimited { .. }), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(90)));
    assert!(!err.may_have_issued());
}

/// The error of a v2.1 issue call against the server at `base_url`.
async fn issue_v21_at(base_url: &str, timeout: Duration) -> LineError {
    support::line_client(base_url, &support::manual_clock(), timeout)
        .issue_v21(
            &support::signer(CHANNEL, "kid-1"),
            chrono::Duration::days(30),
        )
        .await
        .unwrap_err()
}

/// A one-connection server that writes `head` and then neither writes
/// nor closes until the client hangs up.
async fn stalling_server(head: &'static str) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncWriteExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_request(&mut stream).await;
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    });
    (base_url, server)
}

#[tokio::test]
async fn an_oversized_issue_success_may_have_issued() {
    let body = issue_answer(
        &format!("\"{}\"", "t".repeat(100_000)),
        "2592000",
        r#""kid""#,
    );
    let (err, _mock) = issue_against(Reply::json(200, &body)).await;
    assert!(matches!(err, LineError::MaybeIssued { .. }), "{err:?}");
    assert!(err.may_have_issued());
    assert_reads_as_words(&err);
    // An oversized error answer is still an error status: no token.
    let (err, _mock) = issue_against(Reply::json(400, &body)).await;
    assert!(
        matches!(
            err,
            LineError::Permanent {
                body: ErrorBody::TooLarge,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.may_have_issued());
}

/// A one-connection HTTP server on loopback: it reads one whole request,
/// then writes `answer(&request)` raw and closes cleanly, or resets the
/// connection when `answer` gives `None`.
async fn raw_server(
    answer: impl FnOnce(&[u8]) -> Option<String> + Send + 'static,
) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncWriteExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let request = read_request(&mut stream).await;
        match answer(&request) {
            Some(raw) => {
                stream.write_all(raw.as_bytes()).await.unwrap();
                stream.shutdown().await.unwrap();
                // Wait for the client to hang up, so our close is a clean
                // end of stream and never a reset.
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
            }
            None => {
                stream.set_zero_linger().unwrap();
                drop(stream);
            }
        }
    });
    (base_url, server)
}

/// Reads one HTTP/1.1 request: the head, then `content-length` bytes.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the client closed before sending a whole request");
        request.extend_from_slice(&buf[..n]);
        let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        if request.len() >= end + 4 + length {
            return request;
        }
    }
}

// ---------------------------------------------------------------------------
// Against the sandbox: every call's success, then each failure class
// ---------------------------------------------------------------------------

mod against_the_sandbox {
    use std::time::Duration;

    use linetokd::domain::{ChannelId, ChannelSecret, KeyId};
    use linetokd::line::{LineError, TransientCause, Verification};
    use linetokd::sandbox::{FaultRule, Faults, SandboxTokenState, TokenKind};

    use crate::support::{self, LAB_KID, LAB_SECRET, SandboxLab, assert_leaks_nothing};

    /// Every token value the lab's sandbox ever issued, plus the secret.
    fn secrets(lab: &SandboxLab) -> Vec<String> {
        let mut all: Vec<String> = lab
            .sandbox
            .tokens(&lab.channel())
            .iter()
            .map(|t| t.access_token.expose().to_owned())
            .collect();
        all.push(LAB_SECRET.to_owned());
        all
    }

    fn assert_no_leak(err: &LineError, lab: &SandboxLab) {
        let secrets = secrets(lab);
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        assert_leaks_nothing(err, &secrets);
    }

    fn faults(path: &str, rule: FaultRule) -> Faults {
        Faults {
            seed: Some(7),
            down: false,
            endpoints: [(path.to_owned(), rule)].into_iter().collect(),
        }
    }

    #[tokio::test]
    async fn every_v21_call_succeeds() {
        let lab = support::sandbox_lab().await;
        let client = &lab.client;
        let issued = client
            .issue_v21(&lab.signer, chrono::Duration::days(30))
            .await
            .unwrap();
        assert_eq!(issued.expires_in, 2_592_000);
        assert_eq!(issued.token_type, "Bearer");
        // The sandbox's own book agrees on the key ID and the value.
        let book = lab.sandbox.tokens(&lab.channel());
        assert_eq!(book.len(), 1);
        assert_eq!(book[0].key_id.as_ref(), Some(&issued.key_id));
        assert_eq!(book[0].access_token, issued.access_token);

        match client.verify_v21(&issued.access_token).await.unwrap() {
            Verification::Valid(v) => {
                assert_eq!(v.client_id, lab.channel());
                assert_eq!(v.expires_in, 2_592_000);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            client.valid_key_ids(&lab.signer).await.unwrap(),
            std::slice::from_ref(&issued.key_id)
        );

        client
            .revoke_v21(&lab.channel(), &lab.secret(), &issued.access_token)
            .await
            .unwrap();
        assert_eq!(
            lab.sandbox.tokens(&lab.channel())[0].state,
            SandboxTokenState::Revoked
        );
        assert!(matches!(
            client.verify_v21(&issued.access_token).await.unwrap(),
            Verification::Rejected { .. }
        ));
        assert_eq!(
            client.valid_key_ids(&lab.signer).await.unwrap(),
            Vec::<KeyId>::new()
        );
        // Same clock on both sides: no skew.
        assert_eq!(client.last_clock_skew(), Some(chrono::Duration::zero()));
    }

    #[tokio::test]
    async fn verify_reports_an_expired_token_as_rejected() {
        let lab = support::sandbox_lab().await;
        let issued = lab
            .client
            .issue_v21(&lab.signer, chrono::Duration::hours(1))
            .await
            .unwrap();
        lab.clock
            .advance(chrono::Duration::hours(1) + chrono::Duration::seconds(1));
        match lab.client.verify_v21(&issued.access_token).await.unwrap() {
            Verification::Rejected {
                code, request_id, ..
            } => {
                assert_eq!(code.as_deref(), Some("invalid_request"));
                assert!(request_id.is_some());
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn every_short_lived_call_succeeds() {
        let lab = support::sandbox_lab().await;
        let client = &lab.client;
        let issued = client
            .issue_short_lived(&lab.channel(), &lab.secret())
            .await
            .unwrap();
        assert_eq!(issued.expires_in, 2_592_000);
        assert!(
            client
                .verify_short_lived(&issued.access_token)
                .await
                .unwrap()
                .is_valid()
        );
        client
            .revoke_short_lived(&issued.access_token)
            .await
            .unwrap();
        assert!(
            !client
                .verify_short_lived(&issued.access_token)
                .await
                .unwrap()
                .is_valid()
        );
        let book = lab.sandbox.tokens(&lab.channel());
        assert_eq!(book[0].kind, TokenKind::ShortLived);
        assert_eq!(book[0].state, SandboxTokenState::Revoked);
    }

    #[tokio::test]
    async fn both_stateless_forms_succeed() {
        let lab = support::sandbox_lab().await;
        let by_jwt = lab
            .client
            .issue_stateless_with_assertion(&lab.signer)
            .await
            .unwrap();
        let by_secret = lab
            .client
            .issue_stateless_with_secret(&lab.channel(), &lab.secret())
            .await
            .unwrap();
        for issued in [&by_jwt, &by_secret] {
            assert_eq!(issued.expires_in, 900);
            assert_eq!(issued.token_type, "Bearer");
        }
        assert_ne!(by_jwt.access_token, by_secret.access_token);
        let kinds: Vec<TokenKind> = lab
            .sandbox
            .tokens(&lab.channel())
            .iter()
            .map(|t| t.kind)
            .collect();
        assert_eq!(kinds, [TokenKind::Stateless, TokenKind::Stateless]);
    }

    #[tokio::test]
    async fn an_unregistered_kid_is_a_permanent_404_on_every_assertion_call() {
        let lab = support::sandbox_lab().await;
        let stranger = support::signer(support::LAB_CHANNEL, "kid-never-registered");
        let errors = [
            lab.client
                .issue_v21(&stranger, chrono::Duration::days(1))
                .await
                .unwrap_err(),
            lab.client.valid_key_ids(&stranger).await.unwrap_err(),
            lab.client
                .issue_stateless_with_assertion(&stranger)
                .await
                .unwrap_err(),
        ];
        for err in &errors {
            assert!(err.is_unknown_signing_key(), "{err:?}");
            assert!(!err.is_transient());
            assert!(err.request_id().is_some(), "{err:?}");
            assert_no_leak(err, &lab);
        }
        assert!(lab.sandbox.tokens(&lab.channel()).is_empty());
    }

    #[tokio::test]
    async fn a_wrong_secret_is_permanent() {
        let lab = support::sandbox_lab().await;
        let issued = lab
            .client
            .issue_v21(&lab.signer, chrono::Duration::days(1))
            .await
            .unwrap();
        let wrong = ChannelSecret::new("not-the-channel-secret-at-all");
        let errors = [
            lab.client
                .revoke_v21(&lab.channel(), &wrong, &issued.access_token)
                .await
                .unwrap_err(),
            lab.client
                .issue_short_lived(&lab.channel(), &wrong)
                .await
                .unwrap_err(),
            lab.client
                .issue_stateless_with_secret(&lab.channel(), &wrong)
                .await
                .unwrap_err(),
            lab.client
                .issue_short_lived(&ChannelId::new("1999999999"), &lab.secret())
                .await
                .unwrap_err(),
        ];
        // LINE's codes: invalid_client, except the stateless endpoint's
        // "Invalid 'client_credentials'." invalid_request (docs/line-api.md 6).
        let codes = [
            "invalid_client",
            "invalid_client",
            "invalid_request",
            "invalid_client",
        ];
        for (err, code) in errors.iter().zip(codes) {
            assert!(matches!(err, LineError::Permanent { .. }), "{err:?}");
            assert_eq!(err.status(), Some(reqwest::StatusCode::BAD_REQUEST));
            assert_eq!(err.code(), Some(code), "{err}");
            assert_no_leak(err, &lab);
            assert_leaks_nothing(err, &["not-the-channel-secret-at-all"]);
        }
        // The token survived the failed revoke.
        assert_eq!(
            lab.sandbox.tokens(&lab.channel())[0].state,
            SandboxTokenState::Live
        );
    }

    #[tokio::test]
    async fn bad_assertions_are_permanent() {
        let lab = support::sandbox_lab().await;
        // The registered kid, signed for another channel: iss does not match.
        let wrong_channel = support::signer("1999999999", LAB_KID);
        let err = lab
            .client
            .issue_v21(&wrong_channel, chrono::Duration::days(1))
            .await
            .unwrap_err();
        assert!(matches!(err, LineError::Permanent { .. }), "{err:?}");
        assert_eq!(err.code(), Some("invalid_client"));
        assert_no_leak(&err, &lab);

        // Our clock 40 minutes behind LINE's: the assertion is already
        // expired when it arrives, and the client sees the skew.
        let slow = support::manual_clock();
        slow.advance(chrono::Duration::minutes(-40));
        let client = lab.client_with(&slow, Duration::from_secs(10));
        let err = client.valid_key_ids(&lab.signer).await.unwrap_err();
        assert!(matches!(err, LineError::Permanent { .. }), "{err:?}");
        assert_eq!(err.code(), Some("invalid_client"));
        assert_eq!(
            client.last_clock_skew(),
            Some(chrono::Duration::minutes(-40))
        );
        assert_no_leak(&err, &lab);
        assert!(lab.sandbox.tokens(&lab.channel()).is_empty());
    }

    #[tokio::test]
    async fn the_31st_token_is_refused_as_too_many_tokens() {
        let lab = support::sandbox_lab().await;
        let mut issued = Vec::new();
        for _ in 0..30 {
            issued.push(
                lab.client
                    .issue_v21(&lab.signer, chrono::Duration::days(30))
                    .await
                    .unwrap(),
            );
        }
        let err = lab
            .client
            .issue_v21(&lab.signer, chrono::Duration::days(30))
            .await
            .unwrap_err();
        assert!(matches!(err, LineError::TooManyTokens { .. }), "{err:?}");
        assert!(!err.is_transient());
        assert!(err.request_id().is_some());
        assert_no_leak(&err, &lab);
        assert_eq!(
            lab.client.valid_key_ids(&lab.signer).await.unwrap().len(),
            30
        );

        // Revoking one makes room for exactly one more.
        lab.client
            .revoke_v21(&lab.channel(), &lab.secret(), &issued[0].access_token)
            .await
            .unwrap();
        lab.client
            .issue_v21(&lab.signer, chrono::Duration::days(30))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn injected_server_errors_and_outages_are_transient() {
        let lab = support::sandbox_lab().await;
        let rule = FaultRule {
            error_rate: 1.0,
            ..FaultRule::default()
        };
        lab.sandbox
            .set_faults(faults("/oauth2/v2.1/token", rule))
            .unwrap();
        let err = lab
            .client
            .issue_v21(&lab.signer, chrono::Duration::days(1))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, LineError::Transient { cause: TransientCause::ServerError { status, .. }, .. } if *status == 500),
            "{err:?}"
        );
        assert!(err.request_id().is_some());
        assert_no_leak(&err, &lab);

        lab.sandbox.set_faults(Faults::default()).unwrap();
        lab.sandbox.set_down(true);
        let err = lab
            .client
            .revoke_short_lived(&linetokd::domain::AccessToken::new("x"))
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        assert_eq!(err.status(), Some(reqwest::StatusCode::SERVICE_UNAVAILABLE));
        lab.sandbox.set_down(false);
        lab.client.valid_key_ids(&lab.signer).await.unwrap();
    }

    #[tokio::test]
    async fn an_injected_429_is_rate_limited_with_its_retry_after() {
        let lab = support::sandbox_lab().await;
        let rule = FaultRule {
            rate_limit_rate: 1.0,
            retry_after_secs: 7,
            ..FaultRule::default()
        };
        lab.sandbox
            .set_faults(faults("/v2/oauth/accessToken", rule))
            .unwrap();
        let err = lab
            .client
            .issue_short_lived(&lab.channel(), &lab.secret())
            .await
            .unwrap_err();
        assert!(matches!(err, LineError::RateLimited { .. }), "{err:?}");
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
        assert!(err.request_id().is_some());
        assert_no_leak(&err, &lab);
    }

    #[tokio::test]
    async fn a_dropped_connection_is_transient() {
        let lab = support::sandbox_lab().await;
        let issued = lab
            .client
            .issue_v21(&lab.signer, chrono::Duration::days(1))
            .await
            .unwrap();
        let rule = FaultRule {
            drop_rate: 1.0,
            ..FaultRule::default()
        };
        lab.sandbox
            .set_faults(faults("/oauth2/v2.1/verify", rule))
            .unwrap();
        let err = lab
            .client
            .verify_v21(&issued.access_token)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                LineError::Transient {
                    cause: TransientCause::Network,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_no_leak(&err, &lab);
    }

    #[tokio::test]
    async fn a_hung_request_times_out() {
        let lab = support::sandbox_lab().await;
        let rule = FaultRule {
            hang_rate: 1.0,
            ..FaultRule::default()
        };
        lab.sandbox
            .set_faults(faults("/oauth2/v2.1/revoke", rule))
            .unwrap();
        let client = lab.client_with(&lab.clock, Duration::from_millis(300));
        let token = linetokd::domain::AccessToken::new("a.b.c");
        let err = client
            .revoke_v21(&lab.channel(), &lab.secret(), &token)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                LineError::Transient {
                    cause: TransientCause::Timeout,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_no_leak(&err, &lab);
    }
}
