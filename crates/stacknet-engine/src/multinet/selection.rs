//! The Multus network selection annotation (multi-net-spec v1.3, §4.1.2): which
//! NetworkAttachmentDefinitions a pod attaches to, on which interface, with which requested
//! addresses, MAC and default route. Both forms are read — the short one
//! (`[namespace/]name[@interface]`, comma-separated) and the JSON list of selection elements —
//! into one validated, normalised list; a bad element is an error naming its position and
//! field, and nothing of a bad annotation is used.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::Value;

/// The pod annotation that selects the networks.
pub const NETWORKS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";

/// One attachment a pod asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The NetworkAttachmentDefinition's namespace (the pod's when not given) and name.
    pub namespace: String,
    pub name: String,
    /// The interface in the pod (`netN` by position when not given).
    pub interface: String,
    /// Requested addresses, each with its prefix length when given.
    pub ips: Vec<(IpAddr, Option<u8>)>,
    /// A requested MAC, normalised to lower case.
    pub mac: Option<String>,
    /// Gateways for the pod's default route through this attachment.
    pub default_route: Vec<IpAddr>,
}

/// Keys of the spec this implementation accepts and does not use (yet).
const OTHER_KEYS: &[&str] = &["portMappings", "bandwidth", "cni-args", "infiniband-guid", "ipam-claim-reference"];

fn at(i: usize, field: &str) -> String {
    format!("metadata.annotations[{NETWORKS_ANNOTATION}][{i}].{field}")
}

/// Whether `s` is a Kubernetes object name (a DNS-1123 subdomain).
pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Whether `s` may name a Linux network interface.
fn valid_interface(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace())
}

/// A unicast MAC address, lower-cased.
fn mac(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 || !parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit())) {
        return None;
    }
    let first = u8::from_str_radix(parts[0], 16).ok()?;
    (first & 1 == 0).then(|| s.to_ascii_lowercase())
}

/// An address with an optional prefix length (`10.1.1.11`, `10.1.1.11/24`).
fn address(s: &str) -> Option<(IpAddr, Option<u8>)> {
    match s.split_once('/') {
        None => Some((s.parse().ok()?, None)),
        Some((ip, len)) => {
            let ip: IpAddr = ip.parse().ok()?;
            let len: u8 = len.parse().ok()?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            (len <= max).then_some((ip, Some(len)))
        }
    }
}

/// The selections of a pod in `pod_namespace` whose annotation is `text` (empty: none).
pub fn parse(pod_namespace: &str, text: &str) -> Result<Vec<Selection>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let mut out =
        if text.starts_with('[') { parse_json(pod_namespace, text)? } else { parse_short(pod_namespace, text)? };
    // Interfaces by position where none was asked for; each once.
    let asked: BTreeSet<String> = out.iter().map(|s| s.interface.clone()).filter(|i| !i.is_empty()).collect();
    let mut seen = BTreeSet::new();
    for (i, s) in out.iter_mut().enumerate() {
        if s.interface.is_empty() {
            s.interface = format!("net{}", i + 1);
            if asked.contains(&s.interface) {
                return Err(format!(
                    "{}: the default name {} is asked for by another element; name this one's interface",
                    at(i, "interface"),
                    s.interface
                ));
            }
        }
        if s.interface == "eth0" || s.interface == "lo" || !seen.insert(s.interface.clone()) {
            return Err(format!(
                "{}: {} is taken (eth0 is the pod's primary interface, lo its loopback)",
                at(i, "interface"),
                s.interface
            ));
        }
    }
    Ok(out)
}

fn parse_short(pod_namespace: &str, text: &str) -> Result<Vec<Selection>, String> {
    let mut out = Vec::new();
    for (i, element) in text.split(',').enumerate() {
        let element = element.trim();
        let (rest, interface) = match element.split_once('@') {
            Some((r, iface)) => (r, iface.to_string()),
            None => (element, String::new()),
        };
        let (namespace, name) = match rest.split_once('/') {
            Some((ns, n)) => (ns.to_string(), n.to_string()),
            None => (pod_namespace.to_string(), rest.to_string()),
        };
        if !valid_name(&name) || !valid_name(&namespace) {
            return Err(format!("{}: {element:?} is not [namespace/]name[@interface]", at(i, "name")));
        }
        if element.contains('@') && !valid_interface(&interface) {
            return Err(format!("{}: {interface:?} cannot name an interface", at(i, "interface")));
        }
        out.push(Selection { namespace, name, interface, ips: Vec::new(), mac: None, default_route: Vec::new() });
    }
    Ok(out)
}

