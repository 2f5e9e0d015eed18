//! The receivers: what a notification becomes on the wire for each type,
//! and how an answer is read.
//!
//! - `webhook`: Alertmanager's v4 payload in one request, or linetokd's
//!   event in one request per alert; signed per Standard Webhooks when a
//!   secret is configured (`webhook-id` is the notification's stable id, so
//!   a retry carries the same one; one-event requests get `{id}.{n}`).
//! - `slack`: one message per notification (the notifier keeps to one a
//!   second per URL).
//! - `alertmanager`: `POST /api/v2/alerts` to every configured URL.
//!
//! A 2xx answer is delivered; 429, 408 and 5xx (and no answer) are
//! retried, honouring `Retry-After` (seconds); any other answer is a
//! rejection that retrying will not fix (Alertmanager's own notifier does
//! not retry 4xx either). Redirects are not followed: a webhook URL that
//! redirects is a wrong URL, and following it would hand the body (and a
//! signature) to another host.
//!
//! URLs embed secrets: they live in [`Endpoint`], whose `Debug` hides
//! them, and no error or reason built here contains one (reqwest's errors
//! are stripped of their URL).

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};

use super::render::{self, Context, Told};
use super::route::Severity;
use super::sign;
use crate::domain::{AccessToken, ChannelId, GroupName};
use crate::secret::Secret;

/// A URL that may embed a secret: shown as `<hidden>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint(pub reqwest::Url);

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Endpoint(<hidden>)")
    }
}

/// What a webhook request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    /// Alertmanager's webhook payload, version 4, one request per
    /// notification.
    Alertmanager,
    /// linetokd's event, one request per alert.
    Linetokd,
}

/// A receiver's type and where it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiverKind {
    /// An HTTP endpoint taking JSON.
    Webhook {
        /// Its URL.
        url: Endpoint,
        /// What it gets.
        format: WebhookFormat,
        /// The Standard Webhooks secret (`whsec_...`), when signing.
        secret: Option<Secret>,
    },
    /// A Slack incoming webhook.
    Slack {
        /// Its URL.
        url: Endpoint,
    },
    /// Alertmanager's API.
    Alertmanager {
        /// Base URLs (`http://host:9093`); `/api/v2/alerts` is appended.
        urls: Vec<reqwest::Url>,
        /// How often firing alerts are pushed again.
        resend_interval: Duration,
    },
    /// A LINE push message, sent with the current token of a group
    /// linetokd manages.
    Line {
        /// LINE's API base URL (`daemon.line_api`).
        api: reqwest::Url,
        /// The channel whose token is used.
        channel: ChannelId,
        /// The group whose current token is used.
        group: GroupName,
        /// Recipients: one push each.
        to: Vec<String>,
        /// Messages allowed per calendar month (UTC).
        monthly_budget: u32,
    },
}

/// One configured receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receiver {
    /// Its name.
    pub name: String,
    /// The least severe alert it gets.
    pub min_severity: Severity,
    /// Per-request timeout.
    pub timeout: StdDuration,
    /// Its type.
    pub kind: ReceiverKind,
}

impl Receiver {
    /// Its own repeat interval, if its type has one (Alertmanager's API
    /// forgets alerts not re-sent).
    pub fn repeat(&self) -> Option<Duration> {
        match &self.kind {
            ReceiverKind::Alertmanager {
                resend_interval, ..
            } => Some(*resend_interval),
            _ => None,
        }
    }

    /// The Slack URL, which is rate limited; `None` for other types.
    pub fn rate_limited_url(&self) -> Option<&str> {
        match &self.kind {
            ReceiverKind::Slack { url } => Some(url.0.as_str()),
            _ => None,
        }
    }
}

