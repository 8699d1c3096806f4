//! OVSDB values (RFC 7047 §5.1): atoms, sets and maps, and their JSON notation.
//!
//! A [`Datum`] is normalized by column type when it is decoded with the schema: a scalar column
//! holds [`Datum::Atom`], any other set column [`Datum::Set`] (even with one element), a map
//! column [`Datum::Map`]. Sets and maps are ordered, so equal values compare equal.
//!
//! Sets and maps are sorted vectors ([`AtomSet`], [`AtomMap`]), not trees: nearly every set or
//! map in an OVN database holds a handful of entries, and a replica holds tens of thousands of
//! them, where a B-tree's node (room for eleven entries) would cost ten times the data.

use std::cmp::Ordering;
use std::fmt;

use serde::ser::{Serialize, SerializeSeq, SerializeTuple, Serializer};
use serde_json::Value;
pub use uuid::Uuid;

use crate::schema::{AtomicType, BaseType, ColumnType};

/// A string atom: short ones (most keys and values in an OVN database: `external_ids` keys,
/// names, identities up to 24 bytes) are stored inline, without an allocation of their own.
pub type Str = compact_str::CompactString;

#[derive(Debug, Clone)]
pub enum Atom {
    Integer(i64),
    Real(f64),
    Boolean(bool),
    String(Str),
    Uuid(Uuid),
    /// A row inserted earlier in the same transaction (`["named-uuid", name]`).
    NamedUuid(String),
}

impl Atom {
    pub fn string(s: impl Into<Str>) -> Atom {
        Atom::String(s.into())
    }

    fn rank(&self) -> u8 {
        match self {
            Atom::Integer(_) => 0,
            Atom::Real(_) => 1,
            Atom::Boolean(_) => 2,
            Atom::String(_) => 3,
            Atom::Uuid(_) => 4,
            Atom::NamedUuid(_) => 5,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Atom::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_uuid(&self) -> Option<Uuid> {
        match self {
            Atom::Uuid(u) => Some(*u),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Atom::Integer(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Atom::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("atoms serialize")
    }

    /// Reads an atom of type `ty`.
    pub fn from_json(v: &Value, ty: &BaseType) -> Result<Atom, String> {
        let bad = || format!("expected {}, got {v}", ty.atomic.name());
        Ok(match ty.atomic {
            AtomicType::Integer => Atom::Integer(v.as_i64().ok_or_else(bad)?),
            AtomicType::Real => Atom::Real(v.as_f64().ok_or_else(bad)?),
            AtomicType::Boolean => Atom::Boolean(v.as_bool().ok_or_else(bad)?),
            AtomicType::String => Atom::String(v.as_str().ok_or_else(bad)?.into()),
            AtomicType::Uuid => match v.as_array().map(Vec::as_slice) {
                Some([tag, Value::String(s)]) if tag == "uuid" => {
                    Atom::Uuid(Uuid::parse_str(s).map_err(|_| format!("bad uuid {s:?}"))?)
                }
                Some([tag, Value::String(s)]) if tag == "named-uuid" => Atom::NamedUuid(s.clone()),
                _ => return Err(bad()),
            },
        })
    }

    /// Reads an atom whose type is not known (from JSON alone).
    pub fn from_json_untyped(v: &Value) -> Result<Atom, String> {
        match v {
            Value::Bool(b) => Ok(Atom::Boolean(*b)),
            Value::String(s) => Ok(Atom::String(s.as_str().into())),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Ok(Atom::Integer(i)),
                None => n.as_f64().map(Atom::Real).ok_or_else(|| format!("bad number {n}")),
            },
            Value::Array(a) if a.len() == 2 && a[0] == "uuid" => Atom::from_json(v, &BaseType::new(AtomicType::Uuid)),
            Value::Array(a) if a.len() == 2 && a[0] == "named-uuid" => {
                Ok(Atom::NamedUuid(a[1].as_str().ok_or("bad named-uuid")?.to_string()))
            }
            _ => Err(format!("not an atom: {v}")),
        }
    }
}

/// RFC 7047 notation, written straight to the output (no intermediate JSON tree).
impl Serialize for Atom {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let tagged = |s: S, tag: &str, v: &dyn fmt::Display| {
            let mut t = s.serialize_tuple(2)?;
            t.serialize_element(tag)?;
            t.serialize_element(&format_args!("{v}"))?;
            t.end()
        };
        match self {
            Atom::Integer(i) => s.serialize_i64(*i),
            Atom::Real(r) => s.serialize_f64(*r),
            Atom::Boolean(b) => s.serialize_bool(*b),
            Atom::String(x) => s.serialize_str(x),
            Atom::Uuid(u) => tagged(s, "uuid", u),
            Atom::NamedUuid(n) => tagged(s, "named-uuid", n),
        }
    }
}

struct Pairs<'a>(&'a AtomMap);

impl Serialize for Pairs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for (k, v) in self.0.iter() {
            seq.serialize_element(&(k, v))?;
        }
        seq.end()
    }
}

