//! The vif lifecycle glue: netback as a [`xen_backend::DeviceKind`].
//!
//! [`xen_backend::Lifecycle`] finds vifs and follows the frontend; here each
//! [`DeviceEvent`] becomes [`Event`]s of the vif's [`VifFsm`], whose effects
//! are carried out in order: nodes written, the frontend's keys read, rings
//! mapped and event channels bound on connect, everything released on
//! disconnect (never waiting: tx slots not yet answered are abandoned with
//! the ring, rx has nothing in flight between calls).

use crate::abi::{CtrlEntry, RxEntry, TxEntry};
use crate::backend::{CtrlRing, Queue, Serve, Vif, VifStats};
use crate::credit::Credit;
use crate::xenbus::{read_keys, ConnectParams, Effect, Event, RxFeatures, VifFsm};
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use log::warn;
use net::MacAddr;
use xen::evtchn::EventOps;
use xen::gnttab::{GrantOps, LocalFrames, MapRequest, Mapping};
use xen::ratelimit::LogLimit;
use xen::shmem::SharedMem;
use xen::types::{EvtchnPort, GrantRef};
use xen::wait::Notifier;
use xen_backend::{DeviceEvent, DeviceKind, DeviceXs, Outcome};
use xen_ring::BackRing;

impl<P: SharedMem, B: AsRef<[u8]> + AsMut<[u8]> + LocalFrames, G: GrantOps<Page = P>, E: EventOps> DeviceKind
    for Serve<'_, P, B, G, E>
{
    fn hotplug_nodes(&self) -> Vec<(&'static str, String)> {
        // What dom0's vif hotplug script writes once the interface is up;
        // ours is up as soon as it exists.
        alloc::vec![("hotplug-status", String::from("connected"))]
    }

    fn event<M: SharedMem, N: Notifier>(&mut self, xs: &mut DeviceXs<'_, M, N>, ev: DeviceEvent) -> Outcome {
        let ev = match ev {
            DeviceEvent::Added => {
                let dev = xs.device();
                let (id, be, fe_dom) = (dev.id, dev.be.clone(), dev.fe_dom);
                let mac = xs.xs().read_string(&format!("{be}/mac")).ok().and_then(|s| MacAddr::parse(s.trim()));
                if mac.is_none() {
                    warn!("vif {be}: no valid mac node");
                }
                let vif = Vif {
                    ctrl: None,
                    hash: Default::default(),
                    be,
                    fe_dom,
                    mac,
                    fsm: VifFsm::new(self.cfg.max_queues),
                    queues: Vec::new(),
                    rx: RxFeatures::default(),
                    stats: VifStats::default(),
                    log: LogLimit::guest(),
                };
                self.vifs.insert(id, vif);
                Event::Probe
            }
            DeviceEvent::FrontendState(s) => Event::FrontendStateChanged(s),
            DeviceEvent::FrontendStateInvalid => Event::FrontendStateInvalid,
            DeviceEvent::FrontendGone => Event::FrontendGone,
            DeviceEvent::Offline => Event::Offline,
        };
        self.feed(xs, ev)
    }
}

