//! `stacknet-bench openstack`: starts Keystone, Neutron (ML2/OVN) and Octavia on loopback, then
//! measures against them what the OpenStack backend costs a pod start, with and without port
//! pools, and how many security-group rules the policies take next to one rule per peer
//! address (kuryr-kubernetes' translation).

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::json;
use stacknet_engine::objects::{ClusterObject, Node, Pod};
use stacknet_engine::{Cidr, PolicyEngine};
use stacknet_openstack::secgroups::{self, Family, Remote, SecurityPlan};
use stacknet_openstack::{Cloud, CloudSource, NeutronBackend, NeutronConfig};
use stacknet_sandbox::{OpenStack, OpenStackOptions};

use crate::generator;
use crate::jsonline::line;

pub struct Args {
    pub pods: usize,
    pub nodes: usize,
    pub pool_size: usize,
    pub sg_pods: usize,
    pub policies: usize,
    pub namespaces: usize,
    pub seed: u64,
    /// Services made one at a time through Octavia (0: no Octavia).
    pub services: usize,
}

fn pod_cidr() -> Cidr {
    "10.0.0.0/16".parse().expect("literal")
}

/// The generator's pods, on `nodes` nodes, without addresses: in OpenStack mode a pod's
/// address is its port's, chosen by Neutron.
fn pods(args: &Args, count: usize) -> Vec<Pod> {
    let mut pods = generator::pods(count, args.namespaces, args.seed);
    for (i, p) in pods.iter_mut().enumerate() {
        p.node = Some(format!("node-{}", i % args.nodes));
        p.ips.clear();
    }
    pods
}

fn engine(args: &Args) -> PolicyEngine {
    let mut e = PolicyEngine::new();
    for ns in generator::namespaces(args.namespaces) {
        e.apply(ClusterObject::Namespace(ns));
    }
    for i in 0..args.nodes {
        e.apply(ClusterObject::Node(Node {
            name: format!("node-{i}"),
            uid: None,
            labels: Default::default(),
            pod_cidrs: vec![],
            unschedulable: false,
            provider_id: None,
            addresses: vec![],
        }));
    }
    for p in generator::policies(args.policies, args.namespaces, args.seed) {
        e.apply(ClusterObject::NetworkPolicy(p));
    }
    e
}

/// One rule per peer address instead of per peer group: what kuryr-kubernetes wrote.
fn naive_rules(plan: &SecurityPlan) -> usize {
    let mut members: BTreeMap<&str, usize> = BTreeMap::new();
    for groups in plan.ports.values() {
        for g in groups {
            *members.entry(g.as_str()).or_default() += 1;
        }
    }
    plan.groups
        .values()
        .flat_map(|g| &g.rules)
        .map(|r| match &r.remote {
            Remote::Group(g) => members.get(g.as_str()).copied().unwrap_or(0),
            _ => 1,
        })
        .sum()
}

/// Starts `pods` one at a time through `backend`: each start's Neutron calls, and the total
/// time in milliseconds.
async fn start_pods(
    backend: &NeutronBackend,
    engine: &mut PolicyEngine,
    pods: &[Pod],
) -> anyhow::Result<(Vec<u64>, f64)> {
    let mut calls = Vec::new();
    let started = Instant::now();
    for p in pods {
        engine.apply(ClusterObject::Pod(p.clone()));
        let report = backend.reconcile(engine).await?;
        anyhow::ensure!(report.problems.is_empty(), "starting {}: {:?}", p.key, report.problems);
        anyhow::ensure!(report.ports.contains_key(&p.key), "{} has no port", p.key);
        calls.push(report.calls);
    }
    Ok((calls, started.elapsed().as_secs_f64() * 1000.0))
}

