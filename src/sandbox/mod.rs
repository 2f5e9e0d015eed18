//! The LINE sandbox: a faithful emulator of LINE's channel access token
//! endpoints (docs/design.md §9), used by `linetokd demo`, the tests, the
//! simulation, and users who want to try their setup offline.
//!
//! - [`Sandbox`] is the emulator: cheap to clone (an `Arc` inside), driven
//!   entirely by the [`SharedClock`] it is given, read to the millisecond,
//!   so a test can run months of virtual time through it and place an
//!   expiry on an exact instant. [`Sandbox::router`] is its axum app;
//!   [`Sandbox::serve`] serves it on a listener until a shutdown token fires;
//!   [`run`] is `linetokd sandbox`.
//! - [`config`]: the config file (channels, secrets, public key files,
//!   LINE Login channels).
//! - [`state`]: the token book and LINE's counting rules, pure.
//! - [`login`]: LINE Login channels, codes, user grants and their 90-day
//!   horizon, pure; `login_routes`: its endpoints (sharing LINE's token,
//!   verify and revoke paths, plus `/user/v1/deauthorize`) and its
//!   `/_sandbox/login/...` control and inspection routes.
//! - [`assertion`]: LINE's checks on a client assertion.
//! - `routes`: LINE's endpoints over HTTP; `inspect`: `/_sandbox/...` (its
//!   module doc lists every path and JSON shape).
//! - [`faults`]: per-endpoint error rate, 429, latency, hangs, drops,
//!   outage, verify refusing live tokens, malformed issue answers.
//! - `conn`: the per-connection kill switch behind dropped connections.
//! - [`errors`]: set-up errors and LINE's two error body shapes.
//!
//! Beyond LINE's endpoints, a test in the same process uses the methods
//! here: [`Sandbox::live_tokens`] (the truth at an instant, O(live)),
//! [`Sandbox::tokens_since`] and [`Sandbox::token`] (history without
//! rescanning it), [`Sandbox::add_foreign_tokens`] (a channel pre-filled by
//! another issuer), [`Sandbox::set_verify_refusal`] (verify refuses one live
//! token), [`Sandbox::revoke_key_id`] and [`Sandbox::set_faults`]; for LINE
//! Login, [`Sandbox::register_login_channel`], [`Sandbox::create_login_code`],
//! [`Sandbox::login`], [`Sandbox::login_grants`] and
//! [`Sandbox::login_verify_calls`].
//!
//! Depends on `domain`, `clock`, and `line::jwt`/`line::keys` types only; the
//! daemon never calls it. Locks are std mutexes, each held for one short
//! step and never across `.await`, and never two at once.

pub mod assertion;
pub mod config;
mod conn;
pub mod errors;
pub mod faults;
mod inspect;
pub mod login;
mod login_routes;
mod routes;
pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anyhow::Context as _;
use axum::Router;
use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use self::config::{ChannelConfig, SandboxConfig};
pub use self::errors::{LineRefusal, SandboxError};
pub use self::faults::{Endpoint, FaultRule, Faults, MalformedBody};
pub use self::login::{
    GrantState, LoginAccessTokenView, LoginAppType, LoginChannelConfig, LoginCode, LoginGrantView,
    LoginRefusal, LoginTokenState, TokenGrant,
};
pub use self::routes::REQUEST_ID_HEADER;
pub use self::state::{
    ForeignTokenError, LONG_LIVED_SECS, LiveToken, LongLivedRefusal, MAX_LONG_LIVED_GRACE,
    SandboxToken, SandboxTokenState, TokenIssuer, TokenKind, VerifyRefusal,
};

use self::assertion::{AssertionError, Purpose, VerifiedAssertion};
use self::conn::{ConnKill, KillableListener};
use self::faults::{Decision, FaultEngine};
use self::login::LoginBook;
use self::state::Book;
use crate::clock::SharedClock;
use crate::domain::{AccessToken, ChannelId, ChannelSecret, KeyId, SigningKid};
use crate::line::keys::VerifyingKey;

