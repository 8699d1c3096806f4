//! Keystone projects, as a namespace's `stacknet.io/openstack-project` annotation names them:
//! read only (stacknet never makes, changes or deletes a project).

use serde::Deserialize;

use crate::cloud::{Call, Cloud, Error, Service};

const K: Service = Service::Identity;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Project {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub domain_id: String,
}

/// What a project reference comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(Project),
    /// No project has that id or name.
    Missing,
    /// Several projects (in different domains) have that name: an id is needed.
    Ambiguous(Vec<Project>),
}

/// The project whose id, or else whose name, is `name_or_id`.
pub async fn project(cloud: &Cloud, name_or_id: &str) -> Result<Lookup, Error> {
    // Ids are hex; a name is looked up by name only (a name that is some project's id would
    // be that project's).
    if name_or_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        match cloud.call::<Project>(Call::get(K, format!("projects/{name_or_id}")).answer("project")).await {
            Ok(p) => return Ok(Lookup::Found(p)),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    let mut found: Vec<Project> =
        cloud.call(Call::get(K, "projects").query("name", name_or_id).answer("projects")).await?;
    Ok(match found.len() {
        0 => Lookup::Missing,
        1 => Lookup::Found(found.remove(0)),
        _ => Lookup::Ambiguous(found),
    })
}
