//! Carrying plans out: calls run a few at a time, and every failure is sorted in one place.
//! A failure is either an outage (no answer, or the service in trouble: the reconcile stops
//! and is retried) or a problem with one object (reported on it; the rest goes on). Separately,
//! a failure may leave what the backend knows of Neutron in doubt: a call whose outcome is
//! unknown, or a refusal that says Neutron's state is not what we thought (gone, in use,
//! taken). Only then is Neutron read again before the next reconcile.

use std::future::Future;

use futures::StreamExt;
use stacknet_engine::{ObjectRef, Problem, Reason};

use crate::cloud::Error;

/// Calls in flight at once.
pub(super) const CONCURRENCY: usize = 8;

/// Runs `call` on each item, [`CONCURRENCY`] at a time; the outputs in completion order.
pub(super) async fn concurrently<T, R, Fut>(items: impl IntoIterator<Item = T>, call: impl FnMut(T) -> Fut) -> Vec<R>
where
    Fut: Future<Output = R>,
{
    futures::stream::iter(items).map(call).buffer_unordered(CONCURRENCY).collect().await
}

/// The problem a refusal means for `object`.
pub(crate) fn problem_of(object: ObjectRef, e: &Error) -> Problem {
    let reason = if e.is_quota() {
        Reason::QuotaExceeded
    } else if is_address_conflict(e) {
        Reason::AddressConflict
    } else if matches!(e.kind(), Some("SubnetAllocationError")) {
        // A subnet pool (the cluster CIDR, network per namespace) has no prefix left.
        Reason::NamespaceSubnetExhausted
    } else if e.kind() == Some("DuplicateSubPort") {
        // A VLAN id taken on a trunk meanwhile (by someone else).
        Reason::VlanConflict
    } else if e.is_transient() {
        Reason::NeutronUnreachable
    } else {
        Reason::NeutronRejected
    };
    Problem { object, reason, message: e.to_string() }
}

fn is_address_conflict(e: &Error) -> bool {
    matches!(e.kind(), Some("IpAddressAlreadyAllocated" | "MacAddressInUse" | "IpAddressInUse"))
}

/// Whether what the backend knows of its objects is still right after `e`: a refusal about
/// something else (a quota, an address another port has, a pool without room, a request
/// Neutron finds invalid or forbidden) leaves it right; no answer, a lost object or any other
/// conflict does not.
pub(super) fn leaves_state_known(e: &Error) -> bool {
    e.is_quota()
        || is_address_conflict(e)
        || e.kind() == Some("SubnetAllocationError")
        || (matches!(e.status(), Some(400 | 403)) && !e.is_transient())
}

/// The failures of one pass over Neutron.
#[derive(Debug, Default)]
pub(super) struct Failures {
    pub problems: Vec<Problem>,
    /// What the backend knows of Neutron may be wrong: read it again.
    pub stale: bool,
}

impl Failures {
    /// A call for `object` failed: an outage is returned (the pass stops), anything else is
    /// the object's problem and the pass goes on.
    pub fn sort(&mut self, object: ObjectRef, e: Error) -> Result<(), Error> {
        if e.is_transient() {
            self.stale = true;
            return Err(e);
        }
        self.note(object, &e);
        Ok(())
    }

    /// A call failed with `e`, and `problem` says what that means: an outage is returned (the
    /// pass stops), anything else is `problem` and the pass goes on.
    pub fn sort_as(&mut self, problem: Problem, e: Error) -> Result<(), Error> {
        if e.is_transient() {
            self.stale = true;
            return Err(e);
        }
        if !leaves_state_known(&e) {
            self.stale = true;
        }
        self.problems.push(problem);
        Ok(())
    }

    /// Records `e` as `object`'s problem, outage or not (for passes that go on regardless).
    pub fn note(&mut self, object: ObjectRef, e: &Error) {
        if !leaves_state_known(e) {
            self.stale = true;
        }
        self.problems.push(problem_of(object, e));
    }

    /// A problem found without a call failing.
    pub fn push(&mut self, problem: Problem) {
        self.problems.push(problem);
    }

    /// Runs `call` on each item ([`concurrently`]); the items whose call succeeded, each with
    /// its answer. A failure is sorted against the object `of` names for its item.
    pub async fn each<T, R, Fut>(
        &mut self,
        items: impl IntoIterator<Item = T>,
        of: impl Fn(&T) -> ObjectRef,
        call: impl FnMut(T) -> Fut,
    ) -> Result<Vec<(T, R)>, Error>
    where
        Fut: Future<Output = (T, Result<R, Error>)>,
    {
        let mut done = Vec::new();
        for (item, r) in concurrently(items, call).await {
            match r {
                Ok(answer) => done.push((item, answer)),
                Err(e) => self.sort(of(&item), e)?,
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, kind: Option<&str>) -> Error {
        Error::Api { what: "POST network ports".into(), status, kind: kind.map(String::from), message: "no".into() }
    }

    #[test]
    fn outages_stop_the_pass_and_refusals_are_the_objects_problems() {
        let pod = ObjectRef::pod(&stacknet_engine::ObjectKey::new("x", "a"));
        let mut f = Failures::default();
        assert!(f.sort(pod.clone(), api(503, None)).is_err());
        assert!(f.problems.is_empty() && f.stale, "an unanswered call leaves the state in doubt");
        let mut f = Failures::default();
        f.sort(pod.clone(), api(409, Some("OverQuota"))).unwrap();
        f.sort(pod.clone(), api(409, Some("IpAddressAlreadyAllocated"))).unwrap();
        f.sort(pod.clone(), api(400, Some("InvalidInput"))).unwrap();
        f.sort(pod.clone(), api(500, Some("SubnetAllocationError"))).unwrap();
        let reasons: Vec<Reason> = f.problems.iter().map(|p| p.reason).collect();
        assert_eq!(
            reasons,
            [Reason::QuotaExceeded, Reason::AddressConflict, Reason::NeutronRejected, Reason::NamespaceSubnetExhausted]
        );
        assert!(!f.stale, "refusals about something else leave what we know of our objects right");
        for doubt in [api(404, Some("PortNotFound")), api(409, Some("DuplicateSubPort")), api(409, Some("PortInUse"))] {
            let mut f = Failures::default();
            f.sort(pod.clone(), doubt).unwrap();
            assert!(f.stale, "{:?}", f.problems);
        }
        let mut f = Failures::default();
        f.sort(pod, api(409, Some("DuplicateSubPort"))).unwrap();
        assert_eq!(f.problems[0].reason, Reason::VlanConflict);
    }
}
