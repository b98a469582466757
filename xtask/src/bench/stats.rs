//! Medians, ranges and distribution-free intervals of the rounds' ratios.

use super::*;

pub(super) fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    s
}

pub(super) fn median(v: &[f64]) -> f64 {
    let s = sorted(v);
    if s.is_empty() {
        return f64::NAN;
    }
    s[s.len() / 2]
}

pub(super) fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter().fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)))
}

pub(super) fn stats(v: &[f64]) -> Value {
    let s = sorted(v);
    json!({"median": median(v), "min": s.first(), "max": s.last(), "runs": v})
}

/// An interval that holds the median with at least 95% confidence, whatever the distribution:
/// the k-th smallest and k-th largest of the sample, k the largest with P(Binomial(n, ½) < k)
/// ≤ 2.5%. None for fewer than 6 values, too few for such an interval.
pub(super) fn median_interval(v: &[f64]) -> Option<(f64, f64)> {
    let n = v.len();
    let (mut k, mut cdf, mut binom) = (0, 0.0, 1.0);
    for j in 0..n {
        cdf += binom / 2f64.powi(n as i32);
        if cdf > 0.025 {
            break;
        }
        k = j + 1;
        binom *= (n - j) as f64 / (j + 1) as f64;
    }
    let s = sorted(v);
    (k > 0).then(|| (s[k - 1], s[n - k]))
}

/// Median (min–max) as a table cell.
pub(super) fn spread(v: &[f64], digits: usize) -> String {
    let (lo, hi) = min_max(v);
    format!("{:.digits$} ({lo:.digits$}–{hi:.digits$})", median(v))
}
