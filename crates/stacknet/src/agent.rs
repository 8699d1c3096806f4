//! `stacknet agent`: the node agent daemon the CNI plugin talks to. It keeps the connections
//! to the local Open_vSwitch database and the Northbound database (and their replicas) warm,
//! so that an ADD costs a lookup in memory, the plumbing, one transaction and the wait for
//! ovn-controller.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use stacknet_engine::multinet::{NETWORKS_ANNOTATION, SRIOV_DEVICES_ANNOTATION};
use stacknet_engine::objects::{NETWORK_ANNOTATION, ObjectKey};
use stacknet_node::agent::{Agent, AgentConfig};
use stacknet_node::openstack::{OpenStackNode, PodApi, PodView};
use stacknet_node::plumb::Fut;
use stacknet_ovsdb::Remote;

#[derive(clap::Args)]
pub struct AgentArgs {
    /// The cluster id the controller tags its rows with.
    #[arg(long, default_value = "stacknet")]
    cluster: String,
    /// The local Open_vSwitch database (comma-separated or repeated for more than one remote).
    #[arg(
        long = "ovs",
        value_name = "REMOTE",
        value_delimiter = ',',
        default_value = "unix:/var/run/openvswitch/db.sock"
    )]
    ovs: Vec<Remote>,
    /// The OVN Northbound database: each member of a cluster, comma-separated or repeated
    /// (writes go to the leader). Not with `--openstack`.
    #[arg(long = "nb", value_name = "REMOTE", value_delimiter = ',', required_unless_present = "openstack")]
    nb: Vec<Remote>,
    /// OpenStack mode (the controller runs `--backend openstack`): pods' ports are Neutron's,
    /// read from their `stacknet.io/network` annotation through the Kubernetes API (in-cluster,
    /// or KUBECONFIG); secondary interfaces are children of the VM NICs `network_data.json`
    /// names, or SR-IOV devices.
    #[arg(long, conflicts_with = "nb")]
    openstack: bool,
    /// Where Nova's `network_data.json` is: `config-drive:PATH` (a device or image labelled
    /// config-2) or an `http://` URL of the metadata service's copy. Default: the config drive
    /// if there is one, else http://169.254.169.254/openstack/latest/network_data.json.
    #[arg(long, value_name = "SOURCE", value_parser = network_data_source, requires = "openstack")]
    network_data: Option<stacknet_node::configdrive::Source>,
    /// Where sysfs is mounted (SR-IOV devices are found by PCI address under it).
    #[arg(long, value_name = "PATH", default_value = "/sys", requires = "openstack")]
    sysfs: PathBuf,
    /// For `ssl:` remotes (`--ovs`, `--nb`): the CA their certificates must be signed by (PEM).
    /// With it, `--certificate` and `--private-key`, plaintext `tcp:` remotes are refused. The
    /// files are read at every connection: rotated on disk, they are used without a restart.
    #[arg(long, env = "STACKNET_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Our certificate for `ssl:` remotes (PEM).
    #[arg(long, env = "STACKNET_CERTIFICATE", value_name = "FILE")]
    certificate: Option<PathBuf>,
    /// The private key of `--certificate` (PEM).
    #[arg(long, env = "STACKNET_PRIVATE_KEY", value_name = "FILE")]
    private_key: Option<PathBuf>,
    /// Where to listen for the plugin (a socket only root may use: mode 0600).
    #[arg(long, default_value_os_t = stacknet_node::agent::default_socket())]
    socket: PathBuf,
    /// The network namespace ovs-vswitchd runs in, where host ends of veths go (default: ours).
    #[arg(long, value_name = "PATH")]
    host_netns: Option<PathBuf>,
    /// The integration bridge.
    #[arg(long, default_value = "br-int")]
    bridge: String,
    /// Pod interface MTU, unless the network configuration says otherwise.
    #[arg(long, default_value_t = 1400)]
    mtu: u32,
    /// How long an ADD waits for the pod's logical port to be programmed, in seconds.
    #[arg(long, default_value_t = 10)]
    lookup_timeout: u64,
    /// How long an ADD waits for ovn-controller to install the port, in seconds.
    #[arg(long, default_value_t = 30)]
    install_timeout: u64,
    /// The Kubernetes node this agent runs on (its chassis's system-id): the agent keeps the
    /// node's management port `sn-mgmt0` (its interface on the pod network). Without it there
    /// is no management port.
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    node: Option<String>,
    /// The node's uplink bridge (e.g. br-ex, holding the uplink and the node's address), shared
    /// with the node's gateway router: the agent maps the gateway's physical network to it
    /// (`ovn-bridge-mappings`), gives it the gateway router's MAC and keeps its flows. Needs
    /// `--node`. Without it the bridge is left alone.
    #[arg(long, value_name = "BRIDGE")]
    gateway_bridge: Option<String>,
}

