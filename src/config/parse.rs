//! From the config file's text and the environment to [`Settings`].
//!
//! The `config` crate reads the TOML, applies the `LINETOKD__SECTION__KEY`
//! overrides of `[daemon]` and `[rotation]`, and turns a scalar into what a
//! key needs (`id = 1656000000` is the string `"1656000000"`).
//!
//! It does so entry by entry: [`Parts`] cuts the text into its
//! `[[channel]]` entries and the rest, the rest is read with the
//! environment and each entry alone. Read whole, a file of 100,000 groups
//! (about 8 MB) took about 2.5 KB per group at the parse's peak (the token
//! vector and value tree of the whole document), memory a long-running
//! daemon then kept, and half of `linetokd status`'s time. When the text is
//! not cut, or any part fails, the whole text is read at once, as it always
//! was: its answer and its errors are the reference, so every error reads
//! as before, starting with the key (`channel[0].group[1].name`) and naming
//! the environment variable that set a value when one did.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::split::Parts;
use super::{ChannelSettings, ConfigError, ENV_PREFIX, ENV_SECTIONS, Problem, Settings};

/// The file's text with the environment's overrides, not yet `${NAME}`
/// expanded (see [`Settings::from_toml`]).
pub(super) fn parse(
    text: &str,
    origin: &Path,
    env: &HashMap<String, String>,
) -> Result<Settings, ConfigError> {
    let overrides = env_overrides(env)?;
    if let Some(settings) = Parts::of(text).and_then(|parts| parse_parts(&parts, &overrides)) {
        return Ok(settings);
    }
    parse_whole(text, &overrides).map_err(|e| ConfigError::Parse {
        path: origin.to_path_buf(),
        message: describe(e, &overrides),
    })
}

/// `text` read by the `config` crate, with `overrides` on top when given.
fn read(
    text: &str,
    overrides: Option<&HashMap<String, String>>,
) -> Result<config::Config, config::ConfigError> {
    let mut builder = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml));
    if let Some(overrides) = overrides {
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX.trim_end_matches('_'))
                .separator("__")
                .source(Some(overrides.clone())),
        );
    }
    builder.build()
}

fn parse_whole(
    text: &str,
    overrides: &HashMap<String, String>,
) -> Result<Settings, config::ConfigError> {
    read(text, Some(overrides))?.try_deserialize()
}

/// The settings from the parts, or `None` if any part fails.
fn parse_parts(parts: &Parts<'_>, overrides: &HashMap<String, String>) -> Option<Settings> {
    /// One `[[channel]]` entry read alone.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entry {
        channel: Vec<ChannelSettings>,
    }
    let rest = read(&parts.rest, Some(overrides)).ok()?;
    if !parts.channels.is_empty() && rest.get::<config::Value>("channel").is_ok() {
        // `channel` also set in the rest (`channel = []`): TOML refuses
        // that mix, and the whole text's read says so.
        return None;
    }
    let mut settings: Settings = rest.try_deserialize().ok()?;
    let entries = super::spread::in_order(
        &parts.channels,
        || (),
        |(), _, text| {
            // Straight from TOML first: the `config` crate's read builds a
            // tree of its own values and merges it (about a tenth of
            // `status`'s time at 100,000 groups). Where the two could differ
            // (a key in another case, a number given as a string), the direct
            // read fails and the `config` crate's decides, as before.
            let Entry { channel } = match toml::from_str(text) {
                Ok(entry) => entry,
                Err(_) => read(text, None).ok()?.try_deserialize().ok()?,
            };
            let [entry] = <[ChannelSettings; 1]>::try_from(channel).ok()?;
            Some(entry)
        },
    );
    settings.channels.reserve_exact(parts.channels.len());
    for (entries, ()) in entries {
        for entry in entries {
            settings.channels.push(entry?);
        }
    }
    Some(settings)
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
            (Some(repair_key(&key)), inner)
        }
        config::ConfigError::Type {
            unexpected,
            expected,
            key: Some(key),
            ..
        } => (
            Some(repair_key(&key)),
            format!("found {unexpected}, expected {expected}"),
        ),
        config::ConfigError::NotFound(key) => (Some(repair_key(&key)), "is missing".to_owned()),
        config::ConfigError::FileParse { cause, .. } => (None, cause.to_string()),
        other => (None, other.to_string()),
    }
}

