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

/// Where a line was found, so it can be read again without reading the file up to it: what a
/// first pass over a file keeps to come back to a receipt's lines ([`super::BatchIndex`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LineRef {
    /// Byte offset of the line's first byte in the file.
    pub offset: u64,
    /// 1-based physical line number (blank lines counted).
    pub line_no: u64,
    /// Bytes of the line as [`NumberedLine`] yields it (without `\n` or `\r\n`).
    pub len: u32,
}

/// A read line with where it was found: `(line number, byte offset, bytes or too long)`.
pub type LocatedLine<'a> = (u64, u64, Result<&'a [u8], LineTooLong>);

impl LineRef {
    /// The reference of a line the reader just yielded; `None` for a line over the cap (it
    /// cannot be read back whole, and there is nothing in it to read).
    pub fn of(line: &LocatedLine<'_>) -> Option<LineRef> {
        let (line_no, offset, bytes) = line;
        let len = u32::try_from(bytes.as_ref().ok()?.len()).ok()?;
        Some(LineRef {
            offset: *offset,
            line_no: *line_no,
            len,
        })
    }

    /// Reads the line back from a file (positioned reads: the file is shared, never seeked).
    /// `buf` is reused between calls.
    pub fn read_from<'b>(
        &self,
        file: &std::fs::File,
        buf: &'b mut Vec<u8>,
    ) -> io::Result<&'b [u8]> {
        use std::os::unix::fs::FileExt;
        buf.resize(self.len as usize, 0);
        file.read_exact_at(buf, self.offset)?;
        Ok(buf)
    }
}

/// Most bytes one positioned read of [`read_lines`] takes for a run of lines.
const RUN_BYTES: u64 = 1 << 20;
/// Bytes between two lines (line ends, blank lines, lines of other receipts) a run reads
/// through rather than starting a new read.
const RUN_GAP: u64 = 512;

/// Reads `lines` (sorted by offset, as [`crate::parse::chunk_lines`] gives them) back from
/// `file` and hands each line's bytes to `each`, in order. Lines close to one another are
/// read with one positioned read (runs of at most 1 MiB): OpenAI writes a batch's output in
/// about the order of its input, so a chunk's lines usually lie together, and one read per
/// run instead of one per line took a tenth of a second off 200 MB (45,000 system calls).
pub fn read_lines(
    file: &std::fs::File,
    lines: &[LineRef],
    buf: &mut Vec<u8>,
    mut each: impl FnMut(&LineRef, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut i = 0;
    while i < lines.len() {
        let start = lines[i].offset;
        let mut end = start + u64::from(lines[i].len);
        let mut j = i + 1;
        while let Some(next) = lines.get(j) {
            let next_end = next.offset + u64::from(next.len);
            if next.offset < end || next.offset - end > RUN_GAP || next_end - start > RUN_BYTES {
                break;
            }
            end = next_end;
            j += 1;
        }
        let run = usize::try_from(end - start)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "run too long"))?;
        buf.resize(run, 0);
        file.read_exact_at(buf, start)?;
        for at in &lines[i..j] {
            // Within the run, which fits in a usize (checked above).
            let from = usize::try_from(at.offset - start).unwrap_or(usize::MAX);
            let to = from.saturating_add(at.len as usize);
            each(at, &buf[from..to])?;
        }
        i = j;
    }
    Ok(())
}

/// The state shared by the blocking and the async reader: they differ only in how they wait.
#[derive(Debug)]
struct Assembler {
    buf: Vec<u8>,
    limit: usize,
    line_no: u64,
    /// Bytes of the file consumed so far, and where the current line started.
    consumed: u64,
    line_start: u64,
    /// Bytes seen of the current line once it went over the cap.
    overflow: Option<u64>,
}

impl Assembler {
    fn new(limit: usize) -> Self {
        Assembler {
            buf: Vec::new(),
            limit,
            line_no: 0,
            consumed: 0,
            line_start: 0,
            overflow: None,
        }
    }