fn network_data_source(s: &str) -> Result<stacknet_node::configdrive::Source, String> {
    use stacknet_node::configdrive::Source;
    if let Some(path) = s.strip_prefix("config-drive:") {
        return if path.is_empty() {
            Err("config-drive: needs a path".into())
        } else {
            Ok(Source::ConfigDrive(path.into()))
        };
    }
    if s.starts_with("http://") {
        return Ok(Source::MetadataUrl(s.into()));
    }
    Err(format!("{s:?}: neither config-drive:PATH nor an http:// URL"))
}

/// The Kubernetes API as the agent needs it in OpenStack mode.
pub struct KubePods {
    client: kube::Client,
    /// This agent's identity in its Events (`stacknet-agent-<host name>`).
    instance: String,
}

impl KubePods {
    pub fn new(client: kube::Client) -> KubePods {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        KubePods { client, instance: format!("stacknet-agent-{}", host.trim()) }
    }

    fn pods(&self, key: &ObjectKey) -> kube::Api<Pod> {
        kube::Api::namespaced(self.client.clone(), &key.namespace)
    }
}

impl PodApi for KubePods {
    fn pod<'a>(&'a self, key: &'a ObjectKey) -> Fut<'a, Result<Option<PodView>, String>> {
        Box::pin(async move {
            let pod = self.pods(key).get_opt(&key.name).await.map_err(|e| e.to_string())?;
            Ok(pod.map(|p| {
                let notes = p.metadata.annotations.unwrap_or_default();
                PodView {
                    uid: p.metadata.uid.unwrap_or_default(),
                    network: notes.get(NETWORK_ANNOTATION).cloned(),
                    selects_networks: notes.get(NETWORKS_ANNOTATION).is_some_and(|n| !n.trim().is_empty()),
                    sriov_devices: notes.get(SRIOV_DEVICES_ANNOTATION).cloned(),
                }
            }))
        })
    }

