//! LINE's channel access token endpoints, as HTTP handlers, plus the two
//! layers around them: fault injection (LINE endpoints only) and the
//! response headers every answer carries.
//!
//! Paths, methods, field names and response shapes follow
//! `line-openapi/channel-access-token.yml` exactly. Request bodies are
//! forms, GET parameters are queries; anything malformed (missing fields,
//! wrong `grant_type`, wrong content type, garbage) is a 400
//! `invalid_request`, never a 500. Error texts LINE documents are used as
//! is; the others are marked as guesses where they are written.
//!
//! Every response carries `X-Line-Request-Id` (a random UUID, as LINE's
//! are) and a `Date` taken from the sandbox clock, which the daemon compares
//! with its own for skew; hyper would otherwise stamp the system clock.
//!
//! Depends on the sandbox's state, assertion checks, faults and refusals.
//! Locks are taken through [`Sandbox`] helpers and never held across `.await`.

use std::collections::HashMap;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Extension, Form, Query, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng as _;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::Sandbox;
use super::assertion::Purpose;
use super::conn::ConnKill;
use super::errors::LineRefusal;
use super::faults::{Action, Endpoint, MalformedBody};
use super::login_routes;
use super::state::{TokenKind, Verdict, VerifyRefusal, looks_like_jws};
use crate::line::jwt::CLIENT_ASSERTION_TYPE;

/// The response header LINE identifies each request with.
pub const REQUEST_ID_HEADER: &str = "x-line-request-id";

/// LINE's text for a request missing or mangling a parameter (the OpenAPI
/// example for `/v2/oauth/accessToken`); used for every malformed request.
pub(super) const PARAMS_INVALID: &str = "some parameters missed or invalid";

/// `scope` in verify answers: LINE's examples for each kind of token.
const V21_SCOPE: &str = "profile chat_message.write";
const SHORT_LIVED_SCOPE: &str = "P CM";

/// The cancellation of the `serve` call a request arrived through: hung
/// requests are released (dropped) when it fires.
#[derive(Clone)]
pub(crate) struct ServeShutdown(pub CancellationToken);

/// The LINE endpoints with fault injection layered on.
pub(crate) fn line_routes(sandbox: Sandbox) -> Router {
    Router::new()
        // LINE Login shares these three paths; its handlers pass channel
        // token requests on to the ones here.
        .route(Endpoint::IssueV21.path(), post(login_routes::token))
        .route(Endpoint::VerifyV21.path(), get(login_routes::verify))
        .route(Endpoint::ListKids.path(), get(list_kids))
        .route(Endpoint::RevokeV21.path(), post(login_routes::revoke))
        .route(Endpoint::IssueShortLived.path(), post(issue_short_lived))
        .route(Endpoint::VerifyShortLived.path(), post(verify_short_lived))
        .route(Endpoint::RevokeShortLived.path(), post(revoke_short_lived))
        .route(Endpoint::IssueStateless.path(), post(issue_stateless))
        .route(
            Endpoint::Deauthorize.path(),
            post(login_routes::deauthorize),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            sandbox.clone(),
            apply_faults,
        ))
        .with_state(sandbox)
}

/// Stamps `X-Line-Request-Id` and the sandbox-clock `Date` on a response.
pub(crate) async fn stamp_headers(
    State(sandbox): State<Sandbox>,
    req: Request,
    next: Next,
) -> Response {
    // The path only: verify's query string carries a token.
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let mut response = next.run(req).await;
    let id = request_id();
    tracing::debug!(%method, %path, status = response.status().as_u16(), request_id = %id, "sandbox answered");
    let headers = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(&id) {
        headers.insert(HeaderName::from_static(REQUEST_ID_HEADER), id);
    }
    let date = sandbox
        .now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    if let Ok(date) = HeaderValue::from_str(&date) {
        headers.insert(header::DATE, date);
    }
    response
}

