//! What a verify answer means for a watched long-lived token, when to ask
//! again, and which alerts stand: pure, so the rules are table-tested
//! without LINE, a clock or a file.
//!
//! - LINE's 200 with `client_id` equal to the channel: valid. A 200 for
//!   another channel: `wrong_channel` (the file holds the wrong channel's
//!   token), as bad as invalid for this channel's consumers.
//! - LINE's 400: invalid (expired, revoked, reissued without grace).
//! - Anything transient: retried with a doubling backoff; after
//!   [`UNKNOWN_AFTER`] failures in a row the result is `unknown`.
//! - The current token invalid or for another channel: critical
//!   [`LONG_LIVED_INVALID`]; unknown: warning [`LONG_LIVED_UNKNOWN`]; the
//!   file unreadable after a change: warning [`LONG_LIVED_FILE_UNREADABLE`];
//!   an old value still valid after the file changed: info
//!   [`LONG_LIVED_OLD_STILL_VALID`] (LINE's 0–24 h reissue grace), one per
//!   old fingerprint, with when it was first and last seen valid.
//!
//! Depends on `store` for the row and alert types only. No value is ever
//! in a summary: tokens are named by fingerprint.

use chrono::{DateTime, Duration, SecondsFormat, Utc};

use crate::domain::ChannelId;
use crate::store::{AlertLabel, AlertSpec, LongLivedResult};

/// The current token is refused by LINE or belongs to another channel.
pub const LONG_LIVED_INVALID: &str = "long_lived_invalid";
/// The current token could not be verified several times in a row.
pub const LONG_LIVED_UNKNOWN: &str = "long_lived_unknown";
/// A value the file held before is still valid (the reissue grace).
pub const LONG_LIVED_OLD_STILL_VALID: &str = "long_lived_old_still_valid";
/// The file changed and can no longer be read as a token.
pub const LONG_LIVED_FILE_UNREADABLE: &str = "long_lived_file_unreadable";

/// Every alert name the watcher of a channel states (its scope).
pub const ALERT_NAMES: &[&str] = &[
    LONG_LIVED_INVALID,
    LONG_LIVED_UNKNOWN,
    LONG_LIVED_OLD_STILL_VALID,
    LONG_LIVED_FILE_UNREADABLE,
];

/// Transient failures in a row after which the result is `unknown`.
pub const UNKNOWN_AFTER: u32 = 3;

/// The first retry after a transient failure; it doubles up to the
/// verify interval.
pub const FIRST_RETRY: Duration = Duration::seconds(30);

/// How much of the verify interval is jitter, each way (±10%): many
/// daemons started together do not verify in step.
pub const JITTER_FRACTION: f64 = 0.1;

/// What one verify call came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 200: the channel it belongs to and the seconds left.
    Valid {
        /// LINE's `client_id`.
        client_id: String,
        /// LINE's `expires_in`.
        expires_in: i64,
    },
    /// 400: LINE does not accept it; LINE's error code if it sent one.
    Rejected {
        /// LINE's `error`.
        code: Option<String>,
    },
    /// No answer worth trusting (timeout, 5xx, 429, a malformed body).
    Failed,
}

/// One watched token, as far as the rules care (no value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    /// `sha256:` and 8 hex digits.
    pub fingerprint: String,
    /// When the daemon first read it from the file.
    pub first_seen_at: DateTime<Utc>,
    /// The last time LINE said it is valid for this channel.
    pub last_valid_at: Option<DateTime<Utc>>,
    /// The last time LINE answered (valid or not).
    pub last_checked_at: Option<DateTime<Utc>>,
    /// The standing result.
    pub result: LongLivedResult,
    /// A few words on it.
    pub detail: String,
    /// Transient failures in a row.
    pub failures: u32,
    /// When to verify next.
    pub next_at: DateTime<Utc>,
}

impl Tracked {
    /// A token just read from the file, to be verified at once.
    pub fn new(fingerprint: String, now: DateTime<Utc>) -> Self {
        Self {
            fingerprint,
            first_seen_at: now,
            last_valid_at: None,
            last_checked_at: None,
            result: LongLivedResult::Pending,
            detail: String::new(),
            failures: 0,
            next_at: now,
        }
    }

    /// True when LINE has said no for this channel (invalid or another
    /// channel's): an old value in this state is dropped from memory.
    pub fn refused(&self) -> bool {
        matches!(
            self.result,
            LongLivedResult::Invalid | LongLivedResult::WrongChannel
        )
    }
}

