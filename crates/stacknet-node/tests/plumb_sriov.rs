//! An SR-IOV VF's netdev moved into a pod's namespace and given back, on the real kernel
//! (root). Each test makes a "node" namespace (standing for the node's host namespace) and a
//! "pod" namespace, and a fake sysfs tree in a temp dir mapping a PCI address to the device.
//!
//! There is no VF on this machine, and this kernel has no `dummy` driver either (`ip link add
//! type dummy`: "Unknown device type"): a persistent `tap` netdev (`ip tuntap add`) stands in
//! for the VF. Like a VF's netdev it is one Ethernet device that can move between namespaces
//! and take a MAC, an MTU, an alias and addresses. Unlike one it has no PF (no `physfn` in the
//! fake sysfs), so VF VLAN and MAC through the PF are not exercised here (the planner's unit
//! tests cover which steps they are), and it has no carrier (it is up, not running). It also
//! dies with its namespace where a VF would go back to the initial one.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use stacknet_node::plumb::sriov::{self, HostNs, Released, Step};
use stacknet_node::plumb::{PlumbError, PodInterface};
use stacknet_sandbox::Netns;

mod common;
use common::*;

const PCI: &str = "0000:03:00.2";
/// The stand-in VF's name on the node.
const VF: &str = "snvf0";
/// Its name in the pod.
const IFNAME: &str = "snet1";

struct Env {
    node: Netns,
    pod: Netns,
    sysfs: tempfile::TempDir,
}

impl Env {
    /// A node namespace with the stand-in VF `VF` (mapped from `PCI` in the fake sysfs) and a
    /// pod namespace.
    fn new(tag: &str) -> Env {
        let node = Netns::create(&format!("snsr-n-{tag}-{}", std::process::id())).unwrap();
        let pod = Netns::create(&format!("snsr-p-{tag}-{}", std::process::id())).unwrap();
        let env = Env { node, pod, sysfs: tempfile::tempdir().unwrap() };
        ip(&env.node, &["tuntap", "add", VF, "mode", "tap"]);
        env.map(PCI, VF);
        env
    }

    fn map(&self, pci: &str, netdev: &str) {
        std::fs::create_dir_all(self.sysfs.path().join("bus/pci/devices").join(pci).join("net").join(netdev)).unwrap();
    }

    fn sysfs(&self) -> &Path {
        self.sysfs.path()
    }

    async fn host(&self) -> HostNs {
        HostNs::open(&self.node.path()).await.unwrap()
    }

    fn netns(&self) -> PathBuf {
        self.pod.path()
    }
}

fn iface() -> PodInterface {
    PodInterface {
        host: String::new(),
        ifname: IFNAME.into(),
        mac: "0a:58:0a:01:00:05".into(),
        addresses: vec![("10.1.0.5".parse().unwrap(), 24), ("fd00:1::5".parse().unwrap(), 64)],
        gateways: vec!["10.1.0.1".parse().unwrap()],
        routes: vec![("192.168.0.0/16".parse().unwrap(), "10.1.0.254".parse().unwrap())],
        mtu: 9000,
        vlan: None,
    }
}

