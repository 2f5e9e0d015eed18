//! LINE Login in the sandbox: Login channels, authorization codes, user
//! grants and their tokens, with LINE's rules (docs/line-api.md section 7).
//! Pure book-keeping like [`super::state`]: "now" is passed in, so the
//! 90-day horizon is tested without HTTP or a clock.
//!
//! Rules reproduced:
//! - a code (made by the sandbox's control API, standing in for the user's
//!   login in a browser) is good once, for [`CODE_LIFETIME`], with the
//!   `redirect_uri` it was made for; exchanging it needs the channel secret
//!   whatever the app type, and starts a *grant*: the login instant, an
//!   access token living [`ACCESS_TOKEN_SECS`] and a refresh token;
//! - a refresh token works until [`REFRESH_HORIZON`] after its grant's
//!   login, never later: refreshing issues a fresh 30-day access token and
//!   never moves the horizon; after it, and for a refresh token that is
//!   unknown, rotated out or belongs to an ended grant, the answer is
//!   `invalid_grant`;
//! - a channel with `rotate_refresh_tokens` answers each refresh with a new
//!   refresh token and retires the one sent; otherwise it echoes the one
//!   sent (LINE's reference);
//! - app type [`LoginAppType::Web`] requires the right `client_secret` on
//!   refresh and revoke; [`LoginAppType::Native`] ignores it, even a wrong
//!   one (LINE: "required only when the app type is Web app alone");
//! - revoking an access token ends that token only (the sandbox's choice:
//!   LINE does not say it ends the grant); revoking by refresh token (the
//!   Android SDK's form) and deauthorizing end the whole grant: every access
//!   token stops verifying and the refresh token gets `invalid_grant`;
//! - deauthorize needs a live access token of the grant; a second one with
//!   the same token answers 400 `invalid token`.
//!
//! Invariants: every value (code, access token, refresh token) maps to
//! exactly one grant; a grant's end is set at most once; instants are whole
//! milliseconds.
//!
//! Depends on `domain`, `super::state` (time helpers) and `rand`.

use std::collections::{HashMap, VecDeque};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use rand::distr::{Alphanumeric, SampleString as _};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};

use super::state::{millis, to_millis};
use crate::domain::{ChannelId, ChannelSecret};

/// A user access token's lifetime: 30 days.
pub const ACCESS_TOKEN_SECS: i64 = 2_592_000;

/// How long a refresh token works after its grant's login: 90 days.
pub const REFRESH_HORIZON: Duration = Duration::days(90);

/// How long an authorization code can be exchanged: 10 minutes (LINE's
/// figure for its codes).
pub const CODE_LIFETIME: Duration = Duration::minutes(10);

/// A Login channel's app type, as far as the secret rule goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginAppType {
    /// "Web app" alone: refresh and revoke need the channel secret.
    Web,
    /// A mobile app (or mobile and web): the secret is ignored.
    Native,
}

/// A LINE Login channel as the sandbox knows it.
#[derive(Debug, Clone)]
pub struct LoginChannelConfig {
    /// The channel ID (`client_id`).
    pub id: ChannelId,
    /// The channel secret.
    pub secret: ChannelSecret,
    /// Whether refresh and revoke need the secret.
    pub app_type: LoginAppType,
    /// When true each refresh answers a new refresh token and the old one
    /// stops working (what LINE's Android SDK prepares for).
    pub rotate_refresh_tokens: bool,
}

/// Where a grant stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantState {
    /// The refresh token works.
    Active,
    /// Past its horizon: the refresh token no longer works (access tokens
    /// still live until their own expiry).
    Expired,
    /// Ended by a revoke with its refresh token.
    Revoked,
    /// Ended by deauthorize.
    Deauthorized,
}

/// Where one user access token stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginTokenState {
    /// Verifies.
    Live,
    /// Past its expiry.
    Expired,
    /// Revoked on its own.
    Revoked,
    /// Its grant was revoked or deauthorized.
    Ended,
}

