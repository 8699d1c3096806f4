//! The OVSDB framer (`stacknet_ovsdb::codec::Framer`): how bytes from a socket become
//! JSON-RPC messages, then each message classified (`rpc::Incoming::parse`).
//!
//! Input: byte 0 seeds how the rest is cut into chunks; the rest is the byte stream.
//! Property: however the stream is chunked, the framer returns the same messages and fails
//! (or not) the same way as when the whole stream arrives at once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stacknet_ovsdb::codec::Framer;
use stacknet_ovsdb::rpc::{Incoming, to_value};

/// A message limit small enough for the fuzzer to reach.
const MAX_MESSAGE: usize = 256;

/// Every message until the stream is exhausted or refused; `true` if refused.
fn drain(f: &mut Framer, out: &mut Vec<Vec<u8>>) -> bool {
    loop {
        match f.next_message() {
            Ok(Some(m)) => out.push(m.to_vec()),
            Ok(None) => return false,
            Err(_) => return true,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else { return };

    let mut whole = Framer::new(MAX_MESSAGE);
    whole.push(stream);
    let mut want = Vec::new();
    let whole_failed = drain(&mut whole, &mut want);

    let mut chunked = Framer::new(MAX_MESSAGE);
    let mut got = Vec::new();
    let mut chunked_failed = false;
    let mut rest = stream;
    let mut state = u32::from(seed) | 0x100;
    while !rest.is_empty() && !chunked_failed {
        // xorshift: chunk sizes from 1 to 64 bytes.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state as usize % 64 + 1).min(rest.len());
        chunked.push(&rest[..n]);
        rest = &rest[n..];
        chunked_failed = drain(&mut chunked, &mut got);
    }

    assert_eq!(got, want, "chunking changed the messages");
    assert_eq!(chunked_failed, whole_failed, "chunking changed whether the stream is refused");
    if !whole_failed {
        assert_eq!(whole.pending(), chunked.pending());
    }
    for m in &want {
        assert!(m.len() <= MAX_MESSAGE, "a message of {} bytes passed a limit of {MAX_MESSAGE}", m.len());
        assert_eq!(m.first(), Some(&b'{'));
        if let Ok(received) = Incoming::parse(m) {
            // The client decodes small payloads (echo params, replies to calls) as values.
            use stacknet_ovsdb::rpc::Received;
            match received {
                Received::Request { params, .. } | Received::Notification { params, .. } => {
                    let _ = to_value(params);
                }
                Received::Response { result, error, .. } => {
                    let _ = to_value(result);
                    let _ = to_value(error);
                }
            }
        }
    }
});
