//! Event channels: the operations Ferrite uses, behind a trait.
//!
//! The hal implements [`EventOps`] with `event_channel_op` hypercalls, the
//! shared-info pending/mask bitmaps and `SCHEDOP_poll` (events stay masked:
//! the main loop polls, there is no upcall handler). [`fake`] implements it
//! for host tests as a hub that several fake domains share.
#![forbid(unsafe_code)]

use crate::error::XenError;
use crate::types::{DomId, EvtchnPort};
use crate::wait::Nanos;

/// Event-channel operations of one domain.
pub trait EventOps {
    /// Allocates a port that `remote` may bind to.
    fn alloc_unbound(&mut self, remote: DomId) -> Result<EvtchnPort, XenError>;
    /// Connects a new local port to `remote`'s unbound `remote_port`.
    fn bind_interdomain(&mut self, remote: DomId, remote_port: EvtchnPort) -> Result<EvtchnPort, XenError>;
    /// Signals the other end of `port`.
    fn send(&mut self, port: EvtchnPort) -> Result<(), XenError>;
    /// Closes `port`.
    fn close(&mut self, port: EvtchnPort) -> Result<(), XenError>;
    /// Sets the mask bit of `port` (no upcall would be raised for it).
    fn mask(&mut self, port: EvtchnPort);
    /// Clears the mask bit of `port`.
    fn unmask(&mut self, port: EvtchnPort);
    /// Consumes the pending flag of `port`; `true` if it was set.
    fn take_pending(&mut self, port: EvtchnPort) -> bool;
    /// Waits until one of `ports` is pending or `deadline` passes. Returns
    /// `Ok(true)` if a port is pending (its flag is left set), `Ok(false)`
    /// on timeout.
    fn wait_any(&mut self, ports: &[EvtchnPort], deadline: Nanos) -> Result<bool, XenError>;
    /// Current monotonic time.
    fn now(&self) -> Nanos;
}

/// Host fake: a hub of event channels shared by fake domains.
pub mod fake {
    use super::*;
    use alloc::collections::BTreeMap;
    use alloc::rc::Rc;
    use core::cell::RefCell;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum State {
        Unbound { remote: DomId },
        Bound { peer: (DomId, EvtchnPort) },
    }

    #[derive(Debug)]
    struct Chan {
        state: State,
        pending: bool,
        masked: bool,
    }

    /// Shared state of all fake domains (Xen's view).
    #[derive(Default)]
    pub struct Hub {
        ports: BTreeMap<(DomId, EvtchnPort), Chan>,
        next: BTreeMap<DomId, u32>,
        /// Simulated time; each `wait_any` that times out jumps to its deadline.
        pub now: Nanos,
    }

    /// One domain's handle on the hub.
    pub struct FakeEvents {
        hub: Rc<RefCell<Hub>>,
        me: DomId,
    }

    impl FakeEvents {
        /// A set of domains sharing one hub.
        pub fn domains(ids: &[DomId]) -> alloc::vec::Vec<FakeEvents> {
            let hub = Rc::new(RefCell::new(Hub::default()));
            ids.iter().map(|&me| FakeEvents { hub: hub.clone(), me }).collect()
        }
        fn alloc_port(hub: &mut Hub, d: DomId) -> EvtchnPort {
            let n = hub.next.entry(d).or_insert(1);
            let p = EvtchnPort(*n);
            *n += 1;
            p
        }
        /// Whether `port` is pending, without consuming it.
        pub fn is_pending(&self, port: EvtchnPort) -> bool {
            self.hub.borrow().ports.get(&(self.me, port)).map(|c| c.pending).unwrap_or(false)
        }
    }

