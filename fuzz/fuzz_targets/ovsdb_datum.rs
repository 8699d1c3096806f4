//! Datum decoding (`Datum::from_json`, `Atom::from_json`) by column type, and column types
//! themselves (`schema::ColumnType::from_json`).
//!
//! Input: byte 0 picks the column type: below 0x80, a column of the Northbound schema
//! stacknet monitors (`crates/stacknet-ovn/tests/data/ovn-nb-used.ovsschema`), the rest being
//! the value's JSON; from 0x80, the rest is `[type, value]`, any column type with its value
//! (the seeds hold every column type of the installed OVN Northbound schema).
//! Properties: a decoded datum encodes to JSON that decodes to the same datum, with its type
//! and without (`Datum::from_json_untyped`); a column's default value round-trips too.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use stacknet_ovsdb::Datum;
use stacknet_ovsdb::schema::{ColumnType, DatabaseSchema};

static COLUMNS: LazyLock<Vec<ColumnType>> = LazyLock::new(|| {
    let text = include_str!("../../crates/stacknet-ovn/tests/data/ovn-nb-used.ovsschema");
    let schema = DatabaseSchema::from_json(&serde_json::from_str(text).expect("schema JSON")).expect("schema");
    schema.tables.values().flat_map(|t| t.columns.values().cloned()).collect()
});

fn check(v: &Value, ty: &ColumnType) {
    let default = Datum::default_for(ty);
    assert_eq!(Datum::from_json(&default.to_json(), ty).as_ref(), Ok(&default), "default of {ty:?}");
    let Ok(d) = Datum::from_json(v, ty) else { return };
    let json = d.to_json();
    assert_eq!(Datum::from_json(&json, ty).as_ref(), Ok(&d), "typed round trip of {v} as {json}");
    assert_eq!(Datum::from_json_untyped(&json).as_ref(), Ok(&d), "untyped round trip of {v} as {json}");
    let _ = d.to_string();
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let Ok(v) = serde_json::from_slice::<Value>(rest) else { return };
    if selector < 0x80 {
        check(&v, &COLUMNS[usize::from(selector) % COLUMNS.len()]);
    } else if let Some([ty, value]) = v.as_array().map(Vec::as_slice)
        && let Ok(ty) = ColumnType::from_json(ty)
    {
        check(value, &ty);
    }
});
