//! Neutron resources as stacknet reads and writes them, and the calls that do it.
//!
//! Neutron (Zed, as packaged here) takes no tags at creation: every object is created with
//! our ownership marker in its `description` (atomic with the object), then tagged. Tags make
//! our objects cheap to list; the description is what proves an object is ours, so one left
//! untagged by a crash between the two calls is still found, adopted or removed.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::cloud::{Call, Cloud, Error, Service};

const N: Service = Service::Network;
/// List page size.
const PAGE: u32 = 500;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Network {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub subnets: Vec<String>,
    #[serde(default)]
    pub project_id: String,
    /// `provider:physical_network` (admins see it; `None` on an overlay network).
    #[serde(default, rename = "provider:physical_network")]
    pub physical_network: Option<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Subnet {
    pub id: String,
    pub network_id: String,
    pub cidr: String,
    #[serde(default)]
    pub gateway_ip: Option<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct FixedIp {
    pub subnet_id: String,
    pub ip_address: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Port {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub network_id: String,
    pub mac_address: String,
    #[serde(default)]
    pub fixed_ips: Vec<FixedIp>,
    #[serde(default)]
    pub security_groups: Vec<String>,
    #[serde(default)]
    pub device_id: String,
    #[serde(default)]
    pub device_owner: String,
    #[serde(rename = "binding:host_id", default)]
    pub host: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The Keystone project it counts against.
    #[serde(default)]
    pub project_id: String,
    /// `None` when the port-security extension is off.
    #[serde(default)]
    pub port_security_enabled: Option<bool>,
    /// `normal`, `direct` (SR-IOV), ... (`None`: not shown, i.e. `normal`).
    #[serde(rename = "binding:vnic_type", default)]
    pub vnic_type: Option<String>,
    /// What the host told the plug-in (an SR-IOV port: its virtual function).
    #[serde(rename = "binding:profile", default)]
    pub profile: Option<Value>,
}

impl Port {
    /// The host it is bound to (Neutron answers `""` for none).
    pub fn bound_host(&self) -> Option<&str> {
        self.host.as_deref().filter(|h| !h.is_empty())
    }

    /// Its `binding:vnic_type`, `normal` when not shown.
    pub fn vnic(&self) -> &str {
        self.vnic_type.as_deref().unwrap_or("normal")
    }

    /// Its `binding:profile`, `None` when empty.
    pub fn binding_profile(&self) -> Option<&Value> {
        self.profile.as_ref().filter(|p| p.as_object().is_some_and(|m| !m.is_empty()))
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub security_group_id: String,
    pub direction: String,
    pub ethertype: String,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub port_range_min: Option<u16>,
    #[serde(default)]
    pub port_range_max: Option<u16>,
    #[serde(default)]
    pub remote_group_id: Option<String>,
    #[serde(default)]
    pub remote_ip_prefix: Option<String>,
    #[serde(default)]
    pub remote_address_group_id: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct SecurityGroup {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub security_group_rules: Vec<Rule>,
}

/// A rule to create (remote group already resolved to its Neutron id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NewRule {
    pub direction: &'static str,
    pub ethertype: &'static str,
    pub protocol: Option<&'static str>,
    pub ports: Option<(u16, u16)>,
    pub remote_group_id: Option<String>,
    pub remote_ip_prefix: Option<String>,
}

impl NewRule {
    fn body(&self, group: &str, description: &str) -> Value {
        let mut r = json!({
            "security_group_id": group,
            "direction": self.direction,
            "ethertype": self.ethertype,
            "description": description,
        });
        if let Some(p) = self.protocol {
            r["protocol"] = json!(p);
        }
        if let Some((a, b)) = self.ports {
            r["port_range_min"] = json!(a);
            r["port_range_max"] = json!(b);
        }
        if let Some(g) = &self.remote_group_id {
            r["remote_group_id"] = json!(g);
        }
        if let Some(c) = &self.remote_ip_prefix {
            r["remote_ip_prefix"] = json!(c);
        }
        r
    }

    /// The same rule as Neutron holds it (`protocol` may come back as a number; a prefix as
    /// written or normalized).
    pub fn matches(&self, r: &Rule) -> bool {
        let proto = r.protocol.as_deref().map(|p| match p {
            "6" => "tcp",
            "17" => "udp",
            "132" => "sctp",
            other => other,
        });
        let ports = match (r.port_range_min, r.port_range_max) {
            (Some(a), Some(b)) if (a, b) != (1, 65535) => Some((a, b)),
            (Some(a), None) => Some((a, a)),
            _ => None,
        };
        let prefix = r.remote_ip_prefix.as_deref().map(|p| {
            let p = p.parse::<stacknet_engine::Cidr>().map(|c| c.to_string()).unwrap_or_else(|_| p.to_string());
            // A rule for "anywhere" may be stored with 0.0.0.0/0 or ::/0 as its prefix.
            if p == "0.0.0.0/0" || p == "::/0" { String::new() } else { p }
        });
        let prefix = prefix.filter(|p| !p.is_empty());
        self.direction == r.direction
            && self.ethertype == r.ethertype
            && self.protocol == proto
            && self.ports == ports
            && self.remote_group_id == r.remote_group_id
            && self.remote_ip_prefix == prefix
            && r.remote_address_group_id.is_none()
    }
}

/// Lists with a tag filter (all of them must be present).
async fn list<T: serde::de::DeserializeOwned + Send + 'static>(
    cloud: &Cloud,
    path: &str,
    key: &'static str,
    filters: &[(&str, String)],
) -> Result<Vec<T>, Error> {
    let mut call = Call::get(N, path).answer(key);
    for (k, v) in filters {
        call = call.query(k, v);
    }
    cloud.list(call, PAGE).await
}

/// Any object, as far as its ownership goes.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Object {
    pub id: String,
    #[serde(default)]
    pub description: String,
}

/// The collections whose objects carry our marker and tag (ports are found by owner), with
/// the key their lists answer under.
pub const TAGGED_COLLECTIONS: &[(&str, &str)] = &[
    ("security-groups", "security_groups"),
    ("networks", "networks"),
    ("subnets", "subnets"),
    ("routers", "routers"),
    ("subnetpools", "subnetpools"),
    ("floatingips", "floatingips"),
];

/// The objects of a collection that lack `tag` (Neutron filters: ours, tagged, are not sent).
pub async fn untagged(cloud: &Cloud, collection: &str, key: &'static str, tag: &str) -> Result<Vec<Object>, Error> {
    let filters = [("not-tags", tag.to_string()), ("fields", "id".into()), ("fields", "description".into())];
    list(cloud, collection, key, &filters).await
}

pub async fn networks(cloud: &Cloud, tag: &str) -> Result<Vec<Network>, Error> {
    list(cloud, "networks", "networks", &[("tags", tag.to_string())]).await
}

pub async fn subnets(cloud: &Cloud, tag: &str) -> Result<Vec<Subnet>, Error> {
    list(cloud, "subnets", "subnets", &[("tags", tag.to_string())]).await
}

pub async fn security_groups(cloud: &Cloud, tag: &str) -> Result<Vec<SecurityGroup>, Error> {
    list(cloud, "security-groups", "security_groups", &[("tags", tag.to_string())]).await
}

/// Ports by `device_owner` (ours carry our own): tagged or not.
pub async fn ports_owned_by(cloud: &Cloud, device_owner: &str) -> Result<Vec<Port>, Error> {
    list(cloud, "ports", "ports", &[("device_owner", device_owner.to_string())]).await
}

pub async fn set_tags(cloud: &Cloud, collection: &str, id: &str, tags: &[String]) -> Result<(), Error> {
    let _: Value = cloud.call(Call::put(N, format!("{collection}/{id}/tags")).body("tags", json!(tags))).await?;
    Ok(())
}

/// A network; `project`: the Keystone project it is made in (`None`: the session's).
pub async fn create_network(
    cloud: &Cloud,
    name: &str,
    description: &str,
    project: Option<&str>,
) -> Result<Network, Error> {
    let mut body = json!({"name": name, "description": description, "port_security_enabled": true});
    if let Some(p) = project {
        body["project_id"] = json!(p);
    }
    cloud.call(Call::post(N, "networks").body("network", body).answer("network")).await
}

/// A subnet; `gateway`: the router's address on it (`None`: Neutron's default, the first).
pub async fn create_subnet(
    cloud: &Cloud,
    network: &str,
    name: &str,
    cidr: &str,
    gateway: Option<&str>,
    description: &str,
) -> Result<Subnet, Error> {
    let version = if cidr.contains(':') { 6 } else { 4 };
    let mut body = json!({"network_id": network, "name": name, "cidr": cidr, "ip_version": version,
                          "description": description, "enable_dhcp": false});
    if let Some(g) = gateway {
        body["gateway_ip"] = json!(g);
    }
    cloud.call(Call::post(N, "subnets").body("subnet", body).answer("subnet")).await
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Router {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub external_gateway_info: Option<Value>,
}

impl Router {
    /// The external network the router's gateway is on.
    pub fn gateway_network(&self) -> Option<&str> {
        self.external_gateway_info.as_ref().and_then(|g| g["network_id"].as_str())
    }
}

/// Puts the router's gateway on `network` (an external network).
pub async fn set_router_gateway(cloud: &Cloud, router: &str, network: &str) -> Result<Router, Error> {
    cloud
        .call(
            Call::put(N, format!("routers/{router}"))
                .body("router", json!({"external_gateway_info": {"network_id": network}}))
                .answer("router"),
        )
        .await
}

/// Whether `s` has the form of a Neutron id (a UUID): only those are looked up by id (a name
/// goes in a query, never in a path).
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == '-' } else { c.is_ascii_hexdigit() })
}

