//! Finding where in the YAML text a key path is written.
//!
//! serde_yaml forgets positions once it has built a value, so a problem found in
//! validation (a duplicate server id, a bad address) would otherwise have a key path but
//! no line. This module re-reads the text with yaml-rust2's marked event parser, builds a
//! small position tree, and walks a [`KeyPath`] down it. It runs only when an error is
//! being reported, so a valid config never pays for the second parse.

use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// Where a value sits in the document, e.g. `backends.sockets.servers[1].addr`.
///
/// Structured rather than a dotted string so that keys containing dots (backend names may)
/// are still found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }

    /// This path extended by a map key.
    pub fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_owned()));
        KeyPath(segs)
    }

    /// This path extended by a list index.
    pub fn index(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        KeyPath(segs)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    /// Used when nothing better is known: editors still jump somewhere sensible.
    pub const START: Pos = Pos { line: 1, column: 1 };

    fn from_marker(m: Marker) -> Pos {
        // yaml-rust2 0.10 marks are 1-based lines and 0-based columns.
        Pos {
            line: m.line().max(1),
            column: m.col() + 1,
        }
    }
}

/// Position of the value at `path`, or of the nearest ancestor that exists.
///
/// For a map entry whose value is a scalar on the key's line the value is pointed at (that
/// is what is wrong); for a nested block or a missing value, the key is (that is the line a
/// reader looks for). Unparsable text yields [`Pos::START`] rather than an error: the
/// caller is already reporting one.
pub fn locate(text: &str, path: &KeyPath) -> Pos {
    let Some(root) = Tree::parse(text).root else {
        return Pos::START;
    };
    let mut best = root.mark;
    let mut node = &root;
    for seg in &path.0 {
        match (seg, &node.kind) {
            (Seg::Key(want), Kind::Map(entries)) => {
                let Some((k, v)) = entries.iter().find(|(k, _)| k.is_scalar(want)) else {
                    break;
                };
                best = match &v.kind {
                    Kind::Scalar(_) if v.mark.line == k.mark.line => v.mark,
                    _ => k.mark,
                };
                node = v;
            }
            (Seg::Index(i), Kind::Seq(items)) => {
                let Some(item) = items.get(*i) else { break };
                best = item.mark;
                node = item;
            }
            _ => break,
        }
    }
    best
}

/// Position of the second occurrence of `key` in the map at `parent`.
///
/// serde reports a duplicated key at the start of its map, which for a big map is far from
/// the line to fix.
pub fn locate_duplicate_key(text: &str, parent: &KeyPath, key: &str) -> Option<Pos> {
    let root = Tree::parse(text).root?;
    let mut node = &root;
    for seg in &parent.0 {
        node = match (seg, &node.kind) {
            (Seg::Key(want), Kind::Map(entries)) => {
                &entries.iter().find(|(k, _)| k.is_scalar(want))?.1
            }
            (Seg::Index(i), Kind::Seq(items)) => items.get(*i)?,
            _ => return None,
        };
    }
    match &node.kind {
        Kind::Map(entries) => entries
            .iter()
            .filter(|(k, _)| k.is_scalar(key))
            .nth(1)
            .map(|(k, _)| k.mark),
        _ => None,
    }
}

#[derive(Debug)]
struct Node {
    mark: Pos,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Scalar(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
    /// An alias: its target's position is not where the user wrote this value.
    Alias,
}

impl Node {
    fn is_scalar(&self, want: &str) -> bool {
        matches!(&self.kind, Kind::Scalar(s) if s == want)
    }
}

enum Frame {
    Seq(Pos, Vec<Node>),
    Map(Pos, Vec<(Node, Node)>, Option<Node>),
}

/// Builds the position tree of the first document from marked events.
#[derive(Default)]
struct Tree {
    stack: Vec<Frame>,
    root: Option<Node>,
}

impl Tree {
    /// Drives the parser event by event instead of calling `Parser::load`, which recurses
    /// once per nesting level with no limit: a deeply nested file must not overflow the
    /// stack. A syntax error just ends the tree where it happened.
    fn parse(text: &str) -> Tree {
        let mut tree = Tree::default();
        let mut parser = Parser::new_from_str(text);
        while tree.root.is_none() {
            match parser.next_token() {
                Ok((Event::StreamEnd, _)) | Err(_) => break,
                Ok((ev, mark)) => tree.on_event(ev, mark),
            }
        }
        tree
    }

