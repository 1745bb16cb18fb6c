//! Event channels on Xen: `event_channel_op`, the 2-level pending and mask
//! bitmaps in shared info, and `SCHEDOP_poll` to wait with events masked.

use super::hypercall::{checked, nr, sched_poll};
use core::sync::atomic::{AtomicU64, Ordering};
use xen::error::XenError;
use xen::evtchn::EventOps;
use xen::types::{DomId, EvtchnPort};
use xen::wait::Nanos;
use xen::xen_abi::{evtchnop, shared_info as si, EvtchnAllocUnbound, EvtchnBindInterdomain, DOMID_SELF};

/// Event channels of this domain.
pub struct XenEvents {
    shared_info_va: u64,
}

impl XenEvents {
    /// Uses the shared info page mapped at `shared_info_va`.
    ///
    /// # Safety
    /// `shared_info_va` must map this domain's shared info page for the
    /// lifetime of the value.
    pub unsafe fn new(shared_info_va: u64) -> Self {
        Self { shared_info_va }
    }

    fn word(&self, base: usize, port: EvtchnPort) -> Option<(&AtomicU64, u64)> {
        if port.0 >= si::NR_PORTS {
            return None;
        }
        let off = base + (port.0 as usize / 64) * 8;
        // SAFETY: inside the mapped shared info page (port < 4096 → offset
        // < base + 512), 8-byte aligned; Xen updates it atomically too.
        let w = unsafe { &*((self.shared_info_va as usize + off) as *const AtomicU64) };
        Some((w, 1u64 << (port.0 % 64)))
    }

    fn op<T>(&self, cmd: u64, arg: &mut T) -> Result<(), XenError> {
        // SAFETY: `arg` is the repr(C) struct for `cmd`, valid for the call.
        unsafe { checked(nr::EVENT_CHANNEL_OP, cmd, arg as *mut T as u64, 0) }.map(|_| ())
    }

    /// A notifier on `port` sharing this domain's shared info page.
    pub fn notifier(&self, port: EvtchnPort) -> PortNotifier {
        // SAFETY: `self` was built on the mapped shared info page, which
        // stays mapped for the domain's lifetime.
        unsafe { PortNotifier::new(self.shared_info_va, port) }
    }

    /// Whether `port` is pending (not consumed).
    pub fn is_pending(&self, port: EvtchnPort) -> bool {
        self.word(si::EVTCHN_PENDING, port).map(|(w, bit)| w.load(Ordering::Acquire) & bit != 0).unwrap_or(false)
    }
}

impl EventOps for XenEvents {
    fn alloc_unbound(&mut self, remote: DomId) -> Result<EvtchnPort, XenError> {
        let mut a = EvtchnAllocUnbound { dom: DOMID_SELF, remote_dom: remote.0, port: 0 };
        self.op(evtchnop::ALLOC_UNBOUND, &mut a)?;
        Ok(EvtchnPort(a.port))
    }
    fn bind_interdomain(&mut self, remote: DomId, remote_port: EvtchnPort) -> Result<EvtchnPort, XenError> {
        let mut a = EvtchnBindInterdomain { remote_dom: remote.0, _pad: 0, remote_port: remote_port.0, local_port: 0 };
        self.op(evtchnop::BIND_INTERDOMAIN, &mut a)?;
        Ok(EvtchnPort(a.local_port))
    }
    fn send(&mut self, port: EvtchnPort) -> Result<(), XenError> {
        let mut p = port.0;
        self.op(evtchnop::SEND, &mut p)
    }
    fn close(&mut self, port: EvtchnPort) -> Result<(), XenError> {
        let mut p = port.0;
        self.op(evtchnop::CLOSE, &mut p)
    }
    fn mask(&mut self, port: EvtchnPort) {
        if let Some((w, bit)) = self.word(si::EVTCHN_MASK, port) {
            w.fetch_or(bit, Ordering::SeqCst);
        }
    }
    fn unmask(&mut self, port: EvtchnPort) {
        // EVTCHNOP_unmask clears the bit and re-raises a pending event.
        let mut p = port.0;
        if self.op(evtchnop::UNMASK, &mut p).is_err() {
            if let Some((w, bit)) = self.word(si::EVTCHN_MASK, port) {
                w.fetch_and(!bit, Ordering::SeqCst);
            }
        }
    }
    fn take_pending(&mut self, port: EvtchnPort) -> bool {
        match self.word(si::EVTCHN_PENDING, port) {
            Some((w, bit)) => w.fetch_and(!bit, Ordering::SeqCst) & bit != 0,
            None => false,
        }
    }
    fn wait_any(&mut self, ports: &[EvtchnPort], deadline: Nanos) -> Result<bool, XenError> {
        // Bounded: each SCHEDOP_poll returns at the deadline at the latest.
        for _ in 0..64 {
            if ports.iter().any(|&p| self.is_pending(p)) {
                return Ok(true);
            }
            if super::time::now() >= deadline {
                return Ok(false);
            }
            let raw: [u32; 64] = core::array::from_fn(|i| ports.get(i).map(|p| p.0).unwrap_or(0));
            sched_poll(&raw[..ports.len().min(64)], deadline)?;
        }
        Ok(ports.iter().any(|&p| self.is_pending(p)))
    }
    fn now(&self) -> Nanos {
        super::time::now()
    }
}

/// A [`Notifier`](xen::wait::Notifier) on one event channel, for ring
/// clients (xenstore, console): send to notify, `SCHEDOP_poll` to wait.
pub struct PortNotifier {
    events: XenEvents,
    port: EvtchnPort,
}

impl PortNotifier {
    /// Notifier on `port`.
    ///
    /// # Safety
    /// As for [`XenEvents::new`].
    pub unsafe fn new(shared_info_va: u64, port: EvtchnPort) -> Self {
        // SAFETY: forwarded contract.
        Self { events: unsafe { XenEvents::new(shared_info_va) }, port }
    }
}

impl xen::wait::Notifier for PortNotifier {
    fn notify(&mut self) {
        let _ = self.events.send(self.port);
    }
    fn wait(&mut self, deadline: Nanos) -> bool {
        let got = self.events.wait_any(&[self.port], deadline).unwrap_or(false);
        // Consume the flag: the caller re-reads the ring either way.
        self.events.take_pending(self.port);
        got || super::time::now() < deadline
    }
    fn now(&self) -> Nanos {
        super::time::now()
    }
}