/// One access token of a grant, for inspection (with its value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoginAccessTokenView {
    /// The value.
    pub access_token: String,
    /// Issued at.
    #[serde(serialize_with = "millis")]
    pub issued_at: DateTime<Utc>,
    /// Expires at (live while now is before it).
    #[serde(serialize_with = "millis")]
    pub expires_at: DateTime<Utc>,
    /// State now.
    pub state: LoginTokenState,
}

/// One grant (a user's login on a channel), for inspection: values in
/// clear, as the rest of the inspection API shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoginGrantView {
    /// Position among the channel's grants, from 0.
    pub seq: usize,
    /// The user (LINE's `sub`) it was made for.
    pub subject: String,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// The login instant (the code exchange).
    #[serde(serialize_with = "millis")]
    pub login_at: DateTime<Utc>,
    /// The refresh token works while now is before this.
    #[serde(serialize_with = "millis")]
    pub horizon_at: DateTime<Utc>,
    /// State now.
    pub state: GrantState,
    /// The refresh token that works (until the horizon).
    pub refresh_token: String,
    /// Refresh tokens rotated out, oldest first.
    pub retired_refresh_tokens: Vec<String>,
    /// How many refreshes succeeded.
    pub refreshes: u64,
    /// When the grant was revoked or deauthorized.
    #[serde(serialize_with = "opt_millis")]
    pub ended_at: Option<DateTime<Utc>>,
    /// Every access token of the grant, oldest first.
    pub access_tokens: Vec<LoginAccessTokenView>,
}

fn opt_millis<S: serde::Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => millis(t, s),
        None => s.serialize_none(),
    }
}

/// A new authorization code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoginCode {
    /// The code, for `grant_type=authorization_code`.
    pub code: String,
    /// It can be exchanged while now is before this.
    #[serde(serialize_with = "millis")]
    pub expires_at: DateTime<Utc>,
}

/// The token endpoint's answer to either grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    /// The new access token.
    pub access_token: String,
    /// Its lifetime in seconds.
    pub expires_in: i64,
    /// The refresh token to use next.
    pub refresh_token: String,
    /// Granted scopes.
    pub scope: String,
    /// A JWS-shaped ID token, on a code exchange with `openid`.
    pub id_token: Option<String>,
}

/// Why the Login book refused; the routes turn each into LINE's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginRefusal {
    /// `client_id` is not a Login channel.
    #[error("invalid client_id")]
    UnknownClient,
    /// A secret is required and missing.
    #[error("client_secret is required")]
    SecretMissing,
    /// The secret is wrong.
    #[error("invalid client_secret")]
    SecretWrong,
    /// The code is unknown, used, expired, or for another redirect URI or
    /// channel.
    #[error("invalid authorization code")]
    BadCode,
    /// The refresh token is unknown, rotated out, past its horizon or its
    /// grant ended.
    #[error("invalid refresh token")]
    BadRefreshToken,
    /// Deauthorize: the user token is not a live token of a grant of this
    /// channel.
    #[error("invalid token")]
    BadUserToken,
}

/// What verify learns about a user access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginVerdict {
    /// Live.
    Live {
        /// The Login channel.
        channel_id: ChannelId,
        /// Whole seconds left, rounded down.
        expires_in: i64,
        /// The grant's scopes.
        scope: String,
    },
    /// Past its expiry.
    Expired,
    /// Revoked, or its grant ended.
    Ended,
}

#[derive(Debug)]
struct Channel {
    config: LoginChannelConfig,
    grants: Vec<usize>,
}

#[derive(Debug)]
struct Code {
    channel: ChannelId,
    subject: String,
    scope: String,
    redirect_uri: String,
    expires_at: DateTime<Utc>,
    used: bool,
}

#[derive(Debug)]
struct Grant {
    channel: ChannelId,
    subject: String,
    scope: String,
    login_at: DateTime<Utc>,
    refresh_token: String,
    retired: Vec<String>,
    refreshes: u64,
    /// Set once: revoked by refresh token or deauthorized.
    ended: Option<(GrantState, DateTime<Utc>)>,
    /// Indexes into [`LoginBook::access`].
    access: Vec<usize>,
}

