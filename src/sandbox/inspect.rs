//! The sandbox's own API under `/_sandbox` (not LINE's): look at every token
//! issued, revoke one behind the client's back, and steer the faults.
//!
//! - `GET  /_sandbox/channels/{channel_id}/tokens` → JSON array of
//!   [`SandboxToken`](super::SandboxToken), oldest first, with values.
//! - `POST /_sandbox/channels/{channel_id}/tokens/{key_id}/revoke` →
//!   `{"revoked": bool}` (false when already dead); 404 if unknown.
//! - `GET  /_sandbox/faults` → the [`Faults`] in force.
//! - `PUT  /_sandbox/faults` with a [`Faults`] document → replaces them
//!   (and restarts the fault RNG from its seed); 400 naming a bad key.
//!
//! Faults never apply here, so a test can always see and steer the sandbox.
//! Errors use the `{"message"}` shape. Depends on [`Sandbox`] only.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::Sandbox;
use super::errors::LineRefusal;
use super::faults::Faults;
use super::state::SandboxToken;
use crate::domain::{ChannelId, KeyId};

/// The inspection and control routes.
pub(crate) fn routes(sandbox: Sandbox) -> Router {
    Router::new()
        .route("/_sandbox/channels/{channel_id}/tokens", get(list_tokens))
        .route(
            "/_sandbox/channels/{channel_id}/tokens/{key_id}/revoke",
            post(revoke_key_id),
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

async fn list_tokens(
    State(sandbox): State<Sandbox>,
    Path(channel_id): Path<String>,
) -> Result<Json<Vec<SandboxToken>>, LineRefusal> {
    let channel = ChannelId::new(channel_id);
    if !sandbox.has_channel(&channel) {
        return Err(unknown_channel(&channel));
    }
    Ok(Json(sandbox.tokens(&channel)))
}

async fn revoke_key_id(
    State(sandbox): State<Sandbox>,
    Path((channel_id, key_id)): Path<(String, String)>,
) -> Result<Json<Value>, LineRefusal> {
    let channel = ChannelId::new(channel_id);
    if !sandbox.has_channel(&channel) {
        return Err(unknown_channel(&channel));
    }
    let key_id = KeyId::new(key_id);
    match sandbox.try_revoke_key_id(&channel, &key_id) {
        Some(revoked) => Ok(Json(json!({ "revoked": revoked }))),
        None => Err(LineRefusal::message(
            StatusCode::NOT_FOUND,
            format!("no v2.1 token with key_id {key_id} was issued on channel {channel}"),
        )),
    }
}

async fn get_faults(State(sandbox): State<Sandbox>) -> Json<Faults> {
    Json(sandbox.faults())
}

async fn put_faults(
    State(sandbox): State<Sandbox>,
    body: Result<Json<Faults>, JsonRejection>,
) -> Result<Json<Faults>, LineRefusal> {
    let Json(faults) =
        body.map_err(|e| LineRefusal::message(StatusCode::BAD_REQUEST, e.body_text()))?;
    sandbox
        .set_faults(faults)
        .map_err(|e| LineRefusal::message(StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(Json(sandbox.faults()))
}
