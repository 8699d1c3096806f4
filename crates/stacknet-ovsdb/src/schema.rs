//! Database schemas (RFC 7047 §3.2), read from the server with `get_schema` and checked against
//! what a caller needs, so a too-old database fails with a message naming what is missing.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomicType {
    Integer,
    Real,
    Boolean,
    String,
    Uuid,
}

impl AtomicType {
    pub fn name(self) -> &'static str {
        match self {
            AtomicType::Integer => "integer",
            AtomicType::Real => "real",
            AtomicType::Boolean => "boolean",
            AtomicType::String => "string",
            AtomicType::Uuid => "uuid",
        }
    }

    fn parse(s: &str) -> Result<AtomicType, String> {
        Ok(match s {
            "integer" => AtomicType::Integer,
            "real" => AtomicType::Real,
            "boolean" => AtomicType::Boolean,
            "string" => AtomicType::String,
            "uuid" => AtomicType::Uuid,
            other => return Err(format!("unknown atomic type {other:?}")),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BaseType {
    pub atomic: AtomicType,
    pub ref_table: Option<String>,
    /// `true` for weak references.
    pub weak: bool,
}

impl BaseType {
    pub fn new(atomic: AtomicType) -> Self {
        BaseType { atomic, ref_table: None, weak: false }
    }

    fn from_json(v: &Value) -> Result<BaseType, String> {
        match v {
            Value::String(s) => Ok(BaseType::new(AtomicType::parse(s)?)),
            Value::Object(o) => {
                let atomic = AtomicType::parse(o.get("type").and_then(Value::as_str).ok_or("base type without type")?)?;
                Ok(BaseType {
                    atomic,
                    ref_table: o.get("refTable").and_then(Value::as_str).map(str::to_string),
                    weak: o.get("refType").and_then(Value::as_str) == Some("weak"),
                })
            }
            other => Err(format!("bad base type {other}")),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ColumnType {
    pub key: BaseType,
    pub value: Option<BaseType>,
    pub min: u64,
    /// `None`: unlimited.
    pub max: Option<u64>,
}

impl ColumnType {
    /// Exactly one atom, no value type: stored as a bare atom.
    pub fn is_scalar(&self) -> bool {
        self.value.is_none() && self.min == 1 && self.max == Some(1)
    }

    pub fn is_map(&self) -> bool {
        self.value.is_some()
    }

    pub fn from_json(v: &Value) -> Result<ColumnType, String> {
        match v {
            Value::String(_) => Ok(ColumnType { key: BaseType::from_json(v)?, value: None, min: 1, max: Some(1) }),
            Value::Object(o) => {
                let key = BaseType::from_json(o.get("key").ok_or("column type without key")?)?;
                let value = o.get("value").map(BaseType::from_json).transpose()?;
                let min = o.get("min").map(|m| m.as_u64().ok_or("bad min")).transpose()?.unwrap_or(1);
                let max = match o.get("max") {
                    None => Some(1),
                    Some(Value::String(s)) if s == "unlimited" => None,
                    Some(m) => Some(m.as_u64().ok_or("bad max")?),
                };
                Ok(ColumnType { key, value, min, max })
            }
            other => Err(format!("bad column type {other}")),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TableSchema {
    pub columns: BTreeMap<String, ColumnType>,
    pub is_root: bool,
    pub indexes: Vec<Vec<String>>,
}

/// `x.y.z`, compared numerically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl FromStr for Version {
    type Err = String;
    fn from_str(s: &str) -> Result<Version, String> {
        let parts: Vec<u32> =
            s.split('.').map(|p| p.parse().map_err(|_| format!("bad version {s:?}"))).collect::<Result<_, _>>()?;
        match parts.as_slice() {
            [a, b, c] => Ok(Version(*a, *b, *c)),
            _ => Err(format!("bad version {s:?}")),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseSchema {
    pub name: String,
    pub version: Version,
    pub tables: BTreeMap<String, TableSchema>,
}

impl DatabaseSchema {
    pub fn from_json(v: &Value) -> Result<DatabaseSchema, Error> {
        let bad = |m: String| Error::Protocol(format!("schema: {m}"));
        let name = v.get("name").and_then(Value::as_str).ok_or_else(|| bad("no name".into()))?.to_string();
        let version = v.get("version").and_then(Value::as_str).unwrap_or("0.0.0").parse().map_err(bad)?;
        let mut tables = BTreeMap::new();
        let Some(Value::Object(ts)) = v.get("tables") else { return Err(bad("no tables".into())) };
        for (tname, t) in ts {
            let mut columns = BTreeMap::new();
            let Some(Value::Object(cs)) = t.get("columns") else {
                return Err(bad(format!("table {tname} has no columns")));
            };
            for (cname, c) in cs {
                let ty = c.get("type").ok_or_else(|| bad(format!("{tname}.{cname} has no type")))?;
                columns.insert(
                    cname.clone(),
                    ColumnType::from_json(ty).map_err(|m| bad(format!("{tname}.{cname}: {m}")))?,
                );
            }
            // Every table has these two, though the schema does not list them.
            columns.insert("_uuid".into(), ColumnType::from_json(&Value::String("uuid".into())).expect("literal"));
            columns.insert("_version".into(), ColumnType::from_json(&Value::String("uuid".into())).expect("literal"));
            let indexes = t
                .get("indexes")
                .and_then(Value::as_array)
                .map(|ix| {
                    ix.iter()
                        .filter_map(|i| {
                            i.as_array()
                                .map(|cols| cols.iter().filter_map(|c| c.as_str().map(str::to_string)).collect())
                        })
                        .collect()
                })
                .unwrap_or_default();
            let is_root = t.get("isRoot").and_then(Value::as_bool).unwrap_or(false);
            tables.insert(tname.clone(), TableSchema { columns, is_root, indexes });
        }
        Ok(DatabaseSchema { name, version, tables })
    }

    pub fn column(&self, table: &str, column: &str) -> Option<&ColumnType> {
        self.tables.get(table).and_then(|t| t.columns.get(column))
    }

    /// Checks that the schema is at least `min_version` and has every table and column in
    /// `needs`; the error names what is missing.
    pub fn require(&self, min_version: Version, needs: &[(&str, &[&str])]) -> Result<(), Error> {
        let mut missing = Vec::new();
        for (table, columns) in needs {
            match self.tables.get(*table) {
                None => missing.push(format!("table {table}")),
                Some(t) => {
                    for c in *columns {
                        if !t.columns.contains_key(*c) {
                            missing.push(format!("column {table}.{c}"));
                        }
                    }
                }
            }
        }
        if missing.is_empty() && self.version >= min_version {
            return Ok(());
        }
        Err(Error::Schema {
            database: self.name.clone(),
            version: self.version.to_string(),
            needed: min_version.to_string(),
            missing,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> DatabaseSchema {
        DatabaseSchema::from_json(&json!({
            "name": "OVN_Northbound", "version": "6.1.0",
            "tables": {"Address_Set": {"isRoot": true, "indexes": [["name"]], "columns": {
                "name": {"type": "string"},
                "addresses": {"type": {"key": "string", "min": 0, "max": "unlimited"}}
            }}}
        }))
        .unwrap()
    }

    #[test]
    fn column_types() {
        let s = schema();
        assert!(s.column("Address_Set", "name").unwrap().is_scalar());
        assert!(!s.column("Address_Set", "addresses").unwrap().is_scalar());
        assert!(s.column("Address_Set", "_uuid").is_some());
        assert_eq!(s.tables["Address_Set"].indexes, vec![vec!["name".to_string()]]);
    }

    #[test]
    fn requirements_name_what_is_missing() {
        let e = schema()
            .require(Version(7, 0, 0), &[("Address_Set", &["name", "external_ids"]), ("Load_Balancer_Group", &[])])
            .unwrap_err()
            .to_string();
        assert!(e.contains("6.1.0") && e.contains("7.0.0"), "{e}");
        assert!(e.contains("column Address_Set.external_ids") && e.contains("table Load_Balancer_Group"), "{e}");
        assert!(schema().require(Version(6, 0, 0), &[("Address_Set", &["addresses"])]).is_ok());
    }

    #[test]
    fn the_installed_ovn_schema_parses() {
        let text = std::fs::read_to_string("/usr/share/ovn/ovn-nb.ovsschema").expect("ovn-central is installed");
        let s = DatabaseSchema::from_json(&serde_json::from_str(&text).unwrap()).unwrap();
        assert!(s.version >= Version(7, 0, 0));
        assert!(s.column("ACL", "options").unwrap().is_map());
        assert!(!s.tables["ACL"].is_root);
    }
}
