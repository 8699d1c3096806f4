//! The upstream e2e netpol model as Kubernetes API objects.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// A cluster as plain API objects, keyed by `name` (namespaces) or `ns/name`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct World {
    pub namespaces: BTreeMap<String, core::Namespace>,
    pub pods: BTreeMap<String, core::Pod>,
    pub policies: BTreeMap<String, networking::NetworkPolicy>,
}

/// A change to a [`World`], in the order a watch would deliver it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Namespace(core::Namespace),
    Pod(Box<core::Pod>),
    Policy(networking::NetworkPolicy),
    DeletePolicy { namespace: String, name: String },
}

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const POD_NAMES: [&str; 3] = ["a", "b", "c"];

/// The address the harness gives pod `ns/pod`: `10.<n>.0.<p>` with x,y,z = 1,2,3 and a,b,c =
/// 1,2,3 (other names: the position in sorted order, from 4 up).
pub fn pod_ip(ns: &str, pod: &str) -> Ipv4Addr {
    let n = NAMESPACES.iter().position(|x| *x == ns).map_or(9, |i| i + 1);
    let p = POD_NAMES.iter().position(|x| *x == pod).map_or(9, |i| i + 1);
    Ipv4Addr::new(10, n as u8, 0, p as u8)
}

fn meta(namespace: Option<&str>, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        labels: Some(labels),
        ..Default::default()
    }
}

/// A namespace as the upstream model labels it (`ns: <name>`) plus the API server's name label.
pub fn namespace(name: &str) -> core::Namespace {
    let labels = BTreeMap::from([
        ("ns".to_string(), name.to_string()),
        ("kubernetes.io/metadata.name".to_string(), name.to_string()),
    ]);
    core::Namespace { metadata: meta(None, name, labels), ..Default::default() }
}

/// A pod as the upstream model builds it: label `pod: <name>`, a container per port x
/// protocol with the port named `serve-<port>-<protocol>`.
pub fn pod(ns: &str, name: &str, ports: &[u16], protocols: &[&str]) -> core::Pod {
    let mut containers = Vec::new();
    for port in ports {
        for proto in protocols {
            let lower = proto.to_ascii_lowercase();
            containers.push(core::Container {
                name: format!("cont-{port}-{lower}"),
                image: Some("registry.k8s.io/e2e-test-images/agnhost:2.53".into()),
                ports: Some(vec![core::ContainerPort {
                    container_port: i32::from(*port),
                    name: Some(format!("serve-{port}-{lower}")),
                    protocol: Some(proto.to_string()),
                    ..Default::default()
                }]),
                ..Default::default()
            });
        }
    }
    let ip = pod_ip(ns, name).to_string();
    core::Pod {
        metadata: meta(Some(ns), name, BTreeMap::from([("pod".to_string(), name.to_string())])),
        spec: Some(core::PodSpec { containers, ..Default::default() }),
        status: Some(core::PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.clone()),
            pod_ips: Some(vec![core::PodIP { ip }]),
            ..Default::default()
        }),
    }
}

impl World {
    /// Namespaces x, y, z (always all three, as upstream creates them) and the given pods
    /// (`"x/a"`), serving `ports` x `protocols`.
    pub fn standard(pods: &[String], ports: &[u16], protocols: &[String]) -> World {
        let mut w = World::default();
        for ns in NAMESPACES {
            w.namespaces.insert(ns.to_string(), namespace(ns));
        }
        let protocols: Vec<&str> = protocols.iter().map(String::as_str).collect();
        for p in pods {
            let (ns, name) = p.split_once('/').expect("pods are ns/name");
            w.namespaces.entry(ns.to_string()).or_insert_with(|| namespace(ns));
            w.pods.insert(p.clone(), pod(ns, name, ports, &protocols));
        }
        w
    }

    /// The nine-pod model with ports 80, 81 and every protocol.
    pub fn full() -> World {
        let pods: Vec<String> =
            NAMESPACES.iter().flat_map(|ns| POD_NAMES.iter().map(move |p| format!("{ns}/{p}"))).collect();
        let protocols = ["TCP", "UDP", "SCTP"].map(String::from);
        World::standard(&pods, &[80, 81], &protocols)
    }

    /// The events that build this world from nothing: namespaces, then pods, then policies.
    pub fn creation_events(&self) -> Vec<Event> {
        let mut out: Vec<Event> = self.namespaces.values().cloned().map(Event::Namespace).collect();
        out.extend(self.pods.values().cloned().map(|p| Event::Pod(Box::new(p))));
        out.extend(self.policies.values().cloned().map(Event::Policy));
        out
    }

    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::Namespace(ns) => {
                self.namespaces.insert(ns.metadata.name.clone().unwrap_or_default(), ns.clone());
            }
            Event::Pod(p) => {
                let key = format!(
                    "{}/{}",
                    p.metadata.namespace.as_deref().unwrap_or("default"),
                    p.metadata.name.as_deref().unwrap_or_default()
                );
                self.pods.insert(key, (**p).clone());
            }
            Event::Policy(p) => {
                let key = format!(
                    "{}/{}",
                    p.metadata.namespace.as_deref().unwrap_or("default"),
                    p.metadata.name.as_deref().unwrap_or_default()
                );
                self.policies.insert(key, p.clone());
            }
            Event::DeletePolicy { namespace, name } => {
                self.policies.remove(&format!("{namespace}/{name}"));
            }
        }
    }

    /// Pod keys in order.
    pub fn pod_names(&self) -> Vec<String> {
        self.pods.keys().cloned().collect()
    }
}