/// Applies `answer` at `now` to `t`; `interval` is the jittered verify
/// interval to wait after an answer.
pub fn apply(
    t: &mut Tracked,
    channel: &ChannelId,
    now: DateTime<Utc>,
    answer: &Answer,
    interval: Duration,
) {
    match answer {
        Answer::Valid {
            client_id,
            expires_in,
        } => {
            t.failures = 0;
            t.last_checked_at = Some(now);
            if client_id == channel.as_str() {
                t.result = LongLivedResult::Valid;
                t.last_valid_at = Some(now);
                t.detail = format!("valid for {} more days", expires_in / 86_400);
            } else {
                t.result = LongLivedResult::WrongChannel;
                t.detail = format!("LINE says it belongs to channel {client_id}, not {channel}");
            }
            t.next_at = now + interval;
        }
        Answer::Rejected { code } => {
            t.failures = 0;
            t.last_checked_at = Some(now);
            t.result = LongLivedResult::Invalid;
            t.detail = match code {
                Some(code) => format!("LINE refused it ({code})"),
                None => "LINE refused it".to_owned(),
            };
            t.next_at = now + interval;
        }
        Answer::Failed => {
            t.failures = t.failures.saturating_add(1);
            if t.failures >= UNKNOWN_AFTER {
                t.result = LongLivedResult::Unknown;
            }
            t.detail = format!("verify failed {} times in a row", t.failures);
            t.next_at = now + retry_after(t.failures, interval);
        }
    }
}

/// The wait after `failures` transient failures in a row: 30 s, doubling,
/// never longer than the verify interval.
pub fn retry_after(failures: u32, interval: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    (FIRST_RETRY * (1_i32 << doublings)).min(interval)
}

/// `interval` scaled by `1 ± JITTER_FRACTION`, `unit` in `[0, 1)` choosing
/// where: 0 is the shortest, just under 1 the longest.
pub fn jittered(interval: std::time::Duration, unit: f64) -> Duration {
    let factor = 1.0 - JITTER_FRACTION + 2.0 * JITTER_FRACTION * unit.clamp(0.0, 1.0);
    let ms = interval.as_secs_f64() * 1000.0 * factor;
    // A verify interval is at most a day: far inside i64 milliseconds.
    #[allow(clippy::cast_possible_truncation)]
    Duration::milliseconds(ms.round() as i64)
}

