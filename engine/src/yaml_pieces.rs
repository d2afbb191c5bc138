//! A large workflow's YAML cut into pieces that parse one group at a time.
//!
//! The YAML parser reads a whole document's events into memory before it builds
//! its value, and the value of a 10,000-step workflow then holds every step at
//! once: about 50 MB at the top of a first apply's memory, five times what the
//! steps take once loaded. A workflow in block style, the form a person or a
//! generator writes, can be cut at its lines instead: each top-level key starts
//! at column 0, and each step's name sits at the one indentation of `steps:`'s
//! entries. Each piece then parses on its own, a few steps at a time, and the
//! load keeps only the step it is checking.
//!
//! A cut is made only at a line no YAML value can span: one at column 0 that is
//! `key:` (a plain word), or one at the steps' indentation that is `name:`.
//! A quoted or flow value that crossed such a line would leave its piece
//! unterminated, so that piece fails to parse; an alias naming an anchor in
//! another piece fails the same way. A piece that fails, a tag, or anything
//! else unexpected sends the caller back to parsing the whole document, whose
//! errors and values are the reference: cutting never changes what a workflow
//! means, only how much of it is in memory at once.

use serde_yaml::{Mapping, Value};

use crate::yaml_error::has_tag;

/// Workflows smaller than this are parsed whole: their parse is small anyway.
pub const CUT_ABOVE: usize = 256 << 10;

/// How many steps one parse takes at most: few enough that their events stay
/// small, enough that the parser's own setup is paid rarely.
const STEPS_PER_PARSE: usize = 64;

/// A top-level key and the text of its entry (its line and the lines below it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece<'t> {
    /// The key, as written (a plain word).
    pub key: &'t str,
    /// The entry's lines, its key's line first.
    pub text: &'t str,
}

/// A workflow's text, cut.
#[derive(Debug)]
pub struct Pieces<'t> {
    /// The top-level entries in document order; `steps` is among them with an
    /// empty text (its entries are [`Pieces::steps`]).
    pub top: Vec<Piece<'t>>,
    /// Each step's entry (its name line at the steps' indentation and the lines
    /// below it), in document order.
    pub steps: Vec<Piece<'t>>,
}

/// The piece could not stand on its own: parse the whole document instead.
#[derive(Debug)]
pub struct Uncut;

impl std::fmt::Display for Uncut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the workflow could not be parsed in pieces")
    }
}

impl std::error::Error for Uncut {}

/// `text` cut at its top-level keys and its steps, or `None` when it is not in
/// the plain block form that can be cut (see the module's header).
pub fn cut(text: &str) -> Option<Pieces<'_>> {
    if text.contains('\r') || text.contains('\t') {
        return None;
    }
    let mut top: Vec<Piece> = Vec::new();
    let mut steps: Vec<Piece> = Vec::new();
    // Where the current top-level entry began, and its key.
    let mut entry: Option<(usize, &str)> = None;
    // Inside `steps:`: the entries' indentation once seen, and where the current step began.
    let mut in_steps = false;
    let mut indent = None;
    let mut step: Option<(usize, &str)> = None;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let start = at;
        at += line.len();
        let body = line.trim_end_matches('\n');
        let trimmed = body.trim_start_matches(' ');
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let spaces = body.len() - trimmed.len();
        if spaces == 0 {
            let key = key_of(body)?;
            // The entry before ends here.
            if let Some((from, k)) = entry.take() {
                close(
                    &mut top, &mut steps, &mut step, in_steps, text, from, k, start,
                )?;
            }
            in_steps = key == "steps";
            if in_steps {
                // `steps:` alone on its line: its entries follow as block lines.
                let rest = body["steps:".len()..].trim_start_matches(' ');
                if !(rest.is_empty() || rest.starts_with('#')) {
                    return None;
                }
                indent = None;
            }
            entry = Some((start, key));
            continue;
        }
        // An indented line before any top-level key.
        entry?;
        if !in_steps {
            continue;
        }
        let steps_indent = *indent.get_or_insert(spaces);
        if spaces < steps_indent {
            return None;
        }
        if spaces == steps_indent {
            let name = key_of(trimmed)?;
            if let Some((from, n)) = step.take() {
                steps.push(Piece {
                    key: n,
                    text: &text[from..start],
                });
            }
            step = Some((start, name));
        } else if step.is_none() {
            return None;
        }
    }
    let (from, k) = entry?;
    close(
        &mut top,
        &mut steps,
        &mut step,
        in_steps,
        text,
        from,
        k,
        text.len(),
    )?;
    if steps.is_empty() || !top.iter().any(|p| p.key == "steps") {
        return None;
    }
    let mut names = std::collections::HashSet::with_capacity(steps.len());
    if !steps.iter().all(|s| names.insert(s.key)) {
        return None;
    }
    let mut keys = std::collections::HashSet::new();
    if !top.iter().all(|p| keys.insert(p.key)) {
        return None;
    }
    Some(Pieces { top, steps })
}

/// Ends the top-level entry `key` that began at `from` where `to` begins.
#[allow(clippy::too_many_arguments)]
fn close<'t>(
    top: &mut Vec<Piece<'t>>,
    steps: &mut Vec<Piece<'t>>,
    step: &mut Option<(usize, &'t str)>,
    in_steps: bool,
    text: &'t str,
    from: usize,
    key: &'t str,
    to: usize,
) -> Option<()> {
    if in_steps {
        let (s, name) = step.take()?;
        steps.push(Piece {
            key: name,
            text: &text[s..to],
        });
        top.push(Piece { key, text: "" });
    } else {
        top.push(Piece {
            key,
            text: &text[from..to],
        });
    }
    Some(())
}