/// The floor of a pod start: what Neutron itself needs for the one call a start with a full
/// pool makes. As many free ports as pods are made beforehand on the pods' network, bound to
/// a node as a pool's are; then each is updated in turn — name, description, device, security
/// group, as a pool take does — and the mean milliseconds per update returned. The ports go
/// afterwards.
async fn floor_ms_per_port(session: &Cloud, count: usize) -> anyhow::Result<f64> {
    let tag = NeutronConfig::new("bench-prefilled", vec![]).tag();
    let network = stacknet_openstack::neutron::networks(session, &tag).await?.into_iter().next();
    let network = network.ok_or_else(|| anyhow::anyhow!("no network of the prefilled run"))?;
    let group = stacknet_openstack::neutron::security_groups(session, &tag).await?.into_iter().next();
    let group = group.ok_or_else(|| anyhow::anyhow!("no security group of the prefilled run"))?;
    let mut ids = Vec::new();
    while ids.len() < count {
        let n = (count - ids.len()).min(32);
        let new: Vec<_> = (0..n)
            .map(|_| stacknet_openstack::neutron::NewPort {
                network_id: &network.id,
                name: "bench-floor",
                description: "bench-floor",
                device_owner: "compute:bench-floor",
                device_id: "",
                host: Some("node-0"),
                security_groups: Vec::new(),
                fixed_ip: None,
                project_id: None,
            })
            .collect();
        ids.extend(stacknet_openstack::neutron::create_ports(session, &new).await?.into_iter().map(|p| p.id));
    }
    let started = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        let changes = json!({
            "name": format!("floor/p{i}"),
            "description": format!("stacknet-bench floor p{i}"),
            "device_id": format!("uid-floor-{i}"),
            "security_groups": [group.id],
        });
        stacknet_openstack::neutron::update_port(session, id, changes).await?;
    }
    let ms = started.elapsed().as_secs_f64() * 1000.0 / count.max(1) as f64;
    for id in &ids {
        stacknet_openstack::neutron::delete(session, "ports", id).await?;
    }
    Ok(ms)
}

