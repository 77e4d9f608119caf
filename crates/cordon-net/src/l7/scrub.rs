//! Streaming search and replace of secret values, and streaming search for
//! placeholders.
//!
//! A value can be split across any chunk boundary, so the scrubber holds back
//! the longest tail of what it has seen that could still grow into a match,
//! and nothing more: a chunk that ends in something no value starts with is
//! released whole, which keeps server-sent events flowing event by event.

use bytes::{Bytes, BytesMut};
use memchr::memmem::Finder;

/// One value to replace and what replaces it.
#[derive(Clone, Debug)]
pub(crate) struct Needle {
    pub(crate) find: Vec<u8>,
    pub(crate) replace: Vec<u8>,
}

/// How matches are replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// By the needle's replacement (HTTP bodies and headers).
    Replace,
    /// By `*` bytes of the same length, so framing that counts bytes
    /// (WebSocket frame lengths) stays valid.
    Mask,
}

/// A streaming replacer over a fixed set of needles.
pub(crate) struct Scrubber {
    needles: Vec<(Finder<'static>, Vec<u8>)>,
    mode: Mode,
    carry: BytesMut,
    replaced: usize,
}

impl Scrubber {
    pub(crate) fn new(needles: &[Needle], mode: Mode) -> Scrubber {
        Scrubber {
            needles: needles
                .iter()
                .filter(|n| !n.find.is_empty())
                .map(|n| (Finder::new(&n.find).into_owned(), n.replace.clone()))
                .collect(),
            mode,
            carry: BytesMut::new(),
            replaced: 0,
        }
    }

    /// True when there is nothing to look for.
    pub(crate) fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// How many matches were replaced so far.
    pub(crate) fn replaced(&self) -> usize {
        self.replaced
    }

    /// True when bytes are held back waiting for the next chunk.
    pub(crate) fn holding(&self) -> bool {
        !self.carry.is_empty()
    }

    /// Feeds a chunk; returns what can be released now.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Bytes {
        if self.needles.is_empty() {
            return Bytes::copy_from_slice(chunk);
        }
        self.carry.extend_from_slice(chunk);
        let data = std::mem::take(&mut self.carry);
        let mut out = BytesMut::with_capacity(data.len());
        let mut pos = 0;
        loop {
            // The earliest match of any needle; the longest one on ties.
            let hit = self
                .needles
                .iter()
                .enumerate()
                .filter_map(|(i, (f, _))| f.find(&data[pos..]).map(|at| (pos + at, i)))
                .min_by_key(|&(at, i)| (at, usize::MAX - self.needles[i].0.needle().len()));
            let Some((at, i)) = hit else { break };
            out.extend_from_slice(&data[pos..at]);
            let (finder, replacement) = &self.needles[i];
            let len = finder.needle().len();
            match self.mode {
                Mode::Replace => out.extend_from_slice(replacement),
                Mode::Mask => out.extend(std::iter::repeat_n(b'*', len)),
            }
            self.replaced += 1;
            pos = at + len;
        }
        let keep = self.partial_tail(&data[pos..]);
        let release_to = data.len() - keep;
        out.extend_from_slice(&data[pos..release_to]);
        self.carry.extend_from_slice(&data[release_to..]);
        out.freeze()
    }

    /// Releases whatever is held back (end of stream, or a quiet stream that
    /// must not stall).
    pub(crate) fn flush(&mut self) -> Bytes {
        std::mem::take(&mut self.carry).freeze()
    }