/// The `config` crate joins an array index and the next key without a dot
/// (`channel[0]kid`); put the dot back so keys read as the file does.
fn repair_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    let mut chars = key.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == ']' && chars.peek().is_some_and(|n| *n != '.' && *n != '[') {
            out.push('.');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every section and sub-table the file has, with sections of the rest
    /// between channel entries, sub-tables of a channel after them, and
    /// scalars the `config` crate turns into strings.
    const EVERYTHING: &str = r#"
# before any header
[daemon]
state_dir = "/var/lib/x"
[rotation]
rotate_before = "12h"
[[channel]]
id = 1656000000
name = "a"
key_file = "/k.pem"
kid = 123
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

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn entry_by_entry_reads_what_the_whole_text_does() {
        let overrides = env(&[("LINETOKD__ROTATION__ROTATE_BEFORE", "6h")]);
        for text in [
            EVERYTHING,
            include_str!("../../config/linetokd.toml"),
            include_str!("../../deploy/ha/linetokd.toml"),
            include_str!("../../deploy/docker/linetokd.toml"),
            // What only the `config` crate reads (an ID as a number): the
            // entry's direct TOML read fails and the crate's decides.
            "[[channel]]\nid = 1656000000\nkid = \"k\"\n[[channel.group]]\nname = \"g\"\n",
        ] {
            let whole = parse_whole(text, &overrides).unwrap();
            let parts = Parts::of(text).expect("the file is cut");
            assert_eq!(parse_parts(&parts, &overrides), Some(whole), "{text}");
        }
        let whole = parse_whole(EVERYTHING, &overrides).unwrap();
        assert_eq!(whole.rotation.rotate_before.as_secs(), 6 * 3_600);
        assert_eq!(whole.channels.len(), 2);
        assert_eq!(whole.channels[0].id, "1656000000");
        assert_eq!(whole.channels[0].kid, "123");
        assert_eq!(whole.channels[0].groups.len(), 2);
        assert_eq!(whole.channels[1].groups[0].name, "g3");
        assert!(whole.channels[1].long_lived.is_some());
    }

    #[test]
    fn a_mistake_anywhere_is_reported_as_in_the_whole_text() {
        let no_env = HashMap::new();
        let text = "[[channel]]\nid = \"1\"\n[[channel]]\nid = \"2\"\n\
                    [[channel.group]]\nname = \"g\"\nhook_timeout = \"soon\"\n";
        let err = parse(text, Path::new("t.toml"), &no_env)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("t.toml: channel[1].group[0].hook_timeout: \"soon\" is not a duration"),
            "{err}"
        );
        // `channel` in the rest and as entries: not read in parts, and the
        // whole text's read refuses the mix.
        for text in [
            "channel = []\n[[channel]]\nid = \"1\"\n",
            "channel = [{ id = \"0\" }]\n[[channel]]\nid = \"1\"\n",
        ] {
            let parts = Parts::of(text).unwrap();
            assert_eq!(parse_parts(&parts, &no_env), None, "{text}");
            assert!(parse(text, Path::new("t.toml"), &no_env).is_err(), "{text}");
        }
    }

    #[test]
    fn array_keys_in_errors_are_dotted() {
        assert_eq!(
            repair_key("channel[0]group[1]hook_timeout"),
            "channel[0].group[1].hook_timeout"
        );
        assert_eq!(repair_key("channel[0].kid"), "channel[0].kid");
        assert_eq!(repair_key("a[0][1]"), "a[0][1]");
    }
}
