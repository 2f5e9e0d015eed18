//! Checks on the values LINE sends back, before anyone stores or journals
//! them.
//!
//! A key ID goes into the journal, the event history, logs, metrics labels
//! and status output; a token goes into the store and out to every consumer
//! (files, hooks, the token API, HTTP headers). A server that answers with
//! an empty string, a megabyte, a newline or an escape sequence where LINE
//! puts a key ID or a token would otherwise plant it in all of those. So the
//! client builds [`KeyId`]s and [`AccessToken`]s from LINE's answers only
//! through the constructors here, which hold them to LINE's shape:
//!
//! - non-empty;
//! - at most [`MAX_KEY_ID_LEN`] / [`MAX_ACCESS_TOKEN_LEN`] /
//!   [`MAX_REFRESH_TOKEN_LEN`] (LINE Login refresh tokens) bytes;
//! - only ASCII letters, digits and `-._~+/=` ([`is_line_char`]): the
//!   characters of base64, base64url and compact JWS, which is what LINE's
//!   key IDs (`sDTOzw5wIfxxxxPEzcmeQA`) and tokens (a JWS for v2.1 and
//!   stateless, standard base64 for short-lived) are made of. No whitespace,
//!   no control character, nothing outside ASCII.
//!
//! A new token's `expires_in` is held to 1 s ..= [`MAX_EXPIRES_IN_SECS`].
//!
//! Invariant: an [`InvalidValue`] never carries the value it rejects (a
//! rejected token is still possibly a live token), only what kind of value it
//! was, its length and where the first bad character sits.
//!
//! The serde adapters at the bottom let `line::types` apply these checks
//! while an answer is parsed, so an answer type with a bad value cannot
//! exist. Depends on `domain` only.

use std::fmt;

use serde::de::{Deserialize, Deserializer, Error as _};

use crate::domain::{AccessToken, KeyId, RefreshToken};

/// The longest key ID accepted, in bytes. LINE's are 22 characters (16
/// random bytes in base64url); 128 leaves room for LINE changing the format
/// (a UUID, a longer hash) while keeping a hostile answer from writing
/// kilobytes into every journal row, log line and metrics label.
pub const MAX_KEY_ID_LEN: usize = 128;

/// The longest token accepted, in bytes. LINE's v2.1 tokens are a compact
/// JWS of a few hundred bytes and short-lived ones 172 characters; 4096 is
/// ten times that and still fits an HTTP header line every consumer's
/// server accepts (8 KiB is the common limit), which is where the token
/// ends up.
pub const MAX_ACCESS_TOKEN_LEN: usize = 4096;

/// The longest LINE Login refresh token accepted, in bytes. LINE's are
/// about 20 characters; 1024 leaves room for a format change while keeping
/// a hostile answer out of the store.
pub const MAX_REFRESH_TOKEN_LEN: usize = 1024;

/// The longest lifetime a new token may report, in seconds: LINE's maximum
/// of 30 days plus a minute for rounding. A longer one is not a v2.1,
/// short-lived or stateless token, and believing it would schedule the
/// rotation after the token really dies.
pub const MAX_EXPIRES_IN_SECS: i64 = 30 * 24 * 60 * 60 + 60;

/// A value from LINE's answer that does not have LINE's shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidValue {
    /// The string is empty.
    #[error("the {what} is empty")]
    Empty {
        /// What the value is ("key ID", "access token").
        what: &'static str,
    },
    /// The string is longer than the bound for its kind.
    #[error("the {what} is {len} bytes long, more than the {max} accepted")]
    TooLong {
        /// What the value is.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The string has a character outside LINE's set.
    #[error(
        "the {what} has {kind} at byte {at} (LINE's values use only ASCII letters, digits and \
         -._~+/=)"
    )]
    BadCharacter {
        /// What the value is.
        what: &'static str,
        /// The byte offset of the first bad character.
        at: usize,
        /// What sort of character it is (never the character itself).
        kind: CharKind,
    },
    /// A new token's lifetime is outside what LINE issues.
    #[error(
        "expires_in is {secs} seconds, outside the 1 to {MAX_EXPIRES_IN_SECS} (30 days and a \
         minute) LINE issues tokens for"
    )]
    Lifetime {
        /// The lifetime LINE reported.
        secs: i64,
    },
}

