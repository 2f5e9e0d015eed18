//! The sandbox's token book: every token it ever issued, per channel, and
//! LINE's counting rules. Pure book-keeping: "now" is always passed in, so
//! the rules are tested without HTTP or a clock, and a simulation can run
//! 400 virtual days through it.
//!
//! Rules reproduced (LINE-API.md §1, §5, §6, §9):
//! - v2.1: at most [`MAX_LIVE_TOKENS`] live tokens per channel; the next one
//!   is refused. Expired and revoked tokens do not count.
//! - short-lived: at most [`MAX_LIVE_TOKENS`] live per channel; the next one
//!   silently evicts (revokes) the oldest live one. 30 days.
//! - stateless: unlimited, 15 minutes, not revocable.
//! - each kind has its own count.
//!
//! Invariants: a token value maps to exactly one entry; an entry's end
//! (revoked or evicted) is set at most once; the `live_*` index lists are a
//! superset of the live entries, pruned lazily so issuing stays O(live)
//! however long the history grows.
//!
//! Depends on `domain` (ids, the secret newtype) and `rand` for values.

use std::collections::{HashMap, VecDeque};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Serialize, Serializer};

use crate::domain::{AccessToken, ChannelId, KeyId};

/// LINE's cap on live tokens of one kind per channel.
pub const MAX_LIVE_TOKENS: usize = 30;

/// Lifetime of a short-lived token: 30 days (LINE-API.md §5a).
pub const SHORT_LIVED_SECS: i64 = 2_592_000;

/// Lifetime of a stateless token: 15 minutes (LINE-API.md §6; LINE's
/// reference says 900, its OpenAPI example 899).
pub const STATELESS_SECS: i64 = 900;

/// The JOSE header LINE's v2.1 and stateless tokens start with
/// (`{"alg":"HS256"}`), so values look like LINE's (`eyJhbGciOiJIUz...`).
const JWS_HEADER: &str = "eyJhbGciOiJIUzI1NiJ9";

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

/// One token as the inspection API shows it. Unlike everything in the
/// daemon, this carries the token value: tests search logs and files for it.
/// `Debug` still prints only its fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SandboxToken {
    /// The channel it was issued on.
    pub channel_id: ChannelId,
    /// Which kind of token.
    pub kind: TokenKind,
    /// LINE's key ID (v2.1 tokens only).
    pub key_id: Option<KeyId>,
    /// The token value itself (serialized in clear for the inspection API).
    #[serde(serialize_with = "expose_token")]
    pub access_token: AccessToken,
    /// When it was issued (sandbox clock).
    pub issued_at: DateTime<Utc>,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
    /// Its state at the time of the query.
    pub state: SandboxTokenState,
    /// When it was revoked or evicted, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

fn expose_token<S: Serializer>(token: &AccessToken, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(token.expose())
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
        /// Seconds until it expires.
        expires_in: i64,
    },
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Revoked,
    Evicted,
}

#[derive(Debug, Clone)]
struct Entry {
    kind: TokenKind,
    key_id: Option<KeyId>,
    value: AccessToken,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    ended: Option<(End, DateTime<Utc>)>,
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

    fn is_live_at(&self, now: DateTime<Utc>) -> bool {
        self.state_at(now) == SandboxTokenState::Live
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
    ///
    /// # Errors
    /// [`IssueRefusal::TooManyTokens`] when the channel is at the cap.
    pub fn issue_v21(
        &mut self,
        channel: &ChannelId,
        now: DateTime<Utc>,
        lifetime_secs: i64,
    ) -> Result<Issued, IssueRefusal> {
        let tokens = self.channels.entry(channel.clone()).or_default();
        tokens.prune(now);
        if tokens.live_v21.len() >= MAX_LIVE_TOKENS {
            return Err(IssueRefusal::TooManyTokens);
        }
        let key_id = loop {
            let candidate = KeyId::new(random_b64url(&mut self.rng, 16));
            if !tokens.by_key_id.contains_key(&candidate) {
                break candidate;
            }
        };
        let value = jws_like_value(&mut self.rng);
        let index = self.push(
            channel,
            TokenKind::V21,
            Some(key_id),
            value,
            now,
            lifetime_secs,
        );
        Ok(self.issued(channel, index, lifetime_secs))
    }

    /// Issues a short-lived token; the 31st live one evicts the oldest.
    pub fn issue_short_lived(&mut self, channel: &ChannelId, now: DateTime<Utc>) -> Issued {
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
            None,
            value,
            now,
            SHORT_LIVED_SECS,
        );
        self.issued(channel, index, SHORT_LIVED_SECS)
    }

    /// Issues a stateless token (no limit, 15 minutes).
    pub fn issue_stateless(&mut self, channel: &ChannelId, now: DateTime<Utc>) -> Issued {
        let value = jws_like_value(&mut self.rng);
        let index = self.push(
            channel,
            TokenKind::Stateless,
            None,
            value,
            now,
            STATELESS_SECS,
        );
        self.issued(channel, index, STATELESS_SECS)
    }

    fn push(
        &mut self,
        channel: &ChannelId,
        kind: TokenKind,
        key_id: Option<KeyId>,
        value: String,
        now: DateTime<Utc>,
        lifetime_secs: i64,
    ) -> usize {
        let tokens = self.channels.entry(channel.clone()).or_default();
        let index = tokens.entries.len();
        if let Some(key_id) = &key_id {
            tokens.by_key_id.insert(key_id.clone(), index);
        }
        match kind {
            TokenKind::V21 => tokens.live_v21.push(index),
            TokenKind::ShortLived => tokens.live_short.push_back(index),
            // Stateless tokens are never counted or revoked: no index.
            TokenKind::Stateless => {}
        }
        self.by_value
            .insert(value.clone(), (channel.clone(), index));
        tokens.entries.push(Entry {
            kind,
            key_id,
            value: AccessToken::new(value),
            issued_at: now,
            expires_at: now + Duration::seconds(lifetime_secs),
            ended: None,
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
            SandboxTokenState::Live => Verdict::Live {
                channel_id: channel.clone(),
                expires_in: (entry.expires_at - now).num_seconds(),
            },
            SandboxTokenState::Expired => Verdict::Expired,
            SandboxTokenState::Revoked | SandboxTokenState::Evicted => Verdict::Ended,
        }
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
        let Some(entry) = self
            .channels
            .get_mut(channel)
            .and_then(|t| t.entries.get_mut(index))
        else {
            return false;
        };
        // Stateless tokens cannot be revoked (LINE-API.md §6).
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

    /// How many live tokens of `kind` the channel has (stateless: all
    /// unexpired ones).
    pub fn live_count(&self, channel: &ChannelId, kind: TokenKind, now: DateTime<Utc>) -> usize {
        self.channels.get(channel).map_or(0, |t| {
            t.entries
                .iter()
                .filter(|e| e.kind == kind && e.is_live_at(now))
                .count()
        })
    }

    /// Every token ever issued on `channel`, in issue order, with its state
    /// at `now`.
    pub fn tokens(&self, channel: &ChannelId, now: DateTime<Utc>) -> Vec<SandboxToken> {
        let Some(tokens) = self.channels.get(channel) else {
            return Vec::new();
        };
        tokens
            .entries
            .iter()
            .map(|e| SandboxToken {
                channel_id: channel.clone(),
                kind: e.kind,
                key_id: e.key_id.clone(),
                access_token: e.value.clone(),
                issued_at: e.issued_at,
                expires_at: e.expires_at,
                state: e.state_at(now),
                revoked_at: e.ended.map(|(_, at)| at),
            })
            .collect()
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