/// A random UUID-shaped request ID, like LINE's.
fn request_id() -> String {
    let b: [u8; 16] = rand::rng().random();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Carries out the fault decision for a LINE endpoint request.
async fn apply_faults(State(sandbox): State<Sandbox>, req: Request, next: Next) -> Response {
    let Some(endpoint) = Endpoint::from_path(req.uri().path()) else {
        return next.run(req).await;
    };
    let decision = sandbox.decide_fault(endpoint);
    let conn = req
        .extensions()
        .get::<ConnectInfo<ConnKill>>()
        .map(|c| c.0.clone());
    if !decision.latency.is_zero() {
        // Tests wait on this line to act while a request is held here.
        tracing::debug!(
            path = req.uri().path(),
            latency_ms = u64::try_from(decision.latency.as_millis()).unwrap_or(u64::MAX),
            "sandbox delaying its answer"
        );
        tokio::time::sleep(decision.latency).await;
    }
    match decision.action {
        // The revoke is answered as done, and not done.
        Action::Pass if decision.ignore => StatusCode::OK.into_response(),
        Action::Pass => {
            let response = next.run(req).await;
            // Only a success is turned into a fault: a refused request
            // stays refused.
            if response.status() != StatusCode::OK {
                return response;
            }
            if let Some(refusal) = decision.refuse_live {
                // Verify found the token live; LINE says otherwise.
                return verify_refusal(refusal).into_response();
            }
            match decision.malformed {
                // The token is issued; only the answer is broken.
                Some(shape) => malformed(response, shape).await,
                None => response,
            }
        }
        // Guessed body: LINE documents no text for an outage.
        Action::Down => {
            LineRefusal::message(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
                .into_response()
        }
        Action::Hang => {
            let stop = req.extensions().get::<ServeShutdown>().cloned();
            let _hung = sandbox.hung_guard();
            // The future is dropped when the client gives up (hyper notices
            // the closed socket); the sandbox's shutdown releases the rest.
            match stop {
                Some(ServeShutdown(token)) => token.cancelled().await,
                None => std::future::pending::<()>().await,
            }
            dropped(conn)
        }
        Action::Drop => dropped(conn),
        Action::RateLimit(secs) => {
            let mut response = LineRefusal::message(
                StatusCode::TOO_MANY_REQUESTS,
                "The API rate limit has been exceeded. Try again later.",
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            response
        }
        // Guessed body: LINE's 500s are undocumented for these endpoints.
        Action::Error => {
            LineRefusal::message(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
                .into_response()
        }
        Action::DropAfter => {
            // LINE acts on the request; only the answer is lost.
            let _ = next.run(req).await;
            dropped(conn)
        }
    }
}

/// LINE's verify answer for a token it will not accept.
fn verify_refusal(refusal: VerifyRefusal) -> LineRefusal {
    match refusal {
        VerifyRefusal::Expired => LineRefusal::invalid_request("The access token expired"),
        // Guess: LINE documents a 400 for a non-existent token, no text.
        VerifyRefusal::Invalid => LineRefusal::invalid_request("The access token is invalid"),
    }
}

/// The issue endpoint's 200 with its body broken into `shape`.
async fn malformed(response: Response, shape: MalformedBody) -> Response {
    let json = |body: Vec<u8>| {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    };
    // The answer is a few hundred bytes of the sandbox's own JSON.
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    match shape {
        MalformedBody::MissingKeyId => {
            let mut value: serde_json::Value =
                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            if let Some(fields) = value.as_object_mut() {
                fields.remove("key_id");
            }
            json(value.to_string().into_bytes())
        }
        MalformedBody::TruncatedJson => {
            let mut body = body;
            body.truncate(body.len() / 2);
            json(body)
        }
        MalformedBody::Html => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            "<!DOCTYPE html>\n<html><head><title>Bad Gateway</title></head>\n\
             <body><h1>502 Bad Gateway</h1></body></html>\n",
        )
            .into_response(),
    }
}

/// Cuts the connection. Without a kill switch (the router used in-process,
/// not through `serve`) the closest thing is a garbled answer: a 200 whose
/// JSON body is cut short.
fn dropped(conn: Option<ConnKill>) -> Response {
    match conn {
        Some(kill) => {
            kill.kill();
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        None => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"access_tok",
        )
            .into_response(),
    }
}

pub(super) type Fields = HashMap<String, String>;

pub(super) fn form_fields(
    form: Result<Form<Fields>, FormRejection>,
) -> Result<Fields, LineRefusal> {
    form.map(|Form(f)| f)
        .map_err(|_| LineRefusal::invalid_request(PARAMS_INVALID))
}

pub(super) fn query_fields(
    query: Result<Query<Fields>, QueryRejection>,
) -> Result<Fields, LineRefusal> {
    query
        .map(|Query(f)| f)
        .map_err(|_| LineRefusal::invalid_request(PARAMS_INVALID))
}

/// A required, non-empty field.
pub(super) fn required<'a>(fields: &'a Fields, name: &str) -> Result<&'a str, LineRefusal> {
    match fields.get(name).map(String::as_str) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(LineRefusal::invalid_request(PARAMS_INVALID)),
    }
}