impl Grant {
    fn horizon_at(&self) -> DateTime<Utc> {
        self.login_at + REFRESH_HORIZON
    }

    fn state_at(&self, now: DateTime<Utc>) -> GrantState {
        match self.ended {
            Some((state, _)) => state,
            None if now >= self.horizon_at() => GrantState::Expired,
            None => GrantState::Active,
        }
    }
}

#[derive(Debug)]
struct Access {
    grant: usize,
    value: String,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
}

/// Every Login channel, code, grant and user token of the sandbox.
#[derive(Debug)]
pub struct LoginBook {
    channels: HashMap<ChannelId, Channel>,
    codes: HashMap<String, Code>,
    grants: Vec<Grant>,
    access: Vec<Access>,
    /// Access token value → index into `access`.
    access_by_value: HashMap<String, usize>,
    /// Refresh token value (current or retired) → grant.
    refresh_by_value: HashMap<String, usize>,
    /// When each verify call for a user token was answered, per the
    /// token's channel: the most recent [`VERIFY_LOG_LEN`], so tests can
    /// judge a client's request rate from the outside.
    verify_log: HashMap<ChannelId, VecDeque<DateTime<Utc>>>,
    rng: StdRng,
}

/// How many verify calls [`LoginBook::verify_calls`] remembers per
/// channel; older ones are forgotten, so a long-running sandbox does not
/// grow without bound.
pub const VERIFY_LOG_LEN: usize = 100_000;

impl Default for LoginBook {
    fn default() -> Self {
        Self::new()
    }
}

impl LoginBook {
    /// An empty book whose values come from the OS's randomness.
    pub fn new() -> Self {
        Self::with_rng(StdRng::from_os_rng())
    }

    /// An empty book whose values are reproducible from `seed`.
    pub fn seeded(seed: u64) -> Self {
        Self::with_rng(StdRng::seed_from_u64(seed))
    }

    fn with_rng(rng: StdRng) -> Self {
        Self {
            channels: HashMap::new(),
            codes: HashMap::new(),
            grants: Vec::new(),
            access: Vec::new(),
            access_by_value: HashMap::new(),
            refresh_by_value: HashMap::new(),
            verify_log: HashMap::new(),
            rng,
        }
    }

    /// Registers a Login channel, or replaces its secret, app type and
    /// rotation flag; its grants stay.
    pub fn register(&mut self, config: LoginChannelConfig) {
        match self.channels.get_mut(&config.id) {
            Some(channel) => channel.config = config,
            None => {
                self.channels.insert(
                    config.id.clone(),
                    Channel {
                        config,
                        grants: Vec::new(),
                    },
                );
            }
        }
    }

    /// True if `channel` is a registered Login channel.
    pub fn has_channel(&self, channel: &ChannelId) -> bool {
        self.channels.contains_key(channel)
    }

    /// The registered Login channel `channel`.
    pub fn channel(&self, channel: &ChannelId) -> Option<&LoginChannelConfig> {
        self.channels.get(channel).map(|c| &c.config)
    }

    /// Makes an authorization code for `subject`'s login on `channel`, as
    /// LINE's login page would after the user agreed.
    ///
    /// # Errors
    /// [`LoginRefusal::UnknownClient`] for an unregistered channel.
    pub fn create_code(
        &mut self,
        channel: &ChannelId,
        subject: &str,
        scope: &str,
        redirect_uri: &str,
        now: DateTime<Utc>,
    ) -> Result<LoginCode, LoginRefusal> {
        if !self.has_channel(channel) {
            return Err(LoginRefusal::UnknownClient);
        }
        let code = Alphanumeric.sample_string(&mut self.rng, 20);
        let expires_at = to_millis(now) + CODE_LIFETIME;
        self.codes.insert(
            code.clone(),
            Code {
                channel: channel.clone(),
                subject: subject.to_owned(),
                scope: scope.to_owned(),
                redirect_uri: redirect_uri.to_owned(),
                expires_at,
                used: false,
            },
        );
        Ok(LoginCode { code, expires_at })
    }

