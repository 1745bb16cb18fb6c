//! The blkback I/O shell: xenstore, grants, event channels and the disk
//! around the pure protocol core.
//!
//! One [`Blkback`] serves every vbd the toolstack assigns to this domain
//! (`backend/vbd/<frontend-domid>/<devid>` under our home) from one
//! [`BlockDevice`]. Per vbd it runs the [`BackendFsm`]; each ring is a
//! polling context of its own (its ring, deferred work, in-flight count,
//! buffer holdings, counters) that polls requests, validates copies, moves
//! data between the frontend's granted pages and disk buffers, and answers.
//!
//! Scheduling: Ferrite has one vCPU, so contexts are cooperative. Each
//! [`Blkback::poll`] gives every context one turn of at most
//! [`RING_BUDGET`] requests, starting one context further each time
//! (round-robin). Disk buffers are bounded by [`MAX_BUFFER_BYTES`] for all
//! rings together; while several rings wait for buffers, each may hold at
//! most an equal share, so a ring flooding the backend with large requests
//! cannot keep the others waiting.
//!
//! Data path: when the frontend negotiated `feature-persistent`, granted
//! pages are mapped and kept mapped (least recently used released past a
//! bound) and copied to or from a disk buffer by the CPU. Otherwise data
//! moves by batched `GNTTABOP_copy` between the guest's pages and the disk
//! buffer's own frames ([`LocalFrames`]): one copy call for a request's
//! data (per part on reads split for the disk), one more for an indirect
//! request's segment pages; a buffer that names no frames falls back to
//! map + unmap per batch. A write is answered only after the disk
//! completed it. Flush and barrier wait until the ring has nothing else in
//! flight, write their data (if any), then flush the disk.
//!
//! Everything the frontend writes is hostile: requests are copied once and
//! validated by the core; grant failures answer `BLKIF_RSP_ERROR`; work per
//! poll is bounded; each vbd logs its first refused request and its first
//! grant failure only.

use crate::abi::Abi;
use crate::request::{self, DataOp, RejectLog, Request, Segment, Status};
use crate::ring::{BackRing, RingMem};
use crate::xenbus::{BackendConfig, BackendFsm, ConnectParams, Effect, Event, FrontendKeys, XenbusState};
use crate::DiskInfo;
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::Cell;
use drivers::block::{BlockDevice, BlockRequest};
use log::{info, warn};
use xen::evtchn::EventOps;
use xen::gnttab::{CopyEnd, CopyOp, GrantOps, LocalFrames, MapRequest, Mapping};
use xen::shmem::SharedMem;
use xen::types::{DomId, EvtchnPort, GrantRef};
use xen::wait::{Nanos, Notifier};
use xen::xenstore::{XsClient, XsErrno, XsError};

const PAGE: usize = 4096;
/// Requests one ring context takes per turn (per [`Blkback::poll`]).
pub const RING_BUDGET: usize = 32;
/// Persistent grants kept mapped per ring (Linux blkback's default).
pub const MAX_PERSISTENT_PER_RING: usize = 1056;
/// Disk buffers all rings together may hold. A ring takes no new requests
/// while less than one largest request (256 segments) is left, nor while it
/// holds its share of this when other rings wait for buffers too.
pub const MAX_BUFFER_BYTES: usize = 4 << 20;
const MAX_REQUEST_BYTES: usize = 256 * PAGE;
/// How long a closed device's directory stays before we remove it.
pub const RM_DELAY_NS: Nanos = 2_000_000_000;
/// How long a disconnect waits for the disk to finish in-flight I/O.
const DRAIN_NS: Nanos = 30_000_000_000;

/// Ring memory made of separately mapped pages.
pub struct PagesMem<P: SharedMem> {
    pages: Vec<P>,
}

impl<P: SharedMem> PagesMem<P> {
    /// The pages in ring order.
    pub fn new(pages: Vec<P>) -> Self {
        Self { pages }
    }
    fn split(&self, off: usize, len: usize, mut f: impl FnMut(&P, usize, core::ops::Range<usize>)) {
        let mut done = 0;
        while done < len {
            let at = off + done;
            let (page, in_page) = (at / PAGE, at % PAGE);
            let n = (PAGE - in_page).min(len - done);
            f(&self.pages[page], in_page, done..done + n);
            done += n;
        }
    }
}

impl<P: SharedMem> RingMem for PagesMem<P> {
    fn len(&self) -> usize {
        self.pages.len() * PAGE
    }
    fn load_u32_acquire(&self, off: usize) -> u32 {
        self.pages[off / PAGE].load_u32_acquire(off % PAGE)
    }
    fn store_u32_release(&self, off: usize, val: u32) {
        self.pages[off / PAGE].store_u32_release(off % PAGE, val)
    }
    fn read(&self, off: usize, buf: &mut [u8]) {
        self.split(off, buf.len(), |p, o, r| p.read(o, &mut buf[r]));
    }
    fn write(&self, off: usize, data: &[u8]) {
        self.split(off, data.len(), |p, o, r| p.write(o, &data[r]));
    }
    fn fence(&self) {
        if let Some(p) = self.pages.first() {
            p.fence();
        }
    }
}

/// Disk work derived from one request.
enum Step {
    Read { lba: u64 },
    Write { lba: u64, then_flush: bool },
    Flush,
    Discard { lba: u64, blocks: u64 },
}

struct Work<B> {
    req: Request,
    segs: Vec<Segment>,
    step: Step,
    buf: Option<B>,
    /// Flush/barrier: submit only when nothing else of this ring is in flight.
    exclusive: bool,
    /// Part of a request split for the disk: answered when all parts are done.
    group: Option<u64>,
    /// The buffer's share of the memory budgets, given back on drop.
    _charge: Charge,
}

/// A request split into parts.
struct Group {
    vbd: u32,
    remaining: usize,
    failed: bool,
}

/// Splits `segs` into runs of at most `max` bytes (each segment is at most
/// one page, `max` at least one page).
fn split_segments(segs: Vec<Segment>, max: usize) -> Vec<Vec<Segment>> {
    let mut parts: Vec<Vec<Segment>> = Vec::new();
    let mut cur: Vec<Segment> = Vec::new();
    let mut cur_len = 0;
    for s in segs {
        if cur_len + s.len() > max && !cur.is_empty() {
            parts.push(core::mem::take(&mut cur));
            cur_len = 0;
        }
        cur_len += s.len();
        cur.push(s);
    }
    if !cur.is_empty() || parts.is_empty() {
        parts.push(cur);
    }
    parts
}

