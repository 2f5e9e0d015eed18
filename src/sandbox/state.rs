//! The sandbox's token book: every token it ever issued, per channel, and
//! LINE's counting rules. Pure book-keeping: "now" is always passed in, so
//! the rules are tested without HTTP or a clock, and a simulation can run
//! 400 virtual days through it.
//!
//! Time is kept to the millisecond: a token is issued at the book's "now"
//! truncated to the millisecond and expires exactly `lifetime` later, and a
//! token is live while `now < expires_at` (and it is not revoked). Every
//! rule below (the cap, the key-ID list, verify, revoke) asks the same
//! `Entry::is_live_at`, so they agree to the millisecond.
//!
//! Rules reproduced (docs/line-api.md §1, §5, §6, §9):
//! - v2.1: at most [`MAX_LIVE_TOKENS`] live tokens per channel; the next one
//!   is refused. Expired and revoked tokens do not count. Foreign tokens
//!   ([`Book::add_foreign_v21`]: issued by "another issuer", not through the
//!   sandbox's endpoints) count like any other.
//! - short-lived: at most [`MAX_LIVE_TOKENS`] live per channel; the next one
//!   silently evicts (revokes) the oldest live one. 30 days.
//! - stateless: unlimited, 15 minutes, not revocable.
//! - long-lived: issued only from the console ([`Book::issue_long_lived`]),
//!   at most one current per channel, valid indefinitely (verify answers
//!   `expires_in` ≈ 99 years, as LINE's example); a console reissue
//!   ([`Book::reissue_long_lived`]) makes a new one and keeps the old one
//!   valid for a grace of 0–24 hours (0: invalid at once). Revocable with
//!   `/v2/oauth/revoke`.
//! - each kind has its own count.
//!
//! Invariants: a token value maps to exactly one entry; an entry's end
//! (revoked or evicted) is set at most once; the `live_*` index lists are a
//! superset of the live entries, in issue order, pruned lazily so issuing,
//! listing key IDs and [`Book::live_v21`] stay O(live) however long the
//! history grows; issued and expiry instants are whole milliseconds.
//!
//! Depends on `domain` (ids, the secret newtype) and `rand` for values.

use std::collections::{HashMap, VecDeque};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize, Serializer};

use crate::domain::{AccessToken, ChannelId, KeyId};

/// LINE's cap on live tokens of one kind per channel.
pub const MAX_LIVE_TOKENS: usize = 30;

/// Lifetime of a short-lived token: 30 days (docs/line-api.md §5a).
pub const SHORT_LIVED_SECS: i64 = 2_592_000;

/// Lifetime of a stateless token: 15 minutes (docs/line-api.md §6; LINE's
/// reference says 900, its OpenAPI example 899).
pub const STATELESS_SECS: i64 = 900;

/// How long a long-lived token lives in the sandbox: LINE's verify example
/// answers `expires_in` 3138007490 (≈ 99 years) for one.
pub const LONG_LIVED_SECS: i64 = 3_138_007_490;

/// The longest grace a console reissue may give the old long-lived token:
/// LINE lets it stay valid "by up to 24 hours".
pub const MAX_LONG_LIVED_GRACE: Duration = Duration::hours(24);

/// The JOSE header LINE's v2.1 and stateless tokens start with
/// (`{"alg":"HS256"}`), so values look like LINE's (`eyJhbGciOiJIUz...`).
const JWS_HEADER: &str = "eyJhbGciOiJIUzI1NiJ9";

/// The longest a v2.1 token lives (30 days, LINE's `token_exp` limit); also
/// the latest expiry a foreign token may be given.
pub const MAX_V21_LIFETIME: Duration = Duration::days(30);

/// `t` truncated to the millisecond: the sandbox's unit of time.
pub fn to_millis(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// Which endpoint family issued a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub enum TokenKind {
    /// Channel access token v2.1 (`/oauth2/v2.1/token`), has a `key_id`.
    #[serde(rename = "v2.1")]
    V21,
    /// Short-lived channel access token (`/v2/oauth/accessToken`).
    #[serde(rename = "short_lived")]
    ShortLived,
    /// Stateless channel access token (`/oauth2/v3/token`).
    #[serde(rename = "stateless")]
    Stateless,
    /// Long-lived channel access token (issued in the console only).
    #[serde(rename = "long_lived")]
    LongLived,
}

/// Where a sandbox token stands at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxTokenState {
    /// Accepted by verify, counted against the channel's cap.
    Live,
    /// Past its expiry.
    Expired,
    /// Revoked through a revoke endpoint or the inspection API.
    Revoked,
    /// A short-lived token pushed out by the 31st.
    Evicted,
}

/// Who put a token into the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenIssuer {
    /// Issued through the sandbox's LINE endpoints (by linetokd, or by any
    /// client that called them).
    Api,
    /// Placed by the inspection API ([`Book::add_foreign_v21`]): a token
    /// "another issuer" (an operator, another system) got from LINE, which
    /// the client under test never saw being issued.
    Foreign,
    /// Issued in the LINE Developers Console (long-lived tokens, through the
    /// inspection API's console routes).
    Console,
}

/// How verify refuses a token it would otherwise accept (the fault of
/// LINE's verify disagreeing with its key-ID list). Both are LINE's 400
/// `invalid_request` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyRefusal {
    /// `"The access token expired"`.
    Expired,
    /// `"The access token is invalid"` (the sandbox's answer for a revoked
    /// or unknown token).
    Invalid,
}

