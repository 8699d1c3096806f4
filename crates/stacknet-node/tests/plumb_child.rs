//! A pod's secondary interface as a child (macvlan, VLAN) of the VM's NIC, on the real kernel
//! (root). A "node" namespace stands for the nested node (the VM), a "pod" namespace for the
//! pod. This kernel has no `dummy` driver: a persistent `tap` netdev (`ip tuntap add`) with a
//! known MAC stands in for the VM's NIC (an Ethernet device a macvlan can sit on).

use std::path::Path;
use std::process::Command;

use stacknet_node::plumb::child::{self, ChildKind};
use stacknet_node::plumb::{PlumbError, PodInterface};
use stacknet_sandbox::Netns;

/// The stand-in VM NIC and its MAC.
mod common;
use common::*;

const NIC: &str = "snens4";
const NIC_MAC: &str = "fa:16:3e:12:34:56";
/// The child's name in the pod.
const IFNAME: &str = "snet2";

struct Env {
    node: Netns,
    pod: Netns,
}

impl Env {
    /// A node namespace with the stand-in NIC and a pod namespace.
    fn new(tag: &str) -> Env {
        let node = Netns::create(&format!("snch-n-{tag}-{}", std::process::id())).unwrap();
        let pod = Netns::create(&format!("snch-p-{tag}-{}", std::process::id())).unwrap();
        ip(&node, &["tuntap", "add", NIC, "mode", "tap"]);
        ip(&node, &["link", "set", NIC, "address", NIC_MAC, "up"]);
        Env { node, pod }
    }

    async fn host(&self) -> rtnetlink::Handle {
        stacknet_node::netns::netlink_in_async(&self.node.path()).await.unwrap()
    }

    /// Only the NIC (and lo) on the node, only lo in the pod.
    fn clean(&self) {
        assert_eq!(names(&self.node), ["lo", NIC]);
        assert_eq!(names(&self.pod), ["lo"]);
    }
}

