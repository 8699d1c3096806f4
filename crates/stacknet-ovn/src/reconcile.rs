//! Reconcile = diff(desired, replica) → one minimal transaction.
//!
//! Only rows tagged with our cluster id are ours: they are inserted, updated column by column,
//! or deleted. Set-valued columns change by `mutate` insert/delete of the difference, so adding
//! a pod to a port group of 10,000 does not rewrite the other 9,999. Rows of others are never
//! modified or deleted, and references to them in our rows (a VM's port on our switch) stay.
//! A second reconcile with nothing changed plans nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use stacknet_ovsdb::nb::{
    ACL, ADDRESS_SET, LOAD_BALANCER, LOAD_BALANCER_GROUP, LOGICAL_ROUTER, LOGICAL_ROUTER_PORT,
    LOGICAL_ROUTER_STATIC_ROUTE, LOGICAL_SWITCH, LOGICAL_SWITCH_PORT, NAT, PORT_GROUP,
};
use stacknet_ovsdb::schema::ColumnType;
use stacknet_ovsdb::{Atom, AtomSet, Condition, Datum, Mutation, Replica, Row, Transaction, Until, Uuid};

use crate::desired::Desired;
use crate::names::{KEY_CLUSTER, KEY_ID, ident};

/// Tables holding our rows, children before parents (inserts go in this order).
pub const MANAGED: [&str; 11] = [
    ACL,
    NAT,
    LOGICAL_SWITCH_PORT,
    LOGICAL_ROUTER_PORT,
    LOGICAL_ROUTER_STATIC_ROUTE,
    ADDRESS_SET,
    LOAD_BALANCER,
    LOAD_BALANCER_GROUP,
    PORT_GROUP,
    LOGICAL_SWITCH,
    LOGICAL_ROUTER,
];

/// Non-root tables: their rows live while a parent references them.
const CHILDREN: [(&str, &[(&str, &str)]); 5] = [
    (NAT, &[(LOGICAL_ROUTER, "nat")]),
    (LOGICAL_SWITCH_PORT, &[(LOGICAL_SWITCH, "ports")]),
    (ACL, &[(PORT_GROUP, "acls"), (LOGICAL_SWITCH, "acls")]),
    (LOGICAL_ROUTER_PORT, &[(LOGICAL_ROUTER, "ports")]),
    (LOGICAL_ROUTER_STATIC_ROUTE, &[(LOGICAL_ROUTER, "static_routes")]),
];

