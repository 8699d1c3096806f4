//! `stacknet demo examples/telco`: secondary networks on a real cluster of two nodes. The
//! controller makes, from the example's NetworkAttachmentDefinitions, a `layer2` network
//! spanning the nodes and a `localnet` provider network every node bridges to a physical
//! network on which a "PE router" sits (a namespace; what lies beyond it is an address on
//! its loopback); each pod's one CNI ADD attaches all its networks (no Multus). Every pair of
//! endpoints on every network — the cluster network, each secondary network with its hosts —
//! is tried for real next to what the engine expects (NetworkPolicy on the cluster network,
//! MultiNetworkPolicy on the others). Exits 0 only if every live verdict equals its expected
//! one.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use stacknet_controller::ControllerConfig;
use stacknet_engine::multinet::reach::Host;
use stacknet_engine::multinet::{self, Foreign, NetTopology};
use stacknet_engine::objects::{ClusterObject, ObjectKey, Pod};
use stacknet_engine::paths::Endpoint;
use stacknet_engine::reach::ProbeSpec;
use stacknet_engine::{ClusterIndex, PolicyEngine, semantics};
use stacknet_verify::live::{Live, NodeSpec};

use crate::demo::{CLUSTER, DemoArgs, mark, say, step};

/// What lies beyond each provider network's PE router (an address on its loopback).
const BEYOND: &str = "198.51.100.1";

fn probes() -> Vec<ProbeSpec> {
    ["3868/TCP", "80/TCP"].iter().map(|p| p.parse().expect("valid probe")).collect()
}

/// A provider network's PE router: on the network's subnet, at the gateway a pod's selection
/// routes through (else the subnet's first address).
#[derive(Debug, Clone)]
struct Provider {
    network: ObjectKey,
    physnet: String,
    pe: IpAddr,
    prefix: u8,
    host: String,
}

/// One network's endpoints, and how each is dialled on it.
struct Net {
    name: String,
    /// `None`: the cluster network.
    key: Option<ObjectKey>,
    endpoints: Vec<Endpoint>,
    addresses: BTreeMap<Endpoint, IpAddr>,
}

/// The verdicts of one network on one probe: `[from][to]`, `None` where nothing is tried.
struct Grid {
    network: String,
    probe: ProbeSpec,
    endpoints: Vec<Endpoint>,
    allowed: Vec<Vec<Option<bool>>>,
}

fn providers(index: &ClusterIndex) -> anyhow::Result<Vec<Provider>> {
    let mut out: Vec<Provider> = Vec::new();
    for nad in index.network_attachments() {
        let Some(Ok(config)) = &nad.config else { continue };
        let NetTopology::Localnet { physnet, .. } = &config.topology else { continue };
        let subnet = config.subnets.iter().find(|c| c.is_ipv4()).with_context(|| {
            format!("NetworkAttachmentDefinition {}: the demo needs an IPv4 subnet on a provider network", nad.key)
        })?;
        let asked = index.pods().find_map(|(_, p)| {
            let list = multinet::parse(&p.key.namespace, p.networks_annotation.as_deref()?).ok()?;
            list.into_iter()
                .filter(|s| s.namespace == nad.key.namespace && s.name == nad.key.name)
                .find_map(|s| s.default_route.into_iter().find(|g| subnet.contains(*g)))
        });
        let pe = asked.or_else(|| subnet.hosts().next()).context("an address for the PE router")?;
        // One PE router per physical network: the first NAD on it names it.
        if out.iter().any(|p| p.physnet == *physnet) {
            continue;
        }
        let host = format!("pe-{}", nad.key.name);
        out.push(Provider {
            network: nad.key.clone(),
            physnet: physnet.clone(),
            pe,
            prefix: subnet.prefix_len(),
            host,
        });
    }
    Ok(out)
}

