//! `linetokd demo`: the whole thing, offline, in one command.
//!
//! Like `vault server -dev`: it starts the LINE sandbox in-process on a
//! loopback port, generates an assertion key per channel and registers its
//! public half with the sandbox (as an operator registers it in the LINE
//! console), writes a real config file with short lifetimes into a
//! temporary directory, loads and validates it the way `linetokd run`
//! does, and runs the real daemon against the sandbox. Every issue,
//! revocation and expiry is printed as it happens, with the number of live
//! tokens each group has *at the sandbox*, checked from the outside.
//!
//! Once the daemon runs, the demo prints where it listens and a short
//! block of commands to paste into a second terminal (`status`, `plan`,
//! `token`, `rotate`, `revoke`, `health`, and `curl` of `/metrics` and of
//! the token API), all with the demo's real config path. Each group gets an
//! API key in a private file of the temporary directory; the commands name
//! that file (`$(cat FILE)`), never the key itself.
//!
//! Timescale: tokens live 2 minutes and rotate 40 seconds before expiry, so
//! a month-long lifecycle plays out in minutes.
//!
//! Every line is written in words: reasons and alerts through their
//! `Display` (`policy::words`), never Rust's debug names.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use chrono::{DateTime, Local, Utc};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::app::{Daemon, RunOptions};
use crate::clock::{SharedClock, SystemClock};
use crate::config::Settings;
use crate::domain::{ChannelId, ChannelSecret, GroupName, KeyId, SigningKid};
use crate::event::RotationEvent;
use crate::line::keys::{self, VerifyingKey};
use crate::policy::joined;
use crate::sandbox::{Sandbox, SandboxTokenState, TokenKind};

/// The demo's channels: (ID, name, groups).
const CHANNELS: [(&str, &str, &[&str]); 2] = [
    ("1000000001", "shop-bot", &["backend", "crm"]),
    ("1000000002", "news-bot", &["analytics"]),
];

/// The demo's `[rotation]`: a 30-day lifecycle compressed into minutes.
const ROTATION: &str = r#"
token_lifetime = "2m"        # LINE allows up to 30d; the daemon's default
rotate_before = "40s"        # default 24h: rotate well before expiry
rotation_jitter = "5s"       # spreads groups apart
verify_interval = "30s"      # default 6h
reconcile_interval = "30s"   # default 1h
max_issues_per_hour = 120    # default 6; the demo rotates every ~80 s
removal_grace = "1m"
"#;

/// Runs the demo until `shutdown` fires (Ctrl-C) or `run_for` passes.
///
/// `program` is how the user invoked linetokd (`argv[0]`), so the printed
/// commands run as they are pasted.
///
/// # Errors
/// When the temporary directory, the sandbox or the daemon cannot be set up.
pub async fn run(
    shutdown: CancellationToken,
    run_for: Option<std::time::Duration>,
    program: &str,
    out: &mut (dyn std::io::Write + Send),
) -> anyhow::Result<()> {
    let clock: SharedClock = Arc::new(SystemClock);
    let dir = tempfile::Builder::new()
        .prefix("linetokd-demo-")
        .tempdir()
        .context("while creating the demo's temporary directory")?;

    let sandbox = Sandbox::empty(Arc::clone(&clock));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("while binding the sandbox to a loopback port")?;
    let sandbox_addr = listener.local_addr()?;
    // Its own token, cancelled after the daemon has stopped: the daemon's
    // last work (revokes at shutdown, a final listing) must not meet a
    // sandbox that is already gone.
    let sandbox_stop = CancellationToken::new();
    let serving = tokio::spawn(sandbox.clone().serve(listener, sandbox_stop.clone()));

    let config_path = write_demo_setup(dir.path(), &sandbox, &format!("http://{sandbox_addr}"))?;
    let settings = Settings::load(&config_path, &HashMap::new())?;
    let config = settings.validate()?;

    writeln!(
        out,
        "linetokd demo: the LINE sandbox is listening on http://{sandbox_addr}\n\
         config: {} (tokens live 2 min, rotate 40 s before expiry)\n\
         channels: shop-bot (backend, crm) and news-bot (analytics)\n\
         each group's token is kept in {}/<channel>/<group>.json\n\
         Watch tokens being issued, rotated early, and never more than two per group.\n\
         {}\n",
        config_path.display(),
        dir.path().join("sinks").display(),
        match run_for {
            Some(d) => format!(
                "Runs for {}; Ctrl-C stops it sooner.",
                humantime::format_duration(d)
            ),
            None => "Ctrl-C stops it.".to_owned(),
        }
    )?;

    let mut daemon = Daemon::start(&config, clock, shutdown.clone(), RunOptions::default()).await?;
    write!(
        out,
        "{}",
        try_these(program, &config_path, daemon.http_addr, dir.path())
    )?;
    out.flush()?;
    let deadline = async {
        match run_for {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut tally = Tally::default();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = &mut deadline => { shutdown.cancel(); break; }
            event = daemon.events.recv() => match event {
                Ok(event) => {
                    let line = describe(&event, &sandbox, &mut tally);
                    writeln!(out, "{line}")?;
                    out.flush()?;
                }
                Err(RecvError::Lagged(n)) => writeln!(out, "({n} events not shown)")?,
                Err(RecvError::Closed) => break,
            },
        }
    }
    let stopped = daemon
        .stopped()
        .await
        .context("the demo's daemon stopped on a store error");
    sandbox_stop.cancel();
    serving.await.ok();
    stopped?;
    writeln!(
        out,
        "\ndemo over: {} issued, {} revoked, {} expired; at most {} live {} per group at the sandbox.",
        tally.issued,
        tally.revoked,
        tally.expired,
        tally.max_live,
        if tally.max_live == 1 {
            "token"
        } else {
            "tokens"
        }
    )?;
    Ok(())
}

