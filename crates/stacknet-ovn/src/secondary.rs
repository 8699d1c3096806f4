//! Secondary networks in OVN (pure): what the engine's multinet plan decided, as rows. A
//! network is one logical switch spanning the nodes (`layer2`), or such a switch with a
//! localnet port that each chassis bridges to its physical network through
//! `ovn-bridge-mappings` (`localnet`, untagged or with a VLAN tag). Each attachment is a port
//! on it, bound to the pod's node. The pod's primary port says which secondary interfaces its
//! ADD attaches (or why none can be). MultiNetworkPolicies become the same port groups, ACLs
//! and address sets as NetworkPolicies, over the pods' ports on that network.

use std::collections::BTreeMap;

use stacknet_engine::multinet::{self, Attachment, NetTopology};
use stacknet_engine::objects::ObjectKey;
use stacknet_engine::{Cidr, PolicyEngine};
use stacknet_ovsdb::Datum;
use stacknet_ovsdb::nb::{LOGICAL_SWITCH, LOGICAL_SWITCH_PORT};

use crate::desired::{Desired, PodPort, RowBuilder};
use crate::names::{
    KEY_ATTACHMENT_ERROR, KEY_ATTACHMENTS, KEY_DEFAULT_ROUTE, KEY_INTERFACE, KEY_IPS, KEY_MTU, KEY_NETWORK, KEY_ROUTES,
};
use crate::topology::Topology;

/// The logical switch of a secondary network.
pub fn switch_name(cluster: &str, network: &ObjectKey) -> String {
    format!("{cluster}_net_{}_{}", network.namespace, network.name)
}

/// The localnet port of a provider network's switch.
pub fn localnet_port_name(cluster: &str, network: &ObjectKey) -> String {
    format!("{}_localnet", switch_name(cluster, network))
}

/// The port of a pod's secondary interface.
pub fn port_name(cluster: &str, pod: &ObjectKey, interface: &str) -> String {
    format!("{cluster}_{}_{}_{interface}", pod.namespace, pod.name)
}

/// The identity of a pod's secondary interface's port.
pub fn port_id(pod: &ObjectKey, interface: &str) -> String {
    format!("attach:{pod}/{interface}")
}

/// The networks OVN mode makes: layer2 and localnet (a Neutron network is OpenStack mode's).
pub fn accepts(topology: &NetTopology) -> Result<(), String> {
    match topology {
        NetTopology::Layer2 | NetTopology::Localnet { .. } => Ok(()),
        NetTopology::Neutron { .. } => {
            Err("names a Neutron network, which only the OpenStack backend makes; in OVN mode say topology layer2 or localnet".into())
        }
    }
}

