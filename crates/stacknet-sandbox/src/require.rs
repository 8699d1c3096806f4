//! What a command or test needs of the machine, checked before anything starts: a newcomer
//! learns at once what is missing and the exact command that installs it, instead of a daemon
//! failing half-way.

use std::path::Path;

/// Something the machine must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The OVN databases and ovn-northd, ovn-nbctl, ovn-trace (the trace dataplane).
    Ovn,
    /// A chassis: ovs-vswitchd, ovn-controller, `ip` and `ethtool` (the live dataplane).
    Chassis,
    /// Network namespaces and interfaces: root.
    Root,
}

/// The packages that provide [`Need::Ovn`] and [`Need::Chassis`] on Debian 12.
pub const OVN_PACKAGES: &str = "ovn-central ovn-host openvswitch-switch iproute2 ethtool";

const DIRS: [&str; 4] = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

fn programs(need: Need) -> &'static [&'static str] {
    match need {
        Need::Ovn => &["ovsdb-server", "ovsdb-tool", "ovn-northd", "ovn-nbctl", "ovn-sbctl", "ovn-trace"],
        Need::Chassis => &["ovs-vswitchd", "ovs-vsctl", "ovn-controller", "ip", "ethtool"],
        Need::Root => &[],
    }
}

fn files(need: Need) -> &'static [&'static str] {
    match need {
        Need::Ovn => &["/usr/share/ovn/ovn-nb.ovsschema", "/usr/share/ovn/ovn-sb.ovsschema"],
        Need::Chassis => &["/usr/share/openvswitch/vswitch.ovsschema"],
        Need::Root => &[],
    }
}

/// `Err` says what is missing and how to get it, e.g. `needs OVN and Open vSwitch, and this
/// machine lacks ovn-northd, ovs-vswitchd: install them (as root) with apt-get install -y ...`.
pub fn require(needs: &[Need]) -> Result<(), String> {
    if needs.contains(&Need::Root) && !nix::unistd::geteuid().is_root() {
        return Err("needs root (it makes network namespaces and interfaces): run it as root".into());
    }
    let mut missing: Vec<&str> = Vec::new();
    for need in needs {
        for p in programs(*need) {
            if !DIRS.iter().any(|d| Path::new(d).join(p).exists()) {
                missing.push(p);
            }
        }
        missing.extend(files(*need).iter().filter(|f| !Path::new(f).exists()));
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "needs OVN and Open vSwitch, and this machine lacks {}: install them (as root) with\n    apt-get install -y {OVN_PACKAGES}",
        missing.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_needed_is_nothing_missing() {
        assert_eq!(require(&[]), Ok(()));
    }
}
