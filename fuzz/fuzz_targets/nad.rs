//! Secondary networks' inputs: the pod's network selection annotation
//! (`k8s.v1.cni.cncf.io/networks`, `multinet::selection::parse`), a NetworkAttachmentDefinition's
//! `spec.config` (`multinet::nad::parse_config`) and OpenStack mode's `stacknet.io/network`
//! annotation (`multinet::ports::parse`).
//!
//! Input: the text, read as each of the three.
//! Properties: a parsed selection, written back in the JSON form, parses to the same
//! selection; parsed pod ports, serialized, parse to the same ports.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use stacknet_engine::ObjectKey;
use stacknet_engine::multinet::{Selection, nad, ports, selection};

fn to_json(s: &[Selection]) -> String {
    let elements: Vec<Value> = s
        .iter()
        .map(|s| {
            let mut e = json!({"name": s.name, "namespace": s.namespace, "interface": s.interface});
            let ips: Vec<String> = s
                .ips
                .iter()
                .map(|(ip, len)| match len {
                    Some(l) => format!("{ip}/{l}"),
                    None => ip.to_string(),
                })
                .collect();
            if !ips.is_empty() {
                e["ips"] = json!(ips);
            }
            if let Some(mac) = &s.mac {
                e["mac"] = json!(mac);
            }
            if !s.default_route.is_empty() {
                e["default-route"] = json!(s.default_route);
            }
            e
        })
        .collect();
    Value::Array(elements).to_string()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(s) = selection::parse("app", text)
        && !s.is_empty()
    {
        let again = selection::parse("other", &to_json(&s));
        assert_eq!(again.as_ref(), Ok(&s), "written back as {}", to_json(&s));
    }
    let _ = nad::parse_config(&ObjectKey::new("app", "data"), text);
    if let Ok(p) = ports::parse(text) {
        let json = serde_json::to_string(&p).expect("ports serialize");
        assert_eq!(ports::parse(&json).as_ref(), Ok(&p), "written back as {json}");
    }
});
