//! Saturating time arithmetic for the policy.
//!
//! chrono's `DateTime + Duration` panics on overflow, and the policy's inputs
//! (expiry times from the store, durations from the config) are data, not
//! constants: a corrupt row or an absurd setting must give a strange plan,
//! never a panic (docs/design.md invariant 7). Every sum the policy forms goes
//! through these helpers, which clamp to the ends of chrono's range instead.
//!
//! Depends on chrono only.

use chrono::{DateTime, Duration, Utc};

/// `t + d`, clamped to chrono's representable range.
pub(crate) fn add(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_add_signed(d).unwrap_or(if d < Duration::zero() {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

/// `t - d`, clamped to chrono's representable range.
pub(crate) fn sub(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_sub_signed(d).unwrap_or(if d < Duration::zero() {
        DateTime::<Utc>::MAX_UTC
    } else {
        DateTime::<Utc>::MIN_UTC
    })
}

/// `a + b` for durations, clamped to `Duration::MAX`/`Duration::MIN`.
pub(crate) fn sum(a: Duration, b: Duration) -> Duration {
    a.checked_add(&b).unwrap_or(if b < Duration::zero() {
        Duration::MIN
    } else {
        Duration::MAX
    })
}

/// `d`, but never shorter than `floor`: used for intervals whose zero value
/// would make a step due again the instant it ran (a busy loop).
pub(crate) fn at_least(d: Duration, floor: Duration) -> Duration {
    d.max(floor)
}

/// `d`, with a negative value read as zero: a negative grace or jitter from
/// a bad setting means "none", not "in the past".
pub(crate) fn non_negative(d: Duration) -> Duration {
    d.max(Duration::zero())
}

/// A duration the way the config spells them (`30d`, `1h30m`, `90s`,
/// `250ms`, `-5s`), for error and alert messages: chrono's own `Display`
/// prints ISO 8601 (`PT86400S`), which operators do not write.
pub(crate) fn human(d: &Duration) -> String {
    let ms = d.num_milliseconds();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    if ms < 0 {
        out.push('-');
    }
    let mut rest = ms.unsigned_abs();
    for (unit, size) in [
        ("d", 86_400_000u64),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_saturate_instead_of_panicking() {
        let t = DateTime::<Utc>::MAX_UTC;
        assert_eq!(add(t, Duration::days(1)), DateTime::<Utc>::MAX_UTC);
        assert_eq!(
            sub(DateTime::<Utc>::MIN_UTC, Duration::days(1)),
            DateTime::<Utc>::MIN_UTC
        );
        assert_eq!(
            add(DateTime::<Utc>::MIN_UTC, Duration::MIN),
            DateTime::<Utc>::MIN_UTC
        );
        assert_eq!(sub(t, Duration::MIN), DateTime::<Utc>::MAX_UTC);
        assert_eq!(sum(Duration::MAX, Duration::seconds(1)), Duration::MAX);
        assert_eq!(sum(Duration::MIN, Duration::seconds(-1)), Duration::MIN);
    }

    #[test]
    fn ordinary_sums_are_exact() {
        let t = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        assert_eq!(add(t, Duration::seconds(5)).timestamp(), 1_700_000_005);
        assert_eq!(sub(t, Duration::seconds(5)).timestamp(), 1_699_999_995);
        assert_eq!(
            sum(Duration::seconds(2), Duration::seconds(3)),
            Duration::seconds(5)
        );
        assert_eq!(
            at_least(Duration::zero(), Duration::seconds(1)),
            Duration::seconds(1)
        );
        assert_eq!(non_negative(Duration::seconds(-3)), Duration::zero());
    }

    #[test]
    fn durations_print_like_the_config_writes_them() {
        assert_eq!(human(&Duration::days(30)), "30d");
        assert_eq!(human(&Duration::minutes(90)), "1h30m");
        assert_eq!(human(&Duration::milliseconds(1_250)), "1s250ms");
        assert_eq!(human(&Duration::seconds(-5)), "-5s");
        assert_eq!(human(&Duration::zero()), "0s");
        assert!(human(&Duration::MIN).starts_with('-'));
    }
}
