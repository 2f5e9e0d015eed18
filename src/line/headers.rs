//! The response headers LINE's answers carry and the client reads.
//!
//! - `X-Line-Request-Id`: LINE's ID of the request, for support tickets;
//!   kept on every error and logged.
//! - `Retry-After`: on 429 (and sometimes 5xx), in either of its two HTTP
//!   forms: delay-seconds or an HTTP-date.
//! - `Date`: LINE's clock, which judges the assertion's `exp`; the client
//!   compares it with ours.
//!
//! Header values come from the network, so every parser here returns an
//! `Option` and treats anything odd as absent. Depends on nothing in the
//! crate.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{DATE, HeaderMap, RETRY_AFTER};

/// The name of LINE's request ID header.
pub const REQUEST_ID_HEADER: &str = "x-line-request-id";

/// Longest request ID kept: LINE's are short hex strings; anything longer is
/// not a request ID and is not worth carrying into logs.
const MAX_REQUEST_ID_LEN: usize = 128;

/// LINE's request ID, if the answer has a plausible one (visible ASCII only,
/// so a hostile proxy cannot inject log lines through it).
pub fn request_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(REQUEST_ID_HEADER)?.to_str().ok()?.trim();
    let plausible = !value.is_empty()
        && value.len() <= MAX_REQUEST_ID_LEN
        && value.bytes().all(|b| b.is_ascii_graphic());
    plausible.then(|| value.to_owned())
}

/// LINE's clock, from the `Date` header.
pub fn date(headers: &HeaderMap) -> Option<DateTime<Utc>> {
    parse_http_date(headers.get(DATE)?.to_str().ok()?)
}

/// How long LINE asks us to wait, from `Retry-After`, measured from `now`.
/// A date in the past means "now" (zero). The value is returned as sent,
/// however large; [`crate::line::LineError::retry_after`] caps it.
pub fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    parse_retry_after(headers.get(RETRY_AFTER)?.to_str().ok()?, now)
}

/// Parses `Retry-After`: delay-seconds (`120`) or an HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`).
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = parse_http_date(value)?;
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// Parses an HTTP-date in its IMF-fixdate form, the only one senders may
/// generate (RFC 9110 5.6.7). It is an RFC 2822 date with `GMT`.
pub fn parse_http_date(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc2822(value.trim())
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn retry_after_in_seconds() {
        assert_eq!(
            parse_retry_after("120", at(0)),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", at(0)), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_as_an_http_date() {
        // 1445412480 is Wed, 21 Oct 2015 07:28:00 GMT.
        let now = at(1_445_412_480 - 90);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(90))
        );
        // A date already past means "retry now".
        let later = at(1_445_412_480 + 5);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", later),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn nonsense_retry_after_is_absent() {
        for bad in [
            "",
            "soon",
            "-5",
            "1.5",
            "99999999999999999999999",
            "Wed, 99 Oct",
        ] {
            assert_eq!(parse_retry_after(bad, at(0)), None, "{bad}");
        }
    }

    #[test]
    fn request_ids_must_look_like_ids() {
        let mut h = HeaderMap::new();
        assert_eq!(request_id(&h), None);
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_static("3a1b2c"));
        assert_eq!(request_id(&h).as_deref(), Some("3a1b2c"));
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_static("a b"));
        assert_eq!(request_id(&h), None);
        let long = "x".repeat(MAX_REQUEST_ID_LEN + 1);
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_str(&long).unwrap());
        assert_eq!(request_id(&h), None);
    }

    #[test]
    fn date_header() {
        let mut h = HeaderMap::new();
        h.insert(
            DATE,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(date(&h), Some(at(1_445_412_480)));
        h.insert(DATE, HeaderValue::from_static("yesterday"));
        assert_eq!(date(&h), None);
    }
}