/// Adds every secondary network's rows, and marks the pods' primary ports.
pub(crate) fn networks(d: &mut Desired, engine: &PolicyEngine, topo: &Topology) {
    let plan = &topo.multinet;
    let cluster = topo.cluster.clone();
    mark_primary_ports(d, topo);
    for (net, config) in &plan.networks {
        // Pods without a primary port get no secondary one either (no node, no address).
        let attachments: Vec<&Attachment> = plan.on(net).filter(|a| d.ports.contains_key(&a.pod)).collect();
        let mut ports = Vec::new();
        for a in &attachments {
            let pod = engine.index().pod_id(&a.pod).and_then(|id| engine.index().pod(id));
            let lsp = port_name(&cluster, &a.pod, &a.interface);
            let address = std::iter::once(a.mac.clone())
                .chain(a.ips.iter().map(|(ip, _)| ip.to_string()))
                .collect::<Vec<_>>()
                .join(" ");
            let mut options = BTreeMap::from([("requested-chassis".to_string(), a.node.clone())]);
            if let Some(uid) = pod.and_then(|p| p.uid.as_ref()) {
                options.insert("iface-id-ver".into(), uid.clone());
            }
            let id = port_id(&a.pod, &a.interface);
            let mut b = RowBuilder::new(&cluster, LOGICAL_SWITCH_PORT, id.clone(), "Pod", &a.pod.to_string())
                .str("name", &lsp)
                .col("addresses", Datum::set([address.clone()]))
                .col("port_security", Datum::set([address]))
                .col("options", Datum::map(options))
                .external(KEY_NETWORK, &net.to_string())
                .external(KEY_INTERFACE, &a.interface);
            if !a.ips.is_empty() {
                let ips: Vec<String> = a.ips.iter().map(|(ip, len)| format!("{ip}/{len}")).collect();
                b = b.external(KEY_IPS, &ips.join(","));
            }
            if let Some(mtu) = a.mtu {
                b = b.external(KEY_MTU, &mtu.to_string());
            }
            if !a.default_route.is_empty() {
                let gws: Vec<String> = a.default_route.iter().map(ToString::to_string).collect();
                b = b.external(KEY_DEFAULT_ROUTE, &gws.join(","));
            }
            d.add(b.build());
            ports.push(id);
            d.attachments.insert(
                (a.pod.clone(), a.interface.clone()),
                PodPort {
                    lsp,
                    switch: switch_name(&cluster, net),
                    node: a.node.clone(),
                    mac: a.mac.clone(),
                    ips: a.ips.iter().map(|(ip, _)| *ip).collect(),
                    parent: None,
                },
            );
        }
        if let NetTopology::Localnet { physnet, vlan } = &config.topology {
            let id = format!("localnet:{net}");
            let mut b = RowBuilder::new(
                &cluster,
                LOGICAL_SWITCH_PORT,
                id.clone(),
                "NetworkAttachmentDefinition",
                &net.to_string(),
            )
            .str("name", &format!("{}_localnet", switch_name(&cluster, net)))
            .str("type", "localnet")
            .col("addresses", Datum::set(["unknown".to_string()]))
            .col("options", Datum::string_map([("network_name", physnet.as_str())]));
            if let Some(v) = vlan {
                b = b.col("tag", Datum::Atom(i64::from(*v).into()));
            }
            d.add(b.build());
            ports.push(id);
        }
        d.add(
            RowBuilder::new(
                &cluster,
                LOGICAL_SWITCH,
                format!("net:{net}"),
                "NetworkAttachmentDefinition",
                &net.to_string(),
            )
            .str("name", &switch_name(&cluster, net))
            .external(KEY_NETWORK, &net.to_string())
            .refs("ports", ports)
            .build(),
        );
        // The network's MultiNetworkPolicies, over the pods' ports on it.
        let policy = PolicyEngine::from_index(multinet::network_index(engine.index(), plan, net));
        let on_net: BTreeMap<ObjectKey, Vec<String>> = attachments.iter().fold(BTreeMap::new(), |mut m, a| {
            m.entry(a.pod.clone()).or_default().push(port_id(&a.pod, &a.interface));
            m
        });
        let ports_of = |k: &ObjectKey| on_net.get(k).cloned().unwrap_or_default();
        crate::desired::network_policies(d, &policy, net, &ports_of);
    }
}

