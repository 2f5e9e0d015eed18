//! The wire format: one JSON request line from the CLI, one JSON response
//! line from the daemon.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{ChannelId, GroupName, KeyId};

/// A command for the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// `linetokd rotate`: issue a fresh token now for one group, or for
    /// every group of the channel.
    Rotate {
        /// The channel: its ID or its configured name, as typed (the daemon
        /// resolves it with the config in force).
        channel: ChannelId,
        /// The group; `None` means every group of the channel.
        #[serde(default)]
        group: Option<GroupName>,
    },
    /// `linetokd revoke`: the incident command. Revoke every token of the
    /// group at LINE and issue a fresh one, touching no other group.
    Revoke {
        /// The channel: its ID or its configured name, as typed.
        channel: ChannelId,
        /// The group.
        group: GroupName,
    },
    /// `linetokd long-lived retire`: revoke the channel's long-lived token
    /// (the one its `token_file` holds) once consumers moved on; the daemon
    /// stops verifying and alerting about it.
    RetireLongLived {
        /// The channel: its ID or its configured name, as typed.
        channel: ChannelId,
        /// The fingerprint `linetokd long-lived retire` showed the operator:
        /// the daemon revokes nothing if the file now holds another token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fingerprint: Option<String>,
    },
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Response {
    /// Carried out for every targeted group.
    Done {
        /// What happened, per group.
        groups: Vec<GroupReport>,
    },
    /// A step failed for at least one group; the daemon keeps retrying.
    Failed {
        /// What happened, per group; failed ones carry `failure`.
        groups: Vec<GroupReport>,
    },
    /// Not carried out within the wait (or the daemon is stopping); the
    /// request stays in force and the daemon keeps working on it.
    Pending {
        /// What happened so far, per group.
        groups: Vec<GroupReport>,
        /// Why the answer came before the outcome.
        reason: String,
    },
    /// The long-lived token was revoked at LINE and LINE confirmed it no
    /// longer accepts it.
    Retired {
        /// The channel.
        channel: ChannelId,
        /// The revoked token's fingerprint (never its value).
        fingerprint: String,
    },
    /// The request was refused and nothing was done (unknown channel or
    /// group, no channel secret to revoke with, a malformed request).
    Refused {
        /// Why, in a sentence.
        error: String,
    },
}

/// What happened to one group while the daemon worked on a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupReport {
    /// The channel.
    pub channel: ChannelId,
    /// The group.
    pub group: GroupName,
    /// True once the request is carried out for this group.
    pub done: bool,
    /// Tokens of the group revoked meanwhile, in order.
    pub revoked: Vec<KeyId>,
    /// The newest token issued for the group meanwhile.
    pub issued: Option<IssuedKey>,
    /// The last failure, with when the daemon tries again.
    pub failure: Option<String>,
    /// Alerts raised for the group meanwhile.
    pub notes: Vec<String>,
    /// Under `[ha]`: the instance that leads the channel and carries the
    /// request out, when it is not the one asked (its new token's key ID
    /// is then not known here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub led_by: Option<String>,
}

/// A freshly issued token, by key ID (never its value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedKey {
    /// LINE's key ID.
    pub key_id: KeyId,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
}

impl GroupReport {
    pub(super) fn new(channel: ChannelId, group: GroupName) -> Self {
        Self {
            channel,
            group,
            done: false,
            revoked: Vec::new(),
            issued: None,
            failure: None,
            notes: Vec::new(),
            led_by: None,
        }
    }

    /// One line per fact, for the CLI.
    fn describe(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = write!(out, "channel {} group {}: ", self.channel, self.group);
        let mut facts = Vec::new();
        if !self.revoked.is_empty() {
            let ids: Vec<&str> = self.revoked.iter().map(KeyId::as_str).collect();
            facts.push(format!(
                "revoked {} token{} ({})",
                ids.len(),
                if ids.len() == 1 { "" } else { "s" },
                ids.join(", ")
            ));
        }
        match &self.issued {
            Some(issued) => facts.push(format!(
                "new token {} (expires {})",
                issued.key_id,
                issued
                    .expires_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )),
            None if self.done => match &self.led_by {
                Some(leader) => facts.push(format!("done by the channel's leader, {leader}")),
                None => facts.push("nothing left to do".to_owned()),
            },
            None => facts.push("no new token yet".to_owned()),
        }
        if let Some(failure) = &self.failure {
            facts.push(format!("failed: {failure}"));
        }
        let _ = writeln!(out, "{}", facts.join("; "));
        for note in &self.notes {
            let _ = writeln!(out, "  alert: {note}");
        }
    }
}

impl Response {
    /// The answer as the CLI prints it.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        match self {
            Self::Done { groups } => {
                for g in groups {
                    g.describe(&mut out);
                }
            }
            Self::Failed { groups } => {
                out.push_str("the request failed; the daemon keeps retrying on its own:\n");
                for g in groups {
                    g.describe(&mut out);
                }
            }
            Self::Pending { groups, reason } => {
                out.push_str(&format!("not finished yet: {reason}\n"));
                for g in groups {
                    g.describe(&mut out);
                }
            }
            Self::Retired {
                channel,
                fingerprint,
            } => {
                out.push_str(&format!(
                    "channel {channel}: long-lived token {fingerprint} revoked; LINE no longer accepts it\n"
                ));
            }
            Self::Refused { error } => {
                out.push_str(error);
                out.push('\n');
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_format_is_stable() {
        let rotate = Request::Rotate {
            channel: ChannelId::new("1"),
            group: None,
        };
        assert_eq!(
            serde_json::to_string(&rotate).unwrap(),
            r#"{"command":"rotate","channel":"1","group":null}"#
        );
        let parsed: Request =
            serde_json::from_str(r#"{"command":"rotate","channel":"1"}"#).unwrap();
        assert_eq!(parsed, rotate);
        let revoke: Request =
            serde_json::from_str(r#"{"command":"revoke","channel":"1","group":"a"}"#).unwrap();
        assert_eq!(
            revoke,
            Request::Revoke {
                channel: ChannelId::new("1"),
                group: GroupName::new("a")
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"command":"revoke","channel":"1"}"#).is_err());
        let refused = Response::Refused { error: "no".into() };
        assert_eq!(
            serde_json::to_string(&refused).unwrap(),
            r#"{"outcome":"refused","error":"no"}"#
        );
    }
}
