//! `;name=value` parameter lists, validated once and then read lazily so a
//! typed header view allocates nothing.

use crate::cursor::Cursor;
use crate::message::is_token_char;

/// A validated run of header parameters (`;tag=x;lr;q=0.5`). Names compare
/// case-insensitively; quoted values are returned without their quotes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Params<'a> {
    raw: &'a str,
}

fn is_value_char(b: u8) -> bool {
    // gen-value = token / host / quoted-string; a host may be an IPv6
    // reference with or without brackets (RFC 5118 §4.5).
    is_token_char(b) || matches!(b, b':' | b'[' | b']')
}

/// Reads one `;name[=value]` at the cursor; None when no `;` follows.
fn next_param<'a>(c: &mut Cursor<'a>) -> Option<Result<(&'a str, Option<&'a str>), ()>> {
    if !c.eat_sep(b';') {
        return None;
    }
    let Some(name) = c.token() else {
        return Some(Err(()));
    };
    if !c.eat_sep(b'=') {
        return Some(Ok((name, None)));
    }
    let value = if c.peek() == Some(b'"') {
        c.quoted()
    } else {
        let v = c.take_while(is_value_char);
        (!v.is_empty()).then_some(v)
    };
    Some(value.map(|v| (name, Some(v))).ok_or(()))
}

impl<'a> Params<'a> {
    /// Consumes parameters at the cursor; errors on an empty name or value.
    pub(crate) fn parse(c: &mut Cursor<'a>) -> Result<Params<'a>, ()> {
        let start = c.pos;
        loop {
            let save = c.pos;
            match next_param(c) {
                None => {
                    c.pos = save;
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(())) => return Err(()),
            }
        }
        Ok(Params {
            raw: &c.s[start..c.pos],
        })
    }

    /// Every parameter in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, Option<&'a str>)> {
        let mut c = Cursor::new(self.raw);
        std::iter::from_fn(move || next_param(&mut c).and_then(Result::ok))
    }

    /// `Some(value)` when the parameter is present (`Some(None)` without a value).
    pub fn get(&self, name: &str) -> Option<Option<&'a str>> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The parameter's value, if present with one.
    pub fn value(&self, name: &str) -> Option<&'a str> {
        self.get(name).flatten()
    }

    /// Whether the parameter is present at all.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The parameters exactly as written, leading `;` included.
    pub fn as_str(&self) -> &'a str {
        self.raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_flags_tokens_quoted_and_ipv6_values() {
        let mut c =
            Cursor::new(" ; tag = 1918 ;lr; q=0.33;x=\"a;b\";received=2001:db8::9:255 rest");
        let p = Params::parse(&mut c).unwrap();
        assert_eq!(p.value("TAG"), Some("1918"));
        assert_eq!(p.get("lr"), Some(None));
        assert_eq!(p.value("x"), Some("a;b"));
        assert_eq!(p.value("received"), Some("2001:db8::9:255"));
        assert_eq!(c.rest(), " rest");
    }

    #[test]
    fn refuses_empty_names() {
        assert!(Params::parse(&mut Cursor::new(";;,;,,")).is_err());
    }
}
