//! The daemon's HTTP listener: health and the token API (docs/design.md sections
//! 6 and 10).
//!
//! [`app`] builds the router from an [`HttpState`], so tests drive it with
//! tower's `oneshot` and no socket; [`serve`] runs it on a listener the
//! caller bound (port 0 in tests) until a cancellation token fires.
//!
//! # The token API
//!
//! `GET /v1/channels/{channel}/groups/{group}/token` with
//! `Authorization: Bearer <the group's API key>`, where `{channel}` is the
//! channel's ID or its configured name ([`ChannelIndex`]), answers the group's
//! current token (and the previous one, so a client can fall back) from the
//! in-memory [`TokenBook`], never from the database. Keys are held only as
//! SHA-256 digests ([`ApiKeys`]) and looked up by the presented key's digest.
//!
//! The order of the checks decides what a caller can learn:
//!
//! 1. no `Authorization` header, or not a well-formed `Bearer` one: **401**
//!    with `WWW-Authenticate: Bearer`; two or more `Authorization` headers:
//!    **400** `ambiguous_credentials` (which one counts would depend on the
//!    proxies in between, so none does);
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
//! `GET /v1/channels/{channel}/long-lived-token`, with the key of the
//! channel's `[channel.long_lived] api_key_file`, serves the console-issued
//! long-lived token the daemon watches, with the same checks in the same
//! order (404 `unknown_group` when the channel has no `[channel.long_lived]`;
//! 503 `long_lived_unavailable`, without `Retry-After`, while no token was
//! read, or LINE refused it, or it was retired: only an operator changes
//! that) and the same document where it applies: `key_id` is null
//! (LINE gives long-lived tokens none) and `fingerprint` names it instead,
//! `expires_at` is null (valid until reissued or revoked), there is no
//! `group`, `issued_at` or `previous` token, and `kind` is `"long_lived"`:
//!
//! ```json
//! {"access_token": "...", "token_type": "Bearer", "key_id": null,
//!  "fingerprint": "sha256:0123abcd", "expires_at": null,
//!  "channel": "1234567890", "kind": "long_lived", "previous": null}
//! ```
//!
//! # Stateless tokens
//!
//! `GET /v1/channels/{channel}/stateless-token` with `Authorization: Bearer
//! <the channel's stateless API key>` (`[channel.stateless] api_key_file`)
//! answers a stateless token from the in-memory cache ([`Stateless`]):
//!
//! ```json
//! {"access_token": "...", "token_type": "Bearer",
//!  "expires_at": "2026-03-01T00:15:00Z", "expires_in": 840}
//! ```
//!
//! `expires_in` is the whole seconds left now. The checks run in the same
//! order: 401/400 for missing, malformed or repeated credentials; **403**
//! for a key that opens nothing (no group, no channel's stateless tokens);
//! **404** `stateless_not_enabled` when the channel does not serve
//! stateless tokens; **403** for another channel's (or a group's) key;
//! then **503** `line_unavailable` (LINE failed transiently, or the
//! backoff after a failure runs) or `issue_limit` (the channel's
//! `max_issues_per_minute` is reached), both with `Retry-After`; **502**
//! `line_refused` naming LINE's status and error code (`line_status`,
//! `line_error`) when LINE refused; else **200**. No refusal carries a
//! token.
//!
//! # Health and metrics
//!
//! `GET /healthz` is liveness (200 while the process answers), `GET /readyz`
//! readiness (see [`Readiness`]), `GET /metrics` the Prometheus text of
//! [`Metrics`]. None of them carries a secret.
//!
//! # Holding up against clients that hold on
//!
//! [`serve`] runs its own accept loop (axum's `serve` has no connection cap
//! and no header-read timeout) with the limits of [`ServeSettings`]: at
//! most `max_connections` at once (further ones wait in the kernel's
//! backlog, costing the daemon no descriptor), a connection closed when its
//! request head takes longer than `header_read_timeout` (counted from the
//! accept, and on a kept-alive connection from the end of the previous
//! answer, so it is also how long an idle connection stays open), and one
//! on which no byte moves for `idle_timeout` closed whatever it waits for.
//! Accept errors (EMFILE) are waited out with [`AcceptBackoff`]. A
//! connection's state lives in its task only, so memory returns to its
//! level once a flood of connections is over.
//!
//! Depends on `delivery` (the token book and the sink renderer),
//! `stateless` (the stateless token cache), `domain`, `secret`, `metrics`,
//! `clock`, `accept` and `channel_index`.
//! Reads no config: `app` hands it an [`HttpState`] and [`ServeSettings`].

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use aws_lc_rs::digest;
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accept::AcceptBackoff;
use crate::channel_index::ChannelIndex;
use crate::clock::SharedClock;
use crate::delivery::sink::{self, SinkContext, SinkFormat};
use crate::delivery::{GroupTokens, PublishedToken, TokenBook};
use crate::domain::{ChannelId, GroupName};
use crate::metrics::Metrics;
use crate::metrics::exposition::Exposition;
use crate::secret::Secret;
use crate::stateless::{Stateless, StatelessError, rules::retry_after_secs};

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
    /// The long-lived token each watched channel serves; `None` serves
    /// none (the route answers as for an unconfigured channel).
    pub long_lived: Option<LongLivedSource>,
    /// The stateless token cache; `None` answers every stateless request
    /// as for a channel without stateless tokens.
    pub stateless: Option<Arc<Stateless>>,
    /// The LINE Login module; `None` answers every `/v1/login/` request
    /// 404 `login_not_enabled`.
    pub login: Option<Arc<crate::login::Login>>,
}

