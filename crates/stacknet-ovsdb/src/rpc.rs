//! JSON-RPC 1.0 messages as OVSDB uses them (RFC 7047 §4).

use serde_json::{Value, json};

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
}