/// A non-empty field, if present.
pub(super) fn optional<'a>(fields: &'a Fields, name: &str) -> Option<&'a str> {
    fields
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

fn require_client_credentials(fields: &Fields) -> Result<(), LineRefusal> {
    if required(fields, "grant_type")? == "client_credentials" {
        Ok(())
    } else {
        // Guess: RFC 6749 says unsupported_grant_type; LINE's text is
        // undocumented, so keep to the generic one.
        Err(LineRefusal::invalid_request(PARAMS_INVALID))
    }
}

fn require_jwt_bearer(fields: &Fields) -> Result<&str, LineRefusal> {
    if required(fields, "client_assertion_type")? != CLIENT_ASSERTION_TYPE {
        return Err(LineRefusal::invalid_request(PARAMS_INVALID));
    }
    required(fields, "client_assertion")
}

#[derive(Serialize)]
pub(super) struct IssueChannelAccessTokenResponse {
    access_token: String,
    expires_in: i64,
    token_type: &'static str,
    key_id: String,
}

#[derive(Serialize)]
struct IssueShortLivedResponse {
    access_token: String,
    expires_in: i64,
    token_type: &'static str,
}

#[derive(Serialize)]
struct IssueStatelessResponse {
    token_type: &'static str,
    access_token: String,
    expires_in: i64,
}

#[derive(Serialize)]
pub(super) struct VerifyChannelAccessTokenResponse {
    client_id: String,
    expires_in: i64,
    scope: &'static str,
}

#[derive(Serialize)]
struct ChannelAccessTokenKeyIdsResponse {
    kids: Vec<String>,
}

/// `POST /oauth2/v2.1/token`
pub(super) async fn issue_v21(
    State(sandbox): State<Sandbox>,
    form: Result<Form<Fields>, FormRejection>,
) -> Result<Json<IssueChannelAccessTokenResponse>, LineRefusal> {
    let fields = form_fields(form)?;
    require_client_credentials(&fields)?;
    let assertion = require_jwt_bearer(&fields)?;
    let now = sandbox.now();
    let verified = sandbox
        .verify_assertion(assertion, now, Purpose::IssueV21)
        .map_err(|e| e.refusal())?;
    // verify() guarantees token_exp for IssueV21; the fallback is unreachable.
    let lifetime = verified.claims.token_exp.unwrap_or(1);
    let issued = sandbox
        .with_book(|book| book.issue_v21(&verified.channel_id, now, lifetime))
        .map_err(|_| LineRefusal::too_many_tokens())?;
    Ok(Json(IssueChannelAccessTokenResponse {
        access_token: issued.access_token.expose().to_owned(),
        expires_in: issued.expires_in,
        token_type: "Bearer",
        key_id: issued
            .key_id
            .map(|k| k.as_str().to_owned())
            .unwrap_or_default(),
    }))
}