/// On the node under its own name, with no address and no alias; not in the pod.
fn back_on_the_node(env: &Env) {
    let l = link(&env.node, VF).expect("the device is back on the node under its name");
    assert_eq!(addresses(&l), Vec::<String>::new());
    assert!(l.get("ifalias").is_none(), "alias left: {l}");
    assert!(!up(&l));
    assert!(link(&env.node, IFNAME).is_none());
    assert!(link(&env.pod, IFNAME).is_none());
    assert!(link(&env.pod, VF).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vf_moves_into_the_pod_configured_and_back() {
    let env = Env::new("mv");
    let host = env.host().await;
    sriov::attach(&host, env.sysfs(), PCI, &env.netns(), &iface()).await.unwrap();

    let l = link(&env.pod, IFNAME).expect("in the pod under its new name");
    assert_eq!(l["address"], "0a:58:0a:01:00:05");
    assert_eq!(l["mtu"], 9000);
    assert!(up(&l));
    assert_eq!(addresses(&l), ["10.1.0.5/24", "fd00:1::5/64"]);
    assert_eq!(l["ifalias"], format!("stacknet:{VF}"), "where it came from");
    let routes = Command::new("ip").args(["-n", env.pod.name(), "route", "show", "dev", IFNAME]).output().unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout).to_string();
    assert!(routes.contains("default via 10.1.0.1"), "{routes}");
    assert!(routes.contains("192.168.0.0/16 via 10.1.0.254"), "{routes}");
    assert!(link(&env.node, VF).is_none(), "gone from the node");
    assert!(link(&env.node, IFNAME).is_none());
    // What observe (CHECK) sees.
    let seen = stacknet_node::plumb::observe(&env.netns(), IFNAME).await.unwrap().unwrap();
    assert_eq!(seen.gateways, ["10.1.0.1".parse::<IpAddr>().unwrap()]);

    assert_eq!(sriov::release(&host, &env.netns(), IFNAME).await.unwrap(), Released::Returned(VF.into()));
    back_on_the_node(&env);
    // DEL again: nothing to do.
    assert_eq!(sriov::release(&host, &env.netns(), IFNAME).await.unwrap(), Released::Absent);
    // And it can be used again.
    sriov::attach(&host, env.sysfs(), PCI, &env.netns(), &iface()).await.unwrap();
    assert!(link(&env.pod, IFNAME).is_some());
    assert_eq!(sriov::release(&host, &env.netns(), IFNAME).await.unwrap(), Released::Returned(VF.into()));
    back_on_the_node(&env);
    drop(env);
    none_on_the_real_host(&[VF, IFNAME, "snvf0b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_puts_the_device_back_under_its_name() {
    let env = Env::new("fail");
    let host = env.host().await;
    // The second address is already on the device when it comes to adding it (EEXIST): the
    // device has been moved, renamed, set up and given an address by then.
    let mut i = iface();
    i.addresses.push(("10.1.0.5".parse().unwrap(), 24));
    let e = sriov::attach(&host, env.sysfs(), PCI, &env.netns(), &i).await.unwrap_err();
    assert!(e.to_string().contains("adding 10.1.0.5/24 to snet1"), "{e}");
    back_on_the_node(&env);

    // A gateway that is not on the interface's subnet: the last step fails.
    let mut i = iface();
    i.routes = vec![("192.168.0.0/16".parse().unwrap(), "172.16.0.1".parse().unwrap())];
    let e = sriov::attach(&host, env.sysfs(), PCI, &env.netns(), &i).await.unwrap_err();
    assert!(e.to_string().contains("route to 192.168.0.0/16 via 172.16.0.1"), "{e}");
    back_on_the_node(&env);
    drop(env);
    none_on_the_real_host(&[VF, IFNAME, "snvf0b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ifname_taken_in_the_pod_leaves_the_device_on_the_node() {
    let env = Env::new("taken");
    ip(&env.pod, &["tuntap", "add", IFNAME, "mode", "tap"]);
    let host = env.host().await;
    let e = sriov::attach(&host, env.sysfs(), PCI, &env.netns(), &iface()).await.unwrap_err();
    assert!(matches!(e, PlumbError::IfnameTaken { ref name } if name == IFNAME), "{e}");
    let l = link(&env.node, VF).expect("still on the node");
    assert!(l.get("ifalias").is_none(), "alias left: {l}");
    assert!(link(&env.pod, VF).is_none());
    assert!(link(&env.pod, IFNAME).is_some(), "the pod's own interface is untouched");

    // The name taken after attach looked (a race): the kernel moves the device and then
    // fails to rename it, so it is in the pod under its node name; it is brought back.
    let device = sriov::Device { pci: PCI.into(), netdev: VF.into(), pf: None, alias: None };
    let steps = sriov::plan(&device, &iface()).unwrap();
    assert!(steps.contains(&Step::MoveToNetns { netdev: VF.into(), ifname: IFNAME.into() }));
    let e = sriov::execute(&host, &env.netns(), &steps).await.unwrap_err();
    assert!(matches!(e, PlumbError::IfnameTaken { ref name } if name == IFNAME), "{e}");
    let l = link(&env.node, VF).expect("back on the node");
    assert!(l.get("ifalias").is_none(), "alias left: {l}");
    assert!(link(&env.pod, VF).is_none());
    let own = link(&env.pod, IFNAME).unwrap();
    assert!(own.get("ifalias").is_none() && addresses(&own).is_empty(), "the pod's own interface is untouched");
    drop(env);
    none_on_the_real_host(&[VF, IFNAME, "snvf0b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vlan_on_a_device_that_is_not_a_vf_is_refused_before_anything() {
    let env = Env::new("vlan");
    let host = env.host().await;
    let mut i = iface();
    i.vlan = Some(200);
    let e = sriov::attach(&host, env.sysfs(), PCI, &env.netns(), &i).await.unwrap_err();
    assert_eq!(e.to_string(), format!("cannot set VLAN 200: {VF} is not a virtual function (no physfn)"));
    back_on_the_node(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sysfs_errors_name_the_pci_address() {
    let env = Env::new("pci");
    let host = env.host().await;
    let e = sriov::attach(&host, env.sysfs(), "0000:09:00.1", &env.netns(), &iface()).await.unwrap_err();
    assert!(e.to_string().contains("PCI device 0000:09:00.1: not found"), "{e}");
    // sysfs names a netdev the node's namespace does not have.
    env.map("0000:03:00.3", "snvf9");
    let e = sriov::attach(&host, env.sysfs(), "0000:03:00.3", &env.netns(), &iface()).await.unwrap_err();
    assert!(e.to_string().contains("0000:03:00.3") && e.to_string().contains("snvf9"), "{e}");
    back_on_the_node(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_leaves_alone_what_is_not_ours_and_a_gone_namespace_is_success() {
    let env = Env::new("rel");
    let host = env.host().await;
    // An interface in the pod that this module did not move there.
    ip(&env.pod, &["tuntap", "add", IFNAME, "mode", "tap"]);
    ip(&env.pod, &["link", "set", IFNAME, "alias", "someone else's"]);
    let r = sriov::release(&host, &env.netns(), IFNAME).await.unwrap();
    assert_eq!(r, Released::NotOurs { alias: Some("someone else's".into()) });
    assert!(link(&env.pod, IFNAME).is_some());
    // A namespace that is gone: the kernel gave a physical device back when it died.
    let gone = Path::new("/var/run/netns/snsr-never-made");
    assert_eq!(sriov::release(&host, gone, IFNAME).await.unwrap(), Released::NamespaceGone);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_a_dead_pod_gave_back_returns_under_its_original_name() {
    let env = Env::new("back");
    // As the kernel leaves a VF whose pod namespace died: under the pod's name, our alias on it.
    ip(&env.node, &["link", "set", VF, "name", "snvf0b"]);
    ip(&env.node, &["link", "set", "snvf0b", "alias", &format!("stacknet:{VF}")]);
    std::fs::remove_dir(env.sysfs().join("bus/pci/devices").join(PCI).join("net").join(VF)).unwrap();
    env.map(PCI, "snvf0b");
    let host = env.host().await;
    sriov::attach(&host, env.sysfs(), PCI, &env.netns(), &iface()).await.unwrap();
    assert_eq!(link(&env.pod, IFNAME).unwrap()["ifalias"], format!("stacknet:{VF}"));
    assert_eq!(sriov::release(&host, &env.netns(), IFNAME).await.unwrap(), Released::Returned(VF.into()));
    back_on_the_node(&env);
    assert!(link(&env.node, "snvf0b").is_none());
}