    /// `grant_type=authorization_code`: the code for a new grant. The
    /// secret is required whatever the app type.
    ///
    /// # Errors
    /// [`LoginRefusal::UnknownClient`], [`LoginRefusal::SecretMissing`],
    /// [`LoginRefusal::SecretWrong`], [`LoginRefusal::BadCode`].
    pub fn exchange_code(
        &mut self,
        client_id: &str,
        client_secret: Option<&str>,
        code: &str,
        redirect_uri: &str,
        now: DateTime<Utc>,
    ) -> Result<TokenGrant, LoginRefusal> {
        let now = to_millis(now);
        let channel = self.authenticate(client_id, client_secret, true)?;
        let Some(entry) = self.codes.get_mut(code) else {
            return Err(LoginRefusal::BadCode);
        };
        if entry.used
            || entry.channel != channel
            || entry.redirect_uri != redirect_uri
            || now >= entry.expires_at
        {
            return Err(LoginRefusal::BadCode);
        }
        entry.used = true;
        let (subject, scope) = (entry.subject.clone(), entry.scope.clone());
        let refresh_token = self.new_refresh_token();
        let grant = self.grants.len();
        self.grants.push(Grant {
            channel: channel.clone(),
            subject,
            scope: scope.clone(),
            login_at: now,
            refresh_token: refresh_token.clone(),
            retired: Vec::new(),
            refreshes: 0,
            ended: None,
            access: Vec::new(),
        });
        self.refresh_by_value.insert(refresh_token.clone(), grant);
        if let Some(c) = self.channels.get_mut(&channel) {
            c.grants.push(grant);
        }
        let access_token = self.issue_access(grant, now);
        let id_token = scope
            .split_whitespace()
            .any(|s| s == "openid")
            .then(|| jws_like(&mut self.rng));
        Ok(TokenGrant {
            access_token,
            expires_in: ACCESS_TOKEN_SECS,
            refresh_token,
            scope,
            id_token,
        })
    }

    /// `grant_type=refresh_token`: a new 30-day access token for a live
    /// grant before its horizon; a new refresh token in rotation mode.
    ///
    /// # Errors
    /// The client checks of [`Self::authenticate`], then
    /// [`LoginRefusal::BadRefreshToken`].
    pub fn refresh(
        &mut self,
        client_id: &str,
        client_secret: Option<&str>,
        refresh_token: &str,
        now: DateTime<Utc>,
    ) -> Result<TokenGrant, LoginRefusal> {
        let now = to_millis(now);
        let channel = self.authenticate(client_id, client_secret, false)?;
        let grant = self.live_grant_of_refresh(&channel, refresh_token, now)?;
        let rotate = self
            .channels
            .get(&channel)
            .is_some_and(|c| c.config.rotate_refresh_tokens);
        if rotate {
            let fresh = self.new_refresh_token();
            self.refresh_by_value.insert(fresh.clone(), grant);
            let g = &mut self.grants[grant];
            let old = std::mem::replace(&mut g.refresh_token, fresh);
            g.retired.push(old);
        }
        let access_token = self.issue_access(grant, now);
        let g = &mut self.grants[grant];
        g.refreshes += 1;
        Ok(TokenGrant {
            access_token,
            expires_in: ACCESS_TOKEN_SECS,
            refresh_token: g.refresh_token.clone(),
            scope: g.scope.clone(),
            id_token: None,
        })
    }

    /// What verify says about `value`; `None` when it is not a user access
    /// token of any Login channel.
    pub fn verify(&self, value: &str, now: DateTime<Utc>) -> Option<LoginVerdict> {
        let access = &self.access[*self.access_by_value.get(value)?];
        let grant = &self.grants[access.grant];
        Some(match self.access_state(access, now) {
            LoginTokenState::Live => LoginVerdict::Live {
                channel_id: grant.channel.clone(),
                expires_in: (access.expires_at - now).num_seconds(),
                scope: grant.scope.clone(),
            },
            LoginTokenState::Expired => LoginVerdict::Expired,
            LoginTokenState::Revoked | LoginTokenState::Ended => LoginVerdict::Ended,
        })
    }

