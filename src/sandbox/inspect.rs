//! The sandbox's own API under `/_sandbox` (not LINE's): look at the tokens,
//! revoke one behind the client's back, pre-fill a channel with another
//! issuer's tokens, make verify refuse a live token, and steer the faults.
//!
//! Instants are RFC 3339 with milliseconds (`2026-09-21T12:00:00.700Z`); a
//! token is live while `now < expires_at`. Token JSON shapes:
//! - *history token* ([`SandboxToken`]): `{"seq", "channel_id", "kind"
//!   ("v2.1"|"short_lived"|"stateless"|"long_lived"), "issuer"
//!   ("api"|"foreign"|"console"),
//!   "key_id", "access_token", "issued_at", "expires_at", "state"
//!   ("live"|"expired"|"revoked"|"evicted"), "revoked_at",
//!   "verify_refusal" (null|"expired"|"invalid")}`;
//! - *live token* ([`LiveToken`]): `{"seq", "key_id", "issuer",
//!   "access_token", "issued_at", "expires_at", "verify_refusal"}`.
//!
//! Routes:
//! - `GET  /_sandbox/channels/{channel_id}/tokens[?since=N]` → array of
//!   history tokens, oldest first, with values; `since` skips the first N
//!   (`seq < N`), so a poller reads only what is new.
//! - `GET  /_sandbox/channels/{channel_id}/tokens/{key_id}` → one history
//!   token (v2.1); 404 if unknown.
//! - `GET  /_sandbox/channels/{channel_id}/live` → `{"now", "tokens":
//!   [live token]}`: the channel's live v2.1 tokens (API and foreign), what
//!   the key-ID list shows and the cap counts. O(live tokens).
//! - `GET  /_sandbox/live` → `{"now", "channels": {channel_id: [live
//!   token]}}` for every registered channel, at one instant.
//! - `POST /_sandbox/channels/{channel_id}/foreign-tokens` with
//!   `{"expires_in_ms": [700, 86400000], "expires_at": ["…Z"]}` (either or
//!   both; one token per entry, `expires_in_ms` ones first) → `{"now",
//!   "tokens": [live token]}`: tokens of another issuer, live, listed,
//!   counted, verifiable, revocable, `"issuer": "foreign"`. All or nothing:
//!   400 naming the problem (no entries, expiry not in the future or over 30
//!   days ahead, cap exceeded).
//! - `PUT  /_sandbox/channels/{channel_id}/tokens/{key_id}/verify-refusal`
//!   with `{"as": "expired"|"invalid"}` → `{"key_id", "verify_refusal"}`:
//!   verify answers LINE's 400 `invalid_request` for that token while it is
//!   live; the key-ID list and the cap are unaffected. `DELETE` on the same
//!   path lifts it. 404 if the key ID is unknown.
//! - `POST /_sandbox/channels/{channel_id}/tokens/{key_id}/revoke` →
//!   `{"revoked": bool}` (false when already dead); 404 if unknown.
//! - `POST /_sandbox/channels/{channel_id}/long-lived` → `{"access_token"}`:
//!   the console's "Issue" button, a long-lived token (valid
//!   indefinitely: verify answers `expires_in` ≈ 99 years; listed among
//!   the history tokens as `"kind": "long_lived", "issuer": "console"`). 409
//!   when the channel already has a live one.
//! - `POST /_sandbox/channels/{channel_id}/long-lived/reissue?grace=24h` →
//!   `{"access_token"}`: the console's "Reissue": a new long-lived token;
//!   the old one stays valid until now + `grace` (0–24h, a humantime
//!   duration or `0`; default `0`: invalid at once). 409 without a live
//!   one, 400 for a grace outside 0–24h.
//! - `GET  /_sandbox/faults` → the [`Faults`] in force.
//! - `PUT  /_sandbox/faults` with a [`Faults`] document → replaces them
//!   (and restarts the fault RNG from its seed); 400 naming a bad key.
//!
//! Faults never apply here, so a test can always see and steer the sandbox.
//! Errors use the `{"message"}` shape; an unknown channel is a 404. Depends
//! on [`Sandbox`] and the `state` types only.

use std::collections::BTreeMap;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Sandbox;
use super::errors::{LineRefusal, SandboxError};
use super::faults::Faults;
use super::state::{
    ForeignTokenError, LiveToken, LongLivedRefusal, SandboxToken, VerifyRefusal, millis,
};
use crate::domain::{ChannelId, KeyId};