/// The LINE emulator. Clones share one state.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    /// "Now" for every rule: assertion exp, token expiry, the Date header.
    clock: SharedClock,
    channels: Mutex<Channels>,
    book: Mutex<Book>,
    /// LINE Login channels, codes, grants and user tokens.
    login: Mutex<LoginBook>,
    faults: Mutex<FaultEngine>,
    /// How many requests are currently held by a hang fault; tests wait on
    /// it instead of sleeping.
    hung: watch::Sender<usize>,
}

/// Registered channels and their keys.
#[derive(Default)]
struct Channels {
    secrets: HashMap<ChannelId, ChannelSecret>,
    /// kid → (channel, key): LINE finds a key by its globally unique kid.
    keys: HashMap<SigningKid, (ChannelId, Arc<VerifyingKey>)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these short locks cannot leave the data
    // half-updated in a way later requests would trip on; keep serving.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Sandbox {
    /// A sandbox with the channels and faults of `config`.
    ///
    /// # Errors
    /// [`SandboxError`] for a kid registered twice, a key that is not
    /// RSA-2048, or invalid fault rules.
    pub fn new(config: SandboxConfig, clock: SharedClock) -> Result<Self, SandboxError> {
        let sandbox = Self::empty(clock);
        for channel in config.channels {
            sandbox.register_channel(channel.id, channel.secret, channel.keys)?;
        }
        for channel in config.login_channels {
            sandbox.register_login_channel(channel)?;
        }
        sandbox.set_faults(config.faults)?;
        Ok(sandbox)
    }

