//! The `figures` kind: a workflow's `figures:` section, drawn from its steps'
//! metrics to SVG and PNG.
//!
//! The engine turns the workflow-level `figures:` section into one step named
//! `figures` of this kind (out/figures/NAME.svg, NAME.png). Its key holds the
//! figures' specs and the output hashes of the steps they draw, and it reads
//! nothing but those steps' `metrics.json`: changing a title, an axis or a chart
//! type redraws the figures and boots nothing, and a rebuild that changes no
//! number leaves them cached. The drawing is plotters' ([`chart`]); text in PNG
//! files uses a font compiled into qflow ([`font`]), so a figure looks the same on
//! every host.

pub mod chart;
pub mod font;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use qflow_engine::results::{FigureData, FigureSpec, ImageFormat, StepMetrics};
use qflow_engine::{
    CheckContext, FieldError, HostNeed, OutputRole, RunContext, Step, StepFields, StepRef, Tool,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// The workflow's figures by name (each name is the stem of its files).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Figures(pub BTreeMap<String, FigureSpec>);

impl StepFields for Figures {
    const KIND: &'static str = "figures";
    const SCHEMA_VERSION: u32 = 1;

    /// Figures are drawn in-process: qflow runs no program for them.
    fn kind_tools() -> Vec<Tool> {
        Vec::new()
    }

    fn kind_needs() -> Vec<HostNeed> {
        Vec::new()
    }
}

impl Step for Figures {
    fn references(&self) -> Vec<StepRef> {
        self.0
            .iter()
            .map(|(name, spec)| StepRef::new(format!("{name}.step"), spec.step.clone()))
            .collect()
    }

    /// A figure is what the workflow exists to produce: a result, always bundled.
    fn output_roles(&self) -> Vec<(String, OutputRole)> {
        self.0
            .iter()
            .flat_map(|(name, spec)| spec.files(name))
            .map(|f| (f, OutputRole::Result))
            .collect()
    }

    fn check(&self, _ctx: &CheckContext) -> Result<(), FieldError> {
        for (name, spec) in &self.0 {
            spec.check(name).map_err(|e| {
                let field = if e.field.is_empty() {
                    name.clone()
                } else {
                    format!("{name}.{}", e.field)
                };
                FieldError::new(field, format!("figure `{name}`: {}", e.message))
            })?;
        }
        Ok(())
    }

    fn plan(&self, _ctx: &CheckContext) -> Vec<String> {
        self.0
            .iter()
            .map(|(name, spec)| {
                format!(
                    "draw {} from {}/metrics.json: {} by {}{}",
                    spec.files(name).join(", "),
                    spec.step,
                    spec.y,
                    spec.x,
                    spec.series
                        .as_ref()
                        .map(|s| format!(", one series per {s}"))
                        .unwrap_or_default()
                )
            })
            .collect()
    }

    fn run(&self, ctx: &mut RunContext) -> anyhow::Result<()> {
        for (name, spec) in &self.0 {
            let dir = ctx.upstream(&spec.step)?;
            let metrics = StepMetrics::read(&dir)?;
            let files = draw(name, spec, &metrics, ctx.out_dir())?;
            ctx.log(&format!("qflow: drew {}", files.join(", ")));
        }
        Ok(())
    }
}

/// Draw figure `name` from `metrics` into `out_dir`; returns the files written.
pub fn draw(
    name: &str,
    spec: &FigureSpec,
    metrics: &StepMetrics,
    out_dir: &Path,
) -> anyhow::Result<Vec<String>> {
    let data =
        FigureData::of(spec, metrics).map_err(|e| anyhow::anyhow!("figure `{name}`: {e}"))?;
    let mut written = Vec::new();
    for format in &spec.formats {
        let file = format!("{name}.{}", format.extension());
        let path = out_dir.join(&file);
        match format {
            ImageFormat::Svg => {
                let svg = chart::svg(&data, spec)?;
                std::fs::write(&path, svg)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            ImageFormat::Png => chart::png(&data, spec, &path)?,
        }
        written.push(file);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use plotters::style::{Color, Palette};
    use qflow_engine::results::{MetricColumn, Row};

    use super::*;

    /// Three sizes x two modes x two repeats; mode `b` is twice mode `a`.
    fn metrics() -> StepMetrics {
        let mut rows = Vec::new();
        for mode in ["a", "b"] {
            for size in ["4", "16", "64"] {
                for rep in 1..=2u32 {
                    let base = size.parse::<f64>().unwrap() * if mode == "a" { 1.0 } else { 2.0 };
                    rows.push(Row {
                        run: format!("mode={mode},size={size}/repeat={rep}"),
                        params: BTreeMap::from([
                            ("mode".to_string(), mode.to_string()),
                            ("size".to_string(), size.to_string()),
                        ]),
                        repeat: Some(rep),
                        values: BTreeMap::from([("ops".to_string(), base + rep as f64)]),
                    });
                }
            }
        }
        StepMetrics {
            step: "runs".into(),
            metrics: vec![MetricColumn {
                name: "ops".into(),
                unit: Some("ops/s".into()),
            }],
            rows,
        }
    }

    fn spec(yaml: &str) -> FigureSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    /// The point markers (filled circles) of an SVG by colour: `(cx, cy)` in
    /// drawing order. An error bar's hollow circle at its mean is not a marker.
    fn markers(svg: &str) -> BTreeMap<String, Vec<(f64, f64)>> {
        let doc = roxmltree::Document::parse(svg).expect("the SVG parses as XML");
        let mut by_colour: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let filled = |n: &roxmltree::Node| n.attribute("fill").is_some_and(|f| f != "none");
        for n in doc
            .descendants()
            .filter(|n| n.has_tag_name("circle") && filled(n))
        {
            let num = |a: &str| n.attribute(a).unwrap().parse::<f64>().unwrap();
            by_colour
                .entry(n.attribute("fill").unwrap_or("").to_string())
                .or_default()
                .push((num("cx"), num("cy")));
        }
        by_colour
    }

    fn texts(svg: &str) -> Vec<String> {
        let doc = roxmltree::Document::parse(svg).unwrap();
        doc.descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text().map(|t| t.trim().to_string()))
            .collect()
    }

    #[test]
    fn a_line_chart_carries_one_marker_per_matrix_value_per_series() {
        let spec = spec("{ step: runs, x: size, y: ops, series: mode, title: Throughput }");
        let data = FigureData::of(&spec, &metrics()).unwrap();
        let svg = chart::svg(&data, &spec).unwrap();
        let by_colour = markers(&svg);
        assert_eq!(by_colour.len(), 2, "two series: {by_colour:?}");
        for points in by_colour.values() {
            assert_eq!(points.len(), 3, "one point per size: {points:?}");
            // Sizes 4, 16, 64 left to right; values grow with size, so each
            // marker sits higher (smaller y) than the one before.
            assert!(
                points
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 > w[1].1)
            );
        }
        // Mode b doubles mode a: at size 64 its marker is the highest of all.
        let highest = by_colour
            .values()
            .map(|p| p[2].1)
            .fold(f64::INFINITY, f64::min);
        assert!(by_colour.values().any(|p| p[2].1 == highest));
        let t = texts(&svg);
        for label in ["Throughput", "size", "ops (ops/s)", "mode=a", "mode=b"] {
            assert!(t.iter().any(|s| s == label), "`{label}` missing from {t:?}");
        }
    }

    fn colour(i: usize) -> String {
        let c = plotters::style::Palette99::pick(i).to_rgba();
        format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
    }

    #[test]
    fn error_bars_come_from_the_repeats() {
        let with = spec("{ step: runs, x: size, y: ops, series: mode }");
        let without = spec("{ step: runs, x: size, y: ops, series: mode, error_bars: none }");
        let bar_lines = |s: &FigureSpec| {
            let svg = chart::svg(&FigureData::of(s, &metrics()).unwrap(), s).unwrap();
            let doc = roxmltree::Document::parse(&svg).unwrap();
            doc.descendants()
                .filter(|n| n.has_tag_name("line") && n.attribute("stroke") == Some(&colour(0)))
                .count()
        };
        // Each error bar is a vertical line and two caps in its series' colour.
        assert_eq!(bar_lines(&with), 9);
        assert_eq!(bar_lines(&without), 0);
    }

    #[test]
    fn a_bar_chart_draws_one_bar_per_matrix_value_per_series() {
        let spec = spec("{ step: runs, x: size, y: ops, series: mode, chart: bar }");
        let svg = chart::svg(&FigureData::of(&spec, &metrics()).unwrap(), &spec).unwrap();
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let colours: Vec<String> = (0..2).map(colour).collect();
        for colour in &colours {
            let bars = doc
                .descendants()
                .filter(|n| n.has_tag_name("rect") && n.attribute("fill") == Some(colour))
                .count();
            // Three bars and the legend's swatch.
            assert_eq!(bars, 4, "{colour}");
        }
    }

    #[test]
    fn log_axes_label_powers_of_ten() {
        let spec = spec("{ step: runs, x: size, y: ops, log_x: true, log_y: true }");
        let svg = chart::svg(&FigureData::of(&spec, &metrics()).unwrap(), &spec).unwrap();
        assert_eq!(markers(&svg).values().map(Vec::len).sum::<usize>(), 3);
        let t = texts(&svg);
        assert!(
            t.iter().any(|s| s == "10") && t.iter().any(|s| s == "100"),
            "{t:?}"
        );
    }

    #[test]
    fn draw_writes_an_svg_and_a_png_with_text() {
        let dir = std::env::temp_dir().join(format!("qflow-figure-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spec = spec("{ step: runs, x: size, y: ops, series: mode }");
        let files = draw("throughput", &spec, &metrics(), &dir).unwrap();
        assert_eq!(files, ["throughput.svg", "throughput.png"]);
        let png = std::fs::read(dir.join("throughput.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        // IHDR: width and height.
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 800);
        assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), 500);
        // Without a title the image differs: the font drew text into the PNG.
        let untitled = spec.clone();
        let titled = FigureSpec {
            title: Some("A different title".into()),
            ..untitled
        };
        draw("titled", &titled, &metrics(), &dir).unwrap();
        assert_ne!(std::fs::read(dir.join("titled.png")).unwrap(), png);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_figure_of_a_metric_without_values_says_so() {
        let mut m = metrics();
        for r in &mut m.rows {
            r.values.clear();
        }
        let spec = spec("{ step: runs, x: size, y: ops }");
        let e = draw("f", &spec, &m, Path::new("/nonexistent")).unwrap_err();
        assert!(e.to_string().contains("no value of metric `ops`"), "{e}");
    }
}
