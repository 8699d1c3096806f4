//! A pod's veth pair on the real kernel (root): made from the node's namespace, configured in
//! one visit to the pod's, and the name clashes the kernel refuses told apart.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use stacknet_node::plumb::{self, PlumbError, PodInterface};
use stacknet_sandbox::Netns;

fn ns(tag: &str) -> Netns {
    Netns::create(&format!("snv-{tag}-{}", std::process::id())).unwrap()
}

fn ip(ns: &Netns, args: &[&str]) -> String {
    let out = Command::new("ip").args(["-n", ns.name()]).args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn iface(host: &str, last: u8) -> PodInterface {
    PodInterface {
        host: host.into(),
        ifname: "eth0".into(),
        mac: format!("0a:58:0a:01:00:{last:02x}"),
        addresses: vec![(IpAddr::V4(Ipv4Addr::new(10, 1, 0, last)), 24)],
        gateways: vec![IpAddr::V4(Ipv4Addr::new(10, 1, 0, 254))],
        routes: Vec::new(),
        mtu: 1400,
        vlan: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_end_is_made_configured_and_name_clashes_are_named() {
    let (node, pod, other) = (ns("node"), ns("pod"), ns("other"));
    let host = stacknet_node::netns::netlink_in_async(&node.path()).await.unwrap();
    plumb::plumb(&host, &pod.path(), &iface("vh1", 1)).await.unwrap();
    let link = ip(&pod, &["-d", "link", "show", "eth0"]);
    assert!(link.contains("0a:58:0a:01:00:01") && link.contains("mtu 1400") && link.contains("state UP"), "{link}");
    assert!(ip(&pod, &["addr", "show", "eth0"]).contains("10.1.0.1/24"));
    assert!(ip(&pod, &["route"]).contains("default via 10.1.0.254 dev eth0"));
    assert!(ip(&pod, &["link", "show", "lo"]).contains("UP"));
    let features = Command::new("ip").args(["netns", "exec", pod.name(), "ethtool", "-k", "eth0"]).output().unwrap();
    assert!(String::from_utf8_lossy(&features.stdout).contains("tx-checksum-ip-generic: off"));
    assert!(ip(&node, &["link", "show", "vh1"]).contains("state UP"));

    // The pod end's name is taken in the pod's namespace.
    let e = plumb::plumb(&host, &pod.path(), &iface("vh2", 2)).await.unwrap_err();
    assert!(matches!(e, PlumbError::IfnameTaken { ref name } if name == "eth0"), "{e}");
    // The host end's name is taken on the node.
    let e = plumb::plumb(&host, &other.path(), &iface("vh1", 3)).await.unwrap_err();
    assert!(e.to_string().contains("creating vh1") && e.to_string().contains("exists on the node"), "{e}");
    // Neither refusal left anything.
    assert!(!ip(&node, &["link"]).contains("vh2"));
    assert!(!ip(&other, &["link"]).contains("eth0"));

    assert!(plumb::unplumb(&host, "vh1").await.unwrap());
    assert!(!ip(&pod, &["link"]).contains("eth0"), "the pod end goes with the host end");
}