    /// A sandbox with no channels and no faults.
    pub fn empty(clock: SharedClock) -> Self {
        let (hung, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                clock,
                channels: Mutex::new(Channels::default()),
                book: Mutex::new(Book::new()),
                login: Mutex::new(LoginBook::new()),
                faults: Mutex::new(FaultEngine::default()),
                hung,
            }),
        }
    }

    /// Registers (or re-registers, replacing secret and keys) a channel with
    /// its secret and assertion public keys. Tokens already issued stay.
    ///
    /// # Errors
    /// [`SandboxError::DuplicateKid`] if a kid belongs to another channel;
    /// [`SandboxError::KeySize`] for a key that is not RSA-2048.
    pub fn register_channel(
        &self,
        id: ChannelId,
        secret: ChannelSecret,
        keys: Vec<(SigningKid, VerifyingKey)>,
    ) -> Result<(), SandboxError> {
        for (kid, key) in &keys {
            config::check_key_size(&id, kid, key)?;
        }
        let mut channels = lock(&self.inner.channels);
        for (kid, _) in &keys {
            if let Some((owner, _)) = channels.keys.get(kid)
                && *owner != id
            {
                return Err(SandboxError::DuplicateKid {
                    kid: kid.clone(),
                    owner: owner.clone(),
                });
            }
        }
        channels.keys.retain(|_, (owner, _)| *owner != id);
        for (kid, key) in keys {
            channels.keys.insert(kid, (id.clone(), Arc::new(key)));
        }
        channels.secrets.insert(id, secret);
        Ok(())
    }

    /// Registers (or re-registers, keeping its grants) a LINE Login channel.
    /// A Login channel can also hold channel access tokens (deauthorize
    /// needs one): unless the channel is registered already, its secret is
    /// registered for the channel-token endpoints too, so the secret forms
    /// (stateless, short-lived) issue for it; register assertion keys with
    /// [`Self::register_channel`] (same secret) for v2.1 tokens.
    ///
    /// # Errors
    /// [`SandboxError::LoginChannel`] for an ID that is not digits, an empty
    /// secret, or a secret other than the one the channel is registered with.
    pub fn register_login_channel(&self, config: LoginChannelConfig) -> Result<(), SandboxError> {
        config::check_login_channel(&config)?;
        {
            let mut channels = lock(&self.inner.channels);
            match channels.secrets.get(&config.id) {
                Some(secret) if *secret != config.secret => {
                    return Err(config::login_channel_error(
                        &config.id,
                        "registered as a channel with another secret; a channel has one secret",
                    ));
                }
                Some(_) => {}
                None => {
                    channels
                        .secrets
                        .insert(config.id.clone(), config.secret.clone());
                }
            }
        }
        lock(&self.inner.login).register(config);
        Ok(())
    }

    /// True if `channel` is a registered LINE Login channel.
    pub fn has_login_channel(&self, channel: &ChannelId) -> bool {
        lock(&self.inner.login).has_channel(channel)
    }

    /// Makes an authorization code for `subject`'s login on the Login
    /// channel `channel` (what LINE's login page hands the app's
    /// `redirect_uri` after the user agrees), good once for ten minutes.
    ///
    /// # Errors
    /// [`LoginRefusal::UnknownClient`] if `channel` is not a Login channel.
    pub fn create_login_code(
        &self,
        channel: &ChannelId,
        subject: &str,
        scope: &str,
        redirect_uri: &str,
    ) -> Result<LoginCode, LoginRefusal> {
        let now = self.now();
        lock(&self.inner.login).create_code(channel, subject, scope, redirect_uri, now)
    }

    /// A whole login in one step, for tests: a code for `subject` exchanged
    /// at once (as `POST /oauth2/v2.1/token` would), starting a grant now.
    ///
    /// # Errors
    /// [`LoginRefusal::UnknownClient`] if `channel` is not a Login channel.
    pub fn login(
        &self,
        channel: &ChannelId,
        subject: &str,
        scope: &str,
    ) -> Result<TokenGrant, LoginRefusal> {
        let now = self.now();
        let mut login = lock(&self.inner.login);
        let secret = login
            .channel(channel)
            .map(|c| c.secret.clone())
            .ok_or(LoginRefusal::UnknownClient)?;
        let redirect_uri = "https://sandbox.invalid/callback";
        let code = login.create_code(channel, subject, scope, redirect_uri, now)?;
        login.exchange_code(
            channel.as_str(),
            Some(secret.expose()),
            &code.code,
            redirect_uri,
            now,
        )
    }

    /// Every grant of the Login channel `channel`, oldest first, with its
    /// state now and its token values. Empty for an unknown channel.
    pub fn login_grants(&self, channel: &ChannelId) -> Vec<LoginGrantView> {
        let now = self.now();
        lock(&self.inner.login).grants(channel, now)
    }

    /// When each verify call for a user token of the Login channel
    /// `channel` was answered, oldest first (the last
    /// [`login::VERIFY_LOG_LEN`]).
    pub fn login_verify_calls(&self, channel: &ChannelId) -> Vec<DateTime<Utc>> {
        lock(&self.inner.login).verify_calls(channel)
    }

    pub(crate) fn with_login<T>(&self, f: impl FnOnce(&mut LoginBook) -> T) -> T {
        f(&mut lock(&self.inner.login))
    }

    /// The sandbox's idea of now, truncated to the millisecond: every
    /// issue, expiry and liveness check uses this.
    pub fn now(&self) -> DateTime<Utc> {
        state::to_millis(self.inner.clock.now())
    }

    /// True if `channel` is registered.
    pub fn has_channel(&self, channel: &ChannelId) -> bool {
        lock(&self.inner.channels).secrets.contains_key(channel)
    }

    /// The whole app: LINE's endpoints (with faults) and `/_sandbox/...`,
    /// every response stamped with `X-Line-Request-Id` and the sandbox
    /// `Date`. Served without [`Self::serve`] (e.g. with `oneshot`), a
    /// dropped-connection fault becomes a garbled answer and a hung request
    /// hangs until the caller drops it.
    pub fn router(&self) -> Router {
        routes::line_routes(self.clone())
            .merge(inspect::routes(self.clone()))
            .merge(login_routes::control_routes(self.clone()))
            .fallback(routes::not_found)
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                routes::stamp_headers,
            ))
    }

    /// Serves the sandbox on `listener` until `shutdown` is cancelled, then
    /// finishes the requests in flight (hung ones are dropped) and returns.
    ///
    /// # Errors
    /// The IO error that stopped the server.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let app = routes::with_serve_shutdown(self.router(), shutdown.clone())
            .into_make_service_with_connect_info::<ConnKill>();
        axum::serve(KillableListener::new(listener), app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    }

    /// Every token ever issued on `channel`, oldest first, with its state
    /// now. Empty for an unknown channel. O(every token ever issued): in a
    /// loop prefer [`Self::live_tokens`], [`Self::tokens_since`] or
    /// [`Self::token`].
    pub fn tokens(&self, channel: &ChannelId) -> Vec<SandboxToken> {
        let now = self.now();
        lock(&self.inner.book).tokens(channel, now)
    }

    /// The tokens issued on `channel` from position `from` on (`seq >=
    /// from`), with their state now: remember how many you have seen and
    /// read only the new ones.
    pub fn tokens_since(&self, channel: &ChannelId, from: usize) -> Vec<SandboxToken> {
        let now = self.now();
        lock(&self.inner.book).tokens_since(channel, from, now)
    }

    /// The v2.1 token `key_id` of `channel` with its state now, if it was
    /// ever issued there. O(1).
    pub fn token(&self, channel: &ChannelId, key_id: &KeyId) -> Option<SandboxToken> {
        let now = self.now();
        lock(&self.inner.book).token(channel, key_id, now)
    }

    /// The live v2.1 tokens of `channel` now, oldest first, API-issued and
    /// foreign alike: the tokens the key-ID list shows and the 30-token cap
    /// counts, with key ID, issuer and expiry. O(live tokens), so a
    /// simulation can check its invariants after every step.
    pub fn live_tokens(&self, channel: &ChannelId) -> Vec<LiveToken> {
        let now = self.now();
        lock(&self.inner.book).live_v21(channel, now)
    }

    /// [`Self::live_tokens`] of every registered channel at one instant,
    /// returned with that instant.
    pub fn live_tokens_all(&self) -> (DateTime<Utc>, BTreeMap<ChannelId, Vec<LiveToken>>) {
        let now = self.now();
        let channels: Vec<ChannelId> = lock(&self.inner.channels).secrets.keys().cloned().collect();
        let mut book = lock(&self.inner.book);
        let live = channels
            .into_iter()
            .map(|c| {
                let tokens = book.live_v21(&c, now);
                (c, tokens)
            })
            .collect();
        (now, live)
    }

    /// Adds live v2.1 tokens of "another issuer" to `channel`, one per
    /// instant in `expires_at` (to the millisecond), issued now. They are
    /// listed by the key-ID list, count against the 30-token cap, verify as
    /// valid, can be revoked, and show as [`TokenIssuer::Foreign`]. All or
    /// nothing.
    ///
    /// # Errors
    /// [`ForeignTokenError`]: unknown channel, no expiries, an expiry not
    /// after now or more than 30 days ahead, or more than 30 live tokens.
    pub fn add_foreign_tokens(
        &self,
        channel: &ChannelId,
        expires_at: &[DateTime<Utc>],
    ) -> Result<Vec<LiveToken>, ForeignTokenError> {
        self.add_foreign_tokens_at(channel, self.now(), expires_at)
    }

    /// [`Self::add_foreign_tokens`] at an instant already read.
    pub(crate) fn add_foreign_tokens_at(
        &self,
        channel: &ChannelId,
        now: DateTime<Utc>,
        expires_at: &[DateTime<Utc>],
    ) -> Result<Vec<LiveToken>, ForeignTokenError> {
        if !self.has_channel(channel) {
            return Err(ForeignTokenError::UnknownChannel(channel.clone()));
        }
        lock(&self.inner.book).add_foreign_v21(channel, now, expires_at)
    }

    /// The console's "Issue" button for a long-lived token on `channel`:
    /// valid indefinitely, verified and revoked through `/v2/oauth/...`.
    ///
    /// # Errors
    /// [`SandboxError::LongLived`] for an unknown channel or one that
    /// already has a current long-lived token.
    pub fn issue_long_lived(&self, channel: &ChannelId) -> Result<AccessToken, SandboxError> {
        self.known(channel)?;
        let now = self.now();
        let issued = lock(&self.inner.book).issue_long_lived(channel, now)?;
        Ok(issued.access_token)
    }

    /// The console's "Reissue" button: a new long-lived token on `channel`;
    /// the current one stays valid for `grace` (0–24 hours; zero: invalid
    /// at once).
    ///
    /// # Errors
    /// [`SandboxError::LongLived`] for an unknown channel, no current
    /// token, or a grace outside 0–24 hours.
    pub fn reissue_long_lived(
        &self,
        channel: &ChannelId,
        grace: chrono::Duration,
    ) -> Result<AccessToken, SandboxError> {
        self.known(channel)?;
        let now = self.now();
        let issued = lock(&self.inner.book).reissue_long_lived(channel, now, grace)?;
        Ok(issued.access_token)
    }

    fn known(&self, channel: &ChannelId) -> Result<(), SandboxError> {
        if self.has_channel(channel) {
            Ok(())
        } else {
            Err(SandboxError::UnknownChannel(channel.clone()))
        }
    }

    /// Makes `/oauth2/v2.1/verify` refuse the v2.1 token `key_id` of
    /// `channel` while it is live (`Some`: LINE's 400 `invalid_request`, as
    /// if expired or invalid), or accept it again (`None`). The key-ID list
    /// keeps listing it and the cap keeps counting it. False when the key
    /// ID was never issued on the channel.
    pub fn set_verify_refusal(
        &self,
        channel: &ChannelId,
        key_id: &KeyId,
        refusal: Option<VerifyRefusal>,
    ) -> bool {
        lock(&self.inner.book).set_verify_refusal(channel, key_id, refusal)
    }

    /// The key IDs `/oauth2/v2.1/tokens/kid` would list for `channel` now.
    pub fn live_key_ids(&self, channel: &ChannelId) -> Vec<KeyId> {
        let now = self.now();
        lock(&self.inner.book).live_key_ids(channel, now)
    }

    /// Revokes the v2.1 token `key_id` behind the client's back (as an
    /// operator in the LINE console would). True if it was live and is now
    /// revoked; false if it was unknown or already dead.
    pub fn revoke_key_id(&self, channel: &ChannelId, key_id: &KeyId) -> bool {
        self.try_revoke_key_id(channel, key_id).unwrap_or(false)
    }

    /// As [`Self::revoke_key_id`], telling unknown (`None`) from dead.
    pub fn try_revoke_key_id(&self, channel: &ChannelId, key_id: &KeyId) -> Option<bool> {
        let now = self.now();
        lock(&self.inner.book).revoke_key_id(channel, key_id, now)
    }

    /// Replaces the fault rules and restarts the fault RNG from their seed.
    ///
    /// # Errors
    /// [`SandboxError::Faults`] naming a bad rule; the old rules stay.
    pub fn set_faults(&self, faults: Faults) -> Result<(), SandboxError> {
        faults.validate()?;
        *lock(&self.inner.faults) = FaultEngine::new(faults);
        Ok(())
    }

    /// The fault rules in force.
    pub fn faults(&self) -> Faults {
        lock(&self.inner.faults).faults().clone()
    }

    /// Takes LINE down (every LINE endpoint answers 503) or brings it back,
    /// keeping the other fault rules and the RNG's position.
    pub fn set_down(&self, down: bool) {
        lock(&self.inner.faults).set_down(down);
    }

    /// How many requests a hang fault is holding right now.
    pub fn hung_requests(&self) -> usize {
        *self.inner.hung.borrow()
    }

    /// Waits until at least `n` requests are held by a hang fault (when `n`
    /// is 0: until none are), so a test needs no sleep.
    pub async fn wait_for_hung(&self, n: usize) {
        let mut rx = self.inner.hung.subscribe();
        // The sender lives in `self`, so this cannot fail.
        let _ = rx
            .wait_for(|&count| if n == 0 { count == 0 } else { count >= n })
            .await;
    }

    pub(crate) fn decide_fault(&self, endpoint: Endpoint) -> Decision {
        lock(&self.inner.faults).decide(endpoint)
    }

    pub(crate) fn hung_guard(&self) -> HungGuard {
        self.inner.hung.send_modify(|c| *c += 1);
        HungGuard(self.clone())
    }

    pub(crate) fn with_book<T>(&self, f: impl FnOnce(&mut Book) -> T) -> T {
        f(&mut lock(&self.inner.book))
    }

    /// LINE's assertion checks against the registered keys, at `now`. The
    /// signature is verified outside the channel lock.
    pub(crate) fn verify_assertion(
        &self,
        assertion: &str,
        now: DateTime<Utc>,
        purpose: Purpose,
    ) -> Result<VerifiedAssertion, AssertionError> {
        let lookup = |kid: &SigningKid| lock(&self.inner.channels).keys.get(kid).cloned();
        assertion::verify(assertion, now, purpose, &lookup)
    }

    /// Checks a channel ID and secret, as the revoke and secret-form
    /// endpoints do; LINE's texts for the two failures (docs/line-api.md §5a).
    pub(crate) fn authenticate_secret(
        &self,
        client_id: &str,
        client_secret: &str,
    ) -> Result<ChannelId, LineRefusal> {
        let id = ChannelId::new(client_id);
        let channels = lock(&self.inner.channels);
        match channels.secrets.get(&id) {
            None => Err(LineRefusal::invalid_client("invalid client_id")),
            Some(secret) if !secrets_equal(secret.expose(), client_secret) => {
                Err(LineRefusal::invalid_client("invalid client_secret"))
            }
            Some(_) => Ok(id),
        }
    }
}

