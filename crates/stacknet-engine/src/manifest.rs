//! Kubernetes YAML in, cluster objects out: multi-document files, `kind: List` (and `PodList`
//! and friends, as `kubectl get -o yaml` prints them). Kinds stacknet does not read are skipped
//! with a warning; fields the API does not know are reported as warnings, as `kubectl` does,
//! so a typo such as `podSelectr` does not silently select every pod.

use serde::de::DeserializeOwned;
use serde_json::Value;

use k8s_openapi::api::networking::v1 as networking;

use crate::error::{Invalid, ManifestError};
use crate::objects::{ClusterObject, EndpointSlice, Namespace, NetworkPolicy, Node, Pod, Service};

/// The objects of one manifest file, in file order, and what was noticed on the way.
#[derive(Debug, Default)]
pub struct Manifest {
    pub objects: Vec<ClusterObject>,
    pub warnings: Vec<String>,
}

const KINDS: &str =
    "Namespace, Node, Pod, NetworkPolicy, Service, EndpointSlice, NetworkAttachmentDefinition, MultiNetworkPolicy";

/// Parses one file's text; `source_name` (usually the path) prefixes every message.
pub fn parse(source_name: &str, text: &str) -> Result<Manifest, ManifestError> {
    // YAML 1.2 booleans only: `namespace: y` or a label `enabled: on` stays a string, as it does
    // for the API server. The budget is sized for whole-cluster dumps (`kubectl get -o yaml` of
    // tens of thousands of objects); the alias limits still keep alias bombs out.
    let options = serde_saphyr::options! {
        strict_booleans: true,
        budget: serde_saphyr::budget! {
            max_events: 200_000_000,
            max_nodes: 100_000_000,
            max_documents: 10_000_000,
            max_total_scalar_bytes: 1 << 30,
        },
    };
    let docs: Vec<Value> = serde_saphyr::from_multiple_with_options(text, options)
        .map_err(|e| ManifestError::Yaml { source_name: source_name.to_string(), message: e.to_string() })?;
    let mut out = Manifest::default();
    for (i, doc) in docs.into_iter().enumerate() {
        let document = i + 1;
        if doc.is_null() {
            continue;
        }
        read_object(source_name, document, "", doc, &mut out)?;
    }
    Ok(out)
}

fn read_object(
    source_name: &str,
    document: usize,
    at: &str,
    value: Value,
    out: &mut Manifest,
) -> Result<(), ManifestError> {
    let doc_err = |object: String, message: String| ManifestError::Document {
        source_name: source_name.to_string(),
        document,
        object,
        message,
    };
    let Value::Object(mut map) = value else {
        return Err(doc_err(
            at.to_string(),
            "is not a Kubernetes object (expected a mapping with apiVersion and kind)".into(),
        ));
    };
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
    if kind.is_empty() {
        return Err(doc_err(at.to_string(), "has no kind".into()));
    }
    let meta = map.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("");
    let namespace = meta.and_then(|m| m.get("namespace")).and_then(Value::as_str);
    let described = match namespace {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    };
    let described = described.trim_end().to_string();

    if kind == "List" || (kind.ends_with("List") && map.contains_key("items")) {
        let Some(Value::Array(items)) = map.remove("items") else {
            return Err(doc_err(format!("{at} ({kind})"), "items: expected a list of objects".into()));
        };
        // Each item is dropped once converted: a list of thousands is not held twice.
        for (j, item) in items.into_iter().enumerate() {
            read_object(source_name, document, &format!("{at} items[{j}]"), item, out)?;
        }
        return Ok(());
    }

    let expected_version = match kind.as_str() {
        "Namespace" | "Node" | "Pod" | "Service" => "v1",
        "NetworkPolicy" => "networking.k8s.io/v1",
        "EndpointSlice" => "discovery.k8s.io/v1",
        "NetworkAttachmentDefinition" => crate::multinet::NAD_API_VERSION,
        "MultiNetworkPolicy" => crate::multinet::MULTI_POLICY_API_VERSION,
        _ => {
            out.warnings.push(format!(
                "{source_name}: document {document}{at}: skipped {described} ({api_version}): stacknet reads {KINDS}"
            ));
            return Ok(());
        }
    };
    if api_version != expected_version {
        return Err(doc_err(
            format!("{at} ({described})"),
            format!("apiVersion {api_version:?} is not supported for {kind} (expected {expected_version})"),
        ));
    }
    let value = Value::Object(map);
    let doc = Doc { value: &value, described: &described, source_name, document, at };
    let mut warnings = Vec::new();
    let object = match kind.as_str() {
        "Namespace" => doc.convert(out, Namespace::from_k8s).map(ClusterObject::Namespace),
        "Node" => doc.convert(out, Node::from_k8s).map(ClusterObject::Node),
        "Pod" => doc.convert(out, Pod::from_k8s).map(ClusterObject::Pod),
        "NetworkPolicy" => doc
            .convert(out, |np: &networking::NetworkPolicy| NetworkPolicy::from_k8s(np, &mut warnings))
            .map(ClusterObject::NetworkPolicy),
        "Service" => doc.convert(out, Service::from_k8s).map(ClusterObject::Service),
        "EndpointSlice" => doc.convert(out, EndpointSlice::from_k8s).map(ClusterObject::EndpointSlice),
        "NetworkAttachmentDefinition" => doc
            .convert(out, crate::multinet::NetworkAttachmentDefinition::from_k8s)
            .map(ClusterObject::NetworkAttachmentDefinition),
        "MultiNetworkPolicy" => doc
            .convert(out, |p: &crate::multinet::nad::MultiPolicyApi| {
                crate::multinet::MultiNetworkPolicy::from_k8s(p, &mut warnings)
            })
            .map(ClusterObject::MultiNetworkPolicy),
        _ => unreachable!("kinds are filtered above"),
    }
    .map_err(|invalid| ManifestError::Invalid { source_name: source_name.to_string(), invalid })?;
    out.warnings.extend(warnings.into_iter().map(|w| format!("{source_name}: {w}")));
    out.objects.push(object);
    Ok(())
}

