//! Configuration: flags, then environment variables (`STACKNET_*`), then a TOML file
//! (`--config`), then defaults — the first that sets a value wins. Every value is checked
//! before anything starts; an error names the setting and where it came from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use stacknet_engine::Cidr;
use stacknet_engine::ipam::IpamConfig;
use stacknet_ovsdb::{Remote, TlsConfig};

use crate::error::Error;

/// `stacknet controller` flags (each also from the environment variable shown).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ControllerArgs {
    /// A TOML file with any of the settings below (keys as the flags, with `_` for `-`).
    #[arg(long, env = "STACKNET_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The cluster id every row is tagged with (default `stacknet`).
    #[arg(long, env = "STACKNET_CLUSTER")]
    pub cluster: Option<String>,
    /// The OVN Northbound database; repeat (or separate with commas) for a clustered one.
    #[arg(long = "nb", env = "STACKNET_NB", value_name = "REMOTE", value_delimiter = ',')]
    pub nb: Vec<String>,
    /// For `ssl:` Northbound remotes: the CA the database's certificate must be signed by
    /// (PEM). With it, `--certificate` and `--private-key`, plaintext `tcp:` remotes are refused.
    /// The files are read at every connection: rotated on disk, they are used without a restart.
    #[arg(long, env = "STACKNET_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Our certificate for `ssl:` remotes (PEM), signed by a CA the database trusts.
    #[arg(long, env = "STACKNET_CERTIFICATE", value_name = "FILE")]
    pub certificate: Option<PathBuf>,
    /// The private key of `--certificate` (PEM).
    #[arg(long, env = "STACKNET_PRIVATE_KEY", value_name = "FILE")]
    pub private_key: Option<PathBuf>,
    /// Take the cluster from this folder of manifests (watched) instead of an API server.
    #[arg(long, env = "STACKNET_MANIFESTS", value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// The pod CIDRs node subnets are cut from, at most one per IP family (default 10.244.0.0/16).
    #[arg(long = "cluster-cidr", env = "STACKNET_CLUSTER_CIDR", value_name = "CIDR", value_delimiter = ',')]
    pub cluster_cidr: Vec<String>,
    /// The prefix length of each node's IPv4 subnet (default 24).
    #[arg(long, env = "STACKNET_NODE_SUBNET_V4", value_name = "LEN")]
    pub node_subnet_v4: Option<u8>,
    /// The prefix length of each node's IPv6 subnet (default 64).
    #[arg(long, env = "STACKNET_NODE_SUBNET_V6", value_name = "LEN")]
    pub node_subnet_v6: Option<u8>,
    /// Where `/metrics`, `/healthz`, `/readyz` and `/events` are served (default 127.0.0.1:9478; port 0: any).
    #[arg(long, env = "STACKNET_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// How often the manifest folder is rescanned, in milliseconds (default 250).
    #[arg(long, env = "STACKNET_POLL_MS", value_name = "MS")]
    pub poll_ms: Option<u64>,
    /// OVN: after this many milliseconds without a message from the Northbound database an
    /// echo is sent, and the connection is dropped if a second such interval passes without
    /// one (OVN's inactivity probe; default 5000; 0: never; else at least 1000). The server
    /// answers nothing while it commits a transaction: raise it when the first write of a
    /// large cluster takes the server longer than twice this.
    #[arg(long, env = "STACKNET_INACTIVITY_PROBE_MS", value_name = "MS")]
    pub inactivity_probe_ms: Option<u64>,
    /// How long changes may keep arriving before a reconcile starts, in milliseconds
    /// (default 20: a burst of events becomes one transaction).
    #[arg(long, env = "STACKNET_COALESCE_MS", value_name = "MS")]
    pub coalesce_ms: Option<u64>,
    /// With the Kubernetes API: hold a Lease so that one replica writes (default true).
    #[arg(long, env = "STACKNET_LEADER_ELECTION", value_name = "BOOL")]
    pub leader_election: Option<bool>,
    /// The namespace of the Lease (default stacknet-system).
    #[arg(long, env = "STACKNET_LEASE_NAMESPACE", value_name = "NS")]
    pub lease_namespace: Option<String>,
    /// This replica's name in the Lease (default: the host name and process id).
    #[arg(long, env = "STACKNET_IDENTITY")]
    pub identity: Option<String>,
    /// OVN: the network the nodes' uplinks are on. Setting it gives every node with an
    /// address in it a gateway router: pods reach beyond the cluster through their own node
    /// (default: unset, pods reach only the cluster).
    #[arg(long, env = "STACKNET_EXTERNAL_CIDR", value_name = "CIDR")]
    pub external_cidr: Option<String>,
    /// OVN: where traffic for beyond the external network goes (the external network's router).
    #[arg(long, env = "STACKNET_EXTERNAL_NEXT_HOP", value_name = "IP")]
    pub external_next_hop: Option<String>,
    /// OVN: the join switch's subnet between the cluster router and the gateway routers
    /// (default 100.64.0.0/16).
    #[arg(long, env = "STACKNET_JOIN_CIDR", value_name = "CIDR")]
    pub join_cidr: Option<String>,
    /// OVN: translate pods' traffic leaving the cluster to their node's address (default true;
    /// false: pod addresses are routed as they are).
    #[arg(long, env = "STACKNET_SNAT", value_name = "BOOL")]
    pub snat: Option<bool>,
    /// OVN: the physical network name of the external switches' localnet ports, which each
    /// node's `ovn-bridge-mappings` maps to its uplink bridge (default external).
    #[arg(long, env = "STACKNET_PHYSNET", value_name = "NAME")]
    pub physnet: Option<String>,
    /// Multus runs on the nodes: NetworkAttachmentDefinitions of other plugins are Multus's
    /// to attach, and a pod selecting one is not refused (default false: a pod selecting a
    /// network nobody attaches gets an AttachmentFailed Event).
    #[arg(long, env = "STACKNET_MULTUS", value_name = "BOOL")]
    pub multus: Option<bool>,
    /// OVN: addresses for LoadBalancer Services (repeat, or separate with commas), answered
    /// on the external network by the gateway routers (default: none).
    #[arg(long = "lb-pool", env = "STACKNET_LB_POOL", value_name = "CIDR", value_delimiter = ',')]
    pub lb_pool: Vec<String>,
    /// Where the network is made: `ovn` (the Northbound database, default) or `openstack`
    /// (Neutron and Octavia; the cloud from `--os-cloud`, else `OS_CLOUD` or the `OS_*`
    /// variables).
    #[arg(long, env = "STACKNET_BACKEND", value_name = "ovn|openstack")]
    pub backend: Option<String>,
    /// OpenStack: the cloud's name in clouds.yaml.
    #[arg(long, env = "STACKNET_OS_CLOUD", value_name = "NAME")]
    pub os_cloud: Option<String>,
    /// OpenStack: a clouds.yaml besides the usual search path.
    #[arg(long, env = "STACKNET_CLOUDS_YAML", value_name = "FILE")]
    pub clouds_yaml: Option<PathBuf>,
    /// The Service CIDR. OVN: each node routes it (with the cluster CIDR) through its
    /// management port (default 10.96.0.0/12, kubeadm's); OpenStack: the VIP subnet of
    /// Octavia's load balancers (default: none, VIPs on the pod network).
    #[arg(long, env = "STACKNET_SERVICE_CIDR", value_name = "CIDR")]
    pub service_cidr: Option<String>,
    /// OpenStack: the external network LoadBalancer Services take floating IPs from.
    #[arg(long, env = "STACKNET_EXTERNAL_NETWORK", value_name = "NAME|ID")]
    pub external_network: Option<String>,
    /// OpenStack: free ports kept per node (0: no pools; default 0).
    #[arg(long, env = "STACKNET_POOL_SIZE", value_name = "N")]
    pub pool_size: Option<usize>,
    /// OpenStack: a network per namespace (subnets cut from a subnet pool of the cluster CIDR)
    /// instead of one shared pod network.
    #[arg(long, env = "STACKNET_NETWORK_PER_NAMESPACE")]
    pub network_per_namespace: bool,
    /// OpenStack: the IPv4 prefix length of a namespace's subnet (default 24; IPv6: 64).
    #[arg(long, env = "STACKNET_NAMESPACE_PREFIX_LEN", value_name = "BITS")]
    pub namespace_prefix_len: Option<u8>,
}