pub(crate) async fn run(
    args: &DemoArgs,
    plugin: &Path,
    objects: Vec<ClusterObject>,
    manifests: &Path,
) -> anyhow::Result<bool> {
    say("stacknet demo (multi-network): pods with several interfaces on two nodes — the cluster network, a\n\
         layer2 data network spanning the nodes, a localnet provider network to a PE router — made in OVN by the\n\
         controller from NetworkAttachmentDefinitions, attached by stacknet-cni in one ADD per pod (no Multus),\n\
         a MultiNetworkPolicy on the data network; every pair on every network tried for real next to what\n\
         the engine expects.\n");
    let index = ClusterIndex::from_objects(objects.clone());
    let nodes: Vec<NodeSpec> = index.nodes().map(|n| NodeSpec { name: n.name.clone(), uplink: None }).collect();
    anyhow::ensure!(nodes.len() >= 2, "the multi-network demo needs at least two Nodes in {}", args.example.display());
    let providers = providers(&index)?;
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    let mut live = step(
        &format!(
            "starting OVN, {} (each ovs-vswitchd userspace datapath, ovn-controller, the node agent)",
            names.join(", ")
        ),
        async { Ok(Live::start_cluster(CLUSTER, plugin, &nodes, None).await?) },
    )
    .await?;
    live.timeout = Duration::from_millis(800);
    let beyond: IpAddr = BEYOND.parse()?;
    for p in &providers {
        step(
            &format!(
                "wiring physical network {} to every node (ovn-bridge-mappings) with the PE router {} at {} (and {BEYOND} beyond it)",
                p.physnet, p.host, p.pe
            ),
            async { Ok(live.provider_network(&p.physnet, &[(p.host.clone(), p.pe, p.prefix, vec![beyond])])?) },
        )
        .await?;
    }
    let nb = live.trace().ovn().nb.remote();
    let mut config = ControllerConfig::new(CLUSTER, vec![nb.parse()?], Some(manifests));
    config.poll = Duration::from_millis(100);
    let running = crate::demo::Running::start(&config, manifests, &args.example).await?;
    let engine = PolicyEngine::from_index(index.clone());
    let missing = step(
        &format!(
            "starting {} pods: a network namespace each, every interface attached by one stacknet-cni ADD through its node's agent",
            engine.index().pod_count()
        ),
        async { Ok(live.attach(&engine, CLUSTER).await?) },
    )
    .await?;
    anyhow::ensure!(
        missing.is_empty(),
        "pods without a port: {missing:?} (events: {:?})",
        running.observed.events.all()
    );

    let allocated = {
        let client = stacknet_ovsdb::Client::start(stacknet_ovsdb::ClientConfig::new(
            vec![nb.parse()?],
            stacknet_ovsdb::nb::DATABASE,
        ));
        client.connected(Duration::from_secs(10)).await?;
        let r = client.replica();
        stacknet_ovn::lookup::allocated(r.as_ref().context("the Northbound database's contents")?, CLUSTER)
    };
    let (index, plan) = expectation(index, &allocated);
    let nets = networks(&index, &plan, &providers, &live)?;
    let specs = probes();
    let expected = expected_grids(&index, &plan, &nets, &providers, &specs)?;
    anyhow::ensure!(expected.iter().all(|g| nets.iter().any(|n| n.name == g.network)), "a grid per network");
    live.listen_everywhere(&specs).await?;
    for p in &providers {
        live.listen_beyond(&p.host, beyond, &specs).await?;
    }
    // Flows are ovn-controller's to install and neighbours the pods' to learn: wait until every
    // path that should answer does (a deadline, not a sleep), then try everything afresh.
    step("waiting for every interface to answer where it should", async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let round = tried(&live, &nets, &expected, true).await?;
            let pending = pending(&expected, &round);
            if pending.is_empty() {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "not answering after 60 s: {}", pending.join("; "));
        }
    })
    .await?;
    live.settle()?;
    let got =
        step("trying every pair on every network for real", async { tried(&live, &nets, &expected, false).await })
            .await?;
    let ok = show(&expected, &got);
    running.finish(args, ok, json(&expected, &got), live, manifests, "pods, agents, daemons").await
}

/// The cluster as the expectation sees it: each pod with the node and address the controller
/// gave it, and the secondary interfaces as the controller made them (read back, so the
/// engine's decision is over the addresses the pods really have).
fn expectation(mut index: ClusterIndex, allocated: &stacknet_ovn::lookup::Allocated) -> (ClusterIndex, multinet::Plan) {
    let placed: BTreeMap<&ObjectKey, (&String, &Vec<IpAddr>)> =
        allocated.pods.iter().map(|(k, n, ips)| (k, (n, ips))).collect();
    let pods: Vec<Pod> = index.pods().map(|(_, p)| p.clone()).collect();
    for mut p in pods {
        if let Some((n, ips)) = placed.get(&p.key) {
            p.node = Some(n.to_string());
            p.ips = ips.to_vec();
            index.apply_pod(p);
        }
    }
    let mut alloc = multinet::Allocator::default();
    for (pod, iface, net, ips) in &allocated.attachments {
        alloc.restore(pod.clone(), iface.clone(), net.clone(), ips.clone());
    }
    let plan = alloc.sync(&index, Foreign::Refuse, stacknet_ovn::secondary::accepts);
    (index, plan)
}