/// One token as the inspection API shows it. Unlike everything in the
/// daemon, this carries the token value: tests search logs and files for it.
/// `Debug` still prints only its fingerprint. Instants are whole
/// milliseconds and serialize as RFC 3339 with three decimals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SandboxToken {
    /// Its position in the channel's issue order (0 for the first token
    /// ever issued on the channel, any kind); see [`Book::tokens_since`].
    pub seq: usize,
    /// The channel it was issued on.
    pub channel_id: ChannelId,
    /// Which kind of token.
    pub kind: TokenKind,
    /// Issued through the API, or placed as a foreign token.
    pub issuer: TokenIssuer,
    /// LINE's key ID (v2.1 tokens only).
    pub key_id: Option<KeyId>,
    /// The token value itself (serialized in clear for the inspection API).
    #[serde(serialize_with = "expose_token")]
    pub access_token: AccessToken,
    /// When it was issued (sandbox clock).
    #[serde(serialize_with = "millis")]
    pub issued_at: DateTime<Utc>,
    /// When it expires: live while `now < expires_at`.
    #[serde(serialize_with = "millis")]
    pub expires_at: DateTime<Utc>,
    /// Its state at the time of the query.
    pub state: SandboxTokenState,
    /// When it was revoked or evicted, if it was.
    #[serde(serialize_with = "opt_millis")]
    pub revoked_at: Option<DateTime<Utc>>,
    /// Set when verify refuses this token while it is live (a fault).
    pub verify_refusal: Option<VerifyRefusal>,
}

/// One live v2.1 token, as [`Book::live_v21`] lists it: what a test needs
/// to check invariants against LINE's truth at an instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveToken {
    /// Its position in the channel's issue order (as [`SandboxToken::seq`]).
    pub seq: usize,
    /// LINE's key ID.
    pub key_id: KeyId,
    /// Issued through the API, or placed as a foreign token.
    pub issuer: TokenIssuer,
    /// The token value (in clear: a test double).
    #[serde(serialize_with = "expose_token")]
    pub access_token: AccessToken,
    /// When it was issued (sandbox clock).
    #[serde(serialize_with = "millis")]
    pub issued_at: DateTime<Utc>,
    /// When it expires: live while `now < expires_at`.
    #[serde(serialize_with = "millis")]
    pub expires_at: DateTime<Utc>,
    /// Set when verify refuses this token although it is live (a fault).
    pub verify_refusal: Option<VerifyRefusal>,
}

fn expose_token<S: Serializer>(token: &AccessToken, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(token.expose())
}

/// RFC 3339 with exactly three decimals, so every instant shows its
/// milliseconds (chrono's default drops a zero fraction).
pub(crate) fn millis<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn opt_millis<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => millis(t, s),
        None => s.serialize_none(),
    }
}

/// A freshly issued token, as the issuing endpoints answer it.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The value.
    pub access_token: AccessToken,
    /// Seconds from issue to expiry.
    pub expires_in: i64,
    /// LINE's key ID (v2.1 only).
    pub key_id: Option<KeyId>,
}

/// What verify learns about a token value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Live: the channel and the whole seconds left.
    Live {
        /// The channel it belongs to.
        channel_id: ChannelId,
        /// Whole seconds until it expires, rounded down: 0 in its last
        /// second, which it is still live for.
        expires_in: i64,
    },
    /// Live, but a fault makes verify refuse it this way.
    Refused(VerifyRefusal),
    /// Known, but past its expiry.
    Expired,
    /// Known, but revoked or evicted.
    Ended,
    /// Never issued here (or issued as another kind).
    Unknown,
}

/// Why the book refused to issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IssueRefusal {
    /// The channel already has 30 live v2.1 tokens.
    #[error("the channel already has {MAX_LIVE_TOKENS} live v2.1 tokens")]
    TooManyTokens,
}

/// Why the console refused a long-lived issue or reissue; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LongLivedRefusal {
    /// "Issue" while the channel has a current long-lived token: the
    /// console offers only "Reissue" then.
    #[error("channel {0} already has a long-lived token: reissue it instead")]
    AlreadyIssued(ChannelId),
    /// "Reissue" without a current long-lived token.
    #[error("channel {0} has no long-lived token to reissue: issue one first")]
    NoneIssued(ChannelId),
    /// A grace outside 0–24 hours.
    #[error("a grace of {0}s is outside LINE's 0 to 24 hours")]
    BadGrace(i64),
}

/// Why foreign tokens could not be added; nothing was added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForeignTokenError {
    /// The channel is not registered in the sandbox.
    #[error("no channel {0} is registered in the sandbox")]
    UnknownChannel(ChannelId),
    /// No expiry was given.
    #[error("no tokens requested: give at least one expiry")]
    Empty,
    /// An expiry that is not after the sandbox's now.
    #[error(
        "expiry {expires_at} is not after the sandbox's now ({now}): the token would never be live"
    )]
    NotInFuture {
        /// The offending expiry.
        expires_at: String,
        /// The sandbox's now.
        now: String,
    },
    /// An expiry further ahead than a v2.1 token can live.
    #[error(
        "expiry {expires_at} is more than 30 days after the sandbox's now ({now}); LINE's v2.1 tokens live at most 30 days"
    )]
    TooFar {
        /// The offending expiry.
        expires_at: String,
        /// The sandbox's now.
        now: String,
    },
    /// The channel would have more live v2.1 tokens than LINE allows.
    #[error(
        "channel {channel} has {live} live v2.1 tokens; {adding} more would exceed LINE's cap of {MAX_LIVE_TOKENS}"
    )]
    OverCap {
        /// The channel.
        channel: ChannelId,
        /// Its live v2.1 tokens now.
        live: usize,
        /// How many were asked for.
        adding: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Revoked,
    Evicted,
}

#[derive(Debug, Clone)]
struct Entry {
    kind: TokenKind,
    issuer: TokenIssuer,
    key_id: Option<KeyId>,
    value: AccessToken,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    ended: Option<(End, DateTime<Utc>)>,
    verify_refusal: Option<VerifyRefusal>,
}

impl Entry {
    fn state_at(&self, now: DateTime<Utc>) -> SandboxTokenState {
        match self.ended {
            Some((End::Revoked, _)) => SandboxTokenState::Revoked,
            Some((End::Evicted, _)) => SandboxTokenState::Evicted,
            None if now >= self.expires_at => SandboxTokenState::Expired,
            None => SandboxTokenState::Live,
        }
    }

    /// The one definition of "live": not ended and `now < expires_at`.
    fn is_live_at(&self, now: DateTime<Utc>) -> bool {
        self.state_at(now) == SandboxTokenState::Live
    }

