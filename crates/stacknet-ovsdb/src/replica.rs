//! An in-memory replica of monitored tables, fed by monitor replies and update notifications
//! (`update`, `update2`, `update3`), indexed by `name` and by `external_ids` entries.
//!
//! Memory is the replica's main cost (a Northbound database of 10k pods is some 15k rows of
//! twenty columns), so a row is a slice of values in its table's column order, not a map of
//! column names, and an index entry naming one row holds it inline. Big updates are decoded
//! row by row from the message's text ([`Replica::apply_update2_json`]), never as one JSON tree.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::Value;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::datum::Datum;
use crate::error::Error;
use crate::schema::{ColumnType, DatabaseSchema};

/// A table's columns (without `_uuid` and `_version`), in the order its rows store them.
#[derive(Debug, PartialEq)]
struct Layout {
    names: Vec<String>,
    types: Vec<ColumnType>,
}

impl Layout {
    fn position(&self, column: &str) -> Option<usize> {
        self.names.binary_search_by(|n| n.as_str().cmp(column)).ok()
    }
}

/// A row's columns (without `_uuid` and `_version`): every column of its table, those not
/// monitored or not sent at their default value.
#[derive(Debug, Clone)]
pub struct RowData {
    layout: Arc<Layout>,
    values: Box<[Datum]>,
}

impl RowData {
    pub fn get(&self, column: &str) -> Option<&Datum> {
        self.layout.position(column).map(|i| &self.values[i])
    }

    /// The columns and their values, in column-name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Datum)> {
        self.layout.names.iter().map(String::as_str).zip(self.values.iter())
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn contains_key(&self, column: &str) -> bool {
        self.layout.position(column).is_some()
    }
}

impl PartialEq for RowData {
    fn eq(&self, other: &Self) -> bool {
        self.layout.names == other.layout.names && self.values == other.values
    }
}

impl std::ops::Index<&str> for RowData {
    type Output = Datum;
    fn index(&self, column: &str) -> &Datum {
        self.get(column).unwrap_or_else(|| panic!("no column {column}"))
    }
}

/// The rows an index entry names: nearly always one, held inline.
#[derive(Debug, Clone)]
enum Uuids {
    One(Uuid),
    Many(BTreeSet<Uuid>),
}

impl Uuids {
    fn insert(&mut self, u: Uuid) {
        match self {
            Uuids::One(x) if *x == u => {}
            Uuids::One(x) => *self = Uuids::Many([*x, u].into()),
            Uuids::Many(s) => {
                s.insert(u);
            }
        }
    }

