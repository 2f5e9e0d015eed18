//! The daemon's HTTP listener: health and the token API (DESIGN.md sections
//! 6 and 10).
//!
//! [`app`] builds the router from an [`HttpState`], so tests drive it with
//! tower's `oneshot` and no socket; [`serve`] runs it on a listener the
//! caller bound (port 0 in tests) until a cancellation token fires.
//!
//! # The token API
//!
//! `GET /v1/channels/{channel}/groups/{group}/token` with
//! `Authorization: Bearer <the group's API key>` answers the group's
//! current token (and the previous one, so a client can fall back) from the
//! in-memory [`TokenBook`], never from the database. Keys are held only as
//! SHA-256 digests ([`ApiKeys`]) and compared in constant time.
//!
//! The order of the checks decides what a caller can learn:
//!
//! 1. no `Authorization` header, or not a well-formed `Bearer` one: **401**
//!    with `WWW-Authenticate: Bearer`;
//! 2. a key that opens no group at all: **403**, whatever the path (so a
//!    caller without a valid key cannot probe which channels and groups
//!    exist);
//! 3. a valid key, but the path names no configured group: **404**
//!    `unknown_group`;
//! 4. a valid key of another group, or a group without `api_key_file`:
//!    **403**;
//! 5. the right key but no live token yet (the first issue is pending or
//!    LINE is down): **503** `not_issued` with `Retry-After`, distinct from
//!    404 so a client retries instead of giving up on its configuration;
//! 6. otherwise **200** with the JSON below and `Cache-Control: no-store`.
//!
//! Refusals are `{"error": "<code>", "message": "<sentence>"}`; they never
//! echo the path, the header or any token. Neither the `Authorization`
//! header nor a token is ever logged.
//!
//! ```json
//! {"access_token": "...", "token_type": "Bearer", "key_id": "...",
//!  "expires_at": "2026-03-31T00:00:00Z", "issued_at": "2026-03-01T00:00:00Z",
//!  "channel": "1234567890", "group": "backend",
//!  "previous": {"access_token": "...", "key_id": "...", "expires_at": "..."} | null}
//! ```
//!
//! It is the `json` file sink's document, rendered by the sink's own code,
//! so a consumer can switch between the file and the API without changing
//! its parser.
//!
//! # Health and metrics
//!
//! `GET /healthz` is liveness (200 while the process answers), `GET /readyz`
//! readiness (see [`Readiness`]), `GET /metrics` the Prometheus text of
//! [`Metrics`]. None of them carries a secret.
//!
//! Depends on `delivery` (the token book and the sink renderer), `domain`,
//! `secret`, `metrics` and `clock`.
//! Reads no config: `app` hands it an [`HttpState`].

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use aws_lc_rs::{constant_time, digest};
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::delivery::sink::{self, SinkContext, SinkFormat};
use crate::delivery::{GroupTokens, PublishedToken, TokenBook};
use crate::domain::{ChannelId, GroupName};
use crate::metrics::Metrics;
use crate::secret::Secret;

/// How long a client should wait before asking again for a token that is
/// not issued yet (`Retry-After`, seconds).
const NOT_ISSUED_RETRY_AFTER_SECS: u32 = 5;

/// The longest `Authorization` header value looked at; anything longer is
/// malformed (API keys are short, and hashing megabytes per request would
/// be a cheap way to load the daemon).
const MAX_AUTHORIZATION_LEN: usize = 1024;

/// What the HTTP handlers share. Issue 5 adds readiness and metrics
/// sources here.
#[derive(Clone)]
pub struct HttpState {
    /// Every group's published tokens; filled by delivery from the
    /// rotator's events. The token API reads only this.
    pub tokens: TokenBook,
    /// The configured groups and their API key digests. Behind a lock
    /// because a config reload replaces them.
    pub keys: Arc<RwLock<ApiKeys>>,
    /// For judging whether a published token has expired.
    pub clock: SharedClock,
    /// What `/metrics` renders; `None` answers 404 (tests of the token API
    /// need no metrics).
    pub metrics: Option<Arc<Metrics>>,
    /// What `/readyz` asks; `None` means always ready.
    pub readiness: Option<Readiness>,
}