/// The inspection and control routes.
pub(crate) fn routes(sandbox: Sandbox) -> Router {
    Router::new()
        .route("/_sandbox/channels/{channel_id}/tokens", get(list_tokens))
        .route(
            "/_sandbox/channels/{channel_id}/tokens/{key_id}",
            get(one_token),
        )
        .route(
            "/_sandbox/channels/{channel_id}/tokens/{key_id}/revoke",
            post(revoke_key_id),
        )
        .route(
            "/_sandbox/channels/{channel_id}/tokens/{key_id}/verify-refusal",
            put(put_verify_refusal).delete(delete_verify_refusal),
        )
        .route("/_sandbox/channels/{channel_id}/live", get(channel_live))
        .route("/_sandbox/live", get(all_live))
        .route(
            "/_sandbox/channels/{channel_id}/foreign-tokens",
            post(add_foreign),
        )
        .route(
            "/_sandbox/channels/{channel_id}/long-lived",
            post(issue_long_lived),
        )
        .route(
            "/_sandbox/channels/{channel_id}/long-lived/reissue",
            post(reissue_long_lived),
        )
        .route("/_sandbox/faults", get(get_faults).put(put_faults))
        .with_state(sandbox)
}

fn unknown_channel(channel: &ChannelId) -> LineRefusal {
    LineRefusal::message(
        StatusCode::NOT_FOUND,
        format!("no channel {channel} is registered in the sandbox"),
    )
}

fn unknown_key_id(channel: &ChannelId, key_id: &KeyId) -> LineRefusal {
    LineRefusal::message(
        StatusCode::NOT_FOUND,
        format!("no v2.1 token with key_id {key_id} was issued on channel {channel}"),
    )
}

fn bad_request(text: impl Into<String>) -> LineRefusal {
    LineRefusal::message(StatusCode::BAD_REQUEST, text)
}

/// The channel of the path, if registered.
fn channel_of(sandbox: &Sandbox, channel_id: String) -> Result<ChannelId, LineRefusal> {
    let channel = ChannelId::new(channel_id);
    if sandbox.has_channel(&channel) {
        Ok(channel)
    } else {
        Err(unknown_channel(&channel))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SinceQuery {
    since: Option<usize>,
}

async fn list_tokens(
    State(sandbox): State<Sandbox>,
    Path(channel_id): Path<String>,
    query: Result<Query<SinceQuery>, QueryRejection>,
) -> Result<Json<Vec<SandboxToken>>, LineRefusal> {
    let Query(query) = query.map_err(|e| bad_request(e.body_text()))?;
    let channel = channel_of(&sandbox, channel_id)?;
    Ok(Json(
        sandbox.tokens_since(&channel, query.since.unwrap_or(0)),
    ))
}

async fn one_token(
    State(sandbox): State<Sandbox>,
    Path((channel_id, key_id)): Path<(String, String)>,
) -> Result<Json<SandboxToken>, LineRefusal> {
    let channel = channel_of(&sandbox, channel_id)?;
    let key_id = KeyId::new(key_id);
    sandbox
        .token(&channel, &key_id)
        .map(Json)
        .ok_or_else(|| unknown_key_id(&channel, &key_id))
}

/// The live tokens of one channel at an instant.
#[derive(Serialize)]
struct ChannelLive {
    #[serde(serialize_with = "millis")]
    now: DateTime<Utc>,
    tokens: Vec<LiveToken>,
}

/// The live tokens of every channel at one instant.
#[derive(Serialize)]
struct AllLive {
    #[serde(serialize_with = "millis")]
    now: DateTime<Utc>,
    channels: BTreeMap<ChannelId, Vec<LiveToken>>,
}

async fn channel_live(
    State(sandbox): State<Sandbox>,
    Path(channel_id): Path<String>,
) -> Result<Json<ChannelLive>, LineRefusal> {
    let channel = channel_of(&sandbox, channel_id)?;
    let now = sandbox.now();
    let tokens = sandbox.with_book(|book| book.live_v21(&channel, now));
    Ok(Json(ChannelLive { now, tokens }))
}

async fn all_live(State(sandbox): State<Sandbox>) -> Json<AllLive> {
    let (now, channels) = sandbox.live_tokens_all();
    Json(AllLive { now, channels })
}

/// The body of `POST .../foreign-tokens`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForeignRequest {
    /// One token per entry, expiring this many milliseconds from now.
    #[serde(default)]
    expires_in_ms: Vec<i64>,
    /// One token per entry, expiring at this instant.
    #[serde(default)]
    expires_at: Vec<DateTime<Utc>>,
}

async fn add_foreign(
    State(sandbox): State<Sandbox>,
    Path(channel_id): Path<String>,
    body: Result<Json<ForeignRequest>, JsonRejection>,
) -> Result<Json<ChannelLive>, LineRefusal> {
    let Json(request) = body.map_err(|e| bad_request(e.body_text()))?;
    let channel = channel_of(&sandbox, channel_id)?;
    let now = sandbox.now();
    let mut expiries = Vec::with_capacity(request.expires_in_ms.len() + request.expires_at.len());
    for ms in request.expires_in_ms {
        let at = TimeDelta::try_milliseconds(ms)
            .and_then(|d| now.checked_add_signed(d))
            .ok_or_else(|| bad_request(format!("expires_in_ms {ms} is out of range")))?;
        expiries.push(at);
    }
    expiries.extend(request.expires_at);
    let tokens = sandbox
        .add_foreign_tokens_at(&channel, now, &expiries)
        .map_err(|e| match e {
            ForeignTokenError::UnknownChannel(c) => unknown_channel(&c),
            other => bad_request(other.to_string()),
        })?;
    Ok(Json(ChannelLive { now, tokens }))
}

/// The body of `PUT .../verify-refusal`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefusalRequest {
    /// How verify refuses the token.
    #[serde(rename = "as")]
    refusal: VerifyRefusal,
}

