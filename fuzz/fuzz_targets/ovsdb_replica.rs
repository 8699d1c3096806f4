//! The replica's update decoding: monitor replies and update notifications applied to a
//! replica of the Northbound tables stacknet monitors, as `table-updates2` values
//! (`Replica::apply_update2`), as text decoded row by row (`Replica::apply_update2_json`, what
//! the client uses), and as RFC 7047 `table-updates` (`Replica::apply_update1`).
//!
//! Input: a JSON list of updates, applied in order.
//! Properties: the value and text decoders agree (same result, same rows); the name and
//! `external_ids` indexes always match the rows.
#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use serde_json::value::RawValue;
use stacknet_ovsdb::{DatabaseSchema, Datum, Replica, Uuid};

static SCHEMA: LazyLock<Arc<DatabaseSchema>> = LazyLock::new(|| {
    let text = include_str!("../../crates/stacknet-ovn/tests/data/ovn-nb-used.ovsschema");
    Arc::new(DatabaseSchema::from_json(&serde_json::from_str(text).expect("schema JSON")).expect("schema"))
});

type Rows = BTreeMap<Uuid, Vec<(String, Datum)>>;

/// Every table's rows, and a check of the indexes against them.
fn contents(r: &Replica) -> BTreeMap<String, Rows> {
    let mut out = BTreeMap::new();
    for table in SCHEMA.tables.keys() {
        let t = r.table(table);
        let mut rows = Rows::new();
        for (uuid, row) in t.rows() {
            if let Some(name) = row.get("name").and_then(Datum::as_str) {
                assert!(t.by_name(name).any(|(u, _)| u == uuid), "{table} {uuid}: not found by its name {name:?}");
            }
            if let Some(ids) = row.get("external_ids") {
                for (k, v) in ids.string_pairs() {
                    assert!(t.by_external_id(k, v).any(|(u, _)| u == uuid), "{table} {uuid}: not found by {k}={v}");
                }
            }
            rows.insert(*uuid, row.iter().map(|(c, d)| (c.to_string(), d.clone())).collect());
        }
        for (uuid, row) in t.rows() {
            if let Some(name) = row.get("name").and_then(Datum::as_str) {
                for (u, other) in t.by_name(name) {
                    assert_eq!(
                        other.get("name").and_then(Datum::as_str),
                        Some(name),
                        "{table} {u} listed by {uuid}'s name"
                    );
                }
            }
        }
        out.insert(table.clone(), rows);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Array(steps)) = serde_json::from_slice::<Value>(data) else { return };
    let mut by_value = Replica::new(SCHEMA.clone());
    let mut by_text =
        Replica::new(SCHEMA.clone()).with_indexed_keys(Some(vec!["k8s.ovn.org/owner".into(), "owner".into()]));
    let mut v1 = Replica::new(SCHEMA.clone());
    for step in &steps {
        let a = by_value.apply_update2(step);
        let raw = RawValue::from_string(step.to_string()).expect("JSON");
        let b = by_text.apply_update2_json(&raw);
        match (&a, &b) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "the decoders changed different rows"),
            (Err(_), Err(_)) => {}
            _ => panic!("the decoders disagree: {a:?} vs {b:?}"),
        }
        assert_eq!(contents(&by_value), contents(&by_text), "the decoders left different rows");
        let _ = v1.apply_update1(step);
        contents(&v1);
    }
});
