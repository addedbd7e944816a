//! Physical lines of an NDJSON file with a length cap, numbered from 1 with blank lines counted
//! (the numbering the verdict journal's `source` uses).
//!
//! An output file can be hundreds of MB and a single line is model output we do not control, so
//! a line longer than the cap is reported as [`LineTooLong`] and its remaining bytes are skipped
//! as they stream past: memory stays bounded by the cap, whatever the file holds.

use std::io::{self, BufRead};

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Far above any real answer (a receipt of a few hundred words), far below what would hurt a pod.
pub const DEFAULT_MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

/// A line over the cap: its bytes were skipped, only its length is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("line too long: {length} bytes, limit {limit}")]
pub struct LineTooLong {
    /// Bytes before the newline.
    pub length: u64,
    pub limit: usize,
}

/// One read line: its 1-based number and its bytes without the line ending (`\n` or `\r\n`).
pub type NumberedLine<'a> = (u64, Result<&'a [u8], LineTooLong>);

/// The state shared by the blocking and the async reader: they differ only in how they wait.
#[derive(Debug)]
struct Assembler {
    buf: Vec<u8>,
    limit: usize,
    line_no: u64,
    /// Bytes seen of the current line once it went over the cap.
    overflow: Option<u64>,
}

impl Assembler {
    fn new(limit: usize) -> Self {
        Assembler {
            buf: Vec::new(),
            limit,
            line_no: 0,
            overflow: None,
        }
    }

    fn start(&mut self) {
        self.buf.clear();
        self.overflow = None;
    }

    /// Takes bytes up to and including the next newline; returns how many it took and whether
    /// the line is complete.
    fn feed(&mut self, chunk: &[u8]) -> (usize, bool) {
        match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => {
                self.take(&chunk[..i]);
                (i + 1, true)
            }
            None => {
                self.take(chunk);
                (chunk.len(), false)
            }
        }
    }

    fn take(&mut self, part: &[u8]) {
        if let Some(seen) = &mut self.overflow {
            *seen += part.len() as u64;
        } else if self.buf.len() + part.len() > self.limit {
            self.overflow = Some((self.buf.len() + part.len()) as u64);
            self.buf.clear();
        } else {
            self.buf.extend_from_slice(part);
        }
    }

    fn has_partial(&self) -> bool {
        !self.buf.is_empty() || self.overflow.is_some()
    }

    fn emit(&mut self) -> NumberedLine<'_> {
        self.line_no += 1;
        let line = match self.overflow {
            Some(length) => Err(LineTooLong {
                length,
                limit: self.limit,
            }),
            None => Ok(self.buf.strip_suffix(b"\r").unwrap_or(&self.buf)),
        };
        (self.line_no, line)
    }
}

/// Lines of a blocking reader (a downloaded file, a test buffer).
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    asm: Assembler,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(inner: R) -> Self {
        Self::with_max_line_bytes(inner, DEFAULT_MAX_LINE_BYTES)
    }

    pub fn with_max_line_bytes(inner: R, max_line_bytes: usize) -> Self {
        LineReader {
            inner,
            asm: Assembler::new(max_line_bytes),
        }
    }

    /// The next line, or `None` at the end. A final line without a newline still counts; an
    /// empty remainder after the last newline does not.
    pub fn next_line(&mut self) -> io::Result<Option<NumberedLine<'_>>> {
        self.asm.start();
        loop {
            let chunk = match self.inner.fill_buf() {
                Ok(chunk) => chunk,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                return Ok(self.asm.has_partial().then(|| self.asm.emit()));
            }
            let (used, done) = self.asm.feed(chunk);
            self.inner.consume(used);
            if done {
                return Ok(Some(self.asm.emit()));
            }
        }
    }
}

/// Lines of an async reader (a file being read with tokio).
#[derive(Debug)]
pub struct AsyncLineReader<R> {
    inner: R,
    asm: Assembler,
}

impl<R: AsyncBufRead + Unpin> AsyncLineReader<R> {
    pub fn new(inner: R) -> Self {
        Self::with_max_line_bytes(inner, DEFAULT_MAX_LINE_BYTES)
    }

    pub fn with_max_line_bytes(inner: R, max_line_bytes: usize) -> Self {
        AsyncLineReader {
            inner,
            asm: Assembler::new(max_line_bytes),
        }
    }

