//! `stacknet-bench services`: Services on OVN load balancers at scale (1k Services × 10
//! endpoints, NodePort and LoadBalancer among them, on N nodes with gateway routers), into a
//! live Northbound database. What one endpoint change costs: the rows stacknet writes and the
//! time its reconcile takes, next to the floor — the load balancer rows that must change,
//! written directly in one transaction by the same client. Run at two node counts, the rows
//! written must not grow with the nodes. Then, live (see `services_live`): a Service's endpoint
//! moved, until its VIP answers from the new backend, next to the same row written directly.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Instant;

use serde_json::{Value, json};
use stacknet_engine::objects::{ClusterObject, Endpoint, EndpointPort, EndpointSlice, ObjectKey, Protocol};
use stacknet_engine::{Cidr, ClusterIndex, PolicyEngine, manifest};
use stacknet_ovn::topology::Gateways;
use stacknet_ovn::{Desired, NodeNet, OvnBackend, Topology, build};
use stacknet_ovsdb::nb::LOAD_BALANCER;
use stacknet_ovsdb::{Condition, Datum, Row, Transaction};
use stacknet_sandbox::Ovn;

use crate::jsonline::line;
use crate::percentile;

pub struct Args {
    pub services: usize,
    pub endpoints: usize,
    pub nodes: Vec<usize>,
    /// Endpoint changes timed (the median and p99 count).
    pub changes: usize,
    /// Moves of a live Service's endpoint timed on a real node (0: no live half).
    pub live_changes: usize,
    /// The stacknet-cni executable (default: next to this one).
    pub plugin: Option<std::path::PathBuf>,
}

fn node_name(i: usize) -> String {
    format!("node-{i}")
}

/// Services: every 10th a NodePort, every 20th a LoadBalancer (every 40th of those with
/// `externalTrafficPolicy: Local`), the rest ClusterIP; each with an EndpointSlice of
/// `endpoints` ready endpoints spread over the nodes.
fn cluster(args: &Args, nodes: usize) -> anyhow::Result<Vec<ClusterObject>> {
    let mut y = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for s in 0..args.services {
        let (kind, extra) = match s {
            s if s % 40 == 0 => ("LoadBalancer", ", externalTrafficPolicy: Local"),
            s if s % 20 == 0 => ("LoadBalancer", ""),
            s if s % 10 == 0 => ("NodePort", ""),
            _ => ("ClusterIP", ""),
        };
        let node_port = if kind == "ClusterIP" { String::new() } else { format!(", nodePort: {}", 30000 + s) };
        y.push_str(&format!(
            "- {{apiVersion: v1, kind: Service, metadata: {{name: s{s}, namespace: b}}, spec: {{type: {kind}, clusterIP: 10.96.{}.{}{extra}, ports: [{{port: 80, targetPort: 8080{node_port}}}]}}}}\n",
            s / 250,
            s % 250 + 1
        ));
    }
    let mut objects = manifest::parse("services.yaml", &y).map_err(|e| anyhow::anyhow!("{e}"))?.objects;
    for s in 0..args.services {
        objects.push(ClusterObject::EndpointSlice(slice(s, args.endpoints, nodes, 0)));
    }
    Ok(objects)
}

/// Service `s`'s EndpointSlice; `generation` moves its first endpoint to another address.
fn slice(s: usize, endpoints: usize, nodes: usize, generation: usize) -> EndpointSlice {
    let endpoints = (0..endpoints)
        .map(|e| {
            let k = s * endpoints + e + if e == 0 { generation * 7919 } else { 0 };
            let node = k % nodes;
            let host = 3 + (k / nodes) % 250;
            Endpoint {
                addresses: vec![format!("10.{}.{}.{host}", 244 + node / 256, node % 256).parse().expect("address")],
                ready: true,
                pod: None,
                node: Some(node_name(node)),
            }
        })
        .collect();
    EndpointSlice {
        key: ObjectKey::new("b", format!("s{s}-slice")),
        service: Some(format!("s{s}")),
        address_type: "IPv4".into(),
        endpoints,
        ports: vec![EndpointPort { name: None, protocol: Protocol::Tcp, port: Some(8080) }],
    }
}

fn topology(engine: &PolicyEngine, nodes: usize) -> Topology {
    let cluster: Vec<Cidr> = vec!["10.244.0.0/14".parse().expect("literal")];
    let gateways = Gateways {
        join: "100.64.0.0/16".parse().expect("literal"),
        external: "172.30.0.0/16".parse().expect("literal"),
        next_hop: Some("172.30.0.1".parse().expect("literal")),
        physnet: "external".into(),
        snat: true,
        cluster: cluster.clone(),
    };
    let nodes: Vec<NodeNet> = (0..nodes)
        .map(|i| {
            let subnet = format!("10.{}.{}.0/24", 244 + i / 256, i % 256);
            let ip = |last: u8| -> IpAddr { format!("10.{}.{}.{last}", 244 + i / 256, i % 256).parse().expect("ip") };
            NodeNet {
                name: node_name(i),
                subnets: vec![(subnet.parse().expect("subnet"), ip(1))],
                management: vec![ip(2)],
                addresses: vec![format!("172.30.{}.{}", i / 250, i % 250 + 10).parse().expect("ip")],
                join: Some(format!("100.64.{}.{}", (i + 2) / 256, (i + 2) % 256).parse().expect("ip")),
            }
        })
        .collect();
    let pools: Vec<Cidr> = vec!["172.31.0.0/20".parse().expect("literal")];
    let (lb_ips, _) = stacknet_engine::service::assign_load_balancer_ips(engine.index(), &pools, &BTreeMap::new());
    let inside: Vec<Cidr> = cluster.iter().copied().chain(["10.96.0.0/12".parse().expect("literal")]).collect();
    let (exposures, _) = stacknet_engine::service::exposures(engine.index(), &lb_ips, &inside);
    Topology {
        cluster: "bench".into(),
        nodes,
        nested: BTreeMap::new(),
        node_routes: Vec::new(),
        gateways: Some(gateways),
        exposures,
        load_balancer_ips: lb_ips,
        multinet: Default::default(),
    }
}