/// One HTTP request of a notification, rendered and not yet sent.
#[derive(Debug, Clone)]
pub struct Request {
    /// Where (may hold a secret: never shown).
    pub url: Endpoint,
    /// The JSON body.
    pub body: String,
    /// Standard Webhooks headers (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`) when the receiver signs; `X-Line-Retry-Key`
    /// for a LINE push.
    pub headers: Vec<(&'static str, String)>,
    /// The bearer token of a LINE push.
    pub bearer: Option<AccessToken>,
    /// True for a LINE push: 409 means a retry of a push LINE accepted,
    /// 429 its monthly limit.
    pub line: bool,
}

/// The requests that make notification `id` for `receiver` at `now`;
/// `token` is the bearer of a LINE push (none without it).
pub fn requests(
    receiver: &Receiver,
    ctx: Context<'_>,
    id: &str,
    now: DateTime<Utc>,
    alerts: &[Told],
    token: Option<&AccessToken>,
) -> Vec<Request> {
    match &receiver.kind {
        ReceiverKind::Webhook {
            url,
            format,
            secret,
        } => {
            let bodies: Vec<(String, String)> = match format {
                WebhookFormat::Alertmanager => {
                    vec![(id.to_owned(), render::alertmanager_webhook(ctx, alerts))]
                }
                WebhookFormat::Linetokd => alerts
                    .iter()
                    .enumerate()
                    .map(|(n, a)| {
                        let event_id = format!("{id}.{n}");
                        let body = render::linetokd_event(ctx, &event_id, a);
                        (event_id, body)
                    })
                    .collect(),
            };
            let key = secret
                .as_ref()
                .and_then(|s| sign::decode_secret(s.expose()));
            bodies
                .into_iter()
                .map(|(event_id, body)| {
                    let headers = key.as_ref().map_or_else(Vec::new, |key| {
                        let ts = now.timestamp();
                        vec![
                            (
                                "webhook-signature",
                                sign::sign(key, &event_id, ts, body.as_bytes()),
                            ),
                            ("webhook-id", event_id.clone()),
                            ("webhook-timestamp", ts.to_string()),
                        ]
                    });
                    Request {
                        url: url.clone(),
                        body,
                        headers,
                        bearer: None,
                        line: false,
                    }
                })
                .collect()
        }
        ReceiverKind::Slack { url } => vec![Request {
            url: url.clone(),
            body: render::slack_message(ctx, alerts),
            headers: Vec::new(),
            bearer: None,
            line: false,
        }],
        ReceiverKind::Alertmanager {
            urls,
            resend_interval,
        } => {
            let body = render::alertmanager_push(ctx, now, *resend_interval, alerts);
            urls.iter()
                .map(|base| Request {
                    url: Endpoint(api_url(base)),
                    body: body.clone(),
                    headers: Vec::new(),
                    bearer: None,
                    line: false,
                })
                .collect()
        }
        ReceiverKind::Line { api, to, .. } => {
            let Some(token) = token else {
                return Vec::new();
            };
            let text = render::line_text(ctx, alerts);
            let mut url = api.clone();
            url.set_path("/v2/bot/message/push");
            to.iter()
                .enumerate()
                .map(|(n, recipient)| Request {
                    url: Endpoint(url.clone()),
                    body: serde_json::json!({
                        "to": recipient,
                        "messages": [{"type": "text", "text": text}],
                    })
                    .to_string(),
                    headers: vec![("X-Line-Retry-Key", retry_key(id, n))],
                    bearer: Some(token.clone()),
                    line: true,
                })
                .collect()
        }
    }
}

/// The `X-Line-Retry-Key` of the push of notification `id` to its `n`-th
/// recipient: a UUID version 4 in form (LINE checks the form), made from a
/// hash of both so every retry of the push, even after a restart, carries
/// the same key and LINE accepts it once (a repeat answers 409).
pub fn retry_key(id: &str, n: usize) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, format!("{id}/{n}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.as_ref()[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// `base` with `/api/v2/alerts` appended to its path.
fn api_url(base: &reqwest::Url) -> reqwest::Url {
    let mut url = base.clone();
    let path = format!("{}/api/v2/alerts", base.path().trim_end_matches('/'));
    url.set_path(&path);
    url
}

/// How a request (or a whole notification) went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer.
    Delivered,
    /// Worth retrying: no answer, 408, 429 or 5xx. `retry_after` is the
    /// receiver's `Retry-After`, if it sent one.
    Failed {
        /// Why, without the URL.
        reason: String,
        /// The receiver's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// Any other answer: retrying will not help.
    Rejected {
        /// Why, without the URL.
        reason: String,
    },
    /// LINE answered a push with 429: its monthly message limit is
    /// reached; nothing more is pushed until the month turns.
    QuotaExhausted,
}

impl Outcome {
    /// The outcome of a notification made of several requests: delivered
    /// when all were; else retried when any may succeed later (the
    /// longest `Retry-After` wins); else rejected.
    pub fn combine(outcomes: Vec<Outcome>) -> Outcome {
        let mut failed: Option<Outcome> = None;
        let mut rejected: Option<Outcome> = None;
        for o in outcomes {
            match o {
                Outcome::Delivered => {}
                Outcome::Failed {
                    reason,
                    retry_after,
                } => {
                    let longest = match &failed {
                        Some(Outcome::Failed {
                            retry_after: Some(r),
                            ..
                        }) => Some(retry_after.map_or(*r, |n| n.max(*r))),
                        _ => retry_after,
                    };
                    failed = Some(Outcome::Failed {
                        reason,
                        retry_after: longest,
                    });
                }
                Outcome::QuotaExhausted => rejected = Some(Outcome::QuotaExhausted),
                r @ Outcome::Rejected { .. } => {
                    if rejected.is_none() {
                        rejected = Some(r);
                    }
                }
            }
        }
        failed.or(rejected).unwrap_or(Outcome::Delivered)
    }
}

/// Sends one request, with `timeout`.
pub async fn post(client: &reqwest::Client, timeout: StdDuration, request: &Request) -> Outcome {
    let mut builder = client
        .post(request.url.0.clone())
        .timeout(timeout)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(request.body.clone());
    for (name, value) in &request.headers {
        builder = builder.header(*name, value);
    }
    if let Some(token) = &request.bearer {
        builder = builder.bearer_auth(token.expose());
    }
    let response = match builder.send().await {
        Ok(r) => r,
        Err(e) => {
            // Without the URL: it may embed a secret.
            let e = e.without_url();
            let what = if e.is_timeout() {
                "timed out".to_owned()
            } else {
                format!("failed: {e}")
            };
            return Outcome::Failed {
                reason: format!("the request {what}"),
                retry_after: None,
            };
        }
    };
    let status = response.status();
    // A LINE push retried with the same X-Line-Retry-Key answers 409 once
    // the first was accepted: delivered.
    if status.is_success() || (request.line && status.as_u16() == 409) {
        return Outcome::Delivered;
    }
    if request.line && status.as_u16() == 429 {
        return Outcome::QuotaExhausted;
    }
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok())
        .map(|secs| Duration::seconds(i64::from(secs.min(86_400))));
    let reason = format!("the receiver answered {status}");
    if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
        Outcome::Failed {
            reason,
            retry_after,
        }
    } else {
        Outcome::Rejected { reason }
    }
}

