//! One benchmark run's world: the LINE sandbox served in-process on a
//! loopback port, N groups spread over channels registered with it, and a
//! daemon config for them in a temporary directory.
//!
//! Every channel registers the *same* RSA-2048 public key under its own
//! kid (LINE finds keys by a globally unique kid), because generating a key
//! per channel would take minutes at 100k groups and measure nothing about
//! the daemon. Every group gets the same API key file, so the token API
//! holds as many keys as in a deployment where every consumer uses it.
//!
//! [`Progress`] answers "how many groups have a live token *at the
//! sandbox*", the ground truth, cheaply enough to ask every few
//! milliseconds while the daemon works.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::{SharedClock, SystemClock};
use crate::domain::{ChannelId, ChannelSecret, GroupName, SigningKid};
use crate::line::keys::{SigningKey, VerifyingKey};
use crate::sandbox::Sandbox;

/// The `[rotation]` of every bench config: the defaults, but an hourly
/// issue budget so large that bootstrap measures the daemon's work, not
/// its rate limit (15 groups per channel need 15 issues in the first hour).
const ROTATION: &str = "max_issues_per_hour = 1000\n";

/// The first channel ID; channels count up from it.
const FIRST_CHANNEL_ID: u64 = 2_000_000_000;

/// A sandbox, N configured groups and the daemon config for them.
pub struct Lab {
    /// Dropped (and deleted) after the daemon is stopped.
    dir: tempfile::TempDir,
    config_path: PathBuf,
    sandbox: Sandbox,
    shutdown: CancellationToken,
    serving: JoinHandle<std::io::Result<()>>,
    /// Each channel and how many groups it has.
    channels: Vec<(ChannelId, usize)>,
    api_key: String,
}

