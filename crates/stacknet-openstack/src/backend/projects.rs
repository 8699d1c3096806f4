//! Each namespace's Keystone project, as its `stacknet.io/openstack-project` annotation names
//! it (by name or id; projects are the operator's, only looked up). A name is looked up again
//! after `resync`. A project that cannot be found, or a name several domains have, is a
//! problem on the namespace, which is then left out: its pods get no port rather than one in
//! the wrong project.

use std::collections::BTreeMap;
use std::time::Instant;

use stacknet_engine::objects::PROJECT_ANNOTATION;
use stacknet_engine::{ClusterIndex, ObjectRef, Problem, Reason};

use crate::cloud::Error;
use crate::keystone::{self, Lookup};

use super::NeutronBackend;

/// Each namespace's project: `None` the session's own, `Some` the one its annotation names.
/// A namespace whose annotation names no usable project is absent.
pub(super) type Projects = BTreeMap<String, Option<String>>;

/// The namespaces' projects as far as they are known, and the annotations still to look up
/// (each once, with the namespaces naming it).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct ProjectPlan {
    pub projects: Projects,
    pub lookups: BTreeMap<String, Vec<String>>,
}

/// The project a namespace gets for project `id`: the session's own project is no project of
/// its own (its pools are the default's).
pub(super) fn project_of(id: &str, own: Option<&str>) -> Option<String> {
    Some(id.to_string()).filter(|id| Some(id.as_str()) != own)
}

/// What the namespaces of `index` need, given the projects `known` (annotation → id).
pub(super) fn plan(index: &ClusterIndex, known: impl Fn(&str) -> Option<String>, own: Option<&str>) -> ProjectPlan {
    let mut plan = ProjectPlan::default();
    for (ns, _) in index.namespaces() {
        match index.namespace_object(ns).and_then(|n| n.project.clone()) {
            None => {
                plan.projects.insert(ns.to_string(), None);
            }
            Some(wanted) => match known(&wanted) {
                Some(id) => {
                    plan.projects.insert(ns.to_string(), project_of(&id, own));
                }
                None => plan.lookups.entry(wanted).or_default().push(ns.to_string()),
            },
        }
    }
    plan
}

/// What looking up `wanted` came to, for namespace `ns`: the project's id, or the problem.
pub(super) fn resolved(ns: &str, wanted: &str, lookup: &Lookup) -> Result<String, Problem> {
    let object = ObjectRef::namespace(ns);
    match lookup {
        Lookup::Found(p) => Ok(p.id.clone()),
        Lookup::Missing => Err(Problem::new(
            object,
            Reason::ProjectNotFound,
            format!(
                "annotation {PROJECT_ANNOTATION}: Keystone has no project with id or name {wanted:?}; the namespace's pods get no port until it has"
            ),
        )),
        Lookup::Ambiguous(found) => {
            let domains: Vec<String> = found.iter().map(|p| format!("{} (domain {})", p.id, p.domain_id)).collect();
            Err(Problem::new(
                object,
                Reason::ProjectAmbiguous,
                format!(
                    "annotation {PROJECT_ANNOTATION}: {} projects are named {wanted:?}: {}; name one by its id",
                    found.len(),
                    domains.join(", ")
                ),
            ))
        }
    }
}

impl NeutronBackend {
    /// The id of the project an annotation names, if it was looked up lately.
    pub(super) fn known_project(&self, annotation: &str) -> Option<String> {
        let known = self.projects.lock().expect("not poisoned");
        known.get(annotation).filter(|(_, at)| at.elapsed() < self.config.resync).map(|(id, _)| id.clone())
    }

    /// Each namespace's project, looking up in Keystone what is not known; Keystone's
    /// refusals are problems on the namespaces (an outage is an error).
    pub(super) async fn projects(&self, index: &ClusterIndex) -> Result<(Projects, Vec<Problem>), Error> {
        let own = self.cloud.project_id();
        let ProjectPlan { mut projects, lookups } = plan(index, |a| self.known_project(a), own.as_deref());
        let mut problems = Vec::new();
        for (wanted, namespaces) in lookups {
            let lookup = match keystone::project(&self.cloud, &wanted).await {
                Ok(l) => l,
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    for ns in namespaces {
                        let message = format!("annotation {PROJECT_ANNOTATION}: looking up project {wanted:?}: {e}");
                        problems.push(Problem::new(ObjectRef::namespace(&ns), Reason::KeystoneRejected, message));
                    }
                    continue;
                }
            };
            for ns in namespaces {
                match resolved(&ns, &wanted, &lookup) {
                    Ok(id) => {
                        projects.insert(ns, project_of(&id, own.as_deref()));
                        self.projects.lock().expect("not poisoned").insert(wanted.clone(), (id, Instant::now()));
                    }
                    Err(p) => problems.push(p),
                }
            }
        }
        Ok((projects, problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keystone::Project;
    use stacknet_engine::manifest;

    fn index(yaml: &str) -> ClusterIndex {
        ClusterIndex::from_objects(manifest::parse("ns.yaml", yaml).unwrap().objects)
    }

    const NAMESPACES: &str = "
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: plain}}
- {apiVersion: v1, kind: Namespace, metadata: {name: a, annotations: {stacknet.io/openstack-project: team-a}}}
- {apiVersion: v1, kind: Namespace, metadata: {name: a2, annotations: {stacknet.io/openstack-project: team-a}}}
- {apiVersion: v1, kind: Namespace, metadata: {name: mine, annotations: {stacknet.io/openstack-project: admin}}}
";

    #[test]
    fn known_projects_are_used_and_each_unknown_name_is_looked_up_once() {
        let known = |a: &str| (a == "admin").then(|| "own-id".to_string());
        let p = plan(&index(NAMESPACES), known, Some("own-id"));
        // The session's own project named explicitly is the default.
        assert_eq!(p.projects, Projects::from([("plain".into(), None), ("mine".into(), None)]));
        assert_eq!(p.lookups, BTreeMap::from([("team-a".to_string(), vec!["a".to_string(), "a2".to_string()])]));
        let known = |a: &str| (a == "team-a").then(|| "id-a".to_string());
        let p = plan(&index(NAMESPACES), known, Some("own-id"));
        assert_eq!(p.projects.get("a"), Some(&Some("id-a".to_string())));
        assert_eq!(p.lookups.keys().collect::<Vec<_>>(), ["admin"]);
    }

    #[test]
    fn a_missing_or_ambiguous_project_is_a_problem_on_the_namespace() {
        let project =
            |id: &str, domain: &str| Project { id: id.into(), name: "team-a".into(), domain_id: domain.into() };
        assert_eq!(resolved("a", "team-a", &Lookup::Found(project("id-a", "d"))), Ok("id-a".into()));
        let missing = resolved("a", "team-a", &Lookup::Missing).unwrap_err();
        assert_eq!((missing.object.to_string(), missing.reason), ("Namespace a".to_string(), Reason::ProjectNotFound));
        let two = Lookup::Ambiguous(vec![project("p1", "d1"), project("p2", "d2")]);
        let ambiguous = resolved("a", "team-a", &two).unwrap_err();
        assert_eq!(ambiguous.reason, Reason::ProjectAmbiguous);
        assert!(ambiguous.message.contains("p1 (domain d1), p2 (domain d2)"), "{}", ambiguous.message);
    }
}