/// Copy elements moving the guest spans `(gref, offset in page, length)`,
/// in order, to or from consecutive bytes of `buf` from its start. Each
/// element stays within one page on both sides: a span is cut where the
/// buffer crosses a frame (a span never crosses a guest page: the core
/// checked `offset + len <= 4096`). `None` if the buffer names no frames.
fn copy_ops<B: LocalFrames>(
    buf: &B,
    dom: DomId,
    spans: impl Iterator<Item = (GrantRef, usize, usize)>,
    to_guest: bool,
) -> Option<Vec<CopyOp>> {
    let mut ops = Vec::new();
    let mut at = 0usize;
    for (gref, off, len) in spans {
        let mut done = 0;
        // Each round moves at least one byte (n > 0 below), so this ends
        // after at most `len` rounds; in practice one or two.
        while done < len {
            let (pfn, in_frame) = buf.local_frame(at + done)?;
            let n = (len - done).min(PAGE.saturating_sub(usize::from(in_frame))).min(PAGE.saturating_sub(off + done));
            if n == 0 {
                return None;
            }
            let guest = CopyEnd::Grant { dom, gref, offset: (off + done) as u16 };
            let local = CopyEnd::Local { pfn, offset: in_frame };
            let (src, dst) = if to_guest { (local, guest) } else { (guest, local) };
            ops.push(CopyOp { src, dst, len: n as u16 });
            done += n;
        }
        at += len;
    }
    Some(ops)
}

/// The guest spans of data segments.
fn spans(segs: &[Segment]) -> impl Iterator<Item = (GrantRef, usize, usize)> + '_ {
    segs.iter().map(|s| (GrantRef(s.gref().0), s.offset(), s.len()))
}

/// Bytes of disk buffers held; bounded by [`MAX_BUFFER_BYTES`] for all
/// rings so that guests cannot size our heap, and counted per ring too.
#[derive(Clone, Default)]
struct Budget(Rc<Cell<usize>>);

/// One request's buffer bytes, charged to the global budget and to its
/// ring's, returned to both when dropped (the request answered, failed,
/// or dropped at disconnect).
struct Charge {
    budgets: [Budget; 2],
    bytes: usize,
}

impl Budget {
    fn used(&self) -> usize {
        self.0.get()
    }
}

fn charge(global: &Budget, ring: &Budget, bytes: usize) -> Charge {
    for b in [global, ring] {
        b.0.set(b.0.get() + bytes);
    }
    Charge { budgets: [global.clone(), ring.clone()], bytes }
}

impl Drop for Charge {
    fn drop(&mut self) {
        for b in &self.budgets {
            b.0.set(b.0.get().saturating_sub(self.bytes));
        }
    }
}

/// Counters of one ring's polling context.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Turns the context had.
    pub turns: u64,
    /// Requests taken from the ring.
    pub requests: u64,
    /// Turns that ended with the per-turn budget used up.
    pub budget_spent: u64,
    /// Turns that left requests in the ring for lack of buffer budget.
    pub buffer_waits: u64,
}

/// One ring's polling context: the ring and everything its requests hold.
struct RingCtx<P: SharedMem, B> {
    /// Position among its vbd's rings (the frontend's queue number).
    index: usize,
    ring: BackRing<PagesMem<P>>,
    ring_maps: Vec<Mapping>,
    port: EvtchnPort,
    /// Disk queue this ring submits to.
    queue: u16,
    persistent: bool,
    pgrants: BTreeMap<u32, (Mapping, u64)>,
    tick: u64,
    deferred: VecDeque<Work<B>>,
    in_flight: usize,
    dead: bool,
    /// Buffer bytes this ring's requests hold.
    held: Budget,
    /// At its last turn it left requests in the ring for lack of buffers.
    waiting: bool,
    stats: RingStats,
}

struct Vbd<P: SharedMem, B> {
    id: u32,
    be: String,
    fe: String,
    fe_dom: DomId,
    fsm: BackendFsm,
    rings: Vec<RingCtx<P, B>>,
    rejects: RejectLog,
    grant_errors: RejectLog,
    /// The toolstack removed our directory: write nothing more there.
    gone: bool,
    /// The frontend's state node has been read at least once: only then does
    /// its absence mean the frontend is gone (not "not written yet").
    fe_seen: bool,
}

/// Counters for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests taken from rings.
    pub requests: u64,
    /// Requests refused by validation.
    pub rejected: u64,
    /// Requests the disk failed or refused.
    pub errors: u64,
    /// Grant map hypercall batches.
    pub grant_maps: u64,
    /// Segments served from an already mapped persistent grant.
    pub persistent_hits: u64,
    /// Grant copy hypercall batches (`GrantOps::copy_batch` calls).
    pub grant_copies: u64,
}

/// What every ring context shares: the disk and the bookkeeping of work
/// on it.
struct Core<D: BlockDevice> {
    disk: D,
    info: DiskInfo,
    alloc: Box<dyn FnMut(usize) -> Option<D::Buffer>>,
    /// Disk buffer memory in use, all rings.
    budget: Budget,
    /// Split requests still in progress.
    groups: BTreeMap<u64, Group>,
    next_group: u64,
    /// Disk token → (vbd id, ring index, work).
    tokens: BTreeMap<u64, (u32, usize, Work<D::Buffer>)>,
    /// Non-persistent rings move data by grant copy.
    grant_copy: bool,
}

/// What a ring context borrows for one call: the shared disk side, the
/// counters, and the grant and event operations.
struct Turn<'a, D: BlockDevice, G, E> {
    core: &'a mut Core<D>,
    stats: &'a mut Stats,
    g: &'a mut G,
    e: &'a mut E,
}

/// The device a ring belongs to, as its data path sees it.
struct DevRef<'a> {
    id: u32,
    be: &'a str,
    fe_dom: DomId,
    rejects: &'a mut RejectLog,
    grant_errors: &'a mut RejectLog,
}

/// The block backend.
pub struct Blkback<P: SharedMem, D: BlockDevice> {
    cfg: BackendConfig,
    core: Core<D>,
    vbds: Vec<Vbd<P, D::Buffer>>,
    /// Backend directories whose vbd we removed while the directory stayed
    /// (the frontend vanished, or a detach waiting for the toolstack's
    /// cleanup): not probed again until the toolstack re-creates them
    /// (`state` back to Initialising) or removes them. Bounded by the
    /// directories `scan` looks at.
    retired: Vec<String>,
    /// A vbd directory was seen incomplete, or watch events were lost:
    /// look again at the next [`Blkback::maintenance`].
    rescan: bool,
    /// Backend directories to remove, and when.
    pending_rm: Vec<(String, Nanos)>,
    next_id: u32,
    /// Round-robin cursor: the ring context that goes first at the next poll.
    next_turn: usize,
    /// Whether the last `poll` did anything besides waiting for the disk.
    progressed: bool,
    /// Counters.
    pub stats: Stats,
}

/// The token prefix of our xenstore watches.
pub const WATCH_PREFIX: &str = "vbd";