    fn view(&self, seq: usize, channel: &ChannelId, now: DateTime<Utc>) -> SandboxToken {
        SandboxToken {
            seq,
            channel_id: channel.clone(),
            kind: self.kind,
            issuer: self.issuer,
            key_id: self.key_id.clone(),
            access_token: self.value.clone(),
            issued_at: self.issued_at,
            expires_at: self.expires_at,
            state: self.state_at(now),
            revoked_at: self.ended.map(|(_, at)| at),
            verify_refusal: self.verify_refusal,
        }
    }

    fn live_view(&self, seq: usize) -> Option<LiveToken> {
        Some(LiveToken {
            seq,
            key_id: self.key_id.clone()?,
            issuer: self.issuer,
            access_token: self.value.clone(),
            issued_at: self.issued_at,
            expires_at: self.expires_at,
            verify_refusal: self.verify_refusal,
        })
    }
}

#[derive(Debug, Default)]
struct ChannelTokens {
    /// Every token ever issued on the channel, in issue order.
    entries: Vec<Entry>,
    /// Indices of v2.1 entries that may still be live (pruned lazily).
    live_v21: Vec<usize>,
    /// Indices of short-lived entries that may still be live, oldest first.
    live_short: VecDeque<usize>,
    /// v2.1 key ID → entry index.
    by_key_id: HashMap<KeyId, usize>,
    /// The current long-lived token (the one the console shows), if any; a
    /// reissued one in its grace is no longer current.
    long_lived: Option<usize>,
}

impl ChannelTokens {
    fn prune(&mut self, now: DateTime<Utc>) {
        let entries = &self.entries;
        self.live_v21.retain(|&i| entries[i].is_live_at(now));
        self.live_short.retain(|&i| entries[i].is_live_at(now));
    }
}

/// Every token the sandbox issued, by channel, with LINE's counting rules.
#[derive(Debug)]
pub struct Book {
    channels: HashMap<ChannelId, ChannelTokens>,
    /// Token value → (channel, entry index): verify and revoke look tokens
    /// up by value.
    by_value: HashMap<String, (ChannelId, usize)>,
    rng: StdRng,
}

impl Default for Book {
    fn default() -> Self {
        Self::new()
    }
}

impl Book {
    /// An empty book whose token values come from the OS's randomness.
    pub fn new() -> Self {
        Self::with_rng(StdRng::from_os_rng())
    }

    /// An empty book whose token values are reproducible from `seed`.
    pub fn seeded(seed: u64) -> Self {
        Self::with_rng(StdRng::seed_from_u64(seed))
    }

    fn with_rng(rng: StdRng) -> Self {
        Self {
            channels: HashMap::new(),
            by_value: HashMap::new(),
            rng,
        }
    }

    /// Issues a v2.1 token living `lifetime_secs` (already checked to be
    /// 1..=30 days by the assertion rules), unless the channel has 30 live.
    /// It is issued at `now` to the millisecond and expires exactly
    /// `lifetime_secs` later.
    ///
    /// # Errors
    /// [`IssueRefusal::TooManyTokens`] when the channel is at the cap.
    pub fn issue_v21(
        &mut self,
        channel: &ChannelId,
        now: DateTime<Utc>,
        lifetime_secs: i64,
    ) -> Result<Issued, IssueRefusal> {
        let now = to_millis(now);
        let tokens = self.channels.entry(channel.clone()).or_default();
        tokens.prune(now);
        if tokens.live_v21.len() >= MAX_LIVE_TOKENS {
            return Err(IssueRefusal::TooManyTokens);
        }
        let index = self.push_v21(
            channel,
            TokenIssuer::Api,
            now,
            now + Duration::seconds(lifetime_secs),
        );
        Ok(self.issued(channel, index, lifetime_secs))
    }

    /// Adds live v2.1 tokens of "another issuer" to `channel`, one per
    /// expiry in `expires_at` (each truncated to the millisecond), issued
    /// at `now`. They are listed, counted against the cap, verified and
    /// revocable like any other, and marked [`TokenIssuer::Foreign`].
    /// All or nothing. Returns them in order.
    ///
    /// # Errors
    /// [`ForeignTokenError`] for an empty list, an expiry not after `now` or
    /// more than 30 days after it, or a channel that would exceed the cap.
    pub fn add_foreign_v21(
        &mut self,
        channel: &ChannelId,
        now: DateTime<Utc>,
        expires_at: &[DateTime<Utc>],
    ) -> Result<Vec<LiveToken>, ForeignTokenError> {
        let now = to_millis(now);
        let show = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
        if expires_at.is_empty() {
            return Err(ForeignTokenError::Empty);
        }
        let expiries: Vec<DateTime<Utc>> = expires_at.iter().copied().map(to_millis).collect();
        for &at in &expiries {
            if at <= now {
                return Err(ForeignTokenError::NotInFuture {
                    expires_at: show(at),
                    now: show(now),
                });
            }
            if at > now + MAX_V21_LIFETIME {
                return Err(ForeignTokenError::TooFar {
                    expires_at: show(at),
                    now: show(now),
                });
            }
        }
        let tokens = self.channels.entry(channel.clone()).or_default();
        tokens.prune(now);
        let live = tokens.live_v21.len();
        if live + expiries.len() > MAX_LIVE_TOKENS {
            return Err(ForeignTokenError::OverCap {
                channel: channel.clone(),
                live,
                adding: expiries.len(),
            });
        }
        let mut added = Vec::with_capacity(expiries.len());
        for at in expiries {
            let index = self.push_v21(channel, TokenIssuer::Foreign, now, at);
            added.extend(self.channels[channel].entries[index].live_view(index));
        }
        Ok(added)
    }

