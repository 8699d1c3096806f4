//! The cluster index: the objects stacknet knows, fed by `apply` / `delete` (from manifest files
//! today, from watches in the controller), queried by the semantics and the compiler. It holds
//! no derived policy state; that lives in [`crate::model`].
//!
//! Pods get a small, dense [`PodId`] so that derived sets are cheap; an id is reused only after
//! its pod is deleted.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::labels::Labels;
use crate::multinet::{MultiNetworkPolicy, NetworkAttachmentDefinition};
use crate::objects::{ClusterObject, EndpointSlice, Kind, Namespace, NetworkPolicy, Node, ObjectKey, Pod, Service};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodId(pub u32);

#[derive(Debug, Clone)]
struct NamespaceEntry {
    /// The Namespace object, when one was applied.
    object: Option<Namespace>,
    /// The labels selectors see: the object's, or the name label alone.
    labels: Labels,
    pods: usize,
}

#[derive(Debug, Clone, Default)]
pub struct ClusterIndex {
    namespaces: BTreeMap<String, NamespaceEntry>,
    pods: Vec<Option<Pod>>,
    free: Vec<PodId>,
    pod_ids: BTreeMap<ObjectKey, PodId>,
    policies: BTreeMap<ObjectKey, NetworkPolicy>,
    services: BTreeMap<ObjectKey, Service>,
    endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    nodes: BTreeMap<String, Node>,
    network_attachments: BTreeMap<ObjectKey, NetworkAttachmentDefinition>,
    multi_policies: BTreeMap<ObjectKey, MultiNetworkPolicy>,
}