/// `GET /oauth2/v2.1/verify?access_token=`
pub(super) async fn verify_v21(
    State(sandbox): State<Sandbox>,
    query: Result<Query<Fields>, QueryRejection>,
) -> Result<Json<VerifyChannelAccessTokenResponse>, LineRefusal> {
    let fields = query_fields(query)?;
    let token = required(&fields, "access_token")?;
    if !looks_like_jws(token) {
        return Err(LineRefusal::invalid_request("The access token not JWS"));
    }
    let now = sandbox.now();
    match sandbox.with_book(|book| book.verify(token, &[TokenKind::V21], now)) {
        Verdict::Live {
            channel_id,
            expires_in,
        } => Ok(Json(VerifyChannelAccessTokenResponse {
            client_id: channel_id.as_str().to_owned(),
            expires_in,
            scope: V21_SCOPE,
        })),
        Verdict::Expired => Err(verify_refusal(VerifyRefusal::Expired)),
        Verdict::Refused(refusal) => Err(verify_refusal(refusal)),
        Verdict::Ended | Verdict::Unknown => Err(verify_refusal(VerifyRefusal::Invalid)),
    }
}

/// `GET /oauth2/v2.1/tokens/kid?client_assertion_type=&client_assertion=`
async fn list_kids(
    State(sandbox): State<Sandbox>,
    query: Result<Query<Fields>, QueryRejection>,
) -> Result<Json<ChannelAccessTokenKeyIdsResponse>, LineRefusal> {
    let fields = query_fields(query)?;
    let assertion = require_jwt_bearer(&fields)?;
    let now = sandbox.now();
    let verified = sandbox
        .verify_assertion(assertion, now, Purpose::ListKids)
        .map_err(|e| e.refusal())?;
    let kids = sandbox.with_book(|book| book.live_key_ids(&verified.channel_id, now));
    Ok(Json(ChannelAccessTokenKeyIdsResponse {
        kids: kids.into_iter().map(|k| k.as_str().to_owned()).collect(),
    }))
}

/// `POST /oauth2/v2.1/revoke`: 200 with an empty body, also for a
/// well-formed token that is unknown or already dead (docs/line-api.md §4).
pub(super) async fn revoke_v21(
    State(sandbox): State<Sandbox>,
    form: Result<Form<Fields>, FormRejection>,
) -> Result<StatusCode, LineRefusal> {
    let fields = form_fields(form)?;
    let client_id = required(&fields, "client_id")?;
    let client_secret = required(&fields, "client_secret")?;
    let token = required(&fields, "access_token")?;
    let channel = sandbox.authenticate_secret(client_id, client_secret)?;
    if !looks_like_jws(token) {
        return Err(LineRefusal::invalid_request("The access token not JWS"));
    }
    let now = sandbox.now();
    sandbox.with_book(|book| book.revoke_value(token, &[TokenKind::V21], Some(&channel), now));
    Ok(StatusCode::OK)
}

/// `POST /v2/oauth/accessToken`
async fn issue_short_lived(
    State(sandbox): State<Sandbox>,
    form: Result<Form<Fields>, FormRejection>,
) -> Result<Json<IssueShortLivedResponse>, LineRefusal> {
    let fields = form_fields(form)?;
    require_client_credentials(&fields)?;
    let client_id = required(&fields, "client_id")?;
    let client_secret = required(&fields, "client_secret")?;
    let channel = sandbox.authenticate_secret(client_id, client_secret)?;
    let now = sandbox.now();
    let issued = sandbox.with_book(|book| book.issue_short_lived(&channel, now));
    Ok(Json(IssueShortLivedResponse {
        access_token: issued.access_token.expose().to_owned(),
        expires_in: issued.expires_in,
        token_type: "Bearer",
    }))
}

/// True for something that could be a short-lived token: printable, no
/// spaces. LINE answers "in invalid format" to anything else.
fn plausible_short_lived(token: &str) -> bool {
    token.bytes().all(|b| b.is_ascii_graphic())
}