    /// Pushes a v2.1 entry with a fresh key ID, unique on the channel.
    fn push_v21(
        &mut self,
        channel: &ChannelId,
        issuer: TokenIssuer,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> usize {
        let tokens = self.channels.entry(channel.clone()).or_default();
        let key_id = loop {
            let candidate = KeyId::new(random_b64url(&mut self.rng, 16));
            if !tokens.by_key_id.contains_key(&candidate) {
                break candidate;
            }
        };
        let value = jws_like_value(&mut self.rng);
        self.push(
            channel,
            TokenKind::V21,
            issuer,
            Some(key_id),
            value,
            now,
            expires_at,
        )
    }

    /// Issues a short-lived token; the 31st live one evicts the oldest.
    pub fn issue_short_lived(&mut self, channel: &ChannelId, now: DateTime<Utc>) -> Issued {
        let now = to_millis(now);
        let tokens = self.channels.entry(channel.clone()).or_default();
        tokens.prune(now);
        while tokens.live_short.len() >= MAX_LIVE_TOKENS {
            if let Some(oldest) = tokens.live_short.pop_front() {
                tokens.entries[oldest].ended = Some((End::Evicted, now));
            }
        }
        // LINE's short-lived tokens are opaque standard-base64 strings
        // (`W1TeHCgfH2Liwa...`), not JWS; 128 bytes give LINE's 172 chars.
        let value = random_b64(&mut self.rng, 128);
        let index = self.push(
            channel,
            TokenKind::ShortLived,
            TokenIssuer::Api,
            None,
            value,
            now,
            now + Duration::seconds(SHORT_LIVED_SECS),
        );
        self.issued(channel, index, SHORT_LIVED_SECS)
    }

    /// Issues a stateless token (no limit, 15 minutes).
    pub fn issue_stateless(&mut self, channel: &ChannelId, now: DateTime<Utc>) -> Issued {
        let now = to_millis(now);
        let value = jws_like_value(&mut self.rng);
        let index = self.push(
            channel,
            TokenKind::Stateless,
            TokenIssuer::Api,
            None,
            value,
            now,
            now + Duration::seconds(STATELESS_SECS),
        );
        self.issued(channel, index, STATELESS_SECS)
    }

    /// The console's "Issue" button: a long-lived token for `channel`,
    /// valid indefinitely.
    ///
    /// # Errors
    /// [`LongLivedRefusal::AlreadyIssued`] when the channel has a current
    /// one that is still live.
    pub fn issue_long_lived(
        &mut self,
        channel: &ChannelId,
        now: DateTime<Utc>,
    ) -> Result<Issued, LongLivedRefusal> {
        let now = to_millis(now);
        if self.current_long_lived(channel, now).is_some() {
            return Err(LongLivedRefusal::AlreadyIssued(channel.clone()));
        }
        Ok(self.push_long_lived(channel, now))
    }

    /// The console's "Reissue" button: a new long-lived token for
    /// `channel`; the current one stays valid until `now + grace` (LINE's
    /// optional extension of up to 24 hours), or is revoked at once when
    /// `grace` is zero.
    ///
    /// # Errors
    /// [`LongLivedRefusal::NoneIssued`] without a live current token,
    /// [`LongLivedRefusal::BadGrace`] for a grace outside 0–24 hours.
    pub fn reissue_long_lived(
        &mut self,
        channel: &ChannelId,
        now: DateTime<Utc>,
        grace: Duration,
    ) -> Result<Issued, LongLivedRefusal> {
        let now = to_millis(now);
        if grace < Duration::zero() || grace > MAX_LONG_LIVED_GRACE {
            return Err(LongLivedRefusal::BadGrace(grace.num_seconds()));
        }
        let Some(old) = self.current_long_lived(channel, now) else {
            return Err(LongLivedRefusal::NoneIssued(channel.clone()));
        };
        if let Some(entry) = self
            .channels
            .get_mut(channel)
            .and_then(|t| t.entries.get_mut(old))
        {
            if grace.is_zero() {
                entry.ended = Some((End::Revoked, now));
            } else {
                // Invalid from the end of the grace on: expired, as LINE
                // would answer verify.
                entry.expires_at = entry.expires_at.min(to_millis(now + grace));
            }
        }
        Ok(self.push_long_lived(channel, now))
    }

    /// The index of the channel's current long-lived token, if it is live.
    fn current_long_lived(&self, channel: &ChannelId, now: DateTime<Utc>) -> Option<usize> {
        let tokens = self.channels.get(channel)?;
        let index = tokens.long_lived?;
        tokens.entries[index].is_live_at(now).then_some(index)
    }

    fn push_long_lived(&mut self, channel: &ChannelId, now: DateTime<Utc>) -> Issued {
        // LINE's long-lived tokens look like its short-lived ones: opaque
        // standard base64, 172 characters.
        let value = random_b64(&mut self.rng, 128);
        let index = self.push(
            channel,
            TokenKind::LongLived,
            TokenIssuer::Console,
            None,
            value,
            now,
            now + Duration::seconds(LONG_LIVED_SECS),
        );
        self.issued(channel, index, LONG_LIVED_SECS)
    }

    #[allow(clippy::too_many_arguments)] // one private constructor, every field
    fn push(
        &mut self,
        channel: &ChannelId,
        kind: TokenKind,
        issuer: TokenIssuer,
        key_id: Option<KeyId>,
        value: String,
        issued_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> usize {
        let tokens = self.channels.entry(channel.clone()).or_default();
        let index = tokens.entries.len();
        if let Some(key_id) = &key_id {
            tokens.by_key_id.insert(key_id.clone(), index);
        }
        match kind {
            TokenKind::V21 => tokens.live_v21.push(index),
            TokenKind::ShortLived => tokens.live_short.push_back(index),
            TokenKind::LongLived => tokens.long_lived = Some(index),
            // Stateless tokens are never counted or revoked: no index.
            TokenKind::Stateless => {}
        }
        self.by_value
            .insert(value.clone(), (channel.clone(), index));
        tokens.entries.push(Entry {
            kind,
            issuer,
            key_id,
            value: AccessToken::new(value),
            issued_at,
            expires_at,
            ended: None,
            verify_refusal: None,
        });
        index
    }

    fn issued(&self, channel: &ChannelId, index: usize, expires_in: i64) -> Issued {
        let entry = &self.channels[channel].entries[index];
        Issued {
            access_token: entry.value.clone(),
            expires_in,
            key_id: entry.key_id.clone(),
        }
    }

    fn find(&self, value: &str, kinds: &[TokenKind]) -> Option<(&ChannelId, &Entry)> {
        let (channel, index) = self.by_value.get(value)?;
        let entry = self.channels.get(channel)?.entries.get(*index)?;
        kinds.contains(&entry.kind).then_some((channel, entry))
    }

    /// What verify says about `value`, considering only tokens of `kinds`.
    pub fn verify(&self, value: &str, kinds: &[TokenKind], now: DateTime<Utc>) -> Verdict {
        let Some((channel, entry)) = self.find(value, kinds) else {
            return Verdict::Unknown;
        };
        match entry.state_at(now) {
            SandboxTokenState::Live => match entry.verify_refusal {
                Some(refusal) => Verdict::Refused(refusal),
                None => Verdict::Live {
                    channel_id: channel.clone(),
                    // Rounded down: 0.7 s left is 0, still live.
                    expires_in: (entry.expires_at - now).num_seconds(),
                },
            },
            SandboxTokenState::Expired => Verdict::Expired,
            SandboxTokenState::Revoked | SandboxTokenState::Evicted => Verdict::Ended,
        }
    }

    /// Makes verify refuse the v2.1 token `key_id` of `channel` while it is
    /// live (`Some`), or answer normally again (`None`). The key-ID list and
    /// the cap are unaffected. False when the key ID is unknown.
    pub fn set_verify_refusal(
        &mut self,
        channel: &ChannelId,
        key_id: &KeyId,
        refusal: Option<VerifyRefusal>,
    ) -> bool {
        let Some(tokens) = self.channels.get_mut(channel) else {
            return false;
        };
        let Some(&index) = tokens.by_key_id.get(key_id) else {
            return false;
        };
        tokens.entries[index].verify_refusal = refusal;
        true
    }

    /// Revokes the token `value` if it is a live token of `kinds`, issued on
    /// `channel` (when given). Returns whether anything changed; an unknown,
    /// foreign or already dead token changes nothing, as on LINE.
    pub fn revoke_value(
        &mut self,
        value: &str,
        kinds: &[TokenKind],
        channel: Option<&ChannelId>,
        now: DateTime<Utc>,
    ) -> bool {
        let Some((owner, index)) = self.by_value.get(value).cloned() else {
            return false;
        };
        if channel.is_some_and(|c| *c != owner) {
            return false;
        }
        self.end(&owner, index, kinds, now)
    }

    /// Revokes the v2.1 token `key_id` of `channel` behind the client's back
    /// (the console's "revoke" button). `None` when the key ID is unknown,
    /// `Some(changed)` otherwise.
    pub fn revoke_key_id(
        &mut self,
        channel: &ChannelId,
        key_id: &KeyId,
        now: DateTime<Utc>,
    ) -> Option<bool> {
        let index = *self.channels.get(channel)?.by_key_id.get(key_id)?;
        Some(self.end(channel, index, &[TokenKind::V21], now))
    }

    fn end(
        &mut self,
        channel: &ChannelId,
        index: usize,
        kinds: &[TokenKind],
        now: DateTime<Utc>,
    ) -> bool {
        let now = to_millis(now);
        let Some(entry) = self
            .channels
            .get_mut(channel)
            .and_then(|t| t.entries.get_mut(index))
        else {
            return false;
        };
        // Stateless tokens cannot be revoked (docs/line-api.md §6).
        if !kinds.contains(&entry.kind)
            || entry.kind == TokenKind::Stateless
            || !entry.is_live_at(now)
        {
            return false;
        }
        entry.ended = Some((End::Revoked, now));
        true
    }

    /// The key IDs of the channel's live v2.1 tokens, oldest first.
    /// O(live tokens).
    pub fn live_key_ids(&mut self, channel: &ChannelId, now: DateTime<Utc>) -> Vec<KeyId> {
        let Some(tokens) = self.channels.get_mut(channel) else {
            return Vec::new();
        };
        tokens.prune(now);
        tokens
            .live_v21
            .iter()
            .filter_map(|&i| tokens.entries[i].key_id.clone())
            .collect()
    }

    /// The channel's live v2.1 tokens (API-issued and foreign), oldest
    /// first: exactly the tokens whose key IDs [`Self::live_key_ids`] lists
    /// and the cap counts. O(live tokens), whatever the history.
    pub fn live_v21(&mut self, channel: &ChannelId, now: DateTime<Utc>) -> Vec<LiveToken> {
        let Some(tokens) = self.channels.get_mut(channel) else {
            return Vec::new();
        };
        tokens.prune(now);
        tokens
            .live_v21
            .iter()
            .filter_map(|&i| tokens.entries[i].live_view(i))
            .collect()
    }

    /// How many live tokens of `kind` the channel has (stateless: all
    /// unexpired ones). O(live) for v2.1 and short-lived tokens.
    pub fn live_count(&self, channel: &ChannelId, kind: TokenKind, now: DateTime<Utc>) -> usize {
        let Some(t) = self.channels.get(channel) else {
            return 0;
        };
        let live = |i: &usize| t.entries[*i].is_live_at(now);
        match kind {
            TokenKind::V21 => t.live_v21.iter().filter(|i| live(i)).count(),
            TokenKind::ShortLived => t.live_short.iter().filter(|i| live(i)).count(),
            TokenKind::Stateless | TokenKind::LongLived => t
                .entries
                .iter()
                .filter(|e| e.kind == kind && e.is_live_at(now))
                .count(),
        }
    }

    /// Every token ever issued on `channel`, in issue order, with its state
    /// at `now`. O(all tokens ever issued on the channel): prefer
    /// [`Self::live_v21`], [`Self::tokens_since`] or [`Self::token`] in a
    /// loop.
    pub fn tokens(&self, channel: &ChannelId, now: DateTime<Utc>) -> Vec<SandboxToken> {
        self.tokens_since(channel, 0, now)
    }

    /// The tokens issued on `channel` from position `from` on (their
    /// [`SandboxToken::seq`] ≥ `from`), with their state at `now`: a test
    /// that remembers how many it has seen reads only the new ones.
    pub fn tokens_since(
        &self,
        channel: &ChannelId,
        from: usize,
        now: DateTime<Utc>,
    ) -> Vec<SandboxToken> {
        let Some(tokens) = self.channels.get(channel) else {
            return Vec::new();
        };
        tokens
            .entries
            .iter()
            .enumerate()
            .skip(from)
            .map(|(seq, e)| e.view(seq, channel, now))
            .collect()
    }

    /// The v2.1 token `key_id` of `channel` with its state at `now`. O(1).
    pub fn token(
        &self,
        channel: &ChannelId,
        key_id: &KeyId,
        now: DateTime<Utc>,
    ) -> Option<SandboxToken> {
        let tokens = self.channels.get(channel)?;
        let index = *tokens.by_key_id.get(key_id)?;
        Some(tokens.entries[index].view(index, channel, now))
    }
}

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rng.fill(bytes.as_mut_slice());
    bytes
}

fn random_b64url(rng: &mut StdRng, len: usize) -> String {
    URL_SAFE_NO_PAD.encode(random_bytes(rng, len))
}

fn random_b64(rng: &mut StdRng, len: usize) -> String {
    STANDARD.encode(random_bytes(rng, len))
}

/// A value shaped like LINE's v2.1 and stateless tokens: a compact JWS
/// (`header.payload.signature`), opaque random payload and signature.
fn jws_like_value(rng: &mut StdRng) -> String {
    format!(
        "{JWS_HEADER}.{}.{}",
        random_b64url(rng, 96),
        random_b64url(rng, 32)
    )
}

/// True when `value` has the shape of a compact JWS: three non-empty
/// base64url parts. LINE answers "not JWS" to anything else on the v2.1
/// verify and revoke endpoints.
pub fn looks_like_jws(value: &str) -> bool {
    let parts: Vec<&str> = value.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
    }

