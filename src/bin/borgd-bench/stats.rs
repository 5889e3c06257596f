//! How the benchmark's figures are summarised: medians, ranges, and how sure a median is.
//!
//! This machine's noise moves a figure by 10–20% from one repetition to the next, so every
//! figure is a median with its range, and where a decision rests on a ratio taken repetition by
//! repetition (one build against another, borgd against Python) its median comes with a
//! confidence interval that needs no assumption about the noise's distribution.

/// The median of `v` (sorted in place; NaN if empty).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A figure as the tables print it: four significant digits below 1, two up to 100, none above;
/// `-` for a figure that was not measured (NaN).
pub fn fmt(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.4}")
    }
}

/// A sample's median and range: how every figure is reported, as `median (min–max)`.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// A 95% confidence interval for the median (see [`median_ci`]), where the sample is large
    /// enough for one.
    pub ci: Option<(f64, f64)>,
}

impl Spread {
    /// Of the sample `v` (sorted in place; all NaN if it is empty).
    pub fn of(v: &mut [f64]) -> Spread {
        let median = median(v);
        Spread { median, min: v.first().copied().unwrap_or(f64::NAN), max: v.last().copied().unwrap_or(f64::NAN), ci: median_ci(v) }
    }

    /// `median (min–max; 95% CI lo–hi)`, the interval only where there is one.
    pub fn with_ci(&self) -> String {
        match self.ci {
            Some((lo, hi)) => format!("{} ({}–{}; 95% CI {}–{})", fmt(self.median), fmt(self.min), fmt(self.max), fmt(lo), fmt(hi)),
            None => self.to_string(),
        }
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}–{})", fmt(self.median), fmt(self.min), fmt(self.max))
    }
}

/// A distribution-free confidence interval of at least 95% for the median of the sorted sample
/// `v`: its k-th smallest and k-th largest values, with k the largest rank such that a
/// Binomial(n, 1/2) count falls below k with probability at most 2.5% (the textbook sign-test
/// interval). `None` for fewer than 6 values, where even the whole range covers less than 95%.
pub fn median_ci(v: &[f64]) -> Option<(f64, f64)> {
    let n = v.len();
    let total = 2f64.powi(i32::try_from(n).ok()?);
    // P(X <= j) for X ~ Binomial(n, 1/2), built term by term: C(n, j) / 2^n
    let (mut cdf, mut choose, mut k) = (0.0, 1.0, 0);
    for j in 0..n {
        cdf += choose / total;
        if cdf > 0.025 {
            break;
        }
        k = j + 1;
        choose = choose * (n - j) as f64 / (j + 1) as f64;
    }
    (k >= 1).then(|| (v[k - 1], v[n - k]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranks(n: usize) -> Option<(f64, f64)> {
        let v: Vec<f64> = (1..=n).map(|i| i as f64).collect();
        median_ci(&v)
    }

    #[test]
    fn the_median_interval_takes_the_sign_test_ranks() {
        // the ranks tabulated for the sign test at 95%
        assert_eq!(ranks(5), None);
        assert_eq!(ranks(6), Some((1.0, 6.0)));
        assert_eq!(ranks(10), Some((2.0, 9.0)));
        assert_eq!(ranks(16), Some((4.0, 13.0)));
        assert_eq!(ranks(20), Some((6.0, 15.0)));
        assert_eq!(ranks(0), None);
    }

    #[test]
    fn a_spread_reports_median_range_and_interval() {
        let mut v = vec![3.0, 1.0, 2.0, 6.0, 5.0, 4.0];
        let s = Spread::of(&mut v);
        assert_eq!((s.median, s.min, s.max, s.ci), (3.5, 1.0, 6.0, Some((1.0, 6.0))));
        assert_eq!(s.to_string(), "3.50 (1.00–6.00)");
        assert_eq!(s.with_ci(), "3.50 (1.00–6.00; 95% CI 1.00–6.00)");
        let empty = Spread::of(&mut []);
        assert!(empty.median.is_nan() && empty.ci.is_none());
        assert_eq!(empty.to_string(), "- (-–-)");
    }
}
