//! LINE Login's token endpoints over HTTP, and the sandbox's own LINE Login
//! control and inspection routes.
//!
//! LINE's paths (faults apply, like on every LINE path; LINE Login's
//! token, verify and revoke calls share their path's fault rule with the
//! channel-token calls, and `missing_key_id` leaves a Login answer whole
//! since it has no `key_id`):
//! - `POST /oauth2/v2.1/token` dispatches on `grant_type`:
//!   `authorization_code` (`code`, `redirect_uri`, `client_id`,
//!   `client_secret`, optional `code_verifier`) and `refresh_token`
//!   (`refresh_token`, `client_id`, `client_secret` by app type) answer
//!   `{access_token, expires_in, refresh_token, scope, token_type[,
//!   id_token]}`; anything else goes to the channel-token issue.
//!   Refusals: 400 `invalid_grant` "invalid refresh token" (documented),
//!   400 `invalid_grant` "invalid authorization code", 400 `invalid_client`
//!   "invalid client_id" / "invalid client_secret" / "client_secret is
//!   required" (texts guessed).
//! - `GET /oauth2/v2.1/verify` answers a user access token with `{scope,
//!   client_id, expires_in}`, 400 `invalid_request` "access token expired"
//!   (documented) or "invalid access token" (revoked, deauthorized; text
//!   guessed); other tokens go to the channel-token verify.
//! - `POST /oauth2/v2.1/revoke` is LINE Login's when the form has a
//!   `refresh_token` and no `access_token` (the SDK's form: ends the
//!   grant), when the `access_token` is a user token, or when `client_id`
//!   is a Login channel and the token is no channel token; 200 empty, also
//!   for unknown tokens. Otherwise the channel-token revoke.
//! - `POST /user/v1/deauthorize` with `Authorization: Bearer <live v2.1 or
//!   stateless channel token of a Login channel>` and JSON
//!   `{"userAccessToken"}`: 204, then 400 `{"message":"invalid token"}`;
//!   401 `{"message"}` for a missing or unaccepted channel token.
//!
//! Control and inspection (no faults):
//! - `POST /_sandbox/login/{channel_id}/codes` with `{"subject",
//!   "redirect_uri", "scope"?}` (scope defaults to `profile`) → `{"code",
//!   "expires_at"}`: what LINE's login page would hand the app.
//! - `POST /_sandbox/login/{channel_id}/logins` with `{"subject",
//!   "scope"?}` → the token answer of a code exchanged at once: a grant
//!   logged in now.
//! - `GET /_sandbox/login/{channel_id}/grants` → every grant, oldest first
//!   ([`LoginGrantView`]: `seq`, `subject`, `scope`, `login_at`,
//!   `horizon_at`, `state` ("active"|"expired"|"revoked"|"deauthorized"),
//!   `refresh_token`, `retired_refresh_tokens`, `refreshes`, `ended_at`,
//!   `access_tokens`: `[{access_token, issued_at, expires_at, state
//!   ("live"|"expired"|"revoked"|"ended")}]`), values in clear.
//! - `GET /_sandbox/login/{channel_id}/verify_calls` → `{"at_ms": [...]}`:
//!   when each verify call for one of the channel's user tokens was
//!   answered (Unix milliseconds, sandbox clock, oldest first, the last
//!   100,000), so a test can judge a client's request rate from outside.
//! - 404 `{"message"}` for a channel that is not a Login channel.
//!
//! Depends on [`Sandbox`], the Login book, and `routes`' form helpers.

use axum::extract::rejection::{FormRejection, JsonRejection, QueryRejection};
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::Sandbox;
use super::errors::LineRefusal;
use super::login::{LoginGrantView, LoginRefusal, LoginVerdict, TokenGrant};
use super::routes::{self, Fields, PARAMS_INVALID, form_fields, optional, required};
use super::state::{TokenKind, Verdict};
use crate::domain::ChannelId;