    const DAY: i64 = 86_400;

    #[test]
    fn a_console_reissue_keeps_the_old_long_lived_token_for_its_grace() {
        let mut book = Book::seeded(7);
        let ch = ChannelId::new("1000");
        let ll = [TokenKind::LongLived];
        let old = book.issue_long_lived(&ch, t0()).unwrap();
        assert_eq!(
            book.issue_long_lived(&ch, t0()).unwrap_err(),
            LongLivedRefusal::AlreadyIssued(ch.clone())
        );
        assert_eq!(
            book.verify(old.access_token.expose(), &ll, t0()),
            Verdict::Live {
                channel_id: ch.clone(),
                expires_in: LONG_LIVED_SECS
            }
        );
        // Not a short-lived token: a verify for that kind only knows nothing.
        assert_eq!(
            book.verify(old.access_token.expose(), &[TokenKind::ShortLived], t0()),
            Verdict::Unknown
        );
        let grace = Duration::hours(24);
        let new = book.reissue_long_lived(&ch, t0(), grace).unwrap();
        assert_ne!(new.access_token, old.access_token);
        let last_ms = t0() + grace - Duration::milliseconds(1);
        assert!(matches!(
            book.verify(old.access_token.expose(), &ll, last_ms),
            Verdict::Live { .. }
        ));
        assert_eq!(
            book.verify(old.access_token.expose(), &ll, t0() + grace),
            Verdict::Expired
        );
        assert!(matches!(
            book.verify(new.access_token.expose(), &ll, t0() + grace),
            Verdict::Live { .. }
        ));
        // A grace of zero invalidates the old one at once.
        let newer = book
            .reissue_long_lived(&ch, t0(), Duration::zero())
            .unwrap();
        assert_eq!(
            book.verify(new.access_token.expose(), &ll, t0()),
            Verdict::Ended
        );
        assert!(book.revoke_value(newer.access_token.expose(), &ll, None, t0()));
        assert_eq!(
            book.reissue_long_lived(&ch, t0(), grace).unwrap_err(),
            LongLivedRefusal::NoneIssued(ch.clone())
        );
        assert_eq!(
            book.reissue_long_lived(&ch, t0(), Duration::hours(25))
                .unwrap_err(),
            LongLivedRefusal::BadGrace(25 * 3600)
        );
        // Revoked, the channel may be issued a new one.
        assert!(book.issue_long_lived(&ch, t0()).is_ok());
    }