/// The same settings, as a TOML file holds them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    cluster: Option<String>,
    nb: Option<Vec<String>>,
    ca_cert: Option<PathBuf>,
    certificate: Option<PathBuf>,
    private_key: Option<PathBuf>,
    manifests: Option<PathBuf>,
    cluster_cidr: Option<Vec<String>>,
    node_subnet_v4: Option<u8>,
    node_subnet_v6: Option<u8>,
    external_cidr: Option<String>,
    external_next_hop: Option<String>,
    join_cidr: Option<String>,
    snat: Option<bool>,
    physnet: Option<String>,
    lb_pool: Option<Vec<String>>,
    multus: Option<bool>,
    metrics_addr: Option<String>,
    poll_ms: Option<u64>,
    inactivity_probe_ms: Option<u64>,
    coalesce_ms: Option<u64>,
    leader_election: Option<bool>,
    lease_namespace: Option<String>,
    backend: Option<String>,
    os_cloud: Option<String>,
    clouds_yaml: Option<PathBuf>,
    service_cidr: Option<String>,
    external_network: Option<String>,
    pool_size: Option<usize>,
    network_per_namespace: Option<bool>,
    namespace_prefix_len: Option<u8>,
}

/// The OpenStack backend's settings (`--backend openstack`).
#[derive(Debug, Clone)]
pub struct OpenStackOptions {
    /// `None`: `OS_CLOUD`, else the `OS_*` variables.
    pub os_cloud: Option<String>,
    pub clouds_yaml: Option<PathBuf>,
    pub service_cidr: Option<Cidr>,
    pub external_network: Option<String>,
    pub pool_size: usize,
    pub network_per_namespace: bool,
    pub namespace_prefix_len: u8,
}

