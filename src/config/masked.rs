//! The resolved configuration as `linetokd check-config` prints it.
//!
//! A view of [`Settings`] with every default filled in and durations in
//! their short form, serialized as TOML so it reads like the file the
//! operator wrote. File-backed secrets (`key_file`, `secret_file`,
//! `api_key_file`, `[login]`'s `*_api_key_file`) show their path with
//! `(secret, N bytes, mode 0600)`: enough to spot a wrong file or mode,
//! and only ever from metadata, so no byte of a secret can reach the
//! output.

use std::path::Path;

use serde::Serialize;

use super::Settings;
use super::duration::format as fmt_dur;
use super::files::describe;

#[derive(Serialize)]
struct View {
    daemon: DaemonView,
    rotation: RotationView,
    channel: Vec<ChannelView>,
    alerts: AlertsView,
    #[serde(skip_serializing_if = "Option::is_none")]
    encryption: Option<EncryptionView>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    login_channel: Vec<LoginChannelView>,
    /// Shown when a login channel is configured (the module is off
    /// otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    login: Option<LoginView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ha: Option<HaView>,
}

/// `[ha]`; `instance_id` is left out when not set: its default
/// (`hostname:pid`) is only known to the running daemon.
#[derive(Serialize)]
struct HaView {
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_id: Option<String>,
    lease: String,
    renew: String,
    line_clock_allowance: String,
}

#[derive(Serialize)]
struct LoginChannelView {
    id: String,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_file: Option<String>,
}

#[derive(Serialize)]
struct LoginView {
    refresh_before: String,
    horizon: String,
    horizon_margin: String,
    reauth_notify_before: String,
    max_requests_per_second: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_api_key_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reader_api_key_file: Option<String>,
}

#[derive(Serialize)]
struct EncryptionView {
    key_files: Vec<KeyFileView>,
    active: u32,
}

#[derive(Serialize)]
struct KeyFileView {
    id: u32,
    file: String,
}

#[derive(Serialize)]
struct AlertsView {
    group_wait: String,
    repeat_interval_warning: String,
    repeat_interval_critical: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    external_url: Option<String>,
    receiver: Vec<ReceiverView>,
}

#[derive(Serialize)]
struct ReceiverView {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    min_severity: String,
    timeout: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    url_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signing_secret_file: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resend_interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    to: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    monthly_message_budget: Option<u32>,
}

#[derive(Serialize)]
struct DaemonView {
    #[serde(skip_serializing_if = "Option::is_none")]
    database: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    database_url_file: Option<String>,
    state_dir: String,
    line_api: String,
    request_timeout: String,
    listen: String,
    log_format: String,
}

#[derive(Serialize)]
struct RotationView {
    token_lifetime: String,
    rotate_before: String,
    rotation_jitter: String,
    verify_interval: String,
    reconcile_interval: String,
    max_issues_per_hour: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoke_previous_after: Option<String>,
    removal_grace: String,
    assertion_window: String,
}

#[derive(Serialize)]
struct ChannelView {
    id: String,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_file: Option<String>,
    group: Vec<GroupView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    long_lived: Option<LongLivedView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stateless: Option<StatelessView>,
}

#[derive(Serialize)]
struct LongLivedView {
    token_file: String,
    verify_interval: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key_file: Option<String>,
    sinks: Vec<SinkView>,
}

#[derive(Serialize)]
struct StatelessView {
    enabled: bool,
    auth: String,
    refresh_margin: String,
    refresh_ahead: String,
    max_issues_per_minute: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key_file: Option<String>,
    sinks: Vec<SinkView>,
}

fn sink_view(s: &super::SinkSettings) -> SinkView {
    SinkView {
        path: shown(&s.path),
        format: s.format.clone(),
        mode: s.mode.clone(),
        owner: s.owner.clone(),
        group: s.group.clone(),
    }
}

#[derive(Serialize)]
struct GroupView {
    name: String,
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    on_rotate: Option<Vec<String>>,
    hook_timeout: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key_file: Option<String>,
    sinks: Vec<SinkView>,
}

#[derive(Serialize)]
struct SinkView {
    path: String,
    format: String,
    mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
}

