//! Feeds arbitrary bytes to a stream's framer in chunks whose sizes the
//! input chooses: it may never panic, never buffer past the message limit,
//! and every message it frames must be one the limits allow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use porchlight_sip::Limits;
use porchlight_transport::framer::{Framed, StreamFramer};

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_message_bytes: 2_048,
        max_line_bytes: 512,
        max_headers: 32,
    };
    let mut framer = StreamFramer::new(limits.clone());
    let chunk = usize::from(split).max(1);
    for piece in data.chunks(chunk) {
        framer.buffer().extend_from_slice(piece);
        loop {
            match framer.next_frame() {
                Framed::Message(bytes) => assert!(bytes.len() <= limits.max_message_bytes),
                Framed::Malformed { .. } => return,
                Framed::NeedMore => break,
            }
        }
        assert!(framer.buffer().len() <= limits.max_message_bytes + chunk);
        let _ = framer.take_pongs();
    }
});
