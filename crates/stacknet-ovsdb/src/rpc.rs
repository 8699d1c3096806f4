//! JSON-RPC 1.0 messages as OVSDB uses them (RFC 7047 §4).

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

/// A message as it arrives, its payloads left as JSON text borrowed from the frame: a monitor
/// reply or an update of thousands of rows is decoded where it is used, row by row, never
/// parsed into one JSON tree.
#[derive(Debug, Deserialize)]
pub struct Incoming<'a> {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
    #[serde(default, borrow)]
    result: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

/// What an [`Incoming`] message is.
#[derive(Debug)]
pub enum Received<'a> {
    Request {
        id: Value,
        method: String,
        params: Option<&'a RawValue>,
    },
    Notification {
        method: String,
        params: Option<&'a RawValue>,
    },
    /// `result` is `None` when it is JSON null (an error reply).
    Response {
        id: Value,
        result: Option<&'a RawValue>,
        error: Option<&'a RawValue>,
    },
}

impl<'a> Incoming<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Received<'a>, String> {
        // (serde would also read a struct from an array)
        if !bytes.trim_ascii_start().starts_with(b"{") {
            return Err("message is not an object".into());
        }
        let m: Incoming<'a> = serde_json::from_slice(bytes).map_err(|e| format!("bad JSON-RPC message: {e}"))?;
        let id = m.id.unwrap_or(Value::Null);
        if let Some(method) = m.method {
            if id.is_null() {
                return Ok(Received::Notification { method, params: m.params });
            }
            return Ok(Received::Request { id, method, params: m.params });
        }
        if id.is_null() {
            return Err("response without id".into());
        }
        Ok(Received::Response { id, result: m.result, error: m.error })
    }
}

/// JSON text as a value (small payloads: replies to calls, echo params).
pub fn to_value(raw: Option<&RawValue>) -> Result<Value, String> {
    match raw {
        None => Ok(Value::Null),
        Some(r) => serde_json::from_str(r.get()).map_err(|e| format!("bad JSON: {e}")),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A call awaiting a response with the same id.
    Request {
        id: Value,
        method: String,
        params: Value,
    },
    /// A call with a null id: no response.
    Notification {
        method: String,
        params: Value,
    },
    Response {
        id: Value,
        result: Value,
        error: Value,
    },
}

impl Message {
    pub fn from_json(v: Value) -> Result<Message, String> {
        let Value::Object(mut o) = v else { return Err("message is not an object".into()) };
        let id = o.remove("id").unwrap_or(Value::Null);
        if let Some(method) = o.remove("method") {
            let method = method.as_str().ok_or("method is not a string")?.to_string();
            let params = o.remove("params").unwrap_or(Value::Array(vec![]));
            if id.is_null() {
                return Ok(Message::Notification { method, params });
            }
            return Ok(Message::Request { id, method, params });
        }
        if o.contains_key("result") || o.contains_key("error") {
            if id.is_null() {
                return Err("response without id".into());
            }
            return Ok(Message::Response {
                id,
                result: o.remove("result").unwrap_or(Value::Null),
                error: o.remove("error").unwrap_or(Value::Null),
            });
        }
        Err("neither a request nor a response".into())
    }

    pub fn to_json(&self) -> Value {
        match self {
            Message::Request { id, method, params } => json!({"id": id, "method": method, "params": params}),
            Message::Notification { method, params } => json!({"id": null, "method": method, "params": params}),
            Message::Response { id, result, error } => json!({"id": id, "result": result, "error": error}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify() {
        let m = Message::from_json(json!({"id": 1, "method": "echo", "params": []})).unwrap();
        assert!(matches!(m, Message::Request { .. }));
        let m = Message::from_json(json!({"id": null, "method": "update3", "params": [1, 2, 3]})).unwrap();
        assert!(matches!(m, Message::Notification { .. }));
        let m = Message::from_json(json!({"id": 7, "result": {}, "error": null})).unwrap();
        assert_eq!(m.to_json(), json!({"id": 7, "result": {}, "error": null}));
        assert!(Message::from_json(json!({"id": null, "result": 1})).is_err());
        assert!(Message::from_json(json!([1])).is_err());
        assert!(Message::from_json(json!({"x": 1})).is_err());
    }

    #[test]
    fn incoming_keeps_payloads_as_text() {
        let m = Incoming::parse(br#"{"id":null,"method":"update3","params":["db","t",{"T":{}}]}"#).unwrap();
        let Received::Notification { method, params } = m else { panic!("{m:?}") };
        assert_eq!(method, "update3");
        assert_eq!(params.unwrap().get(), r#"["db","t",{"T":{}}]"#);
        let m = Incoming::parse(br#"{"id":3,"result":null,"error":{"error":"x"}}"#).unwrap();
        assert!(matches!(m, Received::Response { result: None, error: Some(_), .. }));
        assert!(matches!(
            Incoming::parse(br#"{"id":"e","method":"echo","params":[]}"#).unwrap(),
            Received::Request { .. }
        ));
        assert!(Incoming::parse(br#"{"id":null,"result":1}"#).is_err());
        assert!(Incoming::parse(b"[1]").is_err());
        assert!(Incoming::parse(b"{\"id\":").is_err());
    }
}