/// A channel's long-lived token as the API serves it: `None` while none
/// was read, or LINE refused it, or it was retired.
pub type LongLivedSource = Arc<dyn Fn(&ChannelId) -> Option<LongLivedToken> + Send + Sync>;

/// A long-lived token to serve.
#[derive(Debug, Clone)]
pub struct LongLivedToken {
    /// The value, read from the channel's `token_file`.
    pub token: crate::domain::AccessToken,
    /// `sha256:` and 8 hex digits, in place of a key ID.
    pub fingerprint: String,
}

/// Decides readiness: `Ok` when ready, otherwise what is still missing.
pub type Readiness = Arc<dyn Fn() -> Result<(), Vec<String>> + Send + Sync>;

/// The configured groups, each with the SHA-256 digest of its API key if it
/// has one, and the channels' names for the paths. The keys themselves are
/// not kept.
#[derive(Default)]
pub struct ApiKeys {
    /// Each group with the number of its key's digest in `digests`. A
    /// number, not the digest: many groups share a key, and the table holds
    /// an entry per group (4 bytes instead of 33 at 100,000 groups).
    groups: HashMap<(ChannelId, GroupName), Option<u32>>,
    /// Every distinct group key's digest and its number: a request is
    /// decided by one lookup of the presented key's digest and one of the
    /// group, not by comparing every configured key (at 100,000 groups
    /// that made the token API answer 1,000 requests a second instead of
    /// 50,000).
    digests: HashMap<[u8; 32], u32>,
    channels: ChannelIndex,
    /// The channels with `[channel.long_lived]` and their keys.
    long_lived: ChannelKeys,
    /// The channels serving stateless tokens and their keys.
    stateless: ChannelKeys,
}

/// The channels that serve one per-channel token route (the long-lived
/// token, stateless tokens), each with its key's digest if it has one, and
/// which channels each digest opens (one lookup per request, as for
/// groups).
#[derive(Default)]
struct ChannelKeys {
    channels: HashMap<ChannelId, Option<KeyDigest>>,
    owners: HashMap<[u8; 32], Vec<ChannelId>>,
}

impl ChannelKeys {
    /// Adds `channel`; `key: None` makes the route refuse every request
    /// for it.
    fn insert(&mut self, channel: ChannelId, key: Option<&Secret>) {
        let digest = key.map(|k| KeyDigest::of(k.expose().as_bytes()));
        if let Some(d) = digest {
            self.owners.entry(d.0).or_default().push(channel.clone());
        }
        self.channels.insert(channel, digest);
    }

    fn opens_any(&self, digest: &KeyDigest) -> bool {
        self.owners.contains_key(&digest.0)
    }

    /// What `presented` opens of `channel` on this route, once it is known
    /// to be some configured key: `UnknownGroup` when the channel does not
    /// serve the route.
    fn check(&self, channel: &ChannelId, presented: &KeyDigest) -> Access {
        if self
            .owners
            .get(&presented.0)
            .is_some_and(|owners| owners.contains(channel))
        {
            Access::Granted
        } else if !self.channels.contains_key(channel) {
            Access::UnknownGroup
        } else {
            Access::OtherGroup
        }
    }
}

/// SHA-256 of an API key. Keys are looked up by their digest: what a
/// lookup's timing could reveal is about the digest of what the client
/// sent, which tells nothing about any configured key (SHA-256 cannot be
/// inverted), so no constant-time scan over every key is needed.
#[derive(Clone, Copy)]
struct KeyDigest([u8; 32]);

impl KeyDigest {
    fn of(key: &[u8]) -> Self {
        let d = digest::digest(&digest::SHA256, key);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
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
        // Past 2^32 distinct keys (no config comes near) a new key is not
        // numbered and its group refuses every request: closed, not open.
        let number = key.and_then(|k| {
            let digest = KeyDigest::of(k.expose().as_bytes());
            let next = u32::try_from(self.digests.len()).ok();
            match self.digests.entry(digest.0) {
                Entry::Occupied(known) => Some(*known.get()),
                Entry::Vacant(new) => next.map(|n| *new.insert(n)),
            }
        });
        self.groups.insert((channel, group), number);
    }

    /// Lets the paths name the channel `id` by `name` as well as by its ID.
    pub fn name_channel(&mut self, id: ChannelId, name: impl Into<String>) {
        self.channels.insert(id, name);
    }

    /// The channel a path names, by ID or by name. A text that names no
    /// channel is taken as an ID as it is, which no group matches, so the
    /// request is refused like any unknown channel.
    pub fn channel_id(&self, given: &str) -> ChannelId {
        self.channels
            .resolve(given)
            .cloned()
            .unwrap_or_else(|| ChannelId::new(given))
    }

