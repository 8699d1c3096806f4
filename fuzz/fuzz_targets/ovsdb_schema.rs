//! Schema decoding (`DatabaseSchema::from_json`), as the client reads `get_schema`'s reply,
//! then what the client does with a schema: check requirements and build a replica.
//!
//! Input: the schema's JSON.
//! Properties: decoding is deterministic; every column has `_uuid` and `_version`; every
//! column's default value round-trips through JSON.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use stacknet_ovsdb::{DatabaseSchema, Datum, Replica, nb};

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else { return };
    let Ok(schema) = DatabaseSchema::from_json(&v) else { return };
    assert_eq!(DatabaseSchema::from_json(&v).ok().as_ref(), Some(&schema));
    for (name, table) in &schema.tables {
        assert!(table.columns.contains_key("_uuid") && table.columns.contains_key("_version"), "{name}");
        for (column, ty) in &table.columns {
            let d = Datum::default_for(ty);
            assert_eq!(Datum::from_json(&d.to_json(), ty).as_ref(), Ok(&d), "{name}.{column}: {ty:?}");
        }
    }
    let req = nb::requirements();
    let needs: Vec<(&str, Vec<&str>)> =
        req.tables.iter().map(|(t, cs)| (t.as_str(), cs.iter().map(String::as_str).collect())).collect();
    let needs: Vec<(&str, &[&str])> = needs.iter().map(|(t, cs)| (*t, cs.as_slice())).collect();
    let _ = schema.require(req.version, &needs);
    let mut replica = Replica::new(Arc::new(schema.clone()));
    replica.set_schema(Arc::new(schema));
});
