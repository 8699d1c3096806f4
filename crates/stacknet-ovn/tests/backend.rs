//! The backend against a live Northbound database (the ovsdb tier): programs, converges,
//! writes nothing the second time, collects only its own orphans, survives a dead server.
//! Also: the schema the pure plan tests (`plan.rs`) load is the installed one, cut down.

use std::collections::BTreeSet;
use std::time::Duration;

use stacknet_engine::objects::Kind;
use stacknet_engine::objects::ObjectKey;
use stacknet_engine::{ClusterIndex, PolicyEngine, manifest};
use stacknet_ovn::names::KEY_CLUSTER;
use stacknet_ovn::reconcile::owned_counts;
use stacknet_ovn::{OvnBackend, Topology, build};
use stacknet_ovsdb::nb;
use stacknet_ovsdb::schema::DatabaseSchema;
use stacknet_sandbox::Ovn;

fn three_tier() -> PolicyEngine {
    let mut objects = Vec::new();
    for f in ["cluster.yaml", "policies.yaml"] {
        let path = format!("{}/../../examples/three-tier/{f}", env!("CARGO_MANIFEST_DIR"));
        objects.extend(manifest::parse(f, &std::fs::read_to_string(path).unwrap()).unwrap().objects);
    }
    PolicyEngine::from_index(ClusterIndex::from_objects(objects))
}

fn desired(engine: &PolicyEngine) -> stacknet_ovn::Desired {
    build(engine, &Topology::from_pods("test", engine.index()))
}

fn backend(ovn: &Ovn) -> OvnBackend {
    OvnBackend::connect(vec![ovn.nb.remote().parse().unwrap()])
}

/// The three-tier example, programmed on `ovn` by a fresh backend.
async fn programmed(ovn: &Ovn) -> (OvnBackend, PolicyEngine) {
    let b = backend(ovn);
    let engine = three_tier();
    b.reconcile(&desired(&engine)).await.unwrap();
    (b, engine)
}

fn uuids(b: &OvnBackend, table: &str) -> BTreeSet<stacknet_ovsdb::Uuid> {
    b.client().replica().as_ref().unwrap().table(table).rows().map(|(u, _)| *u).collect()
}

#[tokio::test]
async fn programs_once_then_writes_nothing() {
    let ovn = Ovn::with_northd().unwrap();
    let b = backend(&ovn);
    let engine = three_tier();
    let d = desired(&engine);
    let r = b.reconcile(&d).await.unwrap();
    assert_eq!(r.transactions, 1);
    assert!(r.summary.inserts > 20, "{r:?}");
    let again = b.reconcile(&d).await.unwrap();
    assert_eq!(again.transactions, 0, "second reconcile wrote {again:?}");

    // What ovn-nbctl sees.
    let pgs = ovn.nbctl(&["--bare", "--columns=name", "list", "Port_Group"]).unwrap();
    assert_eq!(pgs.split_whitespace().count(), 7 + 2, "seven policies, two default-deny groups");
    let acls = ovn.nbctl(&["--bare", "--columns=match", "list", "ACL"]).unwrap();
    assert!(acls.contains("outport == @sn_pg_"), "{acls}");
    // ovn-northd accepted every match we wrote (a bad expression is logged and dropped).
    ovn.sync_sb().unwrap();
    let log = std::fs::read_to_string(ovn.dir().join("northd.log")).unwrap();
    assert!(!log.contains("rror"), "northd complained:\n{log}");
}

#[tokio::test]
async fn pod_churn_changes_membership_not_acls() {
    let ovn = Ovn::nb_only().unwrap();
    let (b, mut engine) = programmed(&ovn).await;
    let acls_before = uuids(&b, nb::ACL);

    // A second database pod: a port, and memberships; the ACLs stay as they were.
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: db-1, namespace: leonardo, labels: {tier: db}}\nspec: {containers: [{name: c, image: i, ports: [{name: postgres, containerPort: 5432}]}]}\nstatus: {podIP: 10.244.3.41}\n";
    for o in manifest::parse("p.yaml", text).unwrap().objects {
        engine.apply(o);
    }
    let r = b.reconcile(&desired(&engine)).await.unwrap();
    assert_eq!(r.summary.inserts, 1, "{r:?}");
    assert_eq!(r.summary.updates, 0, "{r:?}");
    assert_eq!(r.summary.deletes, 0, "{r:?}");
    assert_eq!(uuids(&b, nb::ACL), acls_before, "ACL rows untouched by pod churn");
    let show =
        ovn.nbctl(&["--bare", "--columns=ports", "find", "Logical_Switch", "name=test_net-10.244.3.0_24"]).unwrap();
    assert!(!show.trim().is_empty());

    // And away again.
    engine.delete(Kind::Pod, &ObjectKey::new("leonardo", "db-1"));
    let r = b.reconcile(&desired(&engine)).await.unwrap();
    assert_eq!((r.summary.inserts, r.summary.deletes), (0, 1), "{r:?}");
    assert_eq!(uuids(&b, nb::ACL), acls_before);
    assert_eq!(b.reconcile(&desired(&engine)).await.unwrap().transactions, 0);
}