/// The networks whose id (when `name_or_id` is one) or else name is `name_or_id`: one when
/// it is an id, any number when it is a name.
pub async fn networks_named(cloud: &Cloud, name_or_id: &str) -> Result<Vec<Network>, Error> {
    if is_uuid(name_or_id) {
        match cloud.call(Call::get(N, format!("networks/{name_or_id}")).answer("network")).await {
            Ok(n) => return Ok(vec![n]),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    list(cloud, "networks", "networks", &[("name", name_or_id.to_string())]).await
}

/// A network's subnets, whoever's they are.
pub async fn subnets_of(cloud: &Cloud, network: &str) -> Result<Vec<Subnet>, Error> {
    list(cloud, "subnets", "subnets", &[("network_id", network.to_string())]).await
}

/// The security groups of `project` (`None`: any) whose id (when `name_or_id` is one) or else
/// name is `name_or_id`.
pub async fn security_groups_named(
    cloud: &Cloud,
    name_or_id: &str,
    project: Option<&str>,
) -> Result<Vec<SecurityGroup>, Error> {
    let mut filters = Vec::new();
    if let Some(p) = project {
        filters.push(("project_id", p.to_string()));
    }
    if is_uuid(name_or_id) {
        let mut by_id = filters.clone();
        by_id.push(("id", name_or_id.to_string()));
        let found: Vec<SecurityGroup> = list(cloud, "security-groups", "security_groups", &by_id).await?;
        if !found.is_empty() {
            return Ok(found);
        }
    }
    filters.push(("name", name_or_id.to_string()));
    list(cloud, "security-groups", "security_groups", &filters).await
}

/// A network by id or, failing that, by name (exactly one).
pub async fn find_network(cloud: &Cloud, name_or_id: &str) -> Result<Network, Error> {
    match cloud.call(Call::get(N, format!("networks/{name_or_id}")).answer("network")).await {
        Err(e) if e.is_not_found() => {}
        r => return r,
    }
    let mut found: Vec<Network> = list(cloud, "networks", "networks", &[("name", name_or_id.to_string())]).await?;
    match found.len() {
        1 => Ok(found.remove(0)),
        n => Err(Error::Config(format!(
            "external network {name_or_id:?}: {} networks have that name or id",
            if n == 0 { "no".to_string() } else { n.to_string() }
        ))),
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct FloatingIp {
    pub id: String,
    pub floating_ip_address: String,
    #[serde(default)]
    pub port_id: Option<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

pub async fn floating_ips(cloud: &Cloud, tag: &str) -> Result<Vec<FloatingIp>, Error> {
    list(cloud, "floatingips", "floatingips", &[("tags", tag.to_string())]).await
}

pub async fn create_floating_ip(
    cloud: &Cloud,
    network: &str,
    port: &str,
    description: &str,
) -> Result<FloatingIp, Error> {
    let body = json!({"floating_network_id": network, "port_id": port, "description": description});
    cloud.call(Call::post(N, "floatingips").body("floatingip", body).answer("floatingip")).await
}

pub async fn associate_floating_ip(cloud: &Cloud, id: &str, port: &str) -> Result<FloatingIp, Error> {
    cloud
        .call(
            Call::put(N, format!("floatingips/{id}")).body("floatingip", json!({"port_id": port})).answer("floatingip"),
        )
        .await
}

pub async fn routers(cloud: &Cloud, tag: &str) -> Result<Vec<Router>, Error> {
    list(cloud, "routers", "routers", &[("tags", tag.to_string())]).await
}

pub async fn create_router(cloud: &Cloud, name: &str, description: &str) -> Result<Router, Error> {
    cloud
        .call(
            Call::post(N, "routers").body("router", json!({"name": name, "description": description})).answer("router"),
        )
        .await
}

/// The subnets a router has an interface on (its ports' fixed addresses).
pub async fn router_subnets(cloud: &Cloud, router: &str) -> Result<Vec<String>, Error> {
    let ports: Vec<Port> = list(cloud, "ports", "ports", &[("device_id", router.to_string())]).await?;
    Ok(ports.iter().flat_map(|p| p.fixed_ips.iter().map(|f| f.subnet_id.clone())).collect())
}

pub async fn add_router_interface(cloud: &Cloud, router: &str, subnet: &str) -> Result<(), Error> {
    let _: Value = cloud
        .call(Call::put(N, format!("routers/{router}/add_router_interface")).body("subnet_id", json!(subnet)))
        .await?;
    Ok(())
}

pub async fn delete(cloud: &Cloud, collection: &str, id: &str) -> Result<(), Error> {
    match cloud.call_empty(Call::delete(N, format!("{collection}/{id}"))).await {
        // Already gone: what we wanted.
        Err(e) if e.is_not_found() => Ok(()),
        r => r,
    }
}

pub async fn create_security_group(cloud: &Cloud, name: &str, description: &str) -> Result<SecurityGroup, Error> {
    cloud
        .call(
            Call::post(N, "security-groups")
                .body("security_group", json!({"name": name, "description": description, "stateful": true}))
                .answer("security_group"),
        )
        .await
}

/// Creates rules in one atomic call.
pub async fn create_rules(cloud: &Cloud, group: &str, rules: &[(NewRule, String)]) -> Result<Vec<Rule>, Error> {
    if rules.is_empty() {
        return Ok(Vec::new());
    }
    let bodies: Vec<Value> = rules.iter().map(|(r, d)| r.body(group, d)).collect();
    cloud
        .call(
            Call::post(N, "security-group-rules")
                .body("security_group_rules", json!(bodies))
                .answer("security_group_rules"),
        )
        .await
}

/// What a new port is.
#[derive(Debug, Clone)]
pub struct NewPort<'a> {
    pub network_id: &'a str,
    pub name: &'a str,
    pub description: &'a str,
    pub device_owner: &'a str,
    pub device_id: &'a str,
    pub host: Option<&'a str>,
    pub security_groups: Vec<String>,
    /// An address the pod already has (kept), on `subnet`.
    pub fixed_ip: Option<(&'a str, String)>,
    /// The Keystone project it is made in (`None`: the session's).
    pub project_id: Option<&'a str>,
}

fn port_body(p: &NewPort<'_>) -> Value {
    let mut body = json!({
        "network_id": p.network_id,
        "name": p.name,
        "description": p.description,
        "device_owner": p.device_owner,
        "device_id": p.device_id,
        "security_groups": p.security_groups,
        "port_security_enabled": true,
    });
    if let Some(h) = p.host {
        body["binding:host_id"] = json!(h);
    }
    if let Some((subnet, ip)) = &p.fixed_ip {
        body["fixed_ips"] = json!([{"subnet_id": subnet, "ip_address": ip}]);
    }
    if let Some(project) = p.project_id {
        body["project_id"] = json!(project);
    }
    body
}

pub async fn create_port(cloud: &Cloud, p: &NewPort<'_>) -> Result<Port, Error> {
    create_port_with(cloud, port_body(p)).await
}

/// A port from its whole body (`{"port": body}`).
pub async fn create_port_with(cloud: &Cloud, body: Value) -> Result<Port, Error> {
    cloud.call(Call::post(N, "ports").body("port", body).answer("port")).await
}

/// Creates ports in one call (Neutron makes all or none).
pub async fn create_ports(cloud: &Cloud, ports: &[NewPort<'_>]) -> Result<Vec<Port>, Error> {
    if ports.is_empty() {
        return Ok(Vec::new());
    }
    let bodies: Vec<Value> = ports.iter().map(port_body).collect();
    cloud.call(Call::post(N, "ports").body("ports", json!(bodies)).answer("ports")).await
}

/// How many more ports the project may have (`None`: no limit).
pub async fn port_headroom(cloud: &Cloud, project: &str) -> Result<Option<u64>, Error> {
    let q: Value = cloud.call(Call::get(N, format!("quotas/{project}/details")).answer("quota")).await?;
    let port = &q["port"];
    let limit = port["limit"].as_i64().unwrap_or(-1);
    if limit < 0 {
        return Ok(None);
    }
    let used = port["used"].as_i64().unwrap_or(0) + port["reserved"].as_i64().unwrap_or(0);
    Ok(Some((limit - used).max(0) as u64))
}

pub async fn update_port(cloud: &Cloud, id: &str, changes: Value) -> Result<Port, Error> {
    cloud.call(Call::put(N, format!("ports/{id}")).body("port", changes).answer("port")).await
}

/// A subnet pool: where per-namespace subnets are cut from (Neutron picks a free prefix).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct SubnetPool {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

pub async fn subnet_pools(cloud: &Cloud, tag: &str) -> Result<Vec<SubnetPool>, Error> {
    list(cloud, "subnetpools", "subnetpools", &[("tags", tag.to_string())]).await
}

pub async fn create_subnet_pool(
    cloud: &Cloud,
    name: &str,
    prefix: &str,
    default_prefixlen: u8,
    description: &str,
) -> Result<SubnetPool, Error> {
    let body = json!({"name": name, "prefixes": [prefix], "default_prefixlen": default_prefixlen,
                      "description": description});
    cloud.call(Call::post(N, "subnetpools").body("subnetpool", body).answer("subnetpool")).await
}

/// A subnet whose prefix Neutron cuts from `pool` (the first free one of `prefixlen`), in
/// its network's project.
pub async fn create_subnet_from_pool(
    cloud: &Cloud,
    network: &Network,
    name: &str,
    pool: &str,
    prefixlen: u8,
    ip_version: u8,
    description: &str,
) -> Result<Subnet, Error> {
    let mut body = json!({"network_id": network.id, "name": name, "subnetpool_id": pool, "prefixlen": prefixlen,
                          "ip_version": ip_version, "description": description, "enable_dhcp": false});
    if !network.project_id.is_empty() {
        body["project_id"] = json!(network.project_id);
    }
    cloud.call(Call::post(N, "subnets").body("subnet", body).answer("subnet")).await
}

pub async fn remove_router_interface(cloud: &Cloud, router: &str, subnet: &str) -> Result<(), Error> {
    match cloud
        .call::<Value>(
            Call::put(N, format!("routers/{router}/remove_router_interface")).body("subnet_id", json!(subnet)),
        )
        .await
    {
        // Not (or no longer) attached: what we wanted.
        Err(e) if e.is_not_found() => Ok(()),
        r => r.map(|_| ()),
    }
}

/// Every port carrying our tag, whatever its owner: a pod's port on a trunk is
/// `trunk:subport`-owned (Neutron's trunk driver rewrites the owner), and owner-less again
/// once taken off the trunk.
pub async fn tagged_ports(cloud: &Cloud, tag: &str) -> Result<Vec<Port>, Error> {
    list(cloud, "ports", "ports", &[("tags", tag.to_string())]).await
}

/// Ports by id, in one call.
pub async fn ports_by_id(cloud: &Cloud, ids: &[String]) -> Result<Vec<Port>, Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let filters: Vec<(&str, String)> = ids.iter().map(|id| ("id", id.clone())).collect();
    list(cloud, "ports", "ports", &filters).await
}

/// Trunk subports carry VLAN ids: 1 to 4094.
pub const VLAN_IDS: std::ops::RangeInclusive<u16> = 1..=4094;

/// A port on a trunk: its VLAN on the trunk's parent port.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct SubPort {
    pub port_id: String,
    pub segmentation_id: u16,
    #[serde(default)]
    pub segmentation_type: String,
}

/// A VM's trunk (Neutron's trunk extension; `openstack_sdk` has no trunk calls, so these
/// are our own endpoint definitions like every other call here).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Trunk {
    pub id: String,
    /// The parent port: the VM's own port.
    pub port_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub sub_ports: Vec<SubPort>,
}

impl Trunk {
    /// The VLAN of `port` on this trunk.
    pub fn vlan_of(&self, port: &str) -> Option<u16> {
        self.sub_ports.iter().find(|s| s.port_id == port).map(|s| s.segmentation_id)
    }

    /// The lowest VLAN id no subport of the trunk has (anyone's), nor `taken`.
    pub fn free_vlan(&self, taken: &std::collections::BTreeSet<u16>) -> Option<u16> {
        let used: std::collections::BTreeSet<u16> = self.sub_ports.iter().map(|s| s.segmentation_id).collect();
        VLAN_IDS.into_iter().find(|v| !used.contains(v) && !taken.contains(v))
    }
}

/// Every trunk the session sees.
pub async fn trunks(cloud: &Cloud) -> Result<Vec<Trunk>, Error> {
    match list(cloud, "trunks", "trunks", &[]).await {
        // No trunk extension: no nested nodes.
        Err(e) if e.is_not_found() => Ok(Vec::new()),
        r => r,
    }
}

/// The trunk as Neutron answers `add_subports`/`remove_subports`: the trunk itself, not
/// wrapped in a `trunk` key.
async fn trunk_call(cloud: &Cloud, trunk: &str, action: &str, sub_ports: Value) -> Result<Trunk, Error> {
    let what = format!("{action} on trunk {trunk}");
    let v: Value = cloud.call(Call::put(N, format!("trunks/{trunk}/{action}")).body("sub_ports", sub_ports)).await?;
    let v = if v.get("trunk").is_some() { v["trunk"].clone() } else { v };
    serde_json::from_value(v).map_err(|e| Error::Decode { what, message: e.to_string() })
}

/// Puts ports on a trunk, each with its VLAN id, in one call (all or none).
pub async fn add_subports(cloud: &Cloud, trunk: &str, ports: &[(String, u16)]) -> Result<Trunk, Error> {
    let subs: Vec<Value> =
        ports.iter().map(|(p, v)| json!({"port_id": p, "segmentation_type": "vlan", "segmentation_id": v})).collect();
    trunk_call(cloud, trunk, "add_subports", json!(subs)).await
}

/// Takes ports off a trunk, in one call.
pub async fn remove_subports(cloud: &Cloud, trunk: &str, ports: &[String]) -> Result<Trunk, Error> {
    let subs: Vec<Value> = ports.iter().map(|p| json!({"port_id": p})).collect();
    trunk_call(cloud, trunk, "remove_subports", json!(subs)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk(vlans: &[u16]) -> Trunk {
        Trunk {
            id: "t".into(),
            port_id: "parent".into(),
            name: String::new(),
            sub_ports: vlans
                .iter()
                .map(|v| SubPort { port_id: format!("p{v}"), segmentation_id: *v, segmentation_type: "vlan".into() })
                .collect(),
        }
    }

    #[test]
    fn a_free_vlan_is_one_no_subport_has_up_to_4094() {
        let none = std::collections::BTreeSet::new();
        assert_eq!(trunk(&[]).free_vlan(&none), Some(1));
        assert_eq!(trunk(&[1, 2, 4]).free_vlan(&none), Some(3));
        assert_eq!(trunk(&[1, 2, 4]).free_vlan(&[3].into_iter().collect()), Some(5));
        let full: Vec<u16> = VLAN_IDS.collect();
        assert_eq!(trunk(&full).free_vlan(&none), None);
        let mut almost = full.clone();
        almost.retain(|v| *v != 4094);
        assert_eq!(trunk(&almost).free_vlan(&none), Some(4094));
        assert_eq!(trunk(&[7]).vlan_of("p7"), Some(7));
        assert_eq!(trunk(&[7]).vlan_of("p8"), None);
    }
}
