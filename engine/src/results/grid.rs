//! A table of cells and its four printed forms: aligned text for a terminal,
//! CSV for a spreadsheet, JSON for a script, Markdown for a paper's README.
//!
//! CSV and JSON carry every number at full precision (the shortest text that
//! reads back as the same `f64`); the text and Markdown forms round to six
//! significant digits, for people.

use std::fmt;
use std::str::FromStr;

/// One cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Nothing (a value a run lacks, a spread of one run).
    Empty,
    /// Words: a run's name, a matrix value.
    Text(String),
    /// A number, printed in full by CSV and JSON and rounded for people.
    Number(f64),
}

impl Cell {
    /// The cell as CSV and JSON write it (full precision).
    pub fn exact(&self) -> String {
        match self {
            Cell::Empty => String::new(),
            Cell::Text(s) => s.clone(),
            Cell::Number(v) => format!("{v}"),
        }
    }

    /// The cell as a person reads it (six significant digits).
    pub fn rounded(&self) -> String {
        match self {
            Cell::Number(v) => round_for_people(*v),
            other => other.exact(),
        }
    }
}

impl From<&str> for Cell {
    fn from(s: &str) -> Cell {
        Cell::Text(s.to_string())
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell::Text(s)
    }
}

impl From<f64> for Cell {
    fn from(v: f64) -> Cell {
        Cell::Number(v)
    }
}

impl From<Option<f64>> for Cell {
    fn from(v: Option<f64>) -> Cell {
        v.map_or(Cell::Empty, Cell::Number)
    }
}

/// The printed forms of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for a terminal.
    Table,
    /// Comma-separated values with a header line.
    Csv,
    /// An array of objects, one per row.
    Json,
    /// A Markdown table for a paper's notes.
    Markdown,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "table" => Ok(Format::Table),
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            "markdown" | "md" => Ok(Format::Markdown),
            other => Err(format!(
                "unknown format `{other}`: use table, csv, json or markdown"
            )),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Table => "table",
            Format::Csv => "csv",
            Format::Json => "json",
            Format::Markdown => "markdown",
        })
    }
}

/// Headers and rows of cells.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Grid {
    /// The column names.
    pub headers: Vec<String>,
    /// The rows, each as long as `headers`.
    pub rows: Vec<Vec<Cell>>,
}

impl Grid {
    /// The grid printed in `format`.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Table => self.text(),
            Format::Csv => self.csv(),
            Format::Json => self.json(),
            Format::Markdown => self.markdown(),
        }
    }

    /// Header record, then one record per row.
    pub fn csv(&self) -> String {
        let mut out = super::csv::write_record(&self.headers);
        for row in &self.rows {
            let cells: Vec<String> = row.iter().map(Cell::exact).collect();
            out.push_str(&super::csv::write_record(&cells));
        }
        out
    }

    /// An array of objects keyed by header; numbers stay numbers, empty cells are `null`.
    pub fn json(&self) -> String {
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|row| {
                let mut obj = serde_json::Map::new();
                for (h, c) in self.headers.iter().zip(row) {
                    let v = match c {
                        Cell::Empty => serde_json::Value::Null,
                        Cell::Text(s) => serde_json::Value::String(s.clone()),
                        Cell::Number(v) => serde_json::Number::from_f64(*v)
                            .map_or(serde_json::Value::Null, serde_json::Value::Number),
                    };
                    obj.insert(h.clone(), v);
                }
                serde_json::Value::Object(obj)
            })
            .collect();
        let mut s = serde_json::to_string_pretty(&rows).expect("JSON of plain values");
        s.push('\n');
        s
    }

    /// Columns padded to their widest cell; numbers right-aligned.
    pub fn text(&self) -> String {
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| r.iter().map(Cell::rounded).collect())
            .collect();
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| {
                cells
                    .iter()
                    .filter_map(|r| r.get(i))
                    .chain(std::iter::once(&self.headers[i]))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let numeric = self.numeric_columns();
        let line = |texts: &[String], align_numbers: bool| {
            let parts: Vec<String> = texts
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let w = widths.get(i).copied().unwrap_or(0);
                    if align_numbers && numeric[i] {
                        format!("{t:>w$}")
                    } else {
                        format!("{t:<w$}")
                    }
                })
                .collect();
            let mut l = parts.join("  ").trim_end().to_string();
            l.push('\n');
            l
        };
        let mut out = line(&self.headers, false);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&line(&rule, false));
        for r in &cells {
            out.push_str(&line(r, true));
        }
        out
    }

    /// A GitHub-flavoured Markdown table; numeric columns right-aligned.
    pub fn markdown(&self) -> String {
        let esc = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        let numeric = self.numeric_columns();
        let mut out = format!(
            "| {} |\n|{}|\n",
            self.headers
                .iter()
                .map(|h| esc(h))
                .collect::<Vec<_>>()
                .join(" | "),
            numeric
                .iter()
                .map(|n| if *n { "---:" } else { "---" })
                .collect::<Vec<_>>()
                .join("|")
        );
        for row in &self.rows {
            let cells: Vec<String> = row.iter().map(|c| esc(&c.rounded())).collect();
            out.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
        out
    }

    fn numeric_columns(&self) -> Vec<bool> {
        (0..self.headers.len())
            .map(|i| {
                let mut any = false;
                for r in &self.rows {
                    match r.get(i) {
                        Some(Cell::Number(_)) => any = true,
                        Some(Cell::Text(_)) => return false,
                        _ => {}
                    }
                }
                any
            })
            .collect()
    }
}

