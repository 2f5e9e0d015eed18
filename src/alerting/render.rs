//! What each receiver is sent, as JSON text: Alertmanager's webhook payload
//! (version 4), linetokd's own one-alert event, a Slack message, and the
//! body of Alertmanager's `POST /api/v2/alerts`.
//!
//! Pure: the notifier hands in alerts whose every text was already screened
//! against the stored token values ([`Told`]), and screens the rendered
//! body once more before sending it.
//!
//! Depends on `store`'s [`NotifyKind`], serde_json and aws-lc-rs (for
//! Alertmanager-style fingerprints).

use std::collections::BTreeMap;

use aws_lc_rs::digest;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::store::NotifyKind;

/// Most alerts listed in one webhook payload; the rest are counted in
/// `truncatedAlerts`, as Alertmanager does with `max_alerts`.
pub const MAX_ALERTS_PER_PAYLOAD: usize = 200;
/// Most alerts listed in one Slack message; the rest are counted.
pub const MAX_SLACK_LINES: usize = 20;

/// Alertmanager's "no end" time, which its webhook sends for firing
/// alerts.
const NO_END: &str = "0001-01-01T00:00:00Z";

/// One alert as a notification tells it. Every text is screened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Told {
    /// linetokd's fingerprint, `channel/group/alertname`.
    pub fingerprint: String,
    /// The channel ID; `None` for an alert about the daemon as a whole.
    pub channel: Option<String>,
    /// The channel's configured name, if known.
    pub channel_name: Option<String>,
    /// The group, if any.
    pub group: Option<String>,
    /// The extra label (`key_id`, `sink`, `hook`, `receiver`), if any.
    pub label: Option<(String, String)>,
    /// The alert's name.
    pub alertname: String,
    /// `warning` or `critical`.
    pub severity: String,
    /// The sentence for people.
    pub summary: String,
    /// When the alert started firing.
    pub started_at: DateTime<Utc>,
    /// When it resolved, if it did.
    pub resolved_at: Option<DateTime<Utc>>,
    /// What this notification says about it.
    pub kind: NotifyKind,
}