impl<P: SharedMem, B: AsRef<[u8]> + AsMut<[u8]> + LocalFrames, G: GrantOps<Page = P>, E: EventOps>
    Serve<'_, P, B, G, E>
{
    fn feed<M: SharedMem, N: Notifier>(&mut self, xs: &mut DeviceXs<'_, M, N>, first: Event) -> Outcome {
        let id = xs.device().id;
        let mut events = VecDeque::from([first]);
        // Bounded: each event yields a few effects and at most one follow-up.
        for _ in 0..16 {
            let Some(ev) = events.pop_front() else { break };
            let Some(v) = self.vifs.get_mut(&id) else { return Outcome::Keep };
            for eff in v.fsm.step(ev) {
                match eff {
                    Effect::Write { key, value } => xs.write(key, &value),
                    Effect::SwitchState(s) => xs.switch_state(s),
                    Effect::ReadFrontendKeys => {
                        let keys = read_keys(self.cfg.max_queues, |k| xs.read_frontend(k));
                        events.push_back(Event::FrontendKeys(keys));
                    }
                    Effect::Connect(p) => {
                        let be = xs.device().be.clone();
                        let rate = xs.xs().read_string(&format!("{be}/rate")).ok();
                        if let Err(why) = self.connect(id, &p, rate.as_deref()) {
                            events.push_back(Event::ConnectFailed(why));
                            break; // FSM contract: not Connected
                        }
                    }
                    Effect::Disconnect => self.disconnect(id),
                    Effect::WriteError(msg) => {
                        let now = self.e.now();
                        if let Some(v) = self.vifs.get_mut(&id) {
                            limited!(v.log, now, warn, "vif {}: {msg}", v.be);
                        }
                        xs.write_error_node(&msg);
                    }
                    Effect::Remove => {
                        self.disconnect(id);
                        self.vifs.remove(&id);
                        return Outcome::Removed { at: self.e.now() };
                    }
                }
            }
        }
        Outcome::Keep
    }

    /// Maps each queue's two ring pages, attaches the rings, binds the
    /// event channels; on any failure releases what it took.
    fn connect(&mut self, id: u32, p: &ConnectParams, rate: Option<&str>) -> Result<(), String> {
        let now = self.e.now();
        let Some(v) = self.vifs.get_mut(&id) else { return Err(String::from("no such vif")) };
        let credit = match rate.map(|r| Credit::parse(r, now)) {
            None => Credit::UNLIMITED,
            Some(Some(c)) => c,
            Some(None) => {
                limited!(v.log, now, warn, "vif {}: malformed rate node; no limit", v.be);
                Credit::UNLIMITED
            }
        };
        let mut queues = Vec::new();
        let mut err = None;
        for (qi, k) in p.queues.iter().enumerate() {
            let reqs = [k.tx_ref, k.rx_ref].map(|r| MapRequest { dom: v.fe_dom, gref: GrantRef(r), readonly: false });
            let mut maps = Vec::new();
            for r in self.g.map_batch(&reqs) {
                match r {
                    Ok(m) => maps.push(m),
                    Err(e) => err = Some(format!("mapping the rings of queue {qi}: {e:?}")),
                }
            }
            if err.is_some() {
                let _ = self.g.unmap_batch(&maps);
                break;
            }
            let attach = BackRing::attach(self.g.page(&maps[0]), TxEntry, 0)
                .and_then(|tx| BackRing::attach(self.g.page(&maps[1]), RxEntry, 0).map(|rx| (tx, rx)));
            let (tx, rx) = match attach {
                Ok(r) => r,
                Err(e) => {
                    let _ = self.g.unmap_batch(&maps);
                    err = Some(format!("queue {qi}: {}", e.as_str()));
                    break;
                }
            };
            let tx_port = match self.e.bind_interdomain(v.fe_dom, k.tx_evtchn) {
                Ok(pt) => pt,
                Err(e) => {
                    let _ = self.g.unmap_batch(&maps);
                    err = Some(format!("binding event channel {} of queue {qi}: {e}", k.tx_evtchn.0));
                    break;
                }
            };
            let rx_port = if k.split() {
                match self.e.bind_interdomain(v.fe_dom, k.rx_evtchn) {
                    Ok(pt) => pt,
                    Err(e) => {
                        let _ = self.e.close(tx_port);
                        let _ = self.g.unmap_batch(&maps);
                        err = Some(format!("binding event channel {} of queue {qi}: {e}", k.rx_evtchn.0));
                        break;
                    }
                }
            } else {
                tx_port
            };
            queues.push(Queue {
                tx,
                rx,
                maps,
                tx_port,
                rx_port,
                carry: Vec::new(),
                dead: false,
                credit,
                throttled: None,
                backlog: Default::default(),
                backlog_bytes: 0,
                rx_retry: None,
            });
        }
        let mut ctrl = None;
        if let (None, Some(c)) = (&err, p.ctrl) {
            match connect_ctrl(self.g, self.e, v.fe_dom, c.ring_ref, c.evtchn) {
                Ok(r) => ctrl = Some(r),
                Err(why) => err = Some(why),
            }
        }
        if let Some(why) = err {
            release(self.g, self.e, &mut v.log, &v.be, now, queues, None);
            return Err(why);
        }
        v.queues = queues;
        v.ctrl = ctrl;
        v.hash = Default::default();
        v.rx = p.rx;
        *self.generation += 1;
        limited!(
            v.log,
            now,
            info,
            "vif {}: connected to domain {}: {} queue(s), {} event channels, sg {}, gso v4/v6 {}/{}, rate {}",
            v.be,
            v.fe_dom,
            p.queues.len(),
            if p.queues.iter().any(|q| q.split()) { "split" } else { "shared" },
            p.rx.sg,
            p.rx.gso_v4,
            p.rx.gso_v6,
            if credit.limited() { rate.unwrap_or("") } else { "unlimited" },
        );
        Ok(())
    }

    /// Releases every ring mapping and event channel of the vif at once.
    pub(crate) fn disconnect(&mut self, id: u32) {
        let now = self.e.now();
        let Some(v) = self.vifs.get_mut(&id) else { return };
        if v.queues.is_empty() {
            return;
        }
        for qi in 0..v.queues.len() {
            crate::deliver::drop_backlog(v, qi);
        }
        let queues = core::mem::take(&mut v.queues);
        let ctrl = v.ctrl.take();
        release(self.g, self.e, &mut v.log, &v.be, now, queues, ctrl);
        *self.generation += 1;
    }
}

