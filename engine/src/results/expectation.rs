//! `expect:` on a metric: what a paper claims about a number.
//!
//! Either bounds (`{min: 100}`, `{min: 1, max: 2}`) or a reference value with a
//! relative tolerance (`{value: 5.0e6, rel_tol: 0.05}`). A value outside fails the
//! apply, so a rebuild that no longer gives the paper's numbers cannot pass quietly.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::field_error::FieldError;

/// Bounds on a metric, or a reference value with a relative tolerance.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// The smallest acceptable value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// The largest acceptable value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// A reference value (with `rel_tol`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The accepted relative distance from `value` (`0.05`: within 5%; default 0: exactly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rel_tol: Option<f64>,
}

impl Expectation {
    /// Check the combination of fields; `field` is where this expectation sits
    /// (`metrics.ops.expect`).
    pub fn check(&self, field: &str) -> Result<(), FieldError> {
        let bounds = self.min.is_some() || self.max.is_some();
        let reference = self.value.is_some() || self.rel_tol.is_some();
        let err = |sub: &str, msg: String| FieldError::new(format!("{field}{sub}"), msg);
        if bounds && reference {
            return Err(err(
                "",
                "give bounds (`min`, `max`) or a reference (`value`, `rel_tol`), not both".into(),
            ));
        }
        if !bounds && !reference {
            return Err(err(
                "",
                "give `min` and/or `max`, or `value` with `rel_tol`, e.g. `expect: { min: 100 }`"
                    .into(),
            ));
        }
        for (name, v) in [
            ("min", self.min),
            ("max", self.max),
            ("value", self.value),
            ("rel_tol", self.rel_tol),
        ] {
            if let Some(v) = v
                && !v.is_finite()
            {
                return Err(err(
                    &format!(".{name}"),
                    format!("`{v}` is not a finite number"),
                ));
            }
        }
        if let (Some(lo), Some(hi)) = (self.min, self.max)
            && lo > hi
        {
            return Err(err(
                ".min",
                format!("`min` ({lo}) is above `max` ({hi}); swap them"),
            ));
        }
        if reference && self.value.is_none() {
            return Err(err(
                ".value",
                "`rel_tol` needs the reference `value` it is relative to".into(),
            ));
        }
        if let Some(t) = self.rel_tol
            && t < 0.0
        {
            return Err(err(
                ".rel_tol",
                format!("`rel_tol` is a fraction (0.05 for 5%), not negative ({t})"),
            ));
        }
        Ok(())
    }

    /// Whether `v` meets the expectation.
    pub fn holds(&self, v: f64) -> bool {
        if !v.is_finite() {
            return false;
        }
        if let Some(reference) = self.value {
            let tol = self.rel_tol.unwrap_or(0.0);
            return within(v, reference, tol);
        }
        self.min.is_none_or(|lo| v >= lo) && self.max.is_none_or(|hi| v <= hi)
    }

    /// The bound in words, for failure messages: `at least 100`, `5 ± 5%`.
    pub fn describe(&self) -> String {
        if let Some(reference) = self.value {
            return match self.rel_tol.unwrap_or(0.0) {
                0.0 => format!("exactly {reference}"),
                t => format!("{reference} ± {}%", t * 100.0),
            };
        }
        match (self.min, self.max) {
            (Some(lo), Some(hi)) => format!("between {lo} and {hi}"),
            (Some(lo), None) => format!("at least {lo}"),
            (None, Some(hi)) => format!("at most {hi}"),
            (None, None) => "anything".into(),
        }
    }
}

/// Whether `v` is within `rel_tol` of `reference` (relative to the reference;
/// a zero reference needs `v` within `rel_tol` absolutely).
pub fn within(v: f64, reference: f64, rel_tol: f64) -> bool {
    if v == reference {
        return true;
    }
    let scale = if reference == 0.0 {
        1.0
    } else {
        reference.abs()
    };
    (v - reference).abs() <= rel_tol * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp(yaml: &str) -> Expectation {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn bounds_accept_values_inside_them_only() {
        let e = exp("{min: 1, max: 2}");
        e.check("expect").unwrap();
        assert!(e.holds(1.0) && e.holds(2.0) && e.holds(1.5));
        assert!(!e.holds(0.99) && !e.holds(2.01) && !e.holds(f64::NAN));
        assert_eq!(e.describe(), "between 1 and 2");
        assert_eq!(exp("{min: 100}").describe(), "at least 100");
    }

    #[test]
    fn a_reference_value_accepts_values_within_its_relative_tolerance() {
        let e = exp("{value: 200, rel_tol: 0.05}");
        e.check("expect").unwrap();
        assert!(e.holds(190.0) && e.holds(210.0));
        assert!(!e.holds(189.0) && !e.holds(211.0));
        assert_eq!(e.describe(), "200 ± 5%");
        let exact = exp("{value: 7}");
        assert!(exact.holds(7.0) && !exact.holds(7.000001));
        assert_eq!(exact.describe(), "exactly 7");
    }

    #[test]
    fn contradictory_or_empty_expectations_are_refused_with_the_field() {
        let e = exp("{min: 3, max: 1}")
            .check("metrics.ops.expect")
            .unwrap_err();
        assert_eq!(e.field, "metrics.ops.expect.min");
        assert!(e.message.contains("swap"), "{}", e.message);
        let e = exp("{}").check("metrics.ops.expect").unwrap_err();
        assert_eq!(e.field, "metrics.ops.expect");
        let e = exp("{min: 1, value: 2}").check("x").unwrap_err();
        assert!(e.message.contains("not both"));
        let e = exp("{rel_tol: 0.1}").check("x").unwrap_err();
        assert_eq!(e.field, "x.value");
        let e = exp("{value: 1, rel_tol: -0.1}").check("x").unwrap_err();
        assert_eq!(e.field, "x.rel_tol");
    }
}