/// The load balancer rows of `before` that differ in `after`: what must change, at least.
fn changed_lbs<'a>(before: &Desired, after: &'a Desired) -> Vec<(&'a str, &'a Datum)> {
    after
        .rows
        .iter()
        .filter(|((t, _), _)| *t == LOAD_BALANCER)
        .filter(|(k, r)| before.rows.get(k).is_none_or(|b| b.columns.get("vips") != r.columns.get("vips")))
        .filter_map(|(_, r)| Some((r.columns.get("name")?.as_str()?, r.columns.get("vips")?)))
        .collect()
}

async fn one(args: &Args, nodes: usize) -> anyhow::Result<Vec<(&'static str, Value)>> {
    let ovn = Ovn::nb_only()?;
    let backend = OvnBackend::connect(vec![ovn.nb.remote().parse()?]);
    let mut engine = PolicyEngine::from_index(ClusterIndex::from_objects(cluster(args, nodes)?));
    let start = Instant::now();
    let mut desired = build(&engine, &topology(&engine, nodes));
    let first = backend.reconcile(&desired).await?;
    let converge_s = start.elapsed().as_secs_f64();
    let lb_rows = desired.count(LOAD_BALANCER);
    // The endpoint changes: always a NodePort Service's (the most rows carry it).
    let (mut ours_ms, mut floor_ms, mut rows, mut floor_rows, mut ops) = (vec![], vec![], vec![], vec![], vec![]);
    for g in 1..=args.changes {
        let s = 10 * (g % (args.services / 10).max(1));
        engine.apply(ClusterObject::EndpointSlice(slice(s, args.endpoints, nodes, g)));
        let t = Instant::now();
        let next = build(&engine, &topology(&engine, nodes));
        let report = backend.reconcile(&next).await?;
        ours_ms.push(t.elapsed().as_secs_f64() * 1e3);
        rows.push(
            (report.summary.inserts + report.summary.updates + report.summary.mutates + report.summary.deletes) as f64,
        );
        ops.push(report.operations as f64);
        // The floor: the same rows written directly, by name, in one transaction — the new
        // values back to the old ones, so the database ends as stacknet wants it.
        let changed = changed_lbs(&desired, &next);
        floor_rows.push(changed.len() as f64);
        let mut txn = Transaction::new(stacknet_ovsdb::nb::DATABASE);
        for (name, _) in &changed {
            let old = desired
                .rows
                .values()
                .find(|r| r.table == LOAD_BALANCER && r.columns.get("name").and_then(Datum::as_str) == Some(name));
            if let Some(vips) = old.and_then(|r| r.columns.get("vips")) {
                txn.update(
                    LOAD_BALANCER,
                    vec![Condition::eq("name", *name)],
                    Row::from([("vips".to_string(), vips.clone())]),
                );
            }
        }
        let mut back = Transaction::new(stacknet_ovsdb::nb::DATABASE);
        for (name, vips) in &changed {
            back.update(
                LOAD_BALANCER,
                vec![Condition::eq("name", *name)],
                Row::from([("vips".to_string(), (*vips).clone())]),
            );
        }
        backend.client().transact(&txn).await?;
        let t = Instant::now();
        backend.client().transact(&back).await?;
        floor_ms.push(t.elapsed().as_secs_f64() * 1e3);
        desired = next;
    }
    // Sorted, for the percentiles.
    for v in [&mut ours_ms, &mut floor_ms, &mut rows, &mut floor_rows, &mut ops] {
        v.sort_by(f64::total_cmp);
    }
    let ms = |v: f64| (v * 100.0).round() / 100.0;
    Ok(vec![
        ("bench", json!("services")),
        ("services", json!(args.services)),
        ("endpoints", json!(args.endpoints)),
        ("nodes", json!(nodes)),
        ("lb_rows", json!(lb_rows)),
        ("converge_s", json!((converge_s * 100.0).round() / 100.0)),
        ("first_operations", json!(first.operations)),
        ("rows_per_change", json!(percentile(&rows, 0.5))),
        ("floor_rows_per_change", json!(percentile(&floor_rows, 0.5))),
        ("ops_per_change", json!(percentile(&ops, 0.5))),
        ("change_p50_ms", json!(ms(percentile(&ours_ms, 0.5)))),
        ("change_p99_ms", json!(ms(percentile(&ours_ms, 0.99)))),
        ("floor_p50_ms", json!(ms(percentile(&floor_ms, 0.5)))),
        ("floor_p99_ms", json!(ms(percentile(&floor_ms, 0.99)))),
    ])
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.services >= 10, "--services must be at least 10 (every 10th is a NodePort)");
    anyhow::ensure!(args.endpoints >= 1, "--endpoints must be at least 1");
    for &n in &args.nodes {
        anyhow::ensure!(n >= 1, "--nodes must be at least 1");
        println!("{}", line(&one(&args, n).await?));
    }
    if args.live_changes > 0 {
        let rest = cluster(&args, 1)?;
        println!("{}", line(&crate::services_live::run(rest, args.live_changes, args.plugin.clone()).await?));
    }
    Ok(())
}