/// On each pod's primary port: the secondary interfaces its ADD attaches, or why none can
/// be; and, when a secondary interface carries its default route, the cluster's CIDRs the
/// pod still reaches through the primary one.
fn mark_primary_ports(d: &mut Desired, topo: &Topology) {
    let plan = &topo.multinet;
    let keys: Vec<ObjectKey> = d.ports.keys().cloned().collect();
    for key in keys {
        let mut marks: Vec<(&str, String)> = Vec::new();
        if let Some(why) = plan.refused.get(&key) {
            marks.push((KEY_ATTACHMENT_ERROR, why.clone()));
        }
        if let Some(list) = plan.pods.get(&key) {
            marks.push((KEY_ATTACHMENTS, list.iter().map(|a| a.interface.as_str()).collect::<Vec<_>>().join(",")));
            let routes: Vec<String> = topo
                .node_routes
                .iter()
                .filter(|c: &&Cidr| plan.default_route_elsewhere(&key, c.is_ipv4()))
                .map(ToString::to_string)
                .collect();
            if !routes.is_empty() {
                marks.push((KEY_ROUTES, routes.join(",")));
            }
        }
        if marks.is_empty() {
            continue;
        }
        if let Some(row) = d.rows.get_mut(&(LOGICAL_SWITCH_PORT, format!("pod:{key}")))
            && let Some(Datum::Map(m)) = row.columns.get_mut("external_ids")
        {
            for (k, v) in marks {
                m.insert(k.into(), v.as_str().into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use stacknet_engine::{ClusterIndex, manifest};
    use stacknet_ovsdb::nb::{ACL, PORT_GROUP};

    use super::*;
    use crate::names::KEY_ID;

    pub(crate) const TELCO: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: k8s.cni.cncf.io/v1
  kind: NetworkAttachmentDefinition
  metadata: {name: data, namespace: telco}
  spec: {config: '{"cniVersion": "1.1.0", "name": "data", "type": "stacknet-cni", "topology": "layer2", "subnets": "10.100.0.0/24", "excludeSubnets": "10.100.0.0/29", "mtu": 1300}'}
- apiVersion: k8s.cni.cncf.io/v1
  kind: NetworkAttachmentDefinition
  metadata: {name: provider, namespace: telco}
  spec: {config: '{"cniVersion": "1.1.0", "name": "provider", "type": "stacknet-cni", "topology": "localnet", "physicalNetworkName": "physnet1", "vlanID": 200, "subnets": "192.0.2.0/24", "excludeSubnets": "192.0.2.0/28"}'}
- apiVersion: v1
  kind: Pod
  metadata:
    name: nf
    namespace: telco
    labels: {app: nf}
    uid: u-nf
    annotations:
      k8s.v1.cni.cncf.io/networks: '[{"name": "data", "interface": "data0"}, {"name": "provider", "interface": "ext0", "ips": ["192.0.2.20/24"], "default-route": ["192.0.2.1"]}]'
  spec: {nodeName: n1, containers: [{name: c, image: i}]}
  status: {podIP: 10.1.0.5}
- apiVersion: v1
  kind: Pod
  metadata:
    name: peer
    namespace: telco
    labels: {app: peer}
    annotations: {k8s.v1.cni.cncf.io/networks: data}
  spec: {nodeName: n2, containers: [{name: c, image: i, ports: [{name: sig, containerPort: 3868}]}]}
  status: {podIP: 10.1.1.5}
- apiVersion: v1
  kind: Pod
  metadata:
    name: broken
    namespace: telco
    annotations: {k8s.v1.cni.cncf.io/networks: 'data, nowhere'}
  spec: {nodeName: n2, containers: [{name: c, image: i}]}
  status: {podIP: 10.1.1.6}
- apiVersion: k8s.cni.cncf.io/v1beta1
  kind: MultiNetworkPolicy
  metadata:
    name: data-from-nf
    namespace: telco
    annotations: {k8s.v1.cni.cncf.io/policy-for: data}
  spec:
    podSelector: {matchLabels: {app: peer}}
    policyTypes: [Ingress]
    ingress:
    - from: [{podSelector: {matchLabels: {app: nf}}}]
      ports: [{port: sig}]
"#;

    fn desired() -> Desired {
        let index = ClusterIndex::from_objects(manifest::parse("telco.yaml", TELCO).unwrap().objects);
        let topo = Topology::from_pods("c1", &index);
        crate::build(&PolicyEngine::from_index(index), &topo)
    }

    fn ext(d: &Desired, table: &'static str, id: &str, key: &str) -> Option<String> {
        let row = d.row(table, id)?;
        row.columns.get("external_ids")?.map_get(key).and_then(|a| a.as_str()).map(str::to_string)
    }

    #[test]
    fn a_layer2_and_a_localnet_network_with_their_ports() {
        let d = desired();
        let data = d.row(LOGICAL_SWITCH, "net:telco/data").expect("the data switch");
        assert_eq!(data.columns["name"], Datum::Atom("c1_net_telco_data".into()));
        assert_eq!(
            data.refs["ports"].iter().cloned().collect::<Vec<_>>(),
            ["attach:telco/nf/data0", "attach:telco/peer/net1"]
        );
        let provider = d.row(LOGICAL_SWITCH, "net:telco/provider").unwrap();
        assert!(provider.refs["ports"].contains("localnet:telco/provider"));
        let localnet = d.row(LOGICAL_SWITCH_PORT, "localnet:telco/provider").unwrap();
        assert_eq!(localnet.columns["type"], Datum::Atom("localnet".into()));
        assert_eq!(localnet.columns["tag"], Datum::Atom(200i64.into()));
        assert_eq!(localnet.columns["options"].map_get("network_name").and_then(|a| a.as_str()), Some("physnet1"));
        // The attachments: addresses from the subnets past the excluded range, the asked one,
        // bound to the pod's node, MTU and default route for the agent.
        let nf = d.row(LOGICAL_SWITCH_PORT, "attach:telco/nf/data0").unwrap();
        assert_eq!(nf.columns["addresses"], Datum::set(["0a:58:0a:64:00:08 10.100.0.8".to_string()]));
        assert_eq!(nf.columns["options"].map_get("requested-chassis").and_then(|a| a.as_str()), Some("n1"));
        assert_eq!(ext(&d, LOGICAL_SWITCH_PORT, "attach:telco/nf/data0", KEY_IPS).as_deref(), Some("10.100.0.8/24"));
        assert_eq!(ext(&d, LOGICAL_SWITCH_PORT, "attach:telco/nf/data0", KEY_MTU).as_deref(), Some("1300"));
        assert_eq!(
            ext(&d, LOGICAL_SWITCH_PORT, "attach:telco/nf/ext0", KEY_DEFAULT_ROUTE).as_deref(),
            Some("192.0.2.1")
        );
        assert_eq!(ext(&d, LOGICAL_SWITCH_PORT, "attach:telco/peer/net1", KEY_IPS).as_deref(), Some("10.100.0.9/24"));
        // The primary ports say what the ADD attaches, or why it cannot.
        assert_eq!(ext(&d, LOGICAL_SWITCH_PORT, "pod:telco/nf", KEY_ATTACHMENTS).as_deref(), Some("data0,ext0"));
        let routes =
            ext(&d, LOGICAL_SWITCH_PORT, "pod:telco/nf", KEY_ROUTES).expect("cluster routes: the default is on ext0");
        assert!(routes.contains("10.1.0.0/24"), "{routes}");
        assert_eq!(ext(&d, LOGICAL_SWITCH_PORT, "pod:telco/peer", KEY_ROUTES), None);
        let why = ext(&d, LOGICAL_SWITCH_PORT, "pod:telco/broken", KEY_ATTACHMENT_ERROR).unwrap();
        assert!(why.contains("[1].name: NetworkAttachmentDefinition telco/nowhere does not exist"), "{why}");
        assert!(d.row(LOGICAL_SWITCH_PORT, "attach:telco/broken/net1").is_none(), "nothing half-made");
        assert_eq!(d.attachments.len(), 3);
    }

    #[test]
    fn a_multi_network_policy_isolates_the_pods_ports_on_its_network_only() {
        let d = desired();
        let pg = d.row(PORT_GROUP, "net:telco/data|pg:telco/data-from-nf").expect("the policy's port group");
        assert_eq!(pg.refs["ports"].iter().cloned().collect::<Vec<_>>(), ["attach:telco/peer/net1"]);
        let deny = d.row(PORT_GROUP, "net:telco/data|deny:telco:ingress").expect("default deny on the data network");
        assert_eq!(deny.refs["ports"].iter().cloned().collect::<Vec<_>>(), ["attach:telco/peer/net1"]);
        // The peer set holds nf's address on the data network, not its primary one.
        let sets: Vec<_> = d
            .rows
            .values()
            .filter(|r| r.table == stacknet_ovsdb::nb::ADDRESS_SET)
            .filter(|r| {
                r.columns["external_ids"]
                    .map_get(KEY_ID)
                    .and_then(|a| a.as_str())
                    .is_some_and(|i| i.starts_with("net:telco/data|as:"))
            })
            .collect();
        assert_eq!(sets.len(), 1);
        assert_eq!(sets[0].columns["addresses"], Datum::set(["10.100.0.8".to_string()]));
        // The ACL's named port resolves on the data network's pods.
        let acl = d.row(ACL, "net:telco/data|acl:telco/data-from-nf:0").unwrap();
        let m = acl.columns["match"].as_str().unwrap().to_string();
        assert!(m.contains("tcp.dst == 3868"), "{m}");
        // No NetworkPolicy row touches the secondary ports; the primary network has no policy.
        assert!(
            d.rows.values().filter(|r| r.table == PORT_GROUP).all(|r| r.id.starts_with("net:")),
            "primary untouched"
        );
    }
}