fn iface() -> PodInterface {
    PodInterface {
        host: String::new(),
        ifname: IFNAME.into(),
        mac: "fa:16:3e:aa:bb:01".into(),
        addresses: vec![("10.2.0.5".parse().unwrap(), 24)],
        gateways: vec![],
        routes: vec![("192.168.0.0/16".parse().unwrap(), "10.2.0.1".parse().unwrap())],
        mtu: 1400,
        vlan: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nic_by_mac_finds_the_vms_nic() {
    let env = Env::new("mac");
    ip(&env.node, &["tuntap", "add", "snens5", "mode", "tap"]);
    ip(&env.node, &["link", "set", "snens5", "address", "fa:16:3e:00:00:09"]);
    let host = env.host().await;
    assert_eq!(child::nic_by_mac(&host, NIC_MAC).await.unwrap(), NIC);
    // Nova's spelling may differ.
    assert_eq!(child::nic_by_mac(&host, "FA-16-3E-12-34-56").await.unwrap(), NIC);
    // A bridge (or bond) member shares its MAC with the bridge: the bridge is the one.
    ip(&env.node, &["link", "add", "snbr0", "type", "bridge"]);
    ip(&env.node, &["link", "set", "snbr0", "address", NIC_MAC]);
    ip(&env.node, &["link", "set", NIC, "master", "snbr0"]);
    assert_eq!(child::nic_by_mac(&host, NIC_MAC).await.unwrap(), "snbr0");

    let e = child::nic_by_mac(&host, "fa:16:3e:ff:ff:ff").await.unwrap_err();
    assert!(matches!(e, PlumbError::NoNic { .. }), "{e}");
    let e = e.to_string();
    assert!(e.contains("fa:16:3e:ff:ff:ff"), "{e}");
    assert!(e.contains(&format!("{NIC} {NIC_MAC}")) && e.contains("snens5 fa:16:3e:00:00:09"), "{e}");
    assert!(child::nic_by_mac(&host, "nope").await.unwrap_err().to_string().contains("nope"));
    drop(env);
    none_on_the_real_host(&[NIC, IFNAME, "snens5", "snbr0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_macvlan_child_goes_into_the_pod_configured_and_away_again() {
    let env = Env::new("mv");
    let host = env.host().await;
    child::make_child(&host, NIC, ChildKind::Macvlan, &env.pod.path(), &iface()).await.unwrap();

    let l = link(&env.pod, IFNAME).expect("the child is in the pod");
    assert_eq!(l["linkinfo"]["info_kind"], "macvlan");
    assert_eq!(l["linkinfo"]["info_data"]["mode"], "bridge");
    assert_eq!(l["address"], "fa:16:3e:aa:bb:01");
    assert_eq!(l["mtu"], 1400);
    assert!(l["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    assert_eq!(addresses(&l), ["10.2.0.5/24"]);
    let routes = Command::new("ip").args(["-n", env.pod.name(), "route", "show", "dev", IFNAME]).output().unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout).to_string();
    assert!(routes.contains("192.168.0.0/16 via 10.2.0.1"), "{routes}");
    // Never on the node.
    assert_eq!(names(&env.node), ["lo", NIC]);

    assert!(child::remove_child(&env.pod.path(), IFNAME).await.unwrap());
    env.clean();
    // DEL again.
    assert!(!child::remove_child(&env.pod.path(), IFNAME).await.unwrap());
    drop(env);
    none_on_the_real_host(&[NIC, IFNAME, "snens5", "snbr0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_configuration_leaves_no_child() {
    let env = Env::new("fail");
    let host = env.host().await;
    // The address twice: the second add fails after the child is made, up and addressed.
    let mut i = iface();
    i.addresses.push(("10.2.0.5".parse().unwrap(), 24));
    let e = child::make_child(&host, NIC, ChildKind::Macvlan, &env.pod.path(), &i).await.unwrap_err();
    assert!(e.to_string().contains("adding 10.2.0.5/24 to snet2"), "{e}");
    env.clean();
    // An MTU above the NIC's: refused at creation.
    let mut i = iface();
    i.mtu = 9000;
    let e = child::make_child(&host, NIC, ChildKind::Macvlan, &env.pod.path(), &i).await.unwrap_err();
    assert!(e.to_string().contains("creating macvlan snet2 on snens4"), "{e}");
    env.clean();
    // A parent that is not there.
    let e = child::make_child(&host, "snens9", ChildKind::Macvlan, &env.pod.path(), &iface()).await.unwrap_err();
    assert!(e.to_string().contains("parent NIC snens9"), "{e}");
    env.clean();
    drop(env);
    none_on_the_real_host(&[NIC, IFNAME, "snens5", "snbr0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ifname_taken_in_the_pod_is_refused_and_nothing_made() {
    let env = Env::new("taken");
    ip(&env.pod, &["tuntap", "add", IFNAME, "mode", "tap"]);
    let host = env.host().await;
    let e = child::make_child(&host, NIC, ChildKind::Macvlan, &env.pod.path(), &iface()).await.unwrap_err();
    assert!(matches!(e, PlumbError::IfnameTaken { ref name } if name == IFNAME), "{e}");
    assert_eq!(link(&env.pod, IFNAME).unwrap()["linkinfo"]["info_kind"], "tun", "the pod's own is untouched");
    assert_eq!(names(&env.node), ["lo", NIC]);
    // remove_child does not delete what is not a child.
    let e = child::remove_child(&env.pod.path(), IFNAME).await.unwrap_err();
    assert!(e.to_string().contains("not a macvlan or VLAN interface"), "{e}");
    assert!(link(&env.pod, IFNAME).is_some());
    // A namespace that is gone: its children died with it.
    assert!(!child::remove_child(Path::new("/var/run/netns/snch-never-made"), IFNAME).await.unwrap());
}

/// This kernel has no 8021q support (`ip link add … type vlan`: "Unknown device type"; there
/// are no modules to load), so a VLAN child cannot be made here: the attempt must fail with
/// an error that says so, and leave nothing in the pod or on the node. (On a kernel that has
/// VLANs it must make one with the id asked for, which this test then checks and removes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vlan_child_is_made_or_fails_clearly_leaving_nothing() {
    let env = Env::new("vlan");
    let host = env.host().await;
    match child::make_child(&host, NIC, ChildKind::Vlan(200), &env.pod.path(), &iface()).await {
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("creating VLAN 200 on snens4 as snet2"), "{text}");
            assert!(
                text.contains("this kernel cannot make VLAN interfaces (the 8021q module is not loaded?)"),
                "{text}"
            );
        }
        Ok(()) => {
            let l = link(&env.pod, IFNAME).expect("the VLAN child is in the pod");
            assert_eq!(l["linkinfo"]["info_kind"], "vlan");
            assert_eq!(l["linkinfo"]["info_data"]["id"], 200);
            assert_eq!(addresses(&l), ["10.2.0.5/24"]);
            assert!(child::remove_child(&env.pod.path(), IFNAME).await.unwrap());
        }
    }
    env.clean();
    drop(env);
    none_on_the_real_host(&[NIC, IFNAME, "snens5", "snbr0"]);
}