    fn annotate<'a>(&'a self, key: &'a ObjectKey, name: &'a str, value: &'a str) -> Fut<'a, Result<(), String>> {
        Box::pin(async move {
            let patch = serde_json::json!({"metadata": {"annotations": {name: value}}});
            self.pods(key)
                .patch(&key.name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }

    fn warn<'a>(&'a self, key: &'a ObjectKey, reason: &'a str, message: &'a str) -> Fut<'a, Result<(), String>> {
        use k8s_openapi::api::core::v1::ObjectReference;
        use k8s_openapi::api::events::v1::Event;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
        Box::pin(async move {
            let uid = self.pod(key).await.ok().flatten().map(|p| p.uid);
            let now = k8s_openapi::jiff::Timestamp::now();
            let event = Event {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{}.", key.name)),
                    namespace: Some(key.namespace.clone()),
                    ..ObjectMeta::default()
                },
                event_time: Some(MicroTime(now)),
                action: Some("Attach".into()),
                reason: Some(reason.into()),
                note: Some(message.chars().take(1024).collect()),
                regarding: Some(ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    namespace: Some(key.namespace.clone()),
                    name: Some(key.name.clone()),
                    uid,
                    ..ObjectReference::default()
                }),
                reporting_controller: Some("stacknet.io/agent".into()),
                reporting_instance: Some(self.instance.clone()),
                type_: Some("Warning".into()),
                ..Event::default()
            };
            kube::Api::<Event>::namespaced(self.client.clone(), &key.namespace)
                .create(&kube::api::PostParams::default(), &event)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }
}

/// Runs until SIGTERM or SIGINT, then removes its socket.
pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    anyhow::ensure!((576..=65535).contains(&args.mtu), "--mtu {}: not an MTU (576-65535)", args.mtu);
    let tls =
        stacknet_ovsdb::TlsConfig::from_files(args.ca_cert.clone(), args.certificate.clone(), args.private_key.clone())
            .map_err(|e| anyhow::anyhow!("--ca-cert, --certificate, --private-key: {e}"))?;
    stacknet_ovsdb::check_transport(&args.ovs, tls.as_ref()).map_err(|e| anyhow::anyhow!("--ovs: {e}"))?;
    stacknet_ovsdb::check_transport(&args.nb, tls.as_ref()).map_err(|e| anyhow::anyhow!("--nb: {e}"))?;
    if let Some(tls) = &tls {
        tls.check().map_err(|e| anyhow::anyhow!("--ca-cert, --certificate, --private-key: {e}"))?;
    }
    crate::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        if let Some(dir) = args.socket.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let config = AgentConfig {
            cluster: args.cluster,
            bridge: args.bridge,
            mtu: args.mtu,
            lookup_timeout: Duration::from_secs(args.lookup_timeout),
            install_timeout: Duration::from_secs(args.install_timeout),
            host_netns: args.host_netns,
            node: args.node.filter(|n| !n.is_empty()),
            gateway_bridge: args.gateway_bridge.filter(|b| !b.is_empty()),
            tls,
        };
        let mut agent = Agent::new(config, args.ovs, args.nb).context("starting the agent")?;
        if args.openstack {
            stacknet_controller::kube_source::install_tls_provider();
            let client = kube::Client::try_default()
                .await
                .context("--openstack: connecting to the Kubernetes API (in-cluster, or KUBECONFIG)")?;
            let node = OpenStackNode { network_data: args.network_data, sysfs: args.sysfs };
            agent = agent.with_openstack(node, Arc::new(KubePods::new(client)));
        }
        let agent = Arc::new(agent);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        eprintln!("stacknet agent listening on {}", args.socket.display());
        let result = tokio::select! {
            r = agent.serve(&args.socket) => r.with_context(|| format!("serving on {}", args.socket.display())),
            _ = term.recv() => Ok(()),
            _ = tokio::signal::ctrl_c() => Ok(()),
        };
        let _ = std::fs::remove_file(&args.socket);
        result
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use stacknet_node::configdrive::Source;
    use stacknet_testsupport::kubeapi::ApiServer;

    use super::*;

    #[tokio::test]
    async fn the_pod_its_annotations_and_events_through_the_api() {
        stacknet_controller::kube_source::install_tls_provider();
        // An API server that knows pod x/nf and nothing else.
        let api = ApiServer::start().await;
        let annotations = json!({
            "stacknet.io/network": "{\"portId\": \"p\"}",
            "k8s.v1.cni.cncf.io/networks": " provider ",
        });
        let before = api.apply(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "nf", "namespace": "x", "uid": "uid-nf", "annotations": annotations}}));
        let client = kube::Client::try_from(kube::Config::new(api.url().parse().unwrap())).unwrap();
        let pods = KubePods::new(client);
        let key = ObjectKey::new("x", "nf");
        let view = pods.pod(&key).await.unwrap().expect("the pod");
        assert_eq!(view.uid, "uid-nf");
        assert_eq!(view.network.as_deref(), Some("{\"portId\": \"p\"}"));
        assert!(view.selects_networks && view.sriov_devices.is_none());
        assert_eq!(pods.pod(&ObjectKey::new("x", "gone")).await.unwrap(), None, "404: no such pod");

        pods.annotate(&key, SRIOV_DEVICES_ANNOTATION, "{\"net1\": {}}").await.unwrap();
        // A merge patch of that one annotation: the rest of the pod is as it was.
        assert_eq!(api.patches(), ["pods x/nf"]);
        let after = api.get("v1", "pods", "x", "nf").expect("the pod");
        let mut patched = before.clone();
        patched["metadata"]["annotations"]["stacknet.io/sriov-devices"] = json!("{\"net1\": {}}");
        patched["metadata"]["resourceVersion"] = after["metadata"]["resourceVersion"].clone();
        assert_eq!(after, patched);

        pods.warn(&key, "AttachmentFailed", "interface net1: no NIC").await.unwrap();
        let events = api.events();
        let event = events.first().expect("an event");
        assert_eq!(
            (event["apiVersion"].as_str(), event["metadata"]["namespace"].as_str()),
            (Some("events.k8s.io/v1"), Some("x"))
        );
        assert_eq!(event["reason"], "AttachmentFailed");
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["note"], "interface net1: no NIC");
        assert_eq!(event["reportingController"], "stacknet.io/agent");
        assert_eq!(
            event["regarding"],
            json!({"apiVersion": "v1", "kind": "Pod", "namespace": "x", "name": "nf", "uid": "uid-nf"})
        );
        assert!(event["metadata"]["generateName"].as_str().is_some_and(|n| n.starts_with("nf.")), "{event}");
    }

    #[test]
    fn network_data_sources() {
        assert_eq!(network_data_source("config-drive:/dev/sr0"), Ok(Source::ConfigDrive("/dev/sr0".into())));
        assert_eq!(
            network_data_source("http://169.254.169.254/openstack/latest/network_data.json"),
            Ok(Source::MetadataUrl("http://169.254.169.254/openstack/latest/network_data.json".into()))
        );
        assert!(network_data_source("config-drive:").unwrap_err().contains("needs a path"));
        assert!(network_data_source("https://x/y").unwrap_err().contains("neither"));
    }
}