/// Decides readiness: `Ok` when ready, otherwise what is still missing.
pub type Readiness = Arc<dyn Fn() -> Result<(), Vec<String>> + Send + Sync>;

/// The configured groups, each with the SHA-256 digest of its API key if it
/// has one. The keys themselves are not kept.
#[derive(Default)]
pub struct ApiKeys {
    groups: HashMap<(ChannelId, GroupName), Option<KeyDigest>>,
}

/// SHA-256 of an API key.
#[derive(Clone, Copy)]
struct KeyDigest([u8; 32]);

impl KeyDigest {
    fn of(key: &[u8]) -> Self {
        let d = digest::digest(&digest::SHA256, key);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }

    /// Constant time: how much of the digests match must not show in how
    /// long the comparison takes.
    fn matches(&self, other: &Self) -> bool {
        constant_time::verify_slices_are_equal(&self.0, &other.0).is_ok()
    }
}

/// What a presented key opens, for one requested group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The key is the requested group's.
    Granted,
    /// The key opens no configured group.
    InvalidKey,
    /// The key is valid, but the requested channel or group is not
    /// configured.
    UnknownGroup,
    /// The key is valid for another group, or the requested group has no
    /// API key configured.
    OtherGroup,
}

impl ApiKeys {
    /// No groups.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a configured group; `key` is its API key, `None` when it has no
    /// `api_key_file` (the token API then refuses every request for it).
    pub fn insert(&mut self, channel: ChannelId, group: GroupName, key: Option<&Secret>) {
        let digest = key.map(|k| KeyDigest::of(k.expose().as_bytes()));
        self.groups.insert((channel, group), digest);
    }

    /// True when the group is configured.
    pub fn contains(&self, channel: &ChannelId, group: &GroupName) -> bool {
        self.groups.contains_key(&(channel.clone(), group.clone()))
    }

    /// Decides what `presented` opens for the requested group. Every
    /// configured key is compared, with no early exit, so the time taken
    /// does not depend on which key (if any) matched.
    pub fn check(&self, channel: &ChannelId, group: &GroupName, presented: &str) -> Access {
        let presented = KeyDigest::of(presented.as_bytes());
        let mut valid_somewhere = false;
        let mut valid_here = false;
        for ((c, g), digest) in &self.groups {
            let Some(digest) = digest else { continue };
            let matched = digest.matches(&presented);
            valid_somewhere |= matched;
            valid_here |= matched && c == channel && g == group;
        }
        if !valid_somewhere {
            Access::InvalidKey
        } else if valid_here {
            Access::Granted
        } else if !self.contains(channel, group) {
            Access::UnknownGroup
        } else {
            Access::OtherGroup
        }
    }
}

/// The router: `/healthz` and the token API.
pub fn app(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/v1/channels/{channel}/groups/{group}/token",
            get(group_token),
        )
        .with_state(state)
}

/// Serves [`app`] on `listener` until `shutdown` fires, then lets requests
/// in flight finish.
///
/// # Errors
/// When the listener fails.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// 200 "ok" while the process runs: liveness only (readiness is `/readyz`).
async fn healthz() -> &'static str {
    "ok"
}

/// 200 once the daemon serves what it should: the store is open, the first
/// pass has run, and every configured group has a live token. 503 with
/// what is missing otherwise. Docker's HEALTHCHECK (`linetokd health`) and
/// orchestrators ask this.
async fn readyz(State(state): State<HttpState>) -> Response {
    match state.readiness.as_ref().map_or(Ok(()), |ready| ready()) {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({ "ready": true }))).into_response(),
        Err(waiting) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "ready": false, "waiting": waiting })),
        )
            .into_response(),
    }
}

