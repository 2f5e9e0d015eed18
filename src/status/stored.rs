//! What `status` and `plan` read from the store: every channel's
//! snapshot, listed foreign key IDs, recent failed issuances, hook and sink
//! outcomes and firing alerts, each table read once for all channels.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::RECENT_INTENTS;
use crate::domain::{ChannelId, GroupName};
use crate::snapshot::Snapshot;
use crate::store::{
    AlertRecord, DaemonNote, Event, ForeignKid, IssueIntent, LAST_RELOAD, SINK_NOTE_PREFIX,
    STATELESS_NOTE_PREFIX, Scope, Store, StoreError, sink_note_key,
};

/// One channel as the config file lists it: what `status` and `plan` need
/// of the config (`cli` builds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfiguredChannel {
    /// The channel ID.
    pub id: ChannelId,
    /// The operator's name for it.
    pub name: String,
    /// Its groups, in file order.
    pub groups: Vec<GroupName>,
    /// The groups (of `groups`) kept with short-lived tokens.
    pub short_lived: Vec<GroupName>,
    /// True when a channel secret is configured (needed to revoke).
    pub can_revoke: bool,
    /// `[channel.stateless]`, when enabled: how the daemon serves
    /// stateless tokens (held in memory only, so the store has nothing of
    /// them).
    pub stateless: Option<crate::config::StatelessOutline>,
}

/// Everything `status` and `plan` read from the store for one `now`. Each
/// table is read by its own statement (the live tokens on a second
/// connection), so a commit by the running daemon between two reads can
/// show a table a moment newer than another: a report, not a transaction.
#[derive(Debug, Clone)]
pub struct StoredState {
    pub(super) channels: BTreeMap<ChannelId, StoredChannel>,
    pub(super) open_intents: Vec<IssueIntent>,
    pub(super) last_reload: Option<DaemonNote>,
    /// Firing alerts about the daemon as a whole (a rejected reload, clock
    /// skew, a receiver out of quota).
    pub(super) daemon_firing: Vec<AlertRecord>,
    /// Token rows per database key (plaintext as `key: None`).
    pub(super) token_values: Vec<crate::store::ValueCount>,
    /// Watched long-lived tokens, by fingerprint (never the value).
    pub(super) long_lived: Vec<crate::store::LongLivedRow>,
    /// Each channel's stateless issuing state, as the daemon last noted
    /// it (`ok: ...` or `failing since ...`).
    pub(super) stateless: BTreeMap<ChannelId, DaemonNote>,
    /// Under `[ha]`: the lease rows and orphans (empty on SQLite).
    pub(super) ha: crate::store::HaState,
}

#[derive(Debug, Clone)]
pub(super) struct StoredChannel {
    pub(super) snapshot: Snapshot,
    pub(super) foreign: Vec<ForeignKid>,
    /// Issue attempts of unknown outcome within the longest token
    /// lifetime, read only for a channel with foreign key IDs: under
    /// `[ha]` a key ID one of them may have made is adopted as lost.
    pub(super) unknown: Vec<crate::policy::UnknownOutcome>,
    /// Issue attempts within [`RECENT_INTENTS`] that failed or were lost.
    pub(super) recent_intents: Vec<IssueIntent>,
    /// Each group's latest hook outcome.
    pub(super) hooks: BTreeMap<GroupName, Event>,
    /// The alerts the daemon raised on the channel and has not resolved.
    pub(super) firing: Vec<AlertRecord>,
    /// Each group's sink state, as the daemon last noted it.
    pub(super) sinks: BTreeMap<GroupName, DaemonNote>,
}

impl StoredState {
    /// A store that holds nothing: what `plan` starts from before the
    /// daemon has ever run.
    pub fn empty() -> Self {
        Self {
            channels: BTreeMap::new(),
            open_intents: Vec::new(),
            last_reload: None,
            daemon_firing: Vec::new(),
            token_values: Vec::new(),
            long_lived: Vec::new(),
            stateless: BTreeMap::new(),
            ha: crate::store::HaState::default(),
        }
    }
}