/// The key of a `key:` line (the line without its indentation): a word that
/// YAML reads as that string, followed by `:` and a space or the line's end.
fn key_of(line: &str) -> Option<&str> {
    let colon = line.find(':')?;
    let key = &line[..colon];
    let after = &line[colon + 1..];
    let word = key
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    // Words YAML reads as something other than a string.
    let special = matches!(
        key.to_ascii_lowercase().as_str(),
        "true" | "false" | "null" | "y" | "n" | "yes" | "no" | "on" | "off"
    );
    (word && !special && (after.is_empty() || after.starts_with(' '))).then_some(key)
}

/// The value of each piece in `pieces`, parsed [`STEPS_PER_PARSE`] at a time
/// and handed to `each` in order; [`Uncut`] when a group does not parse to
/// exactly its pieces' keys, or holds a tag.
pub fn parse_each<'t>(
    pieces: &[Piece<'t>],
    text: &'t str,
    mut each: impl FnMut(&'t str, Value) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for group in pieces.chunks(STEPS_PER_PARSE) {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            continue;
        };
        let from = offset(text, first.text);
        let to = offset(text, last.text) + last.text.len();
        let Ok(Value::Mapping(map)) = serde_yaml::from_str::<Value>(&text[from..to]) else {
            return Err(Uncut.into());
        };
        if map.len() != group.len() {
            return Err(Uncut.into());
        }
        for (piece, (k, v)) in group.iter().zip(map) {
            if k.as_str() != Some(piece.key) || has_tag(&v) {
                return Err(Uncut.into());
            }
            each(piece.key, v)?;
        }
    }
    Ok(())
}

/// The top-level mapping of `pieces`, without the steps (`steps` maps to an
/// empty mapping, in its place).
pub fn top_mapping(pieces: &Pieces<'_>) -> Result<Mapping, Uncut> {
    let mut top = Mapping::with_capacity(pieces.top.len());
    for piece in &pieces.top {
        if piece.key == "steps" {
            top.insert(Value::from("steps"), Value::Mapping(Mapping::new()));
            continue;
        }
        let Ok(Value::Mapping(map)) = serde_yaml::from_str::<Value>(piece.text) else {
            return Err(Uncut);
        };
        let mut entries = map.into_iter();
        match (entries.next(), entries.next()) {
            (Some((k, v)), None) if k.as_str() == Some(piece.key) && !has_tag(&v) => {
                top.insert(k, v);
            }
            _ => return Err(Uncut),
        }
    }
    Ok(top)
}

/// Where `part`, a slice of `text`, begins in it.
fn offset(text: &str, part: &str) -> usize {
    part.as_ptr() as usize - text.as_ptr() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: &str = "version: 1\n# the steps\nsteps:\n  a:\n    kind: copy\n    run: |\n      x\n\n      y\n\n  # b next\n  b: {kind: copy}\nvars:\n  v: 1\n";

    #[test]
    fn a_block_workflow_is_cut_at_its_top_level_keys_and_its_steps() {
        let p = cut(BLOCK).unwrap();
        let keys: Vec<&str> = p.top.iter().map(|p| p.key).collect();
        assert_eq!(keys, ["version", "steps", "vars"]);
        assert_eq!(p.top[2].text, "vars:\n  v: 1\n");
        let steps: Vec<(&str, &str)> = p.steps.iter().map(|p| (p.key, p.text)).collect();
        assert_eq!(
            steps,
            [
                (
                    "a",
                    "  a:\n    kind: copy\n    run: |\n      x\n\n      y\n\n  # b next\n"
                ),
                ("b", "  b: {kind: copy}\n")
            ]
        );
        let mut got = Vec::new();
        parse_each(&p.steps, BLOCK, |name, v| {
            got.push((name, v));
            Ok(())
        })
        .unwrap();
        let whole: Value = serde_yaml::from_str(BLOCK).unwrap();
        let want: Vec<(&str, Value)> = whole["steps"]
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str().unwrap(), v.clone()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(top_mapping(&p).unwrap()["vars"], whole["vars"]);
    }

    #[test]
    fn what_cannot_be_cut_safely_is_left_whole() {
        for text in [
            // Flow style, documents, directives, tabs, odd names and indentation.
            "version: 1\nsteps: {a: {kind: copy}}\n",
            "---\nversion: 1\nsteps:\n  a: {}\n",
            "%YAML 1.2\n---\nsteps:\n  a: {}\n",
            "version: 1\nsteps:\n\ta: {}\n",
            "version: 1\nsteps:\n  1a: {}\n",
            "version: 1\nsteps:\n  true: {}\n",
            "version: 1\nsteps:\n  'a': {}\n",
            "version: 1\nsteps:\n    a: {}\n  b: {}\n",
            "version: 1\nsteps:\n  - a\n",
            // Twice the same step or key, and no steps.
            "version: 1\nsteps:\n  a: {}\n  a: {}\n",
            "version: 1\nversion: 1\nsteps:\n  a: {}\n",
            "version: 1\nsteps:\n",
            "version: 1\n",
        ] {
            assert!(cut(text).is_none(), "{text:?}");
        }
    }

    #[test]
    fn a_quoted_value_across_a_cut_fails_its_piece() {
        // The whole document reads `to` as one string running over `b:`.
        let text = "version: 1\nsteps:\n  a:\n    to: \"x\n  b: y\"\n";
        let whole: Value = serde_yaml::from_str(text).unwrap();
        assert_eq!(whole["steps"].as_mapping().unwrap().len(), 1);
        let p = cut(text).unwrap();
        let e = parse_each(&p.steps, text, |_, _| Ok(())).unwrap_err();
        assert!(e.is::<Uncut>());
    }
}