impl Serialize for AtomSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for a in &self.0 {
            seq.serialize_element(a)?;
        }
        seq.end()
    }
}

impl Serialize for Datum {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Datum::Atom(a) => a.serialize(s),
            Datum::Set(set) => ("set", set).serialize(s),
            Datum::Map(m) => ("map", Pairs(m)).serialize(s),
        }
    }
}

impl PartialEq for Atom {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Atom {}

impl PartialOrd for Atom {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Atom {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Atom::Integer(a), Atom::Integer(b)) => a.cmp(b),
            (Atom::Real(a), Atom::Real(b)) => a.total_cmp(b),
            (Atom::Boolean(a), Atom::Boolean(b)) => a.cmp(b),
            (Atom::String(a), Atom::String(b)) => a.cmp(b),
            (Atom::Uuid(a), Atom::Uuid(b)) => a.cmp(b),
            (Atom::NamedUuid(a), Atom::NamedUuid(b)) => a.cmp(b),
            (a, b) => a.rank().cmp(&b.rank()),
        }
    }
}

impl fmt::Display for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Atom::Integer(i) => write!(f, "{i}"),
            Atom::Real(r) => write!(f, "{r}"),
            Atom::Boolean(b) => write!(f, "{b}"),
            Atom::String(s) => write!(f, "{s:?}"),
            Atom::Uuid(u) => write!(f, "{u}"),
            Atom::NamedUuid(n) => write!(f, "@{n}"),
        }
    }
}

impl From<&str> for Atom {
    fn from(s: &str) -> Atom {
        Atom::String(s.into())
    }
}

impl From<String> for Atom {
    fn from(s: String) -> Atom {
        Atom::String(s.into())
    }
}

impl From<i64> for Atom {
    fn from(i: i64) -> Atom {
        Atom::Integer(i)
    }
}

impl From<bool> for Atom {
    fn from(b: bool) -> Atom {
        Atom::Boolean(b)
    }
}

impl From<Uuid> for Atom {
    fn from(u: Uuid) -> Atom {
        Atom::Uuid(u)
    }
}

/// A set of atoms: a sorted vector without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct AtomSet(Vec<Atom>);