/// `POST /v2/oauth/verify`: short-lived and long-lived tokens (a
/// long-lived one answers its huge `expires_in`, ≈ 99 years).
async fn verify_short_lived(
    State(sandbox): State<Sandbox>,
    form: Result<Form<Fields>, FormRejection>,
) -> Result<Json<VerifyChannelAccessTokenResponse>, LineRefusal> {
    let fields = form_fields(form)?;
    let token = required(&fields, "access_token")?;
    if !plausible_short_lived(token) {
        return Err(LineRefusal::invalid_request(
            "access_token in invalid format",
        ));
    }
    let now = sandbox.now();
    let kinds = [TokenKind::ShortLived, TokenKind::LongLived];
    match sandbox.with_book(|book| book.verify(token, &kinds, now)) {
        Verdict::Live {
            channel_id,
            expires_in,
        } => Ok(Json(VerifyChannelAccessTokenResponse {
            client_id: channel_id.as_str().to_owned(),
            expires_in,
            scope: SHORT_LIVED_SCOPE,
        })),
        Verdict::Expired | Verdict::Ended | Verdict::Unknown | Verdict::Refused(_) => {
            Err(LineRefusal::invalid_request("access_token invalid"))
        }
    }
}

/// `POST /v2/oauth/revoke`: 200 empty, also for unknown tokens; only
/// short-lived and long-lived tokens are revoked here (docs/line-api.md
/// §5c).
async fn revoke_short_lived(
    State(sandbox): State<Sandbox>,
    form: Result<Form<Fields>, FormRejection>,
) -> Result<StatusCode, LineRefusal> {
    let fields = form_fields(form)?;
    let malformed = LineRefusal::OAuth {
        status: StatusCode::BAD_REQUEST,
        error: "invalid_request",
        description: None,
    };
    let token = required(&fields, "access_token").map_err(|_| malformed.clone())?;
    if !plausible_short_lived(token) {
        return Err(malformed);
    }
    let now = sandbox.now();
    let kinds = [TokenKind::ShortLived, TokenKind::LongLived];
    sandbox.with_book(|book| book.revoke_value(token, &kinds, None, now));
    Ok(StatusCode::OK)
}

/// `POST /oauth2/v3/token`, either `oneOf` form: the JWT assertion, or
/// `client_id` + `client_secret`. Empty assertion fields count as absent
/// (some SDKs sent them empty with the secret form, and LINE accepted it).
async fn issue_stateless(
    State(sandbox): State<Sandbox>,
    form: Result<Form<Fields>, FormRejection>,
) -> Result<Json<IssueStatelessResponse>, LineRefusal> {
    let fields = form_fields(form)?;
    require_client_credentials(&fields)?;
    let now = sandbox.now();
    let channel = if optional(&fields, "client_assertion").is_some()
        || optional(&fields, "client_assertion_type").is_some()
    {
        let assertion = require_jwt_bearer(&fields)?;
        sandbox
            .verify_assertion(assertion, now, Purpose::Stateless)
            .map_err(|e| e.refusal())?
            .channel_id
    } else {
        let client_id = required(&fields, "client_id")?;
        let client_secret = required(&fields, "client_secret")?;
        // LINE's documented answer for either a bad ID or a bad secret here.
        sandbox
            .authenticate_secret(client_id, client_secret)
            .map_err(|_| LineRefusal::invalid_request("Invalid 'client_credentials'."))?
    };
    let issued = sandbox.with_book(|book| book.issue_stateless(&channel, now));
    Ok(Json(IssueStatelessResponse {
        token_type: "Bearer",
        access_token: issued.access_token.expose().to_owned(),
        expires_in: issued.expires_in,
    }))
}

/// Unknown paths: a `{"message"}` 404 like the Messaging API's.
pub(crate) async fn not_found() -> LineRefusal {
    LineRefusal::message(StatusCode::NOT_FOUND, "Not found")
}

/// Marks a router as served through a `serve` call with this shutdown.
pub(crate) fn with_serve_shutdown(router: Router, shutdown: CancellationToken) -> Router {
    router.layer(Extension(ServeShutdown(shutdown)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_uuid_shaped_and_differ() {
        let a = request_id();
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        assert_ne!(a, request_id());
    }
}