    /// Takes `u` out; true if nothing is left.
    fn remove(&mut self, u: &Uuid) -> bool {
        match self {
            Uuids::One(x) => x == u,
            Uuids::Many(s) => {
                s.remove(u);
                match s.len() {
                    0 => true,
                    1 => {
                        let last = *s.iter().next().expect("one left");
                        *self = Uuids::One(last);
                        false
                    }
                    _ => false,
                }
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Uuid> {
        let (one, many) = match self {
            Uuids::One(u) => (Some(u), None),
            Uuids::Many(s) => (None, Some(s.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

fn index_add<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Uuids>, key: K, uuid: Uuid) {
    match map.get_mut(&key) {
        Some(u) => u.insert(uuid),
        None => {
            map.insert(key, Uuids::One(uuid));
        }
    }
}

fn index_remove<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Uuids>, key: &K, uuid: &Uuid) {
    if map.get_mut(key).is_some_and(|u| u.remove(uuid)) {
        map.remove(key);
    }
}

#[derive(Debug, Clone, Default)]
pub struct TableReplica {
    rows: HashMap<Uuid, RowData>,
    by_name: HashMap<String, Uuids>,
    by_external_id: HashMap<(String, String), Uuids>,
    /// The `external_ids` keys indexed (`None`: all).
    indexed: Option<Arc<[String]>>,
}

impl TableReplica {
    pub fn get(&self, uuid: &Uuid) -> Option<&RowData> {
        self.rows.get(uuid)
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn rows(&self) -> impl Iterator<Item = (&Uuid, &RowData)> {
        self.rows.iter()
    }

    /// Rows whose `name` column is `name`.
    pub fn by_name<'a>(&'a self, name: &str) -> impl Iterator<Item = (&'a Uuid, &'a RowData)> + 'a {
        self.by_name.get(name).into_iter().flat_map(Uuids::iter).filter_map(|u| self.rows.get_key_value(u))
    }

    fn is_indexed(&self, key: &str) -> bool {
        self.indexed.as_ref().is_none_or(|keys| keys.iter().any(|k| k == key))
    }

    /// Rows whose `external_ids` has `key` = `value` (from the index, or by a scan for a key
    /// that is not indexed).
    pub fn by_external_id<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
    ) -> Box<dyn Iterator<Item = (&'a Uuid, &'a RowData)> + 'a> {
        if !self.is_indexed(key) {
            return Box::new(self.rows.iter().filter(move |(_, r)| {
                r.get("external_ids").and_then(|d| d.map_get(key)).and_then(|a| a.as_str()) == Some(value)
            }));
        }
        Box::new(
            self.by_external_id
                .get(&(key.to_string(), value.to_string()))
                .into_iter()
                .flat_map(Uuids::iter)
                .filter_map(|u| self.rows.get_key_value(u)),
        )
    }

    fn unindex(&mut self, uuid: &Uuid) {
        let Some(row) = self.rows.get(uuid) else { return };
        if let Some(name) = row.get("name").and_then(Datum::as_str) {
            index_remove(&mut self.by_name, &name.to_string(), uuid);
        }
        if let Some(ids) = row.get("external_ids") {
            for (k, v) in ids.string_pairs() {
                if self.indexed.as_ref().is_none_or(|keys| keys.iter().any(|i| i == k)) {
                    index_remove(&mut self.by_external_id, &(k.to_string(), v.to_string()), uuid);
                }
            }
        }
    }

    fn index(&mut self, uuid: Uuid) {
        let Some(row) = self.rows.get(&uuid) else { return };
        if let Some(name) = row.get("name").and_then(Datum::as_str) {
            index_add(&mut self.by_name, name.to_string(), uuid);
        }
        if let Some(ids) = row.get("external_ids") {
            for (k, v) in ids.string_pairs() {
                if self.indexed.as_ref().is_none_or(|keys| keys.iter().any(|i| i == k)) {
                    index_add(&mut self.by_external_id, (k.to_string(), v.to_string()), uuid);
                }
            }
        }
    }

    fn put(&mut self, uuid: Uuid, row: RowData) {
        self.unindex(&uuid);
        self.rows.insert(uuid, row);
        self.index(uuid);
    }

    fn remove(&mut self, uuid: &Uuid) -> bool {
        self.unindex(uuid);
        self.rows.remove(uuid).is_some()
    }
}

/// What one update changed, per table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub inserted: usize,
    pub modified: usize,
    pub deleted: usize,
}

#[derive(Debug, Clone)]
pub struct Replica {
    schema: Arc<DatabaseSchema>,
    layouts: BTreeMap<String, Arc<Layout>>,
    tables: BTreeMap<String, TableReplica>,
    /// The `external_ids` keys indexed (`None`: all).
    indexed: Option<Arc<[String]>>,
    /// The last transaction seen (monitor_cond_since / update3), to resume after a reconnect.
    pub last_txn_id: Option<String>,
}

fn layouts(schema: &DatabaseSchema) -> BTreeMap<String, Arc<Layout>> {
    schema
        .tables
        .iter()
        .map(|(t, ts)| {
            let (names, types) = ts
                .columns
                .iter()
                .filter(|(c, _)| *c != "_uuid" && *c != "_version")
                .map(|(c, ty)| (c.clone(), ty.clone()))
                .unzip();
            (t.clone(), Arc::new(Layout { names, types }))
        })
        .collect()
}

/// Row updates of one table, from JSON text: `{uuid: update, ...}`.
fn raw_rows(table: &str, rows: &RawValue) -> Result<BTreeMap<String, Box<RawValue>>, Error> {
    serde_json::from_str(rows.get()).map_err(|e| Error::Protocol(format!("{table}: rows not an object: {e}")))
}

impl Replica {
    pub fn new(schema: Arc<DatabaseSchema>) -> Self {
        Replica { layouts: layouts(&schema), schema, tables: BTreeMap::new(), indexed: None, last_txn_id: None }
    }

    /// Indexes only these `external_ids` keys (lookups by other keys scan the table): an
    /// index of every key costs an entry per key of every row.
    pub fn with_indexed_keys(mut self, keys: Option<Vec<String>>) -> Self {
        self.indexed = keys.map(Into::into);
        self.clear();
        self
    }

    fn table_mut(&mut self, table: &str) -> &mut TableReplica {
        let indexed = &self.indexed;
        self.tables
            .entry(table.to_string())
            .or_insert_with(|| TableReplica { indexed: indexed.clone(), ..TableReplica::default() })
    }

    pub fn schema(&self) -> &Arc<DatabaseSchema> {
        &self.schema
    }

    /// A replaced schema (after a reconnect, perhaps to an upgraded server) empties the replica.
    pub fn set_schema(&mut self, schema: Arc<DatabaseSchema>) {
        if *schema != *self.schema {
            self.layouts = layouts(&schema);
            self.schema = schema;
            self.clear();
        }
    }

    pub fn clear(&mut self) {
        self.tables.clear();
        self.last_txn_id = None;
    }

    /// The replica of a table (empty if nothing was received for it).
    pub fn table(&self, name: &str) -> &TableReplica {
        static EMPTY: std::sync::OnceLock<TableReplica> = std::sync::OnceLock::new();
        self.tables.get(name).unwrap_or_else(|| EMPTY.get_or_init(TableReplica::default))
    }

    fn layout(&self, table: &str) -> Result<&Arc<Layout>, Error> {
        self.layouts.get(table).ok_or_else(|| Error::Protocol(format!("update for unknown table {table}")))
    }

    /// The columns of `row` (a JSON object), each decoded by its type: (position, value).
    fn decode_columns(&self, table: &str, row: &Value) -> Result<Vec<(usize, Datum)>, Error> {
        let layout = self.layout(table)?;
        let Value::Object(cols) = row else { return Err(Error::Protocol(format!("{table}: row is not an object"))) };
        let mut out = Vec::with_capacity(cols.len());
        for (c, v) in cols {
            if c == "_uuid" || c == "_version" {
                continue;
            }
            let i = layout.position(c).ok_or_else(|| Error::Protocol(format!("{table}: unknown column {c}")))?;
            let d = Datum::from_json(v, &layout.types[i]).map_err(|m| Error::Protocol(format!("{table}.{c}: {m}")))?;
            out.push((i, d));
        }
        Ok(out)
    }

    /// A whole row: columns the server left out (update2 omits those at their default value)
    /// take their defaults, so that rows compare equal however they arrived.
    fn decode_full_row(&self, table: &str, row: &Value) -> Result<RowData, Error> {
        let layout = self.layout(table)?.clone();
        let mut values: Vec<Option<Datum>> = vec![None; layout.names.len()];
        for (i, d) in self.decode_columns(table, row)? {
            values[i] = Some(d);
        }
        let values = values.into_iter().zip(&layout.types).map(|(v, ty)| v.unwrap_or_else(|| Datum::default_for(ty)));
        Ok(RowData { values: values.collect(), layout })
    }

    fn check_table(&self, table: &str) -> Result<(), Error> {
        self.layout(table).map(|_| ())
    }

    /// Applies `table-updates2` (monitor_cond / monitor_cond_since replies, update2 / update3
    /// notifications).
    pub fn apply_update2(&mut self, updates: &Value) -> Result<Changes, Error> {
        let Value::Object(tables) = updates else {
            return Err(Error::Protocol("table-updates2 is not an object".into()));
        };
        let mut changes = Changes::default();
        for (table, rows) in tables {
            self.check_table(table)?;
            let Value::Object(rows) = rows else { return Err(Error::Protocol(format!("{table}: rows not an object"))) };
            for (uuid, update) in rows {
                self.apply_row2(table, uuid, update, &mut changes)?;
            }
        }
        Ok(changes)
    }

    /// [`Replica::apply_update2`] from the JSON text of `table-updates2`, decoded one row at
    /// a time (a monitor reply or an update echoing a big transaction is never one JSON tree).
    pub fn apply_update2_json(&mut self, updates: &RawValue) -> Result<Changes, Error> {
        let tables: BTreeMap<String, Box<RawValue>> = serde_json::from_str(updates.get())
            .map_err(|e| Error::Protocol(format!("table-updates2 is not an object: {e}")))?;
        let mut changes = Changes::default();
        for (table, rows) in &tables {
            self.check_table(table)?;
            for (uuid, update) in raw_rows(table, rows)? {
                let update: Value = serde_json::from_str(update.get())
                    .map_err(|e| Error::Protocol(format!("{table}: bad row update: {e}")))?;
                self.apply_row2(table, &uuid, &update, &mut changes)?;
            }
        }
        Ok(changes)
    }

    fn apply_row2(&mut self, table: &str, uuid: &str, update: &Value, changes: &mut Changes) -> Result<(), Error> {
        let uuid = Uuid::parse_str(uuid).map_err(|_| Error::Protocol(format!("{table}: bad uuid {uuid}")))?;
        let Value::Object(update) = update else {
            return Err(Error::Protocol(format!("{table}: bad row update")));
        };
        let (kind, body) = update.iter().next().ok_or_else(|| Error::Protocol(format!("{table}: empty row update")))?;
        match kind.as_str() {
            "initial" | "insert" => {
                let row = self.decode_full_row(table, body)?;
                self.table_mut(table).put(uuid, row);
                changes.inserted += 1;
            }
            "delete" => {
                if self.tables.get_mut(table).is_some_and(|t| t.remove(&uuid)) {
                    changes.deleted += 1;
                }
            }
            "modify" => {
                let diff = self.decode_columns(table, body)?;
                let layout = self.layout(table)?.clone();
                let t = self.table_mut(table);
                if !t.rows.contains_key(&uuid) {
                    return Err(Error::Protocol(format!("{table}: modify of unknown row {uuid}")));
                }
                // In place: a port joining a switch of thousands must not copy the rest.
                let reindex = diff.iter().any(|(i, _)| matches!(layout.names[*i].as_str(), "name" | "external_ids"));
                if reindex {
                    t.unindex(&uuid);
                }
                let row = t.rows.get_mut(&uuid).expect("checked above");
                for (i, d) in diff {
                    row.values[i].apply_diff(d);
                }
                if reindex {
                    t.index(uuid);
                }
                changes.modified += 1;
            }
            other => return Err(Error::Protocol(format!("{table}: unknown row update {other:?}"))),
        }
        Ok(())
    }

    /// Applies RFC 7047 `table-updates` (plain `monitor` / `update`): `new` replaces the row,
    /// its absence deletes it.
    pub fn apply_update1(&mut self, updates: &Value) -> Result<Changes, Error> {
        let Value::Object(tables) = updates else {
            return Err(Error::Protocol("table-updates is not an object".into()));
        };
        let mut changes = Changes::default();
        for (table, rows) in tables {
            self.check_table(table)?;
            let Value::Object(rows) = rows else { return Err(Error::Protocol(format!("{table}: rows not an object"))) };
            for (uuid, update) in rows {
                let uuid = Uuid::parse_str(uuid).map_err(|_| Error::Protocol(format!("{table}: bad uuid {uuid}")))?;
                match update.get("new") {
                    Some(new) => {
                        let row = self.decode_full_row(table, new)?;
                        let t = self.table_mut(table);
                        if t.rows.contains_key(&uuid) {
                            changes.modified += 1;
                        } else {
                            changes.inserted += 1;
                        }
                        t.put(uuid, row);
                    }
                    None => {
                        if self.tables.get_mut(table.as_str()).is_some_and(|t| t.remove(&uuid)) {
                            changes.deleted += 1;
                        }
                    }
                }
            }
        }
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Arc<DatabaseSchema> {
        Arc::new(
            DatabaseSchema::from_json(&json!({"name": "db", "version": "1.0.0", "tables": {"T": {"columns": {
                "name": {"type": "string"},
                "ports": {"type": {"key": "string", "min": 0, "max": "unlimited"}},
                "external_ids": {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}}
            }}}}))
            .unwrap(),
        )
    }

    #[test]
    fn update2_lifecycle_and_indexes() {
        let mut r = Replica::new(schema());
        let u = Uuid::new_v4();
        let us = u.to_string();
        r.apply_update2(&json!({"T": {us.clone(): {"initial": {"name": "a", "ports": ["set", ["p1", "p2"]],
            "external_ids": ["map", [["owner", "stacknet"]]]}}}}))
            .unwrap();
        assert_eq!(r.table("T").by_name("a").count(), 1);
        assert_eq!(r.table("T").by_external_id("owner", "stacknet").count(), 1);
        let c = r
            .apply_update2(&json!({"T": {us.clone(): {"modify": {"name": "b", "ports": "p2",
                "external_ids": ["map", [["owner", "stacknet"], ["k", "v"]]]}}}}))
            .unwrap();
        assert_eq!(c.modified, 1);
        let row = r.table("T").get(&u).unwrap();
        assert_eq!(row["ports"], Datum::set(["p1"]));
        assert_eq!(row["external_ids"], Datum::string_map([("k", "v")]));
        assert_eq!(r.table("T").by_name("a").count(), 0);
        assert_eq!(r.table("T").by_name("b").count(), 1);
        assert_eq!(r.table("T").by_external_id("owner", "stacknet").count(), 0);
        assert_eq!(r.table("T").by_external_id("k", "v").count(), 1);
        r.apply_update2(&json!({"T": {us.clone(): {"delete": null}}})).unwrap();
        assert!(r.table("T").is_empty());
        assert_eq!(r.table("T").by_name("b").count(), 0);
        assert!(r.apply_update2(&json!({"T": {us: {"modify": {"name": "x"}}}})).is_err());
        assert!(r.apply_update2(&json!({"Nope": {}})).is_err());
        // Columns left out of an insert take their defaults.
        let v = Uuid::new_v4();
        r.apply_update2(&json!({"T": {v.to_string(): {"insert": {}}}})).unwrap();
        let row = r.table("T").get(&v).unwrap();
        assert_eq!(row["name"], Datum::Atom("".into()));
        assert_eq!(row["ports"], Datum::empty_set());
        assert_eq!(row["external_ids"], Datum::Map(Default::default()));
        assert!(r.table("Other").is_empty());
    }

    #[test]
    fn text_and_value_updates_agree() {
        let (u, v) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
        let steps = [
            json!({"T": {u.clone(): {"initial": {"name": "a", "ports": ["set", ["p1", "p2"]]}},
                         v.clone(): {"insert": {"external_ids": ["map", [["k", "v"]]]}}}}),
            json!({"T": {u.clone(): {"modify": {"ports": ["set", ["p2", "p3"]], "name": "b"}}}}),
            json!({"T": {v.clone(): {"delete": null}}}),
        ];
        let (mut a, mut b) = (Replica::new(schema()), Replica::new(schema()));
        for step in &steps {
            let ca = a.apply_update2(step).unwrap();
            let raw = RawValue::from_string(step.to_string()).unwrap();
            let cb = b.apply_update2_json(&raw).unwrap();
            assert_eq!(ca, cb);
        }
        let u = Uuid::parse_str(&u).unwrap();
        assert_eq!(a.table("T").get(&u), b.table("T").get(&u));
        assert_eq!(b.table("T").get(&u).unwrap()["ports"], Datum::set(["p1", "p3"]));
        assert_eq!(b.table("T").by_name("b").count(), 1);
        assert_eq!(b.table("T").len(), 1);
        let bad = RawValue::from_string(r#"{"T": {"x": {"insert": {}}}}"#.into()).unwrap();
        assert!(b.apply_update2_json(&bad).is_err());
        let bad = RawValue::from_string(r#"{"T": [1]}"#.into()).unwrap();
        assert!(b.apply_update2_json(&bad).is_err());
    }

    #[test]
    fn update1() {
        let mut r = Replica::new(schema());
        let us = Uuid::new_v4().to_string();
        r.apply_update1(
            &json!({"T": {us.clone(): {"new": {"name": "a", "ports": ["set", []], "external_ids": ["map", []]}}}}),
        )
        .unwrap();
        assert_eq!(r.table("T").len(), 1);
        r.apply_update1(&json!({"T": {us: {"old": {"name": "a"}}}})).unwrap();
        assert!(r.table("T").is_empty());
    }
}
