//! From the config file's text and the environment to [`Settings`].
//!
//! Two passes, because the file and the environment differ in size and in
//! kind:
//!
//! - The whole file is deserialized by the `toml` crate straight into typed
//!   settings, with `[daemon]` and `[rotation]` kept as raw tables. A file of
//!   100,000 groups is about 8 MB; the `config` crate's value tree of it
//!   took about 2.5 KB per group at its peak (250 MB at 100,000 groups),
//!   memory a long-running daemon then kept, and half of `linetokd
//!   status`'s time.
//! - `[daemon]` and `[rotation]`, the only sections the environment may
//!   override (`LINETOKD__SECTION__KEY`), go through the `config` crate with
//!   the overrides: it turns an override's text into the number or
//!   duration the key needs, as it always has. They are a few lines.
//!
//! Every error starts with the key it is about (`channel[0].group[1].name`,
//! found with `serde_path_to_error`), says which environment variable set a
//! value when one did, and gives the line for a value in the file.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::split::Parts;
use super::{
    AlertsSettings, ChannelSettings, ConfigError, DaemonSettings, ENV_PREFIX, ENV_SECTIONS,
    EncryptionSettings, HaSettings, LoginChannelSettings, LoginSettings, Problem, RotationSettings,
    Settings,
};

/// The file's sections, as the `toml` crate deserializes them.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSections {
    #[serde(default)]
    daemon: toml::Table,
    #[serde(default)]
    rotation: toml::Table,
    #[serde(default)]
    channel: Vec<ChannelSettings>,
    #[serde(default)]
    alerts: AlertsSettings,
    #[serde(default)]
    encryption: Option<EncryptionSettings>,
    #[serde(default)]
    login_channel: Vec<LoginChannelSettings>,
    #[serde(default)]
    login: LoginSettings,
    #[serde(default)]
    ha: Option<HaSettings>,
}

/// `[daemon]` and `[rotation]` as the file wrote them, handed to the
/// `config` crate.
#[derive(Serialize)]
struct RawTunables {
    daemon: toml::Table,
    rotation: toml::Table,
}

/// `[daemon]` and `[rotation]` after the environment's overrides.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Tunables {
    #[serde(default)]
    daemon: DaemonSettings,
    #[serde(default)]
    rotation: RotationSettings,
}

/// The file's text with the environment's overrides, not yet `${NAME}`
/// expanded (see [`Settings::from_toml`]).
pub(super) fn parse(
    text: &str,
    origin: &Path,
    env: &HashMap<String, String>,
) -> Result<Settings, ConfigError> {
    let parse_error = |message| ConfigError::Parse {
        path: origin.to_path_buf(),
        message,
    };
    let overrides = env_overrides(env)?;
    let file = parse_file(text).map_err(parse_error)?;
    let raw = RawTunables {
        daemon: file.daemon,
        rotation: file.rotation,
    };
    // Serializing tables that came out of a TOML file cannot fail; should it
    // ever, the message still says where.
    let raw = toml::to_string(&raw).map_err(|e| parse_error(e.to_string()))?;
    let tunables = config::Config::builder()
        .add_source(config::File::from_str(&raw, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX.trim_end_matches('_'))
                .separator("__")
                .source(Some(overrides.clone())),
        )
        .build()
        .and_then(|c| c.try_deserialize::<Tunables>())
        .map_err(|e| parse_error(describe(e, &overrides)))?;
    Ok(Settings {
        daemon: tunables.daemon,
        rotation: tunables.rotation,
        channels: file.channel,
        alerts: file.alerts,
        encryption: file.encryption,
        login_channels: file.login_channel,
        login: file.login,
        ha: file.ha,
        hook_search_path: None,
    })
}

/// The file's sections: entry by entry when [`Parts`] can cut it, so the
/// parse's peak is one channel's; else, or when any part fails, the whole
/// text at once, whose answer and errors are the reference.
fn parse_file(text: &str) -> Result<FileSections, String> {
    if let Some(file) = Parts::of(text).and_then(|parts| parse_parts(&parts)) {
        return Ok(file);
    }
    parse_whole(text)
}

fn parse_whole(text: &str) -> Result<FileSections, String> {
    let deserializer = toml::Deserializer::parse(text).map_err(|e| e.to_string())?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| describe_file_error(&e, text))
}

/// The sections from the parts, or `None` if any part fails to parse.
fn parse_parts(parts: &Parts<'_>) -> Option<FileSections> {
    /// One `[[channel]]` entry parsed alone.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entry {
        channel: [ChannelSettings; 1],
    }
    let mut file: FileSections = toml::from_str(&parts.rest).ok()?;
    if !file.channel.is_empty() && !parts.channels.is_empty() {
        // `channel` also set in the rest (e.g. `channel = [...]`): TOML
        // refuses that mix, and the whole-text parse says so.
        return None;
    }
    file.channel.reserve_exact(parts.channels.len());
    for text in &parts.channels {
        let Entry { channel: [entry] } = toml::from_str(text).ok()?;
        file.channel.push(entry);
    }
    Some(file)
}

/// One line for a value of the file that serde refused: the key, what is
/// wrong, and the line it is on.
fn describe_file_error(err: &serde_path_to_error::Error<toml::de::Error>, text: &str) -> String {
    let inner = err.inner();
    let line = inner
        .span()
        .map(|span| {
            let before = text.get(..span.start).unwrap_or(text);
            format!(" (line {})", before.matches('\n').count() + 1)
        })
        .unwrap_or_default();
    let message = inner.message().trim_end();
    match err.path().to_string().as_str() {
        "." => format!("{message}{line}"),
        key => format!("{key}: {message}{line}"),
    }
}