impl ClusterIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds an index from objects in order (a later object of the same name replaces an
    /// earlier one, as `kubectl apply` of several files would).
    pub fn from_objects(objects: impl IntoIterator<Item = ClusterObject>) -> Self {
        let mut index = ClusterIndex::new();
        for o in objects {
            index.apply(o);
        }
        index
    }

    pub fn apply(&mut self, object: ClusterObject) {
        match object {
            ClusterObject::Namespace(ns) => {
                self.apply_namespace(ns);
            }
            ClusterObject::Pod(p) => {
                self.apply_pod(p);
            }
            ClusterObject::NetworkPolicy(p) => {
                self.apply_policy(p);
            }
            ClusterObject::Service(s) => {
                self.services.insert(s.key.clone(), s);
            }
            ClusterObject::EndpointSlice(e) => {
                self.endpoint_slices.insert(e.key.clone(), e);
            }
            ClusterObject::Node(n) => {
                self.nodes.insert(n.name.clone(), n);
            }
            ClusterObject::NetworkAttachmentDefinition(n) => {
                self.network_attachments.insert(n.key.clone(), n);
            }
            ClusterObject::MultiNetworkPolicy(p) => {
                self.multi_policies.insert(p.policy.key.clone(), p);
            }
        }
    }

    /// Deletes by kind and key (`namespace` is ignored for Namespaces and Nodes, which use `name`).
    pub fn delete(&mut self, kind: Kind, key: &ObjectKey) -> bool {
        match kind {
            Kind::Namespace => self.delete_namespace(&key.name).is_some(),
            Kind::Pod => self.delete_pod(key).is_some(),
            Kind::NetworkPolicy => self.delete_policy(key).is_some(),
            Kind::Service => self.services.remove(key).is_some(),
            Kind::EndpointSlice => self.endpoint_slices.remove(key).is_some(),
            Kind::Node => self.nodes.remove(&key.name).is_some(),
            Kind::NetworkAttachmentDefinition => self.network_attachments.remove(key).is_some(),
            Kind::MultiNetworkPolicy => self.multi_policies.remove(key).is_some(),
        }
    }

    // --- namespaces

    /// Returns the labels the namespace had before (implied or explicit), if it was known.
    pub fn apply_namespace(&mut self, ns: Namespace) -> Option<Labels> {
        let name = ns.name.clone();
        let labels = ns.labels.clone();
        match self.namespaces.get_mut(&name) {
            Some(e) => {
                let old = std::mem::replace(&mut e.labels, labels);
                e.object = Some(ns);
                Some(old)
            }
            None => {
                self.namespaces.insert(name, NamespaceEntry { object: Some(ns), labels, pods: 0 });
                None
            }
        }
    }

    /// Removes the Namespace object. Its pods, if any are left, keep an implied namespace.
    pub fn delete_namespace(&mut self, name: &str) -> Option<Namespace> {
        let e = self.namespaces.get_mut(name)?;
        let old = e.object.take()?;
        if e.pods == 0 {
            self.namespaces.remove(name);
        } else {
            e.labels = Namespace::implied(name).labels;
        }
        Some(old)
    }

    /// The labels a namespaceSelector sees, for a namespace that has an object or pods.
    pub fn namespace_labels(&self, name: &str) -> Option<&Labels> {
        self.namespaces.get(name).map(|e| &e.labels)
    }

    pub fn namespace_object(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name).and_then(|e| e.object.as_ref())
    }

    /// Every namespace with an object or pods, and its labels, in name order.
    pub fn namespaces(&self) -> impl Iterator<Item = (&str, &Labels)> {
        self.namespaces.iter().map(|(n, e)| (n.as_str(), &e.labels))
    }

    // --- pods

    /// Adds or replaces a pod. Returns its id and the previous version.
    pub fn apply_pod(&mut self, pod: Pod) -> (PodId, Option<Pod>) {
        if let Some(&id) = self.pod_ids.get(&pod.key) {
            let old = self.pods[id.0 as usize].replace(pod);
            return (id, old);
        }
        let ns = pod.key.namespace.clone();
        self.namespaces
            .entry(ns.clone())
            .or_insert_with(|| NamespaceEntry { object: None, labels: Namespace::implied(&ns).labels, pods: 0 })
            .pods += 1;
        let id = match self.free.pop() {
            Some(id) => {
                self.pods[id.0 as usize] = Some(pod);
                id
            }
            None => {
                let id = PodId(u32::try_from(self.pods.len()).expect("fewer than 4 billion pods"));
                self.pods.push(Some(pod));
                id
            }
        };
        let key = self.pods[id.0 as usize].as_ref().map(|p| p.key.clone()).unwrap_or_else(|| unreachable!());
        self.pod_ids.insert(key, id);
        (id, None)
    }

    pub fn delete_pod(&mut self, key: &ObjectKey) -> Option<(PodId, Pod)> {
        let id = self.pod_ids.remove(key)?;
        let pod = self.pods[id.0 as usize].take()?;
        self.free.push(id);
        if let Some(e) = self.namespaces.get_mut(&key.namespace) {
            e.pods -= 1;
            if e.pods == 0 && e.object.is_none() {
                self.namespaces.remove(&key.namespace);
            }
        }
        Some((id, pod))
    }

    /// Gives pod `id` the addresses `ips` in place (nothing else of it changes).
    pub fn set_pod_ips(&mut self, id: PodId, ips: Vec<IpAddr>) {
        if let Some(Some(pod)) = self.pods.get_mut(id.0 as usize) {
            pod.ips = ips;
        }
    }

    pub fn pod(&self, id: PodId) -> Option<&Pod> {
        self.pods.get(id.0 as usize).and_then(Option::as_ref)
    }

    pub fn pod_id(&self, key: &ObjectKey) -> Option<PodId> {
        self.pod_ids.get(key).copied()
    }

    pub fn pod_count(&self) -> usize {
        self.pod_ids.len()
    }

    /// Every pod, in namespace/name order.
    pub fn pods(&self) -> impl Iterator<Item = (PodId, &Pod)> {
        self.pod_ids.values().map(|&id| (id, self.pods[id.0 as usize].as_ref().expect("indexed pod exists")))
    }

    /// The pods of one namespace, in name order.
    pub fn pods_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = (PodId, &'a Pod)> + 'a {
        let start = ObjectKey::new(namespace, "");
        self.pod_ids
            .range(start..)
            .take_while(move |(k, _)| k.namespace == namespace)
            .map(|(_, &id)| (id, self.pods[id.0 as usize].as_ref().expect("indexed pod exists")))
    }

    // --- policies

    pub fn apply_policy(&mut self, p: NetworkPolicy) -> Option<NetworkPolicy> {
        self.policies.insert(p.key.clone(), p)
    }

    pub fn delete_policy(&mut self, key: &ObjectKey) -> Option<NetworkPolicy> {
        self.policies.remove(key)
    }

    pub fn policy(&self, key: &ObjectKey) -> Option<&NetworkPolicy> {
        self.policies.get(key)
    }

    pub fn policies(&self) -> impl Iterator<Item = &NetworkPolicy> {
        self.policies.values()
    }

    pub fn policies_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a NetworkPolicy> + 'a {
        self.policies
            .range(ObjectKey::new(namespace, "")..)
            .take_while(move |(k, _)| k.namespace == namespace)
            .map(|(_, p)| p)
    }

    // --- services

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    pub fn endpoint_slices(&self) -> impl Iterator<Item = &EndpointSlice> {
        self.endpoint_slices.values()
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    pub fn network_attachments(&self) -> impl Iterator<Item = &NetworkAttachmentDefinition> {
        self.network_attachments.values()
    }

    pub fn network_attachment(&self, key: &ObjectKey) -> Option<&NetworkAttachmentDefinition> {
        self.network_attachments.get(key)
    }

    pub fn multi_policies(&self) -> impl Iterator<Item = &MultiNetworkPolicy> {
        self.multi_policies.values()
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::NAMESPACE_NAME_LABEL;

    fn pod(ns: &str, name: &str) -> Pod {
        Pod {
            key: ObjectKey::new(ns, name),
            uid: None,
            labels: Labels::from([("pod".into(), name.into())]),
            ips: vec![],
            status_ips: vec![],
            host_network: false,
            ports: vec![],
            node: None,
            terminated: false,
            network_annotation: None,
            networks_annotation: None,
            network_status_annotation: None,
            sriov_devices_annotation: None,
        }
    }

    #[test]
    fn pods_without_a_namespace_object_get_the_name_label_alone() {
        let mut index = ClusterIndex::new();
        index.apply_pod(pod("x", "a"));
        assert_eq!(index.namespace_labels("x"), Some(&Labels::from([(NAMESPACE_NAME_LABEL.into(), "x".into())])));
        let mut ns = Namespace::implied("x");
        ns.labels.insert("team".into(), "blue".into());
        index.apply_namespace(ns);
        assert_eq!(index.namespace_labels("x").unwrap().get("team").map(String::as_str), Some("blue"));
        index.delete_namespace("x");
        assert_eq!(index.namespace_labels("x").unwrap().len(), 1, "pods keep an implied namespace");
        index.delete_pod(&ObjectKey::new("x", "a"));
        assert_eq!(index.namespace_labels("x"), None);
    }

    #[test]
    fn ids_are_stable_and_reused_only_after_delete() {
        let mut index = ClusterIndex::new();
        let (a, _) = index.apply_pod(pod("x", "a"));
        let (b, _) = index.apply_pod(pod("y", "b"));
        let (a2, old) = index.apply_pod(pod("x", "a"));
        assert_eq!(a, a2);
        assert!(old.is_some());
        assert_ne!(a, b);
        index.delete_pod(&ObjectKey::new("x", "a"));
        assert_eq!(index.pod(a), None);
        let (c, _) = index.apply_pod(pod("z", "c"));
        assert_eq!(c, a);
        let names: Vec<_> = index.pods().map(|(_, p)| p.key.to_string()).collect();
        assert_eq!(names, ["y/b", "z/c"]);
        assert_eq!(index.pods_in("y").count(), 1);
        assert_eq!(index.pods_in("x").count(), 0);
    }
}
