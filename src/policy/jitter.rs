//! Stable per-group jitter.
//!
//! Many groups configured at once would otherwise all rotate, and all verify,
//! in the same second. Each group gets a fixed offset derived from its
//! channel ID and group name, so the spread survives restarts and differs
//! between groups, yet is identical on every run, every machine and every
//! Rust release (std's `DefaultHasher` promises none of that, hence the
//! hand-written FNV-1a). The result is a pure function of its inputs: no
//! randomness, no clock.
//!
//! Depends on `crate::domain` and chrono only.

use chrono::Duration;

use crate::domain::{ChannelId, GroupName};

/// What a jitter offset is for. Each purpose salts the hash differently, so a
/// group that rotates early in its window does not also verify early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JitterPurpose {
    /// The offset subtracted from a token's rotation time.
    Rotation,
    /// The offset subtracted from the verification interval.
    Verify,
}

impl JitterPurpose {
    fn salt(self) -> &'static [u8] {
        match self {
            Self::Rotation => b"rotation",
            Self::Verify => b"verify",
        }
    }
}

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a of `bytes`, as published by Fowler, Noll and Vo.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_continue(FNV_OFFSET_BASIS, bytes)
}

fn fnv1a64_continue(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// MurmurHash3's 64-bit finaliser. FNV-1a's last multiply only moves a
/// difference in the last byte (`g1` vs `g2`) into some of the high bits;
/// the finaliser spreads it over all 64, so the offsets of similarly named
/// groups land far apart.
fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The stable 64-bit hash of one group for one purpose. The parts are
/// separated by `0xff`, a byte no UTF-8 string contains, so ("ab", "c") and
/// ("a", "bc") hash differently.
pub fn group_hash(channel: &ChannelId, group: &GroupName, purpose: JitterPurpose) -> u64 {
    let mut h = fnv1a64(channel.as_str().as_bytes());
    h = fnv1a64_continue(h, &[0xff]);
    h = fnv1a64_continue(h, group.as_str().as_bytes());
    h = fnv1a64_continue(h, &[0xff]);
    h = fnv1a64_continue(h, purpose.salt());
    avalanche(h)
}

/// The group's stable offset in `[0, span]`, to the millisecond.
///
/// A negative `span` is read as zero. The mapping is integer-only
/// (`hash * (span_ms + 1) >> 64`), so no float rounding can differ between
/// platforms.
pub fn stable_jitter(
    channel: &ChannelId,
    group: &GroupName,
    purpose: JitterPurpose,
    span: Duration,
) -> Duration {
    let span_ms = span.num_milliseconds().max(0);
    let h = u128::from(group_hash(channel, group, purpose));
    // span_ms >= 0, so the cast is lossless; the product fits in u128 and the
    // shifted result is at most span_ms, which fits back in i64.
    let scaled = (h * (span_ms as u128 + 1)) >> 64;
    Duration::milliseconds(i64::try_from(scaled).unwrap_or(span_ms))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    /// Pins the offsets so a change to the hash (which would move every
    /// group's rotation time on upgrade) cannot slip in unnoticed.
    #[test]
    fn jitter_values_are_pinned() {
        let ch = ChannelId::new("1234567890");
        let span = Duration::minutes(30);
        let backend = stable_jitter(
            &ch,
            &GroupName::new("backend"),
            JitterPurpose::Rotation,
            span,
        );
        let crm = stable_jitter(&ch, &GroupName::new("crm"), JitterPurpose::Rotation, span);
        let verify = stable_jitter(&ch, &GroupName::new("backend"), JitterPurpose::Verify, span);
        assert_eq!(
            (
                backend.num_milliseconds(),
                crm.num_milliseconds(),
                verify.num_milliseconds()
            ),
            (PINNED_BACKEND_MS, PINNED_CRM_MS, PINNED_VERIFY_MS)
        );
    }

    const PINNED_BACKEND_MS: i64 = 891_067;
    const PINNED_CRM_MS: i64 = 550_993;
    const PINNED_VERIFY_MS: i64 = 1_499_927;

    #[test]
    fn zero_or_negative_span_gives_zero() {
        let (ch, g) = (ChannelId::new("1"), GroupName::new("g"));
        for span in [Duration::zero(), Duration::seconds(-5)] {
            assert_eq!(
                stable_jitter(&ch, &g, JitterPurpose::Rotation, span),
                Duration::zero()
            );
        }
    }

    #[test]
    fn separators_keep_split_names_apart() {
        let a = group_hash(
            &ChannelId::new("ab"),
            &GroupName::new("c"),
            JitterPurpose::Rotation,
        );
        let b = group_hash(
            &ChannelId::new("a"),
            &GroupName::new("bc"),
            JitterPurpose::Rotation,
        );
        assert_ne!(a, b);
    }

    /// "Many groups never fire in the same second": 100 similarly named
    /// groups over a 30-minute span land on (nearly) distinct seconds and
    /// cover the whole span, not one corner of it.
    #[test]
    fn similar_names_spread_over_the_span() {
        let ch = ChannelId::new("1234567890");
        let span = Duration::minutes(30);
        let secs: Vec<i64> = (0..100)
            .map(|i| {
                let g = GroupName::new(format!("group-{i}"));
                stable_jitter(&ch, &g, JitterPurpose::Rotation, span).num_seconds()
            })
            .collect();
        let distinct: HashSet<_> = secs.iter().collect();
        assert!(
            distinct.len() >= 95,
            "{} distinct seconds of 100",
            distinct.len()
        );
        let early = secs.iter().filter(|&&s| s < 900).count();
        assert!(
            (30..=70).contains(&early),
            "{early} of 100 in the first half"
        );
    }

    proptest! {
        #[test]
        fn jitter_is_within_span_and_deterministic(
            channel in "[0-9]{1,12}",
            group in "\\PC{0,20}",
            span_ms in 0i64..=31 * 86_400_000,
        ) {
            let (ch, g) = (ChannelId::new(channel), GroupName::new(group));
            let span = Duration::milliseconds(span_ms);
            let j = stable_jitter(&ch, &g, JitterPurpose::Rotation, span);
            prop_assert!(j >= Duration::zero() && j <= span);
            prop_assert_eq!(j, stable_jitter(&ch, &g, JitterPurpose::Rotation, span));
        }
    }
}
