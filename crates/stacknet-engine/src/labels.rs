//! Labels and label selectors (`metav1.LabelSelector`), normalized so that equal selectors compare
//! equal: `matchLabels: {a: b}` and `matchExpressions: [{key: a, operator: In, values: [b]}]` are
//! the same selector, and so share one peer set in the compiled model.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::error::Invalid;

pub type Labels = BTreeMap<String, String>;

/// One requirement of a selector. Values are sorted and deduplicated.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    pub fn key(&self) -> &str {
        match self {
            Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::Exists(k)
            | Requirement::DoesNotExist(k) => k,
        }
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            // As in Kubernetes: NotIn also matches objects that lack the key.
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.iter().any(|x| x == v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A label selector: the AND of its requirements. The empty selector selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// The selector that matches every object (`{}`).
    pub fn everything() -> Self {
        Selector::default()
    }

    pub fn new(mut requirements: Vec<Requirement>) -> Self {
        for r in &mut requirements {
            if let Requirement::In(_, vs) | Requirement::NotIn(_, vs) = r {
                vs.sort();
                vs.dedup();
            }
        }
        requirements.sort();
        requirements.dedup();
        Selector { requirements }
    }

    /// `matchLabels` alone.
    pub fn from_labels<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Selector::new(labels.into_iter().map(|(k, v)| Requirement::In(k.to_string(), vec![v.to_string()])).collect())
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Reads and validates a Kubernetes selector; `field` is its path, for error messages.
    pub fn from_k8s(sel: &LabelSelector, object: &str, field: &str) -> Result<Self, Invalid> {
        let mut reqs = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            let f = format!("{field}.matchLabels");
            validate_label_key(k).map_err(|m| Invalid::new(object, &f, format!("key {k:?}: {m}")))?;
            validate_label_value(v)
                .map_err(|m| Invalid::new(object, format!("{f}.{k}"), format!("value {v:?}: {m}")))?;
            reqs.push(Requirement::In(k.clone(), vec![v.clone()]));
        }
        for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
            let f = format!("{field}.matchExpressions[{i}]");
            validate_label_key(&e.key)
                .map_err(|m| Invalid::new(object, format!("{f}.key"), format!("{:?}: {m}", e.key)))?;
            let values = e.values.clone().unwrap_or_default();
            for (j, v) in values.iter().enumerate() {
                validate_label_value(v)
                    .map_err(|m| Invalid::new(object, format!("{f}.values[{j}]"), format!("{v:?}: {m}")))?;
            }
            let req = match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(Invalid::new(
                        object,
                        format!("{f}.values"),
                        format!("operator {} requires at least one value", e.operator),
                    ));
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(Invalid::new(
                        object,
                        format!("{f}.values"),
                        format!("operator {} takes no values", e.operator),
                    ));
                }
                "In" => Requirement::In(e.key.clone(), values),
                "NotIn" => Requirement::NotIn(e.key.clone(), values),
                "Exists" => Requirement::Exists(e.key.clone()),
                "DoesNotExist" => Requirement::DoesNotExist(e.key.clone()),
                other => {
                    return Err(Invalid::new(
                        object,
                        format!("{f}.operator"),
                        format!("unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)"),
                    ));
                }
            };
            reqs.push(req);
        }
        Ok(Selector::new(reqs))
    }
}

/// The selector in `kubectl` syntax: `pod=a,tier in (db,web),!legacy`; `{}` selects everything.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::In(k, vs) if vs.len() == 1 => write!(f, "{k}={}", vs[0])?,
                Requirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(","))?,
                Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(","))?,
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::DoesNotExist(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
    }
}

fn is_name_part(s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > max {
        return Err(format!("must be at most {max} characters"));
    }
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_alphanumeric();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err("must start and end with a letter or digit".into());
    }
    if let Some(c) = b.iter().find(|&&c| !(alnum(c) || c == b'-' || c == b'_' || c == b'.')) {
        return Err(format!("contains {:?}; only letters, digits, '-', '_' and '.' are allowed", *c as char));
    }
    Ok(())
}