    /// As [`LineReader::next_line`].
    pub async fn next_line(&mut self) -> io::Result<Option<NumberedLine<'_>>> {
        self.asm.start();
        loop {
            let chunk = self.inner.fill_buf().await?;
            if chunk.is_empty() {
                return Ok(self.asm.has_partial().then(|| self.asm.emit()));
            }
            let (used, done) = self.asm.feed(chunk);
            self.inner.consume(used);
            if done {
                return Ok(Some(self.asm.emit()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufReader, Cursor, Read};

    use super::*;

    type Owned = (u64, Result<Vec<u8>, LineTooLong>);

    fn read_all<R: BufRead>(mut r: LineReader<R>) -> Vec<Owned> {
        let mut out = Vec::new();
        while let Some((n, line)) = r.next_line().unwrap() {
            out.push((n, line.map(<[u8]>::to_vec)));
        }
        out
    }

    async fn read_all_async<R: AsyncBufRead + Unpin>(mut r: AsyncLineReader<R>) -> Vec<Owned> {
        let mut out = Vec::new();
        while let Some((n, line)) = r.next_line().await.unwrap() {
            out.push((n, line.map(<[u8]>::to_vec)));
        }
        out
    }

    fn ok(n: u64, s: &str) -> Owned {
        (n, Ok(s.as_bytes().to_vec()))
    }

    #[test]
    fn blank_lines_are_counted_in_line_numbers() {
        let got = read_all(LineReader::new(Cursor::new("a\n\n  \nb\r\n\nc")));
        assert_eq!(
            got,
            vec![
                ok(1, "a"),
                ok(2, ""),
                ok(3, "  "),
                ok(4, "b"),
                ok(5, ""),
                ok(6, "c")
            ]
        );
    }

    #[test]
    fn a_trailing_newline_adds_no_line() {
        assert_eq!(
            read_all(LineReader::new(Cursor::new("a\nb\n"))),
            vec![ok(1, "a"), ok(2, "b")]
        );
        assert!(read_all(LineReader::new(Cursor::new(""))).is_empty());
        assert_eq!(
            read_all(LineReader::new(Cursor::new("\n"))),
            vec![ok(1, "")]
        );
    }

    /// A reader that hands out tiny chunks, so lines straddle many `fill_buf` calls.
    fn trickle(s: &str, chunk: usize) -> BufReader<impl Read> {
        BufReader::with_capacity(chunk, Cursor::new(s.as_bytes().to_vec()))
    }

    #[test]
    fn oversized_line_is_skipped_without_losing_the_next_ones() {
        let long = "x".repeat(100);
        let text = format!("short\n{long}\nafter\n{long}");
        let got = read_all(LineReader::with_max_line_bytes(trickle(&text, 7), 10));
        let too_long = LineTooLong {
            length: 100,
            limit: 10,
        };
        assert_eq!(
            got,
            vec![
                ok(1, "short"),
                (2, Err(too_long)),
                ok(3, "after"),
                (4, Err(too_long))
            ]
        );
    }

    #[test]
    fn oversized_line_does_not_grow_the_buffer_past_the_cap() {
        let text = format!("{}\nok\n", "y".repeat(1 << 20));
        let mut r = LineReader::with_max_line_bytes(trickle(&text, 4096), 1000);
        let (n, line) = r.next_line().unwrap().unwrap();
        assert_eq!(n, 1);
        assert_eq!(line.unwrap_err().length, 1 << 20);
        assert!(
            r.asm.buf.capacity() <= 2 * 1000 + 4096,
            "{}",
            r.asm.buf.capacity()
        );
        assert_eq!(r.next_line().unwrap().unwrap(), (2, Ok(&b"ok"[..])));
    }

    #[test]
    fn a_line_exactly_at_the_cap_is_kept() {
        let got = read_all(LineReader::with_max_line_bytes(
            trickle("abcd\nabcde\n", 3),
            4,
        ));
        assert_eq!(got[0], ok(1, "abcd"));
        assert!(got[1].1.is_err());
    }

    #[tokio::test]
    async fn async_reader_numbers_and_caps_like_the_blocking_one() {
        let long = "z".repeat(50);
        let text = format!("a\n\n{long}\r\nb\r\n");
        let r = tokio::io::BufReader::with_capacity(5, Cursor::new(text.clone().into_bytes()));
        let got = read_all_async(AsyncLineReader::with_max_line_bytes(r, 20)).await;
        assert_eq!(
            got,
            read_all(LineReader::with_max_line_bytes(trickle(&text, 5), 20))
        );
        assert_eq!(got.len(), 4);
        assert_eq!(got[2].0, 3);
        assert!(got[2].1.is_err());
        assert_eq!(got[3], ok(4, "b"));
    }
}
