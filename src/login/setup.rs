//! The LINE Login module's settings, as the config file's validation
//! hands them over: checked timings, the login channels with their secrets
//! loaded, and the two API keys. Defined here rather than in `config` so
//! the module depends on no config code (the dependency rule); `config`
//! builds them.
//!
//! Depends on `domain` and `secret`.

use std::time::Duration;

use crate::domain::{ChannelId, ChannelSecret};
use crate::secret::Secret;

/// The timings of `[login]`, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginTimings {
    /// `refresh_before`.
    pub refresh_before: Duration,
    /// `horizon`.
    pub horizon: Duration,
    /// `horizon_margin`.
    pub horizon_margin: Duration,
    /// `reauth_notify_before`.
    pub reauth_notify_before: Duration,
    /// `max_requests_per_second`.
    pub max_requests_per_second: u32,
}

/// One login channel, checked, its secret loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginChannelConfig {
    /// The channel ID.
    pub id: ChannelId,
    /// Its short name.
    pub name: String,
    /// The channel secret, when configured.
    pub secret: Option<ChannelSecret>,
}

/// The LINE Login module's config: present when at least one login
/// channel is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginConfig {
    /// The login channels, in file order.
    pub channels: Vec<LoginChannelConfig>,
    /// `[login]`.
    pub timings: LoginTimings,
    /// The key that imports and deletes grants.
    pub admin_api_key: Secret,
    /// The key that reads access tokens.
    pub reader_api_key: Secret,
}

impl LoginConfig {
    /// The login channel `given` names, by ID or by name.
    pub fn channel(&self, given: &str) -> Option<&LoginChannelConfig> {
        self.channels
            .iter()
            .find(|c| c.id.as_str() == given)
            .or_else(|| self.channels.iter().find(|c| c.name == given))
    }
}