/// Checked configuration.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub cluster: String,
    pub nb: Vec<Remote>,
    /// Certificates for `ssl:` remotes.
    pub tls: Option<TlsConfig>,
    pub manifests: Option<PathBuf>,
    pub ipam: IpamConfig,
    pub metrics_addr: SocketAddr,
    /// How often the manifest folder is rescanned.
    pub poll: Duration,
    /// OVN: the Northbound connection's inactivity probe (zero: none).
    pub inactivity_probe: Duration,
    pub pace: Pace,
    /// With the Kubernetes API: elect a leader through a Lease in `lease_namespace`.
    pub leader_election: bool,
    pub lease_namespace: String,
    pub identity: String,
    /// The Service CIDR, in OVN mode: routed by nodes through their management ports.
    pub service_cidr: Cidr,
    /// OVN: gateway routers (`None`: pods reach only the cluster).
    pub gateways: Option<GatewaySettings>,
    /// `Some`: the network is made in OpenStack, not in `nb`.
    pub openstack: Option<OpenStackOptions>,
    /// Multus attaches NADs of other plugins (`--multus`).
    pub multus: bool,
}

/// OVN north–south settings (`--external-cidr` and the flags after it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySettings {
    pub external: Cidr,
    pub next_hop: Option<std::net::IpAddr>,
    pub join: Cidr,
    pub snat: bool,
    pub physnet: String,
    /// Addresses for LoadBalancer Services.
    pub lb_pools: Vec<Cidr>,
}

/// The cluster CIDR when none is set.
pub const DEFAULT_CLUSTER_CIDR: &str = "10.244.0.0/16";

/// The join switch's subnet when none is set (as ovn-kubernetes').
pub const DEFAULT_JOIN_CIDR: &str = "100.64.0.0/16";

