//! OpenStack mode on a node that is a Nova VM, on the real kernel (root), through the real
//! `stacknet-cni` as a runtime (or Multus) invokes it. Namespaces the test makes stand for the
//! VM (the agent's node namespace, with its NICs), the pod, and a provider-network router
//! ("PE") on the far side of the VM's second NIC. Nova's `network_data.json` is on a config
//! drive image made here with genisoimage (as Nova makes it) and read unmounted.
//!
//! The Kubernetes API is played by the test ([`Pods`]: the pod's `stacknet.io/network`
//! annotation as the controller writes it, and what the agent annotates and posts); there is
//! no API server on this machine. This kernel has no `dummy` driver: a `tap` netdev with a fake
//! sysfs entry stands in for an SR-IOV virtual function, and a veth for the VM's NIC. It has no
//! 8021q either: a trunk subport (a VLAN child) cannot be made here, which the nested pod's
//! test uses to show an ADD is all or nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use stacknet_engine::multinet::ports::{AttachedInterface, PodPorts};
use stacknet_engine::objects::ObjectKey;
use stacknet_node::agent::{Agent, AgentConfig};
use stacknet_node::configdrive::Source;
use stacknet_node::openstack::{OpenStackNode, PodApi, PodView};
use stacknet_node::plumb::Fut;
use stacknet_sandbox::Netns;
use stacknet_testsupport::cni::{Invocation, Outcome, pod_args};
use stacknet_testsupport::netns::{serve_in, unique};
use stacknet_testsupport::until;

/// The VM's NIC on the pod network (the trunk's parent port) and on the provider network.
const NIC_POD: (&str, &str) = ("ens3", "fa:16:3e:00:00:01");
const NIC_PROVIDER: (&str, &str) = ("ens4", "fa:16:3e:00:00:02");
/// The stand-in virtual function and its PCI address.
const VF: &str = "snvf0";
const PCI: &str = "0000:03:00.2";
const PE: &str = "192.168.50.1";

const NETWORK_DATA: &str = r#"{
  "links": [
    {"id": "tap-a", "type": "ovs", "ethernet_mac_address": "fa:16:3e:00:00:01", "vif_id": "vm-port", "mtu": 1450},
    {"id": "tap-b", "type": "ovs", "ethernet_mac_address": "FA:16:3E:00:00:02", "vif_id": "vm-provider-port", "mtu": 1500}
  ],
  "networks": [
    {"id": "network0", "type": "ipv4_dhcp", "link": "tap-a", "network_id": "pod-net"},
    {"id": "network1", "type": "ipv4", "link": "tap-b", "network_id": "phys-net",
     "ip_address": "192.168.50.2", "netmask": "255.255.255.0", "routes": []}
  ],
  "services": []
}"#;

/// The Kubernetes API as the test holds it.
#[derive(Default)]
struct Pods {
    pods: Mutex<HashMap<ObjectKey, PodView>>,
    /// (pod, annotation, value) as the agent set them.
    annotated: Mutex<Vec<(ObjectKey, String, String)>>,
    /// (pod, reason, message) as the agent posted them.
    events: Mutex<Vec<(ObjectKey, String, String)>>,
}

impl Pods {
    fn put(&self, key: &ObjectKey, uid: &str, ports: &PodPorts, selects: bool) {
        let view = PodView {
            uid: uid.into(),
            network: Some(serde_json::to_string(ports).unwrap()),
            selects_networks: selects,
            sriov_devices: None,
        };
        self.pods.lock().unwrap().insert(key.clone(), view);
    }

    fn events_of(&self, key: &ObjectKey) -> Vec<(String, String)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _, _)| k == key)
            .map(|(_, r, m)| (r.clone(), m.clone()))
            .collect()
    }
}

impl PodApi for Pods {
    fn pod<'a>(&'a self, key: &'a ObjectKey) -> Fut<'a, Result<Option<PodView>, String>> {
        Box::pin(async move { Ok(self.pods.lock().unwrap().get(key).cloned()) })
    }

    fn annotate<'a>(&'a self, key: &'a ObjectKey, name: &'a str, value: &'a str) -> Fut<'a, Result<(), String>> {
        Box::pin(async move {
            self.annotated.lock().unwrap().push((key.clone(), name.into(), value.into()));
            if let Some(p) = self.pods.lock().unwrap().get_mut(key) {
                p.sriov_devices = Some(value.into());
            }
            Ok(())
        })
    }

