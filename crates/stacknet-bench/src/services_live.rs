//! The live half of `stacknet-bench services`: on a real node (ovs-vswitchd, ovn-controller,
//! pods wired by `stacknet-cni`) holding the scenario's Services, a client pod dials a
//! Service's VIP while its one endpoint moves between two backend pods. Timed from the
//! EndpointSlice change to the first connection the new backend answers: stacknet (the full
//! desired state rebuilt and reconciled, as the controller does) next to OVN's floor (the same
//! load balancer row written directly, and the same wait), alternating.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use stacknet_engine::objects::{ClusterObject, Endpoint, EndpointPort, EndpointSlice, ObjectKey, Protocol};
use stacknet_engine::reach::ProbeSpec;
use stacknet_engine::{ClusterIndex, PolicyEngine, manifest};
use stacknet_ovsdb::nb::LOAD_BALANCER;
use stacknet_ovsdb::{Condition, Datum, Row, Transaction};
use stacknet_verify::live::{Connection, Live};

use crate::percentile;

const CLUSTER: &str = "svclive";
const VIP: &str = "10.96.255.10:80";
const BACKENDS: [(&str, &str); 2] = [("b0", "10.200.0.11"), ("b1", "10.200.0.12")];
/// How long one change may take to show before the run fails.
const DEADLINE: Duration = Duration::from_secs(20);

/// The client, the two backends, their Service and its slice (on `backend`), next to `rest`.
fn engine(rest: &[ClusterObject], backend: usize) -> anyhow::Result<PolicyEngine> {
    let mut y = String::from("apiVersion: v1\nkind: List\nitems:\n");
    y.push_str("- {apiVersion: v1, kind: Pod, metadata: {name: client, namespace: live, uid: uid-c}, status: {podIP: 10.200.0.10}}\n");
    for (name, ip) in BACKENDS {
        y.push_str(&format!(
            "- {{apiVersion: v1, kind: Pod, metadata: {{name: {name}, namespace: live, uid: uid-{name}}}, status: {{podIP: {ip}}}}}\n"
        ));
    }
    y.push_str("- {apiVersion: v1, kind: Service, metadata: {name: moving, namespace: live}, spec: {clusterIP: 10.96.255.10, ports: [{port: 80, targetPort: 8080}]}}\n");
    let mut objects = manifest::parse("live.yaml", &y).map_err(|e| anyhow::anyhow!("{e}"))?.objects;
    objects.push(ClusterObject::EndpointSlice(slice(backend)));
    objects.extend(rest.iter().cloned());
    Ok(PolicyEngine::from_index(ClusterIndex::from_objects(objects)))
}

fn slice(backend: usize) -> EndpointSlice {
    EndpointSlice {
        key: ObjectKey::new("live", "moving-1"),
        service: Some("moving".into()),
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec![BACKENDS[backend].1.parse().expect("literal")],
            ready: true,
            pod: Some(ObjectKey::new("live", BACKENDS[backend].0)),
            node: None,
        }],
        ports: vec![EndpointPort { name: None, protocol: Protocol::Tcp, port: Some(8080) }],
    }
}

/// Connects to the VIP from the client until backend `want` answers; how long it took from
/// `since`.
async fn until_answered(live: &Live, want: usize, since: Instant) -> anyhow::Result<f64> {
    let client = ObjectKey::new("live", "client");
    let vip: SocketAddr = VIP.parse()?;
    let name = format!("live/{}", BACKENDS[want].0);
    loop {
        if let Connection::Answered(who) = live.connect(&client, vip, Duration::from_millis(300)).await?
            && who == name
        {
            return Ok(since.elapsed().as_secs_f64() * 1e3);
        }
        anyhow::ensure!(since.elapsed() < DEADLINE, "{name} did not answer on {VIP} within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// `changes` moves by stacknet and as many by the floor, alternating; the figures.
pub async fn run(
    rest: Vec<ClusterObject>,
    changes: usize,
    plugin: Option<PathBuf>,
) -> anyhow::Result<Vec<(&'static str, Value)>> {
    let plugin = crate::podready::find_sibling(plugin, "stacknet-cni", "stacknet-cni")?;
    let mut live = Live::start(CLUSTER, &plugin).await.context("starting the node")?;
    live.program(&engine(&rest, 0)?).await.context("the pods and Services")?;
    live.listen(&["8080/TCP".parse::<ProbeSpec>().map_err(|e| anyhow::anyhow!(e))?]).await?;
    until_answered(&live, 0, Instant::now()).await.context("the first backend")?;
    let nb = stacknet_ovsdb::Client::start(stacknet_ovsdb::ClientConfig::new(
        vec![live.trace().ovn().nb.remote().parse()?],
        stacknet_ovsdb::nb::DATABASE,
    ));
    nb.connected(Duration::from_secs(10)).await?;
    let lb_name = format!("{CLUSTER}_live_moving_tcp");
    // What the controller's reconcile does: the whole desired state built, then written (no
    // wait for the Southbound database: the answer is what is waited for).
    let backend = stacknet_ovn::OvnBackend::connect(vec![live.trace().ovn().nb.remote().parse()?]);
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    let mut at = 0;
    for _ in 0..changes {
        // stacknet: the slice changes; the controller rebuilds and reconciles.
        at = 1 - at;
        let engine = engine(&rest, at)?;
        let t = Instant::now();
        let topology = stacknet_ovn::Topology::from_pods(CLUSTER, engine.index());
        backend.reconcile(&stacknet_ovn::build(&engine, &topology)).await?;
        ours.push(until_answered(&live, at, t).await?);
        // The floor: the same row, written directly.
        at = 1 - at;
        let vips = Datum::map([(VIP.to_string(), format!("{}:8080", BACKENDS[at].1))]);
        let mut txn = Transaction::new(stacknet_ovsdb::nb::DATABASE);
        txn.update(
            LOAD_BALANCER,
            vec![Condition::eq("name", lb_name.as_str())],
            Row::from([("vips".to_string(), vips)]),
        );
        let t = Instant::now();
        nb.transact(&txn).await?;
        floor.push(until_answered(&live, at, t).await?);
    }
    live.shutdown().await?;
    ours.sort_by(f64::total_cmp);
    floor.sort_by(f64::total_cmp);
    let ms = |v: f64| (v * 10.0).round() / 10.0;
    let (o50, f50) = (percentile(&ours, 0.5), percentile(&floor, 0.5));
    Ok(vec![
        ("bench", json!("services-live")),
        ("services", json!(rest.iter().filter(|o| matches!(o, ClusterObject::Service(_))).count() + 1)),
        ("changes", json!(changes)),
        ("vip_moved_p50_ms", json!(ms(o50))),
        ("vip_moved_p99_ms", json!(ms(percentile(&ours, 0.99)))),
        ("floor_p50_ms", json!(ms(f50))),
        ("floor_p99_ms", json!(ms(percentile(&floor, 0.99)))),
        ("ratio_p50", json!(if f50 > 0.0 { (o50 / f50 * 100.0).round() / 100.0 } else { 0.0 })),
    ])
}