/// How the reconcile loop paces itself; one set for every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Quiet time that ends a burst of changes (`--coalesce-ms`, default 20 ms): a burst of
    /// events becomes one reconcile.
    pub coalesce: Duration,
    /// The longest a burst may delay its reconcile (ten times `coalesce`, at least 100 ms).
    pub coalesce_max: Duration,
    /// After a failed reconcile the next waits this long, doubling up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// A reconcile at least this often, changes or not: drift is repaired.
    pub resync: Duration,
}

impl Pace {
    pub fn new(coalesce: Duration) -> Pace {
        Pace {
            coalesce,
            coalesce_max: (coalesce * 10).max(Duration::from_millis(100)),
            retry_min: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
            resync: Duration::from_secs(60),
        }
    }
}

/// The Service CIDR in OVN mode when none is set: kubeadm's default.
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";

/// The gateway settings, checked: a join CIDR that overlaps the cluster, Service or external
/// CIDR, or a next hop outside the external network, cannot work.
fn gateway_settings(
    args: &ControllerArgs,
    file: &FileConfig,
    cluster: &[Cidr],
    service: Cidr,
) -> Result<Option<GatewaySettings>, Error> {
    let cidr = |setting: &'static str, text: &str| {
        text.parse::<Cidr>().map_err(|e| Error::setting(setting, format!("{text:?}: {e}")))
    };
    let Some(external) = args.external_cidr.clone().or(file.external_cidr.clone()) else { return Ok(None) };
    let external = cidr("external-cidr", &external)?;
    let join =
        cidr("join-cidr", &args.join_cidr.clone().or(file.join_cidr.clone()).unwrap_or(DEFAULT_JOIN_CIDR.into()))?;
    if !external.is_ipv4() || !join.is_ipv4() {
        return Err(Error::setting("external-cidr", "gateway routers are IPv4 only (external and join CIDRs)"));
    }
    let overlaps = |a: &Cidr, b: &Cidr| a.covers(b) || b.covers(a);
    for (what, other) in
        cluster.iter().map(|c| ("cluster-cidr", c)).chain([("service-cidr", &service), ("external-cidr", &external)])
    {
        if overlaps(&join, other) {
            return Err(Error::setting("join-cidr", format!("{join} overlaps {what} {other}")));
        }
        if what != "external-cidr" && overlaps(&external, other) {
            return Err(Error::setting("external-cidr", format!("{external} overlaps {what} {other}")));
        }
    }
    let next_hop = match args.external_next_hop.clone().or(file.external_next_hop.clone()) {
        None => None,
        Some(t) => {
            let ip: std::net::IpAddr =
                t.parse().map_err(|_| Error::setting("external-next-hop", format!("{t:?} is not an IP address")))?;
            if !external.contains(ip) {
                return Err(Error::setting("external-next-hop", format!("{ip} is not in external-cidr {external}")));
            }
            Some(ip)
        }
    };
    let physnet = args.physnet.clone().or(file.physnet.clone()).unwrap_or_else(|| "external".into());
    if physnet.is_empty() || !physnet.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(Error::setting("physnet", format!("{physnet:?} must be letters, digits, '-' or '_'")));
    }
    let snat = args.snat.or(file.snat).unwrap_or(true);
    let pool_texts =
        if args.lb_pool.is_empty() { file.lb_pool.clone().unwrap_or_default() } else { args.lb_pool.clone() };
    let mut lb_pools = Vec::new();
    for t in &pool_texts {
        let p = cidr("lb-pool", t)?;
        if !p.is_ipv4() {
            return Err(Error::setting("lb-pool", format!("{p}: load balancer addresses are IPv4 only")));
        }
        for (what, other) in
            cluster.iter().map(|c| ("cluster-cidr", c)).chain([("service-cidr", &service), ("join-cidr", &join)])
        {
            if overlaps(&p, other) {
                return Err(Error::setting("lb-pool", format!("{p} overlaps {what} {other}")));
            }
        }
        lb_pools.push(p);
    }
    Ok(Some(GatewaySettings { external, next_hop, join, snat, physnet, lb_pools }))
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

