//! The yardstick: what one RSA-2048 RS256 signature costs on this machine,
//! measured in the same run as the daemon, so "CPU per issued token" can be
//! read as a multiple of the one piece of work an issue cannot avoid.
//!
//! It signs with [`SigningKey::sign_rs256`], the daemon's own signing path
//! (aws-lc-rs, the key held parsed across the loop), over a message the size of a real
//! assertion's header and claims.

use std::time::Instant;

use anyhow::Context as _;

use super::stats;
use crate::line::keys::SigningKey;

/// How one signature's cost was measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SignatureCost {
    /// The median time of one signature, in milliseconds; for a bootstrap
    /// ([`Self::around`]), the mean of the medians before and after it.
    pub median_ms: f64,
    /// How many signatures were timed.
    pub ops: usize,
}

impl SignatureCost {
    /// The cost timed just before a bootstrap and just after it: the mean
    /// of the two medians. A shared machine's speed drifts (on one of this
    /// project's, a signature took 0.65 to 0.99 ms within an hour), so a
    /// bootstrap's CPU is read against the yardstick of its own minutes,
    /// not one timed at the start of a run that may last a quarter of an
    /// hour.
    pub fn around(before: Self, after: Self) -> Self {
        Self {
            median_ms: f64::midpoint(before.median_ms, after.median_ms),
            ops: before.ops + after.ops,
        }
    }
}

/// The signing input of a typical assertion: base64url header, a dot,
/// base64url claims (iss, sub, aud, exp, token_exp); about 330 bytes.
const MESSAGE_LEN: usize = 330;

/// Signs `ops` times after a short warm-up (caches, lazy initialisation)
/// and reports the median of the individual timings, which a stray
/// interruption on a shared machine does not move.
///
/// # Errors
/// When the crypto library refuses to sign.
pub fn measure(key: &SigningKey, ops: usize) -> anyhow::Result<SignatureCost> {
    let message: Vec<u8> = (0..MESSAGE_LEN)
        .map(|i| b"eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9."[i % 37])
        .collect();
    for _ in 0..ops.min(20) {
        key.sign_rs256(&message)
            .context("while warming up the signature benchmark")?;
    }
    let mut samples = Vec::with_capacity(ops);
    for _ in 0..ops {
        let started = Instant::now();
        let signature = key
            .sign_rs256(&message)
            .context("while timing RSA-2048 signatures")?;
        samples.push(stats::ms(started.elapsed()));
        std::hint::black_box(signature);
    }
    let median_ms = stats::median(&samples).context("no signature was timed")?;
    Ok(SignatureCost { median_ms, ops })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn around_a_bootstrap_the_two_medians_are_averaged_and_the_timings_counted() {
        let before = SignatureCost {
            median_ms: 0.6,
            ops: 500,
        };
        let after = SignatureCost {
            median_ms: 1.0,
            ops: 500,
        };
        let both = SignatureCost::around(before, after);
        assert!((both.median_ms - 0.8).abs() < 1e-12, "{both:?}");
        assert_eq!(both.ops, 1000);
    }
}