    fn start(&mut self) {
        self.buf.clear();
        self.overflow = None;
        self.line_start = self.consumed;
    }

    /// Takes bytes up to and including the next newline; returns how many it took and whether
    /// the line is complete.
    fn feed(&mut self, chunk: &[u8]) -> (usize, bool) {
        let (used, done) = match find_newline(chunk) {
            Some(i) => {
                self.take(&chunk[..i]);
                (i + 1, true)
            }
            None => {
                self.take(chunk);
                (chunk.len(), false)
            }
        };
        self.consumed += used as u64;
        (used, done)
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

    /// A whole line at the start of `chunk`, when no part of it was taken yet and it is within
    /// the cap: its length without the newline. The caller yields it from the reader's own
    /// buffer ([`Assembler::emit_borrowed`]) instead of copying it.
    fn whole_line_in(&self, chunk: &[u8]) -> Option<usize> {
        if !self.buf.is_empty() || self.overflow.is_some() {
            return None;
        }
        find_newline(chunk).filter(|len| *len <= self.limit)
    }

    /// [`emit`](Self::emit) for the line of [`whole_line_in`](Self::whole_line_in), which
    /// stays in the reader's buffer.
    fn emit_borrowed<'c>(&mut self, chunk: &'c [u8], len: usize) -> LocatedLine<'c> {
        self.consumed += len as u64 + 1;
        self.line_no += 1;
        let line = &chunk[..len];
        (
            self.line_no,
            self.line_start,
            Ok(line.strip_suffix(b"\r").unwrap_or(line)),
        )
    }

    fn has_partial(&self) -> bool {
        !self.buf.is_empty() || self.overflow.is_some()
    }

    fn emit(&mut self) -> LocatedLine<'_> {
        self.line_no += 1;
        let line = match self.overflow {
            Some(length) => Err(LineTooLong {
                length,
                limit: self.limit,
            }),
            None => Ok(self.buf.strip_suffix(b"\r").unwrap_or(&self.buf)),
        };
        (self.line_no, self.line_start, line)
    }
}

/// The index of the first `\n` in `s` (a first pass over a file of hundreds of MB spends
/// much of its time here, so it is `memchr`'s vectorised search).
fn find_newline(s: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', s)
}

