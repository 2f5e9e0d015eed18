//! `linetokd login import`: bulk-imports LINE Login grants, one JSON line
//! each, through the running daemon's API (`POST
//! /v1/login/{channel}/grants`).
//!
//! The daemon stays the one writer, and every import passes its login
//! channel's token bucket (`max_requests_per_second`, shared with the
//! refreshes), so a bulk import keeps to the rate LINE is sent however
//! fast this side reads. Lines are sent one at a time, in file order: the
//! bucket, not this client, sets the pace, and each line's outcome is
//! known before the next is sent.
//!
//! What each answer means here:
//! - 201: imported (or `replaced` an earlier grant of the subject).
//! - 422: refused; the API names the field, which is reported with the
//!   line number.
//! - 429: the line is sent again after `Retry-After` (1 s without one),
//!   as often as it takes: a line is never skipped.
//! - 502, 503, 500 or no answer in time: sent again after a backoff, up to
//!   [`MAX_ATTEMPTS`]; then reported as refused with the reason.
//! - 401, 404: the key or the channel is wrong for the whole file: the
//!   import stops ([`ImportError::Refused`]).
//! - no connection: the import stops ([`ImportError::Unreachable`]) naming
//!   the address and how far it got.
//!
//! A line that is not a JSON object is reported by its number and not sent.
//! Nothing here prints or returns a token value: a line is named by its
//! number and, when it has one, by [`subject_hash`] of its subject.
//!
//! Depends on `domain` (the subject hash) and `secret`; reads no config,
//! clock or environment: `cli` passes the address, the channel, the admin
//! key and the input.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _};

use crate::domain::subject_hash;
use crate::secret::Secret;

/// How often a line LINE or the daemon could not answer is sent in all.
pub const MAX_ATTEMPTS: u32 = 5;

/// The first wait after a failed attempt; doubled per attempt.
const BACKOFF_BASE: Duration = Duration::from_millis(500);

/// The wait after a 429 without a usable `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The longest `Retry-After` honoured as given (a longer one is capped, so
/// a bad header cannot park the import for a day).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// How long one request may take: the daemon holds an import while its
/// channel's bucket is busy with refreshes, then calls LINE.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Where and what to import.
#[derive(Debug, Clone)]
pub struct Target {
    /// The daemon's HTTP listener.
    pub http: SocketAddr,
    /// The login channel, by ID or name, as the API takes it.
    pub channel: String,
    /// `[login] admin_api_key_file`'s key.
    pub admin_key: Secret,
}

/// A line that was not imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The line's number in the input, from 1.
    pub line: usize,
    /// [`subject_hash`] of the line's subject, when it has one.
    pub subject_hash: Option<String>,
    /// The field the API named, if any.
    pub field: Option<String>,
    /// Why, in words (the API's message, never a value).
    pub reason: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}", self.line)?;
        if let Some(hash) = &self.subject_hash {
            write!(f, " (subject {hash})")?;
        }
        write!(f, ": ")?;
        if let Some(field) = &self.field {
            write!(f, "[{field}] ")?;
        }
        write!(f, "{}", self.reason)
    }
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Lines read that were not blank.
    pub lines: usize,
    /// Grants stored for a subject the daemon did not hold.
    pub imported: usize,
    /// Grants that replaced an earlier grant of their subject.
    pub replaced: usize,
    /// Lines not imported: malformed, or refused by the daemon.
    pub refused: Vec<Refused>,
    /// 429s waited out (each line was sent again).
    pub rate_limited: usize,
}

impl Summary {
    /// True when every line was imported.
    pub fn all_imported(&self) -> bool {
        self.refused.is_empty()
    }

