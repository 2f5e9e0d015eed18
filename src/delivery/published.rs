//! What is published for a group: its current token and, while it is still
//! live, the previous one (so a consumer that has not switched yet, or a
//! client that must fall back, still has a working token).
//!
//! [`TokenBook`] holds this for every group in memory. It is filled from
//! the store at start and updated from the rotator's events, and it is what
//! the sinks write and the token API answers from, so neither reads the
//! database on the hot path.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use chrono::{DateTime, Utc};

use crate::domain::{AccessToken, ChannelId, GroupName, KeyId};

/// One published token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedToken {
    /// LINE's key ID for it.
    pub key_id: KeyId,
    /// The token.
    pub token: AccessToken,
    /// When it was issued.
    pub issued_at: DateTime<Utc>,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
}

/// A group's published tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupTokens {
    /// The newest live token; `None` before the first issue.
    pub current: Option<PublishedToken>,
    /// The token `current` replaced, while it is still live. Boxed: a
    /// group has one only for the day of overlap after a rotation, and the
    /// book keeps an entry for every group (64 bytes with it boxed, 112
    /// inline).
    pub previous: Option<Box<PublishedToken>>,
}

impl GroupTokens {
    /// The group after `token` was issued: it becomes current, and the old
    /// current becomes previous (if it is still live at `now`).
    pub fn with_new(&self, token: PublishedToken, now: DateTime<Utc>) -> Self {
        let previous = self
            .current
            .clone()
            .filter(|t| t.expires_at > now)
            .map(Box::new);
        Self {
            current: Some(token),
            previous,
        }
    }

    /// The group without `key_id` (revoked, expired, gone). If the current
    /// token goes, the previous one is current again until the next issue:
    /// it still works, which is better than nothing.
    pub fn without(&self, key_id: &KeyId) -> Self {
        let is = |t: Option<&PublishedToken>| t.is_some_and(|t| &t.key_id == key_id);
        match (is(self.current.as_ref()), is(self.previous.as_deref())) {
            (true, _) => Self {
                current: self.previous.as_deref().cloned(),
                previous: None,
            },
            (false, true) => Self {
                current: self.current.clone(),
                previous: None,
            },
            (false, false) => self.clone(),
        }
    }
}

/// Each group's tokens, boxed: the table has room for up to twice the
/// groups, and an empty slot then costs a pointer, not a whole
/// [`GroupTokens`] (64 bytes).
type Book = HashMap<(ChannelId, GroupName), Box<GroupTokens>>;

/// Every group's published tokens, shared between delivery and the HTTP API.
#[derive(Debug, Clone, Default)]
pub struct TokenBook {
    inner: Arc<RwLock<Book>>,
}

impl TokenBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// The group's tokens (empty if nothing was published).
    pub fn get(&self, channel: &ChannelId, group: &GroupName) -> GroupTokens {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(channel.clone(), group.clone()))
            .map(|g| GroupTokens::clone(g))
            .unwrap_or_default()
    }

    /// Replaces the group's tokens; returns the new value.
    pub fn update(
        &self,
        channel: &ChannelId,
        group: &GroupName,
        change: impl FnOnce(&GroupTokens) -> GroupTokens,
    ) -> GroupTokens {
        let mut book = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let entry = book.entry((channel.clone(), group.clone())).or_default();
        **entry = change(entry);
        GroupTokens::clone(entry)
    }

    /// Forgets a group (removed from the config).
    pub fn remove(&self, channel: &ChannelId, group: &GroupName) {
        self.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(channel.clone(), group.clone()));
    }

    /// The groups that have an entry.
    pub fn groups(&self) -> Vec<(ChannelId, GroupName)> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(key: &str, expires: i64) -> PublishedToken {
        PublishedToken {
            key_id: KeyId::new(key),
            token: AccessToken::new(format!("value-{key}")),
            issued_at: DateTime::from_timestamp(0, 0).unwrap(),
            expires_at: DateTime::from_timestamp(expires, 0).unwrap(),
        }
    }

    #[test]
    fn a_book_entry_stays_small() {
        // Every group has one; a field added inline costs it at 100,000
        // groups (README, "Memory per group").
        assert!(std::mem::size_of::<GroupTokens>() <= 64);
    }

    #[test]
    fn a_new_token_pushes_the_live_current_to_previous() {
        let now = DateTime::from_timestamp(50, 0).unwrap();
        let g = GroupTokens::default().with_new(token("a", 100), now);
        let g = g.with_new(token("b", 200), now);
        assert_eq!(g.current.as_ref().unwrap().key_id.as_str(), "b");
        assert_eq!(g.previous.as_ref().unwrap().key_id.as_str(), "a");
        // An expired current is not kept as previous.
        let later = DateTime::from_timestamp(150, 0).unwrap();
        let g = GroupTokens::default()
            .with_new(token("a", 100), now)
            .with_new(token("b", 200), later);
        assert!(g.previous.is_none());
    }

    #[test]
    fn removing_the_current_promotes_the_previous() {
        let now = DateTime::from_timestamp(50, 0).unwrap();
        let g = GroupTokens::default()
            .with_new(token("a", 100), now)
            .with_new(token("b", 200), now);
        let without_b = g.without(&KeyId::new("b"));
        assert_eq!(without_b.current.unwrap().key_id.as_str(), "a");
        let without_a = g.without(&KeyId::new("a"));
        assert_eq!(without_a.current.unwrap().key_id.as_str(), "b");
        assert!(without_a.previous.is_none());
        assert_eq!(g.without(&KeyId::new("zzz")), g);
    }
}
