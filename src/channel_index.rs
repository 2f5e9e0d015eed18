//! Channels by ID or by name: the one place that turns what a person typed
//! (`--channel shop-bot`, `/v1/channels/shop-bot/groups/backend/token`)
//! into a channel ID.
//!
//! Config validation guarantees that IDs are unique, names are unique, and
//! no channel's name equals another channel's ID, so any text names at most
//! one channel and the order of the lookups (ID first) never decides
//! anything.
//!
//! Depends on `domain` only. `cli` and `app` build an index from the config
//! ([`crate::config::ValidConfig::channel_index`]), `control` from the
//! rotator's channels, and the token API keeps one beside its keys, so a
//! config reload renames everywhere at once.

use std::collections::HashMap;

use crate::domain::ChannelId;

/// Every configured channel, findable by its ID or its configured name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelIndex {
    /// Each ID and each name, to the channel's ID.
    by_text: HashMap<String, ChannelId>,
    /// The name of each ID, for labels and messages.
    names: HashMap<ChannelId, String>,
}

impl ChannelIndex {
    /// No channels.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a channel with its configured name.
    pub fn insert(&mut self, id: ChannelId, name: impl Into<String>) {
        let name = name.into();
        // An ID overwrites and a name only fills a gap, so a name never
        // hides a channel's ID whatever the order (validation forbids the
        // clash; this keeps an index of unvalidated input predictable).
        self.by_text.insert(id.as_str().to_owned(), id.clone());
        if !name.is_empty() {
            self.by_text
                .entry(name.clone())
                .or_insert_with(|| id.clone());
        }
        self.names.insert(id, name);
    }

    /// The ID of the channel that `given` names, by ID or by name; `None`
    /// when no configured channel matches.
    pub fn resolve(&self, given: &str) -> Option<&ChannelId> {
        self.by_text.get(given)
    }

    /// The configured name of the channel `id`.
    pub fn name(&self, id: &ChannelId) -> Option<&str> {
        self.names.get(id).map(String::as_str)
    }

    /// Every indexed channel's ID and name, in no particular order.
    pub fn ids(&self) -> impl Iterator<Item = (&ChannelId, &str)> {
        self.names.iter().map(|(id, name)| (id, name.as_str()))
    }

    /// How many channels are indexed.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when no channel is indexed.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

impl FromIterator<(ChannelId, String)> for ChannelIndex {
    fn from_iter<I: IntoIterator<Item = (ChannelId, String)>>(channels: I) -> Self {
        let mut index = Self::new();
        for (id, name) in channels {
            index.insert(id, name);
        }
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_both_resolve_to_the_id() {
        let index: ChannelIndex = [
            (ChannelId::new("1234567890"), "shop-bot".to_owned()),
            (ChannelId::new("2345678901"), "2345678901".to_owned()),
        ]
        .into_iter()
        .collect();
        let shop = ChannelId::new("1234567890");
        assert_eq!(index.resolve("1234567890"), Some(&shop));
        assert_eq!(index.resolve("shop-bot"), Some(&shop));
        // A name equal to its own ID is harmless.
        assert_eq!(
            index.resolve("2345678901"),
            Some(&ChannelId::new("2345678901"))
        );
        assert_eq!(index.resolve("Shop-Bot"), None);
        assert_eq!(index.resolve(""), None);
        assert_eq!(index.name(&shop), Some("shop-bot"));
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn an_id_wins_over_a_name_in_either_order() {
        // Validation forbids this config; the index still never lets a
        // name hide a channel's ID.
        let (a, b) = (ChannelId::new("111"), ChannelId::new("222"));
        let name_first: ChannelIndex = [(a.clone(), "222".to_owned()), (b.clone(), "x".to_owned())]
            .into_iter()
            .collect();
        assert_eq!(name_first.resolve("222"), Some(&b));
        let id_first: ChannelIndex = [(b.clone(), "x".to_owned()), (a, "222".to_owned())]
            .into_iter()
            .collect();
        assert_eq!(id_first.resolve("222"), Some(&b));
    }
}
