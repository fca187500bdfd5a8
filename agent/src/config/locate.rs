//! Maps a key path back to its line and column, through `toml_edit`'s span-preserving parse.

use super::diagnostics::Seg;
use std::cell::OnceCell;
use std::ops::Range;
use toml_edit::{Item, Table, TableLike, Value};

/// The config text, parsed with spans when the first position is asked for (or nothing, when
/// it is not valid TOML).
pub(super) struct Document<'a> {
    /// Where each line starts: a config of 10,000 resources may carry as many diagnostics, and
    /// counting newlines from the top for each would be quadratic.
    line_starts: Vec<usize>,
    text: &'a str,
    /// Most configs have no diagnostics, and the spans of 10,000 resources take 10 MB: parsed
    /// up front, they sat beside the parse that reads the values and set the agent's peak
    /// memory for good.
    doc: OnceCell<Option<toml_edit::ImDocument<&'a str>>>,
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

impl<'a> Document<'a> {
    pub(super) fn parse(text: &'a str) -> Self {
        Document {
            line_starts: line_starts(text),
            text,
            doc: OnceCell::new(),
        }
    }

    /// The position of the deepest part of `path` found in the file: the key itself when it is
    /// there, else its closest parent (a missing key is reported where its table starts).
    pub(super) fn position(&self, path: &[Seg]) -> Option<(usize, usize)> {
        let doc = self
            .doc
            .get_or_init(|| toml_edit::ImDocument::parse(self.text).ok())
            .as_ref()?;
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
        best.map(|span| position_in(&self.line_starts, span.start))
    }
}

fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

/// 1-based line and column of a byte offset, given where the lines start.
fn position_in(line_starts: &[usize], offset: usize) -> (usize, usize) {
    let line = line_starts.partition_point(|&start| start <= offset).max(1);
    (line, offset - line_starts[line - 1] + 1)
}

/// 1-based line and column of a byte offset.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    position_in(&line_starts(text), offset.min(text.len()))
}

#[cfg(test)]
mod tests {
    use super::line_column;

    #[test]
    fn lines_and_columns_count_from_one() {
        let text = "a = 1\nbb = 2\n\nc";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 4), (1, 5));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, 9), (2, 4));
        assert_eq!(line_column(text, 13), (3, 1));
        assert_eq!(line_column(text, 14), (4, 1));
        assert_eq!(line_column(text, 99), (4, 2));
    }
}