    #[test]
    fn the_31st_live_v21_token_is_refused_until_one_dies() {
        let mut book = Book::seeded(1);
        let ch = ChannelId::new("1000");
        let mut first = None;
        for i in 0..MAX_LIVE_TOKENS {
            let issued = book.issue_v21(&ch, t0(), 30 * DAY).unwrap();
            if i == 0 {
                first = Some(issued);
            }
        }
        assert_eq!(
            book.issue_v21(&ch, t0(), DAY).unwrap_err(),
            IssueRefusal::TooManyTokens
        );
        // another channel has its own count
        assert!(book.issue_v21(&ChannelId::new("2000"), t0(), DAY).is_ok());
        // revoking one frees a slot
        let first = first.unwrap();
        assert!(book.revoke_value(
            first.access_token.expose(),
            &[TokenKind::V21],
            Some(&ch),
            t0()
        ));
        assert!(book.issue_v21(&ch, t0(), DAY).is_ok());
        assert!(book.issue_v21(&ch, t0(), DAY).is_err());
    }

    #[test]
    fn expired_v21_tokens_stop_counting_at_their_expiry() {
        let mut book = Book::seeded(2);
        let ch = ChannelId::new("1000");
        for _ in 0..MAX_LIVE_TOKENS {
            book.issue_v21(&ch, t0(), DAY).unwrap();
        }
        let just_before = t0() + Duration::seconds(DAY - 1);
        assert!(book.issue_v21(&ch, just_before, DAY).is_err());
        assert_eq!(book.live_key_ids(&ch, just_before).len(), 30);
        let at_expiry = t0() + Duration::seconds(DAY);
        assert!(book.live_key_ids(&ch, at_expiry).is_empty());
        assert!(book.issue_v21(&ch, at_expiry, DAY).is_ok());
    }