/// One object of a manifest, on its way to the API type and then to ours.
struct Doc<'a> {
    value: &'a Value,
    described: &'a str,
    source_name: &'a str,
    document: usize,
    at: &'a str,
}

impl Doc<'_> {
    /// Deserializes into the API type `T`, reporting the field path of a type error, warns
    /// about fields `T` does not have, then validates with `convert`.
    fn convert<T: DeserializeOwned + serde::Serialize, O>(
        &self,
        out: &mut Manifest,
        convert: impl FnOnce(&T) -> Result<O, Invalid>,
    ) -> Result<O, Invalid> {
        let typed: T = serde_path_to_error::deserialize(self.value.clone()).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { "(object)".to_string() } else { path };
            Invalid::new(self.described, field, e.into_inner().to_string())
        })?;
        if let Ok(round_trip) = serde_json::to_value(&typed) {
            let mut unknown = Vec::new();
            unknown_fields(self.value, &round_trip, String::new(), &mut unknown);
            for field in unknown {
                out.warnings.push(format!(
                    "{}: document {}{} ({}): unknown field {field} (ignored)",
                    self.source_name, self.document, self.at, self.described
                ));
            }
        }
        convert(&typed)
    }
}

/// Keys present in `input` but not in `known` (the object as the API type understood it).
fn unknown_fields(input: &Value, known: &Value, path: String, out: &mut Vec<String>) {
    match (input, known) {
        (Value::Object(i), Value::Object(k)) => {
            for (key, v) in i {
                let p = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                match k.get(key) {
                    Some(kv) => unknown_fields(v, kv, p, out),
                    None if v.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(i), Value::Array(k)) => {
            for (n, (iv, kv)) in i.iter().zip(k).enumerate() {
                unknown_fields(iv, kv, format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{PolicyPortSpec, PortMatch, Protocol};

    fn policy(m: &Manifest, i: usize) -> &NetworkPolicy {
        match &m.objects[i] {
            ClusterObject::NetworkPolicy(p) => p,
            o => panic!("not a policy: {o:?}"),
        }
    }

    #[test]
    fn multi_document_and_lists() {
        let text = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: a}}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: a, namespace: x, labels: {pod: a}}
  spec:
    containers:
    - name: c
      ports: [{containerPort: 80, name: http}]
  status: {podIP: 10.0.0.1}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: web, namespace: x}
---
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  egress: [{}]
"#;
        let m = parse("f.yaml", text).unwrap();
        assert_eq!(m.objects.len(), 3);
        assert!(m.warnings.iter().any(|w| w.contains("skipped Deployment x/web")), "{:?}", m.warnings);
        let ClusterObject::Namespace(ns) = &m.objects[0] else { panic!() };
        assert_eq!(ns.labels.get("kubernetes.io/metadata.name").map(String::as_str), Some("x"));
        let ClusterObject::Pod(pod) = &m.objects[1] else { panic!() };
        assert_eq!(pod.ips, vec!["10.0.0.1".parse::<std::net::IpAddr>().unwrap()]);
        assert_eq!(pod.named_port("http", Protocol::Tcp), Some(80));
        // policyTypes defaulting: Ingress always, Egress because egress rules exist.
        let p = policy(&m, 2);
        assert_eq!(p.ingress, Some(vec![]));
        assert_eq!(p.egress.as_ref().map(Vec::len), Some(1));
    }

    #[test]
    fn services_and_endpoint_slices() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: db, namespace: x}
spec:
  clusterIP: 10.96.0.10
  selector: {tier: db}
  ports:
  - {name: pg, port: 5432, targetPort: postgres}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: x}
spec: {clusterIP: None, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-abc, namespace: x, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
endpoints:
- addresses: [10.0.0.1]
  targetRef: {kind: Pod, name: db-0}
- addresses: [10.0.0.2]
  conditions: {ready: false}
ports: [{name: pg, port: 5432}]
"#;
        let m = parse("svc.yaml", text).unwrap();
        let ClusterObject::Service(db) = &m.objects[0] else { panic!() };
        assert_eq!(db.cluster_ips, vec!["10.96.0.10".parse::<std::net::IpAddr>().unwrap()]);
        assert_eq!(db.ports[0].target_port, crate::objects::TargetPort::Name("postgres".into()));
        assert_eq!(db.ports[1].target_port, crate::objects::TargetPort::Number(53));
        assert_eq!(db.ports[1].protocol, Protocol::Udp);
        let ClusterObject::Service(headless) = &m.objects[1] else { panic!() };
        assert!(headless.cluster_ips.is_empty());
        let ClusterObject::EndpointSlice(slice) = &m.objects[2] else { panic!() };
        assert_eq!(slice.service.as_deref(), Some("db"));
        assert!(slice.endpoints[0].ready, "unset readiness means ready");
        assert!(!slice.endpoints[1].ready);
        assert_eq!(slice.endpoints[0].pod, Some(crate::objects::ObjectKey::new("x", "db-0")));

        let bad = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, namespace: x}\naddressType: IPv4\nendpoints: [{addresses: [not-an-ip]}]\n";
        let e = parse("svc.yaml", bad).unwrap_err().to_string();
        assert_eq!(e, "svc.yaml: EndpointSlice x/s: endpoints[0].addresses[0]: \"not-an-ip\" is not an IP address");
    }

    #[test]
    fn whole_cluster_dumps_parse() {
        let mut text = String::new();
        for i in 0..3_000 {
            text.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: x, labels: {{app: a, tier: t{}}}}}\nspec:\n  containers:\n  - name: c\n    image: i\n    ports: [{{name: http, containerPort: 80}}]\nstatus: {{podIP: 10.0.{}.{}}}\n",
                i % 7,
                i / 250,
                i % 250
            ));
        }
        let m = parse("dump.yaml", &text).unwrap();
        assert_eq!(m.objects.len(), 3_000);
        assert!(m.warnings.is_empty(), "{:?}", &m.warnings[..1]);
    }

    #[test]
    fn yaml_1_1_booleans_stay_strings() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: y, labels: {enabled: on, legacy: no}}\n";
        let m = parse("f.yaml", text).unwrap();
        let ClusterObject::Pod(pod) = &m.objects[0] else { panic!() };
        assert_eq!(pod.key.namespace, "y");
        assert_eq!(pod.labels.get("enabled").map(String::as_str), Some("on"));
        assert_eq!(pod.labels.get("legacy").map(String::as_str), Some("no"));
        // A number where a string belongs is an error naming the field, as kubectl's is.
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {version: 1.0}}\n";
        let e = parse("f.yaml", text).unwrap_err().to_string();
        assert!(e.contains("metadata.labels.version"), "{e}");
    }

    #[test]
    fn empty_egress_list_does_not_add_egress_type() {
        let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  egress: []\n";
        let m = parse("f.yaml", text).unwrap();
        assert_eq!(policy(&m, 0).egress, None);
    }

    #[test]
    fn errors_name_file_object_and_field() {
        let text = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-web, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports:
    - port: 80
    - port: http
      endPort: 90
"#;
        let e = parse("web.yaml", text).unwrap_err().to_string();
        assert_eq!(
            e,
            "web.yaml: NetworkPolicy x/allow-web: spec.ingress[0].ports[1].endPort: endPort requires a numeric port"
        );

        let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/33}\n";
        let e = parse("f.yaml", text).unwrap_err().to_string();
        assert!(e.starts_with("f.yaml: NetworkPolicy x/p: spec.ingress[0].from[0].ipBlock.cidr: prefix length"), "{e}");

        let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  ingress:\n  - ports:\n    - port: [80]\n";
        let e = parse("f.yaml", text).unwrap_err().to_string();
        assert_eq!(
            e,
            "f.yaml: NetworkPolicy x/p: spec.ingress[0].ports[0].port: invalid type: sequence, expected IntOrString"
        );
    }

    #[test]
    fn bad_yaml_and_bad_documents() {
        let e = parse("f.yaml", "a: [1, 2\n").unwrap_err();
        assert!(matches!(e, ManifestError::Yaml { .. }), "{e}");
        let e = parse("f.yaml", "- 1\n- 2\n").unwrap_err().to_string();
        assert!(e.contains("document 1") && e.contains("not a Kubernetes object"), "{e}");
        let e = parse("f.yaml", "apiVersion: v1\nmetadata: {name: a}\n").unwrap_err().to_string();
        assert!(e.contains("has no kind"), "{e}");
        let e = parse("f.yaml", "apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: a}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("apiVersion \"extensions/v1beta1\" is not supported"), "{e}");
        let e = parse("f.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {namespace: x}\n").unwrap_err().to_string();
        assert!(e.contains("metadata.name: is required"), "{e}");
    }

    #[test]
    fn unknown_fields_are_warned_about() {
        let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x, creationTimestamp: null}\nspec:\n  podSelectr: {matchLabels: {app: db}}\n";
        let m = parse("f.yaml", text).unwrap();
        assert!(m.warnings.iter().any(|w| w.contains("unknown field spec.podSelectr")), "{:?}", m.warnings);
        assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
    }

    #[test]
    fn ports_named_ranges_and_protocols() {
        let text = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - ports:
    - {port: 8000, endPort: 8080}
    - {port: dns, protocol: UDP}
    - {protocol: SCTP}
"#;
        let m = parse("f.yaml", text).unwrap();
        let p = policy(&m, 0);
        assert_eq!(p.ingress, None);
        let ports = &p.egress.as_ref().unwrap()[0].ports;
        assert_eq!(ports[0].port, PolicyPortSpec::Numbers(PortMatch::Range { from: 8000, to: 8080 }));
        assert_eq!(ports[0].protocol, Protocol::Tcp);
        assert_eq!(ports[1].port, PolicyPortSpec::Named("dns".into()));
        assert_eq!(ports[1].protocol, Protocol::Udp);
        assert_eq!(ports[2].port, PolicyPortSpec::Numbers(PortMatch::Any));
    }

    #[test]
    fn network_attachments_and_multi_network_policies_are_read() {
        // The multi-net-spec's example NAD (another plugin's: kept, not read), one of ours,
        // and a MultiNetworkPolicy for it.
        let text = r#"
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: macvlan-conf, namespace: t}
spec:
  config: '{"cniVersion": "0.3.0", "type": "macvlan", "master": "eth0", "mode": "bridge", "ipam": {"type": "host-local", "subnet": "192.168.1.0/24"}}'