/// The Prometheus text exposition.
async fn metrics(State(state): State<HttpState>) -> Response {
    match &state.metrics {
        Some(metrics) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            metrics.render(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A refusal: a stable code for programs and a sentence for people.
#[derive(Debug, Serialize)]
struct Refusal {
    error: &'static str,
    message: &'static str,
}

/// Why a token request was refused.
#[derive(Debug, Clone, Copy)]
enum Refused {
    NoCredentials,
    MalformedCredentials,
    InvalidKey,
    UnknownGroup,
    OtherGroup,
    NotIssued,
    /// A bug: the answer could not be built.
    Internal,
}

impl Refused {
    fn status(self) -> StatusCode {
        match self {
            Self::NoCredentials | Self::MalformedCredentials => StatusCode::UNAUTHORIZED,
            Self::InvalidKey | Self::OtherGroup => StatusCode::FORBIDDEN,
            Self::UnknownGroup => StatusCode::NOT_FOUND,
            Self::NotIssued => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(self) -> Refusal {
        let (error, message) = match self {
            Self::NoCredentials => (
                "missing_credentials",
                "send the group's API key as `Authorization: Bearer <key>`",
            ),
            Self::MalformedCredentials => (
                "malformed_credentials",
                "the Authorization header must be `Bearer <key>`",
            ),
            Self::InvalidKey => ("invalid_key", "the API key is not valid"),
            Self::OtherGroup => (
                "forbidden",
                "the API key does not give access to this group's token",
            ),
            Self::UnknownGroup => ("unknown_group", "no such channel or group is configured"),
            Self::NotIssued => (
                "not_issued",
                "the group has no live token yet; retry shortly",
            ),
            Self::Internal => (
                "internal",
                "the answer could not be built; see the daemon's log",
            ),
        };
        Refusal { error, message }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(self.body())).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            Self::NoCredentials => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"linetokd\""),
                );
            }
            Self::MalformedCredentials => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer realm=\"linetokd\", error=\"invalid_request\"",
                    ),
                );
            }
            Self::NotIssued => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(NOT_ISSUED_RETRY_AFTER_SECS),
                );
            }
            Self::InvalidKey | Self::OtherGroup | Self::UnknownGroup | Self::Internal => {}
        }
        response
    }
}

/// True when `key` can be presented as a bearer credential at all: one
/// word of visible ASCII.
pub fn usable_api_key(key: &Secret) -> bool {
    is_credential(key.expose())
}

fn is_credential(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic())
}

/// The bearer credential of a request, if its header is well formed.
fn bearer(headers: &HeaderMap) -> Result<&str, Refused> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(Refused::NoCredentials);
    };
    if value.len() > MAX_AUTHORIZATION_LEN {
        return Err(Refused::MalformedCredentials);
    }
    let value = value.to_str().map_err(|_| Refused::MalformedCredentials)?;
    let (scheme, credential) = value.split_once(' ').ok_or(Refused::MalformedCredentials)?;
    let credential = credential.trim_start_matches(' ');
    // One word of visible ASCII, nothing after it. (RFC 6750's b64token is
    // narrower, but `api_key_file` may hold any such characters, and a key
    // the operator chose must not be unusable.)
    let well_formed = scheme.eq_ignore_ascii_case("bearer") && is_credential(credential);
    if well_formed {
        Ok(credential)
    } else {
        Err(Refused::MalformedCredentials)
    }
}

