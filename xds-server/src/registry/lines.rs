//! Where each value of a YAML document sits: dotted path (`servers[1].name`) → line.
//!
//! Semantic errors are found on typed values long after the YAML is gone, and
//! [`meshgate_core::config::ConfigError`] only knows a path relative to the filter config.
//! This index, built once from the parser's event stream, turns such a path back into a
//! line of the registry file. It is best-effort by design: on a syntax error it keeps what
//! it saw before the error, and [`LineIndex::line_of`] falls back to the nearest ancestor
//! that was recorded (a missing key points at its parent mapping).
//!
//! Path syntax, shared with the core: mapping keys joined with `.`, sequence indices as
//! `[i]`, the root is the empty string.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Parser};

/// A position in the source: 1-based line, 1-based column (as serde-saphyr reports them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone)]
struct Entry {
    path: String,
    /// Where the mapping key is written; `None` for sequence items and the root.
    key: Option<Position>,
    /// Where the value starts.
    value: Position,
}

impl Entry {
    /// The line a human would point at: the key if there is one, else the value.
    fn line(&self) -> usize {
        self.key.unwrap_or(self.value).line
    }

    fn depth(&self) -> usize {
        self.path.matches(['.', '[']).count() + usize::from(!self.path.is_empty())
    }
}

/// Path → position index of one YAML document.
#[derive(Debug, Clone, Default)]
pub struct LineIndex {
    entries: Vec<Entry>,
    by_path: HashMap<String, usize>,
}

enum Frame {
    Mapping {
        path: String,
        /// The key just read, waiting for its value.
        pending_key: Option<(String, Position)>,
    },
    Sequence {
        path: String,
        next: usize,
    },
    /// A collection used as a mapping key: swallowed whole, nothing recorded inside.
    Ignored {
        depth: usize,
    },
}