impl AtomSet {
    pub fn new() -> AtomSet {
        AtomSet(Vec::new())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Atom> {
        self.0.iter()
    }

    pub fn contains(&self, a: &Atom) -> bool {
        self.0.binary_search(a).is_ok()
    }

    /// Adds `a`; false if it was there already.
    pub fn insert(&mut self, a: Atom) -> bool {
        match self.0.binary_search(&a) {
            Ok(_) => false,
            Err(i) => {
                self.0.insert(i, a);
                true
            }
        }
    }

    /// Takes `a` out; false if it was not there.
    pub fn remove(&mut self, a: &Atom) -> bool {
        match self.0.binary_search(a) {
            Ok(i) => {
                self.0.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    /// The elements of `self` not in `other`, in order.
    pub fn difference<'a>(&'a self, other: &'a AtomSet) -> impl Iterator<Item = &'a Atom> + 'a {
        self.0.iter().filter(move |a| !other.contains(a))
    }

    /// Toggles every element of `diff` (in one merge, however large both are): the symmetric
    /// difference, as an update2 diff of a set column means.
    pub fn toggle(&mut self, diff: AtomSet) {
        if diff.len() <= 8 {
            for a in diff.0 {
                if !self.remove(&a) {
                    self.insert(a);
                }
            }
            return;
        }
        let cur = std::mem::take(&mut self.0);
        let mut out = Vec::with_capacity(cur.len() + diff.len());
        let (mut a, mut b) = (cur.into_iter().peekable(), diff.0.into_iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some(x), Some(y)) => match x.cmp(y) {
                    Ordering::Less => out.extend(a.next()),
                    Ordering::Greater => out.extend(b.next()),
                    Ordering::Equal => {
                        a.next();
                        b.next();
                    }
                },
                (Some(_), None) => out.extend(a.next()),
                (None, Some(_)) => out.extend(b.next()),
                (None, None) => break,
            }
        }
        out.shrink_to_fit();
        self.0 = out;
    }
}

impl FromIterator<Atom> for AtomSet {
    fn from_iter<I: IntoIterator<Item = Atom>>(iter: I) -> AtomSet {
        let mut v: Vec<Atom> = iter.into_iter().collect();
        v.sort();
        v.dedup();
        v.shrink_to_fit();
        AtomSet(v)
    }
}

impl<const N: usize> From<[Atom; N]> for AtomSet {
    fn from(a: [Atom; N]) -> AtomSet {
        a.into_iter().collect()
    }
}

impl IntoIterator for AtomSet {
    type Item = Atom;
    type IntoIter = std::vec::IntoIter<Atom>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a AtomSet {
    type Item = &'a Atom;
    type IntoIter = std::slice::Iter<'a, Atom>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// A map of atoms: a vector of pairs sorted by key, keys unique.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct AtomMap(Vec<(Atom, Atom)>);

impl AtomMap {
    pub fn new() -> AtomMap {
        AtomMap(Vec::new())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entries, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Atom, &Atom)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    fn find(&self, k: &Atom) -> Result<usize, usize> {
        self.0.binary_search_by(|(key, _)| key.cmp(k))
    }

    pub fn get(&self, k: &Atom) -> Option<&Atom> {
        self.find(k).ok().map(|i| &self.0[i].1)
    }

    /// The value of a string key, without building an atom for it.
    pub fn get_str(&self, k: &str) -> Option<&Atom> {
        let i = self.0.binary_search_by(|(key, _)| match key {
            Atom::String(s) => s.as_str().cmp(k),
            other => other.rank().cmp(&3),
        });
        i.ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, k: &Atom) -> bool {
        self.find(k).is_ok()
    }

    /// Sets `k` to `v`; the previous value, if any.
    pub fn insert(&mut self, k: Atom, v: Atom) -> Option<Atom> {
        match self.find(&k) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, v)),
            Err(i) => {
                self.0.insert(i, (k, v));
                None
            }
        }
    }

    pub fn remove(&mut self, k: &Atom) -> Option<Atom> {
        self.find(k).ok().map(|i| self.0.remove(i).1)
    }
}

impl FromIterator<(Atom, Atom)> for AtomMap {
    /// A later entry of the same key replaces an earlier one.
    fn from_iter<I: IntoIterator<Item = (Atom, Atom)>>(iter: I) -> AtomMap {
        let mut v: Vec<(Atom, Atom)> = iter.into_iter().collect();
        // Stable: equal keys keep their order, and the last one wins below.
        v.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(Atom, Atom)> = Vec::with_capacity(v.len());
        for (k, val) in v {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = val,
                _ => out.push((k, val)),
            }
        }
        out.shrink_to_fit();
        AtomMap(out)
    }
}

