//! Nova in the harness: a real Nova control plane with two fake compute hosts next to Keystone
//! and Neutron. A compute host is drained as the compute drain will do it (disabled with a
//! reason, its ACTIVE server live-migrated and its SHUTOFF one cold-migrated away by the
//! scheduler), Nova's API goes away and comes back, and once the cloud is dropped no process
//! of it is left, Erlang's helpers included.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde_json::{Value, json};
use stacknet_sandbox::openstack::http;
use stacknet_sandbox::{OpenStack, OpenStackOptions};

/// Every process on the machine: PID -> (parent, process group, start time, state).
fn processes() -> HashMap<i32, (i32, i32, u64, char)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let f: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
            Some((pid, (f[1].parse().ok()?, f[2].parse().ok()?, f[19].parse().ok()?, f[0].chars().next()?)))
        })
        .collect()
}

/// The processes of these groups (or with these PIDs) and all their descendants (PID, start time).
fn tree(groups: &[u32]) -> Vec<(i32, u64)> {
    let all = processes();
    let member = |pid: i32, group: i32| groups.contains(&(pid as u32)) || groups.contains(&(group as u32));
    let mut keep: HashSet<i32> = all.iter().filter(|(pid, p)| member(**pid, p.1)).map(|(pid, _)| *pid).collect();
    loop {
        let more: Vec<i32> =
            all.iter().filter(|(pid, p)| !keep.contains(pid) && keep.contains(&p.0)).map(|(pid, _)| *pid).collect();
        if more.is_empty() {
            return keep.iter().map(|pid| (*pid, all[pid].2)).collect();
        }
        keep.extend(more);
    }
}