#[derive(Default)]
struct Tally {
    issued: usize,
    revoked: usize,
    expired: usize,
    max_live: usize,
    /// Which group each issued key ID belongs to: the sandbox knows
    /// channels, not groups.
    owners: HashMap<KeyId, GroupName>,
}

/// Writes keys, secrets and the config file; registers the channels with
/// the sandbox. Returns the config file's path.
fn write_demo_setup(dir: &Path, sandbox: &Sandbox, line_api: &str) -> anyhow::Result<PathBuf> {
    let mut toml = format!(
        "# Written by `linetokd demo`; see config/linetokd.toml for every key.\n\
         [daemon]\n\
         database = \"{db}\"\n\
         state_dir = \"{dir}\"\n\
         line_api = \"{line_api}\"\n\
         listen = \"127.0.0.1:0\"\n\
         \n[rotation]{ROTATION}",
        db = dir.join("linetokd.db").display(),
        dir = dir.display(),
    );
    for (id, name, groups) in CHANNELS {
        let key = keys::generate()?;
        let key_file = dir.join(format!("{name}.private.pem"));
        write_private(&key_file, key.to_pkcs8_pem()?.as_bytes())?;
        let secret = format!("demo-secret-{id}");
        let secret_file = dir.join(format!("{name}.secret"));
        write_private(&secret_file, secret.as_bytes())?;
        let kid = SigningKid::new(format!("demo-kid-{name}"));
        let public = VerifyingKey::parse(key.public_jwk().to_json_pretty().as_bytes())?;
        sandbox.register_channel(
            ChannelId::new(id),
            ChannelSecret::new(secret),
            vec![(kid.clone(), public)],
        )?;

        write!(
            toml,
            "\n[[channel]]\nid = \"{id}\"\nname = \"{name}\"\nkey_file = \"{}\"\nkid = \"{kid}\"\nsecret_file = \"{}\"\n",
            key_file.display(),
            secret_file.display()
        )?;
        for group in groups {
            let sink = dir.join("sinks").join(name).join(format!("{group}.json"));
            let api_key_file = api_key_path(dir, name, group);
            write_private(&api_key_file, new_api_key().as_bytes())?;
            write!(
                toml,
                "\n  [[channel.group]]\n  name = \"{group}\"\n  sinks = [{{ path = \"{}\", format = \"json\" }}]\n  api_key_file = \"{}\"\n",
                sink.display(),
                api_key_file.display()
            )?;
        }
    }
    let path = dir.join("linetokd.toml");
    fs::write(&path, toml).with_context(|| format!("while writing {}", path.display()))?;
    Ok(path)
}

/// Where the demo keeps a group's token API key.
fn api_key_path(dir: &Path, channel_name: &str, group: &str) -> PathBuf {
    dir.join(format!("{channel_name}-{group}.apikey"))
}

