//! `[alerts]` and `[[alerts.receiver]]`: where the alerts the engine raises
//! are sent (docs/design.md, "Alerts"), as written and as validated.
//!
//! Receiver URLs and signing secrets live in files, never inline: a webhook
//! URL usually embeds a credential (Slack's does), so the file is checked
//! like every other secret file (not readable by other users) and its
//! contents never reach a message, a log line or `check-config`'s output.
//! Validation reads those files once and hands their contents on in an
//! [`AlertsConfig`], so what was checked is what is used. A `line`
//! receiver must name a configured channel and one of its groups (their
//! current token sends the push) and LINE IDs to push to.
//!
//! Depends on `secret`, `config::{duration, files}` and `reqwest::Url`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use super::ChannelSettings;
use super::Problem;
use super::duration;
use super::files::{read_private, secret_from_bytes};
use crate::domain::{ChannelId, GroupName};
use crate::secret::Secret;

/// `[alerts]`, as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsSettings {
    /// How long a new alert waits before its first notification, so what
    /// fires together goes out together.
    #[serde(deserialize_with = "duration::deserialize")]
    pub group_wait: Duration,
    /// After a receiver was sent a notification, how long new warnings and
    /// resolves for it wait, so a burst of them goes out together rather
    /// than one message each (critical alerts do not wait).
    #[serde(deserialize_with = "duration::deserialize")]
    pub group_interval: Duration,
    /// How often a firing warning is sent again.
    #[serde(deserialize_with = "duration::deserialize")]
    pub repeat_interval_warning: Duration,
    /// How often a firing critical alert is sent again.
    #[serde(deserialize_with = "duration::deserialize")]
    pub repeat_interval_critical: Duration,
    /// Where people can look at the daemon (its status page); sent as each
    /// alert's `generatorURL` and the payload's `externalURL`.
    pub external_url: Option<String>,
    /// `capacity_low` fires when a channel can take at most this many more
    /// tokens after linetokd revoked its own superseded ones.
    pub capacity_low_threshold: u32,
    /// `[[alerts.receiver]]`: where notifications go.
    #[serde(rename = "receiver")]
    pub receivers: Vec<ReceiverSettings>,
}

impl Default for AlertsSettings {
    fn default() -> Self {
        Self {
            group_wait: Duration::from_secs(30),
            group_interval: Duration::from_secs(300),
            repeat_interval_warning: Duration::from_secs(4 * 3_600),
            repeat_interval_critical: Duration::from_secs(3_600),
            external_url: None,
            capacity_low_threshold: 4,
            receivers: Vec::new(),
        }
    }
}

/// One `[[alerts.receiver]]`, as written. The keys of every type share one
/// struct; validation refuses a key that does not belong to the type.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverSettings {
    /// A short name, unique among receivers (metrics and logs carry it).
    #[serde(default)]
    pub name: String,
    /// `webhook`, `slack`, `alertmanager` or `line`.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// The least severe alert this receiver gets: `warning` or `critical`.
    #[serde(default = "default_min_severity")]
    pub min_severity: String,
    /// How long one request may take.
    #[serde(
        default = "default_receiver_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub timeout: Duration,
    /// webhook, slack: a file holding the URL.
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// webhook: `alertmanager` (Alertmanager's v4 payload, the default) or
    /// `linetokd` (one event per request).
    #[serde(default)]
    pub format: Option<String>,
    /// webhook: a file holding a Standard Webhooks secret (`whsec_...`).
    #[serde(default)]
    pub signing_secret_file: Option<PathBuf>,
    /// alertmanager: the Alertmanager base URLs (`http://host:9093`).
    #[serde(default)]
    pub urls: Vec<String>,
    /// alertmanager: how often firing alerts are pushed again.
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub resend_interval: Option<Duration>,
    /// line: the channel (ID or name) whose current token sends the push.
    #[serde(default)]
    pub channel: Option<String>,
    /// line: the group of that channel whose current token is used.
    #[serde(default)]
    pub group: Option<String>,
    /// line: the user, group or room IDs the message is pushed to.
    #[serde(default)]
    pub to: Vec<String>,
    /// line: the most messages (recipients × notifications) sent per
    /// calendar month (UTC).
    #[serde(default)]
    pub monthly_message_budget: Option<u32>,
}

