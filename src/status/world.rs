//! The store and the config file together, as the daemon will see them
//! once it runs this config: configured groups the store does not know yet
//! start fresh, stored groups the config no longer lists count as removed.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use super::{ConfiguredChannel, StoredChannel, StoredState};
use crate::domain::{ChannelId, GroupName, TokenKind};
use crate::policy::{self, ChannelView, GroupView};
use crate::store::{GroupRow, LiveRecord};

// ---------------------------------------------------------------------------
// The world: store and config together.

/// One channel as the daemon will see it once it runs the config file.
pub(super) struct ChannelWorld<'a> {
    pub(super) id: ChannelId,
    pub(super) name: String,
    pub(super) configured: Option<&'a ConfiguredChannel>,
    pub(super) stored: Option<&'a StoredChannel>,
    pub(super) groups: Vec<GroupWorld<'a>>,
    /// `live_ours` still to be counted.
    pub(super) view: ChannelView,
}

pub(super) struct GroupWorld<'a> {
    pub(super) view: GroupView,
    pub(super) row: Option<&'a GroupRow>,
    pub(super) tokens: &'a [LiveRecord],
    pub(super) in_config: bool,
}

impl ChannelWorld<'_> {
    pub(super) fn managed(&self) -> bool {
        self.configured.is_some()
    }

    pub(super) fn views(&self) -> Vec<GroupView> {
        self.groups.iter().map(|g| g.view.clone()).collect()
    }

    pub(super) fn channel_view(&self, now: DateTime<Utc>, views: &[GroupView]) -> ChannelView {
        ChannelView {
            live_ours: policy::live_ours(now, views, crate::domain::TokenKind::V21),
            ..self.view.clone()
        }
    }
}

/// Configured channels in file order, then stored channels the config no
/// longer lists that still hold live tokens.
pub(super) fn worlds<'a>(
    now: DateTime<Utc>,
    configured: &'a [ConfiguredChannel],
    state: &'a StoredState,
) -> Vec<ChannelWorld<'a>> {
    let mut out: Vec<ChannelWorld<'a>> = configured
        .iter()
        .map(|c| world(now, c.id.clone(), Some(c), state.channels.get(&c.id)))
        .collect();
    let configured_ids: BTreeSet<&ChannelId> = configured.iter().map(|c| &c.id).collect();
    for (id, stored) in &state.channels {
        if configured_ids.contains(id) {
            continue;
        }
        let w = world(now, id.clone(), None, Some(stored));
        if w.groups.iter().any(|g| !g.view.live_tokens(now).is_empty()) {
            out.push(w);
        }
    }
    out
}

pub(super) fn world<'a>(
    now: DateTime<Utc>,
    id: ChannelId,
    configured: Option<&'a ConfiguredChannel>,
    stored: Option<&'a StoredChannel>,
) -> ChannelWorld<'a> {
    let can_revoke = configured.is_some_and(|c| c.can_revoke);
    let wanted = |name: &GroupName| configured.is_some_and(|c| c.groups.contains(name));
    // The config's kind, as `Store::sync_config` will record it.
    let configured_kind = |name: &GroupName| {
        configured.map(|c| {
            if c.short_lived.contains(name) {
                TokenKind::ShortLived
            } else {
                TokenKind::V21
            }
        })
    };
    let mut groups: Vec<GroupWorld<'a>> = Vec::new();
    if let Some(stored) = stored {
        for (row, tokens) in &stored.snapshot.groups {
            let mut view = stored.snapshot.group_view(&id, row, tokens, can_revoke);
            let in_config = wanted(&row.name);
            if in_config && let Some(kind) = configured_kind(&row.name) {
                view.kind = kind;
            }
            // As `Store::sync_config` will: back in the config means active;
            // gone from it means removed, from now if not already.
            view.removed_at = if in_config {
                None
            } else {
                row.removed_at.or(Some(now))
            };
            groups.push(GroupWorld {
                view,
                row: Some(row),
                tokens,
                in_config,
            });
        }
    }
    if let Some(c) = configured {
        for name in &c.groups {
            if !groups.iter().any(|g| &g.view.group == name) {
                groups.push(GroupWorld {
                    view: GroupView {
                        kind: configured_kind(name).unwrap_or_default(),
                        ..GroupView::new(id.clone(), name.clone(), c.can_revoke)
                    },
                    row: None,
                    tokens: &[],
                    in_config: true,
                });
            }
        }
    }
    // The daemon plans a channel's groups in the store's order: by name.
    groups.sort_by(|a, b| a.view.group.cmp(&b.view.group));
    let view = stored.map_or_else(ChannelView::default, |s| s.snapshot.channel_view());
    let name = configured
        .map(|c| c.name.clone())
        .or_else(|| stored.and_then(|s| s.snapshot.channel.as_ref().map(|c| c.name.clone())))
        .unwrap_or_else(|| id.to_string());
    ChannelWorld {
        id,
        name,
        configured,
        stored,
        groups,
        view,
    }
}