fn numbered(line: Option<LocatedLine<'_>>) -> Option<NumberedLine<'_>> {
    line.map(|(n, _, bytes)| (n, bytes))
}

/// Lines of a blocking reader (a downloaded file, a test buffer).
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    asm: Assembler,
    /// Bytes of the last line yielded straight from `inner`'s buffer, consumed on the next
    /// call.
    pending: usize,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(inner: R) -> Self {
        Self::with_max_line_bytes(inner, DEFAULT_MAX_LINE_BYTES)
    }

    pub fn with_max_line_bytes(inner: R, max_line_bytes: usize) -> Self {
        LineReader {
            inner,
            asm: Assembler::new(max_line_bytes),
            pending: 0,
        }
    }

    /// The next line, or `None` at the end. A final line without a newline still counts; an
    /// empty remainder after the last newline does not.
    pub fn next_line(&mut self) -> io::Result<Option<NumberedLine<'_>>> {
        self.next_located_line().map(numbered)
    }

    /// As [`next_line`](Self::next_line), with the line's byte offset (for [`LineRef`]). A
    /// line that lies whole in the reader's buffer is yielded from there, not copied.
    pub fn next_located_line(&mut self) -> io::Result<Option<LocatedLine<'_>>> {
        self.inner.consume(std::mem::take(&mut self.pending));
        self.asm.start();
        let whole = loop {
            match self.inner.fill_buf() {
                Ok(chunk) => break self.asm.whole_line_in(chunk),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        if let Some(len) = whole {
            // The same buffer again: `fill_buf` reads nothing while it holds unconsumed bytes.
            let chunk = self.inner.fill_buf()?;
            self.pending = len + 1;
            return Ok(Some(self.asm.emit_borrowed(chunk, len)));
        }
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
        self.next_located_line().await.map(numbered)
    }

    /// As [`LineReader::next_located_line`].
    pub async fn next_located_line(&mut self) -> io::Result<Option<LocatedLine<'_>>> {
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

    #[test]
    fn located_lines_read_back_byte_for_byte() {
        let long = "x".repeat(30);
        let text = format!("a\r\n\nbc\r\r\n{long}\nlast");
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
        let mut r = LineReader::with_max_line_bytes(trickle(&text, 3), 10);
        let mut refs = Vec::new();
        let mut lines = Vec::new();
        while let Some(line) = r.next_located_line().unwrap() {
            refs.push(LineRef::of(&line));
            lines.push((line.0, line.1, line.2.map(<[u8]>::to_vec)));
        }
        let offsets: Vec<u64> = lines.iter().map(|l| l.1).collect();
        assert_eq!(offsets, [0, 3, 4, 9, 40]);
        assert!(refs[3].is_none(), "a line over the cap has no reference");
        let mut buf = Vec::new();
        for (r, (n, _, bytes)) in refs.iter().zip(&lines) {
            if let Some(r) = r {
                assert_eq!(r.line_no, *n);
                let back = r.read_from(&file, &mut buf).unwrap().to_vec();
                assert_eq!(&back, bytes.as_ref().unwrap());
            }
        }
        assert_eq!(lines[2].2.as_deref().unwrap(), b"bc\r");
    }

    /// Lines read back in runs are the lines read one by one: adjacent ones, ones apart by a
    /// gap, blank lines and CRLF in between, a line alone past the run cap, a gap too wide.
    #[test]
    fn lines_read_in_runs_are_the_lines_read_one_by_one() {
        let big = "y".repeat(usize::try_from(RUN_BYTES).unwrap() - 2);
        let gap = "g".repeat(usize::try_from(RUN_GAP).unwrap() + 1);
        let text = format!("a1\nb22\r\n\nc333\n{gap}\nd4\n{big}\ne5\n");
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
        let mut r = LineReader::new(Cursor::new(text.clone().into_bytes()));
        let mut refs = Vec::new();
        while let Some(line) = r.next_located_line().unwrap() {
            let at = LineRef::of(&line).unwrap();
            // Every line but the wide gap's and the blank one.
            if !matches!(line.2, Ok(b) if b.is_empty() || b.starts_with(b"g")) {
                refs.push(at);
            }
        }
        let mut one_by_one = Vec::new();
        let mut buf = Vec::new();
        for at in &refs {
            one_by_one.push((at.line_no, at.read_from(&file, &mut buf).unwrap().to_vec()));
        }
        let mut runs = Vec::new();
        read_lines(&file, &refs, &mut buf, |at, bytes| {
            runs.push((at.line_no, bytes.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(runs, one_by_one);
        assert_eq!(runs.len(), 6);
        // A line past the end of the file is an error, as read one by one.
        let past = LineRef {
            offset: text.len() as u64,
            line_no: 99,
            len: 3,
        };
        assert!(read_lines(&file, &[past], &mut buf, |_, _| Ok(())).is_err());
    }

    #[tokio::test]
    async fn async_reader_numbers_and_caps_like_the_blocking_one() {
        let long = "z".repeat(50);
        let text = format!("a\n\n{long}\r\nb\r\n");
        let r = tokio::io::BufReader::with_capacity(5, Cursor::new(text.clone().into_bytes()));
        let got = read_all_async(AsyncLineReader::with_max_line_bytes(r, 20)).await;
        let r = tokio::io::BufReader::with_capacity(5, Cursor::new(text.clone().into_bytes()));
        let mut located = AsyncLineReader::with_max_line_bytes(r, 20);
        let mut offsets = Vec::new();
        while let Some((_, offset, _)) = located.next_located_line().await.unwrap() {
            offsets.push(offset);
        }
        assert_eq!(offsets, [0, 2, 3, 55]);
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
