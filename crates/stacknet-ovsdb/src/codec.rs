//! Framing: OVSDB peers send JSON-RPC messages as concatenated JSON objects with no delimiter.
//! [`Framer`] finds message boundaries incrementally in O(n) (bytes are scanned once, however
//! the stream is chunked), then each whole message is parsed. Garbage is an error, never a
//! panic, and a message may not exceed a size limit.

/// Why the byte stream cannot be framed; the connection must be dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError(pub String);

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    /// Bytes before this are consumed (returned as messages).
    start: usize,
    /// Bytes before this have been scanned.
    scanned: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    max_message: usize,
}

impl Default for Framer {
    fn default() -> Self {
        Framer::new(256 << 20)
    }
}

impl Framer {
    /// A framer refusing messages longer than `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Framer { buf: Vec::new(), start: 0, scanned: 0, depth: 0, in_string: false, escaped: false, max_message }
    }

    pub fn push(&mut self, data: &[u8]) {
        // Reclaim consumed space once it dominates the buffer.
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
            // A big message (a whole database) must not pin its size for the connection's life.
            if self.buf.capacity() > (1 << 20) && self.buf.len() < self.buf.capacity() / 4 {
                self.buf.shrink_to((self.buf.len() + data.len()).max(256 << 10));
            }
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet returned as a message.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete message, if one has arrived.
    pub fn next_message(&mut self) -> Result<Option<&[u8]>, FrameError> {
        while self.scanned < self.buf.len() {
            let b = self.buf[self.scanned];
            self.scanned += 1;
            if self.depth == 0 {
                match b {
                    b' ' | b'\t' | b'\r' | b'\n' => {
                        self.start = self.scanned;
                        continue;
                    }
                    b'{' => {
                        self.start = self.scanned - 1;
                        self.depth = 1;
                        continue;
                    }
                    other => {
                        return Err(FrameError(format!(
                            "expected a JSON object, found byte 0x{other:02x} ({:?})",
                            other as char
                        )));
                    }
                }
            }
            // Every byte counts, those inside strings too (a message of long strings arriving
            // in one read must not pass the limit that the same bytes in pieces would not).
            if self.scanned - self.start > self.max_message {
                return Err(FrameError(format!("message longer than {} bytes", self.max_message)));
            }
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        let msg = &self.buf[self.start..self.scanned];
                        self.start = self.scanned;
                        return Ok(Some(msg));
                    }
                }
                _ => {}
            }
        }
        if self.depth > 0 && self.scanned - self.start > self.max_message {
            return Err(FrameError(format!("message longer than {} bytes", self.max_message)));
        }
        if self.start == self.buf.len() {
            // Everything is consumed: a big message (a whole database) must not pin its size
            // for the connection's life, even when nothing else arrives.
            self.buf.clear();
            (self.start, self.scanned) = (0, 0);
            if self.buf.capacity() > (1 << 20) {
                self.buf.shrink_to(256 << 10);
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn drain(f: &mut Framer) -> Result<Vec<Value>, FrameError> {
        let mut out = Vec::new();
        while let Some(m) = f.next_message()? {
            out.push(serde_json::from_slice(m).map_err(|e| FrameError(e.to_string()))?);
        }
        Ok(out)
    }

    #[test]
    fn concatenated_objects_with_tricky_strings() {
        let mut f = Framer::default();
        let text = r#"{"a":"}{\"]"} {"b":[1,{"c":"\\"}]}
{"id":null}"#;
        f.push(text.as_bytes());
        let got = drain(&mut f).unwrap();
        assert_eq!(got, vec![json!({"a": "}{\"]"}), json!({"b": [1, {"c": "\\"}]}), json!({"id": null})]);
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn garbage_is_an_error() {
        let mut f = Framer::default();
        f.push(b"  nonsense");
        assert!(f.next_message().is_err());
        let mut f = Framer::new(10);
        f.push(b"{\"aaaaaaaaaaaaaaaaaaaaaaa");
        assert!(f.next_message().is_err());
    }

    /// Found by fuzzing (fuzz/fuzz_targets/ovsdb_framer.rs): bytes inside strings were not
    /// counted, so a message of long strings passed the limit when it came in one read.
    #[test]
    fn the_limit_counts_bytes_inside_strings() {
        let long = br#"{"id":1,"result":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
        let mut f = Framer::new(32);
        f.push(long);
        assert!(f.next_message().is_err());
        let mut f = Framer::new(32);
        assert!(long.iter().any(|b| {
            f.push(&[*b]);
            f.next_message().is_err()
        }));
        // A message of exactly the limit passes, whole or byte by byte.
        let exact = br#"{"id":1,"result":"xxxxxxxxxxxx"}"#;
        assert_eq!(exact.len(), 32);
        let mut f = Framer::new(32);
        f.push(exact);
        assert_eq!(f.next_message().unwrap(), Some(&exact[..]));
        let mut f = Framer::new(32);
        let mut got = None;
        for b in exact {
            f.push(&[*b]);
            if let Some(m) = f.next_message().unwrap() {
                got = Some(m.to_vec());
            }
        }
        assert_eq!(got.as_deref(), Some(&exact[..]));
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            ".*".prop_map(Value::String),
            "[{}\\[\\]\"\\\\ ]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_chunking_yields_the_same_messages(
            msgs in proptest::collection::vec(proptest::collection::btree_map("[a-z]{1,4}", json_value(), 0..4), 1..6),
            cuts in proptest::collection::vec(any::<usize>(), 0..10),
            spaces in proptest::collection::vec(0usize..3, 6),
        ) {
            let msgs: Vec<Value> = msgs.into_iter().map(|m| Value::Object(m.into_iter().collect())).collect();
            let mut bytes = Vec::new();
            for (i, m) in msgs.iter().enumerate() {
                bytes.extend_from_slice(serde_json::to_string(m).unwrap().as_bytes());
                bytes.extend(std::iter::repeat_n(b' ', spaces[i % spaces.len()]));
            }
            let mut cut_points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            cut_points.push(0);
            cut_points.push(bytes.len());
            cut_points.sort();
            let mut f = Framer::default();
            let mut got = Vec::new();
            for w in cut_points.windows(2) {
                f.push(&bytes[w[0]..w[1]]);
                got.extend(drain(&mut f).unwrap());
            }
            prop_assert_eq!(got, msgs);
        }

        #[test]
        fn random_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let mut f = Framer::new(1024);
            for c in chunks {
                f.push(&c);
                while let Ok(Some(m)) = f.next_message() {
                    let _ = serde_json::from_slice::<Value>(m);
                }
            }
        }
    }
}
