//! One JSON object per line, keys in the order given (a figure's name first, then its
//! parameters, then its measurements), so that lines read well side by side.

use serde_json::Value;

pub fn line(fields: &[(&str, Value)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| format!("{}:{v}", Value::String(k.to_string())))
        .collect();
    format!("{{{}}}", body.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_keep_their_order_and_nulls_are_left_out() {
        let l = line(&[("bench", json!("policy")), ("pods", json!(10)), ("none", Value::Null), ("a", json!(1.5))]);
        assert_eq!(l, r#"{"bench":"policy","pods":10,"a":1.5}"#);
        let v: Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["pods"], 10);
    }
}
