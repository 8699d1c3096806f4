//! `reconcile::plan` as pure code: the desired rows against an in-memory replica, no daemon.
//! The replica is loaded as the client loads it (monitor updates) under the Northbound columns
//! stacknet uses (`data/ovn-nb-used.ovsschema`; the ovsdb tier checks it against the installed
//! schema). Operations are asserted as text naming rows by identity (`Port_Group pg:x/web`),
//! others' rows by name.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{Value, json};
use stacknet_engine::{ClusterIndex, PolicyEngine, manifest};
use stacknet_ovn::names::{KEY_CLUSTER, KEY_ID, ident};
use stacknet_ovn::reconcile::{MANAGED, Plan, PlanSummary, plan};
use stacknet_ovn::{Desired, Topology, build};
use stacknet_ovsdb::nb::{
    ACL, ADDRESS_SET, LOAD_BALANCER, LOAD_BALANCER_GROUP, LOGICAL_ROUTER, LOGICAL_ROUTER_PORT,
    LOGICAL_ROUTER_STATIC_ROUTE, LOGICAL_SWITCH, LOGICAL_SWITCH_PORT, NAT, PORT_GROUP,
};
use stacknet_ovsdb::schema::DatabaseSchema;
use stacknet_ovsdb::transact::{Function, Mutator, Operation};
use stacknet_ovsdb::{Atom, Datum, Replica, RowData, Uuid};

const SCHEMA: &str = include_str!("data/ovn-nb-used.ovsschema");

/// Pods on one node's subnet, a policy isolating web (db may reach its named port `http`),
/// and a Service in front of web.
const WEB_0: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-0, namespace: x, labels: {app: web}, uid: u-web-0}\nspec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]}\nstatus: {podIP: 10.1.0.1}\n";
const DB_0: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: db-0, namespace: y, labels: {app: db}}\nspec: {containers: [{name: c, image: i}]}\nstatus: {podIP: 10.1.0.2}\n";
const WEB_1: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: x, labels: {app: web}}\nspec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]}\nstatus: {podIP: 10.1.0.3}\n";
const DB_1: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: db-1, namespace: y, labels: {app: db}}\nspec: {containers: [{name: c, image: i}]}\nstatus: {podIP: 10.1.0.4}\n";
const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}]
    ports: [{port: http}]
"#;
const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: x}\nspec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80, targetPort: http}]}\n";
const CLUSTER: [&str; 4] = [WEB_0, DB_0, POLICY, SERVICE];
/// A pod on node vm-1, a VM whose own port `vm-1-port` its port nests in.
const NESTED: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: nested-0, namespace: z}\nspec: {nodeName: vm-1, containers: [{name: c, image: i}]}\nstatus: {podIP: 10.1.0.5}\n";
const SWITCH: &str = "node:net-10.1.0.0_24";

fn desired_in(cluster: &str, docs: &[&str]) -> Desired {
    let mut objects = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        objects.extend(manifest::parse(&format!("{i}.yaml"), d).unwrap().objects);
    }
    let index = ClusterIndex::from_objects(objects);
    let topology = Topology::from_pods(cluster, &index).with_nested("vm-1", "vm-1-port");
    build(&PolicyEngine::from_index(index), &topology)
}

fn desired(docs: &[&str]) -> Desired {
    desired_in("c1", docs)
}

/// The identity of the address set of `kind` (`as` for peer sets, `np` for named ports) that
/// holds `ip` in `d`.
fn address_set_with(d: &Desired, kind: &str, ip: &str) -> String {
    d.rows
        .values()
        .find(|r| {
            r.table == ADDRESS_SET
                && r.id.starts_with(kind)
                && r.columns["addresses"].elements().iter().any(|a| a.as_str() == Some(ip))
        })
        .map(|r| r.id.clone())
        .unwrap_or_else(|| panic!("no {kind} address set holds {ip}"))
}

/// A Northbound database as the backend's replica sees it.
struct Nb {
    replica: Replica,
    next: u128,
}

impl Nb {
    fn empty() -> Nb {
        let schema = DatabaseSchema::from_json(&serde_json::from_str(SCHEMA).unwrap()).unwrap();
        Nb { replica: Replica::new(Arc::new(schema)), next: 0 }
    }