fn default_min_severity() -> String {
    "warning".to_owned()
}

fn default_receiver_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `[alerts]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertsConfig {
    /// See [`AlertsSettings::group_wait`].
    pub group_wait: Duration,
    /// See [`AlertsSettings::group_interval`].
    pub group_interval: Duration,
    /// See [`AlertsSettings::repeat_interval_warning`].
    pub repeat_interval_warning: Duration,
    /// See [`AlertsSettings::repeat_interval_critical`].
    pub repeat_interval_critical: Duration,
    /// See [`AlertsSettings::external_url`].
    pub external_url: Option<reqwest::Url>,
    /// See [`AlertsSettings::capacity_low_threshold`].
    pub capacity_low_threshold: u32,
    /// The receivers, in file order.
    pub receivers: Vec<ReceiverConfig>,
}

impl AlertsConfig {
    /// What is allowed but likely a mistake: every receiver of critical
    /// alerts is a `line` receiver, which pushes through a channel
    /// linetokd manages and so goes quiet exactly when that channel's
    /// token is the one in trouble.
    pub fn warnings(&self) -> Vec<String> {
        // Every receiver gets critical alerts (the highest severity).
        let all_line = !self.receivers.is_empty()
            && self
                .receivers
                .iter()
                .all(|r| matches!(r.kind, ReceiverKind::Line { .. }));
        if all_line {
            vec![
                "alerts: every receiver is a line receiver: when the channel it pushes through is \
                 the one in trouble, critical alerts reach no one; add a webhook, slack or \
                 alertmanager receiver"
                    .to_owned(),
            ]
        } else {
            Vec::new()
        }
    }
}

/// A severity as a receiver's threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MinSeverity {
    /// Warnings and critical alerts.
    Warning,
    /// Critical alerts only.
    Critical,
}

/// One receiver, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// Its name.
    pub name: String,
    /// The least severe alert it gets.
    pub min_severity: MinSeverity,
    /// Per-request timeout.
    pub timeout: Duration,
    /// What it is and where it sends.
    pub kind: ReceiverKind,
}

/// A receiver's type and its own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiverKind {
    /// An HTTP endpoint taking JSON.
    Webhook {
        /// The URL, read from `url_file` (it may embed a credential).
        url: SecretUrl,
        /// What each request carries.
        format: WebhookFormat,
        /// The Standard Webhooks secret (`whsec_<base64>`, checked), when
        /// requests are signed.
        signing_key: Option<Secret>,
    },
    /// A Slack incoming webhook.
    Slack {
        /// The webhook URL, read from `url_file`.
        url: SecretUrl,
    },
    /// Alertmanager's `POST /api/v2/alerts`.
    Alertmanager {
        /// The Alertmanager base URLs; each gets every push.
        urls: Vec<reqwest::Url>,
        /// How often firing alerts are pushed again.
        resend_interval: Duration,
    },
    /// A LINE push message through a channel and group linetokd manages.
    Line {
        /// The channel's ID.
        channel: ChannelId,
        /// The group whose current token is used.
        group: GroupName,
        /// Recipients (user, group or room IDs).
        to: Vec<String>,
        /// Messages allowed per calendar month (UTC).
        monthly_message_budget: u32,
    },
}

/// What a webhook request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    /// Alertmanager's webhook payload, version 4: one request per batch.
    Alertmanager,
    /// linetokd's own event: one request per alert.
    Linetokd,
}

/// A URL read from a secret file: printed as its file's name, never its
/// value.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl {
    url: reqwest::Url,
    file: PathBuf,
}

impl SecretUrl {
    /// The URL itself; only the sender may call this.
    pub fn expose(&self) -> &reqwest::Url {
        &self.url
    }

    /// The file it came from, for messages.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// A URL for tests, as if read from `file`.
    pub fn new(url: reqwest::Url, file: PathBuf) -> Self {
        Self { url, file }
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretUrl(from {})", self.file.display())
    }
}

/// The shortest repeat interval: a page every minute is already a storm.
const MIN_REPEAT: Duration = Duration::from_secs(60);
/// The longest interval of any kind here.
const MAX_INTERVAL: Duration = Duration::from_secs(30 * 86_400);
/// The longest `group_wait`.
const MAX_GROUP_WAIT: Duration = Duration::from_secs(3_600);
/// The longest per-request timeout.
const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// Alertmanager's own advice: re-send every 30 s to 3 min; its
/// `resolve_timeout` (5 min by default) resolves an alert not re-sent.
const DEFAULT_RESEND: Duration = Duration::from_secs(60);
/// The longest `resend_interval`: beyond this Alertmanager needs a larger
/// `resolve_timeout` than most setups have.
const MAX_RESEND: Duration = Duration::from_secs(3_600);
/// The default monthly budget of a `line` receiver: half of the smallest
/// paid plan's free messages leaves room for the bot's own.
const DEFAULT_LINE_BUDGET: u32 = 100;
/// Most recipients of a `line` receiver.
const MAX_LINE_RECIPIENTS: usize = 20;
/// Most receivers; each is a task's worth of requests.
const MAX_RECEIVERS: usize = 32;

/// Checks `[alerts]`, pushing every problem (named by key) onto
/// `problems`. Reads the receivers' URL and secret files. `None` when
/// anything is wrong.
pub(super) fn validate(
    s: &AlertsSettings,
    channels: &[ChannelSettings],
    problems: &mut Vec<Problem>,
) -> Option<AlertsConfig> {
    let before = problems.len();
    let mut problem = |key: String, message: String| problems.push(Problem::new(key, message));
    if usize::try_from(s.capacity_low_threshold).unwrap_or(usize::MAX)
        >= super::validate::CHANNEL_TOKEN_CAP
    {
        problem(
            "alerts.capacity_low_threshold".into(),
            format!(
                "({}) must be below LINE's {} tokens per channel",
                s.capacity_low_threshold,
                super::validate::CHANNEL_TOKEN_CAP
            ),
        );
    }
    if s.group_wait > MAX_GROUP_WAIT {
        problem(
            "alerts.group_wait".into(),
            format!(
                "({}) must be at most {}",
                duration::format(s.group_wait),
                duration::format(MAX_GROUP_WAIT)
            ),
        );
    }
    if s.group_interval > MAX_INTERVAL {
        problem(
            "alerts.group_interval".into(),
            format!(
                "({}) must be at most {}",
                duration::format(s.group_interval),
                duration::format(MAX_INTERVAL)
            ),
        );
    }
    for (key, value) in [
        ("alerts.repeat_interval_warning", s.repeat_interval_warning),
        (
            "alerts.repeat_interval_critical",
            s.repeat_interval_critical,
        ),
    ] {
        if !(MIN_REPEAT..=MAX_INTERVAL).contains(&value) {
            problem(
                key.into(),
                format!(
                    "({}) must be between {} and {} (more often is a storm)",
                    duration::format(value),
                    duration::format(MIN_REPEAT),
                    duration::format(MAX_INTERVAL)
                ),
            );
        }
    }
    let external_url = s.external_url.as_deref().and_then(|u| match http_url(u) {
        Ok(url) => Some(url),
        Err(m) => {
            problem("alerts.external_url".into(), m);
            None
        }
    });
    if s.receivers.len() > MAX_RECEIVERS {
        problem(
            "alerts.receiver".into(),
            format!(
                "has {} entries; at most {MAX_RECEIVERS} receivers are allowed",
                s.receivers.len()
            ),
        );
    }
    let mut receivers = Vec::new();
    for (i, r) in s.receivers.iter().enumerate() {
        let key = |k: &str| format!("alerts.receiver[{i}].{k}");
        if let Some(earlier) = s.receivers[..i].iter().position(|o| o.name == r.name)
            && !r.name.is_empty()
        {
            problem(
                key("name"),
                format!("{:?} duplicates alerts.receiver[{earlier}].name", r.name),
            );
        }
        let name = super::validate::check_name(&r.name, "receiver")
            .map_err(|m| problem(key("name"), m))
            .ok();
        let min_severity = match r.min_severity.as_str() {
            "warning" => Some(MinSeverity::Warning),
            "critical" => Some(MinSeverity::Critical),
            other => {
                problem(
                    key("min_severity"),
                    format!("{other:?} is not one of \"warning\", \"critical\""),
                );
                None
            }
        };
        if r.timeout.is_zero() || r.timeout > MAX_TIMEOUT {
            problem(
                key("timeout"),
                format!(
                    "({}) must be longer than 0s and at most {}",
                    duration::format(r.timeout),
                    duration::format(MAX_TIMEOUT)
                ),
            );
        }
        // Keys that belong to another type are refused, not ignored: a
        // `urls` on a webhook is a mistake the operator wants to hear of.
        let foreign = |allowed: &[&str]| -> Vec<&'static str> {
            [
                ("url_file", r.url_file.is_some()),
                ("format", r.format.is_some()),
                ("signing_secret_file", r.signing_secret_file.is_some()),
                ("urls", !r.urls.is_empty()),
                ("resend_interval", r.resend_interval.is_some()),
                ("channel", r.channel.is_some()),
                ("group", r.group.is_some()),
                ("to", !r.to.is_empty()),
                ("monthly_message_budget", r.monthly_message_budget.is_some()),
            ]
            .into_iter()
            .filter(|(k, set)| *set && !allowed.contains(k))
            .map(|(k, _)| k)
            .collect()
        };
        let (kind, misplaced) = match r.kind.as_str() {
            "webhook" => {
                let url = url_from(r.url_file.as_deref(), &key("url_file"), &mut problem);
                let format = match r.format.as_deref().unwrap_or("alertmanager") {
                    "alertmanager" => Some(WebhookFormat::Alertmanager),
                    "linetokd" => Some(WebhookFormat::Linetokd),
                    other => {
                        problem(
                            key("format"),
                            format!("{other:?} is not one of \"alertmanager\", \"linetokd\""),
                        );
                        None
                    }
                };
                let signing_key = match r.signing_secret_file.as_deref() {
                    None => Some(None),
                    Some(path) => match signing_secret(path) {
                        Ok(k) => Some(Some(k)),
                        Err(m) => {
                            problem(key("signing_secret_file"), m);
                            None
                        }
                    },
                };
                let kind = match (url, format, signing_key) {
                    (Some(url), Some(format), Some(signing_key)) => Some(ReceiverKind::Webhook {
                        url,
                        format,
                        signing_key,
                    }),
                    _ => None,
                };
                (
                    kind,
                    foreign(&["url_file", "format", "signing_secret_file"]),
                )
            }
            "slack" => {
                let url = url_from(r.url_file.as_deref(), &key("url_file"), &mut problem);
                (
                    url.map(|url| ReceiverKind::Slack { url }),
                    foreign(&["url_file"]),
                )
            }
            "alertmanager" => {
                if r.urls.is_empty() {
                    problem(
                        key("urls"),
                        "is missing: Alertmanager's base URLs, like [\"http://127.0.0.1:9093\"]"
                            .into(),
                    );
                }
                let mut urls = Vec::new();
                for (u, text) in r.urls.iter().enumerate() {
                    match http_url(text) {
                        Ok(url) => urls.push(url),
                        Err(m) => problem(key(&format!("urls[{u}]")), m),
                    }
                }
                let resend_interval = r.resend_interval.unwrap_or(DEFAULT_RESEND);
                let resend_ok = !resend_interval.is_zero() && resend_interval <= MAX_RESEND;
                if !resend_ok {
                    problem(
                        key("resend_interval"),
                        format!(
                            "({}) must be longer than 0s and at most {} (Alertmanager resolves \
                             an alert it does not hear of again)",
                            duration::format(resend_interval),
                            duration::format(MAX_RESEND)
                        ),
                    );
                }
                let kind = (urls.len() == r.urls.len() && !urls.is_empty() && resend_ok).then_some(
                    ReceiverKind::Alertmanager {
                        urls,
                        resend_interval,
                    },
                );
                (kind, foreign(&["urls", "resend_interval"]))
            }
            "line" => {
                let kind = line_receiver(r, channels, &key, &mut problem);
                (
                    kind,
                    foreign(&["channel", "group", "to", "monthly_message_budget"]),
                )
            }
            "" => {
                problem(
                    key("type"),
                    "is missing: one of \"webhook\", \"slack\", \"alertmanager\", \"line\"".into(),
                );
                (None, Vec::new())
            }
            other => {
                problem(
                    key("type"),
                    format!(
                        "{other:?} is not one of \"webhook\", \"slack\", \"alertmanager\", \"line\""
                    ),
                );
                (None, Vec::new())
            }
        };
        for k in misplaced {
            problem(
                key(k),
                format!("does not apply to a receiver of type {:?}", r.kind),
            );
        }
        if let (Some(name), Some(min_severity), Some(kind)) = (name, min_severity, kind) {
            receivers.push(ReceiverConfig {
                name,
                min_severity,
                timeout: r.timeout,
                kind,
            });
        }
    }
    (problems.len() == before).then_some(AlertsConfig {
        group_wait: s.group_wait,
        group_interval: s.group_interval,
        repeat_interval_warning: s.repeat_interval_warning,
        repeat_interval_critical: s.repeat_interval_critical,
        external_url,
        capacity_low_threshold: s.capacity_low_threshold,
        receivers,
    })
}

/// A `line` receiver: its channel and group must be configured (their
/// current token sends the push), its recipients LINE IDs.
fn line_receiver(
    r: &ReceiverSettings,
    channels: &[ChannelSettings],
    key: &dyn Fn(&str) -> String,
    problem: &mut impl FnMut(String, String),
) -> Option<ReceiverKind> {
    let mut ok = true;
    let channel = match r.channel.as_deref() {
        None => {
            problem(
                key("channel"),
                "is missing: the ID or name of a configured channel whose token sends the push"
                    .into(),
            );
            ok = false;
            None
        }
        Some(given) => {
            let found = channels.iter().find(|c| c.id == given || c.name == given);
            if found.is_none() {
                problem(
                    key("channel"),
                    format!("{given:?} names no [[channel]] of this file (by id or name)"),
                );
                ok = false;
            }
            found
        }
    };
    let group = match (r.group.as_deref(), channel) {
        (None, _) => {
            problem(
                key("group"),
                "is missing: a group of the channel, whose current token is used".into(),
            );
            ok = false;
            None
        }
        (Some(given), Some(c)) => {
            if !c.groups.iter().any(|g| g.name == given) {
                problem(
                    key("group"),
                    format!("{given:?} is not a group of channel {:?}", c.id),
                );
                ok = false;
            }
            Some(given.to_owned())
        }
        (Some(given), None) => Some(given.to_owned()),
    };
    if r.to.is_empty() || r.to.len() > MAX_LINE_RECIPIENTS {
        problem(
            key("to"),
            format!("must list 1 to {MAX_LINE_RECIPIENTS} user, group or room IDs to push to"),
        );
        ok = false;
    }
    for (t, id) in r.to.iter().enumerate() {
        let shaped = id.len() == 33
            && matches!(id.as_bytes()[0], b'U' | b'C' | b'R')
            && id[1..].bytes().all(|b| b.is_ascii_hexdigit());
        if !shaped {
            problem(
                key(&format!("to[{t}]")),
                format!(
                    "{:?} is not a LINE user, group or room ID (U, C or R and 32 hex digits)",
                    id.chars().take(40).collect::<String>()
                ),
            );
            ok = false;
        }
    }
    let budget = r.monthly_message_budget.unwrap_or(DEFAULT_LINE_BUDGET);
    if budget == 0 {
        problem(
            key("monthly_message_budget"),
            "must be at least 1 (remove the receiver to send nothing)".into(),
        );
        ok = false;
    }
    match (ok, channel, group) {
        (true, Some(c), Some(g)) => Some(ReceiverKind::Line {
            channel: ChannelId::new(c.id.clone()),
            group: GroupName::new(g),
            to: r.to.clone(),
            monthly_message_budget: budget,
        }),
        _ => None,
    }
}

/// An http(s) URL, or why not (quoting the value: only for URLs written in
/// the config file itself, never for ones read from secret files).
fn http_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text.trim())
        .map_err(|e| format!("{text:?} is not a URL ({e}); write it like \"http://host:9093\""))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{text:?} is not an http or https URL"));
    }
    Ok(url)
}

/// Reads a URL from a secret file; problems name the file, never its
/// contents.
fn url_from(
    path: Option<&Path>,
    key: &str,
    problem: &mut impl FnMut(String, String),
) -> Option<SecretUrl> {
    let Some(path) = path else {
        problem(
            key.to_owned(),
            "is missing: a file holding the URL (URLs often embed a secret)".into(),
        );
        return None;
    };
    let text = read_private(path)
        .and_then(secret_from_bytes)
        .map_err(|m| format!("({}) {m}", path.display()));
    let parsed = text.and_then(|secret| {
        reqwest::Url::parse(secret.expose().trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| {
                format!(
                    "({}) does not hold an http or https URL (its contents are not shown)",
                    path.display()
                )
            })
    });
    match parsed {
        Ok(url) => Some(SecretUrl {
            url,
            file: path.to_path_buf(),
        }),
        Err(m) => {
            problem(key.to_owned(), m);
            None
        }
    }
}

/// Reads a Standard Webhooks secret (`whsec_` and base64 of 24 to 64
/// bytes) and returns it as written (trimmed).
fn signing_secret(path: &Path) -> Result<Secret, String> {
    let shown = path.display();
    let secret = read_private(path)
        .and_then(secret_from_bytes)
        .map_err(|m| format!("({shown}) {m}"))?;
    let encoded = secret
        .expose()
        .trim()
        .strip_prefix("whsec_")
        .ok_or_else(|| {
            format!("({shown}) does not hold a Standard Webhooks secret: it must start with whsec_")
        })?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| format!("({shown}) does not hold base64 after whsec_"))?;
    // The specification asks for 24 to 64 bytes of key.
    if !(24..=64).contains(&key.len()) {
        return Err(format!(
            "({shown}) holds a {}-byte key; Standard Webhooks keys are 24 to 64 bytes",
            key.len()
        ));
    }
    Ok(Secret::new(secret.expose().trim()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn parse(text: &str) -> AlertsSettings {
        #[derive(Deserialize)]
        struct Wrap {
            alerts: AlertsSettings,
        }
        toml::from_str::<Wrap>(text).unwrap().alerts
    }

    fn check(s: &AlertsSettings) -> Result<AlertsConfig, Vec<Problem>> {
        let mut problems = Vec::new();
        validate(s, &[], &mut problems).ok_or(problems)
    }

    #[test]
    fn defaults_are_the_specs() {
        let c = check(&AlertsSettings::default()).unwrap();
        assert_eq!(c.group_wait, Duration::from_secs(30));
        assert_eq!(c.repeat_interval_warning, Duration::from_secs(4 * 3_600));
        assert_eq!(c.repeat_interval_critical, Duration::from_secs(3_600));
        assert!(c.receivers.is_empty());
    }

    #[test]
    fn receivers_of_each_type_are_read_with_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let url = write(
            dir.path(),
            "url",
            "https://hooks.example/T0/secret\n",
            0o600,
        );
        let whsec = write(
            dir.path(),
            "whsec",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            0o640,
        );
        let text = format!(
            r#"
[alerts]
group_wait = "10s"
external_url = "http://linetokd.internal:9464/status"
[[alerts.receiver]]
name = "ops"
type = "webhook"
url_file = "{url}"
signing_secret_file = "{whsec}"
min_severity = "critical"
[[alerts.receiver]]
name = "chat"
type = "slack"
url_file = "{url}"
timeout = "3s"
[[alerts.receiver]]
name = "am"
type = "alertmanager"
urls = ["http://127.0.0.1:9093"]
"#,
            url = url.display(),
            whsec = whsec.display()
        );
        let c = check(&parse(&text)).unwrap();
        assert_eq!(c.group_wait, Duration::from_secs(10));
        assert_eq!(c.receivers.len(), 3);
        let ReceiverKind::Webhook {
            url: u,
            format,
            signing_key,
        } = &c.receivers[0].kind
        else {
            panic!("{:?}", c.receivers[0]);
        };
        assert_eq!(u.expose().as_str(), "https://hooks.example/T0/secret");
        assert_eq!(*format, WebhookFormat::Alertmanager);
        assert!(signing_key.is_some());
        assert_eq!(c.receivers[0].min_severity, MinSeverity::Critical);
        // The URL never shows in Debug output.
        assert!(!format!("{c:?}").contains("secret\""), "{c:?}");
        assert!(!format!("{c:?}").contains("hooks.example"), "{c:?}");
        assert_eq!(c.receivers[1].timeout, Duration::from_secs(3));
        assert_eq!(
            c.receivers[2].kind,
            ReceiverKind::Alertmanager {
                urls: vec![reqwest::Url::parse("http://127.0.0.1:9093").unwrap()],
                resend_interval: Duration::from_secs(60),
            }
        );
    }

    fn channels() -> Vec<ChannelSettings> {
        #[derive(Deserialize)]
        struct Wrap {
            channel: Vec<ChannelSettings>,
        }
        toml::from_str::<Wrap>(
            "[[channel]]\nid = \"1234567890\"\nname = \"shop-bot\"\n\
             [[channel.group]]\nname = \"alerts\"\n",
        )
        .unwrap()
        .channel
    }

    #[test]
    fn a_line_receiver_names_a_configured_channel_and_group_and_line_ids() {
        let good = format!(
            "[alerts]\n[[alerts.receiver]]\nname = \"admins\"\ntype = \"line\"\n\
             channel = \"shop-bot\"\ngroup = \"alerts\"\nto = [\"U{}\"]\n",
            "0123456789abcdef".repeat(2)
        );
        let mut problems = Vec::new();
        let c = validate(&parse(&good), &channels(), &mut problems).unwrap();
        assert_eq!(
            c.receivers[0].kind,
            ReceiverKind::Line {
                channel: ChannelId::new("1234567890"),
                group: GroupName::new("alerts"),
                to: vec![format!("U{}", "0123456789abcdef".repeat(2))],
                monthly_message_budget: 100,
            }
        );
        let bad = "[alerts]\n[[alerts.receiver]]\nname = \"admins\"\ntype = \"line\"\n\
                   channel = \"shop-bot\"\ngroup = \"backend\"\nto = [\"bob\"]\n\
                   monthly_message_budget = 0\n[[alerts.receiver]]\nname = \"x\"\n\
                   type = \"line\"\nchannel = \"999\"\n";
        let mut problems = Vec::new();
        assert!(validate(&parse(bad), &channels(), &mut problems).is_none());
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "alerts.receiver[0].group",
                "alerts.receiver[0].to[0]",
                "alerts.receiver[0].monthly_message_budget",
                "alerts.receiver[1].channel",
                "alerts.receiver[1].group",
                "alerts.receiver[1].to",
            ],
            "{problems:?}"
        );
    }

    #[test]
    fn every_problem_is_named_by_its_key_and_no_file_content_is_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let open = write(dir.path(), "open", "https://hooks.example/TOPSECRET", 0o644);
        let junk = write(dir.path(), "junk", "not a url TOPSECRET", 0o600);
        let weak = write(dir.path(), "weak", "whsec_dG9vc2hvcnQ=", 0o600);
        let text = format!(
            r#"
[alerts]
repeat_interval_critical = "10s"
external_url = "ftp://x"
[[alerts.receiver]]
name = "a"
type = "webhook"
url_file = "{open}"
format = "xml"
[[alerts.receiver]]
name = "a"
type = "slack"
url_file = "{junk}"
urls = ["http://x"]
[[alerts.receiver]]
name = "b"
type = "webhook"
url_file = "{junk}"
signing_secret_file = "{weak}"
min_severity = "info"
[[alerts.receiver]]
name = "c"
type = "alertmanager"
resend_interval = "2h"
[[alerts.receiver]]
name = "d"
type = "pager"
"#,
            open = open.display(),
            junk = junk.display(),
            weak = weak.display()
        );
        let problems = check(&parse(&text)).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "alerts.repeat_interval_critical",
            "alerts.external_url",
            "alerts.receiver[0].url_file",
            "alerts.receiver[0].format",
            "alerts.receiver[1].name",
            "alerts.receiver[1].url_file",
            "alerts.receiver[1].urls",
            "alerts.receiver[2].min_severity",
            "alerts.receiver[2].signing_secret_file",
            "alerts.receiver[3].urls",
            "alerts.receiver[3].resend_interval",
            "alerts.receiver[4].type",
        ] {
            assert!(
                keys.contains(&expected),
                "{expected} missing from {problems:?}"
            );
        }
        let all = format!("{problems:?}");
        assert!(!all.contains("TOPSECRET"), "{all}");
        assert!(all.contains("mode 0644"), "{all}");
    }
}