impl Lab {
    /// Starts a sandbox on `127.0.0.1:0`, registers `ceil(groups /
    /// per_channel)` channels with `key`'s public half, and writes the
    /// daemon's config (listening on `127.0.0.1:0`, JSON logs).
    ///
    /// # Errors
    /// When the directory, a file or the listener cannot be made.
    /// With `postgres` (a database URL), the daemon's store is that
    /// database, named in a private file beside the config.
    pub async fn new(
        groups: usize,
        per_channel: usize,
        key: &SigningKey,
        postgres: Option<&str>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(per_channel > 0, "groups per channel must be at least 1");
        let dir = tempfile::Builder::new()
            .prefix("linetokd-bench-")
            .tempdir()
            .context("while creating the benchmark's temporary directory")?;
        let clock: SharedClock = Arc::new(SystemClock);
        let sandbox = Sandbox::empty(clock);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("while binding the sandbox to a loopback port")?;
        let sandbox_url = format!("http://{}", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn(sandbox.clone().serve(listener, shutdown.child_token()));

        let key_file = dir.path().join("assertion.private.pem");
        write_private(&key_file, key.to_pkcs8_pem()?.as_bytes())?;
        let secret = "bench-channel-secret";
        let secret_file = dir.path().join("channel.secret");
        write_private(&secret_file, secret.as_bytes())?;
        let api_key = format!("bench-api-{:032x}", rand::random::<u128>());
        let api_key_file = dir.path().join("group.apikey");
        write_private(&api_key_file, api_key.as_bytes())?;
        let public = VerifyingKey::parse(key.public_jwk().to_json_pretty().as_bytes())?;

        let database = match postgres {
            None => format!(
                "database = \"{}\"",
                dir.path().join("linetokd.db").display()
            ),
            Some(url) => {
                let url_file = dir.path().join("database.url");
                write_private(&url_file, url.as_bytes())?;
                format!("database_url_file = \"{}\"", url_file.display())
            }
        };
        let channels = spread(groups, per_channel);
        let mut toml = format!(
            "# Written by `linetokd bench`.\n[daemon]\n{database}\nstate_dir = \"{state}\"\n\
             line_api = \"{sandbox_url}\"\nlisten = \"127.0.0.1:0\"\nlog_format = \"json\"\n\n\
             [rotation]\n{ROTATION}",
            state = dir.path().display(),
        );
        for (i, (id, count)) in channels.iter().enumerate() {
            let kid = SigningKid::new(format!("bench-kid-{i}"));
            sandbox
                .register_channel(
                    id.clone(),
                    ChannelSecret::new(secret),
                    vec![(kid.clone(), public.clone())],
                )
                .with_context(|| format!("while registering channel {id} with the sandbox"))?;
            write!(
                toml,
                "\n[[channel]]\nid = \"{id}\"\nname = \"bench-{i}\"\nkey_file = \"{}\"\n\
                 kid = \"{kid}\"\nsecret_file = \"{}\"\n",
                key_file.display(),
                secret_file.display()
            )?;
            for g in 0..*count {
                write!(
                    toml,
                    "[[channel.group]]\nname = \"{}\"\napi_key_file = \"{}\"\n",
                    group_name(g),
                    api_key_file.display()
                )?;
            }
        }
        let config_path = dir.path().join("linetokd.toml");
        std::fs::write(&config_path, toml)
            .with_context(|| format!("while writing {}", config_path.display()))?;
        Ok(Self {
            dir,
            config_path,
            sandbox,
            shutdown,
            serving,
            channels,
            api_key,
        })
    }

    /// The daemon's config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// How many groups are configured.
    pub fn groups(&self) -> usize {
        self.channels.iter().map(|(_, n)| n).sum()
    }

    /// How many channels they are spread over.
    pub fn channels(&self) -> usize {
        self.channels.len()
    }

    /// A group the token API serves, and the API key that opens it.
    pub fn api_group(&self) -> Option<(ChannelId, GroupName, &str)> {
        let (channel, _) = self.channels.first()?;
        Some((channel.clone(), group_name(0), &self.api_key))
    }

    /// A fresh count of groups with a live token at the sandbox.
    pub fn progress(&self) -> Progress {
        Progress {
            pending: self.channels.clone(),
            next: 0,
            live: 0,
        }
    }

    /// Stops the sandbox and deletes the directory, or with `keep` leaves
    /// it and returns its path. Call after the daemon has stopped.
    pub async fn close(self, keep: bool) -> Option<PathBuf> {
        self.shutdown.cancel();
        // The server's own error at shutdown tells the benchmark nothing.
        let _ = self.serving.await;
        keep.then(|| self.dir.keep())
    }
}

/// Counts groups with a live token at the sandbox, channel by channel.
///
/// A channel whose groups all have one is counted once and not looked at
/// again (bootstrap issues tokens that live 30 days). Each [`Self::poll`]
/// looks at no more than [`POLL_BUDGET`] pending channels, round robin, so
/// polling 6,667 channels every few milliseconds does not compete with the
/// daemon for the CPU; near the end few channels are pending and each poll
/// sees them all.
pub struct Progress {
    pending: Vec<(ChannelId, usize)>,
    next: usize,
    live: usize,
}

/// The most pending channels one poll asks the sandbox about.
pub const POLL_BUDGET: usize = 256;

impl Progress {
    /// Looks at the next pending channels and returns how many groups are
    /// now known to have a live token. Since the sandbox knows channels and
    /// not groups, a channel counts as done when it has at least as many
    /// live v2.1 tokens as groups: a first start issues one per group.
    pub fn poll(&mut self, lab: &Lab) -> usize {
        let mut looked = 0;
        while looked < POLL_BUDGET && !self.pending.is_empty() {
            if self.next >= self.pending.len() {
                self.next = 0;
            }
            let (channel, groups) = &self.pending[self.next];
            let groups = *groups;
            if lab.sandbox.live_key_ids(channel).len() >= groups {
                self.live += groups;
                self.pending.swap_remove(self.next);
            } else {
                self.next += 1;
            }
            looked += 1;
        }
        self.live
    }

    /// A full count, for when the wait is over: every pending channel is
    /// asked, and one with some of its groups live counts those.
    pub fn count_all(&self, lab: &Lab) -> usize {
        self.live
            + self
                .pending
                .iter()
                .map(|(channel, groups)| lab.sandbox.live_key_ids(channel).len().min(*groups))
                .sum::<usize>()
    }

    /// True once every group has a live token.
    pub fn done(&self) -> bool {
        self.pending.is_empty()
    }
}

/// `groups` spread over channels of `per_channel` groups each; the last
/// channel takes the remainder.
fn spread(groups: usize, per_channel: usize) -> Vec<(ChannelId, usize)> {
    (0..groups.div_ceil(per_channel))
        .map(|i| {
            let id = FIRST_CHANNEL_ID + i as u64;
            let count = per_channel.min(groups - i * per_channel);
            (ChannelId::new(id.to_string()), count)
        })
        .collect()
}

fn group_name(i: usize) -> GroupName {
    GroupName::new(format!("g{i:02}"))
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("while creating {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("while writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_spread_fifteen_to_a_channel_with_the_rest_last() {
        let counts: Vec<usize> = spread(40, 15).into_iter().map(|(_, n)| n).collect();
        assert_eq!(counts, vec![15, 15, 10]);
        assert_eq!(spread(30, 15).len(), 2);
        assert!(spread(0, 15).is_empty());
        let ids: Vec<String> = spread(2, 1)
            .into_iter()
            .map(|(c, _)| c.to_string())
            .collect();
        assert_eq!(ids, vec!["2000000000", "2000000001"]);
    }
}
