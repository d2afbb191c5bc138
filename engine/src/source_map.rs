//! Where each node of a workflow file sits, so errors can say `file:line:column`.
//!
//! serde's YAML values carry no positions, so the file is parsed a second time
//! with yaml-rust2's event parser and every node's path (`steps.gen.run[0]`, the
//! same syntax serde_path_to_error prints) is mapped to the position of its key
//! (for mapping entries) or of the node itself (for sequence items).
//! It also notes what serde's errors cannot place: a key that repeats one of its
//! mapping (at the repetition) and every YAML tag (`!!int`, `!foo`) with its node.
//!
//! Imports nothing of the engine.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// Path → position of every node in one YAML document.
#[derive(Debug, Default)]
pub struct SourceMap {
    positions: HashMap<String, Position>,
    duplicates: Vec<(String, Position)>,
    tags: Vec<TagUse>,
}

/// A YAML tag on a node: `size: !!int 5G`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagUse {
    /// The node's path (`steps.d.size`).
    pub path: String,
    /// The tag as written: `!!int`, `!foo`.
    pub tag: String,
    /// Where the tagged node starts.
    pub position: Position,
}

impl SourceMap {
    /// Map `text`. A file that does not parse yields an empty map (serde reports the syntax error).
    pub fn parse(text: &str) -> SourceMap {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut builder, false);
        SourceMap {
            positions: builder.positions,
            duplicates: builder.duplicates,
            tags: builder.tags,
        }
    }

    /// The first key that repeats an earlier key of its mapping: its path and the
    /// position of the repetition.
    pub fn first_duplicate(&self) -> Option<(&str, Position)> {
        self.duplicates
            .iter()
            .min_by_key(|(_, p)| (p.line, p.column))
            .map(|(path, p)| (path.as_str(), *p))
    }

    /// Every tagged node, in file order.
    pub fn tags(&self) -> &[TagUse] {
        &self.tags
    }

    /// The position of `path`, or of its nearest mapped ancestor.
    pub fn find(&self, path: &str) -> Option<Position> {
        let mut p = path.to_string();
        loop {
            if let Some(pos) = self.positions.get(&p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p.truncate(cut);
        }
    }
}

enum Frame {
    Map {
        path: String,
        key: Option<String>,
        seen: std::collections::HashSet<String>,
    },
    Seq {
        path: String,
        index: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    positions: HashMap<String, Position>,
    duplicates: Vec<(String, Position)>,
    tags: Vec<TagUse>,
}

impl Builder {
    /// The path of the node the next value event starts, and record its position.
    fn enter_value(&mut self, mark: Marker) -> String {
        match self.stack.last_mut() {
            None => String::new(),
            Some(Frame::Map { path, key, .. }) => {
                let k = key.take().unwrap_or_default();
                join(path, &k)
            }
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                self.positions.entry(p.clone()).or_insert(pos(mark));
                p
            }
        }
    }
}

impl Builder {
    fn note_tag(&mut self, tag: Option<String>, path: String, mark: Marker) {
        if let Some(tag) = tag {
            self.tags.push(TagUse {
                path,
                tag,
                position: pos(mark),
            });
        }
    }
}

/// A tag as the user wrote it: the `!!` handle stands for `tag:yaml.org,2002:`.
fn tag_text(t: &yaml_rust2::parser::Tag) -> String {
    match t.handle.as_str() {
        "tag:yaml.org,2002:" => format!("!!{}", t.suffix),
        h => format!("{h}{}", t.suffix),
    }
}

fn join(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}

fn pos(mark: Marker) -> Position {
    Position {
        line: mark.line().max(1),
        column: mark.col() + 1,
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        // A scalar in key position of a mapping is a key, not a value.
        if let Event::Scalar(ref s, _, _, ref tag) = ev
            && let Some(Frame::Map { path, key, seen }) = self.stack.last_mut()
            && key.is_none()
        {
            let p = join(path, s);
            if !seen.insert(s.clone()) {
                self.duplicates.push((p.clone(), pos(mark)));
            }
            if let Some(t) = tag {
                self.tags.push(TagUse {
                    path: p.clone(),
                    tag: tag_text(t),
                    position: pos(mark),
                });
            }
            self.positions.entry(p).or_insert(pos(mark));
            *key = Some(s.clone());
            return;
        }
        let tag = match &ev {
            Event::Scalar(_, _, _, t) | Event::MappingStart(_, t) | Event::SequenceStart(_, t) => {
                t.as_ref().map(tag_text)
            }
            _ => None,
        };
        match ev {
            Event::Scalar(..) | Event::Alias(..) => {
                let path = self.enter_value(mark);
                self.note_tag(tag, path, mark);
            }
            Event::MappingStart(..) => {
                let path = self.enter_value(mark);
                self.positions.entry(path.clone()).or_insert(pos(mark));
                self.note_tag(tag, path.clone(), mark);
                self.stack.push(Frame::Map {
                    path,
                    key: None,
                    seen: Default::default(),
                });
            }
            Event::SequenceStart(..) => {
                let path = self.enter_value(mark);
                self.positions.entry(path.clone()).or_insert(pos(mark));
                self.note_tag(tag, path.clone(), mark);
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_and_sequence_items() {
        let text = "version: 1\nsteps:\n  gen:\n    kind: command\n    run: [sh, -c, 'x']\n";
        let map = SourceMap::parse(text);
        assert_eq!(
            map.find("steps.gen.kind"),
            Some(Position { line: 4, column: 5 })
        );
        assert_eq!(map.find("steps.gen.run").map(|p| p.line), Some(5));
        assert_eq!(map.find("steps.gen.run[2]").map(|p| p.line), Some(5));
        assert_eq!(map.find("steps.gen.nope").map(|p| p.line), Some(3));
    }

    #[test]
    fn a_repeated_key_is_placed_at_the_repetition() {
        let text = "steps:\n  a:\n    run: [x]\n    kind: command\n    run: [y]\n  b: {}\n";
        let map = SourceMap::parse(text);
        assert_eq!(
            map.first_duplicate(),
            Some(("steps.a.run", Position { line: 5, column: 5 }))
        );
        assert_eq!(
            SourceMap::parse("a: 1\nb: {a: 2}\n").first_duplicate(),
            None
        );
    }

    #[test]
    fn tags_are_noted_with_their_node() {
        let text = "steps:\n  d:\n    size: !!int 5G\n    kind: !foo disk\n    run: !seq [a]\n";
        let map = SourceMap::parse(text);
        let tags: Vec<(&str, &str, usize)> = map
            .tags()
            .iter()
            .map(|t| (t.path.as_str(), t.tag.as_str(), t.position.line))
            .collect();
        assert_eq!(
            tags,
            [
                ("steps.d.size", "!!int", 3),
                ("steps.d.kind", "!foo", 4),
                ("steps.d.run", "!seq", 5)
            ]
        );
    }
}