/// Columns whose sets can be large: changed by mutation, not rewritten.
fn mutate_set(table: &str, column: &str) -> bool {
    matches!((table, column), (ADDRESS_SET, "addresses"))
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanSummary {
    pub inserts: usize,
    pub updates: usize,
    pub mutates: usize,
    pub deletes: usize,
    /// Duplicate rows of one identity (from an interrupted earlier write) removed.
    pub duplicates: usize,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub txn: Transaction,
    pub summary: PlanSummary,
    /// Rows of ours kept because deleting them would take rows of others with them.
    pub warnings: Vec<String>,
}

/// Root tables whose rows hold children strongly: deleting such a row deletes its children.
const STRONG_PARENTS: [(&str, &str); 6] = [
    (LOGICAL_ROUTER, "nat"),
    (LOGICAL_SWITCH, "ports"),
    (LOGICAL_SWITCH, "acls"),
    (LOGICAL_ROUTER, "ports"),
    (LOGICAL_ROUTER, "static_routes"),
    (PORT_GROUP, "acls"),
];

/// Our rows in the replica: identity → uuids (normally one; more are duplicates).
fn owned(replica: &Replica, cluster: &str) -> HashMap<(&'static str, String), Vec<Uuid>> {
    let mut out: HashMap<(&'static str, String), Vec<Uuid>> = HashMap::new();
    for table in MANAGED {
        if table == LOAD_BALANCER_GROUP {
            // No external_ids in this table: ours by name.
            // The switches' group and the gateway routers' group.
            for (id, name) in [("lbg", "lbg"), ("lbg-gr", "gr")] {
                for (u, _) in replica.table(table).by_name(&ident(cluster, "lbg", name)) {
                    out.entry((table, id.into())).or_default().push(*u);
                }
            }
            continue;
        }
        for (u, row) in replica.table(table).by_external_id(KEY_CLUSTER, cluster) {
            let id = row.get("external_ids").and_then(|d| d.map_get(KEY_ID)).and_then(Atom::as_str);
            if let Some(id) = id {
                out.entry((table, id.to_string())).or_default().push(*u);
            }
        }
    }
    for uuids in out.values_mut() {
        uuids.sort();
    }
    out
}

/// Brings a desired value to the replica's representation of the column type.
fn normalize(d: &Datum, ty: Option<&ColumnType>) -> Datum {
    let Some(ty) = ty else { return d.clone() };
    match d {
        Datum::Atom(a) if !ty.is_scalar() && !ty.is_map() => Datum::Set([a.clone()].into()),
        Datum::Set(s) if ty.is_scalar() && s.len() == 1 => Datum::Atom(s.iter().next().expect("one").clone()),
        other => other.clone(),
    }
}

fn named(table: &str, id: &str) -> String {
    // named-uuids are identifiers: derive one from the row's identity.
    format!("row{}", crate::names::hash(&[table, id]))
}

/// Computes the transaction that makes the replica's view of our rows equal to `desired`.
pub fn plan(desired: &Desired, replica: &Replica) -> Plan {
    let cluster = desired.cluster.as_str();
    let schema = replica.schema().clone();
    let owned = owned(replica, cluster);
    let mut txn = Transaction::new(stacknet_ovsdb::nb::DATABASE);
    let mut summary = PlanSummary::default();
    let mut warnings = Vec::new();

    let keeper = |table: &'static str, id: &str| owned.get(&(table, id.to_string())).and_then(|v| v.first()).copied();
    // The uuid a reference to (table, id) uses: the existing row's, or the named uuid of its
    // insert in this transaction.
    let target = |table: &'static str, id: &str| -> Atom {
        match keeper(table, id) {
            Some(u) => Atom::Uuid(u),
            None => Atom::NamedUuid(named(table, id)),
        }
    };
    let ref_table = |table: &str, column: &str| -> &'static str {
        let t = schema.column(table, column).and_then(|c| c.key.ref_table.clone()).unwrap_or_default();
        MANAGED.into_iter().find(|m| *m == t).unwrap_or("")
    };
    // Every uuid of ours, to tell our references from others' in shared sets.
    let ours: BTreeSet<Uuid> = owned.values().flatten().copied().collect();

    // 1. Inserts, children first.
    for table in MANAGED {
        for ((t, id), row) in desired.rows.range((table, String::new())..) {
            if *t != table {
                break;
            }
            if keeper(table, id).is_some() {
                continue;
            }
            let mut r = Row::new();
            for (c, d) in &row.columns {
                r.insert(c.to_string(), normalize(d, schema.column(table, c)));
            }
            for (c, ids) in &row.refs {
                let rt = ref_table(table, c);
                r.insert(c.to_string(), Datum::Set(ids.iter().map(|i| target(rt, i)).collect()));
            }
            txn.insert(table, r, Some(&named(table, id)));
            summary.inserts += 1;
        }
    }

    // 2. Updates of existing rows: changed columns only; sets by difference.
    for ((table, id), row) in &desired.rows {
        let Some(uuid) = keeper(table, id) else { continue };
        let Some(current) = replica.table(table).get(&uuid) else { continue };
        let mut update = Row::new();
        let mut mutations = Vec::new();
        for (c, d) in &row.columns {
            let want = normalize(d, schema.column(table, c));
            let have = current.get(c);
            if have == Some(&want) {
                continue;
            }
            match (&want, have) {
                (Datum::Set(w), Some(Datum::Set(h))) if mutate_set(table, c) => {
                    let add: AtomSet = w.difference(h).cloned().collect();
                    let del: AtomSet = h.difference(w).cloned().collect();
                    if !del.is_empty() {
                        mutations.push(Mutation::delete(c, Datum::Set(del)));
                    }
                    if !add.is_empty() {
                        mutations.push(Mutation::insert(c, Datum::Set(add)));
                    }
                }
                _ => {
                    update.insert(c.to_string(), want);
                }
            }
        }
        for (c, ids) in &row.refs {
            let rt = ref_table(table, c);
            let want: AtomSet = ids.iter().map(|i| target(rt, i)).collect();
            let have: AtomSet = current.get(c).map(|d| d.elements().into_iter().cloned().collect()).unwrap_or_default();
            let add: AtomSet = want.difference(&have).cloned().collect();
            // Only our own rows are taken out; references to others' rows stay.
            let del: AtomSet =
                have.difference(&want).filter(|a| a.as_uuid().is_some_and(|u| ours.contains(&u))).cloned().collect();
            if !del.is_empty() {
                mutations.push(Mutation::delete(c, Datum::Set(del)));
            }
            if !add.is_empty() {
                mutations.push(Mutation::insert(c, Datum::Set(add)));
            }
        }
        if !update.is_empty() {
            txn.update(table, vec![Condition::uuid(uuid)], update);
            summary.updates += 1;
        }
        if !mutations.is_empty() {
            txn.mutate(table, vec![Condition::uuid(uuid)], mutations);
            summary.mutates += 1;
        }
    }

    // 3. Deletes: our rows no longer desired, and duplicates of desired ones.
    let mut doomed: Vec<(&'static str, Uuid, bool)> = Vec::new();
    for ((table, id), uuids) in &owned {
        let wanted = desired.rows.contains_key(&(*table, id.clone()));
        for (i, u) in uuids.iter().enumerate() {
            if !wanted || i > 0 {
                doomed.push((table, *u, wanted));
            }
        }
    }
    doomed.sort();
    let doomed_set: BTreeSet<Uuid> = doomed.iter().map(|(_, u, _)| *u).collect();
    for (table, uuid, duplicate) in &doomed {
        if *duplicate {
            summary.duplicates += 1;
        }
        match CHILDREN.iter().find(|(t, _)| t == table) {
            None => {
                // Never take someone else's rows down with ours (a VM's port on our switch):
                // such a row stays, holding only what is not ours.
                let foreign: Vec<Atom> = STRONG_PARENTS
                    .iter()
                    .filter(|(t, _)| t == table)
                    .filter_map(|(_, c)| replica.table(table).get(uuid).and_then(|r| r.get(c)).map(|d| (*c, d)))
                    .flat_map(|(_, d)| d.elements().into_iter().cloned())
                    .filter(|a| a.as_uuid().is_some_and(|u| !ours.contains(&u)))
                    .collect();
                if foreign.is_empty() {
                    // Others may have put a row in it since our replica last heard: the delete
                    // only happens if it still holds exactly what we saw (else the server
                    // fails the transaction as "timed out" and we re-plan).
                    for (t, c) in STRONG_PARENTS.iter().filter(|(t, _)| t == table) {
                        let seen =
                            replica.table(t).get(uuid).and_then(|r| r.get(c)).cloned().unwrap_or_else(Datum::empty_set);
                        txn.wait(
                            t,
                            vec![Condition::uuid(*uuid)],
                            vec![c.to_string()],
                            Until::Equal,
                            vec![Row::from([(c.to_string(), seen)])],
                            Some(0),
                        );
                    }
                    txn.delete(table, vec![Condition::uuid(*uuid)]);
                    summary.deletes += 1;
                } else {
                    let name = replica
                        .table(table)
                        .get(uuid)
                        .and_then(|r| r.get("name"))
                        .and_then(Datum::as_str)
                        .unwrap_or_default();
                    warnings.push(format!(
                        "{table} {name} ({uuid}) is no longer needed but holds {} row(s) of others: kept",
                        foreign.len()
                    ));
                    for (t, c) in STRONG_PARENTS.iter().filter(|(t, _)| t == table) {
                        let mine: AtomSet = replica
                            .table(t)
                            .get(uuid)
                            .and_then(|r| r.get(c))
                            .map(|d| {
                                d.elements()
                                    .into_iter()
                                    .filter(|a| a.as_uuid().is_some_and(|u| ours.contains(&u)))
                                    .cloned()
                                    .collect()
                            })
                            .unwrap_or_default();
                        if !mine.is_empty() {
                            txn.mutate(t, vec![Condition::uuid(*uuid)], vec![Mutation::delete(c, Datum::Set(mine))]);
                            summary.mutates += 1;
                        }
                    }
                }
            }
            Some((_, parents)) => {
                // A child goes when no parent holds it: take it out of every parent that is
                // not itself going and whose references are not already being rewritten.
                for (ptable, pcol) in *parents {
                    for (puuid, prow) in replica.table(ptable).rows() {
                        if doomed_set.contains(puuid) {
                            continue;
                        }
                        let holds =
                            prow.get(pcol).is_some_and(|d| d.elements().iter().any(|a| a.as_uuid() == Some(*uuid)));
                        // Our surviving parents drop it through their reference diff above.
                        if holds && !ours.contains(puuid) {
                            txn.mutate(
                                ptable,
                                vec![Condition::uuid(*puuid)],
                                vec![Mutation::delete(pcol, Datum::Set([Atom::Uuid(*uuid)].into()))],
                            );
                            summary.mutates += 1;
                        }
                    }
                }
                summary.deletes += 1;
            }
        }
    }
    Plan { txn, summary, warnings }
}

/// Our rows, per table, for tests and reports.
pub fn owned_counts(replica: &Replica, cluster: &str) -> BTreeMap<&'static str, usize> {
    let mut out = BTreeMap::new();
    for ((t, _), uuids) in owned(replica, cluster) {
        *out.entry(t).or_insert(0) += uuids.len();
    }
    out
}
