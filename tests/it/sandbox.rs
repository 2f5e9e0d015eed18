//! The LINE sandbox over real loopback HTTP: LINE's refusals, the token
//! kinds, the headers, the inspection API, every fault kind, and the shipped
//! config. Raw reqwest calls, so the sandbox is checked independently of
//! linetokd's own LINE client. Time is a `ManualClock` shared with the
//! sandbox; nothing sleeps to wait for an event.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use linetokd::clock::{Clock as _, ManualClock};
use linetokd::domain::{ChannelId, ChannelSecret, KeyId, SigningKid};
use linetokd::line::jwt::{AUDIENCE, AssertionSigner, CLIENT_ASSERTION_TYPE};
use linetokd::line::keys::{self, SigningKey, VerifyingKey};
use linetokd::sandbox::{
    FaultRule, Faults, MalformedBody, REQUEST_ID_HEADER, Sandbox, SandboxConfig, SandboxTokenState,
    TokenIssuer, TokenKind, VerifyRefusal,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const CHANNEL: &str = "1234567890";
const SECRET: &str = "0123456789abcdef0123456789abcdef";
const KID: &str = "8d4e4b3a-0a6f-4c1e-9a57-2f0c1b7d9e11";

fn start() -> DateTime<Utc> {
    DateTime::from_timestamp(1_790_000_000, 0).unwrap()
}

/// The repository's RSA-2048 fixture key (loading beats generating).
fn key_pem() -> &'static str {
    static PEM: OnceLock<String> = OnceLock::new();
    PEM.get_or_init(|| {
        std::fs::read_to_string(repo().join("tests/fixtures/keys/rsa2048-pkcs8.pem")).unwrap()
    })
}

/// A second key, registered nowhere: one generation per test binary run.
fn other_key_pem() -> &'static str {
    static PEM: OnceLock<String> = OnceLock::new();
    PEM.get_or_init(|| keys::generate().unwrap().to_pkcs8_pem().unwrap())
}

fn signing_key() -> SigningKey {
    SigningKey::parse(key_pem().as_bytes()).unwrap()
}

/// A sandbox served on 127.0.0.1:0 with one channel, a manual clock, and
/// helpers for LINE's endpoints. Dropping it shuts the server down.
struct Lab {
    base: String,
    sandbox: Sandbox,
    clock: ManualClock,
    http: reqwest::Client,
    signer: AssertionSigner,
    shutdown: CancellationToken,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn lab() -> Lab {
    let clock = ManualClock::new(start());
    let sandbox = Sandbox::empty(std::sync::Arc::new(clock.clone()));
    let public =
        VerifyingKey::parse(signing_key().public_jwk().to_json_pretty().as_bytes()).unwrap();
    sandbox
        .register_channel(
            ChannelId::new(CHANNEL),
            ChannelSecret::new(SECRET),
            vec![(SigningKid::new(KID), public)],
        )
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(sandbox.clone().serve(listener, shutdown.clone()));
    Lab {
        base,
        sandbox,
        clock,
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        signer: AssertionSigner::new(ChannelId::new(CHANNEL), SigningKid::new(KID), signing_key()),
        shutdown,
        server: Some(server),
    }
}

fn good_claims(now: DateTime<Utc>) -> Value {
    json!({
        "iss": CHANNEL, "sub": CHANNEL, "aud": AUDIENCE,
        "exp": now.timestamp() + 600, "token_exp": 86_400
    })
}

/// Signs arbitrary claims by hand, for the assertions the real signer
/// refuses to build.
fn forge(kid: &str, claims: &Value, pem: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let key = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

impl Lab {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn assertion(&self, token_exp: Option<Duration>) -> String {
        self.signer.sign(self.now(), token_exp).unwrap()
    }

    async fn issue_with(&self, assertion: &str) -> reqwest::Response {
        self.http
            .post(self.url("/oauth2/v2.1/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                ("client_assertion", assertion),
            ])
            .send()
            .await
            .unwrap()
    }

    /// Issues a v2.1 token living `days`, expecting success.
    async fn issue(&self, days: i64) -> Value {
        let r = self
            .issue_with(&self.assertion(Some(Duration::days(days))))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    async fn verify(&self, token: &str) -> reqwest::Response {
        self.http
            .get(self.url("/oauth2/v2.1/verify"))
            .query(&[("access_token", token)])
            .send()
            .await
            .unwrap()
    }

    async fn kids(&self) -> Vec<String> {
        let r = self
            .http
            .get(self.url("/oauth2/v2.1/tokens/kid"))
            .query(&[
                ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                ("client_assertion", &self.assertion(None)),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        serde_json::from_value(body["kids"].clone()).unwrap()
    }

    async fn revoke(&self, secret: &str, token: &str) -> reqwest::Response {
        self.http
            .post(self.url("/oauth2/v2.1/revoke"))
            .form(&[
                ("client_id", CHANNEL),
                ("client_secret", secret),
                ("access_token", token),
            ])
            .send()
            .await
            .unwrap()
    }

    async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .form(form)
            .send()
            .await
            .unwrap()
    }

    async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        (r.status(), r.json().await.unwrap())
    }

    async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        let r = request.send().await.unwrap();
        (r.status(), r.json().await.unwrap())
    }

    /// Issue statuses of `n` v2.1 issue requests living a day.
    async fn issue_statuses(&self, n: usize) -> Vec<StatusCode> {
        let mut statuses = Vec::with_capacity(n);
        for _ in 0..n {
            let assertion = self.assertion(Some(Duration::days(1)));
            statuses.push(self.issue_with(&assertion).await.status());
        }
        statuses
    }

    async fn put_faults(&self, faults: &Value) -> reqwest::Response {
        self.http
            .put(self.url("/_sandbox/faults"))
            .json(faults)
            .send()
            .await
            .unwrap()
    }
}

/// Asserts an OAuth-style error body.
async fn assert_oauth_error(r: reqwest::Response, status: StatusCode, error: &str) -> Value {
    assert_eq!(r.status(), status);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], error, "{body}");
    body
}

/// Asserts a Messaging-API-style error body.
async fn assert_message(r: reqwest::Response, status: StatusCode, message: &str) {
    assert_eq!(r.status(), status);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, json!({ "message": message }));
}

// ---- v2.1 happy path -----------------------------------------------------

#[tokio::test]
async fn v21_issue_verify_list_and_revoke_follow_lines_contract() {
    let lab = lab().await;
    let issued = lab.issue(30).await;
    assert_eq!(issued["token_type"], "Bearer");
    assert_eq!(issued["expires_in"], 30 * 86_400);
    let token = issued["access_token"].as_str().unwrap();
    let key_id = issued["key_id"].as_str().unwrap();
    assert!(token.starts_with("eyJ") && token.len() > 150, "{token}");
    assert_eq!(key_id.len(), 22);

    lab.clock.advance(Duration::seconds(100));
    let r = lab.verify(token).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["client_id"], CHANNEL);
    assert_eq!(v["expires_in"], 30 * 86_400 - 100);
    assert!(v["scope"].is_string());

    assert_eq!(lab.kids().await, vec![key_id.to_owned()]);

    let r = lab.revoke(SECRET, token).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.bytes().await.unwrap().is_empty(),
        "revoke answers an empty body"
    );
    assert!(lab.kids().await.is_empty());
    // revoking again, or an unknown well-formed token, is still 200
    assert_eq!(lab.revoke(SECRET, token).await.status(), StatusCode::OK);
    assert_eq!(
        lab.revoke(SECRET, "eyJa.b.c").await.status(),
        StatusCode::OK
    );
    // not a JWS at all: 400
    assert_oauth_error(
        lab.revoke(SECRET, "garbage").await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
}