fn at(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The alerts a channel's watcher states: about the `current` token
/// (`None` when the file could not be read, or the current is retired),
/// the `old` values still in memory, and the file's problem if any.
pub fn alerts(
    current: Option<&Tracked>,
    old: &[Tracked],
    file_problem: Option<&str>,
) -> Vec<AlertSpec> {
    let mut out = Vec::new();
    if let Some(t) = current {
        match t.result {
            LongLivedResult::Invalid | LongLivedResult::WrongChannel => out.push(AlertSpec {
                group: None,
                label: None,
                alertname: LONG_LIVED_INVALID,
                severity: "critical",
                summary: format!(
                    "the long-lived token in the token file ({}) is not valid for this channel: {}; \
                     reissue it in the LINE Developers Console and replace the file",
                    t.fingerprint, t.detail
                ),
            }),
            LongLivedResult::Unknown => out.push(AlertSpec {
                group: None,
                label: None,
                alertname: LONG_LIVED_UNKNOWN,
                severity: "warning",
                summary: format!(
                    "the long-lived token ({}) could not be verified: {}{}",
                    t.fingerprint,
                    t.detail,
                    t.last_valid_at
                        .map(|v| format!("; last valid at {}", at(v)))
                        .unwrap_or_default()
                ),
            }),
            LongLivedResult::Pending | LongLivedResult::Valid => {}
        }
    }
    for t in old {
        if t.result == LongLivedResult::Valid
            && let Some(last) = t.last_valid_at
        {
            out.push(AlertSpec {
                group: None,
                label: Some(AlertLabel {
                    name: "fingerprint",
                    value: t.fingerprint.clone(),
                }),
                alertname: LONG_LIVED_OLD_STILL_VALID,
                severity: "info",
                summary: format!(
                    "the replaced long-lived token {} is still valid (first seen {}, last seen valid {}); \
                     LINE keeps it up to 24 h after a reissue",
                    t.fingerprint,
                    at(t.first_seen_at),
                    at(last)
                ),
            });
        }
    }
    if let Some(problem) = file_problem {
        out.push(AlertSpec {
            group: None,
            label: None,
            alertname: LONG_LIVED_FILE_UNREADABLE,
            severity: "warning",
            summary: format!(
                "the long-lived token file {problem}; {}",
                if current.is_some() {
                    "the last value read is still watched"
                } else {
                    "no value is served until it can be read"
                }
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
    }

    fn valid(client_id: &str) -> Answer {
        Answer::Valid {
            client_id: client_id.into(),
            expires_in: 3_138_007_490,
        }
    }

    #[test]
    fn answers_set_the_result_and_the_next_verify() {
        let ch = ChannelId::new("1000");
        let hour = Duration::hours(1);
        // (answers in order, result after, failures after, next verify after the last)
        let table: Vec<(Vec<Answer>, LongLivedResult, u32, Duration)> = vec![
            (vec![valid("1000")], LongLivedResult::Valid, 0, hour),
            (vec![valid("2000")], LongLivedResult::WrongChannel, 0, hour),
            (
                vec![Answer::Rejected {
                    code: Some("invalid_request".into()),
                }],
                LongLivedResult::Invalid,
                0,
                hour,
            ),
            (
                vec![Answer::Failed],
                LongLivedResult::Pending,
                1,
                Duration::seconds(30),
            ),
            (
                vec![valid("1000"), Answer::Failed, Answer::Failed],
                LongLivedResult::Valid,
                2,
                Duration::seconds(60),
            ),
            (
                vec![Answer::Failed, Answer::Failed, Answer::Failed],
                LongLivedResult::Unknown,
                3,
                Duration::seconds(120),
            ),
            (
                vec![
                    Answer::Failed,
                    Answer::Failed,
                    Answer::Failed,
                    valid("1000"),
                ],
                LongLivedResult::Valid,
                0,
                hour,
            ),
        ];
        for (answers, result, failures, wait) in table {
            let mut t = Tracked::new("sha256:00000000".into(), t0());
            for a in &answers {
                apply(&mut t, &ch, t0(), a, hour);
            }
            assert_eq!(
                (t.result, t.failures, t.next_at - t0()),
                (result, failures, wait),
                "{answers:?}"
            );
        }
    }

    #[test]
    fn retries_double_up_to_the_interval() {
        let hour = Duration::hours(1);
        let waits: Vec<i64> = (1..=9)
            .map(|f| retry_after(f, hour).num_seconds())
            .collect();
        assert_eq!(waits, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(retry_after(u32::MAX, hour), hour);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(jittered(hour, 0.0), Duration::seconds(3240));
        assert_eq!(jittered(hour, 0.5), Duration::seconds(3600));
        assert_eq!(jittered(hour, 1.0), Duration::seconds(3960));
    }

    #[test]
    fn alerts_follow_the_current_and_the_old_tokens() {
        let ch = ChannelId::new("1000");
        let hour = Duration::hours(1);
        let names = |specs: Vec<AlertSpec>| -> Vec<(&'static str, &'static str)> {
            specs.iter().map(|s| (s.alertname, s.severity)).collect()
        };
        let mut current = Tracked::new("sha256:11111111".into(), t0());
        assert!(
            alerts(Some(&current), &[], None).is_empty(),
            "pending raises nothing"
        );
        apply(&mut current, &ch, t0(), &valid("1000"), hour);
        assert!(alerts(Some(&current), &[], None).is_empty());
        let mut old = Tracked::new("sha256:22222222".into(), t0() - Duration::days(9));
        apply(&mut old, &ch, t0(), &valid("1000"), hour);
        let specs = alerts(Some(&current), std::slice::from_ref(&old), None);
        assert_eq!(names(specs.clone()), [(LONG_LIVED_OLD_STILL_VALID, "info")]);
        assert!(
            specs[0].summary.contains("first seen 2027-01-06T08:00:00Z"),
            "{}",
            specs[0].summary
        );
        assert_eq!(
            specs[0].label.as_ref().map(|l| l.value.as_str()),
            Some("sha256:22222222")
        );
        apply(
            &mut current,
            &ch,
            t0(),
            &Answer::Rejected { code: None },
            hour,
        );
        assert_eq!(
            names(alerts(Some(&current), &[], Some("cannot be read"))),
            [
                (LONG_LIVED_INVALID, "critical"),
                (LONG_LIVED_FILE_UNREADABLE, "warning")
            ]
        );
        apply(&mut current, &ch, t0(), &valid("2000"), hour);
        assert_eq!(
            names(alerts(Some(&current), &[], None)),
            [(LONG_LIVED_INVALID, "critical")]
        );
        for _ in 0..UNKNOWN_AFTER {
            apply(&mut current, &ch, t0(), &Answer::Failed, hour);
        }
        assert_eq!(
            names(alerts(Some(&current), &[], None)),
            [(LONG_LIVED_UNKNOWN, "warning")]
        );
        assert!(
            alerts(None, &[], None).is_empty(),
            "a retired token raises nothing"
        );
    }
}