impl<const N: usize> From<[(Atom, Atom); N]> for AtomMap {
    fn from(a: [(Atom, Atom); N]) -> AtomMap {
        a.into_iter().collect()
    }
}

impl IntoIterator for AtomMap {
    type Item = (Atom, Atom);
    type IntoIter = std::vec::IntoIter<(Atom, Atom)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// A column's value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Datum {
    /// The value of a scalar column (exactly one atom).
    Atom(Atom),
    Set(AtomSet),
    Map(AtomMap),
}

impl Datum {
    pub fn empty_set() -> Datum {
        Datum::Set(AtomSet::new())
    }

    pub fn set<A: Into<Atom>>(items: impl IntoIterator<Item = A>) -> Datum {
        Datum::Set(items.into_iter().map(Into::into).collect())
    }

    pub fn map<K: Into<Atom>, V: Into<Atom>>(items: impl IntoIterator<Item = (K, V)>) -> Datum {
        Datum::Map(items.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }

    /// A map of strings, the type of `external_ids`, `options` and friends.
    pub fn string_map<'a>(items: impl IntoIterator<Item = (&'a str, &'a str)>) -> Datum {
        Datum::map(items.into_iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    /// The single atom of a scalar column, or of a set holding one element.
    pub fn atom(&self) -> Option<&Atom> {
        match self {
            Datum::Atom(a) => Some(a),
            Datum::Set(s) if s.len() == 1 => s.iter().next(),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        self.atom().and_then(Atom::as_str)
    }

    pub fn as_i64(&self) -> Option<i64> {
        self.atom().and_then(Atom::as_i64)
    }

    pub fn as_bool(&self) -> Option<bool> {
        self.atom().and_then(Atom::as_bool)
    }

    /// The elements of a set (or the one atom of a scalar).
    pub fn elements(&self) -> Vec<&Atom> {
        match self {
            Datum::Atom(a) => vec![a],
            Datum::Set(s) => s.iter().collect(),
            Datum::Map(_) => vec![],
        }
    }

    pub fn map_get(&self, key: &str) -> Option<&Atom> {
        match self {
            Datum::Map(m) => m.get_str(key),
            _ => None,
        }
    }

    /// String-to-string map entries (others are skipped).
    pub fn string_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        let m = match self {
            Datum::Map(m) => Some(m),
            _ => None,
        };
        m.into_iter().flat_map(AtomMap::iter).filter_map(|(k, v)| Some((k.as_str()?, v.as_str()?)))
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("data serialize")
    }

    /// A column's default value (RFC 7047 §5.1): 0, 0.0, false, "", the all-zero uuid; the
    /// empty set or map when the column may be empty.
    pub fn default_for(ty: &ColumnType) -> Datum {
        if ty.is_map() {
            return Datum::Map(AtomMap::new());
        }
        if ty.min == 0 {
            return Datum::Set(AtomSet::new());
        }
        let atom = match ty.key.atomic {
            AtomicType::Integer => Atom::Integer(0),
            AtomicType::Real => Atom::Real(0.0),
            AtomicType::Boolean => Atom::Boolean(false),
            AtomicType::String => Atom::String(Str::default()),
            AtomicType::Uuid => Atom::Uuid(Uuid::nil()),
        };
        if ty.is_scalar() { Datum::Atom(atom) } else { Datum::Set([atom].into()) }
    }

    /// Reads a value of column type `ty`, normalized as the module doc says.
    pub fn from_json(v: &Value, ty: &ColumnType) -> Result<Datum, String> {
        let tagged = |tag: &str| match v.as_array().map(Vec::as_slice) {
            Some([t, Value::Array(items)]) if t == tag => Some(items),
            _ => None,
        };
        if let Some(value_ty) = &ty.value {
            let items = tagged("map").or_else(|| tagged("set").filter(|i| i.is_empty()));
            let items = items.ok_or_else(|| format!("expected a map, got {v}"))?;
            let mut m = Vec::with_capacity(items.len());
            for pair in items {
                let Some([k, val]) = pair.as_array().map(Vec::as_slice) else {
                    return Err(format!("bad map entry {pair}"));
                };
                m.push((Atom::from_json(k, &ty.key)?, Atom::from_json(val, value_ty)?));
            }
            return Ok(Datum::Map(m.into_iter().collect()));
        }
        let atoms: Vec<Atom> = match tagged("set") {
            Some(items) => items.iter().map(|i| Atom::from_json(i, &ty.key)).collect::<Result<_, _>>()?,
            None => vec![Atom::from_json(v, &ty.key)?],
        };
        if ty.is_scalar() {
            let mut atoms = atoms;
            if atoms.len() != 1 {
                return Err(format!("expected exactly one value, got {v}"));
            }
            return Ok(Datum::Atom(atoms.remove(0)));
        }
        Ok(Datum::Set(atoms.into_iter().collect()))
    }

    /// Reads a value without its column type (sets and maps must be tagged).
    pub fn from_json_untyped(v: &Value) -> Result<Datum, String> {
        match v.as_array().map(Vec::as_slice) {
            Some([t, Value::Array(items)]) if t == "set" => {
                Ok(Datum::Set(items.iter().map(Atom::from_json_untyped).collect::<Result<_, _>>()?))
            }
            Some([t, Value::Array(items)]) if t == "map" => {
                let mut m = Vec::with_capacity(items.len());
                for pair in items {
                    let Some([k, val]) = pair.as_array().map(Vec::as_slice) else {
                        return Err(format!("bad map entry {pair}"));
                    };
                    m.push((Atom::from_json_untyped(k)?, Atom::from_json_untyped(val)?));
                }
                Ok(Datum::Map(m.into_iter().collect()))
            }
            _ => Atom::from_json_untyped(v).map(Datum::Atom),
        }
    }

    /// Applies an update2 "modify" diff (ovsdb-server(7)): scalars are replaced; set elements
    /// in the diff are toggled; a map key in the diff is removed if its value is the same,
    /// else inserted or replaced.
    pub fn apply_diff(&mut self, diff: Datum) {
        match (self, diff) {
            (Datum::Set(cur), Datum::Set(d)) => cur.toggle(d),
            (Datum::Set(cur), Datum::Atom(a)) => {
                if !cur.remove(&a) {
                    cur.insert(a);
                }
            }
            (Datum::Map(cur), Datum::Map(d)) => {
                for (k, v) in d {
                    match cur.get(&k) {
                        Some(old) if *old == v => {
                            cur.remove(&k);
                        }
                        _ => {
                            cur.insert(k, v);
                        }
                    }
                }
            }
            (cur, d) => *cur = d,
        }
    }
}

impl fmt::Display for Datum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Datum::Atom(a) => write!(f, "{a}"),
            Datum::Set(s) => {
                let items: Vec<String> = s.iter().map(|a| a.to_string()).collect();
                write!(f, "[{}]", items.join(", "))
            }
            Datum::Map(m) => {
                let items: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "{{{}}}", items.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::ColumnType;
    use serde_json::json;

    fn ty(json: Value) -> ColumnType {
        ColumnType::from_json(&json).unwrap()
    }

    #[test]
    fn decoding_normalizes_by_column_type() {
        let set_of_strings = ty(json!({"key": "string", "min": 0, "max": "unlimited"}));
        assert_eq!(Datum::from_json(&json!("a"), &set_of_strings).unwrap(), Datum::set(["a"]));
        assert_eq!(Datum::from_json(&json!(["set", ["a", "b"]]), &set_of_strings).unwrap(), Datum::set(["b", "a"]));
        let scalar = ty(json!("string"));
        assert_eq!(Datum::from_json(&json!("x"), &scalar).unwrap(), Datum::Atom("x".into()));
        assert!(Datum::from_json(&json!(["set", []]), &scalar).is_err());
        let map = ty(json!({"key": "string", "value": "string", "min": 0, "max": "unlimited"}));
        assert_eq!(Datum::from_json(&json!(["map", [["k", "v"]]]), &map).unwrap(), Datum::string_map([("k", "v")]));
        assert_eq!(Datum::from_json(&json!(["map", []]), &map).unwrap(), Datum::Map(AtomMap::new()));
        let uuids = ty(json!({"key": {"type": "uuid", "refTable": "T"}, "min": 0, "max": "unlimited"}));
        let u = Uuid::new_v4();
        assert_eq!(
            Datum::from_json(&json!(["uuid", u.to_string()]), &uuids).unwrap(),
            Datum::Set([Atom::Uuid(u)].into())
        );
        assert!(Datum::from_json(&json!(["uuid", "nope"]), &uuids).is_err());
        assert!(Datum::from_json(&json!(7), &set_of_strings).is_err());
    }

    #[test]
    fn json_round_trip() {
        let u = Uuid::new_v4();
        let d = Datum::Map([(Atom::string("a"), Atom::Uuid(u))].into());
        assert_eq!(d.to_json(), json!(["map", [["a", ["uuid", u.to_string()]]]]));
        assert_eq!(Datum::from_json_untyped(&d.to_json()).unwrap(), d);
        let s = Datum::set([1i64, 2, 3]);
        assert_eq!(Datum::from_json_untyped(&s.to_json()).unwrap(), s);
    }

    #[test]
    fn sets_and_maps_stay_sorted_and_unique() {
        let s: AtomSet = [Atom::from("b"), Atom::from("a"), Atom::from("b")].into();
        assert_eq!(s.iter().filter_map(Atom::as_str).collect::<Vec<_>>(), ["a", "b"]);
        // Large toggles merge; small ones insert and remove in place: the same result.
        for n in [3usize, 40] {
            let mut cur: AtomSet = (0..100i64).map(Atom::Integer).collect();
            let diff: AtomSet = (0..n as i64).map(|i| Atom::Integer(i * 7)).chain([Atom::Integer(1000)]).collect();
            cur.toggle(diff.clone());
            let want: std::collections::BTreeSet<i64> = (0..100i64)
                .filter(|i| !(i % 7 == 0 && (i / 7) < n as i64))
                .chain((0..n as i64).map(|i| i * 7).filter(|i| *i >= 100))
                .chain([1000])
                .collect();
            assert_eq!(cur.iter().filter_map(Atom::as_i64).collect::<Vec<_>>(), want.into_iter().collect::<Vec<_>>());
        }
        let m: AtomMap = [("k".into(), "1".into()), ("a".into(), "x".into()), ("k".into(), "2".into())].into();
        assert_eq!(m.len(), 2);
        assert_eq!(m.get_str("k"), Some(&Atom::from("2")));
        assert_eq!(m.get_str("zz"), None);
        let mixed: AtomMap = [(Atom::Integer(5), "i".into()), ("s".into(), "t".into())].into();
        assert_eq!(mixed.get_str("s"), Some(&Atom::from("t")));
        assert_eq!(mixed.get(&Atom::Integer(5)), Some(&Atom::from("i")));
    }

    #[test]
    fn update2_diffs() {
        let mut s = Datum::set(["a", "b"]);
        s.apply_diff(Datum::set(["b", "c"]));
        assert_eq!(s, Datum::set(["a", "c"]));
        let mut m = Datum::string_map([("k1", "v1"), ("k2", "v2")]);
        m.apply_diff(Datum::string_map([("k1", "v1"), ("k2", "new"), ("k3", "v3")]));
        assert_eq!(m, Datum::string_map([("k2", "new"), ("k3", "v3")]));
        let mut a = Datum::Atom(Atom::Integer(1));
        a.apply_diff(Datum::Atom(Atom::Integer(2)));
        assert_eq!(a, Datum::Atom(Atom::Integer(2)));
    }
}