/// The networks and their endpoints: the cluster network's pods; each secondary network's
/// pods (at their address on it) and, on a provider network, its PE router and what lies
/// beyond.
fn networks(
    index: &ClusterIndex,
    plan: &multinet::Plan,
    providers: &[Provider],
    live: &Live,
) -> anyhow::Result<Vec<Net>> {
    let mut cluster = Net { name: "cluster".into(), key: None, endpoints: Vec::new(), addresses: BTreeMap::new() };
    for (_, p) in index.pods() {
        if let Some(ip) = p.ips.first() {
            cluster.endpoints.push(Endpoint::Pod(p.key.clone()));
            cluster.addresses.insert(Endpoint::Pod(p.key.clone()), *ip);
        }
    }
    let mut out = vec![cluster];
    for key in plan.networks.keys() {
        let mut net =
            Net { name: key.to_string(), key: Some(key.clone()), endpoints: Vec::new(), addresses: BTreeMap::new() };
        for a in plan.on(key) {
            let ip = live
                .attachment_address(&a.pod, &a.interface)
                .with_context(|| format!("pod {} has no address on {}", a.pod, a.interface))?;
            anyhow::ensure!(
                a.ips.first().map(|(i, _)| *i) == Some(ip),
                "pod {} interface {}: the ADD answered {ip}, the controller made {:?}",
                a.pod,
                a.interface,
                a.ips
            );
            net.endpoints.push(Endpoint::Pod(a.pod.clone()));
            net.addresses.insert(Endpoint::Pod(a.pod.clone()), ip);
        }
        if let Some(p) = providers.iter().find(|p| &p.network == key) {
            for (name, ip) in [(p.host.clone(), p.pe), ("beyond".to_string(), BEYOND.parse()?)] {
                net.endpoints.push(Endpoint::External(name.clone()));
                net.addresses.insert(Endpoint::External(name), ip);
            }
        }
        out.push(net);
    }
    Ok(out)
}

fn expected_grids(
    index: &ClusterIndex,
    plan: &multinet::Plan,
    nets: &[Net],
    providers: &[Provider],
    specs: &[ProbeSpec],
) -> anyhow::Result<Vec<Grid>> {
    let mut out = Vec::new();
    for net in nets {
        let on = net.key.as_ref().map(|k| multinet::network_index(index, plan, k));
        let hosts: BTreeMap<String, Host> = providers
            .iter()
            .filter(|p| Some(&p.network) == net.key.as_ref())
            .flat_map(|p| {
                [
                    (p.host.clone(), Host { address: p.pe, on_link: true }),
                    ("beyond".to_string(), Host { address: BEYOND.parse().expect("a constant"), on_link: false }),
                ]
            })
            .collect();
        for spec in specs {
            let mut allowed = Vec::new();
            for a in &net.endpoints {
                let mut row = Vec::new();
                for b in &net.endpoints {
                    row.push(if a == b || is_beyond(a) {
                        // Nothing is dialled from beyond the PE router (it has no source of
                        // its own there).
                        None
                    } else {
                        match (&on, net.key.as_ref()) {
                            (Some(on), Some(k)) => {
                                multinet::reach::decide(on, plan, k, &hosts, a, b, spec.port, spec.protocol)
                                    .map_err(anyhow::Error::msg)?
                            }
                            _ => Some(cluster_allowed(index, a, b, *spec)?),
                        }
                    });
                }
                allowed.push(row);
            }
            out.push(Grid { network: net.name.clone(), probe: *spec, endpoints: net.endpoints.clone(), allowed });
        }
    }
    Ok(out)
}

fn is_beyond(e: &Endpoint) -> bool {
    matches!(e, Endpoint::External(n) if n == "beyond")
}

fn cluster_allowed(index: &ClusterIndex, a: &Endpoint, b: &Endpoint, spec: ProbeSpec) -> anyhow::Result<bool> {
    let pod = |e: &Endpoint| match e {
        Endpoint::Pod(k) => index.pod_id(k).and_then(|id| index.pod(id)).with_context(|| format!("pod {k}")),
        other => anyhow::bail!("{other} is not on the cluster network here"),
    };
    Ok(semantics::evaluate(index, pod(a)?, pod(b)?, spec.port, spec.protocol).allowed())
}

/// The paths expected to answer that did not, as `network from -> to port`.
fn pending(expected: &[Grid], round: &[Grid]) -> Vec<String> {
    let mut out = Vec::new();
    for (e, r) in expected.iter().zip(round) {
        for (i, a) in e.endpoints.iter().enumerate() {
            for (j, b) in e.endpoints.iter().enumerate() {
                if e.allowed[i][j] == Some(true) && r.allowed[i][j] != Some(true) {
                    out.push(format!("{} {a} -> {b} {}", e.network, e.probe));
                }
            }
        }
    }
    out
}