    fn finish(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq(_, items)) => items.push(node),
            Some(Frame::Map(_, entries, pending)) => match pending.take() {
                None => *pending = Some(node),
                Some(key) => entries.push((key, node)),
            },
        }
    }
}

impl MarkedEventReceiver for Tree {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos::from_marker(mark);
        match ev {
            Event::Scalar(value, ..) => self.finish(Node {
                mark: pos,
                kind: Kind::Scalar(value),
            }),
            Event::Alias(_) => self.finish(Node {
                mark: pos,
                kind: Kind::Alias,
            }),
            Event::SequenceStart(..) => self.stack.push(Frame::Seq(pos, Vec::new())),
            Event::MappingStart(..) => self.stack.push(Frame::Map(pos, Vec::new(), None)),
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match self.stack.pop() {
                    Some(Frame::Seq(mark, items)) => Node {
                        mark,
                        kind: Kind::Seq(items),
                    },
                    Some(Frame::Map(mark, entries, _)) => Node {
                        mark,
                        kind: Kind::Map(entries),
                    },
                    None => return,
                };
                self.finish(node);
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(segs: &[&str]) -> KeyPath {
        KeyPath(
            segs.iter()
                .map(|s| match s.parse::<usize>() {
                    Ok(n) => Seg::Index(n),
                    Err(_) => Seg::Key((*s).to_owned()),
                })
                .collect(),
        )
    }

    fn at(line: usize, column: usize) -> Pos {
        Pos { line, column }
    }

    const DOC: &str = "\
backends:
  sockets:
    servers:
      - { id: node-1, addr: \"127.0.0.1:3001\" }
      - id: node-2
        addr: 127.0.0.1
    cookie:
      name: x
";

    #[test]
    fn scalar_value_in_flow_map_is_found() {
        let p = path(&["backends", "sockets", "servers", "0", "addr"]);
        assert_eq!(locate(DOC, &p), at(4, 29));
    }

    #[test]
    fn scalar_value_in_block_map_is_found() {
        let p = path(&["backends", "sockets", "servers", "1", "addr"]);
        assert_eq!(locate(DOC, &p), at(6, 15));
    }

    #[test]
    fn nested_block_points_at_its_key() {
        assert_eq!(
            locate(DOC, &path(&["backends", "sockets", "cookie"])),
            at(7, 5)
        );
    }

    #[test]
    fn missing_key_falls_back_to_nearest_ancestor() {
        let p = path(&["backends", "sockets", "cookie", "secret"]);
        assert_eq!(locate(DOC, &p), at(7, 5));
        let p = path(&["backends", "sockets", "servers", "7", "addr"]);
        assert_eq!(locate(DOC, &p), at(3, 5));
    }

    #[test]
    fn key_path_displays_dots_and_indexes() {
        let p = path(&["backends", "sockets", "servers", "1", "addr"]);
        assert_eq!(p.to_string(), "backends.sockets.servers[1].addr");
    }

    #[test]
    fn second_occurrence_of_a_duplicate_key_is_found() {
        let text = "a:\n  b: 1\n  c: 2\n  b: 3\n";
        assert_eq!(
            locate_duplicate_key(text, &path(&["a"]), "b"),
            Some(at(4, 3))
        );
        assert_eq!(locate_duplicate_key(text, &path(&["a"]), "c"), None);
    }

    #[test]
    fn garbage_and_deep_nesting_do_not_panic() {
        let deep = "[".repeat(100_000);
        assert_eq!(locate(&deep, &path(&["a"])), Pos::START);
        let deep_maps = "a:\n".to_owned() + &"{a: ".repeat(50_000);
        let _ = locate(&deep_maps, &path(&["a", "a", "a"]));
        assert_eq!(locate(": : :\n\t- [}", &path(&["x"])), Pos::START);
        assert_eq!(locate("", &path(&["x"])), Pos::START);
    }
}
