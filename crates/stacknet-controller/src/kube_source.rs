//! The cluster from the Kubernetes API: one watcher (kube-runtime: list, then watch from the
//! list's resourceVersion with bookmarks; a 410 Gone or a lost connection relists or resumes
//! with backoff) per kind the controller needs. Each watcher's initial list is a complete
//! state: objects that were known and are not in it are deleted, so a relist after missed
//! deletions converges. A kind is synced once its first list is in; the controller reconciles
//! nothing before every kind is.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use stacknet_engine::objects::{
    ClusterObject, EndpointSlice, Kind, Namespace, NetworkPolicy, Node, ObjectKey, Pod, Service,
};
use stacknet_engine::{ObjectRef, Reason};
use tokio::sync::mpsc;

use crate::Change;
use crate::events::Events;

/// The kinds watched (API group, resource) — what the RBAC must grant list and watch on.
pub const WATCHED: [(&str, &str); 8] = [
    ("", "namespaces"),
    ("", "nodes"),
    ("", "pods"),
    ("", "services"),
    ("discovery.k8s.io", "endpointslices"),
    ("networking.k8s.io", "networkpolicies"),
    ("k8s.cni.cncf.io", "network-attachment-definitions"),
    ("k8s.cni.cncf.io", "multi-networkpolicies"),
];

/// The kinds watched, in the order their watchers start.
const KINDS: [Kind; 8] = [
    Kind::Namespace,
    Kind::Node,
    Kind::Pod,
    Kind::Service,
    Kind::EndpointSlice,
    Kind::NetworkPolicy,
    Kind::NetworkAttachmentDefinition,
    Kind::MultiNetworkPolicy,
];

/// The custom resources (Multus's CRDs) watched as dynamic objects.
fn custom_resource(kind: Kind) -> kube::core::ApiResource {
    let (version, plural) = match kind {
        Kind::NetworkAttachmentDefinition => ("v1", "network-attachment-definitions"),
        _ => ("v1beta1", "multi-networkpolicies"),
    };
    kube::core::ApiResource {
        group: "k8s.cni.cncf.io".into(),
        version: version.into(),
        api_version: format!("k8s.cni.cncf.io/{version}"),
        kind: kind.name().into(),
        plural: plural.into(),
    }
}

fn network_attachment(o: &kube::core::DynamicObject, ev: &Events) -> Option<ClusterObject> {
    let what = ObjectRef::Object(Kind::NetworkAttachmentDefinition, key_of(o, Kind::NetworkAttachmentDefinition));
    let api: Result<stacknet_engine::multinet::nad::NadApi, _> =
        serde_json::to_value(o).and_then(serde_json::from_value);
    let r = api
        .map_err(|e| stacknet_engine::Invalid::new(&what, "(object)", e.to_string()))
        .and_then(|a| stacknet_engine::multinet::NetworkAttachmentDefinition::from_k8s(&a));
    match r {
        Ok(n) => Some(ClusterObject::NetworkAttachmentDefinition(n)),
        Err(e) => {
            ev.warn(
                &what,
                Reason::InvalidNetworkAttachment,
                &format!("{e}; pods selecting it get none of their secondary networks"),
            );
            None
        }
    }
}

fn multi_network_policy(o: &kube::core::DynamicObject, ev: &Events) -> Option<ClusterObject> {
    let what = ObjectRef::Object(Kind::MultiNetworkPolicy, key_of(o, Kind::MultiNetworkPolicy));
    let api: Result<stacknet_engine::multinet::nad::MultiPolicyApi, _> =
        serde_json::to_value(o).and_then(serde_json::from_value);
    let mut warnings = Vec::new();
    let r = api
        .map_err(|e| stacknet_engine::Invalid::new(&what, "(object)", e.to_string()))
        .and_then(|a| stacknet_engine::multinet::MultiNetworkPolicy::from_k8s(&a, &mut warnings));
    for w in warnings {
        ev.warn(&what, Reason::PolicyWarning, &w);
    }
    match r {
        Ok(p) => Some(ClusterObject::MultiNetworkPolicy(p)),
        Err(e) => {
            ev.warn(&what, Reason::InvalidNetworkPolicy, &format!("{e}; the policy is not enforced"));
            None
        }
    }
}