/// LINE Login's two grant types (spelled out here: the sandbox uses no
/// `line` items but the JWT and key types).
const GRANT_TYPE_AUTHORIZATION_CODE: &str = "authorization_code";
const GRANT_TYPE_REFRESH_TOKEN: &str = "refresh_token";

/// LINE's answer for a missing or unaccepted bearer token (the Messaging
/// API's 401 text).
const AUTH_FAILED: &str =
    "Authentication failed. Confirm that the access token in the authorization header is valid.";

/// The token endpoint's answer to both grants.
#[derive(Serialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: i64,
    refresh_token: String,
    scope: String,
    token_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
}

impl From<TokenGrant> for TokenAnswer {
    fn from(g: TokenGrant) -> Self {
        Self {
            access_token: g.access_token,
            expires_in: g.expires_in,
            refresh_token: g.refresh_token,
            scope: g.scope,
            token_type: "Bearer",
            id_token: g.id_token,
        }
    }
}

/// LINE Login verify's answer.
#[derive(Serialize)]
struct VerifyAnswer {
    scope: String,
    client_id: String,
    expires_in: i64,
}

/// LINE's answer for each refusal of the Login book.
fn refusal(r: &LoginRefusal) -> LineRefusal {
    match r {
        LoginRefusal::UnknownClient | LoginRefusal::SecretMissing | LoginRefusal::SecretWrong => {
            LineRefusal::invalid_client(r.to_string())
        }
        LoginRefusal::BadCode | LoginRefusal::BadRefreshToken => LineRefusal::OAuth {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_grant",
            description: Some(r.to_string()),
        },
        LoginRefusal::BadUserToken => LineRefusal::message(StatusCode::BAD_REQUEST, r.to_string()),
    }
}

/// `POST /oauth2/v2.1/token`: LINE Login's two grants, or the channel
/// token issue for every other `grant_type`.
pub(super) async fn token(
    State(sandbox): State<Sandbox>,
    form: Result<Form<Fields>, FormRejection>,
) -> Response {
    let grant_type = form
        .as_ref()
        .ok()
        .and_then(|Form(f)| f.get("grant_type").cloned());
    let login = match grant_type.as_deref() {
        Some(GRANT_TYPE_AUTHORIZATION_CODE) => exchange_code(&sandbox, form),
        Some(GRANT_TYPE_REFRESH_TOKEN) => refresh(&sandbox, form),
        _ => {
            return routes::issue_v21(State(sandbox), form)
                .await
                .into_response();
        }
    };
    match login {
        Ok(answer) => Json(TokenAnswer::from(answer)).into_response(),
        Err(r) => r.into_response(),
    }
}

fn exchange_code(
    sandbox: &Sandbox,
    form: Result<Form<Fields>, FormRejection>,
) -> Result<TokenGrant, LineRefusal> {
    let fields = form_fields(form)?;
    let code = required(&fields, "code")?;
    let redirect_uri = required(&fields, "redirect_uri")?;
    let client_id = required(&fields, "client_id")?;
    let client_secret = optional(&fields, "client_secret");
    if let Some(verifier) = optional(&fields, "code_verifier")
        && !(43..=128).contains(&verifier.len())
    {
        return Err(LineRefusal::invalid_request(PARAMS_INVALID));
    }
    let now = sandbox.now();
    sandbox
        .with_login(|login| login.exchange_code(client_id, client_secret, code, redirect_uri, now))
        .map_err(|r| refusal(&r))
}

fn refresh(
    sandbox: &Sandbox,
    form: Result<Form<Fields>, FormRejection>,
) -> Result<TokenGrant, LineRefusal> {
    let fields = form_fields(form)?;
    let refresh_token = required(&fields, "refresh_token")?;
    let client_id = required(&fields, "client_id")?;
    let client_secret = optional(&fields, "client_secret");
    let now = sandbox.now();
    sandbox
        .with_login(|login| login.refresh(client_id, client_secret, refresh_token, now))
        .map_err(|r| refusal(&r))
}

