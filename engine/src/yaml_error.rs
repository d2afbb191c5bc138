//! What is wrong with a workflow file's YAML, said where it is and what to write.
//!
//! serde_yaml's errors name the place of the mapping, not of the repeated key; say
//! "invalid type: string" for a YAML tag; give no place for a second document or
//! an alias bomb. This turns each into a message at the place to fix, and finds
//! the YAML tags (`!!int`, `!foo`) a parsed file still holds: qflow's fields are
//! plain YAML, so a tag is refused, with the line as it should be written.
//!
//! Imports `source_map` and `diagnostic`.

use serde_yaml::Value;

use crate::diagnostic::escaped;
use crate::source_map::{Position, SourceMap};

/// Where and why `text` does not parse as YAML (`e`, serde_yaml's error), in the user's words.
pub fn explain(e: &serde_yaml::Error, text: &str) -> (Option<Position>, String) {
    let mut position = e.location().map(|l| Position {
        line: l.line(),
        column: l.column(),
    });
    let mut msg = e.to_string();
    if let Some(i) = msg.find(" at line ") {
        msg.truncate(i);
    }
    let line_text = |p: Option<Position>| {
        p.and_then(|p| text.lines().nth(p.line.saturating_sub(1)))
            .unwrap_or("")
    };
    // The line that holds a tab in its indentation, if the error is there or just after.
    let tab_line = position.and_then(|p| {
        (p.line.saturating_sub(1)..=p.line).rev().find(|&l| {
            l > 0
                && text.lines().nth(l - 1).is_some_and(|t| {
                    t.chars()
                        .take_while(|c| c.is_whitespace())
                        .any(|c| c == '\t')
                })
        })
    });
    if msg.contains("duplicate entry") {
        let map = SourceMap::parse(text);
        if let Some((path, at)) = map.first_duplicate() {
            let (parent, key) = path.rsplit_once('.').unwrap_or(("", path));
            let first = map.find(path).unwrap_or(at);
            let what = if parent == "steps" {
                format!("a second step named `{}`", escaped(key))
            } else if parent.is_empty() {
                format!("a second `{}`", escaped(key))
            } else {
                format!("a second `{}` in `{}`", escaped(key), escaped(parent))
            };
            return (
                Some(at),
                format!(
                    "{what} (the first is at line {}, column {}); step names and fields must be \
                     unique: rename or remove one",
                    first.line, first.column
                ),
            );
        }
        msg.push_str("; step names and fields must be unique: rename or remove one");
    } else if let Some(tag) = position.and_then(|p| {
        SourceMap::parse(text)
            .tags()
            .iter()
            .find(|t| t.position.line == p.line)
            .cloned()
    }) {
        let at = tag_start(text, &tag.tag, tag.position);
        let line = text.lines().nth(at.line - 1).unwrap_or("");
        return (Some(at), tag_message(&tag.tag, line));
    } else if msg.contains("more than one document") {
        // serde_yaml gives no place: the second document starts at its `---`.
        position = text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.starts_with("---"))
            .map(|(i, _)| Position {
                line: i + 1,
                column: 1,
            })
            .find(|p| {
                text.lines().take(p.line - 1).any(|l| {
                    let l = l.trim();
                    !l.is_empty() && !l.starts_with('#') && !l.starts_with("---")
                })
            });
        msg = "a workflow file holds one YAML document; remove this `---` and what follows, \
               or move it to a file of its own"
            .to_string();
    } else if msg.contains("recursion limit") {
        // No place either: the deepest line (most brackets opened, or indented furthest).
        position = text
            .lines()
            .enumerate()
            .max_by_key(|(i, l)| {
                let opened = l.chars().filter(|c| matches!(c, '[' | '{')).count();
                let indent = l.chars().take_while(|c| *c == ' ').count() / 2;
                (opened + indent, std::cmp::Reverse(*i))
            })
            .map(|(i, _)| Position {
                line: i + 1,
                column: 1,
            });
        msg = "the values nest too deeply (lists and mappings more than 128 levels inside each \
               other); flatten them"
            .to_string();
    } else if msg.contains("repetition limit") {
        position = text
            .lines()
            .position(|l| l.contains(" *") || l.contains("[*") || l.contains(",*"))
            .map(|i| Position {
                line: i + 1,
                column: 1,
            });
        msg = "the file's aliases (`*name`) expand too far (an alias of an alias of ...); \
               write the values out instead"
            .to_string();
    } else if let Some(line) = tab_line {
        position = Some(Position { line, column: 1 });
        msg = format!(
            "invalid YAML: a tab in the indentation ({msg}); YAML indents with spaces only: \
             replace the tab with spaces"
        );
    } else if line_text(position).contains("${{")
        || line_text(position.map(|p| Position {
            line: p.line.saturating_sub(1),
            ..p
        }))
        .contains("${{")
    {
        msg = format!(
            "invalid YAML: {msg} (note: `[${{{{ x }}}}]` and `{{${{{{ x }}}}}}` start a YAML list or \
             mapping; quote the value: `\"${{{{ x }}}}\"`)"
        );
    } else {
        msg = format!("invalid YAML: {msg}");
    }
    (position, msg)
}

/// A tagged value in a parsed file: where (the node's path and position) and what to say.
pub struct TagProblem {
    /// The tagged node's path (`steps.a.kind`).
    pub path: String,
    /// Where the tag is, when the source map places it.
    pub position: Option<Position>,
    /// What is wrong and what to write.
    pub message: String,
}