/// Six significant digits, without trailing zeros; integers as integers.
fn round_for_people(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        return format!("{v:.0}");
    }
    let magnitude = if v == 0.0 {
        0
    } else {
        v.abs().log10().floor() as i32
    };
    if !(-4..15).contains(&magnitude) {
        return format!("{v:.5e}");
    }
    let decimals = (5 - magnitude).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> Grid {
        Grid {
            headers: vec!["run".into(), "size".into(), "ops (ops/s)".into()],
            rows: vec![
                vec!["size=16".into(), "16".into(), 1234.5.into()],
                vec!["size=64,x|y".into(), "64".into(), Cell::Empty],
                vec!["size=8".into(), "8".into(), (2.0f64 / 3.0).into()],
            ],
        }
    }

    #[test]
    fn csv_keeps_full_precision_and_quotes_commas() {
        let csv = grid().csv();
        assert_eq!(
            csv,
            "run,size,ops (ops/s)\nsize=16,16,1234.5\n\"size=64,x|y\",64,\n\
             size=8,8,0.6666666666666666\n"
        );
        let back = crate::results::csv::parse(&csv).unwrap();
        assert_eq!(back[2][0], "size=64,x|y");
        assert_eq!(back[3][2].parse::<f64>().unwrap(), 2.0 / 3.0);
    }

    #[test]
    fn json_keeps_numbers_as_numbers_and_empty_cells_as_null() {
        let v: serde_json::Value = serde_json::from_str(&grid().json()).unwrap();
        assert_eq!(v[0]["ops (ops/s)"], serde_json::json!(1234.5));
        assert_eq!(v[1]["ops (ops/s)"], serde_json::Value::Null);
        assert_eq!(v[2]["size"], serde_json::json!("8"));
    }

    #[test]
    fn the_text_table_aligns_columns_and_rounds_for_people() {
        let t = grid().text();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "run          size  ops (ops/s)");
        assert_eq!(lines[1], "-----------  ----  -----------");
        assert_eq!(lines[2], "size=16      16         1234.5");
        assert_eq!(lines[4], "size=8       8        0.666667");
    }

    #[test]
    fn markdown_escapes_pipes_and_right_aligns_numbers() {
        let m = grid().markdown();
        assert!(
            m.starts_with("| run | size | ops (ops/s) |\n|---|---|---:|\n"),
            "{m}"
        );
        assert!(m.contains("| size=64,x\\|y | 64 |  |"), "{m}");
    }

    #[test]
    fn numbers_round_to_six_significant_digits() {
        assert_eq!(round_for_people(3.0), "3");
        assert_eq!(round_for_people(1.0 / 3.0), "0.333333");
        assert_eq!(round_for_people(123456.789), "123457");
        assert_eq!(round_for_people(0.5), "0.5");
        assert_eq!(round_for_people(1.5e-7), "1.50000e-7");
    }
}
