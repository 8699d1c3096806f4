//! Security groups: every group of the [`SecurityPlan`] exists in Neutron with exactly its
//! rules. New groups are made first (stripped of Neutron's default rules), rules are added
//! before extra ones go (a group is never narrower than both its old and new self), and
//! groups nobody needs go last, once no port of ours is in them and no rule names them.

use std::collections::{BTreeMap, BTreeSet};

use stacknet_engine::objects::{Direction, Protocol};
use stacknet_engine::{CloudKind, ObjectRef};

use crate::cloud::Error;
use crate::neutron::{self, NewRule, SecurityGroup};
use crate::secgroups::{Remote, SecurityPlan};

use super::config::NeutronConfig;
use super::exec::Failures;
use super::{NeutronBackend, Report};

/// The rules one existing group must gain and lose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RuleChange {
    /// The group's id in the plan, its marker and its Neutron id.
    pub group: String,
    pub marker: String,
    pub neutron_id: String,
    /// Each with its description (the rule as the plan reads).
    pub add: Vec<(NewRule, String)>,
    /// Neutron ids of rules it has and should not.
    pub remove: Vec<String>,
}

fn direction(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// The planned groups Neutron has (by plan id) and the ones it lacks.
pub(super) fn existing(
    plan: &SecurityPlan,
    have: &BTreeMap<String, SecurityGroup>,
    c: &NeutronConfig,
) -> (BTreeMap<String, SecurityGroup>, Vec<String>) {
    let mut found = BTreeMap::new();
    let mut missing = Vec::new();
    for id in plan.groups.keys() {
        match have.get(&c.marker(id)) {
            Some(g) => {
                found.insert(id.clone(), g.clone());
            }
            None => missing.push(id.clone()),
        }
    }
    (found, missing)
}

/// What each group of `groups` (the planned ones Neutron has, by plan id) must gain and lose.
/// A rule whose remote group could not be made waits (it would allow more).
pub(super) fn rule_changes(plan: &SecurityPlan, groups: &BTreeMap<String, SecurityGroup>) -> Vec<RuleChange> {
    let mut out = Vec::new();
    for (id, spec) in &plan.groups {
        let Some(g) = groups.get(id) else { continue };
        let mut want: Vec<(NewRule, String)> = Vec::new();
        for r in &spec.rules {
            let remote_group_id = match &r.remote {
                Remote::Group(other) => match groups.get(other) {
                    Some(o) => Some(o.id.clone()),
                    None => continue,
                },
                _ => None,
            };
            let rule = NewRule {
                direction: direction(r.direction),
                ethertype: r.family.ethertype(),
                protocol: r.protocol.map(protocol),
                ports: r.ports.filter(|p| *p != (1, 65535)),
                remote_group_id,
                remote_ip_prefix: match &r.remote {
                    Remote::Prefix(c) => Some(c.to_string()),
                    _ => None,
                },
            };
            want.push((rule, r.to_string()));
        }
        let remove: Vec<String> = g
            .security_group_rules
            .iter()
            .filter(|have| !want.iter().any(|(w, _)| w.matches(have)))
            .map(|r| r.id.clone())
            .collect();
        let add: Vec<(NewRule, String)> =
            want.into_iter().filter(|(w, _)| !g.security_group_rules.iter().any(|have| w.matches(have))).collect();
        if !remove.is_empty() || !add.is_empty() {
            out.push(RuleChange {
                group: id.clone(),
                marker: g.description.clone(),
                neutron_id: g.id.clone(),
                add,
                remove,
            });
        }
    }
    out
}

/// Groups of ours the plan no longer has.
pub(super) fn unused(
    plan: &SecurityPlan,
    have: &BTreeMap<String, SecurityGroup>,
    c: &NeutronConfig,
) -> Vec<SecurityGroup> {
    let wanted: BTreeSet<String> = plan.groups.keys().map(|id| c.marker(id)).collect();
    have.iter().filter(|(m, _)| !wanted.contains(*m)).map(|(_, g)| g.clone()).collect()
}

/// The Kubernetes object a group stands for, for problems (else the group itself).
fn owner_of(plan: &SecurityPlan, id: &str) -> ObjectRef {
    plan.groups
        .get(id)
        .and_then(|g| g.kind.owner())
        .unwrap_or_else(|| ObjectRef::Cloud(CloudKind::SecurityGroup, id.to_string()))
}

impl NeutronBackend {
    /// Every planned group exists with exactly its rules; returns each planned group that
    /// does, by plan id.
    pub(super) async fn security_groups(
        &self,
        plan: &SecurityPlan,
        groups: &mut BTreeMap<String, SecurityGroup>,
        report: &mut Report,
        failures: &mut Failures,
    ) -> Result<BTreeMap<String, SecurityGroup>, Error> {
        let c = &self.config;
        let (mut found, missing) = existing(plan, groups, c);
        // New groups: made, stripped of Neutron's default egress rules, tagged.
        let owner = |id: &String| owner_of(plan, id);
        let made = failures
            .each(missing, owner, |id| async move {
                let r = async {
                    let g = neutron::create_security_group(&self.cloud, &c.name(&id), &c.marker(&id)).await?;
                    for r in &g.security_group_rules {
                        neutron::delete(&self.cloud, "security-group-rules", &r.id).await?;
                    }
                    neutron::set_tags(&self.cloud, "security-groups", &g.id, &[c.tag()]).await?;
                    Ok(SecurityGroup { security_group_rules: Vec::new(), tags: vec![c.tag()], ..g })
                }
                .await;
                (id, r)
            })
            .await?;
        for (id, g) in made {
            report.created += 1;
            groups.insert(g.description.clone(), g.clone());
            found.insert(id, g);
        }
        // Rules: additions first, so that a group is never narrower than both its old and new self.
        let done = failures
            .each(
                rule_changes(plan, &found),
                |ch| owner_of(plan, &ch.group),
                |change| async move {
                    let r = async {
                        let added = neutron::create_rules(&self.cloud, &change.neutron_id, &change.add).await?;
                        for r in &change.remove {
                            neutron::delete(&self.cloud, "security-group-rules", r).await?;
                        }
                        Ok(added)
                    }
                    .await;
                    (change, r)
                },
            )
            .await?;
        for (change, added) in done {
            report.created += added.len();
            report.deleted += change.remove.len();
            for g in groups.get_mut(&change.marker).into_iter().chain(found.get_mut(&change.group)) {
                g.security_group_rules.retain(|r| !change.remove.contains(&r.id));
                g.security_group_rules.extend(added.iter().cloned());
            }
        }
        Ok(found)
    }

    /// Deletes the groups the plan no longer has (after ports have left them): their rules
    /// first, since rules in one may name another.
    pub(super) async fn remove_unused_groups(
        &self,
        plan: &SecurityPlan,
        groups: &mut BTreeMap<String, SecurityGroup>,
        report: &mut Report,
        failures: &mut Failures,
    ) -> Result<(), Error> {
        let doomed = unused(plan, groups, &self.config);
        let object = |g: &SecurityGroup| ObjectRef::Cloud(CloudKind::SecurityGroup, g.name.clone());
        for g in &doomed {
            for r in &g.security_group_rules {
                if let Err(e) = neutron::delete(&self.cloud, "security-group-rules", &r.id).await {
                    failures.sort(object(g), e)?;
                }
            }
        }
        for g in &doomed {
            match neutron::delete(&self.cloud, "security-groups", &g.id).await {
                Ok(()) => {
                    report.deleted += 1;
                    groups.remove(&g.description);
                }
                Err(e) => failures.sort(object(g), e)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secgroups::Family;
    use serde_json::json;
    use stacknet_engine::{PolicyEngine, manifest};

    const CLUSTER: &str = "
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Pod, metadata: {name: db, namespace: x, labels: {app: db}}, status: {podIP: 10.0.0.2}}
- {apiVersion: v1, kind: Pod, metadata: {name: app, namespace: x, labels: {app: app}}, status: {podIP: 10.0.0.3}}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: db, namespace: x}
  spec:
    podSelector: {matchLabels: {app: db}}
    ingress: [{from: [{podSelector: {matchLabels: {app: app}}}], ports: [{port: 5432}]}]
";

    fn plan() -> SecurityPlan {
        let engine = PolicyEngine::from_index(stacknet_engine::ClusterIndex::from_objects(
            manifest::parse("c.yaml", CLUSTER).unwrap().objects,
        ));
        crate::secgroups::plan(&engine, &[Family::V4])
    }

    /// The groups of `plan` as Neutron would hold them once made with no rules, by marker.
    fn empty_groups(plan: &SecurityPlan, c: &NeutronConfig) -> BTreeMap<String, SecurityGroup> {
        plan.groups
            .keys()
            .map(|id| {
                let g = json!({"id": format!("sg-{id}"), "name": c.name(id), "description": c.marker(id)});
                (c.marker(id), serde_json::from_value(g).unwrap())
            })
            .collect()
    }

    #[test]
    fn new_groups_get_every_rule_and_a_remote_group_is_named_by_its_neutron_id() {
        let c = NeutronConfig::new("t", Vec::new());
        let plan = plan();
        let (found, missing) = existing(&plan, &BTreeMap::new(), &c);
        assert!(found.is_empty());
        assert_eq!(missing.len(), plan.groups.len());
        // Nothing made yet: no rule can name a peer group, so the policy's rule waits.
        let none = rule_changes(&plan, &BTreeMap::new());
        assert!(none.is_empty());
        let have = empty_groups(&plan, &c);
        let (found, missing) = existing(&plan, &have, &c);
        assert!(missing.is_empty());
        let changes = rule_changes(&plan, &found);
        let policy = changes.iter().find(|ch| ch.group == "policy:x/db").expect("the policy's group gains its rule");
        assert_eq!(policy.add.len(), 1, "{:?}", policy.add);
        let (rule, _) = &policy.add[0];
        assert_eq!((rule.direction, rule.protocol, rule.ports), ("ingress", Some("tcp"), Some((5432, 5432))));
        let peer = found.iter().find(|(id, _)| id.starts_with("peer:")).map(|(_, g)| g.id.clone());
        assert_eq!(rule.remote_group_id, peer);
        assert!(changes.iter().all(|ch| ch.remove.is_empty()));
    }

    #[test]
    fn a_group_with_its_rules_changes_nothing_and_a_foreign_rule_goes() {
        let c = NeutronConfig::new("t", Vec::new());
        let plan = plan();
        let mut have = empty_groups(&plan, &c);
        let found = existing(&plan, &have, &c).0;
        let mut n = 0;
        for change in rule_changes(&plan, &found) {
            let g = have.get_mut(&change.marker).unwrap();
            for (r, _) in change.add {
                n += 1;
                let rule = json!({
                    "id": format!("r{n}"), "security_group_id": g.id, "direction": r.direction,
                    "ethertype": r.ethertype, "protocol": r.protocol,
                    "port_range_min": r.ports.map(|p| p.0), "port_range_max": r.ports.map(|p| p.1),
                    "remote_group_id": r.remote_group_id, "remote_ip_prefix": r.remote_ip_prefix,
                });
                g.security_group_rules.push(serde_json::from_value(rule).unwrap());
            }
        }
        let found = existing(&plan, &have, &c).0;
        assert_eq!(rule_changes(&plan, &found), Vec::new(), "a second pass changes nothing");
        // Someone adds an allow-all to the policy's group: it goes, and nothing is added.
        let marker = c.marker("policy:x/db");
        let extra = json!({"id": "evil", "security_group_id": "x", "direction": "ingress", "ethertype": "IPv4"});
        have.get_mut(&marker).unwrap().security_group_rules.push(serde_json::from_value(extra).unwrap());
        let changes = rule_changes(&plan, &existing(&plan, &have, &c).0);
        assert_eq!(changes.len(), 1);
        assert_eq!((changes[0].add.len(), changes[0].remove.clone()), (0, vec!["evil".to_string()]));
    }

    /// Node n1 at `address`, and pod a on it.
    fn node_plan(address: Option<&str>) -> SecurityPlan {
        let status = address.map(|a| format!(", status: {{addresses: [{{type: InternalIP, address: {a}}}]}}"));
        let yaml = format!(
            "apiVersion: v1\nkind: List\nitems:\n\
             - {{apiVersion: v1, kind: Node, metadata: {{name: n1}}{}}}\n\
             - {{apiVersion: v1, kind: Pod, metadata: {{name: a, namespace: x}}, spec: {{nodeName: n1}}, status: {{podIP: 10.0.0.2}}}}\n",
            status.unwrap_or_default()
        );
        let engine = PolicyEngine::from_index(stacknet_engine::ClusterIndex::from_objects(
            manifest::parse("n.yaml", &yaml).unwrap().objects,
        ));
        crate::secgroups::plan(&engine, &[Family::V4])
    }

    /// Gives each group of `have` the rules its changes add, with made-up ids.
    fn carry_out(changes: Vec<RuleChange>, have: &mut BTreeMap<String, SecurityGroup>) {
        for change in changes {
            let g = have.get_mut(&change.marker).unwrap();
            g.security_group_rules.retain(|r| !change.remove.contains(&r.id));
            for (r, _) in change.add {
                let rule = json!({
                    "id": format!("{}-{}", r.direction, r.remote_ip_prefix.as_deref().unwrap_or("any")),
                    "security_group_id": g.id, "direction": r.direction, "ethertype": r.ethertype,
                    "protocol": r.protocol, "remote_ip_prefix": r.remote_ip_prefix,
                });
                g.security_group_rules.push(serde_json::from_value(rule).unwrap());
            }
        }
    }

    #[test]
    fn a_nodes_group_admits_its_address_both_ways_and_follows_it() {
        let c = NeutronConfig::new("t", Vec::new());
        let plan = node_plan(Some("192.168.1.11"));
        let mut have = empty_groups(&plan, &c);
        let changes = rule_changes(&plan, &existing(&plan, &have, &c).0);
        let node = changes.iter().find(|ch| ch.group == "node:n1").expect("the node's group gains its rules");
        let mut rules: Vec<_> =
            node.add.iter().map(|(r, _)| (r.direction, r.protocol, r.ports, r.remote_ip_prefix.clone())).collect();
        rules.sort();
        let host = Some("192.168.1.11/32".to_string());
        assert_eq!(rules, [("egress", None, None, host.clone()), ("ingress", None, None, host)]);
        assert_eq!(owner_of(&plan, "node:n1").to_string(), "Node n1");
        carry_out(changes, &mut have);
        assert_eq!(rule_changes(&plan, &existing(&plan, &have, &c).0), Vec::new());
        // The node's address changes: the new one is added, the old one's rules go.
        let moved = node_plan(Some("192.168.1.99"));
        let changes = rule_changes(&moved, &existing(&moved, &have, &c).0);
        assert_eq!(changes.len(), 1, "{changes:?}");
        let added: Vec<_> = changes[0].add.iter().map(|(r, _)| r.remote_ip_prefix.clone().unwrap()).collect();
        assert_eq!(added, ["192.168.1.99/32", "192.168.1.99/32"]);
        let mut removed = changes[0].remove.clone();
        removed.sort();
        assert_eq!(removed, ["egress-192.168.1.11/32", "ingress-192.168.1.11/32"]);
        // No address yet (a node registering): its group exists, admitting nothing.
        let bare = node_plan(None);
        assert!(bare.groups["node:n1"].rules.is_empty());
        assert_eq!(
            bare.ports[&"x/a".parse().unwrap()],
            plan.ports[&"x/a".parse().unwrap()],
            "the pod's groups are the same"
        );
    }

    #[test]
    fn a_gone_nodes_group_is_unused() {
        let c = NeutronConfig::new("t", Vec::new());
        let have = empty_groups(&node_plan(Some("192.168.1.11")), &c);
        let gone = crate::secgroups::plan(&PolicyEngine::new(), &[Family::V4]);
        let doomed: Vec<String> = unused(&gone, &have, &c).into_iter().map(|g| g.id).collect();
        assert!(doomed.contains(&"sg-node:n1".to_string()), "{doomed:?}");
    }

    #[test]
    fn groups_of_gone_policies_are_unused_and_others_are_kept() {
        let c = NeutronConfig::new("t", Vec::new());
        let plan = plan();
        let mut have = empty_groups(&plan, &c);
        assert!(unused(&plan, &have, &c).is_empty());
        let gone = c.marker("policy:x/old");
        let g = json!({"id": "sg-old", "name": "old", "description": gone});
        have.insert(gone.clone(), serde_json::from_value(g).unwrap());
        let doomed = unused(&plan, &have, &c);
        assert_eq!(doomed.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(), ["sg-old"]);
    }
}