    /// Length of the longest suffix of `data` that is a proper prefix of a
    /// needle.
    fn partial_tail(&self, data: &[u8]) -> usize {
        let mut best = 0;
        for (finder, _) in &self.needles {
            let n = finder.needle();
            let max = (n.len() - 1).min(data.len());
            for len in (best + 1..=max).rev() {
                if data[data.len() - len..] == n[..len] {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

/// Replaces every needle in a complete value (a header, a query string).
pub(crate) fn replace_all(value: &[u8], needles: &[Needle]) -> Option<Vec<u8>> {
    let mut s = Scrubber::new(needles, Mode::Replace);
    let mut out = s.push(value).to_vec();
    out.extend_from_slice(&s.flush());
    (s.replaced() > 0).then_some(out)
}

/// Streaming search for placeholders: reports the first one seen, whatever
/// the chunking.
pub(crate) struct Detector {
    finders: Vec<Finder<'static>>,
    tail: Vec<u8>,
    longest: usize,
}

impl Detector {
    pub(crate) fn new<'a>(needles: impl IntoIterator<Item = &'a [u8]>) -> Detector {
        let finders: Vec<Finder<'static>> = needles
            .into_iter()
            .filter(|n| !n.is_empty())
            .map(|n| Finder::new(n).into_owned())
            .collect();
        let longest = finders.iter().map(|f| f.needle().len()).max().unwrap_or(0);
        Detector {
            finders,
            tail: Vec::new(),
            longest,
        }
    }

    /// Index (in construction order) of a needle that occurs in the stream
    /// once `chunk` is added, if any.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Option<usize> {
        if self.finders.is_empty() {
            return None;
        }
        let mut window = std::mem::take(&mut self.tail);
        window.extend_from_slice(chunk);
        let found = self.finders.iter().position(|f| f.find(&window).is_some());
        let keep = self.longest.saturating_sub(1).min(window.len());
        self.tail = window[window.len() - keep..].to_vec();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needles() -> Vec<Needle> {
        vec![
            Needle {
                find: b"s3cr3t-value".to_vec(),
                replace: b"PLACEHOLDER".to_vec(),
            },
            Needle {
                find: b"other".to_vec(),
                replace: b"P2".to_vec(),
            },
        ]
    }

    fn run(chunks: &[&[u8]], mode: Mode) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut s = Scrubber::new(&needles(), mode);
        let mut out = Vec::new();
        let mut pieces = Vec::new();
        for c in chunks {
            let b = s.push(c);
            pieces.push(b.to_vec());
            out.extend_from_slice(&b);
        }
        out.extend_from_slice(&s.flush());
        (out, pieces)
    }

    #[test]
    fn replaces_across_every_split_point() {
        let text = b"a s3cr3t-value b other c s3cr3t-values3cr3t-value";
        let want = b"a PLACEHOLDER b P2 c PLACEHOLDERPLACEHOLDER".to_vec();
        for split in 0..=text.len() {
            let (out, _) = run(&[&text[..split], &text[split..]], Mode::Replace);
            assert_eq!(out, want, "split at {split}");
        }
        let bytewise: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(run(&bytewise, Mode::Replace).0, want);
    }

    #[test]
    fn mask_keeps_length() {
        let text = b"xx s3cr3t-value yy";
        for split in 0..=text.len() {
            let (out, _) = run(&[&text[..split], &text[split..]], Mode::Mask);
            assert_eq!(out, b"xx ************ yy".to_vec());
        }
    }

    #[test]
    fn holds_back_only_possible_prefixes() {
        let (_, pieces) = run(
            &[b"data: one\n\n", b"data: s3cr", b"3t-value\n\n"],
            Mode::Replace,
        );
        assert_eq!(
            pieces[0],
            b"data: one\n\n".to_vec(),
            "an event is released whole"
        );
        assert_eq!(pieces[1], b"data: ".to_vec());
        assert_eq!(pieces[2], b"PLACEHOLDER\n\n".to_vec());
        let (out, _) = run(&[b"s3cr3t-", b"nope"], Mode::Replace);
        assert_eq!(out, b"s3cr3t-nope".to_vec(), "a false start is released");
    }

    #[test]
    fn whole_values() {
        assert_eq!(
            replace_all(b"Bearer s3cr3t-value", &needles()),
            Some(b"Bearer PLACEHOLDER".to_vec())
        );
        assert_eq!(replace_all(b"Bearer x", &needles()), None);
    }

    #[test]
    fn detector_finds_split_needles() {
        let text = b"{\"token\":\"cordon-placeholder-X-0123\"}";
        for split in 0..=text.len() {
            let mut d = Detector::new([b"cordon-placeholder-X-0123".as_slice(), b"zzz"]);
            let a = d.push(&text[..split]);
            let b = d.push(&text[split..]);
            assert_eq!(a.or(b), Some(0), "split at {split}");
        }
        let mut d = Detector::new([b"zzz".as_slice()]);
        assert_eq!(d.push(b"zz"), None);
        assert_eq!(d.push(b"az"), None);
        assert_eq!(d.push(b"zz"), Some(0));
    }
}
