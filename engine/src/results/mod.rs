//! Results: the numbers a workflow's runs produce, gathered into tables and checked.
//!
//! A step declares `metrics:` (a name, where the number comes from, its unit and
//! what it is expected to be); after each run the step extracts them from the
//! run's own files, so a table, a figure and `qflow verify` all read the same
//! values from the step's `metrics.json`. Nothing here knows QEMU or a step kind:
//! a run is a directory of files and a set of matrix values. Imports
//! `field_error` only.

pub mod csv;
pub mod expectation;
pub mod extract;
pub mod figure_data;
pub mod figure_spec;
pub mod grid;
pub mod metric_spec;
pub mod metrics_file;
pub mod statistics;
pub mod table;
pub mod unmet;

pub use expectation::Expectation;
pub use extract::{MetricError, extract, extract_all};
pub use figure_data::FigureData;
pub use figure_spec::{Chart, ErrorBars, FigureSpec, ImageFormat};
pub use grid::{Cell, Format, Grid};
pub use metric_spec::{MetricSpec, Source, check_metrics, check_metrics_read};
pub use metrics_file::{MetricColumn, Row, StepMetrics, flat_name, metric_of_flat};
pub use statistics::Summary;
pub use table::ResultsTable;
pub use unmet::{Unmet, unmet, unmet_in_tree};
