//! Transactions (RFC 7047 §5.2): a builder for the operations, and the reply read back into
//! per-operation results or a typed error carrying the server's details.

use std::collections::{BTreeMap, HashMap};

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;
use uuid::Uuid;

use crate::datum::{Atom, Datum};
use crate::error::{Error, OperationError};

/// Column values of a row to insert or update.
pub type Row = BTreeMap<String, Datum>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    Eq,
    Ne,
    Includes,
    Excludes,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Function {
    fn as_str(self) -> &'static str {
        match self {
            Function::Eq => "==",
            Function::Ne => "!=",
            Function::Includes => "includes",
            Function::Excludes => "excludes",
            Function::Lt => "<",
            Function::Le => "<=",
            Function::Gt => ">",
            Function::Ge => ">=",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub column: String,
    pub function: Function,
    pub value: Datum,
}

impl Condition {
    pub fn new(column: &str, function: Function, value: Datum) -> Condition {
        Condition { column: column.into(), function, value }
    }

    /// The row with this uuid.
    pub fn uuid(u: Uuid) -> Condition {
        Condition::new("_uuid", Function::Eq, Datum::Atom(Atom::Uuid(u)))
    }

    pub fn eq(column: &str, value: impl Into<Atom>) -> Condition {
        Condition::new(column, Function::Eq, Datum::Atom(value.into()))
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&self.column, self.function.as_str(), &self.value).serialize(s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutator {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Insert,
    Delete,
}

impl Mutator {
    fn as_str(self) -> &'static str {
        match self {
            Mutator::Add => "+=",
            Mutator::Sub => "-=",
            Mutator::Mul => "*=",
            Mutator::Div => "/=",
            Mutator::Mod => "%=",
            Mutator::Insert => "insert",
            Mutator::Delete => "delete",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    pub column: String,
    pub mutator: Mutator,
    pub value: Datum,
}

impl Mutation {
    pub fn insert(column: &str, value: Datum) -> Mutation {
        Mutation { column: column.into(), mutator: Mutator::Insert, value }
    }

    pub fn delete(column: &str, value: Datum) -> Mutation {
        Mutation { column: column.into(), mutator: Mutator::Delete, value }
    }
}

impl Serialize for Mutation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&self.column, self.mutator.as_str(), &self.value).serialize(s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    Equal,
    NotEqual,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    Insert {
        table: String,
        row: Row,
        uuid_name: Option<String>,
    },
    Select {
        table: String,
        conditions: Vec<Condition>,
        columns: Option<Vec<String>>,
    },
    Update {
        table: String,
        conditions: Vec<Condition>,
        row: Row,
    },
    Mutate {
        table: String,
        conditions: Vec<Condition>,
        mutations: Vec<Mutation>,
    },
    Delete {
        table: String,
        conditions: Vec<Condition>,
    },
    Wait {
        table: String,
        conditions: Vec<Condition>,
        columns: Vec<String>,
        until: Until,
        rows: Vec<Row>,
        timeout_ms: Option<u64>,
    },
    Comment(String),
}

impl Operation {
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Insert { .. } => "insert",
            Operation::Select { .. } => "select",
            Operation::Update { .. } => "update",
            Operation::Mutate { .. } => "mutate",
            Operation::Delete { .. } => "delete",
            Operation::Wait { .. } => "wait",
            Operation::Comment(_) => "comment",
        }
    }

    /// The table the operation is on (a comment has none).
    pub fn table(&self) -> Option<&str> {
        match self {
            Operation::Insert { table, .. }
            | Operation::Select { table, .. }
            | Operation::Update { table, .. }
            | Operation::Mutate { table, .. }
            | Operation::Delete { table, .. }
            | Operation::Wait { table, .. } => Some(table),
            Operation::Comment(_) => None,
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("operations serialize")
    }
}

impl Serialize for Operation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("op", self.name())?;
        match self {
            Operation::Insert { table, row, uuid_name } => {
                m.serialize_entry("table", table)?;
                m.serialize_entry("row", row)?;
                if let Some(n) = uuid_name {
                    m.serialize_entry("uuid-name", n)?;
                }
            }
            Operation::Select { table, conditions, columns } => {
                m.serialize_entry("table", table)?;
                m.serialize_entry("where", conditions)?;
                if let Some(c) = columns {
                    m.serialize_entry("columns", c)?;
                }
            }
            Operation::Update { table, conditions, row } => {
                m.serialize_entry("table", table)?;
                m.serialize_entry("where", conditions)?;
                m.serialize_entry("row", row)?;
            }
            Operation::Mutate { table, conditions, mutations } => {
                m.serialize_entry("table", table)?;
                m.serialize_entry("where", conditions)?;
                m.serialize_entry("mutations", mutations)?;
            }
            Operation::Delete { table, conditions } => {
                m.serialize_entry("table", table)?;
                m.serialize_entry("where", conditions)?;
            }
            Operation::Wait { table, conditions, columns, until, rows, timeout_ms } => {
                m.serialize_entry("table", table)?;
                m.serialize_entry("where", conditions)?;
                m.serialize_entry("columns", columns)?;
                m.serialize_entry("until", if *until == Until::Equal { "==" } else { "!=" })?;
                m.serialize_entry("rows", rows)?;
                if let Some(t) = timeout_ms {
                    m.serialize_entry("timeout", t)?;
                }
            }
            Operation::Comment(c) => m.serialize_entry("comment", c)?,
        }
        m.end()
    }
}