/// The source name of a kind's watcher ([`Change::Synced`]).
fn source(kind: Kind) -> String {
    format!("kube/{}", kind.name())
}

/// The source names the controller waits for.
pub fn sources() -> Vec<String> {
    KINDS.iter().map(|k| source(*k)).collect()
}

/// The object `o` of kind `kind`.
fn reference_of<K: Resource>(kind: Kind, o: &K) -> ObjectRef {
    ObjectRef::Object(kind, key_of(o, kind))
}

/// Converts an API object; an invalid one becomes an event on it and is ignored.
fn convert<K: Resource, T>(
    o: &K,
    events: &Events,
    kind: Kind,
    from: impl Fn(&K) -> Result<T, stacknet_engine::Invalid>,
    wrap: fn(T) -> ClusterObject,
) -> Option<ClusterObject> {
    match from(o) {
        Ok(x) => Some(wrap(x)),
        Err(e) => {
            events.warn(&reference_of(kind, o), Reason::InvalidObject, &format!("{e}; the object is ignored"));
            None
        }
    }
}

fn network_policy(o: &networking::NetworkPolicy, ev: &Events) -> Option<ClusterObject> {
    let what = reference_of(Kind::NetworkPolicy, o);
    let mut warnings = Vec::new();
    let r = NetworkPolicy::from_k8s(o, &mut warnings);
    for w in warnings {
        ev.warn(&what, Reason::PolicyWarning, &w);
    }
    match r {
        Ok(p) => Some(ClusterObject::NetworkPolicy(p)),
        Err(e) => {
            ev.warn(&what, Reason::InvalidNetworkPolicy, &format!("{e}; the policy is not enforced"));
            None
        }
    }
}

fn key_of<K: Resource>(o: &K, kind: Kind) -> ObjectKey {
    if kind.is_cluster_scoped() {
        ObjectKey::new("", o.name_any())
    } else {
        ObjectKey::new(o.namespace().unwrap_or_else(|| "default".into()), o.name_any())
    }
}