/// The sort of a rejected character, so an error can say what is wrong
/// without quoting a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CharKind {
    /// A space, tab or other whitespace.
    Whitespace,
    /// A newline, escape or other control character.
    Control,
    /// A character outside ASCII.
    NonAscii,
    /// ASCII punctuation outside LINE's set (`"`, `<`, `%`, ...).
    Punctuation,
}

impl fmt::Display for CharKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Whitespace => "whitespace",
            Self::Control => "a control character",
            Self::NonAscii => "a non-ASCII character",
            Self::Punctuation => "a punctuation character",
        })
    }
}

pub use crate::domain::is_line_char;

/// A key ID from LINE's answer (an issue answer's `key_id`, an entry of the
/// key-ID list).
///
/// # Errors
/// [`InvalidValue`] when it is empty, longer than [`MAX_KEY_ID_LEN`] or has
/// a character outside [`is_line_char`].
pub fn key_id(raw: &str) -> Result<KeyId, InvalidValue> {
    check("key ID", raw, MAX_KEY_ID_LEN)?;
    Ok(KeyId::new(raw))
}

/// An access token from LINE's answer.
///
/// # Errors
/// [`InvalidValue`] (without the value) when it is empty, longer than
/// [`MAX_ACCESS_TOKEN_LEN`] or has a character outside [`is_line_char`].
pub fn access_token(raw: &str) -> Result<AccessToken, InvalidValue> {
    check("access token", raw, MAX_ACCESS_TOKEN_LEN)?;
    Ok(AccessToken::new(raw))
}

/// A LINE Login refresh token from LINE's answer.
///
/// # Errors
/// [`InvalidValue`] (without the value) when it is empty, longer than
/// [`MAX_REFRESH_TOKEN_LEN`] or has a character outside [`is_line_char`].
pub fn refresh_token(raw: &str) -> Result<RefreshToken, InvalidValue> {
    check("refresh token", raw, MAX_REFRESH_TOKEN_LEN)?;
    Ok(RefreshToken::new(raw))
}

/// A new token's `expires_in`, in seconds.
///
/// # Errors
/// [`InvalidValue::Lifetime`] unless it is within 1 ..= [`MAX_EXPIRES_IN_SECS`].
pub fn issued_lifetime(secs: i64) -> Result<i64, InvalidValue> {
    if (1..=MAX_EXPIRES_IN_SECS).contains(&secs) {
        Ok(secs)
    } else {
        Err(InvalidValue::Lifetime { secs })
    }
}

fn check(what: &'static str, raw: &str, max: usize) -> Result<(), InvalidValue> {
    if raw.is_empty() {
        return Err(InvalidValue::Empty { what });
    }
    if raw.len() > max {
        return Err(InvalidValue::TooLong {
            what,
            len: raw.len(),
            max,
        });
    }
    match raw.char_indices().find(|&(_, c)| !is_line_char(c)) {
        None => Ok(()),
        Some((at, c)) => Err(InvalidValue::BadCharacter {
            what,
            at,
            kind: char_kind(c),
        }),
    }
}

fn char_kind(c: char) -> CharKind {
    if c.is_control() {
        CharKind::Control
    } else if c.is_whitespace() {
        CharKind::Whitespace
    } else if !c.is_ascii() {
        CharKind::NonAscii
    } else {
        CharKind::Punctuation
    }
}

// ---------------------------------------------------------------------------
// serde adapters for `line::types` (`#[serde(deserialize_with = ...)]`).
// Their messages end up in `LineError` through serde_json, so they name the
// problem and never the value.
// ---------------------------------------------------------------------------

/// Deserializes a [`KeyId`] through [`key_id`].
pub(crate) fn de_key_id<'de, D: Deserializer<'de>>(d: D) -> Result<KeyId, D::Error> {
    let raw = String::deserialize(d)?;
    key_id(&raw).map_err(D::Error::custom)
}

/// Deserializes a list of [`KeyId`]s through [`key_id`]; one bad entry
/// fails the whole list (a half-trusted list must not drive a reconcile).
pub(crate) fn de_key_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<KeyId>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .enumerate()
        .map(|(i, k)| {
            key_id(k).map_err(|e| {
                D::Error::custom(format_args!(
                    "entry {} of {} in the key-ID list: {e}",
                    i + 1,
                    raw.len()
                ))
            })
        })
        .collect()
}

/// Deserializes an [`AccessToken`] through [`access_token`]. The value goes
/// straight into the secret newtype; the check reads it there.
pub(crate) fn de_access_token<'de, D: Deserializer<'de>>(d: D) -> Result<AccessToken, D::Error> {
    let token = AccessToken::deserialize(d)?;
    check("access token", token.expose(), MAX_ACCESS_TOKEN_LEN).map_err(D::Error::custom)?;
    Ok(token)
}