/// `GET /oauth2/v2.1/verify`: a user access token, or a channel token.
pub(super) async fn verify(
    State(sandbox): State<Sandbox>,
    query: Result<Query<Fields>, QueryRejection>,
) -> Response {
    let token = query
        .as_ref()
        .ok()
        .and_then(|Query(f)| optional(f, "access_token").map(str::to_owned));
    let now = sandbox.now();
    let verdict = token.and_then(|t| {
        sandbox.with_login(|login| {
            login.note_verify(&t, now);
            login.verify(&t, now)
        })
    });
    match verdict {
        None => routes::verify_v21(State(sandbox), query)
            .await
            .into_response(),
        Some(LoginVerdict::Live {
            channel_id,
            expires_in,
            scope,
        }) => Json(VerifyAnswer {
            scope,
            client_id: channel_id.as_str().to_owned(),
            expires_in,
        })
        .into_response(),
        Some(LoginVerdict::Expired) => {
            LineRefusal::invalid_request("access token expired").into_response()
        }
        // Guess: LINE documents only the expired case's text.
        Some(LoginVerdict::Ended) => {
            LineRefusal::invalid_request("invalid access token").into_response()
        }
    }
}

/// `POST /oauth2/v2.1/revoke`: LINE Login's two forms, or the channel
/// token revoke.
pub(super) async fn revoke(
    State(sandbox): State<Sandbox>,
    form: Result<Form<Fields>, FormRejection>,
) -> Response {
    let Ok(Form(fields)) = &form else {
        return routes::revoke_v21(State(sandbox), form)
            .await
            .into_response();
    };
    let access_token = optional(fields, "access_token");
    let refresh_token = optional(fields, "refresh_token");
    let client_id = optional(fields, "client_id");
    let now = sandbox.now();
    let by_refresh = access_token.is_none() && refresh_token.is_some();
    let user_token = access_token.is_some_and(|t| {
        sandbox.with_login(|login| login.is_access_token(t))
            || (client_id.is_some_and(|c| sandbox.has_login_channel(&ChannelId::new(c)))
                && sandbox.with_book(|book| {
                    book.verify(
                        t,
                        &[TokenKind::V21, TokenKind::ShortLived, TokenKind::Stateless],
                        now,
                    ) == Verdict::Unknown
                }))
    });
    if !by_refresh && !user_token {
        return routes::revoke_v21(State(sandbox), form)
            .await
            .into_response();
    }
    let Some(client_id) = client_id else {
        return LineRefusal::invalid_request(PARAMS_INVALID).into_response();
    };
    let client_secret = optional(fields, "client_secret");
    let outcome = sandbox.with_login(|login| match (access_token, refresh_token) {
        (Some(token), _) => login.revoke_access(client_id, client_secret, token, now),
        (None, Some(token)) => login.revoke_refresh(client_id, client_secret, token, now),
        // by_refresh or user_token holds, so one of the two is there.
        (None, None) => Ok(()),
    });
    match outcome {
        Ok(()) => StatusCode::OK.into_response(),
        Err(r) => refusal(&r).into_response(),
    }
}

/// The body of deauthorize.
#[derive(Deserialize)]
pub(super) struct DeauthorizeBody {
    #[serde(rename = "userAccessToken")]
    user_access_token: String,
}

/// `POST /user/v1/deauthorize`.
pub(super) async fn deauthorize(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    body: Result<Json<DeauthorizeBody>, JsonRejection>,
) -> Response {
    let unauthorized = || LineRefusal::message(StatusCode::UNAUTHORIZED, AUTH_FAILED);
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let Some(bearer) = bearer else {
        return unauthorized().into_response();
    };
    let now = sandbox.now();
    // A channel token of a Login channel: v2.1 or stateless, as LINE asks.
    let channel = match sandbox
        .with_book(|book| book.verify(bearer, &[TokenKind::V21, TokenKind::Stateless], now))
    {
        Verdict::Live { channel_id, .. } if sandbox.has_login_channel(&channel_id) => channel_id,
        _ => return unauthorized().into_response(),
    };
    let Ok(Json(body)) = body else {
        // Guess: LINE documents no text for a malformed body.
        return LineRefusal::message(StatusCode::BAD_REQUEST, "The request body is invalid")
            .into_response();
    };
    match sandbox.with_login(|login| login.deauthorize(&channel, &body.user_access_token, now)) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => refusal(&r).into_response(),
    }
}

