//! Diagnostics: what is wrong with a policy file, and where.
//!
//! A [`Diagnostic`] is a 1-based line and column plus a message. Columns count
//! characters, not bytes, so they agree with what an editor shows.

use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::Serialize;

/// One problem in a policy or config file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// What is wrong, and usually what to write instead.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

/// Every problem found in one file, sorted by position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// The diagnostics as `PATH:LINE:COL: MESSAGE` lines, the form compilers use
    /// and editors jump to.
    pub fn with_path<'a>(&'a self, path: &'a Path) -> WithPath<'a> {
        WithPath {
            diagnostics: self,
            path,
        }
    }

    /// Number of diagnostics.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Iterates over the diagnostics in file order.
    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl<'a> IntoIterator for &'a Diagnostics {
    type Item = &'a Diagnostic;
    type IntoIter = std::slice::Iter<'a, Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// See [`Diagnostics::with_path`].
pub struct WithPath<'a> {
    diagnostics: &'a Diagnostics,
    path: &'a Path,
}

impl fmt::Display for WithPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{d}", self.path.display())?;
        }
        Ok(())
    }
}

/// Collects diagnostics against one source text, converting byte spans to
/// line and column.
pub(crate) struct Collector<'s> {
    src: &'s str,
    found: Vec<(usize, String)>,
}

impl<'s> Collector<'s> {
    pub(crate) fn new(src: &'s str) -> Self {
        Collector {
            src,
            found: Vec::new(),
        }
    }

    /// Records `message` at the start of `span` (or at the start of the file
    /// when the parser kept no position).
    pub(crate) fn error(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        self.found
            .push((span.map_or(0, |s| s.start), message.into()));
    }

    /// `Ok(value)` when nothing was recorded, else every diagnostic in file order.
    pub(crate) fn finish<T>(mut self, value: T) -> Result<T, Diagnostics> {
        if self.found.is_empty() {
            return Ok(value);
        }
        // Stable: two errors at the same place keep the order they were found in.
        self.found.sort_by_key(|(offset, _)| *offset);
        // One pass over the text for all positions, so a large file with many
        // errors costs its length, not its length times the number of errors.
        let mut diagnostics = Vec::with_capacity(self.found.len());
        let (mut line, mut column, mut at) = (1, 1, 0);
        for (offset, message) in self.found {
            let offset = clamp_to_char_boundary(self.src, offset);
            for c in self.src[at..offset].chars() {
                if c == '\n' {
                    line += 1;
                    column = 1;
                } else {
                    column += 1;
                }
            }
            at = offset;
            diagnostics.push(Diagnostic {
                line,
                column,
                message,
            });
        }
        Err(Diagnostics(diagnostics))
    }
}

fn clamp_to_char_boundary(src: &str, offset: usize) -> usize {
    let mut offset = offset.min(src.len());
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(src: &str, offset: usize) -> (usize, usize) {
        let mut c = Collector::new(src);
        c.error(Some(offset..offset), "x");
        let d = c.finish(()).unwrap_err();
        (d.0[0].line, d.0[0].column)
    }

    #[test]
    fn positions_count_characters_from_one() {
        let src = "ab\nçd = 1\n";
        assert_eq!(position(src, 0), (1, 1));
        assert_eq!(position(src, 2), (1, 3));
        assert_eq!(position(src, 3), (2, 1));
        // `d` is byte 5 (ç is two bytes) but the second character.
        assert_eq!(position(src, 5), (2, 2));
        // Inside ç: clamped to its start.
        assert_eq!(position(src, 4), (2, 1));
        assert_eq!(position(src, 999), (3, 1));
    }

    #[test]
    fn collector_sorts_by_position() {
        let src = "a\nb\nc\n";
        let mut c = Collector::new(src);
        c.error(Some(4..5), "third");
        c.error(Some(0..1), "first");
        c.error(Some(2..3), "second");
        let d = c.finish(()).unwrap_err();
        assert_eq!(d.to_string(), "1:1: first\n2:1: second\n3:1: third");
        assert_eq!(
            d.with_path(Path::new("p.toml")).to_string(),
            "p.toml:1:1: first\np.toml:2:1: second\np.toml:3:1: third"
        );
    }
}
