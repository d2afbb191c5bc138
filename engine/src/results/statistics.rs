//! Mean, sample standard deviation and a 95% confidence interval over repeats.
//!
//! Repeats are few (2 to 10 runs of a simulation), so the interval uses Student's
//! t distribution with n-1 degrees of freedom, not the normal approximation,
//! which at n = 2 would claim an interval 6.5 times too narrow. The t values are
//! the standard two-sided 95% table (the 0.975 quantile).

use serde::{Deserialize, Serialize};

/// The 0.975 quantile of Student's t for 1..=30 degrees of freedom.
const T_975: [f64; 30] = [
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010,
    2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687,
    2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
];

/// Beyond 30 degrees of freedom: `(df, t)`; between rows the smaller df is used
/// (a slightly wider, never narrower, interval).
const T_975_LARGE: [(usize, f64); 6] = [
    (40, 2.0211),
    (50, 2.0086),
    (60, 2.0003),
    (80, 1.9901),
    (100, 1.9840),
    (120, 1.9799),
];

/// The two-sided 95% critical value of Student's t with `df` degrees of freedom.
pub fn t_975(df: usize) -> f64 {
    assert!(df > 0, "Student's t needs at least one degree of freedom");
    if df <= 30 {
        return T_975[df - 1];
    }
    let mut t = T_975[29];
    for (d, v) in T_975_LARGE {
        if df >= d {
            t = v;
        }
    }
    if df > 1000 { 1.9600 } else { t }
}

/// What repeats of one measurement say.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// How many values.
    pub n: usize,
    /// The arithmetic mean.
    pub mean: f64,
    /// The sample standard deviation (n-1 in the denominator); none for one value.
    pub std_dev: Option<f64>,
    /// Half the width of the 95% confidence interval of the mean; none for one value.
    pub ci95: Option<f64>,
}

impl Summary {
    /// Summarize `values` (at least one).
    pub fn of(values: &[f64]) -> Summary {
        assert!(!values.is_empty(), "a summary needs at least one value");
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n as f64;
        if n == 1 {
            return Summary {
                n,
                mean,
                std_dev: None,
                ci95: None,
            };
        }
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let sd = var.sqrt();
        Summary {
            n,
            mean,
            std_dev: Some(sd),
            ci95: Some(t_975(n - 1) * sd / (n as f64).sqrt()),
        }
    }

    /// The interval's bounds `(low, high)`.
    pub fn interval(&self) -> Option<(f64, f64)> {
        self.ci95.map(|h| (self.mean - h, self.mean + h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn two_repeats_use_students_t_with_one_degree_of_freedom() {
        let s = Summary::of(&[10.0, 12.0]);
        assert_eq!(s.n, 2);
        assert!(close(s.mean, 11.0));
        let sd = 2f64.sqrt();
        assert!(close(s.std_dev.unwrap(), sd));
        // 12.7062 * sqrt(2) / sqrt(2) = 12.7062, not 1.96.
        assert!(close(s.ci95.unwrap(), 12.7062));
        let (lo, hi) = s.interval().unwrap();
        assert!(close(lo, 11.0 - 12.7062) && close(hi, 11.0 + 12.7062));
    }

    #[test]
    fn five_repeats_match_a_hand_computation() {
        let v = [2.0, 4.0, 4.0, 5.0, 5.0];
        let s = Summary::of(&v);
        assert!(close(s.mean, 4.0));
        // Squared deviations 4+0+0+1+1 = 6, / 4 = 1.5.
        assert!(close(s.std_dev.unwrap(), 1.5f64.sqrt()));
        assert!(close(s.ci95.unwrap(), 2.7764 * 1.5f64.sqrt() / 5f64.sqrt()));
    }

    #[test]
    fn one_value_has_no_spread() {
        let s = Summary::of(&[3.5]);
        assert_eq!((s.mean, s.std_dev, s.ci95), (3.5, None, None));
    }

    #[test]
    fn the_t_table_falls_towards_the_normal_value() {
        assert_eq!(t_975(1), 12.7062);
        assert_eq!(t_975(30), 2.0423);
        assert_eq!(t_975(45), 2.0211);
        assert_eq!(t_975(120), 1.9799);
        assert_eq!(t_975(100_000), 1.96);
        let mut last = f64::INFINITY;
        for df in 1..200 {
            assert!(t_975(df) <= last, "t must not grow with df ({df})");
            last = t_975(df);
        }
    }
}