impl Told {
    /// Its labels: `alertname`, `severity`, then those it has of
    /// `channel`, `channel_name`, `group` and its extra label.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([
            ("alertname".to_owned(), self.alertname.clone()),
            ("severity".to_owned(), self.severity.clone()),
        ]);
        if let Some(channel) = &self.channel {
            labels.insert("channel".to_owned(), channel.clone());
        }
        if let Some(name) = &self.channel_name {
            labels.insert("channel_name".to_owned(), name.clone());
        }
        if let Some(group) = &self.group {
            labels.insert("group".to_owned(), group.clone());
        }
        if let Some((name, value)) = &self.label {
            labels.insert(name.clone(), value.clone());
        }
        labels
    }

    /// Where it is, for people: `channel/group [label=value]`, the
    /// channel by its configured name when known, `linetokd` for an alert
    /// about the daemon as a whole.
    pub fn place(&self) -> String {
        let channel = self
            .channel_name
            .as_deref()
            .or(self.channel.as_deref())
            .unwrap_or("linetokd");
        let mut place = match &self.group {
            Some(g) => format!("{channel}/{g}"),
            None => channel.to_owned(),
        };
        if let Some((name, value)) = &self.label {
            place.push_str(&format!(" [{name}={value}]"));
        }
        place
    }

    fn annotations(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([("summary", self.summary.clone())])
    }

    /// When it ends as this notification says: its resolve time for a
    /// resolve, none for a firing one.
    fn ends_at(&self) -> Option<DateTime<Utc>> {
        match self.kind {
            NotifyKind::Firing => None,
            NotifyKind::Resolved => self.resolved_at,
        }
    }

    /// Alertmanager's fingerprints are 16 hex digits of a hash of the
    /// labels; consumers that key on them get the same shape here.
    fn am_fingerprint(&self) -> String {
        let d = digest::digest(&digest::SHA256, self.fingerprint.as_bytes());
        d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What every payload shares.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The receiver's name.
    pub receiver: &'a str,
    /// `[alerts] external_url`: where people look at the daemon.
    pub external_url: Option<&'a str>,
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Alertmanager's webhook payload, version 4, for `alerts` (at most
/// [`MAX_ALERTS_PER_PAYLOAD`] listed). The group is the receiver: linetokd
/// groups by nothing, so `groupLabels` is empty.
pub fn alertmanager_webhook(ctx: Context<'_>, alerts: &[Told]) -> String {
    let status = if alerts.iter().any(|a| a.kind == NotifyKind::Firing) {
        "firing"
    } else {
        "resolved"
    };
    let listed = &alerts[..alerts.len().min(MAX_ALERTS_PER_PAYLOAD)];
    let external = ctx.external_url.unwrap_or_default();
    let body = json!({
        "version": "4",
        "groupKey": format!("{{}}:{{receiver={:?}}}", ctx.receiver),
        "truncatedAlerts": alerts.len() - listed.len(),
        "status": status,
        "receiver": ctx.receiver,
        "groupLabels": {},
        "commonLabels": common(alerts.iter().map(Told::labels)),
        "commonAnnotations": common(alerts.iter().map(|a| a.annotations())),
        "externalURL": external,
        "alerts": listed.iter().map(|a| json!({
            "status": a.kind.as_str(),
            "labels": a.labels(),
            "annotations": a.annotations(),
            "startsAt": time(a.started_at),
            "endsAt": a.ends_at().map_or(NO_END.to_owned(), time),
            "generatorURL": external,
            "fingerprint": a.am_fingerprint(),
        })).collect::<Vec<Value>>(),
    });
    body.to_string()
}

/// linetokd's own event for one alert: what happened, flat.
pub fn linetokd_event(ctx: Context<'_>, id: &str, alert: &Told) -> String {
    json!({
        "id": id,
        "receiver": ctx.receiver,
        "status": alert.kind.as_str(),
        "alertname": alert.alertname,
        "severity": alert.severity,
        "labels": alert.labels(),
        "summary": alert.summary,
        "startsAt": time(alert.started_at),
        "endsAt": alert.ends_at().map(time),
        "fingerprint": alert.fingerprint,
        "generatorURL": ctx.external_url,
    })
    .to_string()
}

/// A Slack incoming-webhook message: a `text` line per alert (at most
/// [`MAX_SLACK_LINES`]), also as one mrkdwn section block.
pub fn slack_message(ctx: Context<'_>, alerts: &[Told]) -> String {
    let mut lines = plain_lines(ctx, alerts);
    if let Some(url) = ctx.external_url {
        lines.pop();
        lines.push(format!("<{url}|status>"));
    }
    let text = slack_escape(&lines.join("\n"));
    json!({
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
    })
    .to_string()
}

/// LINE's limit on one text message.
pub const MAX_LINE_TEXT_CHARS: usize = 5_000;

/// The text of a LINE push: a line per alert (at most
/// [`MAX_SLACK_LINES`]), cut to LINE's 5,000 characters.
pub fn line_text(ctx: Context<'_>, alerts: &[Told]) -> String {
    let text = plain_lines(ctx, alerts).join("\n");
    match text.char_indices().nth(MAX_LINE_TEXT_CHARS - 1) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// The body of Alertmanager's `POST /api/v2/alerts`: firing alerts end
/// `3 × resend` from `now` (so Alertmanager keeps them while we keep
/// re-sending, and resolves them if we stop), resolved ones at their
/// resolve time.
pub fn alertmanager_push(
    ctx: Context<'_>,
    now: DateTime<Utc>,
    resend: Duration,
    alerts: &[Told],
) -> String {
    let body: Vec<Value> = alerts
        .iter()
        .map(|a| {
            let ends = a.ends_at().unwrap_or(now + resend * 3);
            let mut alert = json!({
                "labels": a.labels(),
                "annotations": a.annotations(),
                "startsAt": time(a.started_at),
                "endsAt": time(ends),
            });
            if let (Some(url), Some(obj)) = (ctx.external_url, alert.as_object_mut()) {
                obj.insert("generatorURL".into(), Value::String(url.to_owned()));
            }
            alert
        })
        .collect();
    Value::Array(body).to_string()
}

/// A head line (`linetokd: 2 firing, 1 resolved`), a line per alert (at
/// most [`MAX_SLACK_LINES`]), a count of the rest, and the status URL.
fn plain_lines(ctx: Context<'_>, alerts: &[Told]) -> Vec<String> {
    let firing = alerts
        .iter()
        .filter(|a| a.kind == NotifyKind::Firing)
        .count();
    let resolved = alerts.len() - firing;
    let mut head = String::from("linetokd:");
    if firing > 0 {
        head.push_str(&format!(" {firing} firing"));
    }
    if resolved > 0 {
        head.push_str(&format!(
            "{} {resolved} resolved",
            if firing > 0 { "," } else { "" }
        ));
    }
    let mut lines = vec![head];
    for a in alerts.iter().take(MAX_SLACK_LINES) {
        let place = a.place();
        let mark = match a.kind {
            NotifyKind::Firing => a.severity.to_uppercase(),
            NotifyKind::Resolved => "RESOLVED".to_owned(),
        };
        lines.push(format!(
            "• [{mark}] {} on {place}: {}",
            a.alertname, a.summary
        ));
    }
    if alerts.len() > MAX_SLACK_LINES {
        lines.push(format!("… and {} more", alerts.len() - MAX_SLACK_LINES));
    }
    if let Some(url) = ctx.external_url {
        lines.push(url.to_owned());
    }
    lines
}

/// The pairs every map in `maps` shares.
fn common<K: Ord>(mut maps: impl Iterator<Item = BTreeMap<K, String>>) -> BTreeMap<K, String> {
    let Some(mut shared) = maps.next() else {
        return BTreeMap::new();
    };
    for m in maps {
        shared.retain(|k, v| m.get(k) == Some(v));
    }
    shared
}

/// Slack's three control characters in message text.
fn slack_escape(text: &str) -> String {
    // The status link's angle brackets are Slack syntax and must survive:
    // escape everything, then restore a trailing `<url|status>`.
    let mut out = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    if let Some(start) = out.rfind("\n&lt;")
        && out.ends_with("|status&gt;")
    {
        let link = out[start + 5..out.len() - 4].replace("&amp;", "&");
        out.truncate(start);
        out.push_str(&format!("\n<{link}>"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn told(name: &str, group: Option<&str>, kind: NotifyKind) -> Told {
        Told {
            fingerprint: format!("1000/{}/{name}", group.unwrap_or("-")),
            channel: Some("1000".into()),
            label: None,
            channel_name: Some("shop-bot".into()),
            group: group.map(str::to_owned),
            alertname: name.into(),
            severity: "critical".into(),
            summary: format!("{name} <&> happened"),
            started_at: t0(),
            resolved_at: (kind == NotifyKind::Resolved).then(|| t0() + Duration::hours(1)),
            kind,
        }
    }

    const CTX: Context<'static> = Context {
        receiver: "ops",
        external_url: Some("http://linetokd.internal:9464/status"),
    };

    #[test]
    fn the_webhook_payload_has_alertmanagers_v4_shape() {
        let alerts = [
            told("no_live_token", Some("backend"), NotifyKind::Firing),
            told("deadline_at_risk", Some("crm"), NotifyKind::Resolved),
        ];
        let v: Value = serde_json::from_str(&alertmanager_webhook(CTX, &alerts)).unwrap();
        for key in [
            "receiver",
            "status",
            "alerts",
            "groupLabels",
            "commonLabels",
            "commonAnnotations",
            "externalURL",
            "version",
            "groupKey",
            "truncatedAlerts",
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
        assert_eq!(v["version"], "4");
        assert_eq!(v["status"], "firing");
        assert_eq!(v["truncatedAlerts"], 0);
        assert_eq!(
            v["commonLabels"],
            json!({"severity": "critical", "channel": "1000", "channel_name": "shop-bot"})
        );
        let a = &v["alerts"][0];
        assert_eq!(a["status"], "firing");
        assert_eq!(a["labels"]["alertname"], "no_live_token");
        assert_eq!(a["labels"]["group"], "backend");
        assert_eq!(a["startsAt"], "2023-11-14T22:13:20.000Z");
        assert_eq!(a["endsAt"], NO_END);
        assert_eq!(a["fingerprint"].as_str().map(str::len), Some(16));
        assert_eq!(v["alerts"][1]["status"], "resolved");
        assert_eq!(v["alerts"][1]["endsAt"], "2023-11-14T23:13:20.000Z");
        // Only resolves: the whole payload is resolved.
        let v: Value = serde_json::from_str(&alertmanager_webhook(CTX, &alerts[1..])).unwrap();
        assert_eq!(v["status"], "resolved");
    }

    #[test]
    fn a_long_batch_is_truncated_and_counted() {
        let alerts: Vec<Told> = (0..MAX_ALERTS_PER_PAYLOAD + 5)
            .map(|i| told(&format!("a{i}"), None, NotifyKind::Firing))
            .collect();
        let v: Value = serde_json::from_str(&alertmanager_webhook(CTX, &alerts)).unwrap();
        assert_eq!(v["truncatedAlerts"], 5);
        assert_eq!(
            v["alerts"].as_array().map(Vec::len),
            Some(MAX_ALERTS_PER_PAYLOAD)
        );
    }

    #[test]
    fn slack_text_is_escaped_but_keeps_its_link() {
        let alerts = [
            told("no_live_token", Some("backend"), NotifyKind::Firing),
            told("x", None, NotifyKind::Resolved),
        ];
        let v: Value = serde_json::from_str(&slack_message(CTX, &alerts)).unwrap();
        let text = v["text"].as_str().unwrap();
        assert!(
            text.starts_with("linetokd: 1 firing, 1 resolved\n"),
            "{text}"
        );
        assert!(
            text.contains("• [CRITICAL] no_live_token on shop-bot/backend: no_live_token &lt;&amp;&gt; happened"),
            "{text}"
        );
        assert!(text.contains("• [RESOLVED] x on shop-bot"), "{text}");
        assert!(
            text.ends_with("\n<http://linetokd.internal:9464/status|status>"),
            "{text}"
        );
        assert_eq!(v["blocks"][0]["text"]["text"], text);
    }

    #[test]
    fn the_push_body_ends_firing_alerts_three_resends_ahead() {
        let alerts = [
            told("no_live_token", Some("backend"), NotifyKind::Firing),
            told("x", None, NotifyKind::Resolved),
        ];
        let now = t0() + Duration::minutes(10);
        let v: Value =
            serde_json::from_str(&alertmanager_push(CTX, now, Duration::minutes(1), &alerts))
                .unwrap();
        assert_eq!(v[0]["endsAt"], "2023-11-14T22:26:20.000Z");
        assert_eq!(v[1]["endsAt"], "2023-11-14T23:13:20.000Z");
        assert_eq!(v[0]["labels"]["alertname"], "no_live_token");
        assert_eq!(v[0]["generatorURL"], "http://linetokd.internal:9464/status");
    }

    #[test]
    fn the_linetokd_event_is_flat() {
        let a = told("no_live_token", Some("backend"), NotifyKind::Resolved);
        let v: Value = serde_json::from_str(&linetokd_event(CTX, "id-1", &a)).unwrap();
        assert_eq!(v["id"], "id-1");
        assert_eq!(v["status"], "resolved");
        assert_eq!(v["labels"]["group"], "backend");
        assert_eq!(v["endsAt"], "2023-11-14T23:13:20.000Z");
    }
}
