//! The few statistics the benchmark reports: a median, a percentile and a
//! least-squares line.
//!
//! Pure functions over plain numbers; no IO. Empty input gives `None`
//! rather than a made-up figure.

use std::time::Duration;

/// A duration in (fractional) milliseconds.
pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The median of `samples` (the mean of the middle two for an even count).
pub fn median(samples: &[f64]) -> Option<f64> {
    let sorted = sorted(samples);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some(f64::midpoint(sorted[n / 2 - 1], sorted[n / 2])),
    }
}

/// The `p`-th percentile (0 < p <= 100) of `samples` by the nearest-rank
/// method: the smallest sample at or above which `p` % of them lie.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    let sorted = sorted(samples);
    if sorted.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    // Sample counts are far below f64's exact integer range.
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// A fitted line `y = intercept + slope * x`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Line {
    /// The value at `x = 0`.
    pub intercept: f64,
    /// The change in `y` per unit of `x`.
    pub slope: f64,
}

/// The least-squares line through `points` (x, y). `None` with fewer than
/// two distinct x values, where no line is determined.
pub fn least_squares(points: &[(f64, f64)]) -> Option<Line> {
    if points.is_empty() {
        return None;
    }
    #[allow(clippy::cast_precision_loss)]
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    if sxx <= f64::EPSILON * mean_x.abs().max(1.0) {
        return None;
    }
    let slope = sxy / sxx;
    Some(Line {
        intercept: mean_y - slope * mean_x,
        slope,
    })
}

fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|s| s.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), Some(50.0));
        assert_eq!(percentile(&samples, 99.0), Some(99.0));
        assert_eq!(percentile(&samples, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[1.0], 0.0), None);
    }

    #[test]
    fn least_squares_recovers_a_line_and_refuses_one_point() {
        let line = least_squares(&[(1000.0, 25.0), (10_000.0, 70.0), (100_000.0, 520.0)])
            .expect("three distinct x");
        // Residuals sum to zero and the line passes through the means.
        let mean_x = 37_000.0;
        let mean_y = 205.0;
        assert!((line.intercept + line.slope * mean_x - mean_y).abs() < 1e-9);
        let exact = least_squares(&[(0.0, 20.0), (10.0, 30.0)]).expect("two points");
        assert!((exact.intercept - 20.0).abs() < 1e-12);
        assert!((exact.slope - 1.0).abs() < 1e-12);
        assert_eq!(least_squares(&[(30.0, 12.0)]), None);
        assert_eq!(least_squares(&[(30.0, 12.0), (30.0, 14.0)]), None);
        assert_eq!(least_squares(&[]), None);
    }
}
