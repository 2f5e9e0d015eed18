//! Secret strings: access tokens, channel secrets, API keys.
//!
//! A [`Secret`] holds a value that must never reach logs, errors, metrics or
//! status output (docs/design.md invariant 5). Its `Debug` and `Display` print a
//! short, non-reversible fingerprint instead, so a secret can sit in a struct
//! that derives `Debug` or appear in a `tracing` field without leaking. The
//! only way to the value is [`Secret::expose`], whose call sites are the few
//! places that must hand it on: the LINE client, the store, the sinks and the
//! token API.
//!
//! Depends on nothing but `aws-lc-rs` for the fingerprint digest.

use std::fmt;

use aws_lc_rs::digest;

/// A string that must stay out of every log line and error message.
///
/// Boxed rather than a `String`: it never grows, and every group keeps one
/// (its token in the delivery book), so the 8 bytes of capacity add up.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into().into_boxed_str())
    }

    /// The secret value itself. Call this only where the value must leave
    /// the process (a request to LINE, a sink file, the token API) or be
    /// stored.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when the value is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first 8 hex digits of the value's SHA-256: enough to tell two
    /// secrets apart in a log, useless for recovering either.
    pub fn fingerprint(&self) -> String {
        let d = digest::digest(&digest::SHA256, self.0.as_bytes());
        d.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(sha256:{})", self.fingerprint())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("eyJhbGciOiJIUzI1NiJ9.very-secret-token");
        for shown in [format!("{s:?}"), format!("{s}"), format!("{s:#?}")] {
            assert!(!shown.contains("very-secret"), "{shown}");
            assert!(shown.contains(&s.fingerprint()), "{shown}");
        }
    }

    #[test]
    fn fingerprints_differ_for_different_values() {
        assert_ne!(
            Secret::new("a").fingerprint(),
            Secret::new("b").fingerprint()
        );
        assert_eq!(Secret::new("a").fingerprint().len(), 8);
    }
}