// ---- the refusals LINE applies to assertions -----------------------------

#[tokio::test]
async fn refuses_an_unknown_kid_with_404_and_lines_message() {
    let lab = lab().await;
    let a = forge("not-registered", &good_claims(lab.now()), key_pem());
    assert_message(
        lab.issue_with(&a).await,
        StatusCode::NOT_FOUND,
        "Cannot find channel key that satisfies the conditions",
    )
    .await;
    assert!(lab.sandbox.tokens(&ChannelId::new(CHANNEL)).is_empty());
}

#[tokio::test]
async fn refuses_iss_different_from_sub() {
    let lab = lab().await;
    let mut c = good_claims(lab.now());
    c["sub"] = json!("9999999999");
    assert_oauth_error(
        lab.issue_with(&forge(KID, &c, key_pem())).await,
        StatusCode::BAD_REQUEST,
        "invalid_client",
    )
    .await;
    // and iss naming another channel than the key's
    let mut c = good_claims(lab.now());
    c["iss"] = json!("9999999999");
    c["sub"] = json!("9999999999");
    let body = assert_oauth_error(
        lab.issue_with(&forge(KID, &c, key_pem())).await,
        StatusCode::BAD_REQUEST,
        "invalid_client",
    )
    .await;
    assert_eq!(
        body["error_description"],
        "iss and clientId of key do not match"
    );
}

#[tokio::test]
async fn refuses_a_wrong_aud() {
    let lab = lab().await;
    for aud in ["https://api.line.me", "https://api.line.biz/", ""] {
        let mut c = good_claims(lab.now());
        c["aud"] = json!(aud);
        assert_oauth_error(
            lab.issue_with(&forge(KID, &c, key_pem())).await,
            StatusCode::BAD_REQUEST,
            "invalid_client",
        )
        .await;
    }
}