/// Feeds the changes of one kind into `tx` until the receiver is gone. A kind the API server
/// does not serve (Multus's CRDs not installed) counts as synced with no objects, and is
/// listed again with backoff until it is served.
async fn watch<K, F>(api: Api<K>, kind: Kind, convert: F, tx: mpsc::Sender<Change>, events: Arc<Events>)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    F: Fn(&K, &Events) -> Option<ClusterObject>,
{
    let mut stream = watcher::watcher(api, watcher::Config::default()).default_backoff().boxed();
    // What this kind has sent (applied and not deleted since).
    let mut known: BTreeSet<ObjectKey> = BTreeSet::new();
    let mut listing: BTreeSet<ObjectKey> = BTreeSet::new();
    let mut synced = false;
    loop {
        let event = match stream.try_next().await {
            Ok(Some(e)) => e,
            Ok(None) => return,
            Err(watcher::Error::InitialListFailed(kube::Error::Api(s))) if s.code == 404 => {
                if !synced {
                    synced = true;
                    tracing::info!(
                        kind = kind.name(),
                        "not served by the API server (is its CRD installed?): none until it is"
                    );
                    if tx.send(Change::Synced(source(kind))).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            Err(e) => {
                // The watcher backs off and resumes by itself; say what happened.
                tracing::warn!(kind = kind.name(), error = %e, "watch interrupted; resuming");
                continue;
            }
        };
        let mut out = Vec::new();
        match event {
            Event::Init => listing.clear(),
            Event::InitApply(o) => {
                let key = key_of(&o, kind);
                listing.insert(key.clone());
                if let Some(obj) = convert(&o, &events) {
                    known.insert(key);
                    out.push(Change::Apply(obj));
                }
            }
            Event::InitDone => {
                // A relist is the whole truth: what it lacks was deleted meanwhile.
                for gone in known.difference(&listing).cloned().collect::<Vec<_>>() {
                    known.remove(&gone);
                    out.push(Change::Delete(kind, gone));
                }
                if !synced {
                    synced = true;
                    out.push(Change::Synced(source(kind)));
                }
            }
            Event::Apply(o) => {
                if let Some(obj) = convert(&o, &events) {
                    known.insert(key_of(&o, kind));
                    out.push(Change::Apply(obj));
                }
            }
            Event::Delete(o) => {
                let key = key_of(&o, kind);
                known.remove(&key);
                out.push(Change::Delete(kind, key));
            }
        }
        for c in out {
            if tx.send(c).await.is_err() {
                return;
            }
        }
    }
}

/// Watches every kind through `client` until `tx`'s receiver is gone.
pub async fn run(client: Client, tx: mpsc::Sender<Change>, events: Arc<Events>) {
    // One watcher of kind K, whose objects become T (`from`) wrapped as a ClusterObject.
    fn each<K, T>(
        client: &Client,
        kind: Kind,
        from: fn(&K) -> Result<T, stacknet_engine::Invalid>,
        wrap: fn(T) -> ClusterObject,
        tx: &mpsc::Sender<Change>,
        events: &Arc<Events>,
    ) -> tokio::task::JoinHandle<()>
    where
        K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
        K::DynamicType: Default,
        T: 'static,
    {
        let convert = move |o: &K, ev: &Events| convert(o, ev, kind, from, wrap);
        tokio::spawn(watch(Api::<K>::all(client.clone()), kind, convert, tx.clone(), events.clone()))
    }
    let (c, t, e) = (&client, &tx, &events);
    let tasks = [
        each::<core::Namespace, _>(c, Kind::Namespace, Namespace::from_k8s, ClusterObject::Namespace, t, e),
        each::<core::Node, _>(c, Kind::Node, Node::from_k8s, ClusterObject::Node, t, e),
        each::<core::Pod, _>(c, Kind::Pod, Pod::from_k8s, ClusterObject::Pod, t, e),
        each::<core::Service, _>(c, Kind::Service, Service::from_k8s, ClusterObject::Service, t, e),
        each::<discovery::EndpointSlice, _>(
            c,
            Kind::EndpointSlice,
            EndpointSlice::from_k8s,
            ClusterObject::EndpointSlice,
            t,
            e,
        ),
        tokio::spawn(watch(
            Api::<networking::NetworkPolicy>::all(client.clone()),
            Kind::NetworkPolicy,
            network_policy,
            tx.clone(),
            events.clone(),
        )),
        tokio::spawn(watch(
            Api::<kube::core::DynamicObject>::all_with(
                client.clone(),
                &custom_resource(Kind::NetworkAttachmentDefinition),
            ),
            Kind::NetworkAttachmentDefinition,
            network_attachment,
            tx.clone(),
            events.clone(),
        )),
        tokio::spawn(watch(
            Api::<kube::core::DynamicObject>::all_with(client.clone(), &custom_resource(Kind::MultiNetworkPolicy)),
            Kind::MultiNetworkPolicy,
            multi_network_policy,
            tx.clone(),
            events.clone(),
        )),
    ];
    debug_assert_eq!(tasks.len(), KINDS.len());
    for task in tasks {
        let _ = task.await;
    }
}

/// The Kubernetes object an event is about; `None` for what is not one (a manifest file, the
/// cluster as a whole, an OpenStack object of ours).
fn reference(object: &ObjectRef) -> Option<core::ObjectReference> {
    let (kind, key) = object.as_object()?;
    Some(core::ObjectReference {
        api_version: Some(kind.api_version().into()),
        kind: Some(kind.name().into()),
        namespace: (!kind.is_cluster_scoped()).then(|| key.namespace.clone()),
        name: Some(key.name.clone()),
        ..Default::default()
    })
}

/// Publishes the controller's events as events.k8s.io/v1 Events on the objects they concern
/// (cluster-scoped objects' events go to `default`, as kubectl looks for them); events about
/// the network as a whole (OVN unreachable) go on `own_pod` (namespace, name), the controller's
/// pod, when given. Runs until the sender side is gone; a failed post is logged, not retried.
pub async fn publish_events(
    client: Client,
    mut events: tokio::sync::mpsc::UnboundedReceiver<crate::events::Event>,
    instance: String,
    own_pod: Option<(String, String)>,
) {
    use k8s_openapi::api::events::v1::Event as KubeEvent;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
    let mut serial: u64 = 0;
    while let Some(e) = events.recv().await {
        let own = own_pod.as_ref().map(|(ns, name)| ObjectRef::pod(&ObjectKey::new(ns, name)));
        let Some(regarding) = reference(&e.object).or_else(|| own.as_ref().and_then(reference)) else { continue };
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
        serial += 1;
        let now = k8s_openapi::jiff::Timestamp::now();
        let name = format!("{}.{:x}{serial:x}", regarding.name.clone().unwrap_or_default(), now.as_millisecond());
        let event = KubeEvent {
            metadata: ObjectMeta { name: Some(name), namespace: Some(namespace.clone()), ..ObjectMeta::default() },
            event_time: Some(MicroTime(now)),
            action: Some("Reconcile".into()),
            reason: Some(e.reason.as_str().into()),
            note: Some(e.message.chars().take(1024).collect()),
            regarding: Some(regarding),
            reporting_controller: Some("stacknet.io/controller".into()),
            reporting_instance: Some(instance.clone()),
            type_: Some("Warning".into()),
            ..KubeEvent::default()
        };
        let api: Api<KubeEvent> = Api::namespaced(client.clone(), &namespace);
        if let Err(err) = api.create(&kube::api::PostParams::default(), &event).await {
            tracing::warn!(error = %err, object = %e.object, reason = e.reason.as_str(), "posting an event failed");
        }
    }
}

/// Writes back what the controller hands over: pods' network annotations (a merge patch of
/// that one annotation) and LoadBalancer Services' `status.loadBalancer.ingress` (a merge
/// patch of the status subresource); an object that has gone meanwhile is no error.
pub async fn write_back(client: Client, mut rx: tokio::sync::mpsc::UnboundedReceiver<crate::WriteBack>) {
    use kube::api::{Patch, PatchParams};
    while let Some(w) = rx.recv().await {
        let (result, what, key) = match w {
            crate::WriteBack::PodNetwork(key, value) => {
                let api: Api<core::Pod> = Api::namespaced(client.clone(), &key.namespace);
                let patch = serde_json::json!({"metadata": {"annotations": {stacknet_engine::objects::NETWORK_ANNOTATION: value}}});
                let r = api.patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ());
                (r, "the pod's network annotation", key)
            }
            crate::WriteBack::LoadBalancerIngress(key, ips) => {
                let api: Api<core::Service> = Api::namespaced(client.clone(), &key.namespace);
                let ingress: Vec<serde_json::Value> =
                    ips.iter().map(|ip| serde_json::json!({"ip": ip.to_string(), "ipMode": "VIP"})).collect();
                let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}});
                let r = api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ());
                (r, "the Service's status.loadBalancer.ingress", key)
            }
            crate::WriteBack::NetworkStatus(key, value) => {
                let api: Api<core::Pod> = Api::namespaced(client.clone(), &key.namespace);
                let patch = serde_json::json!({"metadata": {"annotations": {stacknet_engine::multinet::NETWORK_STATUS_ANNOTATION: value}}});
                let r = api.patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ());
                (r, "the pod's network-status annotation", key)
            }
        };
        match result {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => tracing::warn!(object = %key, error = %e, "writing {what} failed"),
        }
    }
}

/// Makes ring the process's TLS provider, before any Kubernetes client is built. The
/// workspace links two providers (ring, ours; aws-lc-rs, through the OpenStack SDK's HTTP
/// client), and rustls then refuses to guess: a client built without a default panics.
/// Calling it again is harmless.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