    /// True when the group is configured.
    pub fn contains(&self, channel: &ChannelId, group: &GroupName) -> bool {
        self.groups.contains_key(&(channel.clone(), group.clone()))
    }

    /// Adds a channel with `[channel.long_lived]`; `key` is its
    /// `api_key_file`'s key (`None`: the long-lived token API refuses every
    /// request for it).
    pub fn insert_long_lived(&mut self, channel: ChannelId, key: Option<&Secret>) {
        self.long_lived.insert(channel, key);
    }

    /// Decides what `presented` opens for the channel's long-lived token, in
    /// the group route's order (see the module documentation).
    pub fn check_long_lived(&self, channel: &ChannelId, presented: &str) -> Access {
        let presented = KeyDigest::of(presented.as_bytes());
        if !self.opens_anything(&presented) {
            return Access::InvalidKey;
        }
        self.long_lived.check(channel, &presented)
    }

    /// Lets `key` open `channel`'s stateless tokens.
    pub fn insert_stateless(&mut self, channel: ChannelId, key: &Secret) {
        self.stateless.insert(channel, Some(key));
    }

    /// Decides what `presented` opens of `channel`'s stateless tokens, as
    /// [`Self::check`] does for a group: `UnknownGroup` means the channel
    /// serves no stateless tokens.
    pub fn check_stateless(&self, channel: &ChannelId, presented: &str) -> Access {
        let presented = KeyDigest::of(presented.as_bytes());
        if !self.opens_anything(&presented) {
            return Access::InvalidKey;
        }
        self.stateless.check(channel, &presented)
    }

    /// True when `digest` is any configured key: a group's, a channel's
    /// long-lived token's or its stateless tokens'.
    fn opens_anything(&self, digest: &KeyDigest) -> bool {
        self.digests.contains_key(&digest.0)
            || self.long_lived.opens_any(digest)
            || self.stateless.opens_any(digest)
    }

    /// Decides what `presented` opens for the requested group: one lookup
    /// of its digest (see `KeyDigest` for why that is safe).
    pub fn check(&self, channel: &ChannelId, group: &GroupName, presented: &str) -> Access {
        let presented = KeyDigest::of(presented.as_bytes());
        if !self.opens_anything(&presented) {
            return Access::InvalidKey;
        }
        let presented = self.digests.get(&presented.0);
        match self.groups.get(&(channel.clone(), group.clone())) {
            None => Access::UnknownGroup,
            Some(Some(number)) if Some(number) == presented => Access::Granted,
            Some(_) => Access::OtherGroup,
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
        .route(
            "/v1/channels/{channel}/long-lived-token",
            get(long_lived_token),
        )
        .route(
            "/v1/channels/{channel}/stateless-token",
            get(stateless_token),
        )
        .route(
            "/v1/login/{channel}/grants",
            axum::routing::post(login_import),
        )
        .route(
            "/v1/login/{channel}/grants/{subject}/token",
            get(login_token),
        )
        .route(
            "/v1/login/{channel}/grants/{subject}/token/refused",
            axum::routing::post(login_token_refused),
        )
        .route(
            "/v1/login/{channel}/grants/{subject}",
            axum::routing::delete(login_delete),
        )
        .with_state(state)
}

/// The listener's limits (see the module documentation). `app` uses the
/// defaults; tests shorten the timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeSettings {
    /// Connections served at once; further ones wait in the kernel's
    /// backlog until one ends.
    pub max_connections: usize,
    /// How long a client may take to send a request's head, counted from
    /// the accept or, on a kept-alive connection, from the end of the
    /// previous answer (so it also ends idle kept-alive connections).
    pub header_read_timeout: Duration,
    /// A connection on which no byte moves either way for this long is
    /// closed, whatever it waits for (a request body that stops coming, a
    /// client that stops reading its answer).
    pub idle_timeout: Duration,
}

impl Default for ServeSettings {
    /// 512 connections (far more than health checks, a scraper and the
    /// token API's consumers need, far fewer than the unit's
    /// `LimitNOFILE`), 10 s for a request head, 60 s without progress.
    fn default() -> Self {
        Self {
            max_connections: 512,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Serves [`app`] on `listener` within `settings` until `shutdown` fires,
/// then stops accepting, lets the requests in flight finish and returns
/// once every connection is closed.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    settings: ServeSettings,
    shutdown: CancellationToken,
) {
    let app = app(state);
    let slots = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    let connections = TaskTracker::new();
    let mut backoff = AcceptBackoff::new("http");
    let mut at_cap = false;
    loop {
        // A slot before the accept: at the cap, new connections wait in
        // the backlog and cost the daemon no descriptor.
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => {
                at_cap = false;
                slot
            }
            Err(_) => {
                if !at_cap {
                    at_cap = true;
                    tracing::warn!(
                        max_connections = settings.max_connections,
                        "the HTTP listener is at its connection cap; new connections wait until one closes"
                    );
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    slot = Arc::clone(&slots).acquire_owned() => match slot {
                        Ok(slot) => slot,
                        // Never closed; nothing left to serve if it were.
                        Err(_) => break,
                    },
                }
            }
        };
        let Some((stream, _peer)) = backoff.accept(|| listener.accept(), &shutdown).await else {
            break;
        };
        let service = TowerToHyperService::new(app.clone());
        let stop = shutdown.clone();
        connections.spawn(async move {
            connection(stream, service, settings, stop).await;
            drop(slot);
        });
    }
    connections.close();
    connections.wait().await;
}

/// Serves one connection until the client or a timeout ends it, or
/// `shutdown` fires (then the request in flight is answered first).
async fn connection(
    stream: TcpStream,
    service: TowerToHyperService<Router>,
    settings: ServeSettings,
    shutdown: CancellationToken,
) {
    // Small JSON answers: don't let Nagle delay them.
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(IdleTimeout::new(stream, settings.idle_timeout));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout);
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        // Timeouts and clients that vanish: routine, and not worth more.
        tracing::debug!(error = %e, "HTTP connection ended");
    }
}

