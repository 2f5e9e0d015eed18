//! LINE Login grants in `linetokd status`: per login channel, how many
//! grants are active, need a new login or are revoked, how many active
//! ones are inside the re-login notice window and how many have an
//! estimated horizon. Counts only: no subject, no token.
//!
//! Depends on `store` (one grouped query) and `domain`; `cli` passes the
//! configured login channels and the notice window.

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::ChannelId;
use crate::store::{Store, StoreError};

/// The LINE Login part of the status report.
#[derive(Debug, Clone, Serialize)]
pub struct LoginStatus {
    /// `[login] reauth_notify_before`, in seconds: the window
    /// `reauth_due` counts.
    pub reauth_notify_before_secs: u64,
    /// Every configured login channel (file order), then stored ones no
    /// longer configured.
    pub channels: Vec<LoginChannelStatus>,
}

/// One login channel's grants.
#[derive(Debug, Clone, Serialize)]
pub struct LoginChannelStatus {
    /// The login channel's ID.
    pub channel: ChannelId,
    /// Its configured name (`null` when no longer configured).
    pub name: Option<String>,
    /// Grants kept fresh.
    pub active: u64,
    /// Grants whose user must log in again.
    pub needs_login: u64,
    /// Grants ended.
    pub revoked: u64,
    /// Active grants inside the re-login notice window.
    pub reauth_due: u64,
    /// Active grants whose horizon is an estimate (imported without
    /// `login_at`).
    pub horizon_estimated: u64,
}

/// The login part of `status` at `now`: `None` when no login channel is
/// configured and the store holds no grant.
///
/// # Errors
/// When the store cannot be read.
pub fn login_status(
    store: &Store,
    now: DateTime<Utc>,
    configured: &[(ChannelId, String)],
    reauth_notify_before: Duration,
) -> Result<Option<LoginStatus>, StoreError> {
    let mut stored = store.login_grant_summary(now, reauth_notify_before)?;
    if configured.is_empty() && stored.is_empty() {
        return Ok(None);
    }
    let mut channels = Vec::new();
    for (id, name) in configured {
        let found = stored.iter().position(|s| &s.channel == id);
        let s = found.map(|i| stored.remove(i));
        channels.push(LoginChannelStatus {
            channel: id.clone(),
            name: Some(name.clone()),
            active: s.as_ref().map_or(0, |s| s.active),
            needs_login: s.as_ref().map_or(0, |s| s.needs_login),
            revoked: s.as_ref().map_or(0, |s| s.revoked),
            reauth_due: s.as_ref().map_or(0, |s| s.reauth_due),
            horizon_estimated: s.as_ref().map_or(0, |s| s.horizon_estimated),
        });
    }
    channels.extend(stored.into_iter().map(|s| LoginChannelStatus {
        channel: s.channel,
        name: None,
        active: s.active,
        needs_login: s.needs_login,
        revoked: s.revoked,
        reauth_due: s.reauth_due,
        horizon_estimated: s.horizon_estimated,
    }));
    Ok(Some(LoginStatus {
        reauth_notify_before_secs: reauth_notify_before.as_secs(),
        channels,
    }))
}

/// The login part of the status text.
pub(super) fn render_login(out: &mut String, login: &LoginStatus) {
    let _ = writeln!(
        out,
        "\nLINE Login grants (re-login notice {} before the horizon):",
        crate::config::duration::format(Duration::from_secs(login.reauth_notify_before_secs))
    );
    for c in &login.channels {
        let title = match &c.name {
            Some(name) => format!("{name} ({})", c.channel),
            None => format!("{} (no longer in the config: not refreshed)", c.channel),
        };
        let _ = writeln!(
            out,
            "  login channel {title}: {} active, {} needs_login, {} revoked; {} inside the \
             notice window, {} with an estimated horizon",
            c.active, c.needs_login, c.revoked, c.reauth_due, c.horizon_estimated
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_names_each_count() {
        let mut out = String::new();
        render_login(
            &mut out,
            &LoginStatus {
                reauth_notify_before_secs: 7 * 86_400,
                channels: vec![
                    LoginChannelStatus {
                        channel: ChannelId::new("1660000000"),
                        name: Some("shop-login".into()),
                        active: 3,
                        needs_login: 1,
                        revoked: 0,
                        reauth_due: 2,
                        horizon_estimated: 1,
                    },
                    LoginChannelStatus {
                        channel: ChannelId::new("1660000009"),
                        name: None,
                        active: 1,
                        needs_login: 0,
                        revoked: 0,
                        reauth_due: 0,
                        horizon_estimated: 0,
                    },
                ],
            },
        );
        assert!(
            out.contains("re-login notice 7d before the horizon"),
            "{out}"
        );
        assert!(
            out.contains(
                "login channel shop-login (1660000000): 3 active, 1 needs_login, 0 revoked; 2 \
                 inside the notice window, 1 with an estimated horizon"
            ),
            "{out}"
        );
        assert!(out.contains("1660000009 (no longer in the config"), "{out}");
    }
}