/// Tries what `expected` decides (where it says `None`, nothing is tried); with
/// `allowed_only`, only what should answer.
async fn tried(live: &Live, nets: &[Net], expected: &[Grid], allowed_only: bool) -> anyhow::Result<Vec<Grid>> {
    let mut out = Vec::new();
    let mut grids = expected.iter();
    for net in nets {
        for _ in 0..expected.iter().filter(|g| g.network == net.name).count() {
            let e = grids.next().context("a grid per network and probe")?;
            let spec = e.probe;
            let mut allowed = Vec::new();
            for (i, a) in net.endpoints.iter().enumerate() {
                let mut row = Vec::new();
                for (j, b) in net.endpoints.iter().enumerate() {
                    let want = e.allowed[i][j];
                    if want.is_none() || (allowed_only && want != Some(true)) {
                        row.push(None);
                        continue;
                    }
                    let addr = SocketAddr::new(net.addresses[b], spec.port);
                    let got = live.dial(a, addr, spec.protocol).await?;
                    // What lies beyond a PE router answers as the router.
                    let want = match b {
                        Endpoint::External(n) if n == "beyond" => net
                            .endpoints
                            .iter()
                            .find(|e| matches!(e, Endpoint::External(h) if h != "beyond"))
                            .map(ToString::to_string)
                            .unwrap_or_default(),
                        _ => b.to_string(),
                    };
                    row.push(Some(got.as_deref() == Some(want.as_str())));
                }
                allowed.push(row);
            }
            out.push(Grid { network: net.name.clone(), probe: spec, endpoints: net.endpoints.clone(), allowed });
        }
    }
    Ok(out)
}

/// Expected and live side by side, per network and probe; whether every verdict agrees.
fn show(expected: &[Grid], live: &[Grid]) -> bool {
    let mut all = true;
    let mut out = String::from("Rows send, columns receive. ✓ answered, ✗ no answer, · not tried.\n");
    for (e, l) in expected.iter().zip(live) {
        let same = e.allowed == l.allowed;
        all &= same;
        let names: Vec<String> = e.endpoints.iter().map(ToString::to_string).collect();
        let width = names.iter().map(|n| n.len()).max().unwrap_or(0);
        let head: String = (1..=names.len()).map(|i| format!("{}", i % 10)).collect::<Vec<_>>().join(" ");
        out.push_str(&format!(
            "\nnetwork {}, {} — live {} expected\n  {:w$}  expected{}live\n  {:w$}  {head}   {head}\n",
            e.network,
            e.probe,
            if same { "equals" } else { "DIFFERS FROM" },
            "",
            " ".repeat(head.len().saturating_sub(5)),
            "",
            w = width + 3
        ));
        let cells = |g: &Grid, i: usize| g.allowed[i].iter().map(|c| mark(*c)).collect::<Vec<_>>().join(" ");
        for (i, name) in names.iter().enumerate() {
            let m = if e.allowed[i] == l.allowed[i] { ' ' } else { '!' };
            out.push_str(&format!("{m} {:>2} {name:<width$}  {}   {}\n", i + 1, cells(e, i), cells(l, i)));
        }
    }
    say(&out);
    all
}

#[derive(Serialize)]
struct JsonResults {
    results: Vec<JsonResult>,
}

#[derive(Serialize)]
struct JsonResult {
    network: String,
    from: String,
    to: String,
    via: &'static str,
    port: u16,
    protocol: &'static str,
    expected: bool,
    live: bool,
}

/// Exactly one JSON object: every verdict tried, expected next to live, with its network.
fn json(expected: &[Grid], live: &[Grid]) -> String {
    let mut results = Vec::new();
    for (e, l) in expected.iter().zip(live) {
        for (i, a) in e.endpoints.iter().enumerate() {
            for (j, b) in e.endpoints.iter().enumerate() {
                if let (Some(x), Some(y)) = (e.allowed[i][j], l.allowed[i][j]) {
                    results.push(JsonResult {
                        network: e.network.clone(),
                        from: a.to_string(),
                        to: b.to_string(),
                        via: "pod",
                        port: e.probe.port,
                        protocol: e.probe.protocol.as_str(),
                        expected: x,
                        live: y,
                    });
                }
            }
        }
    }
    let mut s = serde_json::to_string(&JsonResults { results }).expect("plain data serializes");
    s.push('\n');
    s
}