    impl EventOps for FakeEvents {
        // Fakes are never inlined: `./run.sh bench cpu` excludes their cost by call chain.
        #[inline(never)]
        fn alloc_unbound(&mut self, remote: DomId) -> Result<EvtchnPort, XenError> {
            let mut hub = self.hub.borrow_mut();
            let p = Self::alloc_port(&mut hub, self.me);
            hub.ports.insert((self.me, p), Chan { state: State::Unbound { remote }, pending: false, masked: false });
            Ok(p)
        }
        #[inline(never)]
        fn bind_interdomain(&mut self, remote: DomId, remote_port: EvtchnPort) -> Result<EvtchnPort, XenError> {
            let mut hub = self.hub.borrow_mut();
            match hub.ports.get(&(remote, remote_port)) {
                Some(Chan { state: State::Unbound { remote: r }, .. }) if *r == self.me => {}
                // Xen: a port not offered to us, already bound or absent.
                _ => return Err(XenError::Inval),
            }
            let p = Self::alloc_port(&mut hub, self.me);
            hub.ports.insert(
                (self.me, p),
                Chan { state: State::Bound { peer: (remote, remote_port) }, pending: false, masked: false },
            );
            let rc = hub.ports.get_mut(&(remote, remote_port)).ok_or(XenError::Inval)?;
            rc.state = State::Bound { peer: (self.me, p) };
            Ok(p)
        }
        #[inline(never)]
        fn send(&mut self, port: EvtchnPort) -> Result<(), XenError> {
            let mut hub = self.hub.borrow_mut();
            let peer = match hub.ports.get(&(self.me, port)) {
                Some(Chan { state: State::Bound { peer }, .. }) => *peer,
                Some(_) => return Ok(()), // unbound: Xen drops the event
                None => return Err(XenError::Inval),
            };
            if let Some(c) = hub.ports.get_mut(&peer) {
                c.pending = true;
            }
            Ok(())
        }
        #[inline(never)]
        fn close(&mut self, port: EvtchnPort) -> Result<(), XenError> {
            let mut hub = self.hub.borrow_mut();
            let c = hub.ports.remove(&(self.me, port)).ok_or(XenError::Inval)?;
            if let State::Bound { peer } = c.state {
                if let Some(pc) = hub.ports.get_mut(&peer) {
                    pc.state = State::Unbound { remote: self.me };
                }
            }
            Ok(())
        }
        #[inline(never)]
        fn mask(&mut self, port: EvtchnPort) {
            if let Some(c) = self.hub.borrow_mut().ports.get_mut(&(self.me, port)) {
                c.masked = true;
            }
        }
        #[inline(never)]
        fn unmask(&mut self, port: EvtchnPort) {
            if let Some(c) = self.hub.borrow_mut().ports.get_mut(&(self.me, port)) {
                c.masked = false;
            }
        }
        #[inline(never)]
        fn take_pending(&mut self, port: EvtchnPort) -> bool {
            match self.hub.borrow_mut().ports.get_mut(&(self.me, port)) {
                Some(c) => core::mem::replace(&mut c.pending, false),
                None => false,
            }
        }
        #[inline(never)]
        fn wait_any(&mut self, ports: &[EvtchnPort], deadline: Nanos) -> Result<bool, XenError> {
            let mut hub = self.hub.borrow_mut();
            for p in ports {
                if !hub.ports.contains_key(&(self.me, *p)) {
                    return Err(XenError::Inval);
                }
            }
            if ports.iter().any(|p| hub.ports[&(self.me, *p)].pending) {
                return Ok(true);
            }
            hub.now = hub.now.max(deadline);
            Ok(false)
        }
        #[inline(never)]
        fn now(&self) -> Nanos {
            self.hub.borrow().now
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeEvents;
    use super::*;

    #[test]
    fn round_trip_between_two_domains() {
        let mut d = FakeEvents::domains(&[DomId(0), DomId(7)]);
        let (mut dom0, mut ferrite) = (d.remove(0), d.remove(0));
        let p0 = dom0.alloc_unbound(DomId(7)).unwrap();
        let p7 = ferrite.bind_interdomain(DomId(0), p0).unwrap();
        ferrite.send(p7).unwrap();
        assert!(dom0.wait_any(&[p0], 100).unwrap());
        assert!(dom0.take_pending(p0));
        assert!(!dom0.take_pending(p0), "pending flag is consumed once");
        dom0.send(p0).unwrap();
        assert!(ferrite.take_pending(p7));
    }

    #[test]
    fn wait_times_out_without_event() {
        let mut d = FakeEvents::domains(&[DomId(0), DomId(1)]);
        let p = d[1].alloc_unbound(DomId(0)).unwrap();
        assert_eq!(d[1].wait_any(&[p], 5_000), Ok(false));
        assert!(d[1].now() >= 5_000);
    }

    #[test]
    fn errors_for_bad_ports() {
        let mut d = FakeEvents::domains(&[DomId(0), DomId(1), DomId(2)]);
        let p = d[0].alloc_unbound(DomId(1)).unwrap();
        // Offered to domain 1, not 2.
        assert_eq!(d[2].bind_interdomain(DomId(0), p), Err(XenError::Inval));
        assert_eq!(d[1].send(EvtchnPort(99)), Err(XenError::Inval));
        assert_eq!(d[1].wait_any(&[EvtchnPort(99)], 1), Err(XenError::Inval));
        let q = d[1].bind_interdomain(DomId(0), p).unwrap();
        // A port can be bound once.
        assert_eq!(d[2].bind_interdomain(DomId(0), p), Err(XenError::Inval));
        d[1].close(q).unwrap();
        assert_eq!(d[1].close(q), Err(XenError::Inval));
    }
}
