//! A figure's declaration in the workflow's `figures:` section.
//!
//! ```yaml
//! figures:
//!   throughput:                 # out/figures/throughput.svg and .png
//!     step: runs                # a step with `metrics:` (usually a boot matrix)
//!     x: size                   # a matrix variable
//!     y: ops                    # a metric; its unit labels the axis
//!     series: mode              # another matrix variable: one line (or bar group) each
//!     chart: line               # line (default) or bar
//!     error_bars: ci95          # ci95 (default) | sd | none: from the repeats
//!     log_x: true
//!     title: Throughput by buffer size
//! ```
//!
//! A figure is drawn from its step's `metrics.json` alone, so changing its spec
//! redraws it and boots nothing.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::field_error::FieldError;

/// A line or a bar chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Chart {
    /// Points joined by lines (the default).
    #[default]
    Line,
    /// Bars side by side, one colour per series.
    Bar,
}

/// What the error bars of a point show, from its repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ErrorBars {
    /// The 95% confidence interval of the mean (Student's t).
    #[default]
    Ci95,
    /// One sample standard deviation either side of the mean.
    Sd,
    /// No error bars.
    None,
}

/// The files a figure is drawn to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// Scalable vector graphics: the figure for a paper.
    Svg,
    /// A bitmap, for a quick look.
    Png,
}

impl ImageFormat {
    /// The file extension, without its dot.
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Svg => "svg",
            ImageFormat::Png => "png",
        }
    }
}

fn default_formats() -> Vec<ImageFormat> {
    vec![ImageFormat::Svg, ImageFormat::Png]
}

/// One figure: a metric of one step over one matrix variable.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FigureSpec {
    /// The step whose metrics are drawn.
    pub step: String,
    /// The matrix variable on the x axis.
    pub x: String,
    /// The metric on the y axis.
    pub y: String,
    /// A matrix variable whose values are drawn as separate series.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series: Option<String>,
    /// `line` (default) or `bar`.
    #[serde(default)]
    pub chart: Chart,
    /// `ci95` (default), `sd` or `none`.
    #[serde(default)]
    pub error_bars: ErrorBars,
    /// A logarithmic x axis (numeric x values only).
    #[serde(default)]
    pub log_x: bool,
    /// A logarithmic y axis.
    #[serde(default)]
    pub log_y: bool,
    /// The title (default: `Y by X`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The x axis label (default: the variable's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_label: Option<String>,
    /// The y axis label (default: the metric's name and unit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y_label: Option<String>,
    /// Files to draw (default: both `svg` and `png`).
    #[serde(default = "default_formats")]
    pub formats: Vec<ImageFormat>,
    /// Size in pixels (default 800 x 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Height in pixels (default 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
}

impl FigureSpec {
    /// Width and height in pixels.
    pub fn size(&self) -> (u32, u32) {
        (self.width.unwrap_or(800), self.height.unwrap_or(500))
    }

    /// The output files of figure `name`.
    pub fn files(&self, name: &str) -> Vec<String> {
        self.formats
            .iter()
            .map(|f| format!("{name}.{}", f.extension()))
            .collect()
    }

    /// Checks that need nothing but the spec; field paths are relative to it.
    pub fn check(&self, name: &str) -> Result<(), FieldError> {
        let file_name = !name.is_empty()
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !file_name {
            return Err(FieldError::new(
                "",
                format!("`{name}` names the figure's files: use letters, digits, `.`, `_` and `-`"),
            ));
        }
        if self.series.as_deref() == Some(self.x.as_str()) {
            return Err(FieldError::new(
                "series",
                format!(
                    "`{}` is already the x axis; pick another matrix variable for the series, or drop `series`",
                    self.x
                ),
            ));
        }
        if self.formats.is_empty() {
            return Err(FieldError::new("formats", "give `svg`, `png` or both"));
        }
        for (field, v) in [("width", self.width), ("height", self.height)] {
            if let Some(v) = v
                && !(100..=10_000).contains(&v)
            {
                return Err(FieldError::new(
                    field,
                    format!("{v} pixels: give 100 to 10000"),
                ));
            }
        }
        if self.log_x && self.chart == Chart::Bar {
            return Err(FieldError::new(
                "log_x",
                "a bar chart's x axis is its categories: drop `log_x` or use `chart: line`",
            ));
        }
        Ok(())
    }

    /// Checks against the step it draws: `matrix` are its matrix variables, `metrics`
    /// its metric names.
    pub fn check_against(&self, matrix: &[String], metrics: &[String]) -> Result<(), FieldError> {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        for (field, var) in [("x", Some(&self.x)), ("series", self.series.as_ref())] {
            if let Some(var) = var
                && !matrix.contains(var)
            {
                return Err(FieldError::new(
                    field,
                    format!(
                        "step `{}` has no matrix variable `{var}`{}; its matrix variables: {}",
                        self.step,
                        crate::diagnostic::did_you_mean(var, matrix.iter().map(String::as_str)),
                        list(matrix)
                    ),
                ));
            }
        }
        if !metrics.contains(&self.y) {
            return Err(FieldError::new(
                "y",
                format!(
                    "step `{}` has no metric `{}`{}; its metrics: {}",
                    self.step,
                    self.y,
                    crate::diagnostic::did_you_mean(&self.y, metrics.iter().map(String::as_str)),
                    list(metrics)
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> FigureSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults_draw_a_line_chart_to_svg_and_png_with_confidence_intervals() {
        let f = spec("{ step: runs, x: size, y: ops }");
        f.check("throughput").unwrap();
        assert_eq!(f.chart, Chart::Line);
        assert_eq!(f.error_bars, ErrorBars::Ci95);
        assert_eq!(f.files("throughput"), ["throughput.svg", "throughput.png"]);
        assert_eq!(f.size(), (800, 500));
    }

    #[test]
    fn axes_and_series_must_name_the_steps_variables_and_metrics() {
        let f = spec("{ step: runs, x: sise, y: ops }");
        let e = f
            .check_against(&["size".into(), "mode".into()], &["ops".into()])
            .unwrap_err();
        assert_eq!(e.field, "x");
        assert!(e.message.contains("did you mean `size`"), "{}", e.message);
        let f = spec("{ step: runs, x: size, y: opps, series: mode }");
        let e = f
            .check_against(&["size".into(), "mode".into()], &["ops".into()])
            .unwrap_err();
        assert_eq!(e.field, "y");
        let f = spec("{ step: runs, x: size, y: ops, series: size }");
        assert_eq!(f.check("t").unwrap_err().field, "series");
    }

    #[test]
    fn unknown_fields_and_charts_are_refused() {
        assert!(serde_yaml::from_str::<FigureSpec>("{ step: a, x: b, y: c, kind: pie }").is_err());
        assert!(serde_yaml::from_str::<FigureSpec>("{ step: a, x: b, y: c, chart: pie }").is_err());
    }
}
