//! The controller's errors: what stops it from starting. Everything that goes wrong while it
//! runs is an Event on the object concerned instead (see [`crate::events`]).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is wrong; `setting` names it (and where it came from).
    #[error("{setting}: {message}")]
    Setting { setting: String, message: String },
    /// The configuration file cannot be read or parsed.
    #[error("config file {}: {message}", path.display())]
    ConfigFile { path: PathBuf, message: String },
    /// The manifest folder cannot be watched.
    #[error("manifest folder {}: {message}", path.display())]
    ManifestFolder { path: PathBuf, message: String },
    /// The cloud cannot be reached, or refuses the credentials.
    #[error("OpenStack: {0}")]
    OpenStack(#[from] stacknet_openstack::Error),
}

impl Error {
    pub fn setting(setting: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Setting { setting: setting.into(), message: message.into() }
    }

    /// Bad input (the command exits 2), as opposed to a failure of something it talks to.
    pub fn is_input(&self) -> bool {
        !matches!(self, Error::OpenStack(_))
    }
}
