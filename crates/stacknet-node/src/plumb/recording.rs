//! A recording [`Plumbing`] for the tests of what drives it (the agent): no kernel, no root.
//! It keeps the interfaces it made, records every call in order, and fails or holds a call
//! when told to. Like the real one, a failed `create` leaves nothing, and a name already taken
//! in the pod's namespace is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::oneshot;

use super::{Fut, Observed, PlumbError, Plumbing, PodInterface};

/// One call, as the plumbing received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Create {
        netns: PathBuf,
        iface: PodInterface,
    },
    /// The host end of the interface configured.
    Configure {
        host: String,
    },
    Remove {
        host: String,
    },
    Observe {
        netns: PathBuf,
        ifname: String,
    },
}

/// The kind of a call, to fail or hold the next one of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Create,
    Configure,
    Remove,
    Observe,
}

/// A call held on its way in: `reached` fires when it arrives; it goes on once `release` is
/// sent (or dropped).
pub struct Held {
    pub reached: oneshot::Receiver<()>,
    pub release: oneshot::Sender<()>,
}

/// An interface the plumbing made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub netns: PathBuf,
    pub ifname: String,
    /// What `observe` reports for it.
    pub observed: Observed,
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    /// By host end.
    links: BTreeMap<String, Link>,
    failures: Vec<(Step, PlumbError)>,
    holds: Vec<(Step, oneshot::Sender<()>, oneshot::Receiver<()>)>,
}

#[derive(Default)]
pub struct RecordingPlumbing {
    state: Mutex<State>,
    /// Whether it makes interfaces for nested pods.
    nested: bool,
}

impl RecordingPlumbing {
    /// Plumbing that makes interfaces for nested pods (VLAN subinterfaces).
    pub fn nested() -> RecordingPlumbing {
        RecordingPlumbing { nested: true, ..RecordingPlumbing::default() }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The calls so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// The interfaces that exist now, by host end.
    pub fn links(&self) -> BTreeMap<String, Link> {
        self.state().links.clone()
    }

    /// The next call of `step` fails with `error` (a failed create makes nothing; any other
    /// failed call changes nothing).
    pub fn fail_next(&self, step: Step, error: PlumbError) {
        self.state().failures.push((step, error));
    }

    /// The next call of `step` waits until released.
    pub fn hold_next(&self, step: Step) -> Held {
        let (reached_tx, reached) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        self.state().holds.push((step, reached_tx, release_rx));
        Held { reached, release }
    }

    /// Changes an interface behind the agent's back (someone ran `ip` in the pod).
    pub fn tamper(&self, host: &str, change: impl FnOnce(&mut Observed)) {
        change(&mut self.state().links.get_mut(host).expect("no such link").observed);
    }

    /// Removes an interface behind the agent's back (its namespace went away).
    pub fn vanish(&self, host: &str) {
        self.state().links.remove(host);
    }

    /// Records `call`, waits if it is held, and returns the failure it was told to give.
    async fn enter(&self, step: Step, call: Call) -> Result<(), PlumbError> {
        let held = {
            let mut s = self.state();
            s.calls.push(call);
            let i = s.holds.iter().position(|(h, ..)| *h == step);
            i.map(|i| s.holds.remove(i))
        };
        if let Some((_, reached, release)) = held {
            let _ = reached.send(());
            let _ = release.await;
        }
        let mut s = self.state();
        match s.failures.iter().position(|(f, _)| *f == step) {
            Some(i) => Err(s.failures.remove(i).1),
            None => Ok(()),
        }
    }
}

impl Plumbing for RecordingPlumbing {
    fn nested(&self) -> bool {
        self.nested
    }

    fn create<'a>(&'a self, netns: &'a Path, iface: &'a PodInterface) -> Fut<'a, Result<(), PlumbError>> {
        Box::pin(async move {
            self.enter(Step::Create, Call::Create { netns: netns.into(), iface: iface.clone() }).await?;
            let mut s = self.state();
            if s.links.values().any(|l| l.netns == netns && l.ifname == iface.ifname) {
                return Err(PlumbError::IfnameTaken { name: iface.ifname.clone() });
            }
            let observed = Observed { mac: iface.mac.clone(), up: false, addresses: vec![], gateways: vec![] };
            s.links.insert(iface.host.clone(), Link { netns: netns.into(), ifname: iface.ifname.clone(), observed });
            Ok(())
        })
    }

    fn configure<'a>(&'a self, _netns: &'a Path, iface: &'a PodInterface) -> Fut<'a, Result<(), PlumbError>> {
        Box::pin(async move {
            self.enter(Step::Configure, Call::Configure { host: iface.host.clone() }).await?;
            let mut s = self.state();
            let link = s.links.get_mut(&iface.host).ok_or_else(|| PlumbError::Netlink {
                what: format!("pod end {}", iface.ifname),
                message: "not found in the pod's namespace".into(),
            })?;
            link.observed.up = true;
            link.observed.addresses = iface.addresses.clone();
            link.observed.gateways = iface.gateways.clone();
            Ok(())
        })
    }

    fn remove<'a>(&'a self, host: &'a str) -> Fut<'a, Result<bool, PlumbError>> {
        Box::pin(async move {
            self.enter(Step::Remove, Call::Remove { host: host.into() }).await?;
            Ok(self.state().links.remove(host).is_some())
        })
    }

    fn observe<'a>(&'a self, netns: &'a Path, ifname: &'a str) -> Fut<'a, Result<Option<Observed>, PlumbError>> {
        Box::pin(async move {
            self.enter(Step::Observe, Call::Observe { netns: netns.into(), ifname: ifname.into() }).await?;
            let s = self.state();
            Ok(s.links.values().find(|l| l.netns == netns && l.ifname == ifname).map(|l| l.observed.clone()))
        })
    }
}