// ---------------------------------------------------------------------------
// Control and inspection.
// ---------------------------------------------------------------------------

/// The `/_sandbox/login/...` routes.
pub(crate) fn control_routes(sandbox: Sandbox) -> Router {
    Router::new()
        .route("/_sandbox/login/{channel_id}/codes", post(create_code))
        .route("/_sandbox/login/{channel_id}/logins", post(create_login))
        .route("/_sandbox/login/{channel_id}/grants", get(list_grants))
        .route(
            "/_sandbox/login/{channel_id}/verify_calls",
            get(list_verify_calls),
        )
        .with_state(sandbox)
}

fn login_channel(sandbox: &Sandbox, channel_id: String) -> Result<ChannelId, LineRefusal> {
    let channel = ChannelId::new(channel_id);
    if sandbox.has_login_channel(&channel) {
        Ok(channel)
    } else {
        Err(LineRefusal::message(
            StatusCode::NOT_FOUND,
            format!("no LINE Login channel {channel} is registered in the sandbox"),
        ))
    }
}

fn default_scope() -> String {
    "profile".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeRequest {
    subject: String,
    redirect_uri: String,
    #[serde(default = "default_scope")]
    scope: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    subject: String,
    #[serde(default = "default_scope")]
    scope: String,
}

fn bad_request(text: impl Into<String>) -> LineRefusal {
    LineRefusal::message(StatusCode::BAD_REQUEST, text)
}

async fn create_code(
    State(sandbox): State<Sandbox>,
    Path(channel_id): Path<String>,
    body: Result<Json<CodeRequest>, JsonRejection>,
) -> Result<Response, LineRefusal> {
    let Json(request) = body.map_err(|e| bad_request(e.body_text()))?;
    let channel = login_channel(&sandbox, channel_id)?;
    let code = sandbox
        .create_login_code(
            &channel,
            &request.subject,
            &request.scope,
            &request.redirect_uri,
        )
        .map_err(|r| refusal(&r))?;
    Ok((StatusCode::CREATED, Json(code)).into_response())
}

async fn create_login(
    State(sandbox): State<Sandbox>,
    Path(channel_id): Path<String>,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Result<Response, LineRefusal> {
    let Json(request) = body.map_err(|e| bad_request(e.body_text()))?;
    let channel = login_channel(&sandbox, channel_id)?;
    let grant = sandbox
        .login(&channel, &request.subject, &request.scope)
        .map_err(|r| refusal(&r))?;
    Ok((StatusCode::CREATED, Json(TokenAnswer::from(grant))).into_response())
}

async fn list_grants(
    State(sandbox): State<Sandbox>,
    Path(channel_id): Path<String>,
) -> Result<Json<Vec<LoginGrantView>>, LineRefusal> {
    let channel = login_channel(&sandbox, channel_id)?;
    Ok(Json(sandbox.login_grants(&channel)))
}

async fn list_verify_calls(
    State(sandbox): State<Sandbox>,
    Path(channel_id): Path<String>,
) -> Result<Response, LineRefusal> {
    let channel = login_channel(&sandbox, channel_id)?;
    let at_ms: Vec<i64> = sandbox
        .login_verify_calls(&channel)
        .iter()
        .map(chrono::DateTime::timestamp_millis)
        .collect();
    Ok(Json(serde_json::json!({ "at_ms": at_ms })).into_response())
}