/// A fresh random API key: 32 bytes as hex.
fn new_api_key() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().fold(String::with_capacity(64), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

/// The block of commands to try in a second terminal while the demo runs.
fn try_these(program: &str, config: &Path, http: SocketAddr, dir: &Path) -> String {
    // A channel is named by its ID or its configured name everywhere; the
    // name reads better.
    let (_, name, groups) = CHANNELS[0];
    let group = groups[0];
    let linetokd = shell_word(program);
    let config = shell_word(&config.display().to_string());
    let key_file = shell_word(&api_key_path(dir, name, group).display().to_string());
    let http = crate::addresses::reachable(http);
    let mut text = format!(
        "The daemon listens on http://{http} (/healthz, /readyz, /metrics, the token API).\n\
         Try these in a second terminal while the demo runs:\n"
    );
    let lines = [
        format!("{linetokd} status --config {config}"),
        format!("{linetokd} plan --config {config}"),
        format!("{linetokd} token --config {config} --channel {name} --group {group}"),
        format!("{linetokd} rotate --config {config} --channel {name} --group {group}"),
        format!("{linetokd} revoke --config {config} --channel {name} --group {group}"),
        format!("{linetokd} health --config {config}"),
        format!("curl -s http://{http}/metrics"),
        format!(
            "curl -s -H \"Authorization: Bearer $(cat {key_file})\" http://{http}/v1/channels/{name}/groups/{group}/token"
        ),
    ];
    for line in lines {
        let _ = writeln!(text, "  {line}");
    }
    text.push('\n');
    text
}

/// `word` as one shell word: as is when it holds only characters no shell
/// treats specially, else in single quotes.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("while creating {}", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}

/// One line per event, with live counts per group read from the sandbox.
fn describe(event: &RotationEvent, sandbox: &Sandbox, tally: &mut Tally) -> String {
    let now = Local::now().format("%H:%M:%S");
    let name = |channel: &ChannelId| {
        CHANNELS
            .iter()
            .find(|(id, _, _)| *id == channel.as_str())
            .map_or_else(|| channel.to_string(), |(_, name, _)| (*name).to_owned())
    };
    match event {
        RotationEvent::Issued {
            channel,
            group,
            key_id,
            expires_at,
            reason,
            ..
        } => {
            tally.issued += 1;
            tally.owners.insert(key_id.clone(), group.clone());
            let live = live_at_sandbox(sandbox, channel, tally);
            format!(
                "[{now}] {:<20} ISSUED  {key_id}  expires {} ({reason})  live at LINE: {live}",
                format!("{}/{group}", name(channel)),
                local(*expires_at),
            )
        }
        RotationEvent::Revoked {
            channel,
            group,
            key_id,
            reason,
        } => {
            tally.revoked += 1;
            let live = live_at_sandbox(sandbox, channel, tally);
            format!(
                "[{now}] {:<20} REVOKED {key_id}  ({reason})  live at LINE: {live}",
                format!("{}/{group}", name(channel))
            )
        }
        RotationEvent::Expired { channel, key_ids } => {
            tally.expired += key_ids.len();
            let live = live_at_sandbox(sandbox, channel, tally);
            format!(
                "[{now}] {:<20} EXPIRED {}  live at LINE: {live}",
                name(channel),
                joined(key_ids)
            )
        }
        RotationEvent::Gone {
            channel,
            key_id,
            why,
        } => {
            format!("[{now}] {:<20} GONE    {key_id}: {why}", name(channel))
        }
        RotationEvent::ForeignSeen { channel, key_id } => {
            format!("[{now}] {:<20} FOREIGN {key_id}", name(channel))
        }
        RotationEvent::Failed {
            channel,
            group,
            step,
            error,
            retry_at,
            ..
        } => format!(
            "[{now}] {:<20} FAILED  {step}: {error} (retry at {})",
            format!("{}/{group}", name(channel)),
            local(*retry_at)
        ),
        RotationEvent::ListingFailed {
            channel,
            error,
            retry_at,
            ..
        } => format!(
            "[{now}] {:<20} FAILED  reconcile: {error} (retry at {})",
            name(channel),
            local(*retry_at)
        ),
        RotationEvent::Alert {
            channel,
            group,
            alert,
        } => format!(
            "[{now}] {:<20} ALERT   {}",
            format!("{}/{group}", name(channel)),
            alert
        ),
    }
}

/// "backend 2, crm 1": live v2.1 tokens per group at the sandbox, matched
/// to groups through the demo's record of what was issued for whom.
fn live_at_sandbox(sandbox: &Sandbox, channel: &ChannelId, tally: &mut Tally) -> String {
    let live: Vec<_> = sandbox
        .tokens(channel)
        .into_iter()
        .filter(|t| t.kind == TokenKind::V21 && t.state == SandboxTokenState::Live)
        .collect();
    let owners = owners_of(channel);
    let mut per_group: Vec<(GroupName, usize)> = owners.iter().map(|g| (g.clone(), 0)).collect();
    for token in &live {
        if let Some(group) = token.key_id.as_ref().and_then(|k| tally.owners.get(k))
            && let Some(slot) = per_group.iter_mut().find(|(g, _)| g == group)
        {
            slot.1 += 1;
        }
    }
    tally.max_live = tally
        .max_live
        .max(per_group.iter().map(|(_, n)| *n).max().unwrap_or(0));
    per_group
        .iter()
        .map(|(g, n)| format!("{g} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn owners_of(channel: &ChannelId) -> Vec<GroupName> {
    CHANNELS
        .iter()
        .find(|(id, _, _)| *id == channel.as_str())
        .map(|(_, _, groups)| groups.iter().map(|g| GroupName::new(*g)).collect())
        .unwrap_or_default()
}

fn local(t: DateTime<Utc>) -> String {
    t.with_timezone(&Local).format("%H:%M:%S").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_survive_pasting() {
        assert_eq!(
            shell_word("/tmp/linetokd-demo-x/linetokd.toml"),
            "/tmp/linetokd-demo-x/linetokd.toml"
        );
        assert_eq!(shell_word("/a b/linetokd"), "'/a b/linetokd'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn api_keys_are_fresh_and_fit_a_bearer_header() {
        let (a, b) = (new_api_key(), new_api_key());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(crate::http::usable_api_key(&crate::secret::Secret::new(a)));
    }
}