/// The `transact` params, `[database, op...]`, serialized without a JSON tree in between.
pub struct TransactParams<'a>(pub &'a Transaction);

impl Serialize for TransactParams<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.ops.len() + 1))?;
        seq.serialize_element(&self.0.database)?;
        for op in &self.0.ops {
            seq.serialize_element(op)?;
        }
        seq.end()
    }
}

/// A transaction under construction: operations run atomically, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    pub database: String,
    pub ops: Vec<Operation>,
}

impl Transaction {
    pub fn new(database: &str) -> Transaction {
        Transaction { database: database.into(), ops: Vec::new() }
    }

    /// What the transaction does, counted by operation and table (`insert Logical_Switch_Port
    /// 1000, mutate Port_Group 12`), for logs.
    pub fn census(&self) -> String {
        let mut counts: std::collections::BTreeMap<(&str, &str), usize> = Default::default();
        for op in &self.ops {
            *counts.entry((op.name(), op.table().unwrap_or_default())).or_default() += 1;
        }
        counts.iter().map(|((op, table), n)| format!("{op} {table} {n}")).collect::<Vec<_>>().join(", ")
    }

    /// Operations other than comments.
    pub fn len(&self) -> usize {
        self.ops.iter().filter(|o| !matches!(o, Operation::Comment(_))).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Inserts a row; `uuid_name` lets later operations refer to it as `Atom::NamedUuid`.
    pub fn insert(&mut self, table: &str, row: Row, uuid_name: Option<&str>) -> usize {
        self.push(Operation::Insert { table: table.into(), row, uuid_name: uuid_name.map(str::to_string) })
    }

    pub fn select(&mut self, table: &str, conditions: Vec<Condition>, columns: Option<Vec<String>>) -> usize {
        self.push(Operation::Select { table: table.into(), conditions, columns })
    }

    pub fn update(&mut self, table: &str, conditions: Vec<Condition>, row: Row) -> usize {
        self.push(Operation::Update { table: table.into(), conditions, row })
    }

    pub fn mutate(&mut self, table: &str, conditions: Vec<Condition>, mutations: Vec<Mutation>) -> usize {
        self.push(Operation::Mutate { table: table.into(), conditions, mutations })
    }

    pub fn delete(&mut self, table: &str, conditions: Vec<Condition>) -> usize {
        self.push(Operation::Delete { table: table.into(), conditions })
    }

    /// Optimistic concurrency: fails the transaction (error "timed out" after `timeout_ms`, 0 =
    /// at once) unless the selected rows' `columns` equal (or differ from) `rows`.
    pub fn wait(
        &mut self,
        table: &str,
        conditions: Vec<Condition>,
        columns: Vec<String>,
        until: Until,
        rows: Vec<Row>,
        timeout_ms: Option<u64>,
    ) -> usize {
        self.push(Operation::Wait { table: table.into(), conditions, columns, until, rows, timeout_ms })
    }

    /// A note the server writes to its log with the transaction.
    pub fn comment(&mut self, text: &str) -> usize {
        self.push(Operation::Comment(text.into()))
    }

    fn push(&mut self, op: Operation) -> usize {
        self.ops.push(op);
        self.ops.len() - 1
    }

    /// The `transact` params: `[database, op...]`.
    pub fn params(&self) -> Value {
        serde_json::to_value(TransactParams(self)).expect("transactions serialize")
    }

    /// Reads the server's reply to this transaction.
    pub fn parse_reply(&self, result: &Value) -> Result<TxnReply, Error> {
        self.shape().parse_reply(result)
    }

    /// What reading the reply needs of the transaction (the kind of each operation and the
    /// names of inserted rows), so that the rows themselves can go once they are sent.
    pub fn shape(&self) -> ReplyShape {
        let ops = self
            .ops
            .iter()
            .map(|op| match op {
                Operation::Insert { uuid_name, .. } => OpShape::Insert(uuid_name.clone()),
                Operation::Select { .. } => OpShape::Select,
                Operation::Update { .. } | Operation::Mutate { .. } | Operation::Delete { .. } => {
                    OpShape::Count(op.name())
                }
                Operation::Wait { .. } | Operation::Comment(_) => OpShape::Done(op.name()),
            })
            .collect();
        ReplyShape { ops }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum OpShape {
    Insert(Option<String>),
    Select,
    Count(&'static str),
    Done(&'static str),
}

impl OpShape {
    fn name(&self) -> &'static str {
        match self {
            OpShape::Insert(_) => "insert",
            OpShape::Select => "select",
            OpShape::Count(n) | OpShape::Done(n) => n,
        }
    }
}

/// See [`Transaction::shape`].
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyShape {
    ops: Vec<OpShape>,
}

impl ReplyShape {
    /// Operations other than comments.
    pub fn len(&self) -> usize {
        self.ops.iter().filter(|o| o.name() != "comment").count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the server's reply to the transaction.
    pub fn parse_reply(&self, result: &Value) -> Result<TxnReply, Error> {
        let items =
            result.as_array().ok_or_else(|| Error::Protocol(format!("transact result is not an array: {result}")))?;
        for (i, item) in items.iter().enumerate() {
            if let Some(err) = item.get("error").filter(|e| !e.is_null()) {
                return Err(Error::Transaction(OperationError {
                    index: (i < self.ops.len()).then_some(i),
                    op: self.ops.get(i).map(|o| o.name().to_string()),
                    error: err.as_str().unwrap_or("unknown error").to_string(),
                    details: item.get("details").and_then(Value::as_str).map(str::to_string),
                }));
            }
        }
        if items.len() < self.ops.len() {
            return Err(Error::Protocol(format!("{} results for {} operations", items.len(), self.ops.len())));
        }
        let mut results = Vec::with_capacity(self.ops.len());
        let mut named = HashMap::new();
        for (op, item) in self.ops.iter().zip(items) {
            let r = match op {
                OpShape::Insert(uuid_name) => {
                    let u = item
                        .get("uuid")
                        .and_then(|u| Atom::from_json_untyped(u).ok())
                        .and_then(|a| a.as_uuid())
                        .ok_or_else(|| Error::Protocol(format!("insert result without uuid: {item}")))?;
                    if let Some(n) = uuid_name {
                        named.insert(n.clone(), u);
                    }
                    OpResult::Inserted(u)
                }
                OpShape::Select => {
                    OpResult::Rows(item.get("rows").and_then(Value::as_array).cloned().unwrap_or_default())
                }
                OpShape::Count(_) => OpResult::Count(item.get("count").and_then(Value::as_u64).unwrap_or(0)),
                OpShape::Done(_) => OpResult::Done,
            };
            results.push(r);
        }
        Ok(TxnReply { results, named })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum OpResult {
    Inserted(Uuid),
    Count(u64),
    Rows(Vec<Value>),
    Done,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TxnReply {
    pub results: Vec<OpResult>,
    named: HashMap<String, Uuid>,
}

impl TxnReply {
    /// The uuid the server gave the row inserted as `name`.
    pub fn uuid_of(&self, name: &str) -> Option<Uuid> {
        self.named.get(name).copied()
    }

    /// Rows changed by update, mutate and delete operations.
    pub fn count(&self, index: usize) -> Option<u64> {
        match self.results.get(index) {
            Some(OpResult::Count(c)) => Some(*c),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use serde_json::json;

    #[test]
    fn builder_writes_rfc_7047_operations() {
        let mut t = Transaction::new("OVN_Northbound");
        let mut row = Row::new();
        row.insert("name".into(), Datum::Atom("ls1".into()));
        t.insert("Logical_Switch", row, Some("ls"));
        t.mutate(
            "Port_Group",
            vec![Condition::eq("name", "pg")],
            vec![Mutation::insert("ports", Datum::Set([Atom::NamedUuid("ls".into())].into()))],
        );
        t.comment("stacknet: test");
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.params(),
            json!(["OVN_Northbound",
                {"op": "insert", "table": "Logical_Switch", "row": {"name": "ls1"}, "uuid-name": "ls"},
                {"op": "mutate", "table": "Port_Group", "where": [["name", "==", "pg"]],
                 "mutations": [["ports", "insert", ["set", [["named-uuid", "ls"]]]]]},
                {"op": "comment", "comment": "stacknet: test"}])
        );
    }

    #[test]
    fn replies_map_named_uuids_and_errors() {
        let mut t = Transaction::new("db");
        t.insert("T", Row::new(), Some("a"));
        t.delete("T", vec![]);
        let u = Uuid::new_v4();
        let r = t.parse_reply(&json!([{"uuid": ["uuid", u.to_string()]}, {"count": 3}])).unwrap();
        assert_eq!(r.uuid_of("a"), Some(u));
        assert_eq!(r.count(1), Some(3));

        let e = t
            .parse_reply(&json!([{"uuid": ["uuid", u.to_string()]}, {"count": 0}, {"error": "constraint violation", "details": "Transaction causes multiple rows in \"T\" table to have identical values"}]))
            .unwrap_err();
        let op = e.operation().unwrap();
        assert_eq!(op.index, None);
        assert_eq!(op.kind(), ErrorKind::ConstraintViolation);
        assert!(e.to_string().contains("identical values"), "{e}");

        let e = t.parse_reply(&json!([{"error": "syntax error", "details": "bad"}, null])).unwrap_err();
        assert_eq!(e.operation().unwrap().index, Some(0));
        assert_eq!(e.operation().unwrap().op.as_deref(), Some("insert"));
        assert!(t.parse_reply(&json!({"x": 1})).is_err());
    }
}
