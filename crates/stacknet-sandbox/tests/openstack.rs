//! The OpenStack harness itself: a real Keystone, Neutron (ML2/OVN) and Octavia (ovn provider)
//! on loopback. A network created through Neutron shows up as a Logical_Switch in the harness's
//! own OVN; everything is gone (processes and directory) once the cloud is dropped.

use stacknet_sandbox::openstack::http;
use stacknet_sandbox::{OpenStack, OpenStackOptions};

#[test]
#[ignore = "needs root and the OpenStack packages (.ci/run installs them)"]
fn a_cloud_starts_answers_and_goes_away() {
    let cloud = OpenStack::start(OpenStackOptions::default()).expect("the cloud starts");
    eprintln!("started in {:.1}s: {cloud:?}", cloud.started_in.as_secs_f64());
    let token = cloud.admin_token().expect("password auth");
    // A wrong password is refused.
    let wrong = r#"{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"admin","domain":{"name":"Default"},"password":"wrong"}}}}}"#;
    let a = http("POST", &format!("{}/auth/tokens", cloud.keystone_url), None, Some(wrong)).unwrap();
    assert_eq!(a.status, 401, "{}", a.body);
    // The catalog lists Neutron and Octavia at the harness's ports.
    let a = http("GET", &format!("{}/auth/catalog", cloud.keystone_url), Some(&token), None).unwrap();
    assert!(
        a.body.contains(&cloud.neutron_url) && a.body.contains(cloud.octavia_url.as_deref().unwrap()),
        "{}",
        a.body
    );
    // Neutron refuses a request without a token, and writes a network into our OVN with one.
    let nets = format!("{}/v2.0/networks", cloud.neutron_url);
    assert_eq!(http("GET", &nets, None, None).unwrap().status, 401);
    let a = http("POST", &nets, Some(&token), Some(r#"{"network":{"name":"harness-net"}}"#)).unwrap();
    assert_eq!(a.status, 201, "{}", a.body);
    let id = serde_json::from_str::<serde_json::Value>(&a.body).unwrap()["network"]["id"].as_str().unwrap().to_string();
    let switch = cloud
        .ovn
        .nbctl(&["--bare", "--columns=name", "find", "Logical_Switch", &format!("name=neutron-{id}")])
        .unwrap();
    assert_eq!(switch.trim(), format!("neutron-{id}"));
    // Octavia answers with a token.
    let lbs = format!("{}/v2/lbaas/loadbalancers", cloud.octavia_url.as_deref().unwrap());
    let a = http("GET", &lbs, Some(&token), None).unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    let dir = cloud.dir().to_path_buf();
    let pids: Vec<u32> = cloud.daemons().iter().map(|(_, p)| *p).collect();
    assert!(pids.len() >= 5, "{:?}", cloud.daemons());
    drop(cloud);
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "process {pid} still runs");
    }
    assert!(!dir.exists(), "{} is left behind", dir.display());
}