fn strings(v: &Value, field: &str) -> Result<Vec<String>, String> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|x| x.as_str().map(str::to_string).ok_or_else(|| format!("{field}: a list of strings")))
            .collect(),
        _ => Err(format!("{field}: a list of strings")),
    }
}

fn parse_json(pod_namespace: &str, text: &str) -> Result<Vec<Selection>, String> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| format!("metadata.annotations[{NETWORKS_ANNOTATION}]: not valid JSON: {e}"))?;
    let Value::Array(elements) = v else { unreachable!("starts with [") };
    let mut out = Vec::new();
    for (i, e) in elements.iter().enumerate() {
        let Value::Object(m) = e else {
            return Err(format!("metadata.annotations[{NETWORKS_ANNOTATION}][{i}]: a selection element object"));
        };
        for k in m.keys() {
            // Keys with a period are implementations' own (reverse domain names): not ours to
            // judge; the others are the spec's.
            if !["name", "namespace", "interface", "ips", "mac", "default-route"].contains(&k.as_str())
                && !OTHER_KEYS.contains(&k.as_str())
                && !k.contains('.')
            {
                return Err(format!("{}: not a selection element key", at(i, k)));
            }
        }
        // §4.1.2.1.9: only one element may name the default route.
        if m.contains_key("default-route")
            && let Some(first) = elements[..i].iter().position(|e| e.get("default-route").is_some())
        {
            return Err(format!(
                "{}: element {first} names the default route already (only one element may)",
                at(i, "default-route")
            ));
        }
        let text_of = |key: &str| -> Result<Option<String>, String> {
            match m.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(format!("{}: a string", at(i, key))),
            }
        };
        let name = text_of("name")?.ok_or_else(|| format!("{}: required", at(i, "name")))?;
        if !valid_name(&name) {
            return Err(format!("{}: {name:?} is not a NetworkAttachmentDefinition name", at(i, "name")));
        }
        let namespace = text_of("namespace")?.unwrap_or_else(|| pod_namespace.to_string());
        if !valid_name(&namespace) {
            return Err(format!("{}: {namespace:?} is not a namespace name", at(i, "namespace")));
        }
        let interface = text_of("interface")?.unwrap_or_default();
        if m.contains_key("interface") && !valid_interface(&interface) {
            return Err(format!("{}: {interface:?} cannot name an interface", at(i, "interface")));
        }
        let mac = match text_of("mac")? {
            None => None,
            Some(s) => Some(mac(&s).ok_or_else(|| format!("{}: {s:?} is not a unicast MAC address", at(i, "mac")))?),
        };
        let mut ips = Vec::new();
        if let Some(v) = m.get("ips") {
            for s in strings(v, &at(i, "ips"))? {
                ips.push(address(&s).ok_or_else(|| format!("{}: {s:?} is not an IP address", at(i, "ips")))?);
            }
        }
        let mut default_route = Vec::new();
        if let Some(v) = m.get("default-route") {
            for s in strings(v, &at(i, "default-route"))? {
                default_route
                    .push(s.parse().map_err(|_| format!("{}: {s:?} is not an IP address", at(i, "default-route")))?);
            }
        }
        out.push(Selection { namespace, name, interface, ips, mac, default_route });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_short_form_names_networks_namespaces_and_interfaces() {
        let s = parse("app", " macvlan-conf-1, testns1/macvlan-conf-3@data0 ,sriov").unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(
            (s[0].namespace.as_str(), s[0].name.as_str(), s[0].interface.as_str()),
            ("app", "macvlan-conf-1", "net1")
        );
        assert_eq!(
            (s[1].namespace.as_str(), s[1].name.as_str(), s[1].interface.as_str()),
            ("testns1", "macvlan-conf-3", "data0")
        );
        assert_eq!(s[2].interface, "net3", "by position");
        assert_eq!(parse("app", "  ").unwrap(), vec![]);
    }

    #[test]
    fn the_json_form_carries_addresses_mac_and_default_route() {
        let text = r#"[
            {"name": "provider", "namespace": "telco", "interface": "ext0", "ips": ["10.1.1.11/24", "fd00::11"],
             "mac": "CA:FE:C0:FF:EE:00", "default-route": ["10.1.1.1"]},
            {"name": "storage", "cni-args": {"x": 1}}
        ]"#;
        let s = parse("app", text).unwrap();
        assert_eq!(s[0].namespace, "telco");
        assert_eq!(s[0].ips, vec![("10.1.1.11".parse().unwrap(), Some(24)), ("fd00::11".parse().unwrap(), None)]);
        assert_eq!(s[0].mac.as_deref(), Some("ca:fe:c0:ff:ee:00"));
        assert_eq!(s[0].default_route, vec!["10.1.1.1".parse::<IpAddr>().unwrap()]);
        assert_eq!((s[1].namespace.as_str(), s[1].interface.as_str()), ("app", "net2"));
    }

    /// The multi-net-spec v1.3's own examples (§4.1.1, §4.1.2, §4.1.2.1.3–4, §4.1.2.1.9).
    #[test]
    fn the_specs_examples_read_as_it_says() {
        let s = parse("my-namespace", "net-a,net-b,other-ns/net-c").unwrap();
        let names: Vec<_> = s.iter().map(|s| format!("{}/{}@{}", s.namespace, s.name, s.interface)).collect();
        assert_eq!(names, ["my-namespace/net-a@net1", "my-namespace/net-b@net2", "other-ns/net-c@net3"]);
        let s = parse(
            "my-namespace",
            r#"[
        {"name":"net-a"},
        {
          "name":"net-b",
          "ips": ["1.2.3.4"],
          "mac": "aa:bb:cc:dd:ee:ff"
        },
        {
          "name":"net-c",
          "namespace":"other-ns"
        }
      ]"#,
        )
        .unwrap();
        assert_eq!(s[1].ips, vec![("1.2.3.4".parse().unwrap(), None)]);
        assert_eq!(s[1].mac.as_deref(), Some("aa:bb:cc:dd:ee:ff"));
        assert_eq!((s[2].namespace.as_str(), s[2].name.as_str()), ("other-ns", "net-c"));
        let s = parse("ns", r#"[{"name":"net-b","ips": ["10.2.2.42/24", "2001:db8::5/64"]}]"#).unwrap();
        assert_eq!(
            s[0].ips,
            vec![("10.2.2.42".parse().unwrap(), Some(24)), ("2001:db8::5".parse().unwrap(), Some(64))]
        );
        let s = parse("ns", r#"[{"name":"net-b","mac": "02:23:45:67:89:01"}]"#).unwrap();
        assert_eq!(s[0].mac.as_deref(), Some("02:23:45:67:89:01"));
        let s = parse("ns", r#"[{ "name":"net-a" }, {"name":"net-b", "default-route": ["10.0.0.1"]}]"#).unwrap();
        assert_eq!(s[1].default_route, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
        // An implementation's own keys (with a period) are let through.
        assert!(parse("ns", r#"[{"name":"net-a", "org.example.color": "blue"}]"#).is_ok());
        // Only one element may name the default route (§4.1.2.1.9).
        let e = parse("ns", r#"[{"name":"a", "default-route": []}, {"name":"b", "default-route": ["10.0.0.1"]}]"#)
            .unwrap_err();
        assert!(e.contains("[1].default-route: element 0 names the default route already"), "{e}");
    }

    #[test]
    fn bad_elements_are_errors_naming_position_and_field() {
        let err = |t: &str| parse("app", t).unwrap_err();
        assert!(err(r#"[{"namespace": "x"}]"#).contains("[0].name: required"));
        assert!(err(r#"[{"name": "a"}, {"name": "b", "mac": "01:00:5e:00:00:01"}]"#).contains("[1].mac"));
        assert!(
            err(r#"[{"name": "a", "ips": ["10.1.1.300"]}]"#).contains("[0].ips: \"10.1.1.300\" is not an IP address")
        );
        assert!(err(r#"[{"name": "a", "ips": "10.1.1.3"}]"#).contains("[0].ips: a list of strings"));
        assert!(err(r#"[{"name": "a", "default-route": ["gw"]}]"#).contains("[0].default-route"));
        assert!(err(r#"[{"name": "a", "interface": "a-very-long-interface"}]"#).contains("[0].interface"));
        assert!(err(r#"[{"name": "a", "colour": "red"}]"#).contains("[0].colour: not a selection element key"));
        assert!(err(r#"[{"name": "A_B"}]"#).contains("[0].name"));
        assert!(err("[{\"name\": ").contains("not valid JSON"));
        assert!(err("a@eth0").contains("eth0 is taken"));
        assert!(err("a@lo").contains("lo is taken"));
        assert!(err("a@x, b@x").contains("[1].interface: x is taken"));
        assert!(err("a, b@net1").contains("[0].interface: the default name net1"));
        assert!(err("ns/").contains("[0].name"));
        assert!(err("a@").contains("[0].interface"));
    }
}
