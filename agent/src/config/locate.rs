//! Maps a key path back to its line and column, through `toml_edit`'s span-preserving parse.

use super::Seg;
use std::ops::Range;
use toml_edit::{Item, Table, TableLike, Value};

/// The config text parsed with spans (or nothing, when it is not valid TOML).
pub(super) struct Document {
    text: String,
    doc: Option<toml_edit::ImDocument<String>>,
}

/// A place in the parsed document: `[[array]]` entries are tables, array elements are values.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Table(&'a Table),
    Value(&'a Value),
}

impl<'a> Node<'a> {
    fn as_table_like(self) -> Option<&'a dyn TableLike> {
        match self {
            Node::Item(i) => i.as_table_like(),
            Node::Table(t) => Some(t),
            Node::Value(v) => v.as_inline_table().map(|t| t as &dyn TableLike),
        }
    }

    fn element(self, index: usize) -> Option<(Node<'a>, Option<Range<usize>>)> {
        match self {
            Node::Item(Item::ArrayOfTables(a)) => a.get(index).map(|t| (Node::Table(t), t.span())),
            Node::Item(Item::Value(Value::Array(a))) | Node::Value(Value::Array(a)) => {
                a.get(index).map(|v| (Node::Value(v), v.span()))
            }
            _ => None,
        }
    }
}

impl Document {
    pub(super) fn parse(text: &str) -> Self {
        Document {
            text: text.to_string(),
            doc: toml_edit::ImDocument::parse(text.to_string()).ok(),
        }
    }

    /// The position of the deepest part of `path` found in the file: the key itself when it is
    /// there, else its closest parent (a missing key is reported where its table starts).
    pub(super) fn position(&self, path: &[Seg]) -> Option<(usize, usize)> {
        let doc = self.doc.as_ref()?;
        let mut node = Node::Item(doc.as_item());
        let mut best: Option<Range<usize>> = None;
        for seg in path {
            let (next, span) = match seg {
                Seg::Key(key) => match node.as_table_like().and_then(|t| t.get_key_value(key)) {
                    Some((k, v)) => (Node::Item(v), k.span()),
                    None => break,
                },
                Seg::Index(i) => match node.element(*i) {
                    Some(found) => found,
                    None => break,
                },
            };
            best = span.or(best);
            node = next;
        }
        best.map(|span| line_column(&self.text, span.start))
    }
}

/// 1-based line and column of a byte offset.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}