    /// The closing line: counts, and the refused lines' numbers.
    pub fn describe(&self, channel: &str) -> String {
        let mut text = format!(
            "login channel {channel}: {} lines, {} imported, {} replaced, {} refused",
            self.lines,
            self.imported,
            self.replaced,
            self.refused.len()
        );
        if !self.refused.is_empty() {
            let numbers: Vec<String> = self.refused.iter().map(|r| r.line.to_string()).collect();
            text.push_str(&format!(" (lines {})", numbers.join(", ")));
        }
        if self.rate_limited > 0 {
            text.push_str(&format!(
                "; {} answers were 429 and their lines sent again",
                self.rate_limited
            ));
        }
        text
    }
}

/// Why an import stopped before the end of its input.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// No daemon answers at the address.
    #[error(
        "no linetokd daemon answers at {addr} (stopped before line {line}; the lines before it \
         are done): {reason}"
    )]
    Unreachable {
        /// The address tried.
        addr: SocketAddr,
        /// The line that could not be sent.
        line: usize,
        /// The connection error, without a URL.
        reason: String,
    },
    /// The daemon refused the whole import (key or channel).
    #[error("the daemon at {addr} refused line {line} ({status}): {message}")]
    Refused {
        /// The address.
        addr: SocketAddr,
        /// The line.
        line: usize,
        /// The HTTP status.
        status: u16,
        /// The daemon's message and what to check.
        message: String,
    },
    /// The input could not be read.
    #[error("while reading line {line} of the input: {source}")]
    Read {
        /// The line being read.
        line: usize,
        /// The IO error.
        source: std::io::Error,
    },
    /// The HTTP client could not be built.
    #[error("while building the HTTP client: {0}")]
    Client(String),
}

impl ImportError {
    /// True when the cause is the operator's setup (key, channel), not a
    /// failure at run time.
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Refused { status, .. } if *status == 401 || *status == 403 || *status == 404)
    }
}

/// What one line's last answer was.
enum Answer {
    Created { replaced: bool },
    Refused(Refused),
}

/// Imports every line of `input`, reporting each refused line to `report`
/// as it happens. Returns the summary; `Err` only when the import had to
/// stop (with `summary` holding what was done before).
///
/// # Errors
/// [`ImportError`]: the daemon is unreachable or refuses the key or the
/// channel, or the input cannot be read.
pub async fn import(
    target: &Target,
    input: impl AsyncBufRead + Unpin,
    summary: &mut Summary,
    report: &mut (dyn FnMut(&Refused) + Send),
) -> Result<(), ImportError> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| ImportError::Client(e.without_url().to_string()))?;
    let url = format!(
        "http://{}/v1/login/{}/grants",
        target.http,
        urlencoding_path(&target.channel)
    );
    let mut lines = input.lines();
    let mut number = 0;
    loop {
        number += 1;
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(()),
            Err(source) => {
                return Err(ImportError::Read {
                    line: number,
                    source,
                });
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        summary.lines += 1;
        let parsed: Result<Value, _> = serde_json::from_str(&line);
        let object = match parsed {
            Ok(Value::Object(object)) => object,
            Ok(_) => {
                let refused = malformed(number, "is JSON but not an object".to_owned());
                report(&refused);
                summary.refused.push(refused);
                continue;
            }
            Err(e) => {
                // serde_json's message names the place, never the text.
                let refused = malformed(number, format!("is not JSON ({e})"));
                report(&refused);
                summary.refused.push(refused);
                continue;
            }
        };
        let hash = object
            .get("subject")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(subject_hash);
        match send(&client, &url, target, number, hash, line, summary).await? {
            Answer::Created { replaced: true } => summary.replaced += 1,
            Answer::Created { replaced: false } => summary.imported += 1,
            Answer::Refused(refused) => {
                report(&refused);
                summary.refused.push(refused);
            }
        }
    }
}

fn malformed(line: usize, reason: String) -> Refused {
    Refused {
        line,
        subject_hash: None,
        field: None,
        reason: format!("{reason}; not sent"),
    }
}

