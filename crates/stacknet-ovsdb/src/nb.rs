//! The OVN Northbound tables and columns stacknet uses, as typed views over replica rows, and
//! the schema requirements a server must meet (Debian 12's OVN 23.03 ships schema 7.0.0).

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use crate::client::Requirements;
use crate::datum::{Atom, Datum};
use crate::replica::RowData;
use crate::schema::Version;

pub const DATABASE: &str = "OVN_Northbound";
pub const MIN_VERSION: Version = Version(7, 0, 0);

pub const LOGICAL_SWITCH: &str = "Logical_Switch";
pub const LOGICAL_SWITCH_PORT: &str = "Logical_Switch_Port";
pub const LOGICAL_ROUTER: &str = "Logical_Router";
pub const LOGICAL_ROUTER_PORT: &str = "Logical_Router_Port";
pub const LOGICAL_ROUTER_STATIC_ROUTE: &str = "Logical_Router_Static_Route";
pub const NAT: &str = "NAT";
pub const PORT_GROUP: &str = "Port_Group";
pub const ACL: &str = "ACL";
pub const ADDRESS_SET: &str = "Address_Set";
pub const LOAD_BALANCER: &str = "Load_Balancer";
pub const LOAD_BALANCER_GROUP: &str = "Load_Balancer_Group";
pub const NB_GLOBAL: &str = "NB_Global";

/// Tables and the columns stacknet reads or writes in them.
pub const USED: &[(&str, &[&str])] = &[
    (NB_GLOBAL, &["nb_cfg", "sb_cfg", "hv_cfg"]),
    (
        LOGICAL_SWITCH,
        &["name", "ports", "acls", "load_balancer", "load_balancer_group", "other_config", "external_ids"],
    ),
    (
        LOGICAL_SWITCH_PORT,
        &[
            "name",
            "type",
            "addresses",
            "port_security",
            "options",
            "parent_name",
            "tag_request",
            "tag",
            "up",
            "external_ids",
        ],
    ),
    (
        LOGICAL_ROUTER,
        &["name", "ports", "static_routes", "nat", "options", "load_balancer", "load_balancer_group", "external_ids"],
    ),
    (LOGICAL_ROUTER_PORT, &["name", "mac", "networks", "external_ids"]),
    (LOGICAL_ROUTER_STATIC_ROUTE, &["ip_prefix", "nexthop", "policy", "external_ids"]),
    (NAT, &["type", "external_ip", "logical_ip", "allowed_ext_ips", "external_ids"]),
    (PORT_GROUP, &["name", "ports", "acls", "external_ids"]),
    (ACL, &["name", "priority", "direction", "match", "action", "options", "external_ids"]),
    (ADDRESS_SET, &["name", "addresses", "external_ids"]),
    (LOAD_BALANCER, &["name", "vips", "protocol", "options", "external_ids"]),
    (LOAD_BALANCER_GROUP, &["name", "load_balancer"]),
];

/// The tables the backend monitors.
pub fn monitored_tables() -> Vec<String> {
    USED.iter().map(|(t, _)| t.to_string()).collect()
}

pub fn requirements() -> Requirements {
    Requirements {
        version: MIN_VERSION,
        tables: USED.iter().map(|(t, cs)| (t.to_string(), cs.iter().map(|c| c.to_string()).collect())).collect(),
    }
}

fn string(row: &RowData, col: &str) -> String {
    row.get(col).and_then(Datum::as_str).unwrap_or_default().to_string()
}