    fn warn<'a>(&'a self, key: &'a ObjectKey, reason: &'a str, message: &'a str) -> Fut<'a, Result<(), String>> {
        Box::pin(async move {
            self.events.lock().unwrap().push((key.clone(), reason.into(), message.into()));
            Ok(())
        })
    }
}

/// The VM: its namespace (the agent's node namespace) with the two NICs and the stand-in VF,
/// the PE beyond the provider NIC, the config drive, the fake sysfs, and the agent.
struct Vm {
    node: Netns,
    pe: Netns,
    dir: tempfile::TempDir,
    socket: PathBuf,
    pods: Arc<Pods>,
    agent: tokio::task::JoinHandle<()>,
}

fn ip(ns: &Netns, args: &[&str]) {
    let out = Command::new("ip").arg("-n").arg(ns.name()).args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn names(ns: &Netns) -> Vec<String> {
    let out = Command::new("ip").args(["-n", ns.name(), "-j", "link", "show"]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut n: Vec<String> = v.as_array().unwrap().iter().map(|l| l["ifname"].as_str().unwrap().to_string()).collect();
    n.sort();
    n
}

/// A config drive holding `network_data` at `image` (genisoimage, Nova's flags that matter).
fn config_drive(tmp: &Path, image: &Path, network_data: &str) {
    let tree = tmp.join("drive");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(tree.join("openstack/latest")).unwrap();
    std::fs::write(tree.join("openstack/latest/network_data.json"), network_data).unwrap();
    let out = Command::new("genisoimage")
        .args(["-quiet", "-J", "-r", "-V", "config-2", "-o"])
        .arg(image)
        .arg(&tree)
        .output()
        .unwrap_or_else(|e| panic!("genisoimage could not run ({e}): apt-get install -y genisoimage (CI installs it)"));
    assert!(out.status.success(), "genisoimage: {}", String::from_utf8_lossy(&out.stderr));
}

impl Vm {
    async fn start() -> Vm {
        let node = Netns::create(&unique("vm")).unwrap();
        let pe = Netns::create(&unique("pe")).unwrap();
        ip(&node, &["tuntap", "add", NIC_POD.0, "mode", "tap"]);
        ip(&node, &["link", "set", NIC_POD.0, "address", NIC_POD.1, "mtu", "1450", "up"]);
        ip(&node, &["link", "add", NIC_PROVIDER.0, "type", "veth", "peer", "name", "pe0"]);
        ip(&node, &["link", "set", "pe0", "netns", pe.name()]);
        ip(&node, &["link", "set", NIC_PROVIDER.0, "address", NIC_PROVIDER.1, "up"]);
        ip(&pe, &["addr", "add", &format!("{PE}/24"), "dev", "pe0"]);
        ip(&pe, &["link", "set", "pe0", "up"]);
        ip(&pe, &["link", "set", "lo", "up"]);
        ip(&node, &["tuntap", "add", VF, "mode", "tap"]);
        let dir = tempfile::tempdir().unwrap();
        config_drive(dir.path(), &dir.path().join("config-2.iso"), NETWORK_DATA);
        let dev = dir.path().join("sys/bus/pci/devices").join(PCI);
        std::fs::create_dir_all(dev.join("net").join(VF)).unwrap();
        std::fs::write(dev.join("vendor"), "0x8086\n").unwrap();
        std::fs::write(dev.join("device"), "0x154c\n").unwrap();
        let socket = dir.path().join("agent.sock");
        let config = AgentConfig {
            cluster: "ostest".into(),
            lookup_timeout: Duration::from_secs(2),
            host_netns: Some(node.path()),
            ..AgentConfig::default()
        };
        let pods = Arc::new(Pods::default());
        let settings = OpenStackNode {
            network_data: Some(Source::ConfigDrive(dir.path().join("config-2.iso"))),
            sysfs: dir.path().join("sys"),
        };
        // No Open_vSwitch and no Northbound database: a VM's pods hang off its NICs.
        let agent = Arc::new(Agent::new(config, vec![], vec![]).unwrap().with_openstack(settings, pods.clone()));
        let s = socket.clone();
        let agent = tokio::spawn(async move {
            let _ = agent.serve(&s).await;
        });
        until("the agent listening", Duration::from_secs(5), || socket.exists()).await;
        Vm { node, pe, dir, socket, pods, agent }
    }

    fn iso(&self) -> PathBuf {
        self.dir.path().join("config-2.iso")
    }

    /// The plugin as Multus delegates one network (`neutronNetwork` in the NAD's config).
    fn delegated(
        &self,
        command: &str,
        container: &str,
        pod: &Netns,
        key: &ObjectKey,
        ifname: &str,
        extra: Value,
    ) -> Outcome {
        let mut config = json!({"cniVersion": "1.1.0", "name": "provider", "type": "stacknet-cni",
            "neutronNetwork": "phys-net", "agentSocket": self.socket, "timeoutSeconds": 30});
        for (k, v) in extra.as_object().unwrap() {
            config[k] = v.clone();
        }
        self.run(command, container, pod, key, ifname, config)
    }

    fn run(
        &self,
        command: &str,
        container: &str,
        pod: &Netns,
        key: &ObjectKey,
        ifname: &str,
        config: Value,
    ) -> Outcome {
        let netns = pod.path();
        let call = Invocation {
            command,
            container,
            netns: &netns,
            ifname,
            args: Some(pod_args(&key.namespace, &key.name, &format!("uid-{}", key.name))),
            config: config.to_string(),
        };
        stacknet_testsupport::cni::run(Path::new(env!("CARGO_BIN_EXE_stacknet-cni")), &call)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.agent.abort();
    }
}

/// The pod's ports as the controller writes them: its port on the pod network a subport of
/// the VM's trunk (VLAN 101), and `attachments`.
fn ports(attachments: Vec<AttachedInterface>) -> PodPorts {
    PodPorts {
        ips: vec!["10.0.0.5/24".into()],
        mac: "fa:16:3e:00:00:10".into(),
        gateways: vec!["10.0.0.1".into()],
        port_id: "pod-port".into(),
        network_id: "pod-net".into(),
        vlan: Some(101),
        parent_port: Some("vm-port".into()),
        attachments,
        ..PodPorts::default()
    }
}

fn provider(interface: &str, network_id: &str, mac: &str, ip: &str) -> AttachedInterface {
    AttachedInterface {
        interface: interface.into(),
        network: "telco/provider".into(),
        port_id: format!("{interface}-port"),
        network_id: network_id.into(),
        mac: mac.into(),
        ips: vec![format!("{ip}/24")],
        physical_network: Some("physnet1".into()),
        vnic_type: "normal".into(),
        ..AttachedInterface::default()
    }
}

fn details(o: &Outcome) -> String {
    o.stdout["details"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_network_port_is_a_macvlan_on_the_vm_nic_network_data_names() {
    let vm = Vm::start().await;
    let pod = Netns::create(&unique("p")).unwrap();
    let key = ObjectKey::new("telco", "nf");
    vm.pods.put(&key, "uid-nf", &ports(vec![provider("net1", "phys-net", "fa:16:3e:00:00:11", "192.168.50.10")]), true);
    serve_in(&vm.pe.path(), SocketAddr::new(PE.parse().unwrap(), 7000), b"pe");

    let r = vm.delegated("ADD", "ctr-nf", &pod, &key, "net1", json!({}));
    assert_eq!(r.code, Some(0), "{}", r.stdout);
    assert_eq!(r.stdout["interfaces"][0]["name"], "net1", "no host end: {}", r.stdout);
    assert_eq!(r.stdout["interfaces"][0]["mac"], "fa:16:3e:00:00:11");
    assert_eq!(r.stdout["ips"][0]["address"], "192.168.50.10/24");
    let link = Command::new("ip").args(["-n", pod.name(), "-j", "-d", "link", "show", "net1"]).output().unwrap();
    let link: Value = serde_json::from_slice(&link.stdout).unwrap();
    assert_eq!(link[0]["linkinfo"]["info_kind"], "macvlan", "{link}");
    assert_eq!(link[0]["mtu"], 1500, "the NIC's MTU from network_data.json");
    // Real packets: the pod reaches the PE over the provider NIC.
    let got = stacknet_testsupport::netns::connect_from(
        &pod.path(),
        SocketAddr::new(PE.parse().unwrap(), 7000),
        Duration::from_secs(3),
    );
    assert_eq!(got.as_deref(), Ok(&b"pe"[..]));

    // Repeated ADD answers as before; CHECK agrees; DEL removes it and only it.
    let again = vm.delegated("ADD", "ctr-nf", &pod, &key, "net1", json!({}));
    assert_eq!(again.code, Some(0), "{}", again.stdout);
    assert_eq!(vm.delegated("CHECK", "ctr-nf", &pod, &key, "net1", json!({})).code, Some(0));
    let del = vm.delegated("DEL", "ctr-nf", &pod, &key, "net1", json!({}));
    assert_eq!(del.code, Some(0), "{}", del.stdout);
    assert_eq!(names(&pod), ["lo"]);
    assert!(names(&vm.node).contains(&NIC_PROVIDER.0.to_string()));
    let failed = vm.delegated("CHECK", "ctr-nf", &pod, &key, "net1", json!({}));
    assert_eq!(failed.stdout["code"], 110, "{}", failed.stdout);
    assert!(vm.pods.events_of(&key).is_empty(), "{:?}", vm.pods.events_of(&key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_nic_for_the_network_and_a_bad_network_data_json_are_errors_and_events() {
    let vm = Vm::start().await;
    let pod = Netns::create(&unique("p")).unwrap();
    let key = ObjectKey::new("telco", "lost");
    vm.pods.put(
        &key,
        "uid-lost",
        &ports(vec![provider("net1", "other-net", "fa:16:3e:00:00:21", "192.168.60.10")]),
        true,
    );

    // The VM has no NIC on that network: not a guess, an error naming the attachment.
    let r = vm.delegated("ADD", "ctr-lost", &pod, &key, "net1", json!({}));
    assert_eq!(r.stdout["code"], 7, "{}", r.stdout);
    let d = details(&r);
    assert!(d.contains("interface net1 (NetworkAttachmentDefinition telco/provider"), "{d}");
    assert!(d.contains("the VM has no NIC on Neutron network other-net (its networks: pod-net, phys-net)"), "{d}");
    let events = vm.pods.events_of(&key);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "AttachmentFailed");
    assert!(events[0].1.contains("other-net"), "{events:?}");
    assert_eq!(names(&pod), ["lo"], "nothing half-made");

    // A garbled network_data.json on the config drive.
    vm.pods.put(
        &key,
        "uid-lost",
        &ports(vec![provider("net1", "phys-net", "fa:16:3e:00:00:21", "192.168.50.21")]),
        true,
    );
    config_drive(vm.dir.path(), &vm.iso(), "{\"links\": [");
    let r = vm.delegated("ADD", "ctr-lost", &pod, &key, "net1", json!({}));
    assert_eq!(r.stdout["code"], 7, "{}", r.stdout);
    let d = details(&r);
    assert!(d.contains("interface net1") && d.contains("network_data.json from the config drive"), "{d}");
    assert!(d.contains("not JSON"), "{d}");
    assert_eq!(vm.pods.events_of(&key).len(), 2);
    assert_eq!(names(&pod), ["lo"]);

    // And none at all.
    std::fs::remove_file(vm.iso()).unwrap();
    let r = vm.delegated("ADD", "ctr-lost", &pod, &key, "net1", json!({}));
    assert_eq!(r.stdout["code"], 7, "{}", r.stdout);
    assert!(details(&r).contains(&vm.iso().display().to_string()), "{}", r.stdout);
    assert_eq!(vm.pods.events_of(&key).len(), 3);
    assert_eq!(names(&pod), ["lo"]);

    // An annotation that is not the controller's format: a config error naming the field.
    let mut bad = serde_json::to_value(ports(vec![])).unwrap();
    bad["mac"] = json!("not-a-mac");
    vm.pods.pods.lock().unwrap().get_mut(&key).unwrap().network = Some(bad.to_string());
    let r = vm.delegated("ADD", "ctr-lost", &pod, &key, "net1", json!({}));
    assert_eq!(r.stdout["code"], 7, "{}", r.stdout);
    assert!(details(&r).contains("metadata.annotations[stacknet.io/network].mac"), "{}", r.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sriov_port_gets_the_kubelets_device_recorded_for_its_binding() {
    let vm = Vm::start().await;
    let pod = Netns::create(&unique("p")).unwrap();
    let key = ObjectKey::new("telco", "fast");
    let mut direct = provider("net2", "sriov-net", "fa:16:3e:00:00:31", "192.168.70.10");
    direct.vnic_type = "direct".into();
    direct.physical_network = Some("physnet2".into());
    vm.pods.put(&key, "uid-fast", &ports(vec![direct]), true);
    let sriov = json!({"name": "fast", "neutronNetwork": "sriov-net", "vnicType": "direct"});

    // Without the device the kubelet assigned (Multus passes deviceID): a clear error.
    let r = vm.delegated("ADD", "ctr-fast", &pod, &key, "net2", sriov.clone());
    assert_eq!(r.stdout["code"], 7, "{}", r.stdout);
    assert!(details(&r).contains("interface net2") && details(&r).contains("deviceID"), "{}", r.stdout);
    assert!(names(&vm.node).contains(&VF.to_string()));

    let mut with_device = sriov.clone();
    with_device["deviceID"] = json!(PCI);
    let r = vm.delegated("ADD", "ctr-fast", &pod, &key, "net2", with_device.clone());
    assert_eq!(r.code, Some(0), "{}", r.stdout);
    assert_eq!(names(&pod), ["lo", "net2"]);
    assert!(!names(&vm.node).contains(&VF.to_string()), "the device moved");
    let mac = Command::new("ip").args(["-n", pod.name(), "-j", "link", "show", "net2"]).output().unwrap();
    assert!(String::from_utf8_lossy(&mac.stdout).contains("fa:16:3e:00:00:31"));
    // Recorded for the controller, which sets the port's binding:profile from it.
    let annotated = vm.pods.annotated.lock().unwrap().clone();
    assert_eq!(annotated.len(), 1, "{annotated:?}");
    assert_eq!(annotated[0].1, "stacknet.io/sriov-devices");
    let v: Value = serde_json::from_str(&annotated[0].2).unwrap();
    assert_eq!(v, json!({"net2": {"pciSlot": PCI, "vendorInfo": "8086:154c", "physicalNetwork": "physnet2"}}));

    // DEL returns it to the node under its own name.
    let del = vm.delegated("DEL", "ctr-fast", &pod, &key, "net2", with_device);
    assert_eq!(del.code, Some(0), "{}", del.stdout);
    assert_eq!(names(&pod), ["lo"]);
    assert!(names(&vm.node).contains(&VF.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_pods_add_is_all_or_nothing() {
    let vm = Vm::start().await;
    let pod = Netns::create(&unique("p")).unwrap();
    let key = ObjectKey::new("telco", "nested");
    vm.pods.put(
        &key,
        "uid-nested",
        &ports(vec![provider("net1", "phys-net", "fa:16:3e:00:00:41", "192.168.50.41")]),
        true,
    );
    // Multus-free: the primary's ADD makes the pod's port (a VLAN child of the trunk parent's
    // NIC) and its secondary interface (a macvlan on the provider NIC), concurrently.
    let config = json!({"cniVersion": "1.1.0", "name": "stacknet", "type": "stacknet-cni", "agentSocket": vm.socket});
    let r = vm.run("ADD", "ctr-nested", &pod, &key, "eth0", config.clone());
    let vlan_probe = Command::new("ip")
        .args(["-n", vm.node.name(), "link", "add", "link", NIC_POD.0, "name", "snprobe", "type", "vlan", "id", "9"])
        .output()
        .unwrap();
    if vlan_probe.status.success() {
        // A kernel with 8021q: both made.
        assert_eq!(r.code, Some(0), "{}", r.stdout);
        assert_eq!(names(&pod), ["eth0", "lo", "net1"]);
        let del = vm.run("DEL", "ctr-nested", &pod, &key, "eth0", config);
        assert_eq!(del.code, Some(0), "{}", del.stdout);
        assert_eq!(names(&pod), ["lo"]);
    } else {
        // This kernel: the trunk subport cannot be made, so neither is the macvlan kept.
        assert_eq!(r.stdout["code"], 7, "{}", r.stdout);
        let d = details(&r);
        assert!(d.contains("Neutron port pod-port") && d.contains("8021q"), "{d}");
        assert_eq!(names(&pod), ["lo"], "the secondary interface made meanwhile was removed");
        let events = vm.pods.events_of(&key);
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(events[0].1.contains("8021q"), "{events:?}");
    }
}
