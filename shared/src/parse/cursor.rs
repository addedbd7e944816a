//! The JSON grammar both byte readers of an output line share: the line scanner
//! ([`super::scan`]) and the reader of an answer inside its JSON string ([`super::escaped`]).
//! They differ only in what whitespace is and how a string is spelled (`"…"` on the line,
//! `\"…\"` inside a string); objects, arrays, numbers, literals and skipping are one code.
//! Every method returns `None` to give up (the caller then takes the general path).

/// Nesting deeper than this gives up (the general path has the same limit).
pub(super) const MAX_DEPTH: usize = 64;

/// A position in bytes of JSON.
pub(super) trait Cursor<'a>: Sized {
    /// The byte a string starts with here.
    const STRING_START: u8;

    /// All the bytes read.
    fn bytes(&self) -> &'a [u8];
    /// The position, to move.
    fn at(&mut self) -> &mut usize;
    /// Skips what counts as whitespace here.
    fn ws(&mut self);
    /// Reads a string, validated.
    fn skip_string(&mut self) -> Option<()>;
    /// Reads an object's key: its contents (a key this reader cannot take as bytes gives up).
    fn key(&mut self) -> Option<&'a [u8]>;

    /// The next byte after whitespace, not consumed.
    #[inline]
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        let i = *self.at();
        self.bytes().get(i).copied()
    }

    #[inline]
    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| *self.at() += 1)
    }

    /// `true`, `false` or `null`.
    #[inline]
    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.ws();
        let s = self.bytes();
        let i = self.at();
        let end = *i + word.len();
        (s.get(*i..end)? == word).then(|| *i = end)
    }

    /// A number by JSON's grammar; its text.
    fn number(&mut self) -> Option<&'a [u8]> {
        self.ws();
        let s = self.bytes();
        let i = self.at();
        let start = *i;
        let digits = |i: &mut usize| {
            let from = *i;
            while let Some(b'0'..=b'9') = s.get(*i) {
                *i += 1;
            }
            *i > from
        };
        if s.get(*i) == Some(&b'-') {
            *i += 1;
        }
        match s.get(*i)? {
            b'0' => *i += 1,
            b'1'..=b'9' => {
                digits(i);
            }
            _ => return None,
        }
        if s.get(*i) == Some(&b'.') {
            *i += 1;
            digits(i).then_some(())?;
        }
        if let Some(b'e' | b'E') = s.get(*i) {
            *i += 1;
            if let Some(b'+' | b'-') = s.get(*i) {
                *i += 1;
            }
            digits(i).then_some(())?;
        }
        Some(&s[start..*i])
    }

    /// Any JSON value, validated and skipped.
    fn skip(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b if b == Self::STRING_START => self.skip_string(),
            b'{' => self.object(depth, |sc, _| sc.skip(depth + 1)),
            b'[' => self.array(depth, |sc, _| sc.skip(depth + 1)),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number().map(drop),
        }
    }

    /// An object: `field` is called with each key and must read its value.
    fn object(
        &mut self,
        depth: usize,
        mut field: impl FnMut(&mut Self, &'a [u8]) -> Option<()>,
    ) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            *self.at() += 1;
            return Some(());
        }
        loop {
            let key = self.key()?;
            self.eat(b':')?;
            field(self, key)?;
            match self.peek()? {
                b',' => *self.at() += 1,
                b'}' => {
                    *self.at() += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An array: `element` is called with each index and must read the element.
    fn array(
        &mut self,
        depth: usize,
        mut element: impl FnMut(&mut Self, usize) -> Option<()>,
    ) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'[')?;
        if self.peek()? == b']' {
            *self.at() += 1;
            return Some(());
        }
        let mut n = 0;
        loop {
            element(self, n)?;
            n += 1;
            match self.peek()? {
                b',' => *self.at() += 1,
                b']' => {
                    *self.at() += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }
}