async fn put_verify_refusal(
    State(sandbox): State<Sandbox>,
    Path((channel_id, key_id)): Path<(String, String)>,
    body: Result<Json<RefusalRequest>, JsonRejection>,
) -> Result<Json<Value>, LineRefusal> {
    let Json(request) = body.map_err(|e| bad_request(e.body_text()))?;
    set_refusal(&sandbox, channel_id, key_id, Some(request.refusal))
}

async fn delete_verify_refusal(
    State(sandbox): State<Sandbox>,
    Path((channel_id, key_id)): Path<(String, String)>,
) -> Result<Json<Value>, LineRefusal> {
    set_refusal(&sandbox, channel_id, key_id, None)
}

fn set_refusal(
    sandbox: &Sandbox,
    channel_id: String,
    key_id: String,
    refusal: Option<VerifyRefusal>,
) -> Result<Json<Value>, LineRefusal> {
    let channel = channel_of(sandbox, channel_id)?;
    let key_id = KeyId::new(key_id);
    if sandbox.set_verify_refusal(&channel, &key_id, refusal) {
        Ok(Json(json!({ "key_id": key_id, "verify_refusal": refusal })))
    } else {
        Err(unknown_key_id(&channel, &key_id))
    }
}

async fn revoke_key_id(
    State(sandbox): State<Sandbox>,
    Path((channel_id, key_id)): Path<(String, String)>,
) -> Result<Json<Value>, LineRefusal> {
    let channel = channel_of(&sandbox, channel_id)?;
    let key_id = KeyId::new(key_id);
    match sandbox.try_revoke_key_id(&channel, &key_id) {
        Some(revoked) => Ok(Json(json!({ "revoked": revoked }))),
        None => Err(unknown_key_id(&channel, &key_id)),
    }
}

/// The console's answer: the long-lived token's value, which the operator
/// copies into linetokd's `token_file`.
fn console_token(
    result: Result<crate::domain::AccessToken, SandboxError>,
) -> Result<Json<Value>, LineRefusal> {
    match result {
        Ok(token) => Ok(Json(json!({ "access_token": token.expose() }))),
        Err(SandboxError::UnknownChannel(c)) => Err(unknown_channel(&c)),
        Err(SandboxError::LongLived(LongLivedRefusal::BadGrace(secs))) => {
            Err(bad_request(LongLivedRefusal::BadGrace(secs).to_string()))
        }
        Err(other) => Err(LineRefusal::message(
            StatusCode::CONFLICT,
            other.to_string(),
        )),
    }
}

async fn issue_long_lived(
    State(sandbox): State<Sandbox>,
    Path(channel_id): Path<String>,
) -> Result<Json<Value>, LineRefusal> {
    console_token(sandbox.issue_long_lived(&ChannelId::new(channel_id)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GraceQuery {
    grace: Option<String>,
}

async fn reissue_long_lived(
    State(sandbox): State<Sandbox>,
    Path(channel_id): Path<String>,
    query: Result<Query<GraceQuery>, QueryRejection>,
) -> Result<Json<Value>, LineRefusal> {
    let Query(query) = query.map_err(|e| bad_request(e.body_text()))?;
    let grace = match query.grace.as_deref().map(str::trim) {
        None | Some("0") => TimeDelta::zero(),
        Some(text) => humantime::parse_duration(text)
            .ok()
            .and_then(|d| TimeDelta::from_std(d).ok())
            .ok_or_else(|| {
                bad_request(format!(
                    "grace {text:?} is not a duration such as 24h, 90m or 0"
                ))
            })?,
    };
    console_token(sandbox.reissue_long_lived(&ChannelId::new(channel_id), grace))
}

async fn get_faults(State(sandbox): State<Sandbox>) -> Json<Faults> {
    Json(sandbox.faults())
}

async fn put_faults(
    State(sandbox): State<Sandbox>,
    body: Result<Json<Faults>, JsonRejection>,
) -> Result<Json<Faults>, LineRefusal> {
    let Json(faults) = body.map_err(|e| bad_request(e.body_text()))?;
    sandbox
        .set_faults(faults)
        .map_err(|e| bad_request(e.to_string()))?;
    Ok(Json(sandbox.faults()))
}