impl LineIndex {
    /// Indexes `source`. Never fails: a syntax error ends the walk early.
    pub fn build(source: &str) -> Self {
        let mut index = LineIndex::default();
        let mut stack: Vec<Frame> = Vec::new();
        for event in Parser::new_from_str(source) {
            let Ok((event, span)) = event else { break };
            let at = Position { line: span.start.line(), column: span.start.col() + 1 };
            if let Some(Frame::Ignored { depth }) = stack.last_mut() {
                match event {
                    Event::MappingStart(..) | Event::SequenceStart(..) => *depth += 1,
                    Event::MappingEnd | Event::SequenceEnd => {
                        *depth -= 1;
                        if *depth == 0 {
                            stack.pop();
                        }
                    }
                    _ => {}
                }
                continue;
            }
            match event {
                Event::Scalar(ref text, ..) => {
                    if let Some(Frame::Mapping { pending_key, .. }) = stack.last_mut() {
                        if pending_key.is_none() {
                            *pending_key = Some((text.to_string(), at));
                            continue;
                        }
                    }
                    index.node(&mut stack, at);
                }
                Event::Alias(_) => {
                    index.node(&mut stack, at);
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let is_map = matches!(event, Event::MappingStart(..));
                    if let Some(Frame::Mapping { pending_key, .. }) = stack.last_mut() {
                        if pending_key.is_none() {
                            // A complex key (`? [a, b]: ...`): record nothing for it, and give
                            // its value a placeholder key so the walk stays aligned.
                            *pending_key = Some(("?".to_string(), at));
                            stack.push(Frame::Ignored { depth: 1 });
                            continue;
                        }
                    }
                    let path = index.node(&mut stack, at);
                    stack.push(if is_map {
                        Frame::Mapping { path, pending_key: None }
                    } else {
                        Frame::Sequence { path, next: 0 }
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                Event::DocumentEnd => break,
                _ => {}
            }
        }
        index
    }

    /// Records a node starting at `at` in the current container; returns its path.
    fn node(&mut self, stack: &mut [Frame], at: Position) -> String {
        let (path, key) = match stack.last_mut() {
            None => (String::new(), None),
            Some(Frame::Mapping { path, pending_key }) => match pending_key.take() {
                Some((key, key_at)) => (join_key(path, &key), Some(key_at)),
                None => (join_key(path, "?"), None),
            },
            Some(Frame::Sequence { path, next }) => {
                let item = format!("{path}[{next}]");
                *next += 1;
                (item, None)
            }
            Some(Frame::Ignored { .. }) => return String::new(),
        };
        // Duplicate keys are reported by the deserializer; keep the first occurrence.
        if !self.by_path.contains_key(&path) {
            self.by_path.insert(path.clone(), self.entries.len());
            self.entries.push(Entry { path: path.clone(), key, value: at });
        }
        path
    }

    /// The line of `path`, or of its nearest recorded ancestor.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut current = path;
        loop {
            if let Some(&i) = self.by_path.get(current) {
                return self.entries.get(i).map(Entry::line);
            }
            current = parent(current)?;
        }
    }

    /// The path of the node an error at `at` most likely concerns: among nodes whose key
    /// or value starts on that line at or before the column, the closest one. `outer`
    /// prefers the shallowest candidate on ties (errors about a whole mapping, such as a
    /// missing field, point at its first key, where its first child also starts).
    pub fn path_at(&self, at: Position, outer: bool) -> Option<&str> {
        let mut best: Option<(Position, usize, &Entry)> = None;
        for entry in &self.entries {
            for pos in [entry.key, Some(entry.value)].into_iter().flatten() {
                if pos.line != at.line || pos.column > at.column {
                    continue;
                }
                let depth = entry.depth();
                let better = match best {
                    None => true,
                    Some((best_pos, best_depth, _)) => {
                        pos > best_pos
                            || (pos == best_pos && if outer { depth < best_depth } else { depth > best_depth })
                    }
                };
                if better {
                    best = Some((pos, depth, entry));
                }
            }
        }
        best.map(|(_, _, entry)| entry.path.as_str())
    }
}

fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// `a.b[2]` → `a.b` → `a` → `` → none.
pub fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    if path.ends_with(']') {
        if let Some(i) = path.rfind('[') {
            return Some(&path[..i]);
        }
    }
    Some(path.rfind('.').map_or("", |i| &path[..i]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
listener: { address: 127.0.0.1, port: 10000 }
servers:
  - name: crm
    url: http://127.0.0.1:9101/mcp
  - name: docs

    url: http://127.0.0.1:9102/mcp
policy:
  roles:
    admin:
      allow: [\"*\"]
      deny:
        - crm/delete_*
        - \"crm/[a]\"
";

    #[test]
    fn maps_paths_to_lines() {
        let index = LineIndex::build(DOC);
        let cases = [
            ("", 1),
            ("listener", 1),
            ("listener.port", 1),
            ("servers", 2),
            ("servers[0]", 3),
            ("servers[0].name", 3),
            ("servers[0].url", 4),
            ("servers[1].name", 5),
            ("servers[1].url", 7),
            ("policy.roles.admin", 10),
            ("policy.roles.admin.allow[0]", 11),
            ("policy.roles.admin.deny[1]", 14),
        ];
        for (path, line) in cases {
            assert_eq!(index.line_of(path), Some(line), "{path}");
        }
    }

    #[test]
    fn missing_paths_fall_back_to_the_nearest_ancestor() {
        let index = LineIndex::build(DOC);
        assert_eq!(index.line_of("servers[1].timeout"), Some(5));
        assert_eq!(index.line_of("policy.roles.admin.resources.allow[0]"), Some(10));
        assert_eq!(index.line_of("auth.jwt[0]"), Some(1));
    }

    #[test]
    fn finds_the_path_at_a_position() {
        let index = LineIndex::build(DOC);
        let at = |line, column| Position { line, column };
        assert_eq!(index.path_at(at(1, 33), false), Some("listener.port"));
        assert_eq!(index.path_at(at(4, 10), false), Some("servers[0].url"));
        // A block mapping starts where its first key does.
        assert_eq!(index.path_at(at(3, 5), false), Some("servers[0].name"));
        assert_eq!(index.path_at(at(3, 5), true), Some("servers[0]"));
        assert_eq!(index.path_at(at(6, 1), false), None);
    }

    #[test]
    fn stops_quietly_at_a_syntax_error() {
        let index = LineIndex::build("a: 1\nb: [x\nc: 2\n");
        assert_eq!(index.line_of("a"), Some(1));
        assert_eq!(index.line_of("c"), Some(1));
    }

    #[test]
    fn complex_keys_do_not_derail_the_walk() {
        let index = LineIndex::build("? [a, b]\n: 1\nz: 2\n");
        assert_eq!(index.line_of("z"), Some(3));
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent("a.b[2]"), Some("a.b"));
        assert_eq!(parent("a.b"), Some("a"));
        assert_eq!(parent("a"), Some(""));
        assert_eq!(parent(""), None);
    }
}