/// Reads every stored channel's snapshot, listed foreign key IDs and
/// recent issuances at `now`.
///
/// # Errors
/// [`StoreError`] when a query fails.
pub fn read_store(store: &Store, now: DateTime<Utc>) -> Result<StoredState, StoreError> {
    // The report reads no token value, so a missing or wrong database key
    // would go unnoticed here while the daemon refuses to start with it.
    store.check_value_keys()?;
    // A second read-only connection reads the live tokens, the biggest
    // read, while this one reads the rest (`Snapshot::read_all`). Where
    // none opens, this one reads them too.
    let second = Store::open_read_only_with(store.path(), store.shared_keyring()).ok();
    // One query per table for all channels, sorted out here: a query per
    // channel and group would be hundreds of thousands at 100k groups.
    let mut channels: BTreeMap<ChannelId, StoredChannel> =
        Snapshot::read_all(store, second.as_ref().unwrap_or(store), now)?
            .into_iter()
            .filter_map(|snapshot| {
                let id = snapshot.channel.as_ref()?.id.clone();
                Some((
                    id,
                    StoredChannel {
                        snapshot,
                        foreign: Vec::new(),
                        unknown: Vec::new(),
                        recent_intents: Vec::new(),
                        hooks: BTreeMap::new(),
                        firing: Vec::new(),
                        sinks: BTreeMap::new(),
                    },
                ))
            })
            .collect();
    for kid in store.foreign_kids_in(Scope::All)? {
        if let Some(c) = channels.get_mut(&kid.channel_id)
            && kid.gone_at.is_none()
        {
            c.foreign.push(kid);
        }
    }
    // The rare channel with foreign key IDs: one query each.
    let since = now - crate::policy::rules::MAX_TOKEN_LIFETIME;
    for (id, c) in channels.iter_mut().filter(|(_, c)| !c.foreign.is_empty()) {
        c.unknown = store
            .unknown_outcomes_since(id, since)?
            .into_iter()
            .map(
                |(intent, group, started_at)| crate::policy::UnknownOutcome {
                    intent,
                    group,
                    started_at,
                },
            )
            .collect();
    }
    for intent in store.unfinished_intents_in(Scope::All, now - RECENT_INTENTS)? {
        if let Some(c) = channels.get_mut(&intent.channel_id) {
            c.recent_intents.push(intent);
        }
    }
    for event in store.latest_hook_results()? {
        if let (Some(c), Some(group)) = (channels.get_mut(&event.channel_id), event.group.clone()) {
            c.hooks.insert(group, event);
        }
    }
    let mut daemon_firing = Vec::new();
    for alert in store.firing_alerts()? {
        match &alert.channel_id {
            None => daemon_firing.push(alert),
            Some(id) => {
                if let Some(c) = channels.get_mut(id) {
                    c.firing.push(alert);
                }
            }
        }
    }
    let sink_notes: BTreeMap<String, DaemonNote> = store
        .notes_with_prefix(SINK_NOTE_PREFIX)?
        .into_iter()
        .map(|n| (n.key.clone(), n))
        .collect();
    for (id, c) in &mut channels {
        for (group, _) in &c.snapshot.groups {
            if let Some(note) = sink_notes.get(&sink_note_key(id, &group.name)) {
                c.sinks.insert(group.name.clone(), note.clone());
            }
        }
    }
    Ok(StoredState {
        ha: store.ha_state()?,
        channels,
        open_intents: store.open_intents()?,
        last_reload: store.note(LAST_RELOAD)?,
        daemon_firing,
        token_values: store.value_counts()?,
        long_lived: store.long_lived_rows()?,
        stateless: store
            .notes_with_prefix(STATELESS_NOTE_PREFIX)?
            .into_iter()
            .filter_map(|n| {
                let id = ChannelId::new(n.key.strip_prefix(STATELESS_NOTE_PREFIX)?);
                Some((id, n))
            })
            .collect(),
    })
}