fn secret_file(path: &Path) -> String {
    format!("{} ({})", path.display(), describe(path))
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

impl Settings {
    /// The resolved configuration as TOML, secrets masked: what
    /// `linetokd check-config` prints. Reads file metadata, never contents.
    pub fn render_resolved(&self) -> String {
        let d = &self.daemon;
        let r = &self.rotation;
        let view = View {
            daemon: DaemonView {
                // Only the store in use: the SQLite path when no URL file
                // is set (its default included), else the URL's file.
                database: d
                    .database_url_file
                    .is_none()
                    .then(|| shown(&d.database_path())),
                database_url_file: d.database_url_file.as_deref().map(secret_file),
                state_dir: shown(&d.state_dir),
                line_api: d.line_api.clone(),
                request_timeout: fmt_dur(d.request_timeout),
                listen: d.listen.clone(),
                log_format: d.log_format.clone(),
            },
            rotation: RotationView {
                token_lifetime: fmt_dur(r.token_lifetime),
                rotate_before: fmt_dur(r.rotate_before),
                rotation_jitter: fmt_dur(r.rotation_jitter),
                verify_interval: fmt_dur(r.verify_interval),
                reconcile_interval: fmt_dur(r.reconcile_interval),
                max_issues_per_hour: r.max_issues_per_hour,
                revoke_previous_after: r.revoke_previous_after.map(fmt_dur),
                removal_grace: fmt_dur(r.removal_grace),
                assertion_window: fmt_dur(r.assertion_window),
            },
            channel: self
                .channels
                .iter()
                .map(|c| ChannelView {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    // A channel without v2.1 groups may have neither.
                    key_file: (!c.key_file.as_os_str().is_empty())
                        .then(|| secret_file(&c.key_file)),
                    kid: (!c.kid.is_empty()).then(|| c.kid.clone()),
                    secret_file: c.secret_file.as_deref().map(secret_file),
                    group: c
                        .groups
                        .iter()
                        .map(|g| GroupView {
                            name: g.name.clone(),
                            kind: g.kind.clone(),
                            on_rotate: g.on_rotate.clone(),
                            hook_timeout: fmt_dur(g.hook_timeout),
                            api_key_file: g.api_key_file.as_deref().map(secret_file),
                            sinks: g
                                .sinks
                                .iter()
                                .map(|s| SinkView {
                                    path: shown(&s.path),
                                    format: s.format.clone(),
                                    mode: s.mode.clone(),
                                    owner: s.owner.clone(),
                                    group: s.group.clone(),
                                })
                                .collect(),
                        })
                        .collect(),
                    long_lived: c.long_lived.as_ref().map(|ll| LongLivedView {
                        token_file: secret_file(&ll.token_file),
                        verify_interval: fmt_dur(ll.verify_interval),
                        api_key_file: ll.api_key_file.as_deref().map(secret_file),
                        sinks: ll.sinks.iter().map(sink_view).collect(),
                    }),
                    stateless: c.stateless.as_ref().map(|s| StatelessView {
                        enabled: s.enabled,
                        auth: s.auth.clone(),
                        refresh_margin: fmt_dur(s.refresh_margin),
                        refresh_ahead: fmt_dur(s.refresh_ahead),
                        max_issues_per_minute: s.max_issues_per_minute,
                        api_key_file: s.api_key_file.as_deref().map(secret_file),
                        sinks: s.sinks.iter().map(sink_view).collect(),
                    }),
                })
                .collect(),
            alerts: AlertsView {
                group_wait: fmt_dur(self.alerts.group_wait),
                repeat_interval_warning: fmt_dur(self.alerts.repeat_interval_warning),
                repeat_interval_critical: fmt_dur(self.alerts.repeat_interval_critical),
                external_url: self.alerts.external_url.clone(),
                receiver: self
                    .alerts
                    .receivers
                    .iter()
                    .map(|r| ReceiverView {
                        name: r.name.clone(),
                        kind: r.kind.clone(),
                        min_severity: r.min_severity.clone(),
                        timeout: fmt_dur(r.timeout),
                        url_file: r.url_file.as_deref().map(secret_file),
                        format: r.format.clone(),
                        signing_secret_file: r.signing_secret_file.as_deref().map(secret_file),
                        urls: r.urls.clone(),
                        resend_interval: r.resend_interval.map(fmt_dur),
                        channel: r.channel.clone(),
                        group: r.group.clone(),
                        to: r.to.clone(),
                        monthly_message_budget: r.monthly_message_budget,
                    })
                    .collect(),
            },
            encryption: self.encryption.as_ref().map(|e| EncryptionView {
                key_files: e
                    .key_files
                    .iter()
                    .map(|k| KeyFileView {
                        id: k.id,
                        file: secret_file(&k.file),
                    })
                    .collect(),
                active: e.active,
            }),
            login_channel: self
                .login_channels
                .iter()
                .map(|c| LoginChannelView {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    secret_file: c.secret_file.as_deref().map(secret_file),
                })
                .collect(),
            login: (!self.login_channels.is_empty()).then(|| {
                let l = &self.login;
                LoginView {
                    refresh_before: fmt_dur(l.refresh_before),
                    horizon: fmt_dur(l.horizon),
                    horizon_margin: fmt_dur(l.horizon_margin),
                    reauth_notify_before: fmt_dur(l.reauth_notify_before),
                    max_requests_per_second: l.max_requests_per_second,
                    admin_api_key_file: l.admin_api_key_file.as_deref().map(secret_file),
                    reader_api_key_file: l.reader_api_key_file.as_deref().map(secret_file),
                }
            }),
            ha: self.ha.as_ref().map(|h| HaView {
                instance_id: h.instance_id.clone(),
                lease: fmt_dur(h.lease),
                renew: fmt_dur(h.renew),
                line_clock_allowance: fmt_dur(h.line_clock_allowance),
            }),
        };
        // The view holds only strings, numbers and arrays, which TOML can
        // always represent; still, a failure is reported, not panicked on.
        toml::to_string_pretty(&view)
            .unwrap_or_else(|e| format!("# cannot render the resolved config: {e}\n"))
    }
}