/// Constant-time comparison, so the sandbox models good practice even
/// though nobody attacks a test double.
fn secrets_equal(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

/// Counts a request as hung while it lives.
pub(crate) struct HungGuard(Sandbox);

impl Drop for HungGuard {
    fn drop(&mut self) {
        self.0.inner.hung.send_modify(|c| *c = c.saturating_sub(1));
    }
}

/// `linetokd sandbox`: loads `config`, binds `listen`, prints
/// `linetokd sandbox listening on http://ADDR` on stdout (so `--listen
/// 127.0.0.1:0` works from scripts), and serves until `shutdown`.
///
/// # Errors
/// An unreadable or invalid config, a listen address that cannot be bound,
/// or the server failing; each with what was being done.
pub async fn run(
    listen: SocketAddr,
    config: &Path,
    clock: SharedClock,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_at(listen, load(config, clock)?, shutdown).await
}

/// The sandbox `config` describes, on `clock`: the config half of [`run`],
/// so the command can tell a bad config (exit 2) from a failure to serve.
///
/// # Errors
/// An unreadable or invalid config, or a key file it names.
pub fn load(config: &Path, clock: SharedClock) -> Result<Sandbox, SandboxError> {
    Sandbox::new(SandboxConfig::load(config)?, clock)
}

/// Binds `listen`, prints the address as [`run`] does, and serves
/// `sandbox` until `shutdown`.
///
/// # Errors
/// A listen address that cannot be bound, or the server failing.
pub async fn serve_at(
    listen: SocketAddr,
    sandbox: Sandbox,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("while binding the sandbox to {listen}"))?;
    let addr = listener
        .local_addr()
        .context("while reading the bound address")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "linetokd sandbox listening on http://{addr}")
            .and_then(|()| out.flush())
            .context("while printing the listening address")?;
    }
    tracing::info!(%addr, "sandbox listening");
    sandbox
        .serve(listener, shutdown)
        .await
        .context("while serving the sandbox")
}
