//! Nested nodes (Nova VMs with a trunk): their pods' ports are subports of the VM's trunk,
//! each on the lowest VLAN id (1–4094) no subport of the trunk has, anyone's. Trunks are never
//! ours: only our subports are added and removed. A subport comes off its trunk before it is
//! deleted (Neutron refuses otherwise).

use std::collections::{BTreeMap, BTreeSet};

use stacknet_engine::{ObjectRef, Problem, Reason};

use crate::cloud::{Cloud, Error};
use crate::neutron::{self, Port, Trunk};

use super::NeutronBackend;
use super::exec::{Failures, concurrently};
use super::state::State;

/// VLANs for `ports` (each with the object it is for) on `trunk`: the subports to add, with
/// their VLAN ids, and a problem for each port no VLAN id is left for.
pub(super) fn assign_vlans(
    trunk: &Trunk,
    ports: Vec<(String, ObjectRef)>,
) -> (Vec<(String, u16, ObjectRef)>, Vec<Problem>) {
    let mut taken = BTreeSet::new();
    let mut subports = Vec::new();
    let mut problems = Vec::new();
    for (port, object) in ports {
        match trunk.free_vlan(&taken) {
            Some(v) => {
                taken.insert(v);
                subports.push((port, v, object));
            }
            None => problems.push(Problem::new(
                object,
                Reason::VlanExhausted,
                format!(
                    "trunk {} (parent port {}) has every VLAN id from 1 to 4094 in use: no subport for the pod",
                    trunk.id, trunk.port_id
                ),
            )),
        }
    }
    (subports, problems)
}

impl NeutronBackend {
    /// Puts `ports` (port, the object it is for) on `trunk` in one call. A VLAN taken
    /// meanwhile by someone else (Neutron refuses the call) is each port's problem: the next
    /// reconcile reads the trunk again and tries again. Returns how many went on.
    pub(super) async fn attach(
        &self,
        cloud: &Cloud,
        state: &mut State,
        trunk: &str,
        ports: Vec<(String, ObjectRef)>,
        failures: &mut Failures,
    ) -> Result<usize, Error> {
        let Some(t) = state.trunks.values().find(|t| t.id == trunk) else { return Ok(0) };
        let (subports, problems) = assign_vlans(t, ports);
        for p in problems {
            failures.push(p);
        }
        if subports.is_empty() {
            return Ok(0);
        }
        let list: Vec<(String, u16)> = subports.iter().map(|(p, v, _)| (p.clone(), *v)).collect();
        match neutron::add_subports(cloud, trunk, &list).await {
            Ok(t) => {
                state.replace_trunk(t);
                Ok(list.len())
            }
            Err(e) if e.is_transient() => failures.sort(subports[0].2.clone(), e).map(|()| 0),
            Err(e) => {
                for (_, _, object) in subports {
                    failures.note(object, &e);
                }
                Ok(0)
            }
        }
    }

    /// Deletes `ports` of ours, concurrently, each off its trunk first (Neutron refuses to
    /// delete a subport); each port's outcome (a trunk that refuses is its ports' failure).
    pub(super) async fn delete_ports(
        &self,
        cloud: &Cloud,
        state: &mut State,
        ports: Vec<Port>,
    ) -> Vec<(Port, Result<(), Error>)> {
        let mut off: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in &ports {
            if let Some(t) = state.trunk_holding(&p.id) {
                off.entry(t.id.clone()).or_default().push(p.id.clone());
            }
        }
        let mut stuck: BTreeMap<String, Error> = BTreeMap::new();
        for (trunk, ids) in off {
            match neutron::remove_subports(cloud, &trunk, &ids).await {
                Ok(t) => state.replace_trunk(t),
                Err(e) => stuck.extend(ids.into_iter().map(|id| (id, e.clone()))),
            }
        }
        let (failed, doomed): (Vec<Port>, Vec<Port>) = ports.into_iter().partition(|p| stuck.contains_key(&p.id));
        let mut outcome: Vec<(Port, Result<(), Error>)> = failed
            .into_iter()
            .map(|p| {
                let e = stuck[&p.id].clone();
                (p, Err(e))
            })
            .collect();
        outcome.extend(
            concurrently(doomed, |p| async move {
                let r = neutron::delete(cloud, "ports", &p.id).await;
                (p, r)
            })
            .await,
        );
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::neutron::{SubPort, VLAN_IDS};

    fn trunk(vlans: impl IntoIterator<Item = u16>) -> Trunk {
        Trunk {
            id: "t1".into(),
            port_id: "vm-port".into(),
            name: String::new(),
            sub_ports: vlans
                .into_iter()
                .map(|v| SubPort { port_id: format!("p{v}"), segmentation_id: v, segmentation_type: "vlan".into() })
                .collect(),
        }
    }

    fn pods(names: &[&str]) -> Vec<(String, ObjectRef)> {
        names.iter().map(|n| (format!("port-{n}"), ObjectRef::pod(&stacknet_engine::ObjectKey::new("x", *n)))).collect()
    }

    #[test]
    fn each_port_gets_the_lowest_vlan_no_subport_has() {
        let (subports, problems) = assign_vlans(&trunk([1, 3]), pods(&["a", "b", "c"]));
        let vlans: Vec<(&str, u16)> = subports.iter().map(|(p, v, _)| (p.as_str(), *v)).collect();
        assert_eq!(vlans, [("port-a", 2), ("port-b", 4), ("port-c", 5)]);
        assert!(problems.is_empty());
    }

    #[test]
    fn a_full_trunk_is_vlan_exhausted_for_each_port_it_cannot_take() {
        let (subports, problems) = assign_vlans(&trunk(VLAN_IDS.filter(|v| *v != 4094)), pods(&["a", "b"]));
        assert_eq!(subports.iter().map(|(_, v, _)| *v).collect::<Vec<_>>(), [4094]);
        assert_eq!(problems.len(), 1);
        assert_eq!((problems[0].object.to_string(), problems[0].reason), ("Pod x/b".into(), Reason::VlanExhausted));
    }
}