    /// Holding the rows of each of `states`, as earlier reconciles left them.
    fn holding(states: &[&Desired]) -> Nb {
        let mut nb = Nb::empty();
        for d in states {
            let uuids: BTreeMap<(&str, &str), Uuid> =
                d.rows.keys().map(|(t, id)| ((*t, id.as_str()), nb.fresh())).collect();
            let mut update: BTreeMap<&str, serde_json::Map<String, Value>> = BTreeMap::new();
            for ((table, id), row) in &d.rows {
                let mut columns: serde_json::Map<String, Value> =
                    row.columns.iter().map(|(c, v)| (c.to_string(), v.to_json())).collect();
                for (c, targets) in &row.refs {
                    let target_table = reference_table(table, c);
                    let set: Vec<Value> = targets
                        .iter()
                        .map(|t| json!(["uuid", uuids[&(target_table, t.as_str())].to_string()]))
                        .collect();
                    columns.insert(c.to_string(), json!(["set", set]));
                }
                let uuid = uuids[&(*table, id.as_str())];
                update.entry(table).or_default().insert(uuid.to_string(), json!({"initial": columns}));
            }
            nb.replica.apply_update2(&json!(update)).unwrap();
        }
        nb
    }

    fn fresh(&mut self) -> Uuid {
        self.next += 1;
        Uuid::from_u128(self.next)
    }

    /// Adds a row (someone else's, or a duplicate of ours); returns its uuid.
    fn insert(&mut self, table: &str, columns: Value) -> Uuid {
        let u = self.fresh();
        self.replica.apply_update2(&json!({table: {u.to_string(): {"insert": columns}}})).unwrap();
        u
    }

    /// Changes a row as a monitor update would (sets: elements toggled; maps: keys set).
    fn modify(&mut self, table: &str, uuid: Uuid, diff: Value) {
        self.replica.apply_update2(&json!({table: {uuid.to_string(): {"modify": diff}}})).unwrap();
    }

    /// Our row of identity `id`.
    fn ours(&self, table: &str, id: &str) -> Uuid {
        *self.replica.table(table).by_external_id(KEY_ID, id).find(|(_, r)| cluster_of(r) == Some("c1")).unwrap().0
    }

    fn label_of(&self, u: &Uuid) -> String {
        MANAGED
            .iter()
            .find_map(|t| self.replica.table(t).get(u))
            .map(|r| label(r.get("external_ids"), r.get("name")))
            .unwrap_or_else(|| format!("?{u}"))
    }
}

fn reference_table(table: &str, column: &str) -> &'static str {
    match (table, column) {
        (LOGICAL_SWITCH | PORT_GROUP, "ports") => LOGICAL_SWITCH_PORT,
        (PORT_GROUP | LOGICAL_SWITCH, "acls") => ACL,
        (LOGICAL_ROUTER, "ports") => LOGICAL_ROUTER_PORT,
        (LOGICAL_ROUTER, "static_routes") => LOGICAL_ROUTER_STATIC_ROUTE,
        (LOGICAL_ROUTER, "nat") => NAT,
        (NAT, "allowed_ext_ips") => ADDRESS_SET,
        (LOGICAL_ROUTER, "load_balancer") => LOAD_BALANCER,
        (LOGICAL_ROUTER, "load_balancer_group") => LOAD_BALANCER_GROUP,
        (LOGICAL_SWITCH, "load_balancer_group") => LOAD_BALANCER_GROUP,
        (_, "load_balancer") => LOAD_BALANCER,
        other => panic!("unexpected reference {other:?}"),
    }
}

fn cluster_of(r: &RowData) -> Option<&str> {
    r.get("external_ids").and_then(|d| d.map_get(KEY_CLUSTER)).and_then(Atom::as_str)
}

/// Our rows by identity (cluster c1; the load balancer group by its name), others' by name.
fn label(external_ids: Option<&Datum>, name: Option<&Datum>) -> String {
    let ids = external_ids.filter(|d| d.map_get(KEY_CLUSTER).and_then(Atom::as_str) == Some("c1"));
    match (ids.and_then(|d| d.map_get(KEY_ID)).and_then(Atom::as_str), name.and_then(Datum::as_str)) {
        (Some(id), _) => id.to_string(),
        (None, Some(n)) if n == ident("c1", "lbg", "lbg") => "lbg".into(),
        (None, Some(n)) => format!("'{n}'"),
        (None, None) => "?".into(),
    }
}