/// Sends one line until it has a final answer.
async fn send(
    client: &reqwest::Client,
    url: &str,
    target: &Target,
    line: usize,
    hash: Option<String>,
    body: String,
    summary: &mut Summary,
) -> Result<Answer, ImportError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let sent = client
            .post(url)
            .bearer_auth(target.admin_key.expose())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        let transient = match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = retry_after(response.headers());
                let answer: Value = response.json().await.unwrap_or(Value::Null);
                let message = answer
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("no message")
                    .to_owned();
                match status {
                    201 => {
                        let replaced = answer
                            .get("replaced")
                            .and_then(Value::as_bool)
                            .unwrap_or(false);
                        return Ok(Answer::Created { replaced });
                    }
                    429 => {
                        summary.rate_limited += 1;
                        tokio::time::sleep(retry_after.unwrap_or(DEFAULT_RETRY_AFTER)).await;
                        // A 429 is the daemon pacing us: it never counts
                        // as an attempt, and the line is never skipped.
                        attempts -= 1;
                        continue;
                    }
                    422 | 400 => {
                        return Ok(Answer::Refused(Refused {
                            line,
                            subject_hash: hash,
                            field: answer
                                .get("field")
                                .and_then(Value::as_str)
                                .map(str::to_owned),
                            reason: message,
                        }));
                    }
                    401 | 403 => {
                        return Err(ImportError::Refused {
                            addr: target.http,
                            line,
                            status,
                            message: format!(
                                "{message} (is the daemon running with this config's \
                                 login.admin_api_key_file?)"
                            ),
                        });
                    }
                    404 => {
                        return Err(ImportError::Refused {
                            addr: target.http,
                            line,
                            status,
                            message: format!(
                                "{message} (does the running daemon's config have login \
                                 channel {}?)",
                                target.channel
                            ),
                        });
                    }
                    _ => format!("the daemon answered {status}: {message}"),
                }
            }
            Err(e) if e.is_connect() => {
                return Err(ImportError::Unreachable {
                    addr: target.http,
                    line,
                    reason: e.without_url().to_string(),
                });
            }
            Err(e) => format!("no answer: {}", e.without_url()),
        };
        if attempts >= MAX_ATTEMPTS {
            return Ok(Answer::Refused(Refused {
                line,
                subject_hash: hash,
                field: None,
                reason: format!("{transient} (after {attempts} attempts)"),
            }));
        }
        tokio::time::sleep(BACKOFF_BASE.saturating_mul(1 << (attempts - 1))).await;
    }
}

/// A 429's `Retry-After` in seconds, capped at [`MAX_RETRY_AFTER`].
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// `text` as one URL path segment: a channel is digits or a configured
/// name, but a name is percent-encoded rather than trusted.
fn urlencoding_path(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_refused_lines_and_counts() {
        let mut s = Summary {
            lines: 4,
            imported: 2,
            replaced: 1,
            ..Summary::default()
        };
        assert!(s.all_imported());
        s.refused.push(Refused {
            line: 3,
            subject_hash: Some("abcd1234".into()),
            field: Some("access_token".into()),
            reason: "access_token belongs to another channel".into(),
        });
        assert!(!s.all_imported());
        assert_eq!(
            s.describe("shop-login"),
            "login channel shop-login: 4 lines, 2 imported, 1 replaced, 1 refused (lines 3)"
        );
        assert_eq!(
            s.refused[0].to_string(),
            "line 3 (subject abcd1234): [access_token] access_token belongs to another channel"
        );
    }

    #[test]
    fn retry_after_is_read_and_capped() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(reqwest::header::RETRY_AFTER, "99999".parse().unwrap());
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn channel_names_are_one_path_segment() {
        assert_eq!(urlencoding_path("1660000000"), "1660000000");
        assert_eq!(urlencoding_path("shop-login"), "shop-login");
        assert_eq!(urlencoding_path("a/b c"), "a%2Fb%20c");
    }
}