#[tokio::test]
async fn garbage_collection_touches_owned_rows_only() {
    let ovn = Ovn::nb_only().unwrap();
    let (b, mut engine) = programmed(&ovn).await;

    // Someone else's rows: an address set, a port group with an ACL, and a VM port on our
    // switch (the seed's PostgreSQL VM next to the pods).
    let sw = "test_net-10.244.3.0_24";
    ovn.nbctl(&["create", "Address_Set", "name=foreign_as", "addresses=\"192.0.2.1\""]).unwrap();
    ovn.nbctl(&[
        "pg-add",
        "foreign_pg",
        "--",
        "--type=port-group",
        "acl-add",
        "foreign_pg",
        "to-lport",
        "900",
        "outport == @foreign_pg",
        "drop",
    ])
    .unwrap();
    ovn.nbctl(&[
        "lsp-add",
        sw,
        "vm-postgres",
        "--",
        "lsp-set-addresses",
        "vm-postgres",
        "0a:00:00:00:00:99 10.244.3.99",
    ])
    .unwrap();
    let before = |what: &[&str]| ovn.nbctl(what).unwrap();
    let foreign_view = [
        before(&["list", "Address_Set", "foreign_as"]),
        before(&["list", "Port_Group", "foreign_pg"]),
        before(&["acl-list", "foreign_pg"]),
        before(&["list", "Logical_Switch_Port", "vm-postgres"]),
    ];

    // Everything of ours goes: policies and pods deleted.
    let policies: Vec<ObjectKey> = engine.index().policies().map(|p| p.key.clone()).collect();
    for k in policies {
        engine.delete(Kind::NetworkPolicy, &k);
    }
    let pods: Vec<ObjectKey> = engine.index().pods().map(|(_, p)| p.key.clone()).collect();
    for k in pods {
        engine.delete(Kind::Pod, &k);
    }
    let r = b.reconcile(&desired(&engine)).await.unwrap();
    assert!(r.summary.deletes > 10, "{r:?}");
    // Our switch holding the VM's port is kept (deleting it would delete the port), and said so.
    assert_eq!(r.warnings.len(), 1, "{r:?}");
    assert!(r.warnings[0].contains(sw) && r.warnings[0].contains("kept"), "{r:?}");
    let left = owned_counts(b.client().replica().as_ref().unwrap(), "test");
    assert_eq!(left, [(nb::LOGICAL_SWITCH, 1)].into(), "owned rows left: {left:?}");
    let held = ovn.nbctl(&["--bare", "--columns=ports", "list", "Logical_Switch", sw]).unwrap();
    assert_eq!(held.split_whitespace().count(), 1, "only the VM's port is left on it");

    // The foreign rows are exactly as they were.
    let after = [
        before(&["list", "Address_Set", "foreign_as"]),
        before(&["list", "Port_Group", "foreign_pg"]),
        before(&["acl-list", "foreign_pg"]),
        before(&["list", "Logical_Switch_Port", "vm-postgres"]),
    ];
    assert_eq!(foreign_view, after);
    let rows = ovn.nbctl(&["--bare", "--columns=external_ids", "list", "Address_Set"]).unwrap();
    assert!(!rows.contains(KEY_CLUSTER), "{rows}");
}

