//! The vbd lifecycle glue: blkback as an [`xen_backend::DeviceKind`].
//!
//! [`xen_backend::Lifecycle`] finds vbds and follows the frontend; here each
//! [`DeviceEvent`] becomes [`Event`]s of the vbd's [`BackendFsm`], whose
//! effects are carried out in order: nodes written (never re-creating a
//! removed directory), the frontend's keys read, rings mapped and event
//! channels bound on connect, everything drained and released on
//! disconnect, the device dropped on `Remove`.

use crate::abi::Abi;
use crate::backend::{DRAIN_NS, MAX_MAPPINGS, TRANSIENT_RESERVE};
use crate::budget::Budget;
use crate::datapath::{RingCtx, RingStats};
use crate::engine::{Retired, Serve};
use crate::ring::{BlkRing, PagesMem};
use crate::xenbus::{BackendFsm, ConnectParams, Effect, Event, FrontendKeys};
use crate::{DiskInfo, OpenRequest};
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use drivers::block::BlockDevice;
use log::{info, warn};
use xen::evtchn::EventOps;
use xen::gnttab::{GrantOps, LocalFrames, MapRequest, Mapping};
use xen::ratelimit::{suppressed_note, LogLimit};
use xen::shmem::SharedMem;
use xen::types::{DomId, EvtchnPort, GrantRef};
use xen::wait::Notifier;
use xen_backend::{DeviceEvent, DeviceKind, DeviceXs, Outcome};

/// One vbd's handshake and data-path state (its lifecycle state lives in
/// the [`xen_backend::Device`] of the same id).
pub(crate) struct Vbd<P: SharedMem, D: BlockDevice> {
    pub(crate) id: u32,
    pub(crate) be: String,
    pub(crate) fe_dom: DomId,
    pub(crate) fsm: BackendFsm,
    /// The vbd's own disk (from the opener), dropped with the vbd.
    pub(crate) disk: D,
    /// What its frontend is told about the disk.
    pub(crate) info: DiskInfo,
    pub(crate) rings: Vec<RingCtx<P, D::Buffer>>,
    /// Requests of closed rings still on the disk: until they completed
    /// (or `drain_deadline`), the vbd's new rings take no requests.
    pub(crate) orphans: usize,
    pub(crate) drain_deadline: xen::wait::Nanos,
    /// Log budget for everything its guest can trigger.
    pub(crate) log: LogLimit,
}

impl<P: SharedMem, D: BlockDevice, G: GrantOps<Page = P>, E: EventOps> DeviceKind for Serve<'_, P, D, G, E>
where
    D::Buffer: AsRef<[u8]> + AsMut<[u8]> + LocalFrames,
{
    fn hotplug_nodes(&self) -> Vec<(&'static str, String)> {
        // What dom0's block hotplug script would write: the device is open.
        alloc::vec![("physical-device", String::from("fd:0"))]
    }

    fn event<M: SharedMem, N: Notifier>(&mut self, xs: &mut DeviceXs<'_, M, N>, ev: DeviceEvent) -> Outcome {
        let ev = match ev {
            DeviceEvent::Added => {
                let Some((disk, readonly)) = self.open_disk(xs) else {
                    return Outcome::Removed { at: self.e.now() };
                };
                let info = DiskInfo::of(&disk, readonly);
                let dev = xs.device();
                let vbd = Vbd {
                    id: dev.id,
                    be: dev.be.clone(),
                    fe_dom: dev.fe_dom,
                    fsm: BackendFsm::new(self.cfg),
                    disk,
                    info,
                    orphans: 0,
                    drain_deadline: 0,
                    rings: Vec::new(),
                    log: LogLimit::guest(),
                };
                self.vbds.insert(vbd.id, vbd);
                if let out @ Outcome::Removed { .. } = self.feed(xs, Event::Probe) {
                    return out;
                }
                Event::HotplugDone(info)
            }
            DeviceEvent::FrontendState(s) => Event::FrontendStateChanged(s),
            DeviceEvent::FrontendStateInvalid => Event::FrontendStateInvalid,
            DeviceEvent::FrontendGone => Event::FrontendGone,
            DeviceEvent::Offline => Event::Disconnect,
        };
        self.feed(xs, ev)
    }
}