    #[test]
    fn the_31st_short_lived_token_evicts_the_oldest_live_one() {
        let mut book = Book::seeded(3);
        let ch = ChannelId::new("1000");
        let issued: Vec<Issued> = (0..MAX_LIVE_TOKENS)
            .map(|i| book.issue_short_lived(&ch, t0() + Duration::seconds(i as i64)))
            .collect();
        // revoke the second: the oldest live is then still the first
        assert!(book.revoke_value(
            issued[1].access_token.expose(),
            &[TokenKind::ShortLived],
            None,
            t0()
        ));
        let later = t0() + Duration::seconds(100);
        book.issue_short_lived(&ch, later);
        assert_eq!(book.live_count(&ch, TokenKind::ShortLived, later), 30);
        book.issue_short_lived(&ch, later);
        let first = issued[0].access_token.expose();
        assert_eq!(
            book.verify(first, &[TokenKind::ShortLived], later),
            Verdict::Ended
        );
        let states: Vec<_> = book.tokens(&ch, later).iter().map(|t| t.state).collect();
        assert_eq!(states[0], SandboxTokenState::Evicted);
        assert_eq!(states[1], SandboxTokenState::Revoked);
        assert_eq!(book.live_count(&ch, TokenKind::ShortLived, later), 30);
        // v2.1 has its own count, untouched
        assert_eq!(book.live_count(&ch, TokenKind::V21, later), 0);
    }

    #[test]
    fn verify_reports_live_expired_ended_and_unknown() {
        let mut book = Book::seeded(4);
        let ch = ChannelId::new("1000");
        let a = book.issue_v21(&ch, t0(), 100).unwrap();
        let b = book.issue_v21(&ch, t0(), 100).unwrap();
        let a = a.access_token.expose();
        let later = t0() + Duration::seconds(40);
        assert_eq!(
            book.verify(a, &[TokenKind::V21], later),
            Verdict::Live {
                channel_id: ch.clone(),
                expires_in: 60
            }
        );
        // a v2.1 token is unknown to the short-lived verify
        assert_eq!(
            book.verify(a, &[TokenKind::ShortLived], later),
            Verdict::Unknown
        );
        assert!(
            book.revoke_key_id(&ch, b.key_id.as_ref().unwrap(), later)
                .unwrap()
        );
        assert_eq!(
            book.verify(b.access_token.expose(), &[TokenKind::V21], later),
            Verdict::Ended
        );
        assert_eq!(
            book.verify(a, &[TokenKind::V21], t0() + Duration::seconds(100)),
            Verdict::Expired
        );
        assert_eq!(
            book.verify("nope", &[TokenKind::V21], later),
            Verdict::Unknown
        );
    }

    #[test]
    fn revoke_ignores_dead_foreign_and_stateless_tokens() {
        let mut book = Book::seeded(5);
        let ch = ChannelId::new("1000");
        let other = ChannelId::new("2000");
        let a = book.issue_v21(&ch, t0(), 100).unwrap();
        let a = a.access_token.expose().to_owned();
        assert!(!book.revoke_value(&a, &[TokenKind::V21], Some(&other), t0()));
        assert!(!book.revoke_value(&a, &[TokenKind::ShortLived], Some(&ch), t0()));
        assert!(!book.revoke_value(
            &a,
            &[TokenKind::V21],
            Some(&ch),
            t0() + Duration::seconds(100)
        ));
        let s = book.issue_stateless(&ch, t0());
        assert!(!book.revoke_value(s.access_token.expose(), &[TokenKind::Stateless], None, t0()));
        assert_eq!(book.revoke_key_id(&ch, &KeyId::new("unknown"), t0()), None);
        assert!(book.revoke_value(&a, &[TokenKind::V21], Some(&ch), t0()));
        assert!(!book.revoke_value(&a, &[TokenKind::V21], Some(&ch), t0()));
        let revoked_at = book.tokens(&ch, t0())[0].revoked_at;
        assert_eq!(revoked_at, Some(t0()));
    }