/// A label key: `[prefix/]name`, prefix a DNS subdomain, name at most 63 characters.
pub fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() || p.len() > 253 {
            return Err("prefix must be a DNS subdomain of 1 to 253 characters".into());
        }
        if !p.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        }) {
            return Err(format!("prefix {p:?} is not a lowercase DNS subdomain"));
        }
    }
    is_name_part(name, 63)
}

/// A label value: empty, or at most 63 characters of letters, digits, '-', '_', '.'.
pub fn validate_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    is_name_part(value, 63)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: if values.is_empty() { None } else { Some(values.iter().map(|v| v.to_string()).collect()) },
        }
    }

    #[test]
    fn operators_follow_kubernetes() {
        let l = labels(&[("pod", "a"), ("tier", "web")]);
        assert!(Requirement::In("pod".into(), vec!["a".into(), "b".into()]).matches(&l));
        assert!(!Requirement::In("missing".into(), vec!["a".into()]).matches(&l));
        assert!(Requirement::NotIn("pod".into(), vec!["b".into()]).matches(&l));
        assert!(!Requirement::NotIn("pod".into(), vec!["a".into()]).matches(&l));
        // NotIn matches when the key is absent.
        assert!(Requirement::NotIn("missing".into(), vec!["a".into()]).matches(&l));
        assert!(Requirement::Exists("tier".into()).matches(&l));
        assert!(!Requirement::DoesNotExist("tier".into()).matches(&l));
        assert!(Requirement::DoesNotExist("missing".into()).matches(&l));
        assert!(Selector::everything().matches(&Labels::new()));
    }

    #[test]
    fn match_labels_and_in_expression_are_the_same_selector() {
        let a = LabelSelector { match_labels: Some(labels(&[("pod", "b")])), ..Default::default() };
        let b = LabelSelector { match_expressions: Some(vec![expr("pod", "In", &["b"])]), ..Default::default() };
        assert_eq!(Selector::from_k8s(&a, "o", "f").unwrap(), Selector::from_k8s(&b, "o", "f").unwrap());
    }

    #[test]
    fn invalid_selectors_name_the_field() {
        let s = LabelSelector { match_expressions: Some(vec![expr("pod", "Equals", &["b"])]), ..Default::default() };
        let e = Selector::from_k8s(&s, "NetworkPolicy x/p", "spec.podSelector").unwrap_err();
        assert_eq!(e.field, "spec.podSelector.matchExpressions[0].operator");
        assert!(e.to_string().starts_with("NetworkPolicy x/p: spec.podSelector.matchExpressions[0].operator:"));

        let s = LabelSelector { match_expressions: Some(vec![expr("pod", "In", &[])]), ..Default::default() };
        let e = Selector::from_k8s(&s, "o", "sel").unwrap_err();
        assert_eq!(e.field, "sel.matchExpressions[0].values");

        let s = LabelSelector { match_expressions: Some(vec![expr("pod", "Exists", &["x"])]), ..Default::default() };
        assert!(Selector::from_k8s(&s, "o", "sel").is_err());

        let s = LabelSelector { match_labels: Some(labels(&[("app", "my app")])), ..Default::default() };
        let e = Selector::from_k8s(&s, "o", "sel").unwrap_err();
        assert_eq!(e.field, "sel.matchLabels.app");
    }

    #[test]
    fn label_key_syntax() {
        assert!(validate_label_key("kubernetes.io/metadata.name").is_ok());
        assert!(validate_label_key("app").is_ok());
        assert!(validate_label_key("").is_err());
        assert!(validate_label_key("/app").is_err());
        assert!(validate_label_key("Example.COM/app").is_err());
        assert!(validate_label_key(&"a".repeat(64)).is_err());
        assert!(validate_label_value("").is_ok());
        assert!(validate_label_value("-x").is_err());
    }

    #[test]
    fn display_is_kubectl_syntax() {
        let s = Selector::new(vec![
            Requirement::In("tier".into(), vec!["web".into(), "db".into()]),
            Requirement::In("pod".into(), vec!["a".into()]),
            Requirement::DoesNotExist("legacy".into()),
        ]);
        assert_eq!(s.to_string(), "pod=a,tier in (db,web),!legacy");
        assert_eq!(Selector::everything().to_string(), "{}");
    }
}
