//! An in-memory replica of monitored tables, fed by monitor replies and update notifications
//! (`update`, `update2`, `update3`), indexed by `name` and by `external_ids` entries.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::Value;
use uuid::Uuid;

use crate::datum::Datum;
use crate::error::Error;
use crate::schema::DatabaseSchema;

/// A row's columns (without `_uuid` and `_version`).
pub type RowData = BTreeMap<String, Datum>;

#[derive(Debug, Clone, Default)]
pub struct TableReplica {
    rows: HashMap<Uuid, RowData>,
    by_name: HashMap<String, BTreeSet<Uuid>>,
    by_external_id: HashMap<(String, String), BTreeSet<Uuid>>,
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
        self.by_name.get(name).into_iter().flatten().filter_map(|u| self.rows.get_key_value(u))
    }

    /// Rows whose `external_ids` has `key` = `value`.
    pub fn by_external_id<'a>(&'a self, key: &str, value: &str) -> impl Iterator<Item = (&'a Uuid, &'a RowData)> + 'a {
        self.by_external_id
            .get(&(key.to_string(), value.to_string()))
            .into_iter()
            .flatten()
            .filter_map(|u| self.rows.get_key_value(u))
    }

    fn unindex(&mut self, uuid: &Uuid) {
        let Some(row) = self.rows.get(uuid) else { return };
        if let Some(name) = row.get("name").and_then(Datum::as_str)
            && let Some(s) = self.by_name.get_mut(name)
        {
            s.remove(uuid);
            if s.is_empty() {
                self.by_name.remove(name);
            }
        }
        if let Some(ids) = row.get("external_ids") {
            for (k, v) in ids.string_pairs() {
                let key = (k.to_string(), v.to_string());
                if let Some(s) = self.by_external_id.get_mut(&key) {
                    s.remove(uuid);
                    if s.is_empty() {
                        self.by_external_id.remove(&key);
                    }
                }
            }
        }
    }

    fn index(&mut self, uuid: Uuid) {
        let Some(row) = self.rows.get(&uuid) else { return };
        if let Some(name) = row.get("name").and_then(Datum::as_str) {
            self.by_name.entry(name.to_string()).or_default().insert(uuid);
        }
        if let Some(ids) = row.get("external_ids") {
            for (k, v) in ids.string_pairs() {
                self.by_external_id.entry((k.to_string(), v.to_string())).or_default().insert(uuid);
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
    tables: BTreeMap<String, TableReplica>,
    /// The last transaction seen (monitor_cond_since / update3), to resume after a reconnect.
    pub last_txn_id: Option<String>,
}

impl Replica {
    pub fn new(schema: Arc<DatabaseSchema>) -> Self {
        Replica { schema, tables: BTreeMap::new(), last_txn_id: None }
    }

    pub fn schema(&self) -> &Arc<DatabaseSchema> {
        &self.schema
    }

    /// A replaced schema (after a reconnect, perhaps to an upgraded server) empties the replica.
    pub fn set_schema(&mut self, schema: Arc<DatabaseSchema>) {
        if *schema != *self.schema {
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

    fn decode_row(&self, table: &str, row: &Value) -> Result<RowData, Error> {
        let ts = self
            .schema
            .tables
            .get(table)
            .ok_or_else(|| Error::Protocol(format!("update for unknown table {table}")))?;
        let Value::Object(cols) = row else { return Err(Error::Protocol(format!("{table}: row is not an object"))) };
        let mut out = RowData::new();
        for (c, v) in cols {
            if c == "_uuid" || c == "_version" {
                continue;
            }
            let ty = ts.columns.get(c).ok_or_else(|| Error::Protocol(format!("{table}: unknown column {c}")))?;
            out.insert(c.clone(), Datum::from_json(v, ty).map_err(|m| Error::Protocol(format!("{table}.{c}: {m}")))?);
        }
        Ok(out)
    }

    /// A whole row: columns the server left out (update2 omits those at their default value)
    /// are filled in, so that rows compare equal however they arrived.
    fn decode_full_row(&self, table: &str, row: &Value) -> Result<RowData, Error> {
        let mut out = self.decode_row(table, row)?;
        if let Some(ts) = self.schema.tables.get(table) {
            for (c, ty) in &ts.columns {
                if c != "_uuid" && c != "_version" && !out.contains_key(c) {
                    out.insert(c.clone(), Datum::default_for(ty));
                }
            }
        }
        Ok(out)
    }

    /// Applies `table-updates2` (monitor_cond / monitor_cond_since replies, update2 / update3
    /// notifications).
    pub fn apply_update2(&mut self, updates: &Value) -> Result<Changes, Error> {
        let Value::Object(tables) = updates else {
            return Err(Error::Protocol("table-updates2 is not an object".into()));
        };
        let mut changes = Changes::default();
        for (table, rows) in tables {
            if !self.schema.tables.contains_key(table) {
                return Err(Error::Protocol(format!("update for unknown table {table}")));
            }
            let Value::Object(rows) = rows else { return Err(Error::Protocol(format!("{table}: rows not an object"))) };
            for (uuid, update) in rows {
                let uuid = Uuid::parse_str(uuid).map_err(|_| Error::Protocol(format!("{table}: bad uuid {uuid}")))?;
                let Value::Object(update) = update else {
                    return Err(Error::Protocol(format!("{table}: bad row update")));
                };
                let (kind, body) =
                    update.iter().next().ok_or_else(|| Error::Protocol(format!("{table}: empty row update")))?;
                match kind.as_str() {
                    "initial" | "insert" => {
                        let row = self.decode_full_row(table, body)?;
                        self.tables.entry(table.clone()).or_default().put(uuid, row);
                        changes.inserted += 1;
                    }
                    "delete" => {
                        if self.tables.entry(table.clone()).or_default().remove(&uuid) {
                            changes.deleted += 1;
                        }
                    }
                    "modify" => {
                        let diff = self.decode_row(table, body)?;
                        let t = self.tables.entry(table.clone()).or_default();
                        if !t.rows.contains_key(&uuid) {
                            return Err(Error::Protocol(format!("{table}: modify of unknown row {uuid}")));
                        }
                        // In place: a port joining a switch of thousands must not copy the rest.
                        let reindex = diff.contains_key("name") || diff.contains_key("external_ids");
                        if reindex {
                            t.unindex(&uuid);
                        }
                        let row = t.rows.get_mut(&uuid).expect("checked above");
                        for (c, d) in diff {
                            match row.get_mut(&c) {
                                Some(cur) => cur.apply_diff(d),
                                None => {
                                    row.insert(c, d);
                                }
                            }
                        }
                        if reindex {
                            t.index(uuid);
                        }
                        changes.modified += 1;
                    }
                    other => return Err(Error::Protocol(format!("{table}: unknown row update {other:?}"))),
                }
            }
        }
        Ok(changes)
    }

    /// Applies RFC 7047 `table-updates` (plain `monitor` / `update`): `new` replaces the row,
    /// its absence deletes it.
    pub fn apply_update1(&mut self, updates: &Value) -> Result<Changes, Error> {
        let Value::Object(tables) = updates else {
            return Err(Error::Protocol("table-updates is not an object".into()));
        };
        let mut changes = Changes::default();
        for (table, rows) in tables {
            if !self.schema.tables.contains_key(table) {
                return Err(Error::Protocol(format!("update for unknown table {table}")));
            }
            let Value::Object(rows) = rows else { return Err(Error::Protocol(format!("{table}: rows not an object"))) };
            for (uuid, update) in rows {
                let uuid = Uuid::parse_str(uuid).map_err(|_| Error::Protocol(format!("{table}: bad uuid {uuid}")))?;
                match update.get("new") {
                    Some(new) => {
                        let row = self.decode_full_row(table, new)?;
                        let t = self.tables.entry(table.clone()).or_default();
                        if t.rows.contains_key(&uuid) {
                            changes.modified += 1;
                        } else {
                            changes.inserted += 1;
                        }
                        t.put(uuid, row);
                    }
                    None => {
                        if self.tables.entry(table.clone()).or_default().remove(&uuid) {
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