    /// Records a verify call for `value` at `now` under its token's
    /// channel (nothing for a value the sandbox did not issue as a user
    /// token).
    pub fn note_verify(&mut self, value: &str, now: DateTime<Utc>) {
        let Some(&index) = self.access_by_value.get(value) else {
            return;
        };
        let channel = self.grants[self.access[index].grant].channel.clone();
        let log = self.verify_log.entry(channel).or_default();
        if log.len() == VERIFY_LOG_LEN {
            log.pop_front();
        }
        log.push_back(to_millis(now));
    }

    /// When the verify calls for `channel`'s user tokens were answered,
    /// oldest first (the last [`VERIFY_LOG_LEN`]).
    pub fn verify_calls(&self, channel: &ChannelId) -> Vec<DateTime<Utc>> {
        self.verify_log
            .get(channel)
            .map(|log| log.iter().copied().collect())
            .unwrap_or_default()
    }

    /// True if `value` is a user access token the sandbox issued.
    pub fn is_access_token(&self, value: &str) -> bool {
        self.access_by_value.contains_key(value)
    }

    /// Revokes a user access token of `client_id`'s grants; a token that is
    /// unknown, another channel's or already dead is left alone (LINE
    /// answers 200 either way).
    ///
    /// # Errors
    /// The client checks of [`Self::authenticate`].
    pub fn revoke_access(
        &mut self,
        client_id: &str,
        client_secret: Option<&str>,
        value: &str,
        now: DateTime<Utc>,
    ) -> Result<(), LoginRefusal> {
        let now = to_millis(now);
        let channel = self.authenticate(client_id, client_secret, false)?;
        if let Some(&index) = self.access_by_value.get(value)
            && self.grants[self.access[index].grant].channel == channel
            && self.access[index].revoked_at.is_none()
        {
            self.access[index].revoked_at = Some(now);
        }
        Ok(())
    }

    /// Revokes the grant of a refresh token (the SDK's logout): every token
    /// of it stops working. Unknown or dead refresh tokens are left alone.
    ///
    /// # Errors
    /// The client checks of [`Self::authenticate`].
    pub fn revoke_refresh(
        &mut self,
        client_id: &str,
        client_secret: Option<&str>,
        refresh_token: &str,
        now: DateTime<Utc>,
    ) -> Result<(), LoginRefusal> {
        let now = to_millis(now);
        let channel = self.authenticate(client_id, client_secret, false)?;
        if let Ok(grant) = self.live_grant_of_refresh(&channel, refresh_token, now) {
            self.grants[grant].ended = Some((GrantState::Revoked, now));
        }
        Ok(())
    }

    /// Deauthorizes the grant of a live user access token of `channel`.
    ///
    /// # Errors
    /// [`LoginRefusal::BadUserToken`] when the token is not live or not
    /// `channel`'s (including a second deauthorize with the same token).
    pub fn deauthorize(
        &mut self,
        channel: &ChannelId,
        user_token: &str,
        now: DateTime<Utc>,
    ) -> Result<(), LoginRefusal> {
        let now = to_millis(now);
        let index = *self
            .access_by_value
            .get(user_token)
            .ok_or(LoginRefusal::BadUserToken)?;
        let access = &self.access[index];
        let grant = access.grant;
        if self.grants[grant].channel != *channel
            || self.access_state(access, now) != LoginTokenState::Live
        {
            return Err(LoginRefusal::BadUserToken);
        }
        self.grants[grant].ended = Some((GrantState::Deauthorized, now));
        Ok(())
    }

    /// Every grant of `channel`, oldest first, with its state at `now`.
    pub fn grants(&self, channel: &ChannelId, now: DateTime<Utc>) -> Vec<LoginGrantView> {
        let Some(c) = self.channels.get(channel) else {
            return Vec::new();
        };
        c.grants
            .iter()
            .enumerate()
            .map(|(seq, &g)| self.view(seq, &self.grants[g], now))
            .collect()
    }

