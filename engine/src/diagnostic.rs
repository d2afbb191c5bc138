//! Errors in a workflow, found before anything runs: each names the file, the
//! line and column, the field, and says what to do. The binary exits 2 on them.
//!
//! Imports `source_map`.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::source_map::{Position, SourceMap};

/// One problem at one place of a workflow file.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    /// The workflow file.
    pub file: PathBuf,
    /// Line and column, when known.
    pub position: Option<Position>,
    /// The path of the field (`steps.gen.run`), empty for the whole file.
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(p) = self.position {
            write!(f, ":{}:{}", p.line, p.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": `{}`", escaped(&self.field))?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A workflow that cannot run, with every problem found in it.
#[derive(Debug, Clone)]
pub struct InvalidWorkflow {
    /// Every problem found, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for InvalidWorkflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for InvalidWorkflow {}

/// Collects diagnostics for one file. The file's source map (positions) is
/// built only when the first problem is reported: a valid workflow never pays
/// for a second parse.
pub struct Diagnostics<'a> {
    file: &'a Path,
    text: &'a str,
    map: std::cell::OnceCell<SourceMap>,
    found: Vec<Diagnostic>,
}

impl<'a> Diagnostics<'a> {
    /// Collect problems in `file`, whose content is `text`.
    pub fn new(file: &'a Path, text: &'a str) -> Self {
        Diagnostics {
            file,
            text,
            map: std::cell::OnceCell::new(),
            found: Vec::new(),
        }
    }

    /// Report `message` at the field `path`.
    pub fn at(&mut self, path: &str, message: impl Into<String>) {
        self.found.push(Diagnostic {
            file: self.file.to_path_buf(),
            position: self
                .map
                .get_or_init(|| SourceMap::parse(self.text))
                .find(path),
            field: path.to_string(),
            message: message.into(),
        });
    }

    /// Report `message` at the field `path`, placed at `position` (a place the
    /// source map's path lookup would not give: a repeated key, a tag).
    pub fn at_place(&mut self, path: &str, position: Option<Position>, message: impl Into<String>) {
        let position = position.or_else(|| {
            self.map
                .get_or_init(|| SourceMap::parse(self.text))
                .find(path)
        });
        self.found.push(Diagnostic {
            file: self.file.to_path_buf(),
            position,
            field: path.to_string(),
            message: message.into(),
        });
    }

    /// Report at an explicit position (syntax errors).
    pub fn at_position(&mut self, position: Option<Position>, message: impl Into<String>) {
        self.found.push(Diagnostic {
            file: self.file.to_path_buf(),
            position,
            field: String::new(),
            message: message.into(),
        });
    }

    /// How many problems so far.
    pub fn len(&self) -> usize {
        self.found.len()
    }

    /// Whether no problem was found.
    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// `Ok` if no problem was found, else all of them.
    pub fn finish(mut self) -> Result<(), InvalidWorkflow> {
        if self.found.is_empty() {
            Ok(())
        } else {
            // In file order, as found within a line; problems of the whole file first.
            self.found
                .sort_by_key(|d| d.position.map(|p| (p.line, p.column)));
            Err(InvalidWorkflow {
                diagnostics: self.found,
            })
        }
    }
}

/// `; did you mean `x`?` when a candidate is close to `word`, else empty.
pub fn did_you_mean<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> String {
    let best = candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((_, c)) => format!("; did you mean `{c}`?"),
        None => String::new(),
    }
}

/// Optimal string alignment distance: insertions, deletions, substitutions and
/// transpositions of neighbours (`gne` → `gen`) each cost 1.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// `text` with its control characters escaped (`\n`, `\u{7}`), to print a name
/// from a workflow or the command line in one line of an error.
pub fn escaped(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            did_you_mean("ouputs", ["outputs", "inputs", "run"]),
            "; did you mean `outputs`?"
        );
        assert_eq!(did_you_mean("zzz", ["outputs", "inputs"]), "");
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escaped("a\nb\u{7}é"), "a\\nb\\u{7}é");
        assert!(matches!(escaped("gen"), std::borrow::Cow::Borrowed("gen")));
    }
}