impl<P: SharedMem, D: BlockDevice> Blkback<P, D>
where
    D::Buffer: AsRef<[u8]> + AsMut<[u8]> + LocalFrames,
{
    /// Serves `disk`; `alloc` makes a zeroed disk buffer of a given length.
    /// Rings without persistent grants move data by grant copy (see
    /// [`set_grant_copy`](Self::set_grant_copy)).
    pub fn new(disk: D, cfg: BackendConfig, alloc: impl FnMut(usize) -> Option<D::Buffer> + 'static) -> Self {
        let bs = disk.block_size().max(512);
        let f = disk.features();
        let info = DiskInfo {
            sectors: disk.capacity().saturating_mul(u64::from(bs)) / 512,
            sector_size: 512,
            physical_sector_size: bs,
            readonly: false,
            removable: false,
            cdrom: false,
            flush: true,
            barrier: true,
            discard: f.discard.then_some(crate::DiscardInfo { granularity: bs, alignment: 0, secure: false }),
        };
        let core = Core {
            disk,
            info,
            alloc: Box::new(alloc),
            budget: Budget::default(),
            groups: BTreeMap::new(),
            next_group: 1,
            tokens: BTreeMap::new(),
            grant_copy: true,
        };
        Self {
            cfg,
            core,
            vbds: Vec::new(),
            retired: Vec::new(),
            rescan: false,
            pending_rm: Vec::new(),
            next_id: 1,
            next_turn: 0,
            progressed: false,
            stats: Stats::default(),
        }
    }

    /// Whether rings without persistent grants move data by grant copy
    /// (the default) or by mapping each batch of grants and unmapping it
    /// after use. Applies from the next request on.
    pub fn set_grant_copy(&mut self, on: bool) {
        self.core.grant_copy = on;
    }

    /// Counters of each connected ring's polling context: (backend
    /// directory, ring index, counters).
    pub fn ring_stats(&self) -> Vec<(&str, usize, RingStats)> {
        self.vbds.iter().flat_map(|v| v.rings.iter().map(|r| (v.be.as_str(), r.index, r.stats))).collect()
    }

    /// What we tell frontends about the disk.
    pub fn disk_info(&self) -> &DiskInfo {
        &self.core.info
    }

    /// The disk (for shutdown).
    pub fn disk_mut(&mut self) -> &mut D {
        &mut self.core.disk
    }

    /// Starts watching for vbds assigned to us.
    pub fn start<M: SharedMem, N: Notifier>(&mut self, xs: &mut XsClient<M, N>) -> Result<(), XsError> {
        xs.watch("backend/vbd", "vbd-list")
    }

    /// Event channels of all connected rings (to wait on when idle).
    pub fn ports(&self) -> Vec<EvtchnPort> {
        self.vbds.iter().flat_map(|v| v.rings.iter().filter(|r| !r.dead).map(|r| r.port)).collect()
    }

    /// Asks for a rescan of `backend/vbd` at the next maintenance (call it
    /// when the xenstore client dropped watch events).
    pub fn request_rescan(&mut self) {
        self.rescan = true;
    }

    /// Periodic work (call every few hundred milliseconds): removes the
    /// directories of closed devices whose delay has passed, and rescans
    /// the vbd directories if an earlier look found one incomplete or watch
    /// events were lost. Returns whether it rescanned.
    pub fn maintenance<M: SharedMem, N: Notifier, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        xs: &mut XsClient<M, N>,
        g: &mut G,
        e: &mut E,
    ) -> bool {
        let now = e.now();
        let due: Vec<String> = self.pending_rm.iter().filter(|(_, t)| *t <= now).map(|(be, _)| be.clone()).collect();
        self.pending_rm.retain(|(_, t)| *t > now);
        for be in due {
            match xs.rm(&be) {
                Ok(()) | Err(XsError::Xs(_)) => info!("vbd {be}: backend directory removed"),
                Err(err) => warn!("vbd {be}: cannot remove the backend directory: {err:?}"),
            }
        }
        if !core::mem::replace(&mut self.rescan, false) {
            return false;
        }
        self.scan(xs, g, e);
        true
    }

    /// Bytes of disk buffers currently held by requests.
    pub fn buffer_bytes(&self) -> usize {
        self.core.budget.used()
    }

    /// Number of vbds known.
    pub fn vbd_count(&self) -> usize {
        self.vbds.len()
    }

    /// Handles a watch event whose token starts with [`WATCH_PREFIX`].
    pub fn on_watch<M: SharedMem, N: Notifier, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        xs: &mut XsClient<M, N>,
        g: &mut G,
        e: &mut E,
        token: &str,
    ) {
        if token == "vbd-list" {
            self.scan(xs, g, e);
        } else if let Some(be) = token.strip_prefix("vbd-fe:") {
            let Some(i) = self.find(be) else { return };
            let fe_state = format!("{}/state", self.vbds[i].fe);
            let ev = match xs.read_string(&fe_state) {
                Ok(s) => {
                    self.vbds[i].fe_seen = true;
                    match XenbusState::parse(s.trim()) {
                        Some(st) => Event::FrontendStateChanged(st),
                        None => Event::FrontendStateInvalid,
                    }
                }
                // Not written yet: the toolstack is still creating it.
                Err(XsError::Xs(_)) if !self.vbds[i].fe_seen => return,
                Err(XsError::Xs(_)) => Event::FrontendGone,
                Err(err) => {
                    warn!("vbd {be}: reading {fe_state}: {err:?}");
                    return;
                }
            };
            self.feed(xs, g, e, i, ev);
        } else if let Some(be) = token.strip_prefix("vbd-online:") {
            let Some(i) = self.find(be) else { return };
            match xs.read_string(&format!("{be}/online")) {
                Ok(s) if s.trim() == "0" => self.feed(xs, g, e, i, Event::Disconnect),
                Ok(_) => {}
                Err(_) => self.feed(xs, g, e, i, Event::FrontendGone),
            }
        }
    }

    fn find(&self, be: &str) -> Option<usize> {
        self.vbds.iter().position(|v| v.be == be)
    }

    /// Looks for new and vanished vbd directories.
    fn scan<M: SharedMem, N: Notifier, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        xs: &mut XsClient<M, N>,
        g: &mut G,
        e: &mut E,
    ) {
        let mut present = Vec::new();
        // Only ENOENT means absent: on any other error (a timeout, EIO) we
        // cannot tell, and must not take every vbd for removed.
        let list = |xs: &mut XsClient<M, N>, path: &str| match xs.directory(path) {
            Ok(d) => Ok(d),
            Err(XsError::Xs(XsErrno::NoEnt)) => Ok(Vec::new()),
            Err(err) => {
                warn!("listing {path}: {err:?}; vbd scan skipped");
                Err(err)
            }
        };
        let Ok(doms) = list(xs, "backend/vbd") else { return };
        for dom in doms.iter().take(256) {
            let Ok(devs) = list(xs, &format!("backend/vbd/{dom}")) else { return };
            for dev in devs.iter().take(64) {
                present.push(format!("backend/vbd/{dom}/{dev}"));
            }
        }
        // Vanished: the toolstack removed the directory (domain destroyed).
        let gone: Vec<String> = self.vbds.iter().filter(|v| !present.contains(&v.be)).map(|v| v.be.clone()).collect();
        for be in gone {
            if let Some(i) = self.find(&be) {
                self.vbds[i].gone = true;
                self.feed(xs, g, e, i, Event::FrontendGone);
            }
        }
        // Forget retired directories the toolstack removed; one it
        // re-created for a new device starts over at Initialising.
        self.retired.retain(|be| present.contains(be));
        for be in present {
            if let Some(k) = self.retired.iter().position(|r| *r == be) {
                match xs.read_string(&format!("{be}/state")) {
                    Ok(s) if XenbusState::parse(s.trim()) == Some(XenbusState::Initialising) => {
                        self.retired.swap_remove(k);
                    }
                    _ => continue,
                }
            }
            if self.find(&be).is_none() {
                self.add(xs, g, e, &be);
            }
        }
    }

    fn add<M: SharedMem, N: Notifier, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        xs: &mut XsClient<M, N>,
        g: &mut G,
        e: &mut E,
        be: &str,
    ) {
        let fe = match xs.read_string(&format!("{be}/frontend")) {
            Ok(s) => s,
            Err(_) => {
                self.rescan = true; // not fully written yet: look again later
                return;
            }
        };
        let fe_dom = match xs.read_string(&format!("{be}/frontend-id")).ok().and_then(|s| s.trim().parse::<u16>().ok())
        {
            Some(d) => DomId(d),
            None => {
                self.rescan = true;
                return;
            }
        };
        // A device being torn down (online 0, or Closing/Closed) is not
        // adopted again: libxl is waiting for it to go away.
        let online = xs.read_string(&format!("{be}/online")).unwrap_or_default();
        let state = xs.read_string(&format!("{be}/state")).unwrap_or_default();
        if online.trim() == "0" || matches!(state.trim(), "5" | "6") {
            return;
        }
        if xs.read(&format!("{be}/state")).is_err() || xs.read(&format!("{fe}/state")).is_err() {
            // Not fully written yet (our writes need our `state`; the
            // frontend's must exist before its absence can mean anything).
            self.rescan = true;
            return;
        }
        let params = xs.read_string(&format!("{be}/params")).unwrap_or_default();
        let id = self.next_id;
        self.next_id += 1;
        info!("vbd {be}: new device for domain {fe_dom} (frontend {fe}, params {params:?})");
        self.vbds.push(Vbd {
            id,
            be: String::from(be),
            fe: fe.clone(),
            fe_dom,
            fsm: BackendFsm::new(self.cfg),
            rings: Vec::new(),
            rejects: RejectLog::default(),
            grant_errors: RejectLog::default(),
            gone: false,
            fe_seen: false,
        });
        let i = self.vbds.len() - 1;
        for (path, token) in
            [(format!("{fe}/state"), format!("vbd-fe:{be}")), (format!("{be}/online"), format!("vbd-online:{be}"))]
        {
            if let Err(err) = xs.watch(&path, &token) {
                warn!("vbd {be}: cannot watch {path}: {err:?}");
            }
        }
        // What dom0's block hotplug script would write: the device is open.
        match write_existing(xs, be, "physical-device", "fd:0") {
            Ok(true) => {}
            Ok(false) => self.vbds[i].gone = true,
            Err(err) => warn!("vbd {be}: writing physical-device: {err:?}"),
        }
        self.feed(xs, g, e, i, Event::Probe);
        let info = self.core.info;
        self.feed(xs, g, e, i, Event::HotplugDone(info));
    }

    /// Steps vbd `i`'s state machine with `first` and carries out the effects.
    fn feed<M: SharedMem, N: Notifier, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        xs: &mut XsClient<M, N>,
        g: &mut G,
        e: &mut E,
        i: usize,
        first: Event,
    ) {
        let mut events = VecDeque::from([first]);
        // Bounded: each event yields a handful of effects, at most one follow-up event.
        for _ in 0..16 {
            let Some(ev) = events.pop_front() else { break };
            if i >= self.vbds.len() {
                return;
            }
            let effects = self.vbds[i].fsm.step(ev);
            for eff in effects {
                let be = self.vbds[i].be.clone();
                let gone = self.vbds[i].gone;
                match eff {
                    Effect::Write { .. } | Effect::SwitchState(_) | Effect::WriteError(_) if gone => {}
                    Effect::Write { key, value } => match write_existing(xs, &be, key, &value) {
                        Ok(true) => {}
                        Ok(false) => self.vbds[i].gone = true,
                        Err(err) => warn!("vbd {be}: writing {key}: {err:?}"),
                    },
                    Effect::SwitchState(s) => match write_existing(xs, &be, "state", &s.to_node()) {
                        Ok(true) => {}
                        Ok(false) => self.vbds[i].gone = true,
                        Err(err) => warn!("vbd {be}: writing state: {err:?}"),
                    },
                    Effect::ReadFrontendKeys => {
                        let fe = self.vbds[i].fe.clone();
                        let keys = FrontendKeys::read(&self.cfg, |k| xs.read_string(&format!("{fe}/{k}")).ok());
                        events.push_back(Event::FrontendKeys(keys));
                    }
                    Effect::MapRings(params) => {
                        if let Err(why) = self.connect(g, e, i, &params) {
                            warn!("vbd {be}: {why}");
                            // FSM contract: the rest of this batch (disk
                            // details, Connected) must not be carried out.
                            events.push_back(Event::RingMapFailed("cannot map rings or bind event channels"));
                            break;
                        }
                    }
                    Effect::UnmapAll => self.disconnect(g, e, i),
                    Effect::WriteError(msg) => {
                        warn!("vbd {be}: {msg}");
                        if let Ok(false) = write_existing(xs, &be, "error", &msg) {
                            self.vbds[i].gone = true;
                        }
                    }
                    Effect::Remove => {
                        let v = &self.vbds[i];
                        let _ = xs.unwatch(&format!("{}/state", v.fe), &format!("vbd-fe:{be}"));
                        let _ = xs.unwatch(&format!("{be}/online"), &format!("vbd-online:{be}"));
                        self.disconnect(g, e, i);
                        let v = self.vbds.remove(i);
                        if v.gone {
                            info!("vbd {be}: removed");
                            return;
                        }
                        // A driver domain removes its own backend directory
                        // once the device is closed (xl devd does it for a
                        // Linux one); libxl waits for that before it calls a
                        // detach or a domain destruction done. It first
                        // waits to read state 6, so the directory goes a
                        // little later (see `maintenance`).
                        info!("vbd {be}: closed; backend directory removed in {} ms", RM_DELAY_NS / 1_000_000);
                        self.pending_rm.push((be, e.now().saturating_add(RM_DELAY_NS)));
                        // Until then (and if removing fails): not probed again.
                        self.retired.push(v.be);
                        return;
                    }
                }
            }
        }
    }

    fn connect<G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        g: &mut G,
        e: &mut E,
        i: usize,
        p: &ConnectParams,
    ) -> Result<(), String> {
        let nq = self.core.disk.queue_count().max(1);
        let v = &mut self.vbds[i];
        for (qi, q) in p.queues.iter().enumerate() {
            let reqs: Vec<MapRequest> = q
                .ring_refs
                .iter()
                .map(|r| MapRequest { dom: v.fe_dom, gref: GrantRef(r.0), readonly: false })
                .collect();
            let results = g.map_batch(&reqs);
            let mut maps = Vec::new();
            let mut failed = None;
            for r in results {
                match r {
                    Ok(m) => maps.push(m),
                    Err(err) => failed = Some(err),
                }
            }
            if let Some(err) = failed {
                let _ = g.unmap_batch(&maps);
                return Err(format!("mapping ring {qi}: {err:?}"));
            }
            let pages = maps.iter().map(|m| g.page(m)).collect();
            let ring = match BackRing::attach(PagesMem::new(pages), p.abi, p.ring_page_order) {
                Ok(r) => r,
                Err(err) => {
                    let _ = g.unmap_batch(&maps);
                    return Err(format!("ring {qi}: {err:?}"));
                }
            };
            let port = match e.bind_interdomain(v.fe_dom, EvtchnPort(q.evtchn.0)) {
                Ok(pt) => pt,
                Err(err) => {
                    let _ = g.unmap_batch(&maps);
                    return Err(format!("binding event channel {} of ring {qi}: {err}", q.evtchn.0));
                }
            };
            v.rings.push(RingCtx {
                index: qi,
                ring,
                ring_maps: maps,
                port,
                queue: (qi as u16) % nq,
                persistent: p.persistent,
                pgrants: BTreeMap::new(),
                tick: 0,
                deferred: VecDeque::new(),
                in_flight: 0,
                dead: false,
                held: Budget::default(),
                waiting: false,
                stats: RingStats::default(),
            });
        }
        info!(
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
        Ok(())
    }

    /// Waits (bounded) for the disk to finish this vbd's I/O, then releases
    /// every grant mapping and event channel of its rings.
    fn disconnect<G: GrantOps<Page = P>, E: EventOps>(&mut self, g: &mut G, e: &mut E, i: usize) {
        let id = self.vbds[i].id;
        let deadline = e.now().saturating_add(DRAIN_NS);
        // Bounded by the deadline: the disk times out commands itself too.
        while self.core.tokens.values().any(|(v, _, _)| *v == id) && e.now() < deadline {
            self.poll_disk(g, e);
        }
        let leftover = self.core.tokens.values().filter(|(v, _, _)| *v == id).count();
        if leftover > 0 {
            warn!(
                "vbd {}: {leftover} request(s) still on the disk after 30 s; dropping their answers",
                self.vbds[i].be
            );
            self.core.tokens.retain(|_, (v, _, _)| *v != id);
        }
        self.core.groups.retain(|_, gr| gr.vbd != id);
        let v = &mut self.vbds[i];
        let mut released = 0;
        for r in v.rings.drain(..) {
            let pg: Vec<Mapping> = r.pgrants.values().map(|(m, _)| *m).collect();
            released += pg.len() + r.ring_maps.len();
            for res in g.unmap_batch(&pg).into_iter().chain(g.unmap_batch(&r.ring_maps)) {
                if let Err(err) = res {
                    warn!("vbd {}: unmap failed: {err:?}", v.be);
                }
            }
            let _ = e.close(r.port);
        }
        if released > 0 {
            info!("vbd {}: disconnected, {released} grant mapping(s) released", v.be);
        }
    }

    /// One round of work: disk completions, then one turn for every ring
    /// context, round-robin. Returns whether anything happened (poll again
    /// at once) — `false` means idle.
    pub fn poll<G: GrantOps<Page = P>, E: EventOps>(&mut self, g: &mut G, e: &mut E) -> bool {
        let mut busy = self.poll_disk(g, e);
        let ctxs: Vec<(usize, usize)> =
            self.vbds.iter().enumerate().flat_map(|(vi, v)| (0..v.rings.len()).map(move |ri| (vi, ri))).collect();
        if ctxs.is_empty() {
            self.progressed = busy;
            return busy || !self.core.tokens.is_empty();
        }
        // While several rings wait for buffers, each may hold an equal
        // share (never less than one largest request); a ring alone may
        // use the whole budget.
        let waiting = self.vbds.iter().flat_map(|v| &v.rings).filter(|r| r.waiting && !r.dead).count();
        let share = (MAX_BUFFER_BYTES / waiting.max(1)).max(MAX_REQUEST_BYTES);
        // A different context goes first each time: none is always served
        // after the others have taken what was free.
        let start = self.next_turn % ctxs.len();
        self.next_turn = start + 1;
        for k in 0..ctxs.len() {
            let (vi, ri) = ctxs[(start + k) % ctxs.len()];
            if e.take_pending(self.vbds[vi].rings[ri].port) {
                busy = true;
            }
            busy |= self.with_ring(vi, ri, g, e, |r, t, d| r.turn(t, d, share));
        }
        self.progressed = busy;
        busy || !self.core.tokens.is_empty()
    }

    /// Whether the last [`poll`](Self::poll) completed, took or answered
    /// anything. `poll` returning `true` with this `false` means only disk
    /// commands are outstanding: the caller may nap before polling again.
    pub fn progressed(&self) -> bool {
        self.progressed
    }

    /// Disk commands submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.core.tokens.len()
    }

    /// Runs `f` on ring `ri` of vbd `vi` with what its data path borrows.
    fn with_ring<G: GrantOps<Page = P>, E: EventOps, R>(
        &mut self,
        vi: usize,
        ri: usize,
        g: &mut G,
        e: &mut E,
        f: impl FnOnce(&mut RingCtx<P, D::Buffer>, &mut Turn<'_, D, G, E>, &mut DevRef<'_>) -> R,
    ) -> R {
        let v = &mut self.vbds[vi];
        let mut d = DevRef {
            id: v.id,
            be: &v.be,
            fe_dom: v.fe_dom,
            rejects: &mut v.rejects,
            grant_errors: &mut v.grant_errors,
        };
        let mut t = Turn { core: &mut self.core, stats: &mut self.stats, g, e };
        f(&mut v.rings[ri], &mut t, &mut d)
    }

    fn poll_disk<G: GrantOps<Page = P>, E: EventOps>(&mut self, g: &mut G, e: &mut E) -> bool {
        let mut any = false;
        let now = e.now();
        for q in 0..self.core.disk.queue_count().max(1) {
            // Bounded: a queue holds at most its depth of completions.
            for _ in 0..1024 {
                let Some(c) = self.core.disk.poll(q, now) else { break };
                any = true;
                let Some((vid, ri, mut work)) = self.core.tokens.remove(&c.token.0) else { continue };
                let Some(vi) = self.vbds.iter().position(|v| v.id == vid) else { continue };
                if ri >= self.vbds[vi].rings.len() {
                    continue;
                }
                match c.request {
                    BlockRequest::Read { buffer, .. } | BlockRequest::Write { buffer, .. } => work.buf = Some(buffer),
                    _ => {}
                }
                let result = c.result;
                self.with_ring(vi, ri, g, e, |r, t, d| r.complete(t, d, work, result));
            }
        }
        any
    }
}