#[tokio::test]
async fn duplicates_from_an_interrupted_write_are_removed() {
    let ovn = Ovn::nb_only().unwrap();
    let (b, engine) = programmed(&ovn).await;
    let d = desired(&engine);
    // A second row claiming the identity of one of ours (as a crash between two writes of an
    // older, less careful writer could leave).
    let ids =
        b.client().replica().as_ref().unwrap().table(nb::ADDRESS_SET).rows().next().unwrap().1["external_ids"].clone();
    let mut t = stacknet_ovsdb::Transaction::new(nb::DATABASE);
    t.insert(
        nb::ADDRESS_SET,
        stacknet_ovsdb::Row::from([
            ("name".to_string(), stacknet_ovsdb::Datum::Atom("dup_of_ours".into())),
            ("external_ids".to_string(), ids),
        ]),
        None,
    );
    b.client().transact(&t).await.unwrap();
    let r = b.reconcile(&d).await.unwrap();
    assert_eq!(r.summary.duplicates, 1, "{r:?}");
    assert!(
        ovn.nbctl(&["--bare", "--columns=name", "list", "Address_Set"]).unwrap().lines().all(|l| l != "dup_of_ours")
    );
    assert_eq!(b.reconcile(&d).await.unwrap().transactions, 0);
}

#[tokio::test]
async fn a_name_taken_by_someone_else_is_reported_not_overwritten() {
    let ovn = Ovn::nb_only().unwrap();
    let b = backend(&ovn);
    let d = desired(&three_tier());
    let taken = d.rows.values().find(|r| r.table == nb::PORT_GROUP).unwrap();
    let name = taken.columns["name"].as_str().unwrap().to_string();
    ovn.nbctl(&["pg-add", &name]).unwrap();
    let e = b.reconcile(&d).await.unwrap_err();
    let op = e.operation().expect("server error");
    assert_eq!(op.kind(), stacknet_ovsdb::ErrorKind::ConstraintViolation, "{e}");
    assert!(e.to_string().contains(&name), "{e}");
    // The other party's port group is still there, untouched.
    assert!(ovn.nbctl(&["--bare", "--columns=name", "list", "Port_Group"]).unwrap().contains(&name));
}

#[tokio::test]
async fn converges_when_the_server_dies_mid_reconcile() {
    let mut ovn = Ovn::nb_only().unwrap();
    // A big first write, so that the kill lands while it is in flight or just after.
    let mut objects = Vec::new();
    let mut text = String::new();
    for i in 0..600 {
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: ns{}, labels: {{app: a{}}}}}\nstatus: {{podIP: 10.9.{}.{}}}\n",
            i % 5, i % 7, i / 200, 1 + i % 200
        ));
    }
    text.push_str("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: ns1}\nspec: {podSelector: {matchLabels: {app: a1}}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: a2}}}]}]}\n");
    objects.extend(manifest::parse("big.yaml", &text).unwrap().objects);
    let engine = PolicyEngine::from_index(ClusterIndex::from_objects(objects));
    let d = desired(&engine);
    let b = backend(&ovn);
    b.client().connected(Duration::from_secs(10)).await.unwrap();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let d2 = d.clone();
    let task = tokio::spawn(async move {
        let r = b.reconcile(&d2).await;
        let _ = done_tx.send(());
        (b, r)
    });
    // Where the kill lands is the point (in flight, or just after), not a condition; and the
    // server stays down long enough for the client to see it gone.
    tokio::time::sleep(Duration::from_millis(3)).await;
    ovn.nb.kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    ovn.nb.restart().unwrap();
    let _ = done_rx.await;
    let (b, r) = task.await.unwrap();
    r.unwrap();
    // Whatever the kill interrupted, the database now equals the desired state.
    assert_eq!(b.reconcile(&d).await.unwrap().transactions, 0);
    let ports = ovn.nbctl(&["--bare", "--columns=name", "list", "Logical_Switch_Port"]).unwrap();
    assert_eq!(ports.lines().filter(|l| l.starts_with("test_ns")).count(), 600);
}

#[test]
fn the_schema_of_the_plan_tests_is_the_installed_one_cut_to_the_columns_we_use() {
    let parse = |text: &str| DatabaseSchema::from_json(&serde_json::from_str(text).unwrap()).unwrap();
    let installed =
        parse(&std::fs::read_to_string("/usr/share/ovn/ovn-nb.ovsschema").expect("ovn-central is installed"));
    let cut = parse(include_str!("data/ovn-nb-used.ovsschema"));
    assert_eq!(cut.version, installed.version);
    for (table, columns) in nb::USED {
        let (ours, theirs) = (&cut.tables[*table], &installed.tables[*table]);
        assert_eq!(ours.is_root, theirs.is_root, "{table}");
        for c in *columns {
            assert_eq!(ours.columns.get(*c), theirs.columns.get(*c), "{table}.{c}");
        }
        assert_eq!(ours.columns.len(), columns.len() + 2, "{table}: only the columns we use (and _uuid, _version)");
    }
    assert_eq!(cut.tables.len(), nb::USED.len());
}
