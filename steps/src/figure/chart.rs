//! Drawing a figure's data with plotters: a line chart (one line and one marker
//! per point for each series) or a grouped bar chart, error bars from repeats,
//! linear or logarithmic axes, the same code for SVG and PNG.
//!
//! Non-numeric x values (and every bar chart) sit at integer positions labelled
//! with the values; numeric x values sit at their own value on a continuous axis.

use std::ops::Range;
use std::path::Path;

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use qflow_engine::results::figure_data::Point;
use qflow_engine::results::{Chart, FigureData, FigureSpec};

use super::font;

/// The figure as SVG text.
pub fn svg(data: &FigureData, spec: &FigureSpec) -> anyhow::Result<String> {
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, spec.size()).into_drawing_area();
        draw(&root, data, spec)?;
    }
    Ok(text)
}

/// Draw the figure as a PNG file at `path`.
pub fn png(data: &FigureData, spec: &FigureSpec, path: &Path) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, spec.size()).into_drawing_area();
    draw(&root, data, spec)
}

fn fail<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("cannot draw the figure: {e}")
}

/// Where a point sits on the x axis.
fn x_of(data: &FigureData, spec: &FigureSpec, p: &Point) -> f64 {
    if data.numeric_x && spec.chart == Chart::Line {
        p.x.parse().expect("numeric x values parse")
    } else {
        data.categories.iter().position(|c| *c == p.x).unwrap_or(0) as f64
    }
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    data: &FigureData,
    spec: &FigureSpec,
) -> anyhow::Result<()> {
    font::register();
    root.fill(&WHITE).map_err(fail)?;
    let continuous = data.numeric_x && spec.chart == Chart::Line;
    let xs: Vec<f64> = data
        .series
        .iter()
        .flat_map(|s| &s.points)
        .map(|p| x_of(data, spec, p))
        .collect();
    let x_range = if continuous {
        padded(&xs, spec.log_x, false)
    } else {
        -0.5..data.categories.len() as f64 - 0.5
    };
    let mut ys: Vec<f64> = Vec::new();
    for p in data.series.iter().flat_map(|s| &s.points) {
        let e = p.error.unwrap_or(0.0);
        ys.push(p.mean + e);
        ys.push(if spec.log_y { p.mean } else { p.mean - e });
    }
    let y_range = padded(&ys, spec.log_y, spec.chart == Chart::Bar);
    match (spec.log_x && continuous, spec.log_y) {
        (false, false) => plot(root, x_range.clone(), y_range.clone(), data, spec),
        (true, false) => plot(
            root,
            x_range.clone().log_scale(),
            y_range.clone(),
            data,
            spec,
        ),
        (false, true) => plot(
            root,
            x_range.clone(),
            y_range.clone().log_scale(),
            data,
            spec,
        ),
        (true, true) => plot(
            root,
            x_range.clone().log_scale(),
            y_range.clone().log_scale(),
            data,
            spec,
        ),
    }?;
    root.present().map_err(fail)
}

/// A range around `values` with a margin; `from_zero` includes 0 (bars).
fn padded(values: &[f64], log: bool, from_zero: bool) -> Range<f64> {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if log {
        let lo = values
            .iter()
            .copied()
            .filter(|v| *v > 0.0)
            .fold(f64::INFINITY, f64::min);
        return lo / 1.5..hi * 1.5;
    }
    let (lo, hi) = if from_zero {
        (lo.min(0.0), hi.max(0.0))
    } else {
        (lo, hi)
    };
    let span = if hi > lo { hi - lo } else { hi.abs().max(1.0) };
    let lo = if from_zero && lo == 0.0 {
        0.0
    } else {
        lo - span * 0.08
    };
    lo..hi + span * 0.08
}