/// What `linetokd alerts test` sends: one synthetic firing alert, at the
/// receiver's own `min_severity` so it passes its filter.
pub fn test_alert(receiver: &Receiver, now: DateTime<Utc>) -> Told {
    Told {
        fingerprint: "-/-/linetokd_test".into(),
        channel: None,
        channel_name: None,
        group: None,
        label: None,
        alertname: "linetokd_test".into(),
        severity: receiver.min_severity.as_str().into(),
        summary: "A test notification sent by `linetokd alerts test`; nothing is wrong.".into(),
        started_at: now,
        resolved_at: None,
        kind: crate::store::NotifyKind::Firing,
    }
}

/// Sends [`test_alert`] to `receiver` as a notification with a fresh id
/// and returns how each request went.
///
/// # Errors
/// When the HTTP client cannot be built.
pub async fn send_test(
    receiver: &Receiver,
    external_url: Option<&str>,
    now: DateTime<Utc>,
    token: Option<&AccessToken>,
) -> Result<Vec<Outcome>, reqwest::Error> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let ctx = Context {
        receiver: &receiver.name,
        external_url,
    };
    let id = super::notifier::new_id();
    let mut outcomes = Vec::new();
    for request in requests(receiver, ctx, &id, now, &[test_alert(receiver, now)], token) {
        outcomes.push(post(&client, receiver.timeout, &request).await);
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NotifyKind;

    fn told() -> Told {
        Told {
            fingerprint: "1000/backend/no_live_token".into(),
            channel: Some("1000".into()),
            label: None,
            channel_name: None,
            group: Some("backend".into()),
            alertname: "no_live_token".into(),
            severity: "critical".into(),
            summary: "s".into(),
            started_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            resolved_at: None,
            kind: NotifyKind::Firing,
        }
    }

    fn webhook(format: WebhookFormat, secret: Option<&str>) -> Receiver {
        Receiver {
            name: "ops".into(),
            min_severity: Severity::Warning,
            timeout: StdDuration::from_secs(1),
            kind: ReceiverKind::Webhook {
                url: Endpoint(reqwest::Url::parse("https://hooks.example/T/SECRET").unwrap()),
                format,
                secret: secret.map(Secret::new),
            },
        }
    }

    const CTX: Context<'static> = Context {
        receiver: "ops",
        external_url: None,
    };

    fn requests_without_token(
        r: &Receiver,
        ctx: Context<'_>,
        id: &str,
        now: DateTime<Utc>,
        alerts: &[Told],
    ) -> Vec<Request> {
        requests(r, ctx, id, now, alerts, None)
    }

    #[test]
    fn signed_requests_carry_the_standard_headers_and_one_event_requests_their_own_ids() {
        let now = DateTime::from_timestamp(1_700_000_100, 0).unwrap();
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let r = webhook(WebhookFormat::Linetokd, Some(secret));
        let reqs = requests(&r, CTX, "n1", now, &[told(), told()], None);
        assert_eq!(reqs.len(), 2);
        let key = sign::decode_secret(secret).unwrap();
        for (n, req) in reqs.iter().enumerate() {
            let header = |name: &str| {
                req.headers
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.clone())
                    .unwrap()
            };
            assert_eq!(header("webhook-id"), format!("n1.{n}"));
            assert_eq!(header("webhook-timestamp"), "1700000100");
            assert_eq!(
                header("webhook-signature"),
                sign::sign(&key, &format!("n1.{n}"), 1_700_000_100, req.body.as_bytes())
            );
        }
        let unsigned = requests_without_token(
            &webhook(WebhookFormat::Alertmanager, None),
            CTX,
            "n1",
            now,
            &[told()],
        );
        assert_eq!(unsigned.len(), 1);
        assert!(unsigned[0].headers.is_empty());
        assert!(!format!("{unsigned:?}").contains("SECRET"));
    }

    #[test]
    fn alertmanager_pushes_go_to_every_urls_api() {
        let r = Receiver {
            name: "am".into(),
            min_severity: Severity::Warning,
            timeout: StdDuration::from_secs(1),
            kind: ReceiverKind::Alertmanager {
                urls: vec![
                    reqwest::Url::parse("http://a:9093").unwrap(),
                    reqwest::Url::parse("http://b:9093/am/").unwrap(),
                ],
                resend_interval: Duration::minutes(1),
            },
        };
        let now = DateTime::from_timestamp(1_700_000_100, 0).unwrap();
        let urls: Vec<String> = requests(&r, CTX, "n", now, &[told()], None)
            .into_iter()
            .map(|q| q.url.0.to_string())
            .collect();
        assert_eq!(
            urls,
            [
                "http://a:9093/api/v2/alerts",
                "http://b:9093/am/api/v2/alerts"
            ]
        );
    }

    #[test]
    fn outcomes_combine_to_the_worst_with_the_longest_retry_after() {
        let failed = |s: Option<i64>| Outcome::Failed {
            reason: "x".into(),
            retry_after: s.map(Duration::seconds),
        };
        let rejected = Outcome::Rejected { reason: "r".into() };
        assert_eq!(
            Outcome::combine(vec![Outcome::Delivered]),
            Outcome::Delivered
        );
        assert_eq!(
            Outcome::combine(vec![Outcome::Delivered, rejected.clone()]),
            rejected
        );
        assert_eq!(
            Outcome::combine(vec![
                failed(Some(30)),
                rejected,
                failed(None),
                failed(Some(5))
            ]),
            failed(Some(30))
        );
    }
}