    fn view(&self, seq: usize, grant: &Grant, now: DateTime<Utc>) -> LoginGrantView {
        LoginGrantView {
            seq,
            subject: grant.subject.clone(),
            scope: grant.scope.clone(),
            login_at: grant.login_at,
            horizon_at: grant.horizon_at(),
            state: grant.state_at(now),
            refresh_token: grant.refresh_token.clone(),
            retired_refresh_tokens: grant.retired.clone(),
            refreshes: grant.refreshes,
            ended_at: grant.ended.map(|(_, at)| at),
            access_tokens: grant
                .access
                .iter()
                .map(|&i| {
                    let a = &self.access[i];
                    LoginAccessTokenView {
                        access_token: a.value.clone(),
                        issued_at: a.issued_at,
                        expires_at: a.expires_at,
                        state: self.access_state(a, now),
                    }
                })
                .collect(),
        }
    }

    /// The client checks of the token and revoke endpoints: a registered
    /// Login channel, and its secret where needed (`always_secret` for the
    /// code exchange; otherwise by app type).
    fn authenticate(
        &self,
        client_id: &str,
        client_secret: Option<&str>,
        always_secret: bool,
    ) -> Result<ChannelId, LoginRefusal> {
        let id = ChannelId::new(client_id);
        let channel = self.channels.get(&id).ok_or(LoginRefusal::UnknownClient)?;
        let needs_secret = always_secret || channel.config.app_type == LoginAppType::Web;
        if needs_secret {
            let given = client_secret.ok_or(LoginRefusal::SecretMissing)?;
            if !super::secrets_equal(channel.config.secret.expose(), given) {
                return Err(LoginRefusal::SecretWrong);
            }
        }
        Ok(id)
    }

    /// The grant whose *current* refresh token is `value`, on `channel`,
    /// not ended and before its horizon.
    fn live_grant_of_refresh(
        &self,
        channel: &ChannelId,
        value: &str,
        now: DateTime<Utc>,
    ) -> Result<usize, LoginRefusal> {
        let grant = *self
            .refresh_by_value
            .get(value)
            .ok_or(LoginRefusal::BadRefreshToken)?;
        let g = &self.grants[grant];
        if g.channel != *channel
            || g.refresh_token != value
            || g.state_at(now) != GrantState::Active
        {
            return Err(LoginRefusal::BadRefreshToken);
        }
        Ok(grant)
    }

    fn access_state(&self, access: &Access, now: DateTime<Utc>) -> LoginTokenState {
        let grant = &self.grants[access.grant];
        if matches!(
            grant.ended,
            Some((GrantState::Revoked | GrantState::Deauthorized, at)) if at <= now
        ) {
            LoginTokenState::Ended
        } else if access.revoked_at.is_some_and(|at| at <= now) {
            LoginTokenState::Revoked
        } else if now >= access.expires_at {
            LoginTokenState::Expired
        } else {
            LoginTokenState::Live
        }
    }

    fn issue_access(&mut self, grant: usize, now: DateTime<Utc>) -> String {
        let value = jws_like(&mut self.rng);
        let index = self.access.len();
        self.access.push(Access {
            grant,
            value: value.clone(),
            issued_at: now,
            expires_at: now + Duration::seconds(ACCESS_TOKEN_SECS),
            revoked_at: None,
        });
        self.access_by_value.insert(value.clone(), index);
        self.grants[grant].access.push(index);
        value
    }

    fn new_refresh_token(&mut self) -> String {
        // LINE's refresh tokens are 20 letters and digits.
        Alphanumeric.sample_string(&mut self.rng, 20)
    }
}

