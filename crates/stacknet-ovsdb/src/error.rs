//! The client's errors. Server-side transaction errors keep the server's own words.

use std::fmt;

/// One operation's (or the commit's) failure, as the server reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationError {
    /// Index of the failed operation; `None` when the commit as a whole failed (the trailing
    /// error entry: constraint or referential-integrity violations).
    pub index: Option<usize>,
    /// The failed operation's `op`, when known.
    pub op: Option<String>,
    /// The server's error string, e.g. `constraint violation`.
    pub error: String,
    pub details: Option<String>,
}

impl OperationError {
    pub fn kind(&self) -> ErrorKind {
        match self.error.as_str() {
            "constraint violation" => ErrorKind::ConstraintViolation,
            "referential integrity violation" => ErrorKind::ReferentialIntegrity,
            "timed out" => ErrorKind::TimedOut,
            "aborted" => ErrorKind::Aborted,
            "not owner" | "permission error" => ErrorKind::NotPermitted,
            "resources exhausted" => ErrorKind::ResourcesExhausted,
            _ => ErrorKind::Other,
        }
    }
}

impl fmt::Display for OperationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.index, &self.op) {
            (Some(i), Some(op)) => write!(f, "operation {i} ({op}): ")?,
            (Some(i), None) => write!(f, "operation {i}: ")?,
            (None, _) => f.write_str("commit: ")?,
        }
        f.write_str(&self.error)?;
        if let Some(d) = &self.details {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    ConstraintViolation,
    ReferentialIntegrity,
    /// A `wait` operation's condition did not hold: someone else changed the rows.
    TimedOut,
    Aborted,
    NotPermitted,
    ResourcesExhausted,
    Other,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("invalid remote {0:?} (expected unix:PATH, tcp:HOST:PORT or ssl:HOST:PORT)")]
    Remote(String),
    #[error("cannot connect to {remote}: {message}")]
    Connect { remote: String, message: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("connection lost: {0}")]
    Disconnected(String),
    #[error("no connection to the database yet")]
    NotConnected,
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{method} failed: {message}")]
    Rpc { method: String, message: String },
    #[error("transaction failed: {0}")]
    Transaction(OperationError),
    #[error(
        "database {database} schema {version} is not usable (stacknet needs {needed} or newer{}{})",
        if missing.is_empty() { "" } else { "; missing " },
        missing.join(", ")
    )]
    Schema { database: String, version: String, needed: String, missing: Vec<String> },
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("the client was shut down")]
    Closed,
}

impl Error {
    /// The server's transaction error, if that is what this is.
    pub fn operation(&self) -> Option<&OperationError> {
        match self {
            Error::Transaction(e) => Some(e),
            _ => None,
        }
    }

    /// Whether trying again after a reconnect may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Connect { .. } | Error::Disconnected(_) | Error::NotConnected | Error::Timeout(_))
            || self.operation().is_some_and(|o| o.kind() == ErrorKind::TimedOut)
    }
}
