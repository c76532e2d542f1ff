//! A byte cursor over a header value. Line folds (CRLF followed by
//! whitespace) count as linear whitespace, so typed parsers never see them.

use crate::message::is_token_char;

pub(crate) struct Cursor<'a> {
    pub(crate) s: &'a str,
    pub(crate) pos: usize,
}

#[inline(always)]
pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(s: &'a str) -> Self {
        Cursor { s, pos: 0 }
    }

    #[inline]
    fn bytes(&self) -> &'a [u8] {
        self.s.as_bytes()
    }

    #[inline]
    pub(crate) fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    #[inline]
    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    #[inline]
    pub(crate) fn skip_lws(&mut self) {
        while self.peek().is_some_and(is_lws) {
            self.pos += 1;
        }
    }

    #[inline]
    pub(crate) fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Eats a separator with optional whitespace around it (SEMI, COMMA, EQUAL, SLASH).
    #[inline]
    pub(crate) fn eat_sep(&mut self, c: u8) -> bool {
        let save = self.pos;
        self.skip_lws();
        if self.eat(c) {
            self.skip_lws();
            true
        } else {
            self.pos = save;
            false
        }
    }

    #[inline]
    pub(crate) fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        &self.s[start..self.pos]
    }

    #[inline]
    pub(crate) fn token(&mut self) -> Option<&'a str> {
        let t = self.take_while(is_token_char);
        (!t.is_empty()).then_some(t)
    }

    /// A quoted string; returns its content with escapes still in place.
    pub(crate) fn quoted(&mut self) -> Option<&'a str> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.pos;
        loop {
            match self.peek()? {
                b'"' => {
                    let inner = &self.s[start..self.pos];
                    self.pos += 1;
                    return Some(inner);
                }
                b'\\' => self.pos += 2,
                _ => self.pos += 1,
            }
            if self.pos > self.s.len() {
                return None;
            }
        }
    }

    pub(crate) fn rest(&self) -> &'a str {
        &self.s[self.pos.min(self.s.len())..]
    }

    pub(crate) fn digits_u64(&mut self) -> Option<u64> {
        let d = self.take_while(|b| b.is_ascii_digit());
        if d.is_empty() || d.len() > 19 {
            return None;
        }
        d.parse().ok()
    }
}

/// Splits a comma-separated header value into items, respecting quoted
/// strings and `<...>`, so commas inside URIs or display names stay put.
/// Empty items are skipped.
pub(crate) struct SplitItems<'a> {
    value: &'a str,
    start: usize,
}

impl<'a> SplitItems<'a> {
    pub(crate) fn new(value: &'a str) -> Self {
        SplitItems { value, start: 0 }
    }
}

impl<'a> Iterator for SplitItems<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let bytes = self.value.as_bytes();
        while self.start < bytes.len() {
            let (mut in_quote, mut in_angle, mut i) = (false, false, self.start);
            while i < bytes.len() {
                match bytes[i] {
                    b'\\' if in_quote => i += 1,
                    b'"' if !in_angle => in_quote = !in_quote,
                    b'<' if !in_quote => in_angle = true,
                    b'>' if !in_quote => in_angle = false,
                    b',' if !in_quote && !in_angle => break,
                    _ => {}
                }
                i += 1;
            }
            let end = i.min(bytes.len());
            let item = self.value[self.start..end].trim_matches(|c: char| c.is_ascii_whitespace());
            self.start = end + 1;
            if !item.is_empty() {
                return Some(item);
            }
        }
        None
    }
}