impl<P: SharedMem, D: BlockDevice, G: GrantOps<Page = P>, E: EventOps> Serve<'_, P, D, G, E>
where
    D::Buffer: AsRef<[u8]> + AsMut<[u8]> + LocalFrames,
{
    /// Steps the vbd's state machine with `first` and carries out the
    /// effects.
    fn feed<M: SharedMem, N: Notifier>(&mut self, xs: &mut DeviceXs<'_, M, N>, first: Event) -> Outcome {
        let id = xs.device().id;
        let mut events = VecDeque::from([first]);
        // Bounded: each event yields a handful of effects, at most one follow-up event.
        for _ in 0..16 {
            let Some(ev) = events.pop_front() else { break };
            let Some(v) = self.vbds.get_mut(&id) else { return Outcome::Keep };
            let effects = v.fsm.step(ev);
            for eff in effects {
                match eff {
                    Effect::Write { key, value } => xs.write(key, &value),
                    Effect::SwitchState(s) => xs.switch_state(s),
                    Effect::ReadFrontendKeys => {
                        let keys = FrontendKeys::read(&self.cfg, |k| xs.read_frontend(k));
                        events.push_back(Event::FrontendKeys(keys));
                    }
                    Effect::MapRings(params) => {
                        if let Err(why) = self.connect(id, &params) {
                            let now = self.e.now();
                            if let Some(v) = self.vbds.get_mut(&id) {
                                limited!(v.log, now, warn, "vbd {}: {why}", v.be);
                            }
                            // FSM contract: the rest of this batch (disk
                            // details, Connected) must not be carried out.
                            events.push_back(Event::RingMapFailed("cannot map rings or bind event channels"));
                            break;
                        }
                    }
                    Effect::UnmapAll => self.disconnect(id),
                    Effect::WriteError(msg) => {
                        // The frontend's doing: logged within the vbd's budget.
                        let now = self.e.now();
                        if let Some(v) = self.vbds.get_mut(&id) {
                            limited!(v.log, now, warn, "vbd {}: {msg}", v.be);
                        }
                        xs.write_error_node(&msg);
                    }
                    Effect::Remove => {
                        self.disconnect(id);
                        if let Some(v) = self.vbds.remove(&id) {
                            self.core.sweep_tokens = true;
                            if v.orphans > 0 {
                                // Its requests still use its disk: keep the
                                // disk (and its claim) until they completed.
                                let deadline = v.drain_deadline;
                                self.core.retired.push(Retired { vid: id, disk: v.disk, deadline });
                            }
                        }
                        return Outcome::Removed { at: self.e.now() };
                    }
                }
            }
        }
        Outcome::Keep
    }

    /// Opens the disk of the vbd `xs.device()` names (its `params` and
    /// `mode`). On failure: the reason goes to `hotplug-error`,
    /// `hotplug-status` becomes `error`, the `state` node is removed so
    /// that libxl fails the attach at once (it only waits for state 2,
    /// which is never written), the failure is logged and kept for
    /// [`Blkback::last_error`](crate::Blkback::last_error).
    fn open_disk<M: SharedMem, N: Notifier>(&mut self, xs: &mut DeviceXs<'_, M, N>) -> Option<(D, bool)> {
        let be = xs.device().be.clone();
        let node = |xs: &mut DeviceXs<'_, M, N>, key: &str| xs.xs().read_string(&format!("{be}/{key}")).ok();
        let params = node(xs, "params").unwrap_or_default();
        let mode = node(xs, "mode");
        // Only an explicit `w` grants writes: fail closed.
        let readonly = mode.as_deref().map(str::trim) != Some("w");
        // `backend/vbd/<domid>/<devid>`: the holder is `<domid>/<devid>`.
        let mut tail = be.rsplit('/');
        let devid = tail.next().unwrap_or_default();
        let holder = format!("{}/{devid}", tail.next().unwrap_or_default());
        let req = OpenRequest { params: params.trim(), readonly, holder: &holder };
        match (self.core.open)(&req) {
            Ok(disk) => {
                info!(
                    "vbd {be}: disk {:?} opened {} for {holder}",
                    req.params,
                    if readonly { "read-only" } else { "read-write" }
                );
                Some((disk, readonly))
            }
            Err(why) => {
                // For xl's terminal and our console: printable ASCII only,
                // bounded (xenstore values are at most 4 KiB).
                let why = printable(&why, 512);
                if let Some(n) = self.core.open_log.allow(self.e.now()) {
                    warn!("vbd {be}: cannot open disk {:?}: {why:?}{}", req.params, suppressed_note(n));
                }
                xs.write("hotplug-error", &why);
                xs.write("hotplug-status", "error");
                // libxl waits for state 2 only; a removed state node fails
                // `xl create` / `xl block-attach` at once.
                if let Err(err) = xs.xs().rm(&format!("{be}/state")) {
                    warn!("vbd {be}: cannot remove the state node: {err:?}");
                }
                self.core.last_error = Some(format!("{be}: {why}"));
                None
            }
        }
    }

    /// Maps each queue's ring pages, attaches the rings and binds their
    /// event channels.
    fn connect(&mut self, id: u32, p: &ConnectParams) -> Result<(), String> {
        // The ring pages must fit the mapping budget (persistent caches
        // shrink to make room; ring pages do not).
        let need: usize = p.queues.iter().map(|q| q.ring_refs.len()).sum();
        let ring_pages: usize = self.vbds.values().flat_map(|v| &v.rings).map(|r| r.ring_maps.len()).sum();
        if ring_pages + need + TRANSIENT_RESERVE > MAX_MAPPINGS {
            return Err(format!(
                "{need} ring page(s) do not fit the mapping budget ({ring_pages} of {MAX_MAPPINGS} used by rings)"
            ));
        }
        let Some(v) = self.vbds.get_mut(&id) else { return Err(String::from("no such device")) };
        let nq = v.disk.queue_count().max(1);
        for (qi, q) in p.queues.iter().enumerate() {
            let reqs: Vec<MapRequest> = q
                .ring_refs
                .iter()
                .map(|r| MapRequest { dom: v.fe_dom, gref: GrantRef(r.0), readonly: false })
                .collect();
            let results = self.g.map_batch(&reqs);
            let mut maps = Vec::new();
            let mut failed = None;
            for r in results {
                match r {
                    Ok(m) => maps.push(m),
                    Err(err) => failed = Some(err),
                }
            }
            if let Some(err) = failed {
                let _ = self.g.unmap_batch(&maps);
                return Err(format!("mapping ring {qi}: {err:?}"));
            }
            let pages = maps.iter().map(|m| self.g.page(m)).collect();
            let ring = match BlkRing::attach(PagesMem::new(pages), p.abi, p.ring_page_order) {
                Ok(r) => r,
                Err(err) => {
                    let _ = self.g.unmap_batch(&maps);
                    return Err(format!("ring {qi}: {err:?}"));
                }
            };
            let port = match self.e.bind_interdomain(v.fe_dom, EvtchnPort(q.evtchn.0)) {
                Ok(pt) => pt,
                Err(err) => {
                    let _ = self.g.unmap_batch(&maps);
                    return Err(format!("binding event channel {} of ring {qi}: {err}", q.evtchn.0));
                }
            };
            let serial = self.core.next_serial;
            self.core.next_serial += 1;
            v.rings.push(RingCtx {
                index: qi,
                serial,
                ring,
                ring_maps: maps,
                port,
                queue: (qi as u16) % nq,
                persistent: p.persistent,
                pgrants: Default::default(),
                poisoned: Default::default(),
                tick: 0,
                deferred: VecDeque::new(),
                parts: Vec::new(),
                grefs: Vec::new(),
                maps: Vec::new(),
                indirect_pages: Vec::new(),
                seg_pool: Vec::new(),
                sg_pool: Vec::new(),
                in_flight: 0,
                ordered_in_flight: 0,
                dead: false,
                held: Budget::default(),
                waiting: false,
                stats: RingStats::default(),
            });
        }
        let now = self.e.now();
        limited!(
            v.log,
            now,
            info,
            "vbd {}: connected to domain {}: {} queue(s), ring order {}, {} ABI, persistent grants {}",
            v.be,
            v.fe_dom,
            p.queues.len(),
            p.ring_page_order,
            if p.abi == Abi::X86_64 { "x86_64" } else { "x86_32" },
            match (p.persistent, self.core.grant_copy) {
                (true, _) => "on",
                (false, true) => "off (data by grant copy)",
                (false, false) => "off (data by map/unmap)",
            }
        );
        // Everyone's share of the mapping budget shrinks to make room.
        self.rebalance();
        Ok(())
    }

    /// Releases every grant mapping and event channel of the vbd's rings
    /// at once, never waiting for the disk: requests still on it become
    /// orphans, dropped unanswered when they complete (the disk works on
    /// our own buffers, never on the guest's pages). Until they completed
    /// (at most [`DRAIN_NS`]), the vbd takes no new requests, so an old
    /// write cannot land after a new one; other vbds are served meanwhile.
    fn disconnect(&mut self, id: u32) {
        let left = self.core.tokens.keys().filter(|k| k.0 == id).count();
        if let Some(v) = self.vbds.get_mut(&id) {
            if left > 0 {
                v.orphans = left;
                let now = self.e.now();
                v.drain_deadline = now.saturating_add(DRAIN_NS);
                limited!(
                    v.log,
                    now,
                    info,
                    "vbd {}: {left} request(s) still on the disk; draining in the background",
                    v.be
                );
            }
        }
        self.core.groups.retain(|_, gr| gr.vbd != id);
        let now = self.e.now();
        let Some(v) = self.vbds.get_mut(&id) else { return };
        let mut released = 0;
        for mut r in v.rings.drain(..) {
            // Pages the disk may still reach (zero-copy work on it) stay
            // mapped until that work completed (see `crate::zerocopy`).
            let on_disk = self.core.pinned_on_disk(id, r.serial);
            let pg: Vec<Mapping> = r.park_pinned(self.core, &on_disk);
            released += pg.len() + r.ring_maps.len();
            for res in self.g.unmap_batch(&pg).into_iter().chain(self.g.unmap_batch(&r.ring_maps)) {
                if let Err(err) = res {
                    limited!(v.log, now, warn, "vbd {}: unmap failed: {err:?}", v.be);
                }
            }
            let _ = self.e.close(r.port);
        }
        if released > 0 {
            limited!(v.log, now, info, "vbd {}: disconnected, {released} grant mapping(s) released", v.be);
        }
        // The others' shares of the mapping budget grow back.
        self.rebalance();
    }
}

/// `s` with every character outside printable ASCII as `\u{..}`, cut to
/// at most `max` bytes.
fn printable(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let piece = if (' '..='~').contains(&c) { format!("{c}") } else { format!("\\u{{{:x}}}", u32::from(c)) };
        if out.len() + piece.len() > max {
            break;
        }
        out.push_str(&piece);
    }
    out
}