/// A socket that fails with `TimedOut` once no byte has moved either way
/// for `limit` while it is waited on. hyper's header timeout covers the
/// wait for a request head only; this covers the rest.
struct IdleTimeout<S> {
    inner: S,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<S> IdleTimeout<S> {
    fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }

    /// Bytes moved (or the socket answered): the deadline starts over.
    fn progressed<T>(&mut self, ready: T) -> Poll<T> {
        let next = Instant::now() + self.limit;
        self.deadline.as_mut().reset(next);
        Poll::Ready(ready)
    }

    /// The socket is not ready: fail if it has been so for too long.
    fn expired<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no data moved on the connection within the idle timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(ready) => this.progressed(ready),
            Poll::Pending => this.expired(cx),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(ready) => this.progressed(ready),
            Poll::Pending => this.expired(cx),
        }
    }

    /// Passed through so hyper writes a response body from its own buffer
    /// with `writev`: without it hyper copies every body into its write
    /// buffer first, a second copy of a `/metrics` page of megabytes.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(ready) => this.progressed(ready),
            Poll::Pending => this.expired(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(ready) => this.progressed(ready),
            Poll::Pending => this.expired(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Ready(ready) => this.progressed(ready),
            Poll::Pending => this.expired(cx),
        }
    }
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

