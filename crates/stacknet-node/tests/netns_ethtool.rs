//! The netns job threads and the netlink `ethtool -K tx off`, on the real kernel (root).

use std::process::Command;

use stacknet_node::netns::run_in_async;
use stacknet_sandbox::Netns;

fn ns_name(tag: &str) -> String {
    format!("sne-{tag}-{}", std::process::id())
}

fn feature(ns: &Netns, dev: &str, name: &str) -> String {
    let out = Command::new("ip").args(["netns", "exec", ns.name(), "ethtool", "-k", dev]).output().unwrap();
    assert!(out.status.success(), "ethtool -k: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find_map(|l| {
            l.trim().strip_prefix(&format!("{name}: ")).map(|v| v.split_whitespace().next().unwrap_or("").to_string())
        })
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_checksum_goes_off_over_netlink() {
    let ns = Netns::create(&ns_name("tx")).unwrap();
    let ok = Command::new("ip")
        .args(["-n", ns.name(), "link", "add", "a0", "type", "veth", "peer", "name", "b0"])
        .status()
        .unwrap();
    assert!(ok.success());
    assert_eq!(feature(&ns, "a0", "tx-checksum-ip-generic"), "on", "a fresh veth offloads TX checksums");
    run_in_async(&ns.path(), || stacknet_node::ethtool::disable_tx_checksum("a0")).await.unwrap().unwrap();
    assert_eq!(feature(&ns, "a0", "tx-checksum-ip-generic"), "off");
    // As `ethtool -K tx off`: segmentation that needs the checksum goes with it; the peer is untouched.
    assert_eq!(feature(&ns, "a0", "tx-tcp-segmentation"), "off");
    assert_eq!(feature(&ns, "b0", "tx-checksum-ip-generic"), "on");

    // A missing device is an error naming it, not a panic.
    let err =
        run_in_async(&ns.path(), || stacknet_node::ethtool::disable_tx_checksum("nope0")).await.unwrap().unwrap_err();
    assert!(err.contains("nope0"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_in_their_namespace_and_threads_come_home() {
    let a = Netns::create(&ns_name("a")).unwrap();
    let b = Netns::create(&ns_name("b")).unwrap();
    let inode = |p: &std::path::Path| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    let home = inode(std::path::Path::new("/proc/self/ns/net"));
    // Many jobs, interleaved between two namespaces, each sees the namespace it asked for.
    let mut jobs = Vec::new();
    for i in 0..40 {
        let path = if i % 2 == 0 { a.path() } else { b.path() };
        let want = inode(&path);
        jobs.push(tokio::spawn(async move {
            let got = run_in_async(&path, || {
                std::fs::metadata("/proc/thread-self/ns/net").map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap()
            })
            .await
            .unwrap();
            assert_eq!(got, want);
        }));
    }
    for j in jobs {
        j.await.unwrap();
    }
    // A job that panics fails alone; the next one still runs.
    assert!(run_in_async::<()>(&a.path(), || panic!("boom")).await.is_err());
    assert_eq!(run_in_async(&a.path(), || 7).await.unwrap(), 7);
    // A path that is not a namespace is refused before any thread moves.
    assert!(run_in_async(std::path::Path::new("/etc/hostname"), || ()).await.is_err());
    assert_eq!(inode(std::path::Path::new("/proc/self/ns/net")), home);
}