/// The `LINETOKD__SECTION__KEY` variables of `env`, keyed as the `config`
/// crate expects. Anything else with the prefix is an error rather than
/// ignored: a misspelt override that silently does nothing is worse.
fn env_overrides(env: &HashMap<String, String>) -> Result<HashMap<String, String>, ConfigError> {
    let mut overrides = HashMap::new();
    let mut problems = Vec::new();
    let mut names: Vec<&String> = env.keys().collect();
    names.sort();
    for name in names {
        let Some(rest) = strip_prefix_ignore_case(name, ENV_PREFIX) else {
            continue;
        };
        let parts: Vec<&str> = rest.split("__").collect();
        match parts.as_slice() {
            [section, key]
                if ENV_SECTIONS.contains(&section.to_ascii_lowercase().as_str())
                    && !key.is_empty() =>
            {
                overrides.insert(name.clone(), env[name].clone());
            }
            _ => problems.push(Problem::new(
                name.clone(),
                "does not name a key the environment can set: use LINETOKD__DAEMON__<KEY> or \
                 LINETOKD__ROTATION__<KEY> ([[channel]] entries live only in the file)",
            )),
        }
    }
    if problems.is_empty() {
        Ok(overrides)
    } else {
        Err(ConfigError::Invalid { problems })
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// Turns a `config` crate error into one line that starts with the key, and
/// says which environment variable set the value when one did.
fn describe(err: config::ConfigError, overrides: &HashMap<String, String>) -> String {
    let (key, message) = split_key(err);
    let Some(key) = key else { return message };
    let from_env = overrides
        .keys()
        .find(|name| {
            let dotted = name[ENV_PREFIX.len()..].replace("__", ".");
            dotted.eq_ignore_ascii_case(&key)
        })
        .map(|name| format!(" (set by {name})"))
        .unwrap_or_default();
    format!("{key}{from_env}: {message}")
}

fn split_key(err: config::ConfigError) -> (Option<String>, String) {
    match err {
        config::ConfigError::At {
            error,
            key: Some(key),
            ..
        } => {
            let (_, inner) = split_key(*error);
            (Some(key), inner)
        }
        config::ConfigError::Type {
            unexpected,
            expected,
            key: Some(key),
            ..
        } => (
            Some(key),
            format!("found {unexpected}, expected {expected}"),
        ),
        config::ConfigError::NotFound(key) => (Some(key), "is missing".to_owned()),
        config::ConfigError::FileParse { cause, .. } => (None, cause.to_string()),
        other => (None, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every section and sub-table the file has, with sections of the rest
    /// between channel entries and sub-tables of a channel after them.
    const EVERYTHING: &str = r#"
# before any header
[daemon]
state_dir = "/var/lib/x"
[rotation]
rotate_before = "12h"
[[channel]]
id = "1"
name = "a"
key_file = "/k.pem"
kid = "k"
  [[channel.group]]
  name = "g1"
  sinks = [
    { path = "/run/a/g1", format = "raw" },
  ]
  on_rotate = ["/bin/true", """
[[channel]]
"""]
  [[channel.group]]
  name = "g2"
[alerts]
group_wait = "10s"
  [[alerts.receiver]]
  name = "ops"
  type = "webhook"
  url_file = "/u"
[[channel]]
id = "2"
key_file = "/k.pem"
  [channel.long_lived]
  token_file = "/t"
  [channel.stateless]
  api_key_file = "/s"
[[channel.group]]
name = "g3"
[[login_channel]]
id = "9"
name = "login"
[login]
[ha]
instance_id = "i"
[encryption]
key_files = [ { id = 1, file = "/db.key" } ]
active = 1
"#;

    #[test]
    fn entry_by_entry_parses_to_what_the_whole_text_does() {
        for text in [
            EVERYTHING,
            include_str!("../../config/linetokd.toml"),
            include_str!("../../deploy/ha/linetokd.toml"),
            include_str!("../../deploy/docker/linetokd.toml"),
        ] {
            let whole = parse_whole(text).unwrap();
            let parts = Parts::of(text).expect("the file is cut");
            assert_eq!(parse_parts(&parts), Some(whole), "{text}");
        }
        let whole = parse_whole(EVERYTHING).unwrap();
        assert_eq!(whole.channel.len(), 2);
        assert_eq!(whole.channel[0].groups.len(), 2);
        assert_eq!(whole.channel[1].groups[0].name, "g3");
        assert!(whole.channel[1].long_lived.is_some());
    }

    #[test]
    fn a_mistake_in_an_entry_is_reported_as_in_the_whole_file() {
        let text = "[[channel]]\nid = \"1\"\n[[channel]]\nid = \"2\"\n\
                    [[channel.group]]\nname = \"g\"\nhook_timeout = \"soon\"\n";
        let err = parse_file(text).unwrap_err();
        assert!(
            err.starts_with("channel[1].group[0].hook_timeout: \"soon\" is not a duration"),
            "{err}"
        );
        assert!(err.ends_with("(line 7)"), "{err}");
        let err = parse_file("[[channel]]\nid = \"1\"\nkid = \"a\"\nkid = \"b\"\n").unwrap_err();
        assert!(err.contains("line 4"), "{err}");
        // `channel` in the rest and as entries: not cut, and whatever the
        // whole text says is the answer.
        let text = "channel = [{ id = \"0\" }]\n[[channel]]\nid = \"1\"\n";
        assert_eq!(parse_parts(&Parts::of(text).unwrap()), None);
        assert_eq!(parse_file(text), parse_whole(text));
    }
}