/// The Prometheus text exposition, written while it is sent
/// ([`Exposition`]).
async fn metrics(State(state): State<HttpState>) -> Response {
    match &state.metrics {
        Some(metrics) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            axum::body::Body::new(Exposition::new(Arc::clone(metrics))),
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
    /// More than one `Authorization` header.
    AmbiguousCredentials,
    InvalidKey,
    UnknownGroup,
    OtherGroup,
    NotIssued,
    /// The channel's long-lived token cannot be served: unreadable file,
    /// refused by LINE, or retired. Only an operator changes that.
    NoLongLived,
    /// The channel serves no stateless tokens.
    NotStateless,
    /// A bug: the answer could not be built.
    Internal,
}

impl Refused {
    fn status(self) -> StatusCode {
        match self {
            Self::NoCredentials | Self::MalformedCredentials => StatusCode::UNAUTHORIZED,
            Self::AmbiguousCredentials => StatusCode::BAD_REQUEST,
            Self::InvalidKey | Self::OtherGroup => StatusCode::FORBIDDEN,
            Self::UnknownGroup | Self::NotStateless => StatusCode::NOT_FOUND,
            Self::NotIssued | Self::NoLongLived => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(self) -> Refusal {
        let (error, message) = match self {
            Self::NoCredentials => (
                "missing_credentials",
                "send the route's API key (a group's, or for /v1/login the admin or reader key) as `Authorization: Bearer <key>`",
            ),
            Self::MalformedCredentials => (
                "malformed_credentials",
                "the Authorization header must be `Bearer <key>`",
            ),
            Self::AmbiguousCredentials => (
                "ambiguous_credentials",
                "the request has more than one Authorization header; send exactly one",
            ),
            Self::InvalidKey => ("invalid_key", "the API key is not valid"),
            Self::OtherGroup => (
                "forbidden",
                "the API key does not give access to this group's token",
            ),
            Self::UnknownGroup => ("unknown_group", "no such channel or group is configured"),
            Self::NotStateless => (
                "stateless_not_enabled",
                "no such channel serves stateless tokens",
            ),
            Self::NotIssued => (
                "not_issued",
                "the group has no live token yet; retry shortly",
            ),
            Self::NoLongLived => (
                "long_lived_unavailable",
                "the channel has no long-lived token to serve: its token file is unreadable, \
                 LINE refuses the token, or it was retired; see `linetokd status`",
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
            Self::MalformedCredentials | Self::AmbiguousCredentials => {
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
            Self::InvalidKey
            | Self::OtherGroup
            | Self::UnknownGroup
            | Self::NoLongLived
            | Self::NotStateless
            | Self::Internal => {}
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

/// The bearer credential of a request, if it has exactly one
/// `Authorization` header and that header is well formed.
fn bearer(headers: &HeaderMap) -> Result<&str, Refused> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(Refused::NoCredentials);
    };
    if values.next().is_some() {
        // Taking the first would let whatever sits in between (a proxy
        // adding or keeping a header) decide who is asking.
        return Err(Refused::AmbiguousCredentials);
    }
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
    // By ID or by name; the rest of the request only sees the ID.
    let channel = state
        .keys
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .channel_id(&channel);
    let group = GroupName::new(group);
    match answer(&state, &channel, &group, &headers) {
        Ok(response) => response,
        Err(refused) => {
            // Channel and group are logged only once the caller proved to
            // hold a valid key; before that they are whatever it typed.
            match refused {
                Refused::NoCredentials
                | Refused::MalformedCredentials
                | Refused::AmbiguousCredentials
                | Refused::InvalidKey => {
                    tracing::info!(reason = refused.body().error, "token API request refused");
                }
                Refused::UnknownGroup
                | Refused::OtherGroup
                | Refused::NotIssued
                | Refused::NoLongLived
                | Refused::NotStateless
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
    let mut live = [published.current, published.previous.map(|p| *p)]
        .into_iter()
        .flatten()
        .filter(|t| t.expires_at > now);
    let current = live.next().ok_or(Refused::NotIssued)?;
    let previous = live.next();
    tracing::debug!(channel = %channel, group = %group, key_id = %current.key_id, "token served");
    token_response(channel, group, current, previous)
}

async fn long_lived_token(
    State(state): State<HttpState>,
    Path(channel): Path<String>,
    headers: HeaderMap,
) -> Response {
    let channel = state
        .keys
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .channel_id(&channel);
    match long_lived_answer(&state, &channel, &headers) {
        Ok(response) => response,
        Err(refused) => {
            match refused {
                Refused::NoCredentials
                | Refused::MalformedCredentials
                | Refused::AmbiguousCredentials
                | Refused::InvalidKey => {
                    tracing::info!(
                        reason = refused.body().error,
                        "long-lived token API request refused"
                    );
                }
                Refused::UnknownGroup
                | Refused::OtherGroup
                | Refused::NotIssued
                | Refused::NoLongLived
                | Refused::NotStateless
                | Refused::Internal => {
                    tracing::info!(channel = %channel, reason = refused.body().error, "long-lived token API request refused");
                }
            }
            refused.into_response()
        }
    }
}

fn long_lived_answer(
    state: &HttpState,
    channel: &ChannelId,
    headers: &HeaderMap,
) -> Result<Response, Refused> {
    let presented = bearer(headers)?;
    let access = state
        .keys
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .check_long_lived(channel, presented);
    match access {
        Access::Granted => {}
        Access::InvalidKey => return Err(Refused::InvalidKey),
        Access::UnknownGroup => return Err(Refused::UnknownGroup),
        Access::OtherGroup => return Err(Refused::OtherGroup),
    }
    let served = state
        .long_lived
        .as_ref()
        .and_then(|source| source(channel))
        .ok_or(Refused::NoLongLived)?;
    tracing::debug!(channel = %channel, fingerprint = %served.fingerprint, "long-lived token served");
    let body = crate::delivery::long_lived::render(
        SinkFormat::Json,
        channel,
        &served.token,
        &served.fingerprint,
    )
    .map_err(|_| Refused::Internal)?;
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ];
    Ok((StatusCode::OK, headers, body).into_response())
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
        previous: previous.map(Box::new),
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

async fn stateless_token(
    State(state): State<HttpState>,
    Path(channel): Path<String>,
    headers: HeaderMap,
) -> Response {
    let channel = state
        .keys
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .channel_id(&channel);
    let refused = match stateless_access(&state, &channel, &headers) {
        Ok(stateless) => return stateless_answer(&state, &stateless, &channel).await,
        Err(refused) => refused,
    };
    // As for groups: the channel is logged only once the caller proved to
    // hold a valid key.
    match refused {
        Refused::OtherGroup | Refused::NotStateless => {
            tracing::info!(channel = %channel, reason = refused.body().error, "stateless token request refused");
        }
        _ => tracing::info!(
            reason = refused.body().error,
            "stateless token request refused"
        ),
    }
    refused.into_response()
}

/// The checks before the cache is asked (see the module docs for their
/// order).
fn stateless_access(
    state: &HttpState,
    channel: &ChannelId,
    headers: &HeaderMap,
) -> Result<Arc<Stateless>, Refused> {
    let presented = bearer(headers)?;
    let access = state
        .keys
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .check_stateless(channel, presented);
    match access {
        Access::Granted => {}
        Access::InvalidKey => return Err(Refused::InvalidKey),
        Access::UnknownGroup => return Err(Refused::NotStateless),
        Access::OtherGroup => return Err(Refused::OtherGroup),
    }
    state
        .stateless
        .as_ref()
        .filter(|s| s.serves(channel))
        .cloned()
        .ok_or(Refused::NotStateless)
}

/// The stateless answer: the cached (or freshly issued) token, or the
/// failure as 503/502.
async fn stateless_answer(
    state: &HttpState,
    stateless: &Stateless,
    channel: &ChannelId,
) -> Response {
    let Some(outcome) = stateless.token(channel).await else {
        // Dropped by a reload while the request ran.
        return Refused::NotStateless.into_response();
    };
    let now = state.clock.now();
    let no_store = (header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    match outcome {
        Ok(served) => {
            let token = served.token;
            tracing::debug!(channel = %channel, result = served.result.as_str(), "stateless token served");
            let body = serde_json::json!({
                "access_token": token.token.expose(),
                "token_type": token.token_type,
                "expires_at": sink::timestamp(token.expires_at),
                "expires_in": (token.expires_at - now).num_seconds().max(0),
            });
            (StatusCode::OK, [no_store], Json(body)).into_response()
        }
        Err(e) => {
            // Debug: the slot logs each failed flight once, not once per waiter.
            tracing::debug!(channel = %channel, error = %e, "stateless token request failed");
            let retry = retry_after_secs(now, e.retry_at());
            let (status, body) = match &e {
                StatelessError::Refused { status, code, .. } => (
                    StatusCode::BAD_GATEWAY,
                    serde_json::json!({
                        "error": "line_refused",
                        "message": format!(
                            "LINE refused to issue a stateless token ({}{}); check the channel's \
                             credentials",
                            status.map_or_else(|| "no status".to_owned(), |s| s.to_string()),
                            code.as_ref().map(|c| format!(" {c}")).unwrap_or_default()
                        ),
                        "line_status": status,
                        "line_error": code,
                    }),
                ),
                StatelessError::Unavailable { .. } => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({
                        "error": "line_unavailable",
                        "message": format!(
                            "LINE did not issue a stateless token; retry after {retry} s"
                        ),
                    }),
                ),
                StatelessError::LocalLimit { max, .. } => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({
                        "error": "issue_limit",
                        "message": format!(
                            "the channel issued {max} stateless tokens in the last minute \
                             (max_issues_per_minute); retry after {retry} s"
                        ),
                    }),
                ),
            };
            let mut response = (status, [no_store], Json(body)).into_response();
            if status == StatusCode::SERVICE_UNAVAILABLE {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry));
            }
            response
        }
    }
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
        let mut two = headers("Bearer abc");
        two.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert!(matches!(bearer(&two), Err(Refused::AmbiguousCredentials)));
        let long = format!("Bearer {}", "a".repeat(MAX_AUTHORIZATION_LEN));
        assert!(matches!(
            bearer(&headers(&long)),
            Err(Refused::MalformedCredentials)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_where_nothing_moves_times_out() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let limit = Duration::from_secs(60);

        // A client that sends nothing: the read fails after the limit.
        let (server, _client) = tokio::io::duplex(64);
        let mut server = IdleTimeout::new(server, limit);
        let start = Instant::now();
        let mut buf = [0u8; 8];
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), limit);

        // A client that stops reading its answer: once the buffer is full
        // the write fails after the limit, counted from the last progress.
        let (server, mut client) = tokio::io::duplex(64);
        let mut server = IdleTimeout::new(server, limit);
        tokio::time::advance(Duration::from_secs(59)).await;
        server.write_all(&[1; 64]).await.unwrap();
        let mut some = [0u8; 16];
        client.read_exact(&mut some).await.unwrap();
        server.write_all(&[2; 16]).await.unwrap();
        let start = Instant::now();
        let err = server.write_all(&[3; 1]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), limit);

        // The same through vectored writes, as hyper sends a response body.
        let (server, mut client) = tokio::io::duplex(64);
        let mut server = IdleTimeout::new(server, limit);
        let (head, body) = ([4u8; 32], [5u8; 64]);
        let slices = [io::IoSlice::new(&head), io::IoSlice::new(&body)];
        let wrote = server.write_vectored(&slices).await.unwrap();
        assert!(wrote > 0 && wrote <= 64, "{wrote}");
        client.read_exact(&mut some).await.unwrap();
        tokio::time::advance(Duration::from_secs(59)).await;
        // 16 bytes of room: progress, so the deadline starts over.
        assert_eq!(server.write_vectored(&slices).await.unwrap(), 16);
        let start = Instant::now();
        let err = server.write_vectored(&slices).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), limit);
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
        // A channel's stateless key opens its stateless tokens only.
        keys.insert_stateless(c.clone(), &Secret::new("key-s"));
        assert_eq!(keys.check_stateless(&c, "key-s"), Access::Granted);
        assert_eq!(keys.check_stateless(&c, "key-a"), Access::OtherGroup);
        assert_eq!(
            keys.check_stateless(&other_c, "key-s"),
            Access::UnknownGroup
        );
        assert_eq!(keys.check_stateless(&c, "nope"), Access::InvalidKey);
        assert_eq!(keys.check(&c, &a, "key-s"), Access::OtherGroup);
        assert_eq!(keys.check(&other_c, &a, "key-s"), Access::UnknownGroup);
        assert!(usable_api_key(&Secret::new("k3y!")));
        assert!(!usable_api_key(&Secret::new("two words")));
        assert!(!usable_api_key(&Secret::new("tab\there")));
    }
}

// ---------------------------------------------------------------------------
// LINE Login grants (the `login` module).
// ---------------------------------------------------------------------------

/// A LINE Login API answer that is not a success: `{"error", "message"}`
/// plus `field` for a 422, `state` for a 410 and `line_error` (LINE's OAuth
/// code) for a refusal by LINE. Never echoes a value.
fn login_refusal(
    status: StatusCode,
    error: &str,
    message: &str,
    extra: serde_json::Value,
) -> Response {
    let mut body = serde_json::json!({ "error": error, "message": message });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            body.insert(k.clone(), v.clone());
        }
    }
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The checks every login route shares: the module is on, the bearer key
/// is the route's role's, the channel is a login channel.
fn login_access(
    state: &HttpState,
    role: crate::login::Role,
    channel: &str,
    headers: &HeaderMap,
) -> Result<(Arc<crate::login::Login>, ChannelId), Box<Response>> {
    let Some(login) = state.login.clone() else {
        return Err(Box::new(login_refusal(
            StatusCode::NOT_FOUND,
            "login_not_enabled",
            "no [[login_channel]] is configured",
            serde_json::Value::Null,
        )));
    };
    let presented = bearer(headers).map_err(|r| Box::new(r.into_response()))?;
    if !login.authorized(role, presented) {
        return Err(Box::new(Refused::InvalidKey.into_response()));
    }
    let Some(id) = login.channel_id(channel) else {
        return Err(Box::new(login_refusal(
            StatusCode::NOT_FOUND,
            "unknown_login_channel",
            "no login channel has this ID or name",
            serde_json::Value::Null,
        )));
    };
    Ok((login, id))
}

/// A module error as the API answers it.
fn login_error(e: &crate::login::LoginApiError) -> Response {
    use crate::login::LoginApiError as E;
    let null = serde_json::Value::Null;
    match e {
        E::UnknownChannel(_) => login_refusal(
            StatusCode::NOT_FOUND,
            "unknown_login_channel",
            "no login channel has this ID or name",
            null,
        ),
        E::Invalid { field, message } => login_refusal(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            &format!("{field} {message}"),
            serde_json::json!({ "field": field }),
        ),
        E::NoGrant => login_refusal(
            StatusCode::NOT_FOUND,
            "unknown_grant",
            "no grant is stored for this subject",
            null,
        ),
        E::NeedsLogin => login_refusal(
            StatusCode::GONE,
            "needs_login",
            "the user must log in again: the refresh token is dead",
            serde_json::json!({ "state": "needs_login" }),
        ),
        E::NotFresh => login_refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_fresh",
            "the access token expired and a refresh is pending",
            null,
        ),
        E::Line(_) => login_refusal(
            StatusCode::BAD_GATEWAY,
            "line_unavailable",
            "LINE did not answer usefully; try again",
            null,
        ),
        E::RateLimited { retry_after } => {
            let secs = retry_after.as_secs().max(1);
            let mut response = login_refusal(
                StatusCode::TOO_MANY_REQUESTS,
                "line_rate_limited",
                &format!("LINE is rate limiting this login channel; try again in {secs}s"),
                null,
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            response
        }
        E::LineRefused {
            operation, code, ..
        } => login_refusal(
            StatusCode::BAD_GATEWAY,
            "line_refused",
            &format!(
                "LINE refused the {operation}{}; nothing changed: check the login channel's \
                 ID and secret_file",
                code.as_deref()
                    .map(|c| format!(" with {c}"))
                    .unwrap_or_default()
            ),
            serde_json::json!({ "line_error": code }),
        ),
        E::Store(_) => login_refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the answer could not be built; see the daemon's log",
            null,
        ),
    }
}

