//! Realistic generated clusters for benchmarks, repeatable from a seed.
//!
//! Namespaces belong to teams and environments; each runs a few applications made of tiers
//! (web, api, db, cache, worker) with the ports such tiers have, several of them named. Policies
//! are the mixture real clusters carry: per-namespace default-deny, tier-to-tier allows by pod
//! selector, cross-namespace allows by team or name (with matchExpressions), named ports, port
//! ranges, monitoring scrapes, DNS and internet egress through ipBlocks with excepts.
//!
//! The policies depend on the seed and the namespace count only, never on the pod count, so the
//! same policies can be compiled over 1k and 10k pods.

use std::net::{IpAddr, Ipv4Addr};

use stacknet_engine::labels::{Labels, Requirement, Selector};
use stacknet_engine::objects::{
    ContainerPort, IpBlock, Namespace, NamespaceScope, NetworkPolicy, ObjectKey, Peer, PeerSelector, Pod, PolicyPort,
    PolicyPortSpec, PolicyRule, PortMatch, Protocol,
};

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const TEAMS: usize = 10;
const ENVS: [&str; 3] = ["prod", "staging", "dev"];
const TIERS: [&str; 5] = ["web", "api", "db", "cache", "worker"];
const APPS_PER_NAMESPACE: usize = 4;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub fn namespace_name(i: usize) -> String {
    format!("ns-{i:03}")
}

fn team(i: usize) -> String {
    format!("team-{}", i % TEAMS)
}

pub fn namespaces(count: usize) -> Vec<Namespace> {
    (0..count)
        .map(|i| {
            let name = namespace_name(i);
            let mut l = labels(&[("team", &team(i)), ("env", ENVS[i % 3])]);
            l.insert("kubernetes.io/metadata.name".into(), name.clone());
            Namespace { name, labels: l, project: None }
        })
        .collect()
}

/// The ports a tier's pods serve (name, number, protocol).
fn tier_ports(tier: &str, app: usize) -> Vec<ContainerPort> {
    let p = |name: &str, port: u16, protocol: Protocol| ContainerPort { name: Some(name.into()), port, protocol };
    match tier {
        // Two generations of the web image serve "http" on different numbers.
        "web" => {
            vec![
                p("http", if app.is_multiple_of(2) { 8080 } else { 8081 }, Protocol::Tcp),
                p("metrics", 9090, Protocol::Tcp),
            ]
        }
        "api" => {
            vec![p("http", 8000, Protocol::Tcp), p("grpc", 9000, Protocol::Tcp), p("metrics", 9090, Protocol::Tcp)]
        }
        "db" => vec![p("postgres", 5432, Protocol::Tcp), p("metrics", 9187, Protocol::Tcp)],
        "cache" => vec![p("memcache", 11211, Protocol::Tcp), p("memcache-udp", 11211, Protocol::Udp)],
        _ => vec![p("metrics", 9090, Protocol::Tcp)],
    }
}

/// `count` pods spread evenly over the namespaces, their applications and tiers.
pub fn pods(count: usize, namespaces: usize, seed: u64) -> Vec<Pod> {
    let mut rng = Rng::new(seed ^ 0x706f_6473);
    (0..count)
        .map(|i| {
            let ns = i % namespaces;
            let app = (i / namespaces) % APPS_PER_NAMESPACE;
            let tier = TIERS[(i / (namespaces * APPS_PER_NAMESPACE)) % TIERS.len()];
            let version = if rng.chance(80) { "v1" } else { "v2" };
            let n = u32::try_from(i).expect("pod count fits u32") + 256;
            Pod {
                key: ObjectKey::new(namespace_name(ns), format!("app{app}-{tier}-{i}")),
                uid: Some(format!("uid-{i}")),
                labels: labels(&[("app", &format!("app{app}")), ("tier", tier), ("version", version)]),
                ips: vec![IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))],
                status_ips: vec![],
                host_network: false,
                ports: tier_ports(tier, app),
                node: Some(format!("node-{}", i % 100)),
                terminated: false,
                network_annotation: None,
                networks_annotation: None,
                network_status_annotation: None,
                sriov_devices_annotation: None,
            }
        })
        .collect()
}