/// Every value of `doc` (parsed from `text`) that still carries a YAML tag.
/// Tags YAML resolves itself (`!!str x`, `!!int 5`) leave none and pass.
pub fn tagged_values(doc: &Value, text: &str) -> Vec<TagProblem> {
    // Most workflows have no tag: find that out before making a path for every value.
    if !has_tag(doc) {
        return Vec::new();
    }
    let mut paths = Vec::new();
    find_tagged(doc, String::new(), &mut paths);
    if paths.is_empty() {
        return Vec::new();
    }
    let map = SourceMap::parse(text);
    paths
        .into_iter()
        .map(|(path, tag)| {
            let found = map.tags().iter().find(|t| t.path == path);
            let at = found.map(|t| tag_start(text, &t.tag, t.position));
            let line = at.and_then(|p| text.lines().nth(p.line - 1)).unwrap_or("");
            TagProblem {
                position: at,
                message: tag_message(found.map_or(tag.as_str(), |t| t.tag.as_str()), line),
                path,
            }
        })
        .collect()
}

/// Whether `v` or a value inside it still carries a YAML tag.
pub(crate) fn has_tag(v: &Value) -> bool {
    match v {
        Value::Tagged(_) => true,
        Value::Sequence(items) => items.iter().any(has_tag),
        Value::Mapping(m) => m.values().any(has_tag),
        _ => false,
    }
}

fn find_tagged(v: &Value, path: String, found: &mut Vec<(String, String)>) {
    match v {
        Value::Tagged(t) => found.push((path, t.tag.to_string())),
        Value::Sequence(items) => {
            for (i, it) in items.iter().enumerate() {
                find_tagged(it, format!("{path}[{i}]"), found);
            }
        }
        Value::Mapping(m) => {
            for (k, it) in m {
                let k = match k {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                let p = if path.is_empty() {
                    k
                } else {
                    format!("{path}.{k}")
                };
                find_tagged(it, p, found);
            }
        }
        _ => {}
    }
}

/// "YAML tags are not supported", with `line` (where `tag` is written) as it should be.
fn tag_message(tag: &str, line: &str) -> String {
    let plain = line
        .replacen(&format!("{tag} "), "", 1)
        .replacen(tag, "", 1)
        .trim()
        .to_string();
    if plain.is_empty() || plain == line.trim() {
        format!("YAML tags (`{tag}`) are not supported; write the value without its tag")
    } else {
        format!("YAML tags (`{tag}`) are not supported; write the value without its tag: `{plain}`")
    }
}

/// The place of `tag` itself: the parser marks the tagged value, which follows it
/// on its line or (a block list or mapping) starts on a later one.
fn tag_start(text: &str, tag: &str, at: Position) -> Position {
    let lines: Vec<&str> = text.lines().collect();
    for line_no in (1..=at.line.min(lines.len())).rev() {
        let line = lines[line_no - 1];
        let before: String = if line_no == at.line {
            line.chars().take(at.column.saturating_sub(1)).collect()
        } else {
            line.to_string()
        };
        if let Some(byte) = before.rfind(tag) {
            return Position {
                line: line_no,
                column: before[..byte].chars().count() + 1,
            };
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explained(text: &str) -> (Option<Position>, String) {
        let e = serde_yaml::from_str::<Value>(text).unwrap_err();
        explain(&e, text)
    }

    #[test]
    fn a_duplicate_field_is_placed_at_the_duplicate() {
        let (at, msg) =
            explained("version: 1\nsteps:\n  a:\n    kind: command\n    run: [x]\n    run: [y]\n");
        assert_eq!(at, Some(Position { line: 6, column: 5 }));
        assert!(
            msg.starts_with("a second `run` in `steps.a` (the first is at line 5, column 5)"),
            "{msg}"
        );
        let (at, msg) = explained("steps:\n  a: {}\n  b: {}\n  a: {}\n");
        assert_eq!(at.map(|p| p.line), Some(4));
        assert!(msg.starts_with("a second step named `a`"), "{msg}");
    }

    #[test]
    fn too_deep_a_nesting_is_placed_and_not_blamed_on_aliases() {
        let text = format!("a: 1\nb: {}{}\nc: 2\n", "[".repeat(300), "]".repeat(300));
        let (at, msg) = explained(&text);
        assert_eq!(at.map(|p| p.line), Some(2));
        assert!(
            msg.contains("nest too deeply") && !msg.contains("alias"),
            "{msg}"
        );
    }

    #[test]
    fn a_core_tag_that_does_not_fit_says_tags_are_not_supported() {
        let (at, msg) = explained("steps:\n  d:\n    size: !!int 5G\n");
        assert_eq!(
            at,
            Some(Position {
                line: 3,
                column: 11
            })
        );
        assert_eq!(
            msg,
            "YAML tags (`!!int`) are not supported; write the value without its tag: `size: 5G`"
        );
    }

    #[test]
    fn a_value_left_tagged_is_found_with_its_place() {
        let text =
            "steps:\n  a:\n    kind: !foo command\n    run: [!!str x]\n    env: !e\n      A: 1\n";
        let doc: Value = serde_yaml::from_str(text).unwrap();
        let found = tagged_values(&doc, text);
        assert_eq!(found.len(), 2);
        assert_eq!(found[1].path, "steps.a.env");
        assert_eq!(
            found[1].position,
            Some(Position {
                line: 5,
                column: 10
            })
        );
        assert!(found[1].message.ends_with("`env:`"), "{}", found[1].message);
        assert_eq!(found[0].path, "steps.a.kind");
        assert_eq!(
            found[0].position,
            Some(Position {
                line: 3,
                column: 11
            })
        );
        assert!(
            found[0].message.contains("`!foo`") && found[0].message.ends_with("`kind: command`"),
            "{}",
            found[0].message
        );
    }
}
