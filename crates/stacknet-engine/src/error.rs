//! Errors for bad input. Every message names the object and the field, so a person can fix it.

use std::fmt;

/// An object that failed validation: `NetworkPolicy x/allow-web: spec.ingress[0].ports[1].endPort:
/// endPort requires a numeric port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {message}")]
pub struct Invalid {
    /// `Kind namespace/name`, or `Kind name` for cluster-scoped objects.
    pub object: String,
    /// The field path, in the Kubernetes API's camelCase (`spec.ingress[0].from[1].ipBlock.cidr`).
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(object: impl fmt::Display, field: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid { object: object.to_string(), field: field.into(), message: message.into() }
    }
}

/// A manifest file that cannot be read into objects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The text is not YAML (the message carries the parser's line and column).
    #[error("{source_name}: invalid YAML: {message}")]
    Yaml { source_name: String, message: String },
    /// A document is YAML but not a Kubernetes object of a kind we read.
    #[error("{source_name}: document {document}{object}: {message}")]
    Document { source_name: String, document: usize, object: String, message: String },
    /// An object is well-formed but invalid.
    #[error("{source_name}: {invalid}")]
    Invalid { source_name: String, invalid: Invalid },
}
