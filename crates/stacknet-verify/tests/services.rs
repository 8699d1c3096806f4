//! Services under ovn-trace: a connection to a ClusterIP VIP is balanced to a backend
//! (`--lb-dst`), then judged by the backend's ingress policy; a VIP without endpoints rejects.

use std::net::SocketAddr;

use stacknet_engine::objects::{ObjectKey, Protocol};
use stacknet_engine::{ClusterIndex, PolicyEngine, manifest};
use stacknet_ovn::trace::{CT_STAGES, pod_to_vip};
use stacknet_verify::OvnTrace;

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: db, namespace: leonardo}
spec:
  clusterIP: 10.96.0.20
  selector: {tier: db}
  ports: [{name: pg, port: 5432, targetPort: postgres}]
---
apiVersion: v1
kind: Service
metadata: {name: nobody, namespace: leonardo}
spec:
  clusterIP: 10.96.0.21
  selector: {tier: nothing-has-this}
  ports: [{port: 80}]
"#;

fn engine() -> PolicyEngine {
    let mut objects = Vec::new();
    for f in ["cluster.yaml", "policies.yaml"] {
        let path = format!("{}/../../examples/three-tier/{f}", env!("CARGO_MANIFEST_DIR"));
        objects.extend(manifest::parse(f, &std::fs::read_to_string(path).unwrap()).unwrap().objects);
    }
    objects.extend(manifest::parse("svc.yaml", SERVICES).unwrap().objects);
    PolicyEngine::from_index(ClusterIndex::from_objects(objects))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ip_reaches_a_backend_subject_to_its_ingress_policy() {
    let engine = engine();
    let mut trace = OvnTrace::start("svc").unwrap();
    trace.program(&engine).await.unwrap();
    let vip: SocketAddr = "10.96.0.20:5432".parse().unwrap();
    let backend: SocketAddr = "10.244.3.40:5432".parse().unwrap();
    let db = ObjectKey::new("leonardo", "db-0");
    let app = ObjectKey::new("leonardo", "app-0");
    let web = ObjectKey::new("leonardo", "web-0");
    // The application tier reaches the database through its Service...
    assert!(trace.decide_vip(&app, vip, backend, &db, Protocol::Tcp).unwrap());
    // ...memcached does not: nothing restricts its egress, but the database's ingress policy
    // applies to the backend behind the VIP.
    let cache = ObjectKey::new("leonardo", "cache-0");
    assert!(!trace.decide_vip(&cache, vip, backend, &db, Protocol::Tcp).unwrap());
    // Nor the web tier (its own egress policy forbids it as well).
    assert!(!trace.decide_vip(&web, vip, backend, &db, Protocol::Tcp).unwrap());

    // A VIP with no endpoints answers with a reject (a TCP reset), not silence.
    let desired = trace.desired();
    let empty: SocketAddr = "10.96.0.21:80".parse().unwrap();
    let p = pod_to_vip(desired, &app, empty, backend, &db, Protocol::Tcp).unwrap();
    let out = trace.ovn().trace(&p.datapath, &p.microflow, &p.expect_output, CT_STAGES, None).unwrap();
    assert!(!out.delivered);
    assert!(out.output.contains("tcp_reset") || out.output.contains("reject"), "{}", out.output);
}
