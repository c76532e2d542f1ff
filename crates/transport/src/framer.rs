//! Stream framing without I/O: bytes in, messages and keepalive answers
//! out. Everything a stream sends counts against a bound, line breaks
//! included, so no connection can make its reader buffer without limit.

use bytes::{Buf, Bytes, BytesMut};
use porchlight_sip::{Limits, Message, ParseError, ParseErrorKind};

/// The RFC 5626 keepalive ping and its pong.
const PING: &[u8] = b"\r\n\r\n";

/// What the buffered bytes of a stream amount to.
#[derive(Debug)]
pub enum Framed {
    /// One whole message's bytes (leading line breaks removed).
    Message(Bytes),
    /// Bytes that cannot be framed; the stream cannot be resynchronised
    /// and must close. `bytes` is what was buffered, for answering (400, 513).
    Malformed {
        /// Why framing failed.
        error: ParseError,
        /// The buffered bytes.
        bytes: Bytes,
    },
    /// Nothing complete yet.
    NeedMore,
}

/// One stream's framing state.
pub struct StreamFramer {
    buf: BytesMut,
    limits: Limits,
    /// Line breaks discarded since the last whole message: keepalives are
    /// welcome, a stream of nothing else is not.
    breaks_since_message: usize,
    /// Pings seen and not yet answered.
    pongs_owed: usize,
}

impl StreamFramer {
    /// A framer for one stream, under the node's message limits.
    pub fn new(limits: Limits) -> StreamFramer {
        StreamFramer {
            buf: BytesMut::with_capacity(8 * 1024),
            limits,
            breaks_since_message: 0,
            pongs_owed: 0,
        }
    }

    /// Where received bytes go.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Keepalive pongs to send (RFC 5626 §4.4.1), taken once.
    pub fn take_pongs(&mut self) -> usize {
        std::mem::take(&mut self.pongs_owed)
    }

    /// Whether part of a message is buffered: its sender must finish it in
    /// time (a drip of bytes does not keep a connection).
    pub fn in_message(&self) -> bool {
        !self.buf.is_empty() && !PING.starts_with(&self.buf)
    }

    /// The next step: a message, a framing error, or a wait for more.
    pub fn next_frame(&mut self) -> Framed {
        self.discard_breaks();
        if self.breaks_since_message > self.limits.max_message_bytes {
            return Framed::Malformed {
                error: ParseError {
                    kind: ParseErrorKind::TooLarge {
                        limit: self.limits.max_message_bytes,
                    },
                    offset: self.breaks_since_message,
                },
                bytes: Bytes::new(),
            };
        }
        match Message::frame(&self.buf, &self.limits) {
            Ok(Some(frame)) => {
                self.buf.advance(frame.skip);
                self.breaks_since_message = 0;
                Framed::Message(self.buf.split_to(frame.len).freeze())
            }
            Ok(None) => Framed::NeedMore,
            Err(error) => Framed::Malformed {
                error,
                bytes: self.buf.split().freeze(),
            },
        }
    }

    /// Drops the line breaks before a start line, counting pings, in one
    /// pass. Breaks at the end that may still become a ping stay.
    fn discard_breaks(&mut self) {
        let run = self
            .buf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        let mut at = 0;
        while at < run {
            if self.buf[at..run].starts_with(PING) {
                self.pongs_owed += 1;
                at += PING.len();
            } else if run == self.buf.len() && PING.starts_with(&self.buf[at..]) {
                break;
            } else {
                at += 1;
            }
        }
        self.buf.advance(at);
        self.breaks_since_message += at;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use porchlight_sip::MessageWriter;

    fn limits() -> Limits {
        Limits {
            max_message_bytes: 1_000,
            ..Limits::default()
        }
    }

    fn feed(framer: &mut StreamFramer, bytes: &[u8]) -> Vec<Framed> {
        framer.buffer().extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            match framer.next_frame() {
                Framed::NeedMore => return out,
                // The stream closes after an error.
                framed @ Framed::Malformed { .. } => {
                    out.push(framed);
                    return out;
                }
                framed => out.push(framed),
            }
        }
    }

    #[test]
    fn pings_are_answered_and_consumed_even_split() {
        let mut framer = StreamFramer::new(limits());
        assert!(feed(&mut framer, b"\r\n\r").is_empty());
        assert_eq!(framer.take_pongs(), 0);
        assert!(!framer.in_message());
        assert!(feed(&mut framer, b"\n\r\n\r\n").is_empty());
        assert_eq!(framer.take_pongs(), 2);
        assert!(framer.buffer().is_empty());
    }

    #[test]
    fn a_message_after_stray_breaks_is_framed() {
        let msg = MessageWriter::request("OPTIONS", "sip:a@b").finish(b"");
        let mut framer = StreamFramer::new(limits());
        let mut bytes = b"\n\r\n".to_vec();
        bytes.extend_from_slice(&msg);
        let out = feed(&mut framer, &bytes);
        assert!(
            matches!(&out[..], [Framed::Message(m)] if m[..] == msg[..]),
            "{out:?}"
        );
        assert!(!framer.in_message());
    }

    #[test]
    fn nothing_but_line_breaks_closes_the_stream_past_the_limit() {
        let mut framer = StreamFramer::new(limits());
        assert!(feed(&mut framer, b"\n").is_empty());
        let mut closed = false;
        for _ in 0..1_000 {
            let out = feed(&mut framer, b"\r\n\r\n\r\n\r\n");
            assert!(framer.buffer().len() < 4, "breaks are not kept");
            if !out.is_empty() {
                assert!(matches!(out[0], Framed::Malformed { .. }));
                closed = true;
                break;
            }
        }
        assert!(closed, "the stream is refused once past the message limit");
    }

    #[test]
    fn a_partial_message_is_in_progress() {
        let mut framer = StreamFramer::new(limits());
        assert!(feed(&mut framer, b"OPTIONS sip:a@b SIP/2.0\r\n").is_empty());
        assert!(framer.in_message());
    }
}
