//! When the local clock disagrees with LINE's enough to alert
//! (`clock_skew`): every deadline linetokd keeps is local arithmetic on
//! expiries LINE set by its own clock, so a clock a minute off moves every
//! rotation and every "expires before its successor" judgement by that
//! minute.
//!
//! Hysteresis keeps a skew hovering near the threshold from flapping the
//! alert: it fires above [`SKEW_FIRES_ABOVE`] and resolves only below
//! [`SKEW_RESOLVES_BELOW`].
//!
//! Pure; depends on chrono only.

use chrono::Duration;

/// `clock_skew` fires when |local − LINE| exceeds this.
pub const SKEW_FIRES_ABOVE: Duration = Duration::seconds(60);
/// A firing `clock_skew` resolves once |local − LINE| is below this.
pub const SKEW_RESOLVES_BELOW: Duration = Duration::seconds(30);

/// Whether `clock_skew` fires, given the latest measured skew (local minus
/// LINE's `Date`) and whether it fired before.
pub fn clock_skew_fires(skew: Duration, firing: bool) -> bool {
    let off = skew.abs();
    if off > SKEW_FIRES_ABOVE {
        true
    } else if off < SKEW_RESOLVES_BELOW {
        false
    } else {
        firing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_above_a_minute_either_way_and_resolves_below_half_a_minute() {
        for (skew, was, now) in [
            (0, false, false),
            (60, false, false),
            (61, false, true),
            (-61, false, true),
            (45, true, true),
            (-45, true, true),
            (45, false, false),
            (30, true, true),
            (29, true, false),
            (-29, true, false),
        ] {
            assert_eq!(
                clock_skew_fires(Duration::seconds(skew), was),
                now,
                "skew {skew} s, firing before: {was}"
            );
        }
    }
}