/// Security-group rules of ours as Neutron lists them.
async fn neutron_rules(session: &Cloud, cluster: &str) -> anyhow::Result<usize> {
    let tag = NeutronConfig::new(cluster, vec![]).tag();
    let groups = stacknet_openstack::neutron::security_groups(session, &tag).await?;
    Ok(groups.iter().map(|g| g.security_group_rules.len()).sum())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(OpenStack::installed(), "the OpenStack packages are not installed (see .ci/run)");
    anyhow::ensure!(args.nodes > 0 && args.namespaces > 0, "--nodes and --namespaces must be at least 1");
    let begun = Instant::now();
    let cloud = OpenStack::start(OpenStackOptions { octavia: args.services > 0, ..Default::default() })?;
    let source = CloudSource::Named { cloud: "stacknet-test".into(), file: Some(cloud.clouds_yaml()?) };
    let session = Cloud::connect(&source).await?;
    println!(
        "{}",
        line(&[("bench", json!("openstack-cloud")), ("start_s", json!(round(cloud.started_in.as_secs_f64())))])
    );

    let all = pods(&args, args.pods);
    let mut per_pod = Vec::new();
    // No pools; pools kept full in the background while pods start (as the controller does);
    // pools filled beforehand with a port for every pod (the cost of the start alone).
    let prefilled = args.pods.div_ceil(args.nodes) + 1;
    for (cluster, pool_size, background_refill) in
        [("bench-plain", 0, false), ("bench-pools", args.pool_size, true), ("bench-prefilled", prefilled, false)]
    {
        let pools = pool_size > 0;
        let config = NeutronConfig { pool_size, ..NeutronConfig::new(cluster, vec![pod_cidr()]) };
        let backend = std::sync::Arc::new(NeutronBackend::new(session.clone(), config));
        let mut engine = engine(&args);
        // The network, the policies' groups: there before any pod starts.
        let first = backend.reconcile(&engine).await?;
        anyhow::ensure!(first.problems.is_empty(), "{:?}", first.problems);
        let mut refill = (0, 0);
        let background = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut refiller = None;
        if pools {
            let r = backend.refill_pools(&NeutronBackend::nodes_of(&engine)).await?;
            anyhow::ensure!(r.problems.is_empty(), "{:?}", r.problems);
            refill = (r.calls, r.created);
        }
        if background_refill {
            let (b, e, counted) = (backend.clone(), engine.clone(), background.clone());
            refiller = Some(tokio::spawn(async move {
                loop {
                    match b.refill_pools(&NeutronBackend::nodes_of(&e)).await {
                        Ok(r) => {
                            counted.fetch_add(r.calls, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(err) => eprintln!("refill: {err}"),
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }));
        }
        let (mut calls, ms) = start_pods(&backend, &mut engine, &all).await?;
        if let Some(r) = refiller {
            r.abort();
        }
        let in_neutron = neutron_rules(&session, cluster).await?;
        let n = all.len().max(1) as f64;
        per_pod.push((cluster, ms / n));
        let mean = calls.iter().sum::<u64>() as f64 / n;
        // A pod whose labels or named ports are new to the cluster also makes groups for them.
        let port_only = if pools { 1 } else { 2 };
        let with_groups = calls.iter().filter(|c| **c > port_only).count();
        calls.sort_unstable();
        let median = calls.get(calls.len() / 2).copied().unwrap_or_default();
        let null = serde_json::Value::Null;
        println!(
            "{}",
            line(&[
                ("bench", json!("openstack")),
                ("pods", json!(all.len())),
                ("pools", json!(pools)),
                ("neutron_calls_per_pod", json!(round(mean))),
                ("ms_per_pod", json!(round(ms / n))),
                ("neutron_calls_per_pod_median", json!(median)),
                ("neutron_calls_per_pod_max", json!(calls.last().copied().unwrap_or_default())),
                ("pod_starts_making_new_groups", json!(with_groups)),
                ("sg_rules_in_neutron", json!(in_neutron)),
                ("pool_size_per_node", if pools { json!(pool_size) } else { null.clone() }),
                (
                    "refill",
                    json!(if background_refill {
                        "background"
                    } else if pools {
                        "before"
                    } else {
                        "none"
                    })
                ),
                ("pool_fill_calls", if pools { json!(refill.0) } else { null.clone() }),
                ("pool_fill_ports", if pools { json!(refill.1) } else { null.clone() }),
                (
                    "background_refill_calls_per_pod",
                    if background_refill {
                        json!(round(background.load(std::sync::atomic::Ordering::Relaxed) as f64 / n))
                    } else {
                        null
                    },
                ),
            ])
        );
        // Leave the cloud clean for the next run: every pod goes, the pools stay (ours).
        backend.reconcile(&self::engine(&args)).await?;
    }

    let floor = floor_ms_per_port(&session, all.len()).await?;
    let ratio = |c: &str| per_pod.iter().find(|(n, _)| *n == c).map(|(_, ms)| json!(round(ms / floor)));
    println!(
        "{}",
        line(&[
            ("bench", json!("openstack")),
            ("pods", json!(all.len())),
            ("client", json!("floor: a pool take's one port update, issued directly to Neutron")),
            ("ms_per_pod", json!(round(floor))),
            ("no_pools_ratio", ratio("bench-plain").unwrap_or_default()),
            ("background_refill_ratio", ratio("bench-pools").unwrap_or_default()),
            ("prefilled_ratio", ratio("bench-prefilled").unwrap_or_default()),
            ("target_ratio", json!(1.3)),
        ])
    );

    if args.services > 0 {
        services(&args, &cloud, &session).await?;
    }

    // Rules at 10, 200 and `sg_pods` pods, same policies, from the plan the backend writes.
    // Named ports make a rule per number they resolve to: the first 10 generated pods are all
    // web pods (fewer numbers); 10 pods spread over every tier and image generation resolve
    // every number the 500 do.
    let families = [Family::V4];
    let plan_of = |pods: Vec<Pod>| {
        let mut e = engine(&args);
        for p in pods {
            e.apply(ClusterObject::Pod(p));
        }
        secgroups::plan(&e, &families)
    };
    let big_pods = pods(&args, args.sg_pods);
    let spread: Vec<Pod> = (0..10).filter_map(|k| big_pods.get(spread_index(k, args.namespaces)).cloned()).collect();
    let (first10, spread10, mid, big) =
        (plan_of(pods(&args, 10)), plan_of(spread), plan_of(pods(&args, 200)), plan_of(big_pods));
    println!(
        "{}",
        line(&[
            ("bench", json!("openstack-sg")),
            ("pods", json!(args.sg_pods)),
            ("policies", json!(args.policies)),
            ("sg_rules", json!(big.rule_count())),
            ("sg_rules_at_10_pods", json!(spread10.rule_count())),
            ("sg_rules_at_first_10_pods", json!(first10.rule_count())),
            ("sg_rules_at_200_pods", json!(mid.rule_count())),
            ("naive_sg_rules", json!(naive_rules(&big))),
            ("naive_sg_rules_at_10_pods", json!(naive_rules(&spread10))),
            ("naive_sg_rules_at_200_pods", json!(naive_rules(&mid))),
            ("security_groups", json!(big.groups.len())),
        ])
    );
    eprintln!("openstack bench done in {:.0}s", begun.elapsed().as_secs_f64());
    Ok(())
}

/// New Services one at a time: from the reconcile's start to the load balancer ACTIVE (the
/// reconcile waits for it) and its row in the OVN Northbound database.
async fn services(args: &Args, cloud: &OpenStack, session: &Cloud) -> anyhow::Result<()> {
    use stacknet_openstack::octavia::OctaviaBackend;
    let config = NeutronConfig {
        service_cidr: Some("10.96.0.0/12".parse().expect("literal")),
        ..NeutronConfig::new("bench-lb", vec![pod_cidr()])
    };
    let mut engine = engine(args);
    let net = NeutronBackend::new(session.clone(), config.clone()).reconcile(&engine).await?;
    let topology = net.topology.ok_or_else(|| anyhow::anyhow!("no topology"))?;
    let octavia = OctaviaBackend::new(session.clone(), config);
    let mut times = Vec::new();
    for i in 0..args.services {
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: {ns}}}\n\
             spec: {{clusterIP: 10.96.1.{n}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{i}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: s{i}}}}}\n\
             addressType: IPv4\nendpoints: [{{addresses: [10.0.200.{n}], conditions: {{ready: true}}}}, {{addresses: [10.0.201.{n}], conditions: {{ready: true}}}}]\n\
             ports: [{{name: http, port: 8080, protocol: TCP}}]\n",
            ns = generator::namespace_name(0),
            n = i + 1
        );
        for o in stacknet_engine::manifest::parse("service.yaml", &yaml).map_err(|e| anyhow::anyhow!("{e:?}"))?.objects
        {
            engine.apply(o);
        }
        let started = Instant::now();
        let report = octavia.reconcile(engine.index(), &topology).await?;
        anyhow::ensure!(report.problems.is_empty(), "{:?}", report.problems);
        let key = stacknet_engine::objects::ObjectKey::new(generator::namespace_name(0), format!("s{i}"));
        let id = report.load_balancers.get(&key).ok_or_else(|| anyhow::anyhow!("s{i} has no load balancer"))?;
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let vips =
                cloud.ovn.nbctl(&["--bare", "--columns=vips", "find", "Load_Balancer", &format!("name={id}")])?;
            if vips.contains(&format!("10.96.1.{}:80=", i + 1)) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "s{i}: no OVN load balancer after 60 s");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        times.push(started.elapsed().as_secs_f64());
    }
    let mut sorted = times.clone();
    let median = crate::median(&mut sorted);
    println!(
        "{}",
        line(&[
            ("bench", json!("openstack-lb")),
            ("services", json!(args.services)),
            ("active_in_nb_s_median", json!(round(median))),
            ("active_in_nb_s_max", json!(round(sorted.last().copied().unwrap_or_default()))),
        ])
    );
    // Gone again.
    octavia.reconcile(self::engine(args).index(), &topology).await?;
    Ok(())
}

/// The k-th pod of a sample of 10 that takes both image generations (even and odd apps) of
/// every tier: the generator puts pod i in app (i / namespaces) % 4 and tier
/// (i / (namespaces * 4)) % 5.
fn spread_index(k: usize, namespaces: usize) -> usize {
    let tier = k / 2;
    let app = k % 2;
    tier * namespaces * 4 + app * namespaces
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
