//! JSON-RPC message decoding: `rpc::Message::from_json` (a message as a JSON value) and
//! `rpc::Incoming::parse` (a message as text, its payloads kept as text).
//!
//! Input: one message's bytes.
//! Properties: `Message::to_json` decodes back to the same message; both decoders agree on
//! what a call is (method, id, params).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use stacknet_ovsdb::rpc::{Incoming, Message, Received, to_value};

fuzz_target!(|data: &[u8]| {
    let incoming = Incoming::parse(data);
    let Ok(v) = serde_json::from_slice::<Value>(data) else { return };
    let message = Message::from_json(v);
    if let Ok(m) = &message {
        let again = Message::from_json(m.to_json()).expect("an encoded message decodes");
        assert_eq!(&again, m, "encode then decode changed the message");
    }
    let (Ok(incoming), Ok(message)) = (incoming, message) else { return };
    match (incoming, message) {
        (Received::Request { id, method, params }, Message::Request { id: id2, method: method2, params: params2 }) => {
            assert_eq!((id, method), (id2, method2));
            if let Some(p) = params {
                assert_eq!(to_value(Some(p)).expect("params are JSON"), params2);
            }
        }
        (Received::Notification { method, params }, Message::Notification { method: method2, params: params2 }) => {
            assert_eq!(method, method2);
            if let Some(p) = params {
                assert_eq!(to_value(Some(p)).expect("params are JSON"), params2);
            }
        }
        (Received::Response { id, .. }, Message::Response { id: id2, .. }) => assert_eq!(id, id2),
        (i, m) => panic!("the decoders disagree: {i:?} vs {m:?}"),
    }
});
