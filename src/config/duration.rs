//! Human durations (`30d`, `24h`, `10m`, `90s`) in the config file.
//!
//! Parsing is humantime's, so operators may also write `1h 30m` or
//! `2days`. Formatting picks the largest unit that divides the value evenly
//! (`48h` prints as `2d`; one day stays `24h`), so the resolved config that `check-config` prints
//! reads like a hand-written one and parses back to the same value.
//!
//! Depends on `humantime` and `serde` only.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// Parses a human duration such as `30d`, `24h`, `10m` or `90s`.
///
/// # Errors
///
/// Returns a sentence naming the bad value and the expected shape; callers
/// add the key.
pub fn parse(text: &str) -> Result<Duration, String> {
    // Long enough for "1d 2h 3m 4s"-style values; a longer one is not a
    // duration and is not worth quoting whole.
    const LONGEST: usize = 64;
    if text.len() > LONGEST {
        return Err(format!(
            "is {} bytes long, too long for a duration; write a number and a unit, like 30d, \
             24h, 10m or 90s",
            text.len()
        ));
    }
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!(
            "{text:?} is not a duration ({e}); write a number and a unit, like 30d, 24h, 10m or 90s"
        )
    })
}

/// Formats a duration in the largest unit that divides it evenly (`30d`,
/// `36h`, `90s`, `1500ms`), except that one day prints as `24h`, the way
/// people write it; the output parses back with [`parse`].
pub fn format(value: Duration) -> String {
    const DAY: u64 = 86_400;
    const UNITS: [(u64, &str); 3] = [(3_600, "h"), (60, "m"), (1, "s")];
    if value.is_zero() {
        return "0s".to_owned();
    }
    if value.subsec_nanos() == 0 {
        let secs = value.as_secs();
        if secs.is_multiple_of(DAY) && secs > DAY {
            return format!("{}d", secs / DAY);
        }
        // Two days and more read best in days: "29d 23h", not "719h".
        if secs >= 2 * DAY {
            return in_parts(secs);
        }
        for (size, unit) in UNITS {
            // "36h" and "90s" read well; "43190m" does not, so a count of
            // a thousand or more is spelled out in parts instead.
            if secs.is_multiple_of(size) && secs / size < 1_000 {
                return format!("{}{unit}", secs / size);
            }
        }
        return in_parts(secs);
    }
    humantime::format_duration(value).to_string()
}

/// Whole seconds as days, hours, minutes and seconds, the zero parts left
/// out: "29d 23h 50m".
fn in_parts(secs: u64) -> String {
    const PARTS: [(u64, &str); 4] = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let mut left = secs;
    let mut out = Vec::new();
    for (size, unit) in PARTS {
        if left >= size {
            out.push(format!("{}{unit}", left / size));
            left %= size;
        }
    }
    out.join(" ")
}

/// Serde `deserialize_with` for a required duration field.
///
/// # Errors
///
/// Fails when the value is not a string or not a human duration.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_str(DurationVisitor)
}

/// Serde `deserialize_with` for an optional duration field (used with
/// `#[serde(default)]`, so a missing key is `None`).
///
/// # Errors
///
/// Fails when a value is present but is not a human duration.
pub fn deserialize_option<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    deserialize(deserializer).map(Some)
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as \"30d\", \"24h\", \"10m\" or \"90s\"")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        parse(text).map_err(E::custom)
    }

    // A bare number is ambiguous (seconds? days?), so it is refused with a
    // message that says how to write it rather than guessed at.
    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "{value} has no unit; write a quoted duration like \"{value}s\" or \"{value}d\""
        )))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "{value} has no unit; write a quoted duration like \"{value}s\" or \"{value}d\""
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_units_the_design_names() {
        assert_eq!(parse("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1h 30m"), Ok(Duration::from_secs(5_400)));
    }

    #[test]
    fn a_bad_value_is_quoted_in_the_error() {
        let err = parse("6 hours please").unwrap_err();
        assert!(
            err.contains("\"6 hours please\" is not a duration"),
            "{err}"
        );
        assert!(parse("").is_err());
        assert!(parse("12").is_err(), "a unit is required");
        let long = "1s ".repeat(1000);
        let err = parse(&long).unwrap_err();
        assert!(err.starts_with("is 3000 bytes long"), "{err}");
    }

    #[test]
    fn format_uses_the_largest_even_unit_and_round_trips() {
        for (secs, shown) in [
            (0, "0s"),
            (86_400, "24h"),
            (2 * 86_400, "2d"),
            (30 * 86_400, "30d"),
            (36 * 3_600, "36h"),
            (600, "10m"),
            (90, "90s"),
            (43_190 * 60, "29d 23h 50m"),
            (3_601, "1h 1s"),
            (719 * 3_600, "29d 23h"),
        ] {
            let d = Duration::from_secs(secs);
            assert_eq!(format(d), shown);
            assert_eq!(parse(shown), Ok(d));
        }
        let odd = Duration::from_millis(1_500);
        assert_eq!(parse(&format(odd)), Ok(odd));
    }
}