fn plot<DB, X, Y>(
    root: &DrawingArea<DB, Shift>,
    x: X,
    y: Y,
    data: &FigureData,
    spec: &FigureSpec,
) -> anyhow::Result<()>
where
    DB: DrawingBackend,
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let continuous = data.numeric_x && spec.chart == Chart::Line;
    let mut chart = ChartBuilder::on(root)
        .caption(&data.title, (font::FAMILY, 24))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(x, y)
        .map_err(fail)?;
    let category = |v: &f64| {
        let i = v.round();
        if (v - i).abs() < 1e-6 && i >= 0.0 {
            data.categories.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let number = |v: &f64| tick(*v);
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(&data.x_label)
        .y_desc(&data.y_label)
        .axis_desc_style((font::FAMILY, 16))
        .label_style((font::FAMILY, 13))
        .y_label_formatter(&number)
        .light_line_style(WHITE.mix(0.0));
    if continuous {
        mesh.x_label_formatter(&number);
    } else {
        mesh.x_labels(data.categories.len() + 2)
            .x_label_formatter(&category)
            .disable_x_mesh();
    }
    mesh.draw().map_err(fail)?;

    let groups = data.series.len().max(1) as f64;
    let bar_width = 0.8 / groups;
    // Bars rise from zero, or from the bottom of a logarithmic axis.
    let base = if spec.log_y {
        chart.y_range().start
    } else {
        0.0
    };
    for (i, series) in data.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let name = series.name.clone().unwrap_or_else(|| data.y_label.clone());
        let xs: Vec<f64> = series
            .points
            .iter()
            .map(|p| {
                let x = x_of(data, spec, p);
                match spec.chart {
                    Chart::Line => x,
                    Chart::Bar => x - 0.4 + bar_width * (i as f64 + 0.5),
                }
            })
            .collect();
        match spec.chart {
            Chart::Line => {
                chart
                    .draw_series(LineSeries::new(
                        xs.iter().zip(&series.points).map(|(x, p)| (*x, p.mean)),
                        color.stroke_width(2),
                    ))
                    .map_err(fail)?
                    .label(name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(
                        xs.iter()
                            .zip(&series.points)
                            .map(|(x, p)| Circle::new((*x, p.mean), 4, color.filled())),
                    )
                    .map_err(fail)?;
            }
            Chart::Bar => {
                chart
                    .draw_series(xs.iter().zip(&series.points).map(|(x, p)| {
                        Rectangle::new(
                            [(x - bar_width * 0.45, base), (x + bar_width * 0.45, p.mean)],
                            color.filled(),
                        )
                    }))
                    .map_err(fail)?
                    .label(name)
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 6), (x + 16, y + 6)], color.filled())
                    });
            }
        }
        // On a line, the bar takes the series' colour; on a filled bar, black shows.
        let bar_style = match spec.chart {
            Chart::Line => color.stroke_width(1),
            Chart::Bar => BLACK.mix(0.8).stroke_width(1),
        };
        let bars: Vec<_> = xs
            .iter()
            .zip(&series.points)
            .filter_map(|(x, p)| {
                let e = p.error?;
                let low = if spec.log_y {
                    (p.mean - e).max(chart.y_range().start)
                } else {
                    p.mean - e
                };
                Some(ErrorBar::new_vertical(
                    *x,
                    low,
                    p.mean,
                    p.mean + e,
                    bar_style,
                    8,
                ))
            })
            .collect();
        chart.draw_series(bars).map_err(fail)?;
    }
    if data.series.iter().any(|s| s.name.is_some()) {
        chart
            .configure_series_labels()
            .label_font((font::FAMILY, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.5))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(fail)?;
    }
    Ok(())
}

/// An axis label: integers as integers, else up to four significant digits.
fn tick(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        return format!("{v:.0}");
    }
    let magnitude = v.abs().log10().floor() as i32;
    if !(-3..6).contains(&magnitude) {
        return format!("{v:.2e}");
    }
    let decimals = (3 - magnitude).max(0) as usize;
    let s = format!("{v:.decimals$}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}