/// Deserializes an optional refresh token: absent, `null` and `""` are
/// `None` (LINE sends no new one: keep the old), anything else goes through
/// [`refresh_token`].
pub(crate) fn de_optional_refresh_token<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<RefreshToken>, D::Error> {
    match Option::<RefreshToken>::deserialize(d)? {
        Some(raw) if !raw.expose().is_empty() => refresh_token(raw.expose())
            .map(Some)
            .map_err(D::Error::custom),
        _ => Ok(None),
    }
}

/// Deserializes a new token's `expires_in` through [`issued_lifetime`].
pub(crate) fn de_issued_lifetime<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    issued_lifetime(i64::deserialize(d)?).map_err(D::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shaped_values_pass() {
        for ok in [
            "sDTOzw5wIfxxxxPEzcmeQA",
            "0d1a3f8e-77b2-4c1e-9f0a-2b3c4d5e6f70",
            "k",
            "a~b",
        ] {
            assert_eq!(key_id(ok).unwrap().as_str(), ok);
        }
        for ok in [
            "eyJhbGciOiJIUzI1NiJ9.eyJ4IjoxfQ.c2ln-_",
            "W1TeHCgfH2Liwa+/abc=",
        ] {
            assert_eq!(access_token(ok).unwrap().expose(), ok);
        }
        assert_eq!(
            key_id(&"k".repeat(MAX_KEY_ID_LEN)).unwrap().as_str().len(),
            128
        );
        assert!(access_token(&"t".repeat(MAX_ACCESS_TOKEN_LEN)).is_ok());
    }

    #[test]
    fn each_bad_shape_is_named() {
        let cases: Vec<(&str, InvalidValue)> = vec![
            ("", InvalidValue::Empty { what: "key ID" }),
            (
                "ab\ncd",
                InvalidValue::BadCharacter {
                    what: "key ID",
                    at: 2,
                    kind: CharKind::Control,
                },
            ),
            (
                "ab cd",
                InvalidValue::BadCharacter {
                    what: "key ID",
                    at: 2,
                    kind: CharKind::Whitespace,
                },
            ),
            (
                "\u{1b}[31m",
                InvalidValue::BadCharacter {
                    what: "key ID",
                    at: 0,
                    kind: CharKind::Control,
                },
            ),
            (
                "kéy",
                InvalidValue::BadCharacter {
                    what: "key ID",
                    at: 1,
                    kind: CharKind::NonAscii,
                },
            ),
            (
                "a\"b",
                InvalidValue::BadCharacter {
                    what: "key ID",
                    at: 1,
                    kind: CharKind::Punctuation,
                },
            ),
            (
                "a\u{a0}b",
                InvalidValue::BadCharacter {
                    what: "key ID",
                    at: 1,
                    kind: CharKind::Whitespace,
                },
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(key_id(raw), Err(want), "{raw:?}");
        }
        assert_eq!(
            key_id(&"k".repeat(MAX_KEY_ID_LEN + 1)),
            Err(InvalidValue::TooLong {
                what: "key ID",
                len: 129,
                max: 128
            })
        );
    }

    #[test]
    fn a_rejected_token_is_described_without_its_value() {
        let secret = "TOKEN-VALUE-never-shown";
        for bad in [
            format!("{secret} tail"),
            format!("{secret}\r\n"),
            format!("{secret}{}", "x".repeat(MAX_ACCESS_TOKEN_LEN)),
        ] {
            let err = access_token(&bad).unwrap_err();
            for shown in [err.to_string(), format!("{err:?}")] {
                assert!(!shown.contains(secret), "{shown}");
            }
            assert!(err.to_string().starts_with("the access token "), "{err}");
        }
        assert_eq!(
            access_token("").unwrap_err().to_string(),
            "the access token is empty"
        );
    }

    #[test]
    fn lifetimes_are_one_second_to_thirty_days_and_a_minute() {
        for ok in [1, 900, 2_592_000, MAX_EXPIRES_IN_SECS] {
            assert_eq!(issued_lifetime(ok), Ok(ok));
        }
        for bad in [i64::MIN, -1, 0, MAX_EXPIRES_IN_SECS + 1, i64::MAX] {
            assert_eq!(
                issued_lifetime(bad),
                Err(InvalidValue::Lifetime { secs: bad })
            );
        }
    }
}