impl ControllerConfig {
    /// A configuration for tests and embedding: the given cluster, NB and folder, defaults
    /// otherwise (metrics on a free loopback port).
    pub fn new(cluster: &str, nb: Vec<Remote>, manifests: Option<&Path>) -> ControllerConfig {
        ControllerConfig {
            cluster: cluster.into(),
            nb,
            tls: None,
            manifests: manifests.map(Path::to_path_buf),
            ipam: IpamConfig::new(vec![DEFAULT_CLUSTER_CIDR.parse().expect("valid")]),
            metrics_addr: "127.0.0.1:0".parse().expect("valid"),
            poll: Duration::from_millis(100),
            inactivity_probe: stacknet_ovsdb::DEFAULT_ECHO_INTERVAL,
            pace: Pace::new(Duration::from_millis(20)),
            leader_election: false,
            multus: false,
            lease_namespace: "stacknet-system".into(),
            identity: default_identity(),
            service_cidr: DEFAULT_SERVICE_CIDR.parse().expect("valid"),
            gateways: None,
            openstack: None,
        }
    }

    pub fn from_args(args: &ControllerArgs) -> Result<ControllerConfig, Error> {
        let file = match &args.config {
            None => FileConfig::default(),
            Some(path) => {
                let bad = |message: String| Error::ConfigFile { path: path.clone(), message };
                let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
                toml::from_str(&text).map_err(|e| bad(e.to_string()))?
            }
        };
        // The gateway settings are checked last, against the CIDRs; the fields below move out.
        let gateway_file = file.clone();
        let from = |flag: bool| if flag { "flag or environment" } else { "config file" };
        let cluster = args.cluster.clone().or(file.cluster).unwrap_or_else(|| "stacknet".into());
        if cluster.is_empty() || !cluster.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(Error::setting("cluster", format!("{cluster:?} must be letters, digits, '-' or '_'")));
        }
        let backend = args.backend.clone().or(file.backend).unwrap_or_else(|| "ovn".into());
        let service_cidr = args
            .service_cidr
            .clone()
            .or(file.service_cidr)
            .map(|t| t.parse::<Cidr>().map_err(|e| Error::setting("service-cidr", format!("{t:?}: {e}"))))
            .transpose()?;
        let openstack = match backend.as_str() {
            "ovn" => None,
            "openstack" => Some(OpenStackOptions {
                os_cloud: args.os_cloud.clone().or(file.os_cloud),
                clouds_yaml: args.clouds_yaml.clone().or(file.clouds_yaml),
                service_cidr,
                external_network: args.external_network.clone().or(file.external_network),
                pool_size: args.pool_size.or(file.pool_size).unwrap_or(0),
                network_per_namespace: args.network_per_namespace || file.network_per_namespace.unwrap_or(false),
                namespace_prefix_len: match args.namespace_prefix_len.or(file.namespace_prefix_len).unwrap_or(24) {
                    n @ 8..=30 => n,
                    n => return Err(Error::setting("namespace-prefix-len", format!("{n} is not between 8 and 30"))),
                },
            }),
            other => {
                return Err(Error::setting("backend", format!("{other:?} is neither \"ovn\" nor \"openstack\"")));
            }
        };
        let nb_flag = !args.nb.is_empty();
        let nb_texts = if nb_flag { args.nb.clone() } else { file.nb.unwrap_or_default() };
        if nb_texts.is_empty() && openstack.is_none() {
            return Err(Error::setting(
                "nb",
                "the OVN Northbound database is required (--nb unix:PATH or tcp:HOST:PORT)",
            ));
        }
        // An entry may itself be a comma-separated list (OVN's form for a cluster's members).
        let nb = nb_texts
            .iter()
            .flat_map(|t| t.split(',').map(str::trim).filter(|t| !t.is_empty()))
            .map(|t| t.parse::<Remote>().map_err(|e| Error::setting(format!("nb ({})", from(nb_flag)), e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let tls = TlsConfig::from_files(
            args.ca_cert.clone().or(file.ca_cert),
            args.certificate.clone().or(file.certificate),
            args.private_key.clone().or(file.private_key),
        )
        .map_err(|e| Error::setting("ca-cert, certificate, private-key", e))?;
        stacknet_ovsdb::check_transport(&nb, tls.as_ref()).map_err(|e| Error::setting("nb", e))?;
        if let Some(tls) = &tls {
            tls.check().map_err(|e| Error::setting("ca-cert, certificate, private-key", e.to_string()))?;
        }
        let cidr_flag = !args.cluster_cidr.is_empty();
        let cidr_texts = if cidr_flag {
            args.cluster_cidr.clone()
        } else {
            file.cluster_cidr.unwrap_or_else(|| vec![DEFAULT_CLUSTER_CIDR.into()])
        };
        let cidrs = cidr_texts
            .iter()
            .map(|t| {
                t.parse::<Cidr>()
                    .map_err(|e| Error::setting(format!("cluster-cidr ({})", from(cidr_flag)), format!("{t:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut ipam = IpamConfig::new(cidrs);
        ipam.node_prefix_v4 = args.node_subnet_v4.or(file.node_subnet_v4).unwrap_or(24);
        ipam.node_prefix_v6 = args.node_subnet_v6.or(file.node_subnet_v6).unwrap_or(64);
        ipam.validate().map_err(|e| Error::setting(e.setting, e.message))?;
        if let Some(o) = openstack.as_ref().filter(|o| o.network_per_namespace) {
            // Each namespace's subnet is cut from a cluster CIDR: it must be smaller than it.
            let too_big =
                ipam.cluster.iter().find(|c| c.network().is_ipv4() && c.prefix_len() >= o.namespace_prefix_len);
            if let Some(c) = too_big {
                return Err(Error::setting(
                    "namespace-prefix-len",
                    format!(
                        "/{} does not fit in cluster-cidr {c} (it must be longer than /{})",
                        o.namespace_prefix_len,
                        c.prefix_len()
                    ),
                ));
            }
        }
        let service_cidr = match service_cidr {
            Some(c) => c,
            None => DEFAULT_SERVICE_CIDR.parse().expect("valid"),
        };
        let gateways = gateway_settings(args, &gateway_file, &ipam.cluster, service_cidr)?;
        let addr_text = args.metrics_addr.clone().or(file.metrics_addr).unwrap_or_else(|| "127.0.0.1:9478".into());
        let metrics_addr = addr_text.parse().map_err(|_| {
            Error::setting("metrics-addr", format!("{addr_text:?} is not an address:port (e.g. 127.0.0.1:9478)"))
        })?;
        let poll = Duration::from_millis(args.poll_ms.or(file.poll_ms).unwrap_or(250).clamp(10, 60_000));
        let probe = args
            .inactivity_probe_ms
            .or(file.inactivity_probe_ms)
            .unwrap_or(stacknet_ovsdb::DEFAULT_ECHO_INTERVAL.as_millis() as u64);
        if (1..1000).contains(&probe) {
            return Err(Error::setting(
                "inactivity-probe-ms",
                format!("{probe} is too short: 0 (never probe) or at least 1000"),
            ));
        }
        let coalesce = Duration::from_millis(args.coalesce_ms.or(file.coalesce_ms).unwrap_or(20).min(10_000));
        Ok(ControllerConfig {
            cluster,
            nb,
            tls,
            manifests: args.manifests.clone().or(file.manifests),
            ipam,
            metrics_addr,
            poll,
            inactivity_probe: Duration::from_millis(probe),
            pace: Pace::new(coalesce),
            leader_election: args.leader_election.or(file.leader_election).unwrap_or(true),
            multus: args.multus.or(file.multus).unwrap_or(false),
            lease_namespace: args
                .lease_namespace
                .clone()
                .or(file.lease_namespace)
                .unwrap_or_else(|| "stacknet-system".into()),
            identity: args.identity.clone().unwrap_or_else(default_identity),
            service_cidr,
            gateways,
            openstack,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ControllerArgs {
        ControllerArgs { nb: vec!["unix:/x/nb.sock".into()], ..ControllerArgs::default() }
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "cluster = \"from-file\"\npoll_ms = 42\ncluster_cidr = [\"10.9.0.0/16\"]\n").unwrap();
        let mut a = args();
        a.config = Some(file.clone());
        let c = ControllerConfig::from_args(&a).unwrap();
        assert_eq!(
            (c.cluster.as_str(), c.poll, c.ipam.cluster[0].to_string()),
            ("from-file", Duration::from_millis(42), "10.9.0.0/16".into())
        );
        a.cluster = Some("from-flag".into());
        assert_eq!(ControllerConfig::from_args(&a).unwrap().cluster, "from-flag");
        assert_eq!(ControllerConfig::from_args(&args()).unwrap().metrics_addr.port(), 9478);
    }

    #[test]
    fn the_inactivity_probe_is_off_or_at_least_a_second() {
        assert_eq!(ControllerConfig::from_args(&args()).unwrap().inactivity_probe, Duration::from_secs(5));
        let with = |ms| ControllerConfig::from_args(&ControllerArgs { inactivity_probe_ms: Some(ms), ..args() });
        assert_eq!(with(0).unwrap().inactivity_probe, Duration::ZERO);
        assert_eq!(with(60_000).unwrap().inactivity_probe, Duration::from_secs(60));
        let e = with(500).unwrap_err().to_string();
        assert!(e.contains("inactivity-probe-ms") && e.contains("at least 1000"), "{e}");
    }

    #[test]
    fn the_openstack_backend_needs_no_northbound_database() {
        let a = ControllerArgs {
            backend: Some("openstack".into()),
            os_cloud: Some("mine".into()),
            service_cidr: Some("10.96.0.0/12".into()),
            pool_size: Some(8),
            ..ControllerArgs::default()
        };
        let c = ControllerConfig::from_args(&a).unwrap();
        let o = c.openstack.expect("openstack settings");
        assert_eq!((o.os_cloud.as_deref(), o.pool_size), (Some("mine"), 8));
        assert_eq!(o.service_cidr.unwrap().to_string(), "10.96.0.0/12");
        assert!(c.nb.is_empty());
        assert_eq!((o.network_per_namespace, o.namespace_prefix_len), (false, 24));
        let per_ns = ControllerArgs { network_per_namespace: true, namespace_prefix_len: Some(26), ..a.clone() };
        let o = ControllerConfig::from_args(&per_ns).unwrap().openstack.unwrap();
        assert_eq!((o.network_per_namespace, o.namespace_prefix_len), (true, 26));
        let bad = ControllerArgs { namespace_prefix_len: Some(31), ..a.clone() };
        let e = ControllerConfig::from_args(&bad).unwrap_err().to_string();
        assert!(e.starts_with("namespace-prefix-len: 31"), "{e}");
        let wide = ControllerArgs {
            network_per_namespace: true,
            namespace_prefix_len: Some(16),
            cluster_cidr: vec!["10.48.0.0/16".into()],
            ..a.clone()
        };
        let e = ControllerConfig::from_args(&wide).unwrap_err().to_string();
        assert_eq!(
            e,
            "namespace-prefix-len: /16 does not fit in cluster-cidr 10.48.0.0/16 (it must be longer than /16)"
        );
        // Without networks per namespace the length is not used, so it is not checked.
        assert!(ControllerConfig::from_args(&ControllerArgs { network_per_namespace: false, ..wide }).is_ok());
    }

    #[test]
    fn gateway_settings_default_and_bad_ones_are_named() {
        assert_eq!(ControllerConfig::from_args(&args()).unwrap().gateways, None, "no external CIDR, no gateways");
        let mut a = args();
        a.external_cidr = Some("172.30.0.0/24".into());
        let g = ControllerConfig::from_args(&a).unwrap().gateways.unwrap();
        assert_eq!(
            (g.join.to_string(), g.snat, g.physnet.as_str(), g.next_hop),
            ("100.64.0.0/16".into(), true, "external", None)
        );
        let err = |f: &dyn Fn(&mut ControllerArgs)| {
            let mut a = args();
            a.external_cidr = Some("172.30.0.0/24".into());
            f(&mut a);
            ControllerConfig::from_args(&a).unwrap_err().to_string()
        };
        assert!(err(&|a| a.external_cidr = Some("10.244.7.0/24".into())).contains("overlaps cluster-cidr"));
        assert!(
            err(&|a| a.join_cidr = Some("10.96.0.0/16".into()))
                .starts_with("join-cidr: 10.96.0.0/16 overlaps service-cidr")
        );
        assert!(err(&|a| a.join_cidr = Some("172.30.0.0/16".into())).contains("overlaps external-cidr"));
        assert!(
            err(&|a| a.external_next_hop = Some("10.1.1.1".into()))
                .starts_with("external-next-hop: 10.1.1.1 is not in")
        );
        assert!(err(&|a| a.external_next_hop = Some("gw".into())).starts_with("external-next-hop"));
        assert!(err(&|a| a.physnet = Some("a:b".into())).starts_with("physnet"));
        assert!(err(&|a| a.external_cidr = Some("fd00::/64".into())).contains("IPv4 only"));
        assert!(
            err(&|a| a.lb_pool = vec!["10.96.1.0/24".into()])
                .starts_with("lb-pool: 10.96.1.0/24 overlaps service-cidr")
        );
        assert!(err(&|a| a.lb_pool = vec!["nope".into()]).starts_with("lb-pool"));
    }

    #[test]
    fn a_clusters_members_are_a_list_or_one_comma_separated_entry() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("stacknet.toml");
        std::fs::write(&file, "nb = [\"unix:/a, unix:/b\", \"unix:/c\"]\n").unwrap();
        let c =
            ControllerConfig::from_args(&ControllerArgs { config: Some(file), ..ControllerArgs::default() }).unwrap();
        assert_eq!(c.nb, Remote::parse_list("unix:/a,unix:/b,unix:/c").unwrap());
        let bad = ControllerArgs { nb: vec!["unix:/a,http://b".into()], ..ControllerArgs::default() };
        assert!(ControllerConfig::from_args(&bad).unwrap_err().to_string().starts_with("nb (flag or environment)"));
    }

    #[test]
    fn bad_settings_are_named() {
        let err = |f: &dyn Fn(&mut ControllerArgs)| {
            let mut a = args();
            f(&mut a);
            ControllerConfig::from_args(&a).unwrap_err().to_string()
        };
        assert!(err(&|a| a.nb.clear()).starts_with("nb:"));
        assert!(err(&|a| a.nb = vec!["http://x".into()]).starts_with("nb (flag or environment)"));
        assert!(err(&|a| a.cluster_cidr = vec!["10.0.0.0/33".into()]).starts_with("cluster-cidr"));
        assert!(err(&|a| a.node_subnet_v4 = Some(8)).contains("node subnet size"));
        assert!(err(&|a| a.metrics_addr = Some("nowhere".into())).starts_with("metrics-addr"));
        assert!(err(&|a| a.cluster = Some("a b".into())).starts_with("cluster:"));
        assert!(err(&|a| a.backend = Some("nsx".into())).starts_with("backend:"));
        assert!(
            err(&|a| {
                a.backend = Some("openstack".into());
                a.service_cidr = Some("10.96.0.0/40".into());
            })
            .starts_with("service-cidr:")
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "clusterr = \"typo\"\n").unwrap();
        let e = err(&|a| a.config = Some(file.clone()));
        assert!(e.contains("c.toml") && e.contains("clusterr"), "{e}");
    }
}