async fn group_token(
    State(state): State<HttpState>,
    Path((channel, group)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (channel, group) = (ChannelId::new(channel), GroupName::new(group));
    match answer(&state, &channel, &group, &headers) {
        Ok(response) => response,
        Err(refused) => {
            // Channel and group are logged only once the caller proved to
            // hold a valid key; before that they are whatever it typed.
            match refused {
                Refused::NoCredentials | Refused::MalformedCredentials | Refused::InvalidKey => {
                    tracing::info!(reason = refused.body().error, "token API request refused");
                }
                Refused::UnknownGroup
                | Refused::OtherGroup
                | Refused::NotIssued
                | Refused::Internal => {
                    tracing::info!(channel = %channel, group = %group, reason = refused.body().error, "token API request refused");
                }
            }
            refused.into_response()
        }
    }
}

fn answer(
    state: &HttpState,
    channel: &ChannelId,
    group: &GroupName,
    headers: &HeaderMap,
) -> Result<Response, Refused> {
    let presented = bearer(headers)?;
    let access = state
        .keys
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .check(channel, group, presented);
    match access {
        Access::Granted => {}
        Access::InvalidKey => return Err(Refused::InvalidKey),
        Access::UnknownGroup => return Err(Refused::UnknownGroup),
        Access::OtherGroup => return Err(Refused::OtherGroup),
    }
    let now = state.clock.now();
    let published = state.tokens.get(channel, group);
    // The book drops tokens on expiry events; judging by the clock as well
    // means a token is never served past its expiry, whatever the timing.
    let mut live = [published.current, published.previous]
        .into_iter()
        .flatten()
        .filter(|t| t.expires_at > now);
    let current = live.next().ok_or(Refused::NotIssued)?;
    let previous = live.next();
    tracing::debug!(channel = %channel, group = %group, key_id = %current.key_id, "token served");
    token_response(channel, group, current, previous)
}

/// The 200 answer: the `json` sink's document, so the file and the API can
/// never drift apart.
fn token_response(
    channel: &ChannelId,
    group: &GroupName,
    current: PublishedToken,
    previous: Option<PublishedToken>,
) -> Result<Response, Refused> {
    let tokens = GroupTokens {
        current: Some(current),
        previous,
    };
    let body = sink::render(
        SinkFormat::Json,
        &SinkContext {
            channel,
            group,
            tokens: &tokens,
        },
    )
    .map_err(|e| {
        tracing::error!(channel = %channel, group = %group, error = %e, "could not render the token document");
        Refused::Internal
    })?;
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ];
    Ok((StatusCode::OK, headers, body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn bearer_parsing() {
        assert!(matches!(
            bearer(&HeaderMap::new()),
            Err(Refused::NoCredentials)
        ));
        assert_eq!(bearer(&headers("Bearer abc-123")).unwrap(), "abc-123");
        assert_eq!(bearer(&headers("bearer abc")).unwrap(), "abc");
        assert_eq!(bearer(&headers("BEARER  abc")).unwrap(), "abc");
        assert_eq!(bearer(&headers("Bearer a!#%")).unwrap(), "a!#%");
        for bad in [
            "Bearer",
            "Bearer ",
            "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
            "Bearer a b",
            "Bearer a\tb",
            "Token abc",
            "abc",
        ] {
            assert!(
                matches!(bearer(&headers(bad)), Err(Refused::MalformedCredentials)),
                "{bad:?}"
            );
        }
        let long = format!("Bearer {}", "a".repeat(MAX_AUTHORIZATION_LEN));
        assert!(matches!(
            bearer(&headers(&long)),
            Err(Refused::MalformedCredentials)
        ));
    }

    #[test]
    fn key_checks() {
        let (c, other_c) = (ChannelId::new("1"), ChannelId::new("2"));
        let (a, b, none) = (
            GroupName::new("a"),
            GroupName::new("b"),
            GroupName::new("keyless"),
        );
        let mut keys = ApiKeys::new();
        keys.insert(c.clone(), a.clone(), Some(&Secret::new("key-a")));
        keys.insert(c.clone(), b.clone(), Some(&Secret::new("key-b")));
        keys.insert(c.clone(), none.clone(), None);
        assert_eq!(keys.check(&c, &a, "key-a"), Access::Granted);
        assert_eq!(keys.check(&c, &a, "key-b"), Access::OtherGroup);
        assert_eq!(keys.check(&c, &none, "key-a"), Access::OtherGroup);
        assert_eq!(keys.check(&c, &a, "key-a "), Access::InvalidKey);
        assert_eq!(keys.check(&c, &a, ""), Access::InvalidKey);
        assert_eq!(keys.check(&other_c, &a, "key-a"), Access::UnknownGroup);
        assert_eq!(keys.check(&other_c, &a, "nope"), Access::InvalidKey);
        assert!(keys.contains(&c, &none));
        assert!(usable_api_key(&Secret::new("k3y!")));
        assert!(!usable_api_key(&Secret::new("two words")));
        assert!(!usable_api_key(&Secret::new("tab\there")));
    }
}