fn strings(row: &RowData, col: &str) -> BTreeSet<String> {
    row.get(col)
        .map(|d| d.elements().into_iter().filter_map(|a| a.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn uuids(row: &RowData, col: &str) -> BTreeSet<Uuid> {
    row.get(col).map(|d| d.elements().into_iter().filter_map(Atom::as_uuid).collect()).unwrap_or_default()
}

/// A string map column (`external_ids`, `options`, ...).
pub fn string_map(row: &RowData, col: &str) -> BTreeMap<String, String> {
    row.get(col).map(|d| d.string_pairs().map(|(k, v)| (k.to_string(), v.to_string())).collect()).unwrap_or_default()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalSwitch {
    pub uuid: Uuid,
    pub name: String,
    pub ports: BTreeSet<Uuid>,
    pub load_balancer_group: BTreeSet<Uuid>,
    pub external_ids: BTreeMap<String, String>,
}

impl LogicalSwitch {
    pub fn from_row(uuid: Uuid, row: &RowData) -> Self {
        LogicalSwitch {
            uuid,
            name: string(row, "name"),
            ports: uuids(row, "ports"),
            load_balancer_group: uuids(row, "load_balancer_group"),
            external_ids: string_map(row, "external_ids"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalSwitchPort {
    pub uuid: Uuid,
    pub name: String,
    pub port_type: String,
    pub addresses: BTreeSet<String>,
    pub port_security: BTreeSet<String>,
    pub options: BTreeMap<String, String>,
    pub up: Option<bool>,
    pub external_ids: BTreeMap<String, String>,
}

impl LogicalSwitchPort {
    pub fn from_row(uuid: Uuid, row: &RowData) -> Self {
        LogicalSwitchPort {
            uuid,
            name: string(row, "name"),
            port_type: string(row, "type"),
            addresses: strings(row, "addresses"),
            port_security: strings(row, "port_security"),
            options: string_map(row, "options"),
            up: row.get("up").and_then(Datum::as_bool),
            external_ids: string_map(row, "external_ids"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortGroup {
    pub uuid: Uuid,
    pub name: String,
    pub ports: BTreeSet<Uuid>,
    pub acls: BTreeSet<Uuid>,
    pub external_ids: BTreeMap<String, String>,
}

impl PortGroup {
    pub fn from_row(uuid: Uuid, row: &RowData) -> Self {
        PortGroup {
            uuid,
            name: string(row, "name"),
            ports: uuids(row, "ports"),
            acls: uuids(row, "acls"),
            external_ids: string_map(row, "external_ids"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    pub uuid: Uuid,
    pub name: Option<String>,
    pub priority: i64,
    pub direction: String,
    pub match_: String,
    pub action: String,
    pub options: BTreeMap<String, String>,
    pub external_ids: BTreeMap<String, String>,
}

impl Acl {
    pub fn from_row(uuid: Uuid, row: &RowData) -> Self {
        Acl {
            uuid,
            name: row.get("name").and_then(Datum::as_str).map(str::to_string),
            priority: row.get("priority").and_then(Datum::as_i64).unwrap_or_default(),
            direction: string(row, "direction"),
            match_: string(row, "match"),
            action: string(row, "action"),
            options: string_map(row, "options"),
            external_ids: string_map(row, "external_ids"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressSet {
    pub uuid: Uuid,
    pub name: String,
    pub addresses: BTreeSet<String>,
    pub external_ids: BTreeMap<String, String>,
}

impl AddressSet {
    pub fn from_row(uuid: Uuid, row: &RowData) -> Self {
        AddressSet {
            uuid,
            name: string(row, "name"),
            addresses: strings(row, "addresses"),
            external_ids: string_map(row, "external_ids"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadBalancer {
    pub uuid: Uuid,
    pub name: String,
    pub vips: BTreeMap<String, String>,
    pub protocol: Option<String>,
    pub options: BTreeMap<String, String>,
    pub external_ids: BTreeMap<String, String>,
}

impl LoadBalancer {
    pub fn from_row(uuid: Uuid, row: &RowData) -> Self {
        LoadBalancer {
            uuid,
            name: string(row, "name"),
            vips: string_map(row, "vips"),
            protocol: row.get("protocol").and_then(Datum::as_str).map(str::to_string),
            options: string_map(row, "options"),
            external_ids: string_map(row, "external_ids"),
        }
    }
}