    #[test]
    fn values_and_key_ids_look_like_lines() {
        let mut book = Book::seeded(6);
        let ch = ChannelId::new("1000");
        let v21 = book.issue_v21(&ch, t0(), 100).unwrap();
        assert!(v21.access_token.expose().starts_with("eyJ"));
        assert!(looks_like_jws(v21.access_token.expose()));
        assert!(v21.access_token.expose().len() > 150);
        let key_id = v21.key_id.unwrap();
        assert_eq!(key_id.as_str().len(), 22);
        assert!(
            key_id
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        let short = book.issue_short_lived(&ch, t0());
        assert_eq!(short.access_token.expose().len(), 172);
        assert_eq!(short.expires_in, SHORT_LIVED_SECS);
        let stateless = book.issue_stateless(&ch, t0());
        assert!(looks_like_jws(stateless.access_token.expose()));
        assert_eq!(stateless.expires_in, STATELESS_SECS);
    }

    fn ms(n: i64) -> Duration {
        Duration::milliseconds(n)
    }

    #[test]
    fn a_token_expires_at_issue_time_plus_lifetime_to_the_millisecond() {
        let mut book = Book::seeded(7);
        let ch = ChannelId::new("1000");
        // A clock reading with sub-millisecond digits is cut to the ms.
        let now = t0() + Duration::nanoseconds(700_456_789);
        let issued = book.issue_v21(&ch, now, 100).unwrap();
        let token = book
            .token(&ch, issued.key_id.as_ref().unwrap(), now)
            .unwrap();
        assert_eq!(token.issued_at, t0() + ms(700));
        let expiry = t0() + ms(100_700);
        assert_eq!(token.expires_at, expiry);
        let value = issued.access_token.expose();
        // 0.7 s before expiry: live, 0 whole seconds left.
        assert_eq!(
            book.verify(value, &[TokenKind::V21], expiry - ms(700)),
            Verdict::Live {
                channel_id: ch.clone(),
                expires_in: 0
            }
        );
        let last = expiry - Duration::nanoseconds(1);
        assert_eq!(book.live_count(&ch, TokenKind::V21, last), 1);
        assert_eq!(book.live_key_ids(&ch, last).len(), 1);
        assert_eq!(
            book.verify(value, &[TokenKind::V21], expiry),
            Verdict::Expired
        );
        assert!(book.live_key_ids(&ch, expiry).is_empty());
        assert!(!book.revoke_value(value, &[TokenKind::V21], Some(&ch), expiry));
        assert!(book.revoke_value(value, &[TokenKind::V21], Some(&ch), expiry - ms(1)));
        let revoked = book
            .token(&ch, issued.key_id.as_ref().unwrap(), expiry)
            .unwrap();
        assert_eq!(revoked.revoked_at, Some(expiry - ms(1)));
    }

    #[test]
    fn foreign_tokens_are_listed_counted_verified_and_marked() {
        let mut book = Book::seeded(8);
        let ch = ChannelId::new("1000");
        let now = t0();
        let added = book
            .add_foreign_v21(
                &ch,
                now,
                &[now + ms(700), now + Duration::days(30), now + ms(1500)],
            )
            .unwrap();
        assert_eq!(added.len(), 3);
        assert!(added.iter().all(|t| t.issuer == TokenIssuer::Foreign));
        assert_eq!(added[0].expires_at, now + ms(700));
        assert_eq!(book.live_key_ids(&ch, now).len(), 3);
        assert_eq!(
            book.verify(added[1].access_token.expose(), &[TokenKind::V21], now),
            Verdict::Live {
                channel_id: ch.clone(),
                expires_in: 30 * DAY
            }
        );
        for _ in 0..MAX_LIVE_TOKENS - 3 {
            book.issue_v21(&ch, now, DAY).unwrap();
        }
        assert!(book.issue_v21(&ch, now + ms(699), DAY).is_err());
        assert!(book.issue_v21(&ch, now + ms(700), DAY).is_ok());
        let err = book
            .add_foreign_v21(&ch, now + ms(700), &[now + DAY_D])
            .unwrap_err();
        assert!(
            matches!(
                err,
                ForeignTokenError::OverCap {
                    live: 30,
                    adding: 1,
                    ..
                }
            ),
            "{err}"
        );
        let history = book.tokens(&ch, now + ms(700));
        assert_eq!(history[0].issuer, TokenIssuer::Foreign);
        assert_eq!(history[0].state, SandboxTokenState::Expired);
        assert_eq!(history[3].issuer, TokenIssuer::Api);
        assert_eq!(history.last().map(|t| t.seq), Some(history.len() - 1));
    }

    const DAY_D: Duration = Duration::days(1);

    #[test]
    fn foreign_token_expiries_must_be_ahead_and_within_30_days() {
        let mut book = Book::seeded(9);
        let ch = ChannelId::new("1000");
        let now = t0();
        assert_eq!(
            book.add_foreign_v21(&ch, now, &[]),
            Err(ForeignTokenError::Empty)
        );
        for bad in [now, now - ms(1), now + Duration::days(30) + ms(1)] {
            let err = book
                .add_foreign_v21(&ch, now, &[now + ms(5), bad])
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    ForeignTokenError::NotInFuture { .. } | ForeignTokenError::TooFar { .. }
                ),
                "{err}"
            );
        }
        // all or nothing: the good expiry next to a bad one was not added
        assert!(book.live_key_ids(&ch, now).is_empty());
    }

    #[test]
    fn verify_refusal_makes_verify_refuse_a_token_the_list_still_shows() {
        let mut book = Book::seeded(10);
        let ch = ChannelId::new("1000");
        let a = book.issue_v21(&ch, t0(), 100).unwrap();
        let key_id = a.key_id.clone().unwrap();
        assert!(book.set_verify_refusal(&ch, &key_id, Some(VerifyRefusal::Expired)));
        let value = a.access_token.expose();
        assert_eq!(
            book.verify(value, &[TokenKind::V21], t0()),
            Verdict::Refused(VerifyRefusal::Expired)
        );
        assert_eq!(book.live_key_ids(&ch, t0()), vec![key_id.clone()]);
        assert_eq!(book.live_count(&ch, TokenKind::V21, t0()), 1);
        assert_eq!(
            book.live_v21(&ch, t0())[0].verify_refusal,
            Some(VerifyRefusal::Expired)
        );
        // once really dead, verify says what it is
        assert_eq!(
            book.verify(value, &[TokenKind::V21], t0() + Duration::seconds(100)),
            Verdict::Expired
        );
        assert!(book.set_verify_refusal(&ch, &key_id, None));
        assert!(matches!(
            book.verify(value, &[TokenKind::V21], t0()),
            Verdict::Live { .. }
        ));
        assert!(!book.set_verify_refusal(&ch, &KeyId::new("nope"), None));
        assert!(!book.set_verify_refusal(&ChannelId::new("2"), &key_id, None));
    }

    #[test]
    fn live_view_and_history_since_read_only_what_is_asked() {
        let mut book = Book::seeded(11);
        let ch = ChannelId::new("1000");
        let short = book.issue_v21(&ch, t0(), 10).unwrap();
        book.issue_short_lived(&ch, t0());
        let long = book.issue_v21(&ch, t0(), 1000).unwrap();
        let later = t0() + Duration::seconds(10);
        let live = book.live_v21(&ch, later);
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].key_id, long.key_id.clone().unwrap());
        assert_eq!(live[0].seq, 2);
        assert_eq!(live[0].issuer, TokenIssuer::Api);
        let since = book.tokens_since(&ch, 1, later);
        assert_eq!(since.len(), 2);
        assert_eq!(since[0].kind, TokenKind::ShortLived);
        assert_eq!(since[1].seq, 2);
        assert!(book.tokens_since(&ch, 3, later).is_empty());
        let first = book
            .token(&ch, short.key_id.as_ref().unwrap(), later)
            .unwrap();
        assert_eq!((first.seq, first.state), (0, SandboxTokenState::Expired));
        assert!(book.live_v21(&ChannelId::new("2"), later).is_empty());
    }

    #[test]
    fn instants_serialize_with_milliseconds() {
        let mut book = Book::seeded(12);
        let ch = ChannelId::new("1000");
        book.issue_v21(&ch, t0(), 100).unwrap();
        let json = serde_json::to_value(book.tokens(&ch, t0())).unwrap();
        assert_eq!(json[0]["issued_at"], "2027-01-15T08:00:00.000Z");
        assert_eq!(json[0]["expires_at"], "2027-01-15T08:01:40.000Z");
        assert_eq!(json[0]["revoked_at"], serde_json::Value::Null);
        assert_eq!(json[0]["issuer"], "api");
    }

    #[test]
    fn jws_shape_check() {
        assert!(looks_like_jws("eyJ.abc.d-_"));
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "a..c",
            "a.b.c=",
            "a b.c.d",
            "not a token",
        ] {
            assert!(!looks_like_jws(bad), "{bad}");
        }
    }
}