impl<P: SharedMem, B: AsRef<[u8]> + AsMut<[u8]> + LocalFrames> RingCtx<P, B> {
    /// One turn: submit deferred work, then take up to [`RING_BUDGET`]
    /// requests while the buffer budgets allow. `share`: the most buffer
    /// bytes this ring may hold before it lets others go first.
    fn turn<D: BlockDevice<Buffer = B>, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        d: &mut DevRef<'_>,
        share: usize,
    ) -> bool {
        self.stats.turns += 1;
        let busy = self.submit_deferred(t, d);
        if self.dead || !self.deferred.is_empty() {
            return busy;
        }
        // Take requests one at a time (up to the per-turn budget), each
        // only while the buffer budget can hold the largest request and
        // this ring is within its share: the frontend's requests wait in
        // its ring, nothing is refused.
        let mut taken = 0;
        let mut out_of_buffers = false;
        while taken < RING_BUDGET {
            if t.core.budget.used() + MAX_REQUEST_BYTES > MAX_BUFFER_BYTES || self.held.used() >= share {
                out_of_buffers = true;
                break;
            }
            let mut raw = None;
            if let Err(err) = self.ring.poll_requests(1, |x| raw = Some(x)) {
                self.dead = true;
                warn!("vbd {}: ring {} broken ({}); no longer served", d.be, self.index, err.as_str());
                break;
            }
            let Some(raw) = raw else { break };
            taken += 1;
            t.stats.requests += 1;
            self.stats.requests += 1;
            let req = match request::parse(&raw, &t.core.info) {
                Ok(req) => req,
                Err(rej) => {
                    t.stats.rejected += 1;
                    if d.rejects.note() {
                        warn!(
                            "vbd {}: refused a request from domain {}: {} (further refusals not logged)",
                            d.be,
                            d.fe_dom,
                            rej.reason.as_str()
                        );
                    }
                    if self.ring.push_response(&rej.response()).is_err() {
                        self.dead = true;
                    }
                    continue;
                }
            };
            match self.prepare(t, d, req) {
                Ok(works) if works.is_empty() => self.push_answer(&req, Status::Okay),
                Ok(works) => self.deferred.extend(works),
                Err(()) => self.push_answer(&req, Status::Error),
            }
        }
        if taken == RING_BUDGET {
            self.stats.budget_spent += 1;
        }
        // Waiting only if the frontend has requests we left in the ring.
        self.waiting = out_of_buffers && !self.dead && self.ring.pending().is_ok_and(|n| n > 0);
        if self.waiting {
            self.stats.buffer_waits += 1;
        }
        if taken == 0 && !out_of_buffers && !self.dead {
            // Going idle: arm req_event; a request that slipped in is taken
            // at the next poll.
            return matches!(self.ring.final_check_for_requests(), Ok(true)) || busy;
        }
        if self.ring.publish_responses() {
            let _ = t.e.send(self.port);
        }
        self.submit_deferred(t, d);
        busy || taken > 0 || out_of_buffers
    }

    /// Pushes an answer; it is published with the turn's batch.
    fn push_answer(&mut self, req: &Request, status: Status) {
        if self.ring.push_response(&req.response(status)).is_err() {
            self.dead = true;
        }
    }

    /// Pushes and publishes an answer, notifying the frontend if it asked.
    fn respond<E: EventOps>(&mut self, e: &mut E, req: &Request, status: Status) {
        if self.ring.push_response(&req.response(status)).is_err() {
            self.dead = true;
            return;
        }
        if self.ring.publish_responses() {
            let _ = e.send(self.port);
        }
    }

    /// Whether this ring moves data by grant copy.
    fn copies<D: BlockDevice, G, E>(&self, t: &Turn<'_, D, G, E>) -> bool {
        !self.persistent && t.core.grant_copy
    }

    /// Turns a validated request into disk work (empty: nothing to do).
    fn prepare<D: BlockDevice<Buffer = B>, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        d: &mut DevRef<'_>,
        req: Request,
    ) -> Result<Vec<Work<B>>, ()> {
        let bs = u64::from(t.core.disk.block_size().max(512));
        let lba_of = |sector: u64| -> Result<u64, ()> {
            let byte = sector.checked_mul(512).ok_or(())?;
            if byte % bs != 0 {
                return Err(());
            }
            Ok(byte / bs)
        };
        let (segs, step, exclusive, write) = match req {
            Request::Read { sector, segments, .. } => {
                (segments.as_slice().to_vec(), Step::Read { lba: lba_of(sector)? }, false, false)
            }
            Request::Write { sector, segments, .. } => {
                (segments.as_slice().to_vec(), Step::Write { lba: lba_of(sector)?, then_flush: false }, false, true)
            }
            Request::Flush { sector, segments, .. } | Request::WriteBarrier { sector, segments, .. } => {
                if segments.as_slice().is_empty() {
                    (Vec::new(), Step::Flush, true, false)
                } else {
                    (segments.as_slice().to_vec(), Step::Write { lba: lba_of(sector)?, then_flush: true }, true, true)
                }
            }
            Request::Discard { sector, nr_sectors, .. } => {
                let blocks = nr_sectors.checked_mul(512).ok_or(())? / bs;
                if blocks == 0 {
                    return Ok(Vec::new());
                }
                (Vec::new(), Step::Discard { lba: lba_of(sector)?, blocks }, false, false)
            }
            Request::Indirect(ind) => {
                let segs = self.indirect_segments(t, d, &ind)?;
                match ind.op {
                    DataOp::Read => (segs, Step::Read { lba: lba_of(ind.sector)? }, false, false),
                    DataOp::Write => (segs, Step::Write { lba: lba_of(ind.sector)?, then_flush: false }, false, true),
                }
            }
        };
        // The disk takes at most `max_transfer` bytes per command: split a
        // larger read or write (indirect requests reach 1 MiB) into parts
        // answered together. A write-then-flush is at most 11 segments.
        let max = t.core.disk.max_transfer().max(PAGE);
        let parts: Vec<Vec<Segment>> = match step {
            Step::Read { .. } | Step::Write { then_flush: false, .. } => split_segments(segs, max),
            _ => alloc::vec![segs],
        };
        // Each part: its segments, its disk step and its buffer.
        let mut built: Vec<(Vec<Segment>, Step, usize, Option<B>)> = Vec::with_capacity(parts.len());
        let mut offset = 0u64;
        for part in parts {
            let len: usize = part.iter().map(|s| s.len()).sum();
            let step = match step {
                Step::Read { lba } => Step::Read { lba: lba + offset / bs },
                Step::Write { lba, then_flush } => Step::Write { lba: lba + offset / bs, then_flush },
                Step::Flush => Step::Flush,
                Step::Discard { lba, blocks } => Step::Discard { lba, blocks },
            };
            let mut buf = None;
            if len > 0 {
                if !(len as u64).is_multiple_of(bs) || !offset.is_multiple_of(bs) {
                    return Err(());
                }
                buf = Some((t.core.alloc)(len).ok_or(())?);
            }
            offset += len as u64;
            built.push((part, step, len, buf));
        }
        if write {
            self.fill_from_guest(t, d, &mut built)?;
        }
        let group = if built.len() > 1 {
            let gid = t.core.next_group;
            t.core.next_group += 1;
            t.core.groups.insert(gid, Group { vbd: d.id, remaining: built.len(), failed: false });
            Some(gid)
        } else {
            None
        };
        Ok(built
            .into_iter()
            .map(|(segs, step, len, buf)| Work {
                req,
                segs,
                step,
                buf,
                exclusive,
                group,
                _charge: charge(&t.core.budget, &self.held, len),
            })
            .collect())
    }

    /// Reads the indirect pages once into private memory and parses their
    /// segments.
    fn indirect_segments<D: BlockDevice<Buffer = B>, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        d: &mut DevRef<'_>,
        ind: &request::IndirectRequest,
    ) -> Result<Vec<Segment>, ()> {
        let grefs: Vec<GrantRef> = ind.pages().iter().map(|r| GrantRef(r.0)).collect();
        let mut copies: Vec<Vec<u8>> = Vec::with_capacity(grefs.len());
        // By copy into a buffer of our own frames (at most 8 pages, freed
        // at once), when this ring copies and the buffer names frames.
        let by_copy = if self.copies(t) { (t.core.alloc)(grefs.len() * PAGE) } else { None };
        let ops = by_copy.as_ref().and_then(|b| copy_ops(b, d.fe_dom, grefs.iter().map(|g| (*g, 0, PAGE)), false));
        match (by_copy, ops) {
            (Some(mut buf), Some(ops)) => {
                self.grant_copy(t, d, &ops)?;
                buf.sync_for_cpu();
                copies.extend(buf.as_ref().chunks(PAGE).map(|c| c.to_vec()));
            }
            _ => {
                let maps = self.map_grants(t, d, &grefs, true)?;
                for (m, _) in &maps {
                    let mut page = alloc::vec![0u8; PAGE];
                    t.g.page(m).read(0, &mut page);
                    copies.push(page);
                }
                self.release_transient(t, &maps);
            }
        }
        let refs: Vec<&[u8]> = copies.iter().map(|p| p.as_slice()).collect();
        match request::parse_indirect_segments(ind, &refs, &t.core.info) {
            Ok(s) => Ok(s),
            Err(rej) => {
                if d.rejects.note() {
                    warn!("vbd {}: refused an indirect request: {}", d.be, rej.reason.as_str());
                }
                Err(())
            }
        }
    }

    /// One batch of grant copies; any failed element fails the request
    /// (logged once per device).
    fn grant_copy<D: BlockDevice, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        d: &mut DevRef<'_>,
        ops: &[CopyOp],
    ) -> Result<(), ()> {
        if ops.is_empty() {
            return Ok(());
        }
        let res = t.g.copy_batch(ops);
        t.stats.grant_copies += 1;
        let failed = ops.iter().zip(res.iter().map(Some).chain(core::iter::repeat(None))).find_map(|(op, r)| match r {
            Some(Ok(())) => None,
            Some(Err(err)) => Some((op, Some(*err))),
            None => Some((op, None)), // no answer for this element
        });
        let Some((op, err)) = failed else { return Ok(()) };
        if d.grant_errors.note() {
            let gref = match (op.src, op.dst) {
                (CopyEnd::Grant { gref, .. }, _) | (_, CopyEnd::Grant { gref, .. }) => gref.0,
                _ => 0,
            };
            warn!(
                "vbd {}: grant copy with grant {gref} of domain {} failed: {err:?} (further grant errors not logged)",
                d.be, d.fe_dom
            );
        }
        Err(())
    }

    /// Fills the buffers of a write's parts from the guest's pages: by one
    /// grant copy batch for the whole request, or by mapping.
    fn fill_from_guest<D: BlockDevice<Buffer = B>, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        d: &mut DevRef<'_>,
        parts: &mut [(Vec<Segment>, Step, usize, Option<B>)],
    ) -> Result<(), ()> {
        if self.copies(t) {
            let mut ops = Vec::new();
            let mut framed = true;
            for (segs, _, _, buf) in parts.iter() {
                match buf.as_ref().map(|b| copy_ops(b, d.fe_dom, spans(segs), false)) {
                    Some(Some(o)) => ops.extend(o),
                    Some(None) => framed = false,
                    None => {}
                }
            }
            if framed {
                self.grant_copy(t, d, &ops)?;
                for (_, _, _, buf) in parts.iter_mut() {
                    if let Some(b) = buf {
                        b.sync_for_cpu();
                    }
                }
                return Ok(());
            }
        }
        for (segs, _, _, buf) in parts.iter_mut() {
            if let Some(b) = buf {
                self.map_from_guest(t, d, segs, b.as_mut())?;
            }
        }
        Ok(())
    }

    /// Moves a finished read's data to the guest's pages.
    fn deliver_read<D: BlockDevice<Buffer = B>, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        d: &mut DevRef<'_>,
        work: &mut Work<B>,
    ) -> Result<(), ()> {
        let Some(buf) = work.buf.as_mut() else { return Ok(()) };
        if self.copies(t) {
            if let Some(ops) = copy_ops(buf, d.fe_dom, spans(&work.segs), true) {
                buf.sync_for_copy();
                return self.grant_copy(t, d, &ops);
            }
        }
        let grefs: Vec<GrantRef> = work.segs.iter().map(|s| GrantRef(s.gref().0)).collect();
        let maps = self.map_grants(t, d, &grefs, false)?;
        let data = buf.as_ref();
        let mut off = 0;
        for (s, (m, _)) in work.segs.iter().zip(&maps) {
            t.g.page(m).write(s.offset(), &data[off..off + s.len()]);
            off += s.len();
        }
        self.release_transient(t, &maps);
        Ok(())
    }

    /// Maps `grefs` (persistent cache first, the rest in one batch).
    /// Returns each mapping and whether it is transient (unmap after use).
    fn map_grants<D: BlockDevice, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        d: &mut DevRef<'_>,
        grefs: &[GrantRef],
        readonly: bool,
    ) -> Result<Vec<(Mapping, bool)>, ()> {
        self.tick += 1;
        let tick = self.tick;
        let mut out: Vec<Option<(Mapping, bool)>> = alloc::vec![None; grefs.len()];
        let mut missing = Vec::new();
        for (k, gr) in grefs.iter().enumerate() {
            if self.persistent {
                if let Some((m, last)) = self.pgrants.get_mut(&gr.0) {
                    *last = tick;
                    out[k] = Some((*m, false));
                    t.stats.persistent_hits += 1;
                    continue;
                }
            }
            missing.push(k);
        }
        if !missing.is_empty() {
            // Persistent grants are granted read-write by blkfront.
            let ro = readonly && !self.persistent;
            let reqs: Vec<MapRequest> =
                missing.iter().map(|&k| MapRequest { dom: d.fe_dom, gref: grefs[k], readonly: ro }).collect();
            let res = t.g.map_batch(&reqs);
            t.stats.grant_maps += 1;
            let mut failed = false;
            for (&k, res) in missing.iter().zip(res) {
                match res {
                    Ok(m) => {
                        let keep = self.persistent && !self.pgrants.contains_key(&grefs[k].0);
                        if keep {
                            self.pgrants.insert(grefs[k].0, (m, tick));
                        }
                        out[k] = Some((m, !keep));
                    }
                    Err(err) => {
                        failed = true;
                        if d.grant_errors.note() {
                            warn!(
                                "vbd {}: cannot map grant {} of domain {}: {err:?} (further grant errors not logged)",
                                d.be, grefs[k].0, d.fe_dom
                            );
                        }
                    }
                }
            }
            // Past the bound: release the least recently used mappings.
            if self.pgrants.len() > MAX_PERSISTENT_PER_RING {
                let mut ages: Vec<(u64, u32)> =
                    self.pgrants.iter().filter(|(_, (_, t))| *t != tick).map(|(k, (_, t))| (*t, *k)).collect();
                ages.sort_unstable();
                let excess = self.pgrants.len() - MAX_PERSISTENT_PER_RING;
                let victims: Vec<Mapping> =
                    ages.iter().take(excess).filter_map(|(_, k)| self.pgrants.remove(k).map(|(m, _)| m)).collect();
                let _ = t.g.unmap_batch(&victims);
            }
            if failed {
                let done: Vec<(Mapping, bool)> = out.into_iter().flatten().collect();
                self.release_transient(t, &done);
                return Err(());
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    fn release_transient<D: BlockDevice, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        maps: &[(Mapping, bool)],
    ) {
        let tr: Vec<Mapping> = maps.iter().filter(|(_, tr)| *tr).map(|(m, _)| *m).collect();
        if !tr.is_empty() {
            let _ = t.g.unmap_batch(&tr);
        }
    }

    fn map_from_guest<D: BlockDevice, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        d: &mut DevRef<'_>,
        segs: &[Segment],
        buf: &mut [u8],
    ) -> Result<(), ()> {
        let grefs: Vec<GrantRef> = segs.iter().map(|s| GrantRef(s.gref().0)).collect();
        let maps = self.map_grants(t, d, &grefs, true)?;
        let mut off = 0;
        for (s, (m, _)) in segs.iter().zip(&maps) {
            t.g.page(m).read(s.offset(), &mut buf[off..off + s.len()]);
            off += s.len();
        }
        self.release_transient(t, &maps);
        Ok(())
    }

    /// Submits deferred work in order while the disk takes it.
    fn submit_deferred<D: BlockDevice<Buffer = B>, G, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        d: &mut DevRef<'_>,
    ) -> bool {
        let mut any = false;
        // Bounded by the deferred queue length.
        for _ in 0..RING_BUDGET * 2 {
            let Some(w) = self.deferred.front() else { break };
            if w.exclusive && self.in_flight > 0 {
                break; // flush/barrier: wait for everything before it
            }
            let Some(mut w) = self.deferred.pop_front() else { break };
            let breq = match w.step {
                Step::Read { lba } => BlockRequest::Read { lba, buffer: w.buf.take().expect("read has a buffer") },
                Step::Write { lba, .. } => {
                    BlockRequest::Write { lba, buffer: w.buf.take().expect("write has a buffer"), fua: false }
                }
                Step::Flush => BlockRequest::Flush,
                Step::Discard { lba, blocks } => BlockRequest::Discard { lba, blocks },
            };
            match t.core.disk.submit(self.queue, breq) {
                Ok(tok) => {
                    any = true;
                    self.in_flight += 1;
                    t.core.tokens.insert(tok.0, (d.id, self.index, w));
                }
                Err((drivers::Error::QueueFull, back)) => {
                    if let BlockRequest::Read { buffer, .. } | BlockRequest::Write { buffer, .. } = back {
                        w.buf = Some(buffer);
                    }
                    self.deferred.push_front(w);
                    break;
                }
                Err((err, _)) => {
                    t.stats.errors += 1;
                    warn!("vbd {}: disk refused request {}: {err:?}", d.be, w.req.id());
                    self.finish(t, &w, Status::Error);
                    any = true;
                }
            }
        }
        any
    }

    /// The disk finished `work`.
    fn complete<D: BlockDevice<Buffer = B>, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        d: &mut DevRef<'_>,
        mut work: Work<B>,
        result: Result<(), drivers::Error>,
    ) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let mut status = if result.is_ok() { Status::Okay } else { Status::Error };
        if let Err(err) = result {
            t.stats.errors += 1;
            warn!("vbd {}: disk error {err:?} for request {}", d.be, work.req.id());
        }
        if status == Status::Okay {
            match work.step {
                Step::Read { .. } => {
                    status = match self.deliver_read(t, d, &mut work) {
                        Ok(()) => Status::Okay,
                        Err(()) => Status::Error,
                    };
                }
                Step::Write { then_flush: true, .. } => {
                    // The data is written: now the flush part.
                    work.step = Step::Flush;
                    work.buf = None;
                    self.deferred.push_front(work);
                    return;
                }
                _ => {}
            }
        }
        self.finish(t, &work, status);
    }

    /// Answers a finished piece of work; a part of a split request answers
    /// only when it is the last part (ERROR if any part failed).
    fn finish<D: BlockDevice<Buffer = B>, G, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        work: &Work<B>,
        status: Status,
    ) {
        let Some(gid) = work.group else {
            self.respond(t.e, &work.req, status);
            return;
        };
        let Some(gr) = t.core.groups.get_mut(&gid) else { return };
        gr.failed |= status != Status::Okay;
        gr.remaining = gr.remaining.saturating_sub(1);
        if gr.remaining == 0 {
            let failed = gr.failed;
            t.core.groups.remove(&gid);
            self.respond(t.e, &work.req, if failed { Status::Error } else { Status::Okay });
        }
    }
}

/// Writes `value` at `{be}/{key}` only if our directory still exists, in a
/// transaction that first reads `{be}/state` (Linux `xenbus_switch_state`
/// does the same): a write must never re-create a directory the toolstack
/// removed. `Ok(false)`: the directory is gone, nothing written.
fn write_existing<M: SharedMem, N: Notifier>(
    xs: &mut XsClient<M, N>,
    be: &str,
    key: &str,
    value: &str,
) -> Result<bool, XsError> {
    let state = format!("{be}/state");
    let path = format!("{be}/{key}");
    xs.transaction(4, |tx| match tx.read(&state) {
        Ok(_) => tx.write(&path, value.as_bytes()).map(|()| true),
        Err(XsError::Xs(XsErrno::NoEnt)) => Ok(false),
        Err(err) => Err(err),
    })
}
