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

/// The latest instant a plan may sleep to: the first whole multiple of
/// `max_sleep` since the Unix epoch after `now`, so at most `max_sleep`
/// ahead. Aligned this way, every channel's safety wake-up falls on one
/// instant (the top of the hour by default) and the scheduler serves them
/// all in one pass, rather than one pass per channel an hour after each
/// channel's own last look. A `max_sleep` that is not a positive number of
/// milliseconds, or a multiple out of range, is added plainly.
pub(crate) fn safety_wake(now: DateTime<Utc>, max_sleep: Duration) -> DateTime<Utc> {
    let step = max_sleep.num_milliseconds();
    let aligned = (step > 0)
        .then(|| now.timestamp_millis().div_euclid(step))
        .and_then(|k| k.checked_add(1))
        .and_then(|k| k.checked_mul(step))
        .and_then(DateTime::from_timestamp_millis);
    aligned.unwrap_or_else(|| add(now, max_sleep))
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
    fn the_safety_wake_falls_on_the_next_whole_multiple_after_now() {
        let hour = Duration::hours(1);
        let at = |h: u32, m: u32, s: u32, ms: i64| {
            DateTime::parse_from_rfc3339(&format!("2026-03-01T{h:02}:{m:02}:{s:02}Z"))
                .unwrap()
                .to_utc()
                + Duration::milliseconds(ms)
        };
        // Any instant within an hour wakes at its end: one instant for
        // every channel, never more than an hour ahead.
        assert_eq!(safety_wake(at(7, 0, 0, 1), hour), at(8, 0, 0, 0));
        assert_eq!(safety_wake(at(7, 59, 59, 999), hour), at(8, 0, 0, 0));
        assert_eq!(safety_wake(at(7, 23, 4, 500), hour), at(8, 0, 0, 0));
        // On the hour itself: the next one, not now.
        assert_eq!(safety_wake(at(7, 0, 0, 0), hour), at(8, 0, 0, 0));
        // Before 1970 too.
        let early = DateTime::from_timestamp_millis(-1).unwrap();
        assert_eq!(safety_wake(early, hour), DateTime::UNIX_EPOCH);
        // Nothing to align to, or past chrono's range: added plainly.
        let t = at(7, 23, 4, 500);
        assert_eq!(safety_wake(t, Duration::zero()), t);
        assert_eq!(safety_wake(t, Duration::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(
            safety_wake(DateTime::<Utc>::MAX_UTC, hour),
            DateTime::<Utc>::MAX_UTC
        );
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