/// Maps the control ring page, attaches the ring, binds its event channel.
fn connect_ctrl<P: SharedMem, G: GrantOps<Page = P>, E: EventOps>(
    g: &mut G,
    e: &mut E,
    dom: xen::types::DomId,
    ring_ref: u32,
    evtchn: EvtchnPort,
) -> Result<CtrlRing<P>, String> {
    let req = [MapRequest { dom, gref: GrantRef(ring_ref), readonly: false }];
    let map = match g.map_batch(&req).pop() {
        Some(Ok(m)) => m,
        Some(Err(err)) => return Err(format!("mapping the control ring: {err:?}")),
        None => return Err(String::from("mapping the control ring: no result")),
    };
    let ring = match BackRing::attach(g.page(&map), CtrlEntry, 0) {
        Ok(r) => r,
        Err(err) => {
            let _ = g.unmap_batch(&[map]);
            return Err(format!("control ring: {}", err.as_str()));
        }
    };
    match e.bind_interdomain(dom, evtchn) {
        Ok(port) => Ok(CtrlRing { ring, map, port, dead: false }),
        Err(err) => {
            drop(ring);
            let _ = g.unmap_batch(&[map]);
            Err(format!("binding control event channel {}: {err}", evtchn.0))
        }
    }
}

/// Unmaps the queues' rings and the control ring, closes their event
/// channels.
fn release<P: SharedMem, G: GrantOps<Page = P>, E: EventOps>(
    g: &mut G,
    e: &mut E,
    log: &mut LogLimit,
    be: &str,
    now: xen::wait::Nanos,
    queues: Vec<Queue<P>>,
    ctrl: Option<CtrlRing<P>>,
) {
    let mut released = 0;
    if let Some(c) = ctrl {
        let (map, port) = (c.map, c.port);
        drop(c.ring);
        match g.unmap_batch(&[map]).pop() {
            Some(Ok(())) => released += 1,
            other => limited!(log, now, warn, "vif {be}: unmapping the control ring failed: {other:?}"),
        }
        let _ = e.close(port);
    }
    for q in queues {
        let maps: Vec<Mapping> = q.maps.clone();
        // The rings (holding the mapped pages) go before the mappings.
        drop((q.tx, q.rx));
        for r in g.unmap_batch(&maps) {
            match r {
                Ok(()) => released += 1,
                Err(err) => limited!(log, now, warn, "vif {be}: unmap failed: {err:?}"),
            }
        }
        let ports: [EvtchnPort; 2] = [q.tx_port, q.rx_port];
        let _ = e.close(ports[0]);
        if ports[1] != ports[0] {
            let _ = e.close(ports[1]);
        }
    }
    limited!(log, now, info, "vif {be}: disconnected, {released} ring mapping(s) released");
}
