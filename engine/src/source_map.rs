//! Where each node of a workflow file sits, so errors can say `file:line:column`.
//!
//! serde's YAML values carry no positions, so the file is parsed a second time
//! with yaml-rust2's event parser and every node's path (`steps.gen.run[0]`, the
//! same syntax serde_path_to_error prints) is mapped to the position of its key
//! (for mapping entries) or of the node itself (for sequence items).
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
}

impl SourceMap {
    /// Map `text`. A file that does not parse yields an empty map (serde reports the syntax error).
    pub fn parse(text: &str) -> SourceMap {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut builder, false);
        SourceMap {
            positions: builder.positions,
        }
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
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    positions: HashMap<String, Position>,
}

impl Builder {
    /// The path of the node the next value event starts, and record its position.
    fn enter_value(&mut self, mark: Marker) -> String {
        match self.stack.last_mut() {
            None => String::new(),
            Some(Frame::Map { path, key }) => {
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
        if let Event::Scalar(ref s, ..) = ev
            && let Some(Frame::Map { path, key }) = self.stack.last_mut()
            && key.is_none()
        {
            let p = join(path, s);
            self.positions.entry(p).or_insert(pos(mark));
            *key = Some(s.clone());
            return;
        }
        match ev {
            Event::Scalar(..) | Event::Alias(..) => {
                self.enter_value(mark);
            }
            Event::MappingStart(..) => {
                let path = self.enter_value(mark);
                self.positions.entry(path.clone()).or_insert(pos(mark));
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.enter_value(mark);
                self.positions.entry(path.clone()).or_insert(pos(mark));
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
}