/// The import's JSON body, read field by field so that an error names the
/// field and never echoes a value.
fn parse_import(body: &[u8]) -> Result<crate::login::Import, crate::login::LoginApiError> {
    use crate::login::LoginApiError as E;
    let invalid = |field: &'static str, message: &str| E::Invalid {
        field,
        message: message.to_owned(),
    };
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| invalid("body", "is not a JSON object"))?;
    let Some(object) = value.as_object() else {
        return Err(invalid("body", "is not a JSON object"));
    };
    let text = |field: &'static str| -> Result<String, E> {
        match object.get(field) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(_) => Err(invalid(field, "must be a non-empty string")),
            None => Err(invalid(field, "is missing")),
        }
    };
    let expires_in = match object.get("expires_in") {
        Some(v) => v
            .as_i64()
            .ok_or_else(|| invalid("expires_in", "must be an integer (seconds)"))?,
        None => return Err(invalid("expires_in", "is missing")),
    };
    let login_at = match object.get("login_at") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(
            chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|_| invalid("login_at", "must be an RFC 3339 time"))?
                .with_timezone(&chrono::Utc),
        ),
        Some(serde_json::Value::Number(n)) => Some(
            n.as_i64()
                .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0))
                .ok_or_else(|| invalid("login_at", "must be a Unix time in seconds"))?,
        ),
        Some(_) => {
            return Err(invalid(
                "login_at",
                "must be an RFC 3339 time or Unix seconds",
            ));
        }
    };
    Ok(crate::login::Import {
        subject: text("subject")?,
        access_token: text("access_token")?,
        refresh_token: text("refresh_token")?,
        expires_in,
        login_at,
    })
}