/// Proportional set size, in KiB, of these processes.
fn pss(pids: &[i32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok())
        .filter_map(|t| t.lines().find(|l| l.starts_with("Pss:"))?.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

fn host(server: &Value) -> &str {
    server["OS-EXT-SRV-ATTR:host"].as_str().unwrap_or_default()
}

#[test]
#[ignore = "needs root and the OpenStack packages with Nova's (scripts/install-test-packages)"]
fn a_compute_host_is_drained_through_real_nova() {
    let mut cloud =
        OpenStack::start(OpenStackOptions { octavia: false, nova: vec!["compute-1".into(), "compute-2".into()] })
            .expect("the cloud starts");
    eprintln!("started in {:.1}s: {cloud:?}", cloud.started_in.as_secs_f64());
    let mut total = 0;
    for (name, group) in cloud.daemons() {
        let kib = pss(&tree(&[group]).iter().map(|p| p.0).collect::<Vec<_>>());
        total += kib;
        eprintln!("  {name:<26} {:>5} MiB", kib / 1024);
    }
    eprintln!("  {:<26} {:>5} MiB (PSS, OVN's daemons not counted)", "all", total / 1024);

    // Keystone's catalog lists Nova, Placement and Glance at the harness's ports.
    let token = cloud.admin_token().unwrap();
    let a = http("GET", &format!("{}/auth/catalog", cloud.keystone_url), Some(&token), None).unwrap();
    for url in [&cloud.nova_url, &cloud.placement_url, &cloud.glance_url] {
        assert!(a.body.contains(url.as_deref().unwrap()), "{url:?} not in {}", a.body);
    }
    assert!(cloud.nova_url.as_deref().unwrap().ends_with("/v2.1"));

    // Two servers on compute-1, one of them stopped.
    let t = Instant::now();
    let active = cloud.boot("drain-active", "compute-1").expect("boots on compute-1");
    let stopped = cloud.boot("drain-stopped", "compute-1").expect("boots on compute-1");
    eprintln!("2 servers ACTIVE in {:.1}s", t.elapsed().as_secs_f64());
    for id in [&active, &stopped] {
        assert_eq!(host(&cloud.server(id).unwrap()), "compute-1");
    }
    let t = Instant::now();
    cloud.stop_server(&stopped).expect("stops");
    eprintln!("stopped in {:.1}s", t.elapsed().as_secs_f64());

    // compute-1 disabled, with a reason: still up.
    let service = cloud.compute_service("compute-1").unwrap();
    let reason = "stacknet: draining compute-1";
    let body = json!({"status": "disabled", "disabled_reason": reason}).to_string();
    let a = cloud.nova("PUT", &format!("/os-services/{}", service["id"].as_str().unwrap()), Some(&body)).unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    let service = cloud.compute_service("compute-1").unwrap();
    assert_eq!(
        (&service["status"], &service["disabled_reason"], &service["state"]),
        (&json!("disabled"), &json!(reason), &json!("up"))
    );

    // The ACTIVE server live-migrates away: the scheduler's pick, compute-2.
    let t = Instant::now();
    let live = json!({"os-migrateLive": {"host": null, "block_migration": "auto"}}).to_string();
    let a = cloud.nova("POST", &format!("/servers/{active}/action"), Some(&live)).unwrap();
    assert_eq!(a.status, 202, "{}", a.body);
    let s = cloud.wait_server(&active, "ACTIVE").expect("live-migrated");
    assert_eq!(host(&s), "compute-2", "{s}");
    let live_s = t.elapsed().as_secs_f64();

    // The SHUTOFF one cannot live-migrate: cold migration, confirmed.
    let t = Instant::now();
    let a = cloud.nova("POST", &format!("/servers/{stopped}/action"), Some(r#"{"migrate":null}"#)).unwrap();
    assert_eq!(a.status, 202, "{}", a.body);
    let s = cloud.wait_server(&stopped, "VERIFY_RESIZE").expect("cold-migrated");
    assert_eq!(host(&s), "compute-2", "{s}");
    let cold_s = t.elapsed().as_secs_f64();
    let a = cloud.nova("POST", &format!("/servers/{stopped}/action"), Some(r#"{"confirmResize":null}"#)).unwrap();
    assert_eq!(a.status, 204, "{}", a.body);
    let s = cloud.wait_server(&stopped, "SHUTOFF").expect("confirmed");
    assert_eq!(host(&s), "compute-2", "{s}");
    eprintln!("live migration {live_s:.1}s, cold migration {cold_s:.1}s (+ confirm {:.1}s)", t.elapsed().as_secs_f64());

    // compute-1 enabled again, its reason gone.
    let a = cloud
        .nova("PUT", &format!("/os-services/{}", service["id"].as_str().unwrap()), Some(r#"{"status":"enabled"}"#))
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    let service = cloud.compute_service("compute-1").unwrap();
    assert_eq!((&service["status"], &service["disabled_reason"]), (&json!("enabled"), &Value::Null));

    // Nova's API goes away (connections refused) and comes back.
    let t = Instant::now();
    cloud.stop("nova-api").unwrap();
    eprintln!("nova-api stopped in {:.1}s", t.elapsed().as_secs_f64());
    assert!(!cloud.daemons().iter().any(|(name, _)| *name == "nova-api"));
    let e = cloud.nova("GET", "/servers", None).expect_err("nova-api is gone");
    assert!(e.to_string().contains("refused"), "{e}");
    let t = Instant::now();
    cloud.restart("nova-api").unwrap();
    eprintln!("nova-api answers again {:.1}s after its restart", t.elapsed().as_secs_f64());
    let a = cloud.nova("GET", &format!("/servers/{active}"), None).unwrap();
    assert_eq!(a.status, 200, "{}", a.body);

    // Once dropped, nothing of it runs: not its daemons, nor anything they started, wherever.
    let dir = cloud.dir().to_path_buf();
    let mut groups: Vec<u32> = cloud.daemons().iter().map(|(_, g)| *g).collect();
    groups.extend(cloud.ovn.pids());
    let before = tree(&groups);
    assert!(before.len() > groups.len(), "{before:?}");
    let t = Instant::now();
    drop(cloud);
    eprintln!("dropped in {:.1}s ({} processes)", t.elapsed().as_secs_f64(), before.len());
    let now = processes();
    let left: Vec<_> =
        before.iter().filter(|(pid, start)| now.get(pid).is_some_and(|p| p.2 == *start && p.3 != 'Z')).collect();
    assert!(left.is_empty(), "left running: {left:?}");
    // Nor any process (an epmd of RabbitMQ's own making, say) with the cloud's directory in its
    // command line or environment.
    let needle = dir.display().to_string();
    let strays: Vec<String> = now
        .iter()
        .filter(|(_, p)| p.3 != 'Z')
        .filter_map(|(pid, _)| {
            let read =
                |f: &str| std::fs::read(format!("/proc/{pid}/{f}")).map(|b| String::from_utf8_lossy(&b).into_owned());
            let cmdline = read("cmdline").ok()?;
            let env = read("environ").unwrap_or_default();
            (cmdline.contains(&needle) || env.contains(&needle))
                .then(|| format!("{pid}: {}", cmdline.replace('\0', " ")))
        })
        .collect();
    assert!(strays.is_empty(), "left running: {strays:?}");
    assert!(!dir.exists(), "{} is left behind", dir.display());
}