#[tokio::test]
async fn refuses_exp_more_than_30_minutes_ahead_of_the_sandbox_clock() {
    let lab = lab().await;
    let mut c = good_claims(lab.now());
    c["exp"] = json!(lab.now().timestamp() + 30 * 60 + 1);
    assert_oauth_error(
        lab.issue_with(&forge(KID, &c, key_pem())).await,
        StatusCode::BAD_REQUEST,
        "invalid_client",
    )
    .await;
    // exactly 30 minutes is allowed
    c["exp"] = json!(lab.now().timestamp() + 30 * 60);
    assert_eq!(
        lab.issue_with(&forge(KID, &c, key_pem())).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn refuses_an_expired_exp_judged_by_the_sandbox_clock() {
    let lab = lab().await;
    // A 10-minute assertion, then the sandbox clock moves 10 minutes on.
    let a = lab.assertion(Some(Duration::days(1)));
    lab.clock.advance(Duration::minutes(10));
    let body = assert_oauth_error(
        lab.issue_with(&a).await,
        StatusCode::BAD_REQUEST,
        "invalid_client",
    )
    .await;
    assert_eq!(body["error_description"], "Invalid exp");
    // exp given as a string (the doc example's mistake) is refused too
    let mut c = good_claims(lab.now());
    c["exp"] = json!((lab.now().timestamp() + 60).to_string());
    assert_oauth_error(
        lab.issue_with(&forge(KID, &c, key_pem())).await,
        StatusCode::BAD_REQUEST,
        "invalid_client",
    )
    .await;
}

#[tokio::test]
async fn refuses_token_exp_over_30_days_or_missing() {
    let lab = lab().await;
    let mut c = good_claims(lab.now());
    c["token_exp"] = json!(2_592_001);
    assert_oauth_error(
        lab.issue_with(&forge(KID, &c, key_pem())).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    c.as_object_mut().unwrap().remove("token_exp");
    assert_oauth_error(
        lab.issue_with(&forge(KID, &c, key_pem())).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    c["token_exp"] = json!(2_592_000);
    assert_eq!(
        lab.issue_with(&forge(KID, &c, key_pem())).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn refuses_a_bad_signature() {
    let lab = lab().await;
    // signed by another key under the registered kid
    let a = forge(KID, &good_claims(lab.now()), other_key_pem());
    assert_oauth_error(
        lab.issue_with(&a).await,
        StatusCode::BAD_REQUEST,
        "invalid_client",
    )
    .await;
    // a good assertion with its signature tampered with
    let good = lab.assertion(Some(Duration::days(1)));
    let (head, sig) = good.rsplit_once('.').unwrap();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    let tampered = format!("{head}.{flipped}{}", &sig[1..]);
    assert_oauth_error(
        lab.issue_with(&tampered).await,
        StatusCode::BAD_REQUEST,
        "invalid_client",
    )
    .await;
    // the same checks guard the kid listing
    let r = lab
        .http
        .get(lab.url("/oauth2/v2.1/tokens/kid"))
        .query(&[
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_assertion", &a),
        ])
        .send()
        .await
        .unwrap();
    assert_oauth_error(r, StatusCode::BAD_REQUEST, "invalid_client").await;
}

// ---- LINE's limits -------------------------------------------------------

#[tokio::test]
async fn the_31st_live_v21_token_is_refused_until_one_expires() {
    let lab = lab().await;
    let mut first = None;
    for i in 0..30 {
        // the first one lives a day, the rest 30 days
        let issued = lab.issue(if i == 0 { 1 } else { 30 }).await;
        first.get_or_insert(issued);
    }
    assert_message(
        lab.issue_with(&lab.assertion(Some(Duration::days(1))))
            .await,
        StatusCode::BAD_REQUEST,
        "The maximum number of access tokens has already been issued",
    )
    .await;
    assert_eq!(lab.kids().await.len(), 30);
    // the refused request issued nothing
    assert_eq!(lab.sandbox.tokens(&ChannelId::new(CHANNEL)).len(), 30);

    // the first expires: it no longer counts, and verify says so
    lab.clock.advance(Duration::days(1));
    let first = first.unwrap();
    let body = assert_oauth_error(
        lab.verify(first["access_token"].as_str().unwrap()).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert_eq!(body["error_description"], "The access token expired");
    assert_eq!(lab.kids().await.len(), 29);
    lab.issue(30).await;
}

#[tokio::test]
async fn revoke_with_a_wrong_secret_is_400_and_the_token_stays_live() {
    let lab = lab().await;
    let issued = lab.issue(30).await;
    let token = issued["access_token"].as_str().unwrap();
    let body = assert_oauth_error(
        lab.revoke("wrong-secret", token).await,
        StatusCode::BAD_REQUEST,
        "invalid_client",
    )
    .await;
    assert!(body.to_string().find(SECRET).is_none());
    let r = lab
        .post_form(
            "/oauth2/v2.1/revoke",
            &[
                ("client_id", "1111111111"),
                ("client_secret", SECRET),
                ("access_token", token),
            ],
        )
        .await;
    assert_oauth_error(r, StatusCode::BAD_REQUEST, "invalid_client").await;
    assert_eq!(lab.verify(token).await.status(), StatusCode::OK);
    assert_eq!(lab.kids().await.len(), 1);
}

#[tokio::test]
async fn malformed_requests_are_400_invalid_request_never_500() {
    let lab = lab().await;
    let good = lab.assertion(Some(Duration::days(1)));
    let forms: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("/oauth2/v2.1/token", vec![]),
        (
            "/oauth2/v2.1/token",
            vec![
                ("grant_type", "client_credentials"),
                ("client_assertion", &good),
            ],
        ),
        (
            "/oauth2/v2.1/token",
            vec![
                ("grant_type", "password"),
                ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                ("client_assertion", &good),
            ],
        ),
        (
            "/oauth2/v2.1/token",
            vec![
                ("grant_type", "client_credentials"),
                ("client_assertion_type", "urn:other"),
                ("client_assertion", &good),
            ],
        ),
        (
            "/oauth2/v2.1/revoke",
            vec![("client_id", CHANNEL), ("access_token", "eyJa.b.c")],
        ),
        (
            "/v2/oauth/accessToken",
            vec![("client_id", CHANNEL), ("client_secret", SECRET)],
        ),
        ("/v2/oauth/verify", vec![]),
        ("/v2/oauth/revoke", vec![("token", "x")]),
        (
            "/oauth2/v3/token",
            vec![("grant_type", "client_credentials")],
        ),
    ];
    for (path, form) in &forms {
        let r = lab.post_form(path, form).await;
        assert_oauth_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    // a JSON body, no content type, and bytes that are not UTF-8
    for path in [
        "/oauth2/v2.1/token",
        "/oauth2/v2.1/revoke",
        "/v2/oauth/accessToken",
        "/oauth2/v3/token",
    ] {
        let json = lab
            .http
            .post(lab.url(path))
            .json(&json!({"grant_type": "client_credentials"}))
            .send()
            .await
            .unwrap();
        assert_oauth_error(json, StatusCode::BAD_REQUEST, "invalid_request").await;
        let bare = lab
            .http
            .post(lab.url(path))
            .body("grant_type=client_credentials")
            .send()
            .await
            .unwrap();
        assert_oauth_error(bare, StatusCode::BAD_REQUEST, "invalid_request").await;
        let garbage = lab
            .http
            .post(lab.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(vec![0xff, 0xfe, b'=', 0x80, b'&', 0x00])
            .send()
            .await
            .unwrap();
        assert_oauth_error(garbage, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    // GET endpoints without their query parameters
    for path in ["/oauth2/v2.1/verify", "/oauth2/v2.1/tokens/kid"] {
        let r = lab.http.get(lab.url(path)).send().await.unwrap();
        assert_oauth_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    // an assertion that is not a JWT at all
    assert_oauth_error(
        lab.issue_with("not.a-jwt").await,
        StatusCode::BAD_REQUEST,
        "invalid_client",
    )
    .await;
    assert!(lab.sandbox.tokens(&ChannelId::new(CHANNEL)).is_empty());
}

// ---- other token kinds ---------------------------------------------------

async fn issue_short_lived(lab: &Lab) -> String {
    let r = lab
        .post_form(
            "/v2/oauth/accessToken",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", CHANNEL),
                ("client_secret", SECRET),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 2_592_000);
    assert!(body.get("key_id").is_none());
    body["access_token"].as_str().unwrap().to_owned()
}

async fn verify_short_lived(lab: &Lab, token: &str) -> reqwest::Response {
    lab.post_form("/v2/oauth/verify", &[("access_token", token)])
        .await
}

#[tokio::test]
async fn the_31st_short_lived_token_silently_evicts_the_oldest() {
    let lab = lab().await;
    let mut tokens = Vec::new();
    for _ in 0..31 {
        tokens.push(issue_short_lived(&lab).await);
        lab.clock.advance(Duration::seconds(1));
    }
    let body = assert_oauth_error(
        verify_short_lived(&lab, &tokens[0]).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert_eq!(body["error_description"], "access_token invalid");
    let r = verify_short_lived(&lab, &tokens[1]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["client_id"], CHANNEL);
    assert_eq!(v["expires_in"], 2_592_000 - 30);

    let listed = lab.sandbox.tokens(&ChannelId::new(CHANNEL));
    assert_eq!(listed[0].state, SandboxTokenState::Evicted);
    assert!(
        listed[1..]
            .iter()
            .all(|t| t.state == SandboxTokenState::Live && t.kind == TokenKind::ShortLived)
    );
    // short-lived tokens don't use up v2.1 capacity
    lab.issue(30).await;

    // revoke: 200 empty, then verify fails; unknown tokens are fine too
    let r = lab
        .post_form("/v2/oauth/revoke", &[("access_token", &tokens[1])])
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.unwrap().is_empty());
    assert_eq!(
        verify_short_lived(&lab, &tokens[1]).await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        lab.post_form("/v2/oauth/revoke", &[("access_token", "unknown")])
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn stateless_tokens_issue_by_assertion_or_by_secret() {
    let lab = lab().await;
    let by_jwt = lab
        .post_form(
            "/oauth2/v3/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                ("client_assertion", &lab.assertion(None)),
            ],
        )
        .await;
    let by_secret = lab
        .post_form(
            "/oauth2/v3/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", CHANNEL),
                ("client_secret", SECRET),
            ],
        )
        .await;
    // the SDK quirk: empty assertion fields alongside the secret form
    let with_empties = lab
        .post_form(
            "/oauth2/v3/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", ""),
                ("client_assertion", ""),
                ("client_id", CHANNEL),
                ("client_secret", SECRET),
            ],
        )
        .await;
    for r in [by_jwt, by_secret, with_empties] {
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 900);
        assert!(body["access_token"].as_str().unwrap().starts_with("eyJ"));
    }
    let bad = lab
        .post_form(
            "/oauth2/v3/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", CHANNEL),
                ("client_secret", "nope"),
            ],
        )
        .await;
    let body = assert_oauth_error(bad, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert_eq!(body["error_description"], "Invalid 'client_credentials'.");
    let unknown_kid = lab
        .post_form(
            "/oauth2/v3/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                (
                    "client_assertion",
                    &forge("nope", &good_claims(lab.now()), key_pem()),
                ),
            ],
        )
        .await;
    assert_eq!(unknown_kid.status(), StatusCode::NOT_FOUND);
    let listed = lab.sandbox.tokens(&ChannelId::new(CHANNEL));
    assert_eq!(listed.len(), 3);
    assert!(
        listed
            .iter()
            .all(|t| t.kind == TokenKind::Stateless && t.key_id.is_none())
    );
    // they count against nothing and expire after 15 minutes
    assert!(lab.kids().await.is_empty());
    lab.clock.advance(Duration::minutes(15));
    assert!(
        lab.sandbox
            .tokens(&ChannelId::new(CHANNEL))
            .iter()
            .all(|t| t.state == SandboxTokenState::Expired)
    );
}

#[tokio::test]
async fn verify_of_a_revoked_or_expired_v21_token_is_400() {
    let lab = lab().await;
    let a = lab.issue(1).await;
    let b = lab.issue(2).await;
    let a_token = a["access_token"].as_str().unwrap();
    let b_token = b["access_token"].as_str().unwrap();
    assert_eq!(lab.revoke(SECRET, a_token).await.status(), StatusCode::OK);
    assert_oauth_error(
        lab.verify(a_token).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;

    lab.clock.advance(Duration::days(2) - Duration::seconds(1));
    let v: Value = lab.verify(b_token).await.json().await.unwrap();
    assert_eq!(v["expires_in"], 1);
    lab.clock.advance(Duration::seconds(1));
    let body = assert_oauth_error(
        lab.verify(b_token).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert_eq!(body["error_description"], "The access token expired");
    // revoking an expired token is a harmless 200
    assert_eq!(lab.revoke(SECRET, b_token).await.status(), StatusCode::OK);
    let body = assert_oauth_error(
        lab.verify("not-a-jws").await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert_eq!(body["error_description"], "The access token not JWS");
    // a short-lived token is not a v2.1 token
    let short = issue_short_lived(&lab).await;
    assert_eq!(lab.verify(&short).await.status(), StatusCode::BAD_REQUEST);
}

// ---- headers -------------------------------------------------------------

#[tokio::test]
async fn every_response_carries_a_request_id_and_the_sandbox_clocks_date() {
    let lab = lab().await;
    // move the sandbox clock far from the system clock
    lab.clock
        .set(DateTime::from_timestamp(2_000_000_000, 0).unwrap());
    let ok = lab
        .issue_with(&lab.assertion(Some(Duration::days(1))))
        .await;
    let refused = lab.issue_with("junk").await;
    let inspect = lab
        .http
        .get(lab.url(&format!("/_sandbox/channels/{CHANNEL}/tokens")))
        .send()
        .await
        .unwrap();
    let missing = lab.http.get(lab.url("/no/such/path")).send().await.unwrap();
    let mut ids = Vec::new();
    for r in [ok, refused, inspect, missing] {
        let id = r.headers()[REQUEST_ID_HEADER].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36, "{id}");
        assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        ids.push(id);
        assert_eq!(r.headers()["date"], "Wed, 18 May 2033 03:33:20 GMT");
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "request IDs differ");
}

// ---- inspection and control ---------------------------------------------

#[tokio::test]
async fn inspection_lists_every_token_and_revokes_behind_the_clients_back() {
    let lab = lab().await;
    let a = lab.issue(30).await;
    let b = lab.issue(30).await;
    let key_a = a["key_id"].as_str().unwrap();
    let r = lab
        .http
        .post(lab.url(&format!(
            "/_sandbox/channels/{CHANNEL}/tokens/{key_a}/revoke"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({ "revoked": true }));
    assert_eq!(
        lab.verify(a["access_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        lab.kids().await,
        vec![b["key_id"].as_str().unwrap().to_owned()]
    );

    let listed: Value = lab
        .http
        .get(lab.url(&format!("/_sandbox/channels/{CHANNEL}/tokens")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["kind"], "v2.1");
    assert_eq!(listed[0]["key_id"], key_a);
    assert_eq!(listed[0]["access_token"], a["access_token"]);
    assert_eq!(listed[0]["state"], "revoked");
    assert!(listed[0]["revoked_at"].is_string());
    assert_eq!(listed[1]["state"], "live");
    assert!(listed[1]["revoked_at"].is_null());
    assert!(listed[1]["issued_at"].is_string() && listed[1]["expires_at"].is_string());

    // in process, the same
    assert!(
        !lab.sandbox
            .revoke_key_id(&ChannelId::new(CHANNEL), &KeyId::new(key_a))
    );
    let b_key = KeyId::new(b["key_id"].as_str().unwrap());
    assert!(lab.sandbox.revoke_key_id(&ChannelId::new(CHANNEL), &b_key));
    assert!(
        lab.sandbox
            .live_key_ids(&ChannelId::new(CHANNEL))
            .is_empty()
    );

    let unknown_key = lab
        .http
        .post(lab.url(&format!("/_sandbox/channels/{CHANNEL}/tokens/nope/revoke")))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_key.status(), StatusCode::NOT_FOUND);
    let unknown_channel = lab
        .http
        .get(lab.url("/_sandbox/channels/42/tokens"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_channel.status(), StatusCode::NOT_FOUND);
}

// ---- faults --------------------------------------------------------------

#[tokio::test]
async fn faults_api_round_trips_and_rejects_bad_rules_by_name() {
    let lab = lab().await;
    let faults = json!({
        "seed": 9,
        "down": false,
        "endpoints": { "/oauth2/v2.1/revoke": { "error_rate": 1.0 } }
    });
    let r = lab.put_faults(&faults).await;
    assert_eq!(r.status(), StatusCode::OK);
    let got: Value = lab
        .http
        .get(lab.url("/_sandbox/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["seed"], 9);
    assert_eq!(got["endpoints"]["/oauth2/v2.1/revoke"]["error_rate"], 1.0);
    // only that endpoint fails
    let issued = lab.issue(1).await;
    let r = lab
        .revoke(SECRET, issued["access_token"].as_str().unwrap())
        .await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        lab.kids().await.len(),
        1,
        "the failed revoke revoked nothing"
    );

    let bad = lab
        .put_faults(&json!({ "endpoints": { "*": { "drop_rate": 3 } } }))
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let msg: Value = bad.json().await.unwrap();
    assert!(
        msg["message"].as_str().unwrap().contains("drop_rate"),
        "{msg}"
    );
    let unknown = lab
        .put_faults(&json!({ "endpoints": { "*": { "eror_rate": 1 } } }))
        .await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    // the old rules stay after a refused update
    assert_eq!(lab.sandbox.faults().seed, Some(9));
}

fn everywhere(rule: FaultRule) -> Faults {
    Faults {
        seed: Some(1),
        down: false,
        endpoints: [("*".to_owned(), rule)].into_iter().collect(),
    }
}

#[tokio::test]
async fn rate_limit_fault_answers_429_with_retry_after() {
    let lab = lab().await;
    lab.sandbox
        .set_faults(everywhere(FaultRule {
            rate_limit_rate: 1.0,
            retry_after_secs: 17,
            ..FaultRule::default()
        }))
        .unwrap();
    let r = lab
        .issue_with(&lab.assertion(Some(Duration::days(1))))
        .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "17");
    assert!(r.headers().contains_key(REQUEST_ID_HEADER));
    assert!(lab.sandbox.tokens(&ChannelId::new(CHANNEL)).is_empty());
}

#[tokio::test]
async fn error_fault_answers_500_and_down_answers_503_on_every_line_endpoint() {
    let lab = lab().await;
    lab.sandbox
        .set_faults(everywhere(FaultRule {
            error_rate: 1.0,
            ..FaultRule::default()
        }))
        .unwrap();
    assert_eq!(
        lab.issue_with(&lab.assertion(Some(Duration::days(1))))
            .await
            .status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    lab.sandbox.set_faults(Faults::default()).unwrap();

    lab.sandbox.set_down(true);
    assert_eq!(
        lab.issue_with(&lab.assertion(Some(Duration::days(1))))
            .await
            .status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        lab.verify("eyJa.b.c").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        issue_short_lived_status(&lab).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // the inspection API keeps working during the outage
    let r = lab
        .http
        .get(lab.url("/_sandbox/faults"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["down"], true);
    lab.sandbox.set_down(false);
    lab.issue(1).await;
}

async fn issue_short_lived_status(lab: &Lab) -> StatusCode {
    lab.post_form(
        "/v2/oauth/accessToken",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", CHANNEL),
            ("client_secret", SECRET),
        ],
    )
    .await
    .status()
}

#[tokio::test]
async fn latency_fault_delays_the_answer() {
    let lab = lab().await;
    lab.sandbox
        .set_faults(everywhere(FaultRule {
            latency_ms: 150,
            ..FaultRule::default()
        }))
        .unwrap();
    let began = std::time::Instant::now();
    lab.issue(1).await;
    // a lower bound only: the sandbox slept at least this long
    assert!(began.elapsed() >= StdDuration::from_millis(150));
}

#[tokio::test]
async fn drop_fault_closes_the_connection_before_acting() {
    let lab = lab().await;
    lab.sandbox
        .set_faults(everywhere(FaultRule {
            drop_rate: 1.0,
            ..FaultRule::default()
        }))
        .unwrap();
    let err = lab
        .http
        .post(lab.url("/oauth2/v2.1/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_assertion", &lab.assertion(Some(Duration::days(1)))),
        ])
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_status() && !err.is_timeout(), "{err:?}");
    assert!(lab.sandbox.tokens(&ChannelId::new(CHANNEL)).is_empty());
    // the next connection works once the fault is lifted
    lab.sandbox.set_faults(Faults::default()).unwrap();
    lab.issue(1).await;
}

#[tokio::test]
async fn drop_after_fault_issues_the_token_but_loses_the_answer() {
    let lab = lab().await;
    lab.sandbox
        .set_faults(everywhere(FaultRule {
            drop_after_rate: 1.0,
            ..FaultRule::default()
        }))
        .unwrap();
    let result = lab
        .http
        .post(lab.url("/oauth2/v2.1/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_assertion", &lab.assertion(Some(Duration::days(1)))),
        ])
        .send()
        .await;
    assert!(result.is_err(), "{result:?}");
    // LINE issued it: the key ID is live, a token the client never saw
    assert_eq!(lab.sandbox.live_key_ids(&ChannelId::new(CHANNEL)).len(), 1);
}

#[tokio::test]
async fn hang_fault_holds_the_request_until_the_client_gives_up() {
    let lab = lab().await;
    lab.sandbox
        .set_faults(everywhere(FaultRule {
            hang_rate: 1.0,
            ..FaultRule::default()
        }))
        .unwrap();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(StdDuration::from_millis(300))
        .build()
        .unwrap();
    let url = lab.url("/oauth2/v2.1/verify?access_token=eyJa.b.c");
    let request = tokio::spawn(async move { http.get(url).send().await });
    lab.sandbox.wait_for_hung(1).await;
    let err = request.await.unwrap().unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    // the sandbox notices the client left and lets the request go
    lab.sandbox.wait_for_hung(0).await;
}

#[tokio::test]
async fn hung_requests_are_dropped_when_the_sandbox_shuts_down() {
    let mut lab = lab().await;
    lab.sandbox
        .set_faults(everywhere(FaultRule {
            hang_rate: 1.0,
            ..FaultRule::default()
        }))
        .unwrap();
    let http = lab.http.clone();
    let url = lab.url("/oauth2/v2.1/verify?access_token=eyJa.b.c");
    let request = tokio::spawn(async move { http.get(url).send().await });
    lab.sandbox.wait_for_hung(1).await;
    lab.shutdown.cancel();
    lab.server.take().unwrap().await.unwrap().unwrap();
    assert!(request.await.unwrap().is_err());
    assert_eq!(lab.sandbox.hung_requests(), 0);
}

// ---- time to the millisecond ----------------------------------------------

fn channel() -> ChannelId {
    ChannelId::new(CHANNEL)
}

fn ms(n: i64) -> Duration {
    Duration::milliseconds(n)
}

#[tokio::test]
async fn a_token_expiring_at_a_sub_second_instant_counts_until_that_millisecond() {
    let lab = lab().await;
    // Issued at t = start + 0.7 s, living a day: expires at t + 1 day, to
    // the millisecond.
    lab.clock.set(start() + ms(700));
    let first = lab.issue(1).await;
    for _ in 1..30 {
        lab.issue(30).await;
    }
    let (_, listed) = lab
        .get_json(&format!("/_sandbox/channels/{CHANNEL}/tokens"))
        .await;
    assert_eq!(listed[0]["issued_at"], "2026-09-21T14:13:20.700Z");
    assert_eq!(listed[0]["expires_at"], "2026-09-22T14:13:20.700Z");
    let expiry = start() + Duration::days(1) + ms(700);
    let token = first["access_token"].as_str().unwrap();

    // 0.1 s before: still live everywhere, so the 31st is refused
    lab.clock.set(expiry - ms(100));
    assert_eq!(
        lab.issue_statuses(1).await,
        vec![StatusCode::BAD_REQUEST],
        "the 31st issue while the first still counts"
    );
    assert_eq!(lab.kids().await.len(), 30);
    let r = lab.verify(token).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["expires_in"], 0);
    assert_eq!(lab.sandbox.live_tokens(&channel()).len(), 30);

    // at the instant: gone from the count, the list and verify
    lab.clock.set(expiry);
    assert_eq!(lab.kids().await.len(), 29);
    let body = assert_oauth_error(
        lab.verify(token).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert_eq!(body["error_description"], "The access token expired");
    assert_eq!(lab.revoke(SECRET, token).await.status(), StatusCode::OK);
    assert_eq!(
        lab.sandbox
            .token(&channel(), &KeyId::new(first["key_id"].as_str().unwrap()))
            .unwrap()
            .state,
        SandboxTokenState::Expired,
        "revoking at the expiry instant revokes nothing"
    );
    assert_eq!(lab.issue_statuses(1).await, vec![StatusCode::OK]);
}

#[tokio::test]
async fn the_sandbox_reads_its_clock_to_the_millisecond() {
    let lab = lab().await;
    lab.clock.set(start() + Duration::nanoseconds(250_999_999));
    assert_eq!(lab.sandbox.now(), start() + ms(250));
    let issued = lab.issue(1).await;
    let token = lab
        .sandbox
        .token(&channel(), &KeyId::new(issued["key_id"].as_str().unwrap()))
        .unwrap();
    assert_eq!(token.issued_at, start() + ms(250));
    assert_eq!(token.expires_at, start() + Duration::days(1) + ms(250));
    assert_eq!(token.issuer, TokenIssuer::Api);
}

// ---- foreign (pre-filled) tokens -------------------------------------------

#[tokio::test]
async fn foreign_tokens_are_listed_counted_verified_and_marked_over_http() {
    let lab = lab().await;
    let path = format!("/_sandbox/channels/{CHANNEL}/foreign-tokens");
    let at = "2026-09-21T14:13:25.250Z"; // start + 5.25 s
    let (status, added) = lab
        .send_json(
            reqwest::Method::POST,
            &path,
            Some(&json!({ "expires_in_ms": [700, 86_400_000], "expires_at": [at] })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{added}");
    assert_eq!(added["now"], "2026-09-21T14:13:20.000Z");
    let tokens = added["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 3);
    let expiries: Vec<&str> = tokens
        .iter()
        .map(|t| t["expires_at"].as_str().unwrap())
        .collect();
    assert_eq!(
        expiries,
        vec!["2026-09-21T14:13:20.700Z", "2026-09-22T14:13:20.000Z", at]
    );
    assert!(tokens.iter().all(|t| t["issuer"] == "foreign"));
    assert!(tokens.iter().all(|t| t["verify_refusal"].is_null()));

    // LINE's endpoints treat them like any other token
    let key_ids: Vec<String> = tokens
        .iter()
        .map(|t| t["key_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(lab.kids().await, key_ids);
    let r = lab
        .verify(tokens[1]["access_token"].as_str().unwrap())
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["client_id"].as_str(), v["expires_in"].as_i64()),
        (Some(CHANNEL), Some(86_400))
    );
    // the history marks them too
    let (_, history) = lab
        .get_json(&format!("/_sandbox/channels/{CHANNEL}/tokens"))
        .await;
    assert_eq!(history[0]["issuer"], "foreign");
    assert_eq!(history[0]["kind"], "v2.1");
    // and LINE's revoke, with the channel secret, revokes one
    let r = lab
        .revoke(SECRET, tokens[2]["access_token"].as_str().unwrap())
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(lab.kids().await, key_ids[..2].to_vec());

    // the cap counts them: 2 live foreign + 28 issued = 30
    for _ in 0..28 {
        lab.issue(30).await;
    }
    assert_eq!(lab.issue_statuses(1).await, vec![StatusCode::BAD_REQUEST]);
    let (status, refused) = lab
        .send_json(
            reqwest::Method::POST,
            &path,
            Some(&json!({ "expires_in_ms": [1000] })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        refused["message"].as_str().unwrap().contains("cap of 30"),
        "{refused}"
    );

    // refusals name the problem
    for (body, needle) in [
        (json!({}), "no tokens"),
        (json!({ "expires_in_ms": [0] }), "not after"),
        (json!({ "expires_in_ms": [2_592_000_001_i64] }), "30 days"),
        (json!({ "expires_in": [5] }), "expires_in"),
    ] {
        let (status, msg) = lab
            .send_json(reqwest::Method::POST, &path, Some(&body))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            msg["message"].as_str().unwrap().contains(needle),
            "{body}: {msg}"
        );
    }
    let (status, _) = lab
        .send_json(
            reqwest::Method::POST,
            "/_sandbox/channels/42/foreign-tokens",
            Some(&json!({ "expires_in_ms": [1000] })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_foreign_token_expiring_at_t_plus_0_7s_counts_at_0_6s_and_not_at_0_7s() {
    let lab = lab().await;
    let t = lab.sandbox.now();
    let foreign = lab
        .sandbox
        .add_foreign_tokens(&channel(), &[t + ms(700)])
        .unwrap();
    assert_eq!(foreign[0].issuer, TokenIssuer::Foreign);
    assert_eq!(foreign[0].expires_at, t + ms(700));
    for _ in 0..29 {
        lab.issue(30).await;
    }
    lab.clock.set(t + ms(600));
    assert_eq!(lab.issue_statuses(1).await, vec![StatusCode::BAD_REQUEST]);
    assert_eq!(lab.kids().await.len(), 30);
    lab.clock.set(t + ms(700));
    assert_eq!(lab.kids().await.len(), 29);
    assert_eq!(lab.issue_statuses(1).await, vec![StatusCode::OK]);
    let err = lab
        .sandbox
        .add_foreign_tokens(&channel(), &[t + Duration::days(1)])
        .unwrap_err();
    assert!(err.to_string().contains("30"), "{err}");
    assert!(
        lab.sandbox
            .add_foreign_tokens(&ChannelId::new("42"), &[t + Duration::days(1)])
            .is_err()
    );
}

// ---- verify refusing a live token ------------------------------------------

#[tokio::test]
async fn verify_refuses_a_chosen_live_token_that_the_list_still_shows_and_the_cap_counts() {
    let lab = lab().await;
    let a = lab.issue(30).await;
    let b = lab.issue(30).await;
    let key_a = a["key_id"].as_str().unwrap();
    let token_a = a["access_token"].as_str().unwrap();
    let path = format!("/_sandbox/channels/{CHANNEL}/tokens/{key_a}/verify-refusal");
    let (status, set) = lab
        .send_json(
            reqwest::Method::PUT,
            &path,
            Some(&json!({ "as": "expired" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(set, json!({ "key_id": key_a, "verify_refusal": "expired" }));

    let body = assert_oauth_error(
        lab.verify(token_a).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert_eq!(body["error_description"], "The access token expired");
    // the other token verifies; the list shows both
    assert_eq!(
        lab.verify(b["access_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(lab.kids().await.len(), 2);
    let (_, live) = lab
        .get_json(&format!("/_sandbox/channels/{CHANNEL}/live"))
        .await;
    assert_eq!(live["tokens"][0]["key_id"], key_a);
    assert_eq!(live["tokens"][0]["verify_refusal"], "expired");
    assert!(live["tokens"][1]["verify_refusal"].is_null());

    // in process: the other wording, and the cap still counts the token
    assert!(lab.sandbox.set_verify_refusal(
        &channel(),
        &KeyId::new(key_a),
        Some(VerifyRefusal::Invalid)
    ));
    let body = assert_oauth_error(
        lab.verify(token_a).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert_eq!(body["error_description"], "The access token is invalid");
    let now = lab.sandbox.now();
    lab.sandbox
        .add_foreign_tokens(&channel(), &vec![now + Duration::days(1); 28])
        .unwrap();
    assert_eq!(lab.issue_statuses(1).await, vec![StatusCode::BAD_REQUEST]);

    // lifted: verify accepts it again
    let (status, cleared) = lab.send_json(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(cleared["verify_refusal"].is_null());
    assert_eq!(lab.verify(token_a).await.status(), StatusCode::OK);

    let (status, _) = lab
        .send_json(
            reqwest::Method::PUT,
            &format!("/_sandbox/channels/{CHANNEL}/tokens/nope/verify-refusal"),
            Some(&json!({ "as": "expired" })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = lab
        .send_json(reqwest::Method::PUT, &path, Some(&json!({ "as": "gone" })))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn refuse_live_rate_refuses_a_share_of_verify_calls_reproducibly() {
    let lab = lab().await;
    let issued = lab.issue(30).await;
    let token = issued["access_token"].as_str().unwrap();
    let faults = json!({
        "seed": 5,
        "endpoints": { "/oauth2/v2.1/verify": { "refuse_live_rate": 0.5 } }
    });
    let run = || async {
        assert_eq!(lab.put_faults(&faults).await.status(), StatusCode::OK);
        let mut answers = Vec::new();
        for _ in 0..40 {
            let r = lab.verify(token).await;
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            answers.push((
                status,
                body["error_description"].as_str().map(str::to_owned),
            ));
        }
        answers
    };
    let first = run().await;
    let refused = first
        .iter()
        .filter(|(s, _)| *s == StatusCode::BAD_REQUEST)
        .count();
    assert!((8..=32).contains(&refused), "{refused} of 40 refused");
    let wordings: std::collections::HashSet<_> =
        first.iter().filter_map(|(_, d)| d.clone()).collect();
    assert_eq!(wordings.len(), 2, "{wordings:?}");
    // the same seed, the same answers, with the list untouched throughout
    assert_eq!(run().await, first);
    assert_eq!(lab.kids().await.len(), 1);
    // only live tokens are affected: a dead one keeps its own answer
    lab.clock.advance(Duration::days(30));
    for _ in 0..5 {
        let body = assert_oauth_error(
            lab.verify(token).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        assert_eq!(body["error_description"], "The access token expired");
    }
}

// ---- malformed issue answers --------------------------------------------

#[tokio::test]
async fn a_malformed_issue_answer_still_issues_the_token() {
    let lab = lab().await;
    for (n, shape) in ["missing_key_id", "truncated_json", "html"]
        .into_iter()
        .enumerate()
    {
        let faults = json!({
            "seed": 3,
            "endpoints": {
                "/oauth2/v2.1/token": { "malformed_rate": 1.0, "malformed_as": shape }
            }
        });
        assert_eq!(lab.put_faults(&faults).await.status(), StatusCode::OK);
        let r = lab
            .issue_with(&lab.assertion(Some(Duration::days(1))))
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{shape}");
        let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
        let body = r.text().await.unwrap();
        let parsed = serde_json::from_str::<Value>(&body);
        match shape {
            "missing_key_id" => {
                let parsed = parsed.unwrap();
                assert!(parsed["access_token"].is_string() && parsed.get("key_id").is_none());
                assert_eq!(content_type, "application/json");
            }
            "truncated_json" => {
                assert!(parsed.is_err(), "{shape}");
                assert!(body.starts_with('{'));
            }
            _ => {
                assert!(parsed.is_err());
                assert!(content_type.starts_with("text/html"), "{content_type}");
            }
        }
        // LINE issued it: live, listed, counted, from the API
        let live = lab.sandbox.live_tokens(&channel());
        assert_eq!(live.len(), n + 1, "{shape}");
        assert!(live.iter().all(|t| t.issuer == TokenIssuer::Api));
        assert_eq!(lab.kids().await.len(), n + 1);
    }
    // a refused issue stays refused, never a malformed 200
    lab.sandbox
        .set_faults(Faults {
            seed: Some(1),
            down: false,
            endpoints: [(
                "/oauth2/v2.1/token".to_owned(),
                FaultRule {
                    malformed_rate: 1.0,
                    malformed_as: Some(MalformedBody::MissingKeyId),
                    ..FaultRule::default()
                },
            )]
            .into_iter()
            .collect(),
        })
        .unwrap();
    let forged = forge(KID, &json!({ "iss": CHANNEL }), key_pem());
    assert_eq!(
        lab.issue_with(&forged).await.status(),
        StatusCode::BAD_REQUEST
    );
}

// ---- per-endpoint faults -------------------------------------------------

#[tokio::test]
async fn each_endpoint_gets_its_own_fault() {
    let lab = lab().await;
    let now = lab.sandbox.now();
    let foreign = lab
        .sandbox
        .add_foreign_tokens(&channel(), &[now + Duration::days(1)])
        .unwrap();
    let token = foreign[0].access_token.expose().to_owned();
    let faults = json!({
        "seed": 11,
        "endpoints": {
            "/oauth2/v2.1/token": { "error_rate": 1.0 },
            "/oauth2/v2.1/verify": { "rate_limit_rate": 1.0, "retry_after_secs": 9 },
            "/oauth2/v2.1/tokens/kid": { "drop_rate": 1.0 },
            "/oauth2/v2.1/revoke": { "hang_rate": 1.0 }
        }
    });
    assert_eq!(lab.put_faults(&faults).await.status(), StatusCode::OK);

    assert_eq!(
        lab.issue_statuses(1).await,
        vec![StatusCode::INTERNAL_SERVER_ERROR]
    );
    let r = lab.verify(&token).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "9");
    let err = lab
        .http
        .get(lab.url("/oauth2/v2.1/tokens/kid"))
        .query(&[
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_assertion", &lab.assertion(None)),
        ])
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_status() && !err.is_timeout(), "{err:?}");

    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(StdDuration::from_millis(300))
        .build()
        .unwrap();
    let url = lab.url("/oauth2/v2.1/revoke");
    let request = tokio::spawn(async move {
        http.post(url)
            .form(&[
                ("client_id", CHANNEL),
                ("client_secret", SECRET),
                ("access_token", token.as_str()),
            ])
            .send()
            .await
    });
    lab.sandbox.wait_for_hung(1).await;
    assert!(request.await.unwrap().unwrap_err().is_timeout());
    lab.sandbox.wait_for_hung(0).await;
    // none of it changed LINE's state
    assert_eq!(lab.sandbox.live_tokens(&channel()).len(), 1);
}

#[tokio::test]
async fn a_seed_replays_an_endpoints_faults_whatever_else_is_called() {
    let lab = lab().await;
    let faults = json!({
        "seed": 42,
        "endpoints": { "*": { "error_rate": 0.5 } }
    });
    let kid_statuses = |interleave: bool| {
        let lab = &lab;
        let faults = &faults;
        async move {
            assert_eq!(lab.put_faults(faults).await.status(), StatusCode::OK);
            let mut statuses = Vec::new();
            for i in 0..16 {
                if interleave && i % 2 == 0 {
                    lab.verify("eyJa.b.c").await;
                }
                let r = lab
                    .http
                    .get(lab.url("/oauth2/v2.1/tokens/kid"))
                    .query(&[
                        ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                        ("client_assertion", &lab.assertion(None)),
                    ])
                    .send()
                    .await
                    .unwrap();
                statuses.push(r.status());
            }
            statuses
        }
    };
    let alone = kid_statuses(false).await;
    assert!(alone.contains(&StatusCode::OK) && alone.contains(&StatusCode::INTERNAL_SERVER_ERROR));
    assert_eq!(kid_statuses(true).await, alone);
}

// ---- inspection of the live tokens -----------------------------------------

#[tokio::test]
async fn live_inspection_shows_exactly_the_live_tokens_at_an_instant() {
    let lab = lab().await;
    let a = lab.issue(1).await;
    let b = lab.issue(2).await;
    let c = lab.issue(30).await;
    let now = lab.sandbox.now();
    lab.sandbox
        .add_foreign_tokens(&channel(), &[now + Duration::days(1) + ms(500)])
        .unwrap();
    assert!(
        lab.sandbox
            .revoke_key_id(&channel(), &KeyId::new(b["key_id"].as_str().unwrap()))
    );
    lab.clock.advance(Duration::days(1));

    let (status, live) = lab
        .get_json(&format!("/_sandbox/channels/{CHANNEL}/live"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(live["now"], "2026-09-22T14:13:20.000Z");
    let tokens = live["tokens"].as_array().unwrap();
    let shown: Vec<(&str, &str, &str)> = tokens
        .iter()
        .map(|t| {
            (
                t["key_id"].as_str().unwrap(),
                t["issuer"].as_str().unwrap(),
                t["expires_at"].as_str().unwrap(),
            )
        })
        .collect();
    let foreign_key = lab.sandbox.tokens(&channel())[3].key_id.clone().unwrap();
    assert_eq!(
        shown,
        vec![
            (
                c["key_id"].as_str().unwrap(),
                "api",
                "2026-10-21T14:13:20.000Z"
            ),
            (foreign_key.as_str(), "foreign", "2026-09-22T14:13:20.500Z"),
        ]
    );
    assert_eq!(tokens[0]["seq"], 2);
    assert_eq!(tokens[0]["access_token"], c["access_token"]);
    // the same in process, and for every channel at once
    let in_process: Vec<String> = lab
        .sandbox
        .live_tokens(&channel())
        .iter()
        .map(|t| t.key_id.as_str().to_owned())
        .collect();
    assert_eq!(in_process, lab.kids().await);
    let (_, all) = lab.get_json("/_sandbox/live").await;
    assert_eq!(all["channels"][CHANNEL], live["tokens"]);
    let (at, all) = lab.sandbox.live_tokens_all();
    assert_eq!(at, lab.sandbox.now());
    assert_eq!(all[&channel()].len(), 2);
    lab.clock.advance(ms(500));
    assert_eq!(lab.sandbox.live_tokens(&channel()).len(), 1);

    // history without rescanning it: since N, and one token by key ID
    let (_, since) = lab
        .get_json(&format!("/_sandbox/channels/{CHANNEL}/tokens?since=2"))
        .await;
    let since = since.as_array().unwrap();
    assert_eq!(since.len(), 2);
    assert_eq!(
        (since[0]["seq"].as_u64(), since[1]["issuer"].as_str()),
        (Some(2), Some("foreign"))
    );
    assert!(lab.sandbox.tokens_since(&channel(), 4).is_empty());
    let key_a = a["key_id"].as_str().unwrap();
    let (status, one) = lab
        .get_json(&format!("/_sandbox/channels/{CHANNEL}/tokens/{key_a}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (one["state"].as_str(), one["seq"].as_u64()),
        (Some("expired"), Some(0))
    );
    let (status, _) = lab
        .get_json(&format!("/_sandbox/channels/{CHANNEL}/tokens/nope"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = lab.get_json("/_sandbox/channels/42/live").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = lab
        .get_json(&format!("/_sandbox/channels/{CHANNEL}/tokens?since=x"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

// ---- config --------------------------------------------------------------

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn the_shipped_config_loads_and_its_example_private_key_is_accepted() {
    let config = SandboxConfig::load(&repo().join("config/sandbox.toml")).unwrap();
    assert!(!config.channels.is_empty());
    let channel = config.channels[0].clone();
    let (kid, _) = channel.keys[0].clone();
    let clock = ManualClock::new(start());
    let sandbox = Sandbox::new(config, std::sync::Arc::new(clock.clone())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let _drop = shutdown.clone().drop_guard();
    tokio::spawn(sandbox.clone().serve(listener, shutdown));

    let key =
        SigningKey::from_file(&repo().join("config/sandbox-keys/example-private-DO-NOT-USE.pem"))
            .unwrap();
    let signer = AssertionSigner::new(channel.id.clone(), kid, key);
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{base}/oauth2/v2.1/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            (
                "client_assertion",
                &signer.sign(clock.now(), Some(Duration::days(30))).unwrap(),
            ),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(sandbox.live_key_ids(&channel.id).len(), 1);
}

#[tokio::test]
async fn a_public_key_written_by_keygen_registers_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let generated = linetokd::keygen::write_key_pair(&dir.path().join("keys"), "bot").unwrap();
    let public = generated.public_jwk.strip_prefix(dir.path()).unwrap();
    let config_path = dir.path().join("sandbox.toml");
    std::fs::write(
        &config_path,
        format!(
            "[[channels]]\nid = \"555\"\nsecret = \"s\"\nkeys = [{{ kid = \"k1\", public_key_file = \"{}\" }}]\n",
            public.display()
        ),
    )
    .unwrap();
    let config = SandboxConfig::load(&config_path).unwrap();
    let clock = ManualClock::new(start());
    let sandbox = Sandbox::new(config, std::sync::Arc::new(clock.clone())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let _drop = shutdown.clone().drop_guard();
    tokio::spawn(sandbox.clone().serve(listener, shutdown));

    let key = SigningKey::from_file(&generated.private_key).unwrap();
    let signer = AssertionSigner::new(ChannelId::new("555"), SigningKid::new("k1"), key);
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{base}/oauth2/v2.1/tokens/kid"))
        .query(&[
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_assertion", &signer.sign(clock.now(), None).unwrap()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({ "kids": [] }));
}

#[tokio::test]
async fn run_reports_a_bad_config_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sandbox.toml");
    std::fs::write(&path, "[[channels]]\nid = \"1\"\nsecret = \"s\"\nkeys = [{ kid = \"k\", public_key_file = \"absent.jwk\" }]\n").unwrap();
    let clock: linetokd::clock::SharedClock = std::sync::Arc::new(ManualClock::new(start()));
    let err = linetokd::sandbox::run(
        "127.0.0.1:0".parse().unwrap(),
        &path,
        clock.clone(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("absent.jwk"), "{err:#}");
    let missing = dir.path().join("nope.toml");
    let err = linetokd::sandbox::run(
        "127.0.0.1:0".parse().unwrap(),
        &missing,
        clock,
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("nope.toml"), "{err:#}");
}

// ---- LINE's contract -----------------------------------------------------

/// The answer's keys are the schema's: all required ones, nothing undeclared,
/// each with the declared JSON type.
fn assert_matches_contract(
    contract: &crate::contract::Contract,
    method: &str,
    path: &str,
    body: &Value,
) {
    let op = contract
        .operation(method, path)
        .unwrap_or_else(|| panic!("{method} {path} is not in the contract"));
    let schema = contract.ok_schema(op).unwrap();
    let fields = body.as_object().unwrap();
    for (key, value) in fields {
        let property = schema
            .properties
            .get(key)
            .unwrap_or_else(|| panic!("{path}: undeclared {key}"));
        let declared = property["type"].as_str().unwrap();
        let ok = match declared {
            "string" => value.is_string(),
            "integer" => value.is_i64(),
            "array" => value.is_array(),
            other => panic!("{path}: unexpected type {other}"),
        };
        assert!(ok, "{path}: {key} = {value} is not {declared}");
    }
    for key in &schema.required {
        assert!(fields.contains_key(key), "{path}: missing required {key}");
    }
}

#[tokio::test]
async fn every_sandbox_endpoint_and_answer_is_the_one_lines_contract_defines() {
    use linetokd::sandbox::Endpoint;
    let Some(contract) = crate::contract::Contract::load() else {
        return;
    };
    let methods = |e: Endpoint| match e {
        Endpoint::VerifyV21 | Endpoint::ListKids => "GET",
        _ => "POST",
    };
    let ours: Vec<(String, String)> = Endpoint::ALL
        .iter()
        .map(|e| (methods(*e).to_owned(), e.path().to_owned()))
        .collect();
    let theirs: Vec<(String, String)> = contract
        .operations()
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    for op in &theirs {
        assert!(ours.contains(op), "the sandbox does not serve {op:?}");
    }
    for op in &ours {
        assert!(theirs.contains(op), "{op:?} is not a LINE operation");
    }

    let lab = lab().await;
    let issued = lab.issue(30).await;
    assert_matches_contract(&contract, "POST", "/oauth2/v2.1/token", &issued);
    let token = issued["access_token"].as_str().unwrap();
    let verified: Value = lab.verify(token).await.json().await.unwrap();
    assert_matches_contract(&contract, "GET", "/oauth2/v2.1/verify", &verified);
    let kids = json!({ "kids": lab.kids().await });
    assert_matches_contract(&contract, "GET", "/oauth2/v2.1/tokens/kid", &kids);
    let short = lab
        .post_form(
            "/v2/oauth/accessToken",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", CHANNEL),
                ("client_secret", SECRET),
            ],
        )
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_matches_contract(&contract, "POST", "/v2/oauth/accessToken", &short);
    let short_verified: Value = verify_short_lived(&lab, short["access_token"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert_matches_contract(&contract, "POST", "/v2/oauth/verify", &short_verified);
    let stateless: Value = lab
        .post_form(
            "/oauth2/v3/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", CHANNEL),
                ("client_secret", SECRET),
            ],
        )
        .await
        .json()
        .await
        .unwrap();
    assert_matches_contract(&contract, "POST", "/oauth2/v3/token", &stateless);
    // the two revokes answer 200 with no body, as the contract (no content) says
    for (path, form) in [
        (
            "/oauth2/v2.1/revoke",
            vec![
                ("client_id", CHANNEL),
                ("client_secret", SECRET),
                ("access_token", token),
            ],
        ),
        (
            "/v2/oauth/revoke",
            vec![("access_token", short["access_token"].as_str().unwrap())],
        ),
    ] {
        assert!(
            contract
                .ok_schema(contract.operation("POST", path).unwrap())
                .is_none()
        );
        let r = lab.post_form(path, &form).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.bytes().await.unwrap().is_empty());
    }
}