---
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: data, namespace: t}
spec:
  config: '{"cniVersion": "1.1.0", "name": "data", "type": "stacknet-cni", "topology": "layer2", "subnets": "10.100.0.0/24"}'
---
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata:
  name: data-in
  namespace: t
  annotations: {k8s.v1.cni.cncf.io/policy-for: data}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#;
        let m = parse("telco.yaml", text).unwrap();
        assert_eq!(m.objects.len(), 3);
        match (&m.objects[0], &m.objects[1], &m.objects[2]) {
            (
                ClusterObject::NetworkAttachmentDefinition(other),
                ClusterObject::NetworkAttachmentDefinition(ours),
                ClusterObject::MultiNetworkPolicy(p),
            ) => {
                assert!(!other.is_ours() && other.config.is_none());
                assert!(ours.is_ours() && matches!(ours.config, Some(Ok(_))));
                assert_eq!(p.networks, vec![crate::ObjectKey::new("t", "data")]);
            }
            o => panic!("{o:?}"),
        }
        let bad = "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata: {name: d, namespace: t}\nspec: {config: '{\"type\": '}\n";
        let e = parse("bad.yaml", bad).unwrap_err().to_string();
        assert!(e.contains("NetworkAttachmentDefinition t/d") && e.contains("spec.config"), "{e}");
    }
}
