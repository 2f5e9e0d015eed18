//! Channels the scheduler should look at before their due time.
//!
//! The scheduler owns every channel's due time; most changes to a channel
//! come from its own work and are reflected in the due time it returns.
//! What changes a channel from outside (an operator request, a config
//! reload) is recorded here, and the scheduler is notified. This is not
//! state a restart would lose: after a restart every channel is due at once.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use tokio::sync::Notify;

use crate::domain::ChannelId;

/// The pending wake-ups and the scheduler's doorbell.
#[derive(Debug, Default)]
pub struct Wakes {
    pending: Mutex<Pending>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct Pending {
    all: bool,
    channels: HashSet<ChannelId>,
}

/// What [`Wakes::take`] hands the scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Woken {
    /// Every channel (rules or the channel list changed).
    All,
    /// These channels.
    Some(Vec<ChannelId>),
}

impl Wakes {
    /// Asks the scheduler to look at `channel` now.
    pub fn wake(&self, channel: &ChannelId) {
        self.lock().channels.insert(channel.clone());
        self.notify.notify_one();
    }

    /// Asks the scheduler to look at every channel now.
    pub fn wake_all(&self) {
        self.lock().all = true;
        self.notify.notify_one();
    }

    /// Takes the pending wake-ups, if any.
    pub fn take(&self) -> Option<Woken> {
        let mut p = self.lock();
        if p.all {
            p.all = false;
            p.channels.clear();
            return Some(Woken::All);
        }
        if p.channels.is_empty() {
            return None;
        }
        Some(Woken::Some(p.channels.drain().collect()))
    }

    /// Resolves once a wake-up was asked for since the last call (a permit
    /// is kept if nobody was waiting, so none is missed).
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_ups_are_taken_once_and_all_wins() {
        let w = Wakes::default();
        assert_eq!(w.take(), None);
        w.wake(&ChannelId::new("a"));
        assert_eq!(w.take(), Some(Woken::Some(vec![ChannelId::new("a")])));
        assert_eq!(w.take(), None);
        w.wake(&ChannelId::new("a"));
        w.wake_all();
        assert_eq!(w.take(), Some(Woken::All));
        assert_eq!(w.take(), None);
    }
}