fn pods_peer(ns: &str, pods: Selector) -> Peer {
    Peer::Pods(PeerSelector { namespaces: NamespaceScope::Named(ns.into()), pods })
}

fn ns_peer(namespaces: Selector, pods: Selector) -> Peer {
    Peer::Pods(PeerSelector { namespaces: NamespaceScope::Selected(namespaces), pods })
}

fn port(protocol: Protocol, spec: PolicyPortSpec) -> PolicyPort {
    PolicyPort { protocol, port: spec }
}

fn number(p: u16) -> PolicyPortSpec {
    PolicyPortSpec::Numbers(PortMatch::Range { from: p, to: p })
}

fn named(n: &str) -> PolicyPortSpec {
    PolicyPortSpec::Named(n.into())
}

fn app_tier(app: usize, tier: &str) -> Selector {
    Selector::from_labels([("app", format!("app{app}").as_str()), ("tier", tier)])
}

fn cidr(s: &str) -> stacknet_engine::Cidr {
    s.parse().expect("valid literal")
}

/// `count` policies over `namespaces` namespaces, the same for any pod count.
pub fn policies(count: usize, namespaces: usize, seed: u64) -> Vec<NetworkPolicy> {
    let mut rng = Rng::new(seed ^ 0x706f_6c69);
    let mut out = Vec::new();
    let mut per_ns = vec![0usize; namespaces];
    for i in 0..count {
        let nsi = i % namespaces;
        let ns = namespace_name(nsi);
        per_ns[nsi] += 1;
        let name = format!("np-{:04}", per_ns[nsi]);
        let app = rng.below(APPS_PER_NAMESPACE);
        let key = ObjectKey::new(ns.clone(), name);
        let mut policy = NetworkPolicy {
            key,
            uid: Some(format!("np-uid-{i}")),
            pod_selector: Selector::everything(),
            ingress: None,
            egress: None,
        };
        match (per_ns[nsi], rng.below(10)) {
            // The first policy of a namespace: default deny (ingress, sometimes egress too).
            (1, k) => {
                policy.ingress = Some(vec![]);
                if k < 3 {
                    policy.egress = Some(vec![]);
                }
            }
            (_, 0..=2) => {
                // Tier to tier inside the application, by number or by name.
                let choices = [
                    ("db", "api", port(Protocol::Tcp, named("postgres"))),
                    ("api", "web", port(Protocol::Tcp, named("http"))),
                    ("cache", "api", port(Protocol::Tcp, number(11211))),
                    ("web", "web", port(Protocol::Tcp, named("http"))),
                ];
                let (to, from, p) = rng.pick(&choices).clone();
                policy.pod_selector = app_tier(app, to);
                let mut ports = vec![p];
                if to == "cache" {
                    ports.push(port(Protocol::Udp, named("memcache-udp")));
                }
                policy.ingress = Some(vec![PolicyRule { peers: vec![pods_peer(&ns, app_tier(app, from))], ports }]);
            }
            (_, 3) => {
                // Another team's namespaces may call the API (matchExpressions on env).
                policy.pod_selector = Selector::from_labels([("tier", "api")]);
                let teams = Selector::new(vec![
                    Requirement::In("team".into(), vec![team(rng.below(TEAMS)), team(rng.below(TEAMS))]),
                    Requirement::NotIn("env".into(), vec!["dev".into()]),
                ]);
                policy.ingress = Some(vec![PolicyRule {
                    peers: vec![ns_peer(teams, Selector::from_labels([("tier", "web")]))],
                    ports: vec![port(Protocol::Tcp, number(8000)), port(Protocol::Tcp, named("grpc"))],
                }]);
            }
            (_, 4) => {
                // Monitoring scrapes every pod's named metrics port.
                let monitoring = Selector::from_labels([("kubernetes.io/metadata.name", namespace_name(0).as_str())]);
                policy.ingress = Some(vec![PolicyRule {
                    peers: vec![ns_peer(monitoring, Selector::from_labels([("app", "app0")]))],
                    ports: vec![port(Protocol::Tcp, named("metrics"))],
                }]);
            }
            (_, 5) => {
                // Egress: DNS in the first namespace, the internet on 443 but not the cloud's
                // metadata service nor the private ranges.
                policy.pod_selector = Selector::from_labels([("app", format!("app{app}").as_str())]);
                policy.egress = Some(vec![
                    PolicyRule {
                        peers: vec![ns_peer(
                            Selector::from_labels([("kubernetes.io/metadata.name", namespace_name(0).as_str())]),
                            Selector::from_labels([("tier", "worker")]),
                        )],
                        ports: vec![port(Protocol::Udp, number(53)), port(Protocol::Tcp, number(53))],
                    },
                    PolicyRule {
                        peers: vec![Peer::IpBlock(IpBlock {
                            cidr: cidr("0.0.0.0/0"),
                            except: vec![
                                cidr("10.0.0.0/8"),
                                cidr("169.254.169.254/32"),
                                cidr("172.16.0.0/12"),
                                cidr("192.168.0.0/16"),
                            ],
                        })],
                        ports: vec![port(Protocol::Tcp, number(443))],
                    },
                ]);
            }
            (_, 6) => {
                // A NodePort-style range from the load balancers' subnet.
                policy.pod_selector = app_tier(app, "web");
                policy.ingress = Some(vec![PolicyRule {
                    peers: vec![Peer::IpBlock(IpBlock {
                        cidr: cidr("192.168.0.0/16"),
                        except: vec![cidr("192.168.100.0/24")],
                    })],
                    ports: vec![port(
                        Protocol::Tcp,
                        PolicyPortSpec::Numbers(PortMatch::Range { from: 30000, to: 32767 }),
                    )],
                }]);
            }
            (_, 7) => {
                // Same team, any namespace, canary pods excluded.
                policy.pod_selector = app_tier(app, "api");
                policy.ingress = Some(vec![PolicyRule {
                    peers: vec![ns_peer(
                        Selector::from_labels([("team", team(nsi).as_str())]),
                        Selector::new(vec![Requirement::NotIn("version".into(), vec!["v2".into()])]),
                    )],
                    ports: vec![],
                }]);
            }
            (_, 8) => {
                // The whole namespace may talk to itself.
                policy.ingress =
                    Some(vec![PolicyRule { peers: vec![pods_peer(&ns, Selector::everything())], ports: vec![] }]);
            }
            _ => {
                // Egress from workers to the databases of the namespace and of one other.
                let other = namespace_name(rng.below(namespaces));
                policy.pod_selector = app_tier(app, "worker");
                policy.egress = Some(vec![PolicyRule {
                    peers: vec![
                        pods_peer(&ns, Selector::from_labels([("tier", "db")])),
                        ns_peer(
                            Selector::from_labels([("kubernetes.io/metadata.name", other.as_str())]),
                            Selector::from_labels([("tier", "db")]),
                        ),
                    ],
                    ports: vec![port(Protocol::Tcp, named("postgres"))],
                }]);
            }
        }
        out.push(policy);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use stacknet_engine::objects::ClusterObject;
    use stacknet_engine::{ClusterIndex, PolicyEngine};

    fn compile(pods: usize) -> PolicyEngine {
        let objects = namespaces(20)
            .into_iter()
            .map(ClusterObject::Namespace)
            .chain(super::pods(pods, 20, 7).into_iter().map(ClusterObject::Pod))
            .chain(policies(200, 20, 7).into_iter().map(ClusterObject::NetworkPolicy));
        PolicyEngine::from_index(ClusterIndex::from_objects(objects))
    }

    /// The benchmark's claim that rules grow with policies, not pods, at two scales.
    #[test]
    fn same_policies_same_rules_at_any_pod_count() {
        let (small, large) = (compile(200), compile(2_000));
        assert_eq!(small.model().rules, large.model().rules);
        assert!(small.rule_count() >= 200, "{}", small.rule_count());
        assert!(large.naive_rule_count() > 5 * small.naive_rule_count() / 2);
    }

    #[test]
    fn generation_repeats_from_the_seed() {
        assert_eq!(policies(50, 10, 3), policies(50, 10, 3));
        assert_eq!(pods(50, 10, 3), pods(50, 10, 3));
        assert_ne!(policies(50, 10, 3), policies(50, 10, 4));
    }
}