/// The import's optional `revoke_previous` (default false).
fn parse_revoke_previous(body: &[u8]) -> Result<bool, crate::login::LoginApiError> {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    match value.get("revoke_previous") {
        None | Some(serde_json::Value::Null) => Ok(false),
        Some(serde_json::Value::Bool(b)) => Ok(*b),
        Some(_) => Err(crate::login::LoginApiError::Invalid {
            field: "revoke_previous",
            message: "must be true or false".to_owned(),
        }),
    }
}

async fn login_import(
    State(state): State<HttpState>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (login, channel) = match login_access(&state, crate::login::Role::Admin, &channel, &headers)
    {
        Ok(ok) => ok,
        Err(response) => return *response,
    };
    let import = match parse_import(&body) {
        Ok(import) => import,
        Err(e) => return login_error(&e),
    };
    let revoke_previous = match parse_revoke_previous(&body) {
        Ok(revoke) => revoke,
        Err(e) => return login_error(&e),
    };
    match login
        .import_replacing(&channel, import, revoke_previous)
        .await
    {
        Ok(imported) => {
            let mut body = serde_json::json!({
                "access_expires_at": sink::timestamp(imported.access_expires_at),
                "horizon_at": sink::timestamp(imported.horizon_at),
                "horizon_estimated": imported.horizon_estimated,
                "replaced": imported.replaced,
            });
            if let (Some(previous), Some(body)) = (&imported.previous_revoke, body.as_object_mut())
            {
                let mut answer = serde_json::json!({ "result": previous.as_str() });
                if let crate::login::PreviousRevoke::Failed(why) = previous {
                    answer["message"] = serde_json::Value::String(why.clone());
                }
                body.insert("previous_revoke".to_owned(), answer);
            }
            (
                StatusCode::CREATED,
                [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
                Json(body),
            )
                .into_response()
        }
        Err(e) => {
            tracing::info!(channel = %channel, "login grant import refused: {e}");
            login_error(&e)
        }
    }
}

async fn login_token(
    State(state): State<HttpState>,
    Path((channel, subject)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (login, channel) =
        match login_access(&state, crate::login::Role::Reader, &channel, &headers) {
            Ok(ok) => ok,
            Err(response) => return *response,
        };
    match login.token(&channel, &subject).await {
        Ok(served) => login_served(&served),
        Err(e) => login_error(&e),
    }
}

/// A grant's access token as the token routes answer it.
fn login_served(served: &crate::login::Served) -> Response {
    let body = serde_json::json!({
        "access_token": served.access_token.expose(),
        "token_type": "Bearer",
        "expires_at": sink::timestamp(served.expires_at),
        "scope": served.scope,
    });
    (
        StatusCode::OK,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(body),
    )
        .into_response()
}

/// `POST …/token/refused`: a consumer got 401 from LINE with the served
/// token. The module checks it at LINE and refreshes once if LINE refuses
/// it; the answer is the token to use now (the same one when LINE still
/// accepts it), or 410 `needs_login`.
async fn login_token_refused(
    State(state): State<HttpState>,
    Path((channel, subject)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (login, channel) =
        match login_access(&state, crate::login::Role::Reader, &channel, &headers) {
            Ok(ok) => ok,
            Err(response) => return *response,
        };
    match login.token_refused(&channel, &subject).await {
        Ok(served) => login_served(&served),
        Err(e) => login_error(&e),
    }
}

/// `?deauthorize=true`.
#[derive(Debug, Default, serde::Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    deauthorize: bool,
}

async fn login_delete(
    State(state): State<HttpState>,
    Path((channel, subject)): Path<(String, String)>,
    axum::extract::Query(query): axum::extract::Query<DeleteQuery>,
    headers: HeaderMap,
) -> Response {
    let (login, channel) = match login_access(&state, crate::login::Role::Admin, &channel, &headers)
    {
        Ok(ok) => ok,
        Err(response) => return *response,
    };
    let deauthorize = query.deauthorize;
    // Deauthorize takes a channel token of the login channel itself: a
    // stateless one, from `[channel.stateless]` of a `[[channel]]` with
    // the same ID.
    let channel_token = if deauthorize {
        let Some(stateless) = state.stateless.as_ref().filter(|s| s.serves(&channel)) else {
            return login_refusal(
                StatusCode::CONFLICT,
                "deauthorize_not_configured",
                "deauthorize needs a channel token of the login channel: configure a [[channel]] \
                 with its ID and [channel.stateless]",
                serde_json::Value::Null,
            );
        };
        match stateless.token(&channel).await {
            Some(Ok(served)) => Some(served.token.token),
            _ => {
                return login_refusal(
                    StatusCode::BAD_GATEWAY,
                    "line_unavailable",
                    "no channel token for deauthorize could be had from LINE; try again",
                    serde_json::Value::Null,
                );
            }
        }
    } else {
        None
    };
    match login.delete(&channel, &subject, channel_token).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            tracing::info!(channel = %channel, "login grant delete failed: {e}");
            login_error(&e)
        }
    }
}