/// The plan's operations as text: `insert T id`, `update T id [columns]`, `mutate T id col
/// +a,b`, `delete T id`, `wait T id col == a,b`.
fn described(p: &Plan, nb: &Nb) -> Vec<String> {
    let inserted: BTreeMap<&str, String> = p
        .txn
        .ops
        .iter()
        .filter_map(|op| match op {
            Operation::Insert { row, uuid_name: Some(n), .. } => {
                Some((n.as_str(), label(row.get("external_ids"), row.get("name"))))
            }
            _ => None,
        })
        .collect();
    let atom = |a: &Atom| match a {
        Atom::Uuid(u) => nb.label_of(u),
        Atom::NamedUuid(n) => format!("new {}", inserted[n.as_str()]),
        Atom::String(s) => s.to_string(),
        other => other.to_string(),
    };
    let datum = |d: &Datum| match d {
        Datum::Map(m) => m.iter().map(|(k, v)| format!("{}={}", atom(k), atom(v))).collect::<Vec<_>>().join(","),
        d => d.elements().into_iter().map(atom).collect::<Vec<_>>().join(","),
    };
    let target = |table: &str, conditions: &[stacknet_ovsdb::Condition]| {
        let [c] = conditions else { panic!("one condition expected: {conditions:?}") };
        assert_eq!((c.column.as_str(), c.function), ("_uuid", Function::Eq), "rows are named by uuid");
        format!("{table} {}", datum(&c.value))
    };
    p.txn
        .ops
        .iter()
        .map(|op| match op {
            Operation::Insert { table, row, .. } => {
                format!("insert {table} {}", label(row.get("external_ids"), row.get("name")))
            }
            Operation::Update { table, conditions, row } => {
                format!("update {} {:?}", target(table, conditions), row.keys().collect::<Vec<_>>())
            }
            Operation::Mutate { table, conditions, mutations } => {
                let ms: Vec<String> = mutations
                    .iter()
                    .map(|m| {
                        let sign = if m.mutator == Mutator::Insert { "+" } else { "-" };
                        format!("{} {sign}{}", m.column, datum(&m.value))
                    })
                    .collect();
                format!("mutate {} {}", target(table, conditions), ms.join(" "))
            }
            Operation::Delete { table, conditions } => format!("delete {}", target(table, conditions)),
            Operation::Wait { table, conditions, columns, rows, .. } => {
                let [c] = columns.as_slice() else { panic!("one column expected") };
                format!("wait {} {c} == {}", target(table, conditions), datum(&rows[0][c]))
            }
            other => panic!("unexpected operation {other:?}"),
        })
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Every uuid an operation names or writes.
fn uuids_touched(p: &Plan) -> BTreeSet<Uuid> {
    let mut out = BTreeSet::new();
    let mut add = |d: &Datum| out.extend(d.elements().into_iter().filter_map(Atom::as_uuid));
    for op in &p.txn.ops {
        match op {
            Operation::Update { conditions, row, .. } => {
                conditions.iter().for_each(|c| add(&c.value));
                row.values().for_each(&mut add);
            }
            Operation::Mutate { conditions, mutations, .. } => {
                conditions.iter().for_each(|c| add(&c.value));
                mutations.iter().for_each(|m| add(&m.value));
            }
            Operation::Delete { conditions, .. } | Operation::Wait { conditions, .. } => {
                conditions.iter().for_each(|c| add(&c.value))
            }
            _ => {}
        }
    }
    out
}

fn summary(inserts: usize, updates: usize, mutates: usize, deletes: usize, duplicates: usize) -> PlanSummary {
    PlanSummary { inserts, updates, mutates, deletes, duplicates }
}

#[test]
fn a_restart_with_nothing_changed_plans_nothing() {
    let d = desired(&CLUSTER);
    let nb = Nb::holding(&[&d]);
    let p = plan(&d, &nb.replica);
    assert!(p.txn.is_empty(), "{:#?}", described(&p, &nb));
    assert_eq!(p.summary, PlanSummary::default());
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn a_restart_with_a_nested_pod_plans_nothing() {
    // Its optional columns (parent_name, tag_request) are sets in the database.
    let d = desired(&[WEB_0, NESTED]);
    let nested = d.row(LOGICAL_SWITCH_PORT, "pod:z/nested-0").unwrap();
    assert_eq!(nested.columns["parent_name"], Datum::Atom("vm-1-port".into()));
    let nb = Nb::holding(&[&d]);
    let p = plan(&d, &nb.replica);
    assert!(p.txn.is_empty(), "{:#?}", described(&p, &nb));
}

#[test]
fn an_empty_database_gets_every_row_in_one_transaction_children_before_parents() {
    let d = desired(&CLUSTER);
    let nb = Nb::empty();
    let p = plan(&d, &nb.replica);
    let ops = described(&p, &nb);
    assert_eq!(p.summary, summary(d.rows.len(), 0, 0, 0, 0));
    assert_eq!(ops.len(), d.rows.len(), "{ops:#?}");
    assert!(ops.iter().all(|o| o.starts_with("insert ")), "{ops:#?}");
    // A row is inserted after every row it refers to (named uuids only look backwards).
    let position = |what: &str| ops.iter().position(|o| o == what).unwrap_or_else(|| panic!("no {what}: {ops:#?}"));
    for ((table, id), row) in &d.rows {
        for (c, targets) in &row.refs {
            for t in targets {
                let child = format!("insert {} {t}", reference_table(table, c));
                let parent = format!("insert {table} {id}");
                assert!(position(&child) < position(&parent), "{child} after {parent}");
            }
        }
    }
}

#[test]
fn a_new_pod_is_one_insert_and_its_memberships_are_mutated_not_rewritten() {
    let before = desired(&CLUSTER);
    let nb = Nb::holding(&[&before]);
    let after = desired(&[WEB_0, DB_0, POLICY, SERVICE, WEB_1]);
    let p = plan(&after, &nb.replica);
    let named_port = address_set_with(&after, "np:", "10.1.0.3");
    assert_eq!(
        sorted(described(&p, &nb)),
        sorted(vec![
            "insert Logical_Switch_Port pod:x/web-1".into(),
            "mutate Logical_Switch node:net-10.1.0.0_24 ports +new pod:x/web-1".into(),
            "mutate Port_Group deny:x:ingress ports +new pod:x/web-1".into(),
            "mutate Port_Group pg:x/web ports +new pod:x/web-1".into(),
            format!("mutate Address_Set {named_port} addresses +10.1.0.3"),
            // The Service gains a backend: the one column holding its VIPs.
            "update Load_Balancer lb:x/web:tcp [\"vips\"]".into(),
        ]),
    );
    assert_eq!(p.summary, summary(1, 1, 4, 0, 0));
}

#[test]
fn a_new_peer_adds_its_address_alone_to_the_peer_set() {
    let before = desired(&CLUSTER);
    let nb = Nb::holding(&[&before]);
    let after = desired(&[WEB_0, DB_0, POLICY, SERVICE, DB_1]);
    let peers = address_set_with(&after, "as:", "10.1.0.4");
    assert_eq!(address_set_with(&before, "as:", "10.1.0.2"), peers, "the same peer set grows");
    let p = plan(&after, &nb.replica);
    assert_eq!(
        sorted(described(&p, &nb)),
        sorted(vec![
            format!("mutate Address_Set {peers} addresses +10.1.0.4"),
            "insert Logical_Switch_Port pod:y/db-1".into(),
            "mutate Logical_Switch node:net-10.1.0.0_24 ports +new pod:y/db-1".into(),
        ]),
    );
    // And away again: the one address goes, by mutation.
    let nb = Nb::holding(&[&after]);
    let p = plan(&before, &nb.replica);
    assert!(described(&p, &nb).contains(&format!("mutate Address_Set {peers} addresses -10.1.0.4")), "{p:?}");
}

#[test]
fn a_column_changed_behind_our_back_is_one_update_of_that_column() {
    let d = desired(&CLUSTER);
    let mut nb = Nb::holding(&[&d]);
    let web = nb.ours(LOGICAL_SWITCH_PORT, "pod:x/web-0");
    // Someone widened the port security of web-0 to any address from its MAC (and
    // ovn-northd set a column we do not manage).
    nb.modify(LOGICAL_SWITCH_PORT, web, json!({"port_security": "0a:58:0a:01:00:01", "up": true}));
    let widened = &nb.replica.table(LOGICAL_SWITCH_PORT).get(&web).unwrap()["port_security"];
    assert_eq!(widened.elements().len(), 2);
    let p = plan(&d, &nb.replica);
    assert_eq!(described(&p, &nb), ["update Logical_Switch_Port pod:x/web-0 [\"port_security\"]"]);
    let Operation::Update { row, .. } = &p.txn.ops[0] else { unreachable!() };
    assert_eq!(row["port_security"], Datum::set(["0a:58:0a:01:00:01 10.1.0.1"]));
    assert_eq!(p.summary, summary(0, 1, 0, 0, 0));
}

#[test]
fn a_changed_rule_updates_the_match_of_its_acl_and_nothing_else() {
    let before = desired(&CLUSTER);
    let nb = Nb::holding(&[&before]);
    let after = desired(&[WEB_0, DB_0, &POLICY.replace("ports: [{port: http}]", "ports: [{port: 9090}]"), SERVICE]);
    let p = plan(&after, &nb.replica);
    let ops = described(&p, &nb);
    assert!(ops.contains(&"update ACL acl:x/web:0 [\"match\"]".to_string()), "{ops:#?}");
    // The named port's address set is no longer referred to: it goes; nothing else changes.
    let named_port = address_set_with(&before, "np:", "10.1.0.1");
    assert_eq!(
        sorted(ops),
        sorted(vec![format!("delete Address_Set {named_port}"), "update ACL acl:x/web:0 [\"match\"]".into()])
    );
}

#[test]
fn a_deleted_pod_leaves_its_switch_and_groups_and_its_port_goes_with_them() {
    let before = desired(&[WEB_0, DB_0, POLICY, SERVICE, WEB_1]);
    let nb = Nb::holding(&[&before]);
    let after = desired(&CLUSTER);
    let p = plan(&after, &nb.replica);
    let named_port = address_set_with(&before, "np:", "10.1.0.3");
    // No delete of the port: a Logical_Switch_Port lives while its switch holds it.
    assert_eq!(
        sorted(described(&p, &nb)),
        sorted(vec![
            "mutate Logical_Switch node:net-10.1.0.0_24 ports -pod:x/web-1".into(),
            "mutate Port_Group deny:x:ingress ports -pod:x/web-1".into(),
            "mutate Port_Group pg:x/web ports -pod:x/web-1".into(),
            format!("mutate Address_Set {named_port} addresses -10.1.0.3"),
            "update Load_Balancer lb:x/web:tcp [\"vips\"]".into(),
        ]),
    );
    assert_eq!(p.summary, summary(0, 1, 4, 1, 0));
}

#[test]
fn a_deleted_policy_deletes_its_port_group_only_if_it_still_holds_what_was_seen() {
    let before = desired(&CLUSTER);
    let nb = Nb::holding(&[&before]);
    let after = desired(&[WEB_0, DB_0, SERVICE]);
    let p = plan(&after, &nb.replica);
    let peers = address_set_with(&before, "as:", "10.1.0.2");
    let named_port = address_set_with(&before, "np:", "10.1.0.1");
    let ops = described(&p, &nb);
    // Each group is deleted behind a wait on the ACLs it held when the replica last heard
    // (a row someone added since fails the transaction rather than going with it).
    let pg = ops.iter().position(|o| o == "delete Port_Group pg:x/web").unwrap();
    assert_eq!(ops[pg - 1], "wait Port_Group pg:x/web acls == acl:x/web:0");
    let deny = ops.iter().position(|o| o == "delete Port_Group deny:x:ingress").unwrap();
    assert_eq!(ops[deny - 1], "wait Port_Group deny:x:ingress acls == deny:x:ingress:arp-nd,deny:x:ingress:drop");
    assert_eq!(
        sorted(ops),
        sorted(vec![
            "delete Port_Group deny:x:ingress".into(),
            "delete Port_Group pg:x/web".into(),
            "wait Port_Group deny:x:ingress acls == deny:x:ingress:arp-nd,deny:x:ingress:drop".into(),
            "wait Port_Group pg:x/web acls == acl:x/web:0".into(),
            format!("delete Address_Set {peers}"),
            format!("delete Address_Set {named_port}"),
        ]),
    );
    // Its three ACLs go with the groups that held them (counted, not written).
    assert_eq!(p.summary, summary(0, 0, 0, 2 + 2 + 3, 0));
}

#[test]
fn rows_of_another_cluster_and_of_operators_are_never_modified_or_deleted() {
    let ours = desired(&CLUSTER);
    // The other cluster runs the same workload: the same identities under its own cluster id.
    let theirs = desired_in("c2", &CLUSTER);
    let mut nb = Nb::holding(&[&ours, &theirs]);
    let as_operator = nb.insert(ADDRESS_SET, json!({"name": "operator_as", "addresses": ["set", ["192.0.2.1"]]}));
    let acl = nb.insert(ACL, json!({"priority": 900, "direction": "to-lport", "match": "1", "action": "drop"}));
    let pg_operator = nb.insert(PORT_GROUP, json!({"name": "operator_pg", "acls": ["uuid", acl.to_string()]}));
    let untagged: BTreeSet<Uuid> = [as_operator, acl, pg_operator].into();
    let mut theirs: BTreeSet<Uuid> = MANAGED
        .iter()
        .flat_map(|t| nb.replica.table(t).by_external_id(KEY_CLUSTER, "c2").map(|(u, _)| *u).collect::<Vec<_>>())
        .collect();
    // The load balancer group has no external_ids: it is theirs by name.
    theirs.extend(nb.replica.table(LOAD_BALANCER_GROUP).by_name(&ident("c2", "lbg", "lbg")).map(|(u, _)| *u));
    assert_eq!(theirs.len(), ours.rows.len());

    let p = plan(&ours, &nb.replica);
    assert!(p.txn.is_empty(), "{:#?}", described(&p, &nb));

    // Everything of ours gone: only our rows are written.
    let p = plan(&desired(&[]), &nb.replica);
    assert!(!p.txn.is_empty());
    let touched = uuids_touched(&p);
    assert!(touched.is_disjoint(&theirs), "{:#?}", described(&p, &nb));
    assert!(touched.is_disjoint(&untagged), "{:#?}", described(&p, &nb));
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn a_vm_port_on_our_switch_stays_on_it_while_pods_come_and_go() {
    let before = desired(&CLUSTER);
    let mut nb = Nb::holding(&[&before]);
    let vm = nb.insert(LOGICAL_SWITCH_PORT, json!({"name": "vm-postgres", "addresses": "0a:00:00:00:00:99 10.1.0.99"}));
    let switch = nb.ours(LOGICAL_SWITCH, SWITCH);
    nb.modify(LOGICAL_SWITCH, switch, json!({"ports": ["uuid", vm.to_string()]}));

    // Our switch holds a port we did not make: nothing to do.
    let p = plan(&before, &nb.replica);
    assert!(p.txn.is_empty(), "{:#?}", described(&p, &nb));
    // A pod comes: only its port joins; one goes: only its port leaves.
    let p = plan(&desired(&[WEB_0, DB_0, POLICY, SERVICE, DB_1]), &nb.replica);
    assert!(described(&p, &nb).contains(&"mutate Logical_Switch node:net-10.1.0.0_24 ports +new pod:y/db-1".into()));
    assert!(!uuids_touched(&p).contains(&vm));
    let p = plan(&desired(&[WEB_0, POLICY, SERVICE]), &nb.replica);
    assert!(described(&p, &nb).contains(&"mutate Logical_Switch node:net-10.1.0.0_24 ports -pod:y/db-0".into()));
    assert!(!uuids_touched(&p).contains(&vm), "{:#?}", described(&p, &nb));
}

#[test]
fn a_switch_no_longer_needed_that_holds_a_vm_port_is_kept_and_emptied_of_ours() {
    let before = desired(&CLUSTER);
    let mut nb = Nb::holding(&[&before]);
    let vm = nb.insert(LOGICAL_SWITCH_PORT, json!({"name": "vm-postgres", "addresses": "0a:00:00:00:00:99 10.1.0.99"}));
    let switch = nb.ours(LOGICAL_SWITCH, SWITCH);
    nb.modify(LOGICAL_SWITCH, switch, json!({"ports": ["uuid", vm.to_string()]}));

    let p = plan(&desired(&[]), &nb.replica);
    let ops = described(&p, &nb);
    // Deleting the switch would delete the VM's port with it.
    assert!(!ops.iter().any(|o| o.starts_with("delete Logical_Switch ")), "{ops:#?}");
    assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
    assert!(p.warnings[0].contains("c1_net-10.1.0.0_24") && p.warnings[0].contains("kept"), "{:?}", p.warnings);
    let emptied: Vec<&String> = ops.iter().filter(|o| o.starts_with("mutate Logical_Switch ")).collect();
    assert_eq!(
        emptied,
        [
            "mutate Logical_Switch node:net-10.1.0.0_24 ports -mgmt:net-10.1.0.0_24,pod:x/web-0,pod:y/db-0,stor:net-10.1.0.0_24",
            "mutate Logical_Switch node:net-10.1.0.0_24 acls -acl:node:net-10.1.0.0_24:from,acl:node:net-10.1.0.0_24:to"
        ]
    );
    assert!(!uuids_touched(&p).contains(&vm));
    // Every other row of ours goes.
    assert!(ops.contains(&"delete Logical_Router router".to_string()), "{ops:#?}");
    assert!(ops.contains(&"delete Load_Balancer lb:x/web:tcp".to_string()), "{ops:#?}");
}

#[test]
fn duplicates_of_one_identity_are_deleted_and_the_first_is_kept() {
    let d = desired(&CLUSTER);
    let mut nb = Nb::holding(&[&d]);
    // A crash between two writes of an older, less careful writer: a second row claiming the
    // identity of one of ours.
    let peers = address_set_with(&d, "as:", "10.1.0.2");
    let kept = nb.ours(ADDRESS_SET, &peers);
    let ids = nb.replica.table(ADDRESS_SET).get(&kept).unwrap()["external_ids"].to_json();
    let duplicate = nb.insert(ADDRESS_SET, json!({"name": "dup_of_ours", "external_ids": ids}));
    let p = plan(&d, &nb.replica);
    assert_eq!(p.txn.ops, [Operation::Delete { table: ADDRESS_SET.into(), conditions: vec![condition(duplicate)] }]);
    assert_eq!(p.summary, summary(0, 0, 0, 1, 1));
}

#[test]
fn a_duplicate_port_is_taken_off_its_switch() {
    let d = desired(&CLUSTER);
    let mut nb = Nb::holding(&[&d]);
    let web = nb.ours(LOGICAL_SWITCH_PORT, "pod:x/web-0");
    let row = nb.replica.table(LOGICAL_SWITCH_PORT).get(&web).unwrap().clone();
    let duplicate = nb.insert(
        LOGICAL_SWITCH_PORT,
        json!({"name": "c1_x_web-0_again", "external_ids": row["external_ids"].to_json()}),
    );
    let switch = nb.ours(LOGICAL_SWITCH, SWITCH);
    nb.modify(LOGICAL_SWITCH, switch, json!({"ports": ["uuid", duplicate.to_string()]}));
    let p = plan(&d, &nb.replica);
    assert_eq!(
        p.txn.ops,
        [Operation::Mutate {
            table: LOGICAL_SWITCH.into(),
            conditions: vec![condition(switch)],
            mutations: vec![stacknet_ovsdb::Mutation::delete("ports", Datum::Set([Atom::Uuid(duplicate)].into()))],
        }]
    );
    assert_eq!(p.summary, summary(0, 0, 1, 1, 1));
}

#[test]
fn our_port_on_someone_elses_switch_is_taken_off_it_when_its_pod_goes() {
    let before = desired(&[WEB_0, DB_0, POLICY, SERVICE, WEB_1]);
    let mut nb = Nb::holding(&[&before]);
    // An operator put web-1's port on their own switch too.
    let port = nb.ours(LOGICAL_SWITCH_PORT, "pod:x/web-1");
    let theirs = nb.insert(LOGICAL_SWITCH, json!({"name": "operator_ls", "ports": ["uuid", port.to_string()]}));
    let p = plan(&desired(&CLUSTER), &nb.replica);
    let ops = described(&p, &nb);
    assert!(ops.contains(&"mutate Logical_Switch 'operator_ls' ports -pod:x/web-1".into()), "{ops:#?}");
    assert!(ops.contains(&"mutate Logical_Switch node:net-10.1.0.0_24 ports -pod:x/web-1".into()), "{ops:#?}");
    assert!(!ops.iter().any(|o| o.starts_with("delete")), "{ops:#?}");
    let their_ops = ops.iter().filter(|o| o.contains("'operator_ls'")).count();
    assert_eq!(their_ops, 1, "only our port is taken off their switch: {ops:#?}");
    assert!(nb.replica.table(LOGICAL_SWITCH).get(&theirs).is_some());
}

fn condition(u: Uuid) -> stacknet_ovsdb::Condition {
    stacknet_ovsdb::Condition::uuid(u)
}