/// A value shaped like LINE Login's v2.1 access tokens and ID tokens: a
/// compact JWS with opaque random payload and signature.
fn jws_like(rng: &mut StdRng) -> String {
    let mut payload = [0u8; 64];
    let mut signature = [0u8; 32];
    rng.fill(&mut payload[..]);
    rng.fill(&mut signature[..]);
    format!(
        "eyJhbGciOiJIUzI1NiJ9.{}.{}",
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CH: &str = "1660000000";
    const SECRET: &str = "login-secret";
    const URI: &str = "https://app.example/cb";

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
    }

    fn book(app_type: LoginAppType, rotate: bool) -> LoginBook {
        let mut book = LoginBook::seeded(7);
        book.register(LoginChannelConfig {
            id: ChannelId::new(CH),
            secret: ChannelSecret::new(SECRET),
            app_type,
            rotate_refresh_tokens: rotate,
        });
        book
    }

    fn login(book: &mut LoginBook, now: DateTime<Utc>) -> TokenGrant {
        let code = book
            .create_code(&ChannelId::new(CH), "U1", "profile openid", URI, now)
            .unwrap();
        book.exchange_code(CH, Some(SECRET), &code.code, URI, now)
            .unwrap()
    }

    #[test]
    fn a_code_is_good_once_for_its_redirect_uri_and_ten_minutes() {
        let mut b = book(LoginAppType::Web, false);
        let ch = ChannelId::new(CH);
        let code = b.create_code(&ch, "U1", "profile", URI, t0()).unwrap();
        assert_eq!(
            b.exchange_code(CH, Some(SECRET), &code.code, "https://other/", t0()),
            Err(LoginRefusal::BadCode)
        );
        assert_eq!(
            b.exchange_code(CH, None, &code.code, URI, t0()),
            Err(LoginRefusal::SecretMissing)
        );
        let grant = b
            .exchange_code(CH, Some(SECRET), &code.code, URI, t0())
            .unwrap();
        assert_eq!(grant.expires_in, ACCESS_TOKEN_SECS);
        assert_eq!(grant.id_token, None, "no openid scope");
        assert_eq!(
            b.exchange_code(CH, Some(SECRET), &code.code, URI, t0()),
            Err(LoginRefusal::BadCode),
            "used"
        );
        let late = b.create_code(&ch, "U1", "openid", URI, t0()).unwrap();
        assert_eq!(
            b.exchange_code(CH, Some(SECRET), &late.code, URI, t0() + CODE_LIFETIME),
            Err(LoginRefusal::BadCode)
        );
        let with_openid = b.create_code(&ch, "U1", "openid", URI, t0()).unwrap();
        let g = b
            .exchange_code(CH, Some(SECRET), &with_openid.code, URI, t0())
            .unwrap();
        assert!(g.id_token.is_some());
    }

    #[test]
    fn refresh_works_until_the_horizon_and_never_moves_it() {
        let mut b = book(LoginAppType::Native, false);
        let first = login(&mut b, t0());
        let ms = Duration::milliseconds(1);
        let mut at = t0();
        for _ in 0..3 {
            at += Duration::days(29);
            let r = b.refresh(CH, None, &first.refresh_token, at).unwrap();
            assert_eq!(r.refresh_token, first.refresh_token, "echoed");
            assert_eq!(r.expires_in, ACCESS_TOKEN_SECS);
        }
        let horizon = t0() + REFRESH_HORIZON;
        b.refresh(CH, None, &first.refresh_token, horizon - ms)
            .unwrap();
        assert_eq!(
            b.refresh(CH, None, &first.refresh_token, horizon),
            Err(LoginRefusal::BadRefreshToken)
        );
        let views = b.grants(&ChannelId::new(CH), horizon);
        assert_eq!(views[0].horizon_at, horizon);
        assert_eq!(views[0].state, GrantState::Expired);
        assert_eq!(views[0].refreshes, 4);
        // The last access token still lives its 30 days past the horizon.
        let last = views[0].access_tokens.last().unwrap();
        assert_eq!(last.state, LoginTokenState::Live);
        assert_eq!(last.expires_at, horizon - ms + Duration::days(30));
    }

    #[test]
    fn rotation_retires_the_refresh_token_sent() {
        let mut b = book(LoginAppType::Native, true);
        let first = login(&mut b, t0());
        let second = b.refresh(CH, None, &first.refresh_token, t0()).unwrap();
        assert_ne!(second.refresh_token, first.refresh_token);
        assert_eq!(
            b.refresh(CH, None, &first.refresh_token, t0()),
            Err(LoginRefusal::BadRefreshToken)
        );
        let third = b.refresh(CH, None, &second.refresh_token, t0()).unwrap();
        let view = &b.grants(&ChannelId::new(CH), t0())[0];
        assert_eq!(view.refresh_token, third.refresh_token);
        assert_eq!(
            view.retired_refresh_tokens,
            [first.refresh_token, second.refresh_token]
        );
    }

    #[test]
    fn the_secret_rule_follows_the_app_type() {
        let mut web = book(LoginAppType::Web, false);
        let g = login(&mut web, t0());
        assert_eq!(
            web.refresh(CH, None, &g.refresh_token, t0()),
            Err(LoginRefusal::SecretMissing)
        );
        assert_eq!(
            web.refresh(CH, Some("wrong"), &g.refresh_token, t0()),
            Err(LoginRefusal::SecretWrong)
        );
        assert_eq!(
            web.revoke_access(CH, None, &g.access_token, t0()),
            Err(LoginRefusal::SecretMissing)
        );
        web.refresh(CH, Some(SECRET), &g.refresh_token, t0())
            .unwrap();
        let mut native = book(LoginAppType::Native, false);
        let g = login(&mut native, t0());
        native
            .refresh(CH, Some("wrong"), &g.refresh_token, t0())
            .unwrap();
        native.refresh(CH, None, &g.refresh_token, t0()).unwrap();
        assert_eq!(
            native.refresh("999", None, &g.refresh_token, t0()),
            Err(LoginRefusal::UnknownClient)
        );
    }

    #[test]
    fn revoking_ends_a_token_or_the_whole_grant() {
        let mut b = book(LoginAppType::Native, false);
        let g = login(&mut b, t0());
        let r = b.refresh(CH, None, &g.refresh_token, t0()).unwrap();
        b.revoke_access(CH, None, &g.access_token, t0()).unwrap();
        assert_eq!(b.verify(&g.access_token, t0()), Some(LoginVerdict::Ended));
        assert!(matches!(
            b.verify(&r.access_token, t0()),
            Some(LoginVerdict::Live { .. })
        ));
        b.refresh(CH, None, &g.refresh_token, t0()).unwrap();
        b.revoke_refresh(CH, None, &g.refresh_token, t0()).unwrap();
        assert_eq!(b.verify(&r.access_token, t0()), Some(LoginVerdict::Ended));
        assert_eq!(
            b.refresh(CH, None, &g.refresh_token, t0()),
            Err(LoginRefusal::BadRefreshToken)
        );
        assert_eq!(
            b.grants(&ChannelId::new(CH), t0())[0].state,
            GrantState::Revoked
        );
        assert_eq!(b.verify("eyJ.unknown.x", t0()), None);
    }

    #[test]
    fn deauthorize_ends_the_grant_once() {
        let mut b = book(LoginAppType::Web, false);
        let ch = ChannelId::new(CH);
        let g = login(&mut b, t0());
        assert_eq!(
            b.deauthorize(&ChannelId::new("1"), &g.access_token, t0()),
            Err(LoginRefusal::BadUserToken)
        );
        b.deauthorize(&ch, &g.access_token, t0()).unwrap();
        assert_eq!(
            b.deauthorize(&ch, &g.access_token, t0()),
            Err(LoginRefusal::BadUserToken)
        );
        assert_eq!(
            b.refresh(CH, Some(SECRET), &g.refresh_token, t0()),
            Err(LoginRefusal::BadRefreshToken)
        );
        assert_eq!(b.grants(&ch, t0())[0].state, GrantState::Deauthorized);
    }

    #[test]
    fn verify_reports_expiry_to_the_millisecond() {
        let mut b = book(LoginAppType::Native, false);
        let g = login(&mut b, t0());
        let end = t0() + Duration::seconds(ACCESS_TOKEN_SECS);
        assert!(matches!(
            b.verify(&g.access_token, end - Duration::milliseconds(1)),
            Some(LoginVerdict::Live { expires_in: 0, .. })
        ));
        assert_eq!(b.verify(&g.access_token, end), Some(LoginVerdict::Expired));
    }
}
